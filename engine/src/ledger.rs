//! Cost and latency accounting: what each call and each task cost, and the running totals of a job.
//!
//! An episode keeps its own [`TaskLedger`] (no sharing on the hot path) and folds it into the
//! job-wide [`Ledger`] once, when it ends. Backends' batch counts go straight to the [`Ledger`].

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::task::{CallRecord, Status};

/// How a call was served. Every call that got an answer is exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Sent to the backend and billed to this caller.
    Billed,
    /// Answered from the result cache.
    Cache,
    /// Joined an identical call already in flight; that call is billed to its first caller.
    Joined,
}

/// Prices of one backend (or of the orchestrator's own tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Pricing {
    pub in_per_mtok: f64,
    pub out_per_mtok: f64,
    pub per_call: f64,
    pub per_second: f64,
}

impl Pricing {
    /// Dollars for one call.
    pub(crate) fn cost(&self, input_tokens: u64, output_tokens: u64, seconds: f64) -> f64 {
        self.in_per_mtok * input_tokens as f64 / 1e6
            + self.out_per_mtok * output_tokens as f64 / 1e6
            + self.per_call
            + self.per_second * seconds
    }
}

/// The accounts of one episode.
#[derive(Debug, Default, Clone)]
pub(crate) struct TaskLedger {
    pub calls: Vec<CallRecord>,
    /// Everything billed to the task: backend calls and the orchestrator's own tokens.
    pub cost_usd: f64,
    /// Dollars not billed thanks to the cache or a collapsed in-flight call.
    pub saved_usd: f64,
    pub orchestrator_tokens_in: u64,
    pub orchestrator_tokens_out: u64,
    pub orchestrator_cost_usd: f64,
    pub failed_calls: u32,
    /// Calls answered from the cache, and calls that joined an identical call in flight.
    pub cache_hits: u32,
    pub joined_calls: u32,
}

impl TaskLedger {
    /// Accounts one orchestrator turn.
    pub(crate) fn record_turn(
        &mut self,
        prompt_tokens: u64,
        completion_tokens: u64,
        price: &Pricing,
    ) {
        let cost = price.cost(prompt_tokens, completion_tokens, 0.0) - price.per_call;
        self.orchestrator_tokens_in += prompt_tokens;
        self.orchestrator_tokens_out += completion_tokens;
        self.orchestrator_cost_usd += cost;
        self.cost_usd += cost;
    }

    /// Accounts one backend call served as `served`. `full_cost` is what the call costs when
    /// billed; a call served without billing (cache, joined) is recorded at zero, marked `cached`,
    /// and its full cost counts as saved.
    pub(crate) fn record_call(&mut self, mut call: CallRecord, full_cost: f64, served: Served) {
        call.cached = served != Served::Billed;
        match served {
            Served::Billed => {
                call.cost_usd = full_cost;
                self.cost_usd += full_cost;
            }
            Served::Cache | Served::Joined => {
                call.cost_usd = 0.0;
                self.saved_usd += full_cost;
                if served == Served::Cache {
                    self.cache_hits += 1;
                } else {
                    self.joined_calls += 1;
                }
            }
        }
        self.calls.push(call);
    }

    pub(crate) fn record_failed_call(&mut self) {
        self.failed_calls += 1;
    }

    /// What is left of `budget` (infinite without one).
    pub(crate) fn remaining(&self, budget: Option<f64>) -> f64 {
        budget.map_or(f64::INFINITY, |b| b - self.cost_usd)
    }

    pub(crate) fn orchestrator_tokens(&self) -> u64 {
        self.orchestrator_tokens_in + self.orchestrator_tokens_out
    }
}

/// An `f64` that many threads add to.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn add(&self, v: f64) {
        if v != 0.0 {
            let _ = self
                .0
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    Some((f64::from_bits(bits) + v).to_bits())
                });
        }
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Per-backend counters, indexed like the catalog's backends.
#[derive(Debug, Default)]
struct BackendCounters {
    /// Calls that reached the coalescer (billed ones plus those that joined an identical call).
    requests: AtomicU64,
    /// `call_batch` invocations.
    batches: AtomicU64,
    /// Requests actually sent in those batches (failed ones included), counted as each batch is
    /// sent.
    sent: AtomicU64,
    failures: AtomicU64,
    /// Requests sent again after a retryable failure (429, 5xx, timeout, reset).
    retries: AtomicU64,
    /// Times the circuit breaker opened.
    breaker_opens: AtomicU64,
    /// Calls served by the fallback alias because this backend's breaker was open.
    fallbacks: AtomicU64,
}

/// Job-wide totals, shared by every episode and coalescer of an engine.
#[derive(Debug)]
pub struct Ledger {
    backends: Vec<(Arc<str>, BackendCounters)>,
    tasks: [AtomicU64; 5],
    turns: AtomicU64,
    billed_calls: AtomicU64,
    cache_hits: AtomicU64,
    joined_calls: AtomicU64,
    /// The distinct request keys of every call made, when counted (benchmarks): what the cache
    /// promises is that cacheable calls are billed once per distinct request. Off by default, as it
    /// grows with the job.
    distinct: Option<Mutex<HashSet<u128>>>,
    failed_calls: AtomicU64,
    cost_usd: AtomicF64,
    saved_usd: AtomicF64,
    orchestrator_tokens: AtomicU64,
    orchestrator_cost_usd: AtomicF64,
    correct: AtomicU64,
    graded: AtomicU64,
    /// Calls and dollars per alias, folded in as each task ends (a lock per task, not per call).
    aliases: Mutex<BTreeMap<Arc<str>, AliasSummary>>,
}

/// The calls made through one alias and what they cost.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AliasSummary {
    /// Every call that got an answer.
    pub calls: u64,
    /// Calls served from the cache or by joining an identical call in flight.
    pub cached: u64,
    pub cost_usd: f64,
}

impl Ledger {
    pub fn new(backend_names: &[Arc<str>]) -> Ledger {
        Ledger::with_distinct(backend_names, false)
    }

    /// A ledger that also counts distinct requests (`unique_calls`) when `distinct` is set.
    pub(crate) fn with_distinct(backend_names: &[Arc<str>], distinct: bool) -> Ledger {
        Ledger {
            backends: backend_names
                .iter()
                .map(|n| (n.clone(), BackendCounters::default()))
                .collect(),
            tasks: Default::default(),
            turns: AtomicU64::new(0),
            billed_calls: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            joined_calls: AtomicU64::new(0),
            distinct: distinct.then(|| Mutex::new(HashSet::new())),
            failed_calls: AtomicU64::new(0),
            cost_usd: AtomicF64::default(),
            saved_usd: AtomicF64::default(),
            orchestrator_tokens: AtomicU64::new(0),
            orchestrator_cost_usd: AtomicF64::default(),
            correct: AtomicU64::new(0),
            graded: AtomicU64::new(0),
            aliases: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether distinct requests are counted: callers then report each call's key.
    pub(crate) fn counts_distinct(&self) -> bool {
        self.distinct.is_some()
    }

    /// A call was made with this request key (counted only when [`Ledger::counts_distinct`]).
    pub(crate) fn record_request_key(&self, key: u128) {
        if let Some(d) = &self.distinct {
            d.lock().insert(key);
        }
    }

    /// A coalescer sends one batch of `sent` distinct requests (counted as it is sent).
    pub(crate) fn record_sent(&self, backend: usize, sent: usize) {
        let c = &self.backends[backend].1;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.sent.fetch_add(sent as u64, Ordering::Relaxed);
    }

    /// A batch has ended: it served `served` callers, and `failures` of its requests failed.
    pub(crate) fn record_batch(&self, backend: usize, served: usize, failures: usize) {
        let c = &self.backends[backend].1;
        c.requests.fetch_add(served as u64, Ordering::Relaxed);
        c.failures.fetch_add(failures as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_retry(&self, backend: usize) {
        self.backends[backend]
            .1
            .retries
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_breaker_open(&self, backend: usize) {
        self.backends[backend]
            .1
            .breaker_opens
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_fallback(&self, backend: usize) {
        self.backends[backend]
            .1
            .fallbacks
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Folds a finished episode into the totals.
    pub(crate) fn record_task(
        &self,
        status: Status,
        turns: u32,
        t: &TaskLedger,
        correct: Option<bool>,
    ) {
        self.tasks[status as usize].fetch_add(1, Ordering::Relaxed);
        self.turns.fetch_add(turns as u64, Ordering::Relaxed);
        let (hits, joined) = (t.cache_hits as u64, t.joined_calls as u64);
        self.cache_hits.fetch_add(hits, Ordering::Relaxed);
        self.joined_calls.fetch_add(joined, Ordering::Relaxed);
        self.billed_calls
            .fetch_add(t.calls.len() as u64 - hits - joined, Ordering::Relaxed);
        self.failed_calls
            .fetch_add(t.failed_calls as u64, Ordering::Relaxed);
        self.cost_usd.add(t.cost_usd);
        self.saved_usd.add(t.saved_usd);
        self.orchestrator_tokens
            .fetch_add(t.orchestrator_tokens(), Ordering::Relaxed);
        self.orchestrator_cost_usd.add(t.orchestrator_cost_usd);
        if let Some(ok) = correct {
            self.graded.fetch_add(1, Ordering::Relaxed);
            self.correct.fetch_add(ok as u64, Ordering::Relaxed);
        }
        if !t.calls.is_empty() {
            let mut aliases = self.aliases.lock();
            for c in &t.calls {
                let a = aliases.entry(c.alias.clone()).or_default();
                a.calls += 1;
                a.cached += c.cached as u64;
                a.cost_usd += c.cost_usd;
            }
        }
    }

    /// Calls and dollars per alias so far, by alias name.
    pub fn aliases(&self) -> Vec<(String, AliasSummary)> {
        self.aliases
            .lock()
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// A consistent-enough copy of the totals for reports.
    pub fn summary(&self) -> LedgerSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let backends: Vec<BackendSummary> = self
            .backends
            .iter()
            .map(|(name, c)| BackendSummary {
                backend: name.to_string(),
                requests: get(&c.requests),
                sent: get(&c.sent),
                batches: get(&c.batches),
                failures: get(&c.failures),
                retries: get(&c.retries),
                breaker_opens: get(&c.breaker_opens),
                fallbacks: get(&c.fallbacks),
            })
            .collect();
        let requests: u64 = backends.iter().map(|b| b.requests).sum();
        let batches: u64 = backends.iter().map(|b| b.batches).sum();
        LedgerSummary {
            tasks: Status::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), get(&self.tasks[*s as usize])))
                .collect(),
            turns: get(&self.turns),
            billed_calls: get(&self.billed_calls),
            cache_hits: get(&self.cache_hits),
            joined_calls: get(&self.joined_calls),
            unique_calls: self.distinct.as_ref().map(|d| d.lock().len() as u64),
            failed_calls: get(&self.failed_calls),
            cost_usd: self.cost_usd.get(),
            saved_usd: self.saved_usd.get(),
            orchestrator_tokens: get(&self.orchestrator_tokens),
            orchestrator_cost_usd: self.orchestrator_cost_usd.get(),
            graded: get(&self.graded),
            correct: get(&self.correct),
            coalescing_factor: if batches == 0 {
                0.0
            } else {
                requests as f64 / batches as f64
            },
            backends,
        }
    }
}

/// The ledger's totals, as reports and `--json` print them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LedgerSummary {
    /// Finished tasks per status.
    pub tasks: std::collections::BTreeMap<String, u64>,
    pub turns: u64,
    /// Calls sent to a backend and billed. With `cache_hits` and `joined_calls`: every call that
    /// got an answer, each counted once.
    pub billed_calls: u64,
    /// Calls answered from the result cache.
    pub cache_hits: u64,
    /// Calls that joined an identical call in flight (billed once, to that call's first caller).
    pub joined_calls: u64,
    /// Distinct requests among the calls made, when the engine counts them (benchmarks). With the
    /// cache on and nothing evicted or expired, cacheable calls make `billed_calls` equal this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_calls: Option<u64>,
    pub failed_calls: u64,
    pub cost_usd: f64,
    pub saved_usd: f64,
    pub orchestrator_tokens: u64,
    pub orchestrator_cost_usd: f64,
    pub graded: u64,
    pub correct: u64,
    /// Calls served per backend batch (collapsed in-flight duplicates count as served).
    pub coalescing_factor: f64,
    pub backends: Vec<BackendSummary>,
}

impl LedgerSummary {
    #[cfg(test)]
    pub(crate) fn finished(&self) -> u64 {
        self.tasks.values().sum()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendSummary {
    pub backend: String,
    /// Calls that reached the coalescer, collapsed duplicates included.
    pub requests: u64,
    /// Requests sent to the backend, failed ones included.
    pub sent: u64,
    pub batches: u64,
    pub failures: u64,
    pub retries: u64,
    pub breaker_opens: u64,
    pub fallbacks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallRecord {
        CallRecord {
            tool: "search".into(),
            alias: "search-1".into(),
            backend: "gpt-5".into(),
            cached: false,
            input_tokens: 1000,
            output_tokens: 200,
            cost_usd: 0.0,
            latency_ms: 5,
        }
    }

    #[test]
    fn pricing_adds_tokens_calls_and_seconds() {
        let p = Pricing {
            in_per_mtok: 1.25,
            out_per_mtok: 10.0,
            per_call: 0.01,
            per_second: 0.5,
        };
        let c = p.cost(2_000_000, 100_000, 2.0);
        assert!((c - (2.5 + 1.0 + 0.01 + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn cached_calls_cost_nothing_and_count_as_saved() {
        let mut t = TaskLedger::default();
        let p = Pricing {
            in_per_mtok: 1.25,
            out_per_mtok: 10.0,
            ..Default::default()
        };
        let full = p.cost(1000, 200, 0.0);
        t.record_call(call(), full, Served::Billed);
        t.record_call(call(), full, Served::Cache);
        assert!(t.calls[1].cached);
        assert!((t.cost_usd - full).abs() < 1e-15);
        assert!((t.saved_usd - full).abs() < 1e-15);
        assert_eq!(t.calls[1].cost_usd, 0.0);
        assert_eq!(t.calls[0].cost_usd, full);
    }

    #[test]
    fn orchestrator_tokens_are_billed_and_reduce_the_budget() {
        let mut t = TaskLedger::default();
        let p = Pricing {
            in_per_mtok: 0.2,
            out_per_mtok: 0.2,
            per_call: 5.0,
            ..Default::default()
        };
        t.record_turn(4000, 1000, &p);
        assert!(
            (t.cost_usd - 0.001).abs() < 1e-12,
            "per_call is not charged per turn"
        );
        assert!((t.remaining(Some(0.01)) - 0.009).abs() < 1e-12);
        assert_eq!(t.remaining(None), f64::INFINITY);
        assert_eq!(t.orchestrator_tokens(), 5000);
    }

    #[test]
    fn ledger_totals_fold_tasks_and_batches() {
        let l = Ledger::new(&["gpt-5".into(), "qwen".into()]);
        let mut t = TaskLedger::default();
        t.record_call(call(), 0.5, Served::Billed);
        t.record_call(call(), 0.5, Served::Cache);
        t.record_call(call(), 0.25, Served::Billed);
        t.record_call(call(), 0.25, Served::Joined);
        l.record_task(Status::Answered, 3, &t, Some(true));
        l.record_task(Status::Failed, 1, &TaskLedger::default(), Some(false));
        l.record_sent(0, 2);
        l.record_batch(0, 3, 0);
        l.record_sent(1, 1);
        l.record_batch(1, 1, 1);
        let s = l.summary();
        assert_eq!(s.tasks["answered"], 1);
        assert_eq!(s.tasks["failed"], 1);
        assert_eq!(s.finished(), 2);
        assert_eq!(s.turns, 4);
        assert_eq!(s.billed_calls, 2);
        assert_eq!(s.cache_hits, 1);
        assert_eq!(s.joined_calls, 1);
        assert_eq!(s.unique_calls, None, "not counted unless asked");
        assert!((s.cost_usd - 0.75).abs() < 1e-12);
        assert!((s.saved_usd - 0.75).abs() < 1e-12);
        assert_eq!((s.graded, s.correct), (2, 1));
        assert!((s.coalescing_factor - 2.0).abs() < 1e-12);
        assert_eq!(s.backends[1].failures, 1);
        let aliases = l.aliases();
        assert_eq!(aliases.len(), 1);
        assert_eq!(aliases[0].0, "search-1");
        assert_eq!((aliases[0].1.calls, aliases[0].1.cached), (4, 2));
        assert!((aliases[0].1.cost_usd - 0.75).abs() < 1e-12);
    }

    #[test]
    fn distinct_request_keys_are_counted_when_asked() {
        let l = Ledger::with_distinct(&["gpt-5".into()], true);
        assert!(l.counts_distinct());
        for k in [1u128, 2, 1, 3, 2] {
            l.record_request_key(k);
        }
        assert_eq!(l.summary().unique_calls, Some(3));
        let off = Ledger::new(&["gpt-5".into()]);
        off.record_request_key(1);
        assert_eq!(off.summary().unique_calls, None);
    }
}
