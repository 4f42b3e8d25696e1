//! Traefik as a host process: the project's static configuration (`traefik/traefik.yml`, written for
//! the compose container) adapted to run on this machine, for the demo and the tests.
//!
//! Only what differs between a container and a host process changes: entry point addresses (free
//! loopback ports instead of :80/:443/:8080), the file provider's folder, and the ACME storage path.
//! Everything else (redirects, TLS, providers, resolver, ping, dashboard router) is the file as
//! shipped, so what the demo and the tests run is what the stack runs. `orchestrator traefik-config`
//! prints the result.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};
use thiserror::Error;

/// Label that marks a container as the ingress (besides its name, `INGRESS_CONTAINER`): the
/// orchestrator connects every container carrying it to every team network.
pub const LABEL_ROLE: &str = "orchestrator.role";
/// Value of [`LABEL_ROLE`] on the ingress.
pub const ROLE_INGRESS: &str = "ingress";

/// Why the static configuration could not be adapted.
#[derive(Debug, Error)]
pub enum TraefikConfigError {
    #[error("Traefik static configuration is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("Traefik static configuration: {0}")]
    Shape(String),
}

/// Where a host-process Traefik listens and keeps its files.
#[derive(Debug, Clone)]
pub struct HostLayout {
    /// Port of the `web` entry point (HTTP, redirects to HTTPS).
    pub web_port: u16,
    /// Port of the `websecure` entry point (HTTPS).
    pub websecure_port: u16,
    /// Port of the internal `traefik` entry point (ping, dashboard).
    pub traefik_port: u16,
    /// The file provider's folder (holds the orchestrator's certificates document and the
    /// platform's dynamic files, possibly in sub-folders).
    pub dynamic_dir: std::path::PathBuf,
    /// Where Traefik's own ACME resolver keeps `acme.json`.
    pub acme_storage: std::path::PathBuf,
    /// Replaces the resolver's `caServer` (e.g. Pebble's directory) when set.
    pub ca_server: Option<String>,
}

fn child<'a>(map: &'a mut Mapping, key: &str) -> Option<&'a mut Mapping> {
    map.get_mut(key).and_then(Value::as_mapping_mut)
}

/// The static configuration `source` with the addresses and paths of `layout`.
pub fn adapt_static_config(
    source: &str,
    layout: &HostLayout,
) -> Result<String, TraefikConfigError> {
    let mut doc: Value = serde_yaml_ng::from_str(source)?;
    let root = doc
        .as_mapping_mut()
        .ok_or_else(|| TraefikConfigError::Shape("not a mapping".into()))?;
    let entry_points = child(root, "entryPoints")
        .ok_or_else(|| TraefikConfigError::Shape("no entryPoints".into()))?;
    for (name, port) in [
        ("web", layout.web_port),
        ("websecure", layout.websecure_port),
        ("traefik", layout.traefik_port),
    ] {
        if let Some(ep) = child(entry_points, name) {
            ep.insert("address".into(), format!("127.0.0.1:{port}").into());
        }
    }
    let file = child(root, "providers")
        .and_then(|p| child(p, "file"))
        .ok_or_else(|| TraefikConfigError::Shape("no providers.file".into()))?;
    file.insert("directory".into(), path_value(&layout.dynamic_dir));
    if let Some(resolvers) = child(root, "certificatesResolvers") {
        for (_, resolver) in resolvers.iter_mut() {
            if let Some(acme) = resolver.as_mapping_mut().and_then(|r| child(r, "acme")) {
                acme.insert("storage".into(), path_value(&layout.acme_storage));
                if let Some(ca) = &layout.ca_server {
                    acme.insert("caServer".into(), ca.clone().into());
                }
            }
        }
    }
    let body = serde_yaml_ng::to_string(&doc)?;
    Ok(format!(
        "# Generated from traefik/traefik.yml for a host process (orchestrator traefik-config).\n{body}"
    ))
}

fn path_value(path: &Path) -> Value {
    path.display().to_string().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapts_ports_and_paths_and_keeps_the_rest() {
        let source =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/traefik/traefik.yml"))
                .unwrap();
        let layout = HostLayout {
            web_port: 18080,
            websecure_port: 18443,
            traefik_port: 18088,
            dynamic_dir: "/tmp/dyn".into(),
            acme_storage: "/tmp/acme.json".into(),
            ca_server: None,
        };
        let out = adapt_static_config(&source, &layout).unwrap();
        let v: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(v["entryPoints"]["websecure"]["address"], "127.0.0.1:18443");
        assert_eq!(v["entryPoints"]["web"]["address"], "127.0.0.1:18080");
        assert_eq!(v["providers"]["file"]["directory"], "/tmp/dyn");
        assert_eq!(
            v["entryPoints"]["web"]["http"]["redirections"]["entryPoint"]["to"],
            "websecure"
        );
        assert_eq!(
            v["certificatesResolvers"]["letsencrypt"]["acme"]["storage"],
            "/tmp/acme.json"
        );
    }
}
