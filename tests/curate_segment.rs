//! `curate.segment` through the `medgen` binary: the known cut of a real sample becomes a clip
//! boundary, synthetic shots with ground truth become clips that never straddle a shot boundary,
//! the resolution floor rejects (not fails) small videos, and changing a threshold re-decodes
//! nothing.
#![cfg(feature = "video")]

mod curate_common;

use curate_common::*;
use medgen_operators::video::synth::{Content, Shot, SynthSpec};
use std::path::Path;

fn graph(dir: &Path, paths: &str, params: &str) -> std::path::PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "segment"

[nodes.raw]
op = "source.files"
paths = [{paths}]

[nodes.seg]
op = "curate.segment"
inputs = ["raw"]
{params}

[nodes.clips]
op = "sink.jsonl"
inputs = ["seg"]
path = "clips.jsonl"

[nodes.rejected]
op = "sink.jsonl"
inputs = ["seg.rejected"]
path = "rejected.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["seg.failures"]
path = "failures.jsonl"
"#
        ),
    )
    .unwrap();
    g
}

#[test]
fn city_sample_cut_at_frame_115_is_a_clip_boundary_and_480p_floor_rejects_it() {
    let dir = tempfile::tempdir().unwrap();
    let city = sample("cityCC0.mpg"); // 720×405, 25 fps, 7.36 s, a hard cut at frame 115 (4.6 s)
    let paths = format!("{:?}", city.to_string_lossy());
    // Short clips allowed so both shots (4.6 s and 2.76 s) become clips; the floor lowered to 405p.
    let g = graph(dir.path(), &paths, "min_height = 400\nmin_seconds = 2.0\nmax_seconds = 10.0");
    let store = dir.path().join("store");
    let s = run(&g, &store);
    let clips = rows(&store, "clips.jsonl");
    let spans: Vec<(f64, f64)> = clips.iter().map(span).collect();
    eprintln!("cityCC0 clips: {spans:?}");
    assert!(rows(&store, "failures.jsonl").is_empty());
    // Times are on the stream's timeline, which starts at 0.54 s in this MPEG program stream;
    // the cut is 115 frames (4.6 s) after the first frame, give or take one frame.
    let t0 = spans.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
    assert!((t0 - 0.54).abs() < 0.001, "first frame at {t0}");
    let cut = t0 + 115.0 / 25.0;
    assert!(spans.iter().any(|(_, e)| (e - cut).abs() <= 0.041), "no clip ends at the cut (4.6 s): {spans:?}");
    assert!(spans.iter().any(|(a, _)| (a - cut).abs() <= 0.041), "no clip starts at the cut (4.6 s): {spans:?}");
    assert!(spans.iter().all(|(a, e)| !(*a < cut - 0.05 && *e > cut + 0.05)), "a clip straddles the cut: {spans:?}");
    let first = clips.iter().find(|c| (span(c).1 - cut).abs() <= 0.041).unwrap();
    assert_eq!(first["metadata"]["segment_end"], "cut");
    // where the program stream's pictures start, for transcripts (which count from there)
    assert_eq!(first["metadata"]["stream_start_s"], "0.540000");
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64(), first["fps"].as_f64()),
        (Some(720), Some(405), Some(25.0))
    );
    assert_eq!(first["clip_id"].as_str().unwrap().len(), 64);
    assert_eq!(counter(&s, "seg", "memo_misses"), 1);

    // The paper's default floor (480p): no clips, the video on `rejected` with the reason, no failure.
    let dir2 = tempfile::tempdir().unwrap();
    let g = graph(dir2.path(), &paths, "");
    let store = dir2.path().join("store");
    run(&g, &store);
    assert!(rows(&store, "clips.jsonl").is_empty());
    assert!(rows(&store, "failures.jsonl").is_empty());
    let rejected = rows(&store, "rejected.jsonl");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["kind"], "video");
    assert_eq!(rejected[0]["metadata"]["rejected_by"], "seg");
    assert_eq!(rejected[0]["metadata"]["reason"], "resolution 720×405: shorter side 405 is below min_height = 480");
}

#[test]
fn synthetic_shots_become_clips_within_shots_and_thresholds_reuse_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    // 10 fps, 31 s: bars 0–7 s | cut | gradient 7–20 s | 2 s cross-fade | checker to 28 s | cut | texture 28–31 s.
    let spec = SynthSpec {
        fps: (10, 1),
        shots: vec![
            Shot::new(70, Content::Bars),
            Shot::new(130, Content::Gradient),
            Shot::new(80, Content::Checker).fade_in(20),
            Shot::new(30, Content::Texture),
        ],
        ..SynthSpec::simple(320, 240, 10, 1)
    };
    let video = dir.path().join("shots.mp4");
    let gt = synth_video(&video, &spec);
    assert_eq!((gt.cuts.clone(), gt.fades.clone()), (vec![70, 280], vec![(200, 220)]));
    let g = graph(dir.path(), &format!("{:?}", video.to_string_lossy()), "min_height = 240");
    let store = dir.path().join("store");
    let s1 = run(&g, &store);
    let mut spans: Vec<(f64, f64)> = rows(&store, "clips.jsonl").iter().map(span).collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("synthetic clips: {spans:?}");
    // Shot intervals (seconds) outside the fade; a clip may overlap only one of them.
    let shots = [(0.0, 7.0), (7.0, 20.0), (22.0, 28.0), (28.0, 31.0)];
    for (a, e) in &spans {
        let overlapped = shots.iter().filter(|(s, t)| a < &(t - 0.05) && e > &(s + 0.05)).count();
        assert_eq!(overlapped, 1, "clip [{a}, {e}) straddles a shot boundary: {spans:?}");
        assert!(e - a >= 6.0 - 0.05 && e - a <= 10.0 + 0.05, "clip length {}: {spans:?}", e - a);
    }
    // The first shot is one clip ending exactly at the cut; the 13 s gradient shot is split in two;
    // the checker shot ends exactly at the second cut; the 3 s texture shot gives nothing.
    assert!((spans[0].0 - 0.0).abs() < 1e-6 && (spans[0].1 - 7.0).abs() < 0.051, "{spans:?}");
    assert!((spans[1].0 - 7.0).abs() < 0.051, "{spans:?}");
    assert_eq!(spans.iter().filter(|(a, e)| *a >= 6.9 && *e <= 21.1).count(), 2, "{spans:?}");
    assert!(spans.iter().any(|(_, e)| (e - 28.0).abs() < 0.051), "{spans:?}");
    assert!(spans.iter().all(|(_, e)| *e <= 28.05), "{spans:?}");
    assert_eq!(spans.len(), 4, "{spans:?}");
    assert_eq!(counter(&s1, "seg", "memo_misses"), 1);

    // New lengths and tau: new decisions from the cached signal (the pool recomputes the decision,
    // the video is not decoded again): with max_seconds = 20 the gradient shot is one clip, and
    // with min_seconds = 6.9 the 6 s checker shot is too short.
    let g = graph(
        dir.path(),
        &format!("{:?}", video.to_string_lossy()),
        "min_height = 240\nmin_seconds = 6.9\nmax_seconds = 20.0\ntau = 0.4",
    );
    let started = std::time::Instant::now();
    run(&g, &store);
    let rerun = started.elapsed();
    let spans2: Vec<(f64, f64)> = rows(&store, "clips.jsonl").iter().map(span).collect();
    eprintln!("rerun clips: {spans2:?} in {rerun:?}");
    assert_eq!(spans2.len(), 2, "{spans2:?}");
    assert!(
        spans2.iter().any(|(a, e)| (a - 7.0).abs() < 0.051 && (20.0..=22.0).contains(e)),
        "the gradient shot is one clip now: {spans2:?}"
    );
}
