//! Stateful environments over OpenEnv: one WebSocket session per episode.
//!
//! An `openenv` backend is an OpenEnv server (`openenv-core`'s `/ws` endpoint; `envs/README.md`
//! says what tutti expects of one). An episode opens a session with `reset` (the task's `env`
//! object as its data), learns the environment's function tools from the reset observation's
//! `tools` (or a `list_tools` step), sends each call as a `call_tool` step, and ends when a step
//! answers `done` — with its reward — or when the episode ends otherwise. The session's calls run
//! in order, one at a time, and are never cached or collapsed: the environment's state changes
//! with each. Dropping a [`Session`] closes its socket, so every exit path of an episode closes
//! its session; the server then drops the session's state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::OpenEnvBackendConfig;

/// How long one step may take unless the backend's `timeout_ms` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a session could not be opened or a step failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum EnvError {
    #[error("environment `{backend}`: cannot connect to {url}: {message}")]
    Connect {
        backend: String,
        url: String,
        message: String,
    },
    #[error("environment `{backend}`: {message}")]
    Protocol { backend: String, message: String },
    /// The environment answered with an error (an unknown tool, bad arguments, a failed reset).
    #[error("{message}")]
    Refused { message: String },
    #[error("environment `{backend}`: no answer within {ms} ms")]
    Timeout { backend: String, ms: u128 },
}

/// A function tool of an environment, as the orchestrator sees it and the episode checks it.
pub(crate) struct FunctionTool {
    /// The OpenAI function definition: `name`, `description`, `parameters`.
    pub definition: Value,
    validator: jsonschema::Validator,
}

/// The function tools of a session, compiled once per distinct list and shared by sessions.
pub(crate) struct ToolSet {
    pub tools: Vec<FunctionTool>,
    by_name: HashMap<String, usize>,
}

/// Why a call does not fit the environment's tools; the episode shows it as an error observation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    #[error("unknown tool `{tool}`; the tools are {known}")]
    UnknownTool { tool: String, known: String },
    #[error("tool `{tool}`: argument `{field}`: {message}")]
    BadArgument {
        tool: String,
        field: String,
        message: String,
    },
}

impl ToolSet {
    /// Builds a tool set from an environment's list: OpenAI definitions (`{"type": "function",
    /// "function": {…}}` or `{name, description, parameters}`) or MCP tools (`input_schema` /
    /// `inputSchema`).
    pub(crate) fn from_list(list: &[Value]) -> Result<ToolSet, String> {
        let mut tools = Vec::with_capacity(list.len());
        let mut by_name = HashMap::new();
        for (i, entry) in list.iter().enumerate() {
            let f = entry.get("function").unwrap_or(entry);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("tool {i} of the environment has no `name`"))?;
            let parameters = ["parameters", "input_schema", "inputSchema"]
                .iter()
                .find_map(|k| f.get(*k))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let validator = jsonschema::validator_for(&parameters)
                .map_err(|e| format!("tool `{name}`: its parameters are not a JSON schema: {e}"))?;
            let description = f.get("description").and_then(Value::as_str).unwrap_or("");
            if by_name.insert(name.to_string(), tools.len()).is_some() {
                return Err(format!("the environment lists tool `{name}` twice"));
            }
            tools.push(FunctionTool {
                definition: json!({"name": name, "description": description, "parameters": parameters}),
                validator,
            });
        }
        Ok(ToolSet { tools, by_name })
    }

    /// The OpenAI function definitions, for prompts and `tools=`.
    pub(crate) fn definitions(&self) -> Vec<Value> {
        self.tools.iter().map(|t| t.definition.clone()).collect()
    }

    /// Checks a call against its tool's schema; the error names the tool and the first field
    /// that breaks it.
    pub(crate) fn check(&self, name: &str, arguments: &Value) -> Result<(), CallError> {
        let Some(&i) = self.by_name.get(name) else {
            let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(CallError::UnknownTool {
                tool: name.to_string(),
                known: known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        match self.tools[i].validator.iter_errors(arguments).next() {
            None => Ok(()),
            Some(e) => {
                let path = e.instance_path().to_string();
                let field = path.trim_start_matches('/').replace('/', ".");
                // A missing required property is reported at its parent: name the property.
                let field = match e.kind() {
                    jsonschema::error::ValidationErrorKind::Required { property } => {
                        let p = property.as_str().map(str::to_string).unwrap_or_default();
                        if field.is_empty() {
                            p
                        } else {
                            format!("{field}.{p}")
                        }
                    }
                    _ if field.is_empty() => "arguments".to_string(),
                    _ => field,
                };
                Err(CallError::BadArgument {
                    tool: name.to_string(),
                    field,
                    message: e.to_string(),
                })
            }
        }
    }
}

/// One step's answer: the observation, the reward (when the environment gave one) and whether
/// the episode is over.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub observation: Value,
    pub reward: Option<f64>,
    pub done: bool,
}

/// Sessions opened and closed, for the run's summary and the tests.
#[derive(Debug, Default)]
pub struct SessionCounts {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
}

/// An OpenEnv server: where its sessions are opened and the tool sets they share.
pub(crate) struct EnvClient {
    pub name: Arc<str>,
    url: String,
    timeout: Duration,
    tool_sets: Mutex<HashMap<u64, Arc<ToolSet>>>,
    pub counts: SessionCounts,
}

impl EnvClient {
    /// The client of an `openenv` backend: `endpoint` (or the variable `endpoint_env` names) is
    /// the server's base URL, `http://` or `ws://`.
    pub(crate) fn new(name: &str, cfg: &OpenEnvBackendConfig) -> Result<EnvClient, String> {
        let base = crate::backend::openai::resolve_endpoint(
            cfg.endpoint.as_deref(),
            cfg.endpoint_env.as_deref(),
            crate::config::HTTP_OR_WS,
        )?;
        let base = base.trim_end_matches('/');
        let url = if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/ws")
        } else if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/ws")
        } else if base.starts_with("ws://") || base.starts_with("wss://") {
            format!("{base}/ws")
        } else {
            return Err(format!(
                "endpoint `{base}` is not an http://, https://, ws:// or wss:// URL"
            ));
        };
        Ok(EnvClient {
            name: name.into(),
            url,
            timeout: cfg
                .timeout_ms
                .map_or(DEFAULT_TIMEOUT, Duration::from_millis),
            tool_sets: Mutex::new(HashMap::new()),
            counts: SessionCounts::default(),
        })
    }

    /// Opens a session and resets it with `data`; returns the session and the reset's answer.
    pub(crate) async fn open(self: &Arc<Self>, data: Value) -> Result<(Session, Step), EnvError> {
        let connect = tokio_tungstenite::connect_async(self.url.as_str());
        let ws = match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(e)) => {
                return Err(EnvError::Connect {
                    backend: self.name.to_string(),
                    url: self.url.clone(),
                    message: e.to_string(),
                })
            }
            Ok(Ok((ws, _))) => ws,
        };
        self.counts.opened.fetch_add(1, Ordering::Relaxed);
        let mut session = Session {
            ws,
            client: self.clone(),
            tools: None,
            closed: false,
        };
        let reset = session
            .request(json!({"type": "reset", "data": data}))
            .await?;
        let reset = session.client.step_of(reset)?;
        let list = match reset.observation.get("tools") {
            Some(Value::Array(list)) => list.clone(),
            _ => {
                let listed = session
                    .request(json!({"type": "step", "data": {"type": "list_tools"}}))
                    .await?;
                match session.client.step_of(listed)?.observation.get("tools") {
                    Some(Value::Array(list)) => list.clone(),
                    _ => Vec::new(),
                }
            }
        };
        session.tools = Some(self.tool_set(&list)?);
        Ok((session, reset))
    }

    /// The compiled tool set of a list, shared by every session that lists the same tools.
    fn tool_set(&self, list: &[Value]) -> Result<Arc<ToolSet>, EnvError> {
        let text = serde_json::to_string(list).expect("JSON serializes");
        let key = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        if let Some(set) = self.tool_sets.lock().get(&key) {
            return Ok(set.clone());
        }
        let set = Arc::new(
            ToolSet::from_list(list).map_err(|message| EnvError::Protocol {
                backend: self.name.to_string(),
                message,
            })?,
        );
        self.tool_sets.lock().insert(key, set.clone());
        Ok(set)
    }

    fn timed_out(&self) -> EnvError {
        EnvError::Timeout {
            backend: self.name.to_string(),
            ms: self.timeout.as_millis(),
        }
    }

    fn protocol(&self, message: String) -> EnvError {
        EnvError::Protocol {
            backend: self.name.to_string(),
            message,
        }
    }

    /// A `{"observation", "reward", "done"}` answer.
    fn step_of(&self, data: Value) -> Result<Step, EnvError> {
        let Value::Object(mut data) = data else {
            return Err(self.protocol("an observation's data is not an object".into()));
        };
        Ok(Step {
            observation: data.remove("observation").unwrap_or(Value::Null),
            reward: data.get("reward").and_then(Value::as_f64),
            done: data.get("done").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// One episode's session. Calls run one at a time, in order.
pub(crate) struct Session {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    client: Arc<EnvClient>,
    tools: Option<Arc<ToolSet>>,
    closed: bool,
}

impl Session {
    /// The environment's function tools.
    pub(crate) fn tools(&self) -> &Arc<ToolSet> {
        self.tools.as_ref().expect("set when the session opened")
    }

    /// Sends one message and waits for its answer's `data`; an `error` answer is
    /// [`EnvError::Refused`].
    async fn request(&mut self, message: Value) -> Result<Value, EnvError> {
        let client = self.client.clone();
        let exchange = async {
            self.ws
                .send(WsMessage::text(message.to_string()))
                .await
                .map_err(|e| client.protocol(format!("send: {e}")))?;
            loop {
                match self.ws.next().await {
                    None => return Err(client.protocol("the session was closed".into())),
                    Some(Err(e)) => return Err(client.protocol(format!("receive: {e}"))),
                    Some(Ok(WsMessage::Text(text))) => {
                        return serde_json::from_str::<Value>(text.as_str())
                            .map_err(|e| client.protocol(format!("an answer is not JSON: {e}")))
                    }
                    Some(Ok(WsMessage::Close(_))) => {
                        return Err(client.protocol("the session was closed".into()))
                    }
                    Some(Ok(_)) => continue, // pings are answered by the library
                }
            }
        };
        let answer = match tokio::time::timeout(client.timeout, exchange).await {
            Err(_) => return Err(client.timed_out()),
            Ok(answer) => answer?,
        };
        let Value::Object(mut answer) = answer else {
            return Err(client.protocol("an answer is not a JSON object".into()));
        };
        let data = answer.remove("data").unwrap_or(Value::Null);
        match answer.get("type").and_then(Value::as_str) {
            Some("error") => Err(EnvError::Refused {
                message: data
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| data.to_string(), str::to_string),
            }),
            _ => Ok(data),
        }
    }

    /// Sends one action (`data` of a `step` message).
    pub(crate) async fn step(&mut self, action: Value) -> Result<Step, EnvError> {
        let data = self
            .request(json!({"type": "step", "data": action}))
            .await?;
        self.client.step_of(data)
    }

    /// Calls a function tool.
    pub(crate) async fn call_tool(
        &mut self,
        name: &str,
        arguments: Value,
    ) -> Result<Step, EnvError> {
        self.step(json!({"type": "call_tool", "tool_name": name, "arguments": arguments}))
            .await
    }

    /// Records a text message of the conversation (`role` is `assistant` or `user`).
    pub(crate) async fn message(&mut self, role: &str, content: &str) -> Result<Step, EnvError> {
        self.step(json!({"type": "message", "role": role, "content": content}))
            .await
    }

    /// Says goodbye and closes the socket; the server drops the session's state.
    pub(crate) async fn close(mut self) {
        let bye = json!({"type": "close"}).to_string();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.ws.send(WsMessage::text(bye)).await;
            let _ = self.ws.close(None).await;
        })
        .await;
        self.mark_closed();
    }

    fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            self.client.counts.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Session {
    /// A session dropped without [`Session::close`] (a cancelled episode) closes with its TCP
    /// connection.
    fn drop(&mut self) {
        self.mark_closed();
    }
}

/// The text an orchestrator sees of a step's observation: a `call_tool` answer's `result` (or its
/// `error`), else the whole observation as JSON.
pub(crate) fn observation_text(observation: &Value) -> String {
    if let Some(error) = observation.get("error").filter(|e| !e.is_null()) {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_string);
        return format!("Error: {message}");
    }
    match observation.get("result") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => observation.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> ToolSet {
        ToolSet::from_list(&[
            json!({"name": "get_order", "description": "d", "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}, "items": {"type": "array", "items": {"type": "integer"}}},
                "required": ["order_id"],
            }}),
            json!({"type": "function", "function": {"name": "done"}}),
            json!({"name": "mcp_style", "inputSchema": {"type": "object", "properties": {"x": {"enum": ["a", "b"]}}}}),
        ])
        .unwrap()
    }

    #[test]
    fn calls_are_checked_against_their_schema_naming_tool_and_field() {
        let t = tools();
        assert_eq!(t.check("get_order", &json!({"order_id": "#1"})), Ok(()));
        assert_eq!(t.check("done", &json!({})), Ok(()));
        let e = t.check("get_order", &json!({})).unwrap_err();
        assert!(
            matches!(&e, CallError::BadArgument { tool, field, .. } if tool == "get_order" && field == "order_id"),
            "{e}"
        );
        let e = t
            .check("get_order", &json!({"order_id": "#1", "items": [1, "x"]}))
            .unwrap_err();
        assert!(
            matches!(&e, CallError::BadArgument { field, .. } if field == "items.1"),
            "{e}"
        );
        let e = t.check("mcp_style", &json!({"x": "c"})).unwrap_err();
        assert!(
            e.to_string().starts_with("tool `mcp_style`: argument `x`:"),
            "{e}"
        );
        assert_eq!(
            t.check("refund", &json!({})).unwrap_err().to_string(),
            "unknown tool `refund`; the tools are `done`, `get_order`, `mcp_style`"
        );
    }

    #[test]
    fn observations_show_the_result_or_the_error() {
        assert_eq!(
            observation_text(&json!({"tool_name": "t", "result": "ok", "error": null})),
            "ok"
        );
        assert_eq!(
            observation_text(&json!({"result": null, "error": {"message": "no such order"}})),
            "Error: no such order"
        );
        assert_eq!(
            observation_text(&json!({"recorded": true})),
            r#"{"recorded":true}"#
        );
    }
}
