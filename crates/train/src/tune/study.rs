//! Studies and trials: ask/tell, `optimize`, stale trials, and kiln-track child runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use kiln_track::{Run, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::journal::{FORMAT_VERSION, JournalFile, JournalStats, Op, ParamValue, Storage};
use super::pruner::{self, PrunerConfig};
use super::sampler::{Sampler, SamplerConfig};
use super::space::{Distribution, SearchSpace};
use super::state::StudyState;
use super::tpe::{self, TpeConfig, TpeScratch};
use crate::{Error, Result};

/// Whether smaller or larger objective values are better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smaller is better.
    #[default]
    Minimize,
    /// Larger is better.
    Maximize,
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Asked, not yet told.
    Running,
    /// Finished with a value.
    Complete,
    /// Stopped early by the pruner.
    Pruned,
    /// The objective failed, returned NaN, or the worker died (see [`Study::fail_stale`]).
    Failed,
}

impl TrialState {
    /// The lowercase name used in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Pruned => "pruned",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for TrialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a study is: written in the journal's first line, so every worker samples and prunes
/// alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyConfig {
    /// A name for messages and kiln-track tags.
    pub name: String,
    /// Minimise (default) or maximise.
    #[serde(default)]
    pub direction: Direction,
    /// The sampler (default TPE, seed 0).
    #[serde(default)]
    pub sampler: SamplerConfig,
    /// The pruner (default none).
    #[serde(default)]
    pub pruner: PrunerConfig,
}

impl StudyConfig {
    /// A study minimising with TPE (seed 0) and no pruner.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            direction: Direction::Minimize,
            sampler: SamplerConfig::default(),
            pruner: PrunerConfig::None,
        }
    }

    /// Sets the direction.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Sets the sampler.
    pub fn sampler(mut self, sampler: SamplerConfig) -> Self {
        self.sampler = sampler;
        self
    }

    /// Sets the pruner.
    pub fn pruner(mut self, pruner: PrunerConfig) -> Self {
        self.pruner = pruner;
        self
    }

    /// Checks the sampler and pruner settings.
    pub fn validate(&self) -> Result<()> {
        self.sampler.validate()?;
        self.pruner.validate()
    }
}

/// A trial as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrozenTrial {
    /// 0, 1, 2, ... in order of creation, unique across all workers.
    pub number: u64,
    /// Where it stands.
    pub state: TrialState,
    /// The objective value when complete; the last intermediate value when pruned.
    pub value: Option<f64>,
    /// Parameter values.
    pub params: BTreeMap<String, Value>,
    /// The distribution of each parameter.
    pub distributions: BTreeMap<String, Distribution>,
    /// Reported intermediate values by step.
    pub intermediate_values: BTreeMap<u64, f64>,
    /// User attributes.
    pub user_attrs: BTreeMap<String, Value>,
    /// `host:pid` of the process that created it, with the Slurm job if any.
    pub worker: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// The latest line about it (report, heartbeat, ...), milliseconds since the Unix epoch.
    pub last_seen_ms: i64,
    /// End time, milliseconds since the Unix epoch.
    pub finished_ms: Option<i64>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// How a trial ended, for [`Study::tell`] and [`Study::add_trial`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished with this value (NaN is recorded as a failure, as in Optuna).
    Complete(f64),
    /// Stopped by the pruner.
    Pruned,
    /// Failed, with the reason.
    Failed(String),
}

/// A finished trial to add to a study, e.g. results from an earlier search, to warm-start
/// TPE.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    /// Parameter values with their distributions.
    pub params: BTreeMap<String, ParamValue>,
    /// Intermediate values by step.
    pub intermediate_values: BTreeMap<u64, f64>,
    /// How it ended.
    pub outcome: Outcome,
}

/// What [`Study::optimize`] did in this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizeReport {
    /// The trials this call ran, in order.
    pub trials: Vec<FrozenTrial>,
    /// The grid sampler ran out of points (the loop stopped early).
    pub grid_exhausted: bool,
}

impl OptimizeReport {
    fn count(&self, state: TrialState) -> usize {
        self.trials.iter().filter(|t| t.state == state).count()
    }

    /// Trials that completed.
    pub fn completed(&self) -> usize {
        self.count(TrialState::Complete)
    }

    /// Trials that were pruned.
    pub fn pruned(&self) -> usize {
        self.count(TrialState::Pruned)
    }

    /// Trials that failed.
    pub fn failed(&self) -> usize {
        self.count(TrialState::Failed)
    }
}

/// log l(x) and log g(x) of TPE at some values of a parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct TpeDensities {
    /// Log-density of the good trials' estimator.
    pub log_l: Vec<f64>,
    /// Log-density of the bad trials' estimator.
    pub log_g: Vec<f64>,
}

/// Records each trial as a kiln-track run, a child of the study's run.
///
/// The child is named `<study>/trial-<n>` and tagged `kiln.tune.study` and `kiln.tune.trial`;
/// parameters are logged as they are drawn, intermediate values as the metric
/// `intermediate_value` at their step, and the objective as the metric `value` (step 0). A
/// complete trial finishes its run, a pruned one kills it (`pruned at step s`), a failed one
/// fails it with the reason; the tag `kiln.tune.state` says which.
#[derive(Debug, Clone)]
pub struct Tracking {
    store: Store,
    experiment: String,
    parent: Option<String>,
    capture_environment: bool,
}

impl Tracking {
    /// Trials become runs of `experiment` in `store`.
    pub fn new(store: &Store, experiment: &str) -> Self {
        Self { store: store.clone(), experiment: experiment.to_string(), parent: None, capture_environment: true }
    }

    /// The study's run, the parent of the trials' runs.
    pub fn parent(mut self, run_id: &str) -> Self {
        self.parent = Some(run_id.to_string());
        self
    }

    /// Whether each trial's run captures the environment (git, toolchain, GPUs); on by
    /// default, a few milliseconds per trial.
    pub fn capture_environment(mut self, capture: bool) -> Self {
        self.capture_environment = capture;
        self
    }

    fn start(&self, study: &str, number: u64) -> Result<Run> {
        let mut builder = self
            .store
            .run_builder(&self.experiment)
            .name(&format!("{study}/trial-{number}"))
            .tag("kiln.tune.study", study)
            .tag("kiln.tune.trial", &number.to_string())
            .capture_environment(self.capture_environment);
        if let Some(parent) = &self.parent {
            builder = builder.parent(parent);
        }
        Ok(builder.start()?)
    }
}

struct Inner {
    storage: Storage,
    state: StudyState,
    config: StudyConfig,
    sampler: Sampler,
    tracking: Option<Tracking>,
    heartbeat: Option<Duration>,
    /// Trials whose `Trial` came from this handle (or its clones): never stale here.
    live: BTreeSet<u64>,
    worker: String,
}

impl Inner {
    fn refresh(&mut self) -> Result<()> {
        self.storage.refresh(&mut self.state)
    }

    fn append(&mut self, make: &mut dyn FnMut(&StudyState) -> Result<Vec<Op>>) -> Result<()> {
        self.storage.append_with(&mut self.state, &mut |s| Ok((make(s)?, ())))
    }
}

/// A study: the trials of one hyperparameter search, in memory or in a journal file shared
/// by any number of processes.
///
/// `Study` is a cheap handle (`Clone`, `Send`, `Sync`); clones share one replay of the
/// journal. Several trials may run at once, from one process or many.
#[derive(Clone)]
pub struct Study {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Study {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Study")
            .field("name", &inner.config.name)
            .field("journal", &inner.storage.path())
            .field("trials", &inner.state.trials.len())
            .finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `host:pid`, and the Slurm array task or job when there is one.
fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    let mut id = format!("{host}:{}", std::process::id());
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(job), Some(task)) = (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        id.push_str(&format!(" slurm {job}_{task}"));
    } else if let Some(job) = var("SLURM_JOB_ID") {
        id.push_str(&format!(" slurm {job}"));
    }
    id
}

#[derive(PartialEq)]
enum Mode {
    Create,
    Open,
    OpenOrCreate,
}

/// Finish lines for running trials that are not live in this handle and have been silent: for longer
/// than `older_than`, or, without it, for two of the heartbeat intervals they promised.
fn stale_ops(state: &StudyState, now: i64, live: &BTreeSet<u64>, older_than: Option<Duration>) -> Vec<Op> {
    let mut ops = Vec::new();
    for &t in &state.running {
        if live.contains(&u64::from(t)) {
            continue;
        }
        let rec = &state.trials[t as usize];
        let limit = match (older_than, rec.heartbeat_ms) {
            (Some(d), _) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            (None, Some(beat)) => i64::try_from(beat).unwrap_or(i64::MAX).saturating_mul(2),
            (None, None) => continue,
        };
        let silent = now - rec.last_ms;
        if silent >= limit {
            ops.push(Op::Finish {
                trial: u64::from(t),
                ms: now,
                state: TrialState::Failed,
                value: None,
                reason: Some(format!(
                    "stale: nothing from its worker ({}) for {:.1} s",
                    rec.worker,
                    silent as f64 / 1000.0
                )),
            });
        }
    }
    ops
}

fn check_distribution(state: &StudyState, name: &str, dist: &Distribution) -> Result<()> {
    match state.column(name) {
        Some(col) if col.dist != *dist => Err(Error::DistributionMismatch {
            name: name.to_string(),
            existing: col.dist.to_string(),
            asked: dist.to_string(),
        }),
        _ => Ok(()),
    }
}

fn check_running(state: &StudyState, study: &str, trial: u64) -> Result<()> {
    match state.trials.get(trial as usize) {
        Some(t) if t.state == TrialState::Running => Ok(()),
        Some(t) => Err(Error::TrialNotRunning { study: study.to_string(), trial, state: t.state.to_string() }),
        None => Err(Error::TrialNotRunning { study: study.to_string(), trial, state: "unknown".into() }),
    }
}

impl Study {
    /// A study held in this process only (nothing is written), e.g. for tests and quick
    /// searches.
    pub fn in_memory(config: StudyConfig) -> Result<Self> {
        config.validate()?;
        let mut state = StudyState::default();
        let mut storage = Storage::Memory { lines: 0 };
        let op = Op::Study { format: FORMAT_VERSION, ms: now_ms(), worker: worker_id(), study: config.clone() };
        storage.append_with(&mut state, &mut |_| Ok((vec![op.clone()], ())))?;
        Self::from_parts(storage, state, config)
    }

    /// Creates a study in a new journal file (its directory is created); an existing study
    /// there is an error.
    pub fn create(path: impl AsRef<Path>, config: StudyConfig) -> Result<Self> {
        Self::open_with(path.as_ref(), Some(config), Mode::Create)
    }

    /// Opens the study in an existing journal file, with the configuration stored there.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), None, Mode::Open)
    }

    /// Opens the study in a journal file, creating it with `config` if there is none: what
    /// every worker of a job array calls. A stored study with another configuration is
    /// [`Error::StudyMismatch`].
    pub fn open_or_create(path: impl AsRef<Path>, config: StudyConfig) -> Result<Self> {
        Self::open_with(path.as_ref(), Some(config), Mode::OpenOrCreate)
    }

    fn open_with(path: &Path, config: Option<StudyConfig>, mode: Mode) -> Result<Self> {
        if let Some(c) = &config {
            c.validate()?;
        }
        if mode == Mode::Open {
            std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        }
        let mut storage = Storage::File(JournalFile::new(path)?);
        let mut state = StudyState::default();
        let existed = match &config {
            Some(c) if mode != Mode::Open => {
                let op = Op::Study { format: FORMAT_VERSION, ms: now_ms(), worker: worker_id(), study: c.clone() };
                storage.append_with(&mut state, &mut |s| {
                    Ok(if s.config.is_none() { (vec![op.clone()], false) } else { (Vec::new(), true) })
                })?
            }
            _ => {
                storage.refresh(&mut state)?;
                true
            }
        };
        let stored = state.config.clone().ok_or_else(|| Error::Journal {
            path: path.to_path_buf(),
            line: 1,
            message: "the journal holds no study (it is empty)".into(),
        })?;
        if existed && let Some(given) = &config {
            if mode == Mode::Create {
                return Err(Error::StudyMismatch {
                    path: path.to_path_buf(),
                    message: format!("study `{}` already exists (use `open` or `open_or_create`)", stored.name),
                });
            }
            if *given != stored {
                let json = |c: &StudyConfig| serde_json::to_string(c).unwrap_or_default();
                return Err(Error::StudyMismatch {
                    path: path.to_path_buf(),
                    message: format!("stored {}, given {}", json(&stored), json(given)),
                });
            }
        }
        Self::from_parts(storage, state, stored)
    }

    fn from_parts(storage: Storage, state: StudyState, config: StudyConfig) -> Result<Self> {
        // A stored config is checked like a given one: a journal written by hand (or by a
        // future version) must not divide by a zero interval.
        config.validate()?;
        let sampler = Sampler::new(&config.sampler)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                storage,
                state,
                config,
                sampler,
                tracking: None,
                heartbeat: None,
                live: BTreeSet::new(),
                worker: worker_id(),
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is a replay of the journal; a panic elsewhere cannot leave it half-applied.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The study's configuration.
    pub fn config(&self) -> StudyConfig {
        self.lock().config.clone()
    }

    /// The journal file, `None` in memory.
    pub fn path(&self) -> Option<PathBuf> {
        self.lock().storage.path().map(Path::to_path_buf)
    }

    /// Counters of this process's view of the journal (torn lines seen, ...).
    pub fn journal_stats(&self) -> JournalStats {
        self.lock().storage.stats()
    }

    /// Records each trial from now on as a kiln-track child run (`None` stops).
    pub fn set_tracking(&self, tracking: Option<Tracking>) {
        self.lock().tracking = tracking;
    }

    /// Makes trials asked from now on write a heartbeat line every `interval` from a
    /// background thread while they run. Any worker's [`Study::ask`] then fails such a trial
    /// once it has been silent for two intervals (its process died). `None` stops.
    pub fn set_heartbeat(&self, interval: Option<Duration>) {
        self.lock().heartbeat = interval.filter(|d| !d.is_zero());
    }

    /// Creates a trial. Any trial whose worker promised heartbeats and missed two is failed
    /// first. With a grid sampler, [`Error::GridExhausted`] once every point has a trial.
    pub fn ask(&self) -> Result<Trial> {
        self.ask_within(u64::MAX)?
            .ok_or_else(|| Error::Config("the study holds the largest possible number of trials".into()))
    }

    /// Creates a trial unless the study already holds `max_trials` (counted over all workers
    /// and states). Numbers are assigned under the journal lock, so a job array sharing a
    /// budget creates exactly `max_trials` trials.
    pub fn ask_within(&self, max_trials: u64) -> Result<Option<Trial>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now = now_ms();
        let heartbeat = inner.heartbeat;
        let worker = inner.worker.clone();
        let study = inner.config.name.clone();
        let live = inner.live.clone();
        let sampler = &inner.sampler;
        let number = inner.storage.append_with(&mut inner.state, &mut |s| {
            let mut ops = stale_ops(s, now, &live, None);
            let number = s.trials.len() as u64;
            if number >= max_trials {
                return Ok((ops, None));
            }
            let grid_id = sampler.next_grid_point(s, &study)?;
            ops.push(Op::Trial {
                number,
                ms: now,
                worker: worker.clone(),
                grid_id,
                heartbeat_ms: heartbeat
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4).clamp(1, u64::MAX / 4)),
            });
            Ok((ops, Some(number)))
        })?;
        let Some(number) = number else { return Ok(None) };
        let run = match &inner.tracking {
            None => None,
            Some(t) => match t.start(&study, number) {
                Ok(run) => Some(run),
                Err(e) => {
                    let reason = format!("could not start its tracking run: {e}");
                    inner
                        .append(&mut |_| Ok(vec![finish_op(number, TrialState::Failed, None, Some(reason.clone()))]))?;
                    return Err(e);
                }
            },
        };
        inner.live.insert(number);
        drop(guard);
        let beat = heartbeat.and_then(|every| Beat::spawn(self.clone(), number, every));
        Ok(Some(Trial {
            study: self.clone(),
            number,
            params: BTreeMap::new(),
            distributions: BTreeMap::new(),
            last_step: None,
            prune_advised: false,
            run,
            beat,
            done: false,
        }))
    }

    /// Ends `trial` with `outcome`.
    pub fn tell(&self, trial: Trial, outcome: Outcome) -> Result<FrozenTrial> {
        if !Arc::ptr_eq(&self.inner, &trial.study.inner) {
            return Err(Error::Config(format!("trial {} belongs to another study", trial.number)));
        }
        trial.tell(outcome)
    }

    /// Runs `n_trials` trials of `objective` in this process (fewer if a grid runs out).
    ///
    /// `Ok(v)` completes the trial (NaN fails it). An `Err` after [`Trial::should_prune`]
    /// said yes prunes it (return [`Trial::pruned`], as Optuna's `raise TrialPruned()`); any
    /// other `Err` fails it with the error's message, and the loop goes on. Errors of the
    /// journal itself stop the loop and are returned. Panics propagate; the trial is
    /// recorded as failed on the way.
    pub fn optimize<E: fmt::Display>(
        &self,
        mut objective: impl FnMut(&mut Trial) -> std::result::Result<f64, E>,
        n_trials: usize,
    ) -> Result<OptimizeReport> {
        self.run_loop(&mut |t| objective(t).map_err(|e| e.to_string()), n_trials, u64::MAX)
    }

    /// Runs trials of `objective` until the study holds `total_trials` trials, counting
    /// every worker's: the loop each task of a job array runs to share one budget.
    pub fn optimize_total<E: fmt::Display>(
        &self,
        mut objective: impl FnMut(&mut Trial) -> std::result::Result<f64, E>,
        total_trials: u64,
    ) -> Result<OptimizeReport> {
        self.run_loop(&mut |t| objective(t).map_err(|e| e.to_string()), usize::MAX, total_trials)
    }

    fn run_loop(
        &self,
        objective: &mut dyn FnMut(&mut Trial) -> std::result::Result<f64, String>,
        n_trials: usize,
        total: u64,
    ) -> Result<OptimizeReport> {
        let mut report = OptimizeReport::default();
        for _ in 0..n_trials {
            let mut trial = match self.ask_within(total) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(Error::GridExhausted { study, points }) => {
                    tracing::info!(study, "the grid is exhausted: all {points} points were given to trials");
                    report.grid_exhausted = true;
                    break;
                }
                Err(e) => return Err(e),
            };
            let number = trial.number;
            let outcome = match objective(&mut trial) {
                Ok(v) => Outcome::Complete(v),
                Err(_) if trial.prune_advised => Outcome::Pruned,
                Err(e) => {
                    tracing::warn!(trial = number, "trial failed: {e}");
                    Outcome::Failed(e)
                }
            };
            match trial.tell(outcome) {
                Ok(frozen) => report.trials.push(frozen),
                Err(e @ Error::TrialNotRunning { .. }) => tracing::warn!(trial = number, "{e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Every trial, after reading what other workers appended.
    pub fn trials(&self) -> Result<Vec<FrozenTrial>> {
        let mut inner = self.lock();
        inner.refresh()?;
        Ok((0..inner.state.trials.len()).filter_map(|n| inner.state.frozen(n)).collect())
    }

    /// Trial `number`, after reading what other workers appended.
    pub fn trial(&self, number: u64) -> Result<Option<FrozenTrial>> {
        let mut inner = self.lock();
        inner.refresh()?;
        Ok(inner.state.frozen(number as usize))
    }

    /// The complete trial with the best value (the earliest among equals).
    pub fn best_trial(&self) -> Result<Option<FrozenTrial>> {
        let mut inner = self.lock();
        inner.refresh()?;
        Ok(inner.state.complete.first().and_then(|&(_, n)| inner.state.frozen(n as usize)))
    }

    /// Fails every running trial with no line for `older_than` (except the trials running
    /// through this handle or its clones): trials whose worker was killed (Slurm time limit, OOM killer, node
    /// failure). A worker that was merely slow finds its trial failed at its next report or
    /// tell ([`Error::TrialNotRunning`]). Returns the trials failed.
    pub fn fail_stale(&self, older_than: Duration) -> Result<Vec<u64>> {
        let mut inner = self.lock();
        let live = inner.live.clone();
        let now = now_ms();
        let mut failed = Vec::new();
        inner.append(&mut |s| {
            let ops = stale_ops(s, now, &live, Some(older_than));
            failed = ops
                .iter()
                .filter_map(|op| if let Op::Finish { trial, .. } = op { Some(*trial) } else { None })
                .collect();
            Ok(ops)
        })?;
        Ok(failed)
    }

    /// Adds a finished trial (e.g. from an earlier search) and returns its number.
    pub fn add_trial(&self, trial: &NewTrial) -> Result<u64> {
        for (name, pv) in &trial.params {
            pv.distribution.validate(name)?;
            if pv.distribution.to_internal(&pv.value).is_none() {
                return Err(Error::Config(format!("parameter `{name}`: {} is not in {}", pv.value, pv.distribution)));
            }
        }
        let mut inner = self.lock();
        let worker = inner.worker.clone();
        let now = now_ms();
        let mut made = 0;
        inner.append(&mut |s| {
            for (name, pv) in &trial.params {
                check_distribution(s, name, &pv.distribution)?;
            }
            let number = s.trials.len() as u64;
            made = number;
            let mut ops =
                vec![Op::Trial { number, ms: now, worker: worker.clone(), grid_id: None, heartbeat_ms: None }];
            if !trial.params.is_empty() {
                ops.push(Op::Params { trial: number, ms: now, params: trial.params.clone() });
            }
            for (&step, &value) in &trial.intermediate_values {
                ops.push(Op::Report { trial: number, ms: now, step, value });
            }
            let last = trial.intermediate_values.values().next_back().copied();
            ops.push(outcome_op(number, &trial.outcome, last));
            Ok(ops)
        })?;
        Ok(made)
    }

    /// log l(x) and log g(x) of the TPE sampler for `param` at `values`, from the current
    /// history: what TPE weighs when it suggests `param` next (its candidates maximise
    /// log l − log g). For diagnostics and plots; a study with another sampler uses TPE's
    /// defaults.
    pub fn tpe_log_densities(&self, param: &str, values: &[Value]) -> Result<TpeDensities> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.refresh()?;
        let dist = inner
            .state
            .column(param)
            .map(|c| c.dist.clone())
            .ok_or_else(|| Error::Config(format!("no trial has the parameter `{param}`")))?;
        let xs = values
            .iter()
            .map(|v| {
                dist.to_internal(v).ok_or_else(|| Error::Config(format!("parameter `{param}`: {v} is not in {dist}")))
            })
            .collect::<Result<Vec<f64>>>()?;
        let (log_l, log_g) = match &mut inner.sampler {
            Sampler::Tpe { config, scratch } => tpe::log_densities(config, scratch, &inner.state, param, &dist, &xs),
            _ => tpe::log_densities(&TpeConfig::default(), &mut TpeScratch::default(), &inner.state, param, &dist, &xs),
        };
        Ok(TpeDensities { log_l, log_g })
    }

    fn beat(&self, trial: u64) -> Result<()> {
        let mut inner = self.lock();
        let study = inner.config.name.clone();
        let now = now_ms();
        inner.append(&mut |s| {
            check_running(s, &study, trial)?;
            Ok(vec![Op::Heartbeat { trial, ms: now }])
        })
    }
}

fn finish_op(trial: u64, state: TrialState, value: Option<f64>, reason: Option<String>) -> Op {
    Op::Finish { trial, ms: now_ms(), state, value, reason }
}

fn outcome_op(trial: u64, outcome: &Outcome, last_intermediate: Option<f64>) -> Op {
    match outcome {
        Outcome::Complete(v) if v.is_nan() => {
            finish_op(trial, TrialState::Failed, None, Some("the objective returned NaN".into()))
        }
        Outcome::Complete(v) => finish_op(trial, TrialState::Complete, Some(*v), None),
        Outcome::Pruned => finish_op(trial, TrialState::Pruned, last_intermediate.filter(|v| !v.is_nan()), None),
        Outcome::Failed(reason) => finish_op(trial, TrialState::Failed, None, Some(reason.clone())),
    }
}

/// A background heartbeat for one trial.
#[derive(Debug)]
struct Beat {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Beat {
    fn spawn(study: Study, trial: u64, every: Duration) -> Option<Self> {
        let (stop, rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new().name(format!("kiln-tune-beat-{trial}")).spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                if let Err(e) = study.beat(trial) {
                    tracing::warn!(trial, "heartbeat: {e}");
                    if matches!(e, Error::TrialNotRunning { .. }) {
                        break;
                    }
                }
            }
        });
        match spawned {
            Ok(handle) => Some(Self { stop, handle }),
            Err(e) => {
                tracing::warn!(trial, "could not start the heartbeat thread: {e}");
                None
            }
        }
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.handle.join();
    }
}

/// One evaluation of the objective: draws parameters, reports intermediate values, asks the
/// pruner, and ends with [`Trial::complete`], [`Trial::prune`] or [`Trial::fail`] (or
/// [`Study::tell`]). A trial dropped without an end is recorded as failed.
#[derive(Debug)]
pub struct Trial {
    study: Study,
    number: u64,
    params: BTreeMap<String, Value>,
    distributions: BTreeMap<String, Distribution>,
    last_step: Option<u64>,
    prune_advised: bool,
    run: Option<Run>,
    beat: Option<Beat>,
    done: bool,
}

impl Trial {
    /// The trial's number, unique in the study.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The parameters drawn so far.
    pub fn params(&self) -> &BTreeMap<String, Value> {
        &self.params
    }

    /// The kiln-track run of this trial, when the study is tracked, to log more to it.
    pub fn run(&mut self) -> Option<&mut Run> {
        self.run.as_mut()
    }

    /// Draws `name` from `distribution` (the same value again if this trial drew it already).
    /// A distribution other than the one the study has for `name` is
    /// [`Error::DistributionMismatch`].
    pub fn suggest(&mut self, name: &str, distribution: &Distribution) -> Result<Value> {
        distribution.validate(name)?;
        if let Some(v) = self.drawn(name, distribution)? {
            return Ok(v);
        }
        let study = self.study.clone();
        let mut guard = study.lock();
        let inner = &mut *guard;
        inner.refresh()?;
        let value = self.draw(inner, name, distribution)?;
        self.record(inner, vec![(name.to_string(), distribution.clone(), value.clone())])?;
        Ok(value)
    }

    /// A uniform float in `[low, high]`.
    pub fn suggest_float(&mut self, name: &str, low: f64, high: f64) -> Result<f64> {
        self.suggest_f64(name, &Distribution::float(low, high))
    }

    /// A log-uniform float in `[low, high]`.
    pub fn suggest_log_float(&mut self, name: &str, low: f64, high: f64) -> Result<f64> {
        self.suggest_f64(name, &Distribution::log_float(low, high))
    }

    /// A float on the grid `low, low + step, ..., high`.
    pub fn suggest_float_step(&mut self, name: &str, low: f64, high: f64, step: f64) -> Result<f64> {
        self.suggest_f64(name, &Distribution::float_step(low, high, step))
    }

    /// An integer in `[low, high]`.
    pub fn suggest_int(&mut self, name: &str, low: i64, high: i64) -> Result<i64> {
        self.suggest_i64(name, &Distribution::int(low, high))
    }

    /// An integer on the grid `low, low + step, ..., high`.
    pub fn suggest_int_step(&mut self, name: &str, low: i64, high: i64, step: i64) -> Result<i64> {
        self.suggest_i64(name, &Distribution::int_step(low, high, step))
    }

    /// An integer in `[low, high]` on a log scale.
    pub fn suggest_log_int(&mut self, name: &str, low: i64, high: i64) -> Result<i64> {
        self.suggest_i64(name, &Distribution::log_int(low, high))
    }

    /// One of `choices`.
    pub fn suggest_categorical(&mut self, name: &str, choices: &[&str]) -> Result<String> {
        let value = self.suggest(name, &Distribution::categorical(choices.iter().copied()))?;
        value.as_str().map(str::to_string).ok_or_else(|| Error::Config(format!("parameter `{name}` is not a string")))
    }

    fn suggest_f64(&mut self, name: &str, dist: &Distribution) -> Result<f64> {
        let v = self.suggest(name, dist)?;
        v.as_f64().ok_or_else(|| Error::Config(format!("parameter `{name}` is not a number")))
    }

    fn suggest_i64(&mut self, name: &str, dist: &Distribution) -> Result<i64> {
        let v = self.suggest(name, dist)?;
        v.as_i64().ok_or_else(|| Error::Config(format!("parameter `{name}` is not an integer")))
    }

    /// Draws every parameter of `space` active in this trial (a conditional parameter only
    /// when its parent took one of the listed values) and records them in one journal line.
    /// Returns the active parameters.
    pub fn suggest_space(&mut self, space: &SearchSpace) -> Result<BTreeMap<String, Value>> {
        space.validate()?;
        let study = self.study.clone();
        let mut guard = study.lock();
        let inner = &mut *guard;
        inner.refresh()?;
        let mut values: BTreeMap<String, Value> = BTreeMap::new();
        let mut new = Vec::new();
        for spec in &space.params {
            if let Some(cond) = &spec.when
                && !values.get(&cond.param).is_some_and(|v| cond.values.contains(v))
            {
                continue;
            }
            let value = match self.drawn(&spec.name, &spec.distribution)? {
                Some(v) => v,
                None => {
                    let v = self.draw(inner, &spec.name, &spec.distribution)?;
                    new.push((spec.name.clone(), spec.distribution.clone(), v.clone()));
                    v
                }
            };
            values.insert(spec.name.clone(), value);
        }
        if !new.is_empty() {
            self.record(inner, new)?;
        }
        Ok(values)
    }

    /// The value drawn before, if any; another distribution than before is an error.
    fn drawn(&self, name: &str, dist: &Distribution) -> Result<Option<Value>> {
        match self.distributions.get(name) {
            None => Ok(None),
            Some(d) if d == dist => Ok(self.params.get(name).cloned()),
            Some(d) => Err(Error::DistributionMismatch {
                name: name.to_string(),
                existing: d.to_string(),
                asked: dist.to_string(),
            }),
        }
    }

    fn draw(&self, inner: &mut Inner, name: &str, dist: &Distribution) -> Result<Value> {
        check_distribution(&inner.state, name, dist)?;
        let internal = inner.sampler.sample(&inner.state, self.number, name, dist)?;
        Ok(dist.to_external(internal))
    }

    fn record(&mut self, inner: &mut Inner, drawn: Vec<(String, Distribution, Value)>) -> Result<()> {
        let study = inner.config.name.clone();
        let number = self.number;
        let now = now_ms();
        let params: BTreeMap<String, ParamValue> = drawn
            .iter()
            .map(|(n, d, v)| (n.clone(), ParamValue { distribution: d.clone(), value: v.clone() }))
            .collect();
        inner.append(&mut |s| {
            check_running(s, &study, number)?;
            for (name, pv) in &params {
                check_distribution(s, name, &pv.distribution)?;
            }
            Ok(vec![Op::Params { trial: number, ms: now, params: params.clone() }])
        })?;
        for (name, dist, value) in drawn {
            if let Some(run) = &mut self.run {
                run.log_param(&name, &value)?;
            }
            self.params.insert(name.clone(), value);
            self.distributions.insert(name, dist);
        }
        Ok(())
    }

    /// Reports the objective's intermediate `value` at `step` (an epoch, say), for the
    /// pruner. A step reported twice keeps its first value, as in Optuna.
    pub fn report(&mut self, step: u64, value: f64) -> Result<()> {
        let number = self.number;
        let now = now_ms();
        let mut inner = self.study.lock();
        let study = inner.config.name.clone();
        let mut repeated = false;
        inner.append(&mut |s| {
            check_running(s, &study, number)?;
            repeated = s.trials[number as usize].intermediate.iter().any(|(st, _)| *st == step);
            Ok(if repeated { Vec::new() } else { vec![Op::Report { trial: number, ms: now, step, value }] })
        })?;
        drop(inner);
        if repeated {
            tracing::warn!(trial = number, step, "step {step} was reported before; the new value is ignored");
            return Ok(());
        }
        self.last_step = Some(self.last_step.map_or(step, |s| s.max(step)));
        if let Some(run) = &mut self.run {
            run.log_metric("intermediate_value", step, value)?;
        }
        Ok(())
    }

    /// Whether the pruner would stop this trial at its latest step. When it says yes, end
    /// the trial with [`Trial::prune`], or return [`Trial::pruned`] from the objective.
    pub fn should_prune(&mut self) -> Result<bool> {
        let number = self.number;
        let mut guard = self.study.lock();
        let inner = &mut *guard;
        let study = inner.config.name.clone();
        let prune = match inner.config.pruner.clone() {
            PrunerConfig::None => false,
            PrunerConfig::Median(cfg) => {
                inner.refresh()?;
                pruner::median(&cfg, &inner.state, number as usize)
            }
            PrunerConfig::SuccessiveHalving(cfg) => {
                let now = now_ms();
                inner.storage.append_with(&mut inner.state, &mut |s| {
                    check_running(s, &study, number)?;
                    Ok(pruner::successive_halving(&cfg, s, number as usize, now))
                })?
            }
        };
        self.prune_advised |= prune;
        Ok(prune)
    }

    /// The error to return from an objective after [`Trial::should_prune`] said yes.
    pub fn pruned(&self) -> Error {
        Error::TrialPruned { trial: self.number, step: self.last_step }
    }

    /// Records a user attribute (any JSON value).
    pub fn set_user_attr(&mut self, key: &str, value: Value) -> Result<()> {
        let number = self.number;
        let now = now_ms();
        let mut inner = self.study.lock();
        let study = inner.config.name.clone();
        inner.append(&mut |s| {
            check_running(s, &study, number)?;
            Ok(vec![Op::Attr { trial: number, ms: now, key: key.to_string(), value: value.clone() }])
        })
    }

    /// Records that the worker is alive (a report does too), for long steps without reports.
    pub fn heartbeat(&mut self) -> Result<()> {
        self.study.beat(self.number)
    }

    /// Ends the trial with the objective `value` (NaN records a failure).
    pub fn complete(self, value: f64) -> Result<FrozenTrial> {
        self.tell(Outcome::Complete(value))
    }

    /// Ends the trial as pruned.
    pub fn prune(self) -> Result<FrozenTrial> {
        self.tell(Outcome::Pruned)
    }

    /// Ends the trial as failed, recording why.
    pub fn fail(self, reason: &str) -> Result<FrozenTrial> {
        self.tell(Outcome::Failed(reason.to_string()))
    }

    fn tell(mut self, outcome: Outcome) -> Result<FrozenTrial> {
        self.end(outcome)
    }

    fn end(&mut self, outcome: Outcome) -> Result<FrozenTrial> {
        self.done = true;
        if let Some(beat) = self.beat.take() {
            beat.stop(); // before taking the lock the heartbeat thread may be waiting for
        }
        let number = self.number;
        let mut inner = self.study.lock();
        inner.live.remove(&number);
        let study = inner.config.name.clone();
        inner.append(&mut |s| {
            check_running(s, &study, number)?;
            let last = s.trials[number as usize].last_step().map(|(_, v)| v);
            Ok(vec![outcome_op(number, &outcome, last)])
        })?;
        let frozen = inner
            .state
            .frozen(number as usize)
            .ok_or_else(|| Error::Config(format!("trial {number} vanished from the study")))?;
        drop(inner);
        if let Some(mut run) = self.run.take() {
            run.set_tag("kiln.tune.state", frozen.state.as_str())?;
            match frozen.state {
                TrialState::Complete => {
                    run.log_metric("value", 0, frozen.value.unwrap_or(f64::NAN))?;
                    run.finish()?;
                }
                TrialState::Pruned => {
                    let at = self.last_step.map_or("before any step".to_string(), |s| format!("at step {s}"));
                    run.kill(&format!("pruned {at}"))?;
                }
                _ => run.fail(frozen.reason.as_deref().unwrap_or("failed"))?,
            }
        }
        Ok(frozen)
    }
}

impl Drop for Trial {
    fn drop(&mut self) {
        if !self.done {
            let why = if std::thread::panicking() {
                "the objective panicked"
            } else {
                "the trial was dropped without being told how it ended"
            };
            if let Err(e) = self.end(Outcome::Failed(why.to_string())) {
                tracing::warn!(trial = self.number, "could not record the end of the trial: {e}");
            }
        }
    }
}
