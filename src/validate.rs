//! Validation of the untrusted strings that reach Traefik rules, zone files, file paths and container names.
//!
//! Everything a producer sends is untrusted. A slug becomes part of a container name, a Traefik router
//! name, a backtick-quoted rule and a DNS owner name, so it must be a lowercase DNS label and nothing
//! else: `[a-z0-9]` with inner `-`, 1 to 50 characters (so every derived name, up to `sandbox-<slug>-data`, is one label),
//! and not a name the platform keeps for itself (`ns`, `www`, ...). Domain names are sequences of such labels
//! (with an optional leading `*.` where a wildcard is meant).

use thiserror::Error;

/// Why a string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidName {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "{what} {value:?} is not a lowercase DNS label (only a-z, 0-9 and inner '-', at most 63 characters)"
    )]
    NotALabel { what: &'static str, value: String },
    #[error(
        "slug {value:?} is reserved for the platform (reserved: ns, www, api, traefik, portal, admin, mail, dns, acme)"
    )]
    Reserved { value: String },
}

/// Longest DNS label.
pub const MAX_LABEL: usize = 63;
/// Longest domain name in presentation form, without the trailing dot.
pub const MAX_DOMAIN: usize = 253;

/// Checks that `value` is one lowercase DNS label: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes.
pub fn dns_label(what: &'static str, value: &str) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(InvalidName::Empty { what });
    }
    if value.len() > MAX_LABEL {
        return Err(InvalidName::TooLong {
            what,
            value: value.to_string(),
            max: MAX_LABEL,
        });
    }
    let bytes = value.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let edges_ok = bytes[0] != b'-' && bytes[bytes.len() - 1] != b'-';
    if inner_ok && edges_ok {
        Ok(())
    } else {
        Err(InvalidName::NotALabel {
            what,
            value: value.to_string(),
        })
    }
}

/// Longest slug: every name derived from it must stay one DNS label (Traefik router and
/// certificate names are checked as such), and the longest the shipped templates derive,
/// `sandbox-<slug>-data`, is then exactly 63 characters (`sandbox-<slug>-api`, the router,
/// `team-<slug>-net`, the certificate name `sandbox-<slug>` are shorter).
pub const MAX_SLUG: usize = MAX_LABEL - "sandbox-".len() - "-data".len();

/// Slugs a tenant can't take: names the platform serves itself (`ns` is a platform record; the
/// others are hosts of the platform next to the tenants).
pub const RESERVED_SLUGS: [&str; 9] = [
    "ns", "www", "api", "traefik", "portal", "admin", "mail", "dns", "acme",
];

/// Checks a team or sandbox slug: a lowercase DNS label of at most [`MAX_SLUG`] characters, not
/// one of [`RESERVED_SLUGS`].
pub fn slug(value: &str) -> Result<(), InvalidName> {
    dns_label("slug", value)?;
    if value.len() > MAX_SLUG {
        return Err(InvalidName::TooLong {
            what: "slug",
            value: value.to_string(),
            max: MAX_SLUG,
        });
    }
    if RESERVED_SLUGS.contains(&value) {
        return Err(InvalidName::Reserved {
            value: value.to_string(),
        });
    }
    Ok(())
}

/// Checks the names derived from a tenant slug under `domain`: the longest,
/// `_acme-challenge.<slug>.<domain>`, must fit a domain name (253 characters).
pub fn tenant_names(slug: &str, domain: &str) -> Result<(), InvalidName> {
    let challenge = format!("_acme-challenge.{slug}.{}", domain.trim_end_matches('.'));
    if challenge.len() > MAX_DOMAIN {
        return Err(InvalidName::TooLong {
            what: "derived name",
            value: challenge,
            max: MAX_DOMAIN,
        });
    }
    Ok(())
}

/// Checks a domain name made of lowercase DNS labels (`a.b.c`, trailing dot allowed).
/// With `allow_wildcard`, the first label may be `*`.
pub fn domain(what: &'static str, value: &str, allow_wildcard: bool) -> Result<(), InvalidName> {
    let name = value.strip_suffix('.').unwrap_or(value);
    if name.is_empty() {
        return Err(InvalidName::Empty { what });
    }
    if name.len() > MAX_DOMAIN {
        return Err(InvalidName::TooLong {
            what,
            value: value.to_string(),
            max: MAX_DOMAIN,
        });
    }
    for (index, label) in name.split('.').enumerate() {
        if index == 0 && allow_wildcard && label == "*" {
            continue;
        }
        dns_label(what, label).map_err(|_| InvalidName::NotALabel {
            what,
            value: value.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_labels() {
        for ok in ["a", "team-a", "0day", "x1-2-3", &"a".repeat(MAX_SLUG)] {
            assert_eq!(slug(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_could_break_a_rule_a_zone_or_a_path() {
        for bad in [
            "",
            "Team",
            "team.a",
            "-team",
            "team-",
            "te`am",
            "a`) || Host(`b",
            "a||b",
            "a b",
            "a\nb",
            "a;b",
            "../x",
            "ä",
            &"a".repeat(64),
            &"a".repeat(MAX_SLUG + 1),
            "ns",
            "www",
        ] {
            assert!(slug(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn domains_and_wildcards() {
        assert!(domain("domain", "team-a.localhost", false).is_ok());
        assert!(domain("domain", "team-a.localhost.", false).is_ok());
        assert!(domain("domain", "*.localhost", true).is_ok());
        assert!(domain("domain", "*.localhost", false).is_err());
        assert!(domain("domain", "a.*.localhost", true).is_err());
        assert!(domain("domain", "a..b", false).is_err());
        assert!(domain("domain", "a.b c", false).is_err());
    }

    #[test]
    fn the_schemas_refuse_what_slug_refuses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queues/schemas");
        for kind in ["team", "sandbox"] {
            for action in ["provision", "delete"] {
                let path = dir.join(format!("{kind}.{action}.json"));
                let text = std::fs::read_to_string(&path).unwrap();
                let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
                let slug = &schema["properties"]["slug"];
                assert_eq!(slug["maxLength"], MAX_SLUG, "{path:?}");
                let reserved: Vec<&str> = slug["not"]["enum"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                assert_eq!(reserved, RESERVED_SLUGS, "{path:?}");
            }
        }
    }
}
