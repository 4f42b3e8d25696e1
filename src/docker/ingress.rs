//! Keeps the ingress attached to every tenant network while a worker runs.
//!
//! Recreating the Traefik container (what `docker compose up -d` does after a change) gives a new
//! container attached to its compose networks only: teams would answer 504 until re-attached. So the
//! worker converges at start, then follows the engine's event stream and converges again whenever a
//! container named `INGRESS_CONTAINER` or labelled `orchestrator.role=ingress` starts. The networks
//! are those of the tenants Redis records ([`super::teams::recorded_networks`]). A broken stream
//! is reopened after a pause, with a convergence pass (events may have been missed meanwhile).

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Engine;
use crate::services::Services;
use crate::traefik::{LABEL_ROLE, ROLE_INGRESS};

/// One convergence pass: attaches every ingress to every recorded tenant's network; logs what it did.
pub async fn converge(engine: &Engine, services: &Services) {
    let ingress = &services.config.docker.ingress_container;
    let networks = match super::teams::recorded_networks(services).await {
        Ok(n) => n,
        Err(err) => {
            warn!(error = %err, "reading the recorded tenants failed; ingress not converged");
            return;
        }
    };
    match engine.attach_ingress_everywhere(ingress, &networks).await {
        Ok(connected) => {
            for (container, network) in connected {
                info!(container, network, "ingress attached to tenant network");
            }
        }
        Err(err) => warn!(error = %err, "attaching the ingress to tenant networks failed"),
    }
}

/// Whether an event's actor is an ingress container.
fn is_ingress(attributes: &HashMap<String, String>, ingress: &str) -> bool {
    let named = !ingress.is_empty() && attributes.get("name").map(String::as_str) == Some(ingress);
    named || attributes.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_INGRESS)
}

/// Runs until `stop` fires (see the module comment).
pub async fn run(engine: Engine, services: std::sync::Arc<Services>, stop: CancellationToken) {
    let ingress = services.config.docker.ingress_container.clone();
    loop {
        converge(&engine, &services).await;
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container"]);
        filters.insert("event", vec!["start"]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let mut events = engine.client().events(Some(options));
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = events.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    let attributes = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                    if is_ingress(&attributes, &ingress) {
                        converge(&engine, &services).await;
                    }
                }
                Some(Err(err)) => {
                    warn!(error = %err, "Docker event stream failed; reopening");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
