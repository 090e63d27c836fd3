//! `kiln train --config`, `kiln runs plot`, `kiln slurm sweep --backend local`, `kiln serve`
//! and `kiln load-test`, from the shipped penguins config to a served, load-tested model.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use kiln_track::Store;
use serde_json::Value;

use crate::{kiln, repo_file, stdout};

fn config() -> String {
    repo_file("examples/configs/penguins.toml").display().to_string()
}

fn ok_json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

#[test]
fn overrides_come_from_the_environment_and_set_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(dir.path())
        .args(["train", "--config", &config(), "--set", "model.hidden=[8]", "--print-config"])
        .env("KILN_TRAIN__TRAIN__EPOCHS", "3")
        .env("KILN_TRAIN__MODEL__HIDDEN", "[99]")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: toml::Table = stdout(&out).parse().unwrap();
    assert_eq!(printed["train"]["epochs"].as_integer(), Some(3));
    assert_eq!(printed["model"]["hidden"].as_array().unwrap()[0].as_integer(), Some(8), "--set wins over the env");
    assert_eq!(printed["train"]["learning_rate"].as_float(), Some(0.005), "the file's value stays");

    // A misspelt key names the file and the field.
    let out = kiln(dir.path(), &["train", "--config", &config(), "--set", "train.epoch=3", "--print-config"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("penguins.toml") && err.contains("unknown key(s) train.epoch"), "{err}");
    // Inside an array of tables too: a misspelt key of a pipeline step.
    let text =
        std::fs::read_to_string(config()).unwrap().replacen("transform = \"standard\"", "transfrom = \"standard\"", 1);
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, text).unwrap();
    let out = kiln(dir.path(), &["train", "--config", typo.to_str().unwrap(), "--print-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("preprocess.steps[0].transfrom"), "{err}");
    let out = kiln(dir.path(), &["train", "--config", "missing.toml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"), "{out:?}");
}

#[test]
fn train_plot_serve_load_test_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let summary = ok_json(&kiln(&store_dir, &["train", "--config", &config(), "--set", "train.epochs=25", "--json"]));
    let run_id = summary["run_id"].as_str().unwrap().to_string();
    assert!(summary["test"]["accuracy"].as_f64().unwrap() >= 0.9, "{summary}");
    assert_eq!(summary["registered"]["version"], 1, "{summary}");

    let store = Store::open(&store_dir).unwrap();
    let run = store.run(&run_id).unwrap();
    assert_eq!(run.status(), kiln_track::RunStatus::Completed);
    for artifact in ["model", "eval_report.json", "train_config.toml"] {
        assert!(run.artifacts.contains_key(artifact), "{artifact}: {:?}", run.artifacts.keys());
    }
    assert_eq!(run.params["model.hidden"], serde_json::json!([32, 16]));
    assert_eq!(run.params["data.label"], "species");
    assert_eq!(run.inputs[0].rows, Some(344));
    let version = store.registry().resolve("penguins-mlp", "production").unwrap();
    assert_eq!(version.lineage.run_id.as_deref(), Some(run_id.as_str()));
    assert!(version.package_dir.join("pipeline.json").is_file());
    let epochs = store.metrics(&run_id).unwrap().iter().filter(|p| p.key == "val_loss").count();
    assert_eq!(epochs, 25);

    // A stricter gate refuses the next model: exit 3, nothing registered.
    let out = kiln(
        &store_dir,
        &["train", "--config", &config(), "--set", "train.epochs=2", "--set", "register.require={test_accuracy=0.999}"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("penguins-mlp not registered: test_accuracy"), "{}", stdout(&out));
    assert_eq!(store.registry().versions("penguins-mlp").unwrap().len(), 1);

    // Plots, read back by independent checks of the files.
    let png = dir.path().join("plots/curves.png");
    let out = kiln(
        &store_dir,
        &["runs", "plot", &run_id, "--metric", "val_loss", "--metric", "train_loss", "--out", png.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(png_size(&png), (960, 600));
    let svg = dir.path().join("cm.svg");
    let out = kiln(&store_dir, &["runs", "plot", &run_id, "--kind", "confusion", "--out", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("Gentoo") && text.contains("predicted"), "{}", &text[..200]);
    let cal = dir.path().join("cal.svg");
    let out = kiln(&store_dir, &["runs", "plot", &run_id, "--kind", "calibration", "--out", cal.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read_to_string(&cal).unwrap().contains("perfect calibration"));
    let out = kiln(&store_dir, &["runs", "plot", &run_id, "--out", "x.gif"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("must end in .png or .svg"), "{out:?}");

    // Serve the registered model and load-test it with the data file's rows (missing values
    // included: the packaged pipeline imputes them).
    let mut server = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(&store_dir)
        .args(["serve", "-m", "penguins-mlp", "--addr", "127.0.0.1:0", "--log-sample", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("the URL is printed").to_string();
    let penguins = repo_file("data/penguins.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["load-test", "--model", "penguins-mlp", "--url", &url, "--data"])
        .arg(&penguins)
        .args(["--clients", "4", "--requests", "300", "--warmup", "20", "--json"])
        .output()
        .unwrap();
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();
    let report = ok_json(&out);
    assert_eq!(report["requests"], 300, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["rows_left_out"], 0, "{report}");
    assert!(report["p50_ms"].as_f64().unwrap() > 0.0);

    // A sweep of the same config, run here by the local executor: 2 workers, 4 trials.
    let sweep_dir = dir.path().join("sweep");
    let out = kiln(
        &store_dir,
        &[
            "slurm",
            "sweep",
            "--config",
            &config(),
            "--backend",
            "local",
            "--workers",
            "2",
            "--trials",
            "4",
            "--dir",
            sweep_dir.to_str().unwrap(),
            "--wait",
            "--json",
        ],
    );
    let sweep = ok_json(&out);
    assert_eq!(sweep["trials"], 4, "{sweep}");
    let best = &sweep["best"][0];
    assert!(best["value"].as_f64().unwrap().is_finite(), "{sweep}");
    assert!(best["params"]["train.learning_rate"].as_f64().is_some(), "{sweep}");
    let parent = sweep["sweep_run"].as_str().unwrap();
    let trials: Vec<_> = store
        .runs(Some("penguins"))
        .unwrap()
        .into_iter()
        .filter(|r| r.meta.parent_run_id.as_deref() == Some(parent))
        .collect();
    assert_eq!(trials.len(), 4);
    for t in &trials {
        let curve = store.metrics(&t.meta.run_id).unwrap().iter().filter(|p| p.key == "val_loss").count();
        assert!(curve >= 1, "trial {} logged its validation curve", t.meta.run_id);
    }
    assert_eq!(store.run(parent).unwrap().status(), kiln_track::RunStatus::Completed);
    assert!(sweep_dir.join("study.jsonl").is_file());
}

/// `task = "regression"`: the shipped penguins body-mass config trains on the rows with a
/// target (the others quarantined and logged), reports RMSE/MAE/R² in grams, logs a residual
/// plot, packages the target scaler (format 4) and registers behind a lower-is-better gate;
/// kiln-serve refuses the package with a reason instead of serving it as a classifier.
#[test]
fn a_regression_trains_evaluates_and_registers_behind_a_lower_is_better_gate() {
    let mass = repo_file("examples/configs/penguins_regression.toml").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let summary = ok_json(&kiln(&store_dir, &["train", "--config", &mass, "--set", "train.epochs=80", "--json"]));
    assert_eq!(summary["task"], "regression", "{summary}");
    let rmse = summary["test"]["rmse"].as_f64().unwrap();
    let mae = summary["test"]["mae"].as_f64().unwrap();
    // Body mass spreads ~800 g; the measurements, species and sex explain most of it.
    assert!(rmse > 100.0 && rmse < 450.0 && mae < rmse, "{summary}");
    assert!(summary["test"]["r2"].as_f64().unwrap() > 0.6, "{summary}");
    assert_eq!(summary["quarantined_rows"], 2, "{summary}");
    assert_eq!(summary["registered"]["version"], 1, "{summary}");

    let store = Store::open(&store_dir).unwrap();
    let run_id = summary["run_id"].as_str().unwrap().to_string();
    let run = store.run(&run_id).unwrap();
    assert_eq!(run.params["data.task"], "regression");
    assert_eq!(run.params["model.task"], "regression");
    for artifact in ["model", "eval_report.json", "residuals.svg", "quarantine.parquet"] {
        assert!(run.artifacts.contains_key(artifact), "{artifact}: {:?}", run.artifacts.keys());
    }
    let residuals = store.object_path(&run.artifacts["residuals.svg"].files[0].digest).unwrap();
    let svg = std::fs::read_to_string(residuals).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("true − predicted (body_mass_g)"), "{}", &svg[..300]);
    let metrics = store.metrics(&run_id).unwrap();
    let last = |key: &str| metrics.iter().filter(|p| p.key == key).map(|p| p.value).next_back();
    assert_eq!(last("test_rmse"), Some(rmse));
    assert!(last("val_rmse").is_some() && last("train_r2").is_some());

    let version = store.registry().resolve("penguins-mass", "production").unwrap();
    assert_eq!(version.metrics["test_rmse"], rmse);
    let package = kiln_train::ModelPackage::read(&version.package_dir).unwrap();
    assert_eq!(package.manifest.format_version, 4);
    assert!(matches!(package.manifest.task, kiln_train::PackageTask::Regression { .. }));
    assert_eq!(package.regression_eval().map(|r| r.rmse), Some(rmse));
    let predictor = package.into_predictor().unwrap();
    let record = |species: &str, flipper: f64| -> std::collections::HashMap<String, kiln_data::pipeline::Value> {
        use kiln_data::pipeline::Value;
        [
            ("species", Value::Text(species.into())),
            ("island", Value::Text("Biscoe".into())),
            ("bill_length_mm", Value::Number(46.0)),
            ("bill_depth_mm", Value::Number(15.0)),
            ("flipper_length_mm", Value::Number(flipper)),
            ("sex", Value::Text("male".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    let grams = predictor.predict_values_records(&[record("Gentoo", 225.0), record("Adelie", 185.0)]).unwrap();
    assert!(grams[0] > 4500.0 && grams[0] < 6500.0 && grams[0] > grams[1] + 500.0, "{grams:?}");
    let err = predictor.predict_records(&[record("Gentoo", 225.0)]).unwrap_err().to_string();
    assert!(err.contains("regression model") && err.contains("predict_values"), "{err}");

    // A gate the model cannot pass: lower is better, so 1 g is a maximum.
    let out = kiln(
        &store_dir,
        &["train", "--config", &mass, "--set", "train.epochs=5", "--set", "register.require={test_rmse=1.0}"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("is above the maximum 1"), "{}", stdout(&out));
    assert_eq!(store.registry().versions("penguins-mass").unwrap().len(), 1);

    // No confusion matrix for a regression: the error says where its plot is.
    let out = kiln(&store_dir, &["runs", "plot", &run_id, "--kind", "confusion", "--out", "cm.svg"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("residuals.svg"), "{err}");

    // kiln-serve answers classes: it refuses the package and says why.
    let out = kiln(&store_dir, &["serve", "-m", "penguins-mass", "--addr", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("classification packages only"), "{err}");

    // A sweep worker optimises val_rmse (lower is better) over regression trials.
    let journal = dir.path().join("mass-study.jsonl");
    let out = kiln(
        &store_dir,
        &[
            "train",
            "--config",
            &mass,
            "--set",
            "train.epochs=4",
            "--study",
            journal.to_str().unwrap(),
            "--trials",
            "2",
            "--json",
        ],
    );
    let worker = ok_json(&out);
    assert_eq!(worker["completed"], 2, "{worker}");
    let best = worker["best"]["value"].as_f64().unwrap();
    assert!(best.is_finite() && best > 0.0, "val_rmse in grams: {worker}");

    // A regression of a text column, and a regression loss on a classification, are refused.
    let out = kiln(&store_dir, &["train", "--config", &mass, "--set", "data.label=species"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"species\"") && err.contains("must hold a number"), "{err}");
    let out = kiln(&store_dir, &["train", "--config", &config(), "--set", "loss={kind=\"mse\"}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loss is set") && err.contains("regression"), "{err}");
}
