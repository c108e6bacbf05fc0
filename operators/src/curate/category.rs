//! `curate.category`: the content category of each clip — by default the paper's five: teaching,
//! clinical practice, popular science, animation, imaging (PIPELINE.md stage 11) — from its
//! metadata text against labelled prototype sentences, plus visual cues.
//!
//! # Measurement (memoised; temperature and cue weights are not part of its key)
//!
//! * **Text.** The clip's title, description, tags and transcript are embedded with MiniLM
//!   (all-MiniLM-L6-v2, fetched by `scripts/fetch-models.sh`, run on medgen's own kernels) and
//!   compared (cosine) with every prototype sentence; a class's text score is the mean of its two
//!   best similarities (`category_text_<class>`). Prototypes are built in for the five classes and
//!   can be replaced with a JSON file `{"class": ["sentence", …], …}` (`prototypes`): any set of
//!   classes works.
//! * **Visual cues** on `frames` frames (160 px wide): `category_flat` — the share of 4×4 blocks
//!   that are flat (luma spread ≤ 2), high for animation and graphics, low for camera footage
//!   with sensor noise; `category_colour` — mean chroma (0–1), low for grey-scale medical imaging;
//!   `category_modality` — 1 when the source is a DICOM series of an imaging modality (ultrasound,
//!   MR, CT, X-ray, nuclear medicine), else 0.
//!
//! # Decision
//!
//! Logits: `text score / temperature`, plus `animation_weight × category_flat` for a class named
//! `animation` and `imaging_weight × (category_modality + (1 − category_colour) / 2)` for a class
//! named `imaging`. Softmax gives scores `category_<class>` (probabilities); label `category` is the
//! most probable class. A clip without any text is judged on the visual cues alone. Classes listed
//! in `reject` go to port `rejected`.

use super::relevance::{check_minilm, metadata_text, minilm_dir, shared_minilm};
use super::{
    Measured, REJECTED_PORT, check_range, check_threads, fingerprint_without, frames, measure_with_text, reject,
    split_decided, take_input,
};
use crate::api::*;
use crate::video::{PixelFormat, Sampling, Size};
use medgen_kernels::nets::minilm::{self, MiniLm};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// The `curate.category` operator.
pub struct CurateCategory;

/// The paper's classes and their built-in prototype sentences.
pub const DEFAULT_PROTOTYPES: &[(&str, &[&str])] = &[
    (
        "teaching",
        &[
            "a lecture for medical students explaining anatomy and physiology",
            "a professor teaches a lesson on cardiology with slides",
            "medical education tutorial: how to perform a clinical examination step by step",
            "exam preparation course for nursing and medical students",
        ],
    ),
    (
        "clinical practice",
        &[
            "a surgeon performs an operation in the operating room",
            "a doctor examines a patient in the clinic",
            "laparoscopic surgery procedure with surgical instruments",
            "a nurse inserts an intravenous catheter into a patient's arm",
        ],
    ),
    (
        "popular science",
        &[
            "health tips for everyone explained in simple words",
            "a documentary about how the human body fights disease",
            "news report about a new medical discovery for the general public",
            "why do we sleep? the science explained for a general audience",
        ],
    ),
    (
        "animation",
        &[
            "3D animation of blood flowing through the arteries",
            "animated illustration of a virus infecting a human cell",
            "cartoon explaining how the heart pumps blood",
            "computer-generated medical animation of the digestive system",
        ],
    ),
    (
        "imaging",
        &[
            "ultrasound scan of the heart, echocardiography",
            "MRI scan slices of the brain",
            "CT scan of the chest showing the lungs",
            "X-ray image of a fractured bone",
        ],
    ),
];

/// DICOM modalities that are medical imaging (not endoscopy or photography).
const IMAGING_MODALITIES: &[&str] = &["US", "MR", "CT", "CR", "DX", "XA", "RF", "MG", "NM", "PT", "IVUS", "OCT"];

fn d_frames() -> u32 {
    3
}
fn d_temperature() -> f64 {
    0.05
}
fn d_animation_weight() -> f64 {
    4.0
}
fn d_imaging_weight() -> f64 {
    4.0
}
fn d_threads() -> usize {
    1
}

/// Parameters of `curate.category`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryParams {
    /// Prototype sentences per class, a JSON file `{"class": ["sentence", …]}`; relative paths
    /// start at the graph file's folder. Default: the paper's five classes, built in.
    #[serde(default)]
    pub prototypes: Option<String>,
    /// Folder with MiniLM's `model.safetensors`, `tokenizer.json` (and `config.json`); default: the
    /// one `scripts/fetch-models.sh` fetched (`.cache/models/minilm`).
    #[serde(default)]
    pub model_dir: Option<String>,
    /// Frames per clip for the visual cues.
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// Softmax temperature over the text similarities (lower: sharper). Decision only.
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    /// Weight of the flatness cue for a class named `animation`. Decision only.
    #[serde(default = "d_animation_weight")]
    pub animation_weight: f64,
    /// Weight of the imaging cues (DICOM modality, grey picture) for a class named `imaging`.
    /// Decision only.
    #[serde(default = "d_imaging_weight")]
    pub imaging_weight: f64,
    /// Classes to drop (e.g. `["animation"]`); empty keeps every clip. Decision only.
    #[serde(default)]
    pub reject: Vec<String>,
    /// Clips analysed at once.
    #[serde(default = "d_threads")]
    pub threads: usize,
}

/// Class → prototype sentences.
type Prototypes = BTreeMap<String, Vec<String>>;

fn builtin_prototypes() -> Prototypes {
    DEFAULT_PROTOTYPES.iter().map(|(c, s)| (c.to_string(), s.iter().map(|s| s.to_string()).collect())).collect()
}

/// The node's prototypes: the file's, else the built-in ones.
fn load_prototypes(p: &CategoryParams, base: &Path) -> Result<Prototypes, String> {
    let Some(path) = crate::onnx::model_path(p.prototypes.as_deref(), base, None) else {
        return Ok(builtin_prototypes());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let protos: Prototypes = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a JSON object of class → list of sentences: {e}", path.display()))?;
    if protos.len() < 2 {
        return Err(format!("{} needs at least two classes", path.display()));
    }
    if let Some((c, _)) = protos.iter().find(|(_, v)| v.iter().all(|s| s.trim().is_empty())) {
        return Err(format!("class {c:?} in {} has no sentence", path.display()));
    }
    Ok(protos)
}

/// The embedder and the prototype embeddings, loaded once per process and model folder.
struct Embedder {
    model: Arc<MiniLm>,
    /// (class, prototype embeddings [n × d]).
    classes: Vec<(String, Vec<Vec<f32>>)>,
}

fn embedder(dir: &Path, protos: &Prototypes) -> Result<Arc<Embedder>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Embedder>>>> = OnceLock::new();
    let key = format!("{}\u{0}{}", dir.display(), serde_json::to_string(protos).unwrap_or_default());
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(e) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(e.clone());
    }
    let model = shared_minilm(dir)?;
    let mut classes = Vec::new();
    for (class, sentences) in protos {
        let emb = model.embed(sentences).map_err(|e| format!("embedding the prototypes of {class:?}: {e}"))?;
        let d = emb.shape()[1];
        let v = emb.to_vec_f32().map_err(|e| e.to_string())?;
        classes.push((class.clone(), v.chunks(d).map(|c| c.to_vec()).collect()));
    }
    let e = Arc::new(Embedder { model, classes });
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, e.clone());
    Ok(e)
}

/// The text a clip is classified on: title, description, tags, transcript.
fn clip_text(clip: &Clip) -> String {
    metadata_text(&["title", "description", "tags", "transcript"], |k| clip.metadata.get(k).map(String::as_str))
}

/// Mean of the two best cosine similarities of `e` with a class's prototypes.
fn class_similarity(e: &[f32], protos: &[Vec<f32>]) -> f64 {
    let mut sims: Vec<f64> =
        protos.iter().map(|p| p.iter().zip(e).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>()).collect();
    sims.sort_by(|a, b| b.total_cmp(a));
    let top = &sims[..sims.len().min(2)];
    top.iter().sum::<f64>() / top.len().max(1) as f64
}

/// Flat-block share and mean chroma of an RGB frame.
pub fn visual_cues(rgb: &[u8], w: usize, h: usize) -> (f64, f64) {
    let (mut flat, mut blocks) = (0usize, 0usize);
    for by in (0..h.saturating_sub(3)).step_by(4) {
        for bx in (0..w.saturating_sub(3)).step_by(4) {
            let (mut lo, mut hi) = (u8::MAX, u8::MIN);
            for y in by..by + 4 {
                for x in bx..bx + 4 {
                    let o = (y * w + x) * 3;
                    let l = ((rgb[o] as u32 * 77 + rgb[o + 1] as u32 * 150 + rgb[o + 2] as u32 * 29) >> 8) as u8;
                    lo = lo.min(l);
                    hi = hi.max(l);
                }
            }
            blocks += 1;
            if hi - lo <= 2 {
                flat += 1;
            }
        }
    }
    let chroma: f64 = rgb
        .chunks_exact(3)
        .map(|p| (p.iter().max().copied().unwrap_or(0) - p.iter().min().copied().unwrap_or(0)) as f64 / 255.0)
        .sum::<f64>()
        / (rgb.len() / 3).max(1) as f64;
    (flat as f64 / blocks.max(1) as f64, chroma)
}

fn measure_clip(
    clip: &Clip,
    text: &str,
    p: &CategoryParams,
    dir: &Path,
    protos: &Prototypes,
    ctx: &ItemCtx,
) -> Result<Measured, ItemError> {
    let mut m = Measured::default();
    if !text.is_empty() {
        m.label("category_text", text.chars().take(300).collect::<String>());
        let emb = embedder(dir, protos).map_err(ItemError::invalid)?;
        let e = emb.model.embed(&[text]).map_err(|e| ItemError::invalid(format!("embedding the clip's text: {e}")))?;
        let e = e.to_vec_f32().map_err(|e| ItemError::invalid(e.to_string()))?;
        for (class, vecs) in &emb.classes {
            m.score(&format!("category_text_{}", key(class)), round4(class_similarity(&e, vecs)));
        }
    }
    let (_, fr) = frames::clip_frames(
        clip,
        Sampling::Uniform { count: p.frames },
        Size::Fit { width: 160, height: 0 },
        PixelFormat::Rgb,
        ctx,
    )?;
    let (mut flat, mut colour) = (0.0, 0.0);
    for f in &fr {
        let (a, b) = visual_cues(f.data(), f.width as usize, f.height as usize);
        flat += a;
        colour += b;
    }
    let n = fr.len().max(1) as f64;
    m.score("category_flat", round4(flat / n));
    m.score("category_colour", round4(colour / n));
    let modality = clip.metadata.get("modality").map(|s| s.trim().to_ascii_uppercase()).unwrap_or_default();
    m.score("category_modality", if IMAGING_MODALITIES.contains(&modality.as_str()) { 1.0 } else { 0.0 });
    Ok(m)
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// A class name as a score-name suffix: lower case, spaces and dashes as underscores.
pub fn key(class: &str) -> String {
    class.trim().to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn decide(mut s: Scores, p: &CategoryParams, classes: &[String], node: &str) -> (bool, Scores) {
    let get = |k: &str| s.scores.get(k).map(|v| v.0);
    let flat = get("category_flat").unwrap_or(0.0);
    let grey = 1.0 - get("category_colour").unwrap_or(1.0);
    let modality = get("category_modality").unwrap_or(0.0);
    let logits: Vec<f64> = classes
        .iter()
        .map(|c| {
            let k = key(c);
            let mut l = get(&format!("category_text_{k}")).unwrap_or(0.0) / p.temperature.max(1e-6);
            if k == "animation" {
                l += p.animation_weight * flat;
            }
            if k == "imaging" {
                l += p.imaging_weight * (modality + grey / 2.0);
            }
            l
        })
        .collect();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let z: f64 = exp.iter().sum();
    let mut best = 0;
    for (i, (c, e)) in classes.iter().zip(&exp).enumerate() {
        s.scores.insert(format!("category_{}", key(c)), F64(round4(e / z)));
        if *e > exp[best] {
            best = i;
        }
    }
    let class = classes.get(best).cloned().unwrap_or_default();
    s.labels.insert("category".into(), class.clone());
    if p.reject.contains(&class) {
        reject(&mut s, node, format!("category is {class}"));
        return (false, s);
    }
    (true, s)
}

impl TypedOperator for CurateCategory {
    type Params = CategoryParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.category",
            summary: "Content category of each clip (teaching, clinical practice, popular science, animation, imaging) from text prototypes and visual cues",
            doc: "Embeds each clip's title, description, tags and transcript with MiniLM (all-MiniLM-L6-v2 on medgen's \
                  own kernels; scripts/fetch-models.sh fetches it) and compares it with prototype sentences per class \
                  (built in for the paper's five classes; `prototypes` = a JSON file {\"class\": [sentences]} replaces \
                  them, any classes). Scores category_text_<class> (mean of the two best cosine similarities), visual \
                  cues on `frames` frames: category_flat (share of flat 4×4 blocks: animation and graphics), \
                  category_colour (mean chroma: grey-scale imaging is low), category_modality (1 for a DICOM imaging \
                  modality). Decision: softmax over text/temperature plus animation_weight × flat for `animation` and \
                  imaging_weight × (modality + grey/2) for `imaging` → scores category_<class>, label category. \
                  Classes in `reject` go to `rejected`. The measurement is memoised per clip span with the \
                  prototypes and the model; temperature, weights and reject only change decisions.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores],
                required: true,
                doc: "clips (or scored clips) with their source's metadata",
            }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "clips with a category" },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Scores),
                    doc: "clips of a class in `reject`",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &CategoryParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        match load_prototypes(p, &ctx.base_dir) {
            Ok(protos) => {
                for c in &p.reject {
                    if !protos.contains_key(c) {
                        v.push(ParamIssue::error(
                            "reject",
                            format!(
                                "unknown class {c:?}; classes are {}",
                                protos.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                            None,
                        ));
                    }
                }
            }
            Err(e) => v.push(ParamIssue::error("prototypes", e, None)),
        }
        check_minilm(p.model_dir.as_deref(), &ctx.base_dir, "model_dir", &mut v);
        if p.frames == 0 || p.frames > 50 {
            v.push(ParamIssue::error("frames", "must be between 1 and 50", Some("frames = 3".into())));
        }
        check_range(&mut v, "temperature", p.temperature, 1e-4, 10.0, "0.05");
        check_range(&mut v, "animation_weight", p.animation_weight, 0.0, 100.0, "4.0");
        check_range(&mut v, "imaging_weight", p.imaging_weight, 0.0, 100.0, "4.0");
        check_threads(p.threads, &mut v);
        v
    }

    fn fingerprint(&self, p: &CategoryParams) -> serde_json::Value {
        fingerprint_without(p, &["temperature", "animation_weight", "imaging_weight", "reject", "threads"])
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &CategoryParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let invalid = |message: String| BuildError::Invalid { node: ctx.node.clone(), message };
        let protos = load_prototypes(p, &ctx.base_dir).map_err(invalid)?;
        let dir = minilm_dir(p.model_dir.as_deref(), &ctx.base_dir).ok_or_else(|| {
            invalid(format!("the MiniLM sentence encoder is not there: {}", minilm::MINILM_FETCH_HINT))
        })?;
        // The memo key covers what the measurement depends on: the prototypes and the model file.
        let digest = crate::onnx::file_digest(&dir.join("model.safetensors"))
            .map_err(|e| invalid(format!("{}: {e}", dir.join("model.safetensors").display())))?;
        let mut fp = TypedOperator::fingerprint(self, p);
        fp["prototypes"] = serde_json::json!(protos);
        fp["model"] = serde_json::json!(digest);
        ctx.params_fingerprint = fp.to_string();
        let classes: Vec<String> = protos.keys().cloned().collect();
        let mp = p.clone();
        // The text is part of each clip's memo key: same pixels, other titles → measured apart.
        let (merged, failed) = measure_with_text(ctx, input, p.threads, clip_text, move |clip, text, ictx| {
            measure_clip(clip, text, &mp, &dir, &protos, ictx)
        });
        let (p, node) = (p.clone(), ctx.node.clone());
        let (kept, rejected) = split_decided(merged.map(move |s| decide(s, &p, &classes, &node)));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CategoryParams {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn flat_graphics_and_grey_pictures_are_told_apart() {
        let (w, h) = (64, 32);
        let flat: Vec<u8> = (0..w * h).flat_map(|i| if i % w < 32 { [200, 40, 40] } else { [40, 40, 200] }).collect();
        let (f, c) = visual_cues(&flat, w, h);
        assert!(f > 0.9 && c > 0.5, "{f} {c}");
        let mut s = 7u32;
        let noisy: Vec<u8> = (0..w * h * 3)
            .map(|_| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (100 + (s >> 16) % 40) as u8
            })
            .collect();
        let (f, _) = visual_cues(&noisy, w, h);
        assert!(f < 0.05, "{f}");
        let grey: Vec<u8> = (0..w * h).flat_map(|i| [(i % 251) as u8; 3]).collect();
        assert!(visual_cues(&grey, w, h).1 < 1e-9);
    }

    #[test]
    fn decisions_combine_text_and_cues_and_thresholds_stay_out_of_the_key() {
        let classes: Vec<String> = builtin_prototypes().keys().cloned().collect();
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
        for c in &classes {
            s.scores.insert(format!("category_text_{}", key(c)), F64(0.3));
        }
        s.scores.insert("category_text_teaching".into(), F64(0.45));
        s.scores.insert("category_flat".into(), F64(0.05));
        s.scores.insert("category_colour".into(), F64(0.3));
        s.scores.insert("category_modality".into(), F64(0.0));
        let (keep, out) = decide(s.clone(), &params(), &classes, "cat");
        assert!(keep);
        assert_eq!(out.labels["category"], "teaching");
        let total: f64 = classes.iter().map(|c| out.scores[&format!("category_{}", key(c))].0).sum();
        assert!((total - 1.0).abs() < 1e-3);
        // A DICOM ultrasound wins imaging even against teaching-like text.
        s.scores.insert("category_modality".into(), F64(1.0));
        s.scores.insert("category_colour".into(), F64(0.02));
        assert_eq!(decide(s.clone(), &params(), &classes, "cat").1.labels["category"], "imaging");
        let mut p = params();
        p.reject = vec!["imaging".into()];
        assert!(!decide(s, &p, &classes, "cat").0);
        let a = TypedOperator::fingerprint(&CurateCategory, &params());
        assert_eq!(a, TypedOperator::fingerprint(&CurateCategory, &CategoryParams { temperature: 0.2, ..p }));
        assert_eq!(key("clinical practice"), "clinical_practice");
    }
}
