//! Elementwise arithmetic with numpy-style broadcasting, the reductions their backward passes
//! need ([`sum_to_shape`]), scaling, and the DiT's adaLN modulation `x·(1+scale)+shift`.

use rayon::prelude::*;

use super::{compute_dtype, dispatch, expect_rank, expect_same_shape, out_dtype};
use crate::cpu::{map, reduce_blocks, zip_map};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, contiguous_strides};

/// The broadcast shape of two shapes (right-aligned; dims must be equal or 1).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        *o = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape("broadcast", format!("{a:?} and {b:?} are not broadcastable")));
        };
    }
    Ok(out)
}

/// Strides of a contiguous tensor of shape `s` seen through the broadcast shape `out`
/// (0 on broadcast dims).
fn bcast_strides(s: &[usize], out: &[usize]) -> Vec<usize> {
    let cs = contiguous_strides(s);
    let pad = out.len() - s.len();
    (0..out.len()).map(|i| if i < pad || s[i - pad] == 1 { 0 } else { cs[i - pad] }).collect()
}

/// Offset of the start of output row `row` (all but the last dim) under `strides`.
#[inline]
fn row_base(row: usize, shape: &[usize], strides: &[usize]) -> usize {
    let mut rem = row;
    let mut base = 0;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        base += (rem % d) * s;
        rem /= d;
    }
    base
}

fn binary_bcast<T: Float>(
    a: &[T],
    sa: &[usize],
    b: &[T],
    sb: &[usize],
    out: &[usize],
    f: impl Fn(T, T) -> T + Sync + Send,
) -> Vec<T> {
    let n: usize = out.iter().product();
    if n == 0 {
        return Vec::new();
    }
    if out.is_empty() {
        return vec![f(a[0], b[0])];
    }
    let r = out.len();
    let last = out[r - 1];
    let (ta, tb) = (bcast_strides(sa, out), bcast_strides(sb, out));
    let (ia, ib) = (ta[r - 1], tb[r - 1]);
    let mut y = vec![T::ZERO; n];
    let row = |o: usize, yr: &mut [T]| {
        let ba = row_base(o, &out[..r - 1], &ta[..r - 1]);
        let bb = row_base(o, &out[..r - 1], &tb[..r - 1]);
        for (j, v) in yr.iter_mut().enumerate() {
            *v = f(a[ba + j * ia], b[bb + j * ib]);
        }
    };
    if n >= 1 << 15 {
        y.par_chunks_mut(last).enumerate().for_each(|(o, yr)| row(o, yr));
    } else {
        for (o, yr) in y.chunks_mut(last).enumerate() {
            row(o, yr);
        }
    }
    y
}

fn binary(
    a: &Tensor,
    b: &Tensor,
    op: &'static str,
    f32f: fn(f32, f32) -> f32,
    f64f: fn(f64, f64) -> f64,
) -> Result<Tensor> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[a, b], op)? {
        let code = match op {
            "add" => 0,
            "sub" => 1,
            _ => 2,
        };
        return crate::cuda::ops::binary(a, b, &shape, code, op);
    }
    let (ct, ot) = (compute_dtype(&[a, b]), out_dtype(&[a, b]));
    match ct {
        crate::DType::F64 => {
            let (x, y) = (a.cpu_data::<f64>(op)?, b.cpu_data::<f64>(op)?);
            let v = binary_bcast(&x, a.shape(), &y, b.shape(), &shape, f64f);
            Ok(Tensor::from_compute(v, &shape, ot))
        }
        _ => {
            let (x, y) = (a.cpu_data::<f32>(op)?, b.cpu_data::<f32>(op)?);
            let v = binary_bcast(&x, a.shape(), &y, b.shape(), &shape, f32f);
            Ok(Tensor::from_compute(v, &shape, ot))
        }
    }
}

/// `a + b` with broadcasting.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, "add", |x, y| x + y, |x, y| x + y)
}

/// `a − b` with broadcasting.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, "sub", |x, y| x - y, |x, y| x - y)
}

/// `a ⊙ b` with broadcasting.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, "mul", |x, y| x * y, |x, y| x * y)
}

/// `s·x` for a scalar `s`.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x], "scale")? {
        return crate::cuda::ops::scale(x, s);
    }
    let (ct, ot) = (compute_dtype(&[x]), out_dtype(&[x]));
    dispatch!(ct, T => {
        let d = x.cpu_data::<T>("scale")?;
        let s = T::from_f64(s);
        Ok(Tensor::from_compute(map(&d, |v| v * s), x.shape(), ot))
    })
}

/// Sums `g` (of a broadcast output shape) down to `shape`: the backward of broadcasting.
pub fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = g.shape().to_vec();
    if broadcast_shape(shape, &out)? != out {
        return Err(Error::shape("sum_to_shape", format!("{shape:?} does not broadcast to {out:?}")));
    }
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[g], "sum_to_shape")? {
        return crate::cuda::ops::sum_to_shape(g, shape);
    }
    let ct = compute_dtype(&[g]);
    dispatch!(ct, T => {
        let gd = g.cpu_data::<T>("sum_to_shape")?;
        Ok(Tensor::from_compute(sum_to_shape_impl(&gd, &out, shape), shape, ct))
    })
}

fn sum_to_shape_impl<T: Float>(g: &[T], out: &[usize], shape: &[usize]) -> Vec<T> {
    let tn: usize = shape.iter().product();
    let n: usize = out.iter().product();
    if tn == n {
        return g.to_vec();
    }
    if n == 0 || out.is_empty() {
        return vec![T::ZERO; tn];
    }
    let r = out.len();
    let last = out[r - 1];
    let ts = bcast_strides(shape, out);
    let il = ts[r - 1];
    let rows = n / last;
    let acc_rows = |range: std::ops::Range<usize>, acc: &mut [T]| {
        for o in range {
            let base = row_base(o, &out[..r - 1], &ts[..r - 1]);
            let gr = &g[o * last..(o + 1) * last];
            for (j, &v) in gr.iter().enumerate() {
                acc[base + j * il] += v;
            }
        }
    };
    // Fixed row blocks of ≥ 32k elements, partial sums combined in block order: the grouping
    // depends on the shapes only (bitwise reproducible for any thread count).
    reduce_blocks(rows, tn, ((1 << 15) / last).max(1), acc_rows)
}

/// Backward of [`add`]: `(sum_to_shape(dy, a), sum_to_shape(dy, b))`.
pub fn add_backward(dy: &Tensor, a_shape: &[usize], b_shape: &[usize]) -> Result<(Tensor, Tensor)> {
    Ok((sum_to_shape(dy, a_shape)?, sum_to_shape(dy, b_shape)?))
}

/// Backward of [`sub`]: `(sum_to_shape(dy, a), −sum_to_shape(dy, b))`.
pub fn sub_backward(dy: &Tensor, a_shape: &[usize], b_shape: &[usize]) -> Result<(Tensor, Tensor)> {
    Ok((sum_to_shape(dy, a_shape)?, scale(&sum_to_shape(dy, b_shape)?, -1.0)?))
}

/// Backward of [`mul`]: `(sum_to_shape(dy⊙b, a), sum_to_shape(dy⊙a, b))`.
pub fn mul_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    if dy.shape() != shape.as_slice() {
        return Err(Error::shape("mul_backward", format!("dy {:?} for output {shape:?}", dy.shape())));
    }
    let ct = compute_dtype(&[a, b, dy]);
    let (a, b) = (a.to_dtype(ct)?, b.to_dtype(ct)?);
    let da = sum_to_shape(&mul(dy, &b)?.to_dtype(ct)?, a.shape())?;
    let db = sum_to_shape(&mul(dy, &a)?.to_dtype(ct)?, b.shape())?;
    Ok((da, db))
}

/// Checks modulation operand shapes; returns (B, L, D).
fn modulation_dims(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<(usize, usize, usize)> {
    const OP: &str = "modulate";
    expect_rank(x, 3, OP)?;
    let (b, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    for t in [shift, scale] {
        let ok = t.shape() == [b, 1, d] || t.shape() == [b, d];
        if !ok {
            return Err(Error::shape(
                OP,
                format!("modulation {:?} for x {:?} (want [B,1,D] or [B,D])", t.shape(), x.shape()),
            ));
        }
    }
    Ok((b, l, d))
}

/// adaLN modulation `y = x·(1 + scale) + shift` for `x [B, L, D]` and `shift`, `scale` of shape
/// `[B, 1, D]` or `[B, D]` (broadcast over the L tokens).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (b, l, d) = modulation_dims(x, shift, scale)?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, shift, scale], "modulate")? {
        return crate::cuda::ops::modulate(x, shift, scale, b, l, d);
    }
    let (ct, ot) = (compute_dtype(&[x, shift, scale]), out_dtype(&[x, shift, scale]));
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>("modulate")?;
        let sh = shift.cpu_data::<T>("modulate")?;
        let sc = scale.cpu_data::<T>("modulate")?;
        let mut y = vec![T::ZERO; b * l * d];
        y.par_chunks_mut(d.max(1)).zip(xd.par_chunks(d.max(1))).enumerate().for_each(|(row, (yr, xr))| {
            let bi = row / l.max(1);
            let (s0, c0) = (&sh[bi * d..(bi + 1) * d], &sc[bi * d..(bi + 1) * d]);
            for j in 0..d {
                yr[j] = xr[j] * (T::ONE + c0[j]) + s0[j];
            }
        });
        Ok(Tensor::from_compute(y, x.shape(), ot))
    })
}

/// Gradients of [`modulate`].
#[derive(Debug, Clone)]
pub struct ModulateGrads {
    /// `dL/dx = dy·(1+scale)`.
    pub dx: Tensor,
    /// `dL/dshift = Σ_tokens dy`, in the shape `shift` was given.
    pub dshift: Tensor,
    /// `dL/dscale = Σ_tokens dy·x`, in the shape `scale` was given.
    pub dscale: Tensor,
}

/// Backward of [`modulate`].
pub fn modulate_backward(x: &Tensor, shift: &Tensor, scale: &Tensor, dy: &Tensor) -> Result<ModulateGrads> {
    let (b, l, d) = modulation_dims(x, shift, scale)?;
    expect_same_shape(x, dy, "modulate_backward")?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, shift, scale, dy], "modulate_backward")? {
        let (dx, dshift, dscale) = crate::cuda::ops::modulate_backward(x, shift, scale, dy, b, l, d)?;
        return Ok(ModulateGrads { dx, dshift, dscale });
    }
    let ct = compute_dtype(&[x, shift, scale, dy]);
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>("modulate_backward")?;
        let sc = scale.cpu_data::<T>("modulate_backward")?;
        let g = dy.cpu_data::<T>("modulate_backward")?;
        let mut dx = vec![T::ZERO; b * l * d];
        dx.par_chunks_mut(d.max(1)).zip(g.par_chunks(d.max(1))).enumerate().for_each(|(row, (o, gr))| {
            let bi = row / l.max(1);
            for j in 0..d {
                o[j] = gr[j] * (T::ONE + sc[bi * d + j]);
            }
        });
        let gx = zip_map(&g, &xd, |a, b| a * b);
        let mut dshift = Vec::with_capacity(b * d);
        let mut dscale = Vec::with_capacity(b * d);
        for bi in 0..b {
            let span = bi * l * d..(bi + 1) * l * d;
            dshift.extend(crate::cpu::sum_rows(&g[span.clone()], d));
            dscale.extend(crate::cpu::sum_rows(&gx[span], d));
        }
        Ok(ModulateGrads {
            dx: Tensor::from_compute(dx, x.shape(), ct),
            dshift: Tensor::from_compute(dshift, shift.shape(), ct),
            dscale: Tensor::from_compute(dscale, scale.shape(), ct),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting() {
        let a = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![10f32, 20., 30.], &[3]).unwrap();
        let c = Tensor::from_vec(vec![100f32, 200.], &[2, 1]).unwrap();
        assert_eq!(add(&a, &b).unwrap().to_vec_f32().unwrap(), vec![11., 22., 33., 14., 25., 36.]);
        assert_eq!(mul(&a, &c).unwrap().to_vec_f32().unwrap(), vec![100., 200., 300., 800., 1000., 1200.]);
        let s = sum_to_shape(&a, &[3]).unwrap();
        assert_eq!(s.to_vec_f32().unwrap(), vec![5., 7., 9.]);
        let s = sum_to_shape(&a, &[2, 1]).unwrap();
        assert_eq!(s.to_vec_f32().unwrap(), vec![6., 15.]);
        let s = sum_to_shape(&a, &[]).unwrap();
        assert_eq!(s.to_vec_f32().unwrap(), vec![21.]);
        assert!(add(&a, &Tensor::from_vec(vec![1f32, 2.], &[2]).unwrap()).is_err());
        assert!(sum_to_shape(&a, &[2]).is_err());
    }
}
