//! The small real datasets shipped with kiln (see `data/README.md` for sources and
//! licences), built into the library so examples and tests never download anything.
//!
//! Each loader parses the embedded CSV; the [`Dataset::hash`] is the BLAKE3 of the file, the
//! same as loading `data/<name>.csv` from disk.

use crate::{CsvOptions, Dataset, Result};

const DIGITS: &[u8] = include_bytes!("../../../data/digits.csv");
const BREAST_CANCER: &[u8] = include_bytes!("../../../data/breast_cancer.csv");
const PENGUINS: &[u8] = include_bytes!("../../../data/penguins.csv");

/// UCI optical handwritten digits (test set): 1,797 rows, 64 pixel columns `pixel_{r}_{c}`
/// with integers 0 to 16, and `label` 0 to 9.
pub fn digits() -> Result<Dataset> {
    Dataset::from_csv_bytes(DIGITS, "kiln:digits", &CsvOptions::default())
}

/// Breast Cancer Wisconsin (Diagnostic): 569 rows, 30 numeric features, and `target`
/// (`malignant` or `benign`).
pub fn breast_cancer() -> Result<Dataset> {
    Dataset::from_csv_bytes(BREAST_CANCER, "kiln:breast_cancer", &CsvOptions::default())
}

/// Palmer penguins: 344 rows; `species` (3 classes), `island`, `sex` (with missing values),
/// four body measurements (with missing values) and `year`.
pub fn penguins() -> Result<Dataset> {
    Dataset::from_csv_bytes(PENGUINS, "kiln:penguins", &CsvOptions::default())
}
