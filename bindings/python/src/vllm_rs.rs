//! The host of `vllm-rs` backends: vllm-rs's engine (PyPI `vllm_rs`, itself Rust behind pyo3)
//! loaded in this process's Python interpreter, one batched generate call per coalesced batch.
//!
//! What touches vllm-rs's Python API lives in `tutti/_vllm_rs.py` (`start`, `generate`), where
//! it reads plainly; this side builds the backend at engine start-up and runs each batch on a
//! blocking thread that takes the GIL.

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use pyo3::prelude::*;
use tutti_engine::config::ModelBackendConfig;
use tutti_engine::{Backend, BackendError, BatchItem, HostBackends, Request, Response};

/// Builds `vllm-rs` backends in this interpreter.
pub(crate) struct Host;

impl HostBackends for Host {
    fn vllm_rs(&self, name: &str, config: &ModelBackendConfig) -> Result<Arc<dyn Backend>, String> {
        let model = config.model.clone().ok_or_else(|| {
            "a `vllm-rs` backend needs `model`: a model directory (safetensors) or a GGUF file"
                .to_string()
        })?;
        Python::attach(|py| {
            let glue = py.import("tutti._vllm_rs")?;
            let engine = glue.getattr("start")?.call1((
                model,
                config.chat_template.clone(),
                config.generation.stop.clone(),
            ))?;
            Ok::<_, PyErr>(VllmRsBackend {
                name: name.to_string(),
                glue: Arc::new(Glue {
                    engine: engine.unbind(),
                    generate: glue.getattr("generate")?.unbind(),
                }),
            })
        })
        .map(|b| Arc::new(b) as Arc<dyn Backend>)
        .map_err(|e| Python::attach(|py| message(py, &e)))
    }
}

/// A Python exception as one line: its own message (the start-up errors of `_vllm_rs.py` are
/// written for the user), or its class and message.
fn message(py: Python<'_>, e: &PyErr) -> String {
    let value = e.value(py);
    let text = value.str().map(|s| s.to_string()).unwrap_or_default();
    if e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) {
        text
    } else {
        let class = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Exception".into());
        format!("{class}: {text}")
    }
}

struct VllmRsBackend {
    name: String,
    glue: Arc<Glue>,
}

/// The Python objects a batch needs (shared without the GIL).
struct Glue {
    /// vllm-rs's engine object.
    engine: Py<PyAny>,
    /// `tutti._vllm_rs.generate(engine, prompts, max_tokens, temperatures)`.
    generate: Py<PyAny>,
}

impl Glue {
    /// One batched generate call for every request; the answers in request order.
    fn run(&self, requests: &[Request]) -> Result<Vec<Response>, String> {
        let (engine, generate) = (&self.engine, &self.generate);
        let prompts: Vec<&str> = requests.iter().map(|r| r.prompt.as_str()).collect();
        let max_tokens: Vec<u32> = requests.iter().map(|r| r.max_tokens).collect();
        let temperatures: Vec<f64> = requests.iter().map(|r| r.temperature).collect();
        Python::attach(|py| {
            let out = generate
                .call1(py, (engine, prompts, max_tokens, temperatures))
                .map_err(|e| message(py, &e))?;
            let answers = out
                .bind(py)
                .extract::<Vec<(String, u64, u64)>>()
                .map_err(|e| message(py, &e))?;
            Ok(answers
                .into_iter()
                .map(|(text, input_tokens, output_tokens)| Response {
                    text,
                    input_tokens,
                    output_tokens,
                    billed_seconds: 0.0,
                })
                .collect())
        })
    }
}

impl Backend for VllmRsBackend {
    fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem> {
        let glue = self.glue.clone();
        let name = self.name.clone();
        let n = requests.len();
        futures::stream::once(async move {
            let ran = tokio::task::spawn_blocking(move || glue.run(&requests))
                .await
                .unwrap_or_else(|e| Err(format!("the generate call panicked: {e}")));
            let items: Vec<BatchItem> = match ran {
                Ok(answers) if answers.len() == n => {
                    answers.into_iter().map(Ok).enumerate().collect()
                }
                Ok(answers) => (0..n)
                    .map(|i| {
                        (
                            i,
                            Err(BackendError::Failed {
                                backend: name.clone(),
                                message: format!(
                                    "vllm-rs answered {} of {n} prompts",
                                    answers.len()
                                ),
                            }),
                        )
                    })
                    .collect(),
                Err(message) => (0..n)
                    .map(|i| {
                        (
                            i,
                            Err(BackendError::Failed {
                                backend: name.clone(),
                                message: message.clone(),
                            }),
                        )
                    })
                    .collect(),
            };
            futures::stream::iter(items)
        })
        .flatten()
        .boxed()
    }
}
