//! `source.prompts`: the prompts a sampler renders, from the graph file or a file.

use crate::api::*;
use differential_dataflow::AsCollection;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;
use timely::dataflow::operators::generic::operator::source;

pub struct SourcePrompts;

/// Params of `source.prompts`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptsParams {
    /// Prompts written in the graph file (ids `p0`, `p1`, …).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// A file of prompts: `.jsonl` rows `{"id": .., "prompt": ..}` (`text` also accepted; id
    /// optional), otherwise one prompt per line (`#` comments and blank lines skipped).
    #[serde(default)]
    pub file: Option<String>,
    /// Take at most this many prompts (0: all).
    #[serde(default)]
    pub limit: usize,
}

/// Reads prompts: (id, text). Errors name the file and line.
pub fn read_prompts(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read prompts file {}: {e}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (!jsonl && line.starts_with('#')) {
            continue;
        }
        if jsonl {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{}:{}: invalid JSON: {e}", path.display(), i + 1))?;
            let p = v
                .get("prompt")
                .or_else(|| v.get("text"))
                .and_then(|p| p.as_str())
                .ok_or_else(|| format!("{}:{}: a row needs a string `prompt`", path.display(), i + 1))?;
            let id = match v.get("id") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => format!("p{}", out.len()),
            };
            out.push((id, p.to_string()));
        } else {
            out.push((format!("p{}", out.len()), line.to_string()));
        }
    }
    Ok(out)
}

fn gather(p: &PromptsParams, base: &Path) -> Result<Vec<(String, String)>, String> {
    let mut all: Vec<(String, String)> =
        p.prompts.iter().enumerate().map(|(i, t)| (format!("p{i}"), t.clone())).collect();
    if let Some(f) = &p.file {
        let path = resolve_path(base, f);
        let offset = all.len();
        all.extend(read_prompts(&path)?.into_iter().map(|(id, t)| {
            // Ids from plain-text files continue after the inline prompts.
            match id.strip_prefix('p').and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if !path.extension().is_some_and(|e| e == "jsonl" || e == "json") => {
                    (format!("p{}", n + offset), t)
                }
                _ => (id, t),
            }
        }));
    }
    if p.limit > 0 {
        all.truncate(p.limit);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (id, _) in &all {
        if !seen.insert(id) {
            return Err(format!("prompt id {id:?} appears twice; ids must be unique"));
        }
    }
    Ok(all)
}

impl TypedOperator for SourcePrompts {
    type Params = PromptsParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "source.prompts",
            summary: "Prompts for sampling, from the graph file (`prompts`) and/or a text or JSONL file",
            doc: "Emits one Prompt record per prompt in one epoch: inline `prompts` first (ids p0, p1, …), then \
                  `file` (plain text: one prompt per line, ids continuing the count; JSONL: rows with `prompt` or \
                  `text` and an optional `id`). E.g. the paper's 200 evaluation prompts: \
                  `file = \"../shared/data/eval_prompts_200.txt\"`.",
            version: 1,
            inputs: &[],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Prompt), doc: "the prompts" }],
            is_source: true,
            is_sink: false,
        }
    }

    fn check(&self, p: &PromptsParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.prompts.is_empty() && p.file.is_none() {
            v.push(ParamIssue::error(
                "",
                "no prompts: give `prompts = [...]` or `file`",
                Some("prompts = [\"An echocardiogram of the left ventricle\"]".into()),
            ));
        }
        match gather(p, &ctx.base_dir) {
            Ok(all) if all.is_empty() && p.file.is_some() => {
                v.push(ParamIssue::error("file", "the prompts file holds no prompts", None))
            }
            Ok(all) => {
                if let Some((id, _)) = all.iter().find(|(_, t)| t.trim().is_empty()) {
                    v.push(ParamIssue::error("prompts", format!("prompt {id} is empty"), None));
                }
            }
            Err(e) => v.push(ParamIssue::error(if p.file.is_some() { "file" } else { "prompts" }, e, None)),
        }
        v
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &PromptsParams,
        _inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let prompts =
            gather(p, &ctx.base_dir).map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?;
        let emit = ctx.worker_index() == 0;
        let epoch = ctx.base_epoch;
        let stats = ctx.stats.clone();
        let coll = source(ctx.scope, &format!("{}:prompts", ctx.node), move |cap, _info| {
            let mut cap = Some(cap);
            let mut prompts = Some(prompts);
            move |output| {
                if let Some(mut c) = cap.take() {
                    c.downgrade(&epoch);
                    if emit {
                        let list = prompts.take().unwrap_or_default();
                        NodeStats::add(&stats.items_out, list.len() as u64);
                        let mut session = output.session(&c);
                        for (prompt_id, text) in list {
                            session.give((Record::Prompt(Prompt { prompt_id, text }), epoch, 1isize));
                        }
                    }
                }
            }
        })
        .as_collection();
        Ok(Outputs::default().with(OUT_PORT, coll))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("p.txt");
        std::fs::write(&t, "# comment\nFirst prompt\n\nSecond prompt\n").unwrap();
        assert_eq!(
            read_prompts(&t).unwrap(),
            vec![("p0".into(), "First prompt".into()), ("p1".into(), "Second prompt".into())]
        );
        let j = dir.path().join("p.jsonl");
        std::fs::write(&j, "{\"id\": \"a\", \"prompt\": \"x\"}\n{\"text\": \"y\"}\n").unwrap();
        assert_eq!(read_prompts(&j).unwrap(), vec![("a".into(), "x".into()), ("p1".into(), "y".into())]);
        std::fs::write(&j, "{\"id\": \"a\"}\n").unwrap();
        assert!(read_prompts(&j).unwrap_err().contains(":1: a row needs a string `prompt`"));
        let p = PromptsParams { prompts: vec!["inline".into()], file: Some("p.txt".into()), limit: 0 };
        let all = gather(&p, dir.path()).unwrap();
        assert_eq!(all.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(), ["p0", "p1", "p2"]);
    }
}
