//! `certificate.*` tasks: `certificate.issue {domains, challenge?, name?, force?}`,
//! `certificate.renew {name, if_due?}` and `certificate.revoke {name, reason?}`, all run by the
//! [`Acme`] service (see `crate::acme`), after checking that the task's user owns the names
//! ([`crate::ownership`]). Each locks `certificate:<name>`, so two tasks never change one
//! certificate at once.

use std::sync::Arc;

use async_trait::async_trait;
use instant_acme::RevocationReason;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Handler, Registry};
use crate::acme::issue::{ISSUE_STEPS, Report};
use crate::acme::{Acme, ChallengeKind};
use crate::context::TaskContext;
use crate::ownership;
use crate::services::Services;
use crate::task::{Task, TaskError};

/// Registers the `certificate.*` handlers on an [`Acme`] service for `services`, answering DNS-01
/// through the platform zone (see [`acme_for`]).
pub fn register(registry: &mut Registry, services: &Arc<Services>) {
    register_with(registry, acme_for(services));
}

/// The ACME service of `services` (see [`Acme::for_platform`]).
pub fn acme_for(services: &Services) -> Arc<Acme> {
    Acme::for_platform(services.config.clone(), services.redis.clone())
}

/// Registers the `certificate.*` handlers on `acme` (share one service with
/// `Services::certificates`).
pub fn register_with(registry: &mut Registry, acme: Arc<Acme>) {
    registry.register("certificate.issue", Arc::new(Issue(acme.clone())));
    registry.register("certificate.renew", Arc::new(Renew(acme.clone())));
    registry.register("certificate.revoke", Arc::new(Revoke(acme)));
}

/// The lock key of the certificate a payload names (by `name`, or derived from the first domain).
fn lock_of(acme: &Acme, task: &Task) -> Option<String> {
    let name = task.payload.get("name").and_then(Value::as_str);
    let name = match name {
        Some(name) => name.to_string(),
        None => {
            let args: IssueArgs = serde_json::from_value(task.payload.clone()).ok()?;
            acme.request(None, &args.domains, args.challenge).ok()?.name
        }
    };
    Some(format!("certificate:{name}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueArgs {
    /// Names to certify (in the platform zone; `*.<name>` with dns-01).
    domains: Vec<String>,
    /// `dns-01` (default) or `http-01`.
    #[serde(default)]
    challenge: ChallengeKind,
    /// Certificate name; default: derived from the first domain.
    #[serde(default)]
    name: Option<String>,
    /// Issue even when a valid stored certificate already covers the names.
    #[serde(default)]
    force: bool,
}

/// `certificate.issue`.
struct Issue(Arc<Acme>);

#[async_trait]
impl Handler for Issue {
    fn total_steps(&self, _task: &Task) -> u32 {
        ISSUE_STEPS
    }

    fn resource(&self, task: &Task) -> Option<String> {
        lock_of(&self.0, task)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError> {
        let args: IssueArgs = ctx.payload()?;
        let request = self
            .0
            .request(args.name.as_deref(), &args.domains, args.challenge)?;
        ownership::check_certificate(
            &ctx.services().redis,
            ownership::principal(ctx.task()),
            &self.0.zone(),
            Some(&request.name),
            &request.domains,
        )
        .await?;
        if !args.force
            && let Some(record) = self.0.reusable(&request).await?
            && record.domains == request.domains
        {
            ctx.note(format!(
                "Certificate {} already covers {} until {}",
                record.name,
                request.domains.join(", "),
                record.not_after
            ))
            .await?;
            return Ok(json!({ "issued": false, "certificate": record.to_json() }));
        }
        let record = self.0.issue(ctx, &request, Report::Steps).await?;
        Ok(json!({ "issued": true, "certificate": record.to_json() }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewArgs {
    name: String,
    /// Renew only when within `renew_before_days` of expiry (what the scheduler sends).
    #[serde(default)]
    if_due: bool,
}

/// `certificate.renew`.
struct Renew(Arc<Acme>);

#[async_trait]
impl Handler for Renew {
    fn total_steps(&self, _task: &Task) -> u32 {
        ISSUE_STEPS + 1
    }

    fn resource(&self, task: &Task) -> Option<String> {
        lock_of(&self.0, task)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError> {
        let args: RenewArgs = ctx.payload()?;
        let principal = ownership::principal(ctx.task());
        // The renewal scheduler (no user_id) renews every stored certificate; users only theirs.
        if !principal.is_empty() {
            check_stored(&self.0, ctx, &args.name).await?;
        }
        self.0.renew(ctx, &args.name, args.if_due).await
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeArgs {
    name: String,
    /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged, superseded,
    /// cessationOfOperation.
    #[serde(default)]
    reason: Option<String>,
}

fn reason(value: Option<&str>) -> Result<Option<RevocationReason>, TaskError> {
    Ok(match value {
        None => None,
        Some("unspecified") => Some(RevocationReason::Unspecified),
        Some("keyCompromise") => Some(RevocationReason::KeyCompromise),
        Some("affiliationChanged") => Some(RevocationReason::AffiliationChanged),
        Some("superseded") => Some(RevocationReason::Superseded),
        Some("cessationOfOperation") => Some(RevocationReason::CessationOfOperation),
        Some(other) => {
            return Err(TaskError::Invalid(format!(
                "reason {other:?} is not one of unspecified, keyCompromise, affiliationChanged, \
                 superseded, cessationOfOperation"
            )));
        }
    })
}

/// Refuses a task on a stored certificate whose names its principal does not own.
async fn check_stored(acme: &Acme, ctx: &TaskContext, name: &str) -> Result<(), TaskError> {
    let Some(record) = acme.store().get(name).await? else {
        // Nothing stored: the operation itself says so.
        return Ok(());
    };
    ownership::check_certificate(
        &ctx.services().redis,
        ownership::principal(ctx.task()),
        &acme.zone(),
        None,
        &record.domains,
    )
    .await
}

/// `certificate.revoke`.
struct Revoke(Arc<Acme>);

#[async_trait]
impl Handler for Revoke {
    fn total_steps(&self, _task: &Task) -> u32 {
        3
    }

    fn resource(&self, task: &Task) -> Option<String> {
        lock_of(&self.0, task)
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError> {
        let args: RevokeArgs = ctx.payload()?;
        let reason = reason(args.reason.as_deref())?;
        check_stored(&self.0, ctx, &args.name).await?;
        self.0.revoke(ctx, &args.name, reason).await
    }
}
