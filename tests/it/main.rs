//! End-to-end: the quickstart example, run twice against one store, checked from outside.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

use kiln::data::{Dataset, SplitFractions, StandardScaler, stratified_split};
use kiln::serve::{Client, LoadedModel, ServerHandle};
use kiln::track::{RunStatus, Store};
use kiln::train::ModelPackage;
use ndarray::Axis;

/// The quickstart binary that `cargo test` built next to this test binary.
fn quickstart_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("examples").join(format!("quickstart{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} not found: build it with `cargo test` (which builds examples)", bin.display());
    bin
}

fn run_quickstart(store: &std::path::Path) -> String {
    let out = Command::new(quickstart_binary())
        .env("KILN_STORE", store)
        .env("KILN_EPOCHS", "12")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "quickstart failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn two_quickstart_runs_leave_two_runs_and_two_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let first = run_quickstart(&store_dir);
    let second = run_quickstart(&store_dir);
    assert!(first.contains("registered digits-mlp version 1 as production"), "{first}");
    assert!(second.contains("registered digits-mlp version 2 as production"), "{second}");

    let store = Store::open(&store_dir).unwrap();
    let runs = store.runs(Some("digits")).unwrap();
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(run.status(), RunStatus::Completed);
        assert!(run.final_metrics["test_accuracy"] >= 0.93, "test accuracy {}", run.final_metrics["test_accuracy"]);
        assert!(run.final_metrics.contains_key("val_loss") && run.final_metrics.contains_key("test_macro_f1"));
        assert_eq!(run.params["train.epochs"], serde_json::json!(12));
        assert_eq!(run.params["model.hidden"], serde_json::json!([128, 64]));
        let env = run.environment.as_ref().unwrap();
        assert!(env.cpu_count >= 1 && !env.hostname.is_empty());
        assert_eq!(store.metrics(&run.meta.run_id).unwrap().iter().filter(|p| p.key == "train_loss").count(), 12);
    }
    let registry = store.registry();
    let versions = registry.versions("digits-mlp").unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(registry.resolve("digits-mlp", "production").unwrap().version, 2);
    assert_eq!(versions[1].lineage.run_id.as_deref(), Some(runs[1].meta.run_id.as_str()));

    // The SQL table printed at the end lists both runs.
    for run in &runs {
        assert!(second.contains(&run.meta.run_id[..12]), "run {} missing from\n{second}", run.meta.run_id);
    }
    let table = store.sql("SELECT run_id FROM latest_metrics WHERE key = 'test_accuracy'").unwrap();
    assert_eq!(table.height(), 2);

    check_scaler_was_fitted_on_train_rows_only(&versions[1].package_dir);
    check_served_equals_in_process(&store);
}

/// The packaged scaler equals one fitted on the training rows alone, so the test rows (which
/// differ from the training rows) did not influence it.
fn check_scaler_was_fitted_on_train_rows_only(package: &std::path::Path) {
    let predictor = ModelPackage::load(package).unwrap();
    let manifest = predictor.manifest();
    let packaged = manifest.scaler.clone().unwrap();
    let data = Dataset::load_csv(manifest.lineage.dataset.as_ref().unwrap()).unwrap();
    assert_eq!(Some(data.hash()), manifest.lineage.dataset_hash.as_deref());
    let labels = data.to_strings("label").unwrap();
    let split = stratified_split(&labels, SplitFractions::default(), manifest.lineage.split_seed.unwrap()).unwrap();
    let raw = data.to_matrix(&manifest.features).unwrap();
    let train_only = StandardScaler::fit(raw.select(Axis(0), &split.train).view(), &manifest.features).unwrap();
    assert_eq!(packaged, train_only);
    assert_eq!(packaged.fitted_rows, split.train.len());

    // Changing the test rows leaves the train-only fit unchanged, but would move a fit on all rows.
    let mut tampered = raw.clone();
    for r in &split.test {
        tampered.row_mut(*r).mapv_inplace(|v| 16.0 - v);
    }
    let refit = StandardScaler::fit(tampered.select(Axis(0), &split.train).view(), &manifest.features).unwrap();
    assert_eq!(refit, train_only);
    let all_rows = StandardScaler::fit(tampered.view(), &manifest.features).unwrap();
    assert_ne!(all_rows.mean, train_only.mean);
}

/// The production model answers over HTTP exactly as the package does in process.
fn check_served_equals_in_process(store: &Store) {
    let version = store.registry().resolve("digits-mlp", "production").unwrap();
    let predictor = ModelPackage::load(&version.package_dir).unwrap();
    let data = Dataset::load_csv(predictor.manifest().lineage.dataset.as_ref().unwrap()).unwrap();
    let raw = data.to_matrix(&predictor.manifest().features).unwrap();
    let rows: Vec<usize> = (0..raw.nrows()).step_by(37).collect();
    let sample = raw.select(Axis(0), &rows);
    let local = predictor.predict(sample.view()).unwrap();

    let server = ServerHandle::start(
        "127.0.0.1:0",
        vec![LoadedModel::from_registry(store, "digits-mlp", "production").unwrap()],
    )
    .unwrap();
    let as_rows: Vec<Vec<f64>> = sample.rows().into_iter().map(|r| r.to_vec()).collect();
    let served = Client::new(&server.url()).infer("digits-mlp", &as_rows).unwrap();
    server.shutdown().unwrap();
    assert_eq!(served.model_version, "2");
    assert_eq!(served.labels(), local.iter().map(|p| p.label.clone()).collect::<Vec<_>>());
    let probs = served.probabilities();
    assert_eq!(probs.len(), local.len());
    for (s, l) in probs.iter().zip(&local) {
        for (a, b) in s.iter().zip(&l.probabilities) {
            // JSON carries f32 as its shortest decimal; allow for rounding through f64.
            assert!((a - b).abs() <= f32::EPSILON * b.abs().max(1.0), "{s:?} vs {:?}", l.probabilities);
        }
    }
}
