//! Special functions for the drift tests: the regularised incomplete gamma function (for the
//! chi-square and normal tails) and the two-sample Kolmogorov–Smirnov distribution.

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; relative error around 1e-15).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(π x).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularised upper incomplete gamma function `Q(a, x) = Γ(a, x) / Γ(a)`.
pub(crate) fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series for P(a, x), then Q = 1 - P.
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut ap = a;
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        1.0 - sum * log_prefix.exp()
    } else {
        // Continued fraction for Q(a, x) (modified Lentz).
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        log_prefix.exp() * h
    }
}

/// The chi-square distribution's survival function `P(X ≥ x)` with `dof` degrees of freedom.
pub(crate) fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    gamma_q(dof / 2.0, x / 2.0)
}

/// `erfc(x)`.
pub(crate) fn erfc(x: f64) -> f64 {
    if x >= 0.0 { gamma_q(0.5, x * x) } else { 2.0 - gamma_q(0.5, x * x) }
}

/// The standard normal survival function `P(Z ≥ z)`.
pub(crate) fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// NumPy's default (linear) quantile of sorted, non-empty values, `q` in [0, 1]. Like NumPy's
/// `_lerp`, it interpolates from the nearer end, so `q = 1` gives the maximum exactly.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = h - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    if t >= 0.5 { b - (b - a) * (1.0 - t) } else { a + (b - a) * t }
}

/// `bins + 1` equal-width edges from `lo` to `hi` as `np.linspace` makes them (`lo + i·step`,
/// the last exactly `hi`); an empty range is widened by 0.5 on each side, as NumPy does.
pub(crate) fn equal_width_edges(lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let (lo, hi) = if lo == hi { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let step = (hi - lo) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins).map(|i| i as f64 * step + lo).collect();
    edges[bins] = hi;
    edges
}

/// `np.histogram(sorted, edges)[0]`: values per bin `[e_i, e_{i+1})`, the last bin closed.
pub(crate) fn histogram_counts(sorted: &[f64], edges: &[f64]) -> Vec<u64> {
    let bins = edges.len() - 1;
    let mut cumulative: Vec<usize> = edges[..bins].iter().map(|e| sorted.partition_point(|v| v < e)).collect();
    cumulative.push(sorted.partition_point(|v| *v <= edges[bins]));
    cumulative.windows(2).map(|w| (w[1] - w[0]) as u64).collect()
}

/// The most lattice cells the exact Kolmogorov–Smirnov p-value may visit; beyond it the
/// asymptotic distribution is used.
const KS_EXACT_BUDGET: u128 = 500_000_000;

/// The two-sided p-value of the two-sample Kolmogorov–Smirnov statistic for samples of sizes
/// `m` and `n` whose ECDFs differ by at most `max_gap / (m n)` (that is, `max_gap` is the
/// largest `|i n - j m|` over the merged data).
///
/// Exact: the share of monotone lattice paths from (0, 0) to (m, n) that touch the band
/// `|i n - j m| ≥ max_gap`, by dynamic programming over the band's inside with each cell
/// normalised by its binomial coefficient (no overflow). This is what SciPy's
/// `ks_2samp(method="exact")` computes. The work is about `2 max_gap + m` cells; above
/// [`KS_EXACT_BUDGET`] the asymptotic Kolmogorov distribution with Stephens' correction is
/// used instead (p-values there are far below any threshold).
pub(crate) fn ks_two_sample_sf(m: u64, n: u64, max_gap: u128) -> f64 {
    if max_gap == 0 || m == 0 || n == 0 {
        return 1.0;
    }
    let (m, n) = if m >= n { (m, n) } else { (n, m) };
    if 2 * max_gap + u128::from(m) > KS_EXACT_BUDGET {
        let en = (m as f64) * (n as f64) / ((m + n) as f64);
        let d = max_gap as f64 / ((m as f64) * (n as f64));
        return kolmogorov_sf((en.sqrt() + 0.12 + 0.11 / en.sqrt()) * d);
    }
    let (mw, nw) = (u128::from(m), u128::from(n));
    let nu = n as usize;
    // row[j] = P(a random path reaches (i, j) having stayed inside) / 1, normalised so that
    // row[j] is the share of the C(i + j, j) paths to (i, j) that stayed inside.
    let mut row = vec![0.0f64; nu + 1];
    // Row i = 0: inside while j m < max_gap.
    let mut hi = 0usize;
    for (j, cell) in row.iter_mut().enumerate() {
        if (j as u128) * mw < max_gap {
            *cell = 1.0;
            hi = j;
        } else {
            break;
        }
    }
    // Cells left of the band are never read again: the band only moves right.
    for i in 1..=m {
        let iw = u128::from(i);
        let center = iw * nw; // |i n - j m| < max_gap  <=>  center - max_gap < j m < center + max_gap
        let new_lo = if center >= max_gap { ((center - max_gap) / mw + 1) as usize } else { 0 };
        let upper = center + max_gap; // j m < upper
        let new_hi = (((upper - 1) / mw) as usize).min(nu);
        if new_lo > new_hi {
            return 1.0;
        }
        let fi = i as f64;
        let mut left = 0.0; // p(i, j - 1), zero outside the band
        for (j, cell) in row.iter_mut().enumerate().take(new_hi + 1).skip(new_lo) {
            let fj = j as f64;
            let up = if j <= hi { *cell } else { 0.0 }; // p(i - 1, j)
            let value = (up * fi + left * fj) / (fi + fj);
            *cell = value;
            left = value;
        }
        hi = new_hi;
    }
    let inside = if hi == nu { row[nu] } else { 0.0 };
    (1.0 - inside).clamp(0.0, 1.0)
}

/// The Kolmogorov distribution's survival function `Q(λ) = 2 Σ (-1)^(k-1) exp(-2 k² λ²)`.
pub(crate) fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..200 {
        let k = f64::from(k);
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += if k as u32 % 2 == 1 { term } else { -term };
        if term < 1e-17 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_functions_match_known_values() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        // chi2.sf(3.84145882, 1) = 0.05; chi2.sf(10, 4) = 0.040427681994512805 (SciPy).
        assert!((chi2_sf(3.841_458_820_694_124, 1.0) - 0.05).abs() < 1e-12);
        assert!((chi2_sf(10.0, 4.0) - 0.040_427_681_994_512_805).abs() < 1e-14);
        // norm.sf(1.96) = 0.024997895148220435; norm.sf(-1) = 0.8413447460685429.
        assert!((normal_sf(1.96) - 0.024_997_895_148_220_435).abs() < 1e-15);
        assert!((normal_sf(-1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
    }

    #[test]
    fn exact_ks_matches_the_closed_form_for_equal_sizes() {
        // SciPy's _compute_prob_outside_square(n, h): paths leaving |x - y| < h.
        fn outside_square(n: u64, h: u64) -> f64 {
            let mut p = 0.0;
            let mut k = (n / h) as i64;
            while k >= 0 {
                let mut p1 = 1.0;
                for j in 0..h {
                    let (k, j) = (k as f64, j as f64);
                    p1 = (n as f64 - k * h as f64 - j) * p1 / (n as f64 + k * h as f64 + j + 1.0);
                }
                p = p1 * (1.0 - p);
                k -= 1;
            }
            2.0 * p
        }
        for (n, h) in [(10u64, 3u64), (50, 9), (200, 25), (1000, 60)] {
            let exact = ks_two_sample_sf(n, n, u128::from(h) * u128::from(n));
            let closed = outside_square(n, h);
            assert!((exact - closed).abs() < 1e-12, "n {n} h {h}: {exact} vs {closed}");
        }
    }
}
