//! [`WanVaeConfig`]: the diffusers `AutoencoderKLWan` constructor arguments (same names, same
//! defaults), their validation and the shapes they imply.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::blocks::Loader;
use super::keys::WanVaeLayout;
use crate::error::{Error, Result};

const MODEL: &str = "wan_vae";

/// Wan2.1 `latents_mean` (WAN_SPEC §3.5).
pub const WAN21_LATENTS_MEAN: [f64; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];

/// Wan2.1 `latents_std` (WAN_SPEC §3.5) — standard deviations, not their inverses.
pub const WAN21_LATENTS_STD: [f64; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];

/// Frames the encoder takes per step after the first (the reference's `_encode` loop).
pub const CHUNK_FRAMES: usize = 4;

/// The frames of a `frames`-frame video the reference encodes: the first, then whole chunks of
/// [`CHUNK_FRAMES`] (a remainder is dropped; at least 1).
pub(crate) fn whole_chunk_frames(frames: usize) -> usize {
    1 + frames.saturating_sub(1) / CHUNK_FRAMES * CHUNK_FRAMES
}

/// Configuration of the Wan2.1 VAE, spelled like diffusers' `AutoencoderKLWan` kwargs (and its
/// `config.json`); absent fields take diffusers' defaults, which are the Wan2.1 values. Unknown
/// fields (`_class_name`, `_diffusers_version`, …) are ignored.
///
/// Only the Wan2.1 architecture is implemented: `attn_scales` must be empty, `is_residual`
/// false (the Wan2.2 VAE) and `patch_size` absent or 1. `dropout` is accepted and ignored
/// (inference only). `scale_factor_temporal` / `scale_factor_spatial` are informational (the
/// pipeline's numbers); the network's actual factors are [`temporal_factor`](Self::temporal_factor)
/// and [`spatial_factor`](Self::spatial_factor), derived from `dim_mult` and `temperal_downsample`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WanVaeConfig {
    /// Channels of the first encoder level (96).
    pub base_dim: usize,
    /// Channels of the last decoder level; `None` means `base_dim`.
    pub decoder_base_dim: Option<usize>,
    /// Latent channels (16); the encoder head produces `2·z_dim` (mean and log-variance).
    pub z_dim: usize,
    /// Channel multiplier per level (`[1, 2, 4, 4]`); one spatial ×2 down/up-sampling between
    /// consecutive levels.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (2); the decoder uses one more per level.
    pub num_res_blocks: usize,
    /// Levels with extra attention blocks; must be empty (Wan2.1).
    pub attn_scales: Vec<f64>,
    /// Per down-sampling step, whether it also halves time (`[false, true, true]`); the decoder
    /// uses the reverse. (The misspelling is diffusers'.)
    pub temperal_downsample: Vec<bool>,
    /// Dropout probability (ignored: the VAE only runs in inference).
    pub dropout: f64,
    /// Per-channel latent mean used by [`normalize`](Self::normalize).
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation used by [`normalize`](Self::normalize).
    pub latents_std: Vec<f64>,
    /// The Wan2.2 residual VAE variant; must be false.
    pub is_residual: bool,
    /// Video channels in (3).
    pub in_channels: usize,
    /// Video channels out (3).
    pub out_channels: usize,
    /// Wan2.2 pixel patching; must be absent or 1.
    pub patch_size: Option<usize>,
    /// The pipeline's temporal compression (informational).
    pub scale_factor_temporal: Option<usize>,
    /// The pipeline's spatial compression (informational).
    pub scale_factor_spatial: Option<usize>,
}

impl Default for WanVaeConfig {
    fn default() -> Self {
        WanVaeConfig {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: Vec::new(),
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: WAN21_LATENTS_MEAN.to_vec(),
            latents_std: WAN21_LATENTS_STD.to_vec(),
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Config { model: MODEL, msg: msg.into() }
}

impl WanVaeConfig {
    /// The Wan2.1 VAE (`Wan2.1_VAE.pth` / `Wan-AI/Wan2.1-T2V-*-Diffusers/vae`).
    pub fn wan_2_1() -> Self {
        WanVaeConfig::default()
    }

    /// Parses and validates a JSON config (a diffusers `vae/config.json` or the kwargs of a
    /// fixture).
    pub fn from_json(json: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(format!("config JSON: {e}")))?;
        Self::from_value(value)
    }

    /// [`from_json`](Self::from_json) for an already parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        if !value.is_object() {
            return Err(bad(format!("config JSON must be an object of AutoencoderKLWan kwargs, not {value}")));
        }
        let cfg: WanVaeConfig = match serde_json::from_value(value.clone()) {
            Ok(c) => c,
            Err(e) => {
                // name the offending field: parse the fields one at a time
                let field = value.as_object().and_then(|o| {
                    o.iter().find_map(|(k, v)| {
                        let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
                        serde_json::from_value::<WanVaeConfig>(one).err().map(|e| format!("field `{k}`: {e}"))
                    })
                });
                return Err(bad(format!("config JSON: {}", field.unwrap_or_else(|| e.to_string()))));
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a JSON config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::io::read_text(path)?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config { model, msg } => Error::Config { model, msg: format!("{}: {msg}", path.display()) },
            e => e,
        })
    }

    /// Checks that the config describes a Wan2.1-style VAE this crate can build; the error says
    /// which field to change.
    pub fn validate(&self) -> Result<()> {
        use crate::nets::{MAX_WIDTH, check_bounds};
        check_bounds(
            "wan_vae",
            &[
                ("base_dim", self.base_dim, MAX_WIDTH),
                ("decoder_base_dim", self.decoder_base_dim.unwrap_or(0), MAX_WIDTH),
                ("z_dim", self.z_dim, MAX_WIDTH),
                ("in_channels", self.in_channels, MAX_WIDTH),
                ("out_channels", self.out_channels, MAX_WIDTH),
                ("num_res_blocks", self.num_res_blocks, 64),
                ("dim_mult (levels)", self.dim_mult.len(), 16),
                ("dim_mult (largest multiplier)", self.dim_mult.iter().copied().max().unwrap_or(0), 1024),
            ],
        )?;
        if self.base_dim == 0 || self.z_dim == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return Err(bad(format!(
                "base_dim ({}), z_dim ({}), in_channels ({}) and out_channels ({}) must all be ≥ 1",
                self.base_dim, self.z_dim, self.in_channels, self.out_channels
            )));
        }
        if self.decoder_base_dim == Some(0) {
            return Err(bad("decoder_base_dim must be ≥ 1 (or null for base_dim)"));
        }
        if self.dim_mult.is_empty() || self.dim_mult.contains(&0) {
            return Err(bad(format!("dim_mult {:?} must be a non-empty list of multipliers ≥ 1", self.dim_mult)));
        }
        if self.num_res_blocks == 0 {
            return Err(bad("num_res_blocks must be ≥ 1 (Wan2.1 uses 2)"));
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(bad(format!(
                "temperal_downsample has {} entries but dim_mult {:?} has {} levels: give one entry per down-sampling \
                 step ({} entries, Wan2.1: [false, true, true])",
                self.temperal_downsample.len(),
                self.dim_mult,
                self.dim_mult.len(),
                self.dim_mult.len() - 1
            )));
        }
        if self.temporal_factor() > CHUNK_FRAMES {
            return Err(bad(format!(
                "temperal_downsample {:?} halves time {} times: the encoder takes {CHUNK_FRAMES} frames at a time \
                 (as the reference does), so at most 2 temporal down-samplings (Wan2.1: [false, true, true])",
                self.temperal_downsample,
                self.temperal_downsample.iter().filter(|&&t| t).count()
            )));
        }
        if !self.attn_scales.is_empty() {
            return Err(bad(format!(
                "attn_scales {:?} is not supported: only the Wan2.1 layout (attn_scales = [], attention in the \
                 middle blocks only) is implemented",
                self.attn_scales
            )));
        }
        if self.is_residual {
            return Err(bad("is_residual = true is the Wan2.2 VAE, which is not implemented (use the Wan2.1 VAE)"));
        }
        if self.patch_size.is_some_and(|p| p != 1) {
            return Err(bad(format!(
                "patch_size {:?} (Wan2.2 pixel patching) is not implemented: use null",
                self.patch_size
            )));
        }
        for (i, d) in self.decoder_dims().iter().enumerate().skip(1) {
            if *d < 2 {
                return Err(bad(format!(
                    "decoder level {i} has {d} channel(s); the up-samplers halve the channels, so every decoder \
                     level needs ≥ 2 (raise decoder_base_dim / base_dim)"
                )));
            }
        }
        if self.latents_mean.len() != self.latents_std.len() {
            return Err(bad(format!(
                "latents_mean has {} values but latents_std has {}",
                self.latents_mean.len(),
                self.latents_std.len()
            )));
        }
        if let Some(s) = self.latents_std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(bad(format!("latents_std holds {s}; every entry must be a finite standard deviation > 0")));
        }
        if let Some(m) = self.latents_mean.iter().find(|m| !m.is_finite()) {
            return Err(bad(format!("latents_mean holds {m}; every entry must be finite")));
        }
        Ok(())
    }

    /// Encoder channels per level: `base_dim·[1, dim_mult…]`.
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1).chain(self.dim_mult.iter().copied()).map(|m| m * self.base_dim).collect()
    }

    /// Decoder channels per level: `decoder_base_dim·[dim_mult[-1], reversed dim_mult…]`.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let base = self.decoder_base_dim.unwrap_or(self.base_dim);
        let last = self.dim_mult.last().copied().unwrap_or(1);
        std::iter::once(last).chain(self.dim_mult.iter().rev().copied()).map(|m| m * base).collect()
    }

    /// The decoder's per-level temporal up-sampling flags (`temperal_downsample` reversed).
    pub fn temporal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample.iter().rev().copied().collect()
    }

    /// Frames per latent frame after the first: `2^(number of temporal down-samplings)` (4).
    pub fn temporal_factor(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|&&t| t).count()
    }

    /// Pixels per latent pixel along H and W: `2^(len(dim_mult) − 1)` (8).
    pub fn spatial_factor(&self) -> usize {
        1 << self.dim_mult.len().saturating_sub(1)
    }

    /// Latent frames of a `frames`-frame clip (`1 + (T − 1)/tf`, 4 frames per latent frame for
    /// Wan2.1), or `None` unless `T = 1 + 4k`: the encoder takes the first frame, then
    /// [`CHUNK_FRAMES`] at a time whatever the temporal factor, as the reference does (it drops a
    /// remainder; this crate refuses it).
    pub fn latent_frames(&self, frames: usize) -> Option<usize> {
        let tf = self.temporal_factor();
        (frames >= 1 && (frames - 1).is_multiple_of(CHUNK_FRAMES)).then(|| 1 + (frames - 1) / tf)
    }

    /// Every parameter as (name in `layout`, shape), in diffusers' state-dict order (the config
    /// is validated first).
    pub fn param_shapes(&self, layout: WanVaeLayout) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let mut ld = Loader::shapes_only(layout);
        super::Networks::build(self, &mut ld)?;
        Ok(ld.into_recorded())
    }

    /// Total number of parameters (126,892,531 for Wan2.1).
    pub fn param_count(&self) -> Result<usize> {
        Ok(self.param_shapes(WanVaeLayout::Diffusers)?.iter().map(|(_, s)| s.iter().product::<usize>()).sum())
    }

    fn check_stats(&self, op: &str) -> Result<()> {
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(bad(format!(
                "{op}: latents_mean / latents_std have {} / {} values but z_dim is {}: set one value per latent \
                 channel in the config",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            )));
        }
        Ok(())
    }

    /// Latent normalisation for the DiT: `(μ − mean_c)/std_c` per channel of `mu [B, z, …]`.
    pub fn normalize(&self, mu: &crate::Tensor) -> Result<crate::Tensor> {
        self.check_stats("normalize")?;
        channel_affine(mu, self.z_dim, "wan_vae.normalize", |c, v| (v - self.latents_mean[c]) / self.latents_std[c])
    }

    /// Inverse of [`normalize`](Self::normalize): `z·std_c + mean_c` per channel.
    pub fn denormalize(&self, z: &crate::Tensor) -> Result<crate::Tensor> {
        self.check_stats("denormalize")?;
        channel_affine(z, self.z_dim, "wan_vae.denormalize", |c, v| v * self.latents_std[c] + self.latents_mean[c])
    }
}

/// Applies `f(channel, value)` to every element of `x [B, C, …]` (computed in f64, stored in
/// `x`'s dtype).
fn channel_affine(
    x: &crate::Tensor,
    channels: usize,
    op: &'static str,
    f: impl Fn(usize, f64) -> f64,
) -> Result<crate::Tensor> {
    if x.rank() < 2 || x.shape()[1] != channels {
        return Err(Error::shape(op, format!("latents {:?}: expected [B, {channels}, T, H, W]", x.shape())));
    }
    let inner: usize = x.shape()[2..].iter().product();
    let mut v = x.to_vec_f64()?;
    if inner > 0 {
        for (i, row) in v.chunks_mut(inner).enumerate() {
            let c = i % channels;
            for e in row {
                *e = f(c, *e);
            }
        }
    }
    crate::Tensor::from_f64_slice(&v, x.shape(), x.dtype())?.to_device(x.device())
}
