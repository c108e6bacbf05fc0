//! safetensors loading (dtypes, mixed files, shards, corrupt files) and the Wan DiT key maps.

use std::collections::HashMap;

use medgen_kernels::io::safetensors::{Checkpoint, SafeTensorsFile, save};
use medgen_kernels::io::wan_keys::*;
use medgen_kernels::{DType, Error, Rng, Tensor};

fn t(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, dtype, &mut Rng::new(seed))
}

#[test]
fn mixed_dtypes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let a = t(&[3, 4], DType::F32, 1);
    let b = t(&[5], DType::BF16, 2);
    let c = t(&[2, 2, 2], DType::F16, 3);
    let d = t(&[2], DType::F64, 4);
    let meta = HashMap::from([("config".to_string(), "{\"x\":1}".to_string())]);
    save(&p, &[("a", &a), ("b.w", &b), ("c", &c), ("d", &d)], Some(meta)).unwrap();
    let ck = Checkpoint::open(&p).unwrap();
    assert_eq!(ck.keys().collect::<Vec<_>>(), vec!["a", "b.w", "c", "d"]);
    assert_eq!(ck.describe("b.w").unwrap(), (vec![5], DType::BF16));
    for (name, orig) in [("a", &a), ("b.w", &b), ("c", &c), ("d", &d)] {
        let l = ck.load(name).unwrap();
        assert_eq!(l.dtype(), orig.dtype());
        assert_eq!(l.shape(), orig.shape());
        assert_eq!(l.max_abs_diff(orig).unwrap(), 0.0, "{name}");
    }
    let conv = ck.load_as("b.w", DType::F32).unwrap();
    assert_eq!(conv.dtype(), DType::F32);
    assert_eq!(conv.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    assert_eq!(ck.files()[0].user_metadata().unwrap()["config"], "{\"x\":1}");
    assert!(matches!(ck.load("nope"), Err(Error::MissingKey(k)) if k == "nope"));
    assert!(ck.load_shaped("a", &[4, 3], DType::F32).is_err());
    assert!(ck.load_shaped("a", &[3, 4], DType::F32).is_ok());
    // a directory holding one file opens too
    assert_eq!(Checkpoint::open(dir.path()).unwrap().len(), 4);
}

#[test]
fn known_bytes_decode() {
    // handcrafted file: one BF16 [2] tensor holding 1.0 and -2.0, one F32 scalar 0.5
    let header = r#"{"x":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[],"data_offsets":[4,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&half::bf16::from_f32(1.0).to_bits().to_le_bytes());
    bytes.extend_from_slice(&half::bf16::from_f32(-2.0).to_bits().to_le_bytes());
    bytes.extend_from_slice(&0.5f32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    let f = SafeTensorsFile::open(&p).unwrap();
    assert_eq!(f.load("x").unwrap().to_vec_f32().unwrap(), vec![1.0, -2.0]);
    assert_eq!(f.load("y").unwrap().to_scalar().unwrap(), 0.5);

    // truncated data section
    std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(SafeTensorsFile::open(&p), Err(Error::SafeTensors { .. })));
    // truncated header
    std::fs::write(&p, &bytes[..20]).unwrap();
    assert!(matches!(SafeTensorsFile::open(&p), Err(Error::SafeTensors { .. })));
    // shorter than the length prefix
    std::fs::write(&p, &bytes[..5]).unwrap();
    assert!(matches!(SafeTensorsFile::open(&p), Err(Error::SafeTensors { .. })));
    // garbage header
    let mut bad = bytes.clone();
    bad[8] = b'#';
    std::fs::write(&p, &bad).unwrap();
    assert!(matches!(SafeTensorsFile::open(&p), Err(Error::SafeTensors { .. })));
    // size inconsistent with the shape
    let h2 = r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let mut b2 = (h2.len() as u64).to_le_bytes().to_vec();
    b2.extend_from_slice(h2.as_bytes());
    b2.extend_from_slice(&[0u8; 8]);
    std::fs::write(&p, &b2).unwrap();
    assert!(matches!(SafeTensorsFile::open(&p), Err(Error::SafeTensors { .. })));
    // unsupported dtype is reported on load
    let h3 = r#"{"i":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut b3 = (h3.len() as u64).to_le_bytes().to_vec();
    b3.extend_from_slice(h3.as_bytes());
    b3.extend_from_slice(&[0u8; 4]);
    std::fs::write(&p, &b3).unwrap();
    let f = SafeTensorsFile::open(&p).unwrap();
    assert!(matches!(f.load("i"), Err(Error::UnsupportedStoredDType { .. })));
    // missing file
    assert!(matches!(SafeTensorsFile::open(dir.path().join("absent.safetensors")), Err(Error::Io { .. })));
}

#[test]
fn sharded_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let a = t(&[2, 3], DType::F32, 5);
    let b = t(&[4], DType::BF16, 6);
    let c = t(&[1], DType::F32, 7);
    save(dir.path().join("m-00001-of-00002.safetensors"), &[("a", &a), ("b", &b)], None).unwrap();
    save(dir.path().join("m-00002-of-00002.safetensors"), &[("c", &c)], None).unwrap();
    let index = serde_json::json!({
        "metadata": {"total_size": 40},
        "weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00001-of-00002.safetensors", "c": "m-00002-of-00002.safetensors"}
    });
    let ip = dir.path().join("m.safetensors.index.json");
    std::fs::write(&ip, index.to_string()).unwrap();
    for ck in [Checkpoint::open(&ip).unwrap(), Checkpoint::open(dir.path()).unwrap()] {
        assert_eq!(ck.len(), 3);
        assert_eq!(ck.files().len(), 2);
        assert_eq!(ck.load("c").unwrap().max_abs_diff(&c).unwrap(), 0.0);
        assert_eq!(ck.load("b").unwrap().dtype(), DType::BF16);
    }
    // a key listed in the index but absent from its shard
    let bad = serde_json::json!({"weight_map": {"a": "m-00002-of-00002.safetensors"}});
    std::fs::write(&ip, bad.to_string()).unwrap();
    assert!(matches!(Checkpoint::open(&ip), Err(Error::CheckpointIndex { .. })));
    // a missing shard
    let bad = serde_json::json!({"weight_map": {"a": "gone.safetensors"}});
    std::fs::write(&ip, bad.to_string()).unwrap();
    assert!(matches!(Checkpoint::open(&ip), Err(Error::Io { .. })));
    // path escaping the directory
    let bad = serde_json::json!({"weight_map": {"a": "../x.safetensors"}});
    std::fs::write(&ip, bad.to_string()).unwrap();
    assert!(matches!(Checkpoint::open(&ip), Err(Error::CheckpointIndex { .. })));
    // no weight_map / not JSON
    std::fs::write(&ip, "{}").unwrap();
    assert!(matches!(Checkpoint::open(&ip), Err(Error::CheckpointIndex { .. })));
    std::fs::write(&ip, "not json").unwrap();
    assert!(matches!(Checkpoint::open(&ip), Err(Error::CheckpointIndex { .. })));
}

/// The key list of an original-format Wan2.1 T2V DiT with `layers` blocks.
fn original_keys(layers: usize) -> Vec<String> {
    let mut k: Vec<String> = [
        "patch_embedding.weight",
        "patch_embedding.bias",
        "text_embedding.0.weight",
        "text_embedding.0.bias",
        "text_embedding.2.weight",
        "text_embedding.2.bias",
        "time_embedding.0.weight",
        "time_embedding.0.bias",
        "time_embedding.2.weight",
        "time_embedding.2.bias",
        "time_projection.1.weight",
        "time_projection.1.bias",
        "head.modulation",
        "head.head.weight",
        "head.head.bias",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..layers {
        k.push(format!("blocks.{i}.modulation"));
        for a in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                k.push(format!("blocks.{i}.{a}.{p}.weight"));
                k.push(format!("blocks.{i}.{a}.{p}.bias"));
            }
            k.push(format!("blocks.{i}.{a}.norm_q.weight"));
            k.push(format!("blocks.{i}.{a}.norm_k.weight"));
        }
        for p in ["norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias"] {
            k.push(format!("blocks.{i}.{p}"));
        }
    }
    k
}

#[test]
fn wan_key_mapping() {
    let orig = original_keys(30);
    assert_eq!(orig.len(), 825, "1.3B has 825 tensors");
    assert_eq!(original_keys(40).len(), 1095, "14B has 1095 tensors");
    let m = WanKeyMap::new(orig.iter().map(String::as_str)).unwrap();
    assert_eq!(m.format, WanDitFormat::Original);
    assert!(m.unmapped.is_empty());
    assert_eq!(m.to_stored.len(), 825);
    let expect = [
        ("blocks.3.norm3.weight", "blocks.3.norm2.weight"),
        ("blocks.3.norm3.bias", "blocks.3.norm2.bias"),
        ("head.modulation", "scale_shift_table"),
        ("blocks.7.modulation", "blocks.7.scale_shift_table"),
        ("head.head.weight", "proj_out.weight"),
        ("blocks.0.self_attn.o.bias", "blocks.0.attn1.to_out.0.bias"),
        ("blocks.29.cross_attn.norm_k.weight", "blocks.29.attn2.norm_k.weight"),
        ("blocks.1.ffn.0.weight", "blocks.1.ffn.net.0.proj.weight"),
        ("blocks.1.ffn.2.bias", "blocks.1.ffn.net.2.bias"),
        ("text_embedding.2.weight", "condition_embedder.text_embedder.linear_2.weight"),
        ("time_embedding.0.bias", "condition_embedder.time_embedder.linear_1.bias"),
        ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
        ("patch_embedding.weight", "patch_embedding.weight"),
    ];
    for (o, d) in expect {
        assert_eq!(original_to_diffusers(o).as_deref(), Some(d), "{o}");
        assert_eq!(diffusers_to_original(d).as_deref(), Some(o), "{d}");
        assert_eq!(m.stored(d).unwrap(), o);
    }
    // the parameter-free norm2 maps to norm3 and back
    assert_eq!(original_to_diffusers("blocks.0.norm2.weight").as_deref(), Some("blocks.0.norm3.weight"));
    // every key round-trips, and the diffusers names are unique
    let diff: Vec<String> = orig.iter().map(|k| original_to_diffusers(k).unwrap()).collect();
    for (o, d) in orig.iter().zip(&diff) {
        assert_eq!(diffusers_to_original(d).as_ref(), Some(o));
    }
    let mut uniq = diff.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 825);
    // diffusers-format checkpoint: identity map
    let md = WanKeyMap::new(diff.iter().map(String::as_str)).unwrap();
    assert_eq!(md.format, WanDitFormat::Diffusers);
    assert_eq!(md.stored("blocks.3.norm2.weight").unwrap(), "blocks.3.norm2.weight");
    // ComfyUI prefix plus an I2V extra
    let mut comfy: Vec<String> = orig.iter().map(|k| format!("{COMFY_PREFIX}{k}")).collect();
    comfy.push(format!("{COMFY_PREFIX}img_emb.proj.0.weight"));
    let mc = WanKeyMap::new(comfy.iter().map(String::as_str)).unwrap();
    assert_eq!(mc.format, WanDitFormat::ComfyUi);
    assert_eq!(mc.stored("scale_shift_table").unwrap(), "model.diffusion_model.head.modulation");
    assert_eq!(mc.unmapped, vec!["model.diffusion_model.img_emb.proj.0.weight".to_string()]);
    assert!(matches!(mc.stored("blocks.30.attn1.to_q.weight"), Err(Error::MissingKey(_))));
    // unknown and ambiguous layouts are errors
    assert!(matches!(detect_format(["foo.weight"]), Err(Error::UnknownFormat(_))));
    assert!(matches!(
        detect_format(["blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight"]),
        Err(Error::UnknownFormat(_))
    ));
    assert_eq!(original_to_diffusers("blocks.x.modulation"), None);
    assert_eq!(original_to_diffusers("blocks.0.self_attn.q.weight.extra"), None);
}

/// A folder, a FIFO (which would block the open forever) or another format where a safetensors
/// file belongs is refused with what it is.
#[test]
fn non_files_and_other_formats_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("model.safetensors");
    std::fs::create_dir(&folder).unwrap();
    let e = SafeTensorsFile::open(&folder).unwrap_err().to_string();
    assert!(e.contains("a folder, where a file was expected"), "{e}");
    let fifo = tmp.path().join("fifo.safetensors");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
    if made {
        let e = SafeTensorsFile::open(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = medgen_kernels::io::read_text(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
    for (name, bytes, want) in [
        ("zip.safetensors", b"PK\x03\x04rest of a zip".to_vec(), "a zip archive"),
        ("pickle.safetensors", b"\x80\x02}q\x00.padding".to_vec(), "a Python pickle"),
        ("json.safetensors", b"  {\"model\": \"x\", \"padding\": 1}".to_vec(), "JSON text"),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = SafeTensorsFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file") && e.contains(want), "{name}: {e}");
    }
}

/// The same tensors and metadata give the same bytes (blobs are keyed by their hash: a latent or
/// checkpoint written again must keep its key), and the file reads back.
#[test]
fn saving_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap();
    let b = Tensor::from_vec(vec![4f64, 5.0], &[2]).unwrap().to_dtype(DType::BF16).unwrap();
    let c = Tensor::from_vec(vec![6f64], &[1, 1]).unwrap();
    let mut bytes = Vec::new();
    for i in 0..6 {
        // A fresh HashMap each time: its iteration order differs between instances.
        let meta: HashMap<String, String> = (0..24).map(|k| (format!("key{k}"), format!("value{k}"))).collect();
        let p = tmp.path().join(format!("{i}.safetensors"));
        save(&p, &[("b", &b), ("a", &a), ("c", &c)], Some(meta)).unwrap();
        bytes.push(std::fs::read(&p).unwrap());
        let f = SafeTensorsFile::open(&p).unwrap();
        assert_eq!(f.keys(), ["a", "b", "c"]);
        assert_eq!(f.load("a").unwrap().to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(f.load("b").unwrap().to_vec_f32().unwrap(), vec![4.0, 5.0]);
        assert_eq!(f.load("c").unwrap().to_vec_f32().unwrap(), vec![6.0]);
        assert_eq!(f.user_metadata().unwrap()["key7"], "value7");
    }
    assert!(bytes.windows(2).all(|w| w[0] == w[1]), "every save wrote the same bytes");
    let e = save(tmp.path().join("dup.safetensors"), &[("a", &a), ("a", &a)], None).unwrap_err().to_string();
    assert!(e.contains("given twice"), "{e}");
}
