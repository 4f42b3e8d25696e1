//! Redis Sentinel failover with tasks in flight, against real processes: a master, a replica and
//! three sentinels on loopback ports, and worker processes configured with `REDIS_SENTINELS` (and,
//! like a naive deployment, a `REDIS_URL` naming the first master). A `SENTINEL FAILOVER`, then a
//! SIGKILL of the new master (the sentinels fail over back to the first node, by then its
//! replica): every task completes exactly once (the workers' own completion counters add up to the
//! number of tasks; none failed, none is left in any internal place), and the test prints how long
//! the queue stalled at each failover.
//!
//! Without the follower (`src/sentinel.rs`) the workers keep their connections to the first
//! master, which answers READONLY once demoted: the tasks pushed to the new master never run.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sentinel::{DOWN_AFTER_MS, MASTER_NAME, SentinelSet};
use common::tasks::{assert_one_place, dead_entries, hash, new_id, ping};
use common::worker::{self, WorkerProcess};
use common::{eventually, free_port};
use futures::StreamExt;
use serde_json::{Value, json};

const WORKERS: usize = 2;
const BATCH: usize = 300;

/// Completion events as the nodes publish them (every data node: a replica relays its master's).
#[derive(Clone, Default)]
struct Completions {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Completions {
    fn listen(&self, url: String) {
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let Ok(client) = redis::Client::open(url) else {
                return;
            };
            // Sentinel kills pub/sub clients of every node it reconfigures: subscribe again.
            loop {
                if let Ok(mut pubsub) = client.get_async_pubsub().await
                    && pubsub.psubscribe("tasks:*").await.is_ok()
                {
                    let mut stream = pubsub.on_message();
                    while let Some(message) = stream.next().await {
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        let Ok(event) = serde_json::from_str::<Value>(&payload) else {
                            continue;
                        };
                        if event["type"] == "task.completed"
                            && let Some(id) = event["task_id"].as_str()
                        {
                            seen.lock().unwrap().push((Instant::now(), id.to_string()));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    /// Distinct tasks of `ids` seen completed.
    fn count(&self, ids: &[String]) -> usize {
        let wanted: HashSet<&String> = ids.iter().collect();
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|(_, id)| id)
            .filter(|id| wanted.contains(id))
            .collect::<HashSet<_>>()
            .len()
    }

    /// The longest time without any completion between `from` and the first completion of the
    /// last task of `batch` to complete (the queue was not empty meanwhile).
    fn stall_after(&self, from: Instant, batch: &[String]) -> Duration {
        let seen = self.seen.lock().unwrap();
        let wanted: HashSet<&String> = batch.iter().collect();
        let mut first: std::collections::HashMap<&String, Instant> = Default::default();
        for (t, id) in seen.iter() {
            if wanted.contains(id) {
                first.entry(id).or_insert(*t);
            }
        }
        let until = first.values().max().copied().unwrap_or(from);
        let mut times: Vec<Instant> = seen
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= from && *t <= until)
            .collect();
        times.sort();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for t in times {
            longest = longest.max(t - last);
            last = t;
        }
        longest
    }

    /// Completions per 250 ms from `from` until the last task of `batch` completed, and how
    /// long of that the rate was under a quarter of the rate of the 2 s before `from`.
    fn slow_time(&self, from: Instant, batch: &[String]) -> (Vec<usize>, Duration) {
        const BUCKET: Duration = Duration::from_millis(250);
        let seen = self.seen.lock().unwrap();
        let wanted: HashSet<&String> = batch.iter().collect();
        let until = seen
            .iter()
            .filter(|(_, id)| wanted.contains(id))
            .fold(std::collections::HashMap::new(), |mut first, (t, id)| {
                first.entry(id).or_insert(*t);
                first
            })
            .into_values()
            .max()
            .unwrap_or(from);
        let before = seen
            .iter()
            .filter(|(t, _)| *t < from && *t + Duration::from_secs(2) >= from)
            .count();
        let normal = before as f64 / 8.0;
        let n =
            ((until.saturating_duration_since(from)).as_millis() / BUCKET.as_millis()) as usize + 1;
        let mut buckets = vec![0usize; n];
        for (t, _) in seen.iter().filter(|(t, _)| *t >= from && *t <= until) {
            buckets[((*t - from).as_millis() / BUCKET.as_millis()) as usize] += 1;
        }
        let slow = buckets
            .iter()
            .filter(|b| (**b as f64) < normal / 4.0)
            .count() as u32;
        (buckets, BUCKET * slow)
    }
}

/// Pushes `count` pings onto the master the sentinels name and waits until the replica has them
/// (`WAIT 1`), as a careful producer does. Every tenth task locks resource `r1`.
async fn push_batch(set: &SentinelSet, count: usize) -> Vec<String> {
    let port = set.master_port().await.expect("a master");
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut pipe = redis::pipe();
    for i in 0..count {
        let id = new_id();
        let delay = 60 + (i % 5) * 30;
        let payload = if i % 10 == 0 {
            json!({"delay_ms": delay, "resource": "r1"})
        } else {
            json!({"delay_ms": delay})
        };
        pipe.cmd("LPUSH")
            .arg("queue:dns:normal")
            .arg(ping(&id, payload))
            .ignore();
        ids.push(id);
    }
    pipe.cmd("WAIT").arg(1).arg(5000);
    let (acked,): (i64,) = pipe.query_async(&mut conn).await.unwrap();
    assert_eq!(acked, 1, "the replica has the pushed tasks");
    ids
}

/// `orchestrator_tasks_total{…outcome="completed"…}` summed over the workers' /metrics.
fn completed_by_workers(metrics: &[u16]) -> u64 {
    let mut total = 0;
    for port in metrics {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", *port)).expect("metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        total += text
            .lines()
            .filter(|l| {
                l.starts_with("orchestrator_tasks_total{")
                    && l.contains("outcome=\"completed\"")
                    && l.contains("system.ping")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

async fn wait_completed(
    completions: &Completions,
    ids: &[String],
    at_least: usize,
    within: Duration,
) {
    let what = format!("{at_least} of {} tasks to complete", ids.len());
    eventually(&what, within, || async {
        (completions.count(ids) >= at_least).then_some(())
    })
    .await;
}

/// What a run of the scenario measured.
struct Run {
    tasks: u64,
    completed_by_workers: u64,
}

/// The scenario of the issue: `SENTINEL FAILOVER`, then SIGKILL of the new master, with tasks
/// claimed, running and finishing on both sides of each switch. Every task ends completed and in
/// no internal place; returns how many completions the workers counted.
async fn failovers_with_tasks_in_flight(wait_replicas: &str) -> Run {
    let mut set = SentinelSet::start().await;
    let (first, second) = (set.nodes[0].port, set.nodes[1].port);
    let queues = worker::quick_queues();
    let completions = Completions::default();
    for node in &set.nodes {
        completions.listen(node.url());
    }
    let sentinels = set.sentinel_list();
    let metrics: Vec<u16> = (0..WORKERS).map(|_| free_port()).collect();
    let workers: Vec<WorkerProcess> = metrics
        .iter()
        .enumerate()
        .map(|(i, port)| {
            WorkerProcess::spawn(
                // A deployment's REDIS_URL may still name the first master: Sentinel decides.
                &set.nodes[0].url(),
                queues.path(),
                &[
                    ("WORKER_ID", &format!("sentinel-worker-{i}")),
                    ("WORKER_CONCURRENCY", "4"),
                    ("REDIS_SENTINELS", &sentinels),
                    ("REDIS_MASTER_NAME", MASTER_NAME),
                    ("REDIS_WAIT_REPLICAS", wait_replicas),
                    ("METRICS_ADDR", &format!("127.0.0.1:{port}")),
                    (
                        "RUST_LOG",
                        &std::env::var("SENTINEL_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
                    ),
                ],
            )
        })
        .collect();

    // Failover 1: a planned switch (SENTINEL FAILOVER) while the first batch runs.
    let batch1 = push_batch(&set, BATCH).await;
    wait_completed(&completions, &batch1, BATCH / 3, Duration::from_secs(60)).await;
    let switched = Instant::now();
    set.failover().await;
    // The first node comes back as the replica of the second before the second is killed.
    set.wait_for(second, Some(first), Duration::from_secs(60))
        .await;
    let failover_done = switched.elapsed();

    // Failover 2: the new master dies (SIGKILL) while the second batch runs.
    let batch2 = push_batch(&set, BATCH).await;
    wait_completed(&completions, &batch2, BATCH / 3, Duration::from_secs(60)).await;
    let killed = Instant::now();
    set.node(second).kill();
    // Its supervisor starts it again once the sentinels promoted the first node (not before: it
    // comes back empty, and a master that comes back empty before the failover loses everything).
    // With one replica, WAIT 1 has nothing to wait for until then.
    set.wait_for(first, None, Duration::from_secs(30)).await;
    let promoted = killed.elapsed();
    set.node(second).restart();
    set.wait_for(first, Some(second), Duration::from_secs(60))
        .await;
    let replica_back = killed.elapsed();

    let all: Vec<String> = batch1.iter().chain(&batch2).cloned().collect();
    wait_completed(&completions, &all, all.len(), Duration::from_secs(120)).await;
    set.wait_for(first, None, Duration::from_secs(30)).await;

    let stall1 = completions.stall_after(switched, &batch1);
    let stall2 = completions.stall_after(killed, &batch2);
    let (timeline1, slow1) = completions.slow_time(switched, &batch1);
    let (timeline2, slow2) = completions.slow_time(killed, &batch2);
    println!(
        "REDIS_WAIT_REPLICAS={wait_replicas}: under a quarter of the normal rate for {slow1:?} \
         after SENTINEL FAILOVER, {slow2:?} after SIGKILL; completions per 250 ms:\n  \
         failover {timeline1:?}\n  kill {timeline2:?}"
    );
    println!(
        "REDIS_WAIT_REPLICAS={wait_replicas}: longest gap without a completion {stall1:?} at SENTINEL FAILOVER (old master back as a replica after \
         {failover_done:?}); {stall2:?} after SIGKILL of the master (down-after-milliseconds \
         {DOWN_AFTER_MS}; first node promoted after {promoted:?}, killed node back as its \
         replica after {replica_back:?})"
    );

    // Exactly once: each task completed, and the workers completed as many attempts as tasks.
    let mut conn = set.node(first).conn().await;
    let mut recovered = 0;
    for id in &all {
        let h = hash(&mut conn, id).await;
        assert_eq!(
            h.get("status").map(String::as_str),
            Some("completed"),
            "task {id}: {h:?}"
        );
        recovered += h
            .get("recoveries")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    println!("REDIS_WAIT_REPLICAS={wait_replicas}: {recovered} tasks recovered after their lease");
    assert!(
        dead_entries(&mut conn).await.is_empty(),
        "nothing dead-lettered"
    );
    assert_one_place(&mut conn, &all).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = Run {
        tasks: all.len() as u64,
        completed_by_workers: completed_by_workers(&metrics),
    };
    drop(workers);
    run
}

/// With `REDIS_WAIT_REPLICAS=1`, nothing the workers acted on is lost in either failover: each
/// task ran to completion exactly once.
#[tokio::test]
async fn tasks_complete_exactly_once_across_a_failover_and_a_killed_master() {
    let run = failovers_with_tasks_in_flight("1").await;
    assert_eq!(
        run.completed_by_workers, run.tasks,
        "every task ran to completion exactly once across the workers"
    );
}

/// Without `WAIT` (the default) the follower alone still gets every task done and none stuck;
/// what the old master had not replicated may run again (at least once, README: Redis Sentinel).
#[tokio::test]
async fn without_wait_every_task_still_completes_at_least_once() {
    let run = failovers_with_tasks_in_flight("0").await;
    println!(
        "REDIS_WAIT_REPLICAS=0: {} completions for {} tasks",
        run.completed_by_workers, run.tasks
    );
    assert!(run.completed_by_workers >= run.tasks);
}
