//! The synthetic data generator: shape, determinism, imbalance, noise and injected drift.

use kiln_data::polars::prelude::*;
use kiln_data::{DriftOptions, InjectedDrift, SyntheticSpec, detect_drift, synthetic_classification};

fn labels(frame: &DataFrame) -> Vec<String> {
    frame.column("label").unwrap().str().unwrap().iter().map(|s| s.unwrap().to_string()).collect()
}

#[test]
fn shape_and_determinism() {
    let spec = SyntheticSpec { rows: 500, numeric: 3, categorical: 2, ..SyntheticSpec::default() };
    let a = synthetic_classification(&spec).unwrap();
    assert_eq!(a.shape(), (500, 6));
    let names: Vec<String> = a.get_column_names().iter().map(|c| c.to_string()).collect();
    assert_eq!(names, ["num_0", "num_1", "num_2", "cat_0", "cat_1", "label"]);
    assert!(a.equals(&synthetic_classification(&spec).unwrap()), "same seeds, same data");
    assert!(!a.equals(&synthetic_classification(&SyntheticSpec { sample: 1, ..spec.clone() }).unwrap()));
    assert!(synthetic_classification(&SyntheticSpec { classes: 1, ..spec.clone() }).is_err());
    assert!(synthetic_classification(&SyntheticSpec { class_weights: Some(vec![1.0]), ..spec }).is_err());
}

#[test]
fn imbalance_and_label_noise() {
    let spec = SyntheticSpec { rows: 20_000, class_weights: Some(vec![8.0, 1.0, 1.0]), ..SyntheticSpec::default() };
    let frame = synthetic_classification(&spec).unwrap();
    let share = labels(&frame).iter().filter(|l| *l == "c0").count() as f64 / 20_000.0;
    assert!((share - 0.8).abs() < 0.015, "c0 share {share}");

    // Nearest class centre (estimated from the data) recovers clean labels, and about
    // 1 - noise + noise / classes of noisy ones.
    let accuracy = |noise: f64| {
        let spec =
            SyntheticSpec { rows: 6000, numeric: 4, separation: 20.0, label_noise: noise, ..SyntheticSpec::default() };
        let clean = synthetic_classification(&SyntheticSpec { label_noise: 0.0, ..spec.clone() }).unwrap();
        let noisy = synthetic_classification(&spec).unwrap();
        let x = |f: &DataFrame, j: usize| -> Vec<f64> {
            f.column(&format!("num_{j}")).unwrap().f64().unwrap().iter().map(|v| v.unwrap()).collect()
        };
        let (cl, cols): (Vec<String>, Vec<Vec<f64>>) = (labels(&clean), (0..4).map(|j| x(&clean, j)).collect());
        let centre = |c: &str| -> Vec<f64> {
            let rows: Vec<usize> = (0..cl.len()).filter(|i| cl[*i] == c).collect();
            cols.iter().map(|col| rows.iter().map(|r| col[*r]).sum::<f64>() / rows.len() as f64).collect()
        };
        let centres: Vec<(String, Vec<f64>)> = ["c0", "c1", "c2"].iter().map(|c| (c.to_string(), centre(c))).collect();
        let (nl, ncols): (Vec<String>, Vec<Vec<f64>>) = (labels(&noisy), (0..4).map(|j| x(&noisy, j)).collect());
        let hits = (0..nl.len())
            .filter(|i| {
                let nearest = centres
                    .iter()
                    .min_by(|a, b| {
                        let d = |c: &[f64]| c.iter().enumerate().map(|(j, m)| (ncols[j][*i] - m).powi(2)).sum::<f64>();
                        d(&a.1).total_cmp(&d(&b.1))
                    })
                    .unwrap();
                nearest.0 == nl[*i]
            })
            .count();
        hits as f64 / nl.len() as f64
    };
    assert!(accuracy(0.0) > 0.99, "{}", accuracy(0.0));
    let noisy = accuracy(0.3);
    assert!((noisy - 0.8).abs() < 0.03, "with 30% noise over 3 classes expect ~0.8, got {noisy}");
}

#[test]
fn injected_drift_is_detected_and_only_there() {
    let base = SyntheticSpec { rows: 800, numeric: 4, categorical: 2, ..SyntheticSpec::default() };
    let reference = synthetic_classification(&base).unwrap();
    let options = DriftOptions::default();
    let same = detect_drift(
        &reference,
        &synthetic_classification(&SyntheticSpec { sample: 9, ..base.clone() }).unwrap(),
        &options,
    )
    .unwrap();
    assert!(!same.drifted, "{same:#?}");
    let drift = InjectedDrift { mean_shift: 0.5, variance_scale: 1.0, category_shift: 0.4, features: Some(1) };
    let current = synthetic_classification(&SyntheticSpec { sample: 9, drift: Some(drift), ..base }).unwrap();
    let report = detect_drift(&reference, &current, &options).unwrap();
    let drifted: Vec<&str> = report.columns.iter().filter(|c| c.drifted).map(|c| c.column.as_str()).collect();
    assert_eq!(drifted, ["num_0", "cat_0"], "{report:#?}");
}
