//! Run with: cargo run --release --example custom_model
//!
//! Your own burn model, loss and data on kiln's trainer. Everything that is the researcher's is
//! in this file: a residual MLP (`#[derive(Module)]`), a label-smoothed cross-entropy, a data
//! source that shifts each 8×8 digit by up to one pixel (augmentation drawn from the generator
//! kiln hands each item, so a resumed run sees the same shifts), and the metrics. kiln does the
//! rest: Adam with warm-up and a cosine schedule, clipping, the NaN guard, early stopping and
//! the two best checkpoints on `val_accuracy`, a checkpoint every 20 steps that a rerun resumes
//! from mid-epoch, SIGTERM → checkpoint → exit 75, and tracking.
//!
//! Environment: `KILN_STORE` (default `./kiln-store`), `KILN_CHECKPOINTS` (default: a fresh
//! temporary directory), `KILN_DEVICE` (`cpu`, `cuda:N`, `auto`; default `cpu`).

use anyhow::Result;
use burn::backend::Flex;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, log_softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kiln::data::{Dataset, LabelEncoder, Source, SplitFractions, SplitMix64, StandardScaler, stratified_split};
use kiln::track::Store;
use kiln::train::{
    CheckpointConfig, DeviceSpec, EXIT_INTERRUPTED, EarlyStopping, GradClip, LrSchedule, Monitor, Step, StopReason,
    Task, TrainConfig, dense, fit,
};
use ndarray::{Array2, Axis};

/// The model: `64 → width`, `blocks` residual blocks `x + W₂·drop(gelu(W₁·norm(x)))`, then
/// `norm → 10` logits.
#[derive(Module, Debug)]
struct ResMlp<B: Backend> {
    stem: Linear<B>,
    norms: Vec<LayerNorm<B>>,
    ups: Vec<Linear<B>>,
    downs: Vec<Linear<B>>,
    dropout: Dropout,
    out_norm: LayerNorm<B>,
    head: Linear<B>,
}

impl<B: Backend> ResMlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // `dense` is burn's `Linear::forward`, run as one fused operation on the CPU.
        let mut h = dense(&self.stem, x, false);
        for ((norm, up), down) in self.norms.iter().zip(&self.ups).zip(&self.downs) {
            let inner = self.dropout.forward(gelu(dense(up, norm.forward(h.clone()), false)));
            h = h + dense(down, inner, false);
        }
        dense(&self.head, self.out_norm.forward(h), false)
    }
}

/// The task: the model's size, the loss's smoothing. Its `describe()` is what a resumed run is
/// checked against and what the tracking run records as `model.*`.
struct Digits {
    width: usize,
    blocks: usize,
    dropout: f64,
    smoothing: f32,
}

impl Task for Digits {
    type Item = ([f32; 64], usize);
    type Model<B: Backend> = ResMlp<B>;
    type Batch<B: Backend> = (Tensor<B, 2>, Tensor<B, 1, Int>);

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"kind": "res_mlp", "width": self.width, "blocks": self.blocks,
                           "dropout": self.dropout, "smoothing": self.smoothing})
    }

    fn init<B: Backend>(&self, device: &B::Device) -> ResMlp<B> {
        let (w, n) = (self.width, self.blocks);
        ResMlp {
            stem: LinearConfig::new(64, w).init(device),
            norms: (0..n).map(|_| LayerNormConfig::new(w).init(device)).collect(),
            ups: (0..n).map(|_| LinearConfig::new(w, 2 * w).init(device)).collect(),
            downs: (0..n).map(|_| LinearConfig::new(2 * w, w).init(device)).collect(),
            dropout: DropoutConfig::new(self.dropout).init(),
            out_norm: LayerNormConfig::new(w).init(device),
            head: LinearConfig::new(w, 10).init(device),
        }
    }

    fn collate<B: Backend>(&self, items: Vec<Self::Item>, device: &B::Device) -> kiln::train::Result<Self::Batch<B>> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|(x, _)| *x).collect();
        let y: Vec<i64> = items.iter().map(|(_, y)| *y as i64).collect();
        Ok((Tensor::from_data(TensorData::new(x, [n, 64]), device), Tensor::from_data(TensorData::new(y, [n]), device)))
    }

    /// Label-smoothed cross-entropy, and the number of correct predictions as `accuracy`.
    fn step<B: Backend>(&self, model: &ResMlp<B>, (x, y): Self::Batch<B>) -> kiln::train::Result<Step<B>> {
        let rows = y.dims()[0];
        let logits = model.forward(x);
        let log_p = log_softmax(logits.clone(), 1);
        let nll = log_p.clone().gather(1, y.clone().reshape([rows, 1])).reshape([rows]).neg();
        let uniform = log_p.mean_dim(1).reshape([rows]).neg();
        let loss = (nll * (1.0 - self.smoothing) + uniform * self.smoothing).mean();
        let correct = logits.detach().argmax(1).reshape([rows]).equal(y).float();
        Ok(Step::new(loss, rows).sum("accuracy", correct))
    }
}

/// Standardised 8×8 digits; training items are shifted by up to one pixel each way, the
/// uncovered pixels blank.
struct Images {
    name: &'static str,
    x: Array2<f32>,
    y: Vec<usize>,
    shift: bool,
    /// A blank image, standardised.
    background: [f32; 64],
}

impl Source for Images {
    type Item = ([f32; 64], usize);

    fn name(&self) -> String {
        self.name.to_string()
    }

    fn len(&self) -> usize {
        self.y.len()
    }

    fn get(&self, index: usize, rng: &mut SplitMix64) -> kiln::data::Result<Self::Item> {
        let row = self.x.row(index);
        let (dr, dc) = if self.shift { (rng.below(3) as isize - 1, rng.below(3) as isize - 1) } else { (0, 0) };
        let mut image = self.background;
        for r in 0..8isize {
            for c in 0..8isize {
                let (sr, sc) = (r - dr, c - dc);
                if (0..8).contains(&sr) && (0..8).contains(&sc) {
                    image[(r * 8 + c) as usize] = row[(sr * 8 + sc) as usize];
                }
            }
        }
        Ok((image, self.y[index]))
    }

    fn fingerprint(&self) -> kiln::data::Result<String> {
        let mut h = blake3::Hasher::new();
        h.update(&[u8::from(self.shift)]);
        for v in &self.x {
            h.update(&v.to_le_bytes());
        }
        for y in &self.y {
            h.update(&(*y as u64).to_le_bytes());
        }
        Ok(h.finalize().to_hex().to_string())
    }
}

fn main() -> Result<()> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let data = Dataset::load_csv(format!("{root}/data/digits.csv"))?;
    let features: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
    let labels = data.to_strings("label")?;
    let split = stratified_split(&labels, SplitFractions::default(), 42)?;
    let raw = data.to_matrix(&features)?;
    let classes = LabelEncoder::fit(&labels).encode(&labels)?;
    let scaler = StandardScaler::fit(raw.select(Axis(0), &split.train).view(), &features)?;
    let mut blank = Array2::zeros((1, 64));
    scaler.transform(&mut blank)?;
    let mut background = [0f32; 64];
    for (b, v) in background.iter_mut().zip(&blank) {
        *b = *v as f32;
    }
    let images = |name: &'static str, rows: &[usize], shift: bool| -> Result<Images> {
        let mut x = raw.select(Axis(0), rows);
        scaler.transform(&mut x)?;
        let y = rows.iter().map(|r| classes[*r]).collect();
        Ok(Images { name, x: x.mapv(|v| v as f32), y, shift, background })
    };
    let (train, val, test) =
        (images("train", &split.train, true)?, images("val", &split.val, false)?, images("test", &split.test, false)?);

    let task = Digits { width: 96, blocks: 2, dropout: 0.1, smoothing: 0.1 };
    let checkpoints = match std::env::var_os("KILN_CHECKPOINTS") {
        Some(dir) => (std::path::PathBuf::from(dir), None),
        None => {
            let tmp = tempfile::tempdir()?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let config = TrainConfig {
        epochs: 25,
        batch_size: 64,
        learning_rate: 2e-3,
        warmup_steps: 40,
        schedule: LrSchedule::Cosine { min_lr: 1e-5 },
        grad_clip: Some(GradClip::Norm(1.0)),
        device: std::env::var("KILN_DEVICE").unwrap_or_else(|_| "cpu".into()).parse::<DeviceSpec>()?,
        monitor: Monitor::new("val_accuracy"),
        early_stopping: Some(EarlyStopping { patience: 6, min_delta: 0.0 }),
        checkpoint: Some(CheckpointConfig { every_steps: 20, keep_best: 2, ..CheckpointConfig::new(&checkpoints.0) }),
        ..TrainConfig::default()
    };

    let store = Store::from_env()?;
    let mut run = store.start_run("digits-custom")?;
    let fitted = fit(&config, &task, train, Some(val), Some(&mut run), &mut |e: &kiln::train::EpochReport| {
        println!(
            "epoch {:>2}  train loss {:.4}  val loss {:.4}  val accuracy {:.4}",
            e.epoch,
            e.train_loss,
            e.val_loss.unwrap_or(f64::NAN),
            e.metric("val_accuracy").unwrap_or(f64::NAN)
        );
    })?;
    if let StopReason::Interrupted { signal } = fitted.stop {
        println!("signal {signal}: checkpointed at step {}; run again to resume", fitted.steps);
        run.kill("interrupted")?;
        std::process::exit(EXIT_INTERRUPTED);
    }

    // The kept (best) weights, on the CPU, on the held-out test images.
    let device = Default::default();
    let model = fitted.load(task.init::<Flex>(&device), &device)?;
    let items: Vec<_> =
        (0..test.len()).map(|i| test.get(i, &mut SplitMix64::new(0))).collect::<kiln::data::Result<_>>()?;
    let (x, y) = task.collate::<Flex>(items, &device)?;
    let predicted = model.forward(x).argmax(1).reshape([test.len()]);
    let correct = predicted.equal(y).int().sum().into_scalar() as f64;
    let accuracy = correct / test.len() as f64;
    println!(
        "{:?} after {} steps; best epoch {} (val accuracy {:.4}); test accuracy {accuracy:.4} on {} images; {} parameters",
        fitted.stop,
        fitted.steps,
        fitted.best_epoch,
        fitted.history[fitted.best_epoch.max(1) - 1].metric("val_accuracy").unwrap_or(f64::NAN),
        test.len(),
        model.num_params()
    );
    run.log_metric("test_accuracy", fitted.steps, accuracy)?;
    run.finish()?;
    anyhow::ensure!(accuracy > 0.9, "test accuracy {accuracy:.4} is below 0.9");
    drop(checkpoints); // removes the temporary checkpoint directory, if one was made
    Ok(())
}
