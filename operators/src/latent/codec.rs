//! Video ↔ latent codecs as the latent operators use them, and the pixel plumbing around them.
//!
//! * [`VideoCodec::PatchPca`]: the embedded codec (`medgen_kernels::codec::patch_pca`), fitted on
//!   the dataset by `latent.encode_video` and stored with every checkpoint.
//! * [`VideoCodec::WanVae`]: the Wan2.1 VAE from a folder (diffusers `vae/`: `config.json` +
//!   safetensors; without a config the Wan2.1 one), latents normalised as the DiT expects them.
//!
//! Videos are `[3, T, H, W]` f32 in `[-1, 1]`; latents `[16, 1 + (T−1)/4, H/8, W/8]`.

use crate::api::{Clip, ItemCtx, ItemError, Services};
use crate::video::decode::Decoder;
use crate::video::{DecodeSpec, Frame, PixelFormat, Sampling, Size};
use medgen_kernels::codec::patch_pca::PatchPca;
use medgen_kernels::io::safetensors::Checkpoint as StCheckpoint;
use medgen_kernels::nets::wan_vae::{WanVae, WanVaeConfig};
use medgen_kernels::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// A loaded codec.
#[derive(Clone)]
pub enum VideoCodec {
    PatchPca(Arc<PatchPca>),
    WanVae(Arc<WanVae>, String),
}

fn kerr(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl VideoCodec {
    /// Loads a fitted patch-PCA codec file (cached per process and path).
    pub fn patch_pca(path: &Path) -> Result<VideoCodec, String> {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<PatchPca>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Ok(VideoCodec::PatchPca(c.clone()));
        }
        let c = Arc::new(
            PatchPca::load(path)
                .map_err(|e| format!("patch-PCA codec {}: {e}; re-fit it or fix the path", path.display()))?,
        );
        cache.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf(), c.clone());
        Ok(VideoCodec::PatchPca(c))
    }

    /// Loads the Wan VAE from a folder or safetensors file (cached per process and path).
    pub fn wan_vae(path: &Path) -> Result<VideoCodec, String> {
        Self::wan_vae_on(path, Device::Cpu)
    }

    /// [`wan_vae`](Self::wan_vae) with the weights on `device` (cached per path and device);
    /// [`encode`](Self::encode) and [`decode`](Self::decode) move their input there.
    pub fn wan_vae_on(path: &Path, device: Device) -> Result<VideoCodec, String> {
        type Cache = Mutex<HashMap<(PathBuf, Device), Arc<WanVae>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let id = format!("wan_vae-{}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let key = (path.to_path_buf(), device);
        if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(VideoCodec::WanVae(c.clone(), id));
        }
        let cfg_path = if path.is_dir() { path.join("config.json") } else { path.with_file_name("config.json") };
        let assumed = !cfg_path.is_file();
        let cfg = if assumed {
            tracing::warn!(
                "no {} beside the Wan VAE weights: assuming the Wan2.1 VAE configuration",
                cfg_path.display()
            );
            WanVaeConfig::wan_2_1()
        } else {
            WanVaeConfig::from_file(&cfg_path).map_err(|e| format!("Wan VAE config {}: {e}", cfg_path.display()))?
        };
        let src = StCheckpoint::open(path).map_err(|e| format!("Wan VAE weights {}: {e}", path.display()))?;
        let vae = Arc::new(WanVae::load_on(cfg, &src, DType::F32, device).map_err(|e| {
            let hint = match assumed {
                true => format!(
                    " (there is no {}, so the Wan2.1 VAE configuration was assumed; put the diffusers vae/config.json \
                     there)",
                    cfg_path.display()
                ),
                false => String::new(),
            };
            format!("loading the Wan VAE from {} onto {device}: {e}{hint}", path.display())
        })?);
        cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, vae.clone());
        Ok(VideoCodec::WanVae(vae, id))
    }

    /// The codec id recorded in `Latent.codec` and checkpoints.
    pub fn id(&self) -> String {
        match self {
            VideoCodec::PatchPca(c) => c.codec_id(),
            VideoCodec::WanVae(_, id) => id.clone(),
        }
    }

    /// Latent channels (the Wan VAE's `z_dim`, the patch-PCA codec's components): the DiT's
    /// `in_channels` must match.
    pub fn latent_channels(&self) -> usize {
        match self {
            VideoCodec::PatchPca(c) => c.geometry().channels,
            VideoCodec::WanVae(vae, _) => vae.config().z_dim,
        }
    }

    /// Video `[3, T, H, W]` → latent `[16, F, H/8, W/8]` (normalised for the DiT).
    pub fn encode(&self, video: &Tensor) -> Result<Tensor, String> {
        match self {
            VideoCodec::PatchPca(c) => c.encode(video).map_err(kerr),
            VideoCodec::WanVae(vae, _) => {
                let x = video.unsqueeze(0).and_then(|v| v.to_device(vae.device())).map_err(kerr)?;
                let mu = vae.encode_mean(&x).map_err(kerr)?;
                vae.normalize(&mu).and_then(|z| z.squeeze(0)?.to_cpu()).map_err(kerr)
            }
        }
    }

    /// Latent `[16, F, h, w]` → video `[3, 1 + 4(F−1), 8h, 8w]` in `[-1, 1]`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor, String> {
        match self {
            VideoCodec::PatchPca(c) => z.to_cpu().and_then(|z| c.decode(&z)).map_err(kerr),
            VideoCodec::WanVae(vae, _) => {
                let z = z.unsqueeze(0).and_then(|z| z.to_device(vae.device())).map_err(kerr)?;
                let raw = vae.denormalize(&z).map_err(kerr)?;
                vae.decode(&raw).and_then(|v| v.squeeze(0)?.to_cpu()).map_err(kerr)
            }
        }
    }
}

/// RGB8 frames (all the same size) → `[3, T, H, W]` f32 in `[-1, 1]`.
pub fn frames_to_video(frames: &[Frame]) -> Result<Tensor, String> {
    let first = frames.first().ok_or("no frames")?;
    let (w, h) = (first.width as usize, first.height as usize);
    let t = frames.len();
    let mut data = vec![0f32; 3 * t * h * w];
    for (ti, f) in frames.iter().enumerate() {
        if (f.width as usize, f.height as usize, f.format) != (w, h, PixelFormat::Rgb) {
            return Err(format!("frame {ti} is {}×{} {:?}, expected {w}×{h} RGB", f.width, f.height, f.format));
        }
        for (i, px) in f.data().chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[((c * t + ti) * h * w) + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_vec(data, &[3, t, h, w]).map_err(kerr)
}

/// `[3, T, H, W]` in `[-1, 1]` → packed RGB8 frames.
pub fn video_to_rgb(video: &Tensor) -> Result<(u32, u32, Vec<Vec<u8>>), String> {
    let s = video.shape();
    if s.len() != 4 || s[0] != 3 {
        return Err(format!("a video tensor must be [3, T, H, W], got {s:?}"));
    }
    let (t, h, w) = (s[1], s[2], s[3]);
    let v = video.to_vec_f32().map_err(kerr)?;
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(format!(
            "the decoded video holds {bad} (it would be written as a black video): a broken VAE or latent codec \
             checkpoint (NaN or infinite weights), or an overflow in its precision"
        ));
    }
    let frames = (0..t)
        .map(|ti| {
            let mut px = vec![0u8; h * w * 3];
            for i in 0..h * w {
                for c in 0..3 {
                    let x = v[(c * t + ti) * h * w + i];
                    px[i * 3 + c] = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                }
            }
            px
        })
        .collect();
    Ok((w as u32, h as u32, frames))
}

/// How clips are turned into model-sized frame stacks.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameSpec {
    pub width: u32,
    pub height: u32,
    /// Frames per clip, `1 + 4k`.
    pub frames: usize,
    /// Sampling rate; a clip shorter than `frames / fps` is sampled uniformly instead.
    pub fps: f64,
}

/// Decodes `spec.frames` frames of a clip at `spec.fps` (scaled to cover and centre-cropped),
/// from its redacted copy when it has one.
pub fn clip_video(c: &Clip, spec: &FrameSpec, services: &dyn Services, ictx: &ItemCtx) -> Result<Tensor, ItemError> {
    let (path, range) = crate::video::cut::pixel_source(c, services)?;
    let span = range.end_s.map(|e| e - range.start_s).unwrap_or(f64::INFINITY);
    let want = spec.frames as f64 / spec.fps;
    let sampling = if span + 1e-9 >= want {
        Sampling::Fps { fps: spec.fps }
    } else {
        Sampling::Uniform { count: spec.frames as u32 }
    };
    let range =
        if span + 1e-9 >= want { crate::video::TimeRange::new(range.start_s, range.start_s + want) } else { range };
    let dspec = DecodeSpec::all()
        .with_sampling(sampling)
        .with_size(Size::Fill { width: spec.width, height: spec.height })
        .with_range(range)
        .with_format(PixelFormat::Rgb)
        .with_deadline(ictx.deadline);
    let mut frames = Vec::with_capacity(spec.frames);
    for f in Decoder::open(&path, &dspec)? {
        frames.push(f?);
        crate::curate::frames::check_stop(ictx)?;
        if frames.len() == spec.frames {
            break;
        }
    }
    if frames.is_empty() {
        return Err(ItemError::invalid(format!("no frames decoded from {} for clip {}", path.display(), c.clip_id)));
    }
    // A clip that ends a frame early (rounding at its end) repeats its last frame.
    while frames.len() < spec.frames {
        let last = frames.last().ok_or_else(|| ItemError::invalid("no frames"))?;
        let copy = Frame::new(last.pts_s, None, last.width, last.height, last.format, last.data().to_vec());
        frames.push(copy);
    }
    frames_to_video(&frames).map_err(|e| ItemError::new(crate::api::ErrorClass::Internal, e))
}

/// Encodes a video tensor `[3, T, H, W]` in `[-1, 1]` as H.264 MP4 at `out` (CRF 18: samples are
/// small and worth looking at closely).
pub fn write_mp4(
    video: &Tensor,
    fps: f64,
    out: &Path,
    deadline: Option<std::time::Instant>,
) -> Result<crate::video::encode::EncodeSummary, crate::video::VideoError> {
    use crate::video::encode::{EncodeSpec, Encoder, fps_fraction};
    let (w, h, frames) = video_to_rgb(video).map_err(crate::video::VideoError::BadRequest)?;
    let spec = EncodeSpec { fps: fps_fraction(fps), crf: 18, keyint_s: 1.0, deadline, ..EncodeSpec::default() };
    let mut enc = Encoder::create(out, w, h, PixelFormat::Rgb, &spec)?;
    for px in &frames {
        enc.push_pixels(px)?;
    }
    enc.finish()
}

/// [`write_mp4`] into the run store; returns the blob key.
pub fn video_to_mp4(video: &Tensor, fps: f64, services: &dyn Services, ictx: &ItemCtx) -> Result<String, ItemError> {
    let (_dir, out) = crate::video::encode::temp_mp4(services)?;
    write_mp4(video, fps, &out, Some(ictx.deadline))?;
    services.blob_put_file(&out).map_err(|e| ItemError::transient(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames from a broken decoder are refused, not written as a black video.
    #[test]
    fn non_finite_frames_are_refused() {
        let mut v = vec![0.5f32; 3 * 2 * 4 * 4];
        let good = Tensor::from_vec(v.clone(), &[3, 2, 4, 4]).unwrap();
        let (w, h, frames) = video_to_rgb(&good).unwrap();
        assert_eq!((w, h, frames.len(), frames[0][0]), (4, 4, 2, 191));
        v[37] = f32::NAN;
        let e = video_to_rgb(&Tensor::from_vec(v, &[3, 2, 4, 4]).unwrap()).unwrap_err();
        assert!(e.contains("NaN") && e.contains("black video"), "{e}");
    }
}
