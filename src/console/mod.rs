//! The admin console: a JSON API and a small web UI over the platform's Redis state and Docker
//! engine, live through Server-Sent Events fed from the pub/sub channels.
//!
//! `orchestrator console` serves it alone; a worker serves it too when `CONSOLE_ADDR` is set. It
//! reads the queues through [`crate::admin`] (one place to adapt when the queue's layout changes),
//! tenants through [`crate::docker::teams`], certificates through [`crate::acme::storage`] and the
//! zone through [`crate::dns::ZoneStore`]; it changes state only through the admin operations the
//! CLI uses (retry, purge, cancel, enqueue).
//!
//! - [`api`]: the read-only JSON endpoints (overview, tasks, task detail, dead letters, workers,
//!   tenants, zone, task types with their schemas).
//! - [`actions`]: the endpoints that change state, each behind [`auth`]'s guard.
//! - [`auth`]: the token, read-only mode and CSRF checks.
//! - [`sse`]: the relay from pub/sub to the browsers, with resume by `Last-Event-ID`.
//! - [`stats`]: tasks finished per minute (written by every worker, read for the chart).
//! - [`assets`]: the page, its script and its style sheet, embedded in the binary.
//!
//! Safe by default: bound to loopback, read-only unless `CONSOLE_TOKEN` is set, nothing secret
//! shown (no Redis URL, no keys, no ACME account, no private key paths; payload fields that look
//! like secrets are masked).

pub mod actions;
pub mod api;
pub mod assets;
pub mod auth;
pub mod sse;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::admin::AdminError;
use crate::config::Config;
use crate::connections::{self, ConnectionError};
use crate::queues::Definitions;
use crate::services::Services;
use crate::shutdown::Shutdown;

/// Where `orchestrator console` listens when `CONSOLE_ADDR` is unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9185";

/// Longest a console connection stays open: an event stream is cut then, and the browser
/// reconnects with `Last-Event-ID`, missing nothing.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Why the console could not start.
#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// What every handler of the console shares.
pub struct Console {
    pub config: Arc<Config>,
    pub services: Arc<Services>,
    pub definitions: Arc<Definitions>,
    pub guard: auth::Guard,
    pub hub: Arc<sse::Hub>,
    /// Ends the event streams at shutdown (they would otherwise outlive the listener).
    pub stop: tokio_util::sync::CancellationToken,
}

/// A console serving in the background.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Ends when the listener stopped (after the shutdown signal).
    pub handle: JoinHandle<()>,
}

/// Binds `CONSOLE_ADDR` (or [`DEFAULT_ADDR`]) and serves the console until `shutdown`.
pub async fn start(
    services: Arc<Services>,
    definitions: Arc<Definitions>,
    shutdown: Shutdown,
) -> Result<Running, ConsoleError> {
    let config = services.config.clone();
    let addr = config
        .console
        .console_addr
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ConsoleError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| ConsoleError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let guard = auth::Guard::new(&config.console);
    if !local.ip().is_loopback() {
        tracing::warn!(%local, "the console listens beyond loopback: put it behind TLS and keep CONSOLE_TOKEN secret");
    }
    tracing::info!(%local, read_only = !guard.actions_allowed(), "serving the admin console");
    let client = connections::client(&config.redis.redis_url)?;
    let hub = sse::Hub::new();
    let console = Arc::new(Console {
        config,
        services,
        definitions,
        guard,
        hub: hub.clone(),
        stop: shutdown.token(),
    });
    tokio::spawn(sse::relay(hub, client, console.clone(), shutdown.token()));
    let app = router(console);
    let handle = tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(error) =
            crate::listen::serve_for(listener, app, CONNECTION_LIFETIME, async move {
                stop.wait().await
            })
            .await
        {
            tracing::error!(%error, "the console stopped");
        }
    });
    Ok(Running {
        addr: local,
        handle,
    })
}

/// Every route of the console.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .merge(assets::routes())
        .merge(api::routes())
        .merge(actions::routes())
        .merge(sse::routes())
        .layer(axum::middleware::map_response(assets::security_headers))
        .with_state(console)
}

/// An error answered as JSON `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        let status = match &err {
            AdminError::Redis(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::NoSuchTask(_) | AdminError::NoSuchDeadLetter(_) => StatusCode::NOT_FOUND,
            AdminError::AlreadyFinished { .. } => StatusCode::CONFLICT,
            AdminError::UnknownType(_) | AdminError::BadPriority(_) | AdminError::Invalid(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        ApiError(status, err.to_string())
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {err}"))
    }
}

impl From<deadpool_redis::PoolError> for ApiError {
    fn from(err: deadpool_redis::PoolError) -> Self {
        ApiError::from(crate::queue::pool_error(err))
    }
}

/// Payload fields whose names say they hold a secret are shown masked.
const SECRET_WORDS: [&str; 6] = [
    "password",
    "secret",
    "token",
    "private",
    "privkey",
    "credential",
];

/// `value` with every object field whose name looks like a secret replaced by `"•••"`.
pub fn mask_secrets(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, v)| {
                    let lower = key.to_ascii_lowercase();
                    if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                        (key.clone(), Value::String("•••".into()))
                    } else {
                        (key.clone(), mask_secrets(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask_secrets).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::mask_secrets;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let masked = mask_secrets(&json!({"slug": "a", "db": {"Password": "x", "user": "u"},
            "list": [{"api_token": "t"}]}));
        assert_eq!(
            masked,
            json!({"slug": "a", "db": {"Password": "•••", "user": "u"}, "list": [{"api_token": "•••"}]})
        );
    }
}
