//! `medgen bench`: benchmarks against the baselines, in one run.

use std::path::PathBuf;

#[path = "bench_curate.rs"]
mod curate;
#[path = "bench_dit.rs"]
pub mod dit;

/// What `medgen bench` measures.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    /// Video decode throughput (frames/s) on generated 1080p and 480p files against
    /// `gst-launch-1.0 filesrc ! decodebin ! fakesink` in the same run, and the cost of 1 fps
    /// sampling of a 10-minute file against a full decode, exact (the frame at each second) and
    /// keyframe-accurate (the nearest keyframe, decoding only keyframes).
    Decode,
    /// Videos/hour/core of the classical curation path (`medgen run -w 1` of curate.segment →
    /// curate.black_border → curate.dedup, fresh store) on the sample videos against an
    /// equivalent PySceneDetect + OpenCV pipeline (`scripts/bench/curate_baseline.py`, venv from
    /// `scripts/bench/setup-baseline.sh`; skipped with a hint when absent) and a plain
    /// `gst-launch-1.0 ... decodebin ! fakesink` decode (the decode floor), each pinned to one CPU.
    Curate,
    /// The Wan DiT on random weights (`--config`, default wan-1.3b) at `--frames` × `--size`: one
    /// forward pass, one training step (forward + loss + backward) and one sampling step (CFG,
    /// UniPC), each after a warm-up run, with achieved TFLOP/s and (on CUDA) peak tensor memory.
    /// `scripts/bench/dit_torch.py` times diffusers' WanTransformer3DModel the same way.
    Dit,
}

/// Arguments of `medgen bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to benchmark.
    #[arg(value_enum)]
    pub what: BenchWhat,
    /// decode: folder for the generated videos, kept and reused by later runs (default: a
    /// temporary folder, deleted afterwards). curate: folder of the videos to curate (default
    /// .cache/samples; DICOM files are left out).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A quick check, not the reference numbers. decode: shorter files (4 s instead of 10 s; a
    /// 1-minute sampling file instead of 10 minutes). curate: only the two smallest videos.
    #[arg(long)]
    pub quick: bool,
    /// decode: interleaved rounds of the throughput measurements (every pipeline once per round;
    /// medians and within-round ratios count) and runs of the sampling ones (best counts).
    /// curate: runs per measurement (best counts). dit: timed runs per phase after one warm-up
    /// (median counts). Default: 5 for decode, 2 for curate, 3 for dit.
    #[arg(long)]
    pub repeats: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// dit: where to run (cpu, cuda, cuda:N). A CUDA request without a usable device is an error
    /// here (a benchmark never falls back silently).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// dit: wan-1.3b, wan-14b, or a diffusers transformer config.json.
    #[arg(long, default_value = "wan-1.3b")]
    pub config: String,
    /// dit: keep only this many transformer blocks (e.g. 2 for a quick check at full width).
    #[arg(long)]
    pub layers: Option<usize>,
    /// dit: video frames (1 + 4k).
    #[arg(long, default_value_t = 81)]
    pub frames: usize,
    /// dit: video HEIGHTxWIDTH in pixels.
    #[arg(long, default_value = "480x832")]
    pub size: String,
    /// dit: weights precision (bf16: bf16 GEMM inputs with f32 accumulation; f32).
    #[arg(long, value_enum, default_value_t = crate::cli::verify::DTypeArg::Bf16)]
    pub dtype: crate::cli::verify::DTypeArg,
    /// dit: recompute each block in the backward pass (gradient checkpointing).
    #[arg(long)]
    pub recompute: bool,
    /// dit: time only the forward pass and the sampling step.
    #[arg(long)]
    pub no_train: bool,
    /// dit: time a LoRA training step of this rank (adapters on every attention projection, base weights
    /// frozen and given no gradient) instead of full fine-tuning; reports its peak device memory.
    #[arg(long, value_name = "RANK")]
    pub lora: Option<usize>,
}

/// Run a benchmark; prints a table and returns the exit code.
pub fn bench(a: &BenchArgs) -> anyhow::Result<i32> {
    match a.what {
        BenchWhat::Decode => decode(a),
        BenchWhat::Curate => curate(a),
        BenchWhat::Dit => dit(a),
    }
}

fn dit(a: &BenchArgs) -> anyhow::Result<i32> {
    use dit::{DitBenchOptions, bench_dit, parse_config, parse_size};
    // No fallback: a CUDA request without a device is bench_dit's error.
    let device = medgen_operators::api::device::parse_device(&a.device).map_err(anyhow::Error::msg)?.requested();
    let mut config = parse_config(&a.config)?;
    if let Some(n) = a.layers {
        config.num_layers = n;
    }
    let (height, width) = parse_size(&a.size)?;
    let opts = DitBenchOptions {
        config,
        config_name: a.config.clone(),
        device,
        dtype: a.dtype.dtype(),
        frames: a.frames,
        height,
        width,
        text_len: 512,
        repeats: a.repeats.unwrap_or(3).max(1),
        recompute: a.recompute,
        skip_train: a.no_train,
        lora_rank: a.lora,
    };
    let mut log = |line: &str| eprintln!("[bench] {line}");
    let report = bench_dit(&opts, &mut log)?;
    report_out(a, &report)
}

fn curate(a: &BenchArgs) -> anyhow::Result<i32> {
    use curate::{CurateBenchOptions, bench_curate};
    let opts = CurateBenchOptions { dir: a.dir.clone(), quick: a.quick, repeats: a.repeats.unwrap_or(2).max(1) };
    let mut log = |line: &str| eprintln!("[bench] {line}");
    let report = bench_curate(&opts, &mut log)?;
    report_out(a, &report)
}

#[cfg(feature = "video")]
fn decode(a: &BenchArgs) -> anyhow::Result<i32> {
    use medgen_operators::video::bench::{BenchOptions, bench_decode};
    let opts = BenchOptions { dir: a.dir.clone(), quick: a.quick, repeats: a.repeats.unwrap_or(5).max(1) };
    let mut log = |line: &str| eprintln!("[bench] {line}");
    let report = bench_decode(&opts, &mut log)?;
    report_out(a, &report)
}

#[cfg(not(feature = "video"))]
fn decode(_a: &BenchArgs) -> anyhow::Result<i32> {
    eprintln!(
        "error: this medgen was built without the `video` feature (no GStreamer); rebuild with default features to run `medgen bench decode`"
    );
    Ok(2)
}

/// Prints a report's table and, with `--json`, writes the report as JSON too.
fn report_out<R: std::fmt::Display + serde::Serialize>(a: &BenchArgs, report: &R) -> anyhow::Result<i32> {
    println!("{report}");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)?;
        eprintln!("[bench] wrote {}", path.display());
    }
    Ok(0)
}
