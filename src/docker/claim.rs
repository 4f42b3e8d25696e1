//! Who may act on a slug, checked before a run has any side effect: the slug itself (a DNS label),
//! its kind (a team and a sandbox never share a slug, whether claimed or only recorded from before
//! claims existed) and its owner (a user never provisions, deletes or restarts another user's
//! tenant; the platform may). A first provision then claims the tenant's name space in
//! [`crate::ownership`], journaled so that a rolled-back first provision releases it, and takes
//! over the DNS records and certificate squatted in that space before the tenant existed.

use super::journal::{EntryKind, Journal};
use super::record::read_record;
use super::report::Progress;
use crate::ownership;
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::{Kind, Rendered};
use crate::validate;

/// Checks a slug before anything reaches the engine.
pub fn check_slug(slug: &str) -> Result<(), TaskError> {
    validate::slug(slug).map_err(TaskError::from)
}

/// Refuses a lifecycle task on a tenant another user owns. The platform (no `user_id`: the CLI,
/// `reconcile --fix`) may run any tenant's lifecycle.
pub(super) fn check_owner(
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
pub(super) async fn check_kind(
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

/// What the tenant was before this run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fresh {
    /// `tenant:<slug>` existed (for this kind).
    pub(super) claimed: bool,
    /// `<kind>:<slug>` existed.
    pub(super) recorded: bool,
}

/// Claims the tenant's name space if nobody has (journaled, so a rolled-back first provision
/// releases it); a brand-new tenant takes over records squatted in its space.
pub(super) async fn claim_space(
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
