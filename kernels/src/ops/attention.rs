//! Tiled (flash-style) softmax attention for `[B, L, H, d]` tensors, forward and backward.
//!
//! Forward: for each (batch, head, query tile of [`BLOCK_Q`] rows) the key/value sequence is
//! visited in tiles of [`BLOCK_K`] rows with an online softmax (running max `m`, running sum `l`,
//! rescaled accumulator), so the `Lq × Lk` score matrix is never materialised: extra memory is
//! `O(Lq·H·d)` for the output plus `O(BLOCK_Q·BLOCK_K + BLOCK_Q·d)` per worker thread. It
//! returns the per-row log-sum-exp `LSE = m + ln l` for the backward pass.
//!
//! Backward (recompute per tile with the saved LSE): `Δ = rowsum(dO ⊙ O)`,
//! `S = s·Q·Kᵀ`, `P = exp(S − LSE)`, `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − Δ)`,
//! `dQ = s·dS·K`, `dK = s·dSᵀ·Q`. It runs two race-free passes: one parallel over key tiles
//! (accumulating dK, dV) and one parallel over query tiles (accumulating dQ); the score tiles are
//! recomputed in both.
//!
//! Self-attention uses `Lq = Lk`; cross-attention passes keys/values of another length (the
//! 512 text tokens). There is no mask (the Wan DiT uses none).

use rayon::prelude::*;

use super::{compute_dtype, dispatch, expect_rank, out_dtype};
use crate::cpu::{MatRef, gemm};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Query rows per tile.
pub const BLOCK_Q: usize = 128;
/// Key rows per tile.
pub const BLOCK_K: usize = 256;

/// Output of [`attention`].
#[derive(Debug, Clone)]
pub struct AttentionOutput {
    /// `softmax(s·Q·Kᵀ)·V`, shape `[B, Lq, H, d]`.
    pub out: Tensor,
    /// Log-sum-exp of each score row, shape `[B, H, Lq]`, in the compute dtype.
    pub lse: Tensor,
}

/// Gradients of [`attention`].
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    /// `dL/dQ`, `[B, Lq, H, d]`.
    pub dq: Tensor,
    /// `dL/dK`, `[B, Lk, H, d]`.
    pub dk: Tensor,
    /// `dL/dV`, `[B, Lk, H, d]`.
    pub dv: Tensor,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    lq: usize,
    lk: usize,
    h: usize,
    d: usize,
    /// Query rows per tile.
    bq: usize,
    /// Key rows per tile.
    bk: usize,
}

/// Tile sizes of the tiled attention kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionTiles {
    /// Query rows per tile (≥ 1).
    pub block_q: usize,
    /// Key rows per tile (≥ 1).
    pub block_k: usize,
}

impl Default for AttentionTiles {
    fn default() -> Self {
        AttentionTiles { block_q: BLOCK_Q, block_k: BLOCK_K }
    }
}

fn dims(q: &Tensor, k: &Tensor, v: &Tensor, tiles: AttentionTiles, op: &'static str) -> Result<Dims> {
    if tiles.block_q == 0 || tiles.block_k == 0 {
        return Err(Error::arg(op, format!("tile sizes {tiles:?} must be ≥ 1")));
    }
    for t in [q, k, v] {
        expect_rank(t, 4, op)?;
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if ks != vs || qs[0] != ks[0] || qs[2] != ks[2] || qs[3] != ks[3] {
        return Err(Error::shape(op, format!("q {qs:?}, k {ks:?}, v {vs:?} (want q [B,Lq,H,d], k = v [B,Lk,H,d])")));
    }
    if qs[3] == 0 || ks[1] == 0 {
        return Err(Error::shape(op, "empty head dim or key sequence"));
    }
    Ok(Dims { b: qs[0], lq: qs[1], lk: ks[1], h: qs[2], d: qs[3], bq: tiles.block_q, bk: tiles.block_k })
}

fn default_scale(d: usize, scale: Option<f64>) -> f64 {
    scale.unwrap_or(1.0 / (d as f64).sqrt())
}

/// `[B, H, L, d]` buffer → `[B, L, H, d]` tensor.
fn bhld_to_blhd<T: Float>(buf: Vec<T>, b: usize, h: usize, l: usize, d: usize, dt: crate::DType) -> Result<Tensor> {
    Ok(Tensor::from_compute(buf, &[b, h, l, d], dt).permute(&[0, 2, 1, 3])?.contiguous())
}

/// Flash-style attention `softmax(scale·Q·Kᵀ)·V` per head, `scale` defaulting to `1/√d`.
///
/// `q [B, Lq, H, d]`, `k`, `v` `[B, Lk, H, d]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: Option<f64>) -> Result<AttentionOutput> {
    attention_tiled(q, k, v, scale, AttentionTiles::default())
}

/// [`attention`] with explicit tile sizes (the result does not depend on them beyond rounding).
pub fn attention_tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f64>,
    tiles: AttentionTiles,
) -> Result<AttentionOutput> {
    const OP: &str = "attention";
    let dm = dims(q, k, v, tiles, OP)?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[q, k, v], OP)? {
        return crate::cuda::ops::attention(q, k, v, default_scale(dm.d, scale));
    }
    let (ct, ot) = (compute_dtype(&[q, k, v]), out_dtype(&[q, k, v]));
    let scale = default_scale(dm.d, scale);
    dispatch!(ct, T => {
        let qd = q.cpu_data::<T>(OP)?;
        let kd = k.cpu_data::<T>(OP)?;
        let vd = v.cpu_data::<T>(OP)?;
        let (o, lse) = forward_impl::<T>(&qd, &kd, &vd, dm, T::from_f64(scale));
        Ok(AttentionOutput {
            out: bhld_to_blhd(o, dm.b, dm.h, dm.lq, dm.d, ot)?,
            lse: Tensor::from_compute(lse, &[dm.b, dm.h, dm.lq], ct),
        })
    })
}

fn forward_impl<T: Float>(qd: &[T], kd: &[T], vd: &[T], dm: Dims, scale: T) -> (Vec<T>, Vec<T>) {
    let Dims { lq, lk, h, d, bq: block_q, bk: block_k, .. } = dm;
    let rs = h * d;
    let mut out = vec![T::ZERO; dm.b * h * lq * d];
    let mut lse = vec![T::ZERO; dm.b * h * lq];
    if lq == 0 {
        return (out, lse);
    }
    out.par_chunks_mut(lq * d).zip(lse.par_chunks_mut(lq)).enumerate().for_each(|(bh, (o_bh, lse_bh))| {
        let (bi, hi) = (bh / h, bh % h);
        o_bh.par_chunks_mut(block_q * d).zip(lse_bh.par_chunks_mut(block_q)).enumerate().for_each(
            |(qt, (acc, lse_t))| {
                let i0 = qt * block_q;
                let bq = lse_t.len();
                let q_i = &qd[((bi * lq + i0) * h + hi) * d..];
                let mut m = vec![T::NEG_INFINITY; bq];
                let mut l = vec![T::ZERO; bq];
                let mut s = vec![T::ZERO; bq * block_k];
                for j0 in (0..lk).step_by(block_k) {
                    let bk = block_k.min(lk - j0);
                    let kv = ((bi * lk + j0) * h + hi) * d;
                    let s = &mut s[..bq * bk];
                    gemm(
                        bq,
                        bk,
                        d,
                        s,
                        bk,
                        1,
                        false,
                        MatRef::strided(q_i, rs, 1),
                        MatRef::strided(&kd[kv..], 1, rs),
                        scale,
                        false,
                    );
                    for r in 0..bq {
                        let row = &mut s[r * bk..(r + 1) * bk];
                        let mx = row.iter().fold(T::NEG_INFINITY, |a, &x| a.max(x));
                        let m_new = m[r].max(mx);
                        let corr = if m[r] == T::NEG_INFINITY { T::ZERO } else { (m[r] - m_new).exp() };
                        let mut sum = T::ZERO;
                        for x in row.iter_mut() {
                            *x = (*x - m_new).exp();
                            sum += *x;
                        }
                        l[r] = l[r] * corr + sum;
                        m[r] = m_new;
                        if corr != T::ONE {
                            for a in &mut acc[r * d..(r + 1) * d] {
                                *a *= corr;
                            }
                        }
                    }
                    gemm(
                        bq,
                        d,
                        bk,
                        acc,
                        d,
                        1,
                        true,
                        MatRef::rows(s, bk),
                        MatRef::strided(&vd[kv..], rs, 1),
                        T::ONE,
                        false,
                    );
                }
                for r in 0..bq {
                    let inv = T::ONE / l[r];
                    for a in &mut acc[r * d..(r + 1) * d] {
                        *a *= inv;
                    }
                    lse_t[r] = m[r] + l[r].ln();
                }
            },
        );
    });
    (out, lse)
}

/// Backward of [`attention`] from the forward inputs, its output and LSE, and `dout`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: Option<f64>,
) -> Result<AttentionGrads> {
    attention_backward_tiled(q, k, v, out, lse, dout, scale, AttentionTiles::default())
}

/// [`attention_backward`] with explicit tile sizes.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: Option<f64>,
    tiles: AttentionTiles,
) -> Result<AttentionGrads> {
    const OP: &str = "attention_backward";
    let dm = dims(q, k, v, tiles, OP)?;
    if out.shape() != q.shape() || dout.shape() != q.shape() || lse.shape() != [dm.b, dm.h, dm.lq] {
        return Err(Error::shape(
            OP,
            format!("out {:?}, dout {:?}, lse {:?} for q {:?}", out.shape(), dout.shape(), lse.shape(), q.shape()),
        ));
    }
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[q, k, v, out, lse, dout], OP)? {
        return crate::cuda::ops::attention_backward(q, k, v, out, lse, dout, default_scale(dm.d, scale));
    }
    let ct = compute_dtype(&[q, k, v, out, dout]);
    let scale = default_scale(dm.d, scale);
    dispatch!(ct, T => {
        let qd = q.cpu_data::<T>(OP)?;
        let kd = k.cpu_data::<T>(OP)?;
        let vd = v.cpu_data::<T>(OP)?;
        let od = out.cpu_data::<T>(OP)?;
        let gd = dout.cpu_data::<T>(OP)?;
        let ld = lse.cpu_data::<T>(OP)?;
        let (dq, dk, dv) = backward_impl::<T>(&qd, &kd, &vd, &od, &gd, &ld, dm, T::from_f64(scale));
        Ok(AttentionGrads {
            dq: bhld_to_blhd(dq, dm.b, dm.h, dm.lq, dm.d, ct)?,
            dk: bhld_to_blhd(dk, dm.b, dm.h, dm.lk, dm.d, ct)?,
            dv: bhld_to_blhd(dv, dm.b, dm.h, dm.lk, dm.d, ct)?,
        })
    })
}

/// Scratch tiles of one worker.
struct Tiles<T> {
    p: Vec<T>,
    dp: Vec<T>,
}

/// Computes `P` and `dS` of one (query tile, key tile) pair into `t.p` / `t.dp`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn score_tiles<T: Float>(
    t: &mut Tiles<T>,
    q_i: &[T],
    do_i: &[T],
    k_j: &[T],
    v_j: &[T],
    lse_i: &[T],
    delta_i: &[T],
    bk: usize,
    dm: Dims,
    scale: T,
) {
    let (bq, d, rs) = (lse_i.len(), dm.d, dm.h * dm.d);
    let p = &mut t.p[..bq * bk];
    let dp = &mut t.dp[..bq * bk];
    gemm(bq, bk, d, p, bk, 1, false, MatRef::strided(q_i, rs, 1), MatRef::strided(k_j, 1, rs), scale, false);
    gemm(bq, bk, d, dp, bk, 1, false, MatRef::strided(do_i, rs, 1), MatRef::strided(v_j, 1, rs), T::ONE, false);
    for r in 0..bq {
        for c in 0..bk {
            let idx = r * bk + c;
            let pv = (p[idx] - lse_i[r]).exp();
            p[idx] = pv;
            dp[idx] = pv * (dp[idx] - delta_i[r]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_impl<T: Float>(
    qd: &[T],
    kd: &[T],
    vd: &[T],
    od: &[T],
    gd: &[T],
    ld: &[T],
    dm: Dims,
    scale: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { b, lq, lk, h, d, bq: block_q, bk: block_k } = dm;
    let rs = h * d;
    // Δ[b, h, i] = Σ_c dO·O
    let mut delta = vec![T::ZERO; b * h * lq];
    if lq > 0 {
        delta.par_chunks_mut(lq).enumerate().for_each(|(bh, dl)| {
            let (bi, hi) = (bh / h, bh % h);
            for (i, x) in dl.iter_mut().enumerate() {
                let off = ((bi * lq + i) * h + hi) * d;
                *x = (0..d).map(|c| gd[off + c] * od[off + c]).sum();
            }
        });
    }
    let mut dq = vec![T::ZERO; b * h * lq * d];
    let mut dk = vec![T::ZERO; b * h * lk * d];
    let mut dv = vec![T::ZERO; b * h * lk * d];
    if lq == 0 {
        return (dq, dk, dv);
    }
    let new_tiles = || Tiles { p: vec![T::ZERO; block_q * block_k], dp: vec![T::ZERO; block_q * block_k] };
    // Pass 1: dK, dV, parallel over key tiles.
    dk.par_chunks_mut(lk * d).zip(dv.par_chunks_mut(lk * d)).enumerate().for_each(|(bh, (dk_bh, dv_bh))| {
        let (bi, hi) = (bh / h, bh % h);
        dk_bh.par_chunks_mut(block_k * d).zip(dv_bh.par_chunks_mut(block_k * d)).enumerate().for_each(
            |(kt, (dk_j, dv_j))| {
                let j0 = kt * block_k;
                let bk = dk_j.len() / d;
                let kv = ((bi * lk + j0) * h + hi) * d;
                let mut t = new_tiles();
                for i0 in (0..lq).step_by(block_q) {
                    let bq = block_q.min(lq - i0);
                    let qo = ((bi * lq + i0) * h + hi) * d;
                    let li = bh * lq + i0;
                    score_tiles(
                        &mut t,
                        &qd[qo..],
                        &gd[qo..],
                        &kd[kv..],
                        &vd[kv..],
                        &ld[li..li + bq],
                        &delta[li..li + bq],
                        bk,
                        dm,
                        scale,
                    );
                    // dV_j += Pᵀ·dO_i ; dK_j += s·dSᵀ·Q_i
                    gemm(
                        bk,
                        d,
                        bq,
                        dv_j,
                        d,
                        1,
                        true,
                        MatRef::rows_t(&t.p[..bq * bk], bk),
                        MatRef::strided(&gd[qo..], rs, 1),
                        T::ONE,
                        false,
                    );
                    gemm(
                        bk,
                        d,
                        bq,
                        dk_j,
                        d,
                        1,
                        true,
                        MatRef::rows_t(&t.dp[..bq * bk], bk),
                        MatRef::strided(&qd[qo..], rs, 1),
                        scale,
                        false,
                    );
                }
            },
        );
    });
    // Pass 2: dQ, parallel over query tiles.
    dq.par_chunks_mut(lq * d).enumerate().for_each(|(bh, dq_bh)| {
        let (bi, hi) = (bh / h, bh % h);
        dq_bh.par_chunks_mut(block_q * d).enumerate().for_each(|(qt, dq_i)| {
            let i0 = qt * block_q;
            let bq = dq_i.len() / d;
            let qo = ((bi * lq + i0) * h + hi) * d;
            let li = bh * lq + i0;
            let mut t = new_tiles();
            for j0 in (0..lk).step_by(block_k) {
                let bk = block_k.min(lk - j0);
                let kv = ((bi * lk + j0) * h + hi) * d;
                score_tiles(
                    &mut t,
                    &qd[qo..],
                    &gd[qo..],
                    &kd[kv..],
                    &vd[kv..],
                    &ld[li..li + bq],
                    &delta[li..li + bq],
                    bk,
                    dm,
                    scale,
                );
                gemm(
                    bq,
                    d,
                    bk,
                    dq_i,
                    d,
                    1,
                    true,
                    MatRef::rows(&t.dp[..bq * bk], bk),
                    MatRef::strided(&kd[kv..], rs, 1),
                    scale,
                    false,
                );
            }
        });
    });
    (dq, dk, dv)
}

/// Reference attention that materialises the full score matrix; for tests of the tiled kernel
/// on small inputs only.
pub fn attention_naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: Option<f64>) -> Result<Tensor> {
    const OP: &str = "attention_naive";
    let dm = dims(q, k, v, AttentionTiles::default(), OP)?;
    let scale = default_scale(dm.d, scale);
    let (qd, kd, vd) = (q.to_vec_f64()?, k.to_vec_f64()?, v.to_vec_f64()?);
    let Dims { b, lq, lk, h, d, .. } = dm;
    let mut o = vec![0.0; b * lq * h * d];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..lq {
                let qo = ((bi * lq + i) * h + hi) * d;
                let s: Vec<f64> = (0..lk)
                    .map(|j| {
                        let ko = ((bi * lk + j) * h + hi) * d;
                        scale * (0..d).map(|c| qd[qo + c] * kd[ko + c]).sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let vo = ((bi * lk + j) * h + hi) * d;
                    for c in 0..d {
                        o[qo + c] += ej / z * vd[vo + c];
                    }
                }
            }
        }
    }
    Tensor::from_f64_slice(&o, q.shape(), out_dtype(&[q, k, v]))
}
