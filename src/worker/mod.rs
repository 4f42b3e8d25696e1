//! One worker process: claims tasks (see [`crate::queue`] for how delivery stays exact), runs up to
//! `concurrency` of them at once, and owns everything around a handler.
//!
//! By responsibility:
//! - `claim`: the exchange loop: every claim, begin and finish of the worker in one script call
//!   per batch (outcomes written, tasks begun, new ones claimed and begun at once when prepared
//!   beforehand); starts attempts; graceful shutdown.
//! - `admission`: what is checked before a handler runs (envelope, schema, handler, attempts,
//!   idempotency), and what is settled without running it (rejects, duplicates).
//! - `attempt`: one attempt's lifecycle: context, timeout, cancellation, outcome, and the
//!   finishing write retried until it lands or the claim is found lost.
//! - `background`: lease renewal, recovery of expired leases, the promoter, the cancel listener,
//!   the listener role and its waiters (one idle worker per deployment blocks on the lists, so one
//!   push wakes one worker), heartbeats and queue-depth sampling.
//!
//! Redis failures never stop a worker: every infrastructure error (connection, timeout, LOADING,
//! BUSY, MISCONF, OOM, NOREPLICAS, READONLY, unknown codes) is waited out; only an error about the
//! task itself (its hash is not a hash: WRONGTYPE) is final, and the task is then dead-lettered.

mod admission;
mod attempt;
mod background;
mod claim;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{error, warn};

use crate::connections;
use crate::context::TaskContext;
use crate::handlers::Registry;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::queues::Definitions;
use crate::services::Services;

/// Most tasks claimed in one round trip.
const CLAIM_BATCH: usize = 32;
/// Time a cancelled handler (timeout, shutdown) gets to undo its work before it is dropped.
const ROLLBACK_GRACE: Duration = Duration::from_secs(20);
/// Most attempts a producer may ask for.
const MAX_ATTEMPTS_CAP: u32 = 25;
/// Longest attempt a producer may ask for (a day).
const MAX_TIMEOUT_S: u64 = 24 * 3600;

/// One worker process.
pub struct Worker {
    id: String,
    services: Arc<Services>,
    registry: Registry,
    definitions: Arc<Definitions>,
    queue: Queue,
    client: redis::Client,
    metrics: Arc<Metrics>,
    /// Contexts of running attempts by claim handle: renewed together, reachable by cancel.
    in_flight: Mutex<HashMap<String, Arc<TaskContext>>>,
    /// Set when the shutdown grace is over: cancelled tasks are then put back, not marked cancelled.
    draining: AtomicBool,
    /// Outcomes of attempts, for the exchange loop to write (see `claim`).
    outcomes_tx: tokio::sync::mpsc::UnboundedSender<claim::Outcome>,
    /// Taken by the exchange loop when it starts.
    outcomes_rx: StdMutex<Option<tokio::sync::mpsc::UnboundedReceiver<claim::Outcome>>>,
    /// When a Redis call of this worker last failed: the reaper waits a lease after it, so the
    /// leases that could not be renewed meanwhile are not taken for dead workers.
    trouble: StdMutex<Option<Instant>>,
}

impl Worker {
    /// A worker over `services`, taking the lists `definitions` declares.
    pub fn new(
        services: Arc<Services>,
        registry: Registry,
        definitions: Arc<Definitions>,
        metrics: Arc<Metrics>,
        conn: redis::aio::ConnectionManager,
    ) -> Result<Arc<Self>, connections::ConnectionError> {
        let config = &services.config;
        let id = config
            .worker
            .worker_id
            .clone()
            .unwrap_or_else(default_worker_id);
        let client = connections::client(&config.redis.redis_url)?;
        let queue = Queue::new(
            conn,
            id.clone(),
            definitions.claim_order(),
            config.worker.lease(),
        );
        let (outcomes_tx, outcomes_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            id,
            outcomes_tx,
            outcomes_rx: StdMutex::new(Some(outcomes_rx)),
            services,
            registry,
            definitions,
            queue,
            client,
            metrics,
            in_flight: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            trouble: StdMutex::new(None),
        }))
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn note_trouble(&self) {
        if let Ok(mut at) = self.trouble.lock() {
            *at = Some(Instant::now());
        }
    }

    /// Whether a Redis call failed within `window`.
    fn troubled_within(&self, window: Duration) -> bool {
        self.trouble
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Retries a Redis operation with backoff until it succeeds; `None` when the error is final
    /// (about the task itself) or `give_up` says to stop waiting.
    async fn retry_redis<T, F, Fut>(
        &self,
        what: &str,
        give_up: impl Fn(u32) -> bool,
        mut operation: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut backoff = Backoff::new();
        let mut tries = 0;
        loop {
            match operation().await {
                Ok(value) => {
                    self.metrics.redis_ok();
                    return Some(value);
                }
                Err(err) if is_final(&err) => {
                    error!(error = %err, "cannot {what}: Redis refused it for this task; not retrying");
                    return None;
                }
                Err(err) => {
                    self.note_trouble();
                    tries += 1;
                    if give_up(tries) {
                        error!(error = %err, "cannot {what}; left for lease recovery");
                        return None;
                    }
                    let pause = backoff.next();
                    warn!(error = %err, retry_in = ?pause, "cannot {what}; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Whether a Redis error is about the task itself, so retrying cannot help: its hash (or
/// idempotency record) holds another type (WRONGTYPE), or a reply this build cannot read. Every
/// other error (connection, timeout, LOADING, BUSY, MISCONF, OOM, NOREPLICAS, READONLY, NOSCRIPT,
/// unknown codes) may pass and is waited out.
pub fn is_final(err: &redis::RedisError) -> bool {
    use redis::ErrorKind;
    err.code() == Some("WRONGTYPE")
        || matches!(
            err.kind(),
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType
        )
}

/// A stand-in for a body that cannot be read as a task: its id and user if they can be sniffed
/// (so the failure is announced on the user's channel), type `unknown`.
fn stand_in(body: &[u8], fallback_id: impl FnOnce() -> String) -> crate::task::Task {
    let user = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| {
            let user = value.get("user_id")?.as_str()?.to_string();
            (!user.is_empty() && user.len() <= 128 && user.bytes().all(|b| b.is_ascii_graphic()))
                .then_some(user)
        });
    crate::task::Task {
        id: crate::task::sniff_id(body).unwrap_or_else(fallback_id),
        task_type: "unknown".into(),
        user_id: user,
        payload: Value::Object(Default::default()),
        idempotency_key: None,
        max_attempts: None,
        timeout_s: None,
        created_at: None,
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Exponential pause between retries of a failing Redis call: 50 ms doubling to 2 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: Duration::from_millis(50),
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }

    fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        current
    }
}
