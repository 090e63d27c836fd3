//! Run with: cargo run --release --example serve_canary
//!
//! Staged deployment with production feedback. Three versions of one model go to the
//! registry: v1 (production), v2 (trained on shuffled labels: bad) and v3 (trained longer).
//! The server sends 30 % of traffic to v2 as a canary; simulated users send the true labels
//! back, and the canary's online accuracy falls below production's, so it is rolled back
//! automatically. v3 then goes in as a canary through the admin API, holds up, and is
//! promoted: the registry's `production` alias moves to it. Finally the labeled production
//! traffic is exported as a data set, with its digest, for the next retraining.
//!
//! Environment: `KILN_STORE` (default: a fresh temporary directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln::data::polars::prelude::DataFrame;
use kiln::data::{
    ColumnSpec, DatasetProfile, LabelEncoder, ProfileOptions, Schema, StandardScaler, SyntheticSpec,
    synthetic_classification,
};
use kiln::serve::{
    CanaryPolicy, Deployment, LoadedModel, ServeOptions, ServerHandle, SimulateSpec, export_labeled, simulate,
};
use kiln::track::{RegisterOptions, Store};
use kiln::train::{DeviceSpec, EvalReport, Examples, ModelConfig, ModelPackage, PackageSpec, TrainConfig, train};
use ndarray::Array2;
use serde_json::json;

const MODEL: &str = "demo-clf";
const FEATURES: usize = 6;

fn main() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let store_dir = std::env::var_os("KILN_STORE").map_or_else(|| temp.path().join("store"), PathBuf::from);
    let store = Store::open(&store_dir)?;
    let features: Vec<String> = (0..FEATURES).map(|j| format!("num_{j}")).collect();
    let population = |rows, sample| SyntheticSpec {
        rows,
        numeric: FEATURES,
        categorical: 0,
        classes: 3,
        separation: 1.5,
        seed: 11,
        sample,
        ..SyntheticSpec::default()
    };
    let training = synthetic_classification(&population(3000, 0))?;
    let holdout = synthetic_classification(&population(1000, 1))?;

    // Three versions: v1 production, v2 bad, v3 better.
    let registry = store.registry();
    for (epochs, shuffled) in [(2, false), (2, true), (12, false)] {
        let dir = package(temp.path(), &training, &holdout, &features, epochs, shuffled)?;
        let v = registry.register(MODEL, &dir, RegisterOptions::default())?;
        println!(
            "registered {MODEL} v{} ({epochs} epochs{})",
            v.version,
            if shuffled { ", shuffled labels" } else { "" }
        );
    }
    registry.set_alias(MODEL, "production", 1)?;

    // v1 answers 70 %, v2 30 %; the canary is judged once each side has 40 labels.
    let policy = CanaryPolicy { min_labeled: 40, max_accuracy_drop: 0.05, ..CanaryPolicy::default() };
    let deployment = Deployment::new(LoadedModel::from_registry(&store, MODEL, "production")?)
        .with_canary(LoadedModel::from_registry(&store, MODEL, "2")?, 30.0)
        .with_policy(policy);
    let options =
        ServeOptions { store: Some(store.clone()), admin_token: Some("demo-token".into()), ..Default::default() };
    let server = ServerHandle::start_with("127.0.0.1:0", vec![deployment], options)?;
    println!("serving on {}", server.url());

    let traffic = synthetic_classification(&population(800, 2))?;
    let mut spec = SimulateSpec::new(&server.url(), MODEL, features.clone());
    spec.label_column = Some("label".into());
    spec.rate = 2000.0;
    let report = simulate(&traffic, &spec)?;
    println!(
        "traffic 1: {} requests, answers by version {:?}, {} labels joined",
        report.sent, report.versions, report.feedback_joined
    );
    let status = server.control().status(MODEL)?;
    match status.events.iter().find(|e| e.event == "auto_rollback") {
        Some(e) => println!("canary v{} rolled back: {}", e.version, e.reason.as_deref().unwrap_or("")),
        None => bail!("the shuffled-label canary was not rolled back: {status:?}"),
    }

    // v3 through the admin API, as an operator would.
    let admin: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("{}/admin/models/{MODEL}", server.url());
    let mut resp = admin
        .post(&format!("{url}/canary"))
        .header("authorization", "Bearer demo-token")
        .send_json(json!({"version": "3", "percent": 50}))?;
    if resp.status() != 200 {
        bail!("POST {url}/canary: {}", resp.body_mut().read_to_string()?);
    }
    spec.id_prefix = "traffic2".into();
    let report = simulate(&synthetic_classification(&population(800, 3))?, &spec)?;
    println!("traffic 2: answers by version {:?}", report.versions);
    let status = server.control().status(MODEL)?;
    for (version, w) in &status.windows {
        println!(
            "  v{version}: {} requests, {} labels, online accuracy {:.3}",
            w.requests,
            w.labeled,
            w.accuracy.unwrap_or(f64::NAN)
        );
    }
    if status.canary.is_none() {
        bail!("v3 was rolled back: {:?}", status.events.last());
    }
    let mut resp = admin.post(&format!("{url}/promote")).header("authorization", "Bearer demo-token").send_empty()?;
    let promoted: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    println!(
        "promoted: primary v{}, previous v{}",
        promoted["primary"]["version"].as_str().unwrap_or("?"),
        promoted["previous"]["version"].as_str().unwrap_or("?")
    );
    println!("registry aliases: {:?}", registry.aliases(MODEL)?);

    server.control().flush_logs();
    let monitor = server.control().monitor(MODEL)?;
    println!(
        "monitor: {} rows in the window, drift detected: {}, online accuracy {:?}",
        monitor.window_rows, monitor.drift_detected, monitor.online_accuracy
    );
    server.shutdown()?;

    let by_version = store.sql(
        "SELECT version, count(*) AS labels, avg(CAST(correct AS DOUBLE)) AS accuracy
         FROM feedback GROUP BY version ORDER BY version",
    )?;
    println!("feedback in the store:\n{by_version}");
    let out = temp.path().join("labeled.parquet");
    let export = export_labeled(&store, MODEL, "label", &out)?;
    println!("labeled production data: {} rows, digest {}", export.rows, export.digest);
    Ok(())
}

/// Trains, evaluates on `holdout` and packages one version; `shuffled` trains on labels
/// shuffled across rows (a broken pipeline).
fn package(
    dir: &Path,
    training: &DataFrame,
    holdout: &DataFrame,
    features: &[String],
    epochs: usize,
    shuffled: bool,
) -> Result<PathBuf> {
    let matrix = |frame: &DataFrame| -> Result<Array2<f64>> {
        let mut x = Array2::zeros((frame.height(), features.len()));
        for (j, f) in features.iter().enumerate() {
            for (i, v) in frame.column(f)?.f64()?.iter().enumerate() {
                x[[i, j]] = v.context("a missing value")?;
            }
        }
        Ok(x)
    };
    let labels = LabelEncoder::from_classes((0..3).map(|c| format!("c{c}")).collect());
    let classes = |frame: &DataFrame| -> Result<Vec<usize>> {
        let column = frame.column("label")?.str()?.iter().flatten().map(String::from).collect::<Vec<_>>();
        Ok(labels.encode(&column)?)
    };
    let raw = matrix(training)?;
    let scaler = StandardScaler::fit(raw.view(), features)?;
    let mut x = raw;
    scaler.transform(&mut x)?;
    let mut y = classes(training)?;
    if shuffled {
        let third = y.len() / 3;
        y.rotate_left(third);
        y.reverse();
    }
    let config = TrainConfig { epochs, device: DeviceSpec::Cpu, seed: 5, ..TrainConfig::default() };
    let trained = train(
        &config,
        &ModelConfig::mlp(features.len(), &[32], 3),
        &Examples::new(x.mapv(|v| v as f32), y)?,
        None,
        None,
        &mut (),
    )?;
    let mut test = matrix(holdout)?;
    scaler.transform(&mut test)?;
    let probabilities = trained.classifier()?.predict_proba(test.mapv(|v| v as f32).view())?.mapv(f64::from);
    let evaluation = EvalReport::compute(&classes(holdout)?, probabilities.view(), &labels.classes)?;
    let spec = PackageSpec {
        name: MODEL.into(),
        train_config: config,
        features: features.to_vec(),
        input_schema: Schema::new(features.iter().map(|f| ColumnSpec::number(f.as_str())).collect()),
        scaler: Some(scaler),
        pipeline: None,
        labels,
        label_column: "label".into(),
        metrics: BTreeMap::from([("test_accuracy".into(), evaluation.classification.accuracy)]),
        lineage: Default::default(),
    };
    println!(
        "  {epochs} epochs{}: holdout accuracy {:.3}",
        if shuffled { " (shuffled)" } else { "" },
        evaluation.classification.accuracy
    );
    let profile = DatasetProfile::of(&training.select(features.iter().cloned())?, &ProfileOptions::default())?;
    let package = ModelPackage::new(&trained, spec)?.with_profile(profile).with_eval(evaluation);
    let out = dir.join(format!("package-{epochs}-{shuffled}"));
    package.save(&out)?;
    Ok(out)
}
