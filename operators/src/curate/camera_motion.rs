//! `curate.camera_motion`: the camera motion of each clip — static, pan, tilt, zoom, shaky or
//! mixed — by dense global motion estimation between frames (paper stage 11: camera motion type
//! as clip metadata).
//!
//! # Measurement (memoised; thresholds and `reject` are not part of its key)
//!
//! Frames are decoded at `fps` frames per second in grey, scaled to `width` pixels wide (aspect
//! kept). Between each pair of consecutive frames [`motion::pair_motion`] aligns the whole picture
//! (Lucas–Kanade on a Gaussian pyramid, similarity model: zoom, rotation, translation; robust
//! Tukey weights so moving objects do not count as camera motion). [`motion::summarize`] turns the
//! pairs into rates per second: scores `camera_pan` (view widths per second, positive when the
//! camera turns right), `camera_tilt` (view heights per second, positive turning down),
//! `camera_zoom` (relative scale per second, positive zooming in), `camera_jitter` (high-pass RMS
//! of the translation rates) and `camera_pairs`.
//!
//! # Decision
//!
//! Label `camera_motion`: `shaky` when `camera_jitter > shaky_jitter`; else `static`, `pan`,
//! `tilt`, `zoom` or `mixed` from which rates exceed `min_rate` in magnitude. Clips whose class is
//! listed in `reject` go to port `rejected` (labels `rejected_by`, `reason`); by default none are
//! dropped — the class is metadata for the dataset and for captions.

use super::motion::{self, ClipMotion, PairMotion};
use super::{
    Measured, REJECTED_PORT, check_range, check_threads, fingerprint_without, frames, measure, reject, split_decided,
    take_input,
};
use crate::api::*;
use crate::video::{PixelFormat, Sampling, Size};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `curate.camera_motion` operator.
pub struct CurateCameraMotion;

fn d_fps() -> f64 {
    5.0
}
fn d_width() -> u32 {
    160
}
fn d_min_rate() -> f64 {
    0.03
}
fn d_shaky() -> f64 {
    0.08
}
fn d_threads() -> usize {
    1
}

/// Parameters of `curate.camera_motion`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraMotionParams {
    /// Frames per second analysed (consecutive analysed frames form the pairs).
    #[serde(default = "d_fps")]
    pub fps: f64,
    /// Analysis width in pixels (aspect kept); motion is measured in fractions of the frame.
    #[serde(default = "d_width")]
    pub width: u32,
    /// A pan, tilt or zoom counts above this rate (view widths/heights or relative scale per
    /// second). Decision only.
    #[serde(default = "d_min_rate")]
    pub min_rate: f64,
    /// Jitter above this (view widths per second, high-pass RMS) makes a clip `shaky`. Decision only.
    #[serde(default = "d_shaky")]
    pub shaky_jitter: f64,
    /// Classes to drop (e.g. `["shaky"]`); empty keeps every clip. Decision only.
    #[serde(default)]
    pub reject: Vec<String>,
    /// Clips measured at once.
    #[serde(default = "d_threads")]
    pub threads: usize,
}

/// Decode a clip and measure its motion.
fn measure_clip(clip: &Clip, p: &CameraMotionParams, ctx: &ItemCtx) -> Result<Measured, ItemError> {
    let (_, fr) = frames::clip_frames(
        clip,
        Sampling::Fps { fps: p.fps },
        Size::Fit { width: p.width, height: 0 },
        PixelFormat::Gray,
        ctx,
    )?;
    let mut pairs: Vec<(PairMotion, f64)> = Vec::new();
    for w in fr.windows(2) {
        frames::check_stop(ctx)?;
        let (a, b) = (&w[0], &w[1]);
        if (a.width, a.height) != (b.width, b.height) {
            continue;
        }
        if let Some(m) = motion::pair_motion(a.data(), b.data(), a.width as usize, a.height as usize) {
            pairs.push((m, b.pts_s - a.pts_s));
        }
    }
    let s = motion::summarize(&pairs);
    let mut m = Measured::default();
    m.score("camera_pan", round6(s.pan));
    m.score("camera_tilt", round6(s.tilt));
    m.score("camera_zoom", round6(s.zoom));
    m.score("camera_jitter", round6(s.jitter));
    m.score("camera_pairs", s.pairs as f64);
    Ok(m)
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Label the class and decide.
fn decide(mut s: Scores, p: &CameraMotionParams, node: &str) -> (bool, Scores) {
    let get = |k: &str| s.scores.get(k).map(|v| v.0).unwrap_or(0.0);
    let m = ClipMotion {
        pan: get("camera_pan"),
        tilt: get("camera_tilt"),
        zoom: get("camera_zoom"),
        jitter: get("camera_jitter"),
        pairs: get("camera_pairs") as usize,
    };
    let class = if m.pairs == 0 { "static" } else { motion::classify(&m, p.min_rate, p.shaky_jitter) };
    s.labels.insert("camera_motion".into(), class.to_string());
    if p.reject.iter().any(|c| c == class) {
        reject(&mut s, node, format!("camera motion is {class}"));
        return (false, s);
    }
    (true, s)
}

impl TypedOperator for CurateCameraMotion {
    type Params = CameraMotionParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.camera_motion",
            summary: "Camera motion class of each clip (static, pan, tilt, zoom, shaky, mixed) by dense global motion",
            doc: "Decodes each clip at `fps` frames per second in grey, `width` pixels wide, and aligns every pair of \
                  consecutive frames over all pixels (Lucas–Kanade on a Gaussian pyramid, similarity model: zoom, \
                  rotation, translation; Tukey-weighted so moving objects in a still shot do not count). Scores: \
                  camera_pan (view widths per second, + turning right), camera_tilt (view heights per second, + \
                  turning down), camera_zoom (relative scale per second, + zooming in), camera_jitter (high-pass RMS \
                  of the translation rates), camera_pairs. Label camera_motion: `shaky` when camera_jitter > \
                  shaky_jitter, else `static`, `pan`, `tilt`, `zoom` or `mixed` from the rates above min_rate. \
                  Classes listed in `reject` go to `rejected`; by default every clip is kept. The measurement is \
                  memoised per clip span with fps and width; min_rate, shaky_jitter and reject only change \
                  decisions.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips)",
            }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "clips with camera-motion scores" },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Scores),
                    doc: "clips whose class is listed in `reject`",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &CameraMotionParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        check_range(&mut v, "fps", p.fps, 0.5, 30.0, "5.0");
        if !(32..=1920).contains(&p.width) {
            v.push(ParamIssue::error("width", "must be between 32 and 1920 pixels", Some("width = 160".into())));
        }
        check_range(&mut v, "min_rate", p.min_rate, 0.0, 10.0, "0.03");
        check_range(&mut v, "shaky_jitter", p.shaky_jitter, 0.0, 10.0, "0.08");
        for c in &p.reject {
            if !motion::CLASSES.contains(&c.as_str()) {
                v.push(ParamIssue::error(
                    "reject",
                    format!("unknown class {c:?}; classes are {}", motion::CLASSES.join(", ")),
                    Some("reject = [\"shaky\"]".into()),
                ));
            }
        }
        check_threads(p.threads, &mut v);
        v
    }

    fn fingerprint(&self, p: &CameraMotionParams) -> serde_json::Value {
        fingerprint_without(p, &["min_rate", "shaky_jitter", "reject", "threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &CameraMotionParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let mp = p.clone();
        let (merged, failed) = measure(ctx, input, p.threads, move |clip, ictx| measure_clip(clip, &mp, ictx));
        let (p, node) = (p.clone(), ctx.node.clone());
        let (kept, rejected) = split_decided(merged.map(move |s| decide(s, &p, &node)));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CameraMotionParams {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn thresholds_are_not_in_the_fingerprint_and_decisions_label() {
        let mut p = params();
        let a = TypedOperator::fingerprint(&CurateCameraMotion, &p);
        p.min_rate = 0.5;
        p.reject = vec!["pan".into()];
        assert_eq!(a, TypedOperator::fingerprint(&CurateCameraMotion, &p));
        p.fps = 2.0;
        assert_ne!(a, TypedOperator::fingerprint(&CurateCameraMotion, &p));

        let clip = Clip {
            clip_id: "c".into(),
            source_id: "s".into(),
            uri: "/v.mp4".into(),
            start_s: F64(0.0),
            end_s: F64(6.0),
            fps: F64(30.0),
            width: 640,
            height: 360,
            blob: None,
            metadata: Default::default(),
        };
        let mut s = Scores { clip, scores: Default::default(), labels: Default::default() };
        for (k, v) in [("camera_pan", 0.2), ("camera_tilt", 0.0), ("camera_zoom", 0.0), ("camera_jitter", 0.0)] {
            s.scores.insert(k.into(), F64(v));
        }
        s.scores.insert("camera_pairs".into(), F64(29.0));
        let (keep, out) = decide(s.clone(), &params(), "cm");
        assert!(keep);
        assert_eq!(out.labels["camera_motion"], "pan");
        let mut p = params();
        p.reject = vec!["pan".into()];
        let (keep, out) = decide(s, &p, "cm");
        assert!(!keep);
        assert_eq!(out.labels["rejected_by"], "cm");
        let ctx = CheckCtx { base_dir: ".".into(), node: "cm".into() };
        let issues = TypedOperator::check(
            &CurateCameraMotion,
            &CameraMotionParams { reject: vec!["wobbly".into()], ..params() },
            &ctx,
        );
        assert!(issues.iter().any(|i| i.path == "reject"), "{issues:?}");
    }
}
