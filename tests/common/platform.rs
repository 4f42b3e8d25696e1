//! A whole platform for the tenant tests, configurable where the journey's `Stack` is fixed: a
//! real Redis, an in-process worker (`app::start_worker`, the repository's `queues/` and
//! `templates/`, `--embedded-dns` on its own port), optionally Pebble (resolving through that DNS
//! server), an ACME directory that refuses connections otherwise, and any `DOCKER_HOST` (e.g. a
//! [`super::sockproxy::SocketProxy`]). Tasks are pushed the way the portal does, with a chosen
//! `user_id` and `max_attempts`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orchestrator::app::RunningWorker;
use orchestrator::config::Config;
use serde_json::{Value, json};

use super::pebble::Pebble;
use super::{RedisServer, free_port};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

/// How to start a [`Platform`].
#[derive(Default)]
pub struct Options {
    /// Run Pebble and point the worker's ACME directory at it (otherwise at a closed port).
    pub pebble: bool,
    /// `DOCKER_HOST` of the worker.
    pub docker_host: Option<String>,
    /// Flags that replace the defaults (`--flag value`).
    pub flags: Vec<(&'static str, String)>,
}

/// Redis, the worker, its DNS server and (optionally) Pebble.
pub struct Platform {
    pub redis: RedisServer,
    pub pebble: Option<Pebble>,
    pub dir: tempfile::TempDir,
    pub dns: SocketAddr,
    pub config: Arc<Config>,
    pub worker: Option<RunningWorker>,
}

impl Platform {
    pub async fn start(options: Options) -> Self {
        let redis = RedisServer::start();
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let pebble = options
            .pebble
            .then(|| Pebble::start(free_port(), Some(dns)));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |p: &str| dir.path().join(p).display().to_string();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut flags: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v) in [
            ("--redis-url", redis.url()),
            ("--queues-dir", root.join("queues").display().to_string()),
            (
                "--templates-dir",
                root.join("templates").display().to_string(),
            ),
            ("--metrics-addr", String::new()),
            ("--domain", "localhost".into()),
            ("--ingress-ip", "127.0.0.1".into()),
            ("--ingress-container", String::new()),
            ("--dns-listen", dns.to_string()),
            ("--zones-dir", path("zones")),
            ("--http01-listen", String::new()),
            ("--certs-dir", path("certs")),
            ("--acme-account-file", path("acme/account.json")),
            ("--renewal-scheduler", "false".into()),
            ("--health-timeout-s", "60".into()),
            // Nothing listens there: any ACME call fails (retryably) at once.
            (
                "--acme-directory",
                format!("https://127.0.0.1:{}/dir", free_port()),
            ),
        ] {
            flags.insert(k, v);
        }
        if let Some(pebble) = &pebble {
            flags.insert("--acme-directory", pebble.directory_url());
            flags.insert("--acme-ca-root", pebble.listener_ca().display().to_string());
        }
        if let Some(host) = &options.docker_host {
            flags.insert("--docker-host", host.clone());
        }
        for (k, v) in options.flags {
            flags.insert(k, v);
        }
        let mut args = vec!["orchestrator".to_string(), "--embedded-dns".to_string()];
        for (k, v) in flags {
            args.push(k.to_string());
            args.push(v);
        }
        let config = Arc::new(Args::parse_from(args).config);
        let worker = super::worker::start_answering(config.clone(), dns).await;
        Self {
            redis,
            pebble,
            dir,
            dns,
            config,
            worker: Some(worker),
        }
    }

    /// The certificates folder.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Pushes a task for `user` (None: no `user_id`, the platform's) onto `list`; returns its id.
    pub async fn enqueue(
        &self,
        list: &str,
        task_type: &str,
        user: Option<&str>,
        payload: Value,
        max_attempts: Option<u32>,
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut body = json!({"id": id, "type": task_type, "payload": payload});
        if let Some(user) = user {
            body["user_id"] = json!(user);
        }
        if let Some(n) = max_attempts {
            body["max_attempts"] = json!(n);
        }
        let mut conn = self.redis.conn().await;
        let _: i64 = redis::cmd("LPUSH")
            .arg(list)
            .arg(body.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        id
    }

    /// The `task:<id>` hash.
    pub async fn task_hash(&self, id: &str) -> HashMap<String, String> {
        let mut conn = self.redis.conn().await;
        redis::cmd("HGETALL")
            .arg(format!("task:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Waits until task `id` is completed, failed or cancelled; returns its hash.
    pub async fn wait_end(&self, id: &str, timeout: Duration) -> HashMap<String, String> {
        let started = Instant::now();
        loop {
            let hash = self.task_hash(id).await;
            if matches!(
                hash.get("status").map(String::as_str),
                Some("completed") | Some("failed") | Some("cancelled")
            ) {
                return hash;
            }
            assert!(
                started.elapsed() < timeout,
                "task {id} still not done after {timeout:?}: {hash:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a task to its end; returns its hash.
    pub async fn run(
        &self,
        list: &str,
        task_type: &str,
        user: Option<&str>,
        payload: Value,
    ) -> HashMap<String, String> {
        let id = self.enqueue(list, task_type, user, payload, None).await;
        self.wait_end(&id, Duration::from_secs(180)).await
    }

    /// Keys matching `pattern`.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.redis.conn().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// Stops the worker gracefully.
    pub async fn stop(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(worker) = &self.worker {
            worker.shutdown.trigger();
        }
    }
}
