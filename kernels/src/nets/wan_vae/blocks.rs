//! The VAE's building blocks (WAN_SPEC §3.2) in streaming form: every temporal operation keeps
//! its own [`Slot`] of state between chunks, so a video can be processed one chunk at a time with
//! memory bounded by one chunk, and the result does not depend on how the frames are chunked.
//!
//! * Stride-1 causal convolution (`k_t = 3`): the slot holds the last two input frames seen; a
//!   chunk is convolved over `cat(slot, chunk)` with `2 − |slot|` zero frames in front. This is
//!   the reference's `feat_cache` rule (which keeps `CACHE_T = 2` frames and pads the rest with
//!   zeros) and equals one causal convolution over the whole sequence.
//! * `downsample3d`'s temporal convolution (`k_t = 3`, stride 2, no padding) with the first-frame
//!   rule: the very first frame passes through; then stride-2 windows `(g₂ⱼ, g₂ⱼ₊₁, g₂ⱼ₊₂)` over
//!   the whole sequence `g₀ g₁ …` are emitted as soon as their frames have arrived; the slot
//!   holds the frames not yet consumed (the reference keeps the last frame of each chunk, which is
//!   the same thing for its chunk sizes).
//! * `upsample3d`'s temporal convolution (`C → 2C`, causal, `k_t = 3`): the very first frame
//!   passes through (the reference's `"Rep"` marker) and is not seen by later frames; every later
//!   frame goes through the causal convolution (state as above) and becomes two frames (output
//!   channels `[0, C)` → frame `2i`, `[C, 2C)` → frame `2i+1`).
//!
//! Everything else (RMS norm, SiLU, attention, 2-D resampling) is per frame.

use super::keys::{Prefix, WanVaeLayout};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorSource;
use crate::ops::activation::silu;
use crate::ops::attention::attention;
use crate::ops::conv::{Conv3dParams, conv3d};
use crate::ops::elementwise::add;
use crate::ops::linear::linear;
use crate::ops::norm::rms_norm_channel;
use crate::ops::shape::{cat, upsample_nearest};
use crate::tensor::{Device, Tensor};

/// Frames kept by a stride-1 causal convolution (`k_t − 1`; the reference's `CACHE_T`).
pub(crate) const CACHE_T: usize = 2;

/// Per-layer streaming state.
#[derive(Debug, Default, Clone)]
pub(crate) struct Slot {
    /// Whether the first frame has been seen (first-frame rules of the 3-D resamplers).
    started: bool,
    /// Cached input frames `[B, C, ≤ 2, H, W]` (an owned copy, never a view of a whole chunk).
    frames: Option<Tensor>,
}

impl Slot {
    /// Elements held in the cache.
    pub fn elements(&self) -> usize {
        self.frames.as_ref().map_or(0, Tensor::numel)
    }
}

/// Fetches parameters by their name pair, shape-checked, and hands out state slots. With no
/// source it only records names and shapes (for [`super::WanVaeConfig::param_shapes`]).
pub(crate) struct Loader<'a> {
    src: Option<&'a dyn TensorSource>,
    layout: WanVaeLayout,
    dtype: DType,
    device: Device,
    recorded: Vec<(String, Vec<usize>)>,
    slots: usize,
}

impl<'a> Loader<'a> {
    /// A loader reading `src` (in `layout`) and converting to `dtype`.
    pub fn new(src: &'a dyn TensorSource, layout: WanVaeLayout, dtype: DType) -> Self {
        Loader { src: Some(src), layout, dtype, device: Device::Cpu, recorded: Vec::new(), slots: 0 }
    }

    /// Places every parameter on `device` as it is loaded.
    pub fn on(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// A loader that only records names and shapes (tensors are empty placeholders).
    pub fn shapes_only(layout: WanVaeLayout) -> Loader<'static> {
        Loader { src: None, layout, dtype: DType::F32, device: Device::Cpu, recorded: Vec::new(), slots: 0 }
    }

    /// The parameter `p` with the given shape.
    pub fn get(&mut self, p: &Prefix, shape: &[usize]) -> Result<Tensor> {
        let name = p.name(self.layout).to_string();
        let t = match self.src {
            Some(src) => src.load_checked(&name, shape, self.dtype)?.to_device(self.device)?,
            None => Tensor::zeros(&[0], self.dtype, Device::Cpu)?,
        };
        self.recorded.push((name, shape.to_vec()));
        Ok(t)
    }

    /// A new state slot index.
    pub fn slot(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }

    /// The number of slots handed out since the last call (and restarts counting).
    pub fn take_slot_count(&mut self) -> usize {
        std::mem::take(&mut self.slots)
    }

    /// Names (in the loader's layout) and shapes of every parameter fetched, in order.
    pub fn recorded(&self) -> &[(String, Vec<usize>)] {
        &self.recorded
    }

    /// [`recorded`](Self::recorded), by value.
    pub fn into_recorded(self) -> Vec<(String, Vec<usize>)> {
        self.recorded
    }
}

/// Frames (dim 2) of a `[B, C, T, H, W]` tensor.
pub(crate) fn frames(x: &Tensor) -> usize {
    x.shape()[2]
}

/// An owned copy of frames `start..start+len`.
fn copy_frames(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    cat(&[&x.narrow(2, start, len)?], 2)
}

/// Concatenates along time (a single piece is returned as is).
fn cat_time(mut parts: Vec<Tensor>) -> Result<Tensor> {
    match parts.len() {
        0 => Err(Error::arg("wan_vae", "internal: a temporal layer produced no frames for a chunk")),
        1 => Ok(parts.pop().expect("one part")),
        _ => cat(&parts.iter().collect::<Vec<_>>(), 2),
    }
}

/// One streaming step of a stride-1 causal convolution with `ctx = k_t − 1` frames of context:
/// convolves `cat(state, x)` with `ctx − |state|` zero frames in front and keeps the last `ctx`
/// input frames as the new state.
fn causal_step(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    ctx: usize,
    spatial_pad: [usize; 2],
    state: &mut Option<Tensor>,
) -> Result<Tensor> {
    let (inp, have) = match state.take() {
        Some(c) => {
            let h = frames(&c);
            (cat(&[&c, x], 2)?, h)
        }
        None => (x.clone(), 0),
    };
    let [ph, pw] = spatial_pad;
    let p = Conv3dParams { stride: [1, 1, 1], padding: [[ctx - have, 0], [ph, ph], [pw, pw]] };
    let y = conv3d(&inp, w, Some(b), &p)?;
    let n = frames(&inp);
    let keep = ctx.min(n);
    *state = Some(copy_frames(&inp, n - keep, keep)?);
    Ok(y)
}

/// `WanCausalConv3d` with a cubic or `(k_t, 1, 1)` kernel, stride 1, declared padding `(k−1)/2`.
pub(crate) struct CausalConv {
    w: Tensor,
    b: Tensor,
    k: [usize; 3],
    slot: Option<usize>,
}

impl CausalConv {
    /// Loads `p.weight [cout, cin, k…]` and `p.bias [cout]`.
    pub fn load(ld: &mut Loader, p: &Prefix, cin: usize, cout: usize, k: [usize; 3]) -> Result<Self> {
        let w = ld.get(&p.same("weight"), &[cout, cin, k[0], k[1], k[2]])?;
        let b = ld.get(&p.same("bias"), &[cout])?;
        let slot = (k[0] > 1).then(|| ld.slot());
        Ok(CausalConv { w, b, k, slot })
    }

    /// Applies the convolution to the next chunk.
    pub fn forward(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let sp = [(self.k[1] - 1) / 2, (self.k[2] - 1) / 2];
        match self.slot {
            None => {
                let p = Conv3dParams { stride: [1; 3], padding: [[0, 0], [sp[0], sp[0]], [sp[1], sp[1]]] };
                conv3d(x, &self.w, Some(&self.b), &p)
            }
            Some(s) => causal_step(x, &self.w, &self.b, self.k[0] - 1, sp, &mut slots[s].frames),
        }
    }
}

/// `RMS_norm` (over channels) followed by SiLU.
fn norm_silu(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    silu(&rms_norm_channel(x, gamma)?)
}

/// `ResidualBlock(in, out)`: `x + (shortcut)(x)` around norm → SiLU → conv3 → norm → SiLU → conv3.
pub(crate) struct ResBlock {
    norm1: Tensor,
    conv1: CausalConv,
    norm2: Tensor,
    conv2: CausalConv,
    shortcut: Option<CausalConv>,
}

impl ResBlock {
    /// Loads a residual block at `p`.
    pub fn load(ld: &mut Loader, p: &Prefix, cin: usize, cout: usize) -> Result<Self> {
        let norm1 = ld.get(&p.join("norm1.gamma", "residual.0.gamma"), &[cin, 1, 1, 1])?;
        let conv1 = CausalConv::load(ld, &p.join("conv1", "residual.2"), cin, cout, [3; 3])?;
        let norm2 = ld.get(&p.join("norm2.gamma", "residual.3.gamma"), &[cout, 1, 1, 1])?;
        let conv2 = CausalConv::load(ld, &p.join("conv2", "residual.6"), cout, cout, [3; 3])?;
        let shortcut = if cin != cout {
            Some(CausalConv::load(ld, &p.join("conv_shortcut", "shortcut"), cin, cout, [1; 3])?)
        } else {
            None
        };
        Ok(ResBlock { norm1, conv1, norm2, conv2, shortcut })
    }

    /// Applies the block to the next chunk.
    pub fn forward(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let h = self.conv1.forward(&norm_silu(x, &self.norm1)?, slots)?;
        let h = self.conv2.forward(&norm_silu(&h, &self.norm2)?, slots)?;
        match &self.shortcut {
            Some(s) => add(&h, &s.forward(x, slots)?),
            None => add(&h, x),
        }
    }
}

/// `AttentionBlock(C)`: per frame, single-head self-attention over the `H·W` positions.
pub(crate) struct AttnBlock {
    norm: Tensor,
    qkv_w: Tensor,
    qkv_b: Tensor,
    proj_w: Tensor,
    proj_b: Tensor,
    c: usize,
}

impl AttnBlock {
    /// Loads an attention block at `p`.
    pub fn load(ld: &mut Loader, p: &Prefix, c: usize) -> Result<Self> {
        Ok(AttnBlock {
            norm: ld.get(&p.same("norm.gamma"), &[c, 1, 1])?,
            qkv_w: ld.get(&p.same("to_qkv.weight"), &[3 * c, c, 1, 1])?,
            qkv_b: ld.get(&p.same("to_qkv.bias"), &[3 * c])?,
            proj_w: ld.get(&p.same("proj.weight"), &[c, c, 1, 1])?,
            proj_b: ld.get(&p.same("proj.bias"), &[c])?,
            c,
        })
    }

    /// Applies the block to `x [B, C, T, H, W]` (no state: attention is per frame).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.c;
        let [b, _, t, h, w] = x.shape().try_into().map_err(|_| Error::rank("wan_vae.attention", "5", x.shape()))?;
        let (bt, hw) = (b * t, h * w);
        // tokens: [B·T·H·W, C] (channels last)
        let xn = rms_norm_channel(x, &self.norm)?.permute(&[0, 2, 3, 4, 1])?.reshape(&[bt * hw, c])?;
        let qkv = linear(&xn, &self.qkv_w.reshape(&[3 * c, c])?, Some(&self.qkv_b))?.reshape(&[bt, hw, 3 * c])?;
        drop(xn);
        let part = |i: usize| -> Result<Tensor> { qkv.narrow(2, i * c, c)?.reshape(&[bt, hw, 1, c]) };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        drop(qkv);
        let o = attention(&q, &k, &v, Some(1.0 / (c as f64).sqrt()))?.out.reshape(&[bt * hw, c])?;
        let y = linear(&o, &self.proj_w.reshape(&[c, c])?, Some(&self.proj_b))?
            .reshape(&[b, t, h, w, c])?
            .permute(&[0, 4, 1, 2, 3])?
            .contiguous();
        add(&y, x)
    }
}

/// The middle block: residual, attention, residual.
pub(crate) struct Mid {
    res0: ResBlock,
    attn: AttnBlock,
    res1: ResBlock,
}

impl Mid {
    /// Loads `mid_block` / `middle` at `p`.
    pub fn load(ld: &mut Loader, p: &Prefix, c: usize) -> Result<Self> {
        Ok(Mid {
            res0: ResBlock::load(ld, &p.join("resnets.0", "0"), c, c)?,
            attn: AttnBlock::load(ld, &p.join("attentions.0", "1"), c)?,
            res1: ResBlock::load(ld, &p.join("resnets.1", "2"), c, c)?,
        })
    }

    /// Applies the block to the next chunk.
    pub fn forward(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let x = self.res0.forward(x, slots)?;
        let x = self.attn.forward(&x)?;
        self.res1.forward(&x, slots)
    }
}

/// The four resampling modes of `WanResample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResampleMode {
    /// Zero-pad right/bottom by 1, Conv2d 3×3 stride 2 (C → C).
    Down2d,
    /// [`Down2d`](Self::Down2d), then the temporal stride-2 convolution with the first-frame rule.
    Down3d,
    /// Nearest ×2, Conv2d 3×3 pad 1 (C → C/2).
    Up2d,
    /// The temporal ×2 convolution with the first-frame rule, then [`Up2d`](Self::Up2d).
    Up3d,
}

/// `WanResample`.
pub(crate) struct Resample {
    mode: ResampleMode,
    /// The 2-D conv, `[Cout, C, 3, 3]`.
    w: Tensor,
    b: Tensor,
    /// `time_conv` weight `[C or 2C, C, 3, 1, 1]` and bias (3-D modes).
    time: Option<(Tensor, Tensor)>,
    slot: Option<usize>,
    c: usize,
    cout: usize,
}

impl Resample {
    /// Loads a resampler on `c` channels at `p` (`resample.1.*`, `time_conv.*`).
    pub fn load(ld: &mut Loader, p: &Prefix, c: usize, mode: ResampleMode) -> Result<Self> {
        let up = matches!(mode, ResampleMode::Up2d | ResampleMode::Up3d);
        let cout = if up { c / 2 } else { c };
        let w = ld.get(&p.same("resample.1.weight"), &[cout, c, 3, 3])?;
        let b = ld.get(&p.same("resample.1.bias"), &[cout])?;
        let time_out = match mode {
            ResampleMode::Down3d => Some(c),
            ResampleMode::Up3d => Some(2 * c),
            _ => None,
        };
        let time = match time_out {
            Some(to) => Some((
                ld.get(&p.same("time_conv.weight"), &[to, c, 3, 1, 1])?,
                ld.get(&p.same("time_conv.bias"), &[to])?,
            )),
            None => None,
        };
        let slot = time.is_some().then(|| ld.slot());
        Ok(Resample { mode, w, b, time, slot, c, cout })
    }

    fn conv2d_weight(&self) -> Result<Tensor> {
        self.w.reshape(&[self.cout, self.c, 1, 3, 3])
    }

    fn spatial_down(&self, x: &Tensor) -> Result<Tensor> {
        let p = Conv3dParams { stride: [1, 2, 2], padding: [[0, 0], [0, 1], [0, 1]] };
        conv3d(x, &self.conv2d_weight()?, Some(&self.b), &p)
    }

    fn spatial_up(&self, x: &Tensor) -> Result<Tensor> {
        let u = upsample_nearest(x, [2, 2])?;
        conv3d(&u, &self.conv2d_weight()?, Some(&self.b), &Conv3dParams::new([1; 3], [0, 1, 1]))
    }

    fn time(&self) -> Result<(&Tensor, &Tensor, usize)> {
        match (&self.time, self.slot) {
            (Some((w, b)), Some(s)) => Ok((w, b, s)),
            _ => Err(Error::arg("wan_vae", "internal: 3-D resampler without a time_conv")),
        }
    }

    /// `downsample3d`'s temporal step on the spatially down-sampled chunk `g`.
    fn temporal_down(&self, g: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let (tw, tb, s) = self.time()?;
        let slot = &mut slots[s];
        let mut outs = Vec::new();
        if !slot.started {
            slot.started = true;
            outs.push(g.narrow(2, 0, 1)?);
        }
        let buf = match slot.frames.take() {
            Some(c) => cat(&[&c, g], 2)?,
            None => g.clone(),
        };
        let n = frames(&buf);
        let m = (n - 1) / 2;
        if m > 0 {
            let p = Conv3dParams { stride: [2, 1, 1], padding: [[0, 0]; 3] };
            outs.push(conv3d(&buf.narrow(2, 0, 2 * m + 1)?, tw, Some(tb), &p)?);
        }
        slot.frames = Some(copy_frames(&buf, 2 * m, n - 2 * m)?);
        cat_time(outs)
    }

    /// `upsample3d`'s temporal step: frame 0 passes through, later frames double.
    fn temporal_up(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        let (tw, tb, s) = self.time()?;
        let slot = &mut slots[s];
        let n = frames(x);
        let mut outs = Vec::new();
        let rest = if !slot.started {
            slot.started = true;
            outs.push(x.narrow(2, 0, 1)?);
            (n > 1).then(|| x.narrow(2, 1, n - 1)).transpose()?
        } else {
            Some(x.clone())
        };
        if let Some(rest) = rest {
            let y = causal_step(&rest, tw, tb, CACHE_T, [0, 0], &mut slot.frames)?;
            let [b, _, r, h, w] =
                y.shape().try_into().map_err(|_| Error::rank("wan_vae.upsample3d", "5", y.shape()))?;
            let c = self.c;
            // channels [0, C) → frame 2i, [C, 2C) → frame 2i+1
            let y = y.reshape(&[b, 2, c, r, h, w])?.permute(&[0, 2, 3, 1, 4, 5])?.reshape(&[b, c, 2 * r, h, w])?;
            outs.push(y);
        }
        cat_time(outs)
    }

    /// Applies the resampler to the next chunk.
    pub fn forward(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        match self.mode {
            ResampleMode::Down2d => self.spatial_down(x),
            ResampleMode::Down3d => {
                let g = self.spatial_down(x)?;
                self.temporal_down(&g, slots)
            }
            ResampleMode::Up2d => self.spatial_up(x),
            ResampleMode::Up3d => {
                let t = self.temporal_up(x, slots)?;
                self.spatial_up(&t)
            }
        }
    }
}

/// Norm → SiLU → causal conv: the encoder's and decoder's output head.
pub(crate) struct Head {
    norm: Tensor,
    conv: CausalConv,
}

impl Head {
    /// Loads `norm_out.gamma` / `head.0.gamma` and `conv_out` / `head.2` under `p`.
    pub fn load(ld: &mut Loader, p: &Prefix, cin: usize, cout: usize) -> Result<Self> {
        let norm = ld.get(&p.join("norm_out.gamma", "head.0.gamma"), &[cin, 1, 1, 1])?;
        let conv = CausalConv::load(ld, &p.join("conv_out", "head.2"), cin, cout, [3; 3])?;
        Ok(Head { norm, conv })
    }

    /// Applies the head to the next chunk.
    pub fn forward(&self, x: &Tensor, slots: &mut [Slot]) -> Result<Tensor> {
        self.conv.forward(&norm_silu(x, &self.norm)?, slots)
    }
}
