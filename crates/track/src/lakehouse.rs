//! Lakehouse tables: the store's runs, metrics and models as Parquet files that any Parquet
//! reader (Polars, DuckDB, pandas, Spark) can query.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::fsutil::write_atomic;
use crate::{Result, Store};

/// The tables [`Store::refresh_tables`] writes, one Parquet file each under `lakehouse/`.
pub const TABLES: [&str; 5] = ["experiment_runs", "run_params", "run_metrics", "epoch_metrics", "model_registry"];

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn string(values: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

impl Store {
    /// Path of a lakehouse table's Parquet file.
    pub fn table_path(&self, table: &str) -> PathBuf {
        self.root().join("lakehouse").join(format!("{table}.parquet"))
    }

    /// Rebuilds every lakehouse table from the runs and the registry, atomically per table.
    ///
    /// * `experiment_runs`: one row per run (id, experiment, name, status, times, git commit,
    ///   host, user, Slurm job id, dataset hash tag).
    /// * `run_params`: `run_id, key, value` with values as JSON text (strings unquoted).
    /// * `run_metrics`: `run_id, metric, value, step`, the last value of each metric.
    /// * `epoch_metrics`: `run_id, step, metric, value, logged_at`, every logged value.
    /// * `model_registry`: `model, version, run_id, dataset_hash, created_at, aliases`.
    pub fn refresh_tables(&self) -> Result<()> {
        let runs = self.runs_with_points(None)?;

        let mut run_id = Vec::new();
        let (mut experiment, mut name, mut status) = (Vec::new(), Vec::new(), Vec::new());
        let (mut start, mut end, mut duration) = (Vec::new(), Vec::new(), Vec::new());
        let (mut commit, mut dirty, mut host, mut user, mut slurm, mut dataset) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut p_run, mut p_key, mut p_value) = (Vec::new(), Vec::new(), Vec::new());
        let (mut m_run, mut m_name, mut m_value, mut m_step) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut e_run, mut e_step, mut e_name, mut e_value, mut e_ts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());

        for (run, points) in &runs {
            let id = run.meta.run_id.clone();
            run_id.push(Some(id.clone()));
            experiment.push(Some(run.meta.experiment.clone()));
            name.push(Some(run.meta.name.clone()));
            status.push(Some(run.status().as_str().to_string()));
            start.push(Some(run.meta.start_ms));
            let end_ms = run.summary.as_ref().map(|s| s.end_ms);
            end.push(end_ms);
            duration.push(end_ms.map(|e| (e - run.meta.start_ms) as f64 / 1000.0));
            let env = run.environment.as_ref();
            commit.push(env.and_then(|e| e.git_commit.clone()));
            dirty.push(env.and_then(|e| e.git_dirty));
            host.push(env.map(|e| e.hostname.clone()));
            user.push(env.and_then(|e| e.user.clone()));
            slurm.push(env.and_then(|e| e.variables.get("SLURM_JOB_ID").cloned()));
            dataset.push(run.meta.tags.get("dataset_hash").cloned());
            for (k, v) in &run.params {
                p_run.push(Some(id.clone()));
                p_key.push(Some(k.clone()));
                p_value.push(Some(match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }));
            }
            let mut last: std::collections::BTreeMap<&str, (f64, u64)> = Default::default();
            for p in points {
                last.insert(&p.name, (p.value, p.step));
                e_run.push(Some(id.clone()));
                e_step.push(p.step);
                e_name.push(Some(p.name.clone()));
                e_value.push(p.value);
                e_ts.push(p.ts);
            }
            for (metric, (value, step)) in last {
                m_run.push(Some(id.clone()));
                m_name.push(Some(metric.to_string()));
                m_value.push(value);
                m_step.push(step);
            }
        }

        write_table(
            &self.table_path("experiment_runs"),
            vec![
                (Field::new("run_id", DataType::Utf8, false), string(run_id)),
                (Field::new("experiment", DataType::Utf8, false), string(experiment)),
                (Field::new("run_name", DataType::Utf8, false), string(name)),
                (Field::new("status", DataType::Utf8, false), string(status)),
                (
                    Field::new("start_time", ts(), false),
                    Arc::new(TimestampMillisecondArray::from(start).with_timezone("UTC")),
                ),
                (
                    Field::new("end_time", ts(), true),
                    Arc::new(TimestampMillisecondArray::from(end).with_timezone("UTC")),
                ),
                (Field::new("duration_s", DataType::Float64, true), Arc::new(Float64Array::from(duration))),
                (Field::new("git_commit", DataType::Utf8, true), string(commit)),
                (Field::new("git_dirty", DataType::Boolean, true), Arc::new(BooleanArray::from(dirty))),
                (Field::new("hostname", DataType::Utf8, true), string(host)),
                (Field::new("user", DataType::Utf8, true), string(user)),
                (Field::new("slurm_job_id", DataType::Utf8, true), string(slurm)),
                (Field::new("dataset_hash", DataType::Utf8, true), string(dataset)),
            ],
        )?;
        write_table(
            &self.table_path("run_params"),
            vec![
                (Field::new("run_id", DataType::Utf8, false), string(p_run)),
                (Field::new("key", DataType::Utf8, false), string(p_key)),
                (Field::new("value", DataType::Utf8, false), string(p_value)),
            ],
        )?;
        write_table(
            &self.table_path("run_metrics"),
            vec![
                (Field::new("run_id", DataType::Utf8, false), string(m_run)),
                (Field::new("metric", DataType::Utf8, false), string(m_name)),
                (Field::new("value", DataType::Float64, false), Arc::new(Float64Array::from(m_value))),
                (Field::new("step", DataType::UInt64, false), Arc::new(UInt64Array::from(m_step))),
            ],
        )?;
        write_table(
            &self.table_path("epoch_metrics"),
            vec![
                (Field::new("run_id", DataType::Utf8, false), string(e_run)),
                (Field::new("step", DataType::UInt64, false), Arc::new(UInt64Array::from(e_step))),
                (Field::new("metric", DataType::Utf8, false), string(e_name)),
                (Field::new("value", DataType::Float64, false), Arc::new(Float64Array::from(e_value))),
                (
                    Field::new("logged_at", ts(), false),
                    Arc::new(TimestampMillisecondArray::from(e_ts).with_timezone("UTC")),
                ),
            ],
        )?;

        let registry = self.registry();
        let (mut r_model, mut r_version, mut r_run, mut r_data, mut r_created, mut r_aliases) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for model in registry.models()? {
            let aliases = registry.aliases(&model)?;
            for v in registry.versions(&model)? {
                let names: Vec<&str> =
                    aliases.iter().filter(|(_, n)| **n == v.version).map(|(a, _)| a.as_str()).collect();
                r_model.push(Some(model.clone()));
                r_version.push(v.version);
                r_run.push(v.options.run_id.clone());
                r_data.push(v.options.dataset_hash.clone());
                r_created.push(v.created_ms);
                r_aliases.push(Some(names.join(",")));
            }
        }
        write_table(
            &self.table_path("model_registry"),
            vec![
                (Field::new("model", DataType::Utf8, false), string(r_model)),
                (Field::new("version", DataType::UInt32, false), Arc::new(UInt32Array::from(r_version))),
                (Field::new("run_id", DataType::Utf8, true), string(r_run)),
                (Field::new("dataset_hash", DataType::Utf8, true), string(r_data)),
                (
                    Field::new("created_at", ts(), false),
                    Arc::new(TimestampMillisecondArray::from(r_created).with_timezone("UTC")),
                ),
                (Field::new("aliases", DataType::Utf8, false), string(r_aliases)),
            ],
        )?;
        Ok(())
    }
}

fn write_table(path: &Path, columns: Vec<(Field, ArrayRef)>) -> Result<()> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    write_atomic(path, &buf)
}
