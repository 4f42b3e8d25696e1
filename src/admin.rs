//! Admin operations behind the CLI (and used by tests and benchmarks): enqueue like the portal does,
//! cancel, read queue depths and live workers, and manage the dead-letter list.

use std::collections::BTreeMap;

use deadpool_redis::Pool;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::keys;
use crate::progress::{self, Update};
use crate::queue::{DeadLetter, pool_error};
use crate::queues::Definitions;
use crate::task::{Task, TaskStatus};

/// Why an admin operation failed.
#[derive(Debug, Error)]
pub enum AdminError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unknown task type {0} (see queues/queues.yml)")]
    UnknownType(String),
    #[error("priority must be high or normal, not {0:?}")]
    BadPriority(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no task {0}")]
    NoSuchTask(String),
    #[error("task {id} is already {status}")]
    AlreadyFinished { id: String, status: String },
    #[error("no dead-letter entry for task {0}")]
    NoSuchDeadLetter(String),
}

impl From<deadpool_redis::PoolError> for AdminError {
    fn from(err: deadpool_redis::PoolError) -> Self {
        AdminError::Redis(pool_error(err))
    }
}

/// A task to enqueue.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub task_type: String,
    pub payload: Value,
    pub priority: String,
    pub user_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub max_attempts: Option<u32>,
    pub timeout_s: Option<u64>,
}

/// Enqueues `new` the way the portal does (LPUSH of the JSON envelope), after writing its progress
/// hash as `queued`, in one transaction. Returns the task id.
pub async fn enqueue(
    pool: &Pool,
    definitions: &Definitions,
    new: NewTask,
) -> Result<String, AdminError> {
    if new.priority != "high" && new.priority != "normal" {
        return Err(AdminError::BadPriority(new.priority));
    }
    let list = definitions
        .list_for(&new.task_type, &new.priority)
        .ok_or_else(|| AdminError::UnknownType(new.task_type.clone()))?;
    definitions
        .check_payload(&new.task_type, &new.payload)
        .map_err(AdminError::Invalid)?;
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        task_type: new.task_type,
        user_id: new.user_id,
        payload: new.payload,
        idempotency_key: new.idempotency_key,
        max_attempts: new.max_attempts,
        timeout_s: new.timeout_s,
        created_at: Some(progress::now()),
    };
    let body = task.to_body();
    // Parse our own body like a worker would, so the CLI refuses what a worker would reject.
    Task::parse(body.as_bytes(), usize::MAX).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let update = Update {
        status: TaskStatus::Queued,
        step: 0,
        total_steps: 0,
        message: "Queued",
        attempts: 0,
        error: None,
        result: None,
        worker: "",
    };
    let mut conn = pool.get().await?;
    redis::pipe()
        .atomic()
        .add_command(progress::record_cmd(&task, &update))
        .ignore()
        .cmd("LPUSH")
        .arg(&list)
        .arg(&body)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    Ok(task.id)
}

/// Asks for a task to stop: a flag in its hash (seen at its next step, or when a worker takes it)
/// and a message to the worker running it.
pub async fn cancel(pool: &Pool, id: &str) -> Result<(), AdminError> {
    let mut conn = pool.get().await?;
    let status: Option<String> = redis::cmd("HGET")
        .arg(keys::task(id))
        .arg("status")
        .query_async(&mut conn)
        .await?;
    let Some(status) = status else {
        return Err(AdminError::NoSuchTask(id.to_string()));
    };
    if TaskStatus::parse(&status).is_some_and(TaskStatus::is_terminal) {
        return Err(AdminError::AlreadyFinished {
            id: id.to_string(),
            status,
        });
    }
    redis::pipe()
        .cmd("HSET")
        .arg(keys::task(id))
        .arg("cancel_requested")
        .arg(progress::now())
        .ignore()
        .cmd("PUBLISH")
        .arg(keys::CANCEL_CHANNEL)
        .arg(id)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// Depths of the lists, the delayed set and the dead-letter list.
#[derive(Debug, Clone, Serialize)]
pub struct Depths {
    pub lists: Vec<(String, u64)>,
    pub delayed: u64,
    pub dead: u64,
}

/// Reads the depths in one round trip.
pub async fn depths(pool: &Pool, lists: &[String]) -> Result<Depths, AdminError> {
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    for list in lists {
        pipe.cmd("LLEN").arg(list);
    }
    pipe.cmd("ZCARD").arg(keys::DELAYED);
    pipe.cmd("LLEN").arg(keys::DEAD_LETTER);
    let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
    let n = lists.len();
    Ok(Depths {
        lists: lists
            .iter()
            .cloned()
            .zip(counts[..n].iter().copied())
            .collect(),
        delayed: counts.get(n).copied().unwrap_or(0),
        dead: counts.get(n + 1).copied().unwrap_or(0),
    })
}

/// A registered worker as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub id: String,
    /// Whether its heartbeat is current.
    pub alive: bool,
    /// What it said about itself in its heartbeat.
    pub info: Value,
    /// Tasks it holds in flight (live claims).
    pub in_flight: u64,
}

/// Everything `orchestrator status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub depths: Depths,
    pub workers: Vec<WorkerStatus>,
}

/// Reads queue depths and registered workers.
pub async fn status(pool: &Pool, lists: &[String]) -> Result<Status, AdminError> {
    let depths = depths(pool, lists).await?;
    let mut conn = pool.get().await?;
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::WORKERS)
        .query_async(&mut conn)
        .await?;
    ids.sort();
    // Live claims are `fence|claimed_ms|worker` by handle.
    let claims: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(keys::CLAIMS)
        .query_async(&mut conn)
        .await?;
    let mut workers = Vec::new();
    for id in ids {
        let info: Option<String> = redis::cmd("GET")
            .arg(keys::heartbeat(&id))
            .query_async(&mut conn)
            .await?;
        let counts = [claims
            .values()
            .filter(|claim| claim.splitn(3, '|').nth(2) == Some(id.as_str()))
            .count() as u64];
        workers.push(WorkerStatus {
            id,
            alive: info.is_some(),
            info: info
                .and_then(|i| serde_json::from_str(&i).ok())
                .unwrap_or(Value::Null),
            in_flight: counts.iter().sum(),
        });
    }
    Ok(Status { depths, workers })
}

/// The dead-letter entries, newest first (at most `limit`).
pub async fn dead_list(pool: &Pool, limit: usize) -> Result<Vec<DeadLetter>, AdminError> {
    let mut conn = pool.get().await?;
    Ok(dead_entries(&mut conn, limit.max(1) as i64 - 1)
        .await?
        .into_iter()
        .map(|(_, entry)| entry)
        .collect())
}

/// The dead-letter entries up to index `last` (-1: all), newest first, each with its text as
/// stored (what `LREM` needs to remove exactly that entry); an entry that does not parse is
/// passed over.
async fn dead_entries(
    conn: &mut deadpool_redis::Connection,
    last: i64,
) -> Result<Vec<(String, DeadLetter)>, AdminError> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(keys::DEAD_LETTER)
        .arg(0)
        .arg(last)
        .query_async(conn)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|text| {
            let entry = serde_json::from_str(&text).ok()?;
            Some((text, entry))
        })
        .collect())
}

/// Puts dead-lettered tasks back on their queues (all of them, or the one with `id`), resetting
/// their attempts. Returns the ids retried.
pub async fn dead_retry(pool: &Pool, id: Option<&str>) -> Result<Vec<String>, AdminError> {
    let mut conn = pool.get().await?;
    let mut retried = Vec::new();
    for (entry_text, entry) in dead_entries(&mut conn, -1).await? {
        if id.is_some_and(|wanted| wanted != entry.id) {
            continue;
        }
        let body = body_with_id(&entry.body, &entry.id);
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        fields.insert("status", "queued".into());
        fields.insert("attempts", "0".into());
        fields.insert("recoveries", "0".into());
        fields.insert("error", String::new());
        fields.insert("message", "Queued again from the dead-letter list".into());
        fields.insert("updated_at", progress::now());
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LREM")
            .arg(keys::DEAD_LETTER)
            .arg(1)
            .arg(&entry_text)
            .ignore();
        pipe.cmd("HSET").arg(keys::task(&entry.id));
        for (field, value) in &fields {
            pipe.arg(*field).arg(value);
        }
        pipe.ignore()
            .cmd("HDEL")
            .arg(keys::task(&entry.id))
            .arg("cancel_requested")
            .ignore()
            .cmd("PERSIST")
            .arg(keys::task(&entry.id))
            .ignore()
            .cmd("RPUSH")
            .arg(&entry.queue)
            .arg(&body)
            .ignore();
        pipe.query_async::<()>(&mut conn).await?;
        retried.push(entry.id);
    }
    if let Some(id) = id
        && retried.is_empty()
    {
        return Err(AdminError::NoSuchDeadLetter(id.to_string()));
    }
    Ok(retried)
}

/// The body to queue again: the original, with the dead-letter entry's id written into it when
/// it carried none (or another), so the retried task keeps its identity: the same `task:<id>` is
/// updated, `watch` and `cancel` on that id work. A body that is not a JSON object is unchanged.
fn body_with_id(body: &str, id: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(mut map)) if map.get("id").and_then(Value::as_str) != Some(id) => {
            map.insert("id".into(), Value::String(id.to_string()));
            Value::Object(map).to_string()
        }
        _ => body.to_string(),
    }
}

/// Empties the dead-letter list; returns how many entries it held.
pub async fn dead_purge(pool: &Pool) -> Result<u64, AdminError> {
    let mut conn = pool.get().await?;
    let (count, _): (u64, i64) = redis::pipe()
        .atomic()
        .cmd("LLEN")
        .arg(keys::DEAD_LETTER)
        .cmd("DEL")
        .arg(keys::DEAD_LETTER)
        .query_async(&mut conn)
        .await?;
    Ok(count)
}

/// The progress hash of a task (empty when there is none).
pub async fn task_hash(pool: &Pool, id: &str) -> Result<BTreeMap<String, String>, AdminError> {
    let mut conn = pool.get().await?;
    Ok(redis::cmd("HGETALL")
        .arg(keys::task(id))
        .query_async(&mut conn)
        .await?)
}

// Reads for the admin console (`crate::console`): where each task is and what it carried. Every
// read of the delivery state goes through these functions, so a change of the queue's layout is
// adapted here only.

/// A task out of its queue list, as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// The task id (the claim handle without its `~<fence>` suffix).
    pub id: String,
    /// `in_flight`, `waiting` (behind its resource's holder), `ready` or `delayed`.
    pub place: &'static str,
    /// The worker holding it (in flight).
    pub worker: Option<String>,
    /// When it was claimed (ms since the epoch; in flight).
    pub claimed_ms: Option<u64>,
    /// Its lease deadline (in flight) or when it is due (delayed), ms since the epoch.
    pub due_ms: Option<u64>,
    /// The list it came from.
    pub list: String,
    /// Its body as the producer pushed it.
    pub body: String,
}

/// The task id a claim handle stands for (`<id>` or `<id>~<fence>`).
fn id_of_handle(handle: &str) -> &str {
    handle.split('~').next().unwrap_or(handle)
}

/// Every task out of its list: in flight, waiting for or ready to take its resource, delayed
/// (at most `limit` delayed ones, soonest first).
pub async fn held(pool: &Pool, limit: usize) -> Result<Vec<Held>, AdminError> {
    let mut conn = pool.get().await?;
    type Scored = Vec<(String, f64)>;
    let (claims, leases, waiting, ready, delayed): (
        BTreeMap<String, String>,
        Scored,
        Vec<String>,
        Vec<String>,
        Scored,
    ) = redis::pipe()
        .cmd("HGETALL")
        .arg(keys::CLAIMS)
        .cmd("ZRANGE")
        .arg(keys::LEASES)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .cmd("ZRANGE")
        .arg(keys::WAITING)
        .arg(0)
        .arg(limit.max(1) as i64 - 1)
        .cmd("LRANGE")
        .arg(keys::READY)
        .arg(0)
        .arg(limit.max(1) as i64 - 1)
        .cmd("ZRANGE")
        .arg(keys::DELAYED)
        .arg(0)
        .arg(limit.max(1) as i64 - 1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await?;
    let leases: BTreeMap<String, f64> = leases.into_iter().collect();
    let mut found: Vec<(String, Held)> = Vec::new();
    for (handle, claim) in &claims {
        // `fence|claimed_ms|worker`
        let mut parts = claim.splitn(3, '|');
        let _fence = parts.next();
        let claimed_ms = parts.next().and_then(|s| s.parse().ok());
        let worker = parts.next().map(str::to_string);
        found.push((
            handle.clone(),
            Held {
                id: id_of_handle(handle).to_string(),
                place: "in_flight",
                worker,
                claimed_ms,
                due_ms: leases.get(handle).map(|s| *s as u64),
                list: String::new(),
                body: String::new(),
            },
        ));
    }
    // `<resource>\0<order>\0<handle>`
    for member in &waiting {
        let Some(handle) = member.rsplit('\0').next() else {
            continue;
        };
        found.push((handle.to_string(), place_only(handle, "waiting", None)));
    }
    for handle in &ready {
        found.push((handle.clone(), place_only(handle, "ready", None)));
    }
    for (handle, due) in &delayed {
        found.push((
            handle.clone(),
            place_only(handle, "delayed", Some(*due as u64)),
        ));
    }
    if found.is_empty() {
        return Ok(found.into_iter().map(|(_, held)| held).collect());
    }
    let handles: Vec<&String> = found.iter().map(|(handle, _)| handle).collect();
    let (bodies, origins): (Vec<Option<String>>, Vec<Option<String>>) = redis::pipe()
        .cmd("HMGET")
        .arg(keys::BODIES)
        .arg(&handles)
        .cmd("HMGET")
        .arg(keys::ORIGIN)
        .arg(&handles)
        .query_async(&mut conn)
        .await?;
    Ok(found
        .into_iter()
        .zip(bodies.into_iter().zip(origins))
        .map(|((_, mut held), (body, origin))| {
            held.body = body.unwrap_or_default();
            held.list = origin.unwrap_or_default();
            held
        })
        .collect())
}

fn place_only(handle: &str, place: &'static str, due_ms: Option<u64>) -> Held {
    Held {
        id: id_of_handle(handle).to_string(),
        place,
        worker: None,
        claimed_ms: None,
        due_ms,
        list: String::new(),
        body: String::new(),
    }
}

/// The oldest `limit` bodies of each list (the next to be taken first), by list.
pub async fn queued(
    pool: &Pool,
    lists: &[String],
    limit: usize,
) -> Result<Vec<(String, Vec<String>)>, AdminError> {
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    for list in lists {
        // Workers take from the right: the last `limit` elements are the next ones.
        pipe.cmd("LRANGE")
            .arg(list)
            .arg(-(limit.max(1) as i64))
            .arg(-1);
    }
    let bodies: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
    Ok(lists
        .iter()
        .cloned()
        .zip(bodies.into_iter().map(|mut b| {
            b.reverse();
            b
        }))
        .collect())
}

/// Where the body of task `id` is now, and the body: out of its list (in flight, waiting, ready,
/// delayed), dead-lettered, or among the next `scan` tasks of a list. `None` once it finished
/// (the queue keeps no body then).
pub async fn envelope(
    pool: &Pool,
    lists: &[String],
    id: &str,
    scan: usize,
) -> Result<Option<(String, String)>, AdminError> {
    let mut conn = pool.get().await?;
    let body: Option<String> = redis::cmd("HGET")
        .arg(keys::BODIES)
        .arg(id)
        .query_async(&mut conn)
        .await?;
    if let Some(body) = body {
        let origin: Option<String> = redis::cmd("HGET")
            .arg(keys::ORIGIN)
            .arg(id)
            .query_async(&mut conn)
            .await?;
        return Ok(Some((origin.unwrap_or_default(), body)));
    }
    drop(conn);
    if let Some(entry) = dead_list(pool, 10_000)
        .await?
        .into_iter()
        .find(|entry| entry.id == id)
    {
        return Ok(Some((keys::DEAD_LETTER.to_string(), entry.body)));
    }
    for (list, bodies) in queued(pool, lists, scan).await? {
        if let Some(body) = bodies.into_iter().find(|body| {
            serde_json::from_str::<Value>(body)
                .ok()
                .is_some_and(|v| v.get("id").and_then(Value::as_str) == Some(id))
        }) {
            return Ok(Some((list, body)));
        }
    }
    Ok(None)
}

/// The body of task `id` while it is out of its list (in flight, waiting, ready, delayed).
pub async fn held_body(pool: &Pool, id: &str) -> Result<Option<String>, AdminError> {
    let mut conn = pool.get().await?;
    Ok(redis::cmd("HGET")
        .arg(keys::BODIES)
        .arg(id)
        .query_async(&mut conn)
        .await?)
}

/// Removes the dead-letter entry of task `id` (purge one). Returns how many entries it removed.
pub async fn dead_remove(pool: &Pool, id: &str) -> Result<u64, AdminError> {
    let mut conn = pool.get().await?;
    let mut removed = 0;
    for (entry_text, entry) in dead_entries(&mut conn, -1).await? {
        if entry.id == id {
            let n: u64 = redis::cmd("LREM")
                .arg(keys::DEAD_LETTER)
                .arg(1)
                .arg(&entry_text)
                .query_async(&mut conn)
                .await?;
            removed += n;
        }
    }
    if removed == 0 {
        return Err(AdminError::NoSuchDeadLetter(id.to_string()));
    }
    Ok(removed)
}

/// How many tasks are in each place out of the lists.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Places {
    pub in_flight: u64,
    pub waiting: u64,
    pub ready: u64,
}

/// Counts the tasks in flight, waiting for their resource and ready, in one round trip.
pub async fn places(pool: &Pool) -> Result<Places, AdminError> {
    let mut conn = pool.get().await?;
    let (in_flight, waiting, ready): (u64, u64, u64) = redis::pipe()
        .cmd("HLEN")
        .arg(keys::CLAIMS)
        .cmd("ZCARD")
        .arg(keys::WAITING)
        .cmd("LLEN")
        .arg(keys::READY)
        .query_async(&mut conn)
        .await?;
    Ok(Places {
        in_flight,
        waiting,
        ready,
    })
}

/// Milliseconds left on each worker's heartbeat (negative: none), in the order of `ids`.
pub async fn heartbeat_ttls(pool: &Pool, ids: &[String]) -> Result<Vec<i64>, AdminError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("PTTL").arg(keys::heartbeat(id));
    }
    Ok(pipe.query_async(&mut conn).await?)
}

/// The fields of the progress hashes the console lists tasks by.
pub const SUMMARY_FIELDS: [&str; 13] = [
    "id",
    "type",
    "status",
    "user_id",
    "step",
    "total_steps",
    "percentage",
    "message",
    "error",
    "attempts",
    "worker",
    "updated_at",
    "result",
];

/// The summary fields of up to `max` progress hashes (`task:<id>`), found by SCAN (at most
/// `max_keys` keys examined, so a large keyspace costs a bounded time).
pub async fn task_summaries(
    pool: &Pool,
    max: usize,
    max_keys: usize,
) -> Result<Vec<BTreeMap<String, String>>, AdminError> {
    let mut conn = pool.get().await?;
    let mut cursor: u64 = 0;
    let mut examined = 0;
    let mut names: Vec<String> = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys::task("*"))
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("hash")
            .query_async(&mut conn)
            .await?;
        examined += 1000;
        names.extend(batch);
        cursor = next;
        if cursor == 0 || names.len() >= max || examined >= max_keys {
            break;
        }
    }
    names.truncate(max);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for name in &names {
        pipe.cmd("HMGET").arg(name).arg(&SUMMARY_FIELDS[..]);
    }
    let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await?;
    Ok(rows
        .into_iter()
        .zip(&names)
        .map(|(values, name)| {
            let mut row: BTreeMap<String, String> = SUMMARY_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(field, value)| Some((field.to_string(), value?)))
                .collect();
            row.entry("id".into())
                .or_insert_with(|| name.trim_start_matches("task:").to_string());
            row
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::body_with_id;

    #[test]
    fn a_retried_body_keeps_the_dead_letter_id() {
        let body = r#"{"type":"system.ping","payload":{}}"#;
        let fixed: serde_json::Value = serde_json::from_str(&body_with_id(body, "abc")).unwrap();
        assert_eq!(fixed["id"], "abc");
        assert_eq!(fixed["type"], "system.ping");
        let with_id = r#"{"id":"abc","type":"system.ping"}"#;
        assert_eq!(body_with_id(with_id, "abc"), with_id);
        assert_eq!(body_with_id("not json", "abc"), "not json");
    }
}
