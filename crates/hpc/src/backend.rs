//! The interface every executor implements, and what a submission returns.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::Dependency;
use crate::state::{JobRecord, JobRef};
use crate::{Error, JobSpec, Result};

/// Somewhere jobs run: [`SlurmBackend`](crate::SlurmBackend) (the cluster's scheduler) or
/// [`LocalExecutor`](crate::LocalExecutor) (processes on this machine). A trait object
/// (`&dyn Backend`), so pipelines and sweeps are written once for both, and a slurmrestd
/// backend can be added later without touching them.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Short name (`slurm`, `local`), recorded in each [`Submission`].
    fn name(&self) -> &'static str;

    /// Submits a job (every task of an array) and returns at once.
    fn submit(&self, spec: &JobSpec) -> Result<Submission>;

    /// What is known now about every job or task of a submission.
    fn status(&self, submission: &Submission) -> Result<Vec<JobRecord>>;

    /// Waits until every job or task of the submission has ended, at most `timeout`
    /// ([`Error::Timeout`](crate::Error::Timeout) after it). The records are in task order.
    fn wait(&self, submission: &Submission, timeout: Option<Duration>) -> Result<Vec<JobRecord>>;

    /// Cancels every job or task of the submission that has not ended.
    fn cancel(&self, submission: &Submission) -> Result<()>;
}

/// What [`Backend::submit`] returns: enough to find the jobs again, also from another process
/// (it is serde-serialisable).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Submission {
    /// The backend that made it ([`Backend::name`]).
    pub backend: String,
    /// The job name.
    pub name: String,
    /// One part per `sbatch` call: a job array larger than Slurm's `MaxArraySize` needs several.
    pub parts: Vec<SubmittedPart>,
}

/// One submitted job or job array.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubmittedPart {
    /// The job id (the array's id for arrays).
    pub job: u64,
    /// The cluster, when `sbatch` named one (`123;cluster`).
    pub cluster: Option<String>,
    /// The backend's task ids `first..=last`, for arrays.
    pub tasks: Option<(u32, u32)>,
    /// Added to a backend task id to give the user's task id (`KILN_ARRAY_TASK_ID`).
    pub offset: u32,
}

impl Submission {
    /// The job ids, one per part.
    pub fn job_ids(&self) -> Vec<u64> {
        self.parts.iter().map(|p| p.job).collect()
    }

    /// Every job or task this submission made, with the user's task id.
    pub fn expected(&self) -> Vec<(JobRef, Option<u32>)> {
        let mut out = Vec::new();
        for p in &self.parts {
            match p.tasks {
                Some((a, b)) => out
                    .extend((a..=b).map(|t| (JobRef { job: p.job, task: Some(t) }, Some(t.saturating_add(p.offset))))),
                None => out.push((JobRef { job: p.job, task: None }, None)),
            }
        }
        out
    }

    /// Number of jobs or tasks.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.tasks.map_or(1, |(a, b)| b.saturating_sub(a) as usize + 1)).sum()
    }

    /// Whether it holds no job (never, for a real submission).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// A dependency that starts a job once every job of this submission succeeded.
    pub fn after_ok(&self) -> Dependency {
        Dependency::AfterOk(self.job_ids())
    }

    /// A dependency that starts a job once every job of this submission ended.
    pub fn after_any(&self) -> Dependency {
        Dependency::AfterAny(self.job_ids())
    }
}

impl fmt::Display for Submission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self
            .parts
            .iter()
            .map(|p| match p.tasks {
                Some((a, b)) => format!("{}_[{a}-{b}]", p.job),
                None => p.job.to_string(),
            })
            .collect();
        write!(f, "{} {} ({})", self.backend, self.name, ids.join(", "))
    }
}

/// [`Error::WrongBackend`] unless `backend` made the submission.
pub(crate) fn check_backend(backend: &dyn Backend, submission: &Submission) -> Result<()> {
    if submission.backend != backend.name() {
        return Err(Error::WrongBackend {
            name: submission.name.clone(),
            made_by: submission.backend.clone(),
            this: backend.name().into(),
        });
    }
    Ok(())
}

/// Orders records by the user's task id and fills in the user's ids.
pub(crate) fn in_task_order(submission: &Submission, mut records: Vec<JobRecord>) -> Vec<JobRecord> {
    let expected = submission.expected();
    for r in &mut records {
        if let Some((_, task)) = expected.iter().find(|(id, _)| *id == r.id) {
            r.task = *task;
        }
    }
    records.sort_by_key(|r| (r.task, r.id));
    records
}

/// Summarises states for error messages: `2 RUNNING, 1 PENDING`.
pub(crate) fn summarise<'a>(records: impl IntoIterator<Item = &'a JobRecord>) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in records {
        let s = r.state.to_string();
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let parts: Vec<String> = counts.into_iter().map(|(s, n)| format!("{n} {s}")).collect();
    parts.join(", ")
}
