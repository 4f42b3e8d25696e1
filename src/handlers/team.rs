//! `team.*` tasks: `team.provision`, `team.delete`, `team.restart`, `team.suspend`, `team.resume`.
//! Thin adapters over the shared provisioning engine ([`crate::docker::provision`],
//! [`crate::docker::lifecycle`]) with the team template; each locks `team:<slug>` through
//! [`Handler::resource`].

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Handler, Registry};
use crate::context::TaskContext;
use crate::docker::Engine;
use crate::docker::claim::check_slug;
use crate::docker::lifecycle::{self, Lifecycle};
use crate::docker::provision::{self, ProvisionOptions};
use crate::services::Services;
use crate::task::{Task, TaskError};
use crate::templates::Kind;

/// Registers the `team.*` handlers.
pub fn register(registry: &mut Registry, services: &Arc<Services>) {
    register_kind(registry, services, Kind::Team);
}

/// Registers the handlers of `kind` (shared with `sandbox.*`, which has provision and delete only).
pub(crate) fn register_kind(registry: &mut Registry, services: &Arc<Services>, kind: Kind) {
    let engine = Arc::new(LazyEngine::new(services));
    let name = kind.as_str();
    let add = |registry: &mut Registry, action: &str, op: Op| {
        registry.register(
            &format!("{name}.{action}"),
            Arc::new(TenantHandler {
                kind,
                op,
                engine: engine.clone(),
            }),
        );
    };
    add(registry, "provision", Op::Provision);
    add(registry, "delete", Op::Delete);
    if kind == Kind::Team {
        add(registry, "restart", Op::Lifecycle(Lifecycle::Restart));
        add(registry, "suspend", Op::Lifecycle(Lifecycle::Suspend));
        add(registry, "resume", Op::Lifecycle(Lifecycle::Resume));
    }
}

/// The engine, connected on first use (so registering handlers needs no running engine).
pub(crate) struct LazyEngine {
    config: Arc<crate::config::Config>,
    cell: OnceCell<Engine>,
}

impl LazyEngine {
    fn new(services: &Arc<Services>) -> Self {
        Self {
            config: services.config.clone(),
            cell: OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&Engine, TaskError> {
        self.cell
            .get_or_try_init(|| Engine::connect(&self.config.docker))
            .await
            .map_err(TaskError::from)
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Provision,
    Delete,
    Lifecycle(Lifecycle),
}

struct TenantHandler {
    kind: Kind,
    op: Op,
    engine: Arc<LazyEngine>,
}

/// Payload of every `team.*` / `sandbox.*` task (the schemas say which fields each type allows).
#[derive(Deserialize)]
struct Args {
    slug: String,
    /// `team.provision`: also obtain a certificate for `<slug>.<domain>`.
    #[serde(default)]
    certificate: bool,
    /// `team.delete`: also remove the data volume.
    #[serde(default)]
    purge_data: bool,
}

#[async_trait]
impl Handler for TenantHandler {
    fn total_steps(&self, task: &Task) -> u32 {
        let flag = |k: &str| {
            task.payload
                .get(k)
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        match self.op {
            Op::Provision => provision::provision_steps(flag("certificate")),
            Op::Delete => lifecycle::delete_steps(flag("purge_data")),
            Op::Lifecycle(_) => lifecycle::LIFECYCLE_STEPS,
        }
    }

    fn resource(&self, task: &Task) -> Option<String> {
        task.payload
            .get("slug")
            .and_then(Value::as_str)
            .filter(|s| crate::validate::slug(s).is_ok())
            .map(|s| format!("{}:{s}", self.kind.as_str()))
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError> {
        let args: Args = ctx.payload()?;
        // Before any engine call: an invalid slug never reaches Docker.
        check_slug(&args.slug)?;
        let engine = self.engine.get().await?;
        let services = ctx.services();
        match self.op {
            Op::Provision => {
                let options = ProvisionOptions {
                    certificate: args.certificate,
                };
                provision::provision(engine, services, ctx, self.kind, &args.slug, &options).await
            }
            Op::Delete => {
                lifecycle::delete(
                    engine,
                    services,
                    ctx,
                    self.kind,
                    &args.slug,
                    args.purge_data,
                )
                .await
            }
            Op::Lifecycle(action) => {
                lifecycle::lifecycle(engine, services, ctx, self.kind, &args.slug, action).await
            }
        }
    }
}
