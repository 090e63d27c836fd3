//! Running jobs as local processes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, JobSpec, Result};

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The job name.
    pub name: String,
    /// Array task id, for array jobs.
    pub task: Option<u32>,
    /// Exit code, or `None` if killed by a signal.
    pub exit_code: Option<i32>,
    /// Wall time.
    pub elapsed: Duration,
    /// File holding the job's standard output.
    pub stdout: PathBuf,
    /// File holding the job's standard error.
    pub stderr: PathBuf,
}

impl JobOutcome {
    /// Whether the job exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs jobs as child processes of this one, one array task after another, with output in
/// log files, and the same `SLURM_*` variables a job sees under Slurm (`SLURM_JOB_NAME`,
/// `SLURM_ARRAY_TASK_ID`, `SLURM_CPUS_PER_TASK`), so a script behaves the same in both places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalExecutor {
    log_dir: PathBuf,
}

impl LocalExecutor {
    /// An executor writing logs under `log_dir` (created if needed).
    pub fn new(log_dir: impl AsRef<Path>) -> Result<Self> {
        let log_dir = log_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io { path: log_dir.clone(), source })?;
        Ok(Self { log_dir })
    }

    /// Runs the job (every array task, in order) and waits for it.
    pub fn run(&self, spec: &JobSpec) -> Result<Vec<JobOutcome>> {
        match spec.array {
            Some((a, b)) => (a..=b).map(|t| self.run_task(spec, Some(t))).collect(),
            None => Ok(vec![self.run_task(spec, None)?]),
        }
    }

    fn run_task(&self, spec: &JobSpec, task: Option<u32>) -> Result<JobOutcome> {
        let stem = match task {
            Some(t) => format!("{}-{t}", spec.name),
            None => spec.name.clone(),
        };
        let stdout = self.log_dir.join(format!("{stem}.out"));
        let stderr = self.log_dir.join(format!("{stem}.err"));
        let create = |p: &Path| File::create(p).map_err(|source| Error::Io { path: p.to_path_buf(), source });
        let mut cmd = Command::new(&spec.command[0]);
        cmd.args(&spec.command[1..])
            .envs(&spec.env)
            .env("SLURM_JOB_NAME", &spec.name)
            .env("SLURM_CPUS_PER_TASK", spec.cpus.to_string())
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?);
        if let Some(t) = task {
            cmd.env("SLURM_ARRAY_TASK_ID", t.to_string());
        }
        if let Some(dir) = &spec.workdir {
            cmd.current_dir(dir);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            job: spec.name.clone(),
            program: spec.command[0].clone(),
            source,
        })?;
        let status = match spec.time_limit {
            None => child.wait(),
            Some(limit) => loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if started.elapsed() >= limit => {
                        tracing::warn!(job = %spec.name, "time limit reached; killing the job");
                        let _ = child.kill();
                        break child.wait();
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => break Err(e),
                }
            },
        }
        .map_err(|source| Error::Spawn { job: spec.name.clone(), program: spec.command[0].clone(), source })?;
        Ok(JobOutcome {
            name: spec.name.clone(),
            task,
            exit_code: status.code(),
            elapsed: started.elapsed(),
            stdout,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_array_tasks_with_slurm_variables_and_captures_output() {
        let dir = std::env::temp_dir().join(format!("kiln-hpc-test-{}", std::process::id()));
        let exec = LocalExecutor::new(&dir).unwrap();
        let spec = JobSpec::builder(
            "echo",
            ["sh", "-c", "echo task=$SLURM_ARRAY_TASK_ID name=$SLURM_JOB_NAME x=$X; exit $SLURM_ARRAY_TASK_ID"],
        )
        .array(0, 2)
        .env("X", "y")
        .build()
        .unwrap();
        let outcomes = exec.run(&spec).unwrap();
        assert_eq!(outcomes.len(), 3);
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(o.exit_code, Some(i as i32));
            let out = std::fs::read_to_string(&o.stdout).unwrap();
            assert_eq!(out.trim(), format!("task={i} name=echo x=y"));
        }
        assert!(outcomes[0].success() && !outcomes[1].success());
        let missing = JobSpec::builder("nope", ["/nonexistent/program"]).build().unwrap();
        assert!(matches!(exec.run(&missing), Err(Error::Spawn { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
