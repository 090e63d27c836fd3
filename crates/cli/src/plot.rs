//! Plot helpers for `kiln runs plot`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use kiln_track::Store;
use kiln_train::EvalReport;
use kiln_train::plot::{Series, calibration_curve, confusion_matrix, line_chart};

/// Curves of `metrics` (default: every metric of the first run logged at more than one step)
/// for each run, by step.
pub fn run_series(store: &Store, runs: &[String], metrics: &[String]) -> Result<Vec<Series>> {
    let mut points = Vec::new();
    for id in runs {
        points.push((id, store.metrics(id)?));
    }
    let Some((first_id, first)) = points.first() else { bail!("name at least one run") };
    let metrics: Vec<String> = if metrics.is_empty() {
        let mut keys: Vec<String> = first.iter().map(|p| p.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys.retain(|k| first.iter().filter(|p| &p.key == k).count() > 1);
        if keys.is_empty() {
            bail!("run {first_id} logged no metric at more than one step; name one with --metric");
        }
        keys
    } else {
        metrics.to_vec()
    };
    let mut series = Vec::new();
    for (id, logged) in &points {
        for metric in &metrics {
            let mut curve: Vec<(f64, f64)> =
                logged.iter().filter(|p| &p.key == metric).map(|p| (p.step as f64, p.value)).collect();
            if curve.is_empty() {
                eprintln!("run {id} has no metric {metric:?}; left out");
                continue;
            }
            curve.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = match (runs.len(), metrics.len()) {
                (1, _) => metric.clone(),
                (_, 1) => id.to_string(),
                _ => format!("{id} {metric}"),
            };
            series.push(Series::new(label, curve));
        }
    }
    if series.is_empty() {
        bail!("none of the runs has the metric(s) {}", metrics.join(", "));
    }
    Ok(series)
}

/// Draws metric curves.
pub fn curves(series: &[Series], out: &Path, log_y: bool) -> Result<()> {
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    let title = if labels.len() <= 3 { labels.join(", ") } else { format!("{} curves", labels.len()) };
    Ok(line_chart(series, &title, "step", "value", log_y, out)?)
}

/// Reads a run's evaluation report artifact: `artifact` itself, or, for the default name, the
/// one artifact whose name ends in it (`test_eval_report.json`); in a directory artifact (a
/// model package), its `eval.json`.
pub fn eval_report(store: &Store, run: &str, artifact: &str) -> Result<EvalReport> {
    let record = store.run(run)?;
    let found = record.artifacts.get_key_value(artifact).or_else(|| {
        let mut like = record.artifacts.iter().filter(|(name, _)| name.ends_with(artifact));
        match (like.next(), like.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    });
    let (name, a) = found.with_context(|| {
        let names: Vec<&String> = record.artifacts.keys().collect();
        format!("run {run} has no artifact {artifact:?} (it has {names:?}); name the evaluation report with --artifact")
    })?;
    let file = a
        .files
        .iter()
        .find(|f| f.path.is_empty() || f.path == "eval.json")
        .with_context(|| format!("artifact {name:?} of run {run} holds no evaluation report (no eval.json)"))?;
    let path = store.object_path(&file.digest)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(r) = serde_json::from_slice::<kiln_train::RegressionReport>(&bytes) {
        bail!(
            "artifact {name:?} of run {run} is a regression's evaluation (RMSE {:.4}, MAE {:.4}): confusion matrices and reliability diagrams are for classifiers; `kiln train` logs a regression's residual plot as the artifact residuals.svg",
            r.rmse,
            r.mae
        );
    }
    serde_json::from_slice(&bytes)
        .with_context(|| format!("artifact {name:?} of run {run} is not a kiln evaluation report"))
}

/// Draws a run's confusion matrix or reliability diagram from its evaluation report.
pub fn evaluation(report: &EvalReport, kind: &str, run: &str, out: &Path) -> Result<()> {
    match kind {
        "confusion" => {
            let labels: Vec<String> = report.classification.classes.iter().map(|c| c.label.clone()).collect();
            confusion_matrix(&report.classification.confusion, &labels, &format!("confusion matrix, run {run}"), out)?
        }
        "calibration" => {
            if report.calibration.is_empty() {
                bail!("the evaluation report of run {run} predates calibration bins; evaluate again to plot it");
            }
            calibration_curve(&report.calibration, &format!("reliability, run {run} (ECE {:.4})", report.ece), out)?
        }
        other => bail!("unknown plot kind {other:?}"),
    }
    Ok(())
}
