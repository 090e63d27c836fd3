//! Data drift: does a current sample of a column come from the same distribution as the
//! reference (the training data)?
//!
//! The tests and their defaults are Evidently's, so results agree with what labs already use:
//!
//! | test | columns | statistic | drift when |
//! |---|---|---|---|
//! | [`DriftTest::Ks`] | numeric | two-sample Kolmogorov–Smirnov p-value (exact; see [`ks_2samp`]) | p ≤ 0.05 |
//! | [`DriftTest::ChiSquare`] | categorical | chi-square p-value, current counts against reference shares | p < 0.05 |
//! | [`DriftTest::Z`] | binary | two-proportion Z-test p-value | p < 0.05 |
//! | [`DriftTest::Wasserstein`] | numeric | Wasserstein-1 distance ÷ reference std (population, at least 0.001) | ≥ 0.1 |
//! | [`DriftTest::JensenShannon`] | both | Jensen–Shannon distance (natural log) of binned shares | ≥ 0.1 |
//! | [`DriftTest::Psi`] | both | population stability index of binned shares | ≥ 0.1 |
//!
//! [`DriftTest::default_for`] picks as Evidently does: with at most 1,000 reference rows, KS
//! for numeric columns, chi-square for categorical ones (Z-test when there are at most two
//! values); with more, Wasserstein for numeric and Jensen–Shannon for categorical. A numeric
//! column with at most 5 distinct values (reference and current together) counts as
//! categorical. Binning for Jensen–Shannon and PSI: numeric columns with more than 20
//! distinct reference values get NumPy's Sturges histogram over both samples; others count
//! each value. [`detect_drift`] runs the default test on every shared column; the data set
//! drifts when at least half of its columns do.
//!
//! NaN, infinities and nulls are left out of the tests (and counted in [`ColumnDrift`]).

use std::collections::HashMap;
use std::hash::Hash;

use polars::prelude::{DataFrame, DataType};
use serde::{Deserialize, Serialize};

use crate::stats::{chi2_sf, equal_width_edges, histogram_counts, ks_two_sample_sf, normal_sf};
use crate::{Error, Result};

/// One column's values for a drift test.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// Numbers (NaN and infinities are ignored).
    Numeric(Vec<f64>),
    /// Labels.
    Categorical(Vec<String>),
}

impl Sample {
    fn len(&self) -> usize {
        match self {
            Self::Numeric(v) => v.len(),
            Self::Categorical(v) => v.len(),
        }
    }

    /// Distinct values, by exact value (−0 and +0 are one value).
    fn keys(&self) -> Vec<Key<'_>> {
        match self {
            Self::Numeric(v) => v.iter().map(|x| Key::Num(if *x == 0.0 { 0 } else { x.to_bits() })).collect(),
            Self::Categorical(v) => v.iter().map(|s| Key::Text(s)).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key<'a> {
    Num(u64),
    Text(&'a str),
}

/// A drift test (see the module docs for what each computes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftTest {
    /// Two-sample Kolmogorov–Smirnov p-value.
    Ks,
    /// Chi-square p-value.
    ChiSquare,
    /// Two-proportion Z-test p-value.
    Z,
    /// Normed Wasserstein distance.
    Wasserstein,
    /// Jensen–Shannon distance.
    JensenShannon,
    /// Population stability index.
    Psi,
}

impl DriftTest {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ks => "ks",
            Self::ChiSquare => "chi_square",
            Self::Z => "z",
            Self::Wasserstein => "wasserstein",
            Self::JensenShannon => "jensen_shannon",
            Self::Psi => "psi",
        }
    }

    /// Whether the statistic is a p-value (drift below the threshold) rather than a distance
    /// (drift at or above it).
    pub fn is_p_value(self) -> bool {
        matches!(self, Self::Ks | Self::ChiSquare | Self::Z)
    }

    /// Evidently's default threshold: 0.05 for p-values, 0.1 for distances.
    pub fn default_threshold(self) -> f64 {
        if self.is_p_value() { 0.05 } else { 0.1 }
    }

    /// Evidently's default test for a column (see the module docs).
    pub fn default_for(reference: &Sample, current: &Sample) -> Self {
        let distinct = distinct(reference.keys().into_iter().chain(current.keys()));
        let numeric = matches!(reference, Sample::Numeric(_)) && distinct > 5;
        let small = reference.len() <= 1000;
        match (small, numeric) {
            (true, true) => Self::Ks,
            (true, false) if distinct <= 2 => Self::Z,
            (true, false) => Self::ChiSquare,
            (false, true) => Self::Wasserstein,
            (false, false) => Self::JensenShannon,
        }
    }

    /// Runs the test (NaN and infinities left out). Numeric tests need numeric samples.
    pub fn statistic(self, reference: &Sample, current: &Sample) -> Result<f64> {
        let (reference, current) = (&finite(reference), &finite(current));
        let numbers = |s: &Sample| match s {
            Sample::Numeric(v) => Ok(v.clone()),
            Sample::Categorical(_) => {
                Err(Error::InvalidArgument(format!("the {} test needs numeric samples", self.as_str())))
            }
        };
        Ok(match self {
            Self::Ks => ks_2samp(&numbers(reference)?, &numbers(current)?).p_value,
            Self::Wasserstein => wasserstein_norm(&numbers(reference)?, &numbers(current)?),
            Self::ChiSquare => chi_square(&reference.keys(), &current.keys()),
            Self::Z => z_test(&reference.keys(), &current.keys()),
            Self::JensenShannon => {
                let (p, q) = binned_shares(reference, current, false);
                jensen_shannon(&p, &q)
            }
            Self::Psi => {
                let (p, q) = binned_shares(reference, current, true);
                p.iter().zip(&q).map(|(r, c)| (r - c) * (r / c).ln()).sum()
            }
        })
    }

    /// Whether `statistic` means drift at `threshold` (Evidently's comparison for the test).
    pub fn drifted(self, statistic: f64, threshold: f64) -> bool {
        match self {
            Self::Ks => statistic <= threshold,
            Self::ChiSquare | Self::Z => statistic < threshold,
            _ => statistic >= threshold,
        }
    }
}

/// The sample without NaN and infinities.
fn finite(sample: &Sample) -> Sample {
    match sample {
        Sample::Numeric(v) => Sample::Numeric(v.iter().copied().filter(|x| x.is_finite()).collect()),
        other => other.clone(),
    }
}

/// The result of a two-sample Kolmogorov–Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// The largest distance between the two empirical CDFs.
    pub statistic: f64,
    /// The two-sided p-value (exact).
    pub p_value: f64,
}

/// The two-sample Kolmogorov–Smirnov test, two-sided, with the exact p-value (SciPy's
/// `ks_2samp(a, b, method="exact")`). SciPy's default switches to an approximation above
/// 10,000 values; kiln stays exact while the lattice it walks (about `2·D·m·n` cells) is
/// under 5·10⁸ cells, and beyond that uses the asymptotic Kolmogorov distribution with
/// Stephens' correction (for a million values on each side and a small D, that is the
/// approximation). NaN and infinities are ignored.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> KsResult {
    let mut a: Vec<f64> = a.iter().copied().filter(|x| x.is_finite()).collect();
    let mut b: Vec<f64> = b.iter().copied().filter(|x| x.is_finite()).collect();
    if a.is_empty() || b.is_empty() {
        return KsResult { statistic: 0.0, p_value: 1.0 };
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (m, n) = (a.len() as u128, b.len() as u128);
    // Walk the merged values; after each distinct value, i and j count what is <= it.
    let (mut i, mut j, mut gap) = (0usize, 0usize, 0u128);
    while i < a.len() || j < b.len() {
        let v = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.min(*y),
            (Some(x), None) => *x,
            (None, Some(y)) => *y,
            (None, None) => break,
        };
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        let (x, y) = (i as u128 * n, j as u128 * m);
        gap = gap.max(x.abs_diff(y));
    }
    let statistic = gap as f64 / (m as f64 * n as f64);
    KsResult { statistic, p_value: ks_two_sample_sf(m as u64, n as u64, gap) }
}

fn counts<'a>(keys: &[Key<'a>]) -> HashMap<Key<'a>, u64> {
    let mut out = HashMap::new();
    for k in keys {
        *out.entry(*k).or_insert(0) += 1;
    }
    out
}

/// The distinct keys, sorted.
fn sorted_distinct<'a>(keys: impl IntoIterator<Item = Key<'a>>) -> Vec<Key<'a>> {
    let mut keys: Vec<Key<'a>> = keys.into_iter().collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// How many distinct values `keys` holds.
fn distinct<'a>(keys: impl IntoIterator<Item = Key<'a>>) -> usize {
    sorted_distinct(keys).len()
}

fn union<'a>(a: &HashMap<Key<'a>, u64>, b: &HashMap<Key<'a>, u64>) -> Vec<Key<'a>> {
    sorted_distinct(a.keys().chain(b.keys()).copied())
}

/// Value counts of both samples and every value seen in either, sorted; `None` when a sample
/// is empty or only one value is seen (nothing to test: p = 1).
type Tables<'a> = (HashMap<Key<'a>, u64>, HashMap<Key<'a>, u64>, Vec<Key<'a>>);

fn tables<'a>(reference: &[Key<'a>], current: &[Key<'a>]) -> Option<Tables<'a>> {
    if reference.is_empty() || current.is_empty() {
        return None;
    }
    let (r, c) = (counts(reference), counts(current));
    let keys = union(&r, &c);
    (keys.len() >= 2).then_some((r, c, keys))
}

/// Evidently's chi-square test: current counts against reference counts scaled to the
/// current size, over every value seen in either; `k - 1` degrees of freedom.
fn chi_square(reference: &[Key<'_>], current: &[Key<'_>]) -> f64 {
    let Some((r, c, keys)) = tables(reference, current) else { return 1.0 };
    let scale = current.len() as f64 / reference.len() as f64;
    let mut stat = 0.0;
    for k in &keys {
        let observed = *c.get(k).unwrap_or(&0) as f64;
        let expected = *r.get(k).unwrap_or(&0) as f64 * scale;
        stat += (observed - expected).powi(2) / expected;
    }
    if stat.is_infinite() {
        return 0.0;
    }
    chi2_sf(stat, (keys.len() - 1) as f64)
}

/// Evidently's Z-test: the share of the first value (in sorted order) in each sample.
fn z_test(reference: &[Key<'_>], current: &[Key<'_>]) -> f64 {
    let Some((r, c, keys)) = tables(reference, current) else { return 1.0 };
    let first = keys[0];
    let (n1, n2) = (reference.len() as f64, current.len() as f64);
    // The share of values that are *not* the first, as Evidently encodes them.
    let p1 = (n1 - *r.get(&first).unwrap_or(&0) as f64) / n1;
    let p2 = (n2 - *c.get(&first).unwrap_or(&0) as f64) / n2;
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let z = (p1 - p2) / (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if z.is_nan() {
        return 1.0;
    }
    2.0 * normal_sf(z.abs())
}

/// The Wasserstein-1 (earth mover's) distance between two samples (SciPy's
/// `wasserstein_distance`). NaN and infinities are ignored.
pub fn wasserstein_distance(a: &[f64], b: &[f64]) -> f64 {
    let mut a: Vec<f64> = a.iter().copied().filter(|x| x.is_finite()).collect();
    let mut b: Vec<f64> = b.iter().copied().filter(|x| x.is_finite()).collect();
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = a.iter().chain(&b).copied().collect();
    all.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut total) = (0usize, 0usize, 0.0);
    for w in all.windows(2) {
        while i < a.len() && a[i] <= w[0] {
            i += 1;
        }
        while j < b.len() && b[j] <= w[0] {
            j += 1;
        }
        total += (i as f64 / na - j as f64 / nb).abs() * (w[1] - w[0]);
    }
    total
}

/// Evidently's normed Wasserstein distance: [`wasserstein_distance`] divided by the
/// reference's population standard deviation (at least 0.001).
pub fn wasserstein_norm(reference: &[f64], current: &[f64]) -> f64 {
    let r: Vec<f64> = reference.iter().copied().filter(|x| x.is_finite()).collect();
    let mean = r.iter().sum::<f64>() / r.len().max(1) as f64;
    let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / r.len().max(1) as f64;
    wasserstein_distance(reference, current) / var.sqrt().max(0.001)
}

/// The Jensen–Shannon distance (natural log) between two discrete distributions, each
/// normalised to sum to 1 (SciPy's `distance.jensenshannon`).
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    let rel = |x: f64, y: f64| {
        if x > 0.0 && y > 0.0 {
            x * (x / y).ln()
        } else if x == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    };
    let mut js = 0.0;
    for (a, b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        js += rel(a, m) + rel(b, m);
    }
    (js / 2.0).sqrt()
}

/// Evidently's binning: each sample's share per bin (a Sturges histogram over both samples
/// for numeric columns with more than 20 distinct reference values; one bin per value
/// otherwise). With `fill_zeros`, empty bins get a small share (as Evidently does for PSI).
fn binned_shares(reference: &Sample, current: &Sample, fill_zeros: bool) -> (Vec<f64>, Vec<f64>) {
    let distinct_reference = distinct(reference.keys());
    let (mut p, mut q) = match (reference, current) {
        (Sample::Numeric(r), Sample::Numeric(c)) if distinct_reference > 20 => {
            let edges = sturges_edges(r.iter().chain(c.iter()).copied());
            (histogram_shares(r, &edges), histogram_shares(c, &edges))
        }
        _ => {
            let (rk, ck) = (reference.keys(), current.keys());
            let (r, c) = (counts(&rk), counts(&ck));
            let keys = union(&r, &c);
            let share = |m: &HashMap<Key<'_>, u64>, k: &Key<'_>, n: usize| *m.get(k).unwrap_or(&0) as f64 / n as f64;
            (
                keys.iter().map(|k| share(&r, k, rk.len())).collect(),
                keys.iter().map(|k| share(&c, k, ck.len())).collect(),
            )
        }
    };
    if fill_zeros {
        fill(&mut p);
        fill(&mut q);
    }
    (p, q)
}

/// Evidently's fill for empty bins: the smallest share ÷ 10⁶ when that is ≤ 0.0001, else 0.0001.
fn fill(shares: &mut [f64]) {
    let smallest = shares.iter().copied().filter(|s| *s != 0.0).fold(f64::INFINITY, f64::min);
    if smallest.is_infinite() {
        return;
    }
    let eps = if smallest <= 0.0001 { smallest / 1e6 } else { 0.0001 };
    for s in shares.iter_mut().filter(|s| **s == 0.0) {
        *s = eps;
    }
}

/// NumPy's `histogram_bin_edges(values, bins="sturges")` (finite values only).
fn sturges_edges(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let (mut lo, mut hi, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0usize);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
        n += 1;
    }
    if n == 0 {
        return vec![0.0, 1.0];
    }
    let width = (hi - lo) / ((n as f64).log2() + 1.0);
    let bins = if width > 0.0 { ((hi - lo) / width).ceil() as usize } else { 1 }.max(1);
    equal_width_edges(lo, hi, bins)
}

/// NumPy's `histogram(values, edges)[0] / len(values)`: bins are `[e_i, e_{i+1})`, the last
/// one closed.
fn histogram_shares(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    histogram_counts(&sorted, edges).into_iter().map(|c| c as f64 / n).collect()
}

/// The drift verdict for one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    /// The column.
    pub column: String,
    /// The test used.
    pub test: DriftTest,
    /// Its statistic (a p-value or a distance).
    pub statistic: f64,
    /// The threshold it was compared with.
    pub threshold: f64,
    /// Whether the column drifted.
    pub drifted: bool,
    /// Values compared from the reference and the current sample.
    pub reference_values: usize,
    /// See `reference_values`.
    pub current_values: usize,
    /// Nulls, NaN and infinities left out (reference, current).
    pub missing: (usize, usize),
}

/// The drift verdict for a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDrift {
    /// Each column compared, in the reference's column order.
    pub columns: Vec<ColumnDrift>,
    /// Columns that could not be compared (no values left in one sample), and why. They do
    /// not count towards the drift share.
    #[serde(default)]
    pub skipped: Vec<(String, String)>,
    /// The share of columns that drifted.
    pub share_drifted: f64,
    /// Whether the data set drifted (`share_drifted` ≥ the drift share, 0.5 by default).
    pub drifted: bool,
}

/// Options of [`detect_drift`].
#[derive(Debug, Clone, PartialEq)]
pub struct DriftOptions {
    /// Columns to compare (default: every column of the reference that the current data has).
    pub columns: Option<Vec<String>>,
    /// A test to use instead of the default, per column.
    pub tests: HashMap<String, DriftTest>,
    /// A threshold to use instead of the test's default, per column.
    pub thresholds: HashMap<String, f64>,
    /// The share of drifted columns at which the data set drifts (default 0.5).
    pub drift_share: f64,
}

impl Default for DriftOptions {
    fn default() -> Self {
        Self { columns: None, tests: HashMap::new(), thresholds: HashMap::new(), drift_share: 0.5 }
    }
}

/// A column of a frame as a [`Sample`], without nulls, NaN and infinities; returns the
/// number left out too.
pub fn column_sample(frame: &DataFrame, column: &str) -> Result<(Sample, usize)> {
    let series = frame
        .column(column)
        .map_err(|_| Error::InvalidArgument(format!("no column `{column}` to compare for drift")))?
        .as_materialized_series()
        .clone();
    if crate::util::is_number_dtype(series.dtype()) {
        let cast = series.cast(&DataType::Float64)?;
        let values = cast.f64()?;
        let kept: Vec<f64> = values.iter().flatten().filter(|v| v.is_finite()).collect();
        let missing = series.len() - kept.len();
        Ok((Sample::Numeric(kept), missing))
    } else {
        let cast = series.cast(&DataType::String)?;
        let values = cast.str()?;
        let kept: Vec<String> = values.iter().flatten().map(str::to_string).collect();
        let missing = series.len() - kept.len();
        Ok((Sample::Categorical(kept), missing))
    }
}

/// Compares every column of `reference` that `current` also has (or those in `options`) with
/// its default test, and decides whether the data set drifted.
pub fn detect_drift(reference: &DataFrame, current: &DataFrame, options: &DriftOptions) -> Result<DatasetDrift> {
    let names: Vec<String> = match &options.columns {
        Some(columns) => columns.clone(),
        None => reference
            .get_column_names()
            .into_iter()
            .filter(|c| current.column(c).is_ok())
            .map(|c| c.to_string())
            .collect(),
    };
    let mut columns = Vec::with_capacity(names.len());
    let mut skipped = Vec::new();
    for name in names {
        let (r, r_missing) = column_sample(reference, &name)?;
        let (c, c_missing) = column_sample(current, &name)?;
        match compare(&name, &r, &c, (r_missing, c_missing), options) {
            Ok(column) => columns.push(column),
            Err(Error::EmptySample(why)) => skipped.push((name, why)),
            Err(e) => return Err(e),
        }
    }
    Ok(summarise(columns, skipped, options.drift_share))
}

/// Runs the column's test (the default, or the one `options` names) on two samples.
pub(crate) fn compare(
    name: &str,
    reference: &Sample,
    current: &Sample,
    missing: (usize, usize),
    options: &DriftOptions,
) -> Result<ColumnDrift> {
    let (reference, current) = (&finite(reference), &finite(current));
    if reference.len() == 0 || current.len() == 0 {
        let which = if reference.len() == 0 { "reference" } else { "current" };
        return Err(Error::EmptySample(format!(
            "column `{name}`: the {which} sample has no values once nulls, NaN and infinities are left out"
        )));
    }
    let test = options.tests.get(name).copied().unwrap_or_else(|| DriftTest::default_for(reference, current));
    let threshold = options.thresholds.get(name).copied().unwrap_or_else(|| test.default_threshold());
    let statistic =
        test.statistic(reference, current).map_err(|e| Error::InvalidArgument(format!("column `{name}`: {e}")))?;
    Ok(ColumnDrift {
        drifted: test.drifted(statistic, threshold),
        column: name.to_string(),
        test,
        statistic,
        threshold,
        reference_values: reference.len(),
        current_values: current.len(),
        missing,
    })
}

/// The data-set verdict: drift when at least `drift_share` of the columns drifted.
pub(crate) fn summarise(columns: Vec<ColumnDrift>, skipped: Vec<(String, String)>, drift_share: f64) -> DatasetDrift {
    let drifted = columns.iter().filter(|c| c.drifted).count();
    let share_drifted = if columns.is_empty() { 0.0 } else { drifted as f64 / columns.len() as f64 };
    DatasetDrift { drifted: !columns.is_empty() && share_drifted >= drift_share, share_drifted, columns, skipped }
}
