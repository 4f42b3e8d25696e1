//! Tenants can't lose their data or take each other's names: a failing re-provision (the CA
//! unreachable) leaves a live team and a retained volume alone; the engine lost mid-provision is
//! retried and converges with nothing left over; DNS and certificate tasks are refused outside
//! what their user owns while the victim keeps resolving and keeps its certificate; a team and a
//! sandbox never share a slug; a provision frozen past its lease and superseded never undoes (nor
//! marks failed) what the newer attempt built. Real Docker, Redis, Pebble and the embedded DNS server (`dig`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::dns::dig;
use common::docker::{
    Cleanup, build_images, containers_of, docker, inspect, networks_of, unique_slug, volumes_of,
};
use common::platform::{Options, Platform};
use common::sockproxy::SocketProxy;
use serde_json::json;

const PROVISIONING: &str = "queue:provisioning:high";
const DNS: &str = "queue:dns:high";
const CERTIFICATES: &str = "queue:certificates:high";
const LONG: Duration = Duration::from_secs(240);

fn status(hash: &HashMap<String, String>) -> &str {
    hash.get("status").map(String::as_str).unwrap_or("")
}

fn assert_completed(hash: &HashMap<String, String>) {
    assert_eq!(status(hash), "completed", "{hash:#?}");
}

/// Asserts the task failed and its error contains `needle`.
fn assert_refused(hash: &HashMap<String, String>, needle: &str) {
    assert_eq!(status(hash), "failed", "{hash:#?}");
    let error = hash.get("error").cloned().unwrap_or_default();
    assert!(error.contains(needle), "error {error:?} lacks {needle:?}");
}

/// Both containers of team `slug` running (and healthy: a provision completes once the containers
/// answer, which can be before Docker's first healthcheck ran, so that is waited for).
fn assert_team_running(slug: &str) {
    for service in ["api", "web"] {
        let name = format!("team-{slug}-{service}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut c = inspect(&name);
        while c["State"]["Health"]["Status"] == "starting" && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            c = inspect(&name);
        }
        assert_eq!(c["State"]["Running"], true, "{name}");
        assert_eq!(c["State"]["Health"]["Status"], "healthy", "{name}");
    }
    assert_eq!(networks_of(slug), vec![format!("team-{slug}-net")]);
}

fn read_data(slug: &str) -> String {
    let (out, ok) = docker(&["exec", &format!("team-{slug}-api"), "cat", "/data/precious"]);
    assert!(ok, "cannot read /data/precious in team-{slug}-api");
    out
}

/// `team.provision {slug, certificate: true}` for alice with two attempts while the CA is
/// unreachable: both attempts fail. Returns the task's hash.
async fn provision_without_ca(platform: &Platform, slug: &str) -> HashMap<String, String> {
    let id = platform
        .enqueue(
            PROVISIONING,
            "team.provision",
            Some("alice"),
            json!({"slug": slug, "certificate": true}),
            Some(2),
        )
        .await;
    let hash = platform.wait_end(&id, LONG).await;
    assert_eq!(status(&hash), "failed", "{hash:#?}");
    hash
}

/// Runs a provisioning task for `user`, which must complete.
async fn provisioned(platform: &Platform, task_type: &str, user: &str, payload: serde_json::Value) {
    assert_completed(
        &platform
            .run(PROVISIONING, task_type, Some(user), payload)
            .await,
    );
}

/// `team.delete {slug, purge_data: true}` for `user`, which must complete.
async fn purge(platform: &Platform, slug: &str, user: &str) {
    let hash = platform
        .run(
            PROVISIONING,
            "team.delete",
            Some(user),
            json!({"slug": slug, "purge_data": true}),
        )
        .await;
    assert_completed(&hash);
}

fn resolves(platform: &Platform, slug: &str) -> Vec<String> {
    dig(platform.dns, &format!("{slug}.localhost"), "A", &[]).values("A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_reprovision_keeps_the_live_team_and_the_kept_volume() {
    build_images();
    let slug = unique_slug("keep");
    let _cleanup = Cleanup::new(&[&slug]);
    let platform = Platform::start(Options::default()).await;

    // A live team with data in its volume.
    let hash = platform
        .run(
            PROVISIONING,
            "team.provision",
            Some("alice"),
            json!({"slug": slug}),
        )
        .await;
    assert_completed(&hash);
    let (_, ok) = docker(&[
        "exec",
        &format!("team-{slug}-api"),
        "sh",
        "-c",
        "echo kept > /data/precious",
    ]);
    assert!(ok, "write into /data");
    let api_id = inspect(&format!("team-{slug}-api"))["Id"].clone();

    // Re-provision with a certificate while the CA is unreachable, through the real worker with
    // two attempts: both fail, and the team is untouched.
    let hash = provision_without_ca(&platform, &slug).await;
    assert_eq!(hash["attempts"], "2", "{hash:#?}");
    assert_team_running(&slug);
    assert_eq!(inspect(&format!("team-{slug}-api"))["Id"], api_id);
    assert_eq!(read_data(&slug), "kept");
    assert_eq!(resolves(&platform, &slug), ["127.0.0.1"]);
    assert_eq!(volumes_of(&slug), vec![format!("team-{slug}-data")]);
    // The journal of the failed task is gone (its rollback had nothing to remove).
    assert!(platform.keys("journal:*").await.is_empty());

    // Delete without purge_data keeps the volume; a failing provision afterwards removes what it
    // created (containers, network, name) and never the kept volume.
    provisioned(&platform, "team.delete", "alice", json!({"slug": slug})).await;
    assert!(containers_of(&slug).is_empty());
    assert_eq!(volumes_of(&slug), vec![format!("team-{slug}-data")]);
    // The kept data stays Alice's: nobody else can provision the slug and adopt it.
    let hash = platform
        .run(
            PROVISIONING,
            "team.provision",
            Some("mallory"),
            json!({"slug": slug}),
        )
        .await;
    assert_refused(&hash, "belongs to user \"alice\"");
    assert!(containers_of(&slug).is_empty());
    provision_without_ca(&platform, &slug).await;
    assert!(
        containers_of(&slug).is_empty(),
        "{:?}",
        containers_of(&slug)
    );
    assert!(networks_of(&slug).is_empty());
    assert_eq!(volumes_of(&slug), vec![format!("team-{slug}-data")]);
    assert!(platform.keys("journal:*").await.is_empty());

    // The data is still there for the next provision.
    provisioned(&platform, "team.provision", "alice", json!({"slug": slug})).await;
    assert_eq!(read_data(&slug), "kept");
    purge(&platform, &slug, "alice").await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_lost_mid_provision_is_retried_and_converges_with_nothing_left_over() {
    build_images();
    let slug = unique_slug("lost");
    let _cleanup = Cleanup::new(&[&slug]);
    let proxy = SocketProxy::start(Path::new("/var/run/docker.sock"));
    let platform = Platform::start(Options {
        docker_host: Some(proxy.url()),
        ..Options::default()
    })
    .await;

    let id = platform
        .enqueue(
            PROVISIONING,
            "team.provision",
            Some("alice"),
            json!({"slug": slug}),
            Some(3),
        )
        .await;
    // Cut the engine once the second container exists (creating, starting or health-waiting).
    common::eventually("team-<slug>-web to exist", LONG, || {
        let slug = slug.clone();
        async move {
            containers_of(&slug)
                .contains(&format!("team-{slug}-web"))
                .then_some(())
        }
    })
    .await;
    proxy.cut();
    // The attempt fails retryably, its rollback could not finish: the journal stays, marked.
    let hash = common::eventually("the task to wait for a retry", LONG, || {
        let (platform, id) = (&platform, id.clone());
        async move {
            let hash = platform.task_hash(&id).await;
            (status(&hash) != "processing" && status(&hash) != "queued").then_some(hash)
        }
    })
    .await;
    assert_eq!(status(&hash), "retrying", "{hash:#?}");
    assert!(hash["error"].contains("rollback incomplete"), "{hash:#?}");
    let mut conn = platform.redis.conn().await;
    let mark: Option<String> = redis::cmd("HGET")
        .arg(format!("journal:{id}:state"))
        .arg("rolling_back")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(mark.as_deref(), Some("1"));
    proxy.restore();

    // The next attempt finishes the cleanup, then provisions: exactly the team, nothing else.
    let hash = platform.wait_end(&id, LONG).await;
    assert_completed(&hash);
    assert_eq!(hash["attempts"], "2", "{hash:#?}");
    assert_team_running(&slug);
    assert_eq!(
        containers_of(&slug),
        vec![format!("team-{slug}-api"), format!("team-{slug}-web")]
    );
    assert_eq!(volumes_of(&slug), vec![format!("team-{slug}-data")]);
    let api = inspect(&format!("team-{slug}-api"));
    assert_eq!(api["Config"]["Labels"]["orchestrator.task"], id.as_str());
    assert_eq!(api["Config"]["Labels"]["orchestrator.attempt"], "2");
    assert!(platform.keys("journal*").await.is_empty());
    assert_eq!(resolves(&platform, &slug), ["127.0.0.1"]);
    // The claim attempt 1 made was released by its rollback and made again by attempt 2.
    let owner: Option<String> = redis::cmd("HGET")
        .arg(format!("tenant:{slug}"))
        .arg("owner")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("alice"));

    purge(&platform, &slug, "alice").await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_and_certificates_belong_to_their_tenant() {
    build_images();
    let victim = unique_slug("vic");
    let squat = unique_slug("sq");
    let _cleanup = Cleanup::new(&[&victim, &squat]);
    let platform = Platform::start(Options {
        pebble: true,
        ..Options::default()
    })
    .await;
    let vfqdn = format!("{victim}.localhost");

    // Alice's team, with its certificate.
    provisioned(
        &platform,
        "team.provision",
        "alice",
        json!({"slug": victim, "certificate": true}),
    )
    .await;
    let chain = platform
        .certs_dir()
        .join(format!("team-{victim}/fullchain.pem"));
    let served = std::fs::read(&chain).expect("the team's certificate");
    assert_eq!(resolves(&platform, &victim), ["127.0.0.1"]);

    // Mallory can't touch any name in Alice's space.
    let upsert = |name: String, rtype: &str, value: &str| json!({"name": name, "type": rtype, "value": value});
    for (payload, why) in [
        (upsert(victim.clone(), "A", "6.6.6.6"), "does not own"),
        (
            upsert(format!("www.{victim}"), "A", "6.6.6.6"),
            "does not own",
        ),
        (upsert(format!("{vfqdn}."), "A", "6.6.6.6"), "does not own"),
        (
            upsert(format!("_acme-challenge.{victim}"), "TXT", "x"),
            "ACME challenge",
        ),
        (
            upsert("_acme-challenge".into(), "TXT", "x"),
            "ACME challenge",
        ),
        (
            upsert(format!("*.{victim}"), "A", "6.6.6.6"),
            "does not own",
        ),
    ] {
        let hash = platform
            .run(DNS, "dns.record.upsert", Some("mallory"), payload.clone())
            .await;
        assert_refused(&hash, why);
    }
    assert_refused(
        &platform
            .run(
                DNS,
                "dns.record.delete",
                Some("mallory"),
                json!({"name": victim}),
            )
            .await,
        "does not own",
    );
    // The platform (no user_id) can't either.
    assert_refused(
        &platform
            .run(
                DNS,
                "dns.record.upsert",
                None,
                upsert(victim.clone(), "A", "6.6.6.6"),
            )
            .await,
        "does not own",
    );
    assert_eq!(resolves(&platform, &victim), ["127.0.0.1"]);

    // Alice may add names below her team, but not replace its own name, nor wildcards or
    // challenge names.
    for (payload, why) in [
        (
            upsert(victim.clone(), "CNAME", "elsewhere.example."),
            "only TXT",
        ),
        (upsert(victim.clone(), "A", "10.0.0.9"), "only TXT"),
        (upsert(format!("*.{victim}"), "A", "10.0.0.9"), "wildcard"),
        (
            upsert(format!("_acme-challenge.{victim}"), "TXT", "x"),
            "ACME challenge",
        ),
    ] {
        let hash = platform
            .run(DNS, "dns.record.upsert", Some("alice"), payload.clone())
            .await;
        assert_refused(&hash, why);
    }
    assert_completed(
        &platform
            .run(
                DNS,
                "dns.record.upsert",
                Some("alice"),
                upsert(format!("app.{victim}"), "A", "10.0.0.5"),
            )
            .await,
    );
    assert_eq!(
        dig(platform.dns, &format!("app.{vfqdn}"), "A", &[]).values("A"),
        ["10.0.0.5"]
    );
    assert_eq!(resolves(&platform, &victim), ["127.0.0.1"]);

    // Certificates: another tenant's names, the team's reserved name, the platform wildcard.
    for (task_type, payload, why) in [
        (
            "certificate.issue",
            json!({"name": format!("team-{victim}"), "domains": [vfqdn, "evil.localhost"], "force": true}),
            "reserved for the lifecycle",
        ),
        (
            "certificate.issue",
            json!({"name": "mine", "domains": [vfqdn], "challenge": "dns-01"}),
            "does not own",
        ),
        (
            "certificate.issue",
            json!({"domains": ["*.localhost"], "challenge": "dns-01"}),
            "apex or wildcard",
        ),
        (
            "certificate.issue",
            json!({"domains": ["localhost"], "challenge": "dns-01"}),
            "apex or wildcard",
        ),
        (
            "certificate.revoke",
            json!({"name": format!("team-{victim}")}),
            "does not own",
        ),
        (
            "certificate.renew",
            json!({"name": format!("team-{victim}")}),
            "does not own",
        ),
    ] {
        let hash = platform
            .run(CERTIFICATES, task_type, Some("mallory"), payload.clone())
            .await;
        assert_refused(&hash, why);
    }
    // Even Alice can't issue under the team's lifecycle name.
    assert_refused(
        &platform
            .run(
                CERTIFICATES,
                "certificate.issue",
                Some("alice"),
                json!({"name": format!("team-{victim}"), "domains": [vfqdn], "force": true}),
            )
            .await,
        "reserved for the lifecycle",
    );
    assert_eq!(
        std::fs::read(&chain).unwrap(),
        served,
        "the certificate changed"
    );
    let mut conn = platform.redis.conn().await;
    let cert_status: String = redis::cmd("HGET")
        .arg(format!("cert:team-{victim}"))
        .arg("status")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cert_status, "valid");

    // Mallory can't run the lifecycle of Alice's team either.
    for task_type in ["team.delete", "team.suspend", "team.provision"] {
        let hash = platform
            .run(
                PROVISIONING,
                task_type,
                Some("mallory"),
                json!({"slug": victim}),
            )
            .await;
        assert_refused(&hash, "belongs to user \"alice\"");
    }

    // A sandbox can't take the team's slug, nor delete its name.
    assert_refused(
        &platform
            .run(
                PROVISIONING,
                "sandbox.provision",
                Some("alice"),
                json!({"slug": victim}),
            )
            .await,
        "never share a slug",
    );
    assert_refused(
        &platform
            .run(
                PROVISIONING,
                "sandbox.delete",
                Some("alice"),
                json!({"slug": victim}),
            )
            .await,
        "never share a slug",
    );
    assert!(
        containers_of(&victim)
            .iter()
            .all(|c| c.starts_with("team-"))
    );
    assert_team_running(&victim);
    assert_eq!(resolves(&platform, &victim), ["127.0.0.1"]);

    // CNAME loops are refused.
    let a = unique_slug("loopa");
    let b = unique_slug("loopb");
    assert_completed(
        &platform
            .run(
                DNS,
                "dns.record.upsert",
                None,
                upsert(a.clone(), "CNAME", &format!("{b}.localhost.")),
            )
            .await,
    );
    for target in [format!("{a}.localhost."), format!("{b}.localhost")] {
        let hash = platform
            .run(
                DNS,
                "dns.record.upsert",
                None,
                upsert(b.clone(), "CNAME", &target),
            )
            .await;
        assert_refused(&hash, "CNAME loop");
    }

    // A name squatted before its team exists doesn't block the team: the tenant wins.
    assert_completed(
        &platform
            .run(
                DNS,
                "dns.record.upsert",
                Some("mallory"),
                upsert(squat.clone(), "CNAME", "elsewhere.example."),
            )
            .await,
    );
    provisioned(&platform, "team.provision", "bob", json!({"slug": squat})).await;
    assert_eq!(resolves(&platform, &squat), ["127.0.0.1"]);
    assert_refused(
        &platform
            .run(
                DNS,
                "dns.record.upsert",
                Some("mallory"),
                upsert(format!("x.{squat}"), "A", "6.6.6.6"),
            )
            .await,
        "does not own",
    );

    purge(&platform, &victim, "alice").await;
    purge(&platform, &squat, "bob").await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_retry_keeps_the_identity_of_an_id_less_task() {
    let platform = Platform::start(Options::default()).await;
    let mut conn = platform.redis.conn().await;
    // No id; fails at once (its timeout is shorter than its delay) and is dead-lettered.
    let body = json!({"type": "system.ping", "payload": {"delay_ms": 5000}, "timeout_s": 1, "max_attempts": 1});
    let _: i64 = redis::cmd("LPUSH")
        .arg(DNS)
        .arg(body.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let dead = |platform: &Platform| {
        let pool = deadpool_redis::Config::from_url(platform.redis.url())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        async move { orchestrator::admin::dead_list(&pool, 10).await.unwrap() }
    };
    let entry = common::eventually("the task to be dead-lettered", LONG, || async {
        dead(&platform).await.into_iter().next()
    })
    .await;
    let id = entry.id.clone();
    assert_eq!(status(&platform.task_hash(&id).await), "failed");

    let pool = deadpool_redis::Config::from_url(platform.redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let retried = orchestrator::admin::dead_retry(&pool, Some(&id))
        .await
        .unwrap();
    assert_eq!(retried, vec![id.clone()]);
    // The same task runs again under the same id: its hash is updated, no new id appears.
    let hash = common::eventually("the retried task to end again", LONG, || async {
        let hash = platform.task_hash(&id).await;
        (status(&hash) == "failed" && dead(&platform).await.len() == 1).then_some(hash)
    })
    .await;
    assert_eq!(hash["attempts"], "1", "{hash:#?}");
    let entries = dead(&platform).await;
    assert_eq!(entries[0].id, id);
    assert_eq!(platform.keys("task:*").await, vec![format!("task:{id}")]);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slugs_are_checked_for_every_derived_name_before_any_side_effect() {
    build_images();
    // An engine address that can't work: any Docker call would fail with a connection error.
    let platform = Platform::start(Options {
        docker_host: Some("unix:///nonexistent/docker.sock".into()),
        ..Options::default()
    })
    .await;
    let too_long = "a".repeat(56);
    for slug in ["ns", "www", "traefik", too_long.as_str()] {
        for task_type in ["team.provision", "sandbox.provision", "team.delete"] {
            let hash = platform
                .run(
                    PROVISIONING,
                    task_type,
                    Some("alice"),
                    json!({"slug": slug}),
                )
                .await;
            assert_eq!(status(&hash), "failed", "{task_type} {slug}: {hash:#?}");
            let error = &hash["error"];
            assert!(
                !error.contains("Docker engine"),
                "{task_type} {slug} reached the engine: {error}"
            );
        }
    }
    assert!(platform.keys("tenant:*").await.is_empty());
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_slug_provisions_and_deletes() {
    build_images();
    let slug = format!("{}-{}", unique_slug("long"), "a".repeat(40));
    let slug: String = slug
        .chars()
        .take(orchestrator::validate::MAX_SLUG)
        .collect();
    let slug = slug.trim_end_matches('-').to_string();
    let _cleanup = Cleanup::new(&[&slug]);
    let platform = Platform::start(Options::default()).await;
    for (task_type, payload) in [
        ("sandbox.provision", json!({"slug": slug})),
        ("sandbox.delete", json!({"slug": slug, "purge_data": true})),
        ("team.delete", json!({"slug": slug, "purge_data": true})),
    ] {
        let hash = platform
            .run(PROVISIONING, task_type, Some("alice"), payload)
            .await;
        assert_completed(&hash);
    }
    assert!(containers_of(&slug).is_empty());
    platform.stop().await;
}

/// `GET path` on a fresh connection: (status code, body); None when the server closed or did
/// not answer within 5 s.
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_connections_cannot_hold_the_listeners_and_healthz_reports_each_component() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let http01 = common::free_port();
    let platform = Platform::start(Options {
        flags: vec![
            ("--metrics-addr", "127.0.0.1:0".into()),
            ("--http01-listen", format!("127.0.0.1:{http01}")),
        ],
        ..Options::default()
    })
    .await;
    let metrics = platform.worker.as_ref().unwrap().metrics_addr.unwrap();
    let http01: std::net::SocketAddr = format!("127.0.0.1:{http01}").parse().unwrap();

    // Every component the worker runs is reported.
    let body = common::eventually("/healthz to report every component", LONG, || async move {
        match get(metrics, "/healthz").await {
            Some((200, body)) if body.contains("dns: ok") && body.contains("http01: ok") => {
                Some(body)
            }
            _ => None,
        }
    })
    .await;
    for line in ["ok", "redis: ok", "docker: ok", "dns: ok", "http01: ok"] {
        assert!(body.lines().any(|l| l == line), "{line:?} not in {body:?}");
    }

    // 300 half-sent requests on the metrics endpoint, 100 on the HTTP-01 responder, held open.
    let mut slow = Vec::new();
    for (addr, n) in [(metrics, 300), (http01, 100)] {
        for _ in 0..n {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            // Refused at once over the cap: that's fine, the point is that nothing is held.
            let _ = stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .await;
            slow.push(stream);
        }
    }
    // Tasks keep completing meanwhile.
    for n in 0..20 {
        let id = platform
            .enqueue(DNS, "system.ping", Some("alice"), json!({"n": n}), None)
            .await;
        assert_completed(&platform.wait_end(&id, LONG).await);
    }
    // /healthz still answers while the slow clients hold their sockets.
    let (code, body) = common::eventually(
        "/healthz to answer",
        Duration::from_secs(20),
        || async move { get(metrics, "/healthz").await },
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // The server closed every slow connection (header timeout or cap).
    for stream in &mut slow {
        let mut buffer = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a slow connection is still held open");
    }

    // DNS queries are counted (not logged).
    dig(platform.dns, "ns.localhost", "A", &[]);
    let (_, text) = get(metrics, "/metrics").await.expect("metrics");
    assert!(
        text.contains("orchestrator_dns_queries_total{rcode=\"NOERROR\"}"),
        "{text}"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_listen_address_in_use_fails_the_start() {
    let redis = common::RedisServer::start();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let queues = common::worker::repo_path("queues");
    let config = common::worker::config(
        &redis.url(),
        &queues,
        &["--embedded-dns", "--dns-listen", &addr],
    );
    let err = match orchestrator::app::start_worker(std::sync::Arc::new(config)).await {
        Ok(worker) => {
            worker.stop().await;
            panic!("the worker started without its DNS server");
        }
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

/// A copy of the repository's templates whose team healthchecks run every `interval_s` seconds
/// through a shell (no URL the worker could probe directly: Docker's health status alone decides
/// readiness), so a provision waits in "Waiting for containers to become healthy" long enough to
/// freeze its worker there. The folder lives as long as the returned guard.
fn slow_health_templates(interval_s: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = common::docker::root().join("templates");
    let team = std::fs::read_to_string(root.join("team.yml")).unwrap();
    let slow = team
        .replace("interval: 1s", &format!("interval: {interval_s}s"))
        .replace(
            r#"test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]"#,
            r#"test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:80/"]"#,
        )
        .replace(
            r#"test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/api/health"]"#,
            r#"test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8000/api/health"]"#,
        );
    assert_eq!(
        slow.matches("CMD-SHELL").count(),
        2,
        "healthchecks replaced"
    );
    std::fs::write(dir.path().join("team.yml"), slow).unwrap();
    std::fs::copy(root.join("sandbox.yml"), dir.path().join("sandbox.yml")).unwrap();
    dir
}

/// Every `team:status` event published while it lives.
fn team_status_events(
    server: &common::RedisServer,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt;
    let client = server.client();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("team:status").await.unwrap();
        let _ = ready.send(());
        let mut stream = pubsub.on_message();
        while let Some(message) = stream.next().await {
            let payload: String = message.get_payload().unwrap();
            sink.lock()
                .unwrap()
                .push(serde_json::from_str(&payload).unwrap());
        }
    });
    tokio::task::block_in_place(|| subscribed.blocking_recv().unwrap());
    (seen, task)
}

/// A provision whose worker is frozen (SIGSTOP) past its lease while it waits for the containers'
/// health is re-claimed and completed by another worker. The frozen attempt, resumed once the live
/// one completed, learns it was superseded and stops: it neither rolls back what exists (the
/// containers it created and the newer attempt adopted), nor marks the team failed, nor finishes
/// the task a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_provision_never_removes_what_the_newer_attempt_built() {
    stalled_provision(5, Resume::AfterCompletion).await;
}

/// The same, the frozen attempt resumed while the newer attempt still waits for the health of the
/// containers it adopted: the journal then still lists them under the stale attempt's fence, and
/// a rollback would remove them from under the newer attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_provision_resumed_mid_takeover_removes_nothing() {
    stalled_provision(15, Resume::WhileLiveWaits).await;
}

/// When the frozen worker of [`stalled_provision`] is resumed.
#[derive(PartialEq)]
enum Resume {
    AfterCompletion,
    WhileLiveWaits,
}

/// Team healthchecks every `interval_s` s; worker "stale" (process, 2 s lease) is frozen in
/// "Waiting for containers", worker "live" (in this process) re-claims and completes the task,
/// the stale one is resumed per `resume`; everything the live attempt completed must be intact.
async fn stalled_provision(interval_s: u32, resume: Resume) {
    use common::tasks::{Events, assert_one_place, hash, wait_status};
    use common::worker::{WorkerProcess, repo_path};

    build_images();
    let slug = unique_slug("fence");
    let _cleanup = Cleanup::new(&[&slug]);
    let server = common::RedisServer::start();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let (team_events, _team_events_task) = team_status_events(&server);
    let templates = slow_health_templates(interval_s);
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();
    let (templates_dir, certs, account) = (
        templates.path().display().to_string(),
        path("certs"),
        path("acme/account.json"),
    );
    let queues = repo_path("queues");
    let shared = [
        ("TEMPLATES_DIR", templates_dir.as_str()),
        ("DOMAIN", "localhost"),
        ("INGRESS_CONTAINER", ""),
        ("HEALTH_TIMEOUT_S", "60"),
        ("CERTS_DIR", certs.as_str()),
        ("ACME_ACCOUNT_FILE", account.as_str()),
        ("RENEWAL_SCHEDULER", "false"),
        ("TRAEFIK_DYNAMIC_DIR", ""),
        ("WORKER_LEASE_S", "2"),
    ];
    let mut env = shared.to_vec();
    env.push(("WORKER_ID", "stale"));
    let stale = WorkerProcess::spawn(&server.url(), &queues, &env);

    let id = common::tasks::new_id();
    let body = json!({"id": id, "type": "team.provision", "user_id": "alice",
                      "payload": {"slug": slug}});
    common::tasks::push(&mut conn, PROVISIONING, &body.to_string()).await;
    // Freeze the stale worker while it waits for the health of the containers it created.
    let waiting = common::eventually("the stale worker to wait for health", LONG, || {
        let mut conn = conn.clone();
        let id = id.clone();
        async move {
            let h = hash(&mut conn, &id).await;
            (h.get("message")
                .is_some_and(|m| m.starts_with("Waiting for containers")))
            .then_some(h)
        }
    })
    .await;
    stale.signal("STOP");
    assert_eq!(waiting["worker"], "stale", "{waiting:#?}");
    assert_eq!(waiting["attempts"], "1", "{waiting:#?}");
    let built: Vec<serde_json::Value> = ["api", "web"]
        .iter()
        .map(|s| inspect(&format!("team-{slug}-{s}"))["Id"].clone())
        .collect();
    assert_eq!(
        inspect(&format!("team-{slug}-api"))["Config"]["Labels"]["orchestrator.attempt"],
        "1"
    );

    // Past the lease, a live worker re-claims the task and completes it (adopting the containers).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut flags: Vec<&str> = vec!["--worker-id", "live", "--lease-s", "2"];
    for (flag, value) in [
        ("--templates-dir", templates_dir.as_str()),
        ("--domain", "localhost"),
        ("--ingress-container", ""),
        ("--health-timeout-s", "60"),
        ("--certs-dir", certs.as_str()),
        ("--acme-account-file", account.as_str()),
        ("--renewal-scheduler", "false"),
    ] {
        flags.extend([flag, value]);
    }
    let live = common::worker::start(common::worker::config(&server.url(), &queues, &flags)).await;
    if resume == Resume::WhileLiveWaits {
        common::eventually("the live worker to wait for health", LONG, || {
            let mut conn = conn.clone();
            let id = id.clone();
            async move {
                let h = hash(&mut conn, &id).await;
                (h["worker"] == "live"
                    && h.get("message")
                        .is_some_and(|m| m.starts_with("Waiting for containers")))
                .then_some(())
            }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Still waiting (the first healthcheck is due `interval_s` after the containers started).
        assert_eq!(status(&hash(&mut conn, &id).await), "processing");
        stale.signal("CONT");
    }
    let done = wait_status(&mut conn, &id, "completed", Duration::from_secs(90)).await;
    assert_eq!(done["worker"], "live", "{done:#?}");
    assert_eq!(done["attempts"], "2", "{done:#?}");
    if resume == Resume::AfterCompletion {
        stale.signal("CONT");
    }
    // Long enough for the resumed stale attempt to run into its refusal.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The team the newer attempt completed is intact: the same containers, running and healthy,
    // its network, its record, its claim; nothing journaled is left to roll back.
    assert_team_running(&slug);
    let now: Vec<serde_json::Value> = ["api", "web"]
        .iter()
        .map(|s| inspect(&format!("team-{slug}-{s}"))["Id"].clone())
        .collect();
    assert_eq!(now, built, "the containers were replaced");
    assert_eq!(volumes_of(&slug), vec![format!("team-{slug}-data")]);
    let record: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("team:{slug}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(status(&record), "active", "{record:#?}");
    let owner: Option<String> = redis::cmd("HGET")
        .arg(format!("tenant:{slug}"))
        .arg("owner")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("alice"));
    let journals: Vec<String> = redis::cmd("KEYS")
        .arg("journal*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(journals.is_empty(), "{journals:?}");
    // Nobody announced the team failed; the last word about it is the live attempt's "active".
    let about: Vec<serde_json::Value> = team_events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["resource_id"] == slug.as_str())
        .cloned()
        .collect();
    assert!(about.iter().all(|e| e["status"] != "failed"), "{about:#?}");
    assert_eq!(
        about.last().map(|e| &e["status"]),
        Some(&json!("active")),
        "{about:#?}"
    );
    // The task: completed by the live worker, once, and in no queue.
    let end = hash(&mut conn, &id).await;
    assert_completed(&end);
    assert_eq!(end["worker"], "live", "{end:#?}");
    assert_eq!(events.completions(&id), 1, "{:#?}", events.of(&id));
    assert_one_place(&mut conn, std::slice::from_ref(&id)).await;

    let delete = common::tasks::new_id();
    let body = json!({"id": delete, "type": "team.delete", "user_id": "alice",
                      "payload": {"slug": slug, "purge_data": true}});
    common::tasks::push(&mut conn, PROVISIONING, &body.to_string()).await;
    wait_status(&mut conn, &delete, "completed", LONG).await;
    assert!(containers_of(&slug).is_empty());
    live.stop().await;
}
