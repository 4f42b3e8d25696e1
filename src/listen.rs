//! Serving the worker's small HTTP listeners (`/healthz` + `/metrics`, the HTTP-01 responder) so
//! that nobody can hold them: every connection must send its request header within
//! [`HEADER_TIMEOUT`] and ends after [`CONNECTION_LIFETIME`], and at most [`MAX_CONNECTIONS`] are
//! open at once per listener (a connection over the cap is closed at once, so idle or half-sent
//! requests can't use up the worker's file descriptors, which the engine, Redis and DNS need).
//!
//! `axum::serve` has neither a header timeout nor a cap, hence this loop over hyper's HTTP/1
//! connection builder with the router as the service.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Time a client has to send a complete request header (also the keep-alive idle limit).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection stays open, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Connections open at once per listener.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_for(listener, app, CONNECTION_LIFETIME, shutdown).await
}

/// [`serve`] with another longest connection `lifetime`: the admin console's event streams stay
/// open longer than a request (a browser's EventSource reconnects when it is cut, resuming with
/// `Last-Event-ID`).
pub async fn serve_for(
    listener: TcpListener,
    app: Router,
    lifetime: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(lifetime, connection).await;
            drop(permit);
        });
    }
}
