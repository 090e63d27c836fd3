//! Column profiles: the summary of a data set that travels with a model as the reference for
//! monitoring.
//!
//! A [`DatasetProfile`] holds, per column, counts, nulls, and either numeric statistics
//! (mean, standard deviation, min, max, quantiles, a fixed-bin histogram) or the top
//! categories, plus a seeded sample of the values. It serialises to JSON, so a served model
//! can compare live traffic with its training data ([`DatasetProfile::drift`]) without the
//! training data at hand.

use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use crate::drift::{DatasetDrift, DriftOptions, Sample, column_sample};
use crate::stats::{equal_width_edges, histogram_counts, quantile_sorted};
use crate::{Error, Result, SplitMix64};

/// What to compute in a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileOptions {
    /// Equal-width histogram bins between min and max (default 10).
    pub bins: usize,
    /// Quantiles to record, each in [0, 1] (default 0.05, 0.25, 0.5, 0.75, 0.95).
    pub quantiles: Vec<f64>,
    /// Most frequent categories to record (default 10).
    pub top_categories: usize,
    /// Values kept per column as the drift reference (default 1,000, the size below which
    /// the default tests are KS and chi-square).
    pub sample_size: usize,
    /// Seed of the sample.
    pub seed: u64,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self { bins: 10, quantiles: vec![0.05, 0.25, 0.5, 0.75, 0.95], top_categories: 10, sample_size: 1000, seed: 0 }
    }
}

/// A fixed-bin histogram: `counts[i]` values in `[edges[i], edges[i+1])`, the last bin closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Bin edges, one more than the bins.
    pub edges: Vec<f64>,
    /// Values per bin.
    pub counts: Vec<u64>,
}

/// Statistics of a numeric column (over its finite values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// `(q, value)` pairs, linear interpolation between order statistics (NumPy's default).
    pub quantiles: Vec<(f64, f64)>,
    /// Histogram between min and max.
    pub histogram: Histogram,
}

/// Statistics of a categorical column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalStats {
    /// Number of distinct values.
    pub unique: usize,
    /// The most frequent values with their counts, most frequent first (ties by value).
    pub top: Vec<(String, u64)>,
}

/// The profile of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// Column name.
    pub name: String,
    /// Values that are present (and, for numbers, finite).
    pub count: usize,
    /// Nulls, NaN and infinities.
    pub missing: usize,
    /// Statistics of a numeric column.
    pub numeric: Option<NumericStats>,
    /// Statistics of a categorical column.
    pub categorical: Option<CategoricalStats>,
    /// A seeded sample of the values, the reference for drift tests.
    pub sample: ReferenceSample,
}

/// The values kept as a drift reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceSample {
    /// Numbers.
    Numeric(Vec<f64>),
    /// Labels.
    Categorical(Vec<String>),
}

impl ReferenceSample {
    fn as_sample(&self) -> Sample {
        match self {
            Self::Numeric(v) => Sample::Numeric(v.clone()),
            Self::Categorical(v) => Sample::Categorical(v.clone()),
        }
    }
}

/// The profile of a data set; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetProfile {
    /// The profile format, for readers of stored profiles.
    pub format_version: u32,
    /// Rows profiled.
    pub rows: usize,
    /// Columns in frame order.
    pub columns: Vec<ColumnProfile>,
}

/// The format written by this version.
pub const PROFILE_FORMAT: u32 = 1;

impl DatasetProfile {
    /// Profiles every column of `frame`: numeric (and boolean) columns get numeric
    /// statistics, others categorical ones.
    pub fn of(frame: &DataFrame, options: &ProfileOptions) -> Result<Self> {
        if options.bins == 0 {
            return Err(Error::InvalidArgument("a profile needs at least one histogram bin".into()));
        }
        if let Some(q) = options.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(Error::InvalidArgument(format!("quantile {q} is outside [0, 1]")));
        }
        let mut columns = Vec::new();
        for (i, name) in frame.get_column_names().into_iter().enumerate() {
            let (values, missing) = column_sample(frame, name)?;
            let seed = options.seed.wrapping_add(i as u64);
            let profile = match values {
                Sample::Numeric(v) => ColumnProfile {
                    name: name.to_string(),
                    count: v.len(),
                    missing,
                    numeric: numeric_stats(&v, options),
                    categorical: None,
                    sample: ReferenceSample::Numeric(reservoir(v, options.sample_size, seed)),
                },
                Sample::Categorical(v) => ColumnProfile {
                    name: name.to_string(),
                    count: v.len(),
                    missing,
                    numeric: None,
                    categorical: Some(categorical_stats(&v, options.top_categories)),
                    sample: ReferenceSample::Categorical(reservoir(v, options.sample_size, seed)),
                },
            };
            columns.push(profile);
        }
        Ok(Self { format_version: PROFILE_FORMAT, rows: frame.height(), columns })
    }

    /// The profile of column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnProfile> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Compares `current` with this profile's reference samples, column by column (the
    /// columns of the profile that `current` has, unless `options` names them).
    pub fn drift(&self, current: &DataFrame, options: &DriftOptions) -> Result<DatasetDrift> {
        let names: Vec<String> = match &options.columns {
            Some(c) => c.clone(),
            None => self.columns.iter().map(|c| c.name.clone()).filter(|n| current.column(n).is_ok()).collect(),
        };
        let mut columns = Vec::new();
        let mut skipped = Vec::new();
        for name in names {
            let profile = self
                .column(&name)
                .ok_or_else(|| Error::InvalidArgument(format!("the reference profile has no column `{name}`")))?;
            let reference = profile.sample.as_sample();
            let (current_values, current_missing) = column_sample(current, &name)?;
            let current_values = match (&reference, current_values) {
                // Serving sends numbers where training had number-like labels, and back.
                (Sample::Categorical(_), Sample::Numeric(v)) => {
                    Sample::Categorical(v.iter().map(|x| format!("{x}")).collect())
                }
                (_, other) => other,
            };
            match crate::drift::compare(&name, &reference, &current_values, (profile.missing, current_missing), options)
            {
                Ok(column) => columns.push(column),
                Err(Error::EmptySample(why)) => skipped.push((name, why)),
                Err(e) => return Err(e),
            }
        }
        Ok(crate::drift::summarise(columns, skipped, options.drift_share))
    }

    /// The profile as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::InvalidArgument(format!("profile to JSON: {e}")))
    }

    /// Reads a profile written by [`DatasetProfile::to_json`]; a profile of another format
    /// version is an error.
    pub fn from_json(text: &str) -> Result<Self> {
        crate::util::read_versioned_json(text, "profile", None, PROFILE_FORMAT, ("format", "format"))
    }
}

fn numeric_stats(values: &[f64], options: &ProfileOptions) -> Option<NumericStats> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = if values.len() > 1 {
        (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let quantiles = options.quantiles.iter().map(|q| (*q, quantile_sorted(&sorted, *q))).collect();
    Some(NumericStats { mean, std, min, max, quantiles, histogram: histogram(&sorted, options.bins) })
}

fn histogram(sorted: &[f64], bins: usize) -> Histogram {
    let edges = equal_width_edges(sorted[0], sorted[sorted.len() - 1], bins);
    Histogram { counts: histogram_counts(sorted, &edges), edges }
}

fn categorical_stats(values: &[String], top: usize) -> CategoricalStats {
    let mut counts: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for v in values {
        *counts.entry(v.as_str()).or_insert(0) += 1;
    }
    let unique = counts.len();
    let mut ranked: Vec<(&str, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    CategoricalStats { unique, top: ranked.into_iter().take(top).map(|(k, c)| (k.to_string(), c)).collect() }
}

/// Keeps at most `size` of `values`, chosen uniformly with a seeded partial shuffle, in
/// their original order.
fn reservoir<T>(values: Vec<T>, size: usize, seed: u64) -> Vec<T> {
    if values.len() <= size {
        return values;
    }
    let mut rng = SplitMix64::new(seed);
    let mut index: Vec<usize> = (0..values.len()).collect();
    for i in 0..size {
        let j = i + rng.below((values.len() - i) as u64) as usize;
        index.swap(i, j);
    }
    let mut keep = index[..size].to_vec();
    keep.sort_unstable();
    let mut keep = keep.into_iter().peekable();
    values
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| {
            if keep.peek() == Some(&i) {
                keep.next();
                Some(v)
            } else {
                None
            }
        })
        .collect()
}
