//! Special functions shared by the samplers and the curation statistics: the gamma function and
//! its logarithm (Lanczos' approximation, g = 7, 9 terms).

use std::f64::consts::PI;

/// Lanczos' coefficients for g = 7.
const LANCZOS: [f64; 9] = [
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
const LANCZOS_G: f64 = 7.0;

/// For `x ≥ 0.5`: `(x − 1, t = x − 1 + g + ½, the series A)`, so that `Γ(x) = √(2π)·t^(x−½)·e^(−t)·A`.
fn lanczos(x: f64) -> (f64, f64, f64) {
    let x = x - 1.0;
    let t = x + LANCZOS_G + 0.5;
    let mut a = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    (x, t, a)
}

/// The gamma function (relative error below 1e-13 for x > 0; reflection below ½).
pub fn gamma(x: f64) -> f64 {
    if x < 0.5 {
        return PI / ((PI * x).sin() * gamma(1.0 - x));
    }
    let (x, t, a) = lanczos(x);
    (2.0 * PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * a
}

/// `ln |Γ(x)|`, without the overflow of `gamma(x).ln()` for large `x`.
pub fn ln_gamma(x: f64) -> f64 {
    if x < 0.5 {
        return (PI / (PI * x).sin().abs()).ln() - ln_gamma(1.0 - x);
    }
    let (x, t, a) = lanczos(x);
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((gamma(1.0) - 1.0).abs() < 1e-12);
        assert!((gamma(5.0) - 24.0).abs() < 1e-10);
        assert!((gamma(0.5) - PI.sqrt()).abs() < 1e-12);
        assert!((gamma(0.1) - 9.513_507_698_668_732).abs() < 1e-9);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - PI.sqrt().ln()).abs() < 1e-13);
        // Γ(200) overflows f64; its logarithm does not (Stirling: 857.93…).
        assert!(gamma(200.0).is_infinite() && (ln_gamma(200.0) - 857.933_669_825_857_5).abs() < 1e-9);
    }
}
