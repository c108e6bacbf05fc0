//! `video.cut` and [`cut`]: a span `[start, end)` of a video as its own H.264 MP4.
//!
//! The span is decoded with the same frame selection as [`Decoder`](super::decode::Decoder)
//! (every frame displayed during the span, or a resampled rate) and re-encoded, so the clip
//! starts exactly at `start`, holds exactly the frames of the span, and its timestamps are
//! regular (`n / fps`) even when the source's were not. Audio is not carried over (dataset clips
//! are silent).
//!
//! A Clip whose metadata carries [`REDACTED_BLOB`] (set by `curate.deidentify`) is cut from that
//! redacted copy in the run store — its time 0 is the clip's `start_s`, so the span cut is
//! `[0, end_s − start_s)` — and never from the source, so written clips hold only redacted pixels.

use super::decode::Decoder;
pub use super::encode::H264Encoder;
use super::encode::{EncodeSpec, EncodeSummary, Encoder, check_encoding, fps_fraction, temp_mp4};
use super::{DecodeSpec, PixelFormat, ResizeMode, Sampling, Size, TimeRange, VideoError, local_path, size_from_params};
use crate::api::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

pub use super::REDACTED_BLOB;

/// Where a clip's pixels are read from: its redacted copy in the run store when
/// `curate.deidentify` made one (time 0 = the clip's start), else the source over the clip's span.
pub fn pixel_source(c: &Clip, services: &dyn Services) -> Result<(std::path::PathBuf, TimeRange), ItemError> {
    match c.metadata.get(REDACTED_BLOB) {
        Some(key) => {
            let path = services.blob_path(key);
            if !path.is_file() {
                return Err(ItemError::unreadable(format!(
                    "the redacted copy {key} of clip {} is missing from the run store ({}); re-run curate.deidentify",
                    c.clip_id,
                    path.display()
                )));
            }
            Ok((path, TimeRange::new(0.0, c.end_s.0 - c.start_s.0)))
        }
        None => Ok((local_path(&c.uri)?, TimeRange::new(c.start_s.0, c.end_s.0))),
    }
}

/// What [`cut`] cuts and how it encodes.
#[derive(Clone, Debug)]
pub struct CutSpec {
    pub range: TimeRange,
    /// Output size (scaled while decoding).
    pub size: Size,
    /// Resample to this rate; default: the source's (30 when it has none, e.g. variable rate).
    pub fps: Option<f64>,
    pub crf: u32,
    pub bitrate_kbps: Option<u32>,
    pub preset: String,
    pub keyint_s: f64,
    pub faststart: bool,
    pub encoder: H264Encoder,
    pub deadline: Option<Instant>,
}

impl Default for CutSpec {
    fn default() -> Self {
        let e = EncodeSpec::default();
        CutSpec {
            range: TimeRange::ALL,
            size: Size::Native,
            fps: None,
            crf: e.crf,
            bitrate_kbps: None,
            preset: e.preset,
            keyint_s: e.keyint_s,
            faststart: true,
            encoder: H264Encoder::Auto,
            deadline: None,
        }
    }
}

/// What [`cut`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct CutSummary {
    pub encode: EncodeSummary,
    /// Source time of the clip's first frame.
    pub first_pts_s: f64,
}

/// Cut `spec.range` of `src` into the MP4 `out`.
pub fn cut(src: &Path, out: &Path, spec: &CutSpec) -> Result<CutSummary, VideoError> {
    // Odd output sizes cannot be encoded: fix a native odd size by scaling to the even one.
    let mut dspec = DecodeSpec::all().with_range(spec.range).with_size(spec.size).with_format(PixelFormat::Rgb);
    dspec.deadline = spec.deadline;
    if let Some(f) = spec.fps {
        dspec.sampling = Sampling::Fps { fps: f };
    }
    let mut decoder = Decoder::open(src, &dspec)?;
    let info = decoder.info().clone();
    let mut rate = spec.fps.map(fps_fraction).unwrap_or(info.fps);
    let mut reopen = false;
    if spec.fps.is_none() && info.fps_f64().is_none() {
        // A variable or unknown rate: resample to a regular one.
        dspec.sampling = Sampling::Fps { fps: 30.0 };
        rate = (30, 1);
        reopen = true;
    }
    if info.out_width % 2 == 1 || info.out_height % 2 == 1 {
        dspec.size = Size::Exact { width: (info.out_width & !1).max(2), height: (info.out_height & !1).max(2) };
        reopen = true;
    }
    if reopen {
        drop(decoder);
        decoder = Decoder::open(src, &dspec)?;
    }
    let espec = EncodeSpec {
        fps: rate,
        size: Size::Native,
        crf: spec.crf,
        bitrate_kbps: spec.bitrate_kbps,
        preset: spec.preset.clone(),
        keyint_s: spec.keyint_s,
        faststart: spec.faststart,
        encoder: spec.encoder,
        subtitles: Vec::new(),
        deadline: spec.deadline,
    };
    let mut encoder: Option<Encoder> = None;
    let mut first_pts = None;
    for frame in decoder {
        let frame = frame?;
        if encoder.is_none() {
            first_pts = Some(frame.pts_s);
            encoder = Some(Encoder::create(out, frame.width, frame.height, frame.format, &espec)?);
        }
        if let Some(e) = encoder.as_mut() {
            e.push(&frame)?;
        }
    }
    let Some(encoder) = encoder else {
        return Err(VideoError::BadRequest(format!(
            "{}: no frame in [{:.3} s, {}) to cut",
            src.display(),
            spec.range.start_s,
            spec.range.end_s.map_or("end".to_string(), |e| format!("{e:.3} s"))
        )));
    };
    let encode = encoder.finish()?;
    Ok(CutSummary { encode, first_pts_s: first_pts.unwrap_or(spec.range.start_s) })
}

fn default_crf() -> u32 {
    23
}
fn default_preset() -> String {
    "veryfast".into()
}
fn default_keyint() -> f64 {
    2.0
}
fn default_true() -> bool {
    true
}
fn default_threads() -> usize {
    1
}

/// Params of `video.cut`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CutParams {
    /// Resample the clip to this frame rate; default: the source's (30 for variable-rate sources).
    #[serde(default)]
    pub fps: Option<f64>,
    /// Output width (even); unset with `height` unset: the source's size (made even).
    #[serde(default)]
    pub width: Option<u32>,
    /// Output height (even).
    #[serde(default)]
    pub height: Option<u32>,
    /// How width and height apply: `fit`, `fill` (cover and crop the centre; 720×480 fill gives
    /// the paper's dataset format) or `exact`.
    #[serde(default)]
    pub resize: ResizeMode,
    /// x264 constant rate factor, 0–50 (lower: better and larger).
    #[serde(default = "default_crf")]
    pub crf: u32,
    /// Target bitrate in kbit/s instead of CRF.
    #[serde(default)]
    pub bitrate_kbps: Option<u32>,
    /// x264 speed preset: ultrafast, superfast, veryfast, faster, fast, medium, slow, ...
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Seconds between keyframes.
    #[serde(default = "default_keyint")]
    pub keyint_s: f64,
    /// Put the MP4 index first (progressive playback in browsers).
    #[serde(default = "default_true")]
    pub faststart: bool,
    /// `auto` (x264enc, else openh264enc), `x264` or `openh264`.
    #[serde(default)]
    pub encoder: H264Encoder,
    /// Threads per worker cutting clips.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Default for CutParams {
    fn default() -> Self {
        CutParams {
            fps: None,
            width: None,
            height: None,
            resize: ResizeMode::Fit,
            crf: default_crf(),
            bitrate_kbps: None,
            preset: default_preset(),
            keyint_s: default_keyint(),
            faststart: true,
            encoder: H264Encoder::Auto,
            threads: default_threads(),
        }
    }
}

/// The `video.cut` operator.
pub struct VideoCut;

impl TypedOperator for VideoCut {
    type Params = CutParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "video.cut",
            summary: "Write each Clip's span [start, end) as an H.264 MP4 into the run store; sets the Clip's blob",
            doc: "Decodes each Clip's span of its source video (accurate seek; every frame displayed during \
                  the span, or resampled to `fps`) and re-encodes it as H.264 in MP4 (x264enc, else \
                  openh264enc; CRF or bitrate, preset, faststart), optionally resized or cropped (width = \
                  720, height = 480, resize = \"fill\" gives the paper's dataset format). The clip's duration \
                  and frame count are exactly the span's; timestamps are regular. The MP4 goes into the run \
                  store and the Clip comes out with `blob` set to its key, its size and fps updated, and \
                  metadata `clip_frames`. A Clip with metadata `redacted_blob` (curate.deidentify) is cut from \
                  that redacted copy (time 0 = the clip's start) instead of the source.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[Kind::Clip], required: true, doc: "clips to cut" }],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Clip), doc: "the clips, blob set" }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &CutParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        check_encoding(p.crf, &p.preset, p.fps, (p.width, p.height, p.resize), p.keyint_s, p.encoder, p.threads)
    }

    fn fingerprint(&self, p: &CutParams) -> serde_json::Value {
        fingerprint_without(p, &["threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &CutParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let p = p.clone();
        let services = ctx.services.clone();
        let threads = p.threads;
        Ok(pool_stage(ctx, input, threads, move |rec: &Record, ictx| cut_record(rec, &p, services.as_ref(), ictx)))
    }
}

/// `video.cut` on one record.
pub fn cut_record(
    rec: &Record,
    p: &CutParams,
    services: &dyn Services,
    ctx: &ItemCtx,
) -> Result<Vec<Record>, ItemError> {
    let Record::Clip(c) = rec else {
        return Err(ItemError::invalid(format!("video.cut takes Clip records, got a {}", rec.kind())));
    };
    if c.end_s.0 <= c.start_s.0 || c.end_s.0.is_nan() || c.start_s.0.is_nan() {
        return Err(ItemError::invalid(format!("clip span [{}, {}) is empty", c.start_s.0, c.end_s.0)));
    }
    // A redacted copy replaces the source: identifiers never reach a written clip.
    let (src, range) = pixel_source(c, services)?;
    let spec = CutSpec {
        range,
        size: size_from_params(p.width, p.height, p.resize).map_err(ItemError::invalid)?,
        fps: p.fps,
        crf: p.crf,
        bitrate_kbps: p.bitrate_kbps,
        preset: p.preset.clone(),
        keyint_s: p.keyint_s,
        faststart: p.faststart,
        encoder: p.encoder,
        deadline: Some(ctx.deadline),
    };
    let (dir, out) = temp_mp4(services)?;
    let summary = cut(&src, &out, &spec)?;
    let key = services.blob_put_file(&out).map_err(|e| ItemError::transient(e.to_string()))?;
    drop(dir);
    let mut clip = c.clone();
    clip.blob = Some(key);
    clip.width = summary.encode.width;
    clip.height = summary.encode.height;
    clip.fps = F64(summary.encode.fps.0 as f64 / summary.encode.fps.1 as f64);
    clip.metadata.insert("clip_frames".into(), summary.encode.frames.to_string());
    Ok(vec![Record::Clip(clip)])
}
