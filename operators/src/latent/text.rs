//! The text encoders the DiT is conditioned on, loaded once per process and folder.
//!
//! * `minilm` (embedded default): all-MiniLM-L6-v2's last hidden states, one 384-wide row per
//!   token, `[CLS] … [SEP]` cut to `max_tokens`, rows past the text set to zero (as Wan zeroes
//!   umT5's padding), so the context is `[max_tokens, 384]`. Its folder comes from
//!   `scripts/fetch-models.sh` unless `text_model` names one.
//! * `umt5`: the Wan2.1 text encoder (umT5-XXL encoder: `config.json` and safetensors weights in
//!   one folder, `tokenizer.json` beside them or, as in a diffusers pipeline folder, in the sibling
//!   `../tokenizer/`), `[512, 4096]` exactly as the Wan pipelines build it.
//!
//! A context blob records the encoder id ([`TextEncoder::id`]); a checkpoint records the id it
//! was trained with, and sampling refuses a mismatch instead of producing noise.

use medgen_kernels::io::safetensors::Checkpoint as StCheckpoint;
use medgen_kernels::nets::minilm::{self, MiniLm};
use medgen_kernels::nets::tokenizer::{PadTo, Tokenizer};
use medgen_kernels::nets::umt5::{UMT5Config, UMT5Encoder};
use medgen_kernels::{DType, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Which text encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoderKind {
    /// all-MiniLM-L6-v2 token states (embedded default; `scripts/fetch-models.sh` fetches it).
    Minilm,
    /// The umT5-XXL encoder of Wan2.1 (a folder with config.json and weights; tokenizer.json in it
    /// or in the sibling `tokenizer/` folder of a diffusers pipeline).
    Umt5,
}

impl TextEncoderKind {
    pub fn name(self) -> &'static str {
        match self {
            TextEncoderKind::Minilm => "minilm",
            TextEncoderKind::Umt5 => "umt5",
        }
    }
}

/// Default token count of MiniLM contexts.
pub const MINILM_TOKENS: usize = 32;

enum Inner {
    Minilm(Box<MiniLm>),
    Umt5(Box<UMT5Encoder>, Box<Tokenizer>),
}

/// A loaded text encoder.
pub struct TextEncoder {
    inner: Inner,
    kind: TextEncoderKind,
    tokens: usize,
    dim: usize,
}

/// The folder a text encoder loads from: `dir` (relative to `base`) or, for MiniLM, the fetched one.
pub fn resolve_dir(kind: TextEncoderKind, dir: Option<&str>, base: &Path) -> Result<PathBuf, String> {
    match (dir, kind) {
        (Some(d), _) => {
            let p = crate::api::resolve_path(base, d);
            match crate::api::not_a_folder(&p) {
                None => Ok(p),
                Some(what) => Err(format!("text encoder folder {} {what}", p.display())),
            }
        }
        (None, TextEncoderKind::Minilm) => minilm::fetched_minilm_dir()
            .ok_or_else(|| format!("the MiniLM text encoder is not there: {}", minilm::MINILM_FETCH_HINT)),
        (None, TextEncoderKind::Umt5) => Err("text_encoder = \"umt5\" needs `text_model`, the folder of the \
             umT5-XXL encoder: config.json and safetensors weights, with tokenizer.json in it or in a sibling \
             tokenizer/ folder (a Wan2.1 diffusers pipeline's text_encoder/)"
            .into()),
    }
}

/// The umT5 tokenizer of the encoder folder `dir`: `dir/tokenizer.json`, else the pipeline
/// layout's `dir/../tokenizer/tokenizer.json`; the error names both places.
pub fn umt5_tokenizer_file(dir: &Path) -> Result<PathBuf, String> {
    let own = dir.join("tokenizer.json");
    if own.is_file() {
        return Ok(own);
    }
    let sibling = dir.join("..").join("tokenizer").join("tokenizer.json");
    if sibling.is_file() {
        return Ok(sibling);
    }
    Err(format!(
        "no umT5 tokenizer.json: neither {} nor {} (a diffusers pipeline's tokenizer/) exists",
        own.display(),
        sibling.display()
    ))
}

impl TextEncoder {
    /// Loads (once per process, folder and token count) the encoder of `kind` from `dir`.
    pub fn load(kind: TextEncoderKind, dir: &Path, tokens: usize) -> Result<Arc<TextEncoder>, String> {
        type Cache = Mutex<HashMap<(TextEncoderKind, PathBuf, usize), Arc<TextEncoder>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let key = (kind, dir.to_path_buf(), tokens);
        let cache = CACHE.get_or_init(Default::default);
        if let Some(e) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(e.clone());
        }
        let enc = match kind {
            TextEncoderKind::Minilm => {
                if tokens < 3 {
                    return Err(format!("text_tokens = {tokens} leaves no room for text beside [CLS] and [SEP]"));
                }
                let m = MiniLm::from_dir(dir, DType::F32)
                    .map_err(|e| format!("loading MiniLM from {}: {e}", dir.display()))?;
                if tokens > m.config().max_position_embeddings {
                    return Err(format!(
                        "text_tokens = {tokens} exceeds MiniLM's {} positions",
                        m.config().max_position_embeddings
                    ));
                }
                let dim = m.config().hidden_size;
                TextEncoder { inner: Inner::Minilm(Box::new(m)), kind, tokens, dim }
            }
            TextEncoderKind::Umt5 => {
                let cfg = UMT5Config::from_file(dir.join("config.json"))
                    .map_err(|e| format!("umT5 config in {}: {e}", dir.display()))?;
                // Before the (large) weights: a missing tokenizer fails at once.
                let tok_file = umt5_tokenizer_file(dir)?;
                let weights = StCheckpoint::open(dir).map_err(|e| format!("umT5 weights in {}: {e}", dir.display()))?;
                let model = UMT5Encoder::load(cfg, &weights, DType::F32)
                    .map_err(|e| format!("loading umT5 from {}: {e}", dir.display()))?;
                let tok = Tokenizer::from_file(&tok_file)
                    .map_err(|e| format!("umT5 tokenizer {}: {e}", tok_file.display()))?;
                let dim = model.config().d_model;
                let tokens = medgen_kernels::nets::tokenizer::WAN_TEXT_LEN;
                TextEncoder { inner: Inner::Umt5(Box::new(model), Box::new(tok)), kind, tokens, dim }
            }
        };
        let enc = Arc::new(enc);
        cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, enc.clone());
        Ok(enc)
    }

    /// `minilm-384x32`, `umt5-4096x512`: what a context blob was made with.
    pub fn id(&self) -> String {
        format!("{}-{}x{}", self.kind.name(), self.dim, self.tokens)
    }

    /// Width of a context row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows of a context.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Contexts `[N, tokens, dim]` (f32) of `texts`; rows past each text are zero.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor, String> {
        let out = match &self.inner {
            Inner::Minilm(m) => {
                let tok = m.tokenizer().ok_or("MiniLM has no tokenizer")?;
                let batch =
                    tok.encode_batch(texts, self.tokens, PadTo::Fixed(self.tokens), true).map_err(|e| e.to_string())?;
                let hidden = m.forward_tokens(&batch).map_err(|e| e.to_string())?;
                let mut data = hidden.to_vec_f32().map_err(|e| e.to_string())?;
                for (row, &mask) in data.chunks_mut(self.dim).zip(&batch.attention_mask) {
                    if mask == 0 {
                        row.fill(0.0);
                    }
                }
                Tensor::from_vec(data, hidden.shape())
            }
            Inner::Umt5(m, tok) => m.encode_for_wan(tok, texts).and_then(|t| t.to_dtype(DType::F32)),
        };
        out.map_err(|e| e.to_string())
    }
}
