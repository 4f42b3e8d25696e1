//! Start-first replacement of a container whose template changed (docker backend): the new
//! container starts, turns healthy and is picked up by the ingress before the old one is drained
//! and removed, so a team keeps answering through a template change.
//!
//! Traefik's docker provider routes only to healthy containers, refreshes on `start`, `die` and
//! `health_status` events (after its throttle), and drops *both* containers when two define one
//! router (or service) name with different labels. So:
//! - the new container runs as `<name>-next` (journaled: a failed run removes it and leaves the old
//!   one serving) and is waited on until Docker reports it healthy, then `REPLACE_SETTLE_MS` more
//!   for the ingress to add it;
//! - the old one is then drained: when its healthcheck honours a drain file (template key
//!   `drain_file`, see [`crate::templates::ContainerSpec::health_test`]) the file is created inside
//!   it, it turns unhealthy while still answering, and the ingress stops routing to it; once it has
//!   received nothing for `REPLACE_SETTLE_MS` (the engine's packet counters) it is removed (a container removed while still routed to leaves the ingress sending requests to a
//!   vanished address until its next refresh). Without a drain file it is removed after the settle
//!   delay;
//! - when the routing labels (`traefik.*`) are the same, `<name>-next` carries them (Traefik merges
//!   the two into one service with two servers) and is renamed `<name>` once the old one is gone;
//!   when they differ, `<name>-next` carries them with its routers and services renamed `*-next`
//!   (no name defined twice), and a second hop replaces it by `<name>` with the template's labels.

use std::collections::BTreeMap;
use std::time::Duration;

use super::journal::{EntryKind, Journal};
use super::report::Progress;
use super::{DockerError, Engine, Owned};
use crate::task::TaskError;
use crate::templates::{ContainerSpec, Rendered};

/// Suffix of the transitional container (and of its renamed routers and services).
const NEXT: &str = "-next";

/// How long a replacement waits for each container it starts or drains.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub health_timeout: Duration,
    pub settle: Duration,
}

/// A container on its way out: id, name, and the drain file its healthcheck honours.
struct Outgoing {
    id: String,
    name: String,
    drain_file: Option<String>,
}

/// Replaces `old` by a container of `spec`, start-first (see the module comment); returns the new
/// container's id, named `spec.name`.
#[allow(clippy::too_many_arguments)]
pub async fn start_first(
    engine: &Engine,
    progress: &dyn Progress,
    timing: Timing,
    rendered: &Rendered,
    spec: &ContainerSpec,
    old: &Owned,
    creation: &BTreeMap<String, String>,
    journal: &Journal,
) -> Result<String, TaskError> {
    let next = format!("{}{NEXT}", spec.name);
    // Left by an attempt that stopped mid-replacement (ours, or a conflict is reported).
    if let Some(leftover) = engine.container_state(&next).await? {
        engine.remove_container(&leftover.id, &next).await?;
    }
    let (old_labels, drain_file) = routing_and_drain(engine, &old.id, &old.name).await?;
    let labels = rendered.labels_of(spec);
    let same_routing = routing(&labels) == old_labels;
    progress
        .note(&format!(
            "Replacing {} start-first (template changed: {} -> {}{})",
            old.name,
            old.template_hash,
            rendered.hash,
            if same_routing {
                ""
            } else {
                "; routing labels changed: through a transitional router"
            }
        ))
        .await?;
    journal.record(EntryKind::Container, &next).await?;
    let outgoing = Outgoing {
        id: old.id.clone(),
        name: old.name.clone(),
        drain_file,
    };
    let cancel = progress.cancellation();
    if same_routing {
        let id = hop(
            engine, timing, rendered, spec, &next, None, creation, outgoing, cancel,
        )
        .await?;
        engine.rename(&id, &next, &spec.name).await?;
        return Ok(id);
    }
    let transitional = renamed_routing(&labels, NEXT);
    let id = hop(
        engine,
        timing,
        rendered,
        spec,
        &next,
        Some(transitional),
        creation,
        outgoing,
        cancel,
    )
    .await?;
    let outgoing = Outgoing {
        id,
        name: next.clone(),
        drain_file: spec.drain_file.clone(),
    };
    Ok(hop(
        engine, timing, rendered, spec, &spec.name, None, creation, outgoing, cancel,
    )
    .await?)
}

/// Starts `name` (of `spec`, with `labels` when given), waits until it is healthy and routed, then
/// drains and removes `outgoing`. A new container that does not turn healthy is removed again and
/// the outgoing one keeps serving.
#[allow(clippy::too_many_arguments)]
async fn hop(
    engine: &Engine,
    timing: Timing,
    rendered: &Rendered,
    spec: &ContainerSpec,
    name: &str,
    labels: Option<BTreeMap<String, String>>,
    creation: &BTreeMap<String, String>,
    outgoing: Outgoing,
    cancel: Option<&tokio_util::sync::CancellationToken>,
) -> Result<String, DockerError> {
    let id = engine
        .create_container_as(rendered, spec, name, labels, creation)
        .await?;
    engine.start(&id, name).await?;
    // Docker's health, not the direct probe: the ingress routes to healthy containers only.
    let ids = [(id.clone(), name.to_string())];
    if let Err(e) = engine
        .wait_healthy(&ids, timing.health_timeout, cancel)
        .await
    {
        let _ = engine.remove_container(&id, name).await;
        return Err(e);
    }
    tokio::time::sleep(timing.settle).await;
    if let Some(file) = &outgoing.drain_file {
        let code = engine
            .exec(
                &outgoing.id,
                &outgoing.name,
                // Through `sh`, which a drain-aware healthcheck needs anyway (no `touch` needed).
                vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!(": > '{}'", file.replace('\'', "'\\''")),
                ],
            )
            .await?;
        if code == 0 {
            engine
                .wait_unhealthy(&outgoing.id, &outgoing.name, timing.health_timeout)
                .await?;
            // Until the ingress has stopped sending it requests (its refresh can lag on a busy
            // host): nothing received for the settle delay.
            engine
                .wait_quiet(&outgoing.id, timing.settle, timing.health_timeout)
                .await;
        }
    }
    engine
        .remove_container(&outgoing.id, &outgoing.name)
        .await?;
    Ok(id)
}

/// The `traefik.*` labels of container `id`, and the drain file its healthcheck honours (read
/// from the container, which may come from an older template).
async fn routing_and_drain(
    engine: &Engine,
    id: &str,
    name: &str,
) -> Result<(BTreeMap<String, String>, Option<String>), DockerError> {
    let inspect = engine
        .client()
        .inspect_container(id, None)
        .await
        .map_err(|e| DockerError::engine(format!("inspecting {name}"), e))?;
    let config = inspect.config.unwrap_or_default();
    let labels: BTreeMap<String, String> = config.labels.unwrap_or_default().into_iter().collect();
    let test = config.healthcheck.and_then(|h| h.test).unwrap_or_default();
    Ok((routing(&labels), drain_file_of(&test)))
}

/// The drain file a healthcheck built by `ContainerSpec::health_test` checks, if any.
fn drain_file_of(test: &[String]) -> Option<String> {
    if test.first().map(String::as_str) != Some("CMD-SHELL") {
        return None;
    }
    let rest = test.get(1)?.strip_prefix("test ! -e '")?;
    let (file, _) = rest.split_once("' && ")?;
    (!file.contains('\'')).then(|| file.to_string())
}

/// The labels Traefik reads.
fn routing(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with("traefik."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `labels` with every router and service they define renamed `<name><suffix>` (and the routers'
/// `service` references to them), so they coexist with the original definitions.
fn renamed_routing(labels: &BTreeMap<String, String>, suffix: &str) -> BTreeMap<String, String> {
    let defined = |kind: &str| -> Vec<String> {
        labels
            .keys()
            .filter_map(|k| {
                let parts: Vec<&str> = k.split('.').collect();
                (parts.len() > 4 && parts[0] == "traefik" && parts[2] == kind)
                    .then(|| parts[3].to_string())
            })
            .collect()
    };
    let services = defined("services");
    labels
        .iter()
        .map(|(key, value)| {
            let parts: Vec<&str> = key.split('.').collect();
            if parts.len() > 4
                && parts[0] == "traefik"
                && matches!(parts[2], "routers" | "services")
            {
                let mut renamed: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
                renamed[3] = format!("{}{suffix}", parts[3]);
                let value =
                    if parts[2] == "routers" && parts[4] == "service" && services.contains(value) {
                        format!("{value}{suffix}")
                    } else {
                        value.clone()
                    };
                (renamed.join("."), value)
            } else {
                (key.clone(), value.clone())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_the_drain_file() {
        let spec_test = vec![
            "CMD-SHELL".to_string(),
            "test ! -e '/tmp/draining' && 'wget' '-q' 'http://127.0.0.1:80/'".to_string(),
        ];
        assert_eq!(drain_file_of(&spec_test).as_deref(), Some("/tmp/draining"));
        assert_eq!(drain_file_of(&["CMD".into(), "wget".into()]), None);
    }

    #[test]
    fn renames_routers_and_services_and_their_references() {
        let mut labels = BTreeMap::new();
        labels.insert("traefik.enable".to_string(), "true".to_string());
        labels.insert("traefik.http.routers.a.rule".into(), "Host(`x`)".into());
        labels.insert("traefik.http.routers.a.service".into(), "a".into());
        labels.insert(
            "traefik.http.services.a.loadbalancer.server.port".into(),
            "80".into(),
        );
        labels.insert("orchestrator.slug".into(), "x".into());
        let renamed = renamed_routing(&labels, "-next");
        assert_eq!(renamed["traefik.http.routers.a-next.rule"], "Host(`x`)");
        assert_eq!(renamed["traefik.http.routers.a-next.service"], "a-next");
        assert_eq!(
            renamed["traefik.http.services.a-next.loadbalancer.server.port"],
            "80"
        );
        assert_eq!(renamed["traefik.enable"], "true");
        assert_eq!(renamed["orchestrator.slug"], "x");
    }
}
