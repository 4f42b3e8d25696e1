//! orchestrator: the worker that provisions tenants of a multi-tenant platform.
//!
//! A portal API pushes tasks onto prioritized Redis lists; workers claim them, run the handler of
//! each task type (containers through the Docker API, DNS records, ACME certificates) and report
//! every step in a Redis progress hash and on pub/sub channels.
//!
//! # Layout
//! - [`acme`]: certificates over ACME (account, orders, DNS-01/HTTP-01, storage for Traefik, renewal).
//! - [`config`]: every setting, from flags and environment variables, read once.
//! - [`queues`]: the declared queues and the JSON Schema of every task type (the portal's contract).
//! - [`queue`]: delivery from the prioritized lists: fenced claims with per-task leases, begin in
//!   order per resource, finish, lease renewal, recovery of expired leases, delayed retries (one Lua
//!   script per file in `src/queue/lua/`).
//! - [`worker`]: one worker process: the claim loop, admission, one attempt's lifecycle, and the
//!   background loops (lease renewal, reaper, promoter, cancel listener, waiters), shutdown.
//! - [`task`]: the task envelope, statuses and handler errors.
//! - [`progress`]: the `task:<id>` hash and the events on `tasks:<user>` and resource channels.
//! - [`context`]: what a handler sees while it runs (steps, cancellation, services).
//! - [`handlers`]: one module per task family, each registering its task types.
//! - [`dns`]: the platform zone: Redis state, CoreDNS zone file, embedded authoritative server.
//! - [`services`]: what handlers share, and the seams to DNS and certificates.
//! - [`docker`]: the Docker engine wrapper and the team/sandbox provisioning engine.
//! - [`templates`]: the team/sandbox container templates and their Traefik labels.
//! - [`ownership`]: who owns a name: tenants' name spaces, the DNS and certificate rules.
//! - [`traefik`]: the project's Traefik static configuration adapted for a host process (demo, tests).
//! - [`validate`]: checks of untrusted names before they reach labels, zone files or paths.
//! - [`keys`]: every Redis key and channel name.
//! - [`admin`], [`watch`]: what the CLI does for admins (enqueue, cancel, status, dead letters,
//!   live progress).
//! - [`console`]: the admin console: JSON API, web UI (embedded assets) and live events (SSE).
//! - [`app`], [`connections`], [`metrics`], [`listen`], [`shutdown`]: assembly, Redis connections,
//!   `/healthz` and `/metrics`, hardened HTTP listeners, graceful shutdown.
//! - [`sentinel`], [`replication`]: following the master Redis Sentinel names across failovers;
//!   waiting for replicas (`WAIT`) after the claim, begin and finish.
//!
//! # Invariants
//! - A task is always in exactly one place: a queue list, in flight (with a lease), waiting for its
//!   resource, ready, delayed, or the dead-letter list (every move between them is one script).
//! - Only the attempt holding a task's current fencing token writes its progress and outcome.
//! - Every handler is idempotent and undoes what it created when it fails or is cancelled, and only
//!   that (provisions journal each creation first, see `docker::journal`); a tenant's names are its own.
//! - Untrusted strings are validated ([`validate`]) before they reach a label, a zone file or a path.

pub mod acme;
pub mod admin;
pub mod app;
pub mod config;
pub mod connections;
pub mod console;
pub mod context;
pub mod dns;
pub mod docker;
pub mod handlers;
pub mod keys;
pub mod listen;
pub mod metrics;
pub mod ownership;
pub mod progress;
pub mod queue;
pub mod queues;
pub mod replication;
pub mod sentinel;
pub mod services;
pub mod shutdown;
pub mod task;
pub mod templates;
pub mod traefik;
pub mod validate;
pub mod watch;
pub mod worker;
