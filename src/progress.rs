//! Progress reporting: the `task:<id>` hash, its TTL, and the events on `tasks:<user_id>` and the
//! resource channels (`team:status`, `sandbox:status`).
//!
//! Every update is one Lua script call, so the hash, its TTL and the event reach Redis in one round
//! trip and atomically. The script bumps the hash's `seq` field and writes the same number into the
//! event, so a watcher can subscribe, read the hash, then skip events with `seq` at or below the
//! hash's: nothing is missed and nothing is shown twice.

use std::sync::LazyLock;

use chrono::{SecondsFormat, Utc};
use redis::Script;
use serde::Serialize;
use serde_json::Value;

use crate::task::{Task, TaskStatus};

/// Seconds a finished task's hash is kept.
pub const FINISHED_TTL_S: u64 = 24 * 3600;

/// Now, as RFC 3339 UTC with milliseconds (`2026-11-21T21:39:22.123Z`).
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A task event as published on `tasks:<user_id>`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskEvent<'a> {
    /// Placeholder the script replaces with the hash's new `seq`; must stay the first field.
    pub seq: u64,
    /// `task.progress`, `task.completed`, `task.failed`, `task.retrying`, `task.cancelled`, `task.queued`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub task_id: &'a str,
    pub task_type: &'a str,
    pub status: &'static str,
    pub step: u32,
    pub total_steps: u32,
    pub percentage: u32,
    pub message: &'a str,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a Value>,
    pub timestamp: String,
}

/// One state of a task to record.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    pub status: TaskStatus,
    pub step: u32,
    pub total_steps: u32,
    pub message: &'a str,
    pub attempts: u32,
    pub error: Option<&'a str>,
    pub result: Option<&'a Value>,
    /// Worker that holds the task (empty when none does).
    pub worker: &'a str,
}

impl Update<'_> {
    /// Whole percent done; a completed task is at 100 whatever its steps.
    pub fn percentage(&self) -> u32 {
        if self.status == TaskStatus::Completed {
            100
        } else {
            (self.step.min(self.total_steps) * 100)
                .checked_div(self.total_steps)
                .unwrap_or(0)
        }
    }

    fn event_type(&self) -> &'static str {
        match self.status {
            TaskStatus::Queued => "task.queued",
            TaskStatus::Processing => "task.progress",
            TaskStatus::Retrying => "task.retrying",
            TaskStatus::Completed => "task.completed",
            TaskStatus::Failed => "task.failed",
            TaskStatus::Cancelled => "task.cancelled",
        }
    }
}

/// The Lua function that records one update: shared by [`RECORD`] and by the queue's scripts, so
/// the hash layout is written in one place. `a` holds the channel, the event (whose `"seq":0`
/// prefix is replaced), the TTL, then field/value pairs starting with `updated_at`. A task's first
/// record dates it (`created_at`, unless the portal did). `quiet`: the caller does not need the
/// cancel flag (the seq is then counted by `HINCRBY`); otherwise one `HMGET` reads what the write
/// needs, or `cur` brings it (status, seq, cancel flag, created_at, as the caller read them), and
/// `seq` goes into the same `HSET` as the fields. A hash that had none of those fields has no TTL
/// to clear. Every step is one command because each costs Redis a call and an AOF record.
pub const RECORD_FN: &str = r#"
local function record(key, a, quiet, cur)
  local seq, cancel = 0, ''
  if quiet then
    seq = redis.call('HINCRBY', key, 'seq', 1)
    if seq == 1 then redis.call('HSETNX', key, 'created_at', a[5]) end
    redis.call('HSET', key, unpack(a, 4))
  else
    cur = cur or redis.call('HMGET', key, 'status', 'seq', 'cancel_requested', 'created_at')
    seq = (tonumber(cur[2]) or 0) + 1
    cancel = cur[3] or ''
    if cur[4] then
      redis.call('HSET', key, 'seq', seq, unpack(a, 4))
    else
      redis.call('HSET', key, 'created_at', a[5], 'seq', seq, unpack(a, 4))
    end
  end
  local ttl = tonumber(a[3])
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  elseif quiet or cur[1] or cur[2] or cur[3] or cur[4] then
    redis.call('PERSIST', key)
  end
  local event = a[2]
  if string.sub(event, 1, 8) == '{"seq":0' then event = '{"seq":' .. seq .. string.sub(event, 9) end
  redis.call('PUBLISH', a[1], event)
  return {seq, cancel}
end
"#;

/// Records one update: `KEYS[1]` the hash, `ARGV` as [`record_args`] builds them.
static RECORD: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{RECORD_FN}\nreturn record(KEYS[1], ARGV)\n")));

/// Records one update of a running attempt, refused once the attempt lost its claim
/// (`queue/lua/progress.lua`).
static FENCED_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua\n{RECORD_FN}\n{}",
        include_str!("queue/lua/progress.lua")
    ))
});

/// The attempt a fenced write speaks for: its claim handle and fencing token.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub handle: &'a str,
    pub fence: u64,
}

/// Records `update` like [`record`], but only while `lease` still holds the task's claim.
/// `Ok(None)`: the claim is lost (a newer attempt owns the task) and nothing was written.
pub async fn record_fenced<C>(
    conn: &mut C,
    task: &Task,
    update: &Update<'_>,
    lease: Lease<'_>,
) -> redis::RedisResult<Option<Recorded>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let (seq, cancel): (i64, String) = FENCED_RECORD
        .key(crate::keys::task(&task.id))
        .key(crate::keys::CLAIMS)
        .arg(lease.handle)
        .arg(lease.fence)
        .arg(record_args(task, update))
        .invoke_async(conn)
        .await?;
    Ok((seq >= 0).then_some(Recorded {
        seq: seq as u64,
        cancel_requested: !cancel.is_empty(),
    }))
}

/// Stands for the attempt count in record arguments that a script fills in itself (the count is
/// kept in Redis, never read-then-written from here).
pub const ATTEMPTS_PLACEHOLDER: u32 = u32::MAX;

/// What recording an update found.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    /// The hash's new `seq`, also carried by the event.
    pub seq: u64,
    /// Whether `orchestrator cancel` asked for this task to stop.
    pub cancel_requested: bool,
}

/// Records `update` for `task`: hash fields, TTL (24 h once terminal), and the event, atomically
/// and in one round trip (`EVALSHA`, loaded again if a Redis restart emptied the script cache).
pub async fn record<C>(
    conn: &mut C,
    task: &Task,
    update: &Update<'_>,
) -> redis::RedisResult<Recorded>
where
    C: redis::aio::ConnectionLike + Send,
{
    let (seq, cancel): (u64, String) = RECORD
        .key(crate::keys::task(&task.id))
        .arg(record_args(task, update))
        .invoke_async(conn)
        .await?;
    Ok(Recorded {
        seq,
        cancel_requested: !cancel.is_empty(),
    })
}

/// The command that records `update` as a plain `EVAL`, for use inside a `MULTI` with other
/// commands (there `EVALSHA` could not reload a script a Redis restart dropped).
pub fn record_cmd(task: &Task, update: &Update<'_>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(format!("{RECORD_FN}\nreturn record(KEYS[1], ARGV)\n"))
        .arg(1)
        .arg(crate::keys::task(&task.id))
        .arg(record_args(task, update));
    cmd
}

/// The arguments of the `record` Lua function for `update`.
pub fn record_args(task: &Task, update: &Update<'_>) -> Vec<String> {
    let timestamp = now();
    let event = TaskEvent {
        seq: 0,
        event_type: update.event_type(),
        task_id: &task.id,
        task_type: &task.task_type,
        status: update.status.as_str(),
        step: update.step,
        total_steps: update.total_steps,
        percentage: update.percentage(),
        message: update.message,
        attempts: update.attempts,
        error: update.error,
        result: update.result,
        timestamp: timestamp.clone(),
    };
    let ttl = if update.status.is_terminal() {
        FINISHED_TTL_S
    } else {
        0
    };
    vec![
        task.channel(),
        serde_json::to_string(&event).unwrap_or_default(),
        ttl.to_string(),
        "updated_at".into(),
        timestamp,
        "id".into(),
        task.id.clone(),
        "type".into(),
        task.task_type.clone(),
        "status".into(),
        update.status.as_str().into(),
        "step".into(),
        update.step.to_string(),
        "total_steps".into(),
        update.total_steps.to_string(),
        "message".into(),
        update.message.to_string(),
        "percentage".into(),
        update.percentage().to_string(),
        "attempts".into(),
        update.attempts.to_string(),
        "error".into(),
        update.error.unwrap_or("").to_string(),
        "result".into(),
        update.result.map(|v| v.to_string()).unwrap_or_default(),
        "worker".into(),
        update.worker.to_string(),
        "user_id".into(),
        task.user_id.clone().unwrap_or_default(),
    ]
}

/// A resource lifecycle event on `team:status` / `sandbox:status`.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceEvent {
    /// e.g. `team.status`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `team` or `sandbox`.
    pub resource_type: String,
    /// The slug.
    pub resource_id: String,
    /// `provisioning`, `active`, `failed`, `suspended`, `deleted`, …
    pub status: String,
    pub error: Option<String>,
    pub metadata: Value,
    pub timestamp: String,
}

impl ResourceEvent {
    /// A lifecycle event stamped now.
    pub fn new(resource_type: &str, resource_id: &str, status: &str, metadata: Value) -> Self {
        Self {
            event_type: format!("{resource_type}.status"),
            resource_type: resource_type.to_string(),
            resource_id: resource_id.to_string(),
            status: status.to_string(),
            error: None,
            metadata,
            timestamp: now(),
        }
    }

    /// The same event carrying an error.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// Publishes a resource event on `channel`.
pub async fn publish_resource<C>(
    conn: &mut C,
    channel: &str,
    event: &ResourceEvent,
) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    let body = serde_json::to_string(event).unwrap_or_default();
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(body)
        .query_async::<i64>(conn)
        .await
        .map(|_| ())
}
