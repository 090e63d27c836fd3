//! The error type of kiln-track.

use std::path::PathBuf;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while tracking runs or using the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory of the store could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file of the store is malformed.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line, for line-oriented files.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A name (experiment, model, alias, metric, artifact) that the store cannot use.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A run, model, version or alias that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A parameter logged again with a different value.
    #[error("parameter {key:?} was already logged as {old}; refusing to change it to {new} (use overwrite_param)")]
    ParamConflict {
        /// The dotted key.
        key: String,
        /// The value logged first.
        old: String,
        /// The value refused.
        new: String,
    },
    /// A run that another live process is writing.
    #[error("run {run_id} is still being written by {owner}; a run has one writer at a time")]
    RunBusy {
        /// The run.
        run_id: String,
        /// Who writes it.
        owner: String,
    },
    /// A run that has ended (completed or failed) and takes no more data.
    #[error("run {run_id} has ended ({status}); it takes no more data")]
    RunEnded {
        /// The run.
        run_id: String,
        /// How it ended.
        status: crate::RunStatus,
    },
    /// The tracking server cannot start or stopped with an error.
    #[error("tracking server: {0}")]
    Server(String),
    /// A request to the tracking server failed: it could not be reached, or it refused.
    #[error("{url}: {message}")]
    Http {
        /// The URL asked.
        url: String,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// The server's `code` (`not_found`, `invalid`, `param_conflict`, `run_ended`,
        /// `run_busy`, `unauthorized`, `internal`), when it answered with one.
        code: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// A store written in a format this version cannot read.
    #[error("{}: store format {found}, this kiln reads format {supported}", path.display())]
    Format {
        /// The store's `store.json`.
        path: PathBuf,
        /// The format found.
        found: u32,
        /// The format supported.
        supported: u32,
    },
    /// A value that cannot be logged (a NaN or infinite metric is logged; this is for others).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// Writing a Parquet table failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Building an Arrow batch failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A SQL query failed to parse, plan or run.
    #[error("sql: {0}")]
    Sql(String),
}

pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}
