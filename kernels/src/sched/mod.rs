//! Flow-matching noise schedules and samplers (WAN_SPEC.md §5): the σ convention, the timestep
//! shift, the FlowMatch Euler sampler ([`euler`]) and UniPC bh2 of order 2 with flow sigmas
//! ([`unipc`]), both with the diffusers options that reshape them, read from a diffusers scheduler
//! config by [`config`]; plus classifier-free guidance ([`cfg_combine`]).
//!
//! Convention: σ ∈ [0, 1], σ = 1 is pure noise, `x_σ = (1−σ)·x0 + σ·ε`, the model predicts the
//! velocity `v = ε − x0` and is fed `t = 1000·σ`.
//!
//! Samplers keep latents in `f32` (as the reference pipelines do) whatever the model's dtype.

pub mod config;
pub mod euler;
pub mod unipc;

pub use config::{DEFAULT_SHIFT, SchedulerKind, SchedulerSpec};
pub use euler::{EulerOptions, FlowEuler, SigmaSpacing};
pub use unipc::{FlowUniPc, UniPcOptions};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::verify::{Check, Fixture, Limit, VerifyOptions, compare, compare_slices};

/// Most steps (and training timesteps) a schedule may have: far above any sampler setting, low
/// enough that a typo (10^12) is refused instead of exhausting memory.
pub const MAX_STEPS: usize = 1_000_000;

/// The largest timestep shift accepted: far above any model's (Wan: 3–17); beyond it every σ is
/// 1 to f32 precision, and 1e308 overflows to NaN.
pub const MAX_SHIFT: f64 = 1e6;

/// Checks a schedule's sizes and shift (`op` names the sampler in the error).
pub(crate) fn check_schedule(op: &'static str, train_timesteps: usize, shift: f64, steps: usize) -> Result<()> {
    if steps == 0 || train_timesteps < 2 || steps > MAX_STEPS || train_timesteps > MAX_STEPS {
        return Err(Error::arg(
            op,
            format!(
                "steps ({steps}) and train_timesteps ({train_timesteps}) must be 1..={MAX_STEPS} and 2..={MAX_STEPS}"
            ),
        ));
    }
    if !(shift.is_finite() && shift > 0.0 && shift <= MAX_SHIFT) {
        return Err(Error::arg(
            op,
            format!("shift must be positive and at most {MAX_SHIFT:e} (Wan uses 3–17), got {shift:e}"),
        ));
    }
    Ok(())
}

/// `shift_terminal`: stretches `1 − σ` so that the schedule's last σ lands on `terminal`.
pub(crate) fn stretch_to_terminal(op: &'static str, sigmas: &mut [f64], terminal: f64) -> Result<()> {
    if !(terminal.is_finite() && (0.0..1.0).contains(&terminal)) {
        return Err(Error::arg(op, format!("shift_terminal must be in [0, 1), got {terminal}")));
    }
    let Some(&last) = sigmas.last() else { return Ok(()) };
    let scale = (1.0 - last) / (1.0 - terminal);
    for s in sigmas {
        *s = 1.0 - (1.0 - *s) / scale;
    }
    Ok(())
}

/// The timestep shift `S·s / (1 + (S−1)·s)`.
pub fn shift(s: f64, by: f64) -> f64 {
    by * s / (1.0 + (by - 1.0) * s)
}

/// A multistep sampler over a fixed schedule: the caller evaluates the model at
/// [`Sampler::timestep`]`(i)` on the current sample and hands the output to [`Sampler::step`].
pub trait Sampler {
    /// Number of model evaluations (steps).
    fn len(&self) -> usize;
    /// Whether the schedule is empty (never: a sampler has at least one step).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The timestep the model is fed at step `i` (`1000·σ_i`, truncated for UniPC).
    fn timestep(&self, i: usize) -> f32;
    /// σ at step `i` (`i = len()` is the final σ, 0).
    fn sigma(&self, i: usize) -> f32;
    /// One step: `model_output` is the (guided) velocity at the sample the model was evaluated on;
    /// returns the next sample. Steps must be taken in order.
    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor>;
}

/// Classifier-free guidance: `v_uncond + g·(v_cond − v_uncond)`, in f32.
pub fn cfg_combine(cond: &Tensor, uncond: &Tensor, guidance: f64) -> Result<Tensor> {
    if cond.shape() != uncond.shape() {
        return Err(Error::shape("cfg_combine", format!("{:?} vs {:?}", cond.shape(), uncond.shape())));
    }
    let (c, u) = (cond.to_vec_f32()?, uncond.to_vec_f32()?);
    let g = guidance as f32;
    Tensor::from_vec(c.iter().zip(&u).map(|(c, u)| u + g * (c - u)).collect::<Vec<f32>>(), cond.shape())
}

/// Latent values of a sample as f32 (checking the shape against the model output's).
pub(crate) fn f32_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("model output {:?} vs sample {:?}", a.shape(), b.shape())));
    }
    Ok((a.to_vec_f32()?, b.to_vec_f32()?))
}

/// Runs a `flow_euler` / `flow_unipc` fixture: schedule (timesteps, sigmas) and, when present, a
/// trajectory of `step()` results for given model outputs.
pub fn verify(fx: &Fixture, opts: &VerifyOptions) -> Result<Vec<Check>> {
    let c = &fx.config;
    let steps =
        match c.get("num_inference_steps") {
            None | Some(serde_json::Value::Null) => return Err(fx.error("config has no num_inference_steps")),
            Some(v) => v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                fx.error(format!("config num_inference_steps = {v}: must be a whole number of steps ≥ 1"))
            })? as usize,
        };
    let kind = match fx.model.as_str() {
        "flow_euler" => SchedulerKind::Euler,
        "flow_unipc" => SchedulerKind::UniPc,
        other => return Err(fx.error(format!("{other:?} is not a scheduler"))),
    };
    let config = c.as_object().ok_or_else(|| fx.error("config is not a JSON object"))?;
    let spec = SchedulerSpec::from_config(kind, config).map_err(|e| fx.error(e.to_string()))?;
    let mut sampler = spec.sampler(steps)?;
    // Timesteps are ~1000: judge them relative to their scale; sigmas are in [0, 1].
    let exact = opts.limit(Limit::Abs(fx.abs_limit(1e-6)));
    let ts: Vec<f64> = (0..sampler.len()).map(|i| sampler.timestep(i) as f64).collect();
    let sig: Vec<f64> = (0..=sampler.len()).map(|i| sampler.sigma(i) as f64).collect();
    let want_t = fx.output("timesteps")?.to_vec_f64()?;
    let want_s = fx.output("sigmas")?.to_vec_f64()?;
    for (name, want, n) in [("out.timesteps", &want_t, ts.len()), ("out.sigmas", &want_s, sig.len())] {
        if want.len() != n {
            return Err(fx.error(format!(
                "{name} has {} values, but {steps} steps of this scheduler give {n}: the fixture's config and \
                 tensors disagree",
                want.len()
            )));
        }
    }
    let mut checks = vec![
        compare_slices("out.timesteps", &ts, &want_t, opts.limit(Limit::Rel(fx.abs_limit(1e-6)))),
        compare_slices("out.sigmas", &sig, &want_s, exact),
    ];
    // A trajectory: in.init, then in.model_output_K and out.sample_K for K = 0, 1, … (a prefix
    // of the steps). A reference sample without its inputs is an incomplete fixture, not a pass.
    let samples = fx.keys_with_prefix("out.sample_").len();
    if samples > 0 && !fx.has("in.init") {
        return Err(fx.error(format!("{samples} out.sample_K references but no in.init to start the trajectory from")));
    }
    if fx.has("in.init") {
        let init = fx.input("init")?.to_dtype(DType::F32)?;
        let mut outputs = Vec::new();
        while outputs.len() < sampler.len() && fx.has(&format!("in.model_output_{}", outputs.len())) {
            outputs.push(fx.input(&format!("model_output_{}", outputs.len()))?.to_dtype(DType::F32)?);
        }
        for k in 0..outputs.len() {
            if !fx.has(&format!("out.sample_{k}")) {
                return Err(fx.error(format!("in.model_output_{k} has no out.sample_{k} to compare with")));
            }
        }
        if samples != outputs.len() {
            return Err(fx.error(format!(
                "{samples} out.sample_K references but the model outputs in.model_output_0.. stop after {} (of {} \
                 steps): each sample needs the model output of its step",
                outputs.len(),
                sampler.len()
            )));
        }
        let mut x = init.clone();
        let mut got = Vec::with_capacity(outputs.len());
        for v in &outputs {
            x = sampler.step(v, &x)?;
            got.push(x.clone());
        }
        // Sample values compound f32 rounding over the steps: judge the trajectory at 1e-5, plus
        // what f32 rounding alone does to it where the steps amplify it (UniPC's order-3
        // coefficients over many small steps cancel digits: the reference, in f32 as well, is
        // then itself uncertain by about as much).
        let floor = match kind {
            SchedulerKind::UniPc => unipc_f32_floor(&spec, steps, &init, &outputs, &got)?,
            SchedulerKind::Euler => 0.0,
        };
        let traj_limit = opts.limit(Limit::Abs(fx.abs_limit(1e-5) + F32_FLOOR_FACTOR * floor));
        let mut traj = Vec::new();
        for (k, x) in got.iter().enumerate() {
            traj.push(compare(&format!("out.sample_{k}"), x, &fx.output(&format!("sample_{k}"))?, traj_limit)?);
        }
        checks.push(Check::merge("out.sample_*", &traj).ok_or_else(|| fx.error("in.init without model outputs"))?);
    }
    Ok(checks)
}

/// How many times the f32 rounding floor of a trajectory (ours in f32 vs f64) a reference's
/// samples may differ from ours: the reference's own f32 error is of the same size, in its own
/// direction.
const F32_FLOOR_FACTOR: f64 = 4.0;

/// The largest distance between the f32 trajectory `got` and the same steps in f64 arithmetic.
fn unipc_f32_floor(
    spec: &SchedulerSpec,
    steps: usize,
    init: &Tensor,
    outputs: &[Tensor],
    got: &[Tensor],
) -> Result<f64> {
    let mut twin = FlowUniPc::with_options(spec.train_timesteps, spec.shift, steps, &spec.unipc)?.f64_twin();
    let mut x = init.to_vec_f64()?;
    let mut floor = 0f64;
    for (v, g) in outputs.iter().zip(got) {
        x = twin.step(&v.to_vec_f64()?, x)?;
        for (a, b) in g.to_vec_f64()?.iter().zip(&x) {
            floor = floor.max((a - b).abs());
        }
    }
    Ok(if floor.is_finite() { floor } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_fixes_the_ends_and_pushes_towards_noise() {
        assert_eq!(shift(0.0, 3.0), 0.0);
        assert_eq!(shift(1.0, 3.0), 1.0);
        assert!((shift(0.5, 3.0) - 0.75).abs() < 1e-12);
        assert_eq!(shift(0.3, 1.0), 0.3);
    }

    #[test]
    fn guidance_mixes_predictions() {
        let c = Tensor::from_vec(vec![2f32, 0.0], &[2]).unwrap();
        let u = Tensor::from_vec(vec![1f32, 1.0], &[2]).unwrap();
        assert_eq!(cfg_combine(&c, &u, 5.0).unwrap().to_vec_f32().unwrap(), vec![6.0, -4.0]);
        assert_eq!(cfg_combine(&c, &u, 1.0).unwrap().to_vec_f32().unwrap(), vec![2.0, 0.0]);
    }
}
