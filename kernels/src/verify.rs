//! Reference fixtures (`shared/design/FIXTURES.md`): one safetensors file per check, holding
//! inputs (`in.*`), reference outputs (`out.*`), weights (`w.*`) and gradients (`g.*`), with the
//! model and its reference config in the header metadata. [`run`] loads a fixture, runs the
//! matching network or scheduler of this crate and compares every output.
//!
//! # Errors
//!
//! * absolute: `max |got − want|`;
//! * relative: `max |got − want| / max |want|` over the whole tensor (element-wise relative
//!   errors are meaningless where the reference crosses zero, which gradients do everywhere).
//!
//! Each [`Check`] carries its limit: outputs are judged on the absolute error, gradients on the
//! relative one. Default limits (WAN_SPEC.md): DiT outputs 1e-4 abs and gradients 1e-3 rel, VAE
//! 1e-4 abs, umT5 1e-5 abs, schedulers 1e-6 abs; a fixture's `tolerance` metadata
//! (`{"abs": …, "grad_rel": …}`) overrides them. Running in bf16 judges everything on a 2e-2
//! relative error instead (bf16 keeps 8 significant bits).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::safetensors::SafeTensorsFile;
use crate::io::source::Prefixed;
use crate::tensor::{Device, Tensor};
use std::path::{Path, PathBuf};

/// Relative limit used for every check when running in bf16.
pub const BF16_REL: f64 = 2e-2;

/// A loaded reference fixture.
#[derive(Debug)]
pub struct Fixture {
    path: PathBuf,
    file: SafeTensorsFile,
    /// `model` metadata: `wan_dit`, `wan_vae`, `umt5`, `minilm`, `flow_euler`, `flow_unipc`.
    pub model: String,
    /// `config` metadata: the reference constructor's kwargs.
    pub config: serde_json::Value,
    /// `layout` metadata: `diffusers` (default) or `original`.
    pub layout: String,
    tolerance: serde_json::Value,
    /// Where the model runs: [`Fixture::input`] places inputs there (CPU unless [`run`] chose a device).
    pub device: Device,
}

impl Fixture {
    /// Opens and validates a fixture's header (`medgen_fixture = "1"`, a model, a JSON config).
    pub fn open(path: impl AsRef<Path>) -> Result<Fixture> {
        let path = path.as_ref().to_path_buf();
        let file = SafeTensorsFile::open(&path)?;
        let bad = |msg: String| Error::Fixture { path: path.clone(), msg };
        let meta = file.user_metadata().cloned().unwrap_or_default();
        match meta.get("medgen_fixture").map(String::as_str) {
            Some("1") => {}
            Some(v) => {
                return Err(bad(format!("fixture format version {v:?} is not supported (this build reads \"1\")")));
            }
            None => return Err(bad("not a medgen fixture: the header has no medgen_fixture = \"1\" metadata".into())),
        }
        let model = meta.get("model").cloned().ok_or_else(|| bad("no `model` metadata".into()))?;
        let config = match meta.get("config") {
            Some(c) => serde_json::from_str(c).map_err(|e| bad(format!("`config` metadata is not JSON: {e}")))?,
            None => serde_json::Value::Object(Default::default()),
        };
        let layout = meta.get("layout").cloned().unwrap_or_else(|| "diffusers".into());
        if layout != "diffusers" && layout != "original" {
            return Err(bad(format!("layout {layout:?} is unknown (expected diffusers or original)")));
        }
        let tolerance = match meta.get("tolerance") {
            Some(t) => serde_json::from_str(t).map_err(|e| bad(format!("`tolerance` metadata is not JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        match &tolerance {
            serde_json::Value::Null => {}
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    if k != "abs" && k != "grad_rel" {
                        return Err(bad(format!("`tolerance` key {k:?} is unknown (abs, grad_rel)")));
                    }
                    if !v.as_f64().is_some_and(|l| l.is_finite() && l > 0.0) {
                        return Err(bad(format!("`tolerance.{k}` must be a positive number, got {v}")));
                    }
                }
            }
            other => return Err(bad(format!("`tolerance` must be a JSON object like {{\"abs\": 1e-4}}, got {other}"))),
        }
        Ok(Fixture { path, file, model, config, layout, tolerance, device: Device::Cpu })
    }

    /// The fixture's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about this fixture.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::Fixture { path: self.path.clone(), msg: msg.into() }
    }

    /// Whether a tensor (full name, e.g. `out.sample_3`) exists.
    pub fn has(&self, key: &str) -> bool {
        self.file.describe(key).is_ok()
    }

    /// Full tensor names starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.file.keys().into_iter().filter(|k| k.starts_with(prefix)).collect()
    }

    /// Loads a tensor by its full name.
    pub fn tensor(&self, key: &str) -> Result<Tensor> {
        self.file.load(key).map_err(|e| match e {
            Error::MissingKey(k) => self.error(format!("tensor {k:?} is missing")),
            e => e,
        })
    }

    /// Input `in.NAME`, on [`Fixture::device`] (f64 inputs become f32 on a CUDA device, which
    /// computes in f32).
    pub fn input(&self, name: &str) -> Result<Tensor> {
        self.on_device(self.tensor(&format!("in.{name}"))?)
    }

    /// `t` placed on [`Fixture::device`].
    pub fn on_device(&self, t: Tensor) -> Result<Tensor> {
        if self.device == Device::Cpu {
            return Ok(t);
        }
        let t = if t.dtype() == DType::F64 { t.to_dtype(DType::F32)? } else { t };
        t.to_device(self.device)
    }

    /// Integer input `in.NAME` (token ids, masks) with its shape.
    pub fn input_ints(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        self.file.load_ints(&format!("in.{name}"))
    }

    /// Reference output `out.NAME`.
    pub fn output(&self, name: &str) -> Result<Tensor> {
        self.tensor(&format!("out.{name}"))
    }

    /// The weights (`w.*`) as a tensor source.
    pub fn weights(&self) -> Prefixed<'_> {
        Prefixed { file: &self.file, prefix: "w." }
    }

    /// The reference gradients (`g.*`) as a tensor source.
    pub fn gradients(&self) -> Prefixed<'_> {
        Prefixed { file: &self.file, prefix: "g." }
    }

    /// The absolute limit for outputs: the fixture's `tolerance.abs`, else `default`.
    pub fn abs_limit(&self, default: f64) -> f64 {
        self.tolerance.get("abs").and_then(|v| v.as_f64()).unwrap_or(default)
    }

    /// The relative limit for gradients: the fixture's `tolerance.grad_rel`, else `default`.
    pub fn grad_rel_limit(&self, default: f64) -> f64 {
        self.tolerance.get("grad_rel").and_then(|v| v.as_f64()).unwrap_or(default)
    }
}

/// How a check is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Maximum absolute error.
    Abs(f64),
    /// Maximum error relative to the reference's largest magnitude.
    Rel(f64),
}

/// One compared output (or group of gradients).
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was compared (`out.velocity`, `g.blocks.0.attn1`, …).
    pub name: String,
    /// Largest absolute error.
    pub max_abs: f64,
    /// Largest absolute error over the reference's largest magnitude.
    pub max_rel: f64,
    /// The reference's largest magnitude (of a group: its members' largest).
    pub scale: f64,
    /// The limit it is judged on.
    pub limit: Limit,
    /// Elements compared.
    pub elements: usize,
    /// For a merged group: the member with the largest error on the group's limit (`None` for a single
    /// comparison), so a failing group names the tensor to look at.
    pub worst: Option<String>,
}

impl Check {
    /// Whether the error is within the limit (NaNs never pass).
    pub fn pass(&self) -> bool {
        match self.limit {
            Limit::Abs(l) => self.max_abs <= l,
            Limit::Rel(l) => self.max_rel <= l,
        }
    }

    /// Merges checks into one group: the worst errors, the sum of elements, the first limit, and the
    /// name of the member worst on that limit.
    pub fn merge(name: &str, checks: &[Check]) -> Option<Check> {
        let first = checks.first()?;
        // NaN anywhere makes the group's figure NaN (`f64::max` would drop it).
        let worst = |f: fn(&Check) -> f64| {
            checks.iter().map(f).fold(0.0, |a: f64, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) })
        };
        let on_limit = |c: &Check| {
            let e = match first.limit {
                Limit::Abs(_) => c.max_abs,
                Limit::Rel(_) => c.max_rel,
            };
            if e.is_nan() { f64::INFINITY } else { e }
        };
        let worst_member = checks.iter().max_by(|a, b| on_limit(a).total_cmp(&on_limit(b)));
        Some(Check {
            name: name.to_string(),
            max_abs: worst(|c| c.max_abs),
            max_rel: worst(|c| c.max_rel),
            scale: checks.iter().fold(0f64, |m, c| m.max(c.scale)),
            limit: first.limit,
            elements: checks.iter().map(|c| c.elements).sum(),
            worst: worst_member.map(|c| c.worst.clone().unwrap_or_else(|| c.name.clone())),
        })
    }
}

/// Compares a result with its reference (shapes must match).
pub fn compare(name: &str, got: &Tensor, want: &Tensor, limit: Limit) -> Result<Check> {
    if got.shape() != want.shape() {
        return Err(Error::shape(
            "verify",
            format!("{name}: got shape {:?}, reference {:?}", got.shape(), want.shape()),
        ));
    }
    let (g, w) = (got.to_vec_f64()?, want.to_vec_f64()?);
    Ok(compare_slices(name, &g, &w, limit))
}

/// An absolute error relative to a reference magnitude (the absolute error itself when that is zero).
pub fn rel_error(max_abs: f64, scale: f64) -> f64 {
    if scale > 0.0 { max_abs / scale } else { max_abs }
}

/// Compares two equally long slices (see [`compare`]).
pub fn compare_slices(name: &str, got: &[f64], want: &[f64], limit: Limit) -> Check {
    let mut max_abs = 0f64;
    let mut scale = 0f64;
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        max_abs = if d.is_nan() || max_abs.is_nan() { f64::NAN } else { max_abs.max(d) };
        scale = scale.max(b.abs());
    }
    if got.len() != want.len() {
        max_abs = f64::NAN;
    }
    Check {
        name: name.to_string(),
        max_abs,
        max_rel: rel_error(max_abs, scale),
        scale,
        limit,
        elements: want.len(),
        worst: None,
    }
}

/// How to run a fixture.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Where to compute.
    pub device: Device,
    /// Weights and activations dtype (`F32` or `BF16`).
    pub dtype: DType,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { device: Device::Cpu, dtype: DType::F32 }
    }
}

impl VerifyOptions {
    /// The limit for a check, given its default in f32: in bf16 every check is relative.
    pub fn limit(&self, f32_limit: Limit) -> Limit {
        if self.dtype == DType::BF16 { Limit::Rel(BF16_REL) } else { f32_limit }
    }
}

/// The result of one fixture.
#[derive(Debug, Clone)]
pub struct Report {
    /// The fixture file.
    pub fixture: PathBuf,
    /// Its model.
    pub model: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Where the model ran (the CPU for models without a device path: schedulers, MiniLM,
    /// TransNetV2).
    pub device: Device,
    /// The dtype its weights and activations had: the one asked for, except for the models of
    /// [`f32_only`] (the Wan VAE, as the Wan pipelines run it, WAN_SPEC §3 — bf16 weights alone
    /// cost ~4e-2 relative on its decoded video; TransNetV2), which run in f32 and are judged at
    /// the f32 limits.
    pub dtype: DType,
}

impl Report {
    /// Whether every check passed (and there was at least one).
    pub fn pass(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::pass)
    }
}

/// Fixture models whose networks run on a CUDA device when one is asked for.
pub const DEVICE_MODELS: [&str; 3] = ["wan_dit", "wan_vae", "umt5"];

/// Why a fixture model runs in f32 whatever dtype is asked, or `None` when it runs in the one asked.
pub fn f32_only(model: &str) -> Option<&'static str> {
    match model {
        "wan_vae" => Some("as the Wan pipelines run the VAE"),
        "transnetv2" => Some("TransNetV2 runs in f32 only"),
        _ => None,
    }
}

/// Loads `path` and runs it on the network or scheduler its `model` names.
pub fn run(path: impl AsRef<Path>, opts: &VerifyOptions) -> Result<Report> {
    let mut fx = Fixture::open(path)?;
    if opts.dtype != DType::F32 && opts.dtype != DType::BF16 {
        return Err(fx.error(format!("dtype {:?} is not supported (use f32 or bf16)", opts.dtype)));
    }
    crate::tensor::check_backend(opts.device, "verify")?;
    // The generation networks run on the chosen device; the others have no device path.
    fx.device = if DEVICE_MODELS.contains(&fx.model.as_str()) { opts.device } else { Device::Cpu };
    let dtype = if f32_only(&fx.model).is_some() { DType::F32 } else { opts.dtype };
    let opts = &VerifyOptions { device: fx.device, dtype };
    let checks: Vec<Check> = match fx.model.as_str() {
        "wan_dit" => crate::nets::wan_dit::verify(&fx, opts),
        "wan_vae" => crate::nets::wan_vae::verify(&fx, opts),
        "flow_euler" | "flow_unipc" => crate::sched::verify(&fx, opts),
        "umt5" => crate::nets::umt5::verify(&fx, opts),
        "minilm" => crate::nets::minilm::verify(&fx, opts),
        "transnetv2" => crate::nets::transnetv2::verify(&fx, opts),
        other => Err(fx.error(format!(
            "model {other:?} is not one this build verifies (wan_dit, wan_vae, umt5, minilm, transnetv2, flow_euler, flow_unipc)"
        ))),
    }?;
    Ok(Report { fixture: fx.path.clone(), model: fx.model.clone(), checks, device: fx.device, dtype })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_limits() {
        let c = compare_slices("x", &[1.0, 2.0, -4.0], &[1.0, 2.5, -4.0], Limit::Abs(0.4));
        assert_eq!(c.max_abs, 0.5);
        assert_eq!(c.max_rel, 0.125);
        assert!(!c.pass());
        assert!(compare_slices("x", &[1.0], &[1.0], Limit::Rel(0.0)).pass());
        assert!(!compare_slices("x", &[f64::NAN], &[1.0], Limit::Abs(1.0)).pass());
        assert!(!compare_slices("x", &[1.0, f64::NAN, 1.0], &[1.0, 1.0, 1.0], Limit::Abs(1.0)).pass());
        let m = Check::merge("g", &[c.clone(), compare_slices("y", &[0.0], &[0.0], Limit::Abs(0.4))]).unwrap();
        assert_eq!((m.max_abs, m.elements), (0.5, 4));
        assert_eq!(m.worst.as_deref(), Some("x"), "the group names its worst member");
        let nan = compare_slices("n", &[f64::NAN], &[1.0], Limit::Abs(0.4));
        assert_eq!(Check::merge("g", &[c.clone(), nan.clone()]).unwrap().worst.as_deref(), Some("n"));
        // A NaN member that is not the last still makes the group fail.
        let ok = compare_slices("y", &[0.0], &[0.0], Limit::Abs(0.4));
        let m = Check::merge("g", &[ok.clone(), nan.clone(), ok]).unwrap();
        assert!(m.max_abs.is_nan() && m.max_rel.is_nan() && !m.pass(), "{m:?}");
        let bf = VerifyOptions { device: Device::Cpu, dtype: DType::BF16 };
        assert_eq!(bf.limit(Limit::Abs(1e-4)), Limit::Rel(BF16_REL));
    }

    #[test]
    fn non_fixtures_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain.safetensors");
        let t = Tensor::from_vec(vec![1f32, 2.0], &[2]).unwrap();
        crate::io::safetensors::save(&p, &[("a", &t)], None).unwrap();
        let e = run(&p, &VerifyOptions::default()).unwrap_err().to_string();
        assert!(e.contains("not a medgen fixture"), "{e}");
        let e = run(dir.path().join("missing.safetensors"), &VerifyOptions::default()).unwrap_err().to_string();
        assert!(e.contains("missing.safetensors"), "{e}");
    }
}
