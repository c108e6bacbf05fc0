//! `eval.vbench` against VBench 0.1.5 itself.
//!
//! `scripts/make-vbench-parity-fixture.py` ran VBench's own scoring functions on three synthetic clips
//! with tiny random-init stand-ins for its backbones (exported to ONNX next to the fixture) and with
//! RIFE HDv3 plugged into its motion-smoothness code, and stored the frames, VBench's per-video scores
//! and the per-frame features its DINO / CLIP calls returned. Here the same frames go through our
//! evaluator with the same ONNX files (and the embedded RIFE): every score must equal VBench's within
//! 1e-3 — in practice the gap is float rounding — and every feature vector within 1e-3 relative.
//! Needs ONNX Runtime (`scripts/setup.sh`) and the RIFE weights (`scripts/fetch-models.sh`).

use medgen_kernels::io::safetensors::SafeTensorsFile;
use medgen_operators::eval::vbench::{BackboneConfig, Clip, Dimension, Evaluator};
use std::path::{Path, PathBuf};

const TOL: f64 = 1e-3;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vbench")
}

fn fixture() -> SafeTensorsFile {
    SafeTensorsFile::open(fixture_dir().join("vbench_reference.safetensors")).expect("the VBench parity fixture")
}

fn clip_names(fx: &SafeTensorsFile) -> Vec<String> {
    let meta = fx.user_metadata().expect("fixture metadata");
    meta["clips"].split(',').map(String::from).collect()
}

fn load_clip(fx: &SafeTensorsFile, name: &str) -> Clip {
    let (px, shape) = fx.load_ints(&format!("{name}.frames")).expect("frames");
    let [t, h, w, c] = shape[..] else { panic!("{name}.frames has shape {shape:?}") };
    assert_eq!(c, 3);
    let bytes: Vec<u8> = px.iter().map(|v| u8::try_from(*v).expect("uint8 frames")).collect();
    let frames: Vec<Vec<u8>> = bytes.chunks_exact(h * w * 3).map(<[u8]>::to_vec).collect();
    assert_eq!(frames.len(), t);
    Clip { width: w as u32, height: h as u32, frames }
}

fn scalar(fx: &SafeTensorsFile, key: &str) -> Option<f64> {
    if !fx.keys().iter().any(|k| k == key) {
        return None;
    }
    Some(fx.load(key).unwrap().to_vec::<f64>().unwrap()[0])
}

fn onnx_backbones() -> BackboneConfig {
    let d = fixture_dir();
    BackboneConfig {
        subject_onnx: Some(d.join("dino_tiny.onnx")),
        background_onnx: Some(d.join("clip_tiny.onnx")),
        interpolator_onnx: Some(d.join("amt_tiny.onnx")),
        imaging_onnx: Some(d.join("musiq_tiny.onnx")),
        threads: 1,
    }
}

#[test]
fn scores_equal_vbench_with_onnx_backbones() {
    let fx = fixture();
    let ev = Evaluator::load(&onnx_backbones(), &Dimension::ALL).expect("load the ONNX stand-ins");
    let mut checked = 0;
    for name in clip_names(&fx) {
        let clip = load_clip(&fx, &name);
        let scores = ev.score(&clip, &Dimension::ALL).expect("score");
        for s in &scores {
            assert!(
                s.vbench_backbone && s.backbone.starts_with("onnx:"),
                "{name}: {} backbone {}",
                s.dimension.key(),
                s.backbone
            );
            let want = scalar(&fx, &format!("{name}.{}", s.dimension.key())).expect("reference score");
            let diff = (s.value - want).abs();
            println!("{name} {}: ours {:.6} vbench {want:.6} |diff| {diff:.2e}", s.dimension.key(), s.value);
            assert!(diff <= TOL, "{name} {}: ours {} vs VBench {want}", s.dimension.key(), s.value);
            checked += 1;
        }
    }
    assert_eq!(checked, 12, "three clips, four dimensions");
}

#[test]
fn frame_features_equal_what_vbench_fed_its_score() {
    let fx = fixture();
    let dims = [Dimension::SubjectConsistency, Dimension::BackgroundConsistency];
    let ev = Evaluator::load(&onnx_backbones(), &dims).expect("load the ONNX stand-ins");
    for name in clip_names(&fx) {
        let clip = load_clip(&fx, &name);
        for (d, key) in dims.into_iter().zip(["dino_features", "clip_features"]) {
            let got = ev.frame_features(&clip, d).expect("features");
            let want = fx.load(&format!("{name}.{key}")).unwrap();
            let dim = want.shape()[1];
            let want = want.to_vec_f32().unwrap();
            assert_eq!(got.len() * dim, want.len(), "{name} {key}: one feature vector per frame");
            for (i, (g, w)) in got.iter().zip(want.chunks_exact(dim)).enumerate() {
                let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
                let err = g.iter().zip(w).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt() / norm;
                assert!(err <= 1e-3, "{name} {key} frame {i}: relative error {err:.2e}");
            }
        }
    }
}

#[test]
fn motion_smoothness_with_embedded_rife_equals_vbench_with_rife() {
    if medgen_kernels::nets::rife::fetched_rife_weights().is_none() {
        panic!("RIFE weights missing: {}", medgen_kernels::nets::rife::RIFE_FETCH_HINT);
    }
    let fx = fixture();
    let ev = Evaluator::load(&BackboneConfig { threads: 1, ..Default::default() }, &[Dimension::MotionSmoothness])
        .expect("load RIFE");
    let mut checked = 0;
    for name in clip_names(&fx) {
        let Some(want) = scalar(&fx, &format!("{name}.motion_smoothness_rife")) else { continue };
        let clip = load_clip(&fx, &name);
        let s = &ev.score(&clip, &[Dimension::MotionSmoothness]).expect("score")[0];
        assert!(!s.vbench_backbone && s.backbone.starts_with("embedded:"), "backbone {}", s.backbone);
        let diff = (s.value - want).abs();
        println!("{name} motion_smoothness@rife: ours {:.6} vbench {want:.6} |diff| {diff:.2e}", s.value);
        assert!(diff <= TOL, "{name}: ours {} vs VBench+RIFE {want}", s.value);
        checked += 1;
    }
    assert!(checked >= 2, "the fixture scores at least two clips with RIFE");
}
