//! The built-in HTTP-01 responder: answers `GET /.well-known/acme-challenge/<token>` with the key
//! authorization the order flow published, and 404 for anything else.
//!
//! Tokens live in Redis (`acme:http01:<token>`, short TTL), not in this process, so any worker's
//! responder answers for any worker's order: behind one address (Traefik routing
//! `/.well-known/acme-challenge/` to the workers) it does not matter which one the CA reaches.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deadpool_redis::redis::AsyncCommands;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::keys;
use crate::task::TaskError;

/// How long a published token is served at most (a stuck order must not leave it forever).
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

/// Whether `token` can be a challenge token (base64url, RFC 8555 section 8.1): anything else is
/// refused before it names a Redis key.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Publishes the key authorization of `token` for the responder.
pub async fn publish(
    redis: &deadpool_redis::Pool,
    token: &str,
    key_authorization: &str,
) -> Result<(), TaskError> {
    if !valid_token(token) {
        return Err(TaskError::Failed(format!(
            "the CA sent an HTTP-01 token that is not base64url: {token:?}"
        )));
    }
    let mut conn = redis.get().await?;
    let _: () = conn
        .set_ex(
            keys::http01_token(token),
            key_authorization,
            TOKEN_TTL.as_secs(),
        )
        .await?;
    Ok(())
}

/// Withdraws `token`; withdrawing an absent token succeeds.
pub async fn withdraw(redis: &deadpool_redis::Pool, token: &str) -> Result<(), TaskError> {
    if !valid_token(token) {
        return Ok(());
    }
    let mut conn = redis.get().await?;
    let _: () = conn.del(keys::http01_token(token)).await?;
    Ok(())
}

/// The responder's routes.
pub fn router(redis: deadpool_redis::Pool) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(answer))
        .with_state(redis)
}

async fn answer(State(redis): State<deadpool_redis::Pool>, Path(token): Path<String>) -> Response {
    if !valid_token(&token) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let value: Result<Option<String>, String> = async {
        let mut conn = redis.get().await.map_err(|e| e.to_string())?;
        conn.get(keys::http01_token(&token))
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match value {
        Ok(Some(key_authorization)) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            key_authorization,
        )
            .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "HTTP-01 responder cannot read Redis");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// Binds `addr` and serves until `shutdown` fires. Returns the bound address (useful with port 0)
/// and the serving task.
pub async fn spawn(
    addr: &str,
    redis: deadpool_redis::Pool,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(redis);
    let handle = tokio::spawn(async move {
        // Header timeout and connection cap (see `crate::listen`).
        let served =
            crate::listen::serve(listener, app, async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP-01 responder stopped");
        }
    });
    tracing::info!(address = %local, "HTTP-01 responder listening");
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::valid_token;

    #[test]
    fn tokens_are_base64url_only() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "a/b", "a b", "../x", "a:b", "ä"] {
            assert!(!valid_token(bad), "{bad:?}");
        }
    }
}
