//! Pushing tasks, reading their hashes and events, and checking the delivery invariant: every task
//! is in exactly one place (a queue list, in flight, waiting for its resource, ready, delayed,
//! dead), or finished and in none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use super::{RedisServer, eventually};

/// The six queue lists of `quick_queues`.
pub const LISTS: [&str; 6] = [
    "queue:provisioning:high",
    "queue:provisioning:normal",
    "queue:certificates:high",
    "queue:certificates:normal",
    "queue:dns:high",
    "queue:dns:normal",
];

pub async fn push(conn: &mut MultiplexedConnection, list: &str, body: &str) {
    let _: i64 = redis::cmd("LPUSH")
        .arg(list)
        .arg(body)
        .query_async(conn)
        .await
        .unwrap();
}

pub fn ping(id: &str, payload: Value) -> String {
    json!({"id": id, "type": "system.ping", "user_id": "tester", "payload": payload}).to_string()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub async fn hash(conn: &mut MultiplexedConnection, id: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(format!("task:{id}"))
        .query_async(conn)
        .await
        .unwrap()
}

pub async fn wait_status(
    conn: &mut MultiplexedConnection,
    id: &str,
    status: &str,
    timeout: Duration,
) -> HashMap<String, String> {
    let what = format!("task {id} to be {status}");
    eventually(&what, timeout, || {
        let mut conn = conn.clone();
        async move {
            let h = hash(&mut conn, id).await;
            (h.get("status").map(String::as_str) == Some(status)).then_some(h)
        }
    })
    .await
}

/// Every task event published while it lives (re-subscribing after a Redis restart).
pub struct Events {
    pub seen: Arc<Mutex<Vec<(Instant, Value)>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Events {
    pub async fn start(server: &RedisServer) -> Self {
        let client = server.client();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.psubscribe("tasks:*").await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut pubsub = pubsub;
            loop {
                {
                    let mut stream = pubsub.on_message();
                    while let Some(message) = stream.next().await {
                        let payload: String = message.get_payload().unwrap();
                        let value: Value = serde_json::from_str(&payload).unwrap();
                        sink.lock().unwrap().push((Instant::now(), value));
                    }
                }
                // The server went away: subscribe again as soon as it is back.
                pubsub = loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if let Ok(mut p) = client.get_async_pubsub().await
                        && p.psubscribe("tasks:*").await.is_ok()
                    {
                        break p;
                    }
                };
            }
        });
        Self { seen, _task: task }
    }

    pub fn of(&self, id: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e["task_id"] == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// How many `task.completed` events `id` got.
    pub fn completions(&self, id: &str) -> usize {
        self.of(id)
            .iter()
            .filter(|e| e["type"] == "task.completed")
            .count()
    }

    /// Ids in the order their `task.completed` events arrived.
    pub fn completed_order(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e["type"] == "task.completed")
            .map(|(_, e)| e["task_id"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Events {
    /// When the task started running (its first `processing` event) and when it completed.
    pub fn span(&self, id: &str) -> (Instant, Instant) {
        let seen = self.seen.lock().unwrap();
        let start = seen
            .iter()
            .find(|(_, e)| e["task_id"] == id && e["status"] == "processing")
            .map(|(t, _)| *t)
            .unwrap();
        let end = seen
            .iter()
            .find(|(_, e)| e["task_id"] == id && e["status"] == "completed")
            .map(|(t, _)| *t)
            .unwrap();
        (start, end)
    }
}

fn id_of_handle(handle: &str) -> String {
    handle.split('~').next().unwrap_or(handle).to_string()
}

/// Where each task id is: `list:<name>`, `in-flight`, `waiting`, `ready`, `delayed`, `dead`.
pub async fn places(conn: &mut MultiplexedConnection) -> HashMap<String, Vec<String>> {
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    for list in LISTS {
        let bodies: Vec<String> = redis::cmd("LRANGE")
            .arg(list)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .unwrap();
        for body in bodies {
            let id = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(String::from))
                .unwrap_or_default();
            found.entry(id).or_default().push(format!("list:{list}"));
        }
    }
    for (key, place) in [
        ("{orch}:leases", "in-flight"),
        ("{orch}:delayed", "delayed"),
    ] {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .unwrap();
        for handle in members {
            found
                .entry(id_of_handle(&handle))
                .or_default()
                .push(place.into());
        }
    }
    let waiting: Vec<String> = redis::cmd("ZRANGE")
        .arg("{orch}:waiting")
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    for member in waiting {
        let handle = member.rsplit('\0').next().unwrap_or_default();
        found
            .entry(id_of_handle(handle))
            .or_default()
            .push("waiting".into());
    }
    let ready: Vec<String> = redis::cmd("LRANGE")
        .arg("{orch}:ready")
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    for handle in ready {
        found
            .entry(id_of_handle(&handle))
            .or_default()
            .push("ready".into());
    }
    for entry in dead_entries(conn).await {
        let id = entry["id"].as_str().map(String::from).unwrap_or_default();
        found.entry(id).or_default().push("dead".into());
    }
    found
}

/// The dead-letter entries (`queue:dead`), newest first.
pub async fn dead_entries(conn: &mut MultiplexedConnection) -> Vec<Value> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg("queue:dead")
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    raw.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// Asserts the invariant for `ids`: a completed or cancelled task is in no place, a failed one
/// only in the dead-letter list, any other in exactly one place.
pub async fn assert_one_place(conn: &mut MultiplexedConnection, ids: &[String]) {
    let found = places(conn).await;
    for id in ids {
        let here = found.get(id).cloned().unwrap_or_default();
        let status = hash(conn, id)
            .await
            .get("status")
            .cloned()
            .unwrap_or_default();
        match status.as_str() {
            "completed" | "cancelled" => {
                assert!(here.is_empty(), "finished task {id} still in {here:?}")
            }
            "failed" => assert_eq!(here, vec!["dead".to_string()], "failed task {id}"),
            _ => assert_eq!(here.len(), 1, "task {id} ({status}) is in {here:?}"),
        }
    }
}
