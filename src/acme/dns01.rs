//! DNS-01 through the platform's own DNS state: [`ZoneChallengeDns`] implements [`ChallengeDns`]
//! on the [`ZoneStore`] (Redis, followed by the embedded server and the CoreDNS zone file).
//!
//! The store returns once Redis holds a value and the change is announced; servers apply it a hop
//! later. A CA may validate right after `set_ready`, so before answering, the adapter asks an
//! authoritative server (when one is configured) until it serves the value: no race between the
//! pub/sub hop and the CA's lookup.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use super::ChallengeDns;
use crate::config::Config;
use crate::dns::ZoneStore;
use crate::task::TaskError;

/// How long a published value may take to be served before the attempt is retried later.
pub const SERVED_TIMEOUT: Duration = Duration::from_secs(15);

/// DNS-01 records in the platform zone.
pub struct ZoneChallengeDns {
    store: ZoneStore,
    /// Authoritative server asked until it serves a value (the embedded server); `None`: trust the
    /// store's propagation.
    check: Option<SocketAddr>,
}

impl ZoneChallengeDns {
    /// Challenges in `store`, checked against `check` when given.
    pub fn new(store: ZoneStore, check: Option<SocketAddr>) -> Self {
        Self { store, check }
    }

    /// The configured zone; checked against `DNS_LISTEN` when this process serves the zone
    /// (`EMBEDDED_DNS`).
    pub fn from_config(config: &Config, redis: deadpool_redis::Pool) -> Result<Self, TaskError> {
        let store = ZoneStore::from_config(config, redis)?;
        let check = config.worker.embedded_dns.then_some(config.dns.dns_listen);
        Ok(Self::new(store, check))
    }

    /// The domain whose challenge lives at `fqdn` (`_acme-challenge.<name>`).
    fn validated_name(fqdn: &str) -> Result<&str, TaskError> {
        fqdn.trim_end_matches('.')
            .strip_prefix("_acme-challenge.")
            .ok_or_else(|| TaskError::Failed(format!("{fqdn} is not an _acme-challenge name")))
    }

    /// Waits until `server` answers `fqdn` TXT with `value`.
    async fn wait_served(
        &self,
        server: SocketAddr,
        fqdn: &str,
        value: &str,
    ) -> Result<(), TaskError> {
        let deadline = tokio::time::Instant::now() + SERVED_TIMEOUT;
        loop {
            let last = match query_txt(server, fqdn).await {
                Ok(values) if values.iter().any(|v| v == value) => return Ok(()),
                Ok(values) => format!("it serves {} other value(s)", values.len()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(TaskError::Retryable(format!(
                    "DNS server {server} does not serve {fqdn} TXT after {SERVED_TIMEOUT:?}: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[async_trait]
impl ChallengeDns for ZoneChallengeDns {
    async fn add_txt(&self, fqdn: &str, value: &str) -> Result<(), TaskError> {
        let name = Self::validated_name(fqdn)?;
        self.store.add_challenge(name, value).await?;
        // CoreDNS reads the zone file: keep it in step now rather than at the follower's pace.
        self.store.write_zone_file().await?;
        if let Some(server) = self.check {
            self.wait_served(server, fqdn, value).await?;
        }
        Ok(())
    }

    async fn remove_txt(&self, fqdn: &str, value: &str) -> Result<(), TaskError> {
        let name = Self::validated_name(fqdn)?;
        self.store.remove_challenge(name, value).await?;
        self.store.write_zone_file().await?;
        Ok(())
    }
}

/// The TXT values at `fqdn` according to `server` (one UDP query, 1 s timeout).
pub async fn query_txt(server: SocketAddr, fqdn: &str) -> Result<Vec<String>, String> {
    let name = Name::from_str(&format!("{}.", fqdn.trim_end_matches('.')))
        .map_err(|e| format!("{fqdn}: {e}"))?;
    let mut message = Message::query();
    message.add_query(Query::query(name, RecordType::TXT));
    let request = message.to_vec().map_err(|e| e.to_string())?;
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&request, server)
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let response = Message::from_vec(&buffer[..len]).map_err(|e| e.to_string())?;
    Ok(response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}
