//! Integration tests of kiln-train: training on real data, packages on disk.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod custom;
mod eval;
mod plot;
mod training;
mod tune;

/// A file of the repository, from the crate's directory.
fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..")
        .join(rel)
}

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_data::{ColumnSpec, Dataset, LabelEncoder, Schema, SplitFractions, StandardScaler, stratified_split};
use kiln_train::{
    ClassificationReport, DeviceSpec, Error, Examples, InferencePrecision, Lineage, ModelConfig, ModelPackage,
    PackageSpec, TrainConfig, Trained, compare_precision, train,
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
        let path = repo_file("data/breast_cancer.csv");
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
            pipeline: None,
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
fn int8_weights_predict_nearly_alike_and_report_what_they_cost() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    package(f).save(dir.path()).unwrap();
    let raw = f.raw.select(Axis(0), &f.test_rows);
    let truth: Vec<usize> = f.test_rows.iter().map(|r| f.classes[*r]).collect();
    let full = ModelPackage::load(dir.path()).unwrap();
    let int8 = ModelPackage::load(dir.path()).unwrap().with_precision(InferencePrecision::Int8).unwrap();
    assert_eq!(int8.precision(), InferencePrecision::Int8);
    let (a, b) = (full.predict(raw.view()).unwrap(), int8.predict(raw.view()).unwrap());
    // Quantized: not bit-identical, but close.
    assert!(a.iter().zip(&b).any(|(x, y)| x.probabilities != y.probabilities), "int8 changed nothing");
    for (x, y) in a.iter().zip(&b) {
        let sum: f32 = y.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{y:?}");
        for (p, q) in x.probabilities.iter().zip(&y.probabilities) {
            assert!((p - q).abs() < 0.1, "{x:?} vs {y:?}");
        }
    }
    let err = int8.with_precision(InferencePrecision::F32).unwrap_err().to_string();
    assert!(err.contains("load its weights again"), "{err}");

    let report = compare_precision(dir.path(), InferencePrecision::Int8, raw.view(), Some(&truth)).unwrap();
    assert_eq!(report.rows, f.test_rows.len());
    assert!(report.agreement >= 0.95, "{report:?}");
    assert!((report.accuracy_f32.unwrap() - f.report.accuracy).abs() < 1e-12);
    assert!((report.accuracy.unwrap() - report.accuracy_f32.unwrap()).abs() <= 0.05, "{report:?}");
    assert!(report.max_probability_diff > 0.0 && report.max_probability_diff < 0.1, "{report:?}");
    assert!(report.batch_ms > 0.0 && report.row_us > 0.0);
    assert!(compare_precision(dir.path(), InferencePrecision::Int8, raw.view(), Some(&truth[1..])).is_err());
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
    let weights = dir.path().join("weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&weights, &bytes).unwrap();
    let err = ModelPackage::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("weights.safetensors") && err.contains("checksum mismatch"), "{err}");

    package(f).save(dir.path()).unwrap();
    let manifest = dir.path().join(kiln_train::MANIFEST_FILE);
    let current = format!("\"format_version\": {}", kiln_train::PackageTask::Classification.format_version());
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(&current));
    let text = text.replace(&current, "\"format_version\": 99");
    std::fs::write(&manifest, text).unwrap();
    let err = ModelPackage::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("kiln-package.json") && err.contains("version Some(99) is not supported"), "{err}");
}

/// The weights file is plain safetensors in PyTorch's layout: read with the `safetensors`
/// crate (not burn), the tensors have PyTorch's names and `[outputs, inputs]` shapes, and a
/// forward pass computed from them by hand gives the package's probabilities.
#[test]
fn package_weights_are_safetensors_in_pytorch_layout() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    package(f).save(dir.path()).unwrap();
    let bytes = std::fs::read(dir.path().join("weights.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, ["hidden.0.bias", "hidden.0.weight", "output.bias", "output.weight"]);
    let inputs = f.features.len();
    let tensor = |name: &str| {
        let t = file.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (t.shape().to_vec(), values)
    };
    let (w0_shape, w0) = tensor("hidden.0.weight");
    let (_, b0) = tensor("hidden.0.bias");
    let (w1_shape, w1) = tensor("output.weight");
    let (_, b1) = tensor("output.bias");
    assert_eq!(w0_shape, [32, inputs]);
    assert_eq!(w1_shape, [2, 32]);
    let w0 = Array2::from_shape_vec((32, inputs), w0).unwrap();
    let w1 = Array2::from_shape_vec((2, 32), w1).unwrap();

    let raw = f.raw.select(Axis(0), &f.test_rows);
    let mut x = raw.clone();
    f.scaler.transform(&mut x).unwrap();
    let x = x.mapv(|v| v as f32);
    let hidden = (x.dot(&w0.t()) + ndarray::Array1::from(b0)).mapv(|v| v.max(0.0));
    let logits = hidden.dot(&w1.t()) + ndarray::Array1::from(b1);
    let from_package = ModelPackage::load(dir.path()).unwrap().predict(raw.view()).unwrap();
    for (row, p) in logits.rows().into_iter().zip(&from_package) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        for (by_hand, packaged) in exp.iter().map(|e| e / sum).zip(&p.probabilities) {
            assert!((by_hand - packaged).abs() < 1e-5, "{by_hand} vs {packaged}");
        }
    }

    // Weights that do not fit the architecture are refused, naming the file and what is wrong.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(kiln_train::MANIFEST_FILE)).unwrap()).unwrap();
    manifest["model"]["hidden"] = serde_json::json!([16]);
    std::fs::write(dir.path().join(kiln_train::MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = ModelPackage::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("weights.safetensors") && err.contains("hidden.0.weight"), "{err}");
}

/// A format-2 package (weights as burn's MessagePack record), written by kiln before format 3,
/// still loads and predicts the digits; saved again it becomes format 3 and predicts the same.
#[test]
fn format_2_packages_still_load_and_resave_as_format_3() {
    let old = repo_file("crates/train/tests/fixtures/package-v2-digits");
    let text = std::fs::read_to_string(old.join(kiln_train::MANIFEST_FILE)).unwrap();
    assert!(text.contains("\"format_version\": 2") && old.join("weights.mpk").is_file());
    let data = Dataset::load_csv(repo_file("data/digits.csv")).unwrap();
    let features: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
    let raw = data.to_matrix(&features).unwrap();
    let truth = data.to_strings("label").unwrap();
    let before = ModelPackage::load(&old).unwrap().predict(raw.view()).unwrap();
    let correct = before.iter().zip(&truth).filter(|(p, t)| p.label == **t).count();
    assert!(correct as f64 / truth.len() as f64 >= 0.9, "{correct} of {} right", truth.len());

    let dir = tempfile::tempdir().unwrap();
    ModelPackage::read(&old).unwrap().save(dir.path()).unwrap();
    assert!(dir.path().join("weights.safetensors").is_file() && !dir.path().join("weights.mpk").exists());
    let resaved = ModelPackage::read(dir.path()).unwrap();
    assert_eq!(resaved.manifest.format_version, 3, "a classifier is written in format 3");
    assert_eq!(resaved.manifest.files.keys().collect::<Vec<_>>(), ["weights.safetensors"]);
    let after = resaved.into_predictor().unwrap().predict(raw.view()).unwrap();
    assert_eq!(before, after);
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

mod penguins {
    //! A package with a kiln-data pipeline (imputation, scaling, one-hot), a reference profile
    //! and an evaluation report, on the penguins data (text columns, missing values).

    use std::collections::{BTreeMap, HashMap};

    use kiln_data::pipeline::{Columns, HandleUnknown, ImputeStrategy, Step, Transform, Value};
    use kiln_data::{
        Dataset, DatasetProfile, LabelEncoder, Pipeline, ProfileOptions, Schema, SplitFractions, TrainSplit,
        stratified_split,
    };
    use kiln_track::{RegisterOptions, Store};
    use kiln_train::{
        DeviceSpec, Error, EvalReport, Examples, ModelConfig, ModelPackage, PackageSpec, PromotionGate, TrainConfig,
        train,
    };

    use super::repo_file;

    struct Fitted {
        package: ModelPackage,
        test_frame: kiln_data::polars::prelude::DataFrame,
        test_probabilities: ndarray::Array2<f32>,
    }

    fn fitted() -> Fitted {
        let data = Dataset::load_csv(repo_file("data/penguins.csv")).unwrap();
        let labels = data.to_strings("species").unwrap();
        let split = stratified_split(&labels, SplitFractions::default(), 3).unwrap();
        let pipeline = Pipeline::new()
            .step(
                Step::new("numbers", Columns::Numeric).impute(ImputeStrategy::Median, false).then(Transform::Standard),
            )
            .step(
                Step::new("categories", Columns::Names(vec!["island".into(), "sex".into()]))
                    .impute(ImputeStrategy::MostFrequent, true)
                    .then(Transform::OneHot { handle_unknown: HandleUnknown::Ignore, min_frequency: None }),
            )
            .exclude("species")
            .exclude("year");
        let train_rows = TrainSplit::of_split(&data, &split).unwrap();
        let fitted = pipeline.fit(&train_rows).unwrap();
        let encoder = LabelEncoder::fit(&labels);
        let classes = encoder.encode(&labels).unwrap();
        let part = |rows: &[usize]| {
            let frame = data.take(rows).unwrap().frame().clone();
            let x = fitted.transform(&frame, "penguins.csv").unwrap();
            (frame, Examples::new(x.mapv(|v| v as f32), rows.iter().map(|r| classes[*r]).collect()).unwrap())
        };
        let (_, train_set) = part(&split.train);
        let (test_frame, test_set) = part(&split.test);
        let model = ModelConfig::mlp(fitted.width(), &[16], encoder.len());
        let config = TrainConfig { epochs: 30, device: DeviceSpec::Cpu, ..TrainConfig::default() };
        let trained = train(&config, &model, &train_set, None, None, &mut ()).unwrap();
        let test_probabilities = trained.classifier().unwrap().predict_proba(test_set.x.view()).unwrap();
        let eval =
            EvalReport::compute(&test_set.y, test_probabilities.mapv(f64::from).view(), &encoder.classes).unwrap();
        let profile = DatasetProfile::of(train_rows.frame(), &ProfileOptions::default()).unwrap();
        let package = ModelPackage::new(
            &trained,
            PackageSpec {
                name: "penguins".into(),
                train_config: config,
                features: Vec::new(),
                input_schema: Schema::new(Vec::new()),
                scaler: None,
                pipeline: Some(fitted),
                labels: encoder,
                label_column: "species".into(),
                metrics: BTreeMap::new(),
                lineage: Default::default(),
            },
        )
        .unwrap()
        .with_profile(profile)
        .with_eval(eval);
        Fitted { package, test_frame, test_probabilities }
    }

    fn records(frame: &kiln_data::polars::prelude::DataFrame) -> Vec<HashMap<String, Value>> {
        let columns = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex"];
        (0..frame.height())
            .map(|r| {
                columns
                    .iter()
                    .map(|c| {
                        let v = frame.column(c).unwrap().get(r).unwrap();
                        let value = match v {
                            kiln_data::polars::prelude::AnyValue::Null => Value::Null,
                            kiln_data::polars::prelude::AnyValue::String(s) => Value::Text(s.to_string()),
                            other => Value::Number(other.extract::<f64>().unwrap()),
                        };
                        (c.to_string(), value)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_package_with_pipeline_profile_and_eval_round_trips_and_predicts_identically() {
        let f = fitted();
        let dir = tempfile::tempdir().unwrap();
        f.package.save(dir.path()).unwrap();
        for file in ["kiln-package.json", "weights.safetensors", "pipeline.json", "profile.json", "eval.json"] {
            assert!(dir.path().join(file).is_file(), "{file}");
        }
        let read = ModelPackage::read(dir.path()).unwrap();
        assert_eq!(read.pipeline(), f.package.pipeline());
        assert_eq!(read.profile(), f.package.profile());
        assert_eq!(read.eval(), f.package.eval());
        assert!(read.manifest.metrics.contains_key("test_log_loss"));
        // The pipeline's input columns, in step order.
        let inputs = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island", "sex"];
        assert_eq!(read.manifest.features, inputs);

        let predictor = read.into_predictor().unwrap();
        let rows = records(&f.test_frame);
        assert!(rows.iter().any(|r| r.values().any(|v| *v == Value::Null)), "the test rows include missing values");
        let predicted = predictor.predict_records(&rows).unwrap();
        for (p, want) in predicted.iter().zip(f.test_probabilities.rows()) {
            assert_eq!(p.probabilities, want.to_vec(), "serving equals training bit for bit");
        }
        // A numeric-only call cannot carry the text columns: refused naming the column.
        let err = predictor.predict(ndarray::Array2::<f64>::zeros((1, 6)).view()).unwrap_err();
        assert!(matches!(&err, Error::Input { column, .. } if column == "island" || column == "sex"), "{err}");

        let mut profile = std::fs::read_to_string(dir.path().join("profile.json")).unwrap();
        profile.push(' ');
        std::fs::write(dir.path().join("profile.json"), profile).unwrap();
        let err = ModelPackage::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("profile.json") && err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn the_promotion_gate_registers_only_candidates_that_are_not_worse() {
        let f = fitted();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let registry = store.registry();
        let package_dir = dir.path().join("pkg");
        f.package.save(&package_dir).unwrap();
        let gate = PromotionGate {
            thresholds: BTreeMap::from([("test_accuracy".into(), 0.8), ("test_log_loss".into(), 1.0)]),
            lower_is_better: vec!["test_log_loss".into()],
            tolerance: 0.01,
        };
        let options = |metrics: BTreeMap<String, f64>| RegisterOptions { metrics, ..Default::default() };
        let metrics = f.package.manifest.metrics.clone();
        let first = gate.promote(&registry, "penguins", "production", &package_dir, options(metrics.clone())).unwrap();
        assert!(first.decision.passed, "{:?}", first.decision);
        assert_eq!((first.version.as_ref().unwrap().version, first.replaced), (1, None));

        let mut worse = metrics.clone();
        *worse.get_mut("test_accuracy").unwrap() -= 0.05;
        let refused = gate.promote(&registry, "penguins", "production", &package_dir, options(worse)).unwrap();
        assert!(!refused.decision.passed && refused.version.is_none());
        assert!(refused.decision.reasons[0].contains("worse than production"), "{:?}", refused.decision);
        assert_eq!(registry.versions("penguins").unwrap().len(), 1, "a refused candidate is not registered");

        let second = gate.promote(&registry, "penguins", "production", &package_dir, options(metrics)).unwrap();
        assert_eq!((second.version.unwrap().version, second.replaced), (2, Some(1)));
        assert_eq!(registry.resolve("penguins", "production").unwrap().version, 2);
    }

    #[test]
    fn failure_checks_pass_for_a_schema_checked_numeric_model() {
        let bc = super::fixture();
        let predictor = super::package(bc).into_predictor().unwrap();
        let reference = bc.raw.select(ndarray::Axis(0), &bc.test_rows);
        let checks = predictor.failure_checks(reference.view());
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "valid_probabilities",
                "constant_inputs",
                "out_of_range_values",
                "missing_features",
                "deterministic",
                "batch_invariant"
            ]
        );
        for c in &checks {
            assert!(c.passed, "{c:?}");
        }
    }
}
