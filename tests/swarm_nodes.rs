//! A team's replicas on two Swarm nodes of this machine, served through one Traefik: the shared
//! dockerd is the manager, a second dockerd in a network namespace of its own (its own data root,
//! exec root and socket, joined by a veth pair) the worker (`common::swarm::TwoNodes`). A test
//! binary of its own: the swarm here is advertised on the veth address, not on 127.0.0.1 as in
//! tests/swarm.rs, so the two never share one. Needs root (`ip netns`, `nsenter`), as the rest of
//! the suite's set-up does.

mod common;

use std::time::Duration;

use common::docker::build_images;
use common::journey::Stack;
use common::swarm::{Load, SwarmTeam, TwoNodes};
use common::traefik::curl_https;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a tenant task to completion; its result and how long it took.
async fn run(stack: &Stack, task_type: &str, slug: &str, extra: Value) -> (Value, Duration) {
    stack.run_tenant(task_type, slug, extra, TIMEOUT).await
}

/// (node id, address on `network`) of each running task of service `name`.
fn tasks(name: &str, network: &str) -> Vec<(String, String)> {
    let (ids, _) = common::docker::docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        name,
    ]);
    ids.lines()
        .map(|id| {
            let task = common::docker::inspect(id);
            let address = task["NetworksAttachments"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["Network"]["Spec"]["Name"] == network)
                .and_then(|a| a["Addresses"][0].as_str())
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (
                task["NodeID"].as_str().unwrap_or_default().to_string(),
                address,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_teams_replicas_on_two_nodes_are_served_through_one_traefik() {
    build_images();
    let Some(nodes) = TwoNodes::start() else {
        return;
    };
    let team = SwarmTeam::start("sn").await;
    let (slug, stack, traefik) = (&team.slug, &team.stack, &team.traefik);
    let pebble_root = team.pebble_root();
    let host = team.host();
    let (_, took) = run(stack, "team.provision", slug, json!({"certificate": true})).await;
    println!("two-node swarm provision with certificate: {took:?}");

    // The web service's two tasks run on both nodes (Swarm spreads a service's tasks); the
    // stateful api stays on the manager, where its volume is.
    let network = format!("team-{slug}-net");
    let web = tasks(&format!("team-{slug}-web"), &network);
    assert_eq!(web.len(), 2, "{web:?}");
    assert!(
        web.iter().any(|(node, _)| node == &nodes.worker_id),
        "no web task on the second node: {web:?}"
    );
    assert!(
        web.iter().any(|(node, _)| node != &nodes.worker_id),
        "no web task on the manager: {web:?}"
    );
    let api = tasks(&format!("team-{slug}-api"), &network);
    assert!(
        api.iter().all(|(node, _)| node != &nodes.worker_id),
        "{api:?}"
    );

    // Traefik (on the manager) balances over both tasks' overlay addresses, the second node's
    // included, and every request in a loop answers over HTTPS with the Pebble certificate.
    let servers = common::docker::http_get(
        &format!("127.0.0.1:{}", traefik.api_port),
        &format!("/api/http/services/team-{slug}-web@swarm"),
    )
    .unwrap_or_default();
    for (_, address) in &web {
        assert!(
            !address.is_empty() && servers.contains(address.as_str()),
            "{servers}"
        );
    }
    let load = Load::start(
        traefik.https_port,
        &host,
        &["/", "/api/health"],
        Some(pebble_root.clone()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = load.stop();
    let failed: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(answers.len() > 20 && failed.is_empty(), "{failed:?}");
    let page = curl_https(traefik.https_port, &host, "/", Some(&pebble_root));
    assert!(page.body.contains(&format!("Team {slug}")), "{page:?}");

    run(stack, "team.delete", slug, json!({"purge_data": true})).await;
    team.stop().await;
}
