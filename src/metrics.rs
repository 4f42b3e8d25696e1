//! Operations endpoint: `/healthz` and Prometheus `/metrics` over HTTP, and the metrics themselves
//! (tasks by type and outcome, task duration, queue depths, in-flight tasks).
//!
//! `/healthz` answers 200 while the worker's last Redis round trip succeeded recently and every
//! other component it was asked to run (the Docker engine, the embedded DNS server, the HTTP-01
//! responder; probed in the background by `app`) passed its last probe, 503 otherwise, with one
//! line per component saying which one is down. Both listeners go through [`crate::listen`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the task counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub task_type: String,
    pub outcome: String,
}

/// Labels of per-type metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub task_type: String,
}

/// Labels of per-queue gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    /// Finished tasks by type and outcome (completed, failed, retried, cancelled, dead_lettered).
    pub tasks: Family<Outcome, Counter>,
    /// Seconds one attempt took, by type.
    pub duration: Family<TypeLabel, Histogram>,
    /// Tasks waiting per list (sampled).
    pub queue_depth: Family<QueueLabel, Gauge>,
    /// Tasks waiting for a retry (sampled).
    pub delayed: Gauge,
    /// Entries in the dead-letter list (sampled).
    pub dead_lettered: Gauge,
    /// Tasks running in this process.
    pub in_flight: Gauge,
    /// Tasks recovered from dead workers by this process' reaper.
    pub recovered: Counter,
    /// Tasks this process finished for good: completed (duplicates included) and failed
    /// (dead-lettered included), for the console's per-minute chart (`console::stats`).
    finished_totals: [AtomicU64; 2],
    /// Unix time (s) of the last successful Redis round trip.
    last_redis_ok: AtomicI64,
    /// The other components this worker was asked to run (Docker engine, embedded DNS server,
    /// HTTP-01 responder), as last probed: `Err` holds why one is down.
    components: Mutex<BTreeMap<&'static str, Result<(), String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `orchestrator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orchestrator");
        let tasks = Family::<Outcome, Counter>::default();
        let duration = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 20))
        });
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        let delayed = Gauge::default();
        let dead_lettered = Gauge::default();
        let in_flight = Gauge::default();
        let recovered = Counter::default();
        registry.register(
            "tasks",
            "Finished task attempts by type and outcome",
            tasks.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Duration of one task attempt",
            duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Tasks waiting in each list",
            queue_depth.clone(),
        );
        registry.register(
            "delayed_tasks",
            "Tasks waiting for a retry",
            delayed.clone(),
        );
        registry.register(
            "dead_letter_tasks",
            "Entries in the dead-letter list",
            dead_lettered.clone(),
        );
        registry.register(
            "in_flight_tasks",
            "Tasks running in this process",
            in_flight.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries answered by the embedded server, by response code",
            crate::dns::server::QUERIES.clone(),
        );
        registry.register(
            "recovered_tasks",
            "Tasks recovered from dead workers",
            recovered.clone(),
        );
        Self {
            registry,
            tasks,
            duration,
            queue_depth,
            delayed,
            dead_lettered,
            in_flight,
            recovered,
            finished_totals: [AtomicU64::new(0), AtomicU64::new(0)],
            last_redis_ok: AtomicI64::new(0),
            components: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one finished attempt.
    pub fn finished(&self, task_type: &str, outcome: &str, took: Duration) {
        self.tasks
            .get_or_create(&Outcome {
                task_type: task_type.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&TypeLabel {
                task_type: task_type.to_string(),
            })
            .observe(took.as_secs_f64());
        let slot = match outcome {
            "completed" | "duplicate" => 0,
            "failed" | "dead_lettered" => 1,
            _ => return,
        };
        self.finished_totals[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Tasks finished for good by this process so far: (completed, failed).
    pub fn finished_totals(&self) -> (u64, u64) {
        (
            self.finished_totals[0].load(Ordering::Relaxed),
            self.finished_totals[1].load(Ordering::Relaxed),
        )
    }

    /// Notes a successful Redis round trip.
    pub fn redis_ok(&self) {
        self.last_redis_ok
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// Whether Redis answered within `within`.
    pub fn healthy(&self, within: Duration) -> bool {
        let last = self.last_redis_ok.load(Ordering::Relaxed);
        chrono::Utc::now().timestamp() - last <= within.as_secs() as i64
    }

    /// Records the state of a component `/healthz` reports.
    pub fn set_component(&self, name: &'static str, state: Result<(), String>) {
        let mut map = match self.components.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(name, state);
    }

    /// Whether everything is up, and one line per component (`redis: ok`, `dns: <why>`).
    pub fn health(&self, redis_within: Duration) -> (bool, String) {
        let mut ok = true;
        let mut lines = String::new();
        if self.healthy(redis_within) {
            lines.push_str("redis: ok\n");
        } else {
            ok = false;
            lines.push_str("redis: unreachable\n");
        }
        let map = match self.components.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (name, state) in map.iter() {
            match state {
                Ok(()) => lines.push_str(&format!("{name}: ok\n")),
                Err(why) => {
                    ok = false;
                    lines.push_str(&format!("{name}: {why}\n"));
                }
            }
        }
        (ok, lines)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    // Header timeout and connection cap: idle clients can't starve the worker (see `listen`).
    crate::listen::serve(listener, app, async move { shutdown.wait().await }).await
}

/// 200 `ok` when Redis answered lately and every component the worker runs passed its last probe;
/// 503 otherwise. Either way one line per component follows.
async fn healthz(State(metrics): State<Arc<Metrics>>) -> (StatusCode, String) {
    let (ok, lines) = metrics.health(Duration::from_secs(30));
    if ok {
        (StatusCode::OK, format!("ok\n{lines}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy\n{lines}"),
        )
    }
}

async fn metrics_text(
    State(metrics): State<Arc<Metrics>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.encode(),
    )
}
