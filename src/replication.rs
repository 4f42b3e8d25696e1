//! Waiting for replicas where a lost acknowledgement would lose or duplicate a task.
//!
//! Redis replicates asynchronously: a write the master acknowledged can be missing on the replica
//! Sentinel promotes. Most of the worker's writes survive that (a lost progress note or lease
//! renewal is written again), but three decide what the worker does next. All three travel in the
//! worker's one exchange with the queue (`Queue::tick`, in `src/worker/claim.rs`), which is wrapped
//! in [`replicated`]:
//! - the **claim**: it takes the task from its list and draws its fencing token from
//!   `{orch}:fence`. Lost, the task is back in its list on the new master, the counter is back
//!   too, and a second attempt could draw the *same* token — fencing could no longer tell the two
//!   apart. The worker runs nothing it claimed until a replica has the claim.
//! - the **begin**: it counts the attempt and takes the resource lock. Lost, the handler would run
//!   without the lock on the new master.
//! - the **finish**: lost, the task is in flight again on the new master and runs a second time
//!   once its lease runs out, after the worker reported it done.
//!
//! With `REDIS_WAIT_REPLICAS=n` (> 0), each of them is followed by a probe on a connection of its
//! own: `INCR {orch}:replicated` then `WAIT n REDIS_WAIT_TIMEOUT_MS`. Replication is one ordered
//! stream, so a replica that has the probe has every write the master applied before it, the
//! wrapped one included. While the master stays the same an unacknowledged probe is sent again,
//! for up to a lease. When the master changed between the write and the acknowledgement (the
//! follower's epoch, [`crate::sentinel`]), or nothing was acknowledged within the lease, the write
//! is *in doubt* and the call returns an error like any Redis failure: a claim is then not run (if
//! it survived, its lease runs out and it is recovered), a begin or a finish is written again
//! (finish is idempotent: a second run finds the claim gone). Concurrent callers share one probe
//! (a probe sent after a caller's write covers it), like a group commit. With
//! `REDIS_WAIT_REPLICAS=0` (the default) [`replicated`] just awaits the write.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex as StdMutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::warn;

use crate::config::{Config, RedisConfig};
use crate::keys;
use crate::sentinel::{self, Follower};

/// A write's result that says whether there is something to have acknowledged.
pub trait Written {
    /// Whether a replica must have what produced this result.
    fn needs_replica(&self) -> bool;
}

impl Written for crate::queue::Ticked {
    /// A worker's exchange with the queue wrote something when it finished, began or claimed a
    /// task; a finish that found its claim gone may follow an earlier run of the same finish whose
    /// reply was lost, so it counts too.
    fn needs_replica(&self) -> bool {
        !self.finished.is_empty() || !self.begun.is_empty() || !self.taken.is_empty()
    }
}

/// Awaits `write`, then, when `REDIS_WAIT_REPLICAS` > 0 and it wrote, waits until that many
/// replicas have it. An error when the write failed or is in doubt (the master changed meanwhile,
/// or no acknowledgement within a lease); callers retry as for any Redis error.
pub async fn replicated<T, F>(config: &Config, write: F) -> redis::RedisResult<T>
where
    T: Written,
    F: Future<Output = redis::RedisResult<T>>,
{
    let redis = &config.redis;
    if redis.redis_wait_replicas == 0 {
        let result = write.await;
        if let Err(err) = &result
            && err.code() == Some("READONLY")
            && let Some(follower) = sentinel::follower_of(&redis.redis_url)
        {
            follower.nudge();
        }
        return result;
    }
    let waiter = Waiter::of(redis, config.worker.lease());
    let epoch = waiter.epoch();
    let value = match write.await {
        Ok(value) => value,
        Err(err) => {
            if err.code() == Some("READONLY")
                && let Some(follower) = &waiter.follower
            {
                follower.nudge();
            }
            return Err(err);
        }
    };
    if !value.needs_replica() {
        return Ok(value);
    }
    waiter.confirm(epoch, Instant::now()).await?;
    Ok(value)
}

/// The probe connection of one Redis configuration, shared by every caller in the process.
struct Waiter {
    client: Option<redis::Client>,
    follower: Option<Arc<Follower>>,
    replicas: u32,
    /// One `WAIT`'s timeout.
    timeout: Duration,
    /// Longest wait for an acknowledgement while the master stays the same: a lease (by then
    /// a claim waited for is recovered anyway, and its begin is refused).
    patience: Duration,
    /// The probe connection, and when the last acknowledged probe was sent, under which epoch.
    probe: Mutex<Probe>,
}

#[derive(Default)]
struct Probe {
    conn: Option<MultiplexedConnection>,
    acknowledged: Option<(Instant, u64)>,
}

static WAITERS: LazyLock<StdMutex<HashMap<String, Arc<Waiter>>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

impl Waiter {
    fn of(redis: &RedisConfig, patience: Duration) -> Arc<Self> {
        let key = format!(
            "{}|{}|{}|{}",
            redis.redis_url,
            redis.redis_wait_replicas,
            redis.redis_wait_timeout_ms,
            patience.as_millis()
        );
        let mut waiters = WAITERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        waiters
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Self {
                    client: redis::Client::open(redis.redis_url.as_str()).ok(),
                    follower: sentinel::follower_of(&redis.redis_url),
                    replicas: redis.redis_wait_replicas,
                    timeout: Duration::from_millis(redis.redis_wait_timeout_ms.max(1)),
                    patience,
                    probe: Mutex::new(Probe::default()),
                })
            })
            .clone()
    }

    fn epoch(&self) -> u64 {
        self.follower.as_ref().map_or(0, |f| f.epoch())
    }

    /// Waits until a probe sent after `written` (under `epoch`) is acknowledged by the replicas.
    /// While the master stays the same, an unacknowledged probe is sent again (the replica may be
    /// resyncing, or not be one yet right after a failover) for up to the patience.
    async fn confirm(&self, epoch: u64, written: Instant) -> redis::RedisResult<()> {
        loop {
            let mut probe = self.probe.lock().await;
            if probe
                .acknowledged
                .is_some_and(|(sent, at)| at == epoch && sent >= written)
            {
                return Ok(());
            }
            if self.epoch() != epoch {
                return Err(in_doubt("the Redis master changed after the write"));
            }
            let sent = Instant::now();
            let acked = match self.probe_once(&mut probe).await {
                Ok(acked) => acked,
                Err(err) => {
                    probe.conn = None;
                    return Err(in_doubt(&format!("cannot wait for the replicas: {err}")));
                }
            };
            if self.epoch() != epoch {
                return Err(in_doubt(
                    "the Redis master changed while waiting for the replicas",
                ));
            }
            if acked >= i64::from(self.replicas) {
                probe.acknowledged = Some((sent, epoch));
                return Ok(());
            }
            let waited = written.elapsed();
            if waited >= self.patience {
                return Err(in_doubt(&format!(
                    "{acked} of {} replicas acknowledged within {waited:?}",
                    self.replicas
                )));
            }
            warn!(
                acked,
                wanted = self.replicas,
                ?waited,
                "replicas have not acknowledged a write yet; waiting"
            );
        }
    }

    async fn probe_once(&self, probe: &mut Probe) -> redis::RedisResult<i64> {
        if probe.conn.is_none() {
            let client = self
                .client
                .as_ref()
                .ok_or_else(|| in_doubt("invalid REDIS_URL"))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(self.timeout + Duration::from_secs(2)));
            probe.conn = Some(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        let Some(conn) = probe.conn.as_mut() else {
            return Err(in_doubt("no probe connection"));
        };
        let (_, acked): (i64, i64) = redis::pipe()
            .cmd("INCR")
            .arg(keys::REPLICATION_PROBE)
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout.as_millis() as u64)
            .query_async(conn)
            .await?;
        Ok(acked)
    }
}

/// An error the worker treats like any Redis failure (waited out and retried, never final).
fn in_doubt(why: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(format!("write in doubt: {why}")))
}
