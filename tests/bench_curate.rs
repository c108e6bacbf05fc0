//! `medgen bench curate` end to end on the two smallest sample videos, ours and the decode floor
//! only (the Python baseline's venv is pointed at a missing interpreter, so CI needs no OpenCV).
//! Skips, with the reason printed, when the sample videos or gst-launch-1.0 are missing.
#![cfg(feature = "video")]

use std::path::Path;
use std::process::Command;

#[test]
fn bench_curate_quick_runs_ours_without_the_baseline() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/samples");
    if !samples.join("carphone_pristine.mp4").is_file() {
        eprintln!("skipped: no sample videos in {} (run scripts/fetch-samples.sh)", samples.display());
        return;
    }
    if Command::new("gst-launch-1.0").arg("--version").output().is_err() {
        eprintln!("skipped: gst-launch-1.0 is not installed (gstreamer1.0-tools)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .args(["bench", "curate", "--quick", "--repeats", "1", "--dir"])
        .arg(&samples)
        .arg("--json")
        .arg(&json)
        .env("MEDGEN_BENCH_PYTHON", tmp.path().join("no-such-python"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("setup-baseline.sh"), "the missing venv is explained: {stderr}");
    assert!(stdout.contains("baseline not run"), "{stdout}");
    assert!(stdout.contains("decode floor"), "{stdout}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["videos"], 2, "--quick takes the two smallest videos: {report}");
    assert!(report["baseline"].is_null());
    let ours = report["ours"]["wall_s"].as_f64().unwrap();
    let floor = report["decode_floor"]["wall_s"].as_f64().unwrap();
    assert!(ours > 0.0 && floor >= 0.0, "{report}");
    assert!(report["ours"]["videos_per_hour_core"].as_f64().unwrap() > 0.0);
    let nodes: Vec<&str> = report["ours_nodes"].as_array().unwrap().iter().map(|n| n["op"].as_str().unwrap()).collect();
    for op in ["curate.segment", "curate.black_border", "curate.dedup"] {
        assert!(nodes.contains(&op), "{op} ran: {nodes:?}");
    }
    // The two carphone files are 4 s each: at least one clip of 2 s or more comes out.
    assert!(report["ours_clips"].as_u64().unwrap() >= 1, "{report}");
}
