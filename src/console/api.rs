//! The console's read-only JSON endpoints: overview, tasks (list, search, detail), dead letters,
//! workers, tenants with their containers, routes and certificates, the zone, and the task types
//! with their JSON Schemas (for the enqueue form). Nothing here changes state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, Console, mask_secrets, stats};
use crate::admin::{self, Held};
use crate::keys;

type Shared = State<Arc<Console>>;

/// The read-only routes.
pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/session", get(session))
        .route("/api/overview", get(overview_json))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task_detail))
        .route("/api/dead", get(dead))
        .route("/api/workers", get(workers))
        .route("/api/tenants", get(tenants))
        .route("/api/dns", get(dns))
        .route("/api/types", get(types))
}

/// What the page needs to know about this console.
async fn session(State(console): Shared) -> Json<Value> {
    Json(json!({
        "actions": console.guard.actions_allowed(),
        "csrf": console.guard.csrf(),
        "domain": console.config.platform.domain,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Depth of one list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListDepth {
    pub name: String,
    pub depth: u64,
}

/// The overview: where tasks are, live workers, and the last hour's finished tasks per minute.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Overview {
    pub lists: Vec<ListDepth>,
    pub queued: u64,
    pub in_flight: u64,
    pub waiting: u64,
    pub delayed: u64,
    pub dead: u64,
    pub workers_alive: usize,
    pub workers: usize,
    pub per_minute: Vec<stats::Minute>,
}

/// Reads the overview (four round trips: depths, places, workers, minutes).
pub async fn overview(console: &Console) -> Result<Overview, ApiError> {
    let pool = &console.services.redis;
    let status = admin::status(pool, &console.definitions.claim_order()).await?;
    let places = admin::places(pool).await?;
    let per_minute = stats::per_minute(pool, 60).await?;
    Ok(Overview {
        queued: status.depths.lists.iter().map(|(_, d)| d).sum(),
        lists: status
            .depths
            .lists
            .iter()
            .map(|(name, depth)| ListDepth {
                name: name.clone(),
                depth: *depth,
            })
            .collect(),
        in_flight: places.in_flight,
        waiting: places.waiting + places.ready,
        delayed: status.depths.delayed,
        dead: status.depths.dead,
        workers_alive: status.workers.iter().filter(|w| w.alive).count(),
        workers: status.workers.len(),
        per_minute,
    })
}

async fn overview_json(State(console): Shared) -> Result<Json<Overview>, ApiError> {
    Ok(Json(overview(&console).await?))
}

/// Filters of the task list.
#[derive(Debug, Default, Deserialize)]
pub struct TaskQuery {
    /// A status (`queued`, `processing`, …) or a place (`in_flight`, `delayed`, `dead`).
    pub state: Option<String>,
    /// A task type.
    #[serde(rename = "type")]
    pub task_type: Option<String>,
    /// A task id (or its start), a user id, or a slug.
    pub q: Option<String>,
    pub limit: Option<usize>,
}

/// Progress hashes examined at most per listing (SCAN), so a big keyspace costs bounded time.
const MAX_SCANNED_KEYS: usize = 200_000;
/// Tasks of each list read for the listing.
const QUEUED_PER_LIST: usize = 200;

/// Tasks by state and type, searched by id, user or slug; newest first.
async fn tasks(
    State(console): Shared,
    Query(query): Query<TaskQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let pool = &console.services.redis;
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let mut rows: BTreeMap<String, Map> = BTreeMap::new();
    let mut bodies: HashMap<String, Value> = HashMap::new();
    for summary in admin::task_summaries(pool, 20_000, MAX_SCANNED_KEYS).await? {
        let mut row: Map = summary
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        row.insert("place".into(), Value::String(String::new()));
        let id = text(&row, "id").to_string();
        rows.insert(id, row);
    }
    // Portal tasks still in their list have no hash yet.
    for (list, queued) in
        admin::queued(pool, &console.definitions.claim_order(), QUEUED_PER_LIST).await?
    {
        for body in queued {
            let Ok(parsed) = serde_json::from_str::<Value>(&body) else {
                continue;
            };
            let Some(id) = parsed.get("id").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let row = rows
                .entry(id.clone())
                .or_insert_with(|| row_from_body(&id, &parsed, "queued", parsed.get("created_at")));
            row.insert("place".into(), Value::String(list.clone()));
            bodies.insert(id, parsed);
        }
    }
    for held in admin::held(pool, 1000).await? {
        let body: Value = serde_json::from_str(&held.body).unwrap_or(Value::Null);
        let row = rows
            .entry(held.id.clone())
            .or_insert_with(|| row_from_body(&held.id, &body, "queued", None));
        row.insert("place".into(), Value::String(held.place.into()));
        bodies.insert(held.id.clone(), body);
    }
    for entry in admin::dead_list(pool, 1000).await? {
        let body: Value = serde_json::from_str(&entry.body).unwrap_or(Value::Null);
        let row = rows.entry(entry.id.clone()).or_insert_with(|| {
            let mut row = row_from_body(&entry.id, &body, "failed", None);
            row.insert("updated_at".into(), Value::String(entry.failed_at.clone()));
            row.insert("error".into(), Value::String(entry.reason.clone()));
            row
        });
        row.insert("place".into(), Value::String("dead".into()));
        bodies.insert(entry.id.clone(), body);
    }
    let wanted = |row: &Map| {
        let state_ok = query.state.as_deref().is_none_or(|state| {
            state.is_empty() || text(row, "status") == state || text(row, "place") == state
        });
        let type_ok = query
            .task_type
            .as_deref()
            .is_none_or(|t| t.is_empty() || text(row, "type") == t);
        state_ok && type_ok
    };
    let q = query.q.as_deref().map(str::trim).unwrap_or("");
    let mut found: Vec<Map> = rows
        .into_iter()
        .filter(|(id, row)| wanted(row) && (q.is_empty() || matches(id, row, bodies.get(id), q)))
        .map(|(_, mut row)| {
            row.remove("result");
            row
        })
        .collect();
    found.sort_by(|a, b| text(b, "updated_at").cmp(text(a, "updated_at")));
    found.truncate(limit);
    Ok(Json(found.into_iter().map(Value::Object).collect()))
}

type Map = serde_json::Map<String, Value>;

fn text<'a>(row: &'a Map, field: &str) -> &'a str {
    row.get(field).and_then(Value::as_str).unwrap_or("")
}

/// A listing row for a task known only by its body.
fn row_from_body(id: &str, body: &Value, status: &str, at: Option<&Value>) -> Map {
    let field = |name: &str| {
        body.get(name)
            .cloned()
            .unwrap_or(Value::String(String::new()))
    };
    let mut row = Map::new();
    row.insert("id".into(), Value::String(id.into()));
    row.insert("type".into(), field("type"));
    row.insert("user_id".into(), field("user_id"));
    row.insert("status".into(), Value::String(status.into()));
    row.insert(
        "updated_at".into(),
        at.cloned().unwrap_or(Value::String(String::new())),
    );
    row
}

/// Whether a task matches a search: its id (or the start of it), its user, or a slug/name in its
/// payload; for finished tasks, whose body is gone, the slug in their result, message or error.
fn matches(id: &str, row: &Map, body: Option<&Value>, q: &str) -> bool {
    let lower = q.to_ascii_lowercase();
    if id.starts_with(&lower) || text(row, "user_id") == q {
        return true;
    }
    if let Some(payload) = body.and_then(|b| b.get("payload")) {
        for key in ["slug", "name"] {
            if payload.get(key).and_then(Value::as_str) == Some(q) {
                return true;
            }
        }
        if let Some(domains) = payload.get("domains").and_then(Value::as_array)
            && domains
                .iter()
                .any(|d| d.as_str().is_some_and(|d| d.contains(q)))
        {
            return true;
        }
    }
    ["result", "message", "error"]
        .iter()
        .any(|field| contains_word(text(row, field), q))
}

/// Whether `haystack` holds `word` not as part of a longer name (`acme` in `acme.localhost`, not
/// in `acme2`).
fn contains_word(haystack: &str, word: &str) -> bool {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    haystack.match_indices(word).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + word.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

/// One task in full: its hash, its envelope (while Redis holds its body), where it is, its
/// dead-letter entry, and every event the consoles recorded (its steps with their times, its
/// attempts and errors).
async fn task_detail(
    State(console): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let pool = &console.services.redis;
    let hash = admin::task_hash(pool, &id).await?;
    let lists = console.definitions.claim_order();
    let mut envelope = admin::envelope(pool, &lists, &id, 1000).await?;
    let dead = admin::dead_list(pool, 10_000)
        .await?
        .into_iter()
        .find(|entry| entry.id == id);
    let held: Option<Held> = admin::held(pool, 1000)
        .await?
        .into_iter()
        .find(|h| h.id == id);
    if hash.is_empty() && envelope.is_none() && dead.is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no task {id} (never enqueued, or finished more than 24 h ago)"),
        ));
    }
    let (events, kept) = history(&console, &id).await?;
    if envelope.is_none()
        && let Some(body) = kept
    {
        envelope = Some(("a copy the console kept when the task started".into(), body));
    }
    let mut task: Map = hash
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    if let Some(result) = task
        .get("result")
        .and_then(Value::as_str)
        .map(str::to_string)
        && let Ok(parsed) = serde_json::from_str::<Value>(&result)
    {
        task.insert("result".into(), mask_secrets(&parsed));
    }
    Ok(Json(json!({
        "task": task,
        "envelope": envelope.map(|(list, body)| json!({
            "list": list,
            "body": serde_json::from_str::<Value>(&body).map(|b| mask_secrets(&b)).unwrap_or(Value::String(body)),
        })),
        "held": held.map(|h| json!({"place": h.place, "worker": h.worker, "claimed_ms": h.claimed_ms, "due_ms": h.due_ms, "list": h.list})),
        "dead": dead.map(|d| json!({"reason": d.reason, "failed_at": d.failed_at, "attempts": d.attempts, "queue": d.queue})),
        "events": events,
    })))
}

/// The recorded events of task `id`, by `seq`, and the envelope kept when it started.
pub async fn history(
    console: &Console,
    id: &str,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let mut conn = console.services.redis.get().await?;
    let mut recorded: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys::console_events(id))
        .query_async(&mut *conn)
        .await?;
    let envelope = recorded.remove(keys::CONSOLE_ENVELOPE_FIELD);
    let mut events: Vec<(u64, Value)> = recorded
        .into_iter()
        .filter_map(|(seq, text)| {
            Some((
                seq.parse().ok()?,
                serde_json::from_str::<Value>(&text).ok()?,
            ))
        })
        .collect();
    events.sort_by_key(|(seq, _)| *seq);
    let events = events
        .into_iter()
        .map(|(_, event)| mask_secrets(&event))
        .collect();
    Ok((events, envelope))
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// The dead-letter entries, newest first, with their bodies.
async fn dead(
    State(console): Shared,
    Query(limit): Query<Limit>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let entries = admin::dead_list(
        &console.services.redis,
        limit.limit.unwrap_or(200).clamp(1, 1000),
    )
    .await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|entry| {
                let body = serde_json::from_str::<Value>(&entry.body)
                    .map(|b| mask_secrets(&b))
                    .unwrap_or(Value::String(entry.body.clone()));
                json!({
                    "id": entry.id, "type": entry.task_type, "queue": entry.queue,
                    "reason": entry.reason, "failed_at": entry.failed_at,
                    "attempts": entry.attempts, "body": body,
                })
            })
            .collect(),
    ))
}

/// Workers with their heartbeat's age and the tasks they hold.
async fn workers(State(console): Shared) -> Result<Json<Vec<Value>>, ApiError> {
    let pool = &console.services.redis;
    let status = admin::status(pool, &console.definitions.claim_order()).await?;
    let ids: Vec<String> = status.workers.iter().map(|w| w.id.clone()).collect();
    let ttls = admin::heartbeat_ttls(pool, &ids).await?;
    let lease_ms = console.config.worker.lease().as_millis() as i64;
    let held = admin::held(pool, 1000).await?;
    Ok(Json(
        status
            .workers
            .into_iter()
            .zip(ttls)
            .map(|(worker, ttl)| {
                let tasks: Vec<Value> = held
                    .iter()
                    .filter(|h| h.place == "in_flight" && h.worker.as_deref() == Some(&worker.id))
                    .map(|h| {
                        let body: Value = serde_json::from_str(&h.body).unwrap_or(Value::Null);
                        json!({"id": h.id, "type": body.get("type"), "claimed_ms": h.claimed_ms, "list": h.list})
                    })
                    .collect();
                json!({
                    "id": worker.id,
                    "alive": worker.alive,
                    // The heartbeat is set with a TTL of one lease at each beat.
                    "heartbeat_age_ms": (ttl >= 0).then(|| (lease_ms - ttl).max(0)),
                    "started_at": worker.info.get("started_at"),
                    "concurrency": worker.info.get("concurrency"),
                    "in_flight": worker.in_flight,
                    "tasks": tasks,
                })
            })
            .collect(),
    ))
}

/// Teams and sandboxes: recorded state, containers (state, health, route), host, owner and
/// certificate expiry. The engine unreachable is reported, not fatal.
async fn tenants(State(console): Shared) -> Result<Json<Value>, ApiError> {
    let services = &console.services;
    let domain = console.config.platform.domain.trim_end_matches('.');
    let store = crate::acme::storage::CertStore::new(&console.config.acme, services.redis.clone());
    let engine = match crate::docker::Engine::connect(&console.config.docker).await {
        Ok(engine) => engine,
        Err(err) => {
            return Ok(Json(
                json!({"tenants": [], "error": format!("Docker engine: {err}")}),
            ));
        }
    };
    let rows = match crate::docker::teams::list(&engine, services).await {
        Ok(rows) => rows,
        Err(err) => {
            return Ok(Json(json!({"tenants": [], "error": err.to_string()})));
        }
    };
    let mut tenants = Vec::new();
    for row in rows {
        let mut containers = Vec::new();
        for c in &row.containers {
            containers.push(json!({
                "name": c.name, "service": c.service, "state": c.state, "health": c.health,
                "route": route_of(&engine, &c.id).await,
            }));
        }
        let cert_name = format!("{}-{}", row.kind.as_str(), row.slug);
        let certificate = store.get(&cert_name).await.ok().flatten().map(|cert| {
            let days = (cert.not_after_time() - chrono::Utc::now()).num_days();
            json!({"name": cert.name, "domains": cert.domains, "not_after": cert.not_after,
                   "status": cert.status, "days_left": days})
        });
        let owner: Option<String> = {
            let mut conn = services.redis.get().await?;
            redis::cmd("HGET")
                .arg(keys::tenant(&row.slug))
                .arg("owner")
                .query_async(&mut *conn)
                .await?
        };
        tenants.push(json!({
            "kind": row.kind.as_str(), "slug": row.slug, "status": row.status,
            "host": format!("{}.{domain}", row.slug), "network": row.network,
            "updated_at": row.updated_at, "owner": owner, "containers": containers,
            "certificate": certificate,
        }));
    }
    Ok(Json(json!({ "tenants": tenants })))
}

/// The Traefik rule on a container's labels (`traefik.http.routers.<name>.rule`).
async fn route_of(engine: &crate::docker::Engine, id: &str) -> Option<String> {
    let inspect = engine.client().inspect_container(id, None).await.ok()?;
    let labels = inspect.config?.labels?;
    labels
        .into_iter()
        .find(|(key, _)| key.starts_with("traefik.http.routers.") && key.ends_with(".rule"))
        .map(|(_, rule)| rule)
}

/// The platform zone: serial and every record set.
async fn dns(State(console): Shared) -> Result<Json<Value>, ApiError> {
    let store = crate::dns::ZoneStore::from_config(&console.config, console.services.redis.clone())
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let zone = store
        .snapshot()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({
        "origin": zone.origin,
        "serial": zone.serial,
        "records": zone.sets.iter().map(|set| json!({
            "owner": set.owner, "type": set.kind.as_str(), "ttl": set.ttl, "values": set.values,
        })).collect::<Vec<_>>(),
    })))
}

/// Every task type with its lists and its JSON Schema (from `queues/schemas/<type>.json`).
async fn types(State(console): Shared) -> Json<Vec<Value>> {
    let definitions = &console.definitions;
    Json(
        definitions
            .task_types()
            .map(|task_type| {
                let path = definitions
                    .dir()
                    .join("schemas")
                    .join(format!("{task_type}.json"));
                let schema = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                    .unwrap_or(Value::Null);
                json!({
                    "type": task_type,
                    "high": definitions.list_for(task_type, "high"),
                    "normal": definitions.list_for(task_type, "normal"),
                    "schema": schema,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::contains_word;

    #[test]
    fn a_slug_matches_as_a_whole_name() {
        assert!(contains_word(r#"{"subdomain":"acme.localhost"}"#, "acme"));
        assert!(contains_word("team acme failed", "acme"));
        assert!(!contains_word("acme2.localhost", "acme"));
        assert!(!contains_word("my-acme", "acme"));
    }
}
