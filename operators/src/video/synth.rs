//! Synthetic test videos with exact ground truth, and the bad-input corpus.
//!
//! [`generate`] renders frames in Rust — shots of distinct content with hard cuts and
//! cross-fades at known frames, black frames, static shots, letterbox/pillarbox bars of known
//! width — burns in subtitle text with GStreamer's `textoverlay` at known frames, and encodes
//! them with [`Encoder`](super::encode::Encoder). The [`GroundTruth`] it returns says where
//! everything is, frame by frame.
//!
//! [`testsrc_video`] makes long or large files quickly (GStreamer `videotestsrc`, for
//! benchmarks), and [`bad_inputs`] writes the corpus of broken and non-video files every reader
//! must survive, each with the failure it must produce.

use super::encode::{EncodeSpec, Encoder, Subtitle};
use super::gst_util::{self, Pipeline};
use super::{PixelFormat, Size, VideoError};
use crate::api::ErrorClass;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a shot shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Content {
    /// Seven vertical colour bars.
    Bars,
    /// A two-axis colour gradient.
    Gradient,
    /// A 32-pixel checkerboard of two colours.
    Checker,
    /// Deterministic fine texture (expensive to encode, like grain or foliage).
    Texture,
    /// One colour everywhere; `[0, 0, 0]` makes black frames.
    Solid([u8; 3]),
}

/// How a shot begins.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transition {
    /// A hard cut: the shot's first frame is entirely its own.
    Cut,
    /// A cross-fade from the previous shot over the shot's first `frames` frames.
    Fade { frames: u32 },
}

/// One shot of a synthetic video.
#[derive(Clone, Debug, PartialEq)]
pub struct Shot {
    pub frames: u32,
    pub content: Content,
    /// A square moving across the picture (camera/object motion); without it the shot is static.
    pub motion: bool,
    pub transition: Transition,
}

impl Shot {
    pub fn new(frames: u32, content: Content) -> Shot {
        Shot { frames, content, motion: true, transition: Transition::Cut }
    }
    pub fn still(mut self) -> Shot {
        self.motion = false;
        self
    }
    pub fn fade_in(mut self, frames: u32) -> Shot {
        self.transition = Transition::Fade { frames };
        self
    }
}

/// A synthetic video to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    /// Full frame size, bars included (even).
    pub width: u32,
    pub height: u32,
    pub fps: (u32, u32),
    pub shots: Vec<Shot>,
    /// Black rows at the top and at the bottom.
    pub letterbox: u32,
    /// Black columns at the left and at the right.
    pub pillarbox: u32,
    /// Burned-in text over frames `[start, end)`.
    pub subtitles: Vec<(u32, u32, String)>,
    pub crf: u32,
    pub preset: String,
    pub keyint_s: f64,
}

impl SynthSpec {
    /// 320×240 at 30 fps: five shots (a hard cut at 45, a 15-frame fade at 90, a static shot,
    /// black frames at 135–149, a hard cut at 150), 165 frames in all.
    pub fn standard() -> SynthSpec {
        SynthSpec {
            width: 320,
            height: 240,
            fps: (30, 1),
            shots: vec![
                Shot::new(45, Content::Bars),
                Shot::new(45, Content::Gradient),
                Shot::new(45, Content::Checker).still().fade_in(15),
                Shot::new(15, Content::Solid([0, 0, 0])).still(),
                Shot::new(15, Content::Texture),
            ],
            letterbox: 0,
            pillarbox: 0,
            subtitles: Vec::new(),
            crf: 18,
            preset: "veryfast".into(),
            keyint_s: 1.0,
        }
    }

    /// `frames` frames of one moving shot.
    pub fn simple(width: u32, height: u32, fps: u32, frames: u32) -> SynthSpec {
        SynthSpec {
            width,
            height,
            fps: (fps, 1),
            shots: vec![Shot::new(frames, Content::Gradient)],
            ..SynthSpec::standard()
        }
    }

    pub fn frames(&self) -> u32 {
        self.shots.iter().map(|s| s.frames).sum()
    }
}

/// Where everything is in a generated video (frame indices, `[start, end)` ranges).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GroundTruth {
    pub frames: u32,
    pub fps: (u32, u32),
    pub width: u32,
    pub height: u32,
    /// First frames of shots that begin with a hard cut (the first shot excluded).
    pub cuts: Vec<u32>,
    /// Cross-fades.
    pub fades: Vec<(u32, u32)>,
    /// Entirely black frames.
    pub black: Vec<(u32, u32)>,
    /// Shots without motion (identical frames).
    pub still: Vec<(u32, u32)>,
    pub letterbox: u32,
    pub pillarbox: u32,
    /// Burned-in text and the frames it is on; it sits in the bottom quarter, centred.
    pub subtitles: Vec<(u32, u32, String)>,
}

impl GroundTruth {
    /// Presentation time of frame `i`.
    pub fn time_of(&self, i: u32) -> f64 {
        i as f64 * self.fps.1 as f64 / self.fps.0 as f64
    }
    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.time_of(self.frames)
    }
}

fn hash(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The still picture of a shot, `w × h` RGB.
fn render(content: Content, w: u32, h: u32, shot: usize) -> Vec<u8> {
    const BARS: [[u8; 3]; 7] =
        [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0], [0, 0, 192]];
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let c = match content {
                Content::Bars => BARS[(x * 7 / w.max(1)) as usize % 7],
                Content::Gradient => {
                    [(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 96 + (shot as u8).wrapping_mul(40)]
                }
                Content::Checker => {
                    if ((x / 32) + (y / 32)) % 2 == 0 {
                        [230, 120, 40]
                    } else {
                        [40, 60, 200]
                    }
                }
                Content::Texture => {
                    let v = (hash(x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ shot as u32) & 0x3f) as u8;
                    [60 + v, 140 + v / 2, 80 + v]
                }
                Content::Solid(c) => c,
            };
            px.extend_from_slice(&c);
        }
    }
    px
}

/// Draw the moving square of frame `i` of a shot.
fn draw_motion(px: &mut [u8], w: u32, h: u32, i: u32) {
    let side = (h / 6).max(4);
    let span_x = w.saturating_sub(side).max(1);
    let span_y = h.saturating_sub(side).max(1);
    let bounce = |t: u32, span: u32| {
        let p = t % (2 * span);
        if p < span { p } else { 2 * span - p }
    };
    let (x0, y0) = (bounce(i * 4, span_x), bounce(i * 3, span_y));
    for y in y0..(y0 + side).min(h) {
        let row = (y * w) as usize * 3;
        for x in x0..(x0 + side).min(w) {
            let o = row + x as usize * 3;
            px[o..o + 3].copy_from_slice(&[250, 250, 250]);
        }
    }
}

/// Render frame `i` (global index) of `spec` into RGB.
fn frame_at(spec: &SynthSpec, stills: &[Vec<u8>], starts: &[u32], i: u32) -> Vec<u8> {
    let (w, h) = (spec.width, spec.height);
    let (cw, ch) = (w - 2 * spec.pillarbox, h - 2 * spec.letterbox);
    let k = starts.iter().rposition(|s| *s <= i).unwrap_or(0);
    let shot = &spec.shots[k];
    let local = i - starts[k];
    let picture = |k: usize, local: u32| {
        let mut p = stills[k].clone();
        if spec.shots[k].motion {
            draw_motion(&mut p, cw, ch, local);
        }
        p
    };
    let mut content = picture(k, local);
    if let Transition::Fade { frames } = shot.transition
        && k > 0
        && local < frames
    {
        // The previous shot keeps moving under the fade.
        let prev = picture(k - 1, starts[k] - starts[k - 1] + local);
        let a = (local + 1) as f32 / (frames + 1) as f32;
        for (c, p) in content.iter_mut().zip(prev) {
            *c = (a * *c as f32 + (1.0 - a) * p as f32).round() as u8;
        }
    }
    if (cw, ch) == (w, h) {
        return content;
    }
    let mut full = vec![0u8; (w * h * 3) as usize];
    for y in 0..ch {
        let src = &content[(y * cw * 3) as usize..((y + 1) * cw * 3) as usize];
        let o = (((y + spec.letterbox) * w + spec.pillarbox) * 3) as usize;
        full[o..o + src.len()].copy_from_slice(src);
    }
    full
}

/// Generate `spec` as an H.264 MP4 at `out`; returns its ground truth.
pub fn generate(out: &Path, spec: &SynthSpec) -> Result<GroundTruth, VideoError> {
    if spec.width % 2 == 1 || spec.height % 2 == 1 || spec.width < 16 || spec.height < 16 {
        return Err(VideoError::BadRequest(format!(
            "synthetic size {}×{} must be even and at least 16×16",
            spec.width, spec.height
        )));
    }
    if 2 * spec.letterbox >= spec.height || 2 * spec.pillarbox >= spec.width {
        return Err(VideoError::BadRequest("bars would cover the whole picture".into()));
    }
    let (cw, ch) = (spec.width - 2 * spec.pillarbox, spec.height - 2 * spec.letterbox);
    let stills: Vec<Vec<u8>> = spec.shots.iter().enumerate().map(|(k, s)| render(s.content, cw, ch, k)).collect();
    let mut starts = Vec::new();
    let mut gt = GroundTruth {
        fps: spec.fps,
        width: spec.width,
        height: spec.height,
        letterbox: spec.letterbox,
        pillarbox: spec.pillarbox,
        subtitles: spec.subtitles.clone(),
        ..Default::default()
    };
    let mut at = 0;
    for (k, s) in spec.shots.iter().enumerate() {
        starts.push(at);
        match s.transition {
            Transition::Cut if k > 0 => gt.cuts.push(at),
            Transition::Fade { frames } if k > 0 => gt.fades.push((at, at + frames.min(s.frames))),
            _ => {}
        }
        let fade = match s.transition {
            Transition::Fade { frames } if k > 0 => frames.min(s.frames),
            _ => 0,
        };
        if s.content == Content::Solid([0, 0, 0]) {
            gt.black.push((at + fade, at + s.frames));
        }
        if !s.motion {
            gt.still.push((at + fade, at + s.frames));
        }
        at += s.frames;
    }
    gt.frames = at;
    let secs = |f: u32| f as f64 * spec.fps.1 as f64 / spec.fps.0 as f64;
    let espec = EncodeSpec {
        fps: spec.fps,
        size: Size::Native,
        crf: spec.crf,
        preset: spec.preset.clone(),
        keyint_s: spec.keyint_s,
        faststart: true,
        subtitles: spec
            .subtitles
            .iter()
            .map(|(a, b, t)| Subtitle { start_s: secs(*a), end_s: secs(*b), text: t.clone() })
            .collect(),
        ..EncodeSpec::default()
    };
    let mut enc = Encoder::create(out, spec.width, spec.height, PixelFormat::Rgb, &espec)?;
    for i in 0..gt.frames {
        enc.push_pixels(&frame_at(spec, &stills, &starts, i))?;
    }
    enc.finish()?;
    Ok(gt)
}

/// A camera moving over a still textured world: where it looks at each frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CameraPath {
    /// Fixed view.
    Static,
    /// Turning right at `rate` view widths per second.
    Pan { rate: f64 },
    /// Turning down at `rate` view heights per second.
    Tilt { rate: f64 },
    /// Zooming in at `rate` relative scale per second.
    Zoom { rate: f64 },
    /// Hand-held shake: a random offset of up to `amplitude` view widths, new every frame.
    Shaky { amplitude: f64 },
}

/// Render `frames` frames (`width × height`, grey texture as RGB) of a camera following `path`
/// over a random world, as H.264 MP4 at `fps`. Ground truth for camera-motion tests.
pub fn camera_video(
    out: &Path,
    width: u32,
    height: u32,
    fps: u32,
    frames: u32,
    path: CameraPath,
) -> Result<(), VideoError> {
    use crate::curate::motion::{random_world, world_view};
    if width % 2 == 1 || height % 2 == 1 || width < 16 || height < 16 || fps == 0 {
        return Err(VideoError::BadRequest(format!("camera video {width}×{height} at {fps} fps is not renderable")));
    }
    let (ww, wh) = (1600usize, 1200usize);
    let world = random_world(ww, wh, 11);
    // The view spans 30% of the world's width at the start.
    let span0 = 0.3;
    let view_w = span0 * ww as f64;
    let view_h = view_w * height as f64 / width as f64;
    let espec = EncodeSpec { fps: (fps, 1), crf: 16, preset: "veryfast".into(), ..EncodeSpec::default() };
    let mut enc = Encoder::create(out, width, height, PixelFormat::Rgb, &espec)?;
    let mut jitter = 0x2545_f491_4f6c_dd1du64;
    for i in 0..frames {
        let t = i as f64 / fps as f64;
        let (mut cx, mut cy, mut span) = (0.5, 0.5, span0);
        match path {
            CameraPath::Static => {}
            CameraPath::Pan { rate } => cx = 0.3 + rate * t * view_w / ww as f64,
            CameraPath::Tilt { rate } => cy = 0.3 + rate * t * view_h / wh as f64,
            CameraPath::Zoom { rate } => span = span0 * (-rate * t).exp(),
            CameraPath::Shaky { amplitude } => {
                jitter ^= jitter << 13;
                jitter ^= jitter >> 7;
                jitter ^= jitter << 17;
                let u = (jitter >> 11) as f64 / (1u64 << 53) as f64;
                let v = ((jitter >> 3) & 0xffff) as f64 / 65535.0;
                cx += (2.0 * u - 1.0) * amplitude * view_w / ww as f64;
                cy += (2.0 * v - 1.0) * amplitude * view_w / wh as f64;
            }
        }
        let grey = world_view(&world, ww, wh, cx, cy, span, width as usize, height as usize);
        let rgb: Vec<u8> = grey.iter().flat_map(|g| [*g, *g, *g]).collect();
        enc.push_pixels(&rgb)?;
    }
    enc.finish()?;
    Ok(())
}

/// A file written the way a recorder writes it, for [`recorded_streams`].
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: PathBuf,
    pub frames: u32,
    pub fps: u32,
    /// What the container says about its duration, for messages.
    pub what: &'static str,
}

/// Videos in the forms recorders write while recording (browser MediaRecorder / live WebM,
/// streamable Matroska, MPEG-TS): no duration in the header, or an estimate made from the first
/// fraction of a second. 320×240, 30 fps, 90 frames (3 s) of the moving-ball pattern each.
pub fn recorded_streams(dir: &Path) -> Result<Vec<Recorded>, VideoError> {
    let (frames, fps) = (90, 30);
    let src = format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate={fps}/1"
    );
    let forms = [
        ("live.webm", "vp8enc deadline=1 ! webmmux streamable=true", "a WebM header written before the end"),
        (
            "streamable.mkv",
            "x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! matroskamux streamable=true",
            "a Matroska header written before the end",
        ),
        ("recording.ts", "x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! mpegtsmux", "MPEG-TS"),
    ];
    let mut out = Vec::new();
    for (name, enc, what) in forms {
        let path = dir.join(name);
        launch_to(&format!("{src} ! {enc} ! filesink name=sink"), &path)?;
        out.push(Recorded { path, frames, fps, what });
    }
    Ok(out)
}

/// An MPEG-TS recording that starts in the middle of a GOP, as a stream captured from a running
/// encoder (or a TS cut at a packet boundary) does: 120 frames at 30 fps of the moving-ball
/// pattern (a white ball on black) with a keyframe every 60 frames and no B-frames, with its first
/// `drop_fraction` of 188-byte packets removed. Frames before the first whole keyframe have lost
/// their references. Written into `dir` as `mid_gop.ts`.
pub fn mid_gop_ts(dir: &Path, drop_fraction: f64) -> Result<PathBuf, VideoError> {
    let whole = dir.join("whole.ts");
    launch_to(
        "videotestsrc num-buffers=120 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         x264enc speed-preset=ultrafast key-int-max=60 bframes=0 threads=1 option-string=scenecut=0 ! h264parse ! \
         mpegtsmux ! filesink name=sink",
        &whole,
    )?;
    let data = read(&whole)?;
    let packets = data.len() / 188;
    let skip = ((packets as f64 * drop_fraction.clamp(0.0, 1.0)) as usize).min(packets);
    let path = dir.join("mid_gop.ts");
    write(&path, &data[skip * 188..])?;
    Ok(path)
}

/// An MPEG-TS whose picture timestamps run `ahead_s` seconds ahead of its clock (PCR), as some
/// capture devices and re-muxers write them: 150 frames (5 s) at 30 fps of the moving-ball
/// pattern with a keyframe every 30 frames, every PES PTS/DTS moved forward by `ahead_s`. Its
/// frames are shown from about `ahead_s` on the stream's timeline while the demuxer seeks on the
/// clock. Written into `dir` as `ahead.ts`.
pub fn pts_ahead_ts(dir: &Path, ahead_s: f64) -> Result<PathBuf, VideoError> {
    let whole = dir.join("on_time.ts");
    launch_to(
        "videotestsrc num-buffers=150 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         x264enc speed-preset=ultrafast key-int-max=30 bframes=0 threads=1 ! h264parse ! mpegtsmux ! filesink name=sink",
        &whole,
    )?;
    let mut data = read(&whole)?;
    let ahead = (ahead_s.max(0.0) * 90_000.0).round() as u64;
    // A 33-bit timestamp in its 5-byte PES field (marker bits kept).
    let get_ts = |b: &[u8]| {
        (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1)
    };
    let put_ts = |b: &mut [u8], v: u64| {
        let v = v & ((1 << 33) - 1);
        b[0] = (b[0] & 0xf0) | (((v >> 30) & 7) as u8) << 1 | 1;
        b[1] = (v >> 22) as u8;
        b[2] = (((v >> 15) & 0x7f) as u8) << 1 | 1;
        b[3] = (v >> 7) as u8;
        b[4] = ((v & 0x7f) as u8) << 1 | 1;
    };
    for p in data.chunks_exact_mut(188) {
        // Packets that start a PES with a payload.
        if p[0] != 0x47 || p[1] & 0x40 == 0 || p[3] & 0x10 == 0 {
            continue;
        }
        let at = if p[3] & 0x20 != 0 { 5 + usize::from(p[4]) } else { 4 };
        if at + 14 > 188 || p[at..at + 3] != [0, 0, 1] || p[at + 3] < 0xbc {
            continue;
        }
        let fields = p[at + 7] >> 6;
        let t = at + 9;
        if fields & 2 != 0 {
            let v = get_ts(&p[t..t + 5]);
            put_ts(&mut p[t..t + 5], v + ahead);
        }
        if fields == 3 {
            let v = get_ts(&p[t + 5..t + 10]);
            put_ts(&mut p[t + 5..t + 10], v + ahead);
        }
    }
    let path = dir.join("ahead.ts");
    write(&path, &data)?;
    Ok(path)
}

/// An MP4 whose audio track runs on after its picture ends, as a screen recording stopped late or
/// a narrated clip does: 60 frames (2 s) at 30 fps of the moving-ball pattern and 4 s of AAC tone.
/// The container declares the longer track's duration. Written into `dir` as `long_audio.mp4`.
pub fn audio_outlasts_video(dir: &Path) -> Result<PathBuf, VideoError> {
    let path = dir.join("long_audio.mp4");
    launch_to(
        "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         x264enc speed-preset=ultrafast key-int-max=30 threads=1 ! h264parse ! queue ! mp4mux name=mux ! \
         filesink name=sink \
         audiotestsrc num-buffers=188 samplesperbuffer=1024 ! audio/x-raw,rate=48000 ! audioconvert ! avenc_aac ! \
         aacparse ! queue ! mux.",
        &path,
    )?;
    Ok(path)
}

/// Copies of the MP4 `base` that ask to be shown turned clockwise by each of `degrees` (90, 180 or
/// 270), the way a phone stores a portrait recording: the same coded frames, with the track's
/// display matrix (`tkhd`) set. Written into `dir` as `turned_<deg>.mp4`.
pub fn turned_copies(base: &Path, dir: &Path, degrees: &[i32]) -> Result<Vec<(i32, PathBuf)>, VideoError> {
    let mut matrices = Vec::new();
    for &deg in degrees {
        let m = match deg {
            90 => [0, 1, -1, 0],
            180 => [-1, 0, 0, -1],
            270 => [0, -1, 1, 0],
            _ => return Err(VideoError::BadRequest(format!("a turn of {deg}°: only 90, 180 or 270"))),
        };
        matrices.push((format!("turned_{deg}"), m));
    }
    let paths = matrix_copies(base, dir, &matrices)?;
    Ok(degrees.iter().copied().zip(paths).collect())
}

/// Copies of the MP4 `base` with the track's display matrix set to each `[a, b, c, d]` (entries
/// −1, 0 or 1; a point `(x, y)` of the stored picture is shown at `(a·x + c·y, b·x + d·y)`, moved
/// back into the frame), written into `dir` as `<name>.mp4`: turns, mirrors and transposes.
pub fn matrix_copies(base: &Path, dir: &Path, matrices: &[(String, [i32; 4])]) -> Result<Vec<PathBuf>, VideoError> {
    let data = read(base)?;
    let at = find(&data, b"tkhd").ok_or_else(|| VideoError::corrupt(base, "no track header (tkhd) box"))?;
    // After the fourcc: version, flags, times and fields (40 bytes in version 0, 52 in version 1),
    // then the 3×3 matrix of 16.16 fixed-point numbers (the last column 2.30).
    let matrix_at = at + 4 + if data.get(at + 4) == Some(&1) { 52 } else { 40 };
    if data.len() < matrix_at + 36 {
        return Err(VideoError::corrupt(base, "a truncated track header (tkhd) box"));
    }
    let mut out = Vec::new();
    for (name, [a, b, c, d]) in matrices {
        let mut bytes = data.clone();
        let fixed = |v: i32| (v << 16).to_be_bytes();
        let mut matrix = Vec::with_capacity(36);
        for v in
            [fixed(*a), fixed(*b), [0; 4], fixed(*c), fixed(*d), [0; 4], [0; 4], [0; 4], (1i32 << 30).to_be_bytes()]
        {
            matrix.extend_from_slice(&v);
        }
        bytes[matrix_at..matrix_at + 36].copy_from_slice(&matrix);
        let path = dir.join(format!("{name}.mp4"));
        write(&path, &bytes)?;
        out.push(path);
    }
    Ok(out)
}

/// A `videotestsrc` pattern for [`testsrc_video`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestPattern {
    /// SMPTE bars scrolling sideways (moderate detail).
    MovingBars,
    /// A bouncing ball (little detail, cheap to decode).
    Ball,
}

/// A `videotestsrc` video for [`testsrc_video`].
#[derive(Clone, Debug, PartialEq)]
pub struct TestSrc {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u32,
    /// Frames between keyframes.
    pub keyint: u32,
    /// x264 speed preset.
    pub preset: String,
    pub pattern: TestPattern,
}

/// A long or large H.264 MP4 from `videotestsrc`, quickly (for benchmarks).
pub fn testsrc_video(out: &Path, t: &TestSrc) -> Result<(), VideoError> {
    let TestSrc { width, height, fps, frames, keyint, ref preset, pattern } = *t;
    gst_util::init()?;
    let p = Pipeline::new("medgen-testsrc")?;
    let src = gst_util::make("videotestsrc")?;
    src.set_property("num-buffers", frames as i32);
    match pattern {
        TestPattern::MovingBars => {
            src.set_property_from_str("pattern", "smpte");
            src.set_property("horizontal-speed", 4i32);
        }
        TestPattern::Ball => src.set_property_from_str("pattern", "ball"),
    }
    let caps = gst_util::make("capsfilter")?;
    caps.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", width as i32)
            .field("height", height as i32)
            .field("framerate", gst::Fraction::new(fps as i32, 1))
            .build(),
    );
    let enc = gst_util::make("x264enc")?;
    enc.set_property_from_str("speed-preset", preset.as_str());
    enc.set_property("key-int-max", keyint.max(1));
    let parse = gst_util::make("h264parse")?;
    let mux = gst_util::make("mp4mux")?;
    let sink = gst_util::make("filesink")?;
    sink.set_property("location", out.to_string_lossy().as_ref());
    let chain = [&src, &caps, &enc, &parse, &mux, &sink];
    p.pipeline.add_many(chain).map_err(|e| VideoError::Backend(e.to_string()))?;
    gst::Element::link_many(chain).map_err(|e| VideoError::Backend(e.to_string()))?;
    p.set_state(gst::State::Playing, out)?;
    let started = Instant::now();
    p.wait_eos(out, started, started + Duration::from_secs(3600), "generating a test video")
}

/// Run a `gst-launch`-style description whose sink is named `sink` (a filesink), writing `out`.
fn launch_to(desc: &str, out: &Path) -> Result<(), VideoError> {
    gst_util::init()?;
    let element = gst::parse::launch(desc).map_err(|e| VideoError::Backend(format!("pipeline `{desc}`: {e}")))?;
    let pipeline = element.downcast::<gst::Pipeline>().map_err(|_| VideoError::Backend("not a pipeline".into()))?;
    let sink = pipeline.by_name("sink").ok_or_else(|| VideoError::Backend("no element named sink".into()))?;
    sink.set_property("location", out.to_string_lossy().as_ref());
    let bus = pipeline.bus().ok_or_else(|| VideoError::Backend("no bus".into()))?;
    let p = Pipeline { pipeline, bus };
    p.set_state(gst::State::Playing, out)?;
    let started = Instant::now();
    p.wait_eos(out, started, started + Duration::from_secs(120), "generating a test file")
}

/// What a bad input must produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// It is fine after all (a readable video in disguise).
    Ok,
    /// A failure of this class whose message contains the text (case-insensitive).
    Fail(ErrorClass, &'static str),
}

/// One file of the bad-input corpus.
#[derive(Clone, Debug)]
pub struct BadInput {
    pub name: &'static str,
    pub path: PathBuf,
    pub expect: Expect,
}

fn read(path: &Path) -> Result<Vec<u8>, VideoError> {
    std::fs::read(path).map_err(|e| VideoError::Unreadable { path: path.to_path_buf(), reason: e.to_string() })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), VideoError> {
    std::fs::write(path, bytes).map_err(|e| VideoError::write(path, e))
}

/// Offset of the first box `fourcc` inside `data` (a naive scan; fine for our own small files).
fn find(data: &[u8], fourcc: &[u8; 4]) -> Option<usize> {
    data.windows(4).position(|w| w == fourcc)
}

/// Write the bad-input corpus into `dir` (which must exist). Expectations assume the default
/// `video.probe` (min_frames 2, max 8192×8192) followed by `video.decode`.
pub fn bad_inputs(dir: &Path) -> Result<Vec<BadInput>, VideoError> {
    use ErrorClass::*;
    let mut v = Vec::new();
    let mut add = |name: &'static str, expect: Expect| -> PathBuf {
        let path = dir.join(name);
        v.push(BadInput { name, path: path.clone(), expect });
        path
    };

    write(&add("zero_byte.mp4", Expect::Fail(InvalidInput, "empty")), b"")?;

    // A valid short video, the base of several broken ones. mp4mux without faststart writes the
    // index (moov) at the end: cutting the file in half loses it.
    let base = dir.join(".base.mp4");
    generate(&base, &SynthSpec::simple(160, 120, 30, 45))?;
    let plain = dir.join(".plain.mp4");
    launch_to(
        "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 ! x264enc speed-preset=ultrafast key-int-max=15 ! h264parse ! mp4mux ! filesink name=sink",
        &plain,
    )?;
    let bytes = read(&plain)?;
    write(&add("truncated.mp4", Expect::Fail(InvalidInput, "truncated")), &bytes[..bytes.len() / 2])?;
    std::fs::copy(&base, add("mislabeled.mkv", Expect::Ok)).map_err(|e| VideoError::write(&plain, e))?;

    // The bitstream overwritten with noise, the container intact (faststart: moov first).
    let mut bytes = read(&base)?;
    if let Some(m) = find(&bytes, b"mdat") {
        let start = m + 4;
        for (i, b) in bytes[start..].iter_mut().enumerate() {
            *b = (hash(i as u32 ^ 0x5eed) & 0xff) as u8;
        }
    }
    write(&add("corrupt_bitstream.mp4", Expect::Fail(InvalidInput, "corrupt")), &bytes)?;

    // Declared 20000×20000: the sample description and track header patched, the stream tiny.
    let mut bytes = read(&base)?;
    if let Some(a) = find(&bytes, b"avc1") {
        let (w, h) = (a + 28, a + 30);
        bytes[w..w + 2].copy_from_slice(&20000u16.to_be_bytes());
        bytes[h..h + 2].copy_from_slice(&20000u16.to_be_bytes());
    }
    if let Some(t) = find(&bytes, b"tkhd") {
        let size = u32::from_be_bytes([bytes[t - 4], bytes[t - 3], bytes[t - 2], bytes[t - 1]]) as usize;
        let end = t - 4 + size;
        bytes[end - 8..end - 4].copy_from_slice(&(20000u32 << 16).to_be_bytes());
        bytes[end - 4..end].copy_from_slice(&(20000u32 << 16).to_be_bytes());
    }
    write(&add("huge_20000x20000.mp4", Expect::Fail(Unsupported, "20000×20000")), &bytes)?;

    // A still image with a video extension.
    launch_to(
        "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! jpegenc ! filesink name=sink",
        &add("wrong_extension.mp4", Expect::Fail(InvalidInput, "still image")),
    )?;

    // Audio only.
    let audio_desc = if gst_util::have("avenc_aac") {
        "audiotestsrc num-buffers=40 ! audioconvert ! avenc_aac ! mp4mux ! filesink name=sink"
    } else {
        "audiotestsrc num-buffers=40 ! audioconvert ! wavenc ! filesink name=sink"
    };
    launch_to(audio_desc, &add("audio_only.m4a", Expect::Fail(InvalidInput, "audio only")))?;

    // One frame: a still image in a video container.
    launch_to(
        "videotestsrc num-buffers=1 ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 ! x264enc ! h264parse ! mp4mux ! filesink name=sink",
        &add("one_frame.mp4", Expect::Fail(InvalidInput, "1 frame")),
    )?;

    // Odd dimensions are valid (Motion JPEG allows them); readers must cope.
    launch_to(
        "videotestsrc num-buffers=20 pattern=ball ! video/x-raw,format=I420,width=321,height=241,framerate=20/1 ! jpegenc ! avimux ! filesink name=sink",
        &add("odd_321x241.avi", Expect::Ok),
    )?;

    write(
        &add("not_video.txt", Expect::Fail(InvalidInput, "not a media file")),
        "This is a plain text file, not a video.\nIt has a few lines of words.\n".repeat(40).as_bytes(),
    )?;
    let noise: Vec<u8> = (0..64 * 1024u32).map(|i| (hash(i ^ 0xbad) & 0xff) as u8).collect();
    write(&add("random_bytes.mp4", Expect::Fail(InvalidInput, "")), &noise)?;

    add("missing.mp4", Expect::Fail(Unreadable, "no such file"));
    std::fs::create_dir_all(add("a_folder.mp4", Expect::Fail(Unreadable, "folder")))
        .map_err(|e| VideoError::write(dir, e))?;

    #[cfg(unix)]
    {
        // Root reads everything: the permission case only means something for other users.
        let root =
            std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(true);
        if !root {
            use std::os::unix::fs::PermissionsExt;
            let p = add("no_permission.mp4", Expect::Fail(Unreadable, "permission"));
            std::fs::copy(&base, &p).map_err(|e| VideoError::write(&p, e))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000))
                .map_err(|e| VideoError::write(&p, e))?;
        }
    }
    let _ = std::fs::remove_file(&base);
    let _ = std::fs::remove_file(&plain);
    Ok(v)
}
