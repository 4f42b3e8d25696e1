//! The backend seam: where a tenant's template services run. `BACKEND=docker` (the default) runs
//! one container per template service on `DOCKER_HOST`; `BACKEND=swarm` runs one Swarm service per
//! template service ([`super::swarm`]). Provisioning computes the desired state once (the rendered
//! template) and hands it to the chosen backend; everything else (journal, fencing, ownership,
//! DNS, certificates, the ingress probe, the Redis record) is shared.
//!
//! The operations on what already runs (list, remove, suspend, resume, restart) act on both kinds
//! of [`Owned`] workload whatever `BACKEND` says, so `teams`, `reconcile` and `delete` also see a
//! tenant provisioned before the backend was switched.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::containers::Workload;
use super::{DockerError, Engine, Owned};
use crate::templates::Kind;

impl Engine {
    /// Every workload the orchestrator owns (optionally of one tenant): containers of the docker
    /// backend, then Swarm services (none when the engine is not a swarm manager).
    pub async fn workloads(&self, tenant: Option<(Kind, &str)>) -> Result<Vec<Owned>, DockerError> {
        let mut all = self.owned_containers(tenant).await?;
        all.extend(self.owned_services(tenant).await?);
        Ok(all)
    }

    /// Removes a workload (never its volumes).
    pub async fn remove_workload(&self, w: &Owned) -> Result<(), DockerError> {
        match w.workload {
            Workload::Container => self.remove_container(&w.id, &w.name).await,
            Workload::Service => self.remove_service(&w.name).await,
        }
    }

    /// Stops a container, or scales a service to 0.
    pub async fn suspend_workload(&self, w: &Owned) -> Result<(), DockerError> {
        match w.workload {
            Workload::Container => self.stop(&w.id, &w.name, 10).await,
            Workload::Service => self.scale(&w.name, 0).await,
        }
    }

    /// Starts a container, or scales a service back to `replicas`.
    pub async fn resume_workload(&self, w: &Owned, replicas: u64) -> Result<(), DockerError> {
        match w.workload {
            Workload::Container => self.start(&w.id, &w.name).await,
            Workload::Service => self.scale(&w.name, replicas).await,
        }
    }

    /// Restarts a container, or replaces a service's tasks (start-first).
    pub async fn restart_workload(&self, w: &Owned) -> Result<(), DockerError> {
        match w.workload {
            Workload::Container => self.restart(&w.id, &w.name).await,
            Workload::Service => self.restart_service(&w.name).await,
        }
    }

    /// Waits until every workload of `list` runs (containers healthy, services with all their
    /// desired tasks running).
    pub async fn wait_workloads(
        &self,
        list: &[Owned],
        timeout: Duration,
        cancel: Option<&CancellationToken>,
    ) -> Result<(), DockerError> {
        let containers: Vec<(String, String)> = list
            .iter()
            .filter(|w| w.workload == Workload::Container)
            .map(|w| (w.id.clone(), w.name.clone()))
            .collect();
        let services: Vec<String> = list
            .iter()
            .filter(|w| w.workload == Workload::Service)
            .map(|w| w.name.clone())
            .collect();
        if !containers.is_empty() {
            self.wait_healthy(&containers, timeout, cancel).await?;
        }
        if !services.is_empty() {
            self.wait_services(&services, None, timeout, cancel).await?;
        }
        Ok(())
    }
}
