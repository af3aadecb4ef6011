//! The figures of a run, in one shape for `tutti run`, `tutti bench` and a served job's
//! `job-stats`: a [`Tally`] of result rows as they are committed, and the [`Report`] made from it
//! (text lines and JSON).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::task::{Status, TaskResult};

/// Task latencies are recorded from 1 ms to a day, to 3 significant figures.
const LATENCY_MAX_MS: u64 = 86_400_000;
/// Distinct failure messages kept; the rest are counted under one line.
const FAILURE_KINDS: usize = 64;

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Calls, tokens and dollars of one alias or backend.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CallTally {
    pub calls: u64,
    /// Calls served from the cache or by joining an identical call in flight ($0 here).
    pub cached: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Running totals over result rows.
#[derive(Debug, Clone)]
pub struct Tally {
    tasks: u64,
    statuses: BTreeMap<String, u64>,
    turns: u64,
    graded: u64,
    correct: u64,
    rewarded: u64,
    reward_sum: f64,
    latency: Histogram<u64>,
    orchestrator_tokens: u64,
    cost_usd: f64,
    orchestrator_cost_usd: f64,
    aliases: BTreeMap<String, CallTally>,
    backends: BTreeMap<String, CallTally>,
    failures: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            tasks: 0,
            statuses: BTreeMap::new(),
            turns: 0,
            graded: 0,
            correct: 0,
            rewarded: 0,
            reward_sum: 0.0,
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_MS, 3).expect("valid bounds"),
            orchestrator_tokens: 0,
            cost_usd: 0.0,
            orchestrator_cost_usd: 0.0,
            aliases: BTreeMap::new(),
            backends: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }
}

impl Tally {
    /// Counts one result row.
    pub fn add(&mut self, r: &TaskResult) {
        self.tasks += 1;
        *self
            .statuses
            .entry(r.status.as_str().to_string())
            .or_default() += 1;
        self.turns += r.turns.max(0) as u64;
        if let Some(c) = r.correct {
            self.graded += 1;
            self.correct += u64::from(c);
        }
        if let Some(reward) = r.reward {
            self.rewarded += 1;
            self.reward_sum += reward;
        }
        self.latency
            .saturating_record(r.latency_ms.clamp(1, LATENCY_MAX_MS as i64) as u64);
        self.orchestrator_tokens += r.orchestrator_tokens.max(0) as u64;
        self.cost_usd += r.cost_usd;
        self.orchestrator_cost_usd += r.orchestrator_cost_usd;
        for c in &r.calls {
            for (map, key) in [
                (&mut self.aliases, &c.alias),
                (&mut self.backends, &c.backend),
            ] {
                let t = map.entry(key.to_string()).or_default();
                t.calls += 1;
                t.cached += u64::from(c.cached);
                t.input_tokens += c.input_tokens.max(0) as u64;
                t.output_tokens += c.output_tokens.max(0) as u64;
                t.cost_usd += c.cost_usd;
            }
        }
        if r.status == Status::Failed {
            let why = r.error.as_deref().unwrap_or("no reason recorded");
            let kinds = self.failures.len();
            match self.failures.get_mut(why) {
                Some(n) => *n += 1,
                None if kinds < FAILURE_KINDS => {
                    self.failures.insert(why.to_string(), 1);
                }
                None => *self.failures.entry(OTHER_FAILURES.into()).or_default() += 1,
            }
        }
    }

    /// Rows counted.
    pub fn tasks(&self) -> u64 {
        self.tasks
    }

    /// Dollars spent on the rows counted.
    pub fn cost_usd(&self) -> f64 {
        self.cost_usd
    }

    /// Rows counted with `status`.
    pub fn status(&self, status: Status) -> u64 {
        self.statuses.get(status.as_str()).copied().unwrap_or(0)
    }

    /// The failure messages of the failed rows, most frequent first, with their counts.
    pub fn failures(&self) -> Vec<(String, u64)> {
        let mut failures: Vec<(String, u64)> =
            self.failures.iter().map(|(k, v)| (k.clone(), *v)).collect();
        failures.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        failures
    }

    /// The task-latency CDF: (milliseconds, fraction of tasks done within them), one point per
    /// distinct recorded value (3 significant figures), rising to 1.
    pub fn latency_cdf(&self) -> Vec<(f64, f64)> {
        self.latency
            .iter_recorded()
            .map(|v| (v.value_iterated_to() as f64, v.quantile_iterated_to()))
            .collect()
    }

    /// The report of these rows, run in `wall_s` seconds.
    pub fn report(&self, wall_s: f64) -> Report {
        let per_s = |n: u64| if wall_s > 0.0 { n as f64 / wall_s } else { 0.0 };
        let failures = self.failures();
        let calls = |f: fn(&CallTally) -> u64| self.backends.values().map(f).sum::<u64>();
        Report {
            tasks: self.tasks,
            wall_s,
            tasks_per_s: per_s(self.tasks),
            turns_per_s: per_s(self.turns),
            statuses: self.statuses.clone(),
            graded: self.graded,
            correct: self.correct,
            accuracy: (self.graded > 0).then(|| self.correct as f64 / self.graded as f64),
            rewarded: self.rewarded,
            mean_reward: (self.rewarded > 0).then(|| self.reward_sum / self.rewarded as f64),
            task_latency_ms: if self.tasks == 0 {
                Latency::default()
            } else {
                Latency {
                    p50: self.latency.value_at_quantile(0.5),
                    p90: self.latency.value_at_quantile(0.9),
                    p99: self.latency.value_at_quantile(0.99),
                    max: self.latency.max(),
                }
            },
            orchestrator_tokens: self.orchestrator_tokens,
            call_input_tokens: calls(|c| c.input_tokens),
            call_output_tokens: calls(|c| c.output_tokens),
            calls: calls(|c| c.calls),
            cached_calls: calls(|c| c.cached),
            cost_usd: self.cost_usd,
            cost_per_task_usd: if self.tasks == 0 {
                0.0
            } else {
                self.cost_usd / self.tasks as f64
            },
            orchestrator_cost_usd: self.orchestrator_cost_usd,
            aliases: self.aliases.clone(),
            backends: self.backends.clone(),
            failures,
        }
    }
}

/// The failure line under which messages beyond [`FAILURE_KINDS`] distinct ones are counted.
const OTHER_FAILURES: &str = "(other reasons)";

/// What a run did, from its result rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub tasks: u64,
    pub wall_s: f64,
    pub tasks_per_s: f64,
    pub turns_per_s: f64,
    /// Tasks per final status.
    pub statuses: BTreeMap<String, u64>,
    /// Answers graded against a reference (tasks that did not answer are not graded).
    pub graded: u64,
    pub correct: u64,
    /// `correct / graded`; null when nothing was graded.
    pub accuracy: Option<f64>,
    /// Episodes an environment gave a reward, and its mean.
    pub rewarded: u64,
    pub mean_reward: Option<f64>,
    pub task_latency_ms: Latency,
    pub orchestrator_tokens: u64,
    /// Tokens of the calls the orchestrator made (models behind its tools).
    pub call_input_tokens: u64,
    pub call_output_tokens: u64,
    /// Calls made, and of those served by the cache or an identical call in flight.
    pub calls: u64,
    pub cached_calls: u64,
    pub cost_usd: f64,
    pub cost_per_task_usd: f64,
    /// The orchestrator's own tokens' share of `cost_usd`.
    pub orchestrator_cost_usd: f64,
    /// Calls, tokens and dollars per alias and per backend.
    pub aliases: BTreeMap<String, CallTally>,
    pub backends: BTreeMap<String, CallTally>,
    /// Why tasks failed: each distinct error with its count, the commonest first.
    pub failures: Vec<(String, u64)>,
}

impl Report {
    /// The report as aligned text lines (no trailing newline), for a terminal or a log.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let row = |label: &str, text: String| format!("  {label:<10} {text}");
        lines.push(row(
            "tasks",
            format!(
                "{} in {} ({}/s, {} turns/s)",
                self.tasks,
                seconds(self.wall_s),
                rate(self.tasks_per_s),
                rate(self.turns_per_s)
            ),
        ));
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !statuses.is_empty() {
            lines.push(row("statuses", statuses.join(" · ")));
        }
        lines.push(row(
            "accuracy",
            match self.accuracy {
                Some(a) => format!(
                    "{:.1}% ({} of {} graded answers correct)",
                    100.0 * a,
                    self.correct,
                    self.graded
                ),
                None => {
                    "no answer was graded (none was given, or no task has a `reference`)".into()
                }
            },
        ));
        if let Some(mean) = self.mean_reward {
            lines.push(row(
                "reward",
                format!("mean {mean:.3} over {} rewarded episodes", self.rewarded),
            ));
        }
        let l = self.task_latency_ms;
        lines.push(row(
            "latency",
            format!(
                "p50 {} · p90 {} · p99 {} · max {} per task",
                millis(l.p50),
                millis(l.p90),
                millis(l.p99),
                millis(l.max)
            ),
        ));
        lines.push(row(
            "tokens",
            format!(
                "{} orchestrator; calls {} in, {} out",
                self.orchestrator_tokens, self.call_input_tokens, self.call_output_tokens
            ),
        ));
        lines.push(row(
            "calls",
            format!(
                "{} ({} billed, {} from the cache or joined in flight)",
                self.calls,
                self.calls - self.cached_calls,
                self.cached_calls
            ),
        ));
        let mut spent = vec![format!(
            "orchestrator {}",
            dollars(self.orchestrator_cost_usd)
        )];
        spent.extend(
            self.aliases
                .iter()
                .map(|(alias, t)| format!("{alias} {}", dollars(t.cost_usd))),
        );
        lines.push(row(
            "cost",
            format!(
                "{} ({} per task): {}",
                dollars(self.cost_usd),
                dollars(self.cost_per_task_usd),
                spent.join(" · ")
            ),
        ));
        if self.backends.len() > 1 {
            let per_backend: Vec<String> = self
                .backends
                .iter()
                .map(|(b, t)| format!("{b} {} calls {}", t.calls, dollars(t.cost_usd)))
                .collect();
            lines.push(row("backends", per_backend.join(" · ")));
        }
        for (i, (why, n)) in self.failures.iter().take(3).enumerate() {
            let label = if i == 0 { "failed" } else { "" };
            lines.push(row(label, format!("{n} × {}", shorten(why, 200))));
        }
        if self.failures.len() > 3 {
            let rest: u64 = self.failures[3..].iter().map(|(_, n)| n).sum();
            lines.push(row(
                "",
                format!("{rest} more, for other reasons (the `error` column)"),
            ));
        }
        lines
    }
}

/// A rate with three significant figures at most: `1.95`, `19.5`, `195`.
fn rate(x: f64) -> String {
    if x >= 100.0 || x == 0.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn millis(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{:.0} s", ms as f64 / 1000.0)
    } else if ms >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// Dollars with enough decimals to show small amounts: `$12.35`, `$0.0123`, `$0.000045`.
fn dollars(x: f64) -> String {
    if x == 0.0 {
        "$0".into()
    } else if x.abs() >= 1.0 {
        format!("${x:.2}")
    } else if x.abs() >= 0.01 {
        format!("${x:.4}")
    } else {
        format!("${x:.6}")
    }
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_cdf_rises_to_one_over_the_recorded_latencies() {
        let mut t = Tally::default();
        for ms in [10, 10, 20, 40] {
            t.add(&TaskResult {
                latency_ms: ms,
                ..row("t", Status::Answered, None)
            });
        }
        assert_eq!(t.latency_cdf(), [(10.0, 0.5), (20.0, 0.75), (40.0, 1.0)]);
    }
    use crate::task::CallRecord;

    fn row(id: &str, status: Status, correct: Option<bool>) -> TaskResult {
        TaskResult {
            id: id.into(),
            status,
            answer: None,
            correct,
            turns: 2,
            cost_usd: 0.5,
            latency_ms: 1500,
            orchestrator_tokens: 100,
            orchestrator_cost_usd: 0.1,
            calls: vec![CallRecord {
                tool: "answer".into(),
                alias: "big".into(),
                backend: "server".into(),
                cached: false,
                input_tokens: 10,
                output_tokens: 5,
                cost_usd: 0.4,
                latency_ms: 700,
            }],
            trajectory: None,
            error: (status == Status::Failed).then(|| "backend `server` failed: refused".into()),
            metadata: None,
            reward: None,
            reward_info: None,
        }
    }

    #[test]
    fn accuracy_is_over_graded_answers_and_failures_are_grouped() {
        let mut t = Tally::default();
        t.add(&row("a", Status::Answered, Some(true)));
        t.add(&row("b", Status::Answered, Some(false)));
        t.add(&row("c", Status::Failed, None));
        t.add(&row("d", Status::Failed, None));
        let r = t.report(2.0);
        assert_eq!((r.graded, r.correct, r.accuracy), (2, 1, Some(0.5)));
        assert_eq!(r.tasks_per_s, 2.0);
        assert_eq!(r.turns_per_s, 4.0);
        assert_eq!(
            r.failures,
            vec![("backend `server` failed: refused".to_string(), 2)]
        );
        assert_eq!(r.aliases["big"].calls, 4);
        assert!((r.aliases["big"].cost_usd - 1.6).abs() < 1e-9);
        assert!((r.orchestrator_cost_usd - 0.4).abs() < 1e-9);
        let text = r.lines().join("\n");
        assert!(
            text.contains("50.0% (1 of 2 graded answers correct)"),
            "{text}"
        );
        assert!(
            text.contains("2 × backend `server` failed: refused"),
            "{text}"
        );
        assert!(text.contains("answered 2 · failed 2"), "{text}");
    }

    #[test]
    fn an_empty_run_reports_without_dividing_by_zero() {
        let r = Tally::default().report(0.0);
        assert_eq!(r.accuracy, None);
        assert_eq!(r.tasks_per_s, 0.0);
        assert!(r.lines().join("\n").contains("no answer was graded"));
    }
}
