//! Run with: cargo run --release --example sweep_slurm
//!
//! A hyperparameter sweep as a job array: each array task is an HPO worker (this same program,
//! started with `--worker`) that asks one shared study journal for trials, trains the digits
//! MLP and reports back, until the study has its trials. Every trial is a child run of one
//! sweep run in one kiln-track store. On a Slurm cluster (`scripts/slurm-local.sh up` gives a
//! local one) the array goes through `sbatch` with a throttle, a time limit, the SIGUSR2
//! checkpoint signal and requeue; without one, the local executor runs the same array here.
//!
//! Environment: `KILN_SWEEP_DIR` (default `./kiln-sweep`: the study, store and logs go there;
//! on a cluster it must be on a filesystem the nodes share), `KILN_SWEEP_TASKS` (array tasks,
//! default 4), `KILN_TRIALS` (the study's total, default 16), `KILN_BACKEND` (`slurm`, `local`
//! or unset for Slurm when a controller answers).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kiln::hpc::{Backend, JobContext, JobSpec, LocalExecutor, SlurmBackend};
use kiln::track::Store;
use kiln::train::tune::{PrunerConfig, SamplerConfig, Study, StudyConfig, Tracking, Trial};
use kiln::train::{DeviceSpec, MlpConfig, ModelConfig, OptimizerConfig, TrainConfig};

#[path = "common/digits.rs"]
mod digits;

const EXPERIMENT: &str = "digits-sweep";

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().nth(1).as_deref() == Some("--worker") {
        return worker();
    }
    let dir = std::path::absolute(std::env::var("KILN_SWEEP_DIR").unwrap_or_else(|_| "kiln-sweep".into()))?;
    let tasks: u32 = env_number("KILN_SWEEP_TASKS", 4)?;
    let trials: u32 = env_number("KILN_TRIALS", 16)?;
    if tasks == 0 || trials == 0 {
        bail!("KILN_SWEEP_TASKS and KILN_TRIALS must be at least 1");
    }
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("create {}", dir.display()))?;
    let study_path = dir.join("study.jsonl");
    let store = Store::open(dir.join("store"))?;
    let mut sweep_run = store.run_builder(EXPERIMENT).name("digits MLP sweep").start()?;
    sweep_run.log_param("study", study_path.display().to_string())?;
    sweep_run.log_param("tasks", tasks.to_string())?;

    let backend: Box<dyn Backend> = match std::env::var("KILN_BACKEND").as_deref() {
        Ok("local") => Box::new(LocalExecutor::new(dir.join("logs"))?),
        Ok("slurm") => Box::new(SlurmBackend::detect()?),
        _ => match SlurmBackend::detect() {
            Ok(slurm) => Box::new(slurm),
            Err(e) => {
                eprintln!("no Slurm controller answers ({e}); running the array with the local executor");
                Box::new(LocalExecutor::new(dir.join("logs"))?)
            }
        },
    };
    let exe = std::env::current_exe()?.display().to_string();
    let spec = JobSpec::builder("kiln-sweep", [exe.as_str(), "--worker"])
        .array(0, tasks - 1)
        .throttle(tasks.min(4))
        .cpus(1)
        .mem_mb(2048)
        .time_limit(Duration::from_secs(30 * 60))
        .signal_before_end(90)
        .requeue_limit(2)
        .stdout(dir.join("logs/%x-%A_%a.out").display().to_string())
        .env("KILN_STUDY", study_path.display().to_string())
        .env("KILN_STORE", dir.join("store").display().to_string())
        .env("KILN_TRIALS", trials.to_string())
        .env("KILN_PARENT_RUN", sweep_run.id())
        // One thread per task: the array's tasks share the machine.
        .env("RAYON_NUM_THREADS", "1")
        .build()?;
    let started = Instant::now();
    let submission = backend.submit(&spec)?;
    println!("submitted {submission}: {tasks} workers, {trials} trials, study {}", study_path.display());
    let records = backend.wait(&submission, Some(Duration::from_secs(3600)))?;
    println!("array finished in {:.1}s:", started.elapsed().as_secs_f64());
    for r in &records {
        println!("  {r}");
    }
    let study = Study::open_or_create(&study_path, study_config())?;
    let all = study.trials()?;
    println!("study: {} trials recorded by {} workers", all.len(), records.len());
    let children = store.runs(Some(EXPERIMENT))?.len().saturating_sub(1);
    println!("store {}: {children} trial runs under sweep run {}", dir.join("store").display(), sweep_run.id());
    if let Some(best) = study.best_trial()? {
        let value = best.value.unwrap_or(f64::NAN);
        println!("best trial {}: validation loss {value:.4}", best.number);
        for (name, v) in &best.params {
            println!("  {name} = {v}");
        }
        sweep_run.log_metric("best_val_loss", best.number, value)?;
    }
    sweep_run.finish()?;
    if let Some(bad) = records.iter().find(|r| !r.success()) {
        bail!("worker {bad} did not succeed; see {:?}", bad.stdout);
    }
    Ok(())
}

fn study_config() -> StudyConfig {
    StudyConfig::new("digits-sweep").sampler(SamplerConfig::tpe(5)).pruner(PrunerConfig::median())
}

/// One array task: trials until the shared study has `KILN_TRIALS` of them.
fn worker() -> Result<()> {
    let ctx = JobContext::from_env();
    println!(
        "worker task {:?} of {:?} (job {:?}, restart {})",
        ctx.task_id, ctx.task_count, ctx.job_id, ctx.restart_count
    );
    let (train_set, val_set) = digits::train_and_val()?;
    let study_path = PathBuf::from(std::env::var("KILN_STUDY").context("KILN_STUDY")?);
    let total: u64 = env_number("KILN_TRIALS", 16)?;
    let study = Study::open_or_create(&study_path, study_config())?;
    let store = Store::from_env()?;
    let parent = std::env::var("KILN_PARENT_RUN").context("KILN_PARENT_RUN")?;
    study.set_tracking(Some(Tracking::new(&store, EXPERIMENT).parent(&parent)));
    let objective = |trial: &mut Trial| -> kiln::train::Result<f64> {
        let learning_rate = trial.suggest_log_float("learning_rate", 3e-4, 3e-2)?;
        let width = trial.suggest_int_step("width", 32, 128, 32)? as usize;
        let weight_decay = trial.suggest_log_float("weight_decay", 1e-5, 1e-2)?;
        let model = ModelConfig::Mlp(MlpConfig::new(64, &[width], 10));
        let optimizer = OptimizerConfig::AdamW { beta_1: 0.9, beta_2: 0.999, weight_decay };
        let config =
            TrainConfig { epochs: 8, learning_rate, optimizer, device: DeviceSpec::Cpu, ..TrainConfig::default() };
        digits::best_val_loss(trial, &config, &model, &train_set, &val_set)
    };
    let report = study.optimize_total(objective, total)?;
    println!(
        "worker {:?}: {} complete, {} pruned, {} failed",
        ctx.task_id,
        report.completed(),
        report.pruned(),
        report.failed()
    );
    Ok(())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}
