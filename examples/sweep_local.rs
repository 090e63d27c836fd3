//! Run with: cargo run --release --example sweep_local
//!
//! Hyperparameter search for the digits MLP: TPE over the learning rate, width, depth, dropout
//! and optimiser, with the median pruner stopping poor trainings after their early epochs.
//! The study lives in a journal file, so running this several times at once (or as the tasks
//! of a Slurm job array) adds workers to the same study.
//!
//! Environment: `KILN_STUDY` (default `./kiln-studies/digits.jsonl`), `KILN_TRIALS` (the
//! study's total, default 30), `KILN_STORE` (default `./kiln-store`; each trial is a child run
//! of the study's run there).

use anyhow::{Context, Result};
use kiln::track::Store;
use kiln::train::tune::{PrunerConfig, SamplerConfig, Study, StudyConfig, Tracking, Trial};
use kiln::train::{Activation, DeviceSpec, MlpConfig, ModelConfig, OptimizerConfig, TrainConfig};

#[path = "common/digits.rs"]
mod digits;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let (train_set, val_set) = digits::train_and_val()?;

    let path = std::env::var("KILN_STUDY").unwrap_or_else(|_| "kiln-studies/digits.jsonl".into());
    let total: u64 =
        std::env::var("KILN_TRIALS").ok().map(|v| v.parse()).transpose().context("KILN_TRIALS")?.unwrap_or(30);
    let config = StudyConfig::new("digits-mlp").sampler(SamplerConfig::tpe(7)).pruner(PrunerConfig::median());
    let study = Study::open_or_create(&path, config)?;
    let store = Store::from_env()?;
    let mut study_run = store.run_builder("digits-tuning").name("digits-mlp study").start()?;
    study_run.log_param("study", &path)?;
    study.set_tracking(Some(Tracking::new(&store, "digits-tuning").parent(study_run.id())));

    let objective = |trial: &mut Trial| -> kiln::train::Result<f64> {
        let learning_rate = trial.suggest_log_float("learning_rate", 1e-4, 3e-2)?;
        let width = trial.suggest_int_step("width", 32, 256, 32)? as usize;
        let depth = trial.suggest_int("depth", 1, 3)? as usize;
        let dropout = trial.suggest_float("dropout", 0.0, 0.5)?;
        let optimizer = match trial.suggest_categorical("optimizer", &["adam", "sgd"])?.as_str() {
            "sgd" => OptimizerConfig::Sgd {
                momentum: trial.suggest_float("momentum", 0.5, 0.99)?,
                nesterov: true,
                weight_decay: 1e-4,
            },
            _ => OptimizerConfig::default(),
        };
        let model = ModelConfig::Mlp(MlpConfig {
            dropout,
            activation: Activation::Relu,
            ..MlpConfig::new(64, &vec![width; depth], 10)
        });
        let config =
            TrainConfig { epochs: 15, learning_rate, optimizer, device: DeviceSpec::Cpu, ..TrainConfig::default() };
        digits::best_val_loss(trial, &config, &model, &train_set, &val_set)
    };
    let report = study.optimize_total(objective, total)?;
    println!(
        "this worker: {} complete, {} pruned, {} failed; study {} ({} trials)",
        report.completed(),
        report.pruned(),
        report.failed(),
        path,
        study.trials()?.len()
    );
    if let Some(best) = study.best_trial()? {
        println!("best trial {}: validation loss {:.4}", best.number, best.value.unwrap_or(f64::NAN));
        for (name, value) in &best.params {
            println!("  {name} = {value}");
        }
        study_run.log_metric("best_val_loss", best.number, best.value.unwrap_or(f64::NAN))?;
    }
    study_run.finish()?;
    Ok(())
}
