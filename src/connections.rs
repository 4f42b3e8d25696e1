//! Redis connections: the pool for ordinary commands, and dedicated connections for blocking calls.
//!
//! Pooled connections are multiplexed with a short response timeout; a blocking command on one would
//! time out on the client while the server keeps it blocked, and the next push would be handed to the
//! abandoned call (see COMPONENT-NOTES). Blocking calls therefore get connections of their own with
//! the response timeout off, and every blocking call carries its own server-side timeout.
//!
//! With Redis Sentinel, the URL these functions get is the loopback follower's
//! ([`crate::sentinel::follow`] rewrites `REDIS_URL` at start), so every kind of connection here
//! reaches the current master and is cut and re-made when it changes.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use thiserror::Error;

/// Why Redis could not be reached or configured.
#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("invalid Redis URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot build the Redis pool: {0}")]
    Pool(String),
    #[error("cannot connect to Redis: {0}")]
    Connect(#[from] redis::RedisError),
}

/// Response timeout of pooled connections: generous enough for a slow script, short enough that a
/// dead server is noticed.
const POOLED_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the pool of connections for ordinary commands.
pub fn pool(url: &str, size: usize) -> Result<Pool, ConnectionError> {
    let mut config = deadpool_redis::Config::from_url(url);
    config.pool = Some(deadpool_redis::PoolConfig::new(size.max(1)));
    let pool = config
        .builder()
        .map_err(|e| ConnectionError::BadUrl {
            url: redact(url),
            message: e.to_string(),
        })?
        .runtime(Runtime::Tokio1)
        .post_create(deadpool_redis::Hook::async_fn(|conn, _| {
            Box::pin(async move {
                conn.set_response_timeout(POOLED_RESPONSE_TIMEOUT);
                Ok(())
            })
        }))
        .build()
        .map_err(|e| ConnectionError::Pool(e.to_string()))?;
    Ok(pool)
}

/// A client for dedicated connections (blocking calls, pub/sub) and the worker's hot path, with
/// `TCP_NODELAY` (the client crate leaves Nagle's algorithm on): a command written while an earlier
/// one on the same connection is unacknowledged (the exchange loop pipelines two calls) is sent at
/// once rather than held back until the ACK.
pub fn client(url: &str) -> Result<redis::Client, ConnectionError> {
    use redis::IntoConnectionInfo;
    use redis::io::tcp::TcpSettings;
    let bad = |e: redis::RedisError| ConnectionError::BadUrl {
        url: redact(url),
        message: e.to_string(),
    };
    let info = url
        .into_connection_info()
        .map_err(bad)?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    redis::Client::open(info).map_err(bad)
}

/// A dedicated connection without a response timeout, for blocking commands that carry their own.
pub async fn blocking(client: &redis::Client) -> Result<MultiplexedConnection, ConnectionError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// A multiplexed connection that reconnects by itself, for the worker's hot path: unlike a pooled
/// connection it needs no health-check round trip per use. Waits up to `patience` for Redis at start.
pub async fn manager(
    client: &redis::Client,
    patience: Duration,
) -> Result<redis::aio::ConnectionManager, ConnectionError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(POOLED_RESPONSE_TIMEOUT));
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    loop {
        match client
            .get_connection_manager_with_config(config.clone())
            .await
        {
            Ok(manager) => return Ok(manager),
            Err(err) if tokio::time::Instant::now() + pause > deadline => {
                return Err(ConnectionError::Connect(err));
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?pause, "Redis not reachable yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("rediss://:s3cret@redis.example:6380/0"),
            "rediss://***@redis.example:6380/0"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
