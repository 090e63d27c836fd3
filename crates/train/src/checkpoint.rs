//! Training checkpoints: what a resumed run needs to continue exactly where it stopped.
//!
//! ```text
//! <dir>/checkpoints.json         index: the latest checkpoint, the kept step checkpoints, the
//!                                best-k epoch checkpoints with their monitored values
//! <dir>/step-0000000120/         one checkpoint, named by optimiser step
//!     model.mpk                  weights (burn named MessagePack, full precision)
//!     optimizer.mpk              optimiser state (moments, momentum buffers)
//!     state.json                 loop position, the epoch's running sums, loss history,
//!                                early-stopping state, the training config, the task's
//!                                description, the data's fingerprint, BLAKE3 of the two
//!                                files above
//! <dir>/best-epoch-0005.mpk      weights of the best epoch so far
//! ```
//!
//! A checkpoint is written into a temporary directory, each file synced, then renamed into
//! place and the directory synced; the index is replaced atomically afterwards. A crash at any
//! point leaves the previous checkpoint readable, and a `step-*` directory that exists is
//! complete. If the index is lost, the highest complete `step-*` directory is used.
//!
//! Nothing random needs saving: the batch order of epoch `e`, each item's augmentation
//! generator and the dropout masks of each batch are derived from the seed, the epoch and the
//! batch or item index, and the learning rate is a function of the step.
//!
//! Format 2 (this version) stores the task's description and the epoch's named sums, so it
//! serves any [`Task`](crate::Task); format-1 checkpoints (kiln before the task seam) are
//! refused with a message naming the file.

use std::path::{Path, PathBuf};

use kiln_track::durable::{sync_dir, unique_tmp, write_atomic};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::config::{Mode, TrainConfig};
use crate::task::Totals;
use crate::trainer::EpochReport;
use crate::{Error, Result};

/// The checkpoint state format this version writes and reads.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 2;
const INDEX_FILE: &str = "checkpoints.json";
const STATE_FILE: &str = "state.json";
const MODEL_FILE: &str = "model.mpk";
const OPTIMIZER_FILE: &str = "optimizer.mpk";

/// The best epoch so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Best {
    pub value: f64,
    pub epoch: usize,
    /// File in the checkpoint directory holding its weights (when checkpointing).
    pub file: Option<String>,
}

/// Where the loop is, and everything it has accumulated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LoopState {
    pub format_version: u32,
    /// Optimiser steps done.
    pub step: u64,
    /// The epoch in progress (1-based).
    pub epoch: usize,
    /// Batches of that epoch already consumed.
    pub batch: usize,
    /// Rows of the epoch's consumed batches.
    pub epoch_rows: usize,
    /// Sum of batch loss × rows over the epoch's consumed batches.
    pub epoch_loss_sum: f64,
    /// The task's named sums over the epoch's consumed batches.
    pub epoch_sums: BTreeMap<String, f64>,
    /// Training wall time of the epoch before this checkpoint.
    pub epoch_seconds: f64,
    /// Mean training loss of every optimiser step so far.
    pub step_losses: Vec<f64>,
    /// Every finished epoch.
    pub history: Vec<EpochReport>,
    pub best: Option<Best>,
    /// Epochs since the monitored metric last improved.
    pub since_best: usize,
    /// The tracking run that logged the steps so far.
    pub run_id: Option<String>,
    pub train_config: TrainConfig,
    /// The task's description ([`crate::Task::describe`]).
    pub task: serde_json::Value,
    /// The fingerprint of the training and validation sources.
    pub data_digest: String,
    pub model_blake3: String,
    pub optimizer_blake3: String,
}

impl LoopState {
    pub fn fresh(config: &TrainConfig, task: serde_json::Value, data_digest: String) -> Self {
        Self {
            format_version: CHECKPOINT_FORMAT_VERSION,
            step: 0,
            epoch: 1,
            batch: 0,
            epoch_rows: 0,
            epoch_loss_sum: 0.0,
            epoch_sums: BTreeMap::new(),
            epoch_seconds: 0.0,
            step_losses: Vec::new(),
            history: Vec::new(),
            best: None,
            since_best: 0,
            run_id: None,
            train_config: config.clone(),
            task,
            data_digest,
            model_blake3: String::new(),
            optimizer_blake3: String::new(),
        }
    }
}

impl LoopState {
    /// The running totals of the epoch in progress.
    pub fn epoch_totals(&self) -> Totals {
        Totals {
            rows: self.epoch_rows,
            loss_sum: self.epoch_loss_sum,
            sums: self.epoch_sums.clone(),
            values: BTreeMap::new(),
        }
    }

    /// Records the running totals of the epoch in progress.
    pub fn set_epoch_totals(&mut self, totals: &Totals) {
        self.epoch_rows = totals.rows;
        self.epoch_loss_sum = totals.loss_sum;
        self.epoch_sums.clone_from(&totals.sums);
    }
}

/// A checkpoint on disk, as [`latest_checkpoint`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// Its directory.
    pub path: PathBuf,
    /// Optimiser steps done.
    pub step: u64,
    /// The epoch in progress.
    pub epoch: usize,
    /// The tracking run that was logging, to resume it (`Store::resume_run`).
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Index {
    latest: Option<String>,
    /// Step checkpoints, oldest first.
    recent: Vec<String>,
    /// Epoch-end checkpoints ranked best first.
    best: Vec<Ranked>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ranked {
    name: String,
    value: f64,
    epoch: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn corrupt(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), message: message.into() }
}

fn step_name(step: u64) -> String {
    format!("step-{step:010}")
}

fn read_index(dir: &Path) -> Result<Option<Index>> {
    let path = dir.join(INDEX_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(index) => Ok(Some(index)),
            Err(e) => {
                tracing::warn!("{}: unreadable ({e}); scanning for checkpoints instead", path.display());
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

fn read_state(path: &Path) -> Result<LoopState> {
    let file = path.join(STATE_FILE);
    let bytes = std::fs::read(&file).map_err(io(&file))?;
    let probe: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(&file, format!("not valid JSON: {e}")))?;
    let version = probe.get("format_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(CHECKPOINT_FORMAT_VERSION)) {
        let found = version.map_or_else(|| "no format_version".to_string(), |v| format!("format version {v}"));
        let hint = match version {
            Some(v) if v < u64::from(CHECKPOINT_FORMAT_VERSION) => {
                "; it was written by an earlier kiln, whose checkpoints do not record the data's fingerprint: \
                 start from a new checkpoint directory"
            }
            _ => "",
        };
        return Err(corrupt(
            &file,
            format!("checkpoint {found} is not supported (this kiln reads version {CHECKPOINT_FORMAT_VERSION}){hint}"),
        ));
    }
    serde_json::from_value(probe).map_err(|e| corrupt(&file, e.to_string()))
}

/// The checkpoint a resumed run would continue from, if `dir` holds one.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<CheckpointInfo>> {
    Ok(find_latest(dir)?.map(|(path, state)| CheckpointInfo {
        path,
        step: state.step,
        epoch: state.epoch,
        run_id: state.run_id,
    }))
}

/// The epoch-end checkpoints kept as the best (`keep_best`), best first:
/// (directory, monitored value, epoch).
pub fn best_checkpoints(dir: &Path) -> Result<Vec<(PathBuf, f64, usize)>> {
    Ok(read_index(dir)?
        .map(|i| i.best.into_iter().map(|r| (dir.join(&r.name), r.value, r.epoch)).collect())
        .unwrap_or_default())
}

fn find_latest(dir: &Path) -> Result<Option<(PathBuf, LoopState)>> {
    if let Some(latest) = read_index(dir)?.and_then(|i| i.latest) {
        let path = dir.join(&latest);
        if path.is_dir() {
            return read_state(&path).map(|s| Some((path, s)));
        }
        tracing::warn!("{}: the index names {latest}, which is missing; scanning", dir.display());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path: dir.to_path_buf(), source }),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-") && n[5..].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    names.sort();
    for name in names.iter().rev() {
        match read_state(&dir.join(name)) {
            Ok(state) => return Ok(Some((dir.join(name), state))),
            Err(e) => tracing::warn!("skipping checkpoint {name}: {e}"),
        }
    }
    Ok(None)
}

/// A loaded checkpoint: state plus the two weight files, checked against their hashes.
pub(crate) struct Loaded {
    pub path: PathBuf,
    pub state: LoopState,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub best_weights: Option<Vec<u8>>,
}

/// Reads the latest checkpoint in `dir`, verifying every file.
pub(crate) fn load_latest(dir: &Path) -> Result<Option<Loaded>> {
    let Some((path, state)) = find_latest(dir)? else { return Ok(None) };
    let read_checked = |file: &Path, want: &str| -> Result<Vec<u8>> {
        let bytes = std::fs::read(file).map_err(io(file))?;
        let got = blake3::hash(&bytes).to_hex().to_string();
        if got != want {
            return Err(corrupt(file, format!("checksum mismatch: state.json says {want}, file hashes to {got}")));
        }
        Ok(bytes)
    };
    let model = read_checked(&path.join(MODEL_FILE), &state.model_blake3)?;
    let optimizer = read_checked(&path.join(OPTIMIZER_FILE), &state.optimizer_blake3)?;
    let best_weights = match state.best.as_ref().and_then(|b| b.file.as_ref()) {
        Some(file) => {
            let p = dir.join(file);
            Some(std::fs::read(&p).map_err(io(&p))?)
        }
        None => None,
    };
    Ok(Some(Loaded { path, state, model, optimizer, best_weights }))
}

/// Settings a resumed run may change (to extend training, or to go on with a lower learning
/// rate after a divergence). Everything else shapes the state a checkpoint holds (optimiser
/// moments, batch positions, the monitored best) and must stay.
const ADJUSTABLE: &[&str] = &[
    "device",
    "checkpoint",
    "log_every_steps",
    "epochs",
    "max_steps",
    "early_stopping",
    "learning_rate",
    "warmup_steps",
    "schedule",
    "grad_clip",
    "loader",
    "val_every_steps",
];

/// Checks that a checkpoint belongs to this training: same task, same data, same settings
/// except the [`ADJUSTABLE`] ones.
pub(crate) fn check_compatible(
    loaded: &Loaded,
    config: &TrainConfig,
    task: &serde_json::Value,
    digest: &str,
) -> Result<()> {
    let why = if loaded.state.task != *task {
        Some(format!(
            "the model architecture or task differs (the checkpoint's is {}, this training's is {})",
            loaded.state.task, task
        ))
    } else if loaded.state.data_digest != digest {
        Some("the training or validation data differ (their fingerprints do not match)".to_string())
    } else {
        let (was, now) = (serde_json::to_value(&loaded.state.train_config), serde_json::to_value(config));
        let changed: Vec<&str> = match (&was, &now) {
            (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) => {
                b.iter().filter(|(k, v)| a.get(*k) != Some(v)).map(|(k, _)| k.as_str()).collect()
            }
            _ => Vec::new(),
        };
        let (adjustable, fixed): (Vec<&str>, Vec<&str>) = changed.into_iter().partition(|k| ADJUSTABLE.contains(k));
        if !adjustable.is_empty() {
            tracing::warn!(
                "resuming {} with changed {}: the run continues under the new values",
                loaded.path.display(),
                adjustable.join(", ")
            );
        }
        (!fixed.is_empty()).then(|| format!("training settings changed: {}", fixed.join(", ")))
    };
    match why {
        Some(why) => Err(corrupt(
            &loaded.path,
            format!("cannot resume: {why}; use a new checkpoint directory or set checkpoint.resume = false"),
        )),
        None => Ok(()),
    }
}

/// Writes checkpoints into one directory and prunes the ones no longer kept.
pub(crate) struct Writer {
    dir: PathBuf,
    keep_last: usize,
    keep_best: usize,
    mode: Mode,
    index: Index,
}

impl Writer {
    pub fn open(dir: &Path, keep_last: usize, keep_best: usize, mode: Mode) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let index = read_index(dir)?.unwrap_or_default();
        Ok(Self { dir: dir.to_path_buf(), keep_last: keep_last.max(1), keep_best, mode, index })
    }

    /// Writes a new best-epoch weights file and returns its name.
    pub fn write_best(&self, epoch: usize, weights: &[u8]) -> Result<String> {
        let name = format!("best-epoch-{epoch:04}.mpk");
        write_atomic(&self.dir.join(&name), weights)?;
        Ok(name)
    }

    /// Writes one checkpoint. `ranked` offers it as a best-k candidate with the monitored value.
    pub fn save(
        &mut self,
        state: &mut LoopState,
        model: &[u8],
        optimizer: &[u8],
        ranked: Option<f64>,
    ) -> Result<PathBuf> {
        state.model_blake3 = blake3::hash(model).to_hex().to_string();
        state.optimizer_blake3 = blake3::hash(optimizer).to_hex().to_string();
        let name = step_name(state.step);
        let final_path = self.dir.join(&name);
        let tmp = unique_tmp(&self.dir, &name);
        let write = |file: &str, bytes: &[u8]| -> Result<()> {
            use std::io::Write;
            let path = tmp.join(file);
            let mut f = std::fs::File::create(&path).map_err(io(&path))?;
            f.write_all(bytes).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))
        };
        let result = (|| -> Result<()> {
            std::fs::create_dir(&tmp).map_err(io(&tmp))?;
            write(MODEL_FILE, model)?;
            write(OPTIMIZER_FILE, optimizer)?;
            let json = serde_json::to_vec(state).map_err(|e| corrupt(&tmp, e.to_string()))?;
            write(STATE_FILE, &json)?;
            sync_dir(&tmp)?;
            if final_path.exists() {
                // The same step written twice (an epoch end that was also an interruption):
                // move the old one aside first; the index still names a complete directory
                // until the new one is in place.
                let old = unique_tmp(&self.dir, &format!("{name}.old"));
                std::fs::rename(&final_path, &old).map_err(io(&final_path))?;
                std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
                let _ = std::fs::remove_dir_all(&old);
            } else {
                std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
            }
            Ok(sync_dir(&self.dir)?)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }

        self.index.latest = Some(name.clone());
        self.index.recent.retain(|n| *n != name);
        self.index.recent.push(name.clone());
        if let Some(value) = ranked.filter(|_| self.keep_best > 0) {
            self.index.best.retain(|r| r.name != name);
            self.index.best.push(Ranked { name: name.clone(), value, epoch: state.epoch.saturating_sub(1) });
            let mode = self.mode;
            self.index.best.sort_by(|a, b| {
                let ord = a.value.total_cmp(&b.value);
                if mode == Mode::Min { ord } else { ord.reverse() }
            });
        }
        let mut dropped: Vec<String> = Vec::new();
        if self.index.recent.len() > self.keep_last {
            let excess = self.index.recent.len() - self.keep_last;
            dropped.extend(self.index.recent.drain(..excess));
        }
        if self.index.best.len() > self.keep_best {
            dropped.extend(self.index.best.drain(self.keep_best..).map(|r| r.name));
        }
        let mut json = serde_json::to_vec_pretty(&self.index).map_err(|e| corrupt(&self.dir, e.to_string()))?;
        json.push(b'\n');
        write_atomic(&self.dir.join(INDEX_FILE), &json)?;

        let kept = |n: &String| self.index.recent.contains(n) || self.index.best.iter().any(|r| r.name == *n);
        for name in dropped.iter().filter(|n| !kept(n)) {
            let path = self.dir.join(name);
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!("could not remove old checkpoint {}: {e}", path.display());
            }
        }
        // Best-epoch weight files other than the current one are no longer referenced by the
        // latest checkpoint.
        let current = state.best.as_ref().and_then(|b| b.file.clone());
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let n = entry.file_name().to_string_lossy().into_owned();
                if n.starts_with("best-epoch-") && n.ends_with(".mpk") && Some(&n) != current.as_ref() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(final_path)
    }
}
