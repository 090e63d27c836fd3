//! Drift statistics against SciPy reference values (tests/fixtures/drift_reference.py).

use kiln_data::SplitMix64;
use kiln_data::drift::{DriftOptions, DriftTest, Sample, detect_drift, ks_2samp};
use kiln_data::polars::prelude::*;

/// The generators of drift_reference.py, operation for operation (bit-identical samples).
fn bell(seed: u64, n: usize, mean: f64, scale: f64) -> Vec<f64> {
    let mut g = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut s = g.next_f64() + g.next_f64();
            s += g.next_f64();
            s += g.next_f64();
            (s - 2.0) * scale + mean
        })
        .collect()
}

fn ints(seed: u64, n: usize, k: u64) -> Vec<f64> {
    let mut g = SplitMix64::new(seed);
    (0..n).map(|_| g.below(k) as f64).collect()
}

fn cats(seed: u64, n: usize, weights: &[f64]) -> Vec<String> {
    let mut g = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let u = g.next_f64();
            let mut acc = 0.0;
            let mut pick = weights.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                acc += w;
                if u < acc {
                    pick = i;
                    break;
                }
            }
            ((b'a' + pick as u8) as char).to_string()
        })
        .collect()
}

fn sample(spec: &serde_json::Value) -> Sample {
    let seed = spec["seed"].as_u64().unwrap();
    let n = spec["n"].as_u64().unwrap() as usize;
    let args = spec["args"].as_array().unwrap();
    match spec["kind"].as_str().unwrap() {
        "bell" => Sample::Numeric(bell(seed, n, args[0].as_f64().unwrap(), args[1].as_f64().unwrap())),
        "ints" => Sample::Numeric(ints(seed, n, args[0].as_u64().unwrap())),
        "cats" => {
            let weights: Vec<f64> = args[0].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
            Sample::Categorical(cats(seed, n, &weights))
        }
        other => panic!("unknown sample kind {other}"),
    }
}

fn close(got: f64, want: f64, what: &str) {
    let tolerance = 1e-9 * want.abs().max(1e-300) + 1e-15;
    assert!((got - want).abs() <= tolerance, "{what}: kiln {got:e}, SciPy {want:e}");
}

#[test]
fn statistics_match_scipy() {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let path = std::path::PathBuf::from(crate_dir).join("tests/fixtures/drift_reference.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let samples = &fixture["samples"];
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 18);
    for case in cases {
        let (r, c) = (case["reference"].as_str().unwrap(), case["current"].as_str().unwrap());
        let (reference, current) = (sample(&samples[r]), sample(&samples[c]));
        let test: DriftTest = serde_json::from_value(case["test"].clone()).unwrap();
        let what = format!("{} {r} vs {c}", test.as_str());
        let want = case["value"].as_f64().unwrap();
        close(test.statistic(&reference, &current).unwrap(), want, &what);
        if test == DriftTest::Ks {
            let (Sample::Numeric(a), Sample::Numeric(b)) = (&reference, &current) else { unreachable!() };
            close(ks_2samp(a, b).statistic, case["statistic"].as_f64().unwrap(), &format!("{what} (D)"));
        }
    }
}

#[test]
fn defaults_follow_evidently_and_the_data_set_drifts_at_half_its_columns() {
    let small = |shift: f64, seed: u64, n: usize| -> DataFrame {
        let flag: Vec<String> = cats(seed + 1, n, &[0.7 - shift / 4.0, 0.3 + shift / 4.0]);
        df!(
            "x" => bell(seed, n, shift, 1.0),
            "colour" => cats(seed + 2, n, &[0.5, 0.3, 0.2]),
            "flag" => flag,
            "level" => ints(seed + 3, n, 4),
        )
        .unwrap()
    };
    let reference = small(0.0, 100, 800);
    let current = small(1.0, 200, 600);
    let report = detect_drift(&reference, &current, &DriftOptions::default()).unwrap();
    let tests: Vec<(&str, DriftTest)> = report.columns.iter().map(|c| (c.column.as_str(), c.test)).collect();
    assert_eq!(
        tests,
        [
            ("x", DriftTest::Ks),
            ("colour", DriftTest::ChiSquare),
            ("flag", DriftTest::Z),
            ("level", DriftTest::ChiSquare)
        ],
        "≤ 1000 reference rows: KS, chi-square, Z for two values, chi-square for a numeric column with ≤ 5 values"
    );
    let drifted: Vec<&str> = report.columns.iter().filter(|c| c.drifted).map(|c| c.column.as_str()).collect();
    assert_eq!(drifted, ["x", "flag"], "{report:#?}");
    assert_eq!(report.share_drifted, 0.5);
    assert!(report.drifted, "half the columns drifted");

    let big_reference = small(0.0, 300, 3000);
    let report = detect_drift(&big_reference, &current, &DriftOptions::default()).unwrap();
    let tests: Vec<DriftTest> = report.columns.iter().map(|c| c.test).collect();
    assert_eq!(
        tests,
        [DriftTest::Wasserstein, DriftTest::JensenShannon, DriftTest::JensenShannon, DriftTest::JensenShannon],
        "above 1000 reference rows: Wasserstein for numeric, Jensen–Shannon otherwise"
    );
    assert!(report.columns[0].drifted, "a shift of one unit is drift: {:?}", report.columns[0]);

    let same = detect_drift(&reference, &small(0.0, 400, 700), &DriftOptions::default()).unwrap();
    assert!(!same.drifted, "{same:#?}");
}

#[test]
fn missing_values_are_counted_not_compared() {
    let reference = df!("v" => [Some(1.0), None, Some(f64::NAN), Some(2.0), Some(3.0), Some(f64::INFINITY)]).unwrap();
    let current = df!("v" => [Some(1.0), Some(2.0), None]).unwrap();
    let report = detect_drift(&reference, &current, &DriftOptions::default()).unwrap();
    let column = &report.columns[0];
    assert_eq!((column.reference_values, column.current_values), (3, 2));
    assert_eq!(column.missing, (3, 1));
    // A column with nothing left to compare is skipped and reported; the others still count.
    let empty = df!("v" => [None::<f64>, Some(f64::NAN)], "w" => [1.0, 2.0]).unwrap();
    let with_w = df!("v" => [1.0, 2.0, 3.0], "w" => [1.0, 2.0, 3.0]).unwrap();
    let report = detect_drift(&with_w, &empty, &DriftOptions::default()).unwrap();
    assert_eq!(report.columns.len(), 1);
    assert_eq!(report.skipped[0].0, "v");
    assert!(report.skipped[0].1.contains("current"), "{:?}", report.skipped);
    // NaN never counts as a category or a histogram value.
    let with_nan = Sample::Numeric(vec![1.0, f64::NAN, 2.0]);
    let plain = Sample::Numeric(vec![1.0, 2.0]);
    for test in [DriftTest::ChiSquare, DriftTest::Psi, DriftTest::JensenShannon] {
        assert_eq!(test.statistic(&with_nan, &plain).unwrap(), test.statistic(&plain, &plain).unwrap(), "{test:?}");
    }
}

#[test]
fn ks_is_exact_for_tiny_samples() {
    // [1, 2] against [3, 4]: D = 1; of the C(4, 2) = 6 orderings, 2 reach D = 1, so p = 1/3.
    let r = ks_2samp(&[1.0, 2.0], &[3.0, 4.0]);
    assert_eq!(r.statistic, 1.0);
    assert!((r.p_value - 1.0 / 3.0).abs() < 1e-15, "{}", r.p_value);
    let same = ks_2samp(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
    assert_eq!((same.statistic, same.p_value), (0.0, 1.0));
}
