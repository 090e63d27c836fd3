//! Hyperparameter search: Optuna's define-by-run model, samplers and pruners, with a study
//! journal many processes share on a cluster file system, without a database or a server.
//!
//! A [`Study`] holds trials. [`Study::ask`] creates a [`Trial`], which draws parameters
//! ([`Trial::suggest_float`], [`Trial::suggest_log_float`], [`Trial::suggest_int`],
//! [`Trial::suggest_categorical`], or a declared [`SearchSpace`] with conditional parameters
//! through [`Trial::suggest_space`]), reports intermediate values ([`Trial::report`]), asks the
//! pruner ([`Trial::should_prune`]) and ends ([`Trial::complete`], [`Trial::prune`],
//! [`Trial::fail`], or [`Study::tell`]). [`Study::optimize`] runs that loop over a closure.
//!
//! Samplers ([`SamplerConfig`]): random, grid ([`GridConfig`]; running out is
//! [`Error::GridExhausted`](crate::Error::GridExhausted)), and TPE ([`TpeConfig`], Optuna's
//! univariate algorithm and defaults). Draws depend only on the seed, the trial number, the
//! parameter and the history, so they are reproducible and differ between parallel workers.
//! Pruners ([`PrunerConfig`]): the median (percentile) pruner and asynchronous successive
//! halving.
//!
//! A study lives in memory ([`Study::in_memory`]) or in a journal file
//! ([`Study::open_or_create`]): JSON lines with a checksum each, appended under `flock`, read
//! incrementally. Every task of a Slurm job array can open the same journal and call
//! [`Study::optimize_total`]; trial numbers are unique across them, a torn line left by a
//! killed writer is skipped, and trials of dead workers can be failed ([`Study::fail_stale`],
//! or automatically with [`Study::set_heartbeat`]). `docs/tuning.md` describes the format, the
//! locking protocol and what it needs from the file system.
//!
//! With [`Tracking`], each trial is also a kiln-track run, a child of the study's run.
//! [`PruneTraining`] connects a trial to [`crate::train`]: it reports each epoch's monitored
//! metric and stops the training when the pruner says so.
//!
//! ```no_run
//! use kiln_train::tune::{Direction, PrunerConfig, SamplerConfig, Study, StudyConfig, Trial};
//!
//! # fn main() -> kiln_train::Result<()> {
//! let config = StudyConfig::new("mlp")
//!     .direction(Direction::Minimize)
//!     .sampler(SamplerConfig::tpe(42))
//!     .pruner(PrunerConfig::median());
//! let study = Study::open_or_create("studies/mlp.jsonl", config)?;
//! let report = study.optimize(
//!     |trial: &mut Trial| -> kiln_train::Result<f64> {
//!         let lr = trial.suggest_log_float("lr", 1e-5, 1e-1)?;
//!         let optimizer = trial.suggest_categorical("optimizer", &["sgd", "adam"])?;
//!         let momentum = if optimizer == "sgd" { trial.suggest_float("momentum", 0.0, 0.99)? } else { 0.0 };
//!         let mut loss = 1.0;
//!         for epoch in 0..20 {
//!             loss *= 1.0 - lr.sqrt() * (1.0 + momentum) / 4.0; // train an epoch here
//!             trial.report(epoch, loss)?;
//!             if trial.should_prune()? {
//!                 return Err(trial.pruned());
//!             }
//!         }
//!         Ok(loss)
//!     },
//!     50,
//! )?;
//! println!("{} complete, {} pruned", report.completed(), report.pruned());
//! println!("best: {:?}", study.best_trial()?);
//! # Ok(()) }
//! ```

mod hooks;
mod journal;
mod math;
mod pruner;
mod sampler;
mod space;
mod state;
mod study;
mod tpe;

pub use hooks::PruneTraining;
pub use journal::{JournalStats, ParamValue};
pub use pruner::{MedianPruner, PrunerConfig, SuccessiveHalving};
pub use sampler::{GridConfig, SamplerConfig};
pub use space::{Condition, Distribution, ParamSpec, SearchSpace};
pub use study::{
    Direction, FrozenTrial, NewTrial, OptimizeReport, Outcome, Study, StudyConfig, TpeDensities, Tracking, Trial,
    TrialState,
};
pub use tpe::TpeConfig;
