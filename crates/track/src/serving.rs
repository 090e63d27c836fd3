//! Serving logs: the predictions a model server made and the labels that came back for them.
//!
//! A model server (kiln-serve) hands its records here in batches; each batch becomes one
//! Parquet file, written whole to a temporary file, synced and renamed into place, so a
//! reader never sees part of one and an append that returned is on disk:
//!
//! ```text
//! serving/<model>/predictions/<part>.parquet   one row per predicted row (sampled)
//! serving/<model>/feedback/<part>.parquet      one row per label that came back
//! ```
//!
//! Part ids sort by time and do not collide between processes, so several servers (replicas
//! on different hosts) can log one model into one store without a lock. [`Store::sql`] reads
//! them as the tables `predictions` and `feedback`.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use parquet::basic::Compression;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, check_name, write_atomic};
use crate::lakehouse::{new_batch_id, parquet_bytes, schema};
use crate::{Result, Store};

/// The serving tables, queried with [`Store::sql`] like the run tables.
///
/// | table | one row per | columns |
/// |---|---|---|
/// | `predictions` | predicted row (as sampled by the server) | time, model, version, role (primary, canary, shadow), request_id, row, inputs (JSON object of raw feature values), label, class, probabilities, latency_us |
/// | `feedback` | label sent back | time, model, request_id, row, label, version and predicted (of the answer it joined, if it joined one), correct |
pub const SERVING_TABLES: [&str; 2] = ["predictions", "feedback"];

/// One predicted row, as logged by a model server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// When the answer was sent, in Unix milliseconds.
    pub time_ms: i64,
    /// The model's name.
    pub model: String,
    /// The version that predicted.
    pub version: String,
    /// Its role in the deployment: `primary`, `canary` or `shadow`.
    pub role: String,
    /// The request's id (the client's, or one the server assigned and returned).
    pub request_id: String,
    /// The row's index in its request.
    pub row: u32,
    /// The raw input values as a JSON object, feature name to value (`null` when missing).
    pub inputs: String,
    /// The predicted label.
    pub label: String,
    /// The predicted class index.
    pub class: i64,
    /// The class probabilities, in label order.
    pub probabilities: Vec<f32>,
    /// Time from the request's arrival to its answer, in microseconds.
    pub latency_us: u64,
}

/// A label sent back for a predicted row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// When the label arrived, in Unix milliseconds.
    pub time_ms: i64,
    /// The model's name.
    pub model: String,
    /// The id of the request the label belongs to.
    pub request_id: String,
    /// The row in that request.
    pub row: u32,
    /// The true label.
    pub label: String,
    /// The version whose answer it joined (`None`: the server no longer held the prediction).
    pub version: Option<String>,
    /// The label that version predicted.
    pub predicted: Option<String>,
    /// Whether the prediction was right.
    pub correct: Option<bool>,
}

impl Store {
    fn serving_dir(&self) -> PathBuf {
        self.root().join("serving")
    }

    /// Appends predicted rows, one Parquet file per model, durably; returns the files
    /// written (none for no records).
    pub fn append_predictions(&self, records: &[PredictionRecord]) -> Result<Vec<PathBuf>> {
        self.append_grouped(records, |r| &r.model, "predictions", prediction_batch)
    }

    /// Appends labels, one Parquet file per model, durably; returns the files written.
    pub fn append_feedback(&self, records: &[FeedbackRecord]) -> Result<Vec<PathBuf>> {
        self.append_grouped(records, |r| &r.model, "feedback", feedback_batch)
    }

    fn append_grouped<R>(
        &self,
        records: &[R],
        model: impl Fn(&R) -> &String,
        table: &str,
        batch: impl Fn(&[&R]) -> Result<RecordBatch>,
    ) -> Result<Vec<PathBuf>> {
        let mut groups: std::collections::BTreeMap<&str, Vec<&R>> = Default::default();
        for r in records {
            groups.entry(model(r).as_str()).or_default().push(r);
        }
        let mut written = Vec::with_capacity(groups.len());
        for (name, rows) in groups {
            check_name("model name", name)?;
            let bytes = parquet_bytes(&batch(&rows)?, Compression::SNAPPY)?;
            let path = self.serving_dir().join(name).join(table).join(format!("{}.parquet", new_batch_id()));
            write_atomic(&path, &bytes)?;
            written.push(path);
        }
        Ok(written)
    }

    /// The serving tables of one model that have any rows, as Polars frames (`predictions`,
    /// `feedback`).
    pub(crate) fn serving_frames(
        &self,
        model: &str,
    ) -> Result<std::collections::HashMap<&'static str, polars::prelude::LazyFrame>> {
        check_name("model name", model)?;
        let mut out = std::collections::HashMap::new();
        for table in SERVING_TABLES {
            let mut parts = fsutil::entries_or_empty(&self.serving_dir().join(model).join(table))?;
            parts.sort_by_key(std::fs::DirEntry::file_name);
            let files: Vec<PathBuf> = parts
                .into_iter()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            if !files.is_empty() {
                out.insert(table, crate::lakehouse::scan_files(files)?);
            }
        }
        Ok(out)
    }

    /// The committed Parquet files of a serving table (`predictions` or `feedback`), of every
    /// model, oldest part first within a model.
    pub fn serving_files(&self, table: &str) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut models = fsutil::entries_or_empty(&self.serving_dir())?;
        models.sort_by_key(std::fs::DirEntry::file_name);
        for model in models {
            let mut parts = fsutil::entries_or_empty(&model.path().join(table))?;
            parts.sort_by_key(std::fs::DirEntry::file_name);
            // Temporary files start with '.', and are not `.parquet` until renamed.
            files.extend(
                parts
                    .into_iter()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                    .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))),
            );
        }
        Ok(files)
    }
}

fn prediction_batch(rows: &[&PredictionRecord]) -> Result<RecordBatch> {
    let mut time = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let (mut model, mut version, mut role, mut id) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut row = UInt32Builder::new();
    let (mut inputs, mut label) = (StringBuilder::new(), StringBuilder::new());
    let mut class = Int64Builder::new();
    let mut probabilities = ListBuilder::new(Float32Builder::new());
    let mut latency = UInt64Builder::new();
    for r in rows {
        time.append_value(r.time_ms);
        model.append_value(&r.model);
        version.append_value(&r.version);
        role.append_value(&r.role);
        id.append_value(&r.request_id);
        row.append_value(r.row);
        inputs.append_value(&r.inputs);
        label.append_value(&r.label);
        class.append_value(r.class);
        probabilities.values().append_slice(&r.probabilities);
        probabilities.append(true);
        latency.append_value(r.latency_us);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(model.finish()),
        Arc::new(version.finish()),
        Arc::new(role.finish()),
        Arc::new(id.finish()),
        Arc::new(row.finish()),
        Arc::new(inputs.finish()),
        Arc::new(label.finish()),
        Arc::new(class.finish()),
        Arc::new(probabilities.finish()),
        Arc::new(latency.finish()),
    ];
    Ok(RecordBatch::try_new(schema("predictions"), columns)?)
}

fn feedback_batch(rows: &[&FeedbackRecord]) -> Result<RecordBatch> {
    let mut time = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let (mut model, mut id, mut label, mut version, mut predicted) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut row = UInt32Builder::new();
    let mut correct = BooleanBuilder::new();
    for r in rows {
        time.append_value(r.time_ms);
        model.append_value(&r.model);
        id.append_value(&r.request_id);
        row.append_value(r.row);
        label.append_value(&r.label);
        version.append_option(r.version.as_deref());
        predicted.append_option(r.predicted.as_deref());
        correct.append_option(r.correct);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(model.finish()),
        Arc::new(id.finish()),
        Arc::new(row.finish()),
        Arc::new(label.finish()),
        Arc::new(version.finish()),
        Arc::new(predicted.finish()),
        Arc::new(correct.finish()),
    ];
    Ok(RecordBatch::try_new(schema("feedback"), columns)?)
}
