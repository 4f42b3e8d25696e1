//! A real `redis-server` on a free port with its own data folder (append-only, so a restart keeps
//! the data), killed on drop; and the process underneath it ([`RedisProcess`]: one
//! `redis-server` command line on a loopback port, waited on until it answers, restarted with the
//! same command line, killed on drop), which the Sentinel harness also runs its nodes and
//! sentinels on. Self-contained but for `super::free_port`: benches include this file alone.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Redis server owned by a test.
pub struct RedisServer {
    pub port: u16,
    // Declared before `dir`: the server is killed before its data folder is removed.
    process: RedisProcess,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let port = super::free_port();
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().to_string_lossy(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        Self {
            port,
            process: RedisProcess::launch(port, args),
            dir,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The data folder (append-only files live here).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A plain client.
    pub fn client(&self) -> redis::Client {
        self.process.client()
    }

    /// A multiplexed connection without a response timeout.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.process.conn().await
    }

    /// Kills the server (SIGKILL, like a crash) without waiting for anything.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port and data folder.
    pub fn restart(&mut self) {
        self.process.restart();
    }
}

/// One `redis-server` process (a data node or, with `--sentinel`, a sentinel) on a loopback port.
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
    /// The command line, to start it again.
    args: Vec<String>,
}

impl RedisProcess {
    /// Starts `redis-server args` (which make it listen on `port`) and waits until it answers PING.
    pub fn launch(port: u16, args: Vec<String>) -> Self {
        let mut process = Self {
            port,
            child: None,
            args,
        };
        process.spawn();
        process
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A plain client.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis client")
    }

    /// A multiplexed connection without a response timeout.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// SIGKILL, like a crash, without waiting for anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same command line, as a supervisor would after a
    /// crash (what it finds of its data depends on its persistence settings).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on :{} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
