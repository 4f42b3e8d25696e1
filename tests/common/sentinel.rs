//! A Redis Sentinel deployment on loopback ports: a master, a replica and three sentinels (quorum
//! 2, short down-after and failover timeouts), each a real `redis-server` process (`--sentinel`
//! for the sentinels, so Debian's `redis-sentinel` package is not required; the process harness
//! is [`super::redis_server::RedisProcess`]), killed on drop. The data nodes keep nothing on disk:
//! one restarted after a crash comes back empty, as a supervisor would bring it back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::free_port;
use super::redis_server::RedisProcess;

/// Name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "orchmaster";
/// Milliseconds without an answer before a sentinel calls a node down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// Master, replica and three sentinels.
pub struct SentinelSet {
    /// The two data nodes; which one is the master changes with failovers.
    pub nodes: Vec<RedisProcess>,
    pub sentinels: Vec<RedisProcess>,
    dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts the nodes and sentinels and waits until every sentinel knows the replica and the
    /// two other sentinels (a failover needs both).
    pub async fn start() -> Self {
        let mut dir = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("KEEP_SENTINEL_DIR").is_some() {
            // For a look at the nodes' and sentinels' logs after a failed run.
            dir.disable_cleanup(true);
            eprintln!("sentinel set files: {}", dir.path().display());
        }
        let master = start_node(&dir, "a", None);
        let replica = start_node(&dir, "b", Some(master.port));
        let mut sentinels = Vec::new();
        for i in 0..3 {
            sentinels.push(start_sentinel(&dir, i, master.port));
        }
        let set = Self {
            nodes: vec![master, replica],
            sentinels,
            dir,
        };
        set.wait_settled(Duration::from_secs(40)).await;
        set
    }

    /// `host:port,…` of the sentinels, for `REDIS_SENTINELS`.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(RedisProcess::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What one sentinel says about the master (`SENTINEL MASTER`).
    pub async fn master_info(sentinel: &RedisProcess) -> Option<HashMap<String, String>> {
        let client = redis::Client::open(sentinel.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(MASTER_NAME)
            .query_async(&mut conn)
            .await
            .ok()
    }

    /// The master's port according to a majority of the sentinels, if they agree.
    pub async fn master_port(&self) -> Option<u16> {
        let mut votes: HashMap<u16, usize> = HashMap::new();
        for sentinel in &self.sentinels {
            if let Some(info) = Self::master_info(sentinel).await
                && let Some(port) = info.get("port").and_then(|p| p.parse().ok())
            {
                *votes.entry(port).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .find(|(_, n)| *n >= 2)
            .map(|(port, _)| port)
    }

    /// The data node listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
    }

    /// Waits until every sentinel names `port` as the master, sees it up, knows the two other
    /// sentinels, and (when `replica` is given) sees that replica up with its link to the master up.
    pub async fn wait_for(&self, port: u16, replica: Option<u16>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ok = true;
            for sentinel in &self.sentinels {
                let Some(info) = Self::master_info(sentinel).await else {
                    ok = false;
                    break;
                };
                let flags = info.get("flags").cloned().unwrap_or_default();
                ok &= info.get("port").map(String::as_str) == Some(&port.to_string())
                    && flags == "master"
                    && info.get("num-other-sentinels").map(String::as_str) == Some("2");
                if let Some(replica) = replica {
                    ok &= replica_up(sentinel, replica).await;
                }
            }
            if let Some(replica) = replica {
                ok &= link_up(replica).await;
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not settle on master :{port} (replica {replica:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_settled(&self, timeout: Duration) {
        let (master, replica) = (self.nodes[0].port, self.nodes[1].port);
        self.wait_for(master, Some(replica), timeout).await;
    }

    /// `SENTINEL FAILOVER` on the first sentinel that accepts it.
    pub async fn failover(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for sentinel in &self.sentinels {
                let mut conn = sentinel.conn().await;
                let done: redis::RedisResult<String> = redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(MASTER_NAME)
                    .query_async(&mut conn)
                    .await;
                if done.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no sentinel accepted FAILOVER");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The folder holding the nodes' and sentinels' files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

async fn replica_up(sentinel: &RedisProcess, port: u16) -> bool {
    let Ok(client) = redis::Client::open(sentinel.url()) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let replicas: Vec<HashMap<String, String>> = match redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(MASTER_NAME)
        .query_async(&mut conn)
        .await
    {
        Ok(r) => r,
        Err(_) => return false,
    };
    replicas.iter().any(|r| {
        r.get("port").map(String::as_str) == Some(&port.to_string())
            && r.get("flags").map(String::as_str) == Some("slave")
            && r.get("master-link-status").map(String::as_str) == Some("ok")
    })
}

/// Whether the node on `port` is a replica whose link to its master is up.
async fn link_up(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let info: String = match redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await
    {
        Ok(i) => i,
        Err(_) => return false,
    };
    info.contains("role:slave") && info.contains("master_link_status:up")
}

fn start_node(dir: &tempfile::TempDir, name: &str, replica_of: Option<u16>) -> RedisProcess {
    let port = free_port();
    let data = dir.path().join(name);
    std::fs::create_dir_all(&data).expect("node dir");
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &data.to_string_lossy(),
        "--save",
        "",
        "--appendonly",
        "no",
        // A demoted master resyncs at once instead of after the default 5 s.
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--repl-ping-replica-period",
        "1",
        "--logfile",
        &data.join("redis.log").to_string_lossy(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    if let Some(master) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
    }
    RedisProcess::launch(port, args)
}

fn start_sentinel(dir: &tempfile::TempDir, index: usize, master: u16) -> RedisProcess {
    let port = free_port();
    let conf = dir.path().join(format!("sentinel-{index}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} 2000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n\
             logfile {dir}/sentinel-{index}.log\n",
            dir = dir.path().display()
        ),
    )
    .expect("write sentinel.conf");
    RedisProcess::launch(
        port,
        vec![conf.to_string_lossy().into_owned(), "--sentinel".into()],
    )
}
