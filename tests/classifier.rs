//! `medgen classifier train` and `curate.metadata_filter`'s embedding classifier, through the
//! binary: train on part of tests/data/metadata_labelled.jsonl, then run a graph on the held-out
//! rows. Tests that embed text need MiniLM (scripts/fetch-models.sh); without it they print SKIP —
//! or fail when MEDGEN_REQUIRE_ASSETS=1.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary with `args`; (success, stdout, stderr).
fn medgen(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("start medgen");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The fetched MiniLM folder, or `None` (a skip, printed).
fn minilm() -> Option<PathBuf> {
    let dir = repo().join(".cache/models/minilm");
    if dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    let required = std::env::var("MEDGEN_REQUIRE_ASSETS").is_ok_and(|v| v == "1");
    assert!(!required, "MEDGEN_REQUIRE_ASSETS=1 but .cache/models/minilm/ is missing: run scripts/fetch-models.sh");
    println!("SKIP: .cache/models/minilm/ is missing (run scripts/fetch-models.sh)");
    None
}

fn labelled() -> Vec<Value> {
    std::fs::read_to_string(repo().join("tests/data/metadata_labelled.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn is_medical(label: &Value) -> bool {
    matches!(label, Value::Bool(true)) || label == "medical" || label == 1 || label == "true" || label == "1"
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    std::fs::write(path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
}

fn graph(dir: &Path, filter_params: &str) -> PathBuf {
    let g = dir.join("graph.toml");
    let text = format!(
        "[graph]\nname = \"relevance\"\n\n[nodes.videos]\nop = \"source.manifest\"\npath = \"heldout.jsonl\"\n\n\
         [nodes.medical]\nop = \"curate.metadata_filter\"\ninputs = [\"videos\"]\nclassifier = \"head.json\"\n{filter_params}\n\n\
         [nodes.kept]\nop = \"sink.jsonl\"\ninputs = [\"medical\"]\npath = \"kept.jsonl\"\n\n\
         [nodes.dropped]\nop = \"sink.jsonl\"\ninputs = [\"medical.rejected\"]\npath = \"rejected.jsonl\"\n\n\
         [nodes.failed]\nop = \"sink.jsonl\"\ninputs = [\"medical.failures\", \"videos.failures\"]\npath = \"failures.jsonl\"\n"
    );
    std::fs::write(&g, text).unwrap();
    g
}

fn outputs(store: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(store.join("outputs").join(name))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Run the graph; (accuracy on the labels, kept, rejected, the run summary).
fn run_graph(dir: &Path, filter_params: &str) -> (f64, Vec<Value>, Vec<Value>, Value) {
    let g = graph(dir, filter_params);
    let store = dir.join("store");
    let summary = dir.join(format!("summary-{}.json", filter_params.len()));
    let (ok, out, err) = medgen(
        &[
            "run",
            "-q",
            "--store",
            store.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
            g.to_str().unwrap(),
        ],
        dir,
    );
    assert!(ok, "medgen run failed\n{out}\n{err}");
    let failures = outputs(&store, "failures.jsonl");
    assert!(failures.is_empty(), "{failures:?}");
    let (kept, rejected) = (outputs(&store, "kept.jsonl"), outputs(&store, "rejected.jsonl"));
    let right = kept.iter().filter(|r| is_medical(&r["metadata"]["label"])).count()
        + rejected.iter().filter(|r| !is_medical(&r["metadata"]["label"])).count();
    let n = kept.len() + rejected.len();
    let summary = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    (right as f64 / n.max(1) as f64, kept, rejected, summary)
}

fn node_counter(summary: &Value, node: &str, field: &str) -> u64 {
    summary["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node"] == node))
        .and_then(|n| n[field].as_u64())
        .unwrap_or_else(|| panic!("no {field} of {node} in {summary}"))
}

#[test]
fn trained_head_sorts_held_out_videos() {
    let Some(_) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rows = labelled();
    assert!(rows.len() >= 80, "{} labelled rows", rows.len());
    // The file alternates medical and other rows: every fourth pair is held out from training,
    // and the graph runs on those.
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, r) in rows.into_iter().enumerate() {
        if (i / 2) % 4 == 3 { held.push(r) } else { train.push(r) }
    }
    write_jsonl(&dir.path().join("train.jsonl"), &train);
    let manifest: Vec<Value> = held
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            r["uri"] = json!(format!("https://example.invalid/video-{i}.mp4"));
            r
        })
        .collect();
    write_jsonl(&dir.path().join("heldout.jsonl"), &manifest);

    let t = std::time::Instant::now();
    let (ok, out, err) = medgen(
        &["classifier", "train", "--data", "train.jsonl", "--out", "head.json", "--holdout", "0.2", "--seed", "1"],
        dir.path(),
    );
    assert!(ok, "classifier train failed\n{out}\n{err}");
    println!("classifier train ({} rows, {:.1} s):\n{out}{err}", train.len(), t.elapsed().as_secs_f64());
    assert!(out.contains("holdout") && out.contains("accuracy") && out.contains("threshold"), "{out}");
    let head: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("head.json")).unwrap()).unwrap();
    assert_eq!(
        (head["format"].as_str(), head["embedder"].as_str()),
        (Some("medgen-relevance-head"), Some("minilm:384"))
    );
    assert_eq!(head["weights"].as_array().map(Vec::len), Some(384));
    let hold_acc = head["metrics"]["holdout"]["accuracy"].as_f64().unwrap();

    // The head alone (every video passes the dictionary).
    let (acc, kept, rejected, summary) = run_graph(dir.path(), "min_matches = 0");
    println!("classifier alone on {} held-out videos: accuracy {acc:.3} (training holdout {hold_acc:.3})", held.len());
    for r in kept.iter().chain(&rejected) {
        let p: f64 = r["metadata"]["medical_probability"].as_str().unwrap().parse().unwrap();
        println!("  p={p:.3} label={} {}", r["metadata"]["label"], r["metadata"]["title"]);
    }
    assert_eq!(kept.len() + rejected.len(), held.len());
    assert!(acc >= 0.8, "accuracy {acc} on held-out rows");
    let embedded = node_counter(&summary, "medical", "memo_misses");
    assert!(embedded > 0);
    for r in &rejected {
        assert_eq!(r["metadata"]["rejected_by"], "medical");
        assert!(r["metadata"]["reason"].as_str().unwrap().contains("medical probability"), "{r}");
    }

    // A new threshold re-decides from the memo: nothing is embedded again.
    let (_, kept_strict, _, summary) = run_graph(dir.path(), "min_matches = 0\nclassifier_threshold = 0.99");
    assert_eq!(node_counter(&summary, "medical", "memo_misses"), 0);
    assert_eq!(node_counter(&summary, "medical", "memo_hits"), embedded);
    assert!(kept_strict.len() <= kept.len());

    // The paper's cascade: dictionary, then the head.
    let (acc, _, rejected, _) = run_graph(dir.path(), "min_matches = 1");
    let by_dict = rejected.iter().filter(|r| r["metadata"].get("medical_probability").is_none()).count();
    println!("dictionary + classifier: accuracy {acc:.3} ({by_dict} dropped by the dictionary)");
}

#[test]
fn bad_rows_and_one_class_data_are_refused_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("data.jsonl"),
        "{\"title\": \"Knee arthroscopy\", \"label\": \"medical\"}\n\
         {\"title\": \"Appendectomy\"}\n\
         {broken\n\
         {\"title\": \"Hip replacement\", \"label\": 1}\n\
         {\"title\": \"Cat videos\", \"label\": \"maybe\"}\n",
    )
    .unwrap();
    let (ok, _, err) = medgen(&["classifier", "train", "--data", "data.jsonl", "--out", "head.json"], dir.path());
    assert!(!ok);
    for want in ["data.jsonl:2: missing `label`", "data.jsonl:3: invalid JSON", "data.jsonl:5:", "\"maybe\""] {
        assert!(err.contains(want), "{want:?} not in\n{err}");
    }
    assert!(err.contains("only medical rows") && err.contains("\"other\""), "{err}");
    assert!(!dir.path().join("head.json").exists());

    std::fs::write(dir.path().join("empty.jsonl"), "{\"label\": true}\n[1, 2]\n").unwrap();
    let (ok, _, err) = medgen(&["classifier", "train", "--data", "empty.jsonl", "--out", "head.json"], dir.path());
    assert!(!ok);
    assert!(err.contains("empty.jsonl:1: no text in title, description, tags"), "{err}");
    assert!(err.contains("no usable rows"), "{err}");

    let (ok, out, _) = medgen(&["classifier", "train", "--help"], dir.path());
    assert!(ok && out.contains("\"label\": \"medical\"") && out.contains("classifier = \"head.json\""), "{out}");
}

#[test]
fn check_refuses_a_head_of_another_width() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in model folder: `medgen check` reads only config.json and looks for the files.
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), "{\"hidden_size\": 384, \"num_attention_heads\": 12}").unwrap();
    std::fs::write(model.join("model.safetensors"), "").unwrap();
    std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
    let head = json!({
        "format": "medgen-relevance-head", "version": 1, "embedder": "minilm:8", "dim": 8,
        "weights": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "bias": 0.0, "threshold": 0.5
    });
    std::fs::write(dir.path().join("head.json"), head.to_string()).unwrap();
    std::fs::write(dir.path().join("heldout.jsonl"), "").unwrap();
    let g = graph(dir.path(), "model_dir = \"model\"");
    let (ok, out, err) = medgen(&["check", g.to_str().unwrap()], dir.path());
    let text = format!("{out}{err}");
    assert!(!ok, "{text}");
    assert!(text.contains("head.json") && text.contains("8-dimensional") && text.contains("gives 384"), "{text}");
    assert!(text.contains("medgen classifier train --model-dir"), "{text}");

    std::fs::remove_file(dir.path().join("head.json")).unwrap();
    let (ok, out, err) = medgen(&["check", g.to_str().unwrap()], dir.path());
    assert!(!ok && format!("{out}{err}").contains("cannot read classifier head"), "{out}{err}");
}
