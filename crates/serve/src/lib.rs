//! Model serving for kiln: the KServe v2 (Open Inference Protocol) REST API over HTTP.
//!
//! A [`LoadedModel`] is a kiln-train model package, usually resolved from the kiln-track
//! registry by alias (`digits-mlp@production`). [`router`] gives the axum routes to embed in
//! an application; [`ServerHandle::start`] runs them on a thread of their own, for
//! synchronous programs and tests. Every request is checked against the model's input schema
//! and preprocessed with the package's scaler or pipeline, the same code path as
//! [`kiln_train::Predictor::predict`] in process; text features come as `BYTES` tensors.
//! Requests to a model are batched dynamically on its own worker thread ([`BatchConfig`]:
//! batch size, delay, a bounded queue answering 503 when full, per-request deadlines through
//! the [`TIMEOUT_HEADER`]). [`Client`] is a blocking client; [`run_load`] is a closed- and
//! open-loop load generator for any KServe v2 server.
//!
//! | feature | enables | default |
//! |---|---|---|
//! | `cuda` | forwards kiln-train's `cuda` feature | no |
//!
//! ```no_run
//! use kiln_serve::{Client, LoadedModel, ServerHandle};
//!
//! # fn main() -> kiln_serve::Result<()> {
//! let store = kiln_track::Store::open("kiln-store")?;
//! let model = LoadedModel::from_registry(&store, "digits-mlp", "production")?;
//! let server = ServerHandle::start("127.0.0.1:0", vec![model])?;
//! let answer = Client::new(&server.url()).infer("digits-mlp", &[vec![0.0; 64]])?;
//! println!("{:?}", answer.labels());
//! server.shutdown()?;
//! # Ok(()) }
//! ```

mod admin;
mod batcher;
mod client;
mod deploy;
mod error;
mod feedback;
mod inputs;
pub mod load;
mod log;
mod metrics;
mod monitor;
mod openapi;
mod protocol;
mod server;
pub mod simulate;

pub use admin::{Control, DeploymentStatus, VersionStatus, WindowSummary};
pub use batcher::BatchConfig;
pub use client::Client;
pub use deploy::{CanaryPolicy, Deployment, DeploymentEvent, ROUTE_KEY_HEADER, WindowStats};
pub use error::{Error, Result};
pub use feedback::{FeedbackRequest, FeedbackResponse, LabeledExport, OnlineAccuracy, export_labeled};
pub use load::{LoadMode, LoadReport, LoadSpec, run_load};
pub use log::LogConfig;
pub use monitor::{MonitorConfig, MonitorReport, Trigger, TriggerRun};
pub use protocol::{ErrorBody, InferRequest, InferResponse, InferTensor};
pub use server::{LoadedModel, ROLE_HEADER, ServeOptions, ServerHandle, TIMEOUT_HEADER, app, router, router_with};
pub use simulate::{SimulateReport, SimulateSpec, simulate};
