//! `curate.dedup`: remove near-duplicate clips (re-uploads, re-encodes, brightness-shifted copies).
//!
//! # Measurement (memoised per clip span; `max_distance` and `bands` are not part of its key)
//!
//! `frames` frames spread uniformly over the clip each get a 64-bit DCT perceptual hash
//! ([`phash`](super::imgproc::phash) of the gray frame: 32×32 box average, 8×8 lowest DCT
//! frequencies against their median). When the clip comes from `curate.segment` with frame
//! digests (its default), the hashes are those segment computed during its single decode on its
//! 1-fps ticks nearest the uniform positions ([`super::ticks`]): nothing is decoded here.
//! Otherwise the frames are decoded as gray, scaled to 128×128. Label `phash_frames_from` says
//! which (`segment` / `decode`). Flat frames (no structure) have no hash. The hashes go into
//! label `phash` (16 hex digits per frame, comma-separated, `-` for flat frames).
//!
//! # Decision: a banded LSH join in differential dataflow
//!
//! * The **distance** of two clips is the mean over frame positions of the Hamming distance of
//!   their hashes (64 where only one frame is flat or one clip has fewer frames, 0 where both are
//!   flat). Clips are near-duplicates when it is at most `max_distance` bits.
//! * Each hash is split into `bands` bands; every clip is arranged under the key (frame position,
//!   band index, band value) of each band of each non-flat frame. Joining that arrangement with
//!   itself yields candidate pairs — clips sharing at least one band — and only those are compared.
//!   A pair whose hashes differ by fewer than `bands` bits at some position always shares a band
//!   (pigeonhole); beyond that, recall is probabilistic (more bands: more recall, more candidates).
//! * A clip is dropped when a near-duplicate with a smaller clip id exists: a differential
//!   `reduce` per clip over its duplicate edges keeps, within each group of a clip and its
//!   near-duplicates, only the clip with the smallest id. A new clip is compared only against the
//!   clips in its buckets, and retracting a clip re-admits the ones it had suppressed.
//!
//! Several records with the same clip id (the same file under two names: same content hash, same
//! source) are exact copies: the one with the smallest uri stays.
//!
//! Dropped clips go to `rejected` with labels `rejected_by`, `reason`, `duplicate_of` (the clip id
//! it duplicates) and score `duplicate_distance`.

use super::imgproc::{hamming, phash};
use super::{
    Measured, REJECTED_PORT, ScoresColl, check_range, check_threads, fingerprint_without, frames, measure_with_digests,
    reject, take_input, ticks,
};
use crate::api::*;
use crate::video::{PixelFormat, Sampling, Size};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `curate.dedup` operator.
pub struct CurateDedup;

/// Frames are scaled to this square before hashing.
pub const HASH_INPUT_SIDE: u32 = 128;

fn d_frames() -> u32 {
    3
}
fn d_max_distance() -> f64 {
    6.0
}
fn d_bands() -> u32 {
    4
}
fn d_threads() -> usize {
    1
}

/// Params of `curate.dedup`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupParams {
    /// Frames hashed per clip, spread uniformly over it.
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// Decision: clips whose mean per-frame Hamming distance is at most this many bits (of 64)
    /// are near-duplicates.
    #[serde(default = "d_max_distance")]
    pub max_distance: f64,
    /// Decision: bands each 64-bit hash is split into for the LSH join (1–16). Pairs that differ
    /// in fewer than `bands` bits at some frame are always compared.
    #[serde(default = "d_bands")]
    pub bands: u32,
    /// Threads per worker hashing clips.
    #[serde(default = "d_threads")]
    pub threads: usize,
}

/// A clip's signature: one hash per frame position (`None`: flat frame).
pub type Signature = Vec<Option<u64>>;

/// The `phash` label of a signature.
pub fn format_signature(sig: &Signature) -> String {
    sig.iter().map(|h| h.map_or_else(|| "-".to_string(), |h| format!("{h:016x}"))).collect::<Vec<_>>().join(",")
}

/// Parse a `phash` label.
pub fn parse_signature(s: &str) -> Option<Signature> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',').map(|p| if p == "-" { Some(None) } else { u64::from_str_radix(p, 16).ok().map(Some) }).collect()
}

/// Mean per-position distance of two signatures (see the module docs).
pub fn distance(a: &Signature, b: &Signature) -> f64 {
    let n = a.len().max(b.len());
    if n == 0 {
        return 0.0;
    }
    let sum: u32 = (0..n)
        .map(|i| match (a.get(i), b.get(i)) {
            (Some(Some(x)), Some(Some(y))) => hamming(*x, *y),
            (Some(None), Some(None)) => 0,
            _ => 64,
        })
        .sum();
    sum as f64 / n as f64
}

/// LSH keys of a signature: (frame position << 16 | band index, band value) per band of each
/// non-flat frame.
pub fn band_keys(sig: &Signature, bands: u32) -> Vec<(u32, u64)> {
    let bands = bands.clamp(1, 64) as usize;
    let mut out = Vec::new();
    for (i, h) in sig.iter().enumerate() {
        let Some(h) = h else { continue };
        for j in 0..bands {
            let (lo, hi) = (j * 64 / bands, (j + 1) * 64 / bands);
            let width = hi - lo;
            let mask = if width >= 64 { u64::MAX } else { (1u64 << width) - 1 };
            out.push((((i as u32) << 16) | j as u32, (h >> lo) & mask));
        }
    }
    out
}

/// Hash a clip: the perceptual hashes of the frame digests `curate.segment` measured (`digests`,
/// the clip's `frame_digests` metadata) when it carries them, else of `frames` frames decoded
/// uniformly over the span as gray 128×128. Label `phash_frames_from` says which.
fn measure_clip(clip: &Clip, digests: &str, p: &DedupParams, ctx: &ItemCtx) -> Result<Measured, ItemError> {
    let text = (!digests.is_empty()).then_some(digests);
    if let Some(picked) = ticks::for_span(text, clip.start_s.0, clip.end_s.0, p.frames, None) {
        let sig: Signature = picked.iter().map(|d| d.phash).collect();
        let mut m = Measured::default();
        m.label("phash", format_signature(&sig));
        m.label("phash_frames_from", "segment");
        return Ok(m);
    }
    let size = Size::Exact { width: HASH_INPUT_SIDE, height: HASH_INPUT_SIDE };
    let (_, frames) =
        frames::clip_frames(clip, Sampling::Uniform { count: p.frames.max(1) }, size, PixelFormat::Gray, ctx)?;
    let sig: Signature = frames.iter().map(|f| phash(f.data(), f.width as usize, f.height as usize, 1)).collect();
    let mut m = Measured::default();
    m.label("phash", format_signature(&sig));
    m.label("phash_frames_from", "decode");
    Ok(m)
}

/// The LSH join and the keep-the-smallest-id reduce over measured clips: (kept, rejected).
pub fn dedup<'s>(merged: ScoresColl<'s>, bands: u32, max_distance: f64, node: String) -> (Coll<'s>, Coll<'s>) {
    let all = merged.map(|s| (s.clip.clip_id.clone(), s));
    // Records of one clip id are exact copies (the same file under two names has the same content
    // hash, so the same source and clip ids): the smallest record (by uri) stays.
    let keyed = all.clone().reduce(|_id, recs: &[(&Scores, isize)], out: &mut Vec<(Scores, isize)>| {
        if let Some((first, _)) = recs.first() {
            out.push(((*first).clone(), 1));
        }
    });
    let node2 = node.clone();
    let copies = all.concat(keyed.clone().negate()).join_map(keyed.clone(), move |id, s, first| {
        let mut s = s.clone();
        s.labels.insert("duplicate_of".into(), id.clone());
        s.scores.insert("duplicate_distance".into(), F64(0.0));
        reject(&mut s, &node2, format!("the same content as {} (same source, same clip id)", first.clip.uri));
        Record::Scores(s)
    });
    let sigs = keyed.clone().flat_map(|(id, s)| {
        let sig = s.labels.get("phash").and_then(|l| parse_signature(l))?;
        Some((id, sig))
    });
    let keys = sigs.flat_map(move |(id, sig)| {
        band_keys(&sig, bands).into_iter().map(move |k| (k, (id.clone(), sig.clone()))).collect::<Vec<_>>()
    });
    let buckets = keys.arrange_by_key();
    // Candidate pairs share a bucket; each unordered pair once, keyed by its larger id.
    let edges = buckets.clone().join_core(buckets, move |_k, a: &(String, Signature), b: &(String, Signature)| {
        if a.0 < b.0 {
            let d = distance(&a.1, &b.1);
            (d <= max_distance + 1e-9).then(|| (b.0.clone(), (a.0.clone(), F64(d))))
        } else {
            None
        }
    });
    // Per clip: its near-duplicate with the smallest id (values arrive sorted).
    let dropped = edges.reduce(|_id, dups: &[(&(String, F64), isize)], out: &mut Vec<((String, F64), isize)>| {
        if let Some((first, _)) = dups.first() {
            out.push(((*first).clone(), 1));
        }
    });
    let kept = keyed.clone().antijoin(dropped.clone().map(|(id, _)| id)).map(|(_, s)| Record::Scores(s));
    let rejected = keyed.join_map(dropped, move |_, s, (of, d)| {
        let mut s = s.clone();
        s.labels.insert("duplicate_of".into(), of.clone());
        s.scores.insert("duplicate_distance".into(), *d);
        let reason = format!("near-duplicate of clip {of} (mean hash distance {:.2} ≤ {max_distance} bits)", d.0);
        reject(&mut s, &node, reason);
        Record::Scores(s)
    });
    (kept, rejected.concat(copies))
}

impl TypedOperator for CurateDedup {
    type Params = DedupParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.dedup",
            summary: "Remove near-duplicate clips: DCT perceptual hashes of sampled frames, banded LSH join, keep the smallest clip id",
            doc: "Hashes `frames` frames spread over each clip (64-bit DCT pHash of the frame scaled to 128×128 gray, \
                  32×32 box average, 8×8 low frequencies against their median; label phash), memoised per clip span. \
                  Two clips are near-duplicates when the mean per-frame Hamming distance of their hashes is at most \
                  max_distance bits. Candidates come from a banded LSH join in differential dataflow: each hash is cut \
                  into `bands` bands, clips are arranged by (frame position, band, value) and the arrangement is \
                  joined with itself, so a clip is only compared with clips sharing a bucket (pairs differing in \
                  fewer than `bands` bits at some frame are always found). A differential reduce then drops every \
                  clip that has a near-duplicate with a smaller clip_id (within a clip's group of near-duplicates \
                  the smallest id is kept); retracting a clip re-admits what it suppressed. Records sharing a clip id \
                  (the same file under two names) are exact copies: the one with the smallest uri stays. Dropped clips go to \
                  `rejected` with labels rejected_by, reason, duplicate_of and score duplicate_distance. \
                  max_distance and bands only change decisions: re-running with new values hashes nothing.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips)",
            }],
            outputs: &[
                OutPort {
                    name: OUT_PORT,
                    kind: OutKind::Fixed(Kind::Scores),
                    doc: "clips without a smaller-id near-duplicate",
                },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Scores),
                    doc: "near-duplicates, with duplicate_of",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &DedupParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.frames == 0 || p.frames > 64 {
            v.push(ParamIssue::error("frames", "must be between 1 and 64", Some("frames = 3".into())));
        }
        check_range(&mut v, "max_distance", p.max_distance, 0.0, 64.0, "6");
        if !(1..=16).contains(&p.bands) {
            v.push(ParamIssue::error("bands", "must be between 1 and 16", Some("bands = 4".into())));
        } else if p.max_distance >= 16.0 && p.bands < 8 {
            v.push(ParamIssue::warning(
                "bands",
                format!(
                    "with max_distance = {} and {} bands many near-duplicates share no band and are never compared",
                    p.max_distance, p.bands
                ),
                Some("raise bands (e.g. 8) for high max_distance".into()),
            ));
        }
        check_threads(p.threads, &mut v);
        v
    }

    fn fingerprint(&self, p: &DedupParams) -> serde_json::Value {
        fingerprint_without(p, &["max_distance", "bands", "threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &DedupParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let mp = p.clone();
        let (merged, failed) = measure_with_digests(ctx, input, p.threads, move |clip, digests, ictx| {
            measure_clip(clip, digests, &mp, ictx)
        });
        let (kept, rejected) = dedup(merged, p.bands, p.max_distance, ctx.node.clone());
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    #[test]
    fn signatures_roundtrip_and_measure_distance() {
        let a: Signature = vec![Some(0xdead_beef), None, Some(u64::MAX)];
        assert_eq!(format_signature(&a), "00000000deadbeef,-,ffffffffffffffff");
        assert_eq!(parse_signature(&format_signature(&a)), Some(a.clone()));
        assert_eq!(parse_signature("zz"), None);
        assert_eq!(distance(&a, &a), 0.0);
        let b: Signature = vec![Some(0xdead_beee), None, Some(u64::MAX >> 3)];
        assert_eq!(distance(&a, &b), (1.0 + 0.0 + 3.0) / 3.0);
        assert_eq!(distance(&a, &vec![Some(0xdead_beef)]), (0.0 + 64.0 + 64.0) / 3.0);
        assert_eq!(distance(&vec![], &vec![]), 0.0);
    }

    #[test]
    fn band_keys_guarantee_a_shared_band_below_the_band_count() {
        let h = 0x0123_4567_89ab_cdefu64;
        let keys = band_keys(&vec![Some(h), None], 4);
        assert_eq!(keys.len(), 4);
        assert_eq!(keys[0], (0, 0xcdef));
        assert_eq!(keys[3], (3, 0x0123));
        // 3 flipped bits spread over bands 0, 1, 2: band 3 still matches.
        let g = h ^ (1 | 1 << 20 | 1 << 40);
        let shared = band_keys(&vec![Some(g)], 4).into_iter().filter(|k| keys.contains(k)).count();
        assert_eq!(shared, 1);
        assert_eq!(band_keys(&vec![Some(h)], 1), vec![(0, h)]);
    }

    fn scores(id: &str, sig: &Signature) -> Scores {
        scores_at(id, sig, "")
    }

    fn scores_at(id: &str, sig: &Signature, uri: &str) -> Scores {
        let mut labels = BTreeMap::new();
        labels.insert("phash".to_string(), format_signature(sig));
        Scores {
            clip: Clip {
                clip_id: id.into(),
                source_id: format!("src-{id}"),
                uri: uri.to_string(),
                start_s: F64(0.0),
                end_s: F64(6.0),
                fps: F64(25.0),
                width: 720,
                height: 480,
                blob: None,
                metadata: BTreeMap::new(),
            },
            scores: BTreeMap::new(),
            labels,
        }
    }

    /// Run `dedup` over epochs of updates; returns (kept ids, rejected (id, duplicate_of)) after each.
    #[allow(clippy::type_complexity)]
    fn run(epochs: Vec<Vec<(Scores, isize)>>) -> Vec<(Vec<String>, Vec<(String, String)>)> {
        let out = Arc::new(Mutex::new(BTreeMap::<(bool, String, String), isize>::new()));
        let snapshots = Arc::new(Mutex::new(Vec::new()));
        let (o2, s2) = (out.clone(), snapshots.clone());
        timely::execute_directly(move |worker| {
            let o3 = o2.clone();
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (handle, coll) = scope.new_collection::<Scores, isize>();
                let (kept, rejected) = dedup(coll, 4, 6.0, "dd".into());
                let tag = |keep: bool| {
                    move |r: Record| match r {
                        Record::Scores(s) => {
                            (keep, s.clip.clip_id.clone(), s.labels.get("duplicate_of").cloned().unwrap_or_default())
                        }
                        _ => (keep, String::new(), String::new()),
                    }
                };
                let o4 = o3.clone();
                let probe = kept
                    .map(tag(true))
                    .concat(rejected.map(tag(false)))
                    .inspect(move |(d, _, r)| *o4.lock().unwrap().entry(d.clone()).or_default() += r)
                    .probe();
                (handle, probe.0)
            });
            for (e, updates) in epochs.iter().enumerate() {
                for (s, r) in updates {
                    input.update(s.clone(), *r);
                }
                input.advance_to(e as u64 + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
                let now = o2.lock().unwrap().clone();
                let kept: Vec<String> = now.iter().filter(|(k, r)| k.0 && **r > 0).map(|(k, _)| k.1.clone()).collect();
                let rej: Vec<(String, String)> =
                    now.iter().filter(|(k, r)| !k.0 && **r > 0).map(|(k, _)| (k.1.clone(), k.2.clone())).collect();
                s2.lock().unwrap().push((kept, rej));
            }
        });
        snapshots.lock().unwrap().clone()
    }

    #[test]
    fn exact_copies_share_a_clip_id_and_one_stays() {
        let sig: Signature = vec![Some(0x0f0f_f0f0_1234_5678)];
        let snaps = run(vec![vec![(scores_at("a", &sig, "/x/copy.mp4"), 1), (scores_at("a", &sig, "/x/a.mp4"), 1)]]);
        assert_eq!(snaps[0], (vec!["a".to_string()], vec![("a".to_string(), "a".to_string())]));
    }

    #[test]
    fn keeps_the_smallest_id_and_retractions_readmit() {
        let base: Signature =
            vec![Some(0x0f0f_f0f0_1234_5678), Some(0xaaaa_5555_0000_ffff), Some(0x1357_9bdf_2468_ace0)];
        let near: Signature = base.iter().map(|h| h.map(|h| h ^ 0b101)).collect(); // 2 bits per frame
        let other: Signature = base.iter().map(|h| h.map(|h| !h)).collect();
        let snaps = run(vec![
            vec![(scores("b", &near), 1), (scores("c", &other), 1)],
            vec![(scores("a", &base), 1)],
            vec![(scores("a", &base), -1)],
        ]);
        assert_eq!(snaps[0], (vec!["b".to_string(), "c".to_string()], vec![]));
        // `a` arrives: `b` is its near-duplicate with a larger id and is dropped.
        assert_eq!(snaps[1], (vec!["a".to_string(), "c".to_string()], vec![("b".to_string(), "a".to_string())]));
        // `a` is retracted: `b` comes back.
        assert_eq!(snaps[2], (vec!["b".to_string(), "c".to_string()], vec![]));
    }
}
