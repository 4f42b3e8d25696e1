//! The claim loop: claims batches of tasks while slots are free, begins each batch in claim order
//! (one script call, so tasks of one resource keep their enqueue order), starts an attempt for each
//! task that may run, and on shutdown drains what runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::admission::Prepared;
use super::{Backoff, CLAIM_BATCH, ROLLBACK_GRACE, Worker};
use crate::progress::{ATTEMPTS_PLACEHOLDER, Update};
use crate::queue::{BeginItem, Begun, Claimed};
use crate::shutdown::Shutdown;
use crate::task::TaskStatus;

impl Worker {
    /// Consumes until `shutdown`, then drains: in-flight tasks get the grace period to finish,
    /// then are cancelled (their handlers undo their work) and put back.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let concurrency = self.services.config.worker.concurrency.max(1);
        info!(worker = %self.id, concurrency, lists = ?self.queue.order(), "worker started");
        let never = |_| false;
        self.retry_redis("register the worker", never, || self.queue.heartbeat("{}"))
            .await;
        if let Some(n) = self
            .retry_redis("hand back what an older build left", never, || {
                self.queue.put_back_legacy()
            })
            .await
            && n > 0
        {
            info!(
                count = n,
                "put back tasks an older build of this worker id held"
            );
        }
        let background = Shutdown::new();
        let wake = Arc::new(Notify::new());
        let (idle_tx, idle_rx) = watch::channel(0u64);
        let mut loops = self.spawn_background(&background, &wake, &idle_rx);

        let slots = Arc::new(Semaphore::new(concurrency));
        let mut running = JoinSet::new();
        let mut backoff = Backoff::new();
        while !shutdown.is_triggered() {
            while running.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.wait() => break,
            };
            let mut permits = vec![first];
            while permits.len() < CLAIM_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let claim = self.queue.claim(permits.len());
            match crate::replication::replicated(&self.services.config, claim).await {
                Ok(claimed) if claimed.is_empty() => {
                    drop(permits);
                    backoff.reset();
                    self.metrics.redis_ok();
                    idle_tx.send_modify(|generation| *generation += 1);
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Ok(claimed) => {
                    backoff.reset();
                    self.metrics.redis_ok();
                    permits.truncate(claimed.len());
                    self.start_batch(claimed, permits, &mut running, &shutdown)
                        .await;
                }
                Err(err) => {
                    drop(permits);
                    self.note_trouble();
                    let pause = backoff.next();
                    warn!(error = %err, retry_in = ?pause, "cannot claim tasks; Redis unreachable?");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.wait() => break,
                    }
                }
            }
        }

        self.drain(&mut running).await;
        background.trigger();
        while loops.join_next().await.is_some() {}
        if let Err(err) = self.queue.deregister().await {
            warn!(error = %err, "could not deregister; the heartbeat expires by itself");
        }
        info!(worker = %self.id, "worker stopped");
    }

    /// Checks a claimed batch, begins it in claim order and starts the attempts that may run.
    async fn start_batch(
        self: &Arc<Self>,
        claimed: Vec<Claimed>,
        permits: Vec<OwnedSemaphorePermit>,
        running: &mut JoinSet<()>,
        shutdown: &Shutdown,
    ) {
        let mut pending = Vec::new();
        for (claimed, permit) in claimed.into_iter().zip(permits) {
            match self.prepare(claimed) {
                Ok(prepared) => pending.push((prepared, permit)),
                Err(rejected) => {
                    let me = self.clone();
                    running.spawn(async move {
                        me.reject(rejected).await;
                        drop(permit);
                    });
                }
            }
        }
        let mut backoff = Backoff::new();
        let verdicts = loop {
            let messages: Vec<String> = pending
                .iter()
                .map(|(p, _)| {
                    format!(
                        "Started (attempt {ATTEMPTS_PLACEHOLDER} of {})",
                        p.max_attempts
                    )
                })
                .collect();
            let items: Vec<BeginItem<'_>> = pending
                .iter()
                .zip(&messages)
                .map(|((p, _), message)| self.begin_item(p, message))
                .collect();
            let begin = self.queue.begin(&items);
            match crate::replication::replicated(&self.services.config, begin).await {
                Ok(verdicts) => break verdicts,
                Err(err) => {
                    self.note_trouble();
                    if shutdown.is_triggered() {
                        warn!(error = %err, "cannot begin tasks while stopping; left for lease recovery");
                        return;
                    }
                    let pause = backoff.next();
                    warn!(error = %err, retry_in = ?pause, "cannot begin tasks; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        };
        for ((prepared, permit), verdict) in pending.into_iter().zip(verdicts) {
            match verdict {
                Begun::Run {
                    attempts,
                    cancelled,
                } => {
                    let me = self.clone();
                    running.spawn(async move {
                        me.metrics.in_flight.inc();
                        me.clone().attempt(prepared, attempts, cancelled).await;
                        me.metrics.in_flight.dec();
                        drop(permit);
                    });
                }
                Begun::Parked { holder } => {
                    debug!(task = %prepared.task.id, %holder, "parked behind the resource's holder");
                }
                Begun::Blocked => {
                    debug!(task = %prepared.task.id, "blocked until older claims begin");
                }
                Begun::Finished { status } => {
                    info!(task = %prepared.task.id, %status, "task already finished; dropped the redelivered copy");
                }
                Begun::Superseded => {
                    info!(task = %prepared.task.id, "claim lost before it began; a newer attempt owns it");
                }
                other => {
                    let me = self.clone();
                    running.spawn(async move {
                        me.settle_unrun(prepared, other).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    fn begin_item<'a>(&'a self, p: &'a Prepared, message: &'a str) -> BeginItem<'a> {
        BeginItem {
            claimed: &p.claimed,
            task: &p.task,
            resource: p.resource.as_deref(),
            max_attempts: p.max_attempts,
            started: Update {
                status: TaskStatus::Processing,
                step: 0,
                total_steps: p.total_steps,
                message,
                attempts: ATTEMPTS_PLACEHOLDER,
                error: None,
                result: None,
                worker: &self.id,
            },
        }
    }

    async fn drain(&self, running: &mut JoinSet<()>) {
        let grace = Duration::from_secs(self.services.config.worker.shutdown_grace_s);
        let count = running.len();
        if count > 0 {
            info!(in_flight = count, ?grace, "waiting for in-flight tasks");
        }
        let finished = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            self.draining.store(true, Ordering::SeqCst);
            let contexts: Vec<_> = self.in_flight.lock().await.values().cloned().collect();
            warn!(
                left = contexts.len(),
                "grace period over: cancelling and putting back"
            );
            for ctx in contexts {
                ctx.cancel("worker shutting down").await;
            }
            let undone = tokio::time::timeout(ROLLBACK_GRACE, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if undone.is_err() {
                // Their claims stay in flight and are recovered when the leases run out.
                running.abort_all();
                while running.join_next().await.is_some() {}
            }
        }
    }
}
