//! Run with: cargo run --release --example quickstart
//!
//! The whole kiln pipeline on the UCI handwritten digits (data/digits.csv): validate, split,
//! preprocess, train an MLP with burn, track the run, evaluate, package and register the model,
//! serve it over KServe v2 HTTP, and query the store with SQL.
//!
//! Environment: `KILN_STORE` (default `./kiln-store`), `KILN_DEVICE` (`cpu`, `cuda:N`, `auto`;
//! default `cpu`), `KILN_EPOCHS` (default 30).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use kiln::data::{
    ColumnSpec, Dataset, DatasetProfile, LabelEncoder, ProfileOptions, Schema, SplitFractions, StandardScaler,
    TrainSplit, stratified_split,
};
use kiln::serve::{Client, LoadedModel, ServerHandle};
use kiln::track::{DatasetInput, RegisterOptions, Store};
use kiln::train::{
    Activation, EpochReport, EvalReport, Examples, InferencePrecision, Lineage, MlpConfig, ModelConfig, ModelPackage,
    PackageSpec, PromotionGate, TrainConfig, compare_precision, train,
};
use ndarray::{Array2, Axis};

const EXPERIMENT: &str = "digits";
const MODEL: &str = "digits-mlp";
const SEED: u64 = 42;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The checkout's data directory: `cargo run` sets CARGO_MANIFEST_DIR at run time, which
    // stays right when a shared target directory holds a binary built in another checkout.
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let data_path = &format!("{root}/data/digits.csv");

    // a. Load with Polars and validate: 64 pixel counts in 0..=16, a label in 0..=9.
    let data = Dataset::load_csv(data_path)?;
    let features: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
    let mut columns: Vec<ColumnSpec> = features.iter().map(|f| ColumnSpec::integer(f.as_str(), 0, 16)).collect();
    columns.push(ColumnSpec::integer("label", 0, 9));
    let schema = Schema::new(columns);
    let report = schema.validate(&data)?;
    println!(
        "loaded {} rows x {} columns from {} (blake3 {}); schema ok",
        report.rows,
        data.column_names().len(),
        data_path,
        &data.hash()[..16]
    );

    // b. Stratified 70/15/15 split with a fixed seed.
    let labels = data.to_strings("label")?;
    let split = stratified_split(&labels, SplitFractions::default(), SEED)?;
    println!(
        "split: {} train / {} validation / {} test rows (stratified, seed {SEED})",
        split.train.len(),
        split.val.len(),
        split.test.len()
    );

    // c. Fit the scaler on the training rows only, then apply it to every split.
    let raw = data.to_matrix(&features)?;
    let encoder = LabelEncoder::fit(&labels);
    let classes = encoder.encode(&labels)?;
    let scaler = StandardScaler::fit(raw.select(Axis(0), &split.train).view(), &features)?;
    let part = |rows: &[usize]| -> Result<Examples> {
        let mut x: Array2<f64> = raw.select(Axis(0), rows);
        scaler.transform(&mut x)?;
        Ok(Examples::new(x.mapv(|v| v as f32), rows.iter().map(|r| classes[*r]).collect())?)
    };
    let (train_set, val_set, test_set) = (part(&split.train)?, part(&split.val)?, part(&split.test)?);

    // d + e. Train an MLP with burn, tracking parameters, environment and per-epoch metrics.
    let store = Store::from_env()?;
    let mut run = store.start_run(EXPERIMENT)?;
    let config = TrainConfig {
        epochs: std::env::var("KILN_EPOCHS").ok().map(|e| e.parse()).transpose().context("KILN_EPOCHS")?.unwrap_or(30),
        device: std::env::var("KILN_DEVICE").unwrap_or_else(|_| "cpu".into()).parse()?,
        seed: SEED,
        ..TrainConfig::default()
    };
    let model = ModelConfig::Mlp(MlpConfig {
        inputs: features.len(),
        hidden: vec![128, 64],
        classes: encoder.len(),
        activation: Activation::Relu,
        dropout: 0.1,
        batch_norm: false,
    });
    run.log_param("split_seed", SEED)?;
    run.log_param("dataset", data_path)?;
    run.log_input(DatasetInput {
        name: "digits".into(),
        digest: data.hash().into(),
        source: data_path.into(),
        rows: Some(data.height() as u64),
        context: Some("train/validation/test".into()),
    })?;
    println!("run {} in {} (store {})", run.id(), EXPERIMENT, store.root().display());
    let trained = train(&config, &model, &train_set, Some(&val_set), Some(&mut run), &mut |e: &EpochReport| {
        println!(
            "epoch {:>3}  train loss {:.4} acc {:.4}  val loss {:.4} acc {:.4}  ({:.2}s)",
            e.epoch,
            e.train_loss,
            e.train_accuracy().unwrap_or(f64::NAN),
            e.val_loss.unwrap_or(f64::NAN),
            e.val_accuracy().unwrap_or(f64::NAN),
            e.seconds
        );
    })?;
    println!("trained on {}; kept the weights of epoch {}", trained.device, trained.best_epoch);

    // f. Evaluate on the test split from predicted probabilities: accuracy, per-class
    //    precision/recall/F1, log loss, ROC-AUC, calibration error.
    let classifier = trained.classifier()?;
    let probabilities = classifier.predict_proba(test_set.x.view())?.mapv(f64::from);
    let evaluation = EvalReport::compute(&test_set.y, probabilities.view(), &encoder.classes)?;
    let step = trained.history.len() as u64;
    for (name, value) in evaluation.metrics() {
        run.log_metric(&format!("test_{name}"), step, value)?;
    }
    print!("test set: {}", evaluation.classification);
    println!(
        "log loss {:.4}, ROC-AUC (macro, one-vs-rest) {:.4}, calibration error {:.4}",
        evaluation.log_loss,
        evaluation.roc_auc.macro_auc.unwrap_or(f64::NAN),
        evaluation.ece
    );

    // g. Package the model with its preprocessing, schema, labels, lineage, the training
    //    data's profile (the drift reference) and the evaluation; run the failure-mode checks
    //    on the packaged predictor; register it as production only if the gate passes.
    let package = ModelPackage::new(
        &trained,
        PackageSpec {
            name: MODEL.into(),
            train_config: config.clone(),
            features: features.clone(),
            input_schema: Schema::new(schema.columns[..features.len()].to_vec()),
            scaler: Some(scaler),
            pipeline: None,
            labels: encoder.clone(),
            label_column: "label".into(),
            metrics: BTreeMap::new(),
            lineage: Lineage {
                run_id: Some(run.id().into()),
                experiment: Some(EXPERIMENT.into()),
                dataset: Some(data_path.into()),
                dataset_hash: Some(data.hash().into()),
                dataset_digests: vec![data.hash().into()],
                git_commit: store.run(run.id())?.environment.and_then(|e| e.git_commit),
                split_seed: Some(SEED),
            },
        },
    )?
    .with_profile(DatasetProfile::of(TrainSplit::of_split(&data, &split)?.frame(), &ProfileOptions::default())?);
    let checks = package.clone().into_predictor()?.failure_checks(raw.select(Axis(0), &split.test).view());
    for c in &checks {
        println!("failure check {:<20} {}  ({})", c.name, if c.passed { "pass" } else { "FAIL" }, c.detail);
    }
    let evaluation = evaluation.with_checks(checks);
    run.log_artifact_bytes("eval_report.json", &serde_json::to_vec_pretty(&evaluation)?)?;
    let package = package.with_eval(evaluation);
    let package_dir = run.scratch_dir()?.join("model");
    package.save(&package_dir)?;
    run.log_artifact("model", &package_dir)?;
    // The same package with int8 weights: what it costs in accuracy and buys in speed.
    let test_rows = raw.select(Axis(0), &split.test);
    let int8 = compare_precision(&package_dir, InferencePrecision::Int8, test_rows.view(), Some(&test_set.y))?;
    println!(
        "int8 weights: test accuracy {:.4} (f32 {:.4}), same class on {:.1}% of rows, largest probability change {:.4}; \
         {} rows in {:.2} ms (f32 {:.2} ms, {:.2}x), one row in {:.0} µs (f32 {:.0} µs, {:.2}x)",
        int8.accuracy.unwrap_or(f64::NAN),
        int8.accuracy_f32.unwrap_or(f64::NAN),
        int8.agreement * 100.0,
        int8.max_probability_diff,
        int8.rows,
        int8.batch_ms,
        int8.batch_ms_f32,
        int8.batch_speedup(),
        int8.row_us,
        int8.row_us_f32,
        int8.row_speedup()
    );
    run.log_metric("test_accuracy_int8", step, int8.accuracy.unwrap_or(f64::NAN))?;
    let registry = store.registry();
    let gate = PromotionGate {
        thresholds: BTreeMap::from([("test_accuracy".into(), 0.9), ("test_checks_failed".into(), 0.0)]),
        lower_is_better: vec!["test_checks_failed".into()],
        tolerance: 0.02,
    };
    let promotion = gate.promote(
        &registry,
        MODEL,
        "production",
        &package_dir,
        RegisterOptions {
            run_id: Some(run.id().into()),
            dataset_digests: vec![data.hash().into()],
            metrics: package.manifest.metrics.clone(),
            description: Some("MLP on UCI digits, from the quickstart".into()),
            ..Default::default()
        },
    )?;
    match &promotion.version {
        Some(v) => println!("registered {MODEL} version {} as production (promotion gate passed)", v.version),
        None => println!("{MODEL} not promoted: {}", promotion.decision.reasons.join("; ")),
    }
    run.finish()?;

    // h. Serve the production model over HTTP and ask for one raw (unscaled) test row.
    let server = ServerHandle::start("127.0.0.1:0", vec![LoadedModel::from_registry(&store, MODEL, "production")?])?;
    let row = split.test[0];
    let answer = Client::new(&server.url()).infer(MODEL, &[raw.row(row).to_vec()])?;
    let label = answer.labels().into_iter().next().context("the server returned no label")?;
    println!(
        "POST {}/v2/models/{MODEL}/infer (data row {}): predicted {label}, true {}",
        server.url(),
        row + 1,
        labels[row]
    );
    server.shutdown()?;

    // i. SQL over the store: every run of the experiment with its test accuracy.
    let table = store.sql(&format!(
        "WITH acc AS (SELECT run_id, value AS test_accuracy FROM latest_metrics WHERE key = 'test_accuracy')
         SELECT r.run_id, r.status, r.start_time, acc.test_accuracy
         FROM runs r LEFT JOIN acc ON r.run_id = acc.run_id
         WHERE r.experiment = '{EXPERIMENT}' ORDER BY r.start_time"
    ))?;
    println!("{table}");
    Ok(())
}
