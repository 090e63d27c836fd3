//! `kiln slurm`: submit, watch and cancel jobs, and run sweeps as job arrays.
//!
//! Submissions are recorded under `<store>/slurm/<job>.json`, so `kiln slurm status` and
//! `kiln slurm cancel` know every task of an array, also from another shell or node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kiln_hpc::{
    Backend, Dependency, JobRecord, JobSpec, JobSpecBuilder, LocalExecutor, SlurmBackend, SlurmConfig, Submission,
    SubmittedPart,
};
use kiln_track::Store;
use serde_json::json;

use crate::util::parse_duration;

/// The exit status of `--wait` when a job or task did not complete successfully.
pub const EXIT_JOB_FAILED: u8 = 4;

/// The `kiln slurm` subcommands.
#[derive(Debug, Subcommand)]
pub enum SlurmCommand {
    /// Submit a command as a batch job (or a job array), and print its id.
    ///
    /// Example: kiln slurm submit --cpus 4 --mem 8G --time 2h --gpus 1 -- kiln train --config train.toml
    Submit {
        #[command(flatten)]
        job: JobArgs,
        /// Wait until every task has ended; exit 4 if any did not complete.
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// What Slurm says about submitted jobs (default: the 10 most recent submissions).
    ///
    /// Example: kiln slurm status 4242
    Status {
        /// Job ids.
        jobs: Vec<u64>,
        /// Wait until they have ended; exit 4 if any did not complete.
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cancel jobs (every task of an array).
    ///
    /// Example: kiln slurm cancel 4242
    Cancel {
        /// Job ids.
        #[arg(required = true)]
        jobs: Vec<u64>,
    },
    /// Run a hyperparameter sweep of a `kiln train` config as a job array: each task is a
    /// worker (`kiln train --study`) taking trials from one shared study journal until the
    /// config's [sweep].trials are done. Every trial is a run under one sweep run.
    ///
    /// Example: kiln slurm sweep --config sweep.toml --workers 8 --cpus 2 --time 1h --wait
    Sweep {
        /// The `kiln train` config, with a [sweep] section.
        #[arg(long)]
        config: PathBuf,
        /// Array tasks (workers).
        #[arg(long, default_value_t = 4)]
        workers: u32,
        /// Trials in all (default: [sweep].trials).
        #[arg(long)]
        trials: Option<u64>,
        /// Where the study journal and job logs go (must be on a file system the nodes share;
        /// default: <store>/sweeps/<study>-<time>).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        job: JobArgs,
        /// Wait for the sweep and print the best trials.
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Resources and scheduling of a job.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Job name (default: the program's name).
    #[arg(long)]
    name: Option<String>,
    /// Where it runs: `slurm`, `local` (processes on this machine, with Slurm's variables),
    /// or `auto` (Slurm when a controller answers, else local).
    #[arg(long, default_value = "slurm", value_parser = ["slurm", "local", "auto"])]
    backend: String,
    /// Partition.
    #[arg(long, short)]
    partition: Option<String>,
    /// Account to charge.
    #[arg(long, short = 'A')]
    account: Option<String>,
    /// Quality of service.
    #[arg(long)]
    qos: Option<String>,
    /// Wall-clock limit (90s, 30m, 2h, 1d).
    #[arg(long, short, value_parser = parse_duration)]
    time: Option<Duration>,
    /// CPUs per task.
    #[arg(long, short = 'c', default_value_t = 1)]
    cpus: u32,
    /// Memory per node (512M, 8G, or MiB).
    #[arg(long, value_parser = parse_mem)]
    mem: Option<u64>,
    /// GPUs per node.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// GPU type (a100, h100, ...).
    #[arg(long)]
    gpu_type: Option<String>,
    /// Node feature constraint.
    #[arg(long, short = 'C')]
    constraint: Option<String>,
    /// A job array: FIRST-LAST, with %N to run at most N at once (0-99%10).
    #[arg(long)]
    array: Option<String>,
    /// Start after these jobs completed successfully.
    #[arg(long, value_delimiter = ',')]
    after: Vec<u64>,
    /// Requeue a preempted or signalled job up to this many times.
    #[arg(long)]
    requeue: Option<u32>,
    /// Send SIGUSR2 this many seconds before the time limit (checkpoint and requeue).
    #[arg(long)]
    signal_before_end: Option<u32>,
    /// Environment for the job: KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A shell line run before the command (`module load cuda/12.4`; repeatable).
    #[arg(long)]
    setup: Vec<String>,
    /// Standard output file (Slurm patterns %j, %A, %a, %x allowed).
    #[arg(long)]
    output: Option<String>,
    /// Working directory (default: the current one).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

/// `512M`, `8G`, `1T` or a number of MiB.
pub fn parse_mem(text: &str) -> Result<u64> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::new()),
    };
    let n: u64 = number.parse().with_context(|| format!("{text:?} is not a memory size (512M, 8G)"))?;
    let factor: u64 = match unit.as_str() {
        "" | "M" | "MB" => 1,
        "G" | "GB" => 1024,
        "T" | "TB" => 1024 * 1024,
        _ => bail!("{text:?}: unknown unit (use M, G or T)"),
    };
    n.checked_mul(factor).with_context(|| format!("{text:?} is too large"))
}

/// `0-99%10` → (0, 99, Some(10)).
fn parse_array(text: &str) -> Result<(u32, u32, Option<u32>)> {
    let (range, throttle) = match text.split_once('%') {
        Some((r, t)) => (r, Some(t.parse().with_context(|| format!("--array {text:?}: {t:?} is not a number"))?)),
        None => (text, None),
    };
    let (a, b) = range.split_once('-').unwrap_or((range, range));
    let first: u32 = a.parse().with_context(|| format!("--array {text:?}: expected FIRST-LAST[%N]"))?;
    let last: u32 = b.parse().with_context(|| format!("--array {text:?}: expected FIRST-LAST[%N]"))?;
    if last < first {
        bail!("--array {text:?}: the last task is before the first");
    }
    Ok((first, last, throttle))
}

impl JobArgs {
    /// The job spec for `command`.
    pub fn spec(&self, default_name: &str, command: &[String]) -> Result<JobSpecBuilder> {
        let name = self.name.clone().unwrap_or_else(|| default_name.to_string());
        let mut b = JobSpec::builder(name, command.iter().cloned()).cpus(self.cpus).gpus(self.gpus);
        let workdir = match &self.workdir {
            Some(w) => std::path::absolute(w)?,
            None => std::env::current_dir()?,
        };
        b = b.workdir(workdir);
        if let Some(p) = &self.partition {
            b = b.partition(p);
        }
        if let Some(a) = &self.account {
            b = b.account(a);
        }
        if let Some(q) = &self.qos {
            b = b.qos(q);
        }
        if let Some(t) = self.time {
            b = b.time_limit(t);
        }
        if let Some(m) = self.mem {
            b = b.mem_mb(m);
        }
        if let Some(g) = &self.gpu_type {
            b = b.gpu_type(g);
        }
        if let Some(c) = &self.constraint {
            b = b.constraint(c);
        }
        if let Some(spec) = &self.array {
            let (first, last, throttle) = parse_array(spec)?;
            b = b.array(first, last);
            if let Some(n) = throttle {
                b = b.throttle(n);
            }
        }
        if !self.after.is_empty() {
            b = b.dependency(Dependency::AfterOk(self.after.clone()));
        }
        if let Some(n) = self.requeue {
            b = b.requeue_limit(n);
        }
        if let Some(s) = self.signal_before_end {
            b = b.signal_before_end(s);
        }
        for kv in &self.env {
            let (k, v) = kv.split_once('=').with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
            b = b.env(k, v);
        }
        for line in &self.setup {
            b = b.setup(line);
        }
        if let Some(o) = &self.output {
            b = b.stdout(o);
        }
        Ok(b)
    }
}

/// The backend named by `--backend`; local jobs log under `log_dir`.
pub fn backend(kind: &str, log_dir: &Path) -> Result<Box<dyn Backend>> {
    let slurm = || -> Result<Box<dyn Backend>> {
        // One quick probe: a missing controller should not cost the backend's retries.
        SlurmBackend::connect(SlurmConfig { retries: 0, ..SlurmConfig::default() })
            .context("no Slurm controller answers (use --backend local to run here)")?;
        Ok(Box::new(SlurmBackend::new(SlurmConfig::default())))
    };
    match kind {
        "slurm" => slurm(),
        "local" => Ok(Box::new(LocalExecutor::new(log_dir)?)),
        _ => match slurm() {
            Ok(b) => Ok(b),
            Err(e) => {
                eprintln!("{e:#}; running here with the local executor");
                Ok(Box::new(LocalExecutor::new(log_dir)?))
            }
        },
    }
}

fn submissions_dir(store: &Store) -> PathBuf {
    store.root().join("slurm")
}

fn record(store: &Store, submission: &Submission) -> Result<()> {
    let dir = submissions_dir(store);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for id in submission.job_ids() {
        let path = dir.join(format!("{id}.json"));
        kiln_track::durable::write_atomic(&path, &serde_json::to_vec_pretty(submission)?)?;
    }
    Ok(())
}

/// The recorded submission of `job`, or a plain one-job submission.
fn submission_of(store: &Store, job: u64) -> Result<Submission> {
    let path = submissions_dir(store).join(format!("{job}.json"));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Submission {
            backend: "slurm".into(),
            name: String::new(),
            parts: vec![SubmittedPart { job, cluster: None, tasks: None, offset: 0 }],
        }),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn recent(store: &Store, n: usize) -> Result<Vec<Submission>> {
    let dir = submissions_dir(store);
    let mut ids: Vec<u64> = match std::fs::read_dir(&dir) {
        Ok(entries) => {
            entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json")?.parse().ok()).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    ids.sort_unstable();
    let mut out: Vec<Submission> = Vec::new();
    for id in ids.into_iter().rev() {
        let s = submission_of(store, id)?;
        if s.backend == "slurm" && !out.contains(&s) {
            out.push(s);
        }
        if out.len() == n {
            break;
        }
    }
    out.reverse();
    Ok(out)
}

fn records_json(records: &[JobRecord]) -> serde_json::Value {
    records
        .iter()
        .map(|r| {
            json!({"job": r.id.to_string(), "task": r.task, "name": r.name, "state": r.state.to_string(),
                "exit_code": r.exit_code, "reason": r.reason, "elapsed_s": r.elapsed.map(|e| e.as_secs_f64()),
                "restarts": r.restarts, "stdout": r.stdout})
        })
        .collect()
}

fn print_records(records: &[JobRecord]) -> Result<()> {
    for r in records {
        say!("{r}");
    }
    Ok(())
}

fn all_succeeded(records: &[JobRecord]) -> bool {
    records.iter().all(|r| r.state.is_success())
}

/// Runs one `kiln slurm` subcommand.
pub fn run(store: &Store, command: SlurmCommand) -> Result<ExitCode> {
    let logs = store.root().join("slurm").join("local-logs");
    match command {
        SlurmCommand::Submit { job, wait, json, command } => {
            let program = Path::new(&command[0]).file_name().map(|n| n.to_string_lossy().into_owned());
            let spec = job.spec(program.as_deref().unwrap_or("kiln-job"), &command)?.build()?;
            let backend = backend(&job.backend, &logs)?;
            let local = backend.name() == "local";
            let submission = backend.submit(&spec)?;
            if !local {
                record(store, &submission)?;
            }
            if !json {
                say!("submitted {submission}");
            }
            // Local jobs are this process's children: wait for them.
            if wait || local {
                let records = backend.wait(&submission, None)?;
                if json {
                    say!("{}", json!({"submission": submission, "records": records_json(&records)}));
                } else {
                    print_records(&records)?;
                }
                return Ok(if all_succeeded(&records) { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) });
            }
            if json {
                say!("{}", json!({"submission": submission, "jobs": submission.job_ids()}));
            }
        }
        SlurmCommand::Status { jobs, wait, json } => {
            let submissions = if jobs.is_empty() {
                recent(store, 10)?
            } else {
                jobs.iter().map(|j| submission_of(store, *j)).collect::<Result<_>>()?
            };
            if submissions.is_empty() {
                eprintln!("no submissions recorded in {}", submissions_dir(store).display());
                return Ok(ExitCode::SUCCESS);
            }
            let backend = SlurmBackend::new(SlurmConfig::default());
            let mut all = Vec::new();
            let mut docs = Vec::new();
            for s in &submissions {
                let records = if wait { backend.wait(s, None)? } else { backend.status(s)? };
                if json {
                    docs.push(json!({"submission": s, "records": records_json(&records)}));
                } else {
                    say!("{s}");
                    print_records(&records)?;
                }
                all.extend(records);
            }
            if json {
                say!("{}", serde_json::to_string_pretty(&docs)?);
            }
            if wait && !all_succeeded(&all) {
                return Ok(ExitCode::from(EXIT_JOB_FAILED));
            }
        }
        SlurmCommand::Cancel { jobs } => {
            let backend = SlurmBackend::new(SlurmConfig::default());
            for j in jobs {
                let s = submission_of(store, j)?;
                backend.cancel(&s)?;
                say!("cancelled {s}");
            }
        }
        SlurmCommand::Sweep { config, workers, trials, dir, job, wait, json } => {
            return sweep(store, &config, workers, trials, dir, &job, wait, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn sweep(
    store: &Store,
    config: &Path,
    workers: u32,
    trials: Option<u64>,
    dir: Option<PathBuf>,
    job: &JobArgs,
    wait: bool,
    json: bool,
) -> Result<ExitCode> {
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let config = std::path::absolute(config)?;
    let table = crate::train::resolve(&config, crate::train::env_vars(), &[])?;
    let recipe = crate::train::recipe(&table, &config)?;
    let section = recipe.sweep.as_ref().with_context(|| format!("{}: no [sweep] section", config.display()))?;
    let study_config = section.study_config(&recipe.experiment);
    let space = kiln_train::tune::SearchSpace { params: section.params.clone() };
    space.validate().with_context(|| format!("{}: [sweep] params", config.display()))?;
    study_config.validate().with_context(|| format!("{}: [sweep] sampler or pruner", config.display()))?;
    let total = trials.unwrap_or(section.trials);
    let dir = std::path::absolute(match dir {
        Some(d) => d,
        None => store.root().join("sweeps").join(format!(
            "{}-{}",
            study_config.name,
            crate::util::utc(kiln_track_now_ms()).replace([' ', ':'], "-")
        )),
    })?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let journal = dir.join("study.jsonl");
    // Created here, so a bad journal path or a study of another name fails before anything
    // is submitted.
    kiln_train::tune::Study::open_or_create(&journal, section.study_config(&recipe.experiment))
        .with_context(|| format!("opening the study journal {}", journal.display()))?;
    // The sweep's own run: its config, where the study is, and the job; the trials are its
    // children.
    let mut parent = store.run_builder(&recipe.experiment).name(&format!("{} (sweep)", study_config.name)).start()?;
    let parent_id = parent.id().to_string();
    // Any error from here on is recorded on the sweep's run before it is returned.
    let outcome = (|| -> Result<(ExitCode, Option<&'static str>)> {
        parent.set_tag("kiln.sweep", &study_config.name)?;
        parent.log_params(&json!({"sweep": {"study": journal.display().to_string(), "workers": workers,
        "trials": total, "config": config.display().to_string()}}))?;
        parent
            .log_artifact_bytes("train_config.toml", toml::to_string_pretty(&table).unwrap_or_default().as_bytes())?;
        let exe = std::env::current_exe().context("finding the kiln executable")?;
        let command: Vec<String> = vec![
            exe.display().to_string(),
            "--store".into(),
            std::path::absolute(store.root())?.display().to_string(),
            "train".into(),
            "--config".into(),
            config.display().to_string(),
            "--study".into(),
            journal.display().to_string(),
            "--trials".into(),
            total.to_string(),
            "--parent-run".into(),
            parent_id.clone(),
        ];
        let mut job = job.clone();
        job.array = Some(match &job.array {
            Some(a) if a.contains('%') => format!("0-{}%{}", workers - 1, a.rsplit('%').next().unwrap_or("1")),
            _ => format!("0-{}", workers - 1),
        });
        let mut builder = job.spec(&study_config.name, &command)?;
        if job.output.is_none() {
            builder = builder.stdout(dir.join("worker-%A_%a.out").display().to_string());
        }
        let spec = builder.build()?;
        let backend = backend(&job.backend, &dir.join("logs"))?;
        let local = backend.name() == "local";
        let submission = backend.submit(&spec)?;
        if !local {
            record(store, &submission)?;
        }
        parent.set_tag(
            "kiln.sweep.jobs",
            &submission.job_ids().iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        )?;
        if !json {
            say!("submitted {submission}: {workers} worker(s), {total} trial(s); study {}", journal.display());
            say!("sweep run {parent_id} in experiment {}", recipe.experiment);
        }
        if !(wait || local) {
            // The run records the submission; the trials report to the journal and their own runs.
            if json {
                say!(
                    "{}",
                    json!({"submission": submission, "sweep_run": parent_id, "study": journal.display().to_string()})
                );
            } else {
                if let Some(id) = submission.job_ids().first() {
                    say!("watch it with: kiln slurm status {id}");
                }
            }
            return Ok((ExitCode::SUCCESS, None));
        }
        let records = backend.wait(&submission, None)?;
        let mut done = if journal.exists() {
            kiln_train::tune::Study::open(&journal)?.trials()?
        } else {
            eprintln!("no worker created the study journal {}", journal.display());
            Vec::new()
        };
        // A pruned trial's value is its last intermediate one, not an objective value.
        done.retain(|t| t.state == kiln_train::tune::TrialState::Complete && t.value.is_some_and(f64::is_finite));
        let maximize = matches!(study_config.direction, kiln_train::tune::Direction::Maximize);
        done.sort_by(|a, b| {
            let (x, y) = (a.value.unwrap_or(f64::NAN), b.value.unwrap_or(f64::NAN));
            if maximize { y.total_cmp(&x) } else { x.total_cmp(&y) }
        });
        if let Some(best) = done.first() {
            parent.log_metric("best_value", 0, best.value.unwrap_or(f64::NAN))?;
            parent.set_tag("kiln.sweep.best_trial", &best.number.to_string())?;
        }
        let ok = all_succeeded(&records) && !done.is_empty();
        let failure = match (ok, done.is_empty()) {
            (true, _) => None,
            (false, true) => Some("no trial completed"),
            (false, false) => Some("some sweep workers did not complete"),
        };
        if json {
            let top: Vec<_> = done
                .iter()
                .take(5)
                .map(
                    |t| json!({"number": t.number, "value": t.value.map(crate::util::finite_json), "params": t.params}),
                )
                .collect();
            say!(
                "{}",
                json!({"submission": submission, "sweep_run": parent_id, "study": journal.display().to_string(),
                "records": records_json(&records), "trials": done.len(), "best": top})
            );
        } else {
            print_records(&records)?;
            say!("{} trial(s) with a value; best first:", done.len());
            for t in done.iter().take(5) {
                say!(
                    "  trial {:>3}  {:.4}  {}",
                    t.number,
                    t.value.unwrap_or(f64::NAN),
                    crate::util::params_text(&t.params)
                );
            }
            say!("compare them with: kiln runs compare --experiment {}", recipe.experiment);
        }
        Ok((if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_JOB_FAILED) }, failure))
    })();
    match outcome {
        Ok((code, None)) => {
            parent.finish()?;
            Ok(code)
        }
        Ok((code, Some(why))) => {
            parent.fail(why)?;
            Ok(code)
        }
        Err(e) => {
            if let Err(fail) = parent.fail(&format!("{e:#}")) {
                eprintln!("could not record the failure in the sweep's run: {fail}");
            }
            Err(e)
        }
    }
}

fn kiln_track_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_arrays() {
        assert_eq!(parse_mem("512").ok(), Some(512));
        assert_eq!(parse_mem("8G").ok(), Some(8192));
        assert_eq!(parse_mem("8GB").ok(), Some(8192));
        assert!(parse_mem("512B").is_err());
        assert!(parse_mem("99999999999999999999T").is_err());
        assert!(parse_mem("8X").is_err());
        assert_eq!(parse_array("0-99%10").ok(), Some((0, 99, Some(10))));
        assert_eq!(parse_array("5").ok(), Some((5, 5, None)));
        assert!(parse_array("9-1").is_err());
    }
}
