//! The bad-input corpus: zero-byte, truncated, wrong-extension, corrupt-bitstream, audio-only,
//! 1-frame, huge-dimension, odd-dimension, non-video files and unreadable paths. Each gives its
//! expected failure (class and reason) within the per-item timeout — through the library, and
//! through a whole graph run where nothing else is lost. No panic, no hang, no leaked threads.
#![cfg(feature = "video")]

use medgen_operators::api::{ErrorClass, ItemCtx, MemServices, Record, Video};
use medgen_operators::video::decode::{DecodeParams, Decoder, decode_record};
use medgen_operators::video::probe::{ProbeParams, probe_record};
use medgen_operators::video::synth::{self, BadInput, Expect};
use medgen_operators::video::{Accuracy, DecodeSpec, Sampling, Size};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const ITEM_TIMEOUT: Duration = Duration::from_secs(20);

fn params<T: serde::de::DeserializeOwned>(toml: &str) -> T {
    toml::from_str(toml).unwrap()
}

fn video(path: &Path) -> Record {
    Record::Video(Video {
        source_id: path.file_name().unwrap().to_string_lossy().into_owned(),
        uri: path.display().to_string(),
        size_bytes: 0,
        probe: None,
        metadata: BTreeMap::new(),
    })
}

/// What a graph `video.probe -> video.decode` does with one file: Ok or the first failure.
fn probe_then_decode(path: &Path, services: &MemServices) -> Result<Record, (ErrorClass, String)> {
    let ctx =
        ItemCtx { attempt: 1, deadline: Instant::now() + ITEM_TIMEOUT, shutdown: Arc::new(AtomicBool::new(false)) };
    let probe: ProbeParams = params("");
    let decode: DecodeParams = params("fps = 2.0\nwidth = 64\nheight = 64");
    let probed = probe_record(&video(path), &probe, &ctx).map_err(|e| (e.class, e.message))?;
    let decoded = decode_record(&probed[0], &decode, services, &ctx).map_err(|e| (e.class, e.message))?;
    Ok(decoded[0].clone())
}

fn check(b: &BadInput, outcome: &Result<Record, (ErrorClass, String)>) {
    match (&b.expect, outcome) {
        (Expect::Ok, Ok(_)) => {}
        (Expect::Ok, Err(e)) => panic!("{}: expected to decode, failed with {e:?}", b.name),
        (Expect::Fail(class, text), Err((c, msg))) => {
            assert_eq!(c, class, "{}: class (message: {msg})", b.name);
            assert!(
                msg.to_lowercase().contains(&text.to_lowercase()),
                "{}: message `{msg}` should mention `{text}`",
                b.name
            );
            assert!(msg.contains(b.name), "{}: the message names the file: {msg}", b.name);
        }
        (Expect::Fail(..), Ok(r)) => panic!("{}: expected a failure, got {r:?}", b.name),
    }
}

#[test]
fn every_bad_input_gives_its_failure_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = synth::bad_inputs(dir.path()).unwrap();
    assert!(corpus.len() >= 13);
    let services = MemServices::new(&dir.path().join("store"));
    for b in &corpus {
        let started = Instant::now();
        let outcome = probe_then_decode(&b.path, &services);
        assert!(started.elapsed() < ITEM_TIMEOUT, "{}: took {:?}", b.name, started.elapsed());
        match &outcome {
            Ok(_) => eprintln!("{:<24} ok ({:?})", b.name, started.elapsed()),
            Err((c, m)) => eprintln!("{:<24} {c} ({:?}): {m}", b.name, started.elapsed()),
        }
        check(b, &outcome);
    }
    // the odd-sized video decodes to even frames when fitted, and natively to its own size
    let odd = corpus.iter().find(|b| b.name.starts_with("odd")).unwrap();
    let f = Decoder::open(&odd.path, &DecodeSpec::all().with_size(Size::Fit { width: 100, height: 100 }))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!((f.width % 2, f.height % 2), (0, 0));
    let f = Decoder::open(&odd.path, &DecodeSpec::all()).unwrap().next().unwrap().unwrap();
    assert_eq!((f.width, f.height), (321, 241));
}

#[test]
fn the_decoder_api_refuses_bad_inputs_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = synth::bad_inputs(dir.path()).unwrap();
    // keyframe accuracy decodes only keyframes, and must fail (or not) just the same
    for (b, accuracy) in corpus.iter().flat_map(|b| [(b, Accuracy::Exact), (b, Accuracy::Keyframe)]) {
        let spec = DecodeSpec::all()
            .with_sampling(Sampling::Fps { fps: 1.0 })
            .with_accuracy(accuracy)
            .with_timeout(ITEM_TIMEOUT);
        let started = Instant::now();
        let result: Result<Vec<_>, _> = Decoder::open(&b.path, &spec).and_then(|d| d.collect());
        let name = format!("{} ({})", b.name, accuracy.as_str());
        assert!(started.elapsed() < ITEM_TIMEOUT, "{name}: took {:?}", started.elapsed());
        match (&b.expect, result) {
            // a one-frame file is a valid (if useless) stream for the decoder itself
            (_, Ok(frames)) if b.name.starts_with("one_frame") => assert_eq!(frames.len(), 1),
            (Expect::Ok, r) => assert!(r.is_ok_and(|f| !f.is_empty()), "{name}"),
            (Expect::Fail(class, _), Err(e)) => {
                assert_eq!(e.class(), *class, "{name}: {e}");
            }
            (Expect::Fail(..), Ok(f)) => panic!("{name}: decoded {} frames", f.len()),
        }
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn no_threads_leak_over_repeated_runs() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = synth::bad_inputs(dir.path()).unwrap();
    let services = MemServices::new(&dir.path().join("store"));
    let run = || {
        for b in &corpus {
            let _ = probe_then_decode(&b.path, &services);
        }
    };
    run();
    std::thread::sleep(Duration::from_millis(300));
    let after_first = threads();
    for _ in 0..3 {
        run();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after_more = threads();
    // GStreamer keeps a small pool of idle worker threads; it must not grow with the runs.
    assert!(after_more <= after_first + 4, "threads grew from {after_first} to {after_more}");
}

#[test]
fn the_corpus_through_a_graph_loses_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let corpus = synth::bad_inputs(&data).unwrap();
    let good = dir.path().join("data/good.mp4");
    synth::generate(&good, &synth::SynthSpec::simple(160, 120, 30, 60)).unwrap();
    let graph = dir.path().join("g.toml");
    std::fs::write(
        &graph,
        r#"[graph]
name = "corpus"
item_timeout_s = 30
max_attempts = 1

[nodes.raw]
op = "source.files"
paths = ["data/*"]

[nodes.probe]
op = "video.probe"
inputs = ["raw"]

[nodes.decode]
op = "video.decode"
inputs = ["probe"]
fps = 2.0
width = 64
height = 64

[nodes.encoded]
op = "video.encode"
inputs = ["decode"]
fps = 2.0

[nodes.videos]
op = "sink.jsonl"
inputs = ["encoded"]
path = "videos.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["raw.failures", "probe.failures", "decode.failures", "encoded.failures"]
path = "failures.jsonl"
"#,
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .arg("run")
        .arg(&graph)
        .arg("-w")
        .arg("2")
        .arg("--store")
        .arg(dir.path().join("store"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(started.elapsed() < Duration::from_secs(120), "the run took {:?}", started.elapsed());
    let store = dir.path().join("store/outputs");
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(store.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let videos = read("videos.jsonl");
    let failures = read("failures.jsonl");
    let ok_names: Vec<String> =
        videos.iter().map(|v| v["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect();
    // every file that should survive did, with its frames encoded
    for b in corpus.iter().filter(|b| b.expect == Expect::Ok) {
        assert!(ok_names.contains(&b.name.to_string()), "{} lost; videos: {ok_names:?}\nstderr: {stderr}", b.name);
    }
    assert!(ok_names.contains(&"good.mp4".to_string()), "good.mp4 lost: {ok_names:?}\nstderr: {stderr}");
    for v in &videos {
        assert!(v["metadata"]["mp4_blob"].as_str().is_some_and(|k| !k.is_empty()));
    }
    // every bad file that source.files lists failed with its class
    for b in corpus.iter().filter(|b| b.path.is_file()) {
        let Expect::Fail(class, text) = &b.expect else { continue };
        let f = failures
            .iter()
            .find(|f| f["input"].as_str().is_some_and(|i| i.ends_with(b.name)))
            .unwrap_or_else(|| panic!("{}: no failure recorded; failures: {failures:#?}\nstderr: {stderr}", b.name));
        assert_eq!(f["class"].as_str().unwrap(), class.as_str(), "{}: {f}", b.name);
        assert!(f["message"].as_str().unwrap().to_lowercase().contains(&text.to_lowercase()), "{}: {f}", b.name);
    }
    assert_eq!(
        videos.len() + failures.len(),
        corpus.iter().filter(|b| b.path.is_file()).count() + 1,
        "one record per file"
    );
}
