//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as used by Qwen 2/3.
//!
//! Text is split by the pre-tokenizer regex named by `tokenizer.ggml.pre`; each piece is
//! mapped byte by byte to GPT-2's printable "byte-level" characters and then merged pair
//! by pair, lowest merge rank first (ties: leftmost first).

use crate::error::{Context, Result};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Qwen2/Qwen3 pre-tokenizer (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3 pre-tokenizer (numbers in groups of up to three digits).
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The original GPT-2 pre-tokenizer, used when `tokenizer.ggml.pre` is unknown.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// A byte-level BPE model: pre-tokenizer plus merge table over token ids.
pub(super) struct Bpe {
    pre: fancy_regex::Regex,
    /// `(left, right) -> (rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's byte-level character.
    byte_ids: [Option<u32>; 256],
}

/// GPT-2's byte -> printable character table.
pub(crate) fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut extra = 0u32;
        for b in 0..256u32 {
            let printable = (0x21..=0x7e).contains(&b)
                || (0xa1..=0xac).contains(&b)
                || (0xae..=0xff).contains(&b);
            table[b as usize] = if printable {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            };
        }
        table
    })
}

/// The inverse of [`byte_to_char`].
fn char_to_byte() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        byte_to_char()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

/// Maps a byte-level token text back to the bytes it stands for.
pub(super) fn decode_text(text: &str) -> Vec<u8> {
    let table = char_to_byte();
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match table.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

impl Bpe {
    /// Builds the model from the pre-tokenizer name, `"left right"` merges and the vocabulary.
    pub(super) fn new(pre: &str, merges: &[String], vocab: &HashMap<String, u32>) -> Result<Self> {
        let pattern = match pre {
            "qwen2" | "deepseek-r1-qwen" => QWEN2_PATTERN,
            "llama-bpe" | "llama3" | "smaug-bpe" => LLAMA3_PATTERN,
            _ => GPT2_PATTERN,
        };
        let pre = fancy_regex::Regex::new(pattern)
            .map_err(Box::new)
            .context("pre-tokenizer regex")?;
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (l, r) = m
                .split_once(' ')
                .with_context(|| format!("malformed merge {m:?}"))?;
            let (Some(&li), Some(&ri), Some(&mi)) = (
                vocab.get(l),
                vocab.get(r),
                vocab.get(format!("{l}{r}").as_str()),
            ) else {
                continue;
            };
            table.entry((li, ri)).or_insert((rank as u32, mi));
        }
        let mut byte_ids = [None; 256];
        for (b, c) in byte_to_char().iter().enumerate() {
            byte_ids[b] = vocab.get(c.to_string().as_str()).copied();
        }
        Ok(Self {
            pre,
            merges: table,
            byte_ids,
        })
    }

    /// Tokenizes raw text (no special tokens inside) and appends ids to `out`.
    pub(super) fn tokenize(&self, text: &str, out: &mut Vec<u32>) {
        let mut word = Vec::new();
        let mut done = 0;
        for piece in self.pre.find_iter(text) {
            // The patterns are fixed, so an error can only be fancy-regex's backtracking
            // limit; the rest of the text is then merged as a single piece.
            let piece = match piece {
                Ok(m) => {
                    done = m.end();
                    m.as_str()
                }
                Err(_) => {
                    let rest = &text[done..];
                    done = text.len();
                    rest
                }
            };
            word.clear();
            word.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize]));
            self.merge_word(&mut word);
            out.extend_from_slice(&word);
            if done == text.len() {
                break;
            }
        }
    }

    /// Applies merges to one pre-tokenized word, lowest rank first.
    fn merge_word(&self, word: &mut Vec<u32>) {
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min();
            let Some((_, i, id)) = best else {
                return;
            };
            word[i] = id;
            word.remove(i + 1);
        }
    }
}
