//! Test harness shared by the integration tests: real servers started on free ports, stopped by
//! drop guards even when a test fails.
#![allow(dead_code)]

pub mod browser;
pub mod dns;
pub mod docker;
pub mod journey;
pub mod pebble;
pub mod platform;
pub mod proxy;
pub mod redis_server;
pub mod sentinel;
pub mod sockproxy;
pub mod swarm;
pub mod tasks;
pub mod traefik;
pub mod worker;

pub use redis_server::RedisServer;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
