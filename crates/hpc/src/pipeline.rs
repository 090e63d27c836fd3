//! Cached pipelines: stages with declared inputs, params and outputs, skipped when nothing they
//! depend on changed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Submission, summarise};
use crate::job::Dependency;
use crate::state::JobRecord;
use crate::{Error, JobSpec, Result};

/// One step of a [`Pipeline`]: a job plus what it reads and writes.
///
/// Its cache key hashes the command, environment, params, code version, the content of every
/// input file (or, for a file another stage writes, that stage's key) and the keys of the
/// stages it runs after. The stage is skipped when the key equals the one recorded at its last
/// success and its outputs still hold what it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    spec: JobSpec,
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
    params: BTreeMap<String, String>,
    code_version: String,
    after: Vec<String>,
    retries: u32,
    retry_delay: Duration,
}

impl Stage {
    /// A stage running `spec` (its name is the stage's name; its resources, partition and
    /// environment are used as they are).
    pub fn new(spec: JobSpec) -> Stage {
        Stage {
            spec,
            inputs: Vec::new(),
            outputs: Vec::new(),
            params: BTreeMap::new(),
            code_version: String::new(),
            after: Vec::new(),
            retries: 0,
            retry_delay: Duration::from_secs(1),
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A file or directory the stage reads.
    pub fn input(mut self, path: impl Into<PathBuf>) -> Stage {
        self.inputs.push(path.into());
        self
    }

    /// A file or directory the stage writes.
    pub fn output(mut self, path: impl Into<PathBuf>) -> Stage {
        self.outputs.push(path.into());
        self
    }

    /// A parameter, given to the command as `KILN_PARAM_<NAME>` (name upper-cased).
    pub fn param(mut self, name: impl Into<String>, value: impl ToString) -> Stage {
        self.params.insert(name.into(), value.to_string());
        self
    }

    /// The version of the code the stage runs (a git commit, a package version): a new one
    /// invalidates the cache.
    pub fn code_version(mut self, v: impl Into<String>) -> Stage {
        self.code_version = v.into();
        self
    }

    /// Runs after the named stage even without a file between them.
    pub fn after(mut self, stage: impl Into<String>) -> Stage {
        self.after.push(stage.into());
        self
    }

    /// Retries after a failure, waiting `delay`, then twice as long, and so on.
    pub fn retries(mut self, n: u32, delay: Duration) -> Stage {
        self.retries = n;
        self.retry_delay = delay;
        self
    }
}

/// How a stage fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageOutcome {
    /// Skipped: its key and outputs are as at its last success.
    Cached,
    /// Ran and succeeded.
    Ran,
    /// Would run ([`Pipeline::status`]), and why.
    Stale(String),
    /// Failed after its retries, and how.
    Failed(String),
    /// Not run because a stage it depends on failed.
    Skipped(String),
}

impl fmt::Display for StageOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageOutcome::Cached => f.write_str("cached"),
            StageOutcome::Ran => f.write_str("ran"),
            StageOutcome::Stale(why) => write!(f, "stale: {why}"),
            StageOutcome::Failed(why) => write!(f, "FAILED: {why}"),
            StageOutcome::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// One stage's line in a [`PipelineReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    /// The stage.
    pub name: String,
    /// What happened.
    pub outcome: StageOutcome,
    /// Submissions made (0 when cached).
    pub attempts: u32,
    /// The cache key (hex).
    pub key: String,
    /// The job records of the last attempt.
    pub records: Vec<JobRecord>,
    /// Wall time from the first submission to the end.
    pub elapsed: Option<Duration>,
}

/// What [`Pipeline::run`] or [`Pipeline::status`] found, stage by stage in run order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineReport {
    /// The pipeline.
    pub name: String,
    /// The stages, in the order they run.
    pub stages: Vec<StageReport>,
}

impl PipelineReport {
    /// Whether every stage ran or was cached.
    pub fn success(&self) -> bool {
        self.stages.iter().all(|s| matches!(s.outcome, StageOutcome::Ran | StageOutcome::Cached))
    }

    /// The stage's report.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Number of stages whose outcome satisfies `pred`.
    pub fn count(&self, pred: impl Fn(&StageOutcome) -> bool) -> usize {
        self.stages.iter().filter(|s| pred(&s.outcome)).count()
    }
}

impl fmt::Display for PipelineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pipeline {}", self.name)?;
        let width = self.stages.iter().map(|s| s.name.len()).max().unwrap_or(5).max(5);
        writeln!(f, "  {:<width$}  {:>8}  {:>9}  {:<16}  outcome", "stage", "attempts", "elapsed", "key")?;
        for s in &self.stages {
            let elapsed = s.elapsed.map_or_else(|| "-".into(), |e| format!("{:.1}s", e.as_secs_f64()));
            let key = s.key.get(..16).unwrap_or(&s.key);
            writeln!(f, "  {:<width$}  {:>8}  {:>9}  {key:<16}  {}", s.name, s.attempts, elapsed, s.outcome)?;
        }
        Ok(())
    }
}

/// Stages run in dependency order on any [`Backend`]: all stages that must run are submitted
/// at once, chained with `afterok` (on Slurm the scheduler starts each when its inputs are
/// ready); what ran is recorded under the state directory, one JSON file per stage, written
/// atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    name: String,
    state_dir: PathBuf,
    stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StageRecord {
    key: String,
    /// Output path → content hash at the end of the successful run.
    outputs: BTreeMap<String, String>,
    jobs: Vec<u64>,
    backend: String,
}

impl Pipeline {
    /// A pipeline recording its state under `state_dir`.
    pub fn new(name: impl Into<String>, state_dir: impl Into<PathBuf>) -> Pipeline {
        Pipeline { name: name.into(), state_dir: state_dir.into(), stages: Vec::new() }
    }

    /// Adds a stage.
    pub fn stage(mut self, stage: Stage) -> Pipeline {
        self.stages.push(stage);
        self
    }

    /// Which stages would run now and why, without running anything.
    pub fn status(&self) -> Result<PipelineReport> {
        let plan = self.plan()?;
        let stages = plan
            .order
            .iter()
            .map(|&i| StageReport {
                name: self.stages[i].spec.name.clone(),
                outcome: match self.cache_state(i, &plan.keys[i]) {
                    None => StageOutcome::Cached,
                    Some(why) => StageOutcome::Stale(why),
                },
                attempts: 0,
                key: plan.keys[i].clone(),
                records: Vec::new(),
                elapsed: None,
            })
            .collect();
        Ok(PipelineReport { name: self.name.clone(), stages })
    }

    /// Runs every stage that is not cached, on `backend`, and waits for them.
    ///
    /// A failing stage is retried as configured (its downstream stages resubmitted after it);
    /// when it still fails, the stages that depend on it are skipped and the others carry on.
    /// Errors are for the pipeline itself (a cycle, a missing input, a backend failure), not
    /// for failing stages, which the report shows.
    pub fn run(&self, backend: &dyn Backend) -> Result<PipelineReport> {
        let plan = self.plan()?;
        let n = self.stages.len();
        let mut outcome: Vec<Option<StageOutcome>> = vec![None; n];
        for &i in &plan.order {
            if self.cache_state(i, &plan.keys[i]).is_none() {
                outcome[i] = Some(StageOutcome::Cached);
            }
        }
        let to_run: Vec<usize> = plan.order.iter().copied().filter(|&i| outcome[i].is_none()).collect();
        let mut subs: HashMap<usize, Submission> = HashMap::new();
        let mut attempts = vec![0u32; n];
        let mut started: Vec<Option<Instant>> = vec![None; n];
        let mut elapsed: Vec<Option<Duration>> = vec![None; n];
        let mut records: Vec<Vec<JobRecord>> = vec![Vec::new(); n];
        for &i in &to_run {
            self.submit(backend, &plan, i, &outcome, &mut subs, &mut started)?;
        }
        for &i in &to_run {
            if outcome[i].is_some() {
                continue;
            }
            loop {
                let recs = backend.wait(&subs[&i], None)?;
                // Counts runs that ended, not submissions cancelled because an upstream stage
                // was retried.
                attempts[i] += 1;
                let failure = if recs.iter().all(JobRecord::success) {
                    self.stages[i]
                        .outputs
                        .iter()
                        .find(|p| !p.exists())
                        .map(|p| format!("exited 0 but did not write its output {}", p.display()))
                } else {
                    Some(describe_failure(&recs))
                };
                records[i] = recs;
                elapsed[i] = started[i].map(|s| s.elapsed());
                match failure {
                    None => {
                        self.record_success(i, &plan.keys[i], &subs[&i], backend.name())?;
                        outcome[i] = Some(StageOutcome::Ran);
                        break;
                    }
                    Some(why) if attempts[i] <= self.stages[i].retries => {
                        let delay = self.stages[i].retry_delay * 2u32.saturating_pow(attempts[i] - 1);
                        tracing::warn!(stage = %self.stages[i].spec.name, %why, ?delay, "stage failed; retrying");
                        let downstream = plan.pending_downstream(i, &outcome);
                        for &d in &downstream {
                            if let Some(s) = subs.get(&d) {
                                backend.cancel(s)?;
                            }
                        }
                        std::thread::sleep(delay);
                        self.submit(backend, &plan, i, &outcome, &mut subs, &mut started)?;
                        for &d in plan.order.iter().filter(|d| downstream.contains(d)) {
                            self.submit(backend, &plan, d, &outcome, &mut subs, &mut started)?;
                        }
                    }
                    Some(why) => {
                        let name = &self.stages[i].spec.name;
                        for d in plan.pending_downstream(i, &outcome) {
                            if let Some(s) = subs.get(&d) {
                                backend.cancel(s)?;
                            }
                            outcome[d] = Some(StageOutcome::Skipped(format!("stage {name:?} failed")));
                        }
                        outcome[i] = Some(StageOutcome::Failed(why));
                        break;
                    }
                }
            }
        }
        let stages = plan
            .order
            .iter()
            .map(|&i| StageReport {
                name: self.stages[i].spec.name.clone(),
                outcome: outcome[i].clone().unwrap_or(StageOutcome::Cached),
                attempts: attempts[i],
                key: plan.keys[i].clone(),
                records: std::mem::take(&mut records[i]),
                elapsed: elapsed[i],
            })
            .collect();
        Ok(PipelineReport { name: self.name.clone(), stages })
    }

    fn submit(
        &self,
        backend: &dyn Backend,
        plan: &Plan,
        i: usize,
        outcome: &[Option<StageOutcome>],
        subs: &mut HashMap<usize, Submission>,
        started: &mut [Option<Instant>],
    ) -> Result<()> {
        let stage = &self.stages[i];
        let mut spec = stage.spec.clone();
        // Only on upstream jobs that have not finished: one that ended long ago may have been
        // purged by the controller, and sbatch refuses a dependency on an unknown job.
        let upstream: Vec<u64> = plan.upstream[i]
            .iter()
            .filter(|&&u| outcome[u].is_none())
            .filter_map(|u| subs.get(u))
            .flat_map(Submission::job_ids)
            .collect();
        if !upstream.is_empty() {
            spec.dependencies.push(Dependency::AfterOk(upstream));
        }
        for (k, v) in &stage.params {
            spec.env.insert(format!("KILN_PARAM_{}", k.to_ascii_uppercase()), v.clone());
        }
        spec.env.insert("KILN_STAGE".into(), stage.spec.name.clone());
        spec.env.insert("KILN_STAGE_KEY".into(), plan.keys[i].clone());
        let sub = backend.submit(&spec)?;
        tracing::info!(stage = %stage.spec.name, submission = %sub, "stage submitted");
        subs.insert(i, sub);
        started[i].get_or_insert_with(Instant::now);
        Ok(())
    }

    /// `None` when the stage is cached, else why it must run.
    fn cache_state(&self, i: usize, key: &str) -> Option<String> {
        let path = self.record_path(i);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Some("never ran".into());
        };
        let Ok(record) = serde_json::from_str::<StageRecord>(&text) else {
            return Some(format!("unreadable record {}", path.display()));
        };
        if record.key != key {
            return Some("inputs, params or code changed".into());
        }
        for out in &self.stages[i].outputs {
            let recorded = record.outputs.get(&out.display().to_string());
            match hash_path(out) {
                Ok(h) if Some(&h) == recorded => {}
                Ok(_) => return Some(format!("output {} changed", out.display())),
                Err(_) => return Some(format!("output {} is missing", out.display())),
            }
        }
        None
    }

    fn record_path(&self, i: usize) -> PathBuf {
        self.state_dir.join(&self.name).join(format!("{}.json", self.stages[i].spec.name))
    }

    fn record_success(&self, i: usize, key: &str, sub: &Submission, backend: &str) -> Result<()> {
        let mut outputs = BTreeMap::new();
        for out in &self.stages[i].outputs {
            outputs.insert(out.display().to_string(), hash_path(out)?);
        }
        let record = StageRecord { key: key.to_string(), outputs, jobs: sub.job_ids(), backend: backend.to_string() };
        let path = self.record_path(i);
        let io = |source, path: &Path| Error::Io { path: path.to_path_buf(), source };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(e, &tmp))?;
        let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(|e| io(e, &tmp))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(e, &path))
    }

    /// Validates the stages, orders them and computes their keys.
    fn plan(&self) -> Result<Plan> {
        let n = self.stages.len();
        let err = |stage: &str, message: String| Error::Stage { stage: stage.to_string(), message };
        let mut by_name = HashMap::new();
        let mut producer: HashMap<&Path, usize> = HashMap::new();
        for (i, s) in self.stages.iter().enumerate() {
            if by_name.insert(s.spec.name.as_str(), i).is_some() {
                return Err(err(&s.spec.name, "two stages have this name".into()));
            }
            for out in &s.outputs {
                if let Some(&j) = producer.get(out.as_path()) {
                    return Err(err(
                        &s.spec.name,
                        format!("output {} is also written by {:?}", out.display(), self.stages[j].spec.name),
                    ));
                }
                producer.insert(out, i);
            }
            if let Some(k) =
                s.params.keys().find(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(err(&s.spec.name, format!("param name {k:?} must be letters, digits or '_'")));
            }
        }
        let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, s) in self.stages.iter().enumerate() {
            for input in &s.inputs {
                if let Some(&j) = producer.get(input.as_path()) {
                    upstream[i].push(j);
                }
            }
            for a in &s.after {
                let &j = by_name
                    .get(a.as_str())
                    .ok_or_else(|| err(&s.spec.name, format!("runs after {a:?}, which is not a stage")))?;
                upstream[i].push(j);
            }
            upstream[i].sort_unstable();
            upstream[i].dedup();
            if upstream[i].contains(&i) {
                return Err(err(&s.spec.name, "the stage depends on itself".into()));
            }
        }
        // Kahn's algorithm, keeping declaration order among ready stages.
        let mut indegree: Vec<usize> = upstream.iter().map(Vec::len).collect();
        let mut order = Vec::with_capacity(n);
        let mut done = vec![false; n];
        while order.len() < n {
            let Some(i) = (0..n).find(|&i| !done[i] && indegree[i] == 0) else {
                let stuck: Vec<&str> =
                    (0..n).filter(|&i| !done[i]).map(|i| self.stages[i].spec.name.as_str()).collect();
                return Err(err(stuck[0], format!("the stages {stuck:?} form a cycle")));
            };
            done[i] = true;
            order.push(i);
            for (j, up) in upstream.iter().enumerate() {
                if up.contains(&i) {
                    indegree[j] -= 1;
                }
            }
        }
        let mut keys = vec![String::new(); n];
        for &i in &order {
            let s = &self.stages[i];
            let mut h = blake3::Hasher::new();
            let mut field = |tag: &str, value: &str| {
                h.update(tag.as_bytes());
                h.update(&(value.len() as u64).to_le_bytes());
                h.update(value.as_bytes());
            };
            field("version", "kiln-pipeline-1");
            for a in &s.spec.command {
                field("arg", a);
            }
            for (k, v) in &s.spec.env {
                field("env", &format!("{k}={v}"));
            }
            field("workdir", &s.spec.workdir.as_ref().map(|w| w.display().to_string()).unwrap_or_default());
            for line in &s.spec.setup {
                field("setup", line);
            }
            for (k, v) in &s.params {
                field("param", &format!("{k}={v}"));
            }
            field("code", &s.code_version);
            for input in &s.inputs {
                let content = match producer.get(input.as_path()) {
                    Some(&j) => format!("stage:{}", keys[j]),
                    None => hash_path(input).map_err(|e| match e {
                        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                            err(&s.spec.name, format!("input {} does not exist and no stage writes it", path.display()))
                        }
                        other => other,
                    })?,
                };
                field("input", &format!("{}={content}", input.display()));
            }
            for out in &s.outputs {
                field("output", &out.display().to_string());
            }
            for &u in &upstream[i] {
                field("upstream", &keys[u]);
            }
            keys[i] = h.finalize().to_hex().to_string();
        }
        Ok(Plan { order, upstream, keys })
    }
}

struct Plan {
    order: Vec<usize>,
    upstream: Vec<Vec<usize>>,
    keys: Vec<String>,
}

impl Plan {
    /// The stages still to finish that wait for `i`, directly or through other such stages
    /// (what was submitted with `afterok` behind it); a cached stage in between breaks the
    /// chain.
    fn pending_downstream(&self, i: usize, outcome: &[Option<StageOutcome>]) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        let mut frontier = vec![i];
        while let Some(x) = frontier.pop() {
            for (j, up) in self.upstream.iter().enumerate() {
                if up.contains(&x) && outcome[j].is_none() && j != i && !out.contains(&j) {
                    out.push(j);
                    frontier.push(j);
                }
            }
        }
        out
    }
}

fn describe_failure(records: &[JobRecord]) -> String {
    let failed: Vec<&JobRecord> = records.iter().filter(|r| !r.success()).collect();
    let mut s = summarise(failed.iter().copied());
    if let Some(r) = failed.first() {
        if let Some(c) = r.exit_code {
            s.push_str(&format!(", exit code {c}"));
        }
        if let Some(sig) = r.signal {
            s.push_str(&format!(", signal {sig}"));
        }
        if let Some(reason) = &r.reason {
            s.push_str(&format!(" ({reason})"));
        }
        if let Some(e) = &r.stderr {
            s.push_str(&format!("; see {}", e.display()));
        }
    }
    s
}

/// blake3 of a file's bytes, or of a directory's sorted (relative path, file hash) list.
fn hash_path(path: &Path) -> Result<String> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        let mut h = blake3::Hasher::new();
        let f = std::fs::File::open(path).map_err(io)?;
        h.update_reader(f).map_err(io)?;
        return Ok(h.finalize().to_hex().to_string());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"dir");
    for e in entries {
        let name = e.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(hash_path(&e)?.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}
