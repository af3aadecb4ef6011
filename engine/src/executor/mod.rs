//! Orchestrator executors: what turns an episode's context into the orchestrator's next reply.
//!
//! `native` (an in-process GGUF model) and `sim` (a workload model for benchmarks) run on the
//! continuous-batching scheduler; `openai` sends each turn to an OpenAI-compatible server;
//! `replay` plays calls recorded in the task. All implement the same [`Executor`] trait.

pub(crate) mod native;
pub(crate) mod openai;
pub(crate) mod replay;
pub(crate) mod sim;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::catalog::{Catalog, Preference};
use crate::config::{Config, ExecutorKind};
use crate::task::{Message, Role, Task};
use tutti_model::scheduler::SchedulerStats;

/// What an executor sees of an episode when asked for the next turn.
pub(crate) struct TurnView<'a> {
    pub task: &'a Task,
    pub messages: &'a [Message],
    /// Messages before this index were already part of an earlier turn's context.
    pub new_from: usize,
    /// Turns already taken.
    pub turn: u32,
    pub remaining_usd: f64,
    pub preference: &'a Arc<Preference>,
    /// A hash of the whole context: equal contexts have equal hashes.
    pub context_hash: u64,
    /// The environment's function tools (OpenAI definitions), besides the catalog's; empty
    /// without an environment.
    pub functions: &'a [serde_json::Value],
}

/// The orchestrator's reply for one turn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why the orchestrator could not be built or could not take a turn; the underlying error, when
/// there is one, is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The configuration or the task does not let the orchestrator run (the message says why).
    #[error("orchestrator executor: {0}")]
    Invalid(String),
    /// The orchestrator's server failed the turn.
    #[error("orchestrator executor: {0}")]
    Server(#[source] crate::backend::BackendError),
    /// The in-process model could not be loaded or run.
    #[error("orchestrator executor: {what}: {source}")]
    Model {
        what: String,
        #[source]
        source: tutti_model::ModelError,
    },
    /// The scheduler thread of the model has stopped.
    #[error("orchestrator executor: {0}")]
    Scheduler(#[source] tutti_model::scheduler::SchedulerGone),
}

pub(crate) trait Executor: Send + Sync {
    /// A new sequence for an episode.
    fn open(&self) -> u64;
    /// Runs one turn.
    fn decide<'a>(
        &'a self,
        seq: u64,
        view: TurnView<'a>,
    ) -> BoxFuture<'a, Result<Decision, ExecError>>;
    /// The episode is over; its sequence's state can go.
    fn release(&self, seq: u64);
    /// The batching scheduler's counters, for executors that batch.
    fn scheduler_stats(&self) -> Option<&SchedulerStats> {
        None
    }
    /// The in-process model's counters, for the native executor.
    fn native_stats(&self) -> Option<&tutti_model::runtime::NativeStats> {
        None
    }
}

/// The conversation as chat messages: `system`, then the episode's messages — the problem as
/// `Problem: …` followed by `problem_suffix`, the orchestrator's replies, and tool responses
/// in `<tool_response>` tags (as user turns).
pub(crate) fn chat_messages(
    system: &str,
    messages: &[Message],
    problem_suffix: &str,
) -> Vec<serde_json::Value> {
    let mut out = vec![serde_json::json!({"role": "system", "content": system})];
    for m in messages {
        let (role, content) = match m.role {
            Role::User => ("user", format!("Problem: {}{problem_suffix}", m.content)),
            Role::Assistant => ("assistant", m.content.clone()),
            Role::Tool => (
                "user",
                format!("<tool_response>\n{}\n</tool_response>", m.content),
            ),
        };
        out.push(serde_json::json!({"role": role, "content": content}));
    }
    out
}

/// A task's preference weights as `alias: weight, …`.
pub(crate) fn preference_text(preference: &[(String, f64)]) -> String {
    preference
        .iter()
        .map(|(k, w)| format!("{k}: {w}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the executor the config names.
/// `models` holds the in-process models, shared with `native` backends.
pub(crate) fn build(
    cfg: &Config,
    catalog: Arc<Catalog>,
    models: &mut tutti_model::runtime::NativeModels,
) -> Result<Arc<dyn Executor>, ExecError> {
    match cfg.orchestrator.executor {
        ExecutorKind::Sim => Ok(Arc::new(sim::SimExecutor::start(cfg, catalog))),
        ExecutorKind::Openai => Ok(Arc::new(openai::OpenAiExecutor::new(cfg, catalog)?)),
        ExecutorKind::Native => Ok(Arc::new(native::NativeExecutor::new(cfg, catalog, models)?)),
        ExecutorKind::Replay => Ok(Arc::new(replay::ReplayExecutor)),
    }
}
