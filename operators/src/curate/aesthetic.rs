//! `curate.aesthetic`: aesthetic quality of each clip by an ONNX aesthetic predictor (paper stage 8:
//! the LAION improved aesthetic predictor — CLIP ViT-L/14 image embedding + MLP — mean over 5
//! frames, drop clips below 3.0).
//!
//! No aesthetic weights are obtainable from the package registries, so none ships and there is no
//! fallback: a node without `model` fails `medgen check`, saying what to export and where to put
//! it. Any export with the LAION predictor's signature works: one input `[N, 3, S, S]` f32 (S =
//! 224 for ViT-L/14, or the model's fixed size) holding RGB / 255 normalised with CLIP's mean
//! (0.48145466, 0.4578275, 0.40821073) and deviation (0.26862954, 0.26130258, 0.27577711), and one
//! output `[N, 1]` or `[N]`: the score per image on the predictor's 1–10 scale. The export must
//! include CLIP's embedding normalisation before the MLP, as the predictor was trained on
//! L2-normalised embeddings.
//!
//! # Measurement (memoised; `min_aesthetic` is not part of its key)
//!
//! `frames` frames spread uniformly over the clip are decoded as RGB, scaled to cover S × S and
//! centre-cropped (CLIP's resize-then-centre-crop), and scored in one batch. Scores `aesthetic`
//! (mean over frames, as the paper) and `aesthetic_min`.
//!
//! # Decision
//!
//! Clips whose `aesthetic` is below `min_aesthetic` (the paper: 3.0) go to `rejected` (labels
//! `rejected_by`, `reason`).

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

/// The `curate.aesthetic` operator.
pub struct CurateAesthetic;

/// CLIP's input normalisation.
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// Input side when the model's is dynamic (CLIP ViT-L/14).
pub const DEFAULT_SIDE: u32 = 224;

/// What `medgen check` says when no model is given.
pub const NO_MODEL: &str = "curate.aesthetic needs `model`: an ONNX aesthetic predictor (CLIP ViT-L/14 image encoder + the LAION improved-aesthetic MLP head; input [N,3,224,224] CLIP-normalised RGB, output [N,1] scores on the 1–10 scale). No such weights are obtainable from the package registries, so none ships with medgen and there is no substitute: export one (the CLIP visual tower, L2-normalisation of its embedding, then the MLP, with torch.onnx.export) and put it next to the graph file, e.g. models/aesthetic.onnx";

fn d_frames() -> u32 {
    5
}
fn d_min() -> f64 {
    3.0
}
fn d_one() -> usize {
    1
}

/// Params of `curate.aesthetic`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AestheticParams {
    /// The aesthetic predictor (ONNX, see the operator docs). Required; relative paths start at
    /// the graph file's folder. None ships with medgen.
    #[serde(default)]
    pub model: Option<String>,
    /// Frames per clip, spread uniformly over it (the paper: 5).
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// Decision: drop clips whose mean score is below this (the paper: 3.0).
    #[serde(default = "d_min")]
    pub min_aesthetic: f64,
    /// Threads ONNX Runtime uses per inference.
    #[serde(default = "d_one")]
    pub intra_threads: usize,
    /// Threads per worker analysing clips.
    #[serde(default = "d_one")]
    pub threads: usize,
}

fn model_path(p: &AestheticParams, base_dir: &Path) -> Option<PathBuf> {
    onnx::model_path(p.model.as_deref(), base_dir, None)
}

/// Load a predictor and check its signature; returns it and its input side.
pub fn load_model(path: &Path, intra_threads: usize) -> Result<(Arc<onnx::Model>, u32), OnnxError> {
    let hint = "check `model` (relative paths start at the graph file's folder); medgen ships no aesthetic model";
    let model = onnx::load(path, &SessionOptions { intra_threads: intra_threads.max(1) }, hint)?;
    let input_ok = matches!(model.inputs(), [i] if i.shape.len() == 4 && i.dim_accepts(1, 3));
    let output_ok =
        model.outputs().first().is_some_and(|o| o.shape.len() == 1 || (o.shape.len() == 2 && o.dim_accepts(1, 1)));
    if !input_ok || !output_ok {
        return Err(
            model.signature_error("an aesthetic predictor needs one input [N,3,S,S] and an output [N,1] or [N]")
        );
    }
    let side = match model.inputs()[0].shape[2..] {
        [h, w] if h > 0 && h == w => h as u32,
        [h, w] if h > 0 || w > 0 => return Err(model.signature_error("the input must be square (or dynamic)")),
        _ => DEFAULT_SIDE,
    };
    Ok((model, side))
}

/// Pack `S × S` RGB8 frames into the predictor's input.
pub fn to_tensor(frames: &[Frame], side: usize) -> Option<TensorF32> {
    let plane = side * side;
    let mut data = vec![0f32; frames.len() * 3 * plane];
    for (n, f) in frames.iter().enumerate() {
        if f.width as usize != side || f.height as usize != side || f.data().len() < plane * 3 {
            return None;
        }
        for (i, p) in f.data().chunks_exact(3).take(plane).enumerate() {
            for c in 0..3 {
                data[(n * 3 + c) * plane + i] = (p[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    TensorF32::new(vec![frames.len(), 3, side, side], data)
}

/// Score frames already at the model's size: one score per frame.
pub fn score_frames(model: &onnx::Model, frames: &[Frame], side: u32) -> Result<Vec<f64>, OnnxError> {
    let input = to_tensor(frames, side as usize)
        .ok_or_else(|| model.signature_error(format!("frames must be {side}×{side} RGB")))?;
    let out = model.run1(&input)?;
    if out.data.len() != frames.len() || out.data.iter().any(|v| !v.is_finite()) {
        return Err(OnnxError::Run {
            path: model.path().to_path_buf(),
            message: format!("expected {} finite scores, got shape {:?}", frames.len(), out.shape),
        });
    }
    Ok(out.data.iter().map(|v| *v as f64).collect())
}

/// Measure one clip.
pub fn measure_clip(
    clip: &Clip,
    model: &onnx::Model,
    side: u32,
    p: &AestheticParams,
    ctx: &ItemCtx,
) -> Result<Measured, ItemError> {
    let size = Size::Fill { width: side, height: side };
    let (_, decoded) =
        frames::clip_frames(clip, Sampling::Uniform { count: p.frames.max(1) }, size, PixelFormat::Rgb, ctx)?;
    frames::check_stop(ctx)?;
    let scores = score_frames(model, &decoded, side)?;
    let mut m = Measured::default();
    m.score("aesthetic", scores.iter().sum::<f64>() / scores.len().max(1) as f64);
    m.score("aesthetic_min", scores.iter().copied().fold(f64::INFINITY, f64::min));
    Ok(m)
}

/// The decision: keep unless `aesthetic` is below `min_aesthetic`.
pub fn decide(mut s: Scores, p: &AestheticParams, node: &str) -> (bool, Scores) {
    let a = s.scores.get("aesthetic").map_or(f64::NAN, |v| v.0);
    if a < p.min_aesthetic {
        reject(&mut s, node, format!("aesthetic score {a:.3} < min_aesthetic {}", p.min_aesthetic));
        return (false, s);
    }
    (true, s)
}

impl TypedOperator for CurateAesthetic {
    type Params = AestheticParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.aesthetic",
            summary: "Aesthetic score by a user-supplied ONNX predictor (CLIP-L/14 + LAION MLP) on sampled frames; drop low scores",
            doc: "Decodes `frames` frames spread over each clip (RGB, resized to cover S×S and centre-cropped, S = 224 \
                  or the model's fixed size), normalises them with CLIP's mean/std and runs `model` on them in one \
                  batch: input [N,3,S,S] → output [N,1] or [N], the LAION improved aesthetic predictor's signature \
                  (CLIP ViT-L/14 image embedding, L2-normalised, then the MLP; scores on a 1–10 scale). Scores: \
                  aesthetic (mean over frames, as the paper), aesthetic_min. Clips with aesthetic < min_aesthetic \
                  (the paper: 3.0) go to `rejected`. No aesthetic weights are obtainable from the package \
                  registries, so none ships and there is no fallback: without `model` the node fails `medgen \
                  check`. The measurement is memoised per clip span with the model's content hash; min_aesthetic \
                  only changes decisions.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips)",
            }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "kept clips with aesthetic scores" },
                OutPort { name: REJECTED_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "clips below min_aesthetic" },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &AestheticParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.frames == 0 || p.frames > 64 {
            v.push(ParamIssue::error("frames", "must be between 1 and 64", Some("frames = 5".into())));
        }
        check_range(&mut v, "min_aesthetic", p.min_aesthetic, -1e9, 1e9, "3.0");
        check_threads(p.threads, &mut v);
        if p.intra_threads == 0 {
            v.push(ParamIssue::error("intra_threads", "must be at least 1", Some("intra_threads = 1".into())));
        }
        match model_path(p, &ctx.base_dir) {
            None => v.push(ParamIssue::error("model", NO_MODEL, Some("model = \"models/aesthetic.onnx\"".into()))),
            Some(path) => {
                if let Err(e) = load_model(&path, p.intra_threads) {
                    let fix = match &e {
                        OnnxError::Runtime(_) => {
                            "bash scripts/setup.sh (or export ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.x.y)".into()
                        }
                        OnnxError::MissingModel { .. } => {
                            format!(
                                "put the exported predictor at {} (see `medgen ops curate.aesthetic`)",
                                path.display()
                            )
                        }
                        _ => "export the predictor with input [N,3,224,224] and output [N,1]".into(),
                    };
                    v.push(ParamIssue::error("model", e.to_string(), Some(fix)));
                }
            }
        }
        v
    }

    fn fingerprint(&self, p: &AestheticParams) -> serde_json::Value {
        fingerprint_without(p, &["min_aesthetic", "threads", "intra_threads", "model"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &AestheticParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let invalid = |node: &str, message: String| BuildError::Invalid { node: node.to_string(), message };
        let path = model_path(p, &ctx.base_dir).ok_or_else(|| invalid(&ctx.node, NO_MODEL.into()))?;
        let digest =
            onnx::file_digest(&path).map_err(|e| invalid(&ctx.node, format!("model {}: {e}", path.display())))?;
        ctx.params_fingerprint = format!("{}|model={digest}", ctx.params_fingerprint);
        let (model, side) = load_model(&path, p.intra_threads).map_err(|e| invalid(&ctx.node, e.to_string()))?;
        let mp = p.clone();
        let (merged, failed) =
            measure(ctx, input, p.threads, move |clip, ictx| measure_clip(clip, &model, side, &mp, ictx));
        let (p, node) = (p.clone(), ctx.node.clone());
        let (kept, rejected) = split_decided(merged.map(move |s| decide(s, &p, &node)));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> AestheticParams {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn no_model_fails_check_with_where_to_put_one() {
        let ctx = CheckCtx { base_dir: ".".into(), node: "aes".into() };
        let issues = TypedOperator::check(&CurateAesthetic, &params(), &ctx);
        let i = issues.iter().find(|i| i.path == "model").expect("a model issue");
        assert!(!i.warning);
        assert!(i.message.contains("LAION") && i.message.contains("models/aesthetic.onnx"), "{}", i.message);
        assert_eq!(i.fix.as_deref(), Some("model = \"models/aesthetic.onnx\""));
        let mut p = params();
        p.model = Some("/nonexistent/aesthetic.onnx".into());
        let issues = TypedOperator::check(&CurateAesthetic, &p, &ctx);
        let i = issues.iter().find(|i| i.path == "model").expect("a model issue");
        assert!(i.message.contains("/nonexistent/aesthetic.onnx"), "{}", i.message);
    }

    #[test]
    fn clip_normalisation_and_decision() {
        let f = Frame::new(0.0, None, 2, 2, PixelFormat::Rgb, vec![255; 12]);
        let t = to_tensor(&[f], 2).unwrap();
        assert_eq!(t.shape, vec![1, 3, 2, 2]);
        assert!((t.data[0] - (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert!(to_tensor(&[Frame::new(0.0, None, 4, 2, PixelFormat::Rgb, vec![0; 24])], 2).is_none());
        let mut m = Measured::default();
        m.score("aesthetic", 2.5);
        let s = Scores {
            clip: Clip {
                clip_id: "c".into(),
                source_id: "s".into(),
                uri: "u".into(),
                start_s: F64(0.0),
                end_s: F64(1.0),
                fps: F64(30.0),
                width: 2,
                height: 2,
                blob: None,
                metadata: Default::default(),
            },
            scores: m.scores,
            labels: Default::default(),
        };
        let (keep, r) = decide(s.clone(), &params(), "aes");
        assert!(!keep && r.labels["reason"].contains("2.500 < min_aesthetic 3"));
        let mut p = params();
        p.min_aesthetic = 2.0;
        assert!(decide(s, &p, "aes").0);
        assert_eq!(
            TypedOperator::fingerprint(&CurateAesthetic, &params()),
            TypedOperator::fingerprint(&CurateAesthetic, &p)
        );
    }
}
