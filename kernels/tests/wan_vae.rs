//! Wan2.1 VAE: parity with diffusers fixtures, loading (both key layouts, shape checks), input
//! checks, latent normalisation, and chunking equivalence of the causal streaming inference.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use medgen_kernels::io::TensorSource;
use medgen_kernels::io::safetensors::{SafeTensorsFile, save};
use medgen_kernels::nets::wan_vae::{WanVae, WanVaeConfig, WanVaeLayout};
use medgen_kernels::verify::{self, VerifyOptions};
use medgen_kernels::{DType, Device, Error, Result, Rng, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Tensors in memory, as a weight source.
struct Mem(BTreeMap<String, Tensor>);

impl TensorSource for Mem {
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
    fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        let t = self.0.get(name).ok_or_else(|| Error::MissingKey(name.to_string()))?;
        Ok((t.shape().to_vec(), t.dtype()))
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        self.0.get(name).cloned().ok_or_else(|| Error::MissingKey(name.to_string()))
    }
}

/// The tiny config of WAN_SPEC §7.2 (same topology as Wan2.1).
fn tiny() -> WanVaeConfig {
    WanVaeConfig {
        base_dim: 8,
        z_dim: 4,
        latents_mean: vec![-0.35, 0.72, -1.1, 0.18],
        latents_std: vec![1.9, 0.65, 2.4, 1.3],
        ..WanVaeConfig::wan_2_1()
    }
}

/// Random weights for `cfg` in `layout`: conv weights ~ N(0, 1/fan_in), biases and γ − 1 ~ 0.1·N.
fn random_weights(cfg: &WanVaeConfig, layout: WanVaeLayout, seed: u64) -> Mem {
    let mut rng = Rng::new(seed);
    let mut m = BTreeMap::new();
    for (name, shape) in cfg.param_shapes(layout).unwrap() {
        let t = if name.ends_with("gamma") {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect();
            Tensor::from_vec(v, &shape).unwrap()
        } else if shape.len() == 1 {
            Tensor::randn(&shape, 0.1, DType::F32, &mut rng)
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(&shape, 1.0 / (fan_in as f64).sqrt(), DType::F32, &mut rng)
        };
        m.insert(name, t);
    }
    Mem(m)
}

fn video(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, -1.0, 1.0, DType::F32, &mut Rng::new(seed))
}

fn tiny_vae(seed: u64, dtype: DType) -> WanVae {
    let cfg = tiny();
    let w = random_weights(&cfg, WanVaeLayout::Diffusers, seed);
    WanVae::load(cfg, &w, dtype).unwrap()
}

#[test]
fn diffusers_fixtures_pass() {
    // The §7.2 tiny config at 13 frames; a smaller config (z_dim 8, one residual block per
    // level) at 1, 5 and 9; one temporal down-sampling (factor 2) at 7 frames, of which the
    // reference encodes the first 5.
    for (t, config) in [(1, "small"), (5, "small"), (9, "small"), (13, "tiny"), (7, "half")] {
        let path = fixture(&format!("wan_vae_{config}_t{t}.safetensors"));
        let start = Instant::now();
        let report = verify::run(&path, &VerifyOptions::default()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        for c in &report.checks {
            println!(
                "T={t:2} {:16} max_abs {:.3e} max_rel {:.3e} ({} elements, limit {:?})",
                c.name, c.max_abs, c.max_rel, c.elements, c.limit
            );
        }
        println!("T={t:2} verify took {secs:.2}s");
        assert_eq!(report.checks.len(), 2);
        assert!(report.pass(), "{t}: {:?}", report.checks);
    }
}

#[test]
fn original_layout_fixture_passes() {
    // The T=13 fixture with its w.* renamed to the original Wan2.1 names (layout = original).
    let src = fixture("wan_vae_tiny_t13.safetensors");
    let file = SafeTensorsFile::open(&src).unwrap();
    let meta = file.user_metadata().unwrap().clone();
    let cfg = WanVaeConfig::from_json(&meta["config"]).unwrap();
    let d = cfg.param_shapes(WanVaeLayout::Diffusers).unwrap();
    let o = cfg.param_shapes(WanVaeLayout::Original).unwrap();
    let rename: HashMap<&str, &str> = d.iter().zip(&o).map(|(a, b)| (a.0.as_str(), b.0.as_str())).collect();
    let mut tensors = Vec::new();
    for k in file.keys() {
        let new = match k.strip_prefix("w.") {
            Some(n) => format!("w.{}", rename[n]),
            None => k.clone(),
        };
        tensors.push((new, file.load(&k).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae_original.safetensors");
    let mut meta2 = meta.clone();
    meta2.insert("layout".into(), "original".into());
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(&path, &refs, Some(meta2)).unwrap();
    let report = verify::run(&path, &VerifyOptions::default()).unwrap();
    for c in &report.checks {
        println!("original layout {:16} max_abs {:.3e}", c.name, c.max_abs);
    }
    assert!(report.pass(), "{:?}", report.checks);
    // declaring the wrong layout is refused
    let mut meta3 = meta;
    meta3.insert("layout".into(), "diffusers".into());
    save(&path, &refs, Some(meta3)).unwrap();
    let e = verify::run(&path, &VerifyOptions::default()).unwrap_err().to_string();
    assert!(e.contains("original"), "{e}");
}

#[test]
fn key_maps_follow_the_spec_table() {
    let cfg = WanVaeConfig::wan_2_1();
    let d = cfg.param_shapes(WanVaeLayout::Diffusers).unwrap();
    let o = cfg.param_shapes(WanVaeLayout::Original).unwrap();
    assert_eq!(d.len(), o.len());
    let map: HashMap<&str, &str> = d.iter().zip(&o).map(|(a, b)| (a.0.as_str(), b.0.as_str())).collect();
    for (dk, ok) in [
        ("encoder.conv_in.weight", "encoder.conv1.weight"),
        ("encoder.down_blocks.0.norm1.gamma", "encoder.downsamples.0.residual.0.gamma"),
        ("encoder.down_blocks.2.resample.1.weight", "encoder.downsamples.2.resample.1.weight"),
        ("encoder.down_blocks.3.conv_shortcut.weight", "encoder.downsamples.3.shortcut.weight"),
        ("encoder.down_blocks.5.time_conv.weight", "encoder.downsamples.5.time_conv.weight"),
        ("encoder.down_blocks.10.conv2.bias", "encoder.downsamples.10.residual.6.bias"),
        ("encoder.mid_block.resnets.1.norm2.gamma", "encoder.middle.2.residual.3.gamma"),
        ("encoder.mid_block.attentions.0.to_qkv.weight", "encoder.middle.1.to_qkv.weight"),
        ("encoder.norm_out.gamma", "encoder.head.0.gamma"),
        ("encoder.conv_out.weight", "encoder.head.2.weight"),
        ("quant_conv.weight", "conv1.weight"),
        ("post_quant_conv.bias", "conv2.bias"),
        ("decoder.conv_in.weight", "decoder.conv1.weight"),
        ("decoder.up_blocks.0.resnets.2.conv1.weight", "decoder.upsamples.2.residual.2.weight"),
        ("decoder.up_blocks.0.upsamplers.0.time_conv.weight", "decoder.upsamples.3.time_conv.weight"),
        ("decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "decoder.upsamples.4.shortcut.weight"),
        ("decoder.up_blocks.1.upsamplers.0.resample.1.bias", "decoder.upsamples.7.resample.1.bias"),
        ("decoder.up_blocks.2.upsamplers.0.resample.1.weight", "decoder.upsamples.11.resample.1.weight"),
        ("decoder.up_blocks.3.resnets.2.conv2.weight", "decoder.upsamples.14.residual.6.weight"),
        ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
    ] {
        assert_eq!(map.get(dk), Some(&ok), "{dk}");
    }
    let shape = |k: &str| d.iter().find(|(n, _)| n == k).map(|(_, s)| s.clone()).unwrap();
    assert_eq!(shape("decoder.up_blocks.0.upsamplers.0.time_conv.weight"), [768, 384, 3, 1, 1]);
    assert_eq!(shape("decoder.up_blocks.0.upsamplers.0.resample.1.weight"), [192, 384, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.1.resnets.0.conv1.weight"), [384, 192, 3, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.2.upsamplers.0.resample.1.weight"), [96, 192, 3, 3]);
    assert_eq!(shape("encoder.down_blocks.8.time_conv.weight"), [384, 384, 3, 1, 1]);
    assert_eq!(shape("encoder.mid_block.attentions.0.norm.gamma"), [384, 1, 1]);
    assert!(!map.contains_key("decoder.up_blocks.3.upsamplers.0.resample.1.weight"));
}

#[test]
fn wan21_config_and_param_count() {
    let cfg = WanVaeConfig::wan_2_1();
    assert_eq!(cfg.param_count().unwrap(), 126_892_531);
    let enc: usize = cfg
        .param_shapes(WanVaeLayout::Diffusers)
        .unwrap()
        .iter()
        .filter(|(n, _)| n.starts_with("encoder.") || n.starts_with("quant_conv."))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!((enc as f64 / 1e5).round() / 10.0, 53.6, "encoder + quant_conv {enc}");
    assert_eq!((cfg.temporal_factor(), cfg.spatial_factor()), (4, 8));
    assert_eq!(cfg.latent_frames(81), Some(21));
    assert_eq!(cfg.latent_frames(80), None);
    // Other temporal factors: the reference still takes frame 0 and then 4 frames at a time.
    let half = WanVaeConfig { temperal_downsample: vec![false, false, true], ..cfg.clone() };
    assert_eq!((half.temporal_factor(), half.latent_frames(9), half.latent_frames(3)), (2, Some(5), None));
    let none = WanVaeConfig { temperal_downsample: vec![false, false, false], ..cfg.clone() };
    assert_eq!((none.latent_frames(5), none.latent_frames(3)), (Some(5), None));
    let eighth = WanVaeConfig { temperal_downsample: vec![true, true, true], ..cfg.clone() };
    assert!(eighth.validate().unwrap_err().to_string().contains("temperal_downsample"));
    // a diffusers vae/config.json (with its bookkeeping fields) parses to the preset
    let json = r#"{"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.33.0.dev0", "attn_scales": [],
        "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
        "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                         0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
        "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                        1.5579, 1.6382, 1.1253, 2.8251, 1.916],
        "num_res_blocks": 2, "temperal_downsample": [false, true, true], "z_dim": 16}"#;
    assert_eq!(WanVaeConfig::from_json(json).unwrap(), cfg);
    assert_eq!(WanVaeConfig::from_json("{}").unwrap(), cfg);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, json).unwrap();
    assert_eq!(WanVaeConfig::from_file(&p).unwrap(), cfg);
    assert!(matches!(WanVaeConfig::from_file(dir.path().join("none.json")), Err(Error::Io { .. })));
}

#[test]
fn bad_configs_are_config_errors() {
    for (json, needle) in [
        (r#"{"temperal_downsample": [false, true]}"#, "temperal_downsample"),
        (r#"{"attn_scales": [0.5]}"#, "attn_scales"),
        (r#"{"is_residual": true}"#, "Wan2.2"),
        (r#"{"patch_size": 2}"#, "patch_size"),
        (r#"{"base_dim": 0}"#, "base_dim"),
        (r#"{"dim_mult": []}"#, "dim_mult"),
        (r#"{"num_res_blocks": 0}"#, "num_res_blocks"),
        (r#"{"latents_std": [1.0, 0.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}"#, "latents_std"),
        (r#"{"latents_mean": [0.0]}"#, "latents_mean"),
        (r#"{"z_dim": "sixteen"}"#, "z_dim"),
        (r#"[1, 2]"#, "must be an object"),
        (r#"{"base_dim": 8,"#, "config JSON"),
    ] {
        let raw: serde_json::Value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
        if raw.is_object()
            && let Ok(cfg) = serde_json::from_value::<WanVaeConfig>(raw)
        {
            assert!(cfg.param_count().is_err(), "{json}: param_count of an invalid config");
        }
        match WanVaeConfig::from_json(json) {
            Err(e @ Error::Config { .. }) => assert!(e.to_string().contains(needle), "{json}: {e}"),
            other => panic!("{json}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn latent_normalisation_round_trip() {
    let cfg = tiny();
    let mu = Tensor::randn(&[2, 4, 3, 2, 5], 2.0, DType::F32, &mut Rng::new(7));
    let z = cfg.normalize(&mu).unwrap();
    let (mv, zv) = (mu.to_vec_f64().unwrap(), z.to_vec_f64().unwrap());
    for (i, (&m, &zz)) in mv.iter().zip(&zv).enumerate() {
        let c = (i / 30) % 4;
        let want = (m - cfg.latents_mean[c]) / cfg.latents_std[c];
        assert!((zz - want).abs() <= 1e-6 * want.abs().max(1.0), "{i}: {zz} vs {want}");
    }
    let back = cfg.denormalize(&z).unwrap();
    assert!(back.max_abs_diff(&mu).unwrap() < 1e-5);
    // the loaded VAE uses its config's statistics
    let vae = tiny_vae(1, DType::F32);
    assert_eq!(vae.normalize(&mu).unwrap().max_abs_diff(&z).unwrap(), 0.0);
    assert_eq!(vae.denormalize(&z).unwrap().max_abs_diff(&back).unwrap(), 0.0);
    // statistics that do not match z_dim, and latents of the wrong width, are errors
    let wan = WanVaeConfig { z_dim: 4, ..WanVaeConfig::wan_2_1() };
    assert!(matches!(wan.normalize(&mu), Err(Error::Config { .. })));
    assert!(cfg.normalize(&Tensor::zeros(&[1, 16, 1, 2, 2], DType::F32, Device::Cpu).unwrap()).is_err());
    // Wan2.1 values
    let w = WanVaeConfig::wan_2_1();
    let one = Tensor::full(&[1, 16, 1, 1, 1], 1.0, DType::F32, Device::Cpu).unwrap();
    let n = w.normalize(&one).unwrap().to_vec_f64().unwrap();
    assert!((n[0] - (1.0 + 0.7571) / 2.8184).abs() < 1e-6 && (n[15] - (1.0 + 0.2921) / 1.9160).abs() < 1e-6);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let vae = tiny_vae(2, DType::F32);
    let msg = |r: Result<Tensor>| match r {
        Err(e @ (Error::ShapeMismatch { .. } | Error::RankMismatch { .. } | Error::InvalidArgument { .. })) => {
            e.to_string()
        }
        other => panic!("expected a shape error, got {other:?}"),
    };
    let e = msg(vae.encode_mean(&video(&[1, 3, 4, 16, 16], 1)));
    assert!(e.contains("1 + 4k") && e.contains("trim it to 1 or pad it to 5"), "{e}");
    let e = msg(vae.encode_mean(&video(&[1, 3, 5, 12, 16], 1)));
    assert!(e.contains("multiples of 8"), "{e}");
    let e = msg(vae.encode_mean(&video(&[1, 4, 5, 16, 16], 1)));
    assert!(e.contains("4 channels; expected 3"), "{e}");
    msg(vae.encode_mean(&video(&[3, 5, 16, 16], 1)));
    msg(vae.encode_mean_chunked(&video(&[1, 3, 5, 16, 16], 1), 0));
    let e = msg(vae.decode(&video(&[1, 3, 2, 2, 2], 1)));
    assert!(e.contains("z_dim = 4"), "{e}");
    msg(vae.decode(&video(&[1, 4, 0, 2, 2], 1)));
    // streams: first chunk 1 + 4k frames, then multiples of 4, same geometry
    let mut s = vae.encode_stream();
    let e = msg(s.push(&video(&[1, 3, 4, 16, 16], 1)));
    assert!(e.contains("1 + 4k"), "{e}");
    s.push(&video(&[1, 3, 1, 16, 16], 1)).unwrap();
    let e = msg(s.push(&video(&[1, 3, 3, 16, 16], 1)));
    assert!(e.contains("multiple of 4"), "{e}");
    let e = msg(s.push(&video(&[1, 3, 4, 16, 24], 1)));
    assert!(e.contains("changes"), "{e}");
    assert_eq!(s.push(&video(&[1, 3, 8, 16, 16], 1)).unwrap().shape(), [1, 4, 2, 2, 2]);
    let mut d = vae.decode_stream();
    d.push(&video(&[1, 4, 1, 2, 2], 1)).unwrap();
    msg(d.push(&video(&[2, 4, 1, 2, 2], 1)));
}

#[test]
fn weight_problems_are_reported() {
    let cfg = tiny();
    // a wrong-shaped weight names the key and both shapes
    let mut w = random_weights(&cfg, WanVaeLayout::Diffusers, 3);
    w.0.insert(
        "decoder.up_blocks.1.resnets.0.conv1.weight".into(),
        Tensor::zeros(&[32, 16, 3, 3, 1], DType::F32, Device::Cpu).unwrap(),
    );
    match WanVae::load(cfg.clone(), &w, DType::F32) {
        Err(Error::WeightShape { name, expected, got }) => {
            assert_eq!(name, "decoder.up_blocks.1.resnets.0.conv1.weight");
            assert_eq!((expected, got), (vec![32, 16, 3, 3, 3], vec![32, 16, 3, 3, 1]));
        }
        other => panic!("expected WeightShape, got {other:?}"),
    }
    // a config that does not match the checkpoint: num_res_blocks 1 leaves tensors unused
    let w = random_weights(&cfg, WanVaeLayout::Diffusers, 3);
    let small = WanVaeConfig { num_res_blocks: 1, ..cfg.clone() };
    match WanVae::load(small, &w, DType::F32) {
        Err(Error::WeightShape { .. } | Error::Config { .. } | Error::MissingKey(_)) => {}
        other => panic!("expected a mismatch error, got {other:?}"),
    }
    let mut w = random_weights(&cfg, WanVaeLayout::Diffusers, 3);
    w.0.insert("encoder.extra.weight".into(), Tensor::zeros(&[1], DType::F32, Device::Cpu).unwrap());
    assert!(matches!(WanVae::load(cfg.clone(), &w, DType::F32), Err(Error::Config { .. })));
    // missing tensors and foreign checkpoints
    let mut w = random_weights(&cfg, WanVaeLayout::Original, 3);
    w.0.remove("decoder.upsamples.4.shortcut.bias");
    assert!(
        matches!(WanVae::load(cfg.clone(), &w, DType::F32), Err(Error::MissingKey(k)) if k == "decoder.upsamples.4.shortcut.bias")
    );
    let w = Mem(BTreeMap::from([("blocks.0.attn1.to_q.weight".to_string(), Tensor::scalar(0.0, DType::F32))]));
    assert!(matches!(WanVae::load(cfg, &w, DType::F32), Err(Error::UnknownFormat(_))));
}

#[test]
fn layouts_give_identical_results() {
    let cfg = tiny();
    let d = random_weights(&cfg, WanVaeLayout::Diffusers, 4);
    let names_o: Vec<String> = cfg.param_shapes(WanVaeLayout::Original).unwrap().into_iter().map(|(n, _)| n).collect();
    let names_d: Vec<String> = cfg.param_shapes(WanVaeLayout::Diffusers).unwrap().into_iter().map(|(n, _)| n).collect();
    let o = Mem(names_d.iter().zip(&names_o).map(|(a, b)| (b.clone(), d.0[a].clone())).collect());
    let (vd, vo) = (WanVae::load(cfg.clone(), &d, DType::F32).unwrap(), WanVae::load(cfg, &o, DType::F32).unwrap());
    assert_eq!((vd.layout(), vo.layout()), (WanVaeLayout::Diffusers, WanVaeLayout::Original));
    let x = video(&[1, 3, 5, 16, 16], 9);
    let (a, b) = (vd.encode_mean(&x).unwrap(), vo.encode_mean(&x).unwrap());
    assert_eq!(a.max_abs_diff(&b).unwrap(), 0.0);
    assert_eq!(vd.decode(&a).unwrap().max_abs_diff(&vo.decode(&a).unwrap()).unwrap(), 0.0);
}

/// Chunking does not change the result: the reference's chunks (1 latent frame per step), larger
/// chunks, the whole clip at once (the full-sequence formulation) and irregular stream pushes.
#[test]
fn chunked_encode_and_decode_are_equivalent() {
    let vae = tiny_vae(5, DType::F32);
    let x = video(&[2, 3, 17, 16, 24], 11);
    let start = Instant::now();
    let reference = vae.encode_mean(&x).unwrap();
    println!("encode 2×17×16×24 (reference chunks): {:.3}s", start.elapsed().as_secs_f64());
    assert_eq!(reference.shape(), [2, 4, 5, 2, 3]);
    for chunk in [2, 3, 5, 100] {
        let d = vae.encode_mean_chunked(&x, chunk).unwrap().max_abs_diff(&reference).unwrap();
        println!("encode chunk={chunk}: max |Δ| = {d:.2e}");
        assert!(d <= 1e-5, "chunk {chunk}: {d}");
    }
    // irregular pushes: 1 + 8, then 4, then 4
    let mut s = vae.encode_stream();
    let pieces: Vec<Tensor> =
        [(0, 9), (9, 4), (13, 4)].iter().map(|&(a, n)| s.push(&x.narrow(2, a, n).unwrap()).unwrap()).collect();
    assert_eq!(s.frames_seen(), 17);
    let streamed = medgen_kernels::ops::shape::cat(&pieces.iter().collect::<Vec<_>>(), 2).unwrap();
    assert!(streamed.max_abs_diff(&reference).unwrap() <= 1e-5);
    // the batch is independent samples
    let one = vae.encode_mean(&x.narrow(0, 1, 1).unwrap()).unwrap();
    assert!(one.max_abs_diff(&reference.narrow(0, 1, 1).unwrap()).unwrap() <= 1e-5);
    // decode: the reference's one latent frame per step against larger chunks
    let z = vae.denormalize(&Tensor::randn(&[1, 4, 5, 2, 3], 1.0, DType::F32, &mut Rng::new(12))).unwrap();
    let start = Instant::now();
    let dec = vae.decode(&z).unwrap();
    println!("decode 1×5 latent frames: {:.3}s", start.elapsed().as_secs_f64());
    assert_eq!(dec.shape(), [1, 3, 17, 16, 24]);
    let dv = dec.to_vec_f64().unwrap();
    assert!(dv.iter().all(|v| v.abs() <= 1.0) && dv.iter().any(|v| v.abs() < 0.99), "clamped, not saturated");
    for chunk in [2, 4, 5] {
        let d = vae.decode_chunked(&z, chunk).unwrap().max_abs_diff(&dec).unwrap();
        println!("decode chunk={chunk}: max |Δ| = {d:.2e}");
        assert!(d <= 1e-5, "chunk {chunk}: {d}");
    }
}

/// In f64 the streaming form equals the all-at-once form to rounding, and causality holds: the
/// first latent frames do not depend on later video frames.
#[test]
fn chunking_is_exact_in_f64_and_causal() {
    let vae = tiny_vae(6, DType::F64);
    let x = video(&[1, 3, 13, 16, 16], 13).to_dtype(DType::F64).unwrap();
    let a = vae.encode_mean(&x).unwrap();
    let b = vae.encode_mean_chunked(&x, 4).unwrap();
    assert_eq!(a.dtype(), DType::F64);
    let d = a.max_abs_diff(&b).unwrap();
    assert!(d <= 1e-12, "{d}");
    let first = vae.encode_mean(&x.narrow(2, 0, 5).unwrap()).unwrap();
    assert!(first.max_abs_diff(&a.narrow(2, 0, 2).unwrap()).unwrap() <= 1e-12);
    let z = a.clone();
    let d = vae.decode(&z).unwrap().max_abs_diff(&vae.decode_chunked(&z, 4).unwrap()).unwrap();
    assert!(d <= 1e-12, "{d}");
}

/// The streams' caches do not grow with the clip: after 1 chunk and after many, the same size.
#[test]
fn stream_memory_is_bounded() {
    let vae = tiny_vae(7, DType::F32);
    let mut s = vae.encode_stream();
    s.push(&video(&[1, 3, 1, 16, 16], 1)).unwrap();
    s.push(&video(&[1, 3, 4, 16, 16], 2)).unwrap();
    let after_two = s.cache_elements();
    for i in 0..6 {
        s.push(&video(&[1, 3, 4, 16, 16], 3 + i)).unwrap();
    }
    assert_eq!(s.cache_elements(), after_two);
    // at most two frames per causal layer: well under one 4-frame chunk's activations
    assert!(after_two > 0 && after_two < 40 * 3 * 16 * 16 * 8, "{after_two}");
    // the decoder's up-samplers fill their 2-frame caches over the first three latent frames
    let mut d = vae.decode_stream();
    for _ in 0..3 {
        d.push(&Tensor::zeros(&[1, 4, 1, 2, 2], DType::F32, Device::Cpu).unwrap()).unwrap();
    }
    let n = d.cache_elements();
    for _ in 0..4 {
        let out = d.push(&Tensor::zeros(&[1, 4, 1, 2, 2], DType::F32, Device::Cpu).unwrap()).unwrap();
        assert_eq!(out.shape(), [1, 3, 4, 16, 16]);
    }
    assert_eq!(d.cache_elements(), n);
    assert_eq!(d.latents_seen(), 7);
}
