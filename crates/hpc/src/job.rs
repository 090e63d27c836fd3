//! Job specifications.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What to run and with which resources. Built with [`JobSpec::builder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job name (Slurm `--job-name`).
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Working directory (default: the submitting process's).
    pub workdir: Option<PathBuf>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Slurm partition.
    pub partition: Option<String>,
    /// Wall-clock limit.
    pub time_limit: Option<Duration>,
    /// CPUs per task.
    pub cpus: u32,
    /// Memory in MiB.
    pub mem_mb: Option<u64>,
    /// GPUs (Slurm `--gres=gpu:N`).
    pub gpus: u32,
    /// Array task ids, inclusive range.
    pub array: Option<(u32, u32)>,
    /// Requeue on preemption or node failure.
    pub requeue: bool,
    /// Seconds before the time limit at which Slurm sends SIGUSR1, so a job can checkpoint.
    pub signal_before_end: Option<u32>,
}

/// Builder for [`JobSpec`].
#[derive(Debug, Clone)]
pub struct JobSpecBuilder {
    spec: JobSpec,
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
                time_limit: None,
                cpus: 1,
                mem_mb: None,
                gpus: 0,
                array: None,
                requeue: false,
                signal_before_end: None,
            },
        }
    }

    /// Renders an `sbatch` batch script. Each argument is single-quoted for the shell.
    pub fn to_sbatch_script(&self) -> String {
        let mut s = String::from("#!/bin/bash\n");
        let mut directive = |d: String| {
            let _ = writeln!(s, "#SBATCH {d}");
        };
        directive(format!("--job-name={}", self.name));
        if let Some(p) = &self.partition {
            directive(format!("--partition={p}"));
        }
        if let Some(t) = self.time_limit {
            directive(format!("--time={}", slurm_time(t)));
        }
        directive(format!("--cpus-per-task={}", self.cpus));
        if let Some(m) = self.mem_mb {
            directive(format!("--mem={m}M"));
        }
        if self.gpus > 0 {
            directive(format!("--gres=gpu:{}", self.gpus));
        }
        if let Some((a, b)) = self.array {
            directive(format!("--array={a}-{b}"));
        }
        directive(if self.requeue { "--requeue".into() } else { "--no-requeue".into() });
        if let Some(secs) = self.signal_before_end {
            directive(format!("--signal=B:USR1@{secs}"));
        }
        if let Some(dir) = &self.workdir {
            directive(format!("--chdir={}", dir.display()));
        }
        s.push_str("set -euo pipefail\n");
        for (k, v) in &self.env {
            let _ = writeln!(s, "export {k}={}", shell_quote(v));
        }
        let command: Vec<String> = self.command.iter().map(|a| shell_quote(a)).collect();
        let _ = writeln!(s, "exec {}", command.join(" "));
        s
    }
}

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

    /// Wall-clock limit.
    pub fn time_limit(mut self, t: Duration) -> Self {
        self.spec.time_limit = Some(t);
        self
    }

    /// CPUs per task.
    pub fn cpus(mut self, n: u32) -> Self {
        self.spec.cpus = n;
        self
    }

    /// Memory in MiB.
    pub fn mem_mb(mut self, mb: u64) -> Self {
        self.spec.mem_mb = Some(mb);
        self
    }

    /// GPUs per task.
    pub fn gpus(mut self, n: u32) -> Self {
        self.spec.gpus = n;
        self
    }

    /// Array task ids `first..=last`.
    pub fn array(mut self, first: u32, last: u32) -> Self {
        self.spec.array = Some((first, last));
        self
    }

    /// Requeue on preemption.
    pub fn requeue(mut self, yes: bool) -> Self {
        self.spec.requeue = yes;
        self
    }

    /// Ask for SIGUSR1 this many seconds before the time limit.
    pub fn signal_before_end(mut self, seconds: u32) -> Self {
        self.spec.signal_before_end = Some(seconds);
        self
    }

    /// Checks and returns the spec.
    pub fn build(self) -> Result<JobSpec> {
        let s = self.spec;
        let bad = |message: String| Err(Error::InvalidSpec { job: s.name.clone(), message });
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return bad("the name must be non-empty ASCII letters, digits, '-', '_' or '.'".into());
        }
        if s.command.is_empty() || s.command[0].is_empty() {
            return bad("the command is empty".into());
        }
        if s.cpus == 0 {
            return bad("cpus must be at least 1".into());
        }
        if let Some((a, b)) = s.array
            && a > b
        {
            return bad(format!("array range {a}-{b} is empty"));
        }
        if s.time_limit.is_some_and(|t| t.as_secs() < 60) {
            return bad("Slurm time limits are in minutes: use at least 60 seconds".into());
        }
        if let Some(k) = s.env.keys().find(|k| {
            k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || k.starts_with(|c: char| c.is_ascii_digit())
        }) {
            return bad(format!("{k:?} is not a valid environment variable name"));
        }
        Ok(s)
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
    fn renders_a_complete_script() {
        let spec = JobSpec::builder("train-1", ["kiln", "train", "--lr", "it's"])
            .partition("gpu")
            .time_limit(Duration::from_secs(26 * 3600 + 61))
            .cpus(4)
            .mem_mb(8000)
            .gpus(1)
            .array(0, 9)
            .requeue(true)
            .signal_before_end(120)
            .env("KILN_STORE", "/scratch/store dir")
            .build()
            .unwrap();
        let script = spec.to_sbatch_script();
        for line in [
            "#SBATCH --job-name=train-1",
            "#SBATCH --partition=gpu",
            "#SBATCH --time=1-02:02:00",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --mem=8000M",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --array=0-9",
            "#SBATCH --requeue",
            "#SBATCH --signal=B:USR1@120",
            "export KILN_STORE='/scratch/store dir'",
            r"exec kiln train --lr 'it'\''s'",
        ] {
            assert!(script.lines().any(|l| l == line), "missing {line:?} in\n{script}");
        }
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(JobSpec::builder("a b", ["x"]).build().is_err());
        assert!(JobSpec::builder("a", Vec::<String>::new()).build().is_err());
        assert!(JobSpec::builder("a", ["x"]).array(3, 1).build().is_err());
        assert!(JobSpec::builder("a", ["x"]).time_limit(Duration::from_secs(5)).build().is_err());
        assert!(JobSpec::builder("a", ["x"]).env("1X", "v").build().is_err());
    }
}
