//! Queue benchmark: `system.ping` throughput through one worker process side by side with a raw
//! LPUSH/BRPOP loop and (when `node`/`npm` are on PATH) BullMQ 5 on the same Redis in the same run,
//! medians of 3 interleaved rounds; idle pickup latency (LPUSH -> first event at a subscriber)
//! beside the raw LPUSH -> BRPOP wake-up; and the worker's RSS idle and under load.
//!
//! Beside each rate it prints what Redis spent per task (`INFO cpu` and `INFO commandstats` deltas
//! around the drain): its CPU time, the calls a client sent (scripts and blocking pops: one round
//! trip each) and every command run (those inside scripts included). The herd check starts idle
//! workers, pushes tasks one at a time and counts the blocking pops and scripts each push caused.
//!
//! Everything runs twice on the same Redis (AOF on): with `appendfsync always` (the test harness's
//! setting: every write waits for the disk, so rates are bounded by its fsync latency) and with
//! `everysec` (the AOF policy production runs), switched with `CONFIG SET`.
//!
//! Run with `cargo bench --bench queue` (figures printed; nothing asserted). BullMQ is installed on
//! first use into `benches/bullmq/node_modules` by `npm install` (only when the bench runs: `cargo
//! test` builds this binary but never runs it). Environment: `BENCH_TASKS` (default 20000),
//! `BENCH_CONCURRENCY` (default 16), `BENCH_ROUNDS` (default 3), `BENCH_BULLMQ=0` to skip BullMQ, `BENCH_HERD_WORKERS` (default 4),
//! `BENCH_FSYNC` (default `always,everysec`: the AOF policies to run), `BENCH_PARTS` (default
//! `throughput,pickup,herd`: which parts to run), `BENCH_BREAKDOWN=1` (Redis's time per command in
//! the worker's throughput rounds).

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

/// CPU time (user + system) a process used so far, in µs.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks * 10_000.0
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

/// What Redis did over a span: its CPU time and calls per command (`INFO cpu`, `INFO commandstats`).
#[derive(Default, Clone)]
struct RedisStats {
    cpu_us: f64,
    calls: std::collections::HashMap<String, u64>,
    /// µs Redis spent per command (a script's own figure includes the commands it ran).
    usec: std::collections::HashMap<String, u64>,
}

/// Commands a client sends that are one round trip each (scripts, blocking pops); the others a
/// worker sends itself (heartbeats, sampling) are few and not counted.
const ROUND_TRIPS: [&str; 7] = [
    "evalsha",
    "eval",
    "blmove",
    "brpoplpush",
    "brpop",
    "blmpop",
    "bzpopmin",
];

impl RedisStats {
    async fn read(conn: &mut redis::aio::MultiplexedConnection) -> Self {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query_async(conn)
            .await
            .expect("info");
        let mut stats = Self::default();
        for line in info.lines() {
            if let Some(rest) = line
                .strip_prefix("used_cpu_sys:")
                .or_else(|| line.strip_prefix("used_cpu_user:"))
            {
                stats.cpu_us += rest.trim().parse::<f64>().unwrap_or(0.0) * 1e6;
            }
            if let Some(rest) = line.strip_prefix("cmdstat_") {
                let (name, fields) = rest.split_once(':').unwrap_or((rest, ""));
                let calls = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let usec = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("usec="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                stats.calls.insert(name.to_string(), calls);
                stats.usec.insert(name.to_string(), usec);
            }
        }
        stats
    }

    /// `self - before`.
    fn since(&self, before: &Self) -> Self {
        let mut calls = self.calls.clone();
        for (name, n) in calls.iter_mut() {
            *n -= before.calls.get(name).copied().unwrap_or(0).min(*n);
        }
        let mut usec = self.usec.clone();
        for (name, n) in usec.iter_mut() {
            *n -= before.usec.get(name).copied().unwrap_or(0).min(*n);
        }
        Self {
            cpu_us: self.cpu_us - before.cpu_us,
            calls,
            usec,
        }
    }

    fn calls(&self, names: &[&str]) -> u64 {
        names
            .iter()
            .map(|n| self.calls.get(*n).copied().unwrap_or(0))
            .sum()
    }

    fn all(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// Per task: Redis CPU (µs), round trips sent, every command run (scripts' inner ones included),
/// and the consumer's CPU (µs).
#[derive(Default, Clone, Copy)]
struct PerTask {
    cpu_us: f64,
    round_trips: f64,
    commands: f64,
    /// CPU of the consuming process (the worker; node for BullMQ).
    client_cpu_us: f64,
}

/// `system.ping` throughput of one idle worker draining `n` tasks that appear at once (filled
/// aside, then renamed onto its list, so it neither starts early nor pays for the fill).
async fn through_worker(
    server: &RedisServer,
    n: usize,
    concurrency: usize,
) -> (f64, u64, u64, PerTask) {
    let mut conn = server.conn().await;
    let worker = spawn_worker(server, concurrency);
    let pid = worker.0.id();
    fill(&mut conn, "bench:staging", n).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = RedisStats::read(&mut conn).await;
    let worker_cpu = cpu_us(pid);
    let started = Instant::now();
    let _: () = redis::cmd("RENAME")
        .arg("bench:staging")
        .arg("queue:dns:normal")
        .query_async(&mut conn)
        .await
        .expect("rename");
    let mut peak_rss = 0;
    let mut polls = 0;
    loop {
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
        polls += 1;
        if unfinished(&mut conn).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    if std::env::var_os("BENCH_BREAKDOWN").is_some() {
        let spent = RedisStats::read(&mut conn).await.since(&before);
        let mut rows: Vec<_> = spent.calls.iter().filter(|(_, c)| **c > 0).collect();
        rows.sort_by_key(|(name, _)| {
            std::cmp::Reverse(spent.usec.get(*name).copied().unwrap_or(0))
        });
        for (name, calls) in rows {
            let usec = spent.usec.get(name).copied().unwrap_or(0);
            println!(
                "      {name:<16} {:>7.2} calls/task {:>7.2} µs/task",
                *calls as f64 / n as f64,
                usec as f64 / n as f64
            );
        }
    }
    let client_cpu_us = (cpu_us(pid) - worker_cpu) / n as f64;
    let spent = RedisStats::read(&mut conn).await.since(&before);
    // The bench's own polls (2 LLEN + 2 ZCARD each), the RENAME and the INFO are not the worker's.
    let own = 4 * polls + 2;
    let per = PerTask {
        cpu_us: spent.cpu_us / n as f64,
        round_trips: spent.calls(&ROUND_TRIPS) as f64 / n as f64,
        commands: spent.all().saturating_sub(own) as f64 / n as f64,
        client_cpu_us,
    };
    (rate, peak_rss, rss_kib(pid, "VmHWM:"), per)
}

/// Herd check: `workers` idle worker processes; tasks pushed one at a time, each awaited. Returns
/// per push: blocking pops and scripts run beyond what the same idle time costs without pushes.
async fn herd(server: &RedisServer, workers: usize, pushes: usize) -> (f64, f64) {
    let mut conn = server.conn().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let _procs: Vec<Worker> = (0..workers).map(|_| spawn_worker(server, 4)).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let blocking = ["blmove", "brpoplpush", "brpop", "blmpop", "bzpopmin"];
    let scripts = ["evalsha", "eval"];
    // The idle cost of the same span (blocking pops time out and are re-issued).
    let span = Duration::from_millis(20) * pushes as u32;
    let before = RedisStats::read(&mut conn).await;
    tokio::time::sleep(span).await;
    let idle = RedisStats::read(&mut conn).await.since(&before);
    let before = RedisStats::read(&mut conn).await;
    let started = Instant::now();
    for i in 0..pushes {
        let _: i64 = redis::cmd("LPUSH")
            .arg("queue:dns:normal")
            .arg(ping_body(i))
            .query_async(&mut conn)
            .await
            .expect("push");
        while unfinished(&mut conn).await > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(19)).await;
    }
    let busy = RedisStats::read(&mut conn).await.since(&before);
    let scale = started.elapsed().as_secs_f64() / span.as_secs_f64();
    let extra = |names: &[&str]| {
        (busy.calls(names) as f64 - idle.calls(names) as f64 * scale) / pushes as f64
    };
    (extra(&blocking), extra(&scripts))
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

fn through_bullmq(
    dir: &std::path::Path,
    server: &RedisServer,
    n: usize,
    c: usize,
) -> Option<(f64, PerTask)> {
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
    let per = PerTask {
        cpu_us: value["redis_cpu_us_per_job"].as_f64().unwrap_or(0.0),
        round_trips: value["round_trips_per_job"].as_f64().unwrap_or(0.0),
        commands: value["commands_per_job"].as_f64().unwrap_or(0.0),
        client_cpu_us: value["node_cpu_us_per_job"].as_f64().unwrap_or(0.0),
    };
    Some((value["per_s"].as_f64()?, per))
}

/// The round with the median rate's figures.
fn median_per(rates: &[f64], per: &[PerTask]) -> PerTask {
    let mut order: Vec<usize> = (0..rates.len()).collect();
    order.sort_by(|a, b| rates[*a].total_cmp(&rates[*b]));
    order
        .get(order.len() / 2)
        .and_then(|i| per.get(*i))
        .copied()
        .unwrap_or_default()
}

fn per_line(what: &str, per: PerTask) {
    println!(
        "    {what:<14} Redis CPU {:>5.1} µs/task, consumer CPU {:>5.1} µs/task, {:.3} round trips/task, {:.1} Redis commands/task (inside scripts included)",
        per.cpu_us, per.client_cpu_us, per.round_trips, per.commands
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Throughput rounds, pickup latency and the herd check under one AOF fsync policy.
struct Figures {
    raw: f64,
    ours: f64,
    bull: Option<f64>,
    ours_per: PerTask,
    bull_per: Option<PerTask>,
    raw_wake: Vec<Duration>,
    pickup: Vec<Duration>,
    end_to_end: Vec<Duration>,
    herd: (f64, f64),
}

async fn set_fsync(conn: &mut redis::aio::MultiplexedConnection, policy: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg(policy)
        .query_async(conn)
        .await
        .expect("config set appendfsync");
}

/// Pickup latency, idle worker: LPUSH, then the first event of that task at a subscriber; and
/// the worker's idle RSS.
async fn pickup(
    server: &RedisServer,
    concurrency: usize,
    samples: usize,
) -> (Vec<Duration>, Vec<Duration>, u64) {
    let mut conn = server.conn().await;
    let worker = spawn_worker(server, concurrency);
    let pid = worker.0.id();
    let mut pubsub = server.client().get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe("tasks:bench").await.expect("subscribe");
    let mut events = pubsub.into_on_message();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_rss = rss_kib(pid, "VmRSS:");
    let mut pickup = Vec::new();
    let mut end_to_end = Vec::new();
    for i in 0..samples {
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
    pickup.sort();
    end_to_end.sort();
    (pickup, end_to_end, idle_rss)
}

fn report(policy: &str, f: &Figures, n: usize, concurrency: usize, rounds: usize) {
    println!(
        "appendfsync {policy}: {n} tasks, concurrency {concurrency}, Redis on loopback, median of {rounds} interleaved rounds"
    );
    println!("  raw LPUSH/BRPOP loop drain      {:>10.0} items/s", f.raw);
    println!(
        "  system.ping through one worker  {:>10.0} tasks/s  ({:.0}% of raw)",
        f.ours,
        100.0 * f.ours / f.raw
    );
    match f.bull {
        None => println!("  BullMQ 5                        (skipped)"),
        Some(bull) => println!(
            "  BullMQ 5, no-op, removeOnComplete {bull:>8.0} jobs/s   (orchestrator {:.2}x BullMQ)",
            f.ours / bull
        ),
    }
    per_line("orchestrator", f.ours_per);
    if let Some(per) = f.bull_per {
        per_line("BullMQ 5", per);
    }
    println!(
        "  raw wake-up (LPUSH -> blocked BRPOP returns)    p50 {:?}  p99 {:?}",
        percentile(&f.raw_wake, 0.5),
        percentile(&f.raw_wake, 0.99)
    );
    println!(
        "  pickup latency idle (LPUSH -> first event)      p50 {:?}  p99 {:?}",
        percentile(&f.pickup, 0.5),
        percentile(&f.pickup, 0.99)
    );
    println!(
        "  push -> completed event                         p50 {:?}  p99 {:?}",
        percentile(&f.end_to_end, 0.5),
        percentile(&f.end_to_end, 0.99)
    );
    println!(
        "  herd check, {} idle workers, one push at a time: {:.2} blocking pops and {:.2} scripts per push (beyond idle)",
        env_or("BENCH_HERD_WORKERS", 4),
        f.herd.0,
        f.herd.1
    );
}

#[tokio::main]
async fn main() {
    let n = env_or("BENCH_TASKS", 20_000);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let bullmq = bullmq_ready();
    let (mut peak_rss, mut hwm, mut idle_rss) = (0, 0, 0);
    let mut all = Vec::new();
    // The test harness's Redis fsyncs the AOF on every write (`always`): throughput is then
    // bounded by the disk's fsync latency. `everysec` is the AOF policy production runs.
    let policies: Vec<String> = std::env::var("BENCH_FSYNC")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| vec!["always".into(), "everysec".into()]);
    for policy in policies.iter().map(String::as_str) {
        set_fsync(&mut conn, policy).await;
        // Throughput, interleaved rounds: raw, the worker, BullMQ, each on the same Redis.
        let (mut raw, mut ours, mut bull) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ours_per, mut bull_per) = (Vec::new(), Vec::new());
        let parts =
            std::env::var("BENCH_PARTS").unwrap_or_else(|_| "throughput,pickup,herd".into());
        let part = |name: &str| parts.split(',').any(|p| p == name);
        for _ in 0..if part("throughput") { rounds } else { 0 } {
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut conn)
                .await
                .expect("flush");
            raw.push(raw_brpop(&server, n).await);
            let (rate, peak, high, per) = through_worker(&server, n, concurrency).await;
            ours.push(rate);
            ours_per.push(per);
            peak_rss = peak_rss.max(peak);
            hwm = hwm.max(high);
            if let Some(dir) = &bullmq
                && let Some((rate, per)) = through_bullmq(dir, &server, n, concurrency)
            {
                bull.push(rate);
                bull_per.push(per);
            }
        }
        let (raw_wake, pickup, end_to_end) = if part("pickup") {
            let raw_wake = raw_pickup(&server, 300).await;
            let (pickup, end_to_end, idle) = pickup(&server, concurrency, 300).await;
            idle_rss = idle;
            (raw_wake, pickup, end_to_end)
        } else {
            (
                vec![Duration::ZERO],
                vec![Duration::ZERO],
                vec![Duration::ZERO],
            )
        };
        let herd_workers = env_or("BENCH_HERD_WORKERS", 4);
        let herd = if part("herd") {
            herd(&server, herd_workers, 50).await
        } else {
            (0.0, 0.0)
        };
        set_fsync(&mut conn, policy).await;
        all.push((
            policy,
            Figures {
                ours_per: median_per(&ours, &ours_per),
                bull_per: (!bull.is_empty()).then(|| median_per(&bull, &bull_per)),
                raw: median(raw),
                ours: median(ours),
                bull: (!bull.is_empty()).then(|| median(bull)),
                raw_wake,
                pickup,
                end_to_end,
                herd,
            },
        ));
    }
    for (policy, figures) in &all {
        report(policy, figures, n, concurrency, rounds);
    }
    println!("worker RSS idle {idle_rss} KiB, under load peak {peak_rss} KiB (VmHWM {hwm} KiB)");
}
