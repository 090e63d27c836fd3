//! Run with: cargo run --release --example serve_load
//!
//! kiln-serve's speed on this machine, with its own load generator: server overhead with a
//! trivial model, single-row throughput and latency of the digits MLP at concurrency 1, 16
//! and 64 with batching on and off, and process-free start-to-ready time. Prints a Markdown
//! table (the one in docs/benchmarks.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use kiln::data::{ColumnSpec, Dataset, LabelEncoder, Schema, StandardScaler};
use kiln::serve::{BatchConfig, Deployment, LoadMode, LoadSpec, LoadedModel, ServeOptions, ServerHandle, run_load};
use kiln::train::{DeviceSpec, Examples, ModelConfig, ModelPackage, PackageSpec, TrainConfig, train};
use ndarray::{Array2, Axis};
use serde_json::json;

fn package(
    dir: &std::path::Path,
    model: &ModelConfig,
    raw: &Array2<f64>,
    y: &[usize],
    features: &[String],
) -> Result<()> {
    let scaler = StandardScaler::fit(raw.view(), features)?;
    let mut x = raw.clone();
    scaler.transform(&mut x)?;
    let config = TrainConfig { epochs: 3, device: DeviceSpec::Cpu, ..TrainConfig::default() };
    let trained = train(&config, model, &Examples::new(x.mapv(|v| v as f32), y.to_vec())?, None, None, &mut ())?;
    let labels = LabelEncoder::from_classes((0..model.classes()).map(|c| c.to_string()).collect());
    ModelPackage::new(
        &trained,
        PackageSpec {
            name: "bench".into(),
            train_config: config,
            features: features.to_vec(),
            input_schema: Schema::new(features.iter().map(|f| ColumnSpec::number(f.as_str())).collect()),
            scaler: Some(scaler),
            pipeline: None,
            labels,
            label_column: "label".into(),
            metrics: BTreeMap::new(),
            lineage: Default::default(),
        },
    )?
    .save(dir)?;
    Ok(())
}

fn bodies(raw: &Array2<f64>) -> Vec<String> {
    raw.rows()
        .into_iter()
        .take(256)
        .map(|r| {
            json!({"inputs": [{"name": "input", "shape": [1, r.len()], "datatype": "FP64", "data": r.to_vec()}]})
                .to_string()
        })
        .collect()
}

/// Runs one closed-loop load test and prints its table row.
fn measure(
    name: &str,
    batching: &str,
    url: &str,
    bodies: Vec<String>,
    concurrency: usize,
    requests: usize,
) -> Result<()> {
    let spec = LoadSpec { url: url.to_string(), bodies, mode: LoadMode::Closed { concurrency }, requests, warmup: 200 };
    let r = run_load(&spec)?;
    println!(
        "| {name} | {batching} | {concurrency} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.0} | {} |",
        r.requests,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.max_ms,
        r.throughput,
        r.errors()
    );
    Ok(())
}

fn main() -> Result<()> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let data = Dataset::load_csv(format!("{root}/data/digits.csv"))?;
    let features: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
    let raw = data.to_matrix(&features)?;
    let labels = data.to_strings("label")?;
    let y = LabelEncoder::fit(&labels).encode(&labels)?;
    let dir = tempfile::tempdir()?;

    let trivial_dir = dir.path().join("trivial");
    let one = vec!["x".to_string()];
    let tiny = raw.select(Axis(1), &[0]);
    package(&trivial_dir, &ModelConfig::Logistic { inputs: 1, classes: 10 }, &tiny, &y, &one)?;
    let mlp_dir = dir.path().join("mlp");
    package(&mlp_dir, &ModelConfig::mlp(64, &[128, 64], 10), &raw, &y, &features)?;

    // Start to ready: load the package, bind, answer /v2/health/ready.
    let mut ready_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let server = ServerHandle::start("127.0.0.1:0", vec![LoadedModel::from_dir("m", "1", &mlp_dir)?])?;
        let url = format!("{}/v2/health/ready", server.url());
        while ureq::get(&url).call().is_err() {
            std::thread::sleep(Duration::from_micros(100));
        }
        ready_ms.push(t.elapsed().as_secs_f64() * 1e3);
        server.shutdown()?;
    }
    ready_ms.sort_by(f64::total_cmp);
    println!("start to ready (digits MLP package, in process): median {:.1} ms over 5\n", ready_ms[2]);

    println!("| model | batching | clients | requests | p50 ms | p90 ms | p99 ms | max ms | req/s | errors |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let cases: [(&str, &std::path::Path, Array2<f64>); 2] =
        [("trivial (1 feature)", &trivial_dir, tiny.clone()), ("digits MLP 64-128-64-10", &mlp_dir, raw.clone())];
    for (name, pkg, rows) in cases {
        for (label, batching) in [("on", BatchConfig::default()), ("off", BatchConfig::unbatched())] {
            let server = ServerHandle::start(
                "127.0.0.1:0",
                vec![LoadedModel::from_dir("m", "1", pkg)?.with_batching(batching)],
            )?;
            let url = format!("{}/v2/models/m/infer", server.url());
            for concurrency in [1usize, 16, 64] {
                let requests = if concurrency == 1 { 2000 } else { 6000 };
                measure(name, label, &url, bodies(&rows), concurrency, requests)?;
            }
            server.shutdown()?;
        }
    }

    // What staged deployment and logging cost: the digits MLP with every request written to
    // the prediction log in a store, then also with a 10 % canary and a shadow of the same
    // package (the shadow predicts each primary request again, on the same two cores).
    let store = kiln::track::Store::open(dir.path().join("store"))?;
    let logged = || ServeOptions { store: Some(store.clone()), ..ServeOptions::default() };
    let setups: [(&str, Deployment); 2] = [
        ("prediction log", LoadedModel::from_dir("m", "1", &mlp_dir)?.into()),
        (
            "log + 10% canary + shadow",
            Deployment::new(LoadedModel::from_dir("m", "1", &mlp_dir)?)
                .with_canary(LoadedModel::from_dir("m", "2", &mlp_dir)?, 10.0)
                .with_shadow(LoadedModel::from_dir("m", "3", &mlp_dir)?),
        ),
    ];
    for (label, deployment) in setups {
        let server = ServerHandle::start_with("127.0.0.1:0", vec![deployment], logged())?;
        let url = format!("{}/v2/models/m/infer", server.url());
        for concurrency in [1usize, 16] {
            let requests = if concurrency == 1 { 2000 } else { 6000 };
            measure(&format!("digits MLP, {label}"), "on", &url, bodies(&raw), concurrency, requests)?;
        }
        server.shutdown()?;
    }
    let logged_rows = store.sql("SELECT count(*) AS n FROM predictions")?;
    println!("\nprediction log rows written: {}", logged_rows.column("n")?.get(0)?);
    Ok(())
}
