//! Integration tests of kiln-track against real directories and Parquet files.

mod registry;
mod runs;
mod tables;
