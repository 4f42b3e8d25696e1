//! One attempt's lifecycle: its context (bound to the claim's fencing token), the handler run with
//! its timeout and cancellation, the outcome (completed, retried with backoff, failed into the
//! dead-letter list, cancelled, put back at shutdown), and the finishing write, retried until it
//! lands or the claim is found lost. A superseded attempt (its claim was recovered and given to a
//! newer one) writes nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, error, info, info_span, warn};

use super::admission::Prepared;
use super::{Backoff, MAX_TIMEOUT_S, ROLLBACK_GRACE, Worker, is_final};
use crate::context::TaskContext;
use crate::handlers::Handler;
use crate::progress::Update;
use crate::queue::{Claimed, DeadLetter, Finish, Then};
use crate::task::{Task, TaskError, TaskStatus};

/// How the handler run ended.
enum Ran {
    Returned(Result<Value, TaskError>),
    TimedOut(Duration),
}

impl Worker {
    /// Runs attempt `attempts` of a begun task to its end.
    /// Runs attempt `attempts` of a begun task to its end. Its slot (`permit`) is free once the
    /// handler returned: the outcome is written alongside the next tasks.
    pub(super) async fn attempt(
        self: Arc<Self>,
        p: Prepared,
        attempts: u32,
        cancelled: bool,
        permit: OwnedSemaphorePermit,
    ) {
        let span = info_span!("task", id = %p.task.id, r#type = %p.task.task_type, fence = p.claimed.fence);
        self.attempt_inner(p, attempts, cancelled, permit)
            .instrument(span)
            .await
    }

    async fn attempt_inner(
        &self,
        p: Prepared,
        attempts: u32,
        cancelled: bool,
        permit: OwnedSemaphorePermit,
    ) {
        let started = Instant::now();
        let ctx = Arc::new(
            TaskContext::new(
                p.task.clone(),
                attempts,
                p.total_steps,
                self.id.clone(),
                self.services.clone(),
            )
            .with_lease(p.claimed.handle.clone(), p.claimed.fence),
        );
        self.in_flight
            .lock()
            .await
            .insert(p.claimed.handle.clone(), ctx.clone());
        if cancelled {
            // Also a redelivered task cancelled while its previous attempt ran: the handler runs
            // with a cancelled context, so it undoes what that attempt created.
            ctx.cancel("cancelled by request").await;
        }
        let timeout = p
            .task
            .timeout_s
            .map(|s| Duration::from_secs(s.clamp(1, MAX_TIMEOUT_S)))
            .unwrap_or(p.policy.timeout);
        let ran = run_with_timeout(&*p.handler, &ctx, timeout).await;
        drop(permit);
        let result = match ran {
            Ran::Returned(result) => result,
            Ran::TimedOut(after) => Err(TaskError::Retryable(format!(
                "timed out after {} s",
                after.as_secs()
            ))),
        };
        let outcome = if ctx.is_superseded() || matches!(result, Err(TaskError::Superseded(_))) {
            info!("a newer attempt owns the task; stopping without an outcome");
            "superseded"
        } else {
            self.outcome(&p, &ctx, attempts, result).await
        };
        self.in_flight.lock().await.remove(&p.claimed.handle);
        self.metrics
            .finished(&p.task.task_type, outcome, started.elapsed());
    }

    async fn outcome(
        &self,
        p: &Prepared,
        ctx: &TaskContext,
        attempts: u32,
        result: Result<Value, TaskError>,
    ) -> &'static str {
        let step = ctx.current_step();
        let total_steps = p.total_steps;
        let max_attempts = p.max_attempts;
        let update = |status, message, attempts, error, result| Update {
            status,
            step,
            total_steps,
            message,
            attempts,
            error,
            result,
            worker: &self.id,
        };
        match result {
            Ok(value) => {
                let mut done = update(
                    TaskStatus::Completed,
                    "Completed",
                    attempts,
                    None,
                    Some(&value),
                );
                done.step = total_steps;
                self.conclude_prepared(p, Some(ctx), done, Then::Done).await;
                "completed"
            }
            Err(TaskError::Cancelled(_)) if self.draining.load(Ordering::SeqCst) => {
                let back = update(
                    TaskStatus::Queued,
                    "Put back: the worker shut down",
                    attempts.saturating_sub(1),
                    None,
                    None,
                );
                self.conclude_prepared(p, Some(ctx), back, Then::PutBack)
                    .await;
                "put_back"
            }
            Err(TaskError::Cancelled(reason)) => {
                let message = format!("Cancelled: {reason}");
                let cancelled = update(
                    TaskStatus::Cancelled,
                    &message,
                    attempts,
                    Some(&reason),
                    None,
                );
                self.conclude_prepared(p, Some(ctx), cancelled, Then::Done)
                    .await;
                "cancelled"
            }
            Err(err) if err.is_retryable() && attempts < max_attempts => {
                let delay = p.policy.backoff.delay(attempts);
                let error = err.to_string();
                let message = format!(
                    "Attempt {attempts} of {max_attempts} failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                warn!(%error, ?delay, "attempt failed; retrying");
                let retrying = update(TaskStatus::Retrying, &message, attempts, Some(&error), None);
                self.conclude_prepared(p, Some(ctx), retrying, Then::RetryAfter(delay))
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
                self.fail(p, Some(ctx), attempts, step, &error).await;
                "failed"
            }
        }
    }

    /// Marks the task failed and dead-letters it, in one script.
    pub(super) async fn fail(
        &self,
        p: &Prepared,
        ctx: Option<&TaskContext>,
        attempts: u32,
        step: u32,
        error: &str,
    ) {
        let entry = DeadLetter::of(&p.claimed, &p.task, error, attempts);
        let message = format!("Failed: {error}");
        let update = Update {
            status: TaskStatus::Failed,
            step,
            total_steps: p.total_steps,
            message: &message,
            attempts,
            error: Some(error),
            result: None,
            worker: &self.id,
        };
        self.conclude_prepared(p, ctx, update, Then::DeadLetter(&entry))
            .await;
    }

    pub(super) async fn conclude_prepared(
        &self,
        p: &Prepared,
        ctx: Option<&TaskContext>,
        update: Update<'_>,
        then: Then<'_>,
    ) {
        // With a context, the attempt began and ran (it holds a lock only if it has a resource).
        let ran = ctx.map(|_| p.resource.is_some());
        self.conclude(
            &p.claimed,
            &p.task,
            p.new_body.as_deref(),
            ctx,
            ran,
            update,
            then,
        )
        .await
    }

    /// Writes an outcome, retried until it lands, the claim is found lost (nothing written: a
    /// newer attempt owns the task), or the worker stops for good (the claim is then recovered
    /// when its lease runs out). If Redis refuses the task's hash, the task is dead-lettered.
    /// `ran`: the attempt began and ran, on a resource or not.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn conclude(
        &self,
        claimed: &Claimed,
        task: &Task,
        new_body: Option<&str>,
        ctx: Option<&TaskContext>,
        ran: Option<bool>,
        update: Update<'_>,
        then: Then<'_>,
    ) {
        if let Some(ctx) = ctx {
            ctx.settle();
        }
        let finish = Finish::new(claimed, Some(task), Some(&update), &then, new_body);
        let finish = match ran {
            Some(has_resource) => finish.after_run(has_resource),
            None => finish,
        };
        let mut backoff = Backoff::new();
        let mut tries = 0u32;
        loop {
            match self.finish(finish.clone()).await {
                Ok(true) => {
                    self.metrics.redis_ok();
                    return;
                }
                Ok(false) => {
                    warn!(
                        "the claim was lost before the outcome landed; a newer attempt owns the task"
                    );
                    return;
                }
                Err(err) if is_final(&err) => {
                    error!(error = %err, "Redis refuses to record the outcome; dead-lettering");
                    let reason = format!(
                        "Redis refused to record the outcome ({}): {err}",
                        update.message
                    );
                    let entry = DeadLetter::of(claimed, task, &reason, update.attempts);
                    self.abandon(claimed, &entry).await;
                    return;
                }
                Err(err) => {
                    self.note_trouble();
                    tries += 1;
                    if ctx.is_some_and(TaskContext::is_superseded) {
                        warn!(error = %err, "claim lost while retrying the outcome; stopping");
                        return;
                    }
                    if self.draining.load(Ordering::SeqCst) && tries > 8 {
                        error!(error = %err, "cannot record the outcome while stopping; left for lease recovery");
                        return;
                    }
                    let pause = backoff.next();
                    warn!(error = %err, retry_in = ?pause, "cannot record the outcome; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Runs the handler; at the timeout, cancels it and gives it time to undo its work.
async fn run_with_timeout(handler: &dyn Handler, ctx: &Arc<TaskContext>, timeout: Duration) -> Ran {
    // A panicking handler must not leave its task in flight in a live worker.
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
