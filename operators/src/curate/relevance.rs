//! The metadata relevance head of `curate.metadata_filter` (paper stage 2, second step): a
//! logistic regression on MiniLM sentence embeddings of a video's title, description and tags,
//! and everything around it that does not need the dataflow — labelled JSONL parsing, training,
//! metrics, the head file — plus the MiniLM loading that `curate.category` shares.
//!
//! # The head file
//!
//! ```json
//! {"format": "medgen-relevance-head", "version": 1, "embedder": "minilm:384", "dim": 384,
//!  "text_fields": ["title", "description", "tags"], "weights": [..384 numbers..], "bias": -0.3,
//!  "threshold": 0.5, "trained_on": {"n_pos": 40, "n_neg": 38}, "metrics": {...}}
//! ```
//!
//! `p(medical) = sigmoid(weights · embedding + bias)` where `embedding` is the unit-norm MiniLM
//! embedding of the `text_fields` values joined by `". "` ([`metadata_text`]). `medgen classifier
//! train` writes it (atomically); [`RelevanceHead::load`] validates it.
//!
//! # Training
//!
//! Full-batch L-BFGS on the mean (optionally class-balanced) log-loss plus `l2/2 · ‖weights‖²`
//! (the bias is not penalised), from zero: deterministic. The default threshold is chosen by
//! stratified 5-fold cross-validation on the training rows: the cut that maximises F1 of the
//! out-of-fold probabilities (ties: the one nearest 0.5), within [0.05, 0.95].

use crate::api::ParamIssue;
use medgen_kernels::DType;
use medgen_kernels::nets::minilm::{self, BertConfig, MiniLm};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The `format` of a head file.
pub const HEAD_FORMAT: &str = "medgen-relevance-head";
/// The `version` of a head file this build reads and writes.
pub const HEAD_VERSION: u32 = 1;
/// The metadata fields embedded by default.
pub const DEFAULT_TEXT_FIELDS: &[&str] = &["title", "description", "tags"];
/// How to make a head file.
pub const TRAIN_HINT: &str = "train one with `medgen classifier train --data LABELLED.jsonl --out HEAD.json` \
     (see `medgen classifier train --help`)";

// ---------------------------------------------------------------------------------------------
// MiniLM, shared by the operators that embed text.

/// The MiniLM folder a node uses: its `model_dir` param (relative to the graph file), else the one
/// `scripts/fetch-models.sh` fetched.
pub fn minilm_dir(model_dir: Option<&str>, base: &Path) -> Option<PathBuf> {
    crate::onnx::model_path(model_dir, base, None).or_else(minilm::fetched_minilm_dir)
}

/// [`minilm_dir`], with an issue on `key` (and `None`) when the folder lacks the model files.
pub fn check_minilm(model_dir: Option<&str>, base: &Path, key: &str, issues: &mut Vec<ParamIssue>) -> Option<PathBuf> {
    match minilm_dir(model_dir, base) {
        Some(d) if d.join("model.safetensors").is_file() && d.join("tokenizer.json").is_file() => Some(d),
        Some(d) => {
            issues.push(ParamIssue::error(
                key,
                format!("{} has no model.safetensors and tokenizer.json", d.display()),
                Some(minilm::MINILM_FETCH_HINT.into()),
            ));
            None
        }
        None => {
            issues.push(ParamIssue::error(
                key,
                "the MiniLM sentence encoder is not there",
                Some(minilm::MINILM_FETCH_HINT.into()),
            ));
            None
        }
    }
}

/// The embedding width of the MiniLM in `dir` (its `config.json`; all-MiniLM-L6-v2's when absent),
/// without loading the weights.
pub fn minilm_width(dir: &Path) -> Result<usize, String> {
    let cfg = dir.join("config.json");
    if !cfg.is_file() {
        return Ok(BertConfig::all_minilm_l6_v2().hidden_size);
    }
    BertConfig::from_file(&cfg).map(|c| c.hidden_size).map_err(|e| format!("{}: {e}", cfg.display()))
}

/// The MiniLM of `dir` (f32), loaded once per process and folder.
pub fn shared_minilm(dir: &Path) -> Result<Arc<MiniLm>, String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<MiniLm>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(m) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
        return Ok(m.clone());
    }
    let m =
        Arc::new(MiniLm::from_dir(dir, DType::F32).map_err(|e| format!("loading MiniLM from {}: {e}", dir.display()))?);
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.to_path_buf(), m.clone());
    Ok(m)
}

/// Unit-norm embeddings of `texts`, one vector each.
pub fn embed<S: AsRef<str>>(model: &MiniLm, texts: &[S]) -> Result<Vec<Vec<f32>>, String> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let t = model.embed(texts).map_err(|e| format!("embedding text with MiniLM: {e}"))?;
    let d = t.shape()[1];
    Ok(t.to_vec_f32().map_err(|e| e.to_string())?.chunks(d).map(<[f32]>::to_vec).collect())
}

/// The text a head embeds: the non-empty values of `fields` (in that order), trimmed, joined by
/// `". "`.
pub fn metadata_text<'a, S: AsRef<str>>(fields: &[S], get: impl Fn(&str) -> Option<&'a str>) -> String {
    fields
        .iter()
        .filter_map(|f| get(f.as_ref()))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(". ")
}

// ---------------------------------------------------------------------------------------------
// Labelled JSONL.

/// One usable row of a labelled file.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledRow {
    /// 1-based line number.
    pub line: usize,
    /// [`metadata_text`] of the row.
    pub text: String,
    /// Medical?
    pub label: bool,
}

fn parse_label(v: &serde_json::Value) -> Result<bool, String> {
    use serde_json::Value;
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "medical" | "true" | "1" => Ok(true),
            "other" | "false" | "0" => Ok(false),
            other => Err(format!("`label` {other:?} is not one of true, false, 1, 0, \"medical\", \"other\"")),
        },
        other => Err(format!("`label` {other} is not one of true, false, 1, 0, \"medical\", \"other\"")),
    }
}

/// Parse labelled JSONL: `{"title": .., "description": .., "tags": [..] or "..", "label": ..}` per
/// line (blank lines and `//` lines skipped). Returns the usable rows and, per bad row, its line
/// number and what is wrong. Array values (tags) are joined with `", "` like `source.manifest`
/// does, so training sees the same text as the operator.
pub fn parse_labelled<S: AsRef<str>>(text: &str, fields: &[S]) -> (Vec<LabelledRow>, Vec<(usize, String)>) {
    let (mut rows, mut bad) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        match parse_row(t, fields) {
            Ok((text, label)) => rows.push(LabelledRow { line: i + 1, text, label }),
            Err(e) => bad.push((i + 1, e)),
        }
    }
    (rows, bad)
}

fn parse_row<S: AsRef<str>>(line: &str, fields: &[S]) -> Result<(String, bool), String> {
    use serde_json::Value;
    let obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err("expected a JSON object".into()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    let label = parse_label(obj.get("label").ok_or("missing `label`")?)?;
    let mut values = BTreeMap::new();
    for f in fields {
        let f = f.as_ref();
        let s = match obj.get(f) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| t.as_str().map(str::to_string).ok_or_else(|| format!("`{f}` must be a list of strings")))
                .collect::<Result<Vec<_>, _>>()?
                .join(", "),
            Some(other) => return Err(format!("`{f}` must be a string or a list of strings, found {other}")),
        };
        values.insert(f.to_string(), s);
    }
    let text = metadata_text(fields, |f| values.get(f).map(String::as_str));
    if text.is_empty() {
        let names: Vec<&str> = fields.iter().map(AsRef::as_ref).collect();
        return Err(format!("no text in {}", names.join(", ")));
    }
    Ok((text, label))
}

// ---------------------------------------------------------------------------------------------
// The head file.

/// Rows per class a head was trained on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainedOn {
    /// Medical rows.
    pub n_pos: usize,
    /// Other rows.
    pub n_neg: usize,
}

/// A logistic-regression head on sentence embeddings (see the module docs for the file format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelevanceHead {
    /// Always [`HEAD_FORMAT`].
    pub format: String,
    /// Always [`HEAD_VERSION`].
    pub version: u32,
    /// `minilm:<dim>`.
    pub embedder: String,
    /// Embedding width.
    pub dim: usize,
    /// Metadata fields embedded, in order.
    #[serde(default = "default_fields")]
    pub text_fields: Vec<String>,
    /// `dim` weights.
    pub weights: Vec<f64>,
    /// Intercept.
    pub bias: f64,
    /// Probability at and above which a video is medical.
    pub threshold: f64,
    /// Rows per class.
    #[serde(default)]
    pub trained_on: TrainedOn,
    /// What training measured (free-form; see `medgen classifier train`).
    #[serde(default)]
    pub metrics: serde_json::Value,
}

fn default_fields() -> Vec<String> {
    DEFAULT_TEXT_FIELDS.iter().map(|s| s.to_string()).collect()
}

/// The embedder name of a MiniLM of width `dim`.
pub fn minilm_embedder(dim: usize) -> String {
    format!("minilm:{dim}")
}

impl RelevanceHead {
    /// `P(medical)` of an embedding.
    pub fn probability(&self, embedding: &[f32]) -> f64 {
        let z: f64 = self.weights.iter().zip(embedding).map(|(w, e)| w * *e as f64).sum::<f64>() + self.bias;
        sigmoid(z)
    }

    /// Read and validate a head file; errors name the file and the fix.
    pub fn load(path: &Path) -> Result<RelevanceHead, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read classifier head {}: {e}; {TRAIN_HINT}", path.display()))?;
        let head: RelevanceHead = serde_json::from_str(&text).map_err(|e| {
            format!("{} is not a relevance head ({HEAD_FORMAT} JSON): {e}; {TRAIN_HINT}", path.display())
        })?;
        head.validate().map_err(|e| format!("{}: {e}; {TRAIN_HINT}", path.display()))?;
        Ok(head)
    }

    /// Consistency of the fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != HEAD_FORMAT {
            return Err(format!("format is {:?}, expected {HEAD_FORMAT:?}", self.format));
        }
        if self.version != HEAD_VERSION {
            return Err(format!(
                "version {} is not supported (this medgen reads version {HEAD_VERSION})",
                self.version
            ));
        }
        if self.embedder != minilm_embedder(self.dim) {
            return Err(format!(
                "embedder {:?} is not supported with dim {}: expected {:?}",
                self.embedder,
                self.dim,
                minilm_embedder(self.dim)
            ));
        }
        if self.weights.len() != self.dim {
            return Err(format!("{} weights for dim {}", self.weights.len(), self.dim));
        }
        if !self.weights.iter().chain([&self.bias]).all(|w| w.is_finite()) {
            return Err("weights or bias are not finite numbers".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!("threshold {} is not between 0 and 1", self.threshold));
        }
        if self.text_fields.is_empty() {
            return Err("text_fields is empty".into());
        }
        Ok(())
    }

    /// An error naming `path`, the two widths and the fix unless the head fits embeddings of width
    /// `dim` from the MiniLM in `model_dir`.
    pub fn check_dim(&self, path: &Path, dim: usize, model_dir: &Path) -> Result<(), String> {
        if self.dim == dim {
            return Ok(());
        }
        Err(format!(
            "{} was trained on {}-dimensional embeddings ({}) but the MiniLM in {} gives {dim}: retrain it with \
             `medgen classifier train --model-dir {}`, or set model_dir to the model it was trained with",
            path.display(),
            self.dim,
            self.embedder,
            model_dir.display(),
            model_dir.display()
        ))
    }

    /// Write the head as pretty JSON, atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::api::fsutil::atomic_write(path, format!("{json}\n").as_bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Training.

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// How [`fit`] trains.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// L2 penalty on the weights (`l2/2 · ‖w‖²` added to the mean log-loss).
    pub l2: f64,
    /// Weight the classes equally (each row of a class weighs `n / (2 · n_class)`).
    pub balanced: bool,
    /// L-BFGS iterations at most.
    pub max_iter: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { l2: 1e-3, balanced: true, max_iter: 2000 }
    }
}

/// Objective and gradient at `theta` (`[w…, b]`).
fn objective(theta: &[f64], x: &[Vec<f32>], y: &[bool], c: &[f64], l2: f64, grad: &mut [f64]) -> f64 {
    let d = theta.len() - 1;
    let total: f64 = c.iter().sum();
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut loss = 0.0;
    for ((xi, &yi), &ci) in x.iter().zip(y).zip(c) {
        let z = xi.iter().zip(&theta[..d]).map(|(a, w)| *a as f64 * w).sum::<f64>() + theta[d];
        let t = if yi { 1.0 } else { 0.0 };
        loss += ci * (softplus(z) - t * z);
        let r = ci * (sigmoid(z) - t) / total;
        for (g, a) in grad[..d].iter_mut().zip(xi) {
            *g += r * *a as f64;
        }
        grad[d] += r;
    }
    let mut reg = 0.0;
    for (g, w) in grad[..d].iter_mut().zip(&theta[..d]) {
        *g += l2 * w;
        reg += w * w;
    }
    loss / total + 0.5 * l2 * reg
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fit weights and bias to embeddings `x` (all of one width) and labels `y` by L-BFGS from zero.
pub fn fit(x: &[Vec<f32>], y: &[bool], opts: &TrainOptions) -> Result<(Vec<f64>, f64), String> {
    let n = x.len();
    let d = x.first().map(Vec::len).ok_or("no rows to train on")?;
    if y.len() != n || x.iter().any(|r| r.len() != d) {
        return Err("embeddings and labels disagree in number or width".into());
    }
    let n_pos = y.iter().filter(|l| **l).count();
    if n_pos == 0 || n_pos == n {
        return Err("training needs both classes".into());
    }
    if !(opts.l2.is_finite() && opts.l2 > 0.0) {
        return Err(format!("l2 must be a positive number, got {}", opts.l2));
    }
    let (wp, wn) = if opts.balanced {
        (n as f64 / (2.0 * n_pos as f64), n as f64 / (2.0 * (n - n_pos) as f64))
    } else {
        (1.0, 1.0)
    };
    let c: Vec<f64> = y.iter().map(|l| if *l { wp } else { wn }).collect();
    let mut theta = vec![0.0; d + 1];
    let mut g = vec![0.0; d + 1];
    let mut f = objective(&theta, x, y, &c, opts.l2, &mut g);
    const M: usize = 10;
    let (mut s_hist, mut y_hist): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    let mut g_new = vec![0.0; d + 1];
    for _ in 0..opts.max_iter {
        if g.iter().all(|v| v.abs() < 1e-9) {
            break;
        }
        // Two-loop recursion: dir = -H·g.
        let mut q = g.clone();
        let mut alpha = Vec::with_capacity(s_hist.len());
        for (s, yv) in s_hist.iter().zip(&y_hist).rev() {
            let a = dot(s, &q) / dot(yv, s);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alpha.push(a);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(yv)) => dot(s, yv) / dot(yv, yv),
            _ => 1.0 / g.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, yv), a) in s_hist.iter().zip(&y_hist).zip(alpha.iter().rev()) {
            let b = dot(yv, &q) / dot(yv, s);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            continue;
        }
        // Backtracking (Armijo) line search.
        let mut step = 1.0;
        let mut next;
        let mut f_new;
        loop {
            next = theta.iter().zip(&dir).map(|(t, p)| t + step * p).collect::<Vec<_>>();
            f_new = objective(&next, x, y, &c, opts.l2, &mut g_new);
            if f_new <= f + 1e-4 * step * slope || step < 1e-12 {
                break;
            }
            step *= 0.5;
        }
        let s: Vec<f64> = next.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let converged = (f - f_new).abs() <= 1e-13 * f.abs().max(1.0);
        theta = next;
        std::mem::swap(&mut g, &mut g_new);
        f = f_new;
        if dot(&s, &yv) > 1e-12 {
            if s_hist.len() == M {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(yv);
        }
        if converged {
            break;
        }
    }
    let bias = theta.pop().unwrap_or(0.0);
    Ok((theta, bias))
}

/// Accuracy, precision, recall and F1 (of the medical class) of probabilities at a threshold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows.
    pub n: usize,
    /// Share of rows decided right.
    pub accuracy: f64,
    /// Medical among those called medical (1 when none is).
    pub precision: f64,
    /// Called medical among the medical.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
}

/// [`Metrics`] of `probs` against `labels` when `p >= threshold` means medical.
pub fn evaluate(probs: &[f64], labels: &[bool], threshold: f64) -> Metrics {
    let (mut tp, mut fp, mut fneg, mut tn) = (0usize, 0usize, 0usize, 0usize);
    for (p, l) in probs.iter().zip(labels) {
        match (*p >= threshold, *l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => tn += 1,
        }
    }
    let n = probs.len().min(labels.len());
    let precision = if tp + fp == 0 { 1.0 } else { tp as f64 / (tp + fp) as f64 };
    let recall = if tp + fneg == 0 { 1.0 } else { tp as f64 / (tp + fneg) as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Metrics { n, accuracy: (tp + tn) as f64 / n.max(1) as f64, precision, recall, f1 }
}

/// The threshold in [0.05, 0.95] with the best F1 on `probs` (midpoints between neighbouring
/// probabilities, and 0.5); ties go to the one nearest 0.5.
pub fn choose_threshold(probs: &[f64], labels: &[bool]) -> f64 {
    let mut sorted: Vec<f64> = probs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut candidates = vec![0.5];
    candidates.extend(sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    let mut best: (f64, f64) = (f64::MIN, 0.5);
    for t in candidates.into_iter().map(|t| t.clamp(0.05, 0.95)) {
        let f1 = evaluate(probs, labels, t).f1;
        let better = f1 > best.0 + 1e-12 || ((f1 - best.0).abs() <= 1e-12 && (t - 0.5).abs() < (best.1 - 0.5).abs());
        if better {
            best = (f1, t);
        }
    }
    best.1
}

/// A deterministic pseudo-random stream (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// Indices of each class, shuffled by `seed`: (medical, other).
fn shuffled_classes(labels: &[bool], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = SplitMix(seed);
    let (mut pos, mut neg): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|i| labels[*i]);
    rng.shuffle(&mut pos);
    rng.shuffle(&mut neg);
    (pos, neg)
}

/// A stratified split: (train, holdout) indices, sorted; about `fraction` of each class is held
/// out, never a class's last training row.
pub fn split_holdout(labels: &[bool], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (pos, neg) = shuffled_classes(labels, seed);
    let (mut train, mut hold) = (Vec::new(), Vec::new());
    for class in [pos, neg] {
        let k = ((class.len() as f64 * fraction).round() as usize).min(class.len().saturating_sub(1));
        hold.extend_from_slice(&class[..k]);
        train.extend_from_slice(&class[k..]);
    }
    train.sort_unstable();
    hold.sort_unstable();
    (train, hold)
}

/// Out-of-fold probabilities of stratified `folds`-fold cross-validation (`None` when a class has
/// fewer rows than folds).
pub fn cross_validated(
    x: &[Vec<f32>],
    y: &[bool],
    opts: &TrainOptions,
    folds: usize,
    seed: u64,
) -> Result<Option<Vec<f64>>, String> {
    let (pos, neg) = shuffled_classes(y, seed);
    if folds < 2 || pos.len() < folds || neg.len() < folds {
        return Ok(None);
    }
    let mut fold_of = vec![0usize; y.len()];
    for class in [&pos, &neg] {
        for (k, i) in class.iter().enumerate() {
            fold_of[*i] = k % folds;
        }
    }
    let mut probs = vec![0.0; y.len()];
    for f in 0..folds {
        let (tx, ty): (Vec<Vec<f32>>, Vec<bool>) =
            (0..y.len()).filter(|i| fold_of[*i] != f).map(|i| (x[i].clone(), y[i])).unzip();
        let (w, b) = fit(&tx, &ty, opts)?;
        let head = |e: &[f32]| sigmoid(w.iter().zip(e).map(|(w, e)| w * *e as f64).sum::<f64>() + b);
        for i in (0..y.len()).filter(|i| fold_of[*i] == f) {
            probs[i] = head(&x[i]);
        }
    }
    Ok(Some(probs))
}

/// What [`train`] was asked for beyond [`TrainOptions`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainRequest {
    /// Fitting options.
    pub options: TrainOptions,
    /// A fixed threshold; `None`: chosen by cross-validation ([`choose_threshold`]).
    pub threshold: Option<f64>,
    /// Seed of the cross-validation folds.
    pub seed: u64,
    /// Width of the embeddings.
    pub dim: usize,
    /// Metadata fields the texts were made of.
    pub text_fields: Vec<String>,
}

/// Train a head on `train` rows and measure it on them and on `holdout` (embeddings, labels).
/// `metrics` records train and holdout [`Metrics`], how the threshold was chosen and the options.
pub fn train(
    train: (&[Vec<f32>], &[bool]),
    holdout: (&[Vec<f32>], &[bool]),
    req: &TrainRequest,
) -> Result<RelevanceHead, String> {
    let (x, y) = train;
    let (w, b) = fit(x, y, &req.options)?;
    let (threshold, how) = match req.threshold {
        Some(t) => (t, "given".to_string()),
        None => match cross_validated(x, y, &req.options, 5, req.seed)? {
            Some(oof) => (choose_threshold(&oof, y), "best F1 of 5-fold cross-validation on the training rows".into()),
            None => (0.5, "0.5 (too few rows of a class for 5-fold cross-validation)".into()),
        },
    };
    let mut head = RelevanceHead {
        format: HEAD_FORMAT.into(),
        version: HEAD_VERSION,
        embedder: minilm_embedder(req.dim),
        dim: req.dim,
        text_fields: req.text_fields.clone(),
        weights: w,
        bias: b,
        threshold,
        trained_on: TrainedOn { n_pos: y.iter().filter(|l| **l).count(), n_neg: y.iter().filter(|l| !**l).count() },
        metrics: serde_json::Value::Null,
    };
    let probs = |xs: &[Vec<f32>]| xs.iter().map(|e| head.probability(e)).collect::<Vec<_>>();
    let train_m = evaluate(&probs(x), y, threshold);
    let hold_m = (!holdout.0.is_empty()).then(|| evaluate(&probs(holdout.0), holdout.1, threshold));
    head.metrics = serde_json::json!({
        "train": train_m,
        "holdout": hold_m,
        "threshold_from": how,
        "l2": req.options.l2,
        "class_balanced": req.options.balanced,
    });
    head.validate()?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian-ish clusters in 8 dimensions, deterministic.
    fn blobs(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<bool>) {
        let mut rng = SplitMix(seed);
        let mut u = || (rng.next() % 10_000) as f32 / 10_000.0 - 0.5;
        (0..n)
            .map(|i| {
                let pos = i % 3 != 0;
                let c = if pos { 0.4 } else { -0.4 };
                ((0..8).map(|k| if k < 2 { c + u() } else { u() }).collect(), pos)
            })
            .unzip()
    }

    #[test]
    fn lbfgs_reaches_the_optimum_and_separates() {
        let (x, y) = blobs(90, 1);
        let opts = TrainOptions { l2: 1e-2, balanced: true, max_iter: 500 };
        let (w, b) = fit(&x, &y, &opts).unwrap();
        let n_pos = y.iter().filter(|l| **l).count();
        let c: Vec<f64> = y
            .iter()
            .map(|l| if *l { 90.0 / (2.0 * n_pos as f64) } else { 90.0 / (2.0 * (90 - n_pos) as f64) })
            .collect();
        let mut theta = w.clone();
        theta.push(b);
        let mut g = vec![0.0; 9];
        let f = objective(&theta, &x, &y, &c, opts.l2, &mut g);
        let gmax = g.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(gmax < 1e-6, "gradient at the optimum: {gmax}");
        // Finite-difference check of the gradient at a non-optimal point.
        let probe: Vec<f64> = (0..9).map(|k| 0.3 * (k as f64 - 4.0)).collect();
        let mut gp = vec![0.0; 9];
        objective(&probe, &x, &y, &c, opts.l2, &mut gp);
        for k in 0..9 {
            let (mut a, mut z) = (probe.clone(), probe.clone());
            a[k] += 1e-6;
            z[k] -= 1e-6;
            let mut tmp = vec![0.0; 9];
            let fd =
                (objective(&a, &x, &y, &c, opts.l2, &mut tmp) - objective(&z, &x, &y, &c, opts.l2, &mut tmp)) / 2e-6;
            assert!((fd - gp[k]).abs() < 1e-6, "d/dθ{k}: {fd} vs {}", gp[k]);
        }
        assert!(f.is_finite());
        let head = train((&x, &y), (&[], &[]), &req(8)).unwrap();
        assert!(head.metrics["train"]["accuracy"].as_f64().unwrap() > 0.95, "{}", head.metrics);
        assert!(head.metrics["holdout"].is_null());
        // Deterministic.
        assert_eq!(head, train((&x, &y), (&[], &[]), &req(8)).unwrap());
        assert!(fit(&x, &[true; 90], &opts).unwrap_err().contains("both classes"));
    }

    fn req(dim: usize) -> TrainRequest {
        TrainRequest {
            options: TrainOptions { l2: 1e-2, ..Default::default() },
            threshold: None,
            seed: 7,
            dim,
            text_fields: default_fields(),
        }
    }

    #[test]
    fn metrics_thresholds_and_splits() {
        let m = evaluate(&[0.9, 0.8, 0.2, 0.6], &[true, false, false, true], 0.5);
        assert_eq!((m.n, m.accuracy, m.precision, m.recall), (4, 0.75, 2.0 / 3.0, 1.0));
        assert!((m.f1 - 0.8).abs() < 1e-12);
        // 0.7 separates perfectly; 0.5 does not.
        let t = choose_threshold(&[0.9, 0.65, 0.2, 0.75], &[true, false, false, true]);
        assert!(t > 0.65 && t < 0.75, "{t}");
        let labels: Vec<bool> = (0..20).map(|i| i < 8).collect();
        let (tr, ho) = split_holdout(&labels, 0.25, 3);
        assert_eq!((tr.len(), ho.len()), (15, 5));
        assert_eq!(ho.iter().filter(|i| labels[**i]).count(), 2);
        assert_eq!(split_holdout(&labels, 0.25, 3), (tr.clone(), ho.clone()));
        assert_ne!(split_holdout(&labels, 0.25, 4).1, ho);
        assert_eq!(split_holdout(&[true, false], 0.5, 1).1, Vec::<usize>::new());
    }

    #[test]
    fn labelled_rows_and_their_errors() {
        let text = "{\"title\": \"Knee arthroscopy\", \"tags\": [\"ortho\", \"knee\"], \"label\": \"medical\"}\n\
                    \n\
                    {\"title\": \"Cooking pasta\", \"description\": \" quick \", \"label\": 0}\n\
                    not json\n\
                    {\"title\": \"x\"}\n\
                    {\"title\": \"x\", \"label\": \"maybe\"}\n\
                    {\"description\": \"\", \"label\": true}\n\
                    {\"title\": 3, \"label\": true}\n\
                    [1]\n";
        let (rows, bad) = parse_labelled(text, DEFAULT_TEXT_FIELDS);
        assert_eq!(
            rows,
            vec![
                LabelledRow { line: 1, text: "Knee arthroscopy. ortho, knee".into(), label: true },
                LabelledRow { line: 3, text: "Cooking pasta. quick".into(), label: false },
            ]
        );
        let lines: Vec<usize> = bad.iter().map(|b| b.0).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 8, 9]);
        assert!(bad[1].1.contains("missing `label`"), "{bad:?}");
        assert!(bad[2].1.contains("\"maybe\""), "{bad:?}");
        assert!(bad[3].1.contains("no text in title, description, tags"), "{bad:?}");
    }

    #[test]
    fn head_files_round_trip_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = blobs(60, 2);
        let head = train((&x[..45], &y[..45]), (&x[45..], &y[45..]), &req(8)).unwrap();
        assert!(head.metrics["holdout"]["n"].as_u64() == Some(15));
        let p = dir.path().join("h/head.json");
        head.save(&p).unwrap();
        assert_eq!(RelevanceHead::load(&p).unwrap(), head);
        assert!(head.check_dim(&p, 8, dir.path()).is_ok());
        let e = head.check_dim(&p, 384, Path::new("/models/minilm")).unwrap_err();
        assert!(e.contains("head.json") && e.contains("8-dimensional") && e.contains("--model-dir"), "{e}");
        let mut bad = head.clone();
        bad.weights.pop();
        bad.save(&p).unwrap();
        let e = RelevanceHead::load(&p).unwrap_err();
        assert!(e.contains("7 weights for dim 8") && e.contains("medgen classifier train"), "{e}");
        std::fs::write(&p, "{\"format\": \"other\"}").unwrap();
        assert!(RelevanceHead::load(&p).unwrap_err().contains("is not a relevance head"));
        assert!(RelevanceHead::load(&dir.path().join("none.json")).unwrap_err().contains("cannot read"));
    }
}
