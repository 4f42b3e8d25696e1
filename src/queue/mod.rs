//! Reliable delivery from the prioritized Redis lists: claim with a fenced per-task lease, begin in
//! enqueue order per resource, finish (acknowledge, retry later, dead-letter, put back) and recover
//! the claims whose lease ran out.
//!
//! # Design
//! Producers only `LPUSH` JSON onto `queue:<family>:<priority>`. Every move of a task is one Lua
//! script (`src/queue/lua/`, one file each, with a header naming its KEYS and ARGV), so at every
//! instant a task is in exactly one *place*:
//! - a queue list (its body, as the producer pushed it);
//! - in flight: a member of `{orch}:leases` (scored by its lease deadline) with a claim in
//!   `{orch}:claims` (`fence|claimed_ms|worker`);
//! - waiting for a resource: a member of `{orch}:waiting`, ordered by fence within the resource;
//! - ready: in `{orch}:ready`, a task whose turn on its resource came (it holds the lock);
//! - delayed: a member of `{orch}:delayed` (retry with backoff), scored by when it is due;
//! - dead: an entry of `queue:dead`.
//!
//! Out of its list, a task is known by its *handle* (its id, or `<id>~<fence>` for a second copy,
//! `~<fence>` for a body without an id) and its body is kept in `{orch}:bodies`, its list in
//! `{orch}:origin`: identical bodies stay distinct entries.
//!
//! The hot path is one script, `tick.lua`, composed of the steps in `attempt.lua`: a worker's
//! outcomes, begins and claims travel together, one call per batch. **Claim** takes up to N
//! tasks, the ready list first, then the lists in claim order (every `high` before any
//! `normal`), and gives each attempt a fencing token from `{orch}:fence` and a lease. **Begin**
//! checks the fence, counts the attempt (in the script, never read-then-written), takes the task's
//! resource lock or parks it behind the holder, settles idempotency keys and records `processing`
//! with its event. A claimed body the worker already prepared (it saw it at the pop end of the
//! list: the call peeks at the next bodies, and an idle worker is woken with the body in hand)
//! begins in the same call that claims it; any other claim begins in the worker's next call.
//! Every later write of the attempt (progress, finish) checks its fence in the same script, so a
//! stale attempt (stalled past its lease, then resumed) is refused and stops: it can neither
//! report nor finish a task a newer attempt owns. **Finish** records the outcome, releases the
//! lock and hands it to the resource's first waiter (which goes to the ready list), all in one
//! step; the same call then claims the next tasks for the freed slots. A batch's steps are
//! isolated: a task whose hash Redis refuses (WRONGTYPE) fails its own entry, not the call.
//!
//! Idle workers: one per deployment holds the listener's role (`{orch}:lead:listener`) and
//! blocks on every list with a rotation of the list onto itself (`BLMOVE l l RIGHT RIGHT`: it
//! takes nothing, so no task is ever held by a waiter); the others block on `{orch}:baton`. A
//! push wakes the listener alone, which claims and begins the task in one call. A listener that
//! fills its slots or stops resigns and pushes one token on the baton, waking one idle worker to
//! take over; one that froze loses the role when its short lease runs out; and every idle worker
//! still claims once a second, so nothing waits on a lost wake-up.
//!
//! Each worker renews the leases of its running attempts in one call (`renew.lua`), which also
//! tells it which claims it lost. One reaper per deployment (`{orch}:lead:reaper`) reads the
//! expired leases (`expired.lua`, no SCAN) and gives each back (`recover.lua`): requeued, or past
//! `max_recoveries` dead-lettered as a poison pill. This catches orphans of live workers too (a
//! claim whose reply was lost). One promoter per deployment moves due delayed tasks back
//! (`promote.lua`) and sleeps until the next one is due; the finish step announces a retry due
//! before all others on `{orch}:promote`, which wakes it.
//!
//! Per-resource order: claims are fenced in claim order, which is enqueue order within a list
//! (and priority order across lists). A task with a resource begins only after every older claim
//! has begun (`{orch}:unbegun`; a claim recovered before it began keeps its place there): until
//! then it is *blocked* (in the waiting set under the empty resource, out of flight), and goes to
//! the ready list as soon as an older claim begins or leaves. Waiters are handed the lock in the
//! same order, so tasks of one resource run in enqueue order. A task begun in the call that claimed
//! it, without a resource, never enters `{orch}:unbegun` (nobody can be waiting for it, and its
//! resource, if any, is known at once). A claim recovered before it began
//! that nobody claims again within ten leases (its list is no longer consumed) is forgotten, so it
//! cannot block its resource for ever.
//! A lock lives as long as its holder's lease: a holder recovered after a stall keeps the lock and
//! goes to the ready list, so it runs again before the tasks queued behind it.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::progress::{self, Update};
use crate::task::Task;

/// A task taken by this worker: held in flight under `handle` until finished.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The key of the claim (the task id, unless that is taken or absent).
    pub handle: String,
    /// The fencing token of this attempt.
    pub fence: u64,
    /// The list it came from (a retry goes back there).
    pub list: String,
    /// The body as it was pushed.
    pub body: Vec<u8>,
}

impl Claimed {
    /// The lease this claim's writes speak for.
    pub fn lease(&self) -> progress::Lease<'_> {
        progress::Lease {
            handle: &self.handle,
            fence: self.fence,
        }
    }
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

fn script(source: &str) -> Script {
    Script::new(&format!(
        "#!lua\nlocal PROMOTE_CHANNEL = '{}'\n{}\n{}\n{}\n{source}",
        keys::PROMOTE_CHANNEL,
        include_str!("lua/common.lua"),
        progress::RECORD_FN,
        include_str!("lua/attempt.lua"),
    ))
}

static TICK: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/tick.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/renew.lua")));
static EXPIRED: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/expired.lua")));
static RECOVER: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/recover.lua")));
static PROMOTE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/promote.lua")));
static LEAD: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("#!lua\n{}", include_str!("lua/lead.lua"))));
static RESIGN: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("#!lua\n{}", include_str!("lua/resign.lua"))));

/// Longest a task waits for another task with the same idempotency key to finish.
pub const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(600);
/// Seconds an idempotency record is kept.
pub const IDEMPOTENCY_TTL_S: u64 = 24 * 3600;

/// What beginning a task needs besides its claim: built once the body was read (after a claim, or
/// before it for a body seen at the pop end of a list).
#[derive(Debug, Clone)]
pub struct Begin {
    hash: String,
    idempotency: String,
    resource: String,
    task_id: String,
    max_attempts: u32,
    waiting: String,
    record: Vec<String>,
}

impl Begin {
    /// Begins `task` (on `resource`, if any) as an attempt out of `max_attempts`, recording
    /// `started` (attempts as [`progress::ATTEMPTS_PLACEHOLDER`]).
    pub fn new(
        task: &Task,
        resource: Option<&str>,
        max_attempts: u32,
        started: &Update<'_>,
    ) -> Self {
        let hash = keys::task(&task.id);
        let resource = resource.unwrap_or("").to_string();
        Self {
            idempotency: idempotency_key(task).unwrap_or_else(|| hash.clone()),
            hash,
            waiting: format!("Waiting: {resource} is being changed by an earlier task"),
            resource,
            task_id: task.id.clone(),
            max_attempts,
            record: progress::record_args(task, started),
        }
    }

    fn push_args<'a>(&'a self, invocation: &mut ScriptInvocation<'a>) {
        invocation
            .arg(&self.resource)
            .arg(&self.task_id)
            .arg(self.max_attempts)
            .arg(&self.waiting)
            .arg(self.record.len())
            .arg(&self.record);
    }
}

/// An attempt's way out of flight, built by the attempt and written with the worker's next
/// [`Queue::tick`]: records its update (when given) and moves the task on as [`Then`] says.
#[derive(Debug, Clone)]
pub struct Finish {
    handle: String,
    fence: u64,
    hash: String,
    list: String,
    idempotency: String,
    how: &'static str,
    extra: String,
    new_body: String,
    /// What the worker knows of the attempt (see `finish_one` in attempt.lua).
    state: &'static str,
    record: Vec<String>,
}

impl Finish {
    /// The finish of `claimed`: records `update` for `task` (when both are given), then `then`;
    /// `new_body` replaces the kept body (a generated id written back for a retry).
    pub fn new(
        claimed: &Claimed,
        task: Option<&Task>,
        update: Option<&Update<'_>>,
        then: &Then<'_>,
        new_body: Option<&str>,
    ) -> Self {
        let hash = task
            .map(|t| keys::task(&t.id))
            .unwrap_or_else(|| keys::CLAIMS.into());
        let (how, extra) = match then {
            Then::Done => ("done", String::new()),
            Then::RetryAfter(delay) => ("delay", delay.as_millis().to_string()),
            Then::DeadLetter(entry) => ("dead", serde_json::to_string(entry).unwrap_or_default()),
            Then::PutBack => ("back", String::new()),
        };
        let record = match (task, update) {
            (Some(task), Some(update)) => progress::record_args(task, update),
            _ => Vec::new(),
        };
        Self {
            handle: claimed.handle.clone(),
            fence: claimed.fence,
            idempotency: task
                .and_then(idempotency_key)
                .unwrap_or_else(|| hash.clone()),
            hash,
            list: claimed.list.clone(),
            how,
            extra,
            new_body: new_body.unwrap_or("").to_string(),
            state: "l",
            record,
        }
    }

    /// The finish of an attempt that began and ran: it holds a lock only when its task has a
    /// resource (the script then skips the lookups the other cases need).
    pub fn after_run(mut self, has_resource: bool) -> Self {
        self.state = if has_resource { "bl" } else { "b" };
        self
    }

    fn push<'a>(&'a self, invocation: &mut ScriptInvocation<'a>) {
        invocation
            .key(&self.hash)
            .key(&self.list)
            .key(&self.idempotency);
        invocation
            .arg(&self.handle)
            .arg(self.fence)
            .arg(self.how)
            .arg(&self.extra)
            .arg(&self.new_body)
            .arg(self.state)
            .arg(self.record.len())
            .arg(&self.record);
    }
}

/// A body seen at the pop end of `list` and prepared by the worker: if the next claim takes it,
/// it begins in the same call.
pub struct Hint<'a> {
    pub list: &'a str,
    pub body: &'a [u8],
    pub begin: &'a Begin,
}

/// One exchange of a worker with the queue ([`Queue::tick`]).
#[derive(Default)]
pub struct Tick<'a> {
    /// Outcomes of finished attempts.
    pub finishes: Vec<&'a Finish>,
    /// Tasks claimed by earlier calls, to begin in claim order.
    pub begins: Vec<(&'a Claimed, &'a Begin)>,
    /// Prepared bodies that begin at once if claimed.
    pub hints: Vec<Hint<'a>>,
    /// Most tasks to claim.
    pub want: usize,
    /// Most bodies to peek at (for the hints of the next call).
    pub peek: usize,
}

/// A task claimed by a [`Queue::tick`].
#[derive(Debug)]
pub struct Taken {
    /// The claim (its body empty when it was hinted: the hint has it).
    pub claimed: Claimed,
    /// The index of the hint it matched, and how beginning it went.
    pub begun: Option<(usize, redis::RedisResult<Begun>)>,
}

/// What a [`Queue::tick`] did.
#[derive(Debug, Default)]
pub struct Ticked {
    /// Per finish: `Ok(false)` when the claim was lost (a newer attempt owns the task; nothing
    /// written), or the error Redis raised for that task.
    pub finished: Vec<redis::RedisResult<bool>>,
    /// Per begin, in order.
    pub begun: Vec<redis::RedisResult<Begun>>,
    /// Tasks claimed, in claim order.
    pub taken: Vec<Taken>,
    /// The next bodies in claim order (list, body), left where they are.
    pub peeked: Vec<(String, Vec<u8>)>,
}

/// What beginning a task decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// Run it: this is attempt `attempts`; `cancelled` when a cancel was requested meanwhile.
    Run { attempts: u32, cancelled: bool },
    /// Out of attempts (the last one stopped without finishing): fail it.
    Exhausted { attempts: u32 },
    /// Parked behind `holder` of its resource; handed over in order when the holder finishes.
    Parked { holder: String },
    /// A copy of a task that already finished: dropped.
    Finished { status: String },
    /// The claim was lost before it began (recovered meanwhile): someone else owns it.
    Superseded,
    /// An older claim of possibly the same resource has not begun yet: out of flight until it
    /// begins (then ready again).
    Blocked,
    /// A task with the same scoped idempotency key completed: report its result.
    Duplicate { first: String, result: String },
    /// A task with the same scoped idempotency key is still running: retry later.
    IdempotencyWait { first: String },
    /// Redis refuses to record this task (its hash is not a hash).
    Broken,
}

/// An expired claim, as the reaper reads it.
#[derive(Debug, Clone)]
pub struct Expired {
    pub handle: String,
    pub fence: u64,
    pub list: String,
    pub body: Vec<u8>,
}

/// What recovering an expired claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Not expired any more, or no longer that claim.
    Skipped,
    /// Back in its list (or the ready list, holding its lock).
    Requeued,
    /// Dead-lettered as a poison pill.
    Dead,
}

/// What a worker needs to talk to the queues.
#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    worker: String,
    /// Lists in claim order.
    order: Vec<String>,
    lease: Duration,
}

impl Queue {
    /// The queues of `worker`, claiming from `order` (priority order) with leases of `lease`.
    pub fn new(
        conn: ConnectionManager,
        worker: String,
        order: Vec<String>,
        lease: Duration,
    ) -> Self {
        Self {
            conn,
            worker,
            order,
            lease,
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

    /// The lease of a claim.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How long a claim recovered before it began keeps younger tasks of a resource blocked
    /// when nobody claims it again (its list is no longer consumed): ten leases.
    fn forget_after(&self) -> Duration {
        self.lease * 10
    }

    fn state<'a>(invocation: &mut ScriptInvocation<'a>) {
        for key in keys::QUEUE_STATE {
            invocation.key(key);
        }
    }

    /// One exchange with the queue, in one script call: records `tick.finishes`, begins
    /// `tick.begins`, claims up to `tick.want` tasks (beginning at once those matching a hint) and
    /// peeks at up to `tick.peek` next bodies. Running it again after a lost reply repeats no
    /// finish (the claims are gone: `Ok(false)`); claims whose reply was lost are recovered by
    /// their leases.
    pub async fn tick(&self, tick: &Tick<'_>) -> redis::RedisResult<Ticked> {
        let mut invocation = TICK.prepare_invoke();
        Self::state(&mut invocation);
        for list in &self.order {
            invocation.key(list);
        }
        invocation
            .arg(&self.worker)
            .arg(self.lease.as_millis() as u64)
            .arg(tick.want)
            .arg(tick.peek)
            .arg(self.forget_after().as_millis() as u64)
            .arg(IDEMPOTENCY_WAIT.as_millis() as u64)
            .arg(IDEMPOTENCY_TTL_S)
            .arg(self.order.len())
            .arg(tick.finishes.len())
            .arg(tick.begins.len())
            .arg(tick.hints.len());
        for finish in &tick.finishes {
            finish.push(&mut invocation);
        }
        for (claimed, begin) in &tick.begins {
            invocation.key(&begin.hash).key(&begin.idempotency);
            invocation.arg(&claimed.handle).arg(claimed.fence);
            begin.push_args(&mut invocation);
        }
        for hint in &tick.hints {
            invocation
                .key(&hint.begin.hash)
                .key(&hint.begin.idempotency);
            invocation.arg(hint.list).arg(hint.body);
            hint.begin.push_args(&mut invocation);
        }
        let reply: redis::Value = invocation.invoke_async(&mut self.conn.clone()).await?;
        parse_ticked(reply)
    }

    /// Renews the leases of `held` (handle, fence) in one call; returns the handles lost.
    pub async fn renew(&self, held: &[(String, u64)]) -> redis::RedisResult<Vec<String>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = RENEW.prepare_invoke();
        Self::state(&mut invocation);
        invocation.arg(self.lease.as_millis() as u64);
        for (handle, fence) in held {
            invocation.arg(handle).arg(*fence);
        }
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Claims whose lease ran out (at most `limit`).
    pub async fn expired(&self, limit: usize) -> redis::RedisResult<Vec<Expired>> {
        let mut invocation = EXPIRED.prepare_invoke();
        Self::state(&mut invocation);
        invocation
            .arg(limit)
            .arg(self.forget_after().as_millis() as u64);
        let flat: Vec<Vec<u8>> = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(flat
            .chunks_exact(4)
            .map(|c| Expired {
                handle: String::from_utf8_lossy(&c[0]).into_owned(),
                fence: String::from_utf8_lossy(&c[1]).parse().unwrap_or(0),
                list: String::from_utf8_lossy(&c[2]).into_owned(),
                body: c[3].clone(),
            })
            .collect())
    }

    /// Gives back one expired claim of `task` (the stand-in task for unreadable bodies):
    /// requeued with `queued` recorded, or past `max_recoveries` dead-lettered with `failed`.
    pub async fn recover(
        &self,
        expired: &Expired,
        task: &Task,
        max_recoveries: u32,
        queued: &Update<'_>,
        failed: &Update<'_>,
        entry: &DeadLetter,
    ) -> redis::RedisResult<Recovery> {
        let mut invocation = RECOVER.prepare_invoke();
        Self::state(&mut invocation);
        let list = if expired.list.is_empty() {
            self.order.first().cloned().unwrap_or_default()
        } else {
            expired.list.clone()
        };
        invocation.key(keys::task(&task.id)).key(list);
        let queued = progress::record_args(task, queued);
        invocation
            .arg(&expired.handle)
            .arg(expired.fence)
            .arg(max_recoveries)
            .arg(serde_json::to_string(entry).unwrap_or_default())
            .arg(queued.len())
            .arg(queued)
            .arg(progress::record_args(task, failed));
        let (kind, _n): (String, i64) = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(match kind.as_str() {
            "requeued" => Recovery::Requeued,
            "dead" => Recovery::Dead,
            _ => Recovery::Skipped,
        })
    }

    /// Moves due delayed tasks back. Returns how many, and how long until the next one is due.
    pub async fn promote_due(&self) -> redis::RedisResult<(usize, Option<Duration>)> {
        let mut lists = self.order.clone();
        let mut moved = 0;
        // At most twice: the second time with lists this worker does not consume (a rolling
        // change of queues.yml) that the first pass named.
        for _ in 0..2 {
            let mut invocation = PROMOTE.prepare_invoke();
            Self::state(&mut invocation);
            for list in &lists {
                invocation.key(list);
            }
            invocation.arg(500);
            let reply: Vec<redis::Value> = invocation.invoke_async(&mut self.conn.clone()).await?;
            let int = |v: Option<&redis::Value>| match v {
                Some(redis::Value::Int(n)) => *n,
                _ => -1,
            };
            moved += int(reply.first()).max(0) as usize;
            let next = int(reply.get(1));
            let unknown: Vec<String> = reply
                .iter()
                .skip(2)
                .filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .filter(|l| !lists.contains(l))
                .collect();
            let next = (next >= 0).then(|| Duration::from_millis(next as u64));
            if unknown.is_empty() {
                return Ok((moved, next));
            }
            lists.extend(unknown);
        }
        Ok((moved, Some(Duration::ZERO)))
    }

    /// Takes or keeps the leadership `key` for this worker for `ttl`; true when it leads.
    pub async fn lead(&self, key: &str, ttl: Duration) -> redis::RedisResult<bool> {
        let led: i64 = LEAD
            .key(key)
            .arg(&self.worker)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(led == 1)
    }

    /// Gives up the leadership `key` if this worker holds it, and pushes one token onto
    /// `baton` (one idle worker blocked on it wakes and takes the role).
    pub async fn resign(&self, key: &str, baton: &str) -> redis::RedisResult<bool> {
        let held: i64 = RESIGN
            .key(key)
            .key(baton)
            .arg(&self.worker)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(held == 1)
    }

    /// Moves what an older build left behind back to the pop end of its lists: the per-worker
    /// processing lists of this worker id and of registered workers whose heartbeat expired (for
    /// the lists this worker consumes; no SCAN), and the old delayed set, whose members were
    /// `<list>\n<body>`. Returns how many.
    pub async fn put_back_legacy(&self) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let mut moved = 0;
        let registered: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::WORKERS)
            .query_async(&mut conn)
            .await?;
        let mut owners = vec![self.worker.clone()];
        for worker in registered {
            let alive: bool = redis::cmd("EXISTS")
                .arg(keys::heartbeat(&worker))
                .query_async(&mut conn)
                .await?;
            if !alive && worker != self.worker {
                owners.push(worker);
            }
        }
        loop {
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(keys::LEGACY_DELAYED)
                .arg(0)
                .arg(99)
                .query_async(&mut conn)
                .await?;
            if members.is_empty() {
                break;
            }
            for member in members {
                let Some(cut) = member.iter().position(|b| *b == b'\n') else {
                    let _: i64 = redis::cmd("ZREM")
                        .arg(keys::LEGACY_DELAYED)
                        .arg(&member)
                        .query_async(&mut conn)
                        .await?;
                    continue;
                };
                let list = String::from_utf8_lossy(&member[..cut]).into_owned();
                let _: () = redis::pipe()
                    .atomic()
                    .cmd("ZREM")
                    .arg(keys::LEGACY_DELAYED)
                    .arg(&member)
                    .ignore()
                    .cmd("RPUSH")
                    .arg(&list)
                    .arg(&member[cut + 1..])
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                moved += 1;
            }
        }
        let pairs: Vec<(String, String)> = owners
            .iter()
            .flat_map(|owner| self.order.iter().map(|list| (owner.clone(), list.clone())))
            .collect();
        for (owner, list) in &pairs {
            let processing = keys::processing(owner, list);
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

    /// Refreshes this worker's heartbeat (and registers it), for `status`.
    pub async fn heartbeat(&self, info: &str) -> redis::RedisResult<()> {
        redis::pipe()
            .cmd("SET")
            .arg(keys::heartbeat(&self.worker))
            .arg(info)
            .arg("PX")
            .arg(self.lease.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(keys::WORKERS)
            .arg(&self.worker)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// Unregisters workers whose heartbeat expired (for `status`; their claims are recovered by
    /// lease, not by worker). Returns their ids.
    pub async fn prune_workers(&self) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::WORKERS)
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for worker in &workers {
            pipe.cmd("EXISTS").arg(keys::heartbeat(worker));
        }
        let alive: Vec<bool> = pipe.query_async(&mut conn).await?;
        let gone: Vec<String> = workers
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(worker, _)| worker)
            .collect();
        if !gone.is_empty() {
            let _: i64 = redis::cmd("SREM")
                .arg(keys::WORKERS)
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
        Ok(gone)
    }

    /// Removes this worker's heartbeat and registration (clean exit).
    pub async fn deregister(&self) -> redis::RedisResult<()> {
        redis::pipe()
            .cmd("DEL")
            .arg(keys::heartbeat(&self.worker))
            .ignore()
            .cmd("SREM")
            .arg(keys::WORKERS)
            .arg(&self.worker)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
    }
}

fn unexpected(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply of the tick script",
        what.to_string(),
    ))
}

fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

fn bytes(value: redis::Value) -> Vec<u8> {
    match value {
        redis::Value::BulkString(b) => b,
        other => text(&other).into_bytes(),
    }
}

fn array(value: redis::Value) -> redis::RedisResult<Vec<redis::Value>> {
    match value {
        redis::Value::Array(items) => Ok(items),
        // Lua's empty table.
        redis::Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(&format!("{other:?}"))),
    }
}

/// An entry a script reported as `!<error>`: the error Redis raised for that one task (e.g.
/// `WRONGTYPE …`), as the client would have read it.
fn item_error(value: &redis::Value) -> Option<redis::RedisError> {
    let message = text(value);
    let message = message.strip_prefix('!')?;
    let wire = format!("-{}\r\n", message.replace(['\r', '\n'], " "));
    Some(match redis::parse_redis_value(wire.as_bytes()) {
        Ok(redis::Value::ServerError(err)) => err.into(),
        _ => unexpected(message),
    })
}

fn verdict(value: redis::Value) -> redis::RedisResult<Begun> {
    if let Some(err) = item_error(&value) {
        return Err(err);
    }
    let parts = array(value)?;
    let field = |i: usize| parts.get(i).map(text).unwrap_or_default();
    let (a, b) = (field(1), field(2));
    Ok(match field(0).as_str() {
        "run" => Begun::Run {
            attempts: a.parse().unwrap_or(1),
            cancelled: !b.is_empty(),
        },
        "exhausted" => Begun::Exhausted {
            attempts: a.parse().unwrap_or(u32::MAX),
        },
        "parked" => Begun::Parked { holder: a },
        "finished" => Begun::Finished { status: a },
        "blocked" => Begun::Blocked,
        "duplicate" => Begun::Duplicate {
            first: a,
            result: b,
        },
        "idem_wait" => Begun::IdempotencyWait { first: a },
        "broken" => Begun::Broken,
        _ => Begun::Superseded,
    })
}

fn parse_ticked(reply: redis::Value) -> redis::RedisResult<Ticked> {
    let mut parts = array(reply)?.into_iter();
    let mut next = || array(parts.next().unwrap_or(redis::Value::Nil));
    let (finished, begun, claimed, peeked) = (next()?, next()?, next()?, next()?);
    let finished = finished
        .iter()
        .map(|v| match item_error(v) {
            Some(err) => Err(err),
            None => Ok(matches!(v, redis::Value::Int(1))),
        })
        .collect();
    let begun = begun.into_iter().map(verdict).collect();
    let mut taken = Vec::new();
    for entry in claimed {
        let mut fields = array(entry)?.into_iter();
        let mut field = || fields.next().unwrap_or(redis::Value::Nil);
        let handle = text(&field());
        let fence = text(&field()).parse().unwrap_or(0);
        let list = text(&field());
        let hint = text(&field()).parse::<usize>().unwrap_or(0);
        let body = bytes(field());
        let begun = (hint > 0).then(|| (hint - 1, verdict(field())));
        taken.push(Taken {
            claimed: Claimed {
                handle,
                fence,
                list,
                body,
            },
            begun,
        });
    }
    let mut peeked_bodies = Vec::new();
    let mut pairs = peeked.into_iter();
    while let (Some(list), Some(body)) = (pairs.next(), pairs.next()) {
        peeked_bodies.push((text(&list), bytes(body)));
    }
    Ok(Ticked {
        finished,
        begun,
        taken,
        peeked: peeked_bodies,
    })
}

/// The idempotency record of `task`, scoped by its user and type; `None` without a key.
pub fn idempotency_key(task: &Task) -> Option<String> {
    let key = task.idempotency_key.as_deref()?;
    let user = task.user_id.as_deref().unwrap_or(keys::ANONYMOUS_USER);
    Some(keys::idempotency_scoped(user, &task.task_type, key))
}

/// What happens to a task as it leaves the in-flight place.
#[derive(Debug)]
pub enum Then<'a> {
    /// Finished for good.
    Done,
    /// Back to its list after the delay (retry; a lock holder keeps its turn).
    RetryAfter(Duration),
    /// Failed for good: kept in the dead-letter list.
    DeadLetter(&'a DeadLetter),
    /// Back now (shutdown): a lock holder to the ready list, others to the pop end of the list.
    PutBack,
}

/// Turns a pool error into a Redis error, so callers handle one error type.
pub fn pool_error(err: deadpool_redis::PoolError) -> redis::RedisError {
    match err {
        deadpool_redis::PoolError::Backend(e) => e,
        other => redis::RedisError::from(std::io::Error::other(other.to_string())),
    }
}
