//! Running kiln jobs on a workstation or a Slurm cluster.
//!
//! A [`JobSpec`] describes a job once: command, environment, partition, time limit, CPUs,
//! memory, GPUs, array range, requeue and the early-warning signal used for checkpointing.
//! [`JobSpec::to_sbatch_script`] renders it for Slurm's `sbatch`; [`LocalExecutor`] runs it
//! as local processes with the same `SLURM_*` variables, so a script can be tried on a laptop
//! and submitted unchanged.
//!
//! kiln-hpc depends on no other kiln crate.
//!
//! ```no_run
//! use std::time::Duration;
//! use kiln_hpc::{JobSpec, LocalExecutor};
//!
//! # fn main() -> kiln_hpc::Result<()> {
//! let spec = JobSpec::builder("sweep", ["kiln", "runs"])
//!     .partition("gpu")
//!     .time_limit(Duration::from_secs(3600))
//!     .array(0, 7)
//!     .build()?;
//! println!("{}", spec.to_sbatch_script());
//! let outcomes = LocalExecutor::new("logs")?.run(&spec)?;
//! # Ok(()) }
//! ```

mod error;
mod job;
mod local;

pub use error::{Error, Result};
pub use job::{JobSpec, JobSpecBuilder};
pub use local::{JobOutcome, LocalExecutor};
