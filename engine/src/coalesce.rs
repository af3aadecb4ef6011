//! Per-backend call coalescing: micro-batches, single-flight and the result cache in one place.
//!
//! Each backend has one [`Coalescer`]. A call first looks in the [`ResultCache`] (in the caller's
//! task, no hop). On a miss it goes to the coalescer's actor, which owns all mutable state:
//! - calls are grouped into batches that are sent when `max_batch` distinct calls are waiting or
//!   `max_wait_ms` after the first one arrived (at once when `max_wait_ms` is 0: whatever is queued
//!   goes together);
//! - at most `max_concurrency` batches are in flight;
//! - a cacheable call identical to one already in flight joins it: every caller gets the answer,
//!   one call is billed. When it completes the answer goes to the cache before the callers hear of
//!   it, so a later identical call hits the cache. A failure goes to the callers that were waiting
//!   and is neither cached nor shared with later callers.
//! - a cacheable call that missed the cache in its caller's task is looked up again when the actor
//!   takes it: an identical call may have completed in between. With that second look, each
//!   distinct cacheable request is billed exactly once, however the calls interleave, for as long
//!   as its answer stays in the cache (bounds, TTL).
//!
//! Only cacheable calls (by the backend's cache policy) are collapsed: for a call sampled at a
//! temperature, two identical requests are two different draws and must both be made.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll, StreamExt};
use slab::Slab;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, BatchItem, CacheKey, Request, Response};
use crate::breaker::Breaker;
use crate::cache::{CachedResult, ResultCache};
use crate::config::{BackendConfig, CachePolicy};
use crate::ledger::{Ledger, Pricing, Served};

/// What a caller gets back.
#[derive(Debug, Clone)]
pub(crate) struct CallOutcome {
    pub result: Result<Arc<Response>, BackendError>,
    /// How a successful call was served (a failed one says `Billed`: it was not answered for free).
    pub served: Served,
    /// What the call costs when billed (also for unbilled ones: that is what was saved).
    pub cost_usd: f64,
}

impl CallOutcome {
    /// An answer from the cache: not billed, its cost saved.
    fn cached(hit: CachedResult) -> CallOutcome {
        CallOutcome {
            result: Ok(hit.response),
            served: Served::Cache,
            cost_usd: hit.cost_usd,
        }
    }

    /// A call that got no answer.
    fn failed(error: BackendError) -> CallOutcome {
        CallOutcome {
            result: Err(error),
            served: Served::Billed,
            cost_usd: 0.0,
        }
    }
}

/// Batching and caching limits of one backend.
#[derive(Debug, Clone)]
pub(crate) struct CoalescerLimits {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub max_concurrency: usize,
    pub policy: CachePolicy,
    pub ttl: Option<Duration>,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl CoalescerLimits {
    pub(crate) fn from_config(b: &BackendConfig) -> CoalescerLimits {
        CoalescerLimits {
            max_batch: b.max_batch,
            max_wait: Duration::from_millis(b.max_wait_ms),
            max_concurrency: b.max_concurrency,
            policy: b.cache,
            ttl: b.cache_ttl_s.map(Duration::from_secs_f64),
            breaker_failures: b.breaker_failures,
            breaker_cooldown: Duration::from_millis(b.breaker_cooldown_ms),
        }
    }
}

struct Submit {
    key: Option<CacheKey>,
    request: Request,
    reply: oneshot::Sender<CallOutcome>,
}

/// One call of a batch: its single-flight key, or (when it has none) its caller.
type Call = (Option<CacheKey>, Option<oneshot::Sender<CallOutcome>>);

/// A batch sent to the backend whose answers are still coming in.
struct InFlight {
    /// Taken as each answer arrives.
    calls: Vec<Option<Call>>,
    served: usize,
    failures: usize,
}

/// The handle callers use; cheap to share.
pub(crate) struct Coalescer {
    name: Arc<str>,
    backend: Arc<dyn Backend>,
    tx: mpsc::UnboundedSender<Submit>,
    cache: Arc<ResultCache>,
    policy: CachePolicy,
    breaker: Arc<Breaker>,
    ledger: Arc<Ledger>,
}

impl Coalescer {
    /// Starts the actor of backend number `index` (as in the ledger) on the current runtime.
    pub(crate) fn start(
        index: usize,
        name: Arc<str>,
        backend: Arc<dyn Backend>,
        limits: CoalescerLimits,
        pricing: Pricing,
        cache: Arc<ResultCache>,
        ledger: Arc<Ledger>,
    ) -> Coalescer {
        let (tx, rx) = mpsc::unbounded_channel();
        let breaker = Arc::new(Breaker::new(
            limits.breaker_failures,
            limits.breaker_cooldown,
        ));
        let actor = Actor {
            breaker: breaker.clone(),
            index,
            name: name.clone(),
            backend: backend.clone(),
            limits: limits.clone(),
            pricing,
            cache: cache.clone(),
            ledger: ledger.clone(),
            inflight: HashMap::new(),
            batches: Slab::new(),
        };
        tokio::spawn(actor.run(rx));
        Coalescer {
            name,
            backend,
            tx,
            cache,
            policy: limits.policy,
            breaker,
            ledger,
        }
    }

    /// Whether the backend's circuit breaker is open (calls fail fast or go to the fallback).
    pub(crate) fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Makes one call: from the cache, by joining an identical call in flight, or in a batch.
    pub(crate) async fn call(&self, request: Request) -> CallOutcome {
        let key = self.key(&request);
        if let Some(k) = key {
            if let Some(hit) = self.cache.get(k) {
                return CallOutcome::cached(hit);
            }
        }
        self.submit(key, request).await
    }

    /// The request's cache and single-flight key, when the backend's policy lets it be cached or
    /// collapsed. Reports the call's key to the ledger when it counts distinct requests.
    fn key(&self, request: &Request) -> Option<CacheKey> {
        let cacheable = match self.policy {
            CachePolicy::Off => false,
            CachePolicy::Always => true,
            CachePolicy::Deterministic => self.backend.deterministic(request),
        };
        let key = (cacheable || self.ledger.counts_distinct()).then(|| request.key(&self.name));
        if let Some(k) = key {
            self.ledger.record_request_key(k.0);
        }
        key.filter(|_| cacheable)
    }

    /// Hands a call that missed the cache to the actor and waits for its answer.
    async fn submit(&self, key: Option<CacheKey>, request: Request) -> CallOutcome {
        let failed = |message: &str| {
            CallOutcome::failed(BackendError::Failed {
                backend: self.name.to_string(),
                message: message.into(),
            })
        };
        if !self.breaker.allow() {
            return CallOutcome::failed(BackendError::Unavailable {
                backend: self.name.to_string(),
            });
        }
        let (reply, rx) = oneshot::channel();
        let submit = Submit {
            key,
            request,
            reply,
        };
        if self.tx.send(submit).is_err() {
            return failed("the coalescer has stopped");
        }
        rx.await
            .unwrap_or_else(|_| failed("the coalescer dropped the call"))
    }
}

struct Actor {
    index: usize,
    name: Arc<str>,
    backend: Arc<dyn Backend>,
    limits: CoalescerLimits,
    pricing: Pricing,
    cache: Arc<ResultCache>,
    ledger: Arc<Ledger>,
    /// Callers waiting on each cacheable call in flight; the call is billed to the first of them
    /// still there when it completes.
    inflight: HashMap<CacheKey, Vec<oneshot::Sender<CallOutcome>>>,
    /// Batches sent and not fully answered; their number is bounded by `max_concurrency`.
    batches: Slab<InFlight>,
    breaker: Arc<Breaker>,
}

/// A batch being formed.
#[derive(Default)]
struct Batch {
    requests: Vec<Request>,
    calls: Vec<Call>,
}

/// What the answer streams of all batches in flight yield: (batch slot, an answer, or `None` when
/// the batch's stream has ended).
type Answers = SelectAll<BoxStream<'static, (usize, Option<BatchItem>)>>;

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Submit>) {
        // Answers are polled here rather than in spawned tasks: no task and no reply channel per
        // batch, and each answer reaches its callers as soon as the backend yields it.
        let mut answers: Answers = SelectAll::new();
        // Formed batches waiting for a concurrency slot.
        let mut queued: VecDeque<Batch> = VecDeque::new();
        let mut batch = Batch::default();
        let mut incoming = Vec::new();
        // Armed while a partial batch waits for `max_wait`; one timer, reset rather than rebuilt.
        let mut deadline: Option<Instant> = None;
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut open = true;
        loop {
            while self.batches.len() < self.limits.max_concurrency {
                match queued.pop_front() {
                    Some(b) => self.send(b, &mut answers),
                    None => break,
                }
            }
            tokio::select! {
                biased;
                Some((slot, item)) = answers.next(), if !answers.is_empty() => self.deliver(slot, item),
                n = rx.recv_many(&mut incoming, 256), if open => {
                    if n == 0 {
                        open = false;
                    }
                    for s in incoming.drain(..) {
                        self.admit(s, &mut batch);
                        if batch.requests.len() >= self.limits.max_batch {
                            queued.push_back(std::mem::take(&mut batch));
                            deadline = None;
                        }
                    }
                    if !batch.requests.is_empty() {
                        if self.limits.max_wait.is_zero() || !open {
                            queued.push_back(std::mem::take(&mut batch));
                            deadline = None;
                        } else if deadline.is_none() {
                            let at = Instant::now() + self.limits.max_wait;
                            deadline = Some(at);
                            timer.as_mut().reset(at);
                        }
                    }
                }
                _ = &mut timer, if deadline.is_some() => {
                    queued.push_back(std::mem::take(&mut batch));
                    deadline = None;
                }
                else => break,
            }
        }
    }

    /// Adds a call to the batch being formed, or to the waiters of an identical call in flight, or
    /// answers it from the cache.
    fn admit(&mut self, s: Submit, batch: &mut Batch) {
        if let Some(k) = s.key {
            if let Some(waiters) = self.inflight.get_mut(&k) {
                waiters.push(s.reply);
                return;
            }
            // The caller missed the cache before sending, but an identical call may have completed
            // since: its answer is cached and its in-flight entry gone. Both change only here, in
            // the actor (the answer is cached before the entry goes), so looking again closes the
            // window: a cacheable request is billed once unless its answer was evicted or expired.
            if let Some(hit) = self.cache.get_again(k) {
                let _ = s.reply.send(CallOutcome::cached(hit));
                return;
            }
            self.inflight.insert(k, vec![s.reply]);
            batch.requests.push(s.request);
            batch.calls.push((Some(k), None));
        } else {
            batch.requests.push(s.request);
            batch.calls.push((None, Some(s.reply)));
        }
    }

    /// Whether every caller of a call has gone (its episode was cancelled): such a call is not
    /// sent. A cacheable call whose callers have all gone leaves the in-flight map.
    fn abandoned(&mut self, call: &Call) -> bool {
        match call {
            (_, Some(reply)) => reply.is_closed(),
            (Some(k), None) => {
                let gone = self
                    .inflight
                    .get(k)
                    .is_none_or(|waiters| waiters.iter().all(|w| w.is_closed()));
                if gone {
                    self.inflight.remove(k);
                }
                gone
            }
            (None, None) => true,
        }
    }

    /// Sends a batch to the backend and adds its answer stream to `answers`. Calls whose callers
    /// have all gone are dropped first; a batch left empty is not sent. When the breaker has opened
    /// since its calls passed it, they are refused instead, as later calls are.
    fn send(&mut self, mut batch: Batch, answers: &mut Answers) {
        if self.breaker.is_open() {
            for call in batch.calls {
                self.refuse(call);
            }
            return;
        }
        let gone: Vec<usize> = (0..batch.calls.len())
            .filter(|&i| self.abandoned(&batch.calls[i]))
            .collect();
        for &i in gone.iter().rev() {
            batch.requests.remove(i);
            batch.calls.remove(i);
        }
        if batch.requests.is_empty() {
            return;
        }
        self.ledger.record_sent(self.index, batch.requests.len());
        let slot = self.batches.insert(InFlight {
            calls: batch.calls.into_iter().map(Some).collect(),
            served: 0,
            failures: 0,
        });
        let stream = self
            .backend
            .call_batch(batch.requests)
            .map(move |item| (slot, Some(item)))
            .chain(futures::stream::once(async move { (slot, None) }));
        answers.push(stream.boxed());
    }

    /// Delivers one answer of a batch, or closes the batch when its stream has ended.
    fn deliver(&mut self, slot: usize, item: Option<BatchItem>) {
        match item {
            Some((i, result)) => {
                let call = self.batches[slot].calls.get_mut(i).and_then(Option::take);
                if let Some(call) = call {
                    let failed = result.is_err();
                    let served = self.answer(call, result);
                    let b = &mut self.batches[slot];
                    b.served += served;
                    b.failures += failed as usize;
                }
            }
            None => {
                let b = self.batches.remove(slot);
                let (mut served, mut failures) = (b.served, b.failures);
                for call in b.calls.into_iter().flatten() {
                    let missing = Err(BackendError::Failed {
                        backend: self.name.to_string(),
                        message: "the backend gave no answer for this request".into(),
                    });
                    served += self.answer(call, missing);
                    failures += 1;
                }
                self.ledger.record_batch(self.index, served, failures);
            }
        }
    }

    /// The callers of a call: its own, or those waiting on its key (which leaves the in-flight map).
    fn take_waiters(&mut self, (key, reply): Call) -> Vec<oneshot::Sender<CallOutcome>> {
        match (key, reply) {
            (_, Some(r)) => vec![r],
            (Some(k), None) => self.inflight.remove(&k).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// Fails every caller of a call that was not sent because the breaker is open.
    fn refuse(&mut self, call: Call) {
        for w in self.take_waiters(call) {
            let _ = w.send(CallOutcome::failed(BackendError::Unavailable {
                backend: self.name.to_string(),
            }));
        }
    }

    /// Answers every caller of one call (caching a success first); returns how many were served.
    fn answer(&mut self, call: Call, result: Result<Response, BackendError>) -> usize {
        let cost = result.as_ref().map_or(0.0, |r| {
            self.pricing
                .cost(r.input_tokens, r.output_tokens, r.billed_seconds)
        });
        if self.breaker.record(result.is_ok()) {
            self.ledger.record_breaker_open(self.index);
        }
        let result = result.map(Arc::new);
        let key = call.0;
        let waiters = self.take_waiters(call);
        if let (Some(k), Ok(resp)) = (&key, &result) {
            let value = CachedResult {
                response: resp.clone(),
                cost_usd: cost,
            };
            self.cache.put(*k, value, self.limits.ttl);
        }
        let served = waiters.len();
        // The call is billed to one caller: the first still there to hear of it (an earlier one may
        // have been cancelled while it was in flight).
        let mut billed = false;
        for w in waiters {
            let outcome = CallOutcome {
                result: result.clone(),
                served: if billed {
                    Served::Joined
                } else {
                    Served::Billed
                },
                cost_usd: cost,
            };
            billed |= w.send(outcome).is_ok();
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use parking_lot::Mutex;

    /// A backend that records every batch it gets and echoes each prompt, after an optional delay.
    /// It is the thing under test's counterpart, not a model of an external service.
    struct Recorder {
        batches: Mutex<Vec<Vec<String>>>,
        delay: Duration,
        fail_prompt: Option<String>,
    }

    impl Backend for Recorder {
        fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem> {
            self.batches
                .lock()
                .push(requests.iter().map(|r| r.prompt.clone()).collect());
            let delay = self.delay;
            let fail = self.fail_prompt.clone();
            futures::stream::iter(requests.into_iter().enumerate())
                .then(move |(i, r)| {
                    let fail = fail.clone();
                    async move {
                        // Answers come one after another, `delay` apart.
                        tokio::time::sleep(delay).await;
                        if Some(&r.prompt) == fail.as_ref() {
                            (
                                i,
                                Err(BackendError::Failed {
                                    backend: "rec".into(),
                                    message: "boom".into(),
                                }),
                            )
                        } else {
                            let text = format!("echo {}", r.prompt);
                            (
                                i,
                                Ok(Response {
                                    text,
                                    input_tokens: 100,
                                    output_tokens: 10,
                                    billed_seconds: 0.0,
                                }),
                            )
                        }
                    }
                })
                .boxed()
        }
    }

    struct Setup {
        co: Arc<Coalescer>,
        rec: Arc<Recorder>,
        ledger: Arc<Ledger>,
    }

    fn setup(max_batch: usize, max_wait_ms: u64, policy: CachePolicy, delay_ms: u64) -> Setup {
        setup_with(max_batch, max_wait_ms, policy, delay_ms, false)
    }

    fn setup_with(
        max_batch: usize,
        max_wait_ms: u64,
        policy: CachePolicy,
        delay_ms: u64,
        count_distinct: bool,
    ) -> Setup {
        let limits = CoalescerLimits {
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            max_concurrency: 4,
            policy,
            ttl: None,
            breaker_failures: 1000,
            breaker_cooldown: Duration::from_secs(5),
        };
        setup_limits(limits, delay_ms, count_distinct)
    }

    fn setup_limits(limits: CoalescerLimits, delay_ms: u64, count_distinct: bool) -> Setup {
        let rec = Arc::new(Recorder {
            batches: Mutex::new(Vec::new()),
            delay: Duration::from_millis(delay_ms),
            fail_prompt: Some("bad".into()),
        });
        let ledger = Arc::new(Ledger::with_distinct(&["rec".into()], count_distinct));
        let cache = Arc::new(ResultCache::new(&CacheConfig::default()).unwrap());
        let pricing = Pricing {
            in_per_mtok: 1.0,
            out_per_mtok: 10.0,
            ..Default::default()
        };
        let co = Coalescer::start(
            0,
            "rec".into(),
            rec.clone(),
            limits,
            pricing,
            cache,
            ledger.clone(),
        );
        Setup {
            co: Arc::new(co),
            rec,
            ledger,
        }
    }

    fn req(prompt: &str) -> Request {
        Request {
            tool: "search".into(),
            model: "m".into(),
            prompt: prompt.into(),
            max_tokens: 64,
            temperature: 0.0,
        }
    }

    async fn call_all(co: &Arc<Coalescer>, prompts: &[&str]) -> Vec<CallOutcome> {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let co = co.clone();
                let r = req(p);
                tokio::spawn(async move { co.call(r).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_when_max_batch_is_reached() {
        let s = setup(4, 1000, CachePolicy::Off, 0);
        let prompts: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
        let t0 = Instant::now();
        call_all(&s.co, &refs).await;
        let sizes: Vec<usize> = s.rec.batches.lock().iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![4, 4]);
        assert!(
            t0.elapsed() < Duration::from_millis(1000),
            "full batches do not wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_abandoned_while_queued_are_never_sent() {
        // Cacheable and uncacheable calls wait 50 ms for a batch; their callers go away first.
        for policy in [CachePolicy::Off, CachePolicy::Deterministic] {
            let s = setup(16, 50, policy, 0);
            let co = s.co.clone();
            let gone = tokio::spawn(async move { co.call(req("gone")).await });
            let co = s.co.clone();
            let kept = tokio::spawn(async move { co.call(req("kept")).await });
            tokio::time::sleep(Duration::from_millis(10)).await;
            gone.abort();
            let _ = gone.await;
            assert_eq!(kept.await.unwrap().result.unwrap().text, "echo kept");
            assert_eq!(
                s.rec.batches.lock().concat(),
                vec!["kept".to_string()],
                "{policy:?}"
            );
            assert_eq!(s.ledger.summary().backends[0].sent, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_a_partial_batch_after_max_wait() {
        let s = setup(16, 50, CachePolicy::Off, 0);
        let t0 = Instant::now();
        call_all(&s.co, &["a", "b", "c"]).await;
        assert_eq!(s.rec.batches.lock().len(), 1);
        assert_eq!(s.rec.batches.lock()[0].len(), 3);
        assert!(
            t0.elapsed() >= Duration::from_millis(50),
            "waited for more calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_wait_sends_what_is_queued_at_once() {
        let s = setup(16, 0, CachePolicy::Off, 0);
        let t0 = Instant::now();
        let out = call_all(&s.co, &["a"]).await;
        assert_eq!(out[0].result.as_ref().unwrap().text, "echo a");
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_identical_calls_are_billed_once() {
        let s = setup(16, 5, CachePolicy::Deterministic, 100);
        let out = call_all(&s.co, &["same"; 10]).await;
        assert_eq!(s.rec.batches.lock().concat(), vec!["same".to_string()]);
        assert_eq!(out.iter().filter(|o| o.served == Served::Billed).count(), 1);
        assert_eq!(out.iter().filter(|o| o.served == Served::Joined).count(), 9);
        assert!(out
            .iter()
            .all(|o| o.result.as_ref().unwrap().text == "echo same"));
        let sum = s.ledger.summary();
        assert_eq!(sum.backends[0].sent, 1);
        assert_eq!(sum.backends[0].requests, 10);
        // Later identical calls hit the cache: still one call.
        let again = call_all(&s.co, &["same"]).await;
        assert_eq!(again[0].served, Served::Cache);
        assert_eq!(s.rec.batches.lock().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn identical_calls_are_not_collapsed_when_the_policy_is_off() {
        let s = setup(16, 5, CachePolicy::Off, 10);
        let out = call_all(&s.co, &["same"; 3]).await;
        assert_eq!(s.rec.batches.lock().concat().len(), 3);
        assert!(out.iter().all(|o| o.served == Served::Billed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_reaches_waiters_but_not_later_callers() {
        let s = setup(16, 5, CachePolicy::Always, 50);
        let out = call_all(&s.co, &["bad", "bad"]).await;
        assert!(out.iter().all(|o| o.result.is_err()));
        assert_eq!(s.rec.batches.lock().concat().len(), 1);
        let later = call_all(&s.co, &["bad"]).await;
        assert!(later[0].result.is_err());
        assert_eq!(
            s.rec.batches.lock().concat().len(),
            2,
            "the failure was not cached"
        );
        assert_eq!(s.ledger.summary().backends[0].failures, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn each_answer_reaches_its_caller_as_soon_as_it_is_done() {
        // One batch of two; the backend answers the first after 100 ms, the second after 200 ms.
        let s = setup(2, 1000, CachePolicy::Off, 100);
        let t0 = Instant::now();
        let first = {
            let co = s.co.clone();
            tokio::spawn(async move {
                co.call(req("a")).await;
                t0.elapsed()
            })
        };
        let second = {
            let co = s.co.clone();
            tokio::spawn(async move {
                co.call(req("b")).await;
                t0.elapsed()
            })
        };
        assert_eq!(first.await.unwrap(), Duration::from_millis(100));
        assert_eq!(second.await.unwrap(), Duration::from_millis(200));
        assert_eq!(s.rec.batches.lock().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_max_concurrency() {
        let s = setup(1, 0, CachePolicy::Off, 100);
        // max_concurrency 4, batches of one: 8 calls take two rounds of 100 ms.
        let prompts: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
        let t0 = Instant::now();
        call_all(&s.co, &refs).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_missed_just_before_an_identical_call_landed_is_not_billed_again() {
        // The interleaving that billed twice: B looks in the cache while A's identical call is in
        // flight (a miss); A's answer lands (cached, its in-flight entry released); only then does
        // B's call reach the actor, which finds neither an entry in flight nor, unless it looks
        // again, the answer.
        let s = setup(16, 0, CachePolicy::Deterministic, 100);
        let co = s.co.clone();
        let a = tokio::spawn(async move { co.call(req("same")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let key = s.co.key(&req("same")).expect("cacheable");
        assert!(s.co.cache.get(key).is_none(), "A is still in flight");
        let a = a.await.unwrap();
        assert_eq!(a.served, Served::Billed);
        let b = s.co.submit(Some(key), req("same")).await;
        assert_eq!(b.result.unwrap().text, "echo same");
        assert_eq!(b.served, Served::Cache, "answered by A's call, not billed");
        assert_eq!(s.rec.batches.lock().concat(), vec!["same".to_string()]);
        assert_eq!(s.ledger.summary().backends[0].sent, 1);
        let stats = s.co.cache.stats();
        assert_eq!(
            (stats.hits, stats.misses),
            (1, 1),
            "A's miss; B's miss, turned into a hit by the second look"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_call_is_billed_to_the_first_caller_still_waiting() {
        // A is cancelled while its call is in flight; B, who joined it, is billed instead.
        let s = setup(16, 0, CachePolicy::Deterministic, 100);
        let co = s.co.clone();
        let a = tokio::spawn(async move { co.call(req("same")).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let co = s.co.clone();
        let b = tokio::spawn(async move { co.call(req("same")).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        a.abort();
        let _ = a.await;
        let b = b.await.unwrap();
        assert_eq!(b.served, Served::Billed);
        assert_eq!(s.rec.batches.lock().concat(), vec!["same".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn distinct_requests_are_counted_whatever_the_policy() {
        for policy in [CachePolicy::Off, CachePolicy::Deterministic] {
            let s = setup_with(16, 5, policy, 10, true);
            let out = call_all(&s.co, &["a", "b", "a", "c", "a"]).await;
            assert_eq!(s.ledger.summary().unique_calls, Some(3), "{policy:?}");
            let billed = out.iter().filter(|o| o.served == Served::Billed).count();
            let expected = if policy == CachePolicy::Off { 5 } else { 3 };
            assert_eq!(billed, expected, "{policy:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_queued_when_the_breaker_opens_are_refused_not_sent() {
        // One batch of one at a time. The first call fails and opens the breaker (threshold 1)
        // while two more, admitted before, wait for the slot: they are refused and never sent.
        let limits = CoalescerLimits {
            max_batch: 1,
            max_wait: Duration::ZERO,
            max_concurrency: 1,
            policy: CachePolicy::Deterministic,
            ttl: None,
            breaker_failures: 1,
            breaker_cooldown: Duration::from_secs(60),
        };
        let s = setup_limits(limits, 100, false);
        let out = call_all(&s.co, &["bad", "a", "b"]).await;
        assert!(matches!(out[0].result, Err(BackendError::Failed { .. })));
        for o in &out[1..] {
            assert!(
                matches!(o.result, Err(BackendError::Unavailable { .. })),
                "{o:?}"
            );
        }
        assert_eq!(s.rec.batches.lock().concat(), vec!["bad".to_string()]);
        assert_eq!(s.ledger.summary().backends[0].sent, 1);
    }
}
