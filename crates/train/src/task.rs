//! The seam between kiln's training loop and a researcher's own model: [`Task`].
//!
//! A task says how to build the model on a device, how to turn a batch of items from a
//! [`Source`](kiln_data::Source) into tensors, and what one step computes: the loss (not yet
//! backwarded) and named sums for metrics. [`fit`](crate::fit()) does everything else, the same way for
//! every task: optimiser and schedule, accumulation, clipping, the NaN guard, early stopping
//! and best checkpoints on any named metric, atomic step checkpoints with exact mid-epoch
//! resume, signals, tracking, hooks. The task's code is generic over burn's `Backend`, so the
//! same model trains on the CPU and on CUDA in f32, f16 or bf16.

use std::borrow::Cow;
use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor};

use crate::{Error, Result};

/// A model, its data and its loss, for [`fit`](crate::fit()).
///
/// Implement it for a plain struct holding the task's settings; the model type is generic
/// over the backend (`type Model<B: Backend> = MyNet<B>;` for a `#[derive(Module)]` struct).
/// kiln calls [`Task::train_step`] on an autodiff backend and [`Task::step`] on its inner
/// backend for validation (where dropout is off and batch norm uses its running statistics).
///
/// A linear regression, as small as a task gets (docs/training.md, "Your own model", has a
/// fuller one):
///
/// ```
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::backend::Backend;
/// use burn::tensor::{Tensor, TensorData};
/// use kiln_data::{SplitMix64, from_fn};
/// use kiln_train::{DeviceSpec, Step, Task, TrainConfig, fit};
///
/// struct Line;
///
/// impl Task for Line {
///     type Item = (f32, f32);
///     type Model<B: Backend> = Linear<B>;
///     type Batch<B: Backend> = (Tensor<B, 2>, Tensor<B, 2>);
///
///     fn describe(&self) -> serde_json::Value {
///         serde_json::json!({ "kind": "line" })
///     }
///     fn init<B: Backend>(&self, device: &B::Device) -> Linear<B> {
///         LinearConfig::new(1, 1).init(device)
///     }
///     fn collate<B: Backend>(&self, items: Vec<(f32, f32)>, device: &B::Device) -> kiln_train::Result<Self::Batch<B>> {
///         let n = items.len();
///         let (x, y): (Vec<f32>, Vec<f32>) = items.into_iter().unzip();
///         Ok((Tensor::from_data(TensorData::new(x, [n, 1]), device), Tensor::from_data(TensorData::new(y, [n, 1]), device)))
///     }
///     fn step<B: Backend>(&self, line: &Linear<B>, (x, y): Self::Batch<B>) -> kiln_train::Result<Step<B>> {
///         let n = y.dims()[0];
///         let error = line.forward(x) - y;
///         Ok(Step::new(error.clone().powi_scalar(2).mean(), n).sum("mse", error.detach().powi_scalar(2)))
///     }
/// }
///
/// # fn main() -> kiln_train::Result<()> {
/// let points = from_fn("y = 2x + 1", 64, "v1", |i, _: &mut SplitMix64| {
///     let x = i as f32 / 64.0;
///     Ok((x, 2.0 * x + 1.0))
/// });
/// let config = TrainConfig { epochs: 100, batch_size: 16, learning_rate: 0.05, device: DeviceSpec::Cpu, ..Default::default() };
/// let fitted = fit(&config, &Line, points, None, None, &mut ())?;
/// assert!(fitted.history.last().and_then(|e| e.metric("train_mse")).unwrap() < 1e-3);
/// # Ok(()) }
/// ```
pub trait Task: Send + Sync {
    /// One decoded example, as the data source yields it.
    type Item: Send + 'static;
    /// The model on backend `B`.
    type Model<B: Backend>: Module<B>;
    /// A batch of items as tensors on backend `B`.
    type Batch<B: Backend>;

    /// What the task is (architecture and settings), as JSON: logged as the run's `model.*`
    /// parameters, stored in checkpoints, and compared when a training resumes.
    fn describe(&self) -> serde_json::Value;

    /// A freshly initialised model on `device` (kiln seeds burn's generator first).
    fn init<B: Backend>(&self, device: &B::Device) -> Self::Model<B>;

    /// Turns the items of one batch into tensors on `device`. An item that does not fit (a
    /// wrong shape, a label out of range) is an error naming it.
    fn collate<B: Backend>(&self, items: Vec<Self::Item>, device: &B::Device) -> Result<Self::Batch<B>>;

    /// Forward pass and loss of one batch: the batch-mean loss, the number of rows, and named
    /// sums for metrics. Used for validation, and for training unless
    /// [`Task::train_step`] is given.
    fn step<B: Backend>(&self, model: &Self::Model<B>, batch: Self::Batch<B>) -> Result<Step<B>>;

    /// The training step, when it differs from [`Task::step`] (an extra regulariser, say).
    /// Return the loss without calling `backward`: kiln checks it, scales it for gradient
    /// accumulation and backwards it.
    fn train_step<B: AutodiffBackend>(&self, model: &Self::Model<B>, batch: Self::Batch<B>) -> Result<Step<B>> {
        self.step(model, batch)
    }

    /// The epoch's metrics from its totals, by name (kiln adds `train_` or `val_`). The default
    /// divides every sum by the row count: a sum named `accuracy` that counts correct rows
    /// becomes `train_accuracy` and `val_accuracy`.
    fn metrics(&self, totals: &Totals) -> Result<Vec<(String, f64)>> {
        Ok(totals.means())
    }

    /// Rows per validation batch, given the training batch size (validation keeps no
    /// activations for backward, so it can often take more).
    fn valid_batch_size(&self, train_batch_size: usize) -> usize {
        train_batch_size
    }

    /// Whether this task weights its loss by class as `TrainConfig::class_weights` asks (it
    /// took the weights when it was built, as [`crate::ClassifierTask`] does). [`crate::fit`]
    /// refuses a config with class weights for a task that does not, rather than ignore them.
    fn weights_classes(&self) -> bool {
        false
    }
}

/// What one step of a [`Task`] computed.
#[derive(Debug, Clone)]
pub struct Step<B: Backend> {
    /// The mean loss over the batch's rows (one element), not yet backwarded.
    pub loss: Tensor<B, 1>,
    /// Rows in the batch: the weight of this batch's loss and the denominator of its sums.
    pub rows: usize,
    /// Named sums over the batch's rows (one element each): correct predictions, absolute
    /// errors, squared errors. Summed over the epoch, then turned into metrics by
    /// [`Task::metrics`].
    pub sums: Vec<(Cow<'static, str>, Tensor<B, 1>)>,
    /// Named per-row values kept over a validation epoch (scores and labels for ROC-AUC), read
    /// by [`Task::metrics`] through [`Totals::values`]. Ignored in training epochs.
    pub values: Vec<(Cow<'static, str>, Tensor<B, 1>)>,
}

impl<B: Backend> Step<B> {
    /// A step with its mean loss over `rows` rows.
    pub fn new(loss: Tensor<B, 1>, rows: usize) -> Self {
        Self { loss, rows, sums: Vec::new(), values: Vec::new() }
    }

    /// Adds a named sum (a one-element tensor, or any tensor, which is summed). The sum is taken
    /// in f32 whatever the backend's float type, so counts stay exact and squares do not
    /// overflow in f16 or bf16.
    #[must_use]
    pub fn sum<const D: usize>(mut self, name: impl Into<Cow<'static, str>>, value: Tensor<B, D>) -> Self {
        self.sums.push((name.into(), value.cast(FloatDType::F32).sum()));
        self
    }

    /// Adds named per-row values kept over validation (flattened).
    #[must_use]
    pub fn values<const D: usize>(mut self, name: impl Into<Cow<'static, str>>, values: Tensor<B, D>) -> Self {
        let n = values.shape().num_elements();
        self.values.push((name.into(), values.reshape([n])));
        self
    }
}

/// The sums of an epoch (training, or one validation pass), for [`Task::metrics`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Rows seen.
    pub rows: usize,
    /// Σ batch-mean loss × batch rows.
    pub loss_sum: f64,
    /// Every named sum.
    pub sums: BTreeMap<String, f64>,
    /// Every named per-row value list (validation only).
    pub values: BTreeMap<String, Vec<f32>>,
}

impl Totals {
    /// The mean loss per row.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.rows.max(1) as f64
    }

    /// A named sum (0 when the task never reported it).
    pub fn sum(&self, name: &str) -> f64 {
        self.sums.get(name).copied().unwrap_or(0.0)
    }

    /// A named sum divided by the rows.
    pub fn mean(&self, name: &str) -> f64 {
        self.sum(name) / self.rows.max(1) as f64
    }

    /// Every sum divided by the rows, by name.
    pub fn means(&self) -> Vec<(String, f64)> {
        self.sums.iter().map(|(k, v)| (k.clone(), v / self.rows.max(1) as f64)).collect()
    }

    /// The per-row values kept under `name` (validation only; empty otherwise).
    pub fn values(&self, name: &str) -> &[f32] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    /// Adds a step's loss and sums (read from the device at once); returns the step's loss.
    /// `what` names the batch in errors.
    pub(crate) fn add<B: Backend>(&mut self, step: Step<B>, keep_values: bool, what: &str) -> Result<f64> {
        let Step { loss, rows, sums, values } = step;
        if loss.dims() != [1] {
            return Err(Error::Shape(format!(
                "{what}: the task's loss has shape {:?}; it must be the batch mean, one element (call `.mean()`)",
                loss.dims()
            )));
        }
        if let Some((name, t)) = sums.iter().find(|(_, t)| t.dims() != [1]) {
            return Err(Error::Shape(format!(
                "{what}: the task's sum `{name}` has shape {:?}; it must have one element (use `Step::sum`)",
                t.dims()
            )));
        }
        let mut parts = Vec::with_capacity(1 + sums.len());
        parts.push(loss.detach().cast(FloatDType::F32));
        parts.extend(sums.iter().map(|(_, t)| t.clone().cast(FloatDType::F32)));
        // One read from the device for the loss and every sum.
        let read: Vec<f64> = Tensor::cat(parts, 0).into_data().iter::<f32>().map(f64::from).collect();
        let loss = read[0];
        self.rows += rows;
        self.loss_sum += loss * rows as f64;
        for ((name, _), v) in sums.iter().zip(&read[1..]) {
            match self.sums.get_mut(name.as_ref()) {
                Some(sum) => *sum += v,
                None => {
                    self.sums.insert(name.to_string(), *v);
                }
            }
        }
        if keep_values {
            for (name, t) in values {
                self.values.entry(name.into_owned()).or_default().extend(t.into_data().iter::<f32>());
            }
        }
        Ok(loss)
    }
}

/// A task that [`fit`](crate::fit()) can train on every backend this build of kiln has: the CPU, and with
/// the `cuda` feature CUDA in f32, f16 and bf16. Every [`Task`] whose model is a
/// `#[derive(Module)]` struct generic over its backend is one; nothing to implement.
pub trait Trainable: Task + Sized {
    /// Runs a training on the device its config names (kiln's, not for users to call).
    #[doc(hidden)]
    fn launch<S: kiln_data::Source<Item = Self::Item>>(&self, job: crate::fit::Job<'_, S>) -> Result<crate::Fitted>;
}

#[cfg(not(feature = "cuda"))]
impl<T: Task> Trainable for T
where
    T::Model<burn::backend::Autodiff<burn::backend::Flex>>:
        AutodiffModule<burn::backend::Autodiff<burn::backend::Flex>, InnerModule = T::Model<burn::backend::Flex>>,
{
    fn launch<S: kiln_data::Source<Item = T::Item>>(&self, job: crate::fit::Job<'_, S>) -> Result<crate::Fitted> {
        match (job.device, job.config.precision) {
            (crate::Device::Cpu, crate::Precision::F32) => crate::trainer::on_cpu_pool(|| job.fit_cpu(self)),
            (crate::Device::Cpu, p) => Err(cpu_precision(p)),
            (crate::Device::Cuda(n), _) => {
                Err(Error::Device(format!("cuda:{n} requested, but kiln was built without the `cuda` feature")))
            }
        }
    }
}

#[cfg(feature = "cuda")]
impl<T: Task> Trainable for T
where
    T::Model<burn::backend::Autodiff<burn::backend::Flex>>:
        AutodiffModule<burn::backend::Autodiff<burn::backend::Flex>, InnerModule = T::Model<burn::backend::Flex>>,
    T::Model<burn::backend::Autodiff<burn::backend::Cuda<f32>>>: AutodiffModule<
            burn::backend::Autodiff<burn::backend::Cuda<f32>>,
            InnerModule = T::Model<burn::backend::Cuda<f32>>,
        >,
    T::Model<burn::backend::Autodiff<burn::backend::Cuda<burn::tensor::f16>>>: AutodiffModule<
            burn::backend::Autodiff<burn::backend::Cuda<burn::tensor::f16>>,
            InnerModule = T::Model<burn::backend::Cuda<burn::tensor::f16>>,
        >,
    T::Model<burn::backend::Autodiff<burn::backend::Cuda<burn::tensor::bf16>>>: AutodiffModule<
            burn::backend::Autodiff<burn::backend::Cuda<burn::tensor::bf16>>,
            InnerModule = T::Model<burn::backend::Cuda<burn::tensor::bf16>>,
        >,
{
    fn launch<S: kiln_data::Source<Item = T::Item>>(&self, job: crate::fit::Job<'_, S>) -> Result<crate::Fitted> {
        use burn::backend::{Autodiff, Cuda};
        use burn::tensor::{bf16, f16};
        match (job.device, job.config.precision) {
            (crate::Device::Cpu, crate::Precision::F32) => crate::trainer::on_cpu_pool(|| job.fit_cpu(self)),
            (crate::Device::Cpu, p) => Err(cpu_precision(p)),
            (crate::Device::Cuda(n), p) => {
                let cuda = burn::backend::cuda::CudaDevice::new(n);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match p {
                    crate::Precision::F32 => job.fit::<Autodiff<Cuda<f32>>, T>(self, cuda),
                    crate::Precision::F16 => job.fit::<Autodiff<Cuda<f16>>, T>(self, cuda),
                    crate::Precision::Bf16 => job.fit::<Autodiff<Cuda<bf16>>, T>(self, cuda),
                }))
                .map_err(|_| Error::Device(format!("training on cuda:{n} panicked inside the CUDA backend")))?
            }
        }
    }
}

fn cpu_precision(p: crate::Precision) -> Error {
    Error::Config(format!(
        "precision {p:?} needs a CUDA device; the CPU backend trains in f32 (set precision = \"f32\")"
    ))
}
