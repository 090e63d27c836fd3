//! Run with: cargo run --release --example digits_cnn
//!
//! A small CNN on the UCI handwritten digits (data/digits.csv, 8×8 images with one channel):
//! two 3×3 convolution blocks with batch norm, a dense layer, trained with AdamW and a cosine
//! schedule after a linear warm-up, early stopping on validation loss, and checkpoints every
//! epoch (the best two kept). The run is tracked, and the test evaluation and learning curves
//! are drawn as PNG next to the store.
//!
//! Environment: `KILN_STORE` (default `./kiln-store`), `KILN_DEVICE` (`cpu`, `cuda:N`, `auto`;
//! default `cpu`), `KILN_EPOCHS` (default 20).

use anyhow::{Context, Result};
use kiln::data::{Dataset, LabelEncoder, SplitFractions, stratified_split};
use kiln::track::Store;
use kiln::train::plot::{Series, confusion_matrix, line_chart};
use kiln::train::{
    Activation, CheckpointConfig, CnnConfig, CnnHead, EarlyStopping, EvalReport, Examples, LrSchedule, ModelConfig,
    Monitor, OptimizerConfig, TrainConfig, train,
};
use ndarray::Axis;

fn main() -> Result<()> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let data = Dataset::load_csv(format!("{root}/data/digits.csv"))?;
    let pixels: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
    // Pixels are counts in 0..=16: scale to [0, 1]; rows are channels-last 8×8×1 images.
    let x = data.to_matrix(&pixels)?.mapv(|v| (v / 16.0) as f32);
    let labels = data.to_strings("label")?;
    let encoder = LabelEncoder::fit(&labels);
    let y = encoder.encode(&labels)?;
    let split = stratified_split(&labels, SplitFractions::default(), 7)?;
    let part = |rows: &[usize]| Examples::new(x.select(Axis(0), rows), rows.iter().map(|r| y[*r]).collect());
    let (train_set, val_set, test_set) = (part(&split.train)?, part(&split.val)?, part(&split.test)?);

    let model = ModelConfig::Cnn(CnnConfig {
        height: 8,
        width: 8,
        channels: 1,
        classes: encoder.len(),
        filters: vec![16, 32],
        dense: vec![64],
        head: CnnHead::Flatten,
        activation: Activation::Relu,
        dropout: 0.1,
        batch_norm: true,
    });
    let store = Store::from_env()?;
    let mut run = store.start_run("digits-cnn")?;
    let config = TrainConfig {
        epochs: std::env::var("KILN_EPOCHS").ok().map(|e| e.parse()).transpose().context("KILN_EPOCHS")?.unwrap_or(20),
        batch_size: 32,
        optimizer: OptimizerConfig::AdamW { beta_1: 0.9, beta_2: 0.999, weight_decay: 1e-4 },
        learning_rate: 3e-3,
        warmup_steps: 40,
        schedule: LrSchedule::Cosine { min_lr: 1e-5 },
        device: std::env::var("KILN_DEVICE").unwrap_or_else(|_| "cpu".into()).parse()?,
        monitor: Monitor::default(),
        early_stopping: Some(EarlyStopping { patience: 4, min_delta: 1e-4 }),
        checkpoint: Some(CheckpointConfig {
            keep_best: 2,
            ..CheckpointConfig::new(run.scratch_dir()?.join("checkpoints"))
        }),
        ..TrainConfig::default()
    };
    println!("run {}: {} parameters, {} training images", run.id(), model.num_params(), train_set.len());
    let rows = train_set.len() as f64;
    let trained =
        train(&config, &model, &train_set, Some(&val_set), Some(&mut run), &mut |e: &kiln::train::EpochReport| {
            println!(
                "epoch {:>2}  train loss {:.4}  val loss {:.4} acc {:.4}  {:.0} images/s",
                e.epoch,
                e.train_loss,
                e.val_loss.unwrap_or(f64::NAN),
                e.val_accuracy().unwrap_or(f64::NAN),
                rows / e.seconds
            );
        })?;
    let probabilities = trained.classifier()?.predict_proba(test_set.x.view())?.mapv(f64::from);
    let eval = EvalReport::compute(&test_set.y, probabilities.view(), &encoder.classes)?;
    for (name, value) in eval.metrics() {
        run.log_metric(&format!("test_{name}"), trained.history.len() as u64, value)?;
    }
    println!(
        "trained on {} ({:?}); best epoch {}; test accuracy {:.4}, macro F1 {:.4}",
        trained.device, trained.stop, trained.best_epoch, eval.classification.accuracy, eval.classification.macro_f1
    );
    let plots = store.root().join("plots").join(run.id());
    let curve = |f: fn(&kiln::train::EpochReport) -> Option<f64>| -> Vec<(f64, f64)> {
        trained.history.iter().filter_map(|e| Some((e.epoch as f64, f(e)?))).collect()
    };
    line_chart(
        &[Series::new("train_loss", curve(|e| Some(e.train_loss))), Series::new("val_loss", curve(|e| e.val_loss))],
        "digits CNN",
        "epoch",
        "cross-entropy",
        true,
        &plots.join("loss.png"),
    )?;
    confusion_matrix(
        &eval.classification.confusion,
        &encoder.classes,
        "digits CNN, test",
        &plots.join("confusion.png"),
    )?;
    println!("plots in {}", plots.display());
    run.finish()?;
    Ok(())
}
