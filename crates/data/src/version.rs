//! Dataset versions: content digests of files and directories (BLAKE3, in parallel, with a
//! cache so unchanged files are not read again) and the version record a run logs.
//!
//! A file's digest is the BLAKE3 of its bytes, the same as [`Dataset::hash`]. A directory's
//! digest is the BLAKE3 of its sorted file list, one `relative/path\0file digest\n` line per
//! file, the same form kiln-track uses for directory artifacts and model packages: equal
//! content gives an equal digest on every machine, whatever the file times.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util::{relative_slash, walk_files};
use crate::{Dataset, Error, Result};

/// What is known about a file whose digest was computed before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    digest: String,
}

/// Digests of files already hashed, keyed by absolute path and valid while the file's size,
/// modification time and inode are unchanged (so an edited, replaced or touched file is
/// hashed again). Stored as JSON, written whole and renamed into place.
#[derive(Debug, Clone, Default)]
pub struct HashCache {
    path: Option<PathBuf>,
    entries: BTreeMap<String, CacheEntry>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format_version: u32,
    entries: BTreeMap<String, CacheEntry>,
}

impl HashCache {
    /// A cache kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The cache stored at `path` (empty if the file does not exist; a damaged or
    /// unreadable-format file is ignored and rebuilt: the cache never changes an answer).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let entries = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<CacheFile>(&bytes) {
                Ok(file) if file.format_version == 1 => file.entries,
                _ => BTreeMap::new(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        Ok(Self { path: Some(path), entries })
    }

    /// Files known to the cache.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache knows no file.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the cache back to its file (nothing for an in-memory cache).
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let bytes = serde_json::to_vec(&CacheFile { format_version: 1, entries: self.entries.clone() })
            .map_err(|e| Error::InvalidArgument(format!("hash cache: {e}")))?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let io = |source| Error::Io { path: path.clone(), source };
        {
            let mut file = std::fs::File::create(&tmp).map_err(io)?;
            std::io::Write::write_all(&mut file, &bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// The digest of a file or directory, and how much work it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentDigest {
    /// BLAKE3, hex.
    pub digest: String,
    /// Files covered.
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Files read and hashed now (the others came from the cache).
    pub hashed: usize,
}

/// A file's size, modification time and inode: what says it changed without reading it.
pub(crate) struct Stat {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
    pub(crate) inode: u64,
}

pub(crate) fn stat(path: &Path) -> Result<Stat> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stat { size: meta.len(), mtime_ns, inode })
}

/// BLAKE3 of one file, read in 1 MiB pieces; files of 16 MiB and more are hashed with
/// several threads.
pub fn hash_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let big = file.metadata().map_err(io)?.len() >= 16 << 20;
    let mut buf = vec![0u8; if big { 16 << 20 } else { 1 << 20 }];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if big {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Every regular file under `dir`, as (path, `/`-separated relative path), sorted by the
/// relative path. Symbolic links are followed; hidden files are included.
fn walk(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out: Vec<(PathBuf, String)> =
        walk_files(dir, false)?.into_iter().filter_map(|p| relative_slash(&p, dir).map(|rel| (p, rel))).collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// The content digest of a file or a directory tree (see the module docs). Files are hashed
/// in parallel; with a cache, files whose size, modification time and inode are unchanged
/// are not read again, and the cache learns the others.
pub fn hash_path(path: &Path, cache: Option<&mut HashCache>) -> Result<ContentDigest> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let files: Vec<(PathBuf, String)> =
        if meta.is_dir() { walk(path)? } else { vec![(path.to_path_buf(), String::new())] };
    let keys: Vec<String> = files
        .iter()
        .map(|(p, _)| std::path::absolute(p).unwrap_or_else(|_| p.clone()).to_string_lossy().into_owned())
        .collect();
    let stats: Vec<Stat> = files.iter().map(|(p, _)| stat(p)).collect::<Result<_>>()?;
    let known: Vec<Option<String>> = match &cache {
        Some(cache) => keys
            .iter()
            .zip(&stats)
            .map(|(k, s)| {
                cache
                    .entries
                    .get(k)
                    .filter(|e| e.size == s.size && e.mtime_ns == s.mtime_ns && e.inode == s.inode)
                    .map(|e| e.digest.clone())
            })
            .collect(),
        None => vec![None; files.len()],
    };
    let digests: Vec<String> = files
        .par_iter()
        .zip(known.par_iter())
        .map(|((p, _), known)| match known {
            Some(d) => Ok(d.clone()),
            None => hash_file(p),
        })
        .collect::<Result<_>>()?;
    let hashed = known.iter().filter(|k| k.is_none()).count();
    if let Some(cache) = cache {
        for ((key, s), digest) in keys.into_iter().zip(&stats).zip(&digests) {
            cache
                .entries
                .insert(key, CacheEntry { size: s.size, mtime_ns: s.mtime_ns, inode: s.inode, digest: digest.clone() });
        }
    }
    let bytes = stats.iter().map(|s| s.size).sum();
    let digest = if meta.is_dir() {
        let mut h = blake3::Hasher::new();
        for ((_, rel), d) in files.iter().zip(&digests) {
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(d.as_bytes());
            h.update(b"\n");
        }
        h.finalize().to_hex().to_string()
    } else {
        digests[0].clone()
    };
    Ok(ContentDigest { digest, files: files.len(), bytes, hashed })
}

/// A named version of a data set: what a run records as its input, and what derived data
/// points back to. Plain fields, so kiln-track's dataset catalog can take it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetVersion {
    /// A name, e.g. `penguins`.
    pub name: String,
    /// The content digest (BLAKE3 of the file, or of the directory's file list).
    pub digest: String,
    /// Where it came from: a path or URL.
    pub source: String,
    /// Rows, when known.
    pub rows: Option<u64>,
    /// Columns and their types, when known.
    pub schema: Vec<(String, String)>,
    /// When this record was made, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// The digest of the data this was derived from (a cleaned or filtered copy).
    pub parent: Option<String>,
}

impl DatasetVersion {
    /// The version of a loaded data set.
    pub fn of(name: &str, data: &Dataset) -> Self {
        Self {
            name: name.to_string(),
            digest: data.hash().to_string(),
            source: data.source().to_string(),
            rows: Some(data.height() as u64),
            schema: data.frame().schema().iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
            created_ms: now_ms(),
            parent: None,
        }
    }

    /// The version of a file or directory, by content (without loading it).
    pub fn of_path(name: &str, path: &Path, cache: Option<&mut HashCache>) -> Result<Self> {
        let digest = hash_path(path, cache)?;
        Ok(Self {
            name: name.to_string(),
            digest: digest.digest,
            source: path.display().to_string(),
            rows: None,
            schema: Vec::new(),
            created_ms: now_ms(),
            parent: None,
        })
    }

    /// Marks this version as derived from `parent`.
    pub fn derived_from(mut self, parent: &DatasetVersion) -> Self {
        self.parent = Some(parent.digest.clone());
        self
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
