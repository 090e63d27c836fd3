//! The training loop: real data, checkpoints on disk, resume after a real kill.

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_data::{Dataset, LabelEncoder, SplitFractions, SplitMix64, StandardScaler, stratified_split};
use kiln_train::{
    CheckpointConfig, ClassWeights, CnnConfig, CnnHead, DeviceSpec, EXIT_INTERRUPTED, EarlyStopping, EpochReport,
    Error, Examples, GradClip, Hooks, LrSchedule, MlpConfig, ModelConfig, Monitor, MonitorMetric, OptimizerConfig,
    StepReport, StopReason, TrainConfig, Trained, latest_checkpoint, train,
};
use ndarray::{Array2, Axis};

use super::repo_file;

struct Digits {
    train: Examples,
    val: Examples,
    test: Examples,
}

/// UCI digits: 64 pixel counts, stratified 70/15/15, scaled on the training rows.
fn digits() -> &'static Digits {
    static D: OnceLock<Digits> = OnceLock::new();
    D.get_or_init(|| {
        let data = Dataset::load_csv(repo_file("data/digits.csv")).unwrap();
        let features: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
        let labels = data.to_strings("label").unwrap();
        let split = stratified_split(&labels, SplitFractions::default(), 7).unwrap();
        let raw = data.to_matrix(&features).unwrap();
        let classes = LabelEncoder::fit(&labels).encode(&labels).unwrap();
        let scaler = StandardScaler::fit(raw.select(Axis(0), &split.train).view(), &features).unwrap();
        let part = |rows: &[usize]| {
            let mut x = raw.select(Axis(0), rows);
            scaler.transform(&mut x).unwrap();
            Examples::new(x.mapv(|v| v as f32), rows.iter().map(|r| classes[*r]).collect()).unwrap()
        };
        Digits { train: part(&split.train), val: part(&split.val), test: part(&split.test) }
    })
}

fn test_accuracy(trained: &Trained, test: &Examples) -> f64 {
    let predicted = trained.classifier().unwrap().predict(test.x.view()).unwrap();
    predicted.iter().zip(&test.y).filter(|(p, t)| p == t).count() as f64 / test.len() as f64
}

fn cpu(epochs: usize) -> TrainConfig {
    TrainConfig { epochs, device: DeviceSpec::Cpu, ..TrainConfig::default() }
}

fn quiet() -> impl Hooks {
    |_: &EpochReport| {}
}

#[test]
fn an_mlp_reaches_93_percent_on_digits() {
    let d = digits();
    let model = ModelConfig::Mlp(MlpConfig { dropout: 0.1, ..MlpConfig::new(64, &[128, 64], 10) });
    let config = TrainConfig { schedule: LrSchedule::Cosine { min_lr: 1e-5 }, warmup_steps: 20, ..cpu(25) };
    let trained = train(&config, &model, &d.train, Some(&d.val), None, &mut quiet()).unwrap();
    let acc = test_accuracy(&trained, &d.test);
    assert!(acc >= 0.93, "digits MLP test accuracy {acc}");
    assert_eq!(trained.stop, StopReason::Completed);
    assert_eq!(trained.history.len(), 25);
    assert_eq!(trained.steps, 25 * d.train.len().div_ceil(64) as u64);
    assert_eq!(trained.step_losses.len() as u64, trained.steps);
}

#[test]
fn a_cnn_trains_on_digits_as_8x8_images() {
    let d = digits();
    let model = ModelConfig::Cnn(CnnConfig {
        height: 8,
        width: 8,
        channels: 1,
        classes: 10,
        filters: vec![16, 32],
        dense: vec![64],
        head: CnnHead::Flatten,
        activation: kiln_train::Activation::Relu,
        dropout: 0.1,
        batch_norm: true,
    });
    let config = TrainConfig { batch_size: 32, ..cpu(8) };
    let trained = train(&config, &model, &d.train, Some(&d.val), None, &mut quiet()).unwrap();
    let acc = test_accuracy(&trained, &d.test);
    assert!(acc >= 0.93, "digits CNN test accuracy {acc}");
    let first = trained.history[0].train_loss;
    let last = trained.history.last().unwrap().train_loss;
    assert!(last < first / 3.0, "train loss {first} -> {last}");

    // Through safetensors, batch norm's running statistics included, it predicts the same.
    let classifier = trained.classifier().unwrap();
    let bytes = classifier.to_safetensors().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = file.names();
    for name in
        ["convs.0.weight", "convs.1.bias", "norms.0.weight", "norms.1.running_var", "dense.0.weight", "output.bias"]
    {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    assert_eq!(file.tensor("convs.1.weight").unwrap().shape(), [32, 16, 3, 3]);
    assert_eq!(file.tensor("dense.0.weight").unwrap().shape(), [64, 32 * 2 * 2]);
    let reloaded = kiln_train::Classifier::from_safetensors(model.clone(), &bytes).unwrap();
    let (before, after) =
        (classifier.predict_proba(d.test.x.view()).unwrap(), reloaded.predict_proba(d.test.x.view()).unwrap());
    assert_eq!(before, after);
}

#[test]
fn a_cnn_trains_on_96x96x3_patches() {
    // Histopathology-sized patches (96×96 RGB), rows in height × width × channel order; the
    // class is in the red channel's brightness, under noise.
    let (h, w, c) = (96, 96, 3);
    let mut rng = SplitMix64::new(9);
    let rows = 32;
    let y: Vec<usize> = (0..rows).map(|i| i % 2).collect();
    let x = Array2::from_shape_fn((rows, h * w * c), |(i, j)| {
        let red = j % c == 0;
        let signal = if red && y[i] == 1 { 0.8 } else { 0.0 };
        (signal + rng.next_f64() - 0.5) as f32
    });
    let model = ModelConfig::Cnn(CnnConfig {
        height: h,
        width: w,
        channels: c,
        classes: 2,
        filters: vec![8, 16, 16],
        dense: vec![],
        head: CnnHead::GlobalAvgPool,
        activation: kiln_train::Activation::Relu,
        dropout: 0.0,
        batch_norm: false,
    });
    let examples = Examples::new(x.clone(), y.clone()).unwrap();
    let config = TrainConfig { batch_size: 8, learning_rate: 3e-3, ..cpu(8) };
    let trained = train(&config, &model, &examples, None, None, &mut quiet()).unwrap();
    assert_eq!(trained.steps, 8 * 4);
    let first = trained.history[0].train_loss;
    let last = trained.history.last().unwrap().train_loss;
    assert!(last.is_finite() && last < first, "train loss {first} -> {last}");
    let probabilities = trained.classifier().unwrap().predict_proba(x.view()).unwrap();
    assert_eq!(probabilities.dim(), (rows, 2));
    for row in probabilities.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-4 && row.iter().all(|p| p.is_finite()), "{row:?}");
    }
    let accuracy = test_accuracy(&trained, &examples);
    assert!(accuracy >= 0.9, "training accuracy {accuracy} on separable patches");
}

#[test]
fn logistic_regression_sgd_and_adamw_all_learn_digits() {
    let d = digits();
    let optimizers = [
        OptimizerConfig::Sgd { momentum: 0.9, nesterov: true, weight_decay: 1e-4 },
        OptimizerConfig::AdamW { beta_1: 0.9, beta_2: 0.999, weight_decay: 0.01 },
    ];
    for optimizer in optimizers {
        let lr = if matches!(optimizer, OptimizerConfig::Sgd { .. }) { 0.05 } else { 3e-3 };
        let config = TrainConfig { optimizer: optimizer.clone(), learning_rate: lr, ..cpu(10) };
        let model = ModelConfig::Logistic { inputs: 64, classes: 10 };
        let trained = train(&config, &model, &d.train, Some(&d.val), None, &mut quiet()).unwrap();
        let acc = test_accuracy(&trained, &d.test);
        assert!(acc >= 0.9, "{optimizer:?}: logistic test accuracy {acc}");
    }
}

/// A small problem with dropout and batch norm, so that resuming must restore generator
/// draws, running statistics and optimiser moments to reproduce the curve.
fn small() -> (Examples, Examples, ModelConfig) {
    let mut rng = SplitMix64::new(11);
    let mut make = |n: usize| {
        let x = Array2::from_shape_fn((n, 6), |_| rng.next_f64() as f32 * 2.0 - 1.0);
        let y = x.rows().into_iter().map(|r| usize::from(r[0] + r[1] * r[2] > 0.1) + usize::from(r[3] > 0.5)).collect();
        Examples::new(x, y).unwrap()
    };
    let (train, val) = (make(150), make(40));
    let model = ModelConfig::Mlp(MlpConfig { dropout: 0.2, batch_norm: true, ..MlpConfig::new(6, &[16, 8], 3) });
    (train, val, model)
}

/// 10 steps per epoch (150 rows, batch 16), 6 epochs, cosine schedule, gradient clipping.
fn resumable(dir: &Path) -> TrainConfig {
    TrainConfig {
        batch_size: 16,
        schedule: LrSchedule::Cosine { min_lr: 1e-4 },
        warmup_steps: 5,
        grad_clip: Some(GradClip::Norm(1.0)),
        checkpoint: Some(CheckpointConfig { every_steps: 3, ..CheckpointConfig::new(dir) }),
        ..cpu(6)
    }
}

fn uninterrupted() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let (train_set, val, model) = small();
        let dir = tempfile::tempdir().unwrap();
        train(&resumable(dir.path()), &model, &train_set, Some(&val), None, &mut quiet()).unwrap()
    })
}

fn assert_same_training(resumed: &Trained, reference: &Trained) {
    assert_eq!(resumed.step_losses, reference.step_losses, "per-step loss curve");
    let strip = |h: &[EpochReport]| {
        h.iter()
            .map(|e| (e.epoch, e.step, e.train_loss, e.train_accuracy(), e.val_loss, e.val_accuracy()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&resumed.history), strip(&reference.history), "epoch reports");
    assert_eq!(resumed.best_epoch, reference.best_epoch);
    let (_, val, _) = small();
    let proba = |t: &Trained| t.classifier().unwrap().predict_proba(val.x.view()).unwrap();
    assert_eq!(proba(resumed), proba(reference), "predictions of the kept weights");
}

struct StopAt(u64);

impl Hooks for StopAt {
    fn on_step(&mut self, step: &StepReport) -> ControlFlow<()> {
        if step.step == self.0 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
}

#[test]
fn a_run_stopped_mid_epoch_resumes_to_the_same_loss_curve() {
    let (train_set, val, model) = small();
    let dir = tempfile::tempdir().unwrap();
    let config = resumable(dir.path());
    let first = train(&config, &model, &train_set, Some(&val), None, &mut StopAt(14)).unwrap();
    assert_eq!(first.stop, StopReason::Requested);
    assert_eq!(first.steps, 14);
    let info = latest_checkpoint(dir.path()).unwrap().unwrap();
    assert_eq!((info.step, info.epoch), (14, 2), "a mid-epoch checkpoint (10 steps per epoch)");
    assert_eq!(first.checkpoint.as_deref(), Some(info.path.as_path()));

    let resumed = train(&config, &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    assert_eq!(resumed.resumed_from, Some(14));
    assert_eq!(resumed.stop, StopReason::Completed);
    assert_same_training(&resumed, uninterrupted());

    // Training that finished resumes to the same result without running again.
    let again = train(&config, &model, &train_set, Some(&val), None, &mut StopAt(1)).unwrap();
    assert_eq!(again.resumed_from, Some(60));
    assert_same_training(&again, uninterrupted());
}

#[test]
fn resume_refuses_a_different_training() {
    let (train_set, val, model) = small();
    let dir = tempfile::tempdir().unwrap();
    let config = resumable(dir.path());
    train(&config, &model, &train_set, Some(&val), None, &mut StopAt(4)).unwrap();
    let other_model = ModelConfig::mlp(6, &[16], 3);
    let err = train(&config, &other_model, &train_set, Some(&val), None, &mut quiet()).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint { message, .. } if message.contains("architecture")), "{err}");
    let other_seed = TrainConfig { seed: 1, ..config.clone() };
    let err = train(&other_seed, &model, &train_set, Some(&val), None, &mut quiet()).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint { message, .. } if message.contains("seed")), "{err}");
    let err = train(&config, &model, &val, Some(&val), None, &mut quiet()).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint { message, .. } if message.contains("data differ")), "{err}");

    // The learning rate and the length of training may change, e.g. to go on more gently.
    let gentler = TrainConfig { learning_rate: 1e-4, epochs: 7, ..config.clone() };
    let continued = train(&gentler, &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    assert_eq!((continued.resumed_from, continued.steps, continued.history.len()), (Some(4), 70, 7));

    // A damaged checkpoint is an error naming the file, not a silent restart.
    let latest = latest_checkpoint(dir.path()).unwrap().unwrap();
    let weights = latest.path.join("model.mpk");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[10] ^= 0xFF;
    std::fs::write(&weights, bytes).unwrap();
    let err = train(&config, &model, &train_set, Some(&val), None, &mut quiet()).unwrap_err();
    assert!(
        matches!(&err, Error::Checkpoint { path, message } if path == &weights && message.contains("checksum")),
        "{err}"
    );
}

#[test]
fn checkpoints_are_pruned_to_the_latest_and_the_best() {
    let (train_set, val, model) = small();
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        checkpoint: Some(CheckpointConfig {
            every_steps: 4,
            keep_last: 2,
            keep_best: 2,
            ..CheckpointConfig::new(dir.path())
        }),
        monitor: Monitor { metric: MonitorMetric::VAL_ACCURACY, mode: None },
        ..resumable(dir.path())
    };
    let trained = train(&config, &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    let best = kiln_train::best_checkpoints(dir.path()).unwrap();
    assert_eq!(best.len(), 2);
    assert!(best[0].1 >= best[1].1, "ranked best first: {best:?}");
    let top = trained.history.iter().map(|e| e.val_accuracy().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(best[0].1, top);
    let mut dirs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-"))
        .collect();
    dirs.sort();
    // The two most recent (the last two epoch ends) plus the two best, possibly overlapping.
    assert!(dirs.len() <= 4 && dirs.contains(&"step-0000000060".to_string()), "{dirs:?}");
    for (path, _, _) in &best {
        assert!(path.join("state.json").is_file(), "{}", path.display());
    }
    assert!(!dir.path().read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp")));
}

#[test]
fn accumulating_two_batches_of_8_equals_batches_of_16() {
    let (train_set, val, _) = small();
    let model = ModelConfig::mlp(6, &[16], 3);
    let big = TrainConfig { batch_size: 16, ..cpu(2) };
    let small_acc = TrainConfig { batch_size: 8, accumulate: 2, ..cpu(2) };
    let a = train(&big, &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    let b = train(&small_acc, &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    assert_eq!(a.steps, b.steps);
    for (x, y) in a.step_losses.iter().zip(&b.step_losses) {
        assert!((x - y).abs() < 1e-5, "{:?} vs {:?}", a.step_losses, b.step_losses);
    }
}

#[test]
fn early_stopping_fires_and_keeps_the_best_epoch() {
    let (train_set, val, model) = small();
    // A learning rate this high oscillates, so validation loss stops improving quickly.
    let config = TrainConfig {
        learning_rate: 0.3,
        early_stopping: Some(EarlyStopping { patience: 2, min_delta: 0.0 }),
        batch_size: 16,
        ..cpu(200)
    };
    let trained = train(&config, &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    assert_eq!(trained.stop, StopReason::EarlyStopped);
    let epochs = trained.history.len();
    assert!(epochs < 200);
    assert_eq!(trained.best_epoch, epochs - 2, "patience 2: the best epoch is two before the last");
    let best = trained.history[trained.best_epoch - 1].val_loss.unwrap();
    assert!(trained.history.iter().all(|e| e.val_loss.unwrap() >= best));
}

#[test]
fn max_steps_and_class_weights() {
    let (train_set, val, model) = small();
    let config = TrainConfig { max_steps: Some(25), batch_size: 16, class_weights: ClassWeights::Balanced, ..cpu(10) };
    let trained = train(&config, &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    assert_eq!((trained.stop, trained.steps), (StopReason::MaxSteps, 25));
    assert_eq!(trained.history.len(), 3, "two full epochs and the cut one");
    assert_eq!(trained.history[2].step, 25);
    let wrong = TrainConfig { class_weights: ClassWeights::Explicit(vec![1.0, 2.0]), ..config };
    let err = train(&wrong, &model, &train_set, Some(&val), None, &mut quiet()).unwrap_err();
    assert!(err.to_string().contains("2 values for 3 classes"), "{err}");
}

#[test]
fn a_diverging_run_stops_and_names_the_last_good_checkpoint() {
    let (train_set, val, _) = small();
    let dir = tempfile::tempdir().unwrap();
    // Plain SGD at a learning rate of 1e30: the first step (initial weights, finite inputs) is
    // finite, the next overflows.
    let config = TrainConfig {
        optimizer: OptimizerConfig::Sgd { momentum: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 1e30,
        grad_clip: None,
        warmup_steps: 0,
        checkpoint: Some(CheckpointConfig { every_steps: 1, ..CheckpointConfig::new(dir.path()) }),
        ..resumable(dir.path())
    };
    let model = ModelConfig::mlp(6, &[16, 8], 3);
    let err = train(&config, &model, &train_set, Some(&val), None, &mut ()).unwrap_err();
    let Error::Diverged { epoch, step, value, checkpoint, .. } = &err else { panic!("{err}") };
    assert_eq!(*epoch, 1);
    assert!(*step >= 2, "{err}");
    assert!(!value.is_finite());
    let kept = latest_checkpoint(dir.path()).unwrap().unwrap();
    assert_eq!(kept.step, step - 1, "the checkpoint before the bad step is kept");
    assert_eq!(checkpoint.as_deref(), Some(kept.path.as_path()));
    assert!(err.to_string().contains("last good checkpoint"), "{err}");
}

#[test]
fn non_finite_features_are_refused_with_row_and_column() {
    let (mut train_set, val, model) = small();
    train_set.x[[77, 2]] = f32::NAN;
    let err = train(&cpu(1), &model, &train_set, Some(&val), None, &mut ()).unwrap_err();
    assert!(matches!(err, Error::NonFinite { set: "training", row: 77, feature: 2, .. }), "{err}");
    let (train_set, mut val, model) = small();
    val.x[[3, 0]] = f32::INFINITY;
    let err = train(&cpu(1), &model, &train_set, Some(&val), None, &mut ()).unwrap_err();
    assert!(err.to_string().starts_with("validation row 3, feature 0: inf"), "{err}");
}

/// The body of the child processes below: trains `small()` with checkpoints in
/// `KILN_TRAIN_CHILD` (slowed so the parent can signal it mid-run) and exits with
/// `EXIT_INTERRUPTED` when a signal stopped it.
#[test]
#[ignore = "run as a child process by the kill-and-resume tests"]
fn child_trainer() {
    let Some(dir) = std::env::var_os("KILN_TRAIN_CHILD") else { return };
    let (train_set, val, model) = small();
    struct Slow;
    impl Hooks for Slow {
        fn on_step(&mut self, _: &StepReport) -> ControlFlow<()> {
            std::thread::sleep(Duration::from_millis(25));
            ControlFlow::Continue(())
        }
    }
    let trained = train(&resumable(Path::new(&dir)), &model, &train_set, Some(&val), None, &mut Slow).unwrap();
    if matches!(trained.stop, StopReason::Interrupted { .. }) {
        std::process::exit(EXIT_INTERRUPTED);
    }
}

fn spawn_child(dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "training::child_trainer", "--ignored", "--nocapture", "--test-threads=1"])
        .env("KILN_TRAIN_CHILD", dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for_checkpoint(dir: &Path, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(info)) = latest_checkpoint(dir)
            && info.step >= at_least
        {
            return info.step;
        }
        assert!(Instant::now() < deadline, "the child wrote no checkpoint at step {at_least}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_killed_training_process_resumes_to_the_same_loss_curve() {
    let (train_set, val, model) = small();
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(dir.path());
    wait_for_checkpoint(dir.path(), 13);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    let status = child.wait().unwrap();
    assert!(!status.success());
    let info = latest_checkpoint(dir.path()).unwrap().unwrap();
    assert!(info.step >= 13 && info.step < 60, "{info:?}");

    let resumed = train(&resumable(dir.path()), &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
    assert_eq!(resumed.resumed_from, Some(info.step));
    assert_same_training(&resumed, uninterrupted());
}

#[test]
fn sigterm_and_sigusr2_checkpoint_exit_with_the_requeue_status_and_resume_exactly() {
    let (train_set, val, model) = small();
    // SIGTERM is what scancel and a node drain send; SIGUSR2 is what Slurm's
    // `--signal=B:USR2@secs` sends before a time limit or preemption.
    for signal in ["-TERM", "-USR2"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_child(dir.path());
        wait_for_checkpoint(dir.path(), 7);
        let sent = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(EXIT_INTERRUPTED), "{signal}: {status:?}");
        let info = latest_checkpoint(dir.path()).unwrap().unwrap();
        assert!(info.step < 60, "{signal}: stopped before the end: {info:?}");

        let resumed = train(&resumable(dir.path()), &model, &train_set, Some(&val), None, &mut quiet()).unwrap();
        assert_eq!(resumed.resumed_from, Some(info.step), "{signal}");
        assert_same_training(&resumed, uninterrupted());
    }
}

#[test]
fn a_tracked_run_records_settings_and_every_step() {
    let (train_set, val, model) = small();
    let dir = tempfile::tempdir().unwrap();
    let store = kiln_track::Store::open(dir.path()).unwrap();
    let mut run = store.start_run("train-test").unwrap();
    let config = TrainConfig { batch_size: 16, ..cpu(2) };
    let trained = train(&config, &model, &train_set, Some(&val), Some(&mut run), &mut ()).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let record = store.run(&id).unwrap();
    assert_eq!(record.params["train.seed"], serde_json::json!(42));
    assert_eq!(record.params["model.kind"], serde_json::json!("mlp"));
    assert_eq!(record.params["model.num_params"], serde_json::json!(model.num_params()));
    let points = store.metrics(&id).unwrap();
    let steps: Vec<(u64, f64)> = points.iter().filter(|p| p.key == "step_loss").map(|p| (p.step, p.value)).collect();
    assert_eq!(steps.len() as u64, trained.steps);
    for ((step, value), want) in steps.iter().zip(&trained.step_losses) {
        assert!(*step >= 1 && value == want);
    }
    let val_loss: Vec<f64> = points.iter().filter(|p| p.key == "val_loss").map(|p| p.value).collect();
    assert_eq!(val_loss, trained.history.iter().map(|e| e.val_loss.unwrap()).collect::<Vec<_>>());
}

/// A training on a compute node logs through the tracking server (`RemoteRun`) what it would
/// log to a local run: the same parameters, and the same values of every metric at the same
/// steps (timings aside).
#[test]
fn a_training_logged_through_the_tracking_server_records_what_a_local_run_does() {
    use kiln_track::client::Client;
    use kiln_track::server::{ServerConfig, TrackingServer};
    let (train_set, val, model) = small();
    let config = TrainConfig { batch_size: 16, ..cpu(2) };

    let local_dir = tempfile::tempdir().unwrap();
    let local = kiln_track::Store::open(local_dir.path()).unwrap();
    let mut run = local.start_run("remote-test").unwrap();
    train(&config, &model, &train_set, Some(&val), Some(&mut run), &mut ()).unwrap();
    let local_id = run.id().to_string();
    run.finish().unwrap();

    let server_dir = tempfile::tempdir().unwrap();
    let served = kiln_track::Store::open(server_dir.path()).unwrap();
    let server =
        TrackingServer::start(served.clone(), ServerConfig { addr: "127.0.0.1:0".into(), ..ServerConfig::default() })
            .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let client = Client::new(&server.url()).with_spool(spool.path());
    let mut remote = client.start_run("remote-test").unwrap();
    train(&config, &model, &train_set, Some(&val), Some(&mut remote), &mut ()).unwrap();
    assert!(!remote.is_spooling(), "the server was reachable");
    let remote_id = remote.id().to_string();
    remote.finish().unwrap();
    server.shutdown().unwrap();

    let points = |store: &kiln_track::Store, id: &str| {
        let mut p: Vec<(String, u64, f64)> = store
            .metrics(id)
            .unwrap()
            .into_iter()
            .filter(|p| !matches!(p.key.as_str(), "epoch_seconds" | "rows_per_second"))
            .map(|p| (p.key, p.step, p.value))
            .collect();
        p.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        p
    };
    let (here, there) = (points(&local, &local_id), points(&served, &remote_id));
    assert!(here.iter().any(|p| p.0 == "val_accuracy") && here.iter().any(|p| p.0 == "step_loss"), "{here:?}");
    assert_eq!(there, here);
    let params = |store: &kiln_track::Store, id: &str| store.run(id).unwrap().params;
    assert_eq!(params(&served, &remote_id), params(&local, &local_id));
}

#[test]
fn the_study_pruner_stops_a_poor_training_through_its_hooks() {
    use kiln_train::tune::{MedianPruner, PruneTraining, PrunerConfig, SamplerConfig, Study, StudyConfig, TrialState};
    let (train_set, val, model) = small();
    let pruner = PrunerConfig::Median(MedianPruner { n_startup_trials: 1, ..MedianPruner::default() });
    let study = Study::in_memory(StudyConfig::new("prune").sampler(SamplerConfig::random(1)).pruner(pruner)).unwrap();
    let run_trial = |learning_rate: f64| {
        let mut trial = study.ask().unwrap();
        let config = TrainConfig { learning_rate, batch_size: 16, ..cpu(6) };
        let mut hooks = PruneTraining::new(&mut trial, MonitorMetric::VAL_LOSS);
        let trained = train(&config, &model, &train_set, Some(&val), None, &mut hooks).unwrap();
        let pruned = hooks.was_pruned();
        let epochs = trained.history.len();
        let outcome =
            if pruned { trial.prune() } else { trial.complete(trained.history[epochs - 1].val_loss.unwrap()) };
        (outcome.unwrap().state, epochs)
    };
    assert_eq!(run_trial(1e-2), (TrialState::Complete, 6));
    // A learning rate that barely moves the weights is worse than the median at epoch 1.
    assert_eq!(run_trial(1e-7), (TrialState::Pruned, 1));
}
