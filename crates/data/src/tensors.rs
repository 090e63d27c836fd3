//! From frames to what a training loop eats: `f32` feature matrices, label vectors, seeded
//! mini-batches, and a weighted sampler for imbalanced classes.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, SplitMix64};

/// Features as `f32` (what GPUs and burn's default float use), checked to be finite.
pub fn to_f32(x: ArrayView2<'_, f64>, source: &str, features: &[String]) -> Result<Array2<f32>> {
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite() || v.abs() > f64::from(f32::MAX)) {
        return Err(Error::BadValue {
            source_name: source.to_string(),
            row: r + 1,
            column: features.get(c).cloned().unwrap_or_else(|| format!("#{c}")),
            expected: "a finite number within f32 range".into(),
            found: format!("{v}"),
        });
    }
    Ok(x.mapv(|v| v as f32))
}

/// Mini-batches of row indices for one epoch: every row once, in a seeded shuffled order
/// (the same for the same seed and epoch), the last batch possibly smaller.
pub fn epoch_batches(rows: usize, batch_size: usize, seed: u64, epoch: u64) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(Error::InvalidArgument("batch_size must be positive".into()));
    }
    let mut order: Vec<usize> = (0..rows).collect();
    SplitMix64::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).shuffle(&mut order);
    Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
}

/// Gathers the rows `batch` of `x` and `y` (for one mini-batch).
pub fn gather<T: Clone, U: Clone>(x: &Array2<T>, y: &[U], batch: &[usize]) -> Result<(Array2<T>, Vec<U>)> {
    if x.nrows() != y.len() {
        return Err(Error::Shape(format!("{} feature rows but {} labels", x.nrows(), y.len())));
    }
    if let Some(bad) = batch.iter().find(|i| **i >= y.len()) {
        return Err(Error::InvalidArgument(format!("batch row {bad} is out of range for {} rows", y.len())));
    }
    Ok((x.select(Axis(0), batch), batch.iter().map(|i| y[*i].clone()).collect()))
}

/// Draws row indices with replacement, each row with probability proportional to its weight
/// (PyTorch's `WeightedRandomSampler`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedSampler {
    cumulative: Vec<f64>,
}

impl WeightedSampler {
    /// A sampler with a weight per row (non-negative, finite, not all zero).
    pub fn new(weights: &[f64]) -> Result<Self> {
        if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite() || **w < 0.0) {
            return Err(Error::InvalidArgument(format!(
                "weight of row {} is {w}; weights must be finite and >= 0",
                i + 1
            )));
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(Error::InvalidArgument("every weight is zero".into()));
        }
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Ok(Self { cumulative })
    }

    /// Weights that make every class equally likely: `1 / (rows of the row's class)`.
    pub fn balanced<L: Ord + Clone>(labels: &[L]) -> Result<Self> {
        let mut counts: std::collections::BTreeMap<&L, usize> = std::collections::BTreeMap::new();
        for l in labels {
            *counts.entry(l).or_insert(0) += 1;
        }
        let weights: Vec<f64> = labels.iter().map(|l| 1.0 / counts[l] as f64).collect();
        Self::new(&weights)
    }

    /// `n` row indices drawn with replacement, seeded.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<usize> {
        let mut rng = SplitMix64::new(seed);
        let Some(last) = self.cumulative.len().checked_sub(1) else { return Vec::new() };
        (0..n)
            .map(|_| {
                let u = rng.next_f64();
                self.cumulative.partition_point(|c| *c <= u).min(last)
            })
            .collect()
    }
}

/// Class weights for a loss, `rows / (classes · rows of the class)` (scikit-learn's
/// `class_weight="balanced"`), by class index; a label outside `0..classes` is an error.
pub fn balanced_class_weights(labels: &[usize], classes: usize) -> Result<Array1<f32>> {
    let mut counts = vec![0usize; classes];
    for (row, l) in labels.iter().enumerate() {
        match counts.get_mut(*l) {
            Some(c) => *c += 1,
            None => {
                return Err(Error::InvalidArgument(format!(
                    "label {l} of row {} is not a class index below {classes}",
                    row + 1
                )));
            }
        }
    }
    let n = labels.len() as f32;
    Ok(Array1::from_iter(counts.iter().map(|c| if *c == 0 { 0.0 } else { n / (classes as f32 * *c as f32) })))
}
