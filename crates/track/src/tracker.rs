//! [`Tracker`]: what a training loop logs to, whether the run is written here ([`Run`]) or
//! through a tracking server (`client::RemoteRun`).

use crate::{Result, Run};

/// A run that parameters, tags, metrics and artifacts can be logged to.
///
/// Implemented by [`Run`] (a store on this machine's file system) and, with the `client`
/// feature, by `client::RemoteRun` (a tracking server, spooling locally when it cannot be
/// reached). Library code that logs (kiln-train's trainer) takes `&mut dyn Tracker`, so a job
/// on a compute node logs the same way through either.
pub trait Tracker: Send {
    /// The run id.
    fn run_id(&self) -> &str;

    /// Logs the fields of `params` (an object; nested objects become dotted keys). With
    /// `overwrite`, keys logged before take the new values; without it, a key logged before
    /// with another value is an error and nothing is logged.
    fn set_params(&mut self, params: serde_json::Value, overwrite: bool) -> Result<()>;

    /// Sets a tag.
    fn set_tag(&mut self, key: &str, value: &str) -> Result<()>;

    /// Logs a metric value at `step`.
    fn log_metric(&mut self, key: &str, step: u64, value: f64) -> Result<()>;

    /// Stores `bytes` as the file artifact `name`.
    fn log_artifact_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()>;

    /// Returns once everything logged before is durable (on disk, on the server, or in the
    /// spool).
    fn flush(&mut self) -> Result<()>;
}

impl Tracker for Run {
    fn run_id(&self) -> &str {
        self.id()
    }

    fn set_params(&mut self, params: serde_json::Value, overwrite: bool) -> Result<()> {
        if overwrite { self.overwrite_params(&params) } else { self.log_params(&params) }
    }

    fn set_tag(&mut self, key: &str, value: &str) -> Result<()> {
        Run::set_tag(self, key, value)
    }

    fn log_metric(&mut self, key: &str, step: u64, value: f64) -> Result<()> {
        Run::log_metric(self, key, step, value)
    }

    fn log_artifact_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        Run::log_artifact_bytes(self, name, bytes).map(|_| ())
    }

    fn flush(&mut self) -> Result<()> {
        Run::flush(self)
    }
}
