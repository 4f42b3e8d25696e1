//! Starting workers for tests: in this process (through the same `app::start_worker` the binary
//! uses) or as a separate `orchestrator worker` process that a test can SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use clap::Parser;
use orchestrator::app::{self, RunningWorker};
use orchestrator::config::Config;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

/// A config for tests: the given Redis, no metrics endpoint, plus `extra` flags.
pub fn config(redis_url: &str, queues_dir: &Path, extra: &[&str]) -> Config {
    let queues = queues_dir.to_string_lossy().into_owned();
    let zones = scratch_zones_dir();
    let mut argv = vec![
        "orchestrator",
        "--redis-url",
        redis_url,
        "--queues-dir",
        &queues,
        "--metrics-addr",
        "",
        "--zones-dir",
        &zones,
        "--http01-listen",
        "",
        // Nothing for Traefik: a worker publishes its dynamic files into CERTS_DIR at start.
        "--traefik-dynamic-dir",
        "",
    ];
    argv.extend_from_slice(extra);
    Args::parse_from(argv).config
}

/// A zone-file folder outside the repository (every worker writes the zone file).
pub fn scratch_zones_dir() -> String {
    let dir = std::env::temp_dir().join(format!("orchestrator-test-zones-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch zones dir");
    dir.to_string_lossy().into_owned()
}

/// Starts a worker in this process.
pub async fn start(config: Config) -> RunningWorker {
    app::start_worker(Arc::new(config))
        .await
        .expect("start worker")
}

/// Starts a worker in this process running the embedded DNS server on `dns`, and waits until that
/// server answers for the zone (it starts in the background).
pub async fn start_answering(config: Arc<Config>, dns: std::net::SocketAddr) -> RunningWorker {
    let worker = app::start_worker(config).await.expect("start the worker");
    super::eventually(
        "the embedded DNS server to answer",
        std::time::Duration::from_secs(15),
        || async move {
            let answer = super::dns::dig(dns, "ns.localhost", "A", &[]);
            (answer.status == "NOERROR" && !answer.values("A").is_empty()).then_some(())
        },
    )
    .await;
    worker
}

/// Queue declarations for mechanics tests: the real lists, `system.ping` everywhere, short backoff,
/// and `test.no_handler` (declared, with a schema, but no handler) on the dns family.
pub fn quick_queues() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("schemas")).expect("schemas dir");
    let family = |name: &str, types: &str| {
        format!(
            "  {name}:\n    lists: [queue:{name}:high, queue:{name}:normal]\n    types: [{types}]\n    max_attempts: 3\n    timeout_s: 30\n    backoff: {{ base_ms: 100, max_ms: 400 }}\n"
        )
    };
    let yml = format!(
        "families:\n{}{}{}everywhere: [system.ping]\n",
        family("provisioning", ""),
        family("certificates", ""),
        family("dns", "test.no_handler")
    );
    std::fs::write(dir.path().join("queues.yml"), yml).expect("write queues.yml");
    std::fs::copy(
        repo_path("queues/schemas/system.ping.json"),
        dir.path().join("schemas/system.ping.json"),
    )
    .expect("copy ping schema");
    std::fs::write(
        dir.path().join("schemas/test.no_handler.json"),
        r#"{"type":"object"}"#,
    )
    .expect("write schema");
    dir
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// An `orchestrator worker` child process, SIGKILLed on drop.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts the binary with `REDIS_URL`, `QUEUES_DIR`, and `env`.
    pub fn spawn(redis_url: &str, queues_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command
            .arg("worker")
            .env("REDIS_URL", redis_url)
            .env("QUEUES_DIR", queues_dir)
            .env("METRICS_ADDR", "")
            .env("ZONES_DIR", scratch_zones_dir())
            .env("HTTP01_LISTEN", "")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        Self {
            child: command.spawn().expect("spawn orchestrator worker"),
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl WorkerProcess {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`, `TERM`) to this process only.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `timeout` for the process to exit; true when it did.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
