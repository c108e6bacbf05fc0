//! `video.probe` and [`probe`]: what a video file is, from GStreamer's discoverer (the same
//! numbers `gst-discoverer-1.0` prints), plus an exact frame count where that is cheap.

use super::gst_util::{self, Pipeline, classify, describe_caps};
use super::orient::Orientation;
use super::{VideoError, check_container, check_input_file, is_dicom_file, local_path};
use crate::api::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_pbutils as pbutils;
use gstreamer_pbutils::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When [`probe`] counts frames exactly (by parsing the stream, without decoding it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum CountFrames {
    /// For files up to the size limit; larger files get duration × fps, marked estimated.
    #[default]
    Auto,
    /// Always (reads the whole file).
    Always,
    /// Never: duration × fps, marked estimated.
    Never,
}

/// How [`probe`] works.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Time the discoverer may take.
    pub timeout: Duration,
    pub count_frames: CountFrames,
    /// Largest file `CountFrames::Auto` counts, in bytes.
    pub count_max_bytes: u64,
    /// Overall deadline (the per-item timeout), if any.
    pub deadline: Option<Instant>,
    /// Declared frame sizes over these fail before anything decodes.
    pub limits: SizeLimits,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            timeout: Duration::from_secs(30),
            count_frames: CountFrames::Auto,
            count_max_bytes: 256 << 20,
            deadline: None,
            limits: SizeLimits::default(),
        }
    }
}

/// Probe a video file (or a DICOM cine file). Fails with a specific reason for files that are
/// not videos: audio only, still images, unrecognised formats, truncated or corrupt files.
pub fn probe(path: &Path, opts: &ProbeOptions) -> Result<ProbeInfo, VideoError> {
    let size = check_input_file(path)?;
    if is_dicom_file(path) {
        return crate::source::dicom::probe(path);
    }
    check_container(path)?;
    gst_util::init()?;
    let started = Instant::now();
    let count_wanted = match opts.count_frames {
        CountFrames::Always => true,
        CountFrames::Never => false,
        CountFrames::Auto => size <= opts.count_max_bytes,
    };
    let deadline = opts.deadline.unwrap_or_else(|| Instant::now() + opts.timeout.max(Duration::from_secs(600)));
    // First the cheap scan: refuses absurd declared sizes before anything decodes, counts frames.
    let counted = scan_stream(path, opts.limits, count_wanted, started, deadline)?;
    let uri = gst_util::file_uri(path)?;
    let mut timeout = opts.timeout;
    if let Some(d) = opts.deadline {
        timeout = timeout.min(d.saturating_duration_since(Instant::now()));
    }
    let discoverer = pbutils::Discoverer::new(gst::ClockTime::from_nseconds(timeout.as_nanos().max(1_000_000) as u64))
        .map_err(|e| VideoError::Backend(format!("cannot create a discoverer: {e}")))?;
    let asked = Instant::now();
    let info = discoverer.discover_uri(&uri).map_err(|e| {
        if asked.elapsed() >= timeout {
            return VideoError::timeout(path, started, "probing");
        }
        classify(path, &e, None)
    })?;
    match info.result() {
        pbutils::DiscovererResult::Ok => {}
        pbutils::DiscovererResult::Timeout => return Err(VideoError::timeout(path, started, "probing")),
        pbutils::DiscovererResult::MissingPlugins => {
            let missing: Vec<String> =
                info.missing_elements_installer_details().iter().map(|s| s.to_string()).collect();
            return Err(VideoError::unsupported(
                path,
                format!(
                    "GStreamer plugins are missing ({}); install gstreamer1.0-libav and the plugins-bad/-ugly sets",
                    missing.join(", ")
                ),
            ));
        }
        pbutils::DiscovererResult::UriInvalid => {
            return Err(VideoError::Unreadable { path: path.to_path_buf(), reason: "invalid uri".into() });
        }
        other => return Err(VideoError::corrupt(path, format!("the discoverer failed ({other:?})"))),
    }
    from_discoverer(path, size, &info, count_wanted.then_some(counted))
}

fn from_discoverer(
    path: &Path,
    size: u64,
    info: &pbutils::DiscovererInfo,
    counted: Option<FrameCount>,
) -> Result<ProbeInfo, VideoError> {
    let audio = info.audio_streams();
    let audio_codec = audio.first().and_then(|a| a.caps()).map(|c| describe_caps(&c));
    // Parsed streams can be nested inside unparsed ones (MPEG program streams): take the stream
    // that knows its size.
    let videos = info.video_streams();
    let Some(video) = videos.iter().max_by_key(|v| v.width() as u64 * v.height() as u64) else {
        let detail = match &audio_codec {
            Some(a) => format!("audio only ({a}), no video stream"),
            None => "no video stream".to_string(),
        };
        return Err(VideoError::not_video(path, detail));
    };
    let video_codec = video.caps().map(|c| describe_caps(&c));
    if video.is_image() {
        return Err(VideoError::not_video(
            path,
            format!("a still image ({}), not a video", video_codec.as_deref().unwrap_or("image")),
        ));
    }
    let container = info
        .stream_info()
        .and_then(|s| s.downcast::<pbutils::DiscovererContainerInfo>().ok())
        .and_then(|c| c.caps())
        .map(|c| describe_caps(&c));
    let (width, height) = (video.width(), video.height());
    let par = video.par();
    let (pn, pd) = (par.numer().max(1) as u64, par.denom().max(1) as u64);
    let tagged =
        video.tags().and_then(|t| t.get::<gst::tags::ImageOrientation>().and_then(|v| Orientation::from_tag(v.get())));
    let orientation = tagged.unwrap_or_default();
    // As shown: a portrait phone recording is stored landscape and turned 90°.
    let display_aspect = (width > 0 && height > 0).then(|| {
        let (n, d) = (width as u64 * pn, height as u64 * pd);
        let g = gcd(n, d).max(1);
        let (n, d) = ((n / g) as u32, (d / g) as u32);
        if orientation.swaps_axes() { (d, n) } else { (n, d) }
    });
    let fr = video.framerate();
    let fps = (fr.numer() >= 0 && fr.denom() > 0).then(|| (fr.numer() as u32, fr.denom() as u32));
    let fps_f = fps.filter(|f| f.0 > 0).map(|(n, d)| n as f64 / d as f64);
    let declared = info.duration().map(gst_util::secs).filter(|d| *d > 0.0);
    let (start_s, duration_s) = stream_span(declared, counted.as_ref(), fps_f);
    let bitrate = match video.bitrate() {
        0 => duration_s.map(|d| (size as f64 * 8.0 / d) as u64),
        b => Some(b as u64),
    };
    let rotation_deg = tagged.map(|o| o.degrees());

    let mut variable_fps = fps.is_some_and(|f| f.0 == 0);
    let estimate = match (duration_s, fps_f) {
        (Some(d), Some(f)) => Some((d * f).round() as u64),
        _ => None,
    };
    let (frame_count, frame_count_exact) = if let Some(c) = counted {
        if c.frames == 0 {
            return Err(VideoError::corrupt(path, "the video stream holds no frames"));
        }
        if let (Some(min), Some(max)) = (c.min_duration, c.max_duration)
            && min > 0.0
            && max / min > 1.05
        {
            variable_fps = true;
        }
        (Some(c.frames), true)
    } else {
        (estimate, false)
    };
    Ok(ProbeInfo {
        container,
        video_codec,
        audio_codec,
        width: Some(width),
        height: Some(height),
        display_aspect,
        fps,
        variable_fps,
        duration_s: duration_s.map(F64),
        start_s: start_s.map(F64),
        bitrate,
        frame_count,
        frame_count_exact,
        rotation_deg,
        has_audio: !audio.is_empty(),
    })
}

/// Where the first counted frame is shown on the stream's timeline when that is clearly after 0,
/// and the video's duration.
///
/// Counted frames last their span where the container's figure is not about them:
/// - frames that start late (MPEG program and transport streams, whose timeline starts where their
///   clock stood; a recording cut in the middle of a GOP): the container declares its clock's span;
/// - a declared duration more than 2 % (+0.1 s) longer than the frames: an audio track that runs
///   on, or a file cut short after its header was written;
/// - none declared, or more than 10 % (+0.1 s) short of the frames (files written while
///   recording: live WebM/Matroska declare the first fraction of a second).
///
/// Otherwise (and without a count) the duration is the container's.
fn stream_span(declared: Option<f64>, counted: Option<&FrameCount>, fps: Option<f64>) -> (Option<f64>, Option<f64>) {
    let Some(c) = counted else { return (None, declared) };
    let (Some(first), Some(end)) = (c.start_s, c.end_s) else { return (None, declared) };
    // Buffers without durations: the last frame still lasts one frame interval.
    let end = end + if c.max_duration.is_some() { 0.0 } else { fps.filter(|f| *f > 0.0).map_or(0.0, |f| 1.0 / f) };
    if !(end > 0.0 && end.is_finite()) {
        return (None, declared);
    }
    let start = (first.is_finite() && first > super::TIME_TOL && first < end).then_some(first);
    let span = end - start.unwrap_or(0.0);
    let duration = match declared {
        Some(d) if start.is_none() && d <= span * 1.02 + 0.1 && span <= d * 1.1 + 0.1 => Some(d),
        _ => Some(span),
    };
    (start, duration)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Result of counting a video stream's frames.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCount {
    pub frames: u64,
    /// Shortest and longest frame duration seen (for variable frame rate detection).
    pub min_duration: Option<f64>,
    pub max_duration: Option<f64>,
    /// Where the last counted frame ends on the stream timeline (its presentation time plus its
    /// duration, or just its time when buffers carry no duration), seconds. Containers written
    /// as they are recorded (live WebM/Matroska, MPEG-TS) declare no duration or an estimate
    /// from their first fraction of a second; this one is measured.
    pub end_s: Option<f64>,
    /// Where the first counted frame starts on the stream timeline, seconds.
    pub start_s: Option<f64>,
}

/// Size limits a stream is checked against before anything decodes it.
#[derive(Clone, Copy, Debug)]
pub struct SizeLimits {
    pub max_pixels: u64,
    pub max_side: u32,
}

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits { max_pixels: super::DEFAULT_MAX_PIXELS, max_side: super::DEFAULT_MAX_SIDE }
    }
}

impl SizeLimits {
    /// Whether caps declare a frame size over the limits; returns a reason.
    pub(crate) fn exceeded(&self, caps: &gst::CapsRef) -> Option<String> {
        let s = caps.structure(0)?;
        let w = s.get::<i32>("width").ok()?;
        let h = s.get::<i32>("height").ok()?;
        let (w, h) = (w.max(0) as u64, h.max(0) as u64);
        (w > self.max_side as u64 || h > self.max_side as u64 || w * h > self.max_pixels).then(|| {
            format!(
                "declared frame size {w}×{h} ({:.0} megapixels) exceeds the limit (max_pixels = {}, max_side = {}); raise them if the file is genuine",
                (w * h) as f64 / 1e6,
                self.max_pixels,
                self.max_side
            )
        })
    }
}

/// A scan that makes no progress for this long fails.
const SCAN_STALL: Duration = Duration::from_secs(15);

#[derive(Default)]
struct ScanState {
    count: FrameCount,
    video_linked: bool,
    no_more_pads: bool,
    error: Option<String>,
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
}

/// Demux and parse a file without decoding it: refuses declared frame sizes over `limits` before
/// any decoder could allocate them, and with `count` counts the first video stream's frames (one
/// parsed access unit per frame; header-only buffers and buffers outside the segment do not
/// count). Without `count` it stops as soon as the streams are known.
pub fn scan_stream(
    path: &Path,
    limits: SizeLimits,
    count: bool,
    started: Instant,
    deadline: Instant,
) -> Result<FrameCount, VideoError> {
    gst_util::init()?;
    let p = Pipeline::new("medgen-scan")?;
    let src = gst_util::make("filesrc")?;
    src.set_property("location", path.to_string_lossy().as_ref());
    let parse = gst_util::make("parsebin")?;
    p.pipeline.add_many([&src, &parse]).map_err(|e| VideoError::Backend(e.to_string()))?;
    src.link(&parse).map_err(|e| VideoError::Backend(e.to_string()))?;
    let state = Arc::new(Mutex::new(ScanState::default()));

    let st = state.clone();
    parse.connect("autoplug-continue", false, move |args| {
        let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok());
        if let Some(reason) = caps.as_ref().and_then(|c| limits.exceeded(c)) {
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            s.error.get_or_insert(reason);
            return Some(false.to_value());
        }
        Some(true.to_value())
    });
    let st = state.clone();
    parse.connect_no_more_pads(move |_| {
        st.lock().unwrap_or_else(|e| e.into_inner()).no_more_pads = true;
    });
    let pipe_weak = p.pipeline.downgrade();
    let st = state.clone();
    parse.connect_pad_added(move |_, pad| {
        let Some(pipe) = pipe_weak.upgrade() else { return };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        if let Some(reason) = limits.exceeded(&caps) {
            st.lock().unwrap_or_else(|e| e.into_inner()).error.get_or_insert(reason);
            return;
        }
        let is_video =
            caps.structure(0).is_some_and(|s| s.name().starts_with("video/") || s.name().starts_with("image/"));
        let Ok(sink) = gst::ElementFactory::make("fakesink").property("sync", false).property("async", false).build()
        else {
            return;
        };
        if pipe.add(&sink).is_err() {
            return;
        }
        let _ = sink.sync_state_with_parent();
        let Some(sinkpad) = sink.static_pad("sink") else { return };
        let first_video = {
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            let first = is_video && !s.video_linked;
            if first {
                s.video_linked = true;
            }
            first
        };
        if first_video {
            let st2 = st.clone();
            sinkpad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                let mut s = st2.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(ev) = info.event() {
                    if let gst::EventView::Segment(seg) = ev.view()
                        && let Ok(seg) = seg.segment().clone().downcast::<gst::ClockTime>()
                    {
                        s.segment = Some(seg);
                    }
                    return gst::PadProbeReturn::Ok;
                }
                let Some(buf) = info.buffer() else { return gst::PadProbeReturn::Ok };
                // Codec headers (Theora, Vorbis) carry no timestamps; H.264 access units that
                // carry parameter sets are flagged HEADER too but are frames.
                if buf.flags().contains(gst::BufferFlags::HEADER) && buf.pts().is_none() {
                    return gst::PadProbeReturn::Ok;
                }
                if let (Some(pts), Some(seg)) = (buf.pts(), s.segment.as_ref()) {
                    let end = buf.duration().map(|d| pts + d).unwrap_or(pts);
                    let before = seg.start().is_some_and(|st| end <= st && pts < st);
                    let after = seg.stop().is_some_and(|st| pts >= st);
                    if before || after {
                        return gst::PadProbeReturn::Ok;
                    }
                }
                s.count.frames += 1;
                if let Some(pts) = buf.pts() {
                    let end = pts + buf.duration().unwrap_or(gst::ClockTime::ZERO);
                    let stream = |t: gst::ClockTime| {
                        gst_util::secs(s.segment.as_ref().and_then(|seg| seg.to_stream_time(t)).unwrap_or(t))
                    };
                    let (t0, t1) = (stream(pts), stream(end));
                    s.count.start_s = Some(s.count.start_s.map_or(t0, |e: f64| e.min(t0)));
                    s.count.end_s = Some(s.count.end_s.map_or(t1, |e: f64| e.max(t1)));
                }
                if let Some(d) = buf.duration() {
                    let d = gst_util::secs(d);
                    s.count.min_duration = Some(s.count.min_duration.map_or(d, |m: f64| m.min(d)));
                    s.count.max_duration = Some(s.count.max_duration.map_or(d, |m: f64| m.max(d)));
                }
                gst::PadProbeReturn::Ok
            });
        }
        let _ = pad.link(&sinkpad);
    });
    p.set_state(gst::State::Playing, path)?;
    let mut progress = (u64::MAX, Instant::now());
    loop {
        {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(reason) = &s.error {
                return Err(VideoError::unsupported(path, reason.clone()));
            }
            if !count && s.no_more_pads {
                return Ok(s.count);
            }
            // decodebin/parsebin swallow some errors of the elements they try: a pipeline that
            // does nothing at all for a long time on a local file is broken.
            let now = s.count.frames + u64::from(s.video_linked) + u64::from(s.no_more_pads);
            if now != progress.0 {
                progress = (now, Instant::now());
            } else if progress.1.elapsed() > SCAN_STALL {
                return Err(VideoError::corrupt(
                    path,
                    format!(
                        "GStreamer made no progress reading it for {} s (a damaged file, or a form it cannot read)",
                        SCAN_STALL.as_secs()
                    ),
                ));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(VideoError::timeout(
                path,
                started,
                if count { "counting frames" } else { "reading the stream headers" },
            ));
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        let msg = p.bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(wait.as_nanos() as u64),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        );
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => {
                let s = state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(reason) = &s.error {
                    return Err(VideoError::unsupported(path, reason.clone()));
                }
                return Ok(s.count);
            }
            Some(gst::MessageView::Error(e)) => {
                let s = state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(reason) = &s.error {
                    return Err(VideoError::unsupported(path, reason.clone()));
                }
                return Err(classify(path, &e.error(), e.debug().as_deref()));
            }
            _ => {}
        }
    }
}

fn default_count_max_mb() -> u64 {
    256
}
fn default_min_frames() -> u64 {
    2
}
fn default_max_pixels() -> u64 {
    super::DEFAULT_MAX_PIXELS
}
fn default_max_side() -> u32 {
    super::DEFAULT_MAX_SIDE
}
fn default_timeout() -> f64 {
    30.0
}
fn default_threads() -> usize {
    1
}

/// Params of `video.probe`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeParams {
    /// Count frames exactly by parsing the stream (no decoding): `auto` for files up to
    /// `count_max_mb`, `always`, or `never` (then `frame_count` is duration × fps, marked estimated).
    #[serde(default)]
    pub count_frames: CountFrames,
    /// Largest file, in MiB, whose frames `count_frames = "auto"` counts.
    #[serde(default = "default_count_max_mb")]
    pub count_max_mb: u64,
    /// Videos with fewer frames fail as invalid input (a 1-frame "video" is a still image).
    #[serde(default = "default_min_frames")]
    pub min_frames: u64,
    /// Videos whose declared frame size has more pixels fail as unsupported (before any decoding).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Videos wider or taller than this fail as unsupported.
    #[serde(default = "default_max_side")]
    pub max_side: u32,
    /// Seconds the discoverer may take on one file (the graph's `item_timeout_s` also applies).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Threads per worker probing files.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Default for ProbeParams {
    fn default() -> Self {
        ProbeParams {
            count_frames: CountFrames::Auto,
            count_max_mb: default_count_max_mb(),
            min_frames: default_min_frames(),
            max_pixels: default_max_pixels(),
            max_side: default_max_side(),
            timeout_s: default_timeout(),
            threads: default_threads(),
        }
    }
}

/// Check a probe against the operator's limits.
pub fn check_limits(
    path: &Path,
    p: &ProbeInfo,
    min_frames: u64,
    max_pixels: u64,
    max_side: u32,
) -> Result<(), VideoError> {
    let (w, h) = (p.width.unwrap_or(0), p.height.unwrap_or(0));
    if w > max_side || h > max_side || w as u64 * h as u64 > max_pixels {
        return Err(VideoError::unsupported(
            path,
            format!(
                "declared frame size {w}×{h} ({:.0} megapixels) exceeds the limit (max_pixels = {max_pixels}, max_side = {max_side}); raise them if the file is genuine",
                w as f64 * h as f64 / 1e6
            ),
        ));
    }
    if w == 0 || h == 0 {
        return Err(VideoError::corrupt(path, "the video stream declares no frame size"));
    }
    if let Some(n) = p.frame_count
        && n < min_frames
    {
        return Err(VideoError::not_video(
            path,
            format!(
                "only {n} frame{} (min_frames = {min_frames}): a still image, not a video",
                if n == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(())
}

/// The `video.probe` operator.
pub struct VideoProbe;

impl TypedOperator for VideoProbe {
    type Params = ProbeParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "video.probe",
            summary: "Fill each Video's probe: container, codecs, size, aspect, fps, duration, bitrate, frame count, rotation, audio",
            doc: "Runs GStreamer's discoverer on each video (the numbers `gst-discoverer-1.0` prints) and, \
                  for files up to `count_max_mb`, counts the frames exactly by parsing the stream without \
                  decoding it (otherwise duration × fps, marked estimated). DICOM cine files are read from \
                  their header. Files that are not usable videos become Failure records with a specific \
                  reason: empty, unreadable, not a media file, audio only, a still image, fewer than \
                  `min_frames` frames, a declared size over `max_pixels`/`max_side`, truncated or corrupt.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[Kind::Video], required: true, doc: "videos to probe" }],
            outputs: &[OutPort {
                name: OUT_PORT,
                kind: OutKind::Fixed(Kind::Video),
                doc: "the same videos, probe filled",
            }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &ProbeParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if !(p.timeout_s > 0.0 && p.timeout_s.is_finite()) {
            v.push(ParamIssue::error(
                "timeout_s",
                "must be a positive number of seconds",
                Some("e.g. timeout_s = 30".into()),
            ));
        }
        crate::api::pool::check_threads(p.threads, &mut v);
        if p.max_pixels == 0 || p.max_side == 0 {
            v.push(ParamIssue::error("max_pixels", "limits must be positive", None));
        }
        v
    }

    fn fingerprint(&self, p: &ProbeParams) -> serde_json::Value {
        serde_json::json!({
            "count_frames": p.count_frames, "count_max_mb": p.count_max_mb, "min_frames": p.min_frames,
            "max_pixels": p.max_pixels, "max_side": p.max_side,
        })
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &ProbeParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let p = p.clone();
        let threads = p.threads;
        Ok(pool_stage(ctx, input, threads, move |rec: &Record, ictx| probe_record(rec, &p, ictx)))
    }
}

/// `video.probe` on one record.
pub fn probe_record(rec: &Record, p: &ProbeParams, ctx: &ItemCtx) -> Result<Vec<Record>, ItemError> {
    let Record::Video(v) = rec else {
        return Err(ItemError::invalid(format!("video.probe takes Video records, got a {}", rec.kind())));
    };
    let path = local_path(&v.uri)?;
    let opts = ProbeOptions {
        timeout: Duration::from_secs_f64(p.timeout_s.max(0.001)),
        count_frames: p.count_frames,
        count_max_bytes: p.count_max_mb.saturating_mul(1 << 20),
        deadline: Some(ctx.deadline),
        limits: SizeLimits { max_pixels: p.max_pixels, max_side: p.max_side },
    };
    let info = probe(&path, &opts)?;
    check_limits(&path, &info, p.min_frames, p.max_pixels, p.max_side)?;
    let mut out = v.clone();
    out.probe = Some(info);
    Ok(vec![Record::Video(out)])
}
