//! Pruning a kiln-train training from inside its loop.

use std::ops::ControlFlow;

use super::study::Trial;
use crate::config::MonitorMetric;
use crate::trainer::{EpochReport, Hooks};
use crate::{Error, Result};

/// [`Hooks`] that report each epoch's monitored metric to a trial (at step = epoch) and stop
/// the training as soon as the study's pruner advises it.
///
/// ```no_run
/// # use kiln_train::{Examples, ModelConfig, MonitorMetric, TrainConfig, train};
/// # use kiln_train::tune::{PruneTraining, Trial};
/// # fn objective(trial: &mut Trial, data: &Examples, val: &Examples) -> kiln_train::Result<f64> {
/// let lr = trial.suggest_log_float("lr", 1e-4, 1e-1)?;
/// let config = TrainConfig { learning_rate: lr, ..TrainConfig::default() };
/// let mut hooks = PruneTraining::new(trial, MonitorMetric::VAL_LOSS);
/// let trained = train(&config, &ModelConfig::mlp(64, &[128], 10), data, Some(val), None, &mut hooks)?;
/// hooks.finish()?; // the trial's "pruned" error when the pruner stopped it
/// Ok(trained.history.iter().filter_map(|e| e.val_loss).fold(f64::INFINITY, f64::min))
/// # }
/// ```
pub struct PruneTraining<'t> {
    trial: &'t mut Trial,
    metric: MonitorMetric,
    pruned: bool,
    error: Option<Error>,
}

impl<'t> PruneTraining<'t> {
    /// Reports `metric` of every epoch to `trial` (any name an [`EpochReport`] has:
    /// `MonitorMetric::VAL_LOSS`, `"val_rmse"`, `"val_auc"`, ...).
    pub fn new(trial: &'t mut Trial, metric: impl Into<MonitorMetric>) -> Self {
        Self { trial, metric: metric.into(), pruned: false, error: None }
    }

    /// Whether the pruner stopped the training.
    pub fn was_pruned(&self) -> bool {
        self.pruned
    }

    /// `Err(trial.pruned())` if the pruner stopped the training (return it from the objective
    /// so the trial is recorded as pruned), the error of a failed report, or `Ok`.
    pub fn finish(self) -> Result<()> {
        match (self.error, self.pruned) {
            (Some(e), _) => Err(e),
            (None, true) => Err(self.trial.pruned()),
            (None, false) => Ok(()),
        }
    }
}

impl Hooks for PruneTraining<'_> {
    fn on_epoch(&mut self, epoch: &EpochReport) -> ControlFlow<()> {
        let Some(value) = epoch.metric(self.metric.name()) else {
            let mut known = vec!["train_loss".to_string()];
            known.extend(epoch.val_loss.map(|_| "val_loss".to_string()));
            known.extend(epoch.metrics.keys().cloned());
            self.error = Some(Error::Config(format!(
                "pruning on {}, which the training does not report (it reports {}){}",
                self.metric,
                known.join(", "),
                if self.metric.name().starts_with("val_") && epoch.val_loss.is_none() {
                    "; it needs a validation set"
                } else {
                    ""
                }
            )));
            return ControlFlow::Break(());
        };
        match self.trial.report(epoch.epoch as u64, value).and_then(|()| self.trial.should_prune()) {
            Ok(false) => ControlFlow::Continue(()),
            Ok(true) => {
                self.pruned = true;
                ControlFlow::Break(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}
