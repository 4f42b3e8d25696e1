//! Queue benchmark: `system.ping` throughput through one worker process side by side with a raw
//! LPUSH/BRPOP loop and (when `node`/`npm` are on PATH) BullMQ 5 on the same Redis in the same run,
//! medians of 3 interleaved rounds; idle pickup latency (LPUSH -> first event at a subscriber)
//! beside the raw LPUSH -> BRPOP wake-up; and the worker's RSS idle and under load.
//!
//! Run with `cargo bench --bench queue` (figures printed; nothing asserted). BullMQ is installed on
//! first use into `benches/bullmq/node_modules` by `npm install` (only when the bench runs: `cargo
//! test` builds this binary but never runs it). Environment: `BENCH_TASKS` (default 20000),
//! `BENCH_CONCURRENCY` (default 16), `BENCH_ROUNDS` (default 3), `BENCH_BULLMQ=0` to skip BullMQ.

#[path = "../tests/common/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

/// Used by the shared `redis_server` harness (as `super::free_port`).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis_server::RedisServer;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ping_body(i: usize) -> String {
    format!(
        r#"{{"id":"{}","type":"system.ping","user_id":"bench","payload":{{"n":{i}}}}}"#,
        uuid::Uuid::new_v4()
    )
}

async fn fill(conn: &mut redis::aio::MultiplexedConnection, list: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("LPUSH").arg(list).arg(ping_body(*i)).ignore();
        }
        let _: () = pipe.query_async(conn).await.expect("fill");
    }
}

async fn raw_brpop(server: &RedisServer, n: usize) -> f64 {
    let mut conn = server.conn().await;
    fill(&mut conn, "raw:list", n).await;
    let started = Instant::now();
    for _ in 0..n {
        let _: Option<(String, String)> = redis::cmd("BRPOP")
            .arg("raw:list")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("brpop");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(server: &RedisServer, concurrency: usize) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("worker")
        .env("REDIS_URL", server.url())
        .env("QUEUES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/queues"))
        .env("WORKER_CONCURRENCY", concurrency.to_string())
        .env("METRICS_ADDR", "")
        // Keep the repository's committed zone file and the HTTP-01 port out of the benchmark.
        .env(
            "ZONES_DIR",
            std::env::temp_dir().join("orchestrator-bench-zones"),
        )
        .env("HTTP01_LISTEN", "")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker");
    Worker(child)
}

async fn unfinished(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    // Tasks still queued, in flight, ready or delayed: when none is left every task finished.
    let (queued, in_flight, ready, delayed): (usize, usize, usize, usize) = redis::pipe()
        .cmd("LLEN")
        .arg("queue:dns:normal")
        .cmd("ZCARD")
        .arg("{orch}:leases")
        .cmd("LLEN")
        .arg("{orch}:ready")
        .cmd("ZCARD")
        .arg("{orch}:delayed")
        .query_async(conn)
        .await
        .expect("depth");
    queued + in_flight + ready + delayed
}

/// Raw wake-up: one client blocked in BRPOP, another LPUSHes; time until BRPOP returns.
async fn raw_pickup(server: &RedisServer, samples: usize) -> Vec<Duration> {
    let mut pusher = server.conn().await;
    let mut taker = server.conn().await;
    let mut out = Vec::new();
    for i in 0..samples {
        let wait = tokio::spawn(async move {
            let _: Option<(String, String)> = redis::cmd("BRPOP")
                .arg("raw:pickup")
                .arg(5)
                .query_async(&mut taker)
                .await
                .expect("brpop");
            (Instant::now(), taker)
        });
        tokio::time::sleep(Duration::from_millis(3)).await;
        let pushed = Instant::now();
        let _: i64 = redis::cmd("LPUSH")
            .arg("raw:pickup")
            .arg(i)
            .query_async(&mut pusher)
            .await
            .expect("push");
        let (at, back) = wait.await.expect("brpop task");
        taker = back;
        out.push(at - pushed);
    }
    out.sort();
    out
}

/// `system.ping` throughput of one worker draining a pre-filled list.
async fn through_worker(server: &RedisServer, n: usize, concurrency: usize) -> (f64, u64, u64) {
    let mut conn = server.conn().await;
    let worker = spawn_worker(server, concurrency);
    let pid = worker.0.id();
    tokio::time::sleep(Duration::from_millis(800)).await;
    fill(&mut conn, "queue:dns:normal", n).await;
    let started = Instant::now();
    let mut peak_rss = 0;
    loop {
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
        if unfinished(&mut conn).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    (rate, peak_rss, rss_kib(pid, "VmHWM:"))
}

/// The BullMQ side, when node and npm are available (installed on first use).
fn bullmq_ready() -> Option<std::path::PathBuf> {
    if std::env::var("BENCH_BULLMQ").as_deref() == Ok("0") {
        return None;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bullmq");
    let have = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("node") || !have("npm") {
        eprintln!("node/npm not found: BullMQ skipped");
        return None;
    }
    if !dir.join("node_modules/bullmq").exists() {
        eprintln!("installing bullmq into {} ...", dir.display());
        let installed = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            eprintln!("npm install failed: BullMQ skipped");
            return None;
        }
    }
    Some(dir)
}

fn through_bullmq(dir: &std::path::Path, server: &RedisServer, n: usize, c: usize) -> Option<f64> {
    let out = Command::new("node")
        .arg("bench.mjs")
        .arg(server.port.to_string())
        .arg(n.to_string())
        .arg(c.to_string())
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    value["per_s"].as_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let n = env_or("BENCH_TASKS", 20_000);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let bullmq = bullmq_ready();

    // Throughput, interleaved rounds: raw, the worker, BullMQ, each on the same Redis.
    let (mut raw, mut ours, mut bull) = (Vec::new(), Vec::new(), Vec::new());
    let (mut peak_rss, mut hwm) = (0, 0);
    for _ in 0..rounds {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("flush");
        raw.push(raw_brpop(&server, n).await);
        let (rate, peak, high) = through_worker(&server, n, concurrency).await;
        ours.push(rate);
        peak_rss = peak_rss.max(peak);
        hwm = hwm.max(high);
        if let Some(dir) = &bullmq
            && let Some(rate) = through_bullmq(dir, &server, n, concurrency)
        {
            bull.push(rate);
        }
    }

    // Pickup latency, idle worker: LPUSH, then the first event of that task at a subscriber.
    let raw_wake = raw_pickup(&server, 300).await;
    let worker = spawn_worker(&server, concurrency);
    let pid = worker.0.id();
    let mut pubsub = server.client().get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe("tasks:bench").await.expect("subscribe");
    let mut events = pubsub.into_on_message();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_rss = rss_kib(pid, "VmRSS:");
    let mut pickup = Vec::new();
    let mut end_to_end = Vec::new();
    for i in 0..300 {
        let body = ping_body(i);
        let pushed = Instant::now();
        let _: i64 = redis::cmd("LPUSH")
            .arg("queue:dns:normal")
            .arg(&body)
            .query_async(&mut conn)
            .await
            .expect("push");
        let mut picked = None;
        while let Some(message) = events.next().await {
            let payload: String = message.get_payload().unwrap_or_default();
            if picked.is_none() {
                picked = Some(pushed.elapsed());
            }
            if payload.contains("\"status\":\"completed\"") {
                break;
            }
        }
        pickup.push(picked.unwrap_or_default());
        end_to_end.push(pushed.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(events);
    drop(worker);
    pickup.sort();
    end_to_end.sort();

    let raw = median(raw);
    let ours = median(ours);
    println!(
        "queue benchmark ({n} tasks, concurrency {concurrency}, Redis on loopback, median of {rounds} interleaved rounds)"
    );
    println!("  raw LPUSH/BRPOP loop drain      {raw:>10.0} items/s");
    println!(
        "  system.ping through one worker  {ours:>10.0} tasks/s  ({:.0}% of raw)",
        100.0 * ours / raw
    );
    if bull.is_empty() {
        println!("  BullMQ 5                        (skipped)");
    } else {
        let bull = median(bull);
        println!(
            "  BullMQ 5, no-op, removeOnComplete {bull:>8.0} jobs/s   (orchestrator {:.2}x BullMQ)",
            ours / bull
        );
    }
    println!(
        "  raw wake-up (LPUSH -> blocked BRPOP returns)    p50 {:?}  p99 {:?}",
        percentile(&raw_wake, 0.5),
        percentile(&raw_wake, 0.99)
    );
    println!(
        "  pickup latency idle (LPUSH -> first event)      p50 {:?}  p99 {:?}",
        percentile(&pickup, 0.5),
        percentile(&pickup, 0.99)
    );
    println!(
        "  push -> completed event                         p50 {:?}  p99 {:?}",
        percentile(&end_to_end, 0.5),
        percentile(&end_to_end, 0.99)
    );
    println!("  worker RSS idle {idle_rss} KiB, under load peak {peak_rss} KiB (VmHWM {hwm} KiB)");
}
