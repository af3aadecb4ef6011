//! Selective batching must not change results: a step mixing prefill chunks and decode tokens
//! of sequences of different lengths gives the same logits as running each sequence alone,
//! one token at a time.

use crate::testing::{tiny_model, TinyConfig};
use crate::{Model, SeqStep};

/// Logits of every position of `tokens`, run alone and one token per step.
fn one_at_a_time(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    tokens
        .iter()
        .map(|t| {
            let out = model
                .step(
                    &mut [SeqStep {
                        tokens: std::slice::from_ref(t),
                        cache: &mut cache,
                    }],
                    false,
                )
                .unwrap();
            out.last.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

/// Runs all sequences together: sequence `i` joins at step `i`, and then takes chunks whose
/// sizes cycle through `chunks` (offset by `i`), so most steps mix prefills and decodes.
/// Returns the logits of every position of every sequence.
fn batched(model: &Model, seqs: &[Vec<u32>], chunks: &[usize]) -> Vec<Vec<Vec<f32>>> {
    let mut caches: Vec<_> = seqs.iter().map(|_| model.new_cache()).collect();
    let mut done = vec![0usize; seqs.len()];
    let mut logits: Vec<Vec<Vec<f32>>> = seqs.iter().map(|_| Vec::new()).collect();
    let mut step = 0;
    while done.iter().zip(seqs).any(|(d, s)| *d < s.len()) {
        let mut members = Vec::new();
        let mut steps = Vec::new();
        for (i, cache) in caches.iter_mut().enumerate() {
            if step < i || done[i] == seqs[i].len() {
                continue;
            }
            let n = chunks[(step + i) % chunks.len()].min(seqs[i].len() - done[i]);
            members.push((i, n));
            steps.push(SeqStep {
                tokens: &seqs[i][done[i]..done[i] + n],
                cache,
            });
        }
        if !steps.is_empty() {
            let out = model.step(&mut steps, true).unwrap();
            let all = out.all.unwrap().to_vec2::<f32>().unwrap();
            let last = out.last.to_vec2::<f32>().unwrap();
            let mut row = 0;
            for (k, &(i, n)) in members.iter().enumerate() {
                logits[i].extend(all[row..row + n].iter().cloned());
                row += n;
                assert_eq!(
                    last[k],
                    all[row - 1],
                    "last logits are the chunk's last row"
                );
                done[i] += n;
            }
        }
        step += 1;
    }
    for (cache, s) in caches.iter().zip(seqs) {
        assert_eq!(cache.len(), s.len());
    }
    logits
}

/// Largest absolute difference between batched and one-at-a-time logits.
fn max_abs_diff(model: &Model, seqs: &[Vec<u32>], chunks: &[usize]) -> f32 {
    let got = batched(model, seqs, chunks);
    let mut max = 0f32;
    for (seq, rows) in seqs.iter().zip(&got) {
        let want = one_at_a_time(model, seq);
        assert_eq!(rows.len(), want.len());
        for (a, b) in rows.iter().zip(&want) {
            for (x, y) in a.iter().zip(b) {
                max = max.max((x - y).abs());
            }
        }
    }
    max
}

/// Deterministic pseudo-random token sequences of the given lengths.
fn sequences(lengths: &[usize], vocab: usize, seed: u32) -> Vec<Vec<u32>> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state % vocab as u32
                })
                .collect()
        })
        .collect()
}

#[test]
fn tiny_qwen3_batch_matches_single() {
    let (model, _) = tiny_model(&TinyConfig::qwen3()).unwrap();
    let seqs = sequences(&[17, 5, 11, 1, 23], model.info().vocab, 1);
    let diff = max_abs_diff(&model, &seqs, &[6, 1, 3, 1, 1, 4]);
    eprintln!("tiny qwen3 max abs diff {diff:e}");
    assert!(diff < 1e-3, "max abs diff {diff}");
}

#[test]
fn tiny_gemma3_batch_matches_single() {
    // Window 5 with chunks up to 7 tokens exercises the sliding-window mask inside chunks.
    let (model, _) = tiny_model(&TinyConfig::gemma3()).unwrap();
    let seqs = sequences(&[19, 4, 12, 1, 26], model.info().vocab, 2);
    let diff = max_abs_diff(&model, &seqs, &[7, 1, 2, 1, 5, 1]);
    eprintln!("tiny gemma3 max abs diff {diff:e}");
    assert!(diff < 1e-3, "max abs diff {diff}");
}

#[test]
fn reference_gemma3_batch_matches_single() {
    let Some((model, tok)) = super::common::reference() else {
        return;
    };
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village by the sea, there lived an old fisherman",
        "1, 2, 3,",
    ];
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, true, true)).collect();
    let diff = max_abs_diff(model, &seqs, &[5, 1, 3, 1]);
    eprintln!("reference gemma3 max abs diff {diff:e}");
    assert!(diff < 1e-3, "max abs diff {diff}");
}

#[test]
fn truncate_and_recompute_gives_same_logits() {
    let (model, _) = tiny_model(&TinyConfig::gemma3()).unwrap();
    let seq = &sequences(&[12], model.info().vocab, 3)[0];
    let mut cache = model.new_cache();
    let first = model
        .step(
            &mut [SeqStep {
                tokens: seq,
                cache: &mut cache,
            }],
            true,
        )
        .unwrap();
    let want = first.all.unwrap().to_vec2::<f32>().unwrap();
    assert!(cache.size_bytes() >= cache.used_bytes());
    assert_eq!(cache.used_bytes(), 12 * cache.bytes_per_position());
    cache.truncate(7);
    let again = model
        .step(
            &mut [SeqStep {
                tokens: &seq[7..],
                cache: &mut cache,
            }],
            true,
        )
        .unwrap();
    let got = again.all.unwrap().to_vec2::<f32>().unwrap();
    for (a, b) in got.iter().zip(&want[7..]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
    let fork = cache.fork().unwrap();
    assert_eq!(fork.len(), 12);
    cache.clear();
    assert_eq!(cache.size_bytes(), 0);
}

/// Logits of `suffix` after `prefix`, with the prefix in the same cache or in a frozen cache
/// continued by reference; the shared cache is also read by a second sequence in the same step.
#[test]
fn continuing_a_shared_prefix_gives_the_same_logits() {
    use crate::KvCache;
    use std::sync::Arc;
    for cfg in [TinyConfig::gemma3(), TinyConfig::qwen3()] {
        let (model, _) = tiny_model(&cfg).unwrap();
        let seqs = sequences(&[9, 6, 4], model.info().vocab, 4);
        let (prefix, a, b) = (&seqs[0], &seqs[1], &seqs[2]);
        let logits = |cache: &mut KvCache, tokens: &[u32]| {
            let out = model.step(&mut [SeqStep { tokens, cache }], true).unwrap();
            out.all.unwrap().to_vec2::<f32>().unwrap()
        };
        let mut plain = model.new_cache();
        logits(&mut plain, prefix);
        let want_a = logits(&mut plain, a);
        let mut frozen = model.new_cache();
        logits(&mut frozen, prefix);
        let frozen = Arc::new(frozen);
        let mut ca = KvCache::with_prefix(frozen.clone());
        let mut cb = KvCache::with_prefix(frozen.clone());
        assert_eq!((ca.len(), ca.prefix_len(), ca.used_bytes()), (9, 9, 0));
        let out = model
            .step(
                &mut [
                    SeqStep {
                        tokens: a,
                        cache: &mut ca,
                    },
                    SeqStep {
                        tokens: b,
                        cache: &mut cb,
                    },
                ],
                true,
            )
            .unwrap();
        let got = out.all.unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got[..a.len()], want_a[..], "{}", cfg.arch);
        assert_eq!(ca.used_bytes(), a.len() * ca.bytes_per_position());
        assert_eq!(frozen.len(), 9, "the shared prefix is never written");
        // Cutting into the prefix drops it: the cache starts over.
        ca.truncate(3);
        assert_eq!((ca.len(), ca.prefix_len()), (0, 0));
    }
}
