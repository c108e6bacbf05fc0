//! `curate.camera_motion` on synthetic camera paths with known motion (pan, tilt, zoom, shake,
//! still), and on a still camera watching a moving object.
#![cfg(feature = "video")]

mod curate_common;

use curate_common::*;
use medgen_operators::video::synth::{self, CameraPath, Content, Shot, SynthSpec};
use std::path::{Path, PathBuf};

fn graph(dir: &Path, params: &str) -> PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "motion"

[nodes.raw]
op = "source.files"
paths = ["data/*.mp4"]

[nodes.seg]
op = "curate.segment"
inputs = ["raw"]
min_seconds = 2.0
min_height = 160
tau = 0.0
cut_detection = false

[nodes.motion]
op = "curate.camera_motion"
inputs = ["seg"]
{params}

[nodes.kept]
op = "sink.jsonl"
inputs = ["motion"]
path = "kept.jsonl"

[nodes.dropped]
op = "sink.jsonl"
inputs = ["motion.rejected"]
path = "rejected.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["motion.failures", "seg.failures"]
path = "failures.jsonl"
"#
        ),
    )
    .unwrap();
    g
}

fn class_of<'a>(rows: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    let r = rows
        .iter()
        .find(|r| r["clip"]["uri"].as_str().unwrap_or("").ends_with(name))
        .unwrap_or_else(|| panic!("no row for {name}: {rows:?}"));
    &r["labels"]["camera_motion"]
}

#[test]
fn synthetic_camera_paths_get_their_class_and_thresholds_recompute_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (w, h, fps, n) = (320, 180, 30, 120);
    let paths = [
        ("static.mp4", CameraPath::Static),
        ("pan.mp4", CameraPath::Pan { rate: 0.2 }),
        ("tilt.mp4", CameraPath::Tilt { rate: 0.2 }),
        ("zoom.mp4", CameraPath::Zoom { rate: 0.15 }),
        ("shaky.mp4", CameraPath::Shaky { amplitude: 0.02 }),
    ];
    for (name, path) in paths {
        synth::camera_video(&data.join(name), w, h, fps, n, path).unwrap();
    }
    // A still camera on a moving square: object motion, not camera motion.
    let mut spec = SynthSpec::simple(w, h, fps, n);
    spec.shots = vec![Shot::new(n, Content::Texture)];
    synth_video(&data.join("object.mp4"), &spec);

    let store = dir.path().join("store");
    let g = graph(dir.path(), "");
    run(&g, &store);
    let rows = rows(&store, "kept.jsonl");
    eprintln!(
        "{}",
        rows.iter()
            .map(|r| format!("{} {} {}\n", r["clip"]["uri"], r["labels"]["camera_motion"], r["scores"]))
            .collect::<String>()
    );
    assert_eq!(rows.len(), 6, "{rows:?}");
    for (name, want) in [
        ("static.mp4", "static"),
        ("pan.mp4", "pan"),
        ("tilt.mp4", "tilt"),
        ("zoom.mp4", "zoom"),
        ("shaky.mp4", "shaky"),
        ("object.mp4", "static"),
    ] {
        assert_eq!(class_of(&rows, name), want, "{name}");
    }
    let pan = rows.iter().find(|r| r["clip"]["uri"].as_str().unwrap().ends_with("pan.mp4")).unwrap();
    let rate = pan["scores"]["camera_pan"].as_f64().unwrap();
    assert!((rate - 0.2).abs() < 0.03, "pan rate {rate}, truth 0.2 widths/s");
    let zoom = rows.iter().find(|r| r["clip"]["uri"].as_str().unwrap().ends_with("zoom.mp4")).unwrap();
    let rate = zoom["scores"]["camera_zoom"].as_f64().unwrap();
    assert!((rate - 0.15).abs() < 0.03, "zoom rate {rate}, truth 0.15/s");

    // Dropping shaky clips only re-decides: every measurement comes from the memo.
    let g = graph(dir.path(), "reject = [\"shaky\"]");
    let summary = run(&g, &store);
    assert_eq!((counter(&summary, "motion", "memo_hits"), counter(&summary, "motion", "memo_misses")), (6, 0));
    let dropped = curate_common::rows(&store, "rejected.jsonl");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(class_of(&dropped, "shaky.mp4"), "shaky");
    assert_eq!(curate_common::rows(&store, "kept.jsonl").len(), 5);
}
