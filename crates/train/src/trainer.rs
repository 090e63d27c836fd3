//! The training loop.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_data::SplitMix64;
use kiln_track::Run;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::model::{Mlp, MlpConfig};
use crate::{Device, DeviceSpec, Error, Result};

static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Rows of features and their class indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    /// `rows × features`, already preprocessed.
    pub x: Array2<f32>,
    /// Class index of each row.
    pub y: Vec<usize>,
}

impl Examples {
    /// Pairs features with labels, checking that the lengths agree.
    pub fn new(x: Array2<f32>, y: Vec<usize>) -> Result<Self> {
        if x.nrows() != y.len() {
            return Err(Error::Shape(format!("{} feature rows but {} labels", x.nrows(), y.len())));
        }
        Ok(Self { x, y })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// Hyperparameters of a training run. Logged as run parameters and stored in the package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden layer.
    pub dropout: f64,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Rows per optimisation step.
    pub batch_size: usize,
    /// Adam step size.
    pub learning_rate: f64,
    /// L2 weight decay (0 turns it off).
    pub weight_decay: f64,
    /// Seed for weight initialisation, dropout and batch order.
    pub seed: u64,
    /// Where to train.
    pub device: DeviceSpec,
    /// Stop after this many epochs without a lower validation loss. The weights of the best
    /// epoch (lowest validation loss) are kept whenever validation rows are given.
    pub early_stopping_patience: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden: vec![128, 64],
            dropout: 0.1,
            epochs: 20,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            seed: 42,
            device: DeviceSpec::Auto,
            early_stopping_patience: None,
        }
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::Config(format!(
                "epochs and batch_size must be positive, got {} and {}",
                self.epochs, self.batch_size
            )));
        }
        let lr_ok = self.learning_rate.is_finite() && self.learning_rate > 0.0;
        let decay_ok = self.weight_decay.is_finite() && self.weight_decay >= 0.0;
        if !lr_ok || !decay_ok {
            return Err(Error::Config(format!(
                "learning_rate must be positive and weight_decay non-negative, got {} and {}",
                self.learning_rate, self.weight_decay
            )));
        }
        Ok(())
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch's batches (with dropout active).
    pub train_accuracy: f64,
    /// Validation loss at the end of the epoch.
    pub val_loss: Option<f64>,
    /// Validation accuracy at the end of the epoch.
    pub val_accuracy: Option<f64>,
    /// Wall time of the epoch.
    pub seconds: f64,
}

/// The result of [`train`]: weights (burn's named MessagePack record, full precision) and history.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The architecture.
    pub model: MlpConfig,
    /// Serialised weights of the kept epoch.
    pub weights: Vec<u8>,
    /// One report per epoch run.
    pub history: Vec<EpochReport>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// The device it trained on.
    pub device: Device,
}

impl Trained {
    /// A CPU classifier with the trained weights.
    pub fn classifier(&self) -> Result<Classifier> {
        Classifier::from_weights(self.model.clone(), &self.weights)
    }
}

/// Trains an [`Mlp`] on `train` for `classes` classes, validating on `val` after each epoch.
///
/// Each epoch's metrics go to `run` (as `train_loss`, `train_accuracy`, `val_loss`,
/// `val_accuracy` at step = epoch, flushed to disk) and to `on_epoch`. A progress bar is drawn
/// on stderr when it is a terminal. The same config, seed and data give the same weights on
/// the CPU; calls from several threads of one process run one after another (burn draws all
/// random numbers from one process-wide generator).
pub fn train(
    config: &TrainConfig,
    classes: usize,
    train: &Examples,
    val: Option<&Examples>,
    run: Option<&mut Run>,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<Trained> {
    config.validate()?;
    if train.is_empty() {
        return Err(Error::Shape("no training rows".into()));
    }
    if val.is_some_and(Examples::is_empty) {
        return Err(Error::Shape("the validation set has no rows (pass None to train without one)".into()));
    }
    let model = MlpConfig { inputs: train.x.ncols(), hidden: config.hidden.clone(), classes, dropout: config.dropout };
    model.validate()?;
    for (name, ex) in [("training", Some(train)), ("validation", val)] {
        if let Some(ex) = ex {
            if let Some(bad) = ex.y.iter().find(|c| **c >= classes) {
                return Err(Error::Shape(format!("{name} label index {bad} is out of range for {classes} classes")));
            }
            if ex.x.ncols() != model.inputs {
                return Err(Error::Shape(format!(
                    "{name} rows have {} features, training rows {}",
                    ex.x.ncols(),
                    model.inputs
                )));
            }
        }
    }
    let device = config.device.resolve()?;
    // burn's backends draw every random number (initialisation, dropout) from one
    // process-wide generator, so two trainings at once would interleave draws and neither
    // would be reproducible from its seed. Trainings in one process therefore take turns;
    // run trials in parallel as separate processes (array tasks) instead.
    let _turn = TRAINING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match device {
        Device::Cpu => fit::<Autodiff<Flex>>(Default::default(), device, config, model, train, val, run, on_epoch),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            let cuda = burn::backend::cuda::CudaDevice::new(n);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fit::<Autodiff<burn::backend::Cuda>>(cuda, device, config, model, train, val, run, on_epoch)
            }))
            .map_err(|_| Error::Device(format!("training on cuda:{n} panicked inside the CUDA backend")))?
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(n) => {
            Err(Error::Device(format!("cuda:{n} requested, but kiln was built without the `cuda` feature")))
        }
    }
}

fn to_tensor<B: Backend>(x: ArrayView2<'_, f32>, device: &B::Device) -> Tensor<B, 2> {
    let (rows, cols) = x.dim();
    let data: Vec<f32> = x.iter().copied().collect();
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

fn to_labels<B: Backend>(y: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = y.iter().map(|v| *v as i64).collect();
    Tensor::from_data(TensorData::new(data, [y.len()]), device)
}

fn argmax<B: Backend>(logits: Tensor<B, 2>) -> Vec<usize> {
    logits.argmax(1).into_data().iter::<i64>().map(|v| v as usize).collect()
}

fn record<B: Backend>(model: &Mlp<B>) -> Result<Vec<u8>> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    Recorder::<B>::record(&recorder, model.clone().into_record(), ()).map_err(|e| Error::Weights(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
fn fit<B: AutodiffBackend>(
    device: B::Device,
    resolved: Device,
    config: &TrainConfig,
    arch: MlpConfig,
    train: &Examples,
    val: Option<&Examples>,
    mut run: Option<&mut Run>,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<Trained> {
    B::seed(&device, config.seed);
    let mut model: Mlp<B> = arch.init(&device);
    let decay = (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    let mut optim = AdamConfig::new().with_weight_decay(decay).init::<B, Mlp<B>>();
    let loss_fn = CrossEntropyLossConfig::new().init::<B>(&device);
    let x_train = to_tensor::<B>(train.x.view(), &device);
    let y_train = to_labels::<B>(&train.y, &device);
    let val_tensors = val
        .map(|v| (to_tensor::<B::InnerBackend>(v.x.view(), &device), to_labels::<B::InnerBackend>(&v.y, &device), v));
    let val_loss_fn = CrossEntropyLossConfig::new().init::<B::InnerBackend>(&device);

    let n = train.len();
    let batches = n.div_ceil(config.batch_size);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(config.seed ^ 0x6B69_6C6E);
    let mut history = Vec::with_capacity(config.epochs);
    let mut best: Option<(f64, usize, Vec<u8>)> = None;
    let mut since_best = 0usize;

    for epoch in 1..=config.epochs {
        let started = Instant::now();
        rng.shuffle(&mut order);
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} batches")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{epoch}/{}", config.epochs));
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for chunk in order.chunks(config.batch_size) {
            let idx_data: Vec<i64> = chunk.iter().map(|i| *i as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx_data, [chunk.len()]), &device);
            let xb = x_train.clone().select(0, idx.clone());
            let yb = y_train.clone().select(0, idx);
            let logits = model.forward(xb);
            let loss = loss_fn.forward(logits.clone(), yb);
            let loss_value = f64::from(loss.clone().into_scalar().elem::<f32>());
            if !loss_value.is_finite() {
                bar.finish_and_clear();
                return Err(Error::Diverged { epoch, loss: loss_value });
            }
            loss_sum += loss_value * chunk.len() as f64;
            correct += argmax(logits.detach()).iter().zip(chunk).filter(|(p, i)| **p == train.y[**i]).count();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.learning_rate, model, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();

        let (val_loss, val_accuracy) = match &val_tensors {
            Some((x, y, v)) => {
                let eval = model.valid();
                let logits = eval.forward(x.clone());
                let loss = f64::from(val_loss_fn.forward(logits.clone(), y.clone()).into_scalar().elem::<f32>());
                let hits = argmax(logits).iter().zip(&v.y).filter(|(p, t)| *p == *t).count();
                (Some(loss), Some(hits as f64 / v.len() as f64))
            }
            None => (None, None),
        };
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            val_loss,
            val_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        };
        if let Some(run) = run.as_deref_mut() {
            let step = epoch as u64;
            run.log_metric("train_loss", step, report.train_loss)?;
            run.log_metric("train_accuracy", step, report.train_accuracy)?;
            if let (Some(l), Some(a)) = (report.val_loss, report.val_accuracy) {
                run.log_metric("val_loss", step, l)?;
                run.log_metric("val_accuracy", step, a)?;
            }
            run.log_metric("epoch_seconds", step, report.seconds)?;
            run.flush()?;
        }
        on_epoch(&report);
        history.push(report);

        if let Some(vl) = val_loss {
            if best.as_ref().is_none_or(|(b, _, _)| vl < *b) {
                best = Some((vl, epoch, record(&model.valid())?));
                since_best = 0;
            } else {
                since_best += 1;
                if config.early_stopping_patience.is_some_and(|p| since_best >= p) {
                    tracing::info!(epoch, "early stopping: no lower validation loss for {since_best} epochs");
                    break;
                }
            }
        }
    }
    let (best_epoch, weights) = match best {
        Some((_, epoch, weights)) => (epoch, weights),
        None => (history.len(), record(&model.valid())?),
    };
    Ok(Trained { model: arch, weights, history, best_epoch, device: resolved })
}

/// The index of the largest value (the first, on ties; NaN never wins).
pub(crate) fn best_class<'a>(values: impl IntoIterator<Item = &'a f32>) -> usize {
    values.into_iter().enumerate().fold((0, f32::MIN), |best, (i, v)| if *v > best.1 { (i, *v) } else { best }).0
}

/// A trained MLP on the CPU, for prediction.
#[derive(Debug)]
pub struct Classifier {
    config: MlpConfig,
    model: Mlp<Flex>,
}

impl Classifier {
    /// Loads serialised weights into an architecture.
    pub fn from_weights(config: MlpConfig, weights: &[u8]) -> Result<Self> {
        config.validate()?;
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let device = Default::default();
        let record =
            Recorder::<Flex>::load(&recorder, weights.to_vec(), &device).map_err(|e| Error::Weights(e.to_string()))?;
        let model = config.init_for_loading::<Flex>(&device).load_record(record);
        Ok(Self { config, model })
    }

    /// The architecture.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// Class probabilities (softmax of the logits), `rows × classes`.
    pub fn predict_proba(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        if x.ncols() != self.config.inputs {
            return Err(Error::Shape(format!(
                "the model takes {} features, the input has {}",
                self.config.inputs,
                x.ncols()
            )));
        }
        if x.nrows() == 0 {
            return Ok(Array2::zeros((0, self.config.classes)));
        }
        let logits = self.model.forward(to_tensor::<Flex>(x, &Default::default()));
        let probs = burn::tensor::activation::softmax(logits, 1);
        let values: Vec<f32> = probs.into_data().iter::<f32>().collect();
        Array2::from_shape_vec((x.nrows(), self.config.classes), values).map_err(|e| Error::Shape(e.to_string()))
    }

    /// The most probable class of each row.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Result<Vec<usize>> {
        let p = self.predict_proba(x)?;
        Ok(p.rows().into_iter().map(|r| best_class(r.iter())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::best_class;

    #[test]
    fn best_class_takes_the_first_maximum_and_never_nan() {
        assert_eq!(best_class(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(best_class(&[0.4, 0.4, 0.2]), 0);
        assert_eq!(best_class(&[f32::NAN, 0.3, 0.7]), 2);
        assert_eq!(best_class(&[]), 0);
    }
}
