//! Staged deployment: which versions of a model serve, and how traffic is split between them.
//!
//! Every served model name has a [`Deployment`]: a primary version (production), optionally
//! a canary that takes a share of the traffic, and optionally a shadow that sees a copy of the
//! primary's requests but never answers. Routing is sticky: a request goes to the canary when
//! the hash of its routing key (the `kiln-route-key` header, else the request id) falls in the
//! canary's share, so a user keeps seeing one version. [`CanaryPolicy`] compares the canary
//! with the primary over the same window and rolls it back when it is worse.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::server::LoadedModel;

/// The header whose value, when present, decides canary routing instead of the request id.
pub const ROUTE_KEY_HEADER: &str = "kiln-route-key";

/// The versions of one model to serve: a primary, and optionally a canary and a shadow.
#[derive(Debug)]
pub struct Deployment {
    /// Answers every request that does not go to the canary.
    pub primary: LoadedModel,
    /// A candidate answering `percent` % of requests (0 to 100).
    pub canary: Option<(LoadedModel, f64)>,
    /// A candidate that predicts a copy of each primary request; its answers are recorded
    /// (metrics, prediction log, online accuracy) and never returned.
    pub shadow: Option<LoadedModel>,
    /// When the canary is rolled back automatically.
    pub policy: CanaryPolicy,
}

impl Deployment {
    /// Serves `primary` alone.
    pub fn new(primary: LoadedModel) -> Self {
        Self { primary, canary: None, shadow: None, policy: CanaryPolicy::default() }
    }

    /// Sends `percent` % of the traffic (0 to 100) to `canary`.
    pub fn with_canary(mut self, canary: LoadedModel, percent: f64) -> Self {
        self.canary = Some((canary, percent));
        self
    }

    /// Mirrors the primary's requests to `shadow`.
    pub fn with_shadow(mut self, shadow: LoadedModel) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// Judges the canary by `policy`.
    pub fn with_policy(mut self, policy: CanaryPolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl From<LoadedModel> for Deployment {
    fn from(primary: LoadedModel) -> Self {
        Self::new(primary)
    }
}

/// When a canary is worse than the primary, judged on the requests and labels both received
/// since the canary started. A check is skipped until both sides have enough data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CanaryPolicy {
    /// Roll the canary back when a check fails (otherwise the verdict is only reported).
    pub auto_rollback: bool,
    /// Requests each side must have answered before error rates and latency are compared.
    pub min_requests: u64,
    /// Largest amount by which the canary's error rate (5xx answers, deadline misses) may
    /// exceed the primary's.
    pub max_error_rate_increase: f64,
    /// An absolute latency objective for the canary's p99, in milliseconds.
    pub latency_slo_ms: Option<f64>,
    /// Largest ratio of the canary's p99 latency to the primary's.
    pub max_latency_ratio: Option<f64>,
    /// Labels (feedback) each side must have before online accuracy is compared.
    pub min_labeled: u64,
    /// Largest amount by which the canary's online accuracy may fall below the primary's.
    pub max_accuracy_drop: f64,
}

impl Default for CanaryPolicy {
    /// Roll back on 2 points more errors after 100 requests, or 5 points less accuracy after
    /// 50 labels each; latency is judged only when an SLO or ratio is set.
    fn default() -> Self {
        Self {
            auto_rollback: true,
            min_requests: 100,
            max_error_rate_increase: 0.02,
            latency_slo_ms: None,
            max_latency_ratio: None,
            min_labeled: 50,
            max_accuracy_drop: 0.05,
        }
    }
}

/// Latencies kept per version for the p99 of a canary comparison.
const LATENCY_WINDOW: usize = 2048;

/// What one version did since the window started (the canary's start).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowStats {
    /// Requests answered.
    pub requests: u64,
    /// Of which failed on the server's side (5xx, 504).
    pub errors: u64,
    /// Labels joined to its answers.
    pub labeled: u64,
    /// Of which it predicted right.
    pub correct: u64,
    /// The latest latencies in milliseconds, oldest first.
    #[serde(skip)]
    latencies: VecDeque<f64>,
}

impl WindowStats {
    /// One answered request.
    pub(crate) fn answered(&mut self, error: bool, latency: Duration) {
        self.requests += 1;
        self.errors += u64::from(error);
        if self.latencies.len() == LATENCY_WINDOW {
            self.latencies.pop_front();
        }
        self.latencies.push_back(latency.as_secs_f64() * 1e3);
    }

    /// One joined label.
    pub(crate) fn labeled(&mut self, correct: bool) {
        self.labeled += 1;
        self.correct += u64::from(correct);
    }

    /// Share of requests that failed.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }

    /// Online accuracy, when labels arrived.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labeled > 0).then(|| self.correct as f64 / self.labeled as f64)
    }

    /// The 99th percentile of the latest latencies, in milliseconds.
    pub fn p99_ms(&self) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.latencies.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let rank = ((v.len() as f64) * 0.99).ceil() as usize;
        v.get(rank.saturating_sub(1)).copied()
    }
}

impl CanaryPolicy {
    /// Why the canary should be rolled back, or `None` while it holds up (or data is short).
    pub fn verdict(&self, primary: &WindowStats, canary: &WindowStats) -> Option<String> {
        if primary.requests >= self.min_requests && canary.requests >= self.min_requests {
            let (p, c) = (primary.error_rate(), canary.error_rate());
            if c - p > self.max_error_rate_increase {
                return Some(format!(
                    "canary error rate {c:.4} exceeds production's {p:.4} by more than {}",
                    self.max_error_rate_increase
                ));
            }
            let judged = self.latency_slo_ms.is_some() || self.max_latency_ratio.is_some();
            // Sorting for the p99 only when latency is judged: this runs after every request.
            let p99 = || Some((primary.p99_ms()?, canary.p99_ms()?));
            if let Some((pp, cp)) = judged.then(p99).flatten() {
                if let Some(slo) = self.latency_slo_ms.filter(|slo| cp > *slo) {
                    return Some(format!("canary p99 latency {cp:.3} ms breaks the {slo} ms objective"));
                }
                if let Some(ratio) = self.max_latency_ratio.filter(|r| cp > pp * r) {
                    return Some(format!(
                        "canary p99 latency {cp:.3} ms is more than {ratio}x production's {pp:.3} ms"
                    ));
                }
            }
        }
        if primary.labeled >= self.min_labeled
            && canary.labeled >= self.min_labeled
            && let (Some(p), Some(c)) = (primary.accuracy(), canary.accuracy())
            && p - c > self.max_accuracy_drop
        {
            return Some(format!(
                "canary online accuracy {c:.4} ({} labels) is below production's {p:.4} ({} labels) by more than {}",
                canary.labeled, primary.labeled, self.max_accuracy_drop
            ));
        }
        None
    }

    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let fraction = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !fraction(self.max_error_rate_increase) || !fraction(self.max_accuracy_drop) {
            return Err(format!(
                "canary policy: max_error_rate_increase ({}) and max_accuracy_drop ({}) must be within [0, 1]",
                self.max_error_rate_increase, self.max_accuracy_drop
            ));
        }
        let positive = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
        if !positive(self.latency_slo_ms) || !positive(self.max_latency_ratio) {
            return Err("canary policy: latency_slo_ms and max_latency_ratio must be positive".into());
        }
        Ok(())
    }
}

/// Checks a canary share.
pub(crate) fn check_percent(percent: f64) -> Result<f64, String> {
    if percent.is_finite() && (0.0..=100.0).contains(&percent) {
        Ok(percent)
    } else {
        Err(format!("canary percent must be within [0, 100], got {percent}"))
    }
}

/// Whether a request with routing key `key` goes to a canary taking `percent` % of traffic.
/// The same key always gives the same answer, and keys spread uniformly.
pub(crate) fn routes_to_canary(key: &str, percent: f64) -> bool {
    // FNV-1a, then SplitMix64's finaliser to spread similar keys.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // 10^6 buckets: shares are honoured to 0.0001 %.
    ((h % 1_000_000) as f64) < percent * 10_000.0
}

/// One change of a deployment, as reported by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentEvent {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `canary_set`, `canary_removed`, `auto_rollback`, `promoted`, `rolled_back`, `shadow_set`,
    /// `shadow_removed`.
    pub event: String,
    /// The version concerned.
    pub version: String,
    /// Why, when known.
    pub reason: Option<String>,
}

/// Per-version window statistics of a deployment.
pub(crate) type Windows = BTreeMap<String, WindowStats>;

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(requests: u64, errors: u64, labeled: u64, correct: u64, latency_ms: f64) -> WindowStats {
        let mut s = WindowStats::default();
        for i in 0..requests {
            s.answered(i < errors, Duration::from_secs_f64(latency_ms / 1e3));
        }
        for i in 0..labeled {
            s.labeled(i < correct);
        }
        s
    }

    #[test]
    fn verdict_waits_for_data_then_judges_errors_latency_and_accuracy() {
        let policy = CanaryPolicy { latency_slo_ms: Some(50.0), max_latency_ratio: Some(3.0), ..Default::default() };
        let good = stats(200, 2, 100, 90, 1.0);
        // Too few requests: nothing is judged, however bad.
        assert_eq!(policy.verdict(&good, &stats(99, 99, 0, 0, 1.0)), None);
        assert!(policy.verdict(&good, &stats(100, 5, 0, 0, 1.0)).unwrap().contains("error rate"));
        assert_eq!(policy.verdict(&good, &stats(100, 2, 0, 0, 1.0)), None);
        assert!(policy.verdict(&good, &stats(100, 0, 0, 0, 60.0)).unwrap().contains("objective"));
        assert!(policy.verdict(&good, &stats(100, 0, 0, 0, 4.0)).unwrap().contains("3x"));
        assert_eq!(policy.verdict(&good, &stats(100, 0, 0, 0, 2.9)), None);
        // Accuracy: 0.84 vs 0.90 is a drop of 0.06 > 0.05; 0.86 is within.
        assert!(policy.verdict(&good, &stats(100, 0, 50, 42, 1.0)).unwrap().contains("online accuracy"));
        assert_eq!(policy.verdict(&good, &stats(100, 0, 50, 43, 1.0)), None);
        assert_eq!(policy.verdict(&good, &stats(100, 0, 49, 0, 1.0)), None);
    }

    #[test]
    fn routing_is_sticky_and_honours_the_share() {
        let keys: Vec<String> = (0..100_000).map(|i| format!("req-{i}")).collect();
        for percent in [0.0, 5.0, 33.3, 100.0] {
            let n = keys.iter().filter(|k| routes_to_canary(k, percent)).count();
            let share = n as f64 / keys.len() as f64 * 100.0;
            assert!((share - percent).abs() < 0.5, "{percent}% asked, {share}% routed");
        }
        assert!(keys.iter().all(|k| routes_to_canary(k, 20.0) == routes_to_canary(k, 20.0)));
        // A key in the canary at 10 % stays there when the share grows.
        assert!(keys.iter().filter(|k| routes_to_canary(k, 10.0)).all(|k| routes_to_canary(k, 30.0)));
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut s = WindowStats::default();
        for ms in 1..=100 {
            s.answered(false, Duration::from_millis(ms));
        }
        assert_eq!(s.p99_ms(), Some(99.0));
    }
}
