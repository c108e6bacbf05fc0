//! Mean-squared-error loss (the flow-matching objective).

use super::{compute_dtype, dispatch, expect_same_shape};
use crate::cpu::zip_map;
use crate::dtype::Float;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `mean((pred − target)²)` over all elements, accumulated in f64; returns the value.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<f64> {
    expect_same_shape(pred, target, "mse_loss")?;
    let ct = compute_dtype(&[pred, target]);
    dispatch!(ct, T => {
        let p = pred.cpu_data::<T>("mse_loss")?;
        let t = target.cpu_data::<T>("mse_loss")?;
        let n = p.len().max(1) as f64;
        let s: f64 = p
            .par_iter()
            .zip(t.par_iter())
            .map(|(&a, &b)| {
                let d = (a - b).to_f64();
                d * d
            })
            .sum();
        Ok(s / n)
    })
}

/// Backward of [`mse_loss`]: `dpred = dloss · 2·(pred − target)/numel`
/// (pass `dloss = 1/grad_accum_steps` for gradient accumulation). `dtarget = −dpred`.
pub fn mse_loss_backward(pred: &Tensor, target: &Tensor, dloss: f64) -> Result<Tensor> {
    expect_same_shape(pred, target, "mse_loss_backward")?;
    let ct = compute_dtype(&[pred, target]);
    dispatch!(ct, T => {
        let p = pred.cpu_data::<T>("mse_loss_backward")?;
        let t = target.cpu_data::<T>("mse_loss_backward")?;
        let k = T::from_f64(2.0 * dloss / p.len().max(1) as f64);
        Ok(Tensor::from_compute(zip_map(&p, &t, |a, b| k * (a - b)), pred.shape(), ct))
    })
}
