//! `curate.metadata_filter`: keep the videos whose metadata is medical (paper stages 2–3).
//!
//! Two steps, as in the paper:
//!
//! 1. **Dictionary.** A medical keyword dictionary over the title, description and tags, plus a
//!    channel whitelist for channel recollection: a video passes with at least `min_matches`
//!    distinct terms, or from a whitelisted channel.
//! 2. **Classifier** (optional, `classifier = "head.json"`). Every video that passed step 1 is
//!    embedded with MiniLM (the head's `text_fields` joined by `". "`) and scored by a logistic
//!    head ([`super::relevance`], trained by `medgen classifier train`): it gets metadata
//!    `medical_probability` and is kept iff that is at least `classifier_threshold` (default: the
//!    head's own threshold). `min_matches = 0` lets every video through step 1, so the head alone
//!    decides.
//!
//! Embeddings are computed off the worker thread ([`pool_map`]) and memoised by the text, the
//! MiniLM weights and the text fields only: replacing the head file, changing the threshold or
//! the dictionary re-decides without re-embedding.

use super::keywords::{Dictionary, parse_list};
use super::relevance::{self, RelevanceHead};
use super::{REASON, REJECTED_BY, REJECTED_PORT, check_range, check_threads, count_in, count_out, take_input};
use crate::api::*;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `curate.metadata_filter` operator.
pub struct CurateMetadataFilter;

/// Name of the built-in dictionary.
pub const BUILTIN: &str = "builtin:medical";

fn d_keywords() -> String {
    BUILTIN.into()
}
fn d_fields() -> Vec<String> {
    vec!["title".into(), "description".into(), "tags".into()]
}
fn d_min_matches() -> u32 {
    1
}
fn d_threads() -> usize {
    1
}

/// Params of `curate.metadata_filter`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataFilterParams {
    /// The dictionary to start from: "builtin:medical" (about a thousand terms across
    /// specialties, procedures, imaging, anatomy, conditions, drugs) or "none".
    #[serde(default = "d_keywords")]
    pub keywords: String,
    /// A file of extra terms, one per line (`#` comments), added to the dictionary. Relative to
    /// the graph file.
    #[serde(default)]
    pub keywords_file: Option<String>,
    /// Channels whose videos are kept whatever their metadata says (channel recollection);
    /// compared case-insensitively with the `channel` metadata.
    #[serde(default)]
    pub channels: Vec<String>,
    /// A file of whitelisted channels, one per line (`#` comments). Relative to the graph file.
    #[serde(default)]
    pub channels_file: Option<String>,
    /// Metadata fields searched for terms.
    #[serde(default = "d_fields")]
    pub fields: Vec<String>,
    /// Keep videos with at least this many distinct dictionary terms in those fields (0: every
    /// video passes the dictionary, so a `classifier` alone decides).
    #[serde(default = "d_min_matches")]
    pub min_matches: u32,
    /// A relevance head (JSON, written by `medgen classifier train`) that scores the videos the
    /// dictionary kept; relative to the graph file. Absent: the dictionary alone decides.
    #[serde(default)]
    pub classifier: Option<String>,
    /// Keep a scored video iff its medical probability is at least this (0–1). Default: the
    /// threshold stored in the head file. Decision only.
    #[serde(default)]
    pub classifier_threshold: Option<f64>,
    /// Folder with MiniLM's `model.safetensors`, `tokenizer.json` (and `config.json`) for the
    /// classifier; default: the one `scripts/fetch-models.sh` fetched (`.cache/models/minilm`).
    #[serde(default)]
    pub model_dir: Option<String>,
    /// Videos embedded at once (classifier only).
    #[serde(default = "d_threads")]
    pub threads: usize,
}

fn read_list(base: &Path, file: &str) -> Result<Vec<(usize, String)>, String> {
    let p = if Path::new(file).is_absolute() { Path::new(file).to_path_buf() } else { base.join(file) };
    std::fs::read_to_string(&p).map(|t| parse_list(&t)).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// The dictionary and channel whitelist a node's params describe.
pub fn load(p: &MetadataFilterParams, base: &Path) -> Result<(Dictionary, BTreeSet<String>), String> {
    let mut dict = match p.keywords.as_str() {
        BUILTIN => Dictionary::builtin_medical(),
        "none" => Dictionary::default(),
        other => return Err(format!("unknown dictionary `{other}`")),
    };
    if let Some(f) = &p.keywords_file {
        for (_, term) in read_list(base, f)? {
            dict.add(&term);
        }
    }
    let mut channels: BTreeSet<String> =
        p.channels.iter().map(|c| c.trim().to_lowercase()).filter(|c| !c.is_empty()).collect();
    if let Some(f) = &p.channels_file {
        channels.extend(read_list(base, f)?.into_iter().map(|(_, c)| c.to_lowercase()));
    }
    Ok((dict, channels))
}

/// Classify one video: (keep, the video with its annotations).
pub fn classify(
    mut v: Video,
    dict: &Dictionary,
    channels: &BTreeSet<String>,
    fields: &[String],
    min_matches: u32,
    node: &str,
) -> (bool, Video) {
    let text: Vec<&str> = fields.iter().filter_map(|f| v.metadata.get(f).map(String::as_str)).collect();
    let terms = dict.find(&text.join("\n"));
    let whitelisted = v.metadata.get("channel").is_some_and(|c| channels.contains(&c.trim().to_lowercase()));
    v.metadata.insert("medical_matches".into(), terms.len().to_string());
    v.metadata.insert("medical_terms".into(), terms.join(", "));
    if whitelisted {
        v.metadata.insert("channel_whitelisted".into(), "true".into());
    }
    let keep = terms.len() as u64 >= min_matches as u64 || whitelisted;
    if !keep {
        let found = if terms.is_empty() { String::new() } else { format!(": {}", terms.join(", ")) };
        let reason = format!(
            "{} medical term{} in {}{found} (min_matches = {min_matches})",
            terms.len(),
            if terms.len() == 1 { "" } else { "s" },
            fields.join(", ")
        );
        v.metadata.insert(REJECTED_BY.into(), node.to_string());
        v.metadata.insert(REASON.into(), reason);
    }
    (keep, v)
}

/// A node's classifier: the head, the head file and the MiniLM folder.
#[derive(Clone, Debug)]
pub struct Classifier {
    /// The validated head.
    pub head: Arc<RelevanceHead>,
    /// Its file.
    pub path: PathBuf,
    /// The MiniLM folder whose embeddings it scores.
    pub model_dir: PathBuf,
}

fn head_path(p: &MetadataFilterParams, base: &Path) -> Option<PathBuf> {
    crate::onnx::model_path(p.classifier.as_deref(), base, None)
}

/// The classifier a node's params describe (`None` without `classifier`): the head loaded and
/// validated, MiniLM found and of the head's width. Errors name the file and the fix.
pub fn load_classifier(p: &MetadataFilterParams, base: &Path) -> Result<Option<Classifier>, String> {
    let Some(path) = head_path(p, base) else { return Ok(None) };
    let head = RelevanceHead::load(&path)?;
    let mut issues = Vec::new();
    let model_dir =
        relevance::check_minilm(p.model_dir.as_deref(), base, "model_dir", &mut issues).ok_or_else(|| {
            issues.iter().map(|i| format!("{} ({})", i.message, i.fix.clone().unwrap_or_default())).collect::<String>()
        })?;
    head.check_dim(&path, relevance::minilm_width(&model_dir)?, &model_dir)?;
    Ok(Some(Classifier { head: Arc::new(head), path, model_dir }))
}

/// A text to embed: the pool item of the classifier, memoised by the text alone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TextJob(pub String);

/// The join key of a text (blake3, hex).
fn text_key(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

impl PoolItem for TextJob {
    fn item_id(&self) -> String {
        format!("text:{}", &text_key(&self.0)[..16])
    }
    fn describe(&self) -> String {
        let head: String = self.0.chars().take(80).collect();
        if head.len() < self.0.len() { format!("{head}…") } else { head }
    }
    fn memo_input(&self) -> Vec<u8> {
        self.0.as_bytes().to_vec()
    }
    fn route(&self) -> u64 {
        route_hash(&text_key(&self.0))
    }
}

/// Metadata key of an embedding (little-endian f32, base64) in the pool's stub records.
const EMBEDDING: &str = "embedding";

fn encode_embedding(e: &[f32]) -> String {
    let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_embedding(s: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    (bytes.len() % 4 == 0)
        .then(|| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Embed one text (a pool job): a stub Video keyed by [`text_key`] carrying the embedding.
fn embed_job(job: &TextJob, model_dir: &Path, dim: usize) -> Result<Vec<Record>, ItemError> {
    let model = relevance::shared_minilm(model_dir).map_err(ItemError::invalid)?;
    let e = relevance::embed(&model, &[job.0.as_str()]).map_err(ItemError::invalid)?;
    let e = e.into_iter().next().unwrap_or_default();
    if e.len() != dim {
        return Err(ItemError::invalid(format!("MiniLM gave {} values, the classifier expects {dim}", e.len())));
    }
    let stub = Video {
        source_id: text_key(&job.0),
        uri: String::new(),
        size_bytes: 0,
        probe: None,
        metadata: BTreeMap::from([(EMBEDDING.to_string(), encode_embedding(&e))]),
    };
    Ok(vec![Record::Video(stub)])
}

/// Decide a video the dictionary kept from its medical probability: (keep, the video with
/// metadata `medical_probability`, and rejected_by/reason when dropped).
pub fn score(mut v: Video, probability: f64, threshold: f64, node: &str, head_name: &str) -> (bool, Video) {
    v.metadata.insert("medical_probability".into(), format!("{probability:.4}"));
    let keep = probability >= threshold;
    if !keep {
        v.metadata.insert(REJECTED_BY.into(), node.to_string());
        v.metadata.insert(
            REASON.into(),
            format!("medical probability {probability:.3} < classifier_threshold {threshold} ({head_name})"),
        );
    }
    (keep, v)
}

impl TypedOperator for CurateMetadataFilter {
    type Params = MetadataFilterParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.metadata_filter",
            summary: "Keep videos whose title, description or tags name medical terms (built-in dictionary), or from whitelisted channels; optionally scored by an embedding classifier",
            doc: "Step 1, dictionary: matches a medical keyword dictionary against the metadata fields in `fields` \
                  (default title, description, tags): whole words, case-insensitive, plural-insensitive on the last \
                  word of a term (artery/arteries, vertebra/vertebrae, diagnosis/diagnoses), British spellings equal \
                  to American (haemorrhage, oesophagus, tumour), hyphens equal to spaces, longest term first. The \
                  built-in dictionary (`builtin:medical`, about a thousand terms: specialties, care settings, \
                  instruments, imaging, procedures, anatomy, conditions, drugs; words common outside medicine appear \
                  only in phrases) can be extended with `keywords_file` or replaced (`keywords = \"none\"`). A video \
                  passes when at least min_matches distinct terms match (min_matches = 0: every video passes), or \
                  when its `channel` is whitelisted (`channels`, `channels_file`: the paper's channel recollection). \
                  Every video gets metadata medical_matches (count) and medical_terms (the matched terms, \
                  comma-separated), which clips inherit and curation filters turn into score medical_matches and \
                  label medical_terms. Step 2, classifier (only with `classifier` = a head file written by `medgen \
                  classifier train`, relative to the graph file): every video that passed step 1 is embedded with \
                  MiniLM (`model_dir`, default the fetched .cache/models/minilm; the head's text_fields joined by \
                  \". \") and scored by the head's logistic regression; it gets metadata medical_probability and is \
                  kept iff that is >= classifier_threshold (default: the head's threshold). Embeddings are computed \
                  off the worker thread and memoised by text and model, so a new head, threshold or dictionary \
                  re-decides without re-embedding. Dropped videos go to `rejected` with rejected_by and reason; \
                  videos whose embedding failed go to `failures`.",
            version: 2,
            inputs: &[InPort { name: "in", kinds: &[Kind::Video], required: true, doc: "videos with metadata" }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Video), doc: "medical videos, annotated" },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Video),
                    doc: "the others, with rejected_by and reason",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &MetadataFilterParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.keywords != BUILTIN && p.keywords != "none" {
            v.push(ParamIssue::error(
                "keywords",
                format!("unknown dictionary `{}`", p.keywords),
                Some(format!("keywords = \"{BUILTIN}\" or \"none\"; add your own terms with keywords_file")),
            ));
        }
        for (key, file) in [("keywords_file", &p.keywords_file), ("channels_file", &p.channels_file)] {
            if let Some(f) = file {
                match read_list(&ctx.base_dir, f) {
                    Ok(list) if list.is_empty() => v.push(ParamIssue::warning(key, format!("{f} lists nothing"), None)),
                    Ok(_) => {}
                    Err(e) => {
                        v.push(ParamIssue::error(key, e, Some("fix the path (relative to the graph file)".into())))
                    }
                }
            }
        }
        if p.keywords == "none"
            && p.keywords_file.is_none()
            && p.channels.is_empty()
            && p.channels_file.is_none()
            && p.min_matches > 0
        {
            v.push(ParamIssue::error(
                "keywords",
                "the dictionary is empty and no channel is whitelisted: every video would be dropped",
                Some(format!("use keywords = \"{BUILTIN}\", or give keywords_file or channels")),
            ));
        }
        if p.fields.is_empty() {
            v.push(ParamIssue::error(
                "fields",
                "no metadata fields to search",
                Some("fields = [\"title\", \"description\", \"tags\"]".into()),
            ));
        }
        check_classifier(p, ctx, &mut v);
        check_threads(p.threads, &mut v);
        v
    }

    /// Only the embeddings are memoised; build adds the model digest and the head's text fields.
    /// The dictionary, the head's weights and the thresholds only change decisions.
    fn fingerprint(&self, p: &MetadataFilterParams) -> serde_json::Value {
        super::fingerprint_without(
            p,
            &[
                "keywords",
                "keywords_file",
                "channels",
                "channels_file",
                "fields",
                "min_matches",
                "classifier",
                "classifier_threshold",
                "model_dir",
                "threads",
            ],
        )
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &MetadataFilterParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let (dict, channels) =
            load(p, &ctx.base_dir).map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?;
        let classifier = load_classifier(p, &ctx.base_dir)
            .map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?;
        let (fields, min, node) = (p.fields.clone(), p.min_matches, ctx.node.clone());
        let input = count_in(ctx, input);
        let decided = input.flat_map(move |r| match r {
            Record::Video(v) => Some(classify(v, &dict, &channels, &fields, min, &node)),
            _ => None,
        });
        let passed = decided.clone().filter(|(k, _)| *k).map(|(_, v)| v);
        let dict_rejected = decided.filter(|(k, _)| !*k).map(|(_, v)| Record::Video(v));
        let Some(cls) = classifier else {
            let kept = count_out(ctx, passed.map(Record::Video));
            return Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, dict_rejected));
        };
        // The memo key of an embedding: the text (the item), the model weights, the fields.
        let digest =
            crate::onnx::file_digest(&cls.model_dir.join("model.safetensors")).map_err(|e| BuildError::Invalid {
                node: ctx.node.clone(),
                message: format!("{}: {e}", cls.model_dir.join("model.safetensors").display()),
            })?;
        let mut fp = TypedOperator::fingerprint(self, p);
        fp["model"] = serde_json::json!(digest);
        fp["text_fields"] = serde_json::json!(cls.head.text_fields);
        ctx.params_fingerprint = fp.to_string();

        let text_fields = cls.head.text_fields.clone();
        let keyed = passed.map(move |v| {
            let text = relevance::metadata_text(&text_fields, |f| v.metadata.get(f).map(String::as_str));
            (text, v)
        });
        let jobs = keyed.clone().map(|(t, _)| TextJob(t)).distinct();
        let (dir, dim) = (cls.model_dir.clone(), cls.head.dim);
        let embedded = pool_map(ctx, jobs, PoolConfig { threads: p.threads, memoise: true }, move |job, _| {
            embed_job(job, &dir, dim)
        });
        let (ok, failed) = split_failures(embedded);
        let by_key = ok.flat_map(|r| match r {
            Record::Video(mut v) => v.metadata.remove(EMBEDDING).map(|e| (v.source_id, e)),
            _ => None,
        });
        let threshold = p.classifier_threshold.unwrap_or(cls.head.threshold);
        let head_name = cls.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let (head, node) = (cls.head.clone(), ctx.node.clone());
        let scored = keyed.map(|(t, v)| (text_key(&t), v)).join_map(by_key, move |_, v, e| {
            let p = decode_embedding(e).map(|e| head.probability(&e)).unwrap_or(0.0);
            score(v.clone(), p, threshold, &node, &head_name)
        });
        let kept = count_out(ctx, scored.clone().filter(|(k, _)| *k).map(|(_, v)| Record::Video(v)));
        let rejected = dict_rejected.concat(scored.filter(|(k, _)| !*k).map(|(_, v)| Record::Video(v)));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

/// Issues of the classifier params: head file, MiniLM, their widths, the threshold.
fn check_classifier(p: &MetadataFilterParams, ctx: &CheckCtx, v: &mut Vec<ParamIssue>) {
    let Some(path) = head_path(p, &ctx.base_dir) else {
        for (key, set) in
            [("classifier_threshold", p.classifier_threshold.is_some()), ("model_dir", p.model_dir.is_some())]
        {
            if set {
                v.push(ParamIssue::warning(
                    key,
                    "has no effect without `classifier`",
                    Some("set classifier = \"head.json\" (see `medgen classifier train --help`)".into()),
                ));
            }
        }
        return;
    };
    let head = RelevanceHead::load(&path).map_err(|e| v.push(ParamIssue::error("classifier", e, None))).ok();
    let dir = relevance::check_minilm(p.model_dir.as_deref(), &ctx.base_dir, "model_dir", v);
    if let (Some(head), Some(dir)) = (head, dir) {
        match relevance::minilm_width(&dir) {
            Ok(w) => {
                if let Err(e) = head.check_dim(&path, w, &dir) {
                    v.push(ParamIssue::error("classifier", e, None));
                }
            }
            Err(e) => v.push(ParamIssue::error("model_dir", e, None)),
        }
    }
    if let Some(t) = p.classifier_threshold {
        check_range(v, "classifier_threshold", t, 0.0, 1.0, "0.5");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn video(meta: &[(&str, &str)]) -> Video {
        Video {
            source_id: "s".into(),
            uri: "/v.mp4".into(),
            size_bytes: 1,
            probe: None,
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }
    }

    fn params() -> MetadataFilterParams {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn keeps_medical_videos_and_explains_drops() {
        let (dict, ch) = load(&params(), Path::new(".")).unwrap();
        let f = d_fields();
        let (keep, v) = classify(
            video(&[
                ("title", "Laparoscopic Cholecystectomy"),
                ("description", "Gallbladder removal, step by step"),
                ("tags", "surgery"),
            ]),
            &dict,
            &ch,
            &f,
            2,
            "meta",
        );
        assert!(keep);
        assert_eq!(v.metadata["medical_matches"], "4");
        assert_eq!(v.metadata["medical_terms"], "cholecystectomy, gallbladder, laparoscopic, surgery");
        let (keep, v) =
            classify(video(&[("title", "My holiday in Rome"), ("channel", "Travels")]), &dict, &ch, &f, 1, "meta");
        assert!(!keep);
        assert_eq!(v.metadata["rejected_by"], "meta");
        assert_eq!(v.metadata["reason"], "0 medical terms in title, description, tags (min_matches = 1)");
        // Fields outside `fields` are not searched.
        let (keep, _) = classify(video(&[("transcript", "biopsy")]), &dict, &ch, &f, 1, "meta");
        assert!(!keep);
    }

    #[test]
    fn user_terms_and_channel_whitelist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("terms.txt"), "# ours\nzygomatic arch\n").unwrap();
        std::fs::write(dir.path().join("channels.txt"), "Teaching Hospital TV\n").unwrap();
        let mut p = params();
        p.keywords = "none".into();
        p.keywords_file = Some("terms.txt".into());
        p.channels = vec!["  Dr Smith  ".into()];
        p.channels_file = Some("channels.txt".into());
        let (dict, ch) = load(&p, dir.path()).unwrap();
        assert_eq!(dict.len(), 1);
        let f = d_fields();
        assert!(classify(video(&[("title", "Zygomatic arches explained")]), &dict, &ch, &f, 1, "m").0);
        assert!(
            !classify(video(&[("title", "Laparoscopy")]), &dict, &ch, &f, 1, "m").0,
            "no builtin terms with keywords = none"
        );
        let (keep, v) =
            classify(video(&[("title", "vlog"), ("channel", "teaching hospital tv")]), &dict, &ch, &f, 1, "m");
        assert!(keep);
        assert_eq!(v.metadata["channel_whitelisted"], "true");
        assert!(classify(video(&[("channel", "DR SMITH")]), &dict, &ch, &f, 1, "m").0);
        // check(): bad dictionary names, missing files, an empty filter
        let ctx = CheckCtx { base_dir: dir.path().to_path_buf(), node: "m".into() };
        assert!(TypedOperator::check(&CurateMetadataFilter, &p, &ctx).is_empty());
        let mut bad = params();
        bad.keywords = "builtin:medicine".into();
        bad.keywords_file = Some("nope.txt".into());
        let issues = TypedOperator::check(&CurateMetadataFilter, &bad, &ctx);
        assert_eq!(issues.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(), vec!["keywords", "keywords_file"]);
        let mut empty = params();
        empty.keywords = "none".into();
        assert!(
            TypedOperator::check(&CurateMetadataFilter, &empty, &ctx)[0]
                .message
                .contains("every video would be dropped")
        );
    }

    #[test]
    fn classifier_decisions_embeddings_and_fingerprints() {
        let (keep, v) = score(video(&[("title", "t")]), 0.81234, 0.5, "meta", "head.json");
        assert!(keep);
        assert_eq!(v.metadata["medical_probability"], "0.8123");
        assert!(!v.metadata.contains_key("rejected_by"));
        let (keep, v) = score(video(&[("title", "t")]), 0.2, 0.5, "meta", "head.json");
        assert!(!keep);
        assert_eq!(v.metadata["reason"], "medical probability 0.200 < classifier_threshold 0.5 (head.json)");
        let e = vec![0.25f32, -1.5, 3.0e-7];
        assert_eq!(decode_embedding(&encode_embedding(&e)), Some(e));
        assert_eq!(decode_embedding("AAA"), None);
        // Thresholds, the head file and the dictionary stay out of the memo key.
        let a = TypedOperator::fingerprint(&CurateMetadataFilter, &params());
        let mut b = params();
        b.classifier = Some("other.json".into());
        b.classifier_threshold = Some(0.9);
        b.min_matches = 0;
        b.keywords = "none".into();
        assert_eq!(a, TypedOperator::fingerprint(&CurateMetadataFilter, &b));
        // Jobs are memoised by their text only.
        assert_eq!(TextJob("a b".into()).memo_input(), b"a b".to_vec());
        assert_ne!(TextJob("a b".into()).item_id(), TextJob("a c".into()).item_id());
    }

    fn head(dim: usize) -> RelevanceHead {
        RelevanceHead {
            format: relevance::HEAD_FORMAT.into(),
            version: relevance::HEAD_VERSION,
            embedder: relevance::minilm_embedder(dim),
            dim,
            text_fields: d_fields(),
            weights: vec![0.1; dim],
            bias: 0.0,
            threshold: 0.5,
            trained_on: Default::default(),
            metrics: serde_json::Value::Null,
        }
    }

    #[test]
    fn check_explains_classifier_problems() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in MiniLM folder: check reads only config.json and looks for the two files.
        let model = dir.path().join("minilm");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{\"hidden_size\": 384, \"num_attention_heads\": 12}").unwrap();
        std::fs::write(model.join("model.safetensors"), "").unwrap();
        std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
        head(384).save(&dir.path().join("good.json")).unwrap();
        head(8).save(&dir.path().join("small.json")).unwrap();
        std::fs::write(dir.path().join("broken.json"), "{\"weights\": [1]}").unwrap();
        let ctx = CheckCtx { base_dir: dir.path().to_path_buf(), node: "m".into() };
        let issues = |classifier: &str, model_dir: &str, threshold: Option<f64>| {
            let mut p = params();
            p.classifier = Some(classifier.into());
            p.model_dir = Some(model_dir.into());
            p.classifier_threshold = threshold;
            TypedOperator::check(&CurateMetadataFilter, &p, &ctx)
        };
        assert!(issues("good.json", "minilm", Some(0.3)).is_empty());
        let v = issues("small.json", "minilm", None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].path, "classifier");
        assert!(
            v[0].message.contains("small.json")
                && v[0].message.contains("8-dimensional")
                && v[0].message.contains("gives 384")
                && v[0].message.contains("medgen classifier train --model-dir"),
            "{}",
            v[0].message
        );
        let v = issues("broken.json", "minilm", Some(1.5));
        assert_eq!(v.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(), vec!["classifier", "classifier_threshold"]);
        assert!(v[0].message.contains("broken.json") && v[0].message.contains("medgen classifier train"), "{v:?}");
        let v = issues("missing.json", "nowhere", None);
        assert_eq!(v.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(), vec!["classifier", "model_dir"]);
        assert!(v[1].fix.as_deref().unwrap_or("").contains("fetch-models.sh"), "{v:?}");
        // Build-time loading says the same.
        let mut p = params();
        p.classifier = Some("small.json".into());
        p.model_dir = Some("minilm".into());
        assert!(load_classifier(&p, dir.path()).unwrap_err().contains("8-dimensional"));
        p.classifier = Some("good.json".into());
        assert_eq!(load_classifier(&p, dir.path()).unwrap().unwrap().head.dim, 384);
        // Classifier-only params without a classifier are warnings.
        let mut p = params();
        p.classifier_threshold = Some(0.7);
        let v = TypedOperator::check(&CurateMetadataFilter, &p, &ctx);
        assert!(v.len() == 1 && v[0].warning && v[0].path == "classifier_threshold", "{v:?}");
    }
}
