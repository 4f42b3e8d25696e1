//! Live progress from pub/sub, as admins and the demo see it: one progress bar per task (indicatif).
//!
//! The watcher subscribes first, then reads the progress hash, then shows only events whose `seq`
//! is above the hash's: no gap and no duplicate between the snapshot and the stream.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Deserialize;
use thiserror::Error;

use crate::keys;

/// What to watch.
#[derive(Debug, Clone)]
pub enum Target {
    /// One task, until it ends.
    Task(String),
    /// Every task of one user, until interrupted.
    User(String),
    /// Every task, until interrupted.
    All,
}

/// Why watching stopped early.
#[derive(Debug, Error)]
pub enum WatchError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no task {0} (never enqueued, or finished more than 24 h ago)")]
    NoSuchTask(String),
}

/// How a watched task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub status: String,
    pub message: String,
    pub error: String,
}

/// A task event, as published by [`crate::progress`].
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub seq: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub task_id: String,
    pub task_type: String,
    pub status: String,
    pub percentage: u32,
    pub message: String,
    #[serde(default)]
    pub error: Option<String>,
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos:>3}% {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Shows progress of `target`. For one task, returns how it ended; for a user or everything, runs
/// until `stop` resolves and returns `None`.
pub async fn watch(
    client: &redis::Client,
    target: Target,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Option<Ended>, WatchError> {
    let mut pubsub = client.get_async_pubsub().await?;
    match &target {
        Target::User(user) => pubsub.subscribe(format!("tasks:{user}")).await?,
        Target::Task(_) | Target::All => pubsub.psubscribe("tasks:*").await?,
    }
    let bars = MultiProgress::new();
    let mut shown: HashMap<String, (ProgressBar, u64)> = HashMap::new();

    if let Target::Task(id) = &target {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::task(id))
            .query_async(&mut conn)
            .await?;
        if hash.is_empty() {
            return Err(WatchError::NoSuchTask(id.clone()));
        }
        let field = |name: &str| hash.get(name).cloned().unwrap_or_default();
        let bar = bars.add(ProgressBar::new(100).with_style(style()));
        bar.set_prefix(format!("{} {}", field("type"), short(id)));
        bar.set_position(field("percentage").parse().unwrap_or(0));
        bar.set_message(field("message"));
        let status = field("status");
        if is_terminal(&status) {
            bar.finish();
            return Ok(Some(Ended {
                status,
                message: field("message"),
                error: field("error"),
            }));
        }
        shown.insert(id.clone(), (bar, field("seq").parse().unwrap_or(0)));
    }

    let mut messages = pubsub.on_message();
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = &mut stop => return Ok(None),
            // A quiet stream: make sure a task that ended while we subscribed is not waited on forever.
            _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
        };
        let Some(message) = message else {
            return Err(WatchError::Redis(redis::RedisError::from(
                std::io::Error::other("connection to Redis lost while watching"),
            )));
        };
        let Ok(payload) = message.get_payload::<String>() else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Event>(&payload) else {
            continue;
        };
        if let Target::Task(id) = &target
            && &event.task_id != id
        {
            continue;
        }
        let (bar, last_seq) = shown.entry(event.task_id.clone()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(100).with_style(style()));
            bar.set_prefix(format!("{} {}", event.task_type, short(&event.task_id)));
            (bar, 0)
        });
        if event.seq <= *last_seq {
            continue;
        }
        *last_seq = event.seq;
        bar.set_position(event.percentage.into());
        let message = match &event.error {
            Some(error) if !error.is_empty() && event.status != "retrying" => {
                format!("{} ({error})", event.message)
            }
            _ => event.message.clone(),
        };
        bar.set_message(message.clone());
        if is_terminal(&event.status) {
            bar.finish();
            if matches!(target, Target::Task(_)) {
                return Ok(Some(Ended {
                    status: event.status,
                    message,
                    error: event.error.unwrap_or_default(),
                }));
            }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
