//! Job states, job ids and what a backend reports about a job.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A job's state, covering every state Slurm reports (long names, as in `squeue -o %T`,
/// `sacct` and `scontrol`, and the short codes of `squeue -o %t`), plus [`JobState::Lost`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for resources, a dependency or a throttle.
    Pending,
    /// Nodes are being prepared.
    Configuring,
    /// Running.
    Running,
    /// Finished; processes are being cleaned up.
    Completing,
    /// Exited with status 0.
    Completed,
    /// Exited with a non-zero status.
    Failed,
    /// Cancelled, by the user id when Slurm says so (`CANCELLED by 1000`).
    Cancelled {
        /// The uid that cancelled it.
        by: Option<u32>,
    },
    /// Killed at its time limit.
    Timeout,
    /// Ended because a node failed.
    NodeFail,
    /// Preempted by a higher-priority job.
    Preempted,
    /// Killed by the out-of-memory handler.
    OutOfMemory,
    /// The node failed to boot.
    BootFail,
    /// Missed its deadline.
    Deadline,
    /// Requeued (it will run again).
    Requeued,
    /// Requeued because of a federation sibling.
    RequeueFed,
    /// Requeued and held.
    RequeueHold,
    /// Changing size.
    Resizing,
    /// Revoked from a federation sibling.
    Revoked,
    /// Being signalled.
    Signaling,
    /// Requeued in a special exit state.
    SpecialExit,
    /// Staging out data.
    StageOut,
    /// Stopped (SIGSTOP); still holds its allocation.
    Stopped,
    /// Suspended; resources released.
    Suspended,
    /// Held because its reservation was deleted.
    ResvDelHold,
    /// Vanished from the scheduler without a terminal state (purged, or the controller lost it).
    Lost,
    /// A state this version of kiln does not know, verbatim.
    Other(String),
}

impl JobState {
    /// Parses a state as Slurm prints it: `COMPLETED`, `CD`, `CANCELLED by 0`, `CANCELLED+`
    /// (sacct's truncation), in any case.
    pub fn parse(s: &str) -> JobState {
        let s = s.trim();
        let upper = s.to_ascii_uppercase();
        let upper = upper.trim_end_matches('+');
        if let Some(rest) = upper.strip_prefix("CANCELLED") {
            let by = rest.trim().strip_prefix("BY").and_then(|n| n.trim().parse().ok());
            return JobState::Cancelled { by };
        }
        match upper {
            "PENDING" | "PD" => JobState::Pending,
            "CONFIGURING" | "CF" => JobState::Configuring,
            "RUNNING" | "R" => JobState::Running,
            "COMPLETING" | "CG" => JobState::Completing,
            "COMPLETED" | "CD" => JobState::Completed,
            "FAILED" | "F" => JobState::Failed,
            "CA" => JobState::Cancelled { by: None },
            "TIMEOUT" | "TO" => JobState::Timeout,
            "NODE_FAIL" | "NF" => JobState::NodeFail,
            "PREEMPTED" | "PR" => JobState::Preempted,
            "OUT_OF_MEMORY" | "OOM" => JobState::OutOfMemory,
            "BOOT_FAIL" | "BF" => JobState::BootFail,
            "DEADLINE" | "DL" => JobState::Deadline,
            "REQUEUED" | "RQ" => JobState::Requeued,
            "REQUEUE_FED" | "RF" => JobState::RequeueFed,
            "REQUEUE_HOLD" | "RH" => JobState::RequeueHold,
            "RESIZING" | "RS" => JobState::Resizing,
            "REVOKED" | "RV" => JobState::Revoked,
            "SIGNALING" | "SI" => JobState::Signaling,
            "SPECIAL_EXIT" | "SE" => JobState::SpecialExit,
            "STAGE_OUT" | "SO" => JobState::StageOut,
            "STOPPED" | "ST" => JobState::Stopped,
            "SUSPENDED" | "S" => JobState::Suspended,
            "RESV_DEL_HOLD" | "RD" => JobState::ResvDelHold,
            "LOST" => JobState::Lost,
            _ => JobState::Other(s.to_string()),
        }
    }

    /// Whether the job has ended and will not run again by itself.
    ///
    /// `PREEMPTED` counts as ended: a job Slurm requeues after preemption shows `REQUEUED` or
    /// `PENDING` instead. [`JobState::Other`] does not, so an unknown state is waited on.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::Failed
                | JobState::Cancelled { .. }
                | JobState::Timeout
                | JobState::NodeFail
                | JobState::Preempted
                | JobState::OutOfMemory
                | JobState::BootFail
                | JobState::Deadline
                | JobState::Revoked
                | JobState::SpecialExit
                | JobState::Lost
        )
    }

    /// Whether the job completed successfully.
    pub fn is_success(&self) -> bool {
        *self == JobState::Completed
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            JobState::Pending => "PENDING",
            JobState::Configuring => "CONFIGURING",
            JobState::Running => "RUNNING",
            JobState::Completing => "COMPLETING",
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Cancelled { by: Some(uid) } => return write!(f, "CANCELLED by {uid}"),
            JobState::Cancelled { by: None } => "CANCELLED",
            JobState::Timeout => "TIMEOUT",
            JobState::NodeFail => "NODE_FAIL",
            JobState::Preempted => "PREEMPTED",
            JobState::OutOfMemory => "OUT_OF_MEMORY",
            JobState::BootFail => "BOOT_FAIL",
            JobState::Deadline => "DEADLINE",
            JobState::Requeued => "REQUEUED",
            JobState::RequeueFed => "REQUEUE_FED",
            JobState::RequeueHold => "REQUEUE_HOLD",
            JobState::Resizing => "RESIZING",
            JobState::Revoked => "REVOKED",
            JobState::Signaling => "SIGNALING",
            JobState::SpecialExit => "SPECIAL_EXIT",
            JobState::StageOut => "STAGE_OUT",
            JobState::Stopped => "STOPPED",
            JobState::Suspended => "SUSPENDED",
            JobState::ResvDelHold => "RESV_DEL_HOLD",
            JobState::Lost => "LOST",
            JobState::Other(s) => s,
        };
        f.write_str(s)
    }
}

/// A Slurm job id as printed by `squeue`, `sacct` and `scontrol`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlurmId {
    /// A plain job: `123`.
    Job(u64),
    /// One array task: `123_4`.
    Task {
        /// The array's job id.
        job: u64,
        /// The task id.
        task: u32,
    },
    /// Array tasks not yet started, listed together: `123_[1-5%2]`, `123_[1,3,7-9]`.
    PendingTasks {
        /// The array's job id.
        job: u64,
        /// The task ids.
        tasks: Vec<u32>,
        /// The `%` throttle, when shown.
        throttle: Option<u32>,
    },
    /// A component of a heterogeneous job: `123+1`.
    HetComponent {
        /// The leader's job id.
        job: u64,
        /// The component offset.
        offset: u32,
    },
}

impl SlurmId {
    /// Parses `123`, `123_4`, `123_[1-5%2]`, `123+1`; steps (`123.batch`, `123_4.0`) are
    /// rejected, as are empty or malformed ids. `None` when it is not a job id.
    pub fn parse(s: &str) -> Option<SlurmId> {
        let s = s.trim();
        let num = |t: &str| -> Option<u64> {
            (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok()).flatten()
        };
        if let Some((job, rest)) = s.split_once('_') {
            let job = num(job)?;
            if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                let (list, throttle) = match inner.split_once('%') {
                    Some((l, t)) => (l, Some(u32::try_from(num(t)?).ok()?)),
                    None => (inner, None),
                };
                let tasks = parse_index_list(list)?;
                return Some(SlurmId::PendingTasks { job, tasks, throttle });
            }
            let task = u32::try_from(num(rest)?).ok()?;
            return Some(SlurmId::Task { job, task });
        }
        if let Some((job, offset)) = s.split_once('+') {
            return Some(SlurmId::HetComponent { job: num(job)?, offset: u32::try_from(num(offset)?).ok()? });
        }
        num(s).map(SlurmId::Job)
    }

    /// The job id (the array's for tasks, the leader's for heterogeneous components).
    pub fn job(&self) -> u64 {
        match self {
            SlurmId::Job(j) | SlurmId::Task { job: j, .. } | SlurmId::PendingTasks { job: j, .. } => *j,
            SlurmId::HetComponent { job, .. } => *job,
        }
    }
}

impl fmt::Display for SlurmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlurmId::Job(j) => write!(f, "{j}"),
            SlurmId::Task { job, task } => write!(f, "{job}_{task}"),
            SlurmId::PendingTasks { job, tasks, throttle } => {
                let list: Vec<String> = tasks.iter().map(u32::to_string).collect();
                write!(f, "{job}_[{}", list.join(","))?;
                if let Some(t) = throttle {
                    write!(f, "%{t}")?;
                }
                f.write_str("]")
            }
            SlurmId::HetComponent { job, offset } => write!(f, "{job}+{offset}"),
        }
    }
}

/// `1-5,7,9-11:2` → the indices. `None` on anything malformed or absurdly large.
pub(crate) fn parse_index_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let (range, step) = match part.split_once(':') {
            Some((r, st)) => (r, st.trim().parse::<u32>().ok().filter(|&x| x > 0)?),
            None => (part, 1),
        };
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let a = range.trim().parse::<u32>().ok()?;
                (a, a)
            }
        };
        if a > b || (b - a) / step > 10_000_000 {
            return None;
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Some(out)
}

/// Which job a [`JobRecord`] describes: a job, or one task of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobRef {
    /// The job id (the array's for array tasks).
    pub job: u64,
    /// The task id as the backend numbers it (Slurm's `SLURM_ARRAY_TASK_ID`).
    pub task: Option<u32>,
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.task {
            Some(t) => write!(f, "{}_{t}", self.job),
            None => write!(f, "{}", self.job),
        }
    }
}

/// What a backend knows about one job or array task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The id the backend uses.
    pub id: JobRef,
    /// The task id the user asked for (`KILN_ARRAY_TASK_ID`); differs from `id.task` when a
    /// large array was split to fit under `MaxArraySize`.
    pub task: Option<u32>,
    /// The job name.
    pub name: String,
    /// The state.
    pub state: JobState,
    /// The exit code, once known.
    pub exit_code: Option<i32>,
    /// The signal that ended the job, if one did.
    pub signal: Option<i32>,
    /// Why it is pending or how it ended (Slurm's reason), when there is one.
    pub reason: Option<String>,
    /// Time spent running so far.
    pub elapsed: Option<Duration>,
    /// How many times it was requeued.
    pub restarts: u32,
    /// Standard output file.
    pub stdout: Option<PathBuf>,
    /// Standard error file.
    pub stderr: Option<PathBuf>,
}

impl JobRecord {
    pub(crate) fn new(id: JobRef, name: &str, state: JobState) -> JobRecord {
        JobRecord {
            id,
            task: id.task,
            name: name.to_string(),
            state,
            exit_code: None,
            signal: None,
            reason: None,
            elapsed: None,
            restarts: 0,
            stdout: None,
            stderr: None,
        }
    }

    /// Whether the job completed with exit code 0.
    pub fn success(&self) -> bool {
        self.state.is_success() && self.exit_code.unwrap_or(0) == 0
    }
}

impl fmt::Display for JobRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.id, self.name, self.state)?;
        if let Some(c) = self.exit_code {
            write!(f, " exit {c}")?;
        }
        if let Some(s) = self.signal {
            write!(f, " signal {s}")?;
        }
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}
