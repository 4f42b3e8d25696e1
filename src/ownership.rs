//! Who owns a name: tenants' name spaces as data, and the rules every DNS and certificate task is
//! checked against before it changes anything.
//!
//! A tenant (team or sandbox) owns the name space `<slug>.<domain>` and everything below it. The
//! first `team.provision` / `sandbox.provision` of a slug claims it in `tenant:<slug>` (kind, owner
//! = the task's `user_id`, the claiming task); the claim goes with `team.delete` / `sandbox.delete`.
//! One slug has one kind: a sandbox can't take a team's slug (and so its host and its A record),
//! nor the other way round. The rules (README "Ownership of names" lists them with their errors):
//! - inside a tenant's space, only tasks from the tenant's owner change records or certificates;
//!   the tenant's own name `<slug>` keeps its A/AAAA/CNAME for the lifecycle (only TXT may be set
//!   there), `*` wildcards are refused inside a tenant;
//! - `_acme-challenge*` names are written only by the ACME flow; the apex, `ns` and the platform
//!   wildcard `*` stay the platform's; certificates for the apex or `*.<domain>` are refused;
//! - certificate names `team-<slug>` / `sandbox-<slug>` of an existing tenant are the lifecycle's;
//! - a name outside every tenant's space is free: the tenant provisioned later takes it over (its
//!   first provision removes records squatted in its space), so a squat never blocks a team.
//!
//! A task without `user_id` is the platform operator's (the CLI); it owns the tenants it
//! provisioned and free names, not the users' tenants.

use std::collections::HashMap;
use std::sync::LazyLock;

use deadpool_redis::redis::Script;

use crate::dns::RecordKind;
use crate::keys;
use crate::task::{Task, TaskError};
use crate::templates::Kind;

/// A tenant's claim on its slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub kind: Kind,
    pub slug: String,
    /// The `user_id` of the claiming task; empty for the platform (no `user_id`).
    pub owner: String,
    /// The task that claimed it.
    pub task: String,
}

/// Who a task acts for: its `user_id`, or the empty string for the platform (no `user_id`).
pub fn principal(task: &Task) -> &str {
    task.user_id.as_deref().unwrap_or("")
}

fn who(principal: &str) -> String {
    if principal.is_empty() {
        "the platform (no user_id)".to_string()
    } else {
        format!("user {principal:?}")
    }
}

/// The claim on `slug`, if any.
pub async fn lookup(redis: &deadpool_redis::Pool, slug: &str) -> Result<Option<Tenant>, TaskError> {
    let mut conn = redis.get().await?;
    let map: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys::tenant(slug))
        .query_async(&mut *conn)
        .await?;
    Ok(
        Kind::parse(map.get("kind").map(String::as_str).unwrap_or("")).map(|kind| Tenant {
            kind,
            slug: slug.to_string(),
            owner: map.get("owner").cloned().unwrap_or_default(),
            task: map.get("task").cloned().unwrap_or_default(),
        }),
    )
}

/// Claims `slug` for (`kind`, `owner`) unless claimed: KEYS[1] = tenant key; ARGV = kind, owner,
/// task, now. Returns 1 (claimed), 0 (already this kind's) or the other kind's name.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local kind = redis.call('HGET', KEYS[1], 'kind')
if kind then
  if kind == ARGV[1] then return 0 end
  return kind
end
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'owner', ARGV[2], 'task', ARGV[3], 'created_at', ARGV[4])
return 1
"#,
    )
});

/// Removes the claim when field ARGV[1] equals ARGV[2]. KEYS[1] = tenant key.
static RELEASE_IF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

/// The refusal when `slug` is another kind's.
pub fn kind_conflict(kind: Kind, slug: &str, other: &str) -> TaskError {
    TaskError::Failed(format!(
        "slug {slug:?} belongs to {other} {slug}: a team and a sandbox never share a slug (their \
         hosts and DNS name would collide); choose another slug for the {}",
        kind.as_str()
    ))
}

/// Claims `slug` for `kind` on behalf of `owner` (atomically). Returns whether this call created
/// the claim; refuses a slug that is another kind's.
pub async fn claim(
    redis: &deadpool_redis::Pool,
    kind: Kind,
    slug: &str,
    owner: &str,
    task_id: &str,
) -> Result<bool, TaskError> {
    let mut conn = redis.get().await?;
    let reply: redis::Value = CLAIM
        .key(keys::tenant(slug))
        .arg(kind.as_str())
        .arg(owner)
        .arg(task_id)
        .arg(crate::progress::now())
        .invoke_async(&mut *conn)
        .await?;
    match reply {
        redis::Value::Int(1) => Ok(true),
        redis::Value::Int(_) => Ok(false),
        redis::Value::BulkString(other) => {
            Err(kind_conflict(kind, slug, &String::from_utf8_lossy(&other)))
        }
        other => Err(TaskError::Retryable(format!(
            "unexpected reply claiming {slug}: {other:?}"
        ))),
    }
}

/// Removes the claim on `slug` if task `task_id` made it (a rolled-back first provision).
pub async fn release(
    redis: &deadpool_redis::Pool,
    slug: &str,
    task_id: &str,
) -> Result<bool, TaskError> {
    let mut conn = redis.get().await?;
    let n: i64 = RELEASE_IF
        .key(keys::tenant(slug))
        .arg("task")
        .arg(task_id)
        .invoke_async(&mut *conn)
        .await?;
    Ok(n == 1)
}

/// Removes the claim on `slug` if it is `kind`'s (the tenant was deleted).
pub async fn forget(redis: &deadpool_redis::Pool, kind: Kind, slug: &str) -> Result<(), TaskError> {
    let mut conn = redis.get().await?;
    let _: i64 = RELEASE_IF
        .key(keys::tenant(slug))
        .arg("kind")
        .arg(kind.as_str())
        .invoke_async(&mut *conn)
        .await?;
    Ok(())
}

/// Refuses a task acting outside what its principal owns.
fn refused(message: String) -> TaskError {
    TaskError::Invalid(format!("refused: {message}"))
}

/// Whether a label is an ACME challenge label.
fn is_challenge_label(label: &str) -> bool {
    label.starts_with("_acme-challenge")
}

/// Checks that `principal` may change the record set(s) of `kind` (None: every type) at `owner`
/// (relative to the zone, as [`crate::dns::records::owner`] returns it; `fqdn` for messages).
pub async fn check_record(
    redis: &deadpool_redis::Pool,
    principal: &str,
    owner: &str,
    fqdn: &str,
    kind: Option<RecordKind>,
) -> Result<(), TaskError> {
    let labels: Vec<&str> = owner.split('.').collect();
    if labels.iter().any(|l| is_challenge_label(l)) {
        return Err(refused(format!(
            "{fqdn} is an ACME challenge name: _acme-challenge records are written only by the \
             certificate flow"
        )));
    }
    if owner == "@" || owner == "*" || owner == "ns" {
        return Err(refused(format!(
            "{fqdn} is a platform record (apex, ns, wildcard)"
        )));
    }
    let slug = labels.last().copied().unwrap_or_default();
    let Some(tenant) = lookup(redis, slug).await? else {
        return Ok(());
    };
    if tenant.owner != principal {
        return Err(refused(format!(
            "{fqdn} is in the name space of {} {slug}, which {} does not own",
            tenant.kind.as_str(),
            who(principal)
        )));
    }
    if labels[0] == "*" {
        return Err(refused(format!(
            "{fqdn}: wildcard records inside a tenant's name space are not allowed"
        )));
    }
    if owner == slug && kind != Some(RecordKind::Txt) {
        let what = kind.map_or("every record type".to_string(), |k| format!("{k}"));
        return Err(refused(format!(
            "{fqdn} is the {} name of {slug}, kept by its lifecycle tasks: {what} can't be changed \
             there (only TXT)",
            tenant.kind.as_str()
        )));
    }
    Ok(())
}

/// Checks that `principal` may obtain a certificate named `name` for `domains` (lowercase, inside
/// `zone` without its trailing dot, as `Acme::request` returns them). `lifecycle_name`: whether
/// the name itself is checked (issue) or only the domains (renew, revoke).
pub async fn check_certificate(
    redis: &deadpool_redis::Pool,
    principal: &str,
    zone: &str,
    name: Option<&str>,
    domains: &[String],
) -> Result<(), TaskError> {
    if let Some(name) = name {
        for kind in [Kind::Team, Kind::Sandbox] {
            if let Some(slug) = name.strip_prefix(&format!("{}-", kind.as_str()))
                && let Some(tenant) = lookup(redis, slug).await?
                && tenant.kind == kind
            {
                return Err(refused(format!(
                    "certificate name {name:?} is reserved for the lifecycle of {} {slug} \
                     ({}.provision with certificate: true)",
                    kind.as_str(),
                    kind.as_str()
                )));
            }
        }
    }
    let zone = zone.trim_end_matches('.');
    for domain in domains {
        let domain = domain.trim_end_matches('.');
        if domain == zone || domain == format!("*.{zone}") {
            return Err(refused(format!(
                "certificates for the platform's apex or wildcard ({domain}) are not issued to tasks"
            )));
        }
        let Some(relative) = domain.strip_suffix(&format!(".{zone}")) else {
            continue;
        };
        let relative = relative.strip_prefix("*.").unwrap_or(relative);
        if relative.split('.').any(is_challenge_label) {
            return Err(refused(format!("{domain} is an ACME challenge name")));
        }
        let slug = relative.rsplit('.').next().unwrap_or_default();
        if let Some(tenant) = lookup(redis, slug).await?
            && tenant.owner != principal
        {
            return Err(refused(format!(
                "{domain} is in the name space of {} {slug}, which {} does not own",
                tenant.kind.as_str(),
                who(principal)
            )));
        }
    }
    Ok(())
}
