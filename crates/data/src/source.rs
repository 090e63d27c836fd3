//! Items for a training loop, from memory or from disk: a [`Source`] and a [`Loader`].
//!
//! A [`Source`] knows how many items it has and decodes item `i` on demand, with a random
//! generator that kiln derives from the seed, the epoch and the item (so random augmentation
//! is the same every time the same epoch is replayed, on any thread). A [`Loader`] cuts an
//! epoch into batches in an [`Order`] that is a pure function of the seed and the epoch, decodes
//! them ahead on `workers` threads, and hands them over **in order**: the batches, and so a
//! training's results, are identical for any number of workers, and an epoch can start at any
//! batch (a resumed training continues mid-epoch). An item that fails to decode is an error
//! naming the source and the item; an epoch is never silently shorter.
//!
//! Items are plain Rust values (kiln-data knows nothing of tensors); the training task turns
//! a batch of items into tensors.
//!
//! ```
//! use kiln_data::{Loader, Order, SplitMix64, from_fn};
//!
//! # fn main() -> kiln_data::Result<()> {
//! // 10 items, each a value with a random jitter drawn from the item's generator.
//! let source = from_fn("jitter", 10, "v1", |index, rng: &mut SplitMix64| Ok(index as f64 + rng.next_f64()));
//! let loader = Loader::new(source, 4).order(Order::Shuffle).workers(2);
//! let mut seen = 0;
//! for batch in loader.epoch(7, 1, 0) {
//!     let batch = batch?;
//!     seen += batch.items.len();
//! }
//! assert_eq!(seen, 10);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, SplitMix64};

/// Items a training reads, by index.
///
/// `get` must be a pure function of the index and the generator it is given: called twice
/// with the same arguments it returns the same item. That is what makes a resumed training
/// and a training with more loader workers reproduce the same results.
///
/// ```
/// use kiln_data::{Error, Loader, Source, SplitMix64};
///
/// /// Sequences stored one per line of a text file already read into memory, flipped at
/// /// random (augmentation from the item's generator).
/// struct Lines {
///     path: String,
///     lines: Vec<String>,
/// }
///
/// impl Source for Lines {
///     type Item = Vec<f32>;
///     fn name(&self) -> String {
///         self.path.clone()
///     }
///     fn len(&self) -> usize {
///         self.lines.len()
///     }
///     fn get(&self, index: usize, rng: &mut SplitMix64) -> kiln_data::Result<Vec<f32>> {
///         let mut values = self.lines[index]
///             .split(',')
///             .map(|v| v.trim().parse::<f32>())
///             .collect::<Result<Vec<_>, _>>()
///             .map_err(|e| Error::Parse {
///                 path: self.path.clone().into(),
///                 line: Some(index + 1),
///                 column: None,
///                 message: format!("expected numbers separated by commas: {e}"),
///             })?;
///         if rng.below(2) == 1 {
///             values.reverse();
///         }
///         Ok(values)
///     }
///     fn fingerprint(&self) -> kiln_data::Result<String> {
///         Ok(format!("{}:{}", self.path, self.lines.len()))
///     }
/// }
///
/// let source = Lines { path: "seq.txt".into(), lines: vec!["1, 2".into(), "3, x".into()] };
/// let err = Loader::new(source, 2).epoch(1, 1, 0).next().unwrap().unwrap_err();
/// assert!(err.to_string().contains("seq.txt: item 1: seq.txt, line 2"));
/// ```
pub trait Source: Send + Sync + 'static {
    /// One decoded item (a row, an image and its label, ...).
    type Item: Send + 'static;

    /// A short name for error messages (a path, or what the data is).
    fn name(&self) -> String;

    /// Number of items.
    fn len(&self) -> usize;

    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes item `index` (`< len()`). `rng` is the item's own generator for this epoch:
    /// draw random augmentation from it, never from a generator of your own.
    fn get(&self, index: usize, rng: &mut SplitMix64) -> Result<Self::Item>;

    /// A cheap identity of the data (content hash, or paths with sizes and modification
    /// times): a checkpoint records it and a resumed training refuses other data.
    fn fingerprint(&self) -> Result<String>;

    /// Items stored together (rows of a row group, images of a chunk): [`Order::BlockShuffle`]
    /// shuffles whole blocks so reads stay sequential. 1 for random access.
    fn block(&self) -> usize {
        1
    }
}

impl<S: Source> Source for Arc<S> {
    type Item = S::Item;
    fn name(&self) -> String {
        (**self).name()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize, rng: &mut SplitMix64) -> Result<Self::Item> {
        (**self).get(index, rng)
    }
    fn fingerprint(&self) -> Result<String> {
        (**self).fingerprint()
    }
    fn block(&self) -> usize {
        (**self).block()
    }
}

/// The order of an epoch's items: a pure function of the seed and the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Order {
    /// `0, 1, 2, ...` every epoch (validation, or data that is already shuffled).
    Sequential,
    /// A uniformly random permutation per epoch.
    #[default]
    Shuffle,
    /// Blocks of [`Source::block`] consecutive items in a random order; the items of each
    /// `window` consecutive blocks (in that order) shuffled among themselves. Reads stay
    /// within `window` blocks at a time, which suits chunked files and caches of that size.
    BlockShuffle {
        /// Blocks whose items are mixed together (at least 1).
        window: usize,
    },
}

impl Order {
    /// The item indices of epoch `epoch` (1-based by convention; any value works) for `len`
    /// items stored in blocks of `block`.
    pub fn indices(&self, len: usize, block: usize, seed: u64, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..len).collect();
        let mut rng = SplitMix64::new(seed ^ 0x6B69_6C6E ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match *self {
            Self::Sequential => {}
            Self::Shuffle => rng.shuffle(&mut order),
            Self::BlockShuffle { window } => {
                let block = block.max(1);
                let mut blocks: Vec<usize> = (0..len.div_ceil(block)).collect();
                rng.shuffle(&mut blocks);
                order.clear();
                for group in blocks.chunks(window.max(1)) {
                    let start = order.len();
                    for b in group {
                        order.extend(b * block..((b + 1) * block).min(len));
                    }
                    rng.shuffle(&mut order[start..]);
                }
            }
        }
        order
    }
}

/// The generator of item `index` in epoch `epoch` of a training seeded with `seed`.
pub fn item_rng(seed: u64, epoch: usize, index: usize) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed ^ 0x6974_656D_5F72_6E67);
    let a = mix.next_u64() ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let b = SplitMix64::new(a).next_u64() ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    SplitMix64::new(SplitMix64::new(b).next_u64())
}

/// One batch of an epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<I> {
    /// 0-based position of the batch in its epoch.
    pub index: usize,
    /// The source indices of its items.
    pub indices: Vec<usize>,
    /// The decoded items, in the order of `indices`.
    pub items: Vec<I>,
}

/// Cuts epochs of a [`Source`] into batches and decodes them, ahead of the consumer on
/// worker threads when asked to.
#[derive(Debug)]
pub struct Loader<S: Source> {
    source: Arc<S>,
    batch_size: usize,
    order: Order,
    workers: usize,
    prefetch: usize,
}

impl<S: Source> Clone for Loader<S> {
    fn clone(&self) -> Self {
        Self { source: Arc::clone(&self.source), ..*self }
    }
}

impl<S: Source> Loader<S> {
    /// Batches of `batch_size` items (the last one possibly smaller; at least 1), shuffled,
    /// decoded on the calling thread.
    pub fn new(source: S, batch_size: usize) -> Self {
        Self { source: Arc::new(source), batch_size: batch_size.max(1), order: Order::Shuffle, workers: 0, prefetch: 2 }
    }

    /// The item order.
    #[must_use]
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Threads decoding batches ahead of the consumer (0: decode on the calling thread). The
    /// batches are the same for any number.
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Batches decoded ahead per worker, waiting to be consumed (at least 1).
    #[must_use]
    pub fn prefetch(mut self, batches: usize) -> Self {
        self.prefetch = batches.max(1);
        self
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Items per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.source.len().div_ceil(self.batch_size)
    }

    /// The source indices of each batch of an epoch.
    pub fn plan(&self, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
        let order = self.order.indices(self.source.len(), self.source.block(), seed, epoch);
        order.chunks(self.batch_size).map(<[usize]>::to_vec).collect()
    }

    /// The batches of epoch `epoch` from batch `from_batch` on. Dropping the iterator stops
    /// the workers.
    pub fn epoch(&self, seed: u64, epoch: usize, from_batch: usize) -> Batches<S::Item> {
        let plan: Arc<Vec<Vec<usize>>> = Arc::new(self.plan(seed, epoch).into_iter().skip(from_batch).collect());
        let decode = {
            let source = Arc::clone(&self.source);
            Arc::new(move |indices: &[usize]| -> Result<Vec<S::Item>> {
                indices
                    .iter()
                    .map(|&index| {
                        let mut rng = item_rng(seed, epoch, index);
                        source.get(index, &mut rng).map_err(|e| Error::Item {
                            source_name: source.name(),
                            index,
                            message: e.to_string(),
                        })
                    })
                    .collect()
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        let workers = self.workers.min(plan.len());
        for w in 0..workers {
            let (tx, rx): (SyncSender<Result<Vec<S::Item>>>, Receiver<_>) = sync_channel(self.prefetch);
            let (mine, decoder, stopped) = (Arc::clone(&plan), Arc::clone(&decode), Arc::clone(&stop));
            let spawned = std::thread::Builder::new().name(format!("kiln-loader-{w}")).spawn(move || {
                for indices in mine.iter().skip(w).step_by(workers) {
                    if stopped.load(AtomicOrdering::Relaxed) {
                        return;
                    }
                    let decoded = decoder(indices);
                    let failed = decoded.is_err();
                    if tx.send(decoded).is_err() || failed {
                        return;
                    }
                }
            });
            match spawned {
                Ok(handle) => {
                    lanes.push(rx);
                    threads.push(handle);
                }
                Err(e) => {
                    // The running workers stride by the full count: stop them all and decode on
                    // the consumer's thread instead.
                    tracing_free_warning(&format!(
                        "loader worker {w} could not start ({e}); decoding on the calling thread"
                    ));
                    stop.store(true, AtomicOrdering::Relaxed);
                    lanes.clear();
                    for thread in threads.drain(..) {
                        let _ = thread.join();
                    }
                    break;
                }
            }
        }
        let inline: Option<Decode<S::Item>> = lanes.is_empty().then_some(decode as Decode<S::Item>);
        Batches {
            name: self.source.name(),
            plan,
            first: from_batch,
            next: 0,
            lanes,
            threads,
            stop,
            inline,
            done: false,
        }
    }
}

/// Warnings without a logging dependency: kiln-data reports through errors, and this one
/// only costs speed.
fn tracing_free_warning(message: &str) {
    eprintln!("kiln-data: {message}");
}

type Decode<I> = Arc<dyn Fn(&[usize]) -> Result<Vec<I>> + Send + Sync>;

/// The batches of one epoch, in order ([`Loader::epoch`]). Stops after the first error.
pub struct Batches<I> {
    name: String,
    plan: Arc<Vec<Vec<usize>>>,
    first: usize,
    next: usize,
    lanes: Vec<Receiver<Result<Vec<I>>>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    inline: Option<Decode<I>>,
    done: bool,
}

impl<I> std::fmt::Debug for Batches<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("first", &self.first)
            .field("next", &self.next)
            .field("batches", &self.plan.len())
            .field("workers", &self.lanes.len())
            .finish()
    }
}

impl<I> Batches<I> {
    /// Batches left, the one `next` would return included.
    pub fn remaining(&self) -> usize {
        if self.done { 0 } else { self.plan.len() - self.next }
    }
}

impl<I> Iterator for Batches<I> {
    type Item = Result<Batch<I>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.plan.len() {
            return None;
        }
        let k = self.next;
        let indices = &self.plan[k];
        let decoded = match &self.inline {
            Some(decode) => decode(indices),
            None => self.lanes[k % self.lanes.len()].recv().unwrap_or_else(|_| {
                Err(Error::InvalidArgument(format!(
                    "{}: the loader worker decoding batch {} stopped without a result (it panicked)",
                    self.name,
                    self.first + k
                )))
            }),
        };
        self.next += 1;
        match decoded {
            Ok(items) => Some(Ok(Batch { index: self.first + k, indices: indices.clone(), items })),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl<I> Drop for Batches<I> {
    fn drop(&mut self) {
        self.stop.store(true, AtomicOrdering::Relaxed);
        // Dropping the receivers unblocks workers waiting to hand over a batch.
        self.lanes.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A source from a closure: `from_fn(name, len, fingerprint, |index, rng| ...)`.
pub fn from_fn<I, F>(name: impl Into<String>, len: usize, fingerprint: impl Into<String>, get: F) -> FnSource<F>
where
    I: Send + 'static,
    F: Fn(usize, &mut SplitMix64) -> Result<I> + Send + Sync + 'static,
{
    FnSource { name: name.into(), len, fingerprint: fingerprint.into(), get }
}

/// A [`Source`] made by [`from_fn`].
pub struct FnSource<F> {
    name: String,
    len: usize,
    fingerprint: String,
    get: F,
}

impl<F> std::fmt::Debug for FnSource<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnSource").field("name", &self.name).field("len", &self.len).finish_non_exhaustive()
    }
}

impl<I, F> Source for FnSource<F>
where
    I: Send + 'static,
    F: Fn(usize, &mut SplitMix64) -> Result<I> + Send + Sync + 'static,
{
    type Item = I;
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, index: usize, rng: &mut SplitMix64) -> Result<I> {
        (self.get)(index, rng)
    }
    fn fingerprint(&self) -> Result<String> {
        Ok(self.fingerprint.clone())
    }
}

/// A target that [`Rows`] can hold and fingerprint.
pub trait Target: Clone + Send + Sync + 'static {
    /// Feeds the value's bytes to a hasher.
    fn hash_into(&self, hasher: &mut blake3::Hasher);
}

impl Target for usize {
    fn hash_into(&self, hasher: &mut blake3::Hasher) {
        hasher.update(&(*self as u64).to_le_bytes());
    }
}

impl Target for f32 {
    fn hash_into(&self, hasher: &mut blake3::Hasher) {
        hasher.update(&self.to_le_bytes());
    }
}

impl Target for f64 {
    fn hash_into(&self, hasher: &mut blake3::Hasher) {
        hasher.update(&self.to_le_bytes());
    }
}

impl<T: Target> Target for Vec<T> {
    fn hash_into(&self, hasher: &mut blake3::Hasher) {
        hasher.update(&(self.len() as u64).to_le_bytes());
        for v in self {
            v.hash_into(hasher);
        }
    }
}

/// Preprocessed rows in memory with one target each: the tabular fast path.
///
/// An item is a [`Row`]: a handle on the shared matrix (no copy), whose features a task
/// copies straight into its batch tensor.
#[derive(Debug, Clone)]
pub struct Rows<T: Target> {
    name: String,
    data: Arc<RowData<T>>,
    digest: Arc<OnceLock<String>>,
}

#[derive(Debug)]
struct RowData<T> {
    x: Array2<f32>,
    targets: Vec<T>,
}

/// One row of [`Rows`]: its features and its target.
#[derive(Debug, Clone)]
pub struct Row<T: Target> {
    index: usize,
    data: Arc<RowData<T>>,
}

impl<T: Target> Row<T> {
    /// The row's index in its [`Rows`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The row's features.
    pub fn features(&self) -> &[f32] {
        let cols = self.data.x.ncols();
        // Rows::new keeps the matrix in standard (row-major, contiguous) layout.
        self.data.x.as_slice().map_or(&[], |flat| &flat[self.index * cols..(self.index + 1) * cols])
    }

    /// The row's target.
    pub fn target(&self) -> &T {
        &self.data.targets[self.index]
    }
}

impl<T: Target> Rows<T> {
    /// Pairs feature rows with their targets; `name` is used in error messages ("training").
    pub fn new(name: impl Into<String>, x: Array2<f32>, targets: Vec<T>) -> Result<Self> {
        let name = name.into();
        if x.nrows() != targets.len() {
            return Err(Error::Shape(format!("{name}: {} feature rows but {} targets", x.nrows(), targets.len())));
        }
        if let Some(((row, column), value)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::BadValue {
                source_name: name,
                row: row + 1,
                column: format!("feature {column}"),
                expected: "a finite number".into(),
                found: value.to_string(),
            });
        }
        let x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
        Ok(Self { name, data: Arc::new(RowData { x, targets }), digest: Arc::default() })
    }

    /// The feature matrix, `rows × features`.
    pub fn x(&self) -> &Array2<f32> {
        &self.data.x
    }

    /// The targets, one per row.
    pub fn targets(&self) -> &[T] {
        &self.data.targets
    }
}

impl<T: Target> Source for Rows<T> {
    type Item = Row<T>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> usize {
        self.data.targets.len()
    }

    fn get(&self, index: usize, _rng: &mut SplitMix64) -> Result<Row<T>> {
        if index < self.len() {
            Ok(Row { index, data: Arc::clone(&self.data) })
        } else {
            Err(Error::InvalidArgument(format!("row {index} of {} rows", self.len())))
        }
    }

    /// BLAKE3 of the shape, the features and the targets (computed once).
    fn fingerprint(&self) -> Result<String> {
        Ok(self
            .digest
            .get_or_init(|| {
                let x = &self.data.x;
                let mut hasher = blake3::Hasher::new();
                hasher.update(&(x.nrows() as u64).to_le_bytes());
                hasher.update(&(x.ncols() as u64).to_le_bytes());
                let mut buf = Vec::with_capacity(x.ncols() * 4);
                for row in x.rows() {
                    buf.clear();
                    buf.extend(row.iter().flat_map(|v| v.to_le_bytes()));
                    hasher.update(&buf);
                }
                for y in &self.data.targets {
                    y.hash_into(&mut hasher);
                }
                hasher.finalize().to_hex().to_string()
            })
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(len: usize) -> impl Source<Item = (usize, u64)> {
        from_fn("numbers", len, "n", |index, rng: &mut SplitMix64| Ok((index, rng.next_u64())))
    }

    fn collect<S: Source>(loader: &Loader<S>, epoch: usize, from: usize) -> Vec<Batch<S::Item>> {
        loader.epoch(3, epoch, from).collect::<Result<Vec<_>>>().expect("every batch")
    }

    #[test]
    fn batches_are_identical_for_any_worker_count_and_start() {
        let reference = collect(&Loader::new(numbers(103), 8), 2, 0);
        assert_eq!(reference.len(), 13);
        assert_eq!(reference.last().map(|b| b.items.len()), Some(103 - 12 * 8));
        let mut all: Vec<usize> = reference.iter().flat_map(|b| b.indices.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>(), "every item once");
        for workers in [1, 2, 5, 40] {
            let loader = Loader::new(numbers(103), 8).workers(workers).prefetch(1);
            assert_eq!(collect(&loader, 2, 0), reference, "{workers} workers");
            assert_eq!(collect(&loader, 2, 6), reference[6..], "{workers} workers from batch 6");
        }
        // Another epoch: another order and other draws for the same item.
        let other = collect(&Loader::new(numbers(103), 8), 3, 0);
        assert_ne!(other[0].indices, reference[0].indices);
        let draw = |bs: &[Batch<(usize, u64)>], i: usize| {
            bs.iter().flat_map(|b| b.items.iter()).find(|(index, _)| *index == i).map(|(_, r)| *r)
        };
        assert_ne!(draw(&other, 5), draw(&reference, 5));
    }

    #[test]
    fn orders_are_permutations_that_depend_on_seed_and_epoch_only() {
        assert_eq!(Order::Sequential.indices(5, 1, 1, 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(Order::Shuffle.indices(100, 1, 7, 3), Order::Shuffle.indices(100, 1, 7, 3));
        assert_ne!(Order::Shuffle.indices(100, 1, 7, 3), Order::Shuffle.indices(100, 1, 7, 4));
        assert_ne!(Order::Shuffle.indices(100, 1, 7, 3), Order::Shuffle.indices(100, 1, 8, 3));
        let blocky = Order::BlockShuffle { window: 2 }.indices(103, 10, 7, 1);
        let mut sorted = blocky.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>());
        // With whole blocks only, each run of 20 items (a window of two blocks) holds two whole
        // blocks, and the blocks are not in storage order.
        let windows = Order::BlockShuffle { window: 2 }.indices(100, 10, 7, 1);
        assert_ne!(windows, (0..100).collect::<Vec<_>>());
        for group in windows.chunks(20) {
            let mut blocks: Vec<usize> = group.iter().map(|i| i / 10).collect();
            blocks.sort_unstable();
            blocks.dedup();
            assert_eq!(blocks.len(), 2, "{group:?}");
        }
        assert_ne!(blocky, Order::BlockShuffle { window: 2 }.indices(103, 10, 7, 2));
    }

    #[test]
    fn a_failing_item_is_an_error_naming_it_and_ends_the_epoch() {
        for workers in [0, 1, 3] {
            let source = from_fn("flaky", 50, "f", |index, _: &mut SplitMix64| {
                if index == 31 { Err(Error::InvalidArgument("corrupt image".into())) } else { Ok(index) }
            });
            let loader = Loader::new(source, 4).order(Order::Sequential).workers(workers);
            let results: Vec<_> = loader.epoch(1, 1, 0).collect();
            assert_eq!(results.len(), 8, "{workers} workers: stops at batch 7, which holds item 31");
            let err = results.last().and_then(|r| r.as_ref().err()).map(ToString::to_string).unwrap_or_default();
            assert!(err.contains("flaky") && err.contains("item 31") && err.contains("corrupt image"), "{err}");
        }
    }

    #[test]
    fn a_panicking_worker_is_an_error_not_a_hang() {
        let source = from_fn("panicky", 20, "p", |index, _: &mut SplitMix64| {
            assert!(index != 9, "decoder bug");
            Ok(index)
        });
        let loader = Loader::new(source, 5).order(Order::Sequential).workers(2);
        let results: Vec<_> = loader.epoch(1, 1, 0).collect();
        assert!(results.iter().any(Result::is_err), "{} results", results.len());
    }

    #[test]
    fn dropping_an_epoch_early_stops_the_workers() {
        let loader = Loader::new(numbers(10_000), 4).workers(3).prefetch(1);
        let mut batches = loader.epoch(1, 1, 0);
        assert!(batches.next().is_some_and(|b| b.is_ok()));
        drop(batches); // joins the workers; the test would hang otherwise
    }

    #[test]
    fn rows_check_their_values_and_fingerprint_their_content() {
        let x = Array2::from_shape_fn((4, 2), |(r, c)| (r * 2 + c) as f32);
        let rows = Rows::new("training", x.clone(), vec![0usize, 1, 0, 1]).expect("rows");
        let row = rows.get(2, &mut SplitMix64::new(0)).expect("row 2");
        assert_eq!((row.index(), row.features(), *row.target()), (2, &[4.0, 5.0][..], 0));
        // A column-major matrix is stored row-major.
        let col_major = Array2::from_shape_fn((2, 4), |(c, r)| (r * 2 + c) as f32).reversed_axes();
        assert!(!col_major.is_standard_layout());
        let rows_f = Rows::new("f", col_major, vec![0usize; 4]).expect("rows");
        assert_eq!(rows_f.get(3, &mut SplitMix64::new(0)).expect("row").features(), &[6.0, 7.0]);
        assert!(rows.get(4, &mut SplitMix64::new(0)).is_err());
        let same = Rows::new("training", x.clone(), vec![0usize, 1, 0, 1]).expect("rows");
        let other = Rows::new("training", x.clone(), vec![0usize, 1, 1, 1]).expect("rows");
        assert_eq!(rows.fingerprint().ok(), same.fingerprint().ok());
        assert_ne!(rows.fingerprint().ok(), other.fingerprint().ok());
        let mut bad = x;
        bad[[2, 1]] = f32::NAN;
        let err = Rows::new("training", bad, vec![0usize; 4]).expect_err("NaN").to_string();
        assert!(err.contains("training") && err.contains("row 3") && err.contains("feature 1"), "{err}");
        let err = Rows::new("val", Array2::zeros((3, 1)), vec![1.0f32]).expect_err("lengths").to_string();
        assert!(err.contains("3 feature rows but 1 targets"), "{err}");
    }
}
