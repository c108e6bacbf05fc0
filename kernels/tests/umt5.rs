//! umT5 encoder: parity with transformers' `UMT5EncoderModel` (fixture `umt5_tiny`), the Wan2.1
//! original key layout, relative-position buckets, the Wan tokenisation/padding path and errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use medgen_kernels::io::TensorSource;
use medgen_kernels::nets::tokenizer::{PadTo, Tokenizer, WAN_TEXT_LEN};
use medgen_kernels::nets::umt5::{UMT5Config, UMT5Encoder, UMT5Layout, relative_position_bucket};
use medgen_kernels::verify::{self, Fixture, Limit, VerifyOptions, compare_slices};
use medgen_kernels::{DType, Error, Tensor};

fn fixture_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/umt5_tiny.safetensors").to_string()
}

/// Weights held in memory (renamed or perturbed copies of a fixture's).
struct MapSource(BTreeMap<String, Tensor>);

impl TensorSource for MapSource {
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
    fn describe(&self, name: &str) -> medgen_kernels::Result<(Vec<usize>, DType)> {
        let t = self.0.get(name).ok_or_else(|| Error::MissingKey(name.to_string()))?;
        Ok((t.shape().to_vec(), t.dtype()))
    }
    fn load(&self, name: &str) -> medgen_kernels::Result<Tensor> {
        self.0.get(name).cloned().ok_or_else(|| Error::MissingKey(name.to_string()))
    }
}

fn copy_weights(fx: &Fixture) -> MapSource {
    let w = fx.weights();
    MapSource(w.names().into_iter().map(|n| (n.clone(), w.load(&n).unwrap())).collect())
}

/// transformers name → Wan2.1 `T5Encoder` name (WAN_SPEC §4.3).
fn to_wan_name(n: &str) -> String {
    if n == "shared.weight" {
        return "token_embedding.weight".into();
    }
    if n == "encoder.final_layer_norm.weight" {
        return "norm.weight".into();
    }
    let rest = n.strip_prefix("encoder.block.").expect(n);
    let (i, tail) = rest.split_once('.').unwrap();
    let tail = match tail {
        "layer.0.layer_norm.weight" => "norm1.weight".to_string(),
        "layer.1.layer_norm.weight" => "norm2.weight".to_string(),
        "layer.0.SelfAttention.relative_attention_bias.weight" => "pos_embedding.embedding.weight".to_string(),
        "layer.1.DenseReluDense.wi_0.weight" => "ffn.gate.0.weight".to_string(),
        "layer.1.DenseReluDense.wi_1.weight" => "ffn.fc1.weight".to_string(),
        "layer.1.DenseReluDense.wo.weight" => "ffn.fc2.weight".to_string(),
        t => {
            let p = t.strip_prefix("layer.0.SelfAttention.").expect(t);
            format!("attn.{p}")
        }
    };
    format!("blocks.{i}.{tail}")
}

struct Case {
    cfg: UMT5Config,
    ids: Vec<i64>,
    mask: Vec<i64>,
    shape: [usize; 2],
    want: Vec<f64>,
}

fn case(fx: &Fixture) -> Case {
    let (ids, s) = fx.input_ints("input_ids").unwrap();
    let (mask, _) = fx.input_ints("attention_mask").unwrap();
    Case {
        cfg: UMT5Config::from_value(&fx.config).unwrap(),
        ids,
        mask,
        shape: [s[0], s[1]],
        want: fx.output("last_hidden_state").unwrap().to_vec_f64().unwrap(),
    }
}

fn valid(data: &[f64], mask: &[i64], d: usize) -> Vec<f64> {
    data.chunks(d).zip(mask).filter(|(_, m)| **m == 1).flat_map(|(r, _)| r.to_vec()).collect()
}

#[test]
fn tiny_fixture_passes_verify() {
    for dtype in [DType::F32, DType::BF16] {
        let t = Instant::now();
        let opts = VerifyOptions { dtype, ..Default::default() };
        let r = verify::run(fixture_path(), &opts).unwrap();
        for c in &r.checks {
            println!(
                "umt5_tiny {dtype:?}: {} max abs {:.2e} max rel {:.2e} over {} ({:?})",
                c.name, c.max_abs, c.max_rel, c.elements, c.limit
            );
        }
        println!("umt5_tiny {dtype:?}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        assert!(r.pass(), "{:?}", r.checks);
        assert_eq!(r.checks[0].elements, (24 + 14) * 32, "only the valid positions are compared");
    }
}

/// Another config: 13 buckets (odd: 6 per direction, the last unused), max_distance 20 (shorter
/// than the 24-token rows), a plain ReLU feed-forward and heads·d_kv = 18 ≠ d_model = 32.
#[test]
fn odd_buckets_relu_fixture_passes_verify() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/umt5_odd_relu.safetensors");
    let fx = Fixture::open(path).unwrap();
    let cfg = UMT5Config::from_value(&fx.config).unwrap();
    assert_eq!((cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance), (13, 20));
    assert!(!cfg.feed_forward().unwrap().gated);
    let r = verify::run(path, &VerifyOptions::default()).unwrap();
    for c in &r.checks {
        println!("umt5_odd_relu: {} max abs {:.2e} max rel {:.2e}", c.name, c.max_abs, c.max_rel);
    }
    assert!(r.pass(), "{:?}", r.checks);
}

#[test]
fn wan_original_layout_matches_transformers_layout() {
    let fx = Fixture::open(fixture_path()).unwrap();
    let c = case(&fx);
    let hf = copy_weights(&fx);
    let wan = MapSource(hf.0.iter().map(|(k, v)| (to_wan_name(k), v.clone())).collect());
    assert_eq!(UMT5Layout::detect(&hf).unwrap(), UMT5Layout::Transformers);
    assert_eq!(UMT5Layout::detect(&wan).unwrap(), UMT5Layout::WanOriginal);
    let a = UMT5Encoder::load(c.cfg.clone(), &hf, DType::F32).unwrap();
    let b = UMT5Encoder::load(c.cfg.clone(), &wan, DType::F32).unwrap();
    assert_eq!(b.layout(), UMT5Layout::WanOriginal);
    let ya = a.forward(&c.ids, &c.mask, c.shape).unwrap().to_vec_f64().unwrap();
    let yb = b.forward(&c.ids, &c.mask, c.shape).unwrap().to_vec_f64().unwrap();
    assert_eq!(ya, yb);
    // the alias transformers uses when the embedding is not tied under `shared`
    let mut alias = copy_weights(&fx);
    let e = alias.0.remove("shared.weight").unwrap();
    alias.0.insert("encoder.embed_tokens.weight".into(), e);
    let yc = UMT5Encoder::load(c.cfg, &alias, DType::F32).unwrap().forward(&c.ids, &c.mask, c.shape).unwrap();
    assert_eq!(ya, yc.to_vec_f64().unwrap());
}

#[test]
fn a_perturbed_weight_or_a_wrong_mask_is_detected() {
    let fx = Fixture::open(fixture_path()).unwrap();
    let c = case(&fx);
    let d = c.cfg.d_model;
    let lim = Limit::Abs(1e-5);
    // perturb one relative-bias entry of layer 1 (bucket 17 = offset +1, head 2) by 0.01
    let mut src = copy_weights(&fx);
    let key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    let mut v = src.0[key].to_vec_f64().unwrap();
    v[17 * 4 + 2] += 0.01;
    src.0.insert(key.into(), Tensor::from_f64_slice(&v, &[32, 4], DType::F32).unwrap());
    let y = UMT5Encoder::load(c.cfg.clone(), &src, DType::F32).unwrap().forward(&c.ids, &c.mask, c.shape).unwrap();
    let chk =
        compare_slices("perturbed", &valid(&y.to_vec_f64().unwrap(), &c.mask, d), &valid(&c.want, &c.mask, d), lim);
    println!("relative bias +0.01 at one bucket/head: max abs {:.2e}", chk.max_abs);
    assert!(!chk.pass());
    // ignoring the padding mask changes the valid rows of the padded sequence
    let enc = UMT5Encoder::load(c.cfg.clone(), &copy_weights(&fx), DType::F32).unwrap();
    let ones = vec![1i64; c.mask.len()];
    let y = enc.forward(&c.ids, &ones, c.shape).unwrap().to_vec_f64().unwrap();
    let chk = compare_slices("unmasked", &valid(&y, &c.mask, d), &valid(&c.want, &c.mask, d), lim);
    println!("mask ignored: max abs {:.2e}", chk.max_abs);
    assert!(!chk.pass());
}

#[test]
fn padding_does_not_change_valid_rows() {
    let fx = Fixture::open(fixture_path()).unwrap();
    let c = case(&fx);
    let enc = UMT5Encoder::load(c.cfg.clone(), &copy_weights(&fx), DType::F32).unwrap();
    let l = c.shape[1];
    let n = c.mask[l..].iter().sum::<i64>() as usize; // row 1's true length (14)
    let alone = enc.forward(&c.ids[l..l + n], &vec![1; n], [1, n]).unwrap().to_vec_f64().unwrap();
    let full = enc.forward(&c.ids, &c.mask, c.shape).unwrap().to_vec_f64().unwrap();
    let d = c.cfg.d_model;
    let chk = compare_slices("alone", &alone, &full[l * d..(l + n) * d], Limit::Abs(1e-6));
    println!("row alone vs padded: max abs {:.2e}", chk.max_abs);
    assert!(chk.pass());
    let chk = compare_slices("alone vs reference", &alone, &c.want[l * d..(l + n) * d], Limit::Abs(1e-5));
    assert!(chk.pass(), "{chk:?}");
}

#[test]
fn relative_position_buckets_by_hand() {
    let bi = |r: i64| relative_position_bucket(r, true, 32, 128);
    // exact range: 0..7 keys before the query → 0..7, after → 16 + 1..7
    assert_eq!(bi(0), 0);
    for r in 1..8 {
        assert_eq!(bi(r), 16 + r as usize, "r = {r}");
        assert_eq!(bi(-r), r as usize, "r = -{r}");
    }
    // log range: 8 + floor(ln(a/8)/ln(16)·8), hand-computed
    // a = 8..11 → 0; 12 → ln 1.5/ln 16·8 = 1.17 → 1; 16 → 2; 20 → 2.64 → 2; 32 → 4; 64 → 6;
    // 90 → 6.98 → 6; 91 → 7.02 → 7; ≥ 128 → 8 → clamped to 7.
    for (a, b) in [(8, 8), (11, 8), (12, 9), (16, 10), (20, 10), (32, 12), (64, 14), (90, 14), (91, 15), (127, 15)] {
        assert_eq!(bi(a), 16 + b, "r = +{a}");
        assert_eq!(bi(-a), b, "r = -{a}");
    }
    for a in [128, 129, 500, 100_000] {
        assert_eq!((bi(a), bi(-a)), (31, 15), "|r| = {a} beyond max_distance");
    }
    // unidirectional (decoder) form: only keys before the query count, 32 buckets, max_exact 16
    let uni = |r: i64| relative_position_bucket(r, false, 32, 128);
    assert_eq!((uni(5), uni(0), uni(-3), uni(-15)), (0, 0, 3, 15));
    assert_eq!(uni(-20), 17); // 16 + floor(ln(20/16)/ln(8)·16) = 16 + floor(1.72)
    assert_eq!(uni(-1000), 31);
}

/// A T5-style `tokenizer.json` (Unigram, Metaspace, `$A </s>` template) over a toy vocabulary
/// whose ids fit the tiny umT5's 100-row embedding (`fixtures/toy_t5_tokenizer.json`, shared with
/// the pipeline-folder test of the operators).
fn toy_t5_tokenizer() -> Tokenizer {
    Tokenizer::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/toy_t5_tokenizer.json")).unwrap()
}

#[test]
fn wan_tokenisation_eos_truncation_padding_and_masks() {
    let tok = toy_t5_tokenizer();
    assert_eq!((tok.pad_id(), tok.token_to_id("</s>"), tok.special_tokens_added()), (0, Some(1), 1));
    let (the, heart) = (tok.token_to_id("▁the").unwrap() as i64, tok.token_to_id("▁heart").unwrap() as i64);
    let long = vec!["heart"; 600].join(" ");
    let texts = ["the heart", "", long.as_str(), "  the \t heart &amp; "];
    let t = tok.encode_umt5(&texts, WAN_TEXT_LEN).unwrap();
    assert_eq!(t.shape(), [4, 512]);
    assert_eq!(t.lengths(), vec![3, 1, 512, 5]);
    assert_eq!(&t.row(0)[..4], &[the, heart, 1, 0]);
    assert!(t.row(0)[3..].iter().all(|&i| i == 0));
    assert_eq!(&t.attention_mask[..4], &[1, 1, 1, 0]);
    assert!(t.attention_mask[3..512].iter().all(|&m| m == 0));
    assert_eq!(&t.row(1)[..2], &[1, 0], "the empty prompt is one </s>");
    // truncated to 511 tokens + </s>, mask all ones
    assert!(t.row(2)[..511].iter().all(|&i| i == heart));
    assert_eq!(t.row(2)[511], 1);
    assert!(t.attention_mask[2 * 512..3 * 512].iter().all(|&m| m == 1));
    // whitespace collapsed and HTML unescaped before tokenising: "the heart &" → ▁the ▁heart ▁ <unk> </s>
    assert_eq!(&t.row(3)[..5], &[the, heart, 3, 2, 1]);
    assert!(t.token_type_ids.iter().all(|&x| x == 0));

    // the generic path with the file's post-processor gives the same for clean prompts
    let g = tok.encode_batch(&texts[..3], WAN_TEXT_LEN, PadTo::Fixed(WAN_TEXT_LEN), true).unwrap();
    assert_eq!(g.ids, t.ids[..3 * 512]);
    assert_eq!(g.attention_mask, t.attention_mask[..3 * 512]);
    // longest padding, no special tokens
    let g = tok.encode_batch(&["the heart", "the"], 8, PadTo::Longest, false).unwrap();
    assert_eq!((g.shape(), g.ids.clone(), g.lengths()), ([2, 2], vec![the, heart, the, 0], vec![2, 1]));
    assert!(tok.encode_batch(&["x"], 512, PadTo::Fixed(10), true).is_err());
    assert!(tok.encode_batch(&["x"], 1, PadTo::Longest, true).is_err());
    assert_eq!(tok.decode(&[the as u32, heart as u32, 1], true).unwrap(), "the heart");
}

#[test]
fn encode_for_wan_zeroes_rows_past_the_true_length() {
    let fx = Fixture::open(fixture_path()).unwrap();
    let c = case(&fx);
    let enc = UMT5Encoder::load(c.cfg.clone(), &copy_weights(&fx), DType::F32).unwrap();
    let tok = toy_t5_tokenizer();
    let t0 = Instant::now();
    let ctx = enc.encode_for_wan(&tok, &["echo of the left ventricle", ""]).unwrap();
    println!("encode_for_wan, 2 × 512 tokens, tiny model: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    assert_eq!(ctx.shape(), &[2, 512, 32]);
    let tokens = tok.encode_umt5(&["echo of the left ventricle", ""], WAN_TEXT_LEN).unwrap();
    let lens = tokens.lengths();
    assert_eq!(lens, vec![6, 1]);
    let v = ctx.to_vec_f64().unwrap();
    for (b, &n) in lens.iter().enumerate() {
        let rows = &v[b * 512 * 32..(b + 1) * 512 * 32];
        assert!(rows[..n * 32].iter().any(|&x| x != 0.0));
        assert!(rows[n * 32..].iter().all(|&x| x == 0.0), "rows past {n} of prompt {b} must be exactly zero");
        // the true rows equal a run of the prompt alone, unpadded
        let alone = enc.forward(&tokens.row(b)[..n], &vec![1; n], [1, n]).unwrap().to_vec_f64().unwrap();
        let chk = compare_slices("alone", &alone, &rows[..n * 32], Limit::Abs(1e-6));
        assert!(chk.pass(), "{chk:?}");
    }
}

#[test]
fn load_and_input_errors_name_the_problem() {
    let fx = Fixture::open(fixture_path()).unwrap();
    let c = case(&fx);
    // a config that does not match the checkpoint
    let wide = UMT5Config { d_ff: 64, ..c.cfg.clone() };
    let e = UMT5Encoder::load(wide, &copy_weights(&fx), DType::F32).unwrap_err().to_string();
    assert!(e.contains("encoder.block.0.layer.1.DenseReluDense.wi_0.weight") && e.contains("[64, 32]"), "{e}");
    // a missing tensor
    let mut src = copy_weights(&fx);
    src.0.remove("encoder.block.1.layer.1.layer_norm.weight");
    let e = UMT5Encoder::load(c.cfg.clone(), &src, DType::F32).unwrap_err().to_string();
    assert!(e.contains("encoder.block.1.layer.1.layer_norm.weight"), "{e}");
    // not a umT5 checkpoint
    let e = UMT5Encoder::load(c.cfg.clone(), &MapSource(BTreeMap::new()), DType::F32).unwrap_err().to_string();
    assert!(e.contains("encoder.final_layer_norm.weight"), "{e}");
    // bad inputs
    let enc = UMT5Encoder::load(c.cfg.clone(), &copy_weights(&fx), DType::F32).unwrap();
    let e = enc.forward(&[5, 100], &[1, 1], [1, 2]).unwrap_err().to_string();
    assert!(e.contains("100") && e.contains("vocabulary"), "{e}");
    assert!(enc.forward(&[5, 6], &[1, 2], [1, 2]).is_err());
    assert!(enc.forward(&[5, 6, 7], &[1, 1, 1], [1, 2]).is_err());
    assert!(enc.forward(&[], &[], [0, 0]).is_err());
    // a JSON config error names the field
    let e = UMT5Config::from_json(r#"{"num_heads": -1}"#).unwrap_err().to_string();
    assert!(e.contains("umt5"), "{e}");
}
