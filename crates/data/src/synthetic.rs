//! Synthetic tabular classification data, for scale tests, benchmarks and the online-data
//! simulator: numeric and categorical features that depend on the class, label noise, class
//! imbalance and injected drift, all deterministic by seed.

use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, SplitMix64};

/// Drift injected into the features of a sample (the labels' relation to the population's
/// class centres is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InjectedDrift {
    /// Added to every numeric feature (in units of its within-class standard deviation, 1).
    pub mean_shift: f64,
    /// Multiplies every numeric feature's spread around its class centre (1 = unchanged).
    pub variance_scale: f64,
    /// Share of categorical values replaced by the last level.
    pub category_shift: f64,
    /// Drift only the first this many numeric and categorical features (`None`: all).
    pub features: Option<usize>,
}

impl Default for InjectedDrift {
    /// No drift: no shift, spread unchanged (`variance_scale` 1), no category shift.
    fn default() -> Self {
        Self { mean_shift: 0.0, variance_scale: 1.0, category_shift: 0.0, features: None }
    }
}

/// What to generate. `seed` fixes the population (class centres, category preferences);
/// `sample` picks a draw from it, so two samples of one population differ only by chance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    /// Rows.
    pub rows: usize,
    /// Numeric features `num_0`, `num_1`, ...
    pub numeric: usize,
    /// Categorical features `cat_0`, ... with `levels` values each (`l0`, `l1`, ...).
    pub categorical: usize,
    /// Values per categorical feature.
    pub levels: usize,
    /// Classes `c0`, `c1`, ... in column `label`.
    pub classes: usize,
    /// Relative class frequencies (default: balanced).
    pub class_weights: Option<Vec<f64>>,
    /// Share of rows whose label is replaced by a uniformly drawn class.
    pub label_noise: f64,
    /// Distance between class centres (larger: easier).
    pub separation: f64,
    /// Drift to inject into this sample.
    pub drift: Option<InjectedDrift>,
    /// The population.
    pub seed: u64,
    /// The draw from the population.
    pub sample: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            rows: 1000,
            numeric: 8,
            categorical: 2,
            levels: 4,
            classes: 3,
            class_weights: None,
            label_noise: 0.0,
            separation: 2.0,
            drift: None,
            seed: 0,
            sample: 0,
        }
    }
}

fn normal(rng: &mut SplitMix64) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Generates a frame with columns `num_*`, `cat_*` and `label`; see [`SyntheticSpec`].
pub fn synthetic_classification(spec: &SyntheticSpec) -> Result<DataFrame> {
    if spec.classes < 2 || (spec.categorical > 0 && spec.levels < 2) {
        return Err(Error::InvalidArgument(format!(
            "synthetic data needs at least 2 classes and 2 levels per categorical feature, got {} and {}",
            spec.classes, spec.levels
        )));
    }
    if !(0.0..=1.0).contains(&spec.label_noise) {
        return Err(Error::InvalidArgument(format!("label_noise {} is outside [0, 1]", spec.label_noise)));
    }
    let weights = spec.class_weights.clone().unwrap_or_else(|| vec![1.0; spec.classes]);
    if weights.len() != spec.classes
        || weights.iter().any(|w| !w.is_finite() || *w < 0.0)
        || weights.iter().sum::<f64>() <= 0.0
    {
        return Err(Error::InvalidArgument(format!(
            "class_weights must be {} non-negative numbers with a positive sum, got {weights:?}",
            spec.classes
        )));
    }
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();

    // The population: class centres and each class's favourite level per categorical feature.
    let mut population = SplitMix64::new(spec.seed);
    let centres: Vec<Vec<f64>> = (0..spec.classes)
        .map(|_| (0..spec.numeric).map(|_| (population.next_f64() * 2.0 - 1.0) * spec.separation).collect())
        .collect();
    let favourite: Vec<Vec<usize>> = (0..spec.classes)
        .map(|_| (0..spec.categorical).map(|_| population.below(spec.levels as u64) as usize).collect())
        .collect();

    let mut rng = SplitMix64::new(spec.seed ^ spec.sample.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1));
    let drift = spec.drift.unwrap_or_default();
    let drifted = |j: usize| drift.features.is_none_or(|k| j < k);
    let mut numeric: Vec<Vec<f64>> = vec![Vec::with_capacity(spec.rows); spec.numeric];
    let mut categorical: Vec<Vec<String>> = vec![Vec::with_capacity(spec.rows); spec.categorical];
    let mut labels = Vec::with_capacity(spec.rows);
    for _ in 0..spec.rows {
        let u = rng.next_f64();
        let class = cumulative.iter().position(|c| u < *c).unwrap_or(spec.classes - 1);
        for (j, column) in numeric.iter_mut().enumerate() {
            let spread = normal(&mut rng);
            let value = if drifted(j) {
                centres[class][j] + spread * drift.variance_scale + drift.mean_shift
            } else {
                centres[class][j] + spread
            };
            column.push(value);
        }
        for (j, column) in categorical.iter_mut().enumerate() {
            // Half the time the class's favourite level, otherwise any level.
            let mut level =
                if rng.next_f64() < 0.5 { favourite[class][j] } else { rng.below(spec.levels as u64) as usize };
            if drifted(j) && rng.next_f64() < drift.category_shift {
                level = spec.levels - 1;
            }
            column.push(format!("l{level}"));
        }
        let label = if rng.next_f64() < spec.label_noise { rng.below(spec.classes as u64) as usize } else { class };
        labels.push(format!("c{label}"));
    }
    let mut columns: Vec<Column> = Vec::with_capacity(spec.numeric + spec.categorical + 1);
    for (j, values) in numeric.into_iter().enumerate() {
        columns.push(Column::new(format!("num_{j}").into(), values));
    }
    for (j, values) in categorical.into_iter().enumerate() {
        columns.push(Column::new(format!("cat_{j}").into(), values));
    }
    columns.push(Column::new("label".into(), labels));
    Ok(DataFrame::new(spec.rows, columns)?)
}
