//! Reliable consumption of the prioritized Redis lists: claim, acknowledge, retry later, dead-letter,
//! and recover the tasks of workers that died.
//!
//! # Design
//! Producers only `LPUSH` JSON onto `queue:<family>:<priority>`. A worker never pops a task into its
//! memory alone: a Lua script walks the lists in claim order (every `high` before any `normal`) and
//! `LMOVE`s up to N bodies from the right end into that worker's processing list for the source list
//! (`processing:<worker>:<list>`). The script is atomic, so at every instant each task is in exactly
//! one list (or the delayed set): a `kill -9` at any point loses nothing.
//!
//! When every list is empty, Redis has no blocking move from several lists, so the worker keeps one
//! waiter per list on a dedicated connection blocked in `BLMOVE list list RIGHT RIGHT <1s>`: a
//! rotation of a list onto itself, which changes nothing but returns as soon as the list gets an
//! element. The waiter then wakes the dispatcher, which claims with the script again. Pickup stays
//! well under a millisecond and strict priority holds, since only the script takes tasks.
//!
//! Each worker refreshes a heartbeat key whose TTL is the lease. A reaper, run by one worker at a time
//! under `lock:reaper`, finds registered workers whose heartbeat expired and moves their processing
//! lists back to the pop end of the source lists, counting recoveries per task in its hash; a task
//! recovered more than `max_recoveries` times is a poison pill and is dead-lettered instead.
//!
//! Finishing is one atomic `MULTI`: the progress record, the removal from the processing list, and
//! either nothing (done), a `ZADD` to the delayed set (retry with backoff, promoted back by every
//! worker's promoter) or an `LPUSH` to the dead-letter list.

use std::time::Duration;

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::progress::{self, Update};
use crate::task::Task;

/// A body taken from a list, held in this worker's processing list until finished.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The list it came from.
    pub list: String,
    /// The body exactly as it sits in the processing list.
    pub body: Vec<u8>,
}

/// An entry of the dead-letter list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Task id (generated for bodies that carried none or could not be read).
    pub id: String,
    /// Task type, when it could be read.
    #[serde(rename = "type", default)]
    pub task_type: Option<String>,
    /// The list the task came from (a retry goes back there).
    pub queue: String,
    /// Why it failed.
    pub reason: String,
    /// When (RFC 3339 UTC).
    pub failed_at: String,
    /// Attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// The original body, unchanged.
    pub body: String,
}

impl DeadLetter {
    /// The entry for a parsed `task` that failed for `reason` after `attempts`.
    pub fn of(claimed: &Claimed, task: &Task, reason: &str, attempts: u32) -> Self {
        Self {
            id: task.id.clone(),
            task_type: Some(task.task_type.clone()),
            queue: claimed.list.clone(),
            reason: reason.to_string(),
            failed_at: progress::now(),
            attempts,
            body: String::from_utf8_lossy(&claimed.body).into_owned(),
        }
    }
}

const CLAIM_SCRIPT: &str = r#"
-- KEYS: source1, processing1, source2, processing2, ... in claim order; ARGV[1]: most to take
local out = {}
local want = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  while #out < want * 2 do
    local body = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'RIGHT', 'LEFT')
    if not body then break end
    out[#out + 1] = KEYS[i]
    out[#out + 1] = body
  end
  if #out >= want * 2 then break end
end
return out
"#;

const REPLACE_SCRIPT: &str = r#"
-- KEYS[1]: processing list; ARGV[1]: old body, ARGV[2]: new body
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const RECOVER_ONE_SCRIPT: &str = r#"
-- KEYS[1]: dead worker's processing list, KEYS[2]: source list, KEYS[3]: dead-letter list
-- ARGV[1]: max recoveries, ARGV[2]: now (RFC 3339)
local body = redis.call('RPOP', KEYS[1])
if not body then return false end
local ok, t = pcall(cjson.decode, body)
local id = ''
local ttype = ''
if ok and type(t) == 'table' then
  if type(t.id) == 'string' then id = t.id end
  if type(t.type) == 'string' then ttype = t.type end
end
local n = 0
if id ~= '' then n = redis.call('HINCRBY', 'task:' .. id, 'recoveries', 1) end
if id ~= '' and n > tonumber(ARGV[1]) then
  local attempts = tonumber(redis.call('HGET', 'task:' .. id, 'attempts') or '0') or 0
  redis.call('LPUSH', KEYS[3], cjson.encode({id = id, type = ttype, queue = KEYS[2],
    reason = 'poison pill: the worker running it died ' .. n .. ' times', failed_at = ARGV[2],
    attempts = attempts, body = body}))
  return {'dead', body, n}
end
redis.call('RPUSH', KEYS[2], body)
return {'requeued', body, n}
"#;

/// Finishes a claimed task. KEYS: processing list, where the task goes, its hash. ARGV: body,
/// how (`done`, `delay`, `dead`, `back`), two arguments of how, `1` to record, the record's args.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        progress::RECORD_FN,
        r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  if ARGV[2] == 'delay' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  elseif ARGV[2] == 'dead' then redis.call('LPUSH', KEYS[2], ARGV[3])
  elseif ARGV[2] == 'back' then redis.call('RPUSH', KEYS[2], ARGV[1]) end
end
if ARGV[5] == '1' then
  local a = {}
  for i = 6, #ARGV do a[#a + 1] = ARGV[i] end
  record(KEYS[3], a)
end
return 1
"#
    ))
});

const PROMOTE_SCRIPT: &str = r#"
-- KEYS[1]: delayed set; ARGV[1]: now (ms). Members are "<list>\n<body>".
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
for _, member in ipairs(due) do
  local cut = string.find(member, '\n', 1, true)
  if cut then
    redis.call('RPUSH', string.sub(member, 1, cut - 1), string.sub(member, cut + 1))
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"#;

const RELEASE_LOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

const EXTEND_LOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_SCRIPT));
static REPLACE: LazyLock<Script> = LazyLock::new(|| Script::new(REPLACE_SCRIPT));
static RECOVER_ONE: LazyLock<Script> = LazyLock::new(|| Script::new(RECOVER_ONE_SCRIPT));
static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(PROMOTE_SCRIPT));
static RELEASE_LOCK: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LOCK_SCRIPT));
static EXTEND_LOCK: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_LOCK_SCRIPT));

/// What a worker needs to talk to the queues.
#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    worker: String,
    /// Lists in claim order.
    order: Vec<String>,
}

impl Queue {
    /// The queues of `worker`, claiming from `order` (priority order).
    pub fn new(conn: ConnectionManager, worker: String, order: Vec<String>) -> Self {
        Self {
            conn,
            worker,
            order,
        }
    }

    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Lists in claim order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// Claims up to `max` tasks, highest priority first, atomically moved to the processing lists.
    pub async fn claim(&self, max: usize) -> redis::RedisResult<Vec<Claimed>> {
        let mut conn = self.conn().await?;
        let mut invocation = CLAIM.prepare_invoke();
        for list in &self.order {
            invocation
                .key(list)
                .key(keys::processing(&self.worker, list));
        }
        invocation.arg(max.max(1));
        let flat: Vec<Vec<u8>> = invocation.invoke_async(&mut conn).await?;
        Ok(flat
            .chunks_exact(2)
            .map(|pair| Claimed {
                list: String::from_utf8_lossy(&pair[0]).into_owned(),
                body: pair[1].clone(),
            })
            .collect())
    }

    /// Rewrites a claimed body in place (e.g. to carry the id the worker generated), so a recovery
    /// re-delivers the same task.
    pub async fn replace(&self, list: &str, old: &[u8], new: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        let _: i64 = REPLACE
            .key(keys::processing(&self.worker, list))
            .arg(old)
            .arg(new)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Finishes a claimed task: records `update`, removes it from the processing list and, as
    /// `then` says, nothing more, a retry after a delay, or a dead-letter entry; all in one MULTI.
    pub async fn finish(
        &self,
        claimed: &Claimed,
        task: Option<&Task>,
        update: Option<&Update<'_>>,
        then: Then<'_>,
    ) -> redis::RedisResult<()> {
        // One script: the move happens only if the body is still in the processing list, so
        // running it again (a retry after a lost reply) repeats nothing but the record.
        let processing = keys::processing(&self.worker, &claimed.list);
        let mut invocation = FINISH.prepare_invoke();
        invocation.key(&processing);
        let (target, how, first, second): (String, &str, Vec<u8>, Vec<u8>) = match then {
            Then::Done => (processing.clone(), "done", vec![], vec![]),
            Then::RetryAfter(delay) => {
                let due = chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64;
                let mut member = claimed.list.as_bytes().to_vec();
                member.push(b'\n');
                member.extend_from_slice(&claimed.body);
                (
                    keys::DELAYED.into(),
                    "delay",
                    due.to_string().into_bytes(),
                    member,
                )
            }
            Then::DeadLetter(entry) => (
                keys::DEAD_LETTER.into(),
                "dead",
                serde_json::to_vec(entry).unwrap_or_default(),
                vec![],
            ),
            Then::PutBack => (claimed.list.clone(), "back", vec![], vec![]),
        };
        invocation.key(target);
        invocation
            .arg(&claimed.body)
            .arg(how)
            .arg(first)
            .arg(second);
        match (task, update) {
            (Some(task), Some(update)) => {
                invocation
                    .key(keys::task(&task.id))
                    .arg("1")
                    .arg(progress::record_args(task, update));
            }
            _ => {
                invocation.key(&processing).arg("0");
            }
        }
        let mut conn = self.conn().await?;
        invocation.invoke_async::<i64>(&mut conn).await.map(|_| ())
    }

    /// Moves every task left in this worker's processing lists back to the pop end of its source
    /// (shutdown after the grace period). Returns how many.
    pub async fn put_back_all(&self) -> redis::RedisResult<usize> {
        let mut conn = self.conn().await?;
        let mut moved = 0;
        for list in &self.order {
            let processing = keys::processing(&self.worker, list);
            loop {
                let body: Option<Vec<u8>> = redis::cmd("LMOVE")
                    .arg(&processing)
                    .arg(list)
                    .arg("RIGHT")
                    .arg("RIGHT")
                    .query_async(&mut conn)
                    .await?;
                if body.is_none() {
                    break;
                }
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Moves due delayed tasks back to their lists. Returns how many.
    pub async fn promote_due(&self) -> redis::RedisResult<usize> {
        let mut conn = self.conn().await?;
        PROMOTE
            .key(keys::DELAYED)
            .arg(chrono::Utc::now().timestamp_millis())
            .invoke_async(&mut conn)
            .await
    }

    /// Refreshes this worker's heartbeat (and registers it).
    pub async fn heartbeat(&self, lease: Duration, info: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .cmd("SET")
            .arg(keys::heartbeat(&self.worker))
            .arg(info)
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(keys::WORKERS)
            .arg(&self.worker)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Removes this worker's heartbeat and registration (clean exit).
    pub async fn deregister(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .cmd("DEL")
            .arg(keys::heartbeat(&self.worker))
            .ignore()
            .cmd("SREM")
            .arg(keys::WORKERS)
            .arg(&self.worker)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Recovers the tasks of dead workers, if this worker wins the reaper lock. Returns the recovered
    /// and the dead-lettered tasks' bodies.
    pub async fn reap(&self, lease: Duration, max_recoveries: u32) -> redis::RedisResult<Reaped> {
        let mut conn = self.conn().await?;
        let mut reaped = Reaped::default();
        let won: Option<String> = redis::cmd("SET")
            .arg(keys::REAPER_LOCK)
            .arg(&self.worker)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if won.is_none() {
            return Ok(reaped);
        }
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::WORKERS)
            .query_async(&mut conn)
            .await?;
        for worker in workers.iter().filter(|w| **w != self.worker) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(keys::heartbeat(worker))
                .query_async(&mut conn)
                .await?;
            if alive {
                continue;
            }
            // Its lists by key, not by this worker's declarations: the dead worker may have
            // consumed lists this one does not know (a rolling change of queues.yml).
            let prefix = keys::processing(worker, "");
            for processing in scan_keys(&mut conn, &format!("{prefix}*")).await? {
                let Some(list) = processing.strip_prefix(&prefix) else {
                    continue;
                };
                loop {
                    let outcome: Option<(String, Vec<u8>, i64)> = RECOVER_ONE
                        .key(&processing)
                        .key(list)
                        .key(keys::DEAD_LETTER)
                        .arg(max_recoveries)
                        .arg(progress::now())
                        .invoke_async(&mut conn)
                        .await?;
                    match outcome {
                        None => break,
                        Some((kind, body, _)) if kind == "dead" => reaped.dead.push(body),
                        Some((_, body, _)) => reaped.requeued.push(body),
                    }
                }
            }
            let _: i64 = redis::cmd("SREM")
                .arg(keys::WORKERS)
                .arg(worker)
                .query_async(&mut conn)
                .await?;
        }
        let _: i64 = RELEASE_LOCK
            .key(keys::REAPER_LOCK)
            .arg(&self.worker)
            .invoke_async(&mut conn)
            .await?;
        Ok(reaped)
    }

    /// Takes the lock on `resource` for `holder`; returns the current holder when it is taken.
    pub async fn lock(
        &self,
        resource: &str,
        holder: &str,
        ttl: Duration,
    ) -> redis::RedisResult<Result<(), String>> {
        let mut conn = self.conn().await?;
        let key = keys::resource_lock(resource);
        let won: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if won.is_some() {
            return Ok(Ok(()));
        }
        let current: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        match current {
            Some(current) if current == holder => Ok(Ok(())),
            Some(current) => Ok(Err(current)),
            // Released between the two calls: try once more next time round.
            None => Ok(Err("(released just now)".into())),
        }
    }

    /// Extends a held lock; false when it was lost.
    pub async fn extend_lock(
        &self,
        resource: &str,
        holder: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn().await?;
        let extended: i64 = EXTEND_LOCK
            .key(keys::resource_lock(resource))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(extended == 1)
    }

    /// Releases a lock if `holder` still holds it.
    pub async fn unlock(&self, resource: &str, holder: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        let _: i64 = RELEASE_LOCK
            .key(keys::resource_lock(resource))
            .arg(holder)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        Ok(self.conn.clone())
    }
}

/// What happens to a task as it leaves the processing list.
#[derive(Debug)]
pub enum Then<'a> {
    /// Finished for good.
    Done,
    /// Back to its list after the delay (retry, or a busy lock).
    RetryAfter(Duration),
    /// Failed for good: kept in the dead-letter list.
    DeadLetter(&'a DeadLetter),
    /// Back to the pop end of its list now (shutdown).
    PutBack,
}

/// What a reaper pass did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Bodies returned to their lists.
    pub requeued: Vec<Vec<u8>>,
    /// Bodies dead-lettered as poison pills.
    pub dead: Vec<Vec<u8>>,
}

/// Every key matching `pattern` (SCAN, so Redis is never blocked on a large keyspace).
async fn scan_keys<C>(conn: &mut C, pattern: &str) -> redis::RedisResult<Vec<String>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        found.extend(batch);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// Turns a pool error into a Redis error, so callers handle one error type.
pub fn pool_error(err: deadpool_redis::PoolError) -> redis::RedisError {
    match err {
        deadpool_redis::PoolError::Backend(e) => e,
        other => redis::RedisError::from(std::io::Error::other(other.to_string())),
    }
}
