//! When a tenant is ready, measured directly rather than through Docker's healthcheck interval, and
//! whether it answers through the ingress.
//!
//! [`wait_ready`]: a container counts as ready as soon as the URL its healthcheck fetches
//! (`http://127.0.0.1:<port><path>` inside the container) answers 2xx at the container's address on
//! the tenant network, asked from the worker every 25 ms (no exec, no 1 s interval). Docker's health
//! status is followed at the same time ([`Engine::wait_healthy`]): it reports a container that exits
//! or turns unhealthy, and it decides alone where the worker cannot reach the tenant network (a
//! worker in a container on another network) or a healthcheck fetches no URL.
//!
//! [`probe_ingress`]: "active means reachable". Each router of the tenant is asked through the
//! ingress address (`INGRESS_PROBE_URL`) with the tenant's Host and SNI until it answers with
//! something other than Traefik's own "404 page not found" (no router for the host yet) or a
//! 502/503/504 (the ingress cannot reach the tenant). The chain is not verified (the probe asks
//! whether the route exists; the CA may be one the worker does not trust), but when the orchestrator
//! issued the tenant's certificate the probe waits until the ingress serves that one (same serial):
//! the file provider reloads on its own schedule, and "active" must not mean "served with Traefik's
//! default certificate".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{DockerError, Engine};
use crate::templates::Rendered;

/// Time allowed for one connection or one answer of a probe.
const PROBE_IO: Duration = Duration::from_millis(500);
/// Pause between two rounds of direct probes.
const PROBE_EVERY: Duration = Duration::from_millis(25);

/// `(port, path)` of the `http://127.0.0.1:<port><path>` (or `localhost`) URL a healthcheck fetches.
fn health_url(test: &[String]) -> Option<(u16, String)> {
    test.iter().find_map(|arg| {
        let rest = arg
            .strip_prefix("http://127.0.0.1:")
            .or_else(|| arg.strip_prefix("http://localhost:"))?;
        let (port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Some((port.parse().ok()?, path.to_string()))
    })
}

/// The status code of an HTTP/1.x answer's first line, and the body's first bytes.
fn status_of(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Sends `request` over `stream` and reads the answer until it closes (or the first 4 KiB).
async fn exchange<S>(mut stream: S, request: &str) -> Option<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while answer.len() < 4096 {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) if !answer.is_empty() => break,
            Err(_) => return None,
        }
    }
    Some(answer)
}

/// One plain HTTP GET; the status code, if anything answered.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = tokio::time::timeout(PROBE_IO, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let answer = tokio::time::timeout(PROBE_IO, exchange(stream, &request))
        .await
        .ok()??;
    status_of(&answer).map(|(code, _)| code)
}

/// The address of container `id` on `network`, once it has one.
async fn address_on(engine: &Engine, id: &str, network: &str) -> Option<std::net::IpAddr> {
    let inspect = engine.client().inspect_container(id, None).await.ok()?;
    let ip = inspect
        .network_settings?
        .networks?
        .get(network)?
        .ip_address
        .clone()?;
    ip.parse().ok()
}

/// Waits until the URL container `id`'s healthcheck fetches answers 2xx from the worker; never
/// returns when it has none (the health status decides then).
async fn direct(engine: &Engine, id: &str, network: &str, port: u16, path: &str) {
    let ip = loop {
        if let Some(ip) = address_on(engine, id, network).await {
            break ip;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    };
    let addr = SocketAddr::new(ip, port);
    loop {
        if let Some(code) = http_status(addr, path).await
            && (200..300).contains(&code)
        {
            return;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Waits until every container of `ids` (id, name) is ready (see the module comment), at most
/// `timeout`; fails as [`Engine::wait_healthy`] does (exited, restarting, unhealthy, timeout).
pub async fn wait_ready(
    engine: &Engine,
    rendered: &Rendered,
    ids: &[(String, String)],
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> Result<(), DockerError> {
    let mut probes = Vec::new();
    for (id, name) in ids {
        let target = rendered
            .containers
            .iter()
            .find(|c| &c.name == name)
            .and_then(|c| c.healthcheck.as_ref())
            .and_then(|h| health_url(&h.test));
        match target {
            Some((port, path)) => {
                probes.push(async move { direct(engine, id, &rendered.network, port, &path).await })
            }
            // No URL to ask: only the health status can tell.
            None => return engine.wait_healthy(ids, timeout, cancel).await,
        }
    }
    let all_answer = futures::future::join_all(probes);
    tokio::select! {
        // Docker's view: fails fast on exits, and settles it when the worker cannot reach them.
        result = engine.wait_healthy(ids, timeout, cancel) => result,
        _ = all_answer => Ok(()),
    }
}

/// A TLS verifier that accepts any certificate (the ingress probe checks the route, not the chain)
/// and remembers the serial of the last leaf it saw.
#[derive(Debug)]
struct AnyCertificate(
    Arc<rustls::crypto::CryptoProvider>,
    std::sync::Mutex<Option<String>>,
);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let serial = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .ok()
            .map(|(_, cert)| hex::encode(cert.raw_serial()));
        if let Ok(mut seen) = self.1.lock() {
            *seen = serial;
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What one request through the ingress gave.
#[derive(Debug)]
enum Answer {
    /// The route exists and the tenant answered (any status of its own).
    Reached,
    /// Something to wait for, in plain words.
    NotYet(String),
}

/// One GET of `path` at `addr` with Host (and, over TLS, SNI) `host`; with `healthy`, only a 2xx
/// counts (the path is the health URL of the router's container).
async fn through_ingress(
    addr: SocketAddr,
    tls: Option<(&tokio_rustls::TlsConnector, &AnyCertificate)>,
    host: &str,
    (path, healthy): (&str, bool),
    serial: Option<&str>,
) -> Answer {
    let stream = match tokio::time::timeout(PROBE_IO, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Answer::NotYet(format!("cannot connect to {addr}: {e}")),
        Err(_) => return Answer::NotYet(format!("connecting to {addr} timed out")),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = match tls {
        Some((connector, verifier)) => {
            let Ok(name) = rustls::pki_types::ServerName::try_from(host.to_string()) else {
                return Answer::NotYet(format!("{host} is not a server name"));
            };
            let handshake = tokio::time::timeout(PROBE_IO, connector.connect(name, stream)).await;
            let served = verifier.1.lock().ok().and_then(|s| s.clone());
            if let (Some(wanted), Ok(Ok(_))) = (serial, &handshake)
                && served.as_deref() != Some(wanted)
            {
                return Answer::NotYet(format!(
                    "the ingress serves certificate serial {} for it, not the team's ({wanted}) yet",
                    served.as_deref().unwrap_or("?")
                ));
            }
            match handshake {
                Ok(Ok(s)) => tokio::time::timeout(PROBE_IO, exchange(s, &request)).await,
                Ok(Err(e)) => return Answer::NotYet(format!("TLS handshake failed: {e}")),
                Err(_) => return Answer::NotYet("TLS handshake timed out".into()),
            }
        }
        None => tokio::time::timeout(PROBE_IO, exchange(stream, &request)).await,
    };
    let Some((code, body)) = answer.ok().flatten().as_deref().and_then(status_of) else {
        return Answer::NotYet("no HTTP answer".into());
    };
    match code {
        404 if body.starts_with("404 page not found") => {
            Answer::NotYet("404 from the ingress: no router for this host yet".into())
        }
        502..=504 => Answer::NotYet(format!(
            "{code} from the ingress: it cannot reach the tenant's containers (is it attached to the tenant network?)"
        )),
        // Another router of the tenant (a shorter rule) answers while this one is not loaded yet.
        _ if healthy && !(200..300).contains(&code) => Answer::NotYet(format!(
            "{code} at the health URL of the router's container: its router is not loaded yet"
        )),
        _ => Answer::Reached,
    }
}

/// The path to ask for each router of `rendered`: the health URL path of its container when the
/// router routes it (then only a 2xx counts: a router not loaded yet would leave the request to
/// another router of the tenant, whose 404 would look like an answer), else its `PathPrefix` or `/`.
fn router_paths(rendered: &Rendered) -> Vec<(String, bool)> {
    let mut paths: Vec<(String, bool)> = rendered
        .containers
        .iter()
        .flat_map(|c| {
            let health = c
                .healthcheck
                .as_ref()
                .and_then(|h| health_url(&h.test))
                .map(|(_, path)| path);
            c.labels
                .iter()
                .filter(|(k, _)| k.starts_with("traefik.http.routers.") && k.ends_with(".rule"))
                .map(move |(_, rule)| {
                    let prefix = rule
                        .split_once("PathPrefix(`")
                        .and_then(|(_, rest)| rest.split_once('`'))
                        .map(|(p, _)| p.to_string())
                        .unwrap_or_else(|| "/".into());
                    match &health {
                        Some(h) if h.starts_with(&prefix) => (h.clone(), true),
                        _ => (prefix, false),
                    }
                })
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Waits until every router of `rendered` answers at `url` (the ingress) for `host`, over TLS with
/// the certificate of `serial` when given; fails after `timeout` with the last reason. See the
/// module comment.
pub async fn probe_ingress(
    url: &str,
    rendered: &Rendered,
    host: &str,
    serial: Option<&str>,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> Result<Duration, DockerError> {
    let started = tokio::time::Instant::now();
    let (tls, authority) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => {
            return Err(DockerError::Conflict(format!(
                "INGRESS_PROBE_URL {url} is not an http:// or https:// address"
            )));
        }
    };
    let authority = authority.trim_end_matches('/');
    let default_port = if tls { 443 } else { 80 };
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            DockerError::Conflict(format!(
                "INGRESS_PROBE_URL {url}: cannot resolve {with_port}"
            ))
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone(), Default::default()));
    let connector = if tls {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DockerError::Conflict(format!("TLS client: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
    } else {
        None
    };
    let mut pending = router_paths(rendered);
    loop {
        let mut still = Vec::new();
        let mut last = String::new();
        for path in pending {
            let tls = connector.as_ref().map(|c| (c, verifier.as_ref()));
            match through_ingress(addr, tls, host, (&path.0, path.1), serial).await {
                Answer::Reached => {}
                Answer::NotYet(why) => {
                    last = format!("https://{host}{}: {why}", path.0);
                    still.push(path);
                }
            }
        }
        if still.is_empty() {
            return Ok(started.elapsed());
        }
        pending = still;
        if started.elapsed() >= timeout {
            return Err(DockerError::Unhealthy(format!(
                "{host} does not answer through the ingress at {url} after {}s: {last}",
                timeout.as_secs()
            )));
        }
        if cancel.is_some_and(CancellationToken::is_cancelled) {
            return Err(DockerError::Cancelled(format!(
                "waiting for {host} to answer through the ingress"
            )));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// After a restart or resume: when `INGRESS_PROBE_URL` is set, waits until tenant `slug` answers
/// through the ingress again (its certificate is whatever the ingress serves).
pub async fn probe_tenant(
    config: &crate::config::Config,
    kind: crate::templates::Kind,
    slug: &str,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> Result<(), DockerError> {
    let Some(url) = config.platform.ingress_probe_url.as_deref() else {
        return Ok(());
    };
    let rendered = crate::templates::render(config, kind, slug)
        .map_err(|e| DockerError::Conflict(format!("template: {e}")))?;
    let host = format!("{slug}.{}", config.platform.domain.trim_end_matches('.'));
    probe_ingress(url, &rendered, &host, None, timeout, cancel)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_healthcheck_url() {
        let test: Vec<String> = ["CMD", "wget", "-q", "http://127.0.0.1:8000/api/health"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(health_url(&test), Some((8000, "/api/health".into())));
        assert_eq!(
            health_url(&["http://localhost:80".to_string()]),
            Some((80, "/".into()))
        );
        assert_eq!(health_url(&["true".to_string()]), None);
    }

    #[test]
    fn probes_each_router_at_its_containers_health_url() {
        let source =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/team.yml"))
                .unwrap();
        let mut images = std::collections::BTreeMap::new();
        images.insert("api".to_string(), "a".to_string());
        images.insert("web".to_string(), "w".to_string());
        let values = crate::templates::Values {
            kind: "team",
            slug: "acme".into(),
            prefix: "team-acme".into(),
            domain: "localhost".into(),
            host: "acme.localhost".into(),
            entrypoint: "websecure".into(),
            certresolver: String::new(),
            middlewares: String::new(),
            network: "team-acme-net".into(),
            images,
        };
        let rendered = crate::templates::render_source(
            std::path::Path::new("team.yml"),
            &source,
            crate::templates::Kind::Team,
            &values,
            true,
        )
        .unwrap();
        assert_eq!(
            router_paths(&rendered),
            vec![("/".to_string(), true), ("/api/health".to_string(), true)]
        );
    }

    #[test]
    fn reads_a_status_line() {
        let (code, body) =
            status_of(b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n404 page not found\n").unwrap();
        assert_eq!(code, 404);
        assert!(body.starts_with("404 page not found"));
    }
}
