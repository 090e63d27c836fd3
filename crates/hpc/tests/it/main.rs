//! kiln-hpc's integration tests: one binary, a module per topic.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod corpus;
mod fake_slurm;
mod local;
mod pipeline;
mod scripts;
mod slurm;

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `kiln-hpc-TAG-PID-N` under the temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kiln-hpc-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The crate's directory. Cargo sets `CARGO_MANIFEST_DIR` when it runs the tests; the
/// compile-time value is only a fallback, since a test binary built in another checkout that
/// shares the target directory keeps that checkout's path.
pub fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write script");
    let status = std::process::Command::new("chmod").arg("+x").arg(path).status().expect("chmod");
    assert!(status.success());
}

/// The most "start" lines not yet matched by an "end" line in a log of `start NANOS` /
/// `end NANOS` lines that concurrent tasks append to.
pub fn local_max_overlap(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).expect("read the events log");
    let mut events: Vec<(u128, i32)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(kind, t)| (t.trim().parse::<u128>().expect("a timestamp"), if kind == "start" { 1 } else { -1 }))
        .collect();
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}
