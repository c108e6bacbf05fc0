//! Curation: the classical stages of the MedVideoCap-55K pipeline (PIPELINE.md §A).
//!
//! | operator | in → out | what |
//! |---|---|---|
//! | `curate.metadata_filter` | Video → Video | medical keyword dictionary over title, description, tags; channel whitelist; optional MiniLM + logistic relevance head |
//! | `curate.segment` | Video → Clip | 1-fps visual similarity spans + hard-cut detector; 6–10 s clips; resolution floor |
//! | `curate.black_border` | Clip/Scores → Scores | Canny + Hough on sampled frames; persistent black borders: reject or crop |
//! | `curate.subtitle_ocr` | Clip/Scores → Scores | PP-OCR text detector (ONNX) on 5 frames; words per frame; drop > 20 words |
//! | `curate.aesthetic` | Clip/Scores → Scores | user-supplied ONNX aesthetic predictor (CLIP-L/14 + LAION MLP); drop < 3.0 |
//! | `curate.technical_quality` | Clip/Scores → Scores | native BRISQUE + NIQE (published parameters), optional DOVER ONNX |
//! | `curate.rule` | Clip/Scores → Scores | boolean expression over scores and labels (`technical < 0.3 && aesthetic < 4.0`) |
//! | `curate.dedup` | Clip/Scores → Scores | DCT perceptual hashes, banded LSH join, keep the smallest clip id per duplicate group |
//! | `curate.category` | Clip/Scores → Scores | MiniLM text embeddings vs class prototypes + visual cues: teaching / clinical practice / popular science / animation / imaging |
//! | `curate.camera_motion` | Clip/Scores → Scores | dense global motion (pyramidal Lucas–Kanade): static / pan / tilt / zoom / shaky / mixed |
//! | `curate.deidentify` | Clip/Scores → Scores | PP-OCR text + CenterFace faces every 0.25 s; blur or black them out into a redacted copy that writers use |
//!
//! # How a curation filter is built
//!
//! Every filter has two output ports besides `failures`: `out` (kept) and `rejected` (dropped,
//! with labels `rejected_by` = the node's name and `reason`). The expensive measurement of a clip
//! (decoding frames, Canny, hashing) runs off the worker thread in [`pool_map`], memoised under a
//! params fingerprint that leaves out every decision threshold and mode; the decision itself is a
//! cheap differential `map` after it. So changing a threshold and re-running recomputes no
//! measurement (every memo lookup hits) and only changes decisions.
//!
//! The measurement is keyed by the clip's pixels only — its source (content hash) and span, see
//! [`ClipJob`] — and comes back as a stub `Scores` record that [`measure`] joins onto the incoming
//! record by clip id. Scores and labels added upstream therefore never invalidate a filter's memo,
//! and retractions flow through the join. All frame-level work of one clip stays inside its pool
//! job: pixels never enter the dataflow.

pub mod expr;
pub mod imgproc;
pub mod keywords;
pub mod metadata_filter;
pub mod motion;
pub mod relevance;
pub mod rule;
pub mod ticks;
// Natural-scene-statistics quality models (pure Rust; used by curate.technical_quality).
pub mod brisque;
pub mod niqe;
pub mod nss;

#[cfg(feature = "video")]
pub mod black_border;
#[cfg(feature = "video")]
pub mod camera_motion;
#[cfg(feature = "video")]
pub mod category;
#[cfg(feature = "video")]
pub mod dedup;
#[cfg(feature = "video")]
pub mod deidentify;
#[cfg(feature = "video")]
pub mod faces;
#[cfg(feature = "video")]
pub mod frames;
#[cfg(feature = "video")]
pub mod segment;
// Model-backed filters (ONNX Runtime via crate::onnx) and native quality measures.
#[cfg(feature = "video")]
pub mod aesthetic;
#[cfg(feature = "video")]
pub mod ocr;
#[cfg(feature = "video")]
pub mod quality;

use crate::api::*;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::api::REJECTED_PORT;
pub use crate::api::pool::check_threads;
/// Label naming the node that dropped a record.
pub const REJECTED_BY: &str = "rejected_by";
/// Label saying why a record was dropped.
pub const REASON: &str = "reason";

/// A collection of `Scores` (before they are wrapped into records).
pub type ScoresColl<'s> = VecCollection<'s, u64, Scores, isize>;

/// Round a time to whole microseconds (clip boundaries, ids).
pub fn round_time(t: f64) -> f64 {
    (t * 1e6).round() / 1e6
}

/// A clip's id: blake3 of `source_id|start|end`, times with six decimals, hex.
pub fn clip_id(source_id: &str, start_s: f64, end_s: f64) -> String {
    blake3::hash(format!("{source_id}|{:.6}|{:.6}", round_time(start_s), round_time(end_s)).as_bytes())
        .to_hex()
        .to_string()
}

/// A Clip or Scores record as `Scores`; other kinds: `None`. A Clip starts with the annotations
/// `curate.metadata_filter` left in its source's metadata: score `medical_matches` and label
/// `medical_terms`, so rules and captions downstream can use them.
pub fn to_scores(r: &Record) -> Option<Scores> {
    match r {
        Record::Scores(s) => Some(s.clone()),
        Record::Clip(c) => {
            let mut s = Scores { clip: c.clone(), scores: BTreeMap::new(), labels: BTreeMap::new() };
            if let Some(n) = c.metadata.get("medical_matches").and_then(|v| v.parse::<f64>().ok()) {
                s.scores.insert("medical_matches".into(), F64(n));
            }
            if let Some(t) = c.metadata.get("medical_terms") {
                s.labels.insert("medical_terms".into(), t.clone());
            }
            Some(s)
        }
        _ => None,
    }
}

/// Mark a record as dropped by `node` for `reason`.
pub fn reject(s: &mut Scores, node: &str, reason: impl Into<String>) {
    s.labels.insert(REJECTED_BY.into(), node.to_string());
    s.labels.insert(REASON.into(), reason.into());
}

/// The pool item of a clip measurement: identified (memo key) by its source's content hash and
/// span only, so metadata, scores or a written blob do not invalidate the measurement.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClipJob(pub Clip);

impl PoolItem for ClipJob {
    fn item_id(&self) -> String {
        format!("clip:{}", self.0.clip_id)
    }
    fn describe(&self) -> String {
        format!("{} [{:.3}s, {:.3}s)", self.0.uri, self.0.start_s.0, self.0.end_s.0)
    }
    fn memo_input(&self) -> Vec<u8> {
        format!("{}|{:.6}|{:.6}", self.0.source_id, self.0.start_s.0, self.0.end_s.0).into_bytes()
    }
    fn route(&self) -> u64 {
        route_hash(&self.0.source_id)
    }
}

/// A clip measurement that also depends on text the clip carries (its metadata): identified by
/// the span and that text, so two clips with the same pixels but different titles are measured
/// apart, and editing a title re-measures.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TextClipJob(pub Clip, pub String);

impl PoolItem for TextClipJob {
    fn item_id(&self) -> String {
        format!("clip:{}", self.0.clip_id)
    }
    fn describe(&self) -> String {
        ClipJob(self.0.clone()).describe()
    }
    fn memo_input(&self) -> Vec<u8> {
        let mut v = ClipJob(self.0.clone()).memo_input();
        v.extend_from_slice(b"|text:");
        v.extend_from_slice(blake3::hash(self.1.as_bytes()).to_hex().as_bytes());
        v
    }
    fn route(&self) -> u64 {
        route_hash(&self.0.source_id)
    }
}

/// What a measurement adds to a clip.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    pub scores: BTreeMap<String, F64>,
    pub labels: BTreeMap<String, String>,
}

impl Measured {
    pub fn score(&mut self, name: &str, v: f64) {
        self.scores.insert(name.to_string(), F64(v));
    }
    pub fn label(&mut self, name: &str, v: impl Into<String>) {
        self.labels.insert(name.to_string(), v.into());
    }
}

/// Measure every Clip/Scores record of `input` with `f` on the node's pool (memoised by the
/// clip's source and span under the node's params fingerprint) and merge the result into the
/// record. Returns the merged records and the failures.
pub fn measure<'s, F>(ctx: &BuildCtx<'s>, input: Coll<'s>, threads: usize, f: F) -> (ScoresColl<'s>, Coll<'s>)
where
    F: Fn(&Clip, &ItemCtx) -> Result<Measured, ItemError> + Send + Sync + 'static,
{
    let scores = input.flat_map(|r| to_scores(&r));
    let jobs = scores.clone().map(|s| ClipJob(s.clip));
    let measured = pool_map(ctx, jobs, PoolConfig { threads, memoise: true }, move |job: &ClipJob, ictx| {
        let m = f(&job.0, ictx)?;
        Ok(vec![stub_scores(&job.0, m)])
    });
    join_measured(scores, measured)
}

/// [`measure`] for measurements that also read text from the clip's metadata: `text(clip)` is
/// part of the memo key ([`TextClipJob`]).
pub fn measure_with_text<'s, T, F>(
    ctx: &BuildCtx<'s>,
    input: Coll<'s>,
    threads: usize,
    text: T,
    f: F,
) -> (ScoresColl<'s>, Coll<'s>)
where
    T: Fn(&Clip) -> String + 'static,
    F: Fn(&Clip, &str, &ItemCtx) -> Result<Measured, ItemError> + Send + Sync + 'static,
{
    let scores = input.flat_map(|r| to_scores(&r));
    let jobs = scores.clone().map(move |s| {
        let t = text(&s.clip);
        TextClipJob(s.clip, t)
    });
    let measured = pool_map(ctx, jobs, PoolConfig { threads, memoise: true }, move |job: &TextClipJob, ictx| {
        let m = f(&job.0, &job.1, ictx)?;
        Ok(vec![stub_scores(&job.0, m)])
    });
    join_measured(scores, measured)
}

/// [`measure_with_text`] with the clip's frame digests (metadata [`ticks::DIGESTS_KEY`], empty when
/// absent) as the text: for measurements that take their frames from `curate.segment`'s digests
/// when a clip carries them (`curate.black_border`, `curate.dedup`).
pub fn measure_with_digests<'s, F>(
    ctx: &BuildCtx<'s>,
    input: Coll<'s>,
    threads: usize,
    f: F,
) -> (ScoresColl<'s>, Coll<'s>)
where
    F: Fn(&Clip, &str, &ItemCtx) -> Result<Measured, ItemError> + Send + Sync + 'static,
{
    measure_with_text(ctx, input, threads, |clip| clip.metadata.get(ticks::DIGESTS_KEY).cloned().unwrap_or_default(), f)
}

/// A measurement as a stub `Scores` record: it belongs to the span, not to the record that asked.
fn stub_scores(clip: &Clip, m: Measured) -> Record {
    let stub = Clip {
        clip_id: clip.clip_id.clone(),
        source_id: clip.source_id.clone(),
        uri: String::new(),
        start_s: clip.start_s,
        end_s: clip.end_s,
        fps: F64(0.0),
        width: 0,
        height: 0,
        blob: None,
        metadata: BTreeMap::new(),
    };
    Record::Scores(Scores { clip: stub, scores: m.scores, labels: m.labels })
}

/// Merge measured stubs into the records that asked, by clip id; returns them and the failures.
fn join_measured<'s>(scores: ScoresColl<'s>, measured: Coll<'s>) -> (ScoresColl<'s>, Coll<'s>) {
    let (ok, failed) = split_failures(measured);
    let by_id = ok
        .flat_map(|r| match r {
            Record::Scores(s) => Some((s.clip.clip_id, (s.scores, s.labels))),
            _ => None,
        })
        .distinct();
    let merged = scores.map(|s| (s.clip.clip_id.clone(), s)).join_map(by_id, |_, s, (sc, lb)| {
        let mut s = s.clone();
        s.scores.extend(sc.iter().map(|(k, v)| (k.clone(), *v)));
        s.labels.extend(lb.iter().map(|(k, v)| (k.clone(), v.clone())));
        s
    });
    (merged, failed)
}

/// Split decided records into the `out` and `rejected` collections.
pub fn split_decided<'s>(decided: VecCollection<'s, u64, (bool, Scores), isize>) -> (Coll<'s>, Coll<'s>) {
    let kept = decided.clone().filter(|(k, _)| *k).map(|(_, s)| Record::Scores(s));
    let rejected = decided.filter(|(k, _)| !*k).map(|(_, s)| Record::Scores(s));
    (kept, rejected)
}

/// Count records entering a node (positive diffs) into its `items_in`.
pub fn count_in<'s>(ctx: &BuildCtx<'s>, coll: Coll<'s>) -> Coll<'s> {
    let stats = ctx.stats.clone();
    coll.inspect(move |(_, _, r)| {
        if *r > 0 {
            NodeStats::add(&stats.items_in, *r as u64);
        } else {
            NodeStats::add(&stats.retracted, r.unsigned_abs() as u64);
        }
    })
}

/// Count records leaving a node (positive diffs) into its `items_out`.
pub fn count_out<'s>(ctx: &BuildCtx<'s>, coll: Coll<'s>) -> Coll<'s> {
    let stats = ctx.stats.clone();
    coll.inspect(move |(_, _, r)| {
        if *r > 0 {
            NodeStats::add(&stats.items_out, *r as u64);
        }
    })
}

/// Issue unless `v` is a finite number in `[lo, hi]`.
pub fn check_range(issues: &mut Vec<ParamIssue>, key: &str, v: f64, lo: f64, hi: f64, example: &str) {
    if !(v.is_finite() && v >= lo && v <= hi) {
        issues.push(ParamIssue::error(
            key,
            format!("{v} is out of range: must be between {lo} and {hi}"),
            Some(format!("e.g. {key} = {example}")),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_ids_are_stable_and_span_sensitive() {
        let a = clip_id("src", 1.0, 7.0);
        assert_eq!(a, clip_id("src", 1.000_000_1, 7.0));
        assert_ne!(a, clip_id("src", 1.0, 7.04));
        assert_ne!(a, clip_id("other", 1.0, 7.0));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn clip_jobs_memoise_by_span_only() {
        let c = Clip {
            clip_id: "id".into(),
            source_id: "s".into(),
            uri: "/a.mp4".into(),
            start_s: F64(1.0),
            end_s: F64(2.0),
            fps: F64(25.0),
            width: 720,
            height: 480,
            blob: None,
            metadata: BTreeMap::new(),
        };
        let mut d = c.clone();
        d.uri = "/moved.mp4".into();
        d.blob = Some("k".into());
        d.metadata.insert("title".into(), "t".into());
        assert_eq!(ClipJob(c.clone()).memo_input(), ClipJob(d).memo_input());
        let mut e = c.clone();
        e.end_s = F64(2.5);
        assert_ne!(ClipJob(c).memo_input(), ClipJob(e).memo_input());
    }

    #[test]
    fn fingerprints_drop_keys() {
        #[derive(Serialize)]
        struct P {
            a: u32,
            threshold: f64,
        }
        assert_eq!(fingerprint_without(&P { a: 1, threshold: 0.5 }, &["threshold"]), serde_json::json!({"a": 1}));
    }
}
