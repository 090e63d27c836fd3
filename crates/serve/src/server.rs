//! The HTTP server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_data::pipeline::InputKind;
use kiln_track::Store;
use kiln_train::{ModelPackage, Predictor};
use serde_json::json;

use crate::batcher::{BatchConfig, Batcher, Outcome};
use crate::inputs::{Signature, parse};
use crate::metrics::Metrics;
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
}

impl LoadedModel {
    /// Loads `reference` (a version number, `latest`, or an alias such as `production`) of
    /// `model` from a store's registry.
    pub fn from_registry(store: &Store, model: &str, reference: &str) -> Result<Self> {
        let version = store.registry().resolve(model, reference)?;
        let predictor = Arc::new(ModelPackage::load(&version.package_dir)?);
        Ok(Self {
            name: model.to_string(),
            version: version.version.to_string(),
            predictor,
            batching: BatchConfig::default(),
        })
    }

    /// Loads a package directory directly, under `name` and `version`.
    pub fn from_dir(name: &str, version: &str, dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            version: version.to_string(),
            predictor: Arc::new(ModelPackage::load(dir)?),
            batching: BatchConfig::default(),
        })
    }

    /// Serves with these batching settings.
    pub fn with_batching(mut self, batching: BatchConfig) -> Self {
        self.batching = batching;
        self
    }
}

/// A model being served: its package, input signature and batching worker.
struct Served {
    model: LoadedModel,
    text: Vec<bool>,
    batcher: Batcher,
}

struct AppState {
    models: BTreeMap<String, Arc<Served>>,
    metrics: Metrics,
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
/// | `GET /metrics` | Prometheus counters and histograms |
/// | `GET /openapi.json` | the OpenAPI document of these routes |
pub fn router(models: Vec<LoadedModel>) -> Result<Router> {
    router_with(models, ServeOptions::default())
}

/// [`router`] with server-wide options.
pub fn router_with(models: Vec<LoadedModel>, options: ServeOptions) -> Result<Router> {
    let mut map = BTreeMap::new();
    for m in models {
        let name = m.name.clone();
        if map.contains_key(&name) {
            return Err(Error::DuplicateModel(name));
        }
        let text = text_features(&m.predictor);
        let batcher = Batcher::start(&name, Arc::clone(&m.predictor), m.batching)
            .map_err(|e| Error::Server(format!("cannot start the worker of model {name:?}: {e}")))?;
        map.insert(name, Arc::new(Served { model: m, text, batcher }));
    }
    let state = Arc::new(AppState { models: map, metrics: Metrics::default() });
    let path = |i: usize| ROUTES[i].1;
    Ok(Router::new()
        .route(path(0), get(server_metadata))
        .route(path(1), get(|| async { Json(json!({"live": true})) }))
        .route(path(2), get(|| async { Json(json!({"ready": true})) }))
        .route(path(3), get(model_metadata))
        .route(path(4), get(model_metadata_versioned))
        .route(path(5), get(model_ready))
        .route(path(6), post(infer))
        .route(path(7), post(infer_versioned))
        .route(path(8), get(metrics))
        .route(path(9), get(|| async { Json(crate::openapi::document()) }))
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(state))
}

/// Server-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self { max_body_bytes: 16 << 20 }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

async fn server_metadata(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "name": "kiln-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
        "models": state.models.keys().collect::<Vec<_>>(),
    }))
}

/// The model `name` (at `version`, if given), or the 404 to answer.
fn find<'a>(state: &'a AppState, name: &str, version: Option<&str>) -> std::result::Result<&'a Arc<Served>, String> {
    let Some(served) = state.models.get(name) else {
        let loaded: Vec<&str> = state.models.keys().map(String::as_str).collect();
        return Err(format!("model {name:?} is not loaded (loaded: {})", loaded.join(", ")));
    };
    match version {
        Some(v) if v != served.model.version => {
            Err(format!("model {name:?} version {v} is not loaded (serving version {})", served.model.version))
        }
        _ => Ok(served),
    }
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
    let served = match find(state, name, version) {
        Ok(m) => m,
        Err(message) => return error(StatusCode::NOT_FOUND, message),
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
        "versions": [served.model.version],
        "platform": format!("kiln/{}", m.kind),
        "inputs": inputs,
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "class", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, m.labels.len()]},
        ],
        "parameters": {
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
    match find(&state, &name, None) {
        Ok(m) => Json(json!({"name": m.model.name, "ready": true})).into_response(),
        Err(message) => error(StatusCode::NOT_FOUND, message),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    run_infer(state, name, None, &headers, body).await
}

async fn infer_versioned(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    run_infer(state, name, Some(version), &headers, body).await
}

/// The header a client sets to bound how long its request may take, in milliseconds.
pub const TIMEOUT_HEADER: &str = "kiln-timeout-ms";

async fn run_infer(
    state: Arc<AppState>,
    name: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let served = match find(&state, &name, version.as_deref()) {
        Ok(m) => Arc::clone(m),
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let _in_flight = state.metrics.in_flight(&name);
    let (response, rows) = answer(&served, &state.metrics, headers, &body, started).await;
    state.metrics.record(&name, &served.model.version, response.status().as_u16(), rows, started.elapsed());
    response
}

async fn answer(
    served: &Served,
    metrics: &Metrics,
    headers: &HeaderMap,
    body: &[u8],
    started: Instant,
) -> (Response, usize) {
    let bad = |message: String| (error(StatusCode::BAD_REQUEST, message), 0);
    let request: InferRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid inference request: {e}")),
    };
    let signature = Signature { features: &served.model.predictor.manifest().features, text: &served.text };
    let input = match parse(&request, &signature) {
        Ok(input) => input,
        Err(message) => return bad(message),
    };
    let timeout = match headers.get(TIMEOUT_HEADER).map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok())) {
        None => served.model.batching.default_timeout,
        Some(Some(ms)) => Duration::from_millis(ms),
        Some(None) => return bad(format!("header {TIMEOUT_HEADER}: expected milliseconds as a whole number")),
    };
    let rows = input.rows();
    let deadline = started + timeout;
    let Ok(outcome) = served.batcher.submit(input, deadline) else {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model {:?} is overloaded: its queue is full; retry shortly", served.model.name),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return (response, 0);
    };
    let outcome = match tokio::time::timeout_at(deadline.into(), outcome).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => return (error(StatusCode::INTERNAL_SERVER_ERROR, "the model's worker stopped"), 0),
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
                model_version: served.model.version.clone(),
                id: request.id,
                outputs: vec![
                    tensor("label", vec![n as i64], "BYTES", json!(labels)),
                    tensor("class", vec![n as i64], "INT64", json!(class)),
                    tensor("probabilities", vec![n as i64, classes as i64], "FP32", json!(probs)),
                ],
            };
            (Json(body).into_response(), rows)
        }
        Outcome::Invalid(message) => bad(message),
        Outcome::Expired => (
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("deadline of {} ms passed before the model answered", timeout.as_millis()),
            ),
            0,
        ),
        Outcome::Failed(message) => (error(StatusCode::INTERNAL_SERVER_ERROR, message), 0),
    }
}

/// A server running on its own thread and Tokio runtime, for use from synchronous code.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// Binds `addr` (use port 0 for any free port) and serves `models` until
    /// [`ServerHandle::shutdown`] or drop.
    pub fn start(addr: &str, models: Vec<LoadedModel>) -> Result<Self> {
        Self::start_with(addr, models, ServeOptions::default())
    }

    /// [`ServerHandle::start`] with server-wide options.
    pub fn start_with(addr: &str, models: Vec<LoadedModel>, options: ServeOptions) -> Result<Self> {
        let app = router_with(models, options)?;
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
        Ok(Self { addr: local, shutdown: Some(tx), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, finishes in-flight requests, and joins the server thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(Error::Server(e.to_string())),
            Some(Err(_)) => Err(Error::Server("the server thread panicked".into())),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("server shutdown: {e}");
        }
    }
}
