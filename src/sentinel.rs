//! Redis Sentinel: every connection of the process goes to the master the sentinels name, and
//! follows it across failovers.
//!
//! The redis crate resolves a Sentinel master only when a connection is made (`SentinelClient`,
//! deadpool-redis's `sentinel` pool), and the connections this crate keeps for long — the
//! reconnecting `ConnectionManager` of the claim loop, pub/sub connections, pooled connections,
//! which a demoted master still answers `PING` on — connect to a fixed address and never ask again.
//! So instead of teaching each of them, the process runs one *follower*: a loopback TCP forwarder
//! that every connection of the process goes through (`REDIS_URL` is rewritten to point at it).
//! The follower asks every sentinel for the master (`SENTINEL MASTER <name>`; the newest
//! `config-epoch` wins, so a sentinel that missed a failover is outvoted), checks with `ROLE` that
//! the node really is a master, and checks again every [`POLL`]. When the master changes, or the
//! one it forwards to stops being a master (a demoted master answers `READONLY`), it cuts every
//! forwarded connection *before* it hands out the new address: clients see a dropped connection,
//! reconnect, and land on the new master; no byte of the old session reaches either node after
//! the cut. Each switch bumps an *epoch*, which [`crate::replication`] uses to tell whether a
//! write and the acknowledgement it waited for went to the same master.
//!
//! Between the cut and the new master being known (a dead master is only replaced after the
//! sentinels' `down-after-milliseconds` plus the election), new connections wait up to
//! [`HOLD`] for an address instead of failing at once, so clients resume as soon as it is known.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex as StdMutex};
use std::time::Duration;

use futures::future::join_all;
use redis::aio::MultiplexedConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{Config, RedisConfig};
use crate::connections::{ConnectionError, redact};

/// How often the follower asks the sentinels and checks the master's role.
pub const POLL: Duration = Duration::from_millis(250);
/// Longest a new connection waits for a master to be known before it is closed.
const HOLD: Duration = Duration::from_secs(5);
/// Time given to one sentinel or node to answer a check.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a node says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Master,
    /// A replica (or a sentinel): writes would get `READONLY`.
    NotMaster,
    /// Unreachable (refused, reset): dead, or not there.
    Down,
    /// No answer in time, or an error (BUSY, LOADING): kept as it is.
    Unknown,
}

/// Where the follower forwards new connections, and how many switches it made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The master's `host:port`; `None` while no node is known to be the master.
    addr: Option<String>,
    /// Bumped at every switch, after the old sessions were cut.
    epoch: u64,
}

/// One process's follower of a Sentinel-monitored master.
pub struct Follower {
    sentinels: Vec<redis::Client>,
    master_name: String,
    /// `REDIS_URL` as configured: its credentials and db are used for the `ROLE` check.
    node_url: String,
    target: watch::Sender<Target>,
    /// Forwarded connections of the current epoch; held while switching.
    sessions: Mutex<JoinSet<()>>,
    /// Wakes the watch loop before its next poll (a client saw `READONLY`).
    nudge: Notify,
    /// Cached connections to the sentinels, by index.
    sentinel_conns: Mutex<Vec<Option<MultiplexedConnection>>>,
    /// Cached connection for `ROLE` checks, with the address it goes to.
    role_conn: Mutex<Option<(String, MultiplexedConnection)>>,
}

/// Followers by the URL they were given out under, so that [`crate::replication`] can find the
/// epoch of the master behind a configuration.
static FOLLOWERS: LazyLock<StdMutex<HashMap<String, Arc<Follower>>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

/// The follower behind `redis_url`, if that URL was given out by [`follow`].
pub fn follower_of(redis_url: &str) -> Option<Arc<Follower>> {
    FOLLOWERS.lock().ok()?.get(redis_url).cloned()
}

/// With `REDIS_SENTINELS` set, starts the follower and returns the configuration with `REDIS_URL`
/// pointing at it (and `REDIS_SENTINELS` cleared, so a second call changes nothing); without it,
/// returns the configuration as it is.
pub async fn follow(config: Arc<Config>) -> Result<Arc<Config>, ConnectionError> {
    let Some(list) = config
        .redis
        .redis_sentinels
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    else {
        return Ok(config);
    };
    let follower = Follower::new(&config.redis, list)?;
    let url = follower.clone().start().await?;
    let mut followed = (*config).clone();
    followed.redis.redis_url = url;
    followed.redis.redis_sentinels = None;
    Ok(Arc::new(followed))
}

impl Follower {
    fn new(redis: &RedisConfig, list: &str) -> Result<Arc<Self>, ConnectionError> {
        if redis.redis_url.starts_with("rediss://") {
            return Err(ConnectionError::BadUrl {
                url: redact(&redis.redis_url),
                message: "TLS to the Redis nodes is not supported with REDIS_SENTINELS (see README, Redis Sentinel)".into(),
            });
        }
        let scheme = if redis.redis_sentinel_tls {
            "rediss"
        } else {
            "redis"
        };
        let auth = match (
            &redis.redis_sentinel_username,
            &redis.redis_sentinel_password,
        ) {
            (None, None) => String::new(),
            (user, password) => format!(
                "{}:{}@",
                user.as_deref().unwrap_or(""),
                password.as_deref().unwrap_or("")
            ),
        };
        let mut sentinels = Vec::new();
        for addr in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let url = format!("{scheme}://{auth}{addr}");
            let client =
                redis::Client::open(url.as_str()).map_err(|e| ConnectionError::BadUrl {
                    url: redact(&url),
                    message: e.to_string(),
                })?;
            sentinels.push(client);
        }
        if sentinels.is_empty() {
            return Err(ConnectionError::BadUrl {
                url: list.into(),
                message: "REDIS_SENTINELS names no sentinel".into(),
            });
        }
        // The node URL must parse, with any host: the check swaps the host for the master's.
        with_host(&redis.redis_url, "127.0.0.1:1").map_err(|message| ConnectionError::BadUrl {
            url: redact(&redis.redis_url),
            message,
        })?;
        let count = sentinels.len();
        Ok(Arc::new(Self {
            sentinels,
            master_name: redis.redis_master_name.clone(),
            node_url: redis.redis_url.clone(),
            target: watch::Sender::new(Target {
                addr: None,
                epoch: 0,
            }),
            sessions: Mutex::new(JoinSet::new()),
            nudge: Notify::new(),
            sentinel_conns: Mutex::new(vec![None; count]),
            role_conn: Mutex::new(None),
        }))
    }

    /// Binds the loopback listener, starts the watch loop and the accept loop; returns the URL
    /// clients use. The first master is looked up before returning, so a process that starts
    /// while Sentinel already knows the master connects at once.
    async fn start(self: Arc<Self>) -> Result<String, ConnectionError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ConnectionError::Pool(format!("cannot listen on loopback: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| ConnectionError::Pool(format!("cannot listen on loopback: {e}")))?;
        let url = with_host(&self.node_url, &local.to_string()).map_err(|message| {
            ConnectionError::BadUrl {
                url: redact(&self.node_url),
                message,
            }
        })?;
        if let Ok(mut followers) = FOLLOWERS.lock() {
            followers.insert(url.clone(), self.clone());
        }
        self.check().await;
        tokio::spawn(self.clone().watch_loop());
        tokio::spawn(self.clone().accept_loop(listener));
        info!(
            master = %self.master_name,
            sentinels = self.sentinels.len(),
            forwarder = %local,
            current = ?self.target.borrow().addr,
            "following the Redis master through Sentinel"
        );
        Ok(url)
    }

    /// The number of switches so far: a write and a later acknowledgement read under the same
    /// epoch went to the same master.
    pub fn epoch(&self) -> u64 {
        self.target.borrow().epoch
    }

    /// The master connections go to now, if one is known.
    pub fn master(&self) -> Option<String> {
        self.target.borrow().addr.clone()
    }

    /// Asks for a check before the next poll (a client was told `READONLY`).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    async fn watch_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.nudge.notified() => {}
            }
            self.check().await;
        }
    }

    /// One check: the master the sentinels name (newest config epoch), confirmed by its `ROLE`;
    /// switches when it differs from the current one. A current node that says it is no longer a
    /// master, or cannot be reached at all, is dropped even while no other master is known (new
    /// connections then wait for one); one that is only slow to answer (BUSY, a timeout) is kept.
    async fn check(&self) {
        let named = self.ask_sentinels().await;
        let current = self.target.borrow().addr.clone();
        if let Some(addr) = named
            && Some(&addr) != current.as_ref()
            && self.role(&addr).await == Role::Master
        {
            self.switch(Some(addr)).await;
            return;
        }
        if let Some(current) = current
            && matches!(self.role(&current).await, Role::NotMaster | Role::Down)
        {
            self.switch(None).await;
        }
    }

    /// Cuts every forwarded connection, then points new ones at `addr` under a new epoch.
    async fn switch(&self, addr: Option<String>) {
        let mut sessions = self.sessions.lock().await;
        let cut = sessions.len();
        sessions.shutdown().await;
        let from = self.target.borrow().addr.clone();
        self.target.send_modify(|target| {
            target.addr = addr.clone();
            target.epoch += 1;
        });
        drop(sessions);
        match (&from, &addr) {
            (_, Some(to)) => info!(?from, %to, cut, "Redis master changed; connections cut"),
            (Some(from), None) => {
                warn!(%from, cut, "the Redis node is no longer a master; waiting for Sentinel")
            }
            (None, None) => {}
        }
    }

    /// The master the sentinels agree on: of the answers naming an up master, the one with the
    /// highest `config-epoch` (a sentinel that missed the last failover still names the old one).
    async fn ask_sentinels(&self) -> Option<String> {
        let mut conns = self.sentinel_conns.lock().await;
        let asks = self
            .sentinels
            .iter()
            .zip(conns.iter_mut())
            .map(|(client, slot)| ask_one(client, slot, &self.master_name));
        let answers = join_all(asks).await;
        answers
            .into_iter()
            .flatten()
            .max_by_key(|(epoch, _)| *epoch)
            .map(|(_, addr)| addr)
    }

    /// What the node at `addr` says it is (`ROLE`, with `REDIS_URL`'s credentials). A failure on
    /// the cached connection is retried once on a fresh one: Sentinel's `CLIENT KILL` of a node it
    /// reconfigures must not look like a dead master.
    async fn role(&self, addr: &str) -> Role {
        let Ok(url) = with_host(&self.node_url, addr) else {
            return Role::Unknown;
        };
        let mut cached = self.role_conn.lock().await;
        if cached.as_ref().is_some_and(|(to, _)| to != addr) {
            *cached = None;
        }
        let mut answer = Role::Unknown;
        for _ in 0..2 {
            let fresh = cached.is_none();
            let asked = async {
                if cached.is_none() {
                    let client = redis::Client::open(url.as_str())?;
                    let conn = client.get_multiplexed_async_connection().await?;
                    *cached = Some((addr.to_string(), conn));
                }
                let Some((_, conn)) = cached.as_mut() else {
                    return Ok(Role::Unknown);
                };
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
                redis::RedisResult::Ok(match role.first() {
                    Some(redis::Value::BulkString(b)) if b == b"master" => Role::Master,
                    _ => Role::NotMaster,
                })
            };
            answer = match tokio::time::timeout(ASK_TIMEOUT, asked).await {
                Ok(Ok(role)) => return role,
                Ok(Err(err)) if err.is_io_error() || err.is_connection_refusal() => {
                    debug!(%addr, error = %err, "cannot reach the node to ask its role");
                    Role::Down
                }
                Ok(Err(err)) => {
                    debug!(%addr, error = %err, "the node does not tell its role");
                    Role::Unknown
                }
                Err(_) => Role::Unknown,
            };
            *cached = None;
            if fresh {
                break;
            }
        }
        answer
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    let _ = client.set_nodelay(true);
                    tokio::spawn(self.clone().forward(client));
                }
                Err(err) => {
                    warn!(error = %err, "the Redis forwarder cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Connects one client to the current master and registers the session under the epoch it
    /// was made in; a switch meanwhile sends it round again.
    async fn forward(self: Arc<Self>, client: TcpStream) {
        let mut rx = self.target.subscribe();
        let deadline = tokio::time::Instant::now() + HOLD;
        loop {
            let known = tokio::time::timeout_at(deadline, async {
                rx.wait_for(|t| t.addr.is_some()).await.map(|t| t.clone())
            })
            .await;
            let target = match known {
                Ok(Ok(target)) => target,
                _ => return,
            };
            let Some(addr) = target.addr else { return };
            let upstream = match tokio::time::timeout_at(deadline, TcpStream::connect(&addr)).await
            {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(err)) => {
                    debug!(%addr, error = %err, "cannot reach the Redis master");
                    return;
                }
                Err(_) => return,
            };
            let _ = upstream.set_nodelay(true);
            let mut sessions = self.sessions.lock().await;
            if self.target.borrow().epoch != target.epoch {
                drop(sessions);
                continue;
            }
            while sessions.try_join_next().is_some() {}
            sessions.spawn(async move {
                let (mut client, mut upstream) = (client, upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            return;
        }
    }
}

/// Asks one sentinel for the master: `(config-epoch, "ip:port")` when it names an up master.
async fn ask_one(
    client: &redis::Client,
    slot: &mut Option<MultiplexedConnection>,
    name: &str,
) -> Option<(u64, String)> {
    let asked = async {
        if slot.is_none() {
            *slot = Some(client.get_multiplexed_async_connection().await?);
        }
        let Some(conn) = slot.as_mut() else {
            return Ok(None);
        };
        let fields: HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(name)
            .query_async(conn)
            .await?;
        redis::RedisResult::Ok(master_of(&fields))
    };
    match tokio::time::timeout(ASK_TIMEOUT, asked).await {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => {
            debug!(error = %err, "a sentinel does not answer");
            *slot = None;
            None
        }
        Err(_) => {
            *slot = None;
            None
        }
    }
}

/// The master an answer to `SENTINEL MASTER` names, unless that sentinel thinks it is down.
fn master_of(fields: &HashMap<String, String>) -> Option<(u64, String)> {
    let flags = fields.get("flags")?;
    if !flags.split(',').any(|f| f == "master")
        || flags.contains("s_down")
        || flags.contains("o_down")
    {
        return None;
    }
    let ip = fields.get("ip")?;
    let port: u16 = fields.get("port")?.parse().ok()?;
    let epoch = fields
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    Some((epoch, format!("{host}:{port}")))
}

/// `url` with its `host:port` replaced by `addr`, keeping scheme, credentials, db and query.
fn with_host(url: &str, addr: &str) -> Result<String, String> {
    let scheme_end = url
        .find("://")
        .ok_or_else(|| "not a redis:// URL".to_string())?;
    let scheme = &url[..scheme_end];
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!("scheme {scheme}:// cannot be used with Sentinel"));
    }
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority
        .rfind('@')
        .map(|at| &authority[..=at])
        .unwrap_or("");
    Ok(format!("{scheme}://{userinfo}{addr}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_host("redis://:pw@redis:6379/2", "10.0.0.5:6380").unwrap(),
            "redis://:pw@10.0.0.5:6380/2"
        );
        assert_eq!(
            with_host("redis://redis", "127.0.0.1:1").unwrap(),
            "redis://127.0.0.1:1"
        );
        assert_eq!(
            with_host("redis://u:p@x:1?protocol=resp3", "h:2").unwrap(),
            "redis://u:p@h:2?protocol=resp3"
        );
        assert!(with_host("unix:///tmp/s", "h:2").is_err());
    }

    #[test]
    fn a_master_marked_down_is_not_named() {
        let answer = |flags: &str, epoch: &str| {
            HashMap::from([
                ("flags".to_string(), flags.to_string()),
                ("ip".to_string(), "127.0.0.1".to_string()),
                ("port".to_string(), "7000".to_string()),
                ("config-epoch".to_string(), epoch.to_string()),
            ])
        };
        assert_eq!(
            master_of(&answer("master", "3")),
            Some((3, "127.0.0.1:7000".into()))
        );
        assert_eq!(master_of(&answer("master,s_down", "3")), None);
        assert_eq!(master_of(&answer("master,s_down,o_down", "3")), None);
    }
}
