//! Closing the loop: labels sent back for served predictions, joined to the answers they
//! belong to, online accuracy per version, and labeled production data exported for
//! retraining.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use kiln_data::polars;
use kiln_track::Store;
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `POST /v2/models/{name}/feedback`: the true label(s) of an answered request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The request's id, as echoed (or assigned) in its answer.
    pub id: String,
    /// The label of a one-row request, or of row `row` of a larger one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The row that `label` is for (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u32>,
    /// One label per row of the request, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

impl FeedbackRequest {
    /// The (row, label) pairs, checked for shape.
    pub(crate) fn pairs(&self) -> std::result::Result<Vec<(u32, String)>, String> {
        if self.id.is_empty() {
            return Err("feedback: `id` is empty".into());
        }
        match (&self.label, &self.labels) {
            (Some(label), None) => Ok(vec![(self.row.unwrap_or(0), label.clone())]),
            (None, Some(labels)) if self.row.is_none() && !labels.is_empty() => {
                Ok(labels.iter().enumerate().map(|(i, l)| (i as u32, l.clone())).collect())
            }
            (None, Some(_)) if self.row.is_some() => Err("feedback: `row` goes with `label`, not `labels`".into()),
            (None, Some(_)) => Err("feedback: `labels` is empty".into()),
            (Some(_), Some(_)) => Err("feedback: give `label` or `labels`, not both".into()),
            (None, None) => Err("feedback: expected `label` (one row) or `labels` (one per row)".into()),
        }
    }
}

/// What `POST /v2/models/{name}/feedback` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackResponse {
    /// The request id.
    pub id: String,
    /// Whether the labels joined a prediction the server still held.
    pub joined: bool,
    /// The version whose answer they joined.
    pub version: Option<String>,
    /// Per labeled row: whether the prediction was right (empty when not joined).
    pub correct: Vec<bool>,
    /// Whether the labels were written to the store (`feedback` table) before this answer.
    pub stored: bool,
}

/// One answered request, held for joining labels.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub version: String,
    pub labels: Vec<String>,
    /// Rows already labeled.
    pub labeled: Vec<bool>,
    /// A shadow's answer to the same request: (version, labels).
    pub shadow: Option<(String, Vec<String>)>,
}

/// The latest answers by request id, oldest evicted first beyond a capacity.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    by_id: HashMap<String, Answer>,
    order: VecDeque<String>,
    capacity: usize,
    /// Answers evicted before any label came for them.
    pub evicted: u64,
}

impl Answers {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), ..Self::default() }
    }

    pub(crate) fn insert(&mut self, id: String, version: String, labels: Vec<String>) {
        let rows = labels.len();
        let answer = Answer { version, labels, labeled: vec![false; rows], shadow: None };
        if self.by_id.insert(id.clone(), answer).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
                self.evicted += 1;
            }
        }
    }

    pub(crate) fn shadow(&mut self, id: &str, version: String, labels: Vec<String>) {
        if let Some(a) = self.by_id.get_mut(id) {
            a.shadow = Some((version, labels));
        }
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Answer> {
        self.by_id.get_mut(id)
    }
}

/// Online accuracy of one version: all labels since the server started, and the latest ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OnlineAccuracy {
    /// Labels joined.
    pub labeled: u64,
    /// Of which predicted right.
    pub correct: u64,
    /// `correct / labeled`.
    pub accuracy: Option<f64>,
    /// Accuracy over the latest `recent_labeled` labels.
    pub recent_accuracy: Option<f64>,
    /// Labels in the recent window.
    pub recent_labeled: usize,
    #[serde(skip)]
    recent: VecDeque<bool>,
}

impl OnlineAccuracy {
    pub(crate) fn add(&mut self, correct: bool, window: usize) {
        self.labeled += 1;
        self.correct += u64::from(correct);
        self.accuracy = Some(self.correct as f64 / self.labeled as f64);
        if self.recent.len() == window.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back(correct);
        self.recent_labeled = self.recent.len();
        let right = self.recent.iter().filter(|c| **c).count();
        self.recent_accuracy = Some(right as f64 / self.recent.len() as f64);
    }
}

/// Online accuracy by version.
pub(crate) type Online = BTreeMap<String, OnlineAccuracy>;

/// What [`export_labeled`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabeledExport {
    /// The Parquet file.
    pub path: PathBuf,
    /// Rows written (labeled, logged predictions of the primary and canary).
    pub rows: usize,
    /// The file's BLAKE3 digest (kiln-data's dataset version).
    pub digest: String,
    /// Labeled rows with no logged prediction to join (the prediction log is sampled).
    pub unmatched_labels: usize,
}

/// Writes the production rows of `model` that received labels as a dataset for retraining:
/// one column per feature (from the prediction log's `inputs`: numbers as Float64, text as
/// String), the true label as `label_column`, then `request_id`, `row`, `version`,
/// `predicted` and `time_ms`. Shadow answers are left out; a row labeled twice keeps its
/// latest label. The file is written atomically and its digest returned, ready for
/// `Run::log_input`.
pub fn export_labeled(store: &Store, model: &str, label_column: &str, out: &Path) -> Result<LabeledExport> {
    let quoted = model.replace('\'', "''");
    let feedback = store
        .sql(&format!("SELECT request_id, row, label, time FROM feedback WHERE model = '{quoted}' ORDER BY time"))?;
    // (request id, row) -> latest label.
    let mut labels: HashMap<(String, u32), String> = HashMap::new();
    for ((id, row), label) in
        strings(&feedback, "request_id")?.into_iter().zip(rows(&feedback)?).zip(strings(&feedback, "label")?)
    {
        labels.insert((id, row), label);
    }
    let predictions = store.sql(&format!(
        "SELECT request_id, row, version, label, inputs, CAST(time AS BIGINT) AS time_ms FROM predictions
         WHERE model = '{quoted}' AND role <> 'shadow' ORDER BY time"
    ))?;
    let ids = strings(&predictions, "request_id")?;
    let row_index = rows(&predictions)?;
    let versions = strings(&predictions, "version")?;
    let predicted = strings(&predictions, "label")?;
    let inputs = strings(&predictions, "inputs")?;
    let times = column(&predictions, "time_ms")?.i64().map_err(polars_error)?.into_no_null_iter().collect::<Vec<_>>();

    let mut taken: HashSet<(String, u32)> = HashSet::new();
    let mut out_rows: Vec<usize> = Vec::new();
    let mut out_labels: Vec<String> = Vec::new();
    for i in 0..ids.len() {
        let key = (ids[i].clone(), row_index[i]);
        if let Some(label) = labels.get(&key)
            && taken.insert(key)
        {
            out_rows.push(i);
            out_labels.push(label.clone());
        }
    }
    let mut columns = feature_columns(out_rows.iter().map(|i| inputs[*i].as_str()))?;
    if columns.iter().any(|c| c.name().as_str() == label_column) {
        return Err(Error::Server(format!("labeled export: label column {label_column:?} is also a feature")));
    }
    let pick = |v: &[String]| out_rows.iter().map(|i| v[*i].clone()).collect::<Vec<_>>();
    columns.push(Column::new(label_column.into(), out_labels));
    columns.push(Column::new("request_id".into(), pick(&ids)));
    columns.push(Column::new("row".into(), out_rows.iter().map(|i| row_index[*i]).collect::<Vec<_>>()));
    columns.push(Column::new("version".into(), pick(&versions)));
    columns.push(Column::new("predicted".into(), pick(&predicted)));
    columns.push(Column::new("time_ms".into(), out_rows.iter().map(|i| times[*i]).collect::<Vec<_>>()));
    let frame = DataFrame::new_infer_height(columns).map_err(polars_error)?;
    kiln_data::write_parquet(&frame, out)?;
    let digest = kiln_data::hash_path(out, None)?.digest;
    Ok(LabeledExport {
        path: out.to_path_buf(),
        rows: frame.height(),
        digest,
        unmatched_labels: labels.len() - taken.len(),
    })
}

fn polars_error(e: polars::error::PolarsError) -> Error {
    Error::Server(format!("labeled export: {e}"))
}

fn column<'a>(frame: &'a DataFrame, name: &str) -> Result<&'a Column> {
    frame.column(name).map_err(polars_error)
}

fn strings(frame: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(column(frame, name)?.str().map_err(polars_error)?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
}

fn rows(frame: &DataFrame) -> Result<Vec<u32>> {
    Ok(column(frame, "row")?.u32().map_err(polars_error)?.into_no_null_iter().collect())
}

/// One column per feature of the logged `inputs` objects, in the order features first
/// appear: Float64 when every value is a number or null, String otherwise.
fn feature_columns<'a>(inputs: impl Iterator<Item = &'a str>) -> Result<Vec<Column>> {
    let mut names: Vec<String> = Vec::new();
    let mut cells: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for (i, text) in inputs.enumerate() {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            Error::Server(format!("labeled export: logged inputs of row {i} are not a JSON object: {e}"))
        })?;
        for (name, value) in object {
            let column = cells.entry(name.clone()).or_insert_with(|| {
                names.push(name.clone());
                vec![serde_json::Value::Null; i]
            });
            column.push(value);
        }
        for column in cells.values_mut() {
            column.resize(i + 1, serde_json::Value::Null);
        }
    }
    Ok(names
        .iter()
        .map(|name| {
            let values = &cells[name];
            if values.iter().all(|v| v.is_number() || v.is_null()) {
                Column::new(name.as_str().into(), values.iter().map(serde_json::Value::as_f64).collect::<Vec<_>>())
            } else {
                let text: Vec<Option<String>> = values
                    .iter()
                    .map(|v| match v {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    })
                    .collect();
                Column::new(name.as_str().into(), text)
            }
        })
        .collect())
}
