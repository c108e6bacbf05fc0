//! Video I/O: probing, decoding, cutting and encoding videos, on GStreamer (feature `video`), and
//! the types every later stage uses to read pixels.
//!
//! # Library API
//!
//! * [`probe::probe`] — container, codecs, size, aspect, frame rate, duration, bitrate, frame count,
//!   rotation, audio: a [`ProbeInfo`](crate::api::ProbeInfo).
//! * [`decode::Decoder`] — `Decoder::open(path, &DecodeSpec)` is an iterator of
//!   `Result<Frame, VideoError>`: RGB8 or gray frames at a requested [`Sampling`], [`Size`] and
//!   [`TimeRange`], streamed through bounded queues (a 2-hour video never sits in memory), with a
//!   per-item deadline; sampled frames are exact, or the nearest keyframes ([`Accuracy`]), which
//!   decodes only keyframes. DICOM cine files are decoded by the same API (pure Rust, see
//!   [`crate::source::dicom`]).
//! * [`encode::Encoder`] — frames in, H.264 MP4 out (x264enc, else openh264enc).
//! * [`cut::cut`] — a span `[start, end)` of a video as an MP4, re-encoded so that its duration and
//!   frame count are exactly the request's.
//! * [`synth`] — synthetic test videos with exact ground truth (cuts, fades, bars, text, black and
//!   static frames) and the bad-input corpus.
//!
//! Every failure is a [`VideoError`] naming the file and a fix; [`VideoError::class`] maps it to the
//! [`ErrorClass`] of the `Failure` record an operator emits.
//!
//! # Operators
//!
//! `video.probe`, `video.decode`, `video.cut`, `video.encode` (this module, feature `video`).
//! Pixels never flow through the dataflow: `video.decode` writes the sampled frames into the run
//! store as a frames blob ([`blob`]) and emits the record with its key.

/// Clip metadata: blob key of the clip's redacted copy (`curate.deidentify`), time 0 = the clip's
/// `start_s`. Writers (video.cut, sink.dataset), caption.vlm and sink.report read it instead of the
/// source. Defined here, outside the `video` feature, so that every reader can name it.
pub const REDACTED_BLOB: &str = "redacted_blob";

/// Clip metadata: where the pictures of an MPEG program or transport stream start on its
/// timeline, seconds (`curate.segment` writes it from the probed container). Such a timeline is
/// the stream's clock, not a time 0 of the file; clip times are on it, while transcripts count
/// from where the pictures start: on a transcript's clock a clip spans `[start_s - this, end_s -
/// this)`.
pub const STREAM_START: &str = "stream_start_s";

pub mod blob;
pub mod convert;
pub mod image;

#[cfg(feature = "video")]
mod ahead;
#[cfg(feature = "video")]
pub mod bench;
#[cfg(feature = "video")]
pub mod cut;
#[cfg(feature = "video")]
pub mod decode;
#[cfg(feature = "video")]
pub mod encode;
#[cfg(feature = "video")]
pub(crate) mod gst_util;
pub mod orient;
#[cfg(feature = "video")]
pub(crate) mod pool;
#[cfg(feature = "video")]
pub mod probe;
#[cfg(feature = "video")]
pub mod synth;

use crate::api::{ErrorClass, ItemError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Pixel layout of decoded frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// 8-bit RGB, 3 bytes per pixel, rows packed (no padding).
    #[default]
    Rgb,
    /// 8-bit luma, 1 byte per pixel.
    Gray,
    /// The decoder's own 8-bit YUV planes, handed out without conversion or copy (GStreamer
    /// sources at [`Size::Native`] only; sources that do not decode to YUV, such as DICOM, give
    /// [`PixelFormat::Rgb`] frames instead). Read them with [`Frame::rgb`], [`Frame::gray`] and
    /// [`Frame::shrink_rgb`]. For in-process consumers: not a params or blob format.
    #[serde(skip)]
    #[schemars(skip)]
    Yuv,
}

impl PixelFormat {
    /// Bytes per pixel (of the luma plane for [`PixelFormat::Yuv`]).
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Rgb => 3,
            PixelFormat::Gray | PixelFormat::Yuv => 1,
        }
    }
    /// Name as used in params and blobs.
    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Rgb => "rgb",
            PixelFormat::Gray => "gray",
            PixelFormat::Yuv => "yuv",
        }
    }
}

/// The bytes of a frame: owned, a mapped GStreamer buffer (zero-copy), or owned and recycled.
enum FrameData {
    Owned(Vec<u8>),
    #[cfg(feature = "video")]
    Mapped(gstreamer::MappedBuffer<gstreamer::buffer::Readable>),
    /// Owned bytes that go back to the decoder's pool when the frame is dropped.
    #[cfg(feature = "video")]
    Pooled(pool::Pooled),
}

/// One decoded frame: packed rows (`width * channels` bytes each), top to bottom.
pub struct Frame {
    /// Presentation time in seconds, on the stream's timeline (the position a seek to it uses).
    /// Always the frame's own time: with [`Accuracy::Keyframe`] it may differ from the wanted
    /// time it answers by up to half a keyframe interval.
    pub pts_s: f64,
    /// How long the frame is displayed, when known.
    pub duration_s: Option<f64>,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    data: FrameData,
    /// Where the planes are, for [`PixelFormat::Yuv`] frames.
    yuv: Option<YuvLayout>,
}

/// Plane layout and colour of a [`PixelFormat::Yuv`] frame's bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YuvLayout {
    pub layout: convert::Layout,
    /// Byte offsets of the Y, U and V planes (U: the interleaved chroma plane of NV12/NV21).
    pub offsets: [usize; 3],
    pub y_stride: usize,
    pub c_stride: usize,
    pub matrix: convert::Matrix,
    pub full_range: bool,
}

impl YuvLayout {
    /// The planes of `data` laid out as this says (planes past the end of `data` are empty).
    pub fn planes<'a>(&self, data: &'a [u8]) -> convert::Planes<'a> {
        let plane = |i: usize| data.get(self.offsets[i]..).unwrap_or(&[]);
        let semi = matches!(self.layout, convert::Layout::Nv12 | convert::Layout::Nv21);
        convert::Planes {
            layout: self.layout,
            y: plane(0),
            y_stride: self.y_stride,
            u: plane(1),
            v: if semi { &[] } else { plane(2) },
            c_stride: self.c_stride,
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("pts_s", &self.pts_s)
            .field("duration_s", &self.duration_s)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .finish()
    }
}

impl Frame {
    /// A frame over owned bytes; `data.len()` must be `width * height * channels`.
    pub fn new(
        pts_s: f64,
        duration_s: Option<f64>,
        width: u32,
        height: u32,
        format: PixelFormat,
        data: Vec<u8>,
    ) -> Frame {
        debug_assert_eq!(data.len(), width as usize * height as usize * format.channels());
        debug_assert!(format != PixelFormat::Yuv, "YUV frames carry their layout: Frame::yuv");
        Frame { pts_s, duration_s, width, height, format, data: FrameData::Owned(data), yuv: None }
    }

    #[cfg(feature = "video")]
    pub(crate) fn mapped(
        pts_s: f64,
        duration_s: Option<f64>,
        width: u32,
        height: u32,
        format: PixelFormat,
        map: gstreamer::MappedBuffer<gstreamer::buffer::Readable>,
    ) -> Frame {
        Frame { pts_s, duration_s, width, height, format, data: FrameData::Mapped(map), yuv: None }
    }

    /// This frame with its owned bytes going back to `pool` when it is dropped (mapped bytes
    /// stay as they are).
    #[cfg(feature = "video")]
    pub(crate) fn returning_to(mut self, pool: &pool::BufPool) -> Frame {
        if let FrameData::Owned(v) = &mut self.data {
            self.data = FrameData::Pooled(pool::Pooled::new(std::mem::take(v), pool));
        }
        self
    }

    /// A [`PixelFormat::Yuv`] frame over a mapped decoder buffer laid out as `yuv` says.
    #[cfg(feature = "video")]
    pub(crate) fn mapped_yuv(
        pts_s: f64,
        duration_s: Option<f64>,
        width: u32,
        height: u32,
        map: gstreamer::MappedBuffer<gstreamer::buffer::Readable>,
        yuv: YuvLayout,
    ) -> Frame {
        Frame { data: FrameData::Mapped(map), ..Frame::owned_yuv(pts_s, duration_s, width, height, Vec::new(), yuv) }
    }

    /// A [`PixelFormat::Yuv`] frame over owned bytes laid out as `yuv` says (tests, other sources).
    pub fn owned_yuv(
        pts_s: f64,
        duration_s: Option<f64>,
        width: u32,
        height: u32,
        data: Vec<u8>,
        yuv: YuvLayout,
    ) -> Frame {
        Frame {
            pts_s,
            duration_s,
            width,
            height,
            format: PixelFormat::Yuv,
            data: FrameData::Owned(data),
            yuv: Some(yuv),
        }
    }

    /// The pixels: `height` rows of `width * channels` bytes (all the buffer's bytes for
    /// [`PixelFormat::Yuv`]: see [`Frame::planes`]).
    pub fn data(&self) -> &[u8] {
        let n = match self.format {
            PixelFormat::Yuv => usize::MAX,
            f => self.width as usize * self.height as usize * f.channels(),
        };
        match &self.data {
            FrameData::Owned(v) => &v[..n.min(v.len())],
            #[cfg(feature = "video")]
            FrameData::Mapped(m) => &m.as_slice()[..n.min(m.len())],
            #[cfg(feature = "video")]
            FrameData::Pooled(p) => &p.buf[..n.min(p.buf.len())],
        }
    }

    /// The pixels as an owned vector (copies only when the frame is a mapped GStreamer buffer).
    pub fn into_vec(self) -> Vec<u8> {
        match self.data {
            FrameData::Owned(v) => v,
            #[cfg(feature = "video")]
            FrameData::Mapped(_) => self.data().to_vec(),
            // Taken out of the pool for good: nothing goes back.
            #[cfg(feature = "video")]
            FrameData::Pooled(mut p) => std::mem::take(&mut p.buf),
        }
    }

    /// Whether the pixels are a mapped GStreamer buffer (no copy was made: full-range gray).
    pub fn is_zero_copy(&self) -> bool {
        #[cfg(feature = "video")]
        return matches!(self.data, FrameData::Mapped(_));
        #[cfg(not(feature = "video"))]
        false
    }

    /// Row stride in bytes.
    pub fn stride(&self) -> usize {
        self.width as usize * self.format.channels()
    }

    /// Mean pixel value over all channels.
    pub fn mean(&self) -> f64 {
        let d = self.data();
        if d.is_empty() {
            return 0.0;
        }
        d.iter().map(|&v| v as u64).sum::<u64>() as f64 / d.len() as f64
    }

    /// The planes of a [`PixelFormat::Yuv`] frame and their colour coefficients; `None` for
    /// other formats or a buffer smaller than its layout says.
    pub fn planes(&self) -> Option<(convert::Planes<'_>, YuvLayout)> {
        let l = self.yuv?;
        let planes = l.planes(self.data());
        convert::fits(&planes, 0, 0, self.width as usize, self.height as usize).then_some((planes, l))
    }

    /// The frame as packed RGB8 (`width × height × 3`): borrowed when it is RGB already,
    /// converted from YUV or gray otherwise. `None` when a YUV buffer is short.
    pub fn rgb(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        let (w, h) = (self.width as usize, self.height as usize);
        match self.format {
            PixelFormat::Rgb => Some(Cow::Borrowed(self.data())),
            PixelFormat::Gray => Some(Cow::Owned(image::gray_to_rgb(self.data()))),
            PixelFormat::Yuv => {
                let (p, l) = self.planes()?;
                convert::to_rgb(&p, &convert::Coeffs::new(l.matrix, l.full_range), 0, 0, w, h).map(Cow::Owned)
            }
        }
    }

    /// The frame as full-range 8-bit luma (`width × height`): borrowed when it is gray already,
    /// the (range-expanded) Y plane of YUV, BT.601 luma of RGB. `None` when a YUV buffer is short.
    pub fn gray(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        let (w, h) = (self.width as usize, self.height as usize);
        match self.format {
            PixelFormat::Gray => Some(Cow::Borrowed(self.data())),
            PixelFormat::Rgb => Some(Cow::Owned(image::rgb_to_gray(self.data()))),
            PixelFormat::Yuv => {
                let (p, l) = self.planes()?;
                convert::to_gray(&p, l.full_range, 0, 0, w, h).map(Cow::Owned)
            }
        }
    }

    /// The frame box-averaged down (or repeated up) to `dw × dh` packed RGB8. A YUV frame is
    /// averaged plane by plane (chroma onto the output grid, as 4:4:4) and only the small result
    /// is converted, so this reads each source byte once and never builds a full-size RGB frame.
    /// `None` when a YUV buffer is short.
    pub fn shrink_rgb(&self, dw: u32, dh: u32) -> Option<Vec<u8>> {
        let (sw, sh, dw, dh) = (self.width as usize, self.height as usize, dw as usize, dh as usize);
        match self.format {
            PixelFormat::Rgb | PixelFormat::Gray => {
                let c = self.format.channels();
                let mut out = vec![0u8; dw * dh * 3];
                for ch in 0..3 {
                    let plane = image::PlaneRef { data: self.data(), stride: sw * c, step: c, offset: ch.min(c - 1) };
                    image::shrink_plane(&plane, sw, sh, dw, dh, &mut out, 3, ch);
                }
                Some(out)
            }
            PixelFormat::Yuv => {
                let (p, l) = self.planes()?;
                let (cw, chh) = match l.layout {
                    convert::Layout::P444 => (sw, sh),
                    convert::Layout::P422 => (sw.div_ceil(2), sh),
                    _ => (sw.div_ceil(2), sh.div_ceil(2)),
                };
                let mut y = vec![0u8; dw * dh];
                let yp = image::PlaneRef { data: p.y, stride: p.y_stride, step: 1, offset: 0 };
                image::shrink_plane(&yp, sw, sh, dw, dh, &mut y, 1, 0);
                let (u, v) = match l.layout {
                    convert::Layout::Nv12 => (
                        image::PlaneRef { data: p.u, stride: p.c_stride, step: 2, offset: 0 },
                        image::PlaneRef { data: p.u, stride: p.c_stride, step: 2, offset: 1 },
                    ),
                    convert::Layout::Nv21 => (
                        image::PlaneRef { data: p.u, stride: p.c_stride, step: 2, offset: 1 },
                        image::PlaneRef { data: p.u, stride: p.c_stride, step: 2, offset: 0 },
                    ),
                    _ => (
                        image::PlaneRef { data: p.u, stride: p.c_stride, step: 1, offset: 0 },
                        image::PlaneRef { data: p.v, stride: p.c_stride, step: 1, offset: 0 },
                    ),
                };
                let (mut us, mut vs) = (vec![0u8; dw * dh], vec![0u8; dw * dh]);
                image::shrink_plane(&u, cw, chh, dw, dh, &mut us, 1, 0);
                image::shrink_plane(&v, cw, chh, dw, dh, &mut vs, 1, 0);
                let small = convert::Planes {
                    layout: convert::Layout::P444,
                    y: &y,
                    y_stride: dw,
                    u: &us,
                    v: &vs,
                    c_stride: dw,
                };
                convert::to_rgb(&small, &convert::Coeffs::new(l.matrix, l.full_range), 0, 0, dw, dh)
            }
        }
    }
}

/// Which frames to decode. `Fps`, `Uniform` and `Timestamps` name wanted times; the request's
/// [`Accuracy`] says whether each gets the frame displayed then (below) or the nearest keyframe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Sampling {
    /// Every frame in the range.
    #[default]
    All,
    /// At most `fps` frames per second: for each tick `start + k / fps` the frame displayed then.
    /// A frame is never returned twice (ticks falling on one frame collapse).
    Fps { fps: f64 },
    /// `count` frames spread uniformly over the range: the frames displayed at the centres of
    /// `count` equal sub-spans. Needs a known end (the range's or the video's duration).
    Uniform { count: u32 },
    /// The frames displayed at these times (seconds, stream timeline); sorted, deduplicated, and
    /// limited to the range.
    Timestamps { times_s: Vec<f64> },
}

/// How closely sampled frames follow the wanted times of a [`Sampling`] (other than
/// [`Sampling::All`], which wants every frame and is always exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accuracy {
    /// The frame displayed at each wanted time. Reaching it means decoding every frame from the
    /// keyframe before it, so with keyframes every few seconds 1 fps sampling costs almost a
    /// full decode.
    #[default]
    Exact,
    /// The keyframe nearest to each wanted time (ties: the earlier one), so that only keyframes
    /// are decoded: non-key frames are dropped before the decoder and the decoder skips ahead
    /// with keyframe seeks. A frame's reported time is the keyframe's own, which may differ
    /// from the wanted time by up to half the keyframe interval (more where keyframes are
    /// irregular); wanted times that share a nearest keyframe yield it once. Only keyframes
    /// inside the range are returned; a range that holds no keyframe at all is sampled exactly
    /// instead. DICOM cines (every frame is a keyframe) give the exact frames.
    Keyframe,
}

impl Accuracy {
    /// Name as used in params.
    pub fn as_str(self) -> &'static str {
        match self {
            Accuracy::Exact => "exact",
            Accuracy::Keyframe => "keyframe",
        }
    }
    /// Whether this is [`Accuracy::Exact`] (the default).
    pub fn is_exact(&self) -> bool {
        *self == Accuracy::Exact
    }
}

/// Output size. Sizes computed from the source keep its display aspect (pixel aspect ratio
/// applied) and are rounded to even numbers, as H.264 4:2:0 needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Size {
    /// The stored size, unchanged (may be odd; pixel aspect not applied).
    #[default]
    Native,
    /// Largest size inside `width × height` keeping the aspect; 0 leaves a side unconstrained.
    Fit { width: u32, height: u32 },
    /// Scale to cover `width × height` keeping the aspect, then crop the centre to exactly that.
    Fill { width: u32, height: u32 },
    /// Stretch to exactly `width × height`.
    Exact { width: u32, height: u32 },
}

/// A span of the stream timeline, `[start_s, end_s)`; `end_s = None` means to the end.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct TimeRange {
    pub start_s: f64,
    pub end_s: Option<f64>,
}

impl TimeRange {
    /// The whole video.
    pub const ALL: TimeRange = TimeRange { start_s: 0.0, end_s: None };
    pub fn new(start_s: f64, end_s: f64) -> TimeRange {
        TimeRange { start_s, end_s: Some(end_s) }
    }
}

/// What [`decode::Decoder::open`] decodes.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeSpec {
    pub sampling: Sampling,
    pub size: Size,
    pub range: TimeRange,
    pub format: PixelFormat,
    /// Exact frames, or the nearest keyframes (much cheaper for sparse sampling).
    pub accuracy: Accuracy,
    /// Give up (with [`VideoError::Timeout`]) at this instant; `None`: no deadline.
    pub deadline: Option<Instant>,
    /// Refuse streams with more pixels per frame than this (declared size), before decoding.
    pub max_pixels: u64,
    /// Refuse streams wider or taller than this.
    pub max_side: u32,
    /// Where the video's frames end on its timeline as `video.probe` measured it (the record's
    /// `probe.end_s()`: start plus duration). The decoder takes it over what the container
    /// declares: an audio track that runs on declares more than the frames last; files written while
    /// recording (live WebM/Matroska, MPEG-TS) declare nothing or only their first fraction of
    /// a second, which would confine uniform sampling to that fraction.
    pub duration_hint: Option<f64>,
}

/// What the decoder found out about the stream when it opened it.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamInfo {
    /// Stored frame size (before `orientation`).
    pub width: u32,
    pub height: u32,
    /// Pixel aspect ratio (num, den) of the stored frames.
    pub par: (u32, u32),
    /// How the container says to show the stored frames (a phone's portrait recording: turned
    /// 90°). RGB and gray frames come out already shown so, sized and cropped as shown; YUV
    /// frames are the stored planes (turn what is measured on them with [`orient`]).
    pub orientation: orient::Orientation,
    /// Frame rate (num, den); (0, 1) when variable or unknown.
    pub fps: (u32, u32),
    pub duration_s: Option<f64>,
    /// Size of the frames the decoder yields (as shown).
    pub out_width: u32,
    pub out_height: u32,
    /// Description of the video codec, when known.
    pub codec: Option<String>,
    /// The container is an MPEG program or transport stream, whose timeline is its clock (it
    /// starts where the clock stood, not at a time 0 of the file).
    pub clock_timeline: bool,
}

impl StreamInfo {
    /// Frame rate as a number, when known.
    pub fn fps_f64(&self) -> Option<f64> {
        (self.fps.0 > 0 && self.fps.1 > 0).then(|| self.fps.0 as f64 / self.fps.1 as f64)
    }
}

/// Counters of one decode, for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Frames the decoder produced (kept or not).
    pub decoded: u64,
    /// Frames handed to the caller.
    pub delivered: u64,
    /// Compressed non-key frames dropped before the decoder, never decoded
    /// ([`Accuracy::Keyframe`]).
    pub skipped: u64,
    /// Skip-ahead seeks made.
    pub seeks: u64,
    /// Warnings GStreamer posted (concealed decode errors and the like).
    pub warnings: u64,
}

/// Default refusal limit: 8192 × 8192 pixels per frame.
pub const DEFAULT_MAX_PIXELS: u64 = 8192 * 8192;
/// Default refusal limit for either side.
pub const DEFAULT_MAX_SIDE: u32 = 16384;

impl Default for DecodeSpec {
    fn default() -> Self {
        DecodeSpec {
            sampling: Sampling::All,
            size: Size::Native,
            range: TimeRange::ALL,
            format: PixelFormat::Rgb,
            accuracy: Accuracy::Exact,
            deadline: None,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_side: DEFAULT_MAX_SIDE,
            duration_hint: None,
        }
    }
}

impl DecodeSpec {
    /// Every frame, native size, RGB.
    pub fn all() -> DecodeSpec {
        DecodeSpec::default()
    }
    pub fn with_sampling(mut self, s: Sampling) -> Self {
        self.sampling = s;
        self
    }
    pub fn with_size(mut self, s: Size) -> Self {
        self.size = s;
        self
    }
    pub fn with_range(mut self, r: TimeRange) -> Self {
        self.range = r;
        self
    }
    pub fn with_format(mut self, f: PixelFormat) -> Self {
        self.format = f;
        self
    }
    pub fn with_accuracy(mut self, a: Accuracy) -> Self {
        self.accuracy = a;
        self
    }
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.deadline = Some(Instant::now() + t);
        self
    }
    pub fn with_deadline(mut self, d: Instant) -> Self {
        self.deadline = Some(d);
        self
    }
    /// The probed duration, when known (see [`DecodeSpec::duration_hint`]).
    pub fn with_duration_hint(mut self, d: Option<f64>) -> Self {
        self.duration_hint = d.filter(|d| d.is_finite() && *d > 0.0);
        self
    }

    /// Check the request itself (not the video): ranges, rates, sizes.
    pub fn validate(&self) -> Result<(), VideoError> {
        let r = &self.range;
        if !(r.start_s.is_finite() && r.start_s >= 0.0) {
            return Err(VideoError::BadRequest(format!("range start {} must be a finite number ≥ 0", r.start_s)));
        }
        if let Some(e) = r.end_s
            && !(e.is_finite() && e > r.start_s)
        {
            return Err(VideoError::BadRequest(format!("range end {e} must be after its start {}", r.start_s)));
        }
        match &self.sampling {
            Sampling::Fps { fps } if !(fps.is_finite() && *fps > 0.0) => {
                return Err(VideoError::BadRequest(format!("sampling fps {fps} must be a positive number")));
            }
            Sampling::Uniform { count: 0 } => {
                return Err(VideoError::BadRequest("uniform sampling needs a count ≥ 1".into()));
            }
            Sampling::Timestamps { times_s } if times_s.iter().any(|t| !t.is_finite()) => {
                return Err(VideoError::BadRequest("timestamps must be finite numbers".into()));
            }
            _ => {}
        }
        if self.accuracy == Accuracy::Keyframe && self.sampling == Sampling::All {
            return Err(VideoError::BadRequest(
                "keyframe accuracy needs a sampling (fps, uniform or timestamps): with every frame wanted there are \
                 no times to snap to keyframes"
                    .into(),
            ));
        }
        if self.format == PixelFormat::Yuv && self.size != Size::Native {
            return Err(VideoError::BadRequest(
                "YUV frames are the decoder's own planes: ask for them at the native size".into(),
            ));
        }
        validate_size(&self.size).map_err(VideoError::BadRequest)
    }
}

/// Check a [`Size`] request: explicit sizes must be even and positive.
pub fn validate_size(size: &Size) -> Result<(), String> {
    let even = |w: u32, h: u32, zero_ok: bool| -> Result<(), String> {
        for (name, v) in [("width", w), ("height", h)] {
            if v == 0 && !zero_ok {
                return Err(format!("{name} must be at least 2"));
            }
            if v % 2 == 1 {
                return Err(format!("{name} {v} must be even (H.264 4:2:0 needs even sizes); use {}", v + 1));
            }
            if v > DEFAULT_MAX_SIDE {
                return Err(format!("{name} {v} is larger than {DEFAULT_MAX_SIDE}"));
            }
        }
        Ok(())
    };
    match *size {
        Size::Native => Ok(()),
        Size::Fit { width, height } => {
            if width == 0 && height == 0 {
                return Err("fit needs a width or a height".into());
            }
            even(width, height, true)
        }
        Size::Fill { width, height } | Size::Exact { width, height } => even(width, height, false),
    }
}

/// Build a [`Size`] from operator params: no width or height → native; `resize` says how.
pub fn size_from_params(width: Option<u32>, height: Option<u32>, resize: ResizeMode) -> Result<Size, String> {
    let size = match (width, height, resize) {
        (None, None, _) => Size::Native,
        (w, h, ResizeMode::Fit) => Size::Fit { width: w.unwrap_or(0), height: h.unwrap_or(0) },
        (Some(w), Some(h), ResizeMode::Fill) => Size::Fill { width: w, height: h },
        (Some(w), Some(h), ResizeMode::Exact) => Size::Exact { width: w, height: h },
        (_, _, mode) => return Err(format!("resize = \"{}\" needs both width and height", mode.as_str())),
    };
    validate_size(&size)?;
    Ok(size)
}

/// How operator params turn `width`/`height` into a [`Size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Fit inside width × height, keeping the aspect (one of them may be left out).
    #[default]
    Fit,
    /// Cover width × height keeping the aspect, crop the centre.
    Fill,
    /// Stretch to exactly width × height.
    Exact,
}

impl ResizeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeMode::Fit => "fit",
            ResizeMode::Fill => "fill",
            ResizeMode::Exact => "exact",
        }
    }
}

/// Round to the nearest even number, at least 2.
pub fn even(x: f64) -> u32 {
    let v = ((x / 2.0).round() * 2.0).max(2.0);
    v.min(u32::MAX as f64 - 1.0) as u32
}

fn even_up(x: f64) -> u32 {
    let v = ((x / 2.0 - 1e-9).ceil() * 2.0).max(2.0);
    v.min(u32::MAX as f64 - 1.0) as u32
}

/// Where a source frame goes: scaled to `scale_w × scale_h` (square pixels unless native), then
/// the crop `(x, y, w, h)` of that, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub scale_w: u32,
    pub scale_h: u32,
    pub crop: Option<(u32, u32, u32, u32)>,
}

impl Geometry {
    /// Final output size.
    pub fn out_size(&self) -> (u32, u32) {
        match self.crop {
            Some((_, _, w, h)) => (w, h),
            None => (self.scale_w, self.scale_h),
        }
    }

    /// The geometry of `size` for a `src_w × src_h` source with pixel aspect `par` (num, den).
    pub fn compute(size: &Size, src_w: u32, src_h: u32, par: (u32, u32)) -> Geometry {
        let (pn, pd) = if par.0 == 0 || par.1 == 0 { (1, 1) } else { par };
        let dw = src_w.max(1) as f64 * pn as f64 / pd as f64;
        let dh = src_h.max(1) as f64;
        match *size {
            Size::Native => Geometry { scale_w: src_w, scale_h: src_h, crop: None },
            Size::Exact { width, height } => Geometry { scale_w: width, scale_h: height, crop: None },
            Size::Fit { width, height } => {
                let sx = if width == 0 { f64::INFINITY } else { width as f64 / dw };
                let sy = if height == 0 { f64::INFINITY } else { height as f64 / dh };
                let s = sx.min(sy);
                let (mut w, mut h) = (even(dw * s), even(dh * s));
                if width > 0 {
                    w = w.min(width);
                }
                if height > 0 {
                    h = h.min(height);
                }
                Geometry { scale_w: w, scale_h: h, crop: None }
            }
            Size::Fill { width, height } => {
                let s = (width as f64 / dw).max(height as f64 / dh);
                let w = even_up(dw * s).max(width);
                let h = even_up(dh * s).max(height);
                let x = (w - width) / 2;
                let y = (h - height) / 2;
                let crop = if (w, h) == (width, height) { None } else { Some((x, y, width, height)) };
                Geometry { scale_w: w, scale_h: h, crop }
            }
        }
    }
}

/// Tolerance when matching timestamps: frame boundaries computed in nanoseconds may be off by a
/// rounding step; 1 ms is far below any frame duration.
pub(crate) const TIME_TOL: f64 = 1e-3;

/// The next sampling targets: a grid, or an explicit sorted list.
#[derive(Clone, Debug)]
enum Targets {
    All,
    Grid { start: f64, step: f64, k: u64 },
    List { times: Vec<f64>, next: usize },
}

/// Decides which decoded frames a request keeps. Frames arrive in presentation order; a frame
/// displayed over `[pts, pts + dur)` satisfies every pending target before its end, so each
/// target gets the frame displayed at it (or the first frame after it, where nothing is shown).
#[derive(Clone, Debug)]
pub(crate) struct Selector {
    start: f64,
    end: f64,
    targets: Targets,
    done: bool,
    /// Uniform sampling's `(stop, count)` until the first frame inside the range arrives: when
    /// the picture starts after the first wanted time (a recording whose first frames cannot be
    /// decoded, a stream whose timestamps start late), the times are spread again over the span
    /// the frames actually cover, so that `count` distinct frames still come out.
    respread: Option<(f64, usize)>,
}

impl Selector {
    /// `duration` is the video's, when known (needed by uniform sampling without a range end).
    pub(crate) fn new(sampling: &Sampling, range: &TimeRange, duration: Option<f64>) -> Result<Selector, VideoError> {
        let start = range.start_s.max(0.0);
        let end = range.end_s.unwrap_or(f64::INFINITY);
        let mut respread = None;
        let targets = match sampling {
            Sampling::All => Targets::All,
            Sampling::Fps { fps } => Targets::Grid { start, step: 1.0 / fps, k: 0 },
            Sampling::Uniform { count } => {
                let stop = end.min(duration.unwrap_or(f64::INFINITY));
                if !stop.is_finite() {
                    return Err(VideoError::BadRequest(
                        "uniform sampling needs a known end: give the range an end, or probe the video first".into(),
                    ));
                }
                let n = (*count).max(1) as usize;
                respread = Some((stop, n));
                Targets::List { times: spread(start, stop, n), next: 0 }
            }
            Sampling::Timestamps { times_s } => {
                let mut times: Vec<f64> =
                    times_s.iter().copied().filter(|t| *t >= start - TIME_TOL && *t < end).collect();
                times.sort_by(f64::total_cmp);
                times.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
                Targets::List { times, next: 0 }
            }
        };
        let mut s = Selector { start, end, targets, done: false, respread };
        if s.next_target().is_none() && !matches!(s.targets, Targets::All) {
            s.done = true;
        }
        Ok(s)
    }

    /// The earliest time still wanted (None when every frame is wanted, or when done).
    pub(crate) fn next_target(&self) -> Option<f64> {
        match &self.targets {
            Targets::All => None,
            Targets::Grid { start, step, k } => {
                let t = start + *k as f64 * step;
                (t < self.end).then_some(t)
            }
            Targets::List { times, next } => times.get(*next).copied(),
        }
    }

    fn advance(&mut self) {
        match &mut self.targets {
            Targets::All => {}
            Targets::Grid { k, .. } => *k += 1,
            Targets::List { next, .. } => *next += 1,
        }
    }

    /// Whether no further frame can be kept.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// The first frame inside the range is shown from `pts`: uniform sampling whose first wanted
    /// time lies before it spreads its times over `[pts, stop)` instead.
    fn first_frame_at(&mut self, pts: f64) {
        let Some((stop, n)) = self.respread.take() else { return };
        if let Targets::List { times, next: 0 } = &mut self.targets
            && times.first().is_some_and(|t| pts > t + TIME_TOL)
            && stop > pts + TIME_TOL
        {
            *times = spread(pts, stop, n);
        }
    }

    /// Offer a frame displayed over `[pts, pts + dur)`; returns whether to keep it.
    pub(crate) fn offer(&mut self, pts: f64, dur: f64) -> bool {
        if self.done {
            return false;
        }
        let dur = if dur.is_finite() && dur > 0.0 { dur } else { 1.0 / 30.0 };
        if pts >= self.end - TIME_TOL {
            self.done = true;
            return false;
        }
        let frame_end = pts + dur;
        if matches!(self.targets, Targets::All) {
            return frame_end > self.start + TIME_TOL;
        }
        if frame_end > self.start + TIME_TOL {
            self.first_frame_at(pts);
        }
        let mut keep = false;
        while let Some(t) = self.next_target() {
            if t < frame_end - TIME_TOL {
                keep = true;
                self.advance();
            } else {
                break;
            }
        }
        if self.next_target().is_none() {
            self.done = true;
        }
        keep
    }
}

/// `n` times spread evenly over `[start, stop)`: the middles of `n` equal parts.
fn spread(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let span = (stop - start).max(0.0);
    (0..n).map(|i| start + (i as f64 + 0.5) * span / n as f64).collect()
}

/// [`Accuracy::Keyframe`] selection: keyframes are offered in presentation order, and each wanted
/// time gets the nearest of them (ties: the earlier). A keyframe is handed out as soon as some
/// wanted time picks it, and never twice; one not picked yet is held back until the next keyframe
/// (or the end) shows whether a later wanted time picks it. Only keyframes inside the range
/// count. `T` is what travels with a keyframe (a decoded sample). Used by the GStreamer decoder.
#[cfg_attr(not(feature = "video"), allow(dead_code))]
pub(crate) struct KeyPicker<T> {
    sel: Selector,
    /// The latest keyframe offered: its time, and its item until handed out.
    held: Option<(f64, Option<T>)>,
    ready: std::collections::VecDeque<(f64, T)>,
    /// Keyframes inside the range offered so far.
    seen: u64,
    finished: bool,
}

#[cfg_attr(not(feature = "video"), allow(dead_code))]
impl<T> KeyPicker<T> {
    /// Over the wanted times of `sel` (which has not been offered frames).
    pub(crate) fn new(sel: Selector) -> KeyPicker<T> {
        KeyPicker { sel, held: None, ready: Default::default(), seen: 0, finished: false }
    }

    /// The earliest wanted time not answered yet.
    pub(crate) fn next_target(&self) -> Option<f64> {
        if self.finished { None } else { self.sel.next_target() }
    }

    /// Keyframes inside the range offered so far.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Whether nothing more can be picked (items may still wait in [`KeyPicker::pop`]).
    pub(crate) fn done(&self) -> bool {
        self.next_target().is_none()
    }

    /// The next picked keyframe, in presentation order.
    pub(crate) fn pop(&mut self) -> Option<(f64, T)> {
        self.ready.pop_front()
    }

    /// Offer the next keyframe, shown from `pts`.
    pub(crate) fn offer(&mut self, pts: f64, item: T) {
        if self.finished || pts < self.sel.start - TIME_TOL {
            return;
        }
        if pts >= self.sel.end - TIME_TOL {
            // Past the range: the wanted times left are nearest to the last keyframe inside it.
            self.finish(self.sel.end);
            return;
        }
        if self.held.as_ref().is_some_and(|(h, _)| pts <= h + TIME_TOL) {
            // Seen already (a seek landed on it again).
            return;
        }
        if self.seen == 0 {
            self.sel.first_frame_at(pts);
        }
        self.seen += 1;
        let mut picked = false;
        while let Some(t) = self.sel.next_target() {
            if t > pts + TIME_TOL {
                break;
            }
            match &mut self.held {
                Some((h, slot)) if t - *h <= pts - t + TIME_TOL => {
                    if let Some(it) = slot.take() {
                        self.ready.push_back((*h, it));
                    }
                }
                _ => picked = true,
            }
            self.sel.advance();
        }
        let slot = if picked {
            self.ready.push_back((pts, item));
            None
        } else {
            Some(item)
        };
        self.held = Some((pts, slot));
    }

    /// Finished with wanted times left and not one keyframe inside the range (the range lies
    /// between two keyframes): only exact sampling can answer it.
    pub(crate) fn range_without_keyframe(&self) -> bool {
        self.finished && self.seen == 0 && self.sel.next_target().is_some()
    }

    /// The stream (or what was decoded of it) ended at `stream_end`: the wanted times left
    /// before it are nearest to the last keyframe.
    pub(crate) fn finish(&mut self, stream_end: f64) {
        if self.finished {
            return;
        }
        self.finished = true;
        let wanted = self.sel.next_target().is_some_and(|t| t < stream_end - TIME_TOL);
        if let Some((h, slot)) = &mut self.held
            && wanted
            && let Some(it) = slot.take()
        {
            self.ready.push_back((*h, it));
        }
    }
}

/// Why a video could not be read or written. Each names the file and, where there is one, a fix.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// Missing, a folder, or permission denied.
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// A zero-byte file.
    #[error("{path} is empty (0 bytes); the copy or download that made it probably failed: fetch it again")]
    Empty { path: PathBuf },
    /// Not a media file, a still image, audio only, or fewer frames than required.
    #[error("{path} is not a usable video: {detail}")]
    NotVideo { path: PathBuf, detail: String },
    /// Cut short: the container's index or the data it points to is missing.
    #[error("{path} is truncated or incomplete: {detail}; re-copy it from its source")]
    Truncated { path: PathBuf, detail: String },
    /// The container or the bitstream is damaged.
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// A codec without a decoder, a declared size over the limits, an unsupported DICOM encoding.
    #[error("{path}: unsupported: {detail}")]
    Unsupported { path: PathBuf, detail: String },
    /// The per-item deadline passed.
    #[error(
        "{path}: gave up after {secs:.1} s while {stage}; raise the item timeout (graph `item_timeout_s`) if the file is just large"
    )]
    Timeout { path: PathBuf, secs: f64, stage: String },
    /// The request cannot be met (bad range, sampling or size).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Writing an output failed.
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// GStreamer itself failed (initialisation, a missing element, an internal error).
    #[error("GStreamer: {0}")]
    Backend(String),
}

impl VideoError {
    /// The failure class a `Failure` record gets.
    pub fn class(&self) -> ErrorClass {
        match self {
            VideoError::Unreadable { .. } => ErrorClass::Unreadable,
            VideoError::Empty { .. }
            | VideoError::NotVideo { .. }
            | VideoError::Truncated { .. }
            | VideoError::Corrupt { .. }
            | VideoError::BadRequest(_) => ErrorClass::InvalidInput,
            VideoError::Unsupported { .. } => ErrorClass::Unsupported,
            VideoError::Timeout { .. } => ErrorClass::Timeout,
            VideoError::Write { .. } => ErrorClass::Transient,
            VideoError::Backend(_) => ErrorClass::Backend,
        }
    }

    /// The file this error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            VideoError::Unreadable { path, .. }
            | VideoError::Empty { path }
            | VideoError::NotVideo { path, .. }
            | VideoError::Truncated { path, .. }
            | VideoError::Corrupt { path, .. }
            | VideoError::Unsupported { path, .. }
            | VideoError::Timeout { path, .. }
            | VideoError::Write { path, .. } => Some(path),
            VideoError::BadRequest(_) | VideoError::Backend(_) => None,
        }
    }

    /// [`VideoError::NotVideo`] for `path`.
    pub fn not_video(path: &Path, detail: impl Into<String>) -> VideoError {
        VideoError::NotVideo { path: path.to_path_buf(), detail: detail.into() }
    }
    /// [`VideoError::Corrupt`] for `path`.
    pub fn corrupt(path: &Path, detail: impl Into<String>) -> VideoError {
        VideoError::Corrupt { path: path.to_path_buf(), detail: detail.into() }
    }
    /// [`VideoError::Unsupported`] for `path`.
    pub fn unsupported(path: &Path, detail: impl Into<String>) -> VideoError {
        VideoError::Unsupported { path: path.to_path_buf(), detail: detail.into() }
    }
    /// [`VideoError::Timeout`] for `path`, started at `started`, while doing `stage`.
    pub fn timeout(path: &Path, started: Instant, stage: &str) -> VideoError {
        VideoError::Timeout { path: path.to_path_buf(), secs: started.elapsed().as_secs_f64(), stage: stage.into() }
    }
    /// [`VideoError::Write`] for `path`.
    pub fn write(path: &Path, reason: impl std::fmt::Display) -> VideoError {
        VideoError::Write { path: path.to_path_buf(), reason: reason.to_string() }
    }
}

impl From<VideoError> for ItemError {
    fn from(e: VideoError) -> ItemError {
        ItemError::new(e.class(), e.to_string())
    }
}

/// Check that `path` is a readable, non-empty regular file; returns its size.
pub fn check_input_file(path: &Path) -> Result<u64, VideoError> {
    let unreadable = |reason: String| VideoError::Unreadable { path: path.to_path_buf(), reason };
    let md = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => unreadable("no such file (check the path)".into()),
        std::io::ErrorKind::PermissionDenied => unreadable("permission denied (check the file's permissions)".into()),
        _ => unreadable(e.to_string()),
    })?;
    if md.is_dir() {
        return Err(unreadable("it is a folder, not a file (use a glob such as `folder/*.mp4`)".into()));
    }
    if !md.is_file() {
        return Err(unreadable("not a regular file (a device, socket or pipe)".into()));
    }
    // Opening proves read permission (metadata alone does not).
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => unreadable("permission denied (check the file's permissions)".into()),
        _ => unreadable(e.to_string()),
    })?;
    if md.len() == 0 {
        return Err(VideoError::Empty { path: path.to_path_buf() });
    }
    Ok(md.len())
}

/// Check the box structure of ISO base media files (MP4, MOV, M4A, 3GP): a file cut short has a
/// box running past its end or no index (`moov`), which GStreamer reports only vaguely (or, inside
/// decodebin, sometimes not at all). Other files pass unchecked.
pub fn check_container(path: &Path) -> Result<(), VideoError> {
    use std::io::{Read, Seek, SeekFrom};
    let unreadable = |e: std::io::Error| VideoError::Unreadable { path: path.to_path_buf(), reason: e.to_string() };
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let len = f.metadata().map_err(unreadable)?.len();
    let mut head = [0u8; 16];
    let read_header = |f: &mut std::fs::File, pos: u64, head: &mut [u8; 16]| -> std::io::Result<usize> {
        f.seek(SeekFrom::Start(pos))?;
        let mut n = 0;
        while n < 16 {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    };
    if read_header(&mut f, 0, &mut head).map_err(unreadable)? < 8 || &head[4..8] != b"ftyp" {
        return Ok(());
    }
    let (mut pos, mut moov, mut boxes) = (0u64, false, 0u32);
    while pos + 8 <= len && boxes < 100_000 {
        boxes += 1;
        let n = read_header(&mut f, pos, &mut head).map_err(unreadable)?;
        let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let kind = String::from_utf8_lossy(&head[4..8]).to_string();
        let (size, header) = match size32 {
            0 => (len - pos, 8),
            1 if n >= 16 => {
                (u64::from_be_bytes([head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15]]), 16)
            }
            1 => {
                return Err(VideoError::Truncated {
                    path: path.to_path_buf(),
                    detail: format!("the `{kind}` box header at byte {pos} is cut off"),
                });
            }
            s => (s, 8),
        };
        if size < header {
            return Err(VideoError::corrupt(
                path,
                format!("the `{kind}` box at byte {pos} has an impossible size {size}"),
            ));
        }
        if pos + size > len {
            return Err(VideoError::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "the `{kind}` box at byte {pos} needs {size} bytes but the file ends {} bytes later",
                    len - pos
                ),
            });
        }
        moov |= kind == "moov";
        pos += size;
    }
    if !moov {
        return Err(VideoError::Truncated {
            path: path.to_path_buf(),
            detail: "it has no index (`moov` box): it was cut before its end, or its recorder never finalised it"
                .into(),
        });
    }
    Ok(())
}

/// Whether a file starts like a DICOM Part 10 file (`DICM` at byte 128).
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 132];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => &b[128..132] == b"DICM",
        Err(_) => false,
    }
}

/// A local path from a record's uri (`file://` stripped); remote uris are refused.
pub fn local_path(uri: &str) -> Result<PathBuf, VideoError> {
    if crate::source::is_remote(uri) {
        return Err(VideoError::Unsupported {
            path: PathBuf::from(uri),
            detail: "remote uris are not decoded directly; download the file first (e.g. a source that fetches to local disk)".into(),
        });
    }
    Ok(PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri)))
}

/// Where a Video record's frames end on its timeline, as probed ([`ProbeInfo::end_s`]), for
/// [`DecodeSpec::with_duration_hint`]; `None` for other records (a clip's span is its own).
///
/// [`ProbeInfo::end_s`]: crate::api::ProbeInfo::end_s
pub fn probed_duration(rec: &crate::api::Record) -> Option<f64> {
    match rec {
        crate::api::Record::Video(v) => v.probe.as_ref().and_then(|p| p.end_s()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` I420 frame (Y stride `w + 3`, chroma stride `cw + 1`) and the same picture as NV12.
    fn yuv_pair(w: usize, h: usize) -> (Frame, Frame) {
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let (ys, cs) = (w + 3, cw + 1);
        // Smooth ramps that never clip in RGB (where clipping makes the conversion non-affine).
        let yv = |x: usize, y: usize| (if x + y == 0 { 16 } else { 40 + x * 3 + y * 2 }) as u8;
        let uv = |x: usize, y: usize| (100 + x * 2 + y) as u8;
        let vv = |x: usize, y: usize| (150 - x - y) as u8;
        let mut i420 = vec![0u8; ys * h + 2 * cs * ch];
        let mut nv12 = vec![0u8; ys * h + 2 * cs * ch];
        for y in 0..h {
            for x in 0..w {
                i420[y * ys + x] = yv(x, y);
                nv12[y * ys + x] = yv(x, y);
            }
        }
        let (u0, v0) = (ys * h, ys * h + cs * ch);
        for y in 0..ch {
            for x in 0..cw {
                i420[u0 + y * cs + x] = uv(x, y);
                i420[v0 + y * cs + x] = vv(x, y);
                nv12[u0 + y * 2 * cs + 2 * x] = uv(x, y);
                nv12[u0 + y * 2 * cs + 2 * x + 1] = vv(x, y);
            }
        }
        let l = YuvLayout {
            layout: convert::Layout::P420,
            offsets: [0, u0, v0],
            y_stride: ys,
            c_stride: cs,
            matrix: convert::Matrix::Bt709,
            full_range: false,
        };
        let n = YuvLayout { layout: convert::Layout::Nv12, offsets: [0, u0, 0], c_stride: 2 * cs, ..l };
        (
            Frame::owned_yuv(0.0, None, w as u32, h as u32, i420, l),
            Frame::owned_yuv(0.0, None, w as u32, h as u32, nv12, n),
        )
    }

    #[test]
    fn yuv_frames_convert_and_shrink_like_their_rgb() {
        let (w, h) = (41, 30);
        let (i420, nv12) = yuv_pair(w, h);
        let rgb = i420.rgb().unwrap().into_owned();
        assert_eq!(rgb.len(), w * h * 3);
        assert_eq!(nv12.rgb().unwrap().as_ref(), &rgb[..], "NV12 and I420 of one picture");
        let gray = i420.gray().unwrap();
        assert_eq!(gray.len(), w * h);
        // limited-range luma expanded: Y = 16 → 0
        assert_eq!(gray[0], 0);
        let as_rgb = Frame::new(0.0, None, w as u32, h as u32, PixelFormat::Rgb, rgb.clone());
        for (dw, dh) in [(8, 6), (20, 15), (41, 30)] {
            let a = i420.shrink_rgb(dw, dh).unwrap();
            assert_eq!(nv12.shrink_rgb(dw, dh).unwrap(), a);
            let b = as_rgb.shrink_rgb(dw, dh).unwrap();
            assert_eq!(a.len(), (dw * dh * 3) as usize);
            // averaging before or after the (here affine) conversion: rounding and chroma boxes
            // (aligned to the chroma grid, not to the nearest-sample upsampling) apart
            let diffs: Vec<i32> = a.iter().zip(&b).map(|(x, y)| (*x as i32 - *y as i32).abs()).collect();
            let worst = diffs.iter().max().copied().unwrap_or(0);
            let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
            assert!(worst <= 8 && mean <= 2.0, "{dw}×{dh}: worst difference {worst}, mean {mean}");
        }
        // a short buffer is refused, not read past
        let short = Frame::owned_yuv(0.0, None, w as u32, h as u32, vec![0; 100], i420.yuv.unwrap());
        assert!(short.planes().is_none() && short.rgb().is_none() && short.shrink_rgb(8, 6).is_none());
    }

    #[test]
    fn shrink_plane_averages_boxes_with_steps() {
        // 4×2 samples, one channel of packed pairs (step 2, offset 1)
        let data = [0, 10, 0, 20, 0, 30, 0, 40, 0, 50, 0, 60, 0, 70, 0, 80];
        let plane = image::PlaneRef { data: &data, stride: 8, step: 2, offset: 1 };
        let mut out = [0u8; 2];
        assert!(image::shrink_plane(&plane, 4, 2, 2, 1, &mut out, 1, 0));
        assert_eq!(out, [(10 + 20 + 50 + 60 + 2) / 4, (30 + 40 + 70 + 80 + 2) / 4]);
        let mut up = [0u8; 8];
        assert!(image::shrink_plane(&plane, 4, 2, 8, 1, &mut up, 1, 0));
        assert_eq!(up, [30, 30, 40, 40, 50, 50, 60, 60]);
        assert!(!image::shrink_plane(&plane, 5, 2, 2, 1, &mut out, 1, 0), "reads past the data");
        assert!(!image::shrink_plane(&plane, 4, 2, 3, 1, &mut out, 1, 0), "writes past the output");
    }

    #[test]
    fn geometry_fit_fill_exact() {
        // 16:9 into 224x224: fit keeps the aspect, even sizes
        let g = Geometry::compute(&Size::Fit { width: 224, height: 224 }, 1920, 1080, (1, 1));
        assert_eq!(g.out_size(), (224, 126));
        let g = Geometry::compute(&Size::Fit { width: 0, height: 480 }, 1280, 720, (1, 1));
        assert_eq!(g.out_size(), (854, 480));
        let g = Geometry::compute(&Size::Fill { width: 224, height: 224 }, 1920, 1080, (1, 1));
        assert_eq!(g.out_size(), (224, 224));
        assert_eq!((g.scale_w, g.scale_h), (400, 224));
        assert_eq!(g.crop, Some((88, 0, 224, 224)));
        let g = Geometry::compute(&Size::Exact { width: 720, height: 480 }, 1920, 1080, (1, 1));
        assert_eq!(g.out_size(), (720, 480));
        // non-square pixels: 176x144 with PAR 128/117 displays as 192.5x144
        let g = Geometry::compute(&Size::Fit { width: 0, height: 144 }, 176, 144, (128, 117));
        assert_eq!(g.out_size(), (192, 144));
        // odd sources become even
        let g = Geometry::compute(&Size::Fit { width: 1000, height: 1000 }, 321, 241, (1, 1));
        assert_eq!(g.out_size().0 % 2 + g.out_size().1 % 2, 0);
        assert_eq!(Geometry::compute(&Size::Native, 321, 241, (1, 1)).out_size(), (321, 241));
    }

    #[test]
    fn size_params_and_validation() {
        assert_eq!(size_from_params(None, None, ResizeMode::Fit).unwrap(), Size::Native);
        assert_eq!(size_from_params(Some(224), None, ResizeMode::Fit).unwrap(), Size::Fit { width: 224, height: 0 });
        assert!(size_from_params(Some(224), None, ResizeMode::Fill).is_err());
        assert!(size_from_params(Some(225), Some(224), ResizeMode::Exact).unwrap_err().contains("even"));
        assert!(DecodeSpec::all().with_range(TimeRange::new(3.0, 2.0)).validate().is_err());
        assert!(DecodeSpec::all().with_sampling(Sampling::Fps { fps: 0.0 }).validate().is_err());
    }

    fn run(sel: &mut Selector, fps: f64, n: usize, offset: f64) -> Vec<usize> {
        (0..n).filter(|i| sel.offer(offset + *i as f64 / fps, 1.0 / fps)).collect()
    }

    #[test]
    fn selector_all_in_range() {
        let mut s = Selector::new(&Sampling::All, &TimeRange::new(2.0, 8.0), None).unwrap();
        let kept = run(&mut s, 30.0, 300, 0.0);
        assert_eq!(kept.len(), 180);
        assert_eq!(kept[0], 60);
        assert!(s.done());
    }

    #[test]
    fn selector_fps_grid_and_duplicates() {
        // 1 fps from a 30 fps stream over 10 s: frames 0, 30, 60, ...
        let mut s = Selector::new(&Sampling::Fps { fps: 1.0 }, &TimeRange::ALL, None).unwrap();
        let kept = run(&mut s, 30.0, 300, 0.0);
        assert_eq!(kept, (0..10).map(|i| i * 30).collect::<Vec<_>>());
        // 60 fps from a 30 fps stream: every frame once
        let mut s = Selector::new(&Sampling::Fps { fps: 60.0 }, &TimeRange::ALL, None).unwrap();
        assert_eq!(run(&mut s, 30.0, 30, 0.0).len(), 30);
        // stream starting late (pts offset): the first target takes the first frame
        let mut s = Selector::new(&Sampling::Fps { fps: 1.0 }, &TimeRange::ALL, None).unwrap();
        let kept = run(&mut s, 30.0, 60, 0.0667);
        assert_eq!(kept[0], 0);
    }

    /// Keyframes at `kfs` through a picker over `sampling`; the picked ones (their indices).
    fn pick(sampling: Sampling, range: TimeRange, duration: f64, kfs: &[f64], stream_end: f64) -> Vec<f64> {
        let mut p = KeyPicker::new(Selector::new(&sampling, &range, Some(duration)).unwrap());
        let mut out = Vec::new();
        for (i, &k) in kfs.iter().enumerate() {
            p.offer(k, i);
            out.extend(std::iter::from_fn(|| p.pop()).map(|(t, i)| {
                assert_eq!(t, kfs[i]);
                t
            }));
            if p.done() {
                break;
            }
        }
        p.finish(stream_end);
        out.extend(std::iter::from_fn(|| p.pop()).map(|(t, _)| t));
        out
    }

    #[test]
    fn key_picker_nearest_keyframes_once() {
        // keyframes every 1.5 s over 10 s, 1 fps: ticks 1 and 2 both pick 1.5, 5 picks 4.5 …
        let kfs: Vec<f64> = (0..7).map(|i| i as f64 * 1.5).collect();
        let got = pick(Sampling::Fps { fps: 1.0 }, TimeRange::ALL, 10.0, &kfs, 10.0);
        assert_eq!(got, vec![0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0]);
        // every 2 s: the odd ticks tie and take the earlier keyframe; the last keyframe (8) also
        // answers tick 9
        let kfs: Vec<f64> = (0..5).map(|i| i as f64 * 2.0).collect();
        assert_eq!(pick(Sampling::Fps { fps: 1.0 }, TimeRange::ALL, 10.0, &kfs, 10.0), kfs);
        // sparse keyframes: several ticks collapse onto one
        let got = pick(Sampling::Fps { fps: 1.0 }, TimeRange::ALL, 20.0, &[0.0, 10.0], 20.0);
        assert_eq!(got, vec![0.0, 10.0]);
        // uniform count = 2 over 20 s (ticks 5 and 15) with keyframes every 4 s: 4 and 16
        let kfs: Vec<f64> = (0..5).map(|i| i as f64 * 4.0).collect();
        assert_eq!(pick(Sampling::Uniform { count: 2 }, TimeRange::ALL, 20.0, &kfs, 20.0), vec![4.0, 16.0]);
        // a range: keyframes outside it are never picked; ticks past the last one inside pick it
        let got = pick(Sampling::Uniform { count: 3 }, TimeRange::new(3.0, 11.0), 20.0, &kfs, 20.0);
        assert_eq!(got, vec![4.0, 8.0]);
        let got = pick(Sampling::Timestamps { times_s: vec![10.0] }, TimeRange::new(3.0, 11.0), 20.0, &kfs, 20.0);
        assert_eq!(got, vec![8.0]);
        // a keyframe seen twice (after a seek) is not picked twice, nor one going backwards
        let got = pick(
            Sampling::Timestamps { times_s: vec![0.0, 0.1, 5.0] },
            TimeRange::ALL,
            8.0,
            &[0.0, 0.0, 4.0, 2.0],
            8.0,
        );
        assert_eq!(got, vec![0.0, 4.0]);
        // ticks after the stream's end pick nothing
        let got = pick(Sampling::Timestamps { times_s: vec![9.0] }, TimeRange::ALL, 20.0, &[0.0, 4.0], 5.0);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn keyframe_accuracy_needs_a_sampling() {
        let spec = DecodeSpec::all().with_accuracy(Accuracy::Keyframe);
        assert!(spec.validate().unwrap_err().to_string().contains("keyframe accuracy needs a sampling"));
        assert!(spec.with_sampling(Sampling::Fps { fps: 1.0 }).validate().is_ok());
    }

    #[test]
    fn selector_uniform_and_timestamps() {
        let mut s = Selector::new(&Sampling::Uniform { count: 4 }, &TimeRange::ALL, Some(4.0)).unwrap();
        // centres of 4 spans of 1 s: 0.5, 1.5, 2.5, 3.5 → frames 15, 45, 75, 105 at 30 fps
        assert_eq!(run(&mut s, 30.0, 120, 0.0), vec![15, 45, 75, 105]);
        assert!(Selector::new(&Sampling::Uniform { count: 4 }, &TimeRange::ALL, None).is_err());
        // pictures only from 1 s on (a recording whose first GOP cannot be decoded): the five
        // times spread over [1, 4) — 1.3, 1.9, 2.5, 3.1, 3.7 — not over [0, 4), where the first
        // two (0.4, 1.2) would both fall on the first picture
        let mut s = Selector::new(&Sampling::Uniform { count: 5 }, &TimeRange::ALL, Some(4.0)).unwrap();
        assert_eq!(run(&mut s, 30.0, 90, 1.0), vec![9, 27, 45, 63, 81]);
        // a picture at the range's start keeps the times
        let mut s = Selector::new(&Sampling::Uniform { count: 5 }, &TimeRange::new(1.0, 4.0), Some(9.0)).unwrap();
        assert_eq!(run(&mut s, 30.0, 150, 0.0), vec![39, 57, 75, 93, 111]);
        let ts = Sampling::Timestamps { times_s: vec![2.0, 0.0, 2.01, 9.0] };
        let mut s = Selector::new(&ts, &TimeRange::new(0.0, 5.0), None).unwrap();
        assert_eq!(run(&mut s, 30.0, 150, 0.0), vec![0, 60]);
        assert!(s.done());
    }
}
