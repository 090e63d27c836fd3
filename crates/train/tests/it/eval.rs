//! Evaluation metrics against scikit-learn reference values (tests/fixtures/eval_reference.py).

use std::collections::BTreeMap;

use kiln_train::{EvalReport, PromotionGate, roc_auc};
use ndarray::Array2;

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{what}: kiln {got}, scikit-learn {want}");
}

#[test]
fn metrics_match_scikit_learn() {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let path = std::path::PathBuf::from(dir).join("tests/fixtures/eval_reference.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let truth: Vec<usize> =
            case["truth"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let rows: Vec<Vec<f64>> = case["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let k = rows[0].len();
        let p = Array2::from_shape_fn((rows.len(), k), |(r, c)| rows[r][c]);
        let labels: Vec<String> = (0..k).map(|c| format!("c{c}")).collect();
        let report = EvalReport::compute(&truth, p.view(), &labels).unwrap();
        let c = &report.classification;
        for (got, key) in [
            (c.accuracy, "accuracy"),
            (c.macro_f1, "macro_f1"),
            (c.macro_precision, "macro_precision"),
            (c.macro_recall, "macro_recall"),
            (c.weighted_f1, "weighted_f1"),
            (c.weighted_precision, "weighted_precision"),
            (c.weighted_recall, "weighted_recall"),
            (report.log_loss, "log_loss"),
            (report.ece, "ece"),
            (report.roc_auc.macro_auc.unwrap(), "roc_auc_macro"),
            (report.roc_auc.weighted_auc.unwrap(), "roc_auc_weighted"),
        ] {
            close(got, case[key].as_f64().unwrap(), &format!("{name}: {key}"));
        }
        let metrics = report.metrics();
        assert_eq!(metrics["accuracy"], c.accuracy);
        assert!(metrics.contains_key("roc_auc"));
    }
}

#[test]
fn auc_and_slices_on_hand_examples() {
    // Positives score 0.9 and 0.4, negatives 0.4 and 0.1: of 4 pairs, 3 won and 1 tied.
    assert_eq!(roc_auc(&[true, true, false, false], &[0.9, 0.4, 0.4, 0.1]), Some(0.875));
    assert_eq!(roc_auc(&[true, true], &[0.9, 0.4]), None, "no negatives, no AUC");
    let p = ndarray::array![[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]];
    let truth = [0, 1, 1, 1];
    let labels = vec!["no".to_string(), "yes".to_string()];
    let sites: Vec<String> = ["a", "a", "b", "b"].map(String::from).to_vec();
    let report =
        EvalReport::compute(&truth, p.view(), &labels).unwrap().with_slices("site", &sites, &truth, p.view()).unwrap();
    let slices: Vec<(&str, usize, f64)> =
        report.slices.iter().map(|s| (s.value.as_str(), s.rows, s.accuracy)).collect();
    assert_eq!(slices, [("a", 2, 1.0), ("b", 2, 0.5)]);
    assert!(EvalReport::compute(&[0, 2], p.slice(ndarray::s![..2, ..]), &labels).is_err(), "class 2 does not exist");

    // Logged to a run: every metric, each slice, and the report itself, read back.
    let dir = tempfile::tempdir().unwrap();
    let store = kiln_track::Store::open(dir.path()).unwrap();
    let mut run = store.start_run("eval").unwrap();
    let artifact = report.log_to_run(&mut run, "test", 3).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let points = store.metrics(&id).unwrap();
    let value = |key: &str| points.iter().find(|p| p.key == key).map(|p| (p.step, p.value));
    assert_eq!(value("test_accuracy"), Some((3, 0.75)));
    assert_eq!(value("test_slice_site=b_accuracy"), Some((3, 0.5)));
    assert_eq!(value("test_macro_f1").map(|v| v.1), Some(report.classification.macro_f1));
    assert_eq!(artifact.name, "test_eval_report.json");
    let stored = std::fs::read(store.object_path(&artifact.digest).unwrap()).unwrap();
    assert_eq!(serde_json::from_slice::<EvalReport>(&stored).unwrap(), report);
}

#[test]
fn the_promotion_gate_needs_thresholds_and_no_regression() {
    let gate = PromotionGate {
        thresholds: BTreeMap::from([("accuracy".to_string(), 0.9), ("log_loss".to_string(), 0.5)]),
        lower_is_better: vec!["log_loss".into()],
        tolerance: 0.01,
    };
    let m = |acc: f64, loss: f64| BTreeMap::from([("accuracy".to_string(), acc), ("log_loss".to_string(), loss)]);
    assert!(gate.decide(&m(0.95, 0.2), None).passed);
    let low = gate.decide(&m(0.85, 0.2), None);
    assert!(!low.passed && low.reasons[0].contains("below the minimum 0.9"), "{low:?}");
    let production = m(0.97, 0.1);
    let worse = gate.decide(&m(0.95, 0.2), Some(&production));
    assert!(!worse.passed && worse.reasons.len() == 2, "{worse:?}");
    assert!(gate.decide(&m(0.965, 0.105), Some(&production)).passed, "within tolerance");
}
