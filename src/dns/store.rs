//! The zone state in Redis, shared by every worker: one hash of record sets per zone, the SOA serial,
//! and the change notification.
//!
//! Layout (see [`crate::keys`]): `dns:zone:<zone>:records` maps `<owner> <TYPE>` to
//! `{"ttl":N,"values":[...]}`; `dns:zone:<zone>:serial` holds the SOA serial. Every change is one Lua
//! script that edits the hash, raises the serial to `max(previous + 1, unix time)` (so it strictly
//! increases whatever the clocks of the workers say) and publishes `<zone> <serial>` on
//! [`crate::keys::DNS_CHANGES`], all atomically: two workers can never lose each other's changes,
//! and every listener hears about every serial. A change that changes nothing keeps the serial.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};
use serde::{Deserialize, Serialize};

use super::DnsError;
use super::records::{self, RecordKind, RecordSet, Zone};
use super::zonefile::{self, WriteOutcome};
use crate::config::Config;
use crate::keys;

/// Serial arithmetic and the notification, shared by the scripts that change the zone.
/// KEYS[1] = records hash, KEYS[2] = serial; ARGV[1] = channel, ARGV[2] = zone.
const BUMP: &str = r#"
local function bump()
  local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
  local now = tonumber(redis.call('TIME')[1])
  local serial = prev + 1
  if now > serial then serial = now end
  if serial > 4294967295 then return redis.error_reply('SOA serial would pass 2^32') end
  redis.call('SET', KEYS[2], serial)
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. serial)
  return serial
end
local function current()
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
local function cname_conflict(owner, kind)
  if kind == 'CNAME' then
    for _, other in ipairs({'A', 'AAAA', 'TXT'}) do
      if redis.call('HEXISTS', KEYS[1], owner .. ' ' .. other) == 1 then return other end
    end
  elseif redis.call('HEXISTS', KEYS[1], owner .. ' CNAME') == 1 then
    return 'CNAME'
  end
  return nil
end
local function same(a, b)
  if a.ttl ~= b.ttl or #a.values ~= #b.values then return false end
  for i, v in ipairs(a.values) do if b.values[i] ~= v then return false end end
  return true
end
"#;

/// Replaces one record set. ARGV[3] = owner, ARGV[4] = type, ARGV[5] = JSON set.
/// Returns {changed (0/1), serial} or {-1, conflicting type}.
const UPSERT: &str = r#"
local owner, kind, body = ARGV[3], ARGV[4], ARGV[5]
local conflict = cname_conflict(owner, kind)
if conflict then return {-1, conflict} end
local field = owner .. ' ' .. kind
local old = redis.call('HGET', KEYS[1], field)
if old and same(cjson.decode(old), cjson.decode(body)) then return {0, current()} end
redis.call('HSET', KEYS[1], field, body)
return {1, bump()}
"#;

/// Deletes record sets. ARGV[3..] = fields. Returns {changed, serial}.
const DELETE: &str = r#"
local removed = 0
for i = 3, #ARGV do removed = removed + redis.call('HDEL', KEYS[1], ARGV[i]) end
if removed == 0 then return {0, current()} end
return {1, bump()}
"#;

/// Adds one value to a set (creating it). ARGV[3] = owner, ARGV[4] = type, ARGV[5] = value,
/// ARGV[6] = TTL of a new set, ARGV[7] = most values. Returns {changed, serial} or {-1, conflict}
/// or {-2, count} when the set is full.
const ADD_VALUE: &str = r#"
local owner, kind, value = ARGV[3], ARGV[4], ARGV[5]
local conflict = cname_conflict(owner, kind)
if conflict then return {-1, conflict} end
local field = owner .. ' ' .. kind
local old = redis.call('HGET', KEYS[1], field)
local set
if old then set = cjson.decode(old) else set = {ttl = tonumber(ARGV[6]), values = {}} end
for _, v in ipairs(set.values) do if v == value then return {0, current()} end end
if #set.values >= tonumber(ARGV[7]) then return {-2, #set.values} end
table.insert(set.values, value)
redis.call('HSET', KEYS[1], field, cjson.encode(set))
return {1, bump()}
"#;

/// Removes one value from a set (deleting the set when it empties). ARGV[3] = owner,
/// ARGV[4] = type, ARGV[5] = value. Returns {changed, serial}.
const REMOVE_VALUE: &str = r#"
local field = ARGV[3] .. ' ' .. ARGV[4]
local old = redis.call('HGET', KEYS[1], field)
if not old then return {0, current()} end
local set = cjson.decode(old)
local kept = {}
for _, v in ipairs(set.values) do if v ~= ARGV[5] then table.insert(kept, v) end end
if #kept == #set.values then return {0, current()} end
if #kept == 0 then
  redis.call('HDEL', KEYS[1], field)
else
  set.values = kept
  redis.call('HSET', KEYS[1], field, cjson.encode(set))
end
return {1, bump()}
"#;

/// Reads the serial and every set in one atomic step. Returns {serial, field, body, field, body...}.
const SNAPSHOT: &str = r#"
local out = {redis.call('GET', KEYS[2]) or '0'}
local all = redis.call('HGETALL', KEYS[1])
for _, v in ipairs(all) do table.insert(out, v) end
return out
"#;

/// The change scripts, each prefixed with the shared functions (hashed once).
static UPSERT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{BUMP}\n{UPSERT}")));
static DELETE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{BUMP}\n{DELETE}")));
static ADD_VALUE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{BUMP}\n{ADD_VALUE}")));
static REMOVE_VALUE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{BUMP}\n{REMOVE_VALUE}")));
static SNAPSHOT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SNAPSHOT));

/// The stored form of a record set (the owner and type are in the hash field).
#[derive(Serialize, Deserialize)]
struct StoredSet {
    ttl: u32,
    values: Vec<String>,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Whether the zone changed (false: it already was in the asked state).
    pub changed: bool,
    /// The serial after the change (the current one when nothing changed).
    pub serial: u32,
}

/// Handle on the platform zone in Redis; cheap to clone, shared by handlers, the zone file writer
/// and the embedded server.
#[derive(Clone)]
pub struct ZoneStore {
    origin: String,
    ingress_ip: Ipv4Addr,
    zones_dir: Option<PathBuf>,
    redis: deadpool_redis::Pool,
    records_key: String,
    serial_key: String,
}

impl ZoneStore {
    /// A store for the configured zone (`DnsConfig::zone`), writing zone files to `zones_dir`.
    pub fn from_config(config: &Config, redis: deadpool_redis::Pool) -> Result<Self, DnsError> {
        let ingress_ip = config.dns.ingress_ip.parse::<Ipv4Addr>().map_err(|_| {
            DnsError::Config(format!(
                "INGRESS_IP {:?} is not an IPv4 address",
                config.dns.ingress_ip
            ))
        })?;
        Self::new(
            &config.dns.zone(&config.platform),
            ingress_ip,
            Some(config.dns.zones_dir.clone()),
            redis,
        )
    }

    /// A store for `origin` (e.g. `localhost.`); `zones_dir` None writes no zone file.
    pub fn new(
        origin: &str,
        ingress_ip: Ipv4Addr,
        zones_dir: Option<PathBuf>,
        redis: deadpool_redis::Pool,
    ) -> Result<Self, DnsError> {
        let bare = origin.trim_end_matches('.').to_ascii_lowercase();
        crate::validate::domain("DNS zone", &bare, false)
            .map_err(|e| DnsError::Config(e.to_string()))?;
        let origin = format!("{bare}.");
        Ok(Self {
            records_key: keys::dns_records(&origin),
            serial_key: keys::dns_serial(&origin),
            origin,
            ingress_ip,
            zones_dir,
            redis,
        })
    }

    /// The zone origin with its trailing dot.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The address the apex, wildcard and team names point at.
    pub fn ingress_ip(&self) -> Ipv4Addr {
        self.ingress_ip
    }

    /// The Redis pool the store uses.
    pub fn pool(&self) -> &deadpool_redis::Pool {
        &self.redis
    }

    /// Writes the platform records (apex A, `ns` A, wildcard `*` A, all at the ingress address) if
    /// they are missing or differ; idempotent, so every worker calls it at start.
    pub async fn ensure_platform_records(&self) -> Result<Change, DnsError> {
        let mut last = Change {
            changed: false,
            serial: 0,
        };
        let mut changed = false;
        for owner in records::RESERVED_OWNERS {
            let set = RecordSet {
                owner: owner.to_string(),
                kind: RecordKind::A,
                ttl: records::DEFAULT_TTL,
                values: vec![self.ingress_ip.to_string()],
            };
            last = self.put_set(&set).await?;
            changed |= last.changed;
        }
        Ok(Change {
            changed,
            serial: last.serial,
        })
    }

    /// Replaces the set of `set.kind` at `set.owner` (a task's record: the platform names are
    /// refused). Build `set` with [`RecordSet::new`], which validates it.
    pub async fn upsert(&self, set: &RecordSet) -> Result<Change, DnsError> {
        if set.is_reserved() {
            return Err(records::RecordError::Reserved(set.owner.clone()).into());
        }
        self.put_set(set).await
    }

    async fn put_set(&self, set: &RecordSet) -> Result<Change, DnsError> {
        let body = serde_json::to_string(&StoredSet {
            ttl: set.ttl,
            values: set.values.clone(),
        })
        .map_err(|e| DnsError::Corrupt(e.to_string()))?;
        let reply: (i64, redis::Value) = self
            .run(&UPSERT_SCRIPT, &[&set.owner, set.kind.as_str(), &body])
            .await?;
        self.change_reply(&set.owner, set.kind, reply)
    }

    /// Deletes the set of `kind` at `owner` (every type when `kind` is None). `owner` is validated
    /// like an upsert's; deleting what is not there succeeds with `changed: false`.
    pub async fn delete(&self, owner: &str, kind: Option<RecordKind>) -> Result<Change, DnsError> {
        let owner = records::owner(&self.origin, owner)?;
        if records::RESERVED_OWNERS.contains(&owner.as_str()) {
            return Err(records::RecordError::Reserved(owner).into());
        }
        let kinds: Vec<RecordKind> = match kind {
            Some(kind) => vec![kind],
            None => RecordKind::ALL.to_vec(),
        };
        let fields: Vec<String> = kinds.iter().map(|k| records::field(&owner, *k)).collect();
        let args: Vec<&str> = fields.iter().map(String::as_str).collect();
        let reply: (i64, redis::Value) = self.run(&DELETE_SCRIPT, &args).await?;
        self.change_reply(&owner, kinds[0], reply)
    }

    /// Adds `value` to the TXT set at `_acme-challenge.<name>` (DNS-01), keeping the values already
    /// there (a wildcard and its base domain need two values at one owner). `name` is the domain
    /// being validated (`team-a.localhost`, `*.team-a.localhost` or relative `team-a`; a leading
    /// `*.` is dropped, as RFC 8555 says). Idempotent. Returns once Redis holds the value and the
    /// change is published: embedded servers apply it within milliseconds (one pub/sub hop and a
    /// snapshot read); CoreDNS on its next `reload` check.
    pub async fn add_challenge(&self, name: &str, value: &str) -> Result<Change, DnsError> {
        let owner = self.challenge_owner(name)?;
        let value = records::canonical_value(RecordKind::Txt, value)?;
        // DNS-01 values are 43-byte digests; the cap keeps a full set (MAX_VALUES) within
        // MAX_SET_BYTES, so the set always passes validation when read back.
        if value.len() > records::MAX_CHALLENGE {
            return Err(records::RecordError::BadValue {
                kind: RecordKind::Txt,
                value,
                why: "challenge values are at most 255 bytes",
            }
            .into());
        }
        let ttl = 60.to_string();
        let max = records::MAX_VALUES.to_string();
        let reply: (i64, redis::Value) = self
            .run(&ADD_VALUE_SCRIPT, &[&owner, "TXT", &value, &ttl, &max])
            .await?;
        self.change_reply(&owner, RecordKind::Txt, reply)
    }

    /// Removes `value` from the TXT set at `_acme-challenge.<name>` (other values stay; the set
    /// goes when it empties). Removing a value that is not there succeeds with `changed: false`.
    pub async fn remove_challenge(&self, name: &str, value: &str) -> Result<Change, DnsError> {
        let owner = self.challenge_owner(name)?;
        let reply: (i64, redis::Value) = self
            .run(&REMOVE_VALUE_SCRIPT, &[&owner, "TXT", value])
            .await?;
        self.change_reply(&owner, RecordKind::Txt, reply)
    }

    /// The owner `_acme-challenge.<name>` relative to the zone.
    fn challenge_owner(&self, name: &str) -> Result<String, DnsError> {
        let name = name.strip_prefix("*.").unwrap_or(name);
        let base = records::owner(&self.origin, name)?;
        let owner = if base == "@" {
            "_acme-challenge".to_string()
        } else {
            format!("_acme-challenge.{base}")
        };
        // Validate the composed name too (length limits).
        Ok(records::owner(&self.origin, &owner)?)
    }

    /// The whole zone, read atomically.
    pub async fn snapshot(&self) -> Result<Zone, DnsError> {
        let mut conn = self.redis.get().await?;
        let reply: Vec<String> = SNAPSHOT_SCRIPT
            .key(&self.records_key)
            .key(&self.serial_key)
            .invoke_async(&mut conn)
            .await?;
        let mut items = reply.into_iter();
        let serial = items
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| DnsError::Corrupt(format!("{} is not a serial", self.serial_key)))?;
        let mut sets = Vec::new();
        while let (Some(field), Some(body)) = (items.next(), items.next()) {
            let parsed = records::parse_field(&field).and_then(|(owner, kind)| {
                serde_json::from_str::<StoredSet>(&body)
                    .ok()
                    .map(|stored| (owner, kind, stored))
            });
            let Some((owner, kind, stored)) = parsed else {
                tracing::error!(%field, key = %self.records_key, "unreadable DNS record set in Redis left out of the zone");
                continue;
            };
            // Re-validate what Redis holds: another writer (or a hand edit) must not be able to put
            // something into a zone file that the validation would have refused. One bad set is
            // left out (and logged) rather than taking the whole zone down.
            match RecordSet::new(&self.origin, &owner, kind, Some(stored.ttl), &stored.values) {
                Ok(set) => sets.push(set),
                Err(error) => {
                    tracing::error!(%field, %error, "invalid DNS record set in Redis left out of the zone")
                }
            }
        }
        sets.sort_by(|a, b| zonefile::owner_order(&a.owner, &b.owner).then(a.kind.cmp(&b.kind)));
        Ok(Zone {
            origin: self.origin.clone(),
            serial,
            sets,
        })
    }

    /// Writes the zone file from the current Redis state (no-op without a zones folder, and when
    /// the file already holds this serial or a newer one).
    pub async fn write_zone_file(&self) -> Result<Option<WriteOutcome>, DnsError> {
        let Some(dir) = self.zones_dir.clone() else {
            return Ok(None);
        };
        let zone = self.snapshot().await?;
        Ok(Some(zonefile::write(&dir, &zone).await?))
    }

    /// Where the zone file is written, if anywhere.
    pub fn zone_file(&self) -> Option<PathBuf> {
        self.zones_dir
            .as_ref()
            .map(|dir| dir.join(zonefile::file_name(&self.origin)))
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<T, DnsError> {
        let mut conn = self.redis.get().await?;
        let mut invocation = script.key(&self.records_key);
        invocation
            .key(&self.serial_key)
            .arg(keys::DNS_CHANGES)
            .arg(&self.origin);
        for arg in args {
            invocation.arg(*arg);
        }
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    fn change_reply(
        &self,
        owner: &str,
        kind: RecordKind,
        (code, value): (i64, redis::Value),
    ) -> Result<Change, DnsError> {
        let number: i64 = redis::from_redis_value(value.clone()).unwrap_or(0);
        match code {
            0 | 1 => Ok(Change {
                changed: code == 1,
                serial: u32::try_from(number)
                    .map_err(|_| DnsError::Corrupt(format!("serial {number}")))?,
            }),
            -1 => {
                let other: String = redis::from_redis_value(value).unwrap_or_default();
                Err(DnsError::Conflict(format!(
                    "{owner} already has a {other} record; a CNAME cannot share its name with other records (asked: {kind})"
                )))
            }
            _ => Err(DnsError::Conflict(format!(
                "{owner} {kind} already holds {number} values, the most allowed"
            ))),
        }
    }
}
