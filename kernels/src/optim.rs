//! AdamW on fp32 (or f64) master weights and global gradient-norm clipping.

use rayon::prelude::*;

use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// AdamW hyper-parameters (torch defaults except the learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay λ (applied as `p ← p − lr·λ·p`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

#[derive(Debug, Clone)]
enum Moments {
    F32 {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    F64 {
        m: Vec<f64>,
        v: Vec<f64>,
    },
    /// f32 moments on the parameter's CUDA device.
    Device {
        m: Tensor,
        v: Tensor,
    },
}

/// AdamW with decoupled weight decay and bias correction:
///
/// ```text
/// p ← p − lr·λ·p
/// m ← β₁m + (1−β₁)g          v ← β₂v + (1−β₂)g²
/// p ← p − lr · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
/// ```
///
/// Parameters must be `F32` (master weights) or `F64` tensors; gradients of any dtype are
/// converted. Moments are kept in the parameter's dtype.
#[derive(Debug, Clone)]
pub struct AdamW {
    cfg: AdamWConfig,
    t: u64,
    state: Vec<Moments>,
}

impl AdamW {
    /// A new optimiser; validates the hyper-parameters.
    pub fn new(cfg: AdamWConfig) -> Result<AdamW> {
        let ok = cfg.lr >= 0.0
            && (0.0..1.0).contains(&cfg.beta1)
            && (0.0..1.0).contains(&cfg.beta2)
            && cfg.eps > 0.0
            && cfg.weight_decay >= 0.0;
        if !ok {
            return Err(Error::arg("AdamW", format!("invalid hyper-parameters {cfg:?}")));
        }
        Ok(AdamW { cfg, t: 0, state: Vec::new() })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Change the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// One update of every parameter from its gradient (same order and shapes every step).
    pub fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()> {
        const OP: &str = "AdamW::step";
        if params.len() != grads.len() {
            return Err(Error::arg(OP, format!("{} params but {} grads", params.len(), grads.len())));
        }
        if !self.state.is_empty() && self.state.len() != params.len() {
            return Err(Error::arg(
                OP,
                format!("optimiser holds state for {} params, got {}", self.state.len(), params.len()),
            ));
        }
        if params.iter().any(|p| p.device() != Device::Cpu) {
            return self.step_device(params, grads);
        }
        for (p, g) in params.iter().zip(grads) {
            if p.shape() != g.shape() {
                return Err(Error::shape(OP, format!("param {:?} vs grad {:?}", p.shape(), g.shape())));
            }
            if !matches!(p.dtype(), DType::F32 | DType::F64) {
                return Err(Error::DType {
                    op: OP,
                    dtype: p.dtype(),
                    msg: "parameters must be f32 master weights (or f64)".into(),
                });
            }
        }
        if self.state.is_empty() {
            self.state = params
                .iter()
                .map(|p| match p.dtype() {
                    DType::F64 => Moments::F64 { m: vec![0.0; p.numel()], v: vec![0.0; p.numel()] },
                    _ => Moments::F32 { m: vec![0.0; p.numel()], v: vec![0.0; p.numel()] },
                })
                .collect();
        }
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for ((p, g), st) in params.iter_mut().zip(grads).zip(&mut self.state) {
            match st {
                Moments::F32 { m, v } => update::<f32>(p, g, m, v, &c, bc1, bc2)?,
                Moments::F64 { m, v } => update::<f64>(p, g, m, v, &c, bc1, bc2)?,
                Moments::Device { .. } => {
                    return Err(Error::arg(OP, "the moments are on a CUDA device but the parameters are not"));
                }
            }
        }
        Ok(())
    }

    /// [`AdamW::step`] for parameters on a CUDA device (f32 master weights; moments kept on the
    /// device, moved there from a CPU state restored by [`AdamW::import_state`]).
    fn step_device(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()> {
        const OP: &str = "AdamW::step";
        let device = params[0].device();
        if let Some(p) = params.iter().find(|p| p.device() != device) {
            return Err(Error::DeviceMismatch { op: OP, a: device, b: p.device() });
        }
        if self.state.is_empty() {
            self.state = params
                .iter()
                .map(|p| {
                    Ok(Moments::Device {
                        m: Tensor::zeros(p.shape(), DType::F32, device)?,
                        v: Tensor::zeros(p.shape(), DType::F32, device)?,
                    })
                })
                .collect::<Result<_>>()?;
        }
        for (st, p) in self.state.iter_mut().zip(params.iter()) {
            if let Moments::F32 { m, v } = st {
                if m.len() != p.numel() {
                    return Err(Error::shape(OP, "parameter changed size between steps"));
                }
                let m = Tensor::from_vec(std::mem::take(m), p.shape())?.to_device(device)?;
                let v = Tensor::from_vec(std::mem::take(v), p.shape())?.to_device(device)?;
                *st = Moments::Device { m, v };
            }
        }
        let mut ms = Vec::with_capacity(params.len());
        let mut vs = Vec::with_capacity(params.len());
        for st in &self.state {
            match st {
                Moments::Device { m, v } => {
                    ms.push(m.clone());
                    vs.push(v.clone());
                }
                _ => return Err(Error::arg(OP, "f64 moments cannot be used with CUDA parameters")),
            }
        }
        #[cfg(feature = "cuda")]
        {
            crate::cuda::adamw_step(params, grads, &ms, &vs, &self.cfg, self.t + 1)?;
            self.t += 1;
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = grads;
            Err(Error::NoBackend { op: OP, device })
        }
    }
}

/// A snapshot of [`AdamW`]'s state for checkpoints: the step count `t` and, per parameter (in
/// the order the parameters are passed to [`AdamW::step`]), the first and second moments as
/// flat 1-D tensors in the parameter's dtype (`F32`, or `F64` for f64 parameters). Both lists are
/// empty before the first step.
#[derive(Debug, Clone)]
pub struct AdamWState {
    /// Number of steps taken (drives the bias correction).
    pub step: u64,
    /// First moments `m`, one flat tensor per parameter.
    pub exp_avg: Vec<Tensor>,
    /// Second moments `v`, one flat tensor per parameter.
    pub exp_avg_sq: Vec<Tensor>,
}

impl AdamW {
    /// The optimiser state (step count and moments), for checkpoints. The hyper-parameters are
    /// not part of it (see [`AdamW::config`]). Moments on a CUDA device are copied to the host
    /// (which can fail).
    pub fn export_state(&self) -> Result<AdamWState> {
        let mut exp_avg = Vec::with_capacity(self.state.len());
        let mut exp_avg_sq = Vec::with_capacity(self.state.len());
        for st in &self.state {
            // The lengths are the vectors' own, so construction cannot fail.
            let (m, v) = match st {
                Moments::F32 { m, v } => {
                    (Tensor::from_vec(m.clone(), &[m.len()]), Tensor::from_vec(v.clone(), &[v.len()]))
                }
                Moments::F64 { m, v } => {
                    (Tensor::from_vec(m.clone(), &[m.len()]), Tensor::from_vec(v.clone(), &[v.len()]))
                }
                Moments::Device { m, v } => {
                    let flat =
                        |t: &Tensor| -> Result<Tensor> { Tensor::from_vec(t.to_cpu()?.to_vec_f32()?, &[t.numel()]) };
                    (flat(m), flat(v))
                }
            };
            exp_avg.push(m?);
            exp_avg_sq.push(v?);
        }
        Ok(AdamWState { step: self.t, exp_avg, exp_avg_sq })
    }

    /// Restores a state written by [`AdamW::export_state`]. Moments may have any shape (they
    /// are flattened); each pair must agree in size and be `F32` or `F64` (the dtype decides the
    /// precision the moments are kept in, which must match the parameter's at the next step).
    /// A state with moments but step 0, or unequal list lengths, is an error.
    pub fn import_state(&mut self, state: AdamWState) -> Result<()> {
        const OP: &str = "AdamW::import_state";
        if state.exp_avg.len() != state.exp_avg_sq.len() {
            return Err(Error::arg(
                OP,
                format!("{} first moments but {} second moments", state.exp_avg.len(), state.exp_avg_sq.len()),
            ));
        }
        if state.step == 0 && !state.exp_avg.is_empty() {
            return Err(Error::arg(OP, "moments given for step 0"));
        }
        let mut moments = Vec::with_capacity(state.exp_avg.len());
        for (i, (m, v)) in state.exp_avg.iter().zip(&state.exp_avg_sq).enumerate() {
            if m.numel() != v.numel() {
                return Err(Error::shape(OP, format!("moment {i}: {:?} vs {:?}", m.shape(), v.shape())));
            }
            moments.push(match (m.dtype(), v.dtype()) {
                (DType::F32, DType::F32) => Moments::F32 { m: m.to_vec_f32()?, v: v.to_vec_f32()? },
                (DType::F64, DType::F64) => Moments::F64 { m: m.to_vec_f64()?, v: v.to_vec_f64()? },
                (a, b) => {
                    return Err(Error::DType {
                        op: OP,
                        dtype: if matches!(a, DType::F32 | DType::F64) { b } else { a },
                        msg: format!("moment {i}: both moments must be f32 or both f64, got {a:?} and {b:?}"),
                    });
                }
            });
        }
        self.t = state.step;
        self.state = moments;
        Ok(())
    }
}

fn update<T: Float>(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut [T],
    v: &mut [T],
    c: &AdamWConfig,
    bc1: f64,
    bc2: f64,
) -> Result<()> {
    let gd = g.cpu_data::<T>("AdamW::step")?;
    let pd = p.data_mut::<T>()?;
    if m.len() != pd.len() {
        return Err(Error::shape("AdamW::step", "parameter changed size between steps"));
    }
    let (b1, b2) = (T::from_f64(c.beta1), T::from_f64(c.beta2));
    let decay = T::from_f64(1.0 - c.lr * c.weight_decay);
    let step = T::from_f64(c.lr / bc1);
    let rbc2 = T::from_f64(1.0 / bc2.sqrt());
    let eps = T::from_f64(c.eps);
    pd.par_iter_mut().zip(gd.par_iter()).zip(m.par_iter_mut().zip(v.par_iter_mut())).for_each(|((p, &g), (m, v))| {
        *p *= decay;
        *m = b1 * *m + (T::ONE - b1) * g;
        *v = b2 * *v + (T::ONE - b2) * g * g;
        *p -= step * *m / (v.sqrt() * rbc2 + eps);
    });
    Ok(())
}

/// Global L2 norm of all gradients, accumulated in f64 over fixed chunks (bitwise the same for
/// any thread count).
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if grads.iter().any(|g| g.device() != Device::Cpu) {
        return crate::cuda::grad_norm(grads);
    }
    let mut total = 0.0;
    for g in grads {
        let d = g.cpu_data::<f64>("grad_norm")?;
        total += crate::cpu::det_sum(d.len(), |r| d[r].iter().map(|&x| x * x).sum::<f64>());
    }
    Ok(total.sqrt())
}

/// Clips gradients in place to a global L2 norm of at most `max_norm` (torch's
/// `clip_grad_norm_`: scale by `max_norm/(norm + 1e-6)` when `norm > max_norm`) and returns the
/// norm before clipping. Half-precision gradients are converted to `f32` first. A non-finite norm
/// leaves the gradients untouched; check the returned value and skip the step.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::arg("clip_grad_norm", format!("max_norm {max_norm} must be > 0")));
    }
    #[cfg(feature = "cuda")]
    if grads.iter().any(|g| g.device() != Device::Cpu) {
        return crate::cuda::clip_grad_norm(grads, max_norm);
    }
    let norm = grad_norm(grads)?;
    if norm.is_finite() && norm > max_norm {
        let coef = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            if !matches!(g.dtype(), DType::F32 | DType::F64) {
                *g = g.to_dtype(DType::F32)?;
            }
            match g.dtype() {
                DType::F64 => g.data_mut::<f64>()?.par_iter_mut().for_each(|x| *x *= coef),
                _ => {
                    let c = coef as f32;
                    g.data_mut::<f32>()?.par_iter_mut().for_each(|x| *x *= c)
                }
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_hand_computation() {
        let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.5 };
        let mut opt = AdamW::new(cfg).unwrap();
        let mut params = vec![Tensor::from_vec(vec![1.0f64, -2.0], &[2]).unwrap()];
        let grads1 = [Tensor::from_vec(vec![0.5f64, -1.0], &[2]).unwrap()];
        let grads2 = [Tensor::from_vec(vec![-0.25f64, 2.0], &[2]).unwrap()];
        opt.step(&mut params, &grads1).unwrap();
        opt.step(&mut params, &grads2).unwrap();
        // reference, written out per element
        let mut want = [1.0f64, -2.0];
        let g = [[0.5, -1.0], [-0.25, 2.0]];
        for i in 0..2 {
            let (mut m, mut v, mut p) = (0.0, 0.0, want[i]);
            for (t, gs) in g.iter().enumerate() {
                let t = (t + 1) as i32;
                p -= 0.1 * 0.5 * p;
                m = 0.9 * m + 0.1 * gs[i];
                v = 0.99 * v + 0.01 * gs[i] * gs[i];
                let mh = m / (1.0 - 0.9f64.powi(t));
                let vh = v / (1.0 - 0.99f64.powi(t));
                p -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
            want[i] = p;
        }
        let got = params[0].to_vec_f64().unwrap();
        for i in 0..2 {
            assert!((got[i] - want[i]).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        assert_eq!(opt.step_count(), 2);
        // bf16 params are rejected, mismatched grads too
        let mut bad = vec![params[0].to_dtype(DType::BF16).unwrap()];
        assert!(opt.step(&mut bad, &grads1).is_err());
        assert!(AdamW::new(AdamWConfig { beta1: 1.0, ..cfg }).is_err());
    }

    #[test]
    fn clipping() {
        let mut g = vec![
            Tensor::from_vec(vec![3.0f32], &[1]).unwrap(),
            Tensor::from_vec(vec![4.0f32], &[1]).unwrap().to_dtype(DType::BF16).unwrap(),
        ];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let after = grad_norm(&g).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        assert_eq!(g[1].dtype(), DType::F32);
        let n2 = clip_grad_norm(&mut g, 10.0).unwrap();
        assert!((n2 - after).abs() < 1e-12);
        assert!((grad_norm(&g).unwrap() - after).abs() < 1e-12);
        assert!(clip_grad_norm(&mut g, 0.0).is_err());
    }
}
