//! Networks: each tenant's own bridge (or the shared platform network), and the ingress container's
//! connection to it.
//!
//! Ingress attachment is state that converges, not a side effect of provisioning: the ingress is
//! found by name (`INGRESS_CONTAINER`) and by label (`orchestrator.role=ingress`), and
//! [`Engine::attach_ingress_everywhere`] connects every ingress to every tenant network. It runs when a
//! worker starts, whenever an ingress container starts (see [`super::ingress`]), and in `reconcile`,
//! so a recreated Traefik container (attached to its compose networks only) serves every team again.
//!
//! The engine does not refuse a second network with an existing name, and its `name` filter matches
//! substrings, so creation is serialised inside this process and names are compared exactly; when
//! two processes still race, the oldest network of the name wins and the extra one is removed.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use tokio::sync::Mutex;

use super::{DockerError, Engine, is_conflict, is_not_found, owned_by_us, plain};

/// Serialises network creation in this process (see the module comment).
static CREATE_LOCK: Mutex<()> = Mutex::const_new(());

/// A network as found: id and whether the orchestrator owns it.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub owned: bool,
    /// Names of the containers attached.
    pub containers: Vec<String>,
}

impl Engine {
    /// Networks named exactly `name`, oldest first.
    async fn networks_named(
        &self,
        name: &str,
    ) -> Result<Vec<bollard::models::Network>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("name", vec![name]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut found: Vec<_> = self
            .client()
            .list_networks(Some(options))
            .await
            .map_err(|e| DockerError::engine(format!("listing networks named {name}"), e))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect();
        found.sort_by_key(|n| n.created.as_ref().map(|c| c.to_string()));
        Ok(found)
    }

    /// The network named exactly `name`, if any.
    pub async fn find_network(&self, name: &str) -> Result<Option<NetworkInfo>, DockerError> {
        let Some(network) = self.networks_named(name).await?.into_iter().next() else {
            return Ok(None);
        };
        let id = network.id.clone().unwrap_or_default();
        // The list call leaves `containers` empty; inspect fills it.
        let containers = match self.client().inspect_network(&id, None).await {
            Ok(inspect) => inspect
                .containers
                .unwrap_or_default()
                .values()
                .filter_map(|c| c.name.clone())
                .collect(),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(DockerError::engine(format!("inspecting network {name}"), e)),
        };
        Ok(Some(NetworkInfo {
            id,
            name: name.to_string(),
            owned: owned_by_us(network.labels.as_ref()),
            containers,
        }))
    }

    /// Creates bridge network `name` with `labels` unless one of that exact name exists; returns
    /// whether it was created.
    pub async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, DockerError> {
        self.ensure_network_with(name, labels, false).await
    }

    /// [`Engine::ensure_network`], or with `overlay` an attachable overlay network of swarm scope
    /// (the Swarm backend's tenant network, which an ingress container can join).
    pub async fn ensure_network_with(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        overlay: bool,
    ) -> Result<bool, DockerError> {
        let _guard = CREATE_LOCK.lock().await;
        if self.find_network(name).await?.is_some() {
            return Ok(false);
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some(if overlay { "overlay" } else { "bridge" }.into()),
            attachable: overlay.then_some(true),
            scope: overlay.then(|| "swarm".to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        let created = self.client().create_network(request).await.map_err(|e| {
            // The engine's default pools hold ~30 bridge networks: say what to configure rather
            // than retrying something that cannot pass by itself.
            if plain(&e).contains("non-overlapping IPv4 address pool") {
                DockerError::Conflict(format!(
                    "no address pool left for network {name}: configure default-address-pools in \
                     /etc/docker/daemon.json (e.g. {{\"base\":\"10.201.0.0/16\",\"size\":26}}) or \
                     remove unused networks (see README, Operations: address pools)"
                ))
            } else {
                DockerError::engine(format!("creating network {name}"), e)
            }
        })?;
        // Another process may have created one at the same moment: keep the oldest.
        let all = self.networks_named(name).await?;
        if all.len() > 1
            && let ours = created.id.as_str()
            && all.first().and_then(|n| n.id.as_deref()) != Some(ours)
        {
            let _ = self.client().remove_network(ours).await;
            return Ok(false);
        }
        Ok(true)
    }

    /// Removes network `name` if it exists and is ours, disconnecting `ingress` first (a network
    /// with endpoints cannot be removed). Returns whether a network was removed.
    pub async fn remove_network(&self, name: &str, ingress: &str) -> Result<bool, DockerError> {
        let Some(network) = self.find_network(name).await? else {
            return Ok(false);
        };
        if !network.owned {
            return Ok(false);
        }
        // An ingress service holding the network (Swarm backend) lets go of it first.
        self.detach_ingress_services(name, ingress).await?;
        // Every ingress attached to it (by name, or by label even when this worker has none
        // configured): a network with endpoints cannot go.
        let mut ingresses = self.labelled_ingresses().await?;
        if !ingress.is_empty() {
            ingresses.push(ingress.to_string());
        }
        for attached in ingresses {
            if network.containers.contains(&attached) {
                self.disconnect(name, &attached).await?;
            }
        }
        // Endpoints of containers (or Swarm tasks) just removed go a moment later: waited for a
        // while, then left to a retry of the task.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match self.client().remove_network(&network.id).await {
                Ok(()) => return Ok(true),
                Err(e) if is_not_found(&e) => return Ok(false),
                // A Swarm task still on it (an ingress service rolling off it) holds it the same way.
                Err(e)
                    if plain(&e).contains("active endpoints")
                        || plain(&e).contains("in use by task") =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(DockerError::Transient {
                            what: format!("removing network {name}"),
                            message: plain(&e),
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(DockerError::engine(format!("removing network {name}"), e)),
            }
        }
    }

    /// Connects container `container` (the ingress) to network `network` unless it already is.
    pub async fn connect_to_network(
        &self,
        network: &str,
        container: &str,
    ) -> Result<bool, DockerError> {
        let inspect = match self.client().inspect_container(container, None).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => {
                return Err(DockerError::Conflict(format!(
                    "ingress container {container} not found (set INGRESS_CONTAINER to its name, or empty for none)"
                )));
            }
            Err(e) => return Err(DockerError::engine(format!("inspecting {container}"), e)),
        };
        let attached = inspect
            .network_settings
            .and_then(|s| s.networks)
            .is_some_and(|n| n.contains_key(network));
        if attached {
            return Ok(false);
        }
        let request = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: None,
        };
        match self.client().connect_network(network, request).await {
            Ok(()) => Ok(true),
            // Connected meanwhile by another worker.
            Err(e) if is_conflict(&e) || plain(&e).contains("already exists") => Ok(false),
            Err(e) => Err(DockerError::engine(
                format!("connecting {container} to network {network}"),
                e,
            )),
        }
    }

    /// Disconnects `container` from `network`; absent either, does nothing.
    pub async fn disconnect(&self, network: &str, container: &str) -> Result<(), DockerError> {
        let request = NetworkDisconnectRequest {
            container: container.to_string(),
            force: Some(true),
        };
        match self.client().disconnect_network(network, request).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) if plain(&e).contains("is not connected") => Ok(()),
            Err(e) => Err(DockerError::engine(
                format!("disconnecting {container} from network {network}"),
                e,
            )),
        }
    }

    /// Names of the containers labelled `orchestrator.role=ingress`, running or not.
    async fn labelled_ingresses(&self) -> Result<Vec<String>, DockerError> {
        let label = format!(
            "{}={}",
            crate::traefik::LABEL_ROLE,
            crate::traefik::ROLE_INGRESS
        );
        let mut filters = HashMap::new();
        filters.insert("label", vec![label.as_str()]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        Ok(self
            .client()
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::engine("listing ingress containers", e))?
            .into_iter()
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_string())
            .collect())
    }

    /// Names of the ingress containers: the one named `name` (if it exists) and every container
    /// labelled `orchestrator.role=ingress`, sorted. `name` empty means no ingress at all (the label
    /// is not looked at either): setups without an ingress never attach someone else's.
    pub async fn ingress_containers(&self, name: &str) -> Result<Vec<String>, DockerError> {
        if name.is_empty() {
            return Ok(Vec::new());
        }
        let mut names = self.labelled_ingresses().await?;
        match self.client().inspect_container(name, None).await {
            Ok(_) => names.push(name.to_string()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(DockerError::engine(format!("inspecting {name}"), e)),
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Connects every ingress to `network`. A configured `INGRESS_CONTAINER` that does not exist is
    /// an error (teams would not be reachable). Returns whether anything was connected.
    pub async fn attach_ingress(&self, network: &str, name: &str) -> Result<bool, DockerError> {
        let ingresses = self.ingress_containers(name).await?;
        if !name.is_empty() && !ingresses.iter().any(|i| i == name) {
            return Err(DockerError::Conflict(format!(
                "ingress container {name} not found (set INGRESS_CONTAINER to its name, or empty for none)"
            )));
        }
        let mut changed = false;
        for ingress in &ingresses {
            changed |= self.connect_to_network(network, ingress).await?;
        }
        Ok(changed)
    }

    /// `(ingress, network)` pairs where an ingress is not attached to one of `networks` (the tenant
    /// networks this deployment records; a network that does not exist is skipped).
    pub async fn ingress_drift(
        &self,
        name: &str,
        networks: &[String],
    ) -> Result<Vec<(String, String)>, DockerError> {
        let ingresses = self.ingress_containers(name).await?;
        let mut missing = Vec::new();
        if ingresses.is_empty() {
            return Ok(missing);
        }
        for network in networks {
            let Some(network) = self.find_network(network).await? else {
                continue;
            };
            for ingress in &ingresses {
                if !network.containers.contains(ingress) {
                    missing.push((ingress.clone(), network.name.clone()));
                }
            }
        }
        Ok(missing)
    }

    /// Connects every ingress to every tenant network it is missing from; returns what it connected.
    pub async fn attach_ingress_everywhere(
        &self,
        name: &str,
        networks: &[String],
    ) -> Result<Vec<(String, String)>, DockerError> {
        let mut connected = Vec::new();
        for (ingress, network) in self.ingress_drift(name, networks).await? {
            match self.connect_to_network(&network, &ingress).await {
                Ok(true) => connected.push((ingress, network)),
                Ok(false) => {}
                // The network went away meanwhile (a team deleted): nothing to attach.
                Err(DockerError::Engine { .. }) if self.find_network(&network).await?.is_none() => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(connected)
    }
}
