//! The task model: what comes in (a [`Task`]), what an episode builds (messages, actions, calls) and
//! what goes out (a [`TaskResult`]).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// One problem to solve. Only `id` and `prompt` are required; the rest falls back to the config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Task {
    pub id: String,
    pub prompt: String,
    /// Weight per alias, or for the keys `cost` and `latency`. Validated against the catalog.
    pub preference: Vec<(String, f64)>,
    pub budget_usd: Option<f64>,
    pub max_turns: Option<i32>,
    pub reference: Option<String>,
    /// Opaque, passed through to the result.
    pub metadata: Option<String>,
    /// What the environment's `reset` is given for this episode (a JSON object), when the config
    /// has an `[environment]`.
    pub env: Option<String>,
    /// The user's scenario: what the model that plays the user is told.
    pub user: Option<String>,
    /// Calls for the `replay` executor to play, in order: a JSON array of
    /// `{"name": …, "arguments": {…}}`.
    pub replay: Option<String>,
}

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Answered,
    MaxTurns,
    BudgetExhausted,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Answered,
        Status::MaxTurns,
        Status::BudgetExhausted,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Answered => "answered",
            Status::MaxTurns => "max_turns",
            Status::BudgetExhausted => "budget_exhausted",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who wrote a message of the episode's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    Tool,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::User, Role::Assistant, Role::Tool];

    /// The name in a trajectory: `user`, `assistant`, `tool`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One entry of an episode's context. `tokens` is the size the orchestrator pays for it: counted by
/// the executor's tokenizer where it has one, reported by the backend for observations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(skip)]
    pub tokens: u32,
}

/// A parsed tool call. In the ToolOrchestra catalog every tool takes one argument, `model`, an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub tool: String,
    pub alias: String,
}

pub(crate) use tutti_model::hermes::ParseError;

impl Action {
    /// Parses the first Hermes call in a reply as a ToolOrchestra action, whose one argument
    /// `model` is an alias: `<tool_call>{"name": "answer", "arguments": {"model": "answer-math-2"}}</tool_call>`.
    pub fn parse_hermes(text: &str) -> Result<Action, ParseError> {
        Action::from_call(tutti_model::hermes::parse(text)?)
    }

    /// The ToolOrchestra action a parsed call names.
    pub(crate) fn from_call(call: tutti_model::hermes::ToolCall) -> Result<Action, ParseError> {
        match call.arguments.get("model") {
            Some(serde_json::Value::String(alias)) if !alias.is_empty() => Ok(Action {
                tool: call.name,
                alias: alias.clone(),
            }),
            _ => Err(ParseError::NoModel),
        }
    }

    /// Renders the action as the Hermes text an orchestrator emits.
    pub fn to_hermes(&self) -> String {
        tutti_model::hermes::model_call_text(&self.tool, &self.alias)
    }
}

/// One backend call as the ledger and the result row record it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    pub tool: Arc<str>,
    pub alias: Arc<str>,
    pub backend: Arc<str>,
    /// Served without a billed call: from the result cache, or by joining an identical call in flight.
    pub cached: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
}

/// What one episode produced: one row of the results.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub id: String,
    pub status: Status,
    pub answer: Option<String>,
    /// Set when the task had a reference answer.
    pub correct: Option<bool>,
    pub turns: i32,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub orchestrator_tokens: i64,
    /// The orchestrator's own tokens' share of `cost_usd` (the rest is its calls').
    pub orchestrator_cost_usd: f64,
    pub calls: Vec<CallRecord>,
    /// The episode's messages, when the engine records trajectories.
    pub trajectory: Option<Vec<Message>>,
    pub error: Option<String>,
    pub metadata: Option<String>,
    /// The environment's reward for the episode, when it gave one (its last step was `done`).
    pub reward: Option<f64>,
    /// What the environment said about that reward (its final observation, as JSON).
    pub reward_info: Option<String>,
}

/// Normalises an answer for exact-match grading: strips `\boxed{...}` and `<answer>...</answer>`
/// wrappers, lowercases, collapses whitespace and drops a trailing period.
pub(crate) fn normalize_answer(s: &str) -> String {
    let mut t = s.trim();
    if let Some(inner) = t
        .strip_prefix("<answer>")
        .and_then(|r| r.strip_suffix("</answer>"))
    {
        t = inner.trim();
    }
    if let Some(inner) = t.strip_prefix("\\boxed{").and_then(|r| r.strip_suffix('}')) {
        t = inner.trim();
    }
    let t = t.trim_end_matches('.');
    t.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Normalised exact match against a reference answer.
pub(crate) fn grade(answer: &str, reference: &str) -> bool {
    normalize_answer(answer) == normalize_answer(reference)
}

/// Stable 64-bit hash of some byte strings under a seed (stable across runs and platforms): the
/// seeds of a task's randomness, and the keys of prefixes and conversations.
pub(crate) fn stable_hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    for p in parts {
        h.update(p);
        h.update(&[0x1f]);
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(tool: &str, alias: &str) -> Result<Action, ParseError> {
        Ok(Action {
            tool: tool.into(),
            alias: alias.into(),
        })
    }

    #[test]
    fn parses_a_well_formed_call() {
        let text = r#"Let me think. <tool_call>{"name": "answer", "arguments": {"model": "answer-math-2"}}</tool_call>"#;
        assert_eq!(Action::parse_hermes(text), ok("answer", "answer-math-2"));
    }

    #[test]
    fn parses_arguments_given_as_a_json_string() {
        let text = r#"<tool_call>{"name": "search", "arguments": "{\"model\": \"search-1\"}"}</tool_call>"#;
        assert_eq!(Action::parse_hermes(text), ok("search", "search-1"));
    }

    #[test]
    fn round_trips_through_hermes_text() {
        let a = Action {
            tool: "enhance_reasoning".into(),
            alias: "reasoner-3".into(),
        };
        assert_eq!(Action::parse_hermes(&a.to_hermes()), Ok(a));
    }

    #[test]
    fn rejects_malformed_calls_with_a_reason() {
        assert_eq!(Action::parse_hermes("just text"), Err(ParseError::Missing));
        assert_eq!(
            Action::parse_hermes(r#"<tool_call>{"name": "answer""#),
            Err(ParseError::Unclosed)
        );
        assert!(matches!(
            Action::parse_hermes("<tool_call>{name: answer}</tool_call>"),
            Err(ParseError::Json(_))
        ));
        assert_eq!(
            Action::parse_hermes(r#"<tool_call>{"arguments": {"model": "x"}}</tool_call>"#),
            Err(ParseError::NoName)
        );
        assert_eq!(
            Action::parse_hermes(r#"<tool_call>{"name": 3, "arguments": {}}</tool_call>"#),
            Err(ParseError::NoName)
        );
        assert_eq!(
            Action::parse_hermes(r#"<tool_call>{"name": "answer"}</tool_call>"#),
            Err(ParseError::NoModel)
        );
        assert_eq!(
            Action::parse_hermes(
                r#"<tool_call>{"name": "answer", "arguments": {"model": ""}}</tool_call>"#
            ),
            Err(ParseError::NoModel)
        );
        assert!(matches!(
            Action::parse_hermes(r#"<tool_call>{"name": "a", "arguments": "nope"}</tool_call>"#),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn grading_strips_wrappers_and_case() {
        assert!(grade("\\boxed{42}", "42"));
        assert!(grade("<answer> Paris. </answer>", "paris"));
        assert!(grade("New   York", "new york"));
        assert!(!grade("41", "42"));
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
