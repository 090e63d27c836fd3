//! The tracking server: an HTTP API over a [`Store`] for jobs on compute nodes that cannot
//! (or should not) write the store's file system, and for the web UI.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/health` | version, store format, whether writes need a token |
//! | GET | `/api/experiments` | experiments with run counts |
//! | GET | `/api/runs?experiment=&status=&parent=&offset=&limit=` | runs, newest first, paginated |
//! | GET | `/api/runs/{id}` | one run: params, tags, inputs, artifacts, environment |
//! | GET | `/api/runs/{id}/metrics` | each metric's count, step range, last/min/max |
//! | GET | `/api/runs/{id}/metrics/history?key=&max_points=&from_step=&to_step=` | one metric by step, downsampled |
//! | GET | `/api/runs/{id}/artifacts` | the artifact manifest |
//! | GET | `/api/runs/{id}/artifacts/{name}[/{file}]` | artifact content (a file inside a directory artifact) |
//! | GET | `/api/models`, `/api/models/{name}` | the registry: versions, aliases, history |
//! | GET | `/`, `/api/ui/...` | the web UI (see below) |
//! | POST | `/api/runs` | create a run ([`CreateRun`]; idempotent by run id) |
//! | POST | `/api/runs/{id}/log` | params, tags, inputs and metrics in one batch ([`LogBatch`]), durable before the answer |
//! | PUT | `/api/runs/{id}/artifacts/{name}` | upload a file artifact (the body) |
//! | POST | `/api/runs/{id}/end` | end a run ([`EndRun`]) |
//!
//! **Web UI.** `/` serves a single-page UI embedded in the binary: the runs table (sorted,
//! filtered and paginated on the server), run pages with metric charts, overlaid curves and
//! parallel coordinates for comparing runs, the registry, and a serving monitor. It makes no
//! request beyond this server.
//!
//! **Access.** The server listens on 127.0.0.1 unless told otherwise, and refuses to listen on
//! any other address without a bearer token. With a token, every write needs
//! `Authorization: Bearer <token>` (reads too, with [`ServerConfig::protect_reads`]). Plain
//! HTTP: across a network, put it behind TLS (a reverse proxy or an SSH tunnel).
//!
//! **Artifacts** are served by looking the name up in the run's manifest and reading the
//! content-addressed object it names; a request path never becomes a file path, and names
//! with `..`, absolute paths or empty parts are refused.
//!
//! **Runs written remotely** are held open by the server, whose metric writer keeps their
//! heartbeat. A client that stops talking for [`ServerConfig::idle_timeout`] (its process
//! died) has its run ended as `killed`; a later batch for it (a client that spooled while the
//! server was away, then synced) resumes it. Stopping the server ends its open runs as
//! `killed` too.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

pub use crate::api::TOKEN_ENV;
use crate::api::{
    CreateRun, CreatedRun, EndRun, ErrorBody, ExperimentSummary, Health, HistoryPoint, LogAck, LogBatch, MetricHistory,
    MetricSummary, ModelDetail, ModelSummary, RunDetail, RunPage, RunSummary, Value64, VersionDetail,
};
use crate::artifacts::checked_relative;
use crate::fsutil::now_ms;
use crate::run::{EnvSource, RunMeta, final_values, read_meta_and_status, read_raw_points, read_record};
use crate::store::{is_run_id, new_run_id};
use crate::{ArtifactKind, Error, MetricPoint, Result, Run, RunStatus, Store};

mod ui;

/// The address the server listens on by default (loopback only).
pub const DEFAULT_ADDR: &str = "127.0.0.1:7474";

/// How the server listens and who may write.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` to listen on; port 0 picks a free port. Default [`DEFAULT_ADDR`].
    pub addr: String,
    /// The bearer token writes need. Required to listen on a non-loopback address.
    pub token: Option<String>,
    /// Whether reads need the token too (the health check never does).
    pub protect_reads: bool,
    /// A remote run whose client sends nothing for this long is ended as `killed`. Clients
    /// send a keep-alive every 30 s while idle. Default 5 minutes.
    pub idle_timeout: Duration,
    /// The largest request body (a log batch or an uploaded artifact). Default 256 MiB.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR.to_string(),
            token: None,
            protect_reads: false,
            idle_timeout: Duration::from_secs(300),
            max_body_bytes: 256 << 20,
        }
    }
}

/// A run written through the server.
struct Slot {
    run: Option<Run>,
    last_contact: Instant,
}

type SlotRef = Arc<Mutex<Slot>>;

/// Shared by the handlers. Requests lock `open` and release it before locking a slot; only
/// the reaper holds both, and it merely `try_lock`s slots, so the two never wait on each other.
struct AppState {
    store: Store,
    token: Option<String>,
    protect_reads: bool,
    idle_timeout: Duration,
    max_body_bytes: usize,
    open: Mutex<HashMap<String, SlotRef>>,
    /// The web UI's runs table.
    ui_index: Mutex<ui::Index>,
}

impl Drop for AppState {
    /// Runs still open when the last handle goes (an embedding app dropped the router) are
    /// ended as killed, so their clients' next batch resumes them.
    fn drop(&mut self) {
        self.close_all("the tracking server stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The router of the tracking API over `store`, for embedding in another axum app. It does
/// not end idle remote runs or close open runs on shutdown: [`serve`] and
/// [`TrackingServer`] do.
pub fn router(store: Store, config: &ServerConfig) -> Router {
    router_with_state(state(store, config))
}

fn state(store: Store, config: &ServerConfig) -> Arc<AppState> {
    Arc::new(AppState {
        store,
        token: config.token.clone().filter(|t| !t.is_empty()),
        protect_reads: config.protect_reads,
        idle_timeout: config.idle_timeout,
        max_body_bytes: config.max_body_bytes,
        open: Mutex::new(HashMap::new()),
        ui_index: Mutex::new(ui::Index::new()),
    })
}

fn router_with_state(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/experiments", get(experiments))
        .route("/api/runs", get(list_runs).post(create_run))
        .route("/api/runs/{id}", get(run_detail))
        .route("/api/runs/{id}/log", post(log_batch))
        .route("/api/runs/{id}/end", post(end_run))
        .route("/api/runs/{id}/metrics", get(metric_summaries))
        .route("/api/runs/{id}/metrics/history", get(metric_history))
        .route("/api/runs/{id}/artifacts", get(list_artifacts))
        .route("/api/runs/{id}/artifacts/{*name}", get(get_artifact).put(put_artifact))
        .route("/api/models", get(list_models))
        .route("/api/models/{name}", get(model_detail))
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .route("/api/ui/runs", get(ui::runs))
        .route("/api/ui/compare", get(ui::compare))
        .route("/api/ui/serving/{model}", get(ui::serving_monitor))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Checks where the server may listen: loopback always; anything else only with a token.
fn check_bind(addr: &SocketAddr, config: &ServerConfig) -> Result<()> {
    if !addr.ip().is_loopback() && config.token.as_deref().is_none_or(str::is_empty) {
        return Err(Error::Server(format!(
            "refusing to listen on {addr} without a token: anyone who can reach it could write to the store. \
             Set a bearer token ({TOKEN_ENV} for the CLI), or listen on 127.0.0.1 and use an SSH tunnel"
        )));
    }
    Ok(())
}

fn bind(config: &ServerConfig) -> Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let bad = |e: std::io::Error| Error::Server(format!("cannot listen on {}: {e}", config.addr));
    let addrs: Vec<SocketAddr> = config.addr.to_socket_addrs().map_err(bad)?.collect();
    if addrs.is_empty() {
        return Err(Error::Server(format!("{} names no address", config.addr)));
    }
    for addr in &addrs {
        check_bind(addr, config)?;
    }
    let listener = std::net::TcpListener::bind(&addrs[..]).map_err(bad)?;
    listener.set_nonblocking(true).map_err(bad)?;
    Ok(listener)
}

/// Serves the tracking API over `store` on `listener` until `shutdown` completes, ending idle
/// remote runs as they time out, and the runs still open (as `killed`) when it stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let local = listener.local_addr().map_err(|e| Error::Server(e.to_string()))?;
    check_bind(&local, &config)?;
    let state = state(store, &config);
    let app = router_with_state(state.clone());
    let reaper = tokio::spawn(reap_idle(state.clone()));
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    reaper.abort();
    let closing = state.clone();
    let closed = tokio::task::spawn_blocking(move || closing.close_all("the tracking server stopped")).await;
    if let Err(e) = closed {
        tracing::warn!("closing open runs: {e}");
    }
    served.map_err(|e| Error::Server(e.to_string()))
}

/// A tracking server on its own thread and Tokio runtime, for synchronous programs and tests.
#[derive(Debug)]
pub struct TrackingServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl TrackingServer {
    /// Listens on `config.addr` (refusing a non-loopback address without a token) and serves
    /// `store` until [`TrackingServer::shutdown`] or drop.
    pub fn start(store: Store, config: ServerConfig) -> Result<Self> {
        let listener = bind(&config)?;
        let addr = listener.local_addr().map_err(|e| Error::Server(e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kiln-track-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Server(format!("cannot start the runtime: {e}")))?;
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).map_err(|e| Error::Server(e.to_string()))?;
                    serve(listener, store, config, async move {
                        let _ = rx.await;
                    })
                    .await
                })
            })
            .map_err(|e| Error::Server(format!("cannot start the server thread: {e}")))?;
        tracing::info!(%addr, "tracking server listening");
        Ok(Self { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, finishes those in flight, ends open runs as killed, and
    /// joins the server thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            None => Ok(()),
            Some(Err(_)) => Err(Error::Server("the server thread panicked".into())),
        }
    }
}

impl Drop for TrackingServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("tracking server shutdown: {e}");
        }
    }
}

/// Binds `config.addr`, tells `listening` the bound address, and serves until the process
/// gets Ctrl-C or SIGTERM, then ends the runs still open as killed (for the CLI).
pub fn serve_until_signal(store: Store, config: ServerConfig, listening: impl FnOnce(SocketAddr)) -> Result<()> {
    let listener = bind(&config)?;
    listening(listener.local_addr().map_err(|e| Error::Server(e.to_string()))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Server(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| Error::Server(e.to_string()))?;
        serve(listener, store, config, signal()).await
    })
}

async fn signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

// ---------------------------------------------------------------------------------------
// Errors

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self { status, code, message }
    }

    fn invalid(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::InvalidName { .. } | Error::InvalidValue(_) => (StatusCode::BAD_REQUEST, "invalid"),
            Error::ParamConflict { .. } => (StatusCode::CONFLICT, "param_conflict"),
            Error::RunBusy { .. } => (StatusCode::CONFLICT, "run_busy"),
            Error::RunEnded { .. } => (StatusCode::CONFLICT, "run_ended"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        Self::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "invalid" };
        Self::new(status, code, e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::invalid(e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::invalid(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.message, code: Some(self.code.to_string()) };
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Runs store work (file reads, fsyncs) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("request task failed: {e}"))
    })?
}

fn json<T: Serialize>(value: T) -> Response {
    axum::Json(value).into_response()
}

// ---------------------------------------------------------------------------------------
// Access

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        let needed = (!read || state.protect_reads) && request.uri().path() != "/api/health";
        if needed {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same_secret(g.trim().as_bytes(), token.as_bytes())) {
                let what = if given.is_some() { "the bearer token is wrong" } else { "a bearer token is required" };
                let mut response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("{what} (Authorization: Bearer ...)"),
                )
                .into_response();
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        }
    }
    next.run(request).await
}

/// Compares secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------
// Runs written through the server

impl AppState {
    /// The open run `id`: held by this server, or reopened (resumed) when it was killed (the
    /// server restarted, or the client went quiet and came back after spooling).
    fn slot(&self, id: &str) -> Result<SlotRef> {
        check_id(id)?;
        // Claim the id with an empty slot, locked before the map is released: requests for
        // this run wait on the slot while it is reopened, requests for other runs do not wait
        // at all (reopening reads the run's segments).
        let placeholder;
        let mut claimed = {
            let mut open = lock(&self.open);
            if let Some(slot) = open.get(id) {
                return Ok(slot.clone());
            }
            placeholder = Arc::new(Mutex::new(Slot { run: None, last_contact: Instant::now() }));
            open.insert(id.to_string(), placeholder.clone());
            lock(&placeholder)
        };
        match self.reopen(id) {
            Ok(run) => {
                claimed.run = Some(run);
                drop(claimed);
                Ok(placeholder)
            }
            Err(e) => {
                drop(claimed);
                let mut open = lock(&self.open);
                if open.get(id).is_some_and(|held| Arc::ptr_eq(held, &placeholder)) {
                    open.remove(id);
                }
                Err(e)
            }
        }
    }

    /// Resumes a run that is not open here: only a killed one (the server restarted, or the
    /// client went quiet and came back after spooling).
    fn reopen(&self, id: &str) -> Result<Run> {
        let record = self.store.run(id)?;
        match record.status() {
            RunStatus::Running => {
                let owner = record.heartbeat.as_ref().map(|h| format!("pid {} on {}", h.pid, h.host));
                return Err(Error::RunBusy { run_id: id.to_string(), owner: owner.unwrap_or_default() });
            }
            status @ (RunStatus::Completed | RunStatus::Failed) => {
                return Err(Error::RunEnded { run_id: id.to_string(), status });
            }
            RunStatus::Killed => {}
        }
        let run = self.store.reopen_run(id, false)?;
        tracing::info!(run = id, attempt = run.attempt(), "resumed a remote run");
        Ok(run)
    }

    fn create(&self, request: CreateRun) -> Result<CreatedRun> {
        let start_ms = request.start_ms.unwrap_or_else(now_ms);
        let run_id = match request.run_id {
            Some(id) => id,
            None => new_run_id(start_ms),
        };
        let meta = RunMeta {
            name: request.name.unwrap_or_else(|| run_id.clone()),
            run_id: run_id.clone(),
            experiment: request.experiment.clone(),
            parent_run_id: request.parent_run_id,
            start_ms,
        };
        let env = match request.environment {
            Some(env) => EnvSource::Given(Box::new(env), request.git_diff),
            None => EnvSource::Skip,
        };
        // The run directory is claimed by an atomic mkdir: no lock is held while it is written.
        match self.store.create_run_with_meta(meta, request.tags, env)? {
            Some(run) => {
                tracing::debug!(run = %run_id, experiment = %request.experiment, "remote run created");
                let slot = Arc::new(Mutex::new(Slot { run: Some(run), last_contact: Instant::now() }));
                lock(&self.open).insert(run_id.clone(), slot);
                Ok(CreatedRun { run_id, created: true })
            }
            None => {
                let existing = self.store.run(&run_id)?;
                if existing.meta.experiment != request.experiment {
                    return Err(Error::InvalidValue(format!(
                        "run {run_id} exists in experiment {:?}, not {:?}",
                        existing.meta.experiment, request.experiment
                    )));
                }
                let slot = lock(&self.open).get(&run_id).cloned();
                if let Some(slot) = slot {
                    lock(&slot).last_contact = Instant::now();
                }
                Ok(CreatedRun { run_id, created: false })
            }
        }
    }

    /// Runs `f` on open run `id`. A slot emptied between finding and locking it (the reaper
    /// or a concurrent end took the run) is looked up again: the run is then resumed, or
    /// reported as ended.
    fn with_run<T>(&self, id: &str, mut f: impl FnMut(&mut Run) -> Result<T>) -> Result<T> {
        for _ in 0..3 {
            let slot = self.slot(id)?;
            let mut slot = lock(&slot);
            slot.last_contact = Instant::now();
            if let Some(run) = slot.run.as_mut() {
                return f(run);
            }
        }
        Err(Error::Server(format!("run {id} keeps being ended while a request uses it")))
    }

    fn log(&self, id: &str, batch: LogBatch) -> Result<LogAck> {
        self.with_run(id, |run| {
            let points = run.apply_batch(&batch)?;
            run.flush()?;
            Ok(LogAck { points, attempt: run.attempt() })
        })
    }

    fn end(&self, id: &str, end: EndRun) -> Result<RunSummary> {
        if end.status == RunStatus::Running {
            return Err(Error::InvalidValue("a run ends as completed, failed or killed, not running".into()));
        }
        check_id(id)?;
        for _ in 0..3 {
            let held = lock(&self.open).get(id).cloned();
            let slot = match held {
                Some(slot) => slot,
                None => {
                    // Ending again the way it ended is a retry: not an error, nor a resume.
                    let record = self.store.run(id)?;
                    if record.status() == end.status {
                        return Ok(RunSummary::from_record(&record));
                    }
                    self.slot(id)?
                }
            };
            let Some(run) = lock(&slot).run.take() else { continue };
            {
                let mut open = lock(&self.open);
                if open.get(id).is_some_and(|held| Arc::ptr_eq(held, &slot)) {
                    open.remove(id);
                }
            }
            run.end_as(&end)?;
            return Ok(RunSummary::from_record(&self.store.run(id)?));
        }
        Err(Error::Server(format!("run {id} keeps being ended while a request uses it")))
    }

    fn put_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<crate::Artifact> {
        checked_relative(name)?;
        self.with_run(id, |run| run.log_artifact_bytes(name, bytes))
    }

    /// Ends as killed the runs whose clients have been silent for the idle timeout.
    ///
    /// It holds `open` throughout, so no request finds a run between its removal and its
    /// `killed` status reaching disk (it would read as busy); it only `try_lock`s slots, so
    /// it never waits on a request (which may wait on `open`), and skips slots in use.
    fn reap(&self) {
        let mut open = lock(&self.open);
        let mut stale = Vec::new();
        for (id, slot) in open.iter() {
            if let Ok(mut slot) = slot.try_lock()
                && slot.last_contact.elapsed() >= self.idle_timeout
                && let Some(run) = slot.run.take()
            {
                stale.push((id.clone(), run));
            }
        }
        for (id, run) in stale {
            open.remove(&id);
            let why = format!("no word from the client for {} s", self.idle_timeout.as_secs());
            tracing::warn!(run = %id, "{why}; ending the run as killed");
            if let Err(e) = run.kill(&why) {
                tracing::warn!(run = %id, "could not end the run: {e}");
            }
        }
    }

    fn close_all(&self, why: &str) {
        let open: Vec<(String, SlotRef)> = lock(&self.open).drain().collect();
        for (id, slot) in open {
            if let Some(run) = lock(&slot).run.take()
                && let Err(e) = run.kill(why)
            {
                tracing::warn!(run = %id, "could not end the run: {e}");
            }
        }
    }
}

async fn reap_idle(state: Arc<AppState>) {
    let every = (state.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || state.reap()).await;
    }
}

fn check_id(id: &str) -> Result<()> {
    if is_run_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidName { what: "run id", name: id.to_string(), reason: "a run id is 20 lowercase hex digits" })
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

async fn health(State(state): State<Arc<AppState>>) -> Response {
    json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        format_version: crate::FORMAT_VERSION,
        token_required: state.token.is_some(),
    })
}

async fn create_run(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<axum::Json<CreateRun>, JsonRejection>,
) -> ApiResult<Response> {
    let axum::Json(request) = body?;
    let created = blocking(move || Ok(state.create(request)?)).await?;
    let status = if created.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(created)).into_response())
}

async fn log_batch(
    State(state): State<Arc<AppState>>,
    id: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<axum::Json<LogBatch>, JsonRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let axum::Json(batch) = body?;
    Ok(json(blocking(move || Ok(state.log(&id, batch)?)).await?))
}

async fn end_run(
    State(state): State<Arc<AppState>>,
    id: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<axum::Json<EndRun>, JsonRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let axum::Json(end) = body?;
    Ok(json(blocking(move || Ok(state.end(&id, end)?)).await?))
}

async fn put_artifact(
    State(state): State<Arc<AppState>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> ApiResult<Response> {
    let Path((id, name)) = path?;
    Ok(json(blocking(move || Ok(state.put_artifact(&id, &name, &body)?)).await?))
}

async fn experiments(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let out = blocking(move || {
        let mut by_name: BTreeMap<String, ExperimentSummary> = BTreeMap::new();
        for id in state.store.run_ids()? {
            let (meta, status) = read_meta_and_status(&state.store.run_dir(&id))?;
            let e = by_name.entry(meta.experiment.clone()).or_insert_with(|| ExperimentSummary {
                experiment: meta.experiment.clone(),
                runs: 0,
                running: 0,
                last_start_ms: i64::MIN,
            });
            e.runs += 1;
            e.running += usize::from(status == RunStatus::Running);
            e.last_start_ms = e.last_start_ms.max(meta.start_ms);
        }
        Ok(by_name.into_values().collect::<Vec<_>>())
    })
    .await?;
    Ok(json(out))
}

#[derive(Deserialize)]
struct ListQuery {
    experiment: Option<String>,
    status: Option<RunStatus>,
    parent: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// The largest page of runs.
const MAX_PAGE: usize = 1000;

async fn list_runs(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}, got {limit}")));
    }
    let page = blocking(move || {
        // Newest first: run ids sort by start time. Filters read only identity and status;
        // whole records and final metric values are read for the runs on the page alone.
        let mut matching = Vec::new();
        let filtered = q.experiment.is_some() || q.parent.is_some() || q.status.is_some();
        for id in state.store.run_ids()?.into_iter().rev() {
            if filtered {
                let (meta, status) = read_meta_and_status(&state.store.run_dir(&id))?;
                let keep = q.experiment.as_ref().is_none_or(|e| *e == meta.experiment)
                    && q.parent.as_ref().is_none_or(|p| Some(p) == meta.parent_run_id.as_ref())
                    && q.status.is_none_or(|s| s == status);
                if !keep {
                    continue;
                }
            }
            matching.push(id);
        }
        let total = matching.len();
        let mut runs = Vec::new();
        for id in matching.into_iter().skip(q.offset).take(limit) {
            let mut record = read_record(&state.store.run_dir(&id))?;
            record.final_metrics = final_values(&read_raw_points(&record.dir)?);
            runs.push(RunSummary::from_record(&record));
        }
        Ok(RunPage { total, offset: q.offset, limit, runs })
    })
    .await?;
    Ok(json(page))
}

async fn run_detail(
    State(state): State<Arc<AppState>>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    Ok(json(blocking(move || Ok(RunDetail::from_record(&record(&state.store, &id)?))).await?))
}

/// Run `id` of the store, refusing what is not a run id.
fn record(store: &Store, id: &str) -> Result<crate::RunRecord> {
    check_id(id)?;
    store.run(id)
}

/// A run's points of one metric, by step (a step logged twice keeps the later value).
fn series(store: &Store, id: &str, key: Option<&str>) -> Result<Vec<MetricPoint>> {
    check_id(id)?;
    let mut points = store.metrics(id)?;
    if let Some(key) = key {
        points.retain(|p| p.key == key);
    }
    points.sort_by(|a, b| a.key.cmp(&b.key).then(a.step.cmp(&b.step)));
    Ok(points)
}

async fn metric_summaries(
    State(state): State<Arc<AppState>>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let out = blocking(move || {
        let points = series(&state.store, &id, None)?;
        let mut out: Vec<MetricSummary> = Vec::new();
        for chunk in points.chunk_by(|a, b| a.key == b.key) {
            let (first, last) = (&chunk[0], &chunk[chunk.len() - 1]);
            let finite = chunk.iter().map(|p| p.value).filter(|v| v.is_finite());
            let min = finite.clone().reduce(f64::min).map(Value64);
            let max = finite.reduce(f64::max).map(Value64);
            out.push(MetricSummary {
                key: first.key.clone(),
                points: chunk.len(),
                first_step: first.step,
                last_step: last.step,
                last: Value64(last.value),
                min,
                max,
                non_finite: chunk.iter().filter(|p| !p.is_finite()).count(),
            });
        }
        Ok(out)
    })
    .await?;
    Ok(json(out))
}

#[derive(Deserialize)]
struct HistoryQuery {
    key: String,
    max_points: Option<usize>,
    from_step: Option<u64>,
    to_step: Option<u64>,
}

/// The most points a history answer holds.
const MAX_HISTORY_POINTS: usize = 1_000_000;

async fn metric_history(
    State(state): State<Arc<AppState>>,
    id: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let Query(q) = query?;
    let max_points = q.max_points.unwrap_or(1000);
    if !(2..=MAX_HISTORY_POINTS).contains(&max_points) {
        return Err(ApiError::invalid(format!(
            "max_points must be between 2 and {MAX_HISTORY_POINTS}, got {max_points}"
        )));
    }
    let out = blocking(move || {
        let mut points = series(&state.store, &id, Some(&q.key))?;
        if points.is_empty() {
            return Err(Error::NotFound(format!("metric {:?} of run {id}", q.key)).into());
        }
        points.retain(|p| q.from_step.is_none_or(|s| p.step >= s) && q.to_step.is_none_or(|s| p.step <= s));
        let total_points = points.len();
        let kept = downsample(&points, max_points);
        Ok(MetricHistory {
            run_id: id,
            key: q.key,
            total_points,
            downsampled: kept.len() < total_points,
            points: kept
                .into_iter()
                .map(|i| HistoryPoint { step: points[i].step, value: Value64(points[i].value), ts: points[i].ts })
                .collect(),
        })
    })
    .await?;
    Ok(json(out))
}

/// Picks at most `max_points` of `points` (sorted by step) for a chart: the points are cut
/// into equal buckets and each keeps its lowest and highest value, so spikes survive; a NaN
/// or +inf counts as the highest and -inf as the lowest, so a divergence is never smoothed
/// away. The last point is always kept. Returns indices, increasing.
pub(crate) fn downsample(points: &[MetricPoint], max_points: usize) -> Vec<usize> {
    let n = points.len();
    if n <= max_points {
        return (0..n).collect();
    }
    let buckets = (max_points - 1) / 2;
    if buckets == 0 {
        return vec![0, n - 1];
    }
    let rank = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
    let mut keep = Vec::with_capacity(max_points);
    for b in 0..buckets {
        let (lo, hi) = (b * n / buckets, (b + 1) * n / buckets);
        if lo >= hi {
            continue;
        }
        let (mut min_i, mut max_i) = (lo, lo);
        for i in lo..hi {
            let v = points[i].value;
            if rank(v) < rank(points[min_i].value) {
                min_i = i;
            }
            // NaN outranks +inf, so a NaN is never hidden behind an infinity.
            if rank(v) > rank(points[max_i].value) || (v.is_nan() && !points[max_i].value.is_nan()) {
                max_i = i;
            }
        }
        keep.push(min_i.min(max_i));
        if min_i != max_i {
            keep.push(min_i.max(max_i));
        }
    }
    if keep.last() != Some(&(n - 1)) {
        keep.push(n - 1);
    }
    keep
}

async fn list_artifacts(
    State(state): State<Arc<AppState>>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    Ok(json(blocking(move || Ok(record(&state.store, &id)?.artifacts.into_values().collect::<Vec<_>>())).await?))
}

/// What an artifact path names: a file's content, or a directory artifact's listing.
enum Found {
    File { digest: String, size: u64 },
    Listing(crate::Artifact),
}

/// Resolves `path` against the run's manifest. The path is checked first and then only
/// compared with manifest entries: it never reaches the file system.
fn find_artifact(store: &Store, id: &str, path: &str) -> Result<Found> {
    checked_relative(path)?;
    let record = record(store, id)?;
    let not_found = || Error::NotFound(format!("artifact {path:?} of run {id}"));
    if let Some(artifact) = record.artifacts.get(path) {
        return Ok(match artifact.kind {
            ArtifactKind::File => {
                let file = artifact.files.first().ok_or_else(not_found)?;
                Found::File { digest: file.digest.clone(), size: file.size }
            }
            ArtifactKind::Directory => Found::Listing(artifact.clone()),
        });
    }
    // A file inside a directory artifact: the longest artifact name that is a prefix.
    let mut cut = path.len();
    while let Some(slash) = path[..cut].rfind('/') {
        cut = slash;
        let (name, inner) = (&path[..slash], &path[slash + 1..]);
        if let Some(artifact) = record.artifacts.get(name) {
            let file = artifact.files.iter().find(|f| f.path == inner).ok_or_else(not_found)?;
            return Ok(Found::File { digest: file.digest.clone(), size: file.size });
        }
    }
    Err(not_found())
}

async fn get_artifact(
    State(state): State<Arc<AppState>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let Path((id, name)) = path?;
    let opened = blocking(move || {
        Ok(match find_artifact(&state.store, &id, &name)? {
            Found::Listing(artifact) => Err(artifact),
            Found::File { digest, size } => {
                let object = state.store.object_path(&digest)?;
                let file = std::fs::File::open(&object).map_err(|source| Error::Io { path: object.clone(), source })?;
                Ok((file, size))
            }
        })
    })
    .await?;
    let (file, size) = match opened {
        Err(listing) => return Ok(json(listing)),
        Ok(found) => found,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || stream_file(file, &tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// Sends a file in 256 KiB chunks, stopping when the client goes away.
fn stream_file(mut file: std::fs::File, tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

async fn list_models(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let out = blocking(move || {
        let registry = state.store.registry();
        let mut out = Vec::new();
        for name in registry.models()? {
            let versions = registry.versions(&name)?;
            out.push(ModelSummary {
                latest: versions.iter().map(|v| v.version).max(),
                versions: versions.len(),
                aliases: registry.aliases(&name)?,
                name,
            });
        }
        Ok(out)
    })
    .await?;
    Ok(json(out))
}

async fn model_detail(
    State(state): State<Arc<AppState>>,
    name: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(name) = name?;
    let out = blocking(move || {
        let registry = state.store.registry();
        let versions = registry.versions(&name)?;
        if versions.is_empty() {
            return Err(Error::NotFound(format!("model {name}")).into());
        }
        Ok(ModelDetail {
            versions: versions.into_iter().map(|v| VersionDetail { tags: v.tags.clone(), version: v }).collect(),
            aliases: registry.aliases(&name)?,
            history: registry.history(&name)?,
            name,
        })
    })
    .await?;
    Ok(json(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn points(values: &[f64]) -> Vec<MetricPoint> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| MetricPoint { key: "loss".into(), step: i as u64, value: *v, ts: 0 })
            .collect()
    }

    #[test]
    fn downsampling_keeps_spikes_divergence_and_the_last_point() {
        let mut values: Vec<f64> = (0..10_000).map(|i| 1.0 / (1.0 + i as f64)).collect();
        values[5_000] = 100.0;
        values[7_000] = f64::NAN;
        values[8_000] = f64::NEG_INFINITY;
        let pts = points(&values);
        let kept = downsample(&pts, 101);
        assert!(kept.len() <= 101, "{} points", kept.len());
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "indices must increase");
        for must in [5_000, 7_000, 8_000, 9_999, 0] {
            assert!(kept.contains(&must), "step {must} was dropped");
        }
    }

    #[test]
    fn short_series_are_returned_whole() {
        let pts = points(&[3.0, 2.0, 1.0]);
        assert_eq!(downsample(&pts, 3), vec![0, 1, 2]);
        assert_eq!(downsample(&pts, 2).last(), Some(&2));
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let open = ServerConfig::default();
        assert!(check_bind(&any, &open).is_err());
        assert!(check_bind(&local, &open).is_ok());
        let tokened = ServerConfig { token: Some("s3cret".into()), ..ServerConfig::default() };
        assert!(check_bind(&any, &tokened).is_ok());
    }
}
