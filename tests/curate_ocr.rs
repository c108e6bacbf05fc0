//! `curate.subtitle_ocr` on real and generated videos: burned-in text in the echocardiogram DICOM
//! and in a synthetic video with subtitles, none in a clean test pattern; and through the `medgen`
//! binary, a changed `max_words` recomputes nothing (every measurement is a memo hit).
//!
//! Needs ONNX Runtime (`scripts/setup.sh`), the detector (`scripts/fetch-models.sh`) and the
//! samples (`scripts/fetch-samples.sh`).
#![cfg(feature = "video")]

#[path = "support/quality.rs"]
mod quality;

use medgen_operators::api::{Clip, F64, ItemCtx};
use medgen_operators::curate::ocr::{self, OcrParams};
use medgen_operators::video::DecodeSpec;
use medgen_operators::video::decode::Decoder;
use medgen_operators::video::synth::{self, SynthSpec, TestPattern, TestSrc};
use quality::{medgen_check, medgen_check_env, medgen_run, node_stat, repo, require_models};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn params() -> OcrParams {
    serde_json::from_value(serde_json::json!({})).unwrap()
}

fn item_ctx() -> ItemCtx {
    ItemCtx {
        attempt: 1,
        deadline: Instant::now() + Duration::from_secs(120),
        shutdown: Arc::new(AtomicBool::new(false)),
    }
}

/// The whole file as one clip (size and duration from the decoder).
fn whole_clip(path: &Path) -> Clip {
    let dec = Decoder::open(path, &DecodeSpec::all()).expect("open");
    let info = dec.info().clone();
    let fps = info.fps_f64().unwrap_or(30.0);
    Clip {
        clip_id: "whole".into(),
        source_id: "src".into(),
        uri: path.display().to_string(),
        start_s: F64(0.0),
        end_s: F64(info.duration_s.expect("duration")),
        fps: F64(fps),
        width: info.width,
        height: info.height,
        blob: None,
        metadata: Default::default(),
    }
}

fn measure(path: &Path) -> (f64, f64, f64, String) {
    let model = require_models().join(ocr::DEFAULT_MODEL);
    let started = Instant::now();
    let m = ocr::measure_clip(&whole_clip(path), &model, &params(), &item_ctx()).expect("measure");
    eprintln!("{}: measured in {:?}", path.display(), started.elapsed());
    (
        m.scores["ocr_words"].0,
        m.scores["ocr_words_mean"].0,
        m.scores["ocr_box_coverage"].0,
        m.labels["ocr_boxes"].clone(),
    )
}

#[test]
fn echo_dicom_has_burned_in_text() {
    let dcm = repo().join(".cache/samples/echo_color3d_jpeg.dcm");
    assert!(dcm.is_file(), "run scripts/fetch-samples.sh ({} is missing)", dcm.display());
    let (words, mean, coverage, boxes) = measure(&dcm);
    eprintln!("echo DICOM: ocr_words {words}, mean {mean:.1}, coverage {coverage:.4}\nboxes {boxes}");
    assert!(words > 0.0, "burned-in text must be found: {boxes}");
    assert!(coverage > 0.0 && coverage < 0.5);
}

#[test]
fn subtitles_are_found_and_a_clean_pattern_has_none() {
    let dir = tempfile::tempdir().unwrap();
    // 3 s of moving gradient with a subtitle of 9 words over all of it.
    let text = "Doctor points at the left ventricle during the scan";
    let sub = dir.path().join("sub.mp4");
    let mut spec = SynthSpec::simple(640, 360, 30, 90);
    spec.subtitles = vec![(0, 90, text.into())];
    synth::generate(&sub, &spec).expect("synth");
    let (words, mean, coverage, boxes) = measure(&sub);
    eprintln!("subtitled: ocr_words {words}, mean {mean:.1}, coverage {coverage:.4} (truth: 9 words)\nboxes {boxes}");
    assert!(words > 0.0, "{boxes}");
    assert!((4.0..=14.0).contains(&words), "9 words burned in, counted {words}: {boxes}");

    // The same video without the subtitle.
    let clean_synth = dir.path().join("clean_synth.mp4");
    synth::generate(&clean_synth, &SynthSpec::simple(640, 360, 30, 90)).expect("synth");
    let (words, _, _, boxes) = measure(&clean_synth);
    eprintln!("clean synthetic: ocr_words {words} {boxes}");
    assert_eq!(words, 0.0, "{boxes}");

    // videotestsrc SMPTE bars: no text (the bars themselves must not count).
    let bars = dir.path().join("bars.mp4");
    let t = TestSrc {
        width: 640,
        height: 480,
        fps: 30,
        frames: 90,
        keyint: 30,
        preset: "ultrafast".into(),
        pattern: TestPattern::MovingBars,
    };
    synth::testsrc_video(&bars, &t).expect("testsrc");
    let (words, _, _, boxes) = measure(&bars);
    eprintln!("smpte bars: ocr_words {words} {boxes}");
    assert_eq!(words, 0.0, "{boxes}");
}

fn graph(dir: &Path, video: &Path, max_words: f64) -> PathBuf {
    let g = dir.join(format!("ocr_{max_words}.toml"));
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "ocr"

[nodes.raw]
op = "source.files"
paths = ["{video}"]

[nodes.clips]
op = "curate.segment"
inputs = ["raw"]
min_seconds = 1.0
max_seconds = 10.0
min_height = 100
cut_detection = false
tau = 0.0

[nodes.ocr]
op = "curate.subtitle_ocr"
inputs = ["clips"]
max_words = {max_words:.1}

[nodes.kept]
op = "sink.jsonl"
inputs = ["ocr"]
path = "kept.jsonl"

[nodes.dropped]
op = "sink.jsonl"
inputs = ["ocr.rejected"]
path = "dropped.jsonl"
"#,
            video = video.display()
        ),
    )
    .unwrap();
    g
}

#[test]
fn changing_max_words_recomputes_nothing() {
    let _ = require_models();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("sub.mp4");
    let mut spec = SynthSpec::simple(320, 240, 30, 60);
    spec.subtitles = vec![(0, 60, "one two three four five six".into())];
    synth::generate(&video, &spec).expect("synth");
    let store = dir.path().join("store");

    let first = medgen_run(&graph(dir.path(), &video, 20.0), &store);
    assert_eq!(node_stat(&first, "ocr", "memo_misses"), 1, "{first}");
    let kept = std::fs::read_to_string(store.join("outputs/kept.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), 1, "a 6-word subtitle is under 20 words");
    let row: serde_json::Value = serde_json::from_str(kept.lines().next().unwrap()).unwrap();
    let words = row["scores"]["ocr_words"].as_f64().unwrap();
    assert!(words >= 1.0, "{row}");

    // A threshold under the count: the clip is now dropped, from the memo alone.
    let second = medgen_run(&graph(dir.path(), &video, words - 1.0), &store);
    assert_eq!(node_stat(&second, "ocr", "memo_misses"), 0, "{second}");
    assert_eq!(node_stat(&second, "ocr", "memo_hits"), 1, "{second}");
    let dropped = std::fs::read_to_string(store.join("outputs/dropped.jsonl")).unwrap();
    assert_eq!(dropped.lines().count(), 1);
    assert!(dropped.contains("burned-in text"), "{dropped}");
}

#[test]
fn check_fails_early_without_the_detector_or_the_runtime() {
    let _ = require_models();
    let dir = tempfile::tempdir().unwrap();
    let g = graph(dir.path(), &dir.path().join("none.mp4"), 20.0);
    let (code, text) = medgen_check(&g);
    assert_eq!(code, 0, "{text}");
    // No fetched models: the message says how to get them.
    let empty = dir.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, text) = medgen_check_env(&g, &[("MEDGEN_MODELS_DIR", empty.to_str().unwrap())]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("ppocrv6_tiny_det.onnx") && text.contains("scripts/fetch-models.sh"), "{text}");
    // No ONNX Runtime: the message names the fix.
    let (code, text) = medgen_check_env(&g, &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("run scripts/setup.sh or set ORT_DYLIB_PATH"), "{text}");
}
