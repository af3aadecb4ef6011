//! Micro-benchmarks of the per-turn pieces: the policy kernels, Hermes parsing, the result cache.
//! `cargo bench --bench micro`. Whole-engine figures come from `tutti bench`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tutti_engine::config::CacheConfig;
use tutti_engine::Action;
use tutti_engine::{CachedResult, ResultCache};
use tutti_engine::{Request, Response};

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    for n in [12usize, 262_144] {
        let row: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let mut work = row.clone();
        g.throughput(Throughput::Bytes((n * 4) as u64));
        g.bench_function(format!("softmax_sample/{n}"), |b| {
            b.iter(|| {
                work.copy_from_slice(&row);
                tutti_kernels::softmax_inplace(&mut work);
                black_box(tutti_kernels::sample_index(&work, 0.37))
            })
        });
    }
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let text = Action {
        tool: "answer".into(),
        alias: "answer-math-2".into(),
    }
    .to_hermes();
    c.bench_function("parse_hermes", |b| {
        b.iter(|| black_box(Action::parse_hermes(black_box(&text))))
    });
}

fn cache(c: &mut Criterion) {
    let cache = ResultCache::new(&CacheConfig::default()).unwrap();
    let requests: Vec<Request> = (0..1024)
        .map(|i| Request {
            tool: "search".into(),
            model: "gpt-5".into(),
            prompt: format!("Problem: What is {i} + 1?"),
            max_tokens: 1024,
            temperature: 0.0,
        })
        .collect();
    let value = CachedResult {
        response: Arc::new(Response {
            text: "Documents: ...".into(),
            input_tokens: 100,
            output_tokens: 20,
            billed_seconds: 0.0,
        }),
        cost_usd: 0.001,
    };
    for r in &requests {
        cache.put(r.key("gpt-5"), value.clone(), None);
    }
    let mut i = 0;
    c.bench_function("cache_key_and_hit", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            black_box(cache.get(requests[i].key("gpt-5")))
        })
    });
}

criterion_group!(micro, kernels, parsing, cache);
criterion_main!(micro);
