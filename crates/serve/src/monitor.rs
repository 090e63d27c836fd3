//! Monitoring: drift of live inputs against the package's reference profile over a sliding
//! window, degradation of online accuracy against the accuracy the package was evaluated
//! at, and a command run when either crosses its threshold (the start of a retraining
//! pipeline).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kiln_data::DriftOptions;
use kiln_data::polars::prelude::{Column, DataFrame};
use kiln_data::{DatasetDrift, polars};
use kiln_train::Predictor;
use serde::{Deserialize, Serialize};

use crate::inputs::{Cell, Input};

/// What is monitored and when the trigger fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
    /// The latest rows kept per model (the sliding window compared with the reference).
    pub window_rows: usize,
    /// Rows the window needs before drift is judged.
    pub min_rows: usize,
    /// Share of features that must drift for the inputs to count as drifted.
    pub drift_share: f64,
    /// How often the background check runs (drift, degradation, trigger).
    #[serde(with = "crate::batcher::millis")]
    pub interval: Duration,
    /// Labels in the recent window before degradation is judged.
    pub min_labeled: usize,
    /// Labels in the recent online-accuracy window.
    pub accuracy_window: usize,
    /// Largest drop of recent online accuracy below the package's evaluated accuracy.
    pub max_accuracy_drop: f64,
    /// What to run when drift or degradation is detected.
    pub trigger: Option<Trigger>,
}

impl Default for MonitorConfig {
    /// A window of 2,000 rows judged from 200, drift when half the features drift, checked
    /// every 5 s; degradation when accuracy over the latest 500 labels (at least 100) falls 5
    /// points below the evaluated accuracy; no trigger.
    fn default() -> Self {
        Self {
            window_rows: 2000,
            min_rows: 200,
            drift_share: 0.5,
            interval: Duration::from_secs(5),
            min_labeled: 100,
            accuracy_window: 500,
            max_accuracy_drop: 0.05,
            trigger: None,
        }
    }
}

impl MonitorConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.window_rows == 0 || self.min_rows == 0 || self.min_rows > self.window_rows {
            return Err(format!(
                "monitor: need 0 < min_rows ({}) <= window_rows ({})",
                self.min_rows, self.window_rows
            ));
        }
        let fraction = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !fraction(self.drift_share) || !fraction(self.max_accuracy_drop) {
            return Err("monitor: drift_share and max_accuracy_drop must be within [0, 1]".into());
        }
        if self.interval.is_zero() || self.accuracy_window == 0 {
            return Err("monitor: interval and accuracy_window must be positive".into());
        }
        if let Some(t) = &self.trigger
            && t.command.is_empty()
        {
            return Err("monitor: the trigger command is empty".into());
        }
        Ok(())
    }
}

/// A command run when monitoring detects a problem. It runs in the server's working
/// directory with the server's environment plus `KILN_MODEL`, `KILN_VERSION`, `KILN_TRIGGER`
/// (`drift` or `degradation`), `KILN_REASON`, `KILN_DRIFT_SHARE`, `KILN_ONLINE_ACCURACY` and,
/// when the server logs to a store, `KILN_STORE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Trigger {
    /// Program and arguments (no shell; use `["sh", "-c", "..."]` for one).
    pub command: Vec<String>,
    /// Least time between two runs for one model.
    #[serde(with = "crate::batcher::millis")]
    pub cooldown: Duration,
    /// Fire on input drift.
    pub on_drift: bool,
    /// Fire on online accuracy degradation.
    pub on_degradation: bool,
}

impl Default for Trigger {
    fn default() -> Self {
        Self { command: Vec::new(), cooldown: Duration::from_secs(3600), on_drift: true, on_degradation: true }
    }
}

/// One trigger run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerRun {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `drift` or `degradation`.
    pub cause: String,
    /// The detail.
    pub reason: String,
    /// The process id, when it started.
    pub pid: Option<u32>,
    /// Why it could not start.
    pub error: Option<String>,
}

/// `GET /v2/models/{name}/monitor`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorReport {
    /// The model.
    pub model: String,
    /// The primary version, whose reference profile the window is compared with.
    pub version: String,
    /// Rows in the window.
    pub window_rows: usize,
    /// Rows seen since the server started.
    pub rows_seen: u64,
    /// When this report was computed (Unix milliseconds).
    pub checked_ms: i64,
    /// Drift of the window against the reference profile (absent below `min_rows` or
    /// without a profile in the package; `note` says which).
    pub drift: Option<DatasetDrift>,
    /// Whether the inputs drifted.
    pub drift_detected: bool,
    /// The accuracy the package was evaluated at (its eval report, else its `test_accuracy`).
    pub reference_accuracy: Option<f64>,
    /// The primary's accuracy over its latest labels.
    pub online_accuracy: Option<f64>,
    /// Labels behind `online_accuracy`.
    pub recent_labeled: usize,
    /// Whether online accuracy fell too far below the reference.
    pub degraded: bool,
    /// Why parts of the report are missing.
    pub notes: Vec<String>,
    /// Trigger runs for this model.
    pub triggers: Vec<TriggerRun>,
}

/// One raw value in the window.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    Text(String),
    Missing,
}

/// The latest input rows of one model.
#[derive(Debug)]
pub(crate) struct InputWindow {
    features: Vec<String>,
    rows: VecDeque<Vec<Value>>,
    capacity: usize,
    pub seen: u64,
}

impl InputWindow {
    pub(crate) fn new(features: Vec<String>, capacity: usize) -> Self {
        Self { features, rows: VecDeque::with_capacity(capacity.min(4096)), capacity: capacity.max(1), seen: 0 }
    }

    pub(crate) fn push(&mut self, input: &Input) {
        for row in 0..input.rows() {
            let values = self
                .features
                .iter()
                .enumerate()
                .map(|(j, name)| match input.cell(row, j, name) {
                    Cell::Number(v) => Value::Number(v),
                    Cell::Text(s) => Value::Text(s.to_string()),
                    Cell::Missing => Value::Missing,
                })
                .collect();
            if self.rows.len() == self.capacity {
                self.rows.pop_front();
            }
            self.rows.push_back(values);
            self.seen += 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The window as a frame: Float64 columns where every value is a number, String
    /// columns otherwise.
    fn frame(&self) -> polars::prelude::PolarsResult<DataFrame> {
        let columns = self
            .features
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let text = self.rows.iter().any(|r| matches!(r[j], Value::Text(_)));
                if text {
                    let values: Vec<Option<String>> = self
                        .rows
                        .iter()
                        .map(|r| match &r[j] {
                            Value::Number(v) => Some(format!("{v}")),
                            Value::Text(s) => Some(s.clone()),
                            Value::Missing => None,
                        })
                        .collect();
                    Column::new(name.as_str().into(), values)
                } else {
                    let values: Vec<Option<f64>> =
                        self.rows.iter().map(|r| if let Value::Number(v) = r[j] { Some(v) } else { None }).collect();
                    Column::new(name.as_str().into(), values)
                }
            })
            .collect();
        DataFrame::new_infer_height(columns)
    }
}

/// The accuracy a package was evaluated at.
pub(crate) fn reference_accuracy(predictor: &Predictor) -> Option<f64> {
    predictor
        .eval()
        .map(|e| e.classification.accuracy)
        .or_else(|| predictor.manifest().metrics.get("test_accuracy").copied())
}

/// What a check needs of the window, taken under the model's lock so that the drift tests
/// run without it.
pub(crate) struct Snapshot {
    rows: usize,
    seen: u64,
    features: Vec<String>,
    /// The window as a frame, once it holds enough rows.
    frame: Option<Result<DataFrame, String>>,
}

impl InputWindow {
    pub(crate) fn snapshot(&self, min_rows: usize) -> Snapshot {
        Snapshot {
            rows: self.len(),
            seen: self.seen,
            features: self.features.clone(),
            frame: (self.len() >= min_rows).then(|| self.frame().map_err(|e| e.to_string())),
        }
    }
}

/// Computes drift and degradation (not the trigger runs, which the caller adds).
pub(crate) fn check(
    model: &str,
    version: &str,
    predictor: &Predictor,
    window: Snapshot,
    online: Option<(Option<f64>, usize)>,
    config: &MonitorConfig,
) -> MonitorReport {
    let mut notes = Vec::new();
    let drift = if let (Some(profile), Some(frame)) = (predictor.profile(), window.frame) {
        let options = DriftOptions {
            columns: Some(window.features.iter().filter(|f| profile.column(f).is_some()).cloned().collect()),
            drift_share: config.drift_share,
            ..DriftOptions::default()
        };
        match frame.and_then(|f| profile.drift(&f, &options).map_err(|e| e.to_string())) {
            Ok(d) => Some(d),
            Err(e) => {
                notes.push(format!("drift could not be computed: {e}"));
                None
            }
        }
    } else if predictor.profile().is_none() {
        notes.push("the package has no reference profile; drift is not monitored".into());
        None
    } else {
        notes.push(format!("drift is judged from {} rows; the window has {}", config.min_rows, window.rows));
        None
    };
    let reference = reference_accuracy(predictor);
    let (online_accuracy, recent_labeled) = online.unwrap_or((None, 0));
    let degraded = match (reference, online_accuracy) {
        (Some(r), Some(a)) if recent_labeled >= config.min_labeled => r - a > config.max_accuracy_drop,
        (None, _) => {
            notes.push("the package records no evaluated accuracy; degradation is not monitored".into());
            false
        }
        _ => {
            notes.push(format!("degradation is judged from {} labels; {recent_labeled} so far", config.min_labeled));
            false
        }
    };
    MonitorReport {
        model: model.to_string(),
        version: version.to_string(),
        window_rows: window.rows,
        rows_seen: window.seen,
        checked_ms: crate::server::now_ms(),
        drift_detected: drift.as_ref().is_some_and(|d| d.drifted),
        drift,
        reference_accuracy: reference,
        online_accuracy,
        recent_labeled,
        degraded,
        notes,
        triggers: Vec::new(),
    }
}

/// Trigger state of one model.
#[derive(Debug, Default)]
pub(crate) struct TriggerState {
    pub last: Option<Instant>,
    pub runs: Vec<TriggerRun>,
}

/// Runs the trigger for `report` if it calls for one and the cooldown allows; the process is
/// reaped on a thread of its own.
pub(crate) fn maybe_fire(
    trigger: &Trigger,
    report: &MonitorReport,
    state: &mut TriggerState,
    store: Option<&std::path::Path>,
) {
    let cause = if trigger.on_drift && report.drift_detected {
        let share = report.drift.as_ref().map_or(0.0, |d| d.share_drifted);
        ("drift", format!("{:.0}% of features drifted", share * 100.0))
    } else if trigger.on_degradation && report.degraded {
        (
            "degradation",
            format!(
                "online accuracy {:.4} over {} labels is below the evaluated {:.4}",
                report.online_accuracy.unwrap_or(f64::NAN),
                report.recent_labeled,
                report.reference_accuracy.unwrap_or(f64::NAN)
            ),
        )
    } else {
        return;
    };
    if state.last.is_some_and(|t| t.elapsed() < trigger.cooldown) {
        return;
    }
    state.last = Some(Instant::now());
    let mut command = std::process::Command::new(&trigger.command[0]);
    command
        .args(&trigger.command[1..])
        .env("KILN_MODEL", &report.model)
        .env("KILN_VERSION", &report.version)
        .env("KILN_TRIGGER", cause.0)
        .env("KILN_REASON", &cause.1)
        .env("KILN_DRIFT_SHARE", report.drift.as_ref().map_or(String::new(), |d| d.share_drifted.to_string()))
        .env("KILN_ONLINE_ACCURACY", report.online_accuracy.map_or(String::new(), |a| a.to_string()))
        .stdin(std::process::Stdio::null());
    if let Some(store) = store {
        command.env("KILN_STORE", store);
    }
    let mut run =
        TriggerRun { at_ms: crate::server::now_ms(), cause: cause.0.into(), reason: cause.1, pid: None, error: None };
    match command.spawn() {
        Ok(mut child) => {
            run.pid = Some(child.id());
            tracing::warn!(model = %report.model, cause = cause.0, reason = %run.reason, pid = child.id(), "monitor trigger started");
            let _ = std::thread::Builder::new().name("kiln-serve trigger".into()).spawn(move || match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::error!("monitor trigger exited with {status}"),
                Err(e) => tracing::error!("monitor trigger: {e}"),
            });
        }
        Err(e) => {
            let error = format!("cannot run {:?}: {e}", trigger.command[0]);
            tracing::error!("monitor trigger: {error}");
            run.error = Some(error);
        }
    }
    state.runs.push(run);
}
