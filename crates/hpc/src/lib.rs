//! Running kiln jobs on a workstation or a Slurm cluster.
//!
//! A [`JobSpec`] describes a job once: command, environment, partition, account, QoS, time
//! limit, nodes, tasks, CPUs, memory, GPUs, constraint, array range and throttle, dependencies,
//! log paths, extra `#SBATCH` and setup lines, and the checkpoint signal and requeue limit.
//! A [`Backend`] runs it:
//!
//! - [`SlurmBackend`] renders a batch script ([`JobSpec::to_sbatch_script`]), submits it with
//!   `sbatch --parsable` (retrying transient controller errors, splitting arrays larger than
//!   `MaxArraySize`) and tracks every job with one shared poller: one `squeue` call per tick
//!   for all jobs, `sacct` or `scontrol` only for jobs that left `squeue`, and
//!   [`JobState::Lost`] for a job that vanished without a terminal state.
//! - [`LocalExecutor`] runs it as local processes with the same `SLURM_*` variables, array
//!   emulation, throttle, dependencies, time limit, signal and requeue behaviour.
//!
//! Inside a job, [`JobContext::from_env`] reads what the scheduler says about it. A job with
//! [`JobSpecBuilder::signal_before_end`] gets SIGUSR2 before its time limit (or on preemption),
//! forwarded to the command so it can checkpoint (kiln-train does, and exits with status 75),
//! after which the job requeues itself up to [`JobSpecBuilder::requeue_limit`] times. Timeouts
//! and preemptions are told apart by the job's end time.
//!
//! [`Pipeline`] chains [`Stage`]s with declared inputs, params and outputs; a stage whose
//! inputs, params and code version hash as before is skipped, without sentinel files.
//!
//! Parsers for Slurm's outputs ([`parse_squeue`], [`parse_sacct`], [`parse_scontrol_jobs`], [`parse_slurm_json`],
//! [`parse_sbatch`]) are public, for tools of one's own.
//!
//! kiln-hpc depends on no other kiln crate.
//!
//! ```no_run
//! use std::time::Duration;
//! use kiln_hpc::{Backend, JobSpec, LocalExecutor, SlurmBackend};
//!
//! # fn main() -> kiln_hpc::Result<()> {
//! let spec = JobSpec::builder("sweep", ["kiln-worker", "--study", "study.journal"])
//!     .partition("gpu")
//!     .time_limit(Duration::from_secs(3600))
//!     .array(0, 99)
//!     .throttle(8)
//!     .signal_before_end(120)
//!     .requeue_limit(3)
//!     .build()?;
//! let backend: Box<dyn Backend> = match SlurmBackend::detect() {
//!     Ok(slurm) => Box::new(slurm),
//!     Err(_) => Box::new(LocalExecutor::new("logs")?),
//! };
//! let submission = backend.submit(&spec)?;
//! for task in backend.wait(&submission, None)? {
//!     println!("{task}");
//! }
//! # Ok(()) }
//! ```

mod backend;
mod context;
mod error;
mod job;
mod local;
mod parse;
mod pipeline;
mod slurm;
mod state;

pub use backend::{Backend, Submission, SubmittedPart};
pub use context::JobContext;
pub use error::{Error, Result};
pub use job::{ArraySpec, Dependency, JobSpec, JobSpecBuilder};
pub use local::LocalExecutor;
pub use parse::{
    parse_sacct, parse_sbatch, parse_scontrol_jobs, parse_show_config, parse_slurm_json, parse_squeue, squeue_format,
};
pub use pipeline::{Pipeline, PipelineReport, Stage, StageOutcome, StageReport};
pub use slurm::{ClusterInfo, PollStats, SlurmBackend, SlurmConfig};
pub use state::{JobRecord, JobRef, JobState, SlurmId};
