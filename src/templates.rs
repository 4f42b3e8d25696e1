//! Container templates of teams and sandboxes: `templates/team.yml` and `templates/sandbox.yml`, a
//! compose-like YAML subset rendered with the tenant's values (minijinja), turned into the exact
//! container specifications the engine wrapper creates, with their label maps and a template hash.
//!
//! The YAML is parsed *before* rendering and every string (keys included) is rendered on its own,
//! so a value can never change the structure of the document. Labels are a map from the start (no
//! shell, no `key=value` splitting); every Traefik router and service name is checked against
//! `[a-z0-9-]` (Traefik skips a whole container whose labels fail to decode) and every router must
//! carry an explicit priority. The orchestrator adds its ownership labels and `traefik.docker.network`
//! itself, so a template cannot forget them. Supported per service: `image`, `command`,
//! `environment`, `labels`, `healthcheck` (`test`, `interval`, `timeout`, `retries`,
//! `start_period`), `volumes` (`<declared volume>:<path>[:ro]`), `restart`, `mem_limit`, `cpus`,
//! `pids_limit`, `init`, `replicas` (Swarm backend) and `drain_file` (start-first replacement).
//! Anything else is refused by name.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::Config;
use crate::validate;

/// Label naming who manages a container, network or volume; its value is [`MANAGED_BY_VALUE`].
pub const LABEL_MANAGED_BY: &str = "orchestrator.managed-by";
/// The value of [`LABEL_MANAGED_BY`] on everything this worker owns.
pub const MANAGED_BY_VALUE: &str = "orchestrator";
/// Label holding the tenant kind (`team` or `sandbox`).
pub const LABEL_KIND: &str = "orchestrator.kind";
/// Label holding the tenant slug (`orchestrator.team=<slug>` style is also set, see [`Kind::label`]).
pub const LABEL_SLUG: &str = "orchestrator.slug";
/// Label holding the service name inside the template (`api`, `web`).
pub const LABEL_SERVICE: &str = "orchestrator.service";
/// Label holding the hash of the rendered template; a different hash means "replace".
pub const LABEL_TEMPLATE_HASH: &str = "orchestrator.template-hash";

/// Why a template could not be turned into container specifications.
#[derive(Debug, Error)]
pub enum TemplateError {
    #[error("cannot read template {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template {path} is not valid YAML: {source}")]
    Yaml {
        path: String,
        source: serde_yaml_ng::Error,
    },
    #[error("template {path}: rendering {value:?} failed: {source}")]
    Render {
        path: String,
        value: String,
        source: minijinja::Error,
    },
    #[error("template {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The two kinds of tenant, each with its template, channel and Redis keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Team,
    Sandbox,
}

impl Kind {
    /// `team` / `sandbox`: the prefix of container names, the template file stem, the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Team => "team",
            Kind::Sandbox => "sandbox",
        }
    }

    /// Parses `team` / `sandbox`.
    pub fn parse(value: &str) -> Option<Kind> {
        match value {
            "team" => Some(Kind::Team),
            "sandbox" => Some(Kind::Sandbox),
            _ => None,
        }
    }

    /// `orchestrator.team` / `orchestrator.sandbox`: the label that says which tenant owns a resource.
    pub fn label(self) -> String {
        format!("orchestrator.{}", self.as_str())
    }

    /// `<kind>-<slug>`: prefix of every resource name of the tenant.
    pub fn prefix(self, slug: &str) -> String {
        format!("{}-{slug}", self.as_str())
    }
}

/// Values a template is rendered with.
#[derive(Debug, Clone, Serialize)]
pub struct Values {
    /// `team` or `sandbox`.
    pub kind: &'static str,
    /// The tenant slug (a validated DNS label).
    pub slug: String,
    /// `<kind>-<slug>`.
    pub prefix: String,
    /// Platform domain.
    pub domain: String,
    /// `<slug>.<domain>`.
    pub host: String,
    /// Traefik entrypoint.
    pub entrypoint: String,
    /// Traefik certificate resolver: empty unless Traefik issues the certificates
    /// (`CERT_ISSUER=traefik`), so that each host has one issuer.
    pub certresolver: String,
    /// Traefik middlewares of the team routers (`TRAEFIK_MIDDLEWARES`), possibly empty.
    pub middlewares: String,
    /// Network the containers join (and Traefik uses to reach them).
    pub network: String,
    /// Images by role (`api`, `web`), from configuration.
    pub images: BTreeMap<String, String>,
}

impl Values {
    /// The values of `kind`/`slug` under `config`; the slug must already be validated.
    pub fn new(config: &Config, kind: Kind, slug: &str) -> Values {
        let domain = config.platform.domain.trim_end_matches('.').to_string();
        let mut images = BTreeMap::new();
        images.insert("api".to_string(), config.docker.team_api_image.clone());
        images.insert("web".to_string(), config.docker.team_web_image.clone());
        Values {
            kind: kind.as_str(),
            slug: slug.to_string(),
            prefix: kind.prefix(slug),
            host: format!("{slug}.{domain}"),
            domain,
            entrypoint: config.platform.traefik_entrypoint.clone(),
            certresolver: if config.platform.traefik_issues() {
                config.platform.traefik_certresolver.clone()
            } else {
                String::new()
            },
            middlewares: config.platform.traefik_middlewares.trim().to_string(),
            network: network_name(config, kind, slug),
            images,
        }
    }
}

/// The network a tenant's containers join: its own (`<kind>-<slug>-net`) or the shared one.
pub fn network_name(config: &Config, kind: Kind, slug: &str) -> String {
    if config.docker.network_mode == "shared" {
        config.docker.shared_network.clone()
    } else {
        format!("{}-net", kind.prefix(slug))
    }
}

/// The rendered template of one tenant: what should exist.
#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    /// Tenant kind.
    pub kind: Kind,
    /// Tenant slug.
    pub slug: String,
    /// Network the containers join.
    pub network: String,
    /// Whether the network is the tenant's own (created and removed with it).
    pub own_network: bool,
    /// Volumes by full name (`<kind>-<slug>-<volume>`).
    pub volumes: Vec<String>,
    /// Containers in template order.
    pub containers: Vec<ContainerSpec>,
    /// Hash of everything above: the `orchestrator.template-hash` label.
    pub hash: String,
}

/// One container as it will be created.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerSpec {
    /// Service key in the template (`api`), also the network alias.
    pub service: String,
    /// Container name, `<kind>-<slug>-<service>`.
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    /// `KEY=value` entries, sorted by key.
    pub env: Vec<String>,
    /// Every label, ownership and Traefik network included (the hash label is added on create).
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<HealthSpec>,
    /// `volume-name:/path[:ro]` binds.
    pub binds: Vec<String>,
    /// `no`, `always`, `unless-stopped`, `on-failure`.
    pub restart: String,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    /// Run an init as PID 1 (forwards SIGTERM, reaps zombies): stops take milliseconds, not the grace period.
    pub init: bool,
    /// Tasks of the Swarm service (`BACKEND=swarm`); the docker backend runs one container.
    /// Left out of the hash when 1, so templates without it keep their hash.
    #[serde(skip_serializing_if = "is_one")]
    pub replicas: u64,
    /// A file whose presence makes the healthcheck fail: a start-first replacement creates it in
    /// the old container so the ingress stops routing to it before it is removed (see
    /// [`ContainerSpec::health_test`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_file: Option<String>,
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

impl ContainerSpec {
    /// The healthcheck command the engine runs: the template's, preceded by `test ! -e <drain_file>`
    /// when the service declares one (through the image's `sh`), so that a drained container turns
    /// unhealthy while it still answers, and the ingress (which skips unhealthy containers) stops
    /// sending it requests before it goes away.
    pub fn health_test(&self) -> Option<Vec<String>> {
        let health = self.healthcheck.as_ref()?;
        let Some(file) = &self.drain_file else {
            return Some(health.test.clone());
        };
        let original = match health.test.first().map(String::as_str) {
            Some("CMD-SHELL") => health.test[1..].join(" "),
            Some("CMD") => shell_words(&health.test[1..]),
            _ => shell_words(&health.test),
        };
        Some(vec![
            "CMD-SHELL".into(),
            format!(
                "test ! -e {} && {original}",
                shell_words(std::slice::from_ref(file))
            ),
        ])
    }
}

/// Words quoted for `sh` (single quotes, embedded quotes escaped).
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A healthcheck with durations in nanoseconds, as the engine wants them.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSpec {
    pub test: Vec<String>,
    pub interval_ns: i64,
    pub timeout_ns: i64,
    pub retries: i64,
    pub start_period_ns: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    volumes: BTreeMap<String, serde_yaml_ng::Value>,
    services: serde_yaml_ng::Mapping,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    image: String,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    environment: BTreeMap<String, Scalar>,
    #[serde(default)]
    labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default = "default_restart")]
    restart: String,
    #[serde(default)]
    mem_limit: Option<Scalar>,
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    pids_limit: Option<i64>,
    #[serde(default)]
    init: bool,
    #[serde(default)]
    replicas: Option<u64>,
    #[serde(default)]
    drain_file: Option<String>,
}

fn default_restart() -> String {
    "unless-stopped".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Vec<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<i64>,
    #[serde(default)]
    start_period: Option<String>,
}

/// A YAML scalar read as text (`8000`, `true` and `"x"` all become strings, as in compose).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

/// Loads `<templates_dir>/<kind>.yml` and renders it for `slug`.
pub fn render(config: &Config, kind: Kind, slug: &str) -> Result<Rendered, TemplateError> {
    let path = config
        .docker
        .templates_dir
        .join(format!("{}.yml", kind.as_str()));
    let source = std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let values = Values::new(config, kind, slug);
    render_source(
        &path,
        &source,
        kind,
        &values,
        config.docker.network_mode != "shared",
    )
}

/// Renders a template text (`path` only names it in errors).
pub fn render_source(
    path: &Path,
    source: &str,
    kind: Kind,
    values: &Values,
    own_network: bool,
) -> Result<Rendered, TemplateError> {
    let path_text = path.display().to_string();
    let invalid = |message: String| TemplateError::Invalid {
        path: path_text.clone(),
        message,
    };
    let document: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(source).map_err(|source| TemplateError::Yaml {
            path: path_text.clone(),
            source,
        })?;
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let file: File = serde_yaml_ng::from_value(document).map_err(|source| TemplateError::Yaml {
        path: path_text.clone(),
        source,
    })?;

    let mut volumes = Vec::new();
    for name in file.volumes.keys() {
        check_name(name).map_err(|m| invalid(format!("volume {name:?}: {m}")))?;
        volumes.push(format!("{}-{name}", values.prefix));
    }

    let mut containers = Vec::new();
    for (key, body) in file.services {
        let service = key
            .as_str()
            .ok_or_else(|| invalid("service names must be strings".into()))?
            .to_string();
        check_name(&service).map_err(|m| invalid(format!("service {service:?}: {m}")))?;
        let name = format!("{}-{service}", values.prefix);
        // Per-service values: the container name is what routers and services are called.
        let mut context = serde_json::to_value(values).unwrap_or_default();
        if let Some(map) = context.as_object_mut() {
            map.insert("service".into(), service.clone().into());
            map.insert("name".into(), name.clone().into());
        }
        let rendered = render_value(&env, body, &context, &path_text)?;
        let parsed: Service =
            serde_yaml_ng::from_value(rendered).map_err(|source| TemplateError::Yaml {
                path: path_text.clone(),
                source,
            })?;
        containers.push(
            service_spec(values, &service, name, parsed, &file.volumes)
                .map_err(|m| invalid(format!("service {service:?}: {m}")))?,
        );
    }
    if containers.is_empty() {
        return Err(invalid("no services".into()));
    }
    check_routers(&containers).map_err(invalid)?;

    let mut rendered = Rendered {
        kind,
        slug: values.slug.clone(),
        network: values.network.clone(),
        own_network,
        volumes,
        containers,
        hash: String::new(),
    };
    let canonical = serde_json::to_vec(&rendered).unwrap_or_default();
    rendered.hash = hex::encode(&Sha256::digest(&canonical)[..8]);
    Ok(rendered)
}

impl Rendered {
    /// Every label of `container`, the template hash included.
    pub fn labels_of(&self, container: &ContainerSpec) -> BTreeMap<String, String> {
        let mut labels = container.labels.clone();
        labels.insert(LABEL_TEMPLATE_HASH.into(), self.hash.clone());
        labels
    }

    /// Ownership labels of the tenant's network and volumes.
    pub fn ownership_labels(&self) -> BTreeMap<String, String> {
        ownership(self.kind, &self.slug)
    }

    /// The names the tenant is reached at.
    pub fn container_names(&self) -> Vec<String> {
        self.containers.iter().map(|c| c.name.clone()).collect()
    }
}

/// The labels that mark a resource as the orchestrator's and name its tenant.
pub fn ownership(kind: Kind, slug: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels.insert(LABEL_KIND.into(), kind.as_str().into());
    labels.insert(LABEL_SLUG.into(), slug.into());
    labels.insert(kind.label(), slug.into());
    labels
}

fn render_value(
    env: &minijinja::Environment<'_>,
    value: serde_yaml_ng::Value,
    context: &serde_json::Value,
    path: &str,
) -> Result<serde_yaml_ng::Value, TemplateError> {
    use serde_yaml_ng::Value as V;
    Ok(match value {
        V::String(text) => V::String(render_text(env, &text, context, path)?),
        V::Sequence(items) => V::Sequence(
            items
                .into_iter()
                .map(|v| render_value(env, v, context, path))
                .collect::<Result<_, _>>()?,
        ),
        V::Mapping(map) => {
            let mut out = serde_yaml_ng::Mapping::new();
            for (k, v) in map {
                let k = render_value(env, k, context, path)?;
                out.insert(k, render_value(env, v, context, path)?);
            }
            V::Mapping(out)
        }
        other => other,
    })
}

fn render_text(
    env: &minijinja::Environment<'_>,
    text: &str,
    context: &serde_json::Value,
    path: &str,
) -> Result<String, TemplateError> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.to_string());
    }
    env.render_str(text, context)
        .map_err(|source| TemplateError::Render {
            path: path.to_string(),
            value: text.to_string(),
            source,
        })
}

fn service_spec(
    values: &Values,
    service: &str,
    name: String,
    parsed: Service,
    declared: &BTreeMap<String, serde_yaml_ng::Value>,
) -> Result<ContainerSpec, String> {
    if parsed.image.trim().is_empty() || parsed.image.chars().any(char::is_whitespace) {
        return Err(format!(
            "image {:?} is not an image reference",
            parsed.image
        ));
    }
    let mut env = Vec::new();
    for (key, value) in &parsed.environment {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("environment name {key:?} is not valid"));
        }
        env.push(format!("{key}={}", value.text()));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in &parsed.labels {
        if key.starts_with("orchestrator.") {
            return Err(format!(
                "label {key:?}: orchestrator.* labels are set by the orchestrator"
            ));
        }
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("label key {key:?} is not valid"));
        }
        // A label whose value renders empty is left out: that is how a template says "only when
        // configured" (no `tls.certresolver` when the orchestrator issues, no middlewares when none).
        let text = value.text();
        if !text.is_empty() {
            labels.insert(key.clone(), text);
        }
    }
    if labels.get("traefik.enable").map(String::as_str) == Some("true") {
        labels.insert("traefik.docker.network".into(), values.network.clone());
    }
    labels.extend(ownership(
        Kind::parse(values.kind).unwrap_or(Kind::Team),
        &values.slug,
    ));
    labels.insert(LABEL_SERVICE.into(), service.into());

    let healthcheck = match parsed.healthcheck {
        None => None,
        Some(h) => {
            if h.test.is_empty() {
                return Err("healthcheck.test is empty".into());
            }
            Some(HealthSpec {
                test: h.test,
                interval_ns: duration_ns(h.interval.as_deref().unwrap_or("30s"))?,
                timeout_ns: duration_ns(h.timeout.as_deref().unwrap_or("30s"))?,
                retries: h.retries.unwrap_or(3),
                start_period_ns: duration_ns(h.start_period.as_deref().unwrap_or("0s"))?,
            })
        }
    };
    let mut binds = Vec::new();
    for volume in &parsed.volumes {
        let mut parts = volume.splitn(3, ':');
        let (source, target, mode) = (parts.next(), parts.next(), parts.next());
        let (Some(source), Some(target)) = (source, target) else {
            return Err(format!("volume {volume:?} is not <volume>:<path>[:ro]"));
        };
        if !declared.contains_key(source) {
            return Err(format!(
                "volume {source:?} is not declared under the top-level volumes (host paths are not allowed)"
            ));
        }
        if !target.starts_with('/') {
            return Err(format!("volume target {target:?} is not an absolute path"));
        }
        let mut bind = format!("{}-{source}:{target}", values.prefix);
        match mode {
            None => {}
            Some("ro") | Some("rw") => bind.push_str(&format!(":{}", mode.unwrap_or("rw"))),
            Some(other) => return Err(format!("volume mode {other:?} is not ro or rw")),
        }
        binds.push(bind);
    }
    if !matches!(
        parsed.restart.as_str(),
        "no" | "always" | "unless-stopped" | "on-failure"
    ) {
        return Err(format!(
            "restart {:?} is not a restart policy",
            parsed.restart
        ));
    }
    let memory_bytes = parsed
        .mem_limit
        .as_ref()
        .map(|m| size_bytes(&m.text()))
        .transpose()?;
    let nano_cpus = match parsed.cpus {
        Some(c) if c > 0.0 && c <= 1024.0 => Some((c * 1e9).round() as i64),
        Some(c) => return Err(format!("cpus {c} is out of range")),
        None => None,
    };
    let replicas = parsed.replicas.unwrap_or(1);
    if !(1..=100).contains(&replicas) {
        return Err(format!("replicas {replicas} must be between 1 and 100"));
    }
    if let Some(file) = &parsed.drain_file
        && (!file.starts_with('/') || file.chars().any(|c| c.is_control()))
    {
        return Err(format!("drain_file {file:?} is not an absolute path"));
    }
    if let Some(p) = parsed.pids_limit
        && p <= 0
    {
        return Err(format!("pids_limit {p} must be positive"));
    }
    Ok(ContainerSpec {
        service: service.to_string(),
        name,
        image: parsed.image,
        command: parsed.command,
        env,
        labels,
        healthcheck,
        binds,
        restart: parsed.restart,
        memory_bytes,
        nano_cpus,
        pids_limit: parsed.pids_limit,
        init: parsed.init,
        replicas,
        drain_file: parsed.drain_file,
    })
}

/// Checks Traefik router/service names and that each router has an explicit priority, and that no
/// two containers define the same router (Traefik would drop both).
fn check_routers(containers: &[ContainerSpec]) -> Result<(), String> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for container in containers {
        let mut routers = Vec::new();
        for key in container.labels.keys() {
            let parts: Vec<&str> = key.split('.').collect();
            if parts.len() >= 4
                && parts[0] == "traefik"
                && matches!(parts[1], "http" | "tcp" | "udp")
                && matches!(parts[2], "routers" | "services" | "middlewares")
            {
                let name = parts[3];
                check_name(name).map_err(|m| {
                    format!(
                        "{}: label {key:?}: {} name {name:?} {m}",
                        container.name, parts[2]
                    )
                })?;
                if parts[2] == "routers" && !routers.contains(&name.to_string()) {
                    routers.push(name.to_string());
                }
            }
        }
        for router in routers {
            if !container
                .labels
                .contains_key(&format!("traefik.http.routers.{router}.priority"))
            {
                return Err(format!(
                    "{}: router {router:?} has no explicit priority label",
                    container.name
                ));
            }
            if let Some(other) = seen.insert(router.clone(), container.name.clone()) {
                return Err(format!(
                    "router {router:?} is defined by both {other} and {}",
                    container.name
                ));
            }
        }
    }
    Ok(())
}

/// `[a-z0-9-]`, not empty, no leading or trailing dash, at most 63 characters.
fn check_name(name: &str) -> Result<(), String> {
    validate::dns_label("name", name)
        .map(|_| ())
        .map_err(|_| "must be [a-z0-9-] (a DNS label)".to_string())
}

/// `500ms`, `2s`, `1m`, `1h` in nanoseconds.
fn duration_ns(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (number, unit): (&str, i64) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000_000)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000_000_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000_000_000)
    } else {
        return Err(format!("duration {text:?} needs a unit (ms, s, m, h)"));
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is not a number with a unit"))?;
    if !(0.0..=86_400.0 * 1e9).contains(&(value * unit as f64)) {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok((value * unit as f64) as i64)
}

/// `128m`, `1g`, `512k`, `1048576` in bytes.
fn size_bytes(text: &str) -> Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (number, unit) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1i64 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1i64 << 30),
        _ => (lower, 1),
    };
    let value: i64 = number
        .parse()
        .map_err(|_| format!("size {text:?} is not a number with k, m or g"))?;
    if value <= 0 {
        return Err(format!("size {text:?} must be positive"));
    }
    value
        .checked_mul(unit)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        let mut images = BTreeMap::new();
        images.insert("api".into(), "kanban/team-api:latest".into());
        images.insert("web".into(), "kanban/team-web:latest".into());
        Values {
            kind: "team",
            slug: "acme".into(),
            prefix: "team-acme".into(),
            domain: "kanban.domain".into(),
            host: "acme.kanban.domain".into(),
            entrypoint: "websecure".into(),
            certresolver: "letsencrypt".into(),
            middlewares: "secure-headers@file,rate-limit@file".into(),
            network: "team-acme-net".into(),
            images,
        }
    }

    fn team_template() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/team.yml")).unwrap()
    }

    #[test]
    fn team_template_gives_the_reference_labels() {
        let r = render_source(
            Path::new("team.yml"),
            &team_template(),
            Kind::Team,
            &values(),
            true,
        )
        .unwrap();
        let api = &r.containers[0];
        assert_eq!(api.name, "team-acme-api");
        let l = &api.labels;
        assert_eq!(l["traefik.enable"], "true");
        assert_eq!(
            l["traefik.http.routers.team-acme-api.rule"],
            "Host(`acme.kanban.domain`) && PathPrefix(`/api`)"
        );
        assert_eq!(
            l["traefik.http.routers.team-acme-api.entrypoints"],
            "websecure"
        );
        assert_eq!(
            l["traefik.http.routers.team-acme-api.tls.certresolver"],
            "letsencrypt"
        );
        assert_eq!(
            l["traefik.http.services.team-acme-api.loadbalancer.server.port"],
            "8000"
        );
        assert_eq!(l["traefik.docker.network"], "team-acme-net");
        assert_eq!(l[LABEL_MANAGED_BY], "orchestrator");
        assert_eq!(l["orchestrator.team"], "acme");
        let web = &r.containers[1];
        assert_eq!(
            web.labels["traefik.http.routers.team-acme-web.rule"],
            "Host(`acme.kanban.domain`)"
        );
        assert_eq!(
            web.labels["traefik.http.services.team-acme-web.loadbalancer.server.port"],
            "80"
        );
        let api_prio: i64 = l["traefik.http.routers.team-acme-api.priority"]
            .parse()
            .unwrap();
        let web_prio: i64 = web.labels["traefik.http.routers.team-acme-web.priority"]
            .parse()
            .unwrap();
        assert!(api_prio > web_prio);
        assert_eq!(r.hash.len(), 16);
        assert_eq!(l["traefik.http.routers.team-acme-api.tls"], "true");
        assert_eq!(
            l["traefik.http.routers.team-acme-api.middlewares"],
            "secure-headers@file,rate-limit@file"
        );
    }

    #[test]
    fn one_issuer_per_host_no_resolver_when_the_orchestrator_issues() {
        let mut v = values();
        v.certresolver = String::new();
        v.middlewares = String::new();
        let r = render_source(
            Path::new("team.yml"),
            &team_template(),
            Kind::Team,
            &v,
            true,
        )
        .unwrap();
        for c in &r.containers {
            assert!(
                !c.labels
                    .keys()
                    .any(|k| k.ends_with(".tls.certresolver") || k.ends_with(".middlewares")),
                "{:?}",
                c.labels
            );
            assert_eq!(
                c.labels[&format!("traefik.http.routers.{}.tls", c.name)],
                "true"
            );
        }
    }

    #[test]
    fn values_cannot_change_the_document_structure() {
        let mut v = values();
        v.slug = "x\nservices:\n  evil: {image: evil}".into();
        let src = "services:\n  api:\n    image: img\n    environment:\n      S: \"{{ slug }}\"\n";
        let r = render_source(Path::new("t"), src, Kind::Team, &v, true).unwrap();
        assert_eq!(r.containers.len(), 1);
        assert!(r.containers[0].env[0].starts_with("S=x\nservices"));
    }

    #[test]
    fn refuses_bad_router_names_missing_priorities_and_host_paths() {
        let bad_name = "services:\n  api:\n    image: i\n    labels:\n      traefik.http.routers.Bad_Name.rule: x\n      traefik.http.routers.Bad_Name.priority: 1\n";
        assert!(render_source(Path::new("t"), bad_name, Kind::Team, &values(), true).is_err());
        let no_prio =
            "services:\n  api:\n    image: i\n    labels:\n      traefik.http.routers.ok.rule: x\n";
        let err = render_source(Path::new("t"), no_prio, Kind::Team, &values(), true).unwrap_err();
        assert!(err.to_string().contains("priority"), "{err}");
        let host = "services:\n  api:\n    image: i\n    volumes: [\"/etc:/x\"]\n";
        assert!(render_source(Path::new("t"), host, Kind::Team, &values(), true).is_err());
        let unknown = "services:\n  api:\n    image: i\n    privileged: true\n";
        assert!(render_source(Path::new("t"), unknown, Kind::Team, &values(), true).is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size_bytes("128m").unwrap(), 128 << 20);
        assert_eq!(size_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(duration_ns("500ms").unwrap(), 500_000_000);
        assert_eq!(duration_ns("2s").unwrap(), 2_000_000_000);
        assert!(duration_ns("2").is_err());
    }
}
