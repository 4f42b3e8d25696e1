//! Certificates against a real ACME CA (Pebble), a real Redis, and the built-in HTTP-01 responder.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use clap::Parser;
use std::collections::HashMap;
use std::time::Duration;

use orchestrator::acme::dns01::ZoneChallengeDns;
use orchestrator::acme::issue::Report;
use orchestrator::acme::{Acme, ChallengeDns, ChallengeKind, http01, renewal};
use orchestrator::config::Config;
use orchestrator::context::TaskContext;
use orchestrator::dns::{DnsServer, RecordKind, RecordSet, ZoneStore};
use orchestrator::handlers;
use orchestrator::services::{NoNames, Services};
use orchestrator::task::{Task, TaskError};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use common::pebble::Pebble;
use common::{RedisServer, free_port};

#[derive(Parser)]
struct P {
    #[command(flatten)]
    c: Config,
}

/// Redis, the platform zone with its embedded DNS server, Pebble resolving through it, the HTTP-01
/// responder, and the services wired to them; all stopped on drop.
struct Env {
    pebble: Pebble,
    dns: DnsServer,
    zone: ZoneStore,
    dir: tempfile::TempDir,
    services: Arc<Services>,
    registry: handlers::Registry,
    shutdown: CancellationToken,
    redis: RedisServer,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn env() -> Env {
    env_with(&[]).await
}

/// An environment whose configuration also gets `extra` flags.
async fn env_with(extra: &[&str]) -> Env {
    let redis = RedisServer::start();
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let zone = ZoneStore::new(
        "localhost.",
        "127.0.0.1".parse().unwrap(),
        None,
        pool.clone(),
    )
    .unwrap();
    zone.ensure_platform_records().await.unwrap();
    let dns = DnsServer::start("127.0.0.1:0".parse().unwrap(), &redis.url(), zone.clone())
        .await
        .unwrap();
    let http_port = free_port();
    let pebble = Pebble::start(http_port, Some(dns.udp_addr()));
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
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
        // No Traefik reads these documents: remove replaced folders at once (tests/traefik.rs
        // covers the grace).
        "--cert-removal-grace-s".into(),
        "0".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let config = P::parse_from(args).c;
    let shutdown = CancellationToken::new();
    http01::spawn(&config.acme.http01_listen, pool.clone(), shutdown.clone())
        .await
        .unwrap();
    let config = Arc::new(config);
    let challenges = ZoneChallengeDns::new(zone.clone(), Some(dns.udp_addr()));
    let acme = Arc::new(Acme::new(
        config.clone(),
        pool.clone(),
        Arc::new(challenges),
    ));
    let services = Arc::new(Services {
        config,
        redis: pool,
        names: Arc::new(NoNames),
        certificates: acme.clone(),
    });
    let mut registry = handlers::Registry::default();
    handlers::certificate::register_with(&mut registry, acme.clone());
    Env {
        pebble,
        dns,
        zone,
        dir,
        services,
        registry,
        shutdown,
        redis,
    }
}

impl Env {
    fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Runs one task of `task_type` through its handler, as the worker would.
    async fn run(&self, task_type: &str, payload: Value) -> Result<Value, TaskError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.run_with_id(&id, task_type, payload).await
    }

    async fn run_with_id(
        &self,
        id: &str,
        task_type: &str,
        payload: Value,
    ) -> Result<Value, TaskError> {
        let task = Task {
            id: id.to_string(),
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

    /// Runs a task and returns its result with the progress hash it left.
    async fn run_task(
        &self,
        task_type: &str,
        payload: Value,
    ) -> (Result<Value, TaskError>, HashMap<String, String>) {
        let id = uuid::Uuid::new_v4().to_string();
        let result = self.run_with_id(&id, task_type, payload).await;
        let mut conn = self.redis.conn().await;
        let hash: HashMap<String, String> = conn.hgetall(format!("task:{id}")).await.unwrap();
        (result, hash)
    }

    async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.redis.conn().await;
        conn.keys(pattern).await.unwrap()
    }

    async fn cert_hash(&self, name: &str) -> HashMap<String, String> {
        let mut conn = self.redis.conn().await;
        conn.hgetall(format!("cert:{name}")).await.unwrap()
    }

    /// TXT values at `fqdn` as `dig` gets them from the embedded server.
    fn dig_txt(&self, fqdn: &str) -> String {
        let addr = self.dns.udp_addr();
        let out = Command::new("dig")
            .arg(format!("@{}", addr.ip()))
            .args(["-p", &addr.port().to_string(), "+short", "TXT", fqdn])
            .output()
            .expect("run dig (package bind9-dnsutils)");
        assert!(out.status.success(), "dig failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The Traefik document, parsed.
    fn traefik_doc(&self) -> Value {
        let text = std::fs::read_to_string(self.certs_dir().join("certificates.yml")).unwrap();
        serde_yaml_ng::from_str(&text).unwrap()
    }

    fn traefik_cert_files(&self) -> Vec<String> {
        self.traefik_doc()["tls"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["certFile"].as_str().unwrap().to_string())
            .collect()
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

/// A stored certificate: chain verifies against Pebble's root and covers exactly `domains`; key
/// 0600; metadata in Redis; listed in Traefik's document with files that exist.
async fn assert_stored(env: &Env, name: &str, domains: &[&str]) -> HashMap<String, String> {
    let mut expected: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    expected.sort();
    assert_eq!(verify_chain(env, name), expected, "SANs of {name}");
    assert_eq!(mode(&env.certs_dir().join(name).join("privkey.pem")), 0o600);
    let hash = env.cert_hash(name).await;
    assert_eq!(hash["status"], "valid");
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&hash["domains"]).unwrap(),
        expected
    );
    assert!(hash["issuer"].to_lowercase().contains("pebble"), "{hash:?}");
    assert!(hash["not_after"].ends_with('Z'));
    let mut conn = env.redis.conn().await;
    let member: bool = conn.sismember("certs", name).await.unwrap();
    assert!(member);
    let files = env.traefik_cert_files();
    let listed = files
        .iter()
        .find(|f| f.contains(&format!("/{name}/{}/", hash["serial"])))
        .unwrap_or_else(|| panic!("{name} not in the Traefik document: {files:?}"));
    assert!(Path::new(listed).is_file());
    assert_eq!(
        std::fs::read(listed).unwrap(),
        std::fs::read(env.certs_dir().join(name).join("fullchain.pem")).unwrap()
    );
    hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_verifiable_certificate_for_one_name() {
    let env = env().await;
    let (result, progress) = env
        .run_task(
            "certificate.issue",
            json!({"domains": ["team-a.localhost"], "challenge": "http-01"}),
        )
        .await;
    let result = result.unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_eq!(result["issued"], true);
    assert_eq!(result["certificate"]["name"], "team-a-localhost");
    assert_stored(&env, "team-a-localhost", &["team-a.localhost"]).await;
    // Every ACME step was a progress step.
    assert_eq!(progress["step"], "7", "{progress:?}");
    assert!(progress["message"].contains("Storing"), "{progress:?}");
    // The responder's tokens are withdrawn, and it answers 404 for them.
    assert!(env.keys("acme:http01:*").await.is_empty());
    // The account is kept, private.
    let account = env.dir.path().join("acme/account.json");
    assert_eq!(mode(&account), 0o600);
    let before = std::fs::read(&account).unwrap();

    // Asked again: the stored certificate already covers the name; nothing new is issued.
    let again = env
        .run(
            "certificate.issue",
            json!({"domains": ["team-a.localhost"], "challenge": "http-01"}),
        )
        .await
        .unwrap();
    assert_eq!(again["issued"], false);
    assert_eq!(
        again["certificate"]["serial"],
        result["certificate"]["serial"]
    );
    assert_eq!(
        std::fs::read(&account).unwrap(),
        before,
        "account created once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_forgot_the_account_gets_a_new_one_and_the_order_goes_through() {
    let mut env = env().await;
    env.run(
        "certificate.issue",
        json!({"domains": ["forgot-a.localhost"], "challenge": "http-01"}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    let account = env.dir.path().join("acme/account.json");
    let before = std::fs::read(&account).unwrap();

    // Pebble keeps accounts in memory: restarted, it answers accountDoesNotExist to the stored one.
    env.pebble.restart();
    let (result, _) = env
        .run_task(
            "certificate.issue",
            json!({"domains": ["forgot-b.localhost"], "challenge": "http-01"}),
        )
        .await;
    let result = result.unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_eq!(result["issued"], true);
    assert_stored(&env, "forgot-b-localhost", &["forgot-b.localhost"]).await;
    let after = std::fs::read(&account).unwrap();
    assert_ne!(after, before, "a new account was registered and stored");
    assert_eq!(mode(&account), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_one_certificate_for_several_names() {
    let env = env().await;
    let names = ["b.localhost", "a.localhost", "team-c.localhost"];
    let result = env
        .run(
            "certificate.issue",
            json!({"domains": names, "challenge": "http-01", "name": "several"}),
        )
        .await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_stored(&env, "several", &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_issues_a_wildcard_and_removes_its_txt_records() {
    let env = env().await;
    let names = ["*.team-w.localhost", "team-w.localhost"];
    let result = env
        .run(
            "certificate.issue",
            json!({"domains": names, "challenge": "dns-01", "name": "team-w"}),
        )
        .await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_stored(&env, "team-w", &names).await;
    // Both values (name and wildcard share the owner) are gone from the zone and the server.
    assert_eq!(env.dig_txt("_acme-challenge.team-w.localhost"), "");
    let zone = env.zone.snapshot().await.unwrap();
    assert!(
        zone.get("_acme-challenge.team-w", RecordKind::Txt)
            .is_none(),
        "challenge TXT left in the zone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_single_name_through_the_provisioning_seam_and_reuse() {
    let env = env().await;
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        task_type: "team.provision".into(),
        user_id: None,
        payload: json!({}),
        idempotency_key: None,
        max_attempts: None,
        timeout_s: None,
        created_at: None,
    };
    let ctx = TaskContext::new(task, 1, 5, "test-worker".into(), env.services.clone());
    let domains = vec!["team-s.localhost".to_string()];
    let first = env
        .services
        .certificates
        .ensure_certificate(&ctx, "team-s", &domains)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_eq!(first["reused"], false);
    assert_eq!(first["challenge"], "dns-01");
    assert_stored(&env, "team-s", &["team-s.localhost"]).await;
    assert_eq!(env.dig_txt("_acme-challenge.team-s.localhost"), "");
    // Inside another task the ACME steps are notes: the caller's step counter did not move.
    assert_eq!(ctx.current_step(), 0);

    let second = env
        .services
        .certificates
        .ensure_certificate(&ctx, "team-s", &domains)
        .await
        .unwrap();
    assert_eq!(second["reused"], true);
    assert_eq!(second["serial"], first["serial"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_replaces_the_files() {
    let env = env().await;
    env.run(
        "certificate.issue",
        json!({"domains": ["team-r.localhost"], "challenge": "http-01", "name": "team-r"}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    let old = assert_stored(&env, "team-r", &["team-r.localhost"]).await;
    let old_chain = std::fs::read(env.certs_dir().join("team-r/fullchain.pem")).unwrap();
    let old_key = std::fs::read(env.certs_dir().join("team-r/privkey.pem")).unwrap();

    // Not due (Pebble certificates live far longer than 30 days): `if_due` renews nothing.
    let skipped = env
        .run(
            "certificate.renew",
            json!({"name": "team-r", "if_due": true}),
        )
        .await
        .unwrap();
    assert_eq!(skipped["renewed"], false);

    let renewed = env
        .run("certificate.renew", json!({"name": "team-r"}))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_eq!(renewed["renewed"], true);
    let new = assert_stored(&env, "team-r", &["team-r.localhost"]).await;
    assert_ne!(new["serial"], old["serial"]);
    assert_ne!(
        std::fs::read(env.certs_dir().join("team-r/fullchain.pem")).unwrap(),
        old_chain
    );
    assert_ne!(
        std::fs::read(env.certs_dir().join("team-r/privkey.pem")).unwrap(),
        old_key
    );
    // Traefik is pointed at the new pair only; the old version folder is gone.
    let files = env.traefik_cert_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(!env.certs_dir().join("team-r").join(&old["serial"]).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_is_accepted_by_the_ca() {
    let env = env().await;
    env.run(
        "certificate.issue",
        json!({"domains": ["team-x.localhost"], "challenge": "http-01", "name": "team-x"}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    let stored = assert_stored(&env, "team-x", &["team-x.localhost"]).await;
    let result = env
        .run(
            "certificate.revoke",
            json!({"name": "team-x", "reason": "superseded"}),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_eq!(result["revoked"], true);
    let status = env.pebble.cert_status(&stored["serial"]);
    assert_eq!(status["Status"], "Revoked", "{status}");
    assert_eq!(env.cert_hash("team-x").await["status"], "revoked");
    assert!(env.traefik_cert_files().is_empty());
    assert!(!env.certs_dir().join("team-x/privkey.pem").exists());
    // Revoking again converges.
    let again = env
        .run("certificate.revoke", json!({"name": "team-x"}))
        .await
        .unwrap();
    assert_eq!(again["already"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_outside_the_platform_zone_fails_cleanly() {
    let env = env().await;
    for payload in [
        json!({"domains": ["example.com"], "challenge": "dns-01"}),
        json!({"domains": ["team-a.localhost", "evil.localhost.example.com"]}),
        json!({"domains": ["*.team-a.localhost"], "challenge": "http-01"}),
        json!({"domains": ["team-a.localhost"], "name": "../etc"}),
    ] {
        let err = env
            .run("certificate.issue", payload.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, TaskError::Invalid(_)), "{payload}: {err:?}");
    }
    let err = env
        .run("certificate.issue", json!({"domains": ["example.com"]}))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("outside the platform zone"),
        "{err}"
    );
    // Refused before the CA was asked anything: no account, nothing stored.
    assert!(!env.dir.path().join("acme/account.json").exists());
    assert!(env.keys("cert:*").await.is_empty());
    assert!(env.keys("acme:http01:*").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_challenge_fails_with_the_ca_problem_and_cleans_up() {
    let env = env().await;
    // The name resolves where no responder listens: the CA's validation fails.
    let set = RecordSet::new(
        "localhost.",
        "broken",
        RecordKind::A,
        None,
        &["127.0.0.2".to_string()],
    )
    .unwrap();
    let change = env.zone.upsert(&set).await.unwrap();
    assert!(
        env.dns
            .wait_for_serial(change.serial, Duration::from_secs(5))
            .await
    );
    let err = env
        .run(
            "certificate.issue",
            json!({"domains": ["broken.localhost"], "challenge": "http-01"}),
        )
        .await
        .unwrap_err();
    let TaskError::Failed(message) = &err else {
        panic!("expected Failed, got {err:?}");
    };
    eprintln!("failure as reported: {message}");
    assert!(message.contains("broken.localhost"), "{message}");
    assert!(
        message.contains("connection"),
        "plain words from the CA: {message}"
    );
    assert!(
        env.keys("acme:http01:*").await.is_empty(),
        "tokens withdrawn"
    );
    assert!(env.keys("cert:*").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_is_retryable() {
    let env = env().await;
    let mut config = (*env.services.config).clone();
    config.acme.acme_directory = format!("https://127.0.0.1:{}/dir", free_port());
    let acme = Acme::new(
        Arc::new(config),
        env.services.redis.clone(),
        Arc::new(orchestrator::acme::NoChallengeDns),
    );
    let mut registry = handlers::Registry::default();
    handlers::certificate::register_with(&mut registry, Arc::new(acme));
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        task_type: "certificate.issue".into(),
        user_id: None,
        payload: json!({"domains": ["team-a.localhost"], "challenge": "http-01"}),
        idempotency_key: None,
        max_attempts: None,
        timeout_s: None,
        created_at: None,
    };
    let handler = registry.get("certificate.issue").unwrap().clone();
    let ctx = TaskContext::new(task, 1, 7, "test-worker".into(), env.services.clone());
    let err = handler.run(&ctx).await.unwrap_err();
    assert!(matches!(err, TaskError::Retryable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_renewal_scheduler_enqueues_due_certificates_once_from_one_worker() {
    // Every certificate counts as due: renew 10 years ahead of expiry.
    let env = env_with(&["--renew-before-days", "3650", "--renew-check-s", "1"]).await;
    env.run(
        "certificate.issue",
        json!({"domains": ["team-d.localhost"], "challenge": "http-01", "name": "team-d"}),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));

    let stop = CancellationToken::new();
    let schedulers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(renewal::run(env.services.clone(), stop.clone())))
        .collect();
    let mut conn = env.redis.conn().await;
    let queued: Vec<String> = common::eventually("a renew task", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            let items: Vec<String> = conn.lrange("queue:certificates:normal", 0, -1).await.ok()?;
            (!items.is_empty()).then_some(items)
        }
    })
    .await;
    // Several passes later, still one task: one scheduler holds the lease, one enqueue per expiry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let items: Vec<String> = conn
        .lrange("queue:certificates:normal", 0, -1)
        .await
        .unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items, queued);
    let task: Value = serde_json::from_str(&items[0]).unwrap();
    assert_eq!(task["type"], "certificate.renew");
    assert_eq!(task["payload"], json!({"name": "team-d", "if_due": true}));
    let parsed = Task::parse(items[0].as_bytes(), 1 << 20).unwrap().0;
    let holder: Option<String> = conn.get("lock:certificate-renewal").await.unwrap();
    assert!(holder.is_some(), "the lease is held");

    stop.cancel();
    for scheduler in schedulers {
        scheduler.await.unwrap();
    }
    let holder: Option<String> = conn.get("lock:certificate-renewal").await.unwrap();
    assert!(holder.is_none(), "the lease is released at shutdown");

    // The enqueued task renews (the certificate is due under this configuration).
    let old = env.cert_hash("team-d").await;
    let result = env
        .run(&parsed.task_type, parsed.payload.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.pebble.log()));
    assert_eq!(result["renewed"], true);
    assert_ne!(env.cert_hash("team-d").await["serial"], old["serial"]);
}

#[test]
fn schemas_accept_the_contract_and_refuse_the_rest() {
    let load = |t: &str| -> jsonschema::Validator {
        let text = std::fs::read_to_string(format!("queues/schemas/{t}.json")).unwrap();
        jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
    };
    let issue = load("certificate.issue");
    for good in [
        json!({"domains": ["team-a.localhost"]}),
        json!({"domains": ["*.team-a.localhost", "team-a.localhost"], "challenge": "dns-01", "name": "team-a", "force": true}),
        json!({"domains": ["a.localhost"], "challenge": "http-01"}),
    ] {
        assert!(issue.is_valid(&good), "{good}");
    }
    for bad in [
        json!({}),
        json!({"domains": []}),
        json!({"domains": ["a.localhost", "a.localhost"]}),
        json!({"domains": ["A b"]}),
        json!({"domains": ["a`) || Host(`b"]}),
        json!({"domains": ["a.localhost"], "challenge": "tls-alpn-01"}),
        json!({"domains": ["a.localhost"], "name": "../x"}),
        json!({"domains": ["a.localhost"], "extra": 1}),
    ] {
        assert!(!issue.is_valid(&bad), "{bad}");
    }
    let renew = load("certificate.renew");
    assert!(renew.is_valid(&json!({"name": "team-a", "if_due": true})));
    assert!(!renew.is_valid(&json!({"name": "Team A"})));
    let revoke = load("certificate.revoke");
    assert!(revoke.is_valid(&json!({"name": "team-a", "reason": "keyCompromise"})));
    assert!(!revoke.is_valid(&json!({"name": "team-a", "reason": "bored"})));
}

/// The platform zone, cancelling the task as soon as a challenge value is published.
struct CancelOnPublish {
    inner: ZoneChallengeDns,
    cancel: CancellationToken,
}

#[async_trait::async_trait]
impl ChallengeDns for CancelOnPublish {
    async fn add_txt(&self, fqdn: &str, value: &str) -> Result<(), TaskError> {
        self.inner.add_txt(fqdn, value).await?;
        self.cancel.cancel();
        Ok(())
    }
    async fn remove_txt(&self, fqdn: &str, value: &str) -> Result<(), TaskError> {
        self.inner.remove_txt(fqdn, value).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_issuance_withdraws_its_challenge_records() {
    let env = env().await;
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        task_type: "certificate.issue".into(),
        user_id: None,
        payload: json!({}),
        idempotency_key: None,
        max_attempts: None,
        timeout_s: None,
        created_at: None,
    };
    let ctx = TaskContext::new(task, 1, 7, "test-worker".into(), env.services.clone());
    let dns = CancelOnPublish {
        inner: ZoneChallengeDns::new(env.zone.clone(), Some(env.dns.udp_addr())),
        cancel: ctx.cancellation().clone(),
    };
    let acme = Acme::new(
        env.services.config.clone(),
        env.services.redis.clone(),
        Arc::new(dns),
    );
    let request = acme
        .request(
            None,
            &["team-z.localhost".to_string()],
            ChallengeKind::Dns01,
        )
        .unwrap();
    let err = acme.issue(&ctx, &request, Report::Steps).await.unwrap_err();
    assert!(matches!(err, TaskError::Cancelled(_)), "{err:?}");
    assert_eq!(env.dig_txt("_acme-challenge.team-z.localhost"), "");
    let zone = env.zone.snapshot().await.unwrap();
    assert!(
        zone.get("_acme-challenge.team-z", RecordKind::Txt)
            .is_none()
    );
    assert!(env.keys("cert:*").await.is_empty());
    assert!(!env.certs_dir().join("team-z-localhost").exists());
}
