//! The renewal scheduler: a loop the worker spawns ([`run`]) that, every `renew_check_s`, looks at
//! the stored certificates and enqueues a `certificate.renew` task (LPUSH onto
//! `queue:certificates:normal`) for each one within `renew_before_days` of its expiry.
//!
//! With several workers only one schedules: it holds a lease in Redis (`SET NX PX`, refreshed at a
//! third of its length, released at shutdown); the others keep trying to take it, so a dead
//! scheduler is replaced within one lease. A certificate is enqueued once per expiry date (the hash
//! remembers `renewal_enqueued_for`), and the task carries `if_due`, so a duplicate renews nothing.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use deadpool_redis::redis::{self, Script};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::storage::{CertStore, STATUS_VALID};
use crate::keys;
use crate::services::Services;
use crate::task::TaskError;

/// Length of the scheduling lease.
pub const LEASE: Duration = Duration::from_secs(30);

/// Extends the lease only while we still hold it.
static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          else return 0 end",
    )
});

/// Deletes the lease only if it is ours.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
          else return 0 end",
    )
});

/// Marks an expiry date as enqueued (HSETNX) and pushes the task only if it was not yet.
static ENQUEUE_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
            redis.call('LPUSH', KEYS[2], ARGV[3])
            return 1
          else return 0 end",
    )
});

/// Runs the scheduler until `shutdown` fires; errors (Redis away) are logged and retried.
pub async fn run(services: Arc<Services>, shutdown: CancellationToken) {
    let holder = format!("renewal-{}", uuid::Uuid::new_v4().simple());
    let check_every = Duration::from_secs(services.config.acme.renew_check_s.max(1));
    let tick = (LEASE / 3).min(check_every);
    let mut holding = false;
    let mut next_check = tokio::time::Instant::now();
    loop {
        match lease(&services.redis, &holder, holding).await {
            Ok(now_holding) => {
                if now_holding && !holding {
                    tracing::info!(%holder, "renewal scheduler took the lease");
                    next_check = tokio::time::Instant::now();
                }
                holding = now_holding;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewal scheduler cannot reach Redis");
                holding = false;
            }
        }
        if holding && tokio::time::Instant::now() >= next_check {
            match enqueue_due(&services).await {
                Ok(names) if !names.is_empty() => {
                    tracing::info!(certificates = ?names, "renewals enqueued");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "renewal pass failed"),
            }
            next_check = tokio::time::Instant::now() + check_every;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    if holding && let Ok(mut conn) = services.redis.get().await {
        let _: Result<i64, _> = RELEASE
            .key(keys::RENEWAL_LEASE)
            .arg(&holder)
            .invoke_async(&mut *conn)
            .await;
    }
}

/// Takes the lease (when not holding it) or refreshes it; returns whether we hold it now.
async fn lease(
    redis: &deadpool_redis::Pool,
    holder: &str,
    holding: bool,
) -> Result<bool, TaskError> {
    let mut conn = redis.get().await?;
    let ms = LEASE.as_millis() as u64;
    if holding {
        let refreshed: i64 = REFRESH
            .key(keys::RENEWAL_LEASE)
            .arg(holder)
            .arg(ms)
            .invoke_async(&mut *conn)
            .await?;
        if refreshed == 1 {
            return Ok(true);
        }
    }
    let taken: Option<String> = redis::cmd("SET")
        .arg(keys::RENEWAL_LEASE)
        .arg(holder)
        .arg("NX")
        .arg("PX")
        .arg(ms)
        .query_async(&mut *conn)
        .await?;
    Ok(taken.is_some())
}

/// One pass: enqueues `certificate.renew` for every valid certificate due for renewal that was not
/// enqueued for its current expiry yet. Returns the names enqueued.
pub async fn enqueue_due(services: &Services) -> Result<Vec<String>, TaskError> {
    let store = CertStore::new(&services.config.acme, services.redis.clone());
    let now = chrono::Utc::now();
    let before = services.config.acme.renew_before_days;
    let mut enqueued = Vec::new();
    let mut conn = services.redis.get().await?;
    for record in store.list().await? {
        if record.status != STATUS_VALID || !record.renewal_due(before, now) {
            continue;
        }
        let key = keys::certificate(&record.name);
        let task = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "certificate.renew",
            "payload": { "name": record.name, "if_due": true },
            "idempotency_key": format!("certificate.renew:{}:{}", record.name, record.serial),
            "created_at": crate::progress::now(),
        });
        // Claim this expiry date and push in one script: only one pass enqueues it, and a
        // failed push leaves no claim behind.
        let pushed: i64 = ENQUEUE_ONCE
            .key(&key)
            .key(keys::CERTIFICATES_NORMAL_QUEUE)
            .arg(format!("renewal_enqueued_for:{}", record.not_after))
            .arg(crate::progress::now())
            .arg(task.to_string())
            .invoke_async(&mut *conn)
            .await?;
        if pushed == 0 {
            continue;
        }
        enqueued.push(record.name);
    }
    Ok(enqueued)
}
