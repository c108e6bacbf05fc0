//! medgen's CUDA backend end to end without a GPU: the `medgen` binary runs with the CPU stand-in for the CUDA
//! driver and cuBLAS (kernels/cuda/emu/fake_cuda.cpp, built by the test) first on `LD_LIBRARY_PATH`. NVRTC
//! compiles the real kernel files, the driver stand-in checks the PTX and every copy, GEMM operand and launch
//! shape, and runs each kernel's C++ build on fibers. So these tests catch what a first GPU session would
//! otherwise spend its time on: wrong launch arguments, buffer sizes, strides, GEMM transposes and leading
//! dimensions, and host-side logic of the device paths (DiT forward and backward, VAE, umT5, LoRA training,
//! the benchmark, a training-and-sampling graph whose losses must follow the CPU run's). They say nothing
//! about speed or about races only the hardware's scheduling exposes.
//!
//! Needs a C++20 compiler and NVRTC (scripts/setup.sh installs both); missing either fails the tests.
#![cfg(target_arch = "x86_64")]

#[path = "../kernels/tests/support/cuda_emulation.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use support::Emulation;

fn emulation() -> &'static Emulation {
    static E: OnceLock<Emulation> = OnceLock::new();
    E.get_or_init(Emulation::build)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/tests/fixtures").join(format!("{name}.safetensors"))
}

/// Runs `medgen verify --json --device cuda` on fixtures and checks each ran on the emulated device and passed.
fn verify_on_device(names: &[&str], dtype: &str) {
    let out = emulation()
        .command(env!("CARGO_BIN_EXE_medgen"))
        .args(["verify", "--json", "--device", "cuda", "--dtype", dtype])
        // Small im2col chunks, so every VAE convolution runs as many chunked GEMMs.
        .env("MEDGEN_CUDA_IM2COL_BYTES", "1048576")
        .args(names.iter().map(|n| fixture(n)))
        .output()
        .expect("run medgen verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reports: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(reports.len(), names.len(), "{stdout}\n{stderr}");
    for r in &reports {
        assert_eq!(r["device"], "cuda:0", "ran off the emulated device: {r}\n{stderr}");
        assert_eq!(r["pass"], true, "out of tolerance on the CUDA path ({dtype}): {r}\n{stderr}");
    }
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
}

#[test]
fn wan_dit_vae_umt5_fixtures_pass_on_the_cuda_path_in_f32() {
    verify_on_device(
        &[
            "wan_dit_tiny",
            "wan_dit_small_original",
            "umt5_tiny",
            "wan_vae_small_t1",
            "wan_vae_small_t5",
            "wan_vae_small_t9",
            "wan_vae_tiny_t13",
            "wan_vae_half_t7",
        ],
        "f32",
    );
}

/// bf16 weights and activations: bf16 GEMMs and the tensor-core attention kernels (head dims 64 / 128).
/// The VAE is left out: `verify` runs it in f32 whatever is asked (as the Wan pipelines do; bf16 weights
/// alone miss 2e-2 on its decoded frames, on the CPU as well).
#[test]
fn wan_dit_and_umt5_fixtures_pass_on_the_cuda_path_in_bf16() {
    verify_on_device(&["wan_dit_tiny", "wan_dit_small_original", "umt5_tiny"], "bf16");
}

/// `medgen doctor` names the device and each CUDA library the backend opens.
#[test]
fn doctor_reports_the_device_and_the_cuda_libraries() {
    let out = emulation().command(env!("CARGO_BIN_EXE_medgen")).arg("doctor").output().expect("run medgen doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains(" CUDA ")).unwrap_or_else(|| panic!("no CUDA line:\n{stdout}"));
    assert!(line.starts_with("ok"), "{line}");
    for part in ["medgen CPU emulation", "sm_90", "cuBLAS ok", "cuBLASLt ok", "NVRTC 13."] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
}

/// A DiT `config.json` in `dir`: 2 heads of 64 (the tensor-core attention kernels), text dim 64, FFN 256.
fn small_dit_config(dir: &Path, layers: usize) -> PathBuf {
    let cfg = dir.join("config.json");
    let json = format!(
        r#"{{"num_attention_heads": 2, "attention_head_dim": 64, "text_dim": 64, "ffn_dim": 256, "num_layers": {layers}}}"#
    );
    std::fs::write(&cfg, json).unwrap();
    cfg
}

/// `medgen bench dit --device cuda` with a LoRA training step on a small config: CUDA-event timing, the
/// sampling step, the peak-memory report.
#[test]
fn bench_dit_runs_on_the_cuda_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_dit_config(dir.path(), 2);
    let out = emulation()
        .command(env!("CARGO_BIN_EXE_medgen"))
        .args(["bench", "dit", "--device", "cuda", "--config"])
        .arg(&cfg)
        .args(["--frames", "5", "--size", "32x48", "--repeats", "1", "--lora", "4", "--dtype", "bf16"])
        .output()
        .expect("run medgen bench dit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("on cuda:0 (medgen CPU emulation"), "{stdout}");
    for phase in ["forward", "LoRA r4 forward+backward", "sampling step"] {
        let line = stdout.lines().find(|l| l.starts_with(phase)).unwrap_or_else(|| panic!("no {phase} row:\n{stdout}"));
        assert!(line.ends_with("GiB"), "no peak memory on the {phase} row: {line}");
    }
    // Every linear layer with a bias, and the FFN's GELU in the forward passes, ran in a cuBLASLt epilogue.
    let line = stdout.lines().find(|l| l.starts_with("linear bias/GELU epilogues:")).expect("epilogue counts");
    let n: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(n.len() == 2 && n[0] > 0 && n[1] == 0, "{line}");
}

/// `medgen bench dit --json` under the emulation (`dry`: MEDGEN_EMU_DRY_RUN, nothing computed).
fn bench_json(config: &Path, args: &[&str], dry: bool) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut cmd = emulation().command(env!("CARGO_BIN_EXE_medgen"));
    cmd.args(["bench", "dit", "--device", "cuda", "--config"]).arg(config).args(args).arg("--json").arg(&json);
    if dry {
        cmd.env("MEDGEN_EMU_DRY_RUN", "1");
    }
    let out = cmd.output().expect("run medgen bench dit");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    serde_json::from_str(&std::fs::read_to_string(&json).expect("bench JSON")).expect("parse bench JSON")
}

/// A dry run (no kernel, GEMM or copy executed) allocates exactly what the computing run does: the same
/// weights memory and the same peak tensor memory in every phase, LoRA training with recomputation
/// included. This is what makes the dry run a memory plan for sizes no CPU can compute
/// (`memory_plan_of_the_1_3b_lora_step`).
#[test]
fn a_dry_run_allocates_exactly_what_the_computing_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_dit_config(dir.path(), 3);
    let args = ["--frames", "5", "--size", "32x48", "--repeats", "1", "--lora", "4", "--recompute", "--dtype", "bf16"];
    let (real, dry) = (bench_json(&cfg, &args, false), bench_json(&cfg, &args, true));
    assert!(real["weights_bytes"].as_u64().unwrap() > 0, "{real}");
    assert_eq!(real["weights_bytes"], dry["weights_bytes"]);
    let phases = |r: &serde_json::Value| -> Vec<(String, u64)> {
        r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["peak_bytes"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(phases(&real), phases(&dry));
    assert_eq!(phases(&real).len(), 3, "{real}");
}

/// Issue #8's memory questions answered by the dry run: peak tensor memory of a LoRA (rank 32) training step
/// of the 1.3B model with block recomputation at 480×832 for several frame counts (`MEDGEN_PLAN_FRAMES`,
/// default 81), bf16. Run with `cargo test --release --test cuda_emulated -- --ignored memory_plan
/// --nocapture`; the CUDA context and cuBLAS workspaces (~1 GiB on a GPU) come on top.
#[test]
#[ignore = "a memory plan at full model size (minutes on the host): run by hand"]
fn memory_plan_of_the_1_3b_lora_step() {
    let frames = std::env::var("MEDGEN_PLAN_FRAMES").unwrap_or_else(|_| "81".into());
    let gib = |b: &serde_json::Value| b.as_u64().unwrap() as f64 / (1u64 << 30) as f64;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("plan.json");
    for f in frames.split(',') {
        let out = emulation()
            .command(env!("CARGO_BIN_EXE_medgen"))
            .env("MEDGEN_EMU_DRY_RUN", "1")
            .env("MEDGEN_EMU_MEMORY_GIB", "4096")
            .args(["bench", "dit", "--device", "cuda", "--config", "wan-1.3b", "--frames", f.trim()])
            .args(["--size", "480x832", "--dtype", "bf16", "--repeats", "1", "--lora", "32", "--recompute", "--json"])
            .arg(&json)
            .output()
            .expect("run medgen bench dit");
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{text}");
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let peaks: Vec<String> = r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{} {:.2} GiB", p["name"].as_str().unwrap(), gib(&p["peak_bytes"])))
            .collect();
        println!(
            "frames {f}: {} tokens, weights {:.2} GiB; peaks: {}",
            r["tokens"],
            gib(&r["weights_bytes"]),
            peaks.join(", ")
        );
    }
}

#[cfg(feature = "video")]
#[path = "curate_common/mod.rs"]
mod common;

/// Latents → a scratch DiT trained by `train.flow_matching` → samples, once on the CPU and once with
/// `device = "cuda"` (f32): both runs draw the same batches and noise, so the device run's losses must follow
/// the CPU run's; each run must end without failures and sample its prompt from its checkpoint.
#[cfg(feature = "video")]
#[test]
fn training_and_sampling_graph_on_the_cuda_path_follows_the_cpu() {
    use medgen_operators::video::synth::{Content, Shot, SynthSpec};
    if !common::repo().join(".cache/models/minilm/model.safetensors").is_file() {
        panic!("MiniLM is not fetched: run scripts/fetch-models.sh");
    }
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    std::fs::create_dir_all(&clips).unwrap();
    for (name, content) in [("bars.mp4", Content::Bars), ("checker.mp4", Content::Checker)] {
        let spec = SynthSpec { shots: vec![Shot::new(24, content)], ..SynthSpec::simple(64, 48, 8, 24) };
        common::synth_video(&clips.join(name), &spec);
    }
    let graph = |device: &str| {
        format!(
            r#"[graph]
name = "g"
[nodes.clips]
op = "source.files"
paths = ["clips/*.mp4"]
[nodes.captions]
op = "caption.template"
inputs = ["clips"]
[nodes.text]
op = "latent.encode_text"
inputs = ["captions"]
[nodes.latents]
op = "latent.encode_video"
inputs = ["clips"]
width = 32
height = 32
frames = 9
fps = 8.0
fit_stride = 1
[nodes.train]
op = "train.flow_matching"
inputs = {{ latents = "latents", text = "text" }}
scratch_layers = 1
scratch_heads = 2
scratch_head_dim = 64
scratch_ffn_dim = 64
scratch_freq_dim = 32
lr = 2e-3
batch_size = 2
steps_per_clip = 6
min_steps_per_round = 12
max_steps_per_round = 12
checkpoint_every = 6
device = "{device}"
[nodes.prompts]
op = "source.prompts"
prompts = ["colour bars moving"]
[nodes.samples]
op = "sample.t2v"
inputs = {{ prompts = "prompts", checkpoints = "train" }}
sampler = "unipc"
steps = 3
guidance = 2.0
device = "{device}"
[nodes.losses]
op = "sink.jsonl"
inputs = ["train.metrics"]
path = "metrics.jsonl"
[nodes.samples_out]
op = "sink.jsonl"
inputs = ["samples"]
path = "samples.jsonl"
[nodes.failed]
op = "sink.jsonl"
inputs = ["captions.failures", "text.failures", "latents.failures", "train.failures", "samples.failures"]
path = "failures.jsonl"
"#
        )
    };
    let mut result = Vec::new();
    for device in ["cpu", "cuda"] {
        let g = dir.path().join(format!("{device}.toml"));
        std::fs::write(&g, graph(device)).unwrap();
        let store = dir.path().join(format!("store-{device}"));
        let out = emulation()
            .command(env!("CARGO_BIN_EXE_medgen"))
            .args(["run", "-q", "--store"])
            .arg(&store)
            .arg(&g)
            .output()
            .expect("start medgen");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "medgen run ({device}) failed:\n{stderr}");
        assert!(!stderr.contains("running on the CPU"), "the {device} run fell back to the CPU:\n{stderr}");
        let failures = common::rows(&store, "failures.jsonl");
        assert!(failures.is_empty(), "{device}: {failures:?}");
        let samples = common::rows(&store, "samples.jsonl");
        assert_eq!(samples.len(), 1, "{device}: {samples:?}");
        result.push(common::train_losses(&store).into_iter().map(|x| x.1).collect::<Vec<f64>>());
    }
    let (cpu, gpu) = (&result[0], &result[1]);
    eprintln!("losses cpu {cpu:?}\nlosses cuda {gpu:?}");
    assert_eq!(cpu.len(), 12);
    assert_eq!(gpu.len(), 12);
    for (i, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        assert!((c - g).abs() <= 1e-5 * c.abs(), "step {i}: cpu loss {c}, cuda loss {g}");
    }
}
