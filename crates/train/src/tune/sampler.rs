//! Samplers: random, grid, and TPE (in [`super::tpe`]).
//!
//! Every draw uses a generator seeded from the sampler's seed, the trial number and the
//! parameter name, so a suggestion depends only on the seed, the trial and the history it
//! learns from: the same seed and history give the same suggestion in any process, and
//! concurrent workers (whose trial numbers differ) never draw in lockstep.

use std::collections::{BTreeMap, HashSet};

use kiln_data::SplitMix64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::space::Distribution;
use super::state::StudyState;
use super::tpe::{TpeConfig, TpeScratch};
use crate::{Error, Result};

/// How a study draws parameters; stored in the journal so every worker samples alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SamplerConfig {
    /// Independent uniform draws (log-uniform on a log scale).
    Random {
        /// Seed of the draws.
        #[serde(default)]
        seed: u64,
    },
    /// Every point of a grid, each given to exactly one trial.
    Grid(GridConfig),
    /// The tree-structured Parzen estimator.
    Tpe(TpeConfig),
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::Tpe(TpeConfig::default())
    }
}

impl SamplerConfig {
    /// Random search with `seed`.
    pub fn random(seed: u64) -> Self {
        Self::Random { seed }
    }

    /// TPE with Optuna's defaults and `seed`.
    pub fn tpe(seed: u64) -> Self {
        Self::Tpe(TpeConfig { seed, ..TpeConfig::default() })
    }

    /// A grid over the cartesian product of `grid`'s values, in order.
    pub fn grid(grid: BTreeMap<String, Vec<Value>>) -> Self {
        Self::Grid(GridConfig { grid, seed: None })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Self::Random { .. } => Ok(()),
            Self::Grid(g) => g.size().map(|_| ()),
            Self::Tpe(t) => t.validate(),
        }
    }
}

/// A grid: the cartesian product of each parameter's values.
///
/// Each point goes to one trial; a point whose trial failed is not retried (as in Optuna).
/// Once every point has a trial, [`Study::ask`](super::Study::ask) returns
/// [`Error::GridExhausted`]. A parameter suggested but not in the grid, or a grid value
/// outside the distribution asked, is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridConfig {
    /// Values of each parameter.
    pub grid: BTreeMap<String, Vec<Value>>,
    /// Visits the points in a shuffled order drawn from this seed (the order of the
    /// cartesian product, last parameter fastest, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl GridConfig {
    /// The number of points.
    pub fn size(&self) -> Result<u64> {
        if self.grid.is_empty() {
            return Err(Error::Config("the grid has no parameters".into()));
        }
        let mut n: u64 = 1;
        for (name, values) in &self.grid {
            if values.is_empty() {
                return Err(Error::Config(format!("grid parameter `{name}` has no values")));
            }
            n = n
                .checked_mul(values.len() as u64)
                .filter(|n| *n <= 1 << 32)
                .ok_or_else(|| Error::Config("the grid has more than 2^32 points".into()))?;
        }
        Ok(n)
    }

    /// The value of `name` at point `id`.
    fn value(&self, id: u64, name: &str) -> Option<&Value> {
        let mut rest = id;
        let mut found = None;
        for (n, values) in self.grid.iter().rev() {
            let len = values.len() as u64;
            if n == name {
                found = values.get((rest % len) as usize);
            }
            rest /= len;
        }
        found
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The generator for one draw.
pub(crate) fn rng_for(seed: u64, trial: u64, name: &str) -> SplitMix64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&trial.to_le_bytes());
    h.update(name.as_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    SplitMix64::new(u64::from_le_bytes(first))
}

/// A uniform draw from `dist` (log-uniform on a log scale), as Optuna's random sampler: a
/// stepped distribution is drawn on `[low − step/2, high + step/2]` and rounded.
pub(crate) fn sample_random(dist: &Distribution, rng: &mut SplitMix64) -> f64 {
    let u = rng.next_f64();
    match *dist {
        Distribution::Float { low, high, log: true, .. } => {
            (low.ln() + u * (high.ln() - low.ln())).exp().clamp(low, high)
        }
        Distribution::Float { low, high, step: Some(step), .. } => {
            let x = (low - step / 2.0) + u * (high - low + step);
            round_to_step(x, low, high, step)
        }
        Distribution::Float { low, high, .. } => (low + u * (high - low)).clamp(low, high),
        Distribution::Int { low, high, step, log } => {
            let (lo, hi, st) = (low as f64, high as f64, step as f64);
            let x = if log {
                let (a, b) = ((lo - 0.5).ln(), (hi + 0.5).ln());
                (a + u * (b - a)).exp()
            } else {
                (lo - st / 2.0) + u * (hi - lo + st)
            };
            round_to_step(x, lo, hi, st)
        }
        Distribution::Categorical { ref choices } => rng.below(choices.len() as u64) as f64,
    }
}

/// `low + round((x − low)/step)·step`, within `[low, high]`.
pub(crate) fn round_to_step(x: f64, low: f64, high: f64, step: f64) -> f64 {
    (low + ((x - low) / step).round() * step).clamp(low, high)
}

/// A sampler with the state it keeps between draws.
#[derive(Debug)]
pub(crate) enum Sampler {
    Random { seed: u64 },
    Grid { config: GridConfig, order: Option<(u64, u64)>, size: u64 },
    Tpe { config: TpeConfig, scratch: Box<TpeScratch> },
}

impl Sampler {
    pub(crate) fn new(config: &SamplerConfig) -> Result<Self> {
        config.validate()?;
        Ok(match config {
            SamplerConfig::Random { seed } => Self::Random { seed: *seed },
            SamplerConfig::Grid(g) => {
                let size = g.size()?;
                // The i-th point visited is (a·i + c) mod size, a coprime to size: a
                // permutation drawn from the seed, computed without listing the points.
                let order = g.seed.map(|seed| {
                    let mut rng = SplitMix64::new(seed);
                    let c = rng.below(size);
                    let a = loop {
                        let a = 1 + rng.below(size);
                        if gcd(a, size) == 1 {
                            break a;
                        }
                    };
                    (a, c)
                });
                Self::Grid { config: g.clone(), order, size }
            }
            SamplerConfig::Tpe(t) => Self::Tpe { config: t.clone(), scratch: Box::default() },
        })
    }

    /// The grid point for a new trial, or `None` for other samplers.
    pub(crate) fn next_grid_point(&self, state: &StudyState, study: &str) -> Result<Option<u64>> {
        let Self::Grid { order, size, .. } = self else { return Ok(None) };
        let taken: HashSet<u64> = state.trials.iter().filter_map(|t| t.grid_id).collect();
        let point = |i: u64| match order {
            Some((a, c)) => ((u128::from(*a) * u128::from(i) + u128::from(*c)) % u128::from(*size)) as u64,
            None => i,
        };
        let free = (0..*size).map(point).find(|id| !taken.contains(id));
        free.map(Some).ok_or_else(|| Error::GridExhausted { study: study.to_string(), points: *size })
    }

    /// A value (internal representation) of `name` for `trial`.
    pub(crate) fn sample(&mut self, state: &StudyState, trial: u64, name: &str, dist: &Distribution) -> Result<f64> {
        match self {
            Self::Random { seed } => {
                Ok(dist.single().unwrap_or_else(|| sample_random(dist, &mut rng_for(*seed, trial, name))))
            }
            Self::Grid { config, .. } => {
                let id = state.trials.get(trial as usize).and_then(|t| t.grid_id).ok_or_else(|| {
                    Error::Config(format!("trial {trial} has no grid point (created before the grid sampler?)"))
                })?;
                let value = config.value(id, name).ok_or_else(|| {
                    let names: Vec<&str> = config.grid.keys().map(String::as_str).collect();
                    Error::Config(format!("parameter `{name}` is not in the grid (the grid has {})", names.join(", ")))
                })?;
                dist.to_internal(value).ok_or_else(|| {
                    Error::Config(format!("parameter `{name}`: the grid value {value} is not in {dist}"))
                })
            }
            Self::Tpe { config, scratch } => Ok(super::tpe::sample(config, scratch, state, trial, name, dist)),
        }
    }
}
