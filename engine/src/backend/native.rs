//! The `native` backend: expert calls answered by an in-process GGUF model.
//!
//! It shares the [`NativeRuntime`] of its model file with the native executor (and with other
//! native backends on that file), so its calls join the same continuous batches as the
//! orchestrator's decode steps. Each request is one completion on a fresh sequence: the prompt
//! rendered as a user turn with the chat template, then up to `max_tokens` new tokens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use serde_json::json;

use super::{Backend, BackendError, BatchItem, Request, Response};
use crate::config::ModelBackendConfig;
use tutti_model::head::Sampling;
use tutti_model::runtime::NativeInput;
use tutti_model::runtime::{NativeRuntime, PromptRenderer};

pub(crate) struct NativeBackend {
    name: Arc<str>,
    runtime: Arc<NativeRuntime>,
    prompt: Arc<PromptRenderer>,
    seed: u64,
    /// Calls made so far: each sampled call is a new draw (at temperature 0 the seed is unused).
    draws: AtomicU64,
    /// Texts that end a completion (`stop`).
    stop: Arc<[String]>,
}

impl NativeBackend {
    pub(crate) fn new(
        name: &str,
        cfg: &ModelBackendConfig,
        runtime: Arc<NativeRuntime>,
        seed: u64,
    ) -> Result<Self, String> {
        let prompt = PromptRenderer::new(
            cfg.chat_template.as_deref(),
            runtime.tokenizer(),
            &format!("backend `{name}`"),
        )
        .map_err(|e| e.to_string())?;
        Ok(NativeBackend {
            name: name.into(),
            runtime,
            prompt: Arc::new(prompt),
            seed,
            draws: AtomicU64::new(0),
            stop: cfg.generation.stop.clone().into(),
        })
    }
}

impl Backend for NativeBackend {
    fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem> {
        let calls: FuturesUnordered<_> = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let runtime = self.runtime.clone();
                let prompt = self.prompt.clone();
                let name = self.name.clone();
                let draw = self.draws.fetch_add(1, Ordering::Relaxed);
                let stop = self.stop.clone();
                let seed = self.seed ^ draw.rotate_left(17);
                async move {
                    let failed = |message: String| BackendError::Failed {
                        backend: name.to_string(),
                        message,
                    };
                    let messages = [json!({"role": "user", "content": r.prompt})];
                    let result = match prompt.tokens(runtime.tokenizer(), &messages, 0) {
                        Err(e) => Err(failed(e.to_string())),
                        Ok((tokens, _)) => runtime
                            .complete(NativeInput {
                                tokens,
                                shared_prefix: 0,
                                max_new: r.max_tokens as usize,
                                stop,
                                sampling: Sampling {
                                    temperature: r.temperature,
                                    seed,
                                    ..Sampling::GREEDY
                                },
                                policy: None,
                            })
                            .await
                            .map(|g| Response {
                                text: g.text,
                                input_tokens: g.prompt_tokens,
                                output_tokens: g.completion_tokens,
                                billed_seconds: 0.0,
                            })
                            .map_err(failed),
                    };
                    (i, result)
                }
            })
            .collect();
        calls.boxed()
    }
}
