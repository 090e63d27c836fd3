//! The error type of kiln-data.

use std::path::PathBuf;

use crate::validate::Violation;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, validating or transforming a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CSV file could not be parsed.
    #[error("{}: cannot parse CSV: {message}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// The data does not match its schema. `violations` holds the first violations found (at
    /// most [`crate::validate::MAX_REPORTED_VIOLATIONS`]); `total` counts all of them.
    #[error("{source_name}: {total} value(s) violate the schema; first: {}", violations.first().map(ToString::to_string).unwrap_or_default())]
    Validation {
        /// Where the data came from (a path, or a name given by the caller).
        source_name: String,
        /// The first violations, in row order.
        violations: Vec<Violation>,
        /// How many violations there are in all.
        total: usize,
    },
    /// A column that the caller asked for does not exist.
    #[error("{source_name}: no column `{column}` (columns are: {available})")]
    MissingColumn {
        /// Where the data came from.
        source_name: String,
        /// The column asked for.
        column: String,
        /// The columns that do exist, comma-separated.
        available: String,
    },
    /// A value could not be used as the caller asked (for example a null where a number is needed).
    #[error("{source_name}: row {row}, column `{column}`: expected {expected}, found {found}")]
    BadValue {
        /// Where the data came from.
        source_name: String,
        /// 1-based data row (the header is not counted).
        row: usize,
        /// The column.
        column: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A data file that cannot be read as its format: where, and what was expected.
    #[error("{}{}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default(), column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The 1-based line, when known.
        line: Option<usize>,
        /// The column, when known.
        column: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A sample with no values to compare (all null, NaN or infinite).
    #[error("{0}")]
    EmptySample(String),
    /// An argument is outside the range the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Input whose shape does not match what a fitted transform was fitted on.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An item of a [`crate::Source`] could not be decoded.
    #[error("{source_name}: item {index}: {message}")]
    Item {
        /// The source's name (a path, or what the data is).
        source_name: String,
        /// The 0-based item index.
        index: usize,
        /// What went wrong.
        message: String,
    },
    /// An error reported by Polars outside CSV parsing.
    #[error("polars: {0}")]
    Polars(#[from] polars::prelude::PolarsError),
}
