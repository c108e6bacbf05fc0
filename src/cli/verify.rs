//! `medgen verify`: run reference fixtures (FIXTURES.md) through our own networks and samplers and
//! report how far the results are from the reference implementation's.

use clap::{Args, ValueEnum};
use medgen_kernels::verify::{Limit, Report, VerifyOptions};
use medgen_kernels::{DType, Device};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(after_help = "Exit status: 0 when every check of every fixture is within tolerance, 1 when one is not, \
                        2 when a fixture cannot be read or run (the reason is printed).\n\n\
                        Fixtures are made by scripts/make-fixtures.sh (torch + diffusers/transformers on CPU, \
                        random tiny configs); the committed set lives in kernels/tests/fixtures/.\n\n\
                        Example:\n  medgen verify kernels/tests/fixtures/\n  \
                        medgen verify kernels/tests/fixtures/wan_dit_tiny.safetensors --dtype bf16")]
pub struct VerifyArgs {
    /// Fixture files, or folders (every `*.safetensors` inside, sorted).
    #[arg(required = true)]
    pub fixtures: Vec<PathBuf>,
    /// Where to compute. `cuda` runs the Wan DiT, VAE and umT5 fixtures on the first CUDA device (the
    /// schedulers, MiniLM and TransNetV2 stay on the CPU); without a usable driver or device it warns
    /// and runs everything on the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Weights and activations precision (bf16 judges every check on a 2e-2 relative error).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Print one JSON object per fixture instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// A model precision on the command line (`verify --dtype`, `bench dit --dtype`, `sample --precision`).
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DTypeArg {
    F32,
    Bf16,
}

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            inside.sort();
            if inside.is_empty() {
                anyhow::bail!("{} holds no .safetensors fixtures", p.display());
            }
            out.extend(inside);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn limit_text(l: Limit) -> String {
    // Two significant digits where a limit has them (1e-5, 2.1e-5).
    let short = |v: f64| format!("{v:.1e}").replacen(".0e", "e", 1);
    match l {
        Limit::Abs(v) => format!("abs ≤ {}", short(v)),
        Limit::Rel(v) => format!("rel ≤ {}", short(v)),
    }
}

fn print_table(r: &Report, path: &Path, asked: DType) {
    let precision = match medgen_kernels::verify::f32_only(&r.model) {
        Some(why) if r.dtype != asked => format!(", in {}: {why}", r.dtype.name()),
        _ => String::new(),
    };
    println!("{} ({}, on {}{precision})", path.display(), r.model, r.device);
    let w = r.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(5).max(5);
    println!("  {:<w$}  {:>10}  {:>10}  {:<12}  result", "check", "max abs", "max rel", "limit");
    for c in &r.checks {
        println!(
            "  {:<w$}  {:>10.3e}  {:>10.3e}  {:<12}  {}",
            c.name,
            c.max_abs,
            c.max_rel,
            limit_text(c.limit),
            match (c.pass(), &c.worst) {
                (true, _) => "ok".to_string(),
                (false, Some(w)) => format!("FAIL (worst: {w})"),
                (false, None) => "FAIL".to_string(),
            }
        );
    }
}

fn json(r: &Report) -> serde_json::Value {
    let checks: Vec<serde_json::Value> = r
        .checks
        .iter()
        .map(|c| {
            let (kind, limit) = match c.limit {
                Limit::Abs(v) => ("abs", v),
                Limit::Rel(v) => ("rel", v),
            };
            serde_json::json!({"name": c.name, "max_abs": c.max_abs, "max_rel": c.max_rel, "limit_kind": kind,
                "limit": limit, "elements": c.elements, "pass": c.pass(), "worst": c.worst})
        })
        .collect();
    serde_json::json!({"fixture": r.fixture, "model": r.model, "device": r.device.to_string(),
        "dtype": r.dtype.name(), "pass": r.pass(), "checks": checks})
}

pub fn verify(a: &VerifyArgs) -> anyhow::Result<i32> {
    let opts = VerifyOptions {
        device: match a.device {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => match medgen_kernels::cuda::available() {
                Ok(devices) if !devices.is_empty() => Device::Cuda(0),
                Ok(_) => {
                    eprintln!("warning: CUDA driver found but no device: running on CPU");
                    Device::Cpu
                }
                Err(e) => {
                    eprintln!("warning: {e}");
                    Device::Cpu
                }
            },
        },
        dtype: a.dtype.dtype(),
    };
    // A folder without fixtures cannot be run: exit 2 like any other unreadable fixture.
    let files = match expand(&a.fixtures) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(2);
        }
    };
    let (mut failed, mut broken) = (0usize, 0usize);
    for f in &files {
        match medgen_kernels::verify::run(f, &opts) {
            Ok(r) => {
                if a.json {
                    println!("{}", json(&r));
                } else {
                    print_table(&r, f, opts.dtype);
                }
                if !r.pass() {
                    failed += 1;
                }
            }
            Err(e) => {
                broken += 1;
                if a.json {
                    println!("{}", serde_json::json!({"fixture": f, "error": e.to_string()}));
                } else {
                    println!("{}: cannot verify: {e}", f.display());
                }
            }
        }
    }
    if !a.json {
        println!(
            "{} fixtures: {} within tolerance, {failed} out of tolerance, {broken} not run",
            files.len(),
            files.len() - failed - broken
        );
    }
    Ok(if broken > 0 {
        2
    } else if failed > 0 {
        1
    } else {
        0
    })
}
