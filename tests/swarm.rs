//! Teams on Docker Swarm (`BACKEND=swarm`) on a real single-node swarm the harness makes and leaves,
//! served through a real Traefik v3 with the swarm provider (a container of
//! `orchestrator/traefik:local` attached to each team's overlay network by the worker) over HTTPS
//! with the Pebble certificate; and start-first replacement on the docker backend through a host
//! Traefik. Every template change runs under a loop of requests that must all succeed.
//!
//! Needs what tests/traefik.rs needs (dockerd, redis-server, pebble, dig, curl, Traefik and its
//! image, which scripts/setup.sh installs and imports).

mod common;

use std::time::{Duration, Instant};

use common::docker::{build_images, containers_of, docker, root, unique_slug, volumes_of};
use common::eventually;
use common::journey::{PROVISIONING_HIGH, Stack, flags, tenant_payload};
use common::swarm::{
    Load, SwarmHold, SwarmTeam, Templates, inspect_service, services_of, two_web_tasks,
};
use common::traefik::{Curl, Traefik, curl_https};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a tenant task to completion; its result and how long it took.
async fn run(stack: &Stack, task_type: &str, slug: &str, extra: Value) -> (Value, Duration) {
    stack.run_tenant(task_type, slug, extra, TIMEOUT).await
}

/// Runs a task that must fail; its error.
async fn run_failing(stack: &Stack, task_type: &str, slug: &str) -> String {
    let id = stack
        .enqueue(
            PROVISIONING_HIGH,
            task_type,
            tenant_payload(slug, json!({})),
        )
        .await;
    let started = Instant::now();
    loop {
        let hash = stack.task_hash(&id).await;
        match hash.get("status").map(String::as_str) {
            Some("failed") => return hash.get("error").cloned().unwrap_or_default(),
            Some("completed") => panic!("task {id} completed, expected a failure: {hash:#?}"),
            _ => {}
        }
        assert!(started.elapsed() < TIMEOUT, "{hash:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts every answer of a load was a 200 from the team, and that some came from `version`.
fn all_answered(answers: &[Curl], version: &str) {
    assert!(answers.len() > 20, "too few requests: {}", answers.len());
    let failed: Vec<&Curl> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the change, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    assert!(
        answers.iter().any(|a| a.body.contains(version)),
        "no answer from {version}"
    );
}

/// The team template with a new version of the web page (a changed command: a new hash, the same
/// routing labels) and, when `route_change`, a changed routing label too.
fn version(source: String, v: &str, route_change: bool) -> String {
    let mut edited = source.replace(
        r#"echo "<h1>Team $TEAM_SLUG</h1>" > /www/index.html"#,
        &format!(r#"echo "<h1>Team $TEAM_SLUG</h1><p>{v}</p>" > /www/index.html"#),
    );
    if route_change {
        edited = edited.replace(
            r#""traefik.http.routers.{{ name }}.priority": "100""#,
            r#""traefik.http.routers.{{ name }}.priority": "101""#,
        );
    }
    edited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swarm_team_is_served_rolled_without_a_failed_request_suspended_resumed_and_deleted() {
    build_images();
    let _swarm = SwarmHold::take();
    let team = SwarmTeam::start("sw").await;
    let (slug, stack, templates, traefik) =
        (&team.slug, &team.stack, &team.templates, &team.traefik);
    let pebble_root = team.pebble_root();
    let host = team.host();
    // A second ingress, as a service labelled `orchestrator.role=ingress` (as in scripts/stack.yml):
    // the worker adds each team network to its task template.
    let ingress_service = IngressService::create(&format!("sw-ingress-svc-{}", std::process::id()));

    // Provisioned: served over HTTPS with the Pebble certificate as soon as the task completes.
    let (result, took) = run(stack, "team.provision", slug, json!({"certificate": true})).await;
    println!("swarm provision with certificate: {took:?}");
    let page = curl_https(traefik.https_port, &host, "/", Some(&pebble_root));
    assert_eq!(page.status, 200, "{page:?}\n{}", traefik.log());
    assert!(page.body.contains(&format!("Team {slug}")), "{page:?}");
    let api = curl_https(traefik.https_port, &host, "/api/health", Some(&pebble_root));
    assert_eq!((api.status, api.body.trim()), (200, "ok"), "{api:?}");
    assert_eq!(result["changed"], true, "{result:#}");
    for service in ["api", "web"] {
        let router = traefik
            .router(&format!("team-{slug}-{service}"))
            .unwrap_or_else(|| panic!("router {service}"));
        assert_eq!(router["status"], "enabled", "{router:#}");
    }

    // One service per template service: labels on the service spec, limits, restart policy,
    // health, the overlay network, replicas, start-first updates with automatic rollback, and the
    // stateful api pinned to the node of its volume.
    assert_eq!(
        services_of(slug),
        vec![format!("team-{slug}-api"), format!("team-{slug}-web")]
    );
    let api = inspect_service(&format!("team-{slug}-api"));
    let spec = &api["Spec"];
    let labels = &spec["Labels"];
    let r = format!("team-{slug}-api");
    assert_eq!(
        labels[format!("traefik.http.routers.{r}.rule")],
        format!("Host(`{host}`) && PathPrefix(`/api`)")
    );
    assert_eq!(
        labels[format!("traefik.http.services.{r}.loadbalancer.server.port")],
        "8000"
    );
    assert_eq!(labels["traefik.swarm.network"], format!("team-{slug}-net"));
    assert!(labels.get("traefik.docker.network").is_none(), "{labels:#}");
    assert_eq!(labels["orchestrator.managed-by"], "orchestrator");
    assert_eq!(labels["orchestrator.team"], slug.as_str());
    assert_eq!(
        labels["orchestrator.template-hash"],
        result["template_hash"]
    );
    assert!(labels["orchestrator.task"].is_string(), "{labels:#}");
    let task = &spec["TaskTemplate"];
    assert_eq!(task["Resources"]["Limits"]["MemoryBytes"], 64 * 1024 * 1024);
    assert_eq!(task["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
    assert_eq!(task["Resources"]["Limits"]["Pids"], 64);
    assert_eq!(task["RestartPolicy"]["Condition"], "any");
    assert!(task["ContainerSpec"]["Healthcheck"]["Test"].is_array());
    assert_eq!(
        task["ContainerSpec"]["Mounts"][0]["Source"],
        format!("team-{slug}-data")
    );
    assert!(
        task["Placement"]["Constraints"][0]
            .as_str()
            .unwrap()
            .starts_with("node.id=="),
        "{task:#}"
    );
    assert_eq!(spec["UpdateConfig"]["Order"], "start-first");
    assert_eq!(spec["UpdateConfig"]["FailureAction"], "rollback");
    assert_eq!(spec["RollbackConfig"]["Order"], "start-first");
    let web = inspect_service(&format!("team-{slug}-web"));
    assert_eq!(web["Spec"]["Mode"]["Replicated"]["Replicas"], 2);
    assert!(web["Spec"]["TaskTemplate"]["Placement"]["Constraints"].is_null());
    let network = common::docker::inspect(&format!("team-{slug}-net"));
    assert_eq!(
        (network["Driver"].as_str(), network["Scope"].as_str()),
        (Some("overlay"), Some("swarm"))
    );
    assert_eq!(network["Attachable"], true);
    assert!(
        ingress_service.attached_to(&format!("team-{slug}-net")),
        "the ingress service was not given the team network"
    );

    // The tasks' containers are never the docker backend's: `teams` shows the services, and no
    // owned container of the tenant exists for reconcile --fix to remove.
    let services = orchestrator::app::services(stack.config.clone())
        .await
        .unwrap();
    let engine = orchestrator::docker::Engine::connect(&stack.config.docker)
        .await
        .unwrap();
    assert!(
        engine
            .owned_containers(Some((orchestrator::templates::Kind::Team, slug)))
            .await
            .unwrap()
            .is_empty()
    );
    let rows = orchestrator::docker::teams::list(&engine, &services)
        .await
        .unwrap();
    let row = rows.iter().find(|r| r.slug == *slug).unwrap();
    assert_eq!(row.status, "active");
    assert!(row.containers.iter().all(|w| w.state == "running"), "{row}");
    let plan = orchestrator::docker::teams::plan(
        &engine,
        &services,
        orchestrator::templates::Kind::Team,
        slug,
    )
    .await
    .unwrap();
    assert!(!plan.changes(), "{plan}");

    // A template change rolls each service start-first: no request fails meanwhile.
    templates.team(|s| version(two_web_tasks(s), "v2", false));
    let load = Load::start(
        traefik.https_port,
        &host,
        &["/", "/api/health"],
        Some(pebble_root.clone()),
    );
    let (result, took) = run(stack, "team.provision", slug, json!({"certificate": true})).await;
    println!("swarm rolling update: {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = load.stop();
    all_answered(&answers, "v2");
    assert_eq!(result["changed"], true);
    let last = curl_https(traefik.https_port, &host, "/", Some(&pebble_root));
    assert!(last.body.contains("v2"), "{last:?}");

    // An update whose new tasks never turn healthy is rolled back by Swarm: the provision fails
    // saying so, the team keeps answering with its previous template, and the service (which the
    // failing task did not create) stays.
    templates.team(|s| {
        version(two_web_tasks(s), "v3", false)
            .replace("http://127.0.0.1:80/", "http://127.0.0.1:9/nothing")
    });
    let load = Load::start(traefik.https_port, &host, &["/"], Some(pebble_root.clone()));
    let error = run_failing(stack, "team.provision", slug).await;
    let answers = load.stop();
    assert!(error.contains("rolled it back"), "{error}");
    all_answered(&answers, "v2");
    assert_eq!(services_of(slug).len(), 2);
    eventually("the rollback to finish", Duration::from_secs(60), || {
        let state = inspect_service(&format!("team-{slug}-web"))["UpdateStatus"]["State"].clone();
        async move { (state == "rollback_completed").then_some(()) }
    })
    .await;
    let page = curl_https(traefik.https_port, &host, "/", Some(&pebble_root));
    assert!(page.body.contains("v2"), "{page:?}");
    // The operator puts the template that works back (resume probes the template's routes).
    templates.team(|s| version(two_web_tasks(s), "v2", false));

    // Drift: a service scaled down behind the worker's back is reported by reconcile; a provision
    // scales it back.
    let (_, ok) = docker(&["service", "scale", "-d", &format!("team-{slug}-web=0")]);
    assert!(ok);
    let report = orchestrator::docker::teams::reconcile(&engine, &services, false)
        .await
        .unwrap();
    let problem = format!("team-{slug}-web is scaled-down");
    assert!(
        report
            .drift
            .iter()
            .any(|d| d.slug == *slug && d.problem.contains(&problem)),
        "{report}"
    );
    run(stack, "team.provision", slug, json!({"certificate": true})).await;
    let report = orchestrator::docker::teams::reconcile(&engine, &services, false)
        .await
        .unwrap();
    assert!(!report.drift.iter().any(|d| d.slug == *slug), "{report}");

    // Suspend scales to 0 (the routes go), resume scales back (answering at once).
    run(stack, "team.suspend", slug, json!({})).await;
    let web = inspect_service(&format!("team-{slug}-web"));
    assert_eq!(web["Spec"]["Mode"]["Replicated"]["Replicas"], 0);
    eventually("the routes to go", Duration::from_secs(30), || {
        let status = curl_https(traefik.https_port, &host, "/", None).status;
        async move { (status == 404).then_some(()) }
    })
    .await;
    run(stack, "team.resume", slug, json!({})).await;
    let web = inspect_service(&format!("team-{slug}-web"));
    assert_eq!(web["Spec"]["Mode"]["Replicated"]["Replicas"], 2);
    let page = curl_https(traefik.https_port, &host, "/api/health", Some(&pebble_root));
    assert_eq!(page.status, 200, "{page:?}");

    // Restart replaces every task the same way, start-first: no request fails.
    let before = docker(&["service", "ps", "-q", &format!("team-{slug}-web")]).0;
    let load = Load::start(
        traefik.https_port,
        &host,
        &["/", "/api/health"],
        Some(pebble_root.clone()),
    );
    let (_, took) = run(stack, "team.restart", slug, json!({})).await;
    println!("swarm restart: {took:?}");
    eventually("new tasks", Duration::from_secs(60), || {
        let now = docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            &format!("team-{slug}-web"),
        ])
        .0;
        let replaced = !now.is_empty() && now.lines().all(|t| !before.contains(t));
        async move { replaced.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    all_answered(&load.stop(), "v2");

    // Delete removes the services and the network; the data volume stays without purge_data.
    let (result, _) = run(stack, "team.delete", slug, json!({})).await;
    assert_eq!(result["network_removed"], true, "{result:#}");
    assert!(services_of(slug).is_empty());
    // Swarm removes the node's copy of an overlay network a moment after the cluster's.
    eventually("the overlay network to go", Duration::from_secs(20), || {
        let gone = !docker(&["network", "inspect", &format!("team-{slug}-net")]).1;
        async move { gone.then_some(()) }
    })
    .await;
    assert!(!ingress_service.attached_to(&format!("team-{slug}-net")));
    assert_eq!(volumes_of(slug), vec![format!("team-{slug}-data")]);
    eventually(
        "the tasks' containers to go",
        Duration::from_secs(30),
        || {
            let left = containers_of(slug).is_empty()
                && docker(&["ps", "-aq", "--filter", &format!("name=team-{slug}-")])
                    .0
                    .is_empty();
            async move { left.then_some(()) }
        },
    )
    .await;
    let (result, _) = run(stack, "team.delete", slug, json!({"purge_data": true})).await;
    assert_eq!(
        result["volumes_removed"],
        json!([format!("team-{slug}-data")])
    );
    team.stop().await;
}

/// A stand-in ingress service labelled `orchestrator.role=ingress`, removed on drop.
struct IngressService {
    name: String,
}

impl IngressService {
    fn create(name: &str) -> Self {
        let _ = docker(&["service", "rm", name]);
        let (out, ok) = docker(&[
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--label",
            "orchestrator.role=ingress",
            "--update-order",
            "start-first",
            "kanban/team-web:latest",
            "sh",
            "-c",
            "exec httpd -f -p 80 -h /tmp",
        ]);
        assert!(ok, "{out}");
        Self {
            name: name.to_string(),
        }
    }

    /// Whether its task template names `network` (by name or id).
    fn attached_to(&self, network: &str) -> bool {
        let id = docker(&["network", "inspect", "-f", "{{.Id}}", network]).0;
        let spec = inspect_service(&self.name);
        spec["Spec"]["TaskTemplate"]["Networks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["Target"] == network || (!id.is_empty() && n["Target"] == id.as_str()))
    }
}

impl Drop for IngressService {
    fn drop(&mut self) {
        let _ = docker(&["service", "rm", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_docker_team_changes_template_start_first_without_a_failed_request() {
    build_images();
    let prefix = format!("ds-{}-", std::process::id() % 100_000);
    let slug = unique_slug("ds");
    let _cleanup = common::docker::Cleanup::new(&[&slug]);
    let (dir, dynamic) = Traefik::prepare();
    let traefik = Traefik::start(dir, dynamic.clone(), &prefix);
    let templates = Templates::copy();
    let stack = Stack::start_with(
        false,
        &flags(&[
            ("--templates-dir", templates.path().display().to_string()),
            ("--certs-dir", dynamic.display().to_string()),
            (
                "--traefik-dynamic-dir",
                root().join("traefik/dynamic").display().to_string(),
            ),
            ("--ingress-probe-url", traefik.probe_url()),
        ]),
    )
    .await;
    let host = format!("{slug}.localhost");
    let (_, took) = run(&stack, "team.provision", &slug, json!({})).await;
    println!("docker provision: {took:?}");
    assert_eq!(traefik.curl(&host, "/", None).status, 200);

    // Same routing labels: the new container joins the old one's Traefik service, then the old
    // one is drained (unhealthy, so Traefik skips it) and removed.
    templates.team(|s| version(s, "v2", false));
    let load = Load::start(traefik.https_port, &host, &["/", "/api/health"], None);
    let (result, took) = run(&stack, "team.provision", &slug, json!({})).await;
    println!("docker start-first replacement: {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    all_answered(&load.stop(), "v2");
    assert_eq!(result["changed"], true);
    assert_eq!(
        containers_of(&slug),
        vec![format!("team-{slug}-api"), format!("team-{slug}-web")]
    );

    // Changed routing labels: through a transitional container with routers of its own (two
    // containers defining one router differently would both be dropped by Traefik).
    templates.team(|s| version(s, "v3", true));
    let load = Load::start(traefik.https_port, &host, &["/", "/api/health"], None);
    let (_, took) = run(&stack, "team.provision", &slug, json!({})).await;
    println!("docker start-first replacement, routing changed: {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    all_answered(&load.stop(), "v3");
    assert_eq!(
        containers_of(&slug),
        vec![format!("team-{slug}-api"), format!("team-{slug}-web")]
    );
    let router = traefik.router(&format!("team-{slug}-web")).unwrap();
    assert_eq!(router["priority"], 101, "{router:#}");
    assert!(traefik.router(&format!("team-{slug}-web-next")).is_none());
    run(&stack, "team.delete", &slug, json!({})).await;
    stack.stop().await;
}

#[test]
fn the_stack_file_matches_the_compose_stack() {
    let read = |path: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
    };
    let compose = read("docker-compose.yml");
    let stack = read("scripts/stack.yml");
    // `docker stack deploy` reads the compose format: docker-compose validates it.
    let out = std::process::Command::new("docker-compose")
        .args(["-f", "scripts/stack.yml", "config", "-q"])
        .current_dir(root())
        .output()
        .expect("run docker-compose");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same services.
    let names = |doc: &serde_yaml_ng::Value| -> Vec<String> {
        let mut v: Vec<String> = doc["services"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&compose), names(&stack));
    // Every orchestrator variable compose sets, the stack sets; tenants on Swarm.
    let env = &stack["services"]["orchestrator"]["environment"];
    for (key, value) in compose["services"]["orchestrator"]["environment"]
        .as_mapping()
        .unwrap()
    {
        if !value.is_null() {
            assert!(env.get(key).is_some(), "stack lacks {key:?}");
        }
    }
    assert_eq!(env["BACKEND"], "swarm");
    assert_eq!(env["INGRESS_CONTAINER"], "platform_traefik");
    // Traefik: the swarm provider, refreshed every second (see README, Scaling out), found by label.
    let traefik = &stack["services"]["traefik"];
    let command: Vec<&str> = traefik["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(command.contains(&"--providers.swarm.refreshSeconds=1"));
    assert!(!command.iter().any(|c| c.starts_with("--providers.docker")));
    let labels = format!("{:?}", traefik["deploy"]["labels"]);
    assert!(labels.contains("orchestrator.role=ingress"), "{labels}");
    assert_eq!(stack["networks"]["kanban-network"]["driver"], "overlay");
    assert_eq!(stack["networks"]["kanban-network"]["attachable"], true);
}
