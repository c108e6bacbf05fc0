//! Sampling from a diffusers Wan2.1 pipeline folder (`model_index.json`, `transformer/`, `vae/`,
//! `text_encoder/`, `tokenizer/`) through `load_dir` / `load_pipeline`, end to end on the CPU.
//!
//! The folder is built from tiny parts: a randomly initialised DiT, the VAE and umT5 of the
//! committed kernel fixtures (`wan_vae_small_t1`, `umt5_tiny`; their `w.*` tensors are diffusers /
//! transformers weights and their `config` the constructor kwargs, i.e. the `config.json` content)
//! and a toy T5-style `tokenizer.json`. The text encoder is written sharded, as the published
//! pipelines ship it.

#![cfg(feature = "video")]

use medgen_kernels::io::safetensors::save;
use medgen_kernels::nets::wan_dit::{WanDit, WanDitConfig};
use medgen_kernels::sched::SchedulerKind;
use medgen_kernels::verify::Fixture;
use medgen_kernels::{DType, Rng, Tensor};
use medgen_operators::sample::{
    LoraExpert, LoraUse, SampleSettings, SamplerKind, SchedulerSource, generate, resolve_scheduler,
};
use medgen_operators::train::checkpoint::{LoadedModel, load_dir, load_pipeline};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

fn kernel_fixture(name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/tests/fixtures").join(name);
    Fixture::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write_json(path: &Path, v: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// A fixture's `config` kwargs with the bookkeeping keys a hub `config.json` carries besides.
fn config_json(fx: &Fixture, extra: Value) -> Value {
    let mut cfg = fx.config.clone();
    let o = cfg.as_object_mut().expect("fixture config is an object");
    for (k, v) in extra.as_object().unwrap() {
        o.insert(k.clone(), v.clone());
    }
    cfg
}

/// The fixture's `w.*` tensors under their model names.
fn fixture_weights(fx: &Fixture) -> Vec<(String, Tensor)> {
    fx.keys_with_prefix("w.")
        .into_iter()
        .map(|k| (k.strip_prefix("w.").unwrap().to_string(), fx.tensor(&k).unwrap()))
        .collect()
}

fn save_all(path: &Path, tensors: &[(String, Tensor)]) {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(path, &refs, None).unwrap();
}

/// Writes `tensors` as `{stem}-0000i-of-00002.safetensors` + `{stem}.safetensors.index.json`.
fn save_sharded(dir: &Path, stem: &str, tensors: &[(String, Tensor)]) {
    let half = tensors.len() / 2;
    let mut weight_map = BTreeMap::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let file = format!("{stem}-{:05}-of-00002.safetensors", i + 1);
        save_all(&dir.join(&file), part);
        for (name, _) in part {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    write_json(&dir.join(format!("{stem}.safetensors.index.json")), &json!({"metadata": {}, "weight_map": weight_map}));
}

fn model_index() -> Value {
    json!({
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.33.0",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [null, null],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "boundary_ratio": null,
        "expand_timesteps": false
    })
}

/// A tiny DiT for the fixtures: `text_dim` (the umT5 is 32 wide) and 8 latent channels (the VAE's z_dim).
fn tiny_dit(text_dim: usize) -> WanDit {
    let cfg = WanDitConfig {
        patch_size: [1, 2, 2],
        num_attention_heads: 2,
        attention_head_dim: 8,
        in_channels: 8,
        out_channels: Some(8),
        text_dim,
        freq_dim: 16,
        ffn_dim: 32,
        num_layers: 1,
        ..WanDitConfig::default()
    };
    WanDit::init(cfg, &mut Rng::new(0), DType::F32).unwrap()
}

/// Writes a tiny Wan2.1 T2V pipeline folder into `dir`; returns the DiT it holds.
fn write_pipeline(dir: &Path, text_dim: usize) -> WanDit {
    write_json(&dir.join("model_index.json"), &model_index());

    let dit = tiny_dit(text_dim);
    let mut cfg = serde_json::to_value(dit.config()).unwrap();
    cfg.as_object_mut().unwrap().insert("_class_name".into(), "WanTransformer3DModel".into());
    write_json(&dir.join("transformer/config.json"), &cfg);
    save(dir.join("transformer/diffusion_pytorch_model.safetensors"), &dit.named_parameters(), None).unwrap();

    let vae = kernel_fixture("wan_vae_small_t1.safetensors");
    write_json(&dir.join("vae/config.json"), &config_json(&vae, json!({"_class_name": "AutoencoderKLWan"})));
    save_all(&dir.join("vae/diffusion_pytorch_model.safetensors"), &fixture_weights(&vae));

    let umt5 = kernel_fixture("umt5_tiny.safetensors");
    let extra = json!({"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "torch_dtype": "float32"});
    write_json(&dir.join("text_encoder/config.json"), &config_json(&umt5, extra));
    save_sharded(&dir.join("text_encoder"), "model", &fixture_weights(&umt5));

    write_json(&dir.join("tokenizer/tokenizer_config.json"), &json!({"tokenizer_class": "T5Tokenizer"}));
    // A T5-style unigram tokenizer with a 50-token vocabulary (the tiny umT5 has 100 ids).
    let toy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/tests/fixtures/toy_t5_tokenizer.json");
    std::fs::copy(toy, dir.join("tokenizer/tokenizer.json")).unwrap();
    dit
}

fn settings(seed: u64) -> SampleSettings {
    SampleSettings {
        sampler: Some(SamplerKind::Euler),
        steps: 2,
        guidance: 2.0,
        guidance_2: None,
        shift: Some(3.0),
        seed,
        negative_prompt: "a view".into(),
        frames: Some(5),
        width: Some(32),
        height: Some(32),
    }
}

fn sample(m: &LoadedModel, seed: u64) -> (Vec<usize>, Vec<f32>) {
    let mut calls = 0;
    let v = generate(m, "an echo cardiogram of the left ventricle", &settings(seed), &mut |_, _| {
        calls += 1;
        true
    })
    .unwrap_or_else(|e| panic!("sampling failed: {e}"));
    assert_eq!(calls, 2, "one progress call per Euler step");
    (v.shape().to_vec(), v.to_vec_f32().unwrap())
}

#[test]
fn pipeline_folder_samples_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dit = write_pipeline(tmp.path(), 32);
    let m = load_dir(tmp.path(), DType::F32).unwrap_or_else(|e| panic!("loading the pipeline folder: {e}"));

    // the files' weights, not fresh ones
    let saved: BTreeMap<&str, &Tensor> = dit.named_parameters().into_iter().collect();
    for (name, t) in m.dit.named_parameters() {
        assert_eq!(t.to_vec_f32().unwrap(), saved[name].to_vec_f32().unwrap(), "{name}");
    }
    // the synthesised description
    assert_eq!(m.meta.format, "medgen-checkpoint");
    assert_eq!((m.meta.epoch, m.meta.step, m.meta.clips, m.meta.ema, m.meta.lora_rank), (0, 0, 0, false, None));
    assert_eq!((m.meta.video.width, m.meta.video.height, m.meta.video.frames, m.meta.video.fps), (832, 480, 81, 16.0));
    assert_eq!(m.meta.text_encoder.id, "umt5-32x512");
    assert_eq!(m.meta.text_encoder.tokens, 512);
    assert_eq!(m.meta.text_encoder.model_dir.as_deref(), Some(tmp.path().join("text_encoder").to_str().unwrap()));
    assert_eq!(m.meta.codec.kind, "wan_vae");
    assert_eq!(m.meta.codec.id, m.codec.id());
    assert_eq!(m.meta.codec.path.as_deref(), Some(tmp.path().join("vae").to_str().unwrap()));
    assert_eq!((m.text.dim(), m.codec.latent_channels()), (32, 8));

    let (shape, a) = sample(&m, 7);
    assert_eq!(shape, [3, 5, 32, 32]);
    assert!(a.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)), "values outside [-1, 1]");
    assert!(a.iter().any(|&x| x != a[0]), "a constant video");
    let (_, b) = sample(&m, 7);
    assert_eq!(a, b, "the same seed must give the same video");
    let (_, c) = sample(&m, 8);
    assert_ne!(a, c, "another seed must give another video");

    // bf16: weights read straight into bf16 (diffusers' fp32-kept modules stay f32), a close video
    let h = load_dir(tmp.path(), DType::BF16).unwrap_or_else(|e| panic!("loading in bf16: {e}"));
    assert_eq!(h.dit.dtype(), DType::BF16);
    for (name, t) in h.dit.named_parameters() {
        // diffusers' _keep_in_fp32_modules of WanTransformer3DModel
        let kept =
            name.split('.').any(|c| matches!(c, "time_embedder" | "scale_shift_table" | "norm1" | "norm2" | "norm3"));
        assert_eq!(t.dtype(), if kept { DType::F32 } else { DType::BF16 }, "{name}");
    }
    let (_, d) = sample(&h, 7);
    let worst = a.iter().zip(&d).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst > 0.0 && worst < 0.1, "bf16 video differs from f32 by {worst}");
}

/// The pipeline's `scheduler/scheduler_config.json` is what it samples with unless the settings say
/// otherwise; one asking for something medgen does not implement fails only the samples relying on it.
#[test]
fn pipeline_scheduler_config_is_the_default_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(tmp.path(), 32);
    let wan = json!({
        "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0", "beta_end": 0.02,
        "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [], "final_sigmas_type": "zero",
        "flow_shift": 5.0, "lower_order_final": true, "num_train_timesteps": 1000, "predict_x0": true,
        "prediction_type": "flow_prediction", "solver_order": 2, "solver_p": null, "solver_type": "bh2",
        "thresholding": false, "timestep_spacing": "linspace", "use_flow_sigmas": true, "use_karras_sigmas": false
    });
    let path = tmp.path().join("scheduler/scheduler_config.json");
    write_json(&path, &wan);
    let m = load_dir(tmp.path(), DType::F32).unwrap();
    let unset = SampleSettings { sampler: None, shift: None, ..settings(3) };
    let (spec, source) = resolve_scheduler(&m, &unset).unwrap();
    assert_eq!((spec.kind, spec.shift, source), (SchedulerKind::UniPc, 5.0, SchedulerSource::Checkpoint));
    // another sampler keeps the checkpoint's shift; a shift setting wins
    let euler = SampleSettings { sampler: Some(SamplerKind::Euler), shift: None, ..settings(3) };
    assert_eq!(resolve_scheduler(&m, &euler).unwrap().0.kind, SchedulerKind::Euler);
    assert_eq!(resolve_scheduler(&m, &euler).unwrap().0.shift, 5.0);
    let shifted = SampleSettings { shift: Some(2.0), ..unset.clone() };
    assert_eq!(resolve_scheduler(&m, &shifted).unwrap().0.shift, 2.0);
    // the video is the one of UniPC at shift 5, not of medgen's default shift 3
    let run = |s: &SampleSettings| generate(&m, "a clip", s, &mut |_, _| true).unwrap().to_vec_f32().unwrap();
    let explicit = SampleSettings { sampler: Some(SamplerKind::Unipc), shift: Some(5.0), ..settings(3) };
    let default_shift = SampleSettings { sampler: Some(SamplerKind::Unipc), shift: Some(3.0), ..settings(3) };
    let got = run(&unset);
    assert_eq!(got, run(&explicit));
    assert_ne!(got, run(&default_shift));

    // Karras sigmas on UniPC: refused when relied on, naming the file and the key; explicit settings still sample
    let mut karras = wan.clone();
    karras["use_karras_sigmas"] = json!(true);
    write_json(&path, &karras);
    let m = load_dir(tmp.path(), DType::F32).unwrap();
    let e = resolve_scheduler(&m, &unset).unwrap_err();
    assert!(e.contains("scheduler_config.json") && e.contains("use_karras_sigmas") && e.contains("`sampler`"), "{e}");
    let e = generate(&m, "a clip", &unset, &mut |_, _| true).unwrap_err().to_string();
    assert!(e.contains("use_karras_sigmas"), "{e}");
    let (spec, source) = resolve_scheduler(&m, &explicit).unwrap();
    assert_eq!((spec.kind, spec.shift, source), (SchedulerKind::UniPc, 5.0, SchedulerSource::Settings));

    // without a scheduler folder: UniPC at shift 3
    std::fs::remove_dir_all(tmp.path().join("scheduler")).unwrap();
    let m = load_dir(tmp.path(), DType::F32).unwrap();
    let (spec, source) = resolve_scheduler(&m, &unset).unwrap();
    assert_eq!((spec.kind, spec.shift, source), (SchedulerKind::UniPc, 3.0, SchedulerSource::Settings));
}

/// LoRA files merged into the loaded DiT before sampling: the merge is the adapters' (scale
/// included), scale 0 leaves the model as it was, and a LoRA made for another model is refused
/// naming the file.
#[test]
fn lora_files_merge_into_the_checkpoint() {
    use medgen_kernels::train::LoraConfig;
    use medgen_kernels::train::lora::LoraWeights;
    let tmp = tempfile::tempdir().unwrap();
    let dit = write_pipeline(tmp.path(), 32);
    let cfg = LoraConfig { rank: 2, alpha: 4.0, targets: vec!["to_q".into(), "ffn.net.2".into()] };
    let mut rng = Rng::new(5);
    let mut lora = LoraWeights::init(&dit, &cfg, &mut rng, DType::F32).unwrap();
    for m in &mut lora.modules {
        m.b = Tensor::randn(m.b.shape(), 0.3, DType::F32, &mut rng);
    }
    let file = tmp.path().join("adapter.safetensors");
    lora.save(&file).unwrap();

    let base = load_dir(tmp.path(), DType::F32).unwrap();
    let merged = load_dir(tmp.path(), DType::F32).unwrap().with_loras(&[LoraUse::new(&file, 0.5)]).unwrap();
    let mut half = lora.clone();
    half.alpha *= 0.5;
    let want = half.merge_into(&base.dit).unwrap();
    let want: BTreeMap<&str, &Tensor> = want.named_parameters().into_iter().collect();
    let mut changed = 0;
    for ((name, got), (_, was)) in merged.dit.named_parameters().into_iter().zip(base.dit.named_parameters()) {
        assert_eq!(got.to_vec_f32().unwrap(), want[name].to_vec_f32().unwrap(), "{name}");
        changed += usize::from(got.to_vec_f32().unwrap() != was.to_vec_f32().unwrap());
    }
    assert_eq!(changed, 3, "to_q of both attentions and ffn.net.2 of the one block");
    let video = |m: &LoadedModel| generate(m, "a clip", &settings(1), &mut |_, _| true).unwrap().to_vec_f32().unwrap();
    assert_ne!(video(&merged), video(&base));
    let off = load_dir(tmp.path(), DType::F32).unwrap().with_loras(&[LoraUse::new(&file, 0.0)]).unwrap();
    assert_eq!(video(&off), video(&base));

    // a LoRA for a wider model
    let other = tiny_dit(48);
    let wide = LoraConfig { rank: 2, alpha: 4.0, targets: vec!["text_embedder.linear_1".into()] };
    let foreign = LoraWeights::init(&other, &wide, &mut rng, DType::F32).unwrap();
    let bad = tmp.path().join("foreign.safetensors");
    foreign.save(&bad).unwrap();
    let e = load_dir(tmp.path(), DType::F32).unwrap().with_loras(&[LoraUse::new(&bad, 1.0)]).err().unwrap();
    assert!(e.contains("foreign.safetensors") && e.contains("does not fit"), "{e}");
    let e = load_dir(tmp.path(), DType::F32).unwrap().with_loras(&[LoraUse::new(&file, f64::NAN)]).err().unwrap();
    assert!(e.contains("scale"), "{e}");
}

/// Weights that make the sample non-finite fail the sample at the step it happens, instead of
/// writing a black video.
#[test]
fn a_non_finite_sample_fails_naming_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(tmp.path(), 32);
    let mut m = load_dir(tmp.path(), DType::F32).unwrap();
    let (name, w) = m.dit.named_parameters().into_iter().find(|(n, _)| n.ends_with("proj_out.weight")).unwrap();
    let (name, shape) = (name.to_string(), w.shape().to_vec());
    let nan = Tensor::from_vec(vec![f32::NAN; shape.iter().product()], &shape).unwrap();
    m.dit.set_parameter(&name, &nan).unwrap();
    let e = generate(&m, "a clip", &settings(1), &mut |_, _| true).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains("step 1 of 2") && e.contains("not finite"), "{e}");
}

/// Wan2.2 two-expert pipelines (`transformer_2` + `boundary_ratio`, e.g. Wan2.2-T2V-A14B): steps
/// with timestep below `boundary_ratio · 1000` run the second DiT with `guidance_2`, as diffusers'
/// WanPipeline does. Two UniPC steps at shift 3 have timesteps 999 and 750.
#[test]
fn two_expert_pipeline_switches_at_the_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let first = write_pipeline(tmp.path(), 32);
    let second = WanDit::init(first.config().clone(), &mut Rng::new(99), DType::F32).unwrap();
    let mut cfg = serde_json::to_value(second.config()).unwrap();
    cfg.as_object_mut().unwrap().insert("_class_name".into(), "WanTransformer3DModel".into());
    write_json(&tmp.path().join("transformer_2/config.json"), &cfg);
    save(tmp.path().join("transformer_2/diffusion_pytorch_model.safetensors"), &second.named_parameters(), None)
        .unwrap();
    let with_ratio = |ratio: Value| {
        let mut idx = model_index();
        idx["transformer_2"] = json!(["diffusers", "WanTransformer3DModel"]);
        idx["boundary_ratio"] = ratio;
        write_json(&tmp.path().join("model_index.json"), &idx);
        load_dir(tmp.path(), DType::F32)
    };
    let unipc = SampleSettings { sampler: Some(SamplerKind::Unipc), ..settings(4) };
    let video =
        |m: &LoadedModel, s: &SampleSettings| generate(m, "a clip", s, &mut |_, _| true).unwrap().to_vec_f32().unwrap();
    let only = |dit: &WanDit| {
        let m = with_ratio(Value::Null).unwrap();
        assert!(m.low_noise.is_none(), "no boundary_ratio: the second expert is not used");
        LoadedModel { dit: dit.clone(), ..m }
    };
    let (only_first, only_second) = (video(&only(&first), &unipc), video(&only(&second), &unipc));
    assert_ne!(only_first, only_second);

    assert_eq!(video(&with_ratio(json!(0.0)).unwrap(), &unipc), only_first, "every step ≥ 0: the first expert");
    let all_low = with_ratio(json!(1.0)).unwrap();
    assert_eq!(all_low.low_noise.as_ref().unwrap().boundary_ratio, 1.0);
    assert_eq!(video(&all_low, &unipc), only_second, "every step < 1000: the second expert");
    let mixed = video(&with_ratio(json!(0.875)).unwrap(), &unipc);
    assert!(mixed != only_first && mixed != only_second, "999 on the first expert, 750 on the second");
    // guidance_2 applies to the second expert's steps
    let g1 = SampleSettings { guidance: 1.0, ..unipc.clone() };
    assert_eq!(video(&all_low, &SampleSettings { guidance_2: Some(1.0), ..unipc.clone() }), video(&only(&second), &g1));

    // A LoRA goes into the expert it names (diffusers' load_into_transformer_2), nowhere else.
    {
        use medgen_kernels::train::LoraConfig;
        use medgen_kernels::train::lora::LoraWeights;
        let cfg = LoraConfig { rank: 2, alpha: 2.0, targets: vec!["to_q".into()] };
        let mut rng = Rng::new(6);
        let mut lora = LoraWeights::init(&second, &cfg, &mut rng, DType::F32).unwrap();
        for m in &mut lora.modules {
            m.b = Tensor::randn(m.b.shape(), 0.5, DType::F32, &mut rng);
        }
        let file = tmp.path().join("low_noise_model.safetensors");
        lora.save(&file).unwrap();
        let low = LoraUse { path: file.clone(), scale: 1.0, expert: LoraExpert::LowNoise };
        let m = with_ratio(json!(1.0)).unwrap().with_loras(std::slice::from_ref(&low)).unwrap();
        let want = lora.merge_into(&second).unwrap();
        let params = |d: &WanDit| d.named_parameters().iter().map(|(_, t)| t.to_vec_f32().unwrap()).collect::<Vec<_>>();
        assert_eq!(params(&m.low_noise.as_ref().unwrap().dit), params(&want));
        assert_eq!(params(&m.dit), params(&first), "the first expert is left alone");
        assert_ne!(video(&m, &unipc), only_second);
        let e = with_ratio(Value::Null).unwrap().with_loras(&[low]).err().unwrap();
        assert!(e.contains("low_noise_model.safetensors") && e.contains("transformer_2"), "{e}");
    }

    // a ratio without a second expert, and experts that do not fit each other
    let mut idx = model_index();
    idx["boundary_ratio"] = json!(0.9);
    write_json(&tmp.path().join("model_index.json"), &idx);
    let e = load_dir(tmp.path(), DType::F32).err().unwrap();
    assert!(e.contains("boundary_ratio") && e.contains("transformer_2"), "{e}");
    cfg["text_dim"] = json!(48);
    write_json(&tmp.path().join("transformer_2/config.json"), &cfg);
    let e = with_ratio(json!(0.9)).err().unwrap();
    assert!(e.contains("transformer_2") && e.contains("must match"), "{e}");
}

#[test]
fn pipeline_errors_name_the_file_and_what_was_found() {
    // an image-to-video pipeline
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(tmp.path(), 32);
    let mut i2v = model_index();
    let o = i2v.as_object_mut().unwrap();
    o.insert("_class_name".into(), "WanImageToVideoPipeline".into());
    o.insert("image_encoder".into(), json!(["transformers", "CLIPVisionModel"]));
    o.insert("image_processor".into(), json!(["transformers", "CLIPImageProcessor"]));
    write_json(&tmp.path().join("model_index.json"), &i2v);
    let e = load_dir(tmp.path(), DType::F32).err().expect("an i2v pipeline must be refused");
    assert!(e.contains("model_index.json") && e.contains("WanImageToVideoPipeline") && e.contains("image_"), "{e}");

    // a component of another class
    let mut other = model_index();
    other["transformer"] = json!(["diffusers", "WanVACETransformer3DModel"]);
    write_json(&tmp.path().join("model_index.json"), &other);
    let e = load_pipeline(tmp.path(), DType::F32).err().expect("a VACE transformer must be refused");
    assert!(e.contains("model_index.json") && e.contains("WanVACETransformer3DModel"), "{e}");

    // a component missing from model_index.json
    let mut no_vae = model_index();
    no_vae.as_object_mut().unwrap().remove("vae");
    write_json(&tmp.path().join("model_index.json"), &no_vae);
    let e = load_pipeline(tmp.path(), DType::F32).err().expect("no vae entry");
    assert!(e.contains("model_index.json") && e.contains("vae") && e.contains("AutoencoderKLWan"), "{e}");

    // a Wan2.2 setting
    let mut wan22 = model_index();
    wan22["expand_timesteps"] = json!(true);
    write_json(&tmp.path().join("model_index.json"), &wan22);
    let e = load_pipeline(tmp.path(), DType::F32).err().expect("expand_timesteps must be refused");
    assert!(e.contains("model_index.json") && e.contains("expand_timesteps"), "{e}");

    // not JSON
    std::fs::write(tmp.path().join("model_index.json"), "{\"_class_name\": ").unwrap();
    let e = load_dir(tmp.path(), DType::F32).err().expect("broken JSON");
    assert!(e.contains("model_index.json") && e.contains("not JSON"), "{e}");

    // a missing component folder
    write_json(&tmp.path().join("model_index.json"), &model_index());
    std::fs::remove_dir_all(tmp.path().join("vae")).unwrap();
    let e = load_dir(tmp.path(), DType::F32).err().expect("no vae/ folder");
    assert!(e.contains("model_index.json") && e.contains("vae"), "{e}");
}

#[test]
fn pipeline_text_dim_mismatch_names_both_configs() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(tmp.path(), 16);
    let e = load_dir(tmp.path(), DType::F32).err().expect("text_dim 16 against a 32-wide umT5");
    assert!(
        e.contains("transformer/config.json")
            && e.contains("text_encoder/config.json")
            && e.contains("16")
            && e.contains("32"),
        "{e}"
    );
}

#[test]
fn pipeline_latent_channel_mismatch_names_both_configs() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(tmp.path(), 32);
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("transformer/config.json")).unwrap()).unwrap();
    cfg["in_channels"] = json!(16);
    cfg["out_channels"] = json!(16);
    write_json(&tmp.path().join("transformer/config.json"), &cfg);
    let e = load_dir(tmp.path(), DType::F32).err().expect("in_channels 16 against z_dim 8");
    assert!(e.contains("transformer/config.json") && e.contains("vae/config.json") && e.contains("z_dim 8"), "{e}");
}

#[test]
fn pipeline_text_encoder_finds_its_tokenizer_in_either_place() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(tmp.path(), 32);
    // beside the weights (the flat text_model layout) works as well as tokenizer/
    std::fs::rename(tmp.path().join("tokenizer/tokenizer.json"), tmp.path().join("text_encoder/tokenizer.json"))
        .unwrap();
    let m = load_pipeline(tmp.path(), DType::F32).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.text.encode(&["the heart"]).unwrap().shape(), &[1, 512, 32]);

    // neither: the error names both places
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(tmp.path(), 32);
    std::fs::remove_dir_all(tmp.path().join("tokenizer")).unwrap();
    let e = load_dir(tmp.path(), DType::F32).err().expect("no tokenizer.json anywhere");
    let own = tmp.path().join("text_encoder").join("tokenizer.json");
    assert!(e.contains(own.to_str().unwrap()) && e.contains("tokenizer/tokenizer.json"), "{e}");
}
