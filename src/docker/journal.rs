//! The creation journal of a provisioning task: a rollback removes only what the task created.
//!
//! Before a provision creates anything (the tenant's name claim, its network, volume, containers,
//! DNS name, certificate) it appends an entry `{kind, name, fence}` to `journal:<task id>` in Redis;
//! every engine object it creates also carries `orchestrator.task=<task id>` and
//! `orchestrator.attempt=<fence>` labels. A failing run removes the journal's entries, newest first,
//! and only objects whose labels name this task: an object that existed before the task began was
//! never journaled (it was adopted) and is never removed, whatever Redis says about the tenant, so a
//! failing re-provision cannot delete a live team or a retained data volume.
//!
//! The journal belongs to the task, not to one attempt: a later attempt of the same task continues
//! with it (what attempt 1 created is still this task's). Before removing anything a run marks the
//! journal `rolling_back`; a run that finds that mark (the previous attempt was killed or lost the
//! engine mid-rollback) finishes the rollback first. The journal is deleted when the task ends
//! successfully (together with every other leftover journal of the same tenant: once a provision
//! has converged, everything that exists is the tenant's) or when its rollback completes; one left
//! behind by a dead-lettered task is finished by `orchestrator reconcile --fix`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::report::Progress;
use super::{DockerError, Engine, is_not_found};
use crate::keys;
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::Kind;

/// Label naming the task whose run created an engine object.
pub const LABEL_TASK: &str = "orchestrator.task";
/// Label naming the attempt (fencing token) that created an engine object.
pub const LABEL_FENCE: &str = "orchestrator.attempt";

/// What a journal entry created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// The tenant's name claim (`tenant:<slug>`).
    Claim,
    /// The tenant's own bridge network.
    Network,
    /// A data volume.
    Volume,
    /// A container.
    Container,
    /// A Swarm service (`BACKEND=swarm`).
    Service,
    /// The tenant's DNS name (`<slug>` A).
    Dns,
    /// A stored certificate.
    Certificate,
}

/// One creation, recorded before it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Name of the object (container, network, volume, certificate name; the slug for DNS/claim).
    pub name: String,
    /// The attempt (fencing token) that recorded it.
    pub fence: u64,
}

/// The journal of one task, as one attempt sees it.
#[derive(Clone)]
pub struct Journal {
    redis: deadpool_redis::Pool,
    task_id: String,
    fence: u64,
    kind: Kind,
    slug: String,
}

impl Journal {
    /// The journal of `task_id` for tenant (`kind`, `slug`), written by attempt `fence`.
    pub fn new(
        redis: deadpool_redis::Pool,
        task_id: &str,
        fence: u64,
        kind: Kind,
        slug: &str,
    ) -> Self {
        Self {
            redis,
            task_id: task_id.to_string(),
            fence,
            kind,
            slug: slug.to_string(),
        }
    }

    /// The creation journal of this run: the task's, or (reconcile --fix, no task) a run of its own.
    pub fn of_run(progress: &dyn Progress, services: &Services, kind: Kind, slug: &str) -> Journal {
        let (id, fence) = match progress.context() {
            // The attempt's fencing token: written into journal entries and creation labels.
            Some(ctx) => (ctx.task().id.clone(), ctx.fence()),
            None => (format!("reconcile-{}", uuid::Uuid::new_v4()), 0),
        };
        Journal::new(services.redis.clone(), &id, fence, kind, slug)
    }

    /// The task this journal belongs to.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The labels every engine object this run creates carries.
    pub fn creation_labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_TASK.to_string(), self.task_id.clone());
        labels.insert(LABEL_FENCE.to_string(), self.fence.to_string());
        labels
    }

    /// Records that this run is about to create `name` of `kind` (idempotent per kind + name).
    pub async fn record(&self, kind: EntryKind, name: &str) -> Result<(), TaskError> {
        if self
            .entries()
            .await?
            .iter()
            .any(|e| e.kind == kind && e.name == name)
        {
            return Ok(());
        }
        let entry = Entry {
            kind,
            name: name.to_string(),
            fence: self.fence,
        };
        let body = serde_json::to_string(&entry)
            .map_err(|e| TaskError::Failed(format!("journal entry: {e}")))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("RPUSH")
            .arg(keys::journal(&self.task_id))
            .arg(body)
            .ignore();
        self.write_state(pipe, &[]).await
    }

    /// Runs `pipe` with the journal's state (tenant, `extra` fields, time) and index entry added.
    async fn write_state(
        &self,
        mut pipe: redis::Pipeline,
        extra: &[(&str, String)],
    ) -> Result<(), TaskError> {
        let mut hset = redis::cmd("HSET");
        hset.arg(keys::journal_state(&self.task_id))
            .arg("kind")
            .arg(self.kind.as_str())
            .arg("slug")
            .arg(&self.slug)
            .arg("updated_at")
            .arg(crate::progress::now());
        for (field, value) in extra {
            hset.arg(*field).arg(value);
        }
        pipe.add_command(hset)
            .ignore()
            .cmd("SADD")
            .arg(keys::JOURNALS)
            .arg(&self.task_id)
            .ignore();
        let mut conn = self.redis.get().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    /// The entries recorded so far, oldest first.
    pub async fn entries(&self) -> Result<Vec<Entry>, TaskError> {
        let mut conn = self.redis.get().await?;
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(keys::journal(&self.task_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut *conn)
            .await?;
        // An unreadable entry is skipped rather than guessed at: removing less is the safe side.
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    /// Whether an earlier attempt started rolling back and did not finish.
    pub async fn rolling_back(&self) -> Result<bool, TaskError> {
        let mut conn = self.redis.get().await?;
        let mark: Option<String> = redis::cmd("HGET")
            .arg(keys::journal_state(&self.task_id))
            .arg("rolling_back")
            .query_async(&mut *conn)
            .await?;
        Ok(mark.is_some())
    }

    async fn mark_rolling_back(&self) -> Result<(), TaskError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.write_state(pipe, &[("rolling_back", self.fence.to_string())])
            .await
    }

    /// Deletes the journal (the task succeeded or its rollback completed).
    pub async fn finish(&self) -> Result<(), TaskError> {
        forget(&self.redis, &self.task_id).await
    }

    /// Deletes every other journal of this tenant: after a provision converged, everything of the
    /// tenant that exists is the tenant's, and no earlier task's rollback may remove it.
    pub async fn settle_tenant(&self) -> Result<(), TaskError> {
        for pending in pending(&self.redis).await? {
            if pending.kind == Some(self.kind) && pending.slug == self.slug {
                forget(&self.redis, &pending.task_id).await?;
            }
        }
        Ok(())
    }

    /// Removes what the journal lists, newest first, and deletes the journal when everything is
    /// gone. Runs to the end and reports the first error; on error the journal stays (marked
    /// rolling back) for the next attempt or `reconcile --fix`. Never checks for cancellation.
    pub async fn rollback(&self, engine: &Engine, services: &Services) -> Result<usize, String> {
        let entries = self.entries().await.map_err(|e| e.to_string())?;
        if entries.is_empty() {
            self.finish().await.map_err(|e| e.to_string())?;
            return Ok(0);
        }
        self.mark_rolling_back().await.map_err(|e| e.to_string())?;
        let mut first_error: Option<String> = None;
        let mut removed = 0;
        // Fenced: a stale attempt (stalled past its lease) never removes what a newer attempt of
        // the same task journaled. Fence 0 is a run outside the queue (reconcile, direct calls).
        let mine = |fence: u64| self.fence == 0 || fence <= self.fence;
        for entry in entries.iter().rev().filter(|e| mine(e.fence)) {
            match self.undo(engine, services, entry).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        let newer = entries.iter().any(|e| !mine(e.fence));
        match first_error {
            // The journal stays while a newer attempt has entries in it: they are that attempt's.
            None if newer => Ok(removed),
            None => {
                self.finish().await.map_err(|e| e.to_string())?;
                Ok(removed)
            }
            Some(e) => Err(e),
        }
    }

    /// Removes one journaled object if it is still this task's; returns whether it removed one.
    async fn undo(
        &self,
        engine: &Engine,
        services: &Services,
        entry: &Entry,
    ) -> Result<bool, String> {
        let ingress = services.config.docker.ingress_container.as_str();
        let ours = |labels: Option<&HashMap<String, String>>| {
            let created_by = labels
                .and_then(|l| l.get(LABEL_FENCE))
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            labels.and_then(|l| l.get(LABEL_TASK)).map(String::as_str) == Some(&self.task_id)
                && (self.fence == 0 || created_by <= self.fence)
                && super::owned_by_us(labels)
        };
        let docker = |e: DockerError| e.to_string();
        match entry.kind {
            EntryKind::Container => {
                let inspect = match engine.client().inspect_container(&entry.name, None).await {
                    Ok(i) => i,
                    Err(e) if is_not_found(&e) => return Ok(false),
                    Err(e) => {
                        return Err(docker(DockerError::engine(
                            format!("inspecting container {}", entry.name),
                            e,
                        )));
                    }
                };
                let labels = inspect.config.as_ref().and_then(|c| c.labels.as_ref());
                if !ours(labels) {
                    return Ok(false);
                }
                let id = inspect.id.clone().unwrap_or_else(|| entry.name.clone());
                engine
                    .remove_container(&id, &entry.name)
                    .await
                    .map_err(docker)?;
                Ok(true)
            }
            EntryKind::Service => {
                let Some(service) = engine.find_service(&entry.name).await.map_err(docker)? else {
                    return Ok(false);
                };
                let labels = service.spec.as_ref().and_then(|s| s.labels.as_ref());
                if !ours(labels) {
                    return Ok(false);
                }
                engine.remove_service(&entry.name).await.map_err(docker)?;
                Ok(true)
            }
            EntryKind::Network => {
                let inspect = match engine.client().inspect_network(&entry.name, None).await {
                    Ok(i) => i,
                    Err(e) if is_not_found(&e) => return Ok(false),
                    Err(e) => {
                        return Err(docker(DockerError::engine(
                            format!("inspecting network {}", entry.name),
                            e,
                        )));
                    }
                };
                // Inspect by name also matches ids and prefixes: compare the name exactly.
                if inspect.name.as_deref() != Some(entry.name.as_str())
                    || !ours(inspect.labels.as_ref())
                {
                    return Ok(false);
                }
                engine
                    .remove_network(&entry.name, ingress)
                    .await
                    .map_err(docker)
            }
            EntryKind::Volume => {
                let volume = match engine.client().inspect_volume(&entry.name).await {
                    Ok(v) => v,
                    Err(e) if is_not_found(&e) => return Ok(false),
                    Err(e) => {
                        return Err(docker(DockerError::engine(
                            format!("inspecting volume {}", entry.name),
                            e,
                        )));
                    }
                };
                if !ours(Some(&volume.labels)) {
                    return Ok(false);
                }
                engine.remove_volume(&entry.name).await.map_err(docker)
            }
            EntryKind::Dns => services
                .names
                .remove_name(&entry.name)
                .await
                .map(|_| true)
                .map_err(|e| e.to_string()),
            EntryKind::Certificate => services
                .certificates
                .remove_certificate(&entry.name)
                .await
                .map(|_| true)
                .map_err(|e| e.to_string()),
            EntryKind::Claim => {
                crate::ownership::release(&services.redis, &entry.name, &self.task_id)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// A journal found in Redis.
#[derive(Debug, Clone)]
pub struct Pending {
    pub task_id: String,
    pub kind: Option<Kind>,
    pub slug: String,
    pub rolling_back: bool,
}

/// Every journal in Redis.
pub async fn pending(redis: &deadpool_redis::Pool) -> Result<Vec<Pending>, TaskError> {
    let mut conn = redis.get().await?;
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::JOURNALS)
        .query_async(&mut *conn)
        .await?;
    let mut found = Vec::new();
    for task_id in ids {
        let state: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::journal_state(&task_id))
            .query_async(&mut *conn)
            .await?;
        found.push(Pending {
            kind: state.get("kind").and_then(|k| Kind::parse(k)),
            slug: state.get("slug").cloned().unwrap_or_default(),
            rolling_back: state.contains_key("rolling_back"),
            task_id,
        });
    }
    Ok(found)
}

async fn forget(redis: &deadpool_redis::Pool, task_id: &str) -> Result<(), TaskError> {
    let mut conn = redis.get().await?;
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(keys::journal(task_id))
        .arg(keys::journal_state(task_id))
        .ignore()
        .cmd("SREM")
        .arg(keys::JOURNALS)
        .arg(task_id)
        .ignore()
        .query_async::<()>(&mut *conn)
        .await?;
    Ok(())
}

/// The journals of tasks that are no longer running (failed, cancelled, dead-lettered, or
/// forgotten), which `reconcile --fix` finishes. A task that is queued, running or waiting for a
/// retry keeps its journal: its next attempt finishes the job.
pub async fn abandoned(services: &Services) -> Result<Vec<Pending>, TaskError> {
    let mut found = Vec::new();
    for p in pending(&services.redis).await? {
        let status: Option<String> = {
            let mut conn = services.redis.get().await?;
            redis::cmd("HGET")
                .arg(keys::task(&p.task_id))
                .arg("status")
                .query_async(&mut *conn)
                .await?
        };
        let running = matches!(
            status.as_deref(),
            Some("queued") | Some("processing") | Some("retrying")
        );
        if status.as_deref() == Some("completed") {
            // A completed provision converged: everything of the tenant is the tenant's now. A
            // journal left behind (a superseded attempt resumed and wrote to it after the newer
            // one finished) must not be rolled back: dropped instead.
            forget(&services.redis, &p.task_id).await?;
            continue;
        }
        if !running {
            found.push(p);
        }
    }
    Ok(found)
}
