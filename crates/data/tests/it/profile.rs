//! Profiles: statistics, the stored reference sample, JSON, and drift against a profile.

use kiln_data::drift::DriftTest;
use kiln_data::polars::prelude::*;
use kiln_data::{Dataset, DatasetProfile, DriftOptions, ProfileOptions};

use crate::data_file;

#[test]
fn numeric_and_categorical_statistics() {
    let frame = df!(
        "x" => [Some(1.0), Some(2.0), None, Some(3.0), Some(4.0), Some(100.0), Some(f64::NAN)],
        "c" => [Some("b"), Some("a"), Some("b"), None, Some("c"), Some("b"), Some("a")],
    )
    .unwrap();
    let profile = DatasetProfile::of(&frame, &ProfileOptions::default()).unwrap();
    assert_eq!(profile.rows, 7);
    let x = profile.column("x").unwrap();
    assert_eq!((x.count, x.missing), (5, 2), "a null and a NaN are missing");
    let s = x.numeric.as_ref().unwrap();
    assert_eq!((s.mean, s.min, s.max), (22.0, 1.0, 100.0));
    let var = (21f64.powi(2) + 20f64.powi(2) + 19f64.powi(2) + 18f64.powi(2) + 78f64.powi(2)) / 4.0;
    assert!((s.std - var.sqrt()).abs() < 1e-12);
    // NumPy: np.quantile([1, 2, 3, 4, 100], [0.05, 0.25, 0.5, 0.75, 0.95]) = [1.2, 2, 3, 4, 80.8].
    let q: Vec<f64> = s.quantiles.iter().map(|(_, v)| *v).collect();
    for (got, want) in q.iter().zip([1.2, 2.0, 3.0, 4.0, 80.8]) {
        assert!((got - want).abs() < 1e-12, "{q:?}");
    }
    // np.histogram([1, 2, 3, 4, 100], bins=10) = [4, 0, ..., 0, 1].
    assert_eq!(s.histogram.counts, [4, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!((s.histogram.edges[0], s.histogram.edges[10]), (1.0, 100.0));
    let c = profile.column("c").unwrap();
    assert_eq!((c.count, c.missing), (6, 1));
    let cat = c.categorical.as_ref().unwrap();
    assert_eq!(cat.unique, 3);
    assert_eq!(cat.top, [("b".to_string(), 3), ("a".to_string(), 2), ("c".to_string(), 1)]);
}

#[test]
fn a_profile_round_trips_through_json_and_refuses_other_versions() {
    let penguins = Dataset::load_csv(data_file("penguins.csv")).unwrap();
    let profile = DatasetProfile::of(penguins.frame(), &ProfileOptions::default()).unwrap();
    let species = profile.column("species").unwrap().categorical.as_ref().unwrap();
    assert_eq!(species.top[0], ("Adelie".to_string(), 152));
    let sex = profile.column("sex").unwrap();
    assert_eq!(sex.missing, 11, "penguins.csv has 11 rows without a sex");
    let json = profile.to_json().unwrap();
    assert_eq!(DatasetProfile::from_json(&json).unwrap(), profile);
    let future = json.replacen("\"format_version\": 1", "\"format_version\": 99", 1);
    let err = DatasetProfile::from_json(&future).unwrap_err().to_string();
    assert!(err.contains("format 99") && err.contains("reads format 1"), "{err}");
}

#[test]
fn the_reference_sample_is_seeded_and_bounded() {
    let digits = Dataset::load_csv(data_file("digits.csv")).unwrap();
    let options = ProfileOptions { sample_size: 500, ..ProfileOptions::default() };
    let a = DatasetProfile::of(digits.frame(), &options).unwrap();
    let b = DatasetProfile::of(digits.frame(), &options).unwrap();
    assert_eq!(a, b, "same seed, same sample");
    let other = DatasetProfile::of(digits.frame(), &ProfileOptions { seed: 1, ..options.clone() }).unwrap();
    assert_ne!(a.columns[10].sample, other.columns[10].sample);
    match &a.columns[10].sample {
        kiln_data::profile::ReferenceSample::Numeric(v) => assert_eq!(v.len(), 500),
        other => panic!("digits pixels are numeric: {other:?}"),
    }
}

#[test]
fn drift_against_a_stored_profile() {
    let digits = Dataset::load_csv(data_file("digits.csv")).unwrap();
    let (train, live) = (digits.frame().slice(0, 1000), digits.frame().slice(1000, 797));
    let profile =
        DatasetProfile::from_json(&DatasetProfile::of(&train, &ProfileOptions::default()).unwrap().to_json().unwrap())
            .unwrap();
    let columns: Vec<String> = ["pixel_2_3", "pixel_3_4", "pixel_4_4", "pixel_5_2"].map(String::from).to_vec();
    let options = DriftOptions { columns: Some(columns.clone()), ..DriftOptions::default() };
    let same = profile.drift(&live, &options).unwrap();
    assert!(!same.drifted, "{same:#?}");
    assert!(same.columns.iter().all(|c| c.test == DriftTest::Ks));
    // A sensor that reads 3 units high on half the pixels.
    let mut shifted = live.clone();
    for name in &columns[..2] {
        let bumped = shifted.column(name).unwrap().as_materialized_series() + 3;
        shifted.replace(name, bumped.into()).unwrap();
    }
    let drift = profile.drift(&shifted, &options).unwrap();
    let drifted: Vec<&str> = drift.columns.iter().filter(|c| c.drifted).map(|c| c.column.as_str()).collect();
    assert_eq!(drifted, ["pixel_2_3", "pixel_3_4"]);
    assert!(drift.drifted, "half the columns drifted");
}
