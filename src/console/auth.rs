//! Who may change state through the console, checked on every action before it runs:
//!
//! 1. read-only mode (`CONSOLE_READ_ONLY`, or no `CONSOLE_TOKEN` at all) refuses every action;
//! 2. a cross-site request is refused: an `Origin` that is not the console's own host, or a
//!    browser's `Sec-Fetch-Site` other than `same-origin`;
//! 3. CSRF: the request must carry `X-CSRF-Token` equal to this process' token, which the page
//!    gets embedded in its HTML (and API clients from `GET /api/session`); another site can neither
//!    read it (no CORS) nor make a browser send the header;
//! 4. the admin's token, `Authorization: Bearer <CONSOLE_TOKEN>`, compared in constant time.
//!
//! The token is never a cookie, so a browser never attaches it on its own.

use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::config::ConsoleConfig;

/// The checks of one console process.
pub struct Guard {
    token: Option<String>,
    read_only: bool,
    csrf: String,
}

impl Guard {
    /// The guard for `config`, with a fresh CSRF token.
    pub fn new(config: &ConsoleConfig) -> Self {
        let token = config.console_token.clone().filter(|t| !t.is_empty());
        Self {
            read_only: config.console_read_only || token.is_none(),
            token,
            csrf: hex::encode(rand::random::<[u8; 32]>()),
        }
    }

    /// Whether actions are offered at all.
    pub fn actions_allowed(&self) -> bool {
        !self.read_only
    }

    /// The CSRF token pages and API clients send back in `X-CSRF-Token`.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Allows an action, or says why not (403 read-only / cross-site / CSRF, 401 token).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let refuse = |status, why: &str| Err(ApiError(status, why.to_string()));
        if self.read_only {
            return refuse(
                StatusCode::FORBIDDEN,
                "refused: the console is read-only (CONSOLE_READ_ONLY, or no CONSOLE_TOKEN set)",
            );
        }
        if !same_origin(headers) {
            return refuse(StatusCode::FORBIDDEN, "refused: cross-site request");
        }
        let csrf = header_str(headers, "x-csrf-token");
        if !equal(csrf.unwrap_or(""), &self.csrf) {
            return refuse(
                StatusCode::FORBIDDEN,
                "refused: missing or wrong CSRF token (X-CSRF-Token; reload the page)",
            );
        }
        let given = header_str(headers, header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        match &self.token {
            Some(token) if !given.is_empty() && equal(given, token) => Ok(()),
            _ => refuse(
                StatusCode::UNAUTHORIZED,
                "refused: an admin token is required (Authorization: Bearer <CONSOLE_TOKEN>)",
            ),
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a browser says the request comes from the console's own pages (requests without these
/// headers, from scripts, pass: they carry no ambient credentials anyway).
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = header_str(headers, "sec-fetch-site")
        && site != "same-origin"
    {
        return false;
    }
    match header_str(headers, header::ORIGIN.as_str()) {
        None => true,
        Some(origin) => {
            let host = header_str(headers, header::HOST.as_str()).unwrap_or("");
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            !host.is_empty() && origin_host == host
        }
    }
}

/// Constant-time equality of two secrets (through their digests, so lengths leak nothing).
fn equal(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard(token: Option<&str>, read_only: bool) -> Guard {
        Guard::new(&ConsoleConfig {
            console_addr: None,
            console_token: token.map(str::to_string),
            console_read_only: read_only,
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn each_check_refuses_with_its_status() {
        let g = guard(Some("s3cret"), false);
        let csrf = g.csrf().to_string();
        let ok = [
            ("host", "127.0.0.1:9185"),
            ("origin", "http://127.0.0.1:9185"),
            ("sec-fetch-site", "same-origin"),
            ("x-csrf-token", csrf.as_str()),
            ("authorization", "Bearer s3cret"),
        ];
        assert!(g.check(&headers(&ok)).is_ok());
        let status = |pairs: &[(&'static str, &str)]| g.check(&headers(pairs)).unwrap_err().0;
        assert_eq!(status(&ok[..4]), StatusCode::UNAUTHORIZED);
        let mut wrong = ok;
        wrong[4] = ("authorization", "Bearer nope");
        assert_eq!(status(&wrong), StatusCode::UNAUTHORIZED);
        let mut no_csrf = ok.to_vec();
        no_csrf.remove(3);
        assert_eq!(status(&no_csrf), StatusCode::FORBIDDEN);
        let mut foreign = ok;
        foreign[1] = ("origin", "http://evil.example");
        assert_eq!(status(&foreign), StatusCode::FORBIDDEN);
        let mut cross = ok;
        cross[2] = ("sec-fetch-site", "cross-site");
        assert_eq!(status(&cross), StatusCode::FORBIDDEN);
        // No token configured, or read-only: nothing passes.
        let read_only = guard(Some("s3cret"), true);
        assert!(!read_only.actions_allowed());
        let no_token = guard(None, false);
        assert!(!no_token.actions_allowed());
        assert_eq!(
            no_token.check(&headers(&ok)).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }
}
