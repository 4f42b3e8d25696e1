//! Containers: created from a rendered [`ContainerSpec`] (labels as a map, restart policy, memory,
//! CPU and pids limits, healthcheck, the data volume, one network with the service name as alias),
//! found by name + ownership label, started, stopped, removed, and waited on until healthy.
//!
//! The worker only ever touches containers carrying `orchestrator.managed-by=orchestrator`; a
//! container of the wanted name without it is a conflict, never removed.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{DockerError, Engine, is_not_found, owned_by_us};
use crate::templates::{
    ContainerSpec, Kind, LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_TEMPLATE_HASH, MANAGED_BY_VALUE,
    Rendered,
};

/// What kind of engine object runs a template service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// A container (`BACKEND=docker`).
    Container,
    /// A Swarm service (`BACKEND=swarm`).
    Service,
}

/// Label Swarm puts on the containers of a service's tasks: such a container is the service's,
/// never a docker-backend container (see [`Engine::owned_containers`]).
pub const LABEL_SWARM_SERVICE: &str = "com.docker.swarm.service.id";

/// A container (or Swarm service) the orchestrator owns, as found in the engine.
#[derive(Debug, Clone, Serialize)]
pub struct Owned {
    pub id: String,
    pub name: String,
    /// Container or Swarm service.
    pub workload: Workload,
    pub kind: Option<Kind>,
    pub slug: String,
    pub service: String,
    pub template_hash: String,
    /// `running`, `exited`, `created`, ...
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or empty (no healthcheck / not inspected).
    pub health: String,
}

/// The state of one container as read by inspect.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerState {
    pub id: String,
    pub status: String,
    pub health: String,
    pub exit_code: i64,
    pub restart_count: i64,
    pub has_healthcheck: bool,
}

/// The label filters of what the orchestrator owns, optionally of one tenant only.
pub(crate) fn owner_filters(tenant: Option<(Kind, &str)>) -> Vec<String> {
    let mut filters = vec![format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}")];
    if let Some((kind, slug)) = tenant {
        filters.push(format!("{}={slug}", kind.label()));
    }
    filters
}

impl Engine {
    /// Every container owned by the orchestrator, optionally only those of one tenant. Containers of
    /// Swarm services' tasks are not containers of the docker backend: left out, whatever their
    /// labels (a `reconcile --fix` must never take them for orphans).
    pub async fn owned_containers(
        &self,
        tenant: Option<(Kind, &str)>,
    ) -> Result<Vec<Owned>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("label", owner_filters(tenant));
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .client()
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::engine("listing containers", e))?;
        let mut owned = Vec::new();
        for summary in list {
            let labels = summary.labels.unwrap_or_default();
            if labels.contains_key(LABEL_SWARM_SERVICE) {
                continue;
            }
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            owned.push(Owned {
                workload: Workload::Container,
                id: summary.id.unwrap_or_default(),
                name: summary
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                kind: Kind::parse(&get(crate::templates::LABEL_KIND)),
                slug: get(crate::templates::LABEL_SLUG),
                service: get(LABEL_SERVICE),
                template_hash: get(LABEL_TEMPLATE_HASH),
                state: summary.state.map(|s| s.to_string()).unwrap_or_default(),
                health: String::new(),
            });
        }
        owned.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(owned)
    }

    /// Inspects container `name_or_id`: `None` when absent; `Err(Conflict)` when it exists but is
    /// not the orchestrator's.
    pub async fn container_state(
        &self,
        name_or_id: &str,
    ) -> Result<Option<ContainerState>, DockerError> {
        let inspect = match self.client().inspect_container(name_or_id, None).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(DockerError::engine(format!("inspecting {name_or_id}"), e)),
        };
        let labels = inspect.config.as_ref().and_then(|c| c.labels.clone());
        if !owned_by_us(labels.as_ref()) {
            return Err(DockerError::Conflict(format!(
                "container name {} is taken by a container the orchestrator does not manage",
                name_or_id
            )));
        }
        let has_healthcheck = inspect
            .config
            .as_ref()
            .and_then(|c| c.healthcheck.as_ref())
            .and_then(|h| h.test.as_ref())
            .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
        let state = inspect.state.unwrap_or_default();
        Ok(Some(ContainerState {
            id: inspect.id.unwrap_or_default(),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            exit_code: state.exit_code.unwrap_or(0),
            restart_count: inspect.restart_count.unwrap_or(0),
            has_healthcheck,
        }))
    }

    /// Creates the container of `spec` (not started); returns its id.
    pub async fn create_container(
        &self,
        rendered: &Rendered,
        spec: &ContainerSpec,
    ) -> Result<String, DockerError> {
        self.create_container_labelled(rendered, spec, &Default::default())
            .await
    }

    /// Creates the container of `spec` with `extra` labels besides the template's (the creating
    /// task and attempt, see [`super::journal`]); returns its id.
    pub async fn create_container_labelled(
        &self,
        rendered: &Rendered,
        spec: &ContainerSpec,
        extra: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, DockerError> {
        self.create_container_as(rendered, spec, &spec.name, None, extra)
            .await
    }

    /// [`Engine::create_container_labelled`] under another container `name`, with `labels` instead
    /// of the template's when given (a start-first replacement's transitional container).
    pub async fn create_container_as(
        &self,
        rendered: &Rendered,
        spec: &ContainerSpec,
        name: &str,
        labels: Option<std::collections::BTreeMap<String, String>>,
        extra: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, DockerError> {
        let mut body = container_body(rendered, spec);
        if let Some(labels) = labels {
            body.labels = Some(labels.into_iter().collect());
        }
        if let Some(labels) = body.labels.as_mut() {
            for (k, v) in extra {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .client()
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                if super::is_conflict(&e) {
                    DockerError::Conflict(format!(
                        "container name {name} is already in use: {}",
                        super::plain(&e)
                    ))
                } else {
                    DockerError::engine(format!("creating container {name}"), e)
                }
            })?;
        Ok(created.id)
    }

    /// Starts a container (starting a running one succeeds).
    pub async fn start(&self, id: &str, name: &str) -> Result<(), DockerError> {
        self.client()
            .start_container(id, None)
            .await
            .map_err(|e| DockerError::engine(format!("starting container {name}"), e))
    }

    /// Stops a container within `grace_s` seconds (a stopped one succeeds).
    pub async fn stop(&self, id: &str, name: &str, grace_s: i32) -> Result<(), DockerError> {
        let options = StopContainerOptionsBuilder::default().t(grace_s).build();
        match self.client().stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine(format!("stopping container {name}"), e)),
        }
    }

    /// Restarts a container.
    pub async fn restart(&self, id: &str, name: &str) -> Result<(), DockerError> {
        self.client()
            .restart_container(id, None)
            .await
            .map_err(|e| DockerError::engine(format!("restarting container {name}"), e))
    }

    /// Removes a container by force (a missing one succeeds); never its volumes.
    pub async fn remove_container(&self, id: &str, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(false)
            .build();
        match self.client().remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // "removal already in progress": someone else is removing it.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine(format!("removing container {name}"), e)),
        }
    }

    /// Renames container `id` (called `name`) to `to`.
    pub async fn rename(&self, id: &str, name: &str, to: &str) -> Result<(), DockerError> {
        let options = bollard::query_parameters::RenameContainerOptions {
            name: to.to_string(),
        };
        self.client()
            .rename_container(id, options)
            .await
            .map_err(|e| DockerError::engine(format!("renaming container {name} to {to}"), e))
    }

    /// Runs `cmd` inside container `id` (called `name`) and waits for it to end; its exit code.
    pub async fn exec(&self, id: &str, name: &str, cmd: Vec<String>) -> Result<i64, DockerError> {
        let what = || format!("running {cmd:?} in container {name}");
        let config = bollard::models::ExecConfig {
            cmd: Some(cmd.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .client()
            .create_exec(id, config)
            .await
            .map_err(|e| DockerError::engine(what(), e))?;
        let started = self
            .client()
            .start_exec(&created.id, None)
            .await
            .map_err(|e| DockerError::engine(what(), e))?;
        // The output is not wanted, only the end of the stream (the command has exited then).
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            use futures::StreamExt;
            while output.next().await.is_some() {}
        }
        let inspect = self
            .client()
            .inspect_exec(&created.id)
            .await
            .map_err(|e| DockerError::engine(what(), e))?;
        Ok(inspect.exit_code.unwrap_or(-1))
    }

    /// Waits until container `id` is no longer routed to by an ingress that skips unhealthy
    /// containers: unhealthy, or not running; at most `timeout`.
    pub async fn wait_unhealthy(
        &self,
        id: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(), DockerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.container_state(id).await? {
                None => return Ok(()),
                Some(s) if s.status != "running" || s.health == "unhealthy" => return Ok(()),
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DockerError::Timeout {
                    what: format!("{name} to turn unhealthy once drained"),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Packets container `id` has received so far (every network), if the engine says.
    async fn received_packets(&self, id: &str) -> Option<u64> {
        use futures::StreamExt;
        let options = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let stats = self.client().stats(id, Some(options)).next().await?.ok()?;
        Some(
            stats
                .networks?
                .values()
                .map(|n| n.rx_packets.unwrap_or(0))
                .sum(),
        )
    }

    /// Waits until container `id` has received no packet for `quiet` (an ingress that still routes
    /// to it keeps sending requests), at most `timeout`; then returns either way.
    pub async fn wait_quiet(&self, id: &str, quiet: Duration, timeout: Duration) {
        let started = tokio::time::Instant::now();
        let mut last = self.received_packets(id).await;
        let mut since = tokio::time::Instant::now();
        while since.elapsed() < quiet && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.received_packets(id).await;
            if now.is_none() {
                return;
            }
            if now != last {
                last = now;
                since = tokio::time::Instant::now();
            }
        }
    }

    /// Waits until every container in `ids` (id, name) is running and, when it has a healthcheck,
    /// healthy. Fails at once when one exits, restarts or turns unhealthy, after `timeout`, or when
    /// `cancel` fires.
    pub async fn wait_healthy(
        &self,
        ids: &[(String, String)],
        timeout: Duration,
        cancel: Option<&CancellationToken>,
    ) -> Result<(), DockerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending: Vec<&(String, String)> = ids.iter().collect();
        loop {
            let mut still = Vec::new();
            for entry in pending {
                let (id, name) = entry;
                let Some(state) = self.container_state(id).await? else {
                    return Err(DockerError::Unhealthy(format!(
                        "container {name} disappeared while waiting for it to become healthy"
                    )));
                };
                match state.status.as_str() {
                    "running" => {}
                    "created" => {
                        still.push(entry);
                        continue;
                    }
                    "restarting" => {
                        return Err(DockerError::Unhealthy(format!(
                            "container {name} is restarting (its process exited with code {})",
                            state.exit_code
                        )));
                    }
                    other => {
                        return Err(DockerError::Unhealthy(format!(
                            "container {name} is {other} (exit code {}) while waiting for it to become healthy",
                            state.exit_code
                        )));
                    }
                }
                if state.restart_count > 0 {
                    return Err(DockerError::Unhealthy(format!(
                        "container {name} was restarted {} time(s) by the engine: its process exits",
                        state.restart_count
                    )));
                }
                if !state.has_healthcheck {
                    continue;
                }
                match state.health.as_str() {
                    "healthy" => {}
                    "unhealthy" => {
                        return Err(DockerError::Unhealthy(format!(
                            "container {name} is unhealthy (its healthcheck fails)"
                        )));
                    }
                    _ => still.push(entry),
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            pending = still;
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<&str> = pending.iter().map(|(_, n)| n.as_str()).collect();
                return Err(DockerError::Timeout {
                    what: format!("{} to become healthy", names.join(", ")),
                    seconds: timeout.as_secs(),
                });
            }
            pause(cancel, "waiting for containers to become healthy").await?;
        }
    }
}

/// Sleeps 100 ms between two polls of a wait; `Cancelled` (naming `what`) when `cancel` fires first.
pub(crate) async fn pause(
    cancel: Option<&CancellationToken>,
    what: &str,
) -> Result<(), DockerError> {
    let pause = tokio::time::sleep(Duration::from_millis(100));
    match cancel {
        Some(token) => tokio::select! {
            _ = pause => Ok(()),
            _ = token.cancelled() => Err(DockerError::Cancelled(what.into())),
        },
        None => {
            pause.await;
            Ok(())
        }
    }
}

/// The engine's healthcheck of `spec` (containers and Swarm tasks alike).
pub fn health_config(spec: &ContainerSpec) -> Option<HealthConfig> {
    spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: spec.health_test(),
        interval: Some(h.interval_ns),
        timeout: Some(h.timeout_ns),
        retries: Some(h.retries),
        start_period: Some(h.start_period_ns),
        // Not known to the 1.41 engine.
        start_interval: None,
    })
}

/// The create body of `spec`: everything as a typed map, nothing through a shell.
pub fn container_body(rendered: &Rendered, spec: &ContainerSpec) -> ContainerCreateBody {
    let labels: HashMap<String, String> = rendered.labels_of(spec).into_iter().collect();
    let restart = match spec.restart.as_str() {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        "no" => RestartPolicyNameEnum::NO,
        _ => RestartPolicyNameEnum::UNLESS_STOPPED,
    };
    let host_config = HostConfig {
        restart_policy: Some(RestartPolicy {
            name: Some(restart),
            maximum_retry_count: None,
        }),
        memory: spec.memory_bytes,
        // Same as the limit: no swap beyond it.
        memory_swap: spec.memory_bytes,
        nano_cpus: spec.nano_cpus,
        pids_limit: spec.pids_limit,
        init: spec.init.then_some(true),
        binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
        network_mode: Some(rendered.network.clone()),
        ..Default::default()
    };
    let mut endpoints = HashMap::new();
    endpoints.insert(
        rendered.network.clone(),
        EndpointSettings {
            aliases: Some(vec![spec.service.clone()]),
            ..Default::default()
        },
    );
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(spec.env.clone()),
        labels: Some(labels),
        // The service name, not the container name: a hostname is at most 63 bytes, and a
        // 63-character slug makes `sandbox-<slug>-api` longer than that.
        hostname: Some(spec.service.clone()),
        healthcheck: health_config(spec),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    }
}
