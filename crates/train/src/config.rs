//! What a training run is asked to do: [`TrainConfig`] and its parts, all serde.

use std::borrow::Cow;
use std::path::PathBuf;

pub use kiln_data::Order;
use serde::{Deserialize, Serialize};

use crate::{DeviceSpec, Error, Result};

/// The optimiser and its hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Stochastic gradient descent, optionally with (Nesterov) momentum. `weight_decay` is an L2
    /// penalty added to the gradient.
    Sgd {
        /// Momentum factor (0 turns momentum off).
        #[serde(default)]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam; `weight_decay` is an L2 penalty added to the gradient (PyTorch's `Adam`).
    Adam {
        /// First-moment decay.
        #[serde(default = "beta_1")]
        beta_1: f64,
        /// Second-moment decay.
        #[serde(default = "beta_2")]
        beta_2: f64,
        /// L2 penalty.
        #[serde(default)]
        weight_decay: f64,
    },
    /// AdamW: decoupled weight decay (PyTorch's `AdamW`).
    AdamW {
        /// First-moment decay.
        #[serde(default = "beta_1")]
        beta_1: f64,
        /// Second-moment decay.
        #[serde(default = "beta_2")]
        beta_2: f64,
        /// Decoupled weight decay.
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
    },
}

fn beta_1() -> f64 {
    0.9
}
fn beta_2() -> f64 {
    0.999
}
fn adamw_decay() -> f64 {
    0.01
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::Adam { beta_1: beta_1(), beta_2: beta_2(), weight_decay: 1e-4 }
    }
}

/// How the learning rate changes with the optimiser step. Linear warm-up
/// ([`TrainConfig::warmup_steps`]) comes first; the schedule runs over the remaining steps.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `every_steps` steps.
    Step {
        /// Steps between decays.
        every_steps: u64,
        /// Factor applied at each decay.
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `min_lr` at the last step.
    Cosine {
        /// Rate at the last step.
        #[serde(default)]
        min_lr: f64,
    },
    /// Straight line from the base rate to `end_lr` at the last step.
    Linear {
        /// Rate at the last step.
        #[serde(default)]
        end_lr: f64,
    },
}

impl LrSchedule {
    /// The rate at 0-based optimiser step `step` of `total` steps, for base rate `lr` after
    /// `warmup` warm-up steps. A pure function of the step, so a resumed run needs no scheduler
    /// state beyond the step counter.
    pub fn rate(&self, lr: f64, warmup: u64, step: u64, total: u64) -> f64 {
        if step < warmup {
            return lr * (step + 1) as f64 / warmup as f64;
        }
        let t = (step - warmup) as f64;
        let span = total.saturating_sub(warmup).saturating_sub(1).max(1) as f64;
        let progress = (t / span).min(1.0);
        match self {
            Self::Constant => lr,
            Self::Step { every_steps, gamma } => {
                lr * gamma.powi(((step - warmup) / (*every_steps).max(1)).min(i32::MAX as u64) as i32)
            }
            Self::Cosine { min_lr } => min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()),
            Self::Linear { end_lr } => lr + (end_lr - lr) * progress,
        }
    }
}

/// Gradient clipping, applied to the (accumulated) gradient before each optimiser step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradClip {
    /// Scale all gradients together so their global L2 norm is at most this
    /// (PyTorch's `clip_grad_norm_`).
    Norm(f64),
    /// Clamp every gradient element to `[-v, v]` (PyTorch's `clip_grad_value_`).
    Value(f64),
}

/// Per-class weights of the training loss.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// Every class counts the same.
    #[default]
    None,
    /// `rows / (classes × rows of the class)`, scikit-learn's `"balanced"`.
    Balanced,
    /// One weight per class, in class-index order.
    Explicit(Vec<f64>),
}

/// Float precision of training. Reduced precision runs on CUDA only; see docs/training.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats everywhere.
    #[default]
    F32,
    /// IEEE half precision for weights, activations and gradients (CUDA only).
    F16,
    /// bfloat16 for weights, activations and gradients (CUDA only).
    Bf16,
}

/// The epoch-level metric that early stopping, best weights and best checkpoints follow, by
/// the name an [`EpochReport`](crate::EpochReport) and the tracking run give it: `train_loss`,
/// `val_loss`, or `train_<metric>`/`val_<metric>` for each metric of the task (`val_accuracy`,
/// `val_rmse`, `val_auc`, ...). Serialised as the plain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MonitorMetric(Cow<'static, str>);

impl MonitorMetric {
    /// Validation loss (lower is better).
    pub const VAL_LOSS: Self = Self(Cow::Borrowed("val_loss"));
    /// Validation accuracy (higher is better).
    pub const VAL_ACCURACY: Self = Self(Cow::Borrowed("val_accuracy"));
    /// Mean training loss of the epoch (lower is better).
    pub const TRAIN_LOSS: Self = Self(Cow::Borrowed("train_loss"));
    /// Training accuracy of the epoch (higher is better).
    pub const TRAIN_ACCURACY: Self = Self(Cow::Borrowed("train_accuracy"));

    /// A metric by name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(Cow::Owned(name.into()))
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The better direction, for names whose direction kiln knows: after the `train_`/`val_`
    /// prefix, losses and errors (`*loss`, `*rmse`, `*mse`, `*mae`, `*error`) are minimised;
    /// accuracies, AUCs, F1, R², precision and recall (`*accuracy`, `*auc`, `*f1`, `*r2`,
    /// `*precision`, `*recall`) are maximised; a per-label metric (`auc_<label>`,
    /// `f1_<label>`, ...) goes by its family. Other names need [`Monitor::mode`].
    pub fn known_mode(&self) -> Option<Mode> {
        const MIN: &[&str] = &["loss", "rmse", "mse", "mae", "error"];
        const MAX: &[&str] = &["accuracy", "auc", "f1", "r2", "precision", "recall"];
        let full = self.0.as_ref();
        let name = ["step_val_", "train_", "val_"].iter().find_map(|p| full.strip_prefix(p)).unwrap_or(full);
        // A per-label metric (`auc_<label>`, `f1_<label>`) is known by its family, whatever the
        // label is called (`val_auc_hair_loss` is an AUC).
        let family = |list: &[&str]| list.iter().any(|f| name.starts_with(&format!("{f}_")));
        if family(MAX) {
            return Some(Mode::Max);
        }
        if family(MIN) {
            return Some(Mode::Min);
        }
        if MIN.iter().any(|s| name.ends_with(s)) {
            Some(Mode::Min)
        } else if MAX.iter().any(|s| name.ends_with(s)) {
            Some(Mode::Max)
        } else {
            None
        }
    }
}

impl Default for MonitorMetric {
    fn default() -> Self {
        Self::VAL_LOSS
    }
}

impl std::fmt::Display for MonitorMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for MonitorMetric {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

/// Whether a lower or a higher value is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

/// The metric to follow, and which direction is better.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Monitor {
    /// The metric.
    pub metric: MonitorMetric,
    /// Better direction; by default the one kiln knows for the metric's name
    /// ([`MonitorMetric::known_mode`]).
    pub mode: Option<Mode>,
}

impl Monitor {
    /// Follows `metric`, in the direction kiln knows for its name.
    pub fn new(metric: impl Into<MonitorMetric>) -> Self {
        Self { metric: metric.into(), mode: None }
    }

    /// Follows `metric` in direction `mode`.
    pub fn with_mode(metric: impl Into<MonitorMetric>, mode: Mode) -> Self {
        Self { metric: metric.into(), mode: Some(mode) }
    }

    /// The direction in effect (lower is better for a name of unknown direction without a
    /// `mode`, which [`TrainConfig::validate`] refuses).
    pub fn mode(&self) -> Mode {
        self.mode.or_else(|| self.metric.known_mode()).unwrap_or(Mode::Min)
    }

    /// Whether the metric needs a validation set.
    pub fn needs_validation(&self) -> bool {
        self.metric.name().starts_with("val_")
    }

    /// The metric's name as logged to a run.
    pub fn name(&self) -> &str {
        self.metric.name()
    }

    /// Whether `value` beats `best` by more than `min_delta`.
    pub fn improves(&self, value: f64, best: f64, min_delta: f64) -> bool {
        match self.mode() {
            Mode::Min => value < best - min_delta,
            Mode::Max => value > best + min_delta,
        }
    }
}

/// Stop when the monitored metric has not improved for `patience` epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

/// Where and how often to write checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// The checkpoint directory (created if needed).
    pub dir: PathBuf,
    /// Write a checkpoint every this many optimiser steps (0: only at epoch ends that make a
    /// best-k checkpoint, on interruption, and at the end).
    #[serde(default)]
    pub every_steps: u64,
    /// How many of the most recent step checkpoints to keep.
    #[serde(default = "one")]
    pub keep_last: usize,
    /// How many epoch-end checkpoints to keep, ranked by the monitored metric.
    #[serde(default)]
    pub keep_best: usize,
    /// Continue from the latest checkpoint in `dir` if there is one.
    #[serde(default = "yes")]
    pub resume: bool,
    /// On SIGTERM or SIGUSR2, write a checkpoint at the next step boundary and stop with
    /// [`StopReason::Interrupted`](crate::StopReason::Interrupted) (Slurm sends these before
    /// preemption or at the time limit with `--signal`).
    #[serde(default = "yes")]
    pub handle_signals: bool,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

impl CheckpointConfig {
    /// Checkpoints in `dir`: the latest one kept, resumed from, signals handled.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), every_steps: 0, keep_last: 1, keep_best: 0, resume: true, handle_signals: true }
    }
}

/// How the data loader decodes items ahead of training. The batches, and so the results, are
/// the same for any setting: a resumed training may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoaderConfig {
    /// Threads decoding batches ahead (0: decode on the training thread, which suits data
    /// already in memory).
    pub workers: usize,
    /// Batches each worker decodes ahead (at least 1).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self { workers: 0, prefetch: 2 }
    }
}

/// How to train. Logged as run parameters and stored in model packages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Passes over the training rows.
    pub epochs: usize,
    /// Stop after this many optimiser steps, even mid-epoch.
    pub max_steps: Option<u64>,
    /// Rows per forward/backward pass.
    pub batch_size: usize,
    /// Batches whose gradients are summed before one optimiser step (1: no accumulation).
    pub accumulate: usize,
    /// The optimiser.
    pub optimizer: OptimizerConfig,
    /// Base learning rate.
    pub learning_rate: f64,
    /// Linear warm-up steps from `learning_rate / warmup_steps` to `learning_rate`.
    pub warmup_steps: u64,
    /// The schedule after warm-up.
    pub schedule: LrSchedule,
    /// Gradient clipping.
    pub grad_clip: Option<GradClip>,
    /// Class weights of the training loss (validation loss is unweighted).
    pub class_weights: ClassWeights,
    /// Float precision.
    pub precision: Precision,
    /// Seed for initialisation, batch order and dropout.
    pub seed: u64,
    /// Where to train.
    pub device: DeviceSpec,
    /// The metric that picks the best epoch, early stopping and best checkpoints follow.
    pub monitor: Monitor,
    /// Early stopping on [`TrainConfig::monitor`].
    pub early_stopping: Option<EarlyStopping>,
    /// Checkpointing and resume.
    pub checkpoint: Option<CheckpointConfig>,
    /// Log the per-step loss and learning rate to the run every this many steps (0: never).
    pub log_every_steps: u64,
    /// Also validate every this many optimiser steps within an epoch (0: at epoch ends only),
    /// as Lightning's `val_check_interval`: for epochs too long to wait for. The results go to
    /// the run as `step_val_loss` and `step_val_<metric>` at the optimiser step, and to
    /// [`Hooks::on_validation`](crate::Hooks::on_validation); best epochs and early stopping
    /// still follow the epoch-end validation.
    pub val_every_steps: u64,
    /// The order of each epoch's training items (validation is always sequential).
    pub order: Order,
    /// The data loader's threads.
    pub loader: LoaderConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            max_steps: None,
            batch_size: 64,
            accumulate: 1,
            optimizer: OptimizerConfig::default(),
            learning_rate: 1e-3,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            grad_clip: None,
            class_weights: ClassWeights::None,
            precision: Precision::F32,
            seed: 42,
            device: DeviceSpec::Auto,
            monitor: Monitor::default(),
            early_stopping: None,
            checkpoint: None,
            log_every_steps: 1,
            val_every_steps: 0,
            order: Order::Shuffle,
            loader: LoaderConfig::default(),
        }
    }
}

fn positive(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("{name} must be a positive number, got {v}")))
    }
}

fn non_negative(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("{name} must be a non-negative number, got {v}")))
    }
}

impl TrainConfig {
    /// Checks every value; the message names the field.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.accumulate == 0 {
            return Err(Error::Config(format!(
                "epochs, batch_size and accumulate must be positive, got {}, {} and {}",
                self.epochs, self.batch_size, self.accumulate
            )));
        }
        if self.max_steps == Some(0) {
            return Err(Error::Config("max_steps must be positive when set".into()));
        }
        positive("learning_rate", self.learning_rate)?;
        match &self.optimizer {
            OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
                if !(0.0..1.0).contains(momentum) {
                    return Err(Error::Config(format!("optimizer.momentum must be in [0, 1), got {momentum}")));
                }
                non_negative("optimizer.weight_decay", *weight_decay)?;
            }
            OptimizerConfig::Adam { beta_1, beta_2, weight_decay }
            | OptimizerConfig::AdamW { beta_1, beta_2, weight_decay } => {
                for (name, b) in [("optimizer.beta_1", beta_1), ("optimizer.beta_2", beta_2)] {
                    if !(0.0..1.0).contains(b) {
                        return Err(Error::Config(format!("{name} must be in [0, 1), got {b}")));
                    }
                }
                non_negative("optimizer.weight_decay", *weight_decay)?;
            }
        }
        match &self.schedule {
            LrSchedule::Constant => {}
            LrSchedule::Step { every_steps, gamma } => {
                if *every_steps == 0 {
                    return Err(Error::Config("schedule.every_steps must be positive".into()));
                }
                positive("schedule.gamma", *gamma)?;
            }
            LrSchedule::Cosine { min_lr } => non_negative("schedule.min_lr", *min_lr)?,
            LrSchedule::Linear { end_lr } => non_negative("schedule.end_lr", *end_lr)?,
        }
        match self.grad_clip {
            Some(GradClip::Norm(v)) => positive("grad_clip.norm", v)?,
            Some(GradClip::Value(v)) => positive("grad_clip.value", v)?,
            None => {}
        }
        if let ClassWeights::Explicit(w) = &self.class_weights {
            for (class, v) in w.iter().enumerate() {
                non_negative(&format!("class_weights[{class}]"), *v)?;
            }
        }
        if let Some(es) = &self.early_stopping {
            non_negative("early_stopping.min_delta", es.min_delta)?;
        }
        let metric = self.monitor.name();
        if metric.is_empty() {
            return Err(Error::Config("monitor.metric is empty".into()));
        }
        if self.monitor.mode.is_none() && self.monitor.metric.known_mode().is_none() {
            return Err(Error::Config(format!(
                "monitor.mode must be set (\"min\" or \"max\") for monitor.metric = \"{metric}\": kiln knows the direction of losses, errors, accuracies, AUCs, F1, R², precision and recall only"
            )));
        }
        if let Order::BlockShuffle { window: 0 } = self.order {
            return Err(Error::Config("order.window must be at least 1".into()));
        }
        if self.loader.prefetch == 0 {
            return Err(Error::Config("loader.prefetch must be at least 1".into()));
        }
        if self.checkpoint.as_ref().is_some_and(|c| c.keep_last == 0) {
            return Err(Error::Config(
                "checkpoint.keep_last must be at least 1 (the latest checkpoint is what resume reads)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_formulas() {
        let total = 101;
        let cos = LrSchedule::Cosine { min_lr: 0.0 };
        assert_eq!(cos.rate(1.0, 0, 0, total), 1.0);
        assert!((cos.rate(1.0, 0, 50, total) - 0.5).abs() < 1e-12);
        assert!(cos.rate(1.0, 0, 100, total).abs() < 1e-12);
        let warm = LrSchedule::Constant;
        assert_eq!(warm.rate(0.1, 10, 0, total), 0.01);
        assert_eq!(warm.rate(0.1, 10, 9, total), 0.1);
        assert_eq!(warm.rate(0.1, 10, 50, total), 0.1);
        let step = LrSchedule::Step { every_steps: 10, gamma: 0.5 };
        assert_eq!(step.rate(1.0, 0, 9, total), 1.0);
        assert_eq!(step.rate(1.0, 0, 10, total), 0.5);
        assert_eq!(step.rate(1.0, 0, 25, total), 0.25);
        let lin = LrSchedule::Linear { end_lr: 0.0 };
        // One warm-up step, then 101 steps from 1.0 down to 0.0.
        assert!((lin.rate(1.0, 1, 51, total + 1) - 0.5).abs() < 1e-12);
        assert_eq!(lin.rate(1.0, 1, 101, total + 1), 0.0);
    }

    #[test]
    fn invalid_values_name_their_field() {
        let bad = |c: TrainConfig| c.validate().unwrap_err().to_string();
        assert!(bad(TrainConfig { learning_rate: -1.0, ..Default::default() }).contains("learning_rate"));
        let sgd = OptimizerConfig::Sgd { momentum: 1.5, nesterov: false, weight_decay: 0.0 };
        assert!(bad(TrainConfig { optimizer: sgd, ..Default::default() }).contains("momentum"));
        let clip = Some(GradClip::Norm(0.0));
        assert!(bad(TrainConfig { grad_clip: clip, ..Default::default() }).contains("grad_clip.norm"));
        let w = ClassWeights::Explicit(vec![1.0, f64::NAN]);
        assert!(bad(TrainConfig { class_weights: w, ..Default::default() }).contains("class_weights[1]"));
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn configs_read_from_json_with_defaults() {
        let c: TrainConfig = serde_json::from_str(
            r#"{"epochs": 3, "optimizer": {"kind": "sgd", "momentum": 0.9},
                "schedule": {"kind": "cosine"}, "grad_clip": {"norm": 1.0},
                "class_weights": "balanced", "monitor": {"metric": "val_accuracy"},
                "early_stopping": {"patience": 2}}"#,
        )
        .unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.optimizer, OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 0.0 });
        assert_eq!(c.monitor.mode(), Mode::Max);
        assert_eq!(c.batch_size, 64);
        c.validate().unwrap();
    }

    #[test]
    fn any_named_metric_can_be_monitored_with_a_known_or_given_direction() {
        let read = |json: &str| serde_json::from_str::<TrainConfig>(json).unwrap();
        let rmse = read(r#"{"monitor": {"metric": "val_rmse"}}"#);
        assert_eq!((rmse.monitor.mode(), rmse.monitor.needs_validation()), (Mode::Min, true));
        let auc = read(r#"{"monitor": {"metric": "val_auc"}}"#);
        assert_eq!(auc.monitor.mode(), Mode::Max);
        assert!(auc.monitor.improves(0.9, 0.8, 0.0) && !auc.monitor.improves(0.8, 0.9, 0.0));
        // Per-label metrics go by their family, not by the label's name.
        assert_eq!(MonitorMetric::new("val_auc_hair_loss").known_mode(), Some(Mode::Max));
        assert_eq!(MonitorMetric::new("val_f1_error").known_mode(), Some(Mode::Max));
        assert_eq!(MonitorMetric::new("val_macro_f1").known_mode(), Some(Mode::Max));
        assert_eq!(MonitorMetric::new("val_rmse").known_mode(), Some(Mode::Min));
        let odd = read(r#"{"monitor": {"metric": "train_dice_score"}}"#);
        let err = odd.validate().unwrap_err().to_string();
        assert!(err.contains("monitor.mode") && err.contains("train_dice_score"), "{err}");
        let given = read(r#"{"monitor": {"metric": "train_dice_score", "mode": "max"}}"#);
        given.validate().unwrap();
        assert_eq!(given.monitor.mode(), Mode::Max);
        // Written as the plain name, as before.
        assert_eq!(serde_json::to_value(&rmse.monitor.metric).unwrap(), serde_json::json!("val_rmse"));
        assert_eq!(MonitorMetric::default().name(), "val_loss");
    }
}
