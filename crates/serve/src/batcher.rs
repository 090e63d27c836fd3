//! Dynamic batching: one worker thread per served model stacks the rows of waiting requests
//! and runs the model once for all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use kiln_train::{Prediction, Predictor};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::inputs::Input;

/// How requests to one model are batched and queued.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    /// Most rows run through the model at once (a larger request still runs whole).
    pub max_batch_rows: usize,
    /// How long the first request of a batch waits for more. At 0 (the default) batching is
    /// opportunistic: a batch is whatever queued while the model was busy, so a lone request
    /// never waits, and batches grow with the load.
    #[serde(with = "millis")]
    pub max_delay: Duration,
    /// Requests admitted and not yet answered (queued, or in a forming batch); beyond this a
    /// request answers 503 with `Retry-After` instead of waiting.
    pub queue_capacity: usize,
    /// Deadline of a request that sets none (header `kiln-timeout-ms`).
    #[serde(with = "millis")]
    pub default_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: 64,
            max_delay: Duration::ZERO,
            queue_capacity: 1024,
            default_timeout: Duration::from_secs(10),
        }
    }
}

impl BatchConfig {
    /// No batching: each request runs alone, in arrival order.
    pub fn unbatched() -> Self {
        Self { max_batch_rows: 1, max_delay: Duration::ZERO, ..Self::default() }
    }
}

pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom)
    }
}

/// What became of one request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Predicted, after waiting `queued` in a batch of `batch_rows` rows.
    Done { predictions: Vec<Prediction>, queued: Duration, batch_rows: usize },
    /// The request's rows break the model's inputs (answer 400).
    Invalid(String),
    /// Its deadline passed while it waited (answer 504).
    Expired,
    /// The model failed on the batch (answer 500).
    Failed(String),
}

struct Job {
    input: Input,
    enqueued: Instant,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<Outcome>,
    _slot: Slot,
}

/// A request's place among the model's waiting requests, given back when it is answered.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The queue is full.
#[derive(Debug)]
pub(crate) struct Overloaded;

/// A model's queue and worker thread. Dropping it lets the worker finish what is queued and
/// end on its own (it is not joined: a version leaves service from inside a request handler,
/// which must not wait for the model).
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: SyncSender<Job>,
    /// Requests admitted and not yet answered: queued, or collected into a forming batch.
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl Batcher {
    pub(crate) fn start(name: &str, predictor: Arc<Predictor>, config: BatchConfig) -> std::io::Result<Self> {
        let capacity = config.queue_capacity.max(1);
        let (tx, rx) = sync_channel(capacity);
        std::thread::Builder::new().name(format!("kiln-serve {name}")).spawn(move || work(&predictor, &config, &rx))?;
        Ok(Self { tx, pending: Arc::new(AtomicUsize::new(0)), capacity })
    }

    /// Queues a request; its outcome arrives on the returned channel.
    pub(crate) fn submit(
        &self,
        input: Input,
        deadline: Instant,
    ) -> Result<tokio::sync::oneshot::Receiver<Outcome>, Overloaded> {
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1))
            .is_ok();
        if !admitted {
            return Err(Overloaded);
        }
        let slot = Slot(Arc::clone(&self.pending));
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job { input, enqueued: Instant::now(), deadline, reply, _slot: slot };
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Overloaded),
        }
    }
}

fn work(predictor: &Predictor, config: &BatchConfig, rx: &Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut rows = first.input.rows();
        let mut jobs = vec![first];
        let until = Instant::now() + config.max_delay;
        while rows < config.max_batch_rows {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => {
                    rows += job.input.rows();
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        run_batch(predictor, jobs);
    }
}

/// Prepares each request on its own (a bad one fails alone), runs the model once on the
/// stacked rows, and hands each request its share.
fn run_batch(predictor: &Predictor, jobs: Vec<Job>) {
    let now = Instant::now();
    let mut ready: Vec<(Job, Array2<f64>)> = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.deadline <= now {
            let _ = job.reply.send(Outcome::Expired);
            continue;
        }
        let prepared = match &job.input {
            Input::Rows(rows) => predictor.prepare(rows.view()),
            Input::Records(records) => predictor.prepare_records(records),
        };
        match prepared {
            Ok(x) => ready.push((job, x)),
            Err(e) => {
                let _ = job.reply.send(Outcome::Invalid(e.to_string()));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    let views: Vec<_> = ready.iter().map(|(_, x)| x.view()).collect();
    let stacked = match ndarray::concatenate(Axis(0), &views) {
        Ok(x) => x,
        Err(e) => {
            for (job, _) in ready {
                let _ = job.reply.send(Outcome::Failed(format!("cannot stack the batch: {e}")));
            }
            return;
        }
    };
    let batch_rows = stacked.nrows();
    match predictor.predict_prepared(stacked) {
        Ok(mut predictions) => {
            // Hand out from the back so each split is O(share).
            for (job, x) in ready.into_iter().rev() {
                let share = predictions.split_off(predictions.len() - x.nrows());
                let queued = now.saturating_duration_since(job.enqueued);
                let _ = job.reply.send(Outcome::Done { predictions: share, queued, batch_rows });
            }
        }
        Err(e) => {
            for (job, _) in ready {
                let _ = job.reply.send(Outcome::Failed(e.to_string()));
            }
        }
    }
}
