//! The exchange loop: every claim, begin and finish of this worker goes through one script call
//! ([`Queue::tick`]), so under load one round trip carries a whole batch: the outcomes of the
//! attempts that ended, the begins of tasks claimed earlier, new claims for the free slots, and a
//! peek at the next bodies. The worker prepares those bodies (parse, schema, handler) while the
//! previous batch runs, so the next call claims and begins them at once. Two calls may be in
//! flight (pipelined on one connection, run in order): the worker handles one batch while Redis
//! runs the other. An idle worker is woken by the listener's wake-up with the body in hand and
//! takes it, "processing" recorded, in one call. On shutdown the loop keeps writing outcomes until
//! what runs has finished or been put back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::admission::Prepared;
use super::{Backoff, CLAIM_BATCH, ROLLBACK_GRACE, Worker, is_final};
use crate::progress::{ATTEMPTS_PLACEHOLDER, Update};
use crate::queue::{Begin, Begun, Claimed, Finish, Hint, Tick, Ticked};
use crate::shutdown::Shutdown;
use crate::task::TaskStatus;

/// An outcome handed to the exchange loop, with where to send how writing it went.
pub(super) type Outcome = (Finish, oneshot::Sender<redis::RedisResult<bool>>);

/// What the exchange loop tells the listener: whether this worker wants tasks it could not find
/// (free slots, the last claim came up short), and a generation that grows each time it
/// looked, so a waiter that woke it blocks again only after it looked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Wanting {
    pub generation: u64,
    pub open: bool,
}

/// How often an idle worker claims anyway (a listener that froze, a wake-up lost with its
/// connection): the longest a task waits while workers are idle.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Most turns the loop yields to the attempts it just started or woke before writing what they
/// finished, and how many turns in a row without an outcome end the wait (a turn is a few µs).
const GATHER_TURNS: usize = 64;
const GATHER_QUIET: usize = 3;

/// Most calls in flight at once (pipelined on one connection, executed in order).
const PIPELINE: usize = 2;

/// One call's content, owned by the call while it is in flight.
struct Batch {
    finishes: Vec<Outcome>,
    begins: Vec<(Prepared, OwnedSemaphorePermit)>,
    begin_args: Vec<Begin>,
    hints: Vec<Prepared>,
    hint_args: Vec<Begin>,
    permits: Vec<OwnedSemaphorePermit>,
    peek: usize,
}

impl Batch {
    fn tick(&self) -> Tick<'_> {
        Tick {
            finishes: self.finishes.iter().map(|(f, _)| f).collect(),
            begins: self
                .begins
                .iter()
                .zip(&self.begin_args)
                .map(|((p, _), b)| (&p.claimed, b))
                .collect(),
            hints: self
                .hints
                .iter()
                .zip(&self.hint_args)
                .map(|(p, begin)| Hint {
                    list: &p.claimed.list,
                    body: &p.claimed.body,
                    begin,
                })
                .collect(),
            want: self.permits.len(),
            peek: self.peek,
        }
    }
}

/// The loop's state between calls.
struct Exchange {
    slots: Arc<Semaphore>,
    running: JoinSet<()>,
    /// Claimed by an earlier call, to begin with the next (they hold their slots).
    begins: Vec<(Prepared, OwnedSemaphorePermit)>,
    /// Bodies seen at the pop end of a list (peeked, or handed over by a wake-up), prepared.
    hints: Vec<Prepared>,
    /// Bodies the calls in flight hold as hints (list, body).
    flying: Vec<(String, Vec<u8>)>,
    /// Outcomes to write with the next call.
    finishes: Vec<Outcome>,
    /// The last claim found fewer tasks than it wanted: claim again only when woken.
    short: bool,
    /// The listener handed over a body since the last call: the next call is an idle pickup,
    /// sent without a peek (see [`Worker::batch`]).
    woken: bool,
    wanting: watch::Sender<Wanting>,
}

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
        let Some(mut outcomes) = self.outcomes_rx.lock().ok().and_then(|mut rx| rx.take()) else {
            warn!("the worker already ran");
            return;
        };
        let background = Shutdown::new();
        let (wakes_tx, mut wakes) = mpsc::unbounded_channel();
        let (wanting, wanting_rx) = watch::channel(Wanting::default());
        let mut loops = self.spawn_background(&background, &wakes_tx, &wanting_rx);

        let mut ex = Exchange {
            slots: Arc::new(Semaphore::new(concurrency)),
            running: JoinSet::new(),
            begins: Vec::new(),
            hints: Vec::new(),
            flying: Vec::new(),
            finishes: Vec::new(),
            short: false,
            woken: false,
            wanting,
        };
        let mut backoff = Backoff::new();
        let mut drain: Option<Drain> = None;
        let mut calls = FuturesOrdered::new();
        let half = (concurrency / 2).max(1);
        loop {
            while ex.running.try_join_next().is_some() {}
            while let Ok(outcome) = outcomes.try_recv() {
                ex.finishes.push(outcome);
            }
            while let Ok((list, body)) = wakes.try_recv() {
                self.hint(&mut ex, list, body);
                ex.short = false;
                ex.woken = true;
            }
            if shutdown.is_triggered() && drain.is_none() {
                drain = Some(self.start_drain(&ex));
                ex.hints.clear();
                ex.publish(false);
            }
            if let Some(drain) = &mut drain {
                if ex.running.is_empty()
                    && ex.begins.is_empty()
                    && ex.finishes.is_empty()
                    && calls.is_empty()
                {
                    break;
                }
                self.drain_step(drain, &mut ex.running).await;
            }
            let stopping = drain.is_some();
            if calls.len() < PIPELINE {
                let mut permits = Vec::new();
                if !stopping && !ex.short {
                    while permits.len() < CLAIM_BATCH {
                        match ex.slots.clone().try_acquire_owned() {
                            Ok(p) => permits.push(p),
                            Err(_) => break,
                        }
                    }
                }
                let work = ex.finishes.len() + ex.begins.len() + permits.len();
                // A second call in flight only with half a batch to carry: it overlaps the
                // worker's share of one batch with Redis's share of the other.
                if work > 0 && (calls.is_empty() || work >= half) {
                    let batch = self.batch(&mut ex, permits);
                    let queue = self.queue.clone();
                    let config = self.services.config.clone();
                    calls.push_back(async move {
                        // The one call that writes claims, begins and outcomes: a deployment that
                        // waits for replicas (REDIS_WAIT_REPLICAS) waits here, before the reply is
                        // acted on; a reply in doubt is an error like any Redis failure.
                        let tick = batch.tick();
                        let reply =
                            crate::replication::replicated(&config, queue.tick(&tick)).await;
                        (batch, reply)
                    });
                    continue;
                }
            }
            // Nothing to send now: wait for a reply, an outcome, a wake-up, a free slot, the idle
            // poll.
            let idle = ex.short && !stopping && calls.is_empty();
            // Waiting for a slot only when none is free (free ones already failed to make a call
            // worth sending).
            let free = !ex.short
                && !stopping
                && calls.len() < PIPELINE
                && ex.slots.available_permits() == 0;
            tokio::select! {
                Some((batch, reply)) = calls.next(), if !calls.is_empty() => {
                    match self.settle(&mut ex, batch, reply) {
                        Ok(()) => {
                            backoff.reset();
                            self.metrics.redis_ok();
                            // Attempts that end at once (or fail fast) travel with the next call.
                            gather(&mut outcomes, &mut ex.finishes).await;
                        }
                        Err(err) => {
                            self.note_trouble();
                            let pause = backoff.next();
                            warn!(error = %err, retry_in = ?pause, "cannot reach the queue; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = shutdown.wait(), if !stopping => {}
                            }
                        }
                    }
                }
                outcome = outcomes.recv() => {
                    if let Some(outcome) = outcome {
                        ex.finishes.push(outcome);
                        gather(&mut outcomes, &mut ex.finishes).await;
                    }
                }
                wake = wakes.recv() => {
                    if let Some((list, body)) = wake {
                        self.hint(&mut ex, list, body);
                        ex.short = false;
                        ex.woken = true;
                    }
                }
                permit = ex.slots.clone().acquire_owned(), if free => drop(permit),
                _ = ex.running.join_next(), if !ex.running.is_empty() => {}
                _ = tokio::time::sleep(IDLE_POLL), if idle => ex.short = false,
                _ = tokio::time::sleep(Duration::from_millis(100)), if stopping => {}
                _ = shutdown.wait(), if !stopping => {}
            }
        }

        ex.publish(false);
        background.trigger();
        while loops.join_next().await.is_some() {}
        if let Err(err) = self.queue.deregister().await {
            warn!(error = %err, "could not deregister; the heartbeat expires by itself");
        }
        info!(worker = %self.id, "worker stopped");
    }

    /// Hands an outcome to the exchange loop and waits until it is written (`Ok(false)`: the
    /// claim was lost, nothing written).
    pub(super) async fn finish(&self, finish: Finish) -> redis::RedisResult<bool> {
        let stopped =
            || redis::RedisError::from(std::io::Error::other("the worker's exchange loop stopped"));
        let (tx, rx) = oneshot::channel();
        self.outcomes_tx.send((finish, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Prepares a body seen at the pop end of `list`, so the next call begins it if it claims it.
    fn hint(&self, ex: &mut Exchange, list: String, body: Vec<u8>) {
        if ex
            .hints
            .iter()
            .any(|h| h.claimed.list == list && h.claimed.body == body)
        {
            return;
        }
        let seen = Claimed {
            handle: String::new(),
            fence: 0,
            list,
            body,
        };
        // A body that cannot run is left to the claim, which rejects it with its reason.
        if let Ok(prepared) = self.prepare(seen) {
            ex.hints.push(prepared);
        }
    }

    /// The next call's batch: the outcomes, the begins of what was claimed, claims for
    /// `permits` free slots (beginning the hinted bodies at once: the first ones seen, which are
    /// the ones it will claim) and a peek for the calls after it.
    fn batch(&self, ex: &mut Exchange, permits: Vec<OwnedSemaphorePermit>) -> Batch {
        let want = permits.len();
        // Enough bodies for the slots the next calls may fill (prepared ones are kept). Not for
        // an idle pickup: Redis sends the task's first event only once the whole call has run, so
        // the peek would delay it (~30 µs of a cold Redis), and a worker that was idle finds the
        // lists empty after the woken task: the claim coming up short says so without a peek.
        let woken = std::mem::take(&mut ex.woken);
        let peek = if ex.short || want == 0 || woken {
            0
        } else {
            PIPELINE
                * self
                    .services
                    .config
                    .worker
                    .concurrency
                    .clamp(1, CLAIM_BATCH)
        };
        let hints: Vec<Prepared> = ex.hints.drain(..want.min(ex.hints.len())).collect();
        ex.flying.extend(
            hints
                .iter()
                .map(|p| (p.claimed.list.clone(), p.claimed.body.clone())),
        );
        let finishes = std::mem::take(&mut ex.finishes);
        let begins = std::mem::take(&mut ex.begins);
        let message = |p: &Prepared| {
            format!(
                "Started (attempt {ATTEMPTS_PLACEHOLDER} of {})",
                p.max_attempts
            )
        };
        Batch {
            begin_args: begins
                .iter()
                .map(|(p, _)| self.begin_args(p, &message(p)))
                .collect(),
            hint_args: hints
                .iter()
                .map(|p| self.begin_args(p, &message(p)))
                .collect(),
            finishes,
            begins,
            hints,
            permits,
            peek,
        }
    }

    /// Acts on a call's reply. An error leaves the outcomes to their attempts' retries and the
    /// begins for the next call.
    fn settle(
        self: &Arc<Self>,
        ex: &mut Exchange,
        batch: Batch,
        reply: redis::RedisResult<Ticked>,
    ) -> redis::RedisResult<()> {
        let Batch {
            finishes,
            begins,
            hints,
            permits,
            peek,
            ..
        } = batch;
        let want = permits.len();
        for p in &hints {
            if let Some(i) = ex
                .flying
                .iter()
                .position(|(l, b)| *l == p.claimed.list && *b == p.claimed.body)
            {
                ex.flying.swap_remove(i);
            }
        }
        let Ticked {
            finished,
            begun,
            taken,
            peeked,
        } = match reply {
            Ok(ticked) => ticked,
            Err(err) => {
                for (_, reply) in finishes {
                    let _ = reply.send(Err(redis::RedisError::from(std::io::Error::other(
                        err.to_string(),
                    ))));
                }
                ex.begins.extend(begins);
                return Err(err);
            }
        };
        for ((_, reply), result) in finishes.into_iter().zip(finished) {
            let _ = reply.send(result);
        }
        for ((prepared, permit), verdict) in begins.into_iter().zip(begun) {
            self.start(ex, prepared, permit, verdict);
        }
        let mut permits = permits.into_iter();
        let mut hints: Vec<Option<Prepared>> = hints.into_iter().map(Some).collect();
        let claimed = taken.len();
        for taken in taken {
            let Some(permit) = permits.next() else {
                break;
            };
            match taken.begun {
                Some((index, verdict)) => {
                    let Some(mut prepared) = hints.get_mut(index).and_then(Option::take) else {
                        continue;
                    };
                    prepared.claimed.handle = taken.claimed.handle;
                    prepared.claimed.fence = taken.claimed.fence;
                    self.start(ex, prepared, permit, verdict);
                }
                None => match self.prepare(taken.claimed) {
                    Ok(prepared) => ex.begins.push((prepared, permit)),
                    Err(rejected) => {
                        let me = self.clone();
                        drop(permit);
                        ex.running.spawn(async move { me.reject(rejected).await });
                    }
                },
            }
        }
        drop(permits);
        if want > 0 {
            ex.short = claimed < want;
            ex.publish(ex.short && ex.slots.available_permits() > 0);
        }
        if ex.short {
            // The lists came up short: what was seen at their ends is gone.
            ex.hints.clear();
        } else if peek > 0 {
            // The next hints: the bodies now at the pop ends, prepared once (kept when they were
            // hints already), less those a call in flight holds as hints (it will claim them).
            let mut known: Vec<Prepared> = hints.into_iter().flatten().collect();
            known.append(&mut ex.hints);
            for (list, body) in peeked {
                if ex.hinted(&list, &body) {
                    continue;
                }
                match known
                    .iter()
                    .position(|h| h.claimed.list == list && h.claimed.body == body)
                {
                    Some(i) => ex.hints.push(known.swap_remove(i)),
                    None => self.hint(ex, list, body),
                }
            }
        }
        Ok(())
    }

    /// Acts on how beginning a task went: runs it, settles it without running, or lets it go.
    fn start(
        self: &Arc<Self>,
        ex: &mut Exchange,
        prepared: Prepared,
        permit: OwnedSemaphorePermit,
        verdict: redis::RedisResult<Begun>,
    ) {
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(err) if !is_final(&err) => {
                warn!(task = %prepared.task.id, error = %err, "cannot begin the task; next call");
                ex.begins.push((prepared, permit));
                return;
            }
            Err(err) => {
                warn!(task = %prepared.task.id, error = %err, "Redis refuses to begin the task");
                Begun::Broken
            }
        };
        match verdict {
            Begun::Run {
                attempts,
                cancelled,
            } => {
                let me = self.clone();
                ex.running.spawn(async move {
                    me.metrics.in_flight.inc();
                    me.clone()
                        .attempt(prepared, attempts, cancelled, permit)
                        .await;
                    me.metrics.in_flight.dec();
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
                drop(permit);
                ex.running
                    .spawn(async move { me.settle_unrun(prepared, other).await });
            }
        }
    }

    fn begin_args(&self, p: &Prepared, message: &str) -> Begin {
        let started = Update {
            status: TaskStatus::Processing,
            step: 0,
            total_steps: p.total_steps,
            message,
            attempts: ATTEMPTS_PLACEHOLDER,
            error: None,
            result: None,
            worker: &self.id,
        };
        Begin::new(&p.task, p.resource.as_deref(), p.max_attempts, &started)
    }

    fn start_drain(&self, ex: &Exchange) -> Drain {
        let grace = Duration::from_secs(self.services.config.worker.shutdown_grace_s);
        if !ex.running.is_empty() {
            info!(
                in_flight = ex.running.len(),
                ?grace,
                "waiting for in-flight tasks"
            );
        }
        Drain {
            since: Instant::now(),
            grace,
            cancelled: false,
        }
    }

    /// Past the grace period, cancels what runs (handlers undo their work, then are put back);
    /// past the rollback grace too, drops them (their claims are recovered by lease).
    async fn drain_step(&self, drain: &mut Drain, running: &mut JoinSet<()>) {
        let elapsed = drain.since.elapsed();
        if !drain.cancelled && elapsed >= drain.grace && !running.is_empty() {
            drain.cancelled = true;
            self.draining.store(true, Ordering::SeqCst);
            let contexts: Vec<_> = self.in_flight.lock().await.values().cloned().collect();
            warn!(
                left = contexts.len(),
                "grace period over: cancelling and putting back"
            );
            for ctx in contexts {
                ctx.cancel("worker shutting down").await;
            }
        }
        if elapsed >= drain.grace + ROLLBACK_GRACE && !running.is_empty() {
            // Their claims stay in flight and are recovered when the leases run out.
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
    }
}

/// Shutdown in progress.
struct Drain {
    since: Instant,
    grace: Duration,
    cancelled: bool,
}

impl Exchange {
    /// Whether a call in flight holds this body as a hint.
    fn hinted(&self, list: &str, body: &[u8]) -> bool {
        self.flying.iter().any(|(l, b)| l == list && b == body)
    }

    fn publish(&self, open: bool) {
        self.wanting.send_modify(|w| {
            w.generation += 1;
            w.open = open;
        });
    }
}

/// Lets the attempts just started (or woken with a first outcome) run, collecting what they
/// finish, until a few turns in a row bring nothing: outcomes that arrive together share a call.
async fn gather(outcomes: &mut mpsc::UnboundedReceiver<Outcome>, into: &mut Vec<Outcome>) {
    let mut quiet = 0;
    for _ in 0..GATHER_TURNS {
        tokio::task::yield_now().await;
        let before = into.len();
        while let Ok(outcome) = outcomes.try_recv() {
            into.push(outcome);
        }
        quiet = if into.len() == before { quiet + 1 } else { 0 };
        if quiet == GATHER_QUIET {
            break;
        }
    }
}
