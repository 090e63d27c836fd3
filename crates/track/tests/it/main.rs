//! Integration tests of kiln-track against real directories and Parquet files.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod registry;
mod runs;
mod sync;
mod tables;
