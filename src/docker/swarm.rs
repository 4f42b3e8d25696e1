//! The Swarm backend (`BACKEND=swarm`): each template service of a tenant is one Swarm service on
//! the engine at `DOCKER_HOST` (a swarm manager), computed from the same rendered template as the
//! docker backend's containers.
//!
//! - The service spec carries the template's labels (Traefik's swarm provider reads labels on the
//!   service, not on its tasks' containers), the ownership labels, the template hash and, when this
//!   run created it, the creation labels of the journal (`orchestrator.task` / `orchestrator.attempt`),
//!   so a rollback removes only a service its task created. `traefik.docker.network` becomes
//!   `traefik.swarm.network`: Traefik routes to the tasks' addresses on the tenant network, which
//!   it reads from the tasks Swarm wants running. A task being replaced is no longer wanted
//!   running as soon as its successor runs, and Swarm keeps its container 2 s longer (its delay
//!   for the network to converge) before stopping it: an ingress refreshing at least every second
//!   (`providers.swarm.refreshSeconds: 1`) stops routing to it before it goes.
//! - Services resolve by DNS round robin (`endpoint_mode: dnsrr`), not through a virtual IP: the
//!   virtual IP needs IPVS in the kernel (unreachable on kernels without it), and nothing here
//!   publishes ports through the routing mesh (the ingress reaches the tasks itself).
//! - The task template holds the image, command, environment, healthcheck, init, resource limits
//!   (CPU, memory, pids) and restart policy; the tenant's overlay network with the service name as
//!   alias; its volumes as `volume` mounts. Task containers carry no ownership label (only
//!   `orchestrator.template-hash`): the docker backend's views never take them for its containers.
//! - A stateful service (one that mounts a volume) is pinned with `node.id==<node>` to the node its
//!   volume was created on (the node of `DOCKER_HOST` at its first provision; kept on updates):
//!   Docker volumes are node-local.
//! - Updates roll one task at a time, `start-first`, and roll back automatically when an updated
//!   task fails (`failure_action: rollback`, with a `RollbackConfig` of its own); a provision
//!   reports a rolled-back update as its error, the tenant serving its previous template.
//! - Ready means every desired task of the current template runs (Swarm reports a task with a
//!   healthcheck as running once healthy). The worker cannot reach overlay addresses, so unlike the
//!   docker backend there is no direct probe; "active means reachable" (`INGRESS_PROBE_URL`) is
//!   checked the same way.
//! - The ingress joins each tenant's overlay network (attachable): an ingress container is
//!   connected to it; an ingress *service* (named `INGRESS_CONTAINER` or labelled
//!   `orchestrator.role=ingress` on its spec, as in the stack file) gets it added to its task
//!   template (a rolling update of the ingress).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, NetworkAttachmentConfig, Service,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{ListServicesOptions, ListTasksOptions, UpdateServiceOptions};
use tokio_util::sync::CancellationToken;

use super::containers::Workload;
use super::{DockerError, Engine, Owned, is_not_found, owned_by_us, plain};
use crate::templates::{
    ContainerSpec, Kind, LABEL_KIND, LABEL_SERVICE, LABEL_SLUG, LABEL_TEMPLATE_HASH, Rendered,
};

/// Seconds Swarm watches each updated task for a failure before it goes on (and rolls back).
const UPDATE_MONITOR_NS: i64 = 3_000_000_000;

/// What [`Engine::apply_service`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub id: String,
    pub changed: bool,
    /// The service was created by this call (journaled by the caller beforehand).
    pub created: bool,
}

impl Engine {
    /// The id of this engine's node in its swarm; an error saying what to do when it is not a
    /// swarm manager.
    pub async fn swarm_node(&self) -> Result<String, DockerError> {
        let info = self
            .client()
            .info()
            .await
            .map_err(|e| DockerError::engine("reading the engine's info", e))?;
        let swarm = info.swarm.unwrap_or_default();
        let manager = swarm.control_available.unwrap_or(false);
        match swarm.node_id.filter(|id| !id.is_empty()) {
            Some(id) if manager => Ok(id),
            _ => Err(DockerError::Conflict(
                "BACKEND=swarm needs DOCKER_HOST to be a swarm manager (docker swarm init)".into(),
            )),
        }
    }

    /// The Swarm service named exactly `name`, if any.
    pub async fn find_service(&self, name: &str) -> Result<Option<Service>, DockerError> {
        match self.client().inspect_service(name, None).await {
            Ok(s) if s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name) => Ok(Some(s)),
            // Inspect also matches ids and id prefixes.
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            // Not a swarm manager: no services here.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 503, ..
            }) => Ok(None),
            Err(e) => Err(DockerError::engine(format!("inspecting service {name}"), e)),
        }
    }

    /// Every Swarm service owned by the orchestrator (optionally of one tenant), as [`Owned`]
    /// rows: state `running` when every desired task runs, `scaled-down` at 0 replicas,
    /// `converging` otherwise; `health` says `<running>/<desired> tasks`. Empty when the engine is
    /// not a swarm manager.
    pub async fn owned_services(
        &self,
        tenant: Option<(Kind, &str)>,
    ) -> Result<Vec<Owned>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            super::containers::owner_filters(tenant),
        );
        let options = ListServicesOptions {
            filters: Some(filters),
            status: Some(true),
        };
        let list = match self.client().list_services(Some(options)).await {
            Ok(list) => list,
            // Not a swarm manager (503): no services here.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 503, ..
            }) => return Ok(Vec::new()),
            Err(e) => return Err(DockerError::engine("listing services", e)),
        };
        let mut owned = Vec::new();
        for service in list {
            let spec = service.spec.clone().unwrap_or_default();
            let labels = spec.labels.clone().unwrap_or_default();
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let status = service.service_status.clone().unwrap_or_default();
            let (running, desired) = (
                status.running_tasks.unwrap_or(0),
                status.desired_tasks.unwrap_or(0),
            );
            let state = if desired == 0 {
                "scaled-down"
            } else if running >= desired {
                "running"
            } else {
                "converging"
            };
            owned.push(Owned {
                workload: Workload::Service,
                id: service.id.clone().unwrap_or_default(),
                name: spec.name.clone().unwrap_or_default(),
                kind: Kind::parse(&get(LABEL_KIND)),
                slug: get(LABEL_SLUG),
                service: get(LABEL_SERVICE),
                template_hash: get(LABEL_TEMPLATE_HASH),
                state: state.into(),
                health: format!("{running}/{desired} tasks"),
            });
        }
        owned.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(owned)
    }

    /// Creates or updates the service of `spec` (see the module comment). A service of that name
    /// the orchestrator does not own is a conflict. An unchanged template only scales the service
    /// back to its replicas (a suspended tenant provisioned again).
    pub async fn apply_service(
        &self,
        rendered: &Rendered,
        spec: &ContainerSpec,
        creation: &BTreeMap<String, String>,
        node: &str,
    ) -> Result<Applied, DockerError> {
        let name = spec.name.as_str();
        let Some(existing) = self.find_service(name).await? else {
            let body = service_spec(rendered, spec, creation, &placement(spec, None, node));
            let created = self
                .client()
                .create_service(body, None)
                .await
                .map_err(|e| {
                    if super::is_conflict(&e) {
                        DockerError::Conflict(format!(
                            "service name {name} is already in use: {}",
                            plain(&e)
                        ))
                    } else {
                        DockerError::engine(format!("creating service {name}"), e)
                    }
                })?;
            return Ok(Applied {
                id: created.id.unwrap_or_default(),
                changed: true,
                created: true,
            });
        };
        let current = existing.spec.clone().unwrap_or_default();
        let labels = current.labels.clone().unwrap_or_default();
        if !owned_by_us(Some(&labels)) {
            return Err(DockerError::Conflict(format!(
                "service name {name} is taken by a service the orchestrator does not manage"
            )));
        }
        let id = existing.id.clone().unwrap_or_default();
        let replicas = replicas_of(&current);
        if labels.get(LABEL_TEMPLATE_HASH) == Some(&rendered.hash) {
            if replicas == spec.replicas {
                return Ok(Applied {
                    id,
                    changed: false,
                    created: false,
                });
            }
            self.scale(name, spec.replicas).await?;
            return Ok(Applied {
                id,
                changed: true,
                created: false,
            });
        }
        // An update keeps the labels of the run that created the service (a rollback of this run
        // must never remove a service it found) and the placement (its volume's node).
        let kept: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    super::journal::LABEL_TASK | super::journal::LABEL_FENCE
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let constraints = current
            .task_template
            .as_ref()
            .and_then(|t| t.placement.as_ref())
            .and_then(|p| p.constraints.clone());
        let body = service_spec(rendered, spec, &kept, &placement(spec, constraints, node));
        self.update_spec(name, &existing, body).await?;
        Ok(Applied {
            id,
            changed: true,
            created: false,
        })
    }

    /// Replaces the spec of service `name` (as inspected in `existing`) by `body`.
    async fn update_spec(
        &self,
        name: &str,
        existing: &Service,
        body: ServiceSpec,
    ) -> Result<(), DockerError> {
        let version = existing
            .version
            .as_ref()
            .and_then(|v| v.index)
            .unwrap_or_default();
        let options = UpdateServiceOptions {
            version: i32::try_from(version).unwrap_or(i32::MAX),
            ..Default::default()
        };
        self.client()
            .update_service(name, body, options, None)
            .await
            .map_err(|e| DockerError::engine(format!("updating service {name}"), e))?;
        Ok(())
    }

    /// Sets the replicas of service `name` (suspend = 0, resume = the template's).
    pub async fn scale(&self, name: &str, replicas: u64) -> Result<(), DockerError> {
        let Some(existing) = self.find_service(name).await? else {
            return Err(DockerError::Conflict(format!("service {name} not found")));
        };
        let mut spec = existing.spec.clone().unwrap_or_default();
        spec.mode = Some(replicated(replicas));
        self.update_spec(name, &existing, spec).await
    }

    /// Replaces every task of service `name` (start-first, like an update): `team.restart`.
    pub async fn restart_service(&self, name: &str) -> Result<(), DockerError> {
        let Some(existing) = self.find_service(name).await? else {
            return Err(DockerError::Conflict(format!("service {name} not found")));
        };
        let mut spec = existing.spec.clone().unwrap_or_default();
        if let Some(task) = spec.task_template.as_mut() {
            task.force_update = Some(task.force_update.unwrap_or(0) + 1);
        }
        self.update_spec(name, &existing, spec).await
    }

    /// Removes service `name` (a missing one succeeds) and waits (at most 30 s) until its tasks'
    /// containers are gone, so its volumes and network can go next; its volumes stay.
    pub async fn remove_service(&self, name: &str) -> Result<(), DockerError> {
        match self.client().delete_service(name).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(DockerError::engine(format!("removing service {name}"), e)),
        }
        let label = format!("com.docker.swarm.service.name={name}");
        let mut filters = HashMap::new();
        filters.insert("label", vec![label.as_str()]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = self
                .client()
                .list_containers(Some(options.clone()))
                .await
                .map_err(|e| DockerError::engine(format!("listing tasks of service {name}"), e))?;
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DockerError::Transient {
                    what: format!("removing service {name}"),
                    message: format!("{} task container(s) still there after 30s", left.len()),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every service of `names` runs its desired tasks of template `hash` (see the
    /// module comment); fails at once when Swarm rolled an update back, or after `timeout` with
    /// the last task error seen.
    pub async fn wait_services(
        &self,
        names: &[String],
        hash: Option<&str>,
        timeout: Duration,
        cancel: Option<&CancellationToken>,
    ) -> Result<(), DockerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending: Vec<&String> = names.iter().collect();
        let mut last = String::new();
        loop {
            let mut still = Vec::new();
            for name in pending {
                match self.service_converged(name, hash).await? {
                    Ok(()) => {}
                    Err(why) => {
                        last = format!("{name}: {why}");
                        still.push(name);
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            pending = still;
            if tokio::time::Instant::now() >= deadline {
                return Err(DockerError::Timeout {
                    what: format!("services to run their tasks ({last})"),
                    seconds: timeout.as_secs(),
                });
            }
            super::containers::pause(cancel, "waiting for services to run their tasks").await?;
        }
    }

    /// `Ok(Ok(()))` when service `name` runs all its desired tasks of template `hash`, `Ok(Err(why))`
    /// while it converges, `Err` when it cannot (gone, update rolled back or paused).
    async fn service_converged(
        &self,
        name: &str,
        hash: Option<&str>,
    ) -> Result<Result<(), String>, DockerError> {
        let Some(service) = self.find_service(name).await? else {
            return Err(DockerError::Unhealthy(format!(
                "service {name} disappeared while waiting for its tasks"
            )));
        };
        let spec = service.spec.clone().unwrap_or_default();
        let status = service.update_status.clone().unwrap_or_default();
        let state = status.state.map(|s| s.to_string()).unwrap_or_default();
        let message = status.message.clone().unwrap_or_default();
        let labels = spec.labels.clone().unwrap_or_default();
        if let Some(hash) = hash
            && labels.get(LABEL_TEMPLATE_HASH).map(String::as_str) != Some(hash)
        {
            // The spec went back: Swarm rolled the update back (or someone changed it).
            return Err(DockerError::Unhealthy(format!(
                "the update of service {name} failed and Swarm rolled it back to its previous \
                 template (it keeps serving that one): {state} {message}"
            )));
        }
        if matches!(state.as_str(), "paused" | "rollback_paused") {
            return Err(DockerError::Unhealthy(format!(
                "the update of service {name} is paused: {message}"
            )));
        }
        if matches!(state.as_str(), "updating" | "rollback_started") {
            return Ok(Err(format!("update {state}")));
        }
        let want = replicas_of(&spec);
        let mut filters = HashMap::new();
        filters.insert("service".to_string(), vec![name.to_string()]);
        let tasks = self
            .client()
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| DockerError::engine(format!("listing tasks of service {name}"), e))?;
        let mut running = 0;
        let mut other_running = 0;
        let mut error = String::new();
        for task in &tasks {
            let desired = task
                .desired_state
                .map(|s| s.to_string())
                .unwrap_or_default();
            let task_status = task.status.clone().unwrap_or_default();
            let task_state = task_status.state.map(|s| s.to_string()).unwrap_or_default();
            if matches!(task_state.as_str(), "failed" | "rejected")
                && let Some(err) = task_status.err.clone()
            {
                error = format!("task {task_state}: {err}");
            }
            if desired != "running" {
                continue;
            }
            let task_hash = task
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_TEMPLATE_HASH))
                .map(String::as_str);
            let current = hash.is_none_or(|h| task_hash == Some(h));
            if task_state == "running" && current {
                running += 1;
            } else {
                other_running += 1;
            }
        }
        if running as u64 >= want && other_running == 0 {
            return Ok(Ok(()));
        }
        Ok(Err(format!(
            "{running}/{want} tasks running{}",
            if error.is_empty() {
                String::new()
            } else {
                format!(", last {error}")
            }
        )))
    }

    /// The ingress services: the one named `name` and every service labelled
    /// `orchestrator.role=ingress`; none when `name` is empty (as for containers).
    pub async fn ingress_services(&self, name: &str) -> Result<Vec<String>, DockerError> {
        if name.is_empty() {
            return Ok(Vec::new());
        }
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!(
                "{}={}",
                crate::traefik::LABEL_ROLE,
                crate::traefik::ROLE_INGRESS
            )],
        );
        let mut names: Vec<String> = match self
            .client()
            .list_services(Some(ListServicesOptions {
                filters: Some(filters),
                status: None,
            }))
            .await
        {
            Ok(list) => list
                .into_iter()
                .filter_map(|s| s.spec.and_then(|s| s.name))
                .collect(),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 503, ..
            }) => return Ok(Vec::new()),
            Err(e) => return Err(DockerError::engine("listing ingress services", e)),
        };
        if self.find_service(name).await?.is_some() {
            names.push(name.to_string());
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Attaches every ingress (services and containers) to overlay network `network`. A configured
    /// `INGRESS_CONTAINER` that is neither a service nor a container is an error.
    pub async fn attach_ingress_swarm(
        &self,
        network: &str,
        name: &str,
    ) -> Result<bool, DockerError> {
        let services = self.ingress_services(name).await?;
        let containers = self.ingress_containers(name).await?;
        if !name.is_empty() && !services.iter().chain(&containers).any(|n| n == name) {
            return Err(DockerError::Conflict(format!(
                "ingress {name} not found as a service or a container (set INGRESS_CONTAINER to its \
                 name, or empty for none)"
            )));
        }
        let mut changed = false;
        for container in &containers {
            changed |= self.connect_to_network(network, container).await?;
        }
        for service in &services {
            changed |= self
                .ingress_service_networks(service, network, true)
                .await?;
        }
        Ok(changed)
    }

    /// Takes overlay network `network` out of every ingress service's task template (before the
    /// network is removed: a network in use cannot go).
    pub async fn detach_ingress_services(
        &self,
        network: &str,
        name: &str,
    ) -> Result<(), DockerError> {
        for service in self.ingress_services(name).await? {
            self.ingress_service_networks(&service, network, false)
                .await?;
        }
        Ok(())
    }

    /// Adds (`attach`) or removes `network` in service `name`'s task networks; whether it changed.
    async fn ingress_service_networks(
        &self,
        name: &str,
        network: &str,
        attach: bool,
    ) -> Result<bool, DockerError> {
        let Some(existing) = self.find_service(name).await? else {
            return Ok(false);
        };
        let Some(network_id) = self.find_network(network).await?.map(|n| n.id) else {
            return Ok(false);
        };
        let mut spec = existing.spec.clone().unwrap_or_default();
        let task = spec.task_template.get_or_insert_with(Default::default);
        let mut networks = task.networks.clone().unwrap_or_default();
        let present = networks
            .iter()
            .any(|n| matches!(n.target.as_deref(), Some(t) if t == network || t == network_id));
        if present == attach {
            return Ok(false);
        }
        if attach {
            networks.push(NetworkAttachmentConfig {
                target: Some(network.to_string()),
                ..Default::default()
            });
        } else {
            networks.retain(
                |n| !matches!(n.target.as_deref(), Some(t) if t == network || t == network_id),
            );
        }
        task.networks = Some(networks);
        self.update_spec(name, &existing, spec).await?;
        Ok(true)
    }
}

/// The replicas of a replicated service spec (0 when it has none).
fn replicas_of(spec: &ServiceSpec) -> u64 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .map_or(0, |r| u64::try_from(r).unwrap_or(0))
}

fn replicated(replicas: u64) -> ServiceSpecMode {
    ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated {
            replicas: Some(i64::try_from(replicas).unwrap_or(i64::MAX)),
        }),
        ..Default::default()
    }
}

/// The placement of `spec`: a stateful service keeps `existing` constraints (where its volume is)
/// or is pinned to `node`; a stateless one may run anywhere.
fn placement(spec: &ContainerSpec, existing: Option<Vec<String>>, node: &str) -> Vec<String> {
    if spec.binds.is_empty() {
        return Vec::new();
    }
    match existing {
        Some(c) if c.iter().any(|c| c.starts_with("node.id==")) => c,
        _ => vec![format!("node.id=={node}")],
    }
}

/// The labels of the service of `spec`: the template's (with the swarm provider's network key),
/// plus `creation`.
pub fn service_labels(
    rendered: &Rendered,
    spec: &ContainerSpec,
    creation: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = rendered.labels_of(spec);
    if let Some(network) = labels.remove("traefik.docker.network") {
        labels.insert("traefik.swarm.network".into(), network);
    }
    for (k, v) in creation {
        labels.insert(k.clone(), v.clone());
    }
    labels
}

/// The full service spec of `spec` (see the module comment).
pub fn service_spec(
    rendered: &Rendered,
    spec: &ContainerSpec,
    creation: &BTreeMap<String, String>,
    constraints: &[String],
) -> ServiceSpec {
    let mounts: Vec<Mount> = spec
        .binds
        .iter()
        .filter_map(|bind| {
            let mut parts = bind.splitn(3, ':');
            let (source, target) = (parts.next()?, parts.next()?);
            Some(Mount {
                source: Some(source.to_string()),
                target: Some(target.to_string()),
                typ: Some(MountType::VOLUME),
                read_only: Some(parts.next() == Some("ro")),
                ..Default::default()
            })
        })
        .collect();
    let mut container_labels = HashMap::new();
    container_labels.insert(LABEL_TEMPLATE_HASH.to_string(), rendered.hash.clone());
    let condition = match spec.restart.as_str() {
        "no" => TaskSpecRestartPolicyConditionEnum::NONE,
        "on-failure" => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
        _ => TaskSpecRestartPolicyConditionEnum::ANY,
    };
    let task = TaskSpec {
        container_spec: Some(TaskSpecContainerSpec {
            image: Some(spec.image.clone()),
            labels: Some(container_labels),
            args: spec.command.clone(),
            hostname: Some(spec.service.clone()),
            env: Some(spec.env.clone()),
            mounts: (!mounts.is_empty()).then_some(mounts),
            init: spec.init.then_some(true),
            health_check: super::containers::health_config(spec),
            ..Default::default()
        }),
        resources: Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: spec.nano_cpus,
                memory_bytes: spec.memory_bytes,
                pids: spec.pids_limit,
            }),
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(condition),
            delay: Some(1_000_000_000),
            ..Default::default()
        }),
        placement: (!constraints.is_empty()).then(|| TaskSpecPlacement {
            constraints: Some(constraints.to_vec()),
            ..Default::default()
        }),
        networks: Some(vec![NetworkAttachmentConfig {
            target: Some(rendered.network.clone()),
            aliases: Some(vec![spec.service.clone()]),
            ..Default::default()
        }]),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(spec.name.clone()),
        labels: Some(
            service_labels(rendered, spec, creation)
                .into_iter()
                .collect(),
        ),
        task_template: Some(task),
        mode: Some(replicated(spec.replicas)),
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(UPDATE_MONITOR_NS),
            max_failure_ratio: Some(0.0),
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
        }),
        rollback_config: Some(ServiceSpecRollbackConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            monitor: Some(UPDATE_MONITOR_NS),
            max_failure_ratio: Some(0.0),
            order: Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ..Default::default()
        }),
        ..Default::default()
    }
}
