//! The web UI: a single page (HTML, JavaScript and CSS embedded in the binary; nothing is
//! fetched from the network) and the table queries behind it.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/`, `/ui/app.js`, `/ui/app.css` | the page |
//! | GET | `/api/ui/runs?experiment=&status=&q=&sort=&order=&offset=&limit=&params=&metrics=` | the runs table, filtered, sorted and paginated on the server |
//! | GET | `/api/ui/compare?runs=a,b` or `?parent=` or `?experiment=` | runs side by side (params, final metrics) for overlaid curves and parallel coordinates |
//! | GET | `/api/ui/serving/{model}` | the prediction log and feedback of a served model: volume, latency, online accuracy by version and by hour |
//!
//! The runs table keeps a summary of every run in memory and re-reads a run only when its
//! `status.json`, `tags.json` or `params.json` changed, or while it runs: with 10,000 runs a
//! page costs a directory listing and a few `stat` calls per run.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, blocking, json, lock};
use crate::api::Value64;
use crate::run::{final_values, read_raw_points, read_record};
use crate::{Result, RunStatus, Store};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The largest page of the runs table.
const MAX_ROWS: usize = 500;
/// Runs in one compare request.
const MAX_COMPARE: usize = 2000;

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(super) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub(super) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// What the table knows about a run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Row {
    run_id: String,
    experiment: String,
    name: String,
    parent_run_id: Option<String>,
    status: RunStatus,
    start_ms: i64,
    end_ms: Option<i64>,
    duration_s: Option<f64>,
    tags: BTreeMap<String, String>,
    params: BTreeMap<String, serde_json::Value>,
    metrics: BTreeMap<String, Value64>,
}

/// A cached row and the modification times it was read at.
#[derive(Debug, Clone)]
pub(super) struct Cached {
    stamp: [Option<SystemTime>; 3],
    /// Whether `status.json` records an end (a run recorded as running is read again each
    /// time: its metrics grow, and its writer may have died).
    settled: bool,
    row: Row,
}

/// Rows by run id.
pub(super) type Index = HashMap<String, Cached>;

fn stamp(store: &Store, id: &str) -> [Option<SystemTime>; 3] {
    let dir = store.run_dir(id);
    ["status.json", "tags.json", "params.json"].map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
}

fn read_row(store: &Store, id: &str) -> Result<(bool, Row)> {
    let dir = store.run_dir(id);
    let mut record = read_record(&dir)?;
    record.final_metrics = final_values(&read_raw_points(&dir)?);
    Ok((
        record.state.status.is_terminal(),
        Row {
            run_id: record.meta.run_id.clone(),
            experiment: record.meta.experiment.clone(),
            name: record.meta.name.clone(),
            parent_run_id: record.meta.parent_run_id.clone(),
            status: record.status(),
            start_ms: record.meta.start_ms,
            end_ms: record.state.end_ms,
            duration_s: record.state.end_ms.map(|e| (e - record.meta.start_ms) as f64 / 1000.0),
            tags: record.tags,
            params: record.params,
            metrics: record.final_metrics.into_iter().map(|(k, v)| (k, Value64(v))).collect(),
        },
    ))
}

/// Every run's row, newest first, re-reading only what changed. The cache's lock is not held
/// while files are read, so one slow request does not hold up the others.
fn rows(state: &AppState) -> Result<Vec<Row>> {
    let ids = state.store.run_ids()?;
    let stamped: Vec<(&String, [Option<SystemTime>; 3])> =
        ids.iter().rev().map(|id| (id, stamp(&state.store, id))).collect();
    let stale: Vec<usize> = {
        let index = lock(&state.ui_index);
        (0..stamped.len())
            .filter(|&i| {
                let (id, now) = &stamped[i];
                !index.get(*id).is_some_and(|c| c.stamp == *now && c.settled)
            })
            .collect()
    };
    let mut read = Vec::with_capacity(stale.len());
    let mut gone = Vec::new();
    for i in stale {
        let (id, now) = &stamped[i];
        match read_row(&state.store, id) {
            Ok((settled, row)) => read.push(((*id).clone(), Cached { stamp: *now, settled, row })),
            // A run being created or removed right now: leave it out this time.
            Err(crate::Error::NotFound(_)) => gone.push(*id),
            Err(crate::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => gone.push(*id),
            Err(e) => return Err(e),
        }
    }
    let mut index = lock(&state.ui_index);
    index.retain(|id, _| ids.binary_search(id).is_ok());
    for id in gone {
        index.remove(id);
    }
    index.extend(read);
    Ok(stamped.iter().filter_map(|(id, _)| index.get(*id).map(|c| c.row.clone())).collect())
}

#[derive(Debug, Deserialize)]
pub(super) struct RunsQuery {
    experiment: Option<String>,
    status: Option<RunStatus>,
    parent: Option<String>,
    /// Text to find in the id, name, experiment or tags; or `KEY OP VALUE` on a metric or
    /// param (`val_loss < 0.3`, `optimizer = adam`).
    q: Option<String>,
    /// `start` (default), `name`, `status`, `duration`, `metric:KEY` or `param:KEY`.
    sort: Option<String>,
    /// `desc` (default) or `asc`.
    order: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    /// Comma-separated param columns (default: up to 4 that vary).
    params: Option<String>,
    /// Comma-separated metric columns (default: up to 6).
    metrics: Option<String>,
}

/// A page of the runs table.
#[derive(Debug, Serialize)]
pub(super) struct RunsTable {
    total: usize,
    offset: usize,
    limit: usize,
    experiments: Vec<String>,
    param_keys: Vec<String>,
    metric_keys: Vec<String>,
    params: Vec<String>,
    metrics: Vec<String>,
    rows: Vec<Row>,
}

enum Filter {
    Text(String),
    Compare { key: String, op: &'static str, value: String },
}

fn parse_filter(q: &str) -> Filter {
    for op in ["<=", ">=", "!=", "=", "<", ">"] {
        if let Some((k, v)) = q.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            if !k.is_empty() && !v.is_empty() && !k.contains(' ') {
                return Filter::Compare { key: k.to_string(), op, value: v.to_string() };
            }
        }
    }
    Filter::Text(q.to_lowercase())
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn keep(row: &Row, filter: &Filter) -> bool {
    match filter {
        Filter::Text(t) => {
            row.run_id.contains(t.as_str())
                || row.name.to_lowercase().contains(t.as_str())
                || row.experiment.to_lowercase().contains(t.as_str())
                || row.tags.values().any(|v| v.to_lowercase().contains(t.as_str()))
        }
        Filter::Compare { key, op, value } => {
            let (have, number) = match (row.metrics.get(key), row.params.get(key)) {
                (Some(m), _) => (m.0.to_string(), Some(m.0)),
                (None, Some(p)) => (value_text(p), p.as_f64()),
                (None, None) => return *op == "!=",
            };
            let ordering = match (number, value.parse::<f64>()) {
                (Some(a), Ok(b)) => a.partial_cmp(&b),
                _ => Some(have.as_str().cmp(value.as_str())),
            };
            match (*op, ordering) {
                ("=", Some(o)) => o == Ordering::Equal,
                ("!=", o) => o != Some(Ordering::Equal),
                ("<", Some(o)) => o == Ordering::Less,
                ("<=", Some(o)) => o != Ordering::Greater,
                (">", Some(o)) => o == Ordering::Greater,
                (">=", Some(o)) => o != Ordering::Less,
                _ => false,
            }
        }
    }
}

fn list(csv: Option<&str>) -> Option<Vec<String>> {
    csv.map(|c| c.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
}

fn table(state: &AppState, q: RunsQuery) -> ApiResult<RunsTable> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_ROWS {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_ROWS}, got {limit}")));
    }
    let all = rows(state)?;
    let experiments: Vec<String> =
        all.iter().map(|r| r.experiment.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let filter = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(parse_filter);
    let mut matching: Vec<Row> = all
        .into_iter()
        .filter(|r| q.experiment.as_ref().is_none_or(|e| *e == r.experiment))
        .filter(|r| q.status.is_none_or(|s| s == r.status))
        .filter(|r| q.parent.as_ref().is_none_or(|p| Some(p) == r.parent_run_id.as_ref()))
        .filter(|r| filter.as_ref().is_none_or(|f| keep(r, f)))
        .collect();
    // Column choices come from the matching runs.
    let mut param_counts: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut metric_keys: BTreeSet<String> = BTreeSet::new();
    for r in &matching {
        for (k, v) in &r.params {
            param_counts.entry(k).or_default().insert(value_text(v));
        }
        metric_keys.extend(r.metrics.keys().cloned());
    }
    let param_keys: Vec<String> = param_counts.keys().map(|k| k.to_string()).collect();
    let params = list(q.params.as_deref()).unwrap_or_else(|| {
        // Params that vary are the interesting ones.
        param_counts.iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| k.to_string()).take(4).collect()
    });
    let metric_keys: Vec<String> = metric_keys.into_iter().collect();
    let metrics = list(q.metrics.as_deref()).unwrap_or_else(|| metric_keys.iter().take(6).cloned().collect());
    drop(param_counts);

    let descending = q.order.as_deref() != Some("asc");
    let sort = q.sort.as_deref().unwrap_or("start");
    let key_of = |r: &Row| -> Option<SortKey> {
        Some(match sort {
            "start" => SortKey::Number(r.start_ms as f64),
            "name" => SortKey::Text(r.name.clone()),
            "status" => SortKey::Text(r.status.as_str().to_string()),
            "duration" => SortKey::Number(r.duration_s?),
            s if s.starts_with("metric:") => SortKey::Number(r.metrics.get(&s[7..])?.0).finite()?,
            s if s.starts_with("param:") => match r.params.get(&s[6..])? {
                serde_json::Value::Number(n) => SortKey::Number(n.as_f64()?),
                other => SortKey::Text(value_text(other)),
            },
            _ => return None,
        })
    };
    if !matches!(sort, "start" | "name" | "status" | "duration")
        && !sort.starts_with("metric:")
        && !sort.starts_with("param:")
    {
        return Err(ApiError::invalid(format!(
            "sort must be start, name, status, duration, metric:KEY or param:KEY, got {sort:?}"
        )));
    }
    let mut keyed: Vec<(Option<SortKey>, Row)> = matching.drain(..).map(|r| (key_of(&r), r)).collect();
    // Runs without the key go last, whatever the order; ties keep newest first.
    keyed.sort_by(|(a, _), (b, _)| match (a, b) {
        (Some(a), Some(b)) => {
            let o = a.cmp(b);
            if descending { o.reverse() } else { o }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    let total = keyed.len();
    let rows = keyed
        .into_iter()
        .skip(q.offset)
        .take(limit)
        .map(|(_, mut r)| {
            r.params.retain(|k, _| params.contains(k));
            r.metrics.retain(|k, _| metrics.contains(k));
            r
        })
        .collect();
    Ok(RunsTable { total, offset: q.offset, limit, experiments, param_keys, metric_keys, params, metrics, rows })
}

#[derive(Debug, PartialEq, PartialOrd)]
enum SortKey {
    Number(f64),
    Text(String),
}

impl SortKey {
    fn finite(self) -> Option<Self> {
        match self {
            SortKey::Number(n) if !n.is_finite() => None,
            k => Some(k),
        }
    }

    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortKey::Number(a), SortKey::Number(b)) => a.total_cmp(b),
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            (SortKey::Number(_), SortKey::Text(_)) => Ordering::Less,
            (SortKey::Text(_), SortKey::Number(_)) => Ordering::Greater,
        }
    }
}

pub(super) async fn runs(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<RunsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    Ok(json(blocking(move || table(&state, q)).await?))
}

#[derive(Debug, Deserialize)]
pub(super) struct CompareQuery {
    runs: Option<String>,
    parent: Option<String>,
    experiment: Option<String>,
}

/// Runs side by side.
#[derive(Debug, Serialize)]
pub(super) struct Compare {
    runs: Vec<Row>,
    param_keys: Vec<String>,
    metric_keys: Vec<String>,
}

pub(super) async fn compare(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<CompareQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let out = blocking(move || {
        let wanted = list(q.runs.as_deref());
        if wanted.is_none() && q.parent.is_none() && q.experiment.is_none() {
            return Err(ApiError::invalid("give runs=ID,ID,..., parent=ID or experiment=NAME".into()));
        }
        let mut runs: Vec<Row> = rows(&state)?
            .into_iter()
            .filter(|r| wanted.as_ref().is_none_or(|w| w.contains(&r.run_id)))
            .filter(|r| q.parent.as_ref().is_none_or(|p| Some(p) == r.parent_run_id.as_ref()))
            .filter(|r| q.experiment.as_ref().is_none_or(|e| *e == r.experiment))
            .collect();
        if let Some(w) = &wanted
            && let Some(missing) = w.iter().find(|id| !runs.iter().any(|r| &r.run_id == *id))
        {
            return Err(crate::Error::NotFound(format!("run {missing}")).into());
        }
        if runs.len() > MAX_COMPARE {
            return Err(ApiError::invalid(format!("{} runs match; compare at most {MAX_COMPARE}", runs.len())));
        }
        runs.reverse();
        let param_keys =
            runs.iter().flat_map(|r| r.params.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        let metric_keys =
            runs.iter().flat_map(|r| r.metrics.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        Ok(Compare { runs, param_keys, metric_keys })
    })
    .await?;
    Ok(json(out))
}

/// The monitor of one served model.
#[derive(Debug, Serialize)]
pub(super) struct Serving {
    model: String,
    /// Per version and role: predictions, latency, labels that came back, accuracy.
    versions: Vec<VersionStats>,
    /// Per hour: predictions, mean latency, feedback and accuracy.
    hours: Vec<HourStats>,
    /// Predicted labels and how often.
    labels: BTreeMap<String, u64>,
    /// The primary version's latest inputs against its training profile.
    drift: Option<InputDrift>,
}

/// The latest logged inputs of one version, binned like its package's reference profile
/// (`profile.json`: the training data's histograms and top categories).
#[derive(Debug, Serialize)]
struct InputDrift {
    version: String,
    /// Logged rows compared (the latest [`DRIFT_ROWS`] at most).
    rows: usize,
    /// Features, the most drifted first.
    features: Vec<FeatureDrift>,
    /// Why there are no features, when there are none.
    note: Option<String>,
}

/// The rows of the serving log that drift is judged on.
const DRIFT_ROWS: usize = 5000;

/// A feature's reference and current histograms over the same bins.
#[derive(Debug, Serialize)]
struct FeatureDrift {
    feature: String,
    /// `numeric` (the reference's bin edges) or `categorical` (its top categories and `other`).
    kind: &'static str,
    /// Bin labels.
    bins: Vec<String>,
    reference: Vec<u64>,
    current: Vec<u64>,
    /// Current values outside the reference's range, counted in the end bins.
    outside: u64,
    /// Current rows without a usable value.
    missing: u64,
    /// Population stability index over these bins (above 0.25 is commonly read as a major shift).
    psi: f64,
}

/// PSI of two histograms over the same bins, with empty bins floored at 1e-4.
fn psi(reference: &[u64], current: &[u64]) -> f64 {
    let (rt, ct) = (reference.iter().sum::<u64>() as f64, current.iter().sum::<u64>() as f64);
    if rt == 0.0 || ct == 0.0 {
        return f64::NAN;
    }
    reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| {
            let (p, q) = ((r as f64 / rt).max(1e-4), (c as f64 / ct).max(1e-4));
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// One feature's drift from its profile column (as JSON) and the logged values.
fn feature_drift(column: &serde_json::Value, values: &[Option<&serde_json::Value>]) -> Option<FeatureDrift> {
    let feature = column["name"].as_str()?.to_string();
    let mut missing = 0;
    let mut outside = 0;
    if let Some(hist) = column["numeric"]["histogram"].as_object() {
        let edges: Vec<f64> = hist.get("edges")?.as_array()?.iter().filter_map(serde_json::Value::as_f64).collect();
        let reference: Vec<u64> =
            hist.get("counts")?.as_array()?.iter().filter_map(serde_json::Value::as_u64).collect();
        if reference.is_empty() || edges.len() != reference.len() + 1 {
            return None;
        }
        let mut current = vec![0u64; reference.len()];
        for v in values {
            let x = match v {
                Some(serde_json::Value::Number(n)) => n.as_f64(),
                Some(serde_json::Value::String(t)) => t.trim().parse::<f64>().ok(),
                Some(serde_json::Value::Bool(b)) => Some(f64::from(u8::from(*b))),
                _ => None,
            };
            let Some(x) = x.filter(|x| x.is_finite()) else {
                missing += 1;
                continue;
            };
            let last = reference.len() - 1;
            let bin = if x < edges[0] {
                outside += 1;
                0
            } else if x > edges[edges.len() - 1] {
                outside += 1;
                last
            } else {
                edges.partition_point(|e| *e <= x).saturating_sub(1).min(last)
            };
            current[bin] += 1;
        }
        let bins = edges.windows(2).map(|w| format!("{}–{}", short(w[0]), short(w[1]))).collect();
        let psi = psi(&reference, &current);
        return Some(FeatureDrift { feature, kind: "numeric", bins, reference, current, outside, missing, psi });
    }
    let top = column["categorical"]["top"].as_array()?;
    let mut bins: Vec<String> = Vec::new();
    let mut reference: Vec<u64> = Vec::new();
    for pair in top {
        bins.push(pair.get(0)?.as_str()?.to_string());
        reference.push(pair.get(1)?.as_u64()?);
    }
    let other = column["count"].as_u64().unwrap_or(0).saturating_sub(reference.iter().sum());
    bins.push("other".into());
    reference.push(other);
    let mut current = vec![0u64; bins.len()];
    for v in values {
        let text = match v {
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(serde_json::Value::Null) | None => {
                missing += 1;
                continue;
            }
            Some(other) => other.to_string(),
        };
        let at = bins[..bins.len() - 1].iter().position(|b| *b == text).unwrap_or(bins.len() - 1);
        current[at] += 1;
    }
    let psi = psi(&reference, &current);
    Some(FeatureDrift { feature, kind: "categorical", bins, reference, current, outside, missing, psi })
}

/// A bin edge, short.
fn short(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{x:.2e}")
    } else {
        format!("{}", (x * 1000.0).round() / 1000.0)
    }
}

/// Drift of `version`'s latest logged inputs (JSON objects) against its package's profile.
fn input_drift(store: &Store, model: &str, version: &str, inputs: &[&str]) -> InputDrift {
    let mut out = InputDrift { version: version.to_string(), rows: inputs.len(), features: Vec::new(), note: None };
    let profile = version
        .trim_start_matches('v')
        .parse::<u32>()
        .ok()
        .and_then(|v| store.registry().version(model, v).ok())
        .map(|v| v.package_dir.join("profile.json"));
    let Some(path) = profile else {
        out.note = Some(format!("version {version} is not in the registry, so there is no reference profile"));
        return out;
    };
    let profile: serde_json::Value = match std::fs::read(&path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            out.note = Some(format!("{}: not a profile: {e}", path.display()));
            return out;
        }
        Err(_) => {
            out.note = Some(format!("the package of version {version} has no reference profile (profile.json)"));
            return out;
        }
    };
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = inputs
        .iter()
        .filter_map(|t| match serde_json::from_str(t) {
            Ok(serde_json::Value::Object(o)) => Some(o),
            _ => None,
        })
        .collect();
    let unreadable = inputs.len() - rows.len();
    for column in profile["columns"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = column["name"].as_str() else { continue };
        if !rows.iter().any(|r| r.contains_key(name)) {
            continue; // the label, or a column the model does not take
        }
        let values: Vec<Option<&serde_json::Value>> = rows.iter().map(|r| r.get(name)).collect();
        if let Some(f) = feature_drift(column, &values) {
            out.features.push(f);
        }
    }
    out.features.sort_by(|a, b| b.psi.total_cmp(&a.psi).then_with(|| a.feature.cmp(&b.feature)));
    if out.features.is_empty() {
        out.note = Some("the logged inputs name none of the profile's columns".into());
    }
    if unreadable > 0 {
        let n = format!("{unreadable} logged row(s) had inputs that are not a JSON object; left out");
        out.note = Some(out.note.map_or(n.clone(), |o| format!("{o}; {n}")));
    }
    out
}

#[derive(Debug, Default, Serialize)]
struct VersionStats {
    version: String,
    role: String,
    predictions: u64,
    mean_latency_ms: f64,
    p99_latency_ms: f64,
    feedback: u64,
    correct: u64,
    accuracy: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct HourStats {
    hour_ms: i64,
    predictions: u64,
    mean_latency_ms: f64,
    feedback: u64,
    accuracy: Option<f64>,
}

fn serving(store: &Store, model: &str) -> ApiResult<Serving> {
    use polars::prelude::*;
    let lazy: HashMap<&str, LazyFrame> = store.serving_frames(model)?;
    let mut versions: BTreeMap<(String, String), (VersionStats, Vec<u64>)> = BTreeMap::new();
    let mut hours: BTreeMap<i64, (HourStats, u64, u64)> = BTreeMap::new();
    let mut labels: BTreeMap<String, u64> = BTreeMap::new();
    let mut drift = None;
    let bad = |e: PolarsError| crate::Error::Sql(format!("reading the serving log of model {model:?}: {e}"));
    if let Some(frame) = lazy.get("predictions") {
        let df = frame
            .clone()
            .select([col("time"), col("version"), col("role"), col("label"), col("latency_us"), col("inputs")])
            .collect()
            .map_err(bad)?;
        let inputs = df.column("inputs").map_err(bad)?.str().map_err(bad)?;
        let time = df.column("time").and_then(|c| c.cast(&DataType::Int64)).map_err(bad)?;
        let time = time.i64().map_err(bad)?;
        let version = df.column("version").map_err(bad)?.str().map_err(bad)?;
        let role = df.column("role").map_err(bad)?.str().map_err(bad)?;
        let label = df.column("label").map_err(bad)?.str().map_err(bad)?;
        let latency = df.column("latency_us").and_then(|c| c.cast(&DataType::UInt64)).map_err(bad)?;
        let latency = latency.u64().map_err(bad)?;
        // The primary's latest rows, for drift.
        let mut primary: Vec<(i64, usize)> = Vec::new();
        for i in 0..df.height() {
            let key = (version.get(i).unwrap_or("").to_string(), role.get(i).unwrap_or("").to_string());
            let shadow = key.1 == "shadow";
            if key.1 == "primary" {
                primary.push((time.get(i).unwrap_or(i64::MIN), i));
            }
            let e = versions.entry(key.clone()).or_default();
            e.0.version = key.0;
            e.0.role = key.1;
            e.0.predictions += 1;
            let us = latency.get(i).unwrap_or(0);
            e.1.push(us);
            // A shadow answers a copy of the traffic: per version above, not in the totals.
            if shadow {
                continue;
            }
            if let Some(t) = time.get(i) {
                let h = hours.entry(t.div_euclid(3_600_000) * 3_600_000).or_default();
                h.0.predictions += 1;
                h.1 += us;
            }
            *labels.entry(label.get(i).unwrap_or("").to_string()).or_default() += 1;
        }
        primary.sort_unstable();
        if let Some(&(_, newest)) = primary.last() {
            let v = version.get(newest).unwrap_or("");
            let rows: Vec<&str> = primary
                .iter()
                .rev()
                .filter(|(_, i)| version.get(*i) == Some(v))
                .take(DRIFT_ROWS)
                .map(|(_, i)| inputs.get(*i).unwrap_or(""))
                .collect();
            drift = Some(input_drift(store, model, v, &rows));
        }
    }
    if let Some(frame) = lazy.get("feedback") {
        let df = frame.clone().select([col("time"), col("version"), col("correct")]).collect().map_err(bad)?;
        let time = df.column("time").and_then(|c| c.cast(&DataType::Int64)).map_err(bad)?;
        let time = time.i64().map_err(bad)?;
        let version = df.column("version").map_err(bad)?.str().map_err(bad)?;
        let correct = df.column("correct").map_err(bad)?.bool().map_err(bad)?;
        for i in 0..df.height() {
            let Some(ok) = correct.get(i) else { continue };
            let v = version.get(i).unwrap_or("").to_string();
            let key = versions
                .keys()
                .find(|(ver, role)| *ver == v && role == "primary")
                .cloned()
                .or_else(|| versions.keys().find(|(ver, _)| *ver == v).cloned())
                .unwrap_or((v.clone(), "primary".into()));
            let e = versions.entry(key.clone()).or_default();
            e.0.version = key.0;
            e.0.role = key.1;
            e.0.feedback += 1;
            e.0.correct += u64::from(ok);
            if let Some(t) = time.get(i) {
                let h = hours.entry(t.div_euclid(3_600_000) * 3_600_000).or_default();
                h.0.feedback += 1;
                h.2 += u64::from(ok);
            }
        }
    }
    let versions = versions
        .into_values()
        .map(|(mut s, mut lat)| {
            lat.sort_unstable();
            if !lat.is_empty() {
                s.mean_latency_ms = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
                s.p99_latency_ms =
                    lat[((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1] as f64 / 1000.0;
            }
            s.accuracy = (s.feedback > 0).then(|| s.correct as f64 / s.feedback as f64);
            s
        })
        .collect();
    let hours = hours
        .into_iter()
        .map(|(hour_ms, (mut h, latency, correct))| {
            h.hour_ms = hour_ms;
            if h.predictions > 0 {
                h.mean_latency_ms = latency as f64 / h.predictions as f64 / 1000.0;
            }
            h.accuracy = (h.feedback > 0).then(|| correct as f64 / h.feedback as f64);
            h
        })
        .collect();
    Ok(Serving { model: model.to_string(), versions, hours, labels, drift })
}

pub(super) async fn serving_monitor(
    State(state): State<Arc<AppState>>,
    model: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(model) = model?;
    Ok(json(blocking(move || serving(&state.store, &model)).await?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{feature_drift, psi};

    #[test]
    fn psi_is_zero_for_the_same_shape_and_grows_with_a_shift() {
        assert!(psi(&[10, 20, 30], &[1, 2, 3]).abs() < 1e-12);
        // Half the mass moved from the first bin to the last; empty bins count as 1e-4.
        let shifted = psi(&[50, 50, 0], &[0, 50, 50]);
        let by_hand = (1e-4 - 0.5) * (1e-4f64 / 0.5).ln() + (0.5 - 1e-4) * (0.5 / 1e-4f64).ln();
        assert!((shifted - by_hand).abs() < 1e-12, "{shifted} vs {by_hand}");
        assert!(psi(&[0, 0], &[1, 1]).is_nan());
    }

    #[test]
    fn numeric_values_fall_in_the_reference_bins_and_out_of_range_ones_are_counted() {
        let column = json!({"name": "x", "count": 4, "missing": 0,
            "numeric": {"histogram": {"edges": [0.0, 1.0, 2.0], "counts": [2, 2]}}, "categorical": null});
        let values =
            [json!(0.5), json!(1.0), json!(2.0), json!(-3.0), json!(9.0), json!("1.5"), json!(null), json!("x")];
        let refs: Vec<Option<&serde_json::Value>> = values.iter().map(Some).chain([None]).collect();
        let d = feature_drift(&column, &refs).unwrap();
        assert_eq!(d.kind, "numeric");
        // 0.5 and -3 (below) in the first bin; 1.0, 2.0 (closed last edge), 9 (above), "1.5" in the second.
        assert_eq!(d.current, vec![2, 4]);
        assert_eq!((d.outside, d.missing), (2, 3));
        assert_eq!(d.bins, vec!["0–1", "1–2"]);
    }

    #[test]
    fn categories_outside_the_reference_top_count_as_other() {
        let column = json!({"name": "island", "count": 10, "missing": 0, "numeric": null,
            "categorical": {"unique": 3, "top": [["Biscoe", 6], ["Dream", 3]]}});
        let values = [json!("Biscoe"), json!("Torgersen"), json!("Mars"), json!(null)];
        let refs: Vec<Option<&serde_json::Value>> = values.iter().map(Some).collect();
        let d = feature_drift(&column, &refs).unwrap();
        assert_eq!(d.bins, vec!["Biscoe", "Dream", "other"]);
        assert_eq!(d.reference, vec![6, 3, 1]);
        assert_eq!(d.current, vec![1, 0, 2]);
        assert_eq!(d.missing, 1);
    }
}
