//! Running jobs as local processes, with Slurm's semantics.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, Submission, SubmittedPart, check_backend, in_task_order, summarise};
use crate::job::Dependency;
use crate::parse::PathContext;
use crate::state::{JobRecord, JobRef, JobState};
use crate::{Error, JobSpec, Result};

/// Runs jobs as child processes of this one: at most `max_parallel` at once, array tasks
/// emulated (each task gets `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_JOB_ID`, `SLURM_ARRAY_TASK_COUNT`
/// ... and `KILN_ARRAY_TASK_ID`, and the `%` throttle holds), dependencies honoured, output in
/// log files. Time limits behave as under Slurm with kiln's wrapper: SIGUSR2
/// `signal_before_end` seconds before the limit, SIGTERM at the limit, SIGKILL a grace period
/// later; a job that ends non-zero after the signal is restarted (`SLURM_RESTART_COUNT`
/// incremented) up to its requeue limit. So a script tried on a laptop behaves the same when
/// submitted to the cluster.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log_dir: PathBuf,
    max_parallel: usize,
    kill_wait: Duration,
    next_job: AtomicU64,
    state: Mutex<LocalState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct LocalState {
    records: HashMap<JobRef, JobRecord>,
    /// Processes running now, over all submissions.
    running: usize,
    cancelled: HashSet<u64>,
}

impl LocalExecutor {
    /// An executor writing logs under `log_dir` (created if needed), running as many jobs at
    /// once as this machine has CPUs.
    pub fn new(log_dir: impl AsRef<Path>) -> Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_parallelism(log_dir, cpus)
    }

    /// An executor running at most `max_parallel` processes at once (at least 1).
    pub fn with_parallelism(log_dir: impl AsRef<Path>, max_parallel: usize) -> Result<Self> {
        let log_dir = log_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io { path: log_dir.clone(), source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                log_dir,
                max_parallel: max_parallel.max(1),
                kill_wait: Duration::from_secs(5),
                next_job: AtomicU64::new(1),
                state: Mutex::new(LocalState::default()),
                changed: Condvar::new(),
            }),
        })
    }

    /// Grace between SIGTERM and SIGKILL at a time limit or cancellation (Slurm's `KillWait`;
    /// default 5 s).
    pub fn kill_wait(mut self, d: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.kill_wait = d;
        }
        self
    }

    /// Submits the job and waits for every task.
    pub fn run(&self, spec: &JobSpec) -> Result<Vec<JobRecord>> {
        let submission = self.submit(spec)?;
        self.wait(&submission, None)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, id: JobRef, f: impl FnOnce(&mut JobRecord)) {
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&id) {
            f(r);
        }
        self.changed.notify_all();
    }

    fn job_records(st: &LocalState, job: u64) -> Vec<&JobRecord> {
        st.records.values().filter(|r| r.id.job == job).collect()
    }

    /// Waits for the dependencies; `Err(reason)` when they can never be satisfied.
    fn wait_for_dependencies(&self, spec: &JobSpec, job: u64) -> std::result::Result<(), String> {
        let mut st = self.lock();
        loop {
            if st.cancelled.contains(&job) {
                return Err("cancelled while pending".into());
            }
            let mut ready = true;
            for d in &spec.dependencies {
                let ended = |ids: &[u64], st: &LocalState| {
                    ids.iter().all(|id| Self::job_records(st, *id).iter().all(|r| r.state.is_terminal()))
                };
                match d {
                    Dependency::AfterAny(ids) => ready &= ended(ids, &st),
                    Dependency::AfterOk(ids) | Dependency::AfterNotOk(ids) => {
                        if !ended(ids, &st) {
                            ready = false;
                            continue;
                        }
                        let ok = ids.iter().all(|id| Self::job_records(&st, *id).iter().all(|r| r.success()));
                        if matches!(d, Dependency::AfterOk(_)) != ok {
                            return Err(format!("DependencyNeverSatisfied ({d:?})"));
                        }
                    }
                    Dependency::Singleton => {
                        ready &= !st
                            .records
                            .values()
                            .any(|r| r.id.job != job && r.name == spec.name && r.state == JobState::Running);
                    }
                }
            }
            if ready {
                return Ok(());
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Takes a process slot, or returns false when the job was cancelled meanwhile.
    fn acquire(&self, job: u64) -> bool {
        let mut st = self.lock();
        while st.running >= self.max_parallel && !st.cancelled.contains(&job) {
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if st.cancelled.contains(&job) {
            return false;
        }
        st.running += 1;
        true
    }

    fn release(&self) {
        let mut st = self.lock();
        st.running -= 1;
        self.changed.notify_all();
    }

    fn is_cancelled(&self, job: u64) -> bool {
        self.lock().cancelled.contains(&job)
    }
}

/// What one array task (or the job) needs to run.
struct Task {
    spec: Arc<JobSpec>,
    id: JobRef,
    unique_id: u64,
    task_count: u32,
}

impl Backend for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn submit(&self, spec: &JobSpec) -> Result<Submission> {
        spec.validate()?;
        let inner = &self.inner;
        let tasks: Vec<Option<u32>> = match spec.array {
            Some(a) => (a.first..=a.last).map(Some).collect(),
            None => vec![None],
        };
        {
            let st = inner.lock();
            for d in &spec.dependencies {
                if let Dependency::AfterOk(ids) | Dependency::AfterAny(ids) | Dependency::AfterNotOk(ids) = d
                    && let Some(id) = ids.iter().find(|id| Inner::job_records(&st, **id).is_empty())
                {
                    return Err(Error::InvalidSpec {
                        job: spec.name.clone(),
                        message: format!("dependency on job {id}, which this executor does not know"),
                    });
                }
            }
        }
        // Array tasks get unique ids after the array's, as under Slurm.
        let job = inner.next_job.fetch_add(1 + tasks.len() as u64, Ordering::Relaxed);
        {
            let mut st = inner.lock();
            for t in &tasks {
                let id = JobRef { job, task: *t };
                let mut r = JobRecord::new(id, &spec.name, JobState::Pending);
                r.reason = Some(if spec.dependencies.is_empty() { "Priority".into() } else { "Dependency".into() });
                st.records.insert(id, r);
            }
        }
        let spec = Arc::new(spec.clone());
        let workers = match spec.array {
            Some(a) => (a.len() as usize).min(a.throttle.map_or(usize::MAX, |t| t as usize)).min(inner.max_parallel),
            None => 1,
        };
        let next = Arc::new(AtomicU32::new(0));
        let tasks = Arc::new(tasks);
        let me = Arc::clone(inner);
        let spec2 = Arc::clone(&spec);
        std::thread::Builder::new()
            .name(format!("kiln-local-{job}"))
            .spawn(move || {
                if let Err(reason) = me.wait_for_dependencies(&spec2, job) {
                    for t in tasks.iter() {
                        me.update(JobRef { job, task: *t }, |r| {
                            r.state = JobState::Cancelled { by: None };
                            r.reason = Some(reason.clone());
                        });
                    }
                    return;
                }
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        let (me, spec, next, tasks) =
                            (Arc::clone(&me), Arc::clone(&spec2), Arc::clone(&next), Arc::clone(&tasks));
                        std::thread::spawn(move || {
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                                let Some(task) = tasks.get(i) else { return };
                                let id = JobRef { job, task: *task };
                                if !me.acquire(job) {
                                    me.update(id, |r| r.state = JobState::Cancelled { by: None });
                                    continue;
                                }
                                let unique_id = if task.is_some() { job + 1 + i as u64 } else { job };
                                let t = Task { spec: Arc::clone(&spec), id, unique_id, task_count: tasks.len() as u32 };
                                run_task(&me, &t);
                                me.release();
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    let _ = h.join();
                }
            })
            .map_err(|source| Error::Spawn { job: spec.name.clone(), program: "a thread".into(), source })?;
        let part = SubmittedPart { job, cluster: None, tasks: spec.array.map(|a| (a.first, a.last)), offset: 0 };
        Ok(Submission { backend: self.name().into(), name: spec.name.clone(), parts: vec![part] })
    }

    fn status(&self, submission: &Submission) -> Result<Vec<JobRecord>> {
        check_backend(self, submission)?;
        let st = self.inner.lock();
        let records = submission.expected().iter().filter_map(|(id, _)| st.records.get(id).cloned()).collect();
        Ok(in_task_order(submission, records))
    }

    fn wait(&self, submission: &Submission, timeout: Option<Duration>) -> Result<Vec<JobRecord>> {
        check_backend(self, submission)?;
        let started = Instant::now();
        let expected = submission.expected();
        let mut st = self.inner.lock();
        loop {
            let records: Vec<&JobRecord> = expected.iter().filter_map(|(id, _)| st.records.get(id)).collect();
            let open = records.iter().filter(|r| !r.state.is_terminal()).count();
            if open == 0 {
                let records = records.into_iter().cloned().collect();
                return Ok(in_task_order(submission, records));
            }
            let left = match timeout {
                Some(t) => t.saturating_sub(started.elapsed()),
                None => Duration::from_secs(1),
            };
            if left.is_zero() {
                return Err(Error::Timeout {
                    name: submission.name.clone(),
                    waited: started.elapsed(),
                    pending: open,
                    states: summarise(records.into_iter().filter(|r| !r.state.is_terminal())),
                });
            }
            st = self.inner.changed.wait_timeout(st, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn cancel(&self, submission: &Submission) -> Result<()> {
        check_backend(self, submission)?;
        let mut st = self.inner.lock();
        st.cancelled.extend(submission.job_ids());
        self.inner.changed.notify_all();
        Ok(())
    }
}

/// Runs one task to its end, restarting it after a signal while its requeue limit allows.
fn run_task(inner: &Inner, t: &Task) {
    let spec = &t.spec;
    let ctx = PathContext { unique_id: t.unique_id, array_job: t.id.job, task: t.id.task, name: &spec.name };
    let base = spec.workdir.clone().unwrap_or_else(|| PathBuf::from("."));
    let stem = match t.id.task {
        Some(task) => format!("{}-{}_{task}", spec.name, t.id.job),
        None => format!("{}-{}", spec.name, t.id.job),
    };
    let stdout = match &spec.stdout {
        Some(p) => base.join(ctx.expand(p)),
        None => inner.log_dir.join(format!("{stem}.out")),
    };
    let stderr = match &spec.stderr {
        Some(p) => base.join(ctx.expand(p)),
        None if spec.stdout.is_some() => stdout.clone(),
        None => inner.log_dir.join(format!("{stem}.err")),
    };
    let mut restarts = 0u32;
    loop {
        let fail = |reason: String| {
            inner.update(t.id, |r| {
                r.state = JobState::Failed;
                r.reason = Some(reason);
            });
        };
        let open = |p: &Path| -> std::io::Result<File> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Appended after a restart, as Slurm does for a requeued job's log.
            OpenOptions::new().create(true).append(restarts > 0).write(true).truncate(restarts == 0).open(p)
        };
        let out = match open(&stdout) {
            Ok(o) => o,
            Err(e) => return fail(format!("cannot open {}: {e}", stdout.display())),
        };
        // One file for both: share the descriptor (and its offset), or one overwrites the other.
        let err = if stderr == stdout { out.try_clone() } else { open(&stderr) };
        let err = match err {
            Ok(e) => e,
            Err(e) => return fail(format!("cannot open {}: {e}", stderr.display())),
        };
        let started = Instant::now();
        let deadline = spec.time_limit.map(|l| started + l);
        let end_epoch = spec
            .time_limit
            .map(|l| (SystemTime::now() + l).duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        let mut cmd = command(spec);
        cmd.envs(&spec.env)
            .env("SLURM_JOB_ID", t.unique_id.to_string())
            .env("SLURM_JOB_NAME", &spec.name)
            .env("SLURM_CPUS_PER_TASK", spec.cpus.to_string())
            .env("SLURM_RESTART_COUNT", restarts.to_string())
            .env("SLURM_JOB_NUM_NODES", "1")
            .env("SLURM_NTASKS", spec.ntasks.unwrap_or(1).to_string())
            .env("SLURM_PROCID", "0")
            .env("SLURM_LOCALID", "0")
            .env("SLURM_NODEID", "0")
            .env("KILN_BACKEND", "local")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(e) = end_epoch {
            cmd.env("KILN_JOB_END_TIME", e.to_string());
        }
        if let (Some(task), Some(a)) = (t.id.task, spec.array) {
            cmd.env("SLURM_ARRAY_JOB_ID", t.id.job.to_string())
                .env("SLURM_ARRAY_TASK_ID", task.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", t.task_count.to_string())
                .env("SLURM_ARRAY_TASK_MIN", a.first.to_string())
                .env("SLURM_ARRAY_TASK_MAX", a.last.to_string())
                .env("KILN_ARRAY_TASK_ID", task.to_string())
                .env("KILN_ARRAY_TASK_MIN", a.first.to_string())
                .env("KILN_ARRAY_TASK_MAX", a.last.to_string());
        }
        if let Some(dir) = &spec.workdir {
            cmd.current_dir(dir);
        }
        // Its own process group, so signals reach the whole job (as Slurm's do), not only the
        // first process.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot start {:?}: {e}", spec.command[0])),
        };
        inner.update(t.id, |r| {
            r.state = JobState::Running;
            r.reason = None;
            r.restarts = restarts;
            r.stdout = Some(stdout.clone());
            r.stderr = Some(stderr.clone());
        });
        let outcome = supervise(inner, t, &mut child, deadline);
        let elapsed = started.elapsed();
        let status = outcome.status;
        let signalled = outcome.signalled.is_some();
        if signalled
            && !outcome.timed_out
            && !outcome.cancelled
            && !status.is_some_and(|s| s.success())
            && restarts < spec.requeue_limit
        {
            restarts += 1;
            tracing::info!(job = %t.id, restarts, "requeueing after {}", outcome.signalled.unwrap_or("a signal"));
            inner.update(t.id, |r| {
                r.state = JobState::Pending;
                r.reason = Some("BeginTime".into());
                r.restarts = restarts;
            });
            continue;
        }
        inner.update(t.id, |r| {
            r.elapsed = Some(elapsed);
            (r.exit_code, r.signal) = match status {
                Some(s) => exit_parts(s),
                None => (None, None),
            };
            r.state = if outcome.cancelled {
                JobState::Cancelled { by: None }
            } else if outcome.timed_out {
                r.reason = Some("TimeLimit".into());
                JobState::Timeout
            } else {
                match status {
                    Some(s) if s.success() => JobState::Completed,
                    Some(_) => {
                        r.reason = Some("NonZeroExitCode".into());
                        JobState::Failed
                    }
                    None => {
                        r.reason = Some("the process could not be waited for".into());
                        JobState::Failed
                    }
                }
            };
        });
        return;
    }
}

/// The program, run through bash when there are setup lines.
fn command(spec: &JobSpec) -> Command {
    if spec.setup.is_empty() {
        let mut c = Command::new(&spec.command[0]);
        c.args(&spec.command[1..]);
        return c;
    }
    let quoted: Vec<String> = spec.command.iter().map(|a| crate::job::shell_quote(a)).collect();
    let script = format!("set -eo pipefail\n{}\nexec {}", spec.setup.join("\n"), quoted.join(" "));
    let mut c = Command::new("bash");
    c.arg("-c").arg(script);
    c
}

struct Outcome {
    status: Option<ExitStatus>,
    signalled: Option<&'static str>,
    timed_out: bool,
    cancelled: bool,
}

/// Watches the child: the early signal, the time limit, cancellation.
fn supervise(inner: &Inner, t: &Task, child: &mut Child, deadline: Option<Instant>) -> Outcome {
    let spec = &t.spec;
    let signal_at = match (deadline, spec.signal_before_end) {
        (Some(d), Some(lead)) => d.checked_sub(Duration::from_secs(u64::from(lead))),
        _ => None,
    };
    let mut o = Outcome { status: None, signalled: None, timed_out: false, cancelled: false };
    let mut term_sent: Option<Instant> = None;
    let mut killed = false;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                o.status = Some(s);
                return o;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %t.id, error = %e, "cannot wait for the job's process");
                let _ = child.kill();
                o.status = child.wait().ok();
                return o;
            }
        }
        let now = Instant::now();
        if o.signalled.is_none()
            && let Some(at) = signal_at
            && now >= at
        {
            o.signalled = Some("the time-limit warning (SIGUSR2)");
            send_signal(child.id(), "USR2");
        }
        if term_sent.is_none() {
            if deadline.is_some_and(|d| now >= d) {
                o.timed_out = true;
                term_sent = Some(now);
                send_signal(child.id(), "TERM");
            } else if inner.is_cancelled(t.id.job) {
                o.cancelled = true;
                term_sent = Some(now);
                send_signal(child.id(), "TERM");
            }
        } else if !killed && term_sent.is_some_and(|s| now.duration_since(s) >= inner.kill_wait) {
            killed = true;
            send_signal(child.id(), "KILL");
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal by name to the job's process group with `kill(1)`: no unsafe code, no libc
/// binding.
fn send_signal(pid: u32, signal: &str) {
    let target = if cfg!(unix) { format!("-{pid}") } else { pid.to_string() };
    let sent = Command::new("kill").arg("-s").arg(signal).arg("--").arg(target).stderr(Stdio::null()).status();
    if !sent.is_ok_and(|s| s.success()) {
        tracing::debug!(pid, signal, "kill found no process (it had exited)");
    }
}

#[cfg(unix)]
fn exit_parts(s: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (s.code(), s.signal())
}

#[cfg(not(unix))]
fn exit_parts(s: ExitStatus) -> (Option<i32>, Option<i32>) {
    (s.code(), None)
}
