//! `curate.dedup` through the `medgen` binary: a compression-distorted copy of a real video
//! (different bytes, so a different source and clip id, same pictures) is removed exactly once, distinct videos stay,
//! changing the decision params hashes nothing again, and in a watching run deleting the kept one
//! re-admits the copy (a retraction through the LSH join and the reduce).
#![cfg(feature = "video")]

mod curate_common;

use curate_common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn graph(dir: &Path, dedup_params: &str) -> PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "dedup"

[nodes.raw]
op = "source.files"
paths = ["data/*.mp4"]

[nodes.seg]
op = "curate.segment"
inputs = ["raw"]
# one clip per video, whatever happens in it: this test is about dedup, not segmentation
min_height = 100
min_seconds = 2.0
max_seconds = 20.0
tau = 0.0
cut_detection = false

[nodes.dedup]
op = "curate.dedup"
inputs = ["seg"]
{dedup_params}

[nodes.kept]
op = "sink.jsonl"
inputs = ["dedup"]
path = "kept.jsonl"

[nodes.dropped]
op = "sink.jsonl"
inputs = ["dedup.rejected"]
path = "rejected.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["dedup.failures", "seg.failures"]
path = "failures.jsonl"
"#
        ),
    )
    .unwrap();
    g
}

fn names(rows: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| uri(r).rsplit('/').next().unwrap_or_default().to_string()).collect();
    v.sort();
    v
}

#[test]
fn a_distorted_copy_is_removed_once_and_comes_back_when_the_original_goes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // carphone_pristine.mp4 and carphone_distorted.mp4 (176×144, 4 s): the same pictures, the
    // second degraded by compression (different files, so different sources and clip ids).
    // Plus two different videos.
    for (name, sample_name) in [
        ("pristine.mp4", "carphone_pristine.mp4"),
        ("distorted.mp4", "carphone_distorted.mp4"),
        ("hello.mp4", "movie-hello.mp4"),
        ("city.mp4", "cityCC0.mpg"),
    ] {
        std::fs::copy(sample(sample_name), data.join(name)).unwrap();
    }

    let store = dir.path().join("store");
    let s1 = run(&graph(dir.path(), ""), &store);
    assert!(rows(&store, "failures.jsonl").is_empty(), "{:?}", rows(&store, "failures.jsonl"));
    let (kept, rejected) = (rows(&store, "kept.jsonl"), rows(&store, "rejected.jsonl"));
    assert_eq!(kept.len(), 3, "{:?}", names(&kept));
    assert_eq!(rejected.len(), 1, "{:?}", names(&rejected));
    // Of the two copies, the clip with the larger clip id goes, naming the other.
    let pair: Vec<&serde_json::Value> = kept
        .iter()
        .chain(&rejected)
        .filter(|r| ["pristine.mp4", "distorted.mp4"].iter().any(|n| uri(r).ends_with(n)))
        .collect();
    assert_eq!(pair.len(), 2);
    let ids: Vec<&str> = pair.iter().map(|r| r["clip"]["clip_id"].as_str().unwrap()).collect();
    let (small, large) = if ids[0] < ids[1] { (ids[0], ids[1]) } else { (ids[1], ids[0]) };
    assert_eq!(rejected[0]["clip"]["clip_id"], large);
    assert_eq!(label(&rejected[0], "duplicate_of"), small);
    assert_eq!(label(&rejected[0], "rejected_by"), "dedup");
    let d = score(&rejected[0], "duplicate_distance");
    eprintln!(
        "distorted copy: mean hash distance {d} bits; hashes {} vs {}",
        label(pair[0], "phash"),
        label(pair[1], "phash")
    );
    assert!(d <= 6.0);
    assert_eq!(counter(&s1, "dedup", "memo_misses"), 4);
    // The hashes come from segment's one decode (curate::ticks), not from a second one.
    assert!(kept.iter().chain(&rejected).all(|r| label(r, "phash_frames_from") == "segment"));

    // Decision params only: nothing is hashed again, and a threshold below the pair's distance
    // keeps both.
    let s2 = run(&graph(dir.path(), &format!("max_distance = {}\nbands = 8", d - 0.5)), &store);
    assert_eq!((counter(&s2, "dedup", "memo_hits"), counter(&s2, "dedup", "memo_misses")), (4, 0));
    assert!(rows(&store, "rejected.jsonl").is_empty());
    assert_eq!(rows(&store, "kept.jsonl").len(), 4);

    // Without segment's frame digests dedup decodes its frames itself: the same decision.
    let g = graph(dir.path(), "");
    let text = std::fs::read_to_string(&g)
        .unwrap()
        .replace("cut_detection = false", "cut_detection = false\nframe_digests = false");
    std::fs::write(&g, text).unwrap();
    let s3 = run(&g, &store);
    assert_eq!(counter(&s3, "dedup", "memo_misses"), 4);
    let (kept, rejected) = (rows(&store, "kept.jsonl"), rows(&store, "rejected.jsonl"));
    assert_eq!((kept.len(), rejected.len()), (3, 1), "{:?} / {:?}", names(&kept), names(&rejected));
    assert_eq!(rejected[0]["clip"]["clip_id"], large);
    assert!(kept.iter().chain(&rejected).all(|r| label(r, "phash_frames_from") == "decode"));

    // The kept one of the pair is deleted while a watching run is live: its retraction flows
    // through the LSH join and the reduce, and the copy is admitted again.
    let kept_row = pair.iter().find(|r| r["clip"]["clip_id"] == small).unwrap();
    let kept_name = uri(kept_row).rsplit('/').next().unwrap().to_string();
    let g = graph(dir.path(), "");
    let text = std::fs::read_to_string(&g).unwrap().replace(
        "paths = [\"data/*.mp4\"]",
        "paths = [\"data/*.mp4\"]\nwatch = true\npoll_seconds = 0.1\nsettle_seconds = 0.0",
    );
    std::fs::write(&g, text).unwrap();
    let watch_store = store.clone();
    let child = medgen()
        .args(["run", "-q", "--store"])
        .arg(&watch_store)
        .arg(&g)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Guard(Some(child));
    wait_for("the first epoch", || {
        rows(&watch_store, "kept.jsonl").len() == 3 && rows(&watch_store, "rejected.jsonl").len() == 1
    });
    std::fs::remove_file(data.join(&kept_name)).unwrap();
    wait_for("the retraction", || {
        rows(&watch_store, "rejected.jsonl").is_empty() && rows(&watch_store, "kept.jsonl").len() == 3
    });
    let kept = rows(&watch_store, "kept.jsonl");
    assert!(!names(&kept).contains(&kept_name), "{:?}", names(&kept));
    assert!(names(&kept).iter().any(|n| n == "pristine.mp4" || n == "distorted.mp4"));
    let c = child.0.take().unwrap();
    assert!(Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap().success());
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Kills the child if the test fails before stopping it.
struct Guard(Option<std::process::Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
