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
//! - [`queue`]: reliable claiming from prioritized lists, acks, retries, recovery from dead workers.
//! - [`task`]: the task envelope, statuses and handler errors.
//! - [`progress`]: the `task:<id>` hash and the events on `tasks:<user>` and resource channels.
//! - [`context`]: what a handler sees while it runs (steps, cancellation, services).
//! - [`handlers`]: one module per task family, each registering its task types.
//! - [`dns`]: the platform zone: Redis state, CoreDNS zone file, embedded authoritative server.
//! - [`services`]: what handlers share, and the seams to DNS and certificates.
//! - [`worker`]: the consuming loop: concurrency, locks, timeouts, heartbeats, shutdown.
//! - [`validate`]: checks of untrusted names before they reach labels, zone files or paths.
//! - [`keys`]: every Redis key and channel name.

pub mod acme;
pub mod config;
pub mod context;
pub mod dns;
pub mod handlers;
pub mod keys;
pub mod progress;
pub mod services;
pub mod task;
pub mod validate;
