//! Queue benchmark: `system.ping` throughput through one worker process vs a raw LPUSH/BRPOP loop on
//! the same Redis in the same run, pickup latency when idle, and the worker's RSS idle and under load.
//!
//! Run with `cargo bench --bench queue` (figures printed; nothing asserted).
//! Environment: `BENCH_TASKS` (default 20000), `BENCH_CONCURRENCY` (default 16).

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

async fn completed_count(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    // Tasks still queued or held: when both are zero every task has been finished.
    let (queued, workers): (usize, Vec<String>) = redis::pipe()
        .cmd("LLEN")
        .arg("queue:dns:normal")
        .cmd("SMEMBERS")
        .arg("workers")
        .query_async(conn)
        .await
        .expect("depth");
    let mut held = 0;
    for worker in workers {
        let n: usize = redis::cmd("LLEN")
            .arg(format!("processing:{worker}:queue:dns:normal"))
            .query_async(conn)
            .await
            .unwrap_or(0);
        held += n;
    }
    queued + held
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let n = env_or("BENCH_TASKS", 20_000);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let server = RedisServer::start();
    let mut conn = server.conn().await;

    let raw = raw_brpop(&server, n).await;

    // Pickup latency, idle worker: LPUSH, then the `processing` event of that task.
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
            if payload.contains("\"status\":\"processing\"") && picked.is_none() {
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
    pickup.sort();
    end_to_end.sort();

    // Throughput: a pre-filled list drained by the worker.
    fill(&mut conn, "queue:dns:normal", n).await;
    let started = Instant::now();
    let mut peak_rss = 0;
    loop {
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
        if completed_count(&mut conn).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let through_worker = n as f64 / started.elapsed().as_secs_f64();
    let hwm = rss_kib(pid, "VmHWM:");
    drop(worker);

    println!("queue benchmark ({n} tasks, worker concurrency {concurrency}, Redis on loopback)");
    println!("  raw LPUSH/BRPOP loop drain      {raw:>10.0} items/s");
    println!(
        "  system.ping through one worker  {through_worker:>10.0} tasks/s  ({:.0}% of raw)",
        100.0 * through_worker / raw
    );
    println!(
        "  pickup latency idle (push -> processing event)  p50 {:?}  p99 {:?}",
        percentile(&pickup, 0.5),
        percentile(&pickup, 0.99)
    );
    println!(
        "  push -> completed event                         p50 {:?}  p99 {:?}",
        percentile(&end_to_end, 0.5),
        percentile(&end_to_end, 0.99)
    );
    println!(
        "  worker RSS idle {} KiB, under load peak {} KiB (VmHWM {} KiB)",
        idle_rss, peak_rss, hwm
    );
}
