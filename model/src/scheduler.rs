//! The continuous-batching scheduler for orchestrator decode steps.
//!
//! Iteration-level scheduling (Orca, vLLM): the unit of work is one step of a batched forward pass,
//! not one request. Every episode that needs a decision hands its turn to the scheduler; each step
//! takes every sequence that is decoding plus prefill chunks of newly arrived turns, within
//! `max_seqs` sequences and `max_batched_tokens` tokens; a sequence whose turn is done leaves the
//! batch at once (its episode goes off to call a tool) and the next waiting one takes its place.
//!
//! Waiting turns are admitted least-attained-service first (the sequence that has had the fewest
//! tokens processed over its whole episode goes first), so long episodes do not starve short ones
//! and new episodes are not stuck behind old ones. Decoding sequences are not preempted.
//!
//! The scheduler runs on its own thread (a step is CPU work, not something to put on the async
//! runtime), owns all its state, and takes commands over a crossbeam channel. It is generic over a
//! [`StepRunner`]: the simulated executor today, the native model runtime later, unchanged.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Identifies one sequence (one episode's context) to the scheduler.
pub(crate) type SeqId = u64;

/// Executes batched steps. Implemented by the sim executor and the native model runtime.
pub trait StepRunner: Send + 'static {
    /// Per-sequence state kept between turns (the KV cache, for a model).
    type Seq: Send + 'static;
    /// What an episode hands over for a turn.
    type Input: Send + 'static;
    /// What a finished turn yields.
    type Output: Send + 'static;

    fn new_seq(&mut self) -> Self::Seq;

    /// Starts a turn; returns how many tokens must be prefilled before decoding starts.
    fn begin_turn(&mut self, seq: &mut Self::Seq, input: Self::Input) -> usize;

    /// Asks to move a waiting turn into the running set, where it stays until it finishes.
    /// Returns how many tokens it must prefill now (which may differ from what `begin_turn`
    /// said, for instance when memory it had was reclaimed while it waited), or `None` when it
    /// must wait (a memory budget is spent). With no turn running, it must not return `None`.
    fn admit(&mut self, _seq: &mut Self::Seq, prefill: usize) -> Option<usize> {
        Some(prefill)
    }

    /// Runs one batched step. Each item prefills `prefill` tokens and, when `decode` is set, then
    /// decodes one token. Turns that finish in this step are pushed to `finished` as
    /// (item index, output).
    fn step(
        &mut self,
        items: &mut [StepItem<'_, Self::Seq>],
        finished: &mut Vec<(usize, Self::Output)>,
    );

    /// The sequence's episode is over.
    fn drop_seq(&mut self, _seq: Self::Seq) {}
}

/// One sequence's share of a step.
pub struct StepItem<'a, S> {
    pub id: SeqId,
    pub seq: &'a mut S,
    pub prefill: usize,
    pub decode: bool,
}

/// The batch limits of one executor.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_seqs: usize,
    pub max_batched_tokens: usize,
}

/// Counters the scheduler keeps, for benchmarks, reports and the metrics endpoint.
#[derive(Debug)]
pub struct SchedulerStats {
    pub steps: AtomicU64,
    pub seq_steps: AtomicU64,
    pub tokens: AtomicU64,
    pub turns: AtomicU64,
    /// Sequences per step.
    pub batch_size: Buckets,
    /// Seconds per step (the runner's work, not the wait for turns).
    pub step_seconds: Buckets,
}

impl Default for SchedulerStats {
    fn default() -> Self {
        SchedulerStats {
            steps: AtomicU64::new(0),
            seq_steps: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            batch_size: Buckets::new(BATCH_SIZE_BOUNDS),
            step_seconds: Buckets::new(STEP_SECONDS_BOUNDS),
        }
    }
}

/// Upper bounds of the batch-size buckets: powers of two up to the largest `max_seqs` in use.
pub const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
/// Upper bounds of the step-time buckets, in seconds: from a simulated step (tens of µs) to a
/// large native prefill chunk.
pub const STEP_SECONDS_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A histogram with fixed bucket bounds that many threads observe into without locks: the shape
/// of a Prometheus histogram (cumulative buckets, a sum and a count), kept here so that the model
/// crate needs no metrics library.
#[derive(Debug)]
pub struct Buckets {
    bounds: &'static [f64],
    /// One count per bound plus the overflow (`+Inf`) bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    /// The sum of the observed values, as `f64` bits.
    sum: AtomicU64,
}

/// A copy of a [`Buckets`]' counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketSnapshot {
    /// `(upper bound, observations <= bound)`, cumulative, ending with `(+Inf, count)`.
    pub cumulative: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Buckets {
    pub fn new(bounds: &'static [f64]) -> Buckets {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, AtomicOrdering::Relaxed);
        let _ = self
            .sum
            .fetch_update(AtomicOrdering::Relaxed, AtomicOrdering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    pub fn snapshot(&self) -> BucketSnapshot {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(AtomicOrdering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            cumulative.push((bound, total));
        }
        BucketSnapshot {
            cumulative,
            sum: f64::from_bits(self.sum.load(AtomicOrdering::Relaxed)),
            count: total,
        }
    }
}

/// The scheduler is gone (its thread ended): no more turns can run.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the decode scheduler has stopped")]
pub struct SchedulerGone;

enum Command<R: StepRunner> {
    Turn {
        id: SeqId,
        input: R::Input,
        reply: oneshot::Sender<R::Output>,
    },
    Release(SeqId),
}

/// The handle episodes use. Cloning it is cheap.
pub struct SchedulerHandle<R: StepRunner> {
    tx: crossbeam_channel::Sender<Command<R>>,
    next_id: Arc<AtomicU64>,
    stats: Arc<SchedulerStats>,
}

impl<R: StepRunner> Clone for SchedulerHandle<R> {
    fn clone(&self) -> Self {
        SchedulerHandle {
            tx: self.tx.clone(),
            next_id: self.next_id.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<R: StepRunner> SchedulerHandle<R> {
    /// A fresh sequence id; the sequence itself is created by its first turn.
    pub fn open(&self) -> SeqId {
        self.next_id.fetch_add(1, AtomicOrdering::Relaxed)
    }

    /// Runs one turn of sequence `id` and waits for its output.
    pub async fn turn(&self, id: SeqId, input: R::Input) -> Result<R::Output, SchedulerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Turn { id, input, reply })
            .map_err(|_| SchedulerGone)?;
        rx.await.map_err(|_| SchedulerGone)
    }

    /// Frees the sequence's state; its episode is over.
    pub fn release(&self, id: SeqId) {
        let _ = self.tx.send(Command::Release(id));
    }

    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }
}

/// Starts a scheduler thread around `runner`. It ends, handing the runner back through the join
/// handle, when every handle is dropped and no turn is left.
pub fn spawn<R: StepRunner>(runner: R, limits: BatchLimits) -> (SchedulerHandle<R>, JoinHandle<R>) {
    assert!(limits.max_seqs > 0 && limits.max_batched_tokens >= limits.max_seqs);
    let (tx, rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(SchedulerStats::default());
    let mut sched = Scheduler::new(runner, limits, rx, stats.clone());
    // Waking a task from outside the runtime goes through its shared inject queue and often a
    // futex; waking it from a task inside is a local queue push. So when there is a runtime, the
    // outputs of each step travel to it in one message and a delivery task hands them out.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Delivery<R::Output>>>();
        rt.spawn(async move {
            while let Some(outputs) = rx.recv().await {
                for (reply, out) in outputs {
                    let _ = reply.send(out);
                }
            }
        });
        sched.delivery = Some(tx);
    }
    let join = std::thread::Builder::new()
        .name("tutti-scheduler".into())
        .spawn(move || sched.run())
        .expect("spawn the scheduler thread");
    let handle = SchedulerHandle {
        tx,
        next_id: Arc::new(AtomicU64::new(0)),
        stats,
    };
    (handle, join)
}

/// A finished turn's output and where it goes.
type Delivery<O> = (oneshot::Sender<O>, O);

/// A sequence with a turn to run.
struct Turn<R: StepRunner> {
    id: SeqId,
    seq: R::Seq,
    prefill_left: usize,
    /// Tokens processed for this sequence over its whole episode.
    attained: u64,
    arrival: u64,
    reply: oneshot::Sender<R::Output>,
}

/// Orders waiting turns: least attained service first, then first come first served.
struct ByService<R: StepRunner>(Turn<R>);

impl<R: StepRunner> ByService<R> {
    fn key(&self) -> (u64, u64) {
        (self.0.attained, self.0.arrival)
    }
}
impl<R: StepRunner> PartialEq for ByService<R> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<R: StepRunner> Eq for ByService<R> {}
impl<R: StepRunner> PartialOrd for ByService<R> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<R: StepRunner> Ord for ByService<R> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

struct Scheduler<R: StepRunner> {
    runner: R,
    limits: BatchLimits,
    rx: crossbeam_channel::Receiver<Command<R>>,
    stats: Arc<SchedulerStats>,
    /// Sequences between turns (their episodes are calling tools), with their attained service.
    parked: HashMap<SeqId, (R::Seq, u64)>,
    /// Sequences released while a turn of theirs was still running.
    released: HashSet<SeqId>,
    waiting: BinaryHeap<Reverse<ByService<R>>>,
    running: Vec<Turn<R>>,
    arrivals: u64,
    /// Where finished turns go in bulk; answered one by one from this thread when absent.
    delivery: Option<tokio::sync::mpsc::UnboundedSender<Vec<Delivery<R::Output>>>>,
}

impl<R: StepRunner> Scheduler<R> {
    fn new(
        runner: R,
        limits: BatchLimits,
        rx: crossbeam_channel::Receiver<Command<R>>,
        stats: Arc<SchedulerStats>,
    ) -> Self {
        Scheduler {
            runner,
            limits,
            rx,
            stats,
            parked: HashMap::default(),
            released: HashSet::default(),
            waiting: BinaryHeap::new(),
            running: Vec::new(),
            arrivals: 0,
            delivery: None,
        }
    }

    fn run(mut self) -> R {
        let mut finished = Vec::new();
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                self.handle(cmd);
            }
            self.admit();
            if !self.running.is_empty() {
                self.step(&mut finished);
            }
        }
        for (_, (seq, _)) in self.parked.drain() {
            self.runner.drop_seq(seq);
        }
        self.runner
    }

    fn handle(&mut self, cmd: Command<R>) {
        match cmd {
            Command::Turn { id, input, reply } => {
                let (mut seq, attained) = match self.parked.remove(&id) {
                    Some(p) => p,
                    None => (self.runner.new_seq(), 0),
                };
                let prefill_left = self.runner.begin_turn(&mut seq, input);
                self.arrivals += 1;
                let turn = Turn {
                    id,
                    seq,
                    prefill_left,
                    attained,
                    arrival: self.arrivals,
                    reply,
                };
                self.waiting.push(Reverse(ByService(turn)));
            }
            Command::Release(id) => match self.parked.remove(&id) {
                Some((seq, _)) => self.runner.drop_seq(seq),
                None => {
                    self.released.insert(id);
                }
            },
        }
    }

    /// Moves waiting turns into the running set, least attained service first, up to `max_seqs`
    /// and as long as the runner accepts them (its memory budget).
    fn admit(&mut self) {
        while self.running.len() < self.limits.max_seqs {
            let Some(Reverse(ByService(mut turn))) = self.waiting.pop() else {
                break;
            };
            match self.runner.admit(&mut turn.seq, turn.prefill_left) {
                Some(prefill) => {
                    turn.prefill_left = prefill;
                    self.running.push(turn);
                }
                None => {
                    assert!(
                        !self.running.is_empty(),
                        "a step runner refused a turn with nothing running"
                    );
                    self.waiting.push(Reverse(ByService(turn)));
                    break;
                }
            }
        }
    }

    /// Runs one step: every decoding sequence (one token each), then prefill chunks, least attained
    /// first, while the token budget lasts.
    fn step(&mut self, finished: &mut Vec<(usize, R::Output)>) {
        let mut budget = self.limits.max_batched_tokens;
        let mut chunks = vec![0usize; self.running.len()];
        let mut prefilling: Vec<usize> = Vec::new();
        for (i, t) in self.running.iter().enumerate() {
            if t.prefill_left == 0 {
                budget -= 1;
            } else {
                prefilling.push(i);
            }
        }
        prefilling.sort_by_key(|&i| (self.running[i].attained, self.running[i].arrival));
        for i in prefilling {
            if budget == 0 {
                break;
            }
            let c = self.running[i].prefill_left.min(budget);
            chunks[i] = c;
            budget -= c;
        }
        let tokens = self.limits.max_batched_tokens - budget;

        let mut index = Vec::with_capacity(self.running.len());
        let mut items: Vec<StepItem<'_, R::Seq>> = Vec::with_capacity(self.running.len());
        for (i, t) in self.running.iter_mut().enumerate() {
            let prefill = chunks[i];
            if t.prefill_left > 0 && prefill == 0 {
                continue; // no token budget left for this one in this step
            }
            let decode = prefill == t.prefill_left;
            t.prefill_left -= prefill;
            t.attained += prefill as u64 + decode as u64;
            index.push(i);
            items.push(StepItem {
                id: t.id,
                seq: &mut t.seq,
                prefill,
                decode,
            });
        }
        finished.clear();
        let started = std::time::Instant::now();
        self.runner.step(&mut items, finished);
        self.stats
            .step_seconds
            .observe(started.elapsed().as_secs_f64());
        drop(items);
        self.stats.batch_size.observe(index.len() as f64);

        self.stats.steps.fetch_add(1, AtomicOrdering::Relaxed);
        self.stats
            .seq_steps
            .fetch_add(index.len() as u64, AtomicOrdering::Relaxed);
        self.stats
            .tokens
            .fetch_add(tokens as u64, AtomicOrdering::Relaxed);
        self.stats
            .turns
            .fetch_add(finished.len() as u64, AtomicOrdering::Relaxed);

        // Remove finished turns from the highest running index down so swap_remove keeps the
        // remaining indices valid.
        let mut done: Vec<(usize, R::Output)> = finished
            .drain(..)
            .map(|(item, out)| (index[item], out))
            .collect();
        done.sort_unstable_by_key(|d| Reverse(d.0));
        let mut outputs = Vec::with_capacity(done.len());
        for (i, out) in done {
            let t = self.running.swap_remove(i);
            outputs.push((t.reply, out));
            if self.released.remove(&t.id) {
                self.runner.drop_seq(t.seq);
            } else {
                self.parked.insert(t.id, (t.seq, t.attained));
            }
        }
        if outputs.is_empty() {
            return;
        }
        let outputs = match &self.delivery {
            Some(tx) => match tx.send(outputs) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => outputs,
        };
        for (reply, out) in outputs {
            let _ = reply.send(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A runner whose turns decode a given number of tokens and that records every step.
    /// Each step as (sequence, prefill tokens, decoded) per item.
    type Steps = Arc<Mutex<Vec<Vec<(SeqId, usize, bool)>>>>;

    #[derive(Default)]
    struct Recording {
        steps: Steps,
        dropped: Arc<Mutex<Vec<SeqId>>>,
    }

    struct Seq {
        id: Option<SeqId>,
        decode_left: usize,
    }

    /// (prefill tokens, decode tokens) of a turn.
    type Input = (usize, usize);

    #[test]
    fn buckets_count_each_value_in_the_first_bound_at_or_above_it() {
        let b = Buckets::new(&[1.0, 4.0, 16.0]);
        for v in [1.0, 2.0, 4.0, 5.0, 100.0] {
            b.observe(v);
        }
        let s = b.snapshot();
        assert_eq!(
            s.cumulative,
            [(1.0, 1), (4.0, 3), (16.0, 4), (f64::INFINITY, 5)]
        );
        assert_eq!((s.count, s.sum), (5, 112.0));
    }

    impl StepRunner for Recording {
        type Seq = Seq;
        type Input = Input;
        type Output = SeqId;

        fn new_seq(&mut self) -> Seq {
            Seq {
                id: None,
                decode_left: 0,
            }
        }
        fn begin_turn(&mut self, seq: &mut Seq, (prefill, decode): Input) -> usize {
            seq.decode_left = decode;
            prefill
        }
        fn step(&mut self, items: &mut [StepItem<'_, Seq>], finished: &mut Vec<(usize, SeqId)>) {
            self.steps.lock().push(
                items
                    .iter()
                    .map(|it| (it.id, it.prefill, it.decode))
                    .collect(),
            );
            for (i, it) in items.iter_mut().enumerate() {
                it.seq.id = Some(it.id);
                if it.decode {
                    it.seq.decode_left -= 1;
                    if it.seq.decode_left == 0 {
                        finished.push((i, it.id));
                    }
                }
            }
        }
        fn drop_seq(&mut self, seq: Seq) {
            if let Some(id) = seq.id {
                self.dropped.lock().push(id);
            }
        }
    }

    fn start(
        max_seqs: usize,
        max_tokens: usize,
    ) -> (SchedulerHandle<Recording>, Recording, JoinHandle<Recording>) {
        let rec = Recording::default();
        let copy = Recording {
            steps: rec.steps.clone(),
            dropped: rec.dropped.clone(),
        };
        let (h, j) = spawn(
            rec,
            BatchLimits {
                max_seqs,
                max_batched_tokens: max_tokens,
            },
        );
        (h, copy, j)
    }

    #[tokio::test]
    async fn respects_max_seqs_and_max_batched_tokens() {
        let (h, rec, join) = start(4, 16);
        let mut tasks = Vec::new();
        for n in 0..20usize {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let id = h.open();
                for turn in 0..3 {
                    let out = h.turn(id, (7 + n % 5, 1 + (n + turn) % 4)).await.unwrap();
                    assert_eq!(out, id);
                }
                h.release(id);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(h);
        join.join().unwrap();
        let steps = rec.steps.lock();
        assert!(!steps.is_empty());
        for s in steps.iter() {
            assert!(s.len() <= 4, "more than max_seqs in a step: {s:?}");
            let tokens: usize = s.iter().map(|(_, p, d)| p + *d as usize).sum::<usize>()
                - s.iter().filter(|(_, p, d)| *p > 0 && *d).count();
            assert!(
                tokens <= 16,
                "more than max_batched_tokens in a step: {s:?}"
            );
        }
        // Prefills of 7..11 tokens under a 16-token budget must have been chunked somewhere.
        assert!(steps.iter().flatten().any(|(_, p, d)| *p > 0 && !*d));
        assert_eq!(
            rec.dropped.lock().len(),
            20,
            "every released sequence is dropped"
        );
    }

    /// Drives a scheduler by hand, without its thread, so the order of events is exact.
    fn manual(max_seqs: usize, max_tokens: usize) -> (Scheduler<Recording>, Recording) {
        let rec = Recording::default();
        let copy = Recording {
            steps: rec.steps.clone(),
            dropped: rec.dropped.clone(),
        };
        let (_tx, rx) = crossbeam_channel::unbounded();
        let limits = BatchLimits {
            max_seqs,
            max_batched_tokens: max_tokens,
        };
        (Scheduler::new(rec, limits, rx, Arc::default()), copy)
    }

    fn turn(s: &mut Scheduler<Recording>, id: SeqId, input: Input) -> oneshot::Receiver<SeqId> {
        let (reply, rx) = oneshot::channel();
        s.handle(Command::Turn { id, input, reply });
        rx
    }

    fn drain(s: &mut Scheduler<Recording>) {
        let mut finished = Vec::new();
        while !s.running.is_empty() || !s.waiting.is_empty() {
            s.admit();
            s.step(&mut finished);
        }
    }

    #[test]
    fn least_attained_service_goes_first() {
        let (mut s, rec) = manual(1, 64);
        let (old, fresh) = (1, 2);
        let _reply = turn(&mut s, old, (50, 5));
        drain(&mut s);
        // `old` has had 55 tokens of service. Its next turn arrives before `fresh`'s first one,
        // yet with one slot `fresh` runs first.
        let _reply = turn(&mut s, old, (1, 1));
        let _reply = turn(&mut s, fresh, (1, 1));
        rec.steps.lock().clear();
        drain(&mut s);
        let order: Vec<SeqId> = rec.steps.lock().iter().flatten().map(|x| x.0).collect();
        assert_eq!(order, vec![fresh, old]);
    }

    #[test]
    fn equal_service_is_first_come_first_served() {
        let (mut s, rec) = manual(1, 64);
        for id in [5, 3, 9] {
            let _reply = turn(&mut s, id, (2, 1));
        }
        drain(&mut s);
        let order: Vec<SeqId> = rec.steps.lock().iter().flatten().map(|x| x.0).collect();
        assert_eq!(order, vec![5, 3, 9]);
    }

    #[test]
    fn decodes_go_before_prefill_chunks_within_the_token_budget() {
        let (mut s, rec) = manual(4, 10);
        let _reply = turn(&mut s, 1, (0, 3)); // decoding at once
        let _reply = turn(&mut s, 2, (25, 1)); // a long prefill, chunked
        let mut finished = Vec::new();
        s.admit();
        s.step(&mut finished);
        s.step(&mut finished);
        let steps = rec.steps.lock();
        assert_eq!(steps[0], vec![(1, 0, true), (2, 9, false)]);
        assert_eq!(steps[1], vec![(1, 0, true), (2, 9, false)]);
    }

    #[tokio::test]
    async fn sequences_waiting_on_tools_leave_the_batch() {
        let (h, rec, join) = start(8, 64);
        let a = h.open();
        let b = h.open();
        h.turn(a, (3, 2)).await.unwrap();
        // `a` is now parked (calling a tool); `b`'s turn runs without it.
        h.turn(b, (3, 3)).await.unwrap();
        drop(h);
        join.join().unwrap();
        let steps = rec.steps.lock();
        let b_steps: Vec<_> = steps
            .iter()
            .filter(|s| s.iter().any(|x| x.0 == b))
            .collect();
        assert_eq!(b_steps.len(), 3);
        assert!(b_steps.iter().all(|s| s.len() == 1), "{b_steps:?}");
    }

    #[tokio::test]
    async fn release_during_a_turn_drops_the_sequence_after_it() {
        let (h, rec, join) = start(2, 8);
        let a = h.open();
        let h2 = h.clone();
        let t = tokio::spawn(async move { h2.turn(a, (0, 50)).await });
        while rec.steps.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        h.release(a);
        t.await.unwrap().unwrap();
        drop(h);
        join.join().unwrap();
        assert_eq!(*rec.dropped.lock(), vec![a]);
    }
}
