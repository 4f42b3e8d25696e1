//! A real Pebble (Debian's `pebble`, the ACME test CA) on free ports, killed on drop.
//!
//! Debian's package ships no test certificate, so each harness generates a CA and a listener
//! certificate for `localhost` / `127.0.0.1` (rcgen), writes a config, and starts
//! `pebble -config <file> -strict=false [-dnsserver <addr>]` with `PEBBLE_VA_NOSLEEP=1` (no random
//! validation delay) and `PEBBLE_WFE_NONCEREJECT=0` (no deliberate bad nonces). The CA that signs the
//! issued certificates is regenerated at every start: [`Pebble::root_pem`] fetches it from the
//! management port (`/roots/0`).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A running Pebble owned by a test.
pub struct Pebble {
    /// ACME port (HTTPS).
    pub port: u16,
    /// Management port (HTTPS): roots, certificate status.
    pub management_port: u16,
    /// Port Pebble's validator connects to for HTTP-01.
    pub http_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where every DNS lookup goes (`-dnsserver`), kept for [`Pebble::restart`].
    dns_server: Option<SocketAddr>,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and resolving every name through
    /// `dns_server` (the platform's DNS server) when given.
    pub fn start(http_port: u16, dns_server: Option<SocketAddr>) -> Self {
        Self::start_with_tls_port(http_port, super::free_port(), dns_server)
    }

    /// [`Pebble::start`] validating TLS-ALPN-01 on `tls_port` (e.g. a Traefik's HTTPS port).
    pub fn start_with_tls_port(
        http_port: u16,
        tls_port: u16,
        dns_server: Option<SocketAddr>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for pebble");
        let (ca_pem, cert_pem, key_pem) = listener_certificates();
        std::fs::write(dir.path().join("listener-ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
        let port = super::free_port();
        let management_port = super::free_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut pebble = Self {
            port,
            management_port,
            http_port,
            dir,
            child: None,
            dns_server,
        };
        pebble.spawn();
        pebble
    }

    /// Stops Pebble and starts it again on the same ports and listener certificate: a CA that
    /// lost its state (Pebble keeps accounts and orders in memory only; its roots change too).
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pebble.log"))
            .unwrap();
        let mut command = Command::new("pebble");
        command
            .arg("-config")
            .arg(self.dir.path().join("pebble-config.json"))
            .arg("-strict=false")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(dns) = self.dns_server {
            command.arg("-dnsserver").arg(dns.to_string());
        }
        self.child = Some(
            command
                .spawn()
                .expect("start pebble (is it installed? .ci/run installs the `pebble` package)"),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        for p in [self.port, self.management_port] {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "pebble did not listen on {p}; log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA that signed Pebble's listener certificate (what `ACME_CA_ROOT` must name).
    pub fn listener_ca(&self) -> PathBuf {
        self.dir.path().join("listener-ca.pem")
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// GET on the management port, through curl trusting the listener CA.
    pub fn management_get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(self.listener_ca())
            .arg(format!("https://127.0.0.1:{}{path}", self.management_port))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "GET {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The root that signs issued chains (regenerated at every start), PEM.
    pub fn root_pem(&self) -> String {
        self.management_get("/roots/0")
    }

    /// Writes the issuing root to a file in the harness folder and returns its path.
    pub fn root_file(&self) -> PathBuf {
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, self.root_pem()).unwrap();
        path
    }

    /// Pebble's view of a certificate by serial (hex): JSON with `Status` (`Valid`/`Revoked`).
    pub fn cert_status(&self, serial_hex: &str) -> serde_json::Value {
        let body = self.management_get(&format!("/cert-status-by-serial/{serial_hex}"));
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA and a leaf for `localhost` / `127.0.0.1` signed by it: (ca_pem, leaf_pem, leaf_key_pem).
fn listener_certificates() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "orchestrator test listener CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}
