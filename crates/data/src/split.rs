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
        // Clamped: fractions read from a file skip `SplitFractions::new`'s checks.
        let n_train = ((n * fractions.train).round().max(0.0) as usize).min(rows.len());
        let n_val = ((n * fractions.val).round().max(0.0) as usize).min(rows.len() - n_train);
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
    let n_train = ((n as f64 * fractions.train).round().max(0.0) as usize).min(n);
    let n_val = ((n as f64 * fractions.val).round().max(0.0) as usize).min(n - n_train);
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

/// Splits rows so that no group (patient, subject, site, session) is in two parts: all rows
/// of a group go to one part.
///
/// The distinct groups are shuffled with `seed`, laid end to end by their row counts, and
/// each goes to the part its middle row falls in. The parts' sizes then follow `fractions`
/// as closely as the group sizes allow.
pub fn group_split<G: Ord + Hash + Clone>(groups: &[G], fractions: SplitFractions, seed: u64) -> Split {
    let mut by_group: BTreeMap<&G, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        by_group.entry(g).or_default().push(i);
    }
    let mut order: Vec<Vec<usize>> = by_group.into_values().collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let n = groups.len() as f64;
    let (train_end, val_end) = (fractions.train * n, (fractions.train + fractions.val) * n);
    let mut split = Split::default();
    let mut before = 0.0;
    for rows in order {
        let middle = before + rows.len() as f64 / 2.0;
        before += rows.len() as f64;
        let part = if middle <= train_end {
            &mut split.train
        } else if middle <= val_end {
            &mut split.val
        } else {
            &mut split.test
        };
        part.extend(rows);
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    split.test.sort_unstable();
    split
}

/// Splits rows by time: the earliest go to train, the next to validation, the latest to
/// test, with `gap` rows left out before validation and before test (so features computed
/// over a window cannot see across a boundary). A boundary never falls between two rows
/// with the same time: every training time is before every validation time, and so on.
pub fn time_split<T: Ord>(times: &[T], fractions: SplitFractions, gap: usize) -> Split {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*a].cmp(&times[*b]).then(a.cmp(b)));
    let n = order.len();
    // Moves a cut forward past rows sharing the time just before it.
    let settle = |mut cut: usize| {
        while cut > 0 && cut < n && times[order[cut]] == times[order[cut - 1]] {
            cut += 1;
        }
        cut.min(n)
    };
    let train_end = settle(((n as f64 * fractions.train).round().max(0.0) as usize).min(n));
    let val_start = settle((train_end + gap).min(n));
    let val_end =
        settle(((n as f64 * (fractions.train + fractions.val)).round().max(0.0) as usize).clamp(val_start, n));
    let test_start = settle((val_end + gap).min(n));
    let pick = |range: std::ops::Range<usize>| {
        let mut rows: Vec<usize> = order[range].to_vec();
        rows.sort_unstable();
        rows
    };
    Split { train: pick(0..train_end), val: pick(val_start..val_end), test: pick(test_start..n) }
}

/// One fold of a cross-validation: rows to fit on and rows to score.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fold {
    /// Rows to fit on, sorted.
    pub train: Vec<usize>,
    /// Rows held out, sorted.
    pub test: Vec<usize>,
}

fn check_k(n: usize, k: usize) -> Result<()> {
    if k < 2 || k > n {
        return Err(Error::InvalidArgument(format!("k-fold needs 2 <= k <= rows, got k = {k} for {n} rows")));
    }
    Ok(())
}

fn folds_from(assignment: &[usize], k: usize) -> Vec<Fold> {
    (0..k)
        .map(|f| {
            let (test, train): (Vec<usize>, Vec<usize>) = (0..assignment.len()).partition(|i| assignment[*i] == f);
            Fold { train, test }
        })
        .collect()
}

/// K-fold cross-validation: the rows are shuffled with `seed` and cut into `k` folds whose
/// sizes differ by at most one; every row is held out exactly once.
pub fn k_fold(n: usize, k: usize, seed: u64) -> Result<Vec<Fold>> {
    check_k(n, k)?;
    let mut rows: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut rows);
    let mut assignment = vec![0; n];
    let (base, extra) = (n / k, n % k);
    let mut next = 0;
    for fold in 0..k {
        let size = base + usize::from(fold < extra);
        for &row in &rows[next..next + size] {
            assignment[row] = fold;
        }
        next += size;
    }
    Ok(folds_from(&assignment, k))
}

/// Stratified k-fold: like [`k_fold`], but each class is dealt across the folds in turn (its
/// rows shuffled with `seed`, classes in sorted order, the dealing carrying on from class to
/// class), so every fold holds each class's share give or take one row, and fold sizes differ
/// by at most one.
pub fn stratified_k_fold<L: Ord + Hash + Clone>(labels: &[L], k: usize, seed: u64) -> Result<Vec<Fold>> {
    check_k(labels.len(), k)?;
    let mut by_class: BTreeMap<&L, Vec<usize>> = BTreeMap::new();
    for (i, label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(i);
    }
    let mut rng = SplitMix64::new(seed);
    let mut assignment = vec![0; labels.len()];
    let mut dealt = 0usize;
    for rows in by_class.values_mut() {
        rng.shuffle(rows);
        for &row in rows.iter() {
            assignment[row] = dealt % k;
            dealt += 1;
        }
    }
    Ok(folds_from(&assignment, k))
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
