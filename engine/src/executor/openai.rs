//! The `openai` executor: the orchestrator behind an OpenAI-compatible server, as ToolOrchestra
//! serves Orchestrator-8B (vLLM with the Hermes tool parser).
//!
//! Prompt strategy `history`: the conversation grows turn by turn (system prompt with the tool
//! catalog, the task's preference and remaining budget; the problem; then each reply and tool
//! response), which keeps the server's KV prefix reusable. Two ways to ask:
//! - `api = "chat"`: `/v1/chat/completions` with `tools=` from the catalog; the call is read from
//!   `tool_calls`, or failing that from Hermes `<tool_call>` text in the content;
//! - `api = "completions"`: the conversation is rendered with the chat template client-side and
//!   sent to `/v1/completions`; with `grammar = true` a GBNF grammar (llama.cpp servers) admits
//!   exactly one valid tool call of the catalog, so every call parses whatever the model.
//!
//! At most `max_seqs` turns are in flight at once.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::{Decision, ExecError, Executor, TurnView};
use crate::backend::openai::{resolve_endpoint, usage, OpenAiClient};
use crate::catalog::Catalog;
use crate::config::{Config, OpenAiApi, PromptStrategy};
use crate::task::{Action, Role};
use tutti_model::chat_template::ChatTemplate;

pub(crate) struct OpenAiExecutor {
    strategy: PromptStrategy,
    /// Characters each part of a `toolorchestra` prompt keeps (its token budget, times four).
    part_chars: usize,
    client: OpenAiClient,
    model: String,
    api: OpenAiApi,
    template: Option<ChatTemplate>,
    grammar: Option<String>,
    /// Whether to send a grammar: of the catalog's calls, or with an environment, of calls to
    /// its functions (built per turn from the session's tools).
    use_grammar: bool,
    tools: Value,
    system: String,
    max_tokens: u32,
    temperature: f64,
    in_flight: Semaphore,
    next_seq: std::sync::atomic::AtomicU64,
}

impl OpenAiExecutor {
    pub(crate) fn new(cfg: &Config, catalog: Arc<Catalog>) -> Result<OpenAiExecutor, ExecError> {
        let o = &cfg.orchestrator;
        let endpoint = resolve_endpoint(
            o.endpoint.as_deref(),
            o.endpoint_env.as_deref(),
            crate::config::HTTP,
        )
        .map_err(|e| ExecError::Invalid(format!("orchestrator: {e}")))?;
        let client = OpenAiClient::new(
            "orchestrator",
            &endpoint,
            o.api_key_env.as_deref(),
            o.timeout_ms.map(Duration::from_millis),
            o.retries,
            Duration::from_millis(200),
        )
        .map_err(ExecError::Invalid)?;
        let template = match (&o.chat_template, o.api) {
            (Some(t), _) => {
                Some(ChatTemplate::new(t).map_err(|e| ExecError::Invalid(e.to_string()))?)
            }
            (None, OpenAiApi::Completions) => {
                return Err(ExecError::Invalid(
                    "`orchestrator.api = \"completions\"` needs `orchestrator.chat_template`"
                        .into(),
                ))
            }
            (None, OpenAiApi::Chat) => None,
        };
        Ok(OpenAiExecutor {
            strategy: o.prompt_strategy,
            part_chars: o.prompt_part_tokens as usize * 4,
            client,
            model: o.model.clone().unwrap_or_else(|| "orchestrator".into()),
            api: o.api,
            template,
            grammar: o.grammar.then(|| tool_call_grammar(&catalog)),
            use_grammar: o.grammar,
            tools: tools_json(&catalog),
            system: system_prompt(&catalog),
            max_tokens: o.max_tokens,
            temperature: o.temperature,
            in_flight: Semaphore::new(o.max_seqs),
            next_seq: Default::default(),
        })
    }

    /// The catalog's functions and the environment's, as OpenAI definitions.
    fn functions(&self, view: &TurnView<'_>) -> Vec<Value> {
        let catalog = self.tools.as_array().expect("an array");
        catalog
            .iter()
            .map(|t| t["function"].clone())
            .chain(view.functions.iter().cloned())
            .collect()
    }

    /// The conversation so far, as chat messages.
    fn messages(&self, view: &TurnView<'_>) -> Vec<Value> {
        let mut system = if view.functions.is_empty() {
            self.system.clone()
        } else {
            tutti_model::hermes::tools_prompt(&self.functions(view))
        };
        if !view.task.preference.is_empty() {
            system.push_str(&format!(
                "\nThe user's preference weights: {}.",
                super::preference_text(&view.task.preference)
            ));
        }
        if view.remaining_usd.is_finite() {
            system.push_str(&format!("\nRemaining budget: ${:.4}.", view.remaining_usd));
        }
        if self.strategy == PromptStrategy::Toolorchestra {
            return vec![
                json!({"role": "system", "content": system}),
                json!({"role": "user", "content": toolorchestra_prompt(view, self.part_chars)}),
            ];
        }
        super::chat_messages(&system, view.messages, "")
    }

    async fn turn(&self, view: TurnView<'_>) -> Result<Decision, ExecError> {
        let messages = self.messages(&view);
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ExecError::Invalid("executor closed".into()))?;
        let (path, mut body) = match self.api {
            OpenAiApi::Chat if !view.functions.is_empty() => {
                let tools: Vec<Value> = self
                    .functions(&view)
                    .into_iter()
                    .map(|f| json!({"type": "function", "function": f}))
                    .collect();
                (
                    "chat/completions",
                    json!({"messages": messages, "tools": tools}),
                )
            }
            OpenAiApi::Chat => (
                "chat/completions",
                json!({"messages": messages, "tools": self.tools}),
            ),
            OpenAiApi::Completions => {
                let template = self.template.as_ref().expect("checked in new");
                let prompt = template
                    .render_messages(&messages)
                    .map_err(|e| ExecError::Invalid(e.to_string()))?;
                ("completions", json!({"prompt": prompt}))
            }
        };
        body["model"] = json!(self.model);
        body["max_tokens"] = json!(self.max_tokens);
        body["temperature"] = json!(self.temperature);
        if !view.functions.is_empty() && self.use_grammar {
            let functions = self.functions(&view);
            let names = functions.iter().filter_map(|f| f["name"].as_str());
            body["grammar"] = json!(tutti_model::hermes::gbnf_functions(names));
        } else if let Some(g) = &self.grammar {
            body["grammar"] = json!(g);
        }
        let v = self
            .client
            .post(path, &body)
            .await
            .map_err(ExecError::Server)?;
        let text = match self.api {
            OpenAiApi::Chat => {
                let msg = v.pointer("/choices/0/message").unwrap_or(&Value::Null);
                match msg.pointer("/tool_calls/0/function") {
                    Some(f) => tool_call_text(f),
                    None => msg
                        .get("content")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                }
            }
            OpenAiApi::Completions => v
                .pointer("/choices/0/text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };
        Ok(Decision {
            text,
            prompt_tokens: usage(&v, "prompt_tokens"),
            completion_tokens: usage(&v, "completion_tokens"),
        })
    }
}

impl Executor for OpenAiExecutor {
    fn open(&self) -> u64 {
        self.next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn decide<'a>(
        &'a self,
        _seq: u64,
        view: TurnView<'a>,
    ) -> BoxFuture<'a, Result<Decision, ExecError>> {
        Box::pin(self.turn(view))
    }

    fn release(&self, _seq: u64) {}
}

/// ToolOrchestra's prompt, rebuilt every turn: the problem, the documents retrieved so far, the
/// code run so far with its output, earlier attempts, and "Choose an appropriate tool." Each part
/// keeps its most recent `part_chars` characters.
fn toolorchestra_prompt(view: &TurnView<'_>, part_chars: usize) -> String {
    let (mut docs, mut code, mut attempts) = (String::new(), String::new(), String::new());
    let mut last_tool = String::new();
    for m in view.messages {
        match m.role {
            Role::User => {}
            Role::Assistant => {
                last_tool = Action::parse_hermes(&m.content)
                    .map(|a| a.tool)
                    .unwrap_or_default();
            }
            Role::Tool => {
                let part = match last_tool.as_str() {
                    "search" => &mut docs,
                    "enhance_reasoning" => &mut code,
                    _ => &mut attempts,
                };
                part.push_str(&m.content);
                part.push('\n');
            }
        }
    }
    let tail = |s: &str| -> String {
        let n = s.chars().count();
        s.chars().skip(n.saturating_sub(part_chars)).collect()
    };
    let mut p = format!("Problem: {}\n", view.task.prompt);
    for (title, part) in [
        ("Documents:", &docs),
        ("Code and outputs:", &code),
        ("Earlier attempts:", &attempts),
    ] {
        if !part.is_empty() {
            p.push_str(&format!("\n{title}\n{}\n", tail(part).trim_end()));
        }
    }
    p.push_str("\nChoose an appropriate tool.");
    p
}

/// A structured tool call rendered as the Hermes text the episode parses.
fn tool_call_text(function: &Value) -> String {
    match function
        .as_object()
        .map(|f| tutti_model::hermes::from_object(f.clone()))
    {
        Some(Ok(call)) => call.text(),
        // Left for the episode to report: its parser says what is wrong.
        _ => format!(
            "{}{function}{}",
            tutti_model::hermes::OPEN,
            tutti_model::hermes::CLOSE
        ),
    }
}

/// The catalog as OpenAI function definitions: every tool takes one argument, `model`, an enum.
pub(crate) fn tools_json(catalog: &Catalog) -> Value {
    Value::Array(
        catalog
            .tools
            .iter()
            .map(|t| {
                let aliases: Vec<&str> = t
                    .actions
                    .iter()
                    .map(|&a| &*catalog.actions[a].alias)
                    .collect();
                json!({
                    "type": "function",
                    "function": {
                        "name": &*t.name,
                        "description": t.description,
                        "parameters": {
                            "type": "object",
                            "properties": {"model": {"type": "string", "enum": aliases}},
                            "required": ["model"],
                        },
                    },
                })
            })
            .collect(),
    )
}

/// The system prompt: ToolOrchestra's opening line and the tools in Hermes form.
pub(crate) fn system_prompt(catalog: &Catalog) -> String {
    let functions: Vec<Value> = tools_json(catalog)
        .as_array()
        .expect("an array")
        .iter()
        .map(|t| t["function"].clone())
        .collect();
    format!(
        "You are good at using tools.\n\n{}",
        tutti_model::hermes::tools_prompt(&functions)
    )
}

/// A GBNF grammar admitting exactly the Hermes calls of the catalog, in their one spelling.
pub(crate) fn tool_call_grammar(catalog: &Catalog) -> String {
    tutti_model::hermes::gbnf(
        catalog
            .actions
            .iter()
            .map(|a| tutti_model::hermes::model_call_text(&a.tool_name, &a.alias)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_lists_every_tool_and_alias() {
        let c = crate::catalog::sim_catalog();
        let g = tool_call_grammar(&c);
        for a in &c.actions {
            assert!(g.contains(&format!("\\\"{}\\\"", a.alias)), "{g}");
        }
        assert!(
            g.starts_with("root ::= \"<tool_call>{\\\"name\\\": "),
            "{g}"
        );
    }

    #[test]
    fn toolorchestra_prompt_sorts_observations_by_tool_and_cuts_them() {
        use crate::task::{Message, Task};
        let msg = |role, content: &str| Message {
            role,
            content: content.to_string(),
            tokens: 1,
        };
        let call = |tool: &str| {
            Action {
                tool: tool.into(),
                alias: "x".into(),
            }
            .to_hermes()
        };
        let task = Task {
            id: "t".into(),
            prompt: "What is 2 + 2?".into(),
            ..Default::default()
        };
        let messages = vec![
            msg(Role::User, "What is 2 + 2?"),
            msg(Role::Assistant, &call("search")),
            msg(Role::Tool, "Documents: arithmetic basics"),
            msg(Role::Assistant, &call("enhance_reasoning")),
            msg(Role::Tool, &format!("{}4", "x".repeat(100))),
        ];
        let pref = std::sync::Arc::new(crate::catalog::Preference { bias: vec![] });
        let view = TurnView {
            task: &task,
            messages: &messages,
            new_from: 0,
            turn: 2,
            remaining_usd: f64::INFINITY,
            preference: &pref,
            context_hash: 0,
            functions: &[],
        };
        let p = toolorchestra_prompt(&view, 10);
        assert!(p.starts_with("Problem: What is 2 + 2?\n"), "{p}");
        // Each part keeps its last 10 characters (its trailing newline included).
        assert!(p.contains("Documents:\nic basics\n"), "{p}");
        assert!(p.contains("Code and outputs:\nxxxxxxxx4\n"), "{p}");
        assert!(!p.contains("Earlier attempts"), "{p}");
        assert!(p.ends_with("Choose an appropriate tool."), "{p}");
    }

    #[test]
    fn structured_tool_calls_become_hermes_text() {
        let f = json!({"name": "answer", "arguments": "{\"model\": \"answer-2\"}"});
        let a = Action::parse_hermes(&tool_call_text(&f)).unwrap();
        assert_eq!((a.tool.as_str(), a.alias.as_str()), ("answer", "answer-2"));
    }
}
