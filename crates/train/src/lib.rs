//! Training, evaluation and model packages for kiln, on [burn](https://burn.dev) 0.21.
//!
//! [`train`] fits a [`ModelConfig`] (logistic regression, an MLP, or a CNN over images stored
//! as flat rows) following a [`TrainConfig`]: SGD/Adam/AdamW, learning-rate warm-up and
//! schedules, gradient accumulation and clipping, class weights, early stopping on a monitored
//! metric, and atomic [`checkpoint`]s every N steps plus the best k. A run resumed from a
//! checkpoint continues mid-epoch and, on the CPU, reproduces the uninterrupted loss curve
//! exactly. SIGTERM/SIGUSR2 write a checkpoint and stop with [`StopReason::Interrupted`]
//! (exit with [`EXIT_INTERRUPTED`] so a scheduler requeues the job); a non-finite loss stops
//! with [`Error::Diverged`], naming the last good checkpoint. Metrics go to a kiln-track
//! [`kiln_track::Run`] and to [`Hooks`].
//!
//! Training runs on burn's `Flex` CPU backend, or on CUDA with the `cuda` feature (f32, f16
//! or bf16). Device choice is explicit (`cpu`, `cuda:N`) or `auto` ([`DeviceSpec`]); `auto`
//! probes for a driver without letting burn panic and falls back to the CPU with a log line.
//!
//! [`ClassificationReport`] computes accuracy, macro and weighted precision/recall/F1 and the
//! confusion matrix; [`EvalReport`] adds log loss, ROC-AUC (binary and one-vs-rest), expected
//! calibration error and per-slice metrics from predicted probabilities (checked against
//! scikit-learn), and [`PromotionGate`] decides whether a candidate may replace production. A
//! [`ModelPackage`] bundles weights with the architecture, the fitted preprocessing from
//! kiln-data, the input schema, label names, metrics and lineage; [`Predictor`] loads one and
//! predicts from raw rows, which is exactly what kiln-serve does per request.
//!
//! [`tune`] is hyperparameter search in Optuna's model (define-by-run trials; random, grid
//! and TPE samplers; median and successive-halving pruners) over a study journal that many
//! processes on a shared file system append to at once, so each Slurm array task can be one
//! worker; trials can be kiln-track child runs of the study's run.
//!
//! [`plot`] draws metric curves, confusion matrices, reliability diagrams and drift
//! histograms (reference against current) to PNG or SVG with plotters, fonts embedded.
//!
//! | feature | enables | default |
//! |---|---|---|
//! | `cuda` | burn's CUDA backend (the driver is loaded at run time; builds without a toolkit) | no |
//!
//! ```no_run
//! use kiln_train::{CheckpointConfig, EpochReport, Examples, ModelConfig, TrainConfig, train};
//! use ndarray::Array2;
//!
//! # fn main() -> kiln_train::Result<()> {
//! let x = Array2::<f32>::zeros((100, 4));
//! let y: Vec<usize> = (0..100).map(|i| i % 2).collect();
//! let data = Examples::new(x, y)?;
//! let model = ModelConfig::mlp(4, &[32], 2);
//! let config = TrainConfig {
//!     checkpoint: Some(CheckpointConfig { every_steps: 100, ..CheckpointConfig::new("ckpt") }),
//!     ..TrainConfig::default()
//! };
//! let trained = train(&config, &model, &data, None, None, &mut |e: &EpochReport| println!("{e:?}"))?;
//! let predicted = trained.classifier()?.predict(data.x.view())?;
//! # Ok(()) }
//! ```

/// docs/training.md, whose code (the "Your own model" snippet) runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/training.md")]
struct TrainingGuide;

mod burn_data;
pub mod checkpoint;
mod classifier;
mod config;
mod dense;
mod device;
mod error;
mod eval;
mod fit;
mod model;
mod multilabel;
mod optim;
mod package;
pub mod plot;
mod regression;
mod task;
mod trainer;
pub mod tune;

pub use burn_data::BurnDataset;
pub use checkpoint::{CheckpointInfo, best_checkpoints, latest_checkpoint};
pub use classifier::{Classifier, ClassifierTask, InferencePrecision};
pub use config::{
    CheckpointConfig, ClassWeights, EarlyStopping, GradClip, LoaderConfig, LrSchedule, Mode, Monitor, MonitorMetric,
    OptimizerConfig, Order, Precision, TrainConfig,
};

pub use dense::dense;
pub use device::{Device, DeviceSpec, probe_cuda};
pub use error::{Error, Result};
pub use eval::{
    CalibrationBin, ClassMetrics, ClassificationReport, EvalReport, FailureCheck, GateDecision, Promotion,
    PromotionGate, RocAuc, SliceReport, calibration_bins, expected_calibration_error, log_loss, roc_auc, roc_auc_ovr,
};
pub use fit::{Fitted, fit};
pub use model::{Activation, Cnn, CnnConfig, CnnHead, Mlp, MlpConfig, Model, ModelConfig};
pub use multilabel::MultiLabelTask;
pub use package::{
    Lineage, MANIFEST_FILE, Manifest, ModelPackage, OLDEST_PACKAGE_FORMAT_VERSION, PACKAGE_FORMAT_VERSION, PackageSpec,
    PackageTask, PrecisionReport, Prediction, Predictor, compare_precision,
};
pub use regression::{RegressionLoss, RegressionReport, RegressionTask, Regressor, TargetScaler};
pub use task::{Step, Task, Totals, Trainable};
pub use trainer::{
    EXIT_INTERRUPTED, EpochReport, Examples, Hooks, StepReport, StopReason, Trained, ValidationReport, train,
};
