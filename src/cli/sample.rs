//! `medgen sample`: one prompt → one MP4 from a checkpoint folder (medgen's or a diffusers Wan2.1 pipeline).

use crate::cli::verify::DTypeArg;
use clap::{Args, ValueEnum};
use medgen_operators::api::device::parse_device;
use medgen_operators::latent::codec::write_mp4;
use medgen_operators::sample::{SampleSettings, SamplerKind, generate};
use medgen_operators::train::checkpoint::load_dir;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
#[command(
    after_help = "The checkpoint folder is one a train.flow_matching node wrote (outputs/<node>/epoch-<n> in the \
                        run store): it holds the DiT, the latent codec and medgen.json, which names the text encoder \
                        (MiniLM from scripts/fetch-models.sh for the embedded default). A diffusers Wan2.1 \
                        text-to-video pipeline folder (model_index.json with transformer/, vae/, text_encoder/, \
                        tokenizer/, e.g. Wan2.1-T2V-1.3B-Diffusers) works too; it samples at 832×480, 81 frames, \
                        16 fps unless --width, --height and --frames say otherwise.\n\n\
                        Examples:\n  medgen sample --checkpoint runs/demo/outputs/train/epoch-0 \\\n      \
                        \"An echocardiogram showing the left ventricle\" --out echo.mp4\n  \
                        medgen sample --checkpoint CKPT \"...\" --sampler euler --steps 20 --guidance 1 --seed 7"
)]
pub struct SampleArgs {
    /// The prompt.
    pub prompt: String,
    /// Checkpoint folder (train.flow_matching's outputs/<node>/epoch-<n>), or a diffusers Wan2.1 pipeline
    /// folder (model_index.json).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write the MP4 (atomically).
    #[arg(long, default_value = "sample.mp4")]
    pub out: PathBuf,
    /// Sampler.
    #[arg(long, value_enum, default_value_t = SamplerArg::Unipc)]
    pub sampler: SamplerArg,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 disables the unconditional pass).
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    /// Timestep shift (Wan: 3.0 at 480p, 5.0 at 720p).
    #[arg(long, default_value_t = 3.0)]
    pub shift: f64,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Negative prompt.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Frames (1 + 4k); default the checkpoint's.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Width; default the checkpoint's.
    #[arg(long)]
    pub width: Option<u32>,
    /// Height; default the checkpoint's.
    #[arg(long)]
    pub height: Option<u32>,
    /// Where the DiT (and a Wan VAE) run: cpu, cuda, cuda:N or auto. A CUDA request without a usable
    /// driver or device warns and runs on the CPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// DiT precision: f32, or bf16 (diffusers' Wan pipelines' choice: half the memory, tensor cores on a
    /// GPU; fp32 accumulation and residual stream).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub precision: DTypeArg,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SamplerArg {
    Unipc,
    Euler,
}

pub fn sample(a: &SampleArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let (device, warning) = parse_device(&a.device).map_err(|e| anyhow::anyhow!("--device: {e}"))?.resolve();
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let model = load_dir(&a.checkpoint, a.precision.dtype())
        .and_then(|m| m.to_device(device))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = SampleSettings {
        sampler: match a.sampler {
            SamplerArg::Unipc => SamplerKind::Unipc,
            SamplerArg::Euler => SamplerKind::Euler,
        },
        steps: a.steps,
        guidance: a.guidance,
        shift: a.shift,
        seed: a.seed,
        negative_prompt: a.negative.clone(),
        frames: a.frames,
        width: a.width,
        height: a.height,
    };
    let bar = indicatif::ProgressBar::new(a.steps as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("sampling {bar:30} {pos}/{len} steps {elapsed}/{eta}") {
        bar.set_style(style);
    }
    let video = generate(&model, &a.prompt, &settings, &mut |i, _| {
        bar.set_position(i as u64);
        true
    })
    .map_err(|e| anyhow::anyhow!("sampling failed: {e}"))?;
    bar.finish_and_clear();
    let dir = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".medgen-sample-")
        .suffix(".mp4")
        .tempfile_in(dir)
        .map_err(|e| anyhow::anyhow!("cannot write in {}: {e}", dir.display()))?;
    let summary = write_mp4(&video, model.meta.video.fps, tmp.path(), None)
        .map_err(|e| anyhow::anyhow!("encoding {}: {e}", a.out.display()))?;
    tmp.as_file().sync_all()?;
    tmp.persist(&a.out).map_err(|e| anyhow::anyhow!("writing {}: {}", a.out.display(), e.error))?;
    eprintln!(
        "wrote {} ({}×{}, {} frames at {} fps) from epoch {} step {} in {:.1}s",
        a.out.display(),
        summary.width,
        summary.height,
        summary.frames,
        model.meta.video.fps,
        model.meta.epoch,
        model.meta.step,
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}
