//! Runs: one execution of a training script, with its parameters, metrics and artifacts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::Environment;
use crate::error::IoContext;
use crate::fsutil::{self, now_ms, write_json};
use crate::{Error, Result};

/// How a run ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started and not yet finished (or killed before it could say so).
    Running,
    /// Ended normally. (Stores written before this name was chosen say `finished`.)
    #[serde(alias = "finished")]
    Completed,
    /// Ended with an error, or was dropped without being finished.
    Failed,
}

impl RunStatus {
    /// The lowercase name used in files and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// What is written when a run starts (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Unique, time-ordered id.
    pub run_id: String,
    /// The experiment the run belongs to.
    pub experiment: String,
    /// A human name for the run (defaults to the id).
    pub name: String,
    /// Start time, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// What is written when a run ends (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// How the run ended.
    pub status: RunStatus,
    /// End time, milliseconds since the Unix epoch.
    pub end_ms: i64,
    /// Why it failed, for failed runs.
    #[serde(default)]
    pub error: Option<String>,
}

/// One logged metric value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// The step (epoch, iteration) the value belongs to.
    pub step: u64,
    /// Metric name.
    pub name: String,
    /// The value. NaN and infinities are kept (written as strings in the log).
    #[serde(with = "float_or_string")]
    pub value: f64,
    /// When it was logged, milliseconds since the Unix epoch.
    pub ts: i64,
}

/// A run as read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Identity and start.
    pub meta: RunMeta,
    /// Logged parameters, flattened to dotted keys.
    pub params: BTreeMap<String, serde_json::Value>,
    /// The captured environment.
    pub environment: Option<Environment>,
    /// How it ended, if it did.
    pub summary: Option<RunSummary>,
    /// The last value of each metric.
    pub final_metrics: BTreeMap<String, f64>,
    /// The run's directory.
    pub dir: PathBuf,
}

impl RunRecord {
    /// The run's status: `running` until a summary is written.
    pub fn status(&self) -> RunStatus {
        self.summary.as_ref().map_or(RunStatus::Running, |s| s.status)
    }
}

/// A run in progress. Metric values are buffered in memory and written by [`Run::flush`]
/// (which syncs them to disk: a flushed value survives a crash) and by [`Run::finish`]. A run
/// dropped without `finish` is recorded as failed.
#[derive(Debug)]
pub struct Run {
    meta: RunMeta,
    dir: PathBuf,
    metrics: BufWriter<File>,
    metrics_path: PathBuf,
    params: BTreeMap<String, serde_json::Value>,
    last: BTreeMap<String, f64>,
    done: bool,
}

impl Run {
    pub(crate) fn create(dir: PathBuf, meta: RunMeta) -> Result<Self> {
        write_json(&dir.join("meta.json"), &meta)?;
        write_json(&dir.join("env.json"), &Environment::capture())?;
        write_json(&dir.join("params.json"), &BTreeMap::<String, serde_json::Value>::new())?;
        let metrics_path = dir.join("metrics.jsonl");
        let metrics = BufWriter::new(fsutil::open_append(&metrics_path)?);
        fsutil::sync_dir(&dir)?;
        Ok(Self { meta, dir, metrics, metrics_path, params: BTreeMap::new(), last: BTreeMap::new(), done: false })
    }

    /// The run id.
    pub fn id(&self) -> &str {
        &self.meta.run_id
    }

    /// The experiment name.
    pub fn experiment(&self) -> &str {
        &self.meta.experiment
    }

    /// The run's directory in the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A directory for this run's artifacts (created on first use).
    pub fn artifact_dir(&self) -> Result<PathBuf> {
        let dir = self.dir.join("artifacts");
        std::fs::create_dir_all(&dir).at(&dir)?;
        Ok(dir)
    }

    /// Logs one parameter. Objects are flattened to dotted keys (`optimizer.lr`).
    pub fn log_param(&mut self, key: &str, value: impl Serialize) -> Result<()> {
        let value = serde_json::to_value(value).map_err(|e| Error::InvalidValue(e.to_string()))?;
        flatten(key, value, &mut self.params);
        write_json(&self.dir.join("params.json"), &self.params)
    }

    /// Logs every field of a serializable struct as a parameter, flattened to dotted keys.
    pub fn log_params(&mut self, params: &impl Serialize) -> Result<()> {
        let value = serde_json::to_value(params).map_err(|e| Error::InvalidValue(e.to_string()))?;
        flatten("", value, &mut self.params);
        write_json(&self.dir.join("params.json"), &self.params)
    }

    /// Sets a tag, a string label (rewrites `meta.json`).
    pub fn set_tag(&mut self, key: &str, value: &str) -> Result<()> {
        self.meta.tags.insert(key.to_string(), value.to_string());
        write_json(&self.dir.join("meta.json"), &self.meta)
    }

    /// Logs a metric value at `step`. Buffered: call [`Run::flush`] to make it durable.
    pub fn log_metric(&mut self, name: &str, step: u64, value: f64) -> Result<()> {
        if name.is_empty() || name.contains(['\n', '\r']) {
            return Err(Error::InvalidName {
                what: "metric",
                name: name.to_string(),
                reason: "it is empty or has a line break",
            });
        }
        let point = MetricPoint { step, name: name.to_string(), value, ts: now_ms() };
        serde_json::to_writer(&mut self.metrics, &point).map_err(|e| Error::InvalidValue(e.to_string()))?;
        self.metrics.write_all(b"\n").at(&self.metrics_path)?;
        self.last.insert(name.to_string(), value);
        Ok(())
    }

    /// Logs several metrics at one step.
    pub fn log_metrics(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        for (name, value) in values {
            self.log_metric(name, step, *value)?;
        }
        Ok(())
    }

    /// Writes buffered metrics and syncs them to disk.
    pub fn flush(&mut self) -> Result<()> {
        self.metrics.flush().at(&self.metrics_path)?;
        self.metrics.get_ref().sync_data().at(&self.metrics_path)
    }

    /// Copies a file or directory into the run's artifacts under `name`.
    pub fn log_artifact(&mut self, name: &str, path: &Path) -> Result<PathBuf> {
        fsutil::check_name("artifact", name)?;
        let to = self.artifact_dir()?.join(name);
        fsutil::copy_tree(path, &to)?;
        Ok(to)
    }

    /// The last value logged for each metric so far.
    pub fn last_metrics(&self) -> &BTreeMap<String, f64> {
        &self.last
    }

    /// Ends the run successfully.
    pub fn finish(mut self) -> Result<()> {
        self.end(RunStatus::Completed, None)
    }

    /// Ends the run as failed, recording why.
    pub fn fail(mut self, error: &str) -> Result<()> {
        self.end(RunStatus::Failed, Some(error.to_string()))
    }

    fn end(&mut self, status: RunStatus, error: Option<String>) -> Result<()> {
        self.done = true;
        self.flush()?;
        write_json(&self.dir.join("summary.json"), &RunSummary { status, end_ms: now_ms(), error })
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.done {
            let why =
                if std::thread::panicking() { "the program panicked" } else { "the run was dropped without finish()" };
            if let Err(e) = self.end(RunStatus::Failed, Some(why.to_string())) {
                tracing::warn!(run = %self.meta.run_id, "could not record the end of the run: {e}");
            }
        }
    }
}

fn flatten(prefix: &str, value: serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other);
        }
    }
}

/// Reads a run's metric log. A last line without its newline is the trace of a crash during a
/// write that was never acknowledged by `flush`, and is skipped; any other bad line is an error.
pub(crate) fn read_metrics(path: &Path) -> Result<Vec<MetricPoint>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
    };
    let complete = bytes.ends_with(b"\n");
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let mut points = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<MetricPoint>(line) {
            Ok(p) => points.push(p),
            Err(_) if !complete && i + 1 == lines.len() => {
                tracing::warn!(file = %path.display(), line = i + 1, "skipping a torn last line");
            }
            Err(e) => {
                return Err(Error::Corrupt { path: path.to_path_buf(), line: Some(i + 1), message: e.to_string() });
            }
        }
    }
    Ok(points)
}

mod float_or_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(v),
            Repr::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("expected a number, found {other:?}"))),
            },
        }
    }
}
