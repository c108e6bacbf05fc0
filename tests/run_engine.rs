//! End-to-end runs of the engine through the `medgen` binary: worker threads vs. processes, watch
//! mode, kill -9 and restart, failures and quarantine, explain.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn medgen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medgen"));
    c.env_remove("RUST_LOG");
    c
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("start medgen");
    assert!(
        out.status.success(),
        "medgen failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A folder of `n` small distinct files plus a graph that views them.
fn fixture(n: usize, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    for i in 0..n {
        let sub = if i % 3 == 0 { "sub/" } else { "" };
        std::fs::write(data.join(format!("{sub}v{i:04}.mp4")), format!("video bytes {i}").repeat(50 + i)).unwrap();
    }
    std::fs::write(data.join("notes.txt"), "not a video").unwrap();
    let graph = dir.path().join("g.toml");
    std::fs::write(
        &graph,
        format!(
            r#"[graph]
name = "t"
{extra}

[nodes.raw]
op = "source.files"
paths = ["data/**/*.mp4"]

[nodes.view]
op = "sink.jsonl"
inputs = ["raw"]
path = "videos.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["raw.failures"]
path = "failures.jsonl"
"#
        ),
    )
    .unwrap();
    (dir, graph)
}

fn read_view(store: &Path, name: &str) -> String {
    std::fs::read_to_string(store.join("outputs").join(name)).unwrap_or_default()
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn node_count(s: &serde_json::Value, node: &str, field: &str) -> u64 {
    s["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()[field].as_u64().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn threads_and_processes_give_the_same_view() {
    let (dir, graph) = fixture(40, "");
    let one = dir.path().join("store-w2");
    run_ok(medgen().args(["run", "-q", "-w", "2", "--store"]).arg(&one).arg(&graph));
    let expected = read_view(&one, "videos.jsonl");
    assert_eq!(expected.lines().count(), 40);

    let cluster = dir.path().join("store-p2");
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let spawn = |i: usize| -> Child {
        medgen()
            .args(["run", "-q", "-w", "1", "--processes", "2", "--process", &i.to_string(), "--hostfile"])
            .arg(&hostfile)
            .arg("--store")
            .arg(&cluster)
            .arg(&graph)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let p0 = spawn(0);
    let p1 = spawn(1);
    for (i, p) in [p0, p1].into_iter().enumerate() {
        let out = wait_with_timeout(p, Duration::from_secs(120));
        assert!(out.status.success(), "process {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(read_view(&cluster, "videos.jsonl"), expected);
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("timed out; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `medgen run -q --store STORE GRAPH` in the background.
fn spawn_run(store: &Path, graph: &Path) -> Child {
    medgen()
        .args(["run", "-q", "--store"])
        .arg(store)
        .arg(graph)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn watch_mode_adds_and_retracts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.mp4"), "aaaa").unwrap();
    std::fs::write(data.join("b.mp4"), "bbbb").unwrap();
    let graph = dir.path().join("w.toml");
    std::fs::write(
        &graph,
        r#"[graph]
name = "w"
[nodes.raw]
op = "source.files"
paths = ["in/*.mp4"]
watch = true
poll_seconds = 0.1
settle_seconds = 0.0
[nodes.view]
op = "sink.jsonl"
inputs = ["raw"]
path = "videos.jsonl"
changelog = true
"#,
    )
    .unwrap();
    let store = dir.path().join("store");
    let child = spawn_run(&store, &graph);
    let view = || read_view(&store, "videos.jsonl");
    wait_for("two rows", Duration::from_secs(60), || view().lines().count() == 2);
    std::fs::write(data.join("c.mp4"), "cccc").unwrap();
    wait_for("three rows", Duration::from_secs(60), || view().lines().count() == 3 && view().contains("c.mp4"));
    std::fs::remove_file(data.join("a.mp4")).unwrap();
    wait_for("a retracted", Duration::from_secs(60), || view().lines().count() == 2 && !view().contains("a.mp4"));
    // SIGTERM: a graceful stop.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = wait_with_timeout(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changes = std::fs::read_to_string(store.join("outputs/videos.jsonl.changes.jsonl")).unwrap();
    let diffs: Vec<(u64, i64, bool)> = changes
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["epoch"].as_u64().unwrap(),
                v["diff"].as_i64().unwrap(),
                v["row"]["uri"].as_str().unwrap().ends_with("a.mp4"),
            )
        })
        .collect();
    // a.mp4 appeared in the first epoch and was retracted in a later one.
    let added = diffs.iter().find(|d| d.2 && d.1 == 1).unwrap();
    let removed = diffs.iter().find(|d| d.2 && d.1 == -1).unwrap();
    assert!(removed.0 > added.0);
    assert_eq!(diffs.len(), 4, "{changes}");

    // A new watching run over an emptied folder: its view is empty from the first epoch on, and
    // the file the last run left must say so then (it used to stay until the run finished, which
    // a watching run never does).
    for f in ["b.mp4", "c.mp4"] {
        std::fs::remove_file(data.join(f)).unwrap();
    }
    assert_eq!(view().lines().count(), 2);
    let child = spawn_run(&store, &graph);
    wait_for("the empty view", Duration::from_secs(60), || view().is_empty());
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = wait_with_timeout(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kill_9_then_restart_matches_an_uninterrupted_run() {
    let (dir, graph) = fixture(2500, "");
    // Reference: one uninterrupted run.
    let reference = dir.path().join("ref");
    run_ok(medgen().args(["run", "-q", "--store"]).arg(&reference).arg(&graph));
    let expected = read_view(&reference, "videos.jsonl");
    assert_eq!(expected.lines().count(), 2500);

    // Interrupted: kill -9 once some items are committed to the memo.
    let store = dir.path().join("crash");
    let mut child =
        medgen().args(["run", "-q", "--store"]).arg(&store).arg(&graph).stderr(Stdio::null()).spawn().unwrap();
    let catalog = store.join("catalog.sqlite");
    wait_for("some committed items", Duration::from_secs(120), || memo_rows(&catalog) >= 100);
    child.kill().unwrap();
    child.wait().unwrap();
    let committed = memo_rows(&catalog);
    assert!(committed < 2500, "the run finished before the kill; make the fixture bigger");

    let s = dir.path().join("summary.json");
    run_ok(medgen().args(["run", "-q", "--store"]).arg(&store).arg("--summary-json").arg(&s).arg(&graph));
    assert_eq!(read_view(&store, "videos.jsonl"), expected, "restart must give the same view, no duplicates");
    let s = summary(&s);
    let hits = node_count(&s, "raw", "memo_hits");
    assert!(hits >= committed as u64 && hits > 0, "hits {hits}, committed before the kill {committed}");
    assert_eq!(hits + node_count(&s, "raw", "memo_misses"), 2500);

    // A third run computes nothing.
    let s3 = dir.path().join("summary3.json");
    run_ok(medgen().args(["run", "-q", "--store"]).arg(&store).arg("--summary-json").arg(&s3).arg(&graph));
    assert_eq!(node_count(&summary(&s3), "raw", "memo_misses"), 0);
}

fn memo_rows(catalog: &Path) -> i64 {
    if !catalog.exists() {
        return 0;
    }
    let Ok(conn) = rusqlite::Connection::open_with_flags(catalog, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM memo", [], |r| r.get(0)).unwrap_or(0)
}

#[test]
fn bad_rows_are_failures_and_quarantine_after_repeated_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.mp4"), "good").unwrap();
    std::fs::write(
        dir.path().join("m.jsonl"),
        "{\"uri\": \"good.mp4\", \"title\": \"Laparoscopic cholecystectomy\"}\n{\"title\": \"no uri\"}\n{broken\n{\"uri\": \"missing.mp4\"}\n",
    )
    .unwrap();
    let graph = dir.path().join("m.toml");
    std::fs::write(
        &graph,
        r#"[graph]
name = "m"
quarantine_after = 2
max_attempts = 1
[nodes.rows]
op = "source.manifest"
path = "m.jsonl"
[nodes.view]
op = "sink.jsonl"
inputs = ["rows"]
path = "videos.jsonl"
[nodes.failed]
op = "sink.jsonl"
inputs = ["rows.failures"]
path = "failures.jsonl"
"#,
    )
    .unwrap();
    let store = dir.path().join("store");
    let run = || run_ok(medgen().args(["run", "-q", "--store"]).arg(&store).arg(&graph));
    run();
    let view = read_view(&store, "videos.jsonl");
    assert_eq!(view.lines().count(), 1);
    assert!(view.contains("Laparoscopic cholecystectomy"));
    let failures = read_view(&store, "failures.jsonl");
    assert_eq!(failures.lines().count(), 3, "{failures}");
    assert!(failures.contains("m.jsonl:2: missing `uri`"));
    assert!(failures.contains("m.jsonl:3: invalid JSON"));
    assert!(failures.contains("missing.mp4"));

    // Second failing run reaches quarantine_after = 2; the third skips them as quarantined.
    run();
    let listed = run_ok(medgen().args(["failures", "--quarantined", "--format", "json", "--store"]).arg(&store));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 3);
    run();
    let failures = read_view(&store, "failures.jsonl");
    assert_eq!(failures.matches("\"class\":\"quarantined\"").count(), 3, "{failures}");

    let retried = run_ok(medgen().args(["retry", "--quarantined", "--store"]).arg(&store));
    assert!(String::from_utf8_lossy(&retried.stdout).starts_with("3 "));
    run();
    let failures = read_view(&store, "failures.jsonl");
    assert_eq!(failures.matches("\"class\":\"quarantined\"").count(), 0, "{failures}");
}

#[test]
fn explain_counts_what_is_cached() {
    let (dir, graph) = fixture(12, "");
    let store = dir.path().join("store");
    let out = run_ok(medgen().args(["explain", "--store"]).arg(&store).arg(&graph));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let raw = text.lines().find(|l| l.starts_with("raw ")).unwrap().to_string();
    assert!(raw.split_whitespace().any(|w| w == "12"), "{text}");
    assert!(!store.exists(), "explain must not create the store");

    run_ok(medgen().args(["run", "-q", "--store"]).arg(&store).arg(&graph));
    std::fs::write(dir.path().join("data/new.mp4"), "new one").unwrap();
    let out = run_ok(medgen().args(["explain", "--store"]).arg(&store).arg(&graph));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let raw = text.lines().find(|l| l.starts_with("raw ")).unwrap();
    let cols: Vec<&str> = raw.split_whitespace().collect();
    // ... | from cache | to compute | note
    assert!(cols.windows(2).any(|w| w == ["12", "1"]), "{text}");
    let view = read_view(&store, "videos.jsonl");
    assert_eq!(view.lines().count(), 12, "explain must not write outputs");
}

/// A view that cannot be written (its path is a folder) fails the run with exit code 1 and names
/// the node; the other view is still written.
#[test]
fn an_output_that_cannot_be_written_fails_the_run() {
    let (dir, graph) = fixture(3, "");
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("outputs/videos.jsonl")).unwrap();
    let out = medgen().args(["run", "-q", "--store"]).arg(&store).arg(&graph).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("output write(s) failed (view)"), "{stderr}");
    assert!(store.join("outputs/failures.jsonl").is_file());
    std::fs::remove_dir(store.join("outputs/videos.jsonl")).unwrap();
    run_ok(medgen().args(["run", "-q", "--store"]).arg(&store).arg(&graph));
    assert_eq!(read_view(&store, "videos.jsonl").lines().count(), 3);
}

/// `medgen store verify` re-hashes the blobs: a changed one is reported (exit 1) and, with
/// `--repair`, moved to corrupt/ so the next run recomputes it.
#[test]
fn store_verify_finds_and_sets_aside_damaged_blobs() {
    use medgen_operators::api::Services;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let keys: Vec<String> = {
        let s = medgen::store::Store::open(&root).unwrap();
        (0..4).map(|i| s.blob_put(format!("clip bytes {i}").repeat(1000).as_bytes()).unwrap()).collect()
    };
    let verify = |extra: &[&str]| {
        medgen().args(["store", "verify", "--quiet", "--store"]).arg(&root).args(extra).output().unwrap()
    };
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let out = verify(&[]);
    assert!(
        out.status.success() && text(&out).contains("4 blobs") && text(&out).contains("every blob matches"),
        "{}",
        text(&out)
    );

    // A dataset clip edited in place through its hard link (possible for root despite the mode).
    let path = root.join("blobs").join(&keys[2][..2]).join(&keys[2]);
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    assert!(perm.readonly(), "blobs are written read-only");
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&path, perm).unwrap();
    std::fs::write(&path, b"edited").unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&format!("DAMAGED {}", keys[2])) && text(&out).contains("--repair"), "{}", text(&out));
    assert!(path.exists(), "nothing moves without --repair");

    let out = verify(&["--repair"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!path.exists());
    assert_eq!(std::fs::read(root.join("corrupt").join(&keys[2])).unwrap(), b"edited");
    let out = verify(&[]);
    assert!(out.status.success() && text(&out).contains("3 blobs"), "{}", text(&out));
}
