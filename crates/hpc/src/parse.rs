//! Parsers for what Slurm's commands print: `sbatch --parsable`, `squeue` (kiln's `-O`
//! format and `--json`), `sacct --parsable2`, `scontrol show job` and `scontrol show config`.
//!
//! Each takes the text and returns typed rows; a line that cannot be read is an error naming
//! the command, the line number and what was expected, never silently skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::state::{JobRecord, JobRef, JobState, SlurmId};
use crate::{Error, Result};

/// Field separator in kiln's `squeue -O` format: cannot appear in a job name kiln accepts and
/// is vanishingly unlikely in a path.
pub(crate) const SQUEUE_SEP: &str = "|#|";

/// The `squeue -O` fields kiln asks for, in order. `Name` comes last, so a name containing the
/// separator still parses.
pub(crate) const SQUEUE_FIELDS: &[&str] = &[
    "JobID",
    "JobArrayID",
    "ArrayJobID",
    "ArrayTaskID",
    "State",
    "Reason",
    "exit_code",
    "TimeUsed",
    "RestartCnt",
    "StdOut",
    "StdErr",
    "Name",
];

/// The `squeue -O` argument kiln polls with: the job's own id, array id, array job and task
/// ids, state, reason, raw exit status, time used, restart count, log paths and name, each
/// followed by a separator that cannot appear in a kiln job name. [`parse_squeue`] reads it.
pub fn squeue_format() -> String {
    let fields: Vec<String> = SQUEUE_FIELDS.iter().map(|f| format!("{f}:{SQUEUE_SEP}")).collect();
    fields.join(",")
}

fn bad(command: &str, line: usize, message: impl Into<String>) -> Error {
    Error::Parse { command: command.to_string(), line, message: message.into() }
}

/// Reads `sbatch --parsable` output: `123` or `123;cluster`. Site wrappers that print extra
/// lines, or the non-parsable `Submitted batch job 123`, are handled: the last line holding a
/// job id wins.
pub fn parse_sbatch(text: &str) -> Result<(u64, Option<String>)> {
    for line in text.lines().rev().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.strip_prefix("Submitted batch job ").unwrap_or(line);
        // `Submitted batch job 123 on cluster name` (multi-cluster sites).
        if let Some((id, cluster)) = line.split_once(" on cluster ")
            && let Ok(id) = id.trim().parse::<u64>()
        {
            return Ok((id, Some(cluster.trim().to_string())));
        }
        let (id, cluster) = match line.split_once(';') {
            Some((id, c)) => (id.trim(), Some(c.trim().to_string()).filter(|c| !c.is_empty())),
            None => (line, None),
        };
        let id = id.split_whitespace().next().unwrap_or(id);
        if let Ok(id) = id.parse::<u64>() {
            return Ok((id, cluster));
        }
    }
    Err(bad("sbatch", 0, format!("expected a job id (`123` or `123;cluster`) in the output, got {text:?}")))
}

/// One row of kiln's `squeue -O` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SqueueRow {
    /// The job's own id (differs from the array's id for array tasks).
    pub unique_id: u64,
    pub record: JobRecord,
}

/// Reads `squeue -h -O "$(squeue_format)"` output (see [`squeue_format`]): one record per job
/// or array task; a pending array record (`123_[4-9%2]`) gives one record per task. Log paths
/// have Slurm's `%j %A %a %x` patterns expanded, which `squeue` leaves as written.
pub fn parse_squeue(text: &str) -> Result<Vec<JobRecord>> {
    Ok(parse_squeue_rows(text)?.into_iter().map(|r| r.record).collect())
}

pub(crate) fn parse_squeue_rows(text: &str) -> Result<Vec<SqueueRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        let line = line.strip_suffix(SQUEUE_SEP).unwrap_or(line);
        let f: Vec<&str> = line.splitn(SQUEUE_FIELDS.len(), SQUEUE_SEP).map(str::trim).collect();
        if f.len() != SQUEUE_FIELDS.len() {
            return Err(bad(
                "squeue",
                lineno,
                format!(
                    "expected {} fields separated by {SQUEUE_SEP:?}, got {}: {line:?}",
                    SQUEUE_FIELDS.len(),
                    f.len()
                ),
            ));
        }
        let unique_id: u64 = f[0]
            .parse()
            .map_err(|_| bad("squeue", lineno, format!("field JobID: expected a number, got {:?}", f[0])))?;
        let id = SlurmId::parse(f[1])
            .ok_or_else(|| bad("squeue", lineno, format!("field JobArrayID: expected a job id, got {:?}", f[1])))?;
        let name = f[11];
        let mut base = JobRecord::new(JobRef { job: id.job(), task: None }, name, JobState::parse(f[4]));
        base.reason = reason(f[5]);
        let raw = f[6];
        if raw != "N/A" && !raw.is_empty() {
            let status: i32 = raw
                .parse()
                .map_err(|_| bad("squeue", lineno, format!("field exit_code: expected a number, got {raw:?}")))?;
            (base.exit_code, base.signal) = from_wait_status(status);
        }
        base.elapsed = parse_duration(f[7]);
        base.restarts = f[8].parse().unwrap_or(0);
        let tasks: Vec<Option<u32>> = match &id {
            SlurmId::Task { task, .. } => vec![Some(*task)],
            SlurmId::PendingTasks { tasks, .. } => tasks.iter().copied().map(Some).collect(),
            SlurmId::Job(_) | SlurmId::HetComponent { .. } => vec![None],
        };
        for task in tasks {
            let mut record = base.clone();
            record.id.task = task;
            record.task = task;
            let ctx = PathContext { unique_id, array_job: id.job(), task, name };
            record.stdout = path_field(f[9]).map(|p| ctx.expand(&p));
            record.stderr = path_field(f[10]).map(|p| ctx.expand(&p)).or_else(|| record.stdout.clone());
            rows.push(SqueueRow { unique_id, record });
        }
    }
    Ok(rows)
}

/// Reads `squeue --json` / `sacct --json` (Slurm 21.08 onwards; both the plain-number fields of
/// 22.05 and the `{set, number}` objects of 23.02+ are understood).
pub fn parse_slurm_json(text: &str) -> Result<Vec<JobRecord>> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad("squeue --json", e.line(), format!("invalid JSON: {e}")))?;
    let jobs =
        v.get("jobs").and_then(|j| j.as_array()).ok_or_else(|| bad("squeue --json", 1, "expected a \"jobs\" array"))?;
    let mut out = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        let at = |m: String| bad("squeue --json", 0, format!("jobs[{i}]: {m}"));
        let job_id = number(j.get("job_id")).ok_or_else(|| at("expected a numeric \"job_id\"".into()))?;
        let array_job = number(j.get("array_job_id")).filter(|&a| a != 0);
        let task = number(j.get("array_task_id")).and_then(|t| u32::try_from(t).ok());
        let (job, task) = match (array_job, task) {
            (Some(a), Some(t)) => (a, Some(t)),
            _ => (job_id, None),
        };
        let state = match j.get("job_state").or_else(|| j.get("state").and_then(|s| s.get("current"))) {
            Some(serde_json::Value::String(s)) => JobState::parse(s),
            // 23.02+ gives a list of flags, the base state first.
            Some(serde_json::Value::Array(a)) => JobState::parse(a.first().and_then(|s| s.as_str()).unwrap_or("")),
            _ => return Err(at("expected \"job_state\"".into())),
        };
        let name = j.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let mut r = JobRecord::new(JobRef { job, task }, name, state);
        r.reason = j.get("state_reason").and_then(|s| s.as_str()).and_then(reason);
        match j.get("exit_code") {
            Some(serde_json::Value::Object(o)) => {
                r.exit_code = number(o.get("return_code")).and_then(|c| i32::try_from(c).ok());
                r.signal = o
                    .get("signal")
                    .and_then(|s| number(s.get("id").or(Some(s))))
                    .and_then(|c| i32::try_from(c).ok())
                    .filter(|&s| s != 0);
            }
            other => {
                if let Some(raw) = number(other).and_then(|c| i32::try_from(c).ok()) {
                    (r.exit_code, r.signal) = from_wait_status(raw);
                }
            }
        }
        r.restarts = number(j.get("restart_cnt")).and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
        let start = number(j.get("start_time"));
        let end = number(j.get("end_time"));
        if let (Some(s), Some(e)) = (start, end)
            && s > 0
            && e >= s
            && r.state.is_terminal()
        {
            r.elapsed = Some(Duration::from_secs(e - s));
        }
        let ctx = PathContext { unique_id: job_id, array_job: job, task, name };
        r.stdout = j.get("standard_output").and_then(|p| p.as_str()).and_then(path_field).map(|p| ctx.expand(&p));
        r.stderr = j
            .get("standard_error")
            .and_then(|p| p.as_str())
            .and_then(path_field)
            .map(|p| ctx.expand(&p))
            .or_else(|| r.stdout.clone());
        out.push(r);
    }
    Ok(out)
}

/// A JSON number, or a 23.02+ `{"set": true, "number": N}` object.
fn number(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::Object(o) => {
            if o.get("set").and_then(|s| s.as_bool()) == Some(false) {
                return None;
            }
            o.get("number").and_then(|n| n.as_u64())
        }
        _ => None,
    }
}

/// The `sacct` fields kiln asks for, in order, when it reads without a header.
pub(crate) const SACCT_FIELDS: &str = "JobID,JobName,State,ExitCode,ElapsedRaw";

/// Reads `sacct --parsable2` output, with a header line (columns found by name) or without one
/// (kiln's order: `JobID,JobName,State,ExitCode,ElapsedRaw`). Job steps (`123.batch`, `123.0`)
/// are skipped: they are not jobs; `-X` leaves them out anyway.
pub fn parse_sacct(text: &str) -> Result<Vec<JobRecord>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).peekable();
    let default: Vec<String> = SACCT_FIELDS.split(',').map(str::to_string).collect();
    let header: Vec<String> = match lines.peek() {
        Some((_, l)) if l.split('|').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("JobID")) => {
            let h = l.split('|').map(|c| c.trim().to_string()).collect();
            lines.next();
            h
        }
        _ => default,
    };
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(c_id), Some(c_state)) = (col("JobID"), col("State")) else {
        return Err(bad("sacct", 1, format!("the header must name JobID and State, got {header:?}")));
    };
    let (c_name, c_exit) = (col("JobName"), col("ExitCode"));
    let (c_raw, c_elapsed, c_reason) = (col("ElapsedRaw"), col("Elapsed"), col("Reason"));
    let mut out = Vec::new();
    for (i, line) in lines {
        let lineno = i + 1;
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < header.len() {
            return Err(bad(
                "sacct",
                lineno,
                format!("expected {} fields separated by '|', got {}", header.len(), f.len()),
            ));
        }
        let raw_id = f[c_id].trim();
        if raw_id.contains('.') {
            continue; // a job step, not a job
        }
        let id = SlurmId::parse(raw_id)
            .ok_or_else(|| bad("sacct", lineno, format!("field JobID: expected a job id, got {raw_id:?}")))?;
        let name = c_name.map_or("", |c| f[c].trim());
        let state = JobState::parse(f[c_state]);
        let mut base = JobRecord::new(JobRef { job: id.job(), task: None }, name, state);
        if let Some(c) = c_exit {
            (base.exit_code, base.signal) = parse_exit_pair(f[c]).unwrap_or((None, None));
        }
        base.elapsed = c_raw
            .and_then(|c| f[c].trim().parse().ok().map(Duration::from_secs))
            .or_else(|| c_elapsed.and_then(|c| parse_duration(f[c])));
        base.reason = c_reason.and_then(|c| reason(f[c]));
        let tasks: Vec<Option<u32>> = match &id {
            SlurmId::Task { task, .. } => vec![Some(*task)],
            SlurmId::PendingTasks { tasks, .. } => tasks.iter().copied().map(Some).collect(),
            _ => vec![None],
        };
        for task in tasks {
            let mut r = base.clone();
            r.id.task = task;
            r.task = task;
            out.push(r);
        }
    }
    Ok(out)
}

/// Reads `scontrol show job` output, one-line (`-o`) or multi-line, one record per job or
/// array task. A pending array record (`ArrayTaskId=3-5%2`) gives one record per task.
pub fn parse_scontrol_jobs(text: &str) -> Result<Vec<JobRecord>> {
    let mut out = Vec::new();
    for (lineno, fields) in scontrol_records(text) {
        let get = |k: &str| fields.get(k).map(String::as_str);
        let Some(job_id) = get("JobId") else { continue };
        let job_id: u64 = job_id
            .parse()
            .map_err(|_| bad("scontrol show job", lineno, format!("field JobId: expected a number, got {job_id:?}")))?;
        let array_job = get("ArrayJobId").and_then(|a| a.parse::<u64>().ok());
        let tasks: Vec<Option<u32>> = match (array_job, get("ArrayTaskId")) {
            (Some(_), Some(t)) => {
                let list = t.split('%').next().unwrap_or(t);
                crate::state::parse_index_list(list)
                    .ok_or_else(|| {
                        bad("scontrol show job", lineno, format!("field ArrayTaskId: expected task ids, got {t:?}"))
                    })?
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            _ => vec![None],
        };
        let job = array_job.unwrap_or(job_id);
        let name = get("JobName").unwrap_or("");
        let state = JobState::parse(get("JobState").unwrap_or(""));
        let mut base = JobRecord::new(JobRef { job, task: None }, name, state);
        base.reason = get("Reason").and_then(reason);
        if let Some(e) = get("ExitCode") {
            (base.exit_code, base.signal) = parse_exit_pair(e).ok_or_else(|| {
                bad("scontrol show job", lineno, format!("field ExitCode: expected CODE:SIGNAL, got {e:?}"))
            })?;
            if !base.state.is_terminal() {
                (base.exit_code, base.signal) = (None, None);
            }
        }
        base.elapsed = get("RunTime").and_then(parse_duration);
        base.restarts = get("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0);
        for task in tasks {
            let mut r = base.clone();
            r.id.task = task;
            r.task = task;
            let ctx = PathContext { unique_id: job_id, array_job: job, task, name };
            r.stdout = get("StdOut").and_then(path_field).map(|p| ctx.expand(&p));
            r.stderr = get("StdErr").and_then(path_field).map(|p| ctx.expand(&p)).or_else(|| r.stdout.clone());
            out.push(r);
        }
    }
    Ok(out)
}

/// Splits `scontrol show` output into records of `Key=Value` fields; a record starts at each
/// `JobId=`. Values may hold spaces (`Command=./a.sh 1 0`): a token without `=`, or whose
/// key is not a plain word, continues the previous value.
fn scontrol_records(text: &str) -> Vec<(usize, BTreeMap<String, String>)> {
    let mut records: Vec<(usize, BTreeMap<String, String>)> = Vec::new();
    let mut last_key: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        for token in line.split_whitespace() {
            let kv = token.split_once('=').filter(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '/' | '.'))
            });
            match kv {
                Some((k, v)) if last_key.as_deref() != Some("Command") || is_known_key(k) => {
                    if k == "JobId" {
                        records.push((i + 1, BTreeMap::new()));
                    }
                    if let Some((_, rec)) = records.last_mut() {
                        rec.insert(k.to_string(), v.to_string());
                    }
                    last_key = Some(k.to_string());
                }
                _ => {
                    if let (Some(k), Some((_, rec))) = (&last_key, records.last_mut())
                        && let Some(v) = rec.get_mut(k)
                    {
                        v.push(' ');
                        v.push_str(token);
                    }
                }
            }
        }
    }
    records
}

/// Keys that follow `Command=` in `scontrol show job`, so an argument like `--lr=0.1` stays in
/// the command.
fn is_known_key(k: &str) -> bool {
    matches!(k, "WorkDir" | "StdErr" | "StdIn" | "StdOut" | "Power" | "AdminComment" | "Comment" | "MailUser")
}

/// Reads `scontrol show config` into `key → value`.
pub fn parse_show_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(" = ").or_else(|| l.split_once('=')))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty() && !k.contains(' '))
        .collect()
}

/// `3:0` → exit 3, no signal; `0:15` → signal 15 and no exit code.
fn parse_exit_pair(s: &str) -> Option<(Option<i32>, Option<i32>)> {
    let (code, sig) = s.trim().split_once(':')?;
    let code: i32 = code.trim().parse().ok()?;
    let sig: i32 = sig.trim().parse().ok()?;
    Some(if sig != 0 { (None, Some(sig)) } else { (Some(code), None) })
}

/// A raw wait status (`squeue -O exit_code`, 768 = exit 3) → (exit code, signal); no exit
/// code when a signal ended the job.
fn from_wait_status(status: i32) -> (Option<i32>, Option<i32>) {
    let signal = status & 0x7f;
    if signal != 0 { (None, Some(signal)) } else { (Some((status >> 8) & 0xff), None) }
}

/// `[D-][HH:]MM:SS` (Slurm's elapsed and run times) or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s == "N/A" || s.eq_ignore_ascii_case("INVALID") || s == "UNLIMITED" {
        return None;
    }
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    // Seconds may carry a fraction (sacct's `00:00.009`); it is dropped.
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.split('.').next().and_then(|whole| whole.parse::<u64>().ok()))
        .collect::<Option<_>>()?;
    let secs = match parts[..] {
        [s] => Some(s),
        [m, s] => m.checked_mul(60)?.checked_add(s),
        [h, m, s] => h.checked_mul(3600)?.checked_add(m.checked_mul(60)?)?.checked_add(s),
        _ => None,
    }?;
    Some(Duration::from_secs(days.checked_mul(86_400)?.checked_add(secs)?))
}

fn reason(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s != "None" && s != "(null)" && s != "N/A").then(|| s.to_string())
}

fn path_field(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s != "(null)" && s != "N/A").then(|| s.to_string())
}

/// What Slurm's filename patterns expand to for one job.
pub(crate) struct PathContext<'a> {
    pub unique_id: u64,
    pub array_job: u64,
    pub task: Option<u32>,
    pub name: &'a str,
}

impl PathContext<'_> {
    /// Expands `%j %A %a %x %%` (with optional zero-padding widths, `%4a`); other patterns
    /// (`%N`, `%u`, ...) are left as they are.
    pub(crate) fn expand(&self, pattern: &str) -> PathBuf {
        let mut out = String::with_capacity(pattern.len());
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut width = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                width.push(*d);
                chars.next();
            }
            // Slurm caps the padding at 10 digits.
            let w: usize = width.parse::<usize>().unwrap_or(0).min(10);
            let value = match chars.next() {
                Some('%') => Some("%".to_string()),
                Some('j') => Some(self.unique_id.to_string()),
                Some('A') => Some(self.array_job.to_string()),
                Some('a') => Some(self.task.map_or_else(|| "4294967294".into(), |t| t.to_string())),
                Some('x') => Some(self.name.to_string()),
                Some(other) => {
                    out.push('%');
                    out.push_str(&width);
                    out.push(other);
                    None
                }
                None => {
                    out.push('%');
                    out.push_str(&width);
                    None
                }
            };
            if let Some(v) = value {
                out.push_str(&format!("{v:0>w$}"));
            }
        }
        PathBuf::from(out)
    }
}

/// Whether a failed Slurm command is worth retrying: the controller was busy or unreachable.
pub(crate) fn is_transient(stderr: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        "socket timed out",
        "resource temporarily unavailable",
        "unable to contact slurm controller",
        "slurm_receive_msg",
        "zero bytes were transmitted or received",
        "connection refused",
        "connection timed out",
        "temporarily unable to accept job",
        "communication connection failure",
        "slurmctld is not responding",
    ];
    let s = stderr.to_ascii_lowercase();
    TRANSIENT.iter().any(|t| s.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses() {
        assert_eq!(from_wait_status(0), (Some(0), None));
        assert_eq!(from_wait_status(768), (Some(3), None));
        assert_eq!(from_wait_status(15), (None, Some(15)));
        assert_eq!(from_wait_status(9), (None, Some(9)));
    }

    #[test]
    fn durations() {
        let s = |x| parse_duration(x).map(|d| d.as_secs());
        assert_eq!(s("0:01"), Some(1));
        assert_eq!(s("1:21"), Some(81));
        assert_eq!(s("00:01:00"), Some(60));
        assert_eq!(s("2-03:04:05"), Some(2 * 86400 + 3 * 3600 + 4 * 60 + 5));
        assert_eq!(s("UNLIMITED"), None);
        assert_eq!(s("x"), None);
        assert_eq!(s("99999999999999999999-00:00:00"), None);
        assert_eq!(s("213503982334602-00:00:00"), None, "overflows u64 seconds");
        assert_eq!(s("inf"), None);
        assert_eq!(s("00:00.009"), Some(0));
    }

    #[test]
    fn expands_filename_patterns() {
        let ctx = PathContext { unique_id: 9, array_job: 3, task: Some(3), name: "arr" };
        assert_eq!(ctx.expand("/l/%A_%a.out"), PathBuf::from("/l/3_3.out"));
        assert_eq!(ctx.expand("/l/%x-%j-%3a-%N-%%.out"), PathBuf::from("/l/arr-9-003-%N-%.out"));
        assert_eq!(ctx.expand("%18446744073709551615a"), PathBuf::from("0000000003"), "padding capped at 10");
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"));
        assert!(is_transient("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"));
        assert!(!is_transient(
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
        ));
    }
}
