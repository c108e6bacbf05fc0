//! Video I/O on the real sample set (`scripts/fetch-samples.sh` puts it in `.cache/samples/`):
//! probe values against `gst-discoverer-1.0`, decoded frame counts against `gst-launch-1.0 ...
//! ! fakesink`, and the DICOM cines.
#![cfg(feature = "video")]

use medgen_operators::api::{ErrorClass, Video};
use medgen_operators::source::dicom;
use medgen_operators::video::decode::{Decoder, decode_all};
use medgen_operators::video::probe::{CountFrames, ProbeOptions, probe};
use medgen_operators::video::{Accuracy, DecodeSpec, PixelFormat, Sampling, Size, TimeRange};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn samples() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/samples");
    assert!(
        dir.join("cockatoo.mp4").is_file(),
        "run scripts/fetch-samples.sh first (the sample videos are missing in {})",
        dir.display()
    );
    dir
}

const VIDEOS: [&str; 5] =
    ["cityCC0.mpg", "cockatoo.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4", "movie-hello.mp4"];

/// What `gst-discoverer-1.0` says about a file's container, first sized video stream and audio.
#[derive(Debug, Default)]
struct Discovered {
    duration_s: f64,
    container: Option<String>,
    video_codec: Option<String>,
    audio_codec: Option<String>,
    width: u32,
    height: u32,
    fps: (u32, u32),
    bitrate: u64,
}

fn discoverer(path: &Path) -> Discovered {
    let out = Command::new("gst-discoverer-1.0")
        .arg(path)
        .output()
        .expect("run gst-discoverer-1.0 (gstreamer1.0-plugins-base-apps)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut d = Discovered::default();
    // Streams are listed as `kind #n: description` followed by indented properties.
    let mut current: Option<(String, String)> = None;
    let mut props: BTreeMap<String, String> = BTreeMap::new();
    let flush = |cur: &Option<(String, String)>, props: &BTreeMap<String, String>, d: &mut Discovered| {
        let Some((kind, desc)) = cur else { return };
        match kind.as_str() {
            "container" if d.container.is_none() => d.container = Some(desc.clone()),
            "video" => {
                let w: u32 = props.get("Width").and_then(|v| v.parse().ok()).unwrap_or(0);
                if w > 0 && d.width == 0 {
                    d.video_codec = Some(desc.clone());
                    d.width = w;
                    d.height = props.get("Height").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let fr = props.get("Frame rate").cloned().unwrap_or_default();
                    let (n, dd) = fr.split_once('/').unwrap_or(("0", "1"));
                    d.fps = (n.parse().unwrap_or(0), dd.parse().unwrap_or(1));
                    d.bitrate = props.get("Bitrate").and_then(|v| v.parse().ok()).unwrap_or(0);
                }
            }
            "audio" if d.audio_codec.is_none() => d.audio_codec = Some(desc.clone()),
            _ => {}
        }
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Duration: ") {
            let parts: Vec<f64> = rest.split(':').map(|p| p.parse().unwrap_or(0.0)).collect();
            if parts.len() == 3 {
                d.duration_s = parts[0] * 3600.0 + parts[1] * 60.0 + parts[2];
            }
            continue;
        }
        let header = ["container #", "video #", "audio #", "subtitles #"].iter().find(|p| t.starts_with(**p));
        if let Some(h) = header {
            flush(&current, &props, &mut d);
            props.clear();
            let kind = h.split(' ').next().unwrap().to_string();
            let desc = t.split_once(": ").map(|x| x.1.to_string()).unwrap_or_default();
            current = Some((kind, desc));
        } else if let Some((k, v)) = t.split_once(": ") {
            props.insert(k.to_string(), v.to_string());
        }
    }
    flush(&current, &props, &mut d);
    d
}

/// Frames `gst-launch-1.0 filesrc ! decodebin ! video/x-raw ! fakesink` renders.
fn gst_launch_frames(path: &Path) -> u64 {
    let out = Command::new("gst-launch-1.0")
        .args([
            "-v",
            "filesrc",
            &format!("location={}", path.display()),
            "!",
            "decodebin",
            "!",
            "video/x-raw",
            "!",
            "fakesink",
            "silent=false",
        ])
        .output()
        .expect("run gst-launch-1.0");
    assert!(out.status.success(), "gst-launch-1.0 failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("last-message = chain")).count() as u64
}

#[test]
fn probe_matches_gst_discoverer() {
    let dir = samples();
    for name in VIDEOS {
        let path = dir.join(name);
        let ours = probe(&path, &ProbeOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = discoverer(&path);
        assert_eq!(ours.container, theirs.container, "{name}: container");
        assert_eq!(ours.video_codec, theirs.video_codec, "{name}: video codec");
        assert_eq!(ours.audio_codec, theirs.audio_codec, "{name}: audio codec");
        assert_eq!(ours.has_audio, theirs.audio_codec.is_some(), "{name}: audio");
        assert_eq!((ours.width, ours.height), (Some(theirs.width), Some(theirs.height)), "{name}: size");
        assert_eq!(ours.fps, Some(theirs.fps), "{name}: fps");
        let dur = ours.duration_s.unwrap().0;
        if let Some(start) = ours.start_s {
            // Frames that start late (cityCC0's program stream, at 0.54 s) last their span: the
            // discoverer's duration is its clock's span (7.36 s for 190 frames at 25 fps).
            let (n, d) = theirs.fps;
            let span = ours.frame_count.unwrap() as f64 * d as f64 / n as f64;
            assert!((dur - span).abs() < 1e-3, "{name}: duration {dur} vs {span} s of frames from {}", start.0);
        } else {
            assert!((dur - theirs.duration_s).abs() < 1e-6, "{name}: duration {dur} vs {}", theirs.duration_s);
        }
        if theirs.bitrate > 0 {
            assert_eq!(ours.bitrate, Some(theirs.bitrate), "{name}: bitrate");
        } else {
            assert!(ours.bitrate.unwrap_or(0) > 0, "{name}: a bitrate from size and duration");
        }
        assert!(ours.frame_count_exact, "{name}: small files are counted exactly");
        assert!(!ours.variable_fps, "{name}: constant frame rate");
        assert_eq!(ours.rotation_deg, None);
    }
    // carphone has non-square pixels: 176×144 at 128/117 displays as 22528:16848 = 1408:1053
    let p = probe(&dir.join("carphone_pristine.mp4"), &ProbeOptions::default()).unwrap();
    assert_eq!(p.display_aspect, Some((1408, 1053)));
    // without counting, the frame count is estimated from duration × fps
    let est =
        probe(&dir.join("cockatoo.mp4"), &ProbeOptions { count_frames: CountFrames::Never, ..Default::default() })
            .unwrap();
    assert!(!est.frame_count_exact);
    assert_eq!(est.frame_count, Some(280));
}

#[test]
fn decoded_frame_counts_match_gst_launch() {
    let dir = samples();
    for name in VIDEOS {
        let path = dir.join(name);
        let expected = gst_launch_frames(&path);
        assert!(expected > 0);
        // Gray at a small size keeps the test quick; the count does not depend on it.
        let spec = DecodeSpec::all().with_format(PixelFormat::Gray).with_size(Size::Fit { width: 64, height: 64 });
        let mut dec = Decoder::open(&path, &spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut n = 0u64;
        let mut last = f64::NEG_INFINITY;
        for f in dec.by_ref() {
            let f = f.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(f.pts_s > last, "{name}: presentation times increase");
            last = f.pts_s;
            assert_eq!(f.data().len(), (f.width * f.height) as usize);
            n += 1;
        }
        assert_eq!(n, expected, "{name}: frames decoded vs gst-launch");
        // and the probe's exact count agrees
        let p = probe(&path, &ProbeOptions::default()).unwrap();
        assert_eq!(p.frame_count, Some(expected), "{name}: probe frame count");
    }
}

#[test]
fn decodes_real_video_at_full_size_and_samples() {
    let path = samples().join("cockatoo.mp4");
    // full-size RGB
    let spec = DecodeSpec::all().with_range(TimeRange::new(0.0, 1.0));
    let frames = decode_all(&path, &spec).unwrap();
    assert_eq!(frames.len(), 20, "20 fps: one second is 20 frames");
    assert_eq!((frames[0].width, frames[0].height), (1280, 720));
    assert!(frames[0].mean() > 20.0, "real picture content");
    // 2 fps over 4 s
    let spec = DecodeSpec::all()
        .with_sampling(Sampling::Fps { fps: 2.0 })
        .with_range(TimeRange::new(1.0, 5.0))
        .with_size(Size::Fill { width: 224, height: 224 });
    let frames = decode_all(&path, &spec).unwrap();
    assert_eq!(frames.len(), 8);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!((f.width, f.height), (224, 224));
        let t = 1.0 + i as f64 * 0.5;
        assert!(f.pts_s <= t + 1e-3 && f.pts_s + 0.05 > t, "frame {i} at {} is the one shown at {t}", f.pts_s);
    }
    // uniform over the whole video needs its duration: known after opening
    let spec =
        DecodeSpec::all().with_sampling(Sampling::Uniform { count: 7 }).with_size(Size::Fit { width: 128, height: 0 });
    let frames = decode_all(&path, &spec).unwrap();
    assert_eq!(frames.len(), 7);
    assert_eq!(frames[0].width, 128);
    assert_eq!(frames[0].height, 72);
}

#[test]
fn echo_dicom_decodes_to_120_frames_at_30_fps() {
    let path = samples().join("echo_color3d_jpeg.dcm");
    let p = probe(&path, &ProbeOptions::default()).unwrap();
    assert_eq!(p.container.as_deref(), Some("DICOM"));
    assert_eq!(p.frame_count, Some(120));
    assert_eq!(p.fps, Some((30, 1)));
    assert_eq!((p.width, p.height), (Some(640), Some(480)));
    let mut dec = Decoder::open(&path, &DecodeSpec::all()).unwrap();
    assert_eq!(dec.info().fps_f64(), Some(30.0));
    let mut n = 0;
    let mut means = Vec::new();
    for f in dec.by_ref() {
        let f = f.unwrap();
        assert_eq!((f.width, f.height, f.format), (640, 480, PixelFormat::Rgb));
        assert!((f.pts_s - n as f64 / 30.0).abs() < 1e-3, "frame {n} at {}", f.pts_s);
        means.push(f.mean());
        n += 1;
    }
    assert_eq!(n, 120);
    assert!(means.iter().all(|m| *m > 1.0), "every frame has content");
    // sampling and resizing work on DICOM too
    let spec =
        DecodeSpec::all().with_sampling(Sampling::Fps { fps: 10.0 }).with_size(Size::Fit { width: 320, height: 0 });
    let frames = decode_all(&path, &spec).unwrap();
    assert_eq!(frames.len(), 40);
    assert_eq!((frames[0].width, frames[0].height), (320, 240));
}

#[test]
fn rle_palette_dicom_decodes() {
    let path = samples().join("US-PAL-8-10x-echo.dcm");
    let info = dicom::read_info(&path).unwrap();
    assert_eq!(info.frames, 10);
    assert_eq!(info.photometric, "PALETTE COLOR");
    assert!(info.transfer_syntax.contains("RLE"), "{}", info.transfer_syntax);
    let frames = decode_all(&path, &DecodeSpec::all()).unwrap();
    assert_eq!(frames.len(), 10);
    assert_eq!((frames[0].width, frames[0].height), (600, 430));
    // the palette is applied: colour (Doppler) pixels exist
    let coloured = frames
        .iter()
        .flat_map(|f| {
            f.data()
                .chunks_exact(3)
                .map(|p| (p[0] as i32 - p[1] as i32).abs() + (p[1] as i32 - p[2] as i32).abs())
                .collect::<Vec<_>>()
        })
        .filter(|d| *d > 60)
        .count();
    assert!(coloured > 100, "palette colours appear ({coloured} coloured pixels)");
}

#[test]
fn dicom_metadata_is_useful_and_never_identifies_the_patient() {
    let dir = samples();
    for name in ["echo_color3d_jpeg.dcm", "US-PAL-8-10x-echo.dcm"] {
        let path = dir.join(name);
        let v = Video {
            source_id: "x".into(),
            uri: path.display().to_string(),
            size_bytes: 0,
            probe: None,
            metadata: BTreeMap::new(),
        };
        let out = dicom::enrich(&v, 2).unwrap();
        assert_eq!(out.metadata.get("modality").map(String::as_str), Some("US"), "{name}");
        assert!(out.metadata["description"].contains("ultrasound"), "{name}: {}", out.metadata["description"]);
        // Identifying values of the header must not appear anywhere in the record.
        let obj = dicom::identifying_values(&path).unwrap();
        assert!(!obj.is_empty() || name.starts_with("US-PAL"), "{name}: the sample has identifying fields to check");
        let json = serde_json::to_string(&out).unwrap();
        for value in obj {
            assert!(!json.contains(&value), "{name}: identifying value `{value}` leaked into {json}");
        }
    }
    // single-frame images are not cines
    let v = Video {
        source_id: "x".into(),
        uri: dir.join("echo_color3d_jpeg.dcm").display().to_string(),
        size_bytes: 0,
        probe: None,
        metadata: BTreeMap::new(),
    };
    let e = dicom::enrich(&v, 1000).unwrap_err();
    assert_eq!(e.class(), ErrorClass::InvalidInput);
}

#[test]
fn rgb_matches_gstreamer_videoconvert() {
    let path = samples().join("carphone_pristine.mp4");
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("frames.rgb");
    let ok = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "filesrc",
            &format!("location={}", path.display()),
            "!",
            "decodebin",
            "!",
            "videoconvert",
            "!",
            "video/x-raw,format=RGB",
            "!",
        ])
        .args(["filesink", &format!("location={}", raw.display())])
        .status()
        .unwrap();
    assert!(ok.success());
    let theirs = std::fs::read(&raw).unwrap();
    // GStreamer pads RGB rows to 4 bytes: 176 * 3 = 528 is already a multiple
    let frame_bytes = 176 * 144 * 3;
    let ours = decode_all(&path, &DecodeSpec::all().with_range(TimeRange::new(0.0, 0.3))).unwrap();
    assert!(ours.len() >= 5);
    for (i, f) in ours.iter().enumerate() {
        let q = medgen_operators::video::image::psnr(f.data(), &theirs[i * frame_bytes..(i + 1) * frame_bytes]);
        assert!(q > 35.0, "frame {i}: PSNR {q:.1} dB against videoconvert");
    }
}

#[test]
fn sampling_and_ranges_return_exactly_the_frames_of_a_full_decode() {
    let dir = samples();
    for name in VIDEOS {
        let path = dir.join(name);
        let base = DecodeSpec::all().with_format(PixelFormat::Gray).with_size(Size::Fit { width: 96, height: 96 });
        let all = decode_all(&path, &base).unwrap();
        let by_pts = |t: f64| all.iter().find(|f| (f.pts_s - t).abs() < 1e-6);
        // the frame displayed at t in the full decode
        let shown_at = |t: f64| all.iter().rev().find(|f| f.pts_s <= t + 1e-3).or(all.first()).unwrap();
        let mut dec = Decoder::open(&path, &base.clone().with_sampling(Sampling::Fps { fps: 1.0 })).unwrap();
        let sampled: Vec<_> = dec.by_ref().map(|f| f.unwrap()).collect();
        assert!(!sampled.is_empty(), "{name}");
        for (k, f) in sampled.iter().enumerate() {
            let full = by_pts(f.pts_s)
                .unwrap_or_else(|| panic!("{name}: sample {k} at {} is not a frame of the full decode", f.pts_s));
            assert_eq!(f.data(), full.data(), "{name}: sample {k} at {}", f.pts_s);
            assert_eq!(f.pts_s, shown_at(k as f64).pts_s, "{name}: sample {k} is the frame shown at {k} s");
        }
        // a range from the middle, and one that runs to the last frame (cityCC0's frames run
        // past the duration its program stream declares, 0.54 s late)
        let last = all.last().unwrap();
        let end = last.pts_s + last.duration_s.unwrap_or(0.0);
        for (a, b) in [(1.5, 2.5), (end - 2.0, end)] {
            let part = decode_all(&path, &base.clone().with_range(TimeRange::new(a, b))).unwrap();
            let expected: Vec<&_> =
                all.iter().filter(|f| f.pts_s + f.duration_s.unwrap_or(0.0) > a + 1e-3 && f.pts_s < b - 1e-3).collect();
            assert_eq!(part.len(), expected.len(), "{name}: frames in [{a}, {b})");
            for (f, e) in part.iter().zip(expected) {
                assert_eq!((f.pts_s, f.data()), (e.pts_s, e.data()), "{name}");
            }
        }
        eprintln!("{name}: {} frames, {} sampled with {} seeks", all.len(), sampled.len(), dec.stats().seeks);
    }
}

/// Keyframe accuracy on real files (MPEG-2 in MPEG-PS, H.264 in MP4 with edit lists, a file with a
/// single keyframe, irregular scene-cut keyframes, DICOM): each 1 fps tick gets its nearest
/// keyframe (checked against the keyframes `gst-launch-1.0 ... parsebin ! identity` lists, shifted
/// to stream time), pixel-identical to the full decode's frame, decoding a fraction of the frames.
#[test]
fn keyframe_sampling_of_real_videos() {
    let dir = samples();
    let expected: [(&str, &[f64]); 6] = [
        ("cityCC0.mpg", &[0.54, 1.02, 1.98, 2.94, 3.9, 4.86, 6.14, 7.1, 8.06]),
        ("cockatoo.mp4", &[0.0, 3.8, 7.25, 8.0]),
        ("carphone_pristine.mp4", &[0.0]),
        ("carphone_distorted.mp4", &[0.0]),
        ("movie-hello.mp4", &[0.033, 0.833, 2.033, 2.833, 4.033, 4.833, 6.033, 6.833, 8.033]),
        // every DICOM frame is a keyframe: the exact frames
        ("echo_color3d_jpeg.dcm", &[0.0, 1.0, 2.0, 3.0]),
    ];
    for (name, want) in expected {
        let path = dir.join(name);
        let base = DecodeSpec::all().with_format(PixelFormat::Gray).with_size(Size::Fit { width: 96, height: 96 });
        let one_fps = base.clone().with_sampling(Sampling::Fps { fps: 1.0 });
        let mut dec = Decoder::open(&path, &one_fps.clone().with_accuracy(Accuracy::Keyframe)).unwrap();
        let frames: Vec<_> = dec.by_ref().map(|f| f.unwrap_or_else(|e| panic!("{name}: {e}"))).collect();
        let stats = dec.stats();
        let times: Vec<f64> = frames.iter().map(|f| (f.pts_s * 1000.0).round() / 1000.0).collect();
        assert_eq!(times, want, "{name}: {stats:?}");
        if name.ends_with(".dcm") {
            // the exact frames, and nothing else decoded
            let exact = decode_all(&path, &one_fps).unwrap();
            assert_eq!(exact.len(), frames.len());
            for (k, e) in frames.iter().zip(&exact) {
                assert_eq!((k.pts_s, k.data()), (e.pts_s, e.data()), "{name}");
            }
            assert_eq!(stats.decoded, 4);
            continue;
        }
        let all = decode_all(&path, &base).unwrap();
        for f in &frames {
            let full = all.iter().find(|a| (a.pts_s - f.pts_s).abs() < 1e-6).expect("a frame of the full decode");
            assert_eq!(f.data(), full.data(), "{name}: the keyframe at {}", f.pts_s);
        }
        assert!(stats.decoded * 4 < all.len() as u64, "{name}: {stats:?} of {} frames", all.len());
    }
}
