//! The tasks on a tenant that exists: `delete` (workloads, network, DNS name, certificate, and the
//! data volume only when asked; the name space stays its owner's while the data is kept) and
//! `restart` / `suspend` / `resume` of its workloads, whichever backend runs them. Each checks the
//! slug, its kind and its owner first ([`super::claim`]), acts on what exists (deleting what does
//! not exist succeeds), then writes the tenant's record and announces its status
//! ([`super::record`]).

use std::time::Duration;

use serde_json::{Value, json};

use super::Engine;
use super::claim::{check_kind, check_owner, check_slug};
use super::journal::Journal;
use super::record::{delete_record, host, publish, write_record};
use super::report::Progress;
use crate::ownership;
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::{self, Kind};

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
    // A sandbox.delete must never remove a team's name (or the other way round), nor a user
    // another user's tenant.
    check_owner(progress, check_kind(services, kind, slug).await?, "delete")?;
    let containers = engine.workloads(Some((kind, slug))).await?;
    for c in &containers {
        engine.remove_workload(c).await?;
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
    // Volumes are named by the template; read it when it renders, else the default name.
    let volumes = match templates::render(config, kind, slug) {
        Ok(r) => r.volumes,
        Err(_) => vec![format!("{}-data", kind.prefix(slug))],
    };
    if purge_data {
        progress.step("Removing data volume").await?;
        for v in &volumes {
            if engine.remove_volume(v).await? {
                volumes_removed.push(v.clone());
            }
        }
    }
    let mut data_kept = false;
    for v in &volumes {
        data_kept |= engine.volume_exists(v).await?;
    }
    progress.step("Recording state").await?;
    delete_record(services, kind, slug).await?;
    // While its data volume is kept, the slug stays its owner's: nobody else can provision it
    // (and so adopt the data) or set names in its space. Purging the data releases it.
    if !data_kept {
        ownership::forget(&services.redis, kind, slug).await?;
    }
    // Leftover journals of earlier failed tasks of this tenant have nothing left to remove.
    Journal::of_run(progress, services, kind, slug)
        .settle_tenant()
        .await?;
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
    check_owner(
        progress,
        check_kind(services, kind, slug).await?,
        verb.to_lowercase().as_str(),
    )?;
    let containers = engine.workloads(Some((kind, slug))).await?;
    if containers.is_empty() {
        return Err(TaskError::Failed(format!(
            "{} {slug} has no containers: provision it first",
            kind.as_str()
        )));
    }
    // A Swarm service resumes at its template's replicas.
    let rendered = templates::render(&services.config, kind, slug).ok();
    for c in &containers {
        let replicas = rendered
            .as_ref()
            .and_then(|r| r.containers.iter().find(|s| s.name == c.name))
            .map_or(1, |s| s.replicas);
        match action {
            Lifecycle::Restart => engine.restart_workload(c).await?,
            Lifecycle::Suspend => engine.suspend_workload(c).await?,
            Lifecycle::Resume => engine.resume_workload(c, replicas).await?,
        }
    }
    progress.step("Waiting for containers").await?;
    let status = if action == Lifecycle::Suspend {
        "suspended"
    } else {
        let timeout = Duration::from_secs(services.config.docker.health_timeout_s.max(1));
        engine
            .wait_workloads(&containers, timeout, progress.cancellation())
            .await
            .map_err(TaskError::from)?;
        // "active" means reachable (INGRESS_PROBE_URL).
        super::readiness::probe_tenant(
            &services.config,
            kind,
            slug,
            timeout,
            progress.cancellation(),
        )
        .await?;
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
