//! The task envelope of the portal contract: parsing an untrusted body into a [`Task`], the task
//! statuses, and the errors a handler may end with.
//!
//! A body is parsed exactly once, when a worker claims it. Anything wrong with it (bad JSON, a missing
//! `type`, an id that is not a UUID, a `user_id` that could not name a channel) is an
//! [`EnvelopeError`]: the task is failed and dead-lettered with that reason, never retried.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::validate::InvalidName;

/// One unit of work, as the portal enqueued it (after the worker filled in a missing id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    /// UUID of the task; names its progress hash `task:<id>`.
    #[serde(default)]
    pub id: String,
    /// Task type, e.g. `team.provision`; picks the handler and the payload schema.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Whose `tasks:<user_id>` channel hears about the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Type-specific arguments, checked against the type's JSON Schema.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// A second task with the same key does not run again; it reports the first one's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Attempts before the task fails for good (default: the queue's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Seconds one attempt may take (default: the queue's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// When the producer created it (RFC 3339), if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Why a body could not be read as a task. Each is final: the body is dead-lettered as it came.
#[derive(Debug, Error, PartialEq)]
pub enum EnvelopeError {
    #[error("task body is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("task body is not valid JSON: {0}")]
    BadJson(String),
    #[error("task body is not a valid task envelope: {0}")]
    BadEnvelope(String),
    #[error("task id {0:?} is not a UUID")]
    BadId(String),
    #[error("task type {0:?} is not a valid type name")]
    BadType(String),
    #[error("user_id {0:?} cannot name a channel (1-128 printable characters, no spaces)")]
    BadUserId(String),
    #[error("idempotency_key must be 1-200 printable characters without spaces")]
    BadIdempotencyKey,
    #[error("payload must be a JSON object")]
    PayloadNotObject,
}

impl Task {
    /// Parses an untrusted body. A missing id is generated; the returned flag says so, because the
    /// stored copy must then be rewritten to carry it (so a recovery keeps the same id).
    pub fn parse(body: &[u8], max_bytes: usize) -> Result<(Task, bool), EnvelopeError> {
        if body.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: body.len(),
                limit: max_bytes,
            });
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::BadJson(e.to_string()))?;
        if !value.is_object() {
            return Err(EnvelopeError::BadEnvelope("not a JSON object".into()));
        }
        let mut task: Task =
            serde_json::from_value(value).map_err(|e| EnvelopeError::BadEnvelope(e.to_string()))?;
        let generated = task.id.is_empty();
        if generated {
            task.id = uuid::Uuid::new_v4().to_string();
        } else {
            let parsed = uuid::Uuid::parse_str(&task.id)
                .map_err(|_| EnvelopeError::BadId(task.id.clone()))?;
            // One spelling per task, so `task:<id>` is one key whatever the producer wrote.
            task.id = parsed.hyphenated().to_string();
        }
        if !is_type_name(&task.task_type) {
            return Err(EnvelopeError::BadType(task.task_type.clone()));
        }
        if let Some(user) = &task.user_id
            && !is_token(user, 128)
        {
            return Err(EnvelopeError::BadUserId(user.clone()));
        }
        if let Some(key) = &task.idempotency_key
            && !is_token(key, 200)
        {
            return Err(EnvelopeError::BadIdempotencyKey);
        }
        if !task.payload.is_object() {
            return Err(EnvelopeError::PayloadNotObject);
        }
        Ok((task, generated))
    }

    /// The channel that hears about this task.
    pub fn channel(&self) -> String {
        format!(
            "tasks:{}",
            self.user_id
                .as_deref()
                .unwrap_or(crate::keys::ANONYMOUS_USER)
        )
    }

    /// Compact JSON of the envelope, as stored in lists.
    pub fn to_body(&self) -> String {
        // Serialising a struct of strings and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads the id from a body that may be anything, for bookkeeping of bodies that failed to parse.
pub fn sniff_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let id = value.get("id")?.as_str()?;
    uuid::Uuid::parse_str(id)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// `family.action[.more]`: lowercase words of `[a-z0-9_]` joined by dots.
fn is_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Printable ASCII without spaces: safe inside a Redis key or channel name and a log line.
fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty() && value.len() <= max && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The `status` field of a progress hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Processing,
    Retrying,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Processing => "processing",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the task is over (the hash then gets its 24 h TTL).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// Parses the wire spelling.
    pub fn parse(value: &str) -> Option<Self> {
        serde_json::from_value(Value::String(value.to_string())).ok()
    }
}

/// How a handler (or the worker around it) ends a task that did not complete.
#[derive(Debug, Error)]
pub enum TaskError {
    /// The task is wrong (schema, slug, names); retrying cannot help.
    #[error("{0}")]
    Invalid(String),
    /// A step failed for good (e.g. an image that cannot be found); not retried.
    #[error("{0}")]
    Failed(String),
    /// A step failed for a reason that may pass (CA unreachable, engine busy, Redis down): retried
    /// with backoff while attempts remain.
    #[error("{0}")]
    Retryable(String),
    /// Cancelled by `orchestrator cancel`, by the task's timeout or by shutdown; the handler undid its work.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// This attempt lost its claim (it stalled past its lease and the task was given to a newer
    /// attempt): it must stop without writing an outcome or undoing what the newer attempt owns.
    /// Handlers just propagate it with `?`.
    #[error("superseded: {0}")]
    Superseded(String),
}

impl TaskError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TaskError::Retryable(_))
    }
}

impl From<InvalidName> for TaskError {
    fn from(err: InvalidName) -> Self {
        TaskError::Invalid(err.to_string())
    }
}

impl From<redis::RedisError> for TaskError {
    fn from(err: redis::RedisError) -> Self {
        TaskError::Retryable(format!("redis: {err}"))
    }
}

impl From<deadpool_redis::PoolError> for TaskError {
    fn from(err: deadpool_redis::PoolError) -> Self {
        TaskError::Retryable(format!("redis pool: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_a_missing_id_and_normalises_a_given_one() {
        let (task, generated) = Task::parse(br#"{"type":"system.ping"}"#, 1024).unwrap();
        assert!(generated);
        assert!(uuid::Uuid::parse_str(&task.id).is_ok());
        let (task, generated) = Task::parse(
            br#"{"id":"6F9619FF-8B86-D011-B42D-00C04FC964FF","type":"system.ping","payload":{"a":1}}"#,
            1024,
        )
        .unwrap();
        assert!(!generated);
        assert_eq!(task.id, "6f9619ff-8b86-d011-b42d-00c04fc964ff");
    }

    #[test]
    fn refuses_bad_envelopes_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not valid JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"payload":{}}"#, "missing field `type`"),
            (br#"{"type":"Team Provision"}"#, "not a valid type name"),
            (br#"{"type":"a.b","id":"nope"}"#, "not a UUID"),
            (
                br#"{"type":"a.b","user_id":"a b"}"#,
                "cannot name a channel",
            ),
            (br#"{"type":"a.b","payload":[]}"#, "must be a JSON object"),
        ];
        for (body, reason) in cases {
            let err = Task::parse(body, 1024).unwrap_err().to_string();
            assert!(err.contains(reason), "{err} lacks {reason}");
        }
        let big = vec![b' '; 2048];
        assert!(matches!(
            Task::parse(&big, 1024),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn status_round_trips() {
        for status in [
            TaskStatus::Queued,
            TaskStatus::Processing,
            TaskStatus::Retrying,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ] {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
        }
    }
}
