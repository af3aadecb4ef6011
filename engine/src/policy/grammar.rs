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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand::Rng;
use tutti_kernels::{
    apply_temperature, argmax, sample_index, softmax_inplace, top_k_mask, top_p_mask,
};

use crate::catalog::{Catalog, Preference};
use crate::executor::native::runner::Sampling;
use crate::model::Tokenizer;

pub use crate::hermes::{CLOSE, OPEN};

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

/// The text of the call of `tool` with `alias`: Hermes' one spelling ([`crate::hermes::call_text`]).
pub fn call_text(tool: &str, alias: &str) -> String {
    crate::hermes::model_call_text(tool, alias)
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
    /// The grammar of `catalog`'s calls over `tokenizer`'s vocabulary.
    pub fn new(catalog: &Catalog, tokenizer: &Tokenizer) -> CallGrammar {
        let calls: Vec<Box<[u8]>> = catalog
            .actions
            .iter()
            .map(|a| call_text(&a.tool_name, &a.alias).into_bytes().into())
            .collect();
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
            cheapest_answer: crate::policy::cheapest_answer(catalog),
            expected_cost: catalog
                .actions
                .iter()
                .map(|a| a.expected_cost_usd)
                .collect(),
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

/// What the head may emit in one turn: the affordable calls with their preference biases.
#[derive(Debug)]
pub struct CallPolicy {
    grammar: Arc<CallGrammar>,
    /// Per action: the bias of the token that commits to it, or `None` when it is masked.
    bias: Vec<Option<f32>>,
    /// Tokens of free text before the head opens the call itself.
    free_tokens: usize,
    /// Nothing was affordable: the cheapest `answer` is the only call, from the first token.
    forced: bool,
}

impl CallPolicy {
    /// The calls of a turn with `remaining_usd` left and the task's `preference`.
    pub fn new(
        grammar: Arc<CallGrammar>,
        preference: &Preference,
        remaining_usd: f64,
        free_tokens: usize,
    ) -> CallPolicy {
        let mut bias: Vec<Option<f32>> = grammar
            .expected_cost
            .iter()
            .zip(&preference.bias)
            .map(|(&cost, &b)| (cost <= remaining_usd).then_some(b))
            .collect();
        let forced = bias.iter().all(Option::is_none);
        if forced {
            bias[grammar.cheapest_answer] = Some(0.0);
        }
        CallPolicy {
            grammar,
            bias,
            free_tokens: if forced { 0 } else { free_tokens },
            forced,
        }
    }

    /// Whether the call was forced to the cheapest `answer`.
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// New tokens a turn may take at most: its free text, then the longest allowed call at
    /// one token per byte.
    pub fn max_tokens(&self) -> usize {
        let longest = self
            .allowed()
            .map(|a| self.grammar.calls[a].len())
            .max()
            .unwrap_or(0);
        self.free_tokens + longest
    }

    fn allowed(&self) -> impl Iterator<Item = usize> + '_ {
        self.bias
            .iter()
            .enumerate()
            .filter_map(|(a, b)| b.map(|_| a))
    }
}

/// A call under way: the bytes emitted since `OPEN` began, and the actions still possible.
struct Progress {
    emitted: Vec<u8>,
    alive: Vec<usize>,
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

    /// Whether the next token is under the grammar.
    pub fn in_call(&self) -> bool {
        self.call.is_some()
    }

    /// Prepares the next token: `None` when the whole vocabulary is wanted (free text), else
    /// the only token ids the grammar allows.
    pub fn rows(&mut self) -> Option<&[u32]> {
        if self.call.is_none() && self.free_used >= self.policy.free_tokens {
            self.open_call();
        }
        self.call.as_ref()?;
        self.fill_allowed();
        Some(&self.allowed)
    }

    /// Starts the call from its first byte.
    fn open_call(&mut self) {
        self.call = Some(Progress {
            emitted: Vec::new(),
            alive: self.policy.allowed().collect(),
        });
    }

    /// Every token continuing some live call, with the largest bias among the calls it keeps.
    fn fill_allowed(&mut self) {
        let g = &self.policy.grammar;
        let call = self.call.as_ref().expect("a call under way");
        let at = call.emitted.len();
        // token -> (bias, an action it continues, its length in bytes)
        let mut best: HashMap<u32, (f32, usize, usize)> = HashMap::new();
        for &a in &call.alive {
            let tail = &g.calls[a][at..];
            let bias = self.policy.bias[a].expect("live calls are allowed");
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
        self.allowed.clear();
        self.bias.clear();
        self.spans.clear();
        for (id, (b, a, len)) in found {
            self.allowed.push(id);
            self.bias.push(b);
            self.spans.push((a, len));
        }
    }

    /// Picks the next call token from `logits[i]`, the logit of `self.allowed[i]` (as
    /// [`CallHead::rows`] returned), adding each token's bias.
    /// `None` when no token is allowed (a vocabulary that cannot spell the call).
    pub fn choose_call(
        &mut self,
        logits: &mut [f32],
        sampling: &Sampling,
        rng: &mut impl Rng,
    ) -> Option<u32> {
        if self.allowed.is_empty() || logits.len() != self.allowed.len() {
            return None;
        }
        for (l, b) in logits.iter_mut().zip(&self.bias) {
            *l += b;
        }
        // Masked or underflowed rows still leave a valid choice: the first allowed token.
        let i = pick(logits, sampling, rng).unwrap_or(0);
        let (a, len) = self.spans[i];
        let at = self.call.as_ref().expect("a call under way").emitted.len();
        let piece = self.policy.grammar.calls[a][at..at + len].to_vec();
        self.advance(&piece);
        Some(self.allowed[i])
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
                let emitted = text[at..].to_vec();
                let alive: Vec<usize> = self
                    .policy
                    .allowed()
                    .filter(|&a| self.policy.grammar.calls[a].starts_with(&emitted))
                    .collect();
                if alive.is_empty() {
                    // Opens a call no action continues: never emitted.
                    logits[t as usize] = if greedy { f32::NEG_INFINITY } else { 0.0 };
                    continue;
                }
                self.call = Some(Progress {
                    emitted: Vec::new(),
                    alive,
                });
                self.advance(&emitted);
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

    /// Appends `bytes` to the call and keeps the calls they continue.
    fn advance(&mut self, bytes: &[u8]) {
        let g = &self.policy.grammar;
        let call = self.call.as_mut().expect("a call under way");
        call.emitted.extend_from_slice(bytes);
        call.alive
            .retain(|&a| g.calls[a].starts_with(&call.emitted));
        if let Some(&a) = call
            .alive
            .iter()
            .find(|&&a| g.calls[a].len() == call.emitted.len())
        {
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
pub fn sample_token(logits: &mut [f32], s: &Sampling, rng: &mut impl Rng) -> Option<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::sim_catalog;
    use crate::model::testing::{tiny_model, TinyConfig};
    use crate::task::Action;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn setup() -> (Catalog, Tokenizer, Arc<CallGrammar>) {
        let cfg = TinyConfig {
            tool_tokens: true,
            ..TinyConfig::qwen3()
        };
        let (_, tok) = tiny_model(&cfg).unwrap();
        let catalog = sim_catalog();
        let grammar = Arc::new(CallGrammar::new(&catalog, &tok));
        (catalog, tok, grammar)
    }

    /// Drives a head with random logits until its call is complete; returns the action and
    /// the text of the tokens it chose.
    fn drive(
        head: &mut CallHead,
        tok: &Tokenizer,
        rng: &mut SmallRng,
        s: &Sampling,
    ) -> (usize, String) {
        let mut tokens = Vec::new();
        for _ in 0..400 {
            let t = match head.rows() {
                Some(ids) => {
                    let mut l: Vec<f32> = ids.iter().map(|_| rng.random::<f32>() * 4.0).collect();
                    head.choose_call(&mut l, s, rng)
                }
                None => {
                    let mut l: Vec<f32> = (0..tok.vocab_size())
                        .map(|_| rng.random::<f32>() * 4.0)
                        .collect();
                    head.choose_free(&mut l, s, rng, tok)
                }
            }
            .expect("a token");
            tokens.push(t);
            if let Some(a) = head.chosen() {
                return (a, tok.decode(&tokens, false));
            }
        }
        panic!("no call after 400 tokens: {:?}", tok.decode(&tokens, false));
    }

    #[test]
    fn every_call_is_spellable_and_resolves_to_its_action() {
        let (catalog, _, grammar) = setup();
        assert!(grammar.spellable());
        for a in 0..catalog.actions.len() {
            let text = String::from_utf8(grammar.call(a).to_vec()).unwrap();
            let action = Action::parse_hermes(&text).unwrap();
            assert_eq!(catalog.resolve(&action), Ok(a), "{text}");
        }
    }

    #[test]
    fn random_logits_always_end_in_a_valid_affordable_call() {
        let (catalog, tok, grammar) = setup();
        let none = catalog.preference(&[]);
        let max_cost = catalog
            .actions
            .iter()
            .map(|a| a.expected_cost_usd)
            .fold(0.0, f64::max);
        let mut rng = SmallRng::seed_from_u64(3);
        for i in 0..300 {
            let remaining = max_cost * (i % 7) as f64 / 6.0;
            let s = Sampling {
                temperature: [0.0, 1.0][i % 2],
                ..Sampling::GREEDY
            };
            let policy = Arc::new(CallPolicy::new(grammar.clone(), &none, remaining, i % 5));
            let mut head = CallHead::new(policy.clone());
            let (a, text) = drive(&mut head, &tok, &mut rng, &s);
            let action = Action::parse_hermes(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(catalog.resolve(&action), Ok(a));
            if policy.forced() {
                assert_eq!(a, crate::policy::cheapest_answer(&catalog));
            } else {
                assert!(catalog.actions[a].expected_cost_usd <= remaining, "{text}");
            }
        }
    }

    #[test]
    fn nothing_affordable_forces_the_cheapest_answer_from_the_first_token() {
        let (catalog, tok, grammar) = setup();
        let policy = Arc::new(CallPolicy::new(grammar, &catalog.preference(&[]), 0.0, 16));
        assert!(policy.forced());
        let mut head = CallHead::new(policy);
        assert!(head.rows().is_some(), "no free text when forced");
        let mut rng = SmallRng::seed_from_u64(1);
        let (a, text) = drive(&mut head, &tok, &mut rng, &Sampling::GREEDY);
        assert_eq!(a, crate::policy::cheapest_answer(&catalog));
        assert!(text.starts_with(OPEN), "{text}");
    }

    #[test]
    fn a_preference_raises_its_alias_share() {
        let (catalog, tok, grammar) = setup();
        let share = |pref: &Arc<Preference>| {
            let mut rng = SmallRng::seed_from_u64(9);
            let s = Sampling {
                temperature: 1.0,
                ..Sampling::GREEDY
            };
            let n = 400;
            let hits = (0..n)
                .filter(|_| {
                    let policy = CallPolicy::new(grammar.clone(), pref, f64::INFINITY, 0);
                    let mut head = CallHead::new(Arc::new(policy));
                    let (a, _) = drive(&mut head, &tok, &mut rng, &s);
                    &*catalog.actions[a].alias == "search-3"
                })
                .count();
            hits as f64 / n as f64
        };
        let base = share(&catalog.preference(&[]));
        let liked = share(&catalog.preference(&[("search-3".into(), 1.0)]));
        assert!(liked > base + 0.1, "base {base}, with preference {liked}");
    }

    #[test]
    fn the_model_opening_a_call_switches_to_the_grammar() {
        let (_, tok, grammar) = setup();
        let catalog = sim_catalog();
        let policy = Arc::new(CallPolicy::new(grammar, &catalog.preference(&[]), 1.0, 50));
        let mut head = CallHead::new(policy);
        assert!(head.rows().is_none());
        let open = tok
            .token_id(OPEN)
            .expect("the tiny vocabulary has <tool_call>");
        let mut logits = vec![0f32; tok.vocab_size()];
        logits[open as usize] = 10.0;
        let mut rng = SmallRng::seed_from_u64(1);
        let t = head.choose_free(&mut logits, &Sampling::GREEDY, &mut rng, &tok);
        assert_eq!(t, Some(open));
        assert!(head.in_call());
        let ids = head.rows().expect("under the grammar").to_vec();
        let texts: Vec<String> = ids.iter().map(|&i| tok.decode(&[i], false)).collect();
        assert!(
            texts.iter().all(|t| "{\"name\": ".starts_with(t.as_str())),
            "{texts:?}"
        );
        // An end-of-generation token opens the call instead of ending the turn.
        let mut head = CallHead::new(Arc::new(CallPolicy::new(
            Arc::new(CallGrammar::new(&catalog, &tok)),
            &catalog.preference(&[]),
            1.0,
            50,
        )));
        let mut logits = vec![0f32; tok.vocab_size()];
        logits[tok.eos_id().unwrap() as usize] = 10.0;
        let t = head
            .choose_free(&mut logits, &Sampling::GREEDY, &mut rng, &tok)
            .unwrap();
        assert!(head.in_call());
        assert!(OPEN.starts_with(&tok.decode(&[t], false)));
    }
}
