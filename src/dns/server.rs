//! The embedded authoritative DNS server: hickory-server on UDP and TCP, answering for the platform
//! zone from the Redis state.
//!
//! The served zone is an immutable hickory `Catalog` (one `InMemoryZoneHandler` built from a
//! snapshot) behind a lock-free swap point: a follower ([`super::follow`]) builds a new catalog from
//! each announced change and swaps it in if its serial is newer, so every query sees one whole
//! version of the zone. hickory does the protocol work: NXDOMAIN and NODATA with the SOA in the
//! authority section, wildcard synthesis, EDNS, and the TC bit when an answer does not fit in UDP
//! (clients then retry over TCP, which is served on the same address).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::records::Zone;
use super::records::{RecordKind, RecordSet};
use super::store::ZoneStore;
use super::{DnsError, zonefile};
use crate::config::Config;

/// Idle time after which a TCP client is dropped.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the request handler serves, shared with the follower that replaces it.
struct Served {
    zone: RwLock<Option<Arc<ServedZone>>>,
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
        let built = Arc::new(ServedZone::build(zone)?);
        let mut slot = self
            .zone
            .write()
            .map_err(|_| DnsError::Server("catalog lock poisoned".into()))?;
        // Re-check under the lock: two applies may race.
        if zone.serial <= self.serial.load(Ordering::Acquire) {
            return Ok(false);
        }
        *slot = Some(built);
        self.serial.store(zone.serial, Ordering::Release);
        drop(slot);
        self.announce.send_replace(zone.serial);
        Ok(true)
    }
}

/// The hickory request handler: answers from the current [`ServedZone`].
#[derive(Clone)]
struct ZoneRequestHandler(Arc<Served>);

#[async_trait]
impl RequestHandler for ZoneRequestHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Clone the Arc and release the lock at once: a swap never waits for a query.
        let zone = match self.0.zone.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let builder = || MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let refuse = |code| builder().error_msg(&request.metadata, code);
        let query = match request.request_info() {
            Ok(info) => info.query.clone(),
            Err(_) => {
                return send(&mut response_handle, refuse(ResponseCode::FormErr), request).await;
            }
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return send(&mut response_handle, refuse(ResponseCode::NotImp), request).await;
        }
        let Some(zone) = zone.filter(|z| z.origin.zone_of(query.name())) else {
            return send(&mut response_handle, refuse(ResponseCode::Refused), request).await;
        };
        let found = zone.lookup(query.name(), query.query_type());
        let mut metadata = Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query);
        metadata.authoritative = true;
        metadata.recursion_desired = request.metadata.recursion_desired;
        metadata.response_code = found.code;
        let response = builder().build(
            metadata,
            found.answers.iter(),
            found.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        send(&mut response_handle, response, request).await
    }
}

/// Label of [`QUERIES`]: the response code sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RcodeLabel {
    pub rcode: String,
}

/// DNS queries answered by this process' embedded server, by response code. Queries are counted,
/// not logged: a log line per query turns a query flood into a disk flood (hickory's own per-query
/// lines are at `info`; the worker's default filter keeps `hickory_server` at `warn`).
pub static QUERIES: std::sync::LazyLock<
    prometheus_client::metrics::family::Family<
        RcodeLabel,
        prometheus_client::metrics::counter::Counter,
    >,
> = std::sync::LazyLock::new(Default::default);

/// The conventional (dig) name of a response code, for the metric label.
fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        _ => "OTHER",
    }
}

fn count_query(rcode: &str) {
    QUERIES
        .get_or_create(&RcodeLabel {
            rcode: rcode.to_string(),
        })
        .inc();
}

/// Sends `response`; hickory sets TC and trims it when it does not fit the client's UDP size.
async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => {
            count_query(rcode_name(info.response_code));
            info
        }
        Err(error) => {
            count_query("SERVFAIL");
            tracing::debug!(%error, "cannot send DNS response");
            let mut metadata = Metadata::new(
                request.metadata.id,
                MessageType::Response,
                request.metadata.op_code,
            );
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: Default::default(),
            })
        }
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
            zone: RwLock::new(None),
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

/// One version of the zone, indexed for lookups.
struct ServedZone {
    origin: LowerName,
    /// The SOA record, put in the authority section of negative answers.
    soa: Record,
    /// Records by owner and type.
    sets: HashMap<(LowerName, RecordType), Vec<Record>>,
    /// Every name that exists: owners and the empty non-terminals between them and the origin.
    names: HashSet<LowerName>,
}

/// What a lookup found.
struct Lookup {
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

/// Longest CNAME chain followed inside the zone.
const MAX_CHAIN: usize = 8;

impl ServedZone {
    /// Indexes `zone`.
    fn build(zone: &Zone) -> Result<Self, DnsError> {
        let bad = |e: String| DnsError::Server(format!("zone {}: {e}", zone.origin));
        let origin_name = Name::from_str(&zone.origin).map_err(|e| bad(e.to_string()))?;
        let origin = LowerName::new(&origin_name);
        let ns =
            Name::from_str(&zonefile::name_server(&zone.origin)).map_err(|e| bad(e.to_string()))?;
        let hostmaster =
            Name::from_str(&zonefile::hostmaster(&zone.origin)).map_err(|e| bad(e.to_string()))?;
        let soa = Record::from_rdata(
            origin_name.clone(),
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
        );
        let mut this = Self {
            origin: origin.clone(),
            soa: soa.clone(),
            sets: HashMap::new(),
            names: HashSet::new(),
        };
        this.add(soa);
        this.add(Record::from_rdata(
            origin_name.clone(),
            zonefile::NS_TTL,
            RData::NS(NS(ns)),
        ));
        for set in &zone.sets {
            let owner = if set.owner == "@" {
                origin_name.clone()
            } else {
                Name::from_str(&format!("{}.{}", set.owner, zone.origin))
                    .map_err(|e| bad(e.to_string()))?
            };
            for value in &set.values {
                this.add(Record::from_rdata(
                    owner.clone(),
                    set.ttl,
                    rdata(set, value).map_err(bad)?,
                ));
            }
        }
        Ok(this)
    }

    fn add(&mut self, record: Record) {
        let owner = LowerName::new(&record.name);
        let mut name = owner.clone();
        // The owner and its ancestors up to the origin exist (RFC 4592 empty non-terminals).
        while self.origin.zone_of(&name) && self.names.insert(name.clone()) && name != self.origin {
            name = name.base_name();
        }
        self.sets
            .entry((owner, record.record_type()))
            .or_default()
            .push(record);
    }

    /// RFC 1034 section 4.3.2 for one zone without delegations, with RFC 4592 wildcards: an
    /// existing name (even with no data of the type asked) blocks the wildcard; a missing name is
    /// synthesised only from `*.<closest encloser>`.
    fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Lookup {
        let mut answers = Vec::new();
        let mut name = qname.clone();
        for _ in 0..MAX_CHAIN {
            // The records at `name`, or those of the wildcard that covers it.
            let source = if self.names.contains(&name) {
                name.clone()
            } else {
                let mut closer = name.clone();
                while !self.names.contains(&closer.base_name()) {
                    closer = closer.base_name();
                }
                let wildcard = closer.into_wildcard();
                if !self.names.contains(&wildcard) {
                    return self.negative(ResponseCode::NXDomain, answers);
                }
                wildcard
            };
            let owned = |records: &Vec<Record>| -> Vec<Record> {
                records
                    .iter()
                    .map(|r| Record::from_rdata(Name::from(name.clone()), r.ttl, r.data.clone()))
                    .collect()
            };
            if qtype == RecordType::ANY {
                let mut all: Vec<Record> = self
                    .sets
                    .iter()
                    .filter(|((owner, _), _)| *owner == source)
                    .flat_map(|(_, records)| owned(records))
                    .collect();
                answers.append(&mut all);
                return self.positive(answers);
            }
            if let Some(records) = self.sets.get(&(source.clone(), qtype)) {
                answers.extend(owned(records));
                return self.positive(answers);
            }
            match self.sets.get(&(source.clone(), RecordType::CNAME)) {
                Some(records) if qtype != RecordType::CNAME => {
                    answers.extend(owned(records));
                    let Some(RData::CNAME(CNAME(target))) = records.first().map(|r| &r.data) else {
                        return self.positive(answers);
                    };
                    let target = LowerName::new(target);
                    if !self.origin.zone_of(&target) {
                        // Out of zone: the resolver follows it.
                        return self.positive(answers);
                    }
                    name = target;
                }
                _ => return self.negative(ResponseCode::NoError, answers),
            }
        }
        self.positive(answers)
    }

    fn positive(&self, answers: Vec<Record>) -> Lookup {
        Lookup {
            code: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
        }
    }

    /// NXDOMAIN or NODATA: the SOA in the authority section, for negative caching (RFC 2308).
    fn negative(&self, code: ResponseCode, answers: Vec<Record>) -> Lookup {
        Lookup {
            code,
            answers,
            authorities: vec![self.soa.clone()],
        }
    }
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
