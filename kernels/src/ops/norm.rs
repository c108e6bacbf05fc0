//! Normalisations: LayerNorm (affine or not), RMSNorm over the last dim (DiT q/k norm across
//! heads, T5 layer norm) and the Wan VAE's channel RMS norm.
//!
//! Statistics are computed in the compute dtype (f32 for f32/bf16/f16 storage) with a two-pass
//! mean/variance. Backward passes recompute the statistics from `x`.

use rayon::prelude::*;

use super::{compute_dtype, dispatch, expect_same_shape, out_dtype};
use crate::cpu::{map_rows, reduce_blocks};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn last_dim(x: &Tensor, op: &'static str) -> Result<usize> {
    match x.shape().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => Err(Error::rank(op, "≥ 1 with a non-empty last dim", x.shape())),
    }
}

fn check_param(p: Option<&Tensor>, d: usize, op: &'static str, what: &str) -> Result<()> {
    if let Some(p) = p
        && p.numel() != d
    {
        return Err(Error::shape(op, format!("{what} {:?} for normalised dim {d}", p.shape())));
    }
    Ok(())
}

/// `(mean, 1/√(var+eps))` of one row.
fn row_stats<T: Float>(r: &[T], eps: T) -> (T, T) {
    let n = T::from_usize(r.len());
    let mean = r.iter().copied().sum::<T>() / n;
    let var = r.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, T::ONE / (var + eps).sqrt())
}

/// LayerNorm over the last dim: `ŷ = (x − mean)/√(var + eps)`, then `ŷ·γ + β` when given.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let d = last_dim(x, OP)?;
    check_param(weight, d, OP, "weight")?;
    check_param(bias, d, OP, "bias")?;
    let mut ins = vec![x];
    ins.extend(weight);
    ins.extend(bias);
    #[cfg(feature = "cuda")]
    if super::on_cuda(&ins, OP)? {
        return crate::cuda::ops::layer_norm(x, weight, bias, eps, d);
    }
    let (ct, ot) = (compute_dtype(&ins), out_dtype(&ins));
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let w = weight.map(|w| w.cpu_data::<T>(OP)).transpose()?;
        let b = bias.map(|b| b.cpu_data::<T>(OP)).transpose()?;
        let eps = T::from_f64(eps);
        let mut y = vec![T::ZERO; xd.len()];
        map_rows(&xd, &mut y, d, |_, r, o| {
            let (mean, rstd) = row_stats(r, eps);
            for j in 0..d {
                let mut v = (r[j] - mean) * rstd;
                if let Some(w) = &w {
                    v *= w[j];
                }
                if let Some(b) = &b {
                    v += b[j];
                }
                o[j] = v;
            }
        });
        Ok(Tensor::from_compute(y, x.shape(), ot))
    })
}

/// Gradients of a normalisation layer.
#[derive(Debug, Clone)]
pub struct NormGrads {
    /// `dL/dx`.
    pub dx: Tensor,
    /// `dL/dγ` (when the layer has a weight), shaped like the weight.
    pub dweight: Option<Tensor>,
    /// `dL/dβ` (when the layer has a bias).
    pub dbias: Option<Tensor>,
}

/// Per-row partial sums for parameter gradients, reduced over fixed row blocks in parallel with
/// a deterministic grouping ([`reduce_blocks`]): `f(row, dw_acc, db_acc)` adds one row.
fn reduce_param_grads<T: Float>(
    rows: usize,
    d: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync + Send,
) -> (Vec<T>, Vec<T>) {
    let mut acc = reduce_blocks(rows, 2 * d, ((1 << 14) / d.max(1)).max(1), |range, acc: &mut [T]| {
        let (a, b) = acc.split_at_mut(d);
        for r in range {
            f(r, a, b);
        }
    });
    let db = acc.split_off(d);
    (acc, db)
}

/// Backward of [`layer_norm`]. With `g = dy·γ` (or `dy`):
/// `dx = rstd·(g − mean(g) − ŷ·mean(g·ŷ))`, `dγ = Σ dy·ŷ`, `dβ = Σ dy`.
pub fn layer_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    has_bias: bool,
    eps: f64,
    dy: &Tensor,
) -> Result<NormGrads> {
    const OP: &str = "layer_norm_backward";
    let d = last_dim(x, OP)?;
    check_param(weight, d, OP, "weight")?;
    expect_same_shape(x, dy, OP)?;
    let mut ins = vec![x, dy];
    ins.extend(weight);
    #[cfg(feature = "cuda")]
    if super::on_cuda(&ins, OP)? {
        return crate::cuda::ops::layer_norm_backward(x, weight, has_bias, eps, dy, d);
    }
    let ct = compute_dtype(&ins);
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let g = dy.cpu_data::<T>(OP)?;
        let w = weight.map(|w| w.cpu_data::<T>(OP)).transpose()?;
        let eps = T::from_f64(eps);
        let n = T::from_usize(d);
        let mut dx = vec![T::ZERO; xd.len()];
        map_rows(&xd, &mut dx, d, |i, r, o| {
            let (mean, rstd) = row_stats(r, eps);
            let gr = &g[i * d..(i + 1) * d];
            let (mut sg, mut sgy) = (T::ZERO, T::ZERO);
            for j in 0..d {
                let gj = match &w { Some(w) => gr[j] * w[j], None => gr[j] };
                let yh = (r[j] - mean) * rstd;
                sg += gj;
                sgy += gj * yh;
            }
            let (mg, mgy) = (sg / n, sgy / n);
            for j in 0..d {
                let gj = match &w { Some(w) => gr[j] * w[j], None => gr[j] };
                let yh = (r[j] - mean) * rstd;
                o[j] = rstd * (gj - mg - yh * mgy);
            }
        });
        let rows = xd.len() / d;
        let (dw, db) = if weight.is_some() || has_bias {
            let (dw, db) = reduce_param_grads::<T>(rows, d, |i, aw, ab| {
                let r = &xd[i * d..(i + 1) * d];
                let gr = &g[i * d..(i + 1) * d];
                let (mean, rstd) = row_stats(r, eps);
                for j in 0..d {
                    aw[j] += gr[j] * (r[j] - mean) * rstd;
                    ab[j] += gr[j];
                }
            });
            (weight.map(|w| Tensor::from_compute(dw, w.shape(), ct)), has_bias.then(|| Tensor::from_compute(db, &[d], ct)))
        } else {
            (None, None)
        };
        Ok(NormGrads { dx: Tensor::from_compute(dx, x.shape(), ct), dweight: dw, dbias: db })
    })
}

/// RMSNorm over the last dim: `y = x·(mean(x²) + eps)^(−½)·γ`.
///
/// For the DiT q/k norm "across heads", call it on `[B, L, D]` before splitting heads, so the
/// statistic spans all heads; for T5 it is the whole layer norm.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let d = last_dim(x, OP)?;
    check_param(Some(weight), d, OP, "weight")?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, weight], OP)? {
        return crate::cuda::ops::rms_norm(x, weight, eps, d);
    }
    let (ct, ot) = (compute_dtype(&[x, weight]), out_dtype(&[x, weight]));
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let w = weight.cpu_data::<T>(OP)?;
        let eps = T::from_f64(eps);
        let n = T::from_usize(d);
        let mut y = vec![T::ZERO; xd.len()];
        map_rows(&xd, &mut y, d, |_, r, o| {
            let ms = r.iter().map(|&v| v * v).sum::<T>() / n;
            let rs = T::ONE / (ms + eps).sqrt();
            for j in 0..d {
                o[j] = r[j] * rs * w[j];
            }
        });
        Ok(Tensor::from_compute(y, x.shape(), ot))
    })
}

/// Backward of [`rms_norm`]. With `r = (mean(x²)+eps)^(−½)` and `g = dy·γ`:
/// `dx = r·(g − x·r²·mean(g·x))`, `dγ = Σ dy·x·r`.
pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, eps: f64, dy: &Tensor) -> Result<NormGrads> {
    const OP: &str = "rms_norm_backward";
    let d = last_dim(x, OP)?;
    check_param(Some(weight), d, OP, "weight")?;
    expect_same_shape(x, dy, OP)?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, weight, dy], OP)? {
        return crate::cuda::ops::rms_norm_backward(x, weight, eps, dy, d);
    }
    let ct = compute_dtype(&[x, weight, dy]);
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let w = weight.cpu_data::<T>(OP)?;
        let g = dy.cpu_data::<T>(OP)?;
        let eps = T::from_f64(eps);
        let n = T::from_usize(d);
        let rstat = |r: &[T]| T::ONE / (r.iter().map(|&v| v * v).sum::<T>() / n + eps).sqrt();
        let mut dx = vec![T::ZERO; xd.len()];
        map_rows(&xd, &mut dx, d, |i, r, o| {
            let rs = rstat(r);
            let gr = &g[i * d..(i + 1) * d];
            let dot = (0..d).map(|j| gr[j] * w[j] * r[j]).sum::<T>() / n;
            for j in 0..d {
                o[j] = rs * (gr[j] * w[j] - r[j] * rs * rs * dot);
            }
        });
        let rows = xd.len() / d;
        let (dw, _) = reduce_param_grads::<T>(rows, d, |i, aw, _| {
            let r = &xd[i * d..(i + 1) * d];
            let rs = rstat(r);
            let gr = &g[i * d..(i + 1) * d];
            for j in 0..d {
                aw[j] += gr[j] * r[j] * rs;
            }
        });
        Ok(NormGrads {
            dx: Tensor::from_compute(dx, x.shape(), ct),
            dweight: Some(Tensor::from_compute(dw, weight.shape(), ct)),
            dbias: None,
        })
    })
}

/// Norm floor of the Wan VAE channel RMS norm (`F.normalize`'s default eps).
pub const CHANNEL_NORM_EPS: f64 = 1e-12;

/// Checks `[B, C, ...]` and γ with C elements; returns (B, C, S = product of the rest).
fn channel_dims(x: &Tensor, gamma: &Tensor, op: &'static str) -> Result<(usize, usize, usize)> {
    if x.rank() < 2 {
        return Err(Error::rank(op, "≥ 2 ([B, C, ...])", x.shape()));
    }
    let (b, c) = (x.shape()[0], x.shape()[1]);
    if gamma.numel() != c {
        return Err(Error::shape(op, format!("gamma {:?} for {c} channels", gamma.shape())));
    }
    let s = x.shape()[2..].iter().product();
    Ok((b, c, s))
}

/// Per (batch, position) channel norms `max(‖x[b,:,s]‖₂, 1e-12)`, laid out `[B, S]`.
fn channel_norms<T: Float>(x: &[T], b: usize, c: usize, s: usize) -> Vec<T> {
    let mut n = vec![T::ZERO; b * s];
    n.par_chunks_mut(s.max(1)).enumerate().for_each(|(bi, nb)| {
        for ci in 0..c {
            let row = &x[(bi * c + ci) * s..(bi * c + ci + 1) * s];
            for (a, &v) in nb.iter_mut().zip(row) {
                *a += v * v;
            }
        }
        let floor = T::from_f64(CHANNEL_NORM_EPS);
        for a in nb.iter_mut() {
            *a = a.sqrt().max(floor);
        }
    });
    n
}

/// The Wan VAE `RMS_norm`: `y = x / max(‖x‖₂, 1e-12) · √C · γ`, the norm taken over the channel
/// dim 1 of `x [B, C, ...]`; `γ` has C elements (any shape, e.g. `[C,1,1,1]`). No eps inside the
/// square root.
pub fn rms_norm_channel(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    const OP: &str = "rms_norm_channel";
    let (b, c, s) = channel_dims(x, gamma, OP)?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, gamma], OP)? {
        return crate::cuda::ops::rms_norm_channel(x, gamma, b, c, s);
    }
    let (ct, ot) = (compute_dtype(&[x, gamma]), out_dtype(&[x, gamma]));
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let gd = gamma.cpu_data::<T>(OP)?;
        let norms = channel_norms(&xd, b, c, s);
        let sc = T::from_usize(c).sqrt();
        let mut y = vec![T::ZERO; xd.len()];
        y.par_chunks_mut(s.max(1)).enumerate().for_each(|(row, o)| {
            let (bi, ci) = (row / c, row % c);
            let xr = &xd[row * s..(row + 1) * s];
            let nr = &norms[bi * s..(bi + 1) * s];
            let k = sc * gd[ci];
            for j in 0..s {
                o[j] = xr[j] / nr[j] * k;
            }
        });
        Ok(Tensor::from_compute(y, x.shape(), ot))
    })
}

/// Backward of [`rms_norm_channel`]. With `n = ‖x‖₂` per position and `g = dy·γ·√C`:
/// `dx = g/n − x·(Σ_c g·x)/n³` where `n > 1e-12`, else `dx = g/1e-12`;
/// `dγ[c] = Σ dy·x·√C / max(n, 1e-12)`.
pub fn rms_norm_channel_backward(x: &Tensor, gamma: &Tensor, dy: &Tensor) -> Result<NormGrads> {
    const OP: &str = "rms_norm_channel_backward";
    let (b, c, s) = channel_dims(x, gamma, OP)?;
    expect_same_shape(x, dy, OP)?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, gamma, dy], OP)? {
        return crate::cuda::ops::rms_norm_channel_backward(x, gamma, dy, b, c, s);
    }
    let ct = compute_dtype(&[x, gamma, dy]);
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let gd = gamma.cpu_data::<T>(OP)?;
        let g = dy.cpu_data::<T>(OP)?;
        let norms = channel_norms(&xd, b, c, s);
        let sc = T::from_usize(c).sqrt();
        let floor = T::from_f64(CHANNEL_NORM_EPS);
        // dots[b, s] = Σ_c g·x with g = dy·γ·√C
        let mut dots = vec![T::ZERO; b * s];
        dots.par_chunks_mut(s.max(1)).enumerate().for_each(|(bi, db)| {
            for ci in 0..c {
                let k = gd[ci] * sc;
                let base = (bi * c + ci) * s;
                for j in 0..s {
                    db[j] += g[base + j] * k * xd[base + j];
                }
            }
        });
        let mut dx = vec![T::ZERO; xd.len()];
        dx.par_chunks_mut(s.max(1)).enumerate().for_each(|(row, o)| {
            let (bi, ci) = (row / c, row % c);
            let k = gd[ci] * sc;
            for j in 0..s {
                let n = norms[bi * s + j];
                let gj = g[row * s + j] * k;
                o[j] = if n > floor {
                    gj / n - xd[row * s + j] * dots[bi * s + j] / (n * n * n)
                } else {
                    gj / floor
                };
            }
        });
        let dgamma: Vec<T> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let mut acc = T::ZERO;
                for bi in 0..b {
                    let base = (bi * c + ci) * s;
                    for j in 0..s {
                        acc += g[base + j] * xd[base + j] / norms[bi * s + j];
                    }
                }
                acc * sc
            })
            .collect();
        Ok(NormGrads {
            dx: Tensor::from_compute(dx, x.shape(), ct),
            dweight: Some(Tensor::from_compute(dgamma, gamma.shape(), ct)),
            dbias: None,
        })
    })
}
