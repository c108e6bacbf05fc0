//! MiniLM (BERT) sentence encoder: parity with transformers `BertModel` + sentence-transformers
//! pooling on a random tiny model (fixture `minilm_tiny`) and on the real all-MiniLM-L6-v2
//! (`minilm_real_reference`, weights from `.cache/models/minilm/` as `scripts/fetch-models.sh`
//! puts them), and the real `tokenizer.json`.
//!
//! The real-model test runs when the fetched files exist; with `MEDGEN_REQUIRE_ASSETS=1` (CI) their
//! absence is a failure, not a skip.

use std::path::PathBuf;
use std::time::Instant;

use medgen_kernels::DType;
use medgen_kernels::nets::minilm::{MiniLm, fetched_minilm_dir, mean_pool_l2};
use medgen_kernels::nets::tokenizer::{PadTo, Tokenizer};
use medgen_kernels::verify::{self, Fixture, Limit, VerifyOptions, compare_slices};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn print_checks(what: &str, r: &verify::Report) {
    for c in &r.checks {
        println!(
            "{what}: {} max abs {:.2e} max rel {:.2e} over {} ({:?})",
            c.name, c.max_abs, c.max_rel, c.elements, c.limit
        );
    }
}

#[test]
fn tiny_fixture_passes_verify() {
    for dtype in [DType::F32, DType::BF16] {
        let t = Instant::now();
        let r =
            verify::run(fixture("minilm_tiny.safetensors"), &VerifyOptions { dtype, ..Default::default() }).unwrap();
        print_checks(&format!("minilm_tiny {dtype:?}"), &r);
        println!("minilm_tiny {dtype:?}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        assert!(r.pass(), "{:?}", r.checks);
        let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["out.last_hidden_state (valid positions)", "out.embedding"]);
        assert_eq!(r.checks[0].elements, (12 + 7) * 32);
    }
}

#[test]
fn tiny_model_respects_mask_and_types_and_reports_errors() {
    let fx = Fixture::open(fixture("minilm_tiny.safetensors")).unwrap();
    let cfg = medgen_kernels::nets::minilm::BertConfig::from_value(&fx.config).unwrap();
    let (ids, s) = fx.input_ints("input_ids").unwrap();
    let (mask, _) = fx.input_ints("attention_mask").unwrap();
    let (types, _) = fx.input_ints("token_type_ids").unwrap();
    let want = fx.output("embedding").unwrap().to_vec_f64().unwrap();
    let model = MiniLm::load(cfg.clone(), &fx.weights(), DType::F32).unwrap();
    let shape = [s[0], s[1]];
    // the padded row alone (7 tokens) gives the same embedding as inside the padded batch
    let l = s[1];
    let alone = model.forward(&ids[l..l + 7], &[1; 7], &types[l..l + 7], [1, 7]).unwrap();
    let e = mean_pool_l2(&alone, &[1; 7]).unwrap().to_vec_f64().unwrap();
    let chk = compare_slices("alone", &e, &want[32..], Limit::Abs(1e-5));
    println!("padded row alone: max abs {:.2e}", chk.max_abs);
    assert!(chk.pass());
    // ignoring the mask (pooling and attention over padding) is caught
    let ones = vec![1i64; ids.len()];
    let h = model.forward(&ids, &ones, &types, shape).unwrap();
    let e = mean_pool_l2(&h, &ones).unwrap().to_vec_f64().unwrap();
    assert!(!compare_slices("unmasked", &e, &want, Limit::Abs(1e-5)).pass());
    // token types matter (segment embedding row 1)
    let h = model.forward(&ids, &mask, &vec![1; ids.len()], shape).unwrap();
    assert!(
        !compare_slices("types", &mean_pool_l2(&h, &mask).unwrap().to_vec_f64().unwrap(), &want, Limit::Abs(1e-5))
            .pass()
    );
    // errors: ids beyond the vocabulary, types beyond type_vocab_size, too long for the position table
    let e = model.forward(&[120], &[1], &[0], [1, 1]).unwrap_err().to_string();
    assert!(e.contains("120"), "{e}");
    assert!(model.forward(&[5], &[1], &[2], [1, 1]).is_err());
    assert!(model.forward(&vec![5; 65], &[1; 65], &[0; 65], [1, 65]).unwrap_err().to_string().contains("65"));
    // a config that does not match the weights names the tensor
    let wrong = medgen_kernels::nets::minilm::BertConfig { intermediate_size: 48, ..cfg };
    let e = MiniLm::load(wrong, &fx.weights(), DType::F32).unwrap_err().to_string();
    assert!(e.contains("encoder.layer.0.intermediate.dense.weight"), "{e}");
    // embedding without a tokenizer is an error, not a panic
    assert!(model.embed(&["x"]).is_err());
}

/// The fetched model folder, or `None` (a skip) — a failure when `MEDGEN_REQUIRE_ASSETS=1`.
fn real_dir() -> Option<PathBuf> {
    let dir = fetched_minilm_dir().filter(|d| d.join("tokenizer.json").is_file());
    if dir.is_none() {
        let required = std::env::var("MEDGEN_REQUIRE_ASSETS").is_ok_and(|v| v == "1");
        assert!(!required, "MEDGEN_REQUIRE_ASSETS=1 but .cache/models/minilm/ is missing: run scripts/fetch-models.sh");
        println!("SKIP: .cache/models/minilm/ is missing (run scripts/fetch-models.sh)");
    }
    dir
}

#[test]
fn real_model_matches_the_python_reference() {
    let Some(dir) = real_dir() else {
        // without the weights the fixture is refused with the way to get them
        let e = verify::run(fixture("minilm_real_reference.safetensors"), &VerifyOptions::default()).unwrap_err();
        println!("{e}");
        assert!(e.to_string().contains("scripts/fetch-models.sh"), "{e}");
        return;
    };
    let t = Instant::now();
    let r = verify::run(fixture("minilm_real_reference.safetensors"), &VerifyOptions::default()).unwrap();
    print_checks("minilm_real_reference", &r);
    println!("minilm_real_reference (load 90 MB + tokenise + 4×24 tokens): {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert!(r.pass(), "{:?}", r.checks);
    assert!(r.checks[0].name.starts_with("tokenizer"), "the texts were re-tokenised");

    // the same embeddings through the public text API
    let fx = Fixture::open(fixture("minilm_real_reference.safetensors")).unwrap();
    let texts: Vec<String> = serde_json::from_str(&meta(&fx, "texts")).unwrap();
    let model = MiniLm::from_dir(&dir, DType::F32).unwrap();
    let t = Instant::now();
    let e = model.embed(&texts).unwrap();
    println!("embed(4 texts): {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(e.shape(), &[4, 384]);
    let chk = compare_slices(
        "embed",
        &e.to_vec_f64().unwrap(),
        &fx.output("embedding").unwrap().to_vec_f64().unwrap(),
        Limit::Abs(1e-5),
    );
    println!("embed() vs reference: max abs {:.2e}", chk.max_abs);
    assert!(chk.pass());
    // one text alone equals its row in the padded batch
    let one = model.embed(&texts[2..3]).unwrap().to_vec_f64().unwrap();
    assert!(compare_slices("alone", &one, &e.to_vec_f64().unwrap()[2 * 384..3 * 384], Limit::Abs(1e-5)).pass());

    // meaning: paraphrases are closer than unrelated sentences
    let e = model
        .embed(&["A cat sleeps on a sofa", "A kitten is napping on the couch", "Echocardiogram of the left ventricle"])
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let cos = |a: usize, b: usize| (0..384).map(|i| e[a * 384 + i] * e[b * 384 + i]).sum::<f64>();
    let norms: Vec<f64> = (0..3).map(|a| cos(a, a)).collect();
    println!("cos(cat, kitten) = {:.3}, cos(cat, echo) = {:.3}, norms {norms:?}", cos(0, 1), cos(0, 2));
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
    assert!(cos(0, 1) > 0.5 && cos(0, 1) > cos(0, 2) + 0.3);
}

fn meta(fx: &Fixture, key: &str) -> String {
    medgen_kernels::io::safetensors::SafeTensorsFile::open(fx.path())
        .unwrap()
        .user_metadata()
        .and_then(|m| m.get(key).cloned())
        .unwrap_or_else(|| panic!("fixture metadata {key:?}"))
}

#[test]
fn real_tokenizer_round_trip_truncation_and_padding() {
    let Some(dir) = real_dir() else { return };
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!((tok.pad_id(), tok.vocab_size(), tok.special_tokens_added()), (0, 30522, 2));
    let (cls, sep) = (tok.token_to_id("[CLS]").unwrap() as i64, tok.token_to_id("[SEP]").unwrap() as i64);
    assert_eq!((cls, sep), (101, 102));
    // the file's own truncation (128) and padding (Fixed 128) are not applied
    let b =
        tok.encode_batch(&["Echocardiogram, apical 4-chamber view.", "A heart"], 256, PadTo::Longest, true).unwrap();
    let n = b.lengths();
    assert_eq!(b.seq_len, n[0]);
    assert!(n[0] > n[1] && n[1] == 4, "{n:?}");
    assert_eq!((b.row(0)[0], b.row(0)[n[0] - 1]), (cls, sep));
    assert_eq!(&b.row(1)[..4], &[cls, 1037, 2540, sep]); // "a", "heart" in the uncased vocab
    assert!(b.row(1)[4..].iter().all(|&i| i == 0) && b.attention_mask[b.seq_len + 4..].iter().all(|&m| m == 0));
    // round trip (uncased, punctuation split off)
    let ids: Vec<u32> = b.row(0)[..n[0]].iter().map(|&i| i as u32).collect();
    assert_eq!(tok.decode(&ids, true).unwrap(), "echocardiogram, apical 4 - chamber view.");
    // truncation to 256 keeps [CLS] … [SEP]
    let long = vec!["heart"; 300].join(" ");
    let t = tok.encode_batch(&[long.as_str()], 256, PadTo::Fixed(300), true).unwrap();
    assert_eq!((t.seq_len, t.lengths()), (300, vec![256]));
    assert_eq!((t.row(0)[0], t.row(0)[254], t.row(0)[255], t.row(0)[256]), (cls, 2540, sep, 0));
    // non-ASCII and medical text, as in the reference fixture, tokenises to known pieces
    let e = tok.encode("Naïve B-cells — 3µm", false).unwrap();
    assert_eq!(e, [15743, 1038, 1011, 4442, 1517, 1017, 29659, 2213]); // naive b - cells — 3 ##µ ##m
    assert_eq!(tok.decode(&e, true).unwrap(), "naive b - cells — 3µm");
}
