//! The HTTP server: routing between deployed versions, inference, feedback, monitoring and
//! the shared state behind them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_data::pipeline::InputKind;
use kiln_track::{FeedbackRecord, PredictionRecord, Store};
use kiln_train::{ModelPackage, Prediction, Predictor};
use serde_json::json;

use crate::admin::{self, Control};
use crate::batcher::{BatchConfig, Batcher, Outcome};
use crate::deploy::{CanaryPolicy, Deployment, DeploymentEvent, ROUTE_KEY_HEADER, Windows, routes_to_canary};
use crate::feedback::{Answers, FeedbackRequest, FeedbackResponse, Online};
use crate::inputs::{Input, Signature, parse};
use crate::log::{LogConfig, LogWriter};
use crate::metrics::{Metrics, escape};
use crate::monitor::{InputWindow, MonitorConfig, MonitorReport, TriggerState};
use crate::openapi::ROUTES;
use crate::protocol::{ErrorBody, InferRequest, InferResponse, InferTensor};
use crate::{Error, Result};

/// A model ready to serve under a name and version.
#[derive(Debug)]
pub struct LoadedModel {
    /// The name clients use in URLs.
    pub name: String,
    /// The version reported in responses (the registry version number).
    pub version: String,
    /// The loaded package.
    pub predictor: Arc<Predictor>,
    /// Batching and queueing of its requests.
    pub batching: BatchConfig,
    /// The registry version it was loaded from, if any: promotion and rollback move the
    /// registry's `production` alias to it.
    pub registry_version: Option<u32>,
}

/// Loads the package in `dir`, refusing one whose model is not a classifier: this server's
/// inference protocol answers labels and class probabilities.
fn load_classifier(dir: &std::path::Path) -> Result<Predictor> {
    let predictor = ModelPackage::load(dir)?;
    if !predictor.task().is_classification() {
        return Err(Error::InvalidArgument(format!(
            "{}: a {} package; kiln-serve serves classification packages only (predict with kiln_train::Predictor::predict_values)",
            dir.display(),
            predictor.task().name()
        )));
    }
    Ok(predictor)
}

impl LoadedModel {
    /// Loads `reference` (a version number, `latest`, or an alias such as `production`) of
    /// `model` from a store's registry.
    pub fn from_registry(store: &Store, model: &str, reference: &str) -> Result<Self> {
        let version = store.registry().resolve(model, reference)?;
        let predictor = Arc::new(load_classifier(&version.package_dir)?);
        Ok(Self {
            name: model.to_string(),
            version: version.version.to_string(),
            predictor,
            batching: BatchConfig::default(),
            registry_version: Some(version.version),
        })
    }

    /// Loads a package directory directly, under `name` and `version`.
    pub fn from_dir(name: &str, version: &str, dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            version: version.to_string(),
            predictor: Arc::new(load_classifier(dir)?),
            batching: BatchConfig::default(),
            registry_version: None,
        })
    }

    /// Serves with these batching settings.
    pub fn with_batching(mut self, batching: BatchConfig) -> Self {
        self.batching = batching;
        self
    }
}

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// The store that receives the prediction log and feedback, and whose registry the admin
    /// API loads versions from and moves aliases in. Without one nothing is logged.
    pub store: Option<Store>,
    /// The bearer token of the admin API (`/admin/...`); without one the admin API answers
    /// 403.
    pub admin_token: Option<String>,
    /// Prediction logging.
    pub log: LogConfig,
    /// Drift, degradation and the retraining trigger.
    pub monitor: MonitorConfig,
    /// Answers held per model for joining feedback (the oldest are forgotten first).
    pub answers_capacity: usize,
}

impl Default for ServeOptions {
    /// 16 MiB bodies, no store, no admin token, 100,000 answers held per model.
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            store: None,
            admin_token: None,
            log: LogConfig::default(),
            monitor: MonitorConfig::default(),
            answers_capacity: 100_000,
        }
    }
}

/// A model version being served: its package, input signature and batching worker.
#[derive(Debug)]
pub(crate) struct Served {
    pub model: LoadedModel,
    pub text: Vec<bool>,
    pub batcher: Batcher,
}

impl Served {
    pub(crate) fn start(model: LoadedModel) -> Result<Arc<Self>> {
        let text = text_features(&model.predictor);
        let batcher = Batcher::start(&model.name, Arc::clone(&model.predictor), model.batching).map_err(|e| {
            Error::Server(format!("cannot start the worker of model {:?} version {}: {e}", model.name, model.version))
        })?;
        Ok(Arc::new(Self { model, text, batcher }))
    }

    pub(crate) fn version(&self) -> &str {
        &self.model.version
    }
}

/// Which versions of a model serve now.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    pub primary: Arc<Served>,
    pub canary: Option<(Arc<Served>, f64)>,
    pub shadow: Option<Arc<Served>>,
    /// The primary before the last promotion, for rollback.
    pub previous: Option<Arc<Served>>,
}

/// The role a version played for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Primary,
    Canary,
    Shadow,
    /// Asked for by version (`/versions/{v}/infer`): not part of the canary comparison.
    Direct,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Canary => "canary",
            Self::Shadow => "shadow",
            Self::Direct => "direct",
        }
    }
}

/// Counters of one model beyond the per-request metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub feedback_joined: u64,
    pub feedback_unjoined: u64,
    pub rollbacks: u64,
    /// Shadow rows by version: (agreed with the primary, disagreed, failed).
    pub shadow: BTreeMap<String, (u64, u64, u64)>,
}

/// The mutable state of one served model name.
#[derive(Debug)]
pub(crate) struct SlotState {
    pub policy: CanaryPolicy,
    /// Requests and labels per version since the canary started.
    pub windows: Windows,
    pub answers: Answers,
    pub online: Online,
    pub events: Vec<DeploymentEvent>,
    pub inputs: InputWindow,
    pub report: Option<MonitorReport>,
    pub trigger: TriggerState,
    pub counters: Counters,
}

/// One served model name.
#[derive(Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub routing: RwLock<Routing>,
    pub state: Mutex<SlotState>,
}

impl Slot {
    pub(crate) fn routing(&self) -> Routing {
        self.routing.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_routing(&self, f: impl FnOnce(&mut Routing)) {
        f(&mut self.routing.write().unwrap_or_else(PoisonError::into_inner));
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub models: BTreeMap<String, Arc<Slot>>,
    pub metrics: Metrics,
    pub options: ServeOptions,
    pub log: Option<LogWriter>,
    id_prefix: String,
    next_id: AtomicU64,
}

impl AppState {
    pub(crate) fn slot(&self, name: &str) -> std::result::Result<&Arc<Slot>, String> {
        self.models.get(name).ok_or_else(|| {
            let loaded: Vec<&str> = self.models.keys().map(String::as_str).collect();
            format!("model {name:?} is not loaded (loaded: {})", loaded.join(", "))
        })
    }

    /// A request id unique to this server process.
    fn new_id(&self) -> String {
        format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The KServe v2 routes for `models`, for embedding in an application's own axum router.
///
/// | route | answer |
/// |---|---|
/// | `GET /v2/health/live`, `GET /v2/health/ready` | 200 when serving |
/// | `GET /v2` | server metadata |
/// | `GET /v2/models/{name}` (`/versions/{v}`) | model metadata: inputs, outputs, labels |
/// | `GET /v2/models/{name}/ready` | 200 if loaded, 404 otherwise |
/// | `POST /v2/models/{name}/infer` (`/versions/{v}/infer`) | predictions |
/// | `POST /v2/models/{name}/feedback` | labels for answered requests |
/// | `GET /v2/models/{name}/monitor` | drift and online accuracy |
/// | `/admin/models/{name}/...` | deployment status, canary, shadow, promote, rollback |
/// | `GET /metrics` | Prometheus counters and histograms |
/// | `GET /openapi.json` | the OpenAPI document of these routes |
pub fn router(models: Vec<LoadedModel>) -> Result<Router> {
    router_with(models, ServeOptions::default())
}

/// [`router`] with server-wide options.
pub fn router_with<D: Into<Deployment>>(models: Vec<D>, options: ServeOptions) -> Result<Router> {
    app(models, options).map(|(router, _)| router)
}

/// The routes and the [`Control`] of their deployments.
pub fn app<D: Into<Deployment>>(deployments: Vec<D>, options: ServeOptions) -> Result<(Router, Control)> {
    options.log.validate().map_err(Error::InvalidArgument)?;
    options.monitor.validate().map_err(Error::InvalidArgument)?;
    let mut models = BTreeMap::new();
    for d in deployments {
        let d: Deployment = d.into();
        let name = d.primary.name.clone();
        if models.contains_key(&name) {
            return Err(Error::DuplicateModel(name));
        }
        d.policy.validate().map_err(Error::InvalidArgument)?;
        for other in d.canary.iter().map(|(m, _)| m).chain(&d.shadow) {
            if other.name != name {
                return Err(Error::InvalidArgument(format!(
                    "a deployment of model {name:?} cannot hold model {:?}",
                    other.name
                )));
            }
        }
        let features = d.primary.predictor.manifest().features.clone();
        let mut events = Vec::new();
        let canary = match d.canary {
            Some((m, percent)) => {
                let percent = crate::deploy::check_percent(percent).map_err(Error::InvalidArgument)?;
                events.push(event("canary_set", &m.version, Some(format!("{percent}% of traffic"))));
                Some((Served::start(m)?, percent))
            }
            None => None,
        };
        let shadow = match d.shadow {
            Some(m) => {
                events.push(event("shadow_set", &m.version, None));
                Some(Served::start(m)?)
            }
            None => None,
        };
        let routing = Routing { primary: Served::start(d.primary)?, canary, shadow, previous: None };
        let state = SlotState {
            policy: d.policy,
            windows: Windows::new(),
            answers: Answers::new(options.answers_capacity),
            online: Online::new(),
            events,
            inputs: InputWindow::new(features, options.monitor.window_rows),
            report: None,
            trigger: TriggerState::default(),
            counters: Counters::default(),
        };
        models.insert(name.clone(), Arc::new(Slot { name, routing: RwLock::new(routing), state: Mutex::new(state) }));
    }
    let log = match &options.store {
        Some(store) => Some(
            LogWriter::start(store.clone(), options.log.clone())
                .map_err(|e| Error::Server(format!("cannot start the prediction log writer: {e}")))?,
        ),
        None => None,
    };
    let seed = now_ms() as u64 ^ (u64::from(std::process::id()) << 32);
    let state = Arc::new(AppState {
        models,
        metrics: Metrics::default(),
        options: options.clone(),
        log,
        id_prefix: format!("{:012x}", seed & 0xffff_ffff_ffff),
        next_id: AtomicU64::new(0),
    });
    start_monitor(Arc::downgrade(&state), options.monitor.interval)?;
    let path = |i: usize| ROUTES[i].1;
    let router = Router::new()
        .route(path(0), get(server_metadata))
        .route(path(1), get(|| async { Json(json!({"live": true})) }))
        .route(path(2), get(|| async { Json(json!({"ready": true})) }))
        .route(path(3), get(model_metadata))
        .route(path(4), get(model_metadata_versioned))
        .route(path(5), get(model_ready))
        .route(path(6), post(infer))
        .route(path(7), post(infer_versioned))
        .route(path(8), post(feedback))
        .route(path(9), get(monitor))
        .route(path(10), get(metrics))
        .route(path(11), get(|| async { Json(crate::openapi::document()) }))
        .merge(admin::routes())
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(Arc::clone(&state));
    Ok((router, Control(state)))
}

pub(crate) fn event(kind: &str, version: &str, reason: Option<String>) -> DeploymentEvent {
    DeploymentEvent { at_ms: now_ms(), event: kind.into(), version: version.into(), reason }
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

async fn server_metadata(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "name": "kiln-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["kiln-feedback", "kiln-monitor"],
        "models": state.models.keys().collect::<Vec<_>>(),
    }))
}

/// The served version `version` of a routing (primary, canary or shadow), with its role.
fn pick_version(routing: &Routing, version: &str) -> Option<(Arc<Served>, Role)> {
    if routing.primary.version() == version {
        return Some((Arc::clone(&routing.primary), Role::Direct));
    }
    let candidates = routing.canary.iter().map(|(s, _)| s).chain(&routing.shadow);
    candidates.filter(|s| s.version() == version).map(|s| (Arc::clone(s), Role::Direct)).next()
}

fn versions(routing: &Routing) -> Vec<String> {
    let mut v = vec![routing.primary.version().to_string()];
    v.extend(routing.canary.iter().map(|(s, _)| s.version().to_string()));
    v.extend(routing.shadow.iter().map(|s| s.version().to_string()));
    v
}

/// Which of the package's features are text (a pipeline's text input columns).
fn text_features(predictor: &Predictor) -> Vec<bool> {
    let text: Vec<&str> = predictor
        .pipeline()
        .map(|p| p.input_schema.iter().filter(|c| c.kind == InputKind::Text).map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    predictor.manifest().features.iter().map(|f| text.contains(&f.as_str())).collect()
}

async fn model_metadata(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    metadata(&state, &name, None)
}

async fn model_metadata_versioned(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&state, &name, Some(&version))
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Response {
    let slot = match state.slot(name) {
        Ok(s) => s,
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let routing = slot.routing();
    let served = match version {
        None => Arc::clone(&routing.primary),
        Some(v) => match pick_version(&routing, v) {
            Some((s, _)) => s,
            None => {
                let serving = versions(&routing).join(", ");
                return error(
                    StatusCode::NOT_FOUND,
                    format!("model {name:?} version {v} is not loaded (serving versions {serving})"),
                );
            }
        },
    };
    let m = served.model.predictor.manifest();
    let mut inputs: Vec<serde_json::Value> = m
        .features
        .iter()
        .zip(&served.text)
        .map(|(f, text)| json!({"name": f, "datatype": if *text { "BYTES" } else { "FP64" }, "shape": [-1]}))
        .collect();
    if !served.text.iter().any(|t| *t) {
        inputs.insert(0, json!({"name": "input", "datatype": "FP64", "shape": [-1, m.features.len()]}));
    }
    Json(json!({
        "name": served.model.name,
        "versions": if version.is_some() { vec![served.version().to_string()] } else { versions(&routing) },
        "platform": format!("kiln/{}", m.kind),
        "inputs": inputs,
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "class", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, m.labels.len()]},
        ],
        "parameters": {
            "version": served.version(),
            "features": m.features,
            "labels": m.labels.classes,
            "metrics": m.metrics,
            "lineage": m.lineage,
            "batching": served.model.batching,
        },
    }))
    .into_response()
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match state.slot(&name) {
        Ok(slot) => Json(json!({"name": slot.name, "ready": true})).into_response(),
        Err(message) => error(StatusCode::NOT_FOUND, message),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.metrics.render();
    render_serving_metrics(&state, &mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A request body, or the JSON error for one that could not be read (too large: 413).
pub(crate) type Body = std::result::Result<axum::body::Bytes, BytesRejection>;

/// The status and message for a body that could not be read.
pub(crate) fn unreadable(rejection: &BytesRejection) -> (StatusCode, String) {
    (rejection.status(), format!("cannot read the request body: {}", rejection.body_text()))
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_infer(state, name, None, &headers, body).await
}

async fn infer_versioned(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_infer(state, name, Some(version), &headers, body).await
}

/// The header a client sets to bound how long its request may take, in milliseconds.
pub const TIMEOUT_HEADER: &str = "kiln-timeout-ms";

/// The response header naming the role of the version that answered: `primary`, `canary`
/// or `direct` (asked for by version).
pub const ROLE_HEADER: &str = "kiln-role";

async fn run_infer(
    state: Arc<AppState>,
    name: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let slot = match state.slot(&name) {
        Ok(s) => Arc::clone(s),
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let routing = slot.routing();
    let picked = match &version {
        Some(v) => match pick_version(&routing, v) {
            Some(found) => Some(found),
            None => {
                let serving = versions(&routing).join(", ");
                return error(
                    StatusCode::NOT_FOUND,
                    format!("model {name:?} version {v} is not loaded (serving versions {serving})"),
                );
            }
        },
        None => None,
    };
    let fail = |served: &Served, response: Response| {
        state.metrics.record(&name, served.version(), response.status().as_u16(), 0, started.elapsed());
        response
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let (status, message) = unreadable(&rejection);
            return fail(picked.as_ref().map_or(&routing.primary, |p| &p.0), error(status, message));
        }
    };
    let mut request: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("invalid inference request: {e}");
            return fail(picked.as_ref().map_or(&routing.primary, |p| &p.0), error(StatusCode::BAD_REQUEST, message));
        }
    };
    let id = request.id.take().unwrap_or_else(|| state.new_id());
    let (served, role) = match picked {
        Some(found) => found,
        None => {
            let key = headers.get(ROUTE_KEY_HEADER).and_then(|v| v.to_str().ok()).unwrap_or(&id);
            match &routing.canary {
                Some((canary, percent)) if routes_to_canary(key, *percent) => (Arc::clone(canary), Role::Canary),
                _ => (Arc::clone(&routing.primary), Role::Primary),
            }
        }
    };
    let _in_flight = state.metrics.in_flight(&name);
    let (response, done) = answer(&served, &state.metrics, headers, &request, &id, started).await;
    let status = response.status();
    let elapsed = started.elapsed();
    let rows = done.as_ref().map_or(0, |(input, _)| input.rows());
    state.metrics.record(&name, served.version(), status.as_u16(), rows, elapsed);
    let mut response = response;
    response.headers_mut().insert(ROLE_HEADER, HeaderValue::from_static(role.as_str()));
    after_answer(&state, &slot, &routing, &served, role, &id, status, elapsed, done);
    response
}

/// Records what an answer means for the deployment: the canary comparison, the monitor's
/// window, the answers held for feedback, the prediction log, and the shadow's copy.
#[allow(clippy::too_many_arguments)]
fn after_answer(
    state: &Arc<AppState>,
    slot: &Arc<Slot>,
    routing: &Routing,
    served: &Arc<Served>,
    role: Role,
    id: &str,
    status: StatusCode,
    elapsed: Duration,
    done: Option<(Input, Vec<Prediction>)>,
) {
    let routed = matches!(role, Role::Primary | Role::Canary);
    // A client's mistake (4xx) says nothing about the version; server-side failures do.
    let server_error = status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE;
    {
        let mut s = slot.state();
        if routed && routing.canary.is_some() && (done.is_some() || server_error) {
            s.windows.entry(served.version().to_string()).or_default().answered(server_error, elapsed);
        }
        if let Some((input, predictions)) = &done {
            if matches!(role, Role::Primary) {
                s.inputs.push(input);
            }
            s.answers.insert(id.to_string(), served.version().to_string(), labels_of(predictions));
        }
        if routed && routing.canary.is_some() {
            judge_canary(slot, &mut s);
        }
    }
    let Some((input, predictions)) = done else { return };
    if let Some(log) = state.log.as_ref().filter(|l| l.config.sample_rate > 0.0 && l.config.sampled(id)) {
        log.predictions(records(&slot.name, served, role, id, &input, &predictions, elapsed));
    }
    if let (true, Some(shadow)) = (routed, routing.shadow.clone()) {
        let (state, slot, id) = (Arc::clone(state), Arc::clone(slot), id.to_string());
        tokio::spawn(async move { run_shadow(&state, &slot, &shadow, &id, input, &predictions).await });
    }
}

fn labels_of(predictions: &[Prediction]) -> Vec<String> {
    predictions.iter().map(|p| p.label.clone()).collect()
}

/// The prediction log's rows for one answer.
fn records(
    model: &str,
    served: &Served,
    role: Role,
    id: &str,
    input: &Input,
    predictions: &[Prediction],
    elapsed: Duration,
) -> Vec<PredictionRecord> {
    let time_ms = now_ms();
    let features = &served.model.predictor.manifest().features;
    predictions
        .iter()
        .enumerate()
        .map(|(row, p)| PredictionRecord {
            time_ms,
            model: model.to_string(),
            version: served.version().to_string(),
            role: role.as_str().to_string(),
            request_id: id.to_string(),
            row: row as u32,
            inputs: input.row_json(row, features),
            label: p.label.clone(),
            class: p.class as i64,
            probabilities: p.probabilities.clone(),
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        })
        .collect()
}

/// Predicts a copy of a primary request with the shadow; the client already has its answer.
async fn run_shadow(
    state: &AppState,
    slot: &Slot,
    shadow: &Arc<Served>,
    id: &str,
    input: Input,
    primary: &[Prediction],
) {
    let started = Instant::now();
    let deadline = started + shadow.model.batching.default_timeout;
    let kept = input.clone();
    let outcome = match shadow.batcher.submit(input, deadline) {
        Ok(rx) => match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Failed("the shadow's worker stopped".into()),
            Err(_) => Outcome::Expired,
        },
        Err(_) => Outcome::Failed("the shadow's queue is full".into()),
    };
    let version = shadow.version().to_string();
    match outcome {
        Outcome::Done { predictions, .. } => {
            let agree = predictions.iter().zip(primary).filter(|(a, b)| a.label == b.label).count() as u64;
            {
                let mut s = slot.state();
                let c = s.counters.shadow.entry(version.clone()).or_default();
                c.0 += agree;
                c.1 += predictions.len() as u64 - agree;
                s.answers.shadow(id, version, labels_of(&predictions));
            }
            if let Some(log) = state.log.as_ref().filter(|l| l.config.sample_rate > 0.0 && l.config.sampled(id)) {
                log.predictions(records(&slot.name, shadow, Role::Shadow, id, &kept, &predictions, started.elapsed()));
            }
        }
        Outcome::Invalid(message) | Outcome::Failed(message) => {
            tracing::debug!(model = %slot.name, %version, "shadow failed: {message}");
            slot.state().counters.shadow.entry(version).or_default().2 += kept.rows() as u64;
        }
        Outcome::Expired => {
            slot.state().counters.shadow.entry(version).or_default().2 += kept.rows() as u64;
        }
    }
}

/// Rolls the canary back if the policy says it is worse than the primary.
pub(crate) fn judge_canary(slot: &Slot, s: &mut SlotState) {
    if !s.policy.auto_rollback {
        return;
    }
    let routing = slot.routing();
    let Some((canary, _)) = &routing.canary else { return };
    let empty = Default::default();
    let primary_stats = s.windows.get(routing.primary.version()).unwrap_or(&empty);
    let canary_stats = s.windows.get(canary.version()).unwrap_or(&empty);
    let Some(reason) = s.policy.verdict(primary_stats, canary_stats) else { return };
    tracing::warn!(model = %slot.name, version = canary.version(), "canary rolled back: {reason}");
    slot.set_routing(|r| r.canary = None);
    s.events.push(event("auto_rollback", canary.version(), Some(reason)));
    s.counters.rollbacks += 1;
}

async fn answer(
    served: &Served,
    metrics: &Metrics,
    headers: &HeaderMap,
    request: &InferRequest,
    id: &str,
    started: Instant,
) -> (Response, Option<(Input, Vec<Prediction>)>) {
    let bad = |message: String| (error(StatusCode::BAD_REQUEST, message), None);
    let signature = Signature { features: &served.model.predictor.manifest().features, text: &served.text };
    let input = match parse(request, &signature) {
        Ok(input) => input,
        Err(message) => return bad(message),
    };
    let timeout = match headers.get(TIMEOUT_HEADER).map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok())) {
        None => served.model.batching.default_timeout,
        Some(Some(ms)) => Duration::from_millis(ms),
        Some(None) => return bad(format!("header {TIMEOUT_HEADER}: expected milliseconds as a whole number")),
    };
    let deadline = started + timeout;
    let kept = input.clone();
    let Ok(outcome) = served.batcher.submit(input, deadline) else {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model {:?} is overloaded: its queue is full; retry shortly", served.model.name),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return (response, None);
    };
    let outcome = match tokio::time::timeout_at(deadline.into(), outcome).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => return (error(StatusCode::INTERNAL_SERVER_ERROR, "the model's worker stopped"), None),
        Err(_) => Outcome::Expired,
    };
    match outcome {
        Outcome::Done { predictions, queued, batch_rows } => {
            metrics.batch(&served.model.name, queued, batch_rows);
            let n = predictions.len();
            let classes = served.model.predictor.manifest().labels.len();
            let labels: Vec<&str> = predictions.iter().map(|p| p.label.as_str()).collect();
            let class: Vec<i64> = predictions.iter().map(|p| p.class as i64).collect();
            let probs: Vec<f32> = predictions.iter().flat_map(|p| p.probabilities.iter().copied()).collect();
            let tensor = |name: &str, shape: Vec<i64>, datatype: &str, data: serde_json::Value| InferTensor {
                name: name.into(),
                shape,
                datatype: datatype.into(),
                data,
            };
            let body = InferResponse {
                model_name: served.model.name.clone(),
                model_version: served.version().to_string(),
                id: Some(id.to_string()),
                outputs: vec![
                    tensor("label", vec![n as i64], "BYTES", json!(labels)),
                    tensor("class", vec![n as i64], "INT64", json!(class)),
                    tensor("probabilities", vec![n as i64, classes as i64], "FP32", json!(probs)),
                ],
            };
            (Json(body).into_response(), Some((kept, predictions)))
        }
        Outcome::Invalid(message) => bad(message),
        Outcome::Expired => (
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("deadline of {} ms passed before the model answered", timeout.as_millis()),
            ),
            None,
        ),
        Outcome::Failed(message) => (error(StatusCode::INTERNAL_SERVER_ERROR, message), None),
    }
}

async fn feedback(State(state): State<Arc<AppState>>, Path(name): Path<String>, body: Body) -> Response {
    let slot = match state.slot(&name) {
        Ok(s) => Arc::clone(s),
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let (status, message) = unreadable(&rejection);
            return error(status, message);
        }
    };
    let request: FeedbackRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid feedback: {e}")),
    };
    match record_feedback(&state, &slot, &request) {
        Ok((records, mut response)) => {
            if let (Some(log), false) = (&state.log, records.is_empty()) {
                match log.feedback(records).await {
                    Ok(Ok(())) => response.stored = true,
                    Ok(Err(e)) => {
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the labels could not be stored: {e}"),
                        );
                    }
                    Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the log writer stopped"),
                }
            }
            Json(response).into_response()
        }
        Err((status, message)) => error(status, message),
    }
}

/// Joins labels to the answer they belong to, updating online accuracy; returns the records
/// to store and the answer (not yet marked stored).
pub(crate) fn record_feedback(
    state: &AppState,
    slot: &Slot,
    request: &FeedbackRequest,
) -> std::result::Result<(Vec<FeedbackRecord>, FeedbackResponse), (StatusCode, String)> {
    let pairs = request.pairs().map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    let routing = slot.routing();
    let classes = &routing.primary.model.predictor.manifest().labels.classes;
    if let Some((_, label)) = pairs.iter().find(|(_, l)| !classes.contains(l)) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("feedback: label {label:?} is not one of model {:?}'s labels ({})", slot.name, classes.join(", ")),
        ));
    }
    let window = state.options.monitor.accuracy_window;
    let time_ms = now_ms();
    let mut s = slot.state();
    let s = &mut *s;
    let Some(answer) = s.answers.get_mut(&request.id) else {
        if state.log.is_none() {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "feedback: no answer with id {:?} is held (the server holds the latest {} answers and logs none)",
                    request.id, state.options.answers_capacity
                ),
            ));
        }
        s.counters.feedback_unjoined += pairs.len() as u64;
        let records = pairs
            .into_iter()
            .map(|(row, label)| FeedbackRecord {
                time_ms,
                model: slot.name.clone(),
                request_id: request.id.clone(),
                row,
                label,
                version: None,
                predicted: None,
                correct: None,
            })
            .collect();
        let response = FeedbackResponse {
            id: request.id.clone(),
            joined: false,
            version: None,
            correct: Vec::new(),
            stored: false,
        };
        return Ok((records, response));
    };
    let rows = answer.labels.len();
    for (row, _) in &pairs {
        let r = *row as usize;
        if r >= rows {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("feedback: row {row} is out of range: request {:?} had {rows} row(s)", request.id),
            ));
        }
        if answer.labeled[r] {
            return Err((
                StatusCode::CONFLICT,
                format!("feedback: row {row} of request {:?} already has a label", request.id),
            ));
        }
    }
    let mut seen = vec![false; rows];
    for (row, _) in &pairs {
        if std::mem::replace(&mut seen[*row as usize], true) {
            return Err((StatusCode::BAD_REQUEST, format!("feedback: row {row} is labeled twice in one request")));
        }
    }
    let version = answer.version.clone();
    let comparing = routing.canary.is_some();
    let mut correct = Vec::with_capacity(pairs.len());
    let mut records = Vec::with_capacity(pairs.len());
    for (row, label) in pairs {
        let r = row as usize;
        answer.labeled[r] = true;
        let predicted = answer.labels[r].clone();
        let right = predicted == label;
        correct.push(right);
        s.online.entry(version.clone()).or_default().add(right, window);
        if comparing && let Some(w) = s.windows.get_mut(&version) {
            w.labeled(right);
        }
        if let Some((shadow_version, shadow_labels)) = &answer.shadow
            && let Some(l) = shadow_labels.get(r)
        {
            s.online.entry(shadow_version.clone()).or_default().add(*l == label, window);
        }
        records.push(FeedbackRecord {
            time_ms,
            model: slot.name.clone(),
            request_id: request.id.clone(),
            row,
            label,
            version: Some(version.clone()),
            predicted: Some(predicted),
            correct: Some(right),
        });
    }
    s.counters.feedback_joined += records.len() as u64;
    if comparing {
        judge_canary(slot, s);
    }
    let response =
        FeedbackResponse { id: request.id.clone(), joined: true, version: Some(version), correct, stored: false };
    Ok((records, response))
}

async fn monitor(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let slot = match state.slot(&name) {
        Ok(s) => Arc::clone(s),
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let config = state.options.monitor.clone();
    match tokio::task::spawn_blocking(move || monitor_report(&slot, &config)).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("monitor: {e}")),
    }
}

/// Checks drift and degradation now, keeping the report for `/metrics`.
pub(crate) fn monitor_report(slot: &Slot, config: &MonitorConfig) -> MonitorReport {
    let routing = slot.routing();
    let primary = routing.primary.version();
    // Copy the window out: requests keep flowing while the drift tests run.
    let (snapshot, online) = {
        let s = slot.state();
        (s.inputs.snapshot(config.min_rows), s.online.get(primary).map(|o| (o.recent_accuracy, o.recent_labeled)))
    };
    let mut report =
        crate::monitor::check(&slot.name, primary, &routing.primary.model.predictor, snapshot, online, config);
    let mut s = slot.state();
    report.triggers = s.trigger.runs.clone();
    s.report = Some(report.clone());
    report
}

/// The background check: drift, degradation and the trigger, for every model, every
/// `interval`, until the server is gone.
fn start_monitor(state: Weak<AppState>, interval: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("kiln-serve monitor".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(state) = state.upgrade() else { return };
                let config = &state.options.monitor;
                for slot in state.models.values() {
                    let report = monitor_report(slot, config);
                    if let Some(trigger) = &config.trigger {
                        let store = state.options.store.as_ref().map(Store::root);
                        let mut s = slot.state();
                        let before = s.trigger.runs.len();
                        crate::monitor::maybe_fire(trigger, &report, &mut s.trigger, store);
                        if s.trigger.runs.len() > before {
                            let run = s.trigger.runs[before].clone();
                            s.events.push(event(
                                "trigger",
                                &report.version,
                                Some(format!("{}: {}", run.cause, run.reason)),
                            ));
                            let runs = s.trigger.runs.clone();
                            if let Some(r) = s.report.as_mut() {
                                r.triggers = runs;
                            }
                        }
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| Error::Server(format!("cannot start the monitor thread: {e}")))
}

/// The deployment, feedback, drift and logging metrics.
fn render_serving_metrics(state: &AppState, out: &mut String) {
    use std::fmt::Write;
    let mut families: BTreeMap<&str, (&str, &str, Vec<String>)> = BTreeMap::new();
    let mut add = |name: &'static str, kind: &'static str, help: &'static str, line: String| {
        families.entry(name).or_insert_with(|| (kind, help, Vec::new())).2.push(line);
    };
    for (name, slot) in &state.models {
        let model = escape(name);
        let routing = slot.routing();
        let s = slot.state();
        if let Some((canary, percent)) = &routing.canary {
            let line =
                format!("kiln_canary_percent{{model=\"{model}\",version=\"{}\"}} {percent}", escape(canary.version()));
            add("kiln_canary_percent", "gauge", "Share of traffic routed to the canary.", line);
        }
        add(
            "kiln_canary_rollbacks_total",
            "counter",
            "Canaries rolled back automatically.",
            format!("kiln_canary_rollbacks_total{{model=\"{model}\"}} {}", s.counters.rollbacks),
        );
        for (version, o) in &s.online {
            let v = escape(version);
            if let Some(a) = o.accuracy {
                let line = format!("kiln_online_accuracy{{model=\"{model}\",version=\"{v}\"}} {a}");
                add("kiln_online_accuracy", "gauge", "Accuracy on labels sent back, per version.", line);
            }
            let line = format!("kiln_online_labels_total{{model=\"{model}\",version=\"{v}\"}} {}", o.labeled);
            add("kiln_online_labels_total", "counter", "Labels joined to answers, per version.", line);
        }
        for (outcome, n) in [("joined", s.counters.feedback_joined), ("unjoined", s.counters.feedback_unjoined)] {
            let line = format!("kiln_feedback_labels_total{{model=\"{model}\",outcome=\"{outcome}\"}} {n}");
            add("kiln_feedback_labels_total", "counter", "Labels received, by whether they joined an answer.", line);
        }
        for (version, (agree, disagree, failed)) in &s.counters.shadow {
            let v = escape(version);
            for (outcome, n) in [("agree", agree), ("disagree", disagree), ("error", failed)] {
                let line =
                    format!("kiln_shadow_rows_total{{model=\"{model}\",version=\"{v}\",outcome=\"{outcome}\"}} {n}");
                add(
                    "kiln_shadow_rows_total",
                    "counter",
                    "Rows the shadow predicted, by agreement with the primary.",
                    line,
                );
            }
        }
        add(
            "kiln_monitor_window_rows",
            "gauge",
            "Rows in the drift window.",
            format!("kiln_monitor_window_rows{{model=\"{model}\"}} {}", s.inputs.len()),
        );
        add(
            "kiln_monitor_triggers_total",
            "counter",
            "Trigger commands run.",
            format!("kiln_monitor_triggers_total{{model=\"{model}\"}} {}", s.trigger.runs.len()),
        );
        if let Some(report) = &s.report {
            if let Some(drift) = &report.drift {
                let line = format!("kiln_drift_share{{model=\"{model}\"}} {}", drift.share_drifted);
                add("kiln_drift_share", "gauge", "Share of features whose live values drifted.", line);
                for c in &drift.columns {
                    let labels =
                        format!("model=\"{model}\",feature=\"{}\",test=\"{}\"", escape(&c.column), c.test.as_str());
                    let line = format!("kiln_drift_statistic{{{labels}}} {}", c.statistic);
                    add("kiln_drift_statistic", "gauge", "Drift statistic per feature (p-value or distance).", line);
                    let line = format!("kiln_drift_feature_drifted{{{labels}}} {}", u8::from(c.drifted));
                    add("kiln_drift_feature_drifted", "gauge", "1 when the feature drifted.", line);
                }
            }
            let line = format!("kiln_drift_detected{{model=\"{model}\"}} {}", u8::from(report.drift_detected));
            add("kiln_drift_detected", "gauge", "1 when the live inputs drifted.", line);
            let line = format!("kiln_model_degraded{{model=\"{model}\"}} {}", u8::from(report.degraded));
            add("kiln_model_degraded", "gauge", "1 when online accuracy fell below the evaluated accuracy.", line);
        }
    }
    if let Some(log) = &state.log {
        let c = &log.counts;
        for (outcome, n) in [
            ("written", c.written.load(Ordering::Relaxed)),
            ("dropped", c.dropped.load(Ordering::Relaxed)),
            ("failed", c.failed.load(Ordering::Relaxed)),
        ] {
            let line = format!("kiln_prediction_log_rows_total{{outcome=\"{outcome}\"}} {n}");
            add(
                "kiln_prediction_log_rows_total",
                "counter",
                "Predicted rows for the prediction log, by outcome.",
                line,
            );
        }
    }
    for (name, (kind, help, lines)) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// A server running on its own thread and Tokio runtime, for use from synchronous code.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    control: Control,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// Binds `addr` (use port 0 for any free port) and serves `models` until
    /// [`ServerHandle::shutdown`] or drop.
    pub fn start<D: Into<Deployment>>(addr: &str, models: Vec<D>) -> Result<Self> {
        Self::start_with(addr, models, ServeOptions::default())
    }

    /// [`ServerHandle::start`] with server-wide options.
    pub fn start_with<D: Into<Deployment>>(addr: &str, models: Vec<D>, options: ServeOptions) -> Result<Self> {
        let (app, control) = app(models, options)?;
        let listener =
            std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr: addr.to_string(), source })?;
        listener.set_nonblocking(true).map_err(|source| Error::Bind { addr: addr.to_string(), source })?;
        let local = listener.local_addr().map_err(|source| Error::Bind { addr: addr.to_string(), source })?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kiln-serve".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.await;
                        })
                        .await
                })
            })
            .map_err(|e| Error::Server(format!("cannot start the server thread: {e}")))?;
        tracing::info!(%local, "serving KServe v2");
        Ok(Self { addr: local, control, shutdown: Some(tx), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Promotion, rollback, canary and shadow changes, status and monitoring, in process.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops accepting connections, finishes in-flight requests, writes the prediction log
    /// and joins the server thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let joined = match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(Error::Server(e.to_string())),
            Some(Err(_)) => Err(Error::Server("the server thread panicked".into())),
        };
        self.control.flush_logs();
        joined
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("server shutdown: {e}");
        }
    }
}
