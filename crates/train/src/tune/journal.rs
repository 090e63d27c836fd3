//! The study journal: one file of checksummed JSON lines, appended under a lock by any number
//! of processes, replayed incrementally by each of them.
//!
//! A line is `<16 hex> <json>\n`, the hex being the first 8 bytes of the BLAKE3 of the JSON
//! text. Writers take an exclusive `flock` on the sibling file `<journal>.lock`, open the
//! journal (so that NFS revalidates it: close-to-open consistency), read what other processes
//! appended since their last look, decide what to write from that up-to-date state (trial
//! numbers are assigned here), write the append as one line (a `batch` when it has several
//! operations) with one `write_all`,
//! `fdatasync`, close, and unlock. Readers take a shared lock, so they never see a live
//! writer's half-written line: an incomplete line, or a final line that fails its checksum, can
//! only come from a writer that died mid-append. Readers skip it with a warning; the next
//! writer truncates it away before appending. Any other damaged line is an error naming the
//! file and line, and earlier lines are never rewritten.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::space::Distribution;
use super::state::StudyState;
use super::study::{StudyConfig, TrialState};
use crate::{Error, Result};

/// The journal format this version writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// The first line: the study's name, direction, sampler and pruner.
    Study { format: u32, ms: i64, worker: String, study: StudyConfig },
    /// A new trial, numbered from 0 in order of creation.
    Trial {
        number: u64,
        ms: i64,
        worker: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grid_id: Option<u64>,
        /// The interval at which the worker promised heartbeats, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_ms: Option<u64>,
    },
    /// Parameters drawn for a trial, with the distributions they were drawn from.
    Params { trial: u64, ms: i64, params: std::collections::BTreeMap<String, ParamValue> },
    /// An intermediate value at a step.
    Report {
        trial: u64,
        ms: i64,
        step: u64,
        #[serde(with = "float")]
        value: f64,
    },
    /// The trial reached a rung of successive halving with this value.
    Rung {
        trial: u64,
        ms: i64,
        rung: u32,
        #[serde(with = "float")]
        value: f64,
    },
    /// A user attribute.
    Attr { trial: u64, ms: i64, key: String, value: Value },
    /// The trial's worker is alive.
    Heartbeat { trial: u64, ms: i64 },
    /// Several operations of one append, kept on one line so that a torn write can only ever
    /// damage the last line (a crash cannot leave a damaged line followed by a whole one).
    Batch { ops: Vec<Op> },
    /// The trial ended.
    Finish {
        trial: u64,
        ms: i64,
        state: TrialState,
        #[serde(default, with = "opt_float", skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// A parameter's value with the distribution it was drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamValue {
    /// The distribution.
    pub distribution: Distribution,
    /// The value: a number, or one of the categorical choices.
    pub value: Value,
}

/// Floats as JSON numbers, and NaN and infinities (which JSON lacks) as `"nan"`, `"inf"`,
/// `"-inf"`.
mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("nan")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(v),
            Repr::Text(t) => match t.as_str() {
                "nan" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("expected a number, found {other:?}"))),
            },
        }
    }
}

mod opt_float {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::float::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        super::float::deserialize(d).map(Some)
    }
}

/// Counters of one process's view of a journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Complete lines read or written.
    pub lines: u64,
    /// Bytes of complete lines.
    pub bytes: u64,
    /// Torn last lines seen (each reported once with a warning).
    pub torn_tails: u64,
    /// Bytes of torn last lines removed before appending.
    pub torn_bytes_removed: u64,
    /// Operations on trials that had already ended, ignored (a trial failed as stale whose
    /// worker was alive after all).
    pub ignored_ops: u64,
}

/// Why a line could not be read.
enum LineError {
    /// The checksum or framing is wrong: a torn write if it is the last line.
    Damaged(String),
    /// The checksum is right but the content is not an operation this version knows.
    Invalid(String),
}

fn checksum(json: &[u8]) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = blake3::hash(json);
    let mut out = [0u8; 16];
    for (i, b) in hash.as_bytes()[..8].iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xF)];
    }
    out
}

/// The line for `op`, newline included.
pub(crate) fn encode(op: &Op) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(op).map_err(|e| Error::Config(format!("cannot encode a journal line: {e}")))?;
    let mut line = Vec::with_capacity(json.len() + 18);
    line.extend_from_slice(&checksum(&json));
    line.push(b' ');
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// Applies one line's operation, expanding a batch.
fn apply_line(state: &mut StudyState, op: Op) -> std::result::Result<(), String> {
    match op {
        Op::Batch { ops } => {
            for op in ops {
                if matches!(op, Op::Batch { .. }) {
                    return Err("a batch inside a batch".into());
                }
                state.apply(op)?;
            }
            Ok(())
        }
        op => state.apply(op),
    }
}

fn decode(line: &[u8]) -> std::result::Result<Op, LineError> {
    if line.len() < 18 || line[16] != b' ' {
        return Err(LineError::Damaged("not a journal line (`<16 hex checksum> <json>`)".into()));
    }
    let (sum, json) = (&line[..16], &line[17..]);
    if sum != checksum(json) {
        return Err(LineError::Damaged("checksum mismatch".into()));
    }
    serde_json::from_slice(json)
        .map_err(|e| LineError::Invalid(format!("not an operation this version of kiln knows: {e}")))
}

/// Decides, from the up-to-date state, the lines to append and what to return.
pub(crate) type MakeOps<'a, T> = dyn FnMut(&StudyState) -> Result<(Vec<Op>, T)> + 'a;

/// Where a study lives.
#[derive(Debug)]
pub(crate) enum Storage {
    /// In this process only.
    Memory { lines: u64 },
    /// In a journal file.
    File(JournalFile),
}

impl Storage {
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Self::Memory { .. } => None,
            Self::File(f) => Some(&f.path),
        }
    }

    pub(crate) fn stats(&self) -> JournalStats {
        match self {
            Self::Memory { lines } => JournalStats { lines: *lines, ..JournalStats::default() },
            Self::File(f) => f.stats,
        }
    }

    /// Reads what other processes appended.
    pub(crate) fn refresh(&mut self, state: &mut StudyState) -> Result<()> {
        match self {
            Self::Memory { .. } => Ok(()),
            Self::File(f) => f.refresh(state),
        }
    }

    /// Brings `state` up to date under the exclusive lock, lets `make` decide the operations
    /// from it, appends and applies them. Nothing is written when `make` fails or returns none.
    pub(crate) fn append_with<T>(&mut self, state: &mut StudyState, make: &mut MakeOps<'_, T>) -> Result<T> {
        match self {
            Self::Memory { lines } => {
                let (ops, out) = make(state)?;
                for op in ops {
                    *lines += 1;
                    let line = *lines;
                    state.apply(op).map_err(|message| Error::Journal { path: "(in memory)".into(), line, message })?;
                }
                Ok(out)
            }
            Self::File(f) => f.append_with(state, make),
        }
    }
}

/// A journal file and how far this process has read it.
#[derive(Debug)]
pub(crate) struct JournalFile {
    path: PathBuf,
    lock_path: PathBuf,
    /// Bytes of complete lines read.
    offset: u64,
    /// Complete lines read.
    line: u64,
    /// The offset of a torn tail already reported.
    torn_at: Option<u64>,
    stats: JournalStats,
}

/// A held `flock` on a journal's lock file. Dropping it unlocks and closes the file first,
/// then lets the next handle of this process in.
struct FileLock {
    file: File,
    _process: ProcessLock,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// This process's hold on a lock file, taken before the `flock` and kept until it is closed.
///
/// On NFS, Linux implements `flock` with POSIX byte-range locks, which belong to the process:
/// two handles of one process would both get the lock, and closing either descriptor would
/// release both. Handles of one process on one journal therefore queue here first.
struct ProcessLock {
    path: PathBuf,
}

type Held = (Mutex<HashSet<PathBuf>>, Condvar);

fn held() -> &'static Held {
    static HELD: OnceLock<Held> = OnceLock::new();
    HELD.get_or_init(|| (Mutex::new(HashSet::new()), Condvar::new()))
}

impl ProcessLock {
    fn acquire(path: &Path) -> Self {
        let (set, cv) = held();
        let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
        while set.contains(path) {
            set = cv.wait(set).unwrap_or_else(PoisonError::into_inner);
        }
        set.insert(path.to_path_buf());
        Self { path: path.to_path_buf() }
    }
}

impl Drop for ProcessLock {
    fn drop(&mut self) {
        let (set, cv) = held();
        set.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.path);
        cv.notify_all();
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

impl JournalFile {
    pub(crate) fn new(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        // One spelling of the lock file, so that the process-wide lock sees it as one file,
        // and the real file's, so that a symlink to a journal shares its lock.
        let real = path.canonicalize().ok();
        let path = real.as_deref().unwrap_or(path);
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.canonicalize().map_err(io(d))?,
            None => std::env::current_dir().map_err(io(path))?,
        };
        let name = path.file_name().ok_or_else(|| Error::Config(format!("{} is not a file name", path.display())))?;
        let mut lock = name.to_owned();
        lock.push(".lock");
        Ok(Self {
            path: path.to_path_buf(),
            lock_path: dir.join(lock),
            offset: 0,
            line: 0,
            torn_at: None,
            stats: JournalStats::default(),
        })
    }

    /// Locks the sibling lock file (`flock`), holding the process-wide lock of that file for
    /// as long: see [`ProcessLock`]. POSIX locks need the file open for writing, even for a
    /// shared lock, hence read + write.
    fn lock(&self, exclusive: bool) -> Result<FileLock> {
        let process = ProcessLock::acquire(&self.lock_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(io(&self.lock_path))?;
        if exclusive { file.lock() } else { file.lock_shared() }.map_err(io(&self.lock_path))?;
        Ok(FileLock { file, _process: process })
    }

    fn refresh(&mut self, state: &mut StudyState) -> Result<()> {
        let lock = match self.lock(false) {
            Ok(lock) => Some(lock),
            // A study on a read-only mount (an archived search) is read without the lock: no
            // one can be writing it.
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) && File::open(&self.path).is_ok() =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&self.path)(e)),
        };
        self.read_new(&mut file, state)?;
        drop(file);
        drop(lock);
        Ok(())
    }

    /// Applies the complete lines past the offset; returns the length of a torn tail.
    fn read_new(&mut self, file: &mut File, state: &mut StudyState) -> Result<u64> {
        let len = file.metadata().map_err(io(&self.path))?.len();
        if len < self.offset {
            return Err(Error::Journal {
                path: self.path.clone(),
                line: self.line,
                message: format!("the file shrank to {len} bytes, below the {} bytes already read", self.offset),
            });
        }
        if len == self.offset {
            return Ok(0);
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io(&self.path))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        file.take(len - self.offset).read_to_end(&mut buf).map_err(io(&self.path))?;
        let mut pos = 0;
        while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
            let next = pos + nl + 1;
            let line = self.line + 1;
            let err = |message: String| Error::Journal { path: self.path.clone(), line, message };
            match decode(&buf[pos..pos + nl]) {
                Ok(op) => apply_line(state, op).map_err(err)?,
                // A damaged last line is a torn write (a crash can leave the size extended
                // over zeros); anywhere else it is damage.
                Err(LineError::Damaged(_)) if next == buf.len() => break,
                Err(LineError::Damaged(m) | LineError::Invalid(m)) => return Err(err(m)),
            }
            pos = next;
            self.offset += (nl + 1) as u64;
            self.line += 1;
            self.stats.lines += 1;
            self.stats.bytes += (nl + 1) as u64;
        }
        self.stats.ignored_ops = state.ignored_ops;
        let tail = (buf.len() - pos) as u64;
        if tail > 0 && self.torn_at != Some(self.offset) {
            tracing::warn!(
                journal = %self.path.display(),
                "ignoring a torn last line ({tail} bytes at byte {}, line {}): a writer died while appending",
                self.offset,
                self.line + 1
            );
            self.torn_at = Some(self.offset);
            self.stats.torn_tails += 1;
        }
        Ok(tail)
    }

    fn append_with<T>(&mut self, state: &mut StudyState, make: &mut MakeOps<'_, T>) -> Result<T> {
        let lock = self.lock(true)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(io(&self.path))?;
        let tail = self.read_new(&mut file, state)?;
        let (ops, out) = make(state)?;
        if ops.is_empty() {
            return Ok(out);
        }
        if tail > 0 {
            // Under the exclusive lock no writer is alive in the tail, and no reader has
            // consumed it (readers only consume complete lines), so it can go.
            file.set_len(self.offset).map_err(io(&self.path))?;
            tracing::warn!(
                journal = %self.path.display(),
                "removed a torn last line ({tail} bytes at byte {}) before appending",
                self.offset
            );
            self.stats.torn_bytes_removed += tail;
            self.torn_at = None;
        }
        let line_op = match ops.as_slice() {
            [one] => one.clone(),
            _ => Op::Batch { ops: ops.clone() },
        };
        let buf = encode(&line_op)?;
        // Every reader must be able to read what is written: a value the parser refuses (JSON
        // nested deeper than serde_json's limit, say) would make the journal unreadable.
        if let Err(LineError::Damaged(m) | LineError::Invalid(m)) = decode(&buf[..buf.len() - 1]) {
            return Err(Error::Config(format!("refusing to append a line no reader could read: {m}")));
        }
        let created = self.offset == 0;
        file.seek(SeekFrom::Start(self.offset)).map_err(io(&self.path))?;
        file.write_all(&buf).map_err(io(&self.path))?;
        file.sync_data().map_err(io(&self.path))?;
        if created {
            // The journal's directory entry must be durable too.
            if let Some(dir) = self.lock_path.parent() {
                kiln_track::durable::sync_dir(dir)?;
            }
        }
        drop(file);
        drop(lock);
        let line = self.line + 1;
        apply_line(state, line_op).map_err(|message| Error::Journal { path: self.path.clone(), line, message })?;
        self.line += 1;
        self.stats.lines += 1;
        self.offset += buf.len() as u64;
        self.stats.bytes += buf.len() as u64;
        self.stats.ignored_ops = state.ignored_ops;
        Ok(out)
    }
}
