//! `system.*` tasks: `system.ping` completes after an optional `delay_ms`, echoing its payload. It
//! exercises the whole pipeline (claim, progress, ack) for health checks, crash tests and benchmarks,
//! and is accepted on every queue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Handler, Registry};
use crate::context::TaskContext;
use crate::services::Services;
use crate::task::{Task, TaskError};

/// Registers the `system.*` handlers.
pub fn register(registry: &mut Registry, _services: &Arc<Services>) {
    registry.register("system.ping", Arc::new(Ping));
}

/// `system.ping {delay_ms?, fail?, resource?, ...}`.
struct Ping;

#[derive(Deserialize)]
struct PingArgs {
    /// Milliseconds to wait (in steps of at most 100 ms, each a cancellation point).
    #[serde(default)]
    delay_ms: u64,
    /// Fail with this message on every attempt (retryable), to exercise retries.
    #[serde(default)]
    fail: Option<String>,
    /// Fail on attempts before this one (retryable), to exercise recovery by retry.
    #[serde(default)]
    succeed_on_attempt: Option<u32>,
    /// Lock this resource while running, to exercise per-resource locks.
    #[serde(default)]
    resource: Option<String>,
}

#[async_trait]
impl Handler for Ping {
    fn total_steps(&self, task: &Task) -> u32 {
        if task
            .payload
            .get("delay_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            > 0
        {
            2
        } else {
            0
        }
    }

    fn resource(&self, task: &Task) -> Option<String> {
        task.payload
            .get("resource")
            .and_then(Value::as_str)
            .map(|r| format!("ping:{r}"))
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError> {
        let args: PingArgs = ctx.payload()?;
        if args.delay_ms > 0 {
            ctx.step(format!("Waiting {} ms", args.delay_ms)).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(args.delay_ms);
            loop {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                let slice = (deadline - now).min(Duration::from_millis(100));
                tokio::select! {
                    _ = tokio::time::sleep(slice) => {}
                    _ = ctx.cancellation().cancelled() => {}
                }
                ctx.checkpoint().await?;
            }
            ctx.step("Done waiting").await?;
        }
        if let Some(message) = args.fail {
            return Err(TaskError::Retryable(message));
        }
        if let Some(needed) = args.succeed_on_attempt
            && ctx.attempt() < needed
        {
            return Err(TaskError::Retryable(format!(
                "failing attempt {} of the {needed} needed",
                ctx.attempt()
            )));
        }
        let _ = args.resource;
        Ok(json!({ "pong": true, "echo": ctx.task().payload }))
    }
}
