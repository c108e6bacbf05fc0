//! `video.decode` and [`Decoder`]: frames out of a video, as RGB8 or gray, at a requested
//! sampling, size and time range.
//!
//! The GStreamer pipeline is `filesrc ! decodebin ! [queue !] videoconvertscale ! capsfilter !
//! appsink`, built element by element (no launch strings, so any file name works). The
//! decoder's 8-bit YUV passes through (only scaled, when a size is asked for, and converted to
//! I420 when it is another format; only then does a queue put the scaler on a thread of its own);
//! RGB and gray are made in Rust straight from the mapped planes
//! ([`convert`](super::convert): BT.601/709/2020, limited or full range, AVX2 when available),
//! which is several times cheaper than `videoconvert` to packed RGB.
//!
//! * frames the sampling does not want are dropped right after the decoder, before the queue, so
//!   they cost no colour conversion or scaling; when the next wanted time lies beyond the next
//!   keyframe (learned from the decoder's input), the decoder skips ahead with a keyframe seek
//!   (checked: a demuxer that lands past the target is sent back, and skipping stops);
//! * with [`Accuracy::Keyframe`], compressed non-key frames (`DELTA_UNIT`) are dropped at the
//!   decoder's input and never decoded, whatever the decoder (avdec_h264, openh264dec, …):
//!   gst-libav 1.22's `skip-frame` has no "non-key" value, and measured here even its "skip
//!   everything" value still decodes and outputs every frame, so it is not used. Only output
//!   frames whose time matches a keyframe seen at the input pass on. Each wanted time gets the
//!   nearest keyframe inside the range (`KeyPicker` holds one undecided keyframe back until the
//!   next one shows which wanted times it wins: one frame of memory), and when streaming would
//!   decode two or more keyframes nobody wants, the decoder seeks to the next wanted time
//!   (`KEY_UNIT | SNAP_BEFORE`, landing on the keyframe at or before it, which with the one after
//!   it decides that time). A range without any keyframe is sampled exactly instead; DICOM
//!   cines, whose every frame is a keyframe, are always sampled exactly;
//! * a video stored turned (the container's display matrix, GStreamer's `image-orientation` tag,
//!   which reaches the decoder's input before its first frame) comes out as shown in RGB and gray:
//!   sizes and crops apply to the picture as shown, GStreamer scales the stored picture with width
//!   and height swapped, and the frame is turned in Rust after the colour conversion
//!   ([`orient`](super::orient)); YUV frames stay as stored, [`StreamInfo::orientation`] says how
//!   to show them;
//! * audio and subtitle streams are never decoded;
//! * queues are bounded (a few frames), so memory does not grow with the video's length;
//! * declared frame sizes over the limits, still images and audio-only files are refused before
//!   any decoding;
//! * every wait is bounded: samples are pulled with a timeout, the bus is checked for errors, the
//!   per-item deadline is honoured, and a stalled pipeline fails after [`STALL`];
//! * RGB and gray frames are pulled and converted on a thread of their own, a frame ahead of the
//!   caller ([`ahead`](super::ahead)), so the conversion overlaps the caller's work and fills the
//!   gaps the decoder's threads leave; YUV frames (no conversion) are handed out on the caller's
//!   thread;
//! * dropping a [`Decoder`] sets the pipeline to `Null`, which stops its threads, and joins the
//!   converting thread.
//!
//! DICOM files go through the same API, decoded in pure Rust ([`crate::source::dicom`]).

use super::ahead::{Ahead, FrameSource};
use super::blob::{FramesHeader, FramesWriter};
use super::convert::{Coeffs, Layout, Matrix, to_gray_into, to_rgb_into};
use super::gst_util::{self, Pipeline, classify, clock, describe_caps, secs};
use super::orient::{Orientation, orient_into};
use super::pool::BufPool;
use super::probe::SizeLimits;
use super::{
    Accuracy, DecodeSpec, Frame, Geometry, KeyPicker, PixelFormat, ResizeMode, Sampling, Selector, Size, TIME_TOL,
    TimeRange, VideoError, YuvLayout, check_input_file, is_dicom_file, local_path, probed_duration, size_from_params,
};
use crate::api::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Decoded formats taken as they are (8-bit YUV the converter reads); others become I420.
const YUV_FORMATS: [&str; 6] = ["I420", "YV12", "NV12", "NV21", "Y42B", "Y444"];

/// A pipeline that makes no progress (no frame decoded, no error, no end) for this long fails.
pub const STALL: Duration = Duration::from_secs(60);
/// Frames the appsink holds at most.
const SINK_BUFFERS: u32 = 4;
/// Skip ahead only over gaps at least this long (seconds).
const SEEK_MIN_GAP: f64 = 0.5;
/// Keyframe times remembered between the decoder's input and its output.
const KF_WINDOW: usize = 64;

pub use super::{DecodeStats, StreamInfo};

/// A streaming decoder: an iterator of frames. See the module docs.
pub struct Decoder {
    path: PathBuf,
    started: Instant,
    info: StreamInfo,
    inner: Inner,
    finished: bool,
}

enum Inner {
    /// Frames pulled (and converted) on the caller's thread.
    Gst(Box<GstDecoder>),
    /// Frames pulled and converted on a worker thread, ahead of the caller ([`Ahead`]).
    Ahead(Ahead),
    Dicom(Box<crate::source::dicom::DicomFrames>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("path", &self.path).field("info", self.info()).finish()
    }
}

impl Decoder {
    /// Open `path` for decoding as `spec` asks. Fails (with a specific reason) on files that are
    /// not usable videos; errors after opening come out of the iterator.
    pub fn open(path: &Path, spec: &DecodeSpec) -> Result<Decoder, VideoError> {
        spec.validate()?;
        check_input_file(path)?;
        let started = Instant::now();
        let (inner, info) = if is_dicom_file(path) {
            let d = crate::source::dicom::DicomFrames::open(path, spec)?;
            let info = d.info().clone();
            (Inner::Dicom(Box::new(d)), info)
        } else {
            super::check_container(path)?;
            let g = GstDecoder::open(path, spec, started)?;
            let info = g.info.clone();
            // Converted frames cost CPU per frame: make them on a thread ahead of the caller.
            // The decoder's own planes (YUV) cost nothing to hand out and stay on this thread.
            if spec.format == PixelFormat::Yuv {
                (Inner::Gst(Box::new(g)), info)
            } else {
                let source = Pulling { dec: Box::new(g), path: path.to_path_buf(), started };
                let ahead = Ahead::spawn(source)
                    .map_err(|e| VideoError::Backend(format!("cannot start a decoding thread: {e}")))?;
                (Inner::Ahead(ahead), info)
            }
        };
        Ok(Decoder { path: path.to_path_buf(), started, info, inner, finished: false })
    }

    /// The stream's facts and the output size.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Counters so far (with frames decoded ahead: as of the last frame taken).
    pub fn stats(&self) -> DecodeStats {
        match &self.inner {
            Inner::Gst(g) => g.stats(),
            Inner::Ahead(a) => a.stats(),
            Inner::Dicom(d) => d.stats(),
        }
    }

    /// The file being decoded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Time since [`Decoder::open`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Iterator for Decoder {
    type Item = Result<Frame, VideoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let item = match &mut self.inner {
            Inner::Gst(g) => g.next_frame(&self.path, self.started, &NEVER_CANCELLED),
            Inner::Ahead(a) => a.next(),
            Inner::Dicom(d) => d.next(),
        };
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
            if let Inner::Gst(g) = &mut self.inner {
                g.stop();
            }
        }
        item
    }
}

/// The cancel flag of a decoder pulled on the caller's thread (nobody else can raise it).
static NEVER_CANCELLED: AtomicBool = AtomicBool::new(false);

/// A [`GstDecoder`] as the worker of an [`Ahead`] drives it.
struct Pulling {
    dec: Box<GstDecoder>,
    path: PathBuf,
    started: Instant,
}

impl FrameSource for Pulling {
    fn next_frame(&mut self, cancel: &AtomicBool) -> Option<Result<Frame, VideoError>> {
        self.dec.next_frame(&self.path, self.started, cancel)
    }

    fn stats(&self) -> DecodeStats {
        self.dec.stats()
    }

    fn stop(&mut self) {
        self.dec.stop();
    }
}

/// Decode all frames `spec` asks for into memory (convenient for short spans and tests; prefer
/// iterating [`Decoder`] for anything long).
pub fn decode_all(path: &Path, spec: &DecodeSpec) -> Result<Vec<Frame>, VideoError> {
    Decoder::open(path, spec)?.collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first seek: frames pass untouched (the sink needs one to preroll); they are
    /// flushed by the seek that follows.
    Preroll,
    /// A seek was asked for: frames are dropped until its flush reaches the probe.
    Flushing,
    /// Frames go through the selector.
    Active,
}

struct State {
    selector: Option<Selector>,
    /// Keyframe accuracy: non-key frames are dropped before the decoder, and only keyframes in
    /// the range pass to the [`KeyPicker`] (no selector then).
    keyframes: bool,
    /// Start of the requested range (stream time).
    span_start: f64,
    /// Times of the keyframes that entered the decoder and have not come out yet.
    kf_window: VecDeque<f64>,
    /// Non-key frames dropped before the decoder.
    skipped: u64,
    /// End of the furthest frame that entered the decoder (stream time).
    input_end: Option<f64>,
    phase: Phase,
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
    /// Frames out of the decoder / kept by the selector.
    decoded: u64,
    kept: u64,
    /// Stream time of the last frame offered to the selector.
    last_pts: Option<f64>,
    /// Stream time of the frame that prerolled the pipeline before a seek.
    preroll_pts: Option<f64>,
    /// The last keyframe seen at the decoder's input (stream time) and the last interval
    /// between two consecutive ones.
    last_kf: Option<f64>,
    kf_interval: Option<f64>,
    kf_segment: Option<gst::FormattedSegment<gst::ClockTime>>,
    /// Where the last checked seek was going; cleared by the first frame after it.
    seek_target: Option<f64>,
    /// A checked seek landed after its target (the target).
    overshoot: Option<f64>,
    /// Stream time of the first frame decoded (the stream's start).
    first_pts: Option<f64>,
    /// Frame duration to assume when buffers carry none.
    fallback_dur: f64,
    error: Option<VideoError>,
    /// decodebin asked about the file's type already.
    typefound: bool,
    /// The file is an MPEG program or transport stream (see [`StreamInfo::clock_timeline`]).
    clock_timeline: bool,
    linked: bool,
    audio: Option<String>,
    /// The decoded stream's size, pixel aspect and frame rate.
    src: Option<SrcInfo>,
    geometry: Option<Geometry>,
    /// The container's orientation, from the tags that reach the decoder's input.
    tagged: Option<Orientation>,
    codec: Option<String>,
}

impl State {
    /// Whether an output frame at `pts` is a keyframe that entered the decoder (and forget it
    /// and those before it).
    fn take_keyframe(&mut self, pts: f64) -> bool {
        match self.kf_window.iter().position(|k| (k - pts).abs() <= TIME_TOL) {
            Some(i) => {
                self.kf_window.drain(..=i);
                true
            }
            None => false,
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn past_the_end(path: &Path, start: f64, end: f64) -> VideoError {
    VideoError::BadRequest(format!(
        "{}: the range starts at {start:.3} s, after the video's end ({end:.3} s)",
        path.display()
    ))
}

/// Width, height, pixel aspect ratio and frame rate of a decoded stream.
#[derive(Clone, Copy, Debug)]
struct SrcInfo {
    width: u32,
    height: u32,
    par: (u32, u32),
    fps: (u32, u32),
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

struct GstDecoder {
    pipe: Pipeline,
    sink: gst_app::AppSink,
    shared: Shared,
    info: StreamInfo,
    /// Output size and crop, as shown (after `info.orientation`; YUV frames are not turned).
    geometry: Geometry,
    start: f64,
    end: Option<f64>,
    deadline: Option<Instant>,
    format: PixelFormat,
    seek_enabled: bool,
    /// Target of the last skip-ahead seek (never seek twice to the same place).
    last_seek: Option<f64>,
    /// Recovery seeks made after overshoots.
    recoveries: u32,
    drop_preroll: bool,
    /// Keyframe accuracy: picks the keyframes to return (`None` in exact mode, or until the
    /// duration is known for uniform sampling without an end).
    picker: Option<KeyPicker<gst::Sample>>,
    keyframes: bool,
    sampling: Sampling,
    /// Keyframe accuracy found no keyframe in the range and went exact.
    fell_back: bool,
    delivered: u64,
    seeks: u64,
    warnings: u64,
    last_progress: (u64, Instant),
    stopped: bool,
    /// Buffers of dropped frames, reused for the next conversions.
    pool: BufPool,
}

impl GstDecoder {
    fn open(path: &Path, spec: &DecodeSpec, started: Instant) -> Result<GstDecoder, VideoError> {
        gst_util::init()?;
        let limits = SizeLimits { max_pixels: spec.max_pixels, max_side: spec.max_side };
        let pipe = Pipeline::new("medgen-decode")?;
        let src = gst_util::make("filesrc")?;
        src.set_property("location", path.to_string_lossy().as_ref());
        let decodebin = gst_util::make("decodebin")?;
        let queue = gst_util::make("queue")?;
        queue.set_property("max-size-buffers", 3u32);
        queue.set_property("max-size-bytes", 0u32);
        queue.set_property("max-size-time", 0u64);
        let convert = if gst_util::have("videoconvertscale") {
            let c = gst_util::make("videoconvertscale")?;
            c.set_property("n-threads", gst_util::cpu_threads());
            c.set_property("add-borders", false);
            vec![c]
        } else {
            let c = gst_util::make("videoconvert")?;
            c.set_property("n-threads", gst_util::cpu_threads());
            let s = gst_util::make("videoscale")?;
            s.set_property("add-borders", false);
            vec![c, s]
        };
        let capsfilter = gst_util::make("capsfilter")?;
        let sink = gst_app::AppSink::builder()
            .sync(false)
            .max_buffers(SINK_BUFFERS)
            .drop(false)
            .enable_last_sample(false)
            .build();
        // The queue goes in front of the converter only when the stream needs scaling or a
        // format conversion (decided when the decoder's pad appears, in `connect_decodebin`):
        // then the decoder does not wait on the scaler. Untouched frames go straight through.
        let convert_in = convert[0].clone();
        let mut chain: Vec<gst::Element> = convert;
        chain.push(capsfilter.clone());
        chain.push(sink.clone().upcast());
        pipe.pipeline.add_many([&src, &decodebin]).map_err(|e| VideoError::Backend(e.to_string()))?;
        pipe.pipeline.add_many(&chain).map_err(|e| VideoError::Backend(e.to_string()))?;
        src.link(&decodebin).map_err(|e| VideoError::Backend(e.to_string()))?;
        gst::Element::link_many(&chain).map_err(|e| VideoError::Backend(e.to_string()))?;

        // The selector needs the duration for uniform sampling without an end: it is built
        // after prerolling then, and a seek restarts the stream.
        let early = match spec.sampling {
            Sampling::Uniform { .. } if spec.range.end_s.is_none() => None,
            _ => Some(Selector::new(&spec.sampling, &spec.range, None)?),
        };
        let start = spec.range.start_s;
        let needs_seek = start > 0.0 || early.is_none();
        let keyframes = spec.accuracy == Accuracy::Keyframe;
        let (selector, picker) = if keyframes { (None, early.map(KeyPicker::new)) } else { (early, None) };
        let shared: Shared = Arc::new(Mutex::new(State {
            selector,
            keyframes,
            span_start: start,
            kf_window: VecDeque::new(),
            skipped: 0,
            input_end: None,
            phase: if needs_seek { Phase::Preroll } else { Phase::Active },
            segment: None,
            decoded: 0,
            kept: 0,
            last_pts: None,
            preroll_pts: None,
            last_kf: None,
            kf_interval: None,
            kf_segment: None,
            seek_target: None,
            overshoot: None,
            first_pts: None,
            fallback_dur: 1.0 / 30.0,
            error: None,
            typefound: false,
            clock_timeline: false,
            linked: false,
            audio: None,
            src: None,
            geometry: None,
            tagged: None,
            codec: None,
        }));

        connect_decodebin(&decodebin, &shared, [&queue, &convert_in], &capsfilter, spec, limits, path);

        pipe.set_state(gst::State::Paused, path).map_err(|e| lock(&shared).error.take().unwrap_or(e))?;
        let preroll_deadline = spec.deadline.unwrap_or_else(|| Instant::now() + STALL);
        let abort = || lock(&shared).error.take();
        let prerolled = pipe
            .wait_preroll(path, started, preroll_deadline, "opening the video", &abort)
            .map_err(|e| lock(&shared).error.take().unwrap_or(e))?;
        if let Some(e) = lock(&shared).error.take() {
            return Err(e);
        }
        let (src_info, geometry, tagged, codec, clock_timeline) = {
            let st = lock(&shared);
            (st.src, st.geometry, st.tagged.unwrap_or_default(), st.codec.clone(), st.clock_timeline)
        };
        let (Some(SrcInfo { width: w, height: h, par, fps }), Some(geometry)) = (src_info, geometry) else {
            return Err(if prerolled {
                VideoError::not_video(path, "no video stream")
            } else {
                VideoError::corrupt(path, "the stream ended before a single video frame could be decoded")
            });
        };
        // What the container declares may be an estimate (Matroska written while recording
        // declares its first fraction of a second) or about another track (audio that runs on):
        // the probe's figure, measured from the frames where it could, wins; only it refuses a
        // range up front; past a declared end the stream itself decides (see the EOS branch).
        let declared = pipe.pipeline.query_duration::<gst::ClockTime>().map(secs).filter(|d| *d > 0.0);
        let duration_s = spec.duration_hint.or(declared);
        if let Some(d) = spec.duration_hint
            && start >= d
        {
            return Err(past_the_end(path, start, d));
        }
        let (out_width, out_height) = geometry.out_size();
        let info = StreamInfo {
            width: w,
            height: h,
            par,
            orientation: tagged,
            fps,
            duration_s,
            out_width,
            out_height,
            codec,
            clock_timeline,
        };
        let mut dec = GstDecoder {
            pipe,
            sink,
            shared,
            info,
            geometry,
            start,
            end: spec.range.end_s,
            deadline: spec.deadline,
            format: spec.format,
            seek_enabled: true,
            last_seek: None,
            recoveries: 0,
            drop_preroll: false,
            picker,
            keyframes,
            sampling: spec.sampling.clone(),
            fell_back: false,
            delivered: 0,
            seeks: 0,
            warnings: 0,
            last_progress: (0, Instant::now()),
            stopped: false,
            pool: BufPool::default(),
        };
        if needs_seek {
            if keyframes && dec.picker.is_none() {
                dec.picker = Some(KeyPicker::new(Selector::new(&spec.sampling, &spec.range, duration_s)?));
            }
            let mut st = lock(&dec.shared);
            if !keyframes && st.selector.is_none() {
                st.selector = Some(Selector::new(&spec.sampling, &spec.range, duration_s)?);
            }
            st.phase = Phase::Flushing;
            drop(st);
            // Played from here; the iterator recovers if the seek overshoots.
            if dec.seek(start, true).is_err() {
                // Not seekable: decode from the start; the prerolled frame is not ours.
                let mut st = lock(&dec.shared);
                st.phase = Phase::Active;
                st.seek_target = None;
                dec.drop_preroll = st.preroll_pts.is_some();
                dec.seek_enabled = false;
            }
        }
        dec.pipe.set_state(gst::State::Playing, path)?;
        Ok(dec)
    }

    fn stats(&self) -> DecodeStats {
        let st = lock(&self.shared);
        DecodeStats {
            decoded: st.decoded,
            delivered: self.delivered,
            skipped: st.skipped,
            seeks: self.seeks,
            warnings: self.warnings,
        }
    }

    /// Seek to the keyframe at or before `target`. The segment then starts at that keyframe, so
    /// the decoder clips nothing the selector wants (an accurate seek would drop the frame that
    /// starts before `target` but is still shown at it). With `check`, the probe verifies that
    /// the stream really restarts at or before `target` (demuxers without an index may land
    /// later) and flags an overshoot for [`GstDecoder::recover`].
    fn seek(&self, target: f64, check: bool) -> Result<(), gst::glib::BoolError> {
        {
            let mut st = lock(&self.shared);
            st.seek_target = check.then_some(target);
            st.kf_window.clear();
        }
        // No stop position: the selector ends the range itself. MPEG program streams clip a
        // stop to their declared duration, which their late-starting frame times overrun.
        self.pipe.pipeline.seek(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
            gst::SeekType::Set,
            Some(clock(target)),
            gst::SeekType::None,
            gst::ClockTime::NONE,
        )
    }

    /// After a seek that landed past its target: seek well before it, then from the start, and
    /// make no more skip-ahead seeks in this file.
    fn recover(&mut self) {
        let Some(target) = lock(&self.shared).overshoot.take() else { return };
        self.seek_enabled = false;
        self.recoveries += 1;
        let (pos, check) = if self.recoveries == 1 { ((target - 10.0).max(0.0), true) } else { (0.0, false) };
        if self.seek(pos, check).is_err() {
            let mut st = lock(&self.shared);
            st.seek_target = None;
            st.phase = Phase::Active;
        }
    }

    /// Skip ahead when the next wanted time lies beyond the next keyframe.
    fn maybe_seek(&mut self) {
        if !self.seek_enabled {
            return;
        }
        if self.keyframes {
            self.maybe_seek_keyframe();
            return;
        }
        let mut st = lock(&self.shared);
        if st.phase != Phase::Active || self.delivered != st.kept {
            return;
        }
        let (Some(target), Some(pos)) = (st.selector.as_ref().and_then(|s| s.next_target()), st.last_pts) else {
            return;
        };
        if target - pos < SEEK_MIN_GAP {
            return;
        }
        if self.last_seek.is_some_and(|t| target <= t) {
            return;
        }
        let Some(last) = st.last_kf else { return };
        let next_kf = if last > pos + TIME_TOL {
            last
        } else {
            let Some(interval) = st.kf_interval.filter(|i| *i > TIME_TOL) else { return };
            let n = ((pos + TIME_TOL - last) / interval).floor() + 1.0;
            last + n * interval
        };
        if next_kf > target + TIME_TOL || next_kf - pos < SEEK_MIN_GAP {
            return;
        }
        st.phase = Phase::Flushing;
        // Positions and keyframes are learned again after the seek.
        st.last_pts = None;
        st.last_kf = None;
        drop(st);
        self.last_seek = Some(target);
        if self.seek(target, true).is_ok() {
            self.seeks += 1;
        } else {
            lock(&self.shared).phase = Phase::Active;
            self.seek_enabled = false;
        }
    }

    /// Keyframe accuracy: seek to the next wanted time (landing on the keyframe at or before it)
    /// when streaming would first decode keyframes that no wanted time can pick. Frames in
    /// flight are all before that keyframe, or come again after the seek, so they are not waited
    /// for.
    fn maybe_seek_keyframe(&mut self) {
        let Some(target) = self.picker.as_ref().and_then(|p| p.next_target()) else { return };
        let mut st = lock(&self.shared);
        if st.phase != Phase::Active {
            return;
        }
        let (Some(last), Some(interval)) = (st.last_kf, st.kf_interval.filter(|i| *i > TIME_TOL)) else { return };
        // Streaming would decode at least two keyframes before the one at or before `target`
        // (one alone costs less than the seek).
        if target < last + 3.0 * interval - TIME_TOL || target - last < SEEK_MIN_GAP {
            return;
        }
        if self.last_seek.is_some_and(|t| target <= t) {
            return;
        }
        st.phase = Phase::Flushing;
        st.last_pts = None;
        st.last_kf = None;
        drop(st);
        self.last_seek = Some(target);
        if self.seek(target, true).is_ok() {
            self.seeks += 1;
        } else {
            lock(&self.shared).phase = Phase::Active;
            self.seek_enabled = false;
        }
    }

    /// Keyframe accuracy found no keyframe inside the range: sample the range exactly instead,
    /// from its start. Returns false when that cannot be done (the file does not seek).
    fn fall_back_to_exact(&mut self) -> bool {
        if self.fell_back {
            return false;
        }
        self.fell_back = true;
        let range = TimeRange { start_s: self.start, end_s: self.end };
        let Ok(selector) = Selector::new(&self.sampling, &range, self.info.duration_s) else { return false };
        {
            let mut st = lock(&self.shared);
            st.keyframes = false;
            st.selector = Some(selector);
            st.phase = Phase::Flushing;
            st.kept = self.delivered;
            st.last_pts = None;
            st.last_kf = None;
        }
        self.keyframes = false;
        self.picker = None;
        self.last_seek = None;
        if self.seek(self.start, true).is_err() {
            let mut st = lock(&self.shared);
            st.phase = Phase::Active;
            st.seek_target = None;
            return false;
        }
        self.seeks += 1;
        true
    }

    /// The next frame; `None` at the end or soon after `cancel` is raised (every wait in here is
    /// bounded).
    fn next_frame(&mut self, path: &Path, started: Instant, cancel: &AtomicBool) -> Option<Result<Frame, VideoError>> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(d) = self.deadline
                && Instant::now() >= d
            {
                return Some(Err(VideoError::timeout(path, started, "decoding")));
            }
            if let Some(e) = lock(&self.shared).error.take() {
                return Some(Err(e));
            }
            while let Some(msg) = self.pipe.bus.pop() {
                match msg.view() {
                    gst::MessageView::Error(e) => {
                        let err = classify(path, &e.error(), e.debug().as_deref());
                        return Some(Err(lock(&self.shared).error.take().unwrap_or(err)));
                    }
                    gst::MessageView::Warning(_) => self.warnings += 1,
                    _ => {}
                }
            }
            if let Some((pts, sample)) = self.picker.as_mut().and_then(|p| p.pop()) {
                let dur = sample.buffer().and_then(|b| b.duration()).map(secs);
                return match self.convert(path, &sample, pts, dur) {
                    Ok(frame) => {
                        self.delivered += 1;
                        Some(Ok(frame))
                    }
                    Err(e) => Some(Err(e)),
                };
            }
            if self.picker.as_ref().is_some_and(|p| p.done()) {
                // A keyframe past the range came before any inside it.
                if self.picker.as_ref().is_some_and(|p| p.range_without_keyframe()) && self.fall_back_to_exact() {
                    continue;
                }
                return None;
            }
            self.recover();
            self.maybe_seek();
            if let Some(sample) = self.sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                let Some((pts, dur)) = self.sample_time(&sample) else { continue };
                if let Some(picker) = &mut self.picker {
                    picker.offer(pts, sample);
                    continue;
                }
                match self.convert(path, &sample, pts, dur) {
                    Ok(frame) => {
                        self.delivered += 1;
                        return Some(Ok(frame));
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let (decoded, done, kept, skipped, input_end) = {
                let st = lock(&self.shared);
                (st.decoded, st.selector.as_ref().is_some_and(|s| s.done()), st.kept, st.skipped, st.input_end)
            };
            if self.sink.is_eos() {
                if lock(&self.shared).overshoot.is_some() {
                    // The stream ended after a seek that landed past its target: go back.
                    continue;
                }
                if self.recoveries < 2 {
                    let mut st = lock(&self.shared);
                    if let Some(t) = st.seek_target.take() {
                        // Not one frame came after a seek: it landed past the end of the stream.
                        // Transport streams whose timestamps run ahead of their clock seek on
                        // the clock, where a frame's time can lie past the end. Go back as for
                        // an overshoot.
                        st.overshoot = Some(t);
                        continue;
                    }
                }
                if self.delivered == 0
                    && self.start > 0.0
                    && let Some(end) = lock(&self.shared).input_end
                    && end <= self.start + TIME_TOL
                {
                    // Every frame the stream has ends before the range starts.
                    return Some(Err(past_the_end(path, self.start, end)));
                }
                if let Some(picker) = &mut self.picker {
                    if picker.seen() == 0 && picker.next_target().is_some() {
                        // Not one keyframe inside the range: sample it exactly.
                        if self.fall_back_to_exact() {
                            continue;
                        }
                        if decoded == 0 {
                            return Some(Err(VideoError::corrupt(
                                path,
                                "no keyframe could be decoded (the bitstream is damaged or empty); re-encode or \
                                 re-copy the file",
                            )));
                        }
                        return None;
                    }
                    picker.finish(input_end.or(self.info.duration_s).unwrap_or(f64::INFINITY));
                    continue;
                }
                if decoded == 0 {
                    return Some(Err(VideoError::corrupt(
                        path,
                        "no frame could be decoded (the bitstream is damaged or empty); re-encode or re-copy the file",
                    )));
                }
                return None;
            }
            if done && self.delivered >= kept {
                return None;
            }
            // Dropping non-key frames before the decoder is progress too.
            let progress = decoded + skipped;
            if progress != self.last_progress.0 {
                self.last_progress = (progress, Instant::now());
            } else if self.last_progress.1.elapsed() > STALL {
                return Some(Err(VideoError::timeout(path, started, "waiting for the decoder (no progress)")));
            }
        }
    }

    /// The stream time and duration of a pulled sample, or `None` for one to skip (the frame
    /// that prerolled a pipeline that could not seek, frames wholly before the range).
    fn sample_time(&mut self, sample: &gst::Sample) -> Option<(f64, Option<f64>)> {
        let buffer = sample.buffer()?;
        let raw_pts = buffer.pts().unwrap_or(gst::ClockTime::ZERO);
        let pts = sample
            .segment()
            .and_then(|s| s.clone().downcast::<gst::ClockTime>().ok())
            .and_then(|s| s.to_stream_time(raw_pts))
            .map(secs)
            .unwrap_or_else(|| secs(raw_pts));
        let dur = buffer.duration().map(secs);
        if self.drop_preroll {
            self.drop_preroll = false;
            let preroll = lock(&self.shared).preroll_pts;
            if preroll.is_some_and(|p| (p - pts).abs() < 1e-6) {
                return None;
            }
        }
        // Frames wholly before the range (a decoder that does not clip after a seek).
        if self.start > 0.0 && pts + dur.unwrap_or(0.0) <= self.start + TIME_TOL && pts < self.start {
            return None;
        }
        Some((pts, dur))
    }

    /// The pixels of a sample shown from `pts` for `dur`, as the request asks.
    fn convert(&self, path: &Path, sample: &gst::Sample, pts: f64, dur: Option<f64>) -> Result<Frame, VideoError> {
        let internal = |what: &str| VideoError::Backend(format!("{}: {what}", path.display()));
        let buffer = sample.buffer_owned().ok_or_else(|| internal("a sample without a buffer"))?;
        let caps = sample.caps().ok_or_else(|| internal("a sample without caps"))?;
        let vinfo = gst_video::VideoInfo::from_caps(caps).map_err(|e| internal(&format!("bad caps: {e}")))?;
        let (w, h) = (vinfo.width(), vinfo.height());
        let (offsets, strides): (Vec<usize>, Vec<usize>) = match buffer.meta::<gst_video::VideoMeta>() {
            Some(m) => (m.offset().to_vec(), m.stride().iter().map(|s| (*s).max(0) as usize).collect()),
            None => (vinfo.offset().to_vec(), vinfo.stride().iter().map(|s| (*s).max(0) as usize).collect()),
        };
        let layout = match vinfo.format() {
            gst_video::VideoFormat::I420 | gst_video::VideoFormat::Yv12 => Layout::P420,
            gst_video::VideoFormat::Nv12 => Layout::Nv12,
            gst_video::VideoFormat::Nv21 => Layout::Nv21,
            gst_video::VideoFormat::Y42b => Layout::P422,
            gst_video::VideoFormat::Y444 => Layout::P444,
            other => return Err(internal(&format!("unexpected decoded format {other:?}"))),
        };
        let planes_n = if matches!(layout, Layout::Nv12 | Layout::Nv21) { 2 } else { 3 };
        if offsets.len() < planes_n || strides.len() < planes_n {
            return Err(internal("a frame without its planes"));
        }
        let colorimetry = vinfo.colorimetry();
        let full_range = colorimetry.range() == gst_video::VideoColorRange::Range0_255;
        let matrix = match colorimetry.matrix() {
            gst_video::VideoColorMatrix::Bt709 => Matrix::Bt709,
            gst_video::VideoColorMatrix::Bt2020 => Matrix::Bt2020,
            gst_video::VideoColorMatrix::Bt601
            | gst_video::VideoColorMatrix::Smpte240m
            | gst_video::VideoColorMatrix::Fcc => Matrix::Bt601,
            _ if h > 576 => Matrix::Bt709,
            _ => Matrix::Bt601,
        };
        let map = buffer.into_mapped_buffer_readable().map_err(|_| internal("cannot map a frame"))?;
        let (u, v) = match vinfo.format() {
            gst_video::VideoFormat::Yv12 => (offsets[2], offsets[1]),
            _ if planes_n == 2 => (offsets[1], 0),
            _ => (offsets[1], offsets[2]),
        };
        let yuv = YuvLayout {
            layout,
            offsets: [offsets[0], u, v],
            y_stride: strides[0],
            c_stride: strides[1],
            matrix,
            full_range,
        };
        if self.format == PixelFormat::Yuv {
            // The planes as they are (native size, no crop: DecodeSpec::validate).
            let frame = Frame::mapped_yuv(pts, dur, w, h, map, yuv);
            if frame.planes().is_none() {
                return Err(internal("a frame smaller than its caps say"));
            }
            return Ok(frame);
        }
        // (YUV frames, returned above, are never turned.)
        if !self.info.orientation.is_upright() {
            return self
                .convert_turned(&yuv, map.as_slice(), w, h, pts, dur)
                .ok_or_else(|| internal("a frame smaller than its caps say"));
        }
        // Full-range gray of a whole frame is the luma plane itself: hand it out without a copy.
        if self.format == PixelFormat::Gray
            && full_range
            && self.geometry.crop.is_none()
            && offsets[0] == 0
            && strides[0] == w as usize
            && map.len() >= (w * h) as usize
        {
            return Ok(Frame::mapped(pts, dur, w, h, PixelFormat::Gray, map));
        }
        let (x, y, cw, chh) = self
            .geometry
            .crop
            .map(|(x, y, cw, ch)| (x.min(w), y.min(h), cw.min(w - x.min(w)), ch.min(h - y.min(h))))
            .unwrap_or((0, 0, w, h));
        let planes = yuv.planes(map.as_slice());
        let (x, y, cw, chh) = (x as usize, y as usize, cw as usize, chh as usize);
        let buf = self.pool.take();
        let pixels = match self.format {
            PixelFormat::Rgb => to_rgb_into(&planes, &Coeffs::new(matrix, full_range), x, y, cw, chh, buf),
            // (YUV frames were returned above.)
            PixelFormat::Gray | PixelFormat::Yuv => to_gray_into(&planes, full_range, x, y, cw, chh, buf),
        };
        let pixels = pixels.ok_or_else(|| internal("a frame smaller than its caps say"))?;
        Ok(Frame::new(pts, dur, cw as u32, chh as u32, self.format, pixels).returning_to(&self.pool))
    }

    /// A stored `w × h` frame converted whole, then turned and cropped as shown.
    fn convert_turned(
        &self,
        yuv: &YuvLayout,
        data: &[u8],
        w: u32,
        h: u32,
        pts: f64,
        dur: Option<f64>,
    ) -> Option<Frame> {
        let planes = yuv.planes(data);
        let (w, h) = (w as usize, h as usize);
        let stored = match self.format {
            PixelFormat::Rgb => {
                to_rgb_into(&planes, &Coeffs::new(yuv.matrix, yuv.full_range), 0, 0, w, h, self.pool.take())
            }
            PixelFormat::Gray | PixelFormat::Yuv => to_gray_into(&planes, yuv.full_range, 0, 0, w, h, self.pool.take()),
        }?;
        let turn = self.info.orientation;
        let (sw, sh) = turn.shown_size(w as u32, h as u32);
        let crop = self.geometry.crop.map(|(x, y, cw, ch)| {
            let (x, y) = (x.min(sw), y.min(sh));
            (x as usize, y as usize, cw.min(sw - x) as usize, ch.min(sh - y) as usize)
        });
        let (ow, oh) = crop.map_or((sw as usize, sh as usize), |c| (c.2, c.3));
        let mut out = self.pool.take();
        orient_into(&stored, w, h, self.format.channels(), turn, crop, &mut out);
        self.pool.give(stored);
        Some(Frame::new(pts, dur, ow as u32, oh as u32, self.format, out).returning_to(&self.pool))
    }

    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            let _ = self.pipe.pipeline.set_state(gst::State::Null);
        }
    }
}

/// Drop the buffer of a pad probe. (Returning `Drop` makes GStreamer 1.22 unref it twice with
/// these bindings: consume it here and report it handled.)
fn drop_frame(info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
    drop(info.take_buffer());
    gst::PadProbeReturn::Handled
}

/// Whether caps describe a container rather than a codec.
fn is_container(caps: &gst::CapsRef) -> bool {
    caps.structure(0).is_some_and(|s| {
        s.get::<bool>("systemstream").unwrap_or(false)
            || matches!(
                s.name().as_str(),
                "video/quicktime"
                    | "video/x-matroska"
                    | "video/webm"
                    | "video/x-msvideo"
                    | "video/x-flv"
                    | "video/mpegts"
            )
    })
}

/// Whether a file's type is an MPEG program or transport stream, whose timeline is its clock.
fn is_mpeg_system(caps: &gst::CapsRef) -> bool {
    caps.structure(0).is_some_and(|s| {
        s.name() == "video/mpegts" || (s.name() == "video/mpeg" && s.get::<bool>("systemstream").unwrap_or(false))
    })
}

/// The orientation an `image-orientation` tag in `tags` names.
fn tag_orientation(tags: &gst::TagListRef) -> Option<Orientation> {
    tags.get::<gst::tags::ImageOrientation>().and_then(|v| Orientation::from_tag(v.get()))
}

/// Whether an element is a video decoder.
fn is_video_decoder(e: &gst::Element) -> bool {
    e.factory().is_some_and(|f| {
        let klass = f.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or("");
        klass.contains("Decoder") && klass.contains("Video")
    })
}

fn stream_time(seg: Option<&gst::FormattedSegment<gst::ClockTime>>, pts: gst::ClockTime) -> f64 {
    seg.and_then(|s| s.to_stream_time(pts)).map(secs).unwrap_or_else(|| secs(pts))
}

/// Wire up decodebin: refuse what is not a video before decoding it, link the first raw video
/// stream with the output size fixed, watch keyframes.
fn connect_decodebin(
    decodebin: &gst::Element,
    shared: &Shared,
    [queue, convert_in]: [&gst::Element; 2],
    capsfilter: &gst::Element,
    spec: &DecodeSpec,
    limits: SizeLimits,
    path: &Path,
) {
    let path_buf = path.to_path_buf();
    let st = shared.clone();
    decodebin.connect("autoplug-continue", false, move |args| {
        let Some(caps) = args.get(2).and_then(|v| v.get::<gst::Caps>().ok()) else { return Some(true.to_value()) };
        let Some(name) = caps.structure(0).map(|s| s.name().to_string()) else { return Some(true.to_value()) };
        let mut s = lock(&st);
        // The first caps decodebin asks about are the type it found for the whole file.
        let from_typefind = !s.typefound;
        s.typefound = true;
        if from_typefind {
            s.clock_timeline = is_mpeg_system(&caps);
        }
        if from_typefind && name.starts_with("image/") {
            s.error.get_or_insert_with(|| {
                VideoError::not_video(&path_buf, format!("a still image ({}), not a video", describe_caps(&caps)))
            });
            return Some(false.to_value());
        }
        if let Some(reason) = limits.exceeded(&caps) {
            s.error.get_or_insert_with(|| VideoError::unsupported(&path_buf, reason));
            return Some(false.to_value());
        }
        if name.starts_with("audio/")
            || name.starts_with("text/")
            || name.starts_with("subpicture/")
            || name.starts_with("application/x-subtitle")
        {
            if name.starts_with("audio/") {
                s.audio.get_or_insert_with(|| describe_caps(&caps));
            }
            // Not decoded: we only want pictures.
            return Some(false.to_value());
        }
        if !from_typefind && name.starts_with("video/") && !name.starts_with("video/x-raw") && !is_container(&caps) {
            // The last one seen is the parser's output, closest to the decoder.
            s.codec = Some(describe_caps(&caps));
        }
        Some(true.to_value())
    });

    let st = shared.clone();
    let path_buf = path.to_path_buf();
    decodebin.connect_no_more_pads(move |_| {
        let mut s = lock(&st);
        if !s.linked && s.error.is_none() {
            let detail = match &s.audio {
                Some(a) => format!("audio only ({a}), no video stream"),
                None => "no video stream".to_string(),
            };
            s.error = Some(VideoError::not_video(&path_buf, detail));
        }
    });

    let st = shared.clone();
    decodebin.connect("deep-element-added", false, move |args| {
        let element = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
        if !is_video_decoder(&element) {
            return None;
        }
        // Fail on a run of undecodable frames instead of concealing garbage forever.
        if element.find_property("max-errors").is_some() {
            element.set_property("max-errors", 10i32);
        }
        // libav outputs the frames it decodes without their reference frames (a recording that
        // starts mid-GOP, a seek that lands before the first keyframe) as grey smears unless told
        // not to; dropped, the next whole frame answers for those times, as the probe counts it.
        if element.find_property("output-corrupt").is_some_and(|p| p.value_type() == bool::static_type()) {
            element.set_property("output-corrupt", false);
        }
        // libav's "auto" runs one frame thread per core, and H.264 frame threads wait on each
        // other's reference rows: gst-launch's decode leaves 20–40% of a 2-core box idle. One
        // thread more than cores fills part of it (measured on 2 cores: 10% faster on 1080p
        // 10-bit 4:4:4, no change within noise on 8-bit 4:2:0).
        if element.find_property("max-threads").is_some_and(|p| p.value_type() == i32::static_type())
            && element.property::<i32>("max-threads") == 0
        {
            element.set_property("max-threads", gst_util::decoder_threads());
        }
        if let Some(pad) = element.static_pad("sink") {
            let st2 = st.clone();
            pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                let mut s = lock(&st2);
                if let Some(ev) = info.event() {
                    match ev.view() {
                        gst::EventView::Segment(seg) => {
                            if let Ok(seg) = seg.segment().clone().downcast::<gst::ClockTime>() {
                                s.kf_segment = Some(seg);
                            }
                        }
                        // The demuxer's tags reach the decoder before its first frame, so before
                        // the decoded stream is linked (and its size fixed).
                        gst::EventView::Tag(tag) => {
                            if let Some(o) = tag_orientation(tag.tag()) {
                                s.tagged = Some(o);
                            }
                        }
                        _ => {}
                    }
                } else if let Some(buf) = info.buffer() {
                    let flags = buf.flags();
                    let key = !flags.contains(gst::BufferFlags::DELTA_UNIT);
                    if let Some(pts) = buf.pts() {
                        let t = stream_time(s.kf_segment.as_ref(), pts);
                        let end = t + buf.duration().map(secs).unwrap_or(s.fallback_dur);
                        if s.input_end.is_none_or(|e| end > e) {
                            s.input_end = Some(end);
                        }
                        if key {
                            match s.last_kf {
                                Some(last) if t > last + TIME_TOL => {
                                    s.kf_interval = Some(t - last);
                                    s.last_kf = Some(t);
                                }
                                Some(_) => {}
                                None => s.last_kf = Some(t),
                            }
                            if s.keyframes {
                                if s.kf_window.len() >= KF_WINDOW {
                                    s.kf_window.pop_front();
                                }
                                s.kf_window.push_back(t);
                            }
                        }
                    }
                    // Keyframe accuracy: non-key frames are never decoded.
                    if s.keyframes && !key {
                        s.skipped += 1;
                        return drop_frame(info);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        None
    });

    let st = shared.clone();
    let queue = queue.clone();
    let convert_weak = convert_in.downgrade();
    let capsfilter_weak = capsfilter.downgrade();
    let size = spec.size;
    let yuv = spec.format == PixelFormat::Yuv;
    let path_buf = path.to_path_buf();
    decodebin.connect_pad_added(move |dbin, pad| {
        let (Some(convert), Some(capsfilter)) = (convert_weak.upgrade(), capsfilter_weak.upgrade()) else { return };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(name) = caps.structure(0).map(|s| s.name().to_string()) else { return };
        if !name.starts_with("video/x-raw") {
            if name.starts_with("video/") {
                let mut s = lock(&st);
                s.error.get_or_insert_with(|| {
                    VideoError::unsupported(
                        &path_buf,
                        format!("no decoder installed for its video codec ({}); install gstreamer1.0-libav and the plugins-bad/-ugly sets", describe_caps(&caps)),
                    )
                });
            }
            return;
        }
        if let Some(reason) = limits.exceeded(&caps) {
            lock(&st).error.get_or_insert_with(|| VideoError::unsupported(&path_buf, reason));
            return;
        }
        if !caps.is_fixed() {
            // decodebin exposes a raw pad without a format only when the decoder never produced
            // a frame (e.g. the few keyframes that keyframe accuracy decodes were all damaged).
            lock(&st).error.get_or_insert_with(|| {
                VideoError::corrupt(
                    &path_buf,
                    "no frame could be decoded (the bitstream is damaged or empty); re-encode or re-copy the file",
                )
            });
            return;
        }
        let Ok(vinfo) = gst_video::VideoInfo::from_caps(&caps) else {
            lock(&st).error.get_or_insert_with(|| VideoError::corrupt(&path_buf, format!("unusable video caps {caps}")));
            return;
        };
        // Whether frames pass the converter untouched (no scaling, no format conversion).
        let untouched = {
            let mut s = lock(&st);
            if s.linked {
                return;
            }
            s.linked = true;
            let par = vinfo.par();
            let par = (par.numer().max(1) as u32, par.denom().max(1) as u32);
            let fps = vinfo.fps();
            let fps = (fps.numer().max(0) as u32, fps.denom().max(1) as u32);
            if fps.0 > 0 {
                s.fallback_dur = fps.1 as f64 / fps.0 as f64;
            }
            // RGB and gray frames are turned as the container says (after scaling, in Rust), so
            // sizes and crops are those of the picture as shown; YUV frames stay as stored.
            if s.tagged.is_none() {
                s.tagged = pad.sticky_event::<gst::event::Tag>(0).and_then(|t| tag_orientation(t.tag()));
            }
            let orientation = if yuv { Orientation::UPRIGHT } else { s.tagged.unwrap_or_default() };
            let (shown_w, shown_h) = orientation.shown_size(vinfo.width(), vinfo.height());
            let shown_par = if orientation.swaps_axes() { (par.1, par.0) } else { par };
            let geometry = Geometry::compute(&size, shown_w, shown_h, shown_par);
            let (scale_w, scale_h) = orientation.shown_size(geometry.scale_w, geometry.scale_h);
            s.src = Some(SrcInfo { width: vinfo.width(), height: vinfo.height(), par, fps });
            s.geometry = Some(geometry);
            // The decoder's own 8-bit YUV passes through untouched (scaled if asked); anything
            // else becomes I420. RGB and gray are made in Rust from the planes (convert.rs).
            let mut out = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(YUV_FORMATS))
                .field("width", scale_w as i32)
                .field("height", scale_h as i32);
            if size != Size::Native {
                out = out.field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
            }
            capsfilter.set_property("caps", out.build());
            scale_w == vinfo.width()
                && scale_h == vinfo.height()
                && YUV_FORMATS.contains(&vinfo.format().to_str().as_str())
                && (size == Size::Native || par == (1, 1))
        };
        let first = if untouched {
            &convert
        } else {
            if let Err(e) = insert_queue(dbin, &queue, &convert) {
                lock(&st).error.get_or_insert_with(|| VideoError::Backend(format!("cannot add the queue: {e}")));
                return;
            }
            &queue
        };
        let Some(sinkpad) = first.static_pad("sink") else { return };
        let st2 = st.clone();
        sinkpad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH,
            move |_, info| {
                let mut s = lock(&st2);
                if let Some(ev) = info.event() {
                    match ev.view() {
                        gst::EventView::FlushStop(_) if s.phase == Phase::Flushing => s.phase = Phase::Active,
                        gst::EventView::Segment(seg) => {
                            if let Ok(seg) = seg.segment().clone().downcast::<gst::ClockTime>() {
                                s.segment = Some(seg);
                            }
                        }
                        _ => {}
                    }
                    return gst::PadProbeReturn::Ok;
                }
                let Some(buf) = info.buffer() else { return gst::PadProbeReturn::Ok };
                s.decoded += 1;
                let pts = buf.pts().map(|p| stream_time(s.segment.as_ref(), p));
                if s.decoded == 1 {
                    s.first_pts = pts;
                }
                let dur = buf.duration().map(secs).unwrap_or(s.fallback_dur);
                let keep = match s.phase {
                    Phase::Preroll => {
                        s.preroll_pts = pts;
                        true
                    }
                    Phase::Flushing => false,
                    Phase::Active => match pts.or_else(|| s.last_pts.map(|p| p + dur)) {
                        Some(pts) => {
                            // (A seek before the stream's first frame lands on that frame.)
                            if let Some(t) = s.seek_target.take()
                                && pts > t + TIME_TOL
                                && s.first_pts.is_none_or(|f| pts > f + TIME_TOL)
                            {
                                // The seek landed after its target: wait for GstDecoder::recover.
                                s.overshoot = Some(t);
                                s.phase = Phase::Flushing;
                                return drop_frame(info);
                            }
                            s.last_pts = Some(pts);
                            if s.keyframes {
                                // Only keyframes from inside the range go on to the picker.
                                let keep = s.take_keyframe(pts) && pts >= s.span_start - TIME_TOL;
                                if keep {
                                    s.kept += 1;
                                }
                                return if keep { gst::PadProbeReturn::Ok } else { drop_frame(info) };
                            }
                            let keep = s.selector.as_mut().is_some_and(|sel| sel.offer(pts, dur));
                            if keep {
                                s.kept += 1;
                            }
                            keep
                        }
                        None => false,
                    },
                };
                if keep { gst::PadProbeReturn::Ok } else { drop_frame(info) }
            },
        );
        if let Err(e) = pad.link(&sinkpad) {
            lock(&st).error.get_or_insert_with(|| VideoError::Backend(format!("cannot link the decoder: {e:?}")));
        }
    });
}

/// Put `queue` in front of `convert` in the decoder's bin, in the bin's state.
fn insert_queue(decodebin: &gst::Element, queue: &gst::Element, convert: &gst::Element) -> Result<(), String> {
    let bin = decodebin.parent().and_then(|p| p.downcast::<gst::Bin>().ok()).ok_or("the decoder has no bin")?;
    bin.add(queue).map_err(|e| e.to_string())?;
    queue.link(convert).map_err(|e| e.to_string())?;
    queue.sync_state_with_parent().map_err(|e| e.to_string())?;
    Ok(())
}

fn default_threads() -> usize {
    1
}

/// Params of `video.decode`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodeParams {
    /// Sample at most this many frames per second. Leave `fps`, `count` and `timestamps_s` all
    /// unset for every frame.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Sample this many frames spread uniformly over the span.
    #[serde(default)]
    pub count: Option<u32>,
    /// Sample the frames displayed at these times, in seconds from the span's start.
    #[serde(default)]
    pub timestamps_s: Option<Vec<f64>>,
    /// For `fps`, `count` and `timestamps_s`: `exact` (the frame displayed at each wanted time)
    /// or `keyframe` (the keyframe nearest to each wanted time, inside the span; only keyframes
    /// are decoded, so sparse sampling of a long video costs a fraction of a full decode). The
    /// keyframe's real time is reported, which may differ from the wanted time by up to
    /// half the keyframe interval (more where keyframes are irregular); wanted times sharing a
    /// keyframe yield it once; a span without a keyframe is sampled exactly. Not valid with
    /// every frame.
    // Left out of the serialized params when exact, so memo keys of existing graphs stay.
    #[serde(default, skip_serializing_if = "Accuracy::is_exact")]
    #[schemars(extend("default" = "exact"))]
    pub accuracy: Accuracy,
    /// Output width (even); unset with `height` unset: the stored size.
    #[serde(default)]
    pub width: Option<u32>,
    /// Output height (even).
    #[serde(default)]
    pub height: Option<u32>,
    /// How width and height apply: `fit` (inside, keep aspect), `fill` (cover, crop the centre),
    /// `exact` (stretch).
    #[serde(default)]
    pub resize: ResizeMode,
    /// `rgb` (3 bytes per pixel) or `gray`.
    #[serde(default)]
    pub format: PixelFormat,
    /// For Video inputs: start of the span, seconds (Clip inputs use their own span).
    #[serde(default)]
    pub start_s: Option<f64>,
    /// For Video inputs: end of the span, seconds (default: the end of the video).
    #[serde(default)]
    pub end_s: Option<f64>,
    /// Threads per worker decoding videos.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl DecodeParams {
    fn sampling(&self) -> Result<Sampling, String> {
        match (self.fps, self.count, &self.timestamps_s) {
            (None, None, None) => Ok(Sampling::All),
            (Some(fps), None, None) => Ok(Sampling::Fps { fps }),
            (None, Some(count), None) => Ok(Sampling::Uniform { count }),
            (None, None, Some(t)) => Ok(Sampling::Timestamps { times_s: t.clone() }),
            _ => Err("set at most one of `fps`, `count` and `timestamps_s`".into()),
        }
    }
}

impl Default for DecodeParams {
    fn default() -> Self {
        DecodeParams {
            fps: None,
            count: None,
            timestamps_s: None,
            accuracy: Accuracy::Exact,
            width: None,
            height: None,
            resize: ResizeMode::Fit,
            format: PixelFormat::Rgb,
            start_s: None,
            end_s: None,
            threads: default_threads(),
        }
    }
}

/// The `video.decode` operator.
pub struct VideoDecode;

impl TypedOperator for VideoDecode {
    type Params = DecodeParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "video.decode",
            summary: "Decode sampled frames of each Video or Clip into a frames blob in the run store",
            doc: "Decodes the frames of each Video (or of each Clip's span) at the requested sampling \
                  (every frame, `fps`, `count` uniformly spaced, or `timestamps_s`; with `accuracy` = \
                  keyframe, the nearest keyframes instead, decoding only keyframes), size (`width`/`height` \
                  with `resize` = fit, fill or exact; even sizes) and pixel `format` (rgb or gray), with \
                  accurate seeking; a video stored turned (a phone's portrait recording) comes out as shown, \
                  sizes and crops taken as shown, and writes them into the run store as one frames blob (format: \
                  b\"MGFRAMES\", a 32-byte header with width, height, channels and fps, then per frame an \
                  f64 presentation time and the packed pixels; see medgen_operators::video::blob). The \
                  record comes out with metadata `frames_blob` (the blob key), `frames_count`, \
                  `frames_width`, `frames_height`, `frames_format` and `frames_fps`. Pixels never flow \
                  through the dataflow; later stages that need pixels call the decoder API directly.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[Kind::Video, Kind::Clip], required: true, doc: "videos or clips" }],
            outputs: &[OutPort {
                name: OUT_PORT,
                kind: OutKind::SameAs("in"),
                doc: "the same records with frames_* metadata",
            }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &DecodeParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if let Err(e) = p.sampling() {
            v.push(ParamIssue::error("fps", e, Some("keep one of them".into())));
        }
        if let Some(f) = p.fps
            && !(f > 0.0 && f.is_finite())
        {
            v.push(ParamIssue::error("fps", "must be a positive number", Some("e.g. fps = 1.0".into())));
        }
        if p.accuracy == Accuracy::Keyframe && matches!(p.sampling(), Ok(Sampling::All)) {
            v.push(ParamIssue::error(
                "accuracy",
                "`accuracy = \"keyframe\"` needs wanted times to snap to keyframes: set `fps`, `count` or \
                 `timestamps_s` (without one, every frame is wanted)",
                Some("remove `accuracy`, or sample, e.g. `fps = 1.0`".into()),
            ));
        }
        if p.count == Some(0) {
            v.push(ParamIssue::error("count", "must be at least 1", None));
        }
        if let Err(e) = size_from_params(p.width, p.height, p.resize) {
            v.push(ParamIssue::error("width", e, None));
        }
        if let (Some(s), Some(e)) = (p.start_s, p.end_s)
            && e <= s
        {
            v.push(ParamIssue::error("end_s", "must be after start_s", None));
        }
        if p.start_s.is_some_and(|s| s < 0.0 || !s.is_finite()) {
            v.push(ParamIssue::error("start_s", "must be a number ≥ 0", None));
        }
        crate::api::pool::check_threads(p.threads, &mut v);
        v
    }

    fn fingerprint(&self, p: &DecodeParams) -> serde_json::Value {
        fingerprint_without(p, &["threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &DecodeParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let p = p.clone();
        let services = ctx.services.clone();
        let threads = p.threads;
        Ok(pool_stage(ctx, input, threads, move |rec: &Record, ictx| decode_record(rec, &p, services.as_ref(), ictx)))
    }
}

/// `video.decode` on one record: decode, write the frames blob, annotate the record.
pub fn decode_record(
    rec: &Record,
    p: &DecodeParams,
    services: &dyn Services,
    ctx: &ItemCtx,
) -> Result<Vec<Record>, ItemError> {
    let (uri, range) = match rec {
        Record::Video(v) => (v.uri.clone(), TimeRange { start_s: p.start_s.unwrap_or(0.0), end_s: p.end_s }),
        Record::Clip(c) => (c.uri.clone(), TimeRange::new(c.start_s.0, c.end_s.0)),
        other => {
            return Err(ItemError::invalid(format!(
                "video.decode takes Video or Clip records, got a {}",
                other.kind()
            )));
        }
    };
    let path = local_path(&uri)?;
    let sampling = match p.sampling().map_err(ItemError::invalid)? {
        Sampling::Timestamps { times_s } => {
            Sampling::Timestamps { times_s: times_s.iter().map(|t| t + range.start_s).collect() }
        }
        s => s,
    };
    let size = size_from_params(p.width, p.height, p.resize).map_err(ItemError::invalid)?;
    let spec = DecodeSpec::all()
        .with_sampling(sampling.clone())
        .with_size(size)
        .with_range(range)
        .with_format(p.format)
        .with_accuracy(p.accuracy)
        .with_deadline(ctx.deadline)
        .with_duration_hint(probed_duration(rec));
    let dec = Decoder::open(&path, &spec)?;
    let info = dec.info().clone();
    // Keyframes are not evenly spaced in time: no rate then.
    let fps = match sampling {
        Sampling::All => info.fps_f64().unwrap_or(0.0),
        Sampling::Fps { fps } if p.accuracy.is_exact() => info.fps_f64().map_or(fps, |f| f.min(fps)),
        _ => 0.0,
    };
    let tmp = services.tmp_dir();
    std::fs::create_dir_all(&tmp).map_err(|e| ItemError::transient(format!("cannot create {}: {e}", tmp.display())))?;
    let file = tempfile::Builder::new()
        .prefix(".frames-")
        .tempfile_in(&tmp)
        .map_err(|e| ItemError::transient(format!("cannot create a temporary file in {}: {e}", tmp.display())))?;
    let header = FramesHeader { width: info.out_width, height: info.out_height, format: p.format, fps };
    let write_err =
        |e: std::io::Error| ItemError::transient(format!("writing frames to {}: {e}", file.path().display()));
    let mut writer = FramesWriter::create(file.path(), header).map_err(write_err)?;
    for frame in dec {
        let frame = frame?;
        writer.write(&frame).map_err(write_err)?;
        if ctx.shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ItemError::transient("the run is stopping"));
        }
    }
    let count = writer.finish().map_err(write_err)?;
    if count == 0 {
        // (Downstream operators would have nothing to look at; an empty blob is no result.)
        let end = range.end_s.map_or("the end".to_string(), |e| format!("{e:.3} s"));
        return Err(ItemError::invalid(format!(
            "{}: no frame is shown between {:.3} s and {end} (a gap in the stream's timestamps, or past its \
             last frame): there is nothing to decode there; drop the span, or re-encode the file with \
             continuous timestamps",
            path.display(),
            range.start_s
        )));
    }
    let key = services.blob_put_file(file.path()).map_err(|e| ItemError::transient(e.to_string()))?;
    let mut out = rec.clone();
    let meta = match &mut out {
        Record::Video(v) => &mut v.metadata,
        Record::Clip(c) => &mut c.metadata,
        other => return Err(ItemError::invalid(format!("unexpected {}", other.kind()))),
    };
    meta.insert("frames_blob".into(), key);
    meta.insert("frames_count".into(), count.to_string());
    meta.insert("frames_width".into(), info.out_width.to_string());
    meta.insert("frames_height".into(), info.out_height.to_string());
    meta.insert("frames_format".into(), p.format.as_str().into());
    meta.insert("frames_fps".into(), format!("{fps}"));
    Ok(vec![out])
}
