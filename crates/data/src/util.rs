//! Small helpers shared by kiln-data's modules: directory walks, column kinds, versioned
//! JSON documents.

use std::path::{Path, PathBuf};

use polars::prelude::DataType;

use crate::{Error, Result};

/// Every regular file below `dir` (unsorted), following symbolic links without looping on a
/// cycle. With `skip_hidden`, names starting with `.` or `_` (`.crc`, `_SUCCESS`) are left out.
pub(crate) fn walk_files(dir: &Path, skip_hidden: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Directories already walked, by canonical path: a symbolic link cycle ends here.
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone())) {
            continue;
        }
        let entries = std::fs::read_dir(&d).map_err(|source| Error::Io { path: d.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io { path: d.clone(), source })?;
            if skip_hidden && entry.file_name().to_string_lossy().starts_with(['.', '_']) {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// `path` relative to `base`, with `/` separators (`None` when it is not below `base`).
pub(crate) fn relative_slash(path: &Path, base: &Path) -> Option<String> {
    let rel = path.strip_prefix(base).ok()?;
    Some(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"))
}

/// Whether a column of this type is read as numbers (integers, floats, booleans); the others
/// are read as text.
pub(crate) fn is_number_dtype(dtype: &DataType) -> bool {
    dtype.is_primitive_numeric() || dtype == &DataType::Boolean
}

/// Reads a JSON document that carries `format_version` (and, when `format` is given, a
/// `format` field naming it), refusing other formats and versions before deserialising.
/// `nouns` words the refusal: ("format version", "version") gives "pipeline format version
/// 2; this kiln reads version 1".
pub(crate) fn read_versioned_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
    format: Option<&str>,
    version: u32,
    nouns: (&str, &str),
) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("{what} JSON: {e}")))?;
    if let Some(format) = format
        && value.get("format").and_then(serde_json::Value::as_str) != Some(format)
    {
        return Err(Error::InvalidArgument(format!("not a kiln {what} document (format is not {format:?})")));
    }
    match value.get("format_version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(version) => {}
        Some(v) => {
            let (long, short) = nouns;
            return Err(Error::InvalidArgument(format!("{what} {long} {v}; this kiln reads {short} {version}")));
        }
        None => return Err(Error::InvalidArgument(format!("{what} JSON: no format_version"))),
    }
    serde_json::from_value(value).map_err(|e| Error::InvalidArgument(format!("{what} JSON: {e}")))
}
