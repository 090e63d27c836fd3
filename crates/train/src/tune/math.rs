//! The few special functions TPE needs: the normal distribution's tails to full relative
//! precision (for truncation constants and the mass of a discrete cell far from a kernel),
//! and normal and truncated-normal draws from kiln's fixed generator.

use kiln_data::SplitMix64;

/// The complementary error function, to about one ulp: fdlibm's rational approximations
/// (FreeBSD `s_erf.c`, as ported to Rust by the `libm` crate), of which this keeps the erfc
/// half. A continued fraction converges too slowly near x = 2 for TPE, which evaluates erfc
/// for every kernel near a bound.
///
/// Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
/// Developed at SunPro, a Sun Microsystems, Inc. business.
/// Permission to use, copy, modify, and distribute this software is freely granted,
/// provided that this notice is preserved.
#[allow(clippy::excessive_precision)]
pub(crate) fn erfc(x: f64) -> f64 {
    const ERX: f64 = 8.45062911510467529297e-01;
    const PP: [f64; 5] = [
        1.28379167095512558561e-01,
        -3.25042107247001499370e-01,
        -2.84817495755985104766e-02,
        -5.77027029648944159157e-03,
        -2.37630166566501626084e-05,
    ];
    const QQ: [f64; 5] = [
        3.97917223959155352819e-01,
        6.50222499887672944485e-02,
        5.08130628187576562776e-03,
        1.32494738004321644526e-04,
        -3.96022827877536812320e-06,
    ];
    const PA: [f64; 7] = [
        -2.36211856075265944077e-03,
        4.14856118683748331666e-01,
        -3.72207876035701323847e-01,
        3.18346619901161753674e-01,
        -1.10894694282396677476e-01,
        3.54783043256182359371e-02,
        -2.16637559486879084300e-03,
    ];
    const QA: [f64; 6] = [
        1.06420880400844228286e-01,
        5.40397917702171048937e-01,
        7.18286544141962662868e-02,
        1.26171219808761642112e-01,
        1.36370839120290507362e-02,
        1.19844998467991074170e-02,
    ];
    const RA: [f64; 8] = [
        -9.86494403484714822705e-03,
        -6.93858572707181764372e-01,
        -1.05586262253232909814e+01,
        -6.23753324503260060396e+01,
        -1.62396669462573470355e+02,
        -1.84605092906711035994e+02,
        -8.12874355063065934246e+01,
        -9.81432934416914548592e+00,
    ];
    const SA: [f64; 8] = [
        1.96512716674392571292e+01,
        1.37657754143519042600e+02,
        4.34565877475229228821e+02,
        6.45387271733267880336e+02,
        4.29008140027567833386e+02,
        1.08635005541779435134e+02,
        6.57024977031928170135e+00,
        -6.04244152148580987438e-02,
    ];
    const RB: [f64; 7] = [
        -9.86494292470009928597e-03,
        -7.99283237680523006574e-01,
        -1.77579549177547519889e+01,
        -1.60636384855821916062e+02,
        -6.37566443368389627722e+02,
        -1.02509513161107724954e+03,
        -4.83519191608651397019e+02,
    ];
    const SB: [f64; 7] = [
        3.03380607434824582924e+01,
        3.25792512996573918826e+02,
        1.53672958608443695994e+03,
        3.19985821950859553908e+03,
        2.55305040643316442583e+03,
        4.74528541206955367215e+02,
        -2.24409524465858183362e+01,
    ];
    /// c₀ + z·c₁ + z²·c₂ + ...
    fn poly(c: &[f64], z: f64) -> f64 {
        c.iter().rev().fold(0.0, |acc, &k| acc * z + k)
    }
    if x.is_nan() {
        return f64::NAN;
    }
    let ax = x.abs();
    if ax < 0.84375 {
        if ax < 1.3877787807814457e-17 {
            return 1.0 - x;
        }
        let z = x * x;
        let y = poly(&PP, z) / (1.0 + z * poly(&QQ, z));
        return if x < 0.25 { 1.0 - (x + x * y) } else { 0.5 - (x - 0.5 + x * y) };
    }
    let upper = if ax < 1.25 {
        let s = ax - 1.0;
        1.0 - ERX - poly(&PA, s) / (1.0 + s * poly(&QA, s))
    } else if ax < 28.0 {
        let s = 1.0 / (ax * ax);
        let (r, big_s) = if ax < 1.0 / 0.35 {
            (poly(&RA, s), 1.0 + s * poly(&SA, s))
        } else {
            (poly(&RB, s), 1.0 + s * poly(&SB, s))
        };
        // exp(−x²) as exp(−z²)·exp((z − x)(z + x)), z being x cut to 32 bits: z² is exact.
        let z = f64::from_bits(ax.to_bits() & 0xFFFF_FFFF_0000_0000);
        (-z * z - 0.5625).exp() * ((z - ax) * (z + ax) + r / big_s).exp() / ax
    } else {
        0.0
    };
    if x < 0.0 { 2.0 - upper } else { upper }
}

/// P(Z > z) for a standard normal Z, precise in the upper tail.
pub(crate) fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z * std::f64::consts::FRAC_1_SQRT_2)
}

/// P(a < Z < b) for a standard normal Z (`a <= b`), computed in the tail the interval lies
/// in so that the mass of a cell far from the mean keeps its relative precision.
pub(crate) fn gauss_mass(a: f64, b: f64) -> f64 {
    if a >= 0.0 {
        (upper_tail(a) - upper_tail(b)).max(0.0)
    } else if b <= 0.0 {
        (upper_tail(-b) - upper_tail(-a)).max(0.0)
    } else {
        (1.0 - upper_tail(-a) - upper_tail(b)).max(0.0)
    }
}

/// A standard normal draw (Box–Muller, one draw per call so the stream is easy to reason about).
pub(crate) fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A draw from N(mu, sigma²) truncated to [low, high].
///
/// TPE's kernels are centred inside their bounds with a bandwidth no wider than the bounds, so
/// the truncated mass is at least Φ(1) − Φ(0) ≈ 0.34 and rejection needs three draws on
/// average. After 64 rejections (probability below 1e-11) a uniform draw in the bounds is used.
pub(crate) fn truncated_normal(rng: &mut SplitMix64, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    if high <= low {
        return low;
    }
    for _ in 0..64 {
        let x = mu + sigma * normal(rng);
        if (low..=high).contains(&x) {
            return x;
        }
    }
    low + (high - low) * rng.next_f64()
}
