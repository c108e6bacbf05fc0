//! `curate.category`: clips of the paper's five classes told apart from their metadata text and
//! visual cues (MiniLM from scripts/fetch-models.sh; the echo DICOM from fetch-samples.sh).
#![cfg(feature = "video")]

mod curate_common;

use curate_common::*;
use medgen_operators::video::synth::{Content, Shot, SynthSpec};
use std::path::{Path, PathBuf};

fn graph(dir: &Path, params: &str) -> PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "category"

[nodes.videos]
op = "source.manifest"
path = "m.jsonl"

[nodes.echo]
op = "source.dicom"
paths = ["{echo}"]

[nodes.seg]
op = "curate.segment"
inputs = ["videos", "echo"]
min_seconds = 1.0
min_height = 160
tau = 0.0
cut_detection = false

[nodes.cat]
op = "curate.category"
inputs = ["seg"]
{params}

[nodes.kept]
op = "sink.jsonl"
inputs = ["cat"]
path = "kept.jsonl"

[nodes.dropped]
op = "sink.jsonl"
inputs = ["cat.rejected"]
path = "rejected.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["cat.failures", "seg.failures"]
path = "failures.jsonl"
"#,
            echo = sample("echo_color3d_jpeg.dcm").display()
        ),
    )
    .unwrap();
    g
}

#[test]
fn five_classes_from_text_and_cues_and_reject_only_redecides() {
    let dir = tempfile::tempdir().unwrap();
    // Different lengths make different files (a source is identified by its content).
    let spec = |frames: u32, content: Content| {
        let mut s = SynthSpec::simple(320, 240, 25, frames);
        s.shots = vec![Shot::new(frames, content)];
        s
    };
    let (a, b, c, flat) =
        (spec(50, Content::Texture), spec(51, Content::Texture), spec(52, Content::Texture), spec(50, Content::Bars));
    let (textured, textured2, textured3) = (&a, &b, &c);
    let videos = [
        (
            "lecture.mp4",
            textured,
            "Cardiac physiology lecture for medical students",
            "Professor explains the cardiac cycle with slides, part of a course for exam preparation.",
        ),
        (
            "surgery.mp4",
            textured2,
            "Laparoscopic cholecystectomy",
            "The surgeon removes the gallbladder in the operating room with laparoscopic instruments.",
        ),
        (
            "science.mp4",
            textured3,
            "Why do we get fevers? Health explained simply",
            "A short explainer for everyone about what a fever does, with everyday health tips.",
        ),
        (
            "cartoon.mp4",
            &flat,
            "How the heart pumps blood - animated",
            "A 3D animation showing blood flowing through the chambers of the heart.",
        ),
    ];
    let mut manifest = String::new();
    for (name, spec, title, desc) in videos {
        let p = dir.path().join(name);
        synth_video(&p, spec);
        manifest.push_str(&serde_json::json!({"uri": p, "title": title, "description": desc}).to_string());
        manifest.push('\n');
    }
    std::fs::write(dir.path().join("m.jsonl"), manifest).unwrap();
    let store = dir.path().join("store");
    run(&graph(dir.path(), ""), &store);
    let kept = rows(&store, "kept.jsonl");
    let failures = rows(&store, "failures.jsonl");
    assert!(failures.is_empty(), "{failures:?}");
    let class = |name: &str| -> String {
        let r = kept
            .iter()
            .find(|r| r["clip"]["uri"].as_str().unwrap_or("").ends_with(name))
            .unwrap_or_else(|| panic!("no clip of {name}: {kept:?}"));
        eprintln!("{name}: {} {} {}", r["labels"]["category"], r["labels"]["category_text"], r["scores"]);
        r["labels"]["category"].as_str().unwrap().to_string()
    };
    assert_eq!(class("lecture.mp4"), "teaching");
    assert_eq!(class("surgery.mp4"), "clinical practice");
    assert_eq!(class("science.mp4"), "popular science");
    assert_eq!(class("cartoon.mp4"), "animation");
    assert_eq!(class("echo_color3d_jpeg.dcm"), "imaging");

    // Rejecting a class re-decides from the memo.
    let summary = run(&graph(dir.path(), "reject = [\"animation\"]"), &store);
    let n = kept.len() as u64;
    assert_eq!((counter(&summary, "cat", "memo_hits"), counter(&summary, "cat", "memo_misses")), (n, 0));
    let dropped = rows(&store, "rejected.jsonl");
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0]["clip"]["uri"].as_str().unwrap().ends_with("cartoon.mp4"));

    // A bad prototypes file is a check-time error naming it.
    std::fs::write(dir.path().join("protos.json"), "{\"only\": [\"one class\"]}").unwrap();
    let (code, text) = check(&graph(dir.path(), "prototypes = \"protos.json\""));
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("protos.json") && text.contains("two classes"), "{text}");
}
