//! The services handlers share, built once at start: configuration, the Redis pool, and the seams
//! through which provisioning reaches DNS and certificates.
//!
//! The seams are traits so that `team.provision` does not depend on how a record is published or a
//! certificate obtained; `build` wires the real implementations from the configuration.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::task::TaskError;

/// What work running inside a task reports through, and how it learns it should stop: the task's
/// context seen through the four things a seam needs (`TaskContext` implements it), so that the
/// seams below don't depend on the context that holds them.
#[async_trait]
pub trait TaskReporter: Send + Sync {
    /// Starts the task's next step (a cancellation point).
    async fn step(&self, message: &str) -> Result<(), TaskError>;
    /// A message within the current step.
    async fn note(&self, message: &str) -> Result<(), TaskError>;
    /// Fails with the cancellation (or the lost lease) if the task should stop now.
    async fn checkpoint(&self) -> Result<(), TaskError>;
    /// Fires when the task should stop waiting.
    fn cancellation(&self) -> &CancellationToken;
}

/// How provisioning handlers give a team (or sandbox) its DNS name and take it away.
#[async_trait]
pub trait NameRegistry: Send + Sync {
    /// Points `<slug>.<zone>` at the ingress; idempotent. Returns a line for the progress message.
    async fn add_name(&self, slug: &str) -> Result<String, TaskError>;
    /// Removes the name of `slug`; removing a name that is not there succeeds.
    async fn remove_name(&self, slug: &str) -> Result<String, TaskError>;
    /// Whether `<slug>.<zone>` already has its A record (so a provision adopts it, never removes it).
    async fn has_name(&self, _slug: &str) -> Result<bool, TaskError> {
        Ok(false)
    }
    /// Removes records squatted in `<slug>.<zone>`'s space before its tenant existed (the tenant
    /// wins; `_acme-challenge` names are left to the ACME flow). Returns a line for the progress
    /// message, empty when there was nothing.
    async fn clear_space(&self, _slug: &str) -> Result<String, TaskError> {
        Ok(String::new())
    }
}

/// How provisioning handlers obtain a certificate for a team's names, inside the provisioning task.
#[async_trait]
pub trait CertificateIssuer: Send + Sync {
    /// Obtains (or finds valid) a certificate for `domains`, reporting ACME steps as notes on `ctx`.
    /// Returns what the portal should know about it (name, not-after, paths).
    async fn ensure_certificate(
        &self,
        ctx: &dyn TaskReporter,
        name: &str,
        domains: &[String],
    ) -> Result<Value, TaskError>;

    /// Stops serving the certificate `name` and forgets it: its entry in Traefik's document, its
    /// metadata, its files (so a deleted tenant leaves no served certificate, and the renewal
    /// scheduler no longer sees it). Removing a certificate that does not exist succeeds. Returns a
    /// line for the progress message.
    async fn remove_certificate(&self, name: &str) -> Result<String, TaskError>;

    /// Whether a certificate `name` is stored (a provision that finds one never removes it).
    async fn has_certificate(&self, _name: &str) -> Result<bool, TaskError> {
        Ok(false)
    }
}

/// A registry that publishes no names: says so in the progress message, changes nothing.
pub struct NoNames;

#[async_trait]
impl NameRegistry for NoNames {
    async fn add_name(&self, slug: &str) -> Result<String, TaskError> {
        Ok(format!("DNS not configured: no record added for {slug}"))
    }
    async fn remove_name(&self, slug: &str) -> Result<String, TaskError> {
        Ok(format!("DNS not configured: no record removed for {slug}"))
    }
}

/// An issuer that refuses: certificates were asked for but no CA is configured.
pub struct NoCertificates;

#[async_trait]
impl CertificateIssuer for NoCertificates {
    async fn ensure_certificate(
        &self,
        _ctx: &dyn TaskReporter,
        name: &str,
        _domains: &[String],
    ) -> Result<Value, TaskError> {
        Err(TaskError::Failed(format!(
            "certificate for {name} requested but no ACME issuer is configured"
        )))
    }

    async fn remove_certificate(&self, name: &str) -> Result<String, TaskError> {
        // Nothing can have been issued without an issuer.
        Ok(format!(
            "Certificates not configured: none to remove for {name}"
        ))
    }
}

/// What every handler can reach.
pub struct Services {
    /// The configuration read at start.
    pub config: Arc<Config>,
    /// Pool for ordinary (non-blocking) Redis commands.
    pub redis: deadpool_redis::Pool,
    /// DNS names of teams and sandboxes.
    pub names: Arc<dyn NameRegistry>,
    /// Certificates asked for by provisioning tasks.
    pub certificates: Arc<dyn CertificateIssuer>,
}
