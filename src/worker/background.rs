//! The loops beside the claim loop: lease renewal of running attempts (one call per worker),
//! recovery of expired leases (one reaper per deployment, with a grace after Redis trouble), the
//! promoter of delayed tasks (one per deployment, sleeping until the next due time), the cancel
//! listener, the listener's role (one idle worker per deployment blocks on the lists, the others on
//! a baton) and its waiters, which hand the exchange loop the body a push brought, heartbeats and
//! queue-depth sampling.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::claim::Wanting;
use super::{Backoff, Worker, stand_in};
use crate::connections;
use crate::keys;
use crate::progress::{self, ATTEMPTS_PLACEHOLDER, Update};
use crate::queue::{DeadLetter, Expired, Recovery};
use crate::shutdown::Shutdown;
use crate::task::{Task, TaskStatus};

/// How long each blocking wait lasts before it is issued again.
const WAIT_SLICE: Duration = Duration::from_secs(1);
/// Leadership TTL of the listener: a listener that froze hands over within it.
const LISTENER_TTL: Duration = Duration::from_secs(3);
/// Longest the promoter sleeps: a third of its leadership TTL, so it keeps the role.
const PROMOTER_NAP: Duration = Duration::from_secs(1);
/// Leadership TTL of the promoter.
const PROMOTER_LEAD_TTL: Duration = Duration::from_secs(3);
/// Most expired claims recovered per reaper pass.
const REAP_BATCH: usize = 100;

impl Worker {
    pub(super) fn spawn_background(
        self: &Arc<Self>,
        stop: &Shutdown,
        wakes: &mpsc::UnboundedSender<(String, Vec<u8>)>,
        wanting: &watch::Receiver<Wanting>,
    ) -> JoinSet<()> {
        let mut loops = JoinSet::new();
        loops.spawn(self.clone().heartbeat_loop(stop.clone()));
        loops.spawn(self.clone().renew_loop(stop.clone()));
        loops.spawn(self.clone().reaper_loop(stop.clone()));
        loops.spawn(self.clone().promoter_loop(stop.clone()));
        loops.spawn(self.clone().cancel_listener(stop.clone()));
        loops.spawn(self.clone().sampler_loop(stop.clone()));
        let (listening_tx, listening) = watch::channel(false);
        loops.spawn(
            self.clone()
                .listener_role(wanting.clone(), listening_tx, stop.clone()),
        );
        let mut lists = vec![keys::READY.to_string()];
        lists.extend(self.queue.order().iter().cloned());
        for list in lists {
            loops.spawn(self.clone().waiter(
                list,
                wanting.clone(),
                listening.clone(),
                wakes.clone(),
                stop.clone(),
            ));
        }
        loops
    }

    /// Renews the leases of every running attempt in one call, a third of a lease apart; an
    /// attempt whose claim is lost is told to stop.
    async fn renew_loop(self: Arc<Self>, stop: Shutdown) {
        let every = self.queue.lease() / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait() => return,
            }
            let held: Vec<(String, u64, Arc<crate::context::TaskContext>)> = self
                .in_flight
                .lock()
                .await
                .iter()
                .map(|(handle, ctx)| (handle.clone(), ctx.fence(), ctx.clone()))
                .collect();
            if held.is_empty() {
                continue;
            }
            let pairs: Vec<(String, u64)> = held.iter().map(|(h, f, _)| (h.clone(), *f)).collect();
            match self.queue.renew(&pairs).await {
                Ok(lost) => {
                    self.metrics.redis_ok();
                    // A claim finished while the renewal was under way is not lost.
                    let lost = held
                        .iter()
                        .filter(|(h, _, ctx)| lost.contains(h) && !ctx.is_settling());
                    for (handle, _, ctx) in lost {
                        warn!(task = %ctx.task().id, %handle, "lease lost (stalled past it?); stopping the attempt");
                        ctx.supersede(
                            "the lease ran out and the task was given to a newer attempt",
                        )
                        .await;
                    }
                }
                Err(err) => {
                    self.note_trouble();
                    warn!(error = %err, "cannot renew leases; retrying");
                }
            }
        }
    }

    /// One reaper per deployment gives back the claims whose lease ran out, unless Redis itself
    /// was in trouble within the last lease (the owners could not renew meanwhile).
    async fn reaper_loop(self: Arc<Self>, stop: Shutdown) {
        let lease = self.queue.lease();
        let max = self.services.config.worker.max_recoveries;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(lease / 4) => {}
                _ = stop.wait() => return,
            }
            if self.troubled_within(lease) {
                continue;
            }
            match self.queue.lead(keys::REAPER_LEAD, lease).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    self.note_trouble();
                    debug!(error = %err, "reaper cannot take the lead");
                    continue;
                }
            }
            if let Err(err) = self.queue.prune_workers().await {
                debug!(error = %err, "cannot prune stopped workers");
            }
            match self.queue.expired(REAP_BATCH).await {
                Ok(expired) => {
                    for claim in expired {
                        self.recover(&claim, max).await;
                    }
                }
                Err(err) => {
                    self.note_trouble();
                    warn!(error = %err, "reaper pass failed");
                }
            }
        }
    }

    async fn recover(&self, claim: &Expired, max_recoveries: u32) {
        let task = match Task::parse(&claim.body, usize::MAX) {
            Ok((task, _)) => task,
            Err(_) => stand_in(&claim.body, || claim.handle.clone()),
        };
        let queued = Update {
            status: TaskStatus::Queued,
            step: 0,
            total_steps: 0,
            message: "Recovered: its attempt stopped renewing its lease; queued again",
            attempts: ATTEMPTS_PLACEHOLDER,
            error: None,
            result: None,
            worker: "",
        };
        let reason = "poison pill: the workers running it kept stopping (lease expired too often)";
        let failed = Update {
            status: TaskStatus::Failed,
            message: "Failed: poison pill",
            error: Some(reason),
            ..queued.clone()
        };
        let entry = DeadLetter {
            id: task.id.clone(),
            task_type: Some(task.task_type.clone()),
            queue: claim.list.clone(),
            reason: reason.into(),
            failed_at: progress::now(),
            attempts: ATTEMPTS_PLACEHOLDER,
            body: String::from_utf8_lossy(&claim.body).into_owned(),
        };
        match self
            .queue
            .recover(claim, &task, max_recoveries, &queued, &failed, &entry)
            .await
        {
            Ok(Recovery::Requeued) => {
                self.metrics.recovered.inc();
                info!(task = %task.id, fence = claim.fence, "recovered a claim whose lease ran out");
            }
            Ok(Recovery::Dead) => {
                info!(task = %task.id, "dead-lettered a poison pill");
            }
            Ok(Recovery::Skipped) => {}
            Err(err) => {
                self.note_trouble();
                warn!(error = %err, task = %task.id, "cannot recover the claim; next pass");
            }
        }
    }

    /// One promoter per deployment: moves due delayed tasks back and sleeps until the next one is
    /// due, or until the finish step announces an earlier one (on [`keys::PROMOTE_CHANNEL`]); it
    /// wakes at least every third of its leadership TTL to keep the role. The others check every
    /// second whether it is still there.
    async fn promoter_loop(self: Arc<Self>, stop: Shutdown) {
        let mut announcements = None;
        loop {
            let led = match self
                .queue
                .lead(keys::PROMOTER_LEAD, PROMOTER_LEAD_TTL)
                .await
            {
                Ok(led) => led,
                Err(err) => {
                    debug!(error = %err, "promoter cannot take the lead");
                    false
                }
            };
            if !led {
                announcements = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait() => return,
                }
                continue;
            }
            if announcements.is_none() {
                // Subscribed before reading the next due time, so no announcement falls between.
                announcements = self.announcements().await;
            }
            let nap = match self.queue.promote_due().await {
                Ok((_, next)) => next.unwrap_or(PROMOTER_NAP).min(PROMOTER_NAP),
                Err(err) => {
                    debug!(error = %err, "promoting delayed tasks failed");
                    Duration::from_millis(250)
                }
            };
            let nap = nap.max(Duration::from_millis(1));
            match announcements.as_mut() {
                Some(stream) => tokio::select! {
                    message = stream.next() => if message.is_none() { announcements = None },
                    _ = tokio::time::sleep(nap) => {}
                    _ = stop.wait() => return,
                },
                None => tokio::select! {
                    _ = tokio::time::sleep(nap.min(Duration::from_millis(250))) => {}
                    _ = stop.wait() => return,
                },
            }
        }
    }

    /// The announcements of earlier retries, when a subscription can be made.
    async fn announcements(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn futures::Stream<Item = redis::Msg> + Send>>> {
        let mut pubsub = match self.client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(err) => {
                debug!(error = %err, "promoter cannot subscribe");
                return None;
            }
        };
        if let Err(err) = pubsub.subscribe(keys::PROMOTE_CHANNEL).await {
            debug!(error = %err, "promoter cannot subscribe");
            return None;
        }
        Some(Box::pin(pubsub.into_on_message()))
    }

    async fn heartbeat_loop(self: Arc<Self>, stop: Shutdown) {
        let info = serde_json::json!({
            "id": self.id,
            "pid": std::process::id(),
            "started_at": progress::now(),
            "concurrency": self.services.config.worker.concurrency,
            "types": self.registry.task_types().collect::<Vec<_>>(),
        })
        .to_string();
        loop {
            match self.queue.heartbeat(&info).await {
                Ok(()) => self.metrics.redis_ok(),
                Err(err) => warn!(error = %err, "heartbeat failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.queue.lease() / 3) => {}
                _ = stop.wait() => return,
            }
        }
    }

    async fn sampler_loop(self: Arc<Self>, stop: Shutdown) {
        loop {
            if let Ok(depths) = crate::admin::depths(&self.services.redis, self.queue.order()).await
            {
                for (list, depth) in &depths.lists {
                    self.metrics
                        .queue_depth
                        .get_or_create(&crate::metrics::QueueLabel {
                            queue: list.clone(),
                        })
                        .set(*depth as i64);
                }
                self.metrics.delayed.set(depths.delayed as i64);
                self.metrics.dead_lettered.set(depths.dead as i64);
                self.metrics.redis_ok();
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.wait() => return,
            }
        }
    }

    /// Listens for `orchestrator cancel` messages and cancels the named task if it runs here.
    async fn cancel_listener(self: Arc<Self>, stop: Shutdown) {
        let mut backoff = Backoff::new();
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(keys::CANCEL_CHANNEL).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                result = subscribed => result,
                _ = stop.wait() => return,
            };
            match pubsub {
                Ok(mut pubsub) => {
                    backoff.reset();
                    let mut messages = pubsub.on_message();
                    loop {
                        let message = tokio::select! {
                            message = messages.next() => message,
                            _ = stop.wait() => return,
                        };
                        let Some(message) = message else { break };
                        let Ok(id) = message.get_payload::<String>() else {
                            continue;
                        };
                        let contexts: Vec<_> = self
                            .in_flight
                            .lock()
                            .await
                            .values()
                            .filter(|ctx| ctx.task().id == id)
                            .cloned()
                            .collect();
                        for ctx in contexts {
                            info!(task = %id, "cancellation requested");
                            ctx.cancel("cancelled by request").await;
                        }
                    }
                }
                Err(err) => debug!(error = %err, "cancel listener cannot subscribe"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = stop.wait() => return,
            }
        }
    }

    /// Holds the listener's role while this worker wants tasks it cannot find: one idle worker
    /// per deployment (`{orch}:lead:listener`) blocks on the queue lists, the others on the baton,
    /// so one push wakes one worker. The listener keeps the role while it has free slots and
    /// hands it over (one token on the baton wakes one idle worker) once it is full or stops. A
    /// listener that froze loses the role when its lease runs out; meanwhile idle workers still
    /// claim every [`super::claim`] idle poll.
    async fn listener_role(
        self: Arc<Self>,
        mut wanting: watch::Receiver<Wanting>,
        listening: watch::Sender<bool>,
        stop: Shutdown,
    ) {
        let mut conn = None;
        let mut leading = false;
        loop {
            if stop.is_triggered() {
                break;
            }
            let open = wanting.borrow_and_update().open;
            if !open {
                if leading {
                    leading = false;
                    listening.send_replace(false);
                    if let Err(err) = self.queue.resign(keys::LISTENER_LEAD, keys::BATON).await {
                        debug!(error = %err, "cannot hand the listener's role over");
                    }
                }
                tokio::select! {
                    _ = wanting.changed() => {}
                    _ = stop.wait() => break,
                }
                continue;
            }
            match self.queue.lead(keys::LISTENER_LEAD, LISTENER_TTL).await {
                Ok(true) => {
                    leading = true;
                    listening.send_replace(true);
                    // Renewed a third of its lease apart; handed over as soon as it is full.
                    tokio::select! {
                        _ = tokio::time::sleep(LISTENER_TTL / 3) => {}
                        _ = wanting.wait_for(|w| !w.open) => {}
                        _ = stop.wait() => break,
                    }
                }
                Ok(false) => {
                    leading = false;
                    listening.send_replace(false);
                    // Another worker listens: wait for its baton (or the slice, then look again).
                    if conn.is_none() {
                        conn = connections::blocking(&self.client).await.ok();
                    }
                    let Some(connection) = conn.as_mut() else {
                        tokio::select! {
                            _ = tokio::time::sleep(WAIT_SLICE) => {}
                            _ = stop.wait() => break,
                        }
                        continue;
                    };
                    let mut pop = redis::cmd("BLPOP");
                    pop.arg(keys::BATON).arg(WAIT_SLICE.as_secs_f64());
                    tokio::select! {
                        popped = pop.query_async::<Option<(String, String)>>(connection) => {
                            if let Err(err) = popped {
                                debug!(error = %err, "baton wait lost its connection");
                                conn = None;
                            }
                        }
                        _ = stop.wait() => break,
                    }
                }
                Err(err) => {
                    debug!(error = %err, "cannot take the listener's role");
                    tokio::select! {
                        _ = tokio::time::sleep(WAIT_SLICE) => {}
                        _ = stop.wait() => break,
                    }
                }
            }
        }
        if leading {
            let _ = self.queue.resign(keys::LISTENER_LEAD, keys::BATON).await;
        }
    }

    /// While this worker listens and wants tasks, blocks on `list` and hands the body at its pop
    /// end to the exchange loop, which claims it and records "processing" in one call. The wait
    /// is a rotation of the list onto itself: it changes nothing and takes nothing, so a task is
    /// never held by a waiter, and only the one listener per deployment is woken by a push.
    async fn waiter(
        self: Arc<Self>,
        list: String,
        mut wanting: watch::Receiver<Wanting>,
        mut listening: watch::Receiver<bool>,
        wakes: mpsc::UnboundedSender<(String, Vec<u8>)>,
        stop: Shutdown,
    ) {
        let mut seen = 0u64;
        let mut conn = None;
        let mut backoff = Backoff::new();
        loop {
            let generation = loop {
                let w = *wanting.borrow_and_update();
                if w.open && w.generation > seen && *listening.borrow_and_update() {
                    break w.generation;
                }
                tokio::select! {
                    changed = wanting.changed() => if changed.is_err() { return },
                    changed = listening.changed() => if changed.is_err() { return },
                    _ = stop.wait() => return,
                }
            };
            if conn.is_none() {
                match connections::blocking(&self.client).await {
                    Ok(c) => conn = Some(c),
                    Err(err) => {
                        debug!(error = %err, %list, "waiter cannot connect");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next()) => {}
                            _ = stop.wait() => return,
                        }
                        continue;
                    }
                }
            }
            let Some(connection) = conn.as_mut() else {
                continue;
            };
            let mut rotate = redis::cmd("BLMOVE");
            rotate
                .arg(&list)
                .arg(&list)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(WAIT_SLICE.as_secs_f64());
            let moved = tokio::select! {
                moved = rotate.query_async::<Option<Vec<u8>>>(connection) => moved,
                _ = stop.wait() => return,
            };
            match moved {
                Ok(Some(body)) => {
                    backoff.reset();
                    seen = generation;
                    let _ = wakes.send((list.clone(), body));
                }
                Ok(None) => backoff.reset(),
                Err(err) => {
                    debug!(error = %err, %list, "waiter lost its connection");
                    conn = None;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next()) => {}
                        _ = stop.wait() => return,
                    }
                }
            }
        }
    }
}
