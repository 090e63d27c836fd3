//! Request counters, latency, queue and batch histograms, and in-flight gauges, rendered in
//! the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency and queue-time buckets.
const SECONDS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Upper bounds of the batch-size buckets (rows).
const ROWS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {:.6}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Clone)]
struct ModelStats {
    /// (version, HTTP status) → (requests, rows).
    requests: BTreeMap<(String, u16), (u64, u64)>,
    latency: Histogram,
    queue: Histogram,
    batch: Histogram,
    in_flight: i64,
}

impl Default for ModelStats {
    fn default() -> Self {
        Self {
            requests: BTreeMap::new(),
            latency: Histogram::new(&SECONDS),
            queue: Histogram::new(&SECONDS),
            batch: Histogram::new(&ROWS),
            in_flight: 0,
        }
    }
}

/// A counter family: name, help text, and which of (requests, rows) it renders.
type CounterFamily = (&'static str, &'static str, fn(&(u64, u64)) -> u64);

/// A histogram family: name, help text, and which histogram of a model it renders.
type HistogramFamily = (&'static str, &'static str, fn(&ModelStats) -> &Histogram);

/// Everything `/metrics` reports, per model.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<BTreeMap<String, ModelStats>>,
}

/// Counts a request as in flight while alive.
pub(crate) struct InFlight<'a> {
    metrics: &'a Metrics,
    model: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.with(&self.model, |s| s.in_flight -= 1);
    }
}

impl Metrics {
    fn with(&self, model: &str, f: impl FnOnce(&mut ModelStats)) {
        let mut map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(model.to_string()).or_default());
    }

    pub(crate) fn in_flight(&self, model: &str) -> InFlight<'_> {
        self.with(model, |s| s.in_flight += 1);
        InFlight { metrics: self, model: model.to_string() }
    }

    /// One answered request.
    pub(crate) fn record(&self, model: &str, version: &str, status: u16, rows: usize, elapsed: Duration) {
        self.with(model, |s| {
            let c = s.requests.entry((version.to_string(), status)).or_default();
            c.0 += 1;
            c.1 += rows as u64;
            s.latency.observe(elapsed.as_secs_f64());
        });
    }

    /// One request's wait in the queue and the size of the batch it ran in.
    pub(crate) fn batch(&self, model: &str, queued: Duration, batch_rows: usize) {
        self.with(model, |s| {
            s.queue.observe(queued.as_secs_f64());
            s.batch.observe(batch_rows as f64);
        });
    }

    pub(crate) fn render(&self) -> String {
        let map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let counters: [CounterFamily; 2] = [
            ("kiln_infer_requests_total", "Inference requests by model, version and HTTP status.", |c| c.0),
            ("kiln_infer_rows_total", "Rows predicted by model, version and HTTP status.", |c| c.1),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            for (model, s) in map.iter() {
                for ((version, code), c) in &s.requests {
                    let (model, version) = (escape(model), escape(version));
                    let _ =
                        writeln!(out, "{name}{{model=\"{model}\",version=\"{version}\",code=\"{code}\"}} {}", value(c));
                }
            }
        }
        let families: [HistogramFamily; 3] = [
            ("kiln_infer_latency_seconds", "Time from request to answer.", |s| &s.latency),
            ("kiln_infer_queue_seconds", "Time a request waited for its batch.", |s| &s.queue),
            ("kiln_infer_batch_rows", "Rows in the batch a request ran in.", |s| &s.batch),
        ];
        for (name, help, histogram) in families {
            header(&mut out, name, "histogram", help);
            for (model, s) in map.iter() {
                histogram(s).render(&mut out, name, &format!("model=\"{}\"", escape(model)));
            }
        }
        header(&mut out, "kiln_infer_in_flight", "gauge", "Requests being handled.");
        for (model, s) in map.iter() {
            let _ = writeln!(out, "kiln_infer_in_flight{{model=\"{}\"}} {}", escape(model), s.in_flight);
        }
        out
    }
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
