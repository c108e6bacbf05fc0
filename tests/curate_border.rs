//! `curate.black_border` through the `medgen` binary on synthetic letterboxed, pillarboxed,
//! windowboxed and clean videos with known bar widths; then the memo requirement: changing a
//! threshold or the mode recomputes no measurement and only changes decisions.
#![cfg(feature = "video")]

mod curate_common;

use curate_common::*;
use medgen_operators::video::synth::SynthSpec;
use std::path::{Path, PathBuf};

/// (file name, letterbox rows, pillarbox columns) of the test videos, 320×240, 7 s at 10 fps.
const VIDEOS: [(&str, u32, u32); 4] =
    [("letterbox.mp4", 30, 0), ("pillarbox.mp4", 0, 40), ("windowbox.mp4", 18, 26), ("clean.mp4", 0, 0)];

fn videos(dir: &Path) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, letterbox, pillarbox) in VIDEOS {
        let spec = SynthSpec { letterbox, pillarbox, ..SynthSpec::simple(320, 240, 10, 70) };
        synth_video(&data.join(name), &spec);
    }
}

fn graph(dir: &Path, border_params: &str) -> PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "border"

[nodes.raw]
op = "source.files"
paths = ["data/*.mp4"]

[nodes.seg]
op = "curate.segment"
inputs = ["raw"]
min_height = 240

[nodes.border]
op = "curate.black_border"
inputs = ["seg"]
{border_params}

[nodes.kept]
op = "sink.jsonl"
inputs = ["border"]
path = "kept.jsonl"

[nodes.dropped]
op = "sink.jsonl"
inputs = ["border.rejected"]
path = "rejected.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["border.failures", "seg.failures"]
path = "failures.jsonl"
"#
        ),
    )
    .unwrap();
    g
}

fn by_name<'a>(rows: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| uri(r).ends_with(name))
}

#[test]
fn borders_are_measured_within_two_pixels_and_thresholds_only_change_decisions() {
    let dir = tempfile::tempdir().unwrap();
    videos(dir.path());
    let store = dir.path().join("store");

    // 1. The paper's rule: drop clips with a persistent border on any side.
    let s1 = run(&graph(dir.path(), ""), &store);
    assert!(rows(&store, "failures.jsonl").is_empty(), "{:?}", rows(&store, "failures.jsonl"));
    let (kept, rejected) = (rows(&store, "kept.jsonl"), rows(&store, "rejected.jsonl"));
    assert_eq!((kept.len(), rejected.len()), (1, 3), "kept {kept:?}");
    for (name, lb, pb) in VIDEOS {
        let row = by_name(&kept, name).or_else(|| by_name(&rejected, name)).unwrap_or_else(|| panic!("{name} missing"));
        let w: Vec<f64> =
            ["border_top", "border_bottom", "border_left", "border_right"].iter().map(|k| score(row, k)).collect();
        eprintln!(
            "{name}: truth top/bottom {lb}, left/right {pb}; measured {w:?}, fractions {:?}",
            ["top", "bottom", "left", "right"]
                .iter()
                .map(|k| score(row, &format!("border_{k}_fraction")))
                .collect::<Vec<_>>()
        );
        for (measured, truth) in w.iter().zip([lb, lb, pb, pb]) {
            assert!((measured - truth as f64).abs() <= 2.0, "{name}: measured {w:?}, truth {lb}/{pb}");
        }
        assert_eq!(score(row, "border_frames"), 5.0);
        // segment's one decode measured the frames (curate::ticks): no second decode
        assert_eq!(label(row, "border_frames_from"), "segment");
        if lb == 0 && pb == 0 {
            assert_eq!(label(row, "border"), "none");
            assert!(row["labels"].get("rejected_by").is_none());
        } else {
            assert_eq!(label(row, "rejected_by"), "border");
            assert!(label(row, "reason").starts_with("persistent black border: "), "{}", label(row, "reason"));
        }
    }
    assert_eq!(counter(&s1, "border", "memo_misses"), 4);

    // 2. A threshold change: borders under 35 px no longer count. Nothing is measured again;
    //    the letterbox (30 px) and windowbox (18/26 px) clips are kept now.
    let s2 = run(&graph(dir.path(), "min_width_px = 35"), &store);
    assert_eq!((counter(&s2, "border", "memo_hits"), counter(&s2, "border", "memo_misses")), (4, 0));
    assert_eq!((counter(&s2, "seg", "memo_hits"), counter(&s2, "seg", "memo_misses")), (4, 0));
    let (kept, rejected) = (rows(&store, "kept.jsonl"), rows(&store, "rejected.jsonl"));
    assert_eq!((kept.len(), rejected.len()), (3, 1));
    assert!(by_name(&rejected, "pillarbox.mp4").is_some());
    assert_eq!(label(by_name(&kept, "letterbox.mp4").unwrap(), "border"), "none");

    // 3. Crop mode: everything kept, with the picture inside the bars. Still no measurement.
    let s3 = run(&graph(dir.path(), "mode = \"crop\"\npersist_fraction = 0.6"), &store);
    assert_eq!((counter(&s3, "border", "memo_hits"), counter(&s3, "border", "memo_misses")), (4, 0));
    let kept = rows(&store, "kept.jsonl");
    assert_eq!(kept.len(), 4);
    assert!(rows(&store, "rejected.jsonl").is_empty());
    for (name, lb, pb) in VIDEOS {
        let row = by_name(&kept, name).unwrap();
        let r: Vec<f64> = ["crop_x", "crop_y", "crop_width", "crop_height"].iter().map(|k| score(row, k)).collect();
        let truth = [pb, lb, 320 - 2 * pb, 240 - 2 * lb].map(|v| v as f64);
        assert!(
            r.iter().zip(truth).all(|(m, t)| (m - t).abs() <= 4.0 && m % 2.0 == 0.0),
            "{name}: crop {r:?}, truth {truth:?}"
        );
    }

    // 4. A measurement param (black_level) is part of the memo key: measured again, and as the
    //    digests were measured with the default, from frames decoded here — to the same widths.
    let s4 = run(&graph(dir.path(), "black_level = 30"), &store);
    assert_eq!(counter(&s4, "border", "memo_misses"), 4);
    let all = [rows(&store, "kept.jsonl"), rows(&store, "rejected.jsonl")].concat();
    assert_eq!(all.len(), 4);
    for (name, lb, pb) in VIDEOS {
        let row = by_name(&all, name).unwrap();
        assert_eq!(label(row, "border_frames_from"), "decode");
        let w: Vec<f64> =
            ["border_top", "border_bottom", "border_left", "border_right"].iter().map(|k| score(row, k)).collect();
        for (measured, truth) in w.iter().zip([lb, lb, pb, pb]) {
            assert!((measured - truth as f64).abs() <= 2.0, "{name} (decoded): measured {w:?}, truth {lb}/{pb}");
        }
    }
}

/// 4 s of `cockatoo.mp4` (real footage: a hand-held close-up with dark and bright areas) scaled to
/// 640×360, as is (`plain.mp4`) and letterboxed into 640×480 with 60-pixel black bars
/// (`letterboxed.mp4`), both re-encoded.
fn real_footage(dir: &Path) {
    use medgen_operators::video::decode::Decoder;
    use medgen_operators::video::encode::{EncodeSpec, Encoder};
    use medgen_operators::video::{DecodeSpec, PixelFormat, Size, TimeRange};
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let spec = DecodeSpec::all()
        .with_size(Size::Exact { width: 640, height: 360 })
        .with_range(TimeRange::new(0.0, 4.0))
        .with_format(PixelFormat::Rgb);
    let enc = EncodeSpec { fps: (20, 1), crf: 23, preset: "ultrafast".into(), ..EncodeSpec::default() };
    let mut plain = Encoder::create(&data.join("plain.mp4"), 640, 360, PixelFormat::Rgb, &enc).unwrap();
    let mut boxed = Encoder::create(&data.join("letterboxed.mp4"), 640, 480, PixelFormat::Rgb, &enc).unwrap();
    let mut padded = vec![0u8; 640 * 480 * 3];
    for f in Decoder::open(&sample("cockatoo.mp4"), &spec).unwrap() {
        let f = f.unwrap();
        plain.push_pixels(f.data()).unwrap();
        padded[60 * 640 * 3..420 * 640 * 3].copy_from_slice(f.data());
        boxed.push_pixels(&padded).unwrap();
    }
    plain.finish().unwrap();
    boxed.finish().unwrap();
}

#[test]
fn real_footage_letterboxed_is_measured_and_clean_footage_has_no_border() {
    let dir = tempfile::tempdir().unwrap();
    real_footage(dir.path());
    let store = dir.path().join("store");
    let g = graph(dir.path(), "");
    let text = std::fs::read_to_string(&g)
        .unwrap()
        .replace("min_height = 240", "min_height = 360\nmin_seconds = 2.0\ntau = 0.0\ncut_detection = false");
    std::fs::write(&g, text).unwrap();
    run(&g, &store);
    assert!(rows(&store, "failures.jsonl").is_empty(), "{:?}", rows(&store, "failures.jsonl"));
    let (kept, rejected) = (rows(&store, "kept.jsonl"), rows(&store, "rejected.jsonl"));
    assert_eq!((kept.len(), rejected.len()), (1, 1), "{kept:?} {rejected:?}");
    let boxed = by_name(&rejected, "letterboxed.mp4").unwrap();
    let w: Vec<f64> =
        ["border_top", "border_bottom", "border_left", "border_right"].iter().map(|k| score(boxed, k)).collect();
    eprintln!("letterboxed cockatoo: truth [60, 60, 0, 0], measured {w:?}");
    assert!((w[0] - 60.0).abs() <= 2.0 && (w[1] - 60.0).abs() <= 2.0 && w[2] == 0.0 && w[3] == 0.0, "{w:?}");
    let plain = by_name(&kept, "plain.mp4").unwrap();
    assert_eq!(label(plain, "border"), "none");
}

/// A letterboxed recording stored turned 90° is shown pillarboxed: segment's digests (measured on
/// stored YUV frames) and a decode (`black_level` off the default) both measure the shown
/// picture, and its clips are sized as shown.
#[test]
fn turned_recordings_are_measured_as_shown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let stored = dir.path().join("letterbox.mp4");
    synth_video(&stored, &SynthSpec { letterbox: 30, ..SynthSpec::simple(320, 240, 10, 70) });
    medgen_operators::video::synth::turned_copies(&stored, &data, &[90]).unwrap();
    for (params, from) in [("", "segment"), ("black_level = 41", "decode")] {
        let store = dir.path().join(format!("store-{from}"));
        run(&graph(dir.path(), params), &store);
        assert!(rows(&store, "failures.jsonl").is_empty(), "{:?}", rows(&store, "failures.jsonl"));
        let rejected = rows(&store, "rejected.jsonl");
        assert_eq!(rejected.len(), 1, "{from}: {rejected:?}");
        let row = &rejected[0];
        assert_eq!(label(row, "border_frames_from"), from);
        let w: Vec<f64> =
            ["border_top", "border_bottom", "border_left", "border_right"].iter().map(|k| score(row, k)).collect();
        assert!(
            w[0] == 0.0 && w[1] == 0.0 && (w[2] - 30.0).abs() <= 2.0 && (w[3] - 30.0).abs() <= 2.0,
            "{from}: {w:?}"
        );
        let clip = &row["clip"];
        assert_eq!((clip["width"].as_u64(), clip["height"].as_u64()), (Some(240), Some(320)), "{from}: {row}");
    }
}
