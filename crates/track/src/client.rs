//! A blocking client of the tracking server, for jobs on compute nodes that log remotely.
//!
//! [`RemoteRun`] logs like a local [`Run`]: `log_metric` only appends to a
//! buffer, and a background thread sends batches (every 10,000 points or every second) to
//! `POST /api/runs/{id}/log`, retrying with exponential backoff. When the server stays
//! unreachable, the run carries on in a local **spool** store (`KILN_SPOOL`, default
//! `./kiln-spool`) under the same run id, with everything logged so far; nothing is dropped.
//! When the run ends, the client pushes its spool to the server if it is back; otherwise
//! [`Client::sync_spool`] (`kiln push`) does it later. Pushing is idempotent: the server keeps
//! one value per (run, metric, step), so a push that is interrupted can simply be repeated.
//!
//! ```no_run
//! use kiln_track::client::Client;
//!
//! # fn main() -> kiln_track::Result<()> {
//! let client = Client::from_env()?; // KILN_TRACK_URL, KILN_TRACK_TOKEN, KILN_SPOOL
//! let mut run = client.run_builder("digits").name("mlp").start()?;
//! run.log_param("lr", 1e-3)?;
//! for epoch in 1..=3 {
//!     run.log_metric("train_loss", epoch, 1.0 / epoch as f64)?;
//! }
//! run.finish()?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{
    CreateRun, CreatedRun, EndRun, ErrorBody, ExperimentSummary, Health, LogAck, LogBatch, MetricHistory,
    MetricSummary, ModelDetail, ModelSummary, RunDetail, RunPage, RunSummary, TOKEN_ENV, Value64, WirePoint,
};
use crate::artifacts::checked_relative;
use crate::fsutil::{self, now_ms, write_json};
use crate::run::{EnvSource, RunMeta, checked_params, to_value};
use crate::store::new_run_id;
use crate::{ArtifactKind, DatasetInput, Environment, Error, Result, Run, RunRecord, RunStatus, Store};

/// The environment variable naming the tracking server, e.g. `http://login1:7474`.
pub const URL_ENV: &str = "KILN_TRACK_URL";
/// The environment variable naming the spool directory (default `./kiln-spool`).
pub const SPOOL_ENV: &str = "KILN_SPOOL";

/// Points a remote run buffers before sending them.
const REMOTE_BATCH_POINTS: usize = 10_000;
/// Batches waiting for the sender thread before `log_metric` waits.
const REMOTE_CHANNEL_BATCHES: usize = 16;
/// A buffer older than this is sent at the next `log_metric`.
const REMOTE_BATCH_AGE: Duration = Duration::from_secs(1);
/// An idle run tells the server it is alive this often.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Points per request when pushing a spooled run.
const PUSH_BATCH_POINTS: usize = 20_000;

/// A client of a kiln tracking server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
    spool: PathBuf,
    retries: u32,
    backoff: Duration,
}

/// Filters and page of [`Client::runs`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunQuery {
    /// Only runs of this experiment.
    pub experiment: Option<String>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only children of this run (the trials of a sweep).
    pub parent: Option<String>,
    /// Runs to skip (newest first).
    pub offset: usize,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<usize>,
}

/// What [`Client::sync_spool`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolReport {
    /// Runs pushed to the server.
    pub runs_pushed: usize,
    /// Metric values pushed.
    pub points_pushed: u64,
    /// Artifact files uploaded.
    pub artifacts_pushed: usize,
    /// Runs pushed by an earlier sync.
    pub already_pushed: usize,
    /// Runs still being written by a live process (pushed when they end).
    pub still_running: Vec<String>,
    /// Runs that could not be pushed, and why (they are tried again next time).
    pub failed: Vec<(String, String)>,
}

/// Written into a spooled run's directory once the server has all of it.
#[derive(Serialize)]
struct PushedMarker<'a> {
    server: &'a str,
    pushed_ms: i64,
    points: u64,
}

const PUSHED_MARKER: &str = "pushed.json";

enum Payload<'a> {
    None,
    Json(serde_json::Value),
    Bytes(&'a [u8]),
}

impl Client {
    /// A client of the server at `url` (for example `http://login1:7474`), without a token,
    /// spooling to `KILN_SPOOL` or `./kiln-spool`.
    pub fn new(url: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Self {
            base: url.trim_end_matches('/').to_string(),
            agent: config.into(),
            token: None,
            spool: std::env::var_os(SPOOL_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("kiln-spool")),
            retries: 4,
            backoff: Duration::from_millis(250),
        }
    }

    /// A client configured from the environment: `KILN_TRACK_URL` (required),
    /// `KILN_TRACK_TOKEN` and `KILN_SPOOL`.
    pub fn from_env() -> Result<Self> {
        let url = std::env::var(URL_ENV)
            .map_err(|_| Error::InvalidValue(format!("{URL_ENV} is not set (the tracking server's URL)")))?;
        let mut client = Self::new(&url);
        client.token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        Ok(client)
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// Where runs go while the server cannot be reached.
    pub fn with_spool(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool = dir.into();
        self
    }

    /// How often a failed request is retried (default 4) and the first wait (default
    /// 250 ms, doubling up to 5 s). Requests refused by the server (4xx) are not retried.
    pub fn with_retries(mut self, retries: u32, first_backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = first_backoff;
        self
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// `GET /api/health`.
    pub fn health(&self) -> Result<Health> {
        self.get("/api/health")
    }

    /// The experiments and their run counts.
    pub fn experiments(&self) -> Result<Vec<ExperimentSummary>> {
        self.get("/api/experiments")
    }

    /// One page of runs, newest first.
    pub fn runs(&self, query: &RunQuery) -> Result<RunPage> {
        let mut params = vec![format!("offset={}", query.offset)];
        if let Some(e) = &query.experiment {
            params.push(format!("experiment={}", encode(e)));
        }
        if let Some(s) = query.status {
            params.push(format!("status={s}"));
        }
        if let Some(p) = &query.parent {
            params.push(format!("parent={}", encode(p)));
        }
        if let Some(l) = query.limit {
            params.push(format!("limit={l}"));
        }
        self.get(&format!("/api/runs?{}", params.join("&")))
    }

    /// Everything about one run but its metric values.
    pub fn run(&self, run_id: &str) -> Result<RunDetail> {
        self.get(&format!("/api/runs/{}", encode(run_id)))
    }

    /// Each metric of a run: count, step range, last, min and max.
    pub fn metrics(&self, run_id: &str) -> Result<Vec<MetricSummary>> {
        self.get(&format!("/api/runs/{}/metrics", encode(run_id)))
    }

    /// One metric by step, reduced by the server to at most `max_points` points (keeping
    /// each bucket's lowest and highest value, and NaN/inf).
    pub fn metric_history(&self, run_id: &str, key: &str, max_points: usize) -> Result<MetricHistory> {
        self.get(&format!("/api/runs/{}/metrics/history?key={}&max_points={max_points}", encode(run_id), encode(key)))
    }

    /// The content of a file artifact, or of file `inner` of a directory artifact
    /// (`name/inner`).
    pub fn artifact(&self, run_id: &str, name: &str) -> Result<Vec<u8>> {
        let path = format!("/api/runs/{}/artifacts/{}", encode(run_id), encode_path(name));
        self.request(ureq::http::Method::GET, &path, Payload::None)
    }

    /// The registered models.
    pub fn models(&self) -> Result<Vec<ModelSummary>> {
        self.get("/api/models")
    }

    /// One model: versions, aliases and history.
    pub fn model(&self, name: &str) -> Result<ModelDetail> {
        self.get(&format!("/api/models/{}", encode(name)))
    }

    /// Starts a remote run in `experiment` (see [`Client::run_builder`]).
    pub fn start_run(&self, experiment: &str) -> Result<RemoteRun> {
        self.run_builder(experiment).start()
    }

    /// A builder for a remote run with a name, tags or a parent.
    pub fn run_builder(&self, experiment: &str) -> RemoteRunBuilder<'_> {
        RemoteRunBuilder {
            client: self,
            experiment: experiment.to_string(),
            name: None,
            parent: None,
            tags: BTreeMap::new(),
            capture_environment: true,
        }
    }

    /// Pushes every ended run of the spool that the server does not have yet: its params,
    /// tags, inputs, metric values, file artifacts and end. Runs still being written are
    /// left for later. Repeating a push is harmless.
    pub fn sync_spool(&self) -> Result<SpoolReport> {
        let mut report = SpoolReport::default();
        if !self.spool.join("store.json").exists() {
            return Ok(report);
        }
        let store = Store::open(&self.spool)?;
        for id in store.run_ids()? {
            let dir = store.run_dir(&id);
            if dir.join(PUSHED_MARKER).exists() {
                report.already_pushed += 1;
                continue;
            }
            let record = match store.run(&id) {
                Ok(record) => record,
                Err(e) => {
                    report.failed.push((id, format!("cannot read the spooled run: {e}")));
                    continue;
                }
            };
            if record.status() == RunStatus::Running {
                report.still_running.push(id);
                continue;
            }
            match self.push_run(&store, &record) {
                Ok((points, artifacts)) => {
                    let marker = PushedMarker { server: &self.base, pushed_ms: now_ms(), points };
                    write_json(&dir.join(PUSHED_MARKER), &marker)?;
                    report.runs_pushed += 1;
                    report.points_pushed += points;
                    report.artifacts_pushed += artifacts;
                }
                Err(e) => report.failed.push((id, e.to_string())),
            }
        }
        Ok(report)
    }

    /// Pushes one spooled run; returns the metric values and artifact files sent.
    fn push_run(&self, store: &Store, record: &RunRecord) -> Result<(u64, usize)> {
        let id = &record.meta.run_id;
        let create = CreateRun {
            run_id: Some(id.clone()),
            experiment: record.meta.experiment.clone(),
            name: Some(record.meta.name.clone()),
            parent_run_id: record.meta.parent_run_id.clone(),
            tags: record.tags.clone(),
            start_ms: Some(record.meta.start_ms),
            environment: record.environment.clone(),
            git_diff: None,
        };
        let _: CreatedRun = self.post("/api/runs", &create)?;
        let points = store.metrics(id)?;
        let mut first = LogBatch {
            params: record.params.clone(),
            // The spooled params are the run's latest: they may overwrite ones that reached the
            // server before the outage (a resumed training's adjusted settings).
            overwrite_params: true,
            tags: record.tags.clone(),
            inputs: record.inputs.clone(),
            metrics: Vec::new(),
        };
        let log = format!("/api/runs/{id}/log");
        let mut sent = 0u64;
        let mut chunks = points.chunks(PUSH_BATCH_POINTS).peekable();
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let mut batch = std::mem::take(&mut first);
            batch.metrics = chunk
                .iter()
                .map(|p| WirePoint { key: p.key.clone(), step: p.step, value: Value64(p.value), ts: Some(p.ts) })
                .collect();
            match self.post::<_, LogAck>(&log, &batch) {
                Ok(_) => sent += chunk.len() as u64,
                Err(e @ Error::Http { .. }) if http_code(&e) == Some("run_ended") => {
                    // An earlier push got as far as ending the run: it is there in full,
                    // provided it ended the same way. Otherwise the spool keeps it.
                    let there = self.run(id)?;
                    if there.summary.status == record.status() {
                        return Ok((0, 0));
                    }
                    return Err(Error::InvalidValue(format!(
                        "the server ended run {id} as {} but the spool has it {}; not pushed",
                        there.summary.status,
                        record.status()
                    )));
                }
                Err(e) => return Err(e),
            }
            if chunks.peek().is_none() {
                break;
            }
        }
        let mut artifacts = 0;
        for artifact in record.artifacts.values() {
            for file in &artifact.files {
                let name = match artifact.kind {
                    ArtifactKind::File => artifact.name.clone(),
                    ArtifactKind::Directory => format!("{}/{}", artifact.name, file.path),
                };
                let object = store.object_path(&file.digest)?;
                let bytes = std::fs::read(&object).map_err(|source| Error::Io { path: object, source })?;
                self.put_artifact(id, &name, &bytes)?;
                artifacts += 1;
            }
        }
        let end = EndRun { status: record.status(), error: record.state.error.clone() };
        let _: RunSummary = self.post(&format!("/api/runs/{id}/end"), &end)?;
        Ok((sent, artifacts))
    }

    fn put_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<crate::Artifact> {
        let path = format!("/api/runs/{run_id}/artifacts/{}", encode_path(name));
        let body = self.request(ureq::http::Method::PUT, &path, Payload::Bytes(bytes))?;
        parse(&self.url_of(&path), &body)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.request(ureq::http::Method::GET, path, Payload::None)?;
        parse(&self.url_of(path), &body)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let json = serde_json::to_value(body).map_err(|e| Error::InvalidValue(e.to_string()))?;
        let body = self.request(ureq::http::Method::POST, path, Payload::Json(json))?;
        parse(&self.url_of(path), &body)
    }

    fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request, retrying transport failures and 408/429/5xx answers with exponential
    /// backoff. Returns the body of a 2xx answer.
    fn request(&self, method: ureq::http::Method, path: &str, payload: Payload<'_>) -> Result<Vec<u8>> {
        let url = self.url_of(path);
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            let failure = match self.once(&method, &url, &payload) {
                Ok((status, body)) if (200..300).contains(&status) => return Ok(body),
                Ok((status, body)) => {
                    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
                        Ok(b) => (b.code, b.error),
                        Err(_) => (None, String::from_utf8_lossy(&body).into_owned()),
                    };
                    let error = Error::Http { url: url.clone(), status: Some(status), code, message };
                    if !matches!(status, 408 | 429 | 500..=599) {
                        return Err(error);
                    }
                    error
                }
                Err(message) => Error::Http { url: url.clone(), status: None, code: None, message },
            };
            if attempt >= self.retries {
                return Err(failure);
            }
            attempt += 1;
            tracing::debug!(%url, attempt, "retrying after {failure}");
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    fn once(
        &self,
        method: &ureq::http::Method,
        url: &str,
        payload: &Payload<'_>,
    ) -> std::result::Result<(u16, Vec<u8>), String> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match (method.as_str(), payload) {
            ("GET", _) => {
                let mut request = self.agent.get(url);
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                request.call()
            }
            (m, payload) => {
                let mut request = if m == "PUT" { self.agent.put(url) } else { self.agent.post(url) };
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                match payload {
                    Payload::Json(json) => request.send_json(json),
                    Payload::Bytes(bytes) => request.header("content-type", "application/octet-stream").send(*bytes),
                    Payload::None => request.send_empty(),
                }
            }
        };
        let mut response = response.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(u64::MAX).read_to_vec().map_err(|e| e.to_string())?;
        Ok((status, body))
    }
}

fn parse<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Http {
        url: url.to_string(),
        status: None,
        code: None,
        message: format!("unexpected answer: {e}"),
    })
}

/// Percent-encodes one path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a `/`-separated path, keeping the slashes.
fn encode_path(s: &str) -> String {
    s.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// The server's error code, when it refused with one.
fn http_code(e: &Error) -> Option<&str> {
    match e {
        Error::Http { code: Some(code), .. } => Some(code),
        _ => None,
    }
}

/// Whether a failed request means the server cannot be reached (or keeps failing), as
/// opposed to refusing what was sent.
fn server_unreachable(e: &Error) -> bool {
    matches!(e, Error::Http { status: None, .. } | Error::Http { status: Some(408 | 429 | 500..=599), .. })
}

/// Options of a new remote run; see [`Client::run_builder`].
#[derive(Debug)]
#[must_use = "a run builder does nothing until `start` is called"]
pub struct RemoteRunBuilder<'a> {
    client: &'a Client,
    experiment: String,
    name: Option<String>,
    parent: Option<String>,
    tags: BTreeMap<String, String>,
    capture_environment: bool,
}

impl RemoteRunBuilder<'_> {
    /// A human name (defaults to the run id).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The parent run, e.g. the sweep this run is a trial of.
    pub fn parent(mut self, run_id: &str) -> Self {
        self.parent = Some(run_id.to_string());
        self
    }

    /// A tag set from the start.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.to_string(), value.to_string());
        self
    }

    /// Whether to capture this process's environment (on by default).
    pub fn capture_environment(mut self, capture: bool) -> Self {
        self.capture_environment = capture;
        self
    }

    /// Creates the run on the server, or in the spool when the server cannot be reached
    /// (with a warning). A server that refuses (a wrong token, a bad name) is an error.
    pub fn start(self) -> Result<RemoteRun> {
        fsutil::check_name("experiment", &self.experiment)?;
        let start_ms = now_ms();
        let (environment, git_diff) = if self.capture_environment {
            let (env, diff) = Environment::capture();
            (Some(env), Some(diff).filter(|d| !d.is_empty()))
        } else {
            (None, None)
        };
        let create = CreateRun {
            run_id: Some(new_run_id(start_ms)),
            experiment: self.experiment,
            name: self.name,
            parent_run_id: self.parent,
            tags: self.tags,
            start_ms: Some(start_ms),
            environment,
            git_diff,
        };
        let mut uplink = Uplink {
            client: self.client.clone(),
            create: create.clone(),
            spool: None,
            delivered: LogBatch::default(),
            error: None,
            spooling: Arc::new(AtomicBool::new(false)),
        };
        match self.client.post::<_, CreatedRun>("/api/runs", &create) {
            Ok(_) => {}
            Err(e) if server_unreachable(&e) => uplink.switch_to_spool(&e)?,
            Err(e) => return Err(e),
        }
        let spooling = uplink.spooling.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(REMOTE_CHANNEL_BATCHES);
        let thread = std::thread::Builder::new()
            .name("kiln-track-client".into())
            .spawn(move || uplink.run(rx))
            .map_err(|e| Error::Server(format!("cannot start the client thread: {e}")))?;
        let run_id = create.run_id.unwrap_or_default();
        Ok(RemoteRun {
            run_id,
            experiment: create.experiment,
            tx: Some(tx),
            thread: Some(thread),
            pending: LogBatch::default(),
            buf_since: Instant::now(),
            params: BTreeMap::new(),
            spooling,
            done: false,
        })
    }
}

enum Msg {
    Batch(LogBatch),
    Artifact(String, Vec<u8>, SyncSender<Result<()>>),
    Flush(SyncSender<Result<()>>),
    End(EndRun, SyncSender<Result<()>>),
}

/// A run logged through a tracking server.
///
/// Logging never waits for the network: values are buffered and sent in batches by a
/// background thread. [`RemoteRun::flush`] returns once the server (or, when it cannot be
/// reached, the local spool) has everything logged before it on disk, and reports any
/// refusal by the server since the last flush. A run dropped without ending is ended as
/// failed.
#[derive(Debug)]
pub struct RemoteRun {
    run_id: String,
    experiment: String,
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    pending: LogBatch,
    buf_since: Instant,
    params: BTreeMap<String, serde_json::Value>,
    spooling: Arc<AtomicBool>,
    done: bool,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Batch(_) => "Batch",
            Self::Artifact(..) => "Artifact",
            Self::Flush(_) => "Flush",
            Self::End(..) => "End",
        })
    }
}

impl RemoteRun {
    /// The run id (the same on the server and in the spool).
    pub fn id(&self) -> &str {
        &self.run_id
    }

    /// The experiment.
    pub fn experiment(&self) -> &str {
        &self.experiment
    }

    /// Whether the run is being written to the local spool because the server could not be
    /// reached.
    pub fn is_spooling(&self) -> bool {
        self.spooling.load(Ordering::Relaxed)
    }

    /// Logs one parameter (objects are flattened to dotted keys). A key logged again with a
    /// different value is [`Error::ParamConflict`].
    pub fn log_param(&mut self, key: &str, value: impl Serialize) -> Result<()> {
        self.merge_params(key, to_value(value)?)
    }

    /// Logs every field of a serializable value as a parameter.
    pub fn log_params(&mut self, params: &impl Serialize) -> Result<()> {
        self.merge_params("", to_value(params)?)
    }

    /// Sets every field of a serializable value as a parameter, replacing earlier values (a
    /// resumed run whose adjustable settings changed).
    pub fn overwrite_params(&mut self, params: &impl Serialize) -> Result<()> {
        // Earlier params go in their own batch: the flag applies to a whole batch.
        self.send()?;
        let flat = checked_params(&self.params, "", to_value(params)?, true)?;
        self.params.extend(flat.clone());
        self.pending.params.extend(flat);
        self.pending.overwrite_params = true;
        let sent = self.send();
        self.pending.overwrite_params = false;
        sent
    }

    fn merge_params(&mut self, prefix: &str, value: serde_json::Value) -> Result<()> {
        let flat = checked_params(&self.params, prefix, value, false)?;
        self.params.extend(flat.clone());
        self.pending.params.extend(flat);
        // Rare and precious: sent now rather than left in the buffer with the metrics.
        self.send()
    }

    /// Sets a tag.
    pub fn set_tag(&mut self, key: &str, value: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidName { what: "tag", name: key.into(), reason: "it is empty" });
        }
        self.pending.tags.insert(key.to_string(), value.to_string());
        self.send()
    }

    /// Records a dataset the run read.
    pub fn log_input(&mut self, input: DatasetInput) -> Result<()> {
        self.pending.inputs.push(input);
        self.send()
    }

    /// Logs a metric value at `step`. Never waits for the network (only for the sender
    /// thread, when 16 batches are already waiting).
    pub fn log_metric(&mut self, key: &str, step: u64, value: f64) -> Result<()> {
        if !crate::run::valid_metric_key(key) {
            return Err(Error::InvalidName {
                what: "metric",
                name: key.to_string(),
                reason: crate::run::BAD_METRIC_KEY,
            });
        }
        if self.pending.metrics.is_empty() {
            self.buf_since = Instant::now();
        }
        self.pending.metrics.push(WirePoint { key: key.to_string(), step, value: Value64(value), ts: Some(now_ms()) });
        if self.pending.metrics.len() >= REMOTE_BATCH_POINTS || self.buf_since.elapsed() >= REMOTE_BATCH_AGE {
            self.send()?;
        }
        Ok(())
    }

    /// Logs several metrics at one step.
    pub fn log_metrics(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        for (key, value) in values {
            self.log_metric(key, step, *value)?;
        }
        Ok(())
    }

    /// Uploads `bytes` as the file artifact `name` (after everything logged before it).
    pub fn log_artifact_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        checked_relative(name)?;
        self.send()?;
        self.call(|reply| Msg::Artifact(name.to_string(), bytes.to_vec(), reply))
    }

    /// Uploads the file at `path` as artifact `name`.
    pub fn log_artifact(&mut self, name: &str, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        self.log_artifact_bytes(name, &bytes)
    }

    /// Waits until everything logged before is durable on the server (or in the spool), and
    /// returns the first refusal by the server since the last flush, if any.
    pub fn flush(&mut self) -> Result<()> {
        self.send()?;
        self.call(Msg::Flush)
    }

    /// Ends the run successfully.
    pub fn finish(mut self) -> Result<()> {
        self.end(RunStatus::Completed, None)
    }

    /// Ends the run as failed, recording why.
    pub fn fail(mut self, error: &str) -> Result<()> {
        self.end(RunStatus::Failed, Some(error.to_string()))
    }

    /// Ends the run as killed (for SIGTERM and preemption handlers); it can be resumed.
    pub fn kill(mut self, reason: &str) -> Result<()> {
        self.end(RunStatus::Killed, Some(reason.to_string()))
    }

    fn end(&mut self, status: RunStatus, error: Option<String>) -> Result<()> {
        self.done = true;
        let sent = self.send();
        let ended = self.call(|reply| Msg::End(EndRun { status, error }, reply));
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        sent.and(ended)
    }

    fn send(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.channel()?.send(Msg::Batch(batch)).map_err(|_| gone())
    }

    fn call(&self, msg: impl FnOnce(SyncSender<Result<()>>) -> Msg) -> Result<()> {
        let (reply, wait) = std::sync::mpsc::sync_channel(1);
        self.channel()?.send(msg(reply)).map_err(|_| gone())?;
        wait.recv().map_err(|_| gone())?
    }

    fn channel(&self) -> Result<&SyncSender<Msg>> {
        self.tx.as_ref().ok_or_else(gone)
    }
}

fn gone() -> Error {
    Error::Server("the client's sender thread has stopped".into())
}

impl Drop for RemoteRun {
    fn drop(&mut self) {
        if !self.done {
            let why =
                if std::thread::panicking() { "the program panicked" } else { "the run was dropped without finish()" };
            if let Err(e) = self.end(RunStatus::Failed, Some(why.to_string())) {
                tracing::warn!(run = %self.run_id, "could not record the end of the run: {e}");
            }
        }
    }
}

/// The sender thread of a remote run.
struct Uplink {
    client: Client,
    create: CreateRun,
    /// The spool's copy of the run, once the server could not be reached.
    spool: Option<(Store, Run)>,
    /// Params, tags and inputs the server has, to start a spooled copy complete.
    delivered: LogBatch,
    /// The first refusal since the last flush.
    error: Option<Error>,
    spooling: Arc<AtomicBool>,
}

impl Uplink {
    fn id(&self) -> &str {
        self.create.run_id.as_deref().unwrap_or_default()
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            match rx.recv_timeout(KEEPALIVE) {
                Ok(Msg::Batch(batch)) => self.deliver(batch),
                Ok(Msg::Artifact(name, bytes, reply)) => {
                    let _ = reply.send(self.artifact(&name, &bytes));
                }
                Ok(Msg::Flush(reply)) => {
                    let result = match self.error.take() {
                        Some(e) => Err(e),
                        None => match &mut self.spool {
                            Some((_, run)) => run.flush(),
                            None => Ok(()),
                        },
                    };
                    let _ = reply.send(result);
                }
                Ok(Msg::End(end, reply)) => {
                    let _ = reply.send(self.end(end));
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.spool.is_none() {
                        let path = format!("/api/runs/{}/log", self.id());
                        if let Err(e) = self.client.post::<_, LogAck>(&path, &LogBatch::default()) {
                            tracing::warn!(run = %self.id(), "keep-alive failed: {e}");
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn deliver(&mut self, batch: LogBatch) {
        if self.spool.is_none() {
            let path = format!("/api/runs/{}/log", self.id());
            match self.client.post::<_, LogAck>(&path, &batch) {
                Ok(_) => {
                    self.remember(&batch);
                    return;
                }
                Err(e) if server_unreachable(&e) => {
                    if let Err(spool_error) = self.switch_to_spool(&e) {
                        self.error.get_or_insert(spool_error);
                        return;
                    }
                }
                Err(refusal) => {
                    tracing::warn!(run = %self.id(), "the tracking server refused a batch: {refusal}");
                    // The metric values are not what was refused when params conflict (the
                    // server applies nothing of a refused batch): send them on their own.
                    let rest = LogBatch { metrics: batch.metrics.clone(), ..LogBatch::default() };
                    let retried = http_code(&refusal) == Some("param_conflict")
                        && !rest.metrics.is_empty()
                        && self.client.post::<_, LogAck>(&path, &rest).is_ok();
                    self.error.get_or_insert(refusal);
                    if retried || batch.metrics.is_empty() && batch.inputs.is_empty() && batch.tags.is_empty() {
                        return;
                    }
                    // Whatever else the server will not take is kept in the spool, never
                    // dropped; `kiln push` reports it again until it is resolved.
                    let cause = Error::Server("the tracking server refused a batch".into());
                    if let Err(spool_error) = self.switch_to_spool(&cause) {
                        tracing::error!(run = %self.id(), "a refused batch is lost: {spool_error}");
                        return;
                    }
                }
            }
        }
        if let Some((_, run)) = &mut self.spool
            && let Err(e) = run.apply_batch(&batch)
        {
            self.error.get_or_insert(e);
        }
    }

    fn remember(&mut self, batch: &LogBatch) {
        self.delivered.params.extend(batch.params.clone());
        self.delivered.tags.extend(batch.tags.clone());
        for input in &batch.inputs {
            if !self.delivered.inputs.contains(input) {
                self.delivered.inputs.push(input.clone());
            }
        }
    }

    /// Carries on in the spool: the run is created there under the same id with the params,
    /// tags and inputs the server already has, so the spooled copy stands on its own.
    fn switch_to_spool(&mut self, cause: &Error) -> Result<()> {
        let store = Store::open(&self.client.spool)?;
        let create = &self.create;
        let meta = RunMeta {
            run_id: self.id().to_string(),
            experiment: create.experiment.clone(),
            name: create.name.clone().unwrap_or_else(|| self.id().to_string()),
            parent_run_id: create.parent_run_id.clone(),
            start_ms: create.start_ms.unwrap_or_else(now_ms),
        };
        let env = match &create.environment {
            Some(env) => EnvSource::Given(Box::new(env.clone()), create.git_diff.clone()),
            None => EnvSource::Skip,
        };
        let mut run = match store.create_run_with_meta(meta, create.tags.clone(), env)? {
            Some(run) => run,
            None => store.reopen_run(self.id(), false)?,
        };
        run.apply_batch(&self.delivered)?;
        tracing::warn!(
            run = %self.id(),
            spool = %store.root().display(),
            "the tracking server cannot be reached ({cause}); logging to the spool, to be pushed when the run ends or with `kiln push`"
        );
        self.spool = Some((store, run));
        self.spooling.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn artifact(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.spool.is_none() {
            match self.client.put_artifact(self.id(), name, bytes) {
                Ok(_) => return Ok(()),
                Err(e) if server_unreachable(&e) => self.switch_to_spool(&e)?,
                Err(e) => return Err(e),
            }
        }
        match &mut self.spool {
            Some((_, run)) => run.log_artifact_bytes(name, bytes).map(drop),
            None => Ok(()),
        }
    }

    fn end(&mut self, end: EndRun) -> Result<()> {
        if self.spool.is_none() {
            let path = format!("/api/runs/{}/end", self.id());
            match self.client.post::<_, RunSummary>(&path, &end) {
                Ok(_) => return self.error.take().map_or(Ok(()), Err),
                Err(e) if server_unreachable(&e) => self.switch_to_spool(&e)?,
                Err(e) => return Err(self.error.take().unwrap_or(e)),
            }
        }
        let Some((store, run)) = self.spool.take() else { return Ok(()) };
        run.end_as(&end)?;
        // Push now if the server is back; otherwise the spool keeps it for `kiln push`.
        let record = store.run(self.id())?;
        match self.client.push_run(&store, &record) {
            Ok((points, _)) => {
                let marker = PushedMarker { server: &self.client.base, pushed_ms: now_ms(), points };
                write_json(&record.dir.join(PUSHED_MARKER), &marker)?;
                tracing::info!(run = %self.id(), points, "pushed the spooled run to the tracking server");
            }
            Err(e) => tracing::warn!(
                run = %self.id(),
                spool = %store.root().display(),
                "the spooled run is kept locally; push it with `kiln push` when the server is back ({e})"
            ),
        }
        self.error.take().map_or(Ok(()), Err)
    }
}

impl crate::Tracker for RemoteRun {
    fn run_id(&self) -> &str {
        self.id()
    }

    fn set_params(&mut self, params: serde_json::Value, overwrite: bool) -> Result<()> {
        if overwrite { self.overwrite_params(&params) } else { self.log_params(&params) }
    }

    fn set_tag(&mut self, key: &str, value: &str) -> Result<()> {
        RemoteRun::set_tag(self, key, value)
    }

    fn log_metric(&mut self, key: &str, step: u64, value: f64) -> Result<()> {
        RemoteRun::log_metric(self, key, step, value)
    }

    fn log_artifact_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        RemoteRun::log_artifact_bytes(self, name, bytes)
    }

    fn flush(&mut self) -> Result<()> {
        RemoteRun::flush(self)
    }
}
