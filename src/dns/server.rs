//! The embedded authoritative DNS server: hickory-server on UDP and TCP, answering for the platform
//! zone from the Redis state.
//!
//! The served zone is an immutable hickory `Catalog` (one `InMemoryZoneHandler` built from a
//! snapshot) behind a lock-free swap point: a follower ([`super::follow`]) builds a new catalog from
//! each announced change and swaps it in if its serial is newer, so every query sees one whole
//! version of the zone. hickory does the protocol work: NXDOMAIN and NODATA with the SOA in the
//! authority section, wildcard synthesis, EDNS, and the TC bit when an answer does not fit in UDP
//! (clients then retry over TCP, which is served on the same address).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet as HickorySet, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::records::{RecordKind, RecordSet};
use super::store::{Zone, ZoneStore};
use super::{DnsError, zonefile};
use crate::config::Config;

/// Idle time after which a TCP client is dropped.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the request handler serves, shared with the follower that replaces it.
struct Served {
    catalog: RwLock<Arc<Catalog>>,
    serial: AtomicU32,
    announce: watch::Sender<u32>,
}

impl Served {
    /// Swaps in `zone` if it is newer than what is served; returns whether it did.
    fn apply(&self, zone: &Zone) -> Result<bool, DnsError> {
        // A serial of 0 is a zone nobody wrote yet: nothing to serve.
        if zone.serial == 0 || zone.serial <= self.serial.load(Ordering::Acquire) {
            return Ok(false);
        }
        let catalog = Arc::new(catalog(zone)?);
        let mut slot = self
            .catalog
            .write()
            .map_err(|_| DnsError::Server("catalog lock poisoned".into()))?;
        // Re-check under the lock: two applies may race.
        if zone.serial <= self.serial.load(Ordering::Acquire) {
            return Ok(false);
        }
        *slot = catalog;
        self.serial.store(zone.serial, Ordering::Release);
        drop(slot);
        self.announce.send_replace(zone.serial);
        Ok(true)
    }
}

/// The hickory request handler: delegates to the current catalog.
#[derive(Clone)]
struct ZoneRequestHandler(Arc<Served>);

#[async_trait]
impl RequestHandler for ZoneRequestHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        // Clone the Arc and release the lock at once: a swap never waits for a query.
        let catalog = match self.0.catalog.read() {
            Ok(slot) => Arc::clone(&slot),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// A running embedded server; stops when dropped or on [`DnsServer::shutdown`].
pub struct DnsServer {
    udp: SocketAddr,
    tcp: SocketAddr,
    served: Arc<Served>,
    shutdown: CancellationToken,
    serial: watch::Receiver<u32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DnsServer {
    /// Binds `listen` (UDP and TCP; port 0 picks one, the same for both where possible), starts
    /// following the zone of `store` through `redis_url`, and returns once the first snapshot is
    /// served (or after 5 s if Redis is not reachable yet; the follower keeps trying).
    pub async fn start(
        listen: SocketAddr,
        redis_url: &str,
        store: ZoneStore,
    ) -> Result<Self, DnsError> {
        let bind_error = |source: std::io::Error| DnsError::Io {
            path: listen.to_string().into(),
            source,
        };
        let (udp_socket, tcp_listener) = bind_pair(listen).await.map_err(bind_error)?;
        let udp = udp_socket.local_addr().map_err(bind_error)?;
        let tcp = tcp_listener.local_addr().map_err(bind_error)?;

        let (announce, serial) = watch::channel(0);
        let served = Arc::new(Served {
            catalog: RwLock::new(Arc::new(Catalog::new())),
            serial: AtomicU32::new(0),
            announce,
        });
        let shutdown = CancellationToken::new();

        let mut server = Server::new(ZoneRequestHandler(Arc::clone(&served)));
        server.register_socket(udp_socket);
        server.register_listener(tcp_listener, TCP_TIMEOUT, 64);
        let server_shutdown = shutdown.clone();
        let serving = tokio::spawn(async move {
            server_shutdown.cancelled().await;
            if let Err(error) = server.shutdown_gracefully().await {
                tracing::warn!(%error, "DNS server shutdown");
            }
        });

        let follower_served = Arc::clone(&served);
        let follower_shutdown = shutdown.clone();
        let redis_url = redis_url.to_string();
        let following = tokio::spawn(async move {
            let result = super::follow(&redis_url, store, follower_shutdown, |zone| {
                let served = Arc::clone(&follower_served);
                async move {
                    match served.apply(&zone) {
                        Ok(true) => tracing::debug!(serial = zone.serial, "DNS zone reloaded"),
                        Ok(false) => {}
                        Err(error) => tracing::warn!(%error, "cannot serve the DNS zone"),
                    }
                }
            })
            .await;
            if let Err(error) = result {
                tracing::error!(%error, "DNS follower stopped");
            }
        });

        let this = Self {
            udp,
            tcp,
            served,
            shutdown,
            serial,
            tasks: vec![serving, following],
        };
        let mut first = this.serial.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), first.wait_for(|s| *s > 0)).await;
        Ok(this)
    }

    /// The UDP address served.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The TCP address served.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    /// The serial being served (0 before the first snapshot).
    pub fn serial(&self) -> u32 {
        self.served.serial.load(Ordering::Acquire)
    }

    /// Waits until the served serial is at least `serial`; false on timeout.
    pub async fn wait_for_serial(&self, serial: u32, timeout: Duration) -> bool {
        let mut receiver = self.serial.clone();
        tokio::time::timeout(timeout, receiver.wait_for(|s| *s >= serial))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Stops serving and following.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds UDP and TCP on one port: for port 0, tries a few ephemeral UDP ports until TCP can take
/// the same one.
async fn bind_pair(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    if listen.port() != 0 {
        return Ok((
            UdpSocket::bind(listen).await?,
            TcpListener::bind(listen).await?,
        ));
    }
    let mut last_error = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port pair")))
}

/// `orchestrator dns serve` (and the worker's `--embedded-dns`): writes the platform records if
/// missing, serves the zone on `DNS_LISTEN` until `shutdown`.
pub async fn serve(config: &Config, shutdown: CancellationToken) -> Result<(), DnsError> {
    let pool = deadpool_redis::Config::from_url(&config.redis.redis_url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| DnsError::Config(format!("Redis pool: {e}")))?;
    let store = ZoneStore::from_config(config, pool)?;
    store.ensure_platform_records().await?;
    let server = DnsServer::start(config.dns.dns_listen, &config.redis.redis_url, store).await?;
    tracing::info!(
        udp = %server.udp_addr(),
        tcp = %server.tcp_addr(),
        serial = server.serial(),
        "serving the DNS zone"
    );
    shutdown.cancelled().await;
    server.shutdown().await;
    Ok(())
}

/// A hickory catalog serving `zone` alone.
fn catalog(zone: &Zone) -> Result<Catalog, DnsError> {
    let bad = |e: String| DnsError::Server(format!("zone {}: {e}", zone.origin));
    let origin = Name::from_str(&zone.origin).map_err(|e| bad(e.to_string()))?;
    let mut sets: BTreeMap<RrKey, HickorySet> = BTreeMap::new();
    let mut add = |record: Record| {
        let key = RrKey::new(LowerName::new(&record.name), record.record_type());
        sets.entry(key)
            .or_insert_with(|| {
                HickorySet::new(record.name.clone(), record.record_type(), zone.serial)
            })
            .insert(record, zone.serial);
    };
    let ns =
        Name::from_str(&zonefile::name_server(&zone.origin)).map_err(|e| bad(e.to_string()))?;
    let hostmaster =
        Name::from_str(&zonefile::hostmaster(&zone.origin)).map_err(|e| bad(e.to_string()))?;
    add(Record::from_rdata(
        origin.clone(),
        zonefile::SOA_MINIMUM,
        RData::SOA(SOA::new(
            ns.clone(),
            hostmaster,
            zone.serial,
            zonefile::SOA_REFRESH,
            zonefile::SOA_RETRY,
            zonefile::SOA_EXPIRE,
            zonefile::SOA_MINIMUM,
        )),
    ));
    add(Record::from_rdata(
        origin.clone(),
        zonefile::NS_TTL,
        RData::NS(NS(ns)),
    ));
    for set in &zone.sets {
        let owner = if set.owner == "@" {
            origin.clone()
        } else {
            Name::from_str(&format!("{}.{}", set.owner, zone.origin))
                .map_err(|e| bad(e.to_string()))?
        };
        for value in &set.values {
            add(Record::from_rdata(
                owner.clone(),
                set.ttl,
                rdata(set, value).map_err(bad)?,
            ));
        }
    }
    let handler: InMemoryZoneHandler =
        InMemoryZoneHandler::new(origin.clone(), sets, ZoneType::Primary, AxfrPolicy::Deny)
            .map_err(bad)?;
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
    Ok(catalog)
}

/// The wire form of one stored value.
fn rdata(set: &RecordSet, value: &str) -> Result<RData, String> {
    Ok(match set.kind {
        RecordKind::A => RData::A(A(value.parse().map_err(|_| format!("bad A {value:?}"))?)),
        RecordKind::Aaaa => RData::AAAA(AAAA(
            value.parse().map_err(|_| format!("bad AAAA {value:?}"))?,
        )),
        RecordKind::Cname => RData::CNAME(CNAME(Name::from_str(value).map_err(|e| e.to_string())?)),
        // The same 255-byte split as the zone file, so both servers answer with the same strings.
        RecordKind::Txt => RData::TXT(TXT::from_bytes(
            value.as_bytes().chunks(zonefile::TXT_CHUNK).collect(),
        )),
    })
}
