//! BRISQUE (Mittal, Moorthy & Bovik, "No-reference image quality assessment in the spatial
//! domain", IEEE TIP 2012), natively: 36 natural-scene-statistics features and the published
//! epsilon-SVR regressor.
//!
//! Features, at two scales (the picture and its half-size version): a GGD fit of the MSCN
//! coefficients (shape α, variance σ²) and AGGD fits of the horizontal, vertical and both diagonal
//! neighbour products (shape ν, mean η, σ_l², σ_r²): 2 + 4 × 4 = 18 per scale. They are scaled to
//! [−1, 1] with the model's per-feature minima and maxima and fed to the libsvm RBF support
//! vector regressor, whose value is the score: about 0 for pristine pictures, 100 and more for
//! badly distorted ones (a DMOS-like scale: lower is better).
//!
//! The model files come from the `brisque==0.2.0` PyPI package (Apache-2.0): `svm.txt` (libsvm
//! text format, parsed here) and `normalize.pickle`, which `scripts/fetch-models.sh` converts once
//! into `brisque_normalize.json` (`{"min_": [36 numbers], "max_": [36 numbers]}`) with Python's
//! standard `pickle` module (the pickle holds plain floats).

pub use super::nss::ModelError;
use super::nss::{self, Border, Plane};
use std::path::Path;

/// Number of BRISQUE features.
pub const FEATURES: usize = 36;
/// File names under `.cache/models/` that `scripts/fetch-models.sh` writes.
pub const SVM_FILE: &str = "brisque_svm.txt";
pub const NORMALIZE_FILE: &str = "brisque_normalize.json";

/// The kernel of a libsvm model (the ones BRISQUE models use).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kernel {
    Linear,
    Rbf { gamma: f64 },
}

/// A libsvm epsilon-SVR / nu-SVR model: `f(x) = Σ coef_i K(sv_i, x) − ρ`.
#[derive(Clone, Debug, PartialEq)]
pub struct SvrModel {
    pub kernel: Kernel,
    pub rho: f64,
    pub coefs: Vec<f64>,
    /// Support vectors, dense, `dim` values each (absent indices are 0).
    pub svs: Vec<f64>,
    pub dim: usize,
}

impl SvrModel {
    /// Parse libsvm's text model format (`svm_type`, `kernel_type`, `gamma`, `rho`, …, `SV`, then
    /// one support vector per line: `coef index:value …`, indices 1-based).
    pub fn parse(text: &str, path: &Path) -> Result<SvrModel, ModelError> {
        let perr = |line: usize, reason: String| ModelError::Parse { path: path.to_path_buf(), line, reason };
        let mut lines = text.lines().enumerate();
        let (mut svm_type, mut kernel_type, mut gamma, mut rho) = (None, None, None, None);
        for (i, line) in lines.by_ref() {
            let line = line.trim();
            if line == "SV" {
                break;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            let num = |v: &str| v.trim().parse::<f64>().map_err(|e| perr(i + 1, format!("`{key}`: {e}")));
            match key {
                "svm_type" => svm_type = Some(value.trim().to_string()),
                "kernel_type" => kernel_type = Some(value.trim().to_string()),
                "gamma" => gamma = Some(num(value)?),
                "rho" => rho = Some(num(value)?),
                _ => {}
            }
        }
        let svm_type = svm_type.ok_or_else(|| perr(0, "no `svm_type` line".into()))?;
        if svm_type != "epsilon_svr" && svm_type != "nu_svr" {
            return Err(perr(0, format!("svm_type `{svm_type}` is not a regression model (epsilon_svr or nu_svr)")));
        }
        let kernel = match kernel_type.as_deref() {
            Some("rbf") => {
                Kernel::Rbf { gamma: gamma.ok_or_else(|| perr(0, "an rbf model needs a `gamma` line".into()))? }
            }
            Some("linear") => Kernel::Linear,
            Some(k) => return Err(perr(0, format!("kernel_type `{k}` is not supported (rbf, linear)"))),
            None => return Err(perr(0, "no `kernel_type` line".into())),
        };
        let rho = rho.ok_or_else(|| perr(0, "no `rho` line".into()))?;
        let mut rows: Vec<(f64, Vec<(usize, f64)>)> = Vec::new();
        let mut dim = 0;
        for (i, line) in lines {
            let mut parts = line.split_whitespace();
            let Some(coef) = parts.next() else { continue };
            let coef = coef.parse::<f64>().map_err(|e| perr(i + 1, format!("coefficient: {e}")))?;
            let mut entries = Vec::new();
            for p in parts {
                let (idx, val) = p.split_once(':').ok_or_else(|| perr(i + 1, format!("`{p}` is not index:value")))?;
                let idx = idx.parse::<usize>().map_err(|e| perr(i + 1, format!("index `{idx}`: {e}")))?;
                let val = val.parse::<f64>().map_err(|e| perr(i + 1, format!("value `{val}`: {e}")))?;
                if idx == 0 {
                    return Err(perr(i + 1, "indices are 1-based".into()));
                }
                dim = dim.max(idx);
                entries.push((idx - 1, val));
            }
            rows.push((coef, entries));
        }
        if rows.is_empty() {
            return Err(perr(0, "no support vectors after `SV`".into()));
        }
        let mut svs = vec![0f64; rows.len() * dim];
        let mut coefs = Vec::with_capacity(rows.len());
        for (k, (c, entries)) in rows.into_iter().enumerate() {
            coefs.push(c);
            for (j, v) in entries {
                svs[k * dim + j] = v;
            }
        }
        Ok(SvrModel { kernel, rho, coefs, svs, dim })
    }

    /// The regression value at `x` (missing trailing features count as 0).
    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut sum = 0.0;
        for (k, c) in self.coefs.iter().enumerate() {
            let sv = &self.svs[k * self.dim..(k + 1) * self.dim];
            let kv = match self.kernel {
                Kernel::Linear => sv.iter().zip(x).map(|(a, b)| a * b).sum::<f64>(),
                Kernel::Rbf { gamma } => {
                    let mut d = 0.0;
                    for (j, a) in sv.iter().enumerate() {
                        let b = x.get(j).copied().unwrap_or(0.0);
                        d += (a - b) * (a - b);
                    }
                    (-gamma * d).exp()
                }
            };
            sum += c * kv;
        }
        sum - self.rho
    }
}

/// A BRISQUE model: the regressor and the feature ranges it was trained on.
#[derive(Clone, Debug, PartialEq)]
pub struct Brisque {
    pub svr: SvrModel,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
}

fn read(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::Read { path: path.to_path_buf(), reason: e.to_string() })
}

impl Brisque {
    /// Load `svm.txt` (libsvm) and the normalisation JSON.
    pub fn load(svm: &Path, normalize: &Path) -> Result<Brisque, ModelError> {
        let svr = SvrModel::parse(&read(svm)?, svm)?;
        let invalid = |reason: String| ModelError::Invalid { path: normalize.to_path_buf(), reason };
        let json: serde_json::Value =
            serde_json::from_str(&read(normalize)?).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let arr = |key: &str| -> Result<Vec<f64>, ModelError> {
            json.get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| invalid(format!("no `{key}` array")))?
                .iter()
                .map(|v| v.as_f64().ok_or_else(|| invalid(format!("`{key}` holds a non-number"))))
                .collect()
        };
        let (min, max) = (arr("min_")?, arr("max_")?);
        if min.len() != FEATURES || max.len() != FEATURES {
            return Err(invalid(format!(
                "expected {FEATURES} minima and maxima, found {} and {}",
                min.len(),
                max.len()
            )));
        }
        if min.iter().zip(&max).any(|(a, b)| b.partial_cmp(a) != Some(std::cmp::Ordering::Greater)) {
            return Err(invalid("every maximum must exceed its minimum".into()));
        }
        if svr.dim > FEATURES {
            return Err(ModelError::Invalid {
                path: svm.to_path_buf(),
                reason: format!("support vectors have {} features; BRISQUE has {FEATURES}", svr.dim),
            });
        }
        Ok(Brisque { svr, min, max })
    }

    /// The score of a feature vector.
    pub fn score_features(&self, f: &[f64; FEATURES]) -> f64 {
        let x: Vec<f64> = f
            .iter()
            .zip(self.min.iter().zip(&self.max))
            .map(|(v, (lo, hi))| -1.0 + 2.0 * (v - lo) / (hi - lo))
            .collect();
        self.svr.predict(&x)
    }

    /// The score of a grayscale picture (0–255). Pictures smaller than 16 × 16 give `None`.
    pub fn score(&self, img: &Plane) -> Option<f64> {
        features(img).map(|f| self.score_features(&f))
    }
}

fn scale_features(img: &Plane, border: Border, out: &mut Vec<f64>) {
    let m = nss::mscn(img, border);
    let g = nss::fit_ggd(&m.data);
    out.extend([g.alpha, g.sigma_sq]);
    for p in nss::pair_products(&m) {
        let a = nss::fit_aggd(&p);
        out.extend([a.alpha, a.mean, a.sigma_l * a.sigma_l, a.sigma_r * a.sigma_r]);
    }
}

/// The 36 BRISQUE features of a grayscale picture (0–255), with the local statistics taken with
/// replicated edges as in the original method; `None` below 16 × 16 pixels.
pub fn features(img: &Plane) -> Option<[f64; FEATURES]> {
    features_with(img, Border::Replicate)
}

/// [`features`] with a choice of edge handling ([`Border::Zero`] reproduces scikit-video's
/// reference implementation, which the conformance test compares with).
pub fn features_with(img: &Plane, border: Border) -> Option<[f64; FEATURES]> {
    if img.width < 16 || img.height < 16 {
        return None;
    }
    let mut v = Vec::with_capacity(FEATURES);
    scale_features(img, border, &mut v);
    scale_features(&img.half(), border, &mut v);
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOY: &str =
        "svm_type epsilon_svr\nkernel_type rbf\ngamma 0.5\nnr_class 2\ntotal_sv 2\nrho 0.25\nSV\n1 1:1 2:0\n-2 2:1\n";

    #[test]
    fn parses_and_evaluates_a_libsvm_model() {
        let m = SvrModel::parse(TOY, Path::new("toy.txt")).unwrap();
        assert_eq!((m.dim, m.coefs.len()), (2, 2));
        assert_eq!(m.kernel, Kernel::Rbf { gamma: 0.5 });
        // at x = (1, 0): 1·e^0 − 2·e^(−0.5·2) − 0.25
        let want = 1.0 - 2.0 * (-1.0f64).exp() - 0.25;
        assert!((m.predict(&[1.0, 0.0]) - want).abs() < 1e-12);
    }

    #[test]
    fn rejects_broken_models_with_the_line() {
        let e = SvrModel::parse("svm_type c_svc\nkernel_type rbf\ngamma 1\nrho 0\nSV\n1 1:0\n", Path::new("m.txt"))
            .unwrap_err();
        assert!(e.to_string().contains("not a regression model"), "{e}");
        let e = SvrModel::parse(&TOY.replace("2:1", "2:x"), Path::new("m.txt")).unwrap_err();
        assert!(e.to_string().contains("line 9"), "{e}");
    }

    #[test]
    fn features_have_the_published_layout() {
        // A textured picture: a deterministic pseudo-random field, smoothed a little.
        let (w, h) = (64, 48);
        let mut s = 12345u32;
        let data: Vec<f32> = (0..w * h)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as f32
            })
            .collect();
        let f = features(&Plane::new(w, h, data).unwrap()).unwrap();
        for scale in 0..2 {
            let o = scale * 18;
            assert!(f[o] > 0.2 && f[o + 1] > 0.0, "{f:?}");
            for k in 0..4 {
                let b = o + 2 + 4 * k;
                assert!(f[b] >= 0.2 && f[b + 2] > 0.0 && f[b + 3] > 0.0, "{f:?}");
            }
        }
        assert!(features(&Plane::new(8, 8, vec![0.0; 64]).unwrap()).is_none());
    }
}
