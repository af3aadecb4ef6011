//! SIMULATION. The `sim` executor: a workload model of an orchestrator, for benchmarks.
//!
//! It is a real [`StepRunner`] on the real continuous-batching scheduler; only the model is
//! modelled. A step costs `base_ms + per_seq_ms * batch size + per_prefill_token_ms * prefill
//! tokens` (times the simulation's `time_scale`); a turn decodes a number of tokens drawn from the
//! configured distribution; its tool call is drawn by the policy head from a softmax over the
//! catalog, shaped by the task's preference and remaining budget. Every draw is seeded by the
//! episode's context, so equal contexts make equal decisions, like a model decoding greedily.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Decision, ExecError, Executor, TurnView};
use crate::backend::sim::LogNormalDist;
use crate::catalog::{Catalog, Preference};
use crate::config::{Config, SimExecutorConfig};
use crate::policy;
use crate::task::stable_hash;
use crate::task::Action;
use tutti_model::scheduler::{
    self, BatchLimits, SchedulerHandle, SchedulerStats, StepItem, StepRunner,
};

/// Sleeps shorter than this are deferred and summed, since the OS cannot sleep that precisely.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// What an episode hands the sim runner for a turn.
pub(crate) struct SimInput {
    pub context_hash: u64,
    pub new_tokens: usize,
    pub prompt_tokens: u64,
    pub turn: u32,
    pub remaining_usd: f64,
    pub preference: Arc<Preference>,
}

pub(crate) struct SimSeq {
    decode_left: u64,
    output: Option<Decision>,
}

pub(crate) struct SimRunner {
    catalog: Arc<Catalog>,
    cfg: SimExecutorConfig,
    seed: u64,
    time_scale: f64,
    output_tokens: LogNormalDist,
    /// Base score of each tool, indexed like the catalog's tools.
    tool_scores: Vec<f32>,
    /// The Hermes text of each catalog action, rendered once.
    calls: Vec<String>,
    /// When the simulated work so far would be done.
    clock: Option<Instant>,
    scores: Vec<f32>,
    tools: Vec<f32>,
}

impl SimRunner {
    pub(crate) fn new(cfg: &Config, catalog: Arc<Catalog>) -> SimRunner {
        let sim = cfg
            .orchestrator
            .sim
            .clone()
            .expect("validated: sim executor has [orchestrator.sim]");
        let tool_scores = catalog
            .tools
            .iter()
            .map(|t| sim.tool_logits.get(&*t.name).copied().unwrap_or(0.0) as f32)
            .collect();
        let calls = catalog
            .actions
            .iter()
            .map(|a| {
                Action {
                    tool: a.tool_name.to_string(),
                    alias: a.alias.to_string(),
                }
                .to_hermes()
            })
            .collect();
        SimRunner {
            calls,
            output_tokens: LogNormalDist::new(sim.output_tokens),
            catalog,
            seed: cfg.simulation.seed,
            time_scale: cfg.simulation.time_scale,
            cfg: sim,
            tool_scores,
            clock: None,
            scores: Vec::new(),
            tools: Vec::new(),
        }
    }

    fn decide(&mut self, input: &SimInput) -> Decision {
        let mut rng = SmallRng::seed_from_u64(stable_hash(
            self.seed,
            &[&input.context_hash.to_le_bytes(), &input.turn.to_le_bytes()],
        ));
        let tokens = (self.output_tokens.sample(&mut rng).round() as u64).max(1);
        self.tools.clear();
        self.tools.extend_from_slice(&self.tool_scores);
        self.tools[self.catalog.answer()] +=
            self.cfg.answer_logit_per_turn as f32 * input.turn as f32;
        policy::shape_scores(
            &self.catalog,
            &self.tools,
            &input.preference,
            input.remaining_usd,
            &mut self.scores,
        );
        let call = &self.calls[policy::choose(&self.catalog, &mut self.scores, rng.random())];
        let text = if rng.random::<f64>() < self.cfg.malformed_rate {
            // A call cut off mid-JSON, as a model that runs out of tokens emits.
            format!("{}</tool_call>", &call[..call.len() / 2])
        } else {
            call.clone()
        };
        Decision {
            text,
            prompt_tokens: input.prompt_tokens,
            completion_tokens: tokens,
        }
    }

    /// Advances the simulated clock by one step and sleeps once the debt is worth a sleep.
    fn spend(&mut self, ms: f64) {
        let ms = ms * self.time_scale;
        if ms <= 0.0 {
            return;
        }
        let now = Instant::now();
        let clock = self.clock.map_or(now, |c| c.max(now)) + Duration::from_secs_f64(ms / 1000.0);
        self.clock = Some(clock);
        if clock > now + MIN_SLEEP {
            std::thread::sleep(clock - now);
        }
    }
}

impl StepRunner for SimRunner {
    type Seq = SimSeq;
    type Input = SimInput;
    type Output = Decision;

    fn new_seq(&mut self) -> SimSeq {
        SimSeq {
            decode_left: 0,
            output: None,
        }
    }

    fn begin_turn(&mut self, seq: &mut SimSeq, input: SimInput) -> usize {
        let d = self.decide(&input);
        seq.decode_left = d.completion_tokens;
        seq.output = Some(d);
        input.new_tokens
    }

    fn step(&mut self, items: &mut [StepItem<'_, SimSeq>], finished: &mut Vec<(usize, Decision)>) {
        let prefill: usize = items.iter().map(|i| i.prefill).sum();
        self.spend(
            self.cfg.base_ms
                + self.cfg.per_seq_ms * items.len() as f64
                + self.cfg.per_prefill_token_ms * prefill as f64,
        );
        for (i, item) in items.iter_mut().enumerate() {
            if item.decode {
                item.seq.decode_left = item.seq.decode_left.saturating_sub(1);
                if item.seq.decode_left == 0 {
                    finished.push((i, item.seq.output.take().expect("set by begin_turn")));
                }
            }
        }
    }
}

/// The sim executor: a [`SimRunner`] behind the continuous-batching scheduler.
pub(crate) struct SimExecutor {
    handle: SchedulerHandle<SimRunner>,
    _thread: JoinHandle<SimRunner>,
}

impl SimExecutor {
    pub(crate) fn start(cfg: &Config, catalog: Arc<Catalog>) -> SimExecutor {
        let limits = BatchLimits {
            max_seqs: cfg.orchestrator.max_seqs,
            max_batched_tokens: cfg.orchestrator.max_batched_tokens,
        };
        let (handle, thread) = scheduler::spawn(SimRunner::new(cfg, catalog), limits);
        SimExecutor {
            handle,
            _thread: thread,
        }
    }
}

impl Executor for SimExecutor {
    fn open(&self) -> u64 {
        self.handle.open()
    }

    fn decide<'a>(
        &'a self,
        seq: u64,
        view: TurnView<'a>,
    ) -> BoxFuture<'a, Result<Decision, ExecError>> {
        let new_tokens: u64 = view.messages[view.new_from..]
            .iter()
            .map(|m| m.tokens as u64)
            .sum();
        let prompt_tokens: u64 = view.messages.iter().map(|m| m.tokens as u64).sum();
        let input = SimInput {
            context_hash: view.context_hash,
            new_tokens: new_tokens as usize,
            prompt_tokens,
            turn: view.turn,
            remaining_usd: view.remaining_usd,
            preference: view.preference.clone(),
        };
        Box::pin(async move {
            self.handle
                .turn(seq, input)
                .await
                .map_err(ExecError::Scheduler)
        })
    }

    fn release(&self, seq: u64) {
        self.handle.release(seq);
    }

    fn scheduler_stats(&self) -> Option<&SchedulerStats> {
        Some(self.handle.stats())
    }
}
