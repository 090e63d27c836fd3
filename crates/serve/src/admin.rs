//! Changing deployments while serving: canary, shadow, promotion and rollback, from the
//! library ([`Control`]) and over HTTP (`/admin/...`, bearer token required).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::deploy::{CanaryPolicy, DeploymentEvent, check_percent};
use crate::feedback::OnlineAccuracy;
use crate::monitor::MonitorReport;
use crate::openapi::ROUTES;
use crate::server::{AppState, Body, LoadedModel, Served, Slot, error, event, monitor_report, unreadable};
use crate::{Error, Result};

/// One version in a [`DeploymentStatus`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatus {
    /// The served version.
    pub version: String,
    /// The registry version it was loaded from.
    pub registry_version: Option<u32>,
    /// Its share of traffic (canary only).
    pub percent: Option<f64>,
}

/// A version's record since the canary started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSummary {
    /// Requests answered.
    pub requests: u64,
    /// Server-side failures.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Labels joined.
    pub labeled: u64,
    /// Online accuracy on them.
    pub accuracy: Option<f64>,
    /// p99 latency of the latest requests, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// What `GET /admin/models/{name}` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentStatus {
    /// The model.
    pub model: String,
    /// The version answering requests not sent to the canary.
    pub primary: VersionStatus,
    /// The canary, if any.
    pub canary: Option<VersionStatus>,
    /// The shadow, if any.
    pub shadow: Option<VersionStatus>,
    /// The primary before the last promotion (what a rollback restores).
    pub previous: Option<VersionStatus>,
    /// How the canary is judged.
    pub policy: CanaryPolicy,
    /// Per version, since the current canary started.
    pub windows: BTreeMap<String, WindowSummary>,
    /// Online accuracy per version since the server started (the shadow's included).
    pub online: BTreeMap<String, OnlineAccuracy>,
    /// Deployment changes, oldest first.
    pub events: Vec<DeploymentEvent>,
}

/// The deployments of a running server, for changing them from the program that runs it.
/// The admin API calls the same methods.
#[derive(Debug, Clone)]
pub struct Control(pub(crate) Arc<AppState>);

fn version_status(s: &Served, percent: Option<f64>) -> VersionStatus {
    VersionStatus { version: s.version().to_string(), registry_version: s.model.registry_version, percent }
}

impl Control {
    fn slot(&self, model: &str) -> Result<&Arc<Slot>> {
        self.0.slot(model).map_err(Error::UnknownModel)
    }

    /// The served model names.
    pub fn models(&self) -> Vec<String> {
        self.0.models.keys().cloned().collect()
    }

    /// Who serves `model` now, and how each version has done.
    pub fn status(&self, model: &str) -> Result<DeploymentStatus> {
        let slot = self.slot(model)?;
        let r = slot.routing();
        let s = slot.state();
        Ok(DeploymentStatus {
            model: slot.name.clone(),
            primary: version_status(&r.primary, None),
            canary: r.canary.as_ref().map(|(c, p)| version_status(c, Some(*p))),
            shadow: r.shadow.as_deref().map(|c| version_status(c, None)),
            previous: r.previous.as_deref().map(|c| version_status(c, None)),
            policy: s.policy.clone(),
            windows: s
                .windows
                .iter()
                .map(|(v, w)| {
                    let summary = WindowSummary {
                        requests: w.requests,
                        errors: w.errors,
                        error_rate: w.error_rate(),
                        labeled: w.labeled,
                        accuracy: w.accuracy(),
                        p99_ms: w.p99_ms(),
                    };
                    (v.clone(), summary)
                })
                .collect(),
            online: s.online.clone(),
            events: s.events.clone(),
        })
    }

    /// Loads `reference` (a version number or alias) of `model` from the server's store, with
    /// the primary's batching settings.
    pub fn load(&self, model: &str, reference: &str) -> Result<LoadedModel> {
        let slot = self.slot(model)?;
        let Some(store) = &self.0.options.store else {
            return Err(Error::InvalidArgument(format!(
                "cannot load {model}@{reference}: the server has no store (ServeOptions::store)"
            )));
        };
        let batching = slot.routing().primary.model.batching;
        Ok(LoadedModel::from_registry(store, model, reference)?.with_batching(batching))
    }

    fn check_name(&self, model: &LoadedModel) -> Result<&Arc<Slot>> {
        let slot = self.slot(&model.name)?;
        let r = slot.routing();
        let (theirs, ours) = (&model.predictor.manifest().features, &r.primary.model.predictor.manifest().features);
        if theirs != ours {
            return Err(Error::InvalidArgument(format!(
                "version {} of model {:?} takes features {theirs:?}, the primary takes {ours:?}",
                model.version, model.name
            )));
        }
        if [Some(&r.primary), r.canary.as_ref().map(|(c, _)| c), r.shadow.as_ref()]
            .into_iter()
            .flatten()
            .any(|s| s.version() == model.version)
        {
            return Err(Error::Conflict(format!(
                "version {} of model {:?} is already served",
                model.version, model.name
            )));
        }
        Ok(slot)
    }

    /// Sends `percent` % of `model.name`'s traffic to `model`, replacing any canary; the
    /// comparison with the primary starts afresh.
    pub fn set_canary(&self, model: LoadedModel, percent: f64) -> Result<()> {
        let percent = check_percent(percent).map_err(Error::InvalidArgument)?;
        let slot = Arc::clone(self.check_name(&model)?);
        let version = model.version.clone();
        let served = Served::start(model)?;
        let mut s = slot.state();
        slot.set_routing(|r| r.canary = Some((served, percent)));
        s.windows.clear();
        s.events.push(event("canary_set", &version, Some(format!("{percent}% of traffic"))));
        Ok(())
    }

    /// Changes the canary's share of traffic.
    pub fn set_canary_percent(&self, name: &str, percent: f64) -> Result<()> {
        let percent = check_percent(percent).map_err(Error::InvalidArgument)?;
        let slot = self.slot(name)?;
        let mut s = slot.state();
        let mut version = None;
        slot.set_routing(|r| {
            if let Some((c, p)) = r.canary.as_mut() {
                *p = percent;
                version = Some(c.version().to_string());
            }
        });
        let version = version.ok_or_else(|| Error::Conflict(format!("model {name:?} has no canary")))?;
        s.events.push(event("canary_percent", &version, Some(format!("{percent}% of traffic"))));
        Ok(())
    }

    /// Stops the canary; returns its version. The registry's `canary` alias is removed if it
    /// pointed at it.
    pub fn remove_canary(&self, name: &str) -> Result<String> {
        let slot = self.slot(name)?;
        let mut s = slot.state();
        let Some((canary, _)) = slot.routing().canary else {
            return Err(Error::Conflict(format!("model {name:?} has no canary")));
        };
        self.drop_alias(name, "canary", canary.model.registry_version, "canary stopped by kiln-serve")?;
        slot.set_routing(|r| r.canary = None);
        s.windows.clear();
        s.events.push(event("rolled_back", canary.version(), Some("canary stopped".into())));
        Ok(canary.version().to_string())
    }

    /// Mirrors `model.name`'s primary requests to `model`, replacing any shadow.
    pub fn set_shadow(&self, model: LoadedModel) -> Result<()> {
        let slot = Arc::clone(self.check_name(&model)?);
        let version = model.version.clone();
        let served = Served::start(model)?;
        let mut s = slot.state();
        slot.set_routing(|r| r.shadow = Some(served));
        s.events.push(event("shadow_set", &version, None));
        Ok(())
    }

    /// Stops the shadow; returns its version.
    pub fn remove_shadow(&self, name: &str) -> Result<String> {
        let slot = self.slot(name)?;
        let mut s = slot.state();
        let Some(shadow) = slot.routing().shadow else {
            return Err(Error::Conflict(format!("model {name:?} has no shadow")));
        };
        slot.set_routing(|r| r.shadow = None);
        s.events.push(event("shadow_removed", shadow.version(), None));
        Ok(shadow.version().to_string())
    }

    /// Makes the canary (else the shadow) the primary; the old primary is kept for
    /// [`Control::rollback`]. With a store, the registry's `production` alias moves to the
    /// promoted version. Returns the new primary's version.
    pub fn promote(&self, name: &str) -> Result<String> {
        let slot = self.slot(name)?;
        let mut s = slot.state();
        let r = slot.routing();
        let Some(candidate) = r.canary.as_ref().map(|(c, _)| c).or(r.shadow.as_ref()).cloned() else {
            return Err(Error::Conflict(format!("model {name:?} has no canary or shadow to promote")));
        };
        if let (Some(store), Some(v)) = (&self.0.options.store, candidate.model.registry_version) {
            store.registry().set_alias_because(name, "production", v, "promoted by kiln-serve")?;
        }
        self.drop_alias(name, "canary", candidate.model.registry_version, "promoted by kiln-serve")?;
        slot.set_routing(|r| {
            let old = std::mem::replace(&mut r.primary, Arc::clone(&candidate));
            r.previous = Some(old);
            if r.canary.as_ref().is_some_and(|(c, _)| Arc::ptr_eq(c, &candidate)) {
                r.canary = None;
            } else {
                r.shadow = None;
            }
        });
        s.windows.clear();
        s.events.push(event("promoted", candidate.version(), None));
        Ok(candidate.version().to_string())
    }

    /// Undoes the last change: stops the canary if there is one, else restores the primary
    /// before the last promotion (moving the registry's `production` alias back). Returns
    /// the version now answering (the primary).
    pub fn rollback(&self, name: &str) -> Result<String> {
        let slot = self.slot(name)?;
        let r = slot.routing();
        if r.canary.is_some() {
            self.remove_canary(name)?;
            return Ok(r.primary.version().to_string());
        }
        let mut s = slot.state();
        let Some(previous) = r.previous.clone() else {
            return Err(Error::Conflict(format!(
                "model {name:?} has no canary and no earlier primary to roll back to"
            )));
        };
        if let (Some(store), Some(v)) = (&self.0.options.store, previous.model.registry_version) {
            store.registry().set_alias_because(name, "production", v, "rolled back by kiln-serve")?;
        }
        slot.set_routing(|r| {
            r.primary = Arc::clone(&previous);
            r.previous = None;
        });
        s.windows.clear();
        s.events.push(event("rolled_back", previous.version(), Some(format!("replaced {}", r.primary.version()))));
        Ok(previous.version().to_string())
    }

    /// Judges the canary by `policy` from now on.
    pub fn set_policy(&self, name: &str, policy: CanaryPolicy) -> Result<()> {
        policy.validate().map_err(Error::InvalidArgument)?;
        self.slot(name)?.state().policy = policy;
        Ok(())
    }

    /// Drift and degradation of `model`, computed now.
    pub fn monitor(&self, name: &str) -> Result<MonitorReport> {
        Ok(monitor_report(self.slot(name)?, &self.0.options.monitor))
    }

    /// Writes every logged prediction queued so far to the store.
    pub fn flush_logs(&self) {
        if let Some(log) = &self.0.log {
            log.flush();
        }
    }

    /// Removes `alias` if it points at `version`.
    fn drop_alias(&self, name: &str, alias: &str, version: Option<u32>, reason: &str) -> Result<()> {
        let (Some(store), Some(v)) = (&self.0.options.store, version) else { return Ok(()) };
        let registry = store.registry();
        if registry.aliases(name)?.get(alias) == Some(&v) {
            registry.remove_alias(name, alias, Some(reason))?;
        }
        Ok(())
    }
}

/// The `/admin` routes.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    let path = |i: usize| ROUTES[i].1;
    Router::new()
        .route(path(12), get(status))
        .route(path(13), post(set_canary).delete(remove_canary))
        .route(path(15), post(set_shadow).delete(remove_shadow))
        .route(path(17), post(promote))
        .route(path(18), post(rollback))
}

/// The body of `POST /admin/models/{name}/canary` and `.../shadow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionRequest {
    /// A registry reference (version number or alias), or the served version name when
    /// `path` is given.
    version: String,
    /// A package directory to load instead of the registry.
    path: Option<std::path::PathBuf>,
    /// The canary's share of traffic.
    percent: Option<f64>,
}

fn unauthorized(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.options.admin_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: the server was started without an admin token",
        ));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut response = error(StatusCode::UNAUTHORIZED, "admin API: missing or wrong bearer token");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reply<T: Serialize>(result: Result<T>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let status = match &e {
                Error::UnknownModel(_) => StatusCode::NOT_FOUND,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                Error::Track(kiln_track::Error::NotFound(_)) => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}

async fn status(State(state): State<Arc<AppState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    reply(Control(state).status(&name))
}

fn parse_version_request(body: Body) -> std::result::Result<VersionRequest, (StatusCode, String)> {
    let body = body.map_err(|r| unreadable(&r))?;
    serde_json::from_slice(&body).map_err(|e| {
        let expected = "expected {\"version\": ..., \"percent\": ..., \"path\": ...}";
        (StatusCode::BAD_REQUEST, format!("{expected}: {e}"))
    })
}

/// Loads the version a request names, off the async runtime.
async fn load(control: &Control, name: &str, request: &VersionRequest) -> Result<LoadedModel> {
    let (control, name, version, path) =
        (control.clone(), name.to_string(), request.version.clone(), request.path.clone());
    tokio::task::spawn_blocking(move || match path {
        Some(dir) => {
            let batching = control.slot(&name)?.routing().primary.model.batching;
            Ok(LoadedModel::from_dir(&name, &version, &dir)?.with_batching(batching))
        }
        None => control.load(&name, &version),
    })
    .await
    .map_err(|e| Error::Server(format!("loading {version}: {e}", version = request.version)))?
}

async fn set_canary(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let request = match parse_version_request(body) {
        Ok(r) => r,
        Err((status, message)) => return error(status, message),
    };
    let Some(percent) = request.percent else {
        return error(StatusCode::BAD_REQUEST, "a canary needs `percent` (0 to 100)");
    };
    let control = Control(state);
    let current = control.slot(&name).ok().and_then(|s| s.routing().canary.map(|(c, _)| c.version().to_string()));
    let result = async {
        // The canary already serving that version: only its share changes.
        if request.path.is_none()
            && let (Some(current), Ok(store)) = (&current, control.store())
            && store.registry().resolve(&name, &request.version)?.version.to_string() == *current
        {
            control.set_canary_percent(&name, percent)?;
            return control.status(&name);
        }
        let model = load(&control, &name, &request).await?;
        control.set_canary(model, percent)?;
        control.status(&name)
    }
    .await;
    reply(result)
}

async fn remove_canary(State(state): State<Arc<AppState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let control = Control(state);
    reply(control.remove_canary(&name).and_then(|_| control.status(&name)))
}

async fn set_shadow(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let request = match parse_version_request(body) {
        Ok(r) => r,
        Err((status, message)) => return error(status, message),
    };
    if request.percent.is_some() {
        return error(StatusCode::BAD_REQUEST, "a shadow takes no `percent`: it sees every primary request");
    }
    let control = Control(state);
    let result = async {
        let model = load(&control, &name, &request).await?;
        control.set_shadow(model)?;
        control.status(&name)
    }
    .await;
    reply(result)
}

async fn remove_shadow(State(state): State<Arc<AppState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let control = Control(state);
    reply(control.remove_shadow(&name).and_then(|_| control.status(&name)))
}

async fn promote(State(state): State<Arc<AppState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let control = Control(state);
    let result = tokio::task::spawn_blocking(move || control.promote(&name).and_then(|_| control.status(&name))).await;
    reply(result.unwrap_or_else(|e| Err(Error::Server(e.to_string()))))
}

async fn rollback(State(state): State<Arc<AppState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let control = Control(state);
    let result = tokio::task::spawn_blocking(move || control.rollback(&name).and_then(|_| control.status(&name))).await;
    reply(result.unwrap_or_else(|e| Err(Error::Server(e.to_string()))))
}

impl Control {
    fn store(&self) -> Result<&kiln_track::Store> {
        self.0.options.store.as_ref().ok_or_else(|| Error::InvalidArgument("the server has no store".into()))
    }
}
