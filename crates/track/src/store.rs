//! The store: a directory of runs, models and lakehouse tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::IoContext;
use crate::fsutil::{self, now_ms, read_json};
use crate::run::{RunMeta, RunRecord, RunSummary, read_metrics};
use crate::{Error, MetricPoint, Registry, Result, Run};

/// The environment variable that overrides the default store location.
pub const STORE_ENV: &str = "KILN_STORE";

/// A tracking store rooted at a directory.
///
/// Layout (every file is written whole and renamed into place, or appended and synced):
///
/// ```text
/// runs/<run_id>/meta.json      id, experiment, name, start time, tags
///               params.json    parameters, flattened to dotted keys
///               env.json       git commit, compiler, host, CPUs, Slurm variables
///               metrics.jsonl  one metric value per line, append-only
///               summary.json   status and end time (absent while running)
///               artifacts/     files logged by the run
/// models/<name>/versions/<n>/  meta.json and package/ (see Registry)
///               aliases/<alias>.json
/// lakehouse/<table>.parquet    tables derived from the above (see Store::refresh_tables)
/// ```
///
/// Processes never lock: runs are separate directories named by unique ids, and registry
/// versions are claimed by an atomic directory rename, so many array tasks can write to one
/// store at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        for sub in ["runs", "models", "lakehouse"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        Ok(Self { root })
    }

    /// Opens the store named by `KILN_STORE`, or `./kiln-store`.
    pub fn from_env() -> Result<Self> {
        Self::open(std::env::var_os(STORE_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("kiln-store")))
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The model registry of this store.
    pub fn registry(&self) -> Registry {
        Registry::new(self.root.join("models"))
    }

    /// Starts a run in `experiment`, capturing the environment.
    pub fn start_run(&self, experiment: &str) -> Result<Run> {
        self.start_named_run(experiment, None)
    }

    /// Starts a run with a human name.
    pub fn start_named_run(&self, experiment: &str, name: Option<&str>) -> Result<Run> {
        fsutil::check_name("experiment", experiment)?;
        let runs = self.root.join("runs");
        loop {
            let start_ms = now_ms();
            let id = new_run_id(start_ms);
            let dir = runs.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let meta = RunMeta {
                        name: name.map_or_else(|| id.clone(), str::to_string),
                        run_id: id,
                        experiment: experiment.to_string(),
                        start_ms,
                        tags: BTreeMap::new(),
                    };
                    return Run::create(dir, meta);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(Error::Io { path: dir, source }),
            }
        }
    }

    /// Reads one run.
    pub fn run(&self, run_id: &str) -> Result<RunRecord> {
        fsutil::check_name("run id", run_id)?;
        let dir = self.root.join("runs").join(run_id);
        if !dir.join("meta.json").exists() {
            return Err(Error::NotFound(format!("run {run_id} in {}", self.root.display())));
        }
        let meta = read_json(&dir.join("meta.json"))?;
        read_run(&dir, meta).map(|(run, _)| run)
    }

    /// Every run, oldest first, optionally only those of one experiment. Directories without
    /// a `meta.json` (a run being created right now) are skipped.
    pub fn runs(&self, experiment: Option<&str>) -> Result<Vec<RunRecord>> {
        self.runs_with_points(experiment).map(|runs| runs.into_iter().map(|(run, _)| run).collect())
    }

    /// Like [`Store::runs`], with each run's metric points, reading every log once.
    pub(crate) fn runs_with_points(&self, experiment: Option<&str>) -> Result<Vec<(RunRecord, Vec<MetricPoint>)>> {
        let dir = self.root.join("runs");
        let mut run_dirs: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            if entry.path().join("meta.json").exists() {
                run_dirs.push(entry.path());
            }
        }
        run_dirs.sort();
        let mut out = Vec::with_capacity(run_dirs.len());
        for run_dir in run_dirs {
            let meta: RunMeta = read_json(&run_dir.join("meta.json"))?;
            if experiment.is_some_and(|e| e != meta.experiment) {
                continue;
            }
            out.push(read_run(&run_dir, meta)?);
        }
        Ok(out)
    }

    /// All metric values of a run, in logging order.
    pub fn metrics(&self, run_id: &str) -> Result<Vec<MetricPoint>> {
        let run = self.run(run_id)?;
        read_metrics(&run.dir.join("metrics.jsonl"))
    }
}

/// Reads the rest of a run whose `meta.json` has been read, returning its metric points too.
fn read_run(dir: &Path, meta: RunMeta) -> Result<(RunRecord, Vec<MetricPoint>)> {
    let params = match read_json(&dir.join("params.json")) {
        Ok(p) => p,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e),
    };
    let environment = read_json(&dir.join("env.json")).ok();
    let summary_path = dir.join("summary.json");
    let summary: Option<RunSummary> = if summary_path.exists() { Some(read_json(&summary_path)?) } else { None };
    let points = read_metrics(&dir.join("metrics.jsonl"))?;
    let final_metrics = points.iter().map(|p| (p.name.clone(), p.value)).collect();
    Ok((RunRecord { meta, params, environment, summary, final_metrics, dir: dir.to_path_buf() }, points))
}

/// A run id: 12 hex digits of milliseconds (sortable by start time), then 8 hex digits from
/// the host, process, a counter and the clock, so ids from concurrent processes differ.
fn new_run_id(ms: i64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(gethostname::gethostname().as_encoded_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&RUN_COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    h.update(&nanos.to_le_bytes());
    let tail = h.finalize();
    format!("{:012x}{}", ms, &tail.to_hex()[..8])
}
