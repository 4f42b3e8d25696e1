//! Where certificates live once issued: files under `certs_dir`, Traefik's file-provider document,
//! and the `cert:<name>` metadata hashes (with the `certs` set) the portal reads.
//!
//! Layout of `certs_dir`:
//! - `<name>/fullchain.pem`, `<name>/privkey.pem` (0600): the current certificate, for anyone.
//! - `<name>/<serial>/fullchain.pem`, `<name>/<serial>/privkey.pem`: the same pair under a name
//!   that changes with every issuance. The Traefik document points at these, because Traefik skips a
//!   configuration identical to the one it runs: with fixed paths a renewal would go unnoticed until
//!   a restart. The document only ever names complete pairs.
//! - `certificates.yml`: `tls.certificates` (certFile/keyFile) of every valid certificate, rebuilt
//!   from Redis on each change so that any worker rewriting it converges to the same content. It sits
//!   at the top level because Traefik's file provider watches only the top level of its folder (the
//!   `certs` volume's root, which exists even when the volume is empty); sub-folders are read at each
//!   reload.
//! - `traefik/*.yml`: the platform's dynamic files (`TRAEFIK_DYNAMIC_DIR`: middlewares, dashboard
//!   router), published here by every worker at start ([`publish_platform_files`]) so that Traefik
//!   needs no mount inside the volume.
//!
//! Every file is written to a temporary name in its folder, synced, then renamed over the old one.
//!
//! Files are never removed while a document Traefik may still read names them: Traefik reloads the
//! file provider after a throttle, so a reload can read the previous document after the new one is in
//! place. A folder to remove (an old serial, a deleted or revoked certificate) is recorded in
//! `certs:removals` with a due time `CERT_REMOVAL_GRACE_S` after the document without it was written;
//! [`CertStore::sweep`] (run periodically by every worker) removes due folders that no valid
//! certificate references any more.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_redis::redis::AsyncCommands;
use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::AcmeError;
use crate::config::AcmeConfig;
use crate::keys;
use crate::task::TaskError;

/// Status of a stored certificate that Traefik serves.
pub const STATUS_VALID: &str = "valid";
/// Status of a certificate revoked at the CA (its files are gone, its metadata kept).
pub const STATUS_REVOKED: &str = "revoked";
/// Folder (under `certs_dir`) of the platform's dynamic files; no certificate may take this name.
pub const TRAEFIK_DIR: &str = "traefik";
/// File name of Traefik's document.
pub const TRAEFIK_DOC: &str = "certificates.yml";

/// What is known of a stored certificate (the `cert:<name>` hash).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertRecord {
    /// The certificate's name (folder and key).
    pub name: String,
    /// DNS names of the certificate (its SANs), sorted.
    pub domains: Vec<String>,
    /// Start of validity, RFC 3339 UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// Issuer's distinguished name.
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// `valid` or `revoked`.
    pub status: String,
    /// Challenge used for the last issuance (`dns-01` / `http-01`).
    pub challenge: String,
    /// Path of the full chain (leaf first).
    pub fullchain: String,
    /// Path of the private key.
    pub privkey: String,
    /// When this record last changed, RFC 3339 UTC.
    pub updated_at: String,
}

impl CertRecord {
    /// End of validity as a time (the epoch when unparsable, so it counts as expired).
    pub fn not_after_time(&self) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&self.not_after)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    /// Whether the certificate covers every name of `domains` (exact matches only: a wildcard
    /// certificate is reused for the very names it was issued for).
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.domains.contains(d))
    }

    /// Whether renewal is due at `now` with a margin of `renew_before_days`.
    pub fn renewal_due(&self, renew_before_days: u64, now: DateTime<Utc>) -> bool {
        let margin = chrono::Duration::days(renew_before_days.min(3650) as i64);
        self.not_after_time() - margin <= now
    }

    /// JSON for task results and the portal.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn from_hash(fields: std::collections::HashMap<String, String>) -> Option<Self> {
        let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let name = fields.get("name")?.clone();
        Some(Self {
            name,
            domains: serde_json::from_str(&get("domains")).unwrap_or_default(),
            not_before: get("not_before"),
            not_after: get("not_after"),
            issuer: get("issuer"),
            serial: get("serial"),
            status: get("status"),
            challenge: get("challenge"),
            fullchain: get("fullchain"),
            privkey: get("privkey"),
            updated_at: get("updated_at"),
        })
    }

    fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            (
                "domains",
                serde_json::to_string(&self.domains).unwrap_or_default(),
            ),
            ("not_before", self.not_before.clone()),
            ("not_after", self.not_after.clone()),
            ("issuer", self.issuer.clone()),
            ("serial", self.serial.clone()),
            ("status", self.status.clone()),
            ("challenge", self.challenge.clone()),
            ("fullchain", self.fullchain.clone()),
            ("privkey", self.privkey.clone()),
            ("updated_at", self.updated_at.clone()),
        ]
    }
}

/// What the leaf of a chain says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafInfo {
    /// DNS SANs, sorted.
    pub domains: Vec<String>,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// DER of the leaf (for revocation).
    pub der: Vec<u8>,
}

/// Reads the first certificate of a PEM chain.
pub fn parse_leaf(chain_pem: &str) -> Result<LeafInfo, AcmeError> {
    let bad = |why: String| AcmeError::Corrupt(format!("certificate chain: {why}"));
    let pem: Pem = Pem::iter_from_buffer(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| bad("no PEM block".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let mut domains: Vec<String> = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    domains.sort();
    domains.dedup();
    let time = |ts: i64| DateTime::<Utc>::from_timestamp(ts, 0).unwrap_or_default();
    Ok(LeafInfo {
        domains,
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
        issuer: cert.issuer().to_string(),
        serial: hex::encode(cert.raw_serial()),
        der: pem.contents.clone(),
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The certificate store: files under `certs_dir` plus metadata in Redis.
#[derive(Clone)]
pub struct CertStore {
    /// Where certificates are written.
    certs_dir: PathBuf,
    /// `certs_dir` as Traefik sees it.
    traefik_certs_dir: PathBuf,
    redis: deadpool_redis::Pool,
    /// How long a folder stays after the document stopped naming it.
    removal_grace: std::time::Duration,
}

impl CertStore {
    /// A store for the configured folders.
    pub fn new(config: &AcmeConfig, redis: deadpool_redis::Pool) -> Self {
        let certs_dir = config.certs_dir.clone();
        let traefik_certs_dir = config.traefik_certs_dir.clone().unwrap_or_else(|| {
            std::path::absolute(&certs_dir).unwrap_or_else(|_| certs_dir.clone())
        });
        Self {
            certs_dir,
            traefik_certs_dir,
            redis,
            removal_grace: std::time::Duration::from_secs(config.cert_removal_grace_s),
        }
    }

    /// Path of `<name>/fullchain.pem`.
    pub fn fullchain_path(&self, name: &str) -> PathBuf {
        self.certs_dir.join(name).join("fullchain.pem")
    }

    /// Path of `<name>/privkey.pem`.
    pub fn privkey_path(&self, name: &str) -> PathBuf {
        self.certs_dir.join(name).join("privkey.pem")
    }

    /// Path of Traefik's file-provider document (top level of `certs_dir`, see the module comment).
    pub fn traefik_doc_path(&self) -> PathBuf {
        self.certs_dir.join(TRAEFIK_DOC)
    }

    /// Stores a freshly issued certificate under `name`: files, metadata, Traefik document.
    pub async fn save(
        &self,
        name: &str,
        chain_pem: &str,
        key_pem: &str,
        challenge: &str,
    ) -> Result<CertRecord, TaskError> {
        let leaf = parse_leaf(chain_pem)?;
        let dir = self.certs_dir.join(name);
        let version = dir.join(&leaf.serial);
        // The versioned pair first (what Traefik will be pointed at), then the canonical pair.
        write_atomic(&version.join("privkey.pem"), key_pem.as_bytes(), 0o600)?;
        write_atomic(&version.join("fullchain.pem"), chain_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join("privkey.pem"), key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join("fullchain.pem"), chain_pem.as_bytes(), 0o644)?;

        let record = CertRecord {
            name: name.to_string(),
            domains: leaf.domains.clone(),
            not_before: rfc3339(leaf.not_before),
            not_after: rfc3339(leaf.not_after),
            issuer: leaf.issuer.clone(),
            serial: leaf.serial.clone(),
            status: STATUS_VALID.into(),
            challenge: challenge.to_string(),
            fullchain: self.fullchain_path(name).display().to_string(),
            privkey: self.privkey_path(name).display().to_string(),
            updated_at: crate::progress::now(),
        };
        self.put(&record).await?;
        self.write_traefik_doc().await?;
        for old in other_versions(&dir, &leaf.serial) {
            self.schedule_removal(&format!("{name}/{old}")).await?;
        }
        Ok(record)
    }

    /// Writes the metadata hash and adds the name to the `certs` set (one round trip).
    async fn put(&self, record: &CertRecord) -> Result<(), TaskError> {
        let mut conn = self.redis.get().await?;
        let key = keys::certificate(&record.name);
        let _: () = deadpool_redis::redis::pipe()
            .atomic()
            .del(&key)
            .hset_multiple(&key, &record.to_fields())
            .sadd(keys::CERTIFICATES, &record.name)
            .query_async(&mut *conn)
            .await?;
        Ok(())
    }

    /// The metadata of `name`, if stored.
    pub async fn get(&self, name: &str) -> Result<Option<CertRecord>, TaskError> {
        let mut conn = self.redis.get().await?;
        let fields: std::collections::HashMap<String, String> =
            conn.hgetall(keys::certificate(name)).await?;
        Ok(CertRecord::from_hash(fields))
    }

    /// Every stored certificate's metadata, sorted by name.
    pub async fn list(&self) -> Result<Vec<CertRecord>, TaskError> {
        let mut conn = self.redis.get().await?;
        let mut names: Vec<String> = conn.smembers(keys::CERTIFICATES).await?;
        names.sort();
        let mut records = Vec::with_capacity(names.len());
        for name in names {
            let fields: std::collections::HashMap<String, String> =
                conn.hgetall(keys::certificate(&name)).await?;
            if let Some(record) = CertRecord::from_hash(fields) {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Reads the stored chain of `name`.
    pub fn read_chain(&self, name: &str) -> Result<Option<String>, AcmeError> {
        let path = self.fullchain_path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AcmeError::file(&path, e)),
        }
    }

    /// Marks `name` revoked: Traefik stops serving it, its key and chain are deleted, its
    /// metadata stays (status `revoked`) for the portal.
    pub async fn mark_revoked(&self, name: &str) -> Result<Option<CertRecord>, TaskError> {
        let Some(mut record) = self.get(name).await? else {
            return Ok(None);
        };
        record.status = STATUS_REVOKED.into();
        record.updated_at = crate::progress::now();
        self.put(&record).await?;
        self.write_traefik_doc().await?;
        self.schedule_removal(name).await?;
        Ok(Some(record))
    }

    /// Forgets `name`: its metadata and set entry, then Traefik's document (rebuilt without it),
    /// then its folder. Returns the record it had, if any. Safe to repeat: a run interrupted half-way
    /// finishes the job the next time (the document is rebuilt and the folder removed whatever Redis
    /// still says).
    pub async fn remove(&self, name: &str) -> Result<Option<CertRecord>, TaskError> {
        let record = self.get(name).await?;
        {
            let mut conn = self.redis.get().await?;
            let _: () = deadpool_redis::redis::pipe()
                .atomic()
                .del(keys::certificate(name))
                .srem(keys::CERTIFICATES, name)
                .query_async(&mut *conn)
                .await?;
        }
        // Traefik stops being pointed at the files before they disappear, and they disappear only
        // after its reload had time to read the new document (see the module comment).
        self.write_traefik_doc().await?;
        self.schedule_removal(name).await?;
        Ok(record)
    }

    /// Records `relative` (`<name>` or `<name>/<serial>`, under `certs_dir`) for removal once the
    /// grace has passed; with no grace, sweeps at once.
    async fn schedule_removal(&self, relative: &str) -> Result<(), TaskError> {
        let due = Utc::now().timestamp() as f64 + self.removal_grace.as_secs_f64();
        {
            let mut conn = self.redis.get().await?;
            let _: () = conn.zadd(keys::CERTIFICATE_REMOVALS, relative, due).await?;
        }
        if self.removal_grace.is_zero() {
            self.sweep().await?;
        }
        Ok(())
    }

    /// Removes the recorded folders whose grace has passed and that no valid certificate references
    /// (a name issued again meanwhile keeps its folder; only its other serials go). Returns how many
    /// folders were removed.
    pub async fn sweep(&self) -> Result<usize, TaskError> {
        let now = Utc::now().timestamp() as f64;
        let due: Vec<String> = {
            let mut conn = self.redis.get().await?;
            conn.zrangebyscore(keys::CERTIFICATE_REMOVALS, f64::NEG_INFINITY, now)
                .await?
        };
        let mut removed = 0;
        for relative in due {
            let mut parts = relative.split('/');
            let (Some(name), serial, None) = (parts.next(), parts.next(), parts.next()) else {
                self.forget_removal(&relative).await?;
                continue;
            };
            // Only names this store writes (a DNS label, a hex serial): never `..` or another path.
            let safe = crate::validate::slug(name).is_ok()
                && name != TRAEFIK_DIR
                && serial.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()));
            if !safe {
                self.forget_removal(&relative).await?;
                continue;
            }
            let referenced = match self.get(name).await? {
                Some(r) if r.status == STATUS_VALID => serial.is_none_or(|s| s == r.serial),
                _ => false,
            };
            if !referenced {
                let path = self.certs_dir.join(&relative);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(AcmeError::file(&path, e).into()),
                }
            }
            self.forget_removal(&relative).await?;
        }
        Ok(removed)
    }

    async fn forget_removal(&self, relative: &str) -> Result<(), TaskError> {
        let mut conn = self.redis.get().await?;
        let _: () = conn.zrem(keys::CERTIFICATE_REMOVALS, relative).await?;
        Ok(())
    }

    /// Rebuilds Traefik's document from every valid stored certificate whose files exist.
    pub async fn write_traefik_doc(&self) -> Result<(), TaskError> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Entry {
            cert_file: String,
            key_file: String,
        }
        #[derive(Serialize)]
        struct Tls {
            certificates: Vec<Entry>,
        }
        #[derive(Serialize)]
        struct Doc {
            tls: Tls,
        }
        let mut certificates = Vec::new();
        for record in self.list().await? {
            if record.status != STATUS_VALID {
                continue;
            }
            let version = self.certs_dir.join(&record.name).join(&record.serial);
            if !version.join("fullchain.pem").is_file() || !version.join("privkey.pem").is_file() {
                continue;
            }
            let seen = self
                .traefik_certs_dir
                .join(&record.name)
                .join(&record.serial);
            certificates.push(Entry {
                cert_file: seen.join("fullchain.pem").display().to_string(),
                key_file: seen.join("privkey.pem").display().to_string(),
            });
        }
        let body = serde_yaml_ng::to_string(&Doc {
            tls: Tls { certificates },
        })
        .map_err(|e| AcmeError::Corrupt(format!("Traefik document: {e}")))?;
        let text = format!(
            "# Written by the orchestrator from the stored certificates; do not edit.\n{body}"
        );
        write_atomic(&self.traefik_doc_path(), text.as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Copies the `*.yml` files of `source` (the platform's dynamic configuration) into
/// `certs_dir/traefik/` and removes the ones `source` no longer has. Returns how many it wrote.
pub fn publish_platform_files(source: &Path, certs_dir: &Path) -> Result<usize, AcmeError> {
    let target = certs_dir.join(TRAEFIK_DIR);
    let is_yaml = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yml" || e == "yaml")
    };
    let mut names = Vec::new();
    let entries = std::fs::read_dir(source).map_err(|e| AcmeError::file(source, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_file() || !is_yaml(&path) {
            continue;
        }
        let body = std::fs::read(&path).map_err(|e| AcmeError::file(&path, e))?;
        write_atomic(&target.join(entry.file_name()), &body, 0o644)?;
        names.push(entry.file_name());
    }
    if let Ok(existing) = std::fs::read_dir(&target) {
        for entry in existing.flatten() {
            if is_yaml(&entry.path()) && !names.contains(&entry.file_name()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(names.len())
}

/// Version folders (serials) of a certificate other than `keep`.
fn other_versions(dir: &Path, keep: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
        .filter(|n| n != keep && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Sweeps due certificate folders every second until `stop` fires (every worker runs one; they
/// race harmlessly, a folder already gone is fine).
pub async fn run_sweeper(store: CertStore, stop: tokio_util::sync::CancellationToken) {
    loop {
        if let Err(err) = store.sweep().await {
            tracing::warn!(error = %err, "sweeping removed certificate folders failed; will retry");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Writes `body` to `path` atomically (temporary file in the same folder, fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<(), AcmeError> {
    let dir = path
        .parent()
        .ok_or_else(|| AcmeError::Corrupt(format!("{} has no folder", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| AcmeError::file(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(AcmeError::file(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_the_mode_and_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn parses_a_leaf() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["b.example.test".into(), "a.example.test".into()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let leaf = parse_leaf(&cert.pem()).unwrap();
        assert_eq!(leaf.domains, vec!["a.example.test", "b.example.test"]);
        assert!(leaf.not_after > leaf.not_before);
        assert!(!leaf.serial.is_empty());
    }
}
