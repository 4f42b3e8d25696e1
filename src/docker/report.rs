//! How a provisioning run reports its steps and learns it should stop: through a task's context
//! (a `team.*`/`sandbox.*` task) or through nothing at all (`reconcile --fix`, which has no task).
//! Its own module so that the pieces of a run (convergence, start-first replacement, Swarm) share
//! it without importing each other.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::context::TaskContext;
use crate::task::TaskError;

/// Where a provisioning run reports its steps: a task's context, or nothing (reconcile --fix).
#[async_trait]
pub trait Progress: Send + Sync {
    /// Starts the next step; the cancellation point.
    async fn step(&self, message: &str) -> Result<(), TaskError>;
    /// A message within the step.
    async fn note(&self, message: &str) -> Result<(), TaskError>;
    /// Fires when the run should stop waiting.
    fn cancellation(&self) -> Option<&CancellationToken>;
    /// The task context, when there is one (certificates are only obtained inside a task).
    fn context(&self) -> Option<&TaskContext>;
}

#[async_trait]
impl Progress for TaskContext {
    async fn step(&self, message: &str) -> Result<(), TaskError> {
        TaskContext::step(self, message).await
    }
    async fn note(&self, message: &str) -> Result<(), TaskError> {
        TaskContext::note(self, message).await
    }
    fn cancellation(&self) -> Option<&CancellationToken> {
        Some(TaskContext::cancellation(self))
    }
    fn context(&self) -> Option<&TaskContext> {
        Some(self)
    }
}

/// Reports nothing and is never cancelled.
pub struct Quiet;

#[async_trait]
impl Progress for Quiet {
    async fn step(&self, _message: &str) -> Result<(), TaskError> {
        Ok(())
    }
    async fn note(&self, _message: &str) -> Result<(), TaskError> {
        Ok(())
    }
    fn cancellation(&self) -> Option<&CancellationToken> {
        None
    }
    fn context(&self) -> Option<&TaskContext> {
        None
    }
}
