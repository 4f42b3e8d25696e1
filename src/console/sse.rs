//! Live updates: one pub/sub subscription per console (`tasks:*`, `team:status`,
//! `sandbox:status`, `dns:changes`) relayed to every open page as Server-Sent Events, and the
//! overview pushed when it changes (queue depths have no event of their own: it is sampled every
//! second, only while a page listens).
//!
//! Resume without missing an update:
//! - `/api/tasks/{id}/events` numbers its events with the task's own `seq` (the contract's
//!   counter, one per update of `task:<id>`). A page that reconnects sends `Last-Event-ID: <seq>`
//!   and gets every event after it: from the task's recorded history (every console records each
//!   task event it relays once, with `HSETNX` by `seq`, in `console:events:<id>`) and this
//!   console's recent events; if updates happened that nobody recorded (no console ran), a
//!   snapshot of the hash (its current `seq`) stands for them. Subscribing comes first, reading
//!   second, and events are deduplicated by `seq`: no gap, no duplicate.
//! - `/api/events` (every task, tenant and zone change) numbers events `<epoch>-<n>` with this
//!   console's own counter; a reconnect within the same console process replays what it missed
//!   from a ring of recent events, and otherwise gets a `resync` event (the page reloads its
//!   data), as it does after the subscription to Redis was lost.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::Console;
use crate::keys;

/// Events kept for replay.
const RING: usize = 5000;
/// Seconds a task's recorded events are kept (as long as a finished task's hash).
const HISTORY_TTL_S: u64 = crate::progress::FINISHED_TTL_S;
/// Time between two samples of the overview while a page listens.
const OVERVIEW_EVERY: Duration = Duration::from_secs(1);

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A task event (`tasks:<user>`), with its task and `seq`.
    Task { id: String, seq: u64 },
    /// A team or sandbox lifecycle event.
    Resource,
    /// A zone change (`<origin> <serial>`).
    Dns,
    /// Events may have been missed: reload.
    Resync,
    /// A new overview (not numbered, not replayed: the latest one is sent on connect).
    Overview,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Task { .. } => "task",
            Kind::Resource => "resource",
            Kind::Dns => "dns",
            Kind::Resync => "resync",
            Kind::Overview => "overview",
        }
    }
}

/// One relayed event: its number on this console, its kind, its JSON.
#[derive(Debug)]
pub struct Relayed {
    pub n: u64,
    pub kind: Kind,
    pub data: String,
}

/// The relay's state, shared by every stream.
pub struct Hub {
    tx: broadcast::Sender<Arc<Relayed>>,
    ring: Mutex<VecDeque<Arc<Relayed>>>,
    next: AtomicU64,
    /// Names this process' numbering, so a number from another console (or an earlier run) is
    /// never taken for one of ours.
    epoch: String,
    overview: Mutex<Option<String>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: broadcast::channel(1024).0,
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            next: AtomicU64::new(1),
            epoch: hex::encode(rand::random::<[u8; 4]>()),
            overview: Mutex::new(None),
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Relayed>>> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers, keeps and broadcasts an event (numbering and sending under one lock, so every
    /// stream sees the numbers in order).
    pub fn push(&self, kind: Kind, data: String) {
        let mut ring = self.ring();
        let relayed = Arc::new(Relayed {
            n: self.next.fetch_add(1, Ordering::Relaxed),
            kind,
            data,
        });
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(relayed.clone());
        let _ = self.tx.send(relayed);
    }

    /// Sends a new overview if it differs from the last one.
    fn overview_changed(&self, data: String) {
        let mut last = self.overview.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(data.as_str()) {
            *last = Some(data.clone());
            let _ = self.tx.send(Arc::new(Relayed {
                n: 0,
                kind: Kind::Overview,
                data,
            }));
        }
    }

    /// Events after number `n`, or `None` when the ring no longer reaches back to `n + 1`.
    fn since(&self, n: u64) -> Option<Vec<Arc<Relayed>>> {
        let ring = self.ring();
        let oldest = ring
            .front()
            .map(|r| r.n)
            .unwrap_or(self.next.load(Ordering::Relaxed));
        if n + 1 < oldest {
            return None;
        }
        Some(ring.iter().filter(|r| r.n > n).cloned().collect())
    }

    /// The recent events of task `id`.
    fn of_task(&self, id: &str) -> Vec<Arc<Relayed>> {
        self.ring()
            .iter()
            .filter(|r| matches!(&r.kind, Kind::Task { id: t, .. } if t == id))
            .cloned()
            .collect()
    }
}

/// Subscribes to the channels and relays until `stop`, subscribing again after a lost connection
/// (then telling every page to resync). Also samples the overview while pages listen, and records
/// every task event into its task's history.
pub async fn relay(
    hub: Arc<Hub>,
    client: redis::Client,
    console: Arc<Console>,
    stop: CancellationToken,
) {
    let (record, recorded) = mpsc::channel::<(String, u64, String)>(10_000);
    tokio::spawn(recorder(console.services.redis.clone(), recorded));
    let mut first = true;
    while !stop.is_cancelled() {
        let mut pubsub = match subscribe(&client).await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                tracing::debug!(%error, "console: cannot subscribe yet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if !first {
            hub.push(Kind::Resync, "{}".into());
        }
        first = false;
        let mut messages = pubsub.on_message();
        let mut tick = tokio::time::interval(OVERVIEW_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if hub.tx.receiver_count() > 0
                        && let Ok(overview) = super::api::overview(&console).await
                    {
                        hub.overview_changed(serde_json::to_string(&overview).unwrap_or_default());
                    }
                }
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name().to_string();
                    let Ok(payload) = message.get_payload::<String>() else { continue };
                    relay_one(&hub, &record, &channel, payload);
                }
            }
        }
        tracing::warn!("console: lost the pub/sub connection; subscribing again");
    }
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe("tasks:*").await?;
    pubsub
        .subscribe(&[keys::TEAM_STATUS, keys::SANDBOX_STATUS, keys::DNS_CHANGES])
        .await?;
    Ok(pubsub)
}

fn relay_one(
    hub: &Hub,
    record: &mpsc::Sender<(String, u64, String)>,
    channel: &str,
    payload: String,
) {
    if channel.starts_with("tasks:") {
        let Ok(event) = serde_json::from_str::<Value>(&payload) else {
            return;
        };
        let id = event.get("task_id").and_then(Value::as_str);
        let seq = event.get("seq").and_then(Value::as_u64);
        let (Some(id), Some(seq)) = (id, seq) else {
            return;
        };
        // Full queue: the history misses an event, which a later snapshot covers; the live
        // stream does not wait for Redis.
        let _ = record.try_send((id.to_string(), seq, payload.clone()));
        hub.push(
            Kind::Task {
                id: id.to_string(),
                seq,
            },
            payload,
        );
    } else if channel == keys::DNS_CHANGES {
        let mut parts = payload.split_whitespace();
        let data = json!({"origin": parts.next(), "serial": parts.next().and_then(|s| s.parse::<u64>().ok())});
        hub.push(Kind::Dns, data.to_string());
    } else {
        hub.push(Kind::Resource, payload);
    }
}

/// Writes task events into their histories, in batches (one pipeline per batch).
async fn recorder(pool: deadpool_redis::Pool, mut events: mpsc::Receiver<(String, u64, String)>) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256
            && let Ok(next) = events.try_recv()
        {
            batch.push(next);
        }
        let mut pipe = redis::pipe();
        for (id, seq, event) in &batch {
            let key = keys::console_events(id);
            pipe.cmd("HSETNX").arg(&key).arg(seq).arg(event).ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(HISTORY_TTL_S).ignore();
            // An attempt starts: the task is in flight and the queue holds its body, which it
            // drops once the task finishes. Keep a copy for the task's page.
            if event.contains(r#""status":"processing","step":0,"#)
                && let Ok(Some(body)) = crate::admin::held_body(&pool, id).await
            {
                pipe.cmd("HSETNX")
                    .arg(&key)
                    .arg(keys::CONSOLE_ENVELOPE_FIELD)
                    .arg(body)
                    .ignore();
            }
        }
        let written = match pool.get().await {
            Ok(mut conn) => pipe.query_async::<()>(&mut *conn).await,
            Err(err) => Err(crate::queue::pool_error(err)),
        };
        if let Err(error) = written {
            tracing::debug!(%error, lost = batch.len(), "console: cannot record task events");
        }
    }
}

/// The event-stream routes.
pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/events", get(all_events))
        .route("/api/tasks/{id}/events", get(task_events))
}

type Events = Sse<
    axum::response::sse::KeepAliveStream<
        std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>,
    >,
>;

/// A stream of what a producer task sends; the producer stops when the page goes away.
fn stream(events: mpsc::Receiver<Event>) -> Events {
    let stream = futures::stream::unfold(events, |mut events| async move {
        events.recv().await.map(|event| (Ok(event), events))
    });
    Sse::new(Box::pin(stream) as _).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn numbered(hub: &Hub, relayed: &Relayed) -> Event {
    Event::default()
        .event(relayed.kind.name())
        .id(format!("{}-{}", hub.epoch, relayed.n))
        .data(relayed.data.clone())
}

/// Every task, tenant and zone event, and the overview.
async fn all_events(State(console): State<Arc<Console>>, headers: HeaderMap) -> Events {
    let hub = console.hub.clone();
    let mut live = hub.tx.subscribe();
    let (out, events) = mpsc::channel::<Event>(256);
    let last = last_event_id(&headers);
    let console_for_task = console.clone();
    tokio::spawn(async move {
        let console = console_for_task;
        let mut sent = 0u64;
        let resync = || Event::default().event("resync").data("{}");
        if let Some(last) = last {
            let ours = last
                .split_once('-')
                .filter(|(epoch, _)| *epoch == hub.epoch)
                .and_then(|(_, n)| n.parse::<u64>().ok());
            match ours.and_then(|n| hub.since(n).map(|items| (n, items))) {
                Some((n, items)) => {
                    sent = n;
                    for item in items {
                        sent = item.n;
                        if out.send(numbered(&hub, &item)).await.is_err() {
                            return;
                        }
                    }
                }
                None => {
                    if out.send(resync()).await.is_err() {
                        return;
                    }
                }
            }
        }
        let current = hub
            .overview
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let current = match current {
            Some(current) => Some(current),
            None => super::api::overview(&console)
                .await
                .ok()
                .map(|o| serde_json::to_string(&o).unwrap_or_default()),
        };
        if let Some(overview) = current
            && out
                .send(Event::default().event("overview").data(overview))
                .await
                .is_err()
        {
            return;
        }
        let stop = console_stop(&console);
        loop {
            let item = tokio::select! {
                _ = out.closed() => return,
                _ = stop.cancelled() => return,
                item = live.recv() => item,
            };
            let event = match item {
                Ok(item) if item.kind == Kind::Overview => {
                    Event::default().event("overview").data(item.data.clone())
                }
                Ok(item) if item.n <= sent => continue,
                Ok(item) => {
                    sent = item.n;
                    numbered(&hub, &item)
                }
                Err(broadcast::error::RecvError::Lagged(_)) => resync(),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if out.send(event).await.is_err() {
                return;
            }
        }
    });
    stream(events)
}

/// The shutdown signal every stream ends on (streams would otherwise outlive the listener).
fn console_stop(console: &Console) -> CancellationToken {
    console.stop.clone()
}

/// The events of one task, numbered by its `seq`, resumed after `Last-Event-ID`.
async fn task_events(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Events {
    let hub = console.hub.clone();
    let mut live = hub.tx.subscribe();
    let (out, events) = mpsc::channel::<Event>(256);
    let after = last_event_id(&headers).and_then(|v| v.parse::<u64>().ok());
    tokio::spawn(async move {
        let mut sent = after.unwrap_or(0);
        // Subscribed first; now what happened before: the recorded history and our recent events.
        let mut known: BTreeMap<u64, String> = match recorded(&console, &id).await {
            Ok(history) => history,
            Err(error) => {
                tracing::debug!(%error, "console: cannot read a task's history");
                BTreeMap::new()
            }
        };
        for item in hub.of_task(&id) {
            if let Kind::Task { seq, .. } = item.kind {
                known.entry(seq).or_insert_with(|| item.data.clone());
            }
        }
        for (seq, data) in known.range(sent + 1..) {
            if out.send(task_event(*seq, data.clone())).await.is_err() {
                return;
            }
            sent = *seq;
        }
        // Updates nobody recorded: the hash's current state stands for them.
        if let Ok(Some((seq, snapshot))) = snapshot(&console, &id).await
            && seq > sent
        {
            if out.send(task_event(seq, snapshot)).await.is_err() {
                return;
            }
            sent = seq;
        }
        let stop = console_stop(&console);
        loop {
            let item = tokio::select! {
                _ = out.closed() => return,
                _ = stop.cancelled() => return,
                item = live.recv() => item,
            };
            match item {
                Ok(item) => {
                    if let Kind::Task { id: task, seq } = &item.kind
                        && *task == id
                        && *seq > sent
                    {
                        sent = *seq;
                        if out.send(task_event(*seq, item.data.clone())).await.is_err() {
                            return;
                        }
                    }
                }
                // Missed events: the hash's state stands for them.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(Some((seq, snapshot))) = snapshot(&console, &id).await
                        && seq > sent
                    {
                        sent = seq;
                        if out.send(task_event(seq, snapshot)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    stream(events)
}

fn task_event(seq: u64, data: String) -> Event {
    Event::default()
        .event("task")
        .id(seq.to_string())
        .data(data)
}

/// The recorded events of a task, by `seq`.
async fn recorded(console: &Console, id: &str) -> redis::RedisResult<BTreeMap<u64, String>> {
    let mut conn = console
        .services
        .redis
        .get()
        .await
        .map_err(crate::queue::pool_error)?;
    let history: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys::console_events(id))
        .query_async(&mut *conn)
        .await?;
    Ok(history
        .into_iter()
        .filter_map(|(seq, event)| Some((seq.parse().ok()?, event)))
        .collect())
}

/// The task's hash as an event (`task.snapshot`) with its `seq`, if it has a hash.
async fn snapshot(console: &Console, id: &str) -> Result<Option<(u64, String)>, super::ApiError> {
    let hash = crate::admin::task_hash(&console.services.redis, id).await?;
    let Some(seq) = hash.get("seq").and_then(|s| s.parse::<u64>().ok()) else {
        return Ok(None);
    };
    let field = |name: &str| hash.get(name).cloned().unwrap_or_default();
    let number = |name: &str| field(name).parse::<u64>().unwrap_or(0);
    let event = json!({
        "seq": seq, "type": "task.snapshot", "task_id": id, "task_type": field("type"),
        "status": field("status"), "step": number("step"), "total_steps": number("total_steps"),
        "percentage": number("percentage"), "message": field("message"),
        "attempts": number("attempts"), "error": field("error"), "timestamp": field("updated_at"),
    });
    Ok(Some((seq, event.to_string())))
}
