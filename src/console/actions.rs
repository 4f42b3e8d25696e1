//! The console's endpoints that change state: dead letters retried or purged (one, several, all),
//! a task cancelled, a task enqueued. Each goes through [`super::auth::Guard::check`] first and
//! then through the same admin operation the CLI uses (`crate::admin`), so the console can do
//! nothing the CLI could not, and validates a new task exactly like the worker (the type's
//! schema through [`crate::queues::Definitions::check_payload`], the envelope through
//! [`crate::task::Task::parse`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Console};
use crate::admin::{self, AdminError, NewTask};

type Shared = State<Arc<Console>>;

/// The routes that change state (all POST).
pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/dead/retry", post(retry_many))
        .route("/api/dead/purge", post(purge_many))
        .route("/api/dead/{id}/retry", post(retry_one))
        .route("/api/dead/{id}/purge", post(purge_one))
        .route("/api/tasks/{id}/cancel", post(cancel))
        .route("/api/tasks", post(enqueue))
}

/// Which dead letters a bulk action is for: the given ids, or all of them.
#[derive(Debug, Default, Deserialize)]
struct Selection {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// A bulk action needs a body saying what it is for: an empty one does nothing.
fn selection(body: &[u8]) -> Result<Selection, ApiError> {
    let selection: Selection = serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"ids\": [...]}} or {{\"all\": true}}: {e}"),
        )
    })?;
    if !selection.all && selection.ids.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "name the entries (ids) or all".into(),
        ));
    }
    Ok(selection)
}

async fn retry_one(
    State(console): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    console.guard.check(&headers)?;
    let retried = admin::dead_retry(&console.services.redis, Some(&id)).await?;
    tracing::info!(task = %id, "console: dead letter queued again");
    Ok(Json(json!({ "retried": retried })))
}

async fn retry_many(
    State(console): Shared,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    console.guard.check(&headers)?;
    let selection = selection(&body)?;
    let pool = &console.services.redis;
    let retried = if selection.all {
        admin::dead_retry(pool, None).await?
    } else {
        let mut retried = Vec::new();
        for id in &selection.ids {
            match admin::dead_retry(pool, Some(id)).await {
                Ok(ids) => retried.extend(ids),
                // Retried meanwhile by someone else: nothing to do for that one.
                Err(AdminError::NoSuchDeadLetter(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        retried
    };
    tracing::info!(count = retried.len(), "console: dead letters queued again");
    Ok(Json(json!({ "retried": retried })))
}

async fn purge_one(
    State(console): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    console.guard.check(&headers)?;
    let purged = admin::dead_remove(&console.services.redis, &id).await?;
    tracing::info!(task = %id, "console: dead letter purged");
    Ok(Json(json!({ "purged": purged })))
}

async fn purge_many(
    State(console): Shared,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    console.guard.check(&headers)?;
    let selection = selection(&body)?;
    let pool = &console.services.redis;
    let purged = if selection.all {
        admin::dead_purge(pool).await?
    } else {
        let mut purged = 0;
        for id in &selection.ids {
            match admin::dead_remove(pool, id).await {
                Ok(n) => purged += n,
                Err(AdminError::NoSuchDeadLetter(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        purged
    };
    tracing::info!(purged, "console: dead letters purged");
    Ok(Json(json!({ "purged": purged })))
}

async fn cancel(
    State(console): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    console.guard.check(&headers)?;
    admin::cancel(&console.services.redis, &id).await?;
    tracing::info!(task = %id, "console: cancellation requested");
    Ok(Json(json!({ "cancel_requested": id })))
}

/// A task to enqueue, as the form sends it.
#[derive(Debug, Deserialize)]
struct Enqueue {
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default = "normal")]
    priority: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout_s: Option<u64>,
}

fn normal() -> String {
    "normal".into()
}

async fn enqueue(
    State(console): Shared,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    console.guard.check(&headers)?;
    let form: Enqueue = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("not a task: {e}")))?;
    let blank = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let id = admin::enqueue(
        &console.services.redis,
        &console.definitions,
        NewTask {
            task_type: form.task_type.clone(),
            payload: if form.payload.is_null() {
                json!({})
            } else {
                form.payload
            },
            priority: form.priority,
            user_id: blank(form.user_id),
            idempotency_key: blank(form.idempotency_key),
            max_attempts: form.max_attempts,
            timeout_s: form.timeout_s,
        },
    )
    .await?;
    tracing::info!(task = %id, task_type = %form.task_type, "console: task enqueued");
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}
