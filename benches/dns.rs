//! DNS benchmark: queries per second of the embedded server next to NSD serving the same zone file
//! (both measured with `dnsperf`, one after the other, same query mix, same machine), and the time
//! from a record upsert (a Lua script in Redis) to the new answer on the wire.
//!
//! Needs `redis-server`, `dnsperf`, `nsd` (Debian packages). Run: `cargo bench --bench dns`.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::RedisServer;
use common::dns::Worker;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use orchestrator::dns::{RecordKind, RecordSet, zonefile};

const ZONE: &str = "localhost.";
const TEAMS: usize = 200;
const SECONDS: &str = "5";

/// A child process killed on drop, even when the bench panics.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;

    // A zone like a busy platform's: team records, challenges, the wildcard.
    for i in 0..TEAMS {
        let set = RecordSet::new(
            ZONE,
            &format!("team-{i}"),
            RecordKind::A,
            None,
            &[format!("10.0.{}.{}", i / 250, i % 250 + 1)],
        )
        .unwrap();
        worker.store.upsert(&set).await.unwrap();
    }
    for i in 0..20 {
        worker
            .store
            .add_challenge(
                &format!("team-{i}.localhost"),
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            )
            .await
            .unwrap();
    }
    worker.store.write_zone_file().await.unwrap();
    let serial = worker.store.snapshot().await.unwrap().serial;
    assert!(
        worker
            .server
            .wait_for_serial(serial, Duration::from_secs(5))
            .await
    );
    let zone_file = worker.zone_file();

    // Query mix: team names (exact), wildcard names, NODATA, NXDOMAIN, TXT challenges.
    let queries = zones.path().join("queries.txt");
    let mut lines = String::new();
    for i in 0..TEAMS {
        lines.push_str(&format!("team-{i}.localhost A\n"));
        if i % 4 == 0 {
            lines.push_str(&format!("random-{i}.localhost A\n"));
            lines.push_str(&format!("team-{i}.localhost AAAA\n"));
            lines.push_str(&format!("x.team-{i}.localhost A\n"));
        }
        if i < 20 {
            lines.push_str(&format!("_acme-challenge.team-{i}.localhost TXT\n"));
        }
    }
    std::fs::write(&queries, lines).unwrap();

    println!(
        "DNS benchmark: {TEAMS} team records + 20 TXT challenges; dnsperf {SECONDS}s each, UDP, 100 outstanding"
    );
    println!(
        "{:<34} {:>12} {:>10} {:>12}",
        "server", "queries/s", "lost", "avg latency"
    );
    let embedded = dnsperf(worker.server.udp_addr(), &queries);
    println!(
        "{:<34} {:>12.0} {:>10} {:>12}",
        "embedded (hickory, Redis-fed)", embedded.0, embedded.1, embedded.2
    );

    match start_nsd(zones.path(), &zone_file) {
        Ok((addr, _guard)) => {
            let nsd = dnsperf(addr, &queries);
            println!(
                "{:<34} {:>12.0} {:>10} {:>12}",
                "NSD 4 (same zone file)", nsd.0, nsd.1, nsd.2
            );
            println!("embedded / NSD: {:.2}", embedded.0 / nsd.0.max(1.0));
        }
        Err(why) => println!("NSD could not run: {why}"),
    }

    // Upsert → visible: time from calling upsert until a UDP query returns the new address.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(worker.server.udp_addr()).await.unwrap();
    let name = Name::from_str("latency.localhost.").unwrap();
    let mut upsert_only = Vec::new();
    let mut visible = Vec::new();
    for i in 0..200u32 {
        let ip = format!("10.200.{}.{}", i / 250, i % 250 + 1);
        let set = RecordSet::new(
            ZONE,
            "latency",
            RecordKind::A,
            None,
            std::slice::from_ref(&ip),
        )
        .unwrap();
        let start = Instant::now();
        worker.store.upsert(&set).await.unwrap();
        upsert_only.push(start.elapsed());
        loop {
            if ask_a(&socket, &name, i as u16).await.as_deref() == Some(ip.as_str()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "change never became visible"
            );
        }
        visible.push(start.elapsed());
    }
    println!();
    println!("upsert → answer on the wire (200 changes, one at a time, query loop over UDP):");
    report("  Redis Lua change + PUBLISH (baseline)", &mut upsert_only);
    report("  upsert until the new answer is served", &mut visible);

    // The zone file writer's share: snapshot + render + fsync + rename.
    let mut writes = Vec::new();
    for _ in 0..50 {
        let set =
            RecordSet::new(ZONE, "latency", RecordKind::A, None, &["10.9.9.9".into()]).unwrap();
        worker.store.upsert(&set).await.unwrap();
        let set =
            RecordSet::new(ZONE, "latency", RecordKind::A, None, &["10.9.9.8".into()]).unwrap();
        worker.store.upsert(&set).await.unwrap();
        let start = Instant::now();
        worker.store.write_zone_file().await.unwrap();
        writes.push(start.elapsed());
    }
    report(
        "  zone file rewrite (snapshot, render, fsync, rename)",
        &mut writes,
    );
    let _ = zonefile::serial_on_disk(&zone_file);
}

/// (queries per second, lost queries, average latency) from one dnsperf run.
fn dnsperf(server: SocketAddr, queries: &Path) -> (f64, String, String) {
    let output = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .args([
            "-d",
            &queries.to_string_lossy(),
            "-l",
            SECONDS,
            "-c",
            "4",
            "-q",
            "100",
        ])
        .output()
        .expect("run dnsperf (package dnsperf)");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| l.trim_start()[label.len()..].trim().to_string())
            .unwrap_or_default()
    };
    let qps = field("Queries per second:").parse().unwrap_or(0.0);
    let lost = field("Queries lost:");
    let latency = field("Average Latency (s):")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| format!("{:.3} ms", s * 1000.0))
        .unwrap_or_default();
    (
        qps,
        lost.split_whitespace().next().unwrap_or("").to_string(),
        latency,
    )
}

/// Starts NSD on a free port serving `zone_file` (one server process, response rate limiting off:
/// its default 200 answers/s per source would throttle dnsperf); returns its address.
fn start_nsd(dir: &Path, zone_file: &Path) -> Result<(SocketAddr, Guard), String> {
    let port = common::free_port();
    let nsd_dir = dir.join("nsd");
    std::fs::create_dir_all(&nsd_dir).map_err(|e| e.to_string())?;
    let d = nsd_dir.to_string_lossy();
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 0\n  rrl-ratelimit: 0\nremote-control:\n  control-enable: no\nzone:\n  name: localhost\n  zonefile: \"{}\"\n",
        zone_file.display()
    );
    let conf_path = nsd_dir.join("nsd.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let child = Command::new("nsd")
        .args(["-d", "-c", &conf_path.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nsd: {e}"))?;
    let guard = Guard(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "team-1.localhost",
                "+short",
                "+time=1",
                "+tries=1",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.stdout.is_empty() {
            return Ok((addr, guard));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("nsd did not answer within 10 s".into())
}

/// One A query over UDP; the first address in the answer.
async fn ask_a(socket: &tokio::net::UdpSocket, name: &Name, id: u16) -> Option<String> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(name.clone(), RecordType::A));
    socket.send(&message.to_vec().ok()?).await.ok()?;
    let mut buffer = [0u8; 1500];
    let len = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buffer))
        .await
        .ok()?
        .ok()?;
    let response = Message::from_vec(&buffer[..len]).ok()?;
    response.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0.to_string()),
        _ => None,
    })
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{what:<56} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0,
        pick(1.0).as_secs_f64() * 1000.0
    );
}
