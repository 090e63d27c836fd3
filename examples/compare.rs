//! kiln's side of the side-by-side comparison harness (`benches/compare/run.sh`). Not meant to
//! be run by hand; each case prints one JSON line: the seconds its work took, and what it did,
//! so the harness can check both sides did the same work.
//!
//! - `compare hash DIR`: content digest of every file under DIR (kiln-data's BLAKE3, files in
//!   parallel), against DVC's MD5 per file.
//! - `compare track DIR POINTS batch|call`: a new store in DIR, one run, POINTS metric values
//!   over 10 keys, logged ten keys per call (`log_metrics`) or one per call (`log_metric`),
//!   until they are flushed to disk; then read back to count them.
//! - `compare tpe HISTORY.jsonl ASKS`: an in-memory study is filled with HISTORY's finished
//!   trials (x, lr, opt, value), then ASKS times a TPE `ask()` plus three suggestions; the
//!   measured trials are failed afterwards so the history keeps its size.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kiln::train::tune::{Distribution, NewTrial, Outcome, ParamValue, SamplerConfig, Study, StudyConfig};
use serde_json::json;

const CHOICES: [&str; 3] = ["sgd", "adam", "adamw"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["hash", dir] => hash(dir),
        ["tpe", history, asks] => tpe(history, asks.parse().context("ASKS")?),
        ["track", dir, points, mode] => track(dir, points.parse().context("POINTS")?, mode),
        _ => bail!("usage: compare hash DIR | compare tpe HISTORY.jsonl ASKS | compare track DIR POINTS batch|call"),
    }
}

fn hash(dir: &str) -> Result<()> {
    let start = Instant::now();
    let digest = kiln::data::hash_path(std::path::Path::new(dir), None)?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{}", json!({"seconds": seconds, "check": {"files": digest.files, "bytes": digest.bytes}}));
    Ok(())
}

fn track(dir: &str, points: u64, mode: &str) -> Result<()> {
    const KEYS: [&str; 10] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"];
    let store = kiln::track::Store::open(dir)?;
    let mut run = store.start_run("compare")?;
    let id = run.id().to_string();
    let steps = points / KEYS.len() as u64;
    let start = Instant::now();
    match mode {
        "batch" => {
            for step in 0..steps {
                let values: Vec<(&str, f64)> = KEYS.iter().map(|k| (*k, step as f64 * 0.5)).collect();
                run.log_metrics(step, &values)?;
            }
        }
        "call" => {
            for step in 0..steps {
                for k in KEYS {
                    run.log_metric(k, step, step as f64 * 0.5)?;
                }
            }
        }
        _ => bail!("mode must be batch or call, not {mode:?}"),
    }
    run.finish()?;
    let seconds = start.elapsed().as_secs_f64();
    let stored = store.metrics(&id)?.len();
    println!("{}", json!({"seconds": seconds, "check": {"points": stored}}));
    Ok(())
}

fn tpe(history: &str, asks: usize) -> Result<()> {
    let text = std::fs::read_to_string(history).with_context(|| history.to_string())?;
    let study = Study::in_memory(StudyConfig::new("compare").sampler(SamplerConfig::tpe(0)))?;
    let mut finished = 0;
    for (i, line) in text.lines().enumerate() {
        let t: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{history}:{}", i + 1))?;
        let num = |k: &str| t[k].as_f64().with_context(|| format!("{history}:{}: field {k}", i + 1));
        let opt = t["opt"].as_str().with_context(|| format!("{history}:{}: field opt", i + 1))?;
        let params = BTreeMap::from([
            ("x".to_string(), ParamValue { distribution: Distribution::float(-5.0, 5.0), value: json!(num("x")?) }),
            (
                "lr".to_string(),
                ParamValue { distribution: Distribution::log_float(1e-5, 1e-1), value: json!(num("lr")?) },
            ),
            ("opt".to_string(), ParamValue { distribution: Distribution::categorical(CHOICES), value: json!(opt) }),
        ]);
        let trial =
            NewTrial { params, intermediate_values: BTreeMap::new(), outcome: Outcome::Complete(num("value")?) };
        study.add_trial(&trial)?;
        finished += 1;
    }
    let mut per_ask = Vec::with_capacity(asks);
    let start = Instant::now();
    for _ in 0..asks {
        let t0 = Instant::now();
        let mut t = study.ask()?;
        std::hint::black_box(t.suggest_float("x", -5.0, 5.0)?);
        std::hint::black_box(t.suggest_log_float("lr", 1e-5, 1e-1)?);
        std::hint::black_box(t.suggest_categorical("opt", &CHOICES)?);
        per_ask.push(t0.elapsed().as_secs_f64());
        t.fail("measured")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    per_ask.sort_by(f64::total_cmp);
    let median = per_ask.get(per_ask.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        json!({"seconds": seconds, "median_ask_seconds": median, "check": {"finished_trials": finished, "asks": asks}})
    );
    Ok(())
}
