//! What a handler sees while it runs a task: the task, its progress reporting, cancellation, and the
//! shared services. The worker builds one [`TaskContext`] per attempt.
//!
//! Handlers report each step with [`TaskContext::step`], which is also the cancellation point: a task
//! cancelled by `orchestrator cancel`, by its timeout or by shutdown gets `Err(TaskError::Cancelled)`
//! at its next step, and the handler undoes what it created on its way out.
//!
//! Each attempt carries the fencing token of its claim ([`TaskContext::fence`]): its progress
//! writes are refused once a newer attempt owns the task, and the handler then gets
//! `Err(TaskError::Superseded)` and must stop without undoing the newer attempt's work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::progress::{self, ResourceEvent, Update};
use crate::services::{Services, TaskReporter};
use crate::task::{Task, TaskError, TaskStatus};

/// The context of one attempt of one task.
pub struct TaskContext {
    task: Task,
    attempt: u32,
    total_steps: u32,
    step: AtomicU32,
    /// Held while a step or a note is numbered and written: work running alongside the steps (the
    /// certificate order of a provision) can't slip a note between a step's number and its title,
    /// so every step's first event is its title and a step's notes come after it.
    reporting: Mutex<()>,
    worker: String,
    cancel: CancellationToken,
    /// Why the token was cancelled (user, timeout, shutdown), for the error message.
    cancel_reason: Mutex<Option<String>>,
    services: Arc<Services>,
    /// The claim this attempt runs under (handle, fence); `None` outside a worker (tests, benches).
    lease: Option<(String, u64)>,
    /// Set once the claim is known to be lost.
    superseded: AtomicBool,
    /// Set when the worker starts writing the outcome (the finishing script checks the fence).
    settling: AtomicBool,
}

impl TaskContext {
    /// A context for `attempt` (1-based) of `task`, reporting `total_steps` steps.
    pub fn new(
        task: Task,
        attempt: u32,
        total_steps: u32,
        worker: String,
        services: Arc<Services>,
    ) -> Self {
        Self {
            task,
            attempt,
            total_steps,
            step: AtomicU32::new(0),
            reporting: Mutex::new(()),
            worker,
            cancel: CancellationToken::new(),
            cancel_reason: Mutex::new(None),
            services,
            lease: None,
            superseded: AtomicBool::new(false),
            settling: AtomicBool::new(false),
        }
    }

    /// The same context bound to the claim `handle` with fencing token `fence`.
    pub fn with_lease(mut self, handle: String, fence: u64) -> Self {
        self.lease = Some((handle, fence));
        self
    }

    /// The fencing token of this attempt: unique and increasing per task (0 outside a worker).
    /// What a handler creates can carry it, so a rollback removes only its own attempt's work.
    pub fn fence(&self) -> u64 {
        self.lease.as_ref().map(|(_, fence)| *fence).unwrap_or(0)
    }

    /// The claim handle of this attempt, if it runs under one.
    pub fn handle(&self) -> Option<&str> {
        self.lease.as_ref().map(|(handle, _)| handle.as_str())
    }

    /// Whether this attempt lost its claim to a newer one.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::SeqCst)
    }

    /// Marks that the outcome is being written: from now on the finishing script decides whether
    /// the claim still holds, so a renewal that races with it is not taken for a lost lease.
    pub fn settle(&self) {
        self.settling.store(true, Ordering::SeqCst);
    }

    /// Whether the outcome is being written.
    pub fn is_settling(&self) -> bool {
        self.settling.load(Ordering::SeqCst)
    }

    /// Marks the attempt superseded and cancels it, so the handler stops at its next step.
    pub async fn supersede(&self, reason: &str) {
        self.superseded.store(true, Ordering::SeqCst);
        self.cancel(reason).await;
    }

    /// The task being run.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The shared services (config, Redis, DNS, certificates).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The payload as the handler's typed arguments (already checked against the JSON Schema).
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_value(self.task.payload.clone())
            .map_err(|e| TaskError::Invalid(format!("payload: {e}")))
    }

    /// The step reached so far.
    pub fn current_step(&self) -> u32 {
        self.step.load(Ordering::Relaxed)
    }

    /// Steps this task reports in all.
    pub fn total_steps(&self) -> u32 {
        self.total_steps
    }

    /// Starts the next step: stops with `Cancelled` if the task was cancelled, otherwise records the
    /// step and its message in the progress hash and on the task's channel.
    pub async fn step(&self, message: impl AsRef<str>) -> Result<(), TaskError> {
        self.checkpoint().await?;
        let cancel_requested = {
            let _numbering = self.reporting.lock().await;
            let step = self.step.fetch_add(1, Ordering::Relaxed) + 1;
            self.report(step, message.as_ref()).await?
        };
        if cancel_requested {
            self.cancel("cancelled by request").await;
            return Err(self.cancelled_error().await);
        }
        Ok(())
    }

    /// Reports a message within the current step (e.g. "waiting for health: 2/3 healthy").
    pub async fn note(&self, message: impl AsRef<str>) -> Result<(), TaskError> {
        let _numbering = self.reporting.lock().await;
        self.report(self.current_step(), message.as_ref()).await?;
        Ok(())
    }

    /// Fails with `Cancelled` if the task was cancelled; otherwise does nothing.
    pub async fn checkpoint(&self) -> Result<(), TaskError> {
        if self.cancel.is_cancelled() {
            return Err(self.cancelled_error().await);
        }
        Ok(())
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A token that fires on cancellation, for waits that should end early.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Cancels the task with a reason; the handler sees it at its next step.
    pub async fn cancel(&self, reason: &str) {
        let mut slot = self.cancel_reason.lock().await;
        if slot.is_none() {
            *slot = Some(reason.to_string());
        }
        self.cancel.cancel();
    }

    async fn cancelled_error(&self) -> TaskError {
        let reason = self.cancel_reason.lock().await.clone();
        let reason = reason.unwrap_or_else(|| "cancelled".into());
        if self.is_superseded() {
            return TaskError::Superseded(reason);
        }
        TaskError::Cancelled(reason)
    }

    /// Publishes a resource lifecycle event (`team:status`, `sandbox:status`).
    pub async fn publish_resource(
        &self,
        channel: &str,
        event: &ResourceEvent,
    ) -> Result<(), TaskError> {
        let mut conn = self.services.redis.get().await?;
        progress::publish_resource(&mut conn, channel, event).await?;
        Ok(())
    }

    /// Records a step; returns whether a cancellation was requested in the hash meanwhile.
    async fn report(&self, step: u32, message: &str) -> Result<bool, TaskError> {
        let mut conn = self.services.redis.get().await?;
        let update = Update {
            status: TaskStatus::Processing,
            step,
            total_steps: self.total_steps,
            message,
            attempts: self.attempt,
            error: None,
            result: None,
            worker: &self.worker,
        };
        let Some((handle, fence)) = &self.lease else {
            let recorded = progress::record(&mut conn, &self.task, &update).await?;
            return Ok(recorded.cancel_requested);
        };
        let lease = progress::Lease {
            handle,
            fence: *fence,
        };
        match progress::record_fenced(&mut conn, &self.task, &update, lease).await? {
            Some(recorded) => Ok(recorded.cancel_requested),
            None => {
                let reason = "a newer attempt owns the task (this one stalled past its lease)";
                self.supersede(reason).await;
                Err(TaskError::Superseded(reason.into()))
            }
        }
    }
}

#[async_trait::async_trait]
impl TaskReporter for TaskContext {
    async fn step(&self, message: &str) -> Result<(), TaskError> {
        TaskContext::step(self, message).await
    }
    async fn note(&self, message: &str) -> Result<(), TaskError> {
        TaskContext::note(self, message).await
    }
    async fn checkpoint(&self) -> Result<(), TaskError> {
        TaskContext::checkpoint(self).await
    }
    fn cancellation(&self) -> &CancellationToken {
        TaskContext::cancellation(self)
    }
}
