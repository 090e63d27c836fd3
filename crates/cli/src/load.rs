//! `kiln load-test`: latency and throughput of a served model, with real rows as requests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use kiln_data::polars::prelude::{AnyValue, DataFrame};
use kiln_serve::{Client, LoadMode, LoadSpec, run_load};
use serde_json::{Value, json};

/// The exit status when some requests were not answered 200.
pub const EXIT_ERRORS: u8 = 3;

/// `kiln load-test`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The model name.
    #[arg(long, short)]
    model: String,
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A data file (CSV, Parquet, ...) whose rows become requests, one row each; the columns
    /// the model takes are read from the server's metadata. Missing values are sent as null;
    /// rows with text where the model takes a number are left out (and counted).
    #[arg(long, conflicts_with = "body")]
    data: Option<PathBuf>,
    /// Request bodies as files (KServe v2 JSON), used in turn.
    #[arg(long)]
    body: Vec<PathBuf>,
    /// Concurrent clients, each waiting for its answer (closed loop).
    #[arg(long, short, default_value_t = 16, conflicts_with = "rate")]
    clients: usize,
    /// Send at this many requests per second instead (open loop; late requests count their
    /// wait).
    #[arg(long)]
    rate: Option<f64>,
    /// Connections for --rate (default 32).
    #[arg(long, requires = "rate")]
    workers: Option<usize>,
    /// Requests to measure.
    #[arg(long, short = 'n', default_value_t = 2000)]
    requests: usize,
    /// Requests sent first and not measured.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A cell as a request value: missing values are sent as null (the model's pipeline decides
/// what they mean); `None` for a value the input cannot take (text in a numeric input).
fn cell(v: &AnyValue<'_>, text: bool) -> Option<Value> {
    match v {
        AnyValue::Null => Some(Value::Null),
        AnyValue::String(s) => Some(if text { json!(s) } else { json!(s.parse::<f64>().ok()?) }),
        AnyValue::StringOwned(s) => Some(if text { json!(s.as_str()) } else { json!(s.parse::<f64>().ok()?) }),
        AnyValue::Boolean(b) => Some(if text { json!(b.to_string()) } else { json!(f64::from(u8::from(*b))) }),
        // A text input takes any cell as its text (dates, categories, numbers).
        other if text => Some(json!(other.to_string())),
        other => {
            let x = other.extract::<f64>()?;
            Some(if x.is_finite() { json!(x) } else { Value::Null })
        }
    }
}

/// One request body per row with every input, and how many rows were left out.
fn bodies_from(frame: &DataFrame, inputs: &[(String, bool)], combined: bool) -> Result<(Vec<String>, usize)> {
    let mut columns = Vec::new();
    for (name, _) in inputs {
        columns.push(
            frame.column(name).with_context(|| format!("the data has no column {name:?}, which the model takes"))?,
        );
    }
    let mut bodies = Vec::new();
    let mut skipped = 0;
    'rows: for r in 0..frame.height() {
        let mut values = Vec::with_capacity(inputs.len());
        for ((_, text), column) in inputs.iter().zip(&columns) {
            match cell(&column.get(r)?, *text) {
                Some(v) => values.push(v),
                None => {
                    skipped += 1;
                    continue 'rows;
                }
            }
        }
        let body = if combined {
            json!({"inputs": [{"name": "input", "shape": [1, values.len()], "datatype": "FP64", "data": values}]})
        } else {
            let tensors: Vec<Value> = inputs
                .iter()
                .zip(values)
                .map(|((name, text), v)| {
                    json!({"name": name, "shape": [1], "datatype": if *text { "BYTES" } else { "FP64" }, "data": [v]})
                })
                .collect();
            json!({ "inputs": tensors })
        };
        bodies.push(body.to_string());
    }
    Ok((bodies, skipped))
}

/// Runs `kiln load-test`.
pub fn run(args: LoadArgs) -> Result<ExitCode> {
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    let base = args.url.trim_end_matches('/').to_string();
    let (bodies, skipped) = if let Some(path) = &args.data {
        let meta: Value = Client::new(&base)
            .get(&format!("/v2/models/{}", args.model))
            .with_context(|| format!("asking {base} for model {:?}'s inputs", args.model))?;
        let inputs: Vec<(String, bool)> = meta["inputs"]
            .as_array()
            .context("the server's model metadata has no inputs")?
            .iter()
            .filter_map(|i| Some((i["name"].as_str()?.to_string(), i["datatype"].as_str()? == "BYTES")))
            .filter(|(n, _)| n != "input")
            .collect();
        if inputs.is_empty() {
            bail!(
                "the server's metadata for {:?} names no per-feature inputs; send prepared requests with --body",
                args.model
            );
        }
        let combined = inputs.iter().all(|(_, text)| !text);
        let frame = crate::data::load(path)?.frame().clone();
        let (bodies, skipped) = bodies_from(&frame, &inputs, combined)?;
        if skipped > 0 {
            eprintln!("{}: left out {skipped} row(s) with text where the model takes a number", path.display());
        }
        (bodies, skipped)
    } else if !args.body.is_empty() {
        let mut bodies = Vec::new();
        for p in &args.body {
            bodies.push(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?);
        }
        (bodies, 0)
    } else {
        bail!("give --data FILE (rows become requests) or --body FILE");
    };
    if bodies.is_empty() {
        bail!("no requests to send: every row was left out");
    }
    let mode = match args.rate {
        Some(rate) => LoadMode::Open { rate, workers: args.workers.unwrap_or(32) },
        None => LoadMode::Closed { concurrency: args.clients },
    };
    let spec = LoadSpec {
        url: format!("{base}/v2/models/{}/infer", args.model),
        bodies,
        mode,
        requests: args.requests,
        warmup: args.warmup,
    };
    let report = run_load(&spec)?;
    if args.json {
        let mut doc = serde_json::to_value(&report)?;
        doc["rows_left_out"] = json!(skipped);
        doc["errors"] = json!(report.errors());
        say!("{doc}");
    } else {
        say!(
            "{} requests in {:.2}s: {:.0} req/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            report.requests,
            report.seconds,
            report.throughput,
            report.p50_ms,
            report.p90_ms,
            report.p99_ms,
            report.max_ms
        );
        let statuses: Vec<String> = report.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        say!("answers by status: {}", statuses.join(", "));
    }
    Ok(if report.errors() == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_ERRORS) })
}
