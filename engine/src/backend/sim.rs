//! SIMULATION. A simulated backend: a workload model for benchmarks, never a stand-in for a real
//! part in a test.
//!
//! Each call's latency is drawn from a lognormal given by p50/p99 (per tool where the config says
//! so), its output length likewise, and an `answer` is right with the model's accuracy. Every draw
//! is seeded by (seed, request), so a repeated request gets a repeated answer, as from a model at
//! temperature 0. The model can "solve" the one kind of problem the benchmark workload asks: a
//! single `A op B` arithmetic expression.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

use super::{Backend, BatchItem, Request, Response};
use crate::config::{Dist, SimBackendSettings, SimulationConfig};
use crate::task::stable_hash;

/// A lognormal given by its median and 99th percentile; a constant when they are equal. Draws
/// are capped at [`TAIL_CAP`] times the 99th percentile: a wide distribution's tail would
/// otherwise reach infinity, and no duration holds that.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogNormalDist {
    p50: f64,
    max: f64,
    dist: Option<LogNormal<f64>>,
}

/// How far beyond the 99th percentile a draw may go.
const TAIL_CAP: f64 = 1000.0;

/// z-score of the 99th percentile of a standard normal.
const Z99: f64 = 2.326_347_874;

impl LogNormalDist {
    pub(crate) fn new(d: Dist) -> LogNormalDist {
        let sigma = (d.p99.ln() - d.p50.ln()) / Z99;
        let dist = (sigma > 0.0).then(|| LogNormal::new(d.p50.ln(), sigma).expect("validated"));
        LogNormalDist {
            p50: d.p50,
            max: d.p99 * TAIL_CAP,
            dist,
        }
    }

    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        self.dist.map_or(self.p50, |d| d.sample(rng).min(self.max))
    }
}

pub(crate) struct SimBackend {
    name: String,
    seed: u64,
    time_scale: f64,
    latency: LogNormalDist,
    tool_latency: HashMap<String, LogNormalDist>,
    output_tokens: LogNormalDist,
    accuracy: f64,
}

impl SimBackend {
    pub(crate) fn new(name: &str, cfg: &SimBackendSettings, sim: &SimulationConfig) -> SimBackend {
        let s = &cfg.sim;
        SimBackend {
            name: name.to_string(),
            seed: sim.seed,
            time_scale: sim.time_scale,
            latency: LogNormalDist::new(s.latency_ms),
            tool_latency: s
                .tool_latency_ms
                .iter()
                .map(|(t, d)| (t.clone(), LogNormalDist::new(*d)))
                .collect(),
            output_tokens: LogNormalDist::new(s.output_tokens),
            accuracy: s.accuracy,
        }
    }

    /// The answer to one request and its simulated latency in milliseconds (before time_scale).
    fn answer(&self, req: &Request) -> (Response, f64) {
        let h = stable_hash(
            self.seed,
            &[
                self.name.as_bytes(),
                req.tool.as_bytes(),
                req.prompt.as_bytes(),
            ],
        );
        let mut rng = SmallRng::seed_from_u64(h);
        let latency = self
            .tool_latency
            .get(&*req.tool)
            .unwrap_or(&self.latency)
            .sample(&mut rng);
        let output_tokens = (self.output_tokens.sample(&mut rng).round() as u64)
            .clamp(1, req.max_tokens.max(1) as u64);
        let text = match &*req.tool {
            "answer" => {
                let right = rng.random::<f64>() < self.accuracy;
                match solve(&req.prompt) {
                    Some(v) if right => v.to_string(),
                    Some(v) => (v + rng.random_range(1..10)).to_string(),
                    None => "I cannot tell.".to_string(),
                }
            }
            "search" => format!("Documents: [simulated passage {h:016x} from {}]", req.model),
            tool => format!("[simulated {tool} output {h:016x} from {}]", req.model),
        };
        let response = Response {
            text,
            input_tokens: (req.prompt.len() as u64).div_ceil(4),
            output_tokens,
            billed_seconds: latency / 1000.0,
        };
        (response, latency)
    }
}

impl Backend for SimBackend {
    /// The requests of a batch are served concurrently, each done after its own latency.
    fn call_batch(&self, requests: Vec<Request>) -> BoxStream<'static, BatchItem> {
        let scale = self.time_scale;
        let answers: Vec<(Response, f64)> = requests.iter().map(|r| self.answer(r)).collect();
        if scale <= 0.0 {
            let items = answers
                .into_iter()
                .enumerate()
                .map(|(i, (resp, _))| (i, Ok(resp)));
            return futures::stream::iter(items).boxed();
        }
        answers
            .into_iter()
            .enumerate()
            .map(|(i, (resp, ms))| async move {
                tokio::time::sleep(Duration::from_secs_f64(ms * scale / 1000.0)).await;
                (i, Ok(resp))
            })
            .collect::<FuturesUnordered<_>>()
            .boxed()
    }
}

/// Evaluates the first `A op B` (integers, op one of + - *) in the first line of a text (where
/// the problem is).
pub(crate) fn solve(text: &str) -> Option<i64> {
    let words: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_digit() && !"+-*".contains(c)))
        .collect();
    words.windows(3).find_map(|w| {
        let a: i64 = w[0].parse().ok()?;
        let b: i64 = w[2].parse().ok()?;
        match w[1] {
            "+" => a.checked_add(b),
            "-" => a.checked_sub(b),
            "*" => a.checked_mul(b),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_the_workload_arithmetic() {
        assert_eq!(solve("Problem: What is 17 * 23?"), Some(391));
        assert_eq!(solve("What is 5 - 9?"), Some(-4));
        assert_eq!(solve("no numbers here"), None);
    }

    #[test]
    fn lognormal_matches_its_quantiles() {
        let d = LogNormalDist::new(Dist {
            p50: 100.0,
            p99: 1000.0,
        });
        let mut rng = SmallRng::seed_from_u64(1);
        let mut xs: Vec<f64> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        xs.sort_by(f64::total_cmp);
        let p50 = xs[10_000];
        let p99 = xs[19_800];
        assert!((p50 / 100.0 - 1.0).abs() < 0.05, "p50 {p50}");
        assert!((p99 / 1000.0 - 1.0).abs() < 0.15, "p99 {p99}");
        let fixed = LogNormalDist::new(Dist { p50: 7.0, p99: 7.0 });
        assert_eq!(fixed.sample(&mut rng), 7.0);
    }
}
