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
//! - `compare gen-tabular PATH ROWS`: writes the preprocessing/validation input, a Parquet file
//!   of ROWS × 20 columns (16 numeric, 4 categorical with 6 levels) plus `label`, with nulls and
//!   out-of-range values injected at known places.
//! - `compare preprocess PATH`: stratified 70/15/15 split, then mean-impute + standard-scale the
//!   numeric columns and most-frequent-impute + one-hot the categorical ones, fitted on the
//!   training rows, and every row transformed.
//! - `compare validate PATH`: 40 checks (range and not-null on the 16 numeric columns, allowed
//!   set and length on the 4 categorical ones), every failure counted.
//! - `compare make-runs DIR RUNS.jsonl`: a store in DIR holding one finished run per line of
//!   RUNS.jsonl (name, model, lr, batch, val_loss curve), then compacted. Not timed.
//! - `compare query DIR MODELS`: the best run (lowest final `val_loss`) of every model, by SQL.
//! - `compare train mlp256|mlp512|cnn DATA_DIR EPOCHS`: trains with kiln-train on CPU and
//!   reports samples/s; DATA_DIR holds `x.f32`/`y.u8` (and `test-*`) written by the harness.
//! - `compare serve-package DIGITS_CSV DIR`: trains the digits MLP (64-128-64-10, with its scaler) into a
//!   model package for the serving case.
//! - `compare serve DIR URL_FILE`: serves that package on 127.0.0.1 and writes its infer URL to
//!   URL_FILE; stops when stdin closes.
//! - `compare load URL BODIES CLIENTS REQUESTS`: kiln's closed-loop load generator, one body
//!   per line of BODIES, used in turn.

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
        ["gen-tabular", path, rows] => gen_tabular(path, rows.parse().context("ROWS")?),
        ["preprocess", path] => preprocess(path),
        ["validate", path] => validate(path),
        ["make-runs", dir, runs] => make_runs(dir, runs),
        ["query", dir] => query(dir),
        ["train", kind, data, epochs] => train(kind, data, epochs.parse().context("EPOCHS")?),
        ["serve-package", digits, dir] => serve_package(digits, dir),
        ["serve", dir, url_file] => serve(dir, url_file),
        ["load", url, bodies, clients, requests] => {
            load(url, bodies, clients.parse().context("CLIENTS")?, requests.parse().context("REQUESTS")?)
        }
        _ => bail!(
            "usage: compare hash DIR | tpe HISTORY.jsonl ASKS | track DIR POINTS batch|call | gen-tabular PATH ROWS \
             | preprocess PATH | validate PATH | make-runs DIR RUNS.jsonl | query DIR \
             | train mlp256|mlp512|cnn DATA_DIR EPOCHS | serve-package DIGITS_CSV DIR | serve DIR URL_FILE \
             | load URL BODIES CLIENTS REQUESTS"
        ),
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

const NUMERIC: usize = 16;
const CATEGORICAL: usize = 4;
const LEVELS: usize = 6;

/// Every 997th row of `num_0..num_7` is null, every 1009th of `num_8..` is 1,000 (out of the
/// range [-50, 50]), every 1013th of each categorical is null. The counts are printed so the
/// harness can tell both sides found them all.
fn gen_tabular(path: &str, rows: usize) -> Result<()> {
    use kiln::data::polars::prelude::Column;
    let spec = kiln::data::SyntheticSpec {
        rows,
        numeric: NUMERIC,
        categorical: CATEGORICAL,
        levels: LEVELS,
        classes: 10,
        ..kiln::data::SyntheticSpec::default()
    };
    let mut frame = kiln::data::synthetic_classification(&spec)?;
    let (mut nulls, mut out_of_range) = (0usize, 0usize);
    for j in 0..NUMERIC {
        let name = format!("num_{j}");
        let ca = frame.column(&name)?.f64()?;
        let values: Vec<Option<f64>> = (0..ca.len()).map(|i| ca.get(i)).collect();
        let values: Vec<Option<f64>> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                if j < 8 && i % 997 == 3 {
                    nulls += 1;
                    None
                } else if j >= 8 && i % 1009 == 5 {
                    out_of_range += 1;
                    Some(1000.0)
                } else {
                    v
                }
            })
            .collect();
        frame.replace(&name, Column::new(name.as_str().into(), values))?;
    }
    for j in 0..CATEGORICAL {
        let name = format!("cat_{j}");
        let ca = frame.column(&name)?.str()?;
        let values: Vec<Option<String>> = (0..ca.len()).map(|i| ca.get(i).map(str::to_string)).collect();
        let values: Vec<Option<String>> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                if i % 1013 == 7 {
                    nulls += 1;
                    None
                } else {
                    v
                }
            })
            .collect();
        frame.replace(&name, Column::new(name.as_str().into(), values))?;
    }
    kiln::data::write_parquet(&frame, std::path::Path::new(path))?;
    println!("{}", json!({"rows": rows, "nulls": nulls, "out_of_range": out_of_range}));
    Ok(())
}

fn load_tabular(path: &str) -> Result<kiln::data::Dataset> {
    let frame = kiln::data::scan(path, &kiln::data::ScanOptions::default())?.collect()?;
    Ok(kiln::data::Dataset::from_frame(frame, path)?)
}

fn preprocess(path: &str) -> Result<()> {
    use kiln::data::pipeline::{Columns, HandleUnknown, ImputeStrategy, Pipeline, Step, Transform};
    let data = load_tabular(path)?;
    let start = Instant::now();
    let labels = data.to_strings("label")?;
    let split = kiln::data::stratified_split(&labels, kiln::data::SplitFractions::default(), 42)?;
    let pipeline = Pipeline::new()
        .exclude("label")
        .step(Step::new("numbers", Columns::Numeric).impute(ImputeStrategy::Mean, false).then(Transform::Standard))
        .step(
            Step::new("labels", Columns::Categorical)
                .impute(ImputeStrategy::MostFrequent, false)
                .then(Transform::OneHot { handle_unknown: HandleUnknown::Ignore, min_frequency: None }),
        );
    let fitted = pipeline.fit(&kiln::data::TrainSplit::of_split(&data, &split)?)?;
    let x = fitted.transform(data.frame(), path)?;
    let seconds = start.elapsed().as_secs_f64();
    let one_hot: f64 = x.slice(ndarray::s![.., NUMERIC..]).sum();
    let non_finite = x.iter().filter(|v| !v.is_finite()).count();
    println!(
        "{}",
        json!({"seconds": seconds, "check": {
            "rows": x.nrows(), "width": x.ncols(), "one_hot_sum": one_hot.round() as u64, "non_finite": non_finite,
            "train_per_mille": (1000.0 * split.train.len() as f64 / x.nrows() as f64).round() as u64,
        }})
    );
    Ok(())
}

fn validate(path: &str) -> Result<()> {
    use kiln::data::{ColumnSpec, Schema};
    let data = load_tabular(path)?;
    let mut columns: Vec<ColumnSpec> =
        (0..NUMERIC).map(|j| ColumnSpec::number(format!("num_{j}")).range(-50.0, 50.0)).collect();
    columns.extend((0..CATEGORICAL).map(|j| {
        ColumnSpec::category(format!("cat_{j}"), (0..LEVELS).map(|l| format!("l{l}"))).length(Some(2), Some(2))
    }));
    columns.push(ColumnSpec::category("label", (0..10).map(|c| format!("c{c}"))));
    let schema = Schema::new(columns);
    let start = Instant::now();
    let report = schema.check(&data)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut by_check: BTreeMap<String, usize> = BTreeMap::new();
    for f in &report.failures {
        *by_check.entry(f.check.clone()).or_default() += 1;
    }
    println!(
        "{}",
        json!({"seconds": seconds, "check": {"rows": report.rows, "failures": report.total, "bad_rows": report.bad_rows.len(), "by_check": by_check}})
    );
    Ok(())
}

fn make_runs(dir: &str, runs: &str) -> Result<()> {
    let text = std::fs::read_to_string(runs).with_context(|| runs.to_string())?;
    let store = kiln::track::Store::open(dir)?;
    let lines: Vec<(usize, &str)> = text.lines().enumerate().collect();
    // Two threads, as a sweep's workers would; each run is a real run with its own writer.
    std::thread::scope(|scope| {
        let workers: Vec<_> = lines
            .chunks(lines.len().div_ceil(2).max(1))
            .map(|chunk| {
                let store = &store;
                scope.spawn(move || -> Result<()> {
                    for &(i, line) in chunk {
                        let r: serde_json::Value =
                            serde_json::from_str(line).with_context(|| format!("{runs}:{}", i + 1))?;
                        let field = |k: &str| r[k].as_str().with_context(|| format!("{runs}:{}: field {k}", i + 1));
                        let mut run =
                            store.run_builder("sweep").name(field("name")?).capture_environment(false).start()?;
                        run.log_param("model", field("model")?)?;
                        run.log_param("lr", r["lr"].as_f64().context("lr")?)?;
                        run.log_param("batch", r["batch"].as_u64().context("batch")?)?;
                        for (step, v) in r["val_loss"].as_array().context("val_loss")?.iter().enumerate() {
                            run.log_metric("val_loss", step as u64, v.as_f64().context("val_loss value")?)?;
                        }
                        run.finish()?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("a run writer panicked"))?)
    })?;
    store.compact()?;
    Ok(())
}

/// The lowest final `val_loss` of each model, with its run: one SQL query over the compacted
/// store (the `latest_metrics` table holds each run's value at its highest step).
fn query(dir: &str) -> Result<()> {
    const BEST: &str = "
        WITH loss AS (SELECT run_id, value FROM latest_metrics WHERE key = 'val_loss'),
             m AS (SELECT run_id, value AS model FROM params WHERE key = 'model'),
             r AS (SELECT run_id, run_name FROM runs WHERE experiment = 'sweep'),
             j AS (SELECT m.model, r.run_name, loss.value FROM loss
                   JOIN m ON loss.run_id = m.run_id JOIN r ON loss.run_id = r.run_id),
             best AS (SELECT model, MIN(value) AS best FROM j GROUP BY model)
        SELECT j.model, j.run_name, j.value FROM j JOIN best ON j.model = best.model AND j.value = best.best
        ORDER BY j.model";
    let store = kiln::track::Store::open(dir)?;
    let start = Instant::now();
    let best = store.sql(BEST)?;
    let seconds = start.elapsed().as_secs_f64();
    let (models, names, values) =
        (best.column("model")?.str()?, best.column("run_name")?.str()?, best.column("value")?.f64()?);
    let answer: Vec<serde_json::Value> = (0..best.height())
        .map(|i| json!([models.get(i), names.get(i), values.get(i).map(|v| format!("{v:.9}"))]))
        .collect();
    println!("{}", json!({"seconds": seconds, "check": {"best": answer}}));
    Ok(())
}

fn read_examples(dir: &std::path::Path, prefix: &str, features: usize) -> Result<kiln::train::Examples> {
    let x = std::fs::read(dir.join(format!("{prefix}x.f32"))).context("x.f32")?;
    let y = std::fs::read(dir.join(format!("{prefix}y.u8"))).context("y.u8")?;
    let values: Vec<f32> = x.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if values.len() != y.len() * features {
        bail!("{}: {} values for {} labels of {features} features", dir.display(), values.len(), y.len());
    }
    let x = ndarray::Array2::from_shape_vec((y.len(), features), values)?;
    Ok(kiln::train::Examples::new(x, y.iter().map(|&c| c as usize).collect())?)
}

/// Trains one of the harness's three shapes with kiln-train's loop (Adam, lr 1e-3, weight
/// decay 1e-4, shuffled batches), then measures test accuracy outside the clock.
fn train(kind: &str, data: &str, epochs: usize) -> Result<()> {
    use kiln::train::{Activation, CnnConfig, CnnHead, DeviceSpec, ModelConfig, TrainConfig};
    let (model, batch) = match kind {
        "mlp256" => (ModelConfig::mlp(64, &[256, 256], 10), 64),
        "mlp512" => (ModelConfig::mlp(64, &[512, 512], 10), 256),
        "cnn" => (
            ModelConfig::Cnn(CnnConfig {
                height: 8,
                width: 8,
                channels: 1,
                classes: 10,
                filters: vec![16, 32],
                dense: vec![64],
                head: CnnHead::Flatten,
                activation: Activation::Relu,
                dropout: 0.0,
                batch_norm: false,
            }),
            64,
        ),
        _ => bail!("kind must be mlp256, mlp512 or cnn, not {kind:?}"),
    };
    let dir = std::path::Path::new(data);
    let (train_set, test_set) = (read_examples(dir, "", 64)?, read_examples(dir, "test-", 64)?);
    let config = TrainConfig {
        epochs,
        batch_size: batch,
        device: DeviceSpec::Cpu,
        log_every_steps: 0,
        ..TrainConfig::default()
    };
    let start = Instant::now();
    let trained = kiln::train::train(&config, &model, &train_set, None, None, &mut ())?;
    let seconds = start.elapsed().as_secs_f64();
    let predicted = trained.classifier()?.predict(test_set.x.view())?;
    let correct = predicted.iter().zip(&test_set.y).filter(|(p, y)| p == y).count();
    let accuracy = correct as f64 / test_set.len() as f64;
    let samples = train_set.len() * epochs;
    println!(
        "{}",
        json!({"seconds": seconds, "samples_per_s": samples as f64 / seconds, "info": {"test_accuracy": accuracy},
               "check": {"samples": samples, "parameters": model.num_params(), "learned": accuracy >= 0.8}})
    );
    Ok(())
}

fn serve_package(digits: &str, dir: &str) -> Result<()> {
    use kiln::data::{ColumnSpec, Dataset, LabelEncoder, Schema, StandardScaler};
    use kiln::train::{DeviceSpec, Examples, ModelConfig, ModelPackage, PackageSpec, TrainConfig};
    let data = Dataset::load_csv(digits)?;
    let features: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
    let raw = data.to_matrix(&features)?;
    let labels = data.to_strings("label")?;
    let encoder = LabelEncoder::fit(&labels);
    let y = encoder.encode(&labels)?;
    let scaler = StandardScaler::fit(raw.view(), &features)?;
    let mut x = raw.clone();
    scaler.transform(&mut x)?;
    let model = ModelConfig::mlp(64, &[128, 64], 10);
    let config = TrainConfig { epochs: 10, device: DeviceSpec::Cpu, ..TrainConfig::default() };
    let trained = kiln::train::train(&config, &model, &Examples::new(x.mapv(|v| v as f32), y)?, None, None, &mut ())?;
    ModelPackage::new(
        &trained,
        PackageSpec {
            name: "digits".into(),
            train_config: config,
            features: features.clone(),
            input_schema: Schema::new(features.iter().map(|f| ColumnSpec::number(f.as_str())).collect()),
            scaler: Some(scaler),
            pipeline: None,
            labels: encoder,
            label_column: "label".into(),
            metrics: BTreeMap::new(),
            lineage: Default::default(),
        },
    )?
    .save(std::path::Path::new(dir))?;
    Ok(())
}

fn serve(dir: &str, url_file: &str) -> Result<()> {
    let model = kiln::serve::LoadedModel::from_dir("digits", "1", std::path::Path::new(dir))?;
    let server = kiln::serve::ServerHandle::start("127.0.0.1:0", vec![model])?;
    std::fs::write(url_file, format!("{}/v2/models/digits/infer", server.url()))?;
    // Serve until the harness closes stdin.
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
    server.shutdown()?;
    Ok(())
}

fn load(url: &str, bodies: &str, clients: usize, requests: usize) -> Result<()> {
    let text = std::fs::read_to_string(bodies).with_context(|| bodies.to_string())?;
    let bodies: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    let spec = kiln::serve::LoadSpec {
        url: url.to_string(),
        bodies,
        mode: kiln::serve::LoadMode::Closed { concurrency: clients },
        requests,
        warmup: 200,
    };
    let r = kiln::serve::run_load(&spec)?;
    println!(
        "{}",
        json!({"seconds": r.seconds, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "throughput": r.throughput,
               "check": {"requests": r.requests, "errors": r.errors()}})
    );
    Ok(())
}
