//! Schemas and validation.
//!
//! A [`Schema`] says which columns a table must have and what their values may be. It is
//! checked on ingestion ([`Schema::check`]) and travels inside model packages, so that a
//! served request is held to the same rules as the training data ([`Schema::check_row`]).

use std::collections::BTreeSet;
use std::fmt;

use polars::prelude::DataType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Dataset, Error, Result};

/// How many violations an [`Error::Validation`] carries; the rest are counted.
pub const MAX_REPORTED_VIOLATIONS: usize = 20;

/// What values a column may hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ColumnKind {
    /// Any finite number, optionally within `min..=max`.
    Number {
        /// Smallest allowed value.
        min: Option<f64>,
        /// Largest allowed value.
        max: Option<f64>,
    },
    /// A whole number, optionally within `min..=max`.
    Integer {
        /// Smallest allowed value.
        min: Option<i64>,
        /// Largest allowed value.
        max: Option<i64>,
    },
    /// One of a fixed set of values, compared as text.
    Category {
        /// The allowed values.
        values: Vec<String>,
    },
    /// Any text.
    Text,
}

/// One column of a [`Schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Allowed values.
    pub kind: ColumnKind,
    /// Whether missing values are allowed.
    #[serde(default)]
    pub nullable: bool,
}

impl ColumnSpec {
    /// A number column, required, without bounds.
    pub fn number(name: impl Into<String>) -> Self {
        Self { name: name.into(), kind: ColumnKind::Number { min: None, max: None }, nullable: false }
    }

    /// A whole-number column within `min..=max`, required.
    pub fn integer(name: impl Into<String>, min: i64, max: i64) -> Self {
        Self { name: name.into(), kind: ColumnKind::Integer { min: Some(min), max: Some(max) }, nullable: false }
    }

    /// A column holding one of `values`, required.
    pub fn category<S: Into<String>>(name: impl Into<String>, values: impl IntoIterator<Item = S>) -> Self {
        Self {
            name: name.into(),
            kind: ColumnKind::Category { values: values.into_iter().map(Into::into).collect() },
            nullable: false,
        }
    }

    /// Sets bounds on a number column; no effect on other kinds.
    pub fn range(mut self, lo: f64, hi: f64) -> Self {
        if let ColumnKind::Number { min, max } = &mut self.kind {
            *min = Some(lo);
            *max = Some(hi);
        }
        self
    }

    /// Allows missing values.
    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }

    /// What this column expects, for messages: "an integer in 0..=16".
    pub fn expected(&self) -> String {
        match &self.kind {
            ColumnKind::Number { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("a number in {a}..={b}"),
                (Some(a), None) => format!("a number >= {a}"),
                (None, Some(b)) => format!("a number <= {b}"),
                (None, None) => "a number".into(),
            },
            ColumnKind::Integer { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("an integer in {a}..={b}"),
                (Some(a), None) => format!("an integer >= {a}"),
                (None, Some(b)) => format!("an integer <= {b}"),
                (None, None) => "an integer".into(),
            },
            ColumnKind::Category { values } => format!("one of {}", values.join(", ")),
            ColumnKind::Text => "text".into(),
        }
    }

    /// Checks one value given for this column in 1-based row `row` (for example of a served
    /// request), returning the violation if it breaks the column's rules.
    pub fn check_value(&self, row: usize, value: f64) -> Option<Violation> {
        self.check_number(value).err().map(|found| Violation {
            row,
            line: None,
            column: self.name.clone(),
            expected: self.expected(),
            found,
        })
    }

    /// Checks one numeric value against this column; `Err` holds what was found.
    fn check_number(&self, v: f64) -> std::result::Result<(), String> {
        let in_range = |lo: Option<f64>, hi: Option<f64>| lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi);
        let ok = match &self.kind {
            ColumnKind::Number { min, max } => v.is_finite() && in_range(*min, *max),
            ColumnKind::Integer { min, max } => {
                v.is_finite() && v.fract() == 0.0 && in_range(min.map(|m| m as f64), max.map(|m| m as f64))
            }
            ColumnKind::Category { values } => values.iter().any(|c| c.parse::<f64>() == Ok(v)),
            ColumnKind::Text => true,
        };
        if ok { Ok(()) } else { Err(format_number(v)) }
    }

    fn check_text(&self, s: &str) -> std::result::Result<(), String> {
        match &self.kind {
            ColumnKind::Text => Ok(()),
            ColumnKind::Category { values } => {
                if values.iter().any(|c| c == s) {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            }
            ColumnKind::Number { .. } | ColumnKind::Integer { .. } => match s.trim().parse::<f64>() {
                Ok(v) => self.check_number(v),
                Err(_) => Err(format!("{s:?}")),
            },
        }
    }
}

/// The bad values of one column: every bad row (0-based), and what was found in the first
/// [`MAX_REPORTED_VIOLATIONS`] of them.
struct ColumnCheck {
    bad_rows: Vec<usize>,
    first: Vec<(usize, String)>,
}

fn check_column(spec: &ColumnSpec, data: &Dataset) -> Result<ColumnCheck> {
    let series = data.series(&spec.name)?;
    let mut out = ColumnCheck { bad_rows: Vec::new(), first: Vec::new() };
    let mut push = |i: usize, found: std::result::Result<(), String>| {
        if let Err(found) = found {
            out.bad_rows.push(i);
            if out.first.len() < MAX_REPORTED_VIOLATIONS {
                out.first.push((i, found));
            }
        }
    };
    let missing = || if spec.nullable { Ok(()) } else { Err("a missing value".to_string()) };
    if series.dtype().is_primitive_numeric() {
        let cast = series.cast(&DataType::Float64)?;
        for (i, v) in cast.f64()?.iter().enumerate() {
            push(i, v.map_or_else(missing, |v| spec.check_number(v)));
        }
    } else {
        let cast = series.cast(&DataType::String)?;
        for (i, v) in cast.str()?.iter().enumerate() {
            push(i, v.map_or_else(missing, |s| spec.check_text(s)));
        }
    }
    Ok(out)
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

/// One value that breaks a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// 1-based data row (the header is not counted).
    pub row: usize,
    /// The file line of that row, where it is known exactly.
    pub line: Option<usize>,
    /// The column.
    pub column: String,
    /// What the schema expects.
    pub expected: String,
    /// What the data holds.
    pub found: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ", column `{}`: expected {}, found {}", self.column, self.expected, self.found)
    }
}

/// The outcome of [`Schema::check`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationReport {
    /// Rows checked.
    pub rows: usize,
    /// The first [`MAX_REPORTED_VIOLATIONS`] violations, in row order.
    pub violations: Vec<Violation>,
    /// All violations, counted.
    pub total: usize,
    /// 0-based indices of every row with at least one violation.
    pub bad_rows: BTreeSet<usize>,
}

impl ValidationReport {
    /// Whether no value broke the schema.
    pub fn is_valid(&self) -> bool {
        self.total == 0
    }
}

/// The columns a table must have and the values they may hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Schema {
    /// The columns, in the order features are fed to models.
    pub columns: Vec<ColumnSpec>,
}

impl Schema {
    /// A schema with the given columns.
    pub fn new(columns: Vec<ColumnSpec>) -> Self {
        Self { columns }
    }

    /// The spec of column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Checks every value of every column in the schema. A column missing from the data is an
    /// error; everything else is reported, so that bad rows can be quarantined.
    pub fn check(&self, data: &Dataset) -> Result<ValidationReport> {
        // Columns are independent: check them in parallel, then merge in row order.
        let per_column: Vec<ColumnCheck> =
            self.columns.par_iter().map(|spec| check_column(spec, data)).collect::<Result<_>>()?;
        let mut report = ValidationReport { rows: data.height(), ..Default::default() };
        let mut all: Vec<Violation> = Vec::new();
        for (spec, checked) in self.columns.iter().zip(per_column) {
            report.total += checked.bad_rows.len();
            report.bad_rows.extend(checked.bad_rows);
            for (i, found) in checked.first {
                all.push(Violation {
                    row: i + 1,
                    line: data.line_of_row(i + 1),
                    column: spec.name.clone(),
                    expected: spec.expected(),
                    found,
                });
            }
        }
        all.sort_by(|a, b| (a.row, &a.column).cmp(&(b.row, &b.column)));
        all.truncate(MAX_REPORTED_VIOLATIONS);
        report.violations = all;
        Ok(report)
    }

    /// Like [`Schema::check`], but any violation is an [`Error::Validation`] naming the first
    /// bad rows and columns.
    pub fn validate(&self, data: &Dataset) -> Result<ValidationReport> {
        let report = self.check(data)?;
        if report.is_valid() {
            Ok(report)
        } else {
            Err(Error::Validation {
                source_name: data.source().to_string(),
                violations: report.violations,
                total: report.total,
            })
        }
    }

    /// Checks one row of numbers given for the columns `features` (for example a served
    /// request), returning every violation with `row` as the row number. Features without a
    /// column in the schema are not checked.
    pub fn check_row(&self, features: &[String], values: &[f64], row: usize) -> Vec<Violation> {
        features
            .iter()
            .zip(values)
            .filter_map(|(name, v)| self.column(name).and_then(|spec| spec.check_value(row, *v)))
            .collect()
    }
}
