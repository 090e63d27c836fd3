//! A researcher's own model, loss, metrics and data on kiln's trainer, through the `Task` seam:
//! a residual MLP with batch norm and dropout, defined here (not in kiln-train), trained with
//! binary cross-entropy on logits, `accuracy` and `auc` metrics, and items drawn from a
//! `Source` whose augmentation comes from the per-item generator kiln supplies.

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::{log_sigmoid, relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln_data::{FnSource, Source, SplitMix64, from_fn};
use kiln_train::{
    CheckpointConfig, EXIT_INTERRUPTED, EarlyStopping, Error, Fitted, GradClip, Hooks, LoaderConfig, LrSchedule,
    Monitor, Step, StepReport, StopReason, Task, Totals, TrainConfig, ValidationReport, fit, latest_checkpoint,
    roc_auc,
};

const FEATURES: usize = 8;

/// `x → dense → [bn → relu → dropout → dense] + x → bn → relu → logit`.
#[derive(Module, Debug)]
struct ResMlp<B: Backend> {
    input: Linear<B>,
    inner: Linear<B>,
    norm_a: BatchNorm<B>,
    norm_b: BatchNorm<B>,
    dropout: Dropout,
    head: Linear<B>,
}

impl<B: Backend> ResMlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let h = self.input.forward(x);
        let r = self.dropout.forward(relu(self.norm_a.forward(h.clone())));
        let h = relu(self.norm_b.forward(self.inner.forward(r) + h));
        let rows = h.dims()[0];
        self.head.forward(h).reshape([rows])
    }
}

/// Binary classification of a noisy, non-linear rule.
struct Binary {
    hidden: usize,
    dropout: f64,
}

impl Task for Binary {
    type Item = ([f32; FEATURES], f32);
    type Model<B: Backend> = ResMlp<B>;
    type Batch<B: Backend> = (Tensor<B, 2>, Tensor<B, 1>);

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"kind": "res_mlp", "hidden": self.hidden, "dropout": self.dropout})
    }

    fn init<B: Backend>(&self, device: &B::Device) -> ResMlp<B> {
        ResMlp {
            input: LinearConfig::new(FEATURES, self.hidden).init(device),
            inner: LinearConfig::new(self.hidden, self.hidden).init(device),
            norm_a: BatchNormConfig::new(self.hidden).init(device),
            norm_b: BatchNormConfig::new(self.hidden).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            head: LinearConfig::new(self.hidden, 1).init(device),
        }
    }

    fn collate<B: Backend>(&self, items: Vec<Self::Item>, device: &B::Device) -> kiln_train::Result<Self::Batch<B>> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|(x, _)| *x).collect();
        let y: Vec<f32> = items.iter().map(|(_, y)| *y).collect();
        Ok((
            Tensor::from_data(TensorData::new(x, [n, FEATURES]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        ))
    }

    fn step<B: Backend>(&self, model: &ResMlp<B>, (x, y): Self::Batch<B>) -> kiln_train::Result<Step<B>> {
        let rows = y.dims()[0];
        let logits = model.forward(x);
        // Binary cross-entropy on logits, written out: -(y·log σ(z) + (1-y)·log σ(-z)).
        let loss = (y.clone() * log_sigmoid(logits.clone())
            + (y.clone().neg() + 1.0) * log_sigmoid(logits.clone().neg()))
        .mean()
        .neg();
        let scores = sigmoid(logits.detach());
        let correct = scores.clone().greater_equal_elem(0.5).float().equal(y.clone()).float();
        Ok(Step::new(loss, rows).sum("accuracy", correct).values("score", scores).values("label", y))
    }

    fn metrics(&self, totals: &Totals) -> kiln_train::Result<Vec<(String, f64)>> {
        let mut metrics = totals.means();
        let (scores, labels) = (totals.values("score"), totals.values("label"));
        if !scores.is_empty() {
            let positive: Vec<bool> = labels.iter().map(|l| *l > 0.5).collect();
            let scores: Vec<f64> = scores.iter().map(|s| f64::from(*s)).collect();
            // Undefined when the validation set holds one class only.
            metrics.push(("auc".into(), roc_auc(&positive, &scores).unwrap_or(f64::NAN)));
        }
        Ok(metrics)
    }
}

type Items = FnSource<fn(usize, &mut SplitMix64) -> kiln_data::Result<([f32; FEATURES], f32)>>;

/// Base features from the item's index; the label from a rule on them; augmentation (a small
/// jitter) from the item's generator.
fn item(index: usize, offset: u64, rng: &mut SplitMix64) -> ([f32; FEATURES], f32) {
    let mut base = SplitMix64::new(index as u64 + offset);
    let mut x = [0f32; FEATURES];
    for v in &mut x {
        *v = base.next_f64() as f32 * 2.0 - 1.0;
    }
    let y = f32::from(u8::from(x[0] * x[1] + 0.5 * x[2] > 0.0));
    for v in &mut x {
        *v += (rng.next_f64() as f32 - 0.5) * 0.1;
    }
    (x, y)
}

fn train_items(index: usize, rng: &mut SplitMix64) -> kiln_data::Result<([f32; FEATURES], f32)> {
    Ok(item(index, 0, rng))
}

fn val_items(index: usize, rng: &mut SplitMix64) -> kiln_data::Result<([f32; FEATURES], f32)> {
    Ok(item(index, 1 << 40, rng))
}

fn sources() -> (Items, Items) {
    (
        from_fn("training", 300, "train-v1", train_items as fn(usize, &mut SplitMix64) -> _),
        from_fn("validation", 120, "val-v1", val_items as fn(usize, &mut SplitMix64) -> _),
    )
}

fn task() -> Binary {
    Binary { hidden: 16, dropout: 0.2 }
}

/// 300 items in batches of 16 (19 batches), 2 per step: 10 steps per epoch, 5 epochs.
fn config(dir: &Path, workers: usize) -> TrainConfig {
    TrainConfig {
        epochs: 5,
        batch_size: 16,
        accumulate: 2,
        learning_rate: 3e-3,
        warmup_steps: 4,
        schedule: LrSchedule::Cosine { min_lr: 1e-4 },
        grad_clip: Some(GradClip::Norm(1.0)),
        device: kiln_train::DeviceSpec::Cpu,
        monitor: Monitor::new("val_auc"),
        early_stopping: Some(EarlyStopping { patience: 10, min_delta: 0.0 }),
        checkpoint: Some(CheckpointConfig { every_steps: 3, keep_best: 2, ..CheckpointConfig::new(dir) }),
        loader: LoaderConfig { workers, prefetch: 2 },
        ..TrainConfig::default()
    }
}

struct StopAt(u64);

impl Hooks for StopAt {
    fn on_step(&mut self, step: &StepReport) -> ControlFlow<()> {
        if step.step == self.0 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
}

fn fit_fresh(workers: usize) -> Fitted {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = sources();
    fit(&config(dir.path(), workers), &task(), train, Some(val), None, &mut ()).unwrap()
}

/// Predicted scores of the kept weights on the validation items.
fn scores(fitted: &Fitted) -> Vec<f32> {
    type Cpu = burn::backend::Flex;
    let device = Default::default();
    let model = fitted.load(task().init::<Cpu>(&device), &device).unwrap();
    let (_, val) = sources();
    let items = (0..120).map(|i| val.get(i, &mut SplitMix64::new(0)).unwrap()).collect();
    let (x, _) = task().collate::<Cpu>(items, &device).unwrap();
    model.forward(x).into_data().to_vec::<f32>().unwrap()
}

fn assert_same(resumed: &Fitted, reference: &Fitted) {
    assert_eq!(resumed.step_losses, reference.step_losses, "per-step loss curve");
    let strip = |f: &Fitted| {
        f.history.iter().map(|e| (e.epoch, e.step, e.train_loss, e.val_loss, e.metrics.clone())).collect::<Vec<_>>()
    };
    assert_eq!(strip(resumed), strip(reference), "epoch reports (time aside)");
    assert_eq!(resumed.best_epoch, reference.best_epoch);
    assert_eq!(scores(resumed), scores(reference), "predictions of the kept weights");
}

#[test]
fn a_user_model_trains_with_named_metrics_and_resumes_exactly_with_any_worker_count() {
    let reference = fit_fresh(0);
    assert_eq!(reference.stop, StopReason::Completed);
    assert_eq!(reference.steps, 50);
    let last = reference.history.last().unwrap();
    for key in ["train_accuracy", "val_accuracy", "val_auc"] {
        assert!(last.metrics.contains_key(key), "{key} in {:?}", last.metrics);
    }
    assert!(!last.metrics.contains_key("train_auc"), "per-row values are kept for validation only");
    let first = &reference.history[0];
    assert!(last.metric("val_auc").unwrap() > 0.75, "{:?}", last.metrics);
    assert!(last.train_loss < first.train_loss, "{} -> {}", first.train_loss, last.train_loss);
    let best = reference.history.iter().map(|e| e.metric("val_auc").unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(reference.history[reference.best_epoch - 1].metric("val_auc"), Some(best), "best by val_auc (max)");
    // The kept weights load into a fresh model on the inference backend.
    let model = reference.load(task().init::<burn::backend::Flex>(&Default::default()), &Default::default()).unwrap();
    // Counted by hand (burn counts batch norm's running statistics too): counting a fresh
    // model would initialise its lazy parameters from burn's process-wide generator while
    // another test trains, and change that training's draws.
    let (h, f) = (16, FEATURES);
    assert_eq!(model.num_params(), (f * h + h) + (h * h + h) + 2 * 4 * h + (h + 1));

    // The same training with two loader workers is the same training.
    assert_same(&fit_fresh(2), &reference);

    for workers in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (train, val) = sources();
        let first = fit(&config(dir.path(), workers), &task(), train, Some(val), None, &mut StopAt(14)).unwrap();
        assert_eq!((first.stop, first.steps), (StopReason::Requested, 14));
        let info = latest_checkpoint(dir.path()).unwrap().unwrap();
        assert_eq!((info.step, info.epoch), (14, 2), "a mid-epoch checkpoint");
        // Resumed with the other worker count: an adjustable setting.
        let (train, val) = sources();
        let resumed = fit(&config(dir.path(), 2 - workers), &task(), train, Some(val), None, &mut ()).unwrap();
        assert_eq!(resumed.resumed_from, Some(14));
        assert_same(&resumed, &reference);
    }
}

/// Validation every 4 steps within epochs (10 steps each) reaches the hooks and the run, and
/// neither it nor tracking changes the training: the loss curve and the epochs' metrics are
/// those of an untracked training without it.
#[test]
fn validation_within_epochs_is_reported_and_changes_nothing() {
    struct Seen(Vec<(u64, usize)>);
    impl Hooks for Seen {
        fn on_validation(&mut self, v: &ValidationReport) -> ControlFlow<()> {
            assert!(v.metrics.contains_key("val_auc") && v.val_loss.is_finite(), "{v:?}");
            self.0.push((v.step, v.epoch));
            ControlFlow::Continue(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = kiln_track::Store::open(dir.path().join("store")).unwrap();
    let mut run = store.start_run("custom").unwrap();
    let config = TrainConfig { val_every_steps: 4, epochs: 2, ..config(&dir.path().join("ckpt"), 0) };
    let (train, val) = sources();
    let mut seen = Seen(Vec::new());
    let fitted = fit(&config, &task(), train, Some(val), Some(&mut run), &mut seen).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    assert_eq!(seen.0, vec![(4, 1), (8, 1), (12, 2), (16, 2)], "not at 10 and 20: epoch ends validate anyway");
    let logged: Vec<u64> =
        store.metrics(&id).unwrap().iter().filter(|p| p.key == "step_val_auc").map(|p| p.step).collect();
    assert_eq!(logged, vec![4, 8, 12, 16]);
    let (train, val) = sources();
    let plain = TrainConfig { val_every_steps: 0, checkpoint: None, ..config.clone() };
    let reference = fit(&plain, &task(), train, Some(val), None, &mut ()).unwrap();
    assert_eq!(fitted.step_losses, reference.step_losses);
    assert_eq!(
        fitted.history.iter().map(|e| &e.metrics).collect::<Vec<_>>(),
        reference.history.iter().map(|e| &e.metrics).collect::<Vec<_>>()
    );
}

#[test]
fn a_failing_item_stops_training_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for workers in [0, 2] {
        let train = from_fn("patches.h5", 300, "x", |index, rng: &mut SplitMix64| {
            if index == 123 {
                Err(kiln_data::Error::InvalidArgument("chunk 7 fails its checksum".into()))
            } else {
                Ok(item(index, 0, rng))
            }
        });
        let config = TrainConfig {
            checkpoint: None,
            early_stopping: None,
            monitor: Monitor::new("train_loss"),
            ..config(dir.path(), workers)
        };
        let err = fit(&config, &task(), train, None, None, &mut ()).unwrap_err().to_string();
        assert!(err.contains("patches.h5: item 123: invalid argument: chunk 7 fails its checksum"), "{err}");
    }
}

#[test]
fn resume_refuses_other_data_or_another_task_and_unknown_metrics_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = sources();
    fit(&config(dir.path(), 0), &task(), train, Some(val), None, &mut StopAt(4)).unwrap();
    let (_, val) = sources();
    let other = from_fn("training", 300, "train-v2", train_items as fn(usize, &mut SplitMix64) -> _);
    let err = fit(&config(dir.path(), 0), &task(), other, Some(val), None, &mut ()).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint { message, .. } if message.contains("data differ")), "{err}");
    let (train, val) = sources();
    let wider = Binary { hidden: 32, ..task() };
    let err = fit(&config(dir.path(), 0), &wider, train, Some(val), None, &mut ()).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint { message, .. } if message.contains("\"hidden\":32")), "{err}");

    let (train, val) = sources();
    let config = TrainConfig { checkpoint: None, monitor: Monitor::new("val_f1"), ..config(dir.path(), 0) };
    let err = fit(&config, &task(), train, Some(val), None, &mut ()).unwrap_err().to_string();
    assert!(err.contains("val_f1") && err.contains("val_auc") && err.contains("train_accuracy"), "{err}");
}

/// The body of the child processes below: `config(dir, workers)` slowed down, exiting with
/// `EXIT_INTERRUPTED` when a signal stopped it.
#[test]
#[ignore = "run as a child process by the signal test"]
fn custom_child_trainer() {
    let (Some(dir), Some(workers)) = (std::env::var_os("KILN_CUSTOM_CHILD"), std::env::var_os("KILN_CUSTOM_WORKERS"))
    else {
        return;
    };
    let workers: usize = workers.to_string_lossy().parse().unwrap();
    struct Slow;
    impl Hooks for Slow {
        fn on_step(&mut self, _: &StepReport) -> ControlFlow<()> {
            std::thread::sleep(Duration::from_millis(40));
            ControlFlow::Continue(())
        }
    }
    let (train, val) = sources();
    let fitted = fit(&config(Path::new(&dir), workers), &task(), train, Some(val), None, &mut Slow).unwrap();
    if matches!(fitted.stop, StopReason::Interrupted { .. }) {
        std::process::exit(EXIT_INTERRUPTED);
    }
}

#[test]
fn sigterm_mid_epoch_then_resume_reproduces_the_uninterrupted_curve_with_0_and_2_workers() {
    let reference = fit_fresh(0);
    for workers in [0usize, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "custom::custom_child_trainer", "--ignored", "--nocapture", "--test-threads=1"])
            .env("KILN_CUSTOM_CHILD", dir.path())
            .env("KILN_CUSTOM_WORKERS", workers.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while latest_checkpoint(dir.path()).ok().flatten().is_none_or(|i| i.step < 12) {
            assert!(Instant::now() < deadline, "the child wrote no checkpoint");
            std::thread::sleep(Duration::from_millis(5));
        }
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(EXIT_INTERRUPTED), "{workers} workers: {status:?}");
        let info = latest_checkpoint(dir.path()).unwrap().unwrap();
        assert!(info.step < 50, "{workers} workers: stopped before the end: {info:?}");
        let (train, val) = sources();
        let resumed = fit(&config(dir.path(), workers), &task(), train, Some(val), None, &mut ()).unwrap();
        assert_eq!(resumed.resumed_from, Some(info.step));
        assert_same(&resumed, &reference);
    }
}

/// The shipped regression task: a target in large units (grams, say) learned standardised;
/// `val_rmse` picks the kept weights, and a `Regressor` with them predicts in the target's
/// units with exactly the RMSE the training reported for that epoch.
#[test]
fn the_regression_task_reports_and_predicts_in_the_targets_units() {
    use kiln_data::Rows;
    use kiln_train::{ModelConfig, RegressionLoss, RegressionReport, RegressionTask, Regressor, TargetScaler};
    use ndarray::Array2;
    let make = |n: usize, seed: u64| {
        let mut rng = SplitMix64::new(seed);
        let x = Array2::from_shape_fn((n, 4), |_| rng.next_f64() as f32 * 2.0 - 1.0);
        let y: Vec<f32> = x
            .rows()
            .into_iter()
            .map(|r| 4000.0 + 600.0 * r[0] - 300.0 * r[1] * r[2] + 50.0 * (rng.next_f64() as f32 - 0.5))
            .collect();
        (x, y)
    };
    let ((xt, yt), (xv, yv)) = (make(400, 1), make(100, 2));
    let scaler = TargetScaler::fit(&yt, "training").unwrap();
    assert!((scaler.mean - 4000.0).abs() < 60.0, "{scaler:?}");
    let task = RegressionTask::new(ModelConfig::mlp(4, &[32, 16], 1), RegressionLoss::Mse, scaler).unwrap();
    let config = TrainConfig {
        epochs: 30,
        batch_size: 32,
        learning_rate: 3e-3,
        device: kiln_train::DeviceSpec::Cpu,
        monitor: Monitor::new("val_rmse"),
        ..TrainConfig::default()
    };
    let train = Rows::new("training", xt, yt).unwrap();
    let val = Rows::new("validation", xv.clone(), yv.clone()).unwrap();
    let fitted = fit(&config, &task, train, Some(val), None, &mut ()).unwrap();
    let best = &fitted.history[fitted.best_epoch - 1];
    let rmse = best.metric("val_rmse").unwrap();
    assert!(rmse < 120.0, "val_rmse {rmse} g (the target's spread is ~380 g)");
    assert!(best.metric("val_r2").unwrap() > 0.85, "{:?}", best.metrics);
    assert!(fitted.history.iter().all(|e| e.metric("val_rmse").unwrap() >= rmse), "the kept epoch is the lowest");

    let regressor = Regressor::from_weights(task.arch().clone(), scaler, &fitted.weights).unwrap();
    let predicted = regressor.predict(xv.view()).unwrap();
    let truth: Vec<f64> = yv.iter().map(|v| f64::from(*v)).collect();
    let report = RegressionReport::new(&truth, &predicted).unwrap();
    assert!((report.rmse - rmse).abs() < 1e-3 * rmse, "{} vs {rmse}", report.rmse);
    assert!((report.mae - best.metric("val_mae").unwrap()).abs() < 1e-3 * report.mae);

    // Packaged (format 4, with the target scaler), read back, it predicts the same grams.
    use kiln_train::{InferencePrecision, ModelPackage, PackageSpec, PackageTask};
    let spec = |labels: kiln_data::LabelEncoder| PackageSpec {
        name: "mass".into(),
        train_config: config.clone(),
        features: (0..4).map(|i| format!("f{i}")).collect(),
        input_schema: kiln_data::Schema::new(Vec::new()),
        scaler: None,
        pipeline: None,
        labels,
        label_column: "grams".into(),
        metrics: Default::default(),
        lineage: Default::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    ModelPackage::regression(&fitted, &task, spec(Default::default()))
        .unwrap()
        .with_regression_eval(report)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let manifest = std::fs::read_to_string(dir.path().join(kiln_train::MANIFEST_FILE)).unwrap();
    assert!(manifest.contains("\"format_version\": 4") && manifest.contains("\"regression\""), "{manifest}");
    let package = ModelPackage::read(dir.path()).unwrap();
    assert_eq!(package.manifest.task, PackageTask::Regression { target: scaler, loss: RegressionLoss::Mse });
    assert_eq!(package.manifest.metrics["test_rmse"], report.rmse);
    assert_eq!(package.regression_eval(), Some(&report));
    let predictor = package.into_predictor().unwrap();
    let raw = xv.mapv(f64::from);
    assert_eq!(predictor.predict_values(raw.view()).unwrap(), predicted, "the same numbers after a round trip");
    let err = predictor.predict(raw.view()).unwrap_err().to_string();
    assert!(err.contains("regression model") && err.contains("predict_values"), "{err}");
    let checks = predictor.failure_checks(raw.view());
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "finite_predictions",
            "constant_inputs",
            "out_of_range_values",
            "missing_features",
            "deterministic",
            "batch_invariant"
        ]
    );
    assert!(checks.iter().all(|c| c.passed), "{checks:?}");
    let err = predictor.with_precision(InferencePrecision::Int8).unwrap_err().to_string();
    assert!(err.contains("F32 only"), "{err}");

    // What does not fit is refused: labels on a regression, weights of another task, a
    // regression report on a classifier's package, class weights a task does not apply.
    let labels = kiln_data::LabelEncoder::fit(&["a".to_string(), "b".to_string()]);
    let err = ModelPackage::regression(&fitted, &task, spec(labels)).unwrap_err().to_string();
    assert!(err.contains("no class labels"), "{err}");
    let other = RegressionTask::new(ModelConfig::mlp(4, &[8], 1), RegressionLoss::Mse, scaler).unwrap();
    let err = ModelPackage::regression(&fitted, &other, spec(Default::default())).unwrap_err().to_string();
    assert!(err.contains("another task"), "{err}");
    let weighted = TrainConfig { class_weights: kiln_train::ClassWeights::Balanced, ..config.clone() };
    let train = Rows::new("training", Array2::zeros((4, 4)), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let err = fit(&weighted, &task, train, None, None, &mut ()).unwrap_err().to_string();
    assert!(err.contains("class_weights") && err.contains("does not weight"), "{err}");
}

/// The shipped multi-label task: three labels from different rules on the features; the
/// per-label F1 the training reports for the kept epoch is what the kept weights give when
/// recomputed here, and the macro F1 picks the kept epoch.
#[test]
fn the_multi_label_task_reports_per_label_f1_and_auc() {
    use kiln_data::Rows;
    use kiln_train::{ModelConfig, MultiLabelTask};
    use ndarray::Array2;
    let make = |n: usize, seed: u64| {
        let mut rng = SplitMix64::new(seed);
        let x = Array2::from_shape_fn((n, 5), |_| rng.next_f64() as f32 * 2.0 - 1.0);
        let y: Vec<Vec<f32>> = x
            .rows()
            .into_iter()
            .map(|r| {
                [r[0] > 0.0, r[1] + r[2] > 0.3, r[3] * r[4] > 0.0].iter().map(|b| f32::from(u8::from(*b))).collect()
            })
            .collect();
        (x, y)
    };
    let ((xt, yt), (xv, yv)) = (make(600, 3), make(150, 4));
    let names = vec!["left".to_string(), "sum".to_string(), "xor".to_string()];
    let task = MultiLabelTask::new(ModelConfig::mlp(5, &[32, 32], 3), names.clone()).unwrap();
    let config = TrainConfig {
        epochs: 25,
        batch_size: 32,
        learning_rate: 3e-3,
        device: kiln_train::DeviceSpec::Cpu,
        monitor: Monitor::new("val_macro_f1"),
        ..TrainConfig::default()
    };
    let train = Rows::new("training", xt, yt).unwrap();
    let val = Rows::new("validation", xv.clone(), yv.clone()).unwrap();
    let fitted = fit(&config, &task, train, Some(val), None, &mut ()).unwrap();
    let best = &fitted.history[fitted.best_epoch - 1];
    assert!(best.metric("val_macro_f1").unwrap() > 0.8, "{:?}", best.metrics);
    assert!(best.metric("val_macro_auc").unwrap() > 0.85, "{:?}", best.metrics);
    assert!(best.metrics.contains_key("train_f1_xor") && !best.metrics.contains_key("train_auc_xor"));

    type Cpu = burn::backend::Flex;
    let device = Default::default();
    let model = fitted.load(task.init::<Cpu>(&device), &device).unwrap();
    let input = Tensor::<Cpu, 2>::from_data(TensorData::new(xv.iter().copied().collect::<Vec<_>>(), [150, 5]), &device);
    let p: Vec<f32> = burn::tensor::activation::sigmoid(model.forward(input)).into_data().to_vec().unwrap();
    for (i, name) in names.iter().enumerate() {
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (row, truth) in yv.iter().enumerate() {
            match (p[row * 3 + i] >= 0.5, truth[i] == 1.0) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                (false, false) => {}
            }
        }
        let f1 = 2.0 * tp / (2.0 * tp + fp + fn_);
        let reported = best.metric(&format!("val_f1_{name}")).unwrap();
        assert!((reported - f1).abs() < 1e-9, "{name}: reported {reported}, recomputed {f1}");
    }
}

/// A label that never occurs makes its validation AUC NaN every epoch: the epoch reports keep the
/// NaN, the checkpoints holding them stay readable, and a run stopped mid-epoch resumes to the
/// same curve. An epoch whose monitored value is NaN is never ranked best.
#[test]
fn nan_metrics_survive_checkpoints_and_are_never_the_best() {
    use kiln_data::Rows;
    use kiln_train::{ModelConfig, MultiLabelTask};
    use ndarray::Array2;
    let make = |n: usize, seed: u64| {
        let mut rng = SplitMix64::new(seed);
        let x = Array2::from_shape_fn((n, 3), |_| rng.next_f64() as f32 * 2.0 - 1.0);
        let y: Vec<Vec<f32>> = x.rows().into_iter().map(|r| vec![f32::from(u8::from(r[0] > 0.0)), 0.0]).collect();
        (x, y)
    };
    let ((xt, yt), (xv, yv)) = (make(160, 5), make(40, 6));
    let task = MultiLabelTask::new(ModelConfig::mlp(3, &[8], 2), vec!["half".into(), "never".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |monitor: &str| TrainConfig {
        epochs: 3,
        batch_size: 16,
        device: kiln_train::DeviceSpec::Cpu,
        monitor: Monitor::new(monitor),
        checkpoint: Some(CheckpointConfig { every_steps: 3, keep_best: 2, ..CheckpointConfig::new(dir.path()) }),
        ..TrainConfig::default()
    };
    let sources = || {
        (
            Rows::new("training", xt.clone(), yt.clone()).unwrap(),
            Rows::new("validation", xv.clone(), yv.clone()).unwrap(),
        )
    };
    let (train, val) = sources();
    let first = fit(&config("val_macro_auc"), &task, train, Some(val), None, &mut StopAt(14)).unwrap();
    assert_eq!(first.steps, 14);
    assert!(first.history[0].metric("val_auc_never").unwrap().is_nan());
    let (train, val) = sources();
    let resumed = fit(&config("val_macro_auc"), &task, train, Some(val), None, &mut ()).unwrap();
    assert_eq!(resumed.resumed_from, Some(14), "the checkpoint with NaN metrics was read back");
    assert!(resumed.history.iter().all(|e| e.metric("val_auc_never").unwrap().is_nan()));
    let reference_dir = tempfile::tempdir().unwrap();
    let (train, val) = sources();
    let reference_config = TrainConfig {
        checkpoint: Some(CheckpointConfig {
            every_steps: 3,
            keep_best: 2,
            ..CheckpointConfig::new(reference_dir.path())
        }),
        ..config("val_macro_auc")
    };
    let reference = fit(&reference_config, &task, train, Some(val), None, &mut ()).unwrap();
    assert_eq!(resumed.step_losses, reference.step_losses);

    // Monitoring the NaN metric itself: no epoch is ranked, the last weights are kept.
    let other = tempfile::tempdir().unwrap();
    let (train, val) = sources();
    let nan_config = TrainConfig {
        checkpoint: Some(CheckpointConfig { keep_best: 2, ..CheckpointConfig::new(other.path()) }),
        ..config("val_auc_never")
    };
    let fitted = fit(&nan_config, &task, train, Some(val), None, &mut ()).unwrap();
    assert_eq!(fitted.best_epoch, 3, "no best epoch: the last state is kept");
    assert!(kiln_train::best_checkpoints(other.path()).unwrap().is_empty());
}
