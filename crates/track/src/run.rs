//! Runs: one execution of a training script, with its parameters, metrics, inputs and
//! artifacts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::artifacts::{Artifact, Manifest, checked_relative};
use crate::env::{Environment, hostname};
use crate::error::IoContext;
use crate::fsutil::{self, now_ms, read_json, read_json_or_default, write_json};
use crate::segment::{DecodedPoint, read_segment, segment_numbers};
use crate::writer::{HEARTBEAT_INTERVAL, MetricSink};
use crate::{Error, Result, Store};

/// How a run ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started, not finished, and its process is alive.
    Running,
    /// Ended normally.
    Completed,
    /// Ended with an error, or was dropped without being finished.
    Failed,
    /// Stopped from outside: ended by [`Run::kill`] (a SIGTERM or preemption handler), or its
    /// process died without ending it (its heartbeat stopped).
    Killed,
}

impl RunStatus {
    /// The lowercase name used in files and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Killed => "killed",
        }
    }

    /// Whether the run has ended (everything but `running`).
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's identity, written once when it starts (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Unique, time-ordered id.
    pub run_id: String,
    /// The experiment the run belongs to.
    pub experiment: String,
    /// A human name for the run (defaults to the id).
    pub name: String,
    /// The run this one belongs to, e.g. the sweep of a trial.
    #[serde(default)]
    pub parent_run_id: Option<String>,
    /// Start time, milliseconds since the Unix epoch.
    pub start_ms: i64,
}

/// Where a run stands (`status.json`), rewritten when it ends or is resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The recorded status (a `running` run whose process died reads as killed, see
    /// [`RunRecord::status`]).
    pub status: RunStatus,
    /// 1 for the first session, then one more for each resume.
    pub attempt: u32,
    /// End time, milliseconds since the Unix epoch, once ended.
    #[serde(default)]
    pub end_ms: Option<i64>,
    /// Why it failed or was killed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Who is writing a run, refreshed by its metric writer every 15 s (`heartbeat.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Process id of the writer.
    pub pid: u32,
    /// Host of the writer.
    pub host: String,
    /// Its Slurm job id, if any (a requeued job keeps its id).
    #[serde(default)]
    pub slurm_job_id: Option<String>,
    /// The attempt the writer is running.
    pub attempt: u32,
    /// When the writer was last seen alive, milliseconds since the Unix epoch.
    pub seen_ms: i64,
    /// When the writing process started, in clock ticks after boot (Linux `/proc`), which
    /// tells the writer from a later process given the same pid (a restarted container's
    /// pid 1, say).
    #[serde(default)]
    pub start_ticks: Option<u64>,
}

/// A heartbeat older than this (from another host) means the writer is gone.
pub const HEARTBEAT_STALE_MS: i64 = 4 * HEARTBEAT_INTERVAL.as_millis() as i64;

impl Heartbeat {
    /// Whether the writing process is alive: on this host, whether the process exists; on
    /// another host, whether the heartbeat is fresh.
    pub fn is_alive(&self) -> bool {
        if self.host == hostname() && Path::new("/proc/self").exists() {
            if !Path::new("/proc").join(self.pid.to_string()).exists() {
                return false;
            }
            // The pid exists; it is the writer unless it started at another time.
            return match (self.start_ticks, process_start_ticks(self.pid)) {
                (Some(recorded), Some(now)) => recorded == now,
                _ => true,
            };
        }
        now_ms() - self.seen_ms < HEARTBEAT_STALE_MS
    }
}

/// When process `pid` started, in clock ticks after boot: field 22 of `/proc/<pid>/stat`
/// (counted after the command name, which may hold spaces and parentheses).
pub(crate) fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// A dataset a run read (a row of the dataset catalog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInput {
    /// A name for the dataset, e.g. `digits`.
    pub name: String,
    /// Its content digest (kiln-data's BLAKE3 of the file).
    pub digest: String,
    /// Where it came from: a path or URL.
    pub source: String,
    /// Number of rows, if known.
    #[serde(default)]
    pub rows: Option<u64>,
    /// What the run used it for: `train`, `validation`, `test`, ...
    #[serde(default)]
    pub context: Option<String>,
}

/// One logged metric value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Metric name.
    pub key: String,
    /// The step (epoch, iteration) the value belongs to.
    pub step: u64,
    /// The value. NaN and infinities are kept.
    pub value: f64,
    /// When it was logged, milliseconds since the Unix epoch.
    pub ts: i64,
}

impl MetricPoint {
    /// `false` for NaN and infinities, which are stored and flagged, never dropped.
    pub fn is_finite(&self) -> bool {
        self.value.is_finite()
    }
}

/// A run as read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Identity and start.
    pub meta: RunMeta,
    /// Recorded status, attempt and end.
    pub state: RunState,
    /// Free-form labels.
    pub tags: BTreeMap<String, String>,
    /// Logged parameters, flattened to dotted keys.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Datasets the run read.
    pub inputs: Vec<DatasetInput>,
    /// Logged artifacts by name.
    pub artifacts: BTreeMap<String, Artifact>,
    /// The environment captured at the start of the latest attempt.
    pub environment: Option<Environment>,
    /// The writer's last heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// The last value of each metric (by step order of logging; see [`Store::metrics`]).
    pub final_metrics: BTreeMap<String, f64>,
    /// The run's directory.
    pub dir: PathBuf,
}

impl RunRecord {
    /// The run's status. A run recorded as `running` whose writer is gone (killed with
    /// SIGKILL, out of memory, node failure) reads as [`RunStatus::Killed`].
    pub fn status(&self) -> RunStatus {
        match self.state.status {
            RunStatus::Running if !self.heartbeat.as_ref().is_some_and(Heartbeat::is_alive) => RunStatus::Killed,
            s => s,
        }
    }
}

/// A run in progress.
///
/// [`Run::log_metric`] never waits for the disk: points go to a background writer in batches
/// (see the crate docs). [`Run::flush`] returns once everything logged before it is durable;
/// [`Run::finish`], [`Run::fail`] and [`Run::kill`] flush and record how the run ended. A run
/// dropped without ending is recorded as failed.
#[derive(Debug)]
pub struct Run {
    store: Store,
    meta: RunMeta,
    state: RunState,
    dir: PathBuf,
    sink: MetricSink,
    params: BTreeMap<String, serde_json::Value>,
    tags: BTreeMap<String, String>,
    inputs: Vec<DatasetInput>,
    artifacts: Manifest,
    last: BTreeMap<String, f64>,
    done: bool,
}

/// Where a new run's environment comes from.
#[derive(Debug)]
pub(crate) enum EnvSource {
    /// Capture this process's environment.
    Capture,
    /// Recorded elsewhere, e.g. by a remote client on a compute node: the environment and
    /// the git diff of a dirty tree.
    #[cfg_attr(not(any(feature = "server", feature = "client")), allow(dead_code))]
    Given(Box<Environment>, Option<String>),
    /// None.
    Skip,
}

fn owner(attempt: u32) -> serde_json::Value {
    serde_json::json!({
        "pid": std::process::id(),
        "host": hostname(),
        "slurm_job_id": std::env::var("SLURM_JOB_ID").ok(),
        "attempt": attempt,
        "start_ticks": process_start_ticks(std::process::id()),
    })
}

impl Run {
    /// Creates the files of a new run in the empty directory `dir`. `meta.json` comes last:
    /// a directory without it is a run being created, and readers skip it.
    pub(crate) fn create(
        store: Store,
        dir: PathBuf,
        meta: RunMeta,
        tags: BTreeMap<String, String>,
        environment: EnvSource,
    ) -> Result<Self> {
        let state = RunState { status: RunStatus::Running, attempt: 1, end_ms: None, error: None };
        let mut artifacts = Manifest::new();
        match environment {
            EnvSource::Capture => {
                let (env, diff) = Environment::capture();
                record_environment(&store, &dir, &mut artifacts, &env, &diff)?;
            }
            EnvSource::Given(env, diff) => {
                record_environment(&store, &dir, &mut artifacts, &env, diff.as_deref().unwrap_or_default())?;
            }
            EnvSource::Skip => {}
        }
        write_json(&dir.join("params.json"), &BTreeMap::<String, serde_json::Value>::new())?;
        write_json(&dir.join("tags.json"), &tags)?;
        write_json(&dir.join("inputs.json"), &Vec::<DatasetInput>::new())?;
        write_json(&dir.join("artifacts.json"), &artifacts)?;
        let sink = MetricSink::start(dir.join("metrics"), 0, dir.join("heartbeat.json"), owner(1))?;
        write_json(&dir.join("status.json"), &state)?;
        write_json(&dir.join("meta.json"), &meta)?;
        Ok(Self {
            store,
            meta,
            state,
            dir,
            sink,
            params: BTreeMap::new(),
            tags,
            inputs: Vec::new(),
            artifacts,
            last: BTreeMap::new(),
            done: false,
        })
    }

    /// Reopens an existing run for another attempt, in a new metric segment.
    pub(crate) fn resume(store: Store, record: RunRecord, capture_environment: bool) -> Result<Self> {
        let dir = record.dir.clone();
        let attempt = record.state.attempt + 1;
        let mut artifacts = record.artifacts;
        if capture_environment {
            let (env, diff) = Environment::capture();
            if record_environment(&store, &dir, &mut artifacts, &env, &diff)? {
                write_json(&dir.join("artifacts.json"), &artifacts)?;
            }
        }
        let metrics = dir.join("metrics");
        let next = segment_numbers(&metrics)?.last().map_or(0, |n| n + 1);
        let sink = MetricSink::start(metrics, next, dir.join("heartbeat.json"), owner(attempt))?;
        let state = RunState { status: RunStatus::Running, attempt, end_ms: None, error: None };
        write_json(&dir.join("status.json"), &state)?;
        Ok(Self {
            store,
            meta: record.meta,
            state,
            dir,
            sink,
            params: record.params,
            tags: record.tags,
            inputs: record.inputs,
            artifacts,
            last: record.final_metrics,
            done: false,
        })
    }

    /// The run id.
    pub fn id(&self) -> &str {
        &self.meta.run_id
    }

    /// The experiment name.
    pub fn experiment(&self) -> &str {
        &self.meta.experiment
    }

    /// Identity and start of the run.
    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }

    /// 1 for a new run, one more for each resume.
    pub fn attempt(&self) -> u32 {
        self.state.attempt
    }

    /// The run's directory in the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parameters logged so far (including those of earlier attempts).
    pub fn params(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.params
    }

    /// Logs one parameter. Objects are flattened to dotted keys (`optimizer.lr`). Logging a
    /// key again with a different value is an error ([`Error::ParamConflict`]); use
    /// [`Run::overwrite_param`] to change it on purpose.
    pub fn log_param(&mut self, key: &str, value: impl Serialize) -> Result<()> {
        self.merge_params(key, to_value(value)?, false)
    }

    /// Logs every field of a serializable value as a parameter, flattened to dotted keys.
    /// Nothing is logged if any key conflicts with an earlier, different value.
    pub fn log_params(&mut self, params: &impl Serialize) -> Result<()> {
        self.merge_params("", to_value(params)?, false)
    }

    /// Sets a parameter, replacing any earlier value.
    pub fn overwrite_param(&mut self, key: &str, value: impl Serialize) -> Result<()> {
        self.merge_params(key, to_value(value)?, true)
    }

    /// Sets every field of a serializable value as a parameter, replacing earlier values.
    pub fn overwrite_params(&mut self, params: &impl Serialize) -> Result<()> {
        self.merge_params("", to_value(params)?, true)
    }

    fn merge_params(&mut self, prefix: &str, value: serde_json::Value, overwrite: bool) -> Result<()> {
        let flat = checked_params(&self.params, prefix, value, overwrite)?;
        self.params.extend(flat);
        write_json(&self.dir.join("params.json"), &self.params)
    }

    /// Sets a tag, a string label that may change during the run.
    pub fn set_tag(&mut self, key: &str, value: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidName { what: "tag", name: key.into(), reason: "it is empty" });
        }
        self.tags.insert(key.to_string(), value.to_string());
        write_json(&self.dir.join("tags.json"), &self.tags)
    }

    /// Records a dataset the run read (it appears in the `datasets` table).
    pub fn log_input(&mut self, input: DatasetInput) -> Result<()> {
        if !self.inputs.contains(&input) {
            self.inputs.push(input);
            write_json(&self.dir.join("inputs.json"), &self.inputs)?;
        }
        Ok(())
    }

    /// Logs a metric value at `step`. Never waits for the disk (only, when the writer has
    /// fallen behind by 32 batches, for it to catch up). NaN and infinities are kept, counted
    /// and warned about once per metric. Logging a step again replaces its value in reads
    /// (the latest wins), which is what a resumed run re-running some steps wants.
    #[inline]
    pub fn log_metric(&mut self, key: &str, step: u64, value: f64) -> Result<()> {
        self.sink.log(key, step, value)
    }

    /// [`Run::log_metric`] with the time the value was measured, in milliseconds since the
    /// Unix epoch, instead of now (for values relayed from elsewhere, as the tracking server
    /// does for its clients).
    pub fn log_metric_at(&mut self, key: &str, step: u64, value: f64, ts: i64) -> Result<()> {
        self.sink.log_at(key, step, value, ts)
    }

    /// Applies a batch received from a remote client (or replayed from a spool): params,
    /// tags, inputs, then metrics. Returns the number of metric values logged.
    #[cfg_attr(not(any(feature = "server", feature = "client")), allow(dead_code))]
    pub(crate) fn apply_batch(&mut self, batch: &crate::api::LogBatch) -> Result<u64> {
        // Everything that can be refused is checked before anything is applied.
        if batch.tags.keys().any(String::is_empty) {
            return Err(Error::InvalidName { what: "tag", name: String::new(), reason: "it is empty" });
        }
        if let Some(p) = batch.metrics.iter().find(|p| !valid_metric_key(&p.key)) {
            return Err(Error::InvalidName { what: "metric", name: p.key.clone(), reason: BAD_METRIC_KEY });
        }
        if !batch.params.is_empty() {
            let params = serde_json::Value::Object(batch.params.clone().into_iter().collect());
            self.merge_params("", params, batch.overwrite_params)?;
        }
        for (key, value) in &batch.tags {
            self.set_tag(key, value)?;
        }
        for input in &batch.inputs {
            self.log_input(input.clone())?;
        }
        let now = now_ms();
        for p in &batch.metrics {
            self.sink.log_at(&p.key, p.step, p.value.0, p.ts.unwrap_or(now))?;
        }
        Ok(batch.metrics.len() as u64)
    }

    /// Logs several metrics at one step.
    pub fn log_metrics(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        for (key, value) in values {
            self.sink.log(key, step, *value)?;
        }
        Ok(())
    }

    /// Waits until every metric logged before this call is written and synced to disk.
    pub fn flush(&mut self) -> Result<()> {
        self.sink.flush()
    }

    /// Stores a file or directory as artifact `name` (a relative path such as
    /// `plots/loss.png`), content-addressed and deduplicated across the store.
    pub fn log_artifact(&mut self, name: &str, path: &Path) -> Result<Artifact> {
        checked_relative(name)?;
        let artifact = self.store.objects().put(name, path)?;
        self.artifacts.insert(name.to_string(), artifact.clone());
        write_json(&self.dir.join("artifacts.json"), &self.artifacts)?;
        Ok(artifact)
    }

    /// Stores `bytes` as the single-file artifact `name`.
    pub fn log_artifact_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<Artifact> {
        checked_relative(name)?;
        let artifact = self.store.objects().put_bytes(name, bytes)?;
        self.artifacts.insert(name.to_string(), artifact.clone());
        write_json(&self.dir.join("artifacts.json"), &self.artifacts)?;
        Ok(artifact)
    }

    /// A directory private to this run for files being produced (checkpoints, packages before
    /// they are logged or registered). It is not an artifact: log what should be kept.
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = self.dir.join("scratch");
        std::fs::create_dir_all(&dir).at(&dir)?;
        Ok(dir)
    }

    /// The last value logged for each metric, including earlier attempts.
    pub fn last_metrics(&self) -> BTreeMap<String, f64> {
        let mut out = self.last.clone();
        out.extend(self.sink.last().map(|(k, v)| (k.to_string(), v)));
        out
    }

    /// Ends the run successfully.
    pub fn finish(mut self) -> Result<()> {
        self.end(RunStatus::Completed, None)
    }

    /// Ends the run as failed, recording why.
    pub fn fail(mut self, error: &str) -> Result<()> {
        self.end(RunStatus::Failed, Some(error.to_string()))
    }

    /// Ends the run as killed (for SIGTERM and preemption handlers): it can be resumed with
    /// [`Store::resume_run`].
    pub fn kill(mut self, reason: &str) -> Result<()> {
        self.end(RunStatus::Killed, Some(reason.to_string()))
    }

    /// Ends the run as a remote client asked: `Running` is not an end and ends it as killed.
    #[cfg_attr(not(any(feature = "server", feature = "client")), allow(dead_code))]
    pub(crate) fn end_as(mut self, end: &crate::api::EndRun) -> Result<()> {
        let status = if end.status == RunStatus::Running { RunStatus::Killed } else { end.status };
        let error = if status == RunStatus::Completed { None } else { Some(end.error.clone().unwrap_or_default()) };
        self.end(status, error)
    }

    fn end(&mut self, status: RunStatus, error: Option<String>) -> Result<()> {
        self.done = true;
        let flushed = self.sink.close();
        let error = match (&flushed, error) {
            (Err(e), None) => Some(format!("metrics could not be written: {e}")),
            (_, error) => error,
        };
        self.state = RunState { status, attempt: self.state.attempt, end_ms: Some(now_ms()), error };
        write_json(&self.dir.join("status.json"), &self.state)?;
        flushed
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

/// Writes the environment to `env.json` and a dirty tree's diff as the `git.diff` artifact,
/// returning whether `artifacts` gained it.
fn record_environment(
    store: &Store,
    dir: &Path,
    artifacts: &mut Manifest,
    env: &Environment,
    diff: &str,
) -> Result<bool> {
    write_json(&dir.join("env.json"), env)?;
    if diff.is_empty() {
        return Ok(false);
    }
    let artifact = store.objects().put_bytes("git.diff", diff.as_bytes())?;
    artifacts.insert(artifact.name.clone(), artifact);
    Ok(true)
}

pub(crate) fn to_value(value: impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::InvalidValue(e.to_string()))
}

/// `value` flattened to dotted keys under `prefix`, refused when a key is empty or, unless
/// `overwrite`, when it was logged before in `existing` with another value.
pub(crate) fn checked_params(
    existing: &BTreeMap<String, serde_json::Value>,
    prefix: &str,
    value: serde_json::Value,
    overwrite: bool,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut flat = BTreeMap::new();
    flatten(prefix, value, &mut flat);
    if let Some(key) = flat.keys().find(|k| k.is_empty()) {
        return Err(Error::InvalidName { what: "parameter", name: key.clone(), reason: "it is empty" });
    }
    if !overwrite
        && let Some((key, value, old)) =
            flat.iter().find_map(|(k, v)| existing.get(k).filter(|old| *old != v).map(|old| (k, v, old)))
    {
        return Err(Error::ParamConflict { key: key.clone(), old: old.to_string(), new: value.to_string() });
    }
    Ok(flat)
}

fn flatten(prefix: &str, value: serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
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

/// Reads a run's files (everything but its metric points).
pub(crate) fn read_record(dir: &Path) -> Result<RunRecord> {
    let meta: RunMeta = read_json(&dir.join("meta.json"))?;
    let state: RunState = read_json(&dir.join("status.json"))?;
    let heartbeat = match read_json::<Heartbeat>(&dir.join("heartbeat.json")) {
        Ok(h) => Some(h),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let environment = match read_json::<Environment>(&dir.join("env.json")) {
        Ok(e) => Some(e),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(RunRecord {
        meta,
        state,
        tags: read_json_or_default(&dir.join("tags.json"))?,
        params: read_json_or_default(&dir.join("params.json"))?,
        inputs: read_json_or_default(&dir.join("inputs.json"))?,
        artifacts: read_json_or_default(&dir.join("artifacts.json"))?,
        environment,
        heartbeat,
        final_metrics: BTreeMap::new(),
        dir: dir.to_path_buf(),
    })
}

/// Why [`valid_metric_key`] refused a key.
pub(crate) const BAD_METRIC_KEY: &str = "it is empty, too long or has a line break";

/// Whether `key` can name a metric in a segment file.
pub(crate) fn valid_metric_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= u16::MAX as usize && !key.contains(['\n', '\r'])
}

/// Reads only what listings filter on: identity and effective status (three small files,
/// where [`read_record`] reads eight).
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn read_meta_and_status(dir: &Path) -> Result<(RunMeta, RunStatus)> {
    let meta: RunMeta = read_json(&dir.join("meta.json"))?;
    let state: RunState = read_json(&dir.join("status.json"))?;
    let status = match state.status {
        RunStatus::Running => {
            let alive = match read_json::<Heartbeat>(&dir.join("heartbeat.json")) {
                Ok(h) => h.is_alive(),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if alive { RunStatus::Running } else { RunStatus::Killed }
        }
        s => s,
    };
    Ok((meta, status))
}

/// Reads every metric point of the run in `dir`, across its segments, in logging order. A
/// `(key, step)` logged again takes the later value, in the place of the first.
pub(crate) fn read_points(dir: &Path) -> Result<Vec<MetricPoint>> {
    Ok(read_raw_points(dir)?
        .into_iter()
        .map(|p| MetricPoint { key: p.key.to_string(), step: p.step, value: p.value, ts: p.ts })
        .collect())
}

/// [`read_points`] with shared key names (one allocation per key, not per point).
pub(crate) fn read_raw_points(dir: &Path) -> Result<Vec<DecodedPoint>> {
    let metrics = dir.join("metrics");
    let mut out: Vec<DecodedPoint> = Vec::new();
    let mut index: HashMap<(Arc<str>, u64), usize> = HashMap::new();
    for n in segment_numbers(&metrics)? {
        let read = read_segment(&metrics.join(crate::segment::segment_name(n)))?;
        out.reserve(read.points.len());
        for p in read.points {
            match index.entry((p.key.clone(), p.step)) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let slot = &mut out[*e.get()];
                    slot.value = p.value;
                    slot.ts = p.ts;
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(out.len());
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// The last value of each metric: the value at the highest step (latest logged on ties).
pub(crate) fn final_values(points: &[DecodedPoint]) -> BTreeMap<String, f64> {
    let mut best: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for p in points {
        let e = best.entry(&*p.key).or_insert((p.step, p.value));
        if p.step >= e.0 {
            *e = (p.step, p.value);
        }
    }
    best.into_iter().map(|(k, (_, v))| (k.to_string(), v)).collect()
}

/// Checks a run id given by a caller before it becomes a path.
pub(crate) fn check_run_id(id: &str) -> Result<()> {
    fsutil::check_name("run id", id)
}
