//! `sink.report`: one self-contained HTML page (thumbnails embedded, charts as inline SVG; works
//! offline) showing what a graph did: the per-stage funnel (counts like the paper's Fig. 4), score
//! histograms, contact sheets of random kept and rejected clips per stage (the paper's QA protocol:
//! N random samples per stage for human review), captions, metrics and failures. Re-rendered when
//! an epoch completes, on a thread of its own so the dataflow never waits for thumbnails.

use super::jsonl::output_path;
use crate::api::fsutil::atomic_write;
use crate::api::*;
use crate::video::REDACTED_BLOB;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

pub struct SinkReport;

fn d_path() -> String {
    "report".into()
}
fn d_samples() -> usize {
    12
}
fn d_thumb() -> u32 {
    192
}
fn d_title() -> String {
    "medgen run report".into()
}

/// Params of `sink.report`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Report folder (index.html inside); relative paths are inside the run's `outputs/` folder.
    #[serde(default = "d_path")]
    pub path: String,
    /// Page title.
    #[serde(default = "d_title")]
    pub title: String,
    /// Random kept and random rejected clips shown per stage (the paper's QA used 200).
    #[serde(default = "d_samples")]
    pub samples_per_stage: usize,
    /// Thumbnail width in pixels.
    #[serde(default = "d_thumb")]
    pub thumbnail_width: u32,
    /// Seed of the random sample (the same seed shows the same clips).
    #[serde(default)]
    pub seed: u64,
}

type View = BTreeMap<(String, Record), isize>;
/// Updates waiting for their epoch to complete.
type Pending = BTreeMap<u64, Vec<((String, Record), isize)>>;

/// The latest snapshot waiting to be rendered, and whether the dataflow has finished.
#[derive(Default)]
struct Mailbox {
    next: Option<(View, u64)>,
    closed: bool,
}

struct Renderer {
    mailbox: Arc<(Mutex<Mailbox>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Renderer {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.mailbox;
            m.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Prefix of a thumbnail source that is a run-store blob rather than a file.
const BLOB_PREFIX: &str = "blob:";

/// A clip's thumbnail source and time: its redacted copy (`curate.deidentify`; time 0 = the clip's
/// start) when it has one — a report must not show the identifiers the dataset hides — else its file.
fn clip_media(c: &Clip) -> (String, String, f64) {
    let mid = (c.start_s.0 + c.end_s.0) / 2.0;
    match c.metadata.get(REDACTED_BLOB) {
        Some(key) => (c.clip_id.clone(), format!("{BLOB_PREFIX}{key}"), mid - c.start_s.0),
        None => (c.clip_id.clone(), c.uri.clone(), mid),
    }
}

/// A clip-like record's identity, file and representative time.
fn media(rec: &Record) -> Option<(String, String, f64)> {
    match rec {
        Record::Clip(c) => Some(clip_media(c)),
        Record::Scores(s) => Some(clip_media(&s.clip)),
        Record::Video(v) => {
            let mid = v.probe.as_ref().and_then(|p| p.duration_s.map(|d| p.start() + d.0 / 2.0)).unwrap_or(1.0);
            Some((v.source_id.clone(), v.uri.clone(), mid))
        }
        _ => None,
    }
}

/// A JPEG thumbnail as a data URL (video feature), cached.
struct Thumbs {
    width: u32,
    cache: HashMap<(String, i64), Option<String>>,
    /// Where a run-store blob key lives on disk.
    blob_path: Box<dyn Fn(&str) -> PathBuf + Send>,
}

/// Videos larger than this are linked by path instead of embedded.
const MAX_EMBEDDED_VIDEO: u64 = 8 << 20;

impl Thumbs {
    /// An MP4 blob as a data URI (or a file link when it is large).
    fn video(&mut self, key: &str) -> Option<String> {
        use base64::Engine;
        let path = (self.blob_path)(key);
        let len = std::fs::metadata(&path).ok()?.len();
        if len > MAX_EMBEDDED_VIDEO {
            return Some(format!("file://{}", path.display()));
        }
        let bytes = std::fs::read(&path).ok()?;
        Some(format!("data:video/mp4;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
    }

    fn get(&mut self, uri: &str, t: f64) -> Option<String> {
        let key = (uri.to_string(), (t * 1000.0) as i64);
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let file = match uri.strip_prefix(BLOB_PREFIX) {
            Some(k) => (self.blob_path)(k).to_string_lossy().into_owned(),
            None => uri.to_string(),
        };
        let v = thumbnail(&file, t, self.width);
        self.cache.insert(key, v.clone());
        v
    }
}

#[cfg(feature = "video")]
fn thumbnail(uri: &str, t: f64, width: u32) -> Option<String> {
    use crate::video::{DecodeSpec, PixelFormat, Sampling, Size, decode::decode_all};
    let spec = DecodeSpec {
        sampling: Sampling::Timestamps { times_s: vec![t.max(0.0)] },
        size: Size::Fit { width, height: width },
        format: PixelFormat::Rgb,
        deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(30)),
        ..Default::default()
    };
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    let frames = decode_all(std::path::Path::new(path), &spec).ok()?;
    let f = frames.first()?;
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 80);
    enc.encode(f.data(), u16::try_from(f.width).ok()?, u16::try_from(f.height).ok()?, jpeg_encoder::ColorType::Rgb)
        .ok()?;
    use base64::Engine;
    Some(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(out)))
}

#[cfg(not(feature = "video"))]
fn thumbnail(_uri: &str, _t: f64, _width: u32) -> Option<String> {
    None
}

/// Deterministic pseudo-random rank of an id under a seed.
fn rank(seed: u64, id: &str) -> u64 {
    let h = blake3::hash(format!("{seed}:{id}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

fn svg_histogram(values: &[f64]) -> String {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    if !lo.is_finite() {
        return String::new();
    }
    let bins = 20usize;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut counts = vec![0usize; bins];
    for v in values {
        counts[(((v - lo) / span) * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut s = String::from("<svg viewBox=\"0 0 400 130\" class=\"chart\">");
    for (i, c) in counts.iter().enumerate() {
        let h = 100.0 * *c as f64 / max as f64;
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"18\" height=\"{:.1}\"><title>{c}</title></rect>",
            i * 20,
            105.0 - h,
            h
        );
    }
    let _ = write!(
        s,
        "<text x=\"0\" y=\"125\">{lo:.3}</text><text x=\"400\" y=\"125\" text-anchor=\"end\">{hi:.3}</text></svg>"
    );
    s
}

fn svg_line(points: &[f64]) -> String {
    if points.is_empty() {
        return String::new();
    }
    let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let n = points.len().max(2) - 1;
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", 400.0 * i as f64 / n as f64, 105.0 - 100.0 * (v - lo) / span))
        .collect();
    format!(
        "<svg viewBox=\"0 0 400 130\" class=\"chart\"><polyline fill=\"none\" stroke=\"#2a6\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"0\" y=\"125\">min {lo:.4}</text><text x=\"400\" y=\"125\" text-anchor=\"end\">max {hi:.4}</text></svg>",
        path.join(" ")
    )
}

/// Render the page for a snapshot of the view.
fn render(view: &View, p: &ReportParams, labels: &[String], epoch: u64, thumbs: &mut Thumbs) -> String {
    let mut by_label: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for ((label, rec), n) in view {
        if *n > 0 {
            by_label.entry(label).or_default().push(rec);
        }
    }
    // Inputs in the order the graph lists them.
    let order: Vec<&str> = labels.iter().map(String::as_str).filter(|l| by_label.contains_key(l)).collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} h2{{border-bottom:1px solid #ddd;padding-bottom:.2em}}\
         .bar{{background:#3a7bd5;height:1.4em;color:#fff;padding-left:.4em;white-space:nowrap}} .funnel td{{padding:.2em .6em}}\
         .sheet{{display:flex;flex-wrap:wrap;gap:8px}} .card{{width:{w}px;font-size:11px;word-break:break-all}}\
         .card img{{width:{w}px;display:block;background:#eee;min-height:40px}} .chart{{width:400px;height:130px}}\
         .chart rect{{fill:#3a7bd5}} .chart text{{font-size:11px}} table.data td,table.data th{{border:1px solid #ddd;padding:.3em;vertical-align:top}}\
         table.data{{border-collapse:collapse}} .kept{{border-top:4px solid #2a6}} .rejected{{border-top:4px solid #c33}}\
         </style></head><body><h1>{t}</h1><p>Epoch {epoch}. Generated by medgen.</p>",
        t = esc(&p.title),
        w = p.thumbnail_width
    );
    // Funnel.
    let count = |recs: &Vec<&Record>| -> usize {
        let ids: BTreeSet<String> = recs.iter().map(|r| media(r).map(|m| m.0).unwrap_or_else(|| r.item_id())).collect();
        ids.len()
    };
    // The funnel counts data items; metric streams are charted below instead.
    let funnel: Vec<&str> =
        order.iter().copied().filter(|l| !by_label[l].iter().all(|r| matches!(r, Record::Metric(_)))).collect();
    let max = funnel.iter().map(|l| count(&by_label[l])).max().unwrap_or(1).max(1);
    h.push_str("<h2 id=\"funnel\">Funnel</h2><table class=\"funnel\">");
    for l in &funnel {
        let n = count(&by_label[l]);
        let _ = write!(
            h,
            "<tr><td>{}</td><td style=\"width:500px\"><div class=\"bar\" style=\"width:{:.1}%\">{n}</div></td></tr>",
            esc(l),
            100.0 * n as f64 / max as f64
        );
    }
    h.push_str("</table>");
    // Contact sheets: each labelled input; `X` and `X.rejected` side by side.
    h.push_str("<h2 id=\"samples\">Samples per stage</h2>");
    for l in &order {
        if l.ends_with(".rejected") || l.ends_with(".failures") {
            continue;
        }
        let rejected_label = format!("{l}.rejected");
        let sides: [(&str, &str); 2] = [(l, "kept"), (&rejected_label, "rejected")];
        let mut any = false;
        let mut block = format!("<h3>{}</h3>", esc(l));
        for (label, class) in sides {
            let Some(recs) = by_label.get(label) else { continue };
            let mut items: Vec<(u64, (String, String, f64), &Record)> =
                recs.iter().filter_map(|r| media(r).map(|m| (rank(p.seed, &m.0), m, *r))).collect();
            if items.is_empty() {
                continue;
            }
            any = true;
            items.sort_by_key(|x| x.0);
            items.truncate(p.samples_per_stage);
            let _ = write!(
                block,
                "<p>{} {class} (random {} of {})</p><div class=\"sheet\">",
                esc(label),
                items.len(),
                recs.len()
            );
            for (_, (id, uri, t), rec) in items {
                let img = thumbs.get(&uri, t).unwrap_or_default();
                let detail = match rec {
                    Record::Scores(s) => s
                        .scores
                        .iter()
                        .map(|(k, v)| format!("{k}={:.3}", v.0))
                        .chain(
                            s.labels.iter().filter(|(k, _)| k.as_str() != "ocr_boxes").map(|(k, v)| format!("{k}={v}")),
                        )
                        .collect::<Vec<_>>()
                        .join(" "),
                    Record::Clip(c) => format!("{:.1}–{:.1}s", c.start_s.0, c.end_s.0),
                    _ => String::new(),
                };
                let name = uri.rsplit('/').next().unwrap_or(&uri);
                let _ = write!(
                    block,
                    "<div class=\"card {class}\"><img src=\"{img}\" alt=\"{}\"><b>{}</b> @{t:.1}s<br>{}</div>",
                    esc(&id[..id.len().min(12)]),
                    esc(name),
                    esc(&detail)
                );
            }
            block.push_str("</div>");
        }
        if any {
            h.push_str(&block);
        }
    }
    // Score histograms over the last input that carries each score.
    let mut scores: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for l in &order {
        for r in &by_label[l] {
            if let Record::Scores(s) = r {
                for (k, v) in &s.scores {
                    scores.entry(k.clone()).or_default().insert(s.clip.clip_id.clone(), v.0);
                }
            }
        }
    }
    if !scores.is_empty() {
        h.push_str("<h2 id=\"scores\">Score histograms</h2><div class=\"sheet\">");
        for (k, vals) in &scores {
            let v: Vec<f64> = vals.values().copied().filter(|x| x.is_finite()).collect();
            let _ = write!(h, "<div><h4>{} ({} clips)</h4>{}</div>", esc(k), v.len(), svg_histogram(&v));
        }
        h.push_str("</div>");
    }
    // Metrics as curves, captions and failures.
    let mut metrics: BTreeMap<&str, Vec<(&str, f64)>> = BTreeMap::new();
    let mut evals: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    let mut captions = Vec::new();
    let mut failures: BTreeMap<(String, String), usize> = BTreeMap::new();
    for recs in by_label.values() {
        for r in recs {
            match r {
                // Evaluation results get their own table below.
                Record::Metric(m) if m.subject.starts_with("checkpoint:") => {
                    evals.entry(m.subject.as_str()).or_default().insert(m.name.as_str(), m.value.0);
                }
                Record::Metric(m) => metrics.entry(&m.name).or_default().push((&m.subject, m.value.0)),
                Record::Caption(c) => captions.push(c),
                Record::Failure(f) => *failures.entry((f.node.clone(), f.class.to_string())).or_default() += 1,
                _ => {}
            }
        }
    }
    if !metrics.is_empty() {
        h.push_str("<h2 id=\"metrics\">Metrics</h2><div class=\"sheet\">");
        for (name, mut pts) in metrics {
            pts.sort_by_key(|a| natural(a.0));
            let vals: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let _ = write!(h, "<div><h4>{} ({} points)</h4>{}</div>", esc(name), vals.len(), svg_line(&vals));
        }
        h.push_str("</div>");
    }
    benchmark_table(&mut h, &evals);
    // Generated videos, newest checkpoint first, embedded so the page stays self-contained.
    let mut samples: Vec<&Sample> = by_label
        .values()
        .flatten()
        .filter_map(|r| match r {
            Record::Sample(s) => Some(s),
            _ => None,
        })
        .collect();
    if !samples.is_empty() {
        samples.sort_by(|a, b| (b.checkpoint_epoch, &a.prompt_id).cmp(&(a.checkpoint_epoch, &b.prompt_id)));
        let _ = write!(h, "<h2 id=\"generated\">Generated videos ({})</h2><div class=\"sheet\">", samples.len());
        for smp in samples.iter().take(4 * p.samples_per_stage) {
            let src = thumbs.video(&smp.video_blob).unwrap_or_default();
            let _ = write!(
                h,
                "<div class=\"card\" style=\"width:{w}px\"><video src=\"{src}\" width=\"{w}\" autoplay loop muted \
                 controls playsinline style=\"image-rendering:pixelated;background:#000\"></video>\
                 <div>epoch {e}, step {st} · {pid}</div><div>{prompt}</div><div>{how}</div>{scores}</div>",
                w = p.thumbnail_width,
                scores = video_scores(&evals, smp),
                e = smp.checkpoint_epoch,
                st = smp.checkpoint_step,
                pid = esc(&smp.prompt_id),
                prompt = esc(smp.settings.get("prompt").map(String::as_str).unwrap_or("")),
                how = esc(&format!(
                    "{} × {} steps, shift {}, guidance {}, seed {}{}",
                    smp.settings.get("sampler").map(String::as_str).unwrap_or("?"),
                    smp.settings.get("steps").map(String::as_str).unwrap_or("?"),
                    smp.settings.get("shift").map(String::as_str).unwrap_or("?"),
                    smp.settings.get("guidance").map(String::as_str).unwrap_or("?"),
                    smp.settings.get("seed").map(String::as_str).unwrap_or("?"),
                    smp.settings.get("lora").map(|l| format!(", LoRA {l}")).unwrap_or_default()
                )),
            );
        }
        h.push_str("</div>");
    }
    if !captions.is_empty() {
        captions.sort_by_key(|c| rank(p.seed, &c.clip_id));
        let _ = write!(
            h,
            "<h2 id=\"captions\">Captions ({})</h2><table class=\"data\"><tr><th>clip</th><th>brief</th><th>detailed</th><th>by</th></tr>",
            captions.len()
        );
        for c in captions.iter().take(p.samples_per_stage) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {} / {}</td></tr>",
                esc(&c.clip_id[..c.clip_id.len().min(12)]),
                esc(&c.brief),
                esc(&c.detailed),
                esc(&c.backend),
                esc(&c.model),
                esc(&c.prompt_version)
            );
        }
        h.push_str("</table>");
    }
    if !failures.is_empty() {
        h.push_str(
            "<h2 id=\"failures\">Failures</h2><table class=\"data\"><tr><th>node</th><th>class</th><th>items</th></tr>",
        );
        for ((node, class), n) in &failures {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>", esc(node), esc(class));
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

/// The evaluation dimensions in the order of the paper's Table 2, with their column titles.
const TABLE2: [(&str, &str); 4] = [
    ("imaging_quality", "Imaging Quality"),
    ("subject_consistency", "Subject Consistency"),
    ("background_consistency", "Background Consistency"),
    ("motion_smoothness", "Motion Smoothness"),
];

/// Per-checkpoint evaluation aggregates (subjects `checkpoint:epoch<e>`) as a table shaped like the
/// paper's Table 2: one row per checkpoint, one column per dimension (percent), the backbone that
/// made each column named in its header, then total, videos and the gate's decision.
fn benchmark_table(h: &mut String, evals: &BTreeMap<&str, BTreeMap<&str, f64>>) {
    let rows: Vec<(&str, &BTreeMap<&str, f64>)> =
        evals.iter().filter(|(s, _)| !s.contains('/')).map(|(s, m)| (*s, m)).collect();
    if rows.is_empty() {
        return;
    }
    // Column per (dimension, backbone) present.
    let mut cols: Vec<(&str, &str, String)> = Vec::new();
    for (key, title) in TABLE2 {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for (_, m) in &rows {
            names.extend(m.keys().copied().filter(|n| n.split('@').next() == Some(key)));
        }
        for n in names {
            cols.push((n, title, n.split_once('@').map(|x| x.1.to_string()).unwrap_or_default()));
        }
    }
    h.push_str(
        "<h2 id=\"benchmark\">Benchmark (Med-VBench dimensions)</h2><p>Percent, mean over each checkpoint's videos. \
         Each column names the backbone that scored it; only VBench's own backbones (DINO, CLIP, AMT-S, MUSIQ) give \
         VBench numbers — embedded defaults are comparable between checkpoints, not with published tables.</p>\
         <table class=\"data\"><tr><th>checkpoint</th>",
    );
    for (_, title, backbone) in &cols {
        let _ = write!(h, "<th>{}<br><small>{}</small></th>", esc(title), esc(backbone));
    }
    let we = rows.iter().any(|(_, m)| m.contains_key("warping_error@raters"));
    if we {
        h.push_str("<th>Warping Error<br><small>raters (lower is better)</small></th>");
    }
    h.push_str("<th>Total</th><th>videos</th><th>gate</th></tr>");
    let mut rows = rows;
    rows.sort_by_key(|(s, _)| natural(s));
    for (subject, m) in rows {
        let _ = write!(h, "<tr><td>{}</td>", esc(subject.trim_start_matches("checkpoint:")));
        for (name, _, _) in &cols {
            match m.get(name) {
                Some(v) => {
                    let _ = write!(h, "<td>{v:.2}%</td>");
                }
                None => h.push_str("<td>–</td>"),
            }
        }
        let cell = |k: &str, f: &dyn Fn(f64) -> String| m.get(k).map(|v| f(*v)).unwrap_or_else(|| "–".into());
        if we {
            let _ = write!(h, "<td>{}</td>", cell("warping_error@raters", &|v| format!("{v:.2}%")));
        }
        let _ = write!(
            h,
            "<td><b>{}</b></td><td>{}</td><td>{}</td></tr>",
            cell("total", &|v| format!("{v:.2}%")),
            cell("videos", &|v| format!("{v:.0}")),
            cell("gate.accepted", &|v| if v >= 0.5 {
                "accepted".into()
            } else {
                "<span style=\"color:#c33\">rejected</span>".into()
            })
        );
    }
    h.push_str("</table>");
}

/// A sample's own scores (eval.vbench's `videos` port), as a line under its video.
fn video_scores(evals: &BTreeMap<&str, BTreeMap<&str, f64>>, smp: &Sample) -> String {
    let subject = format!("checkpoint:epoch{}/prompt:{}", smp.checkpoint_epoch, smp.prompt_id);
    let Some(m) = evals.get(subject.as_str()) else { return String::new() };
    let parts: Vec<String> = TABLE2
        .iter()
        .filter_map(|(key, title)| {
            let (_, v) = m.iter().find(|(n, _)| n.split('@').next() == Some(*key))?;
            let short: String = title.split(' ').filter_map(|w| w.chars().next()).collect();
            Some(format!("{short} {:.1}", 100.0 * v))
        })
        .collect();
    format!("<div><b>{}</b></div>", esc(&parts.join(" · ")))
}

/// Sort key that orders "step 10" after "step 9".
fn natural(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((std::mem::take(&mut text), num.parse().unwrap_or(0)));
                num.clear();
            }
            text.push(c);
        }
    }
    out.push((text, num.parse().unwrap_or(0)));
    out
}

impl TypedOperator for SinkReport {
    type Params = ReportParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "sink.report",
            summary: "An offline HTML report: stage funnel, score histograms, contact sheets of kept/rejected clips, metrics, captions",
            doc: "Connect the outputs of the stages to report on, in pipeline order (e.g. `inputs = [\"raw\", \"clips\", \
                  \"border\", \"border.rejected\", \"ocr\", \"ocr.rejected\", \"cap\"]`). The page shows a funnel of \
                  distinct items per input (like the paper's Fig. 4), a contact sheet per stage of `samples_per_stage` \
                  random kept clips next to random clips from its `.rejected` port (the paper's QA protocol), \
                  histograms of every score, curves of Metric records (e.g. training loss), a sample of captions \
                  with the backend and model that made them, and failure counts. Thumbnails are embedded, so the \
                  single index.html works offline. Rendered on a thread of its own when an epoch completes.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[], required: true, doc: "any records, one input per stage" }],
            outputs: &[],
            is_source: false,
            is_sink: true,
        }
    }

    fn output_paths(&self, p: &ReportParams) -> Vec<String> {
        vec![p.path.clone()]
    }

    fn check(&self, p: &ReportParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.samples_per_stage > 1000 {
            v.push(ParamIssue::error("samples_per_stage", "at most 1000 (the page embeds every thumbnail)", None));
        }
        if !(32..=1024).contains(&p.thumbnail_width) {
            v.push(ParamIssue::error("thumbnail_width", "between 32 and 1024 pixels", None));
        }
        super::jsonl::check_output_path(&p.path, "path = \"report\"", &mut v);
        v
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &ReportParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let labelled = inputs.take_labelled("in");
        if labelled.is_empty() {
            return Err(BuildError::Invalid { node: ctx.node.clone(), message: "input `in` is not connected".into() });
        }
        let labels: Vec<String> = labelled.iter().map(|(l, _)| l.clone()).collect();
        let tagged: Vec<_> = labelled.into_iter().map(|(label, c)| c.map(move |r| (label.clone(), r))).collect();
        let all = differential_dataflow::collection::concatenate(ctx.scope, tagged);
        let dir: PathBuf = output_path(&ctx.services.outputs_dir(), &p.path);
        let writer = ctx.worker_index() == 0 && !ctx.settings.dry_run;
        let node = ctx.node.clone();
        let services = ctx.services.clone();
        let mailbox: Arc<(Mutex<Mailbox>, Condvar)> = Arc::default();
        let thread = if writer {
            let mailbox = mailbox.clone();
            let p = p.clone();
            let node = node.clone();
            let thumb_services = ctx.services.clone();
            let write_stats = ctx.stats.clone();
            std::thread::Builder::new()
                .name(format!("medgen-report-{node}"))
                .spawn(move || {
                    let blobs = thumb_services.clone();
                    let mut thumbs = Thumbs {
                        width: p.thumbnail_width,
                        cache: HashMap::new(),
                        blob_path: Box::new(move |k| blobs.blob_path(k)),
                    };
                    loop {
                        let job = {
                            let (m, cv) = &*mailbox;
                            let mut mb = m.lock().unwrap_or_else(|e| e.into_inner());
                            while mb.next.is_none() && !mb.closed {
                                mb = cv.wait(mb).unwrap_or_else(|e| e.into_inner());
                            }
                            match mb.next.take() {
                                Some(j) => j,
                                None => break,
                            }
                        };
                        let html = render(&job.0, &p, &labels, job.1, &mut thumbs);
                        match atomic_write(&dir.join("index.html"), html.as_bytes()) {
                            Ok(()) => {
                                let _ = services.commit_epoch(
                                    &node,
                                    job.1,
                                    &format!("report -> {}", dir.join("index.html").display()),
                                );
                            }
                            Err(e) => {
                                NodeStats::add(&write_stats.write_errors, 1);
                                tracing::error!(node = %node, "cannot write the report: {e}; check free space and permissions")
                            }
                        }
                    }
                })
                .ok()
        } else {
            None
        };
        let renderer = Renderer { mailbox: mailbox.clone(), thread };
        let stats = ctx.stats.clone();
        let mut view: View = BTreeMap::new();
        let mut pending: Pending = BTreeMap::new();
        let mut sent_once = false;
        all.inner.sink(
            Exchange::new(|_: &((String, Record), u64, isize)| 0u64),
            &format!("{node}:sink.report"),
            move |(input, frontier)| {
                let _keep_alive = &renderer;
                input.for_each(|_cap, data| {
                    for (rec, t, r) in data.drain(..) {
                        pending.entry(t).or_default().push((rec, r));
                    }
                });
                let mut last = None;
                while let Some((&t, _)) = pending.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    for (k, r) in pending.remove(&t).unwrap_or_default() {
                        let e = view.entry(k.clone()).or_default();
                        *e += r;
                        if *e == 0 {
                            view.remove(&k);
                        }
                        if r > 0 {
                            NodeStats::add(&stats.items_in, r as u64);
                        }
                    }
                    last = Some(t);
                }
                let epoch = match last {
                    Some(t) => t,
                    None if frontier.is_empty() && !sent_once => 0,
                    None => return,
                };
                if writer {
                    sent_once = true;
                    let (m, cv) = &*renderer.mailbox;
                    m.lock().unwrap_or_else(|e| e.into_inner()).next = Some((view.clone(), epoch));
                    cv.notify_all();
                }
            },
        );
        Ok(Outputs::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_clips_are_shown_from_their_redacted_copy() {
        let mut c = Clip {
            clip_id: "c".into(),
            source_id: "s".into(),
            uri: "/v.mp4".into(),
            start_s: F64(10.0),
            end_s: F64(16.0),
            fps: F64(30.0),
            width: 640,
            height: 480,
            blob: None,
            metadata: Default::default(),
        };
        assert_eq!(clip_media(&c), ("c".into(), "/v.mp4".into(), 13.0));
        c.metadata.insert(REDACTED_BLOB.into(), "ab12".into());
        assert_eq!(clip_media(&c), ("c".into(), "blob:ab12".into(), 3.0));
    }

    #[test]
    fn evaluation_aggregates_render_as_a_table_2() {
        let mut evals: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
        for (subject, iq, total, gate) in
            [("checkpoint:epoch10", 55.5, 80.25, 0.0), ("checkpoint:epoch2", 50.0, 81.0, 1.0)]
        {
            evals.insert(
                subject,
                BTreeMap::from([
                    ("imaging_quality@embedded:brisque", iq),
                    ("motion_smoothness@embedded:rife-hdv3", 97.0),
                    ("total", total),
                    ("videos", 200.0),
                    ("gate.accepted", gate),
                ]),
            );
        }
        evals.insert("checkpoint:epoch2/prompt:p1", BTreeMap::from([("imaging_quality@embedded:brisque", 0.5)]));
        let mut h = String::new();
        benchmark_table(&mut h, &evals);
        // Columns in the paper's order, each naming its backbone; rows in epoch order; per-video rows left out.
        let iq = h.find("Imaging Quality<br><small>embedded:brisque").expect(&h);
        let ms = h.find("Motion Smoothness<br><small>embedded:rife-hdv3").expect(&h);
        assert!(iq < ms);
        assert!(h.find("epoch2</td>").unwrap() < h.find("epoch10</td>").unwrap(), "{h}");
        assert!(h.contains("<td>55.50%</td>") && h.contains("<b>80.25%</b>") && h.contains("rejected"), "{h}");
        assert!(!h.contains("prompt:p1") && !h.contains("Warping Error"), "{h}");
        let smp = Sample {
            prompt_id: "p1".into(),
            checkpoint_epoch: 2,
            checkpoint_step: 9,
            video_blob: "k".into(),
            settings: Default::default(),
        };
        assert_eq!(video_scores(&evals, &smp), "<div><b>IQ 50.0</b></div>");
    }
}
