//! The admin console against real components: Redis, a real worker (in-process, `app::start_worker`
//! with `CONSOLE_ADDR`), the Docker engine for a provision, and a real headless Chromium driven
//! over WebDriver (chromedriver). API tests read the wire: the guard's refusals (CSRF, token,
//! cross-site, read-only) and event streams resumed with `Last-Event-ID`.
//!
//! Screenshots of the overview and of a task's page land in `target/console-screenshots/`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::browser::{Driver, SseStream, click, count, http, screenshot, text, wait_text};
use common::docker::{Cleanup, build_images, root, unique_slug};
use common::worker::repo_path;
use common::{RedisServer, eventually};
use orchestrator::admin::{self, NewTask};
use orchestrator::progress::{self, Update};
use orchestrator::queues::Definitions;
use orchestrator::shutdown::Shutdown;
use orchestrator::task::{Task, TaskStatus};
use serde_json::{Value, json};

const TOKEN: &str = "console-test-token";

/// One browser at a time: two Chromium instances on two cores slow every other test down.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A console alone (no worker), stopped on drop.
struct Console {
    addr: SocketAddr,
    shutdown: Shutdown,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn config(redis: &RedisServer, queues: &Path, extra: &[&str]) -> orchestrator::config::Config {
    let mut flags = vec!["--renewal-scheduler", "false"];
    flags.extend_from_slice(extra);
    common::worker::config(&redis.url(), queues, &flags)
}

/// Waits until `consoles` consoles relay pub/sub (their subscriptions are in place).
async fn relaying(redis: &RedisServer, consoles: i64) {
    let conn = redis.conn().await;
    eventually("the console to subscribe", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            // Subscribers of one of its channels (NUMPAT would count distinct patterns).
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("team:status")
                .query_async(&mut conn)
                .await
                .ok()?;
            (n >= consoles).then_some(())
        }
    })
    .await;
}

async fn start_console(redis: &RedisServer, extra: &[&str]) -> Console {
    let queues = repo_path("queues");
    let mut flags = vec!["--console-addr", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    let config = Arc::new(config(redis, &queues, &flags));
    let services = orchestrator::app::services(config).await.expect("services");
    let definitions = Arc::new(Definitions::load(&queues).expect("queues"));
    let shutdown = Shutdown::new();
    let running = orchestrator::console::start(services, definitions, shutdown.clone())
        .await
        .expect("start the console");
    relaying(redis, 1).await;
    Console {
        addr: running.addr,
        shutdown,
    }
}

async fn csrf(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/api/session", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    session["csrf"].as_str().unwrap().to_string()
}

/// A dead-letter entry as a worker writes it, for a `system.ping` from `queue:dns:normal`.
async fn dead_letter(redis: &RedisServer) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let entry = orchestrator::queue::DeadLetter {
        id: id.clone(),
        task_type: Some("system.ping".into()),
        queue: "queue:dns:normal".into(),
        reason: "failed on purpose".into(),
        failed_at: progress::now(),
        attempts: 1,
        body: json!({"id": id, "type": "system.ping", "payload": {}}).to_string(),
    };
    let mut conn = redis.conn().await;
    let _: i64 = redis::cmd("LPUSH")
        .arg("queue:dead")
        .arg(serde_json::to_string(&entry).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    id
}

async fn llen(redis: &RedisServer, key: &str) -> i64 {
    let mut conn = redis.conn().await;
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// A task for `user_id` as the CLI enqueues it: no idempotency key, its type's attempts and timeout.
fn new_task(task_type: &str, payload: Value, priority: &str, user_id: &str) -> NewTask {
    NewTask {
        task_type: task_type.into(),
        payload,
        priority: priority.into(),
        user_id: Some(user_id.into()),
        idempotency_key: None,
        max_attempts: None,
        timeout_s: None,
    }
}

/// Enqueues `task` the way the CLI does (admin API, the repository's queue declarations); its id.
async fn enqueue(redis: &RedisServer, task: NewTask) -> String {
    let definitions = Definitions::load(&repo_path("queues")).unwrap();
    let pool = orchestrator::connections::pool(&redis.url(), 2).unwrap();
    admin::enqueue(&pool, &definitions, task).await.unwrap()
}

/// Opens the console page `#/<route>` and waits (10 s at most) until `css` contains `needle`;
/// returns that element's text.
async fn open_page(
    browser: &fantoccini::Client,
    addr: SocketAddr,
    route: &str,
    css: &str,
    needle: &str,
) -> String {
    browser
        .goto(&format!("http://{addr}/#/{route}"))
        .await
        .unwrap();
    wait_text(browser, css, needle, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_csrf_token_and_the_admin_token() {
    let redis = RedisServer::start();
    let console = start_console(&redis, &["--console-token", TOKEN]).await;
    let addr = console.addr;
    dead_letter(&redis).await;
    let csrf = csrf(addr).await;
    let bearer = format!("Bearer {TOKEN}");
    let origin = format!("http://{addr}");
    let post = |headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(addr, "POST", "/api/dead/retry", &headers, r#"{"all":true}"#).await
    };

    // Reading needs nothing.
    for path in [
        "/",
        "/api/overview",
        "/api/dead",
        "/api/tasks",
        "/api/workers",
        "/api/types",
    ] {
        let (status, body) = http(addr, "GET", path, &[], "").await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let (status, body) = post(vec![]).await;
    assert_eq!((status, body.contains("CSRF")), (403, true), "{body}");
    let (status, body) = post(vec![("X-CSRF-Token", csrf.clone())]).await;
    assert_eq!(
        (status, body.contains("token is required")),
        (401, true),
        "{body}"
    );
    let (status, _) = post(vec![
        ("X-CSRF-Token", csrf.clone()),
        ("Authorization", "Bearer wrong".into()),
    ])
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(vec![
        ("X-CSRF-Token", "forged".into()),
        ("Authorization", bearer.clone()),
    ])
    .await;
    assert_eq!(status, 403);
    let (status, body) = post(vec![
        ("X-CSRF-Token", csrf.clone()),
        ("Authorization", bearer.clone()),
        ("Origin", "http://evil.example".into()),
    ])
    .await;
    assert_eq!((status, body.contains("cross-site")), (403, true), "{body}");
    let (status, _) = post(vec![
        ("X-CSRF-Token", csrf.clone()),
        ("Authorization", bearer.clone()),
        ("Sec-Fetch-Site", "cross-site".into()),
    ])
    .await;
    assert_eq!(status, 403);
    // Nothing was retried by the refused requests.
    assert_eq!(llen(&redis, "queue:dead").await, 1);
    assert_eq!(llen(&redis, "queue:dns:normal").await, 0);

    let (status, body) = post(vec![
        ("X-CSRF-Token", csrf.clone()),
        ("Authorization", bearer),
        ("Origin", origin),
        ("Sec-Fetch-Site", "same-origin".into()),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(llen(&redis, "queue:dead").await, 0);
    assert_eq!(llen(&redis, "queue:dns:normal").await, 1);

    // Enqueue validates like the worker: the type's schema names what is wrong.
    let admin = format!("Bearer {TOKEN}");
    let good = [
        ("X-CSRF-Token", csrf.as_str()),
        ("Authorization", admin.as_str()),
    ];
    let (status, body) = http(
        addr,
        "POST",
        "/api/tasks",
        &good,
        r#"{"type":"team.provision","payload":{"slug":"Not A Label"}}"#,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("/slug"), "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/api/tasks",
        &good,
        r#"{"type":"system.ping","priority":"high","payload":{"delay_ms":5}}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, detail) = http(addr, "GET", &format!("/api/tasks/{id}"), &[], "").await;
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["task"]["status"], "queued");
    assert_eq!(detail["envelope"]["body"]["payload"]["delay_ms"], 5);

    // The page carries the same CSRF token, and nothing secret.
    let (_, page) = http(addr, "GET", "/", &[], "").await;
    assert!(page.contains(&csrf));
    let (_, session) = http(addr, "GET", "/api/session", &[], "").await;
    assert!(
        !session.contains(TOKEN) && !session.contains("redis://"),
        "{session}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_consoles_refuse_every_action() {
    let redis = RedisServer::start();
    let read_only = start_console(&redis, &["--console-token", TOKEN, "--console-read-only"]).await;
    let no_token = start_console(&redis, &[]).await;
    dead_letter(&redis).await;
    for console in [&read_only, &no_token] {
        let (_, session) = http(console.addr, "GET", "/api/session", &[], "").await;
        let session: Value = serde_json::from_str(&session).unwrap();
        assert_eq!(session["actions"], false);
        let csrf = csrf(console.addr).await;
        let bearer = format!("Bearer {TOKEN}");
        let headers = [
            ("X-CSRF-Token", csrf.as_str()),
            ("Authorization", bearer.as_str()),
        ];
        let (status, body) = http(
            console.addr,
            "POST",
            "/api/dead/retry",
            &headers,
            r#"{"all":true}"#,
        )
        .await;
        assert_eq!((status, body.contains("read-only")), (403, true), "{body}");
        let (status, _) = http(
            console.addr,
            "POST",
            "/api/tasks",
            &headers,
            r#"{"type":"system.ping","payload":{}}"#,
        )
        .await;
        assert_eq!(status, 403);
    }
    assert_eq!(llen(&redis, "queue:dead").await, 1);
}

fn task(id: &str) -> Task {
    Task {
        id: id.to_string(),
        task_type: "system.ping".into(),
        user_id: Some("sse-user".into()),
        payload: json!({}),
        idempotency_key: None,
        max_attempts: None,
        timeout_s: None,
        created_at: None,
    }
}

/// Records step `step` of 9 of `task` the way a worker does (hash + event, one script).
async fn step(redis: &RedisServer, task: &Task, step: u32) -> u64 {
    let message = format!("step {step}");
    let update = Update {
        status: if step == 9 {
            TaskStatus::Completed
        } else {
            TaskStatus::Processing
        },
        step,
        total_steps: 9,
        message: &message,
        attempts: 1,
        error: None,
        result: None,
        worker: "w",
    };
    let mut conn = redis.conn().await;
    progress::record(&mut conn, task, &update)
        .await
        .unwrap()
        .seq
}

fn seq_of(event: &common::browser::Sse) -> u64 {
    serde_json::from_str::<Value>(&event.data).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_resume_after_last_event_id() {
    let redis = RedisServer::start();
    // Updates made before any console ran: nobody recorded them, the hash stands for them.
    let early = task(&uuid::Uuid::new_v4().to_string());
    step(&redis, &early, 1).await;
    step(&redis, &early, 2).await;
    let console = start_console(&redis, &[]).await;
    let addr = console.addr;
    let wait = Duration::from_secs(5);

    let mut stream = SseStream::open(addr, &format!("/api/tasks/{}/events", early.id), None).await;
    let snapshot = stream.next(wait).await.expect("a snapshot");
    assert_eq!(snapshot.id.as_deref(), Some("2"));
    assert!(snapshot.data.contains("task.snapshot"), "{snapshot:?}");
    drop(stream);

    // A task followed from its start: the stream's ids are the task's seq.
    let t = task(&uuid::Uuid::new_v4().to_string());
    let path = format!("/api/tasks/{}/events", t.id);
    let mut stream = SseStream::open(addr, &path, None).await;
    let mut all = SseStream::open(addr, "/api/events", None).await;
    all.next_named("overview", wait)
        .await
        .expect("the overview first");
    for n in 1..=3 {
        assert_eq!(step(&redis, &t, n).await, n as u64);
    }
    let mut last = String::new();
    for n in 1..=3u64 {
        let event = stream.next(wait).await.expect("a task event");
        assert_eq!(event.id, Some(n.to_string()));
        assert_eq!(seq_of(&event), n);
    }
    for n in 1..=3u64 {
        let event = all.next_named("task", wait).await.expect("a relayed event");
        assert_eq!(seq_of(&event), n);
        last = event.id.expect("numbered");
    }
    // The page goes away; three updates happen; it comes back with what it saw last.
    drop(stream);
    drop(all);
    let after_first = last.clone();
    for n in 4..=6 {
        step(&redis, &t, n).await;
    }
    let mut stream = SseStream::open(addr, &path, Some("3")).await;
    for n in 4..=6u64 {
        let event = stream.next(wait).await.expect("a missed event");
        assert_eq!(
            (event.id.clone(), seq_of(&event)),
            (Some(n.to_string()), n),
            "resumed in order, none missed, none twice: {event:?}"
        );
    }
    step(&redis, &t, 7).await;
    let live = stream.next(wait).await.expect("the next live event");
    assert_eq!(live.id.as_deref(), Some("7"));
    assert!(
        stream.next(Duration::from_millis(300)).await.is_none(),
        "nothing twice"
    );

    // The all-events stream resumes from this console's numbering…
    let mut all = SseStream::open(addr, "/api/events", Some(&after_first)).await;
    let mut seqs = Vec::new();
    while seqs.len() < 4 {
        let event = all
            .next_named("task", wait)
            .await
            .expect("a replayed event");
        seqs.push(seq_of(&event));
    }
    assert_eq!(seqs, [4, 5, 6, 7]);
    // …and a number from another console (or an earlier run) asks the page to reload.
    let mut other = SseStream::open(addr, "/api/events", Some("0badc0de-12")).await;
    let first = other.next(wait).await.expect("an event");
    assert_eq!(first.event, "resync");

    // The recorded history makes the task's page complete even from another console.
    let second = start_console(&redis, &[]).await;
    relaying(&redis, 2).await;
    let mut fresh = SseStream::open(second.addr, &path, None).await;
    let mut seen = Vec::new();
    while seen.len() < 7 {
        seen.push(seq_of(&fresh.next(wait).await.expect("a recorded event")));
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7]);
}

/// A worker with the console in the same process, on the real queue declarations.
async fn worker_with_console(
    redis: &RedisServer,
    extra: &[&str],
) -> (orchestrator::app::RunningWorker, SocketAddr) {
    let mut flags = vec!["--console-addr", "127.0.0.1:0", "--console-token", TOKEN];
    flags.extend_from_slice(extra);
    let worker = common::worker::start(config(redis, &repo_path("queues"), &flags)).await;
    let addr = worker.console_addr.expect("the worker serves the console");
    relaying(redis, 1).await;
    (worker, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_moves_on_the_page_while_it_runs() {
    let _browser = BROWSER.lock().await;
    build_images();
    let slug = unique_slug("cons");
    let _cleanup = Cleanup::new(&[&slug]);
    let redis = RedisServer::start();
    let templates = root().join("templates").display().to_string();
    // The console first, so the page is open before the worker takes the task.
    let console = start_console(
        &redis,
        &["--console-token", TOKEN, "--domain", "test.localhost"],
    )
    .await;
    let queues = repo_path("queues");
    let payload = json!({ "slug": slug });
    let id = enqueue(
        &redis,
        new_task("team.provision", payload, "high", "u-console"),
    )
    .await;

    let driver = Driver::start();
    let browser = driver.browser().await;
    let page = format!("task/{id}");
    open_page(&browser, console.addr, &page, "#live", "live").await;
    wait_text(&browser, "#task-summary", "queued", Duration::from_secs(10)).await;
    assert_eq!(text(&browser, "#task-percentage").await, "0%");

    let worker = common::worker::start(config(
        &redis,
        &queues,
        &[
            "--domain",
            "test.localhost",
            "--templates-dir",
            &templates,
            "--ingress-container",
            "",
            "--health-timeout-s",
            "30",
        ],
    ))
    .await;
    // Watch the page (not Redis) until it says completed, noting every percentage it showed.
    let mut shown = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let pct = text(&browser, "#task-percentage").await;
        if shown.last() != Some(&pct) {
            shown.push(pct.clone());
        }
        if text(&browser, "#task-summary").await.contains("completed") && pct == "100%" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page never showed completion: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let between: Vec<&String> = shown
        .iter()
        .filter(|p| *p != "0%" && *p != "100%")
        .collect();
    assert!(
        !between.is_empty(),
        "the page showed progress between 0 and 100 %: {shown:?}"
    );
    // Every update of the run is a row of the steps table, in seq order, with its message.
    let rows = count(&browser, "#steps tr").await;
    assert!(rows >= 10, "{rows} step rows");
    let steps = text(&browser, "#steps").await;
    assert!(
        steps.contains("Starting containers") || steps.contains("containers"),
        "{steps}"
    );
    let summary = text(&browser, "#task-summary").await;
    assert!(summary.contains("u-console"), "{summary}");
    // Once it ended, the page reads the task again: where it is now, its result.
    wait_text(
        &browser,
        "#task-summary",
        "finished",
        Duration::from_secs(10),
    )
    .await;
    // The queue dropped the body when the task finished; the console kept it.
    let envelope = text(&browser, "#envelope").await;
    assert!(envelope.contains(&slug), "{envelope}");
    let shot = screenshot(&browser, "task").await;
    println!("task page: {}", shot.display());

    // The tenant shows up with its containers and their routes.
    open_page(&browser, console.addr, "tenants", "h1", "Teams").await;
    let tenants = wait_text(&browser, "main", &slug, Duration::from_secs(15)).await;
    assert!(tenants.contains(&format!("team-{slug}-web")), "{tenants}");
    assert!(
        tenants.contains(&format!("{slug}.test.localhost")),
        "{tenants}"
    );
    assert!(
        tenants.contains(&format!("Host(`{slug}.test.localhost`)")),
        "{tenants}"
    );
    screenshot(&browser, "tenants").await;
    let _ = browser.close().await;
    worker.stop().await;
}

/// A DNS change refused because the name is in another user's tenant: final, dead-lettered. Once
/// the tenant is gone, the same task succeeds.
async fn refused_dns_change(redis: &RedisServer) -> (String, String) {
    let slug = unique_slug("owned");
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("tenant:{slug}"))
        .arg(&[("kind", "team"), ("owner", "someone-else")])
        .query_async(&mut conn)
        .await
        .unwrap();
    let payload = json!({"name": format!("docs.{slug}"), "type": "A", "value": "127.0.0.1"});
    let id = enqueue(redis, new_task("dns.record.upsert", payload, "high", "u-1")).await;
    common::tasks::wait_status(&mut conn, &id, "failed", Duration::from_secs(20)).await;
    eventually("the dead letter", Duration::from_secs(5), || async {
        (llen(redis, "queue:dead").await == 1).then_some(())
    })
    .await;
    (id, slug)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_without_the_token_is_refused_on_the_page() {
    let _browser = BROWSER.lock().await;
    let redis = RedisServer::start();
    let (worker, addr) = worker_with_console(&redis, &[]).await;
    let (id, _) = refused_dns_change(&redis).await;

    let driver = Driver::start();
    let browser = driver.browser().await;
    open_page(&browser, addr, "dead", "main", &id[..8]).await;
    // Actions are offered (the console has a token), but this tab has not given it.
    assert_eq!(count(&browser, "#token").await, 1);
    click(&browser, &format!("button[data-retry=\"{id}\"]")).await;
    let refusal = wait_text(&browser, "#toast", "401", Duration::from_secs(10)).await;
    assert!(refusal.contains("token is required"), "{refusal}");
    // Nothing moved.
    assert_eq!(llen(&redis, "queue:dead").await, 1);
    assert_eq!(llen(&redis, "queue:dns:high").await, 0);
    let _ = browser.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_task_is_retried_from_the_page_and_completes() {
    let _browser = BROWSER.lock().await;
    let redis = RedisServer::start();
    let (worker, addr) = worker_with_console(&redis, &[]).await;
    let (id, slug) = refused_dns_change(&redis).await;
    // Some traffic for the overview: pings that complete, and one that fails for good.
    for n in 0..12 {
        let payload = if n == 5 {
            json!({"fail": "no answer from the probe"})
        } else {
            json!({"delay_ms": 20 * n})
        };
        let task = NewTask {
            max_attempts: Some(1),
            ..new_task("system.ping", payload, "normal", "u-ops")
        };
        enqueue(&redis, task).await;
    }

    let driver = Driver::start();
    let browser = driver.browser().await;
    open_page(&browser, addr, "dead", "main", &id[..8]).await;
    let reason = text(&browser, &format!("tr[data-dead-row=\"{id}\"]")).await;
    assert!(reason.contains("does not own"), "{reason}");

    // The cause goes away (the other user's team is deleted); the admin gives the token, retries.
    let mut conn = redis.conn().await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("tenant:{slug}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let token = browser
        .find(fantoccini::Locator::Css("#token"))
        .await
        .unwrap();
    token.send_keys(TOKEN).await.unwrap();
    click(&browser, "#save-token").await;
    click(&browser, &format!("button[data-retry=\"{id}\"]")).await;
    wait_text(&browser, "#toast", "Queued again", Duration::from_secs(10)).await;
    common::tasks::wait_status(&mut conn, &id, "completed", Duration::from_secs(20)).await;

    // Its page says so, with the dead-lettered attempt and the new one in its history.
    open_page(&browser, addr, &format!("task/{id}"), "h1", &id).await;
    wait_text(
        &browser,
        "#task-summary",
        "completed",
        Duration::from_secs(10),
    )
    .await;
    let steps = wait_text(&browser, "#steps", "completed", Duration::from_secs(10)).await;
    assert!(steps.contains("does not own"), "{steps}");
    // The record is in the zone.
    open_page(&browser, addr, "dns", "h1", "DNS").await;
    wait_text(
        &browser,
        "main",
        &format!("docs.{slug}"),
        Duration::from_secs(10),
    )
    .await;

    // The overview: the chart counts what the worker finished (flushed every few seconds).
    browser
        .goto(&format!("http://{addr}/#/overview"))
        .await
        .unwrap();
    wait_text(&browser, ".legend", "completed (1", Duration::from_secs(20)).await;
    wait_text(&browser, ".legend", "failed (", Duration::from_secs(5)).await;
    // The feed shows what happened since the page opened: the retried task's events.
    wait_text(
        &browser,
        "#feed",
        "dns.record.upsert",
        Duration::from_secs(10),
    )
    .await;
    let shot = screenshot(&browser, "overview").await;
    println!("overview: {}", shot.display());
    let _ = browser.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_hides_and_refuses_actions() {
    let _browser = BROWSER.lock().await;
    let redis = RedisServer::start();
    let (worker, addr) = worker_with_console(&redis, &["--console-read-only"]).await;
    let id = dead_letter(&redis).await;

    let driver = Driver::start();
    let browser = driver.browser().await;
    open_page(&browser, addr, "dead", "main", &id[..8]).await;
    assert_eq!(text(&browser, "#auth").await, "read-only");
    for hidden in [
        "button[data-retry]",
        "button[data-purge]",
        "#dead-bulk",
        "#token",
        "input[data-dead]",
    ] {
        assert_eq!(count(&browser, hidden).await, 0, "{hidden} is shown");
    }
    assert!(
        !browser
            .find(fantoccini::Locator::Css("#nav-enqueue"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    open_page(&browser, addr, "enqueue", "main", "read-only").await;
    assert_eq!(count(&browser, "#enqueue-submit").await, 0);

    // The page's own fetch, with a token, is refused too.
    let answer = browser
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch("/api/dead/retry", {method: "POST", headers: {"Content-Type": "application/json",
                 "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content,
                 "Authorization": "Bearer console-test-token"}, body: '{"all":true}'})
               .then(r => done(r.status));"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(answer, json!(403));
    assert_eq!(llen(&redis, "queue:dead").await, 1);
    let _ = browser.close().await;
    worker.stop().await;
}
