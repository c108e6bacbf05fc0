//! `latent.encode_text`: captions (or prompts) → text-context blobs for training and sampling.

use super::text::{MINILM_TOKENS, TextEncoder, TextEncoderKind, resolve_dir};
use super::{CONTEXT_TENSOR, put_tensor};
use crate::api::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub struct LatentEncodeText;

/// Which caption text is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptionField {
    /// The detailed caption (what MedGen trains on).
    Detailed,
    /// The one-sentence caption.
    Brief,
}

fn d_kind() -> TextEncoderKind {
    TextEncoderKind::Minilm
}
fn d_tokens() -> usize {
    MINILM_TOKENS
}
fn d_field() -> CaptionField {
    CaptionField::Detailed
}
fn d_threads() -> usize {
    1
}

/// Params of `latent.encode_text`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodeTextParams {
    /// `minilm` (embedded default) or `umt5` (Wan2.1's encoder; needs `text_model`).
    #[serde(default = "d_kind")]
    pub text_encoder: TextEncoderKind,
    /// Folder of the encoder (relative to the graph file). Default for MiniLM: the one
    /// `scripts/fetch-models.sh` fetched.
    #[serde(default)]
    pub text_model: Option<String>,
    /// Context rows for MiniLM (`[CLS] … [SEP]`, padded with zero rows). umT5 always uses 512.
    #[serde(default = "d_tokens")]
    pub text_tokens: usize,
    /// Which caption to encode.
    #[serde(default = "d_field")]
    pub field: CaptionField,
    /// Pool threads per worker.
    #[serde(default = "d_threads")]
    pub threads: usize,
}

/// The text of a caption or prompt record, and the id its context is keyed by.
pub fn text_of(rec: &Record, field: CaptionField) -> Option<(String, String)> {
    match rec {
        Record::Caption(c) => Some((
            c.clip_id.clone(),
            match field {
                CaptionField::Detailed if !c.detailed.trim().is_empty() => c.detailed.clone(),
                _ => c.brief.clone(),
            },
        )),
        Record::Prompt(p) => Some((p.prompt_id.clone(), p.text.clone())),
        _ => None,
    }
}

impl TypedOperator for LatentEncodeText {
    type Params = EncodeTextParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "latent.encode_text",
            summary: "Encode captions or prompts into the text contexts the DiT is conditioned on (MiniLM or umT5)",
            doc: "Each caption (its `field`, default the detailed caption) or prompt becomes a context tensor \
                  `[rows, width]` stored as a safetensors blob (tensor `context`), memoised per text: a Latent record \
                  with `text_blob` set, `latent_blob` empty, `shape` = [rows, width] and `codec` = `text:<encoder id>` \
                  (e.g. `text:minilm-384x32`). The embedded default is all-MiniLM-L6-v2's token states (fetched by \
                  scripts/fetch-models.sh), zero rows past the text; `text_encoder = \"umt5\"` with `text_model` = \
                  Wan2.1's umT5-XXL folder gives the exact Wan context [512, 4096]. train.flow_matching joins these \
                  with the video latents by clip id.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Caption, Kind::Prompt],
                required: true,
                doc: "captions or prompts",
            }],
            outputs: &[OutPort {
                name: OUT_PORT,
                kind: OutKind::Fixed(Kind::Latent),
                doc: "one text Latent per input (text_blob set)",
            }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &EncodeTextParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if let Err(e) = resolve_dir(p.text_encoder, p.text_model.as_deref(), &ctx.base_dir) {
            v.push(ParamIssue::error("text_model", e, Some("see `medgen ops latent.encode_text`".into())));
        }
        if !(3..=512).contains(&p.text_tokens) {
            v.push(ParamIssue::error("text_tokens", "between 3 and 512", Some("text_tokens = 32".into())));
        }
        crate::curate::check_threads(p.threads, &mut v);
        v
    }

    fn fingerprint(&self, p: &EncodeTextParams) -> serde_json::Value {
        serde_json::json!({"enc": p.text_encoder, "model": p.text_model, "tokens": p.text_tokens, "field": p.field})
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &EncodeTextParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = crate::api::take_input(ctx, &mut inputs)?;
        let dir = resolve_dir(p.text_encoder, p.text_model.as_deref(), &ctx.base_dir)
            .map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?;
        let (kind, tokens, field) = (p.text_encoder, p.text_tokens, p.field);
        let services = ctx.services.clone();
        let all = pool_map(ctx, input, PoolConfig { threads: p.threads, memoise: true }, move |rec: &Record, _ictx| {
            let (id, text) = text_of(rec, field).ok_or_else(|| {
                ItemError::new(ErrorClass::Unsupported, format!("cannot encode the text of a {} record", rec.kind()))
            })?;
            let enc = TextEncoder::load(kind, &dir, tokens).map_err(|e| ItemError::new(ErrorClass::Backend, e))?;
            let ctxt = enc.encode(&[text.as_str()]).map_err(|e| ItemError::new(ErrorClass::Internal, e))?;
            let ctxt = ctxt.squeeze(0).map_err(|e| ItemError::new(ErrorClass::Internal, e.to_string()))?;
            let codec = format!("text:{}", enc.id());
            let key = put_tensor(services.as_ref(), CONTEXT_TENSOR, &ctxt, &[("encoder", &codec)])?;
            Ok(vec![Record::Latent(Latent {
                clip_id: id,
                latent_blob: String::new(),
                shape: ctxt.shape().iter().map(|&d| d as u64).collect(),
                codec,
                text_blob: Some(key),
            })])
        });
        let (ok, failed) = split_failures(all);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}
