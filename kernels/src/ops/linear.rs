//! Linear layers and (batched) matrix products.
//!
//! * [`linear`]: `y = x·Wᵀ + b` for `x [..., in]`, `W [out, in]`, `b [out]` → `y [..., out]`;
//!   backward `dx = dy·W`, `dW = dyᵀ·x` (summed over all leading dims), `db = Σ dy`.
//! * [`linear_gelu_tanh`]: `gelu_tanh(x·Wᵀ + b)` in one GEMM on CUDA (fused epilogue), for inference.
//! * [`matmul`]: `c = a·b` for `a [..., M, K]`, `b [..., K, N]` (equal leading dims, or `b` 2-D
//!   and shared by every batch); backward `da = dc·bᵀ`, `db = aᵀ·dc` (summed over the batch when
//!   `b` is shared).

use rayon::prelude::*;

use super::{compute_dtype, dispatch, out_dtype};
use crate::cpu::{MatRef, gemm, sum_rows};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Checked shapes of a linear layer: (rows M, in, out).
fn linear_dims(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    const OP: &str = "linear";
    if x.rank() < 1 {
        return Err(Error::rank(OP, "≥ 1", x.shape()));
    }
    if w.rank() != 2 {
        return Err(Error::rank(OP, "2 (weight [out, in])", w.shape()));
    }
    let din = *x.shape().last().unwrap_or(&0);
    let (dout, win) = (w.shape()[0], w.shape()[1]);
    if win != din {
        return Err(Error::shape(OP, format!("input {:?} vs weight {:?}", x.shape(), w.shape())));
    }
    if let Some(b) = b
        && b.shape() != [dout]
    {
        return Err(Error::shape(OP, format!("bias {:?} for {dout} outputs", b.shape())));
    }
    Ok((x.numel() / din.max(1), din, dout))
}

fn out_shape(x: &Tensor, last: usize) -> Vec<usize> {
    let mut s = x.shape().to_vec();
    *s.last_mut().expect("rank ≥ 1 checked") = last;
    s
}

/// `y = x·Wᵀ + b` over the last dim of `x`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (m, din, dout) = linear_dims(x, w, b)?;
    let mut ins = vec![x, w];
    ins.extend(b);
    #[cfg(feature = "cuda")]
    if super::on_cuda(&ins, "linear")? {
        return crate::cuda::ops::linear(x, w, b, false, m, din, dout, &out_shape(x, dout));
    }
    let (ct, ot) = (compute_dtype(&ins), out_dtype(&ins));
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>("linear")?;
        let wd = w.cpu_data::<T>("linear")?;
        let mut y = vec![T::ZERO; m * dout];
        gemm(m, dout, din, &mut y, dout, 1, false, MatRef::rows(&xd, din), MatRef::rows_t(&wd, din), T::ONE, true);
        if let Some(b) = b {
            let bd = b.cpu_data::<T>("linear")?;
            add_bias(&mut y, &bd);
        }
        Ok(Tensor::from_compute(y, &out_shape(x, dout), ot))
    })
}

/// `gelu_tanh(x·Wᵀ + b)`: [`linear`] followed by [`gelu_tanh`](super::activation::gelu_tanh), as one
/// operation. On CUDA it is one cuBLASLt GEMM with the bias and GELU in its epilogue (no intermediate
/// tensor); elsewhere, or where cuBLASLt has no such algorithm, the two ops. For inference: training keeps
/// the pre-activation for the backward and calls the two ops.
pub fn linear_gelu_tanh(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        let mut ins = vec![x, w];
        ins.extend(b);
        if super::on_cuda(&ins, "linear_gelu_tanh")? {
            let (m, din, dout) = linear_dims(x, w, b)?;
            return crate::cuda::ops::linear(x, w, b, true, m, din, dout, &out_shape(x, dout));
        }
    }
    super::activation::gelu_tanh(&linear(x, w, b)?)
}

fn add_bias<T: Float>(y: &mut [T], b: &[T]) {
    let d = b.len();
    if d == 0 {
        return;
    }
    y.par_chunks_mut(d * 64).for_each(|chunk| {
        for row in chunk.chunks_mut(d) {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    });
}

/// Gradients of [`linear`].
#[derive(Debug, Clone)]
pub struct LinearGrads {
    /// `dL/dx` (absent when not requested, e.g. for the first layer or frozen inputs).
    pub dx: Option<Tensor>,
    /// `dL/dW`, shape `[out, in]` (absent when not requested: a frozen weight).
    pub dw: Option<Tensor>,
    /// `dL/db`, shape `[out]` (absent when the layer has no bias or it was not requested).
    pub db: Option<Tensor>,
}

/// Which gradients [`linear_backward_opt`] computes. Each skipped one saves its work: `dx` and `dW` are one
/// GEMM of the forward's size each, so a frozen layer (LoRA training) costs half the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearNeed {
    /// `dL/dx`.
    pub dx: bool,
    /// `dL/dW`.
    pub dw: bool,
    /// `dL/db`.
    pub db: bool,
}

/// Backward of [`linear`] given the forward inputs and `dy` (shape of the output): `dW` always, `db` when
/// `has_bias`, `dx` when `need_dx`.
pub fn linear_backward(x: &Tensor, w: &Tensor, has_bias: bool, dy: &Tensor, need_dx: bool) -> Result<LinearGrads> {
    linear_backward_opt(x, w, dy, LinearNeed { dx: need_dx, dw: true, db: has_bias })
}

/// Backward of [`linear`] computing only the gradients `need` asks for.
pub fn linear_backward_opt(x: &Tensor, w: &Tensor, dy: &Tensor, need: LinearNeed) -> Result<LinearGrads> {
    let (m, din, dout) = linear_dims(x, w, None)?;
    if dy.shape() != out_shape(x, dout).as_slice() {
        return Err(Error::shape(
            "linear_backward",
            format!("dy {:?} for output {:?}", dy.shape(), out_shape(x, dout)),
        ));
    }
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, w, dy], "linear_backward")? {
        return crate::cuda::ops::linear_backward(x, w, dy, need, m, din, dout);
    }
    let ct = compute_dtype(&[x, w, dy]);
    dispatch!(ct, T => {
        let g = dy.cpu_data::<T>("linear_backward")?;
        let dx = if need.dx {
            let wd = w.cpu_data::<T>("linear_backward")?;
            let mut dx = vec![T::ZERO; m * din];
            gemm(m, din, dout, &mut dx, din, 1, false, MatRef::rows(&g, dout), MatRef::rows(&wd, din), T::ONE, true);
            Some(Tensor::from_compute(dx, x.shape(), ct))
        } else {
            None
        };
        let dw = if need.dw {
            let xd = x.cpu_data::<T>("linear_backward")?;
            let mut dw = vec![T::ZERO; dout * din];
            gemm(dout, din, m, &mut dw, din, 1, false, MatRef::rows_t(&g, dout), MatRef::rows(&xd, din), T::ONE, true);
            Some(Tensor::from_compute(dw, &[dout, din], ct))
        } else {
            None
        };
        let db = need.db.then(|| Tensor::from_compute(sum_rows(&g, dout), &[dout], ct));
        Ok(LinearGrads { dx, dw, db })
    })
}

/// Checked dims of a matmul: (batch, M, K, N, b_shared).
fn matmul_dims(a: &Tensor, b: &Tensor) -> Result<(usize, usize, usize, usize, bool)> {
    const OP: &str = "matmul";
    if a.rank() < 2 {
        return Err(Error::rank(OP, "≥ 2", a.shape()));
    }
    if b.rank() < 2 {
        return Err(Error::rank(OP, "≥ 2", b.shape()));
    }
    let ra = a.rank();
    let rb = b.rank();
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (kb, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    let shared = rb == 2;
    if k != kb || (!shared && a.shape()[..ra - 2] != b.shape()[..rb - 2]) {
        return Err(Error::shape(OP, format!("{:?} · {:?}", a.shape(), b.shape())));
    }
    let batch: usize = a.shape()[..ra - 2].iter().product();
    Ok((batch, m, k, n, shared))
}

/// Runs `f(batch_index)` over the batch, in parallel when the batch is large relative to the
/// per-item work (each item then runs a single-threaded GEMM).
fn over_batch<T: Send>(out: &mut [T], chunk: usize, batch: usize, f: impl Fn(usize, &mut [T], bool) + Sync + Send) {
    if chunk == 0 {
        return;
    }
    if batch >= rayon::current_num_threads() * 2 {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o, false));
    } else {
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, true);
        }
    }
}

/// Batched matrix product `a·b`: `[..., M, K] · [..., K, N]` (or `· [K, N]`) → `[..., M, N]`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (batch, m, k, n, shared) = matmul_dims(a, b)?;
    let (ct, ot) = (compute_dtype(&[a, b]), out_dtype(&[a, b]));
    let mut shape = a.shape().to_vec();
    *shape.last_mut().expect("rank ≥ 2") = n;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[a, b], "matmul")? {
        return crate::cuda::ops::matmul(a, b, batch, m, k, n, shared, &shape);
    }
    dispatch!(ct, T => {
        let ad = a.cpu_data::<T>("matmul")?;
        let bd = b.cpu_data::<T>("matmul")?;
        let mut c = vec![T::ZERO; batch * m * n];
        over_batch(&mut c, m * n, batch, |i, ci, par| {
            let bi = if shared { &bd[..] } else { &bd[i * k * n..(i + 1) * k * n] };
            gemm(m, n, k, ci, n, 1, false, MatRef::rows(&ad[i * m * k..(i + 1) * m * k], k), MatRef::rows(bi, n), T::ONE, par);
        });
        Ok(Tensor::from_compute(c, &shape, ot))
    })
}

/// Backward of [`matmul`]: returns `(da, db)`.
pub fn matmul_backward(a: &Tensor, b: &Tensor, dc: &Tensor) -> Result<(Tensor, Tensor)> {
    let (batch, m, k, n, shared) = matmul_dims(a, b)?;
    let mut shape = a.shape().to_vec();
    *shape.last_mut().expect("rank ≥ 2") = n;
    if dc.shape() != shape.as_slice() {
        return Err(Error::shape("matmul_backward", format!("dc {:?} for output {shape:?}", dc.shape())));
    }
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[a, b, dc], "matmul_backward")? {
        return crate::cuda::ops::matmul_backward(a, b, dc, batch, m, k, n, shared);
    }
    let ct = compute_dtype(&[a, b, dc]);
    dispatch!(ct, T => {
        let ad = a.cpu_data::<T>("matmul_backward")?;
        let bd = b.cpu_data::<T>("matmul_backward")?;
        let g = dc.cpu_data::<T>("matmul_backward")?;
        // da_i = dc_i · b_iᵀ
        let mut da = vec![T::ZERO; batch * m * k];
        over_batch(&mut da, m * k, batch, |i, dai, par| {
            let bi = if shared { &bd[..] } else { &bd[i * k * n..(i + 1) * k * n] };
            gemm(m, k, n, dai, k, 1, false, MatRef::rows(&g[i * m * n..(i + 1) * m * n], n), MatRef::rows_t(bi, n), T::ONE, par);
        });
        // db_i = a_iᵀ · dc_i   (summed over i when b is shared)
        let db = if shared {
            let mut db = vec![T::ZERO; k * n];
            for i in 0..batch {
                gemm(k, n, m, &mut db, n, 1, i > 0, MatRef::rows_t(&ad[i * m * k..(i + 1) * m * k], k), MatRef::rows(&g[i * m * n..(i + 1) * m * n], n), T::ONE, true);
            }
            db
        } else {
            let mut db = vec![T::ZERO; batch * k * n];
            over_batch(&mut db, k * n, batch, |i, dbi, par| {
                gemm(k, n, m, dbi, n, 1, false, MatRef::rows_t(&ad[i * m * k..(i + 1) * m * k], k), MatRef::rows(&g[i * m * n..(i + 1) * m * n], n), T::ONE, par);
            });
            db
        };
        Ok((Tensor::from_compute(da, a.shape(), ct), Tensor::from_compute(db, b.shape(), ct)))
    })
}
