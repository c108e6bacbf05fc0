//! `medgen verify` on the committed reference fixtures, and the command line's behaviour at its
//! edges (tampered fixtures, files that are not fixtures, closed pipes).

use medgen_kernels::io::safetensors::{SafeTensorsFile, save};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn medgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medgen"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/tests/fixtures")
}

#[test]
fn every_committed_fixture_is_within_tolerance() {
    let out = medgen().arg("verify").arg(fixtures()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(" 0 out of tolerance, 0 not run"), "{text}");
}

/// In bf16 too: every fixture runs (the VAE and TransNetV2 in f32, saying so) and passes.
#[test]
fn every_committed_fixture_is_within_tolerance_in_bf16() {
    let out = medgen().args(["verify", "--dtype", "bf16"]).arg(fixtures()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(" 0 out of tolerance, 0 not run"), "{text}");
    assert!(text.contains("(wan_vae, on cpu, in f32: as the Wan pipelines run the VAE)"), "{text}");
    assert!(text.contains("(wan_dit, on cpu)"), "{text}");
    let out = medgen()
        .args(["verify", "--json", "--dtype", "bf16"])
        .arg(fixtures().join("umt5_tiny.safetensors"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["dtype"].as_str(), v["pass"].as_bool()), (Some("bf16"), Some(true)));
}

/// A copy of a fixture with one reference output nudged by `by`.
fn tampered(src: &Path, dst: &Path, output: &str, by: f32) {
    let f = SafeTensorsFile::open(src).unwrap();
    let keys = f.keys();
    let mut tensors = Vec::new();
    for k in &keys {
        let t = f.load(k).unwrap();
        let t = if k == output {
            let mut v = t.to_vec_f32().unwrap();
            v[0] += by;
            medgen_kernels::Tensor::from_vec(v, t.shape()).unwrap().to_dtype(t.dtype()).unwrap()
        } else {
            t
        };
        tensors.push((k.clone(), t));
    }
    let named: Vec<(&str, &medgen_kernels::Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    save(dst, &named, f.user_metadata().cloned()).unwrap();
}

#[test]
fn a_tampered_reference_fails_and_a_non_fixture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("flow_unipc_s3_n50.safetensors");
    let bad = dir.path().join("bad.safetensors");
    tampered(&src, &bad, "out.sample_7", 1e-3);
    let out = medgen().arg("verify").arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // The failing group names the tensor that broke it.
    assert!(text.contains("FAIL (worst: out.sample_7)"), "{text}");
    // The untouched original passes.
    assert_eq!(medgen().arg("verify").arg(&src).output().unwrap().status.code(), Some(0));

    let plain = dir.path().join("plain.safetensors");
    save(&plain, &[("a", &medgen_kernels::Tensor::from_vec(vec![1f32], &[1]).unwrap())], None).unwrap();
    let out = medgen().arg("verify").arg(&plain).arg(&src).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("not a medgen fixture"), "{text}");
    let out = medgen().args(["verify", "--json"]).arg(&src).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pass"], true);
}

/// A copy of a fixture without the tensors in `drop`, its metadata `key` set to `value`.
fn rewritten(src: &Path, dst: &Path, drop: &[&str], meta: Option<(&str, &str)>) {
    let f = SafeTensorsFile::open(src).unwrap();
    let tensors: Vec<(String, medgen_kernels::Tensor)> = f
        .keys()
        .into_iter()
        .filter(|k| !drop.contains(&k.as_str()))
        .map(|k| (k.clone(), f.load(&k).unwrap()))
        .collect();
    let mut m = f.user_metadata().cloned().unwrap();
    if let Some((k, v)) = meta {
        m.insert(k.into(), v.into());
    }
    let named: Vec<(&str, &medgen_kernels::Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    save(dst, &named, Some(m)).unwrap();
}

/// Fixtures that cannot be judged as given are refused (exit 2) instead of passing on what is
/// left: reference samples without the trajectory's start or a step's model output, an unknown
/// or non-positive tolerance, a folder without fixtures.
#[test]
fn incomplete_fixtures_are_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("flow_euler_s3_n3.safetensors");
    type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 5] = [
        (&["in.init"], None, "no in.init"),
        (&["in.model_output_1"], None, "each sample needs the model output"),
        (&["out.sample_1"], None, "no out.sample_1"),
        (&[], Some(("tolerance", r#"{"abss": 1}"#)), "\"abss\" is unknown"),
        (&[], Some(("tolerance", r#"{"abs": -1}"#)), "must be a positive number"),
    ];
    for (i, (drop, meta, want)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("case{i}.safetensors"));
        rewritten(&src, &p, drop, meta);
        let out = medgen().arg("verify").arg(&p).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{drop:?} {meta:?}: {text}");
        assert!(text.contains(want), "{drop:?} {meta:?}: {text}");
    }
    // A config that asks for more steps than the references hold.
    let mut config: serde_json::Value =
        serde_json::from_str(&SafeTensorsFile::open(&src).unwrap().user_metadata().unwrap()["config"]).unwrap();
    config["num_inference_steps"] = 4.into();
    let p = dir.path().join("steps.safetensors");
    rewritten(&src, &p, &[], Some(("config", &config.to_string())));
    let out = medgen().arg("verify").arg(&p).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.code() == Some(2) && text.contains("config and tensors disagree"), "{text}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = medgen().arg("verify").arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no .safetensors fixtures"));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let mut child = medgen().arg("ops").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_cuda_request_runs_the_networks_where_it_can_and_says_where() {
    let gpu = medgen_kernels::cuda::is_available();
    let out = medgen()
        .args(["verify", "--device", "cuda", "--json"])
        .arg(fixtures().join("wan_dit_tiny.safetensors"))
        .arg(fixtures().join("flow_euler_s3_n2.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}{err}");
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["model"], "wan_dit");
    assert_eq!(lines[0]["device"], if gpu { "cuda:0" } else { "cpu" });
    assert_eq!(lines[1]["device"], "cpu", "schedulers have no device path");
    if !gpu {
        assert!(err.contains("warning") && err.contains("CPU"), "{err}");
    }
}
