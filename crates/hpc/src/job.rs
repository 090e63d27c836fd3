//! Job specifications and the batch scripts rendered from them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What to run and with which resources. Built with [`JobSpec::builder`].
///
/// One spec serves every backend: [`SlurmBackend`](crate::SlurmBackend) renders it as a batch
/// script, [`LocalExecutor`](crate::LocalExecutor) runs it as local processes with the same
/// `SLURM_*` variables, array emulation, time limit, signal and requeue behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job name (Slurm `--job-name`).
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Working directory (default: the submitting process's).
    pub workdir: Option<PathBuf>,
    /// Extra environment variables, exported before the command runs.
    pub env: BTreeMap<String, String>,
    /// Slurm partition.
    pub partition: Option<String>,
    /// Slurm account to charge.
    pub account: Option<String>,
    /// Slurm quality of service.
    pub qos: Option<String>,
    /// Wall-clock limit.
    pub time_limit: Option<Duration>,
    /// Number of nodes.
    pub nodes: Option<u32>,
    /// Number of tasks (Slurm `--ntasks`).
    pub ntasks: Option<u32>,
    /// CPUs per task.
    pub cpus: u32,
    /// Memory per node in MiB.
    pub mem_mb: Option<u64>,
    /// GPUs per node (Slurm `--gres=gpu:N`, or `gpu:TYPE:N` with [`JobSpec::gpu_type`]).
    pub gpus: u32,
    /// GPU type in the gres request, such as `a100`.
    pub gpu_type: Option<String>,
    /// Node feature constraint (Slurm `--constraint`).
    pub constraint: Option<String>,
    /// Array task ids.
    pub array: Option<ArraySpec>,
    /// Jobs this one waits for.
    pub dependencies: Vec<Dependency>,
    /// Standard output path; Slurm's patterns (`%j`, `%A`, `%a`, `%x`) are allowed.
    pub stdout: Option<String>,
    /// Standard error path; Slurm's patterns are allowed. Default: with standard output.
    pub stderr: Option<String>,
    /// Further `#SBATCH` options, without the `#SBATCH ` prefix (`--exclusive`, `--mail-type=END`).
    pub extra_directives: Vec<String>,
    /// Shell lines run before the command, such as `module load cuda/12.4`. A failing line fails
    /// the job.
    pub setup: Vec<String>,
    /// How many times the job may requeue itself after a preemption or time-limit signal. 0
    /// means never.
    pub requeue_limit: u32,
    /// Seconds before the time limit at which the job gets SIGUSR2 (Slurm
    /// `--signal=B:USR2@N`), forwarded to the command so it can checkpoint.
    pub signal_before_end: Option<u32>,
}

/// Array task ids `first..=last`, at most `throttle` running at once (Slurm `--array=a-b%n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArraySpec {
    /// First task id.
    pub first: u32,
    /// Last task id (inclusive).
    pub last: u32,
    /// Most tasks running at once.
    pub throttle: Option<u32>,
}

impl ArraySpec {
    /// Number of tasks.
    pub fn len(&self) -> u32 {
        if self.is_empty() { 0 } else { (self.last - self.first).saturating_add(1) }
    }

    /// Whether there are no tasks (never, for a built spec).
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

/// A dependency on other jobs (Slurm `--dependency`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dependency {
    /// Start after these jobs completed successfully (every task of an array).
    AfterOk(Vec<u64>),
    /// Start after these jobs ended, however they ended.
    AfterAny(Vec<u64>),
    /// Start after these jobs failed.
    AfterNotOk(Vec<u64>),
    /// Start when no other job of the same name and user is running.
    Singleton,
}

impl Dependency {
    fn render(&self) -> String {
        let list = |kind: &str, ids: &[u64]| {
            let mut s = kind.to_string();
            for id in ids {
                let _ = write!(s, ":{id}");
            }
            s
        };
        match self {
            Dependency::AfterOk(ids) => list("afterok", ids),
            Dependency::AfterAny(ids) => list("afterany", ids),
            Dependency::AfterNotOk(ids) => list("afternotok", ids),
            Dependency::Singleton => "singleton".into(),
        }
    }
}

/// Builder for [`JobSpec`].
#[derive(Debug, Clone)]
pub struct JobSpecBuilder {
    spec: JobSpec,
}

/// The part of an array that one `sbatch` call submits: Slurm task ids `0..len` (or the user's
/// own ids when they fit under `MaxArraySize`) and the offset that maps them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArrayChunk {
    pub first: u32,
    pub last: u32,
    pub offset: u32,
}

impl JobSpec {
    /// Starts a spec for `name` running `command` (program first).
    pub fn builder<S: Into<String>>(name: impl Into<String>, command: impl IntoIterator<Item = S>) -> JobSpecBuilder {
        JobSpecBuilder {
            spec: JobSpec {
                name: name.into(),
                command: command.into_iter().map(Into::into).collect(),
                workdir: None,
                env: BTreeMap::new(),
                partition: None,
                account: None,
                qos: None,
                time_limit: None,
                nodes: None,
                ntasks: None,
                cpus: 1,
                mem_mb: None,
                gpus: 0,
                gpu_type: None,
                constraint: None,
                array: None,
                dependencies: Vec::new(),
                stdout: None,
                stderr: None,
                extra_directives: Vec::new(),
                setup: Vec::new(),
                requeue_limit: 0,
                signal_before_end: None,
            },
        }
    }

    /// Whether the batch script wraps the command to forward signals and requeue.
    pub fn needs_wrapper(&self) -> bool {
        self.requeue_limit > 0 || self.signal_before_end.is_some()
    }

    /// Renders the `sbatch` batch script for the whole job. Each argument is quoted for the shell.
    ///
    /// With [`JobSpec::signal_before_end`] or [`JobSpec::requeue_limit`] set, the command runs
    /// under a small wrapper: it forwards SIGUSR2 and SIGTERM to the command, waits for it to
    /// exit (to checkpoint), tells a time-limit warning from a preemption by comparing the job's
    /// end time (from `squeue`) with the clock, and requeues the job with `scontrol requeue`
    /// while `SLURM_RESTART_COUNT` is below the limit. Plain shell commands get the same
    /// treatment: one that does not catch the signal dies of it and is requeued.
    pub fn to_sbatch_script(&self) -> String {
        let chunk = self.array.map(|a| ArrayChunk { first: a.first, last: a.last, offset: 0 });
        self.render(chunk)
    }

    pub(crate) fn render(&self, chunk: Option<ArrayChunk>) -> String {
        let mut s = String::from("#!/bin/bash\n");
        let mut directive = |d: String| {
            let _ = writeln!(s, "#SBATCH {d}");
        };
        directive(format!("--job-name={}", self.name));
        let optional = [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("constraint", &self.constraint),
            ("output", &self.stdout),
            ("error", &self.stderr),
        ];
        for (flag, value) in optional {
            if let Some(v) = value {
                directive(format!("--{flag}={v}"));
            }
        }
        if let Some(t) = self.time_limit {
            directive(format!("--time={}", slurm_time(t)));
        }
        if let Some(n) = self.nodes {
            directive(format!("--nodes={n}"));
        }
        if let Some(n) = self.ntasks {
            directive(format!("--ntasks={n}"));
        }
        directive(format!("--cpus-per-task={}", self.cpus));
        if let Some(m) = self.mem_mb {
            directive(format!("--mem={m}M"));
        }
        if self.gpus > 0 {
            match &self.gpu_type {
                Some(t) => directive(format!("--gres=gpu:{t}:{}", self.gpus)),
                None => directive(format!("--gres=gpu:{}", self.gpus)),
            }
        }
        if let Some(c) = chunk {
            let throttle = self.array.and_then(|a| a.throttle).map(|t| format!("%{t}")).unwrap_or_default();
            directive(format!("--array={}-{}{throttle}", c.first, c.last));
        }
        if !self.dependencies.is_empty() {
            let deps: Vec<String> = self.dependencies.iter().map(Dependency::render).collect();
            directive(format!("--dependency={}", deps.join(",")));
            // A job whose dependency can never be satisfied ends (CANCELLED) instead of
            // pending forever with reason DependencyNeverSatisfied.
            directive("--kill-on-invalid-dep=yes".into());
        }
        if self.requeue_limit > 0 {
            directive("--requeue".into());
            // A requeued job's log continues instead of starting over.
            directive("--open-mode=append".into());
        } else {
            directive("--no-requeue".into());
        }
        if let Some(secs) = self.signal_before_end {
            directive(format!("--signal=B:USR2@{secs}"));
        }
        if let Some(dir) = &self.workdir {
            directive(format!("--chdir={}", dir.display()));
        }
        for d in &self.extra_directives {
            directive(d.clone());
        }
        s.push_str("# Written by kiln-hpc.\n");
        // -e for the setup lines (a failed `module load` fails the job); not -u, which breaks
        // many sites' module scripts.
        s.push_str("set -eo pipefail\n");
        for line in &self.setup {
            let _ = writeln!(s, "{line}");
        }
        for (k, v) in &self.env {
            let _ = writeln!(s, "export {k}={}", shell_quote(v));
        }
        if let Some(c) = chunk {
            // The user's task id; differs from SLURM_ARRAY_TASK_ID when a large array was split
            // into several submissions to fit under MaxArraySize.
            let _ = writeln!(s, "export KILN_ARRAY_TASK_ID=$(( SLURM_ARRAY_TASK_ID + {} ))", c.offset);
            if let Some(a) = self.array {
                let _ = writeln!(s, "export KILN_ARRAY_TASK_MIN={} KILN_ARRAY_TASK_MAX={}", a.first, a.last);
            }
        }
        let command: Vec<String> = self.command.iter().map(|a| shell_quote(a)).collect();
        let command = command.join(" ");
        if !self.needs_wrapper() {
            let _ = writeln!(s, "exec {command}");
            return s;
        }
        let _ = writeln!(s, "kiln_requeue_limit={}", self.requeue_limit);
        let _ = writeln!(s, "kiln_signal_lead={}", self.signal_before_end.unwrap_or(0));
        let _ = writeln!(s, "kiln_command={}", shell_quote(&command));
        s.push_str(WRAPPER.replace("\"$@\" &", &format!("{command} &")).as_str());
        s
    }
}

/// The signal-forwarding, requeueing part of a wrapped batch script. `"$@" &` is replaced by
/// the command.
const WRAPPER: &str = r#"set +e
kiln_child=
kiln_signal=
kiln_trapped=
kiln_cause=
kiln_on_signal() {
    kiln_trapped=1
    kiln_signal=$1
    if [ -z "$kiln_cause" ]; then
        # A signal shortly before the end time is the time-limit warning; any other is a
        # preemption (or an operator's scancel --signal).
        kiln_cause=preemption
        local end now
        end=$(squeue -h -j "${SLURM_JOB_ID:-0}" -O EndTime 2>/dev/null | tr -d ' ')
        now=$(date +%s)
        case $end in
            '' | N/A | NONE | Unknown | UNLIMITED) ;;
            *)
                end=$(date -d "$end" +%s 2>/dev/null) &&
                    [ $((end - now)) -le $((kiln_signal_lead + 30)) ] && kiln_cause=timeout
                ;;
        esac
    fi
    echo "kiln-hpc: SIG$1 received ($kiln_cause); forwarding it to process ${kiln_child:-?}" >&2
    if [ -n "$kiln_child" ]; then
        kill -s "$1" "$kiln_child" 2>/dev/null
    fi
}
trap 'kiln_on_signal USR2' USR2
trap 'kiln_on_signal TERM' TERM
"$@" &
kiln_child=$!
# A signal that came before the command started is passed on now.
if [ -n "$kiln_signal" ]; then
    kill -s "$kiln_signal" "$kiln_child" 2>/dev/null
fi
while :; do
    kiln_trapped=
    wait "$kiln_child"
    kiln_status=$?
    # wait returns early when a trap runs; wait again until the command itself has ended.
    [ -z "$kiln_trapped" ] && break
done
if [ -n "$kiln_signal" ] && [ "$kiln_status" -ne 0 ]; then
    kiln_restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$kiln_restarts" -lt "$kiln_requeue_limit" ]; then
        echo "kiln-hpc: $kiln_command exited with status $kiln_status after $kiln_cause; requeueing job ${SLURM_JOB_ID:-?} (restart $((kiln_restarts + 1)) of $kiln_requeue_limit)" >&2
        if scontrol requeue "${SLURM_JOB_ID:-0}"; then
            # scontrol requeue ends this job; the sleep keeps the script from exiting first.
            sleep 30
        else
            echo "kiln-hpc: scontrol requeue failed; the job ends here" >&2
        fi
    else
        echo "kiln-hpc: $kiln_command exited with status $kiln_status after $kiln_cause; not requeueing (restarted $kiln_restarts times, limit $kiln_requeue_limit)" >&2
    fi
fi
exit "$kiln_status"
"#;

impl JobSpecBuilder {
    /// Working directory.
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spec.workdir = Some(dir.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.insert(key.into(), value.into());
        self
    }

    /// Slurm partition.
    pub fn partition(mut self, p: impl Into<String>) -> Self {
        self.spec.partition = Some(p.into());
        self
    }

    /// Slurm account.
    pub fn account(mut self, a: impl Into<String>) -> Self {
        self.spec.account = Some(a.into());
        self
    }

    /// Slurm quality of service.
    pub fn qos(mut self, q: impl Into<String>) -> Self {
        self.spec.qos = Some(q.into());
        self
    }

    /// Wall-clock limit (whole minutes under Slurm; at least one).
    pub fn time_limit(mut self, t: Duration) -> Self {
        self.spec.time_limit = Some(t);
        self
    }

    /// Number of nodes.
    pub fn nodes(mut self, n: u32) -> Self {
        self.spec.nodes = Some(n);
        self
    }

    /// Number of tasks.
    pub fn ntasks(mut self, n: u32) -> Self {
        self.spec.ntasks = Some(n);
        self
    }

    /// CPUs per task.
    pub fn cpus(mut self, n: u32) -> Self {
        self.spec.cpus = n;
        self
    }

    /// Memory per node in MiB.
    pub fn mem_mb(mut self, mb: u64) -> Self {
        self.spec.mem_mb = Some(mb);
        self
    }

    /// GPUs per node.
    pub fn gpus(mut self, n: u32) -> Self {
        self.spec.gpus = n;
        self
    }

    /// GPU type in the gres request (`--gres=gpu:TYPE:N`).
    pub fn gpu_type(mut self, t: impl Into<String>) -> Self {
        self.spec.gpu_type = Some(t.into());
        self
    }

    /// Node feature constraint.
    pub fn constraint(mut self, c: impl Into<String>) -> Self {
        self.spec.constraint = Some(c.into());
        self
    }

    /// Array task ids `first..=last`.
    pub fn array(mut self, first: u32, last: u32) -> Self {
        let throttle = self.spec.array.and_then(|a| a.throttle);
        self.spec.array = Some(ArraySpec { first, last, throttle });
        self
    }

    /// At most `n` array tasks running at once (`--array=a-b%n`). Needs [`Self::array`].
    pub fn throttle(mut self, n: u32) -> Self {
        if let Some(a) = &mut self.spec.array {
            a.throttle = Some(n);
        } else {
            self.spec.array = Some(ArraySpec { first: 1, last: 0, throttle: Some(n) });
        }
        self
    }

    /// Adds a dependency.
    pub fn dependency(mut self, d: Dependency) -> Self {
        self.spec.dependencies.push(d);
        self
    }

    /// Standard output path (Slurm patterns allowed).
    pub fn stdout(mut self, path: impl Into<String>) -> Self {
        self.spec.stdout = Some(path.into());
        self
    }

    /// Standard error path (Slurm patterns allowed).
    pub fn stderr(mut self, path: impl Into<String>) -> Self {
        self.spec.stderr = Some(path.into());
        self
    }

    /// Adds an `#SBATCH` option, such as `--exclusive`.
    pub fn directive(mut self, d: impl Into<String>) -> Self {
        self.spec.extra_directives.push(d.into());
        self
    }

    /// Adds a setup line, run before the command (`module load cuda`).
    pub fn setup(mut self, line: impl Into<String>) -> Self {
        self.spec.setup.push(line.into());
        self
    }

    /// Requeue up to `n` times after a preemption or time-limit signal.
    pub fn requeue_limit(mut self, n: u32) -> Self {
        self.spec.requeue_limit = n;
        self
    }

    /// Ask for SIGUSR2 this many seconds before the time limit.
    pub fn signal_before_end(mut self, seconds: u32) -> Self {
        self.spec.signal_before_end = Some(seconds);
        self
    }

    /// Checks and returns the spec.
    pub fn build(self) -> Result<JobSpec> {
        self.spec.validate()?;
        Ok(self.spec)
    }
}

impl JobSpec {
    /// Checks the spec as [`JobSpecBuilder::build`] does; backends call it again, since the
    /// fields are public and specs are deserialisable.
    pub fn validate(&self) -> Result<()> {
        let s = self;
        let bad = |message: String| Err(Error::InvalidSpec { job: s.name.clone(), message });
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return bad("the name must be non-empty ASCII letters, digits, '-', '_' or '.'".into());
        }
        if s.command.is_empty() || s.command[0].is_empty() {
            return bad("the command is empty".into());
        }
        if s.cpus == 0 || s.nodes == Some(0) || s.ntasks == Some(0) {
            return bad("cpus, nodes and ntasks must be at least 1".into());
        }
        if let Some(a) = s.array {
            if a.is_empty() {
                return bad(format!("array range {}-{} is empty (set it with .array(first, last))", a.first, a.last));
            }
            if a.throttle == Some(0) {
                return bad("the array throttle must be at least 1".into());
            }
        }
        if s.time_limit.is_some_and(|t| t.as_secs() < 60) {
            return bad("Slurm time limits are in minutes: use at least 60 seconds".into());
        }
        if let (Some(lead), Some(t)) = (s.signal_before_end, s.time_limit)
            && u64::from(lead) >= t.as_secs()
        {
            return bad(format!(
                "signal_before_end ({lead} s) must be shorter than the time limit ({} s)",
                t.as_secs()
            ));
        }
        if let Some(k) = s.env.keys().find(|k| {
            k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || k.starts_with(|c: char| c.is_ascii_digit())
        }) {
            return bad(format!("{k:?} is not a valid environment variable name"));
        }
        for d in &s.dependencies {
            if let Dependency::AfterOk(ids) | Dependency::AfterAny(ids) | Dependency::AfterNotOk(ids) = d
                && ids.is_empty()
            {
                return bad(format!("dependency {d:?} names no job"));
            }
        }
        let values = [&s.partition, &s.account, &s.qos, &s.constraint, &s.stdout, &s.stderr, &s.gpu_type];
        let directives = s.extra_directives.iter().chain(values.into_iter().flatten());
        if let Some(v) = directives.chain(&s.setup).find(|v| v.contains('\n') || v.contains('\r')) {
            return bad(format!("{v:?} contains a line break"));
        }
        if let Some(w) = &s.workdir
            && w.to_string_lossy().contains(['\n', '\r'])
        {
            return bad(format!("the working directory {w:?} contains a line break"));
        }
        if let Some(d) = s.extra_directives.iter().find(|d| !d.starts_with('-')) {
            return bad(format!("extra directive {d:?} must be an sbatch option starting with '-'"));
        }
        if let Some(d) = s.extra_directives.iter().find(|d| d.starts_with("--clusters") || d.starts_with("-M")) {
            return bad(format!(
                "{d:?}: submitting to another cluster is not supported yet (kiln tracks jobs on the local cluster)"
            ));
        }
        Ok(())
    }
}

/// Slurm's `D-HH:MM:SS` (rounded up to whole minutes, as Slurm counts).
fn slurm_time(t: Duration) -> String {
    let minutes = t.as_secs().div_ceil(60);
    let (d, h, m) = (minutes / 1440, (minutes % 1440) / 60, minutes % 60);
    format!("{d}-{h:02}:{m:02}:00")
}

/// Quotes `s` for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_specs() {
        let cases = [
            JobSpec::builder("a b", ["x"]).build(),
            JobSpec::builder("a", Vec::<String>::new()).build(),
            JobSpec::builder("a", ["x"]).array(3, 1).build(),
            JobSpec::builder("a", ["x"]).throttle(2).build(),
            JobSpec::builder("a", ["x"]).array(0, 3).throttle(0).build(),
            JobSpec::builder("a", ["x"]).time_limit(Duration::from_secs(5)).build(),
            JobSpec::builder("a", ["x"]).time_limit(Duration::from_secs(60)).signal_before_end(60).build(),
            JobSpec::builder("a", ["x"]).env("1X", "v").build(),
            JobSpec::builder("a", ["x"]).dependency(Dependency::AfterOk(vec![])).build(),
            JobSpec::builder("a", ["x"]).setup("module load a\nrm -rf /").build(),
            JobSpec::builder("a", ["x"]).directive("exclusive").build(),
            JobSpec::builder("a", ["x"]).nodes(0).build(),
        ];
        for (i, c) in cases.into_iter().enumerate() {
            assert!(matches!(c, Err(Error::InvalidSpec { .. })), "case {i} was accepted");
        }
    }

    #[test]
    fn time_limits_round_up_to_minutes() {
        assert_eq!(slurm_time(Duration::from_secs(60)), "0-00:01:00");
        assert_eq!(slurm_time(Duration::from_secs(61)), "0-00:02:00");
        assert_eq!(slurm_time(Duration::from_secs(26 * 3600 + 61)), "1-02:02:00");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("plain-1.0"), "plain-1.0");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
