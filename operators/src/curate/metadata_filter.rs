//! `curate.metadata_filter`: keep the videos whose metadata is medical (paper stages 2–3).
//!
//! Only the paper's first step is implemented here: a medical keyword dictionary over the title,
//! description and tags, plus a channel whitelist for channel recollection. The paper's second
//! step, a text classifier on sentence embeddings, needs the MiniLM network of the kernels crate
//! and is not part of this operator yet.

use super::keywords::{Dictionary, parse_list};
use super::{REASON, REJECTED_BY, REJECTED_PORT, count_in, count_out, take_input};
use crate::api::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

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
    /// Keep videos with at least this many distinct dictionary terms in those fields.
    #[serde(default = "d_min_matches")]
    pub min_matches: u32,
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

impl TypedOperator for CurateMetadataFilter {
    type Params = MetadataFilterParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.metadata_filter",
            summary: "Keep videos whose title, description or tags name medical terms (built-in dictionary), or from whitelisted channels",
            doc: "Matches a medical keyword dictionary against the metadata fields in `fields` (default title, \
                  description, tags): whole words, case-insensitive, plural-insensitive on the last word of a term \
                  (artery/arteries, vertebra/vertebrae, diagnosis/diagnoses), British spellings equal to American \
                  (haemorrhage, oesophagus, tumour), hyphens equal to spaces, longest term first. The built-in \
                  dictionary (`builtin:medical`, about a thousand terms: specialties, care settings, instruments, \
                  imaging, procedures, anatomy, conditions, drugs; words common outside medicine appear only in \
                  phrases) can be extended with `keywords_file` or replaced (`keywords = \"none\"`). A video is \
                  kept when at least min_matches distinct terms match, or when its `channel` is whitelisted \
                  (`channels`, `channels_file`: the paper's channel recollection). Every video gets metadata \
                  medical_matches (count) and medical_terms (the matched terms, comma-separated), which clips \
                  inherit and curation filters turn into score medical_matches and label medical_terms; \
                  dropped videos go to `rejected` with rejected_by and reason. Only the dictionary stage of the paper is \
                  implemented: the embedding classifier that follows it there needs the MiniLM network from the \
                  kernels crate and is not available yet.",
            version: 1,
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
        if p.keywords == "none" && p.keywords_file.is_none() && p.channels.is_empty() && p.channels_file.is_none() {
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
        v
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
        let (fields, min, node) = (p.fields.clone(), p.min_matches, ctx.node.clone());
        let input = count_in(ctx, input);
        let decided = input.flat_map(move |r| match r {
            Record::Video(v) => Some(classify(v, &dict, &channels, &fields, min, &node)),
            _ => None,
        });
        let kept = count_out(ctx, decided.clone().filter(|(k, _)| *k).map(|(_, v)| Record::Video(v)));
        let rejected = decided.filter(|(k, _)| !*k).map(|(_, v)| Record::Video(v));
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected))
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
        MetadataFilterParams {
            keywords: BUILTIN.into(),
            keywords_file: None,
            channels: vec![],
            channels_file: None,
            fields: d_fields(),
            min_matches: 1,
        }
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
}
