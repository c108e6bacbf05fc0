//! The `device` param of the model operators (`sample.t2v`, `train.flow_matching`,
//! `latent.encode_video`, `latent.decode_video`): where the networks compute.
//!
//! Spellings: `cpu` (the default), `cuda` (the first CUDA device), `cuda:N`, and `auto` (the first
//! CUDA device when one is usable, else the CPU). A CUDA request on a machine without a usable
//! driver or device runs on the CPU and says so in a warning, so one graph file serves both kinds
//! of machine; a malformed spelling is an error.

use medgen_kernels::Device;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Parses a `device` param (see the module docs) without touching any driver.
pub fn parse_device(spec: &str) -> Result<DeviceRequest, String> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(DeviceRequest::Cpu),
        "auto" => Ok(DeviceRequest::Auto),
        "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceRequest::Cuda(n)),
            _ => Err(format!("device {spec:?} is not one of cpu, cuda, cuda:N, auto")),
        },
    }
}

/// A parsed `device` param.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    Cuda(usize),
    Auto,
}

impl DeviceRequest {
    /// The device asked for, `auto` settled (the first CUDA device when one is usable, else the
    /// CPU); a CUDA request stays one even without a device (see [`resolve`](Self::resolve)).
    pub fn requested(self) -> Device {
        match self {
            DeviceRequest::Cpu => Device::Cpu,
            DeviceRequest::Cuda(n) => Device::Cuda(n),
            DeviceRequest::Auto if medgen_kernels::cuda::is_available() => Device::Cuda(0),
            DeviceRequest::Auto => Device::Cpu,
        }
    }

    /// The device to compute on, and a warning when a CUDA request falls back to the CPU.
    pub fn resolve(self) -> (Device, Option<String>) {
        match self.requested() {
            Device::Cpu => (Device::Cpu, None),
            Device::Cuda(n) => match medgen_kernels::cuda::available() {
                Ok(devs) if n < devs.len() => (Device::Cuda(n), None),
                Ok(devs) => (
                    Device::Cpu,
                    Some(format!(
                        "device cuda:{n} asked for but {} CUDA device(s) found: running on the CPU",
                        devs.len()
                    )),
                ),
                Err(e) => (Device::Cpu, Some(format!("device cuda:{n} asked for: {e}; running on the CPU"))),
            },
        }
    }
}

/// Parses and resolves a `device` param, logging the fallback warning (once per call).
pub fn resolve_device(spec: &str, op: &str) -> Result<Device, String> {
    let (dev, warn) = parse_device(spec)?.resolve();
    if let Some(w) = warn {
        tracing::warn!(op, "{w}");
    }
    Ok(dev)
}

/// Adds an issue for a malformed `device` param (the `check` of every operator that has one).
pub fn check_device(spec: &str, issues: &mut Vec<crate::api::ParamIssue>) {
    if let Err(e) = parse_device(spec) {
        issues.push(crate::api::ParamIssue::error("device", e, Some("device = \"cuda\"".into())));
    }
}

/// The default of every `device` param.
pub fn d_device() -> String {
    "cpu".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_params_drop_the_device_and_a_default_precision() {
        let mut m = serde_json::json!({"steps": 3, "device": "cuda", "precision": "f32"});
        memo_params(m.as_object_mut().unwrap());
        assert_eq!(m, serde_json::json!({"steps": 3}));
        let mut m = serde_json::json!({"steps": 3, "device": "cpu", "precision": "bf16"});
        memo_params(m.as_object_mut().unwrap());
        assert_eq!(m, serde_json::json!({"steps": 3, "precision": "bf16"}));
        let p: Precision = serde_json::from_str("\"bf16\"").unwrap();
        assert_eq!(p.dtype(), medgen_kernels::DType::BF16);
        assert!(serde_json::from_str::<Precision>("\"fp16\"").is_err());
    }

    #[test]
    fn spellings() {
        assert_eq!(parse_device("cpu"), Ok(DeviceRequest::Cpu));
        assert_eq!(parse_device(" CUDA "), Ok(DeviceRequest::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceRequest::Cuda(3)));
        assert_eq!(parse_device("auto"), Ok(DeviceRequest::Auto));
        for bad in ["cuda:x", "tpu", "", "cuda:-1"] {
            assert!(parse_device(bad).unwrap_err().contains("cpu, cuda, cuda:N, auto"), "{bad}");
        }
        assert_eq!(DeviceRequest::Cpu.resolve(), (Device::Cpu, None));
    }

    #[test]
    fn cuda_without_a_device_falls_back_with_a_warning() {
        // On machines with a GPU this checks nothing but that resolving is consistent.
        let (d, warn) = DeviceRequest::Cuda(0).resolve();
        match medgen_kernels::cuda::available() {
            Ok(devs) if !devs.is_empty() => assert_eq!((d, warn), (Device::Cuda(0), None)),
            _ => {
                assert_eq!(d, Device::Cpu);
                assert!(warn.unwrap().contains("running on the CPU"));
            }
        }
    }
}

/// Precision of a DiT (`precision` param of sample.t2v and train.flow_matching): its weights and GEMM /
/// attention inputs in f32, or in bf16 with fp32 accumulation, residual stream and the modules diffusers keeps
/// in fp32 (training then keeps fp32 master weights). Unlike the device it changes results, so it is part of a
/// memo (omitted at the default, which leaves memos made before the param existed valid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// A model operator's params as its memo sees them: without `device` (a result does not depend on where it
/// was computed) and without `precision` at its default.
pub fn memo_params(params: &mut serde_json::Map<String, serde_json::Value>) {
    params.remove("device");
    if params.get("precision").and_then(|v| v.as_str()) == Some("f32") {
        params.remove("precision");
    }
}

impl Precision {
    /// The weights dtype.
    pub fn dtype(self) -> medgen_kernels::DType {
        match self {
            Precision::F32 => medgen_kernels::DType::F32,
            Precision::Bf16 => medgen_kernels::DType::BF16,
        }
    }
}
