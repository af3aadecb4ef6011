//! Tokenizer tests: the reference Gemma 3 vocabulary and the tiny built-in vocabularies.

use crate::testing::{tiny_gguf, tiny_model, TinyConfig};
use crate::Tokenizer;
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use std::io::Cursor;

#[test]
fn gemma3_reference_prompt() {
    let Some((_, tok)) = super::common::reference() else {
        return;
    };
    assert_eq!(tok.vocab_size(), 262_144);
    let ids = tok.encode("The capital of France is", true, true);
    assert_eq!(ids, vec![2, 818, 5279, 529, 7001, 563]);
}

/// Token ids that llama.cpp's `/tokenize` (add_special and parse_special on) gives for the
/// reference file.
const LLAMA_CPP_TOKENIZATIONS: &[(&str, &[u32])] = &[
    (
        "Hello world! How are you doing today?",
        &[2, 9259, 1902, 236888, 2088, 659, 611, 3490, 3124, 236881],
    ),
    (
        "  leading spaces, tabs\tand\nnewlines\n\n",
        &[
            2, 138, 26016, 9952, 236764, 42364, 255968, 624, 107, 208697, 108,
        ],
    ),
    (
        "Unicode: naïve café, 日本語, emoji 🦀🚀, math ∑∫",
        &[
            2, 123540, 236787, 120362, 33443, 236764, 33375, 238582, 236764, 64334, 236743, 248714,
            242015, 236764, 6596, 76689, 240842,
        ],
    ),
    (
        "code: fn main() { println!(\"{}\", 1 + 2); }",
        &[
            2, 3970, 236787, 12751, 1689, 825, 642, 32374, 183228, 236743, 236770, 900, 236743,
            236778, 626, 682,
        ],
    ),
    (
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
        &[
            2, 105, 2364, 107, 3689, 563, 236743, 236778, 236862, 236778, 236881, 106, 107, 105,
            4368, 107,
        ],
    ),
    (
        "a</s>b <unk> <mask>",
        &[2, 236746, 212, 236763, 236743, 3, 236743, 4],
    ),
    ("       ", &[2, 143]),
    (
        "1234567890 3.14159 -42",
        &[
            2, 236770, 236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819, 236771,
            236743, 236800, 236761, 236770, 236812, 236770, 236810, 236819, 753, 236812, 236778,
        ],
    ),
    (
        "\u{0}\u{1} control ÿ bytes 😀",
        &[2, 238, 249732, 2256, 236743, 243493, 17234, 163543],
    ),
];

#[test]
fn gemma3_matches_llama_cpp_tokenize() {
    let Some((_, tok)) = super::common::reference() else {
        return;
    };
    for (text, want) in LLAMA_CPP_TOKENIZATIONS {
        assert_eq!(&tok.encode(text, true, true), want, "text {text:?}");
    }
}

#[test]
fn gemma3_round_trip() {
    let Some((_, tok)) = super::common::reference() else {
        return;
    };
    for text in [
        "The capital of France is",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "Unicode: naïve café, 日本語, emoji 🦀🚀, math ∑∫",
        "code: fn main() { println!(\"{}\", 1 + 2); }",
        "",
    ] {
        let ids = tok.encode(text, false, false);
        assert_eq!(tok.decode(&ids, false), text, "ids {ids:?}");
        // BOS is a control token and decodes to nothing.
        let with_bos = tok.encode(text, true, false);
        assert_eq!(with_bos[0], 2);
        assert_eq!(tok.decode(&with_bos, false), text);
    }
}

#[test]
fn gemma3_special_tokens() {
    let Some((_, tok)) = super::common::reference() else {
        return;
    };
    let turn = tok.token_id("<start_of_turn>").expect("gemma chat marker");
    let ids = tok.encode("<start_of_turn>user\nhi", false, true);
    assert_eq!(ids[0], turn);
    let end = tok.token_id("<end_of_turn>").unwrap();
    assert!(tok.is_eog(end));
    assert!(tok.is_eog(1));
    // Without parse_special the marker is plain text.
    let plain = tok.encode("<start_of_turn>", false, false);
    assert!(!plain.contains(&turn));
    assert_eq!(tok.decode(&plain, false), "<start_of_turn>");
    assert_eq!(tok.decode(&[turn], true), "<start_of_turn>");
    assert_eq!(tok.decode(&[turn], false), "");
}

#[test]
fn spm_tiny_vocab() {
    let (_, tok) = tiny_model(&TinyConfig::gemma3()).unwrap();
    let id = |s: &str| tok.token_id(s).unwrap();
    let ids = tok.encode("hello the world", true, false);
    // No space prefix, so "hello" cannot become "▁hello"; "he" (higher score) merges before
    // "ll", which then grows into "llo".
    assert_eq!(ids, vec![2, id("he"), id("llo"), id("▁the"), id("▁world")]);
    // Characters outside the vocabulary fall back to bytes.
    let ids = tok.encode("é", false, false);
    assert_eq!(ids, vec![id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(tok.decode(&ids, false), "é");
    for text in ["hello the world", "  x\u{1F980}\n", "cat  at"] {
        assert_eq!(tok.decode(&tok.encode(text, true, false), false), text);
    }
    let ids = tok.encode("<start_of_turn>cat<end_of_turn>", false, true);
    assert_eq!(
        ids,
        vec![
            id("<start_of_turn>"),
            id("c"),
            id("at"),
            id("<end_of_turn>")
        ]
    );
}

#[test]
fn bpe_tiny_vocab() {
    let (_, tok) = tiny_model(&TinyConfig::qwen3()).unwrap();
    let id = |s: &str| tok.token_id(s).unwrap();
    // No BOS for gpt2-style vocabularies unless the file asks for it.
    // "h e" (rank 1) merges before "l l" (rank 3), so "h ello" never applies.
    let ids = tok.encode("hello the world", true, false);
    assert_eq!(ids, vec![id("he"), id("llo"), id("Ġthe"), id("Ġworld")]);
    let ids = tok.encode("<|im_start|>the<|im_end|>", false, true);
    assert_eq!(
        ids,
        vec![id("<|im_start|>"), id("t"), id("he"), id("<|im_end|>")]
    );
    assert!(tok.is_eog(id("<|im_end|>")));
    for text in [
        "hello the world",
        "  spaces\n\n\tand ünïcödé 🦀",
        "it's 12345",
    ] {
        assert_eq!(tok.decode(&tok.encode(text, false, false), false), text);
    }
}

#[test]
fn bpe_qwen2_pretokenizer_splits_digits() {
    let (_, tok) = tiny_model(&TinyConfig::qwen3()).unwrap();
    // Each digit is its own piece, so "12" never merges even if a merge existed.
    let ids = tok.encode("12", false, false);
    assert_eq!(
        ids,
        vec![tok.token_id("1").unwrap(), tok.token_id("2").unwrap()]
    );
}

#[test]
fn bpe_matches_hf_tokenizers() {
    let bytes = tiny_gguf(&TinyConfig::qwen3()).unwrap();
    let ct = gguf_file::Content::read(&mut Cursor::new(&bytes)).unwrap();
    let ours = Tokenizer::from_gguf(&ct).unwrap();
    let hf = <tokenizers::Tokenizer as TokenizerFromGguf>::from_gguf(&ct).unwrap();
    for text in [
        "hello the world",
        "Hello World, hello   world!\n\n  the end ",
        "it's we'll they'RE 42 3.14 1234567",
        "tabs\tand\r\nnewlines\n\n\n   trailing   ",
        "ünïcödé — 日本語 🦀🚀 ∑∫",
        "",
    ] {
        let want = hf.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ours.encode(text, false, false), want, "text {text:?}");
    }
}
