//! The background metric writer of a run.
//!
//! [`MetricSink::log`] costs a hash lookup and a push onto a local buffer. Full buffers (or
//! buffers older than [`MAX_BUFFER_AGE_MS`]) go as one batch through a bounded channel to a
//! writer thread, which encodes each batch as one checksummed block of the run's current
//! segment file. When the writer falls behind, the channel fills and `log` waits: memory stays
//! bounded. [`MetricSink::flush`] sends what is buffered, then waits until the writer has
//! written and synced everything before it. The writer also keeps the run's heartbeat file
//! fresh, so readers can tell a live run from one whose process was killed.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::IoContext;
use crate::fsutil::{self, now_ms};
use crate::segment::{BlockEncoder, FILE_MAGIC, RawPoint, segment_name};
use crate::{Error, Result};

/// Points buffered by the caller before they are handed to the writer.
const BATCH_POINTS: usize = 8192;
/// Batches in flight between the caller and the writer before `log` waits.
const CHANNEL_BATCHES: usize = 32;
/// A buffer older than this is handed over at the next `log`, so slow loops still reach disk.
pub(crate) const MAX_BUFFER_AGE_MS: i64 = 200;
/// A segment larger than this is closed and the next one started.
const SEGMENT_BYTES: u64 = 64 << 20;
/// How often the writer refreshes the heartbeat file.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

enum Msg {
    Batch { new_keys: Vec<String>, points: Vec<RawPoint> },
    Flush(SyncSender<Result<()>>),
}

/// The caller's side: interning, buffering and the channel to the writer thread.
#[derive(Debug)]
pub(crate) struct MetricSink {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    new_keys: Vec<String>,
    last: Vec<f64>,
    non_finite: Vec<u64>,
    buf: Vec<RawPoint>,
    buf_since_ms: i64,
    dir: PathBuf,
}

impl MetricSink {
    /// Starts a writer appending to a new segment `seq` in `metrics_dir`.
    pub fn start(metrics_dir: PathBuf, seq: u32, heartbeat: PathBuf, owner: serde_json::Value) -> Result<Self> {
        std::fs::create_dir_all(&metrics_dir).at(&metrics_dir)?;
        let path = metrics_dir.join(segment_name(seq));
        let mut file = std::fs::OpenOptions::new().create_new(true).append(true).open(&path).at(&path)?;
        file.write_all(FILE_MAGIC).at(&path)?;
        file.sync_all().at(&path)?;
        fsutil::sync_dir(&metrics_dir)?;
        write_heartbeat(&heartbeat, &owner)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_BATCHES);
        let writer = Writer {
            dir: metrics_dir.clone(),
            seq,
            path,
            file,
            written: FILE_MAGIC.len() as u64,
            names: Vec::new(),
            encoder: BlockEncoder::default(),
            out: Vec::new(),
            error: None,
            heartbeat,
            owner,
        };
        let thread = std::thread::Builder::new()
            .name("kiln-metrics".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| Error::Io { path: metrics_dir.clone(), source })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            ids: HashMap::new(),
            names: Vec::new(),
            new_keys: Vec::new(),
            last: Vec::new(),
            non_finite: Vec::new(),
            buf: Vec::with_capacity(BATCH_POINTS),
            buf_since_ms: 0,
            dir: metrics_dir,
        })
    }

    /// Buffers one point; hands the buffer to the writer when it is full or old.
    #[inline]
    pub fn log(&mut self, key: &str, step: u64, value: f64) -> Result<()> {
        let now = now_ms();
        self.push(key, step, value, now, now)
    }

    /// [`MetricSink::log`] with the time the value was measured (a point relayed by the
    /// tracking server keeps its client's timestamp).
    pub fn log_at(&mut self, key: &str, step: u64, value: f64, ts: i64) -> Result<()> {
        self.push(key, step, value, ts, now_ms())
    }

    #[inline]
    fn push(&mut self, key: &str, step: u64, value: f64, ts: i64, now: i64) -> Result<()> {
        let id = match self.ids.get(key) {
            Some(&id) => id,
            None => self.intern(key)?,
        };
        if !value.is_finite() {
            self.note_non_finite(id, step, value);
        }
        self.last[id as usize] = value;
        if self.buf.is_empty() {
            self.buf_since_ms = now;
        }
        self.buf.push(RawPoint { key: id, step, value, ts });
        if self.buf.len() >= BATCH_POINTS || now - self.buf_since_ms >= MAX_BUFFER_AGE_MS {
            self.send()?;
        }
        Ok(())
    }

    #[cold]
    fn intern(&mut self, key: &str) -> Result<u32> {
        if !crate::run::valid_metric_key(key) {
            return Err(Error::InvalidName {
                what: "metric",
                name: key.to_string(),
                reason: crate::run::BAD_METRIC_KEY,
            });
        }
        let id = self.names.len() as u32;
        self.ids.insert(key.to_string(), id);
        self.names.push(key.to_string());
        self.new_keys.push(key.to_string());
        self.last.push(f64::NAN);
        self.non_finite.push(0);
        Ok(id)
    }

    #[cold]
    fn note_non_finite(&mut self, id: u32, step: u64, value: f64) {
        let count = &mut self.non_finite[id as usize];
        if *count == 0 {
            tracing::warn!(metric = %self.names[id as usize], step, %value, "metric is not finite (kept and flagged)");
        }
        *count += 1;
    }

    fn send(&mut self) -> Result<()> {
        if self.buf.is_empty() && self.new_keys.is_empty() {
            return Ok(());
        }
        let points = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH_POINTS));
        let new_keys = std::mem::take(&mut self.new_keys);
        self.channel()?.send(Msg::Batch { new_keys, points }).map_err(|_| self.writer_gone())
    }

    fn channel(&self) -> Result<&SyncSender<Msg>> {
        self.tx.as_ref().ok_or_else(|| self.writer_gone())
    }

    fn writer_gone(&self) -> Error {
        Error::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("the metric writer has stopped after an earlier error (see flush)"),
        }
    }

    /// Hands over the buffer and waits until everything logged so far is on disk.
    pub fn flush(&mut self) -> Result<()> {
        self.send()?;
        let (reply, wait) = std::sync::mpsc::sync_channel(1);
        self.channel()?.send(Msg::Flush(reply)).map_err(|_| self.writer_gone())?;
        wait.recv().map_err(|_| self.writer_gone())?
    }

    /// Flushes, then stops the writer thread.
    pub fn close(&mut self) -> Result<()> {
        let result = if self.tx.is_some() { self.flush() } else { Ok(()) };
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }

    /// The last value logged for each metric in this session.
    pub fn last(&self) -> impl Iterator<Item = (&str, f64)> {
        self.names.iter().map(String::as_str).zip(self.last.iter().copied())
    }
}

impl Drop for MetricSink {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("metrics not written: {e}");
        }
    }
}

struct Writer {
    dir: PathBuf,
    seq: u32,
    path: PathBuf,
    file: File,
    written: u64,
    names: Vec<String>,
    encoder: BlockEncoder,
    out: Vec<u8>,
    error: Option<String>,
    heartbeat: PathBuf,
    owner: serde_json::Value,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut last_beat = Instant::now();
        loop {
            match rx.recv_timeout(HEARTBEAT_INTERVAL) {
                Ok(Msg::Batch { new_keys, points }) => {
                    self.names.extend(new_keys);
                    if self.error.is_none()
                        && let Err(e) = self.write(&points)
                    {
                        self.error = Some(e.to_string());
                    }
                }
                Ok(Msg::Flush(reply)) => {
                    let result = match &self.error {
                        Some(e) => Err(Error::Io { path: self.path.clone(), source: std::io::Error::other(e.clone()) }),
                        None => self.file.sync_data().at(&self.path),
                    };
                    let _ = reply.send(result);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_beat.elapsed() >= HEARTBEAT_INTERVAL {
                last_beat = Instant::now();
                if let Err(e) = write_heartbeat(&self.heartbeat, &self.owner) {
                    tracing::warn!("heartbeat not written: {e}");
                }
            }
        }
        if let Err(e) = self.file.sync_data() {
            tracing::warn!(file = %self.path.display(), "metric segment not synced: {e}");
        }
    }

    fn write(&mut self, points: &[RawPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        if self.written >= SEGMENT_BYTES {
            self.rotate()?;
        }
        self.out.clear();
        self.encoder.encode(&self.names, points, &mut self.out);
        self.file.write_all(&self.out).at(&self.path)?;
        self.written += self.out.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        self.file.sync_data().at(&self.path)?;
        self.seq += 1;
        self.path = self.dir.join(segment_name(self.seq));
        self.file = std::fs::OpenOptions::new().create_new(true).append(true).open(&self.path).at(&self.path)?;
        self.file.write_all(FILE_MAGIC).at(&self.path)?;
        fsutil::sync_dir(&self.dir)?;
        self.written = FILE_MAGIC.len() as u64;
        self.encoder = BlockEncoder::default();
        Ok(())
    }
}

/// Writes the heartbeat: who writes the run, and when it was last seen alive.
fn write_heartbeat(path: &Path, owner: &serde_json::Value) -> Result<()> {
    let mut beat = owner.clone();
    if let Some(map) = beat.as_object_mut() {
        map.insert("seen_ms".into(), now_ms().into());
    }
    fsutil::write_json(path, &beat)
}
