//! Wan2.1 DiT checkpoint key names: format detection and the original ↔ diffusers mapping
//! (WAN_SPEC §2.1).
//!
//! Three layouts are recognised:
//!
//! * **Diffusers** (`*-Diffusers/transformer`, and what FastVideo saves): `blocks.0.attn1.to_q.weight`, …
//! * **Original** Wan2.1 (`Wan-AI/Wan2.1-T2V-*`): `blocks.0.self_attn.q.weight`, …
//! * **ComfyUI**: the original names behind a `model.diffusion_model.` prefix.
//!
//! The mapping is written as explicit per-component rules rather than substring replacement.
//! Notable rules: original `norm3` (the affine cross-attention LayerNorm) is diffusers `norm2` and
//! original `norm2` is diffusers `norm3`; top-level `head.modulation` is diffusers
//! `scale_shift_table` while per-block `modulation` is `blocks.i.scale_shift_table`.
//! Image-to-video keys (`img_emb.*`, `k_img`, …) are not mapped; they are reported as unmapped.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Prefix of ComfyUI-style checkpoints.
pub const COMFY_PREFIX: &str = "model.diffusion_model.";

/// A DiT checkpoint's naming scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanDitFormat {
    /// diffusers `WanTransformer3DModel` names.
    Diffusers,
    /// Original Wan2.1 `WanModel` names.
    Original,
    /// Original names with the ComfyUI `model.diffusion_model.` prefix.
    ComfyUi,
}

/// Top-level rules (original, diffusers). Entries ending in `.` match a prefix followed by the
/// parameter name (`weight`, `bias`); the others match exactly.
const TOP: &[(&str, &str)] = &[
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
];

/// Per-block rules (original, diffusers), relative to `blocks.{i}.`.
const BLOCK: &[(&str, &str)] = &[
    ("modulation", "scale_shift_table"),
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm1.", "norm1."),
    ("norm2.", "norm3."),
    ("norm3.", "norm2."),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
];

/// Applies a rule table in direction `from → to`.
fn apply(rules: &[(&str, &str)], key: &str, forward: bool) -> Option<String> {
    for &(o, d) in rules {
        let (from, to) = if forward { (o, d) } else { (d, o) };
        if from.ends_with('.') {
            if let Some(rest) = key.strip_prefix(from)
                && !rest.is_empty()
                && !rest.contains('.')
            {
                return Some(format!("{to}{rest}"));
            }
        } else if key == from {
            return Some(to.to_string());
        }
    }
    None
}

fn map_key(key: &str, forward: bool) -> Option<String> {
    if let Some(rest) = key.strip_prefix("blocks.") {
        let (idx, tail) = rest.split_once('.')?;
        if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return apply(BLOCK, tail, forward).map(|t| format!("blocks.{idx}.{t}"));
    }
    apply(TOP, key, forward)
}

/// Original (or ComfyUI-prefixed) Wan2.1 DiT name → diffusers name; `None` for keys outside the
/// T2V model (e.g. I2V `img_emb.*`).
pub fn original_to_diffusers(key: &str) -> Option<String> {
    map_key(key.strip_prefix(COMFY_PREFIX).unwrap_or(key), true)
}

/// diffusers name → original Wan2.1 name; `None` for unknown keys.
pub fn diffusers_to_original(key: &str) -> Option<String> {
    map_key(key, false)
}

/// Detects the naming scheme by probing for the first block's self-attention query weight.
pub fn detect_format<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<WanDitFormat> {
    let (mut orig, mut diff, mut comfy) = (false, false, false);
    for k in keys {
        match k {
            "blocks.0.self_attn.q.weight" => orig = true,
            "blocks.0.attn1.to_q.weight" => diff = true,
            "model.diffusion_model.blocks.0.self_attn.q.weight" => comfy = true,
            _ => {}
        }
    }
    match (orig, diff, comfy) {
        (true, false, false) => Ok(WanDitFormat::Original),
        (false, true, false) => Ok(WanDitFormat::Diffusers),
        (false, false, true) => Ok(WanDitFormat::ComfyUi),
        (false, false, false) => Err(Error::UnknownFormat(
            "no blocks.0.self_attn.q.weight, blocks.0.attn1.to_q.weight or \
             model.diffusion_model.blocks.0.self_attn.q.weight: not a Wan DiT checkpoint"
                .into(),
        )),
        _ => Err(Error::UnknownFormat("keys of several Wan DiT naming schemes in one checkpoint".into())),
    }
}

/// A checkpoint's keys resolved to diffusers names.
#[derive(Debug, Clone)]
pub struct WanKeyMap {
    /// The detected layout.
    pub format: WanDitFormat,
    /// diffusers name → name stored in the checkpoint.
    pub to_stored: BTreeMap<String, String>,
    /// Stored keys with no T2V mapping (I2V extras, unknown keys), sorted.
    pub unmapped: Vec<String>,
}

impl WanKeyMap {
    /// Resolves every key of a checkpoint. Two stored keys mapping to one diffusers name is an
    /// error.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str> + Clone) -> Result<WanKeyMap> {
        let format = detect_format(keys.clone())?;
        let mut to_stored = BTreeMap::new();
        let mut unmapped = Vec::new();
        for k in keys {
            let mapped = match format {
                WanDitFormat::Diffusers => diffusers_to_original(k).map(|_| k.to_string()),
                WanDitFormat::Original => original_to_diffusers(k),
                WanDitFormat::ComfyUi => k.strip_prefix(COMFY_PREFIX).and_then(original_to_diffusers),
            };
            match mapped {
                Some(d) => {
                    if let Some(prev) = to_stored.insert(d.clone(), k.to_string()) {
                        return Err(Error::UnknownFormat(format!("keys {prev:?} and {k:?} both map to {d:?}")));
                    }
                }
                None => unmapped.push(k.to_string()),
            }
        }
        unmapped.sort();
        Ok(WanKeyMap { format, to_stored, unmapped })
    }

    /// The stored key for a diffusers name, or [`Error::MissingKey`] (naming the diffusers key).
    pub fn stored(&self, diffusers_name: &str) -> Result<&str> {
        self.to_stored
            .get(diffusers_name)
            .map(String::as_str)
            .ok_or_else(|| Error::MissingKey(diffusers_name.to_string()))
    }
}
