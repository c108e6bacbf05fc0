//! Text tokenisation for the text encoders: a typed wrapper over the Hugging Face `tokenizers`
//! crate (the engine behind Python's "fast" tokenizers), reading the same `tokenizer.json` files.
//!
//! The crate is built with `default-features = false, features = ["fancy-regex"]` (see
//! `kernels/Cargo.toml`): no C/C++ toolchain (`onig`, `esaxx`) is needed, and the BERT WordPiece
//! and T5/umT5 Unigram `tokenizer.json` formats load and encode with the pure-Rust regex backend.
//!
//! Truncation and padding are applied here, explicitly, whatever the JSON file says (the
//! all-MiniLM file, for one, carries `truncation: 128` and `padding: Fixed(128)`; they are
//! cleared on load):
//!
//! * [`Tokenizer::encode_batch`] — the generic path: encode, truncate to `max_len` *including* the
//!   special tokens the file's post-processor adds (as Python's `truncation=True, max_length=n`
//!   does), then pad on the right with the pad id ([`PadTo::Longest`] or [`PadTo::Fixed`]).
//! * [`Tokenizer::encode_umt5`] — the Wan2.1 prompt path (WAN_SPEC §4.4): clean the prompt
//!   ([`clean_prompt`]), encode without special tokens, truncate to `text_len − 1`, append `</s>`,
//!   pad with `<pad>` (id 0) to exactly `text_len` (512); the mask marks the true tokens incl. EOS.

use std::path::Path;

use crate::error::{Error, Result};

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadTo {
    /// To the longest sequence of the batch (after truncation).
    Longest,
    /// To exactly `n` tokens (`n` must be ≥ the truncation length).
    Fixed(usize),
}

/// A tokenised batch: `[batch, seq_len]` row-major `i64` arrays, as PyTorch models take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids; padding positions hold the pad id.
    pub ids: Vec<i64>,
    /// 1 for true tokens (special tokens included), 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Segment ids (BERT `token_type_ids`; 0 for single sequences and padding).
    pub token_type_ids: Vec<i64>,
    /// Number of sequences.
    pub batch: usize,
    /// Padded length of every sequence.
    pub seq_len: usize,
}

impl TokenBatch {
    /// A batch from raw arrays (e.g. a fixture's `in.input_ids` / `in.attention_mask`), checked:
    /// every array has `batch·seq_len` entries, the mask holds only 0/1, ids are non-negative.
    /// `token_type_ids` defaults to zeros.
    pub fn new(
        ids: Vec<i64>,
        attention_mask: Vec<i64>,
        token_type_ids: Option<Vec<i64>>,
        shape: [usize; 2],
    ) -> Result<TokenBatch> {
        const OP: &str = "TokenBatch";
        let n = shape[0] * shape[1];
        let types = token_type_ids.unwrap_or_else(|| vec![0; n]);
        for (what, v) in [("input_ids", &ids), ("attention_mask", &attention_mask), ("token_type_ids", &types)] {
            if v.len() != n {
                return Err(Error::shape(OP, format!("{what} has {} entries, expected {shape:?} = {n}", v.len())));
            }
        }
        if let Some(bad) = attention_mask.iter().find(|&&m| m != 0 && m != 1) {
            return Err(Error::arg(OP, format!("attention_mask holds {bad}; expected only 0 and 1")));
        }
        if let Some(bad) = ids.iter().chain(&types).find(|&&i| i < 0) {
            return Err(Error::arg(OP, format!("negative token id {bad}")));
        }
        Ok(TokenBatch { ids, attention_mask, token_type_ids: types, batch: shape[0], seq_len: shape[1] })
    }

    /// `[batch, seq_len]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq_len]
    }

    /// Number of true tokens per sequence (the sum of its mask row).
    pub fn lengths(&self) -> Vec<usize> {
        self.attention_mask
            .chunks(self.seq_len.max(1))
            .take(self.batch)
            .map(|r| r.iter().filter(|&&m| m != 0).count())
            .collect()
    }

    /// The ids of sequence `b` (padding included).
    pub fn row(&self, b: usize) -> &[i64] {
        &self.ids[b * self.seq_len..(b + 1) * self.seq_len]
    }
}

/// A `tokenizer.json` tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    pad_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("source", &self.source).field("pad_id", &self.pad_id).finish()
    }
}

/// The length the Wan pipelines pad umT5 prompts to.
pub const WAN_TEXT_LEN: usize = 512;

impl Tokenizer {
    /// Loads a `tokenizer.json` file (Hugging Face fast-tokenizer format).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = crate::io::read_bytes(path)?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses `tokenizer.json` content; `source` names it in errors.
    pub fn from_bytes(json: &[u8], source: &str) -> Result<Tokenizer> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer {
            what: source.to_string(),
            msg: format!("not a loadable tokenizer.json: {e}"),
        })?;
        let pad_id = match inner.get_padding() {
            Some(p) => p.pad_id,
            None => ["<pad>", "[PAD]"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0),
        };
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer { what: source.to_string(), msg: format!("clearing truncation: {e}") })?;
        Ok(Tokenizer { inner, source: source.to_string(), pad_id })
    }

    /// The id padding positions get: the file's `padding.pad_id`, else the id of `<pad>` or
    /// `[PAD]`, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The same tokenizer padding with `id`.
    pub fn with_pad_id(mut self, id: u32) -> Tokenizer {
        self.pad_id = id;
        self
    }

    /// The id of a token (special and added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// How many special tokens the file's post-processor adds to a single sequence
    /// (`[CLS] … [SEP]` → 2, T5's `… </s>` → 1, none → 0).
    pub fn special_tokens_added(&self) -> usize {
        use tokenizers::PostProcessor;
        self.inner.get_post_processor().map(|p| p.added_tokens(false)).unwrap_or(0)
    }

    fn err(&self, msg: String) -> Error {
        Error::Tokenizer { what: self.source.clone(), msg }
    }

    /// Ids of one text, with or without the special tokens, untruncated.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let e = self.inner.encode(text, add_special_tokens).map_err(|e| self.err(format!("encoding {text:?}: {e}")))?;
        Ok(e.get_ids().to_vec())
    }

    /// Text of a sequence of ids.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| self.err(format!("decoding: {e}")))
    }

    /// Encodes a batch: special tokens (when asked) from the file's post-processor, truncation
    /// to `max_len` tokens *including* them (the text is cut, the special tokens are kept), right
    /// padding with [`pad_id`](Self::pad_id) per `pad_to`.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        max_len: usize,
        pad_to: PadTo,
        add_special_tokens: bool,
    ) -> Result<TokenBatch> {
        let n_special = if add_special_tokens { self.special_tokens_added() } else { 0 };
        if max_len <= n_special {
            return Err(self.err(format!("max_len {max_len} leaves no room beside {n_special} special tokens")));
        }
        if let PadTo::Fixed(n) = pad_to
            && n < max_len
        {
            return Err(self.err(format!("padding to {n} tokens is shorter than the truncation length {max_len}")));
        }
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let raw = self.inner.encode_batch(inputs, false).map_err(|e| self.err(format!("encoding a batch: {e}")))?;
        let mut rows = Vec::with_capacity(raw.len());
        for mut e in raw {
            e.truncate(max_len - n_special, 0, tokenizers::TruncationDirection::Right);
            drop(e.take_overflowing());
            let e = if add_special_tokens {
                self.inner.post_process(e, None, true).map_err(|e| self.err(format!("adding special tokens: {e}")))?
            } else {
                e
            };
            let ids: Vec<u32> = e.get_ids().to_vec();
            let types: Vec<u32> = e.get_type_ids().to_vec();
            rows.push((ids, types));
        }
        let longest = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let seq_len = match pad_to {
            PadTo::Longest => longest,
            PadTo::Fixed(n) => n,
        };
        Ok(pad_rows(rows, seq_len, self.pad_id))
    }

    /// Tokenises prompts as the Wan2.1 pipelines feed umT5 (WAN_SPEC §4.4): each prompt is cleaned
    /// ([`clean_prompt`]), encoded without special tokens, cut to `text_len − 1` tokens, `</s>` is
    /// appended, and the row is padded with the pad id (`<pad>` = 0 for umT5) to exactly
    /// `text_len` (use [`WAN_TEXT_LEN`]). The empty prompt becomes `[</s>, <pad> × 511]`.
    pub fn encode_umt5<S: AsRef<str>>(&self, texts: &[S], text_len: usize) -> Result<TokenBatch> {
        let eos = self
            .token_to_id("</s>")
            .ok_or_else(|| self.err("has no `</s>` token: not a T5/umT5 tokenizer".to_string()))?;
        if text_len < 1 {
            return Err(self.err("text_len must be ≥ 1".to_string()));
        }
        let cleaned: Vec<String> = texts.iter().map(|t| clean_prompt(t.as_ref())).collect();
        let raw = self
            .inner
            .encode_batch(cleaned.iter().map(String::as_str).collect::<Vec<_>>(), false)
            .map_err(|e| self.err(format!("encoding a batch: {e}")))?;
        let rows = raw
            .into_iter()
            .map(|e| {
                let mut ids: Vec<u32> = e.get_ids().iter().copied().take(text_len - 1).collect();
                ids.push(eos);
                let types = vec![0; ids.len()];
                (ids, types)
            })
            .collect();
        Ok(pad_rows(rows, text_len, self.pad_id))
    }
}

fn pad_rows(rows: Vec<(Vec<u32>, Vec<u32>)>, seq_len: usize, pad_id: u32) -> TokenBatch {
    let batch = rows.len();
    let mut out = TokenBatch {
        ids: Vec::with_capacity(batch * seq_len),
        attention_mask: Vec::with_capacity(batch * seq_len),
        token_type_ids: Vec::with_capacity(batch * seq_len),
        batch,
        seq_len,
    };
    for (ids, types) in rows {
        let n = ids.len();
        debug_assert!(n <= seq_len);
        out.ids.extend(ids.iter().map(|&i| i as i64));
        out.ids.extend(std::iter::repeat_n(pad_id as i64, seq_len - n));
        out.attention_mask.extend(std::iter::repeat_n(1, n));
        out.attention_mask.extend(std::iter::repeat_n(0, seq_len - n));
        out.token_type_ids.extend(types.iter().map(|&t| t as i64));
        out.token_type_ids.extend(std::iter::repeat_n(0, seq_len - n));
    }
    out
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators U+001C–U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Cleans a prompt as the Wan pipelines do before tokenising (diffusers `prompt_clean`, Wan's
/// `HuggingfaceTokenizer(clean='whitespace')`): HTML-unescape twice, strip, collapse every run of
/// whitespace to one space, strip.
///
/// Not reproduced: `ftfy.fix_text` (mojibake repair; the pipelines apply it only when ftfy is
/// installed, and it leaves well-formed text unchanged), and the HTML5 named entities beyond
/// `&amp; &lt; &gt; &quot; &apos; &nbsp;` (numeric references `&#NN;`/`&#xHH;` are decoded).
pub fn clean_prompt(text: &str) -> String {
    let t = html_unescape(&html_unescape(text));
    let mut out = String::with_capacity(t.len());
    let mut pending_space = false;
    for c in t.chars() {
        if is_py_space(c) {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// One pass of HTML character-reference decoding (the subset [`clean_prompt`] documents).
fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        match decode_reference(rest) {
            Some((c, used)) => {
                out.push(c);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the reference at the start of `s` (which starts with `&`): (char, bytes used).
fn decode_reference(s: &str) -> Option<(char, usize)> {
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 3),
            None => (num, 10, 2),
        };
        let len = digits.find(|c: char| !c.is_digit(radix)).unwrap_or(digits.len());
        if len == 0 {
            return None;
        }
        let semi = usize::from(digits[len..].starts_with(';'));
        let code = u32::from_str_radix(&digits[..len], radix).unwrap_or(u32::MAX);
        // Python maps NUL, surrogates and out-of-range code points to U+FFFD.
        let c = if code == 0 { '\u{fffd}' } else { char::from_u32(code).unwrap_or('\u{fffd}') };
        return Some((c, skip + len + semi));
    }
    const NAMED: [(&str, char); 6] =
        [("amp;", '&'), ("lt;", '<'), ("gt;", '>'), ("quot;", '"'), ("apos;", '\''), ("nbsp;", '\u{a0}')];
    NAMED.iter().find(|(n, _)| body.starts_with(n)).map(|&(n, c)| (c, 1 + n.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_cleaning() {
        assert_eq!(clean_prompt("  a\t\tb \n c  "), "a b c");
        assert_eq!(clean_prompt("x &amp;amp; y"), "x & y"); // unescaped twice
        assert_eq!(clean_prompt("&lt;b&gt; &#65;&#x42; &#12345678;"), "<b> AB \u{fffd}");
        assert_eq!(clean_prompt("a&nbsp;b"), "a b"); // NBSP is whitespace after unescaping
        assert_eq!(clean_prompt("AT&T & co"), "AT&T & co");
        assert_eq!(clean_prompt(""), "");
        assert_eq!(clean_prompt(" \u{3000} "), "");
    }

    #[test]
    fn token_batch_validation() {
        assert!(TokenBatch::new(vec![1, 2, 3], vec![1, 1, 0], None, [1, 3]).is_ok());
        assert!(TokenBatch::new(vec![1, 2, 3], vec![1, 1], None, [1, 3]).is_err());
        assert!(TokenBatch::new(vec![1, 2, 3], vec![1, 2, 0], None, [1, 3]).is_err());
        assert!(TokenBatch::new(vec![1, -2, 3], vec![1, 1, 0], None, [1, 3]).is_err());
        let b = TokenBatch::new(vec![1, 2, 3, 4], vec![1, 1, 1, 0], None, [2, 2]).unwrap();
        assert_eq!(b.lengths(), vec![2, 1]);
        assert_eq!(b.row(1), &[3, 4]);
    }
}
