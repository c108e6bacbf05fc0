//! [`WanDitConfig`]: the hyper-parameters of the Wan2.1 DiT under the diffusers `config.json`
//! names (WAN_SPEC §1.1), with the diffusers class defaults, presets for the published models,
//! validation and the parameter count.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ops::rope::{ROPE_MAX_SEQ_LEN, Rope3d};

/// The one q/k normalisation the Wan2.1 DiT uses: RMSNorm over the full inner dim.
pub const QK_NORM_ACROSS_HEADS: &str = "rms_norm_across_heads";

/// Wan2.1 DiT hyper-parameters (diffusers `WanTransformer3DModel` names and defaults).
///
/// Unknown `config.json` keys (`_class_name`, `_diffusers_version`, …) are ignored. Only the
/// text-to-video model is supported: `image_dim`, `added_kv_proj_dim` and `pos_embed_seq_len`
/// (image conditioning) must be absent or `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WanDitConfig {
    /// Patch size `(t, h, w)` of the patch embedding; each ≥ 1.
    pub patch_size: [usize; 3],
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Width of one head (even; ≥ 6 so that every RoPE axis gets a channel pair).
    pub attention_head_dim: usize,
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out (`null` means `in_channels`, as in diffusers).
    pub out_channels: Option<usize>,
    /// Width of the text-encoder output (umT5-XXL: 4096).
    pub text_dim: usize,
    /// Width of the timestep sinusoid (even).
    pub freq_dim: usize,
    /// Hidden width of the feed-forward network.
    pub ffn_dim: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Whether the cross-attention input gets an affine LayerNorm (`blocks.i.norm2`).
    pub cross_attn_norm: bool,
    /// q/k normalisation. Diffusers ignores the value (its blocks always use an RMSNorm over
    /// all heads, `"rms_norm_across_heads"`), and so does this crate.
    pub qk_norm: Option<String>,
    /// Epsilon of every LayerNorm and RMSNorm.
    pub eps: f64,
    /// Image-embedding width (image-to-video only; unsupported).
    pub image_dim: Option<usize>,
    /// Added key/value projection width (image-to-video only; unsupported).
    pub added_kv_proj_dim: Option<usize>,
    /// RoPE positions per axis.
    pub rope_max_seq_len: usize,
    /// Image position-embedding length (FLF2V only; unsupported).
    pub pos_embed_seq_len: Option<usize>,
}

impl Default for WanDitConfig {
    /// The diffusers class defaults (which are the 14B model's).
    fn default() -> Self {
        WanDitConfig {
            patch_size: [1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some(QK_NORM_ACROSS_HEADS.to_string()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }
}

fn cfg_err(msg: impl Into<String>) -> Error {
    Error::Config { model: "wan_dit", msg: msg.into() }
}

impl WanDitConfig {
    /// Wan2.1 T2V 1.3B (1,418,996,800 parameters).
    pub fn wan_1_3b() -> Self {
        WanDitConfig { num_attention_heads: 12, ffn_dim: 8960, num_layers: 30, ..Default::default() }
    }

    /// Wan2.1 T2V 14B (14,288,491,584 parameters).
    pub fn wan_14b() -> Self {
        WanDitConfig::default()
    }

    /// Parses a `config.json` value and validates it.
    ///
    /// Accepts the diffusers names (`num_attention_heads`, …) and, as a fallback, the original
    /// Wan2.1 `config.json` names (`dim`, `num_heads`, `in_dim`, `out_dim`, `model_type`, …),
    /// recognised by a `dim` key without `num_attention_heads`.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| cfg_err("config.json must be a JSON object"))?;
        let cfg = if obj.contains_key("dim") && !obj.contains_key("num_attention_heads") {
            Self::from_original_json(obj)?
        } else {
            serde_json::from_value::<WanDitConfig>(v.clone()).map_err(|e| {
                // Name the offending key: the first one that fails on its own.
                let alone = |k: &String, val: &Value| {
                    let one: serde_json::Map<String, Value> = [(k.clone(), val.clone())].into_iter().collect();
                    serde_json::from_value::<WanDitConfig>(Value::Object(one)).is_err()
                };
                match obj.iter().find(|(k, val)| alone(k, val)) {
                    Some((k, val)) => cfg_err(format!("`{k}` = {val}: {e}")),
                    None => cfg_err(format!("config.json: {e}")),
                }
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::io::read_text(path)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| cfg_err(format!("{}: not valid JSON: {e}", path.display())))?;
        Self::from_json(&v).map_err(|e| match e {
            Error::Config { model, msg } => Error::Config { model, msg: format!("{}: {msg}", path.display()) },
            e => e,
        })
    }

    /// The original Wan2.1 `WanModel` config names.
    fn from_original_json(obj: &serde_json::Map<String, Value>) -> Result<Self> {
        let uint = |key: &str| -> Result<Option<usize>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|u| Some(u as usize))
                    .ok_or_else(|| cfg_err(format!("`{key}` must be a non-negative integer, got {v}"))),
            }
        };
        if let Some(mt) = obj.get("model_type").and_then(Value::as_str)
            && mt != "t2v"
        {
            return Err(cfg_err(format!(
                "`model_type` = {mt:?}: only text-to-video (\"t2v\") Wan models are supported (no image conditioning)"
            )));
        }
        let d = WanDitConfig::default();
        let dim = uint("dim")?.ok_or_else(|| cfg_err("`dim` is missing"))?;
        let heads = uint("num_heads")?.unwrap_or(d.num_attention_heads);
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(cfg_err(format!("`dim` = {dim} is not a multiple of `num_heads` = {heads}")));
        }
        let patch_size = match obj.get("patch_size") {
            None | Some(Value::Null) => d.patch_size,
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| cfg_err(format!("`patch_size` must be three integers: {e}")))?,
        };
        let qk_norm = match obj.get("qk_norm") {
            None | Some(Value::Bool(true)) => Some(QK_NORM_ACROSS_HEADS.to_string()),
            Some(v) => return Err(cfg_err(format!("`qk_norm` = {v}: only qk_norm = true is supported"))),
        };
        let cross_attn_norm = match obj.get("cross_attn_norm") {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| cfg_err(format!("`cross_attn_norm` must be a bool, got {v}")))?,
        };
        let eps = match obj.get("eps") {
            None => d.eps,
            Some(v) => v.as_f64().ok_or_else(|| cfg_err(format!("`eps` must be a number, got {v}")))?,
        };
        let in_channels = uint("in_dim")?.unwrap_or(d.in_channels);
        Ok(WanDitConfig {
            patch_size,
            num_attention_heads: heads,
            attention_head_dim: dim / heads,
            in_channels,
            out_channels: Some(uint("out_dim")?.unwrap_or(in_channels)),
            text_dim: uint("text_dim")?.unwrap_or(d.text_dim),
            freq_dim: uint("freq_dim")?.unwrap_or(d.freq_dim),
            ffn_dim: uint("ffn_dim")?.unwrap_or(d.ffn_dim),
            num_layers: uint("num_layers")?.unwrap_or(d.num_layers),
            cross_attn_norm,
            qk_norm,
            eps,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: d.rope_max_seq_len,
            pos_embed_seq_len: None,
        })
    }

    /// Checks every field; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        use crate::nets::{MAX_LAYERS, MAX_WIDTH, check_bounds};
        let [pt, ph, pw] = self.patch_size;
        check_bounds(
            "wan_dit",
            &[
                ("num_attention_heads", self.num_attention_heads, MAX_WIDTH),
                ("attention_head_dim", self.attention_head_dim, MAX_WIDTH),
                ("in_channels", self.in_channels, MAX_WIDTH),
                ("out_channels", self.out_channels.unwrap_or(0), MAX_WIDTH),
                ("text_dim", self.text_dim, MAX_WIDTH),
                ("freq_dim", self.freq_dim, MAX_WIDTH),
                ("ffn_dim", self.ffn_dim, MAX_WIDTH),
                ("num_layers", self.num_layers, MAX_LAYERS),
                ("patch_size", pt.max(ph).max(pw), 64),
                ("rope_max_seq_len", self.rope_max_seq_len, MAX_WIDTH),
                (
                    "num_attention_heads × attention_head_dim",
                    self.num_attention_heads.saturating_mul(self.attention_head_dim),
                    MAX_WIDTH,
                ),
            ],
        )?;
        if self.image_dim.is_some() {
            return Err(cfg_err("`image_dim` is set: image-to-video (i2v) Wan models are not supported"));
        }
        if self.added_kv_proj_dim.is_some() {
            return Err(cfg_err(
                "`added_kv_proj_dim` is set: image-conditioned cross-attention (i2v) is not supported",
            ));
        }
        if self.pos_embed_seq_len.is_some() {
            return Err(cfg_err("`pos_embed_seq_len` is set: image position embeddings (flf2v) are not supported"));
        }
        // `qk_norm` is not checked: diffusers' WanTransformer3DModel passes it to its blocks, which
        // ignore it and always normalise q and k with an RMSNorm over all heads (0.42), so any
        // value describes the same model and the same weights (`norm_q`, `norm_k`).
        if self.patch_size.contains(&0) {
            return Err(cfg_err(format!("`patch_size` = {:?}: every patch size must be ≥ 1", self.patch_size)));
        }
        if self.num_attention_heads == 0 {
            return Err(cfg_err("`num_attention_heads` must be ≥ 1"));
        }
        let hd = self.attention_head_dim;
        if hd < 6 || !hd.is_multiple_of(2) {
            return Err(cfg_err(format!(
                "`attention_head_dim` = {hd}: must be even and ≥ 6 (RoPE splits each head into frame/height/width \
                 channel pairs {:?})",
                Rope3d::axis_widths(hd.max(6))
            )));
        }
        for (key, v) in [("in_channels", self.in_channels), ("text_dim", self.text_dim), ("ffn_dim", self.ffn_dim)] {
            if v == 0 {
                return Err(cfg_err(format!("`{key}` must be ≥ 1")));
            }
        }
        if self.out_channels == Some(0) {
            return Err(cfg_err("`out_channels` must be ≥ 1 (or null for in_channels)"));
        }
        if self.freq_dim == 0 || !self.freq_dim.is_multiple_of(2) {
            return Err(cfg_err(format!("`freq_dim` = {}: must be even and ≥ 2", self.freq_dim)));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(cfg_err(format!("`eps` = {}: must be a positive number", self.eps)));
        }
        if self.rope_max_seq_len == 0 || self.rope_max_seq_len > ROPE_MAX_SEQ_LEN {
            return Err(cfg_err(format!(
                "`rope_max_seq_len` = {}: must be in 1..={ROPE_MAX_SEQ_LEN}",
                self.rope_max_seq_len
            )));
        }
        Ok(())
    }

    /// Inner width `D = num_attention_heads · attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output latent channels (`out_channels`, or `in_channels` when unset).
    pub fn out_dim(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Elements of one patch, `pt·ph·pw`.
    pub fn patch_volume(&self) -> usize {
        self.patch_size.iter().product()
    }

    /// Floating-point operations of one forward pass of one sample with `tokens` latent tokens
    /// (`F'·H'·W'`) and `text_len` context rows, counting a multiply-add as 2: every linear layer
    /// (`2·rows·in·out`) and both attention products (`2·Lq·Lk·D` each for `q·kᵀ` and `p·v`).
    /// Norms, softmax, RoPE and elementwise work are left out (a few percent at video sizes).
    /// A training step (forward + backward) is conventionally 3× this.
    pub fn forward_flops(&self, tokens: usize, text_len: usize) -> f64 {
        let (l, lt) = (tokens as f64, text_len as f64);
        let (d, f) = (self.inner_dim() as f64, self.ffn_dim as f64);
        let lin = |rows: f64, inp: f64, out: f64| 2.0 * rows * inp * out;
        let block = 4.0 * lin(l, d, d)                    // self-attention q, k, v, out
            + 2.0 * 2.0 * l * l * d                       // self-attention q·kᵀ and p·v
            + 2.0 * lin(l, d, d) + 2.0 * lin(lt, d, d)    // cross-attention q, out; k, v on the text
            + 2.0 * 2.0 * l * lt * d                      // cross-attention products
            + lin(l, d, f) + lin(l, f, d); // feed-forward
        let pv = self.patch_volume() as f64;
        let outside = lin(l, self.in_channels as f64 * pv, d)   // patch embedding
            + lin(lt, self.text_dim as f64, d) + lin(lt, d, d)  // text embedder
            + lin(1.0, self.freq_dim as f64, d) + lin(1.0, d, d) + lin(1.0, d, 6.0 * d) // time embedder
            + lin(l, d, self.out_dim() as f64 * pv); // head
        self.num_layers as f64 * block + outside
    }

    /// The attention products' share of [`forward_flops`](Self::forward_flops) (`q·kᵀ` and `p·v` of the
    /// self- and cross-attention of every block); the rest is linear layers.
    pub fn attention_flops(&self, tokens: usize, text_len: usize) -> f64 {
        let (l, lt, d) = (tokens as f64, text_len as f64, self.inner_dim() as f64);
        self.num_layers as f64 * (2.0 * 2.0 * l * l * d + 2.0 * 2.0 * l * lt * d)
    }

    /// RoPE real-channel widths `[d_t, d_h, d_w]` of one head (WAN_SPEC §1.4: `d_h = d_w = 2·⌊hd/6⌋`).
    pub fn rope_split(&self) -> [usize; 3] {
        Rope3d::axis_widths(self.attention_head_dim)
    }

    /// Every parameter as `(diffusers name, shape)`, in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.inner_dim();
        let [pt, ph, pw] = self.patch_size;
        let mut v: Vec<(String, Vec<usize>)> = Vec::new();
        fn linear(v: &mut Vec<(String, Vec<usize>)>, name: &str, out: usize, inp: usize) {
            v.push((format!("{name}.weight"), vec![out, inp]));
            v.push((format!("{name}.bias"), vec![out]));
        }
        v.push(("patch_embedding.weight".into(), vec![d, self.in_channels, pt, ph, pw]));
        v.push(("patch_embedding.bias".into(), vec![d]));
        linear(&mut v, "condition_embedder.time_embedder.linear_1", d, self.freq_dim);
        linear(&mut v, "condition_embedder.time_embedder.linear_2", d, d);
        linear(&mut v, "condition_embedder.time_proj", 6 * d, d);
        linear(&mut v, "condition_embedder.text_embedder.linear_1", d, self.text_dim);
        linear(&mut v, "condition_embedder.text_embedder.linear_2", d, d);
        for i in 0..self.num_layers {
            let b = format!("blocks.{i}");
            v.push((format!("{b}.scale_shift_table"), vec![1, 6, d]));
            for attn in ["attn1", "attn2"] {
                for p in ["to_q", "to_k", "to_v", "to_out.0"] {
                    linear(&mut v, &format!("{b}.{attn}.{p}"), d, d);
                }
                v.push((format!("{b}.{attn}.norm_q.weight"), vec![d]));
                v.push((format!("{b}.{attn}.norm_k.weight"), vec![d]));
            }
            if self.cross_attn_norm {
                v.push((format!("{b}.norm2.weight"), vec![d]));
                v.push((format!("{b}.norm2.bias"), vec![d]));
            }
            linear(&mut v, &format!("{b}.ffn.net.0.proj"), self.ffn_dim, d);
            linear(&mut v, &format!("{b}.ffn.net.2"), d, self.ffn_dim);
        }
        v.push(("scale_shift_table".into(), vec![1, 2, d]));
        linear(&mut v, "proj_out", self.out_dim() * pt * ph * pw, d);
        v
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_sizes() {
        assert_eq!(WanDitConfig::wan_1_3b().param_count(), 1_418_996_800);
        assert_eq!(WanDitConfig::wan_1_3b().parameter_shapes().len(), 825);
        assert_eq!(WanDitConfig::wan_14b().param_count(), 14_288_491_584);
        assert_eq!(WanDitConfig::wan_14b().parameter_shapes().len(), 1095);
        assert_eq!(WanDitConfig::wan_1_3b().rope_split(), [44, 42, 42]);
    }

    #[test]
    fn forward_flops_by_hand() {
        // D = 6, F = 10, one layer, 4 channels, 2×2 patches, text 8 wide, L = 3, Lt = 2:
        // block 864 + 216 + 432 + 288 + 144 + 720; patch 576, text 192 + 144, time 48 + 72 + 432, head 576.
        let c = WanDitConfig {
            num_attention_heads: 1,
            attention_head_dim: 6,
            ffn_dim: 10,
            num_layers: 1,
            in_channels: 4,
            out_channels: Some(4),
            text_dim: 8,
            freq_dim: 4,
            ..Default::default()
        };
        assert_eq!(c.forward_flops(3, 2), 4704.0);
        // Wan 1.3B at 480×832×81 (21·30·52 tokens): ≈ 283 TFLOP, attention about 70% of it.
        let f = WanDitConfig::wan_1_3b().forward_flops(21 * 30 * 52, 512);
        assert!((2.8e14..2.9e14).contains(&f), "{f:e}");
    }

    #[test]
    fn parses_diffusers_and_original_configs() {
        let j = serde_json::json!({
            "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0",
            "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30, "out_channels": null,
            "text_dim": 4096, "image_dim": null, "qk_norm": "rms_norm_across_heads"
        });
        let c = WanDitConfig::from_json(&j).unwrap();
        assert_eq!(c.param_count(), 1_418_996_800);
        let o = serde_json::json!({
            "_class_name": "WanModel", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256,
            "in_dim": 16, "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512
        });
        assert_eq!(WanDitConfig::from_json(&o).unwrap(), WanDitConfig::wan_1_3b());
    }

    #[test]
    fn unsupported_configs_name_the_key() {
        let bad = |j: serde_json::Value, key: &str| {
            let e = WanDitConfig::from_json(&j).unwrap_err();
            assert!(matches!(e, Error::Config { .. }), "{e}");
            assert!(e.to_string().contains(key), "{e} should name {key}");
        };
        bad(serde_json::json!({"image_dim": 1280}), "image_dim");
        bad(serde_json::json!({"added_kv_proj_dim": 5120}), "added_kv_proj_dim");
        bad(serde_json::json!({"attention_head_dim": 15}), "attention_head_dim");
        bad(serde_json::json!({"attention_head_dim": 4}), "attention_head_dim");
        bad(serde_json::json!({"patch_size": [1, 0, 2]}), "patch_size");
        // diffusers ignores qk_norm (always RMSNorm across heads): any value is the same model
        for q in [serde_json::json!(null), serde_json::json!("rms_norm"), serde_json::json!("rms_norm_across_heads")] {
            assert!(WanDitConfig::from_json(&serde_json::json!({"qk_norm": q})).is_ok(), "{q}");
        }
        // the original code builds no q/k norm without it: not supported
        bad(serde_json::json!({"dim": 64, "num_heads": 2, "qk_norm": false}), "qk_norm");
        bad(serde_json::json!({"freq_dim": 255}), "freq_dim");
        bad(serde_json::json!({"dim": 5120, "num_heads": 40, "model_type": "i2v"}), "model_type");
        bad(serde_json::json!({"num_layers": "x"}), "num_layers");
        // any even head_dim ≥ 6 is fine, with the spec's split
        for (hd, split) in [(16, [8, 4, 4]), (32, [12, 10, 10]), (128, [44, 42, 42])] {
            let c = WanDitConfig::from_json(&serde_json::json!({"attention_head_dim": hd})).unwrap();
            assert_eq!(c.rope_split(), split);
        }
    }
}
