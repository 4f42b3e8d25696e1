//! `dns.*` tasks: `dns.record.upsert` sets the record set of one type at one name of the platform
//! zone; `dns.record.delete` removes it. Both change the Redis state atomically (see
//! [`crate::dns::store`]), then rewrite this host's zone file; every other worker and every embedded
//! server hears the change over pub/sub. Both are idempotent: the same task twice leaves the same
//! zone and the same serial. Both first check who owns the name ([`crate::ownership`]): a tenant's
//! records change only for its owner; `_acme-challenge` and the platform names never; CNAME loops
//! are refused.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Handler, Registry};
use crate::context::TaskContext;
use crate::dns::{RecordKind, RecordSet, WriteOutcome, ZoneStore};
use crate::ownership;
use crate::services::Services;
use crate::task::{Task, TaskError};

/// Registers the `dns.*` handlers.
pub fn register(registry: &mut Registry, _services: &Arc<Services>) {
    registry.register("dns.record.upsert", Arc::new(Upsert));
    registry.register("dns.record.delete", Arc::new(Delete));
}

/// The zone store of the configured zone.
fn store(ctx: &TaskContext) -> Result<ZoneStore, TaskError> {
    let services = ctx.services();
    Ok(ZoneStore::from_config(
        &services.config,
        services.redis.clone(),
    )?)
}

/// Rewrites the zone file and says what happened, for the progress message.
async fn write_zone_file(store: &ZoneStore) -> Result<String, TaskError> {
    Ok(match store.write_zone_file().await? {
        Some(WriteOutcome::Written { serial }) => format!("Zone file written (serial {serial})"),
        Some(WriteOutcome::UpToDate { on_disk }) => {
            format!("Zone file already at serial {on_disk}")
        }
        None => "No zone file configured".to_string(),
    })
}

/// `dns.record.upsert {name, type, value | values, ttl?}`.
struct Upsert;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertArgs {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    ttl: Option<u32>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    values: Option<Vec<String>>,
}

#[async_trait]
impl Handler for Upsert {
    fn total_steps(&self, _task: &Task) -> u32 {
        2
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError> {
        let args: UpsertArgs = ctx.payload()?;
        let values = match (args.value, args.values) {
            (Some(value), None) => vec![value],
            (None, Some(values)) => values,
            _ => {
                return Err(TaskError::Invalid(
                    "dns.record.upsert takes exactly one of value and values".into(),
                ));
            }
        };
        let kind = RecordKind::parse(&args.kind)?;
        let store = store(ctx)?;
        let set = RecordSet::new(store.origin(), &args.name, kind, args.ttl, &values)?;
        let fqdn = fqdn(&set.owner, store.origin());
        let services = ctx.services();
        ownership::check_record(
            &services.redis,
            ownership::principal(ctx.task()),
            &set.owner,
            &fqdn,
            Some(kind),
        )
        .await?;
        if kind == RecordKind::Cname {
            check_cname_loop(&store, &set).await?;
        }
        let change = store.upsert(&set).await?;
        ctx.step(if change.changed {
            format!("{fqdn} {kind} set (serial {})", change.serial)
        } else {
            format!("{fqdn} {kind} already as asked (serial {})", change.serial)
        })
        .await?;
        ctx.step(write_zone_file(&store).await?).await?;
        Ok(json!({
            "name": fqdn,
            "type": kind,
            "ttl": set.ttl,
            "values": set.values,
            "changed": change.changed,
            "serial": change.serial,
        }))
    }
}

/// `dns.record.delete {name, type?}`.
struct Delete;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteArgs {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[async_trait]
impl Handler for Delete {
    fn total_steps(&self, _task: &Task) -> u32 {
        2
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Value, TaskError> {
        let args: DeleteArgs = ctx.payload()?;
        let kind = args.kind.as_deref().map(RecordKind::parse).transpose()?;
        let store = store(ctx)?;
        let owner = crate::dns::records::owner(store.origin(), &args.name)?;
        let fqdn = fqdn(&owner, store.origin());
        ownership::check_record(
            &ctx.services().redis,
            ownership::principal(ctx.task()),
            &owner,
            &fqdn,
            kind,
        )
        .await?;
        let change = store.delete(&owner, kind).await?;
        let what = kind.map_or("all types".to_string(), |k| k.to_string());
        ctx.step(if change.changed {
            format!("{fqdn} {what} removed (serial {})", change.serial)
        } else {
            format!("{fqdn} {what} was not there")
        })
        .await?;
        ctx.step(write_zone_file(&store).await?).await?;
        Ok(json!({
            "name": fqdn,
            "type": kind,
            "changed": change.changed,
            "serial": change.serial,
        }))
    }
}

/// Longest CNAME chain followed inside the zone when looking for a loop.
const MAX_CHAIN: usize = 16;

/// Refuses a CNAME that points at itself or closes a loop through the zone's other CNAMEs
/// (`a → b → a`): resolvers would chase it until they give up.
async fn check_cname_loop(store: &ZoneStore, set: &RecordSet) -> Result<(), TaskError> {
    let zone = store.snapshot().await?;
    let origin = store.origin();
    let relative = |target: &str| -> Option<String> {
        crate::dns::records::owner(origin, target)
            .ok()
            .filter(|_| target == origin || target.ends_with(&format!(".{origin}")))
    };
    let mut chain = vec![fqdn(&set.owner, origin)];
    let mut next = set.values.first().cloned().unwrap_or_default();
    for _ in 0..MAX_CHAIN {
        let Some(owner) = relative(&next) else {
            return Ok(());
        };
        chain.push(fqdn(&owner, origin));
        if owner == set.owner {
            return Err(TaskError::Invalid(format!(
                "refused: CNAME loop {}",
                chain.join(" -> ")
            )));
        }
        match zone.get(&owner, RecordKind::Cname) {
            Some(target) => next = target.values.first().cloned().unwrap_or_default(),
            None => return Ok(()),
        }
    }
    Err(TaskError::Invalid(format!(
        "refused: CNAME chain longer than {MAX_CHAIN}: {}",
        chain.join(" -> ")
    )))
}

/// `owner` (relative, `@` for the apex) fully qualified.
fn fqdn(owner: &str, origin: &str) -> String {
    if owner == "@" {
        origin.to_string()
    } else {
        format!("{owner}.{origin}")
    }
}
