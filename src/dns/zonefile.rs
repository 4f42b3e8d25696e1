//! Rendering the zone as an RFC 1035 master file for CoreDNS (`coredns/zones/db.<zone>`) and writing
//! it atomically.
//!
//! A write renders a Redis snapshot to a temporary file in the same folder, syncs it and renames it
//! over `db.<zone>`, so a reader (CoreDNS `reload`, `named-checkzone`) sees the old file or the new
//! one, never half of one. Writers on one host take an exclusive lock on `.db.<zone>.lock` and compare
//! serials under it: a writer holding an older snapshot than the file's leaves the file alone, so a
//! slow worker can never put an older zone back over a newer one.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::DnsError;
use super::records::Zone;
use super::records::{RecordKind, RecordSet};

/// SOA timers: refresh, retry, expire, and minimum (the negative-caching TTL, kept short so a
/// name created just after a miss, like an ACME challenge, is not hidden for long).
pub const SOA_REFRESH: i32 = 3600;
/// SOA retry.
pub const SOA_RETRY: i32 = 600;
/// SOA expire.
pub const SOA_EXPIRE: i32 = 86400;
/// SOA minimum and TTL of the SOA record itself.
pub const SOA_MINIMUM: u32 = 60;
/// TTL of the NS record of the apex.
pub const NS_TTL: u32 = 3600;
/// Longest character-string in a TXT record.
pub const TXT_CHUNK: usize = 255;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file now holds this serial.
    Written { serial: u32 },
    /// The file already held this serial or a newer one; it was left alone.
    UpToDate { on_disk: u32 },
}

/// `db.<zone>` without the trailing dot (`db.localhost`).
pub fn file_name(origin: &str) -> String {
    format!("db.{}", origin.trim_end_matches('.'))
}

/// The primary name server of the zone (`ns.<zone>`), named in SOA and NS.
pub fn name_server(origin: &str) -> String {
    format!("ns.{origin}")
}

/// The mailbox of the zone's administrator, in SOA form (`hostmaster.<zone>`).
pub fn hostmaster(origin: &str) -> String {
    format!("hostmaster.{origin}")
}

/// Orders owners as DNS does (by labels from the right), the apex first, so the file reads like a tree.
pub fn owner_order(a: &str, b: &str) -> Ordering {
    let labels = |owner: &str| -> Vec<String> {
        if owner == "@" {
            Vec::new()
        } else {
            owner.rsplit('.').map(str::to_string).collect()
        }
    };
    labels(a).cmp(&labels(b))
}

/// The master file of `zone`.
pub fn render(zone: &Zone) -> String {
    let origin = &zone.origin;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "; Zone {origin} written by orchestrator from its Redis state; do not edit: every change rewrites it."
    );
    let _ = writeln!(out, "; serial: {}", zone.serial);
    let _ = writeln!(out, "$ORIGIN {origin}");
    let _ = writeln!(out, "$TTL {}", super::records::DEFAULT_TTL);
    let _ = writeln!(
        out,
        "@\t{SOA_MINIMUM}\tIN\tSOA\t{} {} {} {SOA_REFRESH} {SOA_RETRY} {SOA_EXPIRE} {SOA_MINIMUM}",
        name_server(origin),
        hostmaster(origin),
        zone.serial
    );
    let _ = writeln!(out, "@\t{NS_TTL}\tIN\tNS\t{}", name_server(origin));
    for set in &zone.sets {
        for value in &set.values {
            let _ = writeln!(
                out,
                "{}\t{}\tIN\t{}\t{}",
                set.owner,
                set.ttl,
                set.kind,
                rdata(set, value)
            );
        }
    }
    out
}

/// The presentation form of one value.
fn rdata(set: &RecordSet, value: &str) -> String {
    match set.kind {
        RecordKind::Txt => txt_presentation(value.as_bytes()),
        // Addresses and fully qualified names are already canonical and hold only safe characters.
        RecordKind::A | RecordKind::Aaaa | RecordKind::Cname => value.to_string(),
    }
}

/// A TXT value as quoted character-strings of at most 255 bytes each: `"` and `\` are escaped
/// with a backslash, bytes outside printable ASCII as `\DDD`, so no value can end the string, the
/// line or the record early.
pub fn txt_presentation(value: &[u8]) -> String {
    if value.is_empty() {
        return "\"\"".to_string();
    }
    value
        .chunks(TXT_CHUNK)
        .map(|chunk| {
            let mut quoted = String::with_capacity(chunk.len() + 2);
            quoted.push('"');
            for &byte in chunk {
                match byte {
                    b'"' | b'\\' => {
                        quoted.push('\\');
                        quoted.push(byte as char);
                    }
                    0x20..=0x7e => quoted.push(byte as char),
                    _ => {
                        let _ = write!(quoted, "\\{byte:03}");
                    }
                }
            }
            quoted.push('"');
            quoted
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The serial recorded in an existing zone file's header, if the file is there and ours.
pub fn serial_on_disk(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .take(5)
        .find_map(|line| line.strip_prefix("; serial: "))
        .and_then(|s| s.trim().parse().ok())
}

/// Writes `zone` to `dir/db.<zone>` atomically unless the file already holds a serial at least as
/// new. Runs the blocking file work off the async threads.
pub async fn write(dir: &Path, zone: &Zone) -> Result<WriteOutcome, DnsError> {
    let dir = dir.to_path_buf();
    let zone = zone.clone();
    tokio::task::spawn_blocking(move || write_blocking(&dir, &zone))
        .await
        .map_err(|e| DnsError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })?
}

/// The blocking body of [`write`].
pub fn write_blocking(dir: &Path, zone: &Zone) -> Result<WriteOutcome, DnsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DnsError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = file_name(&zone.origin);
    let target = dir.join(&name);
    let lock_path = dir.join(format!(".{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // Serialises writers on this host: compare-then-rename must not interleave.
    lock.lock().map_err(io(&lock_path))?;
    if let Some(on_disk) = serial_on_disk(&target)
        && on_disk >= zone.serial
    {
        return Ok(WriteOutcome::UpToDate { on_disk });
    }
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut file = File::create(&temp).map_err(io(&temp))?;
        file.write_all(render(zone).as_bytes()).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        fs::rename(&temp, &target).map_err(io(&target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    // The lock is released when `lock` drops, after the rename.
    drop(lock);
    Ok(WriteOutcome::Written {
        serial: zone.serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_values_are_escaped_and_split() {
        assert_eq!(txt_presentation(b"plain"), "\"plain\"");
        assert_eq!(txt_presentation(b"a\"b\\c;d"), "\"a\\\"b\\\\c;d\"");
        assert_eq!(txt_presentation("é".as_bytes()), "\"\\195\\169\"");
        let long = vec![b'x'; 600];
        let rendered = txt_presentation(&long);
        assert_eq!(rendered.matches('"').count(), 6);
        assert!(rendered.starts_with(&format!("\"{}\" ", "x".repeat(255))));
    }

    #[test]
    fn apex_sorts_first_then_by_labels_from_the_right() {
        let mut owners = vec!["team-b", "_acme-challenge.team-a", "@", "team-a", "*"];
        owners.sort_by(|a, b| owner_order(a, b));
        assert_eq!(
            owners,
            vec!["@", "*", "team-a", "_acme-challenge.team-a", "team-b"]
        );
    }
}
