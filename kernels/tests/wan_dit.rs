//! The Wan2.1 DiT: reference fixtures from diffusers (both key layouts), a whole-network
//! finite-difference check of the hand-written backward pass (f64), config presets and
//! checkpoint-loading errors.

use std::collections::HashMap;
use std::path::PathBuf;

use medgen_kernels::io::safetensors::{Checkpoint, save};
use medgen_kernels::io::wan_keys::diffusers_to_original;
use medgen_kernels::nets::wan_dit::{TrainOptions, WanDit, WanDitConfig};
use medgen_kernels::verify::{VerifyOptions, run};
use medgen_kernels::{DType, Device, Error, Rng, Tensor};

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    assert!(p.exists(), "fixture {} is missing (made by scripts/fixtures; commit it with the test)", p.display());
    p
}

fn run_fixture(name: &str, dtype: DType) {
    let t0 = std::time::Instant::now();
    let report = run(fixture(name), &VerifyOptions { dtype, ..Default::default() }).unwrap();
    for c in &report.checks {
        println!(
            "{name} {dtype:?} {:<40} max abs {:.3e}  max rel {:.3e}  limit {:?}  {}",
            c.name,
            c.max_abs,
            c.max_rel,
            c.limit,
            if c.pass() { "ok" } else { "FAIL" }
        );
    }
    println!("{name} {dtype:?}: {} checks in {:.2?}", report.checks.len(), t0.elapsed());
    assert!(report.checks.iter().any(|c| c.name == "out.velocity"));
    assert!(report.checks.iter().any(|c| c.name.starts_with("g.blocks.")));
    assert!(report.pass(), "{name}: some checks failed");
}

#[test]
fn fixture_tiny_diffusers_layout() {
    run_fixture("wan_dit_tiny.safetensors", DType::F32);
}

#[test]
fn fixture_small_original_layout() {
    run_fixture("wan_dit_small_original.safetensors", DType::F32);
}

#[test]
fn fixture_tiny_bf16() {
    run_fixture("wan_dit_tiny.safetensors", DType::BF16);
}

// ------------------------------------------------------------------------------------------
// micro model helpers

/// A micro config with unequal RoPE splits (hd 16 → 8/4/4), a temporal patch, in ≠ out channels.
fn micro_config(cross_attn_norm: bool) -> WanDitConfig {
    WanDitConfig {
        patch_size: [2, 2, 1],
        num_attention_heads: 2,
        attention_head_dim: 16,
        in_channels: 3,
        out_channels: Some(5),
        text_dim: 7,
        freq_dim: 10,
        ffn_dim: 24,
        num_layers: 2,
        cross_attn_norm,
        ..WanDitConfig::default()
    }
}

/// Random weights with every norm weight/bias perturbed away from 1/0.
fn micro_model(cfg: WanDitConfig, dtype: DType, seed: u64) -> WanDit {
    let mut rng = Rng::new(seed);
    let mut m = WanDit::init(cfg, &mut rng, dtype).unwrap();
    for (name, p) in m.named_parameters_mut() {
        if name.contains("norm") {
            let base = if name.ends_with(".weight") { 1.0 } else { 0.0 };
            let v: Vec<f64> = rng.normal_vec(p.numel()).iter().map(|x| base + 0.2 * x).collect();
            *p = Tensor::from_f64_slice(&v, p.shape(), dtype).unwrap();
        }
    }
    m
}

/// Inputs `x_t [2, 3, 4, 4, 6]`, timesteps, context `[2, 5, 7]` with zero padding rows.
fn micro_inputs(dtype: DType, seed: u64) -> (Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let x = Tensor::randn(&[2, 3, 4, 4, 6], 1.0, dtype, &mut rng);
    let t = Tensor::from_f64_slice(&[999.0, 321.5], &[2], DType::F32).unwrap();
    let mut c = rng.normal_vec(2 * 5 * 7);
    for (b, len) in [(0usize, 3usize), (1, 5)] {
        for r in len..5 {
            c[(b * 5 + r) * 7..(b * 5 + r + 1) * 7].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    (x, t, Tensor::from_f64_slice(&c, &[2, 5, 7], dtype).unwrap())
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    x.iter().zip(&y).map(|(p, q)| p * q).sum()
}

fn with_element(t: &Tensor, e: usize, delta: f64) -> Tensor {
    let mut v = t.to_vec_f64().unwrap();
    v[e] += delta;
    Tensor::from_f64_slice(&v, t.shape(), t.dtype()).unwrap()
}

const FD_H: f64 = 1e-5;
const FD_TOL: f64 = 1e-7;

/// `|num − ana| / (1 + |num|)` of a central difference.
fn fd_err(num: f64, ana: f64) -> f64 {
    (num - ana).abs() / (1.0 + num.abs())
}

#[test]
fn fd_whole_network_f64() {
    let t0 = std::time::Instant::now();
    let model = micro_model(micro_config(true), DType::F64, 11);
    let (x, t, c) = micro_inputs(DType::F64, 12);
    let opts = TrainOptions { recompute_blocks: false, input_grads: true };
    let (v, tape) = model.forward_train_with(&x, &t, &c, opts).unwrap();
    assert_eq!(v.shape(), &[2, 5, 4, 4, 6]);
    let g = Tensor::randn(v.shape(), 1.0, DType::F64, &mut Rng::new(13));
    let grads = model.backward(&tape, &g).unwrap();
    let loss = |m: &WanDit, x: &Tensor, c: &Tensor| dot(&m.forward(x, &t, c).unwrap(), &g);

    // forward_train and forward agree; a recomputing tape gives the same gradients.
    assert_eq!(model.forward(&x, &t, &c).unwrap().max_abs_diff(&v).unwrap(), 0.0);
    let (_, tape_rc) =
        model.forward_train_with(&x, &t, &c, TrainOptions { recompute_blocks: true, input_grads: true }).unwrap();
    let grads_rc = model.backward(&tape_rc, &g).unwrap();
    for (name, gr) in &grads.params {
        assert_eq!(gr.max_abs_diff(&grads_rc.params[name]).unwrap(), 0.0, "{name} with block recomputation");
    }

    let names: Vec<String> = model.named_parameters().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(grads.params.len(), names.len());
    let mut rng = Rng::new(14);
    let mut worst: HashMap<&'static str, f64> = HashMap::new();
    let family = |n: &str| -> &'static str {
        if n.contains("norm") {
            "norms"
        } else if n.contains("scale_shift_table") {
            "modulation tables"
        } else if n.starts_with("blocks") && n.contains("attn1") {
            "self-attention"
        } else if n.starts_with("blocks") && n.contains("attn2") {
            "cross-attention"
        } else if n.contains("ffn") {
            "ffn"
        } else if n.starts_with("condition_embedder.time") {
            "time embedder/proj"
        } else if n.starts_with("condition_embedder.text") {
            "text embedder"
        } else {
            "patch embedding / head"
        }
    };
    let mut checked = 0;
    for name in &names {
        let p = model.parameter(name).unwrap().clone();
        let ana = grads.params[name].to_vec_f64().unwrap();
        assert_eq!(grads.params[name].shape(), p.shape(), "{name}");
        for _ in 0..3 {
            let e = (rng.uniform() * p.numel() as f64) as usize % p.numel();
            let mut mp = model.clone();
            mp.set_parameter(name, &with_element(&p, e, FD_H)).unwrap();
            let lp = loss(&mp, &x, &c);
            mp.set_parameter(name, &with_element(&p, e, -FD_H)).unwrap();
            let lm = loss(&mp, &x, &c);
            let num = (lp - lm) / (2.0 * FD_H);
            let err = fd_err(num, ana[e]);
            assert!(err < FD_TOL, "{name}[{e}]: numeric {num:.9e} vs analytic {:.9e}", ana[e]);
            let w = worst.entry(family(name)).or_default();
            *w = w.max(err);
            checked += 1;
        }
    }
    for (what, input, ana) in
        [("x_t", &x, grads.x_t.as_ref().unwrap()), ("context", &c, grads.context.as_ref().unwrap())]
    {
        assert_eq!(ana.shape(), input.shape());
        let ana = ana.to_vec_f64().unwrap();
        for _ in 0..8 {
            let e = (rng.uniform() * input.numel() as f64) as usize % input.numel();
            let (lp, lm) = if what == "x_t" {
                (loss(&model, &with_element(input, e, FD_H), &c), loss(&model, &with_element(input, e, -FD_H), &c))
            } else {
                (loss(&model, &x, &with_element(input, e, FD_H)), loss(&model, &x, &with_element(input, e, -FD_H)))
            };
            let num = (lp - lm) / (2.0 * FD_H);
            let err = fd_err(num, ana[e]);
            assert!(err < FD_TOL, "d{what}[{e}]: numeric {num:.9e} vs analytic {:.9e}", ana[e]);
            let key = if what == "x_t" { "d_x_t" } else { "d_context" };
            let w = worst.entry(key).or_default();
            *w = w.max(err);
        }
    }
    let mut fams: Vec<_> = worst.into_iter().collect();
    fams.sort_by(|a, b| a.0.cmp(b.0));
    for (f, e) in fams {
        println!("FD wan_dit {f:<24} max err {e:.2e}");
    }
    println!("FD wan_dit: {checked} parameter elements + 16 input elements in {:.2?}", t0.elapsed());
}

#[test]
fn fd_without_cross_attn_norm() {
    // cross_attn_norm = false: no norm2 parameters, the cross-attention sees the raw stream.
    let model = micro_model(micro_config(false), DType::F64, 21);
    assert!(model.parameter("blocks.0.norm2.weight").is_none());
    let (x, t, c) = micro_inputs(DType::F64, 22);
    let (v, tape) = model.forward_train(&x, &t, &c).unwrap();
    let g = Tensor::randn(v.shape(), 1.0, DType::F64, &mut Rng::new(23));
    let grads = model.backward(&tape, &g).unwrap();
    assert!(grads.x_t.is_none() && grads.context.is_none());
    for name in ["blocks.1.attn2.to_q.weight", "blocks.0.attn2.norm_q.weight", "blocks.0.attn1.to_k.bias"] {
        let p = model.parameter(name).unwrap().clone();
        let ana = grads.params[name].to_vec_f64().unwrap();
        for e in [0, p.numel() / 2, p.numel() - 1] {
            let mut mp = model.clone();
            mp.set_parameter(name, &with_element(&p, e, FD_H)).unwrap();
            let lp = dot(&mp.forward(&x, &t, &c).unwrap(), &g);
            mp.set_parameter(name, &with_element(&p, e, -FD_H)).unwrap();
            let lm = dot(&mp.forward(&x, &t, &c).unwrap(), &g);
            let num = (lp - lm) / (2.0 * FD_H);
            assert!(fd_err(num, ana[e]) < FD_TOL, "{name}[{e}]: numeric {num} vs analytic {}", ana[e]);
        }
    }
}

#[test]
fn presets_have_the_published_parameter_counts() {
    assert_eq!(WanDitConfig::wan_1_3b().param_count(), 1_418_996_800);
    assert_eq!(WanDitConfig::wan_14b().param_count(), 14_288_491_584);
    let mut rng = Rng::new(1);
    let m = WanDit::init(micro_config(true), &mut rng, DType::F32).unwrap();
    let n: usize = m.named_parameters().iter().map(|(_, t)| t.numel()).sum();
    assert_eq!(n, micro_config(true).param_count());
}

// ------------------------------------------------------------------------------------------
// loading

fn save_model(m: &WanDit, path: &std::path::Path, rename: impl Fn(&str) -> String, skip: Option<&str>) {
    let named: Vec<(String, Tensor)> = m
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| Some(*n) != skip)
        .map(|(n, t)| (rename(n), t.clone()))
        .collect();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(path, &refs, None).unwrap();
}

#[test]
fn loads_both_layouts_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro_config(true);
    let m = micro_model(cfg.clone(), DType::F32, 31);
    let (x, t, c) = micro_inputs(DType::F32, 32);
    let want = m.forward(&x, &t, &c).unwrap();

    // round trip in diffusers and original naming
    let pd = dir.path().join("diffusers.safetensors");
    save_model(&m, &pd, |n| n.to_string(), None);
    let md = WanDit::load(cfg.clone(), &Checkpoint::open(&pd).unwrap(), DType::F32).unwrap();
    assert_eq!(md.forward(&x, &t, &c).unwrap().max_abs_diff(&want).unwrap(), 0.0);
    let po = dir.path().join("original.safetensors");
    save_model(&m, &po, |n| diffusers_to_original(n).unwrap(), None);
    let mo = WanDit::load(cfg.clone(), &Checkpoint::open(&po).unwrap(), DType::F32).unwrap();
    assert_eq!(mo.forward(&x, &t, &c).unwrap().max_abs_diff(&want).unwrap(), 0.0);

    // bf16 load runs and stays close to f32
    let mb = WanDit::load(cfg.clone(), &Checkpoint::open(&pd).unwrap(), DType::BF16).unwrap();
    assert_eq!(mb.parameter("blocks.0.attn1.to_q.weight").unwrap().dtype(), DType::BF16);
    assert_eq!(mb.parameter("blocks.0.scale_shift_table").unwrap().dtype(), DType::F32);
    let vb = mb.forward(&x, &t, &c).unwrap();
    let scale = want.to_vec_f64().unwrap().iter().fold(0f64, |a, v| a.max(v.abs()));
    let rel = vb.max_abs_diff(&want).unwrap() / scale;
    println!("bf16 vs f32 forward: max rel {rel:.2e}");
    assert!(rel < 5e-2, "bf16 forward deviates by {rel}");

    // one wrong shape
    let pw = dir.path().join("wrong.safetensors");
    let key = "blocks.1.ffn.net.0.proj.weight";
    let wrong = Tensor::zeros(&[25, 32], DType::F32, Device::Cpu).unwrap();
    let named: Vec<(String, Tensor)> = m
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n.to_string(), if n == key { wrong.clone() } else { t.clone() }))
        .collect();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(&pw, &refs, None).unwrap();
    match WanDit::load(cfg.clone(), &Checkpoint::open(&pw).unwrap(), DType::F32) {
        Err(Error::WeightShape { name, expected, got }) => {
            assert_eq!(name, key);
            assert_eq!((expected, got), (vec![24, 32], vec![25, 32]));
        }
        other => panic!("expected WeightShape, got {other:?}"),
    }

    // a missing key, named as the file spells it
    let pm = dir.path().join("missing.safetensors");
    save_model(&m, &pm, |n| diffusers_to_original(n).unwrap(), Some("blocks.0.norm2.bias"));
    match WanDit::load(cfg.clone(), &Checkpoint::open(&pm).unwrap(), DType::F32) {
        Err(e @ Error::MissingKey(_)) => assert!(e.to_string().contains("blocks.0.norm3.bias"), "{e}"),
        other => panic!("expected MissingKey, got {other:?}"),
    }

    // a checkpoint with more blocks than the config
    let fewer = WanDitConfig { num_layers: 1, ..cfg.clone() };
    let e = WanDit::load(fewer, &Checkpoint::open(&pd).unwrap(), DType::F32).unwrap_err();
    assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("blocks.1."), "{e}");

    // a config that disagrees with the file
    let wider = WanDitConfig { ffn_dim: 48, ..cfg };
    let e = WanDit::load(wider, &Checkpoint::open(&pd).unwrap(), DType::F32).unwrap_err();
    assert!(matches!(e, Error::WeightShape { .. }), "{e}");
}

#[test]
fn bad_inputs_are_errors() {
    let m = micro_model(micro_config(true), DType::F32, 41);
    let (x, t, c) = micro_inputs(DType::F32, 42);
    let mut rng = Rng::new(43);
    let bad_x = Tensor::randn(&[2, 4, 4, 4, 6], 1.0, DType::F32, &mut rng);
    assert!(m.forward(&bad_x, &t, &c).unwrap_err().to_string().contains("in_channels"));
    let odd = Tensor::randn(&[2, 3, 3, 4, 6], 1.0, DType::F32, &mut rng);
    assert!(m.forward(&odd, &t, &c).unwrap_err().to_string().contains("patch_size"));
    let t1 = Tensor::from_f64_slice(&[1.0], &[1], DType::F32).unwrap();
    assert!(m.forward(&x, &t1, &c).unwrap_err().to_string().contains("timestep"));
    let c_bad = Tensor::randn(&[2, 5, 8], 1.0, DType::F32, &mut rng);
    assert!(m.forward(&x, &t, &c_bad).unwrap_err().to_string().contains("text_dim"));
    let (v, tape) = m.forward_train(&x, &t, &c).unwrap();
    let wrong = Tensor::zeros(&[2, 5, 4, 4, 5], DType::F32, Device::Cpu).unwrap();
    assert!(m.backward(&tape, &wrong).is_err());
    assert_eq!(v.shape(), &[2, 5, 4, 4, 6]);
}
