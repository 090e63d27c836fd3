//! kiln-train tune benchmarks: the latency of a TPE trial's `ask()` plus its suggestions
//! (2 floats, one of them log-scaled, and a categorical) with 100, 1,000 and 10,000 finished
//! trials; replaying a 10,000-trial journal; and a trial through that journal.
//!
//! `cargo bench --workspace --bench tune`
//!
//! The histories are made like TPE's own: a third of the trials spread uniformly, the rest
//! around the optimum. Each measured trial is failed afterwards, so the finished history
//! keeps its size (failed trials are invisible to TPE) while the good/bad split is still
//! recomputed for every trial, as it is after each completed trial in a real search.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::OnceLock;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kiln_data::SplitMix64;
use kiln_train::tune::{Distribution, NewTrial, Outcome, ParamValue, SamplerConfig, Study, StudyConfig, Trial};
use serde_json::json;

const CHOICES: [&str; 3] = ["sgd", "adam", "adamw"];

fn finished_trial(rng: &mut SplitMix64) -> NewTrial {
    let concentrated = rng.below(3) != 0;
    let near = |rng: &mut SplitMix64, centre: f64, spread: f64, low: f64, high: f64| {
        if concentrated {
            (centre + spread * (rng.next_f64() - 0.5)).clamp(low, high)
        } else {
            low + (high - low) * rng.next_f64()
        }
    };
    let x = near(rng, 1.3, 1.0, -5.0, 5.0);
    let log_lr = near(rng, -3.0, 1.0, -5.0, -1.0);
    let opt = if concentrated { 1 } else { rng.below(3) as usize };
    let value = (x - 1.3).powi(2) + (log_lr + 3.0).powi(2) + if opt == 1 { 0.0 } else { 0.5 } + 0.01 * rng.next_f64();
    let params = BTreeMap::from([
        ("x".to_string(), ParamValue { distribution: Distribution::float(-5.0, 5.0), value: json!(x) }),
        (
            "lr".to_string(),
            ParamValue { distribution: Distribution::log_float(1e-5, 1e-1), value: json!(10f64.powf(log_lr)) },
        ),
        (
            "opt".to_string(),
            ParamValue { distribution: Distribution::categorical(CHOICES), value: json!(CHOICES[opt]) },
        ),
    ]);
    NewTrial { params, intermediate_values: BTreeMap::new(), outcome: Outcome::Complete(value) }
}

fn fill(study: &Study, n: usize) {
    let mut rng = SplitMix64::new(1);
    for _ in 0..n {
        study.add_trial(&finished_trial(&mut rng)).expect("add trial");
    }
}

fn suggest(study: &Study) -> Trial {
    let mut t = study.ask().expect("ask");
    black_box(t.suggest_float("x", -5.0, 5.0).expect("x"));
    black_box(t.suggest_log_float("lr", 1e-5, 1e-1).expect("lr"));
    black_box(t.suggest_categorical("opt", &CHOICES).expect("opt"));
    t
}

fn config() -> StudyConfig {
    StudyConfig::new("bench").sampler(SamplerConfig::tpe(0))
}

fn tpe_ask(c: &mut Criterion) {
    let mut group = c.benchmark_group("tune/tpe ask + 3 suggestions");
    for n in [100, 1_000, 10_000] {
        let study = Study::in_memory(config()).expect("study");
        fill(&study, n);
        group.bench_with_input(BenchmarkId::new("in memory", n), &n, |b, _| {
            b.iter(|| suggest(&study).fail("bench").expect("tell"))
        });
    }
    group.finish();
}

fn journal(c: &mut Criterion) {
    // Built on first use, so that filtering these benchmarks out skips the setup: 10,000
    // trials run through the API (trial, 3 params, report, finish: 60,000 locked, fsynced
    // appends, a minute or so).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.jsonl");
    let study: OnceLock<Study> = OnceLock::new();
    let study = || {
        study.get_or_init(|| {
            let study = Study::create(&path, config()).expect("study");
            for _ in 0..10_000 {
                let mut t = suggest(&study);
                let x = t.params()["x"].as_f64().expect("x");
                let lr = t.params()["lr"].as_f64().expect("lr");
                let opt = if t.params()["opt"] == json!("adam") { 0.0 } else { 0.5 };
                let value = (x - 1.3).powi(2) + (lr.log10() + 3.0).powi(2) + opt;
                t.report(0, value).expect("report");
                t.complete(value).expect("tell");
            }
            study
        })
    };
    let mut group = c.benchmark_group("tune/journal");
    group.sample_size(20);
    group.bench_function("open and replay a 10,000-trial journal (60,000 lines)", |b| {
        study();
        b.iter(|| black_box(Study::open(&path).expect("open")))
    });
    group.bench_function("ask + 3 suggestions + tell, 10,000 trials (5 locked, fsynced appends)", |b| {
        let study = study();
        b.iter(|| suggest(study).fail("bench").expect("tell"))
    });
    group.finish();
}

criterion_group!(benches, tpe_ask, journal);
criterion_main!(benches);
