//! The turn loop of one task.
//!
//! An episode asks the executor for a turn, parses the Hermes tool call, resolves the alias to a
//! backend, makes the call through that backend's coalescer (cache, single-flight, batching),
//! records it in the task's ledger and appends the observation, until the orchestrator calls
//! `answer` or a limit ends it: max turns, budget, too many malformed calls in a row, a failure of
//! the executor, or cancellation.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{BackendError, Request, Response};
use crate::catalog::Catalog;
use crate::coalesce::Coalescer;
use crate::environment::{observation_text, EnvClient, EnvError, Step};
use crate::executor::{Executor, TurnView};
use crate::ledger::{Ledger, Pricing, TaskLedger};
use crate::task::stable_hash;
use crate::task::{grade, Action, CallRecord, Message, Role, Status, Task, TaskResult};
use tutti_model::hermes;

/// Everything an episode needs, shared by all episodes of an engine.
pub(crate) struct EpisodeEnv {
    pub catalog: Arc<Catalog>,
    pub executor: Arc<dyn Executor>,
    /// One per backend, indexed like the catalog's backends.
    pub coalescers: Vec<Coalescer>,
    /// Per backend: (model name, max_tokens, temperature) of the requests it gets.
    pub request_params: Vec<(Arc<str>, u32, f64)>,
    pub ledger: Arc<Ledger>,
    pub orchestrator_price: Pricing,
    pub max_turns: u32,
    pub default_budget_usd: Option<f64>,
    pub max_malformed_calls: u32,
    pub record_trajectory: bool,
    /// The environment every episode gets a session of, when the config has one.
    pub environment: Option<EnvSetup>,
}

/// An `[environment]`, resolved.
pub(crate) struct EnvSetup {
    pub client: Arc<EnvClient>,
    /// The environment's backend, for its name and prices.
    pub backend: usize,
    pub user_tool: Arc<str>,
    /// The backend and alias of the model that plays the user.
    pub user: Option<(usize, Arc<str>)>,
    pub user_prompt: String,
    pub record_messages: bool,
}

/// What the user's model is told when the config says nothing.
pub(crate) const DEFAULT_USER_PROMPT: &str = "You are a customer talking to a customer service \
agent. Stay in character and follow your scenario; do not make up information it does not give.\n\n\
Your scenario:\n{scenario}\n\nThe conversation so far:\n{conversation}\n\n\
Write your next message to the agent, and only that. When your request is done, or cannot be \
done, reply with ###STOP###.";

/// A job's cancellation, as its episodes see it.
pub(crate) struct Cancel {
    /// Set once the token is cancelled. Episodes check this plain flag between steps: the token's
    /// own check takes a lock shared by every episode of the job.
    flag: AtomicBool,
    token: CancellationToken,
}

impl Cancel {
    pub(crate) fn new(token: CancellationToken) -> Cancel {
        Cancel {
            flag: AtomicBool::new(token.is_cancelled()),
            token,
        }
    }

    /// Sets the flag when the token is cancelled; spawned once per job.
    pub(crate) async fn watch(self: Arc<Self>) {
        self.token.cancelled().await;
        self.flag.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Completes once the job is cancelled.
    pub(crate) async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Runs `work` unless the job is cancelled first; `None` when cancelled. Dropping `work`
    /// abandons it: a call still queued in a coalescer is then never sent.
    async fn or_cancelled<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            out = work => Some(out),
            _ = self.token.cancelled() => None,
        }
    }
}

/// The evolving context of an episode.
struct Context {
    messages: Vec<Message>,
    /// Hash of every message so far, so equal contexts are recognised cheaply.
    hash: u64,
    /// Observations so far, as the chosen model of a tool sees them.
    observations: String,
}

impl Context {
    /// Appends an error the orchestrator should see and react to.
    fn push_error(&mut self, error: &dyn std::fmt::Display) {
        let msg = format!("Error: {error}");
        let tokens = approx_tokens(&msg);
        self.push(Role::Tool, msg, tokens);
    }

    fn push(&mut self, role: Role, content: String, tokens: u32) {
        self.hash = stable_hash(self.hash, &[&[role as u8], content.as_bytes()]);
        if role == Role::Tool {
            self.observations.push_str(&content);
            self.observations.push('\n');
        }
        self.messages.push(Message {
            role,
            content,
            tokens,
        });
    }
}

/// Calls `backend` for `tool` through its coalescer and records the call in the task's ledger.
/// When the backend's breaker is open and it has a fallback alias, the fallback serves instead.
async fn call_model(
    env: &EpisodeEnv,
    cancel: &Cancel,
    ledger: &mut TaskLedger,
    tool: &Arc<str>,
    backend: usize,
    alias: &Arc<str>,
    prompt: String,
) -> Result<Arc<Response>, BackendError> {
    let mut target = (backend, alias.clone());
    let mut fallen_back = false;
    let mut prompt = Some(prompt);
    loop {
        // Keep a copy of the prompt only while a fallback may still need it.
        let may_fall_back = !fallen_back && env.catalog.backends[target.0].fallback.is_some();
        let prompt = if may_fall_back {
            prompt.clone()
        } else {
            prompt.take()
        }
        .expect("present until sent for good");
        let (model, max_tokens, temperature) = &env.request_params[target.0];
        let request = Request {
            tool: tool.clone(),
            model: model.clone(),
            prompt,
            max_tokens: *max_tokens,
            temperature: *temperature,
        };
        let t0 = Instant::now();
        let span = tracing::info_span!(
            "tutti.call",
            tool = %tool,
            alias = %target.1,
            backend = %env.catalog.backends[target.0].name
        );
        let Some(outcome) = cancel
            .or_cancelled(env.coalescers[target.0].call(request).instrument(span))
            .await
        else {
            return Err(BackendError::Cancelled);
        };
        let latency_ms = t0.elapsed().as_millis() as i64;
        match outcome.result {
            Ok(response) => {
                let record = CallRecord {
                    tool: tool.clone(),
                    alias: target.1.clone(),
                    backend: env.catalog.backends[target.0].name.clone(),
                    cached: false, // set by `record_call` from how it was served
                    input_tokens: response.input_tokens as i64,
                    output_tokens: response.output_tokens as i64,
                    cost_usd: 0.0,
                    latency_ms,
                };
                ledger.record_call(record, outcome.cost_usd, outcome.served);
                return Ok(response);
            }
            Err(BackendError::Unavailable { .. }) if !fallen_back => {
                match &env.catalog.backends[target.0].fallback {
                    Some(fb) => {
                        env.ledger.record_fallback(target.0);
                        target = fb.clone();
                        fallen_back = true;
                    }
                    None => {
                        ledger.record_failed_call();
                        return Err(BackendError::Unavailable {
                            backend: env.catalog.backends[target.0].name.to_string(),
                        });
                    }
                }
            }
            Err(e) => {
                ledger.record_failed_call();
                return Err(e);
            }
        }
    }
}

/// The tool name a judge's call is recorded under.
const JUDGE: &str = "judge";

/// What the judge is asked: does the answer match the reference?
fn judge_prompt(problem: &str, reference: &str, answer: &str) -> String {
    format!(
        "Problem: {problem}\nReference answer: {reference}\nCandidate answer: {answer}\n\
         Does the candidate answer match the reference answer? Reply with yes or no."
    )
}

/// A rough token count for text the executor did not tokenise (error observations).
fn approx_tokens(text: &str) -> u32 {
    (text.len() as u32).div_ceil(4)
}

/// What both turn loops share: the task's limits, its context and accounts, and the turns taken.
struct Turns<'a> {
    env: &'a EpisodeEnv,
    cancel: &'a Cancel,
    task: Task,
    started: Instant,
    preference: Arc<crate::catalog::Preference>,
    max_turns: u32,
    budget: Option<f64>,
    /// Below this much budget left, no call is affordable.
    cheapest: f64,
    ledger: TaskLedger,
    ctx: Context,
    seq: u64,
    /// Messages before this index were part of an earlier turn's context.
    sent: usize,
    turns: u32,
    malformed: u32,
    error: Option<String>,
}

impl<'a> Turns<'a> {
    fn new(env: &'a EpisodeEnv, cancel: &'a Cancel, task: Task, cheapest: f64) -> Turns<'a> {
        let mut ctx = Context {
            messages: Vec::new(),
            hash: 0,
            observations: String::new(),
        };
        ctx.push(Role::User, task.prompt.clone(), approx_tokens(&task.prompt));
        Turns {
            env,
            cancel,
            started: Instant::now(),
            preference: env.catalog.preference(&task.preference),
            max_turns: task.max_turns.map_or(env.max_turns, |t| t.max(0) as u32),
            budget: task.budget_usd.or(env.default_budget_usd),
            cheapest,
            ledger: TaskLedger::default(),
            ctx,
            seq: env.executor.open(),
            sent: 0,
            turns: 0,
            malformed: 0,
            error: None,
            task,
        }
    }

    /// Asks the executor for the next turn and appends its reply to the context; `Err` is the
    /// status that ends the episode first (cancellation, a limit, a failed turn).
    async fn next_reply(&mut self, functions: &[serde_json::Value]) -> Result<(), Status> {
        if self.cancel.is_set() {
            return Err(Status::Cancelled);
        }
        if self.turns >= self.max_turns {
            return Err(Status::MaxTurns);
        }
        let remaining = self.ledger.remaining(self.budget);
        if remaining < self.cheapest {
            return Err(Status::BudgetExhausted);
        }
        let view = TurnView {
            task: &self.task,
            messages: &self.ctx.messages,
            new_from: self.sent,
            turn: self.turns,
            remaining_usd: remaining,
            preference: &self.preference,
            context_hash: self.ctx.hash,
            functions,
        };
        let decide = self.env.executor.decide(self.seq, view);
        let decision = match self.cancel.or_cancelled(decide).await {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.error = Some(e.to_string());
                return Err(Status::Failed);
            }
            None => return Err(Status::Cancelled),
        };
        self.sent = self.ctx.messages.len();
        self.turns += 1;
        self.ledger.record_turn(
            decision.prompt_tokens,
            decision.completion_tokens,
            &self.env.orchestrator_price,
        );
        let tokens = decision.completion_tokens as u32;
        self.ctx.push(Role::Assistant, decision.text, tokens);
        Ok(())
    }

    /// The reply [`Turns::next_reply`] appended.
    fn reply(&self) -> &str {
        &self
            .ctx
            .messages
            .last()
            .expect("a reply was appended")
            .content
    }

    /// The call a reply was parsed into, `None` when it holds no usable call (counted, and shown
    /// to the orchestrator), or the status that ends the episode: too many malformed calls in a
    /// row, or cancellation.
    fn accept<T>(&mut self, parsed: Result<T, String>) -> Result<Option<T>, Status> {
        let call = match parsed {
            Ok(call) => {
                self.malformed = 0;
                Some(call)
            }
            Err(e) => {
                self.malformed(&e)?;
                None
            }
        };
        if self.cancel.is_set() {
            return Err(Status::Cancelled);
        }
        Ok(call)
    }

    /// Counts a reply that holds no usable call: an error observation, or `Failed` after
    /// `max_malformed_calls` in a row.
    fn malformed(&mut self, e: &dyn std::fmt::Display) -> Result<(), Status> {
        self.malformed += 1;
        if self.malformed >= self.env.max_malformed_calls {
            self.error = Some(format!(
                "{} malformed tool calls in a row; the last: {e}",
                self.malformed
            ));
            return Err(Status::Failed);
        }
        self.ctx.push_error(&format_args!("invalid tool call: {e}"));
        Ok(())
    }

    /// The result row; folds the episode's accounts into the job's ledger.
    fn finish(
        mut self,
        status: Status,
        answer: Option<String>,
        correct: Option<bool>,
        reward: Option<(Option<f64>, String)>,
    ) -> TaskResult {
        self.env.executor.release(self.seq);
        self.env
            .ledger
            .record_task(status, self.turns, &self.ledger, correct);
        let trajectory = self
            .env
            .record_trajectory
            .then(|| std::mem::take(&mut self.ctx.messages));
        let (reward, reward_info) = match reward {
            Some((r, info)) => (r, Some(info)),
            None => (None, None),
        };
        TaskResult {
            id: self.task.id,
            status,
            answer,
            correct,
            turns: self.turns as i32,
            cost_usd: self.ledger.cost_usd,
            latency_ms: self.started.elapsed().as_millis() as i64,
            orchestrator_tokens: self.ledger.orchestrator_tokens() as i64,
            orchestrator_cost_usd: self.ledger.orchestrator_cost_usd,
            calls: self.ledger.calls,
            trajectory,
            error: self.error,
            metadata: self.task.metadata,
            reward,
            reward_info,
        }
    }
}

/// Where an episode is: the turn loop is a small state machine over these phases, the same for
/// catalog calls (`C` = the catalog action chosen) and environment calls (`C` = the function call).
///
/// `Decide` (the executor's next reply, parsed) → `Act` (the call made) → `Observe` (its answer
/// appended to the context) → `Decide` …, until `End`. A reply with no usable call, or a call that
/// fails, appends an error observation and goes back to `Decide`.
#[derive(Debug)]
enum Phase<C> {
    Decide,
    Act(C),
    /// The observation the orchestrator sees next, and its tokens.
    Observe(String, u32),
    /// The episode is over: its status, and the answer when it gave one.
    End(Status, Option<String>),
}

impl<C> Phase<C> {
    /// The phase after the orchestrator's reply held no usable call, or the limit that ended it.
    fn after(accepted: Result<Option<C>, Status>) -> Phase<C> {
        match accepted {
            Ok(Some(call)) => Phase::Act(call),
            Ok(None) => Phase::Decide,
            Err(status) => Phase::End(status, None),
        }
    }
}

impl Turns<'_> {
    /// One model call of the episode through [`call_model`]; a failed call becomes an error
    /// observation (`Err(Decide)`), a cancelled one ends the episode.
    async fn call<C>(
        &mut self,
        tool: &Arc<str>,
        backend: usize,
        alias: &Arc<str>,
        prompt: String,
    ) -> Result<Arc<Response>, Phase<C>> {
        let result = call_model(
            self.env,
            self.cancel,
            &mut self.ledger,
            tool,
            backend,
            alias,
            prompt,
        )
        .await;
        match result {
            Ok(response) => Ok(response),
            Err(BackendError::Cancelled) => Err(Phase::End(Status::Cancelled, None)),
            Err(e) => {
                self.ctx.push_error(&e);
                Err(Phase::Decide)
            }
        }
    }

    /// Appends an observation; the next phase is to decide again.
    fn observe<C>(&mut self, text: String, tokens: u32) -> Phase<C> {
        self.ctx.push(Role::Tool, text, tokens);
        Phase::Decide
    }
}

/// Runs one task to its end. Cancellation is checked before every turn and every call, and
/// abandons a turn or call in progress.
pub(crate) async fn run_episode(env: &EpisodeEnv, task: Task, cancel: &Cancel) -> TaskResult {
    if let Some(setup) = &env.environment {
        return run_env_episode(env, setup, task, cancel).await;
    }
    let mut t = Turns::new(env, cancel, task, env.catalog.cheapest_call_usd());
    let mut phase = Phase::Decide;
    // One span per turn: the orchestrator's decode and the call it makes.
    let mut turn = tracing::Span::none();
    let (status, answer) = loop {
        phase = match phase {
            Phase::Decide => {
                turn = tracing::info_span!("tutti.turn", turn = t.turns + 1);
                decide(&mut t).instrument(turn.clone()).await
            }
            Phase::Act(action) => act(&mut t, action).instrument(turn.clone()).await,
            Phase::Observe(text, tokens) => t.observe(text, tokens),
            Phase::End(status, answer) => break (status, answer),
        };
    };
    let correct = grade_answer(&mut t, answer.as_deref()).await;
    t.finish(status, answer, correct, None)
}

/// Decide: the executor's next reply, parsed as a Hermes call and resolved to a catalog action.
async fn decide(t: &mut Turns<'_>) -> Phase<usize> {
    if let Err(status) = t.next_reply(&[]).await {
        return Phase::End(status, None);
    }
    let catalog = &t.env.catalog;
    let parsed = Action::parse_hermes(t.reply())
        .map_err(|e| e.to_string())
        .and_then(|a| catalog.resolve(&a).map_err(|e| e.to_string()));
    Phase::after(t.accept(parsed))
}

/// Act: calls the action's model. `answer` ends the episode with what the model wrote (less
/// surrounding whitespace: a completion often starts with a space); a tool with a runner
/// (`then`: retrieval for a query, the sandbox for code) runs what the model wrote, and that is
/// the observation; any other tool's answer is the observation itself.
async fn act(t: &mut Turns<'_>, action: usize) -> Phase<usize> {
    let env = t.env;
    let a = &env.catalog.actions[action];
    let prompt = env
        .catalog
        .render_prompt(a.tool, &t.task.prompt, &t.ctx.observations);
    let response = match t.call(&a.tool_name, a.backend, &a.alias, prompt).await {
        Ok(r) => r,
        Err(next) => return next,
    };
    if Some(a.tool) == env.catalog.answer_tool {
        return Phase::End(Status::Answered, Some(response.text.trim().to_string()));
    }
    let observation = match env.catalog.tools[a.tool].then {
        None => response,
        Some(runner) => {
            let written = response.text.clone();
            match t.call(&a.tool_name, runner, &a.alias, written).await {
                Ok(r) => r,
                Err(next) => return next,
            }
        }
    };
    Phase::Observe(observation.text.clone(), observation.output_tokens as u32)
}

/// Grade: the answer against the task's reference, by the `[grading] judge` alias when there is
/// one (by exact match when the judge cannot be reached), else by exact match. A task that did
/// not answer is not graded: its row says why it stopped, and accuracy is over graded answers.
async fn grade_answer(t: &mut Turns<'_>, answer: Option<&str>) -> Option<bool> {
    let (Some(answer), Some(reference)) = (answer, t.task.reference.as_deref()) else {
        return None;
    };
    let Some((backend, alias)) = &t.env.catalog.judge else {
        return Some(grade(answer, reference));
    };
    let prompt = judge_prompt(&t.task.prompt, reference, answer);
    let verdict = call_model(
        t.env,
        t.cancel,
        &mut t.ledger,
        &JUDGE.into(),
        *backend,
        alias,
        prompt,
    )
    .await;
    Some(match verdict {
        Ok(v) => v.text.trim_start().to_ascii_lowercase().starts_with("yes"),
        Err(_) => grade(answer, reference),
    })
}

/// How an environment step went, as the episode acts on it.
enum Stepped {
    /// The observation the orchestrator sees next.
    Observed(String),
    /// The environment ended the episode (its `done`).
    Done(Step),
    /// The session failed (connection, protocol, timeout): the episode fails.
    Broken(EnvError),
    /// The job was cancelled while the step was in progress.
    Cancelled,
}

/// Records one step of the environment in the task's ledger: a call of its backend, billed at
/// its `price_per_call` and `price_per_second`, never cached.
fn record_env_call(
    env: &EpisodeEnv,
    setup: &EnvSetup,
    ledger: &mut TaskLedger,
    tool: &str,
    elapsed: std::time::Duration,
) {
    let backend = &env.catalog.backends[setup.backend];
    let record = CallRecord {
        tool: tool.into(),
        alias: backend.name.clone(),
        backend: backend.name.clone(),
        cached: false,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
        latency_ms: elapsed.as_millis() as i64,
    };
    let cost = backend.pricing.cost(0, 0, elapsed.as_secs_f64());
    ledger.record_call(record, cost, crate::ledger::Served::Billed);
}

/// Sends one step and records it in the task's ledger.
async fn env_step(
    env: &EpisodeEnv,
    setup: &EnvSetup,
    cancel: &Cancel,
    ledger: &mut TaskLedger,
    tool: &str,
    action: impl Future<Output = Result<Step, EnvError>>,
) -> Stepped {
    let t0 = Instant::now();
    let Some(result) = cancel.or_cancelled(action).await else {
        return Stepped::Cancelled;
    };
    match result {
        Ok(step) => {
            record_env_call(env, setup, ledger, tool, t0.elapsed());
            if step.done {
                Stepped::Done(step)
            } else {
                Stepped::Observed(observation_text(&step.observation))
            }
        }
        // The environment refused the call (a tool's own error): the orchestrator sees it.
        Err(EnvError::Refused { message }) => {
            record_env_call(env, setup, ledger, tool, t0.elapsed());
            Stepped::Observed(format!("Error: {message}"))
        }
        Err(e) => {
            ledger.record_failed_call();
            Stepped::Broken(e)
        }
    }
}

/// The user's prompt: the template with the scenario and the conversation filled in.
fn user_prompt(template: &str, scenario: &str, conversation: &[(&'static str, String)]) -> String {
    let lines: Vec<String> = conversation
        .iter()
        .map(|(who, text)| format!("{who}: {text}"))
        .collect();
    template
        .replace("{scenario}", scenario)
        .replace("{conversation}", &lines.join("\n"))
}

/// One episode in an environment: a session opened with the task's `env` object, the
/// orchestrator's calls checked against the environment's tool schemas and sent as steps, its
/// messages to the user answered by the user's model, until a step says `done` (the episode's
/// reward) or a limit ends it. The session is closed on every path.
async fn run_env_episode(
    env: &EpisodeEnv,
    setup: &EnvSetup,
    task: Task,
    cancel: &Cancel,
) -> TaskResult {
    let cheapest = env
        .catalog
        .cheapest_call_usd()
        .min(env.catalog.backends[setup.backend].pricing.per_call);
    let reset = match &task.env {
        Some(text) => serde_json::from_str(text).unwrap_or_default(),
        None => serde_json::Value::Object(Default::default()),
    };
    let mut t = Turns::new(env, cancel, task, cheapest);
    let t0 = Instant::now();
    let mut session = match cancel.or_cancelled(setup.client.open(reset)).await {
        None => return t.finish(Status::Cancelled, None, None, None),
        Some(Err(e)) => {
            t.ledger.record_failed_call();
            t.error = Some(e.to_string());
            return t.finish(Status::Failed, None, None, None);
        }
        Some(Ok((session, _reset))) => {
            record_env_call(env, setup, &mut t.ledger, "reset", t0.elapsed());
            session
        }
    };
    let mut functions = session.tools().definitions();
    functions.push(serde_json::json!({
        "name": &*setup.user_tool,
        "description": "Send a message to the user; returns the user's reply.",
        "parameters": {
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
        },
    }));
    let mut conversation: Vec<(&'static str, String)> = Vec::new();
    let mut done: Option<Step> = None;
    let mut phase = Phase::Decide;
    let status = loop {
        phase = match phase {
            Phase::Decide => match t.next_reply(&functions).await {
                Err(status) => Phase::End(status, None),
                Ok(()) => {
                    Phase::after(t.accept(hermes::parse(t.reply()).map_err(|e| e.to_string())))
                }
            },
            Phase::Act(call) => {
                match act_in_env(&mut t, setup, &mut session, &mut conversation, call).await {
                    Stepped::Observed(text) => {
                        let tokens = approx_tokens(&text);
                        Phase::Observe(text, tokens)
                    }
                    Stepped::Done(step) => {
                        done = Some(step);
                        Phase::End(Status::Answered, None)
                    }
                    Stepped::Broken(e) => {
                        t.error = Some(e.to_string());
                        Phase::End(Status::Failed, None)
                    }
                    Stepped::Cancelled => Phase::End(Status::Cancelled, None),
                }
            }
            Phase::Observe(text, tokens) => t.observe(text, tokens),
            Phase::End(status, _) => break status,
        };
    };
    session.close().await;
    let reward = done.map(|step| {
        let info = match step.observation.get("reward_info") {
            Some(info) => info.to_string(),
            None => step.observation.to_string(),
        };
        (step.reward, info)
    });
    t.finish(status, None, None, reward)
}

/// Act, in an environment: the user tool (`respond`) sends the message to the environment (when
/// `record_messages`) and asks the user's model for the reply, recorded too; any other call is
/// checked against the session's tool schemas and sent as a `call_tool` step. An unknown tool or
/// arguments that break a schema are an error observation naming the tool and field, and the
/// episode goes on, as τ²'s own runner does.
async fn act_in_env(
    t: &mut Turns<'_>,
    setup: &EnvSetup,
    session: &mut crate::environment::Session,
    conversation: &mut Vec<(&'static str, String)>,
    call: hermes::ToolCall,
) -> Stepped {
    let (env, cancel) = (t.env, t.cancel);
    if call.name != *setup.user_tool {
        let arguments = serde_json::Value::Object(call.arguments);
        if let Err(e) = session.tools().check(&call.name, &arguments) {
            let e = match e {
                crate::environment::CallError::UnknownTool { tool, known } => format!(
                    "unknown tool `{tool}`; the tools are {known}, `{}`",
                    setup.user_tool
                ),
                other => other.to_string(),
            };
            return Stepped::Observed(format!("Error: {e}"));
        }
        let step = session.call_tool(&call.name, arguments);
        return env_step(env, setup, cancel, &mut t.ledger, &call.name, step).await;
    }
    let Some(serde_json::Value::String(content)) = call.arguments.get("content") else {
        return Stepped::Observed(format!(
            "Error: tool `{}`: argument `content`: expected a string, the message to the user",
            setup.user_tool
        ));
    };
    conversation.push(("agent", content.clone()));
    if setup.record_messages {
        let step = session.message("assistant", content);
        let stepped = env_step(env, setup, cancel, &mut t.ledger, "message", step).await;
        if !matches!(stepped, Stepped::Observed(_)) {
            return stepped;
        }
    }
    let Some((backend, alias)) = &setup.user else {
        return Stepped::Observed("(the user did not reply)".into());
    };
    let scenario = t.task.user.as_deref().unwrap_or("");
    let prompt = user_prompt(&setup.user_prompt, scenario, conversation);
    let tool = setup.user_tool.clone();
    match call_model(env, cancel, &mut t.ledger, &tool, *backend, alias, prompt).await {
        Err(BackendError::Cancelled) => Stepped::Cancelled,
        Err(e) => Stepped::Observed(format!("Error: {e}")),
        Ok(reply) => {
            let reply = reply.text.trim().to_string();
            conversation.push(("user", reply.clone()));
            if !setup.record_messages {
                return Stepped::Observed(reply);
            }
            let step = session.message("user", &reply);
            match env_step(env, setup, cancel, &mut t.ledger, "message", step).await {
                Stepped::Observed(_) => Stepped::Observed(reply),
                other => other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::{Engine, EngineOptions};
    use crate::test_support::{config, Scripted};
    use tokio::sync::mpsc;
    use tutti_model::hermes::model_call_text;

    fn call(tool: &str, alias: &str) -> String {
        format!("Let me see. {}", model_call_text(tool, alias))
    }

    /// Runs one task with the scripted replies; returns its row.
    async fn run(cfg: &Config, replies: &[String], task: Task, cancel: bool) -> TaskResult {
        let executor = Arc::new(Scripted::new(replies));
        let engine = Engine::with_executor(cfg, EngineOptions::default(), executor).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let token = CancellationToken::new();
        if cancel {
            token.cancel();
        }
        engine.run(futures::stream::iter([task]), tx, token).await;
        rx.recv().await.expect("one row per task")
    }

    fn task() -> Task {
        Task {
            id: "t".into(),
            prompt: "What is 2 + 2?".into(),
            ..Task::default()
        }
    }

    fn roles(r: &TaskResult) -> Vec<Role> {
        r.trajectory
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.role)
            .collect()
    }

    #[tokio::test]
    async fn decide_act_answer_ends_the_episode_with_one_call() {
        let r = run(&config(""), &[call("answer", "a-1")], task(), false).await;
        assert_eq!(r.status, Status::Answered, "{r:?}");
        assert_eq!(r.turns, 1);
        assert_eq!(r.calls.len(), 1);
        assert_eq!(&*r.calls[0].alias, "a-1");
        assert!(r.answer.is_some());
        assert_eq!(roles(&r), [Role::User, Role::Assistant]);
    }

    #[tokio::test]
    async fn a_tool_answer_is_observed_and_the_orchestrator_decides_again() {
        let replies = [call("search", "s-1"), call("answer", "a-1")];
        let r = run(&config(""), &replies, task(), false).await;
        assert_eq!(r.status, Status::Answered);
        assert_eq!(r.turns, 2);
        let tools: Vec<&str> = r.calls.iter().map(|c| &*c.tool).collect();
        assert_eq!(tools, ["search", "answer"]);
        assert_eq!(
            roles(&r),
            [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
        );
    }

    #[tokio::test]
    async fn a_malformed_reply_is_an_error_observation_until_too_many_in_a_row() {
        let replies = ["no call here".to_string(), call("answer", "a-1")];
        let r = run(&config(""), &replies, task(), false).await;
        assert_eq!(r.status, Status::Answered);
        let trajectory = r.trajectory.as_ref().unwrap();
        assert!(
            trajectory[2]
                .content
                .starts_with("Error: invalid tool call"),
            "{trajectory:?}"
        );

        let replies = ["no call".to_string(), call("answer", "nobody")];
        let r = run(&config(""), &replies, task(), false).await;
        assert_eq!(r.status, Status::Failed);
        let error = r.error.unwrap();
        assert!(
            error.starts_with("2 malformed tool calls in a row"),
            "{error}"
        );
        assert!(r.calls.is_empty());
    }

    #[tokio::test]
    async fn max_turns_ends_an_episode_that_never_answers() {
        let replies = vec![call("search", "s-1"); 10];
        let r = run(&config(""), &replies, task(), false).await;
        assert_eq!(r.status, Status::MaxTurns);
        assert_eq!(r.turns, 4);
        assert_eq!(r.calls.len(), 4);
        assert!(r.answer.is_none() && r.correct.is_none());
    }

    #[tokio::test]
    async fn a_budget_that_pays_for_no_call_ends_before_the_first_turn() {
        let mut t = task();
        t.budget_usd = Some(0.0);
        // The cheapest call is free here: a $0 budget still affords it.
        let r = run(&config(""), &[call("answer", "a-1")], t.clone(), false).await;
        assert_eq!(r.status, Status::Answered);
        // With the orchestrator priced, a turn costs; the budget then runs out after one.
        let priced = config("price_out_per_mtok = 1000000.0");
        t.budget_usd = Some(1.0);
        let replies = vec![call("search", "s-1"); 10];
        let r = run(&priced, &replies, t, false).await;
        assert_eq!(r.status, Status::BudgetExhausted, "{r:?}");
        assert!(r.cost_usd >= 1.0, "{}", r.cost_usd);
    }

    #[tokio::test]
    async fn a_failed_turn_fails_the_task_with_the_executors_error() {
        let r = run(&config(""), &["FAIL".to_string()], task(), false).await;
        assert_eq!(r.status, Status::Failed);
        assert_eq!(
            r.error.as_deref(),
            Some("orchestrator executor: the model server went away")
        );
    }

    #[tokio::test]
    async fn a_cancelled_job_runs_no_turn() {
        let r = run(&config(""), &[call("answer", "a-1")], task(), true).await;
        assert_eq!(r.status, Status::Cancelled);
        assert_eq!(r.turns, 0);
    }

    #[tokio::test]
    async fn an_answer_is_graded_against_the_reference_only_when_there_is_one() {
        let mut t = task();
        t.reference = Some("surely not what a simulated model writes".into());
        let r = run(&config(""), &[call("answer", "a-1")], t, false).await;
        assert_eq!(r.correct, Some(false));
        let r = run(&config(""), &[call("answer", "a-1")], task(), false).await;
        assert_eq!(r.correct, None);
    }
}
