//! The ACME account: created once per directory URL, its credentials (private key included) kept
//! in `acme_account_file` with mode 0600, and restored from there on every later start.
//!
//! The file holds `{"directory": <url>, "credentials": <instant-acme credentials>}`. A file made for
//! another directory (staging vs production, or a restarted Pebble) is replaced by a new account.
//! When two workers create the account at once, the first file written wins and the other loads it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use instant_acme::{Account, AccountBuilder, AccountCredentials, NewAccount};
use serde::{Deserialize, Serialize};

use super::AcmeError;
use crate::config::AcmeConfig;

/// What the account file holds.
#[derive(Serialize, Deserialize)]
struct AccountFile {
    /// The directory URL the account was created on.
    directory: String,
    /// The account URL and key, as instant-acme serialises them.
    credentials: AccountCredentials,
}

/// An HTTP client trusting the configured extra root (Pebble) or the platform's roots.
fn builder(config: &AcmeConfig) -> Result<AccountBuilder, AcmeError> {
    match &config.acme_ca_root {
        Some(root) => Account::builder_with_root(root)
            .map_err(|e| AcmeError::Corrupt(format!("ACME CA root {}: {}", root.display(), e))),
        None => Account::builder().map_err(|e| AcmeError::from_acme("build an HTTP client", e)),
    }
}

/// Loads the account from `acme_account_file`, or creates it on the CA and stores it (0600).
pub async fn load_or_create(config: &AcmeConfig) -> Result<Account, AcmeError> {
    let directory = config.directory_url().to_string();
    let path = &config.acme_account_file;
    if let Some(file) = read(path)? {
        if file.directory == directory {
            return builder(config)?
                .from_credentials(file.credentials)
                .await
                .map_err(|e| AcmeError::from_acme("restore the account", e));
        }
        tracing::warn!(
            file = %path.display(),
            old = %file.directory,
            new = %directory,
            "account file belongs to another ACME directory; creating a new account"
        );
    }

    let contact = config
        .acme_email
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder(config)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.clone(),
            None,
        )
        .await
        .map_err(|e| AcmeError::from_acme("create the account", e))?;

    let body = serde_json::to_vec_pretty(&AccountFile {
        directory: directory.clone(),
        credentials,
    })
    .map_err(|e| AcmeError::Corrupt(format!("serialising the account: {e}")))?;
    match write_new(path, &body)? {
        true => Ok(account),
        // Another worker stored an account for this directory first: use that one, so every
        // worker signs with the same key.
        false => match read(path)? {
            Some(file) if file.directory == directory => builder(config)?
                .from_credentials(file.credentials)
                .await
                .map_err(|e| AcmeError::from_acme("restore the account", e)),
            _ => Ok(account),
        },
    }
}

/// Removes the account file if it still holds the account `id` (its URL at the CA): the CA
/// answered that it does not know it, and the next [`load_or_create`] registers a new one. A file
/// another worker already replaced is left alone.
pub fn forget(config: &AcmeConfig, id: &str) -> Result<(), AcmeError> {
    let path = &config.acme_account_file;
    let Some(file) = read(path)? else {
        return Ok(());
    };
    // The credentials keep their id private; their serialised form names it.
    let held = serde_json::to_value(&file.credentials)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
    if held.as_deref() != Some(id) {
        return Ok(());
    }
    tracing::warn!(file = %path.display(), account = %id, "the CA no longer knows this ACME account; removing its file");
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AcmeError::file(path, e)),
    }
}

/// Reads the account file; `None` when there is none.
fn read(path: &Path) -> Result<Option<AccountFile>, AcmeError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            AcmeError::Corrupt(format!(
                "account file {} is unreadable: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AcmeError::file(path, e)),
    }
}

/// Writes `body` to `path` with mode 0600 through a temporary file. When a file for the same
/// directory appeared meanwhile, keeps it and returns `false`; a stale one (other directory) is
/// replaced.
fn write_new(path: &Path, body: &[u8]) -> Result<bool, AcmeError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(|e| AcmeError::file(&dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("account"),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(body)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(AcmeError::file(&tmp, e));
    }
    // hard_link refuses to replace: the first writer wins without a window.
    let outcome = match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let current_matches = read(path)
                .ok()
                .flatten()
                .and_then(|current| {
                    let ours: AccountFile = serde_json::from_slice(body).ok()?;
                    Some(current.directory == ours.directory)
                })
                .unwrap_or(false);
            if current_matches {
                Ok(false)
            } else {
                std::fs::rename(&tmp, path)
                    .map(|_| true)
                    .map_err(|e| AcmeError::file(path, e))
            }
        }
        Err(e) => Err(AcmeError::file(path, e)),
    };
    let _ = std::fs::remove_file(&tmp);
    outcome
}
