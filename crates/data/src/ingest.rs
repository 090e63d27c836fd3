//! Ingestion: one entry point that scans CSV, Parquet, Arrow IPC and NDJSON lazily, from a
//! file, a glob or a directory.
//!
//! [`scan`] resolves the files itself (so a pattern that matches nothing, an empty file or an
//! unknown extension is a clear error up front) and returns a Polars `LazyFrame`: nothing is
//! read until the query runs, and [`Scan::collect_streaming`] runs it on Polars' streaming
//! engine, in bounded memory, for files larger than RAM. When Polars rejects a CSV or NDJSON
//! file, kiln reads the file again to say where: the file, the line and the column, and what
//! was expected there (a field count, valid UTF-8, a number, valid JSON).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util::{relative_slash, walk_files};
use crate::{Error, Result};

/// A file format kiln reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Comma- (or tab-) separated text with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC (Feather v2).
    Ipc,
    /// Newline-delimited JSON, one object per line.
    NdJson,
}

impl Format {
    /// The format a file name's extension names: `csv`, `tsv`, `parquet`/`pq`,
    /// `arrow`/`ipc`/`feather`, `ndjson`/`jsonl`.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "csv" | "tsv" => Self::Csv,
            "parquet" | "pq" => Self::Parquet,
            "arrow" | "ipc" | "feather" => Self::Ipc,
            "ndjson" | "jsonl" => Self::NdJson,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Csv => "CSV",
            Self::Parquet => "Parquet",
            Self::Ipc => "Arrow IPC",
            Self::NdJson => "NDJSON",
        }
    }
}

const EXTENSIONS: &str = "csv, tsv, parquet, pq, arrow, ipc, feather, ndjson, jsonl";

/// How to read the files.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanOptions {
    /// The format, instead of guessing it from the extension.
    pub format: Option<Format>,
    /// CSV field separator (default `,`, or tab for `.tsv` files).
    pub separator: Option<u8>,
    /// Whether CSV files start with a header row (default true).
    pub has_header: bool,
    /// Strings read as missing values in CSV files (default `""`, `NA`, `NaN`, `null`).
    pub null_values: Vec<String>,
    /// Column types that override inference, e.g. an id column read as text.
    pub dtypes: Vec<(String, DataType)>,
    /// Rows read to infer CSV and NDJSON column types (default 10,000; `None`: all rows,
    /// which reads the files twice).
    pub infer_schema_rows: Option<usize>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            format: None,
            separator: None,
            has_header: true,
            null_values: ["", "NA", "NaN", "null"].map(String::from).to_vec(),
            dtypes: Vec::new(),
            infer_schema_rows: Some(10_000),
        }
    }
}

/// A lazy scan over one or more files of one format.
#[derive(Clone)]
pub struct Scan {
    /// The query; add filters, selections and aggregations before collecting.
    pub frame: LazyFrame,
    /// The scan alone, before any `map`: its schema is the files' (for diagnosing them).
    base: LazyFrame,
    /// The files, sorted.
    pub files: Vec<PathBuf>,
    /// Their format.
    pub format: Format,
    options: ScanOptions,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").field("files", &self.files).field("format", &self.format).finish_non_exhaustive()
    }
}

impl Scan {
    /// Runs the query in memory.
    pub fn collect(self) -> Result<DataFrame> {
        let result = self.frame.clone().collect();
        result.map_err(|e| self.explain(e))
    }

    /// Runs the query on Polars' streaming engine, which reads the files in batches: memory
    /// stays bounded for aggregations and filters over data larger than RAM.
    pub fn collect_streaming(self) -> Result<DataFrame> {
        let result = self.frame.clone().collect_with_engine(Engine::Streaming);
        match result {
            Ok(polars_core::query_result::QueryResult::Single(df)) => Ok(df),
            Ok(polars_core::query_result::QueryResult::Multiple(mut dfs)) => Ok(dfs.pop().unwrap_or_default()),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// Applies `f` to the query (a filter, a selection, an aggregation), keeping the files
    /// for error messages.
    pub fn map(mut self, f: impl FnOnce(LazyFrame) -> LazyFrame) -> Self {
        self.frame = f(self.frame);
        self
    }

    /// Turns a Polars error into one that names the file, line and column when the files
    /// can be read again to find them.
    fn explain(&self, error: PolarsError) -> Error {
        let found = match self.format {
            Format::Csv => diagnose_csv(&self.files, &self.options, &self.base),
            Format::NdJson => diagnose_ndjson(&self.files),
            Format::Parquet | Format::Ipc => None,
        };
        found.unwrap_or_else(|| Error::Parse {
            path: self.files.first().cloned().unwrap_or_default(),
            line: None,
            column: None,
            message: format!(
                "cannot read {} ({} file(s){}): {error}",
                self.format.name(),
                self.files.len(),
                if self.files.len() > 1 { ", first shown" } else { "" }
            ),
        })
    }
}

/// Scans `source`: a file, a directory (every data file below it, skipping names that start
/// with `.` or `_`), or a glob (`*`, `?`, `[...]`, and `**` for any depth). All files must
/// have one format. Nothing is read but file metadata until the query runs.
pub fn scan(source: impl AsRef<Path>, options: &ScanOptions) -> Result<Scan> {
    let source = source.as_ref();
    let files = resolve(source, options.format)?;
    let format = match options.format {
        Some(f) => f,
        None => {
            let mut formats: Vec<(Format, &PathBuf)> =
                files.iter().filter_map(|p| Format::from_path(p).map(|f| (f, p))).collect();
            formats.sort_by_key(|(f, _)| f.name());
            formats.dedup_by_key(|(f, _)| *f);
            match formats.as_slice() {
                [(f, _)] => *f,
                _ => {
                    let list: Vec<String> =
                        formats.iter().map(|(f, p)| format!("{} ({})", f.name(), p.display())).collect();
                    return Err(Error::InvalidArgument(format!(
                        "{}: the files mix formats: {}; scan one format at a time",
                        source.display(),
                        list.join(", ")
                    )));
                }
            }
        }
    };
    for file in &files {
        let meta = std::fs::metadata(file).map_err(|e| Error::Io { path: file.clone(), source: e })?;
        if meta.len() == 0 {
            return Err(Error::Parse {
                path: file.clone(),
                line: None,
                column: None,
                message: "the file is empty".into(),
            });
        }
    }
    let paths: Vec<PlRefPath> = files
        .iter()
        .map(|p| PlRefPath::try_from_path(p).map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display()))))
        .collect::<Result<_>>()?;
    let overrides: Option<SchemaRef> = (!options.dtypes.is_empty())
        .then(|| Arc::new(options.dtypes.iter().map(|(n, t)| Field::new(n.as_str().into(), t.clone())).collect()));
    let frame = match format {
        Format::Csv => {
            let separator = options.separator.unwrap_or_else(|| {
                if files.iter().all(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv"))) {
                    b'\t'
                } else {
                    b','
                }
            });
            LazyCsvReader::new_paths(paths.into())
                .with_has_header(options.has_header)
                .with_separator(separator)
                .with_null_values(Some(NullValues::AllColumns(
                    options.null_values.iter().map(|s| s.as_str().into()).collect(),
                )))
                .with_dtype_overwrite(overrides)
                .with_infer_schema_length(options.infer_schema_rows)
                .with_glob(false)
                .finish()
        }
        Format::Parquet => {
            let args = ScanArgsParquet { glob: false, hive_options: HiveOptions::new_disabled(), ..Default::default() };
            LazyFrame::scan_parquet_files(paths.into(), args)
        }
        Format::Ipc => {
            let args = UnifiedScanArgs { glob: false, hive_options: HiveOptions::new_disabled(), ..Default::default() };
            LazyFrame::scan_ipc_sources(ScanSources::Paths(paths.into()), Default::default(), args)
        }
        Format::NdJson => LazyJsonLineReader::new_paths(paths.into())
            .with_schema_overwrite(overrides)
            .with_infer_schema_length(options.infer_schema_rows.and_then(std::num::NonZeroUsize::new))
            .finish(),
    }
    .map_err(|e| Error::Parse {
        path: files[0].clone(),
        line: None,
        column: None,
        message: format!("cannot scan {}: {e}", format.name()),
    })?;
    // Parquet and IPC carry their own types; overrides become casts (strict: a value that
    // does not fit is an error, not a null).
    let frame = if matches!(format, Format::Parquet | Format::Ipc) && !options.dtypes.is_empty() {
        frame.with_columns(
            options.dtypes.iter().map(|(n, t)| col(n.as_str()).strict_cast(t.clone())).collect::<Vec<_>>(),
        )
    } else {
        frame
    };
    Ok(Scan { base: frame.clone(), frame, files, format, options: options.clone() })
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files `source` names, sorted.
fn resolve(source: &Path, format: Option<Format>) -> Result<Vec<PathBuf>> {
    let text = source.to_string_lossy();
    let wanted = |p: &Path| format.is_some() || Format::from_path(p).is_some();
    if source.is_file() {
        if !wanted(source) {
            let ext = source.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            return Err(Error::InvalidArgument(format!(
                "{}: unknown extension `{ext}`; expected one of {EXTENSIONS} (or set ScanOptions::format)",
                source.display()
            )));
        }
        return Ok(vec![source.to_path_buf()]);
    }
    if source.is_dir() {
        // With a format given, only its extensions count (a README is not a CSV file).
        let of_format = |p: &Path| match format {
            Some(f) => Format::from_path(p) == Some(f),
            None => Format::from_path(p).is_some(),
        };
        let mut files: Vec<PathBuf> = walk_files(source, true)?.into_iter().filter(|p| of_format(p)).collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: no data files in this directory (extensions {EXTENSIONS})",
                source.display()
            )));
        }
        return Ok(files);
    }
    if has_glob(&text) {
        // The longest leading part without wildcards is where to look.
        let parts: Vec<&str> = text.split('/').collect();
        let fixed = parts.iter().take_while(|p| !has_glob(p)).count();
        let base = if fixed == 0 {
            PathBuf::from(".")
        } else if parts[..fixed].join("/").is_empty() {
            PathBuf::from("/")
        } else {
            PathBuf::from(parts[..fixed].join("/"))
        };
        let pattern = glob_regex(&parts[fixed..].join("/"))?;
        let mut files: Vec<PathBuf> = if base.is_dir() { walk_files(&base, true)? } else { Vec::new() };
        files.retain(|p| relative_slash(p, &base).is_some_and(|rel| pattern.is_match(&rel)));
        files.sort();
        if files.is_empty() {
            return Err(Error::InvalidArgument(format!("{text}: the pattern matches no file")));
        }
        if let Some(bad) = files.iter().find(|p| !wanted(p)) {
            return Err(Error::InvalidArgument(format!(
                "{}: unknown extension; expected one of {EXTENSIONS} (or set ScanOptions::format)",
                bad.display()
            )));
        }
        return Ok(files);
    }
    Err(Error::Io { path: source.to_path_buf(), source: std::io::Error::from(std::io::ErrorKind::NotFound) })
}

/// A glob as an anchored regex over `/`-separated relative paths.
fn glob_regex(glob: &str) -> Result<regex::Regex> {
    let mut re = String::from("^");
    let chars: Vec<char> = glob.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                // `**/` matches any number of directories, including none.
                if chars.get(i + 2) == Some(&'/') {
                    re.push_str("(?:.*/)?");
                    i += 3;
                } else {
                    re.push_str(".*");
                    i += 2;
                }
                continue;
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                let end = chars[i..].iter().position(|c| *c == ']').map(|p| p + i);
                match end {
                    Some(end) => {
                        let class: String = chars[i + 1..end].iter().collect();
                        let class = class.strip_prefix('!').map(|c| format!("^{c}")).unwrap_or(class);
                        re.push('[');
                        re.push_str(&class.replace('\\', "\\\\"));
                        re.push(']');
                        i = end + 1;
                        continue;
                    }
                    None => re.push_str("\\["),
                }
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|e| Error::InvalidArgument(format!("bad pattern {glob:?}: {e}")))
}

/// Splits a CSV record into fields, honouring double quotes; `None` when a quote is still
/// open at the end (the record continues on the next line).
fn split_record(line: &str, separator: char) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c == separator && !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

/// Reads CSV files again to find the first line that breaks what the scan expects.
fn diagnose_csv(files: &[PathBuf], options: &ScanOptions, frame: &LazyFrame) -> Option<Error> {
    // The schema Polars settled on (inferred, with overrides), when it got that far.
    let schema = frame.clone().collect_schema().ok();
    for path in files {
        let separator = options
            .separator
            .map(char::from)
            .unwrap_or(if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv")) { '\t' } else { ',' });
        let mut header: Option<Vec<String>> = None;
        let mut pending = String::new();
        let mut record_start = 0usize;
        let found = for_each_line(path, |line_no, text| {
            if pending.is_empty() {
                record_start = line_no;
            }
            pending.push_str(text.trim_end_matches(['\n', '\r']));
            let Some(fields) = split_record(&pending, separator) else {
                pending.push('\n');
                return None;
            };
            pending.clear();
            if header.is_none() {
                if options.has_header {
                    header = Some(fields);
                    return None;
                }
                header = Some((1..=fields.len()).map(|i| format!("column_{i}")).collect());
            }
            let names = header.as_deref().unwrap_or_default();
            if fields.len() == 1 && fields[0].is_empty() {
                return None; // a blank line
            }
            check_fields(path, record_start, names, &fields, schema.as_ref(), options)
        });
        if found.is_some() {
            return found;
        }
        if !pending.is_empty() {
            return Some(Error::Parse {
                path: path.clone(),
                line: Some(record_start),
                column: None,
                message: "a quoted field opened here is never closed".into(),
            });
        }
    }
    None
}

fn check_fields(
    path: &Path,
    line: usize,
    names: &[String],
    fields: &[String],
    schema: Option<&SchemaRef>,
    options: &ScanOptions,
) -> Option<Error> {
    // Polars pads short records with nulls; only extra fields are an error.
    if fields.len() > names.len() {
        return Some(Error::Parse {
            path: path.to_path_buf(),
            line: Some(line),
            column: None,
            message: format!("expected {} fields (as in the header), found {}", names.len(), fields.len()),
        });
    }
    let schema = schema?;
    for (name, value) in names.iter().zip(fields) {
        let trimmed = value.trim();
        if options.null_values.iter().any(|n| n == trimmed) {
            continue;
        }
        let Some(dtype) = schema.get(name.as_str()) else { continue };
        let ok = if dtype.is_integer() {
            trimmed.parse::<i128>().is_ok()
        } else if dtype.is_float() {
            trimmed.parse::<f64>().is_ok()
        } else if dtype == &DataType::Boolean {
            matches!(trimmed.to_ascii_lowercase().as_str(), "true" | "false")
        } else {
            true
        };
        if !ok {
            let expected = if dtype.is_integer() {
                "an integer"
            } else if dtype.is_float() {
                "a number"
            } else {
                "true or false"
            };
            return Some(Error::Parse {
                path: path.to_path_buf(),
                line: Some(line),
                column: Some(name.clone()),
                message: format!(
                    "expected {expected} (the column's type is {dtype}), found {value:?}; fix the value, add it to null_values, or override the column's type"
                ),
            });
        }
    }
    None
}

fn diagnose_ndjson(files: &[PathBuf]) -> Option<Error> {
    files.iter().find_map(|path| {
        for_each_line(path, |line_no, text| {
            let text = text.trim();
            if text.is_empty() {
                return None;
            }
            let message = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(_)) => return None,
                Ok(other) => format!("expected a JSON object, found {}", json_kind(&other)),
                Err(e) => format!("invalid JSON at character {}: {e}", e.column()),
            };
            Some(Error::Parse { path: path.clone(), line: Some(line_no), column: None, message })
        })
    })
}

/// Calls `f` with each line of `path` (1-based number, text with its line break) until it
/// returns an error; a line that is not UTF-8 is itself the error. Read failures end the
/// diagnosis quietly (the original error is reported instead).
fn for_each_line(path: &Path, mut f: impl FnMut(usize, &str) -> Option<Error>) -> Option<Error> {
    let mut reader = BufReader::new(std::fs::File::open(path).ok()?);
    let mut raw = Vec::new();
    let mut line_no = 0usize;
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        line_no += 1;
        let found = match std::str::from_utf8(&raw) {
            Ok(text) => f(line_no, text),
            Err(e) => {
                let good = std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default();
                Some(Error::Parse {
                    path: path.to_path_buf(),
                    line: Some(line_no),
                    column: None,
                    message: format!(
                        "invalid UTF-8 at character {} (byte 0x{:02x}); save the file as UTF-8",
                        good.chars().count() + 1,
                        raw[e.valid_up_to()]
                    ),
                })
            }
        };
        if found.is_some() {
            return found;
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |g: &str, p: &str| glob_regex(g).map(|r| r.is_match(p)).unwrap_or(false);
        assert!(m("*.csv", "a.csv") && !m("*.csv", "d/a.csv"));
        assert!(m("**/*.csv", "a.csv") && m("**/*.csv", "d/e/a.csv"));
        assert!(m("part-?.parquet", "part-1.parquet") && !m("part-?.parquet", "part-12.parquet"));
        assert!(m("part-[0-4].csv", "part-3.csv") && !m("part-[0-4].csv", "part-7.csv"));
        assert!(m("part-[!0-4].csv", "part-7.csv"));
        assert!(!m("a.csv", "aXcsv"), "dots are literal");
    }

    #[test]
    fn records_split_on_unquoted_separators() {
        assert_eq!(split_record("a,\"b,c\",d", ','), Some(vec!["a".into(), "b,c".into(), "d".into()]));
        assert_eq!(split_record("\"say \"\"hi\"\"\",2", ','), Some(vec!["say \"hi\"".into(), "2".into()]));
        assert_eq!(split_record("\"open,2", ','), None);
    }
}
