//! Preprocessing pipelines: penguins through impute + one-hot + scale, saved and loaded;
//! batch/row parity; unknown categories; scalers against scikit-learn's formulas.

use std::collections::HashMap;

use kiln_data::pipeline::{Columns, HandleUnknown, ImputeStrategy, Pipeline, Remainder, Step, Transform, Value};
use kiln_data::polars::prelude::*;
use kiln_data::{Dataset, FittedPipeline, SplitFractions, TrainSplit, stratified_split};

use crate::data_file;

fn penguin_pipeline() -> Pipeline {
    Pipeline::new()
        .exclude("species")
        .step(
            Step::new(
                "numbers",
                Columns::Names(vec![
                    "bill_length_mm".into(),
                    "bill_depth_mm".into(),
                    "flipper_length_mm".into(),
                    "body_mass_g".into(),
                ]),
            )
            .impute(ImputeStrategy::Median, true)
            .then(Transform::Standard),
        )
        .step(
            Step::new("labels", Columns::Categorical)
                .impute(ImputeStrategy::MostFrequent, false)
                .then(Transform::OneHot { handle_unknown: HandleUnknown::Error, min_frequency: None }),
        )
}

fn row_of(frame: &DataFrame, r: usize) -> HashMap<String, Value> {
    frame
        .columns()
        .iter()
        .map(|c| {
            let v = match c.get(r).unwrap() {
                AnyValue::Null => Value::Null,
                AnyValue::String(s) => Value::Text(s.to_string()),
                AnyValue::StringOwned(s) => Value::Text(s.to_string()),
                other => Value::Number(other.extract::<f64>().unwrap()),
            };
            (c.name().to_string(), v)
        })
        .collect()
}

#[test]
fn penguins_impute_one_hot_scale_save_and_load() {
    let data = Dataset::load_csv(data_file("penguins.csv")).unwrap();
    let species = data.to_strings("species").unwrap();
    let split = stratified_split(&species, SplitFractions::default(), 7).unwrap();
    let train = TrainSplit::of_split(&data, &split).unwrap();
    let fitted = penguin_pipeline().fit(&train).unwrap();

    assert_eq!(
        fitted.output_features,
        [
            "bill_length_mm",
            "bill_length_mm_missing",
            "bill_depth_mm",
            "bill_depth_mm_missing",
            "flipper_length_mm",
            "flipper_length_mm_missing",
            "body_mass_g",
            "body_mass_g_missing",
            "island=Biscoe",
            "island=Dream",
            "island=Torgersen",
            "sex=female",
            "sex=male",
        ]
    );
    assert_eq!(fitted.fitted_rows, split.train.len());

    // Scaled training columns: mean 0, population std 1 (the imputed median included).
    let x_train = fitted.transform(train.frame(), "train").unwrap();
    for j in [0, 2, 4, 6] {
        let col = x_train.column(j);
        let mean = col.mean().unwrap();
        let std = col.std(0.0);
        assert!(mean.abs() < 1e-12 && (std - 1.0).abs() < 1e-12, "feature {j}: mean {mean} std {std}");
    }
    // Rows with a missing bill length were filled with the training median and flagged.
    let bill: Vec<Option<f64>> = train.frame().column("bill_length_mm").unwrap().f64().unwrap().iter().collect();
    let mut known: Vec<f64> = bill.iter().flatten().copied().collect();
    known.sort_by(f64::total_cmp);
    let median = if known.len() % 2 == 1 {
        known[known.len() / 2]
    } else {
        (known[known.len() / 2 - 1] + known[known.len() / 2]) / 2.0
    };
    let (fill, _) = fitted.columns[0].fill.clone().unwrap();
    assert_eq!(fill, Value::Number(median));
    let missing_rows: Vec<usize> = (0..bill.len()).filter(|r| bill[*r].is_none()).collect();
    for r in &missing_rows {
        assert_eq!(x_train[[*r, 1]], 1.0);
    }
    // One-hot rows sum to one per categorical column.
    for r in 0..x_train.nrows() {
        assert_eq!(x_train[[r, 8]] + x_train[[r, 9]] + x_train[[r, 10]], 1.0);
        assert_eq!(x_train[[r, 11]] + x_train[[r, 12]], 1.0);
    }

    // Saved, loaded, and applied to the test rows: the same matrix as before saving.
    let json = fitted.to_json().unwrap();
    let loaded = FittedPipeline::from_json(&json).unwrap();
    assert_eq!(loaded, fitted);
    let test = data.take(&split.test).unwrap();
    let before = fitted.transform(test.frame(), "test").unwrap();
    let after = loaded.transform(test.frame(), "test").unwrap();
    assert_eq!(before, after);

    // Every row alone equals the same row in the batch, bit for bit.
    let all = loaded.transform(data.frame(), "penguins").unwrap();
    for r in 0..data.height() {
        let alone = loaded.transform_row(&row_of(data.frame(), r)).unwrap();
        let batch: Vec<f64> = all.row(r).to_vec();
        assert!(alone.iter().zip(&batch).all(|(a, b)| a.to_bits() == b.to_bits()), "row {r}: {alone:?} vs {batch:?}");
    }
}

#[test]
fn documents_of_other_versions_or_kinds_are_refused() {
    let data = Dataset::load_csv(data_file("penguins.csv")).unwrap();
    let fitted = penguin_pipeline().fit(&TrainSplit::all_rows_for_final_fit(&data)).unwrap();
    let json = fitted.to_json().unwrap();
    let future = json.replacen("\"format_version\": 1", "\"format_version\": 2", 1);
    let err = FittedPipeline::from_json(&future).unwrap_err().to_string();
    assert!(err.contains("version 2") && err.contains("reads version 1"), "{err}");
    let other = json.replacen("\"kiln-pipeline\"", "\"something-else\"", 1);
    assert!(FittedPipeline::from_json(&other).unwrap_err().to_string().contains("not a kiln pipeline"));
    assert!(FittedPipeline::from_json("{").is_err());
}

#[test]
fn unknown_categories_and_missing_values_are_named() {
    let train =
        df!("colour" => ["red", "blue", "red", "green", "red", "blue"], "size" => [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .unwrap();
    let data = Dataset::from_frame(train, "paint.csv").unwrap();
    let strict = Pipeline::new()
        .step(
            Step::new("c", Columns::Names(vec!["colour".into()]))
                .then(Transform::OneHot { handle_unknown: HandleUnknown::Error, min_frequency: None }),
        )
        .step(Step::new("n", Columns::Numeric).then(Transform::Standard))
        .fit(&TrainSplit::all_rows_for_final_fit(&data))
        .unwrap();
    let live =
        df!("colour" => [Some("red"), Some("purple"), None], "size" => [Some(1.0), Some(2.0), Some(3.0)]).unwrap();
    let err = strict.transform(&live, "requests.csv").unwrap_err().to_string();
    assert!(
        err.contains("requests.csv") && err.contains("row 2") && err.contains("`colour`") && err.contains("\"purple\""),
        "{err}"
    );
    let err = strict.transform(&live.slice(2, 1), "requests.csv").unwrap_err().to_string();
    assert!(err.contains("row 1") && err.contains("no imputer"), "{err}");
    // A column of another kind than in training is refused, in batches and rows alike.
    let numbers = df!("colour" => [1.0, 2.0], "size" => [1.0, 2.0]).unwrap();
    let err = strict.transform(&numbers, "requests.csv").unwrap_err().to_string();
    assert!(err.contains("`colour` holds numbers") && err.contains("fitted on text"), "{err}");
    let row = HashMap::from([("colour".to_string(), Value::Number(1.0)), ("size".to_string(), Value::Number(1.0))]);
    assert!(strict.transform_row(&row).unwrap_err().to_string().contains("holds numbers"));
    let missing =
        strict.transform_row(&HashMap::from([("colour".to_string(), Value::from("red"))])).unwrap_err().to_string();
    assert!(missing.contains("size"), "{missing}");

    let lenient = Pipeline::new()
        .step(
            Step::new("c", Columns::Categorical)
                .then(Transform::OneHot { handle_unknown: HandleUnknown::Ignore, min_frequency: Some(2) }),
        )
        .step(
            Step::new("o", Columns::Names(vec!["colour".into()]))
                .then(Transform::Ordinal { unknown_value: Some(-1.0) }),
        )
        .fit(&TrainSplit::all_rows_for_final_fit(&data))
        .unwrap();
    // green was seen once: grouped as infrequent; purple was never seen: all zeros, ordinal -1.
    assert_eq!(lenient.output_features, ["colour=blue", "colour=red", "colour=infrequent", "colour"]);
    let row = |c: &str| lenient.transform_row(&HashMap::from([("colour".to_string(), Value::from(c))])).unwrap();
    assert_eq!(row("red"), [0.0, 1.0, 0.0, 2.0]);
    assert_eq!(row("green"), [0.0, 0.0, 1.0, 1.0]);
    assert_eq!(row("purple"), [0.0, 0.0, 0.0, -1.0]);
}

#[test]
fn scalers_follow_scikit_learn() {
    let frame = df!("x" => [1.0, 2.0, 3.0, 4.0, 100.0], "k" => [5.0, 5.0, 5.0, 5.0, 5.0]).unwrap();
    let data = Dataset::from_frame(frame, "x.csv").unwrap();
    let fit = |t: Transform| {
        Pipeline::new()
            .step(Step::new("s", Columns::Numeric).then(t))
            .fit(&TrainSplit::all_rows_for_final_fit(&data))
            .unwrap()
    };
    let at = |p: &FittedPipeline, x: f64| {
        p.transform_row(&HashMap::from([("x".to_string(), Value::from(x)), ("k".to_string(), Value::from(5.0))]))
            .unwrap()
    };
    // MinMaxScaler(feature_range=(-1, 1)), in its `x * scale_ + min_` form, rounding included
    // (NumPy gives -0.9999999999999999 and 1.0000000000000002 here too); a constant column maps
    // to the low end.
    let minmax = fit(Transform::MinMax { range: (-1.0, 1.0) });
    assert_eq!(at(&minmax, 1.0), [-0.9999999999999999, -1.0]);
    assert_eq!(at(&minmax, 100.0), [1.0000000000000002, -1.0]);
    // RobustScaler(): median 3, IQR 4 - 2 = 2; a constant column has scale 1.
    let robust = fit(Transform::Robust { quantile_range: (25.0, 75.0) });
    assert_eq!(at(&robust, 100.0), [48.5, 0.0]);
    // StandardScaler(): a constant column maps to 0.
    let standard = fit(Transform::Standard);
    assert_eq!(at(&standard, 5.0)[1], 0.0);
    // Passthrough keeps numeric columns no step selected.
    let passthrough = Pipeline::new()
        .step(Step::new("s", Columns::Names(vec!["x".into()])).then(Transform::Standard))
        .remainder(Remainder::Passthrough)
        .fit(&TrainSplit::all_rows_for_final_fit(&data))
        .unwrap();
    assert_eq!(passthrough.output_features, ["x", "k"]);
    assert_eq!(at(&passthrough, 3.0)[1], 5.0);
}
