//! UniPC multistep sampler for flow matching (bh2 variant, x0-prediction, order ≤ 2, lower order at
//! the end), WAN_SPEC.md §5.3 — the sampler the Wan2.1 diffusers pipelines ship with.
//!
//! Schedule: `σ_i = shift(linspace(1, 1/T, N+1)[i])` for `i < N` (σ_0 nudged below 1 by 1e-6 so
//! that λ stays finite), `σ_N = 0`, stored in f32; the model is fed the integer-truncated
//! `t_i = ⌊T·σ_i⌋`. With `λ(σ) = ln(1−σ) − ln σ` and the model's x0-prediction
//! `m_i = x_i − σ_i·v_i`, each step first corrects the sample it was given with the new
//! prediction (UniC, from the second step on), then predicts the next sample (UniP). The final
//! step (σ_N = 0, λ = ∞) lands exactly on `m_{N−1}`.

use super::{Sampler, f32_pair, shift};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The UniPC (bh2) sampler with flow sigmas.
#[derive(Debug, Clone)]
pub struct FlowUniPc {
    sigmas: Vec<f32>,
    timesteps: Vec<i64>,
    order: usize,
    lower_order_final: bool,
    next: usize,
    /// The last two x0-predictions (oldest first).
    history: Vec<Vec<f32>>,
    /// The previous step's (corrected) sample.
    last_sample: Option<Vec<f32>>,
    /// The order the previous predictor used.
    last_order: usize,
    /// Steps whose corrector is skipped (diffusers' `disable_corrector`: the corrector of step
    /// `i` is skipped when `i − 1` is listed).
    disable_corrector: Vec<usize>,
}

/// The reference's options beyond the schedule (diffusers `UniPCMultistepScheduler` config names).
#[derive(Debug, Clone, PartialEq)]
pub struct UniPcOptions {
    /// Solver order, 1 or 2.
    pub order: usize,
    /// Lower the order on the last steps (the reference's default).
    pub lower_order_final: bool,
    /// `final_sigmas_type = "sigma_min"`: the schedule ends at its last non-zero σ (the last step
    /// then returns the corrected sample) instead of at 0.
    pub final_sigma_min: bool,
    /// `disable_corrector`: step indices after which the corrector is not applied.
    pub disable_corrector: Vec<usize>,
}

impl Default for UniPcOptions {
    fn default() -> Self {
        UniPcOptions { order: 2, lower_order_final: true, final_sigma_min: false, disable_corrector: Vec::new() }
    }
}

fn lambda(s: f64) -> f64 {
    (1.0 - s).ln() - s.ln()
}

impl FlowUniPc {
    /// The pipelines' configuration: order 2, lower order for the final steps.
    pub fn new(train_timesteps: usize, shift: f64, steps: usize) -> Result<FlowUniPc> {
        FlowUniPc::with_options(train_timesteps, shift, steps, &UniPcOptions::default())
    }

    /// A schedule of `steps` steps with the reference's `options`.
    pub fn with_options(train_timesteps: usize, by: f64, steps: usize, options: &UniPcOptions) -> Result<FlowUniPc> {
        let order = options.order;
        if steps == 0 || train_timesteps < 2 {
            return Err(Error::arg("FlowUniPc", "steps must be ≥ 1 and train_timesteps ≥ 2"));
        }
        if !(1..=2).contains(&order) {
            return Err(Error::arg("FlowUniPc", format!("solver order {order} is not supported (1 or 2)")));
        }
        if !(by.is_finite() && by > 0.0) {
            return Err(Error::arg("FlowUniPc", format!("shift must be positive, got {by}")));
        }
        let t = train_timesteps as f64;
        let lo = 1.0 / t;
        let mut sigmas: Vec<f64> = (0..steps).map(|i| shift(1.0 + (lo - 1.0) * i as f64 / steps as f64, by)).collect();
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        let timesteps = sigmas.iter().map(|s| (s * t).trunc() as i64).collect();
        let mut sigmas: Vec<f32> = sigmas.iter().map(|s| *s as f32).collect();
        let last = if options.final_sigma_min { sigmas[steps - 1] } else { 0.0 };
        sigmas.push(last);
        Ok(FlowUniPc {
            sigmas,
            timesteps,
            order,
            lower_order_final: options.lower_order_final,
            next: 0,
            history: Vec::new(),
            last_sample: None,
            last_order: 1,
            disable_corrector: options.disable_corrector.clone(),
        })
    }

    /// The integer model timesteps, one per step.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// σ_0 … σ_N (σ_N = 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn s(&self, i: usize) -> f64 {
        self.sigmas[i] as f64
    }
}

impl Sampler for FlowUniPc {
    fn len(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, i: usize) -> f32 {
        self.timesteps[i.min(self.timesteps.len() - 1)] as f32
    }

    fn sigma(&self, i: usize) -> f32 {
        self.sigmas[i.min(self.sigmas.len() - 1)]
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.next;
        let n = self.len();
        if i >= n {
            return Err(Error::arg("FlowUniPc::step", format!("all {n} steps are taken")));
        }
        let (v, mut x) = f32_pair("FlowUniPc::step", model_output, sample)?;
        let si = self.s(i);
        let m: Vec<f32> = x.iter().zip(&v).map(|(x, v)| x - si as f32 * v).collect();

        // UniC: correct the sample with the new prediction.
        let corrector = i > 0 && !self.disable_corrector.contains(&(i - 1));
        if let (true, Some(prev), Some(m1)) = (corrector, &self.last_sample, self.history.last()) {
            let s1 = self.s(i - 1);
            let h = lambda(si) - lambda(s1);
            let bh = (-h).exp_m1();
            let ratio = si / s1;
            let a = 1.0 - si;
            let (w_d, w_new) = if self.last_order == 2 && self.history.len() >= 2 {
                let r = (lambda(self.s(i - 2)) - lambda(s1)) / h;
                let b1 = (bh / -h - 1.0) / bh;
                let b2 = 2.0 * ((bh / -h - 1.0) / -h - 0.5) / bh;
                // Solve [[1, 1], [r, 1]]·ρ = [b1, b2].
                let rho0 = (b1 - b2) / (1.0 - r);
                let rho1 = b1 - rho0;
                (rho0 / r, rho1)
            } else {
                (0.0, 0.5)
            };
            let m2 = if self.history.len() >= 2 { Some(&self.history[self.history.len() - 2]) } else { None };
            for k in 0..x.len() {
                let base = ratio * prev[k] as f64 - a * bh * m1[k] as f64;
                let mut res = w_new * (m[k] as f64 - m1[k] as f64);
                if let Some(m2) = m2 {
                    res += w_d * (m2[k] as f64 - m1[k] as f64);
                }
                x[k] = (base - a * bh * res) as f32;
            }
        }

        self.history.push(m);
        if self.history.len() > 2 {
            self.history.remove(0);
        }
        let mut p = self.order.min(self.history.len());
        if self.lower_order_final {
            p = p.min(n - i);
        }
        self.last_order = p;
        self.next += 1;

        // UniP: predict the next sample.
        let mi = &self.history[self.history.len() - 1];
        let s_next = self.s(i + 1);
        let out: Vec<f32> = if s_next == 0.0 {
            mi.clone()
        } else if s_next == si {
            // A final σ equal to the last (final_sigmas_type = "sigma_min"): h = 0, no move.
            x.clone()
        } else {
            let h = lambda(s_next) - lambda(si);
            let bh = (-h).exp_m1();
            let ratio = s_next / si;
            let a = 1.0 - s_next;
            let d = if p == 2 {
                let r = (lambda(self.s(i - 1)) - lambda(si)) / h;
                let mp = &self.history[0];
                Some((r, mp))
            } else {
                None
            };
            (0..x.len())
                .map(|k| {
                    let mut y = ratio * x[k] as f64 - a * bh * mi[k] as f64;
                    if let Some((r, mp)) = d {
                        y -= a * bh * 0.5 * (mp[k] as f64 - mi[k] as f64) / r;
                    }
                    y as f32
                })
                .collect()
        };
        self.last_sample = Some(x);
        Tensor::from_vec(out, sample.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_published_values() {
        // WAN_SPEC §5.3, S = 3, N = 50: 999, 993, 986, 979, 971, …, 251, 208, 162, 113, 60.
        let u = FlowUniPc::new(1000, 3.0, 50).unwrap();
        let t = u.timesteps();
        assert_eq!(&t[..5], &[999, 993, 986, 979, 971]);
        assert_eq!(&t[45..], &[251, 208, 162, 113, 60]);
        assert!(u.sigmas()[0] < 1.0);
        assert_eq!(*u.sigmas().last().unwrap(), 0.0);
    }

    #[test]
    fn exact_velocity_reaches_the_data_and_steps_are_bounded() {
        let mut u = FlowUniPc::new(1000, 5.0, 6).unwrap();
        let (x0, eps) = (vec![0.5f32, -1.0, 2.0], vec![1.0f32, 0.25, -0.75]);
        let v = Tensor::from_vec(eps.iter().zip(&x0).map(|(e, x)| e - x).collect::<Vec<f32>>(), &[3]).unwrap();
        let s0 = u.sigma(0);
        let mut x =
            Tensor::from_vec(x0.iter().zip(&eps).map(|(x, n)| (1.0 - s0) * x + s0 * n).collect::<Vec<f32>>(), &[3])
                .unwrap();
        for _ in 0..u.len() {
            x = u.step(&v, &x).unwrap();
        }
        for (a, b) in x.to_vec_f32().unwrap().iter().zip(&x0) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        assert!(u.step(&v, &x).is_err());
        assert!(FlowUniPc::with_options(1000, 3.0, 5, &UniPcOptions { order: 3, ..Default::default() }).is_err());
    }
}
