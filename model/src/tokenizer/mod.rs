//! Tokenizers built from GGUF metadata alone (no network, no `tokenizer.json`).
//!
//! Two vocabulary kinds are supported, mirroring llama.cpp:
//! - `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE over scores (module `spm`),
//!   used by Gemma 3.
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE over merge ranks (module `bpe`),
//!   used by Qwen 2/3.
//!
//! Special tokens (control, user-defined and unknown token types) are split out of the
//! text before the model-specific algorithm runs, as llama.cpp's
//! `tokenizer_st_partition` does, and decoding follows llama.cpp's `token_to_piece`.

mod bpe;
mod spm;

#[cfg(any(test, feature = "testing"))]
pub(crate) use bpe::byte_to_char;

use crate::error::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use std::collections::HashMap;

/// GGUF token type, as stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenType {
    /// An ordinary text piece.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token such as BOS/EOS or a chat-template marker.
    Control,
    /// A user-defined piece that is always matched verbatim in the input.
    UserDefined,
    /// A reserved slot that never appears in tokenized text.
    Unused,
    /// A byte-fallback token `<0xXX>`.
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> Self {
        match v {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }

    /// Token types that are cut out of raw text before the sub-word algorithm runs.
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::UserDefined | Self::Unknown)
    }
}

/// The vocabulary-kind specific algorithm.
enum Algorithm {
    Spm,
    Bpe(Box<bpe::Bpe>),
}

/// A tokenizer reconstructed from GGUF metadata.
pub struct Tokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    token_to_id: HashMap<String, u32>,
    /// Special-token ids, longest text first (the order llama.cpp partitions in).
    specials: Vec<u32>,
    algorithm: Algorithm,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    eog: Vec<u32>,
    /// `tokenizer.chat_template`, when the file has one.
    chat_template: Option<String>,
}

/// A piece of input text after special tokens were split out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

fn meta<'a>(ct: &'a gguf_file::Content, key: &str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(key)
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    meta(ct, key)
        .and_then(|v| value_as_i64(v).ok())
        .map(|v| v as u32)
}

fn meta_bool(ct: &gguf_file::Content, key: &str) -> Option<bool> {
    meta(ct, key).and_then(|v| v.to_bool().ok())
}

fn value_as_i64(v: &gguf_file::Value) -> Result<i64> {
    use gguf_file::Value::*;
    Ok(match v {
        U8(x) => *x as i64,
        I8(x) => *x as i64,
        U16(x) => *x as i64,
        I16(x) => *x as i64,
        U32(x) => *x as i64,
        I32(x) => *x as i64,
        U64(x) => *x as i64,
        I64(x) => *x,
        other => bail!("expected an integer, got {other:?}"),
    })
}

fn string_array(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>> {
    let arr = meta(ct, key)
        .with_context(|| format!("missing GGUF key {key}"))?
        .to_vec()?;
    arr.iter()
        .map(|v| Ok(v.to_string()?.clone()))
        .collect::<Result<_>>()
        .with_context(|| format!("{key} is not an array of strings"))
}

impl Tokenizer {
    /// Builds the tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.
    pub(crate) fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let model = meta(ct, "tokenizer.ggml.model")
            .context("missing tokenizer.ggml.model")?
            .to_string()?
            .clone();
        let tokens = string_array(ct, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let scores = match meta(ct, "tokenizer.ggml.scores") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|s| Ok(s.to_f32()?))
                .collect::<Result<Vec<f32>>>()?,
            None => vec![0.0; n],
        };
        let types = match meta(ct, "tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| Ok(TokenType::from_gguf(value_as_i64(t)?)))
                .collect::<Result<Vec<_>>>()?,
            None => vec![TokenType::Normal; n],
        };
        if scores.len() != n || types.len() != n {
            bail!(
                "tokenizer arrays disagree in length: {n} tokens, {} scores, {} types",
                scores.len(),
                types.len()
            );
        }
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| types[i as usize].is_special() && !tokens[i as usize].is_empty())
            .collect();
        specials.sort_by(|a, b| tokens[*b as usize].len().cmp(&tokens[*a as usize].len()));

        let (algorithm, default_bos, default_space_prefix) = match model.as_str() {
            "llama" => (Algorithm::Spm, true, true),
            "gpt2" => {
                let merges = string_array(ct, "tokenizer.ggml.merges")?;
                let pre = meta(ct, "tokenizer.ggml.pre")
                    .and_then(|v| v.to_string().ok())
                    .cloned()
                    .unwrap_or_default();
                (
                    Algorithm::Bpe(Box::new(bpe::Bpe::new(&pre, &merges, &token_to_id)?)),
                    false,
                    false,
                )
            }
            other => bail!("unsupported tokenizer.ggml.model {other:?}"),
        };
        let bos = meta_u32(ct, "tokenizer.ggml.bos_token_id");
        let eos = meta_u32(ct, "tokenizer.ggml.eos_token_id");
        let unk = meta_u32(ct, "tokenizer.ggml.unknown_token_id");
        let mut eog: Vec<u32> = eos.into_iter().collect();
        if let Some(eot) = meta_u32(ct, "tokenizer.ggml.eot_token_id") {
            eog.push(eot);
        }
        // llama.cpp also treats these well-known texts as end-of-generation markers.
        for text in ["<end_of_turn>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(&id) = token_to_id.get(text) {
                if types[id as usize] == TokenType::Control && !eog.contains(&id) {
                    eog.push(id);
                }
            }
        }
        Ok(Self {
            add_bos: meta_bool(ct, "tokenizer.ggml.add_bos_token").unwrap_or(default_bos),
            add_eos: meta_bool(ct, "tokenizer.ggml.add_eos_token").unwrap_or(false),
            add_space_prefix: meta_bool(ct, "tokenizer.ggml.add_space_prefix")
                .unwrap_or(default_space_prefix),
            tokens,
            scores,
            types,
            token_to_id,
            specials,
            algorithm,
            bos,
            eos,
            unk,
            eog,
            chat_template: meta(ct, "tokenizer.chat_template")
                .and_then(|v| v.to_string().ok())
                .cloned(),
        })
    }

    /// The chat template stored in the file (`tokenizer.chat_template`), if any.
    pub(crate) fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generation should stop at `id` (EOS, EOT and chat end-of-turn markers).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The id of a token given its exact vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Tokenizes `text`.
    ///
    /// `add_special` adds BOS/EOS as the vocabulary asks for; `parse_special` lets control
    /// tokens written in the text (e.g. `<start_of_turn>`) map to their ids, as llama.cpp
    /// does for prompts. User-defined tokens are always matched.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut is_prev_special = true;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    is_prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.algorithm {
                        Algorithm::Spm => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if self.add_space_prefix && is_prev_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            let escaped = s.replace(' ', "\u{2581}");
                            spm::tokenize(self, &escaped, &mut out);
                        }
                        Algorithm::Bpe(bpe) => bpe.tokenize(t, &mut out),
                    }
                    is_prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Splits special tokens out of `text`, longest special token first (llama.cpp order).
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            return frags;
        }
        let mut present = [false; 256];
        for &b in text.as_bytes() {
            present[b as usize] = true;
        }
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && matches!(ty, TokenType::Control | TokenType::Unknown) {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !present[needle.as_bytes()[0] as usize] {
                continue;
            }
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(t) if t.contains(needle) => {
                        let mut rest = t;
                        while let Some(pos) = rest.find(needle) {
                            if pos > 0 {
                                next.push(Fragment::Text(&rest[..pos]));
                            }
                            next.push(Fragment::Token(id));
                            rest = &rest[pos + needle.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes that token `id` stands for (llama.cpp's `token_to_piece`).
    ///
    /// Control tokens render as their text only when `render_special` is set.
    pub(crate) fn token_to_piece(&self, id: u32, render_special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        let ty = self.types[id as usize];
        match ty {
            TokenType::Control if render_special => text.as_bytes().to_vec(),
            TokenType::Control | TokenType::Unused => Vec::new(),
            TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Unknown => match self.algorithm {
                Algorithm::Spm => "\u{2585}".as_bytes().to_vec(),
                Algorithm::Bpe(_) => Vec::new(),
            },
            TokenType::Byte => match self.algorithm {
                Algorithm::Spm => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
                Algorithm::Bpe(_) => bpe::decode_text(text),
            },
            TokenType::Normal => match &self.algorithm {
                Algorithm::Spm => text.replace('\u{2581}', " ").into_bytes(),
                Algorithm::Bpe(_) => bpe::decode_text(text),
            },
        }
    }

    /// Decodes ids back to text; invalid UTF-8 (e.g. a cut multi-byte sequence) is replaced.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_to_piece(id, render_special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The byte-fallback token for `b` (`<0xXX>`), or the unknown token.
    fn byte_token(&self, b: u8) -> Option<u32> {
        self.token_to_id
            .get(format!("<0x{b:02X}>").as_str())
            .copied()
            .or(self.unk)
    }

    fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }
}

/// Parses `<0xXX>` into its byte.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
