//! The handler seam: each task type has one [`Handler`], registered by its family's module
//! (`system`, `team`, `sandbox`, `dns`, `certificate`). The worker looks handlers up by type name
//! and never names a task type itself.
//!
//! A handler computes the desired state from the task, reads what exists, and applies the
//! difference, so running it twice converges to the same state (delivery is at-least-once). When it
//! fails or is cancelled half-way it undoes what this run created before returning the error.

pub mod certificate;
pub mod dns;
pub mod sandbox;
pub mod system;
pub mod team;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::context::TaskContext;
use crate::services::Services;
use crate::task::{Task, TaskError};

/// Runs tasks of one type.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Steps the task will report, for the percentage (an estimate is fine; 100% comes at completion).
    fn total_steps(&self, task: &Task) -> u32;

    /// The resource this task changes (e.g. `team:acme`), locked so two tasks never change it at
    /// once; `None` for tasks that need no lock.
    fn resource(&self, _task: &Task) -> Option<String> {
        None
    }

    /// Runs the task; returns its result (stored in the hash's `result` field, JSON).
    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError>;
}

/// Handlers by task type.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// Registers `handler` for `task_type`, replacing any earlier one.
    pub fn register(&mut self, task_type: &str, handler: Arc<dyn Handler>) {
        self.handlers.insert(task_type.to_string(), handler);
    }

    /// The handler of `task_type`.
    pub fn get(&self, task_type: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(task_type)
    }

    /// Registered task types, sorted.
    pub fn task_types(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

/// Every handler the product has, wired to `services`.
pub fn registry(services: &Arc<Services>) -> Registry {
    let mut registry = Registry::default();
    certificate::register(&mut registry, services);
    dns::register(&mut registry, services);
    system::register(&mut registry, services);
    team::register(&mut registry, services);
    sandbox::register(&mut registry, services);
    registry
}
