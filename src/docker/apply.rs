//! The workloads step of a provision, once per backend: given the rendered template and the
//! creation labels of the run, make the tenant's workloads match it and say what changed. With
//! `BACKEND=docker` ([`apply_containers`]) containers are created, started, or replaced
//! start-first ([`super::replace`]) and waited on until ready; with `BACKEND=swarm`
//! ([`apply_services`]) each template service becomes a Swarm service ([`super::swarm`]). Either
//! way a workload is journaled before it is created and one the template no longer has is
//! removed; everything around this step (network, volumes, DNS, certificate, record) is
//! [`super::provision`]'s.

use std::collections::BTreeMap;

use super::Engine;
use super::journal::{EntryKind, Journal};
use super::report::Progress;
use crate::task::TaskError;
use crate::templates::Rendered;

/// The docker backend's part of a provision: containers created, started, or replaced
/// start-first ([`super::replace`]), those the template no longer has removed, then waited on
/// until ready. Returns (id, name) of each and whether anything changed.
pub(super) async fn apply_containers(
    engine: &Engine,
    progress: &dyn Progress,
    rendered: &Rendered,
    creation: &BTreeMap<String, String>,
    journal: &Journal,
    timing: super::replace::Timing,
) -> Result<(Vec<(String, String)>, bool), TaskError> {
    let (kind, slug) = (rendered.kind, rendered.slug.as_str());
    let mut changed = false;
    progress.step("Creating containers").await?;
    let existing = engine.owned_containers(Some((kind, slug))).await?;
    let mut ids = Vec::new();
    let mut replacements = Vec::new();
    for spec in &rendered.containers {
        let found = existing.iter().find(|c| c.name == spec.name);
        let id = match found {
            Some(c) if c.template_hash == rendered.hash => {
                if c.state != "running" {
                    engine.start(&c.id, &c.name).await?;
                    changed = true;
                }
                c.id.clone()
            }
            Some(old) => {
                // Replaced below, all at once: each waits for health and drains on its own.
                replacements.push(super::replace::start_first(
                    engine, progress, timing, rendered, spec, old, creation, journal,
                ));
                continue;
            }
            None => {
                // A container of this name without our label is a conflict; say so clearly.
                engine.container_state(&spec.name).await?;
                journal.record(EntryKind::Container, &spec.name).await?;
                let id = engine
                    .create_container_labelled(rendered, spec, creation)
                    .await?;
                engine.start(&id, &spec.name).await?;
                changed = true;
                id
            }
        };
        ids.push((id, spec.name.clone()));
    }
    if !replacements.is_empty() {
        changed = true;
        let replaced = futures::future::join_all(replacements).await;
        for (spec, id) in rendered
            .containers
            .iter()
            .filter(|s| {
                existing
                    .iter()
                    .any(|c| c.name == s.name && c.template_hash != rendered.hash)
            })
            .zip(replaced)
        {
            ids.push((id?, spec.name.clone()));
        }
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
    super::readiness::wait_ready(
        engine,
        rendered,
        &ids,
        timing.health_timeout,
        progress.cancellation(),
    )
    .await?;
    Ok((ids, changed))
}

/// The Swarm backend's part of a provision: one service per template service, journaled before
/// it is created; services the template no longer has are removed. Returns (id, name) of each and
/// whether anything changed.
pub(super) async fn apply_services(
    engine: &Engine,
    progress: &dyn Progress,
    rendered: &Rendered,
    creation: &BTreeMap<String, String>,
    journal: &Journal,
    node: &str,
) -> Result<(Vec<(String, String)>, bool), TaskError> {
    let existing = engine
        .owned_services(Some((rendered.kind, &rendered.slug)))
        .await?;
    let mut changed = false;
    let mut ids = Vec::new();
    for spec in &rendered.containers {
        let found = existing.iter().find(|s| s.name == spec.name);
        if found.is_none() {
            journal.record(EntryKind::Service, &spec.name).await?;
        }
        let applied = engine.apply_service(rendered, spec, creation, node).await?;
        if let Some(old) = found
            && old.template_hash != rendered.hash
        {
            progress
                .note(&format!(
                    "Rolling update of service {} (template changed: {} -> {}; start-first, \
                     rolled back by Swarm if the new tasks fail)",
                    spec.name, old.template_hash, rendered.hash
                ))
                .await?;
        }
        changed |= applied.changed;
        ids.push((applied.id, spec.name.clone()));
    }
    for stale in existing
        .iter()
        .filter(|s| !rendered.containers.iter().any(|c| c.name == s.name))
    {
        engine.remove_service(&stale.name).await?;
        changed = true;
    }
    Ok((ids, changed))
}
