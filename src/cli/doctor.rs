//! `medgen doctor`: what this machine offers medgen, and how to fix what is missing.

use clap::Args;
use std::process::Command;

#[derive(Args, Debug)]
pub struct DoctorArgs {}

struct Check {
    what: &'static str,
    ok: bool,
    detail: String,
}

fn tool_version(cmd: &str, arg: &str) -> Option<String> {
    let out = Command::new(cmd).arg(arg).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
}

fn gst_element(name: &str) -> bool {
    Command::new("gst-inspect-1.0").arg("--exists").arg(name).status().map(|s| s.success()).unwrap_or(false)
}

pub fn doctor(_a: &DoctorArgs) -> anyhow::Result<i32> {
    let mut checks = Vec::new();
    checks.push(Check {
        what: "medgen",
        ok: true,
        detail: format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            if cfg!(feature = "video") { "video operators built in" } else { "built without video operators" }
        ),
    });
    let gst = tool_version("gst-launch-1.0", "--version");
    checks.push(Check {
        what: "GStreamer tools",
        ok: gst.is_some(),
        detail: gst.unwrap_or_else(|| "gst-launch-1.0 not found: run scripts/setup.sh (apt gstreamer1.0-tools)".into()),
    });
    let encoders: Vec<&str> = ["x264enc", "openh264enc"].into_iter().filter(|e| gst_element(e)).collect();
    checks.push(Check {
        what: "H.264 encoder",
        ok: !encoders.is_empty(),
        detail: if encoders.is_empty() {
            "neither x264enc nor openh264enc: apt install gstreamer1.0-plugins-ugly (or -bad)".into()
        } else {
            encoders.join(", ")
        },
    });
    let ort = medgen_operators::onnx::locate_runtime();
    checks.push(Check {
        what: "ONNX Runtime",
        ok: ort.is_ok(),
        detail: match ort {
            Ok(p) => p.display().to_string(),
            Err(e) => e.to_string(),
        },
    });
    checks.push(cuda_check());
    let samples = std::path::Path::new(".cache/samples");
    let n = std::fs::read_dir(samples).map(|d| d.count()).unwrap_or(0);
    checks.push(Check {
        what: "sample videos",
        ok: true,
        detail: if n > 0 {
            format!("{n} files in {}", samples.display())
        } else {
            "not fetched here (scripts/fetch-samples.sh)".into()
        },
    });
    let mut bad = 0;
    for c in &checks {
        if !c.ok {
            bad += 1;
        }
        println!("{} {:<16} {}", if c.ok { "ok  " } else { "FAIL" }, c.what, c.detail);
    }
    Ok(if bad == 0 { 0 } else { 1 })
}

/// The CUDA backend: devices and the libraries it opens. Without a driver that is fine (the CPU runs the
/// model stages); with one, a missing cuBLAS or NVRTC fails the check (CUDA requests would fall back), and a
/// missing cuBLASLt is named (bias and GELU then run as separate kernels).
fn cuda_check() -> Check {
    use medgen_kernels::cuda;
    let libs = cuda::libraries();
    if !libs.driver {
        return Check { what: "CUDA", ok: true, detail: "no NVIDIA driver (model stages run on the CPU)".into() };
    }
    let devices = match cuda::available() {
        Ok(d) => d
            .iter()
            .map(|d| {
                let (ma, mi) = d.compute_capability;
                format!("{} (sm_{ma}{mi}, {:.1} GiB)", d.name, d.total_memory as f64 / (1u64 << 30) as f64)
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => e.to_string(),
    };
    let mut parts = vec![devices];
    parts.push(if libs.cublas { "cuBLAS ok".into() } else { "cuBLAS missing (libcublas.so.13)".into() });
    parts.push(if libs.cublas_lt {
        "cuBLASLt ok (fused bias/GELU epilogues)".into()
    } else {
        "cuBLASLt missing (libcublasLt.so.13: bias and GELU run as separate kernels)".into()
    });
    parts.push(match &libs.nvrtc {
        Ok((ma, mi)) => format!("NVRTC {ma}.{mi}"),
        Err(e) => format!("NVRTC unusable: {e} (set MEDGEN_NVRTC_DIR to a folder with libnvrtc.so.13)"),
    });
    Check { what: "CUDA", ok: libs.cublas && libs.nvrtc.is_ok(), detail: parts.join("; ") }
}
