//! `kiln runs` and `kiln query`: list, inspect, compare and plot runs; SQL over the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use kiln_track::{MetricPoint, RunRecord, Store};
use serde_json::{Value, json};

use crate::util::{finite_json, frame_csv, frame_json, lower_is_better, num, resolve_run, utc};

/// `kiln runs`; with no subcommand, `kiln runs ls`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    #[command(subcommand)]
    command: Option<RunsCommand>,
    #[command(flatten)]
    ls: LsArgs,
}

/// The `kiln runs` subcommands.
#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// List runs, newest last, with their final metrics.
    ///
    /// Example: kiln runs ls --experiment digits --sort test_accuracy --limit 10
    Ls(LsArgs),
    /// Everything about one run: status, params, tags, datasets, artifacts, environment, and
    /// each metric's last, smallest and largest value.
    ///
    /// Example: kiln runs show 019ad3f2c1a4 (a unique prefix of the id is enough)
    Show {
        /// The run id, or a unique prefix of it.
        run: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs side by side: the params that differ between them and every final metric.
    ///
    /// Example: kiln runs compare 019ad3f2c1a4 019ad3f2d5e6 (or --experiment digits-sweep)
    Compare {
        /// Run ids or unique prefixes.
        runs: Vec<String>,
        /// Compare every run of this experiment instead.
        #[arg(long, short, conflicts_with = "runs")]
        experiment: Option<String>,
        /// Show every param, not only those that differ.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Plot metric curves of one or more runs, or a run's confusion matrix or reliability
    /// diagram (from its evaluation report artifact), to a PNG or SVG file (by the extension).
    ///
    /// Example: kiln runs plot 019ad3f2c1a4 019ad3f2d5e6 --metric val_loss --out val_loss.svg
    Plot {
        /// Run ids or unique prefixes.
        #[arg(required = true)]
        runs: Vec<String>,
        /// What to draw.
        #[arg(long, default_value = "curves", value_parser = ["curves", "confusion", "calibration"])]
        kind: String,
        /// Metrics to draw (default: every metric the first run logged at more than one step).
        #[arg(long, short)]
        metric: Vec<String>,
        /// The evaluation report artifact, for confusion and calibration.
        #[arg(long, default_value = "eval_report.json")]
        artifact: String,
        /// The image to write: `.png` or `.svg`.
        #[arg(long, short)]
        out: PathBuf,
        /// Use a logarithmic y axis.
        #[arg(long)]
        log_y: bool,
    },
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Only runs of this experiment.
    #[arg(long, short)]
    experiment: Option<String>,
    /// Only runs with this status.
    #[arg(long, value_parser = ["running", "completed", "failed", "killed"])]
    status: Option<String>,
    /// Sort by this metric's final value, best first: highest, or lowest with --asc or for
    /// names with a word `loss`, `error`, `ece`, `mse`, `mae`, `rmse` or `seconds`
    /// (`val_loss`, `test_ece`). Runs without the metric are left out; NaN sorts last.
    #[arg(long)]
    sort: Option<String>,
    /// Sort ascending.
    #[arg(long, requires = "sort")]
    asc: bool,
    /// Show at most this many runs (the newest, or the best with --sort).
    #[arg(long, short = 'n')]
    limit: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `kiln query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The query, over the tables runs, params, metrics, latest_metrics, tags, datasets,
    /// models, model_events, predictions and feedback.
    query: String,
    /// Print every row as a JSON array of objects.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print every row as CSV.
    #[arg(long)]
    csv: bool,
}

/// Runs `kiln query`.
pub fn query(store: &Store, args: QueryArgs) -> Result<ExitCode> {
    let mut frame = store.sql(&args.query)?;
    if args.json {
        say!("{}", frame_json(&mut frame)?);
    } else if args.csv {
        let csv = frame_csv(&mut frame)?;
        say!("{}", csv.trim_end());
    } else {
        say!("{frame}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one `kiln runs` subcommand.
pub fn run(store: &Store, args: RunsArgs) -> Result<ExitCode> {
    match args.command {
        None => ls(store, &args.ls),
        Some(RunsCommand::Ls(ls_args)) => ls(store, &ls_args),
        Some(RunsCommand::Show { run, json }) => show(store, &run, json),
        Some(RunsCommand::Compare { runs, experiment, all, json }) => compare(store, &runs, experiment, all, json),
        Some(RunsCommand::Plot { runs, kind, metric, artifact, out, log_y }) => {
            let ids: Vec<String> = runs.iter().map(|r| resolve_run(store, r)).collect::<Result<_>>()?;
            if kind == "curves" {
                let series = crate::plot::run_series(store, &ids, &metric)?;
                crate::plot::curves(&series, &out, log_y)?;
                say!("{} curve(s) of {} run(s) written to {}", series.len(), ids.len(), out.display());
            } else {
                let [id] = &ids[..] else { bail!("--kind {kind} draws one run, got {}", ids.len()) };
                let report = crate::plot::eval_report(store, id, &artifact)?;
                crate::plot::evaluation(&report, &kind, id, &out)?;
                say!("{kind} of run {id} written to {}", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn duration_s(run: &RunRecord) -> Option<f64> {
    run.state.end_ms.map(|end| (end - run.meta.start_ms) as f64 / 1000.0)
}

fn ls(store: &Store, args: &LsArgs) -> Result<ExitCode> {
    let mut runs: Vec<RunRecord> = store
        .runs(args.experiment.as_deref())?
        .into_iter()
        .filter(|r| args.status.as_ref().is_none_or(|s| r.status().as_str() == s))
        .collect();
    if let Some(metric) = &args.sort {
        let ascending = args.asc || lower_is_better(metric);
        runs.retain(|r| r.final_metrics.contains_key(metric));
        runs.sort_by(|a, b| {
            let (x, y) = (a.final_metrics[metric], b.final_metrics[metric]);
            // Non-finite values (a diverged run) last, whichever the direction.
            x.is_finite().cmp(&y.is_finite()).reverse().then(if ascending { x.total_cmp(&y) } else { y.total_cmp(&x) })
        });
        if let Some(n) = args.limit {
            runs.truncate(n);
        }
    } else if let Some(n) = args.limit {
        runs.drain(..runs.len().saturating_sub(n));
    }
    if args.json {
        let rows: Vec<Value> = runs.iter().map(run_summary).collect();
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("{:<20}  {:<16}  {:<9}  {:<19}  {:>9}  metrics", "run", "experiment", "status", "started (UTC)", "seconds");
    for run in &runs {
        let metrics: Vec<String> = run.final_metrics.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
        say!(
            "{:<20}  {:<16}  {:<9}  {:<19}  {:>9}  {}",
            run.meta.run_id,
            run.meta.experiment,
            run.status().as_str(),
            utc(run.meta.start_ms),
            duration_s(run).map(|s| format!("{s:.1}")).unwrap_or_default(),
            metrics.join(" ")
        );
    }
    if runs.is_empty() {
        eprintln!("no runs{}", args.experiment.as_ref().map(|e| format!(" in experiment {e:?}")).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_summary(run: &RunRecord) -> Value {
    json!({
        "run_id": run.meta.run_id,
        "experiment": run.meta.experiment,
        "name": run.meta.name,
        "parent_run_id": run.meta.parent_run_id,
        "status": run.status().as_str(),
        "attempt": run.state.attempt,
        "start_ms": run.meta.start_ms,
        "end_ms": run.state.end_ms,
        "duration_s": duration_s(run),
        "error": run.state.error,
        "params": run.params,
        "tags": run.tags,
        "metrics": run.final_metrics.iter().map(|(k, v)| (k.clone(), finite_json(*v))).collect::<BTreeMap<_, _>>(),
    })
}

/// Per metric: steps logged, last (at the highest step), min, max, non-finite count.
fn metric_summary(points: &[MetricPoint]) -> BTreeMap<String, (usize, f64, f64, f64, usize)> {
    let mut out: BTreeMap<String, (usize, u64, f64, f64, f64, usize)> = BTreeMap::new();
    for p in points {
        let e = out.entry(p.key.clone()).or_insert((0, 0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0));
        e.0 += 1;
        if e.0 == 1 || p.step >= e.1 {
            e.1 = p.step;
            e.2 = p.value;
        }
        if p.value.is_finite() {
            e.3 = e.3.min(p.value);
            e.4 = e.4.max(p.value);
        } else {
            e.5 += 1;
        }
    }
    out.into_iter().map(|(k, (n, _, last, min, max, bad))| (k, (n, last, min, max, bad))).collect()
}

fn show(store: &Store, run: &str, json: bool) -> Result<ExitCode> {
    let id = resolve_run(store, run)?;
    let record = store.run(&id)?;
    let metrics = metric_summary(&store.metrics(&id)?);
    if json {
        let mut doc = run_summary(&record);
        doc["inputs"] = serde_json::to_value(&record.inputs)?;
        doc["artifacts"] = serde_json::to_value(&record.artifacts)?;
        doc["environment"] = serde_json::to_value(&record.environment)?;
        doc["heartbeat"] = serde_json::to_value(&record.heartbeat)?;
        doc["metric_summary"] = metrics
            .iter()
            .map(|(k, (n, last, min, max, bad))| {
                let finite = |v: f64| if v.is_finite() { Some(finite_json(v)) } else { None };
                (k.clone(), json!({"count": n, "last": finite_json(*last), "min": finite(*min), "max": finite(*max), "non_finite": bad}))
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        doc["dir"] = json!(record.dir.display().to_string());
        say!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &record.meta;
    say!("run         {}{}", m.run_id, if m.name != m.run_id { format!("  ({})", m.name) } else { String::new() });
    say!("experiment  {}", m.experiment);
    if let Some(parent) = &m.parent_run_id {
        say!("parent      {parent}");
    }
    say!("status      {} (attempt {})", record.status(), record.state.attempt);
    say!("started     {} UTC", utc(m.start_ms));
    if let Some(end) = record.state.end_ms {
        say!("ended       {} UTC ({:.1} s)", utc(end), (end - m.start_ms) as f64 / 1000.0);
    }
    if let Some(error) = &record.state.error {
        say!("error       {error}");
    }
    say!("directory   {}", record.dir.display());
    if !record.params.is_empty() {
        say!("\nparams");
        for (k, v) in &record.params {
            say!("  {k:<32} {}", plain(v));
        }
    }
    if !record.tags.is_empty() {
        say!("\ntags");
        for (k, v) in &record.tags {
            say!("  {k:<32} {v}");
        }
    }
    if !metrics.is_empty() {
        say!("\n  {:<32} {:>7} {:>12} {:>12} {:>12}", "metric", "steps", "last", "min", "max");
        for (k, (n, last, min, max, bad)) in &metrics {
            let range = |v: f64| if v.is_finite() { format!("{v:.6}") } else { "-".into() };
            let flag = if *bad > 0 { format!("  ({bad} non-finite)") } else { String::new() };
            say!("  {k:<32} {n:>7} {:>12} {:>12} {:>12}{flag}", format!("{last:.6}"), range(*min), range(*max));
        }
    }
    if !record.inputs.is_empty() {
        say!("\ndatasets");
        for d in &record.inputs {
            let rows = d.rows.map(|r| format!("{r} rows, ")).unwrap_or_default();
            let context = d.context.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default();
            say!("  {}{context}  {rows}blake3 {}  {}", d.name, d.digest.get(..16).unwrap_or(&d.digest), d.source);
        }
    }
    if !record.artifacts.is_empty() {
        say!("\nartifacts");
        for (name, a) in &record.artifacts {
            let digest = a.digest.get(..16).unwrap_or(&a.digest);
            say!("  {name:<32} {:>12} bytes  {} file(s)  blake3 {digest}", a.size, a.files.len());
        }
    }
    if let Some(env) = &record.environment {
        say!("\nenvironment");
        let git = match (&env.git_commit, env.git_dirty) {
            (Some(c), Some(true)) => format!("{c} (uncommitted changes)"),
            (Some(c), _) => c.clone(),
            (None, _) => "-".into(),
        };
        say!("  git         {git}{}", env.git_branch.as_deref().map(|b| format!(" on {b}")).unwrap_or_default());
        say!("  host        {} ({} CPUs, {})", env.hostname, env.cpu_count, env.platform);
        say!("  kiln        {}  ({})", env.kiln_version, env.rustc_version);
        if !env.gpus.is_empty() {
            say!("  GPUs        {}", env.gpus.len());
        }
        if !env.command.is_empty() {
            say!("  command     {}", env.command.join(" "));
        }
        if let Some(job) = env.variables.get("SLURM_JOB_ID") {
            say!("  Slurm job   {job}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A param value as text: strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn compare(store: &Store, runs: &[String], experiment: Option<String>, all: bool, json: bool) -> Result<ExitCode> {
    let records: Vec<RunRecord> = match experiment {
        Some(e) => store.runs(Some(&e))?,
        None => {
            if runs.len() < 2 {
                bail!("give two or more runs to compare (or --experiment NAME)");
            }
            runs.iter().map(|r| Ok(store.run(&resolve_run(store, r)?)?)).collect::<Result<_>>()?
        }
    };
    if records.is_empty() {
        bail!("no runs to compare");
    }
    let param_keys: BTreeSet<&String> = records.iter().flat_map(|r| r.params.keys()).collect();
    let metric_keys: BTreeSet<&String> = records.iter().flat_map(|r| r.final_metrics.keys()).collect();
    let params: BTreeMap<&String, Vec<Option<&Value>>> = param_keys
        .into_iter()
        .map(|k| (k, records.iter().map(|r| r.params.get(k)).collect::<Vec<_>>()))
        .filter(|(_, values)| all || values.iter().any(|v| *v != values[0]))
        .collect();
    let metrics: BTreeMap<&String, Vec<Option<f64>>> = metric_keys
        .into_iter()
        .map(|k| (k, records.iter().map(|r| r.final_metrics.get(k).copied()).collect()))
        .collect();
    if json {
        let doc = json!({
            "runs": records.iter().map(|r| json!({"run_id": r.meta.run_id, "name": r.meta.name, "experiment": r.meta.experiment, "status": r.status().as_str()})).collect::<Vec<_>>(),
            "params": params,
            "metrics": metrics.iter().map(|(k, v)| ((*k).clone(), v.iter().map(|x| x.map(finite_json)).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        });
        say!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = 14;
    let header: Vec<String> = records
        .iter()
        .map(|r| format!("{:>width$}", &r.meta.run_id[r.meta.run_id.len().saturating_sub(width)..]))
        .collect();
    say!("{:<28} {}", "", header.join(" "));
    say!(
        "{:<28} {}",
        "status",
        records.iter().map(|r| format!("{:>width$}", r.status().as_str())).collect::<Vec<_>>().join(" ")
    );
    if !params.is_empty() {
        say!("params{}", if all { "" } else { " (that differ)" });
        for (k, values) in &params {
            let cells: Vec<String> = values
                .iter()
                .map(|v| {
                    let text = v.map(plain).unwrap_or_else(|| "-".into());
                    let text = if text.chars().count() > width {
                        format!("{}…", text.chars().take(width - 1).collect::<String>())
                    } else {
                        text
                    };
                    format!("{text:>width$}")
                })
                .collect();
            say!("  {k:<26} {}", cells.join(" "));
        }
    }
    if !metrics.is_empty() {
        say!("metrics (final; * best)");
        for (k, values) in &metrics {
            let best = values
                .iter()
                .flatten()
                .filter(|v| v.is_finite())
                .copied()
                .reduce(|a, b| if lower_is_better(k) { a.min(b) } else { a.max(b) });
            let cells: Vec<String> = values
                .iter()
                .map(|v| {
                    let mark = if v.is_some() && *v == best && values.len() > 1 { "*" } else { " " };
                    format!("{:>w$}{mark}", num(*v), w = width - 1)
                })
                .collect();
            say!("  {k:<26} {}", cells.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
