//! OpenAI batch JSON Lines, a convenience for users of `vllm run-batch` and OpenAI's Batch API:
//! request lines in (`custom_id`, `method`, `url`, `body`), one output line per task out
//! (`custom_id`, `response`, `error`).
//!
//! A request becomes a task: `custom_id` is its id and the text of `body.messages` (or
//! `body.prompt` for `/v1/completions`) its prompt. The rest of the body (`model`, `max_tokens`,
//! `temperature`) is not used: tutti's orchestrator decides which models answer, within the
//! config's limits. An answered task's output line carries a `chat.completion` (or
//! `text_completion`) body whose one choice holds the answer; any other ending is an `error`
//! whose `code` is the task's status.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::task::{Status, Task, TaskResult};

/// The endpoint the requests of a batch file name; one file names one endpoint, as in OpenAI's
/// Batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEndpoint {
    Chat,
    Completions,
}

impl BatchEndpoint {
    fn of(url: &str) -> Option<BatchEndpoint> {
        match url.trim_end_matches('/') {
            "/v1/chat/completions" | "/chat/completions" => Some(BatchEndpoint::Chat),
            "/v1/completions" | "/completions" => Some(BatchEndpoint::Completions),
            _ => None,
        }
    }

    fn url(self) -> &'static str {
        match self {
            BatchEndpoint::Chat => "/v1/chat/completions",
            BatchEndpoint::Completions => "/v1/completions",
        }
    }
}

/// One request line. Every field is optional here so that a missing one gets its own message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchLine {
    custom_id: Option<super::schema::Id>,
    method: Option<String>,
    url: Option<String>,
    body: Option<BatchBody>,
}

/// The request body: only the text is read; other keys are accepted and not used.
#[derive(Deserialize)]
struct BatchBody {
    messages: Option<Vec<ChatMessage>>,
    prompt: Option<Value>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    role: Option<String>,
    content: Option<Value>,
}

/// What is wrong with a request line: the field (as a path such as `body.messages[1].content`)
/// and the problem.
pub(super) struct LineProblem {
    pub field: String,
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> LineProblem {
    LineProblem {
        field: field.into(),
        message: message.into(),
    }
}

impl BatchLine {
    /// The task this request asks for, and the endpoint it names. `endpoint` is the one earlier
    /// lines named: every line of a file must name the same.
    pub(super) fn into_task(
        self,
        endpoint: Option<BatchEndpoint>,
    ) -> Result<(Task, BatchEndpoint), LineProblem> {
        let id = self
            .custom_id
            .ok_or_else(|| problem("custom_id", "missing"))?
            .0;
        if let Some(method) = &self.method {
            if !method.eq_ignore_ascii_case("POST") {
                return Err(problem(
                    "method",
                    format!("`{method}`: batch requests are POST"),
                ));
            }
        }
        let url = self.url.ok_or_else(|| problem("url", "missing"))?;
        let Some(this) = BatchEndpoint::of(&url) else {
            return Err(problem(
                "url",
                format!(
                    "`{url}`: tutti runs /v1/chat/completions and /v1/completions requests only"
                ),
            ));
        };
        if let Some(first) = endpoint.filter(|e| *e != this) {
            return Err(problem(
                "url",
                format!(
                    "`{url}`, but earlier lines ask for {}: one batch file names one endpoint",
                    first.url()
                ),
            ));
        }
        let body = self.body.ok_or_else(|| problem("body", "missing"))?;
        let prompt = match this {
            BatchEndpoint::Chat => {
                let messages = body
                    .messages
                    .ok_or_else(|| problem("body.messages", "missing"))?;
                chat_prompt(&messages)?
            }
            BatchEndpoint::Completions => match body.prompt {
                Some(Value::String(p)) => p,
                Some(_) => {
                    return Err(problem(
                        "body.prompt",
                        "must be one string: a task has one prompt",
                    ))
                }
                None => return Err(problem("body.prompt", "missing")),
            },
        };
        if prompt.trim().is_empty() {
            return Err(problem("body", "the request holds no text"));
        }
        let task = Task {
            id,
            prompt,
            ..Task::default()
        };
        Ok((task, this))
    }
}

/// The text of a conversation, message by message, separated by a blank line: a `system`
/// message's instructions come before the question, as the model would have read them.
fn chat_prompt(messages: &[ChatMessage]) -> Result<String, LineProblem> {
    let mut parts = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let at = |what: &str| format!("body.messages[{i}]{what}");
        if message.role.is_none() {
            return Err(problem(at(".role"), "missing"));
        }
        match &message.content {
            Some(Value::String(text)) => parts.push(text.clone()),
            Some(Value::Array(items)) => {
                for (j, item) in items.iter().enumerate() {
                    let kind = item.get("type").and_then(Value::as_str).unwrap_or("?");
                    match (kind, item.get("text").and_then(Value::as_str)) {
                        ("text", Some(text)) => parts.push(text.to_string()),
                        ("text", None) => {
                            return Err(problem(at(&format!(".content[{j}].text")), "missing"))
                        }
                        (other, _) => {
                            return Err(problem(
                                at(&format!(".content[{j}]")),
                                format!(
                                    "`{other}` parts are not supported: tutti's tasks are text"
                                ),
                            ))
                        }
                    }
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => {
                return Err(problem(
                    at(".content"),
                    "must be a string or a list of text parts",
                ))
            }
        }
    }
    Ok(parts.join("\n\n"))
}

/// The output line of one task, in the shape `vllm run-batch` writes: `id`, `custom_id`,
/// `response` (`status_code`, `request_id`, `body`) and `error`. The body's `usage` sums the
/// task's backend calls; `tutti` holds the task's own figures (status, turns, cost).
pub(crate) fn output_line(result: &TaskResult, endpoint: BatchEndpoint, created_s: u64) -> Value {
    let request_id = format!("tutti-{}", result.id);
    let (prompt_tokens, completion_tokens) = result.calls.iter().fold((0, 0), |(i, o), c| {
        (i + c.input_tokens, o + c.output_tokens)
    });
    let tutti = json!({
        "status": result.status.as_str(),
        "correct": result.correct,
        "turns": result.turns,
        "cost_usd": result.cost_usd,
        "latency_ms": result.latency_ms,
        "orchestrator_tokens": result.orchestrator_tokens,
    });
    let (response, error) = match (&result.answer, result.status) {
        (Some(answer), Status::Answered) => {
            let (object, choice) = match endpoint {
                BatchEndpoint::Chat => (
                    "chat.completion",
                    json!({"index": 0, "message": {"role": "assistant", "content": answer},
                           "finish_reason": "stop"}),
                ),
                BatchEndpoint::Completions => (
                    "text_completion",
                    json!({"index": 0, "text": answer, "finish_reason": "stop"}),
                ),
            };
            let body = json!({
                "id": request_id,
                "object": object,
                "created": created_s,
                "model": "tutti",
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "tutti": tutti,
            });
            let response = json!({"status_code": 200, "request_id": request_id, "body": body});
            (response, Value::Null)
        }
        (_, status) => {
            let message = result
                .error
                .clone()
                .unwrap_or_else(|| format!("the task ended `{status}` without an answer"));
            let error = json!({"code": status.as_str(), "message": message, "tutti": tutti});
            (Value::Null, error)
        }
    };
    json!({
        "id": request_id,
        "custom_id": result.id,
        "response": response,
        "error": error,
    })
}

/// The id and status of a line of a JSON Lines output, in either shape tutti writes: its own
/// result rows (`id`, `status`), or OpenAI batch output (`custom_id`, and `error.code` unless
/// answered).
#[derive(Deserialize)]
pub(super) struct OutputLine {
    id: Option<String>,
    custom_id: Option<String>,
    status: Option<String>,
    error: Option<Value>,
}

impl OutputLine {
    /// The line's id and status text, or what is missing.
    pub(super) fn id_and_status(self) -> Result<(String, String), &'static str> {
        if let Some(custom_id) = self.custom_id {
            let status = match self.error {
                None | Some(Value::Null) => Status::Answered.as_str().to_string(),
                Some(error) => error
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or(Status::Failed.as_str())
                    .to_string(),
            };
            return Ok((custom_id, status));
        }
        let id = self.id.ok_or("no `id` or `custom_id`")?;
        let status = self.status.ok_or("no `status`")?;
        Ok((id, status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Result<(Task, BatchEndpoint), String> {
        let line: BatchLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
        line.into_task(None)
            .map_err(|p| format!("{}: {}", p.field, p.message))
    }

    #[test]
    fn a_chat_request_becomes_a_task() {
        let (task, endpoint) = line(
            r#"{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "m", "max_tokens": 9, "messages": [
                  {"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]}}"#,
        )
        .unwrap();
        assert_eq!(task.id, "r1");
        assert_eq!(task.prompt, "Answer briefly.\n\nWhat is 2+2?");
        assert_eq!(endpoint, BatchEndpoint::Chat);
        let (task, endpoint) = line(
            r#"{"custom_id": 7, "method": "POST", "url": "/v1/completions",
                "body": {"model": "m", "prompt": "Q: 1+1?"}}"#,
        )
        .unwrap();
        assert_eq!((task.id.as_str(), task.prompt.as_str()), ("7", "Q: 1+1?"));
        assert_eq!(endpoint, BatchEndpoint::Completions);
    }

    #[test]
    fn a_bad_request_names_its_field() {
        let cases = [
            (
                r#"{"method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}"#,
                "custom_id: missing",
            ),
            (
                r#"{"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "x"}}"#,
                "url: `/v1/embeddings`: tutti runs /v1/chat/completions and /v1/completions requests only",
            ),
            (
                r#"{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}"#,
                "method: `GET`: batch requests are POST",
            ),
            (
                r#"{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}}"#,
                "body.messages[0].content[0]: `image_url` parts are not supported: tutti's tasks are text",
            ),
            (
                r#"{"custom_id": "a", "url": "/v1/completions", "body": {"prompt": ["a", "b"]}}"#,
                "body.prompt: must be one string: a task has one prompt",
            ),
            (
                r#"{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": []}}"#,
                "body: the request holds no text",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(line(text).unwrap_err(), want, "{text}");
        }
        let second: BatchLine = serde_json::from_str(
            r#"{"custom_id": "b", "url": "/v1/completions", "body": {"prompt": "p"}}"#,
        )
        .unwrap();
        let e = second.into_task(Some(BatchEndpoint::Chat)).err().unwrap();
        assert_eq!(
            e.message,
            "`/v1/completions`, but earlier lines ask for /v1/chat/completions: one batch file \
             names one endpoint"
        );
    }

    fn result(status: Status, answer: Option<&str>) -> TaskResult {
        TaskResult {
            id: "r1".into(),
            status,
            answer: answer.map(Into::into),
            correct: None,
            turns: 2,
            cost_usd: 0.5,
            latency_ms: 10,
            orchestrator_tokens: 40,
            orchestrator_cost_usd: 0.1,
            calls: Vec::new(),
            trajectory: None,
            error: None,
            metadata: None,
            reward: None,
            reward_info: None,
        }
    }

    #[test]
    fn output_lines_read_back_as_their_status() {
        let answered = output_line(&result(Status::Answered, Some("4")), BatchEndpoint::Chat, 1);
        assert_eq!(
            answered["response"]["body"]["choices"][0]["message"]["content"],
            "4"
        );
        assert_eq!(answered["error"], Value::Null);
        let text = output_line(
            &result(Status::Answered, Some("4")),
            BatchEndpoint::Completions,
            1,
        );
        assert_eq!(text["response"]["body"]["choices"][0]["text"], "4");
        let stopped = output_line(&result(Status::MaxTurns, None), BatchEndpoint::Chat, 1);
        assert_eq!(stopped["response"], Value::Null);
        assert_eq!(stopped["error"]["code"], "max_turns");
        for (line, status) in [(answered, "answered"), (stopped, "max_turns")] {
            let back: OutputLine = serde_json::from_value(line).unwrap();
            assert_eq!(
                back.id_and_status().unwrap(),
                ("r1".to_string(), status.to_string())
            );
        }
    }
}
