//! Integration tests of kiln-train: training on real data, packages on disk.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod eval;
mod training;

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_data::{ColumnSpec, Dataset, LabelEncoder, Schema, SplitFractions, StandardScaler, stratified_split};
use kiln_train::{
    ClassificationReport, DeviceSpec, Error, Examples, Lineage, ModelConfig, ModelPackage, PackageSpec, TrainConfig,
    Trained, train,
};
use ndarray::{Array2, Axis};

struct Fixture {
    raw: Array2<f64>,
    features: Vec<String>,
    encoder: LabelEncoder,
    classes: Vec<usize>,
    test_rows: Vec<usize>,
    scaler: StandardScaler,
    trained: Trained,
    report: ClassificationReport,
    epochs_seen: usize,
}

/// Breast cancer, trained once for all tests of this binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path =
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
                .join("../../data/breast_cancer.csv");
        let data = Dataset::load_csv(path).unwrap();
        let features: Vec<String> = data.column_names().into_iter().filter(|c| c != "target").collect();
        let labels = data.to_strings("target").unwrap();
        let split = stratified_split(&labels, SplitFractions::default(), 1).unwrap();
        let raw = data.to_matrix(&features).unwrap();
        let encoder = LabelEncoder::fit(&labels);
        let classes = encoder.encode(&labels).unwrap();
        let scaler = StandardScaler::fit(raw.select(Axis(0), &split.train).view(), &features).unwrap();
        let part = |rows: &[usize]| {
            let mut x = raw.select(Axis(0), rows);
            scaler.transform(&mut x).unwrap();
            Examples::new(x.mapv(|v| v as f32), rows.iter().map(|r| classes[*r]).collect()).unwrap()
        };
        let config = TrainConfig { epochs: 15, device: DeviceSpec::Cpu, ..TrainConfig::default() };
        let model = ModelConfig::mlp(features.len(), &[32], 2);
        let mut epochs_seen = 0;
        let trained =
            train(&config, &model, &part(&split.train), Some(&part(&split.val)), None, &mut |_: &_| epochs_seen += 1)
                .unwrap();
        let test = part(&split.test);
        let predicted = trained.classifier().unwrap().predict(test.x.view()).unwrap();
        let report = ClassificationReport::compute(&test.y, &predicted, &encoder.classes).unwrap();
        Fixture { raw, features, encoder, classes, test_rows: split.test, scaler, trained, report, epochs_seen }
    })
}

fn package(f: &Fixture) -> ModelPackage {
    let schema = Schema::new(f.features.iter().map(|c| ColumnSpec::number(c.as_str()).range(0.0, 1e5)).collect());
    ModelPackage::new(
        &f.trained,
        PackageSpec {
            name: "bc".into(),
            train_config: TrainConfig::default(),
            features: f.features.clone(),
            input_schema: schema,
            scaler: Some(f.scaler.clone()),
            labels: f.encoder.clone(),
            label_column: "target".into(),
            metrics: [("test_accuracy".to_string(), f.report.accuracy)].into(),
            lineage: Lineage { dataset_hash: Some("h".into()), ..Default::default() },
        },
    )
    .unwrap()
}

#[test]
fn an_mlp_learns_breast_cancer() {
    let f = fixture();
    assert_eq!(f.epochs_seen, 15);
    assert_eq!(f.trained.history.len(), 15);
    let first = &f.trained.history[0];
    let last = f.trained.history.last().unwrap();
    assert!(last.train_loss < first.train_loss, "{first:?} -> {last:?}");
    assert!(f.report.accuracy >= 0.9, "test accuracy {}", f.report.accuracy);
    assert!(f.report.macro_f1 >= 0.88, "macro-F1 {}", f.report.macro_f1);
}

#[test]
fn a_saved_package_predicts_exactly_like_the_trained_model() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    package(f).save(dir.path()).unwrap();
    let predictor = ModelPackage::load(dir.path()).unwrap();
    let raw = f.raw.select(Axis(0), &f.test_rows);
    let from_package = predictor.predict(raw.view()).unwrap();

    let mut scaled = raw.clone();
    f.scaler.transform(&mut scaled).unwrap();
    let probs = f.trained.classifier().unwrap().predict_proba(scaled.mapv(|v| v as f32).view()).unwrap();
    for (p, row) in from_package.iter().zip(probs.rows()) {
        assert_eq!(p.probabilities, row.to_vec());
    }
    let correct = from_package.iter().zip(&f.test_rows).filter(|(p, r)| p.class == f.classes[**r]).count();
    assert!((correct as f64 / f.test_rows.len() as f64 - f.report.accuracy).abs() < 1e-12);
    assert_eq!(predictor.manifest().labels.classes, vec!["benign", "malignant"]);
}

#[test]
fn inputs_outside_the_schema_are_refused_with_row_and_feature() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    package(f).save(dir.path()).unwrap();
    let predictor = ModelPackage::load(dir.path()).unwrap();
    let mut rows = f.raw.select(Axis(0), &f.test_rows[..3]);
    rows[[2, 4]] = -1.0;
    let err = predictor.predict(rows.view()).unwrap_err();
    assert!(matches!(&err, Error::Input { row: 3, column, .. } if column == "mean_smoothness"), "{err}");
    let narrow = Array2::<f64>::zeros((1, 5));
    assert!(matches!(predictor.predict(narrow.view()), Err(Error::Shape(_))));
}

#[test]
fn damaged_packages_are_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    package(f).save(dir.path()).unwrap();
    let weights = dir.path().join("weights.mpk");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&weights, &bytes).unwrap();
    let err = ModelPackage::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("weights.mpk") && err.contains("checksum mismatch"), "{err}");

    package(f).save(dir.path()).unwrap();
    let manifest = dir.path().join(kiln_train::MANIFEST_FILE);
    let current = format!("\"format_version\": {}", kiln_train::PACKAGE_FORMAT_VERSION);
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(&current));
    let text = text.replace(&current, "\"format_version\": 99");
    std::fs::write(&manifest, text).unwrap();
    let err = ModelPackage::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("kiln-package.json") && err.contains("version Some(99) is not supported"), "{err}");
}

#[test]
fn bad_configurations_are_errors() {
    let x = Examples::new(Array2::zeros((4, 2)), vec![0, 1, 0, 1]).unwrap();
    let two = ModelConfig::mlp(2, &[4], 2);
    let none = &mut ();
    let bad = TrainConfig { epochs: 0, ..TrainConfig::default() };
    assert!(matches!(train(&bad, &two, &x, None, None, none), Err(Error::Config(_))));
    let cpu = TrainConfig { device: DeviceSpec::Cpu, epochs: 1, ..TrainConfig::default() };
    assert!(matches!(train(&cpu, &ModelConfig::mlp(2, &[4], 1), &x, None, None, none), Err(Error::Config(_))));
    let y_out_of_range = Examples::new(Array2::zeros((2, 2)), vec![0, 5]).unwrap();
    let err = train(&cpu, &two, &y_out_of_range, None, None, none).unwrap_err();
    assert!(matches!(&err, Error::Shape(m) if m.contains("training row 1")), "{err}");
    assert!(Examples::new(Array2::zeros((2, 2)), vec![0]).is_err());
    let empty = Examples::new(Array2::zeros((0, 2)), vec![]).unwrap();
    assert!(matches!(train(&cpu, &two, &x, Some(&empty), None, none), Err(Error::Shape(_))));
    assert!(matches!(train(&cpu, &two, &empty, None, None, none), Err(Error::Shape(_))));
    let err = train(&cpu, &ModelConfig::mlp(3, &[4], 2), &x, None, None, none).unwrap_err();
    assert!(matches!(&err, Error::Shape(m) if m.contains("2 features") && m.contains("takes 3")), "{err}");
    let f16 = TrainConfig { precision: kiln_train::Precision::F16, ..cpu.clone() };
    let err = train(&f16, &two, &x, None, None, none).unwrap_err();
    assert!(matches!(&err, Error::Config(m) if m.contains("CUDA")), "{err}");
    let es = TrainConfig { early_stopping: Some(kiln_train::EarlyStopping { patience: 2, min_delta: 0.0 }), ..cpu };
    let err = train(&es, &two, &x, None, None, none).unwrap_err();
    assert!(matches!(&err, Error::Config(m) if m.contains("val_loss")), "{err}");
}

#[test]
fn training_is_reproducible_for_a_seed() {
    let x = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0);
    let y: Vec<usize> = (0..40).map(|i| usize::from(x[[i, 0]] > 0.5)).collect();
    let data = Examples::new(x, y).unwrap();
    let cfg = TrainConfig { epochs: 3, device: DeviceSpec::Cpu, seed: 5, ..TrainConfig::default() };
    let model = ModelConfig::Mlp(kiln_train::MlpConfig { dropout: 0.3, ..kiln_train::MlpConfig::new(3, &[8], 2) });
    let a = train(&cfg, &model, &data, None, None, &mut ()).unwrap();
    let b = train(&cfg, &model, &data, None, None, &mut ()).unwrap();
    // The record bytes embed burn's parameter ids, which differ per model; compare behaviour.
    let losses = |t: &kiln_train::Trained| t.history.iter().map(|e| e.train_loss).collect::<Vec<_>>();
    assert_eq!(losses(&a), losses(&b));
    let proba = |t: &kiln_train::Trained| t.classifier().unwrap().predict_proba(data.x.view()).unwrap();
    assert_eq!(proba(&a), proba(&b));
    let other = train(&TrainConfig { seed: 6, ..cfg.clone() }, &model, &data, None, None, &mut ()).unwrap();
    assert_ne!(proba(&a), proba(&other));
}
