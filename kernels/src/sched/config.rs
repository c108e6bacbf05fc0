//! A sampler as a diffusers scheduler config describes it: `scheduler/scheduler_config.json` of a
//! pipeline folder, or the `config` of a `flow_euler` / `flow_unipc` fixture.
//!
//! Two classes are read — `FlowMatchEulerDiscreteScheduler` and `UniPCMultistepScheduler` with flow
//! sigmas, the ones Wan pipelines ship with. Every key that changes the schedule or the step is
//! either implemented or refused by name; keys that cannot matter for flow matching (the VP
//! `beta_*` table UniPC keeps when `use_flow_sigmas` is on, `timestep_spacing`, …) are ignored as
//! diffusers ignores them.

use super::{EulerOptions, FlowEuler, FlowUniPc, Sampler, SigmaSpacing, UniPcOptions};
use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// The two sampler families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// `FlowMatchEulerDiscreteScheduler`.
    Euler,
    /// `UniPCMultistepScheduler` (flow sigmas, x0-prediction).
    UniPc,
}

impl SchedulerKind {
    /// The kind of a diffusers `_class_name`, if medgen implements it.
    pub fn from_class(name: &str) -> Option<SchedulerKind> {
        match name {
            "FlowMatchEulerDiscreteScheduler" => Some(SchedulerKind::Euler),
            "UniPCMultistepScheduler" => Some(SchedulerKind::UniPc),
            _ => None,
        }
    }

    /// The diffusers class name.
    pub fn class(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "FlowMatchEulerDiscreteScheduler",
            SchedulerKind::UniPc => "UniPCMultistepScheduler",
        }
    }
}

/// The timestep shift medgen samples with when neither the settings nor a checkpoint give one
/// (Wan at 480p).
pub const DEFAULT_SHIFT: f64 = 3.0;

/// Everything that fixes a sampler but the number of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerSpec {
    /// Euler or UniPC.
    pub kind: SchedulerKind,
    /// `num_train_timesteps` (1000).
    pub train_timesteps: usize,
    /// Timestep shift (`shift` for Euler, `flow_shift` for UniPC).
    pub shift: f64,
    /// The Euler options (used when `kind` is Euler).
    pub euler: EulerOptions,
    /// The UniPC options (used when `kind` is UniPC).
    pub unipc: UniPcOptions,
}

impl SchedulerSpec {
    /// medgen's defaults for `kind`: 1000 training timesteps, [`DEFAULT_SHIFT`], the Wan
    /// pipelines' UniPC options.
    pub fn new(kind: SchedulerKind) -> SchedulerSpec {
        SchedulerSpec {
            kind,
            train_timesteps: 1000,
            shift: DEFAULT_SHIFT,
            euler: EulerOptions::default(),
            unipc: UniPcOptions::default(),
        }
    }

    /// Reads a diffusers scheduler config of class `kind`. Errors name the key and what medgen
    /// does instead.
    pub fn from_config(kind: SchedulerKind, config: &Map<String, Value>) -> Result<SchedulerSpec> {
        let bad = |msg: String| Error::Config { model: "scheduler", msg };
        let num = |k: &str| -> Result<Option<f64>> {
            match config.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(format!("`{k}` must be a number, got {v}"))),
            }
        };
        let opt_flag = |k: &str| -> Result<Option<bool>> {
            match config.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_bool().map(Some).ok_or_else(|| bad(format!("`{k}` must be true or false, got {v}"))),
            }
        };
        let flag = |k: &str| -> Result<bool> { Ok(opt_flag(k)?.unwrap_or(false)) };
        let text = |k: &str| -> Result<Option<&str>> {
            match config.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_str().map(Some).ok_or_else(|| bad(format!("`{k}` must be a string, got {v}"))),
            }
        };
        let refuse =
            |k: &str, why: &str| Err(bad(format!("scheduler option `{k}` = {} is not implemented: {why}", config[k])));
        // diffusers stretches only when `shift_terminal` is truthy: 0 and null leave the schedule.
        let terminal = || -> Result<Option<f64>> { Ok(num("shift_terminal")?.filter(|t| *t != 0.0)) };
        let mut spec = SchedulerSpec::new(kind);
        if let Some(t) = num("num_train_timesteps")? {
            if !(t >= 2.0 && t.fract() == 0.0 && t <= super::MAX_STEPS as f64) {
                return Err(bad(format!("`num_train_timesteps` = {t} must be a whole number ≥ 2")));
            }
            spec.train_timesteps = t as usize;
        }
        if flag("thresholding")? {
            return refuse("thresholding", "dynamic thresholding clips x0-predictions of pixel-space models");
        }
        match kind {
            SchedulerKind::Euler => {
                spec.shift = num("shift")?.unwrap_or(1.0);
                if flag("use_dynamic_shifting")? {
                    return refuse(
                        "use_dynamic_shifting",
                        "the shift then depends on a resolution-dependent `mu` the Wan pipelines never pass; set a fixed `shift`",
                    );
                }
                if flag("stochastic_sampling")? {
                    return refuse("stochastic_sampling", "it re-noises with torch's generator at every step");
                }
                let spacings = [
                    ("use_karras_sigmas", SigmaSpacing::Karras),
                    ("use_exponential_sigmas", SigmaSpacing::Exponential),
                    ("use_beta_sigmas", SigmaSpacing::Beta),
                ];
                let mut chosen = Vec::new();
                for (k, s) in spacings {
                    if flag(k)? {
                        chosen.push(k);
                        spec.euler.spacing = s;
                    }
                }
                if chosen.len() > 1 {
                    return Err(bad(format!("only one of {} can be true", chosen.join(", "))));
                }
                spec.euler.shift_terminal = terminal()?;
                spec.euler.invert_sigmas = flag("invert_sigmas")?;
            }
            SchedulerKind::UniPc => {
                spec.shift = num("flow_shift")?.unwrap_or(1.0);
                if config.get("use_flow_sigmas").and_then(Value::as_bool) != Some(true) {
                    return Err(bad(
                        "`use_flow_sigmas` is not true: UniPC on the VP (beta) schedule is not a flow-matching \
                         sampler, and medgen implements only UniPC with flow sigmas"
                            .into(),
                    ));
                }
                if flag("use_dynamic_shifting")? {
                    return refuse(
                        "use_dynamic_shifting",
                        "the flow sigmas are then shifted by a resolution-dependent `mu` the Wan pipelines never \
                         pass; set a fixed `flow_shift`",
                    );
                }
                spec.unipc.shift_terminal = terminal()?;
                for k in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"] {
                    if flag(k)? {
                        return refuse(
                            k,
                            "diffusers' UniPC then spaces the σ of its VP beta table instead of the flow sigmas \
                             (Karras maps them to σ/(1+σ) afterwards; exponential and beta spacing give no flow \
                             schedule at all), which medgen's UniPC does not implement; use `use_flow_sigmas` alone",
                        );
                    }
                }
                if !config.get("solver_p").is_none_or(Value::is_null) {
                    return refuse("solver_p", "UniPC with an external predictor solver");
                }
                if config.get("predict_x0").and_then(Value::as_bool) == Some(false) {
                    return refuse("predict_x0", "diffusers has no noise-prediction form of flow_prediction");
                }
                match text("prediction_type")? {
                    Some("flow_prediction") => {}
                    Some(p) => {
                        return Err(bad(format!(
                            "`prediction_type` = {p:?}: the Wan DiT predicts the flow velocity (\"flow_prediction\")"
                        )));
                    }
                    None => {
                        return Err(bad(
                            "`prediction_type` is missing: diffusers then assumes \"epsilon\", but the Wan DiT \
                             predicts the flow velocity; set \"flow_prediction\""
                                .into(),
                        ));
                    }
                }
                match text("solver_type")? {
                    None | Some("bh2") => {}
                    Some("bh1") => spec.unipc.bh1 = true,
                    // diffusers maps the DPM-Solver names onto bh2.
                    Some("midpoint" | "heun" | "logrho") => {}
                    Some(other) => return Err(bad(format!("`solver_type` = {other:?} (bh1 or bh2)"))),
                }
                if let Some(o) = num("solver_order")? {
                    if !(1.0..=3.0).contains(&o) || o.fract() != 0.0 {
                        return Err(bad(format!("`solver_order` = {o}: medgen's UniPC runs orders 1, 2 and 3")));
                    }
                    spec.unipc.order = o as usize;
                }
                if let Some(v) = opt_flag("lower_order_final")? {
                    spec.unipc.lower_order_final = v;
                }
                spec.unipc.final_sigma_min = match text("final_sigmas_type")? {
                    None | Some("zero") => false,
                    Some("sigma_min") => true,
                    Some(other) => {
                        return Err(bad(format!("`final_sigmas_type` = {other:?} (\"zero\" or \"sigma_min\")")));
                    }
                };
                spec.unipc.disable_corrector = match config.get("disable_corrector") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => v
                        .as_array()
                        .and_then(|a| a.iter().map(|i| i.as_u64().map(|i| i as usize)).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| bad(format!("`disable_corrector` must be a list of step indices, got {v}")))?,
                };
            }
        }
        if !(spec.shift.is_finite() && spec.shift > 0.0 && spec.shift <= super::MAX_SHIFT) {
            return Err(bad(format!(
                "the shift must be a positive number up to {:e} (Wan uses 3–17), got {:e}",
                super::MAX_SHIFT,
                spec.shift
            )));
        }
        Ok(spec)
    }

    /// Reads a pipeline's `scheduler_config.json` (its `_class_name` says which sampler).
    pub fn from_json(text: &str) -> Result<SchedulerSpec> {
        let bad = |msg: String| Error::Config { model: "scheduler", msg };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let config = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let class = config.get("_class_name").and_then(Value::as_str).ok_or_else(|| bad("no `_class_name`".into()))?;
        let kind = SchedulerKind::from_class(class).ok_or_else(|| {
            bad(format!(
                "`_class_name` {class:?} is not a sampler medgen implements (FlowMatchEulerDiscreteScheduler, \
                 UniPCMultistepScheduler with flow sigmas)"
            ))
        })?;
        SchedulerSpec::from_config(kind, config)
    }

    /// The sampler over `steps` steps.
    pub fn sampler(&self, steps: usize) -> Result<Box<dyn Sampler + Send>> {
        Ok(match self.kind {
            SchedulerKind::Euler => {
                Box::new(FlowEuler::with_options(self.train_timesteps, self.shift, steps, &self.euler)?)
            }
            SchedulerKind::UniPc => {
                Box::new(FlowUniPc::with_options(self.train_timesteps, self.shift, steps, &self.unipc)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SchedulerSpec> {
        SchedulerSpec::from_json(s)
    }

    /// A shift far beyond any model's is refused instead of turning every σ into 1 or NaN.
    #[test]
    fn absurd_shifts_are_refused() {
        for shift in [1e308, 1e7, 0.0, -3.0] {
            let config = serde_json::json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": shift});
            let e = SchedulerSpec::from_json(&config.to_string()).unwrap_err().to_string();
            assert!(e.contains("shift must be a positive number up to"), "{shift}: {e}");
        }
        assert!(FlowEuler::new(1000, 1e9, 5).is_err());
    }

    #[test]
    fn the_wan_pipeline_config_is_read() {
        // Wan2.1-T2V-1.3B-Diffusers' scheduler_config.json, keys as diffusers writes them.
        let s = parse(
            r#"{"_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0",
                "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
                "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 5.0,
                "lower_order_final": true, "num_train_timesteps": 1000, "predict_x0": true,
                "prediction_type": "flow_prediction", "rescale_betas_zero_snr": false, "sample_max_value": 1.0,
                "solver_order": 2, "solver_p": null, "solver_type": "bh2", "steps_offset": 0,
                "thresholding": false, "timestep_spacing": "linspace", "trained_betas": null,
                "use_beta_sigmas": false, "use_exponential_sigmas": false, "use_flow_sigmas": true,
                "use_karras_sigmas": false}"#,
        )
        .unwrap();
        assert_eq!(s.kind, SchedulerKind::UniPc);
        assert_eq!(s.shift, 5.0);
        assert_eq!(s.unipc, UniPcOptions::default());
        assert_eq!(s.sampler(50).unwrap().len(), 50);
        let e = parse(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_beta_sigmas": true}"#)
            .unwrap();
        assert_eq!((e.kind, e.shift, e.euler.spacing), (SchedulerKind::Euler, 3.0, SigmaSpacing::Beta));
    }

    #[test]
    fn what_is_not_implemented_is_named() {
        for (json, want) in [
            (r#"{"_class_name": "DDIMScheduler"}"#, "DDIMScheduler"),
            (r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": false}"#, "use_flow_sigmas"),
            (
                r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true, "use_karras_sigmas": true}"#,
                "use_karras_sigmas",
            ),
            (
                r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": true}"#,
                "use_dynamic_shifting",
            ),
            (
                r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": true}"#,
                "stochastic_sampling",
            ),
            (r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": "3"}"#, "shift"),
            (
                r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true,
                    "prediction_type": "flow_prediction", "solver_order": 4}"#,
                "solver_order",
            ),
            (r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true}"#, "prediction_type"),
            (r#"["not", "an", "object"]"#, "object"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
