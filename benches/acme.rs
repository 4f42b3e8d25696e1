//! Seconds per certificate: the orchestrator's ACME flow (HTTP-01 and DNS-01, stored for Traefik
//! with metadata in Redis) next to certbot (`certonly --standalone`, HTTP-01) against the same
//! Pebble in one run. Names resolve through the orchestrator's embedded DNS server (Pebble's
//! `-dnsserver`), whose platform wildcard points every `*.localhost` name at 127.0.0.1.
//!
//! `cargo bench --bench acme` (needs `pebble`, `redis-server`, `certbot`, `openssl`, `curl`).
//! `BENCH_CERTS=<n>` sets the certificates per series (default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orchestrator::acme::dns01::ZoneChallengeDns;
use orchestrator::acme::issue::Report;
use orchestrator::acme::{Acme, ChallengeKind, http01};
use orchestrator::config::Config;
use orchestrator::context::TaskContext;
use orchestrator::dns::{DnsServer, ZoneStore};
use orchestrator::services::{NoNames, Services};
use orchestrator::task::Task;
use tokio_util::sync::CancellationToken;

use common::pebble::Pebble;
use common::{RedisServer, free_port};

#[derive(Parser)]
struct P {
    #[command(flatten)]
    c: Config,
}

fn summary(label: &str, first: Duration, rest: &[Duration]) {
    let secs: Vec<f64> = rest.iter().map(Duration::as_secs_f64).collect();
    let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
    let min = secs.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = secs.iter().cloned().fold(0.0, f64::max);
    println!(
        "{label:<44} first {:>6.3} s   then {:>6.3} s/cert (min {:.3}, max {:.3}, n={})",
        first.as_secs_f64(),
        mean,
        min,
        max,
        secs.len()
    );
}

fn main() {
    let n: usize = std::env::var("BENCH_CERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(n));
}

async fn run(n: usize) {
    let redis = RedisServer::start();
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("pool");
    let zone = ZoneStore::new(
        "localhost.",
        "127.0.0.1".parse().expect("ip"),
        None,
        pool.clone(),
    )
    .expect("zone");
    zone.ensure_platform_records()
        .await
        .expect("platform records");
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        &redis.url(),
        zone.clone(),
    )
    .await
    .expect("dns server");
    let http_port = free_port();
    let pebble = Pebble::start(http_port, Some(dns.udp_addr()));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Arc::new(
        P::parse_from([
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
            dir.path().join("account.json").display().to_string(),
        ])
        .c,
    );
    let responder = CancellationToken::new();
    let (_, responder_task) = http01::spawn(
        &format!("127.0.0.1:{http_port}"),
        pool.clone(),
        responder.clone(),
    )
    .await
    .expect("responder");
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

    println!("ACME issuance against Pebble (same instance), {n} certificates per series");
    for kind in [ChallengeKind::Http01, ChallengeKind::Dns01] {
        let mut times = Vec::new();
        for i in 0..n {
            let name = format!("bench-{}-{i}", kind.as_str().replace("-0", ""));
            let domain = format!("{name}.localhost");
            let request = acme.request(Some(&name), &[domain], kind).expect("request");
            let task = Task {
                id: uuid::Uuid::new_v4().to_string(),
                task_type: "certificate.issue".into(),
                user_id: None,
                payload: serde_json::json!({}),
                idempotency_key: None,
                max_attempts: None,
                timeout_s: None,
                created_at: None,
            };
            let ctx = TaskContext::new(task, 1, 7, "bench".into(), services.clone());
            let started = Instant::now();
            acme.issue(&ctx, &request, Report::Steps)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
            times.push(started.elapsed());
        }
        let label = format!("orchestrator {} (incl. storage)", kind.as_str());
        summary(&label, times[0], &times[1..]);
    }

    // certbot needs the HTTP-01 port for its own standalone server.
    responder.cancel();
    let _ = responder_task.await;
    let certbot_dir = dir.path().join("certbot");
    let mut times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let out = Command::new("certbot")
            .args([
                "certonly",
                "--standalone",
                "--non-interactive",
                "--agree-tos",
            ])
            .args(["--register-unsafely-without-email", "--key-type", "ecdsa"])
            .args(["--server", &pebble.directory_url()])
            .args(["--http-01-port", &http_port.to_string()])
            .args(["--http-01-address", "127.0.0.1"])
            .arg("--config-dir")
            .arg(certbot_dir.join("config"))
            .arg("--work-dir")
            .arg(certbot_dir.join("work"))
            .arg("--logs-dir")
            .arg(certbot_dir.join("logs"))
            .args(["-d", &format!("bench-certbot-{i}.localhost")])
            .env("REQUESTS_CA_BUNDLE", pebble.listener_ca())
            .output()
            .expect("run certbot (package certbot)");
        assert!(
            out.status.success(),
            "certbot: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        times.push(started.elapsed());
    }
    summary(
        "certbot certonly --standalone http-01",
        times[0],
        &times[1..],
    );
    drop(dns);
}
