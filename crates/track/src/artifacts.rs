//! Content-addressed artifact storage.
//!
//! Every file logged as an artifact is stored once, under `objects/<2 hex>/<62 hex>` named by
//! the BLAKE3 of its content, whatever run or name it was logged under: checkpoints that did
//! not change, or the same dataset logged by a hundred sweep trials, take the space of one.
//! A run's `artifacts.json` maps artifact names to digests. Objects are written to a
//! temporary file, synced and renamed into place, so an object that exists is complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::fsutil;
use crate::{Error, Result};

/// Whether an artifact is one file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A single file.
    File,
    /// A directory; its digest is that of its sorted file list.
    Directory,
}

/// One file inside an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Path relative to the artifact (`""` for a single-file artifact), with `/` separators.
    pub path: String,
    /// BLAKE3 of the content, hex.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// An artifact logged by a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The name it was logged under (may contain `/`).
    pub name: String,
    /// File or directory.
    pub kind: ArtifactKind,
    /// BLAKE3 of the file, or of the directory's file list (`path\0digest\n`, sorted).
    pub digest: String,
    /// Total size in bytes.
    pub size: u64,
    /// Its files.
    pub files: Vec<ArtifactFile>,
    /// When it was logged, milliseconds since the Unix epoch.
    pub logged_ms: i64,
}

/// The objects directory of a store.
#[derive(Debug, Clone)]
pub(crate) struct Objects {
    root: PathBuf,
}

impl Objects {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where the object with `digest` lives. `digest` must be 64 hex digits.
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(Error::InvalidName {
                what: "object digest",
                name: digest.into(),
                reason: "expected 64 lowercase hex digits",
            });
        }
        Ok(self.root.join(&digest[..2]).join(&digest[2..]))
    }

    /// Stores the file at `from`, returning its digest and size. Existing objects are reused.
    pub fn put_file(&self, from: &Path) -> Result<(String, u64)> {
        let tmp_dir = self.root.join("tmp");
        std::fs::create_dir_all(&tmp_dir).at(&tmp_dir)?;
        let tmp = fsutil::unique_tmp(&tmp_dir, "object");
        let result = (|| {
            let mut input = File::open(from).at(from)?;
            let mut output = File::create(&tmp).at(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = input.read(&mut buf).at(from)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n]).at(&tmp)?;
                size += n as u64;
            }
            let digest = hasher.finalize().to_hex().to_string();
            let path = self.path(&digest)?;
            if path.exists() && refresh(&path) {
                return Ok((digest, size));
            }
            output.sync_all().at(&tmp)?;
            let dir = path.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(dir).at(dir)?;
            std::fs::rename(&tmp, &path).at(&path)?;
            fsutil::sync_dir(dir)?;
            Ok((digest, size))
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// Stores `bytes` as a single-file artifact `name`.
    pub fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<Artifact> {
        let digest = blake3::hash(bytes).to_hex().to_string();
        let path = self.path(&digest)?;
        if !(path.exists() && refresh(&path)) {
            fsutil::write_atomic(&path, bytes)?;
        }
        let size = bytes.len() as u64;
        Ok(Artifact {
            name: name.into(),
            kind: ArtifactKind::File,
            digest: digest.clone(),
            size,
            files: vec![ArtifactFile { path: String::new(), digest, size }],
            logged_ms: fsutil::now_ms(),
        })
    }

    /// Stores a file or directory tree and describes it as artifact `name`.
    pub fn put(&self, name: &str, from: &Path) -> Result<Artifact> {
        let meta = std::fs::metadata(from).at(from)?;
        let logged_ms = fsutil::now_ms();
        if meta.is_file() {
            let (digest, size) = self.put_file(from)?;
            return Ok(Artifact {
                name: name.into(),
                kind: ArtifactKind::File,
                digest: digest.clone(),
                size,
                files: vec![ArtifactFile { path: String::new(), digest, size }],
                logged_ms,
            });
        }
        let mut files = Vec::new();
        self.put_tree(from, "", &mut files)?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut listing = blake3::Hasher::new();
        for f in &files {
            listing.update(f.path.as_bytes());
            listing.update(b"\0");
            listing.update(f.digest.as_bytes());
            listing.update(b"\n");
        }
        Ok(Artifact {
            name: name.into(),
            kind: ArtifactKind::Directory,
            digest: listing.finalize().to_hex().to_string(),
            size: files.iter().map(|f| f.size).sum(),
            files,
            logged_ms,
        })
    }

    fn put_tree(&self, dir: &Path, prefix: &str, out: &mut Vec<ArtifactFile>) -> Result<()> {
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name().to_str().map(str::to_string).ok_or_else(|| Error::InvalidName {
                what: "artifact file",
                name: entry.file_name().to_string_lossy().into_owned(),
                reason: "it is not UTF-8",
            })?;
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let path = entry.path();
            if std::fs::metadata(&path).at(&path)?.is_dir() {
                self.put_tree(&path, &rel, out)?;
            } else {
                let (digest, size) = self.put_file(&path)?;
                out.push(ArtifactFile { path: rel, digest, size });
            }
        }
        Ok(())
    }

    /// Copies artifact `artifact` out to `to` (a file, or a directory that is created).
    pub fn restore(&self, artifact: &Artifact, to: &Path) -> Result<()> {
        for f in &artifact.files {
            let target = if f.path.is_empty() { to.to_path_buf() } else { to.join(checked_relative(&f.path)?) };
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).at(dir)?;
            }
            let object = self.path(&f.digest)?;
            std::fs::copy(&object, &target).at(&object)?;
        }
        Ok(())
    }
}

/// Marks a reused object as fresh, so [`Store::gc`](crate::Store::gc) leaves it alone until
/// the manifest that refers to it again is written. `false` when the caller must store the
/// object again: it is gone (a collection removed it just now), it was moved away while being
/// refreshed (a collection may be about to remove it), or its time could not be set (another
/// user's object on a shared store; storing it again replaces it with a fresh one).
pub(crate) fn refresh(path: &Path) -> bool {
    let Ok(file) = File::options().append(true).open(path) else { return false };
    if file.set_modified(std::time::SystemTime::now()).is_err() {
        return false;
    }
    // A collection renames a candidate aside before its last age check; if this handle's file
    // is no longer the one at `path`, that check may not have seen the new time.
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(now)) => same_file(&open, &now),
        _ => false,
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

/// Checks an artifact name or inner path: relative, `/`-separated, no `..`, no empty parts.
pub(crate) fn checked_relative(name: &str) -> Result<PathBuf> {
    let bad = |reason| Error::InvalidName { what: "artifact path", name: name.into(), reason };
    if name.is_empty() || name.len() > 1024 {
        return Err(bad("it is empty or longer than 1024 bytes"));
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(bad("it contains a backslash or NUL"));
    }
    let path = Path::new(name);
    for part in path.components() {
        match part {
            Component::Normal(p) if !p.is_empty() => {}
            _ => return Err(bad("it must be a relative path without '.', '..' or empty parts")),
        }
    }
    // `Path::components` drops a `.` in the middle (`a/./b`), so check the parts as written.
    if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(bad("it must be a relative path without '.', '..' or empty parts"));
    }
    Ok(path.to_path_buf())
}

/// A run's artifact manifest (`artifacts.json`).
pub(crate) type Manifest = BTreeMap<String, Artifact>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_names_are_refused() {
        for bad in ["", "../x", "a/../../b", "/etc/passwd", "a//b", "./a", "a\\b", "a/./b", "a/.", "a/"] {
            assert!(checked_relative(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["model", "plots/loss.png", "a.b/c-d_e"] {
            assert!(checked_relative(good).is_ok(), "{good:?} refused");
        }
    }
}
