//! Certificates against a real ACME CA (Pebble), a real Redis, and the built-in HTTP-01 responder.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use clap::Parser;
use orchestrator::acme::storage::CertStore;
use orchestrator::acme::{Acme, ChallengeDns, NoChallengeDns, http01};
use orchestrator::config::Config;
use orchestrator::context::TaskContext;
use orchestrator::handlers::{self, Handler};
use orchestrator::services::{NoCertificates, NoNames, Services};
use orchestrator::task::{Task, TaskError};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use common::{Pebble, RedisServer, free_port};

#[derive(Parser)]
struct P {
    #[command(flatten)]
    c: Config,
}

/// Redis, Pebble, the responder, and the services wired to them; all stopped on drop.
struct Env {
    redis: RedisServer,
    pebble: Pebble,
    dir: tempfile::TempDir,
    services: Arc<Services>,
    acme: Arc<Acme>,
    registry: handlers::Registry,
    shutdown: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn env_with(dns: Arc<dyn ChallengeDns>, dns_server: Option<std::net::SocketAddr>) -> Env {
    let redis = RedisServer::start();
    let http_port = free_port();
    let pebble = Pebble::start(http_port, dns_server);
    let dir = tempfile::tempdir().unwrap();
    let config = P::parse_from([
        "x".to_string(),
        "--domain".into(),
        "localhost".into(),
        "--redis-url".into(),
        redis.url(),
        "--acme-directory".into(),
        pebble.directory_url(),
        "--acme-ca-root".into(),
        pebble.listener_ca().display().to_string(),
        "--certs-dir".into(),
        dir.path().join("certs").display().to_string(),
        "--acme-account-file".into(),
        dir.path().join("acme/account.json").display().to_string(),
        "--http01-listen".into(),
        format!("127.0.0.1:{http_port}"),
    ])
    .c;
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let shutdown = CancellationToken::new();
    http01::spawn(&config.acme.http01_listen, pool.clone(), shutdown.clone())
        .await
        .unwrap();
    let config = Arc::new(config);
    let acme = Arc::new(Acme::new(config.clone(), pool.clone(), dns));
    let services = Arc::new(Services {
        config,
        redis: pool,
        names: Arc::new(NoNames),
        certificates: acme.clone(),
    });
    let mut registry = handlers::Registry::default();
    handlers::certificate::register(&mut registry, acme.clone());
    Env {
        redis,
        pebble,
        dir,
        services,
        acme,
        registry,
        shutdown,
    }
}

impl Env {
    fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Runs one task of `task_type` through its handler, as the worker would.
    async fn run(&self, task_type: &str, payload: Value) -> Result<Value, TaskError> {
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            task_type: task_type.into(),
            user_id: None,
            payload,
            idempotency_key: None,
            max_attempts: None,
            timeout_s: None,
            created_at: None,
        };
        let handler = self.registry.get(task_type).unwrap().clone();
        let ctx = TaskContext::new(
            task.clone(),
            1,
            handler.total_steps(&task),
            "test-worker".into(),
            self.services.clone(),
        );
        handler.run(&ctx).await
    }

    async fn task_keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.redis.conn().await;
        conn.keys(pattern).await.unwrap()
    }
}

/// `openssl verify` of the stored chain against Pebble's issuing root; returns the SANs.
fn verify_chain(env: &Env, name: &str) -> Vec<String> {
    let chain = std::fs::read_to_string(env.certs_dir().join(name).join("fullchain.pem")).unwrap();
    let blocks: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .collect();
    assert!(blocks.len() >= 2, "chain holds leaf and intermediate");
    let leaf = env.dir.path().join(format!("{name}-leaf.pem"));
    let rest = env.dir.path().join(format!("{name}-intermediates.pem"));
    std::fs::write(&leaf, blocks[0].trim_start()).unwrap();
    std::fs::write(&rest, blocks[1..].concat()).unwrap();
    let root = env.pebble.root_file();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(&rest)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    orchestrator::acme::storage::parse_leaf(&chain)
        .unwrap()
        .domains
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_http01_localhost() {
    let env = env_with(Arc::new(NoChallengeDns), None).await;
    let result = env
        .run(
            "certificate.issue",
            json!({"domains": ["localhost"], "challenge": "http-01", "name": "apex"}),
        )
        .await;
    assert!(result.is_ok(), "{result:?}\n{}", env.pebble.log());
    assert_eq!(verify_chain(&env, "apex"), vec!["localhost"]);
    assert_eq!(mode(&env.certs_dir().join("apex/privkey.pem")), 0o600);
    let _ = env.task_keys("*").await;
    let _ = CertStore::new(&env.services.config.acme, env.services.redis.clone());
}
