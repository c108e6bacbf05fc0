//! GStreamer plumbing shared by the video modules: initialisation, elements, pipelines that stop
//! their threads when dropped, and the mapping from GStreamer errors to [`VideoError`]s.

use super::VideoError;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Initialise GStreamer once per process.
pub(crate) fn init() -> Result<(), VideoError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| VideoError::Backend(format!("cannot initialise GStreamer: {e}; run scripts/setup.sh")))
}

/// The Debian package that ships a GStreamer element, for error messages.
fn package_of(factory: &str) -> &'static str {
    match factory {
        "x264enc" => "gstreamer1.0-plugins-ugly",
        "openh264enc" | "openh264dec" | "h264parse" | "videoparsersbad" => "gstreamer1.0-plugins-bad",
        "mp4mux" | "qtmux" | "qtdemux" | "videocrop" | "jpegenc" | "y4menc" => "gstreamer1.0-plugins-good",
        f if f.starts_with("av") => "gstreamer1.0-libav",
        _ => "gstreamer1.0-plugins-base",
    }
}

/// Whether an element factory is installed.
pub(crate) fn have(factory: &str) -> bool {
    gst::ElementFactory::find(factory).is_some()
}

/// Make an element, or say which package to install.
pub(crate) fn make(factory: &str) -> Result<gst::Element, VideoError> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        VideoError::Backend(format!(
            "the GStreamer element `{factory}` is missing; install {} (scripts/setup.sh does)",
            package_of(factory)
        ))
    })
}

/// A pipeline that is set to `Null` when dropped, which stops and joins its streaming threads.
pub(crate) struct Pipeline {
    pub(crate) pipeline: gst::Pipeline,
    pub(crate) bus: gst::Bus,
}

impl Pipeline {
    pub(crate) fn new(name: &str) -> Result<Pipeline, VideoError> {
        let pipeline = gst::Pipeline::with_name(name);
        let bus = pipeline.bus().ok_or_else(|| VideoError::Backend("a pipeline without a bus".into()))?;
        Ok(Pipeline { pipeline, bus })
    }

    pub(crate) fn set_state(&self, state: gst::State, path: &Path) -> Result<gst::StateChangeSuccess, VideoError> {
        self.pipeline.set_state(state).map_err(|_| {
            // The reason is on the bus.
            self.pop_error(path).unwrap_or_else(|| {
                VideoError::Backend(format!("cannot set the pipeline for {} to {state:?}", path.display()))
            })
        })
    }

    /// The first error waiting on the bus, classified.
    pub(crate) fn pop_error(&self, path: &Path) -> Option<VideoError> {
        self.bus.pop_filtered(&[gst::MessageType::Error]).and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(classify(path, &e.error(), e.debug().as_deref())),
            _ => None,
        })
    }

    /// Wait for the pipeline to preroll (async-done), an error, or EOS, up to `deadline`;
    /// `abort` is asked every 50 ms for an error found elsewhere (in a signal handler).
    /// Returns `Ok(true)` on preroll, `Ok(false)` on EOS.
    pub(crate) fn wait_preroll(
        &self,
        path: &Path,
        started: Instant,
        deadline: Instant,
        stage: &str,
        abort: &dyn Fn() -> Option<VideoError>,
    ) -> Result<bool, VideoError> {
        loop {
            if let Some(e) = abort() {
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VideoError::timeout(path, started, stage));
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let msg = self.bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(wait.as_nanos() as u64),
                &[gst::MessageType::AsyncDone, gst::MessageType::Error, gst::MessageType::Eos],
            );
            let Some(msg) = msg else { continue };
            match msg.view() {
                gst::MessageView::AsyncDone(_) => return Ok(true),
                gst::MessageView::Eos(_) => return Ok(false),
                gst::MessageView::Error(e) => return Err(classify(path, &e.error(), e.debug().as_deref())),
                _ => {}
            }
        }
    }

    /// Wait for EOS (success) or an error, up to `deadline`.
    pub(crate) fn wait_eos(
        &self,
        path: &Path,
        started: Instant,
        deadline: Instant,
        stage: &str,
    ) -> Result<(), VideoError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(VideoError::timeout(path, started, stage));
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            let msg = self.bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(wait.as_nanos() as u64),
                &[gst::MessageType::Error, gst::MessageType::Eos],
            );
            let Some(msg) = msg else { continue };
            match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(e) => return Err(classify(path, &e.error(), e.debug().as_deref())),
                _ => {}
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Map a GStreamer error about `path` to a [`VideoError`] with a specific reason.
pub(crate) fn classify(path: &Path, err: &gst::glib::Error, debug: Option<&str>) -> VideoError {
    let msg = err.message().trim_end_matches('.').to_string();
    let dbg = debug.unwrap_or("");
    let both = format!("{msg} {dbg}").to_ascii_lowercase();
    if let Some(kind) = err.kind::<gst::ResourceError>() {
        return match kind {
            gst::ResourceError::Write | gst::ResourceError::OpenWrite | gst::ResourceError::NoSpaceLeft => {
                VideoError::write(path, msg)
            }
            _ => VideoError::Unreadable { path: path.to_path_buf(), reason: msg },
        };
    }
    if let Some(kind) = err.kind::<gst::StreamError>() {
        return match kind {
            gst::StreamError::TypeNotFound => VideoError::not_video(
                path,
                "not a media file: GStreamer cannot recognise its format (a document, an archive, random bytes, or a wrong extension)",
            ),
            gst::StreamError::WrongType if both.contains("text file") => VideoError::not_video(
                path,
                format!("not a media file: {msg} (a document or a transcript with a video extension?)"),
            ),
            gst::StreamError::WrongType => VideoError::not_video(path, format!("no playable stream ({msg})")),
            gst::StreamError::CodecNotFound => VideoError::unsupported(
                path,
                format!(
                    "no decoder installed for its codec ({msg}); install gstreamer1.0-libav and the plugins-bad/-ugly sets"
                ),
            ),
            gst::StreamError::NotImplemented => VideoError::unsupported(path, msg),
            gst::StreamError::Decode => VideoError::corrupt(
                path,
                format!("its video bitstream cannot be decoded ({msg}); re-encode or re-copy the file"),
            ),
            gst::StreamError::Demux | gst::StreamError::Format
                if both.contains("incomplete")
                    || both.contains("moov")
                    || both.contains("truncat")
                    || both.contains("end of file") =>
            {
                VideoError::Truncated {
                    path: path.to_path_buf(),
                    detail: format!("the container's index is missing ({msg})"),
                }
            }
            gst::StreamError::Demux | gst::StreamError::Format => {
                VideoError::corrupt(path, format!("the container cannot be parsed ({msg})"))
            }
            _ if both.contains("not-negotiated") => {
                VideoError::unsupported(path, format!("its video format cannot be converted ({msg}: {dbg})"))
            }
            _ => VideoError::corrupt(path, format!("{msg} ({dbg})")),
        };
    }
    if let Some(gst::CoreError::MissingPlugin) = err.kind::<gst::CoreError>() {
        return VideoError::unsupported(
            path,
            format!("a GStreamer plugin is missing ({msg}); install the plugins-bad/-ugly/libav sets"),
        );
    }
    VideoError::Backend(format!("{} : {msg} ({dbg})", path.display()))
}

/// Convert a clock time to seconds.
pub(crate) fn secs(t: gst::ClockTime) -> f64 {
    t.nseconds() as f64 / 1e9
}

/// Convert seconds to a clock time (negative and non-finite values clamp to 0).
pub(crate) fn clock(s: f64) -> gst::ClockTime {
    let ns = if s.is_finite() && s > 0.0 { (s * 1e9).round() as u64 } else { 0 };
    gst::ClockTime::from_nseconds(ns)
}

/// The description GStreamer gives a set of caps ("H.264 (High Profile)", "Quicktime").
pub(crate) fn describe_caps(caps: &gst::CapsRef) -> String {
    gstreamer_pbutils::pb_utils_get_codec_description(caps).to_string()
}

/// A `file://` uri for a path.
pub(crate) fn file_uri(path: &Path) -> Result<String, VideoError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| VideoError::Backend(e.to_string()))?.join(path)
    };
    gst::glib::filename_to_uri(&abs, None).map(|u| u.to_string()).map_err(|e| VideoError::Unreadable {
        path: path.to_path_buf(),
        reason: format!("cannot make a uri of the path: {e}"),
    })
}

/// Worker threads for a libav video decoder: one more than the cores (frame threads stall on each
/// other's reference rows; the extra one fills the gaps), at most libav's 16.
pub(crate) fn decoder_threads() -> i32 {
    cores().min(15) as i32 + 1
}

/// Number of threads worth giving a converter.
pub(crate) fn cpu_threads() -> u32 {
    cores().min(8) as u32
}

/// The cores this process may use (at least 1).
fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
