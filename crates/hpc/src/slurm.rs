//! The Slurm backend: `sbatch` to submit, one shared poller per process for status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Submission, SubmittedPart, check_backend, in_task_order, summarise};
use crate::job::{ArrayChunk, Dependency};
use crate::parse::{self, SACCT_FIELDS};
use crate::state::{JobRecord, JobRef, JobState};
use crate::{Error, JobSpec, Result};

/// How the Slurm backend talks to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlurmConfig {
    /// Directory holding `sbatch`, `squeue`, `sacct`, `scontrol` and `scancel`; `None` looks them
    /// up on `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Time between status polls while jobs change.
    pub poll_interval: Duration,
    /// The poll interval grows by half each quiet tick (and doubles after a failed one) up to
    /// this.
    pub max_poll_interval: Duration,
    /// Retries of a command that failed transiently ("Socket timed out", "Resource
    /// temporarily unavailable"), with jittered exponential backoff.
    pub retries: u32,
    /// The first retry's delay; each further retry doubles it.
    pub retry_delay: Duration,
    /// Polls a tracked job may be missing from every source before it is reported
    /// [`JobState::Lost`].
    pub lost_after: u32,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            bin_dir: None,
            poll_interval: Duration::from_secs(2),
            max_poll_interval: Duration::from_secs(30),
            retries: 5,
            retry_delay: Duration::from_secs(1),
            lost_after: 3,
        }
    }
}

/// What kiln reads once from `scontrol show config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster's name.
    pub name: String,
    /// Array task ids must be below this.
    pub max_array_size: u32,
    /// Whether accounting is on (so `sacct` works).
    pub accounting: bool,
}

/// Counts of the Slurm commands one poller issued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Poll ticks.
    pub ticks: u64,
    /// `sbatch` calls, retries included.
    pub sbatch: u64,
    /// `squeue` calls.
    pub squeue: u64,
    /// `sacct` calls.
    pub sacct: u64,
    /// `scontrol` calls.
    pub scontrol: u64,
    /// `scancel` calls.
    pub scancel: u64,
}

/// Runs jobs on a Slurm cluster through its command-line tools.
///
/// Status comes from **one poller per process** (per [`SlurmConfig`]), shared by every
/// `SlurmBackend` value and every waiting thread: each tick it runs one `squeue` for all tracked
/// jobs, whatever their number. A tracked job missing from `squeue` is looked up with one
/// `sacct -X` call when accounting is on, else with `scontrol show job`, and reported
/// [`JobState::Lost`] when it has vanished from both.
#[derive(Clone)]
pub struct SlurmBackend {
    poller: Arc<Poller>,
}

impl fmt::Debug for SlurmBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlurmBackend").field("config", &self.poller.config).finish_non_exhaustive()
    }
}

impl SlurmBackend {
    /// A backend with this configuration, sharing the process's poller for it.
    pub fn new(config: SlurmConfig) -> SlurmBackend {
        static REGISTRY: OnceLock<Mutex<HashMap<SlurmConfig, Arc<Poller>>>> = OnceLock::new();
        let registry = REGISTRY.get_or_init(Default::default);
        let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
        let poller = map.entry(config.clone()).or_insert_with(|| Arc::new(Poller::new(config))).clone();
        SlurmBackend { poller }
    }

    /// A backend with the default configuration, after checking that a controller answers
    /// (`scontrol show config`). Tests use this to skip when no cluster is reachable.
    pub fn detect() -> Result<SlurmBackend> {
        SlurmBackend::connect(SlurmConfig::default())
    }

    /// [`SlurmBackend::new`], after checking that a controller answers.
    pub fn connect(config: SlurmConfig) -> Result<SlurmBackend> {
        let b = SlurmBackend::new(config);
        b.cluster_info()?;
        Ok(b)
    }

    /// The cluster's settings, read once per process.
    pub fn cluster_info(&self) -> Result<ClusterInfo> {
        self.poller.cluster_info()
    }

    /// Commands issued so far by this backend's poller (shared with every backend of the same
    /// configuration).
    pub fn poll_stats(&self) -> PollStats {
        PollStats { ticks: self.poller.lock().ticks, ..self.poller.cmds.stats() }
    }

    /// Sends `signal` (such as `USR2`) to the batch shell of every job of the submission
    /// (`scancel --batch --signal`), which is how a preemption warning arrives.
    pub fn signal(&self, submission: &Submission, signal: &str) -> Result<()> {
        check_backend(self, submission)?;
        let mut args = vec!["--batch".to_string(), format!("--signal={signal}")];
        args.extend(submission.job_ids().iter().map(u64::to_string));
        self.poller.cmds.run(Tool::Scancel, &args, None)?;
        Ok(())
    }
}

/// How an array is cut into `sbatch` calls so every task id stays below `MaxArraySize`.
pub(crate) fn array_chunks(first: u32, last: u32, max_array_size: u32) -> Vec<ArrayChunk> {
    let max = max_array_size.max(1);
    if last < max {
        return vec![ArrayChunk { first, last, offset: 0 }];
    }
    let mut out = Vec::new();
    let mut start = first;
    loop {
        let end = last.min(start.saturating_add(max - 1));
        out.push(ArrayChunk { first: 0, last: end - start, offset: start });
        if end == last {
            return out;
        }
        start = end + 1;
    }
}

impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&self, spec: &JobSpec) -> Result<Submission> {
        spec.validate()?;
        let chunks: Vec<Option<ArrayChunk>> = match spec.array {
            Some(a) => {
                let max = self.cluster_info()?.max_array_size;
                array_chunks(a.first, a.last, max).into_iter().map(Some).collect()
            }
            None => vec![None],
        };
        let throttled = spec.array.is_some_and(|a| a.throttle.is_some());
        let mut parts: Vec<SubmittedPart> = Vec::new();
        for chunk in chunks {
            let mut spec = spec.clone();
            // With a throttle, chunks run one after another, so the throttle holds for the
            // whole array and not per chunk.
            if throttled && let Some(prev) = parts.last() {
                spec.dependencies.push(Dependency::AfterAny(vec![prev.job]));
            }
            let script = spec.render(chunk);
            let submitted = self
                .poller
                .cmds
                .run(Tool::Sbatch, &["--parsable".into()], Some(&script))
                .and_then(|out| parse::parse_sbatch(&out));
            let (job, cluster) = match submitted {
                Ok(id) => id,
                Err(e) => {
                    // Do not leave the parts already submitted running untracked.
                    if !parts.is_empty() {
                        let ids: Vec<String> = parts.iter().map(|p| p.job.to_string()).collect();
                        if let Err(cancel) = self.poller.cmds.run(Tool::Scancel, &ids, None) {
                            tracing::warn!(error = %cancel, jobs = ?ids, "cannot cancel the parts already submitted");
                        }
                    }
                    return Err(e);
                }
            };
            tracing::debug!(job, name = %spec.name, "submitted");
            parts.push(SubmittedPart {
                job,
                cluster,
                tasks: chunk.map(|c| (c.first, c.last)),
                offset: chunk.map_or(0, |c| c.offset),
            });
        }
        let submission = Submission { backend: self.name().into(), name: spec.name.clone(), parts };
        self.poller.watch(&submission);
        Ok(submission)
    }

    fn status(&self, submission: &Submission) -> Result<Vec<JobRecord>> {
        check_backend(self, submission)?;
        self.poller.watch(submission);
        let expected = submission.expected();
        let mut st = self.poller.lock();
        // Wait for the poller to have seen each job, at most two ticks.
        let start_tick = st.ticks;
        while expected.iter().any(|(id, _)| !st.records.contains_key(id))
            && st.ticks < start_tick + 2
            && st.thread_running
        {
            st = self
                .poller
                .updated
                .wait_timeout(st, self.poller.config.max_poll_interval)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let records = expected
            .iter()
            .map(|(id, _)| {
                st.records.get(id).cloned().unwrap_or_else(|| {
                    let mut r = JobRecord::new(*id, &submission.name, JobState::Pending);
                    r.reason = Some("not yet seen by squeue".into());
                    r
                })
            })
            .collect();
        Ok(in_task_order(submission, records))
    }

    fn wait(&self, submission: &Submission, timeout: Option<Duration>) -> Result<Vec<JobRecord>> {
        check_backend(self, submission)?;
        self.poller.watch(submission);
        let started = Instant::now();
        let expected = submission.expected();
        let mut st = self.poller.lock();
        loop {
            let done =
                expected.iter().filter_map(|(id, _)| st.records.get(id)).filter(|r| r.state.is_terminal()).count();
            if done == expected.len() {
                let records = expected.iter().filter_map(|(id, _)| st.records.get(id)).cloned().collect();
                return Ok(in_task_order(submission, records));
            }
            if st.failed_polls >= FAILED_POLLS_LIMIT {
                return Err(Error::Unreachable {
                    polls: st.failed_polls,
                    last_error: st.last_error.clone().unwrap_or_default(),
                });
            }
            if !st.thread_running {
                // The thread ended (or could not start): start it again.
                drop(st);
                self.poller.watch(submission);
                st = self.poller.lock();
                if !st.thread_running {
                    return Err(Error::Unreachable { polls: 0, last_error: st.last_error.clone().unwrap_or_default() });
                }
            }
            let left = match timeout {
                Some(t) => match t.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => {
                        let open: Vec<&JobRecord> = expected
                            .iter()
                            .filter_map(|(id, _)| st.records.get(id))
                            .filter(|r| !r.state.is_terminal())
                            .collect();
                        let mut states = summarise(open);
                        if let Some(e) = &st.last_error {
                            states.push_str(&format!("; last poll failed: {e}"));
                        }
                        return Err(Error::Timeout {
                            name: submission.name.clone(),
                            waited: started.elapsed(),
                            pending: expected.len() - done,
                            states,
                        });
                    }
                },
                None => self.poller.config.max_poll_interval,
            };
            st = self.poller.updated.wait_timeout(st, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn cancel(&self, submission: &Submission) -> Result<()> {
        check_backend(self, submission)?;
        let args: Vec<String> = submission.job_ids().iter().map(u64::to_string).collect();
        self.poller.cmds.run(Tool::Scancel, &args, None)?;
        Ok(())
    }
}

/// Polls in a row that may fail before waiters give up with [`Error::Unreachable`]. With the
/// default intervals that is several minutes of a controller that does not answer.
const FAILED_POLLS_LIMIT: u32 = 10;

/// The one poller for a configuration.
struct Poller {
    config: SlurmConfig,
    cmds: Commands,
    info: OnceLock<ClusterInfo>,
    state: Mutex<PollState>,
    updated: Condvar,
}

#[derive(Default)]
struct PollState {
    /// Tracked jobs by job id (the array's id for arrays).
    watched: BTreeMap<u64, Watch>,
    records: HashMap<JobRef, JobRecord>,
    thread_running: bool,
    ticks: u64,
    last_error: Option<String>,
    /// Polls in a row that failed.
    failed_polls: u32,
}

struct Watch {
    name: String,
    expected: Vec<JobRef>,
    misses: HashMap<JobRef, u32>,
}

impl Poller {
    fn new(config: SlurmConfig) -> Poller {
        Poller {
            cmds: Commands::new(&config),
            config,
            info: OnceLock::new(),
            state: Mutex::new(PollState::default()),
            updated: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster's settings, read once (`scontrol show config`).
    fn cluster_info(&self) -> Result<ClusterInfo> {
        if let Some(info) = self.info.get() {
            return Ok(info.clone());
        }
        let out = self.cmds.run(Tool::Scontrol, &["show".into(), "config".into()], None)?;
        let config = parse::parse_show_config(&out);
        let max_array_size = match config.get("MaxArraySize") {
            Some(v) => v.parse().map_err(|_| Error::Parse {
                command: "scontrol show config".into(),
                line: 0,
                message: format!("MaxArraySize: expected a number, got {v:?}"),
            })?,
            None => 1001,
        };
        let accounting =
            config.get("AccountingStorageType").is_some_and(|t| !t.is_empty() && t != "accounting_storage/none");
        let name = config.get("ClusterName").cloned().unwrap_or_default();
        let info = ClusterInfo { name, max_array_size, accounting };
        Ok(self.info.get_or_init(|| info).clone())
    }

    /// Tracks the submission's jobs and makes sure the polling thread runs.
    fn watch(self: &Arc<Self>, submission: &Submission) {
        let mut st = self.lock();
        let expected = submission.expected();
        for part in &submission.parts {
            st.watched.entry(part.job).or_insert_with(|| Watch {
                name: submission.name.clone(),
                expected: expected.iter().map(|(id, _)| *id).filter(|id| id.job == part.job).collect(),
                misses: HashMap::new(),
            });
        }
        if !st.thread_running {
            st.thread_running = true;
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new().name("kiln-slurm-poller".into()).spawn(move || me.run());
            if let Err(e) = spawned {
                st.thread_running = false;
                st.last_error = Some(format!("cannot start the polling thread: {e}"));
            }
        }
    }

    fn run(self: Arc<Self>) {
        /// Marks the thread stopped however it ends (a panic included), so the next watch()
        /// starts a new one and waiters stop waiting for ticks that will not come.
        struct Running<'a>(&'a Poller);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.thread_running = false;
                self.0.updated.notify_all();
            }
        }
        let _running = Running(&self);
        let mut interval = self.config.poll_interval;
        loop {
            let ids: Vec<u64> = {
                let st = self.lock();
                let ids: Vec<u64> = st
                    .watched
                    .iter()
                    .filter(|(_, w)| {
                        w.expected.iter().any(|id| !st.records.get(id).is_some_and(|r| r.state.is_terminal()))
                    })
                    .map(|(job, _)| *job)
                    .collect();
                if ids.is_empty() {
                    return;
                }
                ids
            };
            let result = self.tick(&ids);
            {
                let mut st = self.lock();
                st.ticks += 1;
                interval = match result {
                    Ok(true) => {
                        st.last_error = None;
                        st.failed_polls = 0;
                        self.config.poll_interval
                    }
                    Ok(false) => {
                        st.last_error = None;
                        st.failed_polls = 0;
                        interval.mul_f64(1.5).min(self.config.max_poll_interval)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "slurm status poll failed");
                        st.last_error = Some(e.to_string());
                        st.failed_polls += 1;
                        (interval * 2).min(self.config.max_poll_interval)
                    }
                };
                self.updated.notify_all();
            }
            std::thread::sleep(interval);
        }
    }

    /// One poll: one `squeue` for every id, then `sacct` or `scontrol` only for jobs it no
    /// longer lists. Returns whether anything changed.
    fn tick(&self, ids: &[u64]) -> Result<bool> {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let args = vec![
            "-a".into(),
            "-r".into(),
            "--states=all".into(),
            "-h".into(),
            "-j".into(),
            list.join(","),
            "-O".into(),
            parse::squeue_format(),
        ];
        let out = match self.cmds.run(Tool::Squeue, &args, None) {
            Ok(out) => out,
            // Every id purged: squeue refuses the whole list.
            Err(Error::Command { stderr, .. }) if stderr.contains("Invalid job id") => String::new(),
            Err(e) => return Err(e),
        };
        let mut seen: HashMap<JobRef, JobRecord> =
            parse::parse_squeue_rows(&out)?.into_iter().map(|row| (row.record.id, row.record)).collect();
        let missing_jobs: BTreeSet<u64> = {
            let st = self.lock();
            ids.iter()
                .filter(|job| {
                    st.watched[job]
                        .expected
                        .iter()
                        .any(|id| !seen.contains_key(id) && !st.records.get(id).is_some_and(|r| r.state.is_terminal()))
                })
                .copied()
                .collect()
        };
        if !missing_jobs.is_empty() {
            // Read once per process, on the first job squeue stops listing.
            let accounting = self.cluster_info().is_ok_and(|i| i.accounting);
            if accounting {
                let list: Vec<String> = missing_jobs.iter().map(u64::to_string).collect();
                let args = vec![
                    "-X".into(),
                    "--parsable2".into(),
                    "--noheader".into(),
                    "-j".into(),
                    list.join(","),
                    format!("--format={SACCT_FIELDS}"),
                ];
                let out = self.cmds.run(Tool::Sacct, &args, None)?;
                for r in parse::parse_sacct(&out)? {
                    seen.entry(r.id).or_insert(r);
                }
            } else {
                for job in &missing_jobs {
                    let args = vec!["-o".into(), "show".into(), "job".into(), job.to_string()];
                    match self.cmds.run(Tool::Scontrol, &args, None) {
                        Ok(out) => {
                            for r in parse::parse_scontrol_jobs(&out)? {
                                seen.entry(r.id).or_insert(r);
                            }
                        }
                        Err(Error::Command { stderr, .. }) if stderr.contains("Invalid job id") => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let mut changed = false;
        let mut st = self.lock();
        let PollState { watched, records, .. } = &mut *st;
        for job in ids {
            let Some(w) = watched.get_mut(job) else { continue };
            for id in &w.expected {
                if records.get(id).is_some_and(|r| r.state.is_terminal()) {
                    continue;
                }
                match seen.remove(id) {
                    Some(mut r) => {
                        w.misses.remove(id);
                        if let Some(old) = records.get(id) {
                            r.stdout = r.stdout.or_else(|| old.stdout.clone());
                            r.stderr = r.stderr.or_else(|| old.stderr.clone());
                        }
                        if records.get(id) != Some(&r) {
                            changed = true;
                            records.insert(*id, r);
                        }
                    }
                    None => {
                        let misses = w.misses.entry(*id).or_insert(0);
                        *misses += 1;
                        if *misses >= self.config.lost_after {
                            let mut r = records
                                .get(id)
                                .cloned()
                                .unwrap_or_else(|| JobRecord::new(*id, &w.name, JobState::Lost));
                            r.state = JobState::Lost;
                            r.reason = Some(format!(
                                "not listed by squeue, {} for {} polls",
                                if self.info.get().is_some_and(|i| i.accounting) { "sacct" } else { "scontrol" },
                                misses
                            ));
                            records.insert(*id, r);
                            changed = true;
                        }
                    }
                }
            }
        }
        Ok(changed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Sbatch,
    Squeue,
    Sacct,
    Scontrol,
    Scancel,
}

impl Tool {
    fn program(self) -> &'static str {
        match self {
            Tool::Sbatch => "sbatch",
            Tool::Squeue => "squeue",
            Tool::Sacct => "sacct",
            Tool::Scontrol => "scontrol",
            Tool::Scancel => "scancel",
        }
    }
}

/// Runs Slurm's tools, retrying transient failures, and counts the calls.
struct Commands {
    bin_dir: Option<PathBuf>,
    retries: u32,
    retry_delay: Duration,
    counts: [AtomicU64; 5],
}

impl Commands {
    fn new(config: &SlurmConfig) -> Commands {
        Commands {
            bin_dir: config.bin_dir.clone(),
            retries: config.retries,
            retry_delay: config.retry_delay,
            counts: Default::default(),
        }
    }

    fn stats(&self) -> PollStats {
        let c = |t: Tool| self.counts[t as usize].load(Ordering::Relaxed);
        PollStats {
            ticks: 0,
            sbatch: c(Tool::Sbatch),
            squeue: c(Tool::Squeue),
            sacct: c(Tool::Sacct),
            scontrol: c(Tool::Scontrol),
            scancel: c(Tool::Scancel),
        }
    }

    fn program(&self, tool: Tool) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(tool.program()),
            None => Path::new(tool.program()).to_path_buf(),
        }
    }

    /// Runs the tool; returns its standard output.
    fn run(&self, tool: Tool, args: &[String], stdin: Option<&str>) -> Result<String> {
        let program = self.program(tool);
        let line = format!("{} {}", program.display(), args.join(" "));
        let mut attempt = 0;
        loop {
            self.counts[tool as usize].fetch_add(1, Ordering::Relaxed);
            let output = run_once(&program, args, stdin).map_err(|e| Error::Command {
                command: line.clone(),
                status: "not started".into(),
                stderr: if e.kind() == std::io::ErrorKind::NotFound {
                    format!("{} not found (is Slurm installed and on PATH?)", program.display())
                } else {
                    e.to_string()
                },
            })?;
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if output.status.success() {
                return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
            }
            if attempt < self.retries && parse::is_transient(&stderr) {
                let delay = jitter(self.retry_delay * 2u32.saturating_pow(attempt));
                tracing::warn!(command = %line, %stderr, ?delay, "transient Slurm error; retrying");
                std::thread::sleep(delay);
                attempt += 1;
                continue;
            }
            return Err(Error::Command { command: line, status: output.status.to_string(), stderr });
        }
    }
}

fn run_once(program: &Path, args: &[String], stdin: Option<&str>) -> std::io::Result<std::process::Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits before reading its input closes the pipe; its exit status and
        // stderr then say why, so the write error is not the one to report.
        if let Err(e) = pipe.write_all(text.as_bytes())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    child.wait_with_output()
}

/// `d` scaled by a factor in [0.5, 1.5), from the clock and the process id (no RNG needed: this
/// only spreads retries of many clients apart).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    let mix = (u64::from(nanos) ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 1000;
    d.mul_f64(0.5 + mix as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_split_below_max_array_size() {
        let c = |a, b, m| array_chunks(a, b, m).into_iter().map(|c| (c.first, c.last, c.offset)).collect::<Vec<_>>();
        assert_eq!(c(0, 999, 1001), vec![(0, 999, 0)]);
        assert_eq!(c(5, 1000, 1001), vec![(5, 1000, 0)]);
        assert_eq!(c(0, 2500, 1001), vec![(0, 1000, 0), (0, 1000, 1001), (0, 498, 2002)]);
        assert_eq!(c(1000, 1001, 1001), vec![(0, 1, 1000)]);
        // Every user task id appears exactly once.
        let ids: Vec<u32> =
            array_chunks(3, 4000, 1001).iter().flat_map(|c| (c.first..=c.last).map(move |t| t + c.offset)).collect();
        assert_eq!(ids, (3..=4000).collect::<Vec<_>>());
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(1) && d < Duration::from_secs(3));
        }
    }
}
