//! kiln: an ML research platform for HPC labs, from a dataset to a served, monitored model.
//!
//! This crate re-exports kiln's library crates under short names, for programs that use all
//! of them. Each crate can also be used on its own.
//!
//! | module | crate | what it does |
//! |---|---|---|
//! | [`data`] | kiln-data | Polars ingestion, schemas and validation, splits, preprocessing, dataset hashes |
//! | [`train`] | kiln-train | burn training (CPU or CUDA), evaluation, model packages |
//! | [`track`] | kiln-track | runs, metrics, environments, Parquet lakehouse, SQL, model registry |
//! | [`hpc`] | kiln-hpc | Slurm and local executors, requeue on preemption, cached pipelines |
//! | [`serve`] | kiln-serve | KServe v2 HTTP serving and client |
//!
//! | feature | enables | default |
//! |---|---|---|
//! | `cuda` | training and serving on NVIDIA GPUs (driver loaded at run time) | no |
//!
//! The whole pipeline, on a real dataset, is `examples/quickstart.rs`:
//! `cargo run --release --example quickstart`.

pub use kiln_data as data;
pub use kiln_hpc as hpc;
pub use kiln_serve as serve;
pub use kiln_track as track;
pub use kiln_train as train;
