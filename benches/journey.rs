//! One tenant's journey through the queue (`team.provision` with a certificate, enqueued like the
//! portal does, run by an in-process worker) split by step from the task's own progress events,
//! next to raw-component baselines measured in the same run against the same engine, Redis, DNS
//! server and Pebble:
//! - containers: network + volume + create/start of the two containers straight through bollard,
//!   then polling `inspect` until both are healthy;
//! - DNS: HSET of the record set + INCR of the serial + PUBLISH on `dns:changes` (what `redis-cli`
//!   would do), timed until `dig` sees the answer; and `dns.record.upsert` through the queue, same;
//! - certificate: the acme module's `issue` (DNS-01, stored for Traefik) called directly, no queue.
//!
//! Then, through a real Traefik (host process on the project's static configuration, as in
//! tests/traefik.rs) with `INGRESS_PROBE_URL` set: enqueue → first HTTPS 200 polled with curl at the
//! team's host (with a certificate: verified against Pebble's root), with and without a certificate,
//! next to the raw work in the same run (the two containers created and started in parallel plus one
//! ACME order against the same Pebble, until both containers answer); and 20 teams at concurrency 4
//! (a worker with `WORKER_CONCURRENCY=4`) next to the raw same work 4 at a time.
//!
//! `cargo bench --bench journey` (needs dockerd with the team images, redis-server, pebble, dig,
//! Traefik in `.venv/`). `BENCH_ROUNDS=<n>` sets the rounds (default 3); figures are medians.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use common::dns::dig;
use common::docker::{Cleanup, build_images, unique_slug};
use common::journey::{DNS_HIGH, PROVISIONING_HIGH, Stack, step_times};
use common::traefik::{Traefik, curl_https};
use futures::StreamExt;
use orchestrator::acme::dns01::ZoneChallengeDns;
use orchestrator::acme::issue::Report;
use orchestrator::acme::{Acme, ChallengeKind};
use orchestrator::context::TaskContext;
use orchestrator::docker::Engine;
use orchestrator::docker::containers::container_body;
use orchestrator::services::{NoNames, Services};
use orchestrator::task::Task;
use orchestrator::templates::{self, Kind};
use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Step-split of one journey (ms), from the progress events' timestamps.
#[derive(Default, Clone)]
struct Split {
    pickup: Duration,
    containers: Duration,
    health: Duration,
    dns: Duration,
    certificate: Duration,
    record: Duration,
    total: Duration,
}

async fn journey(stack: &Stack, slug: &str) -> Split {
    let watch = stack.watch().await;
    let enqueued = Instant::now();
    let id = stack
        .enqueue(
            PROVISIONING_HIGH,
            "team.provision",
            json!({"slug": slug, "certificate": true}),
        )
        .await;
    stack.wait_completed(&id, Duration::from_secs(300)).await;
    let events = watch.wait_task_end(&id).await;
    let total = events.last().unwrap().0 - enqueued;
    let started = events.first().unwrap().0 - enqueued;
    let times: HashMap<String, chrono::DateTime<chrono::Utc>> = step_times(&events)
        .into_iter()
        .map(|(m, t)| {
            let key = m.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            (key, t)
        })
        .collect();
    let between =
        |a: &str, b: &str| -> Duration { (times[b] - times[a]).to_std().unwrap_or_default() };
    Split {
        pickup: started,
        containers: between("Validating team", "Waiting for"),
        health: between("Waiting for", "Registering DNS"),
        dns: between("Registering DNS", "Obtaining certificate"),
        certificate: between("Obtaining certificate", "Recording state"),
        record: between("Recording state", "end"),
        total,
    }
}

/// The tenant's network and volumes straight through bollard.
async fn create_network_and_volumes(docker: &bollard::Docker, rendered: &templates::Rendered) {
    docker
        .create_network(NetworkCreateRequest {
            name: rendered.network.clone(),
            labels: Some(rendered.ownership_labels().into_iter().collect()),
            ..Default::default()
        })
        .await
        .unwrap();
    for v in &rendered.volumes {
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(v.clone()),
                labels: Some(rendered.ownership_labels().into_iter().collect()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// The two containers straight through bollard: (create+start, health wait).
async fn raw_containers(
    engine: &Engine,
    cfg: &orchestrator::config::Config,
    slug: &str,
) -> (Duration, Duration) {
    let docker = engine.client();
    let rendered = templates::render(cfg, Kind::Team, slug).unwrap();
    let start = Instant::now();
    create_network_and_volumes(docker, &rendered).await;
    let mut ids = Vec::new();
    for spec in &rendered.containers {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let id = docker
            .create_container(Some(options), container_body(&rendered, spec))
            .await
            .unwrap()
            .id;
        docker.start_container(&id, None).await.unwrap();
        ids.push(id);
    }
    let created = start.elapsed();
    loop {
        let mut healthy = 0;
        for id in &ids {
            let state = docker
                .inspect_container(id, None)
                .await
                .unwrap()
                .state
                .unwrap();
            let status = state.health.and_then(|h| h.status).map(|s| s.to_string());
            if status.as_deref() == Some("healthy") {
                healthy += 1;
            }
        }
        if healthy == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = start.elapsed() - created;
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    for id in &ids {
        let _ = docker.remove_container(id, Some(remove.clone())).await;
    }
    let _ = docker.remove_network(&rendered.network).await;
    for v in &rendered.volumes {
        let _ = docker
            .remove_volume(v, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await;
    }
    (created, health)
}

/// Polls `dig` until `fqdn` A is `value`; returns when it was seen.
async fn until_served(stack: &Stack, fqdn: &str, value: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if dig(stack.dns, fqdn, "A", &[]).values("A") == [value] {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{fqdn} A never became {value}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// HSET + INCR + PUBLISH (redis-cli's way), timed until dig answers.
async fn raw_dns(stack: &Stack, name: &str, value: &str) -> Duration {
    let mut conn = stack.redis.conn().await;
    let start = Instant::now();
    let serial: u64 = redis::cmd("INCR")
        .arg("dns:zone:localhost.:serial")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("dns:zone:localhost.:records")
        .arg(format!("{name} A"))
        .arg(json!({"ttl": 300, "values": [value]}).to_string())
        .ignore()
        .cmd("PUBLISH")
        .arg("dns:changes")
        .arg(format!("localhost. {serial}"))
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    until_served(stack, &format!("{name}.localhost"), value).await - start
}

/// `dns.record.upsert` through the queue, timed until dig answers.
async fn queued_dns(stack: &Stack, name: &str, value: &str) -> Duration {
    let start = Instant::now();
    let id = stack
        .enqueue(
            DNS_HIGH,
            "dns.record.upsert",
            json!({"name": name, "type": "A", "value": value}),
        )
        .await;
    let seen = until_served(stack, &format!("{name}.localhost"), value).await - start;
    stack.wait_completed(&id, Duration::from_secs(30)).await;
    seen
}

/// The acme module wired to `stack`'s zone and Pebble, with its own account file and certificate
/// folder: nothing shared with the worker's.
fn raw_acme(stack: &Stack) -> (Acme, std::sync::Arc<Services>) {
    let pool = deadpool_redis::Config::from_url(stack.redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let challenges = ZoneChallengeDns::from_config(&stack.config, pool.clone()).unwrap();
    let mut acme_config = (*stack.config).clone();
    acme_config.acme.acme_account_file = stack.dir.path().join("raw/account.json");
    acme_config.acme.certs_dir = stack.dir.path().join("raw/certs");
    let acme_config = std::sync::Arc::new(acme_config);
    let acme = Acme::new(
        acme_config.clone(),
        pool.clone(),
        std::sync::Arc::new(challenges),
    );
    let services = std::sync::Arc::new(Services {
        config: acme_config,
        redis: pool,
        names: std::sync::Arc::new(NoNames),
        certificates: std::sync::Arc::new(orchestrator::services::NoCertificates),
    });
    (acme, services)
}

/// A certificate through the acme module directly (DNS-01 on the same zone, same Pebble).
async fn raw_certificate(
    stack: &Stack,
    acme: &Acme,
    services: &std::sync::Arc<Services>,
    name: &str,
) -> Duration {
    let request = acme
        .request(
            Some(name),
            &[format!("{name}.localhost")],
            ChallengeKind::Dns01,
        )
        .unwrap();
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
    let ctx = TaskContext::new(task, 1, 1, "bench".into(), services.clone());
    let start = Instant::now();
    acme.issue(&ctx, &request, Report::Notes)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.pebble.as_ref().unwrap().log()));
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    build_images();
    let stack = Stack::start(true).await;
    let engine = Engine::connect(&stack.config.docker).await.unwrap();
    let (acme, services) = raw_acme(&stack);

    let mut splits = Vec::new();
    let mut raw_create = Vec::new();
    let mut raw_health = Vec::new();
    let mut raw_dns_t = Vec::new();
    let mut queued_dns_t = Vec::new();
    let mut raw_cert = Vec::new();
    let mut deletes = Vec::new();
    let mut dig_floor = Vec::new();
    for round in 0..rounds {
        let slug = unique_slug(&format!("bj{round}"));
        let raw_slug = unique_slug(&format!("bjr{round}"));
        let _guard = Cleanup::new(&[&slug, &raw_slug]);
        splits.push(journey(&stack, &slug).await);

        let t = Instant::now();
        let id = stack
            .enqueue(
                PROVISIONING_HIGH,
                "team.delete",
                json!({"slug": slug, "purge_data": true}),
            )
            .await;
        stack.wait_completed(&id, Duration::from_secs(120)).await;
        deletes.push(t.elapsed());

        let (c, h) = raw_containers(&engine, &stack.config, &raw_slug).await;
        raw_create.push(c);
        raw_health.push(h);
        let value = format!("10.7.{round}.1");
        raw_dns_t.push(raw_dns(&stack, &format!("bjraw{round}"), &value).await);
        queued_dns_t.push(queued_dns(&stack, &format!("bjq{round}"), &value).await);
        let t = Instant::now();
        dig(stack.dns, "ns.localhost", "A", &[]);
        dig_floor.push(t.elapsed());
        raw_cert.push(raw_certificate(&stack, &acme, &services, &format!("bjcert{round}")).await);
    }

    let m = |f: fn(&Split) -> Duration| median(splits.iter().map(f).collect());
    println!(
        "Journey: team.provision {{certificate: true}} through the queue, median of {rounds} round(s)"
    );
    println!(
        "{:<36} {:>12}   {:<46} {:>12}",
        "step (through the queue)", "ms", "raw baseline (same run)", "ms"
    );
    // A zero on the left means "no journey figure for this baseline row".
    let row = |a: &str, x: Duration, b: &str, y: Option<Duration>| {
        let x = if x.is_zero() {
            String::new()
        } else {
            format!("{:.0}", ms(x))
        };
        let y = y.map(|y| format!("{:>12.0}", ms(y))).unwrap_or_default();
        println!("{a:<36} {x:>12}   {b:<46} {y}");
    };
    row("queue pickup (LPUSH -> Started)", m(|s| s.pickup), "", None);
    row(
        "containers (net, vol, create, start)",
        m(|s| s.containers),
        "bollard: net, vol, create, start",
        Some(median(raw_create.clone())),
    );
    row(
        "health wait",
        m(|s| s.health),
        "bollard: poll inspect until healthy",
        Some(median(raw_health.clone())),
    );
    row(
        "DNS name (Redis + zone file)",
        m(|s| s.dns),
        "HSET+INCR+PUBLISH until dig answers",
        Some(median(raw_dns_t.clone())),
    );
    row(
        "",
        Duration::ZERO,
        "dns.record.upsert via queue until dig answers",
        Some(median(queued_dns_t.clone())),
    );
    row(
        "",
        Duration::ZERO,
        "one dig process (floor of the two above)",
        Some(median(dig_floor.clone())),
    );
    row(
        "certificate (DNS-01, Pebble)",
        m(|s| s.certificate),
        "acme issue() directly, no queue",
        Some(median(raw_cert.clone())),
    );
    row("record state + publish", m(|s| s.record), "", None);
    row(
        "total (LPUSH -> completed event)",
        m(|s| s.total),
        "sum of the raw baselines",
        Some(
            median(raw_create.clone())
                + median(raw_health.clone())
                + median(raw_dns_t.clone())
                + median(raw_cert.clone()),
        ),
    );
    row(
        "team.delete purge (LPUSH -> done)",
        median(deletes.clone()),
        "",
        None,
    );
    println!(
        "per-round totals (ms): {:?}",
        splits
            .iter()
            .map(|s| ms(s.total).round())
            .collect::<Vec<_>>()
    );
    stack.stop().await;
    through_traefik(rounds, &engine).await;
}

/// Polls `https://<host>/` through Traefik with curl until it answers 200; returns when.
fn first_200(port: u16, host: &str, cacert: Option<&std::path::Path>) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if curl_https(port, host, "/", cacert).status == 200 {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{host} never answered 200");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Enqueue → first HTTPS 200 through Traefik (curl polling from the moment of the LPUSH).
async fn to_first_200(stack: &Stack, traefik: &Traefik, slug: &str, certificate: bool) -> Duration {
    let cacert = certificate.then(|| stack.pebble.as_ref().unwrap().root_file());
    let (port, host) = (traefik.https_port, format!("{slug}.localhost"));
    let start = Instant::now();
    let poll = tokio::task::spawn_blocking(move || first_200(port, &host, cacert.as_deref()));
    let id = stack
        .enqueue(
            PROVISIONING_HIGH,
            "team.provision",
            json!({"slug": slug, "certificate": certificate}),
        )
        .await;
    let seen = poll.await.unwrap() - start;
    stack.wait_completed(&id, Duration::from_secs(120)).await;
    seen
}

/// The raw work of one team: network + volume, both containers created and started in parallel
/// (bollard), until each answers at its address; with `order`, one ACME order in parallel too.
async fn raw_team(
    engine: &Engine,
    cfg: &orchestrator::config::Config,
    slug: &str,
    order: Option<(&Stack, &Acme, &std::sync::Arc<Services>, &str)>,
) -> Duration {
    let docker = engine.client();
    let rendered = templates::render(cfg, Kind::Team, slug).unwrap();
    let start = Instant::now();
    let containers = async {
        create_network_and_volumes(docker, &rendered).await;
        futures::future::join_all(rendered.containers.iter().map(|spec| async {
            let options = CreateContainerOptionsBuilder::default()
                .name(&spec.name)
                .build();
            let id = docker
                .create_container(Some(options), container_body(&rendered, spec))
                .await
                .unwrap()
                .id;
            docker.start_container(&id, None).await.unwrap();
            let (port, path) = if spec.service == "api" {
                (8000, "/api/health")
            } else {
                (80, "/")
            };
            let name = spec.name.clone();
            let network = rendered.network.clone();
            tokio::task::spawn_blocking(move || {
                loop {
                    let ip = common::docker::ip_on(&name, &network);
                    if !ip.is_empty()
                        && common::docker::http_get(&format!("{ip}:{port}"), path).is_some()
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .await
            .unwrap();
        }))
        .await;
    };
    let certificate = async {
        if let Some((stack, acme, services, name)) = order {
            raw_certificate(stack, acme, services, name).await;
        }
    };
    tokio::join!(containers, certificate);
    let took = start.elapsed();
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    for spec in &rendered.containers {
        let _ = docker
            .remove_container(&spec.name, Some(remove.clone()))
            .await;
    }
    let _ = docker.remove_network(&rendered.network).await;
    for v in &rendered.volumes {
        let _ = docker
            .remove_volume(v, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await;
    }
    took
}

/// `team.delete {purge_data}` of each slug, one after another.
async fn delete_teams(stack: &Stack, slugs: &[String]) {
    for slug in slugs {
        let id = stack
            .enqueue(
                PROVISIONING_HIGH,
                "team.delete",
                json!({"slug": slug, "purge_data": true}),
            )
            .await;
        stack.wait_completed(&id, Duration::from_secs(120)).await;
    }
}

/// The Traefik part of the benchmark (see the module comment).
async fn through_traefik(rounds: usize, engine: &Engine) {
    let (dir, dynamic) = Traefik::prepare();
    let traefik = Traefik::start(dir, dynamic.clone(), "bt");
    let traefik_args = |certs: String, concurrency: &str| -> Vec<String> {
        [
            "--certs-dir",
            &certs,
            "--ingress-probe-url",
            &traefik.probe_url(),
            "--concurrency",
            concurrency,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let stack = Stack::start_with(true, &traefik_args(dynamic.display().to_string(), "8")).await;
    let (acme, services) = raw_acme(&stack);
    // One account creation outside the timings (the worker's is made by its first order too).
    raw_team(
        engine,
        &stack.config,
        &unique_slug("btw"),
        Some((&stack, &acme, &services, "btwarm")),
    )
    .await;
    let (mut with_cert, mut without, mut raw_with, mut raw_without) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let (a, b) = (
            unique_slug(&format!("btc{round}")),
            unique_slug(&format!("btn{round}")),
        );
        let (ra, rb) = (
            unique_slug(&format!("btrc{round}")),
            unique_slug(&format!("btrn{round}")),
        );
        let _guard = Cleanup::new(&[&a, &b, &ra, &rb]);
        with_cert.push(to_first_200(&stack, &traefik, &a, true).await);
        without.push(to_first_200(&stack, &traefik, &b, false).await);
        let cert_name = format!("btraw{round}");
        raw_with.push(
            raw_team(
                engine,
                &stack.config,
                &ra,
                Some((&stack, &acme, &services, &cert_name)),
            )
            .await,
        );
        raw_without.push(raw_team(engine, &stack.config, &rb, None).await);
        delete_teams(&stack, &[a, b]).await;
    }
    stack.stop().await;

    // 20 teams, 4 at a time, through a worker with concurrency 4; then the raw same work.
    let certs = tempfile::tempdir().unwrap();
    let stack = Stack::start_with(
        false,
        &traefik_args(certs.path().display().to_string(), "4"),
    )
    .await;
    let many: Vec<String> = (0..20).map(|i| unique_slug(&format!("btm{i}"))).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let _guard = Cleanup::new(&refs);
    let start = Instant::now();
    let mut ids = Vec::new();
    for slug in &many {
        ids.push(
            stack
                .enqueue(PROVISIONING_HIGH, "team.provision", json!({"slug": slug}))
                .await,
        );
    }
    for id in &ids {
        stack.wait_completed(id, Duration::from_secs(300)).await;
    }
    let queued_20 = start.elapsed();
    delete_teams(&stack, &many).await;
    stack.stop().await;
    let raw_many: Vec<String> = (0..20).map(|i| unique_slug(&format!("btq{i}"))).collect();
    let refs: Vec<&str> = raw_many.iter().map(String::as_str).collect();
    let _guard = Cleanup::new(&refs);
    let cfg = (*stack_config_for_raw()).clone();
    let start = Instant::now();
    futures::stream::iter(raw_many.iter())
        .for_each_concurrent(4, |slug| {
            let cfg = &cfg;
            async move {
                raw_team(engine, cfg, slug, None).await;
            }
        })
        .await;
    let raw_20 = start.elapsed();

    println!();
    println!("Through Traefik (HTTPS, INGRESS_PROBE_URL set), median of {rounds} round(s)");
    println!(
        "{:<46} {:>9}   {:<52} {:>9} {:>7}",
        "through the queue", "ms", "raw work, same run", "ms", "ratio"
    );
    let line = |a: &str, x: Duration, b: &str, y: Duration| {
        println!(
            "{a:<46} {:>9.0}   {b:<52} {:>9.0} {:>6.2}x",
            ms(x),
            ms(y),
            x.as_secs_f64() / y.as_secs_f64()
        );
    };
    line(
        "enqueue -> first HTTPS 200, with certificate",
        median(with_cert.clone()),
        "2 containers in parallel + 1 ACME order, answering",
        median(raw_with.clone()),
    );
    line(
        "enqueue -> first HTTPS 200, no certificate",
        median(without.clone()),
        "2 containers in parallel, answering",
        median(raw_without.clone()),
    );
    line(
        "20 teams, worker concurrency 4 (all active)",
        queued_20,
        "20 x (2 containers in parallel), 4 at a time",
        raw_20,
    );
    println!(
        "per-round (ms): with certificate {:?}, without {:?}",
        with_cert.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
        without.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
}

/// A configuration to render the raw teams with (the templates of the repository).
fn stack_config_for_raw() -> std::sync::Arc<orchestrator::config::Config> {
    std::sync::Arc::new(common::docker::config(&["--domain", "localhost"]))
}
