//! Loading tabular data with Polars.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use polars::prelude::{
    CsvParseOptions, CsvReadOptions, CsvWriter, DataFrame, DataType, IdxCa, NullValues, SerReader, SerWriter,
};

use crate::{Error, Result};

/// A table loaded into memory, with where it came from and a content hash.
///
/// The hash is the BLAKE3 digest of the file's bytes (hex), so two runs that trained on the same
/// bytes record the same dataset version whatever the file was called.
#[derive(Debug, Clone)]
pub struct Dataset {
    frame: DataFrame,
    source: String,
    path: Option<PathBuf>,
    hash: String,
    /// Number of file lines before data row 1, when row *n* is exactly line *n + offset* (a CSV
    /// with a header and no quoted fields, which could hold line breaks).
    line_offset: Option<usize>,
}

/// Options for [`Dataset::load_csv_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// Strings read as missing values in every column. Default: `""`, `NA`, `NaN`, `null`.
    pub null_values: Vec<String>,
    /// The field separator. Default `,`.
    pub separator: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self { null_values: ["", "NA", "NaN", "null"].map(String::from).to_vec(), separator: b',' }
    }
}

impl Dataset {
    /// Reads a CSV file with a header row, inferring column types from the whole file.
    pub fn load_csv(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_csv_with(path, &CsvOptions::default())
    }

    /// Reads a CSV file with a header row using `options`.
    pub fn load_csv_with(path: impl AsRef<Path>, options: &CsvOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::parse_csv(bytes, path, Some(path.to_path_buf()), options)
    }

    /// Reads CSV text held in memory; `source` names it in errors and records.
    pub fn from_csv_bytes(bytes: impl Into<Vec<u8>>, source: &str, options: &CsvOptions) -> Result<Self> {
        Self::parse_csv(bytes.into(), Path::new(source), None, options)
    }

    fn parse_csv(bytes: Vec<u8>, path: &Path, file: Option<std::path::PathBuf>, options: &CsvOptions) -> Result<Self> {
        let hash = blake3::hash(&bytes).to_hex().to_string();
        // Row n is line n + 1 unless quoted fields may span lines or blank lines are skipped.
        let blank_line = bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n");
        let line_offset = (!bytes.contains(&b'"') && !blank_line).then_some(1);
        let parse = CsvParseOptions::default().with_separator(options.separator).with_null_values(Some(
            NullValues::AllColumns(options.null_values.iter().map(|s| s.as_str().into()).collect()),
        ));
        let frame = CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(None)
            .with_parse_options(parse)
            .into_reader_with_file_handle(std::io::Cursor::new(bytes))
            .finish()
            .map_err(|e| Error::Csv { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Self { frame, source: path.display().to_string(), path: file, hash, line_offset })
    }

    /// Wraps a frame built in memory. `source` names it in error messages; the hash is computed
    /// from the frame's CSV rendering.
    pub fn from_frame(frame: DataFrame, source: impl Into<String>) -> Result<Self> {
        let mut frame = frame;
        let mut buf = Vec::new();
        CsvWriter::new(&mut buf).finish(&mut frame).map_err(Error::Polars)?;
        let hash = blake3::hash(&buf).to_hex().to_string();
        Ok(Self { frame, source: source.into(), path: None, hash, line_offset: None })
    }

    /// The underlying Polars frame.
    pub fn frame(&self) -> &DataFrame {
        &self.frame
    }

    /// The name used in error messages: the path for files.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The file this was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// BLAKE3 hex digest of the source bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Number of data rows.
    pub fn height(&self) -> usize {
        self.frame.height()
    }

    /// Column names, in order.
    pub fn column_names(&self) -> Vec<String> {
        self.frame.get_column_names().iter().map(|s| s.to_string()).collect()
    }

    /// The file line of 1-based data row `row`, where that is known exactly.
    pub fn line_of_row(&self, row: usize) -> Option<usize> {
        self.line_offset.map(|o| row + o)
    }

    pub(crate) fn series(&self, column: &str) -> Result<&polars::prelude::Series> {
        match self.frame.column(column) {
            Ok(c) => Ok(c.as_materialized_series()),
            Err(_) => Err(Error::MissingColumn {
                source_name: self.source.clone(),
                column: column.to_string(),
                available: self.column_names().join(", "),
            }),
        }
    }

    /// The named columns as an `rows × columns` matrix of `f64`. Integer and float columns are
    /// converted; a missing value or a non-numeric column is an error naming the row and column.
    pub fn to_matrix(&self, columns: &[String]) -> Result<Array2<f64>> {
        let mut out = Array2::<f64>::zeros((self.height(), columns.len()));
        for (j, name) in columns.iter().enumerate() {
            let series = self.series(name)?;
            if !series.dtype().is_primitive_numeric() {
                let (row, found) = first_value(series);
                return Err(Error::BadValue {
                    source_name: self.source.clone(),
                    row,
                    column: name.clone(),
                    expected: "a number".into(),
                    found: format!("{found} (column type {})", series.dtype()),
                });
            }
            let cast = series.cast(&DataType::Float64)?;
            for (i, v) in cast.f64()?.iter().enumerate() {
                match v {
                    Some(v) => out[[i, j]] = v,
                    None => {
                        return Err(Error::BadValue {
                            source_name: self.source.clone(),
                            row: i + 1,
                            column: name.clone(),
                            expected: "a number".into(),
                            found: "a missing value".into(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The named column rendered as strings (integers without a decimal point), for labels.
    /// A missing value is an error naming its row.
    pub fn to_strings(&self, column: &str) -> Result<Vec<String>> {
        let series = self.series(column)?;
        let cast = series.cast(&DataType::String)?;
        cast.str()?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.map(str::to_string).ok_or_else(|| Error::BadValue {
                    source_name: self.source.clone(),
                    row: i + 1,
                    column: column.to_string(),
                    expected: "a label".into(),
                    found: "a missing value".into(),
                })
            })
            .collect()
    }

    /// The rows at `rows` (0-based), in that order. The result keeps this dataset's source
    /// name, with `#subset` appended; its hash is derived from this dataset's hash and the
    /// rows taken, so a subset is a version of its own.
    pub fn take(&self, rows: &[usize]) -> Result<Self> {
        let height = self.height();
        if let Some(bad) = rows.iter().find(|r| **r >= height) {
            return Err(Error::InvalidArgument(format!(
                "{}: row index {bad} is out of range for {height} rows",
                self.source
            )));
        }
        let idx = IdxCa::from_vec("idx".into(), rows.iter().map(|r| *r as _).collect());
        // A subset is another version: its digest is that of the parent and the rows taken.
        let mut h = blake3::Hasher::new();
        h.update(b"kiln-subset\0");
        h.update(self.hash.as_bytes());
        for r in rows {
            h.update(&(*r as u64).to_le_bytes());
        }
        Ok(Self {
            frame: self.frame.take(&idx)?,
            source: format!("{}#subset", self.source),
            path: self.path.clone(),
            hash: h.finalize().to_hex().to_string(),
            line_offset: None,
        })
    }
}

impl Dataset {
    /// The same dataset (source, path, hash) holding `frame` instead: for a filtered or
    /// recast copy whose rows no longer map to file lines.
    pub(crate) fn with_frame(mut self, frame: DataFrame) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"kiln-reshaped\0");
        h.update(self.hash.as_bytes());
        for (name, dtype) in frame.schema().iter() {
            h.update(format!("{name}\0{dtype}\n").as_bytes());
        }
        self.hash = h.finalize().to_hex().to_string();
        self.frame = frame;
        self.line_offset = None;
        self
    }
}

/// The 1-based row and rendering of the first non-null value of a column, for messages.
fn first_value(series: &polars::prelude::Series) -> (usize, String) {
    for i in 0..series.len() {
        if let Ok(v) = series.get(i)
            && !v.is_null()
        {
            return (i + 1, v.to_string());
        }
    }
    (1, "a missing value".into())
}

/// Writes `frame` to a Parquet file atomically: a temporary file beside it, synced, then
/// renamed over `path`, so a reader sees the old file or the whole new one.
pub fn write_parquet(frame: &polars::prelude::DataFrame, path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut frame = frame.clone();
        polars::prelude::ParquetWriter::new(&file).finish(&mut frame)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
