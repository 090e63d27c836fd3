//! The 8×8 digits data, split and standardised, and the objective's training step, shared by
//! the tuning examples.

use anyhow::Result;
use kiln::data::{Dataset, LabelEncoder, SplitFractions, StandardScaler, stratified_split};
use kiln::train::tune::{PruneTraining, Trial};
use kiln::train::{Examples, ModelConfig, MonitorMetric, TrainConfig, train};
use ndarray::Axis;

/// Trains `model` for a trial, reporting validation loss each epoch so the pruner can stop it
/// early; the trial's value is the best validation loss.
pub fn best_val_loss(
    trial: &mut Trial,
    config: &TrainConfig,
    model: &ModelConfig,
    train_set: &Examples,
    val_set: &Examples,
) -> kiln::train::Result<f64> {
    let mut hooks = PruneTraining::new(trial, MonitorMetric::VAL_LOSS);
    let trained = train(config, model, train_set, Some(val_set), None, &mut hooks)?;
    hooks.finish()?;
    Ok(trained.history.iter().filter_map(|e| e.val_loss).fold(f64::INFINITY, f64::min))
}

/// Training and validation examples of `data/digits.csv` (stratified split, seed 42, scaler fitted
/// on the training rows).
pub fn train_and_val() -> Result<(Examples, Examples)> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let data = Dataset::load_csv(format!("{root}/data/digits.csv"))?;
    let features: Vec<String> = (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect();
    let labels = data.to_strings("label")?;
    let split = stratified_split(&labels, SplitFractions::default(), 42)?;
    let raw = data.to_matrix(&features)?;
    let classes = LabelEncoder::fit(&labels).encode(&labels)?;
    let scaler = StandardScaler::fit(raw.select(Axis(0), &split.train).view(), &features)?;
    let part = |rows: &[usize]| -> Result<Examples> {
        let mut x = raw.select(Axis(0), rows);
        scaler.transform(&mut x)?;
        Ok(Examples::new(x.mapv(|v| v as f32), rows.iter().map(|r| classes[*r]).collect())?)
    };
    Ok((part(&split.train)?, part(&split.val)?))
}
