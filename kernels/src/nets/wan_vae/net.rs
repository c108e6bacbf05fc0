//! The encoder and decoder networks (WAN_SPEC §3.3), built from a [`WanVaeConfig`] through a
//! [`Loader`], and their per-chunk forward passes.

use super::blocks::{CausalConv, Head, Loader, Mid, ResBlock, Resample, ResampleMode, Slot};
use super::config::WanVaeConfig;
use super::keys::Prefix;
use crate::error::Result;
use crate::ops::conv::{Conv3dParams, conv3d};
use crate::tensor::Tensor;

/// One entry of the encoder's `down_blocks` / `downsamples` list.
enum DownLayer {
    Res(Box<ResBlock>),
    Resample(Box<Resample>),
}

/// `WanEncoder3d` (without `quant_conv`).
pub(crate) struct Encoder {
    conv_in: CausalConv,
    layers: Vec<DownLayer>,
    mid: Mid,
    head: Head,
}

impl Encoder {
    fn load(cfg: &WanVaeConfig, ld: &mut Loader) -> Result<Self> {
        let p = Prefix::root().same("encoder");
        let dims = cfg.encoder_dims();
        let levels = cfg.dim_mult.len();
        let conv_in = CausalConv::load(ld, &p.join("conv_in", "conv1"), cfg.in_channels, dims[0], [3; 3])?;
        let mut layers = Vec::new();
        for i in 0..levels {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                let lp = layer_prefix(&p, "down_blocks", "downsamples", layers.len());
                layers.push(DownLayer::Res(Box::new(ResBlock::load(ld, &lp, cin, cout)?)));
                cin = cout;
            }
            if i + 1 != levels {
                let mode = if cfg.temperal_downsample[i] { ResampleMode::Down3d } else { ResampleMode::Down2d };
                let lp = layer_prefix(&p, "down_blocks", "downsamples", layers.len());
                layers.push(DownLayer::Resample(Box::new(Resample::load(ld, &lp, cout, mode)?)));
            }
        }
        let c = dims[levels];
        let mid = Mid::load(ld, &p.join("mid_block", "middle"), c)?;
        let head = Head::load(ld, &p, c, 2 * cfg.z_dim)?;
        Ok(Encoder { conv_in, layers, mid, head })
    }

    /// Encodes the next chunk: `[B, 3, n, H, W]` → `[B, 2z, n', H/8, W/8]`.
    fn forward(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x, slots)?;
        for layer in &self.layers {
            x = match layer {
                DownLayer::Res(r) => r.forward(&x, slots)?,
                DownLayer::Resample(r) => r.forward(&x, slots)?,
            };
        }
        let x = self.mid.forward(&x, slots)?;
        self.head.forward(&x, slots)
    }
}

fn layer_prefix(p: &Prefix, d: &str, o: &str, i: usize) -> Prefix {
    p.join(&format!("{d}.{i}"), &format!("{o}.{i}"))
}

/// One decoder level: `num_res_blocks + 1` residual blocks and an optional up-sampler.
struct UpBlock {
    resnets: Vec<ResBlock>,
    upsampler: Option<Resample>,
}

/// `WanDecoder3d` (without `post_quant_conv`).
pub(crate) struct Decoder {
    conv_in: CausalConv,
    mid: Mid,
    blocks: Vec<UpBlock>,
    head: Head,
}

impl Decoder {
    fn load(cfg: &WanVaeConfig, ld: &mut Loader) -> Result<Self> {
        let p = Prefix::root().same("decoder");
        let dims = cfg.decoder_dims();
        let up_t = cfg.temporal_upsample();
        let levels = cfg.dim_mult.len();
        let conv_in = CausalConv::load(ld, &p.join("conv_in", "conv1"), cfg.z_dim, dims[0], [3; 3])?;
        let mid = Mid::load(ld, &p.join("mid_block", "middle"), dims[0])?;
        let mut blocks = Vec::new();
        // original layout: the blocks' modules flattened into `upsamples.{flat}`
        let mut flat = 0;
        for i in 0..levels {
            // every level after the first receives the previous up-sampler's halved channels
            let (mut cin, cout) = (if i > 0 { dims[i] / 2 } else { dims[i] }, dims[i + 1]);
            let mut resnets = Vec::new();
            for r in 0..=cfg.num_res_blocks {
                let lp = p.join(&format!("up_blocks.{i}.resnets.{r}"), &format!("upsamples.{flat}"));
                resnets.push(ResBlock::load(ld, &lp, cin, cout)?);
                flat += 1;
                cin = cout;
            }
            let upsampler = if i + 1 != levels {
                let mode = if up_t[i] { ResampleMode::Up3d } else { ResampleMode::Up2d };
                let lp = p.join(&format!("up_blocks.{i}.upsamplers.0"), &format!("upsamples.{flat}"));
                flat += 1;
                Some(Resample::load(ld, &lp, cout, mode)?)
            } else {
                None
            };
            blocks.push(UpBlock { resnets, upsampler });
        }
        let head = Head::load(ld, &p, dims[levels], cfg.out_channels)?;
        Ok(Decoder { conv_in, mid, blocks, head })
    }

    /// Decodes the next chunk of (post-quant-conv) latents.
    fn forward(&self, z: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let x = self.conv_in.forward(z, slots)?;
        let mut x = self.mid.forward(&x, slots)?;
        for b in &self.blocks {
            for r in &b.resnets {
                x = r.forward(&x, slots)?;
            }
            if let Some(u) = &b.upsampler {
                x = u.forward(&x, slots)?;
            }
        }
        self.head.forward(&x, slots)
    }
}

/// A 1×1×1 convolution's weight `[Cout, Cin, 1, 1, 1]` and bias.
pub(crate) struct PointConv {
    w: Tensor,
    b: Tensor,
}

impl PointConv {
    fn load(ld: &mut Loader, p: &Prefix, cin: usize, cout: usize) -> Result<Self> {
        Ok(PointConv { w: ld.get(&p.same("weight"), &[cout, cin, 1, 1, 1])?, b: ld.get(&p.same("bias"), &[cout])? })
    }

    /// Applies output channels `0..n` only.
    fn forward_first(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let p = Conv3dParams::new([1; 3], [0; 3]);
        conv3d(x, &self.w.narrow(0, 0, n)?, Some(&self.b.narrow(0, 0, n)?), &p)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv3d(x, &self.w, Some(&self.b), &Conv3dParams::new([1; 3], [0; 3]))
    }
}

/// Both networks plus the quant convolutions, with their state-slot counts.
pub(crate) struct Networks {
    encoder: Encoder,
    quant_conv: PointConv,
    post_quant_conv: PointConv,
    decoder: Decoder,
    z_dim: usize,
    /// State slots of the encoder.
    pub enc_slots: usize,
    /// State slots of the decoder.
    pub dec_slots: usize,
}

impl Networks {
    /// Builds (loads) everything in diffusers' state-dict order: encoder, `quant_conv`,
    /// `post_quant_conv`, decoder.
    pub fn build(cfg: &WanVaeConfig, ld: &mut Loader) -> Result<Self> {
        let z = cfg.z_dim;
        let encoder = Encoder::load(cfg, ld)?;
        let enc_slots = ld.take_slot_count();
        let quant_conv = PointConv::load(ld, &Prefix::root().join("quant_conv", "conv1"), 2 * z, 2 * z)?;
        let post_quant_conv = PointConv::load(ld, &Prefix::root().join("post_quant_conv", "conv2"), z, z)?;
        let decoder = Decoder::load(cfg, ld)?;
        let dec_slots = ld.take_slot_count();
        Ok(Networks { encoder, quant_conv, post_quant_conv, decoder, z_dim: z, enc_slots, dec_slots })
    }

    /// Encodes the next chunk of frames to the posterior mean μ (the first `z` channels of
    /// `quant_conv`'s output; the log-variance is not computed).
    pub fn encode_chunk(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let h = self.encoder.forward(x, slots)?;
        self.quant_conv.forward_first(&h, self.z_dim)
    }

    /// Decodes the next chunk of raw (denormalised) latents, without clamping.
    pub fn decode_chunk(&self, z: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let x = self.post_quant_conv.forward(z)?;
        self.decoder.forward(&x, slots)
    }
}
