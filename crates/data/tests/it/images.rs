//! Image folders written by Pillow (tests/fixtures/images/make.py): classes from folder
//! names, exact pixels of PNGs, grey files as RGB, resize and crop, the bad-folder errors, and
//! exact resume of a loader over images.

use std::path::PathBuf;

use kiln_data::images::{ImageFolder, ImageOptions};
use kiln_data::{Loader, Order, Source, SplitMix64};

fn fixture(name: &str) -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(crate_dir).join("tests/fixtures/images").join(name)
}

/// make.py's pixel formula.
fn pixel(class: usize, image: usize, y: usize, x: usize, k: usize) -> u8 {
    ((class * 50 + image * 10 + y * 7 + x * 3 + k * 60) % 256) as u8
}

#[test]
fn a_folder_gives_classes_from_folder_names_and_exact_pixels() {
    let folder = ImageFolder::open(fixture("folder")).unwrap();
    assert_eq!(folder.classes(), ["cat", "dog"]);
    assert_eq!(folder.len(), 7, "the hidden file is not an item");
    let names: Vec<String> =
        folder.items().iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["00.png", "01.png", "02.png", "00.png", "01.png", "02.jpg", "03.png"]);
    let mut rng = SplitMix64::new(0);
    let (cat, class) = folder.get(2, &mut rng).unwrap();
    assert_eq!((cat.shape(), class), (&[5, 6, 3][..], 0));
    for (y, x, k) in [(0, 0, 0), (4, 5, 2), (2, 3, 1)] {
        assert_eq!(cat[[y, x, k]], pixel(0, 2, y, x, k), "({y}, {x}, {k})");
    }
    let (dog, class) = folder.get(4, &mut rng).unwrap();
    assert_eq!((dog[[1, 1, 1]], class), (pixel(1, 1, 1, 1, 1), 1));
    // A grey PNG comes as three equal channels; a JPEG at its own size.
    let (grey, _) = folder.get(6, &mut rng).unwrap();
    assert_eq!(grey.shape(), [5, 6, 3]);
    assert!(grey.outer_iter().all(|row| row.outer_iter().all(|p| p[0] == p[1] && p[1] == p[2])));
    assert_eq!(folder.get(5, &mut rng).unwrap().0.shape(), [8, 8, 3]);
}

#[test]
fn resize_crop_and_grey_options_give_one_shape() {
    let options = ImageOptions::new().resize(6, 6).center_crop(4, 4).grey();
    let folder = ImageFolder::open(fixture("folder")).unwrap().with_options(options);
    for i in 0..folder.len() {
        let (image, _) = folder.get(i, &mut SplitMix64::new(0)).unwrap();
        assert_eq!(image.shape(), [4, 4, 1], "item {i}");
    }
    let too_big = ImageFolder::open(fixture("folder")).unwrap().with_options(ImageOptions::new().center_crop(6, 6));
    let err = too_big.get(0, &mut SplitMix64::new(0)).unwrap_err().to_string();
    assert!(err.contains("cat/00.png") && err.contains("smaller than the 6x6 crop"), "{err}");
}

#[test]
fn bad_folders_and_files_are_errors_naming_them() {
    let err = ImageFolder::open(fixture("stray")).unwrap_err().to_string();
    assert!(err.contains("notes.txt") && err.contains("not a PNG or JPEG"), "{err}");
    let broken = ImageFolder::open(fixture("broken")).unwrap();
    let err = broken.get(0, &mut SplitMix64::new(0)).unwrap_err().to_string();
    assert!(err.contains("broken/cat/00.png") && err.contains("cannot decode"), "{err}");
    let err = ImageFolder::open(fixture("folder/cat")).unwrap_err().to_string();
    assert!(err.contains("00.png") && err.contains("found a file"), "{err}");
    let err = ImageFolder::open(fixture("nowhere")).unwrap_err().to_string();
    assert!(err.contains("nowhere"), "{err}");
    // A loader stops at the broken item with its name, not a short epoch.
    let err = Loader::new(broken, 1).epoch(1, 1, 0).find_map(|b| b.err()).unwrap().to_string();
    assert!(err.contains("item 0") && err.contains("00.png"), "{err}");
}

#[test]
fn an_index_lists_paths_and_labels_and_a_missing_file_is_named() {
    let index = ImageFolder::from_index(fixture("index.csv"), "path", "label").unwrap();
    assert_eq!(index.classes(), ["cat", "dog"]);
    let (dog, class) = index.get(0, &mut SplitMix64::new(0)).unwrap();
    assert_eq!((dog[[0, 0, 0]], class), (pixel(1, 0, 0, 0, 0), 1));
    assert_eq!(index.get(1, &mut SplitMix64::new(0)).unwrap().1, 0);
    let err = index.get(2, &mut SplitMix64::new(0)).unwrap_err().to_string();
    assert!(err.contains("missing.png"), "{err}");
    let err = ImageFolder::from_index(fixture("index.csv"), "file", "label").unwrap_err().to_string();
    assert!(err.contains("file"), "{err}");
}

/// Resuming at (epoch, batch) yields exactly the uninterrupted batches, with 0 and 2 workers.
#[test]
fn a_resumed_loader_over_images_matches_the_uninterrupted_one() {
    let folder = std::sync::Arc::new(
        ImageFolder::open(fixture("folder")).unwrap().with_options(ImageOptions::new().resize(5, 5)),
    );
    let run = |workers: usize, from: usize| {
        Loader::new(std::sync::Arc::clone(&folder), 2)
            .order(Order::Shuffle)
            .workers(workers)
            .epoch(5, 3, from)
            .collect::<kiln_data::Result<Vec<_>>>()
            .unwrap()
    };
    let whole = run(0, 0);
    assert_eq!(whole.len(), 4);
    for workers in [0, 2] {
        for from in 0..whole.len() {
            let resumed = run(workers, from);
            for (a, b) in resumed.iter().zip(&whole[from..]) {
                assert_eq!((&a.indices, &a.items), (&b.indices, &b.items), "{workers} workers from {from}");
            }
            assert_eq!(resumed.len(), whole.len() - from);
        }
    }
    let fingerprint = folder.fingerprint().unwrap();
    assert!(fingerprint.starts_with("images:") && fingerprint == folder.fingerprint().unwrap());
}
