//! The Docker engine as the orchestrator uses it: a thin wrapper over bollard 0.21 that connects
//! (DOCKER_HOST or the local socket), negotiates the API version (the 20.10 engine here speaks 1.41,
//! older than bollard's default), and offers the few idempotent operations provisioning needs:
//! networks (creation serialised, names compared exactly), images (present or pulled), volumes,
//! containers (found by name + ownership label) and a bounded health wait.
//!
//! The provisioning engine shared by teams and sandboxes lives in [`provision`] (its workloads step
//! per backend in [`apply`]), deleting and restarting, suspending or resuming a tenant in
//! [`lifecycle`]; both check who may act on a slug in [`claim`] and keep the tenant's Redis record
//! and status events in [`record`]. The record of what each provisioning task created (so a
//! rollback removes only that) is in [`journal`]; the read-only and repair views (`teams`,
//! `reconcile`, `plan`) in [`teams`]. Where tenants run is the backend ([`backend`]): containers
//! (with start-first replacement, [`replace`]) or Swarm services ([`swarm`]).

pub mod apply;
pub mod backend;
pub mod claim;
pub mod containers;
pub mod ingress;
pub mod journal;
pub mod lifecycle;
pub mod networks;
pub mod provision;
pub mod readiness;
pub mod record;
pub mod replace;
pub mod report;
pub mod swarm;
pub mod teams;

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptionsBuilder, RemoveVolumeOptionsBuilder};
use futures::StreamExt;
use thiserror::Error;

use crate::config::DockerConfig;
use crate::task::TaskError;

pub use containers::{ContainerState, Owned, Workload};

/// An engine error, named by what was being done.
#[derive(Debug, Error)]
pub enum DockerError {
    #[error("cannot connect to the Docker engine at {host}: {source}")]
    Connect {
        host: String,
        source: bollard::errors::Error,
    },
    #[error("{what}: {message}")]
    Engine { what: String, message: String },
    /// The engine went away, timed out or answered 5xx: may pass, so the task is retried.
    #[error("{what}: {message} (the Docker engine is unreachable or failing; will retry)")]
    Transient { what: String, message: String },
    #[error("image {image} is not present and could not be pulled: {message}")]
    ImageMissing { image: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unhealthy(String),
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
    #[error("cancelled while {0}")]
    Cancelled(String),
}

impl DockerError {
    /// Wraps a bollard error with what was being done, in plain words (the engine's own message),
    /// classified once here: connection loss, timeouts and 5xx are [`DockerError::Transient`],
    /// the engine's 4xx about the request are final.
    pub fn engine(what: impl Into<String>, err: bollard::errors::Error) -> DockerError {
        let what = what.into();
        let message = plain(&err);
        if is_transient(&err) {
            DockerError::Transient { what, message }
        } else {
            DockerError::Engine { what, message }
        }
    }
}

impl From<DockerError> for TaskError {
    fn from(err: DockerError) -> TaskError {
        match &err {
            // The engine being away or busy may pass; everything else is about this team.
            DockerError::Connect { .. } | DockerError::Transient { .. } => {
                TaskError::Retryable(err.to_string())
            }
            DockerError::Cancelled(_) => TaskError::Cancelled(err.to_string()),
            _ => TaskError::Failed(err.to_string()),
        }
    }
}

/// The engine's message without bollard's wrapping.
pub fn plain(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Whether `err` may pass: the connection to the engine failed or broke, the request timed out,
/// or the engine answered 5xx.
pub fn is_transient(err: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    match err {
        E::DockerResponseServerError { status_code, .. } => *status_code >= 500,
        E::IOError { .. }
        | E::HyperResponseError { .. }
        | E::HyperLegacyError { .. }
        | E::RequestTimeoutError
        | E::SocketNotFoundError(_) => true,
        _ => false,
    }
}

/// Whether `err` is the engine's 404.
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether `err` is the engine's 409 (name in use, already connected, ...).
pub fn is_conflict(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// A connected engine; cheap to clone (one HTTP client inside).
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects to `config.docker_host` (or DOCKER_HOST's default, the local socket) and negotiates
    /// the API version with the engine, so requests carry a version the engine knows.
    pub async fn connect(config: &DockerConfig) -> Result<Engine, DockerError> {
        let host = config
            .docker_host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let docker = if host.starts_with("unix://") {
            Docker::connect_with_unix(&host, 120, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_host(&host)
        }
        .map_err(|source| DockerError::Connect {
            host: host.clone(),
            source,
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Connect { host, source })?;
        Ok(Engine { docker })
    }

    /// The bollard client, for what this wrapper does not cover (tests, benchmarks).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure `image` is present: inspects it, pulls it when missing, and names the image in the
    /// error when it can be neither found nor pulled.
    pub async fn ensure_image(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(false),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(DockerError::engine(format!("inspecting image {image}"), e)),
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                // The engine lost mid-pull may pass; the engine's own answer (a 404, or a 500 for
                // an unreachable registry) names an image it can't get: final, with its name.
                let answered = matches!(
                    e,
                    bollard::errors::Error::DockerResponseServerError { .. }
                        | bollard::errors::Error::DockerStreamError { .. }
                );
                if is_transient(&e) && !answered {
                    return Err(DockerError::engine(format!("pulling image {image}"), e));
                }
                return Err(DockerError::ImageMissing {
                    image: image.to_string(),
                    message: plain(&e),
                });
            }
        }
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => Err(DockerError::ImageMissing {
                image: image.to_string(),
                message: plain(&e),
            }),
        }
    }

    /// Creates volume `name` with `labels` unless it exists; returns whether it was created. A
    /// volume of that name that the orchestrator does not own is refused.
    pub async fn ensure_volume(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, DockerError> {
        match self.docker.inspect_volume(name).await {
            Ok(volume) => {
                if !owned_by_us(Some(&volume.labels)) {
                    return Err(DockerError::Conflict(format!(
                        "volume {name} exists but is not managed by the orchestrator"
                    )));
                }
                return Ok(false);
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(DockerError::engine(format!("inspecting volume {name}"), e)),
        }
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map_err(|e| DockerError::engine(format!("creating volume {name}"), e))?;
        Ok(true)
    }

    /// Whether volume `name` exists.
    pub async fn volume_exists(&self, name: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::engine(format!("inspecting volume {name}"), e)),
        }
    }

    /// Removes volume `name` if it exists and is ours.
    pub async fn remove_volume(&self, name: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_volume(name).await {
            Ok(volume) if owned_by_us(Some(&volume.labels)) => {}
            Ok(_) => return Ok(false),
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(DockerError::engine(format!("inspecting volume {name}"), e)),
        }
        let options = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::engine(format!("removing volume {name}"), e)),
        }
    }
}

/// Whether a label map marks the resource as the orchestrator's.
pub fn owned_by_us(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(crate::templates::LABEL_MANAGED_BY))
        .map(String::as_str)
        == Some(crate::templates::MANAGED_BY_VALUE)
}
