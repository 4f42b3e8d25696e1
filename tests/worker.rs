//! The worker core against a real Redis: priority and FIFO, at-least-once under SIGKILL, a Redis
//! restart, bad input, retries, cancellation, idempotency, per-resource locks, graceful shutdown.

mod common;

use futures::StreamExt;
use std::time::{Duration, Instant};

use common::tasks::{Events, dead_entries, hash, new_id, ping, push, wait_status};
use common::worker::{self, WorkerProcess};
use common::{RedisServer, eventually};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

async fn zscore(conn: &mut MultiplexedConnection, key: &str, member: &str) -> Option<f64> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query_async(conn)
        .await
        .unwrap()
}

async fn llen(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn strict_priority_then_fifo_and_a_complete_progress_hash() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let normal: Vec<String> = (0..3).map(|_| new_id()).collect();
    let high: Vec<String> = (0..2).map(|_| new_id()).collect();
    for id in &normal {
        push(&mut conn, "queue:provisioning:normal", &ping(id, json!({}))).await;
    }
    for id in &high {
        push(&mut conn, "queue:dns:high", &ping(id, json!({}))).await;
    }
    let config = worker::config(&server.url(), queues.path(), &["--concurrency", "1"]);
    let running = worker::start(config).await;
    let last = normal.last().unwrap();
    let done = wait_status(&mut conn, last, "completed", Duration::from_secs(10)).await;
    let expected: Vec<String> = high.iter().chain(normal.iter()).cloned().collect();
    eventually("all completed events", Duration::from_secs(5), || async {
        (events.completed_order().len() == 5).then_some(())
    })
    .await;
    assert_eq!(events.completed_order(), expected);

    for field in [
        "id",
        "type",
        "status",
        "step",
        "total_steps",
        "message",
        "percentage",
        "created_at",
        "updated_at",
        "attempts",
        "error",
        "result",
        "worker",
        "seq",
    ] {
        assert!(
            done.contains_key(field),
            "progress hash lacks {field}: {done:?}"
        );
    }
    assert_eq!(done["percentage"], "100");
    assert_eq!(done["attempts"], "1");
    let result: Value = serde_json::from_str(&done["result"]).unwrap();
    assert_eq!(result["pong"], true);
    assert!(chrono::DateTime::parse_from_rfc3339(&done["updated_at"]).is_ok());
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("task:{last}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "ttl {ttl}");
    // Every event carries a seq that grows, and the last equals the hash's.
    let seqs: Vec<u64> = events
        .of(last)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        seqs.last().copied(),
        done["seq"].parse::<u64>().ok(),
        "hash seq matches the last event"
    );
    running.stop().await;
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_reason_and_the_worker_goes_on() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let mut channel = server.client().get_async_pubsub().await.unwrap();
    channel.subscribe("tasks:mallory").await.unwrap();
    let config = worker::config(&server.url(), queues.path(), &["--max-task-bytes", "2048"]);
    let running = worker::start(config).await;

    let schema_id = new_id();
    let cases: Vec<(&str, String, &str)> = vec![
        ("queue:dns:high", "{not json".into(), "not valid JSON"),
        (
            "queue:dns:high",
            json!({"type": "team.explode", "user_id": "mallory"}).to_string(),
            "unknown task type team.explode",
        ),
        (
            "queue:dns:normal",
            json!({"id": schema_id, "type": "system.ping", "user_id": "mallory",
                   "payload": {"delay_ms": "soon"}})
            .to_string(),
            "does not match the system.ping schema",
        ),
        (
            "queue:provisioning:high",
            json!({"type": "system.ping", "user_id": "mallory",
                   "payload": {"resource": "Team`) || Host(`evil"}})
            .to_string(),
            "does not match the system.ping schema",
        ),
        (
            "queue:dns:normal",
            json!({"type": "system.ping", "payload": {"fail": "x".repeat(400)},
                   "padding": "y".repeat(3000)})
            .to_string(),
            "over the limit of 2048",
        ),
        (
            "queue:provisioning:normal",
            json!({"type": "test.no_handler", "user_id": "mallory", "payload": {"n": 1}})
                .to_string(),
            "does not belong on queue:provisioning:normal",
        ),
        (
            "queue:dns:normal",
            json!({"type": "test.no_handler", "user_id": "mallory"}).to_string(),
            "no handler for task type test.no_handler",
        ),
        (
            "queue:dns:normal",
            json!({"id": "42", "type": "system.ping"}).to_string(),
            "is not a UUID",
        ),
        (
            "queue:dns:normal",
            json!({"type": "system.ping", "payload": [1, 2]}).to_string(),
            "must be a JSON object",
        ),
    ];
    for (list, body, _) in &cases {
        push(&mut conn, list, body).await;
    }
    let good = new_id();
    push(&mut conn, "queue:dns:normal", &ping(&good, json!({}))).await;
    wait_status(&mut conn, &good, "completed", Duration::from_secs(10)).await;

    let dead = eventually(
        "every bad task dead-lettered",
        Duration::from_secs(5),
        || {
            let mut conn = conn.clone();
            let n = cases.len();
            async move {
                let dead = dead_entries(&mut conn).await;
                (dead.len() == n).then_some(dead)
            }
        },
    )
    .await;
    for (list, body, reason) in &cases {
        let entry = dead
            .iter()
            .find(|e| e["body"] == *body)
            .unwrap_or_else(|| panic!("no dead-letter entry keeps the body {body}"));
        assert!(
            entry["reason"].as_str().unwrap().contains(reason),
            "{} lacks {reason}",
            entry["reason"]
        );
        assert_eq!(entry["queue"], *list);
        assert!(entry["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    // The schema failure is visible in the task's hash and was announced on its channel.
    let failed = hash(&mut conn, &schema_id).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].contains("/delay_ms"), "{}", failed["error"]);
    let mut stream = channel.on_message();
    let mut announced = 0;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        let event: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        if event["type"] == "task.failed" {
            announced += 1;
        }
    }
    assert_eq!(announced, 5, "failures announced on tasks:mallory");
    drop(stream);
    running.stop().await;
}

#[tokio::test]
async fn retries_back_off_then_succeed_or_give_up_into_the_dead_letter_list() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let running = worker::start(worker::config(&server.url(), queues.path(), &[])).await;

    let flaky = new_id();
    let body = json!({"id": flaky, "type": "system.ping", "max_attempts": 5,
                      "payload": {"succeed_on_attempt": 3}});
    push(&mut conn, "queue:dns:normal", &body.to_string()).await;
    let done = wait_status(&mut conn, &flaky, "completed", Duration::from_secs(10)).await;
    assert_eq!(done["attempts"], "3");
    let retrying: Vec<Value> = events
        .of(&flaky)
        .into_iter()
        .filter(|e| e["status"] == "retrying")
        .collect();
    assert_eq!(retrying.len(), 2, "two retries announced");
    assert!(
        retrying[0]["error"]
            .as_str()
            .unwrap()
            .contains("failing attempt 1")
    );

    let doomed = new_id();
    let body = json!({"id": doomed, "type": "system.ping", "max_attempts": 2,
                      "payload": {"fail": "the CA is down"}});
    push(&mut conn, "queue:certificates:high", &body.to_string()).await;
    let failed = wait_status(&mut conn, &doomed, "failed", Duration::from_secs(10)).await;
    assert_eq!(failed["attempts"], "2");
    assert!(failed["error"].contains("the CA is down (gave up after 2 attempts)"));
    let dead = dead_entries(&mut conn).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], doomed.as_str());
    assert_eq!(dead[0]["queue"], "queue:certificates:high");

    // Backoff: the gap between the first failure and the second start is at least ~base/2.
    let seen = events.seen.lock().unwrap().clone();
    let times: Vec<Instant> = seen
        .iter()
        .filter(|(_, e)| {
            e["task_id"] == doomed.as_str()
                && (e["status"] == "retrying" || e["status"] == "processing")
        })
        .map(|(t, _)| *t)
        .collect();
    assert!(times.len() >= 3);
    assert!(
        times[2] - times[1] >= Duration::from_millis(45),
        "{:?}",
        times[2] - times[1]
    );

    // A timeout is a failed attempt too.
    let slow = new_id();
    let body = json!({"id": slow, "type": "system.ping", "max_attempts": 1, "timeout_s": 1,
                      "payload": {"delay_ms": 10000}});
    push(&mut conn, "queue:dns:high", &body.to_string()).await;
    let failed = wait_status(&mut conn, &slow, "failed", Duration::from_secs(10)).await;
    assert!(
        failed["error"].contains("timed out after 1 s"),
        "{}",
        failed["error"]
    );
    running.stop().await;
}

#[tokio::test]
async fn cancellation_stops_a_running_task_and_a_queued_one() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let pool = orchestrator::connections::pool(&server.url(), 2).unwrap();

    // Cancelled while queued (no worker yet): it never runs.
    let queued = new_id();
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&queued, json!({"delay_ms": 5000})),
    )
    .await;
    let _: () = redis::cmd("HSET")
        .arg(format!("task:{queued}"))
        .arg("status")
        .arg("queued")
        .query_async(&mut conn)
        .await
        .unwrap();
    orchestrator::admin::cancel(&pool, &queued).await.unwrap();

    let running = worker::start(worker::config(&server.url(), queues.path(), &[])).await;
    let cancelled = wait_status(&mut conn, &queued, "cancelled", Duration::from_secs(5)).await;
    // Its handler runs with a cancelled context (so a redelivered task's rollback runs) and stops
    // before its first step.
    assert_eq!(cancelled["step"], "0");

    let busy = new_id();
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&busy, json!({"delay_ms": 20000})),
    )
    .await;
    wait_status(&mut conn, &busy, "processing", Duration::from_secs(5)).await;
    let asked = Instant::now();
    orchestrator::admin::cancel(&pool, &busy).await.unwrap();
    let cancelled = wait_status(&mut conn, &busy, "cancelled", Duration::from_secs(5)).await;
    assert!(asked.elapsed() < Duration::from_secs(2));
    assert!(cancelled["message"].contains("cancelled by request"));
    assert_eq!(
        dead_entries(&mut conn).await.len(),
        0,
        "a cancel is not a failure"
    );
    assert!(matches!(
        orchestrator::admin::cancel(&pool, &busy).await,
        Err(orchestrator::admin::AdminError::AlreadyFinished { .. })
    ));
    running.stop().await;
}

#[tokio::test]
async fn a_second_task_with_the_same_idempotency_key_reports_the_first_result() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let running = worker::start(worker::config(&server.url(), queues.path(), &[])).await;
    let first = new_id();
    let second = new_id();
    let body = |id: &str, marker: &str| {
        json!({"id": id, "type": "system.ping", "idempotency_key": "provision-acme-1",
               "payload": {"delay_ms": 300, "marker": marker}})
        .to_string()
    };
    push(&mut conn, "queue:dns:normal", &body(&first, "first")).await;
    wait_status(&mut conn, &first, "processing", Duration::from_secs(5)).await;
    // Delivered while the first still runs: it waits for it rather than running twice.
    push(&mut conn, "queue:dns:normal", &body(&second, "second")).await;
    let one = wait_status(&mut conn, &first, "completed", Duration::from_secs(10)).await;
    let two = wait_status(&mut conn, &second, "completed", Duration::from_secs(10)).await;
    let first_result: Value = serde_json::from_str(&one["result"]).unwrap();
    let second_result: Value = serde_json::from_str(&two["result"]).unwrap();
    assert_eq!(first_result["echo"]["marker"], "first", "the first one ran");
    assert_eq!(second_result["duplicate_of"], first.as_str());
    assert_eq!(second_result["result"], first_result);
    running.stop().await;
}

#[tokio::test]
async fn two_workers_never_run_one_resource_at_once_while_others_proceed() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let events = Events::start(&server).await;
    let a = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "wa", "--concurrency", "4"],
    ))
    .await;
    let b = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "wb", "--concurrency", "4"],
    ))
    .await;
    let team_a: Vec<String> = (0..5).map(|_| new_id()).collect();
    let team_b: Vec<String> = (0..2).map(|_| new_id()).collect();
    for id in &team_a {
        push(
            &mut conn,
            "queue:provisioning:normal",
            &ping(id, json!({"delay_ms": 150, "resource": "team-a"})),
        )
        .await;
    }
    for id in &team_b {
        push(
            &mut conn,
            "queue:provisioning:normal",
            &ping(id, json!({"delay_ms": 150, "resource": "team-b"})),
        )
        .await;
    }
    for id in team_a.iter().chain(team_b.iter()) {
        let done = wait_status(&mut conn, id, "completed", Duration::from_secs(20)).await;
        assert_eq!(
            done["attempts"], "1",
            "waiting for a lock is not an attempt"
        );
    }
    let mut spans: Vec<(Instant, Instant)> = team_a.iter().map(|id| events.span(id)).collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two team-a tasks overlapped: {pair:?}"
        );
    }
    let b_span = events.span(&team_b[0]);
    let a_total = (spans[0].0, spans.last().unwrap().1);
    assert!(
        b_span.0 < a_total.1 && b_span.1 > a_total.0,
        "team-b ran while team-a was busy"
    );
    let workers: std::collections::HashSet<String> = {
        let mut set = std::collections::HashSet::new();
        for id in &team_a {
            set.insert(hash(&mut conn, id).await["worker"].clone());
        }
        set
    };
    assert!(!workers.is_empty());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_task_survives_its_worker_being_killed_with_sigkill() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let mut victim = WorkerProcess::spawn(
        &server.url(),
        queues.path(),
        &[("WORKER_ID", "victim"), ("WORKER_LEASE_S", "2")],
    );
    let id = new_id();
    push(
        &mut conn,
        "queue:provisioning:high",
        &ping(&id, json!({"delay_ms": 3000})),
    )
    .await;
    let running = wait_status(&mut conn, &id, "processing", Duration::from_secs(10)).await;
    assert_eq!(running["worker"], "victim");
    victim.kill9();
    assert!(
        zscore(&mut conn, "{orch}:leases", &id).await.is_some(),
        "the task is held in flight under the dead worker's lease, not lost"
    );

    let rescuer = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "rescuer", "--lease-s", "2"],
    ))
    .await;
    let done = wait_status(&mut conn, &id, "completed", Duration::from_secs(20)).await;
    assert_eq!(done["attempts"], "2");
    assert_eq!(done["recoveries"], "1");
    assert_eq!(
        done["worker"], "rescuer",
        "the hash names the worker that finished it"
    );
    assert!(zscore(&mut conn, "{orch}:leases", &id).await.is_none());
    let workers: Vec<String> = redis::cmd("SMEMBERS")
        .arg("workers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        workers,
        vec!["rescuer".to_string()],
        "the dead worker was deregistered"
    );
    rescuer.stop().await;
}

#[tokio::test]
async fn a_task_whose_workers_keep_dying_is_dead_lettered_as_a_poison_pill() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let id = new_id();
    let body = ping(&id, json!({}));
    // A worker that died holding the task (its lease ran out), which has already been recovered
    // three times.
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("{orch}:claims")
        .arg(&id)
        .arg("7|0|ghost")
        .ignore()
        .cmd("ZADD")
        .arg("{orch}:leases")
        .arg(0)
        .arg(&id)
        .ignore()
        .cmd("HSET")
        .arg("{orch}:bodies")
        .arg(&id)
        .arg(&body)
        .ignore()
        .cmd("HSET")
        .arg("{orch}:origin")
        .arg(&id)
        .arg("queue:dns:normal")
        .ignore()
        .cmd("HSET")
        .arg(format!("task:{id}"))
        .arg("recoveries")
        .arg(3)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let running = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--lease-s", "2", "--max-recoveries", "3"],
    ))
    .await;
    let failed = wait_status(&mut conn, &id, "failed", Duration::from_secs(10)).await;
    assert!(failed["error"].contains("poison pill"));
    let dead = dead_entries(&mut conn).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["body"], body.as_str());
    assert_eq!(llen(&mut conn, "queue:dns:normal").await, 0);
    running.stop().await;
}

#[tokio::test]
async fn the_worker_rides_out_a_redis_restart_without_losing_tasks() {
    // The worker's logs are shown if this fails (they say which Redis call it was waiting on).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("orchestrator=debug")
        .with_test_writer()
        .try_init();
    let mut server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let running = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--concurrency", "4"],
    ))
    .await;
    let before: Vec<String> = (0..40).map(|_| new_id()).collect();
    for id in &before {
        push(
            &mut conn,
            "queue:dns:normal",
            &ping(id, json!({"delay_ms": 30})),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.restart();
    let mut conn = server.conn().await;
    let after: Vec<String> = (0..10).map(|_| new_id()).collect();
    for id in &after {
        push(&mut conn, "queue:dns:high", &ping(id, json!({}))).await;
    }
    for id in before.iter().chain(after.iter()) {
        wait_status(&mut conn, id, "completed", Duration::from_secs(30)).await;
    }
    assert_eq!(dead_entries(&mut conn).await.len(), 0);
    running.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_short_tasks_and_puts_long_ones_back() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let running = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--shutdown-grace-s", "1"],
    ))
    .await;
    let short = new_id();
    let long = new_id();
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&short, json!({"delay_ms": 300})),
    )
    .await;
    push(
        &mut conn,
        "queue:dns:normal",
        &ping(&long, json!({"delay_ms": 30000})),
    )
    .await;
    wait_status(&mut conn, &long, "processing", Duration::from_secs(5)).await;
    let worker_id = running.id.clone();
    running.stop().await;
    assert_eq!(hash(&mut conn, &short).await["status"], "completed");
    let put_back = hash(&mut conn, &long).await;
    assert_eq!(put_back["status"], "queued");
    assert_eq!(
        put_back["attempts"], "0",
        "an interrupted attempt is not counted"
    );
    assert_eq!(llen(&mut conn, "queue:dns:normal").await, 1);
    assert_eq!(
        llen(
            &mut conn,
            &format!("processing:{worker_id}:queue:dns:normal")
        )
        .await,
        0
    );
    let alive: bool = redis::cmd("EXISTS")
        .arg(format!("worker:{worker_id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!alive, "heartbeat removed on a clean exit");
}

#[tokio::test]
async fn dead_letters_can_be_retried_and_purged() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let pool = orchestrator::connections::pool(&server.url(), 2).unwrap();
    let running = worker::start(worker::config(&server.url(), queues.path(), &[])).await;
    let id = new_id();
    let body = json!({"id": id, "type": "system.ping", "max_attempts": 1,
                      "payload": {"fail": "boom"}});
    push(&mut conn, "queue:dns:normal", &body.to_string()).await;
    wait_status(&mut conn, &id, "failed", Duration::from_secs(5)).await;
    let listed = orchestrator::admin::dead_list(&pool, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    let retried = orchestrator::admin::dead_retry(&pool, Some(&id))
        .await
        .unwrap();
    assert_eq!(retried, vec![id.clone()]);
    // It runs again (and fails again, attempts counted afresh).
    let again = wait_status(&mut conn, &id, "failed", Duration::from_secs(5)).await;
    assert_eq!(again["attempts"], "1");
    assert_eq!(orchestrator::admin::dead_purge(&pool).await.unwrap(), 1);
    assert_eq!(dead_entries(&mut conn).await.len(), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_worker_restarted_under_its_id_hands_back_what_its_previous_life_held() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let id = new_id();
    // What a SIGKILLed `fixed` left behind; its heartbeat would be fresh again at once.
    push(
        &mut conn,
        "processing:fixed:queue:dns:high",
        &ping(&id, json!({})),
    )
    .await;
    // And what an older build kept in its delayed set (members `<list>\n<body>`).
    let delayed = new_id();
    let _: i64 = redis::cmd("ZADD")
        .arg("queue:delayed")
        .arg(0)
        .arg(format!("queue:dns:normal\n{}", ping(&delayed, json!({}))))
        .query_async(&mut conn)
        .await
        .unwrap();
    let running = worker::start(worker::config(
        &server.url(),
        queues.path(),
        &["--worker-id", "fixed"],
    ))
    .await;
    let done = wait_status(&mut conn, &id, "completed", Duration::from_secs(5)).await;
    assert_eq!(done["worker"], "fixed");
    wait_status(&mut conn, &delayed, "completed", Duration::from_secs(5)).await;
    assert_eq!(llen(&mut conn, "processing:fixed:queue:dns:high").await, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_task_whose_outcome_redis_refuses_is_dead_lettered_not_stuck() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let running = worker::start(worker::config(&server.url(), queues.path(), &[])).await;
    let id = new_id();
    // Something else owns `task:<id>` as a plain string: every hash write fails with WRONGTYPE.
    let _: () = redis::cmd("SET")
        .arg(format!("task:{id}"))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    push(&mut conn, "queue:dns:normal", &ping(&id, json!({}))).await;
    let dead = eventually("the task dead-lettered", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move {
            let dead = dead_entries(&mut conn).await;
            (!dead.is_empty()).then_some(dead)
        }
    })
    .await;
    assert_eq!(dead[0]["id"], id.as_str());
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Redis refused")
    );
    assert_eq!(llen(&mut conn, "queue:dns:normal").await, 0);
    // And the worker goes on.
    let next = new_id();
    push(&mut conn, "queue:dns:normal", &ping(&next, json!({}))).await;
    wait_status(&mut conn, &next, "completed", Duration::from_secs(5)).await;
    running.stop().await;
}

/// Calls of `commands` so far (`INFO commandstats`).
async fn calls(conn: &mut MultiplexedConnection, commands: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| commands.contains(name))
        .filter_map(|(_, fields)| fields.strip_prefix("calls=")?.split(',').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// No herd: with several idle workers, a push wakes one of them (one blocking wait returns and
/// one script claims the task), not every idle worker. Counted with `INFO commandstats`, beside
/// what the same workers issue while nothing is pushed.
#[tokio::test]
async fn one_push_wakes_one_idle_worker() {
    let server = RedisServer::start();
    let queues = worker::quick_queues();
    let mut conn = server.conn().await;
    let workers: Vec<WorkerProcess> = (0..4)
        .map(|n| {
            WorkerProcess::spawn(
                &server.url(),
                queues.path(),
                &[
                    ("WORKER_ID", format!("idle-{n}").as_str()),
                    ("WORKER_CONCURRENCY", "2"),
                ],
            )
        })
        .collect();
    // Every worker up and idle (the first task is taken by one of them).
    let first = new_id();
    push(&mut conn, "queue:dns:normal", &ping(&first, json!({}))).await;
    wait_status(&mut conn, &first, "completed", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let blocking = ["blmove", "blpop", "brpop", "brpoplpush", "blmpop"];
    let scripts = ["evalsha", "eval"];
    let span = Duration::from_secs(2);
    let (pops, runs) = (
        calls(&mut conn, &blocking).await,
        calls(&mut conn, &scripts).await,
    );
    tokio::time::sleep(span).await;
    let idle_pops = calls(&mut conn, &blocking).await - pops;
    let idle_runs = calls(&mut conn, &scripts).await - runs;

    let pushes = 20;
    let started = Instant::now();
    let (pops, runs) = (
        calls(&mut conn, &blocking).await,
        calls(&mut conn, &scripts).await,
    );
    for _ in 0..pushes {
        let id = new_id();
        push(&mut conn, "queue:dns:normal", &ping(&id, json!({}))).await;
        wait_status(&mut conn, &id, "completed", Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scale = started.elapsed().as_secs_f64() / span.as_secs_f64();
    let pops = calls(&mut conn, &blocking).await - pops;
    let runs = calls(&mut conn, &scripts).await - runs;
    let per_push = |busy: u64, idle: u64| (busy as f64 - idle as f64 * scale) / pushes as f64;
    let (pops, runs) = (per_push(pops, idle_pops), per_push(runs, idle_runs));
    eprintln!("per push: {pops:.2} blocking waits returned, {runs:.2} scripts");
    // One wake-up per push (every idle worker woke before: about four with four workers), and
    // the pickup plus the finish (every idle worker claimed before: six or more).
    assert!(pops < 2.0, "{pops:.2} blocking waits per push");
    assert!(runs < 4.0, "{runs:.2} scripts per push");
    drop(workers);
}
