//! Fitted preprocessing that travels with a model.
//!
//! Preprocessing is fitted once, on training rows only, and then stored inside the model
//! package, so serving applies exactly the transform that training saw.

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Centres each feature on its training mean and divides by its training standard deviation
/// (population, `ddof = 0`, as scikit-learn's `StandardScaler`). A feature that is constant in
/// the training rows gets a scale of 1, so it maps to 0 instead of dividing by zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    /// The features, in column order.
    pub features: Vec<String>,
    /// Per-feature mean of the training rows.
    pub mean: Vec<f64>,
    /// Per-feature divisor: the standard deviation, or 1 for constant features.
    pub scale: Vec<f64>,
    /// How many rows the scaler was fitted on.
    pub fitted_rows: usize,
}

impl StandardScaler {
    /// Fits on `x` (`rows × features`), whose columns are named by `features`.
    pub fn fit(x: ArrayView2<'_, f64>, features: &[String]) -> Result<Self> {
        if x.ncols() != features.len() {
            return Err(Error::Shape(format!(
                "{} feature names for a matrix with {} columns",
                features.len(),
                x.ncols()
            )));
        }
        if x.nrows() == 0 {
            return Err(Error::InvalidArgument("cannot fit a scaler on zero rows".into()));
        }
        let mean = x.mean_axis(Axis(0)).map(|m| m.to_vec()).unwrap_or_default();
        let std = x.std_axis(Axis(0), 0.0);
        let scale = std.iter().map(|s| if *s > f64::EPSILON * 16.0 { *s } else { 1.0 }).collect();
        Ok(Self { features: features.to_vec(), mean, scale, fitted_rows: x.nrows() })
    }

    /// Transforms `x` in place.
    pub fn transform(&self, x: &mut Array2<f64>) -> Result<()> {
        if x.ncols() != self.features.len() {
            return Err(Error::Shape(format!(
                "the scaler was fitted on {} features, the input has {} columns",
                self.features.len(),
                x.ncols()
            )));
        }
        for mut row in x.rows_mut() {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        Ok(())
    }

    /// Transforms one row in place.
    pub fn transform_row(&self, row: &mut [f64]) -> Result<()> {
        if row.len() != self.features.len() {
            return Err(Error::Shape(format!(
                "the scaler was fitted on {} features, the row has {} values",
                self.features.len(),
                row.len()
            )));
        }
        for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
            *v = (*v - m) / s;
        }
        Ok(())
    }
}

/// Maps class labels to indices `0..n` and back. Classes are sorted, numerically when every
/// label is a number ("2" before "10"), otherwise as text. The default has no classes (a
/// regression's package).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LabelEncoder {
    /// The classes; index *i* is class *i*.
    pub classes: Vec<String>,
}

impl LabelEncoder {
    /// Learns the classes present in `labels`.
    pub fn fit(labels: &[String]) -> Self {
        let mut classes: Vec<String> = labels.to_vec();
        classes.sort();
        classes.dedup();
        if classes.iter().all(|c| c.parse::<f64>().is_ok()) {
            classes.sort_by(|a, b| {
                let (a, b) = (a.parse::<f64>().unwrap_or(0.0), b.parse::<f64>().unwrap_or(0.0));
                a.total_cmp(&b)
            });
        }
        Self { classes }
    }

    /// Uses the given classes in the given order.
    pub fn from_classes(classes: Vec<String>) -> Self {
        Self { classes }
    }

    /// The index of each label. A label unknown to the encoder is an error naming its row.
    pub fn encode(&self, labels: &[String]) -> Result<Vec<usize>> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                self.classes.iter().position(|c| c == l).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "row {}: label {l:?} is not one of the known classes ({})",
                        i + 1,
                        self.classes.join(", ")
                    ))
                })
            })
            .collect()
    }

    /// The label of class `index`.
    pub fn decode(&self, index: usize) -> Option<&str> {
        self.classes.get(index).map(String::as_str)
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    #[test]
    fn scaler_matches_hand_computation_and_handles_constant_columns() {
        let x = array![[1.0, 5.0], [3.0, 5.0]];
        let names = vec!["a".to_string(), "b".to_string()];
        let s = StandardScaler::fit(x.view(), &names).unwrap();
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.scale, vec![1.0, 1.0]);
        let mut y = x.clone();
        s.transform(&mut y).unwrap();
        assert_eq!(y, array![[-1.0, 0.0], [1.0, 0.0]]);
        let mut row = [5.0, 7.0];
        s.transform_row(&mut row).unwrap();
        assert_eq!(row, [3.0, 2.0]);
        assert!(s.transform_row(&mut [1.0]).is_err());
    }

    #[test]
    fn label_encoder_sorts_numbers_numerically() {
        let labels: Vec<String> = ["10", "2", "1", "2"].map(String::from).to_vec();
        let enc = LabelEncoder::fit(&labels);
        assert_eq!(enc.classes, vec!["1", "2", "10"]);
        assert_eq!(enc.encode(&labels).unwrap(), vec![2, 1, 0, 1]);
        assert!(enc.encode(&["3".to_string()]).is_err());
    }
}
