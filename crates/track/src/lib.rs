//! Experiment tracking for kiln: runs, metrics, artifacts, environments, a Parquet lakehouse
//! queried with SQL, and a model registry.
//!
//! Everything lives in a [`Store`], a plain directory (`./kiln-store`, or `KILN_STORE`) that
//! works offline on a cluster's shared file system. A [`Run`] records parameters, metrics
//! and artifacts of one training job together with its [`Environment`] (git commit, compiler,
//! host, CPUs, Slurm variables). No process ever takes a lock: each run writes its own
//! directory, files are replaced by atomic renames, and metric logs are append-only and
//! synced on [`Run::flush`], so a crash loses nothing that was flushed.
//!
//! [`Store::refresh_tables`] derives lakehouse tables (`experiment_runs`, `run_params`,
//! `run_metrics`, `epoch_metrics`, `model_registry`) as Parquet files, and [`Store::sql`]
//! queries them with Polars SQL. The [`Registry`] keeps numbered, immutable versions of named
//! models and aliases such as `production`.
//!
//! kiln-track depends on no other kiln crate; kiln-train logs to it, kiln-serve loads models
//! from its registry.
//!
//! ```no_run
//! use kiln_track::{RegisterOptions, Store};
//!
//! # fn main() -> kiln_track::Result<()> {
//! let store = Store::open("kiln-store")?;
//! let mut run = store.start_run("digits")?;
//! run.log_param("lr", 1e-3)?;
//! for epoch in 1..=3 {
//!     run.log_metric("train_loss", epoch, 1.0 / epoch as f64)?;
//! }
//! run.flush()?;
//! let version = store.registry().register("digits-mlp", "model-dir".as_ref(), RegisterOptions {
//!     run_id: Some(run.id().to_string()),
//!     ..Default::default()
//! })?;
//! store.registry().set_alias("digits-mlp", "production", version.version)?;
//! run.finish()?;
//! println!("{}", store.sql("SELECT run_id, status FROM experiment_runs")?);
//! # Ok(()) }
//! ```

mod env;
mod error;
mod fsutil;
mod lakehouse;
mod registry;
mod run;
mod sql;
mod store;

pub use env::Environment;
pub use error::{Error, Result};
pub use lakehouse::TABLES;
pub use registry::{ModelVersion, RegisterOptions, Registry};
pub use run::{MetricPoint, Run, RunMeta, RunRecord, RunStatus, RunSummary};
pub use store::{STORE_ENV, Store};

/// Re-exported so callers can use query results without naming a Polars version.
pub use polars::prelude::DataFrame;
