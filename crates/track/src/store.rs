//! The store: a directory of runs, artifacts, models and lakehouse tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::artifacts::Objects;
use crate::error::IoContext;
use crate::fsutil::{self, now_ms, read_json, write_json};
use crate::run::{
    EnvSource, RunMeta, RunRecord, check_run_id, final_values, read_points, read_raw_points, read_record,
};
use crate::{Error, MetricPoint, Registry, Result, Run, RunStatus};

/// The environment variable that overrides the default store location.
pub const STORE_ENV: &str = "KILN_STORE";

/// The on-disk format this version of kiln-track reads and writes.
pub const FORMAT_VERSION: u32 = 2;

/// A tracking store rooted at a directory.
///
/// Layout (every JSON file is written whole and renamed into place; segments are appended):
///
/// ```text
/// store.json                       format version
/// runs/<run_id>/meta.json          id, experiment, name, parent, start (written last on create)
///               status.json        running/completed/failed/killed, attempt, end time, error
///               heartbeat.json     writer pid, host, Slurm job, last seen
///               params.json        parameters, flattened to dotted keys
///               tags.json          labels
///               inputs.json        datasets read (name, digest, source, rows)
///               artifacts.json     artifact name -> content digests
///               env.json           git, toolchain, host, GPUs, Slurm variables, command line
///               metrics/000000.seg append-only checksummed metric blocks, one writer each
/// objects/<2 hex>/<62 hex>         artifact content, by BLAKE3
/// models/<name>/...                the registry (see Registry)
/// lakehouse/<table>/<batch>.parquet  compacted tables (see Store::compact)
/// ```
///
/// Processes never lock. Each run directory has a single writer, run ids are unique across
/// hosts, and registry versions are claimed by atomic renames, so many array tasks can write
/// to one store on a shared file system at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    format_version: u32,
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        for sub in ["runs", "models", "lakehouse", "objects"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        let marker = root.join("store.json");
        if marker.exists() {
            let file: StoreFile = read_json(&marker)?;
            if file.format_version != FORMAT_VERSION {
                return Err(Error::Format { path: marker, found: file.format_version, supported: FORMAT_VERSION });
            }
        } else {
            write_json(&marker, &StoreFile { format_version: FORMAT_VERSION })?;
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
        Registry::new(self.root.join("models"), self.root.join("runs"))
    }

    pub(crate) fn objects(&self) -> Objects {
        Objects::new(self.root.join("objects"))
    }

    /// Starts a run in `experiment`, capturing the environment.
    pub fn start_run(&self, experiment: &str) -> Result<Run> {
        self.run_builder(experiment).start()
    }

    /// Starts a run with a human name.
    pub fn start_named_run(&self, experiment: &str, name: Option<&str>) -> Result<Run> {
        let mut builder = self.run_builder(experiment);
        if let Some(name) = name {
            builder = builder.name(name);
        }
        builder.start()
    }

    /// A builder for a run with a name, tags or a parent.
    pub fn run_builder(&self, experiment: &str) -> RunBuilder<'_> {
        RunBuilder {
            store: self,
            experiment: experiment.to_string(),
            name: None,
            parent: None,
            tags: BTreeMap::new(),
            capture_environment: true,
        }
    }

    /// Reopens run `run_id` after it stopped (preempted, killed, failed) and keeps appending
    /// to it, in a new attempt. Refused while the run's writer is alive, unless that writer
    /// is the same Slurm job being requeued.
    pub fn resume_run(&self, run_id: &str) -> Result<Run> {
        self.reopen_run(run_id, true)
    }

    /// [`Store::resume_run`], optionally keeping the environment recorded before (the
    /// tracking server resumes runs whose environment is that of a remote client).
    pub(crate) fn reopen_run(&self, run_id: &str, capture_environment: bool) -> Result<Run> {
        let record = self.run(run_id)?;
        if record.status() == RunStatus::Running {
            let same_job = record
                .heartbeat
                .as_ref()
                .and_then(|h| h.slurm_job_id.as_deref())
                .is_some_and(|job| std::env::var("SLURM_JOB_ID").is_ok_and(|ours| ours == job));
            if !same_job {
                let owner = record.heartbeat.as_ref().map(|h| format!("pid {} on {}", h.pid, h.host));
                return Err(Error::RunBusy { run_id: run_id.to_string(), owner: owner.unwrap_or_default() });
            }
        }
        self.mark_reopened(run_id)?;
        Run::resume(self.clone(), record, capture_environment)
    }

    /// Creates a run whose id was chosen elsewhere (by a remote client, which uses the same
    /// id on the server and in its local spool). `None` when a run with that id exists.
    #[cfg_attr(not(any(feature = "server", feature = "client")), allow(dead_code))]
    pub(crate) fn create_run_with_meta(
        &self,
        meta: RunMeta,
        tags: BTreeMap<String, String>,
        environment: EnvSource,
    ) -> Result<Option<Run>> {
        if !is_run_id(&meta.run_id) {
            return Err(Error::InvalidName {
                what: "run id",
                name: meta.run_id,
                reason: "a run id is 20 lowercase hex digits",
            });
        }
        fsutil::check_name("experiment", &meta.experiment)?;
        if let Some(parent) = &meta.parent_run_id {
            check_run_id(parent)?;
        }
        let dir = self.run_dir(&meta.run_id);
        match std::fs::create_dir(&dir) {
            Ok(()) => match Run::create(self.clone(), dir.clone(), meta, tags, environment) {
                Ok(run) => Ok(Some(run)),
                Err(e) => {
                    // Leave no half-made run behind: the id must stay usable for a retry.
                    if let Err(cleanup) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), "could not remove a half-created run: {cleanup}");
                    }
                    Err(e)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(source) => Err(Error::Io { path: dir, source }),
        }
    }

    fn new_run(&self, builder: RunBuilder<'_>) -> Result<Run> {
        fsutil::check_name("experiment", &builder.experiment)?;
        if let Some(parent) = &builder.parent {
            check_run_id(parent)?;
            if !self.run_dir(parent).join("meta.json").exists() {
                return Err(Error::NotFound(format!("parent run {parent} in {}", self.root.display())));
            }
        }
        let runs = self.root.join("runs");
        loop {
            let start_ms = now_ms();
            let id = new_run_id(start_ms);
            let dir = runs.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let meta = RunMeta {
                        name: builder.name.clone().unwrap_or_else(|| id.clone()),
                        run_id: id,
                        experiment: builder.experiment.clone(),
                        parent_run_id: builder.parent.clone(),
                        start_ms,
                    };
                    let env = if builder.capture_environment { EnvSource::Capture } else { EnvSource::Skip };
                    return Run::create(self.clone(), dir, meta, builder.tags, env);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(Error::Io { path: dir, source }),
            }
        }
    }

    pub(crate) fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    /// Reads one run, with the final value of each metric.
    pub fn run(&self, run_id: &str) -> Result<RunRecord> {
        check_run_id(run_id)?;
        let dir = self.run_dir(run_id);
        if !dir.join("meta.json").exists() {
            return Err(Error::NotFound(format!("run {run_id} in {}", self.root.display())));
        }
        let mut record = read_record(&dir)?;
        record.final_metrics = final_values(&read_raw_points(&dir)?);
        Ok(record)
    }

    /// The ids of all runs, oldest first. Directories without a `meta.json` (a run being
    /// created right now) are skipped.
    pub fn run_ids(&self) -> Result<Vec<String>> {
        let dir = self.root.join("runs");
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
                && entry.path().join("meta.json").exists()
            {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every run, oldest first, optionally only those of one experiment.
    pub fn runs(&self, experiment: Option<&str>) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for id in self.run_ids()? {
            let dir = self.run_dir(&id);
            let mut record = read_record(&dir)?;
            if experiment.is_some_and(|e| e != record.meta.experiment) {
                continue;
            }
            record.final_metrics = final_values(&read_raw_points(&dir)?);
            out.push(record);
        }
        Ok(out)
    }

    /// All metric values of a run, in logging order (a step logged twice keeps the later
    /// value). A torn tail left by a killed writer is ignored, with a warning.
    pub fn metrics(&self, run_id: &str) -> Result<Vec<MetricPoint>> {
        check_run_id(run_id)?;
        let dir = self.run_dir(run_id);
        if !dir.join("meta.json").exists() {
            return Err(Error::NotFound(format!("run {run_id} in {}", self.root.display())));
        }
        read_points(&dir)
    }

    /// Copies artifact `name` of run `run_id` out of the store to `to`.
    pub fn restore_artifact(&self, run_id: &str, name: &str, to: &Path) -> Result<()> {
        let record = self.run(run_id)?;
        let artifact =
            record.artifacts.get(name).ok_or_else(|| Error::NotFound(format!("artifact {name:?} of run {run_id}")))?;
        self.objects().restore(artifact, to)
    }

    /// The file holding the content with BLAKE3 `digest` (an artifact file).
    pub fn object_path(&self, digest: &str) -> Result<PathBuf> {
        let path = self.objects().path(digest)?;
        if path.is_file() { Ok(path) } else { Err(Error::NotFound(format!("object {digest}"))) }
    }
}

/// Options of a new run; see [`Store::run_builder`].
#[derive(Debug)]
#[must_use = "a run builder does nothing until `start` is called"]
pub struct RunBuilder<'a> {
    store: &'a Store,
    experiment: String,
    name: Option<String>,
    parent: Option<String>,
    tags: BTreeMap<String, String>,
    capture_environment: bool,
}

impl RunBuilder<'_> {
    /// A human name (defaults to the run id).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The parent run, e.g. the sweep this run is a trial of.
    pub fn parent(mut self, run_id: &str) -> Self {
        self.parent = Some(run_id.to_string());
        self
    }

    /// A tag set from the start.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.to_string(), value.to_string());
        self
    }

    /// Whether to capture the environment (git, toolchain, host, GPUs); on by default.
    /// Turning it off saves a few milliseconds of process spawns per run.
    pub fn capture_environment(mut self, capture: bool) -> Self {
        self.capture_environment = capture;
        self
    }

    /// Creates the run.
    pub fn start(self) -> Result<Run> {
        self.store.new_run(self)
    }
}

/// A run id: 12 hex digits of milliseconds (sortable by start time), then 8 hex digits from
/// the host, process, a counter and the clock, so ids from concurrent processes differ.
pub(crate) fn new_run_id(ms: i64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(crate::env::hostname().as_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&RUN_COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    h.update(&nanos.to_le_bytes());
    let tail = h.finalize();
    format!("{:012x}{}", ms, &tail.to_hex()[..8])
}

/// Whether `id` has the shape of a run id: 20 lowercase hex digits.
#[cfg_attr(not(any(feature = "server", feature = "client")), allow(dead_code))]
pub(crate) fn is_run_id(id: &str) -> bool {
    id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
