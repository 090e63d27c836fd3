//! The online-data simulator: replays the rows of a data set against a model server at a
//! fixed rate, one request per row, and optionally sends each row's true label back as
//! feedback, as production traffic with delayed ground truth would. Drift comes from the data:
//! generate the stream with [`kiln_data::synthetic_classification`] and an
//! [`kiln_data::InjectedDrift`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_data::polars::prelude::{DataFrame, DataType};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Error, Result};

/// A replay.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateSpec {
    /// The server (`http://127.0.0.1:8080`).
    pub url: String,
    /// The model to call.
    pub model: String,
    /// The feature columns sent, in the model's order.
    pub features: Vec<String>,
    /// Rows per second; 0 sends as fast as the server answers.
    pub rate: f64,
    /// Connections sending.
    pub workers: usize,
    /// The column with the true label, sent back as feedback after each answer.
    pub label_column: Option<String>,
    /// Request ids are `<id_prefix>-<row>`.
    pub id_prefix: String,
}

impl SimulateSpec {
    /// Replays to `model` at `url` as fast as the server answers, on 4 connections, without
    /// feedback.
    pub fn new(url: &str, model: &str, features: Vec<String>) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            features,
            rate: 0.0,
            workers: 4,
            label_column: None,
            id_prefix: "sim".into(),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimulateReport {
    /// Rows sent.
    pub sent: usize,
    /// Inference answers by HTTP status (0: no answer).
    pub statuses: BTreeMap<u16, usize>,
    /// Answers by the version that gave them.
    pub versions: BTreeMap<String, usize>,
    /// Labels sent back, and how many the server joined.
    pub feedback_sent: usize,
    /// See `feedback_sent`.
    pub feedback_joined: usize,
    /// Answers whose label equalled the true label (when a label column is given).
    pub correct: usize,
    /// Wall time.
    pub seconds: f64,
}

/// One row as a request body: one tensor per feature (FP64 for numbers, BYTES for text).
fn bodies(frame: &DataFrame, spec: &SimulateSpec) -> Result<Vec<Vec<Value>>> {
    let mut columns = Vec::with_capacity(spec.features.len());
    for f in &spec.features {
        let column = frame
            .column(f)
            .map_err(|_| Error::InvalidArgument(format!("simulator: the data has no feature column {f:?}")))?;
        let numeric = column.dtype().is_primitive_numeric() || column.dtype() == &DataType::Boolean;
        let values: Vec<Value> = if numeric {
            let cast = column.cast(&DataType::Float64).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let floats = cast.f64().map_err(|e| Error::InvalidArgument(e.to_string()))?;
            floats.iter().map(|v| v.map_or(Value::Null, |v| json!(v))).collect()
        } else {
            let cast = column.cast(&DataType::String).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let text = cast.str().map_err(|e| Error::InvalidArgument(e.to_string()))?;
            text.iter().map(|v| v.map_or(Value::Null, |v| json!(v))).collect()
        };
        columns.push((f, numeric, values));
    }
    Ok((0..frame.height())
        .map(|i| {
            columns
                .iter()
                .map(|(name, numeric, values)| {
                    json!({"name": name, "shape": [1], "datatype": if *numeric { "FP64" } else { "BYTES" }, "data": [values[i]]})
                })
                .collect()
        })
        .collect())
}

/// Replays every row of `frame` as `spec` says; blocks until done.
pub fn simulate(frame: &DataFrame, spec: &SimulateSpec) -> Result<SimulateReport> {
    if !(spec.rate.is_finite() && spec.rate >= 0.0) || spec.workers == 0 {
        return Err(Error::InvalidArgument("simulator: rate must be >= 0 and workers > 0".into()));
    }
    let inputs = bodies(frame, spec)?;
    let truth: Option<Vec<Option<String>>> = match &spec.label_column {
        Some(c) => {
            let column = frame
                .column(c)
                .map_err(|_| Error::InvalidArgument(format!("simulator: the data has no label column {c:?}")))?
                .cast(&DataType::String)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let text = column.str().map_err(|e| Error::InvalidArgument(e.to_string()))?;
            Some(text.iter().map(|v| v.map(str::to_string)).collect())
        }
        None => None,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let next = AtomicUsize::new(0);
    let report = Mutex::new(SimulateReport::default());
    let started = Instant::now();
    let infer_url = format!("{}/v2/models/{}/infer", spec.url, spec.model);
    let feedback_url = format!("{}/v2/models/{}/feedback", spec.url, spec.model);
    std::thread::scope(|scope| {
        for _ in 0..spec.workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= inputs.len() {
                        return;
                    }
                    if spec.rate > 0.0 {
                        let due = started + Duration::from_secs_f64(i as f64 / spec.rate);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let id = format!("{}-{i}", spec.id_prefix);
                    let body = json!({"id": id, "inputs": inputs[i]});
                    let answer = agent
                        .post(&infer_url)
                        .content_type("application/json")
                        .send(body.to_string())
                        .ok()
                        .map(|mut r| (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()));
                    let (status, text) = answer.unwrap_or((0, String::new()));
                    let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let label = parsed["outputs"]
                        .as_array()
                        .and_then(|o| o.iter().find(|t| t["name"] == "label"))
                        .and_then(|t| t["data"][0].as_str())
                        .map(str::to_string);
                    let version = parsed["model_version"].as_str().map(str::to_string);
                    let mut sent_feedback = false;
                    let mut joined = false;
                    let true_label = truth.as_ref().and_then(|t| t[i].clone());
                    if let (200, Some(t)) = (status, &true_label) {
                        sent_feedback = true;
                        let body = json!({"id": id, "label": t}).to_string();
                        if let Ok(mut r) = agent.post(&feedback_url).content_type("application/json").send(body) {
                            let text = r.body_mut().read_to_string().unwrap_or_default();
                            joined = r.status().as_u16() == 200
                                && serde_json::from_str::<Value>(&text).is_ok_and(|v| v["joined"] == true);
                        }
                    }
                    let mut r = report.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    r.sent += 1;
                    *r.statuses.entry(status).or_default() += 1;
                    if let Some(v) = version {
                        *r.versions.entry(v).or_default() += 1;
                    }
                    r.feedback_sent += usize::from(sent_feedback);
                    r.feedback_joined += usize::from(joined);
                    r.correct += usize::from(label.is_some() && label == true_label);
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
