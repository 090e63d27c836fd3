//! kiln-track benchmarks: metric logging throughput and call latency (local, and remote
//! through the tracking server), SQL over a large compacted store, and compaction throughput.
//!
//! `cargo bench --bench track`. The query benchmark generates a store of
//! `KILN_BENCH_RUNS` runs (default 10,000) × 10 metrics × 1,000 steps once, under
//! `$CARGO_TARGET_DIR/kiln-bench/` (about 3 GB), and reuses it on later runs.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kiln::track::Store;

const MODELS: [&str; 4] = ["LogisticRegression", "RandomForest", "MLP", "CNN"];
const METRICS: [&str; 10] = [
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "grad_norm",
    "epoch_seconds",
    "samples_per_second",
    "val_f1",
    "val_auc",
];

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
    target.join("kiln-bench")
}

/// A run that metrics can be logged to, local or remote.
trait Logger {
    fn log(&mut self, key: &str, step: u64, value: f64);
    fn flush(&mut self);
}

impl Logger for kiln::track::Run {
    fn log(&mut self, key: &str, step: u64, value: f64) {
        self.log_metric(key, step, value).expect("log");
    }
    fn flush(&mut self) {
        kiln::track::Run::flush(self).expect("flush");
    }
}

impl Logger for kiln::track::client::RemoteRun {
    fn log(&mut self, key: &str, step: u64, value: f64) {
        self.log_metric(key, step, value).expect("log");
    }
    fn flush(&mut self) {
        kiln::track::client::RemoteRun::flush(self).expect("flush");
    }
}

/// Throughput of `points` calls over 10 keys then a flush (criterion), and the latency of
/// each call timed one by one (criterion reports means; the target is on the tail).
fn throughput_and_latency(c: &mut Criterion, group: &str, label: &str, points: u64, run: &mut impl Logger) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(points));
    g.sample_size(10);
    let mut step = 0u64;
    g.bench_function(label, |b| {
        b.iter(|| {
            for i in 0..points {
                run.log(METRICS[(i % 10) as usize], step, black_box(i as f64));
                step += (i % 10 == 9) as u64;
            }
            run.flush();
        })
    });
    g.finish();

    let mut samples = Vec::with_capacity(points as usize);
    for i in 0..points {
        let t = Instant::now();
        run.log(METRICS[(i % 10) as usize], step, i as f64);
        samples.push(t.elapsed());
        step += (i % 10 == 9) as u64;
    }
    run.flush();
    samples.sort_unstable();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{group} call latency over {points} calls: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        q(0.5),
        q(0.99),
        q(0.999),
        samples[samples.len() - 1]
    );
}

fn logging(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mut run = store.run_builder("bench").capture_environment(false).start().expect("run");
    throughput_and_latency(c, "track/log_metric", "1M points, 10 keys, then flush (fsync)", 1_000_000, &mut run);
    run.finish().expect("finish");
}

/// Remote logging through the tracking server on 127.0.0.1: the cost of a `RemoteRun::log_metric`
/// call, and end-to-end throughput (JSON over HTTP, then the server's segment writer and fsync).
fn remote(c: &mut Criterion) {
    use kiln::track::client::Client;
    use kiln::track::server::{ServerConfig, TrackingServer};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("store");
    let config = ServerConfig { addr: "127.0.0.1:0".into(), ..ServerConfig::default() };
    let server = TrackingServer::start(store, config).expect("server");
    let client = Client::new(&server.url()).with_spool(dir.path().join("spool"));
    let mut run = client.run_builder("bench").capture_environment(false).start().expect("run");
    throughput_and_latency(
        c,
        "track/remote",
        "200k points, 10 keys, then flush (on the server's disk)",
        200_000,
        &mut run,
    );
    assert!(!run.is_spooling(), "the benchmark must measure the server, not the spool");
    run.finish().expect("finish");
    server.shutdown().expect("shutdown");
}

/// Writes `runs` runs × 10 metrics × `steps` steps with 4 model families, then compacts.
fn generate(root: &Path, runs: usize, steps: u64) -> Store {
    let store = Store::open(root).expect("store");
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                for r in (t..runs).step_by(threads) {
                    let mut run = store.run_builder("bench").capture_environment(false).start().expect("run");
                    run.log_param("model", MODELS[r % MODELS.len()]).expect("param");
                    run.log_param("lr", 10f64.powi(-((r % 5) as i32) - 1)).expect("param");
                    run.log_param("batch_size", 32 << (r % 3)).expect("param");
                    // Distinct per run (7919 is prime), so each model has one best run.
                    let quality = ((r * 7919) % runs) as f64 / runs as f64;
                    for step in 0..steps {
                        let progress = (step + 1) as f64 / steps as f64;
                        for (k, key) in METRICS.iter().enumerate() {
                            let value = match *key {
                                "val_accuracy" => 0.5 + 0.45 * quality * progress,
                                _ => progress * (k + 1) as f64,
                            };
                            run.log_metric(key, step, value).expect("log");
                        }
                    }
                    run.finish().expect("finish");
                }
            });
        }
    });
    store
}

const BEST_PER_MODEL: &str = "
    WITH acc AS (SELECT run_id, value FROM latest_metrics WHERE key = 'val_accuracy'),
         m AS (SELECT run_id, value AS model FROM params WHERE key = 'model'),
         j AS (SELECT m.model, acc.run_id, acc.value FROM acc JOIN m ON acc.run_id = m.run_id),
         best AS (SELECT model, MAX(value) AS best FROM j GROUP BY model)
    SELECT j.model, j.run_id, j.value FROM j JOIN best ON j.model = best.model AND j.value = best.best
    ORDER BY j.model";

fn query(c: &mut Criterion) {
    let runs: usize = std::env::var("KILN_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10_000);
    let root = bench_dir().join(format!("store-{runs}x10x1000"));
    let ready = root.join("ready");
    let store = if ready.exists() {
        Store::open(&root).expect("store")
    } else {
        let _ = std::fs::remove_dir_all(&root);
        let t = Instant::now();
        let store = generate(&root, runs, 1000);
        let generated = t.elapsed();
        let report = store.compact().expect("compact");
        println!(
            "generated {runs} runs x 10 metrics x 1000 steps in {generated:.1?}; compacted {} points in {:.1}s \
             ({:.2} M points/s, {} batches)",
            report.points,
            report.seconds,
            report.points as f64 / report.seconds / 1e6,
            report.batches.len()
        );
        std::fs::write(&ready, b"").expect("marker");
        store
    };
    let best = store.sql(BEST_PER_MODEL).expect("query");
    assert_eq!(best.height(), MODELS.len(), "{best}");
    let mut group = c.benchmark_group("track/sql");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function(format!("best run per model by final val_accuracy, {runs} runs compacted"), |b| {
        b.iter(|| store.sql(black_box(BEST_PER_MODEL)).expect("query"))
    });
    group.finish();
}

fn compaction(c: &mut Criterion) {
    let template = bench_dir().join("compact-template-200x10x1000");
    if !template.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&template);
        generate(&template, 200, 1000);
        std::fs::write(template.join("ready"), b"").expect("marker");
    }
    let mut group = c.benchmark_group("track/compact");
    group.sample_size(10).throughput(Throughput::Elements(200 * 10 * 1000));
    group.bench_function("200 runs x 10 metrics x 1000 steps", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
                copy_dir(&template, dir.path());
                dir
            },
            |dir| {
                let report = Store::open(dir.path()).expect("store").compact().expect("compact");
                assert_eq!(report.points, 2_000_000);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

criterion_group!(benches, logging, remote, compaction, query);
criterion_main!(benches);
