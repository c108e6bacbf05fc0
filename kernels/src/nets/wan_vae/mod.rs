//! The Wan2.1 video VAE (diffusers `AutoencoderKLWan`, original `WanVAE_`; WAN_SPEC §3): causal
//! 3-D convolutional encoder and decoder, 4× temporal and 8× spatial compression, 16 latent
//! channels, forward only (the VAE is frozen).
//!
//! # Causal chunked inference
//!
//! The reference runs the encoder on frame 0 and then on chunks of 4 frames, and the decoder on
//! one latent frame at a time, with a feature cache per causal convolution; its 3-D resamplers
//! treat the very first frame specially. This port implements exactly that scheme as streams
//! ([`EncodeStream`], [`DecodeStream`]) whose per-layer state (see `blocks.rs`) makes the
//! result independent of the chunking: [`WanVae::encode_mean`] and [`WanVae::decode`] use the
//! reference's chunks (1 latent frame per step), [`WanVae::encode_mean_chunked`] /
//! [`WanVae::decode_chunked`] take a chunk size (a large one is the "full-sequence" formulation
//! of WAN_SPEC §3.4). Memory is bounded by one chunk plus two cached frames per causal
//! convolution, whatever the clip length; for clips too long to hold in memory, feed frames to
//! an [`EncodeStream`] as they are decoded from the file.
//!
//! # Conventions
//!
//! Video `[B, 3, T, H, W]` RGB in `[-1, 1]`, `T = 1 + 4k`, `H`, `W` multiples of 8; latents
//! `[B, 16, 1 + (T−1)/4, H/8, W/8]`. [`WanVae::encode_mean`] returns the posterior mean μ before
//! normalisation; the DiT consumes [`WanVae::normalize`]`(μ) = (μ − mean)/std`, and
//! [`WanVae::decode`] takes raw latents ([`WanVae::denormalize`] first) and returns the video
//! clamped to `[-1, 1]`.
//!
//! # Precision
//!
//! Activations are computed and returned in f32 (f64 when the input or the weights are f64),
//! whatever the weights' storage dtype; loading with `DType::BF16` only rounds the weights. The
//! reference runs the VAE in f32, and so should callers: on the tiny T = 13 fixture, bf16 weights
//! cost 3.9e-2 (relative) on the decoded video, bf16 weights and activations 5.0e-2.

mod blocks;
mod config;
mod keys;
mod net;

pub use config::{CHUNK_FRAMES, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVaeConfig};
pub use keys::WanVaeLayout;
pub(crate) use net::Networks;

use std::collections::BTreeSet;

use blocks::{Loader, Slot, frames};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorSource;
use crate::ops::activation::clamp;
use crate::ops::shape::cat;
use crate::tensor::{Device, Tensor};
use crate::verify::{Check, Fixture, Limit, VerifyOptions, compare};

/// The loaded Wan VAE.
pub struct WanVae {
    cfg: WanVaeConfig,
    layout: WanVaeLayout,
    dtype: DType,
    device: Device,
    nets: Networks,
}

impl std::fmt::Debug for WanVae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanVae")
            .field("cfg", &self.cfg)
            .field("layout", &self.layout)
            .field("dtype", &self.dtype)
            .finish()
    }
}

fn bad_input(op: &'static str, msg: String) -> Error {
    Error::ShapeMismatch { op, msg }
}

impl WanVae {
    /// Loads the weights from `src` (diffusers or original Wan2.1 key names, detected), checking
    /// every shape against `cfg` and converting to `dtype`. Tensors in `src` that the config does
    /// not use are an error too (they mean the config does not match the checkpoint).
    pub fn load(cfg: WanVaeConfig, src: &dyn TensorSource, dtype: DType) -> Result<WanVae> {
        Self::load_on(cfg, src, dtype, Device::Cpu)
    }

    /// [`load`](Self::load) placing the weights on `device`; videos and latents passed to the
    /// encoder and decoder must then live there too (results come back on it).
    pub fn load_on(cfg: WanVaeConfig, src: &dyn TensorSource, dtype: DType, device: Device) -> Result<WanVae> {
        cfg.validate()?;
        let layout = WanVaeLayout::detect(src)?;
        let mut ld = Loader::new(src, layout, dtype).on(device);
        let nets = Networks::build(&cfg, &mut ld)?;
        let used: BTreeSet<&str> = ld.recorded().iter().map(|(n, _)| n.as_str()).collect();
        let extra: Vec<String> = src.names().into_iter().filter(|n| !used.contains(n.as_str())).collect();
        if !extra.is_empty() {
            return Err(Error::Config {
                model: "wan_vae",
                msg: format!(
                    "the checkpoint ({} layout) has {} tensor(s) this config does not use, e.g. {:?}: does the \
                     config (dim_mult, num_res_blocks, …) match the checkpoint?",
                    layout.as_str(),
                    extra.len(),
                    &extra[..extra.len().min(3)]
                ),
            });
        }
        Ok(WanVae { cfg, layout, dtype, device, nets })
    }

    /// The config.
    pub fn config(&self) -> &WanVaeConfig {
        &self.cfg
    }

    /// The key layout the weights were loaded from.
    pub fn layout(&self) -> WanVaeLayout {
        self.layout
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// A stream encoding a video chunk by chunk (see [`EncodeStream::push`]).
    pub fn encode_stream(&self) -> EncodeStream<'_> {
        EncodeStream { vae: self, slots: vec![Slot::default(); self.nets.enc_slots], frames: 0, geometry: None }
    }

    /// A stream decoding latents chunk by chunk (see [`DecodeStream::push`]).
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream { vae: self, slots: vec![Slot::default(); self.nets.dec_slots], latents: 0, geometry: None }
    }

    /// Posterior mean μ `[B, z, 1 + (T−1)/4, H/8, W/8]` of `video [B, 3, T, H, W]` in `[-1, 1]`,
    /// before normalisation, computed with the reference's chunks (frame 0, then 4 frames at a
    /// time).
    pub fn encode_mean(&self, video: &Tensor) -> Result<Tensor> {
        self.encode_mean_chunked(video, 1)
    }

    /// [`encode_mean`](Self::encode_mean) producing `chunk` latent frames per step (frames
    /// `[0, 1 + 4(chunk−1))`, then `4·chunk` frames at a time). The result does not depend on
    /// `chunk` beyond rounding; larger chunks use more memory and fewer, larger GEMMs.
    pub fn encode_mean_chunked(&self, video: &Tensor, chunk: usize) -> Result<Tensor> {
        const OP: &str = "wan_vae.encode";
        if chunk == 0 {
            return Err(Error::arg(OP, "chunk must be ≥ 1 latent frame"));
        }
        let t = self.check_video(video, OP)?;
        let cf = config::CHUNK_FRAMES;
        let mut stream = self.encode_stream();
        let mut parts = Vec::new();
        let mut start = 0;
        while start < t {
            let n = if start == 0 { 1 + cf * (chunk - 1) } else { cf * chunk }.min(t - start);
            parts.push(stream.push(&video.narrow(2, start, n)?)?);
            start += n;
        }
        cat(&parts.iter().collect::<Vec<_>>(), 2)
    }

    /// Decodes raw (denormalised) latents `z [B, z, K, h, w]` to video `[B, 3, 1 + 4(K−1), 8h, 8w]`
    /// clamped to `[-1, 1]`, one latent frame per step as the reference does.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_chunked(z, 1)
    }

    /// [`decode`](Self::decode) with `chunk` latent frames per step (same result).
    pub fn decode_chunked(&self, z: &Tensor, chunk: usize) -> Result<Tensor> {
        const OP: &str = "wan_vae.decode";
        if chunk == 0 {
            return Err(Error::arg(OP, "chunk must be ≥ 1 latent frame"));
        }
        let k = self.check_latents(z, OP)?;
        let mut stream = self.decode_stream();
        let mut parts = Vec::new();
        let mut start = 0;
        while start < k {
            let n = chunk.min(k - start);
            parts.push(stream.push(&z.narrow(2, start, n)?)?);
            start += n;
        }
        cat(&parts.iter().collect::<Vec<_>>(), 2)
    }

    /// `(μ − latents_mean)/latents_std` per channel (the DiT's input latents).
    pub fn normalize(&self, mu: &Tensor) -> Result<Tensor> {
        self.cfg.normalize(mu)
    }

    /// `z·latents_std + latents_mean` per channel (before [`decode`](Self::decode)).
    pub fn denormalize(&self, z: &Tensor) -> Result<Tensor> {
        self.cfg.denormalize(z)
    }

    /// Checks a video `[B, C, T, H, W]`'s rank, channels and spatial size; returns T.
    fn check_geometry(&self, x: &Tensor, op: &'static str) -> Result<usize> {
        let (c, sf) = (self.cfg.in_channels, self.cfg.spatial_factor());
        let [b, ch, t, h, w] = x.shape().try_into().map_err(|_| Error::rank(op, "5 ([B, 3, T, H, W])", x.shape()))?;
        if ch != c {
            return Err(bad_input(
                op,
                format!("video {:?} has {ch} channels; expected {c} (RGB in [-1, 1])", x.shape()),
            ));
        }
        if b == 0 || h == 0 || w == 0 || !h.is_multiple_of(sf) || !w.is_multiple_of(sf) {
            return Err(bad_input(
                op,
                format!(
                    "video {:?}: batch must be ≥ 1 and H × W = {h} × {w} non-zero multiples of {sf}: resize or crop \
                     the frames (e.g. to {} × {})",
                    x.shape(),
                    (h / sf).max(1) * sf,
                    (w / sf).max(1) * sf
                ),
            ));
        }
        Ok(t)
    }

    /// Checks a whole video; returns T.
    fn check_video(&self, x: &Tensor, op: &'static str) -> Result<usize> {
        let t = self.check_geometry(x, op)?;
        let cf = config::CHUNK_FRAMES;
        if self.cfg.latent_frames(t).is_none() {
            let down = config::whole_chunk_frames(t);
            return Err(bad_input(
                op,
                format!(
                    "video has {t} frames; the VAE needs 1 + {cf}k frames: trim it to {down} or pad it to {} frames",
                    down + cf
                ),
            ));
        }
        Ok(t)
    }

    /// Checks raw latents `[B, z, K, h, w]`; returns K.
    fn check_latents(&self, z: &Tensor, op: &'static str) -> Result<usize> {
        let zd = self.cfg.z_dim;
        let [b, c, k, h, w] = z.shape().try_into().map_err(|_| Error::rank(op, "5 ([B, z, T, H, W])", z.shape()))?;
        if c != zd || b == 0 || k == 0 || h == 0 || w == 0 {
            return Err(bad_input(
                op,
                format!("latents {:?}: expected [B ≥ 1, {zd}, T ≥ 1, H ≥ 1, W ≥ 1] (z_dim = {zd} channels)", z.shape()),
            ));
        }
        Ok(k)
    }
}

/// Incremental encoder: push frames in order, get their latent frames (posterior means) back.
///
/// The first chunk must hold `1 + 4k` frames (k ≥ 0) and every later one `4k` frames (k ≥ 1);
/// batch size, channels and frame size must stay the same. Each push returns
/// `[B, z, latent frames of this chunk, H/8, W/8]` (1 + k, then k). Memory is bounded by one
/// chunk plus the cached frames. Input checks happen before any state changes (a refused chunk
/// can be corrected and pushed again); after any other error, discard the stream.
pub struct EncodeStream<'a> {
    vae: &'a WanVae,
    slots: Vec<Slot>,
    frames: usize,
    geometry: Option<[usize; 3]>,
}

impl std::fmt::Debug for EncodeStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeStream").field("frames", &self.frames).field("geometry", &self.geometry).finish()
    }
}

impl EncodeStream<'_> {
    /// Encodes the next chunk of frames `[B, 3, n, H, W]`.
    pub fn push(&mut self, chunk: &Tensor) -> Result<Tensor> {
        const OP: &str = "wan_vae.encode_stream";
        let n = self.vae.check_geometry(chunk, OP)?;
        let tf = self.vae.cfg.temporal_factor();
        let s = chunk.shape();
        let g = [s[0], s[3], s[4]];
        if let Some(g0) = self.geometry
            && g0 != g
        {
            return Err(bad_input(
                OP,
                format!("chunk {s:?} changes batch/H/W from {g0:?} (the earlier chunks) to {g:?}"),
            ));
        }
        let ok = if self.frames == 0 { n % tf == 1 % tf && n >= 1 } else { n >= tf && n.is_multiple_of(tf) };
        if !ok {
            let want = if self.frames == 0 {
                format!("1 + {tf}k frames (1, {}, …)", 1 + tf)
            } else {
                format!("a non-zero multiple of {tf} frames")
            };
            return Err(bad_input(
                OP,
                format!("chunk has {n} frames after {} earlier frames; it must hold {want}", self.frames),
            ));
        }
        let x = chunk.to_dtype(chunk.dtype().compute())?;
        let mu = self.vae.nets.encode_chunk(&x, &mut self.slots)?;
        self.frames += n;
        self.geometry = Some(g);
        Ok(mu)
    }

    /// Frames encoded so far.
    pub fn frames_seen(&self) -> usize {
        self.frames
    }

    /// Elements held in the per-layer caches (bounded: it does not grow with the frames seen).
    pub fn cache_elements(&self) -> usize {
        self.slots.iter().map(Slot::elements).sum()
    }
}

/// Incremental decoder: push raw latent frames in order, get video frames back (clamped to
/// `[-1, 1]`): the first push of `n` latent frames gives `1 + 4(n−1)` frames, later ones `4n`.
/// Memory is bounded by one chunk plus the cached frames. Input checks happen before any state
/// changes; after any other error, discard the stream.
pub struct DecodeStream<'a> {
    vae: &'a WanVae,
    slots: Vec<Slot>,
    latents: usize,
    geometry: Option<[usize; 3]>,
}

impl std::fmt::Debug for DecodeStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeStream").field("latents", &self.latents).field("geometry", &self.geometry).finish()
    }
}

impl DecodeStream<'_> {
    /// Decodes the next latent frames `[B, z, n ≥ 1, h, w]` (raw, i.e. denormalised).
    pub fn push(&mut self, z: &Tensor) -> Result<Tensor> {
        const OP: &str = "wan_vae.decode_stream";
        let n = self.vae.check_latents(z, OP)?;
        let s = z.shape();
        let g = [s[0], s[3], s[4]];
        if let Some(g0) = self.geometry
            && g0 != g
        {
            return Err(bad_input(OP, format!("latents {s:?} change batch/h/w from {g0:?} to {g:?}")));
        }
        let x = self.vae.nets.decode_chunk(&z.to_dtype(z.dtype().compute())?, &mut self.slots)?;
        debug_assert_eq!(
            frames(&x),
            if self.latents == 0 {
                1 + (n - 1) * self.vae.cfg.temporal_factor()
            } else {
                n * self.vae.cfg.temporal_factor()
            }
        );
        self.latents += n;
        self.geometry = Some(g);
        clamp(&x, -1.0, 1.0)
    }

    /// Latent frames decoded so far.
    pub fn latents_seen(&self) -> usize {
        self.latents
    }

    /// Elements held in the per-layer caches (bounded: it does not grow with the frames seen).
    pub fn cache_elements(&self) -> usize {
        self.slots.iter().map(Slot::elements).sum()
    }
}

/// Runs a `wan_vae` fixture: loads `w.*` (either layout), encodes `in.video` and compares with
/// `out.latent_mean`, then decodes `out.latent_mean` (the reference latent, so that errors do not
/// compound) and compares with `out.decoded`; both on an absolute limit (default 1e-4). With
/// `opts.dtype = BF16` the weights are rounded to bf16 and the activations stay f32 (`verify::run`
/// passes F32 for the VAE: the Wan pipelines run it in f32).
pub fn verify(fx: &Fixture, opts: &VerifyOptions) -> Result<Vec<Check>> {
    let cfg = WanVaeConfig::from_value(fx.config.clone()).map_err(|e| fx.error(e.to_string()))?;
    let src = fx.weights();
    let vae = WanVae::load_on(cfg, &src, opts.dtype, fx.device)?;
    if vae.layout().as_str() != fx.layout {
        return Err(fx.error(format!(
            "the layout metadata says {:?} but the w.* keys are in the {} layout",
            fx.layout,
            vae.layout().as_str()
        )));
    }
    let limit = opts.limit(Limit::Abs(fx.abs_limit(1e-4)));
    let mut video = fx.input("video")?;
    // The reference encodes the first frame, then 4 at a time, and drops a remainder: so does
    // its fixture (the library refuses such a video instead).
    let t = video.shape().get(2).copied().unwrap_or(0);
    let kept = config::whole_chunk_frames(t);
    if kept < t {
        video = video.narrow(2, 0, kept)?;
    }
    let mu = vae.encode_mean(&video)?;
    let want_mu = fx.output("latent_mean")?;
    let enc = compare("out.latent_mean", &mu, &want_mu, limit)?;
    let decoded = vae.decode(&fx.on_device(want_mu.clone())?)?;
    let dec = compare("out.decoded", &decoded, &fx.output("decoded")?, limit)?;
    Ok(vec![enc, dec])
}
