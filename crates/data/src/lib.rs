//! Tabular data for kiln: loading, validation, preprocessing, splits and dataset versions.
//!
//! kiln-data is the first stage of a kiln pipeline. It reads files with
//! [Polars](https://pola.rs) into a [`Dataset`], which remembers where the data came from and
//! a BLAKE3 hash of its bytes (the dataset version recorded by kiln-track). A [`Schema`] checks
//! every value and reports violations by row, file line and column; [`stratified_split`] cuts
//! reproducible train/validation/test splits with kiln's own [`SplitMix64`] generator; and
//! fitted transforms such as [`StandardScaler`] and [`LabelEncoder`] are plain serde structs,
//! stored inside model packages so that serving applies exactly what training fitted.
//!
//! [`detect_drift`] compares current data with a reference column by column, with
//! Evidently's tests and defaults (Kolmogorov–Smirnov, chi-square, Z, Wasserstein,
//! Jensen–Shannon, PSI), for monitoring served models.
//!
//! [`Source`] and [`Loader`] feed training loops item by item: a source decodes item `i` (a row,
//! an image, a window of an array on disk) with a per-item generator for augmentation, and a
//! loader cuts epochs into batches in a seeded [`Order`], decoding ahead on worker threads yet
//! handing batches over in order, so results do not depend on the number of workers.
//! [`npy`] reads NumPy `.npy` files and `.npz` archives item by item, memory-mapped, as sources;
//! [`images`] reads folders of PNG and JPEG images with class labels.
//!
//! kiln-data depends on no other kiln crate. kiln-train turns its matrices into tensors, and
//! kiln-serve uses [`Schema::check_row`] to hold requests to the training schema.
//!
//! ```no_run
//! use kiln_data::{ColumnSpec, Dataset, Schema, SplitFractions, StandardScaler, stratified_split};
//!
//! # fn main() -> kiln_data::Result<()> {
//! let data = Dataset::load_csv("data/breast_cancer.csv")?;
//! let features: Vec<String> =
//!     data.column_names().into_iter().filter(|c| c != "target").collect();
//! let mut columns: Vec<ColumnSpec> = features.iter().map(|f| ColumnSpec::number(f.as_str())).collect();
//! columns.push(ColumnSpec::category("target", ["malignant", "benign"]));
//! Schema::new(columns).validate(&data)?;
//!
//! let labels = data.to_strings("target")?;
//! let split = stratified_split(&labels, SplitFractions::default(), 42)?;
//! let train = data.take(&split.train)?.to_matrix(&features)?;
//! let scaler = StandardScaler::fit(train.view(), &features)?;
//! # Ok(()) }
//! ```

mod dataset;
pub mod datasets;
pub mod drift;
mod error;
pub mod images;
pub mod ingest;
pub mod npy;
pub mod pipeline;
mod preprocess;
pub mod profile;
mod rng;
pub mod source;
mod split;
mod stats;
mod synthetic;
pub mod tensors;
mod util;
mod validate;
pub mod version;

pub use dataset::{CsvOptions, Dataset, write_parquet};
pub use drift::{DatasetDrift, DriftOptions, DriftTest, detect_drift};
pub use error::{Error, Result};
pub use ingest::{Format, Scan, ScanOptions, scan};
pub use pipeline::{FittedPipeline, Pipeline, TrainSplit};
pub use preprocess::{LabelEncoder, StandardScaler};
pub use profile::{DatasetProfile, ProfileOptions};
pub use rng::SplitMix64;
pub use source::{Batch, Batches, FnSource, Loader, Order, Row, Rows, Source, Target, from_fn, item_rng};
pub use split::{
    Fold, Split, SplitFractions, group_split, k_fold, random_split, stratified_k_fold, stratified_split, time_split,
};
pub use synthetic::{InjectedDrift, SyntheticSpec, synthetic_classification};
pub use tensors::{WeightedSampler, epoch_batches, to_f32};
pub use validate::{
    ColumnKind, ColumnSpec, ExprCheck, ExtraColumns, Failure, LengthRange, MAX_FAILURE_CASES, MAX_REPORTED_VIOLATIONS,
    Quarantine, RowCount, Schema, ValidationReport, Violation,
};
pub use version::{ContentDigest, DatasetVersion, HashCache, hash_path};

/// Re-exported so users can build frames without naming a Polars version themselves.
pub use polars;
