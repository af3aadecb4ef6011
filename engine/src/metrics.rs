//! Prometheus metrics of an engine and its jobs, in the Prometheus text format (0.0.4).
//!
//! Nothing is counted twice: every figure is read, at scrape time, from the counters the engine
//! already keeps for its reports (the [`Ledger`](crate::Ledger), the scheduler's statistics, the
//! cache, the coalescers' breakers) and from the jobs' own progress. So a scrape after a job has
//! ended shows exactly the job's final ledger, and the hot path pays nothing for the exporter.
//!
//! Names follow the Prometheus conventions: one `tutti_` prefix, base units in the name
//! (`_seconds`, `_usd`), `_total` on counters (added by the encoder), one label per dimension
//! (`status`, `backend`, `alias`, `job`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tutti_model::scheduler::BucketSnapshot;

use crate::{Engine, Status, Tally};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One job as the metrics and the live page show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobProgress {
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `queued`, `running`, `done`, `cancelled`, …
    pub state: String,
    /// Tasks accepted.
    pub tasks: u64,
    /// Results written.
    pub done: u64,
    /// Results written per status.
    pub counts: BTreeMap<String, u64>,
    /// Dollars spent on the results written.
    pub cost_usd: f64,
    /// When the job was created, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The job's own error (storage trouble), if its runner stopped on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The most frequent task errors so far, with how many tasks ended with each.
    pub errors: Vec<(String, u64)>,
}

/// Distinct task errors a job's progress shows.
const ERRORS_SHOWN: usize = 5;

impl JobProgress {
    /// A job's progress from the tally of the rows it has written: `tasks` accepted, of which
    /// `done_before` were written before this tally began (a resumed run's).
    pub fn from_tally(
        job_id: String,
        state: &str,
        tasks: u64,
        done_before: u64,
        tally: &Tally,
        created_ms: u64,
    ) -> JobProgress {
        let mut errors = tally.failures();
        errors.truncate(ERRORS_SHOWN);
        JobProgress {
            job_id,
            name: None,
            state: state.to_string(),
            tasks,
            done: done_before + tally.tasks(),
            counts: Status::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), tally.status(*s)))
                .collect(),
            cost_usd: tally.cost_usd(),
            created_ms,
            error: None,
            errors,
        }
    }
}

/// Where the metrics and the live page read the jobs from: the server's job store, or the one job
/// of `tutti run`.
pub trait JobSource: Send + Sync + 'static {
    fn jobs(&self) -> Vec<JobProgress>;
}

/// The registry of one process: the engine's collector, read at each scrape.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(engine: Arc<Engine>, jobs: Arc<dyn JobSource>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EngineCollector { engine, jobs }));
        Metrics { registry }
    }

    /// The exposition, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

struct EngineCollector {
    engine: Arc<Engine>,
    jobs: Arc<dyn JobSource>,
}

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineCollector")
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let engine = &self.engine;
        // The jobs first: a task's row is committed after the ledger counts it, so counts read
        // in this order never show more rows written than tasks finished.
        let jobs = self.jobs.jobs();
        let ledger = engine.ledger();
        let e = &mut e;

        gauge(
            e,
            "tutti_tasks_live",
            "Episodes running now.",
            engine.live_tasks() as u64,
        )?;
        let statuses: Vec<(&str, u64)> =
            ledger.tasks.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        counters(
            e,
            "tutti_tasks_finished",
            "Tasks ended, by status.",
            "status",
            &statuses,
        )?;
        counter(e, "tutti_turns", "Orchestrator turns taken.", ledger.turns)?;
        counter(
            e,
            "tutti_orchestrator_tokens",
            "Orchestrator tokens (prompt and completion) billed; rate() is tokens per second.",
            ledger.orchestrator_tokens,
        )?;
        counter(
            e,
            "tutti_calls_billed",
            "Backend calls sent and billed.",
            ledger.billed_calls,
        )?;
        counter(
            e,
            "tutti_cache_hits",
            "Calls answered from the result cache.",
            ledger.cache_hits,
        )?;
        counter(
            e,
            "tutti_calls_joined",
            "Calls that joined an identical call in flight (billed once, to its first caller).",
            ledger.joined_calls,
        )?;
        counter(
            e,
            "tutti_calls_failed",
            "Backend calls that failed.",
            ledger.failed_calls,
        )?;
        counter(
            e,
            "tutti_spent_usd",
            "Dollars billed: backend calls and the orchestrator's own tokens.",
            ledger.cost_usd,
        )?;
        counter(
            e,
            "tutti_orchestrator_spent_usd",
            "Dollars billed for the orchestrator's own tokens.",
            ledger.orchestrator_cost_usd,
        )?;
        counter(
            e,
            "tutti_saved_usd",
            "Dollars not billed thanks to the cache and to joined calls.",
            ledger.saved_usd,
        )?;

        let aliases = engine.ledger_ref().aliases();
        let calls: Vec<(&str, u64)> = aliases.iter().map(|(a, s)| (a.as_str(), s.calls)).collect();
        counters(
            e,
            "tutti_alias_calls",
            "Calls made through each alias (cached and joined ones included).",
            "alias",
            &calls,
        )?;
        let spent: Vec<(&str, f64)> = aliases
            .iter()
            .map(|(a, s)| (a.as_str(), s.cost_usd))
            .collect();
        counters(
            e,
            "tutti_alias_spent_usd",
            "Dollars billed for the calls made through each alias.",
            "alias",
            &spent,
        )?;

        let b = &ledger.backends;
        let per_backend = |f: fn(&crate::BackendSummary) -> u64| -> Vec<(&str, u64)> {
            b.iter().map(|x| (x.backend.as_str(), f(x))).collect()
        };
        for (name, help, f) in [
            (
                "tutti_backend_requests",
                "Calls that reached the backend's coalescer (joined ones included).",
                (|x| x.requests) as fn(&crate::BackendSummary) -> u64,
            ),
            (
                "tutti_backend_sent",
                "Requests sent to the backend (failed ones included).",
                |x| x.sent,
            ),
            (
                "tutti_backend_batches",
                "Batches sent to the backend.",
                |x| x.batches,
            ),
            ("tutti_backend_failures", "Requests that failed.", |x| {
                x.failures
            }),
            (
                "tutti_backend_retries",
                "Requests sent again after a retryable failure.",
                |x| x.retries,
            ),
            (
                "tutti_backend_breaker_opens",
                "Times the backend's circuit breaker opened.",
                |x| x.breaker_opens,
            ),
            (
                "tutti_backend_fallbacks",
                "Calls served by the fallback alias while this backend's breaker was open.",
                |x| x.fallbacks,
            ),
        ] {
            counters(e, name, help, "backend", &per_backend(f))?;
        }
        let open: Vec<(&str, u64)> = b
            .iter()
            .zip(engine.breakers_open())
            .map(|(x, open)| (x.backend.as_str(), open as u64))
            .collect();
        gauges(
            e,
            "tutti_backend_breaker_open",
            "1 while the backend's circuit breaker is open, else 0.",
            "backend",
            &open,
        )?;

        if let Some(s) = engine.scheduler_stats() {
            use std::sync::atomic::Ordering::Relaxed;
            histogram(
                e,
                "tutti_decode_batch_size",
                "Sequences in each orchestrator decode step.",
                &s.batch_size.snapshot(),
            )?;
            histogram(
                e,
                "tutti_decode_step_seconds",
                "Time of each orchestrator decode step.",
                &s.step_seconds.snapshot(),
            )?;
            counter(
                e,
                "tutti_decode_tokens",
                "Tokens processed by decode steps (prefill and decode); rate() is tokens per second.",
                s.tokens.load(Relaxed),
            )?;
        }

        let cache = engine.cache_stats();
        gauge(
            e,
            "tutti_cache_entries",
            "Entries in the result cache's memory tier.",
            cache.entries,
        )?;
        gauge(
            e,
            "tutti_cache_bytes",
            "Bytes in the result cache's memory tier.",
            cache.bytes,
        )?;

        let mut states: BTreeMap<&str, u64> = BTreeMap::new();
        for j in &jobs {
            *states.entry(j.state.as_str()).or_default() += 1;
        }
        let states: Vec<(&str, u64)> = states.into_iter().collect();
        gauges(e, "tutti_jobs", "Jobs, by state.", "state", &states)?;
        let per_job = |f: fn(&JobProgress) -> u64| -> Vec<(&str, u64)> {
            jobs.iter().map(|j| (j.job_id.as_str(), f(j))).collect()
        };
        gauges(
            e,
            "tutti_job_tasks",
            "Tasks accepted in each job.",
            "job",
            &per_job(|j| j.tasks),
        )?;
        gauges(
            e,
            "tutti_job_tasks_done",
            "Results written in each job; with tutti_job_tasks, the job's progress.",
            "job",
            &per_job(|j| j.done),
        )?;
        Ok(())
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl EncodeCounterValue + Copy,
) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v as i64).encode(m)
}

/// A counter with one label, one sample per value.
fn counters<V: EncodeCounterValue + Copy>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, V)],
) -> fmt::Result {
    let samples = values.iter().map(|&(l, v)| (l, ConstCounter::new(v)));
    family(e, name, help, label, samples.collect())
}

/// A gauge with one label, one sample per value.
fn gauges<V: EncodeGaugeValue + Copy + fmt::Debug>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, V)],
) -> fmt::Result {
    let samples = values.iter().map(|&(l, v)| (l, ConstGauge::new(v)));
    family(e, name, help, label, samples.collect())
}

/// A metric family with one label. Nothing is written for an empty family (Prometheus would
/// show a family with no samples as a metric that exists but was never set).
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: Vec<(&str, M)>,
) -> fmt::Result {
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let mut m = e.encode_descriptor(name, help, None, first.metric_type())?;
    for (l, metric) in &samples {
        metric.encode(m.encode_family(&[(label, *l)])?)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, s: &BucketSnapshot) -> fmt::Result {
    // The encoder sums the buckets itself: hand it each bucket's own count.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = s
        .cumulative
        .iter()
        .map(|&(bound, cumulative)| {
            let own = cumulative - previous;
            previous = cumulative;
            (bound, own)
        })
        .collect();
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(s.sum, s.count, &buckets, None)
}
