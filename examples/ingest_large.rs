//! Larger than memory: writes a CSV of 10 million rows (about 330 MB), aggregates it with
//! Polars' streaming engine through `kiln::data::scan`, and prints the peak resident memory
//! of the process, which stays a fraction of the file's size.
//!
//! ```sh
//! cargo run --release --example ingest_large            # 10,000,000 rows
//! cargo run --release --example ingest_large -- 1000000 # fewer
//! ```

use std::io::Write;
use std::time::Instant;

use kiln::data::polars::prelude::*;
use kiln::data::{ScanOptions, SplitMix64, scan};

/// The process's peak resident set size in MiB (`VmHWM`), on Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let rows: u64 = match std::env::args().nth(1) {
        Some(n) => anyhow::Context::context(n.parse::<u64>(), "the argument is a number of rows")?,
        None => 10_000_000,
    };
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

    let started = Instant::now();
    let summary = scan(&path, &ScanOptions::default())?
        .map(|lf| {
            lf.filter(col("amount").gt(lit(1.0)))
                .group_by([col("country")])
                .agg([
                    len().alias("events"),
                    col("amount").sum().alias("total"),
                    col("user_id").n_unique().alias("users"),
                ])
                .sort(["country"], Default::default())
        })
        .collect_streaming()?;
    let seconds = started.elapsed().as_secs_f64();
    println!("{summary}");
    let peak = peak_rss_mib().unwrap_or(f64::NAN);
    println!(
        "streamed {rows} rows ({:.0} MB) in {seconds:.1} s ({:.1} M rows/s); peak RSS {peak:.0} MiB ({:.0}% of the file)",
        bytes as f64 / 1e6,
        rows as f64 / seconds / 1e6,
        peak * 1024.0 * 1024.0 / bytes as f64 * 100.0
    );
    Ok(())
}
