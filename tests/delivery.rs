//! Delivery under the faults production has, against a real Redis: stalled workers (SIGSTOP past
//! their lease), lost locks, Redis refusing writes (NOREPLICAS), a lost claim reply, SIGTERM with a
//! failing command, per-resource order, attempts, duplicate worker ids, scoped idempotency, and a
//! randomized mix of all of them. Every test checks that each task ends in exactly one place.

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::tasks::{Events, assert_one_place, hash, new_id, ping, places, push, wait_status};
use common::worker::{self, WorkerProcess};
use common::{RedisServer, eventually};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

const LEASE: &str = "2";

async fn config_set(conn: &mut MultiplexedConnection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

/// Scenario 1: a worker stalled past its lease resumes after another worker re-ran its task.
#[tokio::test]
async fn a_stalled_worker_cannot_finish_a_task_a_newer_attempt_ran() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let stale = WorkerProcess::spawn(
        &server.url(),
        queues.path(),
        &[("WORKER_ID", "stale"), ("WORKER_LEASE_S", LEASE)],
    );
    let ok = new_id();
    let doomed = new_id();
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&ok, json!({"delay_ms": 4000})),
    )
    .await;
    let body = json!({"id": doomed, "type": "system.ping", "user_id": "tester", "max_attempts": 1,
                      "payload": {"delay_ms": 4000, "fail": "boom"}});
    push(&mut conn, "queue:dns:normal", &body.to_string()).await;
    for id in [&ok, &doomed] {
        let running = wait_status(&mut conn, id, "processing", Duration::from_secs(10)).await;
        assert_eq!(running["worker"], "stale");
    }
    stale.signal("STOP");
    let live = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "live", "--lease-s", LEASE],
    ))
    .await;
    // The live worker takes the task over once the stale lease runs out.
    eventually(
        "the live worker to run the task",
        Duration::from_secs(15),
        || {
            let mut conn = conn.clone();
            let ok = ok.clone();
            async move { (hash(&mut conn, &ok).await["worker"] == "live").then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stale.signal("CONT");
    let done = wait_status(&mut conn, &ok, "completed", Duration::from_secs(20)).await;
    assert_eq!(done["worker"], "live");
    let failed = wait_status(&mut conn, &doomed, "failed", Duration::from_secs(20)).await;
    assert!(
        failed["error"].contains("gave up after 1 attempts"),
        "{failed:?}"
    );
    // Long enough for the resumed stale attempts to have tried to write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events.completions(&ok), 1, "exactly one completion");
    assert_eq!(hash(&mut conn, &ok).await["status"], "completed");
    assert!(
        events
            .of(&doomed)
            .iter()
            .filter(|e| e["type"] == "task.failed")
            .count()
            == 1,
        "the stale attempt's failure was refused"
    );
    assert_one_place(&mut conn, &[ok, doomed]).await;
    live.stop().await;
}

/// Scenario 2: a holder that loses its resource lock (stalled past its lease) is retried, not
/// cancelled, and keeps its turn before the next task of the resource.
#[tokio::test]
async fn a_lost_lock_retries_the_task_instead_of_cancelling_it() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let stale = WorkerProcess::spawn(
        &server.url(),
        queues.path(),
        &[("WORKER_ID", "stale"), ("WORKER_LEASE_S", LEASE)],
    );
    let first = new_id();
    let second = new_id();
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&first, json!({"delay_ms": 3000, "resource": "r1"})),
    )
    .await;
    wait_status(&mut conn, &first, "processing", Duration::from_secs(10)).await;
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&second, json!({"delay_ms": 10, "resource": "r1"})),
    )
    .await;
    stale.signal("STOP");
    let live = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "live", "--lease-s", LEASE],
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stale.signal("CONT");
    let done = wait_status(&mut conn, &first, "completed", Duration::from_secs(20)).await;
    assert_eq!(done["worker"], "live");
    wait_status(&mut conn, &second, "completed", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events.completions(&first), 1);
    assert!(
        events
            .of(&first)
            .iter()
            .all(|e| e["type"] != "task.cancelled"),
        "never cancelled"
    );
    assert_eq!(
        events.completed_order(),
        vec![first.clone(), second.clone()],
        "the recovered holder keeps its turn"
    );
    assert_one_place(&mut conn, &[first, second]).await;
    live.stop().await;
}

/// Scenario 3: Redis refuses writes for a while (NOREPLICAS); the task still completes.
#[tokio::test]
async fn a_task_completes_after_redis_refused_writes_for_a_while() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let running = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--lease-s", LEASE],
    ))
    .await;
    let id = new_id();
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&id, json!({"delay_ms": 1000})),
    )
    .await;
    wait_status(&mut conn, &id, "processing", Duration::from_secs(5)).await;
    config_set(&mut conn, "min-replicas-to-write", "1").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    config_set(&mut conn, "min-replicas-to-write", "0").await;
    wait_status(&mut conn, &id, "completed", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events.completions(&id), 1);
    assert_one_place(&mut conn, std::slice::from_ref(&id)).await;
    running.stop().await;
}

/// Scenario 4: the reply to a claim is lost after the script ran; the task is recovered when its
/// lease runs out and completes.
#[tokio::test]
async fn a_task_whose_claim_reply_was_lost_is_recovered_by_its_lease() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let proxy = Proxy::start(server.port).await;
    let running = worker::start(worker::config(
        &proxy.url(),
        queues.path(),
        &["--lease-s", LEASE],
    ))
    .await;
    // Idle, then every reply is lost: the claim runs on the server, the worker never hears of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.drop_replies();
    let id = new_id();
    push(&mut conn, "queue:dns:normal", &ping(&id, json!({}))).await;
    eventually("the task to be claimed", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        let id = id.clone();
        async move {
            let p = places(&mut conn).await;
            (p.get(&id).map(|v| v.as_slice()) == Some(&["in-flight".to_string()][..])).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.cut_and_heal();
    let done = wait_status(&mut conn, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(done["recoveries"], "1");
    assert_one_place(&mut conn, std::slice::from_ref(&id)).await;
    running.stop().await;
}

/// Scenario 5: SIGTERM while the put-back cannot reach Redis (the network swallows commands for
/// a while, then the worker's deregistration goes through): nothing is stranded.
#[tokio::test]
async fn sigterm_with_a_failing_command_during_drain_strands_nothing() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let proxy = Proxy::start(server.port).await;
    let mut leaving = WorkerProcess::spawn(
        &proxy.url(),
        queues.path(),
        &[
            ("WORKER_ID", "leaving"),
            ("WORKER_LEASE_S", LEASE),
            ("SHUTDOWN_GRACE_S", "0"),
        ],
    );
    let id = new_id();
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&id, json!({"delay_ms": 3000})),
    )
    .await;
    wait_status(&mut conn, &id, "processing", Duration::from_secs(10)).await;
    proxy.drop_requests();
    leaving.signal("TERM");
    tokio::time::sleep(Duration::from_secs(7)).await;
    proxy.cut_and_heal();
    assert!(
        leaving.wait_exit(Duration::from_secs(60)),
        "the worker exits even though its put-back failed"
    );
    let rescuer = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--lease-s", LEASE],
    ))
    .await;
    wait_status(&mut conn, &id, "completed", Duration::from_secs(30)).await;
    assert_one_place(&mut conn, std::slice::from_ref(&id)).await;
    rescuer.stop().await;
}

/// Scenario 6: tasks of one resource complete in enqueue order across several workers, so a
/// provision/delete series ends in the last task's state.
#[tokio::test]
async fn tasks_of_one_resource_complete_in_enqueue_order() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let workers = [
        worker::start(worker::config(
            &server.url(),
            queues.path(),
            &["--concurrency", "4"],
        ))
        .await,
        worker::start(worker::config(
            &server.url(),
            queues.path(),
            &["--concurrency", "4"],
        ))
        .await,
        worker::start(worker::config(
            &server.url(),
            queues.path(),
            &["--concurrency", "4"],
        ))
        .await,
    ];
    let mut series = Vec::new();
    for i in 0..26 {
        let id = new_id();
        let state = if i < 20 { "provisioned" } else { "deleted" };
        let delay = [5, 40, 0, 15][i % 4];
        push(
            &mut conn,
            "queue:provisioning:normal",
            &ping(
                &id,
                json!({"resource": "team-slug", "state": state, "delay_ms": delay}),
            ),
        )
        .await;
        series.push(id);
    }
    // Another resource interleaved, to keep every worker busy.
    let mut others = Vec::new();
    for _ in 0..10 {
        let id = new_id();
        push(
            &mut conn,
            "queue:provisioning:normal",
            &ping(&id, json!({"delay_ms": 20})),
        )
        .await;
        others.push(id);
    }
    for id in series.iter().chain(&others) {
        wait_status(&mut conn, id, "completed", Duration::from_secs(30)).await;
    }
    let order: Vec<String> = events
        .completed_order()
        .into_iter()
        .filter(|id| series.contains(id))
        .collect();
    assert_eq!(order, series, "completion order is enqueue order");
    let last = hash(&mut conn, series.last().unwrap()).await;
    let result: Value = serde_json::from_str(&last["result"]).unwrap();
    assert_eq!(result["echo"]["state"], "deleted");
    let all: Vec<String> = series.iter().chain(&others).cloned().collect();
    assert_one_place(&mut conn, &all).await;
    for w in workers {
        w.stop().await;
    }
}

/// Scenario 7: two processes with the same worker id never run one task twice.
#[tokio::test]
async fn two_workers_with_one_id_never_run_a_task_twice() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let a = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "twin", "--lease-s", LEASE],
    ))
    .await;
    let ids: Vec<String> = (0..8).map(|_| new_id()).collect();
    for id in &ids {
        push(
            &mut conn,
            "queue:dns:normal",
            &ping(id, json!({"delay_ms": 1500})),
        )
        .await;
    }
    wait_status(&mut conn, &ids[0], "processing", Duration::from_secs(5)).await;
    let b = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "twin", "--lease-s", LEASE],
    ))
    .await;
    for id in &ids {
        let done = wait_status(&mut conn, id, "completed", Duration::from_secs(20)).await;
        assert_eq!(done["attempts"], "1", "task {id} ran once");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        assert_eq!(events.completions(id), 1);
    }
    assert_one_place(&mut conn, &ids).await;
    a.stop().await;
    b.stop().await;
}

/// Scenario 7: idempotency keys are scoped by user and task type.
#[tokio::test]
async fn idempotency_keys_are_scoped_by_user() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let running = worker::start(worker::config(&server.url(), queues.path(), &[])).await;
    let task = |id: &str, user: &str| {
        json!({"id": id, "type": "system.ping", "user_id": user, "idempotency_key": "k1",
               "payload": {"who": user}})
        .to_string()
    };
    let first = new_id();
    push(&mut conn, "queue:dns:normal", &task(&first, "alice")).await;
    wait_status(&mut conn, &first, "completed", Duration::from_secs(5)).await;
    let same_user = new_id();
    push(&mut conn, "queue:dns:normal", &task(&same_user, "alice")).await;
    let dup = wait_status(&mut conn, &same_user, "completed", Duration::from_secs(5)).await;
    let dup: Value = serde_json::from_str(&dup["result"]).unwrap();
    assert_eq!(dup["duplicate_of"], first.as_str());
    let other_user = new_id();
    push(&mut conn, "queue:dns:normal", &task(&other_user, "bob")).await;
    let own = wait_status(&mut conn, &other_user, "completed", Duration::from_secs(5)).await;
    let own: Value = serde_json::from_str(&own["result"]).unwrap();
    assert!(own.get("duplicate_of").is_none(), "bob's task ran: {own}");
    assert_eq!(own["echo"]["who"], "bob");
    running.stop().await;
}

/// A single SIGKILL costs one attempt, never more (the count lives in the begin script).
#[tokio::test]
async fn a_single_kill_costs_one_attempt() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let ids: Vec<String> = (0..6).map(|_| new_id()).collect();
    let mut victim = WorkerProcess::spawn(
        &server.url(),
        queues.path(),
        &[("WORKER_LEASE_S", LEASE), ("WORKER_CONCURRENCY", "8")],
    );
    for id in &ids {
        push(
            &mut conn,
            "queue:dns:normal",
            &ping(id, json!({"delay_ms": 2000})),
        )
        .await;
    }
    for id in &ids {
        wait_status(&mut conn, id, "processing", Duration::from_secs(10)).await;
    }
    victim.kill9();
    let rescuers = [
        worker::start(worker::config(
            &server.url(),
            queues.path(),
            &["--lease-s", LEASE],
        ))
        .await,
        worker::start(worker::config(
            &server.url(),
            queues.path(),
            &["--lease-s", LEASE],
        ))
        .await,
    ];
    for id in &ids {
        let done = wait_status(&mut conn, id, "completed", Duration::from_secs(30)).await;
        assert_eq!(done["attempts"], "2", "task {id}");
    }
    assert_one_place(&mut conn, &ids).await;
    for r in rescuers {
        r.stop().await;
    }
    let _ = Instant::now();
}

/// Randomized: a few hundred tasks on three worker processes while workers are SIGKILLed and
/// stalled past their lease, Redis restarts (AOF) and refuses writes for a while, and tasks fail
/// their first attempt. Every task ends in exactly one place, completes exactly once, and the
/// tasks of each resource complete in enqueue order. The seed is printed (`DELIVERY_SEED` replays).
#[tokio::test]
async fn randomized_faults_lose_nothing_run_everything_once_and_keep_resource_order() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::HashMap;

    let seed: u64 = std::env::var("DELIVERY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("DELIVERY_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let url = server.url();
    let spawn = |n: usize| {
        let id = format!("chaos-{n}");
        WorkerProcess::spawn(
            &url,
            queues.path(),
            &[
                ("WORKER_ID", id.as_str()),
                ("WORKER_LEASE_S", LEASE),
                ("MAX_RECOVERIES", "50"),
                ("WORKER_CONCURRENCY", "8"),
                ("RUST_LOG", "error"),
            ],
        )
    };
    let mut workers: Vec<WorkerProcess> = (0..3).map(spawn).collect();
    let lists = common::tasks::LISTS;
    let mut all = Vec::new();
    let mut by_resource: HashMap<String, Vec<String>> = HashMap::new();
    let started = Instant::now();
    for _round in 0..10 {
        for _ in 0..30 {
            let id = new_id();
            let mut payload = json!({"delay_ms": rng.random_range(0..60)});
            if rng.random_bool(0.15) {
                payload["succeed_on_attempt"] = json!(2);
            }
            let list = if rng.random_bool(0.6) {
                // Tasks of one resource share a list: order is per list (priority across lists).
                let r = rng.random_range(0..6usize);
                payload["resource"] = json!(format!("r{r}"));
                by_resource
                    .entry(format!("r{r}"))
                    .or_default()
                    .push(id.clone());
                lists[r]
            } else {
                lists[rng.random_range(0..lists.len())]
            };
            let body = json!({"id": id, "type": "system.ping", "user_id": "chaos",
                              "max_attempts": 10, "payload": payload});
            push(&mut conn, list, &body.to_string()).await;
            all.push(id);
        }
        match rng.random_range(0..4) {
            0 => {
                let n = rng.random_range(0..workers.len());
                workers[n].kill9();
                workers[n] = spawn(n);
            }
            1 => {
                let n = rng.random_range(0..workers.len());
                workers[n].signal("STOP");
                tokio::time::sleep(Duration::from_millis(3000)).await;
                workers[n].signal("CONT");
            }
            2 => {
                // Workers are held while Redis is down so the test's subscriber is back before
                // anything completes again (what it counts is events, which Redis does not keep).
                for w in &workers {
                    w.signal("STOP");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                server.restart();
                conn = server.conn().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                for w in &workers {
                    w.signal("CONT");
                }
            }
            _ => {
                config_set(&mut conn, "min-replicas-to-write", "1").await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                config_set(&mut conn, "min-replicas-to-write", "0").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
    }
    loop {
        let mut open = Vec::new();
        for id in &all {
            if hash(&mut conn, id).await.get("status").map(String::as_str) != Some("completed") {
                open.push(id.clone());
            }
        }
        if open.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(100) {
            let found = places(&mut conn).await;
            for id in open.iter().take(5) {
                eprintln!(
                    "stuck {id}: {:?} in {:?}",
                    hash(&mut conn, id).await,
                    found.get(id)
                );
            }
            let state: HashMap<String, String> = redis::cmd("HGETALL")
                .arg("{orch}:locks")
                .query_async(&mut conn)
                .await
                .unwrap();
            eprintln!("locks: {state:?}");
            panic!("{} tasks never completed (seed {seed})", open.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &all {
        assert_eq!(
            events.completions(id),
            1,
            "task {id} completed once (seed {seed})"
        );
    }
    let order = events.completed_order();
    for (resource, enqueued) in &by_resource {
        let completed: Vec<&String> = order.iter().filter(|id| enqueued.contains(id)).collect();
        let expected: Vec<&String> = enqueued.iter().collect();
        assert_eq!(completed, expected, "order of {resource} (seed {seed})");
    }
    assert_one_place(&mut conn, &all).await;
    drop(workers);
}
