//! The error type of kiln-hpc.

use std::path::PathBuf;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while describing or running jobs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job specification is incomplete or out of range.
    #[error("job {job:?}: {message}")]
    InvalidSpec {
        /// The job name.
        job: String,
        /// What is wrong.
        message: String,
    },
    /// A file or directory could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The job's program could not be started.
    #[error("job {job:?}: cannot start {program:?}: {source}")]
    Spawn {
        /// The job name.
        job: String,
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
