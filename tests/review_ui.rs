//! `medgen review` in headless Chromium: three raters rate three pairs through the page as a person
//! would (type a name, click radios, submit, skip), then the stored counts, WE and Cohen's kappa must
//! equal what the clicks imply; a request without the token is refused.
//!
//! Needs chromium and chromedriver (`scripts/setup.sh` installs chromium and chromium-driver) and,
//! for playable MP4s, gst-launch-1.0 with x264enc.

use medgen::store::{Outcome, Store, WarpLevel};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const PROMPTS: [(&str, &str); 3] =
    [("p1", "colonoscopy, a polyp in view"), ("p2", "a beating heart, echocardiogram"), ("p3", "a chest x-ray")];

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tiny WebDriver client (W3C protocol over HTTP/JSON).
struct Browser {
    agent: ureq::Agent,
    base: String,
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut r = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).content_type("application/json").send(body.to_string()),
        }
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {path} {body}: {text}");
        v["value"].clone()
    }

    fn open(base: &str, profile: &Path) -> (Browser, String) {
        let b = Browser { agent: agent(), base: base.to_string() };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required",
                    format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let v = b.call("POST", "/session", caps);
        let id = v["sessionId"].as_str().expect("a session id").to_string();
        (b, id)
    }

    fn find(&self, s: &str, css: &str) -> String {
        let v = self.call("POST", &format!("/session/{s}/element"), json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_string()
    }

    fn click(&self, s: &str, css: &str) {
        let e = self.find(s, css);
        self.call("POST", &format!("/session/{s}/element/{e}/click"), json!({}));
    }

    fn type_text(&self, s: &str, css: &str, text: &str) {
        let e = self.find(s, css);
        self.call("POST", &format!("/session/{s}/element/{e}/value"), json!({"text": text}));
    }

    fn script(&self, s: &str, js: &str) -> Value {
        self.call("POST", &format!("/session/{s}/execute/sync"), json!({"script": js, "args": []}))
    }

    fn wait_for(&self, s: &str, js: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.script(s, js);
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Video bytes → (model, prompt id).
type VideoIndex = BTreeMap<Vec<u8>, (String, String)>;

fn make_videos(dir: &Path) -> (PathBuf, PathBuf, VideoIndex, bool) {
    let gst = Command::new("gst-launch-1.0").arg("--version").output().is_ok();
    let mut by_bytes = BTreeMap::new();
    let mut folders = Vec::new();
    let mut playable = gst;
    for (m, model) in ["alpha", "beta"].iter().enumerate() {
        let folder = dir.join(model);
        std::fs::create_dir_all(&folder).unwrap();
        for (i, (id, _)) in PROMPTS.iter().enumerate() {
            let file = folder.join(format!("{id}.mp4"));
            // Distinct content per file: videotestsrc patterns 0, 2..6 (not the random ones).
            let pattern = [0, 2, 3, 4, 5, 6][m * 3 + i];
            let ok = gst
                && Command::new("gst-launch-1.0")
                    .args(["-q", "videotestsrc", "num-buffers=8", &format!("pattern={pattern}"), "!"])
                    .args(["video/x-raw,width=64,height=48,framerate=8/1", "!", "x264enc", "!", "mp4mux", "!"])
                    .arg("filesink")
                    .arg(format!("location={}", file.display()))
                    .status()
                    .is_ok_and(|s| s.success());
            if !ok {
                playable = false;
                std::fs::write(&file, format!("not really an mp4: {model} {id}")).unwrap();
            }
            let bytes = std::fs::read(&file).unwrap();
            assert!(by_bytes.insert(bytes, (model.to_string(), id.to_string())).is_none(), "identical videos");
        }
        folders.push(folder);
    }
    if !playable {
        eprintln!("note: gst-launch-1.0 with x264enc is missing; the videos are not playable (ratings still tested)");
    }
    (folders[0].clone(), folders[1].clone(), by_bytes, playable)
}

/// What a rater judges for one prompt, in model terms: (text alignment, medical accuracy, visual
/// quality, warping of alpha, warping of beta).
type Judgement = (Outcome, Outcome, Outcome, WarpLevel, WarpLevel);

fn plan() -> BTreeMap<(&'static str, &'static str), Judgement> {
    use Outcome::{AWins as A, BWins as B, BothLose as N};
    use WarpLevel::*;
    BTreeMap::from([
        (("ana", "p1"), (A, A, B, No, Severe)),
        (("ana", "p2"), (A, A, B, Minor, Moderate)),
        (("ana", "p3"), (N, A, A, No, No)),
        (("ben", "p1"), (A, A, B, No, Moderate)),
        (("ben", "p2"), (B, A, N, Moderate, Minor)),
        (("ben", "p3"), (N, A, A, No, No)),
        (("cy", "p1"), (A, A, N, Minor, Severe)),
        (("cy", "p2"), (B, A, N, No, Severe)),
        (("cy", "p3"), (N, A, B, No, Minor)),
    ])
}

fn side(outcome: Outcome, alpha_left: bool) -> &'static str {
    match (outcome, alpha_left) {
        (Outcome::BothLose, _) => "both_lose",
        (Outcome::AWins, true) | (Outcome::BWins, false) => "left",
        _ => "right",
    }
}

#[test]
fn raters_rate_pairs_in_headless_chromium() {
    for (tool, path) in [("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)] {
        assert!(
            Path::new(path).is_file(),
            "{tool} is missing at {path}: scripts/setup.sh installs chromium and chromium-driver \
             (apt-get install chromium chromium-driver)"
        );
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta, by_bytes, playable) = make_videos(dir.path());
    let prompts = dir.path().join("prompts.jsonl");
    let rows: String = PROMPTS.iter().map(|(id, p)| json!({"id": id, "prompt": p}).to_string() + "\n").collect();
    std::fs::write(&prompts, rows).unwrap();
    let store_dir = dir.path().join("store");

    // The real binary, on a free port.
    let mut child = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .args(["review", "--store"])
        .arg(&store_dir)
        .arg("--model")
        .arg(format!("alpha={}", alpha.display()))
        .arg("--model")
        .arg(format!("beta={}", beta.display()))
        .arg("--prompts")
        .arg(&prompts)
        .args(["--bind", "127.0.0.1:0", "--seed", "11", "--threads", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Guard(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("medgen review printed its URL").unwrap();
        if let Some(u) = line.strip_prefix("rate: ") {
            break u.to_string();
        }
    };
    let (origin, token) = url.split_once("/?token=").expect("URL with a token");
    assert_eq!(token.len(), 32, "{url}");
    assert!(origin.starts_with("http://127.0.0.1:"), "{url}");
    std::thread::spawn(move || for _ in lines {}); // keep draining stdout

    // Without the token: refused, for the page, the API and the videos.
    let http = agent();
    for path in ["/", "/api/results", "/api/task?rater=ana", "/page.js"] {
        let r = http.get(format!("{origin}{path}")).call().unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    let r = http.get(format!("{origin}/?token={}", "0".repeat(32))).call().unwrap();
    assert_eq!(r.status().as_u16(), 403, "wrong token");

    // chromedriver.
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let _driver = Guard(driver);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.get(format!("{base}/status")).call().is_ok_and(|r| r.status().as_u16() == 200) {
        assert!(Instant::now() < deadline, "chromedriver did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let plan = plan();
    let mut seen_left: BTreeMap<(String, String), String> = BTreeMap::new();
    for rater in ["ana", "ben", "cy"] {
        let profile = tempfile::tempdir().unwrap();
        let (b, s) = Browser::open(&base, profile.path());
        b.call("POST", &format!("/session/{s}/url"), json!({"url": url}));
        b.wait_for(&s, "return document.body.dataset.state === 'name'", "the name form");
        b.type_text(&s, "#rater-name", rater);
        b.click(&s, "#rater-start");
        let mut skipped = false;
        let mut rated = 0;
        while rated < PROMPTS.len() {
            b.wait_for(&s, "return document.body.dataset.state === 'ready'", "a pair");
            let prompt_id = b.script(&s, "return document.body.dataset.promptId").as_str().unwrap().to_string();
            let shown = b.script(&s, "return document.getElementById('prompt').textContent");
            let text = PROMPTS.iter().find(|(id, _)| *id == prompt_id).unwrap().1;
            assert_eq!(shown, text);
            let progress = b.script(&s, "return document.getElementById('progress').textContent");
            assert!(progress.as_str().unwrap().starts_with(&format!("{rated} of 3")), "{progress}");
            let page = b.script(&s, "return document.documentElement.outerHTML").as_str().unwrap().to_string();
            assert!(!page.contains("alpha") && !page.contains("beta"), "a model name reached the page");
            // cy skips the first pair once: it comes back after the others.
            if rater == "cy" && !skipped {
                skipped = true;
                b.click(&s, "#skip");
                b.wait_for(
                    &s,
                    &format!("return document.body.dataset.promptId !== '{prompt_id}' && document.body.dataset.state"),
                    "the next pair after skip",
                );
                continue;
            }
            // Which model is on the left: fetch what the left <video> plays and compare the bytes.
            let src = b.script(&s, "return document.getElementById('video-left').getAttribute('src')");
            let mut r = http.get(format!("{origin}{}", src.as_str().unwrap())).call().unwrap();
            let mut bytes = Vec::new();
            r.body_mut().as_reader().read_to_end(&mut bytes).unwrap();
            let (left_model, video_prompt) = by_bytes.get(&bytes).expect("the left video is one of ours").clone();
            assert_eq!(video_prompt, prompt_id, "the left video belongs to the prompt shown");
            if playable {
                let w = b.wait_for(
                    &s,
                    "const v = document.getElementById('video-right'); return v.readyState >= 1 && v.videoWidth",
                    "the browser to load the right video",
                );
                assert_eq!(w, json!(64));
            }
            let alpha_left = left_model == "alpha";
            seen_left.insert((rater.to_string(), prompt_id.clone()), left_model);
            let (ta, ma, vq, wa, wb) = plan[&(rater, prompt_id.as_str())];
            for (criterion, outcome) in [("text_alignment", ta), ("medical_accuracy", ma), ("visual_quality", vq)] {
                b.click(&s, &format!("#{criterion}-{}", side(outcome, alpha_left)));
            }
            let (wl, wr) = if alpha_left { (wa, wb) } else { (wb, wa) };
            b.click(&s, &format!("#warp_left-{}", wl.as_str()));
            b.click(&s, &format!("#warp_right-{}", wr.as_str()));
            b.click(&s, "#submit");
            rated += 1;
            b.wait_for(
                &s,
                &format!(
                    "const d = document.body.dataset; return d.state === 'done' || \
                     (d.state === 'ready' && d.promptId !== '{prompt_id}')"
                ),
                "the next pair after submit",
            );
        }
        let done = b.wait_for(&s, "return document.body.dataset.state === 'done'", "the done view");
        assert_eq!(done, json!(true));
        let progress = b.script(&s, "return document.getElementById('progress').textContent");
        assert!(progress.as_str().unwrap().starts_with("3 of 3"), "{progress}");
        if rater == "cy" {
            // The results view renders the counts as inline SVG bars.
            b.call("POST", &format!("/session/{s}/url"), json!({"url": format!("{origin}/results?token={token}")}));
            b.wait_for(&s, "return document.body.dataset.state === 'results'", "the results view");
            let rects = b.script(&s, "return document.querySelectorAll('#counts svg rect').length");
            assert_eq!(rects, json!(9));
            let text = b.script(&s, "return document.getElementById('view-results').textContent");
            assert!(text.as_str().unwrap().contains("alpha wins"), "{text}");
        }
        b.call("DELETE", &format!("/session/{s}"), json!({}));
    }

    // The catalog holds what was clicked, in model terms.
    let store = Store::open(&store_dir).unwrap();
    let ratings = store.ratings("alpha", "beta").unwrap();
    assert_eq!(ratings.len(), 27);
    for r in &ratings {
        let (ta, ma, vq, _, _) = plan[&(r.rater.as_str(), r.prompt_id.as_str())];
        let want = match r.criterion.as_str() {
            "text_alignment" => ta,
            "medical_accuracy" => ma,
            _ => vq,
        };
        assert_eq!(r.outcome, want, "{r:?}");
        assert_eq!(r.left_model, seen_left[&(r.rater.clone(), r.prompt_id.clone())], "{r:?}");
    }
    for (model, k) in [("alpha", 3), ("beta", 4)] {
        let rows = store.warping_ratings(model).unwrap();
        assert_eq!(rows.len(), 9);
        for w in rows {
            let j = plan[&(w.rater.as_str(), w.prompt_id.as_str())];
            assert_eq!(w.level, if k == 3 { j.3 } else { j.4 }, "{w:?}");
        }
    }

    // The results API: Fig. 6 counts, WE and kappa as computed by hand from the plan.
    let mut r = http.get(format!("{origin}/api/results?token={token}")).call().unwrap();
    let res: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let counts: Vec<(u64, u64, u64)> = res["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["a_wins"].as_u64().unwrap(), c["both_lose"].as_u64().unwrap(), c["b_wins"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, [(4, 3, 2), (9, 0, 0), (2, 3, 4)], "text alignment, medical accuracy, visual quality");
    // WE: alpha's videos never have 2 Moderate/Severe ratings; beta's p1 (3) and p2 (2) do.
    assert_eq!((&res["warping"][0]["errors"], &res["warping"][0]["judged"]), (&json!(0), &json!(3)));
    assert_eq!(res["warping"][0]["rate"], json!(0.0));
    assert_eq!((&res["warping"][1]["errors"], &res["warping"][1]["judged"]), (&json!(2), &json!(3)));
    assert!((res["warping"][1]["rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    let kappa = |r1: &str, r2: &str, scale: &str| -> (u64, Option<f64>) {
        let g = res["agreement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["rater_1"] == r1 && g["rater_2"] == r2 && g["scale"] == scale)
            .unwrap_or_else(|| panic!("no kappa for {r1}/{r2}/{scale}"));
        (g["n"].as_u64().unwrap(), g["kappa"].as_f64())
    };
    let expect = [
        ("ana", "ben", "text_alignment", 3, Some(0.5)),
        ("ana", "cy", "text_alignment", 3, Some(0.5)),
        ("ben", "cy", "text_alignment", 3, Some(1.0)),
        ("ana", "ben", "medical_accuracy", 3, None), // everyone said A: p_e = 1, undefined
        ("ben", "cy", "medical_accuracy", 3, None),
        ("ana", "ben", "visual_quality", 3, Some(0.5)),
        ("ana", "cy", "visual_quality", 3, Some(-2.0 / 7.0)),
        ("ben", "cy", "visual_quality", 3, Some(0.0)),
        ("ana", "ben", "warping", 6, Some(0.25)),
        ("ana", "cy", "warping", 6, Some(1.0 / 13.0)),
        ("ben", "cy", "warping", 6, Some(-1.0 / 14.0)),
    ];
    for (r1, r2, scale, n, want) in expect {
        let (got_n, got) = kappa(r1, r2, scale);
        assert_eq!(got_n, n, "{r1}/{r2}/{scale}");
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{r1}/{r2}/{scale}: kappa {g}, want {w}"),
            (g, w) => assert_eq!(g, w, "{r1}/{r2}/{scale}"),
        }
    }
    assert_eq!(res["agreement"].as_array().unwrap().len(), 3 * 4);

    // `medgen review --results` prints the same from the catalog.
    let out = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .args(["review", "--results", "--json", "--model", "alpha", "--model", "beta", "--store"])
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["counts"], res["counts"]);
    assert_eq!(cli["agreement"], res["agreement"]);
    let out = Command::new(env!("CARGO_BIN_EXE_medgen"))
        .args(["review", "--results", "--model", "alpha", "--model", "beta", "--store"])
        .arg(&store_dir)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("alpha wins") && table.contains("undefined") && table.contains("66.7%"), "{table}");
    eprintln!("review UI test took {:.1} s", started.elapsed().as_secs_f64());
}
