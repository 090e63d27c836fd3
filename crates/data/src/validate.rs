//! Schemas and validation (Pandera's job).
//!
//! A [`Schema`] says which columns a table must have and what their values may be: type,
//! nullability, range, allowed set, regex, string length, uniqueness; plus checks written as
//! SQL expressions over a row (`flipper_length_mm > 150 OR body_mass_g < 3000`), and
//! table-level checks (row count, uniqueness of column combinations, extra columns). It is
//! declared in code or in a TOML or JSON file ([`Schema::load`]).
//!
//! Validation is lazy: [`Schema::check`] makes one pass over each column (columns in
//! parallel) and one over the expressions, and reports **every** failure, as a
//! failure-cases table ([`ValidationReport::failure_cases`]: row, file line, column, check,
//! offending value) and a readable [`ValidationReport::summary`]. [`Schema::split_valid`]
//! returns the valid rows and a quarantine of the others with their reasons, which can be
//! written to Parquet: nothing is dropped silently.
//!
//! The schema travels inside model packages, so a served request is held to the same rules
//! as the training data ([`Schema::check_row`]).

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

/// Bounds on the length of text values, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LengthRange {
    /// Fewest characters.
    #[serde(default)]
    pub min: Option<usize>,
    /// Most characters.
    #[serde(default)]
    pub max: Option<usize>,
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
    /// Whether every (present) value must differ from every other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unique: bool,
    /// A regex every text value must match (anywhere; anchor it with `^...$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Bounds on the length of text values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<LengthRange>,
}

impl ColumnSpec {
    /// A number column, required, without bounds.
    pub fn number(name: impl Into<String>) -> Self {
        Self::of(name, ColumnKind::Number { min: None, max: None })
    }

    /// A whole-number column within `min..=max`, required.
    pub fn integer(name: impl Into<String>, min: i64, max: i64) -> Self {
        Self::of(name, ColumnKind::Integer { min: Some(min), max: Some(max) })
    }

    /// A column holding one of `values`, required.
    pub fn category<S: Into<String>>(name: impl Into<String>, values: impl IntoIterator<Item = S>) -> Self {
        Self::of(name, ColumnKind::Category { values: values.into_iter().map(Into::into).collect() })
    }

    /// A text column, required.
    pub fn text(name: impl Into<String>) -> Self {
        Self::of(name, ColumnKind::Text)
    }

    /// A required column of `kind` with no further checks.
    pub fn of(name: impl Into<String>, kind: ColumnKind) -> Self {
        Self { name: name.into(), kind, nullable: false, unique: false, pattern: None, length: None }
    }

    /// Requires every value to be different.
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    /// Requires text values to match `regex`.
    pub fn matches(mut self, regex: &str) -> Self {
        self.pattern = Some(regex.to_string());
        self
    }

    /// Bounds the length of text values, in characters.
    pub fn length(mut self, min: Option<usize>, max: Option<usize>) -> Self {
        self.length = Some(LengthRange { min, max });
        self
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
        self.check_number(value).err().map(|(_, found)| Violation {
            row,
            line: None,
            column: self.name.clone(),
            expected: self.expected(),
            found,
        })
    }

    /// Checks one numeric value against this column; `Err` holds the check that failed and
    /// what was found.
    fn check_number(&self, v: f64) -> std::result::Result<(), (&'static str, String)> {
        let in_range = |lo: Option<f64>, hi: Option<f64>| lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi);
        let failed = match &self.kind {
            ColumnKind::Number { min, max } => {
                if !v.is_finite() {
                    Some("finite")
                } else if !in_range(*min, *max) {
                    Some("in_range")
                } else {
                    None
                }
            }
            ColumnKind::Integer { min, max } => {
                // 2^63: beyond it a whole number does not fit a 64-bit integer.
                if !v.is_finite() || v.fract() != 0.0 || v.abs() >= 9_223_372_036_854_775_808.0 {
                    Some("integer")
                } else if !in_range(min.map(|m| m as f64), max.map(|m| m as f64)) {
                    Some("in_range")
                } else {
                    None
                }
            }
            ColumnKind::Category { values } => (!values.iter().any(|c| c.parse::<f64>() == Ok(v))).then_some("isin"),
            ColumnKind::Text => None,
        };
        match failed {
            Some(check) => Err((check, format_number(v))),
            None => Ok(()),
        }
    }

    /// Checks an integer exactly (bounds compared as integers, not through f64).
    fn check_integer(&self, v: i64) -> std::result::Result<(), (&'static str, String)> {
        match &self.kind {
            ColumnKind::Integer { min, max } => {
                if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) {
                    Err(("in_range", v.to_string()))
                } else {
                    Ok(())
                }
            }
            // Exact comparison with the allowed values when they are integers too.
            ColumnKind::Category { values } => {
                if values.iter().any(|c| c.trim().parse::<i64>() == Ok(v) || c.parse::<f64>() == Ok(v as f64)) {
                    Ok(())
                } else {
                    Err(("isin", v.to_string()))
                }
            }
            _ => self.check_number(v as f64),
        }
    }

    fn check_text(&self, s: &str, pattern: Option<&regex::Regex>) -> std::result::Result<(), (&'static str, String)> {
        match &self.kind {
            ColumnKind::Text => {}
            ColumnKind::Category { values } => {
                if !values.iter().any(|c| c == s) {
                    return Err(("isin", format!("{s:?}")));
                }
            }
            ColumnKind::Integer { .. } if s.trim().parse::<i64>().is_ok() => {
                return self.check_integer(s.trim().parse::<i64>().unwrap_or_default());
            }
            ColumnKind::Number { .. } | ColumnKind::Integer { .. } => {
                return match s.trim().parse::<f64>() {
                    Ok(v) => self.check_number(v),
                    Err(_) => Err(("dtype", format!("{s:?}"))),
                };
            }
        }
        self.check_text_rules(s, pattern)
    }

    /// Whether the column has rules on the text of its values (pattern, length).
    fn has_text_rules(&self) -> bool {
        self.pattern.is_some() || self.length.is_some()
    }

    /// The pattern and length rules, on a value's text (a number's rendering, for a column
    /// read as numbers).
    fn check_text_rules(
        &self,
        s: &str,
        pattern: Option<&regex::Regex>,
    ) -> std::result::Result<(), (&'static str, String)> {
        if let Some(re) = pattern
            && !re.is_match(s)
        {
            return Err(("str_matches", format!("{s:?}")));
        }
        if let Some(LengthRange { min, max }) = self.length {
            let n = s.chars().count();
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(("str_length", format!("{s:?}")));
            }
        }
        Ok(())
    }

    /// The name of a failed check, for messages: what was expected.
    fn expected_for(&self, check: &str) -> String {
        match check {
            "not_null" => "a value".into(),
            "unique" => "a value no other row has".into(),
            "str_matches" => format!("text matching /{}/", self.pattern.as_deref().unwrap_or_default()),
            "str_length" => {
                let LengthRange { min, max } = self.length.unwrap_or_default();
                match (min, max) {
                    (Some(a), Some(b)) => format!("text of {a} to {b} characters"),
                    (Some(a), None) => format!("text of at least {a} characters"),
                    (None, Some(b)) => format!("text of at most {b} characters"),
                    (None, None) => "text".into(),
                }
            }
            _ => self.expected(),
        }
    }
}

/// The failures of one column, in row order: (0-based row, check, what was found).
struct ColumnCheck {
    failures: Vec<(usize, &'static str, String)>,
}

fn check_column(spec: &ColumnSpec, data: &Dataset) -> Result<ColumnCheck> {
    let series = data.series(&spec.name)?;
    let pattern = match &spec.pattern {
        Some(p) => Some(
            regex::Regex::new(p)
                .map_err(|e| Error::InvalidArgument(format!("column `{}`: bad pattern {p:?}: {e}", spec.name)))?,
        ),
        None => None,
    };
    let mut out = ColumnCheck { failures: Vec::new() };
    let mut push = |i: usize, found: std::result::Result<(), (&'static str, String)>| {
        if let Err((check, found)) = found {
            out.failures.push((i, check, found));
        }
    };
    let missing = || if spec.nullable { Ok(()) } else { Err(("not_null", "a missing value".to_string())) };
    // Unique: the rows of every value seen more than once.
    let mut seen: std::collections::HashMap<String, Vec<usize>> = std::collections::HashMap::new();
    // Text rules (pattern, length) also hold for a column read as numbers: on its rendering.
    // Rendered only when the column has text rules: no allocation per value otherwise.
    let text_rules = |render: &dyn Fn() -> String| {
        if spec.has_text_rules() { spec.check_text_rules(&render(), pattern.as_ref()) } else { Ok(()) }
    };
    if series.dtype().is_integer() {
        // Exactly, as 64-bit integers: large ids must not collide or round through f64.
        let cast = series.cast(&DataType::Int64)?;
        for (i, v) in cast.i64()?.iter().enumerate() {
            push(i, v.map_or_else(missing, |v| spec.check_integer(v).and_then(|()| text_rules(&|| v.to_string()))));
            if spec.unique
                && let Some(v) = v
            {
                seen.entry(v.to_string()).or_default().push(i);
            }
        }
    } else if series.dtype().is_primitive_numeric() {
        let cast = series.cast(&DataType::Float64)?;
        for (i, v) in cast.f64()?.iter().enumerate() {
            push(i, v.map_or_else(missing, |v| spec.check_number(v).and_then(|()| text_rules(&|| format_number(v)))));
            if spec.unique
                && let Some(v) = v
            {
                seen.entry(format_number(v)).or_default().push(i);
            }
        }
    } else {
        let cast = series.cast(&DataType::String)?;
        for (i, v) in cast.str()?.iter().enumerate() {
            push(i, v.map_or_else(missing, |s| spec.check_text(s, pattern.as_ref())));
            if spec.unique
                && let Some(s) = v
            {
                seen.entry(s.to_string()).or_default().push(i);
            }
        }
    }
    let numeric = series.dtype().is_primitive_numeric();
    for (value, rows) in seen.into_iter().filter(|(_, rows)| rows.len() > 1) {
        let found = if numeric { value } else { format!("{value:?}") };
        let others = rows.len() - 1;
        for i in rows {
            out.failures.push((i, "unique", format!("{found} (also in {others} other row(s))")));
        }
    }
    out.failures.sort_by_key(|f| f.0);
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

/// One failed check: a value (with its row), or the table (no row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// 1-based data row; `None` for table-level checks.
    pub row: Option<usize>,
    /// The file line of that row, where it is known exactly.
    pub line: Option<usize>,
    /// The column, for column checks and extra columns.
    pub column: Option<String>,
    /// The check: `not_null`, `dtype`, `finite`, `integer`, `in_range`, `isin`,
    /// `str_matches`, `str_length`, `unique`, `expr:<name>`, `row_count`,
    /// `unique_together`, `extra_column`.
    pub check: String,
    /// The offending value (or, for table checks, what was found).
    pub found: String,
}

/// The most failures a report keeps one by one; beyond it they are only counted.
pub const MAX_FAILURE_CASES: usize = 1_000_000;

/// The outcome of [`Schema::check`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationReport {
    /// Rows checked.
    pub rows: usize,
    /// The first [`MAX_REPORTED_VIOLATIONS`] value violations, in row order.
    pub violations: Vec<Violation>,
    /// All failures, counted.
    pub total: usize,
    /// 0-based indices of every row with at least one failure.
    pub bad_rows: BTreeSet<usize>,
    /// Every failure (up to [`MAX_FAILURE_CASES`]), in row order, table-level ones first.
    pub failures: Vec<Failure>,
}

impl ValidationReport {
    /// Whether no check failed.
    pub fn is_valid(&self) -> bool {
        self.total == 0
    }

    /// The failures as a table with columns `row` (1-based, null for table checks), `line`,
    /// `column`, `check` and `found`, one row per failure.
    pub fn failure_cases(&self) -> Result<polars::prelude::DataFrame> {
        use polars::prelude::{Column, DataFrame};
        let f = &self.failures;
        let columns = vec![
            Column::new("row".into(), f.iter().map(|x| x.row.map(|r| r as u64)).collect::<Vec<_>>()),
            Column::new("line".into(), f.iter().map(|x| x.line.map(|r| r as u64)).collect::<Vec<_>>()),
            Column::new("column".into(), f.iter().map(|x| x.column.clone()).collect::<Vec<_>>()),
            Column::new("check".into(), f.iter().map(|x| x.check.clone()).collect::<Vec<_>>()),
            Column::new("found".into(), f.iter().map(|x| x.found.clone()).collect::<Vec<_>>()),
        ];
        Ok(DataFrame::new(f.len(), columns)?)
    }

    /// A readable summary: the counts per column and check, with the first offending rows.
    pub fn summary(&self) -> String {
        if self.is_valid() {
            return format!("{} rows, all checks pass", self.rows);
        }
        let mut groups: std::collections::BTreeMap<(String, String), (usize, Vec<String>)> =
            std::collections::BTreeMap::new();
        for f in &self.failures {
            let key = (f.column.clone().unwrap_or_else(|| "(table)".into()), f.check.clone());
            let entry = groups.entry(key).or_default();
            entry.0 += 1;
            if entry.1.len() < 3 {
                entry.1.push(match f.row {
                    Some(r) => format!("row {r}: {}", f.found),
                    None => f.found.clone(),
                });
            }
        }
        let mut out = format!(
            "{} rows, {} failing row(s), {} failure(s){}:",
            self.rows,
            self.bad_rows.len(),
            self.total,
            if self.failures.len() < self.total { " (the first listed)" } else { "" }
        );
        for ((column, check), (n, examples)) in groups {
            out.push_str(&format!("\n  {column} {check}: {n} (e.g. {})", examples.join("; ")));
        }
        out
    }
}

/// What to do with columns the schema does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraColumns {
    /// Keep them, unchecked.
    #[default]
    Allow,
    /// Strict: each one is a failure.
    Reject,
    /// Filter: leave them out of the valid rows.
    Drop,
}

/// Bounds on the number of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RowCount {
    /// Fewest rows.
    #[serde(default)]
    pub min: Option<usize>,
    /// Most rows.
    #[serde(default)]
    pub max: Option<usize>,
}

/// A check written as a SQL boolean expression over a row's columns (Polars SQL), e.g.
/// `bill_length_mm > bill_depth_mm`. A row fails when it is false; a null result (a
/// missing input) passes, as in SQL `CHECK` constraints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExprCheck {
    /// A name for reports (`expr:<name>`).
    pub name: String,
    /// The expression.
    pub expr: String,
}

/// The columns a table must have and the values they may hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Schema {
    /// The columns, in the order features are fed to models.
    pub columns: Vec<ColumnSpec>,
    /// Columns the schema does not name.
    #[serde(default, skip_serializing_if = "is_default")]
    pub extra_columns: ExtraColumns,
    /// Bounds on the number of rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowCount>,
    /// Sets of columns whose combined values must be unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique_together: Vec<Vec<String>>,
    /// Row checks as SQL expressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ExprCheck>,
    /// Whether [`Schema::split_valid`] casts the valid rows to the declared types (numbers to
    /// floats, integers to 64-bit integers, categories and text to strings).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coerce: bool,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The valid rows' complement: the rows that failed, with why.
#[derive(Debug, Clone)]
pub struct Quarantine {
    /// The failing rows with all their columns, plus `_row` (1-based row in the input) and
    /// `_reasons` (`column check: value; ...`).
    pub frame: polars::prelude::DataFrame,
    /// The report of the check.
    pub report: ValidationReport,
}

impl Quarantine {
    /// Writes the quarantined rows to a Parquet file (write-then-rename).
    pub fn write_parquet(&self, path: &std::path::Path) -> Result<()> {
        crate::dataset::write_parquet(&self.frame, path)
    }
}

impl Schema {
    /// A schema with the given columns.
    pub fn new(columns: Vec<ColumnSpec>) -> Self {
        Self { columns, ..Self::default() }
    }

    /// The spec of column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Adds a row check written as a SQL expression.
    pub fn check_expr(mut self, name: &str, expr: &str) -> Self {
        self.checks.push(ExprCheck { name: name.to_string(), expr: expr.to_string() });
        self
    }

    /// Requires the combination of `columns` to be unique.
    pub fn unique_together(mut self, columns: &[&str]) -> Self {
        self.unique_together.push(columns.iter().map(|c| c.to_string()).collect());
        self
    }

    /// Bounds the number of rows.
    pub fn rows(mut self, min: Option<usize>, max: Option<usize>) -> Self {
        self.rows = Some(RowCount { min, max });
        self
    }

    /// Sets what happens to columns the schema does not name.
    pub fn extra_columns(mut self, extra: ExtraColumns) -> Self {
        self.extra_columns = extra;
        self
    }

    /// Reads a schema from JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("schema JSON, line {}: {e}", e.line())))
    }

    /// Reads a schema from TOML.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::InvalidArgument(format!("schema TOML: {e}")))
    }

    /// Reads a schema file, TOML (`.toml`) or JSON (`.json`).
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        let parsed = match ext.as_str() {
            "toml" => Self::from_toml(&text),
            "json" => Self::from_json(&text),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "{}: a schema file is .toml or .json, not .{other}",
                    path.display()
                )));
            }
        };
        parsed.map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    /// Checks every value of every column in the schema, the row checks and the table
    /// checks, reporting every failure. A column missing from the data is an error (nothing
    /// can be checked against it).
    pub fn check(&self, data: &Dataset) -> Result<ValidationReport> {
        let names = data.column_names();
        let absent: Vec<&str> =
            self.columns.iter().map(|c| c.name.as_str()).filter(|c| !names.iter().any(|n| n == c)).collect();
        if !absent.is_empty() {
            return Err(Error::MissingColumn {
                source_name: data.source().to_string(),
                column: absent.join(", "),
                available: names.join(", "),
            });
        }
        // Columns are independent: check them in parallel, then merge in row order.
        let per_column: Vec<ColumnCheck> =
            self.columns.par_iter().map(|spec| check_column(spec, data)).collect::<Result<_>>()?;
        let mut report = ValidationReport { rows: data.height(), ..Default::default() };
        let mut table: Vec<Failure> = Vec::new();
        let mut rows: Vec<Failure> = Vec::new();
        let mut violations: Vec<Violation> = Vec::new();
        let record = |report: &mut ValidationReport, f: Failure, out: &mut Vec<Failure>| {
            report.total += 1;
            if let Some(r) = f.row {
                report.bad_rows.insert(r - 1);
            }
            if out.len() < MAX_FAILURE_CASES {
                out.push(f);
            }
        };

        if self.extra_columns == ExtraColumns::Reject {
            for name in names.iter().filter(|n| self.column(n).is_none()) {
                let f = Failure {
                    row: None,
                    line: None,
                    column: Some(name.clone()),
                    check: "extra_column".into(),
                    found: "present".into(),
                };
                record(&mut report, f, &mut table);
            }
        }
        if let Some(RowCount { min, max }) = self.rows {
            let n = data.height();
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                let bounds = format!(
                    "{}..={}",
                    min.map(|m| m.to_string()).unwrap_or_default(),
                    max.map(|m| m.to_string()).unwrap_or_default()
                );
                let f = Failure {
                    row: None,
                    line: None,
                    column: None,
                    check: "row_count".into(),
                    found: format!("{n} rows, expected {bounds}"),
                };
                record(&mut report, f, &mut table);
            }
        }

        for (spec, checked) in self.columns.iter().zip(per_column) {
            for (i, check, found) in checked.failures {
                // All of them (as many as failures are kept): the first in row order may come
                // from any column.
                if violations.len() < MAX_FAILURE_CASES {
                    violations.push(Violation {
                        row: i + 1,
                        line: data.line_of_row(i + 1),
                        column: spec.name.clone(),
                        expected: spec.expected_for(check),
                        found: found.clone(),
                    });
                }
                let f = Failure {
                    row: Some(i + 1),
                    line: data.line_of_row(i + 1),
                    column: Some(spec.name.clone()),
                    check: check.to_string(),
                    found,
                };
                record(&mut report, f, &mut rows);
            }
        }
        for f in self.expression_failures(data)? {
            record(&mut report, f, &mut rows);
        }
        for columns in &self.unique_together {
            for f in unique_together_failures(data, columns)? {
                record(&mut report, f, &mut rows);
            }
        }
        rows.sort_by(|a, b| (a.row, &a.column).cmp(&(b.row, &b.column)));
        table.extend(rows);
        report.failures = table;
        violations.sort_by(|a, b| (a.row, &a.column).cmp(&(b.row, &b.column)));
        violations.truncate(MAX_REPORTED_VIOLATIONS);
        report.violations = violations;
        Ok(report)
    }

    /// Rows where a SQL check is false, evaluated in one pass over the data.
    fn expression_failures(&self, data: &Dataset) -> Result<Vec<Failure>> {
        use polars::prelude::IntoLazy;
        if self.checks.is_empty() {
            return Ok(Vec::new());
        }
        let mut exprs = Vec::new();
        let mut inputs: Vec<Vec<String>> = Vec::new();
        for (i, check) in self.checks.iter().enumerate() {
            let expr = polars::sql::sql_expr(&check.expr).map_err(|e| {
                Error::InvalidArgument(format!("check `{}`: cannot parse {:?}: {e}", check.name, check.expr))
            })?;
            let roots: Vec<String> = expr.clone().meta().root_names().iter().map(|n| n.to_string()).collect();
            inputs.push(roots);
            exprs.push(expr.alias(format!("__check_{i}")));
        }
        let results = data
            .frame()
            .clone()
            .lazy()
            .select(exprs)
            .collect()
            .map_err(|e| Error::InvalidArgument(format!("{}: the row checks cannot run: {e}", data.source())))?;
        let mut out = Vec::new();
        for (i, check) in self.checks.iter().enumerate() {
            let column = results.column(&format!("__check_{i}"))?.as_materialized_series().clone();
            if column.dtype() != &DataType::Boolean {
                return Err(Error::InvalidArgument(format!(
                    "check `{}`: {:?} gives {}, not true/false",
                    check.name,
                    check.expr,
                    column.dtype()
                )));
            }
            let flags = column.bool()?;
            if flags.len() != data.height() {
                return Err(Error::InvalidArgument(format!(
                    "check `{}`: {:?} gives one value for the table, not one per row",
                    check.name, check.expr
                )));
            }
            for (r, ok) in flags.iter().enumerate() {
                if ok == Some(false) {
                    let found = inputs[i]
                        .iter()
                        .map(|c| {
                            let v = data.frame().column(c).ok().and_then(|s| s.get(r).ok()).map(|v| v.to_string());
                            format!("{c}={}", v.unwrap_or_default())
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    out.push(Failure {
                        row: Some(r + 1),
                        line: data.line_of_row(r + 1),
                        column: None,
                        check: format!("expr:{}", check.name),
                        found,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Like [`Schema::check`], but any failure is an [`Error::Validation`] naming the first
    /// bad rows and columns.
    pub fn validate(&self, data: &Dataset) -> Result<ValidationReport> {
        let report = self.check(data)?;
        if report.is_valid() {
            Ok(report)
        } else {
            let mut violations = report.violations.clone();
            if violations.is_empty() {
                // Only row or table checks failed: describe the first of those.
                violations = report
                    .failures
                    .iter()
                    .take(MAX_REPORTED_VIOLATIONS)
                    .map(|f| Violation {
                        row: f.row.unwrap_or(0),
                        line: f.line,
                        column: f.column.clone().unwrap_or_else(|| "(table)".into()),
                        expected: format!("check {} to pass", f.check),
                        found: f.found.clone(),
                    })
                    .collect();
            }
            Err(Error::Validation { source_name: data.source().to_string(), violations, total: report.total })
        }
    }

    /// Splits `data` into the rows that pass every check and a [`Quarantine`] of the others
    /// (with their reasons). Table-level failures quarantine no row; they are in the report.
    pub fn split_valid(&self, data: &Dataset) -> Result<(Dataset, Quarantine)> {
        let report = self.check(data)?;
        let good: Vec<usize> = (0..data.height()).filter(|r| !report.bad_rows.contains(r)).collect();
        let bad: Vec<usize> = report.bad_rows.iter().copied().collect();
        let mut valid = data.take(&good)?;
        let mut frame = valid.frame().clone();
        if self.extra_columns == ExtraColumns::Drop {
            let keep: Vec<String> = self.columns.iter().map(|c| c.name.clone()).collect();
            frame = frame.select(keep)?;
        }
        if self.coerce {
            for spec in &self.columns {
                let coerced = coerce(frame.column(&spec.name)?.as_materialized_series(), &spec.kind, &spec.name)?;
                frame.replace(&spec.name, coerced.into())?;
            }
        }
        valid = valid.with_frame(frame);
        let mut reasons: std::collections::BTreeMap<usize, Vec<String>> = std::collections::BTreeMap::new();
        for f in report.failures.iter().filter(|f| f.row.is_some()) {
            let row = f.row.unwrap_or_default() - 1;
            reasons.entry(row).or_default().push(match &f.column {
                Some(c) => format!("{c} {}: {}", f.check, f.found),
                None => format!("{}: {}", f.check, f.found),
            });
        }
        let mut quarantined = data.take(&bad)?.frame().clone();
        let row_numbers: Vec<u64> = bad.iter().map(|r| *r as u64 + 1).collect();
        let why: Vec<String> = bad.iter().map(|r| reasons.get(r).map(|v| v.join("; ")).unwrap_or_default()).collect();
        quarantined.with_column(polars::prelude::Column::new("_row".into(), row_numbers))?;
        quarantined.with_column(polars::prelude::Column::new("_reasons".into(), why))?;
        Ok((valid, Quarantine { frame: quarantined, report }))
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

/// Rows whose values in `columns` repeat another row's.
fn unique_together_failures(data: &Dataset, columns: &[String]) -> Result<Vec<Failure>> {
    let series: Vec<polars::prelude::Series> =
        columns.iter().map(|c| data.series(c).cloned()).collect::<Result<_>>()?;
    let mut seen: std::collections::HashMap<Vec<String>, Vec<usize>> = std::collections::HashMap::new();
    for r in 0..data.height() {
        let key: Vec<String> = series.iter().map(|s| s.get(r).map(|v| v.to_string()).unwrap_or_default()).collect();
        seen.entry(key).or_default().push(r);
    }
    let mut out = Vec::new();
    for (key, rows) in seen.into_iter().filter(|(_, rows)| rows.len() > 1) {
        let found = columns.iter().zip(&key).map(|(c, v)| format!("{c}={v}")).collect::<Vec<_>>().join(", ");
        for r in rows {
            out.push(Failure {
                row: Some(r + 1),
                line: data.line_of_row(r + 1),
                column: None,
                check: format!("unique_together:{}", columns.join("+")),
                found: found.clone(),
            });
        }
    }
    Ok(out)
}

/// Converts a validated column to its declared type, value by value as validation read it
/// (trimmed text parsed as a number), so a value that passed never turns into a null.
fn coerce(series: &polars::prelude::Series, kind: &ColumnKind, name: &str) -> Result<polars::prelude::Series> {
    use polars::prelude::{Float64Chunked, Int64Chunked, IntoSeries, NewChunkedArray};
    let numbers: Vec<Option<f64>> = if series.dtype() == &DataType::String {
        series.str()?.iter().map(|v| v.and_then(|s| s.trim().parse::<f64>().ok())).collect()
    } else if crate::util::is_number_dtype(series.dtype()) {
        series.cast(&DataType::Float64)?.f64()?.iter().collect()
    } else {
        Vec::new()
    };
    let lost = |row: usize, target: &str| Error::BadValue {
        source_name: "coercion".into(),
        row: row + 1,
        column: name.to_string(),
        expected: format!("a value that converts to {target}"),
        found: series.get(row).map(|v| v.to_string()).unwrap_or_default(),
    };
    Ok(match kind {
        ColumnKind::Number { .. } => {
            if let Some(r) = (0..series.len())
                .find(|r| numbers.get(*r).copied().flatten().is_none() && !series.get(*r).is_ok_and(|v| v.is_null()))
            {
                return Err(lost(r, "a number"));
            }
            Float64Chunked::from_iter_options(name.into(), numbers.into_iter()).into_series()
        }
        ColumnKind::Integer { .. } => {
            if series.dtype().is_integer() {
                return Ok(series.cast(&DataType::Int64)?);
            }
            let mut out = Vec::with_capacity(numbers.len());
            for (r, v) in numbers.iter().enumerate() {
                match v {
                    Some(x) if x.fract() == 0.0 && x.abs() < 9_223_372_036_854_775_808.0 => out.push(Some(*x as i64)),
                    None if series.get(r).is_ok_and(|v| v.is_null()) => out.push(None),
                    _ => return Err(lost(r, "a 64-bit integer")),
                }
            }
            Int64Chunked::from_iter_options(name.into(), out.into_iter()).into_series()
        }
        ColumnKind::Category { .. } | ColumnKind::Text => series.cast(&DataType::String)?,
    })
}
