//! The native runtime on the continuous-batching scheduler: eviction under a KV budget and
//! recompute give the same greedy results as ample memory, the budget is never exceeded, and a
//! shared prefix is prefilled once and continued by reference with the same results.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::head::Sampling;
use crate::runtime::NativeInput;
use crate::runtime::{NativeRuntime, RuntimeLimits};
use crate::scheduler::BatchLimits;
use crate::testing::{tiny_model, TinyConfig};

/// Episodes of `turns` turns: each turn's context is the last one's, the text it generated
/// (re-tokenized) and a few "tool result" tokens; between turns the episode waits, as on a
/// tool. Each context starts with `prefix`, declared shared when `share`. Returns every turn's
/// text, per episode.
async fn episodes(
    rt: &Arc<NativeRuntime>,
    n: usize,
    turns: usize,
    prefix: &[u32],
    share: bool,
) -> Vec<Vec<String>> {
    let mut tasks = Vec::new();
    for e in 0..n {
        let rt = rt.clone();
        let prefix = prefix.to_vec();
        tasks.push(tokio::spawn(async move {
            let seq = rt.open();
            let mut context = prefix.clone();
            context.extend((0..12 + e % 5).map(|i| (40 + 7 * e + 3 * i) as u32 % 250 + 5));
            let mut texts = Vec::new();
            for turn in 0..turns {
                let out = rt
                    .turn(
                        seq,
                        NativeInput {
                            tokens: context.clone(),
                            shared_prefix: if share { prefix.len() } else { 0 },
                            max_new: 6 + (e + turn) % 4,
                            stop: std::sync::Arc::from([]),
                            sampling: Sampling::GREEDY,
                            policy: None,
                        },
                    )
                    .await
                    .expect("a turn");
                context.extend(rt.tokenizer().encode(&out.text, false, false));
                context.extend((0..4).map(|i| (100 + 11 * turn + i + e) as u32 % 250 + 5));
                texts.push(out.text);
                tokio::time::sleep(Duration::from_millis((5 * ((e * 7 + turn) % 6)) as u64)).await;
            }
            rt.release(seq);
            texts
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn runtime(kv_cache_bytes: u64) -> Arc<NativeRuntime> {
    let (model, tok) = tiny_model(&TinyConfig::gemma3()).unwrap();
    NativeRuntime::start(
        model,
        tok,
        RuntimeLimits {
            batch: BatchLimits {
                max_seqs: 4,
                max_batched_tokens: 16,
            },
            kv_cache_bytes,
        },
    )
}

/// Bytes one position takes in the tiny gemma3's cache.
fn bytes_per_token() -> u64 {
    let (model, _) = tiny_model(&TinyConfig::gemma3()).unwrap();
    model.new_cache().bytes_per_position() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_and_recompute_give_the_same_greedy_results_within_the_budget() {
    let ample = runtime(1 << 30);
    let expected = episodes(&ample, 10, 3, &[], false).await;
    assert_eq!(ample.stats().evictions.load(Ordering::Relaxed), 0);

    // Room for about two sequences at their longest: the others' caches must go.
    let budget = 2 * 80 * bytes_per_token();
    let tight = runtime(budget);
    let got = episodes(&tight, 10, 3, &[], false).await;
    let s = tight.stats();
    assert_eq!(got, expected, "eviction changed greedy results");
    assert!(
        s.evictions.load(Ordering::Relaxed) > 0,
        "the budget never forced an eviction: the test proves nothing"
    );
    let peak = s.kv_bytes_peak.load(Ordering::Relaxed);
    assert!(
        peak <= budget,
        "KV bytes peaked at {peak}, over the budget {budget}"
    );
    assert!(peak > 0);
    assert!(
        s.prefill_tokens.load(Ordering::Relaxed)
            > ample.stats().prefill_tokens.load(Ordering::Relaxed),
        "evicted sequences must have recomputed their context"
    );
    // Everything released: no KV left. Releases are commands the scheduler thread takes in its own
    // time, so wait for the count to reach zero rather than for a fixed while.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.kv_bytes.load(Ordering::Relaxed) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "KV bytes still held after every release: {}",
            s.kv_bytes.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prefix_is_prefilled_once_and_changes_nothing() {
    let prefix: Vec<u32> = std::iter::once(2)
        .chain((0..23).map(|i| (17 + 5 * i) % 250 + 5))
        .collect();
    let shared = runtime(1 << 30);
    let got = episodes(&shared, 8, 2, &prefix, true).await;
    let s = shared.stats();
    assert_eq!(s.prefix_prefills.load(Ordering::Relaxed), 1);
    assert_eq!(s.prefix_tokens.load(Ordering::Relaxed), prefix.len() as u64);
    assert_eq!(
        s.prefix_hits.load(Ordering::Relaxed),
        8,
        "every sequence starts from it"
    );

    // The same contexts without sharing: each sequence prefills the prefix itself.
    let alone = runtime(1 << 30);
    let expected = episodes(&alone, 8, 2, &prefix, false).await;
    assert_eq!(
        got, expected,
        "continuing a shared prefix changed the results"
    );
    assert_eq!(alone.stats().prefix_prefills.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_context_too_large_for_the_budget_fails_its_turn_with_a_reason() {
    let rt = runtime(10 * bytes_per_token());
    let out = rt
        .complete(NativeInput {
            tokens: (0..40).map(|i| i % 200 + 5).collect(),
            shared_prefix: 0,
            max_new: 4,
            stop: std::sync::Arc::from([]),
            sampling: Sampling::GREEDY,
            policy: None,
        })
        .await;
    let err = out.unwrap_err();
    assert!(err.contains("kv_cache_bytes"), "{err}");
    // The runtime goes on serving turns that fit.
    let ok = rt
        .complete(NativeInput {
            tokens: vec![2, 10, 11],
            shared_prefix: 0,
            max_new: 3,
            stop: std::sync::Arc::from([]),
            sampling: Sampling::GREEDY,
            policy: None,
        })
        .await
        .unwrap();
    assert!(ok.completion_tokens >= 1);
}
