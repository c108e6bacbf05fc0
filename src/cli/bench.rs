//! `medgen bench`: benchmarks against the baselines, in one run.

use std::path::PathBuf;

#[path = "bench_curate.rs"]
mod curate;

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
    /// curate: runs per measurement (best counts). Default: 5 for decode, 2 for curate.
    #[arg(long)]
    pub repeats: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Run a benchmark; prints a table and returns the exit code.
pub fn bench(a: &BenchArgs) -> anyhow::Result<i32> {
    match a.what {
        BenchWhat::Decode => decode(a),
        BenchWhat::Curate => curate(a),
    }
}

fn curate(a: &BenchArgs) -> anyhow::Result<i32> {
    use curate::{CurateBenchOptions, bench_curate};
    let opts = CurateBenchOptions { dir: a.dir.clone(), quick: a.quick, repeats: a.repeats.unwrap_or(2).max(1) };
    let mut log = |line: &str| eprintln!("[bench] {line}");
    let report = bench_curate(&opts, &mut log)?;
    println!("{report}");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("[bench] wrote {}", path.display());
    }
    Ok(0)
}

#[cfg(feature = "video")]
fn decode(a: &BenchArgs) -> anyhow::Result<i32> {
    use medgen_operators::video::bench::{BenchOptions, bench_decode};
    let opts = BenchOptions { dir: a.dir.clone(), quick: a.quick, repeats: a.repeats.unwrap_or(5).max(1) };
    let mut log = |line: &str| eprintln!("[bench] {line}");
    let report = bench_decode(&opts, &mut log)?;
    println!("{report}");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("[bench] wrote {}", path.display());
    }
    Ok(0)
}

#[cfg(not(feature = "video"))]
fn decode(_a: &BenchArgs) -> anyhow::Result<i32> {
    eprintln!(
        "error: this medgen was built without the `video` feature (no GStreamer); rebuild with default features to run `medgen bench decode`"
    );
    Ok(2)
}
