//! Assembly: from a [`Config`] to the running pieces (services, handlers, worker, metrics endpoint).
//! The binary and the integration tests start a worker the same way, through [`start_worker`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::info;

use crate::acme::{self, Acme};
use crate::config::Config;
use crate::connections::{self, ConnectionError};
use crate::dns::{self, ZoneStore};
use crate::handlers;
use crate::metrics::Metrics;
use crate::queues::{DefinitionError, Definitions};
use crate::services::Services;
use crate::shutdown::Shutdown;
use crate::worker::Worker;

/// Why the worker could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Builds the shared services from the configuration.
pub async fn services(config: Arc<Config>) -> Result<Arc<Services>, StartError> {
    let redis = connections::pool(&config.redis.redis_url, config.redis.redis_pool_size)?;
    let zone = ZoneStore::from_config(&config, redis.clone())?;
    let certificates = Acme::for_platform(config.clone(), redis.clone());
    Ok(Arc::new(Services {
        config,
        redis,
        names: Arc::new(zone),
        certificates,
    }))
}

/// A worker started in the background.
pub struct RunningWorker {
    /// The worker's id.
    pub id: String,
    /// Trigger to stop it gracefully.
    pub shutdown: Shutdown,
    /// Address the metrics endpoint listens on, if any.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Address the admin console listens on, when `CONSOLE_ADDR` is set.
    pub console_addr: Option<std::net::SocketAddr>,
    /// Ends when the worker has drained and stopped.
    pub handle: JoinHandle<()>,
}

impl RunningWorker {
    /// Stops the worker gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.handle.await;
    }
}

/// Loads the declarations, builds the services and handlers, and starts a worker (and its metrics
/// endpoint) in the background.
pub async fn start_worker(config: Arc<Config>) -> Result<RunningWorker, StartError> {
    let config = crate::sentinel::follow(config).await?;
    let definitions = Arc::new(Definitions::load(&config.queues.queues_dir)?);
    let services = services(config.clone()).await?;
    let registry = handlers::registry(&services);
    for task_type in definitions.task_types() {
        if registry.get(task_type).is_none() {
            tracing::warn!(
                task_type,
                "declared task type has no handler here; such tasks will be dead-lettered"
            );
        }
    }
    let metrics = Arc::new(Metrics::new());
    let client = connections::client(&config.redis.redis_url)?;
    let conn = connections::manager(&client, std::time::Duration::from_secs(30)).await?;
    let worker = Worker::new(
        services.clone(),
        registry,
        definitions.clone(),
        metrics.clone(),
        conn,
    )?;
    let shutdown = Shutdown::new();
    // Finished tasks per minute for the console's chart (every worker adds its counts).
    tokio::spawn(crate::console::stats::run_counter(
        metrics.clone(),
        services.redis.clone(),
        shutdown.token(),
    ));
    let mut metrics_addr = None;
    if !config.worker.metrics_addr.is_empty() {
        let addr = config.worker.metrics_addr.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: addr.clone(),
                source,
            })?;
        metrics_addr = listener.local_addr().ok();
        info!(addr = ?metrics_addr, "serving /healthz and /metrics");
        let (stop, served) = (shutdown.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(err) = crate::metrics::serve(listener, served, stop).await {
                tracing::error!(error = %err, "metrics endpoint stopped");
            }
        });
    }
    let dns_addr = spawn_dns(&config, &services, &shutdown).await?;
    let mut http01_addr = None;
    if !config.acme.http01_listen.is_empty() {
        let (addr, _) = acme::http01::spawn(
            &config.acme.http01_listen,
            services.redis.clone(),
            shutdown.token(),
        )
        .await
        .map_err(|source| StartError::Listen {
            addr: config.acme.http01_listen.clone(),
            source,
        })?;
        http01_addr = Some(addr);
    }
    tokio::spawn(probe(
        config.clone(),
        metrics.clone(),
        dns_addr,
        http01_addr,
        shutdown.token(),
    ));
    // The ingress stays attached to every tenant network (docker::ingress), per-team networks only.
    if config.docker.network_mode != "shared" && !config.docker.ingress_container.is_empty() {
        let (services, token) = (services.clone(), shutdown.token());
        tokio::spawn(async move {
            match crate::docker::Engine::connect(&services.config.docker).await {
                Ok(engine) => crate::docker::ingress::run(engine, services, token).await,
                Err(err) => tracing::warn!(error = %err, "not following the ingress: no engine"),
            }
        });
    }
    // Traefik's folder: the platform's dynamic files, then the document (rewritten, so that Traefik,
    // which watches the top level only, reloads and reads them); certificate folders are removed
    // after Traefik's reload grace (acme::storage).
    let store = acme::storage::CertStore::new(&config.acme, services.redis.clone());
    publish_traefik_files(&config, &store).await;
    tokio::spawn(acme::storage::run_sweeper(store, shutdown.token()));
    if config.worker.renewal_scheduler {
        tokio::spawn(acme::renewal::run(services.clone(), shutdown.token()));
    }
    let console_addr = match &config.console.console_addr {
        Some(addr) if !addr.is_empty() => Some(
            crate::console::start(services.clone(), definitions.clone(), shutdown.clone())
                .await
                .map_err(|err| match err {
                    crate::console::ConsoleError::Connection(err) => StartError::Connection(err),
                    crate::console::ConsoleError::Listen { addr, source } => {
                        StartError::Listen { addr, source }
                    }
                })?
                .addr,
        ),
        _ => None,
    };
    let id = worker.id().to_string();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    Ok(RunningWorker {
        id,
        shutdown,
        metrics_addr,
        console_addr,
        handle,
    })
}

/// Publishes `TRAEFIK_DYNAMIC_DIR` into `CERTS_DIR/traefik/` and rewrites the certificates document.
/// A failure is logged, not fatal: the worker still provisions (Traefik then lacks the middlewares).
async fn publish_traefik_files(config: &Config, store: &acme::storage::CertStore) {
    let source = &config.acme.traefik_dynamic_dir;
    if source.is_empty() {
        return;
    }
    match acme::storage::publish_platform_files(source.as_ref(), &config.acme.certs_dir) {
        Ok(count) => info!(count, source, "published Traefik's dynamic files"),
        Err(err) => tracing::error!(error = %err, "publishing Traefik's dynamic files failed"),
    }
    if let Err(err) = store.write_traefik_doc().await {
        tracing::error!(error = %err, "writing Traefik's certificates document failed");
    }
}

/// Every worker keeps this host's zone file in step with Redis; with `--embedded-dns` it also serves
/// the zone itself. The server's sockets are bound before the worker starts: a `DNS_LISTEN` that is
/// taken fails the start (`cannot listen on …`) rather than leaving a worker without its DNS.
/// Returns the UDP address served.
async fn spawn_dns(
    config: &Arc<Config>,
    services: &Arc<Services>,
    shutdown: &Shutdown,
) -> Result<Option<SocketAddr>, StartError> {
    let store = ZoneStore::from_config(config, services.redis.clone())?;
    let (writer_config, token) = (config.clone(), shutdown.token());
    let writer_store = store.clone();
    tokio::spawn(async move {
        if let Err(err) = dns::run_zone_file_writer(&writer_config, writer_store, token).await {
            tracing::error!(error = %err, "zone file writer stopped");
        }
    });
    if !config.worker.embedded_dns {
        return Ok(None);
    }
    let listen = config.dns.dns_listen;
    let server = dns::server::DnsServer::start(listen, &config.redis.redis_url, store.clone())
        .await
        .map_err(|e| match e {
            crate::dns::DnsError::Io { source, .. } => StartError::Listen {
                addr: listen.to_string(),
                source,
            },
            other => StartError::Dns(other),
        })?;
    let addr = server.udp_addr();
    tracing::info!(udp = %addr, tcp = %server.tcp_addr(), "serving the DNS zone");
    let token = shutdown.token();
    tokio::spawn(async move {
        // Written once Redis answers (the worker may start before it does).
        while let Err(error) = store.ensure_platform_records().await {
            tracing::warn!(%error, "cannot write the platform DNS records yet");
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        token.cancelled().await;
        server.shutdown().await;
    });
    Ok(Some(addr))
}

/// Seconds between two probes of the components `/healthz` reports.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Probes what this worker runs besides Redis (which the worker loop itself reports) and records
/// it for `/healthz`: the Docker engine answers a ping, the embedded DNS server answers a query,
/// the HTTP-01 responder accepts connections.
async fn probe(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    dns: Option<SocketAddr>,
    http01: Option<SocketAddr>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let loopback = |addr: SocketAddr| {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    };
    let zone = config.dns.zone(&config.platform);
    loop {
        let docker = tokio::time::timeout(Duration::from_secs(3), async {
            let engine = crate::docker::Engine::connect(&config.docker)
                .await
                .map_err(|e| e.to_string())?;
            engine
                .client()
                .ping()
                .await
                .map(|_| ())
                .map_err(|e| crate::docker::plain(&e))
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 3 s".into()));
        metrics.set_component(
            "docker",
            docker.map_err(|e| format!("engine unreachable: {e}")),
        );
        if let Some(addr) = dns {
            let name = format!("ns.{}", zone.trim_end_matches('.'));
            let answered = acme::dns01::query_txt(loopback(addr), &name).await;
            metrics.set_component(
                "dns",
                answered
                    .map(|_| ())
                    .map_err(|e| format!("embedded server on {addr} does not answer: {e}")),
            );
        }
        if let Some(addr) = http01 {
            let answered = http_answers(loopback(addr)).await;
            metrics.set_component(
                "http01",
                answered.map_err(|e| format!("responder on {addr} does not answer: {e}")),
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

/// Whether the responder at `addr` accepts connections. Its HTTP answer is not required: at its
/// connection cap (see `listen`) it closes new connections at once, and that is no failure.
async fn http_answers(addr: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}
