//! The order flow and the [`Acme`] service built on it: issue, renew, revoke, and the
//! [`CertificateIssuer`] seam used by `team.provision`.
//!
//! Issuing is: account (loaded once), new order, authorizations (valid ones skipped), one challenge
//! per pending authorization (DNS-01: a TXT value at `_acme-challenge.<name>` through
//! [`ChallengeDns`]; HTTP-01: the key authorization handed to the responder through Redis), wait
//! for the CA, finalize with a CSR for a fresh ECDSA P-256 key (rcgen), download the chain, store it.
//! Whatever was published for the challenges is withdrawn on every path: explicitly once the flow
//! ends (success, failure or cancellation), and by a drop guard if the future is dropped mid-way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus,
    RetryPolicy, RevocationReason, RevocationRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::storage::{
    CertRecord, CertStore, STATUS_REVOKED, STATUS_VALID, TRAEFIK_DIR, parse_leaf,
};
use super::{AcmeError, ChallengeDns, describe_problem, http01};
use crate::config::Config;
use crate::services::{CertificateIssuer, Services, TaskReporter};
use crate::task::TaskError;
use crate::validate;

/// Most names one certificate may carry (Let's Encrypt's limit).
pub const MAX_DOMAINS: usize = 100;
/// Steps `issue` reports.
pub const ISSUE_STEPS: u32 = 7;

/// How the CA is shown control of a name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeKind {
    /// A TXT record at `_acme-challenge.<name>` in the platform's zone; the only one for wildcards.
    #[default]
    #[serde(rename = "dns-01")]
    Dns01,
    /// A file at `http://<name>/.well-known/acme-challenge/<token>`, served by the responder.
    #[serde(rename = "http-01")]
    Http01,
}

impl ChallengeKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Dns01 => "dns-01",
            ChallengeKind::Http01 => "http-01",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "dns-01" => Some(ChallengeKind::Dns01),
            "http-01" => Some(ChallengeKind::Http01),
            _ => None,
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Dns01 => ChallengeType::Dns01,
            ChallengeKind::Http01 => ChallengeType::Http01,
        }
    }
}

/// A checked request for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// Name of the certificate (folder under `certs_dir`, `cert:<name>`): a DNS label.
    pub name: String,
    /// Names to certify: lowercase, in the platform zone, sorted, without duplicates.
    pub domains: Vec<String>,
    /// Challenge to answer.
    pub challenge: ChallengeKind,
}

/// Whether progress goes out as steps (a certificate task) or as notes (inside another task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `ctx.step`: each ACME step advances the task.
    Steps,
    /// `ctx.note`: messages within the caller's current step.
    Notes,
}

async fn say(
    ctx: &dyn TaskReporter,
    report: Report,
    message: impl AsRef<str>,
) -> Result<(), TaskError> {
    match report {
        Report::Steps => ctx.step(message.as_ref()).await,
        Report::Notes => {
            ctx.checkpoint().await?;
            ctx.note(message.as_ref()).await
        }
    }
}

/// Runs `fut` unless the task is cancelled first.
async fn cancellable<T>(
    ctx: &dyn TaskReporter,
    fut: impl Future<Output = T>,
) -> Result<T, TaskError> {
    tokio::select! {
        out = fut => Ok(out),
        _ = ctx.cancellation().cancelled() => Err(ctx
            .checkpoint()
            .await
            .err()
            .unwrap_or_else(|| TaskError::Cancelled("cancelled while waiting for the CA".into()))),
    }
}

/// Whether the CA says it does not know the account we signed with (RFC 8555 §7.3.1).
fn account_is_unknown(problem: &instant_acme::Problem) -> bool {
    problem
        .r#type
        .as_deref()
        .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
}

/// Polls of the order: quick at first (Pebble validates at once), patient for a real CA.
fn polling() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(200))
        .backoff(1.5)
        .timeout(Duration::from_secs(180))
}

/// The ACME service: one per process, shared by the certificate handlers and the provisioning seam.
pub struct Acme {
    config: Arc<Config>,
    redis: deadpool_redis::Pool,
    dns: Arc<dyn ChallengeDns>,
    store: CertStore,
    /// The account, loaded (or created) at first use; dropped when the CA no longer knows it.
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Acme {
    /// A service using `dns` for DNS-01 challenges.
    pub fn new(
        config: Arc<Config>,
        redis: deadpool_redis::Pool,
        dns: Arc<dyn ChallengeDns>,
    ) -> Self {
        let store = CertStore::new(&config.acme, redis.clone());
        Self {
            config,
            redis,
            dns,
            store,
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// The service of the platform: DNS-01 through the configured zone store
    /// ([`super::dns01::ZoneChallengeDns`]), or refused (HTTP-01 only) when the zone is misconfigured.
    pub fn for_platform(config: Arc<Config>, redis: deadpool_redis::Pool) -> Arc<Self> {
        let dns: Arc<dyn ChallengeDns> = match super::dns01::ZoneChallengeDns::from_config(
            &config,
            redis.clone(),
        ) {
            Ok(dns) => Arc::new(dns),
            Err(e) => {
                tracing::warn!(error = %e, "DNS-01 unavailable: the platform zone is misconfigured");
                Arc::new(super::NoChallengeDns)
            }
        };
        Arc::new(Self::new(config, redis, dns))
    }

    /// A service on the shared configuration and Redis pool.
    pub fn from_services(services: &Services, dns: Arc<dyn ChallengeDns>) -> Self {
        Self::new(services.config.clone(), services.redis.clone(), dns)
    }

    /// The certificate store.
    pub fn store(&self) -> &CertStore {
        &self.store
    }

    /// The ACME account, created on first use.
    pub async fn account(&self) -> Result<Account, TaskError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let account = super::account::load_or_create(&self.config.acme).await?;
        *cached = Some(account.clone());
        Ok(account)
    }

    /// Forgets `stale`, an account the CA answered `accountDoesNotExist` for (a CA that lost its
    /// state, such as a restarted Pebble, or an account deactivated elsewhere), so the next
    /// [`Self::account`] registers a new one. Another task may have done so already: only that
    /// very account is dropped.
    async fn forget_account(&self, stale: &Account) -> Result<(), TaskError> {
        let mut cached = self.account.lock().await;
        if cached.as_ref().is_some_and(|a| a.id() == stale.id()) {
            *cached = None;
        }
        super::account::forget(&self.config.acme, stale.id())?;
        Ok(())
    }

    /// The platform zone without its trailing dot (`localhost`).
    pub fn zone(&self) -> String {
        self.config
            .dns
            .zone(&self.config.platform)
            .trim_end_matches('.')
            .to_string()
    }

    /// Checks an untrusted request: names are domain names of the platform zone, wildcards only
    /// with DNS-01, the certificate name a DNS label (derived from the first domain when absent).
    pub fn request(
        &self,
        name: Option<&str>,
        domains: &[String],
        challenge: ChallengeKind,
    ) -> Result<IssueRequest, TaskError> {
        if domains.is_empty() {
            return Err(TaskError::Invalid(
                "domains: at least one name is needed".into(),
            ));
        }
        if domains.len() > MAX_DOMAINS {
            return Err(TaskError::Invalid(format!(
                "domains: {} names, at most {MAX_DOMAINS} per certificate",
                domains.len()
            )));
        }
        let zone = self.zone();
        let mut checked = Vec::with_capacity(domains.len());
        for raw in domains {
            let domain = raw.trim_end_matches('.').to_ascii_lowercase();
            validate::domain("domain", &domain, true)?;
            let in_zone = domain == zone || domain.ends_with(&format!(".{zone}"));
            if !in_zone {
                return Err(TaskError::Invalid(format!(
                    "domain {domain:?} is outside the platform zone {zone:?}: only names the \
                     platform serves can be certified"
                )));
            }
            if domain.starts_with("*.") && challenge != ChallengeKind::Dns01 {
                return Err(TaskError::Invalid(format!(
                    "domain {domain:?} is a wildcard: wildcards need the dns-01 challenge"
                )));
            }
            checked.push(domain);
        }
        let first = checked[0].clone();
        checked.sort();
        checked.dedup();
        let name = match name {
            Some(name) => name.to_string(),
            None => derive_name(&first),
        };
        validate::dns_label("certificate name", &name)?;
        if name == TRAEFIK_DIR {
            return Err(TaskError::Invalid(format!(
                "certificate name {name:?} is reserved for Traefik's document"
            )));
        }
        Ok(IssueRequest {
            name,
            domains: checked,
            challenge,
        })
    }

    /// The stored certificate of `request.name` when it is valid, covers the requested names, has
    /// its files, and is not due for renewal.
    pub async fn reusable(&self, request: &IssueRequest) -> Result<Option<CertRecord>, TaskError> {
        let Some(record) = self.store.get(&request.name).await? else {
            return Ok(None);
        };
        let usable = record.status == STATUS_VALID
            && record.covers(&request.domains)
            && !record.renewal_due(self.config.acme.renew_before_days, chrono::Utc::now())
            && self.store.fullchain_path(&request.name).is_file()
            && self.store.privkey_path(&request.name).is_file();
        Ok(usable.then_some(record))
    }

    /// Issues a certificate for `request` and stores it; reports each ACME step as `report` says.
    pub async fn issue(
        &self,
        ctx: &dyn TaskReporter,
        request: &IssueRequest,
        report: Report,
    ) -> Result<CertRecord, TaskError> {
        let mut published = Published::new(self.dns.clone(), self.redis.clone());
        let outcome = self.order(ctx, request, report, &mut published).await;
        // Always withdraw the challenge records, whatever the outcome.
        let cleaned = published.clean_up().await;
        let (chain, key) = outcome?;
        if let Err(e) = cleaned {
            tracing::warn!(error = %e, "challenge records not all withdrawn");
            ctx.note(&format!(
                "warning: challenge records not all withdrawn: {e}"
            ))
            .await?;
        }
        say(ctx, report, format!("Storing certificate {}", request.name)).await?;
        self.store
            .save(&request.name, &chain, &key, request.challenge.as_str())
            .await
    }

    /// The ACME conversation; returns the chain and the private key (PEM).
    async fn order(
        &self,
        ctx: &dyn TaskReporter,
        request: &IssueRequest,
        report: Report,
        published: &mut Published,
    ) -> Result<(String, String), TaskError> {
        say(ctx, report, "Loading the ACME account").await?;
        let account = cancellable(ctx, self.account()).await??;

        say(
            ctx,
            report,
            format!("Creating an order for {}", request.domains.join(", ")),
        )
        .await?;
        let identifiers: Vec<Identifier> = request
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let new_order = NewOrder::new(&identifiers);
        let mut order = match cancellable(ctx, account.new_order(&new_order)).await? {
            Err(instant_acme::Error::Api(problem)) if account_is_unknown(&problem) => {
                say(
                    ctx,
                    report,
                    "The CA no longer knows the ACME account; registering a new one",
                )
                .await?;
                self.forget_account(&account).await?;
                let account = cancellable(ctx, self.account()).await??;
                cancellable(ctx, account.new_order(&new_order)).await?
            }
            other => other,
        }
        .map_err(|e| AcmeError::from_acme("create the order", e))?;

        say(
            ctx,
            report,
            format!("Answering the {} challenges", request.challenge.as_str()),
        )
        .await?;
        self.answer_challenges(ctx, request, &mut order, published)
            .await?;

        say(ctx, report, "Waiting for the CA to validate").await?;
        let status = cancellable(ctx, order.poll_ready(&polling())).await?;
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                let why = match &status {
                    Err(instant_acme::Error::Api(problem)) => describe_problem(problem),
                    _ => "the order became invalid".into(),
                };
                let failures = challenge_failures(&mut order).await;
                let detail = if failures.is_empty() {
                    why
                } else {
                    failures.join("; ")
                };
                return Err(TaskError::Failed(format!(
                    "the CA could not validate {}: {detail}",
                    request.domains.join(", ")
                )));
            }
            Err(e) => return Err(AcmeError::from_acme("validate the order", e).into()),
        }

        say(ctx, report, "Finalizing the order with a new key").await?;
        let key = rcgen::KeyPair::generate()
            .map_err(|e| TaskError::Failed(format!("generating the certificate key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(request.domains.clone())
            .map_err(|e| TaskError::Invalid(format!("names for the CSR: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| TaskError::Failed(format!("building the CSR: {e}")))?;
        cancellable(ctx, order.finalize_csr(csr.der()))
            .await?
            .map_err(|e| AcmeError::from_acme("finalize the order", e))?;

        say(ctx, report, "Downloading the certificate").await?;
        let chain = cancellable(ctx, order.poll_certificate(&polling()))
            .await?
            .map_err(|e| AcmeError::from_acme("issue the certificate", e))?;
        Ok((chain, key.serialize_pem()))
    }

    /// Publishes one challenge per pending authorization and tells the CA it is ready.
    async fn answer_challenges(
        &self,
        ctx: &dyn TaskReporter,
        request: &IssueRequest,
        order: &mut Order,
        published: &mut Published,
    ) -> Result<(), TaskError> {
        let mut authorizations = order.authorizations();
        while let Some(result) = cancellable(ctx, authorizations.next()).await? {
            let mut authz =
                result.map_err(|e| AcmeError::from_acme("fetch an authorization", e))?;
            let shown = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => {
                    ctx.note(&format!("{shown}: already authorized")).await?;
                    continue;
                }
                other => {
                    return Err(TaskError::Failed(format!(
                        "the CA holds the authorization for {shown} as {other:?}"
                    )));
                }
            }
            let base = match authz.identifier().identifier {
                Identifier::Dns(name) => name.clone(),
                other => {
                    return Err(TaskError::Failed(format!(
                        "unexpected identifier {other:?} in the order"
                    )));
                }
            };
            let mut challenge =
                authz
                    .challenge(request.challenge.acme_type())
                    .ok_or_else(|| {
                        TaskError::Failed(format!(
                            "the CA offers no {} challenge for {shown}",
                            request.challenge.as_str()
                        ))
                    })?;
            let key_authorization = challenge.key_authorization();
            match request.challenge {
                ChallengeKind::Dns01 => {
                    let fqdn = format!("_acme-challenge.{base}");
                    published
                        .add_txt(&fqdn, &key_authorization.dns_value())
                        .await?;
                    ctx.note(&format!("{shown}: published {fqdn} TXT")).await?;
                }
                ChallengeKind::Http01 => {
                    let token = challenge.token.clone();
                    published
                        .add_token(&token, key_authorization.as_str())
                        .await?;
                    ctx.note(&format!(
                        "{shown}: serving /.well-known/acme-challenge/{token}"
                    ))
                    .await?;
                }
            }
            cancellable(ctx, challenge.set_ready())
                .await?
                .map_err(|e| AcmeError::from_acme("accept the challenge", e))?;
        }
        Ok(())
    }

    /// `certificate.renew`: issues the stored certificate's names again (same challenge) and
    /// replaces its files. With `if_due`, does nothing while the certificate is not due.
    pub async fn renew(
        &self,
        ctx: &dyn TaskReporter,
        name: &str,
        if_due: bool,
    ) -> Result<Value, TaskError> {
        validate::dns_label("certificate name", name)?;
        ctx.step(&format!("Reading certificate {name}")).await?;
        let record =
            self.store.get(name).await?.ok_or_else(|| {
                TaskError::Failed(format!("no certificate named {name} to renew"))
            })?;
        if record.status == STATUS_REVOKED {
            return Err(TaskError::Failed(format!(
                "certificate {name} was revoked: issue a new one instead"
            )));
        }
        let due = record.renewal_due(self.config.acme.renew_before_days, chrono::Utc::now());
        if if_due && !due {
            return Ok(json!({
                "renewed": false,
                "reason": format!("not due before {} days ahead of {}", self.config.acme.renew_before_days, record.not_after),
                "certificate": record.to_json(),
            }));
        }
        let challenge = ChallengeKind::parse(&record.challenge).unwrap_or_default();
        let request = self.request(Some(name), &record.domains, challenge)?;
        let renewed = self.issue(ctx, &request, Report::Steps).await?;
        Ok(json!({
            "renewed": true,
            "previous_serial": record.serial,
            "certificate": renewed.to_json(),
        }))
    }

    /// `certificate.revoke`: revokes at the CA, then stops serving the certificate and deletes its
    /// files (the metadata stays, status `revoked`). Revoking a revoked certificate succeeds.
    pub async fn revoke(
        &self,
        ctx: &dyn TaskReporter,
        name: &str,
        reason: Option<RevocationReason>,
    ) -> Result<Value, TaskError> {
        validate::dns_label("certificate name", name)?;
        ctx.step(&format!("Reading certificate {name}")).await?;
        let record =
            self.store.get(name).await?.ok_or_else(|| {
                TaskError::Failed(format!("no certificate named {name} to revoke"))
            })?;
        if record.status == STATUS_REVOKED {
            return Ok(
                json!({ "revoked": true, "already": true, "certificate": record.to_json() }),
            );
        }
        let chain = self.store.read_chain(name)?.ok_or_else(|| {
            TaskError::Failed(format!(
                "certificate {name} is recorded but its chain file is missing"
            ))
        })?;
        let leaf = parse_leaf(&chain)?;

        ctx.step(&format!("Revoking serial {} at the CA", leaf.serial))
            .await?;
        let account = cancellable(ctx, self.account()).await??;
        let der = rustls_pki_types::CertificateDer::from(leaf.der.clone());
        let revoked = cancellable(
            ctx,
            account.revoke(&RevocationRequest {
                certificate: &der,
                reason,
            }),
        )
        .await?;
        match revoked {
            Ok(()) => {}
            // A retry after the CA already revoked it (our bookkeeping failed last time).
            Err(instant_acme::Error::Api(problem))
                if problem
                    .r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":alreadyRevoked")) => {}
            Err(e) => return Err(AcmeError::from_acme("revoke the certificate", e).into()),
        }

        ctx.step("Withdrawing the certificate from Traefik").await?;
        let record = self.store.mark_revoked(name).await?.unwrap_or(record);
        Ok(json!({ "revoked": true, "already": false, "certificate": record.to_json() }))
    }
}

#[async_trait]
impl CertificateIssuer for Acme {
    async fn ensure_certificate(
        &self,
        ctx: &dyn TaskReporter,
        name: &str,
        domains: &[String],
    ) -> Result<Value, TaskError> {
        let request = self.request(Some(name), domains, ChallengeKind::Dns01)?;
        if let Some(record) = self.reusable(&request).await? {
            ctx.note(&format!(
                "Certificate {} is valid until {}: reused",
                record.name, record.not_after
            ))
            .await?;
            let mut value = record.to_json();
            value["reused"] = json!(true);
            return Ok(value);
        }
        let record = self.issue(ctx, &request, Report::Notes).await?;
        let mut value = record.to_json();
        value["reused"] = json!(false);
        Ok(value)
    }

    async fn has_certificate(&self, name: &str) -> Result<bool, TaskError> {
        Ok(self.store.get(name).await?.is_some())
    }

    async fn remove_certificate(&self, name: &str) -> Result<String, TaskError> {
        validate::dns_label("certificate name", name)?;
        if name == TRAEFIK_DIR {
            return Err(TaskError::Invalid(format!(
                "certificate name {name:?} is reserved for Traefik's document"
            )));
        }
        // Not revoked at the CA: the private key is deleted with the files, so nobody can use the
        // certificate any more, and a deletion does not depend on the CA being reachable.
        Ok(match self.store.remove(name).await? {
            Some(record) => format!(
                "Certificate {name} (serial {}) removed and no longer served",
                record.serial
            ),
            None => format!("Certificate {name}: none stored"),
        })
    }
}

/// `*.team-a.localhost` → `wildcard-team-a-localhost`.
fn derive_name(domain: &str) -> String {
    let name = match domain.strip_prefix("*.") {
        Some(rest) => format!("wildcard.{rest}"),
        None => domain.to_string(),
    };
    name.replace('.', "-")
}

/// The challenges' own problem documents, per identifier, after a failed validation.
async fn challenge_failures(order: &mut Order) -> Vec<String> {
    let mut failures = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let shown = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                failures.push(format!("{shown}: {}", describe_problem(problem)));
            }
        }
    }
    failures
}

/// What one issuance published for its challenges, withdrawn by [`Published::clean_up`] or, if
/// the flow is dropped before that, by a task spawned from `Drop`.
struct Published {
    dns: Arc<dyn ChallengeDns>,
    redis: deadpool_redis::Pool,
    /// `(fqdn, value)` TXT values added (recorded before the add, so a half-done add is undone too).
    txt: Vec<(String, String)>,
    /// HTTP-01 tokens handed to the responder.
    tokens: Vec<String>,
}

impl Published {
    fn new(dns: Arc<dyn ChallengeDns>, redis: deadpool_redis::Pool) -> Self {
        Self {
            dns,
            redis,
            txt: Vec::new(),
            tokens: Vec::new(),
        }
    }

    async fn add_txt(&mut self, fqdn: &str, value: &str) -> Result<(), TaskError> {
        self.txt.push((fqdn.to_string(), value.to_string()));
        self.dns.add_txt(fqdn, value).await
    }

    async fn add_token(&mut self, token: &str, key_authorization: &str) -> Result<(), TaskError> {
        self.tokens.push(token.to_string());
        http01::publish(&self.redis, token, key_authorization).await
    }

    /// Withdraws everything; tries every record and returns the first error.
    async fn clean_up(&mut self) -> Result<(), TaskError> {
        let txt = std::mem::take(&mut self.txt);
        let tokens = std::mem::take(&mut self.tokens);
        withdraw(self.dns.clone(), self.redis.clone(), txt, tokens).await
    }
}

async fn withdraw(
    dns: Arc<dyn ChallengeDns>,
    redis: deadpool_redis::Pool,
    txt: Vec<(String, String)>,
    tokens: Vec<String>,
) -> Result<(), TaskError> {
    let mut first_error = None;
    for (fqdn, value) in &txt {
        if let Err(e) = dns.remove_txt(fqdn, value).await {
            first_error.get_or_insert(e);
        }
    }
    for token in &tokens {
        if let Err(e) = http01::withdraw(&redis, token).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

impl Drop for Published {
    fn drop(&mut self) {
        if self.txt.is_empty() && self.tokens.is_empty() {
            return;
        }
        let txt = std::mem::take(&mut self.txt);
        let tokens = std::mem::take(&mut self.tokens);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (dns, redis) = (self.dns.clone(), self.redis.clone());
            runtime.spawn(async move {
                if let Err(e) = withdraw(dns, redis, txt, tokens).await {
                    tracing::warn!(error = %e, "challenge records left after a dropped issuance");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::derive_name;

    #[test]
    fn names_derive_from_the_first_domain() {
        assert_eq!(derive_name("team-a.localhost"), "team-a-localhost");
        assert_eq!(
            derive_name("*.team-a.localhost"),
            "wildcard-team-a-localhost"
        );
    }
}
