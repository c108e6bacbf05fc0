//! API tests without a browser: token refusal, blinding, left/right → model terms, upsert, ranges.

use super::server::Server;
use super::*;
use std::io::Read;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    server: Server,
    token: String,
    agent: ureq::Agent,
    /// (model, prompt) → file bytes.
    bytes: BTreeMap<(String, String), Vec<u8>>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
    let mut bytes = BTreeMap::new();
    let mut models = Vec::new();
    for model in ["alpha", "beta"] {
        let folder = dir.path().join(format!("videos-{model}"));
        std::fs::create_dir_all(&folder).unwrap();
        // p3 only for alpha: not a pair.
        let ids: &[&str] = if model == "alpha" { &["p1", "p2", "p3"] } else { &["p1", "p2"] };
        for id in ids {
            let data = format!("fake mp4 of {model} for {id}").into_bytes();
            std::fs::write(folder.join(format!("{id}.mp4")), &data).unwrap();
            bytes.insert((model.to_string(), id.to_string()), data);
        }
        std::fs::write(folder.join("notes.txt"), "ignored").unwrap();
        models.push(load_model(&store, model, &folder).unwrap());
    }
    let prompts: BTreeMap<String, String> =
        [("p1", "an endoscopy of the colon"), ("p2", "a chest x-ray, breathing"), ("p3", "unused")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    let b = models.pop().unwrap();
    let a = models.pop().unwrap();
    let review = Review::new(store.clone(), a, b, &prompts, ReviewOptions { raters: 3, seed: 5 }, [7; 32]).unwrap();
    assert_eq!(review.prompt_ids(), ["p1", "p2"]);
    let token = server::new_token().unwrap();
    let server = Server::start(Arc::new(review), "127.0.0.1:0".parse().unwrap(), token.clone(), 2).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).proxy(None).build().into();
    Fixture { _dir: dir, store, server, token, agent, bytes }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr())
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
        let mut rq = self.agent.get(self.url(path));
        if let Some(t) = token {
            rq = rq.header(server::TOKEN_HEADER, t);
        }
        let mut r = rq.call().unwrap();
        let mut body = Vec::new();
        r.body_mut().as_reader().read_to_end(&mut body).unwrap();
        (r.status().as_u16(), body)
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut r = self
            .agent
            .post(self.url(path))
            .header(server::TOKEN_HEADER, &self.token)
            .content_type("application/json")
            .send(body.to_string())
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), serde_json::from_str(&text).unwrap())
    }

    fn task(&self, rater: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("/api/task?rater={rater}"), Some(&self.token));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Which model a task's video URL shows, found from the bytes it serves.
    fn model_of(&self, video_path: &str, prompt: &str) -> String {
        let (status, body) = self.get(video_path, Some(&self.token));
        assert_eq!(status, 200);
        let found = self.bytes.iter().find(|(_, b)| **b == body).map(|((m, p), _)| (m.clone(), p.clone()));
        let (model, p) = found.expect("served bytes are one of the videos");
        assert_eq!(p, prompt);
        model
    }
}

#[test]
fn requests_without_the_right_token_are_refused() {
    let f = fixture();
    for path in ["/", "/results", "/page.js", "/api/task?rater=x", "/api/results", "/video/abc", "/nope"] {
        assert_eq!(f.get(path, None).0, 403, "{path} without a token");
        assert_eq!(f.get(path, Some("0123456789abcdef0123456789abcdef")).0, 403, "{path} with a wrong token");
        let wrong_query = format!("{path}{}token={}x", if path.contains('?') { '&' } else { '?' }, f.token);
        assert_eq!(f.get(&wrong_query, None).0, 403, "{wrong_query}");
    }
    let (status, body) = f.get(&format!("/?token={}", f.token), None);
    assert_eq!(status, 200);
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(&format!("/page.js?token={}", f.token)), "the page loads its script with the token");
    assert_eq!(f.get("/api/results", Some(&f.token)).0, 200);
    assert_eq!(f.get("/nope", Some(&f.token)).0, 404);
    // POST without a token.
    let r = f.agent.post(f.url("/api/rate")).send("{}").unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(f.server.url().ends_with(&format!("/?token={}", f.token)));
}

#[test]
fn tasks_are_blind() {
    let f = fixture();
    for rater in ["ana", "ben", "cy", "dr%20who"] {
        let t = f.task(rater);
        let text = t.to_string();
        for secret in ["alpha", "beta", "videos-", ".mp4"] {
            assert!(!text.contains(secret), "task JSON reveals `{secret}`: {text}");
        }
        assert_eq!((t["done"].as_u64(), t["total"].as_u64()), (Some(0), Some(2)));
        assert_eq!(t["task"]["prompt_id"], "p1");
        assert_eq!(t["task"]["prompt"], "an endoscopy of the colon");
    }
    // The order differs between raters for some pair (seeded coin flips), and is stable per rater.
    let sides: Vec<String> = ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]
        .iter()
        .map(|r| f.model_of(f.task(r)["task"]["left"].as_str().unwrap(), "p1"))
        .collect();
    assert!(sides.iter().any(|m| m == "alpha") && sides.iter().any(|m| m == "beta"), "{sides:?}");
    assert_eq!(f.task("r1")["task"]["left"], f.task("r1")["task"]["left"]);
    assert_eq!(f.get("/video/00000000000000000000000000000000", Some(&f.token)).0, 404);
}

fn form(rater: &str, prompt: &str, choice: &str, left: &str, right: &str) -> serde_json::Value {
    serde_json::json!({
        "rater": rater,
        "prompt_id": prompt,
        "criteria": {"text_alignment": choice, "medical_accuracy": "both_lose", "visual_quality": choice},
        "warping": {"left": left, "right": right},
    })
}

#[test]
fn ratings_are_stored_in_model_terms_and_replaced() {
    let f = fixture();
    let t = f.task("ana");
    let left = f.model_of(t["task"]["left"].as_str().unwrap(), "p1");
    let (status, next) = f.post("/api/rate", &form("ana", "p1", "left", "severe", "no"));
    assert_eq!(status, 200, "{next}");
    assert_eq!((next["done"].as_u64(), next["task"]["prompt_id"].as_str()), (Some(1), Some("p2")));
    let rows = f.store.ratings("alpha", "beta").unwrap();
    assert_eq!(rows.len(), 3);
    let ta = rows.iter().find(|r| r.criterion == "text_alignment").unwrap();
    let want = if left == "alpha" { Outcome::AWins } else { Outcome::BWins };
    assert_eq!((ta.outcome, ta.left_model.as_str()), (want, left.as_str()));
    assert_eq!(rows.iter().find(|r| r.criterion == "medical_accuracy").unwrap().outcome, Outcome::BothLose);
    let w = f.store.warping_ratings(&left).unwrap();
    assert_eq!((w.len(), w[0].level), (1, WarpLevel::Severe));

    // Re-rating replaces, it does not add.
    let (status, _) = f.post("/api/rate", &form("ana", "p1", "right", "minor", "moderate"));
    assert_eq!(status, 200);
    let rows = f.store.ratings("alpha", "beta").unwrap();
    assert_eq!(rows.len(), 3);
    let ta = rows.iter().find(|r| r.criterion == "text_alignment").unwrap();
    let want = if left == "alpha" { Outcome::BWins } else { Outcome::AWins };
    assert_eq!(ta.outcome, want);
    assert_eq!(f.store.warping_ratings(&left).unwrap()[0].level, WarpLevel::Minor);
    assert_eq!(f.store.warping_ratings("alpha").unwrap().len() + f.store.warping_ratings("beta").unwrap().len(), 2);

    // The results API counts it.
    let (_, body) = f.get("/api/results", Some(&f.token));
    let res: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(res["models"], serde_json::json!(["alpha", "beta"]));
    let c = &res["counts"][0];
    assert_eq!(c["a_wins"].as_u64().unwrap() + c["b_wins"].as_u64().unwrap(), 1);
    assert_eq!(res["counts"][1]["both_lose"], 1);
}

#[test]
fn bad_forms_are_refused_with_the_field_named() {
    let f = fixture();
    let mut missing = form("ana", "p1", "left", "no", "no");
    missing["criteria"].as_object_mut().unwrap().remove("visual_quality");
    let (status, body) = f.post("/api/rate", &missing);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("visual_quality"), "{body}");
    let (status, body) = f.post("/api/rate", &form("ana", "p9", "left", "no", "no"));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("p9"), "{body}");
    let (status, _) = f.post("/api/rate", &form("ana", "p1", "middle", "no", "no"));
    assert_eq!(status, 400);
    let (status, body) = f.post("/api/rate", &form("  ", "p1", "left", "no", "no"));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("rater"), "{body}");
    assert!(f.store.ratings("alpha", "beta").unwrap().is_empty());
}

#[test]
fn skip_postpones_and_videos_serve_ranges() {
    let f = fixture();
    let (status, next) = f.post("/api/skip", &serde_json::json!({"rater": "ben", "prompt_id": "p1"}));
    assert_eq!(status, 200);
    assert_eq!(next["task"]["prompt_id"], "p2");
    f.post("/api/rate", &form("ben", "p2", "left", "no", "no"));
    // Only the skipped pair is left: it comes back.
    assert_eq!(f.task("ben")["task"]["prompt_id"], "p1");
    f.post("/api/rate", &form("ben", "p1", "left", "no", "no"));
    let t = f.task("ben");
    assert_eq!((t["done"].as_u64(), t["task"].is_null()), (Some(2), true));

    let video = f.task("cy")["task"]["left"].as_str().unwrap().to_string();
    let full = f.get(&video, Some(&f.token)).1;
    let mut r =
        f.agent.get(f.url(&video)).header(server::TOKEN_HEADER, &f.token).header("Range", "bytes=2-5").call().unwrap();
    assert_eq!(r.status().as_u16(), 206);
    let range = r.headers().get("content-range").unwrap().to_str().unwrap().to_string();
    assert_eq!(range, format!("bytes 2-5/{}", full.len()));
    assert_eq!(r.body_mut().read_to_vec().unwrap(), full[2..6]);
    let r = f.agent.get(f.url(&video)).header(server::TOKEN_HEADER, &f.token).header("Range", "bytes=999-").call();
    assert_eq!(r.unwrap().status().as_u16(), 416);
}

#[test]
fn sources_from_sample_jsonl() {
    use medgen_operators::api::Services;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let old = store.blob_put(b"old video").unwrap();
    let new = store.blob_put(b"new video").unwrap();
    let rows = [
        serde_json::json!({"kind": "sample", "prompt_id": "p1", "checkpoint_epoch": 0, "checkpoint_step": 5,
            "video_blob": old, "settings": {"prompt": "a colonoscopy"}}),
        serde_json::json!({"kind": "sample", "prompt_id": "p1", "checkpoint_epoch": 1, "checkpoint_step": 9,
            "video_blob": new, "settings": {"prompt": "a colonoscopy"}}),
        serde_json::json!({"kind": "metric", "subject": "x", "name": "fvd", "value": 1.0}),
    ];
    let path = dir.path().join("samples.jsonl");
    std::fs::write(&path, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    let m = load_model(&store, "ours", &path).unwrap();
    assert_eq!(m.videos.len(), 1);
    assert_eq!(std::fs::read(&m.videos["p1"].path).unwrap(), b"new video");
    assert_eq!(m.videos["p1"].prompt.as_deref(), Some("a colonoscopy"));

    // A blob missing from the store, a bad name, an empty folder: clear errors.
    let missing = serde_json::json!({"kind": "sample", "prompt_id": "p2", "video_blob": "ab".repeat(32)});
    std::fs::write(&path, missing.to_string()).unwrap();
    let e = load_model(&store, "ours", &path).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("not in the run store"), "{e}");
    let e = load_model(&store, "no spaces", &path).unwrap_err().to_string();
    assert!(e.contains("bad model name"), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = load_model(&store, "ours", &empty).unwrap_err().to_string();
    assert!(e.contains("no .mp4 files"), "{e}");

    // Pairs need prompt text.
    let folder = dir.path().join("v");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("p1.mp4"), b"x").unwrap();
    let a = load_model(&store, "a", &folder).unwrap();
    let b = load_model(&store, "b", &folder).unwrap();
    let store = Arc::new(store);
    let opts = ReviewOptions { raters: 3, seed: 0 };
    let e = Review::new(store.clone(), a.clone(), b.clone(), &BTreeMap::new(), opts.clone(), [0; 32]).unwrap_err();
    assert!(e.to_string().contains("--prompts"), "{e}");
    let e = Review::new(store, a.clone(), a, &BTreeMap::new(), opts, [0; 32]).unwrap_err();
    assert!(e.to_string().contains("two different names"), "{e}");
}
