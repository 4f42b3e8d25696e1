//! The whole platform for through-the-queue tests and the journey benchmark: a real Redis, Pebble
//! resolving every name through the worker's embedded DNS server, and one in-process worker
//! (`app::start_worker`) on the repository's real `queues/` declarations; plus the portal's side of
//! the contract: enqueue a task (LPUSH of its JSON envelope), watch `tasks:<user>` and the resource
//! channels over pub/sub (subscribed before enqueueing), read the `task:<id>` hash.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use orchestrator::app::RunningWorker;
use orchestrator::config::Config;
use serde_json::{Value, json};

use super::pebble::Pebble;
use super::{RedisServer, eventually, free_port};

/// The user the tasks are enqueued for (each stack has its own Redis, so one name is enough).
pub const USER: &str = "journey-user";
/// The list the portal pushes provisioning tasks onto.
pub const PROVISIONING_HIGH: &str = "queue:provisioning:high";
/// The list the portal pushes DNS tasks onto.
pub const DNS_HIGH: &str = "queue:dns:high";

/// Worker flags from `(flag, value)` pairs, for [`Stack::start_with`].
pub fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.clone()])
        .collect()
}

/// The payload of a tenant task: `{"slug": slug}` with the fields of `extra` added.
pub fn tenant_payload(slug: &str, extra: Value) -> Value {
    let mut payload = json!({ "slug": slug });
    if let (Some(p), Some(e)) = (payload.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    payload
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

/// Redis, (optionally) Pebble, and a worker serving the zone `localhost.` on its own DNS port.
pub struct Stack {
    pub redis: RedisServer,
    pub pebble: Option<Pebble>,
    /// Zones, certificates and the ACME account live here.
    pub dir: tempfile::TempDir,
    /// Where the worker's embedded DNS server answers (UDP and TCP).
    pub dns: SocketAddr,
    /// The worker's configuration.
    pub config: Arc<Config>,
    worker: Option<RunningWorker>,
}

impl Stack {
    /// Starts everything; with `with_pebble`, the worker's ACME directory is Pebble's.
    pub async fn start(with_pebble: bool) -> Self {
        Self::start_with(with_pebble, &[]).await
    }

    /// [`Stack::start`] with extra worker flags (a later flag wins over the defaults above it).
    pub async fn start_with(with_pebble: bool, extra: &[String]) -> Self {
        let redis = RedisServer::start();
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // Pebble first: the worker needs its directory, Pebble only needs the DNS address (it
        // resolves lazily, once the worker serves the zone).
        let pebble = with_pebble.then(|| Pebble::start(free_port(), Some(dns)));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |p: &str| dir.path().join(p).display().to_string();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut args: Vec<String> = [
            "orchestrator",
            "--redis-url",
            &redis.url(),
            "--queues-dir",
            &root.join("queues").display().to_string(),
            "--templates-dir",
            &root.join("templates").display().to_string(),
            "--metrics-addr",
            "",
            "--domain",
            "localhost",
            "--ingress-ip",
            "127.0.0.1",
            "--ingress-container",
            "",
            "--embedded-dns",
            "--dns-listen",
            &dns.to_string(),
            "--zones-dir",
            &path("zones"),
            "--http01-listen",
            "",
            "--certs-dir",
            &path("certs"),
            "--acme-account-file",
            &path("acme/account.json"),
            "--renewal-scheduler",
            "false",
            "--health-timeout-s",
            "60",
            "--cert-removal-grace-s",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(pebble) = &pebble {
            args.extend([
                "--acme-directory".to_string(),
                pebble.directory_url(),
                "--acme-ca-root".to_string(),
                pebble.listener_ca().display().to_string(),
            ]);
        }
        // A flag given in `extra` replaces the default (clap refuses a flag given twice).
        let mut kept = Vec::with_capacity(args.len());
        let mut iter = args.into_iter().peekable();
        while let Some(arg) = iter.next() {
            if arg.starts_with("--") && extra.contains(&arg) {
                if iter.peek().is_some_and(|v| !v.starts_with("--")) {
                    iter.next();
                }
                continue;
            }
            kept.push(arg);
        }
        let mut args = kept;
        args.extend(extra.iter().cloned());
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

    /// Subscribes to `tasks:<USER>` and `team:status` (do it before enqueueing).
    pub async fn watch(&self) -> Watch {
        Watch::start(
            &self.redis,
            &[format!("tasks:{USER}"), "team:status".into()],
        )
        .await
    }

    /// Pushes a task onto `list` the way the portal does; returns its id.
    pub async fn enqueue(&self, list: &str, task_type: &str, payload: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let body = json!({
            "id": id,
            "type": task_type,
            "user_id": USER,
            "payload": payload,
            "created_at": orchestrator::progress::now(),
        });
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

    /// Waits until task `id` ends and asserts it completed; returns its hash.
    pub async fn wait_completed(&self, id: &str, timeout: Duration) -> HashMap<String, String> {
        let started = Instant::now();
        loop {
            let hash = self.task_hash(id).await;
            match hash.get("status").map(String::as_str) {
                Some("completed") => return hash,
                Some("failed") | Some("cancelled") | Some("retrying") => panic!(
                    "task {id} did not complete: {hash:#?}\npebble log:\n{}",
                    self.pebble.as_ref().map(Pebble::log).unwrap_or_default()
                ),
                _ => {}
            }
            assert!(
                started.elapsed() < timeout,
                "task {id} still not done after {timeout:?}: {hash:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a tenant task (`team.*`, `sandbox.*`) for `slug` from [`PROVISIONING_HIGH`] until it
    /// completes (it must): its result and how long it took.
    pub async fn run_tenant(
        &self,
        task_type: &str,
        slug: &str,
        extra: Value,
        timeout: Duration,
    ) -> (Value, Duration) {
        let started = Instant::now();
        let id = self
            .enqueue(PROVISIONING_HIGH, task_type, tenant_payload(slug, extra))
            .await;
        let hash = self.wait_completed(&id, timeout).await;
        let result = serde_json::from_str(hash.get("result").map_or("null", String::as_str))
            .unwrap_or(Value::Null);
        (result, started.elapsed())
    }

    /// The record sets of the zone `localhost.` in Redis: `"<owner> <TYPE>"` → JSON.
    pub async fn zone_state(&self) -> HashMap<String, Value> {
        let mut conn = self.redis.conn().await;
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg("dns:zone:localhost.:records")
            .query_async(&mut conn)
            .await
            .unwrap();
        raw.into_iter()
            .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
            .collect()
    }

    /// Stops the worker gracefully.
    pub async fn stop(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(worker) = &self.worker {
            worker.shutdown.trigger();
        }
    }
}

/// Every message heard on some channels, with the instant it arrived.
pub struct Watch {
    seen: Arc<Mutex<Vec<(Instant, String, Value)>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Subscribes to `channels` and returns once the subscriptions are in place.
    pub async fn start(redis: &RedisServer, channels: &[String]) -> Self {
        let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
        for channel in channels {
            pubsub.subscribe(channel).await.unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(message) = stream.next().await {
                let payload: String = message.get_payload().unwrap_or_default();
                let value: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
                let channel = message.get_channel_name().to_string();
                sink.lock().unwrap().push((Instant::now(), channel, value));
            }
        });
        Self { seen, _task: task }
    }

    /// Events of task `id` on `tasks:<USER>`, in arrival order, with their arrival instants.
    pub fn task_events(&self, id: &str) -> Vec<(Instant, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c, e)| c.starts_with("tasks:") && e["task_id"] == id)
            .map(|(t, _, e)| (*t, e.clone()))
            .collect()
    }

    /// Events about team `slug` on `team:status`, in arrival order.
    pub fn team_events(&self, slug: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c, e)| c == "team:status" && e["resource_id"] == slug)
            .map(|(_, _, e)| e.clone())
            .collect()
    }

    /// Waits for the terminal event of task `id` (it is published with the hash's last update, so
    /// it may arrive a moment after the hash says the task ended); returns all of the task's events.
    pub async fn wait_task_end(&self, id: &str) -> Vec<(Instant, Value)> {
        eventually(
            &format!("the terminal event of task {id}"),
            Duration::from_secs(10),
            || async move {
                let events = self.task_events(id);
                let ended = events.iter().any(|(_, e)| {
                    matches!(
                        e["type"].as_str(),
                        Some("task.completed" | "task.failed" | "task.cancelled")
                    )
                });
                ended.then_some(events)
            },
        )
        .await
    }
}

/// The message of each step, in order: the first event of every step number above the previous
/// one (later events of a step are its notes; step 0 is "Started", the terminal event repeats the
/// last step).
pub fn step_messages(events: &[(Instant, Value)]) -> Vec<String> {
    let mut last = 0;
    let mut messages = Vec::new();
    for (_, event) in events {
        if event["type"] != "task.progress" {
            continue;
        }
        let step = event["step"].as_u64().unwrap_or(0);
        if step > last {
            last = step;
            messages.push(event["message"].as_str().unwrap_or_default().to_string());
        }
    }
    messages
}

/// When each step started, from the events' own timestamps (RFC 3339, ms): `(message, start)`,
/// then `("end", completion)`.
pub fn step_times(events: &[(Instant, Value)]) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    let parse = |e: &Value| {
        chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap_or_default())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap()
    };
    let mut last = 0;
    let mut times = Vec::new();
    for (_, event) in events {
        match event["type"].as_str() {
            Some("task.progress") => {
                let step = event["step"].as_u64().unwrap_or(0);
                if step > last {
                    last = step;
                    times.push((event["message"].as_str().unwrap().to_string(), parse(event)));
                }
            }
            Some("task.completed") => times.push(("end".into(), parse(event))),
            _ => {}
        }
    }
    times
}
