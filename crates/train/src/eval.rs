//! Classification metrics.

use std::fmt;

use ndarray::ArrayView2;
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
    /// Mean of per-class F1 weighted by support (scikit-learn's `average="weighted"`).
    #[serde(default)]
    pub weighted_f1: f64,
    /// Support-weighted mean of per-class precision.
    #[serde(default)]
    pub weighted_precision: f64,
    /// Support-weighted mean of per-class recall.
    #[serde(default)]
    pub weighted_recall: f64,
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
        let n = truth.len() as f64;
        let weighted = |f: fn(&ClassMetrics) -> f64| classes.iter().map(|c| f(c) * c.support as f64).sum::<f64>() / n;
        Ok(Self {
            accuracy: ratio(correct, truth.len() as u64),
            macro_f1: mean(|c| c.f1),
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            weighted_f1: weighted(|c| c.f1),
            weighted_precision: weighted(|c| c.precision),
            weighted_recall: weighted(|c| c.recall),
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

/// Mean negative log-likelihood of the true class (scikit-learn's `log_loss`): probabilities
/// are clipped to `[eps, 1 - eps]` with `eps` = `f64::EPSILON`.
pub fn log_loss(truth: &[usize], probabilities: ArrayView2<'_, f64>) -> Result<f64> {
    check_probabilities(truth, probabilities)?;
    let eps = f64::EPSILON;
    let total: f64 = truth.iter().enumerate().map(|(r, &t)| -probabilities[[r, t]].clamp(eps, 1.0 - eps).ln()).sum();
    Ok(total / truth.len() as f64)
}

fn check_probabilities(truth: &[usize], probabilities: ArrayView2<'_, f64>) -> Result<()> {
    if truth.len() != probabilities.nrows() {
        return Err(Error::Shape(format!(
            "{} true labels but {} rows of probabilities",
            truth.len(),
            probabilities.nrows()
        )));
    }
    if truth.is_empty() {
        return Err(Error::Shape("cannot evaluate zero rows".into()));
    }
    if let Some((r, t)) = truth.iter().enumerate().find(|(_, t)| **t >= probabilities.ncols()) {
        return Err(Error::Shape(format!("row {}: class index {t} but {} classes", r + 1, probabilities.ncols())));
    }
    if let Some(((r, c), p)) = probabilities.indexed_iter().find(|(_, p)| !p.is_finite() || **p < 0.0) {
        return Err(Error::Shape(format!("row {}, class {c}: probability {p}", r + 1)));
    }
    Ok(())
}

/// Area under the ROC curve of `scores` for the rows where `positive` is true: the chance a
/// random positive scores above a random negative, ties counting half (equal to scikit-learn's
/// trapezoidal `roc_auc_score`). `None` when one of the two groups is empty.
pub fn roc_auc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 || positive.len() != scores.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    // Average ranks (1-based) over ties, summed over the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|r| positive[**r]).count() as f64 * average;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// ROC-AUC of a classifier: binary (the second class's probability), or one-vs-rest per class
/// with macro and support-weighted means (scikit-learn's `multi_class="ovr"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocAuc {
    /// Per class, one-vs-rest (`None` for a class absent from, or the only class in, the truth).
    pub per_class: Vec<Option<f64>>,
    /// Binary: the AUC of class 1; otherwise the mean over classes.
    pub macro_auc: Option<f64>,
    /// The mean weighted by class support (binary: the same as `macro_auc`).
    pub weighted_auc: Option<f64>,
}

/// See [`RocAuc`].
pub fn roc_auc_ovr(truth: &[usize], probabilities: ArrayView2<'_, f64>) -> Result<RocAuc> {
    check_probabilities(truth, probabilities)?;
    let k = probabilities.ncols();
    let per_class: Vec<Option<f64>> = (0..k)
        .map(|c| {
            let positive: Vec<bool> = truth.iter().map(|t| *t == c).collect();
            roc_auc(&positive, &probabilities.column(c).to_vec())
        })
        .collect();
    if k == 2 {
        return Ok(RocAuc { macro_auc: per_class[1], weighted_auc: per_class[1], per_class });
    }
    let all: Option<Vec<f64>> = per_class.iter().copied().collect();
    let (macro_auc, weighted_auc) = match all {
        Some(aucs) => {
            let support: Vec<f64> = (0..k).map(|c| truth.iter().filter(|t| **t == c).count() as f64).collect();
            let n: f64 = support.iter().sum();
            (
                Some(aucs.iter().sum::<f64>() / k as f64),
                Some(aucs.iter().zip(&support).map(|(a, s)| a * s).sum::<f64>() / n),
            )
        }
        None => (None, None),
    };
    Ok(RocAuc { per_class, macro_auc, weighted_auc })
}

/// One confidence bin of a reliability diagram: rows whose top probability falls in
/// `(lower, upper]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// The bin's lower edge (exclusive, except 0 for the first bin).
    pub lower: f64,
    /// The bin's upper edge (inclusive).
    pub upper: f64,
    /// Rows in the bin.
    pub count: usize,
    /// Fraction of them predicted correctly (0 for an empty bin).
    pub accuracy: f64,
    /// Their mean top probability (0 for an empty bin).
    pub confidence: f64,
}

/// Rows binned by confidence (their top probability) into `bins` equal-width bins over
/// [0, 1], with each bin's accuracy and mean confidence: a reliability diagram.
pub fn calibration_bins(
    truth: &[usize],
    probabilities: ArrayView2<'_, f64>,
    bins: usize,
) -> Result<Vec<CalibrationBin>> {
    check_probabilities(truth, probabilities)?;
    if bins == 0 {
        return Err(Error::Shape("calibration needs at least one bin".into()));
    }
    let mut count = vec![0usize; bins];
    let mut correct = vec![0usize; bins];
    let mut confidence = vec![0.0f64; bins];
    for (r, &t) in truth.iter().enumerate() {
        let row = probabilities.row(r);
        let (best, p) =
            row.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, p)| if *p > b.1 { (i, *p) } else { b });
        // Bins are (lo, hi]; a confidence of 0 goes to the first.
        let bin = ((p * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[bin] += 1;
        correct[bin] += usize::from(best == t);
        confidence[bin] += p;
    }
    Ok((0..bins)
        .map(|b| {
            let n = count[b].max(1) as f64;
            CalibrationBin {
                lower: b as f64 / bins as f64,
                upper: (b + 1) as f64 / bins as f64,
                count: count[b],
                accuracy: correct[b] as f64 / n,
                confidence: confidence[b] / n,
            }
        })
        .collect())
}

/// Expected calibration error: the size-weighted mean gap between each confidence bin's
/// accuracy and its mean confidence ([`calibration_bins`]).
pub fn expected_calibration_error(truth: &[usize], probabilities: ArrayView2<'_, f64>, bins: usize) -> Result<f64> {
    Ok(ece_of(&calibration_bins(truth, probabilities, bins)?))
}

fn ece_of(bins: &[CalibrationBin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    bins.iter()
        .filter(|b| b.count > 0)
        .map(|b| (b.count as f64 / n.max(1) as f64) * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Metrics of the rows sharing one value of a slicing column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceReport {
    /// The slicing column.
    pub column: String,
    /// The value.
    pub value: String,
    /// Rows in the slice.
    pub rows: usize,
    /// Accuracy within the slice.
    pub accuracy: f64,
    /// Macro-F1 within the slice.
    pub macro_f1: f64,
}

/// Everything measured on a held-out set: hard-label metrics, probabilistic metrics and slices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Accuracy, per-class and averaged precision/recall/F1, confusion matrix.
    pub classification: ClassificationReport,
    /// Mean negative log-likelihood of the true class.
    pub log_loss: f64,
    /// ROC-AUC (binary, or one-vs-rest).
    pub roc_auc: RocAuc,
    /// Expected calibration error over 15 bins.
    pub ece: f64,
    /// Per value of each slicing column.
    pub slices: Vec<SliceReport>,
    /// Named failure-mode checks (`Predictor::failure_checks`).
    #[serde(default)]
    pub checks: Vec<FailureCheck>,
    /// The 15 confidence bins behind [`EvalReport::ece`] (a reliability diagram); empty in
    /// reports written before they were kept.
    #[serde(default)]
    pub calibration: Vec<CalibrationBin>,
}

/// The outcome of one named failure-mode check (`Predictor::failure_checks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCheck {
    /// The check's name.
    pub name: String,
    /// Whether the model behaved.
    pub passed: bool,
    /// What was tried and seen.
    pub detail: String,
}

impl EvalReport {
    /// Evaluates predicted `probabilities` (`rows × classes`, each row summing to 1) against
    /// the true class indices; the predicted class is each row's most probable one.
    pub fn compute(truth: &[usize], probabilities: ArrayView2<'_, f64>, labels: &[String]) -> Result<Self> {
        check_probabilities(truth, probabilities)?;
        if probabilities.ncols() != labels.len() {
            return Err(Error::Shape(format!(
                "{} labels for {} probability columns",
                labels.len(),
                probabilities.ncols()
            )));
        }
        let predicted = argmax(probabilities);
        let calibration = calibration_bins(truth, probabilities, 15)?;
        Ok(Self {
            classification: ClassificationReport::compute(truth, &predicted, labels)?,
            log_loss: log_loss(truth, probabilities)?,
            roc_auc: roc_auc_ovr(truth, probabilities)?,
            ece: ece_of(&calibration),
            slices: Vec::new(),
            checks: Vec::new(),
            calibration,
        })
    }

    /// Attaches failure-mode checks; a failed one shows in [`EvalReport::metrics`] as
    /// `checks_failed`.
    pub fn with_checks(mut self, checks: Vec<FailureCheck>) -> Self {
        self.checks = checks;
        self
    }

    /// Adds accuracy and macro-F1 per value of `column` (`values[r]` is row r's value).
    pub fn with_slices(
        mut self,
        column: &str,
        values: &[String],
        truth: &[usize],
        probabilities: ArrayView2<'_, f64>,
    ) -> Result<Self> {
        if values.len() != truth.len() {
            return Err(Error::Shape(format!("{} slice values for {} rows", values.len(), truth.len())));
        }
        let predicted = argmax(probabilities);
        let labels: Vec<String> = self.classification.classes.iter().map(|c| c.label.clone()).collect();
        let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = std::collections::BTreeMap::new();
        for (r, v) in values.iter().enumerate() {
            groups.entry(v).or_default().push(r);
        }
        for (value, rows) in groups {
            let t: Vec<usize> = rows.iter().map(|r| truth[*r]).collect();
            let p: Vec<usize> = rows.iter().map(|r| predicted[*r]).collect();
            let report = ClassificationReport::compute(&t, &p, &labels)?;
            self.slices.push(SliceReport {
                column: column.to_string(),
                value: value.to_string(),
                rows: rows.len(),
                accuracy: report.accuracy,
                macro_f1: report.macro_f1,
            });
        }
        Ok(self)
    }

    /// Headline metrics by name, for the registry and promotion gates: `accuracy`,
    /// `macro_f1`, `weighted_f1`, `log_loss`, `roc_auc` (macro), `ece`.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let c = &self.classification;
        let mut out: std::collections::BTreeMap<String, f64> = [
            ("accuracy", c.accuracy),
            ("macro_f1", c.macro_f1),
            ("weighted_f1", c.weighted_f1),
            ("log_loss", self.log_loss),
            ("ece", self.ece),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(auc) = self.roc_auc.macro_auc {
            out.insert("roc_auc".into(), auc);
        }
        if !self.checks.is_empty() {
            out.insert("checks_failed".into(), self.checks.iter().filter(|c| !c.passed).count() as f64);
        }
        out
    }

    /// Logs the report to a run: each of [`EvalReport::metrics`] as `<prefix>_<name>` at
    /// `step`, per-slice accuracy and macro-F1 as `<prefix>_slice_<column>=<value>_<name>`,
    /// and the whole report as the artifact `<prefix>_eval_report.json` (what the
    /// registry's promotion gate and `kiln runs show` read back).
    pub fn log_to_run(&self, run: &mut kiln_track::Run, prefix: &str, step: u64) -> Result<kiln_track::Artifact> {
        let key = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}_{name}") };
        for (name, value) in self.metrics() {
            run.log_metric(&key(&name), step, value)?;
        }
        for slice in &self.slices {
            let name = format!("slice_{}={}", slice.column, slice.value);
            run.log_metric(&key(&format!("{name}_accuracy")), step, slice.accuracy)?;
            run.log_metric(&key(&format!("{name}_macro_f1")), step, slice.macro_f1)?;
        }
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Shape(format!("the eval report cannot be written as JSON: {e}")))?;
        Ok(run.log_artifact_bytes(&key("eval_report.json"), &json)?)
    }
}

fn argmax(probabilities: ArrayView2<'_, f64>) -> Vec<usize> {
    probabilities
        .rows()
        .into_iter()
        .map(|row| {
            row.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, p)| if *p > b.1 { (i, *p) } else { b }).0
        })
        .collect()
}

/// Whether a candidate model may be promoted: every threshold holds, and no gated metric is
/// worse than the current production version's by more than `tolerance`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PromotionGate {
    /// Minimums (or, for metrics where lower is better, maximums) by metric name.
    pub thresholds: std::collections::BTreeMap<String, f64>,
    /// Metrics where lower is better (`log_loss`, `ece`); the others are higher-is-better.
    pub lower_is_better: Vec<String>,
    /// How much worse than production a metric may be.
    pub tolerance: f64,
}

/// The verdict of a [`PromotionGate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// Whether every check passed.
    pub passed: bool,
    /// One line per failed check.
    pub reasons: Vec<String>,
}

impl PromotionGate {
    /// Checks `candidate` metrics against the thresholds and, when given, `production`'s.
    pub fn decide(
        &self,
        candidate: &std::collections::BTreeMap<String, f64>,
        production: Option<&std::collections::BTreeMap<String, f64>>,
    ) -> GateDecision {
        let lower = |m: &str| self.lower_is_better.iter().any(|l| l == m);
        let mut reasons = Vec::new();
        for (metric, bound) in &self.thresholds {
            match candidate.get(metric) {
                None => reasons.push(format!("{metric}: not measured")),
                Some(v) if lower(metric) && v > bound => {
                    reasons.push(format!("{metric} {v:.4} is above the maximum {bound}"))
                }
                Some(v) if !lower(metric) && v < bound => {
                    reasons.push(format!("{metric} {v:.4} is below the minimum {bound}"))
                }
                Some(_) => {}
            }
        }
        if let Some(production) = production {
            for (metric, current) in production.iter().filter(|(m, _)| self.thresholds.contains_key(*m)) {
                let Some(v) = candidate.get(metric) else { continue };
                let worse = if lower(metric) { v - current } else { current - v };
                if worse > self.tolerance {
                    reasons.push(format!(
                        "{metric} {v:.4} is worse than production's {current:.4} by {worse:.4} (tolerance {})",
                        self.tolerance
                    ));
                }
            }
        }
        GateDecision { passed: reasons.is_empty(), reasons }
    }
}

/// What [`PromotionGate::promote`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    /// The gate's verdict.
    pub decision: GateDecision,
    /// The registered version, when the gate passed.
    pub version: Option<kiln_track::ModelVersion>,
    /// The version the alias pointed to before.
    pub replaced: Option<u32>,
}

impl PromotionGate {
    /// Registers the package at `package_dir` as a new version of `model` and points `alias`
    /// (usually `production`) at it, only if the gate passes for `options.metrics` against the
    /// version `alias` points to now (no such version: thresholds only). A refused candidate
    /// is not registered; the decision says why.
    pub fn promote(
        &self,
        registry: &kiln_track::Registry,
        model: &str,
        alias: &str,
        package_dir: &std::path::Path,
        options: kiln_track::RegisterOptions,
    ) -> Result<Promotion> {
        let current = match registry.resolve(model, alias) {
            Ok(v) => Some(v),
            Err(kiln_track::Error::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let decision = self.decide(&options.metrics, current.as_ref().map(|v| &v.metrics));
        if !decision.passed {
            tracing::warn!("{model}: not promoted to {alias}: {}", decision.reasons.join("; "));
            return Ok(Promotion { decision, version: None, replaced: None });
        }
        let version = registry.register(model, package_dir, options)?;
        let reason = match &current {
            Some(v) => format!("promotion gate passed against v{}", v.version),
            None => "promotion gate passed (no previous version)".to_string(),
        };
        let replaced = registry.set_alias_because(model, alias, version.version, &reason)?;
        Ok(Promotion { decision, version: Some(version), replaced })
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
