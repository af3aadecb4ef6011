//! Models behind OpenAI-compatible servers (vLLM, SGLang, llama.cpp's llama-server, hosted APIs).
//!
//! Two ways to send a batch, chosen per backend (`api`): `chat` sends each call as its own
//! `/v1/chat/completions` request, all at once, and yields each answer as it arrives;
//! `completions` renders each call with the chat template client-side and sends the whole batch
//! as one `/v1/completions` request with a list of prompts. Either way every request goes through
//! [`OpenAiClient::post`], which retries 429s, 5xx, timeouts and resets with exponential backoff
//! and jitter, honouring `Retry-After`, and counts each retry in the ledger.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use rand::Rng;
use serde_json::{json, Value};

use super::{Backend, BackendError, BatchItem, Request, Response};
use crate::config::{OpenAiApi, OpenAiBackendConfig, HTTP};
use crate::ledger::Ledger;
use crate::limits::{estimate_tokens, RateLimits};
use tutti_model::chat_template::ChatTemplate;

/// Backoff never waits longer than this between two tries, whatever Retry-After says.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Used when the config sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// An HTTP client for one OpenAI-compatible server, with the retry policy of one backend.
pub(crate) struct OpenAiClient {
    name: String,
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    timeout: Duration,
    retries: u32,
    retry_base: Duration,
    ledger: Option<(Arc<Ledger>, usize)>,
}

/// How one try of a request ended when it did not succeed.
enum TryError {
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    Fatal(String),
}

impl OpenAiClient {
    /// `endpoint` is the base URL (`http://127.0.0.1:8080/v1`); the key, when named, comes from
    /// the environment and is never logged.
    pub(crate) fn new(
        name: &str,
        endpoint: &str,
        api_key_env: Option<&str>,
        timeout: Option<Duration>,
        retries: u32,
        retry_base: Duration,
    ) -> Result<OpenAiClient, String> {
        let api_key = match api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("the environment variable `{var}` (api_key_env) is not set")
            })?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(OpenAiClient {
            name: name.to_string(),
            http,
            base: endpoint.trim_end_matches('/').to_string(),
            api_key,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            retries,
            retry_base,
            ledger: None,
        })
    }

    /// Counts retries in the ledger under backend number `index`.
    pub(crate) fn with_ledger(mut self, ledger: Arc<Ledger>, index: usize) -> Self {
        self.ledger = Some((ledger, index));
        self
    }

    /// POSTs a JSON body to `path` (relative to the base URL), retrying what can be retried.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, BackendError> {
        let url = format!("{}/{}", self.base, path);
        let mut attempt = 0u32;
        loop {
            let error = match self.try_once(&url, body).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let (message, retry_after) = match error {
                TryError::Fatal(message) => return Err(self.failed(message)),
                TryError::Retryable {
                    message,
                    retry_after,
                } => (message, retry_after),
            };
            if attempt >= self.retries {
                let message = match attempt {
                    0 => message,
                    n => format!("{message} (after {} tries)", n + 1),
                };
                return Err(self.failed(message));
            }
            attempt += 1;
            if let Some((ledger, index)) = &self.ledger {
                ledger.record_retry(*index);
            }
            tokio::time::sleep(self.backoff(attempt, retry_after)).await;
        }
    }

    async fn try_once(&self, url: &str, body: &Value) -> Result<Value, TryError> {
        let mut rb = self.http.post(url).json(body).timeout(self.timeout);
        if let Some(key) = &self.api_key {
            rb = rb.bearer_auth(key);
        }
        let resp = rb.send().await.map_err(|e| TryError::Retryable {
            message: if e.is_timeout() {
                "timed out".into()
            } else {
                crate::error::chain(&e)
            },
            retry_after: None,
        })?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<Value>().await.map_err(|e| TryError::Retryable {
                message: format!("unreadable response body: {}", crate::error::chain(&e)),
                retry_after: None,
            });
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let text = resp.text().await.unwrap_or_default();
        let message = format!(
            "HTTP {}: {}",
            status.as_u16(),
            text.chars().take(300).collect::<String>()
        );
        if status.as_u16() == 429 || status.is_server_error() {
            Err(TryError::Retryable {
                message,
                retry_after,
            })
        } else {
            Err(TryError::Fatal(message))
        }
    }

    /// Exponential backoff with ±50% jitter, at least what Retry-After asked for.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.retry_base.saturating_mul(1 << (attempt - 1).min(16));
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = exp.mul_f64(jitter).max(retry_after.unwrap_or_default());
        wait.min(MAX_BACKOFF)
    }

    pub(crate) fn failed(&self, message: String) -> BackendError {
        BackendError::Failed {
            backend: self.name.clone(),
            message,
        }
    }
}

/// A `Retry-After` of seconds, at most [`MAX_BACKOFF`] (a server may send any number: `1e300`,
/// `inf`, `-1`); `None` for what is not a number of seconds (an HTTP date, `NaN`).
fn retry_after(value: &str) -> Option<Duration> {
    let secs = value.trim().parse::<f64>().ok()?;
    if secs.is_nan() {
        return None;
    }
    // Clamped first, so even `inf` is a duration.
    Some(Duration::from_secs_f64(
        secs.clamp(0.0, MAX_BACKOFF.as_secs_f64()),
    ))
}

pub struct OpenAiBackend {
    client: Arc<OpenAiClient>,
    limits: Arc<RateLimits>,
    api: OpenAiApi,
    template: Option<Arc<ChatTemplate>>,
    /// Sent as `stop` when not empty.
    stop: Arc<[String]>,
}

impl OpenAiBackend {
    pub fn new(
        name: &str,
        cfg: &OpenAiBackendConfig,
        ledger: Arc<Ledger>,
        index: usize,
    ) -> Result<OpenAiBackend, String> {
        let endpoint =
            resolve_endpoint(cfg.endpoint.as_deref(), cfg.endpoint_env.as_deref(), HTTP)?;
        let client = OpenAiClient::new(
            name,
            &endpoint,
            cfg.api_key_env.as_deref(),
            cfg.timeout_ms.map(Duration::from_millis),
            cfg.retries,
            Duration::from_millis(cfg.retry_base_ms),
        )?
        .with_ledger(ledger, index);
        let template = match (&cfg.chat_template, cfg.api) {
            (Some(t), _) => Some(Arc::new(ChatTemplate::new(t).map_err(|e| e.to_string())?)),
            (None, OpenAiApi::Completions) => {
                return Err(
                    "the `completions` api needs a `chat_template` to render prompts".into(),
                )
            }
            (None, OpenAiApi::Chat) => None,
        };
        Ok(OpenAiBackend {
            client: Arc::new(client),
            limits: Arc::new(RateLimits::new(cfg.rpm, cfg.tpm)),
            api: cfg.api,
            template,
            stop: cfg.generation.stop.clone().into(),
        })
    }
}

/// A base URL: `endpoint`, unless the variable named by `endpoint_env` is set (and not empty), in
/// which case its value is checked as the config checks `endpoint` (`schemes`, a host). Used by
/// `openai` backends, the `openai` executor and `openenv` backends.
pub(crate) fn resolve_endpoint(
    endpoint: Option<&str>,
    endpoint_env: Option<&str>,
    schemes: &[&str],
) -> Result<String, String> {
    if let Some((var, url)) = endpoint_env
        .and_then(|v| Some(v).zip(std::env::var(v).ok()))
        .filter(|(_, u)| !u.is_empty())
    {
        crate::config::check_endpoint(&url, schemes)
            .map_err(|m| format!("the environment variable `{var}` (endpoint_env): {m}"))?;
        return Ok(url);
    }
    endpoint.map(str::to_string).ok_or_else(|| {
        "an OpenAI-compatible server needs an `endpoint` (base URL, e.g. http://127.0.0.1:8080/v1)".into()
    })
}

pub(crate) fn usage(v: &Value, key: &str) -> u64 {
    v.get("usage")
        .and_then(|u| u.get(key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

impl Backend for OpenAiBackend {
    fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem> {
        match self.api {
            OpenAiApi::Chat => {
                let client = self.client.clone();
                let limits = self.limits.clone();
                let stop = self.stop.clone();
                requests
                    .into_iter()
                    .enumerate()
                    .map(move |(i, r)| {
                        let client = client.clone();
                        let limits = limits.clone();
                        let stop = stop.clone();
                        async move {
                            limits
                                .acquire(estimate_tokens(&r.prompt, r.max_tokens))
                                .await;
                            (i, chat(&client, &r, &stop).await)
                        }
                    })
                    .collect::<FuturesUnordered<_>>()
                    .boxed()
            }
            OpenAiApi::Completions => {
                let client = self.client.clone();
                let template = self.template.clone().expect("checked in new");
                let limits = self.limits.clone();
                let stop = self.stop.clone();
                futures::stream::once(async move {
                    let tokens = requests
                        .iter()
                        .map(|r| estimate_tokens(&r.prompt, r.max_tokens))
                        .sum();
                    limits.acquire(tokens).await;
                    completions(&client, &template, &requests, &stop).await
                })
                .flat_map(futures::stream::iter)
                .boxed()
            }
        }
    }
}

async fn chat(
    client: &OpenAiClient,
    r: &Request,
    stop: &[String],
) -> Result<Response, BackendError> {
    let mut body = json!({
        "model": &*r.model,
        "messages": [{"role": "user", "content": r.prompt}],
        "max_tokens": r.max_tokens,
        "temperature": r.temperature,
    });
    if !stop.is_empty() {
        body["stop"] = json!(stop);
    }
    let v = client.post("chat/completions", &body).await?;
    let text = v
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            client.failed(format!(
                "no choices[0].message.content in the response: {v}"
            ))
        })?;
    Ok(Response {
        text: text.to_string(),
        input_tokens: usage(&v, "prompt_tokens"),
        output_tokens: usage(&v, "completion_tokens"),
        billed_seconds: 0.0,
    })
}

/// One `/v1/completions` request for the whole batch. Requests of a batch share model, max_tokens
/// and temperature in practice (they come from one backend's config); the first one's are used.
async fn completions(
    client: &OpenAiClient,
    template: &ChatTemplate,
    requests: &[Request],
    stop: &[String],
) -> Vec<BatchItem> {
    let fail_all = |e: BackendError| {
        (0..requests.len())
            .map(|i| (i, Err(e.clone())))
            .collect::<Vec<_>>()
    };
    let prompts: Result<Vec<String>, String> = requests
        .iter()
        .map(|r| template.render(&r.prompt).map_err(|e| e.to_string()))
        .collect();
    let prompts = match prompts {
        Ok(p) => p,
        Err(e) => return fail_all(client.failed(e)),
    };
    let first = &requests[0];
    let mut body = json!({
        "model": &*first.model,
        "prompt": prompts,
        "max_tokens": first.max_tokens,
        "temperature": first.temperature,
    });
    if !stop.is_empty() {
        body["stop"] = json!(stop);
    }
    let v = match client.post("completions", &body).await {
        Ok(v) => v,
        Err(e) => return fail_all(e),
    };
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return fail_all(client.failed(format!("no choices in the response: {v}")));
    };
    // Usage is reported for the whole request; each call is billed its share, by prompt length.
    let total_in = usage(&v, "prompt_tokens");
    let total_out = usage(&v, "completion_tokens");
    let chars: usize = prompts.iter().map(String::len).sum::<usize>().max(1);
    let mut out: Vec<Option<Result<Response, BackendError>>> = vec![None; requests.len()];
    let mut outputs = 0usize;
    for (pos, c) in choices.iter().enumerate() {
        let i = c
            .get("index")
            .and_then(Value::as_u64)
            .map_or(pos, |x| x as usize);
        if let (Some(slot), Some(text)) = (out.get_mut(i), c.get("text").and_then(Value::as_str)) {
            outputs += text.len();
            *slot = Some(Ok(Response {
                text: text.to_string(),
                input_tokens: total_in * prompts[i].len() as u64 / chars as u64,
                output_tokens: 0,
                billed_seconds: 0.0,
            }));
        }
    }
    let outputs = outputs.max(1);
    for r in out.iter_mut().flatten().flatten() {
        r.output_tokens = (total_out * r.text.len() as u64).div_ceil(outputs as u64);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| {
            (
                i,
                r.unwrap_or_else(|| {
                    Err(client.failed(format!("the response has no choice for prompt {i}")))
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of one chat call to `endpoint` with `retries` retries 1 ms apart.
    async fn call_error(endpoint: &str, retries: u32) -> String {
        OpenAiClient::new(
            "local",
            endpoint,
            None,
            None,
            retries,
            Duration::from_millis(1),
        )
        .unwrap()
        .post("chat/completions", &json!({}))
        .await
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn retry_after_is_seconds_within_the_backoff_cap() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        for huge in ["1e300", "inf", "31", "1e400"] {
            assert_eq!(retry_after(huge), Some(MAX_BACKOFF), "{huge}");
        }
        for below in ["-1", "-inf", "0"] {
            assert_eq!(retry_after(below), Some(Duration::ZERO), "{below}");
        }
        for not_seconds in ["NaN", "Wed, 21 Oct 2015 07:28:00 GMT", ""] {
            assert_eq!(retry_after(not_seconds), None, "{not_seconds}");
        }
    }

    /// Issue 19: a server answering `Retry-After: 1e300` panicked the engine's task (the
    /// duration overflowed). Against a real server on loopback: the call fails with the
    /// server's status, as any 503 does.
    #[tokio::test]
    async fn a_huge_retry_after_is_an_error_not_a_panic() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let body = "busy";
                let reply = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1e300\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        let text = call_error(&format!("http://127.0.0.1:{port}/v1"), 0).await;
        assert!(text.contains("HTTP 503: busy"), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_reported_in_the_os_words_without_a_try_count() {
        // A loopback port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}/v1");
        let text = call_error(&endpoint, 0).await;
        assert!(text.starts_with("backend `local` failed: "), "{text}");
        assert!(text.contains("Connection refused"), "{text}");
        assert!(!text.contains("tries"), "{text}");

        let text = call_error(&endpoint, 2).await;
        assert!(text.ends_with("(after 3 tries)"), "{text}");
    }
}
