//! Pre-flight: before any task starts, reach every server and program the config names, so that a
//! wrong endpoint, a server that is down or a missing interpreter stops the run at once with the
//! operating system's words (`Connection refused`, `failed to lookup address`), instead of failing
//! every task one by one.
//!
//! What is checked, per kind: an `openai` backend or executor answers `GET <endpoint>/models` (the
//! model list of every OpenAI-compatible server) with a success, and lists the configured model
//! (a warning only: llama-server answers to any name, vLLM refuses unknown ones); an `openenv`
//! backend answers HTTP at all (`GET <endpoint>/health`); a `python` backend's sandbox runs
//! `print("ok")` with the backend's interpreter and limits (a missing interpreter, or a memory or
//! time limit too small for Python to start, would otherwise answer every call with a crash); a
//! `retrieval` backend's index opens. In-process models are checked when the engine loads them. A
//! backend that names a `fallback` alias may be down: that is a warning.

use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;

use crate::backend::openai::resolve_endpoint;
use crate::backend::retrieval::RetrievalBackend;
use crate::backend::sandbox::{Outcome, Sandbox};
use crate::config::HTTP;
use crate::config::{BackendConfig, BackendSettings, Config, ExecutorKind, RetrievalBackendConfig};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pre-flight found: problems stop the run, warnings are printed.
#[derive(Debug, Default)]
pub struct Preflight {
    /// Each a line naming what could not be reached and why.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// How many servers and programs were checked.
    pub checked: usize,
}

impl Preflight {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One thing to reach.
enum Probe {
    /// An OpenAI-compatible server: its base URL, the key's variable, the model it should serve.
    OpenAi {
        base: String,
        api_key_env: Option<String>,
        model: Option<String>,
    },
    /// An OpenEnv server.
    Env { base: String },
    /// A `python` backend's sandbox, which must run a program that prints.
    Sandbox(Sandbox),
    /// A `retrieval` backend, whose index must open.
    Index(RetrievalBackendConfig),
}

/// Checks everything `cfg` will reach, all at once. A backend with a `fallback` alias that
/// cannot be reached is a warning, not a problem: its calls go to the fallback while it is down.
pub async fn check(cfg: &Config) -> Preflight {
    let mut report = Preflight::default();
    let mut probes = Vec::new();
    let o = &cfg.orchestrator;
    if o.executor == ExecutorKind::Openai {
        match resolve_endpoint(o.endpoint.as_deref(), o.endpoint_env.as_deref(), HTTP) {
            Ok(base) => probes.push((
                format!("the orchestrator (openai, {base})"),
                Probe::OpenAi {
                    base,
                    api_key_env: o.api_key_env.clone(),
                    model: o.model.clone(),
                },
                None,
            )),
            Err(e) => report.problems.push(format!("the orchestrator: {e}")),
        }
    }
    for b in &cfg.backends {
        match probe(b) {
            Ok(Some((what, p))) => probes.push((what, p, b.fallback.clone())),
            Ok(None) => {}
            Err(e) => {
                report
                    .problems
                    .push(format!("backend `{}` ({}): {e}", b.name, b.kind().as_str()))
            }
        }
    }
    report.checked = probes.len();
    let http = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .expect("a default HTTP client builds");
    let outcomes = join_all(probes.iter().map(|(_, p, _)| run(&http, p))).await;
    for ((what, _, fallback), outcome) in probes.iter().zip(outcomes) {
        match (outcome, fallback) {
            (Ok(None), _) => {}
            (Ok(Some(warning)), _) => report.warnings.push(format!("{what}: {warning}")),
            (Err(problem), Some(alias)) => report.warnings.push(format!(
                "{what}: {problem}; its calls go to the fallback `{alias}` while it is down"
            )),
            (Err(problem), None) => report.problems.push(format!("{what}: {problem}")),
        }
    }
    report
}

/// The probe of one backend, with the words that name it; `None` for kinds checked elsewhere.
fn probe(b: &BackendConfig) -> Result<Option<(String, Probe)>, String> {
    let what = |detail: &str| format!("backend `{}` ({}, {detail})", b.name, b.kind().as_str());
    Ok(match &b.settings {
        BackendSettings::Openai(o) => {
            let base = resolve_endpoint(o.endpoint.as_deref(), o.endpoint_env.as_deref(), HTTP)?;
            Some((
                what(&base),
                Probe::OpenAi {
                    base,
                    api_key_env: o.api_key_env.clone(),
                    model: o.model.clone(),
                },
            ))
        }
        BackendSettings::Openenv(e) => {
            let base = resolve_endpoint(
                e.endpoint.as_deref(),
                e.endpoint_env.as_deref(),
                crate::config::HTTP_OR_WS,
            )?;
            Some((what(&base), Probe::Env { base }))
        }
        BackendSettings::Python(p) => {
            let path = p
                .python
                .clone()
                .unwrap_or_else(|| crate::backend::python::DEFAULT_PYTHON.to_string());
            Some((
                what(&path),
                Probe::Sandbox(crate::backend::python::sandbox(p)),
            ))
        }
        BackendSettings::Retrieval(r) => {
            let index = r
                .index
                .as_ref()
                .map_or("no index".into(), |i| i.display().to_string());
            Some((what(&index), Probe::Index(r.clone())))
        }
        _ => None,
    })
}

/// Runs one probe: `Err` is a problem, `Ok(Some)` a warning.
async fn run(http: &reqwest::Client, probe: &Probe) -> Result<Option<String>, String> {
    match probe {
        Probe::OpenAi {
            base,
            api_key_env,
            model,
        } => {
            let url = format!("{}/models", base.trim_end_matches('/'));
            let mut request = http.get(&url);
            if let Some(key) = api_key_env.as_deref().and_then(|v| std::env::var(v).ok()) {
                request = request.bearer_auth(key);
            }
            let response = request
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", reach_error(&e)))?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                return Err(format!(
                    "GET {url}: HTTP {}: the server refused the API key{}",
                    status.as_u16(),
                    match api_key_env {
                        Some(var) => format!(" in `{var}` (api_key_env)"),
                        None =>
                            " (none is sent: set api_key_env to the variable holding it)".into(),
                    }
                ));
            }
            if !status.is_success() {
                return Err(format!(
                    "GET {url}: HTTP {}: is the endpoint the API's base URL (for most servers it \
                     ends in /v1)?",
                    status.as_u16()
                ));
            }
            let listed: Vec<String> = match response.json::<Value>().await {
                Ok(body) => body
                    .get("data")
                    .and_then(Value::as_array)
                    .map(|models| {
                        models
                            .iter()
                            .filter_map(|m| m.get("id").and_then(Value::as_str))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            Ok(match model {
                Some(m) if !listed.is_empty() && !listed.contains(m) => Some(format!(
                    "model `{m}` is not among the models the server lists ({}); a server with one \
                     model may answer to any name (llama-server does), others refuse it (vLLM)",
                    listed.join(", ")
                )),
                _ => None,
            })
        }
        Probe::Env { base } => {
            let base = base.trim_end_matches('/');
            let http_base = match base.split_once("://") {
                Some(("ws", rest)) => format!("http://{rest}"),
                Some(("wss", rest)) => format!("https://{rest}"),
                _ => base.to_string(),
            };
            let url = format!("{http_base}/health");
            // Any HTTP answer says a server is listening; its sessions are opened per episode.
            http.get(&url)
                .send()
                .await
                .map(|_| None)
                .map_err(|e| format!("GET {url}: {}", reach_error(&e)))
        }
        Probe::Sandbox(sandbox) => {
            const PROBE: &str = "print(\"ok\")";
            let run = sandbox.run(PROBE).await.map_err(|e| e.to_string())?;
            if run.outcome == Outcome::Exited(0) && run.stdout.trim() == "ok" {
                return Ok(None);
            }
            let answer = run.observation();
            Err(format!(
                "the sandbox cannot run `{PROBE}` under this backend's limits (memory_mb, \
                 timeout_ms, max_output_bytes); it answered: {}",
                answer.trim().replace('\n', " | ")
            ))
        }
        Probe::Index(cfg) => {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || RetrievalBackend::new(&cfg).map(drop))
                .await
                .map_err(|e| format!("opening the index panicked: {e}"))?
                .map(|()| None)
        }
    }
}

/// Why a request got no HTTP answer, in the OS's words: reqwest's own text names the URL only,
/// the cause (`Connection refused (os error 111)`) is deeper in its chain.
fn reach_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer in {} s", PROBE_TIMEOUT.as_secs());
    }
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let innermost = cause.to_string();
    if e.is_connect() {
        format!("cannot connect: {innermost}")
    } else {
        crate::error::chain(e)
    }
}
