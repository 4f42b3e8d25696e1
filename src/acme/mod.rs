//! Certificates over ACME (RFC 8555): this module owns the ACME account, the order flow
//! (authorizations, DNS-01 through the platform's own DNS state or HTTP-01 through a built-in
//! responder, finalization with an rcgen CSR, download of the chain), the storage of certificates
//! where Traefik's file provider picks them up (with their metadata in Redis for the portal),
//! revocation, and the renewal scheduler.
//!
//! Layout: [`account`] (credentials kept in a 0600 file), [`issue`] (the [`Acme`] service: issue,
//! renew, revoke, and the [`crate::services::CertificateIssuer`] seam), [`storage`] (files, the
//! Traefik document, `cert:<name>` hashes), [`http01`] (the `/.well-known/acme-challenge/` responder),
//! [`renewal`] (the scheduler that enqueues `certificate.renew` tasks). DNS-01 reaches the DNS state
//! only through the small [`ChallengeDns`] trait.

pub mod account;
pub mod dns01;
pub mod http01;
pub mod issue;
pub mod renewal;
pub mod storage;

use async_trait::async_trait;
use instant_acme::Problem;
use thiserror::Error;

use crate::task::TaskError;

pub use issue::{Acme, ChallengeKind, IssueRequest};

/// Where DNS-01 challenge records are published: the platform's DNS state, served by its DNS
/// servers. `fqdn` is `_acme-challenge.<name>` without a trailing dot; several values may live at
/// one name at once (a name and its wildcard share `_acme-challenge.<name>`).
#[async_trait]
pub trait ChallengeDns: Send + Sync {
    /// Adds `value` to the TXT record set at `fqdn` and serves it; adding a present value succeeds.
    async fn add_txt(&self, fqdn: &str, value: &str) -> Result<(), TaskError>;
    /// Removes `value` from the TXT record set at `fqdn`; removing an absent value succeeds.
    async fn remove_txt(&self, fqdn: &str, value: &str) -> Result<(), TaskError>;
}

/// DNS-01 without a DNS state: every publication is refused (HTTP-01 still works).
pub struct NoChallengeDns;

#[async_trait]
impl ChallengeDns for NoChallengeDns {
    async fn add_txt(&self, fqdn: &str, _value: &str) -> Result<(), TaskError> {
        Err(TaskError::Failed(format!(
            "cannot publish {fqdn} TXT: no DNS state is configured for DNS-01"
        )))
    }
    async fn remove_txt(&self, _fqdn: &str, _value: &str) -> Result<(), TaskError> {
        Ok(())
    }
}

/// What can go wrong talking to the CA or keeping certificates.
#[derive(Debug, Error)]
pub enum AcmeError {
    /// The CA could not be reached, answered 5xx, or asked us to slow down: worth retrying.
    #[error("ACME CA {what}: {detail}")]
    Transient { what: String, detail: String },
    /// The CA refused for good (bad identifier, failed challenge, unauthorized, ...).
    #[error("ACME CA refused to {what}: {detail}")]
    Refused { what: String, detail: String },
    /// A local file (account, certificate, Traefik document) could not be read or written.
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Something we hold is not what it should be (unparsable certificate, account file, ...).
    #[error("{0}")]
    Corrupt(String),
}

impl AcmeError {
    /// Classifies an instant-acme error met while doing `what` (e.g. "create the order").
    pub fn from_acme(what: &str, err: instant_acme::Error) -> Self {
        use instant_acme::Error as E;
        let what = what.to_string();
        match err {
            E::Api(problem) => {
                let detail = describe_problem(&problem);
                if problem_is_transient(&problem) {
                    AcmeError::Transient { what, detail }
                } else {
                    AcmeError::Refused { what, detail }
                }
            }
            // Transport failures (connection refused, TLS, reset) and polls that ran out of time.
            E::Http(_) | E::Hyper(_) | E::Other(_) => AcmeError::Transient {
                what: format!("unreachable while trying to {what}"),
                detail: err.to_string(),
            },
            E::Timeout(_) => AcmeError::Transient {
                what: format!("did not finish in time to {what}"),
                detail: "the order is still pending".into(),
            },
            other => AcmeError::Refused {
                what,
                detail: other.to_string(),
            },
        }
    }

    /// An I/O error on `path`.
    pub fn file(path: &std::path::Path, source: std::io::Error) -> Self {
        AcmeError::File {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<AcmeError> for TaskError {
    fn from(err: AcmeError) -> Self {
        match err {
            AcmeError::Transient { .. } => TaskError::Retryable(err.to_string()),
            // A full disk or a permission problem may pass; the worker retries with backoff.
            AcmeError::File { .. } => TaskError::Retryable(err.to_string()),
            AcmeError::Refused { .. } | AcmeError::Corrupt(_) => TaskError::Failed(err.to_string()),
        }
    }
}

/// Whether a problem document means "try again later" (rate limits, server trouble, nonces).
fn problem_is_transient(problem: &Problem) -> bool {
    let kind = problem.r#type.as_deref().unwrap_or_default();
    let status = problem.status.unwrap_or(0);
    kind.ends_with(":rateLimited")
        || kind.ends_with(":serverInternal")
        || kind.ends_with(":badNonce")
        || status == 429
        || status >= 500
}

/// A problem document in plain words: "detail (type)" and one clause per subproblem.
pub fn describe_problem(problem: &Problem) -> String {
    let kind = problem
        .r#type
        .as_deref()
        .map(|t| t.trim_start_matches("urn:ietf:params:acme:error:"))
        .unwrap_or("error");
    let mut text = match &problem.detail {
        Some(detail) => format!("{detail} ({kind})"),
        None => kind.to_string(),
    };
    for sub in &problem.subproblems {
        let who = match &sub.identifier {
            Some(instant_acme::Identifier::Dns(name)) => name.clone(),
            Some(other) => format!("{other:?}"),
            None => "?".into(),
        };
        let sub_kind = sub
            .r#type
            .as_deref()
            .map(|t| t.trim_start_matches("urn:ietf:params:acme:error:"))
            .unwrap_or("error");
        text.push_str(&format!(
            "; {who}: {} ({sub_kind})",
            sub.detail.as_deref().unwrap_or("no detail")
        ));
    }
    text
}
