//! Multi-label classification with the built-in architectures: [`MultiLabelTask`], where each
//! row may carry any number of labels.

use burn::nn::loss::BinaryCrossEntropyLossConfig;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln_data::Row;

use crate::eval::roc_auc;
use crate::model::{Model, ModelConfig};
use crate::task::{Step, Task, Totals};
use crate::{Error, Result};

/// A built-in architecture with one output per label (`classes` = the number of labels),
/// trained with binary cross-entropy on the logits, over rows whose target is a 0/1 vector
/// (`Rows<Vec<f32>>`). A label is predicted when its probability is at least 0.5.
///
/// Reports `accuracy` (the share of correct label decisions), `f1_<label>` for each label and
/// their mean `macro_f1`; on validation also `auc_<label>` (ROC-AUC of the probabilities; NaN
/// for a label with one class only in the validation set) and `macro_auc` (the mean of the
/// defined ones).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiLabelTask {
    arch: ModelConfig,
    labels: Vec<String>,
}

impl MultiLabelTask {
    /// `arch` with one output per name in `labels` (names as they appear in metric names:
    /// letters, digits, `_`, `-`, `.`).
    pub fn new(arch: ModelConfig, labels: Vec<String>) -> Result<Self> {
        arch.validate_outputs(labels.len())?;
        if let Some(bad) = labels
            .iter()
            .find(|l| l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(Error::Config(format!(
                "label name {bad:?} cannot be part of a metric name (use letters, digits, '_', '-', '.')"
            )));
        }
        Ok(Self { arch, labels })
    }

    /// The architecture.
    pub fn arch(&self) -> &ModelConfig {
        &self.arch
    }

    /// The label names, in output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
}

impl Task for MultiLabelTask {
    type Item = Row<Vec<f32>>;
    type Model<B: Backend> = Model<B>;
    type Batch<B: Backend> = (Tensor<B, 2>, Tensor<B, 2>);

    /// The architecture's fields with `task` and `labels`.
    fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.arch).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("task".into(), "multi_label".into());
            map.insert("labels".into(), self.labels.clone().into());
        }
        v
    }

    fn init<B: Backend>(&self, device: &B::Device) -> Model<B> {
        self.arch.init(device)
    }

    fn collate<B: Backend>(&self, items: Vec<Row<Vec<f32>>>, device: &B::Device) -> Result<Self::Batch<B>> {
        let labels = self.labels.len();
        let x = crate::classifier::features::<B, Vec<f32>>(&items, &self.arch, device)?;
        let mut y = Vec::with_capacity(items.len() * labels);
        for row in &items {
            let target = row.target();
            if target.len() != labels {
                return Err(Error::Shape(format!(
                    "item {}: {} label values, the task has {labels} labels",
                    row.index(),
                    target.len()
                )));
            }
            if let Some((label, v)) = target.iter().enumerate().find(|(_, v)| **v != 0.0 && **v != 1.0) {
                return Err(Error::Shape(format!(
                    "item {}, label `{}`: expected 0 or 1, found {v}",
                    row.index(),
                    self.labels[label]
                )));
            }
            y.extend_from_slice(target);
        }
        Ok((x, Tensor::from_data(TensorData::new(y, [items.len(), labels]), device)))
    }

    fn step<B: Backend>(&self, model: &Model<B>, (x, y): Self::Batch<B>) -> Result<Step<B>> {
        let [rows, labels] = y.dims();
        let logits = model.forward(x);
        let loss = BinaryCrossEntropyLossConfig::new()
            .with_logits(true)
            .init(&logits.device())
            .forward(logits.clone(), y.clone().int());
        let scores = sigmoid(logits.detach());
        let predicted = scores.clone().greater_equal_elem(0.5).float();
        let correct = predicted.clone().equal(y.clone()).float();
        let tp = (predicted.clone() * y.clone()).sum_dim(0).reshape([labels]);
        let fp = (predicted.clone() * (y.clone().neg() + 1.0)).sum_dim(0).reshape([labels]);
        let fn_ = ((predicted.neg() + 1.0) * y.clone()).sum_dim(0).reshape([labels]);
        let mut step = Step::new(loss, rows).sum("accuracy", correct.div_scalar(labels as f32));
        for (i, name) in self.labels.iter().enumerate() {
            step = step
                .sum(format!("tp_{name}"), tp.clone().narrow(0, i, 1))
                .sum(format!("fp_{name}"), fp.clone().narrow(0, i, 1))
                .sum(format!("fn_{name}"), fn_.clone().narrow(0, i, 1));
        }
        Ok(step.values("score", scores).values("label", y))
    }

    fn metrics(&self, totals: &Totals) -> Result<Vec<(String, f64)>> {
        let mut metrics = vec![("accuracy".to_string(), totals.mean("accuracy"))];
        let mut f1s = Vec::with_capacity(self.labels.len());
        for name in &self.labels {
            let (tp, fp, fn_) = (
                totals.sum(&format!("tp_{name}")),
                totals.sum(&format!("fp_{name}")),
                totals.sum(&format!("fn_{name}")),
            );
            // F1 of a label never present nor predicted is 0 (scikit-learn's zero_division=0).
            let f1 = if tp > 0.0 { 2.0 * tp / (2.0 * tp + fp + fn_) } else { 0.0 };
            metrics.push((format!("f1_{name}"), f1));
            f1s.push(f1);
        }
        metrics.push(("macro_f1".into(), f1s.iter().sum::<f64>() / f1s.len().max(1) as f64));
        let (scores, truth) = (totals.values("score"), totals.values("label"));
        if !scores.is_empty() {
            let labels = self.labels.len();
            let mut aucs = Vec::new();
            for (i, name) in self.labels.iter().enumerate() {
                let positive: Vec<bool> = truth.iter().skip(i).step_by(labels).map(|v| *v > 0.5).collect();
                let s: Vec<f64> = scores.iter().skip(i).step_by(labels).map(|v| f64::from(*v)).collect();
                let auc = roc_auc(&positive, &s);
                aucs.extend(auc);
                metrics.push((format!("auc_{name}"), auc.unwrap_or(f64::NAN)));
            }
            let macro_auc = if aucs.is_empty() { f64::NAN } else { aucs.iter().sum::<f64>() / aucs.len() as f64 };
            metrics.push(("macro_auc".into(), macro_auc));
        }
        Ok(metrics)
    }

    /// At least 1024 rows: validation of a tabular model is cheap per row.
    fn valid_batch_size(&self, train_batch_size: usize) -> usize {
        train_batch_size.max(1024)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use kiln_data::{Rows, Source, SplitMix64};
    use ndarray::Array2;

    use super::*;

    #[test]
    fn label_values_and_names_are_checked() {
        let task = MultiLabelTask::new(ModelConfig::mlp(2, &[4], 2), vec!["cat".into(), "dog".into()]).unwrap();
        let rows = Rows::new("training", Array2::zeros((2, 2)), vec![vec![1.0, 0.0], vec![1.0, 0.5]]).unwrap();
        let items = (0..2).map(|i| rows.get(i, &mut SplitMix64::new(0)).unwrap()).collect();
        let err = task.collate::<Flex>(items, &Default::default()).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("item 1, label `dog`: expected 0 or 1, found 0.5"), "{err}");
        let err = MultiLabelTask::new(ModelConfig::mlp(2, &[4], 2), vec!["a b".into(), "c".into()]).unwrap_err();
        assert!(err.to_string().contains("\"a b\""), "{err}");
        let err = MultiLabelTask::new(ModelConfig::mlp(2, &[4], 3), vec!["a".into(), "c".into()]).unwrap_err();
        assert!(err.to_string().contains("2 output(s)"), "{err}");
    }

    #[test]
    fn f1_and_auc_follow_their_definitions() {
        let task = MultiLabelTask::new(ModelConfig::mlp(2, &[4], 2), vec!["a".into(), "b".into()]).unwrap();
        let mut totals = Totals { rows: 4, ..Totals::default() };
        for (k, v) in [("accuracy", 3.0), ("tp_a", 2.0), ("fp_a", 1.0), ("fn_a", 1.0), ("tp_b", 0.0), ("fp_b", 1.0)] {
            totals.sums.insert(k.into(), v);
        }
        // Rows × labels, row-major: label a's scores 0.9, 0.2, 0.7, 0.4 for truths 1, 0, 1, 0.
        totals.values.insert("score".into(), vec![0.9, 0.1, 0.2, 0.3, 0.7, 0.2, 0.4, 0.6]);
        totals.values.insert("label".into(), vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        let m: std::collections::BTreeMap<String, f64> = task.metrics(&totals).unwrap().into_iter().collect();
        assert_eq!(m["accuracy"], 0.75);
        assert!((m["f1_a"] - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m["f1_b"], 0.0);
        assert!((m["macro_f1"] - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(m["auc_a"], 1.0);
        assert!(m["auc_b"].is_nan(), "label b has no positive row");
        assert_eq!(m["macro_auc"], 1.0);
    }
}
