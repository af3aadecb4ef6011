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
//! ([`crate::policy::grammar`]) lets the model write up to `max_tokens` of free text, then
//! constrains it to the catalog's calls (shaped by the task's preference, masked by its
//! remaining budget) from the moment it opens `<tool_call>`, ends its turn, or runs out of
//! free tokens.
//!
//! With an environment, the turn's calls are the environment's functions (and the user tool)
//! instead: the system turn lists them (Hermes' `<tools>`), and the head holds the call to
//! their JSON schemas with llguidance ([`crate::policy::functions`]). Each distinct tool list
//! is compiled once. An episode's problem (an environment's instructions, e.g. τ²'s domain
//! policy) joins the shared prefix, so it is prefilled once for all the tasks that bring it.

pub mod runner;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use lru::LruCache;
use parking_lot::Mutex;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Decision, ExecError, Executor, TurnView};
use crate::backend::openai::ChatTemplate;
use crate::backend::sim::stable_hash;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::model::{Model, Tokenizer};
use crate::policy::functions::{FunctionGrammar, FunctionLimits, Vocabulary};
use crate::policy::grammar::{CallGrammar, CallPolicy};
use crate::scheduler::{self, BatchLimits, SchedulerHandle, SchedulerStats};
use runner::{NativeInput, NativeOutput, NativeRunner, NativeStats, Sampling};

/// KV memory of a native runtime when the config sets no `kv_cache_bytes`.
pub const DEFAULT_KV_CACHE_BYTES: u64 = 1 << 30;

/// The batching limits of a runtime, from `[orchestrator]`.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeLimits {
    pub batch: BatchLimits,
    pub kv_cache_bytes: u64,
}

impl RuntimeLimits {
    pub fn from_config(cfg: &Config) -> RuntimeLimits {
        let o = &cfg.orchestrator;
        RuntimeLimits {
            batch: BatchLimits {
                max_seqs: o.max_seqs,
                max_batched_tokens: o.max_batched_tokens,
            },
            kv_cache_bytes: o.kv_cache_bytes.unwrap_or(DEFAULT_KV_CACHE_BYTES),
        }
    }
}

/// One model in-process behind its own continuous-batching scheduler.
pub struct NativeRuntime {
    handle: SchedulerHandle<NativeRunner>,
    tokenizer: Arc<Tokenizer>,
    stats: Arc<NativeStats>,
    _thread: JoinHandle<NativeRunner>,
}

impl NativeRuntime {
    /// Starts a runtime around a loaded model.
    pub fn start(model: Model, tokenizer: Tokenizer, limits: RuntimeLimits) -> Arc<NativeRuntime> {
        let tokenizer = Arc::new(tokenizer);
        let stats = Arc::new(NativeStats::default());
        let runner = NativeRunner::new(
            Arc::new(model),
            tokenizer.clone(),
            limits.kv_cache_bytes,
            limits.batch.max_batched_tokens,
            stats.clone(),
        );
        let (handle, thread) = scheduler::spawn(runner, limits.batch);
        Arc::new(NativeRuntime {
            handle,
            tokenizer,
            stats,
            _thread: thread,
        })
    }

    /// Loads a GGUF file and starts a runtime on it.
    pub fn load(path: &Path, limits: RuntimeLimits) -> Result<Arc<NativeRuntime>, String> {
        let (model, tokenizer) =
            Model::load(path).map_err(|e| format!("cannot load {}: {e:#}", path.display()))?;
        Ok(Self::start(model, tokenizer, limits))
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn stats(&self) -> &NativeStats {
        &self.stats
    }

    pub fn scheduler_stats(&self) -> &SchedulerStats {
        self.handle.stats()
    }

    /// A new sequence.
    pub fn open(&self) -> u64 {
        self.handle.open()
    }

    /// Runs one turn of sequence `seq` (its cache is kept for the next turn).
    pub async fn turn(&self, seq: u64, input: NativeInput) -> NativeOutput {
        self.handle
            .turn(seq, input)
            .await
            .map_err(|e| e.to_string())?
    }

    /// The sequence is done; its cache goes.
    pub fn release(&self, seq: u64) {
        self.handle.release(seq);
    }

    /// One completion on a fresh sequence, released afterwards.
    pub async fn complete(&self, input: NativeInput) -> NativeOutput {
        let seq = self.open();
        let out = self.turn(seq, input).await;
        self.release(seq);
        out
    }
}

/// The runtimes of an engine, one per model file: the executor and `native` backends naming the
/// same file share it.
#[derive(Default)]
pub struct NativeModels {
    loaded: Vec<(PathBuf, Arc<NativeRuntime>)>,
}

impl NativeModels {
    /// The runtime of `path`, loading it on first use.
    pub fn get(
        &mut self,
        path: &Path,
        limits: RuntimeLimits,
    ) -> Result<Arc<NativeRuntime>, String> {
        let canonical = std::fs::canonicalize(path).map_err(|e| {
            format!(
                "model file {}: {e} (scripts/setup-model.sh installs the reference model)",
                path.display()
            )
        })?;
        if let Some((_, r)) = self.loaded.iter().find(|(p, _)| *p == canonical) {
            return Ok(r.clone());
        }
        let r = NativeRuntime::load(&canonical, limits)?;
        self.loaded.push((canonical, r.clone()));
        Ok(r)
    }

    /// Registers an already started runtime under `path` (tests build models in memory).
    pub fn insert(&mut self, path: PathBuf, runtime: Arc<NativeRuntime>) {
        self.loaded.push((path, runtime));
    }

    /// Every runtime, for reports.
    pub fn runtimes(&self) -> impl Iterator<Item = &Arc<NativeRuntime>> {
        self.loaded.iter().map(|(_, r)| r)
    }
}

/// Renders a conversation with a chat template and tokenizes it, with the first message's
/// turn as a prefix shared by every conversation that starts the same way.
pub struct PromptRenderer {
    template: ChatTemplate,
}

impl PromptRenderer {
    /// The template of the config, else the one in the model file.
    pub fn new(configured: Option<&str>, tokenizer: &Tokenizer, who: &str) -> Result<Self, String> {
        let source = configured.or(tokenizer.chat_template()).ok_or_else(|| {
            format!(
                "{who}: the model file has no chat template (tokenizer.chat_template); \
                 set `chat_template` in the config"
            )
        })?;
        Ok(PromptRenderer {
            template: ChatTemplate::new(source)?,
        })
    }

    /// The tokens of `messages` with the generation prompt, and how many of them are the
    /// shared prefix (the rendering of `messages[..shared_messages]` alone; 0 when it is not a
    /// prefix of the whole).
    pub fn tokens(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Value],
        shared_messages: usize,
    ) -> Result<(Vec<u32>, usize), String> {
        let text = self.template.render_messages(messages)?;
        if shared_messages > 0 {
            let head = self
                .template
                .render_conversation(&messages[..shared_messages], false)?;
            if let Some(rest) = text.strip_prefix(head.as_str()) {
                let mut tokens = tokenizer.encode(&head, true, true);
                let shared = tokens.len();
                tokens.extend(tokenizer.encode(rest, false, true));
                return Ok((tokens, shared));
            }
        }
        Ok((tokenizer.encode(&text, true, true), 0))
    }
}

pub struct NativeExecutor {
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
    pub fn new(
        cfg: &Config,
        catalog: Arc<Catalog>,
        models: &mut NativeModels,
    ) -> Result<NativeExecutor, ExecError> {
        let o = &cfg.orchestrator;
        let path = o.model.as_deref().ok_or_else(|| {
            ExecError("the native executor needs `orchestrator.model`, a GGUF file".into())
        })?;
        let runtime = models
            .get(Path::new(path), RuntimeLimits::from_config(cfg))
            .map_err(|e| ExecError(format!("orchestrator: {e}")))?;
        let prompt = PromptRenderer::new(
            o.chat_template.as_deref(),
            runtime.tokenizer(),
            "orchestrator",
        )
        .map_err(ExecError)?;
        let grammar = match cfg.environment {
            Some(_) => None,
            None => {
                let grammar = CallGrammar::new(&catalog, runtime.tokenizer());
                if !grammar.spellable() {
                    return Err(ExecError(format!(
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
                    .map_err(|e| ExecError(format!("orchestrator: {e}")))?;
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

    pub fn runtime(&self) -> &Arc<NativeRuntime> {
        &self.runtime
    }

    /// The compiled tool list of `functions`, compiled now on first sight.
    fn tool_list(&self, functions: &[Value]) -> Result<Arc<ToolList>, ExecError> {
        let Some((vocabulary, limits)) = &self.functions else {
            return Err(ExecError(
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
            .map_err(|e| ExecError(format!("the environment's tools: {e}")))?;
        let list = Arc::new(ToolList {
            system: crate::hermes::tools_prompt(functions),
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
                ExecError("a turn without the environment's tools under an [environment]".into())
            })?;
            let policy =
                CallPolicy::new(grammar, view.preference, view.remaining_usd, self.max_new);
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
            .map_err(ExecError)?;
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
            .map_err(ExecError)?;
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
