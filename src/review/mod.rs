//! `medgen review`: doctors rate two models' videos blind, pairwise, in a local web page (MedGen,
//! arXiv 2507.05675, Fig. 6).
//!
//! For every prompt both models have a video for (a *pair*), a rater sees the prompt and the two videos
//! side by side, in an order randomised per (rater, pair) from the seed, with no model names, and
//! judges three criteria (text alignment, medical accuracy, visual quality) as left better / both
//! lose / right better, and each video's warping error (No / Minor / Moderate / Severe). The store
//! keeps the outcome in model terms (A wins / both lose / B wins) with the side model A was shown on.
//!
//! [`Review`] is the engine (tasks, submissions, results), [`server`] its HTTP front end, [`stats`]
//! the numbers.

pub mod server;
pub mod stats;

use crate::store::{Outcome, RatingRow, Store, StoreError, WarpLevel, WarpingRow};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The criteria of the pairwise comparison: (id, label shown to raters).
pub const CRITERIA: [(&str, &str); 3] = [
    ("text_alignment", "Text alignment"),
    ("medical_accuracy", "Medical accuracy"),
    ("visual_quality", "Visual quality"),
];

/// The criterion ids.
pub fn criterion_ids() -> Vec<&'static str> {
    CRITERIA.iter().map(|(id, _)| *id).collect()
}

/// Longest accepted rater name, in characters.
pub const MAX_RATER_LEN: usize = 64;

/// What can go wrong in `medgen review`.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A `--model` source (folder or JSONL) cannot be used.
    #[error("model `{model}`: source {path}: {reason}")]
    Source {
        /// The model name.
        model: String,
        /// The folder or file.
        path: PathBuf,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// A bad model name or model list.
    #[error("{0}")]
    Models(String),
    /// The two models share no prompt.
    #[error("models `{a}` and `{b}` have no prompt id in common ({a}: {a_ids}; {b}: {b_ids}); nothing to compare")]
    NoPairs {
        /// Model A.
        a: String,
        /// Model B.
        b: String,
        /// Some of A's prompt ids.
        a_ids: String,
        /// Some of B's prompt ids.
        b_ids: String,
    },
    /// A pair has no prompt text to show.
    #[error(
        "no prompt text for prompt id(s) {ids}: give --prompts FILE (`.jsonl` rows {{\"id\": .., \"prompt\": ..}}) \
         or use JSONL sources whose settings.prompt carry it"
    )]
    MissingPrompt {
        /// The prompt ids without text.
        ids: String,
    },
    /// The prompts file cannot be read.
    #[error("{0}")]
    Prompts(String),
    /// A request the API refuses (HTTP 400), naming the field.
    #[error("{0}")]
    BadRequest(String),
    /// The web server cannot start (bind failure, no randomness).
    #[error("{0}")]
    Server(String),
}

/// One model's videos, by prompt id.
#[derive(Clone, Debug)]
pub struct ModelVideos {
    /// The model's name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// prompt id → video.
    pub videos: BTreeMap<String, Video>,
}

/// One video of a model.
#[derive(Clone, Debug)]
pub struct Video {
    /// The MP4 file.
    pub path: PathBuf,
    /// The prompt text, when the source carries it (`settings.prompt` of a Sample record).
    pub prompt: Option<String>,
}

/// Check a model name: 1–64 of letters, digits, `.`, `_`, `-`.
pub fn check_model_name(name: &str) -> Result<(), ReviewError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ReviewError::Models(format!(
            "bad model name `{name}`: use 1-64 letters, digits, `.`, `_` or `-` (as in --model NAME=SOURCE)"
        )))
    }
}

/// Load a model's videos from `source`: a folder of `<prompt_id>.mp4` files, or a JSONL file of
/// Sample records as `sink.jsonl` writes them (`prompt_id`, `video_blob`, `settings.prompt`; blob keys
/// resolve in `store`). Rows of other kinds are skipped; when a prompt id has several samples, the one
/// of the latest checkpoint (epoch, step) is used.
pub fn load_model(store: &Store, name: &str, source: &Path) -> Result<ModelVideos, ReviewError> {
    check_model_name(name)?;
    let err = |reason: String| ReviewError::Source { model: name.to_string(), path: source.to_path_buf(), reason };
    let meta = std::fs::metadata(source)
        .map_err(|e| err(format!("{e}; give a folder of <prompt_id>.mp4 files or a sink.jsonl file of samples")))?;
    let mut videos = BTreeMap::new();
    if meta.is_dir() {
        let entries = std::fs::read_dir(source).map_err(|e| err(e.to_string()))?;
        for entry in entries {
            let path = entry.map_err(|e| err(e.to_string()))?.path();
            let is_mp4 = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mp4"));
            if !is_mp4 || !path.is_file() {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            videos.insert(id.to_string(), Video { path: path.clone(), prompt: None });
        }
        if videos.is_empty() {
            return Err(err("the folder has no .mp4 files (expected <prompt_id>.mp4)".into()));
        }
    } else {
        let text = std::fs::read_to_string(source).map_err(|e| err(e.to_string()))?;
        let mut best: BTreeMap<String, ((u64, u64), Video)> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let at = |what: String| err(format!("line {}: {what}", i + 1));
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
            if v.get("kind").and_then(|k| k.as_str()).is_some_and(|k| k != "sample") {
                continue;
            }
            let field = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| at(format!("a Sample row needs a string `{k}`")))
            };
            let prompt_id = field("prompt_id")?;
            let blob = field("video_blob")?;
            let path = store.blob_file(blob).map_err(|e| at(e.to_string()))?;
            if !path.is_file() {
                return Err(at(format!(
                    "video blob {blob} is not in the run store {} (is --store the store that made the samples?)",
                    store.root().display()
                )));
            }
            let prompt = v.pointer("/settings/prompt").and_then(|p| p.as_str()).map(str::to_string);
            let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            let rank = (num("checkpoint_epoch"), num("checkpoint_step"));
            if best.get(prompt_id).is_none_or(|(r, _)| rank >= *r) {
                best.insert(prompt_id.to_string(), (rank, Video { path, prompt }));
            }
        }
        videos = best.into_iter().map(|(k, (_, v))| (k, v)).collect();
        if videos.is_empty() {
            return Err(err("the file has no Sample rows (expected sink.jsonl rows of a sample.t2v node)".into()));
        }
    }
    Ok(ModelVideos { name: name.to_string(), videos })
}

/// One prompt with both models' videos.
#[derive(Clone, Debug)]
struct Pair {
    prompt_id: String,
    prompt: String,
    /// Opaque ids the page fetches them by.
    ids: [String; 2],
}

/// Options of a review session.
#[derive(Clone, Debug)]
pub struct ReviewOptions {
    /// Raters per video in the panel (3 in the paper): the WE rule needs a majority of them
    /// (`raters / 2 + 1`) to agree.
    pub raters: u64,
    /// Seeds the left/right order of each (rater, pair).
    pub seed: u64,
}

/// A review session between two models.
pub struct Review {
    store: Arc<Store>,
    models: [String; 2],
    pairs: Vec<Pair>,
    videos: HashMap<String, PathBuf>,
    options: ReviewOptions,
    skipped: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl std::fmt::Debug for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Review").field("models", &self.models).field("pairs", &self.pairs.len()).finish()
    }
}

/// What the page shows a rater next.
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    /// The rater.
    pub rater: String,
    /// Pairs this rater has rated.
    pub done: usize,
    /// All pairs.
    pub total: usize,
    /// The next pair, `None` when all are rated.
    pub task: Option<Task>,
    /// The criteria: (id, label).
    pub criteria: Vec<Criterion>,
}

/// A criterion as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Criterion {
    /// Its id (the form field name).
    pub id: &'static str,
    /// Its label.
    pub label: &'static str,
}

/// One pair as the page shows it: no model names, only opaque video URLs.
#[derive(Clone, Debug, Serialize)]
pub struct Task {
    /// The prompt id.
    pub prompt_id: String,
    /// The prompt text.
    pub prompt: String,
    /// URL path of the left video (add the token).
    pub left: String,
    /// URL path of the right video (add the token).
    pub right: String,
}

/// A side of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// The left video is better.
    Left,
    /// Both videos lose.
    BothLose,
    /// The right video is better.
    Right,
}

/// A rater's form for one pair, in left/right terms as the page knows it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The rater's name.
    pub rater: String,
    /// The pair's prompt id.
    pub prompt_id: String,
    /// criterion id → choice; every criterion is required.
    pub criteria: BTreeMap<String, Choice>,
    /// Warping level of the left and right video.
    pub warping: SideLevels,
}

/// Warping levels of the two videos.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideLevels {
    /// The left video's level.
    pub left: WarpLevel,
    /// The right video's level.
    pub right: WarpLevel,
}

/// Everything `medgen review --results` and the results page show.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// Model A and model B.
    pub models: [String; 2],
    /// Pairs in this session (0 when computed from the store alone).
    pub pairs: usize,
    /// Raters who rated anything.
    pub raters: Vec<String>,
    /// Fig. 6 counts per criterion.
    pub counts: Vec<stats::CriterionCounts>,
    /// Labels of the criteria, in the order of `counts`.
    pub criterion_labels: Vec<String>,
    /// WE per model (A, B).
    pub warping: Vec<stats::WarpingRate>,
    /// The WE rule in words.
    pub warping_rule: String,
    /// Cohen's kappa per pair of raters and scale.
    pub agreement: Vec<stats::RaterAgreement>,
}

/// Compute the results for models `a` and `b` from the store; `raters` is the panel size (the WE
/// threshold is its majority, `raters / 2 + 1`).
pub fn results(store: &Store, a: &str, b: &str, raters: u64, pairs: usize) -> Result<Results, ReviewError> {
    let ratings = store.ratings(a, b)?;
    let mut warping = store.warping_ratings(a)?;
    warping.extend(store.warping_ratings(b)?);
    let ids = criterion_ids();
    let min_raters = raters / 2 + 1;
    let names: BTreeSet<String> =
        ratings.iter().map(|r| r.rater.clone()).chain(warping.iter().map(|w| w.rater.clone())).collect();
    Ok(Results {
        models: [a.to_string(), b.to_string()],
        pairs,
        raters: names.into_iter().collect(),
        counts: stats::fig6_counts(&ratings, &ids),
        criterion_labels: CRITERIA.iter().map(|(_, l)| l.to_string()).collect(),
        warping: vec![stats::warping_rate(a, &warping, min_raters), stats::warping_rate(b, &warping, min_raters)],
        warping_rule: format!(
            "WE = share of a model's videos rated Moderate or Severe by at least {min_raters} raters, among its \
             videos rated by at least {min_raters} raters (panel of {raters})"
        ),
        agreement: stats::agreements(&ratings, &warping, &ids),
    })
}

/// Check and normalise a rater name (trimmed; 1–64 characters; no control characters).
pub fn check_rater(name: &str) -> Result<String, ReviewError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_RATER_LEN || name.chars().any(char::is_control) {
        return Err(ReviewError::BadRequest(format!(
            "`rater` must be a name of 1-{MAX_RATER_LEN} characters without control characters"
        )));
    }
    Ok(name.to_string())
}

impl Review {
    /// A session comparing `a` (model A) with `b` (model B) on the prompt ids both have. Prompt
    /// texts come from `prompts` (id → text) first, then from the sources; every pair needs one.
    /// `key` makes the video ids opaque (use random bytes).
    pub fn new(
        store: Arc<Store>,
        a: ModelVideos,
        b: ModelVideos,
        prompts: &BTreeMap<String, String>,
        options: ReviewOptions,
        key: [u8; 32],
    ) -> Result<Review, ReviewError> {
        if a.name == b.name {
            return Err(ReviewError::Models(format!("both models are named `{}`; give two different names", a.name)));
        }
        let mut pairs = Vec::new();
        let mut missing = Vec::new();
        let mut videos = HashMap::new();
        for (id, va) in &a.videos {
            let Some(vb) = b.videos.get(id) else { continue };
            let text = prompts.get(id).cloned().or_else(|| va.prompt.clone()).or_else(|| vb.prompt.clone());
            let Some(prompt) = text else {
                missing.push(id.clone());
                continue;
            };
            let vid = |model: &str| {
                let mut h = blake3::Hasher::new_keyed(&key);
                h.update(model.as_bytes());
                h.update(&[0]);
                h.update(id.as_bytes());
                h.finalize().to_hex()[..32].to_string()
            };
            let ids = [vid(&a.name), vid(&b.name)];
            videos.insert(ids[0].clone(), va.path.clone());
            videos.insert(ids[1].clone(), vb.path.clone());
            pairs.push(Pair { prompt_id: id.clone(), prompt, ids });
        }
        if !missing.is_empty() {
            return Err(ReviewError::MissingPrompt { ids: missing.join(", ") });
        }
        if pairs.is_empty() {
            let some = |m: &ModelVideos| {
                let ids: Vec<&str> = m.videos.keys().take(5).map(String::as_str).collect();
                ids.join(", ") + if m.videos.len() > 5 { ", …" } else { "" }
            };
            return Err(ReviewError::NoPairs {
                a: a.name.clone(),
                b: b.name.clone(),
                a_ids: some(&a),
                b_ids: some(&b),
            });
        }
        Ok(Review { store, models: [a.name, b.name], pairs, videos, options, skipped: Mutex::new(HashMap::new()) })
    }

    /// Model A and model B.
    pub fn models(&self) -> &[String; 2] {
        &self.models
    }

    /// The prompt ids of the pairs, sorted.
    pub fn prompt_ids(&self) -> Vec<&str> {
        self.pairs.iter().map(|p| p.prompt_id.as_str()).collect()
    }

    /// The file behind an opaque video id.
    pub fn video_file(&self, id: &str) -> Option<&Path> {
        self.videos.get(id).map(PathBuf::as_path)
    }

    /// Whether `rater` sees model A on the left for `prompt_id`: one seeded coin flip per
    /// (seed, rater, prompt), the same every time they load the pair.
    pub fn a_on_left(&self, rater: &str, prompt_id: &str) -> bool {
        let mut h = blake3::Hasher::new();
        h.update(b"medgen review order\0");
        h.update(&self.options.seed.to_le_bytes());
        h.update(rater.as_bytes());
        h.update(&[0]);
        h.update(prompt_id.as_bytes());
        h.finalize().as_bytes()[0] & 1 == 0
    }

    /// Prompt ids `rater` has fully rated (all criteria and both videos' warping).
    fn rated_by(&self, rater: &str) -> Result<BTreeSet<String>, ReviewError> {
        let [a, b] = &self.models;
        let mut per_prompt: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.store.ratings(a, b)?.into_iter().filter(|r| r.rater == rater) {
            *per_prompt.entry(r.prompt_id).or_default() += 1;
        }
        let mut warped: BTreeMap<String, usize> = BTreeMap::new();
        for m in [a, b] {
            for w in self.store.warping_ratings(m)?.into_iter().filter(|w| w.rater == rater) {
                *warped.entry(w.prompt_id).or_default() += 1;
            }
        }
        Ok(per_prompt
            .into_iter()
            .filter(|(p, n)| *n >= CRITERIA.len() && warped.get(p).copied().unwrap_or(0) >= 2)
            .map(|(p, _)| p)
            .collect())
    }

    fn skipped(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.skipped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next pair for `rater`: the first unrated pair they have not skipped, else the first
    /// skipped one (skips only postpone). Model names are never part of it.
    pub fn next_task(&self, rater: &str) -> Result<TaskView, ReviewError> {
        let rater = check_rater(rater)?;
        let rated = self.rated_by(&rater)?;
        let skipped = self.skipped().get(&rater).cloned().unwrap_or_default();
        let open = || self.pairs.iter().filter(|p| !rated.contains(&p.prompt_id));
        let next = open().find(|p| !skipped.contains(&p.prompt_id)).or_else(|| open().next());
        let task = next.map(|p| {
            let (left, right) = if self.a_on_left(&rater, &p.prompt_id) { (0, 1) } else { (1, 0) };
            Task {
                prompt_id: p.prompt_id.clone(),
                prompt: p.prompt.clone(),
                left: format!("/video/{}", p.ids[left]),
                right: format!("/video/{}", p.ids[right]),
            }
        });
        let done = self.pairs.iter().filter(|p| rated.contains(&p.prompt_id)).count();
        Ok(TaskView {
            rater,
            done,
            total: self.pairs.len(),
            task,
            criteria: CRITERIA.iter().map(|&(id, label)| Criterion { id, label }).collect(),
        })
    }

    /// Postpone `prompt_id` for `rater` (kept in memory for this session).
    pub fn skip(&self, rater: &str, prompt_id: &str) -> Result<(), ReviewError> {
        let rater = check_rater(rater)?;
        self.pair(prompt_id)?;
        self.skipped().entry(rater).or_default().insert(prompt_id.to_string());
        Ok(())
    }

    fn pair(&self, prompt_id: &str) -> Result<&Pair, ReviewError> {
        self.pairs
            .iter()
            .find(|p| p.prompt_id == prompt_id)
            .ok_or_else(|| ReviewError::BadRequest(format!("unknown prompt_id `{prompt_id}`")))
    }

    /// Store a rater's form, converted from left/right to model terms (re-rating replaces).
    pub fn submit(&self, s: &Submission) -> Result<(), ReviewError> {
        let rater = check_rater(&s.rater)?;
        let pair = self.pair(&s.prompt_id)?;
        for k in s.criteria.keys() {
            if !CRITERIA.iter().any(|(id, _)| id == k) {
                return Err(ReviewError::BadRequest(format!("unknown criterion `{k}`")));
            }
        }
        let [a, b] = &self.models;
        let a_left = self.a_on_left(&rater, &pair.prompt_id);
        let left_model = if a_left { a } else { b };
        let mut ratings = Vec::new();
        for (id, _) in CRITERIA {
            let choice =
                s.criteria.get(id).ok_or_else(|| ReviewError::BadRequest(format!("criterion `{id}` is not rated")))?;
            let outcome = match (choice, a_left) {
                (Choice::BothLose, _) => Outcome::BothLose,
                (Choice::Left, true) | (Choice::Right, false) => Outcome::AWins,
                (Choice::Left, false) | (Choice::Right, true) => Outcome::BWins,
            };
            ratings.push(RatingRow {
                model_a: a.clone(),
                model_b: b.clone(),
                prompt_id: pair.prompt_id.clone(),
                rater: rater.clone(),
                criterion: id.to_string(),
                outcome,
                left_model: left_model.clone(),
                created_at: String::new(),
            });
        }
        let (level_a, level_b) =
            if a_left { (s.warping.left, s.warping.right) } else { (s.warping.right, s.warping.left) };
        let warp = |model: &String, level| WarpingRow {
            model: model.clone(),
            prompt_id: pair.prompt_id.clone(),
            rater: rater.clone(),
            level,
            created_at: String::new(),
        };
        self.store.upsert_ratings(&ratings, &[warp(a, level_a), warp(b, level_b)])?;
        if let Some(set) = self.skipped().get_mut(&rater) {
            set.remove(&pair.prompt_id);
        }
        Ok(())
    }

    /// The results so far.
    pub fn results(&self) -> Result<Results, ReviewError> {
        results(&self.store, &self.models[0], &self.models[1], self.options.raters, self.pairs.len())
    }
}

#[cfg(test)]
mod tests;
