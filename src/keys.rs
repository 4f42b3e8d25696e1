//! Every Redis key and channel name the orchestrator uses, in one place, so the layout of the shared
//! state can be read (and changed) without hunting through the code.
//!
//! Queue list names themselves come from `queues/queues.yml`; everything else is derived here.

/// The user named in the channel of a task that carries no `user_id`.
pub const ANONYMOUS_USER: &str = "anonymous";

/// Failed tasks, newest first: JSON entries with the original body and the reason.
pub const DEAD_LETTER: &str = "queue:dead";
/// Tasks waiting for a retry, by handle, scored by the time (ms) they become due (bodies in
/// [`BODIES`], so two identical bodies stay two entries).
pub const DELAYED: &str = "{orch}:delayed";
/// The delayed set of builds before per-task leases (members `<list>\n<body>`): emptied at start.
pub const LEGACY_DELAYED: &str = "queue:delayed";
/// Set of the ids of workers that registered; the reaper checks each one's heartbeat.
pub const WORKERS: &str = "workers";
/// Lock held by the one worker that reaps dead workers at a time.
pub const REAPER_LOCK: &str = "lock:reaper";
/// Channel on which `orchestrator cancel` tells workers to stop a task.
pub const CANCEL_CHANNEL: &str = "orchestrator:cancel";
/// Resource lifecycle channel of teams.
pub const TEAM_STATUS: &str = "team:status";
/// Resource lifecycle channel of sandboxes.
pub const SANDBOX_STATUS: &str = "sandbox:status";

/// Progress hash of a task.
pub fn task(id: &str) -> String {
    format!("task:{id}")
}

/// Heartbeat key of a live worker (expires after the lease); its value describes the worker.
pub fn heartbeat(worker: &str) -> String {
    format!("worker:{worker}")
}

/// Per-worker processing list of versions before per-task leases; only read at start, to hand back
/// what an older build of this worker id left behind.
pub fn processing(worker: &str, queue: &str) -> String {
    format!("processing:{worker}:{queue}")
}

/// Idempotency record: the id of the first task that carried `key`.
pub fn idempotency(key: &str) -> String {
    format!("idempotency:{key}")
}

/// Lock on a resource (e.g. `team:acme`) held while one task changes it.
pub fn resource_lock(resource: &str) -> String {
    format!("lock:{resource}")
}

/// Recorded state of a team (Redis' view, compared with the engine by `reconcile`).
pub fn team(slug: &str) -> String {
    format!("team:{slug}")
}

/// Recorded state of a sandbox.
pub fn sandbox(slug: &str) -> String {
    format!("sandbox:{slug}")
}

/// Set of all recorded team slugs.
pub const TEAMS: &str = "teams";
/// Set of all recorded sandbox slugs.
pub const SANDBOXES: &str = "sandboxes";

/// Metadata hash of a stored certificate (domains, not-after, issuer, status, serial, paths).
pub fn certificate(name: &str) -> String {
    format!("cert:{name}")
}

/// Set of the names of all stored certificates.
pub const CERTIFICATES: &str = "certs";
/// Sorted set of certificate folders (relative to `CERTS_DIR`) to remove, scored by when (unix
/// seconds): removal waits until Traefik can no longer read a document that names them.
pub const CERTIFICATE_REMOVALS: &str = "certs:removals";
/// Lease held by the one worker whose renewal scheduler runs (SET NX PX, refreshed).
pub const RENEWAL_LEASE: &str = "lock:certificate-renewal";
/// List the renewal scheduler pushes `certificate.renew` tasks onto.
pub const CERTIFICATES_NORMAL_QUEUE: &str = "queue:certificates:normal";

/// Key authorization served by the HTTP-01 responder for `token` (short TTL).
pub fn http01_token(token: &str) -> String {
    format!("acme:http01:{token}")
}

/// Record sets of a DNS zone (`origin` with its trailing dot): field `<owner> <TYPE>`, value JSON.
pub fn dns_records(origin: &str) -> String {
    format!("dns:zone:{origin}:records")
}

/// SOA serial of a DNS zone; raised by every change, never lowered.
pub fn dns_serial(origin: &str) -> String {
    format!("dns:zone:{origin}:serial")
}

/// Channel announcing every DNS zone change: message `<origin> <serial>`. Zone file writers and
/// embedded servers reload the zone from Redis when they hear it (and on every (re)subscribe).
pub const DNS_CHANGES: &str = "dns:changes";

/// Creation journal of a provisioning task (list of JSON entries, oldest first): what the task's
/// attempts created, written before each creation, so a rollback removes exactly that.
pub fn journal(task_id: &str) -> String {
    format!("journal:{task_id}")
}

/// State of a task's creation journal (hash: `kind`, `slug`, `rolling_back`, `updated_at`).
pub fn journal_state(task_id: &str) -> String {
    format!("journal:{task_id}:state")
}

/// Set of the task ids that have a creation journal (for `reconcile --fix` and settling).
pub const JOURNALS: &str = "journals";

/// Ownership of a tenant's name space `<slug>.<domain>` (hash: `kind`, `owner`, `task`,
/// `created_at`): one slug, one kind, one owner.
pub fn tenant(slug: &str) -> String {
    format!("tenant:{slug}")
}

// The delivery state of the queue (see `crate::queue`): fixed keys under one hash tag, so every
// script touches keys of one Redis Cluster slot besides the contract's names, and every key a
// script touches is passed in KEYS. The order is the order of `KEYS[1..12]` in every queue script.

/// Live claims: handle -> `fence|claimed_ms|worker`.
pub const CLAIMS: &str = "{orch}:claims";
/// In-flight place: handle -> lease deadline (ms), renewed by the owning worker.
pub const LEASES: &str = "{orch}:leases";
/// Claimed but not yet begun: handle -> order (the fence of its first claim; kept when it is
/// recovered before it began), so tasks of one resource begin in claim order.
pub const UNBEGUN: &str = "{orch}:unbegun";
/// Bodies of tasks out of their queue list (in flight, waiting, ready, delayed): handle -> body.
pub const BODIES: &str = "{orch}:bodies";
/// The list each such task came from: handle -> list name.
pub const ORIGIN: &str = "{orch}:origin";
/// Resource locks: resource -> handle of the task holding it.
pub const LOCKS: &str = "{orch}:locks";
/// The reverse of [`LOCKS`]: handle -> resource.
pub const HELD: &str = "{orch}:held";
/// Waiting place: tasks parked behind a resource's holder, `<resource>\0<order:020>\0<handle>`
/// (score 0, so lexical order is claim order within a resource).
pub const WAITING: &str = "{orch}:waiting";
/// Ready place: handles whose turn on a resource came (they hold its lock), claimed before any list.
pub const READY: &str = "{orch}:ready";
/// Fencing token counter: one increment per claim.
pub const FENCE: &str = "{orch}:fence";
/// Leadership of the one reaper of expired leases per deployment.
pub const REAPER_LEAD: &str = "{orch}:lead:reaper";
/// Leadership of the one promoter of due delayed tasks per deployment.
pub const PROMOTER_LEAD: &str = "{orch}:lead:promoter";
/// Leadership of the one listener per deployment: the idle worker that blocks on the queue lists
/// (so one push wakes one worker); the other idle workers block on [`BATON`].
pub const LISTENER_LEAD: &str = "{orch}:lead:listener";
/// Channel on which the finish step announces a retry due before every other delayed task, so the
/// promoter sleeps until the next due time instead of polling.
pub const PROMOTE_CHANNEL: &str = "{orch}:promote";
/// The listener's baton: a listener that stops listening pushes one token, waking one idle worker.
pub const BATON: &str = "{orch}:baton";

/// The fixed keys every queue script receives first, in this order.
pub const QUEUE_STATE: [&str; 12] = [
    CLAIMS,
    LEASES,
    UNBEGUN,
    BODIES,
    ORIGIN,
    LOCKS,
    HELD,
    WAITING,
    READY,
    DELAYED,
    DEAD_LETTER,
    FENCE,
];

/// Idempotency record of `key`, scoped by the producer's user and the task type: a hash with the
/// first task's `id`, `since` (ms), and once it finished its `status` and `result`.
pub fn idempotency_scoped(user: &str, task_type: &str, key: &str) -> String {
    // The user's length first: user ids may contain ':' and still never collide.
    format!("{{orch}}:idem:{}:{user}:{task_type}:{key}", user.len())
}

// The admin console (`crate::console`).

/// Tasks finished in one minute (hash: `completed`, `failed`), `minute` in unix minutes: every
/// worker adds its counts every few seconds; kept two hours, for the console's chart.
pub fn task_stats(minute: i64) -> String {
    format!("stats:tasks:{minute}")
}

/// Every event of a task a console relayed (hash: `seq` -> event JSON, written with HSETNX, so
/// several consoles record each event once); kept as long as the task's hash: its step history.
pub fn console_events(id: &str) -> String {
    format!("console:events:{id}")
}

/// The field of a task's `console_events` hash that keeps a copy of its envelope.
pub const CONSOLE_ENVELOPE_FIELD: &str = "envelope";

/// Counter the replication probe increments before `WAIT` (`replication`): a write of the probe's
/// own connection that the replicas acknowledge after every write the master applied before it.
pub const REPLICATION_PROBE: &str = "{orch}:replicated";
