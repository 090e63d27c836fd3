//! What every training shares: reports, hooks, stop reasons, signal handling, the CPU
//! training pool, gradient norms and clipping; and [`train`], the built-in models' entry point.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use kiln_data::{Rows, SplitMix64};
use kiln_track::Tracker;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::classifier::ClassifierTask;
use crate::config::{ClassWeights, GradClip, TrainConfig};
use crate::fit::{Fitted, fit};
use crate::model::ModelConfig;
use crate::{Classifier, Device, Error, Result};

pub(crate) static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Adam's epsilon, as PyTorch's.
pub(crate) const EPSILON: f32 = 1e-8;

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
pub(crate) fn on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
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
    #[serde(with = "nonfinite::one")]
    pub train_loss: f64,
    /// Validation loss at the end of the epoch.
    #[serde(with = "nonfinite::option")]
    pub val_loss: Option<f64>,
    /// The task's metrics over the epoch's training batches (`train_<name>`, with dropout
    /// active) and over the validation set (`val_<name>`): `train_accuracy` and
    /// `val_accuracy` for classifiers. May hold NaN (an AUC over one class).
    #[serde(default, with = "nonfinite::map")]
    pub metrics: BTreeMap<String, f64>,
    /// Training wall time of the epoch, validation excluded.
    pub seconds: f64,
}

impl EpochReport {
    /// A metric by the name it is logged under: `train_loss`, `val_loss`, or one of
    /// [`EpochReport::metrics`].
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "train_loss" => Some(self.train_loss),
            "val_loss" => self.val_loss,
            _ => self.metrics.get(name).copied(),
        }
    }

    /// Training accuracy, for classifiers.
    pub fn train_accuracy(&self) -> Option<f64> {
        self.metric("train_accuracy")
    }

    /// Validation accuracy, for classifiers trained with a validation set.
    pub fn val_accuracy(&self) -> Option<f64> {
        self.metric("val_accuracy")
    }
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

/// Floats that may be NaN or infinite, in JSON (checkpoint state): a number when finite, else
/// the string `"NaN"`, `"inf"` or `"-inf"` (serde_json would write `null` and refuse to read it
/// back).
pub(crate) mod nonfinite {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(f64),
        Text(String),
    }

    fn wire(v: f64) -> Wire {
        if v.is_finite() {
            Wire::Number(v)
        } else if v.is_nan() {
            Wire::Text("NaN".into())
        } else {
            Wire::Text(if v > 0.0 { "inf" } else { "-inf" }.into())
        }
    }

    fn value<E: serde::de::Error>(w: Wire) -> Result<f64, E> {
        match w {
            Wire::Number(v) => Ok(v),
            Wire::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::custom(format!("expected a number, \"NaN\", \"inf\" or \"-inf\", found {other:?}"))),
            },
        }
    }

    pub(crate) mod one {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
            wire(*v).serialize(s)
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
            value(Wire::deserialize(d)?)
        }
    }

    pub(crate) mod option {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            v.map(wire).serialize(s)
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<Wire>::deserialize(d)?.map(value).transpose()
        }
    }

    pub(crate) mod map {
        use super::*;
        pub(crate) fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
            m.iter().map(|(k, v)| (k, wire(*v))).collect::<BTreeMap<_, _>>().serialize(s)
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
            BTreeMap::<String, Wire>::deserialize(d)?.into_iter().map(|(k, w)| Ok((k, value(w)?))).collect()
        }
    }
}

/// A validation within an epoch (`TrainConfig::val_every_steps`), as hooks see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Optimiser steps done.
    pub step: u64,
    /// The epoch in progress.
    pub epoch: usize,
    /// Validation loss.
    pub val_loss: f64,
    /// The task's validation metrics (`val_<name>`).
    pub metrics: BTreeMap<String, f64>,
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
    /// After each validation within an epoch (`val_every_steps`).
    fn on_validation(&mut self, _validation: &ValidationReport) -> ControlFlow<()> {
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

impl Trained {
    /// A built-in model's training result.
    pub(crate) fn from_fitted(model: ModelConfig, f: Fitted) -> Self {
        Self {
            model,
            weights: f.weights,
            history: f.history,
            step_losses: f.step_losses,
            steps: f.steps,
            best_epoch: f.best_epoch,
            device: f.device,
            stop: f.stop,
            checkpoint: f.checkpoint,
            resumed_from: f.resumed_from,
        }
    }
}

/// Trains `model` on `train`, validating on `val` after each epoch.
///
/// The classifier [`Task`](crate::Task) over in-memory rows that [`fit`] trains: `train` is
/// a thin wrapper, and every guarantee of [`fit`] holds.
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
/// as separate processes. `run` is a local [`kiln_track::Run`] or, through a tracking server,
/// a `kiln_track::client::RemoteRun`.
///
/// A non-finite loss or gradient stops training with [`Error::Diverged`], naming the last good
/// checkpoint; non-finite feature values are refused up front ([`Error::NonFinite`]).
pub fn train(
    config: &TrainConfig,
    model: &ModelConfig,
    train: &Examples,
    val: Option<&Examples>,
    run: Option<&mut dyn Tracker>,
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
    let weights = class_weights(config, classes, train)?;
    let task = ClassifierTask::new(model.clone(), weights);
    let rows = |name: &str, ex: &Examples| Rows::new(name, ex.x.clone(), ex.y.clone());
    let val = val.map(|v| rows("validation", v)).transpose()?;
    let fitted = fit(config, &task, rows("training", train)?, val, run, hooks)?;
    Ok(Trained::from_fitted(model.clone(), fitted))
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

pub(crate) fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}

/// The seed of burn's generator for one batch (dropout masks).
pub(crate) fn batch_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
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

/// The global L2 norm of the gradients (one device sync).
pub(crate) fn grad_norm<B: AutodiffBackend, M: Module<B>>(model: &M, grads: &GradientsParams) -> f64 {
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
pub(crate) fn clip<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &mut GradientsParams,
    clip: GradClip,
    total: f64,
) {
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
pub(crate) mod signals {
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
    pub(crate) struct Listening(&'static Flags);

    impl Listening {
        pub(crate) fn start() -> Option<Self> {
            let flags = flags()?;
            flags.pending.store(0, Ordering::SeqCst);
            flags.idle.store(false, Ordering::SeqCst);
            Some(Self(flags))
        }

        pub(crate) fn received(&self) -> Option<i32> {
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
pub(crate) mod signals {
    pub(crate) struct Listening;
    impl Listening {
        pub(crate) fn start() -> Option<Self> {
            None
        }
        pub(crate) fn received(&self) -> Option<i32> {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    use super::*;
    use crate::model::Model;

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

    /// An epoch report with NaN metrics (an AUC over one class) survives a checkpoint's JSON.
    #[test]
    fn epoch_reports_with_non_finite_values_round_trip_through_json() {
        let report = EpochReport {
            epoch: 2,
            step: 20,
            train_loss: 0.5,
            val_loss: Some(f64::INFINITY),
            metrics: [("val_auc".to_string(), f64::NAN), ("val_accuracy".to_string(), 0.75)].into_iter().collect(),
            seconds: 1.0,
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"val_auc\":\"NaN\"") && json.contains("\"val_loss\":\"inf\""), "{json}");
        let back: EpochReport = serde_json::from_str(&json).unwrap();
        assert!(back.metrics["val_auc"].is_nan() && back.val_loss == Some(f64::INFINITY));
        assert_eq!(back.metrics["val_accuracy"], 0.75);
        let none: EpochReport = serde_json::from_str(&json.replace("\"inf\"", "null")).unwrap();
        assert_eq!(none.val_loss, None);
    }

    #[test]
    fn batch_seeds_depend_on_epoch_and_batch() {
        assert_eq!(batch_seed(1, 2, 3), batch_seed(1, 2, 3));
        assert_ne!(batch_seed(1, 1, 2), batch_seed(1, 2, 1));
        assert_ne!(batch_seed(1, 1, 2), batch_seed(2, 1, 2));
    }
}
