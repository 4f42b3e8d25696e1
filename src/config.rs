//! Configuration: one typed struct per concern, read once at start from flags and environment
//! variables (clap), then passed down. Nothing deeper in the crate reads the environment.
//!
//! Every field has a default that works for local development on one machine, so
//! `orchestrator worker` with no flags runs against `redis://127.0.0.1:6379` and the local Docker engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Where Redis lives and how the worker talks to it.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis URL; `rediss://` for TLS, `redis://:password@host:port/db` for a password.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Connections in the pool used for ordinary (non-blocking) commands.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 16)]
    pub redis_pool_size: usize,

    /// Redis Sentinel addresses (`host:port,host:port,…`): every connection then goes to the
    /// master they name and follows it across failovers; `REDIS_URL` keeps its password and db.
    #[arg(long, env = "REDIS_SENTINELS")]
    pub redis_sentinels: Option<String>,

    /// Name of the master the sentinels monitor (`sentinel monitor <name> …`).
    #[arg(long, env = "REDIS_MASTER_NAME", default_value = "mymaster")]
    pub redis_master_name: String,

    /// Username for the sentinels (their ACL), if they ask for one.
    #[arg(long, env = "REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,

    /// Password of the sentinels (their `requirepass`), if they ask for one.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD")]
    pub redis_sentinel_password: Option<String>,

    /// Talk TLS to the sentinels (`rediss://`), with the system's roots.
    #[arg(long, env = "REDIS_SENTINEL_TLS", default_value_t = false)]
    pub redis_sentinel_tls: bool,

    /// Replicas that must acknowledge a claim, begin or finish before the worker acts on it
    /// (`WAIT`); 0 = off.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Timeout of one `WAIT`; while the master stays the same the worker waits again, for up to a
    /// lease, before it treats the write as in doubt.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_wait_timeout_ms: u64,
}

/// Where the declared queues and task schemas live.
#[derive(Debug, Clone, Args)]
pub struct QueuesConfig {
    /// Folder holding `queues.yml` and `schemas/<type>.json` (the portal's contract).
    #[arg(long, env = "QUEUES_DIR", default_value = "queues")]
    pub queues_dir: PathBuf,
}

/// How a worker process consumes.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Tasks run at once by this process.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,

    /// Name of this worker (default: hostname-pid-random); must be unique among live workers.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// Lease of a claimed task in seconds (renewed by its worker every third of it); a task whose
    /// lease runs out is recovered and re-run, and the stale attempt's writes are refused.
    #[arg(long, env = "WORKER_LEASE_S", default_value_t = 15)]
    pub lease_s: u64,

    /// Seconds in-flight tasks get to finish after SIGTERM/SIGINT before they are put back.
    #[arg(long, env = "SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,

    /// Largest task body accepted, in bytes; a larger one is dead-lettered unread.
    #[arg(long, env = "MAX_TASK_BYTES", default_value_t = 1 << 20)]
    pub max_task_bytes: usize,

    /// Times a task may be recovered after its lease ran out before it is dead-lettered as a poison pill.
    #[arg(long, env = "MAX_RECOVERIES", default_value_t = 3)]
    pub max_recoveries: u32,

    /// Address of the `/healthz` and `/metrics` endpoint; empty to disable.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9184")]
    pub metrics_addr: String,

    /// Also serve the platform zone over DNS from this process (see `dns serve`).
    #[arg(long, env = "EMBEDDED_DNS", default_value_t = false)]
    pub embedded_dns: bool,

    /// Run the certificate renewal scheduler in this process (one worker at a time schedules).
    #[arg(long, env = "RENEWAL_SCHEDULER", default_value_t = true, action = clap::ArgAction::Set)]
    pub renewal_scheduler: bool,
}

impl WorkerConfig {
    /// The heartbeat lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_s.max(2))
    }
}

/// The platform: domain and the names Traefik knows.
#[derive(Debug, Clone, Args)]
pub struct PlatformConfig {
    /// Platform domain; teams live at `<slug>.<domain>`.
    #[arg(long, env = "DOMAIN", default_value = "localhost")]
    pub domain: String,

    /// Traefik entrypoint of the team routers.
    #[arg(long, env = "TRAEFIK_ENTRYPOINT", default_value = "websecure")]
    pub traefik_entrypoint: String,

    /// Traefik certificate resolver named on the team routers when `CERT_ISSUER=traefik`.
    #[arg(long, env = "TRAEFIK_CERTRESOLVER", default_value = "letsencrypt")]
    pub traefik_certresolver: String,

    /// Who obtains the team certificates: `orchestrator` (its ACME client; Traefik serves them from
    /// the file provider and team routers name no resolver) or `traefik` (routers name
    /// `TRAEFIK_CERTRESOLVER`; the orchestrator orders nothing for teams). One issuer per host.
    #[arg(long, env = "CERT_ISSUER", default_value = "orchestrator", value_parser = ["orchestrator", "traefik"])]
    pub cert_issuer: String,

    /// Traefik middlewares attached to every team router (comma-separated, `<name>@<provider>`);
    /// empty for none. They must exist in Traefik (traefik/dynamic), or the routers are refused.
    #[arg(
        long,
        env = "TRAEFIK_MIDDLEWARES",
        default_value = "secure-headers@file,rate-limit@file"
    )]
    pub traefik_middlewares: String,

    /// HTTPS address of the ingress (e.g. `https://127.0.0.1:443`) a provision probes with the team's
    /// Host/SNI before it reports `active`; unset: no probe.
    #[arg(long, env = "INGRESS_PROBE_URL")]
    pub ingress_probe_url: Option<String>,
}

impl PlatformConfig {
    /// Whether Traefik's resolver (not the orchestrator) issues team certificates.
    pub fn traefik_issues(&self) -> bool {
        self.cert_issuer == "traefik"
    }
}

/// The Docker engine and what team containers look like.
#[derive(Debug, Clone, Args)]
pub struct DockerConfig {
    /// Docker engine address (`unix:///var/run/docker.sock`, `tcp://host:2375`); default: the local socket.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Folder holding `team.yml` and `sandbox.yml`.
    #[arg(long, env = "TEMPLATES_DIR", default_value = "templates")]
    pub templates_dir: PathBuf,

    /// `per-team` gives each team its own bridge network; `shared` puts every team on `SHARED_NETWORK`.
    #[arg(long, env = "NETWORK_MODE", default_value = "per-team")]
    pub network_mode: String,

    /// The shared network of the platform (the reference's `kanban-network`).
    #[arg(long, env = "SHARED_NETWORK", default_value = "kanban-network")]
    pub shared_network: String,

    /// Name of the ingress (Traefik) container, connected to every team network; empty for none.
    #[arg(long, env = "INGRESS_CONTAINER", default_value = "traefik")]
    pub ingress_container: String,

    /// Image of the team (and sandbox) API container, `{{ images.api }}` in the templates.
    #[arg(long, env = "TEAM_API_IMAGE", default_value = "kanban/team-api:latest")]
    pub team_api_image: String,

    /// Image of the team web container, `{{ images.web }}` in the templates.
    #[arg(long, env = "TEAM_WEB_IMAGE", default_value = "kanban/team-web:latest")]
    pub team_web_image: String,

    /// Seconds a provision waits for its containers to become healthy.
    #[arg(long, env = "HEALTH_TIMEOUT_S", default_value_t = 60)]
    pub health_timeout_s: u64,

    /// Where tenants run: `docker` (one container per template service on `DOCKER_HOST`) or `swarm`
    /// (one Swarm service per template service; `DOCKER_HOST` must be a swarm manager).
    #[arg(long, env = "BACKEND", default_value = "docker", value_parser = ["docker", "swarm"])]
    pub backend: String,

    /// Milliseconds the ingress is given to pick up a change of the containers it routes to (a new
    /// container turned healthy, an old one drained) during a start-first replacement.
    #[arg(long, env = "REPLACE_SETTLE_MS", default_value_t = 1000)]
    pub replace_settle_ms: u64,
}

impl DockerConfig {
    /// Whether tenants run as Swarm services (`BACKEND=swarm`).
    pub fn swarm(&self) -> bool {
        self.backend == "swarm"
    }
}

/// The platform zone and the DNS servers that serve it.
#[derive(Debug, Clone, Args)]
pub struct DnsConfig {
    /// The platform zone (default: the domain).
    #[arg(long, env = "DNS_ZONE")]
    pub dns_zone: Option<String>,

    /// Address the apex, wildcard and team records point at (the ingress).
    #[arg(long, env = "INGRESS_IP", default_value = "127.0.0.1")]
    pub ingress_ip: String,

    /// Folder the CoreDNS zone files are written to.
    #[arg(long, env = "ZONES_DIR", default_value = "coredns/zones")]
    pub zones_dir: PathBuf,

    /// UDP and TCP address of the embedded authoritative server.
    #[arg(long, env = "DNS_LISTEN", default_value = "127.0.0.1:5353")]
    pub dns_listen: SocketAddr,
}

/// The ACME CA and where certificates are kept.
#[derive(Debug, Clone, Args)]
pub struct AcmeConfig {
    /// ACME directory URL (default: Let's Encrypt staging).
    #[arg(
        long,
        env = "ACME_DIRECTORY",
        default_value = "https://acme-staging-v02.api.letsencrypt.org/directory"
    )]
    pub acme_directory: String,

    /// Use Let's Encrypt production instead of the configured directory.
    #[arg(long, env = "ACME_PRODUCTION", default_value_t = false)]
    pub acme_production: bool,

    /// Extra root CA (PEM) trusted for the ACME server's TLS, e.g. Pebble's.
    #[arg(long, env = "ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,

    /// Contact e-mail of the ACME account.
    #[arg(long, env = "ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// File holding the ACME account credentials (written 0600).
    #[arg(long, env = "ACME_ACCOUNT_FILE", default_value = "certs/account.json")]
    pub acme_account_file: PathBuf,

    /// Folder certificates are stored in, with Traefik's file-provider document.
    #[arg(long, env = "CERTS_DIR", default_value = "certs")]
    pub certs_dir: PathBuf,

    /// Address of the built-in HTTP-01 responder; empty to disable.
    #[arg(long, env = "HTTP01_LISTEN", default_value = "127.0.0.1:5002")]
    pub http01_listen: String,

    /// Renew a certificate this many days before it expires.
    #[arg(long, env = "RENEW_BEFORE_DAYS", default_value_t = 30)]
    pub renew_before_days: u64,

    /// Seconds between two passes of the renewal scheduler over the stored certificates.
    #[arg(long, env = "RENEW_CHECK_S", default_value_t = 3600)]
    pub renew_check_s: u64,

    /// Folder of the platform's Traefik dynamic files (middlewares, dashboard router), published into
    /// `CERTS_DIR/traefik/` at start for Traefik's file provider; empty: publish nothing.
    #[arg(long, env = "TRAEFIK_DYNAMIC_DIR", default_value = "traefik/dynamic")]
    pub traefik_dynamic_dir: String,

    /// Seconds a certificate file stays on disk after the file-provider document stopped naming it
    /// (Traefik reloads after a throttle and may still read the previous document meanwhile).
    #[arg(long, env = "CERT_REMOVAL_GRACE_S", default_value_t = 10)]
    pub cert_removal_grace_s: u64,

    /// `CERTS_DIR` as Traefik sees it (its mount point), used in the file-provider document;
    /// default: `CERTS_DIR` itself, made absolute.
    #[arg(long, env = "TRAEFIK_CERTS_DIR")]
    pub traefik_certs_dir: Option<PathBuf>,
}

/// The admin console (`orchestrator console`, or served by a worker when `CONSOLE_ADDR` is set).
#[derive(Debug, Clone, Args)]
pub struct ConsoleConfig {
    /// Address the console listens on (loopback by default); a worker serves it only when set.
    /// `orchestrator console` uses 127.0.0.1:9185 when unset.
    #[arg(long, env = "CONSOLE_ADDR")]
    pub console_addr: Option<String>,

    /// Token an admin gives to change anything from the console (Bearer); unset: the console is
    /// read-only.
    #[arg(long, env = "CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,

    /// Show and allow no action (retry, purge, cancel, enqueue), whatever the token.
    #[arg(long, env = "CONSOLE_READ_ONLY", default_value_t = false)]
    pub console_read_only: bool,
}

/// Everything a worker needs, grouped by concern.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub queues: QueuesConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub platform: PlatformConfig,
    #[command(flatten)]
    pub docker: DockerConfig,
    #[command(flatten)]
    pub dns: DnsConfig,
    #[command(flatten)]
    pub acme: AcmeConfig,
    #[command(flatten)]
    pub console: ConsoleConfig,
}

impl DnsConfig {
    /// The zone served, fully qualified with a trailing dot.
    pub fn zone(&self, platform: &PlatformConfig) -> String {
        let zone = self.dns_zone.as_deref().unwrap_or(&platform.domain);
        format!("{}.", zone.trim_end_matches('.').to_ascii_lowercase())
    }
}

impl AcmeConfig {
    /// The directory URL actually used.
    pub fn directory_url(&self) -> &str {
        if self.acme_production {
            "https://acme-v02.api.letsencrypt.org/directory"
        } else {
            &self.acme_directory
        }
    }
}
