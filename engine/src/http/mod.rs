//! The HTTP side of a running engine: `GET /metrics` (Prometheus), `GET /` (the live job page) and
//! `GET /api/jobs` (what the page shows, as JSON).
//!
//! It only reads: nothing here starts, changes or cancels a job (that is the Flight service's
//! job, behind its token). What it shows (job ids and names, counts, dollars, task error
//! messages) is readable by anyone who can reach the address, so bind it to loopback or to a
//! network that may see those.

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::{JobProgress, JobSource, Metrics, CONTENT_TYPE};
use crate::Engine;

/// The live page: one self-contained file (no CDN), polling `/api/jobs`.
const PAGE: &str = include_str!("page.html");

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct Observer {
    engine: Arc<Engine>,
    jobs: Arc<dyn JobSource>,
    metrics: Arc<Metrics>,
}

/// The body of `GET /api/jobs`.
#[derive(Debug, Serialize)]
struct Snapshot {
    /// Milliseconds since the Unix epoch, when the snapshot was taken.
    now_ms: u64,
    engine: EngineSnapshot,
    jobs: Vec<JobProgress>,
}

/// The engine-wide counters the page shows above the jobs.
#[derive(Debug, Serialize)]
struct EngineSnapshot {
    live_tasks: usize,
    finished_tasks: u64,
    turns: u64,
    orchestrator_tokens: u64,
    billed_calls: u64,
    cache_hits: u64,
    joined_calls: u64,
    cost_usd: f64,
    saved_usd: f64,
}

impl Observer {
    pub fn new(engine: Arc<Engine>, jobs: Arc<dyn JobSource>) -> Observer {
        let metrics = Arc::new(Metrics::new(engine.clone(), jobs.clone()));
        Observer {
            engine,
            jobs,
            metrics,
        }
    }

    /// The routes: `/metrics`, `/` and `/api/jobs`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/", get(page))
            .route("/api/jobs", get(jobs))
            .with_state(self.clone())
    }

    /// Serves the routes on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    fn snapshot(&self) -> Snapshot {
        let l = self.engine.ledger();
        Snapshot {
            now_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            engine: EngineSnapshot {
                live_tasks: self.engine.live_tasks(),
                finished_tasks: l.tasks.values().sum(),
                turns: l.turns,
                orchestrator_tokens: l.orchestrator_tokens,
                billed_calls: l.billed_calls,
                cache_hits: l.cache_hits,
                joined_calls: l.joined_calls,
                cost_usd: l.cost_usd,
                saved_usd: l.saved_usd,
            },
            jobs: self.jobs.jobs(),
        }
    }
}

async fn metrics(State(o): State<Observer>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], o.metrics.render())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn jobs(State(o): State<Observer>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Json(o.snapshot()))
}
