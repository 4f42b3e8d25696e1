//! Record types of the platform zone and the validation of every untrusted owner name and value
//! before it reaches Redis, a zone file or the wire; and [`Zone`], the whole zone at one serial (what
//! the store reads and the zone file and the server render).
//!
//! The rule is "nothing a zone file or the DNS wire format could misread passes": owner names are
//! lowercase labels of `[a-z0-9_-]` (1 to 63 bytes, no leading or trailing `-`, `*` only as a whole
//! first label), at most 253 bytes fully qualified, and always inside the platform zone. Values are
//! parsed into their type (an IPv4 or IPv6 address, a domain name) and stored in canonical form; TXT
//! values may hold any printable text (quotes and backslashes included, escaped when rendered) but
//! no control characters.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest label, in bytes.
pub const MAX_LABEL: usize = 63;
/// Longest fully qualified name in presentation form, without the trailing dot.
pub const MAX_NAME: usize = 253;
/// Longest TXT value accepted, in bytes (split into 255-byte character-strings when served).
pub const MAX_TXT: usize = 2048;
/// Largest total of the values of one set, in bytes, so an answer always fits a TCP message.
pub const MAX_SET_BYTES: usize = 8192;
/// Longest ACME challenge value (a DNS-01 value is a 43-byte digest).
pub const MAX_CHALLENGE: usize = 255;
/// Most values in one record set.
pub const MAX_VALUES: usize = 32;
/// Largest TTL accepted (one week).
pub const MAX_TTL: u32 = 604_800;
/// TTL of records whose producer named none.
pub const DEFAULT_TTL: u32 = 300;
/// Owner names reserved to the platform records (apex, name server, wildcard): tasks can't change them.
pub const RESERVED_OWNERS: [&str; 3] = ["@", "ns", "*"];

/// Why a record was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record name is empty")]
    EmptyName,
    #[error("record name {0:?} is longer than {MAX_NAME} characters")]
    NameTooLong(String),
    #[error(
        "record name {name:?} has an invalid label {label:?} (labels are 1-63 characters of a-z, 0-9, '_' and inner '-'; '*' only as the first label)"
    )]
    BadLabel { name: String, label: String },
    #[error("record name {name:?} is outside the zone {zone}")]
    OutsideZone { name: String, zone: String },
    #[error("record name {0:?} is reserved to the platform records (apex, ns, wildcard)")]
    Reserved(String),
    #[error("record type {0:?} is not one of A, AAAA, CNAME, TXT")]
    BadType(String),
    #[error("{kind} record needs at least one value")]
    NoValues { kind: RecordKind },
    #[error("{kind} record has {count} values, more than {MAX_VALUES}")]
    TooManyValues { kind: RecordKind, count: usize },
    #[error("CNAME record takes exactly one value, got {0}")]
    CnameValues(usize),
    #[error("{value:?} is not a valid {kind} value: {why}")]
    BadValue {
        kind: RecordKind,
        value: String,
        why: &'static str,
    },
    #[error("{kind} record values total {total} bytes, more than {MAX_SET_BYTES}")]
    SetTooLarge { kind: RecordKind, total: usize },
    #[error("TTL {0} is over the maximum of {MAX_TTL} seconds")]
    BadTtl(u32),
}

/// The record types tasks may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKind {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
    #[serde(rename = "CNAME")]
    Cname,
    #[serde(rename = "TXT")]
    Txt,
}

impl RecordKind {
    /// Every kind, in the order records are rendered.
    pub const ALL: [RecordKind; 4] = [
        RecordKind::A,
        RecordKind::Aaaa,
        RecordKind::Cname,
        RecordKind::Txt,
    ];

    /// The mnemonic (`A`, `AAAA`, `CNAME`, `TXT`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "A",
            RecordKind::Aaaa => "AAAA",
            RecordKind::Cname => "CNAME",
            RecordKind::Txt => "TXT",
        }
    }

    /// Parses a mnemonic, case-insensitively.
    pub fn parse(value: &str) -> Result<Self, RecordError> {
        match value.to_ascii_uppercase().as_str() {
            "A" => Ok(RecordKind::A),
            "AAAA" => Ok(RecordKind::Aaaa),
            "CNAME" => Ok(RecordKind::Cname),
            "TXT" => Ok(RecordKind::Txt),
            _ => Err(RecordError::BadType(value.to_string())),
        }
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record set of the zone: every value of one type at one owner, with one TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSet {
    /// Owner relative to the zone origin (`team-a`, `_acme-challenge.team-a`), `@` for the apex.
    pub owner: String,
    /// Record type.
    pub kind: RecordKind,
    /// Time to live, seconds.
    pub ttl: u32,
    /// Values in canonical form (addresses as printed by std, names fully qualified with a dot).
    pub values: Vec<String>,
}

impl RecordSet {
    /// A validated record set: `owner` is checked against `zone` (see [`owner`]); values are
    /// parsed, canonicalised and deduplicated (order kept).
    pub fn new(
        zone: &str,
        owner_name: &str,
        kind: RecordKind,
        ttl: Option<u32>,
        values: &[String],
    ) -> Result<Self, RecordError> {
        let owner = owner(zone, owner_name)?;
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if ttl > MAX_TTL {
            return Err(RecordError::BadTtl(ttl));
        }
        if values.is_empty() {
            return Err(RecordError::NoValues { kind });
        }
        if values.len() > MAX_VALUES {
            return Err(RecordError::TooManyValues {
                kind,
                count: values.len(),
            });
        }
        if kind == RecordKind::Cname && values.len() != 1 {
            return Err(RecordError::CnameValues(values.len()));
        }
        let mut canonical: Vec<String> = Vec::with_capacity(values.len());
        for value in values {
            let value = canonical_value(kind, value)?;
            if !canonical.contains(&value) {
                canonical.push(value);
            }
        }
        let total: usize = canonical.iter().map(String::len).sum();
        if total > MAX_SET_BYTES {
            return Err(RecordError::SetTooLarge { kind, total });
        }
        Ok(Self {
            owner,
            kind,
            ttl,
            values: canonical,
        })
    }

    /// The field naming this set in the zone's Redis hash: `<owner> <TYPE>` (owners hold no spaces).
    pub fn field(&self) -> String {
        field(&self.owner, self.kind)
    }

    /// Whether this set belongs to the platform (apex, ns, wildcard) rather than to a task.
    pub fn is_reserved(&self) -> bool {
        RESERVED_OWNERS.contains(&self.owner.as_str())
    }
}

/// The hash field of the set of `kind` at `owner`.
pub fn field(owner: &str, kind: RecordKind) -> String {
    format!("{owner} {}", kind.as_str())
}

/// Splits a hash field back into owner and kind.
pub fn parse_field(field: &str) -> Option<(String, RecordKind)> {
    let (owner, kind) = field.split_once(' ')?;
    Some((owner.to_string(), RecordKind::parse(kind).ok()?))
}

/// Validates an owner name and returns it relative to `zone` (`@` for the apex).
///
/// `name` may be relative (`team-a`, `_acme-challenge.team-a`), `@`, or fully qualified inside the
/// zone (`team-a.localhost` or `team-a.localhost.` for the zone `localhost.`). A name ending in a dot
/// that is not inside the zone is refused. ASCII letters are lowercased; everything else outside
/// `[a-z0-9_-]` (and a leading `*` label) is refused.
pub fn owner(zone: &str, name: &str) -> Result<String, RecordError> {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let lowered = name.to_ascii_lowercase();
    if lowered.is_empty() {
        return Err(RecordError::EmptyName);
    }
    if lowered == "@" || lowered == zone || lowered == format!("{zone}.") {
        return Ok("@".to_string());
    }
    let absolute = lowered.ends_with('.');
    let bare = lowered.strip_suffix('.').unwrap_or(&lowered);
    let suffix = format!(".{zone}");
    let relative = match bare.strip_suffix(&suffix) {
        Some(relative) => relative,
        None if absolute => {
            return Err(RecordError::OutsideZone {
                name: name.to_string(),
                zone: format!("{zone}."),
            });
        }
        None => bare,
    };
    if relative.len() + suffix.len() > MAX_NAME {
        return Err(RecordError::NameTooLong(name.to_string()));
    }
    for (index, label) in relative.split('.').enumerate() {
        let ok = if label == "*" {
            index == 0
        } else {
            is_label(label)
        };
        if !ok {
            return Err(RecordError::BadLabel {
                name: name.to_string(),
                label: label.to_string(),
            });
        }
    }
    Ok(relative.to_string())
}

/// Whether `label` is 1-63 bytes of `[a-z0-9_-]` not starting or ending with `-`.
fn is_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Parses one value of `kind` into its canonical form.
pub fn canonical_value(kind: RecordKind, value: &str) -> Result<String, RecordError> {
    let bad = |why| RecordError::BadValue {
        kind,
        value: value.to_string(),
        why,
    };
    match kind {
        RecordKind::A => value
            .parse::<Ipv4Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| bad("not an IPv4 address")),
        RecordKind::Aaaa => value
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| bad("not an IPv6 address")),
        RecordKind::Cname => {
            let lowered = value.to_ascii_lowercase();
            let bare = lowered.strip_suffix('.').unwrap_or(&lowered);
            if bare.is_empty() {
                return Err(bad("empty target"));
            }
            if bare.len() > MAX_NAME {
                return Err(bad("target longer than 253 characters"));
            }
            if !bare.split('.').all(is_label) {
                return Err(bad(
                    "target labels must be 1-63 characters of a-z, 0-9, '_' and inner '-'",
                ));
            }
            Ok(format!("{bare}."))
        }
        RecordKind::Txt => {
            if value.len() > MAX_TXT {
                return Err(bad("longer than 2048 bytes"));
            }
            if value.chars().any(char::is_control) {
                return Err(bad("holds control characters (newlines, tabs, ...)"));
            }
            Ok(value.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_made_relative() {
        let z = "localhost.";
        assert_eq!(owner(z, "team-a").unwrap(), "team-a");
        assert_eq!(owner(z, "Team-A.localhost").unwrap(), "team-a");
        assert_eq!(owner(z, "team-a.localhost.").unwrap(), "team-a");
        assert_eq!(owner(z, "localhost.").unwrap(), "@");
        assert_eq!(owner(z, "@").unwrap(), "@");
        assert_eq!(
            owner(z, "_acme-challenge.team-a").unwrap(),
            "_acme-challenge.team-a"
        );
        assert_eq!(owner(z, "*.team-a").unwrap(), "*.team-a");
    }

    #[test]
    fn owners_that_could_break_a_zone_file_are_refused() {
        let z = "localhost.";
        for bad in [
            "",
            "a b",
            "a\nb",
            "a;b",
            "a\"b",
            "a'b",
            "a\\b",
            "a(b",
            "a..b",
            ".a",
            "-a",
            "a-",
            "a.*",
            "ä",
            "example.com.",
            "a$b",
            &"a".repeat(64),
            &format!("{}.x", "a.".repeat(130)),
        ] {
            assert!(owner(z, bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn values_are_canonical() {
        assert_eq!(
            canonical_value(RecordKind::A, "10.0.0.1").unwrap(),
            "10.0.0.1"
        );
        assert!(canonical_value(RecordKind::A, "10.0.0.256").is_err());
        assert!(canonical_value(RecordKind::A, "10.0.0.1 ; x").is_err());
        assert_eq!(
            canonical_value(RecordKind::Aaaa, "2001:DB8:0::1").unwrap(),
            "2001:db8::1"
        );
        assert_eq!(
            canonical_value(RecordKind::Cname, "Web.Example.com").unwrap(),
            "web.example.com."
        );
        assert!(canonical_value(RecordKind::Cname, "a b.com").is_err());
        assert!(canonical_value(RecordKind::Txt, "a\nb").is_err());
        assert!(canonical_value(RecordKind::Txt, "say \"hi\" \\ ; ok").is_ok());
        assert!(canonical_value(RecordKind::Txt, &"x".repeat(MAX_TXT + 1)).is_err());
    }
}

/// The whole zone at one serial, as read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Zone origin, fully qualified with a trailing dot (`localhost.`).
    pub origin: String,
    /// SOA serial of this state (0 before the first change).
    pub serial: u32,
    /// Every record set, sorted by owner (apex first) then type.
    pub sets: Vec<RecordSet>,
}

impl Zone {
    /// The set of `kind` at `owner` (relative), if any.
    pub fn get(&self, owner: &str, kind: RecordKind) -> Option<&RecordSet> {
        self.sets
            .iter()
            .find(|s| s.owner == owner && s.kind == kind)
    }
}
