//! The `replay` executor: plays the calls recorded in a task (`replay`: a JSON array of
//! `{"name": …, "arguments": {…}}`) in order, one per turn, through the real backends. For
//! re-scoring a trajectory against a new environment (τ²'s gold actions, a recorded run) and for
//! checking the plumbing without a model in the loop. A turn past the last call fails the episode.

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Decision, ExecError, Executor, TurnView};
use tutti_model::hermes::{self, ToolCall};

/// Reads a task's `replay` column: every entry must be a call object.
pub(crate) fn parse_calls(text: &str) -> Result<Vec<ToolCall>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("must be a JSON array of calls".into());
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(call) => hermes::from_object(call).map_err(|e| format!("call {i}: {e}")),
            _ => Err(format!(
                "call {i}: expected an object {{\"name\": …, \"arguments\": {{…}}}}"
            )),
        })
        .collect()
}

/// Plays each task's recorded calls; holds no state between turns.
pub(crate) struct ReplayExecutor;

impl Executor for ReplayExecutor {
    fn open(&self) -> u64 {
        0
    }

    fn decide<'a>(
        &'a self,
        _seq: u64,
        view: TurnView<'a>,
    ) -> BoxFuture<'a, Result<Decision, ExecError>> {
        let out = (|| {
            let text = view.task.replay.as_deref().ok_or_else(|| {
                ExecError::Invalid(format!("task `{}` has no `replay` calls", view.task.id))
            })?;
            // Validated when the task was read; parsed again per turn, as the executor keeps no
            // state (replays are short).
            let calls = parse_calls(text).map_err(|e| ExecError::Invalid(format!("replay {e}")))?;
            let call = calls.get(view.turn as usize).ok_or_else(|| {
                ExecError::Invalid(format!(
                    "the replay has {} calls and the episode asked for call {}",
                    calls.len(),
                    view.turn + 1
                ))
            })?;
            Ok(Decision {
                text: call.text(),
                prompt_tokens: 0,
                completion_tokens: 0,
            })
        })();
        Box::pin(std::future::ready(out))
    }

    fn release(&self, _seq: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_read_in_order_and_errors_name_the_call() {
        let calls =
            parse_calls(r#"[{"name": "a", "arguments": {"x": 1}}, {"name": "done"}]"#).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "a");
        assert_eq!(
            calls[1].text(),
            r#"<tool_call>{"name": "done", "arguments": {}}</tool_call>"#
        );
        assert_eq!(
            parse_calls("{}").unwrap_err(),
            "must be a JSON array of calls"
        );
        assert!(parse_calls(r#"[{"name": "a"}, 3]"#)
            .unwrap_err()
            .starts_with("call 1: expected an object"));
        assert_eq!(
            parse_calls(r#"[{"arguments": {}}]"#).unwrap_err(),
            "call 0: the tool call has no string field `name`"
        );
    }
}
