//! The `native` executor: the orchestrator model runs in-process, and the decode steps of every
//! live task are grouped into continuous batches.
//!
//! A [`NativeRuntime`] is one loaded GGUF model behind the continuous-batching scheduler
//! ([`runner::NativeRunner`]). The executor and every `native` backend on the same model file
//! share one runtime (see [`NativeModels`]), so expert calls join the orchestrator's batches.
//!
//! The orchestrator's conversation is append-only — system prompt with the tool catalog, the
//! problem (with the task's preference and budget), then each reply and tool response — so a
//! sequence whose cache was kept across a tool call prefills only the new messages, and the
//! system turn, identical for every task, is a prefix shared by reference.
//!
//! Every turn ends with a valid call of the catalog: the policy head
//! ([`tutti_model::head`]) lets the model write up to `max_tokens` of free text, then
//! constrains it to the catalog's calls (shaped by the task's preference, masked by its
//! remaining budget) from the moment it opens `<tool_call>`, ends its turn, or runs out of
//! free tokens.
//!
//! With an environment, the turn's calls are the environment's functions (and the user tool)
//! instead: the system turn lists them (Hermes' `<tools>`), and the head holds the call to
//! their JSON schemas with llguidance ([`tutti_model::head::functions`]). Each distinct tool list
//! is compiled once. An episode's problem (an environment's instructions, e.g. τ²'s domain
//! policy) joins the shared prefix, so it is prefilled once for all the tasks that bring it.

#[cfg(test)]
mod head_tests;
#[cfg(test)]
mod policy_tests;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Decision, ExecError, Executor, TurnView};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::task::stable_hash;
use tutti_model::head::functions::{FunctionGrammar, FunctionLimits, Vocabulary};
use tutti_model::head::Sampling;
use tutti_model::head::{CallGrammar, CallPolicy, CatalogCall};
use tutti_model::runtime::{NativeInput, NativeStats};
use tutti_model::runtime::{NativeModels, NativeRuntime, PromptRenderer, RuntimeLimits};
use tutti_model::scheduler::{BatchLimits, SchedulerStats};
use tutti_model::Tokenizer;

/// KV memory of a native runtime when the config sets no `kv_cache_bytes`.
const DEFAULT_KV_CACHE_BYTES: u64 = 1 << 30;

/// The batching limits of a native runtime, from `[orchestrator]`.
pub(crate) fn runtime_limits(cfg: &Config) -> RuntimeLimits {
    let o = &cfg.orchestrator;
    RuntimeLimits {
        batch: BatchLimits {
            max_seqs: o.max_seqs,
            max_batched_tokens: o.max_batched_tokens,
        },
        kv_cache_bytes: o.kv_cache_bytes.unwrap_or(DEFAULT_KV_CACHE_BYTES),
    }
}

/// The policy head's grammar of `catalog`'s calls over `tokenizer`'s vocabulary.
pub(crate) fn catalog_grammar(catalog: &Catalog, tokenizer: &Tokenizer) -> CallGrammar {
    let calls: Vec<CatalogCall> = catalog
        .actions
        .iter()
        .map(|a| CatalogCall {
            text: tutti_model::hermes::model_call_text(&a.tool_name, &a.alias),
            expected_cost_usd: a.expected_cost_usd,
        })
        .collect();
    CallGrammar::new(&calls, crate::policy::cheapest_answer(catalog), tokenizer)
}

pub(crate) struct NativeExecutor {
    runtime: Arc<NativeRuntime>,
    prompt: PromptRenderer,
    system: String,
    /// Free-text tokens per turn before the head opens the call.
    max_new: usize,
    sampling: Sampling,
    /// The catalog's calls; `None` with an environment, whose episodes call its functions.
    grammar: Option<Arc<CallGrammar>>,
    /// With an environment: the vocabulary as the function grammar sees it, and its limits.
    functions: Option<(Vocabulary, FunctionLimits)>,
    /// Compiled tool lists, by the hash of their definitions.
    tool_lists: Mutex<LruCache<u64, Arc<ToolList>>>,
    /// The problem texts (by hash) shared as prefixes.
    problems: Mutex<HashSet<u64>>,
}

/// One tool list of an environment: its system turn and its call grammar.
struct ToolList {
    system: String,
    grammar: Arc<FunctionGrammar>,
}

/// Tool lists kept compiled (an environment usually has one).
const TOOL_LISTS: usize = 16;
/// Distinct problem texts that may become shared prefixes; later ones are not shared (each
/// shared prefix holds KV memory for the whole run).
const SHARED_PROBLEMS: usize = 8;

impl NativeExecutor {
    pub(crate) fn new(
        cfg: &Config,
        catalog: Arc<Catalog>,
        models: &mut NativeModels,
    ) -> Result<NativeExecutor, ExecError> {
        let o = &cfg.orchestrator;
        let path = o.model.as_deref().ok_or_else(|| {
            ExecError::Invalid("the native executor needs `orchestrator.model`, a GGUF file".into())
        })?;
        let runtime = models
            .get(Path::new(path), runtime_limits(cfg))
            .map_err(|source| ExecError::Model {
                what: "orchestrator".into(),
                source,
            })?;
        let prompt = PromptRenderer::new(
            o.chat_template.as_deref(),
            runtime.tokenizer(),
            "orchestrator",
        )
        .map_err(|e| ExecError::Invalid(e.to_string()))?;
        let grammar = match cfg.environment {
            Some(_) => None,
            None => {
                let grammar = catalog_grammar(&catalog, runtime.tokenizer());
                if !grammar.spellable() {
                    return Err(ExecError::Invalid(format!(
                        "orchestrator: the vocabulary of {path} cannot spell every tool call of \
                         the catalog (a tool or alias name uses characters it has no token for)"
                    )));
                }
                Some(Arc::new(grammar))
            }
        };
        let functions = match &cfg.environment {
            None => None,
            Some(e) => {
                let vocabulary = Vocabulary::new(runtime.tokenizer())
                    .map_err(|e| ExecError::Invalid(format!("orchestrator: {e}")))?;
                let limits = FunctionLimits {
                    max_call_tokens: e.max_call_tokens as usize,
                    max_string_chars: e.max_string_chars as u64,
                };
                Some((vocabulary, limits))
            }
        };
        Ok(NativeExecutor {
            functions,
            tool_lists: Mutex::new(LruCache::new(
                NonZeroUsize::new(TOOL_LISTS).expect("non-zero"),
            )),
            problems: Mutex::new(HashSet::new()),
            grammar,
            prompt,
            system: super::openai::system_prompt(&catalog),
            max_new: o.max_tokens as usize,
            sampling: Sampling {
                temperature: o.temperature,
                top_p: o.top_p,
                top_k: o.top_k,
                seed: cfg.simulation.seed,
            },
            runtime,
        })
    }

    /// The compiled tool list of `functions`, compiled now on first sight.
    fn tool_list(&self, functions: &[Value]) -> Result<Arc<ToolList>, ExecError> {
        let Some((vocabulary, limits)) = &self.functions else {
            return Err(ExecError::Invalid(
                "function tools need an [environment] in the config".into(),
            ));
        };
        let text = serde_json::to_string(functions).expect("JSON serializes");
        let key = stable_hash(0, &[text.as_bytes()]);
        if let Some(list) = self.tool_lists.lock().get(&key) {
            return Ok(list.clone());
        }
        let grammar = vocabulary
            .functions(functions, *limits)
            .map_err(|e| ExecError::Invalid(format!("the environment's tools: {e}")))?;
        let list = Arc::new(ToolList {
            system: tutti_model::hermes::tools_prompt(functions),
            grammar: Arc::new(grammar),
        });
        self.tool_lists.lock().put(key, list.clone());
        Ok(list)
    }

    /// Messages of the shared prefix: the system turn, and with an environment the problem too
    /// (its instructions, the same for every task of a domain), for the first
    /// [`SHARED_PROBLEMS`] distinct problems; later ones share the system turn only.
    fn shared_messages(&self, view: &TurnView<'_>, messages: &[Value]) -> usize {
        let Some(problem) = messages.get(1).filter(|_| !view.functions.is_empty()) else {
            return 1;
        };
        let key = stable_hash(0, &[problem.to_string().as_bytes()]);
        let mut shared = self.problems.lock();
        if shared.contains(&key) || shared.len() < SHARED_PROBLEMS && shared.insert(key) {
            2
        } else {
            1
        }
    }

    /// The conversation as chat messages; it only ever grows, turn by turn (the preference
    /// and budget are stated once, with the problem).
    fn messages(&self, system: &str, view: &TurnView<'_>) -> Vec<Value> {
        let mut suffix = String::new();
        if !view.task.preference.is_empty() {
            let prefs = super::preference_text(&view.task.preference);
            suffix.push_str(&format!("\nPreference weights: {prefs}."));
        }
        if let Some(b) = view.task.budget_usd {
            suffix.push_str(&format!("\nBudget: ${b:.4}."));
        }
        super::chat_messages(system, view.messages, &suffix)
    }

    async fn turn(&self, seq: u64, view: TurnView<'_>) -> Result<Decision, ExecError> {
        let (messages, policy) = if view.functions.is_empty() {
            let grammar = self.grammar.clone().ok_or_else(|| {
                ExecError::Invalid(
                    "a turn without the environment's tools under an [environment]".into(),
                )
            })?;
            let policy = CallPolicy::new(
                grammar,
                &view.preference.bias,
                view.remaining_usd,
                self.max_new,
            );
            (self.messages(&self.system, &view), policy)
        } else {
            let list = self.tool_list(view.functions)?;
            let policy = CallPolicy::functions(list.grammar.clone(), self.max_new);
            (self.messages(&list.system, &view), policy)
        };
        let shared = self.shared_messages(&view, &messages);
        let (tokens, shared_prefix) = self
            .prompt
            .tokens(self.runtime.tokenizer(), &messages, shared)
            .map_err(|source| ExecError::Model {
                what: "the prompt".into(),
                source,
            })?;
        let out = self
            .runtime
            .turn(
                seq,
                NativeInput {
                    tokens,
                    shared_prefix,
                    max_new: policy.max_tokens(),
                    stop: Arc::from([]),
                    sampling: Sampling {
                        // The task's id and its context: two tasks alike still draw apart.
                        seed: self.sampling.seed
                            ^ view.context_hash
                            ^ stable_hash(0, &[view.task.id.as_bytes()]),
                        ..self.sampling
                    },
                    policy: Some(Arc::new(policy)),
                },
            )
            .await
            .map_err(ExecError::Invalid)?;
        Ok(Decision {
            text: out.text,
            prompt_tokens: out.prompt_tokens,
            completion_tokens: out.completion_tokens,
        })
    }
}

impl Executor for NativeExecutor {
    fn open(&self) -> u64 {
        self.runtime.open()
    }

    fn decide<'a>(
        &'a self,
        seq: u64,
        view: TurnView<'a>,
    ) -> BoxFuture<'a, Result<Decision, ExecError>> {
        Box::pin(self.turn(seq, view))
    }

    fn release(&self, seq: u64) {
        self.runtime.release(seq);
    }

    fn scheduler_stats(&self) -> Option<&SchedulerStats> {
        Some(self.runtime.scheduler_stats())
    }

    fn native_stats(&self) -> Option<&NativeStats> {
        Some(self.runtime.stats())
    }
}
