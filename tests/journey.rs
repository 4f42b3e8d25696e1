//! One tenant's journey end to end, through the real queue: the portal's envelopes pushed onto the
//! real lists, an in-process worker on the real `queues/` declarations, the real Docker engine,
//! the embedded DNS server, and Pebble as the CA (resolving through that DNS server). Asserted from
//! the outside: `docker inspect`, `dig`, `openssl verify`, files on disk, Redis hashes and the
//! pub/sub events a portal would show.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::dns::dig;
use common::docker::{
    Cleanup, build_images, containers_of, inspect, networks_of, unique_slug, volumes_of,
};
use common::journey::{DNS_HIGH, PROVISIONING_HIGH, Stack, step_messages};
use orchestrator::templates::{self, Kind};
use serde_json::{Value, json};

const PROVISION_TIMEOUT: Duration = Duration::from_secs(240);

/// The step messages `team.provision` reports (src/docker/provision.rs and apply.rs), certificate included.
fn provision_steps(slug: &str, last: &str) -> Vec<String> {
    [
        format!("Validating team {slug}"),
        format!("Ensuring network team-{slug}-net"),
        "Checking images".into(),
        "Creating data volume".into(),
        "Creating containers".into(),
        "Waiting for containers to become healthy".into(),
        "Registering DNS name".into(),
        "Obtaining certificate".into(),
        "Recording state".into(),
        last.into(),
    ]
    .to_vec()
}

/// The step messages `team.delete` reports without `purge_data`.
fn delete_steps(slug: &str) -> Vec<String> {
    vec![
        format!("Removing containers of team {slug}"),
        "Removing network".into(),
        "Removing DNS name".into(),
        "Removing certificate".into(),
        "Recording state".into(),
    ]
}

/// Checks the events of one task as a portal sees them: strictly increasing `seq` (the hash's last
/// `seq` is the last event's), "Started" first, the steps in order, "Completed" at 100 % last.
fn check_events(
    events: &[(std::time::Instant, Value)],
    hash: &std::collections::HashMap<String, String>,
    steps: &[String],
) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, e)| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq not strictly increasing: {seqs:?}"
    );
    assert_eq!(hash["seq"], seqs.last().unwrap().to_string());
    let first = &events[0].1;
    assert_eq!(first["type"], "task.progress");
    assert_eq!(first["step"], 0);
    assert_eq!(first["message"], "Started (attempt 1 of 3)");
    assert_eq!(step_messages(events), steps, "step messages");
    let last = &events.last().unwrap().1;
    assert_eq!(last["type"], "task.completed");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["percentage"], 100);
    assert_eq!(last["step"], steps.len() as u64);
    assert_eq!(last["total_steps"], steps.len() as u64);
    assert_eq!(last["message"], "Completed");
    // Progress only goes up.
    let percentages: Vec<u64> = events
        .iter()
        .map(|(_, e)| e["percentage"].as_u64().unwrap())
        .collect();
    assert!(
        percentages.windows(2).all(|w| w[0] <= w[1]),
        "{percentages:?}"
    );
}

fn check_completed_hash(hash: &std::collections::HashMap<String, String>, steps: usize) {
    assert_eq!(hash["status"], "completed");
    assert_eq!(hash["percentage"], "100");
    assert_eq!(hash["step"], steps.to_string());
    assert_eq!(hash["total_steps"], steps.to_string());
    assert_eq!(hash["attempts"], "1");
    assert_eq!(hash["user_id"], common::journey::USER);
}

/// `openssl verify` of a stored chain against Pebble's issuing root (the intermediate comes from
/// the chain itself).
fn openssl_verify(root: &std::path::Path, chain: &std::path::Path) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(chain)
        .arg(chain)
        .output()
        .expect("run openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `certFile`s Traefik's document lists.
fn traefik_cert_files(stack: &Stack) -> Vec<String> {
    let path = stack.certs_dir().join("certificates.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap_or(Value::Null);
    doc["tls"]["certificates"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["certFile"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The DNS names of the first certificate of a PEM file, via openssl.
fn subject_alt_names(chain: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(chain)
        .output()
        .expect("run openssl x509");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_goes_from_provision_to_delete_through_the_queue() {
    build_images();
    let slug = unique_slug("journey");
    let _cleanup = Cleanup::new(&[&slug]);
    let stack = Stack::start(true).await;
    let host = format!("{slug}.localhost");
    let cert_name = format!("team-{slug}");
    let watch = stack.watch().await;

    // --- Provision, as the portal asks for it.
    let id = stack
        .enqueue(
            PROVISIONING_HIGH,
            "team.provision",
            json!({"slug": slug, "certificate": true}),
        )
        .await;
    let hash = stack.wait_completed(&id, PROVISION_TIMEOUT).await;
    check_completed_hash(&hash, 10);
    assert_eq!(hash["type"], "team.provision");
    let events = watch.wait_task_end(&id).await;
    let steps = provision_steps(&slug, "Provisioned");
    check_events(&events, &hash, &steps);
    let result: Value = serde_json::from_str(&hash["result"]).unwrap();
    assert_eq!(result["changed"], true);
    assert_eq!(result["subdomain"], host);
    assert_eq!(result["certificate"]["reused"], false);
    // The notes carry what the seams did: the DNS record and the ACME conversation.
    let notes: Vec<String> = events
        .iter()
        .map(|(_, e)| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        notes
            .iter()
            .any(|m| m.starts_with(&format!("DNS: {slug}.localhost. A 127.0.0.1"))),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|m| m.contains("published _acme-challenge")),
        "{notes:#?}"
    );

    // team:status: provisioning, then active with the subdomain.
    let statuses = watch.team_events(&slug);
    let seen: Vec<&str> = statuses
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["provisioning", "active"], "{statuses:#?}");
    for event in &statuses {
        assert_eq!(event["type"], "team.status");
        assert_eq!(event["resource_type"], "team");
        assert_eq!(event["metadata"]["subdomain"], host);
    }
    assert_eq!(
        statuses[1]["metadata"]["network"],
        format!("team-{slug}-net")
    );

    // Containers: running, healthy, labelled exactly as the template yields them.
    let rendered = templates::render(&stack.config, Kind::Team, &slug).unwrap();
    assert_eq!(
        containers_of(&slug),
        [format!("team-{slug}-api"), format!("team-{slug}-web")]
    );
    for spec in &rendered.containers {
        let c = inspect(&spec.name);
        assert_eq!(c["State"]["Running"], true, "{}", spec.name);
        // Ready means answering (probed directly, faster than Docker's healthcheck interval): the
        // health status may still say "starting", never "unhealthy".
        assert_ne!(c["State"]["Health"]["Status"], "unhealthy", "{}", spec.name);
        let (port, path) = if spec.service == "api" {
            (8000, "/api/health")
        } else {
            (80, "/")
        };
        let ip = common::docker::ip_on(&spec.name, &format!("team-{slug}-net"));
        assert!(
            common::docker::http_get(&format!("{ip}:{port}"), path).is_some(),
            "{} does not answer at {ip}:{port}{path}",
            spec.name
        );
        let labels: BTreeMap<String, String> =
            serde_json::from_value(c["Config"]["Labels"].clone()).unwrap();
        let wanted = rendered.labels_of(spec);
        let traefik = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .filter(|(k, _)| k.starts_with("traefik."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_eq!(
            traefik(&labels),
            traefik(&wanted),
            "Traefik labels of {}",
            spec.name
        );
        for (k, v) in &wanted {
            assert_eq!(labels.get(k), Some(v), "label {k} of {}", spec.name);
        }
        let router = &spec.name;
        let rule = if spec.service == "api" {
            format!("Host(`{host}`) && PathPrefix(`/api`)")
        } else {
            format!("Host(`{host}`)")
        };
        assert_eq!(labels[&format!("traefik.http.routers.{router}.rule")], rule);
        assert_eq!(labels["traefik.enable"], "true");
        assert_eq!(labels["traefik.docker.network"], format!("team-{slug}-net"));
        assert_eq!(labels["orchestrator.managed-by"], "orchestrator");
        assert_eq!(labels["orchestrator.kind"], "team");
        assert_eq!(labels["orchestrator.slug"], slug);
        assert_eq!(labels["orchestrator.team"], slug);
        assert_eq!(labels["orchestrator.template-hash"], rendered.hash);
    }
    assert_eq!(networks_of(&slug), [format!("team-{slug}-net")]);
    assert_eq!(volumes_of(&slug), [format!("team-{slug}-data")]);

    // DNS: the team's own record in the zone state (not just the platform wildcard), served.
    let zone = stack.zone_state().await;
    assert_eq!(
        zone[&format!("{slug} A")]["values"],
        json!(["127.0.0.1"]),
        "{zone:#?}"
    );
    assert!(zone.contains_key("* A"), "the platform wildcard: {zone:#?}");
    let answer = dig(stack.dns, &host, "A", &[]);
    assert_eq!(answer.status, "NOERROR", "{answer:?}");
    assert!(answer.flags.contains(&"aa".to_string()), "{answer:?}");
    assert_eq!(answer.values("A"), ["127.0.0.1"]);
    assert_eq!(answer.answer[0].0, format!("{host}."));
    let below = dig(stack.dns, &format!("probe.{host}"), "A", &[]);
    assert_eq!(
        below.status, "NXDOMAIN",
        "the team's own name blocks the wildcard: {below:?}"
    );

    // Certificate: on disk, verifying against Pebble's root, for the team's name, served by Traefik.
    let pebble = stack.pebble.as_ref().unwrap();
    let root = pebble.root_file();
    let chain = stack.certs_dir().join(&cert_name).join("fullchain.pem");
    assert!(chain.is_file(), "{} missing", chain.display());
    assert!(
        stack
            .certs_dir()
            .join(&cert_name)
            .join("privkey.pem")
            .is_file()
    );
    let (ok, said) = openssl_verify(&root, &chain);
    assert!(ok, "openssl verify: {said}");
    assert!(said.contains(": OK"), "{said}");
    assert!(subject_alt_names(&chain).contains(&format!("DNS:{host}")));
    let serial = result["certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let served = stack
        .certs_dir()
        .join(&cert_name)
        .join(&serial)
        .join("fullchain.pem");
    let listed = traefik_cert_files(&stack);
    assert!(
        listed.contains(&served.display().to_string()),
        "{} not in {listed:?}",
        served.display()
    );
    let status = pebble.cert_status(&serial);
    assert_eq!(status["Status"], "Valid", "{status}");

    // --- The same provision again: a no-op that says so.
    let ids_before: Vec<String> = rendered
        .containers
        .iter()
        .map(|s| inspect(&s.name)["Id"].as_str().unwrap().to_string())
        .collect();
    let again = stack
        .enqueue(
            PROVISIONING_HIGH,
            "team.provision",
            json!({"slug": slug, "certificate": true}),
        )
        .await;
    let hash = stack.wait_completed(&again, PROVISION_TIMEOUT).await;
    check_completed_hash(&hash, 10);
    let events = watch.wait_task_end(&again).await;
    check_events(
        &events,
        &hash,
        &provision_steps(&slug, "Already up to date: nothing changed"),
    );
    let result: Value = serde_json::from_str(&hash["result"]).unwrap();
    assert_eq!(result["changed"], false);
    assert_eq!(result["certificate"]["reused"], true);
    assert_eq!(result["certificate"]["serial"], serial.as_str());
    let ids_after: Vec<String> = rendered
        .containers
        .iter()
        .map(|s| inspect(&s.name)["Id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids_before, ids_after, "containers were replaced");

    // --- Delete through the queue: it undoes all of it.
    let delete = stack
        .enqueue(PROVISIONING_HIGH, "team.delete", json!({"slug": slug}))
        .await;
    let hash = stack.wait_completed(&delete, PROVISION_TIMEOUT).await;
    check_completed_hash(&hash, 5);
    let events = watch.wait_task_end(&delete).await;
    check_events(&events, &hash, &delete_steps(&slug));
    let notes: Vec<String> = events
        .iter()
        .map(|(_, e)| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        notes.iter().any(|m| m
            == &format!("Certificate {cert_name} (serial {serial}) removed and no longer served")),
        "{notes:#?}"
    );
    assert!(
        containers_of(&slug).is_empty(),
        "{:?}",
        containers_of(&slug)
    );
    assert!(networks_of(&slug).is_empty());
    // Without purge_data the team's data stays (the Cleanup guard removes it).
    assert_eq!(volumes_of(&slug), [format!("team-{slug}-data")]);
    // The team's record is gone; the name is only answered by the platform wildcard now.
    let zone = stack.zone_state().await;
    assert!(!zone.contains_key(&format!("{slug} A")), "{zone:#?}");
    assert!(zone.contains_key("* A"));
    // Served: a name below the team's is NXDOMAIN while the team's name exists (RFC 4592: an
    // existing name blocks the wildcard), and synthesised from `*.localhost` once it is gone.
    let probe = format!("probe.{host}");
    common::eventually(
        "the team's name to leave the served zone",
        Duration::from_secs(5),
        || {
            let (dns, probe) = (stack.dns, probe.clone());
            async move {
                let answer = dig(dns, &probe, "A", &[]);
                (answer.status == "NOERROR" && answer.values("A") == ["127.0.0.1"]).then_some(())
            }
        },
    )
    .await;
    // team:status: deleted, with what went.
    let statuses = watch.team_events(&slug);
    let last = statuses.last().unwrap();
    assert_eq!(last["status"], "deleted", "{statuses:#?}");
    assert_eq!(last["metadata"]["subdomain"], host);
    let mut removed: Vec<String> =
        serde_json::from_value(last["metadata"]["containers_removed"].clone()).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        [format!("team-{slug}-api"), format!("team-{slug}-web")]
    );
    assert_eq!(last["metadata"]["network_removed"], true);
    // The certificate is no longer stored, served, or known to Redis.
    // Its folder goes once Traefik's reload grace has passed (one second in this stack).
    let folder = stack.certs_dir().join(&cert_name);
    common::eventually(
        "the certificate folder to be removed after the grace",
        Duration::from_secs(10),
        || {
            let gone = !folder.exists();
            async move { gone.then_some(()) }
        },
    )
    .await;
    let listed = traefik_cert_files(&stack);
    assert!(
        !listed.iter().any(|f| f.contains(&cert_name)),
        "Traefik still lists {listed:?}"
    );
    let mut conn = stack.redis.conn().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("cert:{cert_name}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let member: i64 = redis::cmd("SISMEMBER")
        .arg("certs")
        .arg(&cert_name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(member, 0);
    let team: i64 = redis::cmd("EXISTS")
        .arg(format!("team:{slug}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(team, 0);

    // Deleting again succeeds and changes nothing.
    let again = stack
        .enqueue(PROVISIONING_HIGH, "team.delete", json!({"slug": slug}))
        .await;
    let hash = stack.wait_completed(&again, PROVISION_TIMEOUT).await;
    check_completed_hash(&hash, 5);
    let events = watch.wait_task_end(&again).await;
    assert!(
        events
            .iter()
            .any(|(_, e)| e["message"] == format!("Certificate {cert_name}: none stored")),
        "{events:#?}"
    );

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_records_change_through_the_queue() {
    let stack = Stack::start(false).await;
    let watch = stack.watch().await;
    let name = unique_slug("app");
    let fqdn = format!("{name}.localhost");

    // Before: only the platform wildcard answers.
    assert_eq!(dig(stack.dns, &fqdn, "A", &[]).values("A"), ["127.0.0.1"]);

    let served = |rtype: &'static str, want: Vec<&'static str>| {
        let (dns, fqdn) = (stack.dns, fqdn.clone());
        async move {
            common::eventually(
                &format!("{fqdn} {rtype} to be {want:?}"),
                Duration::from_secs(5),
                || {
                    let (fqdn, want) = (fqdn.clone(), want.clone());
                    async move {
                        let answer = dig(dns, &fqdn, rtype, &[]);
                        let mut values = answer.values(rtype);
                        values.sort();
                        (answer.status == "NOERROR" && values == want).then_some(answer)
                    }
                },
            )
            .await
        }
    };

    let id = stack
        .enqueue(
            DNS_HIGH,
            "dns.record.upsert",
            json!({"name": name, "type": "A", "value": "10.1.2.3", "ttl": 120}),
        )
        .await;
    let hash = stack.wait_completed(&id, Duration::from_secs(30)).await;
    check_completed_hash(&hash, 2);
    let result: Value = serde_json::from_str(&hash["result"]).unwrap();
    assert_eq!(result["changed"], true);
    let first_serial = result["serial"].as_u64().unwrap();
    let answer = served("A", vec!["10.1.2.3"]).await;
    assert_eq!(answer.answer[0].1, 120);
    assert!(answer.flags.contains(&"aa".to_string()));
    let events = watch.wait_task_end(&id).await;
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, e)| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(events.last().unwrap().1["type"], "task.completed");

    // Replacing the set: two values, a higher serial, served.
    let id = stack
        .enqueue(
            DNS_HIGH,
            "dns.record.upsert",
            json!({"name": fqdn, "type": "A", "values": ["10.1.2.4", "10.1.2.5"]}),
        )
        .await;
    let hash = stack.wait_completed(&id, Duration::from_secs(30)).await;
    let result: Value = serde_json::from_str(&hash["result"]).unwrap();
    assert!(result["serial"].as_u64().unwrap() > first_serial);
    served("A", vec!["10.1.2.4", "10.1.2.5"]).await;
    let soa = dig(stack.dns, "localhost", "SOA", &[]);
    let serial: u64 = soa.values("SOA")[0]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(serial, result["serial"].as_u64().unwrap());

    // A TXT set next to it.
    let id = stack
        .enqueue(
            DNS_HIGH,
            "dns.record.upsert",
            json!({"name": name, "type": "TXT", "value": "hello journey"}),
        )
        .await;
    stack.wait_completed(&id, Duration::from_secs(30)).await;
    served("TXT", vec!["\"hello journey\""]).await;

    // Deleting the A set: the TXT stays.
    let id = stack
        .enqueue(
            DNS_HIGH,
            "dns.record.delete",
            json!({"name": name, "type": "A"}),
        )
        .await;
    let hash = stack.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(hash["type"], "dns.record.delete");
    // The name still exists (its TXT set), so it blocks the wildcard: no A at all (NODATA).
    served("A", vec![]).await;
    served("TXT", vec!["\"hello journey\""]).await;
    let zone = stack.zone_state().await;
    assert!(!zone.contains_key(&format!("{name} A")), "{zone:#?}");
    assert!(zone.contains_key(&format!("{name} TXT")));

    // Deleting every set at the name: nothing of it left in the zone.
    let id = stack
        .enqueue(DNS_HIGH, "dns.record.delete", json!({"name": name}))
        .await;
    stack.wait_completed(&id, Duration::from_secs(30)).await;
    let zone = stack.zone_state().await;
    assert!(
        !zone.keys().any(|k| k.starts_with(&format!("{name} "))),
        "{zone:#?}"
    );
    // The name is gone: the platform wildcard answers it again.
    served("A", vec!["127.0.0.1"]).await;
    common::eventually("the TXT set to go", Duration::from_secs(5), || {
        let (dns, fqdn) = (stack.dns, fqdn.clone());
        async move {
            dig(dns, &fqdn, "TXT", &[])
                .values("TXT")
                .is_empty()
                .then_some(())
        }
    })
    .await;

    // A payload the schema refuses never reaches the zone: dead-lettered, not applied.
    let id = stack
        .enqueue(
            DNS_HIGH,
            "dns.record.upsert",
            json!({"name": "x;rm", "type": "A", "value": "10.9.9.9"}),
        )
        .await;
    common::eventually("the bad task to fail", Duration::from_secs(10), || {
        let stack = &stack;
        let id = id.clone();
        async move {
            let hash = stack.task_hash(&id).await;
            (hash.get("status").map(String::as_str) == Some("failed")).then_some(())
        }
    })
    .await;
    let zone = stack.zone_state().await;
    assert!(!zone.values().any(|v| v.to_string().contains("10.9.9.9")));

    stack.stop().await;
}
