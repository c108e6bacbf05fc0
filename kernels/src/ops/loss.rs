//! Mean-squared-error loss (the flow-matching objective).

use super::{compute_dtype, dispatch, expect_same_shape};
use crate::cpu::{det_sum, zip_map};
use crate::dtype::Float;
use crate::error::Result;
use crate::tensor::Tensor;

/// `mean((pred − target)²)` over all elements, accumulated in f64 over fixed chunks (the
/// grouping depends on the size only, so the bits do not depend on the thread count); returns the value.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<f64> {
    expect_same_shape(pred, target, "mse_loss")?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[pred, target], "mse_loss")? {
        return crate::cuda::ops::mse_loss(pred, target);
    }
    let ct = compute_dtype(&[pred, target]);
    dispatch!(ct, T => {
        let p = pred.cpu_data::<T>("mse_loss")?;
        let t = target.cpu_data::<T>("mse_loss")?;
        let n = p.len().max(1) as f64;
        // fixed chunks, chunk sums added in order: bitwise the same for any thread count
        let s = det_sum(p.len(), |r| {
            p[r.clone()]
                .iter()
                .zip(&t[r])
                .map(|(&a, &b)| {
                    let d = (a - b).to_f64();
                    d * d
                })
                .sum::<f64>()
        });
        Ok(s / n)
    })
}

/// Backward of [`mse_loss`]: `dpred = dloss · 2·(pred − target)/numel`
/// (pass `dloss = 1/grad_accum_steps` for gradient accumulation). `dtarget = −dpred`.
pub fn mse_loss_backward(pred: &Tensor, target: &Tensor, dloss: f64) -> Result<Tensor> {
    expect_same_shape(pred, target, "mse_loss_backward")?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[pred, target], "mse_loss_backward")? {
        return crate::cuda::ops::mse_loss_backward(pred, target, dloss);
    }
    let ct = compute_dtype(&[pred, target]);
    dispatch!(ct, T => {
        let p = pred.cpu_data::<T>("mse_loss_backward")?;
        let t = target.cpu_data::<T>("mse_loss_backward")?;
        let k = T::from_f64(2.0 * dloss / p.len().max(1) as f64);
        Ok(Tensor::from_compute(zip_map(&p, &t, |a, b| k * (a - b)), pred.shape(), ct))
    })
}
