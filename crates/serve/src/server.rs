//! The HTTP server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_track::Store;
use kiln_train::{ModelPackage, Predictor};
use ndarray::Array2;
use serde_json::json;

use crate::metrics::Metrics;
use crate::protocol::{ErrorBody, InferRequest, InferResponse, InferTensor, flatten_numbers};
use crate::{Error, Result};

/// A model ready to serve under a name and version.
#[derive(Debug)]
pub struct LoadedModel {
    /// The name clients use in URLs.
    pub name: String,
    /// The version reported in responses (the registry version number).
    pub version: String,
    /// The loaded package.
    pub predictor: Predictor,
}

impl LoadedModel {
    /// Loads `reference` (a version number, `latest`, or an alias such as `production`) of
    /// `model` from a store's registry.
    pub fn from_registry(store: &Store, model: &str, reference: &str) -> Result<Self> {
        let version = store.registry().resolve(model, reference)?;
        let predictor = ModelPackage::load(&version.package_dir)?;
        Ok(Self { name: model.to_string(), version: version.version.to_string(), predictor })
    }

    /// Loads a package directory directly, under `name` and `version`.
    pub fn from_dir(name: &str, version: &str, dir: &std::path::Path) -> Result<Self> {
        Ok(Self { name: name.to_string(), version: version.to_string(), predictor: ModelPackage::load(dir)? })
    }
}

struct AppState {
    models: BTreeMap<String, Arc<LoadedModel>>,
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
/// | `GET /metrics` | Prometheus counters |
pub fn router(models: Vec<LoadedModel>) -> Result<Router> {
    let mut map = BTreeMap::new();
    for m in models {
        let name = m.name.clone();
        if map.insert(name.clone(), Arc::new(m)).is_some() {
            return Err(Error::DuplicateModel(name));
        }
    }
    let state = Arc::new(AppState { models: map, metrics: Metrics::default() });
    Ok(Router::new()
        .route("/v2/health/live", get(|| async { Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(|| async { Json(json!({"ready": true})) }))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_versioned))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_versioned))
        .route("/metrics", get(metrics))
        .with_state(state))
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
fn find<'a>(
    state: &'a AppState,
    name: &str,
    version: Option<&str>,
) -> std::result::Result<&'a Arc<LoadedModel>, String> {
    let Some(model) = state.models.get(name) else {
        let loaded: Vec<&str> = state.models.keys().map(String::as_str).collect();
        return Err(format!("model {name:?} is not loaded (loaded: {})", loaded.join(", ")));
    };
    match version {
        Some(v) if v != model.version => {
            Err(format!("model {name:?} version {v} is not loaded (serving version {})", model.version))
        }
        _ => Ok(model),
    }
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
    let model = match find(state, name, version) {
        Ok(m) => m,
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let m = model.predictor.manifest();
    Json(json!({
        "name": model.name,
        "versions": [model.version],
        "platform": format!("kiln/{}", m.kind),
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, m.features.len()]}],
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
        },
    }))
    .into_response()
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match find(&state, &name, None) {
        Ok(m) => Json(json!({"name": m.name, "ready": true})).into_response(),
        Err(message) => error(StatusCode::NOT_FOUND, message),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn infer(State(state): State<Arc<AppState>>, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    run_infer(state, name, None, body).await
}

async fn infer_versioned(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    run_infer(state, name, Some(version), body).await
}

async fn run_infer(state: Arc<AppState>, name: String, version: Option<String>, body: axum::body::Bytes) -> Response {
    let started = Instant::now();
    let model = match find(&state, &name, version.as_deref()) {
        Ok(m) => Arc::clone(m),
        Err(message) => return error(StatusCode::NOT_FOUND, message),
    };
    let request: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.record(&name, 400, 0, started.elapsed());
            return error(StatusCode::BAD_REQUEST, format!("invalid inference request: {e}"));
        }
    };
    let rows = match request_rows(&request, &model.predictor.manifest().features) {
        Ok(r) => r,
        Err(message) => {
            state.metrics.record(&name, 400, 0, started.elapsed());
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let n = rows.nrows();
    let worker = Arc::clone(&model);
    let result = tokio::task::spawn_blocking(move || worker.predictor.predict(rows.view())).await;
    let response = match result {
        Ok(Ok(predictions)) => {
            let classes = model.predictor.manifest().labels.len();
            let labels: Vec<&str> = predictions.iter().map(|p| p.label.as_str()).collect();
            let class: Vec<i64> = predictions.iter().map(|p| p.class as i64).collect();
            let probs: Vec<f32> = predictions.iter().flat_map(|p| p.probabilities.iter().copied()).collect();
            let body = InferResponse {
                model_name: model.name.clone(),
                model_version: model.version.clone(),
                id: request.id,
                outputs: vec![
                    InferTensor {
                        name: "label".into(),
                        shape: vec![n as i64],
                        datatype: "BYTES".into(),
                        data: json!(labels),
                    },
                    InferTensor {
                        name: "class".into(),
                        shape: vec![n as i64],
                        datatype: "INT64".into(),
                        data: json!(class),
                    },
                    InferTensor {
                        name: "probabilities".into(),
                        shape: vec![n as i64, classes as i64],
                        datatype: "FP32".into(),
                        data: json!(probs),
                    },
                ],
            };
            Json(body).into_response()
        }
        Ok(Err(e @ (kiln_train::Error::Input { .. } | kiln_train::Error::Shape(_)))) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("inference task failed: {e}")),
    };
    state.metrics.record(&name, response.status().as_u16(), n, started.elapsed());
    response
}

/// Turns the request's tensors into a `rows × features` matrix: either one tensor of shape
/// `[rows, features]`, or one `[rows]` (or `[rows, 1]`) tensor per feature, named after it.
fn request_rows(request: &InferRequest, features: &[String]) -> std::result::Result<Array2<f64>, String> {
    const NUMERIC: [&str; 10] =
        ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32"];
    let decode = |t: &InferTensor| -> std::result::Result<Vec<f64>, String> {
        if !NUMERIC.contains(&t.datatype.as_str()) {
            return Err(format!(
                "input `{}`: datatype {} is not numeric (use FP32, FP64 or an INT type)",
                t.name, t.datatype
            ));
        }
        if t.shape.iter().any(|d| *d < 0) {
            return Err(format!("input `{}`: shape {:?} has a negative dimension", t.name, t.shape));
        }
        let mut values = Vec::new();
        flatten_numbers(&t.data, &mut values).map_err(|e| format!("input `{}`: {e}", t.name))?;
        let Some(expected) = t.shape.iter().try_fold(1i64, |n, d| n.checked_mul(*d)) else {
            return Err(format!("input `{}`: shape {:?} is too large", t.name, t.shape));
        };
        if values.len() as i64 != expected {
            return Err(format!(
                "input `{}`: shape {:?} needs {expected} values, got {}",
                t.name,
                t.shape,
                values.len()
            ));
        }
        Ok(values)
    };
    match request.inputs.as_slice() {
        [] => Err("the request has no inputs".into()),
        [t] if !(features.len() == 1 && t.name == features[0]) => {
            let values = decode(t)?;
            let (rows, cols) = match t.shape.as_slice() {
                [r, c] => (*r as usize, *c as usize),
                [c] => (1, *c as usize),
                other => {
                    return Err(format!(
                        "input `{}`: expected shape [rows, {}], got {other:?}",
                        t.name,
                        features.len()
                    ));
                }
            };
            if cols != features.len() {
                return Err(format!(
                    "input `{}`: the model takes {} features per row, the shape says {cols}",
                    t.name,
                    features.len()
                ));
            }
            Array2::from_shape_vec((rows, cols), values).map_err(|e| e.to_string())
        }
        tensors => {
            let mut columns: Vec<Option<Vec<f64>>> = vec![None; features.len()];
            for t in tensors {
                let j = features
                    .iter()
                    .position(|f| *f == t.name)
                    .ok_or_else(|| format!("input `{}` is not a feature of this model (expected one [rows, {}] tensor or one tensor per feature)", t.name, features.len()))?;
                columns[j] = Some(decode(t)?);
            }
            let missing: Vec<&str> =
                features.iter().zip(&columns).filter(|(_, c)| c.is_none()).map(|(f, _)| f.as_str()).collect();
            if !missing.is_empty() {
                return Err(format!("missing inputs for features: {}", missing.join(", ")));
            }
            let columns: Vec<Vec<f64>> = columns.into_iter().flatten().collect();
            let rows = columns[0].len();
            if let Some((f, c)) = features.iter().zip(&columns).find(|(_, c)| c.len() != rows) {
                return Err(format!("input `{f}` has {} rows, `{}` has {rows}", c.len(), features[0]));
            }
            Ok(Array2::from_shape_fn((rows, features.len()), |(i, j)| columns[j][i]))
        }
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
        let app = router(models)?;
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
