//! FlowMatch Euler (WAN_SPEC.md §5.3), with the reference's arithmetic: the training table's ends
//! `σ_max = shift(1)`, `σ_min = shift(1/T)` in f32; `N` timesteps spaced linearly between `T·σ_max`
//! and `T·σ_min` in f64, divided by `T` and shifted again (a quirk of the reference: the tail is
//! shifted twice), stored in f32; `σ_N = 0`; the model is fed `t_i = T·σ_i` (f32, not rounded);
//! a step is `x ← x + (σ_{i+1} − σ_i)·v` in f32.
//!
//! [`EulerOptions`] covers diffusers' `FlowMatchEulerDiscreteScheduler` options that reshape that
//! schedule deterministically: `shift_terminal` (stretch so the last σ is the given value), Karras,
//! exponential or beta spacing between the schedule's ends, and `invert_sigmas`.

use super::{Sampler, f32_pair};
use crate::error::{Error, Result};
use crate::special::ln_gamma;
use crate::tensor::Tensor;

/// The FlowMatch Euler sampler.
#[derive(Debug, Clone)]
pub struct FlowEuler {
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    next: usize,
}

/// How the σ of the steps are spaced between the shifted schedule's first and last value
/// (diffusers' `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SigmaSpacing {
    /// The shifted linear schedule itself (the Wan pipelines).
    #[default]
    Shifted,
    /// Karras et al. (2022), ρ = 7: linear in `σ^(1/ρ)`.
    Karras,
    /// Linear in `ln σ`.
    Exponential,
    /// Beta-distribution quantiles (α = β = 0.6, "Beta Sampling is All You Need").
    Beta,
}

/// Options of diffusers' `FlowMatchEulerDiscreteScheduler` beyond the shift (config names).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EulerOptions {
    /// `shift_terminal`: stretch the shifted schedule so that its last σ is this value.
    pub shift_terminal: Option<f64>,
    /// Spacing of the σ between the (stretched) schedule's ends.
    pub spacing: SigmaSpacing,
    /// `invert_sigmas`: σ ← 1 − σ, the final σ 1 (models trained with the opposite convention).
    pub invert_sigmas: bool,
}

fn shift_f32(s: f32, by: f32) -> f32 {
    by * s / (1.0 + (by - 1.0) * s)
}

/// Karras' ρ.
const KARRAS_RHO: f64 = 7.0;
/// The beta spacing's distribution parameters (diffusers' defaults, not configurable there).
const BETA_SPACING_AB: (f64, f64) = (0.6, 0.6);

impl FlowEuler {
    /// A schedule of `steps` steps for a model trained on `train_timesteps` (1000) timesteps with
    /// timestep shift `shift` (3 for 480p, 5 for 720p).
    pub fn new(train_timesteps: usize, shift: f64, steps: usize) -> Result<FlowEuler> {
        FlowEuler::with_options(train_timesteps, shift, steps, &EulerOptions::default())
    }

    /// A schedule of `steps` steps reshaped by `options`, as the reference computes it (f64 until
    /// the σ are stored in f32).
    pub fn with_options(train_timesteps: usize, shift: f64, steps: usize, options: &EulerOptions) -> Result<FlowEuler> {
        super::check_schedule("FlowEuler", train_timesteps, shift, steps)?;
        let t = train_timesteps as f64;
        let by = shift as f32;
        let sigma_max = shift_f32(1.0, by) as f64;
        let sigma_min = shift_f32(1.0 / t as f32, by) as f64;
        let (hi, lo) = (sigma_max * t, sigma_min * t);
        let mut sigmas: Vec<f64> = (0..steps)
            .map(|i| {
                let lin = if steps == 1 { hi } else { hi + (lo - hi) * i as f64 / (steps - 1) as f64 };
                let s = lin / t;
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .collect();
        if let Some(terminal) = options.shift_terminal {
            super::stretch_to_terminal("FlowEuler", &mut sigmas, terminal)?;
        }
        let (first, last) = (sigmas[0], sigmas[steps - 1]);
        // The reference's ramp is `linspace(0, 1, N)`: [0] for one step.
        let ramp = |i: usize| if steps == 1 { 0.0 } else { i as f64 / (steps - 1) as f64 };
        match options.spacing {
            SigmaSpacing::Shifted => {}
            SigmaSpacing::Karras => {
                let (a, b) = (first.powf(1.0 / KARRAS_RHO), last.powf(1.0 / KARRAS_RHO));
                sigmas = (0..steps).map(|i| (a + ramp(i) * (b - a)).powf(KARRAS_RHO)).collect();
            }
            SigmaSpacing::Exponential => {
                let (a, b) = (first.ln(), last.ln());
                sigmas = (0..steps).map(|i| (a + (b - a) * ramp(i)).exp()).collect();
            }
            SigmaSpacing::Beta => {
                let (alpha, beta) = BETA_SPACING_AB;
                sigmas =
                    (0..steps).map(|i| last + beta_quantile(1.0 - ramp(i), alpha, beta) * (first - last)).collect();
            }
        }
        if sigmas.iter().any(|s| !s.is_finite()) {
            return Err(Error::arg("FlowEuler", format!("the options {options:?} give a schedule that is not finite")));
        }
        let mut sigmas: Vec<f32> = sigmas.iter().map(|s| *s as f32).collect();
        let tf = train_timesteps as f32;
        if options.invert_sigmas {
            sigmas = sigmas.iter().map(|s| 1.0 - s).collect();
        }
        let timesteps = sigmas.iter().map(|s| s * tf).collect();
        sigmas.push(if options.invert_sigmas { 1.0 } else { 0.0 });
        Ok(FlowEuler { sigmas, timesteps, next: 0 })
    }

    /// The model timesteps, one per step.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// σ_0 … σ_N (σ_N = 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Sampler for FlowEuler {
    fn len(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, i: usize) -> f32 {
        self.timesteps[i.min(self.timesteps.len() - 1)]
    }

    fn sigma(&self, i: usize) -> f32 {
        self.sigmas[i.min(self.sigmas.len() - 1)]
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.next;
        if i >= self.len() {
            return Err(Error::arg("FlowEuler::step", format!("all {} steps are taken", self.len())));
        }
        let (v, x) = f32_pair("FlowEuler::step", model_output, sample)?;
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        self.next += 1;
        Tensor::from_vec(x.iter().zip(&v).map(|(x, v)| x + dt * v).collect::<Vec<f32>>(), sample.shape())
    }
}

/// The regularised incomplete beta function `I_x(a, b)` by its continued fraction (modified
/// Lentz), using the symmetry `I_x(a, b) = 1 − I_{1−x}(b, a)` where the fraction converges slowly.
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    const TINY: f64 = 1e-300;
    let (mut f, mut c, mut d) = (1.0f64, 1.0f64, 0.0f64);
    for i in 0..=400 {
        let m = (i / 2) as f64;
        let numerator = if i == 0 {
            1.0
        } else if i % 2 == 0 {
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
        } else {
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
        };
        d = 1.0 + numerator * d;
        d = if d.abs() < TINY { TINY } else { d };
        d = 1.0 / d;
        c = 1.0 + numerator / c;
        c = if c.abs() < TINY { TINY } else { c };
        let cd = c * d;
        f *= cd;
        if (cd - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * (f - 1.0)
}

/// The `p`-quantile of the Beta(a, b) distribution (`scipy.stats.beta.ppf`), by bisection on
/// [`incomplete_beta`] to f64 resolution.
fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_quantiles_invert_the_distribution() {
        // Beta(1, 1) is uniform; Beta(2, 1) has CDF x²; Beta(a, a) is symmetric about 1/2.
        for p in [0.01, 0.3, 0.5, 0.77, 0.999] {
            assert!((beta_quantile(p, 1.0, 1.0) - p).abs() < 1e-13, "{p}");
            assert!((beta_quantile(p, 2.0, 1.0) - p.sqrt()).abs() < 1e-13, "{p}");
            let (q, r) = (beta_quantile(p, 0.6, 0.6), beta_quantile(1.0 - p, 0.6, 0.6));
            assert!((q + r - 1.0).abs() < 1e-12, "{p}: {q} {r}");
        }
        assert!((beta_quantile(0.5, 0.6, 0.6) - 0.5).abs() < 1e-13);
    }

    #[test]
    fn spacings_keep_the_schedule_ends() {
        let base = FlowEuler::new(1000, 3.0, 12).unwrap();
        for spacing in [SigmaSpacing::Karras, SigmaSpacing::Exponential, SigmaSpacing::Beta] {
            let e = FlowEuler::with_options(1000, 3.0, 12, &EulerOptions { spacing, ..Default::default() }).unwrap();
            let (s, b) = (e.sigmas(), base.sigmas());
            assert!((s[0] - b[0]).abs() < 1e-6 && (s[11] - b[11]).abs() < 1e-6, "{spacing:?}: {s:?}");
            assert!(s.windows(2).all(|w| w[0] > w[1]), "{spacing:?} decreases: {s:?}");
            assert_eq!(s[12], 0.0);
        }
        let t =
            FlowEuler::with_options(1000, 3.0, 8, &EulerOptions { shift_terminal: Some(0.1), ..Default::default() })
                .unwrap();
        assert!((t.sigmas()[7] - 0.1).abs() < 1e-6);
        let bad = EulerOptions { shift_terminal: Some(1.0), ..Default::default() };
        assert!(FlowEuler::with_options(1000, 3.0, 8, &bad).is_err());
    }
}
