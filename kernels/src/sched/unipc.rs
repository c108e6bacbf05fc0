//! UniPC multistep sampler for flow matching (bh2 variant, or bh1; x0-prediction, order ≤ 3 (2 in
//! the Wan pipelines), lower order at the end), WAN_SPEC.md §5.3 — the sampler the Wan2.1 diffusers
//! pipelines ship with.
//!
//! Schedule: `σ_i = shift(linspace(1, 1/T, N+1)[i])` for `i < N` (σ_0 nudged below 1 by 1e-6 so
//! that λ stays finite), `σ_N = 0`, stored in f32; the model is fed the integer-truncated
//! `t_i = ⌊T·σ_i⌋`. With `λ(σ) = ln(1−σ) − ln σ` and the model's x0-prediction
//! `m_i = x_i − σ_i·v_i`, each step first corrects the sample it was given with the new
//! prediction (UniC, from the second step on), then predicts the next sample (UniP). The final
//! step (σ_N = 0, λ = ∞) lands exactly on `m_{N−1}`.

use super::{Sampler, f32_pair, shift, stretch_to_terminal};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The UniPC sampler with flow sigmas.
#[derive(Debug, Clone)]
pub struct FlowUniPc {
    timesteps: Vec<i64>,
    core: UniPc<f32>,
}

/// The reference's options beyond the schedule (diffusers `UniPCMultistepScheduler` config names).
#[derive(Debug, Clone, PartialEq)]
pub struct UniPcOptions {
    /// Solver order, 1 to 3 (the Wan pipelines use 2).
    pub order: usize,
    /// Lower the order on the last steps (the reference's default).
    pub lower_order_final: bool,
    /// `final_sigmas_type = "sigma_min"`: the schedule ends at its last non-zero σ (the last step
    /// then returns the corrected sample) instead of at 0.
    pub final_sigma_min: bool,
    /// `disable_corrector`: step indices after which the corrector is not applied.
    pub disable_corrector: Vec<usize>,
    /// `solver_type = "bh1"`: `B(h) = h` instead of bh2's `B(h) = e^h − 1` (the reference
    /// recommends it for unconditional sampling in under 10 steps).
    pub bh1: bool,
    /// `shift_terminal`: stretch the shifted schedule so that its last σ is this value.
    pub shift_terminal: Option<f64>,
}

impl Default for UniPcOptions {
    fn default() -> Self {
        UniPcOptions {
            order: 2,
            lower_order_final: true,
            final_sigma_min: false,
            disable_corrector: Vec::new(),
            bh1: false,
            shift_terminal: None,
        }
    }
}

/// `λ(σ) = ln(1−σ) − ln σ` (log signal-to-noise).
fn lambda<T: Float>(s: T) -> T {
    (T::ONE - s).ln() - s.ln()
}

/// UniPC's state over a fixed σ schedule, in the arithmetic `T`.
#[derive(Debug, Clone)]
pub struct UniPc<T> {
    sigmas: Vec<T>,
    order: usize,
    bh1: bool,
    lower_order_final: bool,
    next: usize,
    /// The last `order` x0-predictions (oldest first).
    history: Vec<Vec<T>>,
    /// The previous step's (corrected) sample.
    last_sample: Option<Vec<T>>,
    /// The order the previous predictor used.
    last_order: usize,
    /// Steps whose corrector is skipped (diffusers' `disable_corrector`: the corrector of step
    /// `i` is skipped when `i − 1` is listed).
    disable_corrector: Vec<usize>,
}

impl FlowUniPc {
    /// The pipelines' configuration: order 2, lower order for the final steps.
    pub fn new(train_timesteps: usize, shift: f64, steps: usize) -> Result<FlowUniPc> {
        FlowUniPc::with_options(train_timesteps, shift, steps, &UniPcOptions::default())
    }

    /// A schedule of `steps` steps with the reference's `options`.
    pub fn with_options(train_timesteps: usize, by: f64, steps: usize, options: &UniPcOptions) -> Result<FlowUniPc> {
        let order = options.order;
        super::check_schedule("FlowUniPc", train_timesteps, by, steps)?;
        if !(1..=3).contains(&order) {
            return Err(Error::arg("FlowUniPc", format!("solver order {order} is not supported (1, 2 or 3)")));
        }
        let t = train_timesteps as f64;
        let lo = 1.0 / t;
        let mut sigmas: Vec<f64> = (0..steps).map(|i| shift(1.0 + (lo - 1.0) * i as f64 / steps as f64, by)).collect();
        if let Some(terminal) = options.shift_terminal {
            stretch_to_terminal("FlowUniPc", &mut sigmas, terminal)?;
        }
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        let timesteps = sigmas.iter().map(|s| (s * t).trunc() as i64).collect();
        let mut sigmas: Vec<f32> = sigmas.iter().map(|s| *s as f32).collect();
        let last = if options.final_sigma_min { sigmas[steps - 1] } else { 0.0 };
        sigmas.push(last);
        let core = UniPc {
            sigmas,
            order,
            bh1: options.bh1,
            lower_order_final: options.lower_order_final,
            next: 0,
            history: Vec::new(),
            last_sample: None,
            last_order: 1,
            disable_corrector: options.disable_corrector.clone(),
        };
        Ok(FlowUniPc { timesteps, core })
    }

    /// The integer model timesteps, one per step.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// σ_0 … σ_N (σ_N = 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.core.sigmas
    }

    /// A fresh sampler on the same (f32) schedule whose arithmetic is f64: the distance between
    /// its trajectory and this sampler's is what f32 rounding alone does to the samples, a
    /// reference's own uncertainty included (`medgen verify` judges trajectories with it).
    pub fn f64_twin(&self) -> UniPc<f64> {
        let c = &self.core;
        UniPc {
            sigmas: c.sigmas.iter().map(|s| *s as f64).collect(),
            order: c.order,
            bh1: c.bh1,
            lower_order_final: c.lower_order_final,
            next: 0,
            history: Vec::new(),
            last_sample: None,
            last_order: 1,
            disable_corrector: c.disable_corrector.clone(),
        }
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
        self.core.sigmas[i.min(self.core.sigmas.len() - 1)]
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let (v, x) = f32_pair("FlowUniPc::step", model_output, sample)?;
        Tensor::from_vec(self.core.step(&v, x)?, sample.shape())
    }
}

impl<T: Float> UniPc<T> {
    /// One step: the model's velocity `v` at the current sample `x` → the next sample.
    pub fn step(&mut self, v: &[T], mut x: Vec<T>) -> Result<Vec<T>> {
        let i = self.next;
        let n = self.sigmas.len() - 1;
        if i >= n {
            return Err(Error::arg("FlowUniPc::step", format!("all {n} steps are taken")));
        }
        let si = self.sigmas[i];
        let m: Vec<T> = x.iter().zip(v).map(|(x, v)| *x - si * *v).collect();

        // UniC: correct the sample with the new prediction, at the order the last predictor used.
        // Scalars and element updates in the reference's order of operations (in f32 it runs them
        // as float32 tensors; f64 coefficients land 2–3× further from its trajectories).
        let corrector = i > 0 && !self.disable_corrector.contains(&(i - 1));
        if let (true, Some(prev)) = (corrector, &self.last_sample) {
            let q = self.last_order.min(self.history.len());
            let (s_t, s0) = (self.sigmas[i], self.sigmas[i - 1]);
            let h = lambda(s_t) - lambda(s0);
            // Earlier predictions m_{i−1−k} with r_k = (λ(σ_{i−1−k}) − λ(σ_{i−1}))/h, k = 1..q−1.
            let older: Vec<(T, &Vec<T>)> = (1..q)
                .map(|k| ((lambda(self.sigmas[i - 1 - k]) - lambda(s0)) / h, &self.history[self.history.len() - 1 - k]))
                .collect();
            let (h_phi_1, b_h, b) = phi_b(h, q, self.bh1);
            let rhos = if q == 1 { vec![T::from_f32(0.5)] } else { solve(&vandermonde(&older, q), &b) };
            let m0 = &self.history[self.history.len() - 1];
            let (ratio, a_phi, a_b) = (s_t / s0, (T::ONE - s_t) * h_phi_1, (T::ONE - s_t) * b_h);
            for k in 0..x.len() {
                let corr: T = older.iter().zip(&rhos).map(|((r, mj), rho)| *rho * ((mj[k] - m0[k]) / *r)).sum();
                let base = ratio * prev[k] - a_phi * m0[k];
                x[k] = base - a_b * (corr + rhos[q - 1] * (m[k] - m0[k]));
            }
        }

        self.history.push(m);
        if self.history.len() > self.order {
            self.history.remove(0);
        }
        // Warm-up: order ≤ the predictions available; lower order for the final steps.
        let mut p = self.order.min(self.history.len());
        if self.lower_order_final {
            p = p.min(n - i);
        }
        self.last_order = p;
        self.next += 1;

        // UniP: predict the next sample.
        let mi = &self.history[self.history.len() - 1];
        let (s_t, s0) = (self.sigmas[i + 1], self.sigmas[i]);
        let out: Vec<T> = if s_t == T::ZERO {
            mi.clone()
        } else if s_t == s0 {
            // A final σ equal to the last (final_sigmas_type = "sigma_min"): h = 0, no move.
            x.clone()
        } else {
            let h = lambda(s_t) - lambda(s0);
            let older: Vec<(T, &Vec<T>)> = (1..p)
                .map(|k| ((lambda(self.sigmas[i - k]) - lambda(s0)) / h, &self.history[self.history.len() - 1 - k]))
                .collect();
            let (h_phi_1, b_h, b) = phi_b(h, p, self.bh1);
            // The reference's fixed ρ = 0.5 at order 2; a solve of the first p−1 conditions above.
            let rhos = match p {
                1 => Vec::new(),
                2 => vec![T::from_f32(0.5)],
                _ => solve(&vandermonde(&older, p - 1), &b[..p - 1]),
            };
            let (ratio, a_phi, a_b) = (s_t / s0, (T::ONE - s_t) * h_phi_1, (T::ONE - s_t) * b_h);
            (0..x.len())
                .map(|k| {
                    let base = ratio * x[k] - a_phi * mi[k];
                    if rhos.is_empty() {
                        return base;
                    }
                    let res: T = older.iter().zip(&rhos).map(|((r, mj), rho)| *rho * ((mj[k] - mi[k]) / *r)).sum();
                    base - a_b * res
                })
                .collect()
        };
        self.last_sample = Some(x);
        Ok(out)
    }
}

/// `h·φ₁ = expm1(−h)`, `B(h)` and UniPC's `b_k = h·φ_k(−h)·k!/B(h)` for k = 1..=order, with the
/// bh2 choice `B(h) = expm1(−h)` or bh1's `B(h) = −h` (x0-prediction, so the sign of h is
/// flipped).
fn phi_b<T: Float>(h: T, order: usize, bh1: bool) -> (T, T, Vec<T>) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = if bh1 { hh } else { h_phi_1 };
    let mut h_phi_k = h_phi_1 / hh - T::ONE;
    let mut factorial = T::ONE;
    let mut b = Vec::with_capacity(order);
    for k in 1..=order {
        b.push(h_phi_k * factorial / b_h);
        factorial *= T::from_usize(k + 1);
        h_phi_k = h_phi_k / hh - T::ONE / factorial;
    }
    (h_phi_1, b_h, b)
}

/// The `size × size` system `R[j][c] = r_c^j` over the older predictions' ratios, the last
/// column `r = 1` (the newest prediction's).
fn vandermonde<T: Float>(older: &[(T, &Vec<T>)], size: usize) -> Vec<Vec<T>> {
    let mut rks: Vec<T> = older.iter().map(|(r, _)| *r).collect();
    rks.push(T::ONE);
    (0..size).map(|j| (0..size).map(|c| rks[c].powi(j as i32)).collect()).collect()
}

/// Solves the small dense system `a·x = b` (Gaussian elimination with partial pivoting, like
/// the reference's `torch.linalg.solve`).
fn solve<T: Float>(a: &[Vec<T>], b: &[T]) -> Vec<T> {
    let n = b.len();
    let mut m: Vec<Vec<T>> = a.iter().zip(b).map(|(row, bi)| row[..n].iter().copied().chain([*bi]).collect()).collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| m[x][col].abs().partial_cmp(&m[y][col].abs()).unwrap_or(std::cmp::Ordering::Equal))
            .unwrap_or(col);
        m.swap(col, pivot);
        for row in col + 1..n {
            let f = m[row][col] / m[col][col];
            for c in col..=n {
                m[row][c] = m[row][c] - f * m[col][c];
            }
        }
    }
    let mut x = vec![T::ZERO; n];
    for row in (0..n).rev() {
        let tail: T = (row + 1..n).map(|c| m[row][c] * x[c]).sum();
        x[row] = (m[row][n] - tail) / m[row][row];
    }
    x
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
        assert!(FlowUniPc::with_options(1000, 3.0, 5, &UniPcOptions { order: 4, ..Default::default() }).is_err());
    }
}
