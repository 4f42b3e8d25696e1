//! The provisioning engine shared by teams and sandboxes: one implementation parametrised by the
//! tenant [`Kind`] (and so by its template), never two copies.
//!
//! `provision` computes the desired state from the template, reads what exists (containers by
//! name + ownership label, network by exact name, volume, the `team:<slug>` record) and applies the
//! difference, step by step on the task's progress hash. A tenant already as wanted is left alone
//! and the result says so; containers whose template hash label differs are replaced. Whatever a
//! failed or cancelled run created is removed before the error is returned; when Redis does not say
//! the tenant exists (a first provision, or one re-delivered after a crash), everything found of it
//! counts as this run's, so a failure leaves nothing half-made.
//!
//! Redis holds "what exists" per tenant: the `<kind>:<slug>` hash (status, containers, network,
//! template_hash, updated_at) and the `teams` / `sandboxes` set, compared with the engine by
//! [`super::teams::reconcile`].

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::config::Config;
use crate::context::TaskContext;
use crate::keys;
use crate::progress::ResourceEvent;
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::{self, Kind, Rendered};
use crate::validate;

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

/// Status channel of a kind.
pub fn channel(kind: Kind) -> &'static str {
    match kind {
        Kind::Team => keys::TEAM_STATUS,
        Kind::Sandbox => keys::SANDBOX_STATUS,
    }
}

/// Redis key of a tenant's record.
pub fn record_key(kind: Kind, slug: &str) -> String {
    match kind {
        Kind::Team => keys::team(slug),
        Kind::Sandbox => keys::sandbox(slug),
    }
}

/// Redis set of a kind's slugs.
pub fn set_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Team => keys::TEAMS,
        Kind::Sandbox => keys::SANDBOXES,
    }
}

/// Checks a slug before anything reaches the engine.
pub fn check_slug(slug: &str) -> Result<(), TaskError> {
    validate::slug(slug).map_err(TaskError::from)
}

/// The recorded state of a tenant (`<kind>:<slug>` hash).
pub async fn read_record(
    services: &Services,
    kind: Kind,
    slug: &str,
) -> Result<BTreeMap<String, String>, TaskError> {
    let mut conn = services.redis.get().await?;
    let map: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(record_key(kind, slug))
        .query_async(&mut *conn)
        .await?;
    Ok(map)
}

/// Writes the tenant's record and adds it to its set.
async fn write_record(
    services: &Services,
    kind: Kind,
    slug: &str,
    fields: &[(&str, String)],
) -> Result<(), TaskError> {
    let mut conn = services.redis.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut hset = redis::cmd("HSET");
    hset.arg(record_key(kind, slug));
    for (k, v) in fields {
        hset.arg(*k).arg(v);
    }
    hset.arg("updated_at").arg(crate::progress::now());
    pipe.add_command(hset).ignore();
    pipe.cmd("SADD").arg(set_key(kind)).arg(slug).ignore();
    pipe.query_async::<()>(&mut *conn).await?;
    Ok(())
}

/// Forgets a tenant in Redis.
async fn delete_record(services: &Services, kind: Kind, slug: &str) -> Result<(), TaskError> {
    let mut conn = services.redis.get().await?;
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(record_key(kind, slug))
        .ignore()
        .cmd("SREM")
        .arg(set_key(kind))
        .arg(slug)
        .ignore()
        .query_async::<()>(&mut *conn)
        .await?;
    Ok(())
}

async fn publish(
    progress: &dyn Progress,
    services: &Services,
    kind: Kind,
    slug: &str,
    status: &str,
    metadata: Value,
    error: Option<&str>,
) -> Result<(), TaskError> {
    let mut event = ResourceEvent::new(kind.as_str(), slug, status, metadata);
    if let Some(e) = error {
        event = event.with_error(e);
    }
    match progress.context() {
        Some(ctx) => ctx.publish_resource(channel(kind), &event).await,
        None => {
            let mut conn = services.redis.get().await?;
            crate::progress::publish_resource(&mut *conn, channel(kind), &event).await?;
            Ok(())
        }
    }
}

/// What a provision run created, to undo on failure.
#[derive(Default, Debug)]
struct Undo {
    containers: Vec<(String, String)>,
    volumes: Vec<String>,
    network: Option<String>,
    dns: bool,
}

/// Options of a provision.
#[derive(Debug, Clone, Default)]
pub struct ProvisionOptions {
    /// Obtain a certificate for `<slug>.<domain>` (payload `certificate: true`).
    pub certificate: bool,
}

/// Steps [`provision`] reports (for `Handler::total_steps`).
pub fn provision_steps(certificate: bool) -> u32 {
    9 + u32::from(certificate)
}

/// Provisions (or converges) tenant `slug` of `kind`. See the module comment.
pub async fn provision(
    engine: &Engine,
    services: &Services,
    progress: &dyn Progress,
    kind: Kind,
    slug: &str,
    options: &ProvisionOptions,
) -> Result<Value, TaskError> {
    progress
        .step(&format!("Validating {} {slug}", kind.as_str()))
        .await?;
    check_slug(slug)?;
    let config = &services.config;
    let rendered = templates::render(config, kind, slug)
        .map_err(|e| TaskError::Invalid(format!("template: {e}")))?;
    let prior = read_record(services, kind, slug).await?;
    let prior_live = matches!(
        prior.get("status").map(String::as_str),
        Some("active") | Some("suspended")
    );
    publish(
        progress,
        services,
        kind,
        slug,
        "provisioning",
        json!({"subdomain": host(config, slug)}),
        None,
    )
    .await?;

    let mut undo = Undo::default();
    let outcome = converge(
        engine, services, progress, &rendered, options, prior_live, &mut undo,
    )
    .await;
    match outcome {
        Ok(result) => Ok(result),
        Err(error) => {
            let message = error.to_string();
            let rollback = rollback(engine, services, &rendered, &undo).await;
            let message = match rollback {
                Ok(()) => message,
                Err(e) => format!("{message}; rollback incomplete: {e}"),
            };
            if prior_live {
                let _ = write_record(
                    services,
                    kind,
                    slug,
                    &[("status", "failed".into()), ("error", message.clone())],
                )
                .await;
            } else {
                let _ = delete_record(services, kind, slug).await;
            }
            let _ = publish(
                progress,
                services,
                kind,
                slug,
                "failed",
                json!({"subdomain": host(config, slug)}),
                Some(&message),
            )
            .await;
            Err(match error {
                TaskError::Invalid(_) => TaskError::Invalid(message),
                TaskError::Cancelled(_) => TaskError::Cancelled(message),
                TaskError::Retryable(_) => TaskError::Retryable(message),
                TaskError::Failed(_) => TaskError::Failed(message),
                TaskError::Superseded(_) => TaskError::Superseded(message),
            })
        }
    }
}

fn host(config: &Config, slug: &str) -> String {
    format!("{slug}.{}", config.platform.domain.trim_end_matches('.'))
}

async fn converge(
    engine: &Engine,
    services: &Services,
    progress: &dyn Progress,
    rendered: &Rendered,
    options: &ProvisionOptions,
    prior_live: bool,
    undo: &mut Undo,
) -> Result<Value, TaskError> {
    let config = &services.config;
    let kind = rendered.kind;
    let slug = rendered.slug.as_str();
    let adopt = !prior_live;
    let mut changed = false;

    progress
        .step(&format!("Ensuring network {}", rendered.network))
        .await?;
    let labels = if rendered.own_network {
        rendered.ownership_labels()
    } else {
        let mut l = BTreeMap::new();
        l.insert(
            templates::LABEL_MANAGED_BY.to_string(),
            templates::MANAGED_BY_VALUE.to_string(),
        );
        l
    };
    let created = engine.ensure_network(&rendered.network, &labels).await?;
    changed |= created;
    if rendered.own_network && (created || adopt) {
        undo.network = Some(rendered.network.clone());
    }
    let ingress = config.docker.ingress_container.as_str();
    if !ingress.is_empty() {
        changed |= engine
            .connect_to_network(&rendered.network, ingress)
            .await?;
    }

    progress.step("Checking images").await?;
    let mut images: Vec<&str> = rendered
        .containers
        .iter()
        .map(|c| c.image.as_str())
        .collect();
    images.sort_unstable();
    images.dedup();
    for image in images {
        if engine.ensure_image(image).await? {
            progress.note(&format!("Pulled image {image}")).await?;
        }
    }

    progress.step("Creating data volume").await?;
    for volume in &rendered.volumes {
        let created = engine
            .ensure_volume(volume, &rendered.ownership_labels())
            .await?;
        changed |= created;
        if created || adopt {
            undo.volumes.push(volume.clone());
        }
    }

    progress.step("Creating containers").await?;
    let existing = engine.owned_containers(Some((kind, slug))).await?;
    let mut ids = Vec::new();
    for spec in &rendered.containers {
        let found = existing.iter().find(|c| c.name == spec.name);
        let id = match found {
            Some(c) if c.template_hash == rendered.hash => {
                if adopt {
                    undo.containers.push((c.id.clone(), c.name.clone()));
                }
                if c.state != "running" {
                    engine.start(&c.id, &c.name).await?;
                    changed = true;
                }
                c.id.clone()
            }
            other => {
                if let Some(old) = other {
                    progress
                        .note(&format!(
                            "Replacing {} (template changed: {} -> {})",
                            old.name, old.template_hash, rendered.hash
                        ))
                        .await?;
                    engine.remove_container(&old.id, &old.name).await?;
                } else {
                    // A container of this name without our label is a conflict; say so clearly.
                    engine.container_state(&spec.name).await?;
                }
                let id = engine.create_container(rendered, spec).await?;
                undo.containers.push((id.clone(), spec.name.clone()));
                engine.start(&id, &spec.name).await?;
                changed = true;
                id
            }
        };
        ids.push((id, spec.name.clone()));
    }
    // Services the template no longer has.
    for stale in existing
        .iter()
        .filter(|c| !rendered.containers.iter().any(|s| s.name == c.name))
    {
        engine.remove_container(&stale.id, &stale.name).await?;
        changed = true;
    }

    progress
        .step("Waiting for containers to become healthy")
        .await?;
    let timeout = Duration::from_secs(config.docker.health_timeout_s.max(1));
    engine
        .wait_healthy(&ids, timeout, progress.cancellation())
        .await?;

    progress.step("Registering DNS name").await?;
    let line = services.names.add_name(slug).await?;
    if !prior_live {
        undo.dns = true;
    }
    progress.note(&line).await?;

    let mut certificate = Value::Null;
    if options.certificate {
        progress.step("Obtaining certificate").await?;
        if let Some(ctx) = progress.context() {
            let name = kind.prefix(slug);
            certificate = services
                .certificates
                .ensure_certificate(ctx, &name, &[host(config, slug)])
                .await?;
        }
    }

    progress.step("Recording state").await?;
    let container_ids: BTreeMap<String, String> = ids
        .iter()
        .map(|(id, name)| (name.clone(), id.clone()))
        .collect();
    let containers_json = serde_json::to_string(&container_ids).unwrap_or_default();
    write_record(
        services,
        kind,
        slug,
        &[
            ("status", "active".into()),
            ("containers", containers_json),
            ("network", rendered.network.clone()),
            ("template_hash", rendered.hash.clone()),
            ("error", String::new()),
        ],
    )
    .await?;
    let metadata = json!({
        "subdomain": host(config, slug),
        "containers": container_ids,
        "network": rendered.network,
        "template_hash": rendered.hash,
        "changed": changed,
    });
    publish(
        progress,
        services,
        kind,
        slug,
        "active",
        metadata.clone(),
        None,
    )
    .await?;
    progress
        .step(if changed {
            "Provisioned"
        } else {
            "Already up to date: nothing changed"
        })
        .await?;
    let mut result = metadata;
    if let Some(map) = result.as_object_mut() {
        map.insert("slug".into(), slug.into());
        map.insert("certificate".into(), certificate);
    }
    Ok(result)
}

/// Removes what `undo` lists, in reverse order of creation. Runs to the end and reports the first
/// error (a cancelled task must still clean up, so this never checks for cancellation).
async fn rollback(
    engine: &Engine,
    services: &Services,
    rendered: &Rendered,
    undo: &Undo,
) -> Result<(), String> {
    let mut first_error: Option<String> = None;
    let mut keep = |r: Result<(), String>| {
        if let Err(e) = r
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    };
    if undo.dns {
        keep(
            services
                .names
                .remove_name(&rendered.slug)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    for (id, name) in undo.containers.iter().rev() {
        keep(
            engine
                .remove_container(id, name)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    for volume in &undo.volumes {
        keep(
            engine
                .remove_volume(volume)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    if let Some(network) = &undo.network {
        keep(
            engine
                .remove_network(network, &services.config.docker.ingress_container)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    match first_error {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Steps [`delete`] reports.
pub fn delete_steps(purge: bool) -> u32 {
    5 + u32::from(purge)
}

/// Deletes tenant `slug`: containers, network, DNS name, certificate, and the volume only with
/// `purge_data`.
/// Deleting what does not exist succeeds.
pub async fn delete(
    engine: &Engine,
    services: &Services,
    progress: &dyn Progress,
    kind: Kind,
    slug: &str,
    purge_data: bool,
) -> Result<Value, TaskError> {
    progress
        .step(&format!("Removing containers of {} {slug}", kind.as_str()))
        .await?;
    check_slug(slug)?;
    let config = &services.config;
    let containers = engine.owned_containers(Some((kind, slug))).await?;
    for c in &containers {
        engine.remove_container(&c.id, &c.name).await?;
    }
    progress.step("Removing network").await?;
    let network = templates::network_name(config, kind, slug);
    let network_removed = if config.docker.network_mode == "shared" {
        false
    } else {
        engine
            .remove_network(&network, &config.docker.ingress_container)
            .await?
    };
    progress.step("Removing DNS name").await?;
    let line = services.names.remove_name(slug).await?;
    progress.note(&line).await?;
    // A deleted tenant must not leave a certificate served (or renewed) for its name.
    progress.step("Removing certificate").await?;
    let line = services
        .certificates
        .remove_certificate(&kind.prefix(slug))
        .await?;
    progress.note(&line).await?;
    let mut volumes_removed = Vec::new();
    if purge_data {
        progress.step("Removing data volume").await?;
        // Volumes are named by the template; read it when it renders, else the default name.
        let volumes = match templates::render(config, kind, slug) {
            Ok(r) => r.volumes,
            Err(_) => vec![format!("{}-data", kind.prefix(slug))],
        };
        for v in volumes {
            if engine.remove_volume(&v).await? {
                volumes_removed.push(v);
            }
        }
    }
    progress.step("Recording state").await?;
    delete_record(services, kind, slug).await?;
    let removed: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let metadata = json!({
        "subdomain": host(config, slug),
        "containers_removed": removed,
        "network_removed": network_removed,
        "volumes_removed": volumes_removed,
    });
    publish(
        progress,
        services,
        kind,
        slug,
        "deleted",
        metadata.clone(),
        None,
    )
    .await?;
    Ok(metadata)
}

/// What a lifecycle task does to the containers of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Restart every container and wait for health; status `active`.
    Restart,
    /// Stop every container; status `suspended`.
    Suspend,
    /// Start every container and wait for health; status `active`.
    Resume,
}

/// Steps [`lifecycle`] reports.
pub const LIFECYCLE_STEPS: u32 = 3;

/// Restarts, suspends or resumes tenant `slug`.
pub async fn lifecycle(
    engine: &Engine,
    services: &Services,
    progress: &dyn Progress,
    kind: Kind,
    slug: &str,
    action: Lifecycle,
) -> Result<Value, TaskError> {
    let verb = match action {
        Lifecycle::Restart => "Restarting",
        Lifecycle::Suspend => "Stopping",
        Lifecycle::Resume => "Starting",
    };
    progress
        .step(&format!("{verb} containers of {} {slug}", kind.as_str()))
        .await?;
    check_slug(slug)?;
    let containers = engine.owned_containers(Some((kind, slug))).await?;
    if containers.is_empty() {
        return Err(TaskError::Failed(format!(
            "{} {slug} has no containers: provision it first",
            kind.as_str()
        )));
    }
    for c in &containers {
        match action {
            Lifecycle::Restart => engine.restart(&c.id, &c.name).await?,
            Lifecycle::Suspend => engine.stop(&c.id, &c.name, 10).await?,
            Lifecycle::Resume => engine.start(&c.id, &c.name).await?,
        }
    }
    progress.step("Waiting for containers").await?;
    let status = if action == Lifecycle::Suspend {
        "suspended"
    } else {
        let ids: Vec<(String, String)> = containers
            .iter()
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
        let timeout = Duration::from_secs(services.config.docker.health_timeout_s.max(1));
        engine
            .wait_healthy(&ids, timeout, progress.cancellation())
            .await
            .map_err(TaskError::from)?;
        "active"
    };
    progress.step("Recording state").await?;
    write_record(services, kind, slug, &[("status", status.into())]).await?;
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let metadata = json!({"subdomain": host(&services.config, slug), "containers": names});
    publish(
        progress,
        services,
        kind,
        slug,
        status,
        metadata.clone(),
        None,
    )
    .await?;
    Ok(json!({"status": status, "containers": names}))
}
