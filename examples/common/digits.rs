//! The 8×8 digits data, split and standardised, shared by the tuning examples.

use anyhow::Result;
use kiln::data::{Dataset, LabelEncoder, SplitFractions, StandardScaler, stratified_split};
use kiln::train::Examples;
use ndarray::Axis;

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
