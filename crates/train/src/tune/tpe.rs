//! The tree-structured Parzen estimator, as in Optuna's univariate `TPESampler`.
//!
//! After `n_startup_trials` complete or pruned trials (random draws until then), the finished
//! trials are split: the best γ(n) = min(⌈0.1·n⌉, 25) complete trials are "good" (topped up with
//! the pruned trials that got furthest, then best, if there are too few), the rest "bad". Per
//! parameter, among the trials that have it, a Parzen estimator is fitted to each group: l(x)
//! to the good values, g(x) to the bad, each a mixture of truncated Gaussians centred on the
//! observations plus a prior centred mid-range with the whole range as bandwidth. A kernel's
//! bandwidth is the larger distance to its neighbours (the prior counts as one), clipped to
//! [range / min(100, n + 2), range] ("magic clip"); the outermost kernels use their inner
//! neighbour only. The bad trials are weighted by age: with m of them, the newest 25 weigh 1
//! and the older ones ramp linearly from 1/m. 24 candidates are drawn from l(x) and the one
//! maximising l(x)/g(x) wins. Log-scaled parameters are modelled in log space; stepped ones as
//! truncated Gaussians discretised on their grid (mass of the cell around each value) and the
//! draws rounded; a log-scaled integer is modelled continuously on
//! [ln(low − ½), ln(high + ½)] and rounded. Categorical parameters use a smoothed categorical
//! per observation (the prior weight spread over the choices) and a uniform prior.
//!
//! # Speed
//!
//! g(x) has one kernel per bad trial, so evaluating it naively takes 24 candidates × m kernels
//! `exp`s per parameter: 240,000 at m = 10,000. Two things make it cheap; the second
//! approximates, with a relative error bounded below 1e-9 (see `Fgt`):
//!
//! * The state keeps each parameter's finished trials sorted by value and by number, updated
//!   as lines arrive, so the split, the age weights and the bandwidths take one linear pass
//!   over the column and no sort.
//! * With magic clip, every kernel whose neighbours are closer than range/100 gets exactly the
//!   minimum bandwidth σ. At most ~200 kernels can be wider (the gaps sum to the range), and
//!   those, with the prior, are evaluated directly. The many narrow ones share σ, so their sum
//!   is a Gauss transform: they are binned into boxes of width σ/2, each box keeps 16 Hermite
//!   moments (the fast Gauss transform of Greengard and Strain), and evaluating g at a point
//!   sums 39 boxes instead of m kernels. Building the moments is one pass of multiplications.
//!
//! Stepped parameters are evaluated directly, kernels of equal value merged and only those
//! within 9.5 σ of the point visited. The buffers of g are kept between suggestions.

use kiln_data::SplitMix64;
use serde::{Deserialize, Serialize};

use super::math::{gauss_mass, truncated_normal};
use super::sampler::{rng_for, round_to_step, sample_random};
use super::space::Distribution;
use super::state::{Column, StudyState};
use crate::{Error, Result};

/// Settings of the TPE sampler; the defaults are Optuna's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TpeConfig {
    /// Seed of the draws.
    pub seed: u64,
    /// Random draws until this many trials are complete or pruned (default 10).
    pub n_startup_trials: usize,
    /// Candidates drawn from l(x) per suggestion (default 24).
    pub n_ei_candidates: usize,
    /// Weight of the prior kernel, and the smoothing of categorical kernels (default 1).
    pub prior_weight: f64,
    /// Clip bandwidths below at range / min(100, n + 2) (default true).
    pub consider_magic_clip: bool,
    /// Let the outermost kernels' bandwidths reach the bounds (default false).
    pub consider_endpoints: bool,
    /// The good fraction: γ(n) = min(⌈gamma·n⌉, gamma_max) (default 0.1).
    pub gamma: f64,
    /// The most good trials (default 25).
    pub gamma_max: usize,
    /// Count running trials' parameters among the bad ones, so that parallel workers
    /// spread out (Optuna's `constant_liar`; default false).
    pub constant_liar: bool,
}

impl Default for TpeConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            n_startup_trials: 10,
            n_ei_candidates: 24,
            prior_weight: 1.0,
            consider_magic_clip: true,
            consider_endpoints: false,
            gamma: 0.1,
            gamma_max: 25,
            constant_liar: false,
        }
    }
}

impl TpeConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("TPE: {m}")));
        if self.n_ei_candidates == 0 {
            return bad("n_ei_candidates must be at least 1");
        }
        if !(self.prior_weight.is_finite() && self.prior_weight > 0.0) {
            return bad("prior_weight must be positive");
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return bad("gamma must be in (0, 1]");
        }
        if self.gamma_max == 0 {
            return bad("gamma_max must be at least 1");
        }
        Ok(())
    }

    fn n_below(&self, n: usize) -> usize {
        ((self.gamma * n as f64).ceil() as usize).min(self.gamma_max)
    }
}

/// Buffers kept between suggestions: the good/bad split (valid until a trial finishes) and
/// the bad trials' estimator, which is large and rebuilt for every suggestion.
#[derive(Debug, Default)]
pub(crate) struct TpeScratch {
    split: Split,
    above: Vec<(f64, f64)>,
    liars: Vec<(f64, u32)>,
    mix: Mixture,
    density: Density,
}

#[derive(Debug, Default)]
struct Split {
    generation: Option<u64>,
    /// Good trials by number.
    below: Vec<u32>,
    mask: Vec<bool>,
    /// Age rank of each bad trial, by trial number (scratch).
    rank: Vec<u32>,
}

impl Split {
    fn is_below(&self, t: u32) -> bool {
        self.mask.get(t as usize).copied().unwrap_or(false)
    }
}

fn ensure_split(cfg: &TpeConfig, split: &mut Split, state: &StudyState) {
    if split.generation == Some(state.generation) && split.mask.len() >= state.trials.len() {
        return;
    }
    for &t in &split.below {
        if let Some(m) = split.mask.get_mut(t as usize) {
            *m = false;
        }
    }
    let n_below = cfg.n_below(state.n_finished());
    let mut below: Vec<u32> = state.complete.iter().take(n_below).map(|&(_, t)| t).collect();
    if below.len() < n_below {
        // Pruned trials: those that got furthest first, then the best value at their last step.
        let maximize = state.direction() == super::Direction::Maximize;
        let mut keyed: Vec<(f64, f64, u32)> = state
            .pruned
            .iter()
            .map(|&t| match state.trials[t as usize].last_step() {
                Some((step, v)) => {
                    let v = if v.is_nan() {
                        f64::INFINITY
                    } else if maximize {
                        -v
                    } else {
                        v
                    };
                    (-(step as f64), v, t)
                }
                None => (1.0, 0.0, t),
            })
            .collect();
        let cmp = |a: &(f64, f64, u32), b: &(f64, f64, u32)| {
            a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2))
        };
        let k = n_below - below.len();
        if k < keyed.len() {
            keyed.select_nth_unstable_by(k, cmp);
            keyed.truncate(k);
        }
        below.extend(keyed.iter().map(|k| k.2));
    }
    below.sort_unstable();
    split.mask.resize(state.trials.len(), false);
    for &t in &below {
        split.mask[t as usize] = true;
    }
    split.below = below;
    split.generation = Some(state.generation);
}

/// Optuna's default weights: of m observations in age order, the newest 25 weigh 1 and the
/// older ones ramp linearly from 1/m.
struct AgeWeights {
    flat_from: usize,
    start: f64,
    slope: f64,
}

impl AgeWeights {
    fn new(m: usize) -> Self {
        let flat_from = m.saturating_sub(25);
        let start = 1.0 / m.max(1) as f64;
        let slope = if flat_from > 1 { (1.0 - start) / (flat_from - 1) as f64 } else { 0.0 };
        Self { flat_from, start, slope }
    }

    fn at(&self, rank: usize) -> f64 {
        if rank >= self.flat_from { 1.0 } else { self.start + self.slope * rank as f64 }
    }
}

/// The good observations (value, weight) of a parameter by value; the bad ones go to `above`.
fn observations(
    cfg: &TpeConfig,
    split: &mut Split,
    liars: &mut Vec<(f64, u32)>,
    state: &StudyState,
    column: Option<&Column>,
    trial: Option<u64>,
    above: &mut Vec<(f64, f64)>,
) -> Vec<(f64, f64)> {
    above.clear();
    let Some(col) = column else { return Vec::new() };
    let mut below: Vec<(f64, f64)> = split.below.iter().filter_map(|&t| col.value(t)).map(|v| (v, 0.0)).collect();
    let weights = AgeWeights::new(below.len());
    for (i, b) in below.iter_mut().enumerate() {
        b.1 = weights.at(i);
    }
    below.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Running trials' values count as bad ones under the constant liar.
    liars.clear();
    if cfg.constant_liar {
        liars.extend(
            state
                .running
                .iter()
                .filter(|&&t| Some(u64::from(t)) != trial)
                .filter_map(|&t| col.value(t).map(|v| (v, t))),
        );
    }
    if split.rank.len() < state.trials.len() {
        split.rank.resize(state.trials.len(), 0);
    }
    // Age ranks: finished trials by number, merged with the running ones (also by number).
    let mut r = 0u32;
    let mut li = liars.iter().map(|l| l.1).peekable();
    for &t in &col.by_number {
        while let Some(l) = li.next_if(|&l| l < t) {
            split.rank[l as usize] = r;
            r += 1;
        }
        if !split.is_below(t) {
            split.rank[t as usize] = r;
            r += 1;
        }
    }
    for l in li {
        split.rank[l as usize] = r;
        r += 1;
    }
    let weights = AgeWeights::new(r as usize);
    liars.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut li = liars.iter().peekable();
    for &(v, t) in &col.by_value {
        while let Some(&(lv, lt)) = li.next_if(|&&(lv, _)| lv < v) {
            above.push((lv, weights.at(split.rank[lt as usize] as usize)));
        }
        if !split.is_below(t) {
            above.push((v, weights.at(split.rank[t as usize] as usize)));
        }
    }
    for &(lv, lt) in li {
        above.push((lv, weights.at(split.rank[lt as usize] as usize)));
    }
    below
}

/// A numeric parameter's space as TPE models it.
#[derive(Debug, Clone, Copy, Default)]
struct Space {
    low: f64,
    high: f64,
    /// 0 for a continuous space.
    step: f64,
}

impl Space {
    fn of(dist: &Distribution) -> Self {
        match *dist {
            Distribution::Float { low, high, log: true, .. } => Self { low: low.ln(), high: high.ln(), step: 0.0 },
            Distribution::Float { low, high, step, .. } => Self { low, high, step: step.unwrap_or(0.0) },
            Distribution::Int { low, high, step, log: true } => {
                let half = 0.5 * step as f64;
                Self { low: (low as f64 - half).ln(), high: (high as f64 + half).ln(), step: 0.0 }
            }
            Distribution::Int { low, high, step, .. } => Self { low: low as f64, high: high as f64, step: step as f64 },
            Distribution::Categorical { .. } => Self::default(),
        }
    }

    /// The bounds of the kernels' support.
    fn support(&self) -> (f64, f64) {
        (self.low - self.step / 2.0, self.high + self.step / 2.0)
    }
}

/// Kernels in value order, the prior among them; weights normalised.
#[derive(Debug, Default)]
struct Mixture {
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    weights: Vec<f64>,
    /// The magic-clip minimum bandwidth.
    min_sigma: f64,
    /// Kernels whose bandwidth is exactly `min_sigma`.
    narrow: Vec<bool>,
}

impl Mixture {
    /// Fits the estimator to `obs` (value, weight), sorted by value.
    fn fill(&mut self, cfg: &TpeConfig, obs: &[(f64, f64)], space: Space) {
        let range = space.high - space.low + space.step;
        let prior_mu = 0.5 * (space.low + space.high);
        let n = obs.len();
        let p = obs.partition_point(|o| o.0 <= prior_mu);
        self.mus.clear();
        self.mus.extend(obs[..p].iter().map(|o| o.0));
        self.mus.push(prior_mu);
        self.mus.extend(obs[p..].iter().map(|o| o.0));
        self.weights.clear();
        self.weights.extend(obs[..p].iter().map(|o| o.1));
        self.weights.push(cfg.prior_weight);
        self.weights.extend(obs[p..].iter().map(|o| o.1));
        let scale = 1.0 / self.weights.iter().sum::<f64>();
        for w in &mut self.weights {
            *w *= scale;
        }
        let (left, right) = space.support();
        self.min_sigma = if cfg.consider_magic_clip { range / (100f64).min(n as f64 + 2.0) } else { 1e-12 };
        self.sigmas.clear();
        self.narrow.clear();
        let mus = &self.mus;
        for j in 0..=n {
            if j == p {
                self.sigmas.push(range);
                self.narrow.push(false);
                continue;
            }
            let prev = if j == 0 { left } else { mus[j - 1] };
            let next = if j == n { right } else { mus[j + 1] };
            let mut s = (mus[j] - prev).max(next - mus[j]);
            if !cfg.consider_endpoints && n >= 1 {
                if j == 0 {
                    s = mus[1] - mus[0];
                } else if j == n {
                    s = mus[n] - mus[n - 1];
                }
            }
            let clipped = s.clamp(self.min_sigma, range);
            self.narrow.push(cfg.consider_magic_clip && clipped == self.min_sigma);
            self.sigmas.push(clipped);
        }
    }

    /// A draw, in the modelled space (on the grid for a stepped space).
    fn sample(&self, rng: &mut SplitMix64, space: Space) -> f64 {
        let u = rng.next_f64();
        let mut acc = 0.0;
        let mut k = self.weights.len() - 1;
        for (i, w) in self.weights.iter().enumerate() {
            acc += w;
            if u < acc {
                k = i;
                break;
            }
        }
        let (lo, hi) = space.support();
        let x = truncated_normal(rng, self.mus[k], self.sigmas[k], lo, hi);
        if space.step > 0.0 {
            round_to_step(x, space.low, space.high, space.step)
        } else {
            x.clamp(space.low, space.high)
        }
    }
}

/// A kernel ready to evaluate: `coef · exp(−½((x − mu)/σ)²)` in a continuous space, or
/// `coef · (mass of the cell of x)` in a stepped one.
#[derive(Debug, Clone, Copy)]
struct Kernel {
    mu: f64,
    inv_sigma: f64,
    coef: f64,
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Kernels further than this many σ from a point are left out: each would add less than
/// e^(−45) ≈ 3e-20 of its peak.
const REACH_SIGMAS: f64 = 9.5;

/// The truncated mass of a kernel over the support.
fn support_mass(mu: f64, sigma: f64, space: Space) -> f64 {
    let (lo, hi) = space.support();
    if mu - lo > 9.0 * sigma && hi - mu > 9.0 * sigma {
        return 1.0; // 1 − 2Φ(−9) rounds to 1
    }
    gauss_mass((lo - mu) / sigma, (hi - mu) / sigma)
}

fn cell_mass(x: f64, k: &Kernel, space: Space) -> f64 {
    let half = space.step / 2.0;
    let (lo, hi) = space.support();
    let a = ((x - half).max(lo) - k.mu) * k.inv_sigma;
    let b = ((x + half).min(hi) - k.mu) * k.inv_sigma;
    gauss_mass(a, b)
}

/// The number of Hermite terms kept per box of the fast Gauss transform.
const FGT_TERMS: usize = 16;
/// Boxes visited on each side of a point: 19 boxes of σ/2, every kernel within 9.5 σ.
const FGT_REACH: i64 = 19;
/// 1/k!, so that the moments need no division.
const INV_FACT: [f64; FGT_TERMS] = {
    let mut inv = [1.0; FGT_TERMS];
    let mut k = 1;
    while k < FGT_TERMS {
        inv[k] = inv[k - 1] / k as f64;
        k += 1;
    }
    inv
};
/// Below this many narrow kernels, direct evaluation is as fast.
const FGT_MIN_KERNELS: usize = 256;

/// The sum of many Gaussians of one bandwidth σ, by the fast Gauss transform (Greengard and
/// Strain, 1991).
///
/// Kernels are binned into boxes of width σ/2. For a kernel at μ in the box centred at c and
/// a point x, with s = (μ − c)/σ (|s| ≤ ¼) and t = (x − c)/σ, the generating function of the
/// Hermite polynomials gives exp(−½(t − s)²) = exp(−½t²) · Σₖ Heₖ(t) · sᵏ/k!. Each box keeps
/// the moments Σ coef · sᵏ/k! for k < 16 (multiplications only, no `exp`), and a
/// point sums the 39 boxes within 9.5 σ. By Cramér's inequality |Heₖ(t)| ≤ 1.09 √(k!) e^(t²/4),
/// so the dropped terms k ≥ 16 add at most 1.09 e^(−t²/4) (¼)¹⁶/√(16!) < 6e-17 of a kernel's
/// peak, and the boxes left out at most e^(−45) ≈ 3e-20. The prior alone keeps g(x) above
/// 0.35/(range · Σ weights) and the kernels' peaks sum to at most 1/σ ≤ 100/range, so g's
/// relative error stays below 1e-9 with 10,000 trials.
#[derive(Debug, Default)]
struct Fgt {
    active: bool,
    low: f64,
    h: f64,
    inv_h: f64,
    inv_sigma: f64,
    moments: Vec<[f64; FGT_TERMS]>,
    used: Vec<bool>,
    /// The box being summed and its moments so far (kernels arrive sorted by value, so each
    /// box's moments are summed in registers and stored once).
    open: Option<(usize, [f64; FGT_TERMS])>,
}

impl Fgt {
    fn reset(&mut self, space: Space, sigma: f64) {
        self.active = true;
        self.low = space.low;
        self.h = sigma / 2.0;
        self.inv_h = 2.0 / sigma;
        self.inv_sigma = 1.0 / sigma;
        let boxes = (((space.high - space.low) * self.inv_h).ceil() as usize).max(1);
        self.moments.clear();
        self.moments.resize(boxes, [0.0; FGT_TERMS]);
        self.used.clear();
        self.used.resize(boxes, false);
        self.open = None;
    }

    fn add(&mut self, mu: f64, coef: f64) {
        let last = self.moments.len() - 1;
        let b = (((mu - self.low) * self.inv_h).max(0.0) as usize).min(last);
        let s = (mu - (self.low + (b as f64 + 0.5) * self.h)) * self.inv_sigma;
        if self.open.is_some_and(|(ob, _)| ob != b) {
            self.close();
        }
        let acc = &mut self.open.get_or_insert((b, [0.0; FGT_TERMS])).1;
        // Powers of s in a shallow tree rather than one long chain of multiplications.
        let mut p = [1.0; FGT_TERMS];
        p[1] = s;
        p[2] = s * s;
        p[3] = p[2] * s;
        p[4] = p[2] * p[2];
        for k in 5..8 {
            p[k] = p[4] * p[k - 4];
        }
        p[8] = p[4] * p[4];
        for k in 9..FGT_TERMS {
            p[k] = p[8] * p[k - 8];
        }
        for k in 0..FGT_TERMS {
            acc[k] += coef * p[k] * INV_FACT[k];
        }
    }

    /// Stores the open box's moments.
    fn close(&mut self) {
        if let Some((b, acc)) = self.open.take() {
            for (m, a) in self.moments[b].iter_mut().zip(acc) {
                *m += a;
            }
            self.used[b] = true;
        }
    }

    fn eval(&self, x: f64) -> f64 {
        if !self.active {
            return 0.0;
        }
        let n = self.moments.len() as i64;
        let b0 = ((x - self.low) * self.inv_h).floor() as i64;
        let mut sum = 0.0;
        for b in (b0 - FGT_REACH).max(0)..=(b0 + FGT_REACH).min(n - 1) {
            let b = b as usize;
            if !self.used[b] {
                continue;
            }
            let t = (x - (self.low + (b as f64 + 0.5) * self.h)) * self.inv_sigma;
            let m = &self.moments[b];
            // He₀ = 1, He₁ = t, Heₖ₊₁ = t·Heₖ − k·Heₖ₋₁.
            let (mut h0, mut h1) = (1.0, t);
            let mut acc = m[0] + m[1] * t;
            for (k, mk) in m.iter().enumerate().skip(2) {
                let h2 = t * h1 - (k - 1) as f64 * h0;
                acc += mk * h2;
                h0 = h1;
                h1 = h2;
            }
            sum += (-0.5 * t * t).exp() * acc;
        }
        sum
    }
}

/// A mixture prepared for evaluation at many points.
#[derive(Debug, Default)]
struct Density {
    space: Space,
    direct: Vec<Kernel>,
    fgt: Fgt,
    /// Narrow kernels of a stepped space, equal values merged, by value; and their σ.
    grouped: Vec<Kernel>,
    grouped_sigma: f64,
}

impl Density {
    fn fill(&mut self, mix: &Mixture, space: Space, fast: bool) {
        self.space = space;
        self.direct.clear();
        self.grouped.clear();
        self.grouped_sigma = mix.min_sigma;
        self.fgt.active = false;
        let split = fast && mix.narrow.iter().filter(|n| **n).count() >= FGT_MIN_KERNELS;
        if split && space.step == 0.0 {
            self.fgt.reset(space, mix.min_sigma);
        }
        let narrow_inv = 1.0 / mix.min_sigma;
        for i in 0..mix.mus.len() {
            let (mu, sigma) = (mix.mus[i], mix.sigmas[i]);
            let inv_sigma = if mix.narrow[i] { narrow_inv } else { 1.0 / sigma };
            let z = support_mass(mu, sigma, space);
            let mut coef = mix.weights[i] / z;
            if space.step == 0.0 {
                coef *= FRAC_1_SQRT_2PI * inv_sigma;
            }
            if !(split && mix.narrow[i]) {
                self.direct.push(Kernel { mu, inv_sigma, coef });
            } else if space.step == 0.0 {
                self.fgt.add(mu, coef);
            } else {
                match self.grouped.last_mut() {
                    Some(g) if g.mu == mu => g.coef += coef,
                    _ => self.grouped.push(Kernel { mu, inv_sigma, coef }),
                }
            }
        }
        self.fgt.close();
    }

    fn pdf(&self, x: f64) -> f64 {
        let space = self.space;
        let mut sum = 0.0;
        if space.step > 0.0 {
            let half = space.step / 2.0;
            for k in &self.direct {
                if ((x - k.mu).abs() - half) * k.inv_sigma < REACH_SIGMAS {
                    sum += k.coef * cell_mass(x, k, space);
                }
            }
            let reach = REACH_SIGMAS * self.grouped_sigma + half;
            let from = self.grouped.partition_point(|k| k.mu < x - reach);
            for k in self.grouped[from..].iter().take_while(|k| k.mu <= x + reach) {
                sum += k.coef * cell_mass(x, k, space);
            }
        } else {
            for k in &self.direct {
                let z = (x - k.mu) * k.inv_sigma;
                let q = z * z;
                if q < REACH_SIGMAS * REACH_SIGMAS {
                    sum += k.coef * (-0.5 * q).exp();
                }
            }
            sum += self.fgt.eval(x);
        }
        sum
    }
}

/// The categorical mixture's probability of each choice: each observed kernel puts
/// `prior_weight / (n + 1)` on every choice and 1 more on its own, normalised; the prior is
/// uniform.
fn categorical_pmf(cfg: &TpeConfig, obs: &[(f64, f64)], choices: usize) -> Vec<f64> {
    let c = choices as f64;
    if obs.is_empty() {
        return vec![1.0 / c; choices];
    }
    let eps = cfg.prior_weight / (obs.len() as f64 + 1.0);
    let row = 1.0 + c * eps;
    let mut pmf = vec![0.0; choices];
    let mut observed = 0.0;
    for &(v, w) in obs {
        observed += w;
        if let Some(p) = pmf.get_mut(v as usize) {
            *p += w;
        }
    }
    let total = observed + cfg.prior_weight;
    let base = observed * eps / row + cfg.prior_weight / c;
    for p in &mut pmf {
        *p = (*p / row + base) / total;
    }
    pmf
}

/// The estimators of one parameter; a numeric one's g(x) is `TpeScratch::density`.
enum Estimators {
    Numeric { space: Space, below: Box<(Mixture, Density)> },
    Categorical { below: Vec<f64>, above: Vec<f64> },
}

fn estimators(
    cfg: &TpeConfig,
    scratch: &mut TpeScratch,
    state: &StudyState,
    trial: Option<u64>,
    name: &str,
    dist: &Distribution,
) -> Estimators {
    ensure_split(cfg, &mut scratch.split, state);
    let column = state.column(name).filter(|c| &c.dist == dist);
    let below_obs = observations(cfg, &mut scratch.split, &mut scratch.liars, state, column, trial, &mut scratch.above);
    match dist {
        Distribution::Categorical { choices } => Estimators::Categorical {
            below: categorical_pmf(cfg, &below_obs, choices.len()),
            above: categorical_pmf(cfg, &scratch.above, choices.len()),
        },
        _ => {
            let space = Space::of(dist);
            let mut below = Mixture::default();
            below.fill(cfg, &below_obs, space);
            let mut below_density = Density::default();
            below_density.fill(&below, space, false);
            scratch.mix.fill(cfg, &scratch.above, space);
            scratch.density.fill(&scratch.mix, space, true);
            Estimators::Numeric { space, below: Box::new((below, below_density)) }
        }
    }
}

/// The TPE suggestion (internal representation) of `name` for `trial`.
pub(crate) fn sample(
    cfg: &TpeConfig,
    scratch: &mut TpeScratch,
    state: &StudyState,
    trial: u64,
    name: &str,
    dist: &Distribution,
) -> f64 {
    if let Some(v) = dist.single() {
        return v;
    }
    let mut rng = rng_for(cfg.seed, trial, name);
    if state.n_finished() < cfg.n_startup_trials {
        return sample_random(dist, &mut rng);
    }
    let mut best = (f64::NEG_INFINITY, f64::NAN);
    match estimators(cfg, scratch, state, Some(trial), name, dist) {
        Estimators::Categorical { below, above } => {
            for _ in 0..cfg.n_ei_candidates {
                let u = rng.next_f64();
                let mut acc = 0.0;
                let mut pick = below.len() - 1;
                for (i, p) in below.iter().enumerate() {
                    acc += p;
                    if u < acc {
                        pick = i;
                        break;
                    }
                }
                let score = below[pick].ln() - above[pick].ln();
                if score > best.0 || best.1.is_nan() {
                    best = (score, pick as f64);
                }
            }
            best.1
        }
        Estimators::Numeric { space, below } => {
            let (below, below_density) = &*below;
            for _ in 0..cfg.n_ei_candidates {
                let x = below.sample(&mut rng, space);
                let score = below_density.pdf(x).ln() - scratch.density.pdf(x).ln();
                if score > best.0 || best.1.is_nan() {
                    best = (score, x);
                }
            }
            untransform(dist, best.1)
        }
    }
}

/// From the modelled space back to the internal representation.
fn untransform(dist: &Distribution, x: f64) -> f64 {
    match *dist {
        Distribution::Float { low, high, log: true, .. } => x.exp().clamp(low, high),
        Distribution::Float { low, high, step: Some(step), .. } => round_to_step(x, low, high, step),
        Distribution::Float { low, high, .. } => x.clamp(low, high),
        Distribution::Int { low, high, step, log } => {
            let v = if log { x.exp() } else { x };
            round_to_step(v, low as f64, high as f64, step as f64)
        }
        Distribution::Categorical { .. } => x,
    }
}

/// log l(x) and log g(x) at internal values `xs` (for diagnostics and plots).
pub(crate) fn log_densities(
    cfg: &TpeConfig,
    scratch: &mut TpeScratch,
    state: &StudyState,
    name: &str,
    dist: &Distribution,
    xs: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    match estimators(cfg, scratch, state, None, name, dist) {
        Estimators::Categorical { below, above } => {
            let at = |p: &[f64], x: f64| p.get(x as usize).map_or(f64::NEG_INFINITY, |p| p.ln());
            (xs.iter().map(|&x| at(&below, x)).collect(), xs.iter().map(|&x| at(&above, x)).collect())
        }
        Estimators::Numeric { below, .. } => {
            let below_density = &below.1;
            let t: Vec<f64> = xs.iter().map(|&x| dist.transform(x)).collect();
            (
                t.iter().map(|&x| below_density.pdf(x).ln()).collect(),
                t.iter().map(|&x| scratch.density.pdf(x).ln()).collect(),
            )
        }
    }
}
