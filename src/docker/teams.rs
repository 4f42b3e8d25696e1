//! Operator views over tenants: [`list`] (what Redis records, with the engine's container states),
//! [`reconcile`] (drift between what Redis says exists and what the engine runs; with `fix`, repair
//! it) and [`plan`] (what a provision would create or change, touching nothing).
//!
//! All three read the same desired state as provisioning (the rendered template), so a plan and a
//! provision never disagree about what "up to date" means.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::claim::check_slug;
use super::provision::{self, ProvisionOptions};
use super::record::{read_record, set_key};
use super::report::Quiet;
use super::{DockerError, Engine, Owned, Workload};
use crate::services::Services;
use crate::task::TaskError;
use crate::templates::{self, Kind};

/// One tenant as listed by `orchestrator teams`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantRow {
    pub kind: Kind,
    pub slug: String,
    /// Status recorded in Redis (`active`, `suspended`, `failed`), or `unrecorded`.
    pub status: String,
    pub network: String,
    pub template_hash: String,
    pub updated_at: String,
    /// The engine's containers of the tenant.
    pub containers: Vec<Owned>,
}

impl fmt::Display for TenantRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<8} {:<24} {:<11} {:<20}",
            self.kind.as_str(),
            self.slug,
            self.status,
            self.network
        )?;
        if self.containers.is_empty() {
            write!(f, " (no containers)")?;
        }
        for c in &self.containers {
            write!(f, " {}={}", c.name, c.state)?;
            if !c.health.is_empty() {
                write!(f, "/{}", c.health)?;
            }
        }
        Ok(())
    }
}

/// Every recorded tenant plus every tenant the engine runs without a record, sorted.
pub async fn list(engine: &Engine, services: &Services) -> Result<Vec<TenantRow>, TaskError> {
    // Containers and Swarm services alike (see `docker::backend`).
    let containers = engine.workloads(None).await?;
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for kind in [Kind::Team, Kind::Sandbox] {
        let slugs: Vec<String> = {
            let mut conn = services.redis.get().await?;
            redis::cmd("SMEMBERS")
                .arg(set_key(kind))
                .query_async(&mut *conn)
                .await?
        };
        for slug in slugs {
            let record = read_record(services, kind, &slug).await?;
            let get = |k: &str| record.get(k).cloned().unwrap_or_default();
            seen.insert((kind, slug.clone()));
            rows.push(TenantRow {
                kind,
                status: if record.is_empty() {
                    "missing".into()
                } else {
                    get("status")
                },
                network: get("network"),
                template_hash: get("template_hash"),
                updated_at: get("updated_at"),
                containers: with_health(engine, of(&containers, kind, &slug)).await?,
                slug,
            });
        }
    }
    for c in &containers {
        if let Some(kind) = c.kind
            && seen.insert((kind, c.slug.clone()))
        {
            rows.push(TenantRow {
                kind,
                slug: c.slug.clone(),
                status: "unrecorded".into(),
                network: String::new(),
                template_hash: String::new(),
                updated_at: String::new(),
                containers: with_health(engine, of(&containers, kind, &c.slug)).await?,
            });
        }
    }
    rows.sort_by(|a, b| (a.kind, &a.slug).cmp(&(b.kind, &b.slug)));
    Ok(rows)
}

fn of(all: &[Owned], kind: Kind, slug: &str) -> Vec<Owned> {
    all.iter()
        .filter(|c| c.kind == Some(kind) && c.slug == slug)
        .cloned()
        .collect()
}

async fn with_health(engine: &Engine, mut list: Vec<Owned>) -> Result<Vec<Owned>, DockerError> {
    for c in list
        .iter_mut()
        .filter(|c| c.workload == Workload::Container)
    {
        if let Ok(Some(state)) = engine.container_state(&c.id).await {
            c.health = state.health;
        }
    }
    Ok(list)
}

/// One difference between Redis and the engine.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub kind: Kind,
    pub slug: String,
    /// What is wrong, in plain words.
    pub problem: String,
    /// What `--fix` did (or would do).
    pub action: String,
    /// Whether the fix was applied and succeeded.
    pub fixed: bool,
    /// Why the fix failed, if it did.
    pub error: Option<String>,
}

/// The result of [`reconcile`].
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Tenants checked (recorded or running).
    pub checked: usize,
    pub drift: Vec<Drift>,
    /// Whether fixes were applied.
    pub fix: bool,
}

impl Report {
    /// Whether Redis and the engine agree (after fixes, if applied and all succeeded).
    pub fn is_clean(&self) -> bool {
        self.drift.iter().all(|d| d.fixed)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.drift.is_empty() {
            return writeln!(f, "{} tenant(s) checked: no drift", self.checked);
        }
        writeln!(
            f,
            "{} tenant(s) checked, {} drift(s):",
            self.checked,
            self.drift.len()
        )?;
        for d in &self.drift {
            let state = match (&d.error, d.fixed, self.fix) {
                (Some(e), _, _) => format!("FIX FAILED: {e}"),
                (None, true, _) => "fixed".into(),
                (None, false, true) => "not fixed".into(),
                (None, false, false) => "would fix".into(),
            };
            writeln!(
                f,
                "  {} {}: {} -> {} [{state}]",
                d.kind.as_str(),
                d.slug,
                d.problem,
                d.action
            )?;
        }
        Ok(())
    }
}

/// Compares what Redis records with what the engine runs, tenant by tenant. With `fix`: recorded
/// active tenants are converged again (containers recreated or started, no certificate step),
/// suspended ones stopped, and containers of unrecorded tenants removed (their volumes are kept).
pub async fn reconcile(
    engine: &Engine,
    services: &Services,
    fix: bool,
) -> Result<Report, TaskError> {
    let mut report = Report {
        checked: 0,
        drift: Vec::new(),
        fix,
    };
    // Creation journals of tasks that ended without finishing their rollback (engine lost,
    // dead-lettered): finished first, so what they created goes before the tenants are compared.
    for pending in super::journal::abandoned(services).await? {
        let Some(kind) = pending.kind else { continue };
        let mut drift = Drift {
            kind,
            slug: pending.slug.clone(),
            problem: format!(
                "task {} ended leaving a creation journal{}",
                pending.task_id,
                if pending.rolling_back {
                    " (rollback incomplete)"
                } else {
                    ""
                }
            ),
            action: "finish its rollback".into(),
            fixed: false,
            error: None,
        };
        if fix {
            let journal = super::journal::Journal::new(
                services.redis.clone(),
                &pending.task_id,
                0,
                kind,
                &pending.slug,
            );
            match journal.rollback(engine, services).await {
                Ok(_) => drift.fixed = true,
                Err(e) => drift.error = Some(e),
            }
        }
        report.drift.push(drift);
    }
    let rows = list(engine, services).await?;
    report.checked = rows.len();
    report
        .drift
        .extend(reconcile_ingress(engine, services, fix).await?);
    for row in rows {
        let (problem, action) = match row.status.as_str() {
            "unrecorded" => (
                format!(
                    "engine runs {} container(s) Redis does not record",
                    row.containers.len()
                ),
                "remove the containers and network".to_string(),
            ),
            "active" | "missing" | "failed" => {
                let problem = match active_problem(services, &row) {
                    Some(p) => p,
                    None => continue,
                };
                (problem, "provision again".to_string())
            }
            "suspended" => {
                let running: Vec<&str> = row
                    .containers
                    .iter()
                    .filter(|c| is_running(c))
                    .map(|c| c.name.as_str())
                    .collect();
                if running.is_empty() {
                    continue;
                }
                (
                    format!("suspended but running: {}", running.join(", ")),
                    "stop them".to_string(),
                )
            }
            _ => continue,
        };
        let mut drift = Drift {
            kind: row.kind,
            slug: row.slug.clone(),
            problem,
            action,
            fixed: false,
            error: None,
        };
        if fix {
            let result = apply_fix(engine, services, &row).await;
            match result {
                Ok(()) => drift.fixed = true,
                Err(e) => drift.error = Some(e.to_string()),
            }
        }
        report.drift.push(drift);
    }
    Ok(report)
}

/// The own networks of every tenant Redis records (none in `shared` network mode).
pub async fn recorded_networks(services: &Services) -> Result<Vec<String>, TaskError> {
    let mut networks = Vec::new();
    if services.config.docker.network_mode == "shared" {
        return Ok(networks);
    }
    let mut conn = services.redis.get().await?;
    for kind in [Kind::Team, Kind::Sandbox] {
        let slugs: Vec<String> = redis::cmd("SMEMBERS")
            .arg(set_key(kind))
            .query_async(&mut *conn)
            .await?;
        for slug in slugs {
            networks.push(templates::network_name(&services.config, kind, &slug));
        }
    }
    networks.sort();
    Ok(networks)
}

/// The ingress part of [`reconcile`]: every ingress must be on every tenant network (a recreated
/// Traefik container is not). With `fix`, attaches it; touches nothing else.
pub async fn reconcile_ingress(
    engine: &Engine,
    services: &Services,
    fix: bool,
) -> Result<Vec<Drift>, TaskError> {
    let mut found = Vec::new();
    let ingress = &services.config.docker.ingress_container;
    let networks = recorded_networks(services).await?;
    for (container, network) in engine.ingress_drift(ingress, &networks).await? {
        let (kind, slug) = [Kind::Team, Kind::Sandbox]
            .into_iter()
            .find_map(|k| {
                let slug = network
                    .strip_prefix(&format!("{}-", k.as_str()))?
                    .strip_suffix("-net")?;
                Some((k, slug.to_string()))
            })
            .unwrap_or((Kind::Team, network.clone()));
        let mut drift = Drift {
            kind,
            slug,
            problem: format!("ingress {container} is not attached to network {network}"),
            action: "attach it".into(),
            fixed: false,
            error: None,
        };
        if fix {
            match engine.connect_to_network(&network, &container).await {
                Ok(_) => drift.fixed = true,
                Err(e) => drift.error = Some(e.to_string()),
            }
        }
        found.push(drift);
    }
    Ok(found)
}

/// Whether a workload runs (a service converging towards some tasks counts as running).
fn is_running(w: &Owned) -> bool {
    w.state == "running" || w.state == "converging"
}

/// What is wrong with a tenant Redis records as existing, if anything.
fn active_problem(services: &Services, row: &TenantRow) -> Option<String> {
    if row.status == "failed" && row.containers.is_empty() {
        return None;
    }
    let Ok(rendered) = templates::render(&services.config, row.kind, &row.slug) else {
        return Some("template does not render".into());
    };
    let mut problems = Vec::new();
    for spec in &rendered.containers {
        match row.containers.iter().find(|c| c.name == spec.name) {
            None => problems.push(format!("{} missing", spec.name)),
            Some(c) if c.state != "running" => problems.push(format!("{} is {}", c.name, c.state)),
            Some(c) if c.template_hash != rendered.hash => {
                problems.push(format!("{} has an old template", c.name))
            }
            Some(_) => {}
        }
    }
    if row.status == "failed" {
        problems.push("recorded as failed".into());
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

async fn apply_fix(engine: &Engine, services: &Services, row: &TenantRow) -> Result<(), TaskError> {
    match row.status.as_str() {
        "unrecorded" => {
            for c in &row.containers {
                engine.remove_workload(c).await?;
            }
            if services.config.docker.network_mode != "shared" {
                let network = templates::network_name(&services.config, row.kind, &row.slug);
                engine
                    .remove_network(&network, &services.config.docker.ingress_container)
                    .await?;
            }
            Ok(())
        }
        "suspended" => {
            for c in row.containers.iter().filter(|c| is_running(c)) {
                engine.suspend_workload(c).await?;
            }
            Ok(())
        }
        _ => provision::provision(
            engine,
            services,
            &Quiet,
            row.kind,
            &row.slug,
            &ProvisionOptions::default(),
        )
        .await
        .map(|_| ()),
    }
}

/// One resource in a [`Plan`].
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    /// `network`, `volume`, `container`, `dns`.
    pub resource: String,
    pub name: String,
    /// `create`, `keep`, `start`, `replace`, `remove`.
    pub action: String,
    pub detail: String,
}

/// What a provision would do, computed without changing anything.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub kind: Kind,
    pub slug: String,
    pub template_hash: String,
    pub items: Vec<PlanItem>,
    /// The labels each container would carry, for review.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Plan {
    /// Whether a provision would change anything.
    pub fn changes(&self) -> bool {
        self.items.iter().any(|i| i.action != "keep")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan for {} {} (template {}):",
            self.kind.as_str(),
            self.slug,
            self.template_hash
        )?;
        for i in &self.items {
            writeln!(
                f,
                "  {:<8} {:<10} {:<28} {}",
                i.action, i.resource, i.name, i.detail
            )?;
        }
        for (container, labels) in &self.labels {
            writeln!(f, "  labels of {container}:")?;
            for (k, v) in labels {
                writeln!(f, "    {k}={v}")?;
            }
        }
        if !self.changes() {
            writeln!(f, "  nothing to change")?;
        }
        Ok(())
    }
}

/// What provisioning `slug` of `kind` would create or change (dry run).
pub async fn plan(
    engine: &Engine,
    services: &Services,
    kind: Kind,
    slug: &str,
) -> Result<Plan, TaskError> {
    check_slug(slug)?;
    let config = &services.config;
    let rendered = templates::render(config, kind, slug)
        .map_err(|e| TaskError::Invalid(format!("template: {e}")))?;
    let mut items = Vec::new();
    let network = engine.find_network(&rendered.network).await?;
    items.push(PlanItem {
        resource: "network".into(),
        name: rendered.network.clone(),
        action: if network.is_some() { "keep" } else { "create" }.into(),
        detail: if rendered.own_network && config.docker.swarm() {
            "own overlay (attachable)".into()
        } else if rendered.own_network {
            "own bridge".into()
        } else {
            "shared".into()
        },
    });
    for volume in &rendered.volumes {
        let exists = engine.volume_exists(volume).await?;
        items.push(PlanItem {
            resource: "volume".into(),
            name: volume.clone(),
            action: if exists { "keep" } else { "create" }.into(),
            detail: String::new(),
        });
    }
    let existing = engine.workloads(Some((kind, slug))).await?;
    let resource = if config.docker.swarm() {
        "service"
    } else {
        "container"
    };
    for spec in &rendered.containers {
        let (action, detail) = match existing.iter().find(|c| c.name == spec.name) {
            None => ("create", spec.image.clone()),
            Some(c) if c.template_hash != rendered.hash => (
                "replace",
                format!(
                    "template {} -> {} (start-first)",
                    c.template_hash, rendered.hash
                ),
            ),
            Some(c) if c.state != "running" => ("start", format!("now {}", c.state)),
            Some(_) => ("keep", "running, template unchanged".into()),
        };
        items.push(PlanItem {
            resource: resource.into(),
            name: spec.name.clone(),
            action: action.into(),
            detail,
        });
    }
    for stale in existing
        .iter()
        .filter(|c| !rendered.containers.iter().any(|s| s.name == c.name))
    {
        items.push(PlanItem {
            resource: resource.into(),
            name: stale.name.clone(),
            action: "remove".into(),
            detail: "no longer in the template".into(),
        });
    }
    let record = read_record(services, kind, slug).await?;
    let live = matches!(
        record.get("status").map(String::as_str),
        Some("active") | Some("suspended")
    );
    items.push(PlanItem {
        resource: "dns".into(),
        name: format!("{slug}.{}", config.platform.domain.trim_end_matches('.')),
        action: if live { "keep" } else { "create" }.into(),
        detail: String::new(),
    });
    let labels = rendered
        .containers
        .iter()
        .map(|c| (c.name.clone(), rendered.labels_of(c)))
        .collect();
    Ok(Plan {
        kind,
        slug: slug.to_string(),
        template_hash: rendered.hash.clone(),
        items,
        labels,
    })
}
