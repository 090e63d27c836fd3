//! Lakehouse tables: the store's runs, parameters, metrics, tags, datasets and models as plain
//! Parquet files that any Parquet reader (Polars, DuckDB, pandas, Spark) can query.
//!
//! [`Store::compact`] folds runs that have ended into *batches*: one Parquet file per table,
//! `lakehouse/<table>/<batch>.parquet`, with the batch id sortable by time. Within a batch,
//! metric rows are sorted by run, key and step, in row groups of up to a million rows, so a
//! reader looking for one run skips the others by row-group statistics. A batch is committed
//! when its `runs` file exists: that file is renamed into place after all the others, so a
//! crash mid-compaction leaves an uncommitted batch that readers ignore and the next
//! compaction removes. No lock is taken: if two compactions race and both fold a run, readers
//! use the later batch for it.
//!
//! Readers ([`Store::sql`], [`Store::table`]) see compacted and not-yet-compacted runs alike:
//! runs outside any committed batch are read from their run directories, and a run resumed
//! after it was compacted is read from its directory until it is compacted again.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use polars::prelude::{HiveOptions, LazyFrame, ScanArgsParquet, ScanSources, UnionArgs};

use crate::error::IoContext;
use crate::fsutil::{self, now_ms, write_atomic};
use crate::registry::Registry;
use crate::run::{RunRecord, read_raw_points, read_record};
use crate::segment::DecodedPoint;
use crate::{Error, Result, Store};

/// The tables a query can use: `(name, older name kept as an alias)`.
pub const TABLES: [(&str, &str); 8] = [
    ("runs", "experiment_runs"),
    ("params", "run_params"),
    ("metrics", "epoch_metrics"),
    ("latest_metrics", "run_metrics"),
    ("tags", "run_tags"),
    ("datasets", "dataset_catalog"),
    ("models", "model_registry"),
    ("model_events", "registry_events"),
];

/// Tables derived from runs (compacted into batches); `runs` is the commit record.
const RUN_TABLES: [&str; 6] = ["metrics", "latest_metrics", "params", "tags", "datasets", "runs"];

/// The largest number of metric points folded into one batch.
const BATCH_POINTS: usize = 4_000_000;
const ROW_GROUP_ROWS: usize = 1 << 20;

/// What [`Store::compact`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactReport {
    /// Runs folded into new batches.
    pub runs: usize,
    /// Metric points written.
    pub points: usize,
    /// Batches committed.
    pub batches: Vec<String>,
    /// Leftovers of interrupted compactions removed.
    pub removed_uncommitted: usize,
    /// Seconds taken.
    pub seconds: f64,
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The schema of each table.
pub(crate) fn schema(table: &str) -> SchemaRef {
    let s = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    let utf8 = DataType::Utf8;
    let fields = match table {
        "runs" => vec![
            s("run_id", utf8.clone(), false),
            s("experiment", utf8.clone(), false),
            s("run_name", utf8.clone(), false),
            s("parent_run_id", utf8.clone(), true),
            s("status", utf8.clone(), false),
            s("attempt", DataType::UInt32, false),
            s("start_time", ts_type(), false),
            s("end_time", ts_type(), true),
            s("duration_s", DataType::Float64, true),
            s("error", utf8.clone(), true),
            s("git_commit", utf8.clone(), true),
            s("git_branch", utf8.clone(), true),
            s("git_dirty", DataType::Boolean, true),
            s("hostname", utf8.clone(), true),
            s("user", utf8.clone(), true),
            s("slurm_job_id", utf8.clone(), true),
        ],
        "params" => vec![
            s("run_id", utf8.clone(), false),
            s("key", utf8.clone(), false),
            s("value", utf8.clone(), false),
            s("value_num", DataType::Float64, true),
        ],
        "metrics" => vec![
            s("run_id", utf8.clone(), false),
            s("key", utf8.clone(), false),
            s("step", DataType::UInt64, false),
            s("value", DataType::Float64, false),
            s("finite", DataType::Boolean, false),
            s("logged_at", ts_type(), false),
        ],
        "latest_metrics" => vec![
            s("run_id", utf8.clone(), false),
            s("key", utf8.clone(), false),
            s("step", DataType::UInt64, false),
            s("value", DataType::Float64, false),
            s("min", DataType::Float64, true),
            s("max", DataType::Float64, true),
            s("count", DataType::UInt64, false),
            s("non_finite", DataType::UInt64, false),
        ],
        "tags" => vec![s("run_id", utf8.clone(), false), s("key", utf8.clone(), false), s("value", utf8, false)],
        "datasets" => vec![
            s("run_id", utf8.clone(), false),
            s("name", utf8.clone(), false),
            s("digest", utf8.clone(), false),
            s("source", utf8.clone(), false),
            s("rows", DataType::UInt64, true),
            s("context", utf8, true),
        ],
        "models" => vec![
            s("model", utf8.clone(), false),
            s("version", DataType::UInt32, false),
            s("created_at", ts_type(), false),
            s("run_id", utf8.clone(), true),
            s("git_commit", utf8.clone(), true),
            s("dataset_digests", utf8.clone(), true),
            s("package_digest", utf8.clone(), true),
            s("aliases", utf8.clone(), false),
            s("description", utf8, true),
        ],
        "model_events" => vec![
            s("model", utf8.clone(), false),
            s("at", ts_type(), false),
            s("event", utf8.clone(), false),
            s("version", DataType::UInt32, true),
            s("alias", utf8.clone(), true),
            s("from_version", DataType::UInt32, true),
            s("actor", utf8.clone(), false),
            s("reason", utf8, true),
        ],
        "predictions" => vec![
            s("time", ts_type(), false),
            s("model", utf8.clone(), false),
            s("version", utf8.clone(), false),
            s("role", utf8.clone(), false),
            s("request_id", utf8.clone(), false),
            s("row", DataType::UInt32, false),
            s("inputs", utf8.clone(), false),
            s("label", utf8, false),
            s("class", DataType::Int64, false),
            s("probabilities", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), false),
            s("latency_us", DataType::UInt64, false),
        ],
        "feedback" => vec![
            s("time", ts_type(), false),
            s("model", utf8.clone(), false),
            s("request_id", utf8.clone(), false),
            s("row", DataType::UInt32, false),
            s("label", utf8.clone(), false),
            s("version", utf8.clone(), true),
            s("predicted", utf8, true),
            s("correct", DataType::Boolean, true),
        ],
        _ => Vec::new(),
    };
    Arc::new(Schema::new(fields))
}

/// Builds the run-derived tables from run records and their points.
#[derive(Default)]
struct RunTables {
    runs: RunsCols,
    params: (StringBuilder, StringBuilder, StringBuilder, Float64Builder),
    metrics: (StringBuilder, StringBuilder, UInt64Builder, Float64Builder, BooleanBuilder, TimestampMillisecondBuilder),
    latest: (
        StringBuilder,
        StringBuilder,
        UInt64Builder,
        Float64Builder,
        Float64Builder,
        Float64Builder,
        UInt64Builder,
        UInt64Builder,
    ),
    tags: (StringBuilder, StringBuilder, StringBuilder),
    datasets: (StringBuilder, StringBuilder, StringBuilder, StringBuilder, UInt64Builder, StringBuilder),
}

#[derive(Default)]
struct RunsCols {
    run_id: StringBuilder,
    experiment: StringBuilder,
    name: StringBuilder,
    parent: StringBuilder,
    status: StringBuilder,
    attempt: UInt32Builder,
    start: TimestampMillisecondBuilder,
    end: TimestampMillisecondBuilder,
    duration: Float64Builder,
    error: StringBuilder,
    commit: StringBuilder,
    branch: StringBuilder,
    dirty: BooleanBuilder,
    host: StringBuilder,
    user: StringBuilder,
    slurm: StringBuilder,
}

impl RunTables {
    fn add(&mut self, run: &RunRecord, points: &mut [DecodedPoint]) {
        let id = run.meta.run_id.as_str();
        let r = &mut self.runs;
        r.run_id.append_value(id);
        r.experiment.append_value(&run.meta.experiment);
        r.name.append_value(&run.meta.name);
        r.parent.append_option(run.meta.parent_run_id.as_deref());
        r.status.append_value(run.status().as_str());
        r.attempt.append_value(run.state.attempt);
        r.start.append_value(run.meta.start_ms);
        r.end.append_option(run.state.end_ms);
        r.duration.append_option(run.state.end_ms.map(|e| (e - run.meta.start_ms) as f64 / 1000.0));
        r.error.append_option(run.state.error.as_deref());
        let env = run.environment.as_ref();
        r.commit.append_option(env.and_then(|e| e.git_commit.as_deref()));
        r.branch.append_option(env.and_then(|e| e.git_branch.as_deref()));
        r.dirty.append_option(env.and_then(|e| e.git_dirty));
        r.host.append_option(env.map(|e| e.hostname.as_str()));
        r.user.append_option(env.and_then(|e| e.user.as_deref()));
        r.slurm.append_option(env.and_then(|e| e.slurm_job_id()));

        for (k, v) in &run.params {
            self.params.0.append_value(id);
            self.params.1.append_value(k);
            match v {
                serde_json::Value::String(s) => {
                    self.params.2.append_value(s);
                    self.params.3.append_option(s.parse::<f64>().ok());
                }
                other => {
                    self.params.2.append_value(other.to_string());
                    self.params.3.append_option(other.as_f64());
                }
            }
        }
        for (k, v) in &run.tags {
            self.tags.0.append_value(id);
            self.tags.1.append_value(k);
            self.tags.2.append_value(v);
        }
        for d in &run.inputs {
            self.datasets.0.append_value(id);
            self.datasets.1.append_value(&d.name);
            self.datasets.2.append_value(&d.digest);
            self.datasets.3.append_value(&d.source);
            self.datasets.4.append_option(d.rows);
            self.datasets.5.append_option(d.context.as_deref());
        }

        points.sort_by(|a, b| a.key.cmp(&b.key).then(a.step.cmp(&b.step)));
        let m = &mut self.metrics;
        for p in points.iter() {
            m.0.append_value(id);
            m.1.append_value(&*p.key);
            m.2.append_value(p.step);
            m.3.append_value(p.value);
            m.4.append_value(p.value.is_finite());
            m.5.append_value(p.ts);
        }
        for group in points.chunk_by(|a, b| a.key == b.key) {
            let Some(last) = group.last() else { continue };
            let finite = group.iter().map(|p| p.value).filter(|v| v.is_finite());
            let (min, max) = finite.fold((None, None), |(lo, hi): (Option<f64>, Option<f64>), v| {
                (Some(lo.map_or(v, |l| l.min(v))), Some(hi.map_or(v, |h| h.max(v))))
            });
            let l = &mut self.latest;
            l.0.append_value(id);
            l.1.append_value(&*last.key);
            l.2.append_value(last.step);
            l.3.append_value(last.value);
            l.4.append_option(min);
            l.5.append_option(max);
            l.6.append_value(group.len() as u64);
            l.7.append_value(group.iter().filter(|p| !p.value.is_finite()).count() as u64);
        }
    }

    fn finish(mut self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let r = &mut self.runs;
        let utc = |b: &mut TimestampMillisecondBuilder| -> ArrayRef { Arc::new(b.finish().with_timezone("UTC")) };
        let runs: Vec<ArrayRef> = vec![
            Arc::new(r.run_id.finish()),
            Arc::new(r.experiment.finish()),
            Arc::new(r.name.finish()),
            Arc::new(r.parent.finish()),
            Arc::new(r.status.finish()),
            Arc::new(r.attempt.finish()),
            utc(&mut r.start),
            utc(&mut r.end),
            Arc::new(r.duration.finish()),
            Arc::new(r.error.finish()),
            Arc::new(r.commit.finish()),
            Arc::new(r.branch.finish()),
            Arc::new(r.dirty.finish()),
            Arc::new(r.host.finish()),
            Arc::new(r.user.finish()),
            Arc::new(r.slurm.finish()),
        ];
        let p = &mut self.params;
        let params: Vec<ArrayRef> =
            vec![Arc::new(p.0.finish()), Arc::new(p.1.finish()), Arc::new(p.2.finish()), Arc::new(p.3.finish())];
        let m = &mut self.metrics;
        let metrics: Vec<ArrayRef> = vec![
            Arc::new(m.0.finish()),
            Arc::new(m.1.finish()),
            Arc::new(m.2.finish()),
            Arc::new(m.3.finish()),
            Arc::new(m.4.finish()),
            utc(&mut m.5),
        ];
        let l = &mut self.latest;
        let latest: Vec<ArrayRef> = vec![
            Arc::new(l.0.finish()),
            Arc::new(l.1.finish()),
            Arc::new(l.2.finish()),
            Arc::new(l.3.finish()),
            Arc::new(l.4.finish()),
            Arc::new(l.5.finish()),
            Arc::new(l.6.finish()),
            Arc::new(l.7.finish()),
        ];
        let t = &mut self.tags;
        let tags: Vec<ArrayRef> = vec![Arc::new(t.0.finish()), Arc::new(t.1.finish()), Arc::new(t.2.finish())];
        let d = &mut self.datasets;
        let datasets: Vec<ArrayRef> = vec![
            Arc::new(d.0.finish()),
            Arc::new(d.1.finish()),
            Arc::new(d.2.finish()),
            Arc::new(d.3.finish()),
            Arc::new(d.4.finish()),
            Arc::new(d.5.finish()),
        ];
        let mut out = Vec::new();
        for (name, cols) in [
            ("metrics", metrics),
            ("latest_metrics", latest),
            ("params", params),
            ("tags", tags),
            ("datasets", datasets),
            ("runs", runs),
        ] {
            out.push((name, RecordBatch::try_new(schema(name), cols)?));
        }
        Ok(out)
    }
}

fn model_tables(registry: &Registry) -> Result<Vec<(&'static str, RecordBatch)>> {
    let (mut model, mut version, mut created, mut run, mut commit, mut data, mut digest, mut aliases, mut desc) = (
        StringBuilder::new(),
        UInt32Builder::new(),
        TimestampMillisecondBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut e_model, mut e_at, mut e_event, mut e_version, mut e_alias, mut e_from, mut e_actor, mut e_reason) = (
        StringBuilder::new(),
        TimestampMillisecondBuilder::new(),
        StringBuilder::new(),
        UInt32Builder::new(),
        StringBuilder::new(),
        UInt32Builder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for name in registry.models()? {
        let alias_map = registry.aliases(&name)?;
        for v in registry.versions(&name)? {
            let names: Vec<&str> =
                alias_map.iter().filter(|(_, n)| **n == v.version).map(|(a, _)| a.as_str()).collect();
            model.append_value(&name);
            version.append_value(v.version);
            created.append_value(v.created_ms);
            run.append_option(v.lineage.run_id.as_deref());
            commit.append_option(v.lineage.git_commit.as_deref());
            data.append_option(Some(v.lineage.dataset_digests.join(",")).filter(|s| !s.is_empty()).as_deref());
            digest.append_option(v.package_digest.as_deref());
            aliases.append_value(names.join(","));
            desc.append_option(v.description.as_deref());
        }
        for e in registry.history(&name)? {
            e_model.append_value(&name);
            e_at.append_value(e.at_ms);
            e_event.append_value(e.event.as_str());
            e_version.append_option(e.version);
            e_alias.append_option(e.alias.as_deref());
            e_from.append_option(e.from_version);
            e_actor.append_value(&e.actor);
            e_reason.append_option(e.reason.as_deref());
        }
    }
    let models: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(version.finish()),
        Arc::new(created.finish().with_timezone("UTC")),
        Arc::new(run.finish()),
        Arc::new(commit.finish()),
        Arc::new(data.finish()),
        Arc::new(digest.finish()),
        Arc::new(aliases.finish()),
        Arc::new(desc.finish()),
    ];
    let events: Vec<ArrayRef> = vec![
        Arc::new(e_model.finish()),
        Arc::new(e_at.finish().with_timezone("UTC")),
        Arc::new(e_event.finish()),
        Arc::new(e_version.finish()),
        Arc::new(e_alias.finish()),
        Arc::new(e_from.finish()),
        Arc::new(e_actor.finish()),
        Arc::new(e_reason.finish()),
    ];
    Ok(vec![
        ("models", RecordBatch::try_new(schema("models"), models)?),
        ("model_events", RecordBatch::try_new(schema("model_events"), events)?),
    ])
}

/// Encodes a batch as Parquet bytes.
pub(crate) fn parquet_bytes(batch: &RecordBatch, compression: Compression) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}

/// What the lakehouse directory holds: committed batches and which runs they contain.
struct LakeState {
    /// Committed batch ids, oldest first.
    batches: Vec<String>,
    /// For each compacted run, the latest committed batch holding it.
    winner: HashMap<String, String>,
    /// For each batch, its runs whose rows must be skipped (a later batch has them, or the
    /// run was resumed after it was compacted).
    stale: HashMap<String, BTreeSet<String>>,
    /// Runs resumed after compaction, with when they were reopened.
    reopened: HashMap<String, SystemTime>,
}

impl Store {
    fn lake_dir(&self) -> PathBuf {
        self.root().join("lakehouse")
    }

    /// Records that a (possibly compacted) run was reopened, so readers read it from its
    /// directory until it is compacted again.
    pub(crate) fn mark_reopened(&self, run_id: &str) -> Result<()> {
        write_atomic(&self.lake_dir().join("reopened").join(run_id), now_ms().to_string().as_bytes())
    }

    fn lake_state(&self) -> Result<LakeState> {
        let runs_dir = self.lake_dir().join("runs");
        let mut batches = list_batches(&runs_dir)?;
        batches.sort();
        let mut winner: HashMap<String, String> = HashMap::new();
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for batch in &batches {
            let ids = read_string_column(&runs_dir.join(format!("{batch}.parquet")), "run_id")?;
            for id in &ids {
                winner.insert(id.clone(), batch.clone());
            }
            members.push((batch.clone(), ids));
        }
        let mut reopened = HashMap::new();
        let dir = self.lake_dir().join("reopened");
        if dir.is_dir() {
            for entry in std::fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let modified = entry.metadata().and_then(|m| m.modified()).at(&entry.path())?;
                reopened.insert(name, modified);
            }
        }
        let mut stale: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (batch, ids) in members {
            for id in ids {
                if winner.get(&id) != Some(&batch) || reopened.contains_key(&id) {
                    stale.entry(batch.clone()).or_default().insert(id);
                }
            }
        }
        Ok(LakeState { batches, winner, stale, reopened })
    }

    /// Runs not (validly) in any committed batch: read from their directories.
    fn live_run_ids(&self, lake: &LakeState) -> Result<Vec<String>> {
        let dir = self.root().join("runs");
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if name.starts_with('.') || (lake.winner.contains_key(&name) && !lake.reopened.contains_key(&name)) {
                continue;
            }
            if entry.path().join("meta.json").exists() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Folds every run that has ended and is not yet compacted into new lakehouse batches,
    /// and removes the leftovers of interrupted compactions. Safe to run at any time, from any
    /// process, while other processes log.
    pub fn compact(&self) -> Result<CompactReport> {
        self.compact_with_progress(|_, _| {})
    }

    /// [`Store::compact`], calling `progress(runs looked at, runs in all)` after each run.
    pub fn compact_with_progress(&self, mut progress: impl FnMut(usize, usize)) -> Result<CompactReport> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let mut report = CompactReport::default();
        let lake = self.lake_state()?;
        report.removed_uncommitted = self.remove_uncommitted(&lake)?;

        let mut pending: Vec<(RunRecord, Vec<DecodedPoint>)> = Vec::new();
        let mut pending_points = 0usize;
        let live = self.live_run_ids(&lake)?;
        for (i, id) in live.iter().enumerate() {
            progress(i + 1, live.len());
            let dir = self.run_dir(id);
            let record = read_record(&dir)?;
            if !record.status().is_terminal() {
                continue;
            }
            let points = read_raw_points(&dir)?;
            pending_points += points.len();
            pending.push((record, points));
            if pending_points >= BATCH_POINTS {
                self.write_batch(std::mem::take(&mut pending), &mut report)?;
                pending_points = 0;
            }
        }
        if !pending.is_empty() {
            self.write_batch(pending, &mut report)?;
        }
        // A run reopened before this compaction started and folded again now is current.
        if !lake.reopened.is_empty() && !report.batches.is_empty() {
            let after = self.lake_state()?;
            for (id, when) in &lake.reopened {
                let in_new = after.winner.get(id).is_some_and(|b| report.batches.contains(b));
                if in_new && *when < started_at {
                    let _ = std::fs::remove_file(self.lake_dir().join("reopened").join(id));
                }
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn write_batch(&self, runs: Vec<(RunRecord, Vec<DecodedPoint>)>, report: &mut CompactReport) -> Result<()> {
        let batch_id = new_batch_id();
        let mut tables = RunTables::default();
        for (record, mut points) in runs {
            report.points += points.len();
            report.runs += 1;
            tables.add(&record, &mut points);
        }
        // `runs` comes last from finish(): its file commits the batch.
        for (table, batch) in tables.finish()? {
            let bytes = parquet_bytes(&batch, Compression::SNAPPY)?;
            write_atomic(&self.lake_dir().join(table).join(format!("{batch_id}.parquet")), &bytes)?;
        }
        report.batches.push(batch_id);
        Ok(())
    }

    /// Deletes table files of batches that never committed (older than an hour, so a
    /// compaction in progress elsewhere is left alone).
    fn remove_uncommitted(&self, lake: &LakeState) -> Result<usize> {
        let committed: BTreeSet<&String> = lake.batches.iter().collect();
        let cutoff = now_ms() - 3_600_000;
        let mut removed = 0;
        for table in RUN_TABLES {
            for batch in list_batches(&self.lake_dir().join(table))? {
                let old = batch_ms(&batch).is_some_and(|ms| ms < cutoff);
                if !committed.contains(&batch) && old {
                    let path = self.lake_dir().join(table).join(format!("{batch}.parquet"));
                    std::fs::remove_file(&path).at(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The committed Parquet files of a run-derived table, oldest batch first.
    pub fn table_files(&self, table: &str) -> Result<Vec<PathBuf>> {
        let lake = self.lake_state()?;
        Ok(lake
            .batches
            .iter()
            .map(|b| self.lake_dir().join(table).join(format!("{b}.parquet")))
            .filter(|p| p.exists())
            .collect())
    }

    /// Every table as a Polars `LazyFrame`: compacted batches plus runs read live.
    pub(crate) fn lazy_tables(&self) -> Result<Vec<(&'static str, LazyFrame)>> {
        let lake = self.lake_state()?;
        let mut live = RunTables::default();
        for id in self.live_run_ids(&lake)? {
            let dir = self.run_dir(&id);
            let record = match read_record(&dir) {
                Ok(r) => r,
                // A run directory removed between listing and reading (a sync replacing it).
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut points = read_raw_points(&dir)?;
            live.add(&record, &mut points);
        }
        let mut out = Vec::new();
        for (table, batch) in live.finish()?.into_iter().chain(model_tables(&self.registry())?) {
            let mut frames = vec![frame_from_batches(&[batch])?];
            if RUN_TABLES.contains(&table) {
                let mut files = Vec::new();
                for b in &lake.batches {
                    let path = self.lake_dir().join(table).join(format!("{b}.parquet"));
                    match lake.stale.get(b) {
                        None => files.push(path),
                        Some(skip) => frames.push(frame_from_batches(&filtered(&path, skip, table)?)?),
                    }
                }
                if !files.is_empty() {
                    frames.push(scan_files(files)?);
                }
            }
            let frame = if frames.len() == 1 {
                frames.pop().unwrap_or_default()
            } else {
                polars::prelude::concat(frames, UnionArgs { parallel: true, rechunk: false, ..Default::default() })
                    .map_err(|e| Error::Sql(e.to_string()))?
            };
            out.push((table, frame));
        }
        for table in crate::serving::SERVING_TABLES {
            let files = self.serving_files(table)?;
            let frame = if files.is_empty() {
                frame_from_batches(&[RecordBatch::new_empty(schema(table))])?
            } else {
                scan_files(files)?
            };
            out.push((table, frame));
        }
        Ok(out)
    }
}

pub(crate) fn new_batch_id() -> String {
    let mut h = blake3::Hasher::new();
    h.update(crate::env::hostname().as_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(fsutil::unique_tmp(Path::new(""), "batch").as_os_str().as_encoded_bytes());
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    h.update(&nanos.to_le_bytes());
    format!("b{:012x}{}", now_ms(), &h.finalize().to_hex()[..8])
}

fn batch_ms(batch: &str) -> Option<i64> {
    i64::from_str_radix(batch.get(1..13)?, 16).ok()
}

fn list_batches(dir: &Path) -> Result<Vec<String>> {
    let entries = fsutil::entries_or_empty(dir)?;
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.file_name();
        if let Some(b) = name.to_str().and_then(|n| n.strip_suffix(".parquet"))
            && b.starts_with('b')
        {
            out.push(b.to_string());
        }
    }
    Ok(out)
}

/// Reads one string column of a Parquet file with arrow-rs.
fn read_string_column(path: &Path, column: &str) -> Result<Vec<String>> {
    let file = File::open(path).at(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let index = builder.schema().index_of(column)?;
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [index]);
    let mut out = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let col = batch.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            line: None,
            message: format!("column {column} is not a string column"),
        })?;
        out.extend(col.iter().map(|v| v.unwrap_or_default().to_string()));
    }
    Ok(out)
}

/// Reads a table file without the rows of `skip` runs.
fn filtered(path: &Path, skip: &BTreeSet<String>, table: &str) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).at(path)?;
    let mut out = vec![RecordBatch::new_empty(schema(table))];
    for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.build()? {
        let batch = batch?;
        let ids = batch.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            line: None,
            message: "the first column is not run_id".into(),
        })?;
        let keep: arrow::array::BooleanArray =
            ids.iter().map(|id| Some(!skip.contains(id.unwrap_or_default()))).collect();
        out.push(arrow::compute::filter_record_batch(&batch, &keep)?);
    }
    Ok(out)
}

fn scan_args() -> ScanArgsParquet {
    // Batch files are not hive-partitioned (and in-memory buffers cannot be).
    ScanArgsParquet { glob: false, hive_options: HiveOptions::new_disabled(), ..Default::default() }
}

/// The given Parquet files as one lazy frame (paths taken literally: no globs, no hive
/// partitions).
pub(crate) fn scan_files(files: Vec<PathBuf>) -> Result<LazyFrame> {
    let paths = files
        .iter()
        .map(|p| polars::prelude::PlRefPath::try_from_path(p).map_err(|e| Error::Sql(format!("{}: {e}", p.display()))))
        .collect::<Result<Vec<_>>>()?;
    LazyFrame::scan_parquet_files(paths.into(), scan_args()).map_err(|e| Error::Sql(e.to_string()))
}

/// A LazyFrame over in-memory batches, through Parquet so the schema matches the files'.
fn frame_from_batches(batches: &[RecordBatch]) -> Result<LazyFrame> {
    let Some(first) = batches.first() else {
        return Err(Error::Sql("no batches".into()));
    };
    let batch = arrow::compute::concat_batches(&first.schema(), batches)?;
    let bytes = parquet_bytes(&batch, Compression::UNCOMPRESSED)?;
    let sources = ScanSources::Buffers(Arc::from([polars_buffer::Buffer::from(bytes)]));
    LazyFrame::scan_parquet_sources(sources, scan_args()).map_err(|e| Error::Sql(e.to_string()))
}
