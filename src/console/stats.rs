//! Tasks finished per minute, for the console's chart of the last hour.
//!
//! Every worker counts the tasks it finishes for good in its [`Metrics`] (completed, failed) and
//! adds what it counted since its last flush to the hash of the current minute
//! (`stats:tasks:<unix minute>`, kept two hours) every [`FLUSH_EVERY`]: one round trip per worker
//! every few seconds, off the tasks' path, and correct with any number of workers. A console reads
//! the last sixty hashes in one round trip. A worker killed between two flushes loses at most its
//! last few seconds of counts.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::Pool;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::keys;
use crate::metrics::Metrics;

/// Time between two flushes of a worker's counts.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Seconds a minute's hash is kept.
const KEEP_S: u64 = 2 * 3600;

/// The current unix minute.
fn minute_now() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(60)
}

/// Adds `completed` and `failed` to the current minute's hash.
async fn add(pool: &Pool, completed: u64, failed: u64) -> redis::RedisResult<()> {
    let key = keys::task_stats(minute_now());
    let mut conn = pool.get().await.map_err(crate::queue::pool_error)?;
    redis::pipe()
        .cmd("HINCRBY")
        .arg(&key)
        .arg("completed")
        .arg(completed)
        .ignore()
        .cmd("HINCRBY")
        .arg(&key)
        .arg("failed")
        .arg(failed)
        .ignore()
        .cmd("EXPIRE")
        .arg(&key)
        .arg(KEEP_S)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
}

/// Flushes `metrics`' finished counts into Redis every [`FLUSH_EVERY`] until `stop` (then once
/// more). A failed flush is retried with the next one: nothing counted is dropped.
pub async fn run_counter(metrics: Arc<Metrics>, pool: Pool, stop: CancellationToken) {
    let mut flushed = (0u64, 0u64);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        let now = metrics.finished_totals();
        let delta = (now.0 - flushed.0, now.1 - flushed.1);
        if delta != (0, 0) {
            match add(&pool, delta.0, delta.1).await {
                Ok(()) => flushed = now,
                Err(error) => tracing::debug!(%error, "cannot add the finished counts yet"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// One minute of the chart.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Minute {
    /// Its start, RFC 3339 UTC.
    pub at: String,
    pub completed: u64,
    pub failed: u64,
}

/// The last `minutes` minutes, oldest first, the current one last.
pub async fn per_minute(pool: &Pool, minutes: usize) -> redis::RedisResult<Vec<Minute>> {
    let last = minute_now();
    let first = last - minutes as i64 + 1;
    let mut pipe = redis::pipe();
    for minute in first..=last {
        pipe.cmd("HMGET")
            .arg(keys::task_stats(minute))
            .arg("completed")
            .arg("failed");
    }
    let mut conn = pool.get().await.map_err(crate::queue::pool_error)?;
    let rows: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut conn).await?;
    Ok((first..=last)
        .zip(rows)
        .map(|(minute, (completed, failed))| Minute {
            at: chrono::DateTime::from_timestamp(minute * 60, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            completed: completed.unwrap_or(0),
            failed: failed.unwrap_or(0),
        })
        .collect())
}
