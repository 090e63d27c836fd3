//! The training loop.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer, SgdConfig};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_data::SplitMix64;
use kiln_track::Run;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Best, LoopState};
use crate::config::{ClassWeights, GradClip, MonitorMetric, OptimizerConfig, Precision, TrainConfig};
use crate::model::{Model, ModelConfig};
use crate::optim;
use crate::{Device, Error, Result};

static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Adam's epsilon, as PyTorch's.
const EPSILON: f32 = 1e-8;

/// Runs `f` (a CPU training) on a worker of kiln's training thread pool and keeps the pool's
/// other workers waiting for work, awake, until `f` returns.
///
/// burn's CPU backend splits each large matrix product over the current rayon pool. Called
/// from a thread outside a pool, every such product parks the caller and wakes a worker, and
/// between products the workers fall asleep: on the 512-wide MLP that was ~180 context
/// switches per step, and the second core bought nothing. On a worker, a product's halves are
/// shared by work stealing, and the other workers, spinning, take their half at once (as
/// PyTorch's OpenMP threads do). A worker idle for 2 ms polls every 0.2 ms instead, so
/// validation or a checkpoint write does not keep the cores busy.
///
/// The pool is kiln's own (`kiln-train-N` threads, as many as rayon's global pool would have,
/// `RAYON_NUM_THREADS` included), built on first use: its spinning workers never pick up the
/// caller's unrelated rayon jobs, and trainings take turns anyway. Without it (the threads
/// could not be started) `f` runs on the calling thread. The caller's tracing span is entered
/// on the worker.
fn on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// How long a worker spins for the next piece of work before it polls more slowly (a
    /// step's gaps between matrix products are well under this; validation or a checkpoint
    /// write is not).
    const SPIN_FOR: Duration = Duration::from_millis(2);
    /// The slower poll. Not `yield_now`: on a VM, yielding hands the core to the hypervisor
    /// and the next product's half is missed.
    const POLL_EVERY: Duration = Duration::from_micros(200);

    /// Releases the waiting workers however `f` ends (a panic included), so the scope can end.
    struct Release<'a>(&'a AtomicBool);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("kiln-train-{i}"))
            .build()
            .inspect_err(|e| tracing::warn!("no training thread pool ({e}); training on the calling thread"))
            .ok()
    });
    let span = tracing::Span::current();
    let Some(pool) = pool else {
        let _entered = span.enter();
        return f();
    };
    let run = || {
        let done = &AtomicBool::new(false);
        pool.install(|| {
            rayon::scope(|scope| {
                let trainer = rayon::current_thread_index();
                for _ in 1..rayon::current_num_threads() {
                    scope.spawn(move |_| {
                        // The training's own thread can pick this up while it waits inside a
                        // product; waiting there for `done` would never end. No other worker
                        // can meet a spinner inside the training's work: the spinners are
                        // queued before any of it, and a thief takes the oldest job first.
                        if rayon::current_thread_index() == trainer {
                            return;
                        }
                        let (mut idle_since, mut polls, mut slow) = (Instant::now(), 0u32, false);
                        while !done.load(Ordering::Acquire) {
                            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                                (idle_since, polls, slow) = (Instant::now(), 0, false);
                                continue;
                            }
                            polls = polls.wrapping_add(1);
                            if !slow && polls.is_multiple_of(64) {
                                slow = idle_since.elapsed() >= SPIN_FOR;
                            }
                            if slow {
                                std::thread::sleep(POLL_EVERY);
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                    });
                }
                let _release = Release(done);
                let _entered = span.enter();
                f()
            })
        })
    };
    // One call at a time: each call's waiting workers only know their own training thread,
    // so two calls could each end up spinning inside the other's (`train` also takes turns).
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if rayon::current_thread_index().is_some() {
        // Called from a rayon worker (a training inside a parallel loop): waiting in `install`
        // there would run the worker's other jobs meanwhile, and one of them may call `train`
        // and wait for the turn this thread holds. A plain thread waits without doing so.
        return std::thread::scope(|threads| {
            threads.spawn(run).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    }
    run()
}

/// The exit status a training process should use when it stopped on a signal after writing a
/// checkpoint (`EX_TEMPFAIL`): "run me again", which kiln-hpc's requeue logic recognises.
pub const EXIT_INTERRUPTED: i32 = 75;

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

    fn digest_into(&self, hasher: &mut blake3::Hasher) {
        hasher.update(&(self.x.nrows() as u64).to_le_bytes());
        hasher.update(&(self.x.ncols() as u64).to_le_bytes());
        let mut buf = Vec::with_capacity(self.x.ncols() * 4);
        for row in self.x.rows() {
            buf.clear();
            buf.extend(row.iter().flat_map(|v| v.to_le_bytes()));
            hasher.update(&buf);
        }
        for y in &self.y {
            hasher.update(&(*y as u64).to_le_bytes());
        }
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimiser steps done at the end of the epoch.
    #[serde(default)]
    pub step: u64,
    /// Mean training loss over the epoch's batches (class-weighted if configured).
    pub train_loss: f64,
    /// Training accuracy over the epoch's batches (with dropout active).
    pub train_accuracy: f64,
    /// Validation loss at the end of the epoch.
    pub val_loss: Option<f64>,
    /// Validation accuracy at the end of the epoch.
    pub val_accuracy: Option<f64>,
    /// Training wall time of the epoch, validation excluded.
    pub seconds: f64,
}

/// One optimiser step, as hooks see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Optimiser steps done, this one included.
    pub step: u64,
    /// The epoch it belongs to.
    pub epoch: usize,
    /// Mean training loss of the step's rows.
    pub loss: f64,
    /// The learning rate used.
    pub learning_rate: f64,
    /// Training rows per second over the epoch so far.
    pub rows_per_second: f64,
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Every epoch ran.
    Completed,
    /// `max_steps` was reached.
    MaxSteps,
    /// The monitored metric stopped improving.
    EarlyStopped,
    /// A hook asked to stop.
    Requested,
    /// SIGTERM or SIGUSR2 arrived; a checkpoint was written. Exit with [`EXIT_INTERRUPTED`].
    Interrupted {
        /// The signal number.
        signal: i32,
    },
}

/// Callbacks of the training loop. Returning `ControlFlow::Break` stops training at that
/// point (after a checkpoint, when checkpointing), with [`StopReason::Requested`].
///
/// `()` is no hooks; any `FnMut(&EpochReport)` closure is a `Hooks` that only watches epochs
/// (annotate its argument: `&mut |e: &EpochReport| ...`).
///
/// Hooks must be `Send`: CPU training runs on a thread of kiln-train's own thread pool
/// (`kiln-train-N`; docs/training.md, "The CPU backend"), so the hooks are called there, not
/// on the thread that called `train`.
pub trait Hooks: Send {
    /// After each optimiser step.
    fn on_step(&mut self, _step: &StepReport) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// After each epoch's validation.
    fn on_epoch(&mut self, _epoch: &EpochReport) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// No hooks: `train(.., &mut ())`.
impl Hooks for () {}

impl<F: FnMut(&EpochReport) + Send> Hooks for F {
    fn on_epoch(&mut self, epoch: &EpochReport) -> ControlFlow<()> {
        self(epoch);
        ControlFlow::Continue(())
    }
}

/// The result of [`train`].
#[derive(Debug, Clone)]
pub struct Trained {
    /// The architecture.
    pub model: ModelConfig,
    /// Weights (burn named MessagePack, full precision) of the best epoch by the monitored
    /// metric, or of the last state when no epoch finished with a monitored value.
    pub weights: Vec<u8>,
    /// One report per finished epoch, resumed ones included.
    pub history: Vec<EpochReport>,
    /// Mean training loss of every optimiser step, resumed ones included.
    pub step_losses: Vec<f64>,
    /// Optimiser steps done.
    pub steps: u64,
    /// The epoch whose weights were kept (0: none finished).
    pub best_epoch: usize,
    /// The device it trained on.
    pub device: Device,
    /// Why it stopped.
    pub stop: StopReason,
    /// The latest checkpoint written, when checkpointing.
    pub checkpoint: Option<PathBuf>,
    /// The step this call resumed from, if it resumed.
    pub resumed_from: Option<u64>,
}

impl Trained {
    /// A CPU classifier with the kept weights.
    pub fn classifier(&self) -> Result<Classifier> {
        Classifier::from_weights(self.model.clone(), &self.weights)
    }
}

/// Trains `model` on `train`, validating on `val` after each epoch.
///
/// The settings go to `run` as parameters (`train.*`, `model.*`, `model.num_params`). The
/// loop follows `config`: optimiser, schedule, accumulation, clipping, class weights,
/// early stopping on the monitored metric, checkpoints (see [`crate::checkpoint`] for the
/// layout) and resume. Per-step loss and learning rate (`step_loss`, `lr`, at the optimiser
/// step) and per-epoch metrics (`train_loss`, `train_accuracy`, `val_loss`, `val_accuracy`,
/// `epoch_seconds`, `rows_per_second`, at step = epoch) go to `run`; hooks see both. A
/// progress bar with rows/s is drawn on stderr when it is a terminal.
///
/// On the CPU the same config, seed and data give the same weights and loss curve, and a run
/// resumed from any checkpoint continues that curve exactly: batch order and dropout masks
/// derive from the seed, epoch and batch, not from a generator's history. Calls from several
/// threads of one process take turns (burn's generator is process-wide); run parallel trials
/// as separate processes.
///
/// A non-finite loss or gradient stops training with [`Error::Diverged`], naming the last good
/// checkpoint; non-finite feature values are refused up front ([`Error::NonFinite`]).
pub fn train(
    config: &TrainConfig,
    model: &ModelConfig,
    train: &Examples,
    val: Option<&Examples>,
    run: Option<&mut Run>,
    hooks: &mut dyn Hooks,
) -> Result<Trained> {
    config.validate()?;
    model.validate()?;
    if train.is_empty() {
        return Err(Error::Shape("no training rows".into()));
    }
    if val.is_some_and(Examples::is_empty) {
        return Err(Error::Shape("the validation set has no rows (pass None to train without one)".into()));
    }
    let classes = model.classes();
    for (name, ex) in [("training", Some(train)), ("validation", val)] {
        if let Some(ex) = ex {
            if let Some((row, bad)) = ex.y.iter().enumerate().find(|(_, c)| **c >= classes) {
                return Err(Error::Shape(format!(
                    "{name} row {row}: label index {bad} is out of range for {classes} classes"
                )));
            }
            if let Some(((row, feature), value)) = ex.x.indexed_iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite { set: name, row, feature, value: *value });
            }
            if ex.x.ncols() != model.inputs() {
                return Err(Error::Shape(format!(
                    "{name} rows have {} features, the {} model takes {}",
                    ex.x.ncols(),
                    model.kind(),
                    model.inputs()
                )));
            }
        }
    }
    if val.is_none() && config.monitor.needs_validation() {
        let wants = config.early_stopping.is_some() || config.checkpoint.as_ref().is_some_and(|c| c.keep_best > 0);
        if wants {
            return Err(Error::Config(format!(
                "early stopping and best checkpoints follow {}, which needs validation rows; pass them or monitor train_loss",
                config.monitor.name()
            )));
        }
    }
    let weights = class_weights(config, classes, train)?;
    let device = config.device.resolve()?;
    // burn's backends draw every random number (initialisation, dropout) from one
    // process-wide generator, so two trainings at once would interleave draws and neither
    // would be reproducible from its seed. Trainings in one process therefore take turns.
    let _turn = TRAINING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let job = Job { config, arch: model, train, val, weights, resolved: device };
    match (device, config.precision) {
        (Device::Cpu, Precision::F32) => on_cpu_pool(|| job.fit_cpu(run, hooks)),
        (Device::Cpu, p) => Err(Error::Config(format!(
            "precision {p:?} needs a CUDA device; the CPU backend trains in f32 (set precision = \"f32\")"
        ))),
        #[cfg(feature = "cuda")]
        (Device::Cuda(n), p) => {
            use burn::backend::Cuda;
            use burn::tensor::{bf16, f16};
            let cuda = burn::backend::cuda::CudaDevice::new(n);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match p {
                Precision::F32 => job.fit::<Autodiff<Cuda<f32>>>(cuda, run, hooks),
                Precision::F16 => job.fit::<Autodiff<Cuda<f16>>>(cuda, run, hooks),
                Precision::Bf16 => job.fit::<Autodiff<Cuda<bf16>>>(cuda, run, hooks),
            }))
            .map_err(|_| Error::Device(format!("training on cuda:{n} panicked inside the CUDA backend")))?
        }
        #[cfg(not(feature = "cuda"))]
        (Device::Cuda(n), _) => {
            Err(Error::Device(format!("cuda:{n} requested, but kiln was built without the `cuda` feature")))
        }
    }
}

fn class_weights(config: &TrainConfig, classes: usize, train: &Examples) -> Result<Option<Vec<f32>>> {
    match &config.class_weights {
        ClassWeights::None => Ok(None),
        ClassWeights::Balanced => {
            let mut counts = vec![0usize; classes];
            for y in &train.y {
                counts[*y] += 1;
            }
            let n = train.len() as f64;
            Ok(Some(
                counts.iter().map(|c| if *c == 0 { 0.0 } else { (n / (classes as f64 * *c as f64)) as f32 }).collect(),
            ))
        }
        ClassWeights::Explicit(w) if w.len() == classes => Ok(Some(w.iter().map(|v| *v as f32).collect())),
        ClassWeights::Explicit(w) => {
            Err(Error::Config(format!("class_weights has {} values for {classes} classes", w.len())))
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

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
}

fn record<B: Backend>(model: &Model<B>) -> Result<Vec<u8>> {
    Recorder::<B>::record(&recorder(), model.clone().into_record(), ()).map_err(|e| Error::Weights(e.to_string()))
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}

/// The batch order of an epoch: a function of the seed and the epoch alone.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed ^ 0x6B69_6C6E ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
    order
}

/// The seed of burn's generator for one batch (dropout masks).
fn batch_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    let mut rng = SplitMix64::new(seed ^ ((epoch as u64) << 32) ^ batch as u64);
    rng.next_u64()
}

/// Sum of squared gradient elements over all parameters, summed on the device.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// How the loop computes the gradients' global norm (generic, or straight from CPU buffers).
type GradNorm<B> = fn(&Model<B>, &GradientsParams) -> f64;

/// The global L2 norm of the gradients (one device sync).
fn grad_norm<B: AutodiffBackend>(model: &Model<B>, grads: &GradientsParams) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, sum: None };
    model.visit(&mut visitor);
    visitor.sum.map_or(0.0, |s| scalar(s).sqrt())
}

/// Rewrites every parameter's gradient.
struct MapGrads<'a, F> {
    grads: &'a mut GradientsParams,
    f: F,
}

impl<B: AutodiffBackend, F> ModuleVisitor<B> for MapGrads<'_, F>
where
    F: FnMut(Tensor<B::InnerBackend, 1>) -> Tensor<B::InnerBackend, 1>,
{
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let shape = g.shape();
            let flat = (self.f)(g.flatten(0, D - 1));
            self.grads.register::<B::InnerBackend, D>(param.id, flat.reshape(shape));
        }
    }
}

/// Clips gradients whose global norm is `total`.
fn clip<B: AutodiffBackend>(model: &Model<B>, grads: &mut GradientsParams, clip: GradClip, total: f64) {
    match clip {
        GradClip::Value(v) => {
            let v = v as f32;
            model.visit(&mut MapGrads { grads, f: |g: Tensor<B::InnerBackend, 1>| g.clamp(-v, v) });
        }
        GradClip::Norm(max) => {
            if total > max {
                let coef = (max / (total + 1e-6)) as f32;
                model.visit(&mut MapGrads { grads, f: |g: Tensor<B::InnerBackend, 1>| g.mul_scalar(coef) });
            }
        }
    }
}

/// Signal handling while a checkpointed training runs.
#[cfg(unix)]
mod signals {
    use std::sync::Arc;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use signal_hook::consts::{SIGTERM, SIGUSR2};

    struct Flags {
        /// No training is listening: the signal takes its default action (terminate).
        idle: Arc<AtomicBool>,
        /// The last signal received while training, or 0.
        pending: Arc<AtomicUsize>,
    }

    static FLAGS: OnceLock<Option<Flags>> = OnceLock::new();

    fn flags() -> Option<&'static Flags> {
        FLAGS
            .get_or_init(|| {
                let flags = Flags { idle: Arc::new(AtomicBool::new(true)), pending: Arc::new(AtomicUsize::new(0)) };
                for sig in [SIGTERM, SIGUSR2] {
                    let registered = signal_hook::flag::register_conditional_default(sig, Arc::clone(&flags.idle))
                        .and_then(|_| signal_hook::flag::register_usize(sig, Arc::clone(&flags.pending), sig as usize));
                    if let Err(e) = registered {
                        tracing::warn!("cannot handle signal {sig}: {e}; training will not checkpoint on it");
                        return None;
                    }
                }
                Some(flags)
            })
            .as_ref()
    }

    /// Listens while alive; signals keep their default action otherwise.
    pub(super) struct Listening(&'static Flags);

    impl Listening {
        pub(super) fn start() -> Option<Self> {
            let flags = flags()?;
            flags.pending.store(0, Ordering::SeqCst);
            flags.idle.store(false, Ordering::SeqCst);
            Some(Self(flags))
        }

        pub(super) fn received(&self) -> Option<i32> {
            match self.0.pending.load(Ordering::SeqCst) {
                0 => None,
                sig => Some(sig as i32),
            }
        }
    }

    impl Drop for Listening {
        fn drop(&mut self) {
            self.0.idle.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(not(unix))]
mod signals {
    pub(super) struct Listening;
    impl Listening {
        pub(super) fn start() -> Option<Self> {
            None
        }
        pub(super) fn received(&self) -> Option<i32> {
            None
        }
    }
}

/// Everything one training needs, independent of backend and optimiser.
struct Job<'a> {
    config: &'a TrainConfig,
    arch: &'a ModelConfig,
    train: &'a Examples,
    val: Option<&'a Examples>,
    weights: Option<Vec<f32>>,
    resolved: Device,
}

impl Job<'_> {
    fn fit<B: AutodiffBackend>(
        &self,
        device: B::Device,
        run: Option<&mut Run>,
        hooks: &mut dyn Hooks,
    ) -> Result<Trained> {
        let eps = EPSILON;
        let decay = |wd: f64| (wd > 0.0).then(|| WeightDecayConfig::new(wd as f32));
        match &self.config.optimizer {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay } => {
                let momentum = (*momentum > 0.0).then_some(MomentumConfig {
                    momentum: *momentum,
                    dampening: 0.0,
                    nesterov: *nesterov,
                });
                let optim = SgdConfig::new()
                    .with_momentum(momentum)
                    .with_weight_decay(decay(*weight_decay))
                    .init::<B, Model<B>>();
                self.fit_with(device, optim, grad_norm::<B>, run, hooks)
            }
            OptimizerConfig::Adam { beta_1, beta_2, weight_decay } => {
                let optim = AdamConfig::new()
                    .with_beta_1(*beta_1 as f32)
                    .with_beta_2(*beta_2 as f32)
                    .with_epsilon(eps)
                    .with_weight_decay(decay(*weight_decay))
                    .init::<B, Model<B>>();
                self.fit_with(device, optim, grad_norm::<B>, run, hooks)
            }
            OptimizerConfig::AdamW { beta_1, beta_2, weight_decay } => {
                let optim = AdamWConfig::new()
                    .with_beta_1(*beta_1 as f32)
                    .with_beta_2(*beta_2 as f32)
                    .with_epsilon(eps)
                    .with_weight_decay(*weight_decay as f32)
                    .init::<B, Model<B>>();
                self.fit_with(device, optim, grad_norm::<B>, run, hooks)
            }
        }
    }

    /// CPU training: Adam and AdamW update each parameter in one fused pass (crate::optim);
    /// SGD is burn's.
    fn fit_cpu(&self, run: Option<&mut Run>, hooks: &mut dyn Hooks) -> Result<Trained> {
        type Cpu = Autodiff<Flex>;
        let hyper = |beta_1: f64, beta_2: f64, weight_decay: f64| optim::Hyper {
            beta_1: beta_1 as f32,
            beta_2: beta_2 as f32,
            epsilon: EPSILON,
            weight_decay: weight_decay as f32,
        };
        match &self.config.optimizer {
            OptimizerConfig::Sgd { .. } => self.fit::<Cpu>(Default::default(), run, hooks),
            OptimizerConfig::Adam { beta_1, beta_2, weight_decay } => {
                let optim = optim::Fused::adam(hyper(*beta_1, *beta_2, *weight_decay)).init::<Cpu, Model<Cpu>>();
                self.fit_with(Default::default(), optim, optim::grad_norm, run, hooks)
            }
            OptimizerConfig::AdamW { beta_1, beta_2, weight_decay } => {
                let optim = optim::Fused::adamw(hyper(*beta_1, *beta_2, *weight_decay)).init::<Cpu, Model<Cpu>>();
                self.fit_with(Default::default(), optim, optim::grad_norm, run, hooks)
            }
        }
    }

    fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        self.train.digest_into(&mut hasher);
        if let Some(v) = self.val {
            v.digest_into(&mut hasher);
        }
        hasher.finalize().to_hex().to_string()
    }

    fn validate<B: Backend>(&self, model: &Model<B>, val: &Examples, device: &B::Device) -> (f64, f64) {
        let loss_fn: CrossEntropyLoss<B> = CrossEntropyLossConfig::new().init(device);
        let (mut loss_sum, mut hits) = (0.0, 0usize);
        let chunk = self.config.batch_size.max(1024);
        for start in (0..val.len()).step_by(chunk) {
            let end = (start + chunk).min(val.len());
            let x = to_tensor::<B>(val.x.slice(ndarray::s![start..end, ..]), device);
            let y = to_labels::<B>(&val.y[start..end], device);
            let logits = model.forward(x);
            loss_sum += scalar(loss_fn.forward(logits.clone(), y)) * (end - start) as f64;
            hits += argmax(logits).iter().zip(&val.y[start..end]).filter(|(p, t)| *p == *t).count();
        }
        (loss_sum / val.len() as f64, hits as f64 / val.len() as f64)
    }

    #[allow(clippy::too_many_lines)]
    fn fit_with<B: AutodiffBackend, O: Optimizer<Model<B>, B>>(
        &self,
        device: B::Device,
        mut optim: O,
        norm: GradNorm<B>,
        mut run: Option<&mut Run>,
        hooks: &mut dyn Hooks,
    ) -> Result<Trained> {
        let config = self.config;
        let train = self.train;
        B::seed(&device, config.seed);
        let mut model: Model<B> = self.arch.init(&device);
        let digest = self.digest();
        let mut state = LoopState::fresh(config, self.arch, digest.clone());
        let mut resumed_from = None;
        let mut best_weights: Option<Vec<u8>> = None;

        let ckpt = config.checkpoint.as_ref();
        let mut writer = match ckpt {
            Some(c) => Some(checkpoint::Writer::open(&c.dir, c.keep_last, c.keep_best, config.monitor.mode())?),
            None => None,
        };
        let loaded = match ckpt.filter(|c| c.resume) {
            Some(c) => checkpoint::load_latest(&c.dir)?,
            None => None,
        };
        if let Some(loaded) = loaded {
            checkpoint::check_compatible(&loaded, config, self.arch, &digest)?;
            let model_record = Recorder::<B>::load(&recorder(), loaded.model.clone(), &device)
                .map_err(|e| Error::Weights(format!("{}: {e}", loaded.path.display())))?;
            model = model.load_record(model_record);
            let optim_record = Recorder::<B>::load(&recorder(), loaded.optimizer.clone(), &device)
                .map_err(|e| Error::Weights(format!("{}: {e}", loaded.path.display())))?;
            optim = optim.load_record(optim_record);
            best_weights = loaded.best_weights;
            tracing::info!(
                "resuming from {} (epoch {}, step {})",
                loaded.path.display(),
                loaded.state.epoch,
                loaded.state.step
            );
            resumed_from = Some(loaded.state.step);
            state = loaded.state;
            state.train_config = config.clone();
        }
        if let Some(run) = run.as_deref_mut() {
            state.run_id = Some(run.id().to_string());
            // Overwritten, not logged: a resumed run may have changed an adjustable setting.
            let params = serde_json::json!({
                "train": config,
                "model": self.arch,
                "model.num_params": self.arch.num_params(),
            });
            run.overwrite_params(&params)?;
        }
        let listening = if ckpt.is_some_and(|c| c.handle_signals) { signals::Listening::start() } else { None };

        let loss_fn = {
            let c = CrossEntropyLossConfig::new().with_weights(self.weights.clone());
            c.init::<B>(&device)
        };
        let x_train = to_tensor::<B>(train.x.view(), &device);
        let y_train = to_labels::<B>(&train.y, &device);
        let n = train.len();
        let batches = n.div_ceil(config.batch_size);
        let steps_per_epoch = batches.div_ceil(config.accumulate) as u64;
        let total_steps = {
            let by_epochs = steps_per_epoch * config.epochs as u64;
            config.max_steps.map_or(by_epochs, |m| m.min(by_epochs))
        };
        let monitor = config.monitor;
        let min_delta = config.early_stopping.map_or(0.0, |e| e.min_delta);
        let mut last_checkpoint: Option<PathBuf> = None;

        let save = |writer: &mut Option<checkpoint::Writer>,
                    state: &mut LoopState,
                    model: &Model<B>,
                    optim: &O,
                    ranked: Option<f64>|
         -> Result<Option<PathBuf>> {
            let Some(w) = writer.as_mut() else { return Ok(None) };
            let weights = record(model)?;
            let optimizer =
                Recorder::<B>::record(&recorder(), optim.to_record(), ()).map_err(|e| Error::Weights(e.to_string()))?;
            w.save(state, &weights, &optimizer, ranked).map(Some)
        };

        let mut stop = StopReason::Completed;
        'epochs: while state.epoch <= config.epochs {
            let epoch = state.epoch;
            let order = epoch_order(n, config.seed, epoch);
            let chunks: Vec<&[usize]> = order.chunks(config.batch_size).collect();
            let bar = ProgressBar::new(n as u64);
            bar.set_style(
                ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} rows, {per_sec}, eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{epoch}/{}", config.epochs));
            bar.set_position(chunks[..state.batch].iter().map(|c| c.len() as u64).sum());
            let started = Instant::now();
            let seconds_before = state.epoch_seconds;

            let mut group_start = state.batch;
            while group_start < chunks.len() {
                let group_end = (group_start + config.accumulate).min(chunks.len());
                let group_rows: usize = chunks[group_start..group_end].iter().map(|c| c.len()).sum();
                let mut accumulator = GradientsAccumulator::<Model<B>>::new();
                let mut grads_single: Option<GradientsParams> = None;
                let mut step_loss = 0.0;
                for (b, chunk) in chunks.iter().enumerate().take(group_end).skip(group_start) {
                    B::seed(&device, batch_seed(config.seed, epoch, b));
                    let idx_data: Vec<i64> = chunk.iter().map(|i| *i as i64).collect();
                    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx_data, [chunk.len()]), &device);
                    let logits = model.forward(x_train.clone().select(0, idx.clone()));
                    let loss = loss_fn.forward(logits.clone(), y_train.clone().select(0, idx));
                    let loss_value = scalar(loss.clone());
                    if !loss_value.is_finite() {
                        bar.finish_and_clear();
                        return Err(Error::Diverged {
                            epoch,
                            step: state.step + 1,
                            quantity: "loss",
                            value: loss_value,
                            checkpoint: last_checkpoint,
                        });
                    }
                    step_loss += loss_value * chunk.len() as f64 / group_rows as f64;
                    state.epoch_loss_sum += loss_value * chunk.len() as f64;
                    state.epoch_correct +=
                        argmax(logits.detach()).iter().zip(chunk.iter()).filter(|(p, i)| **p == train.y[**i]).count();
                    // Each batch's mean loss weighted by its share of the step's rows (no extra
                    // graph node when the step is one batch).
                    let scaled =
                        if chunk.len() == group_rows { loss } else { loss * (chunk.len() as f32 / group_rows as f32) };
                    let grads = GradientsParams::from_grads(scaled.backward(), &model);
                    if group_end - group_start == 1 {
                        grads_single = Some(grads);
                    } else {
                        accumulator.accumulate(&model, grads);
                    }
                    bar.inc(chunk.len() as u64);
                }
                let mut grads = grads_single.unwrap_or_else(|| accumulator.grads());
                // A finite loss can still come with non-finite gradients (an activation that
                // maps NaN to 0, say), which would poison the weights silently.
                let norm = norm(&model, &grads);
                if !norm.is_finite() {
                    bar.finish_and_clear();
                    return Err(Error::Diverged {
                        epoch,
                        step: state.step + 1,
                        quantity: "gradient norm",
                        value: norm,
                        checkpoint: last_checkpoint,
                    });
                }
                if let Some(c) = config.grad_clip {
                    clip(&model, &mut grads, c, norm);
                }
                let lr = config.schedule.rate(config.learning_rate, config.warmup_steps, state.step, total_steps);
                model = optim.step(lr, model, grads);
                state.step += 1;
                state.batch = group_end;
                state.step_losses.push(step_loss);
                let elapsed = seconds_before + started.elapsed().as_secs_f64();
                let rows_so_far: usize = chunks[..group_end].iter().map(|c| c.len()).sum();
                let report = StepReport {
                    step: state.step,
                    epoch,
                    loss: step_loss,
                    learning_rate: lr,
                    rows_per_second: rows_so_far as f64 / elapsed.max(1e-9),
                };
                let log_step = config.log_every_steps > 0 && state.step.is_multiple_of(config.log_every_steps);
                if let Some(run) = run.as_deref_mut().filter(|_| log_step) {
                    run.log_metric("step_loss", state.step, step_loss)?;
                    run.log_metric("lr", state.step, lr)?;
                }
                let flow = hooks.on_step(&report);
                group_start = group_end;
                let epoch_done = group_end == chunks.len();
                let out_of_steps = config.max_steps.is_some_and(|m| state.step >= m);
                let signal = listening.as_ref().and_then(signals::Listening::received);
                if let Some(sig) = signal.filter(|_| !epoch_done && !out_of_steps) {
                    state.epoch_seconds = elapsed;
                    last_checkpoint = save(&mut writer, &mut state, &model, &optim, None)?.or(last_checkpoint);
                    stop = StopReason::Interrupted { signal: sig };
                    bar.finish_and_clear();
                    break 'epochs;
                }
                if flow.is_break() && !epoch_done && !out_of_steps {
                    state.epoch_seconds = elapsed;
                    last_checkpoint = save(&mut writer, &mut state, &model, &optim, None)?.or(last_checkpoint);
                    stop = StopReason::Requested;
                    bar.finish_and_clear();
                    break 'epochs;
                }
                let every = ckpt.map_or(0, |c| c.every_steps);
                if every > 0 && state.step.is_multiple_of(every) && !epoch_done && !out_of_steps {
                    state.epoch_seconds = elapsed;
                    last_checkpoint = save(&mut writer, &mut state, &model, &optim, None)?.or(last_checkpoint);
                }
                if out_of_steps {
                    stop = StopReason::MaxSteps;
                    break;
                }
                if flow.is_break() {
                    stop = StopReason::Requested;
                }
                if let Some(sig) = signal {
                    stop = StopReason::Interrupted { signal: sig };
                }
            }
            bar.finish_and_clear();

            // The epoch is over (or cut short by max_steps): validate, report, keep the best.
            let seen: usize = chunks[..state.batch].iter().map(|c| c.len()).sum();
            let seconds = seconds_before + started.elapsed().as_secs_f64();
            let (val_loss, val_accuracy) = match self.val {
                Some(v) => {
                    let (l, a) = self.validate(&model.valid(), v, &device);
                    (Some(l), Some(a))
                }
                None => (None, None),
            };
            let report = EpochReport {
                epoch,
                step: state.step,
                train_loss: state.epoch_loss_sum / seen.max(1) as f64,
                train_accuracy: state.epoch_correct as f64 / seen.max(1) as f64,
                val_loss,
                val_accuracy,
                seconds,
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
                run.log_metric("rows_per_second", step, seen as f64 / seconds.max(1e-9))?;
                run.flush()?;
            }
            let monitored = match monitor.metric {
                MonitorMetric::ValLoss => report.val_loss,
                MonitorMetric::ValAccuracy => report.val_accuracy,
                MonitorMetric::TrainLoss => Some(report.train_loss),
                MonitorMetric::TrainAccuracy => Some(report.train_accuracy),
            };
            if let Some(value) = monitored {
                if state.best.as_ref().is_none_or(|b| monitor.improves(value, b.value, min_delta)) {
                    let weights = record(&model.valid())?;
                    let file = match &writer {
                        Some(w) => Some(w.write_best(epoch, &weights)?),
                        None => None,
                    };
                    state.best = Some(Best { value, epoch, file });
                    best_weights = Some(weights);
                    state.since_best = 0;
                } else {
                    state.since_best += 1;
                }
            }
            let flow = hooks.on_epoch(&report);
            state.history.push(report);
            state.epoch += 1;
            state.batch = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_correct = 0;
            state.epoch_seconds = 0.0;
            if stop == StopReason::Completed {
                if flow.is_break() {
                    stop = StopReason::Requested;
                } else if let Some(sig) = listening.as_ref().and_then(signals::Listening::received) {
                    stop = StopReason::Interrupted { signal: sig };
                } else if config.early_stopping.is_some_and(|es| state.since_best >= es.patience) {
                    tracing::info!(
                        epoch,
                        "early stopping: {} has not improved for {} epochs",
                        monitor.name(),
                        state.since_best
                    );
                    stop = StopReason::EarlyStopped;
                }
            }
            last_checkpoint = save(&mut writer, &mut state, &model, &optim, monitored)?.or(last_checkpoint);
            if stop != StopReason::Completed {
                break;
            }
        }
        if let StopReason::Interrupted { signal } = stop {
            tracing::warn!("signal {signal}: stopped after checkpointing at step {}", state.step);
        }
        let (best_epoch, weights) = match (best_weights, &state.best) {
            (Some(w), Some(b)) => (b.epoch, w),
            _ => (state.history.len(), record(&model.valid())?),
        };
        Ok(Trained {
            model: self.arch.clone(),
            weights,
            history: state.history,
            step_losses: state.step_losses,
            steps: state.step,
            best_epoch,
            device: self.resolved,
            stop,
            checkpoint: last_checkpoint,
            resumed_from,
        })
    }
}

/// The index of the largest value (the first, on ties; NaN never wins).
pub(crate) fn best_class<'a>(values: impl IntoIterator<Item = &'a f32>) -> usize {
    values.into_iter().enumerate().fold((0, f32::MIN), |best, (i, v)| if *v > best.1 { (i, *v) } else { best }).0
}

/// The number format a model predicts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferencePrecision {
    /// 32-bit floats, as trained.
    #[default]
    F32,
    /// Weights held as 8-bit integers (symmetric, one scale per tensor, min–max calibrated):
    /// a quarter of the weight memory. burn 0.21's CPU backend dequantizes them to f32 for
    /// each forward pass (it has no int8 matrix product), so this saves memory, not time; see
    /// [`compare_precision`](crate::compare_precision) for what it costs in accuracy and
    /// speed on your data.
    Int8,
}

/// A trained model on the CPU, for prediction.
#[derive(Debug)]
pub struct Classifier {
    config: ModelConfig,
    model: Model<Flex>,
    precision: InferencePrecision,
}

impl Classifier {
    /// Loads serialised weights into an architecture.
    pub fn from_weights(config: ModelConfig, weights: &[u8]) -> Result<Self> {
        config.validate()?;
        let device = Default::default();
        let record = Recorder::<Flex>::load(&recorder(), weights.to_vec(), &device)
            .map_err(|e| Error::Weights(e.to_string()))?;
        let model = config.init_for_loading::<Flex>(&device).load_record(record);
        Ok(Self { config, model, precision: InferencePrecision::F32 })
    }

    /// Loads weights from a safetensors file's bytes, as [`Classifier::to_safetensors`] writes
    /// them (PyTorch's names and layouts). Every parameter of `config` must be present with
    /// its shape, and the file may hold nothing else.
    pub fn from_safetensors(config: ModelConfig, bytes: &[u8]) -> Result<Self> {
        use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
        config.validate()?;
        let mut model = config.init_for_loading::<Flex>(&Default::default());
        // burn-store 0.21's adapter renames batch norm's gamma/beta to PyTorch's weight/bias
        // when saving but, with enum variants skipped, does not find them again when loading;
        // kiln's only batch norms are the `norms` fields, so the names are mapped back here.
        let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
            .with_from_adapter(PyTorchToBurnAdapter)
            .skip_enum_variants(true)
            .with_key_remapping(r"^(norms\.\d+)\.weight$", "$1.gamma")
            .with_key_remapping(r"^(norms\.\d+)\.bias$", "$1.beta")
            .allow_partial(true);
        let applied = model.load_from(&mut store).map_err(|e| Error::Weights(format!("safetensors: {e}")))?;
        let mut problems: Vec<String> = applied.errors.iter().map(ToString::to_string).collect();
        problems.extend(applied.missing.iter().map(|(path, _)| format!("{path} is missing")));
        problems.extend(applied.unused.iter().map(|path| format!("{path} is not a parameter of this model")));
        if !problems.is_empty() {
            return Err(Error::Weights(format!(
                "safetensors weights do not fit the {} model: {}",
                config.kind(),
                problems.join("; ")
            )));
        }
        Ok(Self { config, model, precision: InferencePrecision::F32 })
    }

    /// The weights as a safetensors file, with PyTorch's parameter names and layouts
    /// (`hidden.0.weight` as `[outputs, inputs]`, batch norm's `weight`/`bias`), so
    /// `safetensors.torch.load_file` and `load_state_dict` read them directly. Only
    /// full-precision models can be written.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
        if self.precision != InferencePrecision::F32 {
            return Err(Error::Weights(format!("a {:?} model cannot be written as safetensors", self.precision)));
        }
        let mut store =
            SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter).skip_enum_variants(true);
        self.model.save_into(&mut store).map_err(|e| Error::Weights(format!("safetensors: {e}")))?;
        store.get_bytes().map_err(|e| Error::Weights(format!("safetensors: {e}")))
    }

    /// This model in `precision`. Weights quantized to int8 stay quantized: asking a
    /// quantized model for f32 is an error, because the discarded precision cannot come back
    /// (load the weights again instead).
    pub fn with_precision(self, precision: InferencePrecision) -> Result<Self> {
        use burn::module::Quantizer;
        use burn::tensor::ops::QuantizedTensor;
        use burn::tensor::quantization::{Calibration, QTensorPrimitive, QuantLevel, QuantParam, QuantValue};
        match (self.precision, precision) {
            (from, to) if from == to => Ok(self),
            (InferencePrecision::F32, InferencePrecision::Int8) => {
                let scheme = <QuantizedTensor<Flex> as QTensorPrimitive>::default_scheme()
                    .with_value(QuantValue::Q8S)
                    .with_level(QuantLevel::Tensor)
                    .with_param(QuantParam::F32);
                let mut quantizer = Quantizer { calibration: Calibration::MinMax, scheme };
                let model = self.model.quantize_weights(&mut quantizer);
                Ok(Self { model, precision, ..self })
            }
            (from, to) => Err(Error::Weights(format!(
                "a model held in {from:?} cannot be turned into {to:?}: load its weights again"
            ))),
        }
    }

    /// The precision it predicts in.
    pub fn precision(&self) -> InferencePrecision {
        self.precision
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Class probabilities (softmax of the logits), `rows × classes`.
    pub fn predict_proba(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (inputs, classes) = (self.config.inputs(), self.config.classes());
        if x.ncols() != inputs {
            return Err(Error::Shape(format!("the model takes {inputs} features, the input has {}", x.ncols())));
        }
        if x.nrows() == 0 {
            return Ok(Array2::zeros((0, classes)));
        }
        let logits = self.model.forward(to_tensor::<Flex>(x, &Default::default()));
        let probs = burn::tensor::activation::softmax(logits, 1);
        let values: Vec<f32> = probs.into_data().iter::<f32>().collect();
        Array2::from_shape_vec((x.nrows(), classes), values).map_err(|e| Error::Shape(e.to_string()))
    }

    /// The most probable class of each row.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Result<Vec<usize>> {
        let p = self.predict_proba(x)?;
        Ok(p.rows().into_iter().map(|r| best_class(r.iter())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_class_takes_the_first_maximum_and_never_nan() {
        assert_eq!(best_class(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(best_class(&[0.4, 0.4, 0.2]), 0);
        assert_eq!(best_class(&[f32::NAN, 0.3, 0.7]), 2);
        assert_eq!(best_class(&[]), 0);
    }

    /// CPU training runs on kiln's pool, where rayon work is shared with the spinning workers;
    /// a panic inside still releases them (or the scope would wait forever) and reaches the
    /// caller, and the pool serves the next training.
    #[test]
    fn cpu_training_runs_on_the_training_pool_and_panics_reach_the_caller() {
        let (name, threads) = on_cpu_pool(|| {
            let name = std::thread::current().name().map(str::to_owned);
            // A parallel loop from the training thread finishes with the workers spinning.
            let sum: u64 = {
                use rayon::prelude::*;
                (0..100_000u64).into_par_iter().sum()
            };
            assert_eq!(sum, 4_999_950_000);
            (name, rayon::current_num_threads())
        });
        assert!(name.as_deref().is_some_and(|n| n.starts_with("kiln-train-")), "{name:?}");
        assert_eq!(threads, rayon::current_num_threads());
        let caught = std::panic::catch_unwind(|| on_cpu_pool(|| panic!("inside the training")));
        let message = caught.expect_err("the panic reaches the caller");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"inside the training"));
        assert_eq!(on_cpu_pool(|| 7), 7);
    }

    /// Trainings started from inside a rayon parallel loop (each on a worker of the global
    /// pool) take turns and all finish: a worker holding the turn waits for its training
    /// without picking up a sibling that would wait for that same turn.
    #[test]
    fn trainings_inside_a_parallel_loop_take_turns_and_finish() {
        use rayon::prelude::*;
        let x = Array2::from_shape_fn((60, 4), |(r, c)| ((r * 7 + c * 3) % 11) as f32 / 11.0 + (r % 3) as f32);
        let examples = Examples::new(x, (0..60).map(|r| r % 3).collect()).expect("examples");
        let config =
            TrainConfig { epochs: 2, batch_size: 16, device: crate::DeviceSpec::Cpu, ..TrainConfig::default() };
        let model = ModelConfig::mlp(4, &[8], 3);
        let losses: Vec<f64> = (0..4)
            .into_par_iter()
            .map(|_| {
                let trained = train(&config, &model, &examples, None, None, &mut ()).expect("training");
                *trained.step_losses.last().expect("a step")
            })
            .collect();
        // (Not compared with each other: other unit tests draw from burn's process-wide
        // generator while these run.)
        assert_eq!(losses.len(), 4);
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    }

    fn gradients() -> (Model<Autodiff<Flex>>, GradientsParams) {
        let device = Default::default();
        let model: Model<Autodiff<Flex>> = ModelConfig::mlp(4, &[8], 3).init(&device);
        let x = Tensor::<Autodiff<Flex>, 2>::from_data(
            TensorData::new((0..20).map(|v| v as f32 * 3.0).collect::<Vec<_>>(), [5, 4]),
            &device,
        );
        let loss = model.forward(x).powi_scalar(2).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        (model, grads)
    }

    #[test]
    fn norm_clipping_scales_all_gradients_to_the_global_norm() {
        let (model, mut grads) = gradients();
        let before = grad_norm(&model, &grads);
        assert!(before > 1.0, "{before}");
        clip(&model, &mut grads, GradClip::Norm(0.5), before);
        let after = grad_norm(&model, &grads);
        assert!((after - 0.5).abs() < 1e-4, "{before} -> {after}");
        // Below the threshold nothing changes.
        clip(&model, &mut grads, GradClip::Norm(10.0), after);
        assert!((grad_norm(&model, &grads) - after).abs() < 1e-9);
    }

    #[test]
    fn value_clipping_clamps_every_element() {
        let (model, mut grads) = gradients();
        clip(&model, &mut grads, GradClip::Value(0.01), 0.0);
        struct MaxAbs<'a>(&'a GradientsParams, f32, usize);
        impl ModuleVisitor<Autodiff<Flex>> for MaxAbs<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Autodiff<Flex>, D>>) {
                let g = self.0.get::<Flex, D>(param.id).unwrap();
                self.1 = self.1.max(g.abs().max().into_scalar());
                self.2 += 1;
            }
        }
        let mut m = MaxAbs(&grads, 0.0, 0);
        model.visit(&mut m);
        assert_eq!(m.2, 4, "two weights and two biases");
        assert!((m.1 - 0.01).abs() < 1e-7, "{}", m.1);
    }

    #[test]
    fn balanced_class_weights_follow_scikit_learn() {
        let x = Array2::zeros((6, 1));
        let data = Examples::new(x, vec![0, 0, 0, 0, 1, 1]).unwrap();
        let config = TrainConfig { class_weights: ClassWeights::Balanced, ..TrainConfig::default() };
        // n / (classes * count): 6 / (3 * 4), 6 / (3 * 2), and 0 for a class with no rows.
        assert_eq!(class_weights(&config, 3, &data).unwrap(), Some(vec![0.5, 1.0, 0.0]));
    }

    #[test]
    fn batch_order_depends_only_on_seed_and_epoch() {
        assert_eq!(epoch_order(100, 7, 3), epoch_order(100, 7, 3));
        assert_ne!(epoch_order(100, 7, 3), epoch_order(100, 7, 4));
        assert_ne!(epoch_order(100, 7, 3), epoch_order(100, 8, 3));
        let mut sorted = epoch_order(100, 7, 3);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(batch_seed(1, 1, 2), batch_seed(1, 2, 1));
    }
}
