//! Docker harness: the real engine (dockerd), the local team images, a [`Services`] wired to a
//! test Redis, and a drop guard that removes everything the orchestrator labelled for a test's slugs
//! (containers, networks, volumes), even when the test fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use clap::Parser;
use orchestrator::config::Config;
use orchestrator::context::TaskContext;
use orchestrator::handlers;
use orchestrator::services::{NoCertificates, NoNames, Services};
use orchestrator::task::{Task, TaskError};
use serde_json::Value;

#[derive(Parser)]
struct P {
    #[command(flatten)]
    c: Config,
}

/// The crate's root folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `kanban/team-api:latest` and `kanban/team-web:latest` (fast when they exist).
pub fn build_images() {
    let status = Command::new(root().join("scripts/build-images.sh"))
        .status()
        .expect("run scripts/build-images.sh");
    assert!(status.success(), "scripts/build-images.sh failed");
}

/// A slug unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_slug(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A config for tests: the repo's templates, no ingress, domain `test.localhost`, unless `extra`
/// (flags and values) says otherwise.
pub fn config(extra: &[&str]) -> Config {
    let templates = root().join("templates").display().to_string();
    let defaults: [(&str, &str); 4] = [
        ("--domain", "test.localhost"),
        ("--templates-dir", &templates),
        ("--ingress-container", ""),
        ("--health-timeout-s", "30"),
    ];
    let mut args: Vec<String> = vec!["x".into()];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.push(flag.into());
            args.push(value.into());
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    P::parse_from(args).c
}

/// Services on `redis_url` with `config`, no DNS and no certificates.
pub fn services(redis_url: &str, mut config: Config) -> Arc<Services> {
    config.redis.redis_url = redis_url.to_string();
    let pool = deadpool_redis::Config::from_url(redis_url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("redis pool");
    Arc::new(Services {
        config: Arc::new(config),
        redis: pool,
        names: Arc::new(NoNames),
        certificates: Arc::new(NoCertificates),
    })
}

/// A task of `task_type` with `payload`.
pub fn task(task_type: &str, payload: Value) -> Task {
    Task {
        id: uuid::Uuid::new_v4().to_string(),
        task_type: task_type.into(),
        user_id: Some("tester".into()),
        payload,
        idempotency_key: None,
        max_attempts: None,
        timeout_s: None,
        created_at: None,
    }
}

/// Runs `task_type` through its registered handler, as the worker would (minus the queue).
pub async fn run(
    services: &Arc<Services>,
    task_type: &str,
    payload: Value,
) -> Result<Value, TaskError> {
    let registry = handlers::registry(services);
    let handler = registry.get(task_type).expect("handler registered").clone();
    let task = task(task_type, payload);
    let steps = handler.total_steps(&task);
    let ctx = TaskContext::new(task, 1, steps, "test-worker".into(), services.clone());
    handler.run(&ctx).await
}

/// `docker <args>`; returns stdout (trimmed) and whether it succeeded.
pub fn docker(args: &[&str]) -> (String, bool) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        out.status.success(),
    )
}

/// `docker inspect` of one object as JSON.
pub fn inspect(what: &str) -> Value {
    let (out, ok) = docker(&["inspect", what]);
    assert!(ok, "docker inspect {what} failed");
    let v: Value = serde_json::from_str(&out).expect("inspect JSON");
    v[0].clone()
}

/// Names of the containers (running or not) carrying `orchestrator.slug=<slug>`.
pub fn containers_of(slug: &str) -> Vec<String> {
    let (out, _) = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=orchestrator.slug={slug}"),
        "--format",
        "{{.Names}}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Names of networks labelled for `slug`.
pub fn networks_of(slug: &str) -> Vec<String> {
    let (out, _) = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label=orchestrator.slug={slug}"),
        "--format",
        "{{.Name}}",
    ]);
    out.lines().map(str::to_string).collect()
}

/// Names of volumes labelled for `slug`.
pub fn volumes_of(slug: &str) -> Vec<String> {
    let (out, _) = docker(&[
        "volume",
        "ls",
        "--filter",
        &format!("label=orchestrator.slug={slug}"),
        "--format",
        "{{.Name}}",
    ]);
    out.lines().map(str::to_string).collect()
}

/// Removes everything labelled for its slugs (and any extra containers by name) on drop.
pub struct Cleanup {
    pub slugs: Vec<String>,
    pub extra_containers: Vec<String>,
}

impl Cleanup {
    pub fn new(slugs: &[&str]) -> Self {
        Self {
            slugs: slugs.iter().map(|s| s.to_string()).collect(),
            extra_containers: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.extra_containers {
            let _ = docker(&["rm", "-f", name]);
        }
        for slug in &self.slugs {
            for c in containers_of(slug) {
                let _ = docker(&["rm", "-f", &c]);
            }
            for n in networks_of(slug) {
                let _ = docker(&["network", "rm", &n]);
            }
            for v in volumes_of(slug) {
                let _ = docker(&["volume", "rm", "-f", &v]);
            }
        }
    }
}

/// The IP address of container `name` on network `network`.
pub fn ip_on(name: &str, network: &str) -> String {
    let v = inspect(name);
    v["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A plain HTTP/1.0 GET of `http://addr/path` from this process; returns the body.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &addr.parse().ok()?,
        std::time::Duration::from_secs(3),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.0 200") && !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    response.split("\r\n\r\n").nth(1).map(str::to_string)
}
