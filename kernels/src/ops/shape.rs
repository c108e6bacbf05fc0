//! Data-movement ops with gradients: concatenation, nearest-neighbour upsampling, embedding
//! lookup; and the (parameter-free) sinusoidal timestep embedding.

use rayon::prelude::*;

use super::{compute_dtype, dispatch, out_dtype};
use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Concatenates tensors along `dim` (all other dims equal). Used for the VAE's temporal caches.
pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    const OP: &str = "cat";
    let first = tensors.first().ok_or_else(|| Error::arg(OP, "no tensors to concatenate"))?;
    let rank = first.rank();
    if dim >= rank {
        return Err(Error::dim(OP, format!("dim {dim} of rank {rank}")));
    }
    for t in tensors {
        let ok = t.rank() == rank && (0..rank).all(|d| d == dim || t.shape()[d] == first.shape()[d]);
        if !ok {
            return Err(Error::shape(OP, format!("{:?} vs {:?} along dim {dim}", t.shape(), first.shape())));
        }
    }
    let (ct, ot) = (compute_dtype(tensors), out_dtype(tensors));
    let outer: usize = first.shape()[..dim].iter().product();
    let inner: usize = first.shape()[dim + 1..].iter().product();
    let mut shape = first.shape().to_vec();
    shape[dim] = tensors.iter().map(|t| t.shape()[dim]).sum();
    #[cfg(feature = "cuda")]
    if super::on_cuda(tensors, OP)? {
        return crate::cuda::ops::cat(tensors, dim, &shape, ot);
    }
    dispatch!(ct, T => {
        let datas = tensors.iter().map(|t| t.cpu_data::<T>(OP)).collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for (t, d) in tensors.iter().zip(&datas) {
                let n = t.shape()[dim] * inner;
                out.extend_from_slice(&d[o * n..(o + 1) * n]);
            }
        }
        Ok(Tensor::from_compute(out, &shape, ot))
    })
}

/// Backward of [`cat`]: splits `dy` along `dim` into pieces of the given sizes.
pub fn cat_backward(dy: &Tensor, dim: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    if dy.dim(dim)? != sizes.iter().sum::<usize>() {
        return Err(Error::shape(
            "cat_backward",
            format!("dy {:?} does not split into {sizes:?} along dim {dim}", dy.shape()),
        ));
    }
    let ct = compute_dtype(&[dy]);
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let piece = dy.narrow(dim, start, n)?.to_dtype(ct)?.contiguous();
            start += n;
            Ok(piece)
        })
        .collect()
}

/// Nearest-neighbour upsampling of the last two dims by integer factors (the VAE's ×2
/// `nearest-exact` resample, which for integer factors is pixel duplication).
pub fn upsample_nearest(x: &Tensor, factor: [usize; 2]) -> Result<Tensor> {
    const OP: &str = "upsample_nearest";
    if x.rank() < 2 || factor.contains(&0) {
        return Err(Error::arg(OP, format!("shape {:?}, factor {factor:?}", x.shape())));
    }
    let r = x.rank();
    let (h, w) = (x.shape()[r - 2], x.shape()[r - 1]);
    let (fh, fw) = (factor[0], factor[1]);
    let mut shape = x.shape().to_vec();
    shape[r - 2] = h * fh;
    shape[r - 1] = w * fw;
    let (ct, ot) = (compute_dtype(&[x]), out_dtype(&[x]));
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x], OP)? {
        return crate::cuda::ops::upsample_nearest(x, factor, &shape, ot);
    }
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let plane = h * w;
        let mut y = vec![T::ZERO; xd.len() * fh * fw];
        if plane > 0 {
            y.par_chunks_mut(plane * fh * fw).zip(xd.par_chunks(plane)).for_each(|(yp, xp)| {
                for i in 0..h * fh {
                    for j in 0..w * fw {
                        yp[i * w * fw + j] = xp[(i / fh) * w + j / fw];
                    }
                }
            });
        }
        Ok(Tensor::from_compute(y, &shape, ot))
    })
}

/// Backward of [`upsample_nearest`]: sums each `fh × fw` block of `dy`.
pub fn upsample_nearest_backward(dy: &Tensor, factor: [usize; 2]) -> Result<Tensor> {
    const OP: &str = "upsample_nearest_backward";
    let r = dy.rank();
    if r < 2
        || factor.contains(&0)
        || !dy.shape()[r - 2].is_multiple_of(factor[0])
        || !dy.shape()[r - 1].is_multiple_of(factor[1])
    {
        return Err(Error::arg(OP, format!("shape {:?}, factor {factor:?}", dy.shape())));
    }
    let (fh, fw) = (factor[0], factor[1]);
    let (h, w) = (dy.shape()[r - 2] / fh, dy.shape()[r - 1] / fw);
    let mut shape = dy.shape().to_vec();
    shape[r - 2] = h;
    shape[r - 1] = w;
    let ct = compute_dtype(&[dy]);
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[dy], OP)? {
        return crate::cuda::ops::upsample_nearest_backward(dy, factor, &shape);
    }
    dispatch!(ct, T => {
        let g = dy.cpu_data::<T>(OP)?;
        let plane = h * w;
        let mut dx = vec![T::ZERO; g.len() / (fh * fw)];
        if plane > 0 {
            dx.par_chunks_mut(plane).zip(g.par_chunks(plane * fh * fw)).for_each(|(dp, gp)| {
                for i in 0..h * fh {
                    for j in 0..w * fw {
                        dp[(i / fh) * w + j / fw] += gp[i * w * fw + j];
                    }
                }
            });
        }
        Ok(Tensor::from_compute(dx, &shape, ct))
    })
}

/// Embedding lookup: `ids` (any shape `S`, given as a flat slice plus shape) into a table
/// `[V, D]` → `[S..., D]`. Out-of-range ids are an error.
pub fn embedding(ids: &[usize], ids_shape: &[usize], table: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    let (v, d) = embedding_dims(ids, ids_shape, table, OP)?;
    let (ct, ot) = (compute_dtype(&[table]), out_dtype(&[table]));
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[table], OP)? {
        return crate::cuda::ops::embedding(ids, table)?.reshape(&shape);
    }
    dispatch!(ct, T => {
        let td = table.cpu_data::<T>(OP)?;
        let mut out = Vec::with_capacity(ids.len() * d);
        for &i in ids {
            debug_assert!(i < v);
            out.extend_from_slice(&td[i * d..(i + 1) * d]);
        }
        Ok(Tensor::from_compute(out, &shape, ot))
    })
}

fn embedding_dims(ids: &[usize], ids_shape: &[usize], table: &Tensor, op: &'static str) -> Result<(usize, usize)> {
    if table.rank() != 2 {
        return Err(Error::rank(op, "2 (table [V, D])", table.shape()));
    }
    if ids.len() != ids_shape.iter().product::<usize>() {
        return Err(Error::shape(op, format!("{} ids for shape {ids_shape:?}", ids.len())));
    }
    let (v, d) = (table.shape()[0], table.shape()[1]);
    if let Some(&bad) = ids.iter().find(|&&i| i >= v) {
        return Err(Error::arg(op, format!("id {bad} out of range for a vocabulary of {v}")));
    }
    Ok((v, d))
}

/// Backward of [`embedding`]: scatter-adds the rows of `dy [S..., D]` into `dtable [V, D]`.
pub fn embedding_backward(ids: &[usize], ids_shape: &[usize], table: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding_backward";
    let (v, d) = embedding_dims(ids, ids_shape, table, OP)?;
    let mut want = ids_shape.to_vec();
    want.push(d);
    if dy.shape() != want.as_slice() {
        return Err(Error::shape(OP, format!("dy {:?}, expected {want:?}", dy.shape())));
    }
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[table, dy], OP)? {
        return crate::cuda::ops::embedding_backward(ids, v, dy);
    }
    let ct = compute_dtype(&[table, dy]);
    dispatch!(ct, T => {
        let g = dy.cpu_data::<T>(OP)?;
        let mut dt = vec![T::ZERO; v * d];
        for (r, &i) in ids.iter().enumerate() {
            for j in 0..d {
                dt[i * d + j] += g[r * d + j];
            }
        }
        Ok(Tensor::from_compute(dt, &[v, d], ct))
    })
}

/// The Wan timestep sinusoid (WAN_SPEC §1.2 step 2): for each `t`, with `half = dim/2` and
/// `ω_i = 10000^(−i/half)`, `[cos(t·ω_0..half), sin(t·ω_0..half)]` — cosines first. Computed in
/// f64, returned as `[B, dim]` in `dtype`. No parameters, so no backward.
pub fn timestep_embedding(t: &[f64], dim: usize, dtype: DType) -> Result<Tensor> {
    if dim == 0 || !dim.is_multiple_of(2) {
        return Err(Error::arg("timestep_embedding", format!("dim {dim} must be even and > 0")));
    }
    let half = dim / 2;
    let mut out = Vec::with_capacity(t.len() * dim);
    for &tv in t {
        let args: Vec<f64> = (0..half).map(|i| tv * (-(10000f64.ln()) * i as f64 / half as f64).exp()).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
    }
    Tensor::from_f64_slice(&out, &[t.len(), dim], dtype)
}
