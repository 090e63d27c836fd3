//! Integration tests of kiln-track against real directories and Parquet files.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod gc;
mod registry;
mod runs;
#[cfg(all(feature = "server", feature = "client"))]
mod server;
mod sync;
mod tables;
