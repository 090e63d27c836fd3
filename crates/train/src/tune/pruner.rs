//! Pruners: stop unpromising trials early from their intermediate values.

use serde::{Deserialize, Serialize};

use super::journal::Op;
use super::state::StudyState;
use super::study::Direction;
use crate::{Error, Result};

/// How a study prunes; stored in the journal with the study.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PrunerConfig {
    /// Never prune.
    #[default]
    None,
    /// Prune a trial whose best intermediate value so far is worse than a percentile (the
    /// median by default) of the complete trials' values at its latest step.
    Median(MedianPruner),
    /// Asynchronous successive halving (ASHA).
    SuccessiveHalving(SuccessiveHalving),
}

impl PrunerConfig {
    /// The median pruner with Optuna's defaults.
    pub fn median() -> Self {
        Self::Median(MedianPruner::default())
    }

    /// Successive halving with Optuna's defaults and `min_resource`.
    pub fn successive_halving(min_resource: u64) -> Self {
        Self::SuccessiveHalving(SuccessiveHalving { min_resource, ..SuccessiveHalving::default() })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Self::None => Ok(()),
            Self::Median(m) => {
                if m.interval_steps == 0 {
                    return Err(Error::Config("median pruner: interval_steps must be at least 1".into()));
                }
                if !(0.0..=100.0).contains(&m.percentile) {
                    return Err(Error::Config(format!(
                        "median pruner: the percentile must be in [0, 100], found {}",
                        m.percentile
                    )));
                }
                Ok(())
            }
            Self::SuccessiveHalving(s) => {
                if s.min_resource == 0 {
                    return Err(Error::Config("successive halving: min_resource must be at least 1".into()));
                }
                if s.reduction_factor < 2 {
                    return Err(Error::Config("successive halving: reduction_factor must be at least 2".into()));
                }
                Ok(())
            }
        }
    }
}

/// The median (or any percentile) pruner, as Optuna's `MedianPruner`/`PercentilePruner`.
///
/// At the trial's latest step s, it is pruned when its best intermediate value so far is
/// worse than the `percentile` of the values the complete trials reported at s (only complete
/// trials count: pruned ones would drag the bar down). Nothing is pruned before
/// `n_startup_trials` trials are complete, before step `n_warmup_steps`, at steps other than
/// the first reported in each `interval_steps` window, or when fewer than `n_min_trials`
/// complete trials reported step s. A NaN-only trial is pruned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MedianPruner {
    /// Complete trials needed before pruning starts (default 5).
    pub n_startup_trials: usize,
    /// Steps of every trial never pruned (default 0).
    pub n_warmup_steps: u64,
    /// Check at most once per this many steps (default 1).
    pub interval_steps: u64,
    /// Complete trials that must have reported the step (default 1).
    pub n_min_trials: usize,
    /// The bar, as a percentile of the others' values, oriented by the direction: 50 is the
    /// median; 25 prunes more when minimising (a trial must be in the best quarter).
    pub percentile: f64,
}

impl Default for MedianPruner {
    fn default() -> Self {
        Self { n_startup_trials: 5, n_warmup_steps: 0, interval_steps: 1, n_min_trials: 1, percentile: 50.0 }
    }
}

/// Asynchronous successive halving, as Optuna's `SuccessiveHalvingPruner`.
///
/// Rung k sits at step `min_resource · reduction_factor^(min_early_stopping_rate + k)`. When a
/// trial reaches a rung its value is recorded there (a `rung` line) and it continues only if
/// it is in the top 1/`reduction_factor` of all values recorded at that rung so far,
/// itself included (the best one while fewer than `reduction_factor` are recorded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SuccessiveHalving {
    /// Steps before the first rung (default 1).
    pub min_resource: u64,
    /// η: the rungs are η times apart and keep 1/η of the trials (default 4).
    pub reduction_factor: u64,
    /// s: shifts the first rung to `min_resource · η^s` (default 0).
    pub min_early_stopping_rate: u32,
    /// Prune at a rung until more than this many values are recorded there (default 0).
    pub bootstrap_count: usize,
}

impl Default for SuccessiveHalving {
    fn default() -> Self {
        Self { min_resource: 1, reduction_factor: 4, min_early_stopping_rate: 0, bootstrap_count: 0 }
    }
}

/// numpy's default (linear) percentile of the non-NaN values.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

pub(crate) fn median(cfg: &MedianPruner, state: &StudyState, trial: usize) -> bool {
    let Some(rec) = state.trials.get(trial) else { return false };
    let n_complete = state.complete.len();
    if n_complete == 0 || n_complete < cfg.n_startup_trials {
        return false;
    }
    let Some((step, _)) = rec.last_step() else { return false };
    if step < cfg.n_warmup_steps {
        return false;
    }
    let nearest_lower = (step - cfg.n_warmup_steps) / cfg.interval_steps * cfg.interval_steps + cfg.n_warmup_steps;
    let second_last = rec.intermediate.iter().map(|s| s.0).filter(|&s| s != step).max();
    if second_last.is_some_and(|s| s >= nearest_lower) {
        return false;
    }
    let maximize = state.direction() == Direction::Maximize;
    let finite = rec.intermediate.iter().map(|s| s.1).filter(|v| !v.is_nan());
    let best = if maximize { finite.fold(f64::NAN, f64::max) } else { finite.fold(f64::NAN, f64::min) };
    if best.is_nan() {
        return true;
    }
    let Some(values) = state.step_values.get(&step) else { return false };
    if values.len() < cfg.n_min_trials {
        return false;
    }
    let q = if maximize { 100.0 - cfg.percentile } else { cfg.percentile };
    let bar = percentile(values, q);
    if bar.is_nan() {
        return false;
    }
    if maximize { best < bar } else { best > bar }
}

/// The decision for `trial` at its latest step, and the rung lines to record first.
pub(crate) fn successive_halving(
    cfg: &SuccessiveHalving,
    state: &StudyState,
    trial: usize,
    ms: i64,
) -> (Vec<Op>, bool) {
    let mut ops = Vec::new();
    let Some(rec) = state.trials.get(trial) else { return (ops, false) };
    let Some((step, value)) = rec.last_step() else { return (ops, false) };
    let maximize = state.direction() == Direction::Maximize;
    let mut rung = rec.rungs.len();
    loop {
        let promotion = u32::try_from(rung)
            .ok()
            .and_then(|r| r.checked_add(cfg.min_early_stopping_rate))
            .and_then(|e| cfg.reduction_factor.checked_pow(e))
            .and_then(|p| p.checked_mul(cfg.min_resource));
        let Some(promotion) = promotion else { return (ops, false) };
        if step < promotion {
            return (ops, false);
        }
        if value.is_nan() {
            return (ops, true);
        }
        let mut competing: Vec<f64> = state.rung_values.get(rung).cloned().unwrap_or_default();
        competing.push(value);
        ops.push(Op::Rung { trial: trial as u64, ms, rung: rung as u32, value });
        if competing.len() <= cfg.bootstrap_count {
            return (ops, true);
        }
        let idx = (competing.len() / cfg.reduction_factor as usize).saturating_sub(1);
        competing.sort_by(f64::total_cmp);
        let promotable = if maximize { value >= competing[competing.len() - 1 - idx] } else { value <= competing[idx] };
        if !promotable {
            return (ops, true);
        }
        rung += 1;
    }
}
