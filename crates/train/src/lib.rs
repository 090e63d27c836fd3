//! Training, evaluation and model packages for kiln, on [burn](https://burn.dev) 0.21.
//!
//! [`train`] fits an [`Mlp`] classifier with Adam and cross-entropy on burn's `Flex` CPU
//! backend, or on CUDA with the `cuda` feature. Device choice is explicit (`cpu`, `cuda:N`)
//! or `auto` ([`DeviceSpec`]); `auto` probes for a driver without letting burn panic and falls
//! back to the CPU with a log line. Each epoch's metrics go to a kiln-track [`kiln_track::Run`].
//!
//! [`ClassificationReport`] computes accuracy, macro and weighted precision/recall/F1 and the
//! confusion matrix; [`EvalReport`] adds log loss, ROC-AUC (binary and one-vs-rest), expected
//! calibration error and per-slice metrics from predicted probabilities (checked against
//! scikit-learn), and [`PromotionGate`] decides whether a candidate may replace production. A
//! [`ModelPackage`] bundles weights with the architecture, the fitted preprocessing from
//! kiln-data, the input schema, label names, metrics and lineage; [`Predictor`] loads one and
//! predicts from raw rows, which is exactly what kiln-serve does per request.
//!
//! | feature | enables | default |
//! |---|---|---|
//! | `cuda` | burn's CUDA backend (the driver is loaded at run time; builds without a toolkit) | no |
//!
//! ```no_run
//! use kiln_train::{Examples, TrainConfig, train};
//! use ndarray::Array2;
//!
//! # fn main() -> kiln_train::Result<()> {
//! let x = Array2::<f32>::zeros((100, 4));
//! let y: Vec<usize> = (0..100).map(|i| i % 2).collect();
//! let data = Examples::new(x, y)?;
//! let trained = train(&TrainConfig::default(), 2, &data, None, None, &mut |e| println!("{e:?}"))?;
//! let predicted = trained.classifier()?.predict(data.x.view())?;
//! # Ok(()) }
//! ```

mod device;
mod error;
mod eval;
mod model;
mod package;
mod trainer;

pub use device::{Device, DeviceSpec, probe_cuda};
pub use error::{Error, Result};
pub use eval::{
    ClassMetrics, ClassificationReport, EvalReport, GateDecision, PromotionGate, RocAuc, SliceReport,
    expected_calibration_error, log_loss, roc_auc, roc_auc_ovr,
};
pub use model::{Mlp, MlpConfig};
pub use package::{
    Lineage, MANIFEST_FILE, Manifest, ModelPackage, PACKAGE_FORMAT_VERSION, PackageSpec, Prediction, Predictor,
};
pub use trainer::{Classifier, EpochReport, Examples, TrainConfig, Trained, train};
