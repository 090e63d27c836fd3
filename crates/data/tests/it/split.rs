use std::collections::{BTreeMap, BTreeSet};

use kiln_data::{Dataset, SplitFractions, stratified_split};

use crate::data_file;

fn counts(labels: &[String], rows: &[usize]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in rows {
        *out.entry(labels[*r].clone()).or_default() += 1;
    }
    out
}

#[test]
fn digits_split_is_stratified_disjoint_and_complete() {
    let data = Dataset::load_csv(data_file("digits.csv")).unwrap();
    let labels = data.to_strings("label").unwrap();
    let split = stratified_split(&labels, SplitFractions::default(), 42).unwrap();

    let (train, val, test): (BTreeSet<usize>, BTreeSet<usize>, BTreeSet<usize>) = (
        split.train.iter().copied().collect(),
        split.val.iter().copied().collect(),
        split.test.iter().copied().collect(),
    );
    assert!(train.is_disjoint(&val) && train.is_disjoint(&test) && val.is_disjoint(&test));
    assert_eq!(train.len() + val.len() + test.len(), 1797);
    assert_eq!(split.len(), 1797);

    let all = counts(&labels, &(0..labels.len()).collect::<Vec<_>>());
    for (part, fraction) in [(&split.train, 0.7), (&split.val, 0.15), (&split.test, 0.15)] {
        let got = counts(&labels, part);
        for (class, n) in &all {
            let want = *n as f64 * fraction;
            let have = got.get(class).copied().unwrap_or(0) as f64;
            assert!((have - want).abs() <= 1.0, "class {class}: {have} rows, expected about {want}");
        }
    }
}

#[test]
fn the_split_depends_only_on_labels_seed_and_fractions() {
    let labels: Vec<String> = (0..500).map(|i| ["a", "b", "c", "d"][i % 4].to_string()).collect();
    let f = SplitFractions::new(0.8, 0.1, 0.1).unwrap();
    let a = stratified_split(&labels, f, 7).unwrap();
    assert_eq!(a, stratified_split(&labels, f, 7).unwrap());
    assert_ne!(a, stratified_split(&labels, f, 8).unwrap());
    // Fixed output for a fixed seed, computed by an independent Python implementation of the
    // same algorithm: a change here breaks the reproducibility of every recorded split.
    assert_eq!((a.train.len(), a.val.len(), a.test.len()), (400, 52, 48));
    assert_eq!(&a.test[..5], &[8, 23, 39, 42, 44]);
}
