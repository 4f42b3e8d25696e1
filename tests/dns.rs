//! The DNS zone end to end: tasks change Redis, the embedded servers answer real `dig` queries with
//! the change, the zone file passes `named-checkzone` after every change, serials only go up, two
//! workers lose nothing, and untrusted names and values cannot break the file or the wire.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::RedisServer;
use common::dns::{Worker, dig, named_checkzone, named_dump};
use orchestrator::dns::zonefile::{self, WriteOutcome};
use orchestrator::dns::{RecordKind, RecordSet, Zone};
use orchestrator::task::TaskError;
use serde_json::json;

const ZONE: &str = "localhost.";
const WAIT: Duration = Duration::from_secs(3);

/// Waits until `worker`'s server serves the serial a task reported.
async fn served(worker: &Worker, result: &serde_json::Value) -> u32 {
    let serial = result["serial"].as_u64().unwrap() as u32;
    assert!(
        worker.server.wait_for_serial(serial, WAIT).await,
        "server did not reach serial {serial}"
    );
    serial
}

/// `dig` off the async threads (it blocks).
async fn query(worker: &Worker, name: &str, rtype: &str, extra: &[&str]) -> common::dns::Answer {
    let addr = worker.server.udp_addr();
    let (name, rtype) = (name.to_string(), rtype.to_string());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        dig(addr, &name, &rtype, &extra)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_and_delete_through_the_handlers_change_the_answers() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    let file = worker.zone_file();

    // Before: the wildcard answers with the ingress address; the apex has SOA and NS.
    let before = query(&worker, "team-a.localhost", "A", &[]).await;
    assert_eq!(before.status, "NOERROR");
    assert!(before.flags.contains(&"aa".to_string()), "{before:?}");
    assert_eq!(before.values("A"), vec!["127.0.0.1"]);
    let soa = query(&worker, "localhost", "SOA", &[]).await;
    assert_eq!(soa.values("SOA").len(), 1);
    let ns = query(&worker, "localhost", "NS", &[]).await;
    assert_eq!(ns.values("NS"), vec!["ns.localhost."]);

    let result = worker
        .run(
            "dns.record.upsert",
            json!({"name": "team-a", "type": "A", "value": "10.1.2.3", "ttl": 120}),
        )
        .await
        .unwrap();
    let s1 = served(&worker, &result).await;
    let answer = query(&worker, "team-a.localhost", "A", &[]).await;
    assert_eq!(answer.values("A"), vec!["10.1.2.3"]);
    assert_eq!(answer.answer[0].1, 120);
    named_checkzone(ZONE, &file);
    assert_eq!(zonefile::serial_on_disk(&file), Some(s1));

    // NODATA: the name exists with another type; SOA in the authority section.
    let nodata = query(&worker, "team-a.localhost", "AAAA", &[]).await;
    assert_eq!(nodata.status, "NOERROR");
    assert!(nodata.answer.is_empty(), "{nodata:?}");
    assert_eq!(nodata.authority_serial(), Some(s1));
    // NXDOMAIN below an existing name (the wildcard `*.localhost` does not cover it: team-a exists).
    let nx = query(&worker, "x.team-a.localhost", "A", &[]).await;
    assert_eq!(nx.status, "NXDOMAIN", "{nx:?}");
    assert_eq!(nx.authority_serial(), Some(s1));
    // Outside the zone: not ours.
    let refused = query(&worker, "example.com", "A", &[]).await;
    assert_eq!(refused.status, "REFUSED");

    // AAAA, CNAME and TXT, each a record set replaced by the next upsert.
    for (name, rtype, values, expect) in [
        ("v6", "AAAA", json!(["2001:DB8::1"]), vec!["2001:db8::1"]),
        (
            "www",
            "CNAME",
            json!(["team-a.localhost"]),
            vec!["team-a.localhost."],
        ),
        (
            "info",
            "TXT",
            json!(["one", "two"]),
            vec!["\"one\"", "\"two\""],
        ),
    ] {
        let result = worker
            .run(
                "dns.record.upsert",
                json!({"name": name, "type": rtype, "values": values}),
            )
            .await
            .unwrap();
        served(&worker, &result).await;
        let answer = query(&worker, &format!("{name}.localhost"), rtype, &[]).await;
        let mut got = answer.values(rtype);
        got.sort();
        assert_eq!(got, expect, "{name} {rtype}");
        named_checkzone(ZONE, &file);
    }
    // The CNAME is followed inside the zone.
    let chased = query(&worker, "www.localhost", "A", &[]).await;
    assert_eq!(chased.values("A"), vec!["10.1.2.3"], "{chased:?}");
    // A CNAME cannot share its name with other data.
    let conflict = worker
        .run(
            "dns.record.upsert",
            json!({"name": "www", "type": "TXT", "value": "x"}),
        )
        .await;
    assert!(
        matches!(conflict, Err(TaskError::Failed(_))),
        "{conflict:?}"
    );

    // Upsert replaces; the same task again changes nothing (idempotent, same serial).
    let replaced = worker
        .run(
            "dns.record.upsert",
            json!({"name": "team-a.localhost.", "type": "A", "values": ["10.9.9.9"]}),
        )
        .await
        .unwrap();
    let s2 = served(&worker, &replaced).await;
    let again = worker
        .run(
            "dns.record.upsert",
            json!({"name": "team-a", "type": "A", "values": ["10.9.9.9"]}),
        )
        .await
        .unwrap();
    assert_eq!(again["changed"], false);
    assert_eq!(again["serial"].as_u64().unwrap() as u32, s2);
    assert_eq!(
        query(&worker, "team-a.localhost", "A", &[])
            .await
            .values("A"),
        vec!["10.9.9.9"]
    );

    // Delete: back to the wildcard answer.
    let deleted = worker
        .run("dns.record.delete", json!({"name": "team-a", "type": "A"}))
        .await
        .unwrap();
    let s3 = served(&worker, &deleted).await;
    assert!(s3 > s2);
    assert_eq!(
        query(&worker, "team-a.localhost", "A", &[])
            .await
            .values("A"),
        vec!["127.0.0.1"]
    );
    named_checkzone(ZONE, &file);
    let twice = worker
        .run("dns.record.delete", json!({"name": "team-a"}))
        .await
        .unwrap();
    assert_eq!(twice["changed"], false);

    // The platform names are not the tasks' to change.
    for name in ["@", "localhost.", "ns", "*"] {
        let refused = worker
            .run(
                "dns.record.upsert",
                json!({"name": name, "type": "A", "value": "10.0.0.1"}),
            )
            .await;
        assert!(
            matches!(refused, Err(TaskError::Invalid(_))),
            "{name}: {refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_strictly_increases_and_every_zone_file_passes_named_checkzone() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    let file = worker.zone_file();
    let mut last = worker.store.snapshot().await.unwrap().serial;
    for i in 0..15 {
        let payload = if i % 3 == 2 {
            json!({"name": format!("host-{}", i - 1), "type": "A"})
        } else {
            json!({"name": format!("host-{i}"), "type": "A", "value": format!("10.0.0.{i}")})
        };
        let task = if i % 3 == 2 {
            "dns.record.delete"
        } else {
            "dns.record.upsert"
        };
        let result = worker.run(task, payload).await.unwrap();
        let serial = result["serial"].as_u64().unwrap() as u32;
        assert!(serial > last, "serial {serial} after {last}");
        last = serial;
        named_checkzone(ZONE, &file);
        assert_eq!(zonefile::serial_on_disk(&file), Some(serial));
        served(&worker, &result).await;
        let soa = query(&worker, "localhost", "SOA", &[]).await;
        let on_wire: u32 = soa.values("SOA")[0]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(on_wire, serial);
    }
}

#[test]
fn a_stale_writer_never_overwrites_a_newer_serial() {
    let zones = tempfile::tempdir().unwrap();
    let zone = |serial, ip: &str| Zone {
        origin: ZONE.into(),
        serial,
        sets: vec![
            RecordSet::new(ZONE, "ns", RecordKind::A, None, &["127.0.0.1".into()]).unwrap(),
            RecordSet::new(ZONE, "team-a", RecordKind::A, None, &[ip.into()]).unwrap(),
        ],
    };
    assert_eq!(
        zonefile::write_blocking(zones.path(), &zone(200, "10.0.0.2")).unwrap(),
        WriteOutcome::Written { serial: 200 }
    );
    assert_eq!(
        zonefile::write_blocking(zones.path(), &zone(100, "10.0.0.1")).unwrap(),
        WriteOutcome::UpToDate { on_disk: 200 }
    );
    let file = zones.path().join("db.localhost");
    assert!(std::fs::read_to_string(&file).unwrap().contains("10.0.0.2"));
    named_checkzone(ZONE, &file);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(zones.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_changing_records_concurrently_lose_nothing() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let one = Worker::start(&redis.url(), zones.path()).await;
    let two = Worker::start(&redis.url(), zones.path()).await;
    const EACH: usize = 40;
    // Values each worker adds to the shared TXT set (together: the most one set may hold).
    const SHARED: usize = orchestrator::dns::records::MAX_VALUES / 2;

    let run = |worker: &Worker, who: &'static str| {
        let store = worker.store.clone();
        async move {
            let mut serials = Vec::new();
            for i in 0..EACH {
                let set = RecordSet::new(
                    ZONE,
                    &format!("{who}-{i}"),
                    RecordKind::A,
                    None,
                    &[format!("10.0.{}.{i}", if who == "one" { 1 } else { 2 })],
                )
                .unwrap();
                serials.push(store.upsert(&set).await.unwrap().serial);
                // Both also add values to one shared TXT set: neither may drop the other's.
                if i >= SHARED {
                    continue;
                }
                serials.push(
                    store
                        .add_challenge("shared.localhost", &format!("{who}-{i}"))
                        .await
                        .unwrap()
                        .serial,
                );
            }
            serials
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(run(&one, "one")),
        tokio::spawn(run(&two, "two"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for serials in [&a, &b] {
        assert!(
            serials.windows(2).all(|w| w[0] < w[1]),
            "serials not increasing"
        );
    }
    let all: HashSet<u32> = a.iter().chain(&b).copied().collect();
    assert_eq!(
        all.len(),
        2 * EACH + 2 * SHARED,
        "two changes got one serial"
    );

    let zone = one.store.snapshot().await.unwrap();
    let last = *all.iter().max().unwrap();
    assert_eq!(zone.serial, last);
    let txt = zone.get("_acme-challenge.shared", RecordKind::Txt);
    let txt_values: HashSet<&str> = txt.unwrap().values.iter().map(String::as_str).collect();
    assert_eq!(txt_values.len(), 2 * SHARED, "a TXT value was lost");
    for who in ["one", "two"] {
        for i in 0..EACH {
            assert!(
                zone.get(&format!("{who}-{i}"), RecordKind::A).is_some(),
                "{who}-{i} lost"
            );
        }
    }
    // Both servers converge on the last serial and answer for every name.
    for worker in [&one, &two] {
        assert!(worker.server.wait_for_serial(last, WAIT).await);
        for (who, i) in [("one", EACH - 1), ("two", 0), ("two", EACH - 1)] {
            let answer = query(worker, &format!("{who}-{i}.localhost"), "A", &[]).await;
            let net = if who == "one" { 1 } else { 2 };
            assert_eq!(answer.values("A"), vec![format!("10.0.{net}.{i}")]);
        }
    }
    // The zone file (shared folder) ends at the last serial whichever worker wrote last.
    one.store.write_zone_file().await.unwrap();
    two.store.write_zone_file().await.unwrap();
    assert_eq!(zonefile::serial_on_disk(&one.zone_file()), Some(last));
    named_checkzone(ZONE, &one.zone_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_values_that_could_break_a_zone_file_are_rejected() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    let before = worker.store.snapshot().await.unwrap();
    let long_label = "a".repeat(64);
    let long_name = format!("{}x", "abcdefghi.".repeat(25));
    for name in [
        "team a",
        "team\na",
        "team;a",
        "team\"a",
        "team'a",
        "team\\a",
        "team(a",
        "a..b",
        "",
        "example.com.",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        let result = worker
            .run(
                "dns.record.upsert",
                json!({"name": name, "type": "A", "value": "10.0.0.1"}),
            )
            .await;
        assert!(
            matches!(result, Err(TaskError::Invalid(_))),
            "{name:?}: {result:?}"
        );
        let result = worker.run("dns.record.delete", json!({"name": name})).await;
        assert!(
            matches!(result, Err(TaskError::Invalid(_))),
            "{name:?}: {result:?}"
        );
    }
    for (rtype, value) in [
        ("A", "10.0.0.1 ; evil"),
        ("A", "10.0.0.256"),
        ("AAAA", "10.0.0.1"),
        ("CNAME", "a b.example."),
        ("CNAME", "x.example.\n@ IN NS evil."),
        ("TXT", "line\nbreak"),
        ("TXT", "tab\there"),
        ("MX", "10 mail.example."),
    ] {
        let result = worker
            .run(
                "dns.record.upsert",
                json!({"name": "ok", "type": rtype, "value": value}),
            )
            .await;
        assert!(
            matches!(result, Err(TaskError::Invalid(_))),
            "{rtype} {value:?}: {result:?}"
        );
    }
    assert_eq!(worker.store.snapshot().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_values_are_escaped_in_the_file_and_exact_on_the_wire() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    let file = worker.zone_file();
    let tricky = r#"say "hi" \ back; (paren) $ORIGIN evil. @"#;
    let long: String = (0..600).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    for (name, value) in [("tricky", tricky), ("long", long.as_str())] {
        let result = worker
            .run(
                "dns.record.upsert",
                json!({"name": name, "type": "TXT", "value": value}),
            )
            .await
            .unwrap();
        served(&worker, &result).await;
        named_checkzone(ZONE, &file);
        // On the wire: the character-strings, 255 bytes at most, rejoin to the value.
        let answer = query(&worker, &format!("{name}.localhost"), "TXT", &[]).await;
        let presented = &answer.values("TXT")[0];
        let expected = zonefile::txt_presentation(value.as_bytes());
        assert_eq!(presented, &expected, "dig shows {presented}");
        // In the file: BIND reads back exactly the same strings.
        let dump = named_dump(ZONE, &file);
        let line = dump
            .lines()
            .find(|l| l.starts_with(&format!("{name}.localhost.")) && l.contains("TXT"))
            .unwrap_or_else(|| panic!("{name} missing from\n{dump}"));
        assert!(line.ends_with(&expected), "{line}");
    }
    // The long value is three strings: 255 + 255 + 90.
    let expected = zonefile::txt_presentation(long.as_bytes());
    assert_eq!(expected.matches("\" \"").count(), 2);
    assert!(!tricky.contains('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    let values: Vec<String> = (0..6).map(|i| format!("{i}{}", "x".repeat(999))).collect();
    let result = worker
        .run(
            "dns.record.upsert",
            json!({"name": "big", "type": "TXT", "values": values}),
        )
        .await
        .unwrap();
    served(&worker, &result).await;
    let udp = query(&worker, "big.localhost", "TXT", &["+ignore", "+noedns"]).await;
    assert!(udp.flags.contains(&"tc".to_string()), "{udp:?}");
    let tcp = query(&worker, "big.localhost", "TXT", &["+tcp"]).await;
    assert_eq!(tcp.values("TXT").len(), 6);
    // dig's default: UDP, sees TC, retries over TCP.
    let fallback = query(&worker, "big.localhost", "TXT", &[]).await;
    assert_eq!(fallback.values("TXT").len(), 6);
    assert!(!fallback.flags.contains(&"tc".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_values_coexist_and_the_name_registry_adds_and_removes_teams() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    let store = &worker.store;

    let a = store
        .add_challenge("team-a.localhost", "base-token")
        .await
        .unwrap();
    let b = store
        .add_challenge("*.team-a.localhost", "wild-token")
        .await
        .unwrap();
    let again = store
        .add_challenge("team-a.localhost", "base-token")
        .await
        .unwrap();
    assert!(a.changed && b.changed && !again.changed);
    assert!(worker.server.wait_for_serial(b.serial, WAIT).await);
    let answer = query(&worker, "_acme-challenge.team-a.localhost", "TXT", &[]).await;
    let mut got = answer.values("TXT");
    got.sort();
    assert_eq!(got, vec!["\"base-token\"", "\"wild-token\""]);
    // add_challenge wrote Redis and published: the server has it within a fraction of a second.
    let c = store
        .remove_challenge("team-a.localhost", "base-token")
        .await
        .unwrap();
    assert!(
        worker
            .server
            .wait_for_serial(c.serial, Duration::from_millis(500))
            .await
    );
    let answer = query(&worker, "_acme-challenge.team-a.localhost", "TXT", &[]).await;
    assert_eq!(answer.values("TXT"), vec!["\"wild-token\""]);
    let d = store
        .remove_challenge("*.team-a.localhost", "wild-token")
        .await
        .unwrap();
    assert!(worker.server.wait_for_serial(d.serial, WAIT).await);
    let gone = query(&worker, "_acme-challenge.team-a.localhost", "TXT", &[]).await;
    assert!(gone.values("TXT").is_empty(), "{gone:?}");
    assert!(
        !store
            .remove_challenge("team-a.localhost", "never")
            .await
            .unwrap()
            .changed
    );

    let line = worker.services.names.add_name("team-b").await.unwrap();
    assert!(line.contains("team-b.localhost"), "{line}");
    let serial = worker.store.snapshot().await.unwrap().serial;
    assert!(worker.server.wait_for_serial(serial, WAIT).await);
    let answer = query(&worker, "team-b.localhost", "A", &[]).await;
    assert_eq!(answer.values("A"), vec!["127.0.0.1"]);
    assert!(
        std::fs::read_to_string(worker.zone_file())
            .unwrap()
            .contains("team-b\t300\tIN\tA\t127.0.0.1")
    );
    worker.services.names.remove_name("team-b").await.unwrap();
    let zone = worker.store.snapshot().await.unwrap();
    assert!(zone.get("team-b", RecordKind::A).is_none());
    assert!(worker.services.names.add_name("Bad Slug").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_catches_up_after_a_redis_restart() {
    let mut redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    redis.restart();
    // A change made while (or right after) the subscription was down is picked up by the
    // reload on resubscribe, or by the notification once resubscribed.
    let other = common::dns::pool(&redis.url());
    let store =
        orchestrator::dns::ZoneStore::new(ZONE, "127.0.0.1".parse().unwrap(), None, other).unwrap();
    let set = RecordSet::new(ZONE, "after", RecordKind::A, None, &["10.7.7.7".into()]).unwrap();
    let change = store.upsert(&set).await.unwrap();
    assert!(
        worker
            .server
            .wait_for_serial(change.serial, Duration::from_secs(10))
            .await,
        "server did not catch up after the restart"
    );
    let answer = query(&worker, "after.localhost", "A", &[]).await;
    assert_eq!(answer.values("A"), vec!["10.7.7.7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_empty_non_terminals_follow_rfc_4592() {
    let redis = RedisServer::start();
    let zones = tempfile::tempdir().unwrap();
    let worker = Worker::start(&redis.url(), zones.path()).await;
    let change = worker
        .store
        .add_challenge("team-c.localhost", "token")
        .await
        .unwrap();
    assert!(worker.server.wait_for_serial(change.serial, WAIT).await);

    // Names under no existing name: synthesised from `*.localhost`, owned by the query name.
    let synthesised = query(&worker, "a.b.localhost", "A", &[]).await;
    assert_eq!(synthesised.values("A"), vec!["127.0.0.1"]);
    assert_eq!(synthesised.answer[0].0, "a.b.localhost.");
    // The wildcard has no TXT: NODATA with the SOA.
    let nodata = query(&worker, "nosuch.localhost", "TXT", &[]).await;
    assert_eq!(nodata.status, "NOERROR");
    assert!(nodata.answer.is_empty());
    assert_eq!(nodata.authority_serial(), Some(change.serial));
    // team-c.localhost is an empty non-terminal (it only has `_acme-challenge` below it): it
    // exists, so the wildcard does not answer for it.
    let ent = query(&worker, "team-c.localhost", "A", &[]).await;
    assert_eq!(ent.status, "NOERROR");
    assert!(ent.answer.is_empty(), "{ent:?}");
    assert_eq!(ent.authority_serial(), Some(change.serial));
    // Below it, the closest encloser is team-c.localhost and `*.team-c` does not exist.
    let nx = query(&worker, "x.team-c.localhost", "A", &[]).await;
    assert_eq!(nx.status, "NXDOMAIN");
    // The challenge owner exists with TXT only: an A query there is NODATA, not the wildcard.
    let txt_only = query(&worker, "_acme-challenge.team-c.localhost", "A", &[]).await;
    assert_eq!(txt_only.status, "NOERROR");
    assert!(txt_only.answer.is_empty());
}

/// `coredns/zones/db.localhost` is committed so `docker compose --profile dns up` serves something
/// before any worker ran: it must be exactly what the renderer writes for the platform records
/// (serial 1, so the first worker's write replaces it) and pass `named-checkzone`.
/// `DNS_WRITE_COMMITTED_ZONE=1 cargo test --test dns committed` rewrites it.
#[test]
fn the_committed_zone_file_is_the_renderers_output() {
    let platform = |owner: &str| {
        RecordSet::new(ZONE, owner, RecordKind::A, None, &["127.0.0.1".into()]).unwrap()
    };
    let mut sets = vec![platform("@"), platform("*"), platform("ns")];
    sets.sort_by(|a, b| zonefile::owner_order(&a.owner, &b.owner));
    let zone = Zone {
        origin: ZONE.into(),
        serial: 1,
        sets,
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("coredns/zones/db.localhost");
    if std::env::var_os("DNS_WRITE_COMMITTED_ZONE").is_some() {
        std::fs::write(&path, zonefile::render(&zone)).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        zonefile::render(&zone)
    );
    named_checkzone(ZONE, &path);
}
