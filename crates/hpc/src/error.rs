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
    /// A Slurm command printed something kiln could not read.
    #[error("cannot read the output of {command} (line {line}): {message}")]
    Parse {
        /// The command (`squeue`, `sacct`, ...).
        command: String,
        /// 1-based line of its output (0 when not tied to a line).
        line: usize,
        /// What was expected.
        message: String,
    },
    /// A Slurm command failed (after retries, when the failure looked transient).
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// Waiting for jobs took longer than allowed.
    #[error("timed out after {waited:?} waiting for {pending} job(s) of {name:?} (still {states})")]
    Timeout {
        /// The submission's name.
        name: String,
        /// How long it waited.
        waited: std::time::Duration,
        /// How many jobs had not ended.
        pending: usize,
        /// Their states, summarised.
        states: String,
    },
    /// Status polls kept failing: the controller does not answer, or the commands fail.
    #[error("slurm status polls failed {polls} times in a row; last error: {last_error}")]
    Unreachable {
        /// Failed polls in a row.
        polls: u32,
        /// The last failure.
        last_error: String,
    },
    /// A submission does not belong to this backend.
    #[error("submission {name:?} was made by the {made_by} backend, not this {this} backend")]
    WrongBackend {
        /// The submission's name.
        name: String,
        /// The backend that made it.
        made_by: String,
        /// This backend.
        this: String,
    },
    /// A pipeline stage failed or could not be prepared.
    #[error("pipeline stage {stage:?}: {message}")]
    Stage {
        /// The stage name.
        stage: String,
        /// What went wrong.
        message: String,
    },
}
