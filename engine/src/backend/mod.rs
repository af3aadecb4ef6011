//! Backends: what executes the orchestrator's tool calls.
//!
//! A backend takes a batch of requests and answers each one; the [`crate::coalesce::Coalescer`]
//! in front of it forms the batches, collapses duplicates and enforces concurrency. Real backends
//! (OpenAI-compatible servers, the Python sandbox, retrieval, in-process models) come with their
//! issues; [`sim::SimBackend`] is the workload model the benchmarks run on.

pub(crate) mod native;
pub(crate) mod openai;
pub(crate) mod python;
pub(crate) mod retrieval;
pub(crate) mod sandbox;
pub(crate) mod sim;

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;

use crate::config::{BackendConfig, BackendSettings, ModelBackendConfig, SimulationConfig};
use crate::ledger::Ledger;
use tutti_model::runtime::{NativeModels, RuntimeLimits};

/// One call to a backend: the chosen model is asked to do `tool` on `prompt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub tool: Arc<str>,
    /// The backend's model name (what an OpenAI-compatible server calls `model`).
    pub model: Arc<str>,
    pub prompt: String,
    pub max_tokens: u32,
    pub temperature: f64,
}

impl Request {
    /// The cache and single-flight key: a 128-bit hash of the backend and the canonical request
    /// (every field). 16 bytes instead of the whole prompt keep the cache small and lookups cheap;
    /// at 2^-64 odds of any collision among four billion entries, equality of hashes stands in for
    /// equality of requests.
    pub fn key(&self, backend: &str) -> CacheKey {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [
            backend.as_bytes(),
            self.tool.as_bytes(),
            self.model.as_bytes(),
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&self.max_tokens.to_le_bytes());
        h.update(&self.temperature.to_bits().to_le_bytes());
        h.update(self.prompt.as_bytes());
        CacheKey(h.digest128())
    }
}

/// Identifies a request to a backend for the cache and for single-flight; see [`Request::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub u128);

/// A backend's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub text: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Seconds billed by backends priced per second (the code interpreter).
    pub billed_seconds: f64,
}

/// Why a call failed. Cloned to every caller that joined the call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("backend `{backend}` timed out")]
    Timeout { backend: String },
    #[error("backend `{backend}` failed: {message}")]
    Failed { backend: String, message: String },
    /// Not tried: the backend's circuit breaker is open after repeated failures.
    #[error("backend `{backend}` is unavailable: its circuit breaker is open")]
    Unavailable { backend: String },
    /// Not made, or abandoned: the job was cancelled.
    #[error("the call was abandoned: the job was cancelled")]
    Cancelled,
}

/// One answer of a batch: the request's index in the batch and its result.
pub type BatchItem = (usize, Result<Response, BackendError>);

/// Something that executes calls in batches.
pub trait Backend: Send + Sync + 'static {
    /// Answers every request of the batch, each as soon as it is done: a backend that sends the
    /// batch as concurrent requests (chat completions) yields them one by one, one that sends a
    /// single batched request (a completions call with a list of prompts) yields them together.
    /// Every index must be answered once; the coalescer fails any the stream leaves out.
    fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem>;

    /// Whether the answer is a function of the request alone, so that the `deterministic` cache
    /// policy may cache it and identical in-flight calls may share one answer.
    fn deterministic(&self, request: &Request) -> bool {
        request.temperature == 0.0
    }
}

/// Why a backend could not be built from its config.
#[derive(Debug, thiserror::Error)]
#[error("backend `{name}`: {message}")]
pub struct BuildError {
    pub name: String,
    pub message: String,
}

/// Builds the backends of kinds whose runtime the engine does not carry itself. `vllm-rs` drives
/// vllm-rs's engine in-process through Python, and only a process that hosts an interpreter has
/// one: the Python module (`bindings/python`) implements this and passes it in
/// [`EngineOptions::host`](crate::EngineOptions::host).
pub trait HostBackends: Send + Sync {
    /// The backend of the `vllm-rs` entry `name`, or why it cannot run here (no GPU, vllm-rs
    /// not installed, the model does not load): refused at start-up, before any task runs.
    fn vllm_rs(&self, name: &str, config: &ModelBackendConfig) -> Result<Arc<dyn Backend>, String>;
}

/// Where in-process models come from: `native` backends load theirs here; hosted kinds
/// (`vllm-rs`) are built by the host, when there is one.
pub(crate) struct NativeSource<'a> {
    pub models: &'a mut NativeModels,
    pub limits: RuntimeLimits,
    pub host: Option<&'a dyn HostBackends>,
}

/// Builds the backend a config entry describes; `index` is its number in the ledger.
pub(crate) fn build(
    cfg: &BackendConfig,
    sim: &SimulationConfig,
    ledger: Arc<Ledger>,
    index: usize,
    native: NativeSource<'_>,
) -> Result<Arc<dyn Backend>, BuildError> {
    let err = |message: String| BuildError {
        name: cfg.name.clone(),
        message,
    };
    match &cfg.settings {
        BackendSettings::Sim(s) => Ok(Arc::new(sim::SimBackend::new(&cfg.name, s, sim))),
        BackendSettings::Openai(o) => Ok(Arc::new(
            openai::OpenAiBackend::new(&cfg.name, o, ledger, index).map_err(err)?,
        )),
        BackendSettings::Python(p) => Ok(Arc::new(python::PythonBackend::new(&cfg.name, p))),
        BackendSettings::Native(m) => {
            let path = m.model.as_deref().ok_or_else(|| {
                err("a `native` backend needs `model`, the path of a GGUF file".into())
            })?;
            let runtime = native
                .models
                .get(std::path::Path::new(path), native.limits)
                .map_err(|e| err(e.to_string()))?;
            Ok(Arc::new(
                self::native::NativeBackend::new(&cfg.name, m, runtime, sim.seed).map_err(err)?,
            ))
        }
        BackendSettings::Retrieval(r) => {
            Ok(Arc::new(retrieval::RetrievalBackend::new(r).map_err(err)?))
        }
        // An environment is called through its sessions (`crate::environment`), never through a
        // coalescer: no alias may name it (validated), so this backend only keeps the indices of
        // the backends aligned.
        BackendSettings::Openenv(_) => Ok(Arc::new(SessionsOnly)),
        BackendSettings::VllmRs(m) => match native.host {
            Some(host) => host.vllm_rs(&cfg.name, m).map_err(err),
            None => Err(err(
                "kind `vllm-rs` runs vllm-rs's engine in-process through Python, and this \
                 process hosts no Python interpreter: run this config from the Python module \
                 (`pip install ./bindings/python`, then `tutti.Engine(config).run(tasks)`), or \
                 serve the model with `vllm serve` and use kind `openai`"
                    .into(),
            )),
        },
    }
}

/// The coalescer's view of an `openenv` backend, which is only reached through its sessions.
struct SessionsOnly;

impl Backend for SessionsOnly {
    fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem> {
        let n = requests.len();
        futures::stream::iter((0..n).map(|i| {
            (
                i,
                Err(BackendError::Failed {
                    backend: "openenv".into(),
                    message: "an environment is called through its episode's session".into(),
                }),
            )
        }))
        .boxed()
    }
}
