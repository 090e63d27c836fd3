//! Reclaiming space: artifact objects no run refers to any more, and what interrupted writers
//! left behind.
//!
//! An object becomes garbage when the artifact name that pointed at it is logged again with
//! other content (a `checkpoint` artifact rewritten every epoch leaves one object per epoch).
//! Writers store an object before the manifest that names it, so only objects older than a
//! grace period are removed; logging content that already exists refreshes its object's
//! modification time, so an object about to be referenced again is never old. A candidate is
//! first renamed aside and its time checked again: one refreshed in between goes back, and a
//! writer that finds it gone stores it anew.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::IoContext;
use crate::fsutil::{entries_or_empty, read_json_or_default};
use crate::{Result, Store};

/// What [`Store::gc`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Only report what would be removed.
    pub dry_run: bool,
    /// Leave anything younger than this alone: a writer elsewhere may be about to refer to it.
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self { dry_run: false, grace: Duration::from_secs(3600) }
    }
}

/// What [`Store::gc`] found and removed (or would remove, for a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Whether this was a dry run (nothing removed).
    pub dry_run: bool,
    /// Runs whose artifact manifests were read.
    pub runs: usize,
    /// Objects in the store.
    pub objects: usize,
    /// Objects some run refers to.
    pub referenced: usize,
    /// Unreferenced objects removed.
    pub removed_objects: usize,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub young_unreferenced: usize,
    /// Leftover temporary files (interrupted artifact writes) removed.
    pub removed_temporary: usize,
    /// Leftover registry staging directories (interrupted registrations) removed.
    pub removed_staging: usize,
}

impl Store {
    /// Removes artifact objects that no run's manifest refers to, temporary files of
    /// interrupted artifact writes, and staging directories of interrupted registrations, all
    /// older than [`GcOptions::grace`]. Registered model versions, runs and metrics are never
    /// touched. Safe while other processes log to the store.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let cutoff = SystemTime::now().checked_sub(options.grace).unwrap_or(SystemTime::UNIX_EPOCH);
        // `None`: gone since it was listed (another writer or collection moved it).
        let old = |path: &Path| -> Result<Option<bool>> {
            match std::fs::symlink_metadata(path) {
                Ok(meta) => Ok(Some(meta.modified().at(path)? < cutoff)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).at(path),
            }
        };
        let mut report = GcReport { dry_run: options.dry_run, ..GcReport::default() };

        // The objects present, listed before the manifests are read: an object stored after
        // the listing is not considered at all.
        let objects_dir = self.root().join("objects");
        let aside_dir = objects_dir.join("tmp");
        if !options.dry_run {
            restore_aside(&objects_dir, &aside_dir)?;
        }
        let mut leftovers: Vec<PathBuf> = Vec::new();
        let mut objects: Vec<(String, PathBuf)> = Vec::new();
        for shard in entries_or_empty(&objects_dir)? {
            let name = shard.file_name().to_string_lossy().into_owned();
            if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            for entry in entries_or_empty(&shard.path())? {
                let rest = entry.file_name().to_string_lossy().into_owned();
                if rest.len() == 62 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    objects.push((format!("{name}{rest}"), entry.path()));
                } else if rest.starts_with('.') && rest.contains(".tmp-") {
                    // An interrupted atomic write of a small artifact.
                    leftovers.push(entry.path());
                }
            }
        }
        report.objects = objects.len();

        let mut referenced: HashSet<String> = HashSet::new();
        for entry in entries_or_empty(&self.root().join("runs"))? {
            if !entry.path().is_dir() {
                continue;
            }
            let manifest: crate::artifacts::Manifest = read_json_or_default(&entry.path().join("artifacts.json"))?;
            report.runs += 1;
            for artifact in manifest.values() {
                referenced.extend(artifact.files.iter().map(|f| f.digest.clone()));
            }
        }

        for (digest, path) in &objects {
            if referenced.contains(digest) {
                report.referenced += 1;
                continue;
            }
            match old(path)? {
                None => continue,
                Some(false) => {
                    report.young_unreferenced += 1;
                    continue;
                }
                Some(true) => {}
            }
            let size = match std::fs::metadata(path) {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(path),
            };
            if !options.dry_run {
                // Aside first; a writer may have refreshed it since it was judged old.
                std::fs::create_dir_all(&aside_dir).at(&aside_dir)?;
                let aside = aside_dir.join(format!("gc-{digest}-{}", std::process::id()));
                match std::fs::rename(path, &aside) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).at(path),
                }
                match old(&aside)? {
                    // Another collection put it back already.
                    None => continue,
                    Some(false) => {
                        match std::fs::rename(&aside, path) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(path),
                            _ => {}
                        }
                        report.young_unreferenced += 1;
                        continue;
                    }
                    Some(true) => remove_any(&aside)?,
                }
            }
            report.removed_objects += 1;
            report.removed_bytes += size;
        }

        // Candidates another collection has set aside right now are its to judge.
        leftovers.extend(
            entries_or_empty(&aside_dir)?
                .into_iter()
                .filter(|e| !e.file_name().to_string_lossy().starts_with("gc-"))
                .map(|e| e.path()),
        );
        for path in leftovers {
            if old(&path)? == Some(true) {
                if !options.dry_run {
                    remove_any(&path)?;
                }
                report.removed_temporary += 1;
            }
        }
        for model in entries_or_empty(&self.root().join("models"))? {
            for entry in entries_or_empty(&model.path().join(".staging"))? {
                let path = entry.path();
                // A registration still copying a large package writes deep inside the tree.
                if newest(&path)?.is_some_and(|t| t < cutoff) {
                    if !options.dry_run {
                        remove_any(&path)?;
                    }
                    report.removed_staging += 1;
                }
            }
        }
        Ok(report)
    }
}

/// The newest modification time in a tree; `None` when it is gone (a registration renamed
/// its staging directory into place while it was read).
fn newest(path: &Path) -> Result<Option<SystemTime>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(path),
    };
    let mut latest = meta.modified().at(path)?;
    if meta.is_dir() {
        for entry in entries_or_empty(path)? {
            match newest(&entry.path())? {
                Some(t) => latest = latest.max(t),
                None => return Ok(None),
            }
        }
    }
    Ok(Some(latest))
}

/// Puts back candidates a collection moved aside and did not get to remove or return (it was
/// killed in between). The next collection judges them again.
fn restore_aside(objects_dir: &Path, aside_dir: &Path) -> Result<()> {
    for entry in entries_or_empty(aside_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(digest) = name.strip_prefix("gc-").and_then(|rest| rest.split('-').next()) else { continue };
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let target = objects_dir.join(&digest[..2]).join(&digest[2..]);
        if target.exists() {
            remove_any(&entry.path())?;
        } else {
            std::fs::rename(entry.path(), &target).at(&target)?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    let result =
        if path.is_dir() && !path.is_symlink() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}
