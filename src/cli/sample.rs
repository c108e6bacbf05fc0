//! `medgen sample`: one prompt → one MP4 from a checkpoint folder (medgen's or a diffusers Wan2.1 pipeline).

use crate::cli::verify::DTypeArg;
use clap::{Args, ValueEnum};
use medgen_operators::api::device::parse_device;
use medgen_operators::latent::codec::write_mp4;
use medgen_operators::sample::{
    LoraExpert, LoraUse, SampleSettings, SamplerKind, SchedulerSource, generate, resolve_scheduler, sampler_name,
};
use medgen_operators::train::checkpoint::load_dir;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
#[command(
    after_help = "The checkpoint folder is one a train.flow_matching node wrote (outputs/<node>/epoch-<n> in the \
                        run store): it holds the DiT, the latent codec and medgen.json, which names the text encoder \
                        (MiniLM from scripts/fetch-models.sh for the embedded default). A diffusers Wan2.1 \
                        text-to-video pipeline folder (model_index.json with transformer/, vae/, text_encoder/, \
                        tokenizer/, e.g. Wan2.1-T2V-1.3B-Diffusers) works too; it samples at 832×480, 81 frames, \
                        16 fps unless --width, --height and --frames say otherwise, and with the sampler its \
                        scheduler/scheduler_config.json names (class, shift, options) unless --sampler or --shift \
                        say otherwise.\n\n\
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
    /// Sampler [default: the pipeline folder's scheduler, else unipc].
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 disables the unconditional pass).
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    /// Guidance on the low-noise expert's steps of a Wan2.2 two-expert pipeline folder
    /// (diffusers' guidance_scale_2) [default: --guidance].
    #[arg(long)]
    pub guidance_2: Option<f64>,
    /// Timestep shift (Wan: 3.0 at 480p, 5.0 at 720p) [default: the pipeline folder's scheduler's, else 3.0].
    #[arg(long)]
    pub shift: Option<f64>,
    /// A LoRA adapter file merged into the DiT before sampling, optionally with a weight: `FILE` or
    /// `FILE@0.8`. Repeat for several (merged in order). PEFT/diffusers (train.flow_matching's
    /// pytorch_lora_weights.safetensors), original-Wan or musubi-tuner layout.
    #[arg(long, value_name = "FILE[@SCALE]")]
    pub lora: Vec<String>,
    /// A LoRA file for the low-noise expert (transformer_2) of a Wan2.2 two-expert pipeline folder,
    /// as --lora (diffusers' load_into_transformer_2=True). Wan2.2 LoRAs come in pairs: give the
    /// high_noise_model file to --lora and the low_noise_model file here.
    #[arg(long = "lora-2", value_name = "FILE[@SCALE]")]
    pub lora_2: Vec<String>,
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
    let loras = (a.lora.iter().map(|l| parse_lora(l, LoraExpert::HighNoise)))
        .chain(a.lora_2.iter().map(|l| parse_lora(l, LoraExpert::LowNoise)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let model = load_dir(&a.checkpoint, a.precision.dtype())
        .and_then(|m| m.with_loras(&loras))
        .and_then(|m| m.to_device(device))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = SampleSettings {
        sampler: a.sampler.map(|s| match s {
            SamplerArg::Unipc => SamplerKind::Unipc,
            SamplerArg::Euler => SamplerKind::Euler,
        }),
        steps: a.steps,
        guidance: a.guidance,
        guidance_2: a.guidance_2,
        shift: a.shift,
        seed: a.seed,
        negative_prompt: a.negative.clone(),
        frames: a.frames,
        width: a.width,
        height: a.height,
    };
    let (spec, source) = resolve_scheduler(&model, &settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "sampler: {} at shift {}{}",
        sampler_name(&spec),
        spec.shift,
        if source == SchedulerSource::Checkpoint { " (the checkpoint's scheduler)" } else { "" }
    );
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

/// `FILE` or `FILE@SCALE` (a suffix that is not a number belongs to the file name).
fn parse_lora(arg: &str, expert: LoraExpert) -> anyhow::Result<LoraUse> {
    let (path, scale) = match arg.rsplit_once('@') {
        Some((p, s)) if !p.is_empty() && s.parse::<f64>().is_ok() => (p, s.parse::<f64>().unwrap_or(1.0)),
        _ => (arg, 1.0),
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        let flag = if expert == LoraExpert::LowNoise { "--lora-2" } else { "--lora" };
        if let Some((file, scale)) = arg.rsplit_once('@')
            && Path::new(file).is_file()
        {
            anyhow::bail!("{flag} {arg}: the scale after `@` must be a number (e.g. {file}@0.8), got {scale:?}");
        }
        anyhow::bail!("{flag} {arg}: {} is not a file", path.display());
    }
    Ok(LoraUse { path, scale, expert })
}

#[cfg(test)]
mod tests {
    use super::{LoraExpert, LoraUse, parse_lora};

    #[test]
    fn lora_arguments_take_an_optional_weight() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a@b.safetensors");
        std::fs::write(&f, b"x").unwrap();
        let s = f.to_str().unwrap();
        let high = LoraExpert::HighNoise;
        assert_eq!(parse_lora(s, high).unwrap(), LoraUse::new(&f, 1.0));
        assert_eq!(parse_lora(&format!("{s}@0.5"), high).unwrap(), LoraUse::new(&f, 0.5));
        assert!(parse_lora(&format!("{s}x"), high).unwrap_err().to_string().contains("not a file"));
        let low = parse_lora(&format!("{s}@2"), LoraExpert::LowNoise).unwrap();
        assert_eq!(low, LoraUse { path: f.clone(), scale: 2.0, expert: LoraExpert::LowNoise });
        assert!(parse_lora("nope", LoraExpert::LowNoise).unwrap_err().to_string().starts_with("--lora-2 nope"));
        let e = parse_lora(&format!("{s}@abc"), high).unwrap_err().to_string();
        assert!(e.contains("must be a number") && e.contains("\"abc\""), "{e}");
    }
}
