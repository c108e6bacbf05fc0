//! `curate.deidentify` end to end: burned-in text of the echocardiogram DICOM and the face of
//! `movie-hello.mp4` are unreadable in the clips `sink.dataset` writes (the text detector finds no
//! text inside the recorded redaction boxes, the face detector no face), the rest of the picture
//! is untouched (PSNR), a clean video passes without a redacted copy, a re-run computes nothing and
//! a changed `mode` re-encodes without re-running the detectors; `medgen check` names the missing
//! detector or runtime.
//!
//! Needs ONNX Runtime (`scripts/setup.sh`), the detectors (`scripts/fetch-models.sh`) and the
//! samples (`scripts/fetch-samples.sh`).
#![cfg(feature = "video")]

mod curate_common;
#[path = "support/openai.rs"]
mod openai;

use curate_common::{check, counter, repo, rows, run, sample, score, synth_video};
use medgen_operators::curate::deidentify::{REDACTIONS, Region, parse_regions};
use medgen_operators::curate::{faces, ocr};
use medgen_operators::onnx;
use medgen_operators::video::cut::{CutSpec, cut};
use medgen_operators::video::decode::Decoder;
use medgen_operators::video::synth::SynthSpec;
use medgen_operators::video::{DecodeSpec, Frame, PixelFormat, Sampling, TimeRange, image};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `.cache/models`, asserting that the detectors were fetched.
fn models() -> PathBuf {
    let dir = repo().join(".cache/models");
    for f in [ocr::DEFAULT_MODEL, faces::DEFAULT_MODEL] {
        assert!(dir.join(f).is_file(), "run scripts/fetch-models.sh first ({} is missing)", dir.join(f).display());
    }
    dir
}

fn ocr_params() -> ocr::OcrParams {
    serde_json::from_value(serde_json::json!({})).unwrap()
}

/// Text boxes the subtitle filter's detector finds on an RGB frame, as fractions of the frame.
fn text_boxes(frame: &Frame) -> Vec<[f64; 4]> {
    // At the redaction's detector size (960), more sensitive to small text than the filter's 640.
    let p = ocr::OcrParams { det_side: 960, ..ocr_params() };
    let model = ocr::load_detector(&models().join(ocr::DEFAULT_MODEL), &p).expect("text detector");
    let (dw, dh) = ocr::det_size(frame.width, frame.height, p.det_side);
    let px = image::resize(frame.data(), frame.width, frame.height, 3, dw, dh);
    let small = Frame::new(frame.pts_s, None, dw, dh, PixelFormat::Rgb, px);
    let texts = ocr::detect(&model, &[small], &p).expect("detect text");
    texts[0]
        .boxes
        .iter()
        .map(|b| [b.x0 as f64 / dw as f64, b.y0 as f64 / dh as f64, b.x1 as f64 / dw as f64, b.y1 as f64 / dh as f64])
        .collect()
}

/// Faces CenterFace finds on an RGB frame with a score over `threshold`.
fn face_boxes(frame: &Frame, threshold: f32) -> Vec<faces::FaceBox> {
    let path = models().join(faces::DEFAULT_MODEL);
    let det = faces::load_detector(&path, 1, onnx::FETCH_HINT).expect("face detector");
    det.detect(std::slice::from_ref(frame), threshold, 1280).expect("detect faces").remove(0)
}

/// The frames displayed at `times` (seconds, the file's timeline), RGB at the stored size.
fn frames_at(path: &Path, times: &[f64]) -> Vec<Frame> {
    let spec = DecodeSpec::all().with_sampling(Sampling::Timestamps { times_s: times.to_vec() });
    let frames: Vec<Frame> = Decoder::open(path, &spec).expect("open").map(|f| f.expect("frame")).collect();
    assert_eq!(frames.len(), times.len(), "{}: frames at {times:?}", path.display());
    frames
}

/// Share of `b`'s area inside `r` (fractions of the frame).
fn inside(b: &[f64; 4], r: &[f64; 4]) -> f64 {
    let w = (b[2].min(r[2]) - b[0].max(r[0])).max(0.0);
    let h = (b[3].min(r[3]) - b[1].max(r[1])).max(0.0);
    let area = (b[2] - b[0]) * (b[3] - b[1]);
    if area > 0.0 { w * h / area } else { 0.0 }
}

/// Luma PSNR of two RGB frames of one size over the pixels outside `regions`.
fn psnr_outside(a: &Frame, b: &Frame, regions: &[&Region]) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let (w, h) = (a.width as usize, a.height as usize);
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = ((x as f64 + 0.5) / w as f64, (y as f64 + 0.5) / h as f64);
            if regions.iter().any(|r| fx >= r.bx[0] && fx <= r.bx[2] && fy >= r.bx[1] && fy <= r.bx[3]) {
                continue;
            }
            // Luma (BT.601): 4:2:0 chroma subsampling of every H.264 encode is not the redaction's doing.
            let o = (y * w + x) * 3;
            let luma = |p: &[u8]| (0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).round() as u8;
            xa.push(luma(&a.data()[o..o + 3]));
            xb.push(luma(&b.data()[o..o + 3]));
        }
    }
    assert!(xa.len() > w * h / 2, "most of the frame is outside the regions");
    image::psnr(&xa, &xb)
}

/// A graph: `source` → curate.segment (one clip per video) → curate.deidentify (`deid` params) →
/// sink.dataset (`width × height`, no captions) and sink.jsonl `deid.jsonl`.
fn graph(dir: &Path, name: &str, source: &str, files: &[&Path], deid: &str, size: (u32, u32)) -> PathBuf {
    let paths: Vec<String> = files.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let g = dir.join(format!("{name}.toml"));
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "{name}"

[nodes.raw]
op = "{source}"
paths = [{paths}]

[nodes.clips]
op = "curate.segment"
inputs = ["raw"]
min_seconds = 0.5
max_seconds = 30.0
min_height = 100
cut_detection = false
tau = 0.0

[nodes.deid]
op = "curate.deidentify"
inputs = ["clips"]
{deid}

[nodes.rows]
op = "sink.jsonl"
inputs = ["deid"]
path = "deid.jsonl"

[nodes.dataset]
op = "sink.dataset"
inputs = {{ clips = "deid" }}
require_caption = false
width = {w}
height = {h}
resize = "fit"
"#,
            paths = paths.join(", "),
            w = size.0,
            h = size.1,
        ),
    )
    .unwrap();
    g
}

/// The one row of `deid.jsonl`, its regions and its written clip.
fn written(store: &Path) -> (serde_json::Value, Vec<Region>, PathBuf) {
    let rows = rows(store, "deid.jsonl");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = rows[0].clone();
    let regions = parse_regions(row["labels"][REDACTIONS].as_str().expect("redactions label")).expect("regions");
    let id = row["clip"]["clip_id"].as_str().unwrap();
    let file = store.join("outputs/dataset/clips").join(format!("{id}.mp4"));
    assert!(file.is_file(), "{} was not written", file.display());
    (row, regions, file)
}

/// Run the DICOM `dcm` through the graph (clips written at its stored size `size`) and check the
/// written clip: no text inside the regions, the rest untouched. Returns the regions.
fn deidentify_echo(dcm: &Path, size: (u32, u32), deid: &str) -> Vec<Region> {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let started = Instant::now();
    let summary = run(&graph(dir.path(), "echo", "source.dicom", &[dcm], deid, size), &store);
    let name = dcm.file_name().unwrap().to_string_lossy().to_string();
    eprintln!("{name}: run in {:?}", started.elapsed());
    assert_eq!(counter(&summary, "deid", "failed"), 0, "{summary}");
    let (row, regions, clip) = written(&store);
    eprintln!("{name}: {} regions: {regions:?}", regions.len());
    let (start, end) = (row["clip"]["start_s"].as_f64().unwrap(), row["clip"]["end_s"].as_f64().unwrap());
    assert!(score(&row, "redacted_text_regions") >= 1.0, "{row}");
    assert!(score(&row, "redacted_frames") >= 1.0, "{row}");
    assert_eq!(score(&row, "redacted_faces"), 0.0, "an echocardiogram has no face: {row}");
    assert!(row["clip"]["metadata"]["redacted_blob"].is_string(), "{row}");
    assert_eq!(row["clip"]["uri"].as_str().unwrap(), dcm.display().to_string(), "clip identity is kept");

    // Frames of the source and of the written clip at the same times.
    let times: Vec<f64> = (0..4).map(|i| (i as f64 + 0.5) * (end - start) / 4.0).collect();
    let source: Vec<f64> = times.iter().map(|t| start + t).collect();
    let before = frames_at(dcm, &source);
    let after = frames_at(&clip, &times);
    let mut found_before = 0;
    for ((t, a), b) in times.iter().zip(&before).zip(&after) {
        let active: Vec<&Region> = regions.iter().filter(|r| r.active(*t)).collect();
        // The source has text inside the regions (so this test can fail) …
        let orig = text_boxes(a);
        found_before += orig.iter().filter(|b| active.iter().any(|r| inside(b, &r.bx) > 0.5)).count();
        // … the written clip none.
        let boxes = text_boxes(b);
        let worst = boxes.iter().flat_map(|b| active.iter().map(move |r| inside(b, &r.bx))).fold(0.0, f64::max);
        let psnr = psnr_outside(a, b, &active);
        eprintln!(
            "{name} t = {t:.2}: {} text boxes before, {} after (largest share inside a region {worst:.2}); \
             luma PSNR outside the regions {psnr:.1} dB",
            orig.len(),
            boxes.len()
        );
        assert!(worst < 0.25, "text found inside a redaction box at {t:.2} s: {boxes:?} vs {active:?}");
        assert!(psnr >= 30.0, "the picture outside the regions changed: PSNR {psnr:.1} dB at {t:.2} s");
    }
    assert!(found_before >= 4, "the source's overlay text lies inside the regions ({found_before} boxes)");
    regions
}

#[test]
fn echo_dicom_text_is_unreadable_in_the_written_clip() {
    let _ = models();
    // 4 s of a static overlay: detecting every 0.5 s keeps the debug build's test short.
    deidentify_echo(&sample("echo_color3d_jpeg.dcm"), (640, 480), "detect_every_s = 0.5");
}

#[test]
fn echo_date_and_time_overlay_is_redacted() {
    let _ = models();
    // 600×430 colour Doppler, 10 frames: "30 JAN 94" and "11:24:58" at x 2–90, y 31–54.
    let regions = deidentify_echo(&sample("US-PAL-8-10x-echo.dcm"), (600, 430), "");
    let covered = |x: f64, y: f64, t: f64| {
        regions.iter().any(|r| r.active(t) && x >= r.bx[0] && x <= r.bx[2] && y >= r.bx[1] && y <= r.bx[3])
    };
    for t in [0.0, 0.3, 0.7] {
        for y in [33.0, 38.0, 47.0, 52.0] {
            for x in (4..=84).step_by(8) {
                assert!(
                    covered(x as f64 / 600.0, y / 430.0, t),
                    "the date/time overlay at ({x}, {y}) px, {t} s is not redacted: {regions:?}"
                );
            }
        }
    }
}

#[test]
fn movie_face_is_gone_from_the_written_clip() {
    let _ = models();
    let dir = tempfile::tempdir().unwrap();
    // Two seconds of the talking head with the "Hello world" title.
    let movie = dir.path().join("hello.mp4");
    let spec = CutSpec { range: TimeRange::new(2.0, 4.0), crf: 16, ..Default::default() };
    cut(&sample("movie-hello.mp4"), &movie, &spec).expect("cut");
    let store = dir.path().join("store");
    let started = Instant::now();
    let deid = "detect_every_s = 0.5";
    let summary = run(&graph(dir.path(), "movie", "source.files", &[&movie], deid, (1280, 720)), &store);
    eprintln!("movie: run in {:?}", started.elapsed());
    assert_eq!(counter(&summary, "deid", "failed"), 0, "{summary}");
    let (row, regions, clip) = written(&store);
    eprintln!("movie: {regions:?}");
    assert!(score(&row, "redacted_faces") >= 1.0, "{row}");
    assert!(regions.iter().any(|r| r.kind == medgen_operators::curate::deidentify::RegionKind::Face), "{regions:?}");
    assert!(score(&row, "redacted_text_regions") >= 1.0, "the title is text: {row}");

    let times = [0.3, 1.0, 1.7];
    for (t, (a, b)) in times.iter().zip(frames_at(&movie, &times).iter().zip(frames_at(&clip, &times).iter())) {
        let before = face_boxes(a, 0.5);
        // Stricter than the node's threshold (0.5): not even a weak face is left.
        let after = face_boxes(b, 0.2);
        let active: Vec<&Region> = regions.iter().filter(|r| r.active(*t)).collect();
        let psnr = psnr_outside(a, b, &active);
        eprintln!("t = {t}: faces before {before:?}, after {after:?}; PSNR outside the regions {psnr:.1} dB");
        assert!(!before.is_empty(), "the source shows a face at {t} s");
        assert!(after.is_empty(), "a face is still found at {t} s: {after:?}");
        assert!(psnr >= 30.0, "PSNR {psnr:.1} dB at {t} s");
    }
}

#[test]
fn clean_video_passes_without_a_redacted_copy() {
    let _ = models();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clean.mp4");
    synth_video(&video, &SynthSpec::simple(320, 240, 30, 45));
    let store = dir.path().join("store");
    let summary = run(&graph(dir.path(), "clean", "source.files", &[&video], "", (320, 240)), &store);
    let (row, regions, _) = written(&store);
    assert!(regions.is_empty(), "{regions:?}");
    for s in ["redacted_text_regions", "redacted_faces", "redacted_frames"] {
        assert_eq!(score(&row, s), 0.0, "{row}");
    }
    assert!(row["clip"]["metadata"].get("redacted_blob").is_none(), "{row}");
    // Detection ran once, no redaction job.
    assert_eq!(counter(&summary, "deid", "memo_misses"), 1, "{summary}");
}

#[test]
fn reruns_compute_nothing_and_a_new_mode_only_re_encodes() {
    let _ = models();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("sub.mp4");
    let mut spec = SynthSpec::simple(320, 240, 30, 45);
    spec.subtitles = vec![(0, 45, "Patient Jane Doe 2024".into())];
    synth_video(&video, &spec);
    let store = dir.path().join("store");
    let g = |name: &str, deid: &str| graph(dir.path(), name, "source.files", &[&video], deid, (320, 240));

    let first = run(&g("blur", ""), &store);
    assert_eq!(counter(&first, "deid", "memo_misses"), 2, "detection and redaction: {first}");
    let (row, regions, _) = written(&store);
    assert!(score(&row, "redacted_text_regions") >= 1.0, "{row}");
    let again = run(&g("blur", ""), &store);
    assert_eq!(counter(&again, "deid", "memo_misses"), 0, "{again}");
    assert_eq!(counter(&again, "deid", "memo_hits"), 2, "{again}");

    // Black boxes: the detections come from the memo, the copy is made again.
    let black = run(&g("black", "mode = \"black\""), &store);
    assert_eq!(counter(&black, "deid", "memo_hits"), 1, "{black}");
    assert_eq!(counter(&black, "deid", "memo_misses"), 1, "{black}");
    let (row2, regions2, clip) = written(&store);
    assert_eq!(regions, regions2);
    assert_ne!(row["clip"]["metadata"]["redacted_blob"], row2["clip"]["metadata"]["redacted_blob"]);
    let r = &regions2[0];
    let t = (r.t0 + r.t1) / 2.0;
    let f = &frames_at(&clip, &[t])[0];
    let (w, h) = (f.width as f64, f.height as f64);
    let (cx, cy) = (((r.bx[0] + r.bx[2]) / 2.0 * w) as usize, ((r.bx[1] + r.bx[3]) / 2.0 * h) as usize);
    let o = (cy * f.width as usize + cx) * 3;
    assert!(f.data()[o..o + 3].iter().all(|v| *v < 24), "black inside the region: {:?}", &f.data()[o..o + 3]);
}

#[test]
fn check_fails_early_without_a_detector_or_the_runtime() {
    let _ = models();
    let dir = tempfile::tempdir().unwrap();
    let g = graph(dir.path(), "check", "source.files", &[&dir.path().join("none.mp4")], "", (320, 240));
    let (code, text) = check(&g);
    assert_eq!(code, 0, "{text}");
    let empty = dir.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let out = curate_common::medgen().env("MEDGEN_MODELS_DIR", &empty).arg("check").arg(&g).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(text.contains("centerface.onnx") && text.contains("scripts/fetch-models.sh"), "{text}");
    assert!(text.contains("ppocrv6_tiny_det.onnx"), "{text}");
    let out = curate_common::medgen()
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
        .arg("check")
        .arg(&g)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(text.contains("run scripts/setup.sh or set ORT_DYLIB_PATH"), "{text}");
    // Faces only: the text detector is not needed.
    let g = graph(dir.path(), "faces", "source.files", &[&dir.path().join("none.mp4")], "text = false", (320, 240));
    let out = curate_common::medgen().env("MEDGEN_MODELS_DIR", &empty).arg("check").arg(&g).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("centerface.onnx") && !text.contains("ppocrv6_tiny_det.onnx"), "{text}");
}

/// Every `data:image/…` URL in a JSON request body.
fn images_in(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if s.starts_with("data:image") => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| images_in(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| images_in(x, out)),
        _ => {}
    }
}

#[test]
fn caption_vlm_reads_the_redacted_copy() {
    let _ = models();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("sub.mp4");
    let mut spec = SynthSpec::simple(320, 240, 30, 30);
    spec.subtitles = vec![(0, 30, "Patient Jane Doe 2024".into())];
    synth_video(&video, &spec);
    let detailed = "A synthetic test clip with a smooth colour gradient and a small square moving across the \
                    picture while a blurred band of text sits at the bottom of the frame for the whole duration.";
    let server = openai::Server::start(move |s, _| {
        let brief = s.text.contains("brief caption");
        openai::Reply::Answer(if brief { "A gradient test clip with a moving square.".into() } else { detailed.into() })
    });
    let g = |name: &str, input: &str, frames: u32| {
        let base = graph(dir.path(), name, "source.files", &[&video], "", (320, 240));
        let mut text = std::fs::read_to_string(&base).unwrap();
        text = text.replace("[graph]\n", "[graph]\nmax_attempts = 1\n");
        text.push_str(&format!(
            r#"
[nodes.cap]
op = "caption.vlm"
inputs = ["{input}"]
endpoint = "{url}"
model = "mock-vl"
api_key_env = "MEDGEN_TEST_KEY"
frames = {frames}
frame_size = 160
backoff_s = 0.05
retries = 0
detailed_words = [10, 320]

[nodes.captions]
op = "sink.jsonl"
inputs = ["cap"]
path = "captions.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["cap.failures"]
path = "cap_failures.jsonl"
"#,
            url = server.url
        ));
        std::fs::write(&base, text).unwrap();
        base
    };
    let sent = |from: usize| {
        let mut imgs = Vec::new();
        for s in server.requests().iter().skip(from) {
            images_in(&s.body, &mut imgs);
        }
        imgs
    };

    // Captioning the redacted clips, and the same clips straight from the segmenter.
    let store = dir.path().join("store");
    run(&g("redacted", "deid", 2), &store);
    assert_eq!(rows(&store, "captions.jsonl").len(), 1, "{:?}", rows(&store, "cap_failures.jsonl"));
    let redacted = sent(0);
    let n = server.requests().len();
    let plain_store = dir.path().join("plain");
    run(&g("plain", "clips", 2), &plain_store);
    let plain = sent(n);
    assert!(!redacted.is_empty() && redacted.len() == plain.len(), "{} vs {}", redacted.len(), plain.len());
    assert_ne!(redacted, plain, "the frames sent for a redacted clip must come from its redacted copy");

    // A redacted copy deleted from the store is made again (the de-identification's memoised result
    // refers to a blob that is gone, so it is recomputed), and captions never fall back to the source.
    let (row, _, _) = written(&store);
    let key = row["clip"]["metadata"]["redacted_blob"].as_str().unwrap().to_string();
    let blob = store.join("blobs").join(&key[..2]).join(&key);
    std::fs::remove_file(&blob).expect("the redacted blob is in the store");
    let n = server.requests().len();
    run(&g("missing", "deid", 2), &store);
    let (row, _, _) = written(&store);
    let key = row["clip"]["metadata"]["redacted_blob"].as_str().unwrap();
    assert!(store.join("blobs").join(&key[..2]).join(key).is_file(), "the redacted copy is written again");
    assert!(rows(&store, "cap_failures.jsonl").is_empty(), "{:?}", rows(&store, "cap_failures.jsonl"));
    assert_eq!(rows(&store, "captions.jsonl").len(), 1);
    let again = sent(n);
    assert!(again.is_empty() || again != plain, "frames sent after the rewrite must be redacted ones");
}
