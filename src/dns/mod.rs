//! The platform DNS zone: its state in Redis (the source of truth, shared by every worker), the
//! CoreDNS zone file rendered from it, and an embedded authoritative server answering from it.
//!
//! - [`records`]: record types and the validation of every name and value before it is stored.
//! - [`store`]: [`ZoneStore`], the zone in Redis: atomic changes (Lua) with a strictly increasing SOA
//!   serial and a notification on [`crate::keys::DNS_CHANGES`]; the ACME challenge helpers
//!   ([`ZoneStore::add_challenge`] / [`ZoneStore::remove_challenge`]); the [`NameRegistry`] seam.
//! - [`zonefile`]: the master file for CoreDNS, written atomically, never with an older serial.
//! - [`server`]: the embedded authoritative server (hickory) on UDP and TCP.
//!
//! Propagation: a change returns once Redis holds it and the notification is published. Every
//! follower ([`follow`]: the zone file writer of each worker, each embedded server) hears it over
//! pub/sub, reads a fresh snapshot and applies it if its serial is newer; on every (re)subscribe it
//! reloads the whole zone, so nothing is missed across a Redis reconnect.

pub mod records;
pub mod server;
pub mod store;
pub mod zonefile;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::FutureExt;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use records::{RecordError, RecordKind, RecordSet, Zone};
pub use server::{DnsServer, serve};
pub use store::{Change, ZoneStore};
pub use zonefile::WriteOutcome;

use crate::config::Config;
use crate::keys;
use crate::services::NameRegistry;
use crate::task::TaskError;

/// Why a DNS operation failed.
#[derive(Debug, Error)]
pub enum DnsError {
    #[error(transparent)]
    Invalid(#[from] RecordError),
    #[error("DNS record conflict: {0}")]
    Conflict(String),
    #[error("DNS configuration: {0}")]
    Config(String),
    #[error("Redis (DNS zone state): {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
    #[error("Redis pool (DNS zone state): {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("DNS zone state in Redis is corrupt: {0}")]
    Corrupt(String),
    #[error("zone file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("DNS server: {0}")]
    Server(String),
}

impl From<DnsError> for TaskError {
    fn from(error: DnsError) -> Self {
        match error {
            DnsError::Invalid(_) => TaskError::Invalid(error.to_string()),
            DnsError::Conflict(_) | DnsError::Config(_) | DnsError::Corrupt(_) => {
                TaskError::Failed(error.to_string())
            }
            DnsError::Redis(_) | DnsError::Pool(_) | DnsError::Io { .. } | DnsError::Server(_) => {
                TaskError::Retryable(error.to_string())
            }
        }
    }
}

/// The seam provisioning handlers call: `<slug>` A → the ingress address.
#[async_trait]
impl NameRegistry for ZoneStore {
    async fn add_name(&self, slug: &str) -> Result<String, TaskError> {
        crate::validate::slug(slug)?;
        let set = RecordSet::new(
            self.origin(),
            slug,
            RecordKind::A,
            None,
            &[self.ingress_ip().to_string()],
        )?;
        let change = self.upsert(&set).await?;
        self.write_zone_file().await?;
        Ok(if change.changed {
            format!(
                "DNS: {slug}.{} A {} (serial {})",
                self.origin(),
                self.ingress_ip(),
                change.serial
            )
        } else {
            format!(
                "DNS: {slug}.{} already points at {}",
                self.origin(),
                self.ingress_ip()
            )
        })
    }

    async fn has_name(&self, slug: &str) -> Result<bool, TaskError> {
        crate::validate::slug(slug)?;
        Ok(self.snapshot().await?.get(slug, RecordKind::A).is_some())
    }

    async fn clear_space(&self, slug: &str) -> Result<String, TaskError> {
        crate::validate::slug(slug)?;
        let suffix = format!(".{slug}");
        let squatted: Vec<(String, RecordKind)> = self
            .snapshot()
            .await?
            .sets
            .into_iter()
            .filter(|s| s.owner == slug || s.owner.ends_with(&suffix))
            .filter(|s| !s.owner.starts_with("_acme-challenge"))
            .map(|s| (s.owner, s.kind))
            .collect();
        if squatted.is_empty() {
            return Ok(String::new());
        }
        let mut removed = Vec::new();
        for (owner, kind) in &squatted {
            self.delete(owner, Some(*kind)).await?;
            removed.push(format!("{owner} {kind}"));
        }
        self.write_zone_file().await?;
        Ok(format!(
            "DNS: removed records set in {slug}.{} before the tenant existed: {}",
            self.origin(),
            removed.join(", ")
        ))
    }

    async fn remove_name(&self, slug: &str) -> Result<String, TaskError> {
        crate::validate::slug(slug)?;
        let change = self.delete(slug, Some(RecordKind::A)).await?;
        self.write_zone_file().await?;
        Ok(if change.changed {
            format!(
                "DNS: removed {slug}.{} (serial {})",
                self.origin(),
                change.serial
            )
        } else {
            format!("DNS: {slug}.{} had no record", self.origin())
        })
    }
}

impl From<RecordError> for TaskError {
    fn from(error: RecordError) -> Self {
        TaskError::Invalid(error.to_string())
    }
}

/// Calls `apply` with a fresh snapshot of the zone at start, after every (re)subscribe to
/// [`keys::DNS_CHANGES`] and after every change announced there, until `shutdown`. Bursts of
/// notifications are coalesced into one snapshot. Reconnects with backoff when Redis goes away.
pub async fn follow<F, Fut>(
    redis_url: &str,
    store: ZoneStore,
    shutdown: CancellationToken,
    mut apply: F,
) -> Result<(), DnsError>
where
    F: FnMut(Zone) -> Fut + Send,
    Fut: std::future::Future<Output = ()> + Send,
{
    let client = deadpool_redis::redis::Client::open(redis_url)?;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match subscribe(&client).await {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(100);
                // Anything changed while we were not subscribed is picked up here.
                reload(&store, &mut apply).await;
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        message = messages.next() => message,
                    };
                    let Some(message) = message else {
                        tracing::warn!("DNS change subscription lost; resubscribing");
                        break;
                    };
                    let mut ours = is_ours(&message, store.origin());
                    // Coalesce whatever else already arrived: one snapshot covers them all.
                    while let Some(Some(more)) = messages.next().now_or_never() {
                        ours |= is_ours(&more, store.origin());
                    }
                    if ours {
                        reload(&store, &mut apply).await;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot subscribe to DNS changes; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Ok(())
}

async fn subscribe(
    client: &deadpool_redis::redis::Client,
) -> Result<deadpool_redis::redis::aio::PubSub, DnsError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(keys::DNS_CHANGES).await?;
    Ok(pubsub)
}

fn is_ours(message: &deadpool_redis::redis::Msg, origin: &str) -> bool {
    message
        .get_payload::<String>()
        .map(|payload| payload.split(' ').next() == Some(origin))
        .unwrap_or(false)
}

async fn reload<F, Fut>(store: &ZoneStore, apply: &mut F)
where
    F: FnMut(Zone) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    match store.snapshot().await {
        Ok(zone) => apply(zone).await,
        Err(error) => tracing::warn!(%error, "cannot read the DNS zone from Redis"),
    }
}

/// Keeps this host's zone file in step with Redis: every worker runs it (so the file is the same
/// whichever worker made a change). Writes the platform records first if they are missing.
pub async fn run_zone_file_writer(
    config: &Config,
    store: ZoneStore,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    store.ensure_platform_records().await?;
    let dir = config.dns.zones_dir.clone();
    follow(&config.redis.redis_url, store, shutdown, move |zone| {
        let dir = dir.clone();
        async move {
            match zonefile::write(&dir, &zone).await {
                Ok(outcome) => tracing::debug!(?outcome, "zone file"),
                Err(error) => tracing::warn!(%error, "cannot write the zone file"),
            }
        }
    })
    .await
}
