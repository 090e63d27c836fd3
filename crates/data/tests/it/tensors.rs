//! Matrices, mini-batches and the weighted sampler.

use kiln_data::tensors::{balanced_class_weights, gather};
use kiln_data::{WeightedSampler, epoch_batches, to_f32};
use ndarray::array;

#[test]
fn f32_conversion_refuses_what_f32_cannot_hold() {
    let names = vec!["a".to_string(), "b".to_string()];
    let x = array![[1.0, 2.5], [3.0, -4.0]];
    assert_eq!(to_f32(x.view(), "t.csv", &names).unwrap(), array![[1.0f32, 2.5], [3.0, -4.0]]);
    let err = to_f32(array![[1.0, 2.0], [f64::NAN, 1.0]].view(), "t.csv", &names).unwrap_err().to_string();
    assert!(err.contains("t.csv") && err.contains("row 2") && err.contains("`a`"), "{err}");
    assert!(to_f32(array![[1e300, 0.0]].view(), "t.csv", &names).is_err());
}

#[test]
fn batches_cover_each_row_once_per_epoch_in_a_seeded_order() {
    let e0 = epoch_batches(103, 10, 5, 0).unwrap();
    assert_eq!(e0.len(), 11);
    assert_eq!(e0.last().unwrap().len(), 3);
    let mut all: Vec<usize> = e0.concat();
    all.sort_unstable();
    assert_eq!(all, (0..103).collect::<Vec<_>>());
    assert_eq!(e0, epoch_batches(103, 10, 5, 0).unwrap(), "same seed and epoch, same order");
    assert_ne!(e0, epoch_batches(103, 10, 5, 1).unwrap(), "a new epoch reshuffles");
    assert!(epoch_batches(10, 0, 0, 0).is_err());
    let x = array![[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]];
    let (xb, yb) = gather(&x, &[10, 20, 30], &[2, 0]).unwrap();
    assert_eq!((xb, yb), (array![[3.0, 3.0], [1.0, 1.0]], vec![30, 10]));
    assert!(gather(&x, &[10, 20, 30], &[3]).is_err(), "an index past the end is an error, not a panic");
    assert!(gather(&x, &[10, 20], &[0]).is_err());
}

#[test]
fn the_balanced_sampler_evens_out_classes() {
    // 90% class 0, 9% class 1, 1% class 2.
    let labels: Vec<u8> = (0..10_000)
        .map(|i| {
            if i % 100 == 0 {
                2
            } else if i % 10 == 0 {
                1
            } else {
                0
            }
        })
        .collect();
    let sampler = WeightedSampler::balanced(&labels).unwrap();
    let draws = sampler.sample(60_000, 11);
    let mut counts = [0f64; 3];
    for d in &draws {
        counts[labels[*d] as usize] += 1.0;
    }
    // Chi-square goodness of fit against 1/3 each, 2 degrees of freedom: the 0.1% critical
    // value is 13.82; a sampler that ignored the weights would score in the tens of thousands.
    let expected = 20_000.0;
    let chi2: f64 = counts.iter().map(|c| (c - expected).powi(2) / expected).sum();
    assert!(chi2 < 13.82, "counts {counts:?}, chi2 {chi2}");
    // Within class 2 (100 rows), every row gets drawn: replacement, not a fixed subset.
    let rare: std::collections::BTreeSet<usize> = draws.iter().copied().filter(|d| labels[*d] == 2).collect();
    assert_eq!(rare.len(), 100);
    assert_eq!(draws, sampler.sample(60_000, 11), "seeded");
    assert!(WeightedSampler::new(&[1.0, -1.0]).is_err());
    assert!(WeightedSampler::new(&[0.0, 0.0]).is_err());
    let w = WeightedSampler::new(&[0.0, 1.0, 0.0]).unwrap();
    assert!(w.sample(1000, 3).iter().all(|i| *i == 1), "zero weights are never drawn");
}

#[test]
fn balanced_class_weights_match_scikit_learn() {
    // compute_class_weight("balanced", classes=[0, 1, 2], y=[0, 0, 0, 1]) = [4/9, 4/3, 0] (2 unseen).
    let w = balanced_class_weights(&[0, 0, 0, 1], 3).unwrap();
    assert!(balanced_class_weights(&[0, 0, 5], 2).unwrap_err().to_string().contains("row 3"));
    assert!((w[0] - 4.0 / 9.0).abs() < 1e-6 && (w[1] - 4.0 / 3.0).abs() < 1e-6 && w[2] == 0.0, "{w}");
}
