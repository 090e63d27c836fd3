//! Run with: cargo run --release --example penguins_regression
//!
//! A regression through the library: the Palmer penguins' body mass in grams
//! (data/penguins.csv) from the other columns. The rows without a body mass fail the schema
//! and are set aside (counted, not silently dropped); a kiln-data pipeline fitted on the
//! training rows imputes and scales the measurements and one-hot encodes species, island and
//! sex; an MLP learns the standardised mass with MSE through kiln's trainer
//! ([`RegressionTask`] and [`fit`]), stopping early on `val_rmse`. Test RMSE and MAE are printed
//! in grams next to an ordinary least-squares baseline computed here on the same features; the
//! package keeps the target scaler, so it predicts grams from raw rows; it is registered as
//! `penguins-mass@production` behind a lower-is-better gate on test RMSE and MAE. The residual
//! plot and the loss curves are drawn as SVG next to the store.
//! `kiln train --config examples/configs/penguins_regression.toml` does the same from a file.
//!
//! Environment: `KILN_STORE` (default `./kiln-store`).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use kiln::data::pipeline::{Columns, HandleUnknown, ImputeStrategy, Step, Transform, Value};
use kiln::data::{
    Dataset, DatasetProfile, Pipeline, ProfileOptions, Rows, Schema, SplitFractions, TrainSplit, random_split,
};
use kiln::track::{DatasetInput, RegisterOptions, Store};
use kiln::train::plot::{Series, line_chart, residual_plot};
use kiln::train::{
    DeviceSpec, EarlyStopping, MlpConfig, ModelConfig, ModelPackage, Monitor, PackageSpec, PromotionGate,
    RegressionLoss, RegressionReport, RegressionTask, Regressor, TargetScaler, TrainConfig, fit,
};
use ndarray::{Array1, Array2, ArrayView2};

const TARGET: &str = "body_mass_g";
const MODEL: &str = "penguins-mass";

fn main() -> Result<()> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{root}/data/penguins.csv");
    let raw = Dataset::load_csv(&path)?;
    // The regression schema is the penguins' with a body mass required in every row.
    let schema = Schema::load(format!("{root}/examples/configs/penguins_regression.schema.toml"))?;
    let (data, quarantine) = schema.split_valid(&raw)?;
    println!(
        "{path}: {} rows, {} set aside ({})",
        raw.height(),
        quarantine.report.bad_rows.len(),
        quarantine.report.summary()
    );
    let mass: Vec<f32> = data.to_matrix(&[TARGET.to_string()])?.column(0).iter().map(|v| *v as f32).collect();

    let split = random_split(data.height(), SplitFractions::default(), 42);
    let pipeline = Pipeline::new()
        .step(
            Step::new("measurements", Columns::Numeric).impute(ImputeStrategy::Median, false).then(Transform::Standard),
        )
        .step(
            Step::new("categories", Columns::Names(vec!["species".into(), "island".into(), "sex".into()]))
                .impute(ImputeStrategy::MostFrequent, true)
                .then(Transform::OneHot { handle_unknown: HandleUnknown::Ignore, min_frequency: None }),
        )
        .exclude(TARGET)
        .exclude("year");
    let train_rows = TrainSplit::of_split(&data, &split)?;
    let fitted = pipeline.fit(&train_rows)?;
    let part = |name: &str, rows: &[usize]| -> Result<Rows<f32>> {
        let x = fitted.transform(data.take(rows)?.frame(), &path)?;
        Ok(Rows::new(name, x.mapv(|v| v as f32), rows.iter().map(|r| mass[*r]).collect())?)
    };
    let (train_set, val_set, test_set) =
        (part("training", &split.train)?, part("validation", &split.val)?, part("test", &split.test)?);
    println!(
        "{} train / {} validation / {} test rows, {} raw columns -> {} features",
        split.train.len(),
        split.val.len(),
        split.test.len(),
        fitted.input_schema.len(),
        fitted.width()
    );

    let store = Store::from_env()?;
    let mut run = store.start_run(MODEL)?;
    run.log_input(DatasetInput {
        name: "penguins".into(),
        digest: data.hash().into(),
        source: path.clone(),
        rows: Some(data.height() as u64),
        context: Some("train/validation/test".into()),
    })?;

    // The model learns the standardised mass; metrics and predictions come back in grams.
    let target = TargetScaler::fit(train_set.targets(), "training")?;
    let arch = ModelConfig::Mlp(MlpConfig::new(fitted.width(), &[32, 16], 1));
    let task = RegressionTask::new(arch.clone(), RegressionLoss::Mse, target)?;
    let config = TrainConfig {
        epochs: 300,
        batch_size: 32,
        learning_rate: 3e-3,
        seed: 7,
        device: DeviceSpec::Cpu,
        monitor: Monitor::new("val_rmse"),
        early_stopping: Some(EarlyStopping { patience: 30, min_delta: 0.0 }),
        ..TrainConfig::default()
    };
    let fitted_model = fit(&config, &task, train_set.clone(), Some(val_set.clone()), Some(&mut run), &mut ())?;
    let best = &fitted_model.history[fitted_model.best_epoch.max(1) - 1];
    println!(
        "{} epochs ({:?}); kept epoch {}: val RMSE {:.1} g",
        fitted_model.history.len(),
        fitted_model.stop,
        fitted_model.best_epoch,
        best.metric("val_rmse").unwrap_or(f64::NAN)
    );

    let truth: Vec<f64> = test_set.targets().iter().map(|v| f64::from(*v)).collect();
    let predicted = Regressor::from_weights(arch, target, &fitted_model.weights)?.predict(test_set.x().view())?;
    let mlp = RegressionReport::new(&truth, &predicted)?;
    let baseline = least_squares(train_set.x().view(), train_set.targets(), test_set.x().view())?;
    let ols = RegressionReport::new(&truth, &baseline)?;
    println!("test ({} penguins)       RMSE (g)   MAE (g)     R²", mlp.rows);
    println!("  MLP                  {:>9.1} {:>9.1} {:>6.3}", mlp.rmse, mlp.mae, mlp.r2);
    println!("  least squares        {:>9.1} {:>9.1} {:>6.3}", ols.rmse, ols.mae, ols.r2);
    for (name, value) in mlp.metrics() {
        run.log_metric(&format!("test_{name}"), fitted_model.history.len() as u64, value)?;
    }
    run.log_metric("baseline_test_rmse", 0, ols.rmse)?;

    let plots = store.root().join("plots").join(run.id());
    residual_plot(&truth, &predicted, "penguin body mass: test residuals", "g", &plots.join("residuals.svg"))?;
    let curve = |name: &str| -> Vec<(f64, f64)> {
        fitted_model.history.iter().filter_map(|e| Some((e.epoch as f64, e.metric(name)?))).collect()
    };
    line_chart(
        &[Series::new("train_rmse", curve("train_rmse")), Series::new("val_rmse", curve("val_rmse"))],
        "penguin body mass, MLP",
        "epoch",
        "RMSE (g)",
        false,
        &plots.join("rmse.svg"),
    )?;
    println!("plots in {}", plots.display());

    // The package keeps the pipeline and the target scaler: raw rows in, grams out.
    let package = ModelPackage::regression(
        &fitted_model,
        &task,
        PackageSpec {
            name: MODEL.into(),
            train_config: config,
            features: Vec::new(),
            input_schema: Schema::new(Vec::new()),
            scaler: None,
            pipeline: Some(fitted),
            labels: Default::default(),
            label_column: TARGET.into(),
            metrics: BTreeMap::from([("baseline_test_rmse".to_string(), ols.rmse)]),
            lineage: Default::default(),
        },
    )?
    .with_profile(DatasetProfile::of(train_rows.frame(), &ProfileOptions::default())?)
    .with_regression_eval(mlp)?;
    let dir = run.scratch_dir()?.join("model");
    package.save(&dir)?;
    run.log_artifact("model", &dir)?;

    // Registered only if test RMSE and MAE are low enough, and no worse than production's.
    let gate = PromotionGate {
        thresholds: BTreeMap::from([("test_rmse".into(), 450.0), ("test_mae".into(), 350.0)]),
        lower_is_better: vec!["test_rmse".into(), "test_mae".into()],
        tolerance: 25.0,
    };
    let promotion = gate.promote(
        &store.registry(),
        MODEL,
        "production",
        &dir,
        RegisterOptions {
            run_id: Some(run.id().into()),
            dataset_digests: vec![data.hash().into()],
            metrics: package.manifest.metrics.clone(),
            description: Some("MLP regression of penguin body mass, from examples/penguins_regression.rs".into()),
            ..Default::default()
        },
    )?;
    match &promotion.version {
        Some(v) => println!("registered {MODEL} v{} as production", v.version),
        None => println!("{MODEL} not registered: {}", promotion.decision.reasons.join("; ")),
    }

    let predictor = ModelPackage::load(&dir)?;
    let penguin: HashMap<String, Value> = [
        ("species", Value::Text("Gentoo".into())),
        ("island", Value::Text("Biscoe".into())),
        ("bill_length_mm", Value::Number(47.5)),
        ("bill_depth_mm", Value::Number(15.0)),
        ("flipper_length_mm", Value::Number(217.0)),
        ("sex", Value::Null),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let grams = predictor.predict_values_records(&[penguin])?[0];
    println!("a Gentoo from Biscoe, bill 47.5 × 15.0 mm, flipper 217 mm, sex unknown: {grams:.0} g");
    run.finish()?;
    if mlp.rmse > 450.0 {
        bail!("test RMSE {:.1} g is far above what this data allows (about 300 g)", mlp.rmse);
    }
    Ok(())
}

/// Ordinary least squares with an intercept, fitted on `x`/`y` and applied to `test`. The
/// one-hot columns of a category sum to one, like the intercept, so the normal equations get
/// a ridge of 1e-6 to stay solvable (it changes no prediction measurably).
fn least_squares(x: ArrayView2<'_, f32>, y: &[f32], test: ArrayView2<'_, f32>) -> Result<Vec<f64>> {
    let with_intercept = |x: ArrayView2<'_, f32>| {
        let mut a = Array2::<f64>::ones((x.nrows(), x.ncols() + 1));
        a.slice_mut(ndarray::s![.., 1..]).assign(&x.mapv(f64::from));
        a
    };
    let a = with_intercept(x);
    let b = Array1::from_iter(y.iter().map(|v| f64::from(*v)));
    let mut gram = a.t().dot(&a);
    for i in 0..gram.nrows() {
        gram[[i, i]] += 1e-6;
    }
    let w = cholesky_solve(gram, a.t().dot(&b))?;
    Ok(with_intercept(test).dot(&w).to_vec())
}

/// Solves `m w = rhs` for a symmetric positive definite `m`.
fn cholesky_solve(m: Array2<f64>, rhs: Array1<f64>) -> Result<Array1<f64>> {
    let n = m.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            if i == j {
                let d = m[[i, i]] - s;
                if d <= 0.0 {
                    bail!("the normal equations are not positive definite (column {i})");
                }
                l[[i, i]] = d.sqrt();
            } else {
                l[[i, j]] = (m[[i, j]] - s) / l[[j, j]];
            }
        }
    }
    let mut z = Array1::<f64>::zeros(n);
    for i in 0..n {
        z[i] = (rhs[i] - (0..i).map(|k| l[[i, k]] * z[k]).sum::<f64>()) / l[[i, i]];
    }
    let mut w = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        w[i] = (z[i] - (i + 1..n).map(|k| l[[k, i]] * w[k]).sum::<f64>()) / l[[i, i]];
    }
    Ok(w)
}
