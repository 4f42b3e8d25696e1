//! The consuming loop of one worker process: claims tasks (see [`crate::queue`] for how nothing is
//! lost), runs up to `concurrency` of them at once, and owns everything around a handler: envelope and
//! schema checks, dead-lettering, attempts and retries, idempotency keys, per-resource locks,
//! timeouts, cancellation, heartbeats, recovery of dead workers, and graceful shutdown.
//!
//! Redis failures never stop the loop: every call is retried with backoff, so a worker survives a
//! Redis restart and resumes where it was. A task whose outcome could not be written stays in the
//! processing list and is recovered, never dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use redis::Script;
use serde_json::Value;
use tokio::sync::{Mutex, Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::connections;
use crate::context::TaskContext;
use crate::handlers::{Handler, Registry};
use crate::keys;
use crate::metrics::Metrics;
use crate::progress::{self, Update};
use crate::queue::{Claimed, DeadLetter, Queue, Then};
use crate::queues::{Definitions, Policy};
use crate::services::Services;
use crate::shutdown::Shutdown;
use crate::task::{Task, TaskError, TaskStatus, sniff_id};

/// Most tasks claimed in one round trip.
const CLAIM_BATCH: usize = 32;
/// How long a resource lock lives without being extended.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// Time a cancelled handler (timeout, shutdown) gets to undo its work before it is dropped.
const ROLLBACK_GRACE: Duration = Duration::from_secs(20);
/// Seconds an idempotency key is remembered.
const IDEMPOTENCY_TTL_S: u64 = 24 * 3600;
/// Most attempts a producer may ask for.
const MAX_ATTEMPTS_CAP: u32 = 25;
/// Longest attempt a producer may ask for (a day).
const MAX_TIMEOUT_S: u64 = 24 * 3600;
/// How long each waiter blocks before it re-issues its `BLMOVE`.
const WAIT_SLICE_S: f64 = 1.0;

const BEGIN_SCRIPT: &str = r#"
local status = redis.call('HGET', KEYS[1], 'status') or ''
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') or 0, status, ''}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {attempts, status, redis.call('HGET', KEYS[1], 'cancel_requested') or ''}
"#;

const IDEMPOTENCY_SCRIPT: &str = r#"
local first = redis.call('GET', KEYS[1])
if (not first) or first == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return {'proceed', ''}
end
local status = redis.call('HGET', 'task:' .. first, 'status')
if status == 'completed' then
  return {'duplicate', first, redis.call('HGET', 'task:' .. first, 'result') or ''}
end
if status == 'failed' or status == 'cancelled'
    or redis.call('EXISTS', 'task:' .. first) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return {'proceed', ''}
end
return {'wait', first}
"#;

static BEGIN: LazyLock<Script> = LazyLock::new(|| Script::new(BEGIN_SCRIPT));
static IDEMPOTENCY: LazyLock<Script> = LazyLock::new(|| Script::new(IDEMPOTENCY_SCRIPT));

/// One worker process.
pub struct Worker {
    id: String,
    services: Arc<Services>,
    registry: Registry,
    definitions: Arc<Definitions>,
    queue: Queue,
    /// Multiplexed, self-reconnecting connection for the per-task round trips.
    conn: redis::aio::ConnectionManager,
    client: redis::Client,
    metrics: Arc<Metrics>,
    /// Contexts of running tasks by id, so a cancel message can reach them.
    in_flight: Mutex<HashMap<String, Arc<TaskContext>>>,
    /// Set when the shutdown grace is over: cancelled tasks are then put back, not marked cancelled.
    draining: AtomicBool,
}

/// How the handler run ended.
enum Ran {
    Returned(Result<Value, TaskError>),
    TimedOut(Duration),
}

/// Outcome of the per-task checks before the handler runs.
enum Admission {
    Run {
        attempts: u32,
        max_attempts: u32,
        policy: Policy,
    },
    Settled,
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
        let queue = Queue::new(conn.clone(), id.clone(), definitions.claim_order());
        Ok(Arc::new(Self {
            id,
            services,
            registry,
            definitions,
            queue,
            conn,
            client,
            metrics,
            in_flight: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
        }))
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Consumes until `shutdown`, then drains: in-flight tasks get the grace period to finish,
    /// then are cancelled (their handlers undo their work) and put back.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let concurrency = self.services.config.worker.concurrency.max(1);
        info!(worker = %self.id, concurrency, lists = ?self.queue.order(), "worker started");
        // Register before claiming (so the reaper knows this worker's lists), and hand back what a
        // previous life of this worker id left in its processing lists: with ids unique among live
        // workers, those tasks belong to a process that is gone.
        let lease = self.services.config.worker.lease();
        let registered = self
            .retry_redis("register the worker", || self.queue.heartbeat(lease, "{}"))
            .await;
        if registered.is_some()
            && let Some(n) = self
                .retry_redis("put back tasks of a previous run", || {
                    self.queue.put_back_all()
                })
                .await
            && n > 0
        {
            info!(
                count = n,
                "put back tasks left by a previous run of this worker id"
            );
        }
        let background = Shutdown::new();
        let wake = Arc::new(Notify::new());
        let (idle_tx, idle_rx) = watch::channel(0u64);
        let mut loops = JoinSet::new();
        loops.spawn(self.clone().heartbeat_loop(background.clone()));
        loops.spawn(self.clone().reaper_loop(background.clone()));
        loops.spawn(self.clone().promoter_loop(background.clone()));
        loops.spawn(self.clone().cancel_listener(background.clone()));
        loops.spawn(self.clone().sampler_loop(background.clone()));
        for list in self.queue.order().to_vec() {
            loops.spawn(self.clone().waiter(
                list,
                idle_rx.clone(),
                wake.clone(),
                background.clone(),
            ));
        }

        let slots = Arc::new(Semaphore::new(concurrency));
        let mut running = JoinSet::new();
        let mut backoff = Backoff::new();
        while !shutdown.is_triggered() {
            while running.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.wait() => break,
            };
            let want = 1 + slots.available_permits().min(CLAIM_BATCH - 1);
            match self.queue.claim(want).await {
                Ok(claimed) if claimed.is_empty() => {
                    drop(first);
                    backoff.reset();
                    self.metrics.redis_ok();
                    idle_tx.send_modify(|generation| *generation += 1);
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Ok(claimed) => {
                    backoff.reset();
                    self.metrics.redis_ok();
                    let mut permit = Some(first);
                    for item in claimed {
                        let slot = match permit.take() {
                            Some(p) => p,
                            None => match slots.clone().try_acquire_owned() {
                                Ok(p) => p,
                                // Cannot happen (only this loop takes slots); never drop a task for it.
                                Err(_) => match slots.clone().acquire_owned().await {
                                    Ok(p) => p,
                                    Err(_) => break,
                                },
                            },
                        };
                        let me = self.clone();
                        running.spawn(async move {
                            me.metrics.in_flight.inc();
                            me.process(item).await;
                            me.metrics.in_flight.dec();
                            drop(slot);
                        });
                    }
                }
                Err(err) => {
                    drop(first);
                    let pause = backoff.next();
                    warn!(error = %err, retry_in = ?pause, "cannot claim tasks; Redis unreachable?");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.wait() => break,
                    }
                }
            }
        }

        self.drain(&mut running).await;
        background.trigger();
        while loops.join_next().await.is_some() {}
        if let Err(err) = self.queue.deregister().await {
            warn!(error = %err, "could not deregister; the reaper will notice the lease expire");
        }
        info!(worker = %self.id, "worker stopped");
    }

    async fn drain(&self, running: &mut JoinSet<()>) {
        let grace = Duration::from_secs(self.services.config.worker.shutdown_grace_s);
        let count = running.len();
        if count > 0 {
            info!(in_flight = count, ?grace, "waiting for in-flight tasks");
        }
        let finished = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            self.draining.store(true, Ordering::SeqCst);
            let contexts: Vec<_> = self.in_flight.lock().await.values().cloned().collect();
            warn!(
                left = contexts.len(),
                "grace period over: cancelling and putting back"
            );
            for ctx in contexts {
                ctx.cancel("worker shutting down").await;
            }
            let undone = tokio::time::timeout(ROLLBACK_GRACE, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if undone.is_err() {
                running.abort_all();
                while running.join_next().await.is_some() {}
            }
        }
        match self.queue.put_back_all().await {
            Ok(0) => {}
            Ok(n) => info!(count = n, "put unfinished tasks back on their queues"),
            Err(err) => {
                warn!(error = %err, "could not put tasks back; they will be recovered after the lease")
            }
        }
    }

    /// Runs one claimed body to its end, whatever it holds.
    async fn process(&self, mut claimed: Claimed) {
        let max_bytes = self.services.config.worker.max_task_bytes;
        let (task, generated) = match Task::parse(&claimed.body, max_bytes) {
            Ok(parsed) => parsed,
            Err(err) => {
                let span = info_span!("task", id = tracing::field::Empty, list = %claimed.list);
                self.reject(&claimed, None, &err.to_string())
                    .instrument(span)
                    .await;
                return;
            }
        };
        let span = info_span!("task", id = %task.id, r#type = %task.task_type);
        async move {
            self.execute(&mut claimed, &task, generated).await;
        }
        .instrument(span)
        .await;
    }

    async fn execute(&self, claimed: &mut Claimed, task: &Task, generated_id: bool) {
        let started = Instant::now();
        let policy = match self.definitions.policy(&claimed.list, &task.task_type) {
            Ok(policy) => policy,
            Err(reason) => return self.reject(claimed, Some(task), &reason).await,
        };
        if let Err(reason) = self
            .definitions
            .check_payload(&task.task_type, &task.payload)
        {
            return self.reject(claimed, Some(task), &reason).await;
        }
        let Some(handler) = self.registry.get(&task.task_type).cloned() else {
            let reason = format!("no handler for task type {} in this worker", task.task_type);
            return self.reject(claimed, Some(task), &reason).await;
        };
        if generated_id {
            // Only now, once the task is known good: a rejected body is dead-lettered as it came.
            let body = task.to_body();
            let replaced = self
                .retry_redis("record the generated task id", || {
                    self.queue.replace(&claimed.list, &claimed.body, &body)
                })
                .await;
            if replaced.is_some() {
                claimed.body = body.into_bytes();
            }
        }
        let claimed: &Claimed = claimed;
        let (attempts, max_attempts, policy) =
            match self.admit(claimed, task, &*handler, policy).await {
                Admission::Run {
                    attempts,
                    max_attempts,
                    policy,
                } => (attempts, max_attempts, policy),
                Admission::Settled => return,
            };

        let resource = handler.resource(task);
        // One holder per attempt: a second copy of the same task (a producer's retried LPUSH)
        // waits like any other task instead of sharing the lock.
        let holder = format!("{}@{}#{attempts}", task.id, self.id);
        if let Some(resource) = &resource {
            let waiting = match self.queue.lock(resource, &holder, LOCK_TTL).await {
                Ok(Ok(())) => None,
                Ok(Err(other)) => Some(format!(
                    "Waiting: {resource} is being changed by task {other}"
                )),
                Err(err) => Some(format!(
                    "Waiting: cannot take the lock on {resource}: {err}"
                )),
            };
            if let Some(message) = waiting {
                // Requeued, not counted as an attempt; other resources proceed meanwhile.
                debug!(%message);
                let pause = Duration::from_millis(rand::random_range(500..1500));
                return self
                    .settle(
                        claimed,
                        task,
                        TaskStatus::Queued,
                        &message,
                        attempts - 1,
                        None,
                        Then::RetryAfter(pause),
                    )
                    .await;
            }
        }

        let total_steps = handler.total_steps(task);
        let ctx = Arc::new(TaskContext::new(
            task.clone(),
            attempts,
            total_steps,
            self.id.clone(),
            self.services.clone(),
        ));
        self.in_flight
            .lock()
            .await
            .insert(task.id.clone(), ctx.clone());
        let keeper = resource.clone().map(|r| {
            tokio::spawn(keep_lock(
                self.queue.clone(),
                r,
                holder.clone(),
                ctx.clone(),
            ))
        });
        let started_message = format!("Started (attempt {attempts} of {max_attempts})");
        let timeout = task
            .timeout_s
            .map(|s| Duration::from_secs(s.clamp(1, MAX_TIMEOUT_S)))
            .unwrap_or(policy.timeout);
        let start_recorded = self
            .record(
                task,
                &Update {
                    status: TaskStatus::Processing,
                    step: 0,
                    total_steps,
                    message: &started_message,
                    attempts,
                    error: None,
                    result: None,
                    worker: &self.id,
                },
            )
            .await;
        let ran = match start_recorded {
            Err(err) => Ran::Returned(Err(TaskError::Retryable(format!(
                "could not record the start: {err}"
            )))),
            Ok(cancel_requested) => {
                // A cancel that arrived between the admission check and the in-flight entry.
                if cancel_requested {
                    ctx.cancel("cancelled by request").await;
                }
                run_with_timeout(&*handler, &ctx, timeout).await
            }
        };
        if let Some(keeper) = keeper {
            keeper.abort();
        }
        if let Some(resource) = &resource
            && let Err(err) = self.queue.unlock(resource, &holder).await
        {
            warn!(error = %err, %resource, "could not release lock; it expires by itself");
        }
        self.in_flight.lock().await.remove(&task.id);

        let result = match ran {
            Ran::Returned(result) => result,
            Ran::TimedOut(after) => Err(TaskError::Retryable(format!(
                "timed out after {} s",
                after.as_secs()
            ))),
        };
        let took = started.elapsed();
        let step = ctx.current_step();
        let outcome = match result {
            Ok(value) => {
                self.settle(
                    claimed,
                    task,
                    TaskStatus::Completed,
                    "Completed",
                    attempts,
                    Some(&value),
                    Then::Done,
                )
                .await;
                "completed"
            }
            Err(TaskError::Cancelled(_)) if self.draining.load(Ordering::SeqCst) => {
                self.settle(
                    claimed,
                    task,
                    TaskStatus::Queued,
                    "Put back: the worker shut down",
                    attempts - 1,
                    None,
                    Then::PutBack,
                )
                .await;
                "put_back"
            }
            Err(TaskError::Cancelled(reason)) => {
                let message = format!("Cancelled: {reason}");
                self.finish(
                    claimed,
                    task,
                    Update {
                        status: TaskStatus::Cancelled,
                        step,
                        total_steps,
                        message: &message,
                        attempts,
                        error: Some(&reason),
                        result: None,
                        worker: &self.id,
                    },
                    Then::Done,
                )
                .await;
                "cancelled"
            }
            Err(err) if err.is_retryable() && attempts < max_attempts => {
                let delay = policy.backoff.delay(attempts);
                let error = err.to_string();
                let message = format!(
                    "Attempt {attempts} of {max_attempts} failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                warn!(%error, ?delay, "attempt failed; retrying");
                self.finish(
                    claimed,
                    task,
                    Update {
                        status: TaskStatus::Retrying,
                        step,
                        total_steps,
                        message: &message,
                        attempts,
                        error: Some(&error),
                        result: None,
                        worker: &self.id,
                    },
                    Then::RetryAfter(delay),
                )
                .await;
                "retried"
            }
            Err(err) => {
                let error = if err.is_retryable() {
                    format!("{err} (gave up after {attempts} attempts)")
                } else {
                    err.to_string()
                };
                warn!(%error, "task failed");
                self.fail(claimed, task, attempts, step, total_steps, &error)
                    .await;
                "failed"
            }
        };
        self.metrics.finished(&task.task_type, outcome, took);
    }

    /// Counts the attempt and settles what can be settled before running: a task already finished
    /// (re-delivered), cancelled while queued, out of attempts, or a duplicate by idempotency key.
    async fn admit(
        &self,
        claimed: &Claimed,
        task: &Task,
        handler: &dyn Handler,
        policy: Policy,
    ) -> Admission {
        let Some((attempts, status, cancel)) = self
            .retry_redis("count the attempt", || async {
                let mut conn = self.conn.clone();
                BEGIN
                    .key(keys::task(&task.id))
                    .invoke_async::<(i64, String, String)>(&mut conn)
                    .await
            })
            .await
        else {
            let reason = "Redis refused to count the attempt; see the worker log";
            self.abandon(claimed, task, reason, 0).await;
            return Admission::Settled;
        };
        let attempts = u32::try_from(attempts.max(1)).unwrap_or(u32::MAX);
        let max_attempts = task
            .max_attempts
            .unwrap_or(policy.max_attempts)
            .clamp(1, MAX_ATTEMPTS_CAP);
        let total_steps = handler.total_steps(task);
        if TaskStatus::parse(&status).is_some_and(TaskStatus::is_terminal) {
            info!(%status, "task already finished; dropping the redelivered copy");
            self.retry_redis("acknowledge", || {
                self.queue.finish(claimed, None, None, Then::Done)
            })
            .await;
            return Admission::Settled;
        }
        if !cancel.is_empty() {
            self.settle(
                claimed,
                task,
                TaskStatus::Cancelled,
                "Cancelled before it started",
                attempts - 1,
                None,
                Then::Done,
            )
            .await;
            return Admission::Settled;
        }
        if attempts > max_attempts {
            let error = format!(
                "gave up after {max_attempts} attempts (the last one stopped without finishing)"
            );
            self.fail(claimed, task, max_attempts, 0, total_steps, &error)
                .await;
            return Admission::Settled;
        }
        if let Some(key) = &task.idempotency_key {
            let verdict = self
                .retry_redis("check the idempotency key", || async {
                    let mut conn = self.conn.clone();
                    IDEMPOTENCY
                        .key(keys::idempotency(key))
                        .arg(&task.id)
                        .arg(IDEMPOTENCY_TTL_S)
                        .invoke_async::<Vec<String>>(&mut conn)
                        .await
                })
                .await
                .unwrap_or_default();
            match verdict.first().map(String::as_str) {
                Some("duplicate") => {
                    let first = verdict.get(1).cloned().unwrap_or_default();
                    let result = verdict
                        .get(2)
                        .and_then(|r| serde_json::from_str::<Value>(r).ok())
                        .unwrap_or(Value::Null);
                    let result = serde_json::json!({ "duplicate_of": first, "result": result });
                    let message = format!("Duplicate of task {first} (same idempotency key)");
                    self.settle(
                        claimed,
                        task,
                        TaskStatus::Completed,
                        &message,
                        attempts,
                        Some(&result),
                        Then::Done,
                    )
                    .await;
                    self.metrics
                        .finished(&task.task_type, "duplicate", Duration::ZERO);
                    return Admission::Settled;
                }
                Some("wait") => {
                    let first = verdict.get(1).cloned().unwrap_or_default();
                    let message = format!(
                        "Waiting: task {first} with the same idempotency key is still running"
                    );
                    self.settle(
                        claimed,
                        task,
                        TaskStatus::Queued,
                        &message,
                        attempts - 1,
                        None,
                        Then::RetryAfter(Duration::from_secs(1)),
                    )
                    .await;
                    return Admission::Settled;
                }
                _ => {}
            }
        }
        Admission::Run {
            attempts,
            max_attempts,
            policy,
        }
    }

    /// Fails a task that could not be read or does not belong: dead-letter with the reason.
    async fn reject(&self, claimed: &Claimed, task: Option<&Task>, reason: &str) {
        warn!(%reason, list = %claimed.list, "rejecting task");
        match task {
            Some(task) => self.fail(claimed, task, 0, 0, 0, reason).await,
            None => {
                // Unreadable: announce what we can on the channel the body names, if any.
                let id =
                    sniff_id(&claimed.body).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let entry = DeadLetter {
                    id: id.clone(),
                    task_type: None,
                    queue: claimed.list.clone(),
                    reason: reason.to_string(),
                    failed_at: progress::now(),
                    attempts: 0,
                    body: String::from_utf8_lossy(&claimed.body).into_owned(),
                };
                let stand_in = Task {
                    id,
                    task_type: "unknown".into(),
                    user_id: sniff_user(&claimed.body),
                    payload: Value::Object(Default::default()),
                    idempotency_key: None,
                    max_attempts: None,
                    timeout_s: None,
                    created_at: None,
                };
                let update = Update {
                    status: TaskStatus::Failed,
                    step: 0,
                    total_steps: 0,
                    message: "Rejected",
                    attempts: 0,
                    error: Some(reason),
                    result: None,
                    worker: &self.id,
                };
                self.retry_redis("dead-letter", || {
                    self.queue.finish(
                        claimed,
                        Some(&stand_in),
                        Some(&update),
                        Then::DeadLetter(&entry),
                    )
                })
                .await;
                self.metrics
                    .finished("unknown", "dead_lettered", Duration::ZERO);
            }
        }
    }

    /// Marks `task` failed and dead-letters it, in one transaction.
    async fn fail(
        &self,
        claimed: &Claimed,
        task: &Task,
        attempts: u32,
        step: u32,
        total_steps: u32,
        error: &str,
    ) {
        let entry = DeadLetter::of(claimed, task, error, attempts);
        let message = format!("Failed: {error}");
        self.finish(
            claimed,
            task,
            Update {
                status: TaskStatus::Failed,
                step,
                total_steps,
                message: &message,
                attempts,
                error: Some(error),
                result: None,
                worker: &self.id,
            },
            Then::DeadLetter(&entry),
        )
        .await;
    }

    /// Records a final (or waiting) state with no step detail and moves the task on.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        claimed: &Claimed,
        task: &Task,
        status: TaskStatus,
        message: &str,
        attempts: u32,
        result: Option<&Value>,
        then: Then<'_>,
    ) {
        let total = self
            .registry
            .get(&task.task_type)
            .map(|h| h.total_steps(task))
            .unwrap_or(0);
        let step = if status == TaskStatus::Completed {
            total
        } else {
            0
        };
        self.finish(
            claimed,
            task,
            Update {
                status,
                step,
                total_steps: total,
                message,
                attempts,
                error: None,
                result,
                worker: &self.id,
            },
            then,
        )
        .await;
    }

    async fn finish(&self, claimed: &Claimed, task: &Task, update: Update<'_>, then: Then<'_>) {
        let recorded = self
            .retry_redis("record the outcome", || {
                self.queue
                    .finish(claimed, Some(task), Some(&update), then_ref(&then))
            })
            .await;
        if recorded.is_none() {
            let reason = format!(
                "Redis refused to record the outcome ({}); see the worker log",
                update.message
            );
            self.abandon(claimed, task, &reason, update.attempts).await;
        }
    }

    /// Dead-letters a task without touching its hash, for when Redis refuses to write the hash
    /// (e.g. `task:<id>` is not a hash): the task is kept, with why, rather than left in a live
    /// worker's processing list for ever.
    async fn abandon(&self, claimed: &Claimed, task: &Task, reason: &str, attempts: u32) {
        if self.draining.load(Ordering::SeqCst) {
            return;
        }
        let entry = DeadLetter::of(claimed, task, reason, attempts);
        let kept = self
            .retry_redis("dead-letter the task", || {
                self.queue
                    .finish(claimed, None, None, Then::DeadLetter(&entry))
            })
            .await;
        if kept.is_none() {
            error!("cannot dead-letter either; the task stays in the processing list");
        }
    }

    /// Records a state; returns whether a cancellation was requested.
    async fn record(&self, task: &Task, update: &Update<'_>) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        progress::record(&mut conn, task, update)
            .await
            .map(|recorded| recorded.cancel_requested)
    }

    /// Retries a Redis operation with backoff until it succeeds, or gives up once the worker is
    /// shutting down for good (the task then stays in the processing list and is recovered).
    async fn retry_redis<T, F, Fut>(&self, what: &str, mut operation: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut backoff = Backoff::new();
        loop {
            match operation().await {
                Ok(value) => {
                    self.metrics.redis_ok();
                    return Some(value);
                }
                Err(err) if self.draining.load(Ordering::SeqCst) => {
                    error!(error = %err, "cannot {what} while shutting down; left for recovery");
                    return None;
                }
                Err(err) if !is_transient(&err) => {
                    error!(error = %err, "cannot {what}: Redis refused it; not retrying");
                    return None;
                }
                Err(err) => {
                    let pause = backoff.next();
                    warn!(error = %err, retry_in = ?pause, "cannot {what}; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, stop: Shutdown) {
        let lease = self.services.config.worker.lease();
        let info = serde_json::json!({
            "id": self.id,
            "pid": std::process::id(),
            "started_at": progress::now(),
            "concurrency": self.services.config.worker.concurrency,
            "types": self.registry.task_types().collect::<Vec<_>>(),
        })
        .to_string();
        loop {
            match self.queue.heartbeat(lease, &info).await {
                Ok(()) => self.metrics.redis_ok(),
                Err(err) => warn!(error = %err, "heartbeat failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(lease / 3) => {}
                _ = stop.wait() => return,
            }
        }
    }

    async fn reaper_loop(self: Arc<Self>, stop: Shutdown) {
        let lease = self.services.config.worker.lease();
        let max = self.services.config.worker.max_recoveries;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(lease / 2) => {}
                _ = stop.wait() => return,
            }
            match self.queue.reap(lease, max).await {
                Ok(reaped) => {
                    for body in &reaped.requeued {
                        self.metrics.recovered.inc();
                        self.note_recovery(body, false).await;
                    }
                    for body in &reaped.dead {
                        self.note_recovery(body, true).await;
                    }
                }
                Err(err) => warn!(error = %err, "reaper pass failed"),
            }
        }
    }

    /// Tells the task's watchers that it was recovered from a dead worker (or dead-lettered).
    async fn note_recovery(&self, body: &[u8], dead: bool) {
        let Ok((task, _)) = Task::parse(body, usize::MAX) else {
            return;
        };
        let attempts = self.read_attempts(&task.id).await;
        let (status, message, error) = if dead {
            (
                TaskStatus::Failed,
                "Failed: poison pill",
                Some("poison pill: the workers running it kept dying"),
            )
        } else {
            (
                TaskStatus::Queued,
                "Recovered from a worker that stopped; queued again",
                None,
            )
        };
        info!(task = %task.id, dead, "recovered task from a dead worker");
        let update = Update {
            status,
            step: 0,
            total_steps: 0,
            message,
            attempts,
            error,
            result: None,
            worker: "",
        };
        if let Err(err) = self.record(&task, &update).await {
            warn!(error = %err, "could not record the recovery");
        }
    }

    async fn read_attempts(&self, id: &str) -> u32 {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(keys::task(id))
            .arg("attempts")
            .query_async::<Option<u32>>(&mut conn)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    async fn promoter_loop(self: Arc<Self>, stop: Shutdown) {
        loop {
            if let Err(err) = self.queue.promote_due().await {
                debug!(error = %err, "promoting delayed tasks failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.wait() => return,
            }
        }
    }

    async fn sampler_loop(self: Arc<Self>, stop: Shutdown) {
        loop {
            if let Ok(depths) = crate::admin::depths(&self.services.redis, self.queue.order()).await
            {
                for (list, depth) in &depths.lists {
                    self.metrics
                        .queue_depth
                        .get_or_create(&crate::metrics::QueueLabel {
                            queue: list.clone(),
                        })
                        .set(*depth as i64);
                }
                self.metrics.delayed.set(depths.delayed as i64);
                self.metrics.dead_lettered.set(depths.dead as i64);
                self.metrics.redis_ok();
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.wait() => return,
            }
        }
    }

    /// Listens for `orchestrator cancel` messages and cancels the named task if it runs here.
    async fn cancel_listener(self: Arc<Self>, stop: Shutdown) {
        let mut backoff = Backoff::new();
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(keys::CANCEL_CHANNEL).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                result = subscribed => result,
                _ = stop.wait() => return,
            };
            match pubsub {
                Ok(mut pubsub) => {
                    backoff.reset();
                    let mut messages = pubsub.on_message();
                    loop {
                        let message = tokio::select! {
                            message = messages.next() => message,
                            _ = stop.wait() => return,
                        };
                        let Some(message) = message else { break };
                        let Ok(id) = message.get_payload::<String>() else {
                            continue;
                        };
                        let ctx = self.in_flight.lock().await.get(&id).cloned();
                        if let Some(ctx) = ctx {
                            info!(task = %id, "cancellation requested");
                            ctx.cancel("cancelled by request").await;
                        }
                    }
                }
                Err(err) => debug!(error = %err, "cancel listener cannot subscribe"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = stop.wait() => return,
            }
        }
    }

    /// Blocks on `list` while the dispatcher is idle and wakes it when the list gets a task.
    async fn waiter(
        self: Arc<Self>,
        list: String,
        mut idle: watch::Receiver<u64>,
        wake: Arc<Notify>,
        stop: Shutdown,
    ) {
        let mut seen = 0u64;
        let mut conn = None;
        let mut backoff = Backoff::new();
        loop {
            let changed = tokio::select! {
                changed = idle.wait_for(|generation| *generation > seen) => changed.map(|g| *g),
                _ = stop.wait() => return,
            };
            let Ok(generation) = changed else { return };
            if conn.is_none() {
                match connections::blocking(&self.client).await {
                    Ok(c) => conn = Some(c),
                    Err(err) => {
                        debug!(error = %err, %list, "waiter cannot connect");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next()) => {}
                            _ = stop.wait() => return,
                        }
                        continue;
                    }
                }
            }
            let Some(connection) = conn.as_mut() else {
                continue;
            };
            // A rotation of the list onto itself: changes nothing, returns when it holds a task.
            let mut rotate = redis::cmd("BLMOVE");
            rotate
                .arg(&list)
                .arg(&list)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(WAIT_SLICE_S);
            let moved = tokio::select! {
                moved = rotate.query_async::<Option<Vec<u8>>>(connection) => moved,
                _ = stop.wait() => return,
            };
            match moved {
                Ok(Some(_)) => {
                    backoff.reset();
                    seen = generation;
                    wake.notify_one();
                }
                Ok(None) => backoff.reset(),
                Err(err) => {
                    debug!(error = %err, %list, "waiter lost its connection");
                    conn = None;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next()) => {}
                        _ = stop.wait() => return,
                    }
                }
            }
        }
    }
}

/// Whether a Redis error may pass by itself. Only errors that Redis gives for the command itself
/// (a script error, WRONGTYPE, a refused permission, an unreadable reply) are final; everything
/// else (connection lost, reconnecting, LOADING after a restart, failover) is waited out.
fn is_transient(err: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    !matches!(
        err.kind(),
        ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Extension
            | ErrorKind::Server(ServerErrorKind::ResponseError)
            | ErrorKind::Server(ServerErrorKind::ExecAbort)
            | ErrorKind::Server(ServerErrorKind::CrossSlot)
            | ErrorKind::Server(ServerErrorKind::NoPerm)
    )
}

fn then_ref<'a>(then: &'a Then<'a>) -> Then<'a> {
    match then {
        Then::Done => Then::Done,
        Then::RetryAfter(delay) => Then::RetryAfter(*delay),
        Then::DeadLetter(entry) => Then::DeadLetter(entry),
        Then::PutBack => Then::PutBack,
    }
}

/// Runs the handler; at the timeout, cancels it and gives it time to undo its work.
async fn run_with_timeout(handler: &dyn Handler, ctx: &Arc<TaskContext>, timeout: Duration) -> Ran {
    // A panicking handler must not leave its task in the processing list of a live worker.
    let run = std::panic::AssertUnwindSafe(handler.run(ctx))
        .catch_unwind()
        .map(|outcome| {
            outcome.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                error!(panic = %what, "handler panicked");
                Err(TaskError::Failed(format!("handler panicked: {what}")))
            })
        });
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return Ran::Returned(result),
        _ = tokio::time::sleep(timeout) => {}
    }
    ctx.cancel(&format!("timed out after {} s", timeout.as_secs()))
        .await;
    match tokio::time::timeout(ROLLBACK_GRACE, &mut run).await {
        Ok(Err(TaskError::Cancelled(_))) | Err(_) => Ran::TimedOut(timeout),
        Ok(other) => Ran::Returned(other),
    }
}

/// Extends a resource lock until aborted; cancels the task if the lock is lost, since another
/// task may then be changing the same resource.
async fn keep_lock(queue: Queue, resource: String, holder: String, ctx: Arc<TaskContext>) {
    loop {
        tokio::time::sleep(LOCK_TTL / 3).await;
        match queue.extend_lock(&resource, &holder, LOCK_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(%resource, "lost the lock (expired while Redis was unreachable?); cancelling");
                ctx.cancel(&format!("lost the lock on {resource}")).await;
                return;
            }
            Err(err) => debug!(error = %err, %resource, "cannot extend lock; retrying"),
        }
    }
}

fn sniff_user(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let user = value.get("user_id")?.as_str()?;
    (!user.is_empty() && user.len() <= 128 && user.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| user.to_string())
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
