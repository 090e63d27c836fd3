//! A load generator for inference servers (kiln's or any KServe v2 server): closed loop
//! (a fixed number of clients, each sending its next request when the last one is answered)
//! or open loop (requests scheduled at a fixed rate, latency measured from the scheduled
//! time, so a stalled server cannot hide its queueing).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadMode {
    /// `concurrency` clients, each waiting for its answer before sending again.
    Closed {
        /// Clients.
        concurrency: usize,
    },
    /// Requests at `rate` per second on `workers` connections; a request that cannot start on
    /// time waits, and its wait counts in its latency.
    Open {
        /// Requests per second.
        rate: f64,
        /// Connections sending them.
        workers: usize,
    },
}

/// A load test.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// The URL to POST to (`http://127.0.0.1:8080/v2/models/m/infer`).
    pub url: String,
    /// Request bodies, used in turn.
    pub bodies: Vec<String>,
    /// Closed or open loop.
    pub mode: LoadMode,
    /// Requests to measure.
    pub requests: usize,
    /// Requests sent first and not measured.
    pub warmup: usize,
}

/// What a load test measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests measured.
    pub requests: usize,
    /// Answers by HTTP status (0: no answer, a transport error).
    pub statuses: BTreeMap<u16, usize>,
    /// Wall time of the measured part.
    pub seconds: f64,
    /// Answered requests per second.
    pub throughput: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl LoadReport {
    /// Requests that were not answered 200.
    pub fn errors(&self) -> usize {
        self.statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1e3
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn send(agent: &ureq::Agent, url: &str, body: &str) -> u16 {
    match agent.post(url).content_type("application/json").send(body) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let _ = resp.body_mut().read_to_vec();
            status
        }
        Err(_) => 0,
    }
}

/// Runs a load test and reports latency percentiles, throughput and answers by status.
pub fn run_load(spec: &LoadSpec) -> Result<LoadReport> {
    if spec.bodies.is_empty() || spec.requests == 0 {
        return Err(Error::Server("a load test needs at least one body and one request".into()));
    }
    let (workers, interval) = match spec.mode {
        LoadMode::Closed { concurrency } if concurrency > 0 => (concurrency, None),
        LoadMode::Open { rate, workers } if rate > 0.0 && rate.is_finite() && workers > 0 => {
            (workers, Some(Duration::from_secs_f64(1.0 / rate)))
        }
        other => return Err(Error::Server(format!("invalid load mode {other:?}"))),
    };
    let total = spec.warmup + spec.requests;
    let next = AtomicUsize::new(0);
    let samples: Mutex<Vec<(Duration, u16)>> = Mutex::new(Vec::with_capacity(spec.requests));
    let measured_start: Mutex<Option<Instant>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let scheduled = match interval {
                        Some(every) => {
                            let at = start + every.mul_f64(i as f64);
                            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            at
                        }
                        None => Instant::now(),
                    };
                    if i == spec.warmup {
                        *measured_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(scheduled);
                    }
                    let status = send(&agent, &spec.url, &spec.bodies[i % spec.bodies.len()]);
                    if i >= spec.warmup {
                        let latency = scheduled.elapsed();
                        samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((latency, status));
                    }
                }
            });
        }
    });
    let end = Instant::now();
    let samples = samples.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let began = measured_start.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).unwrap_or(start);
    let seconds = end.duration_since(began).as_secs_f64();
    let mut statuses = BTreeMap::new();
    for (_, s) in &samples {
        *statuses.entry(*s).or_insert(0) += 1;
    }
    let mut latencies: Vec<Duration> = samples.iter().map(|(d, _)| *d).collect();
    latencies.sort_unstable();
    let answered = samples.iter().filter(|(_, s)| *s == 200).count();
    Ok(LoadReport {
        requests: samples.len(),
        statuses,
        seconds,
        throughput: answered as f64 / seconds.max(1e-9),
        p50_ms: percentile(&latencies, 50.0),
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: percentile(&latencies, 100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 50.0), 50.0);
        assert_eq!(percentile(&d, 99.0), 99.0);
        assert_eq!(percentile(&d, 100.0), 100.0);
        assert_eq!(percentile(&d[..1], 50.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
