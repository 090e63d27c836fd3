//! What a job knows about itself, from the environment Slurm (or the local executor) gives it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The job a process runs in, read from `SLURM_*` (and `KILN_*`) variables.
///
/// Works the same under [`SlurmBackend`](crate::SlurmBackend) and
/// [`LocalExecutor`](crate::LocalExecutor). `task_id` is the user's task id: when a large array
/// was split to fit under `MaxArraySize`, it is `KILN_ARRAY_TASK_ID`, not Slurm's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobContext {
    /// `SLURM_JOB_ID`: this job's own id (each array task has its own).
    pub job_id: Option<u64>,
    /// `SLURM_JOB_NAME`.
    pub job_name: Option<String>,
    /// `SLURM_ARRAY_JOB_ID`.
    pub array_job_id: Option<u64>,
    /// The array task id (`KILN_ARRAY_TASK_ID`, else `SLURM_ARRAY_TASK_ID`).
    pub task_id: Option<u32>,
    /// Number of tasks in the array (`SLURM_ARRAY_TASK_COUNT`, else from min and max).
    pub task_count: Option<u32>,
    /// Lowest task id (`KILN_ARRAY_TASK_MIN`, else `SLURM_ARRAY_TASK_MIN`).
    pub task_min: Option<u32>,
    /// Highest task id (`KILN_ARRAY_TASK_MAX`, else `SLURM_ARRAY_TASK_MAX`).
    pub task_max: Option<u32>,
    /// `SLURM_PROCID`: rank of this process among the job's tasks.
    pub proc_id: Option<u32>,
    /// `SLURM_LOCALID`: rank on this node.
    pub local_id: Option<u32>,
    /// `SLURM_NODEID`.
    pub node_id: Option<u32>,
    /// `SLURM_JOB_NODELIST` (compressed, as Slurm gives it: `gpu[01-04]`).
    pub node_list: Option<String>,
    /// `SLURM_NTASKS`.
    pub ntasks: Option<u32>,
    /// `SLURM_CPUS_PER_TASK`.
    pub cpus_per_task: Option<u32>,
    /// GPUs visible to the job (`SLURM_GPUS_ON_NODE`, else the count in
    /// `CUDA_VISIBLE_DEVICES`).
    pub gpus: Option<u32>,
    /// `SLURM_RESTART_COUNT`: how many times the job was requeued (0 on the first start).
    pub restart_count: u32,
    /// When the time limit ends (`SLURM_JOB_END_TIME`, Slurm 23.02+, or `KILN_JOB_END_TIME`).
    pub end_time: Option<SystemTime>,
    /// `SLURM_SUBMIT_DIR`.
    pub submit_dir: Option<String>,
}

impl JobContext {
    /// Reads the process environment. Outside any job every field is empty and
    /// [`JobContext::in_job`] is false.
    pub fn from_env() -> JobContext {
        JobContext::from_vars(std::env::vars())
    }

    /// Reads the given variables (for tests, or another process's environment).
    pub fn from_vars<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> JobContext {
        let vars: HashMap<String, String> = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        let small = |k: &str| num(k).and_then(|v| u32::try_from(v).ok());
        let either = |a: &str, b: &str| small(a).or_else(|| small(b));
        let task_min = either("KILN_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MIN");
        let task_max = either("KILN_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_MAX");
        let gpus = small("SLURM_GPUS_ON_NODE").or_else(|| {
            get("CUDA_VISIBLE_DEVICES").map(|d| d.split(',').filter(|x| !x.trim().is_empty()).count() as u32)
        });
        let end_time =
            num("SLURM_JOB_END_TIME").or_else(|| num("KILN_JOB_END_TIME")).map(|s| UNIX_EPOCH + Duration::from_secs(s));
        JobContext {
            job_id: num("SLURM_JOB_ID"),
            job_name: get("SLURM_JOB_NAME").map(str::to_string),
            array_job_id: num("SLURM_ARRAY_JOB_ID"),
            task_id: either("KILN_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_ID"),
            task_count: small("SLURM_ARRAY_TASK_COUNT")
                .or_else(|| task_min.zip(task_max).map(|(a, b)| b.saturating_sub(a).saturating_add(1))),
            task_min,
            task_max,
            proc_id: small("SLURM_PROCID"),
            local_id: small("SLURM_LOCALID"),
            node_id: small("SLURM_NODEID"),
            node_list: get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")).map(str::to_string),
            ntasks: small("SLURM_NTASKS"),
            cpus_per_task: small("SLURM_CPUS_PER_TASK"),
            gpus,
            restart_count: small("SLURM_RESTART_COUNT").unwrap_or(0),
            end_time,
            submit_dir: get("SLURM_SUBMIT_DIR").map(str::to_string),
        }
    }

    /// Whether this process runs inside a job.
    pub fn in_job(&self) -> bool {
        self.job_id.is_some()
    }

    /// Whether this is a restart after a requeue.
    pub fn is_restart(&self) -> bool {
        self.restart_count > 0
    }

    /// Time left before the time limit, when the end time is known.
    pub fn time_left(&self) -> Option<Duration> {
        self.end_time.map(|e| e.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_array_task_under_slurm() {
        let c = JobContext::from_vars([
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_JOB_NAME", "sweep"),
            ("SLURM_ARRAY_JOB_ID", "4200"),
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("KILN_ARRAY_TASK_ID", "1008"),
            ("KILN_ARRAY_TASK_MIN", "0"),
            ("KILN_ARRAY_TASK_MAX", "2499"),
            ("SLURM_ARRAY_TASK_COUNT", "1001"),
            ("SLURM_PROCID", "0"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "gpu[01-02]"),
            ("SLURM_CPUS_PER_TASK", "4"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SLURM_RESTART_COUNT", "2"),
            ("SLURM_JOB_END_TIME", "1796216818"),
        ]);
        assert!(c.in_job() && c.is_restart());
        assert_eq!((c.job_id, c.array_job_id, c.task_id), (Some(4242), Some(4200), Some(1008)));
        assert_eq!((c.task_min, c.task_max, c.task_count), (Some(0), Some(2499), Some(1001)));
        assert_eq!(c.node_list.as_deref(), Some("gpu[01-02]"));
        assert_eq!((c.cpus_per_task, c.gpus, c.restart_count), (Some(4), Some(2), 2));
        assert_eq!(c.end_time, Some(UNIX_EPOCH + Duration::from_secs(1_796_216_818)));
        let past = JobContext::from_vars([("KILN_JOB_END_TIME", "1000")]);
        assert_eq!(past.time_left(), Some(Duration::ZERO));
        let future = JobContext::from_vars([("KILN_JOB_END_TIME", "99999999999")]);
        assert!(future.time_left().is_some_and(|t| t > Duration::from_secs(86400)));
    }

    #[test]
    fn outside_a_job_everything_is_empty() {
        let c = JobContext::from_vars([("HOME", "/root"), ("SLURM_ARRAY_TASK_ID", "x")]);
        assert!(!c.in_job());
        assert_eq!(c, JobContext::default());
    }
}
