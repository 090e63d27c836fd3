//! The error type of kiln-train.

use std::path::PathBuf;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while training, evaluating or packaging a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A data step failed.
    #[error(transparent)]
    Data(#[from] kiln_data::Error),
    /// Tracking failed.
    #[error(transparent)]
    Track(#[from] kiln_track::Error),
    /// The requested device is unknown or unusable.
    #[error("device: {0}")]
    Device(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A task's code failed on a batch: which data set, epoch and batch, and why.
    #[error("{0}")]
    Task(String),
    /// Inputs do not have the shape the model expects.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Input rows break the model's input schema.
    #[error("input row {row}, feature `{column}`: expected {expected}, found {found}")]
    Input {
        /// 1-based row of the request.
        row: usize,
        /// The feature.
        column: String,
        /// What the schema expects.
        expected: String,
        /// What was sent.
        found: String,
    },
    /// A model package file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model package is malformed, from an unknown format version, or fails its checksum.
    #[error("{}: {message}", path.display())]
    Package {
        /// The package file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// burn failed to record or load weights.
    #[error("weights: {0}")]
    Weights(String),
    /// Training produced a non-finite loss or gradient; nothing after the last good checkpoint
    /// was kept.
    #[error(
        "training diverged at epoch {epoch}, step {step}: the {quantity} is {value}; {}",
        match checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written (set `checkpoint` to keep one)".to_string(),
        }
    )]
    Diverged {
        /// The epoch.
        epoch: usize,
        /// The optimiser step that would have used it.
        step: u64,
        /// `loss` or `gradient norm`.
        quantity: &'static str,
        /// The non-finite value.
        value: f64,
        /// The last checkpoint written before it.
        checkpoint: Option<PathBuf>,
    },
    /// A feature value given for training is NaN or infinite.
    #[error("{set} row {row}, feature {feature}: {value} is not a finite number (impute or drop such rows first)")]
    NonFinite {
        /// `training` or `validation`.
        set: &'static str,
        /// 0-based row of the feature matrix.
        row: usize,
        /// 0-based column of the feature matrix.
        feature: usize,
        /// The value.
        value: f32,
    },
    /// A checkpoint is damaged, from an unknown format, or from a different training.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A line of a study journal is damaged (other than a torn last line, which is skipped),
    /// breaks the journal's rules, or comes from a newer format.
    #[error("{}: line {line}: {message}", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A parameter was asked with another distribution than the study has for it.
    #[error("parameter `{name}` is asked as {asked}, but the study has it as {existing}")]
    DistributionMismatch {
        /// The parameter.
        name: String,
        /// The distribution the study recorded first.
        existing: String,
        /// The distribution asked now.
        asked: String,
    },
    /// The grid sampler has given every point of its grid to a trial.
    #[error("the grid of study `{study}` is exhausted: all {points} points were given to trials")]
    GridExhausted {
        /// The study.
        study: String,
        /// Points in the grid.
        points: u64,
    },
    /// The pruner stopped the trial: return this from an objective (see
    /// `tune::Trial::pruned`) and `optimize` records the trial as pruned.
    #[error("trial {trial} was pruned{}", step.map(|s| format!(" at step {s}")).unwrap_or_default())]
    TrialPruned {
        /// The trial.
        trial: u64,
        /// Its latest reported step.
        step: Option<u64>,
    },
    /// An operation on a trial that has ended, e.g. one another worker failed as stale.
    #[error("trial {trial} of study `{study}` is {state}, not running")]
    TrialNotRunning {
        /// The study.
        study: String,
        /// The trial.
        trial: u64,
        /// Its state.
        state: String,
    },
    /// The study stored in a journal is not the one given.
    #[error("{}: {message}", path.display())]
    StudyMismatch {
        /// The journal file.
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// A plot could not be drawn or written.
    #[error("{}: {message}", path.display())]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
