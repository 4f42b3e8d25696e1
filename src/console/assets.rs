//! The web UI: one HTML page, its script and its style sheet, embedded in the binary at compile
//! time (no CDN, no Node toolchain at run time), and the security headers of every answer.
//!
//! The page is plain HTML + JavaScript (`assets/app.js`) that renders each view from the JSON API
//! with DOM calls (never `innerHTML` with data), listens to `/api/events`, and receives the CSRF
//! token in a `<meta>` tag. The Content-Security-Policy allows only the console's own scripts,
//! styles and connections.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::Console;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// The page and its assets.
pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .route("/favicon.svg", get(icon))
}

/// The page, carrying this process' CSRF token.
async fn index(State(console): State<Arc<Console>>) -> Html<String> {
    Html(INDEX.replace("{{csrf}}", console.guard.csrf()))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

/// What every answer carries: only our own scripts, styles and connections; no framing, no
/// sniffing, no referrer, nothing cached (the data changes all the time and may be private).
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
