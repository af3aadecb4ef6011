//! Tiny random models for tests: complete GGUF files (weights and tokenizer metadata) built
//! in memory, loaded through the same code path as real files.

use crate::error::Result;
use crate::tokenizer::byte_to_char;
use crate::{Model, Tokenizer};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use gguf_file::Value;
use std::io::Cursor;

/// Shape and options of a tiny model.
#[derive(Debug, Clone)]
pub struct TinyConfig {
    /// `gemma3` (SentencePiece vocabulary) or `qwen3` (byte-level BPE vocabulary).
    pub arch: &'static str,
    /// Hidden size (a multiple of 32 when quantizing).
    pub hidden: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head dimension (a multiple of 32 when quantizing).
    pub head_dim: usize,
    /// MLP inner size (a multiple of 32 when quantizing).
    pub ffn: usize,
    /// Sliding window of gemma3 local layers.
    pub window: usize,
    /// Weight type of the matrices (norms are always f32).
    pub dtype: GgmlDType,
    /// Seed of the weight generator.
    pub seed: u64,
    /// Adds `<tool_call>` and `</tool_call>` as user-defined tokens (as Qwen3's vocabulary
    /// has them), so a random model can open a call with one token.
    pub tool_tokens: bool,
}

impl TinyConfig {
    /// A 7-layer gemma3 (layer 5 global, the others local with window 5), Q8_0 weights.
    pub fn gemma3() -> Self {
        Self {
            arch: "gemma3",
            hidden: 64,
            n_layers: 7,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 32,
            ffn: 128,
            window: 5,
            dtype: GgmlDType::Q8_0,
            seed: 7,
            tool_tokens: false,
        }
    }

    /// A random orchestrator for policy-head tests: a 1-layer, 1-head qwen3 with `<tool_call>`
    /// tokens. The byte-level tiny vocabulary makes contexts long (a system prompt is about a
    /// thousand tokens), and attention is most of the work, hence one layer and one head.
    pub fn orchestrator() -> Self {
        Self {
            tool_tokens: true,
            n_layers: 1,
            n_heads: 1,
            n_kv_heads: 1,
            ..Self::qwen3()
        }
    }

    /// A 2-layer qwen3 with grouped-query attention, Q8_0 weights.
    pub fn qwen3() -> Self {
        Self {
            arch: "qwen3",
            hidden: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 32,
            ffn: 128,
            window: 0,
            dtype: GgmlDType::Q8_0,
            seed: 11,
            tool_tokens: false,
        }
    }
}

/// Deterministic xorshift generator for weights.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn tensor(&mut self, rows: usize, cols: usize, scale: f32) -> Result<Tensor> {
        let data: Vec<f32> = (0..rows * cols).map(|_| self.uniform() * scale).collect();
        Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
    }

    fn norm(&mut self, n: usize) -> Result<Tensor> {
        let data: Vec<f32> = (0..n).map(|_| 1.0 + 0.2 * self.uniform()).collect();
        Ok(Tensor::from_vec(data, n, &Device::Cpu)?)
    }
}

/// Tokens, scores and types of the tiny vocabulary, plus BPE merges for `gpt2`.
struct TinyVocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    merges: Vec<String>,
}

/// A SentencePiece vocabulary: specials, the 256 byte tokens and a few pieces.
fn spm_vocab() -> TinyVocab {
    let mut v = TinyVocab {
        tokens: vec![],
        scores: vec![],
        types: vec![],
        merges: vec![],
    };
    let mut push = |t: &str, score: f32, ty: i32| {
        v.tokens.push(t.to_string());
        v.scores.push(score);
        v.types.push(ty);
    };
    push("<pad>", 0.0, 3);
    push("<eos>", 0.0, 3);
    push("<bos>", 0.0, 3);
    push("<unk>", 0.0, 2);
    push("<start_of_turn>", 0.0, 3);
    push("<end_of_turn>", 0.0, 3);
    for b in 0..=255u8 {
        push(&format!("<0x{b:02X}>"), 0.0, 6);
    }
    let pieces = [
        "▁", "e", "t", "a", "o", "h", "l", "r", "s", "n", "i", "c", "w", "d", "▁t", "he", "▁the",
        "ll", "▁he", "llo", "▁w", "or", "ld", "▁wor", "▁world", "▁hello", "lo", "▁a", "▁c", "at",
        "▁cat", "▁▁",
    ];
    for (i, p) in pieces.iter().enumerate() {
        push(p, -(i as f32), 1);
    }
    v
}

/// A byte-level BPE vocabulary: the 256 byte characters, a few merges and specials.
fn bpe_vocab() -> TinyVocab {
    let mut v = TinyVocab {
        tokens: vec![],
        scores: vec![],
        types: vec![],
        merges: vec![],
    };
    for c in byte_to_char() {
        v.tokens.push(c.to_string());
        v.types.push(1);
    }
    let merges = [
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġt", "he"),
        ("l", "l"),
        ("ll", "o"),
        ("h", "ello"),
        ("e", "llo"),
        ("Ġ", "w"),
        ("o", "r"),
        ("Ġw", "or"),
        ("Ġwor", "ld"),
        ("l", "d"),
        ("Ġ", "Ġ"),
    ];
    for (l, r) in merges {
        v.merges.push(format!("{l} {r}"));
        let merged = format!("{l}{r}");
        if !v.tokens.contains(&merged) {
            v.tokens.push(merged);
            v.types.push(1);
        }
    }
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        v.tokens.push(s.to_string());
        v.types.push(3);
    }
    v.scores = vec![0.0; v.tokens.len()];
    v
}

/// Builds the GGUF bytes of a tiny random model.
pub fn tiny_gguf(cfg: &TinyConfig) -> Result<Vec<u8>> {
    let arch = cfg.arch;
    let gemma = arch == "gemma3";
    let mut vocab = if gemma { spm_vocab() } else { bpe_vocab() };
    if cfg.tool_tokens {
        for s in ["<tool_call>", "</tool_call>"] {
            vocab.tokens.push(s.to_string());
            vocab.types.push(4);
            vocab.scores.push(0.0);
        }
    }
    let n_vocab = vocab.tokens.len();
    let key = |k: &str| format!("{arch}.{k}");
    let strings =
        |xs: &[String]| Value::Array(xs.iter().map(|s| Value::String(s.clone())).collect());
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("embedding_length"), Value::U32(cfg.hidden as u32)),
        (key("block_count"), Value::U32(cfg.n_layers as u32)),
        (key("feed_forward_length"), Value::U32(cfg.ffn as u32)),
        (key("attention.head_count"), Value::U32(cfg.n_heads as u32)),
        (
            key("attention.head_count_kv"),
            Value::U32(cfg.n_kv_heads as u32),
        ),
        (key("attention.key_length"), Value::U32(cfg.head_dim as u32)),
        (
            key("attention.value_length"),
            Value::U32(cfg.head_dim as u32),
        ),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (key("rope.freq_base"), Value::F32(1_000_000.0)),
        (key("context_length"), Value::U32(4096)),
        ("tokenizer.ggml.tokens".into(), strings(&vocab.tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(vocab.scores.iter().map(|&s| Value::F32(s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.types.iter().map(|&t| Value::I32(t)).collect()),
        ),
    ];
    if gemma {
        meta.extend([
            (
                key("attention.sliding_window"),
                Value::U32(cfg.window as u32),
            ),
            ("tokenizer.ggml.model".into(), Value::String("llama".into())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
        ]);
    } else {
        let eos = vocab
            .tokens
            .iter()
            .position(|t| t == "<|im_end|>")
            .unwrap_or(0);
        meta.extend([
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
            ("tokenizer.ggml.merges".into(), strings(&vocab.merges)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos as u32)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ]);
    }

    let mut rng = Rng(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let (h, hd, ffn) = (cfg.hidden, cfg.head_dim, cfg.ffn);
    let matrix = |tensors: &mut Vec<(String, QTensor)>,
                  rng: &mut Rng,
                  name: String,
                  rows: usize,
                  cols: usize|
     -> Result<()> {
        let t = rng.tensor(rows, cols, (3.0 / cols as f32).sqrt())?;
        tensors.push((name, QTensor::quantize(&t, cfg.dtype)?));
        Ok(())
    };
    let norm = |tensors: &mut Vec<(String, QTensor)>,
                rng: &mut Rng,
                name: String,
                n: usize|
     -> Result<()> {
        tensors.push((name, QTensor::quantize(&rng.norm(n)?, GgmlDType::F32)?));
        Ok(())
    };
    matrix(
        &mut tensors,
        &mut rng,
        "token_embd.weight".into(),
        n_vocab,
        h,
    )?;
    for i in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        norm(&mut tensors, &mut rng, n("attn_norm"), h)?;
        matrix(&mut tensors, &mut rng, n("attn_q"), cfg.n_heads * hd, h)?;
        matrix(&mut tensors, &mut rng, n("attn_k"), cfg.n_kv_heads * hd, h)?;
        matrix(&mut tensors, &mut rng, n("attn_v"), cfg.n_kv_heads * hd, h)?;
        matrix(
            &mut tensors,
            &mut rng,
            n("attn_output"),
            h,
            cfg.n_heads * hd,
        )?;
        norm(&mut tensors, &mut rng, n("attn_q_norm"), hd)?;
        norm(&mut tensors, &mut rng, n("attn_k_norm"), hd)?;
        norm(&mut tensors, &mut rng, n("ffn_norm"), h)?;
        matrix(&mut tensors, &mut rng, n("ffn_gate"), ffn, h)?;
        matrix(&mut tensors, &mut rng, n("ffn_up"), ffn, h)?;
        matrix(&mut tensors, &mut rng, n("ffn_down"), h, ffn)?;
        if gemma {
            norm(&mut tensors, &mut rng, n("post_attention_norm"), h)?;
            norm(&mut tensors, &mut rng, n("post_ffw_norm"), h)?;
        }
    }
    norm(&mut tensors, &mut rng, "output_norm.weight".into(), h)?;
    if !gemma {
        matrix(&mut tensors, &mut rng, "output.weight".into(), n_vocab, h)?;
    }

    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &meta_refs, &tensor_refs)?;
    Ok(buf.into_inner())
}

/// Builds a tiny random model and its tokenizer on the CPU.
pub fn tiny_model(cfg: &TinyConfig) -> Result<(Model, Tokenizer)> {
    let bytes = tiny_gguf(cfg)?;
    let mut reader = Cursor::new(bytes);
    let ct = gguf_file::Content::read(&mut reader)?;
    let tokenizer = Tokenizer::from_gguf(&ct)?;
    let model = Model::from_gguf(&ct, &mut reader, &Device::Cpu)?;
    Ok((model, tokenizer))
}
