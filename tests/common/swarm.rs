//! Swarm harness: a single-node swarm on the shared dockerd, made by the first test that needs it
//! and left by the last one (reference count; a swarm that was already active is never left), a
//! Traefik container with the swarm provider attached to tenant overlay networks by the worker,
//! and a drop guard for the services, networks and volumes of a test's slugs.
//!
//! A run killed before its guards drop (e.g. a clap exit inside the process) leaves the swarm and
//! the Traefik container behind; the next run uses that swarm without leaving it. `docker rm -f
//! sw-ingress-<pid>` and `docker swarm leave --force` clean up by hand.
//!
//! The swarm's address pool (10.202.0.0/16 in /24 networks) does not overlap the bridge pool
//! scripts/setup.sh gives dockerd (10.201.0.0/16): other tests' bridge networks are unaffected, and
//! leaving the swarm removes only its own `ingress` network.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::docker::{docker, root};
use super::free_port;
use super::journey::{Stack, flags};
use super::traefik::Traefik;

/// (tests holding the swarm, whether this process made it).
static HOLDERS: Mutex<(usize, bool)> = Mutex::new((0, false));

fn swarm_state() -> String {
    docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).0
}

/// A hold on the local single-node swarm; the last hold leaves it if this process made it.
pub struct SwarmHold;

impl SwarmHold {
    pub fn take() -> SwarmHold {
        let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        if swarm_state() != "active" {
            let (out, ok) = docker(&[
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--default-addr-pool",
                "10.202.0.0/16",
                "--default-addr-pool-mask-length",
                "24",
            ]);
            assert!(ok, "docker swarm init failed: {out}");
            holders.1 = true;
        }
        holders.0 += 1;
        SwarmHold
    }
}

impl Drop for SwarmHold {
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        holders.0 -= 1;
        if holders.0 == 0 && holders.1 {
            let _ = docker(&["swarm", "leave", "--force"]);
            // The bridge `swarm init` made for the tasks' outside traffic (unused once left).
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
            holders.1 = false;
        }
    }
}

/// Names of the Swarm services labelled for `slug`.
pub fn services_of(slug: &str) -> Vec<String> {
    let (out, _) = docker(&[
        "service",
        "ls",
        "--filter",
        &format!("label=orchestrator.slug={slug}"),
        "--format",
        "{{.Name}}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// `docker service inspect` of one service as JSON.
pub fn inspect_service(name: &str) -> serde_json::Value {
    let (out, ok) = docker(&["service", "inspect", name]);
    assert!(ok, "docker service inspect {name} failed: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    v[0].clone()
}

/// Removes the services of its slugs, then (through [`super::docker::Cleanup`]) their containers,
/// networks and volumes, on drop.
pub struct SwarmCleanup {
    slugs: Vec<String>,
    _rest: super::docker::Cleanup,
}

impl SwarmCleanup {
    pub fn new(slugs: &[&str]) -> Self {
        Self {
            slugs: slugs.iter().map(|s| s.to_string()).collect(),
            _rest: super::docker::Cleanup::new(slugs),
        }
    }
}

impl Drop for SwarmCleanup {
    fn drop(&mut self) {
        for slug in &self.slugs {
            for s in services_of(slug) {
                let _ = docker(&["service", "rm", &s]);
            }
        }
        // The tasks' containers go a moment later; their networks only after them.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && self.slugs.iter().any(|s| {
                !docker(&["ps", "-aq", "--filter", &format!("name=team-{s}-")])
                    .0
                    .is_empty()
            })
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Traefik v3 as a container of `orchestrator/traefik:local` with the swarm provider (only the
/// services whose `orchestrator.slug` starts with a prefix), HTTPS and its API on loopback ports, the
/// file provider on the worker's certificates folder (mounted at the same path, so the paths the
/// worker writes are the paths Traefik opens). The worker attaches it to each tenant's overlay
/// network (`INGRESS_CONTAINER`).
pub struct SwarmTraefik {
    pub name: String,
    pub https_port: u16,
    pub api_port: u16,
    _dir: tempfile::TempDir,
}

impl SwarmTraefik {
    pub fn start(name: &str, certs: &Path, slug_prefix: &str) -> Self {
        ensure_traefik_image();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"global: {{checkNewVersion: false, sendAnonymousUsage: false}}
log: {{level: INFO}}
entryPoints:
  websecure: {{address: ":8443", http: {{tls: {{}}}}}}
  traefik: {{address: ":8088"}}
api: {{insecure: true}}
ping: {{entryPoint: traefik}}
providers:
  providersThrottleDuration: 100ms
  swarm:
    endpoint: "unix:///var/run/docker.sock"
    exposedByDefault: false
    refreshSeconds: 1
    constraints: "LabelRegex(`orchestrator.slug`, `^{slug_prefix}`)"
  file:
    directory: "{certs}"
    watch: true
"#,
            certs = certs.display()
        );
        std::fs::write(dir.path().join("traefik.yml"), config).unwrap();
        let https_port = free_port();
        let api_port = free_port();
        let _ = docker(&["rm", "-f", name]);
        let args = [
            "run".to_string(),
            "-d".into(),
            "--name".into(),
            name.into(),
            "-v".into(),
            "/var/run/docker.sock:/var/run/docker.sock:ro".into(),
            "-v".into(),
            format!("{}:/etc/traefik:ro", dir.path().display()),
            "-v".into(),
            format!("{0}:{0}:ro", certs.display()),
            "-p".into(),
            format!("127.0.0.1:{https_port}:8443"),
            "-p".into(),
            format!("127.0.0.1:{api_port}:8088"),
            "orchestrator/traefik:local".into(),
            "--configFile=/etc/traefik/traefik.yml".into(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, ok) = docker(&refs);
        assert!(ok, "docker run traefik: {out}");
        let traefik = Self {
            name: name.to_string(),
            https_port,
            api_port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while traefik.api_get("/ping").is_none() {
            assert!(
                Instant::now() < deadline,
                "the traefik container did not answer /ping: {}",
                traefik.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        traefik
    }

    /// GET on the API entry point; the body when it answered 200.
    pub fn api_get(&self, path: &str) -> Option<String> {
        super::docker::http_get(&format!("127.0.0.1:{}", self.api_port), path)
    }

    /// The router `name@swarm`, if Traefik has it.
    pub fn router(&self, name: &str) -> Option<serde_json::Value> {
        let routers: Vec<serde_json::Value> = self
            .api_get("/api/http/routers")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default();
        let full = format!("{name}@swarm");
        routers.into_iter().find(|r| r["name"] == full)
    }

    /// The HTTPS address to give a worker as `INGRESS_PROBE_URL`.
    pub fn probe_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    pub fn log(&self) -> String {
        let out = std::process::Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for SwarmTraefik {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// Imports `orchestrator/traefik:local` unless present (scripts/setup.sh does it too).
pub fn ensure_traefik_image() {
    if docker(&["image", "inspect", "orchestrator/traefik:local"]).1 {
        return;
    }
    let status = std::process::Command::new(root().join("scripts/build-traefik-image.sh"))
        .status()
        .expect("run scripts/build-traefik-image.sh");
    assert!(status.success(), "scripts/build-traefik-image.sh failed");
}

/// A copy of the repository's templates in a folder of its own, which a test rewrites to change
/// the template between provisions (the worker reads it at every provision).
pub struct Templates {
    pub dir: tempfile::TempDir,
}

impl Templates {
    pub fn copy() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for file in ["team.yml", "sandbox.yml"] {
            std::fs::copy(root().join("templates").join(file), dir.path().join(file)).unwrap();
        }
        Self { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Rewrites `team.yml` with `edit` applied to the repository's version.
    pub fn team(&self, edit: impl Fn(String) -> String) {
        let source = std::fs::read_to_string(root().join("templates/team.yml")).unwrap();
        let edited = edit(source.clone());
        assert_ne!(edited, source, "the edit changed nothing");
        std::fs::write(self.dir.path().join("team.yml"), edited).unwrap();
    }
}

/// The team template with two tasks for the web service (the only one limited to 32m).
pub fn two_web_tasks(source: String) -> String {
    source.replace(
        "    mem_limit: 32m\n",
        "    mem_limit: 32m\n    replicas: 2\n",
    )
}

/// A team slug on a worker with `BACKEND=swarm` (and Pebble) on a copy of the templates whose web
/// service has two tasks ([`two_web_tasks`]), writing its certificates where a [`SwarmTraefik`]
/// reads them and probing through it; the slug's services, containers, networks and volumes are
/// removed on drop. The swarm itself is the caller's ([`SwarmHold`] or [`TwoNodes`], held for
/// longer than this).
pub struct SwarmTeam {
    pub slug: String,
    // Fields drop in this order: the worker stops before Traefik goes, the slug's leftovers last.
    pub stack: Stack,
    pub templates: Templates,
    pub traefik: SwarmTraefik,
    certs: tempfile::TempDir,
    _cleanup: SwarmCleanup,
}

impl SwarmTeam {
    /// Starts Traefik and the worker for a new slug `<tag>-…`; Traefik routes only this process's
    /// slugs of that tag.
    pub async fn start(tag: &str) -> Self {
        let pid = std::process::id();
        let prefix = format!("{tag}-{}-", pid % 100_000);
        let slug = super::docker::unique_slug(tag);
        let cleanup = SwarmCleanup::new(&[&slug]);
        let (certs, certs_path) = Traefik::prepare();
        let traefik = SwarmTraefik::start(&format!("{tag}-ingress-{pid}"), &certs_path, &prefix);
        let templates = Templates::copy();
        templates.team(two_web_tasks);
        let stack = Stack::start_with(
            true,
            &flags(&[
                ("--backend", "swarm".into()),
                ("--templates-dir", templates.path().display().to_string()),
                ("--certs-dir", certs_path.display().to_string()),
                (
                    "--traefik-dynamic-dir",
                    root().join("traefik/dynamic").display().to_string(),
                ),
                ("--ingress-container", traefik.name.clone()),
                ("--ingress-probe-url", traefik.probe_url()),
            ]),
        )
        .await;
        Self {
            slug,
            stack,
            templates,
            traefik,
            certs,
            _cleanup: cleanup,
        }
    }

    /// `<slug>.localhost`.
    pub fn host(&self) -> String {
        format!("{}.localhost", self.slug)
    }

    /// The root of this run's Pebble, which signed the team's certificate.
    pub fn pebble_root(&self) -> PathBuf {
        self.stack
            .pebble
            .as_ref()
            .expect("the swarm team's stack runs Pebble")
            .root_file()
    }

    /// Stops the worker gracefully, then removes Traefik, the certificates and the slug's leftovers.
    pub async fn stop(self) {
        let Self {
            stack,
            templates,
            traefik,
            certs,
            _cleanup,
            ..
        } = self;
        stack.stop().await;
        drop(certs);
        drop(templates);
        drop(traefik);
        drop(_cleanup);
    }
}

/// Requests sent in a loop (one at a time, through curl) until stopped: what each answered.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<super::traefik::Curl>>>,
}

impl Load {
    /// GETs `https://<host>:<port><path>` (each path in turn) trusting `cacert` (or nothing).
    pub fn start(port: u16, host: &str, paths: &[&str], cacert: Option<PathBuf>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let host = host.to_string();
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let handle = std::thread::spawn(move || {
            let mut answers = Vec::new();
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let path = &paths[n % paths.len()];
                answers.push(super::traefik::curl_https(
                    port,
                    &host,
                    path,
                    cacert.as_deref(),
                ));
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the loop; every answer, in order.
    pub fn stop(mut self) -> Vec<super::traefik::Curl> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A second Docker engine on this machine, in a network namespace of its own joined to the host by
/// a veth pair (10.203.<n>.1 on the host, .2 in the namespace), with its own data root, exec root
/// (and so its own managed containerd), pid file and socket; and a two-node swarm: this process
/// inits the swarm on the shared dockerd, advertised on the veth address (127.0.0.1 would be the
/// second node's own loopback), and the second engine joins it as a worker with the team images
/// loaded. Everything is undone on drop: the worker leaves and is removed, its dockerd (this
/// process's child) stopped, the namespace deleted, the swarm left.
pub struct TwoNodes {
    netns: String,
    veth: String,
    dir: tempfile::TempDir,
    dockerd: Option<std::process::Child>,
    /// The worker node's id in the swarm.
    pub worker_id: String,
}

fn run_ok(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TwoNodes {
    /// `None` (the test says why and passes) when a swarm is already active: the two-node swarm
    /// must be made with an address the second node can reach.
    pub fn start() -> Option<TwoNodes> {
        if swarm_state() != "inactive" {
            eprintln!("a swarm is already active on this engine: the two-node test needs its own");
            return None;
        }
        let id = std::process::id() % 100_000;
        let n = std::process::id() % 200 + 20;
        let netns = format!("swn-{id}");
        let veth = format!("swh{id}");
        let peer = format!("swp{id}");
        let (host, node) = (format!("10.203.{n}.1"), format!("10.203.{n}.2"));
        run_ok("ip", &["netns", "add", &netns]);
        let mut nodes = TwoNodes {
            netns: netns.clone(),
            veth: veth.clone(),
            dir: tempfile::tempdir().unwrap(),
            dockerd: None,
            worker_id: String::new(),
        };
        run_ok(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        );
        run_ok("ip", &["link", "set", &peer, "netns", &netns]);
        run_ok("ip", &["addr", "add", &format!("{host}/24"), "dev", &veth]);
        run_ok("ip", &["link", "set", &veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns];
            all.extend_from_slice(args);
            run_ok("ip", &all);
        };
        inside(&["ip", "addr", "add", &format!("{node}/24"), "dev", &peer]);
        inside(&["ip", "link", "set", &peer, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        // nsenter enters the network namespace only (`ip netns exec` would remount /sys, and
        // dockerd then finds no cgroups).
        let dir = nodes.dir.path().to_path_buf();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .arg("dockerd")
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("docker.pid").display()))
            .arg(format!(
                "--host=unix://{}",
                dir.join("docker.sock").display()
            ))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a second dockerd");
        nodes.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes.docker(&["info"]).1 {
            assert!(
                Instant::now() < deadline,
                "the second dockerd did not start: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (out, ok) = docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            &host,
            "--default-addr-pool",
            "10.202.0.0/16",
            "--default-addr-pool-mask-length",
            "24",
        ]);
        assert!(ok, "docker swarm init: {out}");
        let token = docker(&["swarm", "join-token", "-q", "worker"]).0;
        let (out, ok) = nodes.docker(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &node,
            &format!("{host}:2377"),
        ]);
        assert!(ok, "joining the second node: {out}");
        nodes.worker_id = nodes.docker(&["info", "--format", "{{.Swarm.NodeID}}"]).0;
        for image in ["kanban/team-api:latest", "kanban/team-web:latest"] {
            nodes.load(image);
        }
        Some(nodes)
    }

    /// `docker <args>` against the second engine.
    pub fn docker(&self, args: &[&str]) -> (String, bool) {
        let host = format!("unix://{}", self.dir.path().join("docker.sock").display());
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// Copies `image` from the shared engine into the second one (no registry here).
    fn load(&self, image: &str) {
        let host = format!("unix://{}", self.dir.path().join("docker.sock").display());
        let mut save = std::process::Command::new("docker")
            .args(["save", image])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("docker save");
        let status = std::process::Command::new("docker")
            .args(["-H", &host, "load", "-q"])
            .stdin(save.stdout.take().unwrap())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("docker load");
        assert!(
            save.wait().unwrap().success() && status.success(),
            "{image}"
        );
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        let _ = self.docker(&["swarm", "leave", "--force"]);
        if !self.worker_id.is_empty() {
            let _ = docker(&["node", "rm", "--force", &self.worker_id]);
        }
        if let Some(mut child) = self.dockerd.take() {
            // SIGTERM to this process's own dockerd (it stops its containerd and containers).
            let _ = std::process::Command::new("kill")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = docker(&["swarm", "leave", "--force"]);
        let _ = docker(&["network", "rm", "docker_gwbridge"]);
    }
}
