//! Test fixtures shared by the engine's unit tests: a scripted orchestrator and a small
//! simulated config.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;

use crate::config::Config;
use crate::executor::{Decision, ExecError, Executor, TurnView};

/// An orchestrator that writes the same scripted reply at each turn of every task; the turn
/// after the script's end writes nothing usable, a reply `FAIL` fails the turn, and the task
/// with id `panic` panics. It counts the turns in progress at once.
pub(crate) struct Scripted {
    replies: Vec<String>,
    /// Turns being decided now, and the most ever at once.
    pub(crate) live: AtomicUsize,
    pub(crate) most_live: AtomicUsize,
}

impl Scripted {
    pub(crate) fn new(replies: &[String]) -> Scripted {
        Scripted {
            replies: replies.to_vec(),
            live: AtomicUsize::new(0),
            most_live: AtomicUsize::new(0),
        }
    }
}

impl Executor for Scripted {
    fn open(&self) -> u64 {
        0
    }
    fn decide<'a>(
        &'a self,
        _seq: u64,
        view: TurnView<'a>,
    ) -> BoxFuture<'a, Result<Decision, ExecError>> {
        let text = self
            .replies
            .get(view.turn as usize)
            .cloned()
            .unwrap_or_default();
        let panics = view.task.id == "panic";
        Box::pin(async move {
            let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_live.fetch_max(live, Ordering::SeqCst);
            // A turn takes a (simulated) moment, so other episodes' turns overlap it.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            self.live.fetch_sub(1, Ordering::SeqCst);
            assert!(!panics, "a scripted panic");
            if text == "FAIL" {
                return Err(ExecError::Invalid("the model server went away".into()));
            }
            Ok(Decision {
                text,
                prompt_tokens: 10,
                completion_tokens: 5,
            })
        })
    }
    fn release(&self, _seq: u64) {}
}

/// Two tools on one simulated backend, and a second answering backend that costs $1 a call.
pub(crate) fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[orchestrator]
executor = "sim"
max_turns = 4
max_malformed_calls = 2
{extra}
[orchestrator.sim]
output_tokens = {{ p50 = 10, p99 = 10 }}

[simulation]
time_scale = 0.0

[[tools]]
name = "answer"
aliases = ["a-1", "a-dear"]

[[tools]]
name = "search"
aliases = ["s-1"]

[aliases]
a-1 = "m"
a-dear = "dear"
s-1 = "m"

[[backends]]
name = "m"
kind = "sim"
[backends.sim]
latency_ms = {{ p50 = 1, p99 = 2 }}
output_tokens = {{ p50 = 5, p99 = 9 }}

[[backends]]
name = "dear"
kind = "sim"
price_per_call = 1.0
[backends.sim]
latency_ms = {{ p50 = 1, p99 = 2 }}
output_tokens = {{ p50 = 5, p99 = 9 }}
"#
    );
    Config::parse(&text, "episode-test.toml").unwrap()
}
