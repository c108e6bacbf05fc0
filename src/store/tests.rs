use super::*;
use medgen_operators::api::ErrorClass;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("run")).unwrap();
    (dir, store)
}

fn failure(node: &str, item: &str) -> Failure {
    Failure {
        item: item.into(),
        node: node.into(),
        operator: "video.probe".into(),
        input: format!("/data/{item}.mp4"),
        class: ErrorClass::InvalidInput,
        message: "moov atom not found".into(),
        attempts: 1,
    }
}

fn key(n: u64) -> MemoKey {
    MemoKey::new("curate.segment", 1, "params", &n.to_le_bytes())
}

fn run_info() -> RunInfo {
    RunInfo {
        graph_path: "graphs/demo.toml".into(),
        graph_name: "demo".into(),
        graph_hash: "abc".into(),
        process_index: 1,
        processes: 2,
        argv: vec!["medgen".into(), "run".into(), "graphs/demo.toml".into()],
    }
}

/// Files left in `tmp/` (the writability probe and blob writes must clean up after themselves).
fn tmp_entries(store: &Store) -> Vec<PathBuf> {
    fs::read_dir(store.tmp_dir()).unwrap().map(|e| e.unwrap().path()).collect()
}

#[test]
fn open_creates_layout_and_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/run");
    let blob;
    let run;
    {
        let s = Store::open(&root).unwrap();
        assert!(s.root().is_absolute());
        for d in ["blobs", "outputs", "tmp", "report"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        assert_eq!(s.outputs_dir(), s.root().join("outputs"));
        assert_eq!(s.tmp_dir(), s.root().join("tmp"));
        assert!(tmp_entries(&s).is_empty());
        run = s.begin_run(&run_info()).unwrap();
        s.memo_put(&key(1), "seg", b"v1").unwrap();
        s.commit_epoch("sink", 3, "{\"rows\":2}").unwrap();
        s.record_failure(&failure("probe", "x"), 3).unwrap();
        s.record_output("sink", 3, "dataset/part-3.jsonl", None).unwrap();
        blob = s.blob_put(b"pixels").unwrap();
    }
    let s = Store::open(&root).unwrap();
    assert_eq!(s.current_run(), None);
    assert_eq!(s.memo_get(&key(1)).unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(s.next_epoch().unwrap(), 4);
    assert_eq!(s.failures(&FailureFilter::default()).unwrap().len(), 1);
    assert_eq!(s.blob_get(&blob).unwrap(), b"pixels");
    let runs = s.runs(10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run);
    let outs = s.outputs(None).unwrap();
    assert_eq!(outs.len(), 1);
    assert_eq!((outs[0].epoch, outs[0].run_id), (3, Some(run)));
    let version: String =
        s.conn().query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());
    let mode: String = s.conn().pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let fk: bool = s.conn().pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
    assert!(fk);
}

#[test]
fn memo_roundtrip_replace_and_stats() {
    let (_dir, s) = store();
    assert_eq!(s.memo_get(&key(1)).unwrap(), None);
    assert!(!s.memo_contains(&key(1)).unwrap());
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.memo_put(&key(1), "seg", &big).unwrap();
    s.memo_put(&key(2), "seg", b"").unwrap();
    s.memo_put(&key(3), "cap", b"caption").unwrap();
    assert!(s.memo_contains(&key(1)).unwrap());
    assert_eq!(s.memo_get(&key(1)).unwrap(), Some(big));
    assert_eq!(s.memo_get(&key(2)).unwrap(), Some(vec![]));
    s.memo_put(&key(1), "seg", b"replaced").unwrap();
    assert_eq!(s.memo_get(&key(1)).unwrap().as_deref(), Some(&b"replaced"[..]));
    let stats = s.memo_stats().unwrap();
    assert_eq!(stats, BTreeMap::from([("cap".to_string(), 1), ("seg".to_string(), 2)]));
}

#[test]
fn blob_put_is_content_addressed_idempotent_and_atomic() {
    let (_dir, s) = store();
    let bytes = b"a clip's bytes".to_vec();
    let key = s.blob_put(&bytes).unwrap();
    assert_eq!(key, blake3::hash(&bytes).to_hex().to_string());
    let path = s.blob_path(&key);
    assert_eq!(path, s.root().join("blobs").join(&key[..2]).join(&key));
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert!(s.blob_exists(&key).unwrap());
    // Read-only: a hard link of it (a dataset clip) cannot be edited in place.
    assert!(fs::metadata(&path).unwrap().permissions().readonly());

    // A second put of the same bytes leaves the existing file alone.
    let old = SystemTime::now() - Duration::from_secs(7200);
    fs::File::open(&path).unwrap().set_modified(old).unwrap();
    assert_eq!(s.blob_put(&bytes).unwrap(), key);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), old);

    // A truncated file under the key (not written by the store) is replaced.
    make_writable(&path);
    fs::write(&path, b"a clip").unwrap();
    assert_eq!(s.blob_put(&bytes).unwrap(), key);
    assert_eq!(fs::read(&path).unwrap(), bytes);

    let other = s.blob_put(b"").unwrap();
    assert_ne!(other, key);
    assert_eq!(s.blob_get(&other).unwrap(), b"");
    assert!(tmp_entries(&s).is_empty(), "temp files left: {:?}", tmp_entries(&s));
    let missing = "0".repeat(64);
    assert!(matches!(s.blob_get(&missing), Err(StoreError::MissingBlob { .. })));
}

fn make_writable(path: &Path) {
    let mut p = fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    p.set_readonly(false);
    fs::set_permissions(path, p).unwrap();
}

/// `store verify`'s parts: the listing, a re-hash that finds changed bytes, and setting a damaged
/// blob aside (after which it is gone, so memoised results that need it are recomputed).
#[test]
fn changed_blobs_are_found_and_set_aside() {
    let (_dir, s) = store();
    let keys: Vec<String> = (0..3).map(|i| s.blob_put(format!("blob {i}").as_bytes()).unwrap()).collect();
    let stray = s.root().join("blobs").join("notes.txt");
    fs::write(&stray, b"not a blob").unwrap();
    let (files, strays) = s.blob_files().unwrap();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(files.iter().map(|f| f.key.clone()).collect::<Vec<_>>(), sorted);
    assert_eq!(strays, vec![stray]);
    let mut read = 0;
    for f in &files {
        assert_eq!(s.blob_rehash(f, &mut |n| read += n).unwrap(), None);
    }
    assert_eq!(read, files.iter().map(|f| f.len).sum::<u64>());

    // Edit one in place (what root, or a tool ignoring the mode, can do through a dataset link).
    let victim = files.iter().find(|f| f.key == keys[1]).unwrap();
    make_writable(&victim.path);
    fs::write(&victim.path, b"blob X").unwrap();
    let actual = s.blob_rehash(victim, &mut |_| {}).unwrap();
    assert_eq!(actual, Some(blake3::hash(b"blob X").to_hex().to_string()));
    let to = s.blob_set_aside(victim).unwrap();
    assert_eq!(to, s.root().join(CORRUPT_DIR).join(&keys[1]));
    assert_eq!(fs::read(&to).unwrap(), b"blob X");
    assert!(!s.blob_exists(&keys[1]).unwrap());
    assert_eq!(s.blob_files().unwrap().0.len(), 2);
    // the next put of the original bytes writes it again
    assert_eq!(s.blob_put(b"blob 1").unwrap(), keys[1]);
    assert_eq!(
        s.blob_rehash(&s.blob_files().unwrap().0.into_iter().find(|f| f.key == keys[1]).unwrap(), &mut |_| {}).unwrap(),
        None
    );
}

#[test]
fn blob_put_file_moves_the_file_in() {
    let (dir, s) = store();
    let src = dir.path().join("clip.mp4");
    fs::write(&src, b"mp4 bytes").unwrap();
    let key = s.blob_put_file(&src).unwrap();
    assert_eq!(key, blake3::hash(b"mp4 bytes").to_hex().to_string());
    assert!(!src.exists(), "source must be moved, not copied");
    assert_eq!(fs::read(s.blob_path(&key)).unwrap(), b"mp4 bytes");

    // The same content again: the source is consumed, the blob kept.
    let src2 = s.tmp_dir().join("again.mp4");
    fs::write(&src2, b"mp4 bytes").unwrap();
    assert_eq!(s.blob_put_file(&src2).unwrap(), key);
    assert!(!src2.exists());
    assert_eq!(fs::read(s.blob_path(&key)).unwrap(), b"mp4 bytes");

    // Moving a blob onto itself keeps it.
    assert_eq!(s.blob_put_file(&s.blob_path(&key)).unwrap(), key);
    assert!(s.blob_exists(&key).unwrap());

    let err = s.blob_put_file(&dir.path().join("absent.mp4")).unwrap_err();
    assert!(matches!(err, ServiceError::Io { .. }), "{err}");
    assert!(tmp_entries(&s).is_empty());
}

/// The copy path of `blob_put_file`, when a file system other than the store's is at hand.
#[cfg(unix)]
#[test]
fn blob_put_file_copies_across_file_systems() {
    use std::os::unix::fs::MetadataExt;
    let (_dir, s) = store();
    let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: no /dev/shm");
        return;
    };
    if fs::metadata(other.path()).unwrap().dev() == fs::metadata(s.root()).unwrap().dev() {
        eprintln!("skipped: /dev/shm is on the store's file system");
        return;
    }
    let src = other.path().join("clip.mp4");
    fs::write(&src, b"far away").unwrap();
    let key = s.blob_put_file(&src).unwrap();
    assert!(!src.exists());
    assert_eq!(s.blob_get(&key).unwrap(), b"far away");
    assert!(tmp_entries(&s).is_empty());
}

#[test]
fn blob_keys_are_validated() {
    let (_dir, s) = store();
    let blobs = s.root().join("blobs");
    for bad in ["../../etc/passwd", "", "ab", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65), "ab/../../x"] {
        assert!(!is_valid_blob_key(bad), "{bad}");
        let p = s.blob_path(bad);
        assert!(p.starts_with(&blobs) && !p.exists(), "{bad} -> {}", p.display());
        assert!(!p.components().any(|c| c == std::path::Component::ParentDir));
        assert!(matches!(s.blob_get(bad), Err(StoreError::InvalidBlobKey { .. })), "{bad}");
        assert!(s.record_output("n", 0, "p", Some(bad)).is_err(), "{bad}");
    }
    assert!(is_valid_blob_key(&"0123456789abcdef".repeat(4)));
}

#[test]
fn failures_count_quarantine_and_retry() {
    let (_dir, s) = store();
    let run = s.begin_run(&run_info()).unwrap();
    let f = failure("probe", "file:/a.mp4");
    let states: Vec<_> = (0..3).map(|_| s.record_failure(&f, 3).unwrap()).collect();
    assert_eq!(
        states,
        [
            FailureState { attempts: 1, quarantined: false },
            FailureState { attempts: 2, quarantined: false },
            FailureState { attempts: 3, quarantined: true },
        ]
    );
    assert!(s.is_quarantined("probe", "file:/a.mp4").unwrap());
    assert!(!s.is_quarantined("probe", "file:/b.mp4").unwrap());
    assert!(!s.is_quarantined("decode", "file:/a.mp4").unwrap());
    // Quarantine stays even if a later run raises the threshold.
    assert_eq!(s.record_failure(&f, 10).unwrap(), FailureState { attempts: 4, quarantined: true });

    let mut g = failure("probe", "file:/b.mp4");
    g.class = ErrorClass::Timeout;
    s.record_failure(&g, 3).unwrap();
    s.record_failure(&failure("decode", "file:/c.mp4"), 1).unwrap();

    let all = s.failures(&FailureFilter::default()).unwrap();
    assert_eq!(
        all.iter().map(|r| (&*r.node, &*r.item)).collect::<Vec<_>>(),
        [("decode", "file:/c.mp4"), ("probe", "file:/a.mp4"), ("probe", "file:/b.mp4")]
    );
    let q = s.failures(&FailureFilter { node: None, quarantined_only: true }).unwrap();
    assert_eq!(q.len(), 2);
    let probe = s.failures(&FailureFilter { node: Some("probe".into()), quarantined_only: false }).unwrap();
    assert_eq!(probe.len(), 2);
    let a = &probe[0];
    assert_eq!((a.operator.as_str(), a.input.as_str()), ("video.probe", "/data/file:/a.mp4.mp4"));
    assert_eq!((a.class.as_str(), a.error_class()), ("invalid_input", Some(ErrorClass::InvalidInput)));
    assert_eq!((a.message.as_str(), a.attempts, a.quarantined, a.run_id), ("moov atom not found", 4, true, Some(run)));
    assert!(a.first_seen.len() >= 20 && a.first_seen <= a.last_seen, "{} {}", a.first_seen, a.last_seen);
    assert_eq!(probe[1].error_class(), Some(ErrorClass::Timeout));

    // Release one node's quarantined items: attempts start over.
    assert_eq!(s.retry_quarantined(Some("probe"), None).unwrap(), 1);
    assert!(!s.is_quarantined("probe", "file:/a.mp4").unwrap());
    assert!(s.is_quarantined("decode", "file:/c.mp4").unwrap());
    assert_eq!(s.record_failure(&f, 3).unwrap(), FailureState { attempts: 1, quarantined: false });
    assert_eq!(s.retry_quarantined(None, Some("nope")).unwrap(), 0);
    assert_eq!(s.retry_quarantined(None, Some("file:/c.mp4")).unwrap(), 1);
    assert_eq!(s.failures(&FailureFilter { node: None, quarantined_only: true }).unwrap(), []);

    s.clear_failure("probe", "file:/a.mp4").unwrap();
    assert_eq!(s.failures(&FailureFilter::default()).unwrap().len(), 2);
    s.clear_failure("probe", "never-failed").unwrap();
}

#[test]
fn next_epoch_follows_commits() {
    let (_dir, s) = store();
    assert_eq!(s.next_epoch().unwrap(), 0);
    s.commit_epoch("sink.a", 0, "first").unwrap();
    assert_eq!(s.next_epoch().unwrap(), 1);
    s.commit_epoch("sink.b", 4, "b4").unwrap();
    s.commit_epoch("sink.a", 2, "a2").unwrap();
    assert_eq!(s.next_epoch().unwrap(), 5);
    // Committing an epoch again replaces its row.
    s.commit_epoch("sink.a", 0, "again").unwrap();
    let a = s.commits(Some("sink.a")).unwrap();
    assert_eq!(a.iter().map(|c| (c.epoch, c.summary.as_str())).collect::<Vec<_>>(), [(0, "again"), (2, "a2")]);
    assert_eq!(a[0].run_id, None);
    assert_eq!(s.commits(None).unwrap().len(), 3);
    assert!(matches!(s.commit_epoch("x", u64::MAX, ""), Err(ServiceError::Catalog(_))));
}

#[test]
fn runs_begin_and_finish() {
    let (_dir, s) = store();
    let first = s.begin_run(&run_info()).unwrap();
    assert_eq!(s.current_run(), Some(first));
    let second = s.begin_run(&RunInfo { process_index: 0, ..run_info() }).unwrap();
    assert!(second > first);
    s.finish_run(first, RunStatus::Interrupted, "{}").unwrap();
    s.finish_run(second, RunStatus::Succeeded, r#"{"epochs":3}"#).unwrap();
    s.commit_epoch("sink", 0, "").unwrap();
    let runs = s.runs(10).unwrap();
    assert_eq!(
        runs.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        [(second, RunStatus::Succeeded), (first, RunStatus::Interrupted)]
    );
    let r = &runs[0];
    assert_eq!(
        (r.graph_path.as_path(), r.graph_name.as_str(), r.graph_hash.as_str()),
        (Path::new("graphs/demo.toml"), "demo", "abc")
    );
    assert_eq!((r.process_index, r.processes), (0, 2));
    assert_eq!(r.argv, run_info().argv);
    assert_eq!(r.summary_json.as_deref(), Some(r#"{"epochs":3}"#));
    assert!(r.finished_at.is_some());
    assert_eq!(s.runs(1).unwrap().len(), 1);
    assert_eq!(s.commits(None).unwrap()[0].run_id, Some(second));
    assert!(matches!(s.finish_run(999, RunStatus::Failed, "{}"), Err(StoreError::UnknownRun { run_id: 999, .. })));
    for st in [RunStatus::Running, RunStatus::Succeeded, RunStatus::Failed, RunStatus::Interrupted] {
        assert_eq!(RunStatus::parse(st.as_str()), Some(st));
    }
}

#[test]
fn two_stores_four_threads_each_write_concurrently() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let stores = [Arc::new(Store::open(dir.path()).unwrap()), Arc::new(Store::open(dir.path()).unwrap())];
    let mut handles = Vec::new();
    for (si, store) in stores.iter().enumerate() {
        for t in 0..THREADS {
            let store = Arc::clone(store);
            handles.push(std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let n = ((si as u64 * THREADS) + t) * PER_THREAD + i;
                    store.memo_put(&key(n), &format!("node{si}"), &n.to_le_bytes()).unwrap();
                    // Every thread also hits shared failure rows (read-modify-write under contention).
                    store.record_failure(&failure("shared", &format!("item{}", i % 10)), u32::MAX).unwrap();
                    store.record_failure(&failure("own", &format!("item{n}")), 3).unwrap();
                }
            }));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    let s = &stores[0];
    let total = 2 * THREADS * PER_THREAD;
    for n in 0..total {
        assert_eq!(s.memo_get(&key(n)).unwrap(), Some(n.to_le_bytes().to_vec()), "memo {n}");
    }
    let stats = s.memo_stats().unwrap();
    assert_eq!(stats.values().sum::<u64>(), total);
    let own = s.failures(&FailureFilter { node: Some("own".into()), quarantined_only: false }).unwrap();
    assert_eq!(own.len() as u64, total);
    let shared = s.failures(&FailureFilter { node: Some("shared".into()), quarantined_only: false }).unwrap();
    assert_eq!(shared.len(), 10);
    // No lost updates: every increment of the shared rows is counted.
    assert_eq!(shared.iter().map(|r| u64::from(r.attempts)).sum::<u64>(), total);
}

#[test]
fn concurrent_opens_of_a_new_store_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fresh");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let root = root.clone();
            std::thread::spawn(move || {
                let s = Store::open(&root)?;
                s.commit_epoch(&format!("n{i}"), i, "")
                    .map_err(|e| StoreError::Setup { path: root.clone(), reason: e.to_string() })
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    assert_eq!(Store::open(&root).unwrap().next_epoch().unwrap(), 4);
}

#[test]
fn opening_a_regular_file_errors_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"hello").unwrap();
    let err = Store::open(&file).unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("not-a-dir") && msg.contains("not a directory") && msg.contains("--store"), "{msg}");
    // Below a file, too.
    let err = Store::open(&file.join("run")).unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err:?}");
    assert_eq!(fs::read(&file).unwrap(), b"hello");
}

#[test]
fn garbage_catalog_is_not_a_medgen_catalog() {
    let mut header_then_junk = b"SQLite format 3\0".to_vec();
    header_then_junk.extend([0xA5u8; 8192]);
    for garbage in [&b"garbage"[..], &[0xA5u8; 8192][..], &b"SQLite format 3\0 then nonsense"[..], &header_then_junk] {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join(CATALOG_FILE);
        fs::write(&catalog, garbage).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::NotACatalog { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(CATALOG_FILE) && msg.contains("not a medgen catalog"), "{msg}");
        assert_eq!(fs::read(&catalog).unwrap(), garbage, "the file must be left as it was");
    }
}

#[test]
fn foreign_and_newer_catalogs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join(CATALOG_FILE);
    {
        let c = Connection::open(&catalog).unwrap();
        c.execute_batch("CREATE TABLE songs (title TEXT)").unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a medgen catalog"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let c = Connection::open(dir.path().join(CATALOG_FILE)).unwrap();
        c.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'", []).unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 999, .. }), "{err:?}");
    assert!(err.to_string().contains("upgrade medgen"), "{err}");
}

#[test]
fn stale_temp_files_are_cleared_on_open() {
    let (dir, s) = store();
    let root = s.root().to_path_buf();
    drop(s);
    let tmp = root.join("tmp");
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    let stale = tmp.join("stale.part");
    let fresh = tmp.join("fresh.part");
    let stale_dir = tmp.join("stale-dir");
    fs::write(&stale, b"x").unwrap();
    fs::write(&fresh, b"x").unwrap();
    fs::create_dir(&stale_dir).unwrap();
    fs::write(stale_dir.join("inner"), b"x").unwrap();
    for p in [&stale, &stale_dir.join("inner")] {
        fs::File::options().write(true).open(p).unwrap().set_modified(old).unwrap();
    }
    fs::File::open(&stale_dir).unwrap().set_modified(old).unwrap();
    let s = Store::open(&root).unwrap();
    assert!(!stale.exists() && !stale_dir.exists());
    assert!(fresh.exists());
    drop((s, dir));
}

#[cfg(unix)]
#[test]
fn unwritable_store_errors_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ro");
    drop(Store::open(&root).unwrap());
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o555)).unwrap();
    let writable_anyway = fs::write(root.join("tmp/probe"), b"").is_ok(); // e.g. running as root
    let result = Store::open(&root);
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o755)).unwrap();
    if writable_anyway {
        eprintln!("skipped: permissions do not apply to this user (root?)");
        return;
    }
    let err = result.unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err:?}");
    assert!(err.to_string().contains("not writable") && err.to_string().contains("--store"), "{err}");
}

#[test]
fn service_errors_keep_paths() {
    let e: ServiceError = StoreError::Io { path: "/x/y".into(), source: std::io::Error::other("boom") }.into();
    assert!(matches!(&e, ServiceError::Io { path, .. } if path == Path::new("/x/y")));
    let e: ServiceError = StoreError::MissingBlob { path: "/b".into(), key: "k".into() }.into();
    assert!(matches!(&e, ServiceError::MissingBlob(k) if k == "k"));
}

/// One run per store (per process index): a second is refused naming the first, until the first
/// lets go.
#[test]
fn a_second_run_of_a_store_is_refused_until_the_first_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Store::open(dir.path()).unwrap(), Store::open(dir.path()).unwrap());
    let held = a.lock_run(0, "running g.toml").unwrap();
    let e = b.lock_run(0, "running h.toml").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Busy { .. }), "{msg}");
    assert!(msg.contains(&format!("pid {}", std::process::id())) && msg.contains("running g.toml"), "{msg}");
    // Another process of a multi-process run holds its own index.
    let other = b.lock_run(1, "running g.toml").unwrap();
    drop((held, other));
    let again = b.lock_run(0, "running h.toml").unwrap();
    drop(again);
}

fn sample_records(blob: &str) -> Vec<u8> {
    use medgen_operators::api::{Record, Sample};
    let rec = Record::Sample(Sample {
        prompt_id: "p1".into(),
        checkpoint_epoch: 0,
        checkpoint_step: 10,
        video_blob: blob.into(),
        settings: Default::default(),
    });
    serde_json::to_vec(&vec![rec]).unwrap()
}

fn gc_policy<'a>(
    live: &'a std::collections::HashSet<String>,
    none: &'a std::collections::HashSet<String>,
    keep: Duration,
) -> GcPolicy<'a> {
    GcPolicy { live, live_blobs: none, live_nodes: none, keep_younger_than: keep }
}

/// Collection keeps live memo entries and every blob something kept refers to; it drops the
/// rest, counts bytes a hard link still holds as not freed, and spares what is younger than
/// the age given.
#[test]
fn gc_drops_unused_memo_entries_and_unreferenced_blobs() {
    let (dir, s) = store();
    let b: Vec<String> = (0..6).map(|i| s.blob_put(format!("blob {i}").repeat(100 + i).as_bytes()).unwrap()).collect();
    // 0: a live entry's sample; 2: referenced by the live entry and by a dead one; 1: only the
    // dead entry's; 3: an outputs row's; 4: nothing's; 5: nothing's, but a dataset links it.
    s.memo_put(&key(1), "samples", &sample_records(&b[0])).unwrap();
    s.memo_put(&key(2), "samples", &sample_records(&b[2])).unwrap();
    s.memo_put(&key(3), "samples", &sample_records(&b[1])).unwrap();
    s.memo_put(&key(4), "old_node", &sample_records(&b[2])).unwrap();
    s.memo_put(&key(5), "seg", b"not records").unwrap();
    s.record_output("ds", 0, "dataset/a.mp4", Some(&b[3])).unwrap();
    let linked = dir.path().join("dataset-clip.mp4");
    fs::hard_link(s.blob_file(&b[5]).unwrap(), &linked).unwrap();

    let live: std::collections::HashSet<String> = [key(1).0, key(2).0].into_iter().collect();
    let none = Default::default();
    // Everything is younger than an hour: nothing goes.
    let plan = s.gc_plan(&gc_policy(&live, &none, Duration::from_secs(3600))).unwrap();
    assert!(plan.memo_drop.is_empty() && plan.blobs_drop.is_empty(), "{plan:?}");

    // A node's cache (not records) stays while the node is in a graph.
    let nodes: std::collections::HashSet<String> = ["seg".to_string()].into_iter().collect();
    let policy = GcPolicy { live_nodes: &nodes, ..gc_policy(&live, &none, Duration::ZERO) };
    assert!(!s.gc_plan(&policy).unwrap().memo_drop.contains(&key(5).0));

    let plan = s.gc_plan(&gc_policy(&live, &none, Duration::ZERO)).unwrap();
    let mut dropped = plan.memo_drop.clone();
    dropped.sort();
    let mut want = vec![key(3).0, key(4).0, key(5).0];
    want.sort();
    assert_eq!(dropped, want);
    assert_eq!(plan.nodes["samples"], NodeGc { kept: 2, dropped: 1 });
    assert_eq!(plan.nodes["old_node"], NodeGc { kept: 0, dropped: 1 });
    let mut gone: Vec<&str> = plan.blobs_drop.iter().map(|b| b.key.as_str()).collect();
    gone.sort();
    let mut want: Vec<&str> = vec![&b[1], &b[4], &b[5]];
    want.sort();
    assert_eq!(gone, want);
    let len = |k: &str| fs::metadata(s.blob_file(k).unwrap()).unwrap().len();
    assert_eq!(plan.bytes_freed, len(&b[1]) + len(&b[4]));
    assert_eq!(plan.bytes_still_linked, len(&b[5]));
    assert_eq!((plan.blobs_kept, plan.missing_refs), (3, 0));

    let done = s.gc_apply(&plan, &mut |_| {}).unwrap();
    assert_eq!(done, GcDone { memo_dropped: 3, blobs_deleted: 3, bytes_freed: plan.bytes_freed });
    s.compact_catalog().unwrap();
    assert!(s.memo_get(&key(1)).unwrap().is_some() && s.memo_get(&key(2)).unwrap().is_some());
    assert!(s.memo_get(&key(3)).unwrap().is_none() && s.memo_get(&key(5)).unwrap().is_none());
    for (i, k) in b.iter().enumerate() {
        assert_eq!(s.blob_exists(k).unwrap(), [0, 2, 3].contains(&i), "blob {i}");
    }
    assert_eq!(fs::read(&linked).unwrap(), "blob 5".repeat(105).into_bytes(), "the dataset's link keeps its bytes");
    // A second collection finds nothing more.
    let plan = s.gc_plan(&gc_policy(&live, &none, Duration::ZERO)).unwrap();
    assert!(plan.memo_drop.is_empty() && plan.blobs_drop.is_empty(), "{plan:?}");
}

/// `--keep-days` counts from an entry's last use: one written long ago that a run still reads is
/// kept; one nobody has read since goes. A dry run's lookups (gc's, explain's) are not uses.
#[test]
fn gc_keep_age_counts_from_the_last_read() {
    let (_dir, s) = store();
    for k in 1..=3 {
        s.memo_put(&key(k), "samples", b"not records").unwrap();
    }
    let backdate = "UPDATE memo SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days')";
    s.write("backdate", |c| c.execute(backdate, [])).unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let none = Default::default();
    let dropped = |s: &Store| {
        let mut d = s.gc_plan(&gc_policy(&none, &none, week)).unwrap().memo_drop;
        d.sort();
        d
    };
    let all = {
        let mut v = vec![key(1).0, key(2).0, key(3).0];
        v.sort();
        v
    };
    assert_eq!(dropped(&s), all);
    // A run reads entry 2 (noted when the epoch commits) and entry 3 (when the run finishes).
    assert!(s.memo_get(&key(2)).unwrap().is_some());
    assert_eq!(dropped(&s), all, "a read counts once it is committed");
    s.commit_epoch("samples", 0, "{}").unwrap();
    assert!(s.memo_get(&key(3)).unwrap().is_some());
    let run = s.begin_run(&run_info()).unwrap();
    s.finish_run(run, RunStatus::Succeeded, "{}").unwrap();
    assert_eq!(dropped(&s), vec![key(1).0]);
    // gc's own dry runs read through Marking: no use.
    s.write("backdate", |c| c.execute(backdate.replace("created_at", "used_at").as_str(), [])).unwrap();
    let s = Arc::new(s);
    let marking = super::gc::Marking::new(s.clone());
    assert!(marking.memo_get(&key(2)).unwrap().is_some());
    let run = s.begin_run(&run_info()).unwrap();
    s.finish_run(run, RunStatus::Succeeded, "{}").unwrap();
    assert_eq!(dropped(&s), all);
}

/// A Store read outside a run (no epoch commits) writes its reads' use once enough distinct
/// entries wait, so the list neither grows without bound nor loses them; a repeated read is one.
#[test]
fn memo_use_is_written_in_batches_outside_a_run() {
    let (_dir, s) = store();
    let n = super::MEMO_USE_BATCH as u64;
    s.write("fill", |c| {
        let mut stmt = c.prepare(concat!(
            "INSERT INTO memo (key, node, value, created_at, run_id) VALUES ",
            "(?1, 'n', x'00', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days'), NULL)"
        ))?;
        for k in 0..=n {
            stmt.execute([key(k).0])?;
        }
        Ok(())
    })
    .unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let none = Default::default();
    let stale = |s: &Store| s.gc_plan(&gc_policy(&none, &none, week)).unwrap().memo_drop.len() as u64;
    assert_eq!(stale(&s), n + 1);
    for _ in 0..3 {
        assert!(s.memo_get(&key(0)).unwrap().is_some());
    }
    for k in 1..n - 1 {
        assert!(s.memo_get(&key(k)).unwrap().is_some());
    }
    assert_eq!(stale(&s), n + 1, "{} distinct reads wait", n - 1);
    assert!(s.memo_get(&key(n - 1)).unwrap().is_some());
    assert_eq!(stale(&s), 1, "the batch is written: only the entry never read is stale");
}

/// A latent refers to its codec through its safetensors header (`codec_ref = "blob:<key>"`):
/// collection must keep that blob while the latent is kept.
#[test]
fn gc_keeps_the_codec_a_kept_latent_names_in_its_header() {
    use medgen_operators::api::{Latent, Record};
    let (dir, s) = store();
    let codec = s.blob_put(b"a fitted codec").unwrap();
    let file = dir.path().join("latent.safetensors");
    let t = medgen_kernels::Tensor::zeros(&[2, 2], medgen_kernels::DType::F32, medgen_kernels::Device::Cpu).unwrap();
    let meta = [("codec_ref".to_string(), format!("blob:{codec}"))].into_iter().collect();
    medgen_kernels::io::safetensors::save(&file, &[("latent", &t)], Some(meta)).unwrap();
    let latent = s.blob_put_file(&file).unwrap();
    let rec = Record::Latent(Latent {
        clip_id: "c".into(),
        latent_blob: latent.clone(),
        shape: vec![2, 2],
        codec: "pca".into(),
        text_blob: None,
    });
    s.memo_put(&key(1), "latents", &serde_json::to_vec(&vec![rec]).unwrap()).unwrap();
    let live: std::collections::HashSet<String> = [key(1).0].into_iter().collect();
    let none = Default::default();
    let plan = s.gc_plan(&gc_policy(&live, &none, Duration::ZERO)).unwrap();
    assert!(plan.blobs_drop.is_empty(), "{plan:?}");
    // Once the latent's entry is not live, both go.
    let plan = s.gc_plan(&gc_policy(&Default::default(), &none, Duration::ZERO)).unwrap();
    assert_eq!(plan.blobs_drop.len(), 2, "{plan:?}");
}

/// The marking view serves memo hits and records them, names blobs without writing them, and
/// writes nothing to the catalog.
#[test]
fn marking_records_reads_and_writes_nothing() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    s.memo_put(&key(1), "n", b"v").unwrap();
    let m = Marking::new(s.clone());
    assert_eq!(m.memo_get(&key(1)).unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(m.memo_get(&key(2)).unwrap(), None);
    m.memo_put(&key(3), "n", b"w").unwrap();
    let k = m.blob_put(b"never written").unwrap();
    assert!(!s.blob_exists(&k).unwrap());
    m.record_failure(&failure("n", "x"), 1).unwrap();
    m.commit_epoch("n", 0, "{}").unwrap();
    let (memo, blobs) = m.marked();
    assert_eq!(memo, [key(1).0].into_iter().collect());
    assert!(blobs.contains(&k));
    assert!(s.memo_get(&key(3)).unwrap().is_none());
    assert!(s.failures(&FailureFilter::default()).unwrap().is_empty());
    assert!(s.commits(None).unwrap().is_empty());
}
