//! Keyframe-accurate sampling (`accuracy = "keyframe"`): the nearest keyframe to each wanted
//! time, decoding only keyframes, on small `videotestsrc` files with a keyframe every 45 frames
//! (1.5 s at 30 fps, x264 `ultrafast`, which adds no scene-cut keyframes); and the check-time
//! error for keyframe accuracy without a sampling.
#![cfg(feature = "video")]

use medgen::graph;
use medgen_operators::api::{ItemCtx, MemServices, Record, Services, Video};
use medgen_operators::registry::Registry;
use medgen_operators::video::blob::FramesReader;
use medgen_operators::video::decode::{DecodeParams, Decoder, decode_all, decode_record};
use medgen_operators::video::synth::{self, TestPattern, TestSrc};
use medgen_operators::video::{Accuracy, DecodeSpec, DecodeStats, Frame, PixelFormat, Sampling, TimeRange};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Seconds between keyframes of the test file.
const KEYINT_S: f64 = 1.5;

/// A 10-second 320×240 file at 30 fps, keyframes every 1.5 s (0, 1.5, …, 9).
fn test_file(dir: &Path) -> PathBuf {
    let path = dir.join("k45.mp4");
    let t = TestSrc {
        width: 320,
        height: 240,
        fps: 30,
        frames: 300,
        keyint: 45,
        preset: "ultrafast".into(),
        pattern: TestPattern::MovingBars,
    };
    synth::testsrc_video(&path, &t).unwrap();
    path
}

fn decode(path: &Path, spec: &DecodeSpec) -> (Vec<Frame>, DecodeStats) {
    let mut dec = Decoder::open(path, spec).unwrap();
    let frames: Vec<Frame> = dec.by_ref().map(|f| f.unwrap()).collect();
    (frames, dec.stats())
}

fn times(frames: &[Frame]) -> Vec<f64> {
    frames.iter().map(|f| (f.pts_s * 1000.0).round() / 1000.0).collect()
}

/// Every frame is on the keyframe grid, and the one nearest its wanted time.
fn assert_keyframes(frames: &[Frame], ticks: &[f64], all: &[Frame]) {
    for f in frames {
        let k = f.pts_s / KEYINT_S;
        assert!((k - k.round()).abs() < 1e-6, "{} s is not a keyframe time", f.pts_s);
        // the same picture as a full decode's frame at that time
        let i = (f.pts_s * 30.0).round() as usize;
        assert_eq!(f.data(), all[i].data(), "the keyframe at {} s is frame {i}", f.pts_s);
    }
    for t in ticks {
        let nearest = frames.iter().map(|f| (f.pts_s - t).abs()).fold(f64::INFINITY, f64::min);
        assert!(nearest <= KEYINT_S / 2.0 + 1e-6, "tick {t}: nearest returned frame is {nearest} s away");
    }
    let mut sorted = times(frames);
    sorted.dedup();
    assert_eq!(sorted.len(), frames.len(), "no frame twice: {:?}", times(frames));
}

#[test]
fn keyframe_sampling_returns_nearest_keyframes_and_decodes_far_fewer_frames() {
    let dir = tempfile::tempdir().unwrap();
    let src = test_file(dir.path());
    let gray = DecodeSpec::all().with_format(PixelFormat::Gray);
    let (all, _) = decode(&src, &gray);
    assert_eq!(all.len(), 300);

    // 1 fps: ticks 0..9; 1 and 2 both pick 1.5, 4 and 5 pick 4.5, 7 and 8 pick 7.5
    let one_fps = gray.clone().with_sampling(Sampling::Fps { fps: 1.0 });
    let (exact, exact_stats) = decode(&src, &one_fps);
    assert_eq!(times(&exact), (0..10).map(|i| i as f64).collect::<Vec<_>>());
    let (key, key_stats) = decode(&src, &one_fps.clone().with_accuracy(Accuracy::Keyframe));
    assert_eq!(times(&key), vec![0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0]);
    let ticks: Vec<f64> = (0..10).map(|i| i as f64).collect();
    assert_keyframes(&key, &ticks, &all);
    // only the 7 keyframes are decoded; the other 293 frames never reach the decoder
    assert!(key_stats.decoded <= 8, "keyframe mode decoded {key_stats:?}");
    assert!(key_stats.skipped >= 280, "non-key frames dropped before the decoder: {key_stats:?}");
    assert_eq!(key_stats.delivered, 7);
    assert!(
        exact_stats.decoded >= 5 * key_stats.decoded,
        "exact {} vs keyframe {} frames decoded",
        exact_stats.decoded,
        key_stats.decoded
    );
    assert_eq!(exact_stats.skipped, 0);
    eprintln!("1 fps: exact {exact_stats:?}; keyframe {key_stats:?}");

    // explicit times, unsorted; 0.1 and 0.5 share keyframe 0
    let ts = Sampling::Timestamps { times_s: vec![8.9, 0.1, 0.5, 5.0] };
    let (key, _) = decode(&src, &gray.clone().with_sampling(ts).with_accuracy(Accuracy::Keyframe));
    assert_eq!(times(&key), vec![0.0, 4.5, 9.0]);
    assert_keyframes(&key, &[0.1, 0.5, 5.0, 8.9], &all);
}

#[test]
fn uniform_count_five_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let src = test_file(dir.path());
    let all = decode_all(&src, &DecodeSpec::all().with_format(PixelFormat::Gray)).unwrap();
    // centres of 5 spans of 2 s: 1, 3, 5, 7, 9
    let five = DecodeSpec::all().with_format(PixelFormat::Gray).with_sampling(Sampling::Uniform { count: 5 });
    let (exact, _) = decode(&src, &five);
    assert_eq!(times(&exact), vec![1.0, 3.0, 5.0, 7.0, 9.0]);
    let (key, stats) = decode(&src, &five.clone().with_accuracy(Accuracy::Keyframe));
    assert_eq!(times(&key), vec![1.5, 3.0, 4.5, 7.5, 9.0]);
    assert_keyframes(&key, &[1.0, 3.0, 5.0, 7.0, 9.0], &all);
    assert!(stats.decoded <= 12, "{stats:?}");

    // through the operator: the blob holds the keyframes with their real times, no frame rate
    let services = MemServices::new(&dir.path().join("store"));
    let video = Record::Video(Video {
        source_id: "s".into(),
        uri: src.display().to_string(),
        size_bytes: 0,
        probe: None,
        metadata: BTreeMap::new(),
    });
    let p =
        DecodeParams { count: Some(5), accuracy: Accuracy::Keyframe, format: PixelFormat::Gray, ..Default::default() };
    let ctx = ItemCtx {
        attempt: 1,
        deadline: Instant::now() + Duration::from_secs(60),
        shutdown: Arc::new(AtomicBool::new(false)),
    };
    let out = decode_record(&video, &p, &services, &ctx).unwrap();
    let Record::Video(v) = &out[0] else { panic!("{out:?}") };
    assert_eq!((v.metadata["frames_count"].as_str(), v.metadata["frames_fps"].as_str()), ("5", "0"));
    let blob: Vec<f64> = FramesReader::open(&services.blob_path(&v.metadata["frames_blob"]))
        .unwrap()
        .map(|f| (f.unwrap().pts_s * 1000.0).round() / 1000.0)
        .collect();
    assert_eq!(blob, vec![1.5, 3.0, 4.5, 7.5, 9.0]);

    // a range: only keyframes inside it (1.5 and 9 are outside [2, 8))
    let ranged = five.clone().with_range(TimeRange::new(2.0, 8.0)).with_accuracy(Accuracy::Keyframe);
    let (key, _) = decode(&src, &ranged);
    assert!(key.iter().all(|f| (2.0..8.0).contains(&f.pts_s)), "{:?}", times(&key));
    // ticks 2.6, 3.8, 5, 6.2, 7.4 → 3, 4.5, 6, 7.5
    assert_eq!(times(&key), vec![3.0, 4.5, 6.0, 7.5]);

    // a range holding no keyframe is sampled exactly: the frames shown at 3.425 and 4.075 s
    let no_key = DecodeSpec::all()
        .with_format(PixelFormat::Gray)
        .with_sampling(Sampling::Uniform { count: 2 })
        .with_range(TimeRange::new(3.1, 4.4));
    let (exact, _) = decode(&src, &no_key);
    let (key, _) = decode(&src, &no_key.clone().with_accuracy(Accuracy::Keyframe));
    assert_eq!(times(&exact), vec![3.4, 4.067]);
    assert_eq!(times(&key), times(&exact));
    assert_eq!(key[1].data(), exact[1].data());
}

#[test]
fn keyframe_accuracy_without_a_sampling_fails_at_check_time() {
    let registry = Registry::builtin();
    // load_str resolves relative paths against this (virtual) file's folder
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphs/good/keyframe_sampling.toml");
    let graph = |decode: &str| {
        format!(
            "[graph]\nname = \"kf\"\n\n[nodes.raw]\nop = \"source.files\"\npaths = [\"../data/videos/*.mp4\"]\n\n\
             [nodes.frames]\nop = \"video.decode\"\ninputs = [\"raw\"]\n{decode}\n\n\
             [nodes.out]\nop = \"sink.jsonl\"\ninputs = [\"frames\"]\npath = \"frames.jsonl\"\n"
        )
    };
    let diags = graph::load_str(&graph("accuracy = \"keyframe\""), &path, &registry).unwrap_err();
    let text = graph::render_diagnostics(&diags);
    assert!(text.contains("accuracy") && text.contains("keyframe") && text.contains("`fps`"), "{text}");
    for ok in ["accuracy = \"keyframe\"\nfps = 1.0", "accuracy = \"keyframe\"\ncount = 5", "accuracy = \"exact\""] {
        if let Err(d) = graph::load_str(&graph(ok), &path, &registry) {
            panic!("{ok}: {}", graph::render_diagnostics(&d));
        }
    }
    let diags = graph::load_str(&graph("accuracy = \"nearest\"\nfps = 1.0"), &path, &registry).unwrap_err();
    assert!(graph::render_diagnostics(&diags).contains("accuracy"));
    // documented in `medgen ops video.decode`, default exact
    let op = registry.get("video.decode").unwrap();
    let schema = serde_json::to_value(op.params_schema()).unwrap();
    let accuracy = &schema["properties"]["accuracy"];
    assert_eq!(accuracy["default"], "exact", "{accuracy}");
    assert!(accuracy.to_string().contains("half the keyframe interval"), "{accuracy}");
    // memo keys: unchanged for exact (the default), different for keyframe
    let key = |toml: &str| op.fingerprint(&op.parse_params(toml.parse().unwrap()).unwrap());
    assert_eq!(key("fps = 1.0"), key("fps = 1.0\naccuracy = \"exact\""));
    assert!(!key("fps = 1.0").contains("accuracy"));
    assert_ne!(key("fps = 1.0"), key("fps = 1.0\naccuracy = \"keyframe\""));
    // and the library refuses it too
    let e =
        Decoder::open(Path::new("/nonexistent.mp4"), &DecodeSpec::all().with_accuracy(Accuracy::Keyframe)).unwrap_err();
    assert!(e.to_string().contains("keyframe accuracy needs a sampling"), "{e}");
}
