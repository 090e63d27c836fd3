//! Run with: cargo run --release --example tabular_penguins
//!
//! Tabular data with missing values and text columns, through the library API: the Palmer
//! penguins (data/penguins.csv) are validated, split, imputed, scaled and one-hot encoded by a
//! kiln-data pipeline fitted on the training rows only, an MLP learns the species, and the
//! package carries the fitted pipeline, so serving takes raw rows with gaps and text. The run
//! is tracked; the confusion matrix, reliability diagram and loss curves are drawn as SVG next
//! to the store. `kiln train --config examples/configs/penguins.toml` does the same from a file.
//!
//! Environment: `KILN_STORE` (default `./kiln-store`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use kiln::data::pipeline::{Columns, HandleUnknown, ImputeStrategy, Step, Transform, Value};
use kiln::data::{
    Dataset, DatasetProfile, LabelEncoder, Pipeline, ProfileOptions, Schema, SplitFractions, TrainSplit,
    stratified_split,
};
use kiln::track::{DatasetInput, Store};
use kiln::train::plot::{Series, calibration_curve, confusion_matrix, line_chart};
use kiln::train::{
    DeviceSpec, EvalReport, Examples, MlpConfig, ModelConfig, ModelPackage, PackageSpec, TrainConfig, train,
};

fn main() -> Result<()> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{root}/data/penguins.csv");
    let data = Dataset::load_csv(&path)?;
    let report = Schema::load(format!("{root}/examples/configs/penguins.schema.toml"))?.check(&data)?;
    println!("{path}: {}", report.summary());

    let labels = data.to_strings("species")?;
    let split = stratified_split(&labels, SplitFractions::default(), 42)?;
    let pipeline = Pipeline::new()
        .step(
            Step::new("measurements", Columns::Numeric).impute(ImputeStrategy::Median, false).then(Transform::Standard),
        )
        .step(
            Step::new("categories", Columns::Names(vec!["island".into(), "sex".into()]))
                .impute(ImputeStrategy::MostFrequent, true)
                .then(Transform::OneHot { handle_unknown: HandleUnknown::Ignore, min_frequency: None }),
        )
        .exclude("species")
        .exclude("year");
    let train_rows = TrainSplit::of_split(&data, &split)?;
    let fitted = pipeline.fit(&train_rows)?;
    println!("pipeline: {} raw columns -> {} features", fitted.input_schema.len(), fitted.width());
    let encoder = LabelEncoder::fit(&labels);
    let classes = encoder.encode(&labels)?;
    let part = |rows: &[usize]| -> Result<Examples> {
        let x = fitted.transform(data.take(rows)?.frame(), &path)?;
        Ok(Examples::new(x.mapv(|v| v as f32), rows.iter().map(|r| classes[*r]).collect())?)
    };
    let (train_set, val_set, test_set) = (part(&split.train)?, part(&split.val)?, part(&split.test)?);

    let store = Store::from_env()?;
    let mut run = store.start_run("penguins-example")?;
    run.log_input(DatasetInput {
        name: "penguins".into(),
        digest: data.hash().into(),
        source: path.clone(),
        rows: Some(data.height() as u64),
        context: Some("train/validation/test".into()),
    })?;
    let model =
        ModelConfig::Mlp(MlpConfig { dropout: 0.1, ..MlpConfig::new(fitted.width(), &[32, 16], encoder.len()) });
    let config = TrainConfig {
        epochs: 40,
        batch_size: 32,
        learning_rate: 5e-3,
        device: DeviceSpec::Cpu,
        ..TrainConfig::default()
    };
    let trained = train(&config, &model, &train_set, Some(&val_set), Some(&mut run), &mut ())?;
    let probabilities = trained.classifier()?.predict_proba(test_set.x.view())?.mapv(f64::from);
    let eval = EvalReport::compute(&test_set.y, probabilities.view(), &encoder.classes)?;
    println!(
        "run {}: test accuracy {:.4}, macro F1 {:.4}, ECE {:.4}",
        run.id(),
        eval.classification.accuracy,
        eval.classification.macro_f1,
        eval.ece
    );

    // Plots for the report, as SVG next to the store.
    let plots = store.root().join("plots").join(run.id());
    let curve = |key: fn(&kiln::train::EpochReport) -> Option<f64>| -> Vec<(f64, f64)> {
        trained.history.iter().filter_map(|e| Some((e.epoch as f64, key(e)?))).collect()
    };
    line_chart(
        &[Series::new("train_loss", curve(|e| Some(e.train_loss))), Series::new("val_loss", curve(|e| e.val_loss))],
        "penguins MLP",
        "epoch",
        "cross-entropy",
        false,
        &plots.join("loss.svg"),
    )?;
    confusion_matrix(
        &eval.classification.confusion,
        &encoder.classes,
        "test confusion matrix",
        &plots.join("confusion.svg"),
    )?;
    calibration_curve(&eval.calibration, "test reliability", &plots.join("calibration.svg"))?;
    println!("plots in {}", plots.display());

    // The package takes raw rows: a gap and text go through the fitted pipeline.
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
    )?
    .with_profile(DatasetProfile::of(train_rows.frame(), &ProfileOptions::default())?)
    .with_eval(eval);
    let dir = run.scratch_dir()?.join("model");
    package.save(&dir)?;
    run.log_artifact("model", &dir)?;
    let predictor = ModelPackage::read(&dir)?.into_predictor()?;
    let row: HashMap<String, Value> = [
        ("island", Value::Text("Biscoe".into())),
        ("bill_length_mm", Value::Number(47.5)),
        ("bill_depth_mm", Value::Null),
        ("flipper_length_mm", Value::Number(217.0)),
        ("body_mass_g", Value::Number(5200.0)),
        ("sex", Value::Null),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let answer = &predictor.predict_records(&[row])?[0];
    println!("a Biscoe penguin, bill 47.5 mm, depth and sex unknown: {} ({:?})", answer.label, answer.probabilities);
    run.finish()?;
    Ok(())
}
