//! `team.provision` wall time against the raw Docker API doing the same work (network, volume, two
//! containers created, started and waited on until healthy), then 20 teams with concurrency 4, and
//! the peak RSS of the process. Needs dockerd and redis-server; run with `cargo bench --bench provision`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use common::RedisServer;
use common::docker::{Cleanup, build_images, config, run, services, unique_slug};
use futures::StreamExt;
use orchestrator::docker::Engine;
use orchestrator::docker::containers::container_body;
use orchestrator::templates::{self, Kind};
use serde_json::json;

const ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The same two containers straight through bollard: network, volume, create, start, poll health.
async fn raw(engine: &Engine, cfg: &orchestrator::config::Config, slug: &str) -> Duration {
    let docker = engine.client();
    let rendered = templates::render(cfg, Kind::Team, slug).unwrap();
    let start = Instant::now();
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
                labels: Some(
                    rendered
                        .ownership_labels()
                        .into_iter()
                        .collect::<HashMap<_, _>>(),
                ),
                ..Default::default()
            })
            .await
            .unwrap();
    }
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
    loop {
        let mut healthy = 0;
        for id in &ids {
            let state = docker
                .inspect_container(id, None)
                .await
                .unwrap()
                .state
                .unwrap();
            if state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .as_deref()
                == Some("healthy")
            {
                healthy += 1;
            }
        }
        if healthy == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = start.elapsed();
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    for id in &ids {
        docker
            .remove_container(id, Some(remove.clone()))
            .await
            .unwrap();
    }
    docker.remove_network(&rendered.network).await.unwrap();
    for v in &rendered.volumes {
        docker
            .remove_volume(v, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
            .unwrap();
    }
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    build_images();
    let redis = RedisServer::start();
    let services = services(&redis.url(), config(&[]));
    let engine = Engine::connect(&services.config.docker).await.unwrap();

    let mut slugs = Vec::new();
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    for round in 0..ROUNDS {
        let slug = unique_slug(&format!("bp{round}"));
        slugs.push(slug.clone());
        let _guard = Cleanup::new(&[&slug]);
        let t = Instant::now();
        run(&services, "team.provision", json!({"slug": slug}))
            .await
            .unwrap();
        ours.push(t.elapsed());
        run(
            &services,
            "team.delete",
            json!({"slug": slug, "purge_data": true}),
        )
        .await
        .unwrap();

        let raw_slug = unique_slug(&format!("br{round}"));
        let _guard = Cleanup::new(&[&raw_slug]);
        baseline.push(raw(&engine, &services.config, &raw_slug).await);
    }
    let (ours_m, raw_m) = (median(ours.clone()), median(baseline.clone()));
    println!("team.provision (2 containers, healthy), median of {ROUNDS}:");
    println!(
        "  orchestrator team.provision  {:>8.0} ms   runs {:?}",
        ours_m.as_secs_f64() * 1e3,
        ours
    );
    println!(
        "  raw Docker API, same work    {:>8.0} ms   runs {:?}",
        raw_m.as_secs_f64() * 1e3,
        baseline
    );
    println!(
        "  ratio                        {:>8.2}x  (target <= 1.2x)",
        ours_m.as_secs_f64() / raw_m.as_secs_f64()
    );

    // 20 teams, 4 at a time.
    let many: Vec<String> = (0..20).map(|i| unique_slug(&format!("bm{i}"))).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let _guard = Cleanup::new(&refs);
    let t = Instant::now();
    let services2 = Arc::clone(&services);
    let results: Vec<_> = futures::stream::iter(many.clone())
        .map(|slug| {
            let services = services2.clone();
            async move {
                run(&services, "team.provision", json!({"slug": slug}))
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let elapsed = t.elapsed();
    let ok = results.iter().filter(|r| **r).count();
    println!(
        "20 teams, concurrency 4: {ok}/20 provisioned in {:.1} s ({:.0} ms per team, {:.2} teams/s)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / 20.0,
        20.0 / elapsed.as_secs_f64()
    );
    let t = Instant::now();
    futures::stream::iter(many.clone())
        .map(|slug| {
            let services = services2.clone();
            async move {
                run(
                    &services,
                    "team.delete",
                    json!({"slug": slug, "purge_data": true}),
                )
                .await
                .is_ok()
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    println!(
        "20 teams deleted, concurrency 4: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    println!("peak RSS of the process: {} MiB", peak_rss_kib() / 1024);
}
