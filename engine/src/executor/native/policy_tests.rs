//! The native policy head over many episodes: a tiny random-weights qwen3 orchestrator drives
//! the whole engine (the backends are the SIMULATION of configs/toolorchestra-sim.toml), and
//! every call it makes must be a valid call of the catalog, within the task's remaining budget,
//! with a task's preference raising its alias's share.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::catalog::Catalog;
use crate::config::{Config, ExecutorKind};
use crate::engine::{Engine, EngineOptions};
use crate::task::{Status, Task, TaskResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tutti_model::testing::{tiny_gguf, TinyConfig};

/// Episodes per run: one run without preference, one with; 1,000 episodes in all.
const EPISODES: usize = 500;
const LIKED: &str = "search-3";

const TEMPLATE: &str = "{%- for m in messages -%}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor -%}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}";

fn config(model: &Path) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/toolorchestra-sim.toml");
    let mut cfg = Config::load(&path).unwrap();
    let o = &mut cfg.orchestrator;
    o.executor = ExecutorKind::Native;
    o.model = Some(model.to_string_lossy().into_owned());
    o.chat_template = Some(TEMPLATE.into());
    o.max_tokens = 8;
    o.temperature = 1.0;
    o.max_turns = 4;
    o.max_live_tasks = 256;
    o.max_seqs = 128;
    o.max_batched_tokens = 4096;
    // Short descriptions keep the system prompt (spelled byte by byte) shorter.
    for t in &mut cfg.tools {
        t.description = format!("{} tool", t.name);
    }
    cfg
}

/// Budgets from nothing to about two of the dearest calls, so the mask matters often.
fn budget(i: usize) -> f64 {
    0.01 * ((i * 37) % 100) as f64 / 100.0
}

async fn run(cfg: &Config, preference: &[(String, f64)]) -> (Vec<TaskResult>, Engine) {
    let engine = Engine::new(cfg, EngineOptions::default()).unwrap();
    let tasks: Vec<Task> = (0..EPISODES)
        .map(|i| Task {
            id: format!("t{i}"),
            prompt: format!("What is {i} plus {}?", i % 13),
            preference: preference.to_vec(),
            budget_usd: Some(budget(i)),
            reference: Some(format!("{}", i + i % 13)),
            ..Default::default()
        })
        .collect();
    let (tx, mut rx) = mpsc::channel(EPISODES);
    let collect = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(r) = rx.recv().await {
            out.push(r);
        }
        out
    });
    engine
        .run(futures::stream::iter(tasks), tx, CancellationToken::new())
        .await;
    (collect.await.unwrap(), engine)
}

fn expected_cost(catalog: &Catalog) -> HashMap<(String, String), f64> {
    catalog
        .actions
        .iter()
        .map(|a| {
            (
                (a.tool_name.to_string(), a.alias.to_string()),
                a.expected_cost_usd,
            )
        })
        .collect()
}

/// Checks every episode; returns (calls, calls naming `LIKED`, calls where the budget masked
/// some alias of the tool called).
fn check(results: &[TaskResult], catalog: &Catalog) -> (usize, usize, usize) {
    assert_eq!(results.len(), EPISODES);
    let costs = expected_cost(catalog);
    let (mut calls, mut liked, mut masked) = (0, 0, 0);
    for r in results {
        let i: usize = r.id[1..].parse().unwrap();
        assert_ne!(r.status, Status::Failed, "{}: {:?}", r.id, r.error);
        // Every turn's reply was a valid call: each turn made exactly one call.
        assert_eq!(
            r.calls.len(),
            r.turns as usize,
            "{}: {:?}",
            r.id,
            r.trajectory
        );
        let mut spent = 0.0;
        for c in &r.calls {
            let key = (c.tool.to_string(), c.alias.to_string());
            let cost = *costs
                .get(&key)
                .unwrap_or_else(|| panic!("{}: {key:?} is not a catalog call", r.id));
            let left = budget(i) - spent;
            assert!(
                cost <= left + 1e-12,
                "{}: {key:?} expected to cost {cost} with {left} left",
                r.id
            );
            let dearest = costs
                .iter()
                .filter(|((t, _), _)| *t == key.0)
                .map(|(_, &c)| c)
                .fold(0.0, f64::max);
            if dearest > left {
                masked += 1;
            }
            calls += 1;
            if &*c.alias == LIKED {
                liked += 1;
            }
            spent += c.cost_usd;
        }
    }
    (calls, liked, masked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_orchestrator_makes_only_valid_affordable_calls_and_follows_preference() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-qwen3.gguf");
    std::fs::write(&model, tiny_gguf(&TinyConfig::orchestrator()).unwrap()).unwrap();
    let cfg = config(&model);

    let t0 = std::time::Instant::now();
    let (neutral, engine) = run(&cfg, &[]).await;
    println!("run: {:?}", t0.elapsed());
    let (calls, liked_base, masked) = check(&neutral, engine.catalog());
    let stats = engine.native_stats().expect("a native orchestrator");
    let grammar_calls = stats.grammar_calls.load(Ordering::Relaxed);
    let steps = stats.grammar_steps.load(Ordering::Relaxed);
    let rows = stats.grammar_rows.load(Ordering::Relaxed);
    println!(
        "prefill {} decode {} prefix {}",
        stats.prefill_tokens.load(Ordering::Relaxed),
        stats.decode_tokens.load(Ordering::Relaxed),
        stats.prefix_tokens.load(Ordering::Relaxed)
    );
    println!(
        "neutral: {calls} calls over {EPISODES} episodes ({masked} with the budget masking an \
         alias), {liked_base} to {LIKED}; {grammar_calls} calls completed by the grammar, \
         {steps} constrained tokens, {rows} rows computed for them"
    );
    assert!(calls >= EPISODES, "too few calls to say anything: {calls}");
    assert!(
        masked > calls / 10,
        "the budget masked too rarely: {masked}"
    );
    assert!(grammar_calls as usize >= calls);
    assert!(
        rows < steps * 64,
        "grammar steps computed the vocabulary's rows"
    );

    let (preferred, engine) = run(&cfg, &[(LIKED.to_string(), 1.0)]).await;
    let (calls_pref, liked_pref, _) = check(&preferred, engine.catalog());
    let base = liked_base as f64 / calls as f64;
    let pref = liked_pref as f64 / calls_pref as f64;
    println!("share of {LIKED}: {base:.3} without preference, {pref:.3} with weight 1.0");
    assert!(
        pref >= base + 0.15,
        "preference did not raise {LIKED}'s share by 0.15: {base:.3} -> {pref:.3}"
    );
}
