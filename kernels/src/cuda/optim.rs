//! AdamW and gradient-norm clipping on CUDA buffers (the device side of [`crate::optim`]).
//!
//! These update device tensors *in place*: every view sharing a buffer sees the update.

use super::launch::{cfg_elems, dt, launch};
use super::ops::device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::optim::AdamWConfig;
use crate::tensor::{Device, Tensor};

fn check_f32_dev(t: &Tensor, op: &'static str, what: &str) -> Result<usize> {
    let Device::Cuda(ord) = t.device() else {
        return Err(Error::arg(op, format!("{what} is on {}, expected a CUDA tensor", t.device())));
    };
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        return Err(Error::DType { op, dtype: t.dtype(), msg: format!("{what} must be a contiguous f32 tensor") });
    }
    Ok(ord)
}

fn dptr(t: &Tensor) -> u64 {
    t.cuda_storage().expect("checked CUDA tensor").ptr_at(t.layout().offset())
}

/// One AdamW step (step number `step` ≥ 1, for the bias corrections) on f32 master weights `params` with
/// moments `m`, `v` (f32, same shapes, zero-initialised by the caller before step 1), all on one CUDA
/// device; `grads` may be f32 or bf16. Same update as [`crate::optim::AdamW::step`].
pub fn adamw_step(
    params: &[Tensor],
    grads: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    cfg: &AdamWConfig,
    step: u64,
) -> Result<()> {
    const OP: &str = "cuda::adamw_step";
    if grads.len() != params.len() || m.len() != params.len() || v.len() != params.len() {
        return Err(Error::arg(OP, "params, grads, m and v must have the same length"));
    }
    if step == 0 {
        return Err(Error::arg(OP, "step numbers start at 1"));
    }
    let bc1 = 1.0 - cfg.beta1.powi(step as i32);
    let bc2 = 1.0 - cfg.beta2.powi(step as i32);
    let decay = (1.0 - cfg.lr * cfg.weight_decay) as f32;
    let stepf = (cfg.lr / bc1) as f32;
    let rbc2 = (1.0 / bc2.sqrt()) as f32;
    for i in 0..params.len() {
        let (p, g) = (&params[i], &grads[i]);
        let ord = check_f32_dev(p, OP, "param")?;
        check_f32_dev(&m[i], OP, "exp_avg")?;
        check_f32_dev(&v[i], OP, "exp_avg_sq")?;
        if g.shape() != p.shape() || m[i].shape() != p.shape() || v[i].shape() != p.shape() {
            return Err(Error::shape(
                OP,
                format!("param {:?}, grad {:?}, moments {:?}/{:?}", p.shape(), g.shape(), m[i].shape(), v[i].shape()),
            ));
        }
        if g.device() != p.device() || m[i].device() != p.device() || v[i].device() != p.device() {
            return Err(Error::DeviceMismatch { op: OP, a: p.device(), b: g.device() });
        }
        let g = g.try_contiguous()?;
        let n = p.numel();
        if n == 0 {
            continue;
        }
        let dev = device(ord)?;
        launch!(dev, "optim.cu", "adamw_step", cfg_elems(n);
            dptr(p), dptr(&g), dt(g.dtype()), dptr(&m[i]), dptr(&v[i]), cfg.beta1 as f32, cfg.beta2 as f32, decay,
            stepf, rbc2, cfg.eps as f32, n as i64)?;
    }
    Ok(())
}

/// Global L2 norm of CUDA gradients (f64 accumulation, deterministic).
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0.0;
    for g in grads {
        total += super::ops::sum_sq_diff(g, None)?;
    }
    Ok(total.sqrt())
}

/// Clips contiguous f32 CUDA gradients in place to a global norm of at most `max_norm` (scale by
/// `max_norm/(norm + 1e-6)` when `norm > max_norm`, as [`crate::optim::clip_grad_norm`]); returns the norm
/// before clipping. A non-finite norm leaves the gradients untouched.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<f64> {
    const OP: &str = "cuda::clip_grad_norm";
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::arg(OP, format!("max_norm {max_norm} must be > 0")));
    }
    for g in grads {
        check_f32_dev(g, OP, "gradient")?;
    }
    let norm = grad_norm(grads)?;
    if norm.is_finite() && norm > max_norm {
        let coef = (max_norm / (norm + 1e-6)) as f32;
        for g in grads {
            let n = g.numel();
            if n == 0 {
                continue;
            }
            let Device::Cuda(ord) = g.device() else { unreachable!("checked above") };
            let dev = device(ord)?;
            launch!(dev, "elementwise.cu", "scale_inplace_f32", cfg_elems(n); dptr(g), coef, n as i64)?;
        }
    }
    Ok(norm)
}
