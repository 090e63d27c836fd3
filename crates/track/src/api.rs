//! The JSON documents of the tracking server's HTTP API, shared by the server and the client.
//!
//! Metric values are JSON numbers, except NaN and the infinities, which JSON cannot hold:
//! they travel as the strings `"NaN"`, `"inf"` and `"-inf"` (see [`Value64`]), so a
//! diverged loss reaches the server as what it was.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Artifact, DatasetInput, Environment, Heartbeat, ModelVersion, RegistryEvent, RunRecord, RunStatus};

/// The environment variable holding the tracking server's bearer token, read by the CLI and
/// the client (a token on the command line would show in `ps`).
pub const TOKEN_ENV: &str = "KILN_TRACK_TOKEN";

/// An `f64` that survives JSON: finite values as numbers; NaN, `inf` and `-inf` as strings.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Value64(pub f64);

impl Serialize for Value64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

impl<'de> Deserialize<'de> for Value64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) => Ok(Self(v)),
            Raw::Text(t) => match t.as_str() {
                "NaN" | "nan" => Ok(Self(f64::NAN)),
                "inf" | "Infinity" | "+inf" => Ok(Self(f64::INFINITY)),
                "-inf" | "-Infinity" => Ok(Self(f64::NEG_INFINITY)),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"NaN\", \"inf\" or \"-inf\", found {other:?}"
                ))),
            },
        }
    }
}

fn values(map: &BTreeMap<String, f64>) -> BTreeMap<String, Value64> {
    map.iter().map(|(k, v)| (k.clone(), Value64(*v))).collect()
}

/// `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: String,
    /// The kiln-track version of the server.
    pub version: String,
    /// The store format the server writes.
    pub format_version: u32,
    /// Whether writes need a bearer token.
    pub token_required: bool,
}

/// `POST /api/runs`: create a run, or find the one with this id (creating is idempotent, so a
/// client may retry it and may create a run it first wrote to its spool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRun {
    /// The id, chosen by the client so the server and the client's spool agree; the server
    /// picks one when absent.
    #[serde(default)]
    pub run_id: Option<String>,
    /// The experiment.
    pub experiment: String,
    /// A human name (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
    /// The parent run, e.g. a sweep.
    #[serde(default)]
    pub parent_run_id: Option<String>,
    /// Initial tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Start time on the client, milliseconds since the Unix epoch (default: now).
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// The client's environment (its git commit, GPUs, Slurm variables).
    #[serde(default)]
    pub environment: Option<Environment>,
    /// The client's `git diff` when its tree was dirty (stored as the `git.diff` artifact).
    #[serde(default)]
    pub git_diff: Option<String>,
}

/// The answer to [`CreateRun`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedRun {
    /// The run's id.
    pub run_id: String,
    /// `false` when the run already existed (a retried or replayed create).
    pub created: bool,
}

/// One metric value in a [`LogBatch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WirePoint {
    /// Metric name.
    pub key: String,
    /// Step.
    pub step: u64,
    /// Value (NaN and infinities as strings).
    pub value: Value64,
    /// When it was measured, milliseconds since the Unix epoch (default: when received).
    #[serde(default)]
    pub ts: Option<i64>,
}

/// `POST /api/runs/{id}/log`: everything a client logged since its last batch. Applied in the
/// order params, tags, inputs, metrics, then flushed to disk before the answer. Replaying a
/// batch changes nothing: params must be equal, tags and inputs are set again, and a metric
/// step logged twice keeps one value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LogBatch {
    /// Parameters, flattened to dotted keys.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Replace parameters logged before with different values, instead of refusing.
    #[serde(default)]
    pub overwrite_params: bool,
    /// Tags to set.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Datasets read.
    #[serde(default)]
    pub inputs: Vec<DatasetInput>,
    /// Metric values.
    #[serde(default)]
    pub metrics: Vec<WirePoint>,
}

impl LogBatch {
    /// Whether the batch carries nothing (it then only keeps the run alive).
    pub fn is_empty(&self) -> bool {
        self.params.is_empty() && self.tags.is_empty() && self.inputs.is_empty() && self.metrics.is_empty()
    }
}

/// The answer to a [`LogBatch`], once it is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    /// Metric values written.
    pub points: u64,
    /// The run's attempt on the server (it grows when the server resumes the run).
    pub attempt: u32,
}

/// `POST /api/runs/{id}/end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndRun {
    /// `completed`, `failed` or `killed`.
    pub status: RunStatus,
    /// Why it failed or was killed.
    #[serde(default)]
    pub error: Option<String>,
}

/// A run in a listing: identity, status, tags and final metric values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Id.
    pub run_id: String,
    /// Experiment.
    pub experiment: String,
    /// Human name.
    pub name: String,
    /// Parent run.
    pub parent_run_id: Option<String>,
    /// Effective status (a run whose writer died reads as killed).
    pub status: RunStatus,
    /// Attempt (1, then one more per resume).
    pub attempt: u32,
    /// Start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// End, once ended.
    pub end_ms: Option<i64>,
    /// Why it failed or was killed.
    pub error: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Last value of each metric.
    pub final_metrics: BTreeMap<String, Value64>,
}

impl RunSummary {
    /// The summary of a run read from a store.
    pub fn from_record(record: &RunRecord) -> Self {
        Self {
            run_id: record.meta.run_id.clone(),
            experiment: record.meta.experiment.clone(),
            name: record.meta.name.clone(),
            parent_run_id: record.meta.parent_run_id.clone(),
            status: record.status(),
            attempt: record.state.attempt,
            start_ms: record.meta.start_ms,
            end_ms: record.state.end_ms,
            error: record.state.error.clone(),
            tags: record.tags.clone(),
            final_metrics: values(&record.final_metrics),
        }
    }
}

/// `GET /api/runs`: one page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// Runs matching the filters, over all pages.
    pub total: usize,
    /// Index of the first run of this page.
    pub offset: usize,
    /// The page size asked for.
    pub limit: usize,
    /// The runs.
    pub runs: Vec<RunSummary>,
}

/// `GET /api/runs/{id}`: everything about one run but its metric points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    /// Identity, status, tags, final metrics.
    #[serde(flatten)]
    pub summary: RunSummary,
    /// Parameters, flattened to dotted keys.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Datasets read.
    pub inputs: Vec<DatasetInput>,
    /// Artifacts.
    pub artifacts: Vec<Artifact>,
    /// The environment of the latest attempt.
    pub environment: Option<Environment>,
    /// The writer's last heartbeat.
    pub heartbeat: Option<Heartbeat>,
}

impl RunDetail {
    /// The detail of a run read from a store.
    pub fn from_record(record: &RunRecord) -> Self {
        Self {
            summary: RunSummary::from_record(record),
            params: record.params.clone(),
            inputs: record.inputs.clone(),
            artifacts: record.artifacts.values().cloned().collect(),
            environment: record.environment.clone(),
            heartbeat: record.heartbeat.clone(),
        }
    }
}

/// An experiment and its runs, in `GET /api/experiments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentSummary {
    /// Name.
    pub experiment: String,
    /// Number of runs.
    pub runs: usize,
    /// Number of runs still running.
    pub running: usize,
    /// Start of its newest run, milliseconds since the Unix epoch.
    pub last_start_ms: i64,
}

/// One metric of a run, in `GET /api/runs/{id}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Name.
    pub key: String,
    /// Number of steps logged.
    pub points: usize,
    /// Lowest step.
    pub first_step: u64,
    /// Highest step.
    pub last_step: u64,
    /// Value at the highest step.
    pub last: Value64,
    /// Smallest finite value (absent when none is finite).
    pub min: Option<Value64>,
    /// Largest finite value.
    pub max: Option<Value64>,
    /// Number of NaN or infinite values.
    pub non_finite: usize,
}

/// A point of a metric history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Step.
    pub step: u64,
    /// Value.
    pub value: Value64,
    /// When it was measured, milliseconds since the Unix epoch.
    pub ts: i64,
}

/// `GET /api/runs/{id}/metrics/history?key=...&max_points=...`: one metric by step, reduced
/// on the server to at most `max_points` points for charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricHistory {
    /// The run.
    pub run_id: String,
    /// The metric.
    pub key: String,
    /// Points in the asked step range before downsampling.
    pub total_points: usize,
    /// Whether points were left out.
    pub downsampled: bool,
    /// The points, by step.
    pub points: Vec<HistoryPoint>,
}

/// A registered model in `GET /api/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Name.
    pub name: String,
    /// Number of versions.
    pub versions: usize,
    /// Highest version number.
    pub latest: Option<u32>,
    /// Aliases and the versions they point to.
    pub aliases: BTreeMap<String, u32>,
}

/// A version in [`ModelDetail`], with its tags (which the stored version file leaves out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionDetail {
    /// The version.
    #[serde(flatten)]
    pub version: ModelVersion,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// `GET /api/models/{name}`: versions, aliases and the history of transitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDetail {
    /// Name.
    pub name: String,
    /// Versions, oldest first.
    pub versions: Vec<VersionDetail>,
    /// Aliases.
    pub aliases: BTreeMap<String, u32>,
    /// Every transition, oldest first.
    pub history: Vec<RegistryEvent>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// A stable code for programs: `not_found`, `invalid`, `param_conflict`, `run_ended`,
    /// `run_busy`, `unauthorized`, `too_large`, `internal`.
    #[serde(default)]
    pub code: Option<String>,
}
