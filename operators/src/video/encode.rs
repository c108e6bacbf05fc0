//! `video.encode` and [`Encoder`]: frames in, H.264 in MP4 out.
//!
//! Pipeline: `appsrc ! videoconvertscale ! [videocrop] ! [textoverlay] ! capsfilter(I420) !
//! x264enc|openh264enc ! h264parse ! mp4mux ! filesink`. The output is 4:2:0 H.264 (High profile
//! with x264, constrained baseline with OpenH264) with even sizes and, by default, the index at
//! the front (`faststart`), so it plays in GStreamer and in browsers. Frame `n` gets the
//! timestamp `n / fps` exactly, so the duration and frame count are the request's.

use super::blob::FramesReader;
use super::gst_util::{self, Pipeline};
use super::{Frame, Geometry, PixelFormat, ResizeMode, Size, VideoError, size_from_params};
use crate::api::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which H.264 encoder to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum H264Encoder {
    /// x264enc when installed, else openh264enc.
    #[default]
    Auto,
    /// x264enc (gstreamer1.0-plugins-ugly): CRF or bitrate, presets, High profile.
    X264,
    /// openh264enc (gstreamer1.0-plugins-bad): bitrate only, constrained baseline.
    Openh264,
}

/// Text burned into frames `[start, end)` (seconds), bottom centre, like a subtitle.
#[derive(Clone, Debug, PartialEq)]
pub struct Subtitle {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

/// How [`Encoder`] encodes.
#[derive(Clone, Debug)]
pub struct EncodeSpec {
    /// Frame rate (num, den): frame `n` is shown at `n * den / num` seconds.
    pub fps: (u32, u32),
    /// Output size; the input frames are scaled (and cropped for `Fill`) to it.
    pub size: Size,
    /// Constant rate factor (x264, 0–50; lower is better). Ignored when `bitrate_kbps` is set.
    pub crf: u32,
    /// Target bitrate in kbit/s instead of CRF.
    pub bitrate_kbps: Option<u32>,
    /// x264 speed preset (`ultrafast` … `veryslow`).
    pub preset: String,
    /// Distance between keyframes, seconds.
    pub keyint_s: f64,
    /// Write the index at the front of the file (needed for progressive playback in browsers).
    pub faststart: bool,
    pub encoder: H264Encoder,
    /// Text to burn in (GStreamer textoverlay).
    pub subtitles: Vec<Subtitle>,
    /// Give up at this instant.
    pub deadline: Option<Instant>,
}

impl Default for EncodeSpec {
    fn default() -> Self {
        EncodeSpec {
            fps: (30, 1),
            size: Size::Native,
            crf: 23,
            bitrate_kbps: None,
            preset: "veryfast".into(),
            keyint_s: 2.0,
            faststart: true,
            encoder: H264Encoder::Auto,
            subtitles: Vec::new(),
            deadline: None,
        }
    }
}

/// What an encode produced.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeSummary {
    pub frames: u64,
    pub duration_s: f64,
    pub width: u32,
    pub height: u32,
    pub fps: (u32, u32),
    pub bytes: u64,
    /// `x264enc` or `openh264enc`.
    pub encoder: &'static str,
}

/// x264 speed presets.
pub const PRESETS: &[&str] =
    &["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"];

/// A frame rate as a fraction: exact for integers, else to 1/1000.
pub fn fps_fraction(fps: f64) -> (u32, u32) {
    if (fps - fps.round()).abs() < 1e-6 {
        return ((fps.round() as u32).max(1), 1);
    }
    // NTSC rates
    for (n, d) in [(24000, 1001), (30000, 1001), (60000, 1001)] {
        if (fps - n as f64 / d as f64).abs() < 1e-3 {
            return (n, d);
        }
    }
    (((fps * 1000.0).round() as u32).max(1), 1000)
}

/// Streams frames into an H.264 MP4 file.
pub struct Encoder {
    pipe: Pipeline,
    src: gst_app::AppSrc,
    path: PathBuf,
    width: u32,
    height: u32,
    format: PixelFormat,
    fps: (u32, u32),
    out: (u32, u32),
    frames: u64,
    started: Instant,
    deadline: Instant,
    encoder: &'static str,
    finished: bool,
}

fn backend(e: impl std::fmt::Display) -> VideoError {
    VideoError::Backend(e.to_string())
}

impl Encoder {
    /// Create `out` for frames of `width × height` in `format`.
    pub fn create(
        out: &Path,
        width: u32,
        height: u32,
        format: PixelFormat,
        spec: &EncodeSpec,
    ) -> Result<Encoder, VideoError> {
        gst_util::init()?;
        if width == 0 || height == 0 {
            return Err(VideoError::BadRequest(format!("cannot encode {width}×{height} frames")));
        }
        if spec.fps.0 == 0 || spec.fps.1 == 0 {
            return Err(VideoError::BadRequest(format!("frame rate {}/{} is not positive", spec.fps.0, spec.fps.1)));
        }
        super::validate_size(&spec.size).map_err(VideoError::BadRequest)?;
        if spec.crf > 50 {
            return Err(VideoError::BadRequest(format!("crf {} is out of range 0–50", spec.crf)));
        }
        let (enc_name, enc) = match spec.encoder {
            H264Encoder::X264 => ("x264enc", gst_util::make("x264enc")?),
            H264Encoder::Openh264 => ("openh264enc", gst_util::make("openh264enc")?),
            H264Encoder::Auto if gst_util::have("x264enc") => ("x264enc", gst_util::make("x264enc")?),
            H264Encoder::Auto => ("openh264enc", gst_util::make("openh264enc").map_err(|_| {
                VideoError::Backend("no H.264 encoder: install gstreamer1.0-plugins-ugly (x264enc) or gstreamer1.0-plugins-bad (openh264enc)".into())
            })?),
        };
        let keyint = ((spec.keyint_s.max(0.0) * spec.fps.0 as f64 / spec.fps.1 as f64).round() as u32).max(1);
        if enc_name == "x264enc" {
            let preset = if PRESETS.contains(&spec.preset.as_str()) { spec.preset.as_str() } else { "veryfast" };
            enc.set_property_from_str("speed-preset", preset);
            match spec.bitrate_kbps {
                Some(kbps) => {
                    enc.set_property_from_str("pass", "cbr");
                    enc.set_property("bitrate", kbps.max(1));
                }
                None => {
                    enc.set_property_from_str("pass", "qual");
                    enc.set_property("quantizer", spec.crf);
                }
            }
            enc.set_property("key-int-max", keyint);
        } else {
            let bps = spec.bitrate_kbps.map(|k| k as u64 * 1000).unwrap_or_else(|| {
                // No CRF in OpenH264: a bitrate from the frame size, scaled by the requested quality.
                let px = width as f64 * height as f64 * spec.fps.0 as f64 / spec.fps.1 as f64;
                (px * 0.1 * 2f64.powf((23.0 - spec.crf as f64) / 6.0)) as u64
            });
            enc.set_property("bitrate", bps.clamp(10_000, u32::MAX as u64) as u32);
            enc.set_property("gop-size", keyint);
        }

        // Geometry of the output: square pixels, even sizes.
        let geometry = match spec.size {
            Size::Native => Geometry { scale_w: width & !1, scale_h: height & !1, crop: None },
            s => Geometry::compute(&s, width, height, (1, 1)),
        };
        let geometry = Geometry { scale_w: geometry.scale_w.max(2), scale_h: geometry.scale_h.max(2), ..geometry };
        let (ow, oh) = geometry.out_size();

        let pipe = Pipeline::new("medgen-encode")?;
        let in_format = match format {
            PixelFormat::Rgb => "RGB",
            PixelFormat::Gray => "GRAY8",
            PixelFormat::Yuv => {
                return Err(VideoError::BadRequest(
                    "the encoder takes RGB or gray frames; convert YUV frames with Frame::rgb first".into(),
                ));
            }
        };
        let in_caps = gst::Caps::builder("video/x-raw")
            .field("format", in_format)
            .field("width", width as i32)
            .field("height", height as i32)
            .field("framerate", gst::Fraction::new(spec.fps.0 as i32, spec.fps.1 as i32))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build();
        let frame_bytes = width as u64 * height as u64 * format.channels() as u64;
        let src = gst_app::AppSrc::builder()
            .caps(&in_caps)
            .format(gst::Format::Time)
            .is_live(false)
            .block(false)
            .max_bytes((frame_bytes * 4).max(1 << 20))
            .build();
        let mut chain: Vec<gst::Element> = vec![src.clone().upcast()];
        if gst_util::have("videoconvertscale") {
            let c = gst_util::make("videoconvertscale")?;
            c.set_property("add-borders", false);
            chain.push(c);
        } else {
            chain.push(gst_util::make("videoconvert")?);
            let s = gst_util::make("videoscale")?;
            s.set_property("add-borders", false);
            chain.push(s);
        }
        let scaled = gst_util::make("capsfilter")?;
        scaled.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("width", geometry.scale_w as i32)
                .field("height", geometry.scale_h as i32)
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                .build(),
        );
        chain.push(scaled);
        if let Some((x, y, cw, ch)) = geometry.crop {
            let crop = gst_util::make("videocrop")?;
            crop.set_property("left", x as i32);
            crop.set_property("top", y as i32);
            crop.set_property("right", (geometry.scale_w - x - cw) as i32);
            crop.set_property("bottom", (geometry.scale_h - y - ch) as i32);
            chain.push(crop);
        }
        let mut text_src = None;
        if !spec.subtitles.is_empty() {
            let overlay = gst_util::make("textoverlay").map_err(|_| {
                VideoError::Backend(
                    "burning in text needs the GStreamer element `textoverlay`: install gstreamer1.0-x".into(),
                )
            })?;
            overlay.set_property_from_str("valignment", "bottom");
            overlay.set_property_from_str("halignment", "center");
            overlay.set_property("font-desc", format!("Sans Bold {}", (oh / 12).max(8)));
            overlay.set_property("shaded-background", false);
            chain.push(convert_for_overlay()?);
            chain.push(overlay.clone());
            let ts = gst_app::AppSrc::builder()
                .caps(&gst::Caps::builder("text/x-raw").field("format", "utf8").build())
                .format(gst::Format::Time)
                .is_live(false)
                .build();
            text_src = Some((ts, overlay));
        }
        chain.push(gst_util::make("videoconvert")?);
        let i420 = gst_util::make("capsfilter")?;
        i420.set_property("caps", gst::Caps::builder("video/x-raw").field("format", "I420").build());
        chain.push(i420);
        chain.push(enc);
        if enc_name == "x264enc" {
            let profile = gst_util::make("capsfilter")?;
            profile.set_property("caps", gst::Caps::builder("video/x-h264").field("profile", "high").build());
            chain.push(profile);
        }
        chain.push(gst_util::make("h264parse")?);
        let mux = gst_util::make("mp4mux")?;
        if spec.faststart {
            mux.set_property("faststart", true);
            let tmp = out.with_extension("faststart.tmp");
            mux.set_property("faststart-file", tmp.to_string_lossy().as_ref());
        }
        chain.push(mux);
        let sink = gst_util::make("filesink")?;
        sink.set_property("location", out.to_string_lossy().as_ref());
        sink.set_property("sync", false);
        chain.push(sink);
        pipe.pipeline.add_many(&chain).map_err(backend)?;
        gst::Element::link_many(&chain).map_err(backend)?;

        if let Some((ts, overlay)) = &text_src {
            pipe.pipeline.add(ts).map_err(backend)?;
            let text_pad = overlay.static_pad("text_sink").ok_or_else(|| backend("textoverlay without a text pad"))?;
            ts.static_pad("src")
                .ok_or_else(|| backend("appsrc without a src pad"))?
                .link(&text_pad)
                .map_err(backend)?;
        }
        let started = Instant::now();
        let deadline = spec.deadline.unwrap_or_else(|| started + Duration::from_secs(24 * 3600));
        pipe.set_state(gst::State::Playing, out)?;
        if let Some((ts, _)) = &text_src {
            let mut subs = spec.subtitles.clone();
            subs.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
            let mut t = 0.0;
            for s in subs {
                let (start, end) = (s.start_s.max(t), s.end_s);
                if end <= start {
                    continue;
                }
                if start > t {
                    // The overlay must know that nothing is shown in between.
                    let gap = gst::event::Gap::builder(gst_util::clock(t)).duration(gst_util::clock(start - t)).build();
                    let _ = ts.send_event(gap);
                }
                let mut buf = gst::Buffer::from_mut_slice(s.text.into_bytes());
                if let Some(b) = buf.get_mut() {
                    b.set_pts(gst_util::clock(start));
                    b.set_duration(gst_util::clock(end - start));
                }
                ts.push_buffer(buf).map_err(|e| backend(format!("subtitle push: {e:?}")))?;
                t = end;
            }
            let _ = ts.end_of_stream();
        }
        Ok(Encoder {
            pipe,
            src,
            path: out.to_path_buf(),
            width,
            height,
            format,
            fps: spec.fps,
            out: (ow, oh),
            frames: 0,
            started,
            deadline,
            encoder: enc_name,
            finished: false,
        })
    }

    /// Output size.
    pub fn out_size(&self) -> (u32, u32) {
        self.out
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Append a frame (same size and format as given to [`Encoder::create`]).
    pub fn push(&mut self, frame: &Frame) -> Result<(), VideoError> {
        if (frame.width, frame.height, frame.format) != (self.width, self.height, self.format) {
            return Err(VideoError::BadRequest(format!(
                "frame {}×{} {} does not match the encoder's {}×{} {}",
                frame.width,
                frame.height,
                frame.format.as_str(),
                self.width,
                self.height,
                self.format.as_str()
            )));
        }
        self.push_pixels(frame.data())
    }

    /// Append a frame given as packed pixels.
    pub fn push_pixels(&mut self, data: &[u8]) -> Result<(), VideoError> {
        let need = self.width as usize * self.height as usize * self.format.channels();
        if data.len() != need {
            return Err(VideoError::BadRequest(format!("a frame of {} bytes, expected {need}", data.len())));
        }
        // Back-pressure without blocking forever: wait while the queue is full, watching errors.
        let limit = self.src.max_bytes();
        while self.src.current_level_bytes() >= limit {
            self.check(Duration::from_millis(5))?;
        }
        self.check(Duration::ZERO)?;
        let (n, d) = (self.fps.0 as u64, self.fps.1 as u64);
        let pts = gst::ClockTime::from_nseconds(mul_div(self.frames, 1_000_000_000 * d, n));
        let next = gst::ClockTime::from_nseconds(mul_div(self.frames + 1, 1_000_000_000 * d, n));
        let mut buf = gst::Buffer::from_mut_slice(data.to_vec());
        if let Some(b) = buf.get_mut() {
            b.set_pts(pts);
            b.set_duration(next - pts);
        }
        self.src.push_buffer(buf).map_err(|e| {
            self.pipe.pop_error(&self.path).unwrap_or_else(|| backend(format!("the encoder stopped ({e:?})")))
        })?;
        self.frames += 1;
        Ok(())
    }

    /// Check the bus for errors and the deadline, waiting up to `wait`.
    fn check(&self, wait: Duration) -> Result<(), VideoError> {
        if Instant::now() >= self.deadline {
            return Err(VideoError::timeout(&self.path, self.started, "encoding"));
        }
        if let Some(msg) = self
            .pipe
            .bus
            .timed_pop_filtered(gst::ClockTime::from_nseconds(wait.as_nanos() as u64), &[gst::MessageType::Error])
            && let gst::MessageView::Error(e) = msg.view()
        {
            return Err(gst_util::classify(&self.path, &e.error(), e.debug().as_deref()));
        }
        Ok(())
    }

    /// Finish the file: flush the encoder, write the index. Returns what was written.
    pub fn finish(mut self) -> Result<EncodeSummary, VideoError> {
        if self.frames == 0 {
            return Err(VideoError::BadRequest(format!("no frames to encode into {}", self.path.display())));
        }
        self.src.end_of_stream().map_err(|e| backend(format!("end of stream: {e:?}")))?;
        self.pipe.wait_eos(&self.path, self.started, self.deadline, "finishing the MP4")?;
        let _ = self.pipe.pipeline.set_state(gst::State::Null);
        let bytes = std::fs::metadata(&self.path).map_err(|e| VideoError::write(&self.path, e))?.len();
        self.finished = true;
        Ok(EncodeSummary {
            frames: self.frames,
            duration_s: self.frames as f64 * self.fps.1 as f64 / self.fps.0 as f64,
            width: self.out.0,
            height: self.out.1,
            fps: self.fps,
            bytes,
            encoder: self.encoder,
        })
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        if !self.finished {
            // An abandoned encode leaves no half-written file behind.
            let _ = self.pipe.pipeline.set_state(gst::State::Null);
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(self.path.with_extension("faststart.tmp"));
    }
}

fn convert_for_overlay() -> Result<gst::Element, VideoError> {
    gst_util::make("videoconvert")
}

/// `a * b / c` without overflow (u128).
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    ((a as u128 * b as u128) / c.max(1) as u128) as u64
}

/// Encode every frame of a frames blob into an MP4.
pub fn encode_blob(blob: &Path, out: &Path, spec: &EncodeSpec) -> Result<EncodeSummary, VideoError> {
    let reader =
        FramesReader::open(blob).map_err(|e| VideoError::corrupt(blob, format!("unreadable frames blob: {e}")))?;
    let h = reader.header();
    let mut enc = Encoder::create(out, h.width, h.height, h.format, spec)?;
    for frame in reader {
        let frame = frame.map_err(|e| VideoError::corrupt(blob, format!("unreadable frames blob: {e}")))?;
        enc.push(&frame)?;
    }
    enc.finish()
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

/// Check the encoding params shared by `video.encode` and `video.cut`.
pub(crate) fn check_encoding(
    crf: u32,
    preset: &str,
    fps: Option<f64>,
    (width, height, resize): (Option<u32>, Option<u32>, ResizeMode),
    keyint_s: f64,
    encoder: H264Encoder,
    threads: usize,
) -> Vec<ParamIssue> {
    let mut v = Vec::new();
    if crf > 50 {
        v.push(ParamIssue::error("crf", format!("{crf} is out of range 0–50"), Some("e.g. crf = 23".into())));
    }
    if !PRESETS.contains(&preset) {
        let best = PRESETS.iter().min_by_key(|p| strsim_distance(p, preset)).copied().unwrap_or("veryfast");
        v.push(ParamIssue::error(
            "preset",
            format!("unknown x264 preset `{preset}`"),
            Some(format!("did you mean `{best}`?")),
        ));
    }
    if let Some(f) = fps
        && !(f > 0.0 && f.is_finite() && f <= 1000.0)
    {
        v.push(ParamIssue::error("fps", "must be a positive number up to 1000", Some("e.g. fps = 30".into())));
    }
    if let Err(e) = size_from_params(width, height, resize) {
        v.push(ParamIssue::error("width", e, None));
    }
    if encoder == H264Encoder::X264 && super::gst_util::init().is_ok() && !super::gst_util::have("x264enc") {
        v.push(ParamIssue::warning(
            "encoder",
            "x264enc is not installed here",
            Some("install gstreamer1.0-plugins-ugly, or use encoder = \"auto\"".into()),
        ));
    }
    if !(keyint_s > 0.0 && keyint_s.is_finite()) {
        v.push(ParamIssue::error("keyint_s", "must be a positive number of seconds", None));
    }
    crate::api::pool::check_threads(threads, &mut v);
    v
}

/// Edit distance for suggestions (small strings).
fn strsim_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Params of `video.encode`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodeParams {
    /// Frame rate of the output; default: the frames blob's sampling rate, else 30.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Output width (even); unset with `height` unset: the frames' size (made even).
    #[serde(default)]
    pub width: Option<u32>,
    /// Output height (even).
    #[serde(default)]
    pub height: Option<u32>,
    /// How width and height apply: `fit`, `fill` (cover and crop the centre) or `exact`.
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
    /// Threads per worker encoding.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Default for EncodeParams {
    fn default() -> Self {
        EncodeParams {
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

/// The `video.encode` operator.
pub struct VideoEncode;

impl TypedOperator for VideoEncode {
    type Params = EncodeParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "video.encode",
            summary: "Encode each record's frames blob (from video.decode) into an H.264 MP4 in the run store",
            doc: "Reads the frames blob named by a record's `frames_blob` metadata (written by video.decode), \
                  encodes it as H.264 in MP4 (x264enc, else openh264enc; CRF or bitrate, preset, keyframe \
                  interval, faststart), optionally resized or cropped (e.g. width = 720, height = 480, \
                  resize = \"fill\" as the paper's dataset), and stores the MP4 as a blob. The record comes \
                  out with metadata `mp4_blob`, `mp4_frames`, `mp4_width`, `mp4_height`, `mp4_fps`; a Clip \
                  also gets its `blob`, size and fps set.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Video, Kind::Clip],
                required: true,
                doc: "records with a frames_blob (the output of video.decode)",
            }],
            outputs: &[OutPort {
                name: OUT_PORT,
                kind: OutKind::SameAs("in"),
                doc: "the same records with the MP4's blob key",
            }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &EncodeParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        check_encoding(p.crf, &p.preset, p.fps, (p.width, p.height, p.resize), p.keyint_s, p.encoder, p.threads)
    }

    fn fingerprint(&self, p: &EncodeParams) -> serde_json::Value {
        fingerprint_without(p, &["threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &EncodeParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let p = p.clone();
        let services = ctx.services.clone();
        let threads = p.threads;
        Ok(pool_stage(ctx, input, threads, move |rec: &Record, ictx| encode_record(rec, &p, services.as_ref(), ictx)))
    }
}

/// `video.encode` on one record.
pub fn encode_record(
    rec: &Record,
    p: &EncodeParams,
    services: &dyn Services,
    ctx: &ItemCtx,
) -> Result<Vec<Record>, ItemError> {
    let meta = match rec {
        Record::Video(v) => &v.metadata,
        Record::Clip(c) => &c.metadata,
        other => {
            return Err(ItemError::invalid(format!(
                "video.encode takes Video or Clip records, got a {}",
                other.kind()
            )));
        }
    };
    let key = meta.get("frames_blob").ok_or_else(|| {
        ItemError::invalid("the record has no `frames_blob` metadata: put a video.decode node before video.encode")
    })?;
    let blob = services.blob_path(key);
    if !blob.is_file() {
        return Err(ItemError::unreadable(format!(
            "frames blob {key} is missing from the run store ({})",
            blob.display()
        )));
    }
    let header = FramesReader::open(&blob).map_err(|e| ItemError::invalid(format!("frames blob {key}: {e}")))?.header();
    let fps = p.fps.unwrap_or(if header.fps > 0.0 { header.fps } else { 30.0 });
    let size = size_from_params(p.width, p.height, p.resize).map_err(ItemError::invalid)?;
    let spec = EncodeSpec {
        fps: fps_fraction(fps),
        size,
        crf: p.crf,
        bitrate_kbps: p.bitrate_kbps,
        preset: p.preset.clone(),
        keyint_s: p.keyint_s,
        faststart: p.faststart,
        encoder: p.encoder,
        subtitles: Vec::new(),
        deadline: Some(ctx.deadline),
    };
    let (file, out) = temp_mp4(services)?;
    let summary = encode_blob(&blob, &out, &spec)?;
    let mp4 = services.blob_put_file(&out).map_err(|e| ItemError::transient(e.to_string()))?;
    drop(file);
    let mut rec = rec.clone();
    let meta = match &mut rec {
        Record::Video(v) => &mut v.metadata,
        Record::Clip(c) => {
            c.blob = Some(mp4.clone());
            c.width = summary.width;
            c.height = summary.height;
            c.fps = F64(summary.fps.0 as f64 / summary.fps.1 as f64);
            &mut c.metadata
        }
        other => return Err(ItemError::invalid(format!("unexpected {}", other.kind()))),
    };
    meta.insert("mp4_blob".into(), mp4);
    meta.insert("mp4_frames".into(), summary.frames.to_string());
    meta.insert("mp4_width".into(), summary.width.to_string());
    meta.insert("mp4_height".into(), summary.height.to_string());
    meta.insert("mp4_fps".into(), format!("{}/{}", summary.fps.0, summary.fps.1));
    Ok(vec![rec])
}

/// A temporary folder in the store's tmp dir and an MP4 path inside it (removed with the folder).
pub(crate) fn temp_mp4(services: &dyn Services) -> Result<(tempfile::TempDir, PathBuf), ItemError> {
    let tmp = services.tmp_dir();
    std::fs::create_dir_all(&tmp).map_err(|e| ItemError::transient(format!("cannot create {}: {e}", tmp.display())))?;
    let dir = tempfile::Builder::new()
        .prefix(".mp4-")
        .tempdir_in(&tmp)
        .map_err(|e| ItemError::transient(format!("cannot create a temporary folder in {}: {e}", tmp.display())))?;
    let out = dir.path().join("out.mp4");
    Ok((dir, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions() {
        assert_eq!(fps_fraction(30.0), (30, 1));
        assert_eq!(fps_fraction(29.97), (30000, 1001));
        assert_eq!(fps_fraction(12.5), (12500, 1000));
        assert_eq!(mul_div(3, 1_000_000_000 * 1001, 30000), 100_100_000);
        assert_eq!(strsim_distance("vryfast", "veryfast"), 1);
    }
}
