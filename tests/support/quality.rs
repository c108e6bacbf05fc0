//! Helpers shared by the curation-quality tests (`curate_ocr.rs`, `curate_quality.rs`): where the
//! repository and its fetched models are, and running the `medgen` binary with `--summary-json`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (where `.cache/` lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.cache/models`, asserting that `scripts/fetch-models.sh` ran.
pub fn require_models() -> PathBuf {
    let dir = repo().join(".cache/models");
    assert!(
        dir.join("ppocrv6_tiny_det.onnx").is_file() && dir.join("brisque_svm.txt").is_file(),
        "run scripts/fetch-models.sh first (the model files are missing in {})",
        dir.display()
    );
    dir
}

/// A sample video of `scripts/fetch-samples.sh`.
pub fn sample(name: &str) -> PathBuf {
    let p = repo().join(".cache/samples").join(name);
    assert!(p.is_file(), "run scripts/fetch-samples.sh first ({} is missing)", p.display());
    p
}

/// `medgen run -q --store STORE --summary-json S GRAPH`, asserting success; returns the summary.
pub fn medgen_run(graph: &Path, store: &Path) -> serde_json::Value {
    let summary = store.with_extension(format!("summary-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .env_remove("RUST_LOG")
        .current_dir(repo())
        .args(["run", "-q", "--store"])
        .arg(store)
        .arg("--summary-json")
        .arg(&summary)
        .arg(graph)
        .output()
        .expect("start medgen");
    assert!(
        out.status.success(),
        "medgen failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written")).expect("summary JSON");
    let _ = std::fs::remove_file(&summary);
    s
}

/// `medgen check GRAPH`: (exit code, stdout + stderr).
pub fn medgen_check(graph: &Path) -> (i32, String) {
    medgen_check_env(graph, &[])
}

/// `medgen check GRAPH` with extra environment variables: (exit code, stdout + stderr).
pub fn medgen_check_env(graph: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .current_dir(repo())
        .arg("check")
        .arg(graph)
        .output()
        .expect("start medgen");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A counter of one node in a run summary.
pub fn node_stat(s: &serde_json::Value, node: &str, field: &str) -> u64 {
    s["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
        .and_then(|n| n[field].as_u64())
        .unwrap_or_else(|| panic!("no `{field}` for node `{node}` in {s}"))
}
