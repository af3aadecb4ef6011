//! The engine: builds the executor, backends, coalescers and cache of a config, and runs jobs.
//!
//! One episode per task, each a tokio task, at most `max_live_tasks` at once; results go out on a
//! channel as each episode ends, in completion order.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{self, HostBackends};
use crate::cache::{CacheStats, ResultCache};
use crate::catalog::Catalog;
use crate::coalesce::{Coalescer, CoalescerLimits};
use crate::config::Config;
use crate::environment::{EnvClient, SessionCounts};
use crate::episode::{run_episode, Cancel, EnvSetup, EpisodeEnv, DEFAULT_USER_PROMPT};
use crate::executor;
use crate::ledger::{Ledger, LedgerSummary, Pricing, TaskLedger};
use crate::task::{Status, Task, TaskResult};
use tutti_model::runtime::NativeModels;
use tutti_model::scheduler::SchedulerStats;

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Backend(#[from] backend::BuildError),
    #[error(transparent)]
    Executor(#[from] executor::ExecError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

/// Choices that are not part of the config.
#[derive(Clone)]
pub struct EngineOptions {
    /// Keep each episode's messages in its result (bulk runs do; benchmarks need not).
    pub record_trajectories: bool,
    /// Count distinct requests (the ledger's `unique_calls`), so a benchmark can check that the
    /// cache bills each once. It keeps a key per distinct call, so long-lived servers leave it off.
    pub count_unique_calls: bool,
    /// Builds the backends whose runtime this process must host (`vllm-rs`: a Python
    /// interpreter). Without it, a config with such a backend is refused at start-up.
    pub host: Option<Arc<dyn HostBackends>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            record_trajectories: true,
            count_unique_calls: false,
            host: None,
        }
    }
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("record_trajectories", &self.record_trajectories)
            .field("count_unique_calls", &self.count_unique_calls)
            .field("host", &self.host.as_ref().map(|_| "..."))
            .finish()
    }
}

/// The result of a task that ran no turn: it ended with `status` and `error`.
pub(crate) fn ended_early(
    id: String,
    metadata: Option<String>,
    status: Status,
    error: Option<String>,
) -> TaskResult {
    TaskResult {
        id,
        status,
        answer: None,
        correct: None,
        turns: 0,
        cost_usd: 0.0,
        latency_ms: 0,
        orchestrator_tokens: 0,
        orchestrator_cost_usd: 0.0,
        calls: Vec::new(),
        trajectory: None,
        error,
        metadata,
        reward: None,
        reward_info: None,
    }
}

/// The result of an episode that panicked.
fn panicked(
    id: String,
    metadata: Option<String>,
    panic: &(dyn std::any::Any + Send),
) -> TaskResult {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    let error = format!("internal error: the episode panicked: {what}");
    ended_early(id, metadata, Status::Failed, Some(error))
}

pub struct Engine {
    env: Arc<EpisodeEnv>,
    cache: Arc<ResultCache>,
    /// `max_live_tasks` permits, shared by every job this engine runs at once.
    live: Arc<Semaphore>,
    max_live: usize,
}

impl Engine {
    /// Builds an engine; must be called inside a tokio runtime (the coalescers are spawned on it).
    pub fn new(cfg: &Config, opts: EngineOptions) -> Result<Engine, EngineError> {
        let catalog = Arc::new(Catalog::new(cfg));
        let names: Vec<Arc<str>> = catalog.backends.iter().map(|b| b.name.clone()).collect();
        let ledger = Arc::new(Ledger::with_distinct(&names, opts.count_unique_calls));
        let cache = Arc::new(ResultCache::new(&cfg.cache)?);
        let mut coalescers = Vec::with_capacity(cfg.backends.len());
        let mut request_params = Vec::with_capacity(cfg.backends.len());
        let mut models = NativeModels::default();
        let limits = crate::executor::native::runtime_limits(cfg);
        for (i, b) in cfg.backends.iter().enumerate() {
            let native = backend::NativeSource {
                models: &mut models,
                limits,
                host: opts.host.as_deref(),
            };
            let backend = backend::build(b, &cfg.simulation, ledger.clone(), i, native)?;
            coalescers.push(Coalescer::start(
                i,
                names[i].clone(),
                backend,
                CoalescerLimits::from_config(b),
                catalog.backends[i].pricing,
                cache.clone(),
                ledger.clone(),
            ));
            let model: Arc<str> = b.request_model().into();
            let generation = b.generation();
            request_params.push((model, generation.max_tokens, generation.temperature));
        }
        let executor = executor::build(cfg, catalog.clone(), &mut models)?;
        let environment = match &cfg.environment {
            None => None,
            Some(e) => {
                let index = |name: &str| {
                    cfg.backends
                        .iter()
                        .position(|b| b.name == name)
                        .expect("validated: the backend exists")
                };
                let backend = index(&e.backend);
                let crate::config::BackendSettings::Openenv(settings) =
                    &cfg.backends[backend].settings
                else {
                    unreachable!("validated: the environment's backend is an `openenv` one")
                };
                let client = EnvClient::new(&e.backend, settings).map_err(|message| {
                    backend::BuildError {
                        name: e.backend.clone(),
                        message,
                    }
                })?;
                Some(EnvSetup {
                    client: Arc::new(client),
                    backend,
                    user_tool: e.user_tool.as_str().into(),
                    user: e.user_alias.as_ref().map(|alias| {
                        (index(&cfg.aliases[alias]), Arc::<str>::from(alias.as_str()))
                    }),
                    user_prompt: e
                        .user_prompt
                        .clone()
                        .unwrap_or_else(|| DEFAULT_USER_PROMPT.to_string()),
                    record_messages: e.record_messages,
                })
            }
        };
        let o = &cfg.orchestrator;
        let env = EpisodeEnv {
            catalog,
            executor,
            coalescers,
            request_params,
            ledger,
            orchestrator_price: Pricing {
                in_per_mtok: o.price_in_per_mtok,
                out_per_mtok: o.price_out_per_mtok,
                ..Default::default()
            },
            max_turns: o.max_turns,
            default_budget_usd: o.default_budget_usd,
            max_malformed_calls: o.max_malformed_calls,
            record_trajectory: opts.record_trajectories,
            environment,
        };
        Ok(Engine {
            env: Arc::new(env),
            cache,
            live: Arc::new(Semaphore::new(o.max_live_tasks)),
            max_live: o.max_live_tasks,
        })
    }

    /// Runs every task and sends each result as its episode ends. Returns when all have been sent
    /// (or the receiver is gone). Episodes of every job run on this engine share its
    /// `max_live_tasks` bound. After `cancel`, episodes stop at once (a turn or call in progress is
    /// abandoned, and a call not yet sent is never sent) and report `cancelled`; tasks not yet
    /// started are reported `cancelled` without running.
    pub async fn run(
        &self,
        tasks: impl Stream<Item = Task>,
        results: mpsc::Sender<TaskResult>,
        cancel: CancellationToken,
    ) {
        let mut tasks = std::pin::pin!(tasks);
        let cancel = Arc::new(Cancel::new(cancel));
        let watcher = tokio::spawn(cancel.clone().watch());
        // Each episode holds a clone of `running`; `recv` returns `None` once all have ended.
        let (running, mut ended) = mpsc::channel::<()>(1);
        while let Some(task) = tasks.next().await {
            // A cancelled job does not wait for room among the live tasks of other jobs.
            let permit = tokio::select! {
                biased;
                p = self.live.clone().acquire_owned(), if !cancel.is_set() => {
                    Some(p.expect("never closed"))
                }
                _ = cancel.cancelled() => None,
            };
            let Some(permit) = permit else {
                let ledger = TaskLedger::default();
                self.env
                    .ledger
                    .record_task(Status::Cancelled, 0, &ledger, None);
                let row = ended_early(task.id, task.metadata, Status::Cancelled, None);
                if results.send(row).await.is_err() {
                    break;
                }
                continue;
            };
            let env = self.env.clone();
            let results = results.clone();
            let cancel = cancel.clone();
            let running = running.clone();
            // The episode's span: a child of the job's span, the caller's current one.
            let span = tracing::info_span!("tutti.episode", task = %task.id);
            let episode = async move {
                // A bug that panics inside one episode fails that task, not the job: its row
                // still comes out, with the panic as its error.
                let (id, metadata) = (task.id.clone(), task.metadata.clone());
                let result = AssertUnwindSafe(run_episode(&env, task, &cancel))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        env.ledger
                            .record_task(Status::Failed, 0, &TaskLedger::default(), None);
                        panicked(id, metadata, panic.as_ref())
                    });
                let _ = results.send(result).await;
                drop((permit, running));
            };
            tokio::spawn(episode.instrument(span));
        }
        drop(running);
        let _ = ended.recv().await;
        watcher.abort();
    }

    /// An engine whose orchestrator is `executor` instead of the config's: episode tests script
    /// the orchestrator's replies.
    #[cfg(test)]
    pub(crate) fn with_executor(
        cfg: &Config,
        opts: EngineOptions,
        executor: Arc<dyn crate::executor::Executor>,
    ) -> Result<Engine, EngineError> {
        let mut engine = Engine::new(cfg, opts)?;
        Arc::get_mut(&mut engine.env)
            .expect("a new engine is not shared")
            .executor = executor;
        Ok(engine)
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.env.catalog
    }

    pub fn ledger(&self) -> LedgerSummary {
        self.env.ledger.summary()
    }

    /// Episodes running now, over every job of this engine.
    pub(crate) fn live_tasks(&self) -> usize {
        self.max_live - self.live.available_permits()
    }

    /// The ledger itself, for readers that need more than its summary (the metrics).
    pub(crate) fn ledger_ref(&self) -> &Ledger {
        &self.env.ledger
    }

    /// Whether each backend's circuit breaker is open, in the ledger's backend order.
    pub(crate) fn breakers_open(&self) -> Vec<bool> {
        self.env
            .coalescers
            .iter()
            .map(|c| c.breaker_open())
            .collect()
    }

    pub(crate) fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The in-process model's counters, when the orchestrator is native.
    pub fn native_stats(&self) -> Option<&tutti_model::runtime::NativeStats> {
        self.env.executor.native_stats()
    }

    /// Environment sessions opened and closed, when the config has an environment.
    pub fn env_sessions(&self) -> Option<&SessionCounts> {
        self.env.environment.as_ref().map(|e| &e.client.counts)
    }

    pub(crate) fn scheduler_stats(&self) -> Option<&SchedulerStats> {
        self.env.executor.scheduler_stats()
    }

    /// Commits the persistent cache tier. Call before the process exits.
    pub fn flush(&self) {
        self.cache.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config, Scripted};
    use std::sync::atomic::Ordering;
    use tutti_model::hermes::model_call_text;

    fn tasks(ids: &[&str]) -> Vec<Task> {
        ids.iter()
            .map(|id| Task {
                id: id.to_string(),
                prompt: "What is 2 + 2?".into(),
                ..Task::default()
            })
            .collect()
    }

    async fn run(engine: &Engine, tasks: Vec<Task>, cancel: CancellationToken) -> Vec<TaskResult> {
        let (tx, mut rx) = mpsc::channel(tasks.len().max(1));
        let n = tasks.len();
        engine.run(futures::stream::iter(tasks), tx, cancel).await;
        let mut rows = Vec::new();
        while let Some(r) = rx.recv().await {
            rows.push(r);
        }
        assert_eq!(rows.len(), n, "one row per task");
        rows
    }

    fn answer() -> Vec<String> {
        vec![model_call_text("answer", "a-1")]
    }

    #[tokio::test(start_paused = true)]
    async fn max_live_tasks_bounds_the_episodes_in_flight() {
        let cfg = config("max_live_tasks = 3");
        let scripted = Arc::new(Scripted::new(&answer()));
        let engine =
            Engine::with_executor(&cfg, EngineOptions::default(), scripted.clone()).unwrap();
        let ids: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let rows = run(&engine, tasks(&ids), CancellationToken::new()).await;
        assert!(rows.iter().all(|r| r.status == Status::Answered));
        assert_eq!(scripted.most_live.load(Ordering::SeqCst), 3);
        assert_eq!(engine.ledger().tasks.get("answered"), Some(&20));
    }

    #[tokio::test]
    async fn a_cancelled_job_writes_every_task_cancelled_without_a_turn() {
        let scripted = Arc::new(Scripted::new(&answer()));
        let engine =
            Engine::with_executor(&config(""), EngineOptions::default(), scripted.clone()).unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let rows = run(&engine, tasks(&["a", "b", "c"]), cancel).await;
        assert!(rows
            .iter()
            .all(|r| r.status == Status::Cancelled && r.turns == 0));
        assert_eq!(scripted.most_live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panicking_episode_fails_its_task_and_the_job_goes_on() {
        let engine = Engine::with_executor(
            &config(""),
            EngineOptions::default(),
            Arc::new(Scripted::new(&answer())),
        )
        .unwrap();
        let mut rows = run(
            &engine,
            tasks(&["a", "panic", "b"]),
            CancellationToken::new(),
        )
        .await;
        rows.sort_by(|x, y| x.id.cmp(&y.id));
        let statuses: Vec<(&str, Status)> =
            rows.iter().map(|r| (r.id.as_str(), r.status)).collect();
        assert_eq!(
            statuses,
            [
                ("a", Status::Answered),
                ("b", Status::Answered),
                ("panic", Status::Failed)
            ]
        );
        let error = rows[2].error.as_deref().unwrap();
        assert!(
            error.starts_with("internal error: the episode panicked: a scripted panic"),
            "{error}"
        );
    }
}
