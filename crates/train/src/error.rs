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
    /// Training produced a non-finite loss.
    #[error("training diverged at epoch {epoch}: loss is {loss}")]
    Diverged {
        /// The epoch.
        epoch: usize,
        /// The loss value.
        loss: f64,
    },
}
