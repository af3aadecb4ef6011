//! The native [`StepRunner`]: a GGUF model behind the continuous-batching scheduler, with the
//! KV memory of all sequences held to a byte budget.
//!
//! A turn hands over the whole context as tokens. The runner keeps, per sequence, the tokens
//! whose keys and values its cache holds; a new turn reuses the longest common prefix and
//! prefills only the rest (a conversation that grows turn by turn prefills only its new
//! messages). Each step feeds every item's prefill chunk or last sampled token through one
//! batched forward pass and samples a token for every item that decodes.
//!
//! KV memory (`kv_cache_bytes`): a turn is admitted into the running set only once its cache
//! is sized for its whole context plus `max_new` tokens, so a running turn never allocates
//! more. To make room, the KV of sequences that are not running is evicted, least valuable
//! first: sequences waiting on a tool before sequences waiting for a slot, least recently used
//! first among them. An evicted sequence recomputes its context on its next admission. When
//! nothing can be evicted the turn waits; a turn whose context cannot fit even alone fails
//! with an error saying so. Retained caches are shrunk to their contents at the end of a turn.
//!
//! A shared prefix (the system prompt with the tool catalog, identical for every task) is
//! prefilled once, frozen, and continued by reference by every sequence whose context starts
//! with it (see [`KvCache::with_prefix`]); its bytes count once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rustc_hash::FxHashMap as HashMap;

use crate::head::{sample_token, CallHead, CallPolicy, Next, Sampling};
use crate::scheduler::{StepItem, StepRunner};
use crate::{KvCache, Model, Rows, SeqStep, Tokenizer};

/// What a turn hands the runner.
#[derive(Debug, Clone)]
pub struct NativeInput {
    /// The whole context, BOS included.
    pub tokens: Vec<u32>,
    /// `tokens[..shared_prefix]` is a prefix every sequence of the job shares (0: none).
    pub shared_prefix: usize,
    /// New tokens at most.
    pub max_new: usize,
    /// Generation stops once the text contains one of these, which is left out of the output
    /// (OpenAI's `stop`). Ignored under a `policy`, whose turn ends with its call.
    pub stop: Arc<[String]>,
    pub sampling: Sampling,
    /// The tool-call grammar and its shaping (the orchestrator's turns): the turn ends with a
    /// valid call of the catalog. `max_new` must cover [`CallPolicy::max_tokens`].
    pub policy: Option<Arc<CallPolicy>>,
}

/// A finished turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    /// Context tokens of the turn.
    pub prompt_tokens: u64,
    /// Tokens sampled (an end-of-generation token included).
    pub completion_tokens: u64,
}

pub(super) type NativeOutput = Result<Generated, String>;

/// The scheduler's handle on a sequence; its state lives in the runner, where eviction can
/// reach the caches of sequences that are not running.
pub(super) struct NativeSeq {
    key: u64,
}

/// Counters of the native runtime.
#[derive(Debug, Default)]
pub struct NativeStats {
    /// Shared prefixes prefilled (once per distinct prefix).
    pub prefix_prefills: AtomicU64,
    /// Tokens of those prefixes.
    pub prefix_tokens: AtomicU64,
    /// Sequences that started from a shared prefix instead of prefilling it.
    pub prefix_hits: AtomicU64,
    /// Context tokens run through the model (shared prefixes not included).
    pub prefill_tokens: AtomicU64,
    /// Tokens sampled.
    pub decode_tokens: AtomicU64,
    /// Caches evicted to make room, and the tokens they held.
    pub evictions: AtomicU64,
    pub evicted_tokens: AtomicU64,
    /// Bytes of KV memory allocated now, and the most ever allocated.
    pub kv_bytes: AtomicU64,
    pub kv_bytes_peak: AtomicU64,
    /// Turns failed (context too large for the budget, a forward pass error).
    pub failed_turns: AtomicU64,
    /// Tokens chosen under the tool-call grammar, and the output rows computed for them
    /// (the allowed tokens only, not the vocabulary).
    pub grammar_steps: AtomicU64,
    pub grammar_rows: AtomicU64,
    /// Calls the grammar completed.
    pub grammar_calls: AtomicU64,
}

/// The output rows an item of a step needs.
enum Want {
    /// None: a prefill chunk that does not sample.
    Nothing,
    /// The whole vocabulary, free to choose from.
    Free,
    /// Only these tokens' rows (the grammar allows no others).
    Only(Vec<u32>),
    /// The whole vocabulary, masked by the grammar.
    Masked,
}

struct Turn {
    input: NativeInput,
    generated: Vec<u32>,
    admitted: bool,
    error: Option<String>,
    rng: SmallRng,
    head: Option<CallHead>,
}

#[derive(Default)]
struct SeqState {
    cache: Option<KvCache>,
    /// The tokens whose keys and values `cache` holds.
    cached: Vec<u32>,
    turn: Option<Turn>,
    last_used: u64,
}

pub(super) struct NativeRunner {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    budget: u64,
    max_batched_tokens: usize,
    bytes_per_token: u64,
    seqs: HashMap<u64, SeqState>,
    prefixes: HashMap<u64, Arc<KvCache>>,
    next_key: u64,
    clock: u64,
    /// KV bytes allocated: every sequence's own buffers and every shared prefix.
    used: u64,
    stats: Arc<NativeStats>,
}

impl NativeRunner {
    pub(crate) fn new(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        kv_cache_bytes: u64,
        max_batched_tokens: usize,
        stats: Arc<NativeStats>,
    ) -> NativeRunner {
        let bytes_per_token = model.new_cache().bytes_per_position() as u64;
        NativeRunner {
            model,
            tokenizer,
            budget: kv_cache_bytes,
            max_batched_tokens,
            bytes_per_token,
            seqs: HashMap::default(),
            prefixes: HashMap::default(),
            next_key: 0,
            clock: 0,
            used: 0,
            stats,
        }
    }

    /// Records a change of allocated KV bytes from `before` to `after`.
    fn account(&mut self, before: usize, after: usize) {
        self.used = self.used + after as u64 - before as u64;
        self.stats.kv_bytes.store(self.used, Ordering::Relaxed);
        self.stats
            .kv_bytes_peak
            .fetch_max(self.used, Ordering::Relaxed);
    }

    /// Frees the cache of `key`.
    fn evict(&mut self, key: u64) {
        let st = self.seqs.get_mut(&key).expect("a live sequence");
        if let Some(cache) = st.cache.take() {
            let tokens = st.cached.len() as u64;
            st.cached.clear();
            self.account(cache.size_bytes(), 0);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            self.stats
                .evicted_tokens
                .fetch_add(tokens, Ordering::Relaxed);
        }
    }

    /// The least valuable evictable cache other than `except`'s: sequences waiting on a tool
    /// before those waiting for a slot, least recently used first. Running ones are never
    /// evicted.
    fn victim(&self, except: u64) -> Option<u64> {
        self.seqs
            .iter()
            .filter(|(k, st)| {
                **k != except
                    && st.cache.as_ref().is_some_and(|c| c.size_bytes() > 0)
                    && !st.turn.as_ref().is_some_and(|t| t.admitted)
            })
            .min_by_key(|(_, st)| (st.turn.is_some(), st.last_used))
            .map(|(k, _)| *k)
    }

    /// Frees memory until `bytes` more fit the budget; false when not enough can be freed.
    fn make_room(&mut self, bytes: u64, except: u64) -> bool {
        while self.used + bytes > self.budget {
            match self.victim(except) {
                Some(k) => self.evict(k),
                None => return false,
            }
        }
        true
    }

    /// The shared prefix of `tokens`, prefilled now if this is its first use, when it fits.
    fn prefix(&mut self, tokens: &[u32], key: u64) -> Option<Arc<KvCache>> {
        if tokens.is_empty() {
            return None;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        tokens.iter().for_each(|t| h.update(&t.to_le_bytes()));
        let id = h.digest();
        if let Some(p) = self.prefixes.get(&id) {
            return Some(p.clone());
        }
        let bytes = tokens.len() as u64 * self.bytes_per_token;
        if bytes > self.budget / 2 || !self.make_room(bytes, key) {
            return None;
        }
        let mut cache = self.model.new_cache();
        cache.reserve_exact(tokens.len()).ok()?;
        for chunk in tokens.chunks(self.max_batched_tokens) {
            let mut step = [SeqStep {
                tokens: chunk,
                cache: &mut cache,
            }];
            if let Err(e) = self.model.step(&mut step, false) {
                tracing::warn!("prefilling the shared prefix failed: {e:#}");
                return None;
            }
        }
        self.account(0, cache.size_bytes());
        self.stats.prefix_prefills.fetch_add(1, Ordering::Relaxed);
        self.stats
            .prefix_tokens
            .fetch_add(tokens.len() as u64, Ordering::Relaxed);
        let cache = Arc::new(cache);
        self.prefixes.insert(id, cache.clone());
        Some(cache)
    }

    /// Admits the turn of `key` only to fail it with `message` at its first step.
    fn fail(&mut self, key: u64, message: String) -> Option<usize> {
        let turn = self
            .seqs
            .get_mut(&key)
            .and_then(|s| s.turn.as_mut())
            .expect("a turn in progress");
        turn.error = Some(message);
        turn.admitted = true;
        Some(0)
    }

    /// Ends the turn of `key`, shrinking its cache to what it holds.
    fn finish(&mut self, key: u64) -> NativeOutput {
        self.clock += 1;
        let clock = self.clock;
        let st = self.seqs.get_mut(&key).expect("a live sequence");
        st.last_used = clock;
        let turn = st.turn.take().expect("a turn in progress");
        let mut delta = None;
        if let Some(cache) = &mut st.cache {
            let before = cache.size_bytes();
            let _ = cache.shrink_to_fit();
            delta = Some((before, cache.size_bytes()));
        }
        if let Some((before, after)) = delta {
            self.account(before, after);
        }
        if let Some(e) = turn.error {
            self.stats.failed_turns.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let mut text = self.tokenizer.decode(&turn.generated, false);
        if let Some(head) = &turn.head {
            if head.done() {
                self.stats.grammar_calls.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(at) = turn
            .input
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(at);
        }
        Ok(Generated {
            text,
            prompt_tokens: turn.input.tokens.len() as u64,
            completion_tokens: turn.generated.len() as u64,
        })
    }

    /// Whether the turn is over after sampling `token`.
    fn done(&self, turn: &Turn, token: u32) -> bool {
        if turn.generated.len() >= turn.input.max_new {
            return true;
        }
        if let Some(head) = &turn.head {
            return head.done();
        }
        if self.tokenizer.is_eog(token) {
            return true;
        }
        let Some(longest) = turn.input.stop.iter().map(String::len).max() else {
            return false;
        };
        // A stop text can only newly appear in the last few tokens' text.
        let from = turn.generated.len().saturating_sub(longest + 2);
        let tail = self.tokenizer.decode(&turn.generated[from..], false);
        turn.input.stop.iter().any(|s| tail.contains(s.as_str()))
    }
}

impl StepRunner for NativeRunner {
    type Seq = NativeSeq;
    type Input = NativeInput;
    type Output = NativeOutput;

    fn new_seq(&mut self) -> NativeSeq {
        let key = self.next_key;
        self.next_key += 1;
        self.seqs.insert(key, SeqState::default());
        NativeSeq { key }
    }

    fn begin_turn(&mut self, seq: &mut NativeSeq, input: NativeInput) -> usize {
        let st = self.seqs.get_mut(&seq.key).expect("a live sequence");
        let mut error = None;
        if input.tokens.is_empty() {
            error = Some("the turn's context is empty".to_string());
        } else if let Some(&bad) = input
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.model.info().vocab)
        {
            error = Some(format!("token id {bad} is outside the model's vocabulary"));
        }
        // Seeded by what the caller gives and the context's length only, never by the order in which
        // sequences reached this thread: a turn samples the same tokens however the episodes
        // interleave.
        let seed = input.sampling.seed ^ input.tokens.len() as u64;
        let pending = input.tokens.len().saturating_sub(
            st.cached
                .iter()
                .zip(&input.tokens)
                .take_while(|(a, b)| a == b)
                .count(),
        );
        if let Some(p) = &input.policy {
            if input.max_new < p.max_tokens() && error.is_none() {
                error = Some(format!(
                    "max_new ({}) does not cover the tool call ({} tokens at most)",
                    input.max_new,
                    p.max_tokens()
                ));
            }
        }
        st.turn = Some(Turn {
            head: input.policy.clone().map(CallHead::new),
            input,
            generated: Vec::new(),
            admitted: false,
            error,
            rng: SmallRng::seed_from_u64(seed),
        });
        pending.max(1)
    }

    fn admit(&mut self, seq: &mut NativeSeq, _prefill: usize) -> Option<usize> {
        let key = seq.key;
        let running = self
            .seqs
            .values()
            .any(|s| s.turn.as_ref().is_some_and(|t| t.admitted));
        let st = self.seqs.get_mut(&key).expect("a live sequence");
        let turn = st.turn.as_mut().expect("a turn in progress");
        if turn.error.is_some() {
            turn.admitted = true;
            return Some(0);
        }
        let n = turn.input.tokens.len();
        let total = n + turn.input.max_new;
        let shared = turn.input.shared_prefix.min(n - 1);
        // Reuse what the cache holds of this context, always leaving one token to feed (its
        // logits give the first new token).
        let keep = st
            .cached
            .iter()
            .zip(&turn.input.tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(n - 1);
        let held = st.cache.as_ref().map_or(0, |c| c.size_bytes()) as u64;
        let own_base = st
            .cache
            .as_ref()
            .map(|c| c.prefix_len())
            .filter(|&p| keep >= p);
        // Start from the shared prefix when the cache has nothing better to offer.
        let prefix = if shared > 0 && own_base.is_none_or(|b| b == 0 && keep < shared) {
            let tokens = turn.input.tokens[..shared].to_vec();
            self.prefix(&tokens, key)
        } else {
            None
        };
        let base = prefix.as_ref().map_or(own_base.unwrap_or(0), |p| p.len());
        let need = (total - base) as u64 * self.bytes_per_token;
        if need > self.budget {
            return self.fail(
                key,
                format!(
                    "the context ({n} tokens) and up to {} new tokens need {need} bytes of KV \
                     cache; orchestrator.kv_cache_bytes is {}",
                    total - n,
                    self.budget
                ),
            );
        }
        if !self.make_room(need.saturating_sub(held), key) {
            if running {
                return None;
            }
            if held > 0 {
                // Nothing runs and nothing else can go: start this sequence over.
                self.evict(key);
                return self.admit(seq, 0);
            }
            return self.fail(
                key,
                format!(
                    "the KV cache budget (orchestrator.kv_cache_bytes = {}) is taken by shared \
                     prefixes",
                    self.budget
                ),
            );
        }
        let st = self.seqs.get_mut(&key).expect("a live sequence");
        let before = st.cache.as_ref().map_or(0, |c| c.size_bytes());
        let mut cache = match (prefix, st.cache.take()) {
            (Some(p), _) => {
                self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                st.cached = st.turn.as_ref().expect("a turn").input.tokens[..p.len()].to_vec();
                KvCache::with_prefix(p)
            }
            (None, Some(mut c)) => {
                c.truncate(keep);
                st.cached.truncate(c.len());
                c
            }
            (None, None) => {
                st.cached.clear();
                self.model.new_cache()
            }
        };
        let turn = st.turn.as_mut().expect("a turn in progress");
        if let Err(e) = cache.reserve_exact(total) {
            turn.error = Some(format!("allocating the KV cache: {e}"));
        }
        let after = cache.size_bytes();
        let prefill = if turn.error.is_some() {
            0
        } else {
            n - cache.len()
        };
        turn.admitted = true;
        st.cache = Some(cache);
        self.account(before, after);
        Some(prefill)
    }

    fn step(
        &mut self,
        items: &mut [StepItem<'_, NativeSeq>],
        finished: &mut Vec<(usize, NativeOutput)>,
    ) {
        // Feed each item its prefill chunk, or its last sampled token; ask the head for the
        // output rows each needs: none for a prefill chunk that does not sample, the grammar's
        // allowed tokens inside a call (when few), else the whole vocabulary.
        let mut feeds: Vec<Vec<u32>> = Vec::with_capacity(items.len());
        let mut caches: Vec<KvCache> = Vec::with_capacity(items.len());
        let mut wants: Vec<Want> = Vec::with_capacity(items.len());
        let mut index = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let st = self.seqs.get_mut(&item.seq.key).expect("a live sequence");
            let turn = st.turn.as_mut().expect("a turn in progress");
            if turn.error.is_some() {
                continue;
            }
            let cache = st.cache.take().expect("admitted turns have a cache");
            let feed = if item.prefill > 0 {
                let from = cache.len();
                turn.input.tokens[from..from + item.prefill].to_vec()
            } else {
                vec![*turn.generated.last().expect("decoding after a first token")]
            };
            let want = match (&mut turn.head, item.decode) {
                (_, false) => Want::Nothing,
                (Some(head), true) => match head.rows() {
                    Next::Free => Want::Free,
                    Next::Only(ids) => Want::Only(ids.to_vec()),
                    Next::Masked => Want::Masked,
                },
                (None, true) => Want::Free,
            };
            feeds.push(feed);
            caches.push(cache);
            wants.push(want);
            index.push(i);
        }
        let result = if caches.is_empty() {
            Ok(Vec::new())
        } else {
            let mut steps: Vec<SeqStep<'_>> = feeds
                .iter()
                .zip(caches.iter_mut())
                .map(|(f, c)| SeqStep {
                    tokens: f,
                    cache: c,
                })
                .collect();
            let rows: Vec<Rows<'_>> = wants
                .iter()
                .map(|w| match w {
                    Want::Free | Want::Masked => Rows::All,
                    Want::Nothing => Rows::None,
                    Want::Only(ids) => Rows::Only(ids),
                })
                .collect();
            self.model.step_rows(&mut steps, &rows)
        };
        let mut prefilled = 0u64;
        let mut decoded = 0u64;
        for ((j, cache), feed) in index.iter().zip(caches).zip(&feeds) {
            let st = self
                .seqs
                .get_mut(&items[*j].seq.key)
                .expect("a live sequence");
            st.cache = Some(cache);
            let turn = st.turn.as_mut().expect("a turn in progress");
            if let Err(e) = &result {
                turn.error = Some(format!("forward pass failed: {e:#}"));
                continue;
            }
            st.cached.extend_from_slice(feed);
            if items[*j].prefill > 0 {
                prefilled += feed.len() as u64;
            }
        }
        let (mut grammar_steps, mut grammar_rows) = (0u64, 0u64);
        if let Ok(mut logits) = result {
            for (row, &j) in index.iter().enumerate() {
                let item = &items[j];
                if !item.decode {
                    continue;
                }
                let st = self.seqs.get_mut(&item.seq.key).expect("a live sequence");
                let turn = st.turn.as_mut().expect("a turn in progress");
                let logits = &mut logits[row];
                let sampling = turn.input.sampling;
                let token = match (&mut turn.head, &wants[row]) {
                    (Some(head), Want::Only(_) | Want::Masked) => {
                        grammar_steps += 1;
                        grammar_rows += logits.len() as u64;
                        head.choose_call(logits, &sampling, &mut turn.rng)
                    }
                    (Some(head), _) => {
                        head.choose_free(logits, &sampling, &mut turn.rng, &self.tokenizer)
                    }
                    (None, _) => sample_token(logits, &sampling, &mut turn.rng),
                };
                match token {
                    Some(t) => {
                        turn.generated.push(t);
                        decoded += 1;
                    }
                    None => {
                        let why = turn.head.as_ref().and_then(CallHead::failure);
                        turn.error = Some(match why {
                            Some(why) => format!("sampling failed: {why}"),
                            None => "sampling failed: every token is masked".into(),
                        })
                    }
                }
            }
        }
        for (j, item) in items.iter().enumerate() {
            let st = &self.seqs[&item.seq.key];
            let turn = st.turn.as_ref().expect("a turn in progress");
            let over = turn.error.is_some()
                || (item.decode && turn.generated.last().is_some_and(|&t| self.done(turn, t)));
            if over {
                let out = self.finish(item.seq.key);
                finished.push((j, out));
            }
        }
        let s = &self.stats;
        s.prefill_tokens.fetch_add(prefilled, Ordering::Relaxed);
        s.decode_tokens.fetch_add(decoded, Ordering::Relaxed);
        s.grammar_steps.fetch_add(grammar_steps, Ordering::Relaxed);
        s.grammar_rows.fetch_add(grammar_rows, Ordering::Relaxed);
    }

    fn drop_seq(&mut self, seq: NativeSeq) {
        if let Some(st) = self.seqs.remove(&seq.key) {
            let bytes = st.cache.map_or(0, |c| c.size_bytes());
            self.account(bytes, 0);
        }
    }
}
