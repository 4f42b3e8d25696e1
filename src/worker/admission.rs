//! Admission: what is checked before a handler runs (envelope, list, schema, handler), and what is
//! settled without running it: rejected bodies (dead-lettered with the reason), duplicates by
//! scoped idempotency key, tasks out of attempts, tasks whose hash Redis refuses to write.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{Instrument, info_span, warn};

use super::{MAX_ATTEMPTS_CAP, Worker, stand_in};
use crate::handlers::Handler;
use crate::progress::{ATTEMPTS_PLACEHOLDER, Update};
use crate::queue::{Begun, Claimed, DeadLetter, Finish, Then};
use crate::queues::Policy;
use crate::task::{Task, TaskStatus};

/// A claimed task that passed the checks, ready to begin.
pub(super) struct Prepared {
    pub claimed: Claimed,
    pub task: Task,
    /// The body with the generated id, when the producer sent none (written back on requeue).
    pub new_body: Option<String>,
    pub handler: Arc<dyn Handler>,
    pub policy: Policy,
    pub resource: Option<String>,
    pub max_attempts: u32,
    pub total_steps: u32,
}

/// A claimed body that cannot run, with why.
pub(super) struct Rejected {
    claimed: Claimed,
    task: Option<Task>,
    reason: String,
}

impl Worker {
    /// Checks a claimed body: readable, declared on its list, payload valid, handled here.
    pub(super) fn prepare(&self, claimed: Claimed) -> Result<Prepared, Box<Rejected>> {
        let max_bytes = self.services.config.worker.max_task_bytes;
        let (task, generated) = match Task::parse(&claimed.body, max_bytes) {
            Ok(parsed) => parsed,
            Err(err) => {
                return Err(Box::new(Rejected {
                    claimed,
                    task: None,
                    reason: err.to_string(),
                }));
            }
        };
        let reject = |claimed, task, reason| {
            Err(Box::new(Rejected {
                claimed,
                task: Some(task),
                reason,
            }))
        };
        let policy = match self.definitions.policy(&claimed.list, &task.task_type) {
            Ok(policy) => policy,
            Err(reason) => return reject(claimed, task, reason),
        };
        if let Err(reason) = self
            .definitions
            .check_payload(&task.task_type, &task.payload)
        {
            return reject(claimed, task, reason);
        }
        let Some(handler) = self.registry.get(&task.task_type).cloned() else {
            let reason = format!("no handler for task type {} in this worker", task.task_type);
            return reject(claimed, task, reason);
        };
        let max_attempts = task
            .max_attempts
            .unwrap_or(policy.max_attempts)
            .clamp(1, MAX_ATTEMPTS_CAP);
        Ok(Prepared {
            new_body: generated.then(|| task.to_body()),
            resource: handler.resource(&task),
            total_steps: handler.total_steps(&task),
            claimed,
            task,
            handler,
            policy,
            max_attempts,
        })
    }

    /// Fails a body that could not be read or does not belong: dead-letter with the reason.
    pub(super) async fn reject(&self, rejected: Box<Rejected>) {
        let Rejected {
            claimed,
            task,
            reason,
        } = *rejected;
        let span = info_span!("task", id = tracing::field::Empty, list = %claimed.list);
        async move {
            warn!(%reason, "rejecting task");
            let task = match task {
                Some(task) => task,
                // Unreadable: announce what we can on the channel the body names, if any.
                None => stand_in(&claimed.body, || uuid::Uuid::new_v4().to_string()),
            };
            let mut entry = DeadLetter::of(&claimed, &task, &reason, 0);
            if task.task_type == "unknown" {
                entry.task_type = None;
            }
            let update = Update {
                status: TaskStatus::Failed,
                step: 0,
                total_steps: 0,
                message: "Rejected",
                attempts: 0,
                error: Some(&reason),
                result: None,
                worker: &self.id,
            };
            self.conclude(
                &claimed,
                &task,
                None,
                None,
                None,
                update,
                Then::DeadLetter(&entry),
            )
            .await;
            self.metrics
                .finished(&task.task_type, "dead_lettered", Duration::ZERO);
        }
        .instrument(span)
        .await;
    }

    /// Settles a begun task that does not run: a duplicate, a wait for the same idempotency key,
    /// out of attempts, or a hash Redis refuses to write.
    pub(super) async fn settle_unrun(&self, p: Prepared, verdict: Begun) {
        let span = info_span!("task", id = %p.task.id, r#type = %p.task.task_type);
        async move {
            match verdict {
                Begun::Duplicate { first, result } => {
                    let result = serde_json::from_str::<Value>(&result).unwrap_or(Value::Null);
                    let result = serde_json::json!({ "duplicate_of": first, "result": result });
                    let message = format!("Duplicate of task {first} (same idempotency key)");
                    let update = Update {
                        status: TaskStatus::Completed,
                        step: p.total_steps,
                        total_steps: p.total_steps,
                        message: &message,
                        attempts: ATTEMPTS_PLACEHOLDER,
                        error: None,
                        result: Some(&result),
                        worker: &self.id,
                    };
                    self.conclude_prepared(&p, None, update, Then::Done).await;
                    self.metrics
                        .finished(&p.task.task_type, "duplicate", Duration::ZERO);
                }
                Begun::IdempotencyWait { first } => {
                    let message = format!(
                        "Waiting: task {first} with the same idempotency key is still running"
                    );
                    let update = Update {
                        status: TaskStatus::Queued,
                        step: 0,
                        total_steps: p.total_steps,
                        message: &message,
                        attempts: ATTEMPTS_PLACEHOLDER,
                        error: None,
                        result: None,
                        worker: "",
                    };
                    let then = Then::RetryAfter(Duration::from_secs(1));
                    self.conclude_prepared(&p, None, update, then).await;
                }
                Begun::Exhausted { .. } => {
                    let error = format!(
                        "gave up after {} attempts (the last one stopped without finishing)",
                        p.max_attempts
                    );
                    self.fail(&p, None, p.max_attempts, 0, &error).await;
                }
                _ => {
                    let reason = "Redis refused to record the task (its hash holds another type)";
                    let entry = DeadLetter::of(&p.claimed, &p.task, reason, 0);
                    self.abandon(&p.claimed, &entry).await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Dead-letters a task without touching its hash, for when Redis refuses to write the hash
    /// (e.g. `task:<id>` is not a hash): the task is kept, with why, rather than left in flight.
    pub(super) async fn abandon(&self, claimed: &Claimed, entry: &DeadLetter) {
        let finish = Finish::new(claimed, None, None, &Then::DeadLetter(entry), None);
        let kept = self
            .retry_redis(
                "dead-letter the task",
                |_| false,
                || self.finish(finish.clone()),
            )
            .await;
        if kept.is_none() {
            warn!("cannot dead-letter either; the claim is left for lease recovery");
        }
        self.metrics.finished(
            entry.task_type.as_deref().unwrap_or("unknown"),
            "dead_lettered",
            Duration::ZERO,
        );
    }
}
