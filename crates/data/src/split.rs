//! Train/validation/test splits.

use std::collections::BTreeMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;
use crate::{Error, Result};

/// The fractions of rows that go to train, validation and test. They must be non-negative and
/// sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions {
    /// Fraction of rows for training.
    pub train: f64,
    /// Fraction of rows for validation (early stopping, model selection).
    pub val: f64,
    /// Fraction of rows held out for the final evaluation.
    pub test: f64,
}

impl SplitFractions {
    /// Checked fractions.
    pub fn new(train: f64, val: f64, test: f64) -> Result<Self> {
        let f = Self { train, val, test };
        let ok =
            [train, val, test].iter().all(|x| x.is_finite() && *x >= 0.0) && ((train + val + test) - 1.0).abs() < 1e-9;
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "split fractions must be non-negative and sum to 1, got {train}/{val}/{test}"
            )));
        }
        Ok(f)
    }
}

impl Default for SplitFractions {
    /// 70% train, 15% validation, 15% test.
    fn default() -> Self {
        Self { train: 0.7, val: 0.15, test: 0.15 }
    }
}

/// Row indices (0-based, into the dataset that was split) of each part, each sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Validation rows.
    pub val: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

impl Split {
    /// Total number of rows in the three parts.
    pub fn len(&self) -> usize {
        self.train.len() + self.val.len() + self.test.len()
    }

    /// Whether all three parts are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits rows so that each class keeps its share in every part.
///
/// Within each class the rows are shuffled with [`SplitMix64`] seeded by `seed`, then cut by
/// `fractions` (rounded to the nearest row; test takes the remainder), so the same labels, seed
/// and fractions always give the same split. Classes are visited in sorted order.
pub fn stratified_split<L: Ord + Hash + Clone>(labels: &[L], fractions: SplitFractions, seed: u64) -> Result<Split> {
    let mut by_class: BTreeMap<&L, Vec<usize>> = BTreeMap::new();
    for (i, label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(i);
    }
    let mut rng = SplitMix64::new(seed);
    let mut split = Split::default();
    for rows in by_class.values_mut() {
        rng.shuffle(rows);
        let n = rows.len() as f64;
        let n_train = (n * fractions.train).round() as usize;
        let n_val = ((n * fractions.val).round() as usize).min(rows.len() - n_train);
        split.train.extend_from_slice(&rows[..n_train]);
        split.val.extend_from_slice(&rows[n_train..n_train + n_val]);
        split.test.extend_from_slice(&rows[n_train + n_val..]);
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    split.test.sort_unstable();
    Ok(split)
}

/// Splits `n` rows at random, ignoring any label.
pub fn random_split(n: usize, fractions: SplitFractions, seed: u64) -> Split {
    let mut rows: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut rows);
    let n_train = (n as f64 * fractions.train).round() as usize;
    let n_val = ((n as f64 * fractions.val).round() as usize).min(n - n_train);
    let mut split = Split {
        train: rows[..n_train].to_vec(),
        val: rows[n_train..n_train + n_val].to_vec(),
        test: rows[n_train + n_val..].to_vec(),
    };
    split.train.sort_unstable();
    split.val.sort_unstable();
    split.test.sort_unstable();
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_fractions_that_do_not_sum_to_one() {
        assert!(SplitFractions::new(0.7, 0.2, 0.2).is_err());
        assert!(SplitFractions::new(-0.1, 0.6, 0.5).is_err());
        assert!(SplitFractions::new(0.8, 0.1, 0.1).is_ok());
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let labels: Vec<u8> = (0..200).map(|i| (i % 3) as u8).collect();
        let f = SplitFractions::default();
        let a = stratified_split(&labels, f, 1).unwrap();
        let b = stratified_split(&labels, f, 1).unwrap();
        let c = stratified_split(&labels, f, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn random_split_is_a_partition() {
        let s = random_split(101, SplitFractions::default(), 3);
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).chain(&s.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..101).collect::<Vec<_>>());
        assert_eq!(s.train.len(), 71);
    }
}
