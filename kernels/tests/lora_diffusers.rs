//! Our LoRA files load in diffusers: `scripts/check-lora-diffusers.py` applied the committed
//! `fixtures/lora/lora_tiny_ours.safetensors` (written by [`LoraWeights::save`]) to the tiny base
//! `lora_tiny_base.safetensors` through `WanPipeline.load_lora_weights`, failed on any key
//! warning, and stored the diffusers outputs with and without the adapters in
//! `lora_tiny_diffusers.safetensors`. Here the same two files go through our loader and
//! [`LoraWeights::merge_into`] and must give diffusers' output.
//!
//! The fixture files sit in `fixtures/lora/`, not `fixtures/`, because `medgen verify
//! kernels/tests/fixtures` (tests/cli_verify.rs) runs every `.safetensors` file directly in that
//! directory as a FIXTURES.md fixture, and the base and LoRA files are plain checkpoints.
//!
//! Regenerate: `cargo test -p medgen-kernels --test lora_diffusers -- --ignored write_lora_fixture`,
//! then `scripts/make-fixtures.sh` (which reruns the Python check).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use medgen_kernels::io::safetensors::{Checkpoint, SafeTensorsFile, save};
use medgen_kernels::nets::wan_dit::{WanDit, WanDitConfig};
use medgen_kernels::train::LoraConfig;
use medgen_kernels::train::lora::{LORA_METADATA_KEY, LoraWeights};
use medgen_kernels::verify::Fixture;
use medgen_kernels::{DType, Rng, Tensor};

const BASE: &str = "lora_tiny_base.safetensors";
const OURS: &str = "lora_tiny_ours.safetensors";
const DIFFUSERS: &str = "lora_tiny_diffusers.safetensors";

/// Tolerance of the merged forward against diffusers' (PEFT, unmerged) forward, f32.
const ABS: f64 = 1e-5;
/// The adapters must move diffusers' output by at least this much (max abs), so that a loader
/// that ignored them (or a merge that dropped them) fails the comparison by a wide margin.
const MIN_LORA_EFFECT: f64 = 1e-2;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

fn fixture(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(p.exists(), "fixture {} is missing (see this file's docs to regenerate it)", p.display());
    p
}

/// 2 layers, 2 heads × 16 (RoPE 8/4/4), in 4 → out 4, text 16, ffn 32, freq 16, cross-attn norm.
fn tiny_config() -> WanDitConfig {
    WanDitConfig {
        num_attention_heads: 2,
        attention_head_dim: 16,
        in_channels: 4,
        out_channels: Some(4),
        text_dim: 16,
        freq_dim: 16,
        ffn_dim: 32,
        num_layers: 2,
        ..WanDitConfig::default()
    }
}

/// Every kind of linear layer of the DiT: attention (self and cross), FFN, output head and the
/// time / text embedders.
const TARGETS: [&str; 12] = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
    "proj_out",
    "time_embedder.linear_1",
    "time_embedder.linear_2",
    "time_proj",
    "text_embedder.linear_1",
    "text_embedder.linear_2",
];

/// The base model and the adapters the fixture files hold: rank 4, alpha 8 (scale 2), A as
/// [`LoraWeights::init`] draws it and B = 0.2·randn instead of zero so that the adapters act.
fn make_base_and_lora() -> (WanDit, LoraWeights) {
    let base = WanDit::init(tiny_config(), &mut Rng::new(7001), DType::F32).unwrap();
    let cfg = LoraConfig { rank: 4, alpha: 8.0, targets: TARGETS.map(String::from).to_vec() };
    let mut rng = Rng::new(7002);
    let mut lora = LoraWeights::init(&base, &cfg, &mut rng, DType::F32).unwrap();
    for m in &mut lora.modules {
        m.b = Tensor::randn(m.b.shape(), 0.2, DType::F32, &mut rng);
    }
    (base, lora)
}

/// Base weights under diffusers names with the config (diffusers kwargs) as `config` metadata.
fn save_base(base: &WanDit, path: &Path) {
    let mut md = HashMap::new();
    md.insert("format".to_string(), "pt".to_string());
    md.insert("config".to_string(), serde_json::to_string(base.config()).unwrap());
    save(path, &base.named_parameters(), Some(md)).unwrap();
}

/// Writes the base and LoRA files into `tests/fixtures/lora/` (run once, then rerun
/// `scripts/make-fixtures.sh` to refresh diffusers' outputs).
#[test]
#[ignore = "writes the committed fixture inputs"]
fn write_lora_fixture() {
    let (base, lora) = make_base_and_lora();
    std::fs::create_dir_all(dir()).unwrap();
    save_base(&base, &dir().join(BASE));
    lora.save(&dir().join(OURS)).unwrap();
    println!("wrote {} adapters and {} base tensors", lora.modules.len(), base.named_parameters().len());
}

/// Tensor name → (shape, dtype).
type TensorLayout = BTreeMap<String, (Vec<usize>, DType)>;

/// Tensor names, shapes and dtypes, the parsed `lora_adapter_metadata` and the `format` metadata.
fn layout(path: &Path) -> (TensorLayout, serde_json::Value, Option<String>) {
    let f = SafeTensorsFile::open(path).unwrap();
    let tensors = f.keys().into_iter().map(|k| (k.clone(), f.describe(&k).unwrap())).collect();
    let md = f.user_metadata().cloned().unwrap_or_default();
    let meta = md.get(LORA_METADATA_KEY).map(|s| serde_json::from_str(s).unwrap()).unwrap_or_default();
    (tensors, meta, md.get("format").cloned())
}

/// What `LoraWeights::save` writes today has the layout of the file diffusers accepted: a
/// change to the writer makes the committed check stale, and this says so.
#[test]
fn our_writer_still_writes_the_checked_layout() {
    let (base, lora) = make_base_and_lora();
    let tmp = tempfile::tempdir().unwrap();
    let now = tmp.path().join(OURS);
    lora.save(&now).unwrap();
    let (want_t, want_m, want_f) = layout(&fixture(OURS));
    let (got_t, got_m, got_f) = layout(&now);
    assert_eq!(got_t, want_t, "tensor names/shapes/dtypes differ from the file diffusers checked");
    assert_eq!(got_m, want_m, "{LORA_METADATA_KEY} differs from the file diffusers checked");
    assert_eq!(got_f, want_f);
    assert_eq!(want_t.len(), 2 * (2 * (2 * 4 + 2) + 1 + 5), "every linear layer is adapted");
    // and the committed base is the model this file's generator makes
    let ck = Checkpoint::open(fixture(BASE)).unwrap();
    let stored = WanDit::load(tiny_config(), &ck, DType::F32).unwrap();
    for (n, p) in base.named_parameters() {
        assert_eq!(p.max_abs_diff(stored.parameter(n).unwrap()).unwrap(), 0.0, "{n}");
    }
}

#[test]
fn merged_lora_matches_diffusers() {
    let t0 = std::time::Instant::now();
    let fx = Fixture::open(fixture(DIFFUSERS)).unwrap();
    assert_eq!(fx.model, "wan_dit_lora");
    let base_file = SafeTensorsFile::open(fixture(BASE)).unwrap();
    let cfg_text = &base_file.user_metadata().unwrap()["config"];
    let cfg = WanDitConfig::from_json(&serde_json::from_str(cfg_text).unwrap()).unwrap();
    assert_eq!(cfg, WanDitConfig::from_json(&fx.config).unwrap(), "fixture config vs base file config");
    let base = WanDit::load(cfg, &Checkpoint::open(fixture(BASE)).unwrap(), DType::F32).unwrap();
    let lora = LoraWeights::load(&fixture(OURS), DType::F32).unwrap();
    assert_eq!((lora.rank, lora.alpha, lora.scale()), (4, 8.0, 2.0));
    assert_eq!(lora.modules.len(), 26);
    let merged = lora.merge_into(&base).unwrap();

    let (x, t, c) = (fx.input("x_t").unwrap(), fx.input("timestep").unwrap(), fx.input("context").unwrap());
    let want_lora = fx.output("velocity_lora").unwrap();
    let want_base = fx.output("velocity_base").unwrap();
    let got_lora = merged.forward(&x, &t, &c).unwrap();
    let got_base = base.forward(&x, &t, &c).unwrap();
    assert_eq!(got_lora.shape(), want_lora.shape());

    let err_lora = got_lora.max_abs_diff(&want_lora).unwrap();
    let err_base = got_base.max_abs_diff(&want_base).unwrap();
    let effect = want_lora.max_abs_diff(&want_base).unwrap();
    let ours_vs_base = got_lora.max_abs_diff(&want_base).unwrap();
    let scale = want_lora.to_vec_f64().unwrap().iter().fold(0f64, |m, v| m.max(v.abs()));
    println!("with LoRA:    max abs {err_lora:.3e} vs diffusers (max |v| {scale:.3})");
    println!("without LoRA: max abs {err_base:.3e} vs diffusers");
    println!("LoRA effect in diffusers: max abs {effect:.3e}; ours-with-LoRA vs diffusers-without {ours_vs_base:.3e}");
    println!("{:.2?}", t0.elapsed());
    assert!(err_base <= ABS, "base forward: {err_base:e} > {ABS:e}");
    assert!(err_lora <= ABS, "merged LoRA forward: {err_lora:e} > {ABS:e}");
    assert!(effect >= MIN_LORA_EFFECT, "the adapters barely change diffusers' output ({effect:e}): vacuous check");
    assert!(ours_vs_base >= MIN_LORA_EFFECT, "our merged output is the base output ({ours_vs_base:e})");
}

/// LoRA files in the layouts diffusers converts on load — musubi-tuner (`lora_unet_…lora_down` /
/// `lora_up` / per-module `.alpha`) and original Wan names (`diffusion_model.…lora_down`, `.alpha`,
/// zero norm `.diff` keys, and with non-zero `.diff_b` bias deltas), and PEFT with `lora_B.bias`
/// and `lora_alpha ≠ r` — merge to diffusers' output (`scripts/make-lora-formats-fixture.py`).
#[test]
fn foreign_lora_layouts_match_diffusers() {
    let fx = Fixture::open(fixture("lora_tiny_formats_diffusers.safetensors")).unwrap();
    assert_eq!(fx.model, "wan_dit_lora_formats");
    let cfg = WanDitConfig::from_json(&fx.config).unwrap();
    let base = WanDit::load(cfg, &Checkpoint::open(fixture(BASE)).unwrap(), DType::F32).unwrap();
    let (x, t, c) = (fx.input("x_t").unwrap(), fx.input("timestep").unwrap(), fx.input("context").unwrap());
    let want_base = fx.output("velocity_base").unwrap();
    for (kind, file) in [
        ("musubi", "lora_tiny_musubi.safetensors"),
        ("wanorig", "lora_tiny_wanorig.safetensors"),
        ("wanbias", "lora_tiny_wanbias.safetensors"),
        ("peftbias", "lora_tiny_peftbias.safetensors"),
    ] {
        let mut lora = LoraWeights::load(&fixture(file), DType::F32).unwrap_or_else(|e| panic!("{file}: {e}"));
        // per-module alphas are folded into A: the file's own scale is 1; the PEFT file says 6 / 4
        let scale = if kind == "peftbias" { 1.5 } else { 1.0 };
        assert_eq!((lora.rank, lora.scale()), (4, scale), "{file}");
        assert_eq!(lora.modules.len(), 20, "{file}: q, k, v, o of both attentions and the two FFN layers, 2 blocks");
        let biased = kind.ends_with("bias");
        assert!(lora.modules.iter().all(|m| m.bias.is_some() == biased), "{file}");
        let got = lora.merge_into(&base).unwrap().forward(&x, &t, &c).unwrap();
        let want = fx.output(&format!("velocity_{kind}")).unwrap();
        let err = got.max_abs_diff(&want).unwrap();
        let effect = want.max_abs_diff(&want_base).unwrap();
        println!("{file}: max abs {err:.3e} vs diffusers; LoRA effect {effect:.3e}");
        assert!(err <= ABS, "{file}: {err:e} > {ABS:e}");
        assert!(effect >= MIN_LORA_EFFECT, "{file}: vacuous ({effect:e})");
        if biased {
            // diffusers applied the bias deltas too: without them the outputs part.
            lora.modules.iter_mut().for_each(|m| m.bias = None);
            let unbiased = lora.merge_into(&base).unwrap().forward(&x, &t, &c).unwrap();
            let gap = unbiased.max_abs_diff(&want).unwrap();
            assert!(gap >= MIN_LORA_EFFECT, "{file}: the bias deltas change nothing ({gap:e})");
        }
    }
}

/// Keys a LoRA loader cannot place are refused by name.
#[test]
fn unknown_lora_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Tensor::from_vec(vec![0f32; 8], &[2, 4]).unwrap();
    for (key, want) in [
        ("lora_unet_blocks_0_norm3.lora_down.weight", "not a Wan DiT layer"),
        ("diffusion_model.blocks.0.self_attn.q.diff", "full weight delta"),
        ("diffusion_model.blocks.0.self_attn.q.diff_b", "bias-only adapters"),
        ("transformer.blocks.0.attn1.to_q.lora_B.bias", "bias-only adapters"),
        ("transformer.blocks.0.attn1.to_q.lora_magnitude_vector", "lora_B biases"),
    ] {
        let path = tmp.path().join("bad.safetensors");
        save(&path, &[(key, &a)], None).unwrap();
        let e = LoraWeights::load(&path, DType::F32).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(want), "{key}: {e}");
    }
}

/// Little-endian bytes of f32 values, for [`raw_safetensors`].
fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A safetensors file written by hand: (name, dtype, shape, little-endian bytes).
fn raw_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// musubi-tuner alphas stored as an integer scalar are read like float ones (folded into lora_A).
#[test]
fn integer_alphas_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("int_alpha.safetensors");
    raw_safetensors(
        &path,
        &[
            (
                "lora_unet_blocks_0_self_attn_q.lora_down.weight",
                "F32",
                vec![2, 3],
                f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ),
            ("lora_unet_blocks_0_self_attn_q.lora_up.weight", "F32", vec![1, 2], f32s(&[1.0, 1.0])),
            ("lora_unet_blocks_0_self_attn_q.alpha", "I64", vec![], 8i64.to_le_bytes().to_vec()),
        ],
    );
    let lora = LoraWeights::load(&path, DType::F32).unwrap();
    assert_eq!((lora.rank, lora.scale(), lora.modules.len()), (2, 1.0, 1));
    assert_eq!(lora.modules[0].name, "blocks.0.attn1.to_q");
    // alpha 8 / rank 2 = 4, folded into A
    assert_eq!(lora.modules[0].a.to_vec_f32().unwrap(), vec![4.0, 8.0, 12.0, 16.0, 20.0, 24.0]);

    // a scalar where lora_down belongs is refused before its alpha is read
    let scalar = tmp.path().join("scalar_down.safetensors");
    raw_safetensors(
        &scalar,
        &[
            ("lora_unet_blocks_0_self_attn_q.lora_down.weight", "F32", vec![], f32s(&[1.0])),
            ("lora_unet_blocks_0_self_attn_q.lora_up.weight", "F32", vec![1, 2], f32s(&[1.0, 1.0])),
            ("lora_unet_blocks_0_self_attn_q.alpha", "F32", vec![], f32s(&[8.0])),
        ],
    );
    let e = LoraWeights::load(&scalar, DType::F32).unwrap_err().to_string();
    assert!(e.contains("do not form"), "{e}");
}

/// A LoRA holding NaN or infinite values is refused, naming the module, instead of merging into
/// weights that would sample a black video.
#[test]
fn non_finite_adapters_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nan.safetensors");
    raw_safetensors(
        &path,
        &[
            ("transformer.blocks.0.attn1.to_q.lora_A.weight", "F32", vec![1, 2], f32s(&[1.0, f32::NAN])),
            ("transformer.blocks.0.attn1.to_q.lora_B.weight", "F32", vec![2, 1], f32s(&[1.0, 1.0])),
        ],
    );
    let e = LoraWeights::load(&path, DType::F32).unwrap_err().to_string();
    assert!(e.contains("blocks.0.attn1.to_q") && e.contains("NaN"), "{e}");
}

/// musubi `.diff_b` bias deltas load with their module (diffusers drops them with a warning;
/// medgen applies them), a lone time-projection bias is dropped as diffusers drops it, and a
/// LoRA with biases saves as PEFT `lora_B.bias` with `lora_bias` in its metadata and reads back.
#[test]
fn bias_deltas_load_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("musubi.safetensors");
    let down = Tensor::from_vec((0..8).map(|i| i as f32 * 0.1).collect(), &[2, 4]).unwrap();
    let up = Tensor::from_vec((0..6).map(|i| 1.0 - i as f32 * 0.2).collect(), &[3, 2]).unwrap();
    let bias = Tensor::from_vec(vec![0.5f32, -0.25, 2.0], &[3]).unwrap();
    let lone = Tensor::from_vec(vec![1f32; 5], &[5]).unwrap();
    save(
        &path,
        &[
            ("lora_unet_blocks_0_self_attn_q.lora_down.weight", &down),
            ("lora_unet_blocks_0_self_attn_q.lora_up.weight", &up),
            ("lora_unet_blocks_0_self_attn_q.diff_b", &bias),
            ("lora_unet_time_projection_1.diff_b", &lone),
        ],
        None,
    )
    .unwrap();
    let lora = LoraWeights::load(&path, DType::F32).unwrap();
    assert_eq!(lora.modules.len(), 1);
    let m = &lora.modules[0];
    assert_eq!(m.name, "blocks.0.attn1.to_q");
    assert_eq!(m.bias.as_ref().unwrap().to_vec_f32().unwrap(), vec![0.5, -0.25, 2.0]);

    let again = tmp.path().join("peft.safetensors");
    lora.save(&again).unwrap();
    let file = SafeTensorsFile::open(&again).unwrap();
    let meta = file.user_metadata().unwrap().get("lora_adapter_metadata").unwrap().clone();
    assert!(meta.contains("\"transformer.lora_bias\":true"), "{meta}");
    let back = LoraWeights::load(&again, DType::F32).unwrap();
    assert_eq!(back.modules[0].bias.as_ref().unwrap().to_vec_f32().unwrap(), vec![0.5, -0.25, 2.0]);

    // A bias that does not match lora_B's rows is refused by name.
    let bad = tmp.path().join("bad.safetensors");
    save(
        &bad,
        &[
            ("lora_unet_blocks_0_self_attn_q.lora_down.weight", &down),
            ("lora_unet_blocks_0_self_attn_q.lora_up.weight", &up),
            ("lora_unet_blocks_0_self_attn_q.diff_b", &lone),
        ],
        None,
    )
    .unwrap();
    let e = LoraWeights::load(&bad, DType::F32).unwrap_err().to_string();
    assert!(e.contains("lora_unet_blocks_0_self_attn_q.diff_b") && e.contains("want [3]"), "{e}");
}

/// PEFT metadata as PEFT applies it: `use_rslora` scales by alpha/√r, `use_dora` is refused (a
/// DoRA magnitude would be ignored), and a per-module `.alpha` tensor beside metadata leaves the
/// modules without one on the metadata's alpha (diffusers' result), not on scale 1.
#[test]
fn peft_metadata_scales_like_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Tensor::from_vec(vec![1f32; 12], &[4, 3]).unwrap();
    let b = Tensor::from_vec(vec![1f32; 8], &[2, 4]).unwrap();
    let alpha = Tensor::from_vec(vec![8f32], &[]).unwrap();
    let write = |name: &str, extra: serde_json::Value, with_alpha: bool| {
        let mut meta = serde_json::json!({"transformer.r": 4, "transformer.lora_alpha": 8});
        for (k, v) in extra.as_object().unwrap() {
            meta[format!("transformer.{k}")] = v.clone();
        }
        let mut tensors = vec![
            ("transformer.blocks.0.attn1.to_q.lora_A.weight", &a),
            ("transformer.blocks.0.attn1.to_q.lora_B.weight", &b),
            ("transformer.blocks.0.attn1.to_k.lora_A.weight", &a),
            ("transformer.blocks.0.attn1.to_k.lora_B.weight", &b),
        ];
        if with_alpha {
            tensors.push(("transformer.blocks.0.attn1.to_q.alpha", &alpha));
        }
        let path = tmp.path().join(name);
        let m = [("lora_adapter_metadata".to_string(), meta.to_string())].into_iter().collect();
        save(&path, &tensors, Some(m)).unwrap();
        LoraWeights::load(&path, DType::F32)
    };
    assert_eq!(write("plain.safetensors", serde_json::json!({}), false).unwrap().scale(), 2.0);
    assert_eq!(write("rs.safetensors", serde_json::json!({"use_rslora": true}), false).unwrap().scale(), 4.0);
    let e = write("dora.safetensors", serde_json::json!({"use_dora": true}), false).unwrap_err().to_string();
    assert!(e.contains("use_dora") && e.contains("merge"), "{e}");
    let mixed = write("mixed.safetensors", serde_json::json!({}), true).unwrap();
    assert_eq!(mixed.scale(), 1.0, "alphas folded into lora_A");
    for m in &mixed.modules {
        assert_eq!(m.a.to_vec_f32().unwrap(), vec![2f32; 12], "{}: 8/4 whichever alpha it took", m.name);
    }
}
