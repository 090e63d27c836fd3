//! The training loop, for any [`Task`]: [`fit`].
//!
//! Split in three parts: [`Fit::step`] (one optimiser step over an accumulation group of
//! batches), [`Fit::end_epoch`] (validation, the epoch report, the best epoch, early stopping)
//! and [`Fit::save`] (a checkpoint). [`Job::run`] drives them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer, SgdConfig};
use burn::record::Recorder;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_data::{Batches, Loader, Source};
use kiln_track::Tracker;

use crate::checkpoint::{self, Best, LoopState};
use crate::config::{OptimizerConfig, TrainConfig};
use crate::task::{Task, Totals, Trainable};
use crate::trainer::{
    EPSILON, EpochReport, Hooks, StepReport, StopReason, ValidationReport, batch_seed, clip, grad_norm, recorder,
    signals,
};
use crate::{Device, Error, Result, optim};

/// The result of [`fit`].
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The task's description ([`Task::describe`]).
    pub task: serde_json::Value,
    /// Weights (burn named MessagePack, full precision) of the best epoch by the monitored
    /// metric, or of the last state when no epoch finished with a monitored value. Load them
    /// with [`Fitted::load`].
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

impl Fitted {
    /// Loads the kept weights into `model` (a freshly initialised model of the same task, on
    /// any backend: `fitted.load(task.init::<Flex>(&device), &device)`).
    pub fn load<B: burn::tensor::backend::Backend, M: Module<B>>(&self, model: M, device: &B::Device) -> Result<M> {
        let record = Recorder::<B>::load(&recorder(), self.weights.clone(), device)
            .map_err(|e| Error::Weights(e.to_string()))?;
        Ok(model.load_record(record))
    }
}

/// Trains `task` on `train`, validating on `val` after each epoch, following `config`.
///
/// Everything [`crate::train`] does for the built-in models, for any [`Task`]: the optimiser,
/// warm-up and schedule per optimiser step, gradient accumulation, clipping by global norm or
/// value, the NaN guard on the loss and the gradient norm, early stopping and best-k
/// checkpoints on any named metric (`config.monitor`), checkpoints every N steps holding the
/// model, the optimiser, the loop position and the data's fingerprint, exact mid-epoch resume,
/// SIGTERM/SIGUSR2 → checkpoint → [`StopReason::Interrupted`], a progress bar with rows/s,
/// [`Hooks`], and logging to `tracker`: the task's description as `model.*` parameters with
/// `model.num_params`, the config as `train.*`, `step_loss` and `lr` per step, and per epoch
/// `train_loss`, `val_loss`, `train_<metric>`/`val_<metric>` for each of the task's metrics,
/// `epoch_seconds` and `rows_per_second`.
///
/// Batches come from `train` through a [`Loader`] with `config.loader`'s workers: their order
/// is a pure function of `config.seed` and the epoch, each item gets its own generator for
/// augmentation ([`kiln_data::item_rng`]), and batches arrive in order whatever the number of
/// workers, so on the CPU the same config and data give the same weights and loss curve, and a
/// resumed run continues that curve exactly. An item that fails to decode stops training with
/// an error naming it.
pub fn fit<T: Trainable, S: Source<Item = T::Item>>(
    config: &TrainConfig,
    task: &T,
    train: S,
    val: Option<S>,
    tracker: Option<&mut dyn Tracker>,
    hooks: &mut dyn Hooks,
) -> Result<Fitted> {
    config.validate()?;
    if config.class_weights != crate::ClassWeights::None && !task.weights_classes() {
        return Err(Error::Config(format!(
            "class_weights is {:?}, but this task does not weight its loss by class (build the task with the weights, as ClassifierTask::new takes them, or leave class_weights unset)",
            config.class_weights
        )));
    }
    if train.is_empty() {
        return Err(Error::Shape(format!("{}: no training items", train.name())));
    }
    if let Some(v) = val.as_ref().filter(|v| v.is_empty()) {
        return Err(Error::Shape(format!(
            "{}: the validation set has no items (pass None to train without one)",
            v.name()
        )));
    }
    if val.is_none() && config.monitor.needs_validation() {
        let wants = config.early_stopping.is_some() || config.checkpoint.as_ref().is_some_and(|c| c.keep_best > 0);
        if wants {
            return Err(Error::Config(format!(
                "early stopping and best checkpoints follow {}, which needs a validation set; pass one or monitor a train_ metric",
                config.monitor.name()
            )));
        }
    }
    let fingerprint = {
        let mut h = blake3::Hasher::new();
        h.update(train.fingerprint()?.as_bytes());
        if let Some(v) = &val {
            h.update(b"\0validation\0");
            h.update(v.fingerprint()?.as_bytes());
        }
        h.finalize().to_hex().to_string()
    };
    let loader = |s: S, batch_size: usize| {
        Loader::new(s, batch_size).order(config.order).workers(config.loader.workers).prefetch(config.loader.prefetch)
    };
    let train = loader(train, config.batch_size);
    let val = val.map(|v| loader(v, task.valid_batch_size(config.batch_size)).order(kiln_data::Order::Sequential));
    let device = config.device.resolve()?;
    // burn's backends draw every random number (initialisation, dropout) from one
    // process-wide generator, so two trainings at once would interleave draws and neither
    // would be reproducible from its seed. Trainings in one process therefore take turns.
    let _turn = crate::trainer::TRAINING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // (Shortening the trait object's lifetime to the job's, which `&mut` only allows as a
    // coercion, not inside an `Option`.)
    let tracker = tracker.map(|t| t as &mut dyn Tracker);
    task.launch(Job { config, device, train: &train, val: val.as_ref(), fingerprint, tracker, hooks })
}

/// One training, before the backend is chosen.
#[doc(hidden)]
pub struct Job<'a, S: Source> {
    pub(crate) config: &'a TrainConfig,
    pub(crate) device: Device,
    train: &'a Loader<S>,
    val: Option<&'a Loader<S>>,
    fingerprint: String,
    tracker: Option<&'a mut dyn Tracker>,
    hooks: &'a mut dyn Hooks,
}

impl<S: Source> std::fmt::Debug for Job<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("device", &self.device).finish_non_exhaustive()
    }
}

/// The gradients' global norm, generic or straight from CPU buffers.
type GradNorm<M> = fn(&M, &GradientsParams) -> f64;

impl<S: Source> Job<'_, S> {
    /// On any autodiff backend, with burn's optimisers.
    pub(crate) fn fit<B, T>(self, task: &T, device: B::Device) -> Result<Fitted>
    where
        B: AutodiffBackend,
        T: Task<Item = S::Item>,
        T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>,
    {
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
                    .init::<B, T::Model<B>>();
                self.run::<B, T, _>(task, device, optim, grad_norm::<B, T::Model<B>>)
            }
            OptimizerConfig::Adam { beta_1, beta_2, weight_decay } => {
                let optim = AdamConfig::new()
                    .with_beta_1(*beta_1 as f32)
                    .with_beta_2(*beta_2 as f32)
                    .with_epsilon(EPSILON)
                    .with_weight_decay(decay(*weight_decay))
                    .init::<B, T::Model<B>>();
                self.run::<B, T, _>(task, device, optim, grad_norm::<B, T::Model<B>>)
            }
            OptimizerConfig::AdamW { beta_1, beta_2, weight_decay } => {
                let optim = AdamWConfig::new()
                    .with_beta_1(*beta_1 as f32)
                    .with_beta_2(*beta_2 as f32)
                    .with_epsilon(EPSILON)
                    .with_weight_decay(*weight_decay as f32)
                    .init::<B, T::Model<B>>();
                self.run::<B, T, _>(task, device, optim, grad_norm::<B, T::Model<B>>)
            }
        }
    }

    /// On the CPU: Adam and AdamW update each parameter in one fused pass (crate::optim), and
    /// the gradient norm is read from the CPU buffers; SGD is burn's.
    pub(crate) fn fit_cpu<T>(self, task: &T) -> Result<Fitted>
    where
        T: Task<Item = S::Item>,
        T::Model<Autodiff<Flex>>: AutodiffModule<Autodiff<Flex>, InnerModule = T::Model<Flex>>,
    {
        type Cpu = Autodiff<Flex>;
        let hyper = |beta_1: f64, beta_2: f64, weight_decay: f64| optim::Hyper {
            beta_1: beta_1 as f32,
            beta_2: beta_2 as f32,
            epsilon: EPSILON,
            weight_decay: weight_decay as f32,
        };
        match &self.config.optimizer {
            OptimizerConfig::Sgd { .. } => self.fit::<Cpu, T>(task, Default::default()),
            OptimizerConfig::Adam { beta_1, beta_2, weight_decay } => {
                let optim = optim::Fused::adam(hyper(*beta_1, *beta_2, *weight_decay)).init::<Cpu, T::Model<Cpu>>();
                self.run::<Cpu, T, _>(task, Default::default(), optim, optim::grad_norm::<T::Model<Cpu>>)
            }
            OptimizerConfig::AdamW { beta_1, beta_2, weight_decay } => {
                let optim = optim::Fused::adamw(hyper(*beta_1, *beta_2, *weight_decay)).init::<Cpu, T::Model<Cpu>>();
                self.run::<Cpu, T, _>(task, Default::default(), optim, optim::grad_norm::<T::Model<Cpu>>)
            }
        }
    }

    fn run<B, T, O>(self, task: &T, device: B::Device, optim: O, norm: GradNorm<T::Model<B>>) -> Result<Fitted>
    where
        B: AutodiffBackend,
        T: Task<Item = S::Item>,
        T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>,
        O: Optimizer<T::Model<B>, B>,
    {
        let Job { config, device: resolved, train, val, fingerprint, tracker, hooks } = self;
        B::seed(&device, config.seed);
        let model = task.init::<B>(&device);
        let description = task.describe();
        let ckpt = config.checkpoint.as_ref();
        let writer = match ckpt {
            Some(c) => Some(checkpoint::Writer::open(&c.dir, c.keep_last, c.keep_best, config.monitor.mode())?),
            None => None,
        };
        let mut fit = Fit {
            task,
            config,
            device,
            optim,
            norm,
            state: LoopState::fresh(config, description.clone(), fingerprint.clone()),
            writer,
            last_checkpoint: None,
            best_weights: None,
            tracker: tracker.map(|t| t as &mut dyn Tracker),
            hooks,
            train,
            val,
            listening: None,
            monitor_checked: false,
        };
        let mut model = model;
        let mut resumed_from = None;
        let loaded = match ckpt.filter(|c| c.resume) {
            Some(c) => checkpoint::load_latest(&c.dir)?,
            None => None,
        };
        if let Some(loaded) = loaded {
            checkpoint::check_compatible(&loaded, config, &description, &fingerprint)?;
            let model_record = Recorder::<B>::load(&recorder(), loaded.model.clone(), &fit.device)
                .map_err(|e| Error::Weights(format!("{}: {e}", loaded.path.display())))?;
            model = model.load_record(model_record);
            let optim_record = Recorder::<B>::load(&recorder(), loaded.optimizer.clone(), &fit.device)
                .map_err(|e| Error::Weights(format!("{}: {e}", loaded.path.display())))?;
            fit.optim = fit.optim.load_record(optim_record);
            fit.best_weights = loaded.best_weights;
            tracing::info!(
                "resuming from {} (epoch {}, step {})",
                loaded.path.display(),
                loaded.state.epoch,
                loaded.state.step
            );
            resumed_from = Some(loaded.state.step);
            fit.state = loaded.state;
            fit.state.train_config = config.clone();
        }
        if let Some(tracker) = fit.tracker.as_deref_mut() {
            fit.state.run_id = Some(tracker.run_id().to_string());
            // Overwritten, not logged: a resumed run may have changed an adjustable setting.
            let params = serde_json::json!({
                "train": config,
                "model": description,
                "model.num_params": trainable_params::<B, _>(&model),
            });
            tracker.set_params(params, true)?;
        }
        if ckpt.is_some_and(|c| c.handle_signals) {
            fit.listening = signals::Listening::start();
        }

        let batches = train.batches_per_epoch();
        let steps_per_epoch = batches.div_ceil(config.accumulate) as u64;
        let total_steps = {
            let by_epochs = steps_per_epoch * config.epochs as u64;
            config.max_steps.map_or(by_epochs, |m| m.min(by_epochs))
        };

        let mut stop = StopReason::Completed;
        'epochs: while fit.state.epoch <= config.epochs {
            let epoch = fit.state.epoch;
            // Batch sizes do not depend on the order: full batches, then the remainder.
            let (rows, batch_size) = (train.source().len(), train.batch_size());
            let sizes: Vec<usize> = (0..batches).map(|b| (rows - b * batch_size).min(batch_size)).collect();
            let mut totals = fit.state.epoch_totals();
            let bar = progress(rows, epoch, config.epochs);
            bar.set_position(sizes[..fit.state.batch].iter().sum::<usize>() as u64);
            let started = Instant::now();
            let seconds_before = fit.state.epoch_seconds;
            let mut items = train.epoch(config.seed, epoch, fit.state.batch);

            while fit.state.batch < sizes.len() {
                let group_end = (fit.state.batch + config.accumulate).min(sizes.len());
                let group_rows: usize = sizes[fit.state.batch..group_end].iter().sum();
                let step_loss = match fit.step(&model, &mut items, &mut totals, group_end, group_rows, &bar) {
                    Ok((grads, loss)) => {
                        let lr = config.schedule.rate(
                            config.learning_rate,
                            config.warmup_steps,
                            fit.state.step,
                            total_steps,
                        );
                        model = fit.optim.step(lr, model, grads);
                        (loss, lr)
                    }
                    Err(e) => {
                        bar.finish_and_clear();
                        return Err(e);
                    }
                };
                fit.state.step += 1;
                fit.state.batch = group_end;
                let elapsed = seconds_before + started.elapsed().as_secs_f64();
                let flow = fit.after_step(step_loss, epoch, elapsed, sizes[..group_end].iter().sum())?;
                let epoch_done = group_end == sizes.len();
                let out_of_steps = config.max_steps.is_some_and(|m| fit.state.step >= m);
                let mut signal = fit.listening.as_ref().and_then(signals::Listening::received);
                let every = config.val_every_steps;
                let validate = every > 0 && fit.state.step.is_multiple_of(every) && !epoch_done && !out_of_steps;
                // (The epoch end validates anyway; a stop goes straight to its checkpoint.)
                let flow = if validate && signal.is_none() && flow.is_continue() {
                    let asked = fit.validate_mid_epoch(&model)?;
                    signal = fit.listening.as_ref().and_then(signals::Listening::received);
                    asked
                } else {
                    flow
                };
                if !epoch_done && !out_of_steps {
                    let early = if let Some(sig) = signal {
                        Some(StopReason::Interrupted { signal: sig })
                    } else if flow.is_break() {
                        Some(StopReason::Requested)
                    } else {
                        None
                    };
                    let every = ckpt.map_or(0, |c| c.every_steps);
                    if early.is_some() || (every > 0 && fit.state.step.is_multiple_of(every)) {
                        fit.state.epoch_seconds = elapsed;
                        fit.state.set_epoch_totals(&totals);
                        fit.save(&model, None)?;
                    }
                    if let Some(reason) = early {
                        stop = reason;
                        bar.finish_and_clear();
                        break 'epochs;
                    }
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
            drop(items);
            bar.finish_and_clear();
            let seconds = seconds_before + started.elapsed().as_secs_f64();
            stop = fit.end_epoch(&model, &totals, seconds, stop)?;
            if stop != StopReason::Completed {
                break;
            }
        }
        if let StopReason::Interrupted { signal } = stop {
            tracing::warn!("signal {signal}: stopped after checkpointing at step {}", fit.state.step);
        }
        let (best_epoch, weights) = match (fit.best_weights.take(), &fit.state.best) {
            (Some(w), Some(b)) => (b.epoch, w),
            _ => (fit.state.history.len(), record::<B::InnerBackend, _>(&model.valid())?),
        };
        Ok(Fitted {
            task: description,
            weights,
            history: std::mem::take(&mut fit.state.history),
            step_losses: std::mem::take(&mut fit.state.step_losses),
            steps: fit.state.step,
            best_epoch,
            device: resolved,
            stop,
            checkpoint: fit.last_checkpoint,
            resumed_from,
        })
    }
}

/// An error of the task's code, with the batch it happened in.
fn in_batch(what: &str, e: Error) -> Error {
    Error::Task(format!("{what}: {e}"))
}

fn progress(items: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(items as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} rows, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{epoch}/{epochs}"));
    bar
}

/// Elements of the parameters that training updates (batch norm's running statistics, which
/// burn's `num_params` counts too, excluded), on an autodiff backend.
fn trainable_params<B: AutodiffBackend, M: Module<B>>(model: &M) -> usize {
    struct Count(usize);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
            // Without initialising a lazy parameter: its first use draws its initial values,
            // which must come at the same point of the generator's stream whether or not the
            // training is tracked. (An uninitialised one is trainable: running statistics are
            // always initialised.)
            if !param.is_initialized() {
                self.0 += param.lazy_shape().num_elements();
            } else if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

fn record<B: burn::tensor::backend::Backend, M: Module<B>>(model: &M) -> Result<Vec<u8>> {
    Recorder::<B>::record(&recorder(), model.clone().into_record(), ()).map_err(|e| Error::Weights(e.to_string()))
}

/// A training in progress on backend `B`.
struct Fit<'a, B: AutodiffBackend, T: Task, O, S: Source> {
    task: &'a T,
    config: &'a TrainConfig,
    device: B::Device,
    optim: O,
    norm: GradNorm<T::Model<B>>,
    state: LoopState,
    writer: Option<checkpoint::Writer>,
    last_checkpoint: Option<PathBuf>,
    best_weights: Option<Vec<u8>>,
    tracker: Option<&'a mut dyn Tracker>,
    hooks: &'a mut dyn Hooks,
    train: &'a Loader<S>,
    val: Option<&'a Loader<S>>,
    listening: Option<signals::Listening>,
    /// Whether the monitored metric was found in an epoch report.
    monitor_checked: bool,
}

impl<B, T, O, S> Fit<'_, B, T, O, S>
where
    B: AutodiffBackend,
    T: Task<Item = S::Item>,
    T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>,
    O: Optimizer<T::Model<B>, B>,
    S: Source,
{
    fn diverged(&self, quantity: &'static str, value: f64) -> Error {
        Error::Diverged {
            epoch: self.state.epoch,
            step: self.state.step + 1,
            quantity,
            value,
            checkpoint: self.last_checkpoint.clone(),
        }
    }

    /// The batches `state.batch..group_end` of the epoch, forward and backward, gradients
    /// accumulated and checked, clipped: what the optimiser step needs, and the step's mean
    /// loss.
    fn step(
        &mut self,
        model: &T::Model<B>,
        items: &mut Batches<T::Item>,
        totals: &mut Totals,
        group_end: usize,
        group_rows: usize,
        bar: &ProgressBar,
    ) -> Result<(GradientsParams, f64)> {
        let config = self.config;
        let group_start = self.state.batch;
        let mut accumulator = GradientsAccumulator::<T::Model<B>>::new();
        let mut grads_single: Option<GradientsParams> = None;
        let mut step_loss = 0.0;
        for b in group_start..group_end {
            let batch = items.next().ok_or_else(|| {
                Error::Shape(format!("{}: the loader ended before batch {b} of the epoch", self.train.source().name()))
            })??;
            debug_assert_eq!(batch.index, b);
            let rows = batch.items.len();
            let what = format!("{}, epoch {}, batch {b}", self.train.source().name(), self.state.epoch);
            B::seed(&self.device, batch_seed(config.seed, self.state.epoch, b));
            let out = self
                .task
                .collate::<B>(batch.items, &self.device)
                .and_then(|tensors| self.task.train_step(model, tensors))
                .map_err(|e| in_batch(&what, e))?;
            if out.rows != rows {
                return Err(Error::Shape(format!(
                    "{what}: the task's step reported {} rows for {rows} items",
                    out.rows
                )));
            }
            let loss = out.loss.clone();
            let loss_value = totals.add(out, false, &what)?;
            if !loss_value.is_finite() {
                return Err(self.diverged("loss", loss_value));
            }
            step_loss += loss_value * rows as f64 / group_rows as f64;
            // Each batch's mean loss weighted by its share of the step's rows (no extra graph
            // node when the step is one batch).
            let scaled = if rows == group_rows { loss } else { loss * (rows as f32 / group_rows as f32) };
            let grads = GradientsParams::from_grads(scaled.backward(), model);
            if group_end - group_start == 1 {
                grads_single = Some(grads);
            } else {
                accumulator.accumulate(model, grads);
            }
            bar.inc(rows as u64);
        }
        let mut grads = grads_single.unwrap_or_else(|| accumulator.grads());
        // A finite loss can still come with non-finite gradients (an activation that maps NaN
        // to 0, say), which would poison the weights silently.
        let norm = (self.norm)(model, &grads);
        if !norm.is_finite() {
            return Err(self.diverged("gradient norm", norm));
        }
        if let Some(c) = config.grad_clip {
            clip::<B, _>(model, &mut grads, c, norm);
        }
        Ok((grads, step_loss))
    }

    /// Records the step and tells the tracker and the hooks.
    fn after_step(
        &mut self,
        (loss, lr): (f64, f64),
        epoch: usize,
        elapsed: f64,
        rows_so_far: usize,
    ) -> Result<std::ops::ControlFlow<()>> {
        let step = self.state.step;
        self.state.step_losses.push(loss);
        let report = StepReport {
            step,
            epoch,
            loss,
            learning_rate: lr,
            rows_per_second: rows_so_far as f64 / elapsed.max(1e-9),
        };
        let every = self.config.log_every_steps;
        if let Some(tracker) = self.tracker.as_deref_mut().filter(|_| every > 0 && step.is_multiple_of(every)) {
            tracker.log_metric("step_loss", step, loss)?;
            tracker.log_metric("lr", step, lr)?;
        }
        Ok(self.hooks.on_step(&report))
    }

    /// One pass over the validation set.
    fn validate(&self, model: &T::Model<B::InnerBackend>, val: &Loader<S>) -> Result<Totals> {
        let mut totals = Totals::default();
        for batch in val.epoch(self.config.seed, 0, 0) {
            let batch = batch?;
            let rows = batch.items.len();
            let what = format!("{}, batch {}", val.source().name(), batch.index);
            let out = self
                .task
                .collate::<B::InnerBackend>(batch.items, &self.device)
                .and_then(|tensors| self.task.step(model, tensors))
                .map_err(|e| in_batch(&what, e))?;
            if out.rows != rows {
                return Err(Error::Shape(format!(
                    "{what}: the task's step reported {} rows for {rows} items",
                    out.rows
                )));
            }
            totals.add(out, true, &what)?;
        }
        Ok(totals)
    }

    /// A validation within the epoch: logged as `step_val_*` at the optimiser step, shown to
    /// the hooks.
    fn validate_mid_epoch(&mut self, model: &T::Model<B>) -> Result<std::ops::ControlFlow<()>> {
        let Some(val) = self.val else { return Ok(std::ops::ControlFlow::Continue(())) };
        let totals = self.validate(&model.valid(), val)?;
        let metrics: BTreeMap<String, f64> =
            self.task.metrics(&totals)?.into_iter().map(|(name, value)| (format!("val_{name}"), value)).collect();
        let report =
            ValidationReport { step: self.state.step, epoch: self.state.epoch, val_loss: totals.loss(), metrics };
        if let Some(tracker) = self.tracker.as_deref_mut() {
            tracker.log_metric("step_val_loss", report.step, report.val_loss)?;
            for (name, value) in &report.metrics {
                tracker.log_metric(&format!("step_{name}"), report.step, *value)?;
            }
        }
        Ok(self.hooks.on_validation(&report))
    }

    /// The epoch is over (or cut short by max_steps): validate, report, keep the best, decide
    /// whether to go on, checkpoint.
    fn end_epoch(
        &mut self,
        model: &T::Model<B>,
        totals: &Totals,
        seconds: f64,
        mut stop: StopReason,
    ) -> Result<StopReason> {
        let epoch = self.state.epoch;
        let mut metrics = BTreeMap::new();
        for (name, value) in self.task.metrics(totals)? {
            metrics.insert(format!("train_{name}"), value);
        }
        let val_loss = match self.val {
            Some(v) => {
                let val_totals = self.validate(&model.valid(), v)?;
                for (name, value) in self.task.metrics(&val_totals)? {
                    metrics.insert(format!("val_{name}"), value);
                }
                Some(val_totals.loss())
            }
            None => None,
        };
        let report =
            EpochReport { epoch, step: self.state.step, train_loss: totals.loss(), val_loss, metrics, seconds };
        if let Some(tracker) = self.tracker.as_deref_mut() {
            let step = epoch as u64;
            tracker.log_metric("train_loss", step, report.train_loss)?;
            if let Some(l) = report.val_loss {
                tracker.log_metric("val_loss", step, l)?;
            }
            for (name, value) in &report.metrics {
                tracker.log_metric(name, step, *value)?;
            }
            tracker.log_metric("epoch_seconds", step, report.seconds)?;
            tracker.log_metric("rows_per_second", step, totals.rows as f64 / seconds.max(1e-9))?;
            tracker.flush()?;
        }
        let config = self.config;
        let monitor = &config.monitor;
        let reported = report.metric(monitor.name());
        // A NaN (an AUC over one class, say) is no value: it can neither be the best nor beat it.
        let monitored = reported.filter(|v| v.is_finite());
        if let Some(v) = reported.filter(|v| !v.is_finite()) {
            tracing::warn!(epoch, "{} is {v}; this epoch is not ranked", monitor.name());
        }
        // Without a validation set a `val_` metric has no value, and the last weights are kept
        // (fit refuses early stopping and best checkpoints on it up front).
        let unmonitorable = self.val.is_none() && monitor.needs_validation();
        if !self.monitor_checked && !unmonitorable {
            if reported.is_none() {
                let mut known = vec!["train_loss".to_string()];
                known.extend(report.val_loss.map(|_| "val_loss".to_string()));
                known.extend(report.metrics.keys().cloned());
                return Err(Error::Config(format!(
                    "monitor.metric is {}, which this task does not report (it reports {})",
                    monitor.name(),
                    known.join(", ")
                )));
            }
            self.monitor_checked = true;
        }
        let min_delta = self.config.early_stopping.map_or(0.0, |e| e.min_delta);
        if let Some(value) = monitored {
            if self.state.best.as_ref().is_none_or(|b| monitor.improves(value, b.value, min_delta)) {
                let weights = record::<B::InnerBackend, _>(&model.valid())?;
                let file = match &self.writer {
                    Some(w) => Some(w.write_best(epoch, &weights)?),
                    None => None,
                };
                self.state.best = Some(Best { value, epoch, file });
                self.best_weights = Some(weights);
                self.state.since_best = 0;
            } else {
                self.state.since_best += 1;
            }
        }
        let flow = self.hooks.on_epoch(&report);
        self.state.history.push(report);
        self.state.epoch += 1;
        self.state.batch = 0;
        self.state.set_epoch_totals(&Totals::default());
        self.state.epoch_seconds = 0.0;
        if stop == StopReason::Completed {
            if flow.is_break() {
                stop = StopReason::Requested;
            } else if let Some(sig) = self.listening.as_ref().and_then(signals::Listening::received) {
                stop = StopReason::Interrupted { signal: sig };
            } else if self.config.early_stopping.is_some_and(|es| self.state.since_best >= es.patience) {
                tracing::info!(
                    epoch,
                    "early stopping: {} has not improved for {} epochs",
                    monitor.name(),
                    self.state.since_best
                );
                stop = StopReason::EarlyStopped;
            }
        }
        self.save(model, monitored)?;
        Ok(stop)
    }

    /// Writes a checkpoint (when checkpointing); `ranked` offers it as a best-k candidate.
    fn save(&mut self, model: &T::Model<B>, ranked: Option<f64>) -> Result<()> {
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        let weights = record::<B, _>(model)?;
        let optimizer = Recorder::<B>::record(&recorder(), self.optim.to_record(), ())
            .map_err(|e| Error::Weights(e.to_string()))?;
        self.last_checkpoint = Some(w.save(&mut self.state, &weights, &optimizer, ranked)?);
        Ok(())
    }
}
