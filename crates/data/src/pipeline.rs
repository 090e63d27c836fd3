//! Preprocessing pipelines: imputers, scalers and encoders over selected columns, fitted on
//! training rows only, saved as a versioned JSON document, and applied identically to a
//! whole frame or a single served row.
//!
//! A [`Pipeline`] is a list of [`Step`]s, like scikit-learn's `ColumnTransformer`: each step
//! selects columns (by name, type or regex) and runs a chain of transforms on each of them,
//! an optional [`Imputer`], then at most one of a scaler ([`Transform::Standard`],
//! [`Transform::MinMax`], [`Transform::Robust`]) or encoder ([`Transform::OneHot`],
//! [`Transform::Ordinal`]). The outputs of the steps, in order, form the feature matrix.
//!
//! **No leakage by construction.** [`Pipeline::fit`] takes a [`TrainSplit`], which can only
//! be made from the training rows of a [`Split`] or [`Fold`] (or, for a final model, from
//! every row, by a constructor that says so):
//!
//! ```compile_fail
//! # use kiln_data::{Dataset, pipeline::Pipeline};
//! # fn f(data: &Dataset, pipeline: &Pipeline) {
//! pipeline.fit(data.frame()); // a frame is not a TrainSplit
//! # }
//! ```
//!
//! **Training/serving parity.** [`FittedPipeline::transform`] and
//! [`FittedPipeline::transform_row`] run the same scalar code on each value, so a row
//! transformed alone is bit-identical to the same row transformed in a batch.
//!
//! **Stored as data.** [`FittedPipeline::to_json`] writes the format version, the input
//! schema, every fitted parameter and the output feature names; [`FittedPipeline::from_json`]
//! reads it back without running anything, and refuses other format versions.

use std::collections::HashMap;

use polars::prelude::{DataFrame, DataType};
use serde::{Deserialize, Serialize};

use crate::split::{Fold, Split};
use crate::stats::quantile_sorted;
use crate::{Dataset, Error, Result};

/// The document format written by this version.
pub const PIPELINE_FORMAT: u32 = 1;

/// The rows a pipeline may be fitted on: the training part of a split.
#[derive(Debug, Clone)]
pub struct TrainSplit {
    frame: DataFrame,
    source: String,
}

impl TrainSplit {
    /// The training rows of `split`.
    pub fn of_split(data: &Dataset, split: &Split) -> Result<Self> {
        let rows = data.take(&split.train)?;
        Ok(Self { frame: rows.frame().clone(), source: data.source().to_string() })
    }

    /// The training rows of a cross-validation fold.
    pub fn of_fold(data: &Dataset, fold: &Fold) -> Result<Self> {
        let rows = data.take(&fold.train)?;
        Ok(Self { frame: rows.frame().clone(), source: data.source().to_string() })
    }

    /// Every row, for a final model fitted after evaluation (nothing is held out: evaluate
    /// before, on a split).
    pub fn all_rows_for_final_fit(data: &Dataset) -> Self {
        Self { frame: data.frame().clone(), source: data.source().to_string() }
    }

    /// The rows.
    pub fn frame(&self) -> &DataFrame {
        &self.frame
    }
}

/// A value of a row to transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A number (NaN counts as missing).
    Number(f64),
    /// A label.
    Text(String),
    /// Missing.
    Null,
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Number(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_string())
    }
}

impl Value {
    fn cell(&self) -> Cell<'_> {
        match self {
            Self::Number(v) => Cell::Number(*v),
            Self::Text(t) => Cell::Text(t),
            Self::Null => Cell::Null,
        }
    }
}

/// A borrowed value: what the transforms read, from a frame's column or from a [`Value`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell<'a> {
    Number(f64),
    Text(&'a str),
    Null,
}

impl<'a> Cell<'a> {
    fn is_missing(self) -> bool {
        match self {
            Self::Null => true,
            Self::Number(v) => v.is_nan(),
            Self::Text(_) => false,
        }
    }

    /// The category key: the text, or the number's shortest round-trip form.
    fn key(self) -> Option<std::borrow::Cow<'a, str>> {
        match self {
            Self::Number(v) if !v.is_nan() => Some(format!("{}", if v == 0.0 { 0.0 } else { v }).into()),
            Self::Text(t) => Some(t.into()),
            _ => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Number(v) => format!("{v}"),
            Self::Text(t) => format!("{t:?}"),
            Self::Null => "a missing value".into(),
        }
    }

    fn to_value(self) -> Value {
        match self {
            Self::Number(v) => Value::Number(v),
            Self::Text(t) => Value::Text(t.to_string()),
            Self::Null => Value::Null,
        }
    }
}

/// Which columns a step applies to (resolved to names at fit time and stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Columns {
    /// These columns, in this order.
    Names(Vec<String>),
    /// Every numeric column not taken by an earlier step.
    Numeric,
    /// Every non-numeric column not taken by an earlier step.
    Categorical,
    /// Every column whose name matches the regex, not taken by an earlier step.
    Regex(String),
}

/// How an [`Imputer`] fills missing values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImputeStrategy {
    /// The training mean (numeric columns).
    Mean,
    /// The training median (numeric columns).
    Median,
    /// The most frequent training value (ties: the smallest key).
    MostFrequent,
    /// A given value.
    Constant(Value),
}

/// Fills missing values (nulls, NaN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imputer {
    /// How.
    pub strategy: ImputeStrategy,
    /// Also output `<column>_missing`: 1 where the value was missing, else 0.
    pub add_indicator: bool,
}

/// What to do with a category not seen in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandleUnknown {
    /// Refuse the row, naming the column and value.
    Error,
    /// All of the column's indicator outputs are 0.
    Ignore,
}

/// A scaler or encoder, the last transform of a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// `(x − mean) / std` (population std; 1 for constant columns).
    Standard,
    /// `x · scale + min` mapping the training range onto `[lo, hi]`.
    MinMax {
        /// Output range.
        range: (f64, f64),
    },
    /// `(x − median) / (q_hi − q_lo)` (1 when the spread is 0).
    Robust {
        /// Quantiles bounding the spread, in percent (scikit-learn's default 25, 75).
        quantile_range: (f64, f64),
    },
    /// One indicator output per training category (sorted), `<column>=<category>`.
    OneHot {
        /// Unknown categories: error or all zeros.
        handle_unknown: HandleUnknown,
        /// Categories seen fewer times than this share one `<column>=infrequent` output.
        min_frequency: Option<usize>,
    },
    /// The category's index among the sorted training categories.
    Ordinal {
        /// The output for an unknown category; `None` refuses it.
        unknown_value: Option<f64>,
    },
}

/// One step of a pipeline: columns, an optional imputer, an optional scaler or encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// A name for reports.
    pub name: String,
    /// The columns.
    pub columns: Columns,
    /// Fills missing values first.
    pub imputer: Option<Imputer>,
    /// Then scales or encodes (`None`: numbers pass through).
    pub transform: Option<Transform>,
}

impl Step {
    /// A step over `columns` with nothing in it yet.
    pub fn new(name: &str, columns: Columns) -> Self {
        Self { name: name.to_string(), columns, imputer: None, transform: None }
    }

    /// Adds an imputer.
    pub fn impute(mut self, strategy: ImputeStrategy, add_indicator: bool) -> Self {
        self.imputer = Some(Imputer { strategy, add_indicator });
        self
    }

    /// Sets the scaler or encoder.
    pub fn then(mut self, transform: Transform) -> Self {
        self.transform = Some(transform);
        self
    }
}

/// What happens to columns no step selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remainder {
    /// They are not features (scikit-learn's default).
    #[default]
    Drop,
    /// Numeric ones pass through unchanged, after the steps' outputs.
    Passthrough,
}

/// An unfitted pipeline. Every field may be left out of a config file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pipeline {
    /// The steps, in output order.
    pub steps: Vec<Step>,
    /// Columns no step selects.
    pub remainder: Remainder,
    /// Columns never used as features (the label, ids).
    pub exclude: Vec<String>,
}

/// A column of the input schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputColumn {
    /// Name.
    pub name: String,
    /// `number` or `text`, as seen in training.
    pub kind: InputKind,
}

/// The kind of an input column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// Numbers (integers, floats, booleans).
    Number,
    /// Labels.
    Text,
}

/// Fitted parameters of one column's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedColumn {
    /// The input column.
    pub column: String,
    /// The fill value for missing values, and whether to output the indicator.
    pub fill: Option<(Value, bool)>,
    /// The scaler or encoder.
    pub transform: FittedTransform,
}

/// A fitted scaler or encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FittedTransform {
    /// The number itself.
    Identity,
    /// `(x − offset) / scale`.
    Affine {
        /// Subtracted.
        offset: f64,
        /// Divided by.
        scale: f64,
    },
    /// `x · scale + min` (MinMax, in scikit-learn's form).
    Linear {
        /// Multiplied by.
        scale: f64,
        /// Added.
        min: f64,
    },
    /// Indicators for `categories` (and one for infrequent ones).
    OneHot {
        /// Training categories with their own output, sorted.
        categories: Vec<String>,
        /// Categories grouped into the `infrequent` output.
        infrequent: Vec<String>,
        /// Unknown categories.
        handle_unknown: HandleUnknown,
    },
    /// Index among `categories`.
    Ordinal {
        /// Training categories, sorted.
        categories: Vec<String>,
        /// Output for unknown categories (`None`: error).
        unknown_value: Option<f64>,
    },
}

/// A fitted pipeline: data only, see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPipeline {
    /// Always `kiln-pipeline`.
    pub format: String,
    /// [`PIPELINE_FORMAT`] when written by this version.
    pub format_version: u32,
    /// The columns a row must have, with their kinds.
    pub input_schema: Vec<InputColumn>,
    /// Per input column, in output order.
    pub columns: Vec<FittedColumn>,
    /// The names of the output features, in matrix column order.
    pub output_features: Vec<String>,
    /// Rows fitted on, and where they came from.
    pub fitted_rows: usize,
    /// The source of the training data.
    pub fitted_on: String,
}

/// A column of a frame cast to what the transforms read: `f64` or text.
struct CastColumn {
    kind: InputKind,
    series: polars::prelude::Series,
}

impl CastColumn {
    fn of(frame: &DataFrame, name: &str, source: &str) -> Result<Self> {
        let series = frame
            .column(name)
            .map_err(|_| Error::MissingColumn {
                source_name: source.to_string(),
                column: name.to_string(),
                available: frame.get_column_names().iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
            })?
            .as_materialized_series();
        Ok(if crate::util::is_number_dtype(series.dtype()) {
            Self { kind: InputKind::Number, series: series.cast(&DataType::Float64)? }
        } else {
            Self { kind: InputKind::Text, series: series.cast(&DataType::String)? }
        })
    }

    fn cells(&self) -> Result<Box<dyn Iterator<Item = Cell<'_>> + '_>> {
        Ok(match self.kind {
            InputKind::Number => Box::new(self.series.f64()?.iter().map(|v| v.map_or(Cell::Null, Cell::Number))),
            InputKind::Text => Box::new(self.series.str()?.iter().map(|v| v.map_or(Cell::Null, Cell::Text))),
        })
    }
}

fn finite_numbers<'a>(cells: impl Iterator<Item = Cell<'a>>) -> Vec<f64> {
    cells
        .filter_map(|c| match c {
            Cell::Number(x) if x.is_finite() => Some(x),
            _ => None,
        })
        .collect()
}

fn sorted_numbers<'a>(cells: impl Iterator<Item = Cell<'a>>) -> Vec<f64> {
    let mut v = finite_numbers(cells);
    v.sort_unstable_by(f64::total_cmp);
    v
}

/// scikit-learn's `_handle_zeros_in_scale`: a spread too small to divide by becomes 1.
fn nonzero(scale: f64) -> f64 {
    if scale.abs() < 10.0 * f64::EPSILON { 1.0 } else { scale }
}

impl Pipeline {
    /// An empty pipeline (add steps with [`Pipeline::step`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Never uses `column` as a feature (the label, an id).
    pub fn exclude(mut self, column: &str) -> Self {
        self.exclude.push(column.to_string());
        self
    }

    /// What happens to columns no step selects.
    pub fn remainder(mut self, remainder: Remainder) -> Self {
        self.remainder = remainder;
        self
    }

    /// Fits every step on the training rows.
    pub fn fit(&self, train: &TrainSplit) -> Result<FittedPipeline> {
        let frame = train.frame();
        if frame.height() == 0 {
            return Err(Error::InvalidArgument("cannot fit a pipeline on zero rows".into()));
        }
        let names: Vec<String> = frame.get_column_names().iter().map(|c| c.to_string()).collect();
        let mut kinds: HashMap<String, InputKind> = HashMap::new();
        for name in &names {
            let dtype = frame.column(name)?.dtype();
            let kind = if crate::util::is_number_dtype(dtype) { InputKind::Number } else { InputKind::Text };
            kinds.insert(name.clone(), kind);
        }
        let mut taken: Vec<String> = self.exclude.clone();
        let mut fitted = Vec::new();
        let mut schema = Vec::new();
        for step in &self.steps {
            let selected: Vec<String> = match &step.columns {
                Columns::Names(list) => {
                    for c in list {
                        if !kinds.contains_key(c) {
                            return Err(Error::MissingColumn {
                                source_name: train.source.clone(),
                                column: c.clone(),
                                available: names.join(", "),
                            });
                        }
                    }
                    list.clone()
                }
                Columns::Numeric => {
                    names.iter().filter(|c| kinds[*c] == InputKind::Number && !taken.contains(c)).cloned().collect()
                }
                Columns::Categorical => {
                    names.iter().filter(|c| kinds[*c] == InputKind::Text && !taken.contains(c)).cloned().collect()
                }
                Columns::Regex(pattern) => {
                    let re = regex::Regex::new(pattern).map_err(|e| {
                        Error::InvalidArgument(format!("step `{}`: bad column regex {pattern:?}: {e}", step.name))
                    })?;
                    names.iter().filter(|c| re.is_match(c) && !taken.contains(c)).cloned().collect()
                }
            };
            for column in selected {
                let cast = CastColumn::of(frame, &column, &train.source)?;
                fitted.push(fit_column(step, &column, &cast, &train.source)?);
                schema.push(InputColumn { name: column.clone(), kind: cast.kind });
                taken.push(column);
            }
        }
        if self.remainder == Remainder::Passthrough {
            for name in names.iter().filter(|c| !taken.contains(c) && kinds[*c] == InputKind::Number) {
                fitted.push(FittedColumn { column: name.clone(), fill: None, transform: FittedTransform::Identity });
                schema.push(InputColumn { name: name.clone(), kind: InputKind::Number });
            }
        }
        if fitted.is_empty() {
            return Err(Error::InvalidArgument("the pipeline selects no columns".into()));
        }
        let output_features = fitted.iter().flat_map(output_names).collect();
        Ok(FittedPipeline {
            format: "kiln-pipeline".into(),
            format_version: PIPELINE_FORMAT,
            input_schema: schema,
            columns: fitted,
            output_features,
            fitted_rows: frame.height(),
            fitted_on: train.source.clone(),
        })
    }
}

fn fit_column(step: &Step, column: &str, cast: &CastColumn, source: &str) -> Result<FittedColumn> {
    let kind = cast.kind;
    let bad =
        |what: String| Error::InvalidArgument(format!("step `{}`, column `{column}` of {source}: {what}", step.name));
    let numeric_only = |what: &str| {
        if kind == InputKind::Number { Ok(()) } else { Err(bad(format!("{what} needs a numeric column"))) }
    };
    let fill = match &step.imputer {
        None => None,
        Some(imputer) => {
            let value = match &imputer.strategy {
                ImputeStrategy::Mean => {
                    numeric_only("mean imputation")?;
                    let v = finite_numbers(cast.cells()?);
                    if v.is_empty() {
                        return Err(bad("no values to take the mean of".into()));
                    }
                    Value::Number(v.iter().sum::<f64>() / v.len() as f64)
                }
                ImputeStrategy::Median => {
                    numeric_only("median imputation")?;
                    let v = sorted_numbers(cast.cells()?);
                    if v.is_empty() {
                        return Err(bad("no values to take the median of".into()));
                    }
                    Value::Number(quantile_sorted(&v, 0.5))
                }
                ImputeStrategy::MostFrequent => {
                    let mut counts: HashMap<std::borrow::Cow<'_, str>, (usize, Cell<'_>)> = HashMap::new();
                    for c in cast.cells()?.filter(|c| !c.is_missing()) {
                        if let Some(k) = c.key() {
                            counts.entry(k).or_insert((0, c)).0 += 1;
                        }
                    }
                    // The most frequent; ties go to the smallest value (numerically for numbers,
                    // as scikit-learn does).
                    let smaller = |a: &Cell<'_>, b: &Cell<'_>| match (a, b) {
                        (Cell::Number(x), Cell::Number(y)) => x.total_cmp(y),
                        (Cell::Text(x), Cell::Text(y)) => x.cmp(y),
                        _ => std::cmp::Ordering::Equal,
                    };
                    let best = counts.iter().max_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| smaller(&b.1.1, &a.1.1)));
                    match best {
                        Some((_, (_, c))) => c.to_value(),
                        None => return Err(bad("no values to find the most frequent of".into())),
                    }
                }
                ImputeStrategy::Constant(v) => v.clone(),
            };
            Some((value, imputer.add_indicator))
        }
    };
    // The values the transform is fitted on: after imputation.
    let fill_cell = fill.as_ref().map(|(f, _)| f.cell());
    let filled = || -> Result<_> {
        Ok(cast.cells()?.map(move |c| match fill_cell {
            Some(f) if c.is_missing() => f,
            _ => c,
        }))
    };
    let transform = match &step.transform {
        None => {
            numeric_only("passing a column through (no encoder)")?;
            FittedTransform::Identity
        }
        Some(Transform::Standard) => {
            numeric_only("a standard scaler")?;
            let v = finite_numbers(filled()?);
            if v.is_empty() {
                return Err(bad("no values to fit a scaler on".into()));
            }
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            FittedTransform::Affine { offset: mean, scale: nonzero(var.sqrt()) }
        }
        Some(Transform::MinMax { range: (lo, hi) }) => {
            numeric_only("a min-max scaler")?;
            if lo >= hi {
                return Err(bad(format!("min-max range ({lo}, {hi}) is empty")));
            }
            let v = finite_numbers(filled()?);
            if v.is_empty() {
                return Err(bad("no values to fit a scaler on".into()));
            }
            let (min, max) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            let scale = (hi - lo) / nonzero(max - min);
            FittedTransform::Linear { scale, min: lo - min * scale }
        }
        Some(Transform::Robust { quantile_range: (q_lo, q_hi) }) => {
            numeric_only("a robust scaler")?;
            if !(0.0 <= *q_lo && q_lo < q_hi && *q_hi <= 100.0) {
                return Err(bad(format!("quantile range ({q_lo}, {q_hi}) must satisfy 0 <= lo < hi <= 100")));
            }
            let v = sorted_numbers(filled()?);
            if v.is_empty() {
                return Err(bad("no values to fit a scaler on".into()));
            }
            let spread = quantile_sorted(&v, q_hi / 100.0) - quantile_sorted(&v, q_lo / 100.0);
            FittedTransform::Affine { offset: quantile_sorted(&v, 0.5), scale: nonzero(spread) }
        }
        Some(Transform::OneHot { handle_unknown, min_frequency }) => {
            let counts = category_counts(filled()?);
            if counts.is_empty() {
                return Err(bad("no categories to encode".into()));
            }
            let floor = min_frequency.unwrap_or(0);
            let (categories, infrequent): (Vec<_>, Vec<_>) = counts.into_iter().partition(|(_, n)| *n >= floor);
            FittedTransform::OneHot {
                categories: categories.into_iter().map(|(k, _)| k).collect(),
                infrequent: infrequent.into_iter().map(|(k, _)| k).collect(),
                handle_unknown: *handle_unknown,
            }
        }
        Some(Transform::Ordinal { unknown_value }) => {
            let counts = category_counts(filled()?);
            if counts.is_empty() {
                return Err(bad("no categories to encode".into()));
            }
            FittedTransform::Ordinal {
                categories: counts.into_iter().map(|(k, _)| k).collect(),
                unknown_value: *unknown_value,
            }
        }
    };
    Ok(FittedColumn { column: column.to_string(), fill, transform })
}

/// Category keys with their counts, sorted (numerically when every key is a number).
fn category_counts<'a>(cells: impl Iterator<Item = Cell<'a>>) -> Vec<(String, usize)> {
    let mut counts: HashMap<std::borrow::Cow<'a, str>, usize> = HashMap::new();
    for c in cells {
        if let Some(k) = c.key() {
            *counts.entry(k).or_insert(0) += 1;
        }
    }
    let mut out: Vec<(String, usize)> = counts.into_iter().map(|(k, n)| (k.into_owned(), n)).collect();
    let numeric = out.iter().all(|(k, _)| k.parse::<f64>().is_ok());
    if numeric {
        out.sort_by(|a, b| {
            let (x, y) = (a.0.parse::<f64>().unwrap_or(0.0), b.0.parse::<f64>().unwrap_or(0.0));
            x.total_cmp(&y)
        });
    } else {
        out.sort();
    }
    out
}

fn output_names(c: &FittedColumn) -> Vec<String> {
    let mut out = match &c.transform {
        FittedTransform::OneHot { categories, infrequent, .. } => {
            let mut names: Vec<String> = categories.iter().map(|k| format!("{}={k}", c.column)).collect();
            if !infrequent.is_empty() {
                names.push(format!("{}=infrequent", c.column));
            }
            names
        }
        _ => vec![c.column.clone()],
    };
    if matches!(c.fill, Some((_, true))) {
        out.push(format!("{}_missing", c.column));
    }
    out
}

impl FittedColumn {
    fn width(&self) -> usize {
        output_names(self).len()
    }

    /// Transforms one value into this column's outputs (appended to `out`); an error is
    /// (what was expected, what was found).
    fn apply(&self, value: Cell<'_>, out: &mut Vec<f64>) -> std::result::Result<(), (String, String)> {
        let missing = value.is_missing();
        let value = match (&self.fill, missing) {
            (Some((fill, _)), true) => fill.cell(),
            (None, true) => {
                return Err(("a value (this pipeline has no imputer for the column)".into(), value.describe()));
            }
            _ => value,
        };
        let number = |v: Cell<'_>| match v {
            Cell::Number(x) => Ok(x),
            other => Err(("a number".to_string(), other.describe())),
        };
        match &self.transform {
            FittedTransform::Identity => out.push(number(value)?),
            FittedTransform::Affine { offset, scale } => out.push((number(value)? - offset) / scale),
            FittedTransform::Linear { scale, min } => out.push(number(value)? * scale + min),
            FittedTransform::OneHot { categories, infrequent, handle_unknown } => {
                let key = value.key().unwrap_or_default();
                let key = key.as_ref();
                let start = out.len();
                out.extend(std::iter::repeat_n(0.0, categories.len() + usize::from(!infrequent.is_empty())));
                if let Ok(i) = find(categories, key) {
                    out[start + i] = 1.0;
                } else if infrequent.iter().any(|k| k == key) {
                    out[start + categories.len()] = 1.0;
                } else if *handle_unknown == HandleUnknown::Error {
                    return Err((
                        format!("one of the training categories ({})", categories.join(", ")),
                        value.describe(),
                    ));
                }
            }
            FittedTransform::Ordinal { categories, unknown_value } => {
                let key = value.key().unwrap_or_default();
                match (find(categories, key.as_ref()), unknown_value) {
                    (Ok(i), _) => out.push(i as f64),
                    (Err(_), Some(u)) => out.push(*u),
                    (Err(_), None) => {
                        return Err((
                            format!("one of the training categories ({})", categories.join(", ")),
                            value.describe(),
                        ));
                    }
                }
            }
        }
        if matches!(self.fill, Some((_, true))) {
            out.push(if missing { 1.0 } else { 0.0 });
        }
        Ok(())
    }
}

/// Position of `key` in `categories` (kept in fit order, which may be numeric).
fn find(categories: &[String], key: &str) -> std::result::Result<usize, ()> {
    categories.iter().position(|c| c == key).ok_or(())
}

impl FittedPipeline {
    /// The number of output features.
    pub fn width(&self) -> usize {
        self.output_features.len()
    }

    /// Transforms every row of `frame` (which must have the input schema's columns; others
    /// are ignored) into a `rows × features` matrix. A value that cannot be transformed is an
    /// error naming its row (1-based) and column.
    pub fn transform(&self, frame: &DataFrame, source: &str) -> Result<ndarray::Array2<f64>> {
        let rows = frame.height();
        let mut out = ndarray::Array2::zeros((rows, self.width()));
        // Column by column (each value through the same `apply` as a single row), writing each
        // column's outputs at its offset; the first failure in row order is reported.
        let mut offset = 0;
        let mut first_error: Option<(usize, usize, String, String)> = None;
        let mut buf = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            let width = c.width();
            let cast = CastColumn::of(frame, &c.column, source)?;
            self.check_kind(&c.column, cast.kind, source)?;
            for (r, cell) in cast.cells()?.enumerate() {
                if first_error.as_ref().is_some_and(|e| e.0 <= r) {
                    break;
                }
                buf.clear();
                match c.apply(cell, &mut buf) {
                    Ok(()) => {
                        for (j, v) in buf.iter().enumerate() {
                            out[[r, offset + j]] = *v;
                        }
                    }
                    Err((expected, found)) => {
                        first_error = Some((r, i, expected, found));
                        break;
                    }
                }
            }
            offset += width;
        }
        if let Some((r, i, expected, found)) = first_error {
            return Err(Error::BadValue {
                source_name: source.to_string(),
                row: r + 1,
                column: self.columns[i].column.clone(),
                expected,
                found,
            });
        }
        Ok(out)
    }

    /// Transforms one row given as column → value (for serving). Bit-identical to the same
    /// row in [`FittedPipeline::transform`].
    pub fn transform_row(&self, row: &HashMap<String, Value>) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(self.width());
        for c in &self.columns {
            let value = row.get(&c.column).ok_or_else(|| Error::MissingColumn {
                source_name: "row".into(),
                column: c.column.clone(),
                available: {
                    let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    keys.join(", ")
                },
            })?;
            let kind = match value {
                Value::Text(_) => Some(InputKind::Text),
                Value::Number(_) => Some(InputKind::Number),
                Value::Null => None,
            };
            if let Some(kind) = kind {
                self.check_kind(&c.column, kind, "row")?;
            }
            c.apply(value.cell(), &mut out).map_err(|(expected, found)| Error::BadValue {
                source_name: "row".into(),
                row: 1,
                column: c.column.clone(),
                expected,
                found,
            })?;
        }
        debug_assert_eq!(out.len(), self.columns.iter().map(FittedColumn::width).sum::<usize>());
        Ok(out)
    }

    /// Refuses a column whose kind differs from training: a label column sent as numbers would
    /// be encoded by another key (`1` for the trained `"1.0"`), so batches and rows could differ.
    fn check_kind(&self, column: &str, got: InputKind, source: &str) -> Result<()> {
        let Some(expected) = self.input_schema.iter().find(|c| c.name == column).map(|c| c.kind) else {
            return Ok(());
        };
        if expected == got {
            return Ok(());
        }
        let name = |k: InputKind| match k {
            InputKind::Number => "numbers",
            InputKind::Text => "text",
        };
        Err(Error::InvalidArgument(format!(
            "{source}: column `{column}` holds {} but the pipeline was fitted on {}; convert it first",
            name(got),
            name(expected)
        )))
    }

    /// The pipeline as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::InvalidArgument(format!("pipeline to JSON: {e}")))
    }

    /// Reads a document written by [`FittedPipeline::to_json`]. Nothing is executed; a
    /// document of another format or format version is refused.
    pub fn from_json(text: &str) -> Result<Self> {
        let fitted: Self = crate::util::read_versioned_json(
            text,
            "pipeline",
            Some("kiln-pipeline"),
            PIPELINE_FORMAT,
            ("format version", "version"),
        )?;
        let widths: usize = fitted.columns.iter().map(FittedColumn::width).sum();
        if widths != fitted.output_features.len() {
            return Err(Error::InvalidArgument(format!(
                "pipeline JSON: {} output features named, the columns produce {widths}",
                fitted.output_features.len()
            )));
        }
        Ok(fitted)
    }
}
