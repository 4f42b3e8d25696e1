//! Team and sandbox provisioning against the real Docker engine and a real Redis: labels, limits,
//! networks, HTTP answers, isolation between teams, convergence, rollback on every kind of failure,
//! lifecycle, slug validation before any engine call, reconcile and plan.

mod common;

use std::time::Duration;

use common::RedisServer;
use common::docker::{
    Cleanup, build_images, config, containers_of, docker, http_get, inspect, ip_on, networks_of,
    run, services, unique_slug, volumes_of,
};
use orchestrator::docker::Engine;
use orchestrator::docker::teams;
use orchestrator::task::TaskError;
use orchestrator::templates::Kind;
use serde_json::json;

/// `reconcile --fix` removes every owned container Redis does not record, other tests' included:
/// it runs alone (write lock), every other engine test shares the read lock.
static ENGINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn record(redis: &RedisServer, key: &str) -> std::collections::HashMap<String, String> {
    let mut conn = redis.conn().await;
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_teams_get_labelled_limited_isolated_containers_and_converge() {
    let _engine = ENGINE.read().await;
    build_images();
    let a = unique_slug("ta");
    let b = unique_slug("tb");
    let _cleanup = Cleanup::new(&[&a, &b]);
    let redis = RedisServer::start();
    let services = services(&redis.url(), config(&[]));

    let first_a = run(&services, "team.provision", json!({"slug": a}))
        .await
        .unwrap();
    run(&services, "team.provision", json!({"slug": b}))
        .await
        .unwrap();
    assert_eq!(first_a["changed"], true);
    assert_eq!(first_a["subdomain"], format!("{a}.test.localhost"));

    // Exact labels, limits, restart policy and network.
    let api = inspect(&format!("team-{a}-api"));
    let labels = &api["Config"]["Labels"];
    let r = format!("team-{a}-api");
    assert_eq!(labels["traefik.enable"], "true");
    assert_eq!(
        labels[format!("traefik.http.routers.{r}.rule")],
        format!("Host(`{a}.test.localhost`) && PathPrefix(`/api`)")
    );
    assert_eq!(
        labels[format!("traefik.http.routers.{r}.entrypoints")],
        "websecure"
    );
    // One issuer per host: the orchestrator issues (CERT_ISSUER default), so no resolver; TLS on,
    // HSTS and rate limit attached.
    assert!(labels[format!("traefik.http.routers.{r}.tls.certresolver")].is_null());
    assert_eq!(labels[format!("traefik.http.routers.{r}.tls")], "true");
    assert_eq!(
        labels[format!("traefik.http.routers.{r}.middlewares")],
        "secure-headers@file,rate-limit@file"
    );
    assert_eq!(labels[format!("traefik.http.routers.{r}.priority")], "200");
    assert_eq!(
        labels[format!("traefik.http.services.{r}.loadbalancer.server.port")],
        "8000"
    );
    assert_eq!(labels["traefik.docker.network"], format!("team-{a}-net"));
    assert_eq!(labels["orchestrator.managed-by"], "orchestrator");
    assert_eq!(labels["orchestrator.team"], a.as_str());
    assert_eq!(
        labels["orchestrator.template-hash"],
        first_a["template_hash"]
    );
    let host = &api["HostConfig"];
    assert_eq!(host["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(host["Memory"], 64 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["PidsLimit"], 64);
    assert_eq!(host["NetworkMode"], format!("team-{a}-net"));
    assert_eq!(host["Binds"][0], format!("team-{a}-data:/data"));
    let web = inspect(&format!("team-{a}-web"));
    let w = format!("team-{a}-web");
    assert_eq!(
        web["Config"]["Labels"][format!("traefik.http.routers.{w}.rule")],
        format!("Host(`{a}.test.localhost`)")
    );
    assert_eq!(
        web["Config"]["Labels"][format!("traefik.http.routers.{w}.priority")],
        "100"
    );
    // Ready is probed directly (faster than the healthcheck interval): never unhealthy, answering.
    assert_ne!(web["State"]["Health"]["Status"], "unhealthy");
    let ip = common::docker::ip_on(&w, &format!("team-{a}-net"));
    assert!(common::docker::http_get(&format!("{ip}:80"), "/").is_some());
    assert_eq!(networks_of(&a), vec![format!("team-{a}-net")]);
    assert_eq!(volumes_of(&a), vec![format!("team-{a}-data")]);

    // HTTP to each container's address.
    for slug in [&a, &b] {
        let net = format!("team-{slug}-net");
        let api_ip = ip_on(&format!("team-{slug}-api"), &net);
        let web_ip = ip_on(&format!("team-{slug}-web"), &net);
        let health = http_get(&format!("{api_ip}:8000"), "/api/health").expect("api health");
        assert_eq!(health.trim(), "ok");
        let page = http_get(&format!("{web_ip}:80"), "/").expect("web page");
        assert!(page.contains(&format!("Team {slug}")), "{page}");
    }

    // Team A cannot reach team B; A's web reaches A's api by its service alias.
    let b_web = ip_on(&format!("team-{b}-web"), &format!("team-{b}-net"));
    let (_, reached) = docker(&[
        "exec",
        &format!("team-{a}-api"),
        "timeout",
        "3",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{b_web}:80/"),
    ]);
    assert!(!reached, "team A reached team B");
    let (own, ok) = docker(&[
        "exec",
        &format!("team-{a}-web"),
        "timeout",
        "3",
        "wget",
        "-q",
        "-O",
        "-",
        "http://api:8000/api/health",
    ]);
    assert!(
        ok && own.trim() == "ok",
        "team A's web cannot reach its own api"
    );

    // Redis says what exists.
    let rec = record(&redis, &format!("team:{a}")).await;
    assert_eq!(rec["status"], "active");
    assert_eq!(rec["network"], format!("team-{a}-net"));
    assert_eq!(
        rec["template_hash"],
        first_a["template_hash"].as_str().unwrap()
    );
    assert!(rec["containers"].contains(&format!("team-{a}-api")));

    // Re-provision is a no-op.
    let id_before = inspect(&format!("team-{a}-api"))["Id"].clone();
    let again = run(&services, "team.provision", json!({"slug": a}))
        .await
        .unwrap();
    assert_eq!(again["changed"], false);
    assert_eq!(inspect(&format!("team-{a}-api"))["Id"], id_before);
    assert_eq!(containers_of(&a).len(), 2);

    // Plan of a converged team changes nothing.
    let engine = Engine::connect(&services.config.docker).await.unwrap();
    let plan = teams::plan(&engine, &services, Kind::Team, &a)
        .await
        .unwrap();
    assert!(!plan.changes(), "{plan}");

    // Suspend, resume, restart.
    run(&services, "team.suspend", json!({"slug": a}))
        .await
        .unwrap();
    assert_eq!(inspect(&format!("team-{a}-api"))["State"]["Running"], false);
    assert_eq!(
        record(&redis, &format!("team:{a}")).await["status"],
        "suspended"
    );
    run(&services, "team.resume", json!({"slug": a}))
        .await
        .unwrap();
    assert_eq!(inspect(&format!("team-{a}-api"))["State"]["Running"], true);
    run(&services, "team.restart", json!({"slug": a}))
        .await
        .unwrap();
    assert_eq!(
        record(&redis, &format!("team:{a}")).await["status"],
        "active"
    );

    // Delete leaves no container and no network; the volume only goes with purge_data.
    for slug in [&a, &b] {
        run(&services, "team.delete", json!({"slug": slug}))
            .await
            .unwrap();
        assert!(containers_of(slug).is_empty());
        assert!(networks_of(slug).is_empty());
        assert_eq!(volumes_of(slug).len(), 1);
        run(
            &services,
            "team.delete",
            json!({"slug": slug, "purge_data": true}),
        )
        .await
        .unwrap();
        assert!(volumes_of(slug).is_empty());
        assert!(record(&redis, &format!("team:{slug}")).await.is_empty());
    }
}

fn assert_nothing_left(slug: &str) {
    assert!(
        containers_of(slug).is_empty(),
        "containers left: {:?}",
        containers_of(slug)
    );
    assert!(
        networks_of(slug).is_empty(),
        "networks left: {:?}",
        networks_of(slug)
    );
    assert!(
        volumes_of(slug).is_empty(),
        "volumes left: {:?}",
        volumes_of(slug)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_rolls_back_and_names_the_image() {
    let _engine = ENGINE.read().await;
    build_images();
    let slug = unique_slug("tm");
    let _cleanup = Cleanup::new(&[&slug]);
    let redis = RedisServer::start();
    let services = services(
        &redis.url(),
        config(&["--team-web-image", "kanban/no-such-image:latest"]),
    );
    let err = run(&services, "team.provision", json!({"slug": slug}))
        .await
        .unwrap_err();
    assert!(matches!(err, TaskError::Failed(_)), "{err:?}");
    assert!(
        err.to_string().contains("kanban/no-such-image:latest"),
        "{err}"
    );
    assert_nothing_left(&slug);
    assert!(record(&redis, &format!("team:{slug}")).await.is_empty());
}

/// A templates folder whose web healthcheck always fails.
fn failing_templates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let team = std::fs::read_to_string(common::docker::root().join("templates/team.yml")).unwrap();
    let team = team.replace("http://127.0.0.1:80/", "http://127.0.0.1:9/nothing");
    assert!(team.contains("127.0.0.1:9/nothing"));
    std::fs::write(dir.path().join("team.yml"), team).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_container_rolls_back() {
    let _engine = ENGINE.read().await;
    build_images();
    let slug = unique_slug("tu");
    let _cleanup = Cleanup::new(&[&slug]);
    let redis = RedisServer::start();
    let templates = failing_templates();
    let dir = templates.path().display().to_string();
    let services = services(&redis.url(), config(&["--templates-dir", &dir]));
    let err = run(&services, "team.provision", json!({"slug": slug}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unhealthy"), "{err}");
    assert!(
        err.to_string().contains(&format!("team-{slug}-web")),
        "{err}"
    );
    assert_nothing_left(&slug);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_killed_mid_provision_rolls_back() {
    let _engine = ENGINE.read().await;
    build_images();
    let slug = unique_slug("tk");
    let _cleanup = Cleanup::new(&[&slug]);
    let redis = RedisServer::start();
    // A slow healthcheck leaves time to kill the container while the provision waits.
    let (_templates, services) = slow_health_services(&redis);
    let name = format!("team-{slug}-web");
    let killer = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let (out, _) = docker(&["inspect", "-f", "{{.State.Running}}", &name]);
            if out == "true" {
                return docker(&["kill", &name]).1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let err = run(&services, "team.provision", json!({"slug": slug}))
        .await
        .unwrap_err();
    assert!(killer.await.unwrap(), "the container was never killed");
    assert!(
        err.to_string().contains(&format!("team-{slug}-web")),
        "{err}"
    );
    assert_nothing_left(&slug);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_slugs_are_refused_before_any_docker_call() {
    let redis = RedisServer::start();
    // An engine address that cannot work: a Docker call would fail with a connection error instead.
    let services = services(
        &redis.url(),
        config(&["--docker-host", "unix:///nonexistent/docker.sock"]),
    );
    let long = "a".repeat(64);
    for bad in [
        "a`b",
        "a||b",
        "a.b",
        "Team",
        long.as_str(),
        "-lead",
        "a`) || Host(`evil",
    ] {
        for t in [
            "team.provision",
            "team.delete",
            "team.suspend",
            "sandbox.provision",
        ] {
            let err = run(&services, t, json!({"slug": bad})).await.unwrap_err();
            assert!(matches!(err, TaskError::Invalid(_)), "{t} {bad:?}: {err:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_template_replaces_and_redelivery_adopts_without_duplicates() {
    let _engine = ENGINE.read().await;
    build_images();
    let slug = unique_slug("tc");
    let _cleanup = Cleanup::new(&[&slug]);
    let redis = RedisServer::start();
    let services1 = services(&redis.url(), config(&[]));
    let first = run(&services1, "team.provision", json!({"slug": slug}))
        .await
        .unwrap();
    let id1 = inspect(&format!("team-{slug}-api"))["Id"].clone();

    // A crash after the containers were made but before Redis recorded them: the re-delivered task
    // finds them by name + label and finishes without duplicates.
    let mut conn = redis.conn().await;
    redis::cmd("DEL")
        .arg(format!("team:{slug}"))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let again = run(&services1, "team.provision", json!({"slug": slug}))
        .await
        .unwrap();
    assert_eq!(again["changed"], false);
    assert_eq!(inspect(&format!("team-{slug}-api"))["Id"], id1);
    assert_eq!(containers_of(&slug).len(), 2);

    // A different template (more memory) gives a different hash: the containers are replaced.
    let dir = tempfile::tempdir().unwrap();
    let team = std::fs::read_to_string(common::docker::root().join("templates/team.yml")).unwrap();
    std::fs::write(
        dir.path().join("team.yml"),
        team.replace("mem_limit: 64m", "mem_limit: 96m"),
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let services2 = services(&redis.url(), config(&["--templates-dir", &path]));
    let engine = Engine::connect(&services2.config.docker).await.unwrap();
    let plan = teams::plan(&engine, &services2, Kind::Team, &slug)
        .await
        .unwrap();
    assert!(plan.to_string().contains("replace"), "{plan}");
    let replaced = run(&services2, "team.provision", json!({"slug": slug}))
        .await
        .unwrap();
    assert_eq!(replaced["changed"], true);
    assert_ne!(replaced["template_hash"], first["template_hash"]);
    let api = inspect(&format!("team-{slug}-api"));
    assert_ne!(api["Id"], id1);
    assert_eq!(api["HostConfig"]["Memory"], 96 * 1024 * 1024);
    assert_eq!(
        api["Config"]["Labels"]["orchestrator.template-hash"],
        replaced["template_hash"]
    );
    assert_eq!(containers_of(&slug).len(), 2);
    run(
        &services2,
        "team.delete",
        json!({"slug": slug, "purge_data": true}),
    )
    .await
    .unwrap();
    assert_nothing_left(&slug);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_is_connected_to_each_team_network_and_reaches_the_team() {
    let _engine = ENGINE.read().await;
    build_images();
    let slug = unique_slug("ti");
    let ingress = format!("ingress-{slug}");
    let mut cleanup = Cleanup::new(&[&slug]);
    cleanup.extra_containers.push(ingress.clone());
    let (_, ok) = docker(&[
        "run",
        "-d",
        "--name",
        &ingress,
        "kanban/team-web:latest",
        "sleep",
        "600",
    ]);
    assert!(ok, "start the stand-in ingress");
    let redis = RedisServer::start();
    let services = services(&redis.url(), config(&["--ingress-container", &ingress]));
    run(&services, "team.provision", json!({"slug": slug}))
        .await
        .unwrap();
    let net = format!("team-{slug}-net");
    let networks = inspect(&ingress)["NetworkSettings"]["Networks"].clone();
    assert!(networks.get(&net).is_some(), "{networks}");
    let web_ip = ip_on(&format!("team-{slug}-web"), &net);
    let (page, ok) = docker(&[
        "exec",
        &ingress,
        "timeout",
        "3",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{web_ip}:80/"),
    ]);
    assert!(ok && page.contains(&format!("Team {slug}")), "{page}");
    run(
        &services,
        "team.delete",
        json!({"slug": slug, "purge_data": true}),
    )
    .await
    .unwrap();
    let networks = inspect(&ingress)["NetworkSettings"]["Networks"].clone();
    assert!(networks.get(&net).is_none(), "{networks}");
    assert_nothing_left(&slug);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_provision_and_delete() {
    let _engine = ENGINE.read().await;
    build_images();
    let slug = unique_slug("sb");
    let _cleanup = Cleanup::new(&[&slug]);
    let redis = RedisServer::start();
    let services = services(&redis.url(), config(&[]));
    let result = run(&services, "sandbox.provision", json!({"slug": slug}))
        .await
        .unwrap();
    assert_eq!(containers_of(&slug), vec![format!("sandbox-{slug}-api")]);
    let labels = inspect(&format!("sandbox-{slug}-api"))["Config"]["Labels"].clone();
    assert_eq!(
        labels[format!("traefik.http.routers.sandbox-{slug}-api.rule")],
        format!("Host(`{slug}.test.localhost`) && PathPrefix(`/api`)")
    );
    assert_eq!(labels["orchestrator.sandbox"], slug.as_str());
    assert_eq!(result["network"], format!("sandbox-{slug}-net"));
    assert_eq!(
        record(&redis, &format!("sandbox:{slug}")).await["status"],
        "active"
    );
    run(
        &services,
        "sandbox.delete",
        json!({"slug": slug, "purge_data": true}),
    )
    .await
    .unwrap();
    assert_nothing_left(&slug);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_and_repairs_drift() {
    let _engine = ENGINE.write().await;
    build_images();
    let slug = unique_slug("tr");
    let orphan = unique_slug("to");
    let _cleanup = Cleanup::new(&[&slug, &orphan]);
    let redis = RedisServer::start();
    let services = services(&redis.url(), config(&[]));
    run(&services, "team.provision", json!({"slug": slug}))
        .await
        .unwrap();
    run(&services, "team.provision", json!({"slug": orphan}))
        .await
        .unwrap();
    // Drift: a container of a recorded team is gone; another team is no longer recorded.
    docker(&["rm", "-f", &format!("team-{slug}-web")]);
    let mut conn = redis.conn().await;
    redis::pipe()
        .cmd("DEL")
        .arg(format!("team:{orphan}"))
        .cmd("SREM")
        .arg("teams")
        .arg(&orphan)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let engine = Engine::connect(&services.config.docker).await.unwrap();
    let rows = teams::list(&engine, &services).await.unwrap();
    let mine = rows.iter().find(|r| r.slug == slug).unwrap();
    assert_eq!(mine.containers.len(), 1);
    let report = teams::reconcile(&engine, &services, false).await.unwrap();
    let text = report.to_string();
    assert!(text.contains(&format!("team-{slug}-web missing")), "{text}");
    assert!(text.contains(&orphan), "{text}");
    assert_eq!(
        containers_of(&slug).len(),
        1,
        "a dry reconcile changed something"
    );

    let fixed = teams::reconcile(&engine, &services, true).await.unwrap();
    assert!(fixed.is_clean(), "{fixed}");
    assert_eq!(containers_of(&slug).len(), 2);
    assert!(containers_of(&orphan).is_empty());
    let again = teams::reconcile(&engine, &services, false).await.unwrap();
    assert!(
        again
            .drift
            .iter()
            .all(|d| d.slug != slug && d.slug != orphan),
        "{again}"
    );
    run(
        &services,
        "team.delete",
        json!({"slug": slug, "purge_data": true}),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_mid_provision_rolls_back() {
    let _engine = ENGINE.read().await;
    build_images();
    let slug = unique_slug("tx");
    let _cleanup = Cleanup::new(&[&slug]);
    let redis = RedisServer::start();
    let (_templates, services) = slow_health_services(&redis);
    let registry = orchestrator::handlers::registry(&services);
    let handler = registry.get("team.provision").unwrap().clone();
    let task = common::docker::task("team.provision", json!({"slug": slug}));
    let ctx = std::sync::Arc::new(orchestrator::context::TaskContext::new(
        task,
        1,
        handler.total_steps(&common::docker::task("team.provision", json!({}))),
        "test-worker".into(),
        services.clone(),
    ));
    let running = {
        let ctx = ctx.clone();
        tokio::spawn(async move { handler.run(&ctx).await })
    };
    let web = format!("team-{slug}-web");
    common::eventually("the web container to run", Duration::from_secs(30), || {
        let web = web.clone();
        async move { (docker(&["inspect", "-f", "{{.State.Running}}", &web]).0 == "true").then_some(()) }
    })
    .await;
    ctx.cancel("cancelled by the test").await;
    let err = running.await.unwrap().unwrap_err();
    assert!(matches!(err, TaskError::Cancelled(_)), "{err:?}");
    assert_nothing_left(&slug);
    assert!(record(&redis, &format!("team:{slug}")).await.is_empty());
}

/// Services whose team template checks health every 5 s instead of every 1 s, leaving time to act
/// while a provision waits for health. The folder lives as long as the returned guard.
fn slow_health_services(
    redis: &RedisServer,
) -> (
    tempfile::TempDir,
    std::sync::Arc<orchestrator::services::Services>,
) {
    let dir = tempfile::tempdir().unwrap();
    let team = std::fs::read_to_string(common::docker::root().join("templates/team.yml")).unwrap();
    std::fs::write(
        dir.path().join("team.yml"),
        // A shell healthcheck names no URL the worker could ask directly: Docker's health status
        // (every 5 s) alone decides readiness, leaving time to act while the provision waits.
        team.replace("interval: 1s", "interval: 5s").replace(
            r#"test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]"#,
            r#"test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:80/"]"#,
        ),
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let services = services(&redis.url(), config(&["--templates-dir", &path]));
    (dir, services)
}
