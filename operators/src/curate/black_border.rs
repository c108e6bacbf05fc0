//! `curate.black_border`: persistent black borders (letterbox, pillarbox, windowbox) by Canny edges
//! and Hough lines on sampled frames (paper stage 6: OpenCV Canny + Hough; drop clips whose
//! borders persist on any side).
//!
//! # Measurement (memoised; thresholds and mode are not part of its key)
//!
//! `frames` frames spread uniformly over the clip, at their stored size (RGB). When the clip comes
//! from `curate.segment` with frame digests (its default) and this node's `black_level`,
//! `canny_low` and `canny_high` are the defaults, the frames are segment's 1-fps ticks nearest the
//! uniform positions, measured during segment's single decode ([`super::ticks`]): nothing is
//! decoded here. Otherwise the frames are decoded. Label `border_frames_from` says which
//! (`segment` / `decode`). On each frame:
//!
//! 1. [`canny`] on the luma (`canny_low`, `canny_high`), then [`hough_axis_lines`]: horizontal and
//!    vertical lines (normals within 2° of the axes, 0.5° steps) supported by edge pixels along at
//!    least 30% of the frame's width (height) — content next to a bar may be dark in places;
//! 2. a row (column) is *black* when at least 98% of its pixels have every channel ≤
//!    `black_level` — near-black and uniform, so dark blue or dark content with texture is not;
//! 3. per side, the band of consecutive black rows (columns) from the frame's edge is a border
//!    when a Hough line lies on its inner boundary (within 2 px) and the band covers at most 40% of
//!    the frame: the line bounds a near-black uniform band. Its width is the band's.
//!
//! Scores: `border_top|bottom|left|right_fraction` (share of frames with a border on that side),
//! `border_frames`, `border_source_width|height` (frame size in pixels).
//!
//! # Decision
//!
//! A side's border persists when it is found on at least `persist_fraction` of the frames and its
//! width (median over those frames) is at least `min_width_px`. Scores `border_top|bottom|left|right`
//! are then that width in pixels of the source video (0 where none persists), label `border` lists
//! the sides (`none` when clean). `mode = "reject"` drops clips with any persistent border;
//! `mode = "crop"` keeps them and adds `crop_x`, `crop_y`, `crop_width`, `crop_height` (the picture
//! inside the borders, rounded inwards to even numbers for H.264).

use super::imgproc::{GrayImage, canny, hough_axis_lines, luma};
use super::{
    Measured, REJECTED_PORT, check_range, check_threads, fingerprint_without, frames, measure_with_digests, reject,
    split_decided, take_input, ticks,
};
use crate::api::*;
use crate::video::{PixelFormat, Sampling, Size};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `curate.black_border` operator.
pub struct CurateBlackBorder;

/// A border covers at most this share of the frame's side.
pub const MAX_BAND_FRACTION: f64 = 0.4;
/// Share of a row's (column's) pixels that must be near-black.
pub const BLACK_SHARE: f64 = 0.98;
/// A border's Hough line must be supported by this share of the frame's width (height).
pub const LINE_SUPPORT: f64 = 0.3;

fn d_frames() -> u32 {
    5
}
fn d_black_level() -> u8 {
    40
}
fn d_low() -> f32 {
    30.0
}
fn d_high() -> f32 {
    80.0
}
fn d_persist() -> f64 {
    0.8
}
fn d_min_width() -> u32 {
    4
}
fn d_threads() -> usize {
    1
}

/// What to do with clips that have persistent borders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum BorderMode {
    /// Drop them (the paper).
    #[default]
    Reject,
    /// Keep them, with a crop rectangle for later cutting.
    Crop,
}

/// Params of `curate.black_border`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BorderParams {
    /// Frames analysed per clip, spread uniformly over it (the paper's OCR stage uses 5 too).
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// A pixel is near-black when every channel is at or below this (0–255).
    #[serde(default = "d_black_level")]
    pub black_level: u8,
    /// Canny hysteresis low threshold on the Sobel gradient magnitude (L2, after a 5-tap Gaussian).
    #[serde(default = "d_low")]
    pub canny_low: f32,
    /// Canny high threshold: edges start at pixels this strong.
    #[serde(default = "d_high")]
    pub canny_high: f32,
    /// Decision: a side's border persists when found on at least this share of the frames (0–1).
    #[serde(default = "d_persist")]
    pub persist_fraction: f64,
    /// Decision: borders thinner than this many pixels are ignored.
    #[serde(default = "d_min_width")]
    pub min_width_px: u32,
    /// Decision: `reject` drops clips with a persistent border on any side; `crop` keeps them and
    /// adds the crop rectangle (`crop_x`, `crop_y`, `crop_width`, `crop_height`).
    #[serde(default)]
    pub mode: BorderMode,
    /// Threads per worker analysing clips.
    #[serde(default = "d_threads")]
    pub threads: usize,
}

/// Border widths of one frame, pixels (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Borders {
    pub top: u32,
    pub bottom: u32,
    pub left: u32,
    pub right: u32,
}

impl Borders {
    fn get(&self, side: usize) -> u32 {
        [self.top, self.bottom, self.left, self.right][side]
    }
}

/// Side names, in [`Borders`] order.
pub const SIDES: [&str; 4] = ["top", "bottom", "left", "right"];

/// Leading black lines: `black(i)` for i = 0.. until the first false.
fn leading(n: usize, black: impl Fn(usize) -> bool) -> usize {
    (0..n).take_while(|i| black(*i)).count()
}

/// The borders of one packed RGB frame (see the module docs).
pub fn detect(rgb: &[u8], w: usize, h: usize, black_level: u8, low: f32, high: f32) -> Borders {
    if w < 8 || h < 8 || rgb.len() < w * h * 3 {
        return Borders::default();
    }
    let dark: Vec<bool> = rgb[..w * h * 3].chunks_exact(3).map(|p| p[0].max(p[1]).max(p[2]) <= black_level).collect();
    let row_black = |y: usize| dark[y * w..(y + 1) * w].iter().filter(|d| **d).count() as f64 >= BLACK_SHARE * w as f64;
    let col_black = |x: usize| (0..h).filter(|y| dark[y * w + x]).count() as f64 >= BLACK_SHARE * h as f64;
    let top = leading(h, row_black);
    let bottom = leading(h, |i| row_black(h - 1 - i));
    let left = leading(w, col_black);
    let right = leading(w, |i| col_black(w - 1 - i));
    if top == 0 && bottom == 0 && left == 0 && right == 0 {
        return Borders::default();
    }
    let Some(gray) = GrayImage::new(w, h, luma(&rgb[..w * h * 3])) else { return Borders::default() };
    let edges = canny(&gray, low, high);
    let (hor, ver) =
        hough_axis_lines(&edges, 2.0, 0.5, (LINE_SUPPORT * w as f64) as u32, (LINE_SUPPORT * h as f64) as u32);
    // A band of `band` lines from the edge, whose first non-black line is at `boundary`: the edge
    // sits between lines boundary-1 and boundary.
    let bounded = |band: usize, extent: usize, boundary: f64, lines: &[super::imgproc::HoughLine], axis_deg: f64| {
        band > 0
            && (band as f64) <= MAX_BAND_FRACTION * extent as f64
            && lines.iter().any(|l| (l.theta_deg - axis_deg).abs() <= 1.0 && (l.rho - (boundary - 0.5)).abs() <= 2.5)
    };
    let pick = |band: usize, extent: usize, boundary: f64, lines: &[super::imgproc::HoughLine], axis: f64| {
        if bounded(band, extent, boundary, lines, axis) { band as u32 } else { 0 }
    };
    Borders {
        top: pick(top, h, top as f64, &hor, 90.0),
        bottom: pick(bottom, h, (h - bottom) as f64, &hor, 90.0),
        left: pick(left, w, left as f64, &ver, 0.0),
        right: pick(right, w, (w - right) as f64, &ver, 0.0),
    }
}

/// Aggregate per-frame borders into the measurement scores.
pub fn summarize(per_frame: &[Borders], width: u32, height: u32) -> Measured {
    let mut m = Measured::default();
    let n = per_frame.len().max(1) as f64;
    for (side, name) in SIDES.iter().enumerate() {
        let mut found: Vec<u32> = per_frame.iter().map(|b| b.get(side)).filter(|v| *v > 0).collect();
        found.sort_unstable();
        let median = if found.is_empty() { 0 } else { found[(found.len() - 1) / 2] };
        m.score(&format!("border_{name}"), median as f64);
        m.score(&format!("border_{name}_fraction"), found.len() as f64 / n);
    }
    m.score("border_frames", per_frame.len() as f64);
    m.score("border_source_width", width as f64);
    m.score("border_source_height", height as f64);
    m
}

/// Measure a clip: from the frame digests `curate.segment` measured (`digests`, the clip's
/// `frame_digests` metadata) when they were measured with these detection settings, else from
/// `frames` frames decoded uniformly over the span. Label `border_frames_from` says which.
fn measure_clip(clip: &Clip, digests: &str, p: &BorderParams, ctx: &ItemCtx) -> Result<Measured, ItemError> {
    let want = ticks::BorderSettings { black_level: p.black_level, canny_low: p.canny_low, canny_high: p.canny_high };
    let text = (!digests.is_empty()).then_some(digests);
    if let Some(picked) = ticks::for_span(text, clip.start_s.0, clip.end_s.0, p.frames, Some(&want)) {
        let per_frame: Vec<Borders> = picked
            .iter()
            .map(|d| Borders { top: d.borders[0], bottom: d.borders[1], left: d.borders[2], right: d.borders[3] })
            .collect();
        let mut m = summarize(&per_frame, clip.width, clip.height);
        m.label("border_frames_from", "segment");
        return Ok(m);
    }
    let (info, frames) =
        frames::clip_frames(clip, Sampling::Uniform { count: p.frames.max(1) }, Size::Native, PixelFormat::Rgb, ctx)?;
    let per_frame: Vec<Borders> = frames
        .iter()
        .map(|f| detect(f.data(), f.width as usize, f.height as usize, p.black_level, p.canny_low, p.canny_high))
        .collect();
    let mut m = summarize(&per_frame, info.out_width, info.out_height);
    m.label("border_frames_from", "decode");
    Ok(m)
}

fn even_up(v: u32) -> u32 {
    v + v % 2
}

/// The decision (see the module docs): whether to keep, and the scores/labels it sets.
pub fn decide(mut s: Scores, p: &BorderParams, node: &str) -> (bool, Scores) {
    let get = |s: &Scores, k: &str| s.scores.get(k).map_or(0.0, |v| v.0);
    let mut sides = Vec::new();
    let mut widths = [0u32; 4];
    for (i, name) in SIDES.iter().enumerate() {
        let w = get(&s, &format!("border_{name}"));
        let frac = get(&s, &format!("border_{name}_fraction"));
        if frac >= p.persist_fraction - 1e-9 && w >= p.min_width_px as f64 && w > 0.0 {
            widths[i] = w as u32;
            sides.push(format!("{name} {} px", w as u32));
        }
        s.scores.insert(format!("border_{name}"), F64(widths[i] as f64));
    }
    let names: Vec<&str> = SIDES.iter().zip(&widths).filter(|(_, w)| **w > 0).map(|(n, _)| *n).collect();
    s.labels.insert("border".into(), if names.is_empty() { "none".into() } else { names.join(",") });
    match p.mode {
        BorderMode::Reject if !sides.is_empty() => {
            let reason = format!(
                "persistent black border: {} (on ≥ {:.0}% of {} frames)",
                sides.join(", "),
                p.persist_fraction * 100.0,
                get(&s, "border_frames")
            );
            reject(&mut s, node, reason);
            (false, s)
        }
        BorderMode::Reject => (true, s),
        BorderMode::Crop => {
            let (sw, sh) = (get(&s, "border_source_width") as u32, get(&s, "border_source_height") as u32);
            let [top, bottom, left, right] = widths;
            let (x, y) = (even_up(left), even_up(top));
            let cw = sw.saturating_sub(x + right) & !1;
            let ch = sh.saturating_sub(y + bottom) & !1;
            for (k, v) in [("crop_x", x), ("crop_y", y), ("crop_width", cw), ("crop_height", ch)] {
                s.scores.insert(k.into(), F64(v as f64));
            }
            (true, s)
        }
    }
}

impl TypedOperator for CurateBlackBorder {
    type Params = BorderParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.black_border",
            summary: "Find persistent black borders with Canny + Hough on sampled frames; reject the clip or add a crop",
            doc: "Decodes `frames` frames spread over each clip at their stored size and runs a native Canny edge \
                  detector (5-tap Gaussian, Sobel, non-maximum suppression, hysteresis canny_low/canny_high) and a \
                  (ρ, θ) Hough transform for near-horizontal and near-vertical lines. On each side, a band of \
                  near-black uniform lines (≥ 98% of pixels with every channel ≤ black_level) running from the \
                  frame's edge is a border when a Hough line (supported along ≥ 30% of the frame's width/height) \
                  lies on \
                  its inner boundary and it covers at most 40% of the frame. A side's border persists when found \
                  on ≥ persist_fraction of the frames and at least min_width_px wide. Scores: border_top, \
                  border_bottom, border_left, border_right (persistent width in source pixels, else 0), \
                  border_*_fraction, border_frames, border_source_width/height; label border (sides or `none`). \
                  mode = \"reject\" (the paper) sends clips with any persistent border to `rejected` (labels \
                  rejected_by, reason); mode = \"crop\" keeps them with scores crop_x, crop_y, crop_width, \
                  crop_height (even). The measurement is memoised per clip span with frames, black_level and the \
                  Canny thresholds; persist_fraction, min_width_px and mode only change decisions.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips)",
            }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "kept clips with border scores" },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Scores),
                    doc: "clips with persistent borders (mode = reject)",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &BorderParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.frames == 0 || p.frames > 100 {
            v.push(ParamIssue::error("frames", "must be between 1 and 100", Some("frames = 5".into())));
        }
        if !(p.canny_low.is_finite() && p.canny_low > 0.0) {
            v.push(ParamIssue::error("canny_low", "must be a positive number", Some("canny_low = 30.0".into())));
        }
        if !(p.canny_high.is_finite() && p.canny_high >= p.canny_low) {
            v.push(ParamIssue::error(
                "canny_high",
                format!("must be at least canny_low ({})", p.canny_low),
                Some("canny_high = 80.0".into()),
            ));
        }
        check_range(&mut v, "persist_fraction", p.persist_fraction, 0.0, 1.0, "0.8");
        if p.min_width_px == 0 {
            v.push(ParamIssue::error("min_width_px", "must be at least 1", Some("min_width_px = 4".into())));
        }
        check_threads(p.threads, &mut v);
        v
    }

    fn fingerprint(&self, p: &BorderParams) -> serde_json::Value {
        fingerprint_without(p, &["persist_fraction", "min_width_px", "mode", "threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &BorderParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let mp = p.clone();
        let (merged, failed) = measure_with_digests(ctx, input, p.threads, move |clip, digests, ictx| {
            measure_clip(clip, digests, &mp, ictx)
        });
        let (p, node) = (p.clone(), ctx.node.clone());
        let (kept, rejected) = split_decided(merged.map(move |s| decide(s, &p, &node)));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` RGB frame: bars of the given widths, textured content inside.
    fn frame(w: usize, h: usize, b: Borders) -> Vec<u8> {
        let mut px = vec![0u8; w * h * 3];
        for y in b.top as usize..h - b.bottom as usize {
            for x in b.left as usize..w - b.right as usize {
                let v = (60 + (x * 7 + y * 3) % 150) as u8;
                px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[v, 255 - v, 120]);
            }
        }
        px
    }

    #[test]
    fn detects_letterbox_pillarbox_and_windowbox_exactly() {
        let (w, h) = (160, 120);
        for b in [
            Borders { top: 12, bottom: 12, left: 0, right: 0 },
            Borders { top: 0, bottom: 0, left: 20, right: 20 },
            Borders { top: 9, bottom: 9, left: 15, right: 15 },
            Borders { top: 0, bottom: 7, left: 0, right: 0 },
            Borders::default(),
        ] {
            assert_eq!(detect(&frame(w, h, b), w, h, 40, 30.0, 80.0), b);
        }
    }

    #[test]
    fn dark_but_not_black_or_unbounded_bands_are_no_border() {
        let (w, h) = (160, 120);
        // Dark blue band at the top: max channel 150 > black_level.
        let mut px = frame(w, h, Borders::default());
        for p in px[..w * 20 * 3].chunks_exact_mut(3) {
            p.copy_from_slice(&[0, 0, 150]);
        }
        assert_eq!(detect(&px, w, h, 40, 30.0, 80.0), Borders::default());
        // All black: no border (no edge, and it covers the whole frame).
        assert_eq!(detect(&vec![0u8; w * h * 3], w, h, 40, 30.0, 80.0), Borders::default());
        // Black fading slowly into brighter content (no sharp line): no border.
        let mut px = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let v = (20 + y) as u8;
                px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[v, v, v]);
            }
        }
        assert_eq!(detect(&px, w, h, 40, 30.0, 80.0).top, 0);
        // A band over 40% of the height is not a border.
        assert_eq!(
            detect(&frame(w, h, Borders { top: 55, bottom: 0, left: 0, right: 0 }), w, h, 40, 30.0, 80.0).top,
            0
        );
        // Degenerate frames
        assert_eq!(detect(&[], 0, 0, 40, 30.0, 80.0), Borders::default());
    }

    fn params(mode: BorderMode) -> BorderParams {
        BorderParams {
            frames: 5,
            black_level: 40,
            canny_low: 30.0,
            canny_high: 80.0,
            persist_fraction: 0.8,
            min_width_px: 4,
            mode,
            threads: 1,
        }
    }

    fn scores(m: Measured) -> Scores {
        Scores {
            clip: Clip {
                clip_id: "c".into(),
                source_id: "s".into(),
                uri: "u".into(),
                start_s: F64(0.0),
                end_s: F64(6.0),
                fps: F64(25.0),
                width: 160,
                height: 120,
                blob: None,
                metadata: Default::default(),
            },
            scores: m.scores,
            labels: m.labels,
        }
    }

    #[test]
    fn persistence_width_and_modes_decide() {
        let lb = Borders { top: 13, bottom: 13, left: 0, right: 0 };
        // top/bottom on 5 of 5 frames, left on 2 of 5.
        let per = [lb, lb, lb, Borders { left: 10, ..lb }, Borders { left: 10, ..lb }];
        let m = summarize(&per, 160, 120);
        assert_eq!(m.scores["border_top_fraction"].0, 1.0);
        assert_eq!(m.scores["border_left_fraction"].0, 0.4);
        let (keep, s) = decide(scores(m.clone()), &params(BorderMode::Reject), "bb");
        assert!(!keep);
        assert_eq!(s.labels["rejected_by"], "bb");
        assert!(s.labels["reason"].contains("top 13 px, bottom 13 px"), "{}", s.labels["reason"]);
        assert_eq!((s.scores["border_top"].0, s.scores["border_left"].0), (13.0, 0.0));
        assert_eq!(s.labels["border"], "top,bottom");
        // Crop: kept, with an even rectangle inside the borders.
        let (keep, s) = decide(scores(m.clone()), &params(BorderMode::Crop), "bb");
        assert!(keep);
        let r: Vec<f64> = ["crop_x", "crop_y", "crop_width", "crop_height"].iter().map(|k| s.scores[*k].0).collect();
        assert_eq!(r, vec![0.0, 14.0, 160.0, 92.0]);
        // A lower persistence threshold makes the flickering left border count too.
        let mut p = params(BorderMode::Reject);
        p.persist_fraction = 0.4;
        let (_, s) = decide(scores(m.clone()), &p, "bb");
        assert_eq!(s.labels["border"], "top,bottom,left");
        // Too thin to matter.
        p.persist_fraction = 0.8;
        p.min_width_px = 20;
        let (keep, s) = decide(scores(m), &p, "bb");
        assert!(keep);
        assert_eq!(s.labels["border"], "none");
        // A clean clip is kept.
        let (keep, _) =
            decide(scores(summarize(&[Borders::default(); 5], 160, 120)), &params(BorderMode::Reject), "bb");
        assert!(keep);
    }
}
