//! Shutdown as a small type of its own: a token every long-running loop holds and selects on, so
//! nothing relies on the process exiting to stop or clean up.

use tokio_util::sync::CancellationToken;

/// A shared shutdown signal; clones observe the same signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the signal (idempotent).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal was given.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the signal is given.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// The underlying token, for APIs that take a `CancellationToken`.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Gives the signal on SIGTERM or SIGINT (Ctrl-C).
    pub fn on_signals(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = ctrl_c => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = ctrl_c.await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = ctrl_c.await;
            }
            tracing::info!("shutdown signal received: no new tasks; finishing in-flight ones");
            me.trigger();
        });
    }
}
