//! Store-to-store sync: node-local scratch → project directory, laptop → cluster.
//!
//! [`Store::sync_to`] copies what the destination lacks, file by file, each file written whole
//! and renamed into place, so an interrupted sync leaves the destination consistent and the
//! next sync carries on. It is idempotent: a second sync copies nothing. A run still being
//! written is synced up to its last complete metric block, and later syncs bring the rest.
//! Points are keyed by run, metric and step: readers of the destination keep one value per
//! `(run, key, step)`, so overlapping copies never double-count.

use std::path::Path;
use std::time::Instant;

use crate::error::IoContext;
use crate::fsutil::write_atomic;
use crate::segment::{decode_segment, segment_name, segment_numbers};
use crate::{Error, Result, Store};

/// What [`Store::sync_to`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// Runs the destination did not have.
    pub runs_created: usize,
    /// Runs the destination had, with something new.
    pub runs_updated: usize,
    /// Runs already identical.
    pub runs_unchanged: usize,
    /// Bytes of metric segments written.
    pub segment_bytes: u64,
    /// Artifact objects copied.
    pub objects_copied: usize,
    /// Model versions copied.
    pub versions_copied: usize,
    /// Registry events, aliases and version tags copied.
    pub registry_records_copied: usize,
    /// What could not be synced because both stores hold different data under one name
    /// (for example two different version 3s of a model). Nothing is overwritten.
    pub conflicts: Vec<String>,
    /// Seconds taken.
    pub seconds: f64,
}

impl SyncReport {
    /// Whether the sync copied nothing (the destination was up to date).
    pub fn is_noop(&self) -> bool {
        self.runs_created == 0
            && self.runs_updated == 0
            && self.objects_copied == 0
            && self.versions_copied == 0
            && self.registry_records_copied == 0
    }
}

/// The run files copied as they are; `meta.json` is written last for a new run, so readers of
/// the destination skip it until it is complete.
const RUN_FILES: [&str; 7] =
    ["env.json", "params.json", "tags.json", "inputs.json", "artifacts.json", "heartbeat.json", "status.json"];

impl Store {
    /// Copies every run, artifact and model of this store that `dest` lacks, and what was added
    /// to runs and models since the last sync. Safe while runs are being written here.
    pub fn sync_to(&self, dest: &Store) -> Result<SyncReport> {
        self.sync_to_with_progress(dest, |_, _| {})
    }

    /// [`Store::sync_to`], calling `progress(runs done, runs in all)` after each run.
    pub fn sync_to_with_progress(&self, dest: &Store, mut progress: impl FnMut(usize, usize)) -> Result<SyncReport> {
        let started = Instant::now();
        let mut report = SyncReport::default();
        let ids = self.run_ids()?;
        for (i, id) in ids.iter().enumerate() {
            self.sync_run(dest, id, &mut report)?;
            progress(i + 1, ids.len());
        }
        self.registry().sync_into(&dest.registry(), &mut report)?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn sync_run(&self, dest: &Store, id: &str, report: &mut SyncReport) -> Result<()> {
        let from = self.run_dir(id);
        let to = dest.run_dir(id);
        let is_new = !to.join("meta.json").exists();
        let mut changed = false;

        let metrics_from = from.join("metrics");
        let metrics_to = to.join("metrics");
        std::fs::create_dir_all(&metrics_to).at(&metrics_to)?;
        for n in segment_numbers(&metrics_from)? {
            let name = segment_name(n);
            let src_path = metrics_from.join(&name);
            let bytes = std::fs::read(&src_path).at(&src_path)?;
            // Only whole blocks: a block being written right now comes with the next sync.
            let valid = decode_segment(&src_path, &bytes)?.valid_len as usize;
            let valid = &bytes[..valid];
            let dst_path = metrics_to.join(&name);
            let existing = match std::fs::read(&dst_path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => return Err(Error::Io { path: dst_path, source }),
            };
            if existing == valid || existing.starts_with(valid) {
                continue; // up to date (or the destination has more of the same segment)
            }
            if !valid.starts_with(&existing) {
                report.conflicts.push(format!("run {id}: segment {name} differs between the stores"));
                continue;
            }
            write_atomic(&dst_path, valid)?;
            report.segment_bytes += (valid.len() - existing.len()) as u64;
            changed = true;
        }

        // The artifact manifest is read once: its objects are copied before it is, so the
        // destination never lists an artifact whose files it lacks.
        let manifest_path = from.join("artifacts.json");
        let manifest_bytes = match std::fs::read(&manifest_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(Error::Io { path: manifest_path, source }),
        };
        if let Some(bytes) = &manifest_bytes {
            let manifest: crate::artifacts::Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
                path: manifest_path.clone(),
                line: Some(e.line()),
                message: e.to_string(),
            })?;
            for artifact in manifest.values() {
                for f in &artifact.files {
                    let src = self.objects().path(&f.digest)?;
                    let dst = dest.objects().path(&f.digest)?;
                    if !(dst.exists() && crate::artifacts::refresh(&dst)) {
                        copy_object(&src, &dst)?;
                        report.objects_copied += 1;
                    }
                }
            }
        }

        for file in RUN_FILES {
            let src_path = from.join(file);
            let read =
                if file == "artifacts.json" { Ok(manifest_bytes.clone()) } else { std::fs::read(&src_path).map(Some) };
            let bytes = match read {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(Error::Io { path: src_path, source }),
            };
            if std::fs::read(to.join(file)).ok().as_deref() != Some(&bytes[..]) {
                write_atomic(&to.join(file), &bytes)?;
                // The heartbeat alone changes while a run idles; it is not news.
                changed |= file != "heartbeat.json";
            }
        }

        if is_new {
            let meta = std::fs::read(from.join("meta.json")).at(&from.join("meta.json"))?;
            write_atomic(&to.join("meta.json"), &meta)?;
            report.runs_created += 1;
        } else if changed {
            // The destination may have compacted the run: read it live until compacted again.
            dest.mark_reopened(id)?;
            report.runs_updated += 1;
        } else {
            report.runs_unchanged += 1;
        }
        Ok(())
    }
}

/// Copies a content-addressed object, checking its digest on the way.
fn copy_object(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).at(src)?;
    let expected = dst.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let digest = blake3::hash(&bytes).to_hex();
    if !digest.ends_with(expected) {
        return Err(Error::Corrupt {
            path: src.to_path_buf(),
            line: None,
            message: format!("object content hashes to {digest}, not its name"),
        });
    }
    write_atomic(dst, &bytes)
}
