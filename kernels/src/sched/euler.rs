//! FlowMatch Euler (WAN_SPEC.md §5.3), with the reference's arithmetic: the training table's ends
//! `σ_max = shift(1)`, `σ_min = shift(1/T)` in f32; `N` timesteps spaced linearly between `T·σ_max`
//! and `T·σ_min` in f64, divided by `T` and shifted again (a quirk of the reference: the tail is
//! shifted twice), stored in f32; `σ_N = 0`; the model is fed `t_i = T·σ_i` (f32, not rounded);
//! a step is `x ← x + (σ_{i+1} − σ_i)·v` in f32.

use super::{Sampler, f32_pair};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The FlowMatch Euler sampler.
#[derive(Debug, Clone)]
pub struct FlowEuler {
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    next: usize,
}

fn shift_f32(s: f32, by: f32) -> f32 {
    by * s / (1.0 + (by - 1.0) * s)
}

impl FlowEuler {
    /// A schedule of `steps` steps for a model trained on `train_timesteps` (1000) timesteps with
    /// timestep shift `shift` (3 for 480p, 5 for 720p).
    pub fn new(train_timesteps: usize, shift: f64, steps: usize) -> Result<FlowEuler> {
        super::check_schedule("FlowEuler", train_timesteps, shift, steps)?;
        let t = train_timesteps as f64;
        let by = shift as f32;
        let sigma_max = shift_f32(1.0, by) as f64;
        let sigma_min = shift_f32(1.0 / t as f32, by) as f64;
        let (hi, lo) = (sigma_max * t, sigma_min * t);
        let mut sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let lin = if steps == 1 { hi } else { hi + (lo - hi) * i as f64 / (steps - 1) as f64 };
                let s = lin / t;
                (shift * s / (1.0 + (shift - 1.0) * s)) as f32
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * train_timesteps as f32).collect();
        sigmas.push(0.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_published_values() {
        // WAN_SPEC §5.3, S = 3, N = 50: 1000.0, 993.12, 986.06, …, 120.53, 66.90, 8.93.
        let e = FlowEuler::new(1000, 3.0, 50).unwrap();
        let t = e.timesteps();
        for (got, want) in
            [(t[0], 1000.0), (t[1], 993.12), (t[2], 986.06), (t[47], 120.53), (t[48], 66.90), (t[49], 8.93)]
        {
            assert!((got - want).abs() < 0.01, "{got} vs {want}");
        }
        assert_eq!(e.sigmas().len(), 51);
        assert_eq!(*e.sigmas().last().unwrap(), 0.0);
    }

    #[test]
    fn steps_integrate_a_constant_velocity_to_the_data() {
        // x_1 = ε; with the exact velocity v = ε − x0 the sampler lands on x0.
        let mut e = FlowEuler::new(1000, 5.0, 7).unwrap();
        let (x0, eps) = (vec![0.5f32, -1.0, 2.0], vec![1.0f32, 0.25, -0.75]);
        let v = Tensor::from_vec(eps.iter().zip(&x0).map(|(e, x)| e - x).collect::<Vec<f32>>(), &[3]).unwrap();
        let s0 = e.sigma(0);
        let mut x =
            Tensor::from_vec(x0.iter().zip(&eps).map(|(x, n)| (1.0 - s0) * x + s0 * n).collect::<Vec<f32>>(), &[3])
                .unwrap();
        for _ in 0..e.len() {
            x = e.step(&v, &x).unwrap();
        }
        for (a, b) in x.to_vec_f32().unwrap().iter().zip(&x0) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(e.step(&v, &x).is_err());
        assert!(FlowEuler::new(1000, 3.0, 0).is_err());
    }
}
