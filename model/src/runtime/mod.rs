//! The in-process model runtime: a [`NativeRuntime`] is one loaded GGUF model behind the
//! continuous-batching scheduler ([`crate::scheduler`]), whose `runner::NativeRunner` keeps
//! each sequence's tokens and KV cache, batches the decode steps of every live sequence, and
//! runs the policy head ([`crate::head`]) where a turn must end in a valid call. Everything that
//! names the same model file shares one runtime ([`NativeModels`]), so an orchestrator's turns
//! and expert completions on that model join the same batches.
//!
//! [`PromptRenderer`] turns a conversation into tokens with the model's chat template, with the
//! first message's turn as a prefix shared by every conversation that starts the same way.

mod runner;

use runner::NativeOutput;
pub use runner::{Generated, NativeInput, NativeStats};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::Value;

use crate::chat_template::ChatTemplate;
use crate::error::{Context, Result};
use crate::scheduler::{self, BatchLimits, SchedulerHandle, SchedulerStats};
use crate::{Model, Tokenizer};
use runner::NativeRunner;

/// The batching limits of a runtime, from `[orchestrator]`.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeLimits {
    pub batch: BatchLimits,
    pub kv_cache_bytes: u64,
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
    pub(crate) fn start(
        model: Model,
        tokenizer: Tokenizer,
        limits: RuntimeLimits,
    ) -> Arc<NativeRuntime> {
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
    pub(crate) fn load(path: &Path, limits: RuntimeLimits) -> Result<Arc<NativeRuntime>> {
        let (model, tokenizer) =
            Model::load(path).with_context(|| format!("cannot load {}", path.display()))?;
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
    pub fn get(&mut self, path: &Path, limits: RuntimeLimits) -> Result<Arc<NativeRuntime>> {
        let canonical = std::fs::canonicalize(path).with_context(|| {
            format!(
                "model file {} (scripts/setup-model.sh installs the reference model)",
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
}

/// Renders a conversation with a chat template and tokenizes it, with the first message's
/// turn as a prefix shared by every conversation that starts the same way.
pub struct PromptRenderer {
    template: ChatTemplate,
}

impl PromptRenderer {
    /// The template of the config, else the one in the model file.
    pub fn new(configured: Option<&str>, tokenizer: &Tokenizer, who: &str) -> Result<Self> {
        let source = configured.or(tokenizer.chat_template()).with_context(|| {
            format!(
                "{who}: the model file has no chat template (tokenizer.chat_template); \
                 set `chat_template` in the config"
            )
        })?;
        Ok(PromptRenderer {
            template: ChatTemplate::new(source).with_context(|| who.to_string())?,
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
    ) -> Result<(Vec<u32>, usize)> {
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
