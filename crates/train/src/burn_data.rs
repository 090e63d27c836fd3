//! burn's datasets on kiln's loop: [`BurnDataset`] makes any `burn::data::dataset::Dataset`
//! (the trait of the `burn-dataset` crate, which burn re-exports with its `dataset` feature) a
//! kiln-data [`Source`], so a dataset written for burn-train trains through [`crate::fit`] with
//! kiln's ordered loader, checkpoints and exact resume.
//!
//! A burn dataset knows neither a fingerprint nor kiln's per-item generator: the caller names
//! the data's identity (a file hash, a version string) for the resume check, and augmentation
//! that must replay exactly on resume belongs in a [`kiln_data::from_fn`] source (which gets
//! the generator) wrapping the dataset, not in a burn `ShuffledDataset` or a transform with a
//! generator of its own.
//!
//! ```
//! use burn_dataset::{Dataset, InMemDataset};
//! use kiln_data::{Loader, Source};
//! use kiln_train::BurnDataset;
//!
//! # fn main() -> kiln_data::Result<()> {
//! let squares = InMemDataset::new((0..10u32).map(|i| (i, i * i)).collect());
//! let source = BurnDataset::new("squares", squares, "squares-v1");
//! assert_eq!(source.len(), 10);
//! let batches: Vec<_> = Loader::new(source, 4).epoch(7, 1, 0).collect::<kiln_data::Result<_>>()?;
//! assert_eq!(batches.iter().map(|b| b.items.len()).collect::<Vec<_>>(), [4, 4, 2]);
//! # Ok(())
//! # }
//! ```

use std::marker::PhantomData;

use burn_dataset::Dataset;
use kiln_data::{Source, SplitMix64};

/// A burn `Dataset<I>` as a kiln-data [`Source`] of `I`, with the identity that stands for its
/// content in checkpoints. Augmentation that must replay on resume belongs in a
/// [`kiln_data::from_fn`] source around it (which gets kiln's per-item generator).
pub struct BurnDataset<D, I> {
    name: String,
    dataset: D,
    identity: String,
    item: PhantomData<fn() -> I>,
}

impl<D: Dataset<I>, I> BurnDataset<D, I> {
    /// `dataset` under `name` (for error messages), with `identity` standing for its content in
    /// checkpoints (a content hash or a version: a resumed training refuses other data; the
    /// dataset's length is added to it).
    pub fn new(name: impl Into<String>, dataset: D, identity: impl Into<String>) -> Self {
        Self { name: name.into(), dataset, identity: identity.into(), item: PhantomData }
    }

    /// The wrapped dataset.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }
}

impl<D, I> std::fmt::Debug for BurnDataset<D, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnDataset").field("name", &self.name).field("identity", &self.identity).finish()
    }
}

impl<D, I> Source for BurnDataset<D, I>
where
    D: Dataset<I> + 'static,
    I: Send + 'static,
{
    type Item = I;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> usize {
        self.dataset.len()
    }

    /// The dataset's item; `None` from the dataset (an index it does not hold) is an error
    /// naming the item, never a skipped one.
    fn get(&self, index: usize, _rng: &mut SplitMix64) -> kiln_data::Result<I> {
        self.dataset.get(index).ok_or_else(|| kiln_data::Error::Item {
            source_name: self.name.clone(),
            index,
            message: format!("the burn dataset has no item {index} although its length is {}", self.dataset.len()),
        })
    }

    /// The identity given to [`BurnDataset::new`] with the dataset's length.
    fn fingerprint(&self) -> kiln_data::Result<String> {
        Ok(format!("burn-dataset:{}:{}", self.identity, self.dataset.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset that claims more items than it has.
    struct Short;

    impl Dataset<u8> for Short {
        fn get(&self, index: usize) -> Option<u8> {
            (index < 2).then_some(index as u8)
        }
        fn len(&self) -> usize {
            3
        }
    }

    #[test]
    fn a_missing_item_is_an_error_naming_it_and_the_identity_includes_the_length() {
        let source = BurnDataset::new("short", Short, "v1");
        let mut rng = SplitMix64::new(0);
        assert_eq!(source.get(1, &mut rng).ok(), Some(1));
        let err = source.get(2, &mut rng).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("short") && err.contains("item 2"), "{err}");
        assert_eq!(source.fingerprint().ok().as_deref(), Some("burn-dataset:v1:3"));
    }
}
