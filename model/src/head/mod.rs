//! The native policy head's tool-call grammar: valid calls by construction.
//!
//! The orchestrator writes free text, then a Hermes call. Every valid call of the catalog is
//! one byte string, `<tool_call>{"name": "T", "arguments": {"model": "A"}}</tool_call>`, one
//! per (tool, alias) action. Once the generated text contains `<tool_call>` (the model opened
//! the call, its turn ended, or its free-text allowance ran out), the head allows only tokens
//! whose bytes continue one of the calls still possible, so only those rows of the output
//! projection are computed: a few dozen instead of the whole vocabulary.
//!
//! Shaping, per turn ([`CallPolicy`]): actions the remaining budget cannot pay for are not
//! among the calls at all; a token's logit gets the largest preference bias of the actions it
//! leads to (these per-token potentials telescope: along the tokens of a call the bias of the
//! action chosen is what is added, up to a constant per step); when nothing is affordable the
//! call is the cheapest `answer`, from the first token.

pub mod functions;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand::Rng;
use tutti_kernels::{
    apply_temperature, argmax, sample_index, softmax_inplace, top_k_mask, top_p_mask,
};

use crate::Tokenizer;
use functions::FunctionGrammar;

pub use crate::hermes::{CLOSE, OPEN};

/// How a turn picks its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    pub top_p: f64,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub seed: u64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 0,
    };
}

/// One action of a catalog as the head sees it: the text of its call and what it is expected
/// to cost.
#[derive(Debug, Clone)]
pub struct CatalogCall {
    pub text: String,
    pub expected_cost_usd: f64,
}

/// The calls of a catalog and the tokens that spell them, for one tokenizer.
pub struct CallGrammar {
    /// Per catalog action: the whole call, `OPEN` to `CLOSE`.
    calls: Vec<Box<[u8]>>,
    /// Per call and byte position: whether whole tokens can spell the rest of the call from
    /// there (a token is allowed only if it ends at such a position, so no call dead-ends).
    finishable: Vec<Vec<bool>>,
    /// Token ids by the bytes they stand for, for every piece that occurs inside some call.
    pieces: HashMap<Box<[u8]>, Vec<u32>>,
    /// Longest piece in `pieces`.
    max_piece: usize,
    cheapest_answer: usize,
    expected_cost: Vec<f64>,
}

impl std::fmt::Debug for CallGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGrammar")
            .field("calls", &self.calls.len())
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

impl CallGrammar {
    /// The grammar of a catalog's `calls` (one per action, in action order) over `tokenizer`'s
    /// vocabulary; `cheapest_answer` is the action forced when nothing is affordable.
    pub fn new(
        calls: &[CatalogCall],
        cheapest_answer: usize,
        tokenizer: &Tokenizer,
    ) -> CallGrammar {
        let expected_cost = calls.iter().map(|c| c.expected_cost_usd).collect();
        let calls: Vec<Box<[u8]>> = calls.iter().map(|c| c.text.as_bytes().into()).collect();
        let mut inside: HashSet<&[u8]> = HashSet::new();
        for c in &calls {
            for start in 0..c.len() {
                for end in start + 1..=c.len() {
                    inside.insert(&c[start..end]);
                }
            }
        }
        let mut pieces: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        for id in 0..tokenizer.vocab_size() as u32 {
            let piece = tokenizer.token_to_piece(id, false);
            if !piece.is_empty() && inside.contains(piece.as_slice()) {
                pieces.entry(piece.into()).or_default().push(id);
            }
        }
        let max_piece = pieces.keys().map(|p| p.len()).max().unwrap_or(0);
        let finishable = calls
            .iter()
            .map(|c| {
                let mut ok = vec![false; c.len() + 1];
                ok[c.len()] = true;
                for i in (0..c.len()).rev() {
                    ok[i] = (1..=max_piece.min(c.len() - i))
                        .any(|len| ok[i + len] && pieces.contains_key(&c[i..i + len]));
                }
                ok
            })
            .collect();
        CallGrammar {
            calls,
            finishable,
            pieces,
            max_piece,
            cheapest_answer,
            expected_cost,
        }
    }

    /// The whole call text of action `a`.
    pub fn call(&self, a: usize) -> &[u8] {
        &self.calls[a]
    }

    /// Whether the vocabulary can spell every call (one without byte fallback may lack a
    /// character an alias uses).
    pub fn spellable(&self) -> bool {
        self.finishable.iter().all(|f| f[0])
    }
}

/// What the head may emit in one turn: the affordable calls of the catalog with their
/// preference biases, or one call of an environment's functions.
#[derive(Debug)]
pub struct CallPolicy {
    calls: Calls,
    /// Tokens of free text before the head opens the call itself.
    free_tokens: usize,
    /// Nothing was affordable: the cheapest `answer` is the only call, from the first token.
    forced: bool,
}

#[derive(Debug)]
enum Calls {
    Catalog {
        grammar: Arc<CallGrammar>,
        /// Per action: the bias of the token that commits to it, or `None` when it is masked.
        bias: Vec<Option<f32>>,
    },
    /// Function calls with JSON-schema arguments, under llguidance (no preference shaping:
    /// preferences weigh model aliases, which function tools do not have).
    Functions(Arc<FunctionGrammar>),
}

impl CallPolicy {
    /// The calls of a turn with `remaining_usd` left and the task's preference, as a bias per
    /// action.
    pub fn new(
        grammar: Arc<CallGrammar>,
        preference_bias: &[f32],
        remaining_usd: f64,
        free_tokens: usize,
    ) -> CallPolicy {
        let mut bias: Vec<Option<f32>> = grammar
            .expected_cost
            .iter()
            .zip(preference_bias)
            .map(|(&cost, &b)| (cost <= remaining_usd).then_some(b))
            .collect();
        let forced = bias.iter().all(Option::is_none);
        if forced {
            bias[grammar.cheapest_answer] = Some(0.0);
        }
        CallPolicy {
            calls: Calls::Catalog { grammar, bias },
            free_tokens: if forced { 0 } else { free_tokens },
            forced,
        }
    }

    /// One call of `grammar`'s functions after up to `free_tokens` of free text.
    pub fn functions(grammar: Arc<FunctionGrammar>, free_tokens: usize) -> CallPolicy {
        CallPolicy {
            calls: Calls::Functions(grammar),
            free_tokens,
            forced: false,
        }
    }

    /// The catalog's grammar and the biases of its actions; `None` for function calls.
    fn catalog(&self) -> Option<(&CallGrammar, &[Option<f32>])> {
        match &self.calls {
            Calls::Catalog { grammar, bias } => Some((grammar, bias)),
            Calls::Functions(_) => None,
        }
    }

    /// Whether the call was forced to the cheapest `answer`.
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// New tokens a turn may take at most: its free text, then the longest allowed call at
    /// one token per byte.
    /// For function calls: the free text, then the call's allowance.
    pub fn max_tokens(&self) -> usize {
        let longest = match &self.calls {
            Calls::Catalog { grammar, .. } => self
                .allowed()
                .map(|a| grammar.calls[a].len())
                .max()
                .unwrap_or(0),
            Calls::Functions(f) => f.limits().max_call_tokens,
        };
        self.free_tokens + longest
    }

    /// The catalog actions the turn may call (none for function calls).
    fn allowed(&self) -> impl Iterator<Item = usize> + '_ {
        let bias = self.catalog().map_or(&[][..], |(_, b)| b);
        bias.iter().enumerate().filter_map(|(a, b)| b.map(|_| a))
    }
}

/// A call under way.
enum Progress {
    /// The bytes emitted since `OPEN` began, and the catalog actions still possible.
    Catalog { emitted: Vec<u8>, alive: Vec<usize> },
    /// llguidance's state of the function call.
    Function(Box<llguidance::Matcher>),
}

/// What the next token of a turn is chosen from ([`CallHead::rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<'a> {
    /// Free text: the whole vocabulary, with [`CallHead::choose_free`].
    Free,
    /// Under the grammar, and these few tokens are all it allows: compute only their rows
    /// and choose with [`CallHead::choose_call`].
    Only(&'a [u32]),
    /// Under the grammar, with too many tokens allowed for a gather to pay: compute the whole
    /// vocabulary's row and choose with [`CallHead::choose_call`], which masks it.
    Masked,
}

/// The head's state during one turn.
pub struct CallHead {
    policy: Arc<CallPolicy>,
    /// Free text so far.
    free: Vec<u8>,
    free_used: usize,
    call: Option<Progress>,
    /// The action whose call is complete.
    chosen: Option<usize>,
    /// The function call is complete.
    closed: bool,
    /// The function grammar allows too many tokens for a gather to pay ([`Next::Masked`]).
    wide: bool,
    /// Why the grammar could not go on, if it could not.
    failure: Option<String>,
    /// The tokens allowed next and their biases (valid after [`CallHead::rows`]).
    allowed: Vec<u32>,
    bias: Vec<f32>,
    /// Per allowed token: an action it continues and its length in bytes.
    spans: Vec<(usize, usize)>,
}

impl CallHead {
    pub fn new(policy: Arc<CallPolicy>) -> CallHead {
        let mut head = CallHead {
            free: Vec::new(),
            free_used: 0,
            call: None,
            chosen: None,
            closed: false,
            wide: false,
            failure: None,
            allowed: Vec::new(),
            bias: Vec::new(),
            spans: Vec::new(),
            policy,
        };
        if head.policy.forced {
            head.open_call();
        }
        head
    }

    /// The action whose call the turn completed, if it is over.
    pub fn chosen(&self) -> Option<usize> {
        self.chosen
    }

    /// Whether the turn's call is complete (a catalog action or a function call).
    pub fn done(&self) -> bool {
        self.chosen.is_some() || self.closed
    }

    /// Why the call grammar failed, when [`CallHead::choose_call`] returned `None` for it.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Whether the next token is under the grammar.
    pub fn in_call(&self) -> bool {
        self.call.is_some()
    }

    /// Prepares the next token: free text, or the tokens the grammar allows.
    pub fn rows(&mut self) -> Next<'_> {
        if self.call.is_none() && self.free_used >= self.policy.free_tokens {
            self.open_call();
        }
        if self.call.is_none() {
            return Next::Free;
        }
        self.fill_allowed();
        if self.wide {
            Next::Masked
        } else {
            Next::Only(&self.allowed)
        }
    }

    /// Starts the call from its first byte.
    fn open_call(&mut self) {
        self.call = Some(match &self.policy.calls {
            Calls::Catalog { .. } => Progress::Catalog {
                emitted: Vec::new(),
                alive: self.policy.allowed().collect(),
            },
            Calls::Functions(f) => Progress::Function(Box::new(f.matcher())),
        });
    }

    /// Every token the grammar allows next: for the catalog, each token continuing some live
    /// call, with the largest bias among the calls it keeps.
    fn fill_allowed(&mut self) {
        self.allowed.clear();
        self.bias.clear();
        self.spans.clear();
        let (at, alive) = match self.call.as_mut().expect("a call under way") {
            Progress::Function(m) => {
                match m.compute_mask() {
                    Ok(mask) => {
                        mask.iter_set_entries(|t| self.allowed.push(t as u32));
                        // Gathering rows pays only when few are wanted.
                        self.wide = self.allowed.len() > mask.len() / 8;
                    }
                    Err(e) => self.failure = Some(format!("the call grammar: {e}")),
                }
                self.bias.resize(self.allowed.len(), 0.0);
                return;
            }
            Progress::Catalog { emitted, alive } => (emitted.len(), alive),
        };
        let (g, biases) = self.policy.catalog().expect("a catalog call");
        // token -> (bias, an action it continues, its length in bytes)
        let mut best: HashMap<u32, (f32, usize, usize)> = HashMap::new();
        for &a in alive.iter() {
            let tail = &g.calls[a][at..];
            let bias = biases[a].expect("live calls are allowed");
            for len in 1..=g.max_piece.min(tail.len()) {
                if !g.finishable[a][at + len] {
                    continue;
                }
                if let Some(ids) = g.pieces.get(&tail[..len]) {
                    for &id in ids {
                        let e = best.entry(id).or_insert((f32::NEG_INFINITY, a, len));
                        e.0 = e.0.max(bias);
                    }
                }
            }
        }
        let mut found: Vec<(u32, (f32, usize, usize))> = best.into_iter().collect();
        found.sort_unstable_by_key(|p| p.0);
        for (id, (b, a, len)) in found {
            self.allowed.push(id);
            self.bias.push(b);
            self.spans.push((a, len));
        }
    }

    /// Picks the next call token from `logits`: `logits[i]` the logit of `self.allowed[i]`
    /// ([`Next::Only`]), or the whole vocabulary's row ([`Next::Masked`]); each token's bias
    /// is added. `None` when no token is allowed (a vocabulary that cannot spell the call, or
    /// a grammar that failed: [`CallHead::failure`]).
    pub fn choose_call(
        &mut self,
        logits: &mut [f32],
        sampling: &Sampling,
        rng: &mut impl Rng,
    ) -> Option<u32> {
        if self.allowed.is_empty() {
            return None;
        }
        let mut gathered;
        let logits = if logits.len() == self.allowed.len() {
            logits
        } else {
            gathered = Vec::with_capacity(self.allowed.len());
            for &t in &self.allowed {
                gathered.push(*logits.get(t as usize)?);
            }
            &mut gathered[..]
        };
        for (l, b) in logits.iter_mut().zip(&self.bias) {
            *l += b;
        }
        // Masked or underflowed rows still leave a valid choice: the first allowed token.
        let i = pick(logits, sampling, rng).unwrap_or(0);
        let token = self.allowed[i];
        match self.call.as_mut().expect("a call under way") {
            Progress::Function(m) => {
                let step = m.consume_token(token).and_then(|()| m.is_accepting());
                match step {
                    Ok(accepting) => self.closed = accepting,
                    Err(e) => {
                        self.failure = Some(format!("the call grammar: {e}"));
                        return None;
                    }
                }
            }
            Progress::Catalog { emitted, .. } => {
                let (a, len) = self.spans[i];
                let at = emitted.len();
                let (g, _) = self.policy.catalog().expect("a catalog call");
                let piece = g.calls[a][at..at + len].to_vec();
                self.advance(&piece);
            }
        }
        Some(token)
    }

    /// Picks the next token from the whole vocabulary's `logits` (free text). A token that
    /// opens a call is checked against the grammar (resampled when its bytes after `OPEN`
    /// continue no call); an end-of-generation token opens the call instead of ending the turn.
    pub fn choose_free(
        &mut self,
        logits: &mut [f32],
        sampling: &Sampling,
        rng: &mut impl Rng,
        tokenizer: &Tokenizer,
    ) -> Option<u32> {
        let greedy = sampling.temperature <= 0.0;
        // Sampling turns the row into probabilities; the raw logits serve a call opened here.
        let raw = (!greedy).then(|| logits.to_vec());
        if !greedy {
            shape_for_sampling(logits, sampling);
        }
        loop {
            let picked = if greedy {
                argmax(logits)
            } else {
                sample_index(logits, rng.random::<f32>())
            };
            let Some(t) = picked.map(|i| i as u32) else {
                break;
            };
            if tokenizer.is_eog(t) {
                break;
            }
            let mut text = self.free.clone();
            text.extend(tokenizer.token_to_piece(t, false));
            if let Some(at) = find(&text, OPEN.as_bytes()) {
                if !self.begin_call(&text[at..], tokenizer) {
                    // Opens a call the grammar does not continue: never emitted.
                    logits[t as usize] = if greedy { f32::NEG_INFINITY } else { 0.0 };
                    continue;
                }
            }
            self.free = text;
            self.free_used += 1;
            return Some(t);
        }
        // The model ended its turn: the call opens here, its first token chosen from these
        // same logits.
        let row = raw.as_deref().unwrap_or(logits);
        self.open_call();
        self.fill_allowed();
        let mut sub: Vec<f32> = self.allowed.iter().map(|&t| row[t as usize]).collect();
        self.choose_call(&mut sub, sampling, rng)
    }

    /// Starts the call the model opened in free text: `emitted` is `OPEN` and what the same
    /// token wrote after it. False when the grammar does not continue it. A function call must
    /// open on a token boundary (its grammar runs on whole tokens).
    fn begin_call(&mut self, emitted: &[u8], tokenizer: &Tokenizer) -> bool {
        match &self.policy.calls {
            Calls::Catalog { grammar, .. } => {
                let alive: Vec<usize> = self
                    .policy
                    .allowed()
                    .filter(|&a| grammar.calls[a].starts_with(emitted))
                    .collect();
                if alive.is_empty() {
                    return false;
                }
                self.call = Some(Progress::Catalog {
                    emitted: Vec::new(),
                    alive,
                });
                self.advance(emitted);
                true
            }
            Calls::Functions(f) => {
                if emitted != OPEN.as_bytes() {
                    return false;
                }
                let mut m = f.matcher();
                if m.consume_tokens(&tokenizer.encode(OPEN, false, true))
                    .is_err()
                {
                    return false;
                }
                self.call = Some(Progress::Function(Box::new(m)));
                true
            }
        }
    }

    /// Appends `bytes` to a catalog call and keeps the calls they continue.
    fn advance(&mut self, bytes: &[u8]) {
        let Some((g, _)) = self.policy.catalog() else {
            return;
        };
        let Some(Progress::Catalog { emitted, alive }) = self.call.as_mut() else {
            return;
        };
        emitted.extend_from_slice(bytes);
        alive.retain(|&a| g.calls[a].starts_with(emitted));
        if let Some(&a) = alive.iter().find(|&&a| g.calls[a].len() == emitted.len()) {
            self.chosen = Some(a);
        }
    }
}

/// Temperature, top-k and top-p on a whole-vocabulary row, leaving probabilities.
fn shape_for_sampling(logits: &mut [f32], s: &Sampling) {
    apply_temperature(logits, s.temperature as f32);
    if s.top_k > 0 && s.top_k < logits.len() {
        let mut scratch = vec![0f32; logits.len()];
        top_k_mask(logits, s.top_k, &mut scratch);
    }
    softmax_inplace(logits);
    if s.top_p < 1.0 {
        let mut order = vec![0u32; logits.len()];
        top_p_mask(logits, s.top_p as f32, &mut order);
    }
}

/// Picks a token from a whole-vocabulary row with the turn's sampling (no grammar); `None`
/// if every entry is masked.
pub(crate) fn sample_token(logits: &mut [f32], s: &Sampling, rng: &mut impl Rng) -> Option<u32> {
    if s.temperature <= 0.0 {
        return argmax(logits).map(|i| i as u32);
    }
    shape_for_sampling(logits, s);
    sample_index(logits, rng.random::<f32>()).map(|i| i as u32)
}

/// Picks an index of `logits` (greedy, or sampled at the temperature); `None` if all masked.
fn pick(logits: &mut [f32], s: &Sampling, rng: &mut impl Rng) -> Option<usize> {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    apply_temperature(logits, s.temperature as f32);
    softmax_inplace(logits);
    sample_index(logits, rng.random::<f32>())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
