//! What Redis holds of a tenant and what it announces: the `<kind>:<slug>` hash (status,
//! containers, network, template_hash, error, updated_at) and the `teams` / `sandboxes` set that
//! provision, delete and the lifecycle tasks write, the status events they publish on
//! `team:status` / `sandbox:status`, and the tenant's host name. [`super::teams::reconcile`]
//! compares this record with what the engine runs; nothing here touches the engine.

use std::collections::BTreeMap;

use serde_json::Value;

use super::report::Progress;
use crate::config::Config;
use crate::keys;
use crate::progress::ResourceEvent;
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::Kind;

/// Status channel of a kind.
pub fn channel(kind: Kind) -> &'static str {
    match kind {
        Kind::Team => keys::TEAM_STATUS,
        Kind::Sandbox => keys::SANDBOX_STATUS,
    }
}

/// Redis key of a tenant's record.
pub fn record_key(kind: Kind, slug: &str) -> String {
    match kind {
        Kind::Team => keys::team(slug),
        Kind::Sandbox => keys::sandbox(slug),
    }
}

/// Redis set of a kind's slugs.
pub fn set_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Team => keys::TEAMS,
        Kind::Sandbox => keys::SANDBOXES,
    }
}

/// The recorded state of a tenant (`<kind>:<slug>` hash).
pub async fn read_record(
    services: &Services,
    kind: Kind,
    slug: &str,
) -> Result<BTreeMap<String, String>, TaskError> {
    let mut conn = services.redis.get().await?;
    let map: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(record_key(kind, slug))
        .query_async(&mut *conn)
        .await?;
    Ok(map)
}

/// Writes the tenant's record and adds it to its set.
pub(super) async fn write_record(
    services: &Services,
    kind: Kind,
    slug: &str,
    fields: &[(&str, String)],
) -> Result<(), TaskError> {
    let mut conn = services.redis.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut hset = redis::cmd("HSET");
    hset.arg(record_key(kind, slug));
    for (k, v) in fields {
        hset.arg(*k).arg(v);
    }
    hset.arg("updated_at").arg(crate::progress::now());
    pipe.add_command(hset).ignore();
    pipe.cmd("SADD").arg(set_key(kind)).arg(slug).ignore();
    pipe.query_async::<()>(&mut *conn).await?;
    Ok(())
}

/// Forgets a tenant in Redis.
pub(super) async fn delete_record(
    services: &Services,
    kind: Kind,
    slug: &str,
) -> Result<(), TaskError> {
    let mut conn = services.redis.get().await?;
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(record_key(kind, slug))
        .ignore()
        .cmd("SREM")
        .arg(set_key(kind))
        .arg(slug)
        .ignore()
        .query_async::<()>(&mut *conn)
        .await?;
    Ok(())
}

/// Announces the tenant's new status on its kind's channel (through the task's context when there
/// is one).
pub(super) async fn publish(
    progress: &dyn Progress,
    services: &Services,
    kind: Kind,
    slug: &str,
    status: &str,
    metadata: Value,
    error: Option<&str>,
) -> Result<(), TaskError> {
    let mut event = ResourceEvent::new(kind.as_str(), slug, status, metadata);
    if let Some(e) = error {
        event = event.with_error(e);
    }
    match progress.context() {
        Some(ctx) => ctx.publish_resource(channel(kind), &event).await,
        None => {
            let mut conn = services.redis.get().await?;
            crate::progress::publish_resource(&mut *conn, channel(kind), &event).await?;
            Ok(())
        }
    }
}

/// The tenant's host name, `<slug>.<domain>`.
pub(super) fn host(config: &Config, slug: &str) -> String {
    format!("{slug}.{}", config.platform.domain.trim_end_matches('.'))
}
