//! The provisioning engine shared by teams and sandboxes: one implementation parametrised by the
//! tenant [`Kind`] (and so by its template), never two copies.
//!
//! `provision` computes the desired state from the template, reads what exists (containers by
//! name + ownership label, network by exact name, volume, the `team:<slug>` record) and applies the
//! difference, step by step on the task's progress hash. A tenant already as wanted is left alone
//! and the result says so; the workloads step is the backend's ([`super::apply`]: containers
//! replaced start-first when their template hash label differs, or with `BACKEND=swarm` Swarm
//! services updated in place by a rolling start-first update). Whatever the
//! task created is written to its creation journal ([`super::journal`]) before it is created, and a
//! failed or cancelled run removes exactly that, nothing it found (adopted): a failing re-provision
//! never touches a live team, its DNS name or a retained data volume. Before any side effect the
//! slug is checked (length of every derived name, reserved names) and claimed for its kind and
//! owner ([`super::claim`]): a team and a sandbox never share a slug. The certificate is ordered
//! alongside the workloads and awaited after them.
//!
//! Redis holds "what exists" per tenant ([`super::record`]), compared with the engine by
//! [`super::teams::reconcile`]. Deleting a tenant and restarting, suspending or resuming it are
//! [`super::lifecycle`]'s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::Engine;
use super::apply::{apply_containers, apply_services};
use super::claim::{Fresh, check_kind, check_owner, check_slug, claim_space};
use super::journal::{EntryKind, Journal};
use super::record::{delete_record, host, publish, read_record, write_record};
use super::report::Progress;
use crate::context::TaskContext;
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::{self, Kind, Rendered};
use crate::validate;

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
    let journal = Journal::of_run(progress, services, kind, slug);
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
