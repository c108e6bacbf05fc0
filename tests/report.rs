//! `sink.report` renders in headless Chromium with its funnel and contact sheets visible.
#![cfg(feature = "video")]

use std::path::Path;
use std::process::Command;

fn chromium(args: &[&str], page: &Path) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (installed by scripts/setup.sh)")
}

#[test]
fn report_renders_funnel_and_contact_sheets_in_chromium() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/samples");
    assert!(samples.join("carphone_pristine.mp4").exists(), "run scripts/fetch-samples.sh first");
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("r.toml");
    std::fs::write(
        &graph,
        format!(
            r#"[graph]
name = "r"
[nodes.videos]
op = "source.files"
paths = ["{}/carphone_*.mp4", "{}/cityCC0.mpg"]
[nodes.cap]
op = "caption.template"
inputs = ["videos"]
[nodes.report]
op = "sink.report"
inputs = ["videos", "cap"]
title = "QA of the sample set"
samples_per_stage = 2
"#,
            samples.display(),
            samples.display()
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .args(["run", "-q", "--store"])
        .arg(&store)
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = store.join("outputs/report/index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Funnel in graph order: videos first, then captions; 3 items each.
    let v = html.find(">videos</td>").unwrap();
    let c = html.find(">cap</td>").unwrap();
    assert!(v < c);
    // Exactly `samples_per_stage` thumbnails per stage, each a real JPEG.
    assert_eq!(html.matches("<div class=\"card kept\">").count(), 2);
    assert_eq!(html.matches("src=\"data:image/jpeg;base64,/9j/").count(), 2);

    // The browser's DOM after rendering has the same structure ...
    let dom = chromium(&["--dump-dom"], &page);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("QA of the sample set"));
    assert_eq!(dom.matches("class=\"bar\"").count(), 2);
    assert_eq!(dom.matches("<img src=\"data:image/jpeg").count(), 2);
    // ... and a screenshot shows it (a PNG well above an empty page's size).
    let png = dir.path().join("shot.png");
    let shot = chromium(&["--window-size=1200,900", &format!("--screenshot={}", png.display())], &page);
    assert!(png.exists(), "{}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(bytes.len() > 30_000, "screenshot is {} bytes: the thumbnails did not render", bytes.len());
}
