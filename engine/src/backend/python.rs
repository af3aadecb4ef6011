//! The `python` backend: the code interpreter. Each call's prompt is what the chosen model wrote;
//! the code in it (the last fenced block, or the whole text when there is none) runs in the
//! [`Sandbox`](super::sandbox::Sandbox), and the observation is its output. Billed per second of
//! wall time, as ToolOrchestra bills its interpreter.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered, StreamExt};

use super::sandbox::{Sandbox, SandboxLimits};
use super::{Backend, BackendError, BatchItem, Request, Response};
use crate::config::PythonBackendConfig;

/// The interpreter used when the config names none. An absolute path: the sandbox runs with an
/// empty environment, as another user.
pub(crate) const DEFAULT_PYTHON: &str = "/usr/bin/python3";

pub(crate) struct PythonBackend {
    name: String,
    sandbox: Arc<Sandbox>,
}

impl PythonBackend {
    pub(crate) fn new(name: &str, cfg: &PythonBackendConfig) -> PythonBackend {
        PythonBackend {
            name: name.to_string(),
            sandbox: Arc::new(sandbox(cfg)),
        }
    }
}

/// The sandbox a `python` backend runs its calls in: its interpreter under its limits. The
/// pre-flight runs a probe in the same one.
pub(crate) fn sandbox(cfg: &PythonBackendConfig) -> Sandbox {
    let timeout = Duration::from_millis(cfg.timeout_ms.unwrap_or(60_000));
    let limits = SandboxLimits {
        timeout,
        cpu_seconds: timeout.as_secs().max(1),
        memory_bytes: cfg.memory_mb << 20,
        max_output_bytes: cfg.max_output_bytes,
        ..SandboxLimits::default()
    };
    let python = cfg
        .python
        .clone()
        .unwrap_or_else(|| DEFAULT_PYTHON.to_string());
    Sandbox::new(python, limits)
}

/// The code in a model's reply: the last ```python (or bare ```) fenced block, else the whole text
/// without surrounding whitespace (a one-line reply often starts with a space).
pub(crate) fn extract_code(text: &str) -> &str {
    let mut code = None;
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(after.len(), |i| i + 1);
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                code = Some(&body[..end]);
                rest = &body[end + 3..];
            }
            None => break,
        }
    }
    match code {
        Some(code) => code.trim_matches('\n'),
        None => text.trim(),
    }
}

impl Backend for PythonBackend {
    fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem> {
        requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let sandbox = self.sandbox.clone();
                let name = self.name.clone();
                async move {
                    let result = match sandbox.run(extract_code(&r.prompt)).await {
                        Ok(run) => {
                            let text = run.observation();
                            Ok(Response {
                                output_tokens: (text.len() as u64).div_ceil(4),
                                text,
                                input_tokens: 0,
                                billed_seconds: run.wall.as_secs_f64(),
                            })
                        }
                        Err(e) => Err(BackendError::Failed {
                            backend: name,
                            message: e.to_string(),
                        }),
                    };
                    (i, result)
                }
            })
            .collect::<FuturesUnordered<_>>()
            .boxed()
    }

    /// Programs may read the clock or draw random numbers: never cached unless the policy is
    /// `always`.
    fn deterministic(&self, _request: &Request) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_last_fenced_block() {
        assert_eq!(extract_code("print(1)"), "print(1)");
        let text =
            "Let me compute.\n```python\nx = 2\nprint(x * 3)\n```\nand\n```\nprint(7)\n```\n";
        assert_eq!(extract_code(text), "print(7)");
        assert_eq!(extract_code("```py\nprint(5)\n```"), "print(5)");
        assert_eq!(extract_code("```python\nprint(1)"), "```python\nprint(1)");
    }
}
