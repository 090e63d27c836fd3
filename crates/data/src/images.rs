//! Folders of images as training data: [`ImageFolder`] is a [`Source`] of `(pixels, class)`
//! items from `root/<class>/*.png|jpg` (the class from the folder name, as torchvision's
//! `ImageFolder`) or from a CSV index of `path,label` rows.
//!
//! Each item is decoded when it is asked for (on the loader's workers), into an
//! `Array3<u8>` of shape `[height, width, channels]` (RGB, or grey with
//! [`ImageOptions::grey`]), optionally resized and centre-cropped to a fixed size so items
//! stack into a batch. PNG and JPEG are read (the `image` crate, pure Rust). An unreadable or
//! undecodable file is an error naming its path, never a panic or a skipped item; a file in a
//! class folder that is not a PNG or JPEG is refused when the folder is opened, so a stray
//! file is never silently left out (hidden files, starting with `.`, are ignored).
//!
//! ```no_run
//! use kiln_data::images::{ImageFolder, ImageOptions};
//! use kiln_data::{Loader, Source};
//!
//! # fn main() -> kiln_data::Result<()> {
//! let train = ImageFolder::open("patches/train")?.with_options(ImageOptions::new().resize(96, 96));
//! println!("{} images of {:?}", train.len(), train.classes());
//! for batch in Loader::new(train, 64).workers(2).epoch(7, 1, 0) {
//!     let batch = batch?; // items: (Array3<u8> [96, 96, 3], class index)
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::imageops::FilterType;
use ndarray::Array3;

use crate::source::Source;
use crate::{Dataset, Error, Result, SplitMix64};

/// How items are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageOptions {
    resize: Option<(u32, u32)>,
    crop: Option<(u32, u32)>,
    grey: bool,
}

impl ImageOptions {
    /// Decode as RGB at the file's size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resize every image to `height × width` (bilinear), before any crop.
    pub fn resize(mut self, height: u32, width: u32) -> Self {
        self.resize = Some((height, width));
        self
    }

    /// Cut the centre `height × width` out of every image (after any resize); an image smaller
    /// than that is an error naming it.
    pub fn center_crop(mut self, height: u32, width: u32) -> Self {
        self.crop = Some((height, width));
        self
    }

    /// One grey channel instead of three RGB ones.
    pub fn grey(mut self) -> Self {
        self.grey = true;
        self
    }
}

/// Images with class labels: see the [module docs](self).
#[derive(Debug)]
pub struct ImageFolder {
    name: String,
    items: Vec<(PathBuf, usize)>,
    classes: Vec<String>,
    options: ImageOptions,
    digest: OnceLock<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

impl ImageFolder {
    /// The images under `root/<class>/` (PNG or JPEG), classes in sorted folder-name order,
    /// images in sorted file-name order within each class. A root with no class folders, a
    /// class folder with no images, or a file that is not a PNG or JPEG is an error naming it.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let sorted = |dir: &Path| -> Result<Vec<PathBuf>> {
            let mut entries = std::fs::read_dir(dir)
                .map_err(io(dir))?
                .map(|e| e.map(|e| e.path()).map_err(io(dir)))
                .collect::<Result<Vec<_>>>()?;
            entries.retain(|p| !hidden(p));
            entries.sort();
            Ok(entries)
        };
        let mut classes = Vec::new();
        let mut items = Vec::new();
        for dir in sorted(root)? {
            if !dir.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "{}: expected only class folders in {}, found a file",
                    dir.display(),
                    root.display()
                )));
            }
            let class = classes.len();
            let files = sorted(&dir)?;
            if let Some(other) = files.iter().find(|f| !is_image(f)) {
                return Err(Error::InvalidArgument(format!(
                    "{}: not a PNG or JPEG file (class folders hold only .png, .jpg and .jpeg images)",
                    other.display()
                )));
            }
            if files.is_empty() {
                return Err(Error::InvalidArgument(format!("{}: a class folder with no images", dir.display())));
            }
            items.extend(files.into_iter().map(|f| (f, class)));
            classes.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        if classes.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: no class folders (expected root/<class>/<image>.png)",
                root.display()
            )));
        }
        Ok(Self {
            name: root.display().to_string(),
            items,
            classes,
            options: ImageOptions::default(),
            digest: OnceLock::new(),
        })
    }

    /// The images listed in a CSV (or any table kiln-data reads) with a `path` column
    /// (relative to the index file's folder, or absolute) and a `label` column; classes are the
    /// sorted distinct labels. A missing file is an error when its item is read, naming it.
    pub fn from_index(index: impl AsRef<Path>, path_column: &str, label_column: &str) -> Result<Self> {
        let index = index.as_ref();
        let table = Dataset::load_csv(index)?;
        let paths = table.to_strings(path_column)?;
        let labels = table.to_strings(label_column)?;
        let encoder = crate::LabelEncoder::fit(&labels);
        let classes = encoder.encode(&labels)?;
        let base = index.parent().unwrap_or(Path::new("."));
        let items = paths.into_iter().zip(classes).map(|(p, c)| (base.join(p), c)).collect();
        Ok(Self {
            name: index.display().to_string(),
            items,
            classes: encoder.classes,
            options: ImageOptions::default(),
            digest: OnceLock::new(),
        })
    }

    /// Decodes with `options`.
    pub fn with_options(mut self, options: ImageOptions) -> Self {
        self.options = options;
        self
    }

    /// The class names, by index.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every item's file and class.
    pub fn items(&self) -> &[(PathBuf, usize)] {
        &self.items
    }

    /// Decodes one image file as these options say.
    pub fn decode(&self, path: &Path) -> Result<Array3<u8>> {
        let fail = |message: String| Error::InvalidArgument(format!("{}: {message}", path.display()));
        let bytes = std::fs::read(path).map_err(io(path))?;
        let mut image = image::load_from_memory(&bytes).map_err(|e| fail(format!("cannot decode the image: {e}")))?;
        if let Some((h, w)) = self.options.resize {
            if h == 0 || w == 0 {
                return Err(fail(format!("cannot resize to {h}x{w}")));
            }
            image = image.resize_exact(w, h, FilterType::Triangle);
        }
        if let Some((h, w)) = self.options.crop {
            if image.height() < h || image.width() < w {
                return Err(fail(format!(
                    "a {}x{} image is smaller than the {h}x{w} crop",
                    image.height(),
                    image.width()
                )));
            }
            image = image.crop_imm((image.width() - w) / 2, (image.height() - h) / 2, w, h);
        }
        let (height, width) = (image.height() as usize, image.width() as usize);
        let (channels, pixels) =
            if self.options.grey { (1, image.into_luma8().into_raw()) } else { (3, image.into_rgb8().into_raw()) };
        Array3::from_shape_vec((height, width, channels), pixels).map_err(|e| fail(e.to_string()))
    }
}

impl Source for ImageFolder {
    type Item = (Array3<u8>, usize);

    fn name(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize, _rng: &mut SplitMix64) -> Result<(Array3<u8>, usize)> {
        let (path, class) = self.items.get(index).ok_or_else(|| Error::Item {
            source_name: self.name.clone(),
            index,
            message: format!("out of range: {} images", self.items.len()),
        })?;
        let pixels = self.decode(path).map_err(|e| Error::Item {
            source_name: self.name.clone(),
            index,
            message: e.to_string(),
        })?;
        Ok((pixels, *class))
    }

    /// BLAKE3 over every file's path, size and modification time, the classes and the options
    /// (computed once; no image is read).
    fn fingerprint(&self) -> Result<String> {
        if let Some(d) = self.digest.get() {
            return Ok(d.clone());
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(format!("{:?}{:?}", self.classes, self.options).as_bytes());
        for (path, class) in &self.items {
            let stat = crate::version::stat(path)?;
            hasher.update(format!("{}\0{class}\0{}\0{}\n", path.display(), stat.size, stat.mtime_ns).as_bytes());
        }
        let digest = format!("images:{}", hasher.finalize().to_hex());
        Ok(self.digest.get_or_init(|| digest).clone())
    }
}
