//! Classification metrics.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class label.
    pub label: String,
    /// Of the rows predicted as this class, the fraction that are.
    pub precision: f64,
    /// Of the rows of this class, the fraction predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Rows of this class.
    pub support: u64,
}

/// Accuracy, per-class and macro-averaged metrics, and the confusion matrix.
///
/// Precision of a class that is never predicted is 0, and so is its F1 (scikit-learn's
/// `zero_division=0`), so macro-F1 matches `sklearn.metrics.f1_score(average="macro")`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Fraction of rows predicted correctly.
    pub accuracy: f64,
    /// Unweighted mean of per-class F1.
    pub macro_f1: f64,
    /// Unweighted mean of per-class precision.
    pub macro_precision: f64,
    /// Unweighted mean of per-class recall.
    pub macro_recall: f64,
    /// Per-class metrics, in class order.
    pub classes: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl ClassificationReport {
    /// Compares true and predicted class indices; `labels[i]` names class `i`.
    pub fn compute(truth: &[usize], predicted: &[usize], labels: &[String]) -> Result<Self> {
        if truth.len() != predicted.len() {
            return Err(Error::Shape(format!("{} true labels but {} predictions", truth.len(), predicted.len())));
        }
        if truth.is_empty() {
            return Err(Error::Shape("cannot evaluate zero rows".into()));
        }
        let k = labels.len();
        let mut confusion = vec![vec![0u64; k]; k];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t >= k || p >= k {
                return Err(Error::Shape(format!("class index {} out of range for {k} classes", t.max(p))));
            }
            confusion[t][p] += 1;
        }
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let ratio = |num: u64, den: u64| if den == 0 { 0.0 } else { num as f64 / den as f64 };
        let classes: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = confusion[c][c];
                let predicted_c: u64 = (0..k).map(|t| confusion[t][c]).sum();
                let support: u64 = confusion[c].iter().sum();
                let precision = ratio(tp, predicted_c);
                let recall = ratio(tp, support);
                let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
                ClassMetrics { label: labels[c].clone(), precision, recall, f1, support }
            })
            .collect();
        let mean = |f: fn(&ClassMetrics) -> f64| classes.iter().map(f).sum::<f64>() / k as f64;
        Ok(Self {
            accuracy: ratio(correct, truth.len() as u64),
            macro_f1: mean(|c| c.f1),
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            confusion,
            classes,
        })
    }
}

impl fmt::Display for ClassificationReport {
    /// A text report: headline metrics, then the confusion matrix (rows: true, columns: predicted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "accuracy {:.4}  macro-F1 {:.4}  macro-precision {:.4}  macro-recall {:.4}",
            self.accuracy, self.macro_f1, self.macro_precision, self.macro_recall
        )?;
        let width = self.classes.iter().map(|c| c.label.len()).max().unwrap_or(1).max(4);
        write!(f, "{:>width$} |", "true")?;
        for c in &self.classes {
            write!(f, " {:>width$}", c.label)?;
        }
        writeln!(f)?;
        for (c, row) in self.classes.iter().zip(&self.confusion) {
            write!(f, "{:>width$} |", c.label)?;
            for n in row {
                write!(f, " {n:>width$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn() {
        // sklearn.metrics on y_true=[0,0,1,1,2,2], y_pred=[0,1,1,1,2,0]:
        // accuracy 0.6667, f1_score(average='macro') = 0.6556, confusion [[1,1,0],[0,2,0],[1,0,1]].
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r = ClassificationReport::compute(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 2, 0], &labels).unwrap();
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((r.macro_f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(r.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
        assert_eq!(r.classes[1].precision, 2.0 / 3.0);
    }

    #[test]
    fn a_class_never_predicted_scores_zero() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let r = ClassificationReport::compute(&[0, 1], &[0, 0], &labels).unwrap();
        assert_eq!(r.classes[1].f1, 0.0);
        assert!(ClassificationReport::compute(&[0], &[0, 1], &labels).is_err());
    }
}
