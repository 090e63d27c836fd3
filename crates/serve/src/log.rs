//! The prediction log and the feedback log: records go to one writer thread that appends
//! them to the kiln-track store as Parquet files.
//!
//! Predictions are buffered and written every `flush_interval` or `max_rows`, whichever comes
//! first; inference never waits for the disk, and a record that finds the queue full is
//! dropped and counted (`kiln_prediction_log_rows_total{outcome="dropped"}`), never blocking
//! a request. Feedback is acknowledged only once written: each label waits for the next
//! write, which takes every label queued by then (group commit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiln_track::{FeedbackRecord, PredictionRecord, Store};
use serde::{Deserialize, Serialize};

/// How predictions are logged to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Share of requests whose rows are logged, decided by a hash of the request id (so a
    /// request is logged whole or not at all, whichever version answered it). 0 turns the
    /// prediction log off; feedback is always stored.
    pub sample_rate: f64,
    /// Longest time a logged prediction waits in memory before it is written.
    #[serde(with = "crate::batcher::millis")]
    pub flush_interval: Duration,
    /// Most predicted rows per Parquet file.
    pub max_rows: usize,
    /// Records that may wait for the writer; beyond this, predictions are dropped and counted.
    pub queue_capacity: usize,
}

impl Default for LogConfig {
    /// Every request, written each second or each 50,000 rows.
    fn default() -> Self {
        Self { sample_rate: 1.0, flush_interval: Duration::from_secs(1), max_rows: 50_000, queue_capacity: 65_536 }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.sample_rate.is_finite() && (0.0..=1.0).contains(&self.sample_rate)) {
            return Err(format!("prediction log: sample_rate must be within [0, 1], got {}", self.sample_rate));
        }
        if self.max_rows == 0 || self.queue_capacity == 0 {
            return Err("prediction log: max_rows and queue_capacity must be positive".into());
        }
        Ok(())
    }

    /// Whether the request with this id is logged.
    pub(crate) fn sampled(&self, id: &str) -> bool {
        if self.sample_rate >= 1.0 {
            return true;
        }
        // Not the canary's hash: logging must not correlate with routing.
        let h = sample_hash(id);
        (h as f64 / u64::MAX as f64) < self.sample_rate
    }
}

fn sample_hash(id: &str) -> u64 {
    // FNV-1a over the bytes with a different basis than routing, then a finaliser.
    let mut h: u64 = 0x84222325cbf29ce4;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Counts of what happened to logged rows.
#[derive(Debug, Default)]
pub(crate) struct LogCounts {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    pub feedback_written: AtomicU64,
}

/// Where the writer answers whether labels were stored.
type Ack = tokio::sync::oneshot::Sender<Result<(), String>>;

enum Entry {
    Predictions(Vec<PredictionRecord>),
    Feedback(Vec<FeedbackRecord>, Ack),
    /// Write everything buffered, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The writer thread and the way to it.
#[derive(Debug)]
pub(crate) struct LogWriter {
    tx: Mutex<Option<SyncSender<Entry>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub counts: Arc<LogCounts>,
    pub config: LogConfig,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entry")
    }
}

impl LogWriter {
    pub(crate) fn start(store: Store, config: LogConfig) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(config.queue_capacity);
        let counts = Arc::new(LogCounts::default());
        let thread = {
            let (counts, config) = (Arc::clone(&counts), config.clone());
            std::thread::Builder::new()
                .name("kiln-serve log".into())
                .spawn(move || write_loop(&store, &config, &rx, &counts))?
        };
        Ok(Self { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), counts, config })
    }

    fn sender(&self) -> Option<SyncSender<Entry>> {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Queues predicted rows; never waits.
    pub(crate) fn predictions(&self, records: Vec<PredictionRecord>) {
        let n = records.len() as u64;
        let sent = self.sender().map(|tx| tx.try_send(Entry::Predictions(records)));
        match sent {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.counts.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Writes labels; the answer comes once they are on disk.
    pub(crate) fn feedback(&self, records: Vec<FeedbackRecord>) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        match self.sender() {
            // Labels wait for room rather than being dropped: the client waits for the answer.
            Some(tx) => {
                if let Err(e) = tx.send(Entry::Feedback(records, reply))
                    && let Entry::Feedback(_, reply) = e.0
                {
                    let _ = reply.send(Err("the log writer has stopped".into()));
                }
            }
            None => {
                let _ = reply.send(Err("the log writer has stopped".into()));
            }
        }
        rx
    }

    /// Writes everything queued so far (for tests and shutdown).
    pub(crate) fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(sender) = self.sender()
            && sender.send(Entry::Flush(tx)).is_ok()
        {
            let _ = rx.recv();
        }
    }

    /// Writes what is queued and stops the thread.
    pub(crate) fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(store: &Store, config: &LogConfig, rx: &Receiver<Entry>, counts: &LogCounts) {
    let mut buffer: Vec<PredictionRecord> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(config.flush_interval, |t| config.flush_interval.saturating_sub(t.elapsed()));
        let first = match rx.recv_timeout(wait) {
            Ok(entry) => Some(entry),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                write_predictions(store, &mut buffer, counts);
                return;
            }
        };
        let mut labels: Vec<(Vec<FeedbackRecord>, Ack)> = Vec::new();
        let mut flushes = Vec::new();
        // Take everything queued now: one write for all waiting labels.
        for entry in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match entry {
                Entry::Predictions(records) => {
                    oldest.get_or_insert_with(Instant::now);
                    buffer.extend(records);
                }
                Entry::Feedback(records, reply) => labels.push((records, reply)),
                Entry::Flush(done) => flushes.push(done),
            }
            if buffer.len() >= config.max_rows {
                write_predictions(store, &mut buffer, counts);
                oldest = None;
            }
        }
        if !labels.is_empty() {
            let all: Vec<FeedbackRecord> = labels.iter().flat_map(|(r, _)| r.iter().cloned()).collect();
            let result = store.append_feedback(&all).map(|_| ()).map_err(|e| e.to_string());
            match &result {
                Ok(()) => {
                    counts.feedback_written.fetch_add(all.len() as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::error!("feedback log: {e}"),
            }
            for (_, reply) in labels {
                let _ = reply.send(result.clone());
            }
        }
        if !flushes.is_empty() || oldest.is_some_and(|t| t.elapsed() >= config.flush_interval) {
            write_predictions(store, &mut buffer, counts);
            oldest = None;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn write_predictions(store: &Store, buffer: &mut Vec<PredictionRecord>, counts: &LogCounts) {
    if buffer.is_empty() {
        return;
    }
    let n = buffer.len() as u64;
    match store.append_predictions(buffer) {
        Ok(_) => {
            counts.written.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            counts.failed.fetch_add(n, Ordering::Relaxed);
            tracing::error!("prediction log: {n} rows not written: {e}");
        }
    }
    buffer.clear();
}
