//! The provisioning engine shared by teams and sandboxes: one implementation parametrised by the
//! tenant [`Kind`] (and so by its template), never two copies.
//!
//! `provision` computes the desired state from the template, reads what exists (containers by
//! name + ownership label, network by exact name, volume, the `team:<slug>` record) and applies the
//! difference, step by step on the task's progress hash. A tenant already as wanted is left alone
//! and the result says so; containers whose template hash label differs are replaced start-first
//! ([`super::replace`]); with `BACKEND=swarm` the workloads are Swarm services instead
//! ([`super::swarm`], updated in place by a rolling start-first update). Whatever the
//! task created is written to its creation journal ([`super::journal`]) before it is created, and a
//! failed or cancelled run removes exactly that, nothing it found (adopted): a failing re-provision
//! never touches a live team, its DNS name or a retained data volume. Before any side effect the
//! slug is checked (length of every derived name, reserved names) and claimed for its kind and
//! owner ([`crate::ownership`]): a team and a sandbox never share a slug.
//!
//! Redis holds "what exists" per tenant: the `<kind>:<slug>` hash (status, containers, network,
//! template_hash, updated_at) and the `teams` / `sandboxes` set, compared with the engine by
//! [`super::teams::reconcile`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::Engine;
use super::journal::{EntryKind, Journal};
use super::report::Progress;
use crate::config::Config;
use crate::context::TaskContext;
use crate::keys;
use crate::ownership;
use crate::progress::ResourceEvent;
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::{self, Kind, Rendered};
use crate::validate;

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

/// The creation journal of this run: the task's, or (reconcile --fix, no task) a run of its own.
fn journal_for(progress: &dyn Progress, services: &Services, kind: Kind, slug: &str) -> Journal {
    let (id, fence) = match progress.context() {
        // The attempt's fencing token: written into journal entries and creation labels.
        Some(ctx) => (ctx.task().id.clone(), ctx.fence()),
        None => (format!("reconcile-{}", uuid::Uuid::new_v4()), 0),
    };
    Journal::new(services.redis.clone(), &id, fence, kind, slug)
}

/// Refuses a lifecycle task on a tenant another user owns. The platform (no `user_id`: the CLI,
/// `reconcile --fix`) may run any tenant's lifecycle.
fn check_owner(
    progress: &dyn Progress,
    claim: Option<ownership::Tenant>,
    action: &str,
) -> Result<(), TaskError> {
    let principal = progress
        .context()
        .map(|ctx| ownership::principal(ctx.task()))
        .unwrap_or_default();
    match claim {
        Some(tenant) if !principal.is_empty() && tenant.owner != principal => {
            Err(TaskError::Invalid(format!(
                "refused: {} {} belongs to {}; {action} from user {principal:?} is refused",
                tenant.kind.as_str(),
                tenant.slug,
                if tenant.owner.is_empty() {
                    "the platform".to_string()
                } else {
                    format!("user {:?}", tenant.owner)
                },
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses `slug` when the other kind of tenant has it (claimed, or recorded before claims
/// existed). Returns this kind's claim, if any.
async fn check_kind(
    services: &Services,
    kind: Kind,
    slug: &str,
) -> Result<Option<ownership::Tenant>, TaskError> {
    let claim = ownership::lookup(&services.redis, slug).await?;
    if let Some(tenant) = &claim
        && tenant.kind != kind
    {
        return Err(ownership::kind_conflict(kind, slug, tenant.kind.as_str()));
    }
    let other = match kind {
        Kind::Team => Kind::Sandbox,
        Kind::Sandbox => Kind::Team,
    };
    if claim.is_none() && !read_record(services, other, slug).await?.is_empty() {
        return Err(ownership::kind_conflict(kind, slug, other.as_str()));
    }
    Ok(claim)
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
    validate::tenant_names(slug, &config.platform.domain)?;
    let rendered = templates::render(config, kind, slug)
        .map_err(|e| TaskError::Invalid(format!("template: {e}")))?;
    check_owner(
        progress,
        check_kind(services, kind, slug).await?,
        "provision",
    )?;
    let journal = journal_for(progress, services, kind, slug);
    // An earlier attempt of this task was killed (or lost the engine) while rolling back: finish
    // that first, then provision afresh.
    if journal.rolling_back().await? {
        progress
            .note("Finishing the rollback an earlier attempt started")
            .await?;
        journal.rollback(engine, services).await.map_err(|e| {
            TaskError::Retryable(format!("rollback of an earlier attempt incomplete: {e}"))
        })?;
    }
    // Read after that rollback, which may have released a claim an earlier attempt made.
    let claim = check_kind(services, kind, slug).await?;
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

    let fresh = Fresh {
        claimed: claim.is_some(),
        recorded: !prior.is_empty(),
    };
    let outcome = converge_with_certificate(
        engine, services, progress, &rendered, options, fresh, &journal,
    )
    .await;
    match outcome {
        Ok(result) => {
            // Everything of the tenant that exists now is the tenant's: no journal may remove it.
            journal.finish().await?;
            journal.settle_tenant().await?;
            Ok(result)
        }
        // A newer attempt owns the task: what exists is its work now, leave it alone.
        Err(error @ TaskError::Superseded(_)) => Err(error),
        Err(error) => {
            // Fenced before anything is removed: a stale attempt that failed for another reason
            // learns here that it was superseded.
            if let Err(superseded @ TaskError::Superseded(_)) =
                progress.note("Rolling back what this task created").await
            {
                return Err(superseded);
            }
            let message = error.to_string();
            let rollback = journal.rollback(engine, services).await;
            let incomplete = rollback.is_err();
            let message = match rollback {
                Ok(_) => message,
                Err(e) => format!(
                    "{message}; rollback incomplete (finished by the next attempt or \
                     `orchestrator reconcile --fix`): {e}"
                ),
            };
            // Keep the record while anything of the tenant is left: an unrecorded tenant's
            // containers are what `reconcile --fix` removes.
            let remaining = engine
                .workloads(Some((kind, slug)))
                .await
                .map(|c| !c.is_empty())
                .unwrap_or(true);
            if prior_live || !prior.is_empty() || remaining {
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
                TaskError::Cancelled(_) => TaskError::Cancelled(message),
                // The next attempt finishes the rollback first.
                _ if incomplete => TaskError::Retryable(message),
                TaskError::Invalid(_) => TaskError::Invalid(message),
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

/// What the tenant was before this run.
#[derive(Debug, Clone, Copy)]
struct Fresh {
    /// `tenant:<slug>` existed (for this kind).
    claimed: bool,
    /// `<kind>:<slug>` existed.
    recorded: bool,
}

/// Claims the tenant's name space if nobody has (journaled, so a rolled-back first provision
/// releases it); a brand-new tenant takes over records squatted in its space.
async fn claim_space(
    services: &Services,
    progress: &dyn Progress,
    rendered: &Rendered,
    fresh: Fresh,
    journal: &Journal,
) -> Result<(), TaskError> {
    if fresh.claimed {
        return Ok(());
    }
    let slug = rendered.slug.as_str();
    let owner = progress
        .context()
        .map(|ctx| ownership::principal(ctx.task()).to_string())
        .unwrap_or_default();
    journal.record(EntryKind::Claim, slug).await?;
    let created = ownership::claim(
        &services.redis,
        rendered.kind,
        slug,
        &owner,
        journal.task_id(),
    )
    .await?;
    if created && !fresh.recorded {
        let line = services.names.clear_space(slug).await?;
        if !line.is_empty() {
            progress.note(&line).await?;
        }
        let name = rendered.kind.prefix(slug);
        if services.certificates.has_certificate(&name).await? {
            let line = services.certificates.remove_certificate(&name).await?;
            progress
                .note(&format!("{line} (issued before the tenant existed)"))
                .await?;
        }
    }
    Ok(())
}

/// The certificate order of a provision, started with the containers (it needs none of them: DNS-01
/// only needs the zone), awaited at the certificate step.
type CertificateOrder = tokio::sync::oneshot::Receiver<Result<Value, TaskError>>;

/// [`converge`] with the certificate order running alongside; a failure of the containers drops
/// the order (its drop guards withdraw the challenge records).
async fn converge_with_certificate(
    engine: &Engine,
    services: &Services,
    progress: &dyn Progress,
    rendered: &Rendered,
    options: &ProvisionOptions,
    fresh: Fresh,
    journal: &Journal,
) -> Result<Value, TaskError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let config = &services.config;
    let order = async {
        let result = match progress.context() {
            // With CERT_ISSUER=traefik the team routers name Traefik's resolver: one issuer per host.
            _ if config.platform.traefik_issues() => Ok(json!({
                "issuer": "traefik",
                "resolver": config.platform.traefik_certresolver,
            })),
            Some(ctx) if options.certificate => {
                order_certificate(services, ctx, rendered, journal).await
            }
            _ => Ok(Value::Null),
        };
        let _ = sender.send(result);
    };
    let converge = std::pin::pin!(converge(
        engine, services, progress, rendered, options, fresh, journal, receiver
    ));
    match futures::future::select(converge, std::pin::pin!(order)).await {
        futures::future::Either::Left((result, _order)) => result,
        futures::future::Either::Right(((), converge)) => converge.await,
    }
}

/// Orders the tenant's certificate, journaled first (a failed run removes only a certificate it
/// made, never one the tenant already had).
async fn order_certificate(
    services: &Services,
    ctx: &TaskContext,
    rendered: &Rendered,
    journal: &Journal,
) -> Result<Value, TaskError> {
    let name = rendered.kind.prefix(&rendered.slug);
    if !services.certificates.has_certificate(&name).await? {
        journal.record(EntryKind::Certificate, &name).await?;
    }
    let host = host(&services.config, &rendered.slug);
    services
        .certificates
        .ensure_certificate(ctx, &name, &[host])
        .await
}

#[allow(clippy::too_many_arguments)]
async fn converge(
    engine: &Engine,
    services: &Services,
    progress: &dyn Progress,
    rendered: &Rendered,
    options: &ProvisionOptions,
    fresh: Fresh,
    journal: &Journal,
    certificate_order: CertificateOrder,
) -> Result<Value, TaskError> {
    let config = &services.config;
    let mut changed = false;

    progress
        .step(&format!("Ensuring network {}", rendered.network))
        .await?;
    // The backend's node in its swarm (volumes are node-local: stateful services are pinned
    // there); checked before anything is created.
    let node = if config.docker.swarm() {
        Some(engine.swarm_node().await?)
    } else {
        None
    };
    claim_space(services, progress, rendered, fresh, journal).await?;
    let creation = journal.creation_labels();
    let labels = if rendered.own_network {
        let mut l = rendered.ownership_labels();
        l.extend(creation.clone());
        l
    } else {
        let mut l = BTreeMap::new();
        l.insert(
            templates::LABEL_MANAGED_BY.to_string(),
            templates::MANAGED_BY_VALUE.to_string(),
        );
        l
    };
    // Journaled before it is created; the shared network is never this task's.
    if rendered.own_network && engine.find_network(&rendered.network).await?.is_none() {
        journal
            .record(EntryKind::Network, &rendered.network)
            .await?;
    }
    changed |= engine
        .ensure_network_with(&rendered.network, &labels, node.is_some())
        .await?;
    let ingress = &config.docker.ingress_container;
    changed |= match node {
        Some(_) => {
            engine
                .attach_ingress_swarm(&rendered.network, ingress)
                .await?
        }
        None => engine.attach_ingress(&rendered.network, ingress).await?,
    };

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
        // A volume that exists (a live team's, or one kept by `delete` without purge_data) is
        // adopted, never journaled: no rollback can remove it.
        if !engine.volume_exists(volume).await? {
            journal.record(EntryKind::Volume, volume).await?;
        }
        let mut labels = rendered.ownership_labels();
        labels.extend(creation.clone());
        changed |= engine.ensure_volume(volume, &labels).await?;
    }

    let timeout = Duration::from_secs(config.docker.health_timeout_s.max(1));
    let timing = super::replace::Timing {
        health_timeout: timeout,
        settle: Duration::from_millis(config.docker.replace_settle_ms),
    };
    let (ids, workloads_changed) = match &node {
        Some(node) => {
            progress.step("Creating services").await?;
            let applied =
                apply_services(engine, progress, rendered, &creation, journal, node).await?;
            progress.step("Waiting for services to run").await?;
            let names = rendered.container_names();
            engine
                .wait_services(
                    &names,
                    Some(&rendered.hash),
                    timeout,
                    progress.cancellation(),
                )
                .await?;
            applied
        }
        None => apply_containers(engine, progress, rendered, &creation, journal, timing).await?,
    };
    finish(
        services,
        progress,
        rendered,
        options,
        journal,
        certificate_order,
        ids,
        changed || workloads_changed,
    )
    .await
}

/// The docker backend's part of [`converge`]: containers created, started, or replaced
/// start-first ([`super::replace`]), those the template no longer has removed, then waited on
/// until ready. Returns (id, name) of each and whether anything changed.
async fn apply_containers(
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

/// The Swarm backend's part of [`converge`]: one service per template service, journaled before
/// it is created; services the template no longer has are removed. Returns (id, name) of each and
/// whether anything changed.
async fn apply_services(
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

/// The steps after the workloads run, shared by both backends: DNS name, certificate, "active
/// means reachable", the record and the status event.
#[allow(clippy::too_many_arguments)]
async fn finish(
    services: &Services,
    progress: &dyn Progress,
    rendered: &Rendered,
    options: &ProvisionOptions,
    journal: &Journal,
    certificate_order: CertificateOrder,
    ids: Vec<(String, String)>,
    changed: bool,
) -> Result<Value, TaskError> {
    let config = &services.config;
    let kind = rendered.kind;
    let slug = rendered.slug.as_str();
    let timeout = Duration::from_secs(config.docker.health_timeout_s.max(1));
    progress.step("Registering DNS name").await?;
    if !services.names.has_name(slug).await? {
        journal.record(EntryKind::Dns, slug).await?;
    }
    let line = services.names.add_name(slug).await?;
    progress.note(&line).await?;

    let mut certificate = Value::Null;
    if options.certificate {
        progress.step("Obtaining certificate").await?;
        // Ordered since the start of the run (see `converge_with_certificate`).
        certificate = certificate_order.await.map_err(|_| {
            TaskError::Retryable("the certificate order stopped without an outcome".into())
        })??;
    }

    progress.step("Recording state").await?;
    // "active" means reachable: the team answers through the ingress at its host.
    if let Some(url) = config.platform.ingress_probe_url.as_deref() {
        let host = host(config, slug);
        let serial = certificate["serial"].as_str();
        let took = super::readiness::probe_ingress(
            url,
            rendered,
            &host,
            serial,
            timeout,
            progress.cancellation(),
        )
        .await?;
        progress
            .note(&format!(
                "{host} answers through the ingress ({} ms)",
                took.as_millis()
            ))
            .await?;
    }
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
    journal_for(progress, services, kind, slug)
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
