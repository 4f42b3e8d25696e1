//! DNS test harness: a configured zone store and embedded server on a test Redis, handler runs, and
//! real `dig` / `named-checkzone` calls whose output is parsed into what the tests assert on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use clap::Parser;
use orchestrator::config::Config;
use orchestrator::context::TaskContext;
use orchestrator::dns::{DnsServer, ZoneStore};
use orchestrator::handlers;
use orchestrator::services::{NoCertificates, Services};
use orchestrator::task::{Task, TaskError};
use serde_json::Value;

#[derive(Parser)]
struct P {
    #[command(flatten)]
    c: Config,
}

/// A configuration for the zone `localhost.` on `redis_url`, zone files in `zones_dir`.
pub fn config(redis_url: &str, zones_dir: &Path) -> Config {
    P::parse_from([
        "test",
        "--redis-url",
        redis_url,
        "--domain",
        "localhost",
        "--ingress-ip",
        "127.0.0.1",
        "--zones-dir",
        &zones_dir.to_string_lossy(),
        "--dns-listen",
        "127.0.0.1:0",
    ])
    .c
}

/// A pool on `redis_url`.
pub fn pool(redis_url: &str) -> deadpool_redis::Pool {
    deadpool_redis::Config::from_url(redis_url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap()
}

/// One "worker": its own pool, store, services and embedded server, on a shared Redis and zones folder.
pub struct Worker {
    pub config: Arc<Config>,
    pub store: ZoneStore,
    pub services: Arc<Services>,
    pub server: DnsServer,
}

impl Worker {
    pub async fn start(redis_url: &str, zones_dir: &Path) -> Self {
        let config = Arc::new(config(redis_url, zones_dir));
        let redis = pool(redis_url);
        let store = ZoneStore::from_config(&config, redis.clone()).unwrap();
        store.ensure_platform_records().await.unwrap();
        let server = DnsServer::start(config.dns.dns_listen, redis_url, store.clone())
            .await
            .unwrap();
        let services = Arc::new(Services {
            config: config.clone(),
            redis,
            names: Arc::new(store.clone()),
            certificates: Arc::new(NoCertificates),
        });
        Self {
            config,
            store,
            services,
            server,
        }
    }

    /// Runs one task through its registered handler.
    pub async fn run(&self, task_type: &str, payload: Value) -> Result<Value, TaskError> {
        let registry = handlers::registry(&self.services);
        let handler = registry.get(task_type).expect("handler registered").clone();
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            task_type: task_type.to_string(),
            user_id: Some("tester".into()),
            payload,
            idempotency_key: None,
            max_attempts: None,
            timeout_s: None,
            created_at: None,
        };
        let steps = handler.total_steps(&task);
        let ctx = TaskContext::new(task, 1, steps, "test-worker".into(), self.services.clone());
        handler.run(&ctx).await
    }

    /// The zone file path.
    pub fn zone_file(&self) -> PathBuf {
        self.store.zone_file().unwrap()
    }
}

/// What `dig` saw.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, ...
    pub status: String,
    /// Header flags (`qr`, `aa`, `tc`, ...).
    pub flags: Vec<String>,
    /// Answer records: `(owner, ttl, type, rdata)`.
    pub answer: Vec<(String, u32, String, String)>,
    /// Authority records.
    pub authority: Vec<(String, u32, String, String)>,
}

impl Answer {
    /// The rdata of the answer records of `rtype`.
    pub fn values(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|r| r.2 == rtype)
            .map(|r| r.3.clone())
            .collect()
    }

    /// The SOA serial in the authority section, if any.
    pub fn authority_serial(&self) -> Option<u32> {
        self.authority
            .iter()
            .find(|r| r.2 == "SOA")
            .and_then(|r| r.3.split_whitespace().nth(2)?.parse().ok())
    }
}

/// `dig @addr -p port name rtype` plus `extra` options (e.g. `+notcp`, `+ignore`, `+noedns`).
pub fn dig(server: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> Answer {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args([name, rtype])
        .args([
            "+noall",
            "+comments",
            "+answer",
            "+authority",
            "+tries=1",
            "+time=2",
        ])
        .args(extra)
        .output()
        .expect("run dig (package bind9-dnsutils)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut answer = Answer::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            answer.status = rest.split(',').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            answer.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";;") || line.trim().is_empty() {
            if line.trim().is_empty() {
                section = "";
            }
        } else if !line.starts_with(';') && !section.is_empty() {
            // Owner, TTL, class and type are single tokens; the rest of the line is the rdata,
            // which may hold spaces.
            let mut rest = line;
            let mut head = Vec::new();
            for _ in 0..4 {
                let trimmed = rest.trim_start();
                let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
                head.push(&trimmed[..end]);
                rest = &trimmed[end..];
            }
            if !head[3].is_empty() {
                let record = (
                    head[0].to_string(),
                    head[1].parse().unwrap_or(0),
                    head[3].to_string(),
                    rest.trim().to_string(),
                );
                if section == "answer" {
                    answer.answer.push(record);
                } else {
                    answer.authority.push(record);
                }
            }
        }
    }
    answer
}

/// Runs `named-checkzone origin file`; panics with its output when it refuses the file.
pub fn named_checkzone(origin: &str, file: &Path) {
    let output = Command::new("named-checkzone")
        .args([origin, &file.to_string_lossy()])
        .output()
        .expect("run named-checkzone (package bind9-utils)");
    assert!(
        output.status.success(),
        "named-checkzone refused {}:\n{}\n{}\n--- file ---\n{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

/// The zone as `named-checkzone -D` reads it back (canonical presentation, one record a line).
pub fn named_dump(origin: &str, file: &Path) -> String {
    let output = Command::new("named-checkzone")
        .args(["-D", "-o", "-", origin, &file.to_string_lossy()])
        .output()
        .expect("run named-checkzone");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).to_string()
}
