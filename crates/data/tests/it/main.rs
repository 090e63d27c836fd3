//! Integration tests of kiln-data on the shipped datasets.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod drift;
mod images;
mod ingest;
mod npy;
mod pipeline;
mod profile;
mod split;
mod synthetic;
mod tensors;
mod validate;
mod version;

use std::path::PathBuf;

/// A file of the shipped `data/` folder.
pub fn data_file(name: &str) -> PathBuf {
    // At run time: a test binary built in another checkout of the same target directory
    // would otherwise carry that checkout's path.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(crate_dir).join("../../data").join(name)
}

/// The 64 pixel columns of digits.csv.
pub fn digits_features() -> Vec<String> {
    (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect()
}

/// The digits schema of the quickstart.
pub fn digits_schema() -> kiln_data::Schema {
    let mut columns: Vec<kiln_data::ColumnSpec> =
        digits_features().iter().map(|f| kiln_data::ColumnSpec::integer(f.as_str(), 0, 16)).collect();
    columns.push(kiln_data::ColumnSpec::integer("label", 0, 9));
    kiln_data::Schema::new(columns)
}
