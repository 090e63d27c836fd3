//! Regression with the built-in architectures: [`RegressionTask`] (the [`Task`] that
//! [`crate::fit`] trains over rows with numeric targets), [`TargetScaler`], [`Regressor`] (a
//! trained one on the CPU, predicting in the target's units) and [`RegressionReport`].
//!
//! The model learns a standardised target (mean 0, standard deviation 1 over the training
//! rows), which keeps the loss and the learning rate in a sane range whatever the target's
//! units; every metric (`rmse`, `mae`, `mse`, and the unitless `r2`) is reported in the
//! target's units, and a [`Regressor`] predicts in them.

use burn::backend::Flex;
use burn::module::Module;
use burn::nn::loss::{HuberLossConfig, Reduction};
use burn::record::Recorder;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln_data::Row;
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelConfig};
use crate::task::{Step, Task, Totals};
use crate::trainer::recorder;
use crate::{Error, Result};

/// The training loss of a regression, on the standardised target.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegressionLoss {
    /// Mean squared error.
    #[default]
    Mse,
    /// Huber: squared below `delta` (in standard deviations of the target), linear above, so
    /// a few outliers do not dominate.
    Huber {
        /// Where the loss turns linear, in standard deviations of the target.
        delta: f64,
    },
}

/// The affine map between a target and what the model learns: `(y − mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetScaler {
    /// Mean of the training targets.
    pub mean: f64,
    /// Population standard deviation of the training targets (1 when they are all equal).
    pub std: f64,
}

impl TargetScaler {
    /// Fits mean and standard deviation to `targets`; `what` names them in errors. A
    /// non-finite target is an error naming its row.
    pub fn fit(targets: &[f32], what: &str) -> Result<Self> {
        if targets.is_empty() {
            return Err(Error::Shape(format!("{what}: no targets to fit the target scaler on")));
        }
        if let Some((row, v)) = targets.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Shape(format!("{what} row {row}: the target {v} is not a finite number")));
        }
        let n = targets.len() as f64;
        let mean = targets.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
        let var = targets.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / n;
        let std = if var > 0.0 { var.sqrt() } else { 1.0 };
        Ok(Self { mean, std })
    }

    /// A target in the model's units.
    pub fn transform(&self, y: f64) -> f64 {
        (y - self.mean) / self.std
    }

    /// A model output in the target's units.
    pub fn inverse(&self, z: f64) -> f64 {
        z * self.std + self.mean
    }
}

/// A built-in architecture with one output (`classes = 1`) trained on a standardised numeric
/// target with [`RegressionLoss`], over rows of features with `f32` targets (`Rows<f32>`).
/// Reports `mse`, `rmse`, `mae` (target units) and `r2`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionTask {
    arch: ModelConfig,
    loss: RegressionLoss,
    target: TargetScaler,
}

impl RegressionTask {
    /// `arch` (one output) trained with `loss` on targets standardised by `target` (fit it on
    /// the training targets: [`TargetScaler::fit`]).
    pub fn new(arch: ModelConfig, loss: RegressionLoss, target: TargetScaler) -> Result<Self> {
        arch.validate_outputs(1)?;
        if let RegressionLoss::Huber { delta } = loss
            && !(delta.is_finite() && delta > 0.0)
        {
            return Err(Error::Config(format!("loss.delta must be a positive number, got {delta}")));
        }
        if !(target.mean.is_finite() && target.std.is_finite() && target.std > 0.0) {
            return Err(Error::Config(format!(
                "the target scaler needs a finite mean and a positive standard deviation, got {target:?}"
            )));
        }
        Ok(Self { arch, loss, target })
    }

    /// The architecture.
    pub fn arch(&self) -> &ModelConfig {
        &self.arch
    }

    /// The target scaler.
    pub fn target(&self) -> TargetScaler {
        self.target
    }

    /// The training loss.
    pub fn loss(&self) -> RegressionLoss {
        self.loss
    }
}

impl Task for RegressionTask {
    type Item = Row<f32>;
    type Model<B: Backend> = Model<B>;
    type Batch<B: Backend> = (Tensor<B, 2>, Tensor<B, 1>);

    /// The architecture's fields with `task`, `loss`, `target_mean` and `target_std`.
    fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.arch).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("task".into(), "regression".into());
            map.insert("loss".into(), serde_json::to_value(self.loss).unwrap_or_default());
            map.insert("target_mean".into(), self.target.mean.into());
            map.insert("target_std".into(), self.target.std.into());
        }
        v
    }

    fn init<B: Backend>(&self, device: &B::Device) -> Model<B> {
        self.arch.init(device)
    }

    fn collate<B: Backend>(&self, items: Vec<Row<f32>>, device: &B::Device) -> Result<Self::Batch<B>> {
        let x = crate::classifier::features::<B, f32>(&items, &self.arch, device)?;
        let y = items
            .iter()
            .map(|row| match *row.target() {
                target if target.is_finite() => Ok(self.target.transform(f64::from(target)) as f32),
                target => {
                    Err(Error::Shape(format!("item {}: the target {target} is not a finite number", row.index())))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((x, Tensor::from_data(TensorData::new(y, [items.len()]), device)))
    }

    fn step<B: Backend>(&self, model: &Model<B>, (x, y): Self::Batch<B>) -> Result<Step<B>> {
        let rows = y.dims()[0];
        let output = model.forward(x);
        let [_, outputs] = output.dims();
        if outputs != 1 {
            return Err(Error::Shape(format!("a regression model must have one output, this one has {outputs}")));
        }
        let prediction = output.reshape([rows]);
        let loss = match self.loss {
            RegressionLoss::Mse => (prediction.clone() - y.clone()).powi_scalar(2).mean(),
            RegressionLoss::Huber { delta } => {
                HuberLossConfig::new(delta as f32).init().forward(prediction.clone(), y.clone(), Reduction::Mean)
            }
        };
        let error = prediction.detach() - y.clone();
        Ok(Step::new(loss, rows)
            .sum("sq_err", error.clone().powi_scalar(2))
            .sum("abs_err", error.abs())
            .sum("y", y.clone())
            .sum("y_sq", y.powi_scalar(2)))
    }

    /// `mse`, `rmse`, `mae` in the target's units; `r2` against the epoch's own target mean.
    fn metrics(&self, totals: &Totals) -> Result<Vec<(String, f64)>> {
        let n = totals.rows.max(1) as f64;
        let std = self.target.std;
        let mse = totals.sum("sq_err") / n * std * std;
        let (sum, sum_sq) = (totals.sum("y"), totals.sum("y_sq"));
        let total = sum_sq - sum * sum / n;
        let r2 = if total > 0.0 { 1.0 - totals.sum("sq_err") / total } else { f64::NAN };
        Ok(vec![
            ("mse".into(), mse),
            ("rmse".into(), mse.sqrt()),
            ("mae".into(), totals.sum("abs_err") / n * std),
            ("r2".into(), r2),
        ])
    }

    /// At least 1024 rows: validation of a tabular model is cheap per row.
    fn valid_batch_size(&self, train_batch_size: usize) -> usize {
        train_batch_size.max(1024)
    }
}

/// A trained regression model on the CPU: predictions in the target's units.
#[derive(Debug)]
pub struct Regressor {
    arch: ModelConfig,
    target: TargetScaler,
    model: Model<Flex>,
}

impl Regressor {
    /// Loads serialised weights (`Fitted::weights`) into `arch`, predicting through `target`.
    pub fn from_weights(arch: ModelConfig, target: TargetScaler, weights: &[u8]) -> Result<Self> {
        arch.validate_outputs(1)?;
        let device = Default::default();
        let record = Recorder::<Flex>::load(&recorder(), weights.to_vec(), &device)
            .map_err(|e| Error::Weights(e.to_string()))?;
        let model = arch.init_for_loading::<Flex>(&device).load_record(record);
        Ok(Self { arch, target, model })
    }

    /// Loads weights from a safetensors file's bytes, as [`Regressor::to_safetensors`] writes
    /// them (PyTorch's names and layouts; every parameter of `arch`, nothing else).
    pub fn from_safetensors(arch: ModelConfig, target: TargetScaler, bytes: &[u8]) -> Result<Self> {
        arch.validate_outputs(1)?;
        let model = crate::classifier::model_from_safetensors(&arch, bytes)?;
        Ok(Self { arch, target, model })
    }

    /// The weights as a safetensors file, with PyTorch's parameter names and layouts (the
    /// target scaler is not a weight: a package keeps it in its manifest).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        crate::classifier::model_to_safetensors(&self.model)
    }

    /// The architecture.
    pub fn arch(&self) -> &ModelConfig {
        &self.arch
    }

    /// The target scaler.
    pub fn target(&self) -> TargetScaler {
        self.target
    }

    /// One prediction per row, in the target's units.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Result<Vec<f64>> {
        let inputs = self.arch.inputs();
        if x.ncols() != inputs {
            return Err(Error::Shape(format!("the model takes {inputs} features, the input has {}", x.ncols())));
        }
        if x.nrows() == 0 {
            return Ok(Vec::new());
        }
        let data: Vec<f32> = x.iter().copied().collect();
        let input = Tensor::<Flex, 2>::from_data(TensorData::new(data, [x.nrows(), inputs]), &Default::default());
        let output = self.model.forward(input);
        Ok(output.into_data().iter::<f32>().map(|z| self.target.inverse(f64::from(z))).collect())
    }
}

/// How far predictions are from the truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionReport {
    /// Rows compared.
    pub rows: usize,
    /// Root mean squared error.
    #[serde(with = "crate::trainer::nonfinite::one")]
    pub rmse: f64,
    /// Mean absolute error.
    #[serde(with = "crate::trainer::nonfinite::one")]
    pub mae: f64,
    /// Coefficient of determination (1 − SSE/SST; NaN when every truth is equal; in JSON a
    /// non-finite value is the string `"NaN"`).
    #[serde(with = "crate::trainer::nonfinite::one")]
    pub r2: f64,
}

impl RegressionReport {
    /// Compares `predicted` with `truth`, pairwise (the lengths must agree, and there must be
    /// at least one row).
    pub fn new(truth: &[f64], predicted: &[f64]) -> Result<Self> {
        if truth.len() != predicted.len() || truth.is_empty() {
            return Err(Error::Shape(format!(
                "{} true values and {} predictions (need as many, at least one)",
                truth.len(),
                predicted.len()
            )));
        }
        let n = truth.len() as f64;
        let sse: f64 = truth.iter().zip(predicted).map(|(t, p)| (t - p).powi(2)).sum();
        let mae = truth.iter().zip(predicted).map(|(t, p)| (t - p).abs()).sum::<f64>() / n;
        let mean = truth.iter().sum::<f64>() / n;
        let sst: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
        let r2 = if sst > 0.0 { 1.0 - sse / sst } else { f64::NAN };
        Ok(Self { rows: truth.len(), rmse: (sse / n).sqrt(), mae, r2 })
    }

    /// As named metrics (`rmse`, `mae`, `r2`), for a tracking run or a [`crate::PromotionGate`]
    /// (with `rmse` and `mae` among its `lower_is_better`).
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        [("rmse", self.rmse), ("mae", self.mae), ("r2", self.r2)].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_scaler_standardises_and_refuses_bad_targets() {
        let s = TargetScaler::fit(&[2.0, 4.0, 6.0], "training").unwrap();
        assert_eq!(s.mean, 4.0);
        assert!((s.std - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.inverse(s.transform(5.5)) - 5.5).abs() < 1e-12);
        assert_eq!(TargetScaler::fit(&[3.0, 3.0], "t").unwrap().std, 1.0);
        let err = TargetScaler::fit(&[1.0, f32::NAN], "training").unwrap_err().to_string();
        assert!(err.contains("training row 1") && err.contains("NaN"), "{err}");
    }

    #[test]
    fn the_report_matches_hand_computed_values() {
        let r = RegressionReport::new(&[1.0, 2.0, 3.0, 4.0], &[1.5, 2.0, 2.0, 5.0]).unwrap();
        // errors 0.5, 0, -1, 1: SSE 2.25, MAE 2.5/4; SST 5.
        assert!((r.rmse - (2.25f64 / 4.0).sqrt()).abs() < 1e-12);
        assert!((r.mae - 0.625).abs() < 1e-12);
        assert!((r.r2 - (1.0 - 2.25 / 5.0)).abs() < 1e-12);
        assert!(RegressionReport::new(&[1.0], &[]).is_err());
        // Every truth equal: R² is undefined, and the report still round-trips through JSON.
        let flat = RegressionReport::new(&[2.0, 2.0], &[1.0, 3.0]).unwrap();
        assert!(flat.r2.is_nan());
        let json = serde_json::to_string(&flat).unwrap();
        assert!(json.contains("\"r2\":\"NaN\""), "{json}");
        let back: RegressionReport = serde_json::from_str(&json).unwrap();
        assert!(back.r2.is_nan() && back.rmse == flat.rmse);
    }

    #[test]
    fn a_model_with_more_than_one_output_is_refused() {
        let err = RegressionTask::new(
            ModelConfig::mlp(3, &[4], 2),
            RegressionLoss::Mse,
            TargetScaler { mean: 0.0, std: 1.0 },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("1 output") && err.contains("got 3 inputs and 2 outputs"), "{err}");
    }
}
