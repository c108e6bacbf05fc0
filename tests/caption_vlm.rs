//! `caption.vlm` against a real HTTP server on 127.0.0.1 that injects faults.
#![cfg(feature = "video")]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::openai::{Reply, Seen, Server};

const DETAILED: &str = "The short video shows a clinician performing an ultrasound examination of the abdomen, \
moving the probe slowly across the upper right quadrant while the grayscale image on the monitor shows the liver and \
gallbladder in real time, with measurement calipers placed on the screen.";
const BRIEF: &str = "An ultrasound examination of the liver and gallbladder with on-screen calipers.";

fn medgen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medgen"));
    c.env_remove("RUST_LOG");
    c
}

/// `n` tiny distinct videos and a manifest titling them c00, c01, ...
fn videos(dir: &Path, n: usize) -> PathBuf {
    let data = dir.join("v");
    std::fs::create_dir_all(&data).unwrap();
    let patterns = ["smpte", "ball", "snow", "red", "green", "blue", "checkers-8", "circular", "zone-plate", "gamut"];
    let chunks: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(n.div_ceil(2).max(1)).map(|c| c.to_vec()).collect();
    std::thread::scope(|s| {
        for chunk in &chunks {
            let data = &data;
            s.spawn(move || {
                for &i in chunk {
                    let out = data.join(format!("c{i:02}.mp4"));
                    let status = Command::new("gst-launch-1.0")
                        .args([
                            "-q",
                            "videotestsrc",
                            &format!("num-buffers={}", 6 + i % 5),
                            &format!("pattern={}", patterns[i % patterns.len()]),
                        ])
                        .args([
                            "!",
                            "video/x-raw,width=64,height=48,framerate=10/1",
                            "!",
                            "x264enc",
                            "!",
                            "mp4mux",
                            "!",
                            "filesink",
                        ])
                        .arg(format!("location={}", out.display()))
                        .status()
                        .expect("gst-launch-1.0 (run scripts/setup.sh)");
                    assert!(status.success());
                }
            });
        }
    });
    let manifest = dir.join("m.jsonl");
    let rows: String = (0..n)
        .map(|i| format!("{{\"uri\": \"v/c{i:02}.mp4\", \"title\": \"c{i:02}\", \"description\": \"clip {i}\"}}\n"))
        .collect();
    std::fs::write(&manifest, rows).unwrap();
    manifest
}

fn graph(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "cap"
max_attempts = 1
[nodes.src]
op = "source.manifest"
path = "m.jsonl"
[nodes.cap]
op = "caption.vlm"
inputs = ["src"]
endpoint = "{url}"
model = "mock-vl"
api_key_env = "MEDGEN_TEST_KEY"
frames = 2
frame_size = 64
backoff_s = 0.05
detailed_words = [20, 320]
{extra}
[nodes.view]
op = "sink.jsonl"
inputs = ["cap"]
path = "captions.jsonl"
[nodes.failed]
op = "sink.jsonl"
inputs = ["cap.failures"]
path = "failures.jsonl"
"#
        ),
    )
    .unwrap();
    g
}

fn title(s: &Seen) -> String {
    s.text.lines().find_map(|l| l.strip_prefix("Video title: ")).unwrap_or("?").to_string()
}

fn is_brief(s: &Seen) -> bool {
    s.text.contains("brief caption")
}

fn answer_for(s: &Seen) -> Reply {
    Reply::Answer(if is_brief(s) { BRIEF.into() } else { DETAILED.into() })
}

fn rows(store: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(store.join("outputs").join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn faults_are_retried_and_every_clip_ends_captioned_or_failed() {
    let dir = tempfile::tempdir().unwrap();
    videos(dir.path(), 10);
    let attempts: Arc<Mutex<HashMap<(String, bool), usize>>> = Arc::default();
    let a2 = attempts.clone();
    let server = Server::start(move |s, _| {
        let key = (title(s), is_brief(s));
        let n = {
            let mut m = a2.lock().unwrap();
            let e = m.entry(key.clone()).or_default();
            *e += 1;
            *e
        };
        let first = n == 1;
        match key.0.as_str() {
            "c00" if first => Reply::Status(429, "{\"error\":\"slow down\"}".into(), Some("0.3".into())),
            "c01" if first => Reply::Status(503, "overloaded".into(), None),
            "c02" if first => Reply::Slow(Duration::from_secs(4), Box::new(answer_for(s))),
            "c03" if first => Reply::Truncated,
            "c04" if first => Reply::Empty,
            "c05" if first => Reply::Reset,
            "c06" => Reply::Status(500, "boom".into(), None),
            "c07" => Reply::Answer("I'm sorry, but I can't help with identifying medical content.".into()),
            "c08" => Reply::Answer("这个短视频展示了一位医生正在进行腹部超声检查，探头在右上腹缓慢移动。".into()),
            _ => answer_for(s),
        }
    });
    let g = graph(dir.path(), &server.url, "timeout_s = 1.5\nretries = 2\nmax_concurrency = 4");
    let store = dir.path().join("store");
    let out = medgen()
        .args(["run", "-q", "--store"])
        .arg(&store)
        .arg(&g)
        .env("MEDGEN_TEST_KEY", "sk-test-123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let caps = rows(&store, "captions.jsonl");
    let fails = rows(&store, "failures.jsonl");
    assert_eq!(caps.len(), 7, "{caps:#?}\n{fails:#?}");
    assert_eq!(fails.len(), 3, "{fails:#?}");
    for c in &caps {
        assert_eq!(c["detailed"], DETAILED);
        assert_eq!(c["brief"], BRIEF);
        assert_eq!(c["model"], "mock-vl");
        assert_eq!(c["prompt_version"], "medcap-v1");
    }
    let mut ids: Vec<&str> = caps.iter().map(|c| c["clip_id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 7, "no duplicates");
    let msgs: Vec<String> = fails.iter().map(|f| f["message"].as_str().unwrap().to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("HTTP 500") && m.contains("3 attempt(s)")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("refused") && m.contains("last raw answer")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("expected language")), "{msgs:#?}");

    let seen = server.requests();
    // The key is sent, and never written to the run store or the outputs.
    assert!(seen.iter().all(|s| s.auth.as_deref() == Some("Bearer sk-test-123")));
    for entry in walk(&store) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("sk-test-123"), "key leaked into {}", entry.display());
    }
    // Every request carries the frames.
    assert!(seen.iter().all(|s| s.images == 2));
    // 429 honoured Retry-After: the retry came at least 0.3 s later.
    let c00: Vec<Instant> = seen.iter().filter(|s| title(s) == "c00" && !is_brief(s)).map(|s| s.at).collect();
    if c00.len() >= 2 {
        assert!(c00[1].duration_since(c00[0]) >= Duration::from_millis(290));
    }
    // Failed clips used exactly their budget: 1 + retries = 3 requests per caption kind.
    let count = |t: &str| seen.iter().filter(|s| title(s) == t).count();
    assert_eq!(count("c06"), 6);
    assert_eq!(count("c07"), 6);

    // A re-run pays for nothing already captioned: only the 3 failed clips are asked again.
    let before = seen.len();
    let out = medgen().args(["run", "-q", "--store"]).arg(&store).arg(&g).output().unwrap();
    assert!(out.status.success());
    let again = &server.requests()[before..];
    assert!(
        again.iter().all(|s| ["c06", "c07", "c08"].contains(&title(s).as_str())),
        "{:?}",
        again.iter().map(title).collect::<Vec<_>>()
    );
    assert_eq!(rows(&store, "captions.jsonl").len(), 7);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn sixty_four_clips_at_concurrency_sixteen_with_one_second_latency() {
    let dir = tempfile::tempdir().unwrap();
    videos(dir.path(), 64);
    let server = Server::start(|s, _| Reply::Slow(Duration::from_secs(1), Box::new(answer_for(s))));
    let g = graph(dir.path(), &server.url, "max_concurrency = 16\ntimeout_s = 10");
    let store = dir.path().join("store");
    let s = dir.path().join("summary.json");
    let start = Instant::now();
    let out =
        medgen().args(["run", "-q", "--store"]).arg(&store).arg("--summary-json").arg(&s).arg(&g).output().unwrap();
    let wall = start.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&store, "captions.jsonl").len(), 64);
    assert_eq!(server.requests().len(), 128);
    // Each clip asks for its two captions at once: 16 clips in flight are 32 requests, in one
    // process whatever its number of workers.
    let peak = server.peak_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("64 clips, latency 1 s, concurrency 16: {:.2} s wall, peak {peak} requests", wall.as_secs_f64());
    assert!((24..=32).contains(&peak), "peak in-flight requests {peak}, expected 16 clips × 2");
    // Four rounds of one second each; serial would take 64 s.
    assert!(wall <= Duration::from_secs(12), "took {wall:?}");
}

#[test]
fn killed_run_never_asks_twice_for_captioned_clips() {
    let dir = tempfile::tempdir().unwrap();
    videos(dir.path(), 16);
    let server = Server::start(|s, _| Reply::Slow(Duration::from_millis(300), Box::new(answer_for(s))));
    let g = graph(dir.path(), &server.url, "max_concurrency = 2");
    let store = dir.path().join("store");
    let mut child = medgen().args(["run", "-q", "--store"]).arg(&store).arg(&g).stderr(Stdio::null()).spawn().unwrap();
    let catalog = store.join("catalog.sqlite");
    let start = Instant::now();
    while captioned(&catalog).len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = captioned(&catalog);
    assert!(done_before.len() < 16);

    let out = medgen().args(["run", "-q", "--store"]).arg(&store).arg(&g).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&store, "captions.jsonl").len(), 16);
    // Map clip ids (content hashes) to titles, then count requests per title over both runs.
    let id_to_title: BTreeMap<String, String> = (0..16)
        .map(|i| {
            let bytes = std::fs::read(dir.path().join(format!("v/c{i:02}.mp4"))).unwrap();
            (blake3::hash(&bytes).to_hex().to_string(), format!("c{i:02}"))
        })
        .collect();
    let seen = server.requests();
    for id in &done_before {
        let t = &id_to_title[id];
        assert_eq!(seen.iter().filter(|s| &title(s) == t).count(), 2, "{t} was asked again after the restart");
    }
}

/// Clip ids whose captions are committed in the memo.
fn captioned(catalog: &Path) -> Vec<String> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(catalog, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return vec![];
    };
    let Ok(mut stmt) = conn.prepare("SELECT value FROM memo WHERE node = 'cap'") else { return vec![] };
    let values: Vec<Vec<u8>> = match stmt.query_map([], |r| r.get(0)) {
        Ok(rows) => rows.flatten().collect(),
        Err(_) => return vec![],
    };
    values
        .iter()
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .filter_map(|v| v[0]["caption"]["clip_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn rate_limit_holds_as_measured_by_the_server_and_transcripts_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = videos(dir.path(), 4);
    // c00 has a subtitle sidecar given in the manifest; only the cue inside its span is sent.
    std::fs::write(dir.path().join("v/c00.srt"), "1\n00:00:00,100 --> 00:00:00,400\nInsert the probe gently.\n\n2\n00:01:00,000 --> 00:01:02,000\nLater words.\n").unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap().replacen(
        "\"title\": \"c00\"",
        "\"title\": \"c00\", \"transcript\": \"v/c00.srt\"",
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let server = Server::start(|s, _| answer_for(s));
    let g = graph(dir.path(), &server.url, "max_concurrency = 8\nrequests_per_min = 3\nrate_window_s = 1.0");
    let store = dir.path().join("store");
    let out = medgen().args(["run", "-q", "--store"]).arg(&store).arg(&g).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&store, "captions.jsonl").len(), 4);
    let mut times: Vec<Instant> = server.requests().iter().map(|s| s.at).collect();
    times.sort();
    assert_eq!(times.len(), 8);
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_millis(1000)).count();
        assert!(in_window <= 3, "{in_window} requests within one 1-s window");
    }
    // 8 requests at 3 per second take at least two full windows.
    assert!(times[7].duration_since(times[0]) >= Duration::from_millis(1950));
    let c00 = server.requests().into_iter().find(|s| title(s) == "c00").unwrap();
    assert!(c00.text.contains("What is said during the clip: Insert the probe gently."), "{}", c00.text);
    assert!(!c00.text.contains("Later words"));
}
