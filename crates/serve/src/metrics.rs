//! Request counters and latency, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy)]
struct Counter {
    requests: u64,
    rows: u64,
    seconds: f64,
}

/// A counter family: name, help text, and how to render a counter's value.
type Family = (&'static str, &'static str, fn(&Counter) -> String);

/// Per model and status code: requests, rows predicted, and time spent.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<BTreeMap<(String, u16), Counter>>,
}

impl Metrics {
    pub(crate) fn record(&self, model: &str, status: u16, rows: usize, elapsed: Duration) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let c = map.entry((model.to_string(), status)).or_default();
        c.requests += 1;
        c.rows += rows as u64;
        c.seconds += elapsed.as_secs_f64();
    }

    pub(crate) fn render(&self) -> String {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let families: [Family; 3] = [
            ("kiln_infer_requests_total", "Inference requests by model and HTTP status.", |c| c.requests.to_string()),
            ("kiln_infer_rows_total", "Rows predicted by model and HTTP status.", |c| c.rows.to_string()),
            ("kiln_infer_seconds_total", "Seconds spent handling inference requests.", |c| format!("{:.6}", c.seconds)),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((model, status), c) in map.iter() {
                let _ = writeln!(out, "{name}{{model=\"{}\",code=\"{status}\"}} {}", escape(model), value(c));
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
