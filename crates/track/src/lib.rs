//! Experiment tracking for kiln: runs, metrics, artifacts, environments, a Parquet lakehouse
//! queried with SQL, and a model registry.
//!
//! Everything lives in a [`Store`], a plain directory (`./kiln-store`, or `KILN_STORE`) that
//! works offline on a cluster's shared file system. A [`Run`] records the parameters,
//! metrics, dataset inputs and artifacts of one training job together with its
//! [`Environment`] (git commit, branch and diff, toolchain, Cargo.lock, host, GPUs, Slurm
//! variables, command line).
//!
//! * **No locks.** Each run directory has one writer; run ids are unique across hosts;
//!   registry versions are claimed by atomic renames. Many processes (32 array tasks, say) can
//!   write one store at once.
//! * **Logging never blocks training.** [`Run::log_metric`] appends to a local buffer; full
//!   buffers go to a background thread that writes checksummed blocks to an append-only
//!   segment file. [`Run::flush`] returns once everything before it is synced to disk.
//! * **Crash-safe.** A process killed mid-write loses only what it had not flushed; the torn
//!   tail of its segment is detected by checksum and ignored, and the run reads as
//!   [`RunStatus::Killed`]. [`Store::resume_run`] continues it in a new segment.
//! * **SQL.** [`Store::sql`] runs Polars SQL over the tables `runs`, `params`, `metrics`,
//!   `latest_metrics`, `tags`, `datasets`, `models` and `model_events`, and a model server's
//!   `predictions` and `feedback`. [`Store::compact`]
//!   folds finished runs into plain Parquet files; queries see compacted and live runs alike.
//! * **Sync.** [`Store::sync_to`] copies one store into another (node-local scratch to the
//!   project directory), idempotently, including runs still being written.
//! * **Registry.** [`Registry`] keeps numbered, immutable versions of named models with
//!   lineage, aliases such as `production`, and the history of every transition.
//!
//! * **Remote logging.** With the `server` feature, the `server` module serves a store over HTTP (runs,
//!   metric histories downsampled for charts, artifacts, the registry; batched writes behind
//!   a bearer token). With `client`, `client::RemoteRun` logs through it from a compute
//!   node, spooling to a local store when the server cannot be reached. See
//!   docs/tracking-server.md.
//!
//! [`Tracker`] is what both kinds of run have in common, for code that logs to either.
//!
//! kiln-track depends on no other kiln crate; kiln-train logs to it, kiln-serve loads models
//! from its registry.
//!
//! ```no_run
//! use kiln_track::{RegisterOptions, Store};
//!
//! # fn main() -> kiln_track::Result<()> {
//! let store = Store::open("kiln-store")?;
//! let mut run = store.run_builder("digits").name("mlp-lr1e-3").tag("team", "vision").start()?;
//! run.log_param("lr", 1e-3)?;
//! for epoch in 1..=3 {
//!     run.log_metric("train_loss", epoch, 1.0 / epoch as f64)?;
//! }
//! run.flush()?; // durable from here on
//! let version = store.registry().register("digits-mlp", "model-dir".as_ref(), RegisterOptions {
//!     run_id: Some(run.id().to_string()),
//!     ..Default::default()
//! })?;
//! store.registry().set_alias("digits-mlp", "production", version.version)?;
//! run.finish()?;
//! println!("{}", store.sql("SELECT run_id, status FROM runs")?);
//! # Ok(()) }
//! ```

pub mod api;
mod artifacts;
#[cfg(feature = "client")]
pub mod client;
mod env;
mod error;
mod fsutil;
mod gc;
mod lakehouse;
mod registry;
mod run;
mod segment;
#[cfg(feature = "server")]
pub mod server;
mod serving;
mod sql;
mod store;
mod sync;
mod tracker;
mod writer;

pub use artifacts::{Artifact, ArtifactFile, ArtifactKind};
pub use env::{Environment, Gpu};
pub use error::{Error, Result};
pub use gc::{GcOptions, GcReport};
pub use lakehouse::{CompactReport, TABLES};
pub use registry::{EventKind, Lineage, ModelVersion, RegisterOptions, Registry, RegistryEvent};
pub use run::{DatasetInput, HEARTBEAT_STALE_MS, Heartbeat, MetricPoint, Run, RunMeta, RunRecord, RunState, RunStatus};
pub use serving::{FeedbackRecord, PredictionRecord, SERVING_TABLES};
pub use store::{FORMAT_VERSION, RunBuilder, STORE_ENV, Store};
pub use sync::SyncReport;
pub use tracker::Tracker;

/// The crash-safety primitives the store is built on, for other kiln crates that keep files
/// on the same shared file systems (checkpoints, packages).
pub mod durable {
    pub use crate::fsutil::{sync_dir, unique_tmp, write_atomic};
}

/// Re-exported so callers can use query results without naming a Polars version.
pub use polars::prelude::DataFrame;
