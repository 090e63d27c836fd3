//! Larger than memory: writes a CSV of 10 million rows (about 240 MB), filters and aggregates
//! it with Polars' streaming engine through `kiln::data::scan`, and prints the peak memory of the
//! process: the resident high-water mark (`VmHWM`, which counts the file's pages that the
//! reader maps) and the peak of anonymous memory (`RssAnon`, sampled every 2 ms: what the
//! query itself allocates). Run it with `memory` to compare with the in-memory engine.
//!
//! ```sh
//! cargo run --release --example ingest_large                      # 10,000,000 rows, streaming
//! cargo run --release --example ingest_large -- 10000000 memory   # the in-memory engine
//! ```

use std::io::Write;
use std::time::Instant;

use kiln::data::polars::prelude::*;
use kiln::data::{ScanOptions, SplitMix64, scan};

/// A field of `/proc/self/status` in MiB (Linux).
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

fn main() -> anyhow::Result<()> {
    let rows: u64 = match std::env::args().nth(1) {
        Some(n) => anyhow::Context::context(n.parse::<u64>(), "the argument is a number of rows")?,
        None => 10_000_000,
    };
    let streaming = std::env::args().nth(2).as_deref() != Some("memory");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.csv");
    let started = Instant::now();
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        writeln!(out, "event_id,user_id,country,amount")?;
        let mut rng = SplitMix64::new(7);
        for i in 0..rows {
            let country = rng.below(20);
            let amount = (rng.next_f64() * 10_000.0).round() / 100.0;
            writeln!(out, "{i},{},c{country:02},{amount}", rng.below(100_000))?;
        }
        out.flush()?;
    }
    let bytes = std::fs::metadata(&path)?.len();
    println!(
        "wrote {rows} rows, {:.0} MB, in {:.1} s; peak RSS so far {:.0} MiB",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        peak_rss_mib().unwrap_or(f64::NAN)
    );

    // Sample anonymous memory while the query runs.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_mib("RssAnon:").unwrap_or(0.0));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak
        })
    };
    let started = Instant::now();
    let query = scan(&path, &ScanOptions::default())?.map(|lf| {
        lf.filter(col("amount").gt(lit(1.0))).select([
            len().alias("events"),
            col("amount").sum().alias("total"),
            col("amount").mean().alias("mean"),
            col("user_id").max().alias("max_user"),
        ])
    });
    let summary = if streaming { query.collect_streaming()? } else { query.collect()? };
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let anon = sampler.join().unwrap_or(f64::NAN);
    println!("{summary}");
    let peak = peak_rss_mib().unwrap_or(f64::NAN);
    println!(
        "{} engine: {rows} rows ({:.0} MB) in {seconds:.1} s ({:.1} M rows/s); peak RSS {peak:.0} MiB, peak anonymous memory {anon:.0} MiB ({:.0}% of the file)",
        if streaming { "streaming" } else { "in-memory" },
        bytes as f64 / 1e6,
        rows as f64 / seconds / 1e6,
        anon * 1024.0 * 1024.0 / bytes as f64 * 100.0
    );
    Ok(())
}
