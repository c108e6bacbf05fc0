//! `medgen bench dit`: time the Wan DiT on random weights — one forward pass, one training step
//! (forward + flow-matching loss + backward) and one sampling step (two guided forward passes and a
//! UniPC update) — with the achieved TFLOP/s and, on CUDA, the peak tensor memory of each.
//!
//! Every phase runs once to warm up (NVRTC compiles, cuBLAS picks algorithms, buffers are
//! allocated), then `repeats` times; the median counts. A timed call is bracketed by device
//! synchronisations, so it is the wall time of the work itself. The PyTorch side of the comparison
//! is `scripts/bench/dit_torch.py`, which times diffusers' `WanTransformer3DModel` the same way
//! (`scripts/gpu/check.sh` runs both on the GPU machine and prints the ratio).

use anyhow::{Context, bail};
use medgen_kernels::nets::wan_dit::{GradRequest, TrainOptions, WanDit, WanDitConfig};
use medgen_kernels::ops::loss::mse_loss_backward;
use medgen_kernels::sched::{FlowUniPc, Sampler, cfg_combine};
use medgen_kernels::train::{LoraConfig, LoraWeights};
use medgen_kernels::{DType, Device, Rng, Tensor, cuda};
use serde::Serialize;
use std::collections::HashSet;
use std::time::Instant;

/// How to run the DiT benchmark.
#[derive(Clone, Debug)]
pub struct DitBenchOptions {
    /// The model (random weights).
    pub config: WanDitConfig,
    /// The config's name in the report (`wan-1.3b`, a file path, …).
    pub config_name: String,
    pub device: Device,
    /// Weights dtype (`BF16`: bf16 GEMM inputs, f32 accumulation and residual stream).
    pub dtype: DType,
    /// Video frames (1 + 4k), height and width in pixels (the latent is /4 in time, /8 in space).
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Text context rows (Wan: 512).
    pub text_len: usize,
    /// Timed runs per phase (after one warm-up run).
    pub repeats: u32,
    /// Gradient checkpointing in the training step.
    pub recompute: bool,
    /// Skip the training step (e.g. a config too large for the device's memory).
    pub skip_train: bool,
    /// Time a LoRA training step of this rank (adapters on the attention projections, the base frozen:
    /// no base weight gradients) instead of the full one.
    pub lora_rank: Option<usize>,
}

/// One timed phase.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Phase {
    pub name: String,
    /// Median seconds over the timed runs.
    pub median_s: f64,
    /// Every timed run, in order.
    pub runs_s: Vec<f64>,
    /// Counted FLOPs of one run (see `WanDitConfig::forward_flops`).
    pub flops: f64,
    /// flops / median_s / 1e12.
    pub tflops: f64,
    /// Peak tensor memory during the phase (CUDA only), bytes.
    pub peak_bytes: Option<usize>,
}

/// What `medgen bench dit` reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DitBenchReport {
    pub config: String,
    pub parameters: usize,
    pub layers: usize,
    pub device: String,
    /// The GPU's name, on CUDA.
    pub device_name: Option<String>,
    pub dtype: String,
    /// `[frames, height, width]` of the video the latent stands for.
    pub video: [usize; 3],
    /// Latent `[C, F', H', W']` (before patching).
    pub latent: [usize; 4],
    pub tokens: usize,
    pub text_len: usize,
    pub recompute: bool,
    /// LoRA rank of the training phase (`None`: full fine-tuning).
    pub lora_rank: Option<usize>,
    /// Tensor memory held by the weights alone (CUDA only), bytes.
    pub weights_bytes: Option<usize>,
    /// How the linear layers' bias / GELU epilogues ran over the whole benchmark (CUDA only).
    pub epilogues: Option<EpilogueCounts>,
    pub phases: Vec<Phase>,
}

/// Linear layers whose bias (and GELU) ran in the epilogue of one cuBLASLt GEMM, and those that ran them
/// as separate kernels (no cuBLASLt, or no algorithm for the dtypes / alignment).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct EpilogueCounts {
    pub fused: u64,
    pub unfused: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Waits for the device's queued work (a no-op on the CPU).
fn sync(device: Device) -> anyhow::Result<()> {
    if let Device::Cuda(i) = device {
        cuda::synchronize(i).context("synchronising the CUDA device")?;
    }
    Ok(())
}

/// Runs `f` once to warm up, then `repeats` timed times; the peak memory covers all runs.
fn phase(
    name: &str,
    o: &DitBenchOptions,
    flops: f64,
    log: &mut dyn FnMut(&str),
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Phase> {
    log(&format!("{name}: warm-up"));
    if let Device::Cuda(i) = o.device {
        cuda::reset_peak_memory(i);
    }
    f()?;
    sync(o.device)?;
    let mut runs = Vec::new();
    for r in 0..o.repeats.max(1) {
        sync(o.device)?;
        let t0 = Instant::now();
        f()?;
        sync(o.device)?;
        let s = t0.elapsed().as_secs_f64();
        log(&format!("{name}: run {} {s:.3} s", r + 1));
        runs.push(s);
    }
    let med = median(&runs);
    let peak_bytes = match o.device {
        Device::Cuda(i) => Some(cuda::memory_stats(i).peak),
        Device::Cpu => None,
    };
    Ok(Phase { name: name.into(), median_s: med, runs_s: runs, flops, tflops: flops / med / 1e12, peak_bytes })
}

/// Builds the model and inputs and times the phases.
pub fn bench_dit(o: &DitBenchOptions, log: &mut dyn FnMut(&str)) -> anyhow::Result<DitBenchReport> {
    let cfg = &o.config;
    cfg.validate().context("the DiT config")?;
    let [pt, ph, pw] = cfg.patch_size;
    if o.frames == 0 || !(o.frames - 1).is_multiple_of(4) {
        bail!("--frames must be 1 + 4k (Wan: 81), got {}", o.frames);
    }
    if o.height == 0 || o.width == 0 || !o.height.is_multiple_of(8 * ph) || !o.width.is_multiple_of(8 * pw) {
        bail!("--size {}x{}: height and width must be positive multiples of {}×{}", o.height, o.width, 8 * ph, 8 * pw);
    }
    let lat_f = 1 + (o.frames - 1) / 4;
    if !lat_f.is_multiple_of(pt) {
        bail!("{lat_f} latent frames are not a multiple of the temporal patch {pt}");
    }
    let latent = [cfg.in_channels, lat_f, o.height / 8, o.width / 8];
    let tokens = lat_f / pt * (o.height / 8 / ph) * (o.width / 8 / pw);
    let device_name = match o.device {
        Device::Cuda(i) => {
            let devs = cuda::available()
                .context("--device cuda (a benchmark does not fall back; use --device cpu to time the CPU)")?;
            Some(devs.get(i).with_context(|| format!("no CUDA device {i} ({} found)", devs.len()))?.name.clone())
        }
        Device::Cpu => None,
    };

    log(&format!("initialising {} ({} parameters, {:?}) on the host", o.config_name, cfg.param_count(), o.dtype));
    let mut rng = Rng::new(0);
    let host = WanDit::init(cfg.clone(), &mut rng, o.dtype)?;
    if let Device::Cuda(i) = o.device {
        cuda::reset_peak_memory(i);
    }
    let model = host.to_device(o.device).with_context(|| format!("moving the model to {}", o.device))?;
    // Adapters on the default targets (every attention projection), B = 0 as PEFT initialises them.
    let lora = match o.lora_rank {
        Some(rank) if !o.skip_train => {
            let lc = LoraConfig { rank, alpha: rank as f64, ..LoraConfig::default() };
            Some(LoraWeights::init(&host, &lc, &mut rng, DType::F32)?.to_device(o.device)?)
        }
        _ => None,
    };
    drop(host);
    let weights_bytes = match o.device {
        Device::Cuda(i) => Some(cuda::memory_stats(i).held),
        Device::Cpu => None,
    };
    let put = |t: Tensor| t.to_device(o.device);
    let mut bshape = vec![1];
    bshape.extend_from_slice(&latent);
    let x = put(Tensor::randn(&bshape, 1.0, DType::F32, &mut rng))?;
    let target = put(Tensor::randn(&bshape, 1.0, DType::F32, &mut rng))?;
    let ctx = put(Tensor::randn(&[1, o.text_len, cfg.text_dim], 1.0, DType::F32, &mut rng))?;
    let uncond = put(Tensor::zeros(&[1, o.text_len, cfg.text_dim], DType::F32, Device::Cpu)?)?;
    let t = put(Tensor::from_vec(vec![500f32], &[1])?)?;
    let fwd_flops = cfg.forward_flops(tokens, o.text_len);

    let gemms_before = cuda::gemm_stats();
    let mut phases = Vec::new();
    phases.push(phase("forward", o, fwd_flops, log, || {
        model.forward(&x, &t, &ctx)?;
        Ok(())
    })?);
    if !o.skip_train {
        let opts = TrainOptions { recompute_blocks: o.recompute, input_grads: false };
        // Recomputation runs every block forward twice. The backward is 2× the forward (dx and dW of every
        // linear, two products per attention product); with LoRA the frozen linears skip dW.
        let fwd_runs = if o.recompute { 2.0 } else { 1.0 };
        let (name, train_flops) = match o.lora_rank {
            Some(rank) => {
                let attn = cfg.attention_flops(tokens, o.text_len);
                (format!("LoRA r{rank} forward+backward"), fwd_flops * fwd_runs + (fwd_flops - attn) + 2.0 * attn)
            }
            None => ("forward+backward".to_string(), fwd_flops * (fwd_runs + 2.0)),
        };
        let frozen = HashSet::new();
        phases.push(phase(&name, o, train_flops, log, || {
            let (v, tape) = model.forward_train_with(&x, &t, &ctx, opts)?;
            let dv = mse_loss_backward(&v, &target, 1.0)?;
            drop(v);
            match &lora {
                Some(l) => model.backward_for(&tape, &dv, GradRequest { params: Some(&frozen), lora: Some(l) })?,
                None => model.backward(&tape, &dv)?,
            };
            Ok(())
        })?);
    }
    let mut sampler = FlowUniPc::new(1000, 3.0, 50)?;
    let mut sample = x.to_cpu()?;
    let mut step = 0;
    phases.push(phase("sampling step (CFG, UniPC)", o, 2.0 * fwd_flops, log, || {
        let xd = sample.to_device(o.device)?;
        let ts = put(Tensor::from_vec(vec![sampler.timestep(step)], &[1])?)?;
        let v_c = model.forward(&xd, &ts, &ctx)?;
        let v_u = model.forward(&xd, &ts, &uncond)?;
        let v = cfg_combine(&v_c, &v_u, 5.0)?;
        sample = sampler.step(&v, &sample)?;
        step += 1;
        Ok(())
    })?);

    let epilogues = matches!(o.device, Device::Cuda(_)).then(|| {
        let g = cuda::gemm_stats();
        EpilogueCounts { fused: g.fused - gemms_before.fused, unfused: g.unfused - gemms_before.unfused }
    });

    Ok(DitBenchReport {
        config: o.config_name.clone(),
        parameters: cfg.param_count(),
        layers: cfg.num_layers,
        device: o.device.to_string(),
        device_name,
        dtype: format!("{:?}", o.dtype).to_lowercase(),
        video: [o.frames, o.height, o.width],
        latent,
        tokens,
        text_len: o.text_len,
        recompute: o.recompute,
        lora_rank: o.lora_rank,
        weights_bytes,
        epilogues,
        phases,
    })
}

fn gib(b: usize) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

impl std::fmt::Display for DitBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Wan DiT {} ({} layers, {:.3} B parameters, {}) on {}{}",
            self.config,
            self.layers,
            self.parameters as f64 / 1e9,
            self.dtype,
            self.device,
            self.device_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
        )?;
        writeln!(
            f,
            "video {}×{}×{} (frames × height × width) → latent {:?}, {} tokens, {} text rows{}",
            self.video[0],
            self.video[1],
            self.video[2],
            self.latent,
            self.tokens,
            self.text_len,
            if self.recompute { ", blocks recomputed in the backward pass" } else { "" }
        )?;
        if let Some(r) = self.lora_rank {
            writeln!(f, "training: LoRA rank {r} on the attention projections, base weights frozen")?;
        }
        if let Some(w) = self.weights_bytes {
            writeln!(f, "weights on the device: {}", gib(w))?;
        }
        if let Some(e) = self.epilogues {
            writeln!(
                f,
                "linear bias/GELU epilogues: {} fused into cuBLASLt GEMMs, {} as separate kernels",
                e.fused, e.unfused
            )?;
        }
        writeln!(f, "{:<28}  {:>10}  {:>10}  {:>9}  {:>12}", "phase", "median s", "TFLOP", "TFLOP/s", "peak memory")?;
        for p in &self.phases {
            writeln!(
                f,
                "{:<28}  {:>10.4}  {:>10.2}  {:>9.2}  {:>12}",
                p.name,
                p.median_s,
                p.flops / 1e12,
                p.tflops,
                p.peak_bytes.map(gib).unwrap_or_else(|| "-".into())
            )?;
        }
        Ok(())
    }
}

/// Parses `--config`: `wan-1.3b`, `wan-14b`, or a `config.json` path.
pub fn parse_config(s: &str) -> anyhow::Result<WanDitConfig> {
    match s {
        "wan-1.3b" | "1.3b" => Ok(WanDitConfig::wan_1_3b()),
        "wan-14b" | "14b" => Ok(WanDitConfig::wan_14b()),
        path => WanDitConfig::from_file(path)
            .with_context(|| format!("--config {path:?} is neither wan-1.3b, wan-14b nor a readable config.json")),
    }
}

/// Parses `--size HxW` (`480x832`).
pub fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let (h, w) =
        s.split_once(['x', '×']).with_context(|| format!("--size {s:?}: expected HEIGHTxWIDTH, e.g. 480x832"))?;
    Ok((h.trim().parse().context("--size height")?, w.trim().parse().context("--size width")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_model_on_the_cpu() {
        let config = WanDitConfig {
            num_attention_heads: 2,
            attention_head_dim: 12,
            ffn_dim: 32,
            num_layers: 2,
            in_channels: 4,
            out_channels: Some(4),
            text_dim: 16,
            freq_dim: 8,
            ..Default::default()
        };
        let o = DitBenchOptions {
            config,
            config_name: "tiny".into(),
            device: Device::Cpu,
            dtype: DType::F32,
            frames: 5,
            height: 32,
            width: 48,
            text_len: 7,
            repeats: 2,
            recompute: true,
            skip_train: false,
            lora_rank: None,
        };
        let mut lines = Vec::new();
        let r = bench_dit(&o, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(r.latent, [4, 2, 4, 6]);
        assert_eq!(r.tokens, 2 * 2 * 3);
        assert_eq!(r.phases.len(), 3);
        for p in &r.phases {
            assert_eq!(p.runs_s.len(), 2);
            assert!(p.median_s > 0.0 && p.tflops > 0.0 && p.peak_bytes.is_none(), "{p:?}");
        }
        assert_eq!(r.phases[1].flops, 4.0 * r.phases[0].flops);
        assert!(lines.iter().any(|l| l.contains("warm-up")));
        let text = r.to_string();
        assert!(text.contains("forward+backward") && text.contains("12 tokens"), "{text}");

        // LoRA: the same step without the frozen linears' dW (one GEMM of each linear fewer).
        let lr = bench_dit(&DitBenchOptions { lora_rank: Some(4), ..o.clone() }, &mut |_| {}).unwrap();
        let (fwd, attn) = (lr.phases[0].flops, o.config.attention_flops(12, 7));
        assert_eq!(lr.phases[1].name, "LoRA r4 forward+backward");
        assert!((lr.phases[1].flops - (3.0 * fwd + attn)).abs() < 1e-6 * fwd, "{:?}", lr.phases[1]);
        assert!(lr.to_string().contains("LoRA rank 4"), "{lr}");

        assert!(bench_dit(&DitBenchOptions { frames: 4, ..o.clone() }, &mut |_| {}).is_err());
        assert!(bench_dit(&DitBenchOptions { height: 20, ..o }, &mut |_| {}).is_err());
        assert_eq!(parse_size("480x832").unwrap(), (480, 832));
        assert!(parse_size("480").is_err());
        assert_eq!(parse_config("wan-1.3b").unwrap().num_layers, 30);
        assert!(parse_config("/nonexistent/config.json").is_err());
    }
}
