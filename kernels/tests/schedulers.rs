//! The FlowMatch Euler and UniPC samplers against diffusers: schedules (timesteps, sigmas) for
//! 1, 2, 3 and 50 steps at shifts 3 and 5, and step-by-step trajectories on given model outputs;
//! UniPC also with a final σ of sigma_min, correctors disabled at some steps, orders 1 and 3 (also
//! over 100 steps, where f32 rounding moves the reference itself), bh1 and a terminal shift; Euler with Karras, exponential and beta spacing, a terminal shift and inverted sigmas.
//! Options the samplers do not implement are refused by name.

use medgen_kernels::verify::{VerifyOptions, run};
use std::path::Path;

#[test]
fn every_scheduler_fixture_matches_diffusers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("flow_") {
            continue;
        }
        let r = run(&p, &VerifyOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for c in &r.checks {
            eprintln!("{name:28} {:16} abs {:.2e} rel {:.2e} {}", c.name, c.max_abs, c.max_rel, c.pass());
        }
        assert!(r.pass(), "{name}: {:?}", r.checks);
        assert!(r.checks.len() >= 3, "{name}: schedule and trajectory checked");
        seen += 1;
    }
    assert_eq!(seen, 33, "14 Euler and 19 UniPC fixtures");
}

/// A fixture whose scheduler config asks for something the samplers do not do (Karras sigmas,
/// dynamic shifting, …) is not run against a schedule it would not produce: the error names the
/// option.
#[test]
fn unimplemented_scheduler_options_are_refused_by_name() {
    use medgen_kernels::io::safetensors::{SafeTensorsFile, save};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    for (src, key, value) in [
        ("flow_euler_s3_n2.safetensors", "use_dynamic_shifting", serde_json::json!(true)),
        ("flow_euler_s3_n2.safetensors", "stochastic_sampling", serde_json::json!(true)),
        ("flow_unipc_s3_n2.safetensors", "use_karras_sigmas", serde_json::json!(true)),
        ("flow_unipc_s3_n2.safetensors", "use_dynamic_shifting", serde_json::json!(true)),
        ("flow_unipc_s3_n2.safetensors", "thresholding", serde_json::json!(true)),
    ] {
        let f = SafeTensorsFile::open(dir.join(src)).unwrap();
        let tensors: Vec<(String, medgen_kernels::Tensor)> = f
            .keys()
            .into_iter()
            .map(|k| {
                let t = f.load(&k).unwrap();
                (k, t)
            })
            .collect();
        let mut meta = f.user_metadata().cloned().unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
        config[key] = value.clone();
        meta.insert("config".into(), config.to_string());
        let out = tmp.path().join(format!("{key}.safetensors"));
        let named: Vec<(&str, &medgen_kernels::Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        save(&out, &named, Some(meta)).unwrap();
        let e = run(&out, &VerifyOptions::default()).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("not implemented"), "{key}: {e}");
        // The option at its default value is harmless.
        let mut meta = f.user_metadata().cloned().unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
        config[key] = serde_json::Value::Null;
        meta.insert("config".into(), config.to_string());
        save(&out, &named, Some(meta)).unwrap();
        assert!(run(&out, &VerifyOptions::default()).unwrap().pass(), "{key} = null");
    }
}

/// Trajectories are judged at 1e-5 plus 4× what f32 rounding alone does to the same steps (our
/// f32 run against our f64 run): ~2e-5 for the Wan configuration, ~1e-3 for order 3 over 100
/// steps, where the reference itself is that uncertain — and a sample moved by 1e-2 still fails.
#[test]
fn trajectory_limits_follow_the_f32_rounding_floor() {
    use medgen_kernels::io::safetensors::{SafeTensorsFile, save};
    use medgen_kernels::verify::Limit;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let limit = |p: &Path| {
        let r = run(p, &VerifyOptions::default()).unwrap();
        let c = r.checks.iter().find(|c| c.name == "out.sample_*").unwrap();
        let Limit::Abs(l) = c.limit else { panic!("{:?}", c.limit) };
        (r.pass(), l)
    };
    let (ok, wan) = limit(&dir.join("flow_unipc_s3_n50.safetensors"));
    assert!(ok && wan < 4e-5, "{wan}");
    let long = dir.join("flow_unipc_s3_n100_order3.safetensors");
    let (ok, order3) = limit(&long);
    assert!(ok && (1e-4..5e-3).contains(&order3), "{order3}");

    let f = SafeTensorsFile::open(&long).unwrap();
    let mut tensors: Vec<(String, medgen_kernels::Tensor)> =
        f.keys().into_iter().map(|k| (k.clone(), f.load(&k).unwrap())).collect();
    for (k, t) in &mut tensors {
        if k == "out.sample_60" {
            let moved: Vec<f32> = t.to_vec_f32().unwrap().iter().map(|v| v + 1e-2).collect();
            *t = medgen_kernels::Tensor::from_vec(moved, t.shape()).unwrap();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moved.safetensors");
    let named: Vec<(&str, &medgen_kernels::Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    save(&out, &named, f.user_metadata().cloned()).unwrap();
    let (ok, same) = limit(&out);
    assert!(!ok && same == order3, "a moved sample fails on the same limit");
}
