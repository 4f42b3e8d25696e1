//! A real headless Chromium for the console's tests, driven over WebDriver (Debian's `chromium`
//! and `chromium-driver`, installed by scripts/setup.sh): chromedriver started on a free port and
//! killed on drop, each browser with a fresh profile. Plus a minimal HTTP/1.0 client and
//! Server-Sent Events reader, so the API tests read exactly what goes over the wire.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A chromedriver process, killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver and waits until it answers.
    pub fn start() -> Self {
        let port = super::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (package chromium-driver; scripts/setup.sh installs it)");
        let driver = Self {
            child,
            port,
            profile: tempfile::tempdir().expect("profile dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A new headless Chromium session (1280×1000). The flags keep Chromium off the network
    /// (this machine has none: without them it stalls on background requests).
    pub async fn browser(&self) -> Client {
        let profile = format!("--user-data-dir={}", self.profile.path().display());
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", profile,
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("start a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of the first element matching `css` (empty when none).
pub async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// How many elements match `css`.
pub async fn count(client: &Client, css: &str) -> usize {
    client
        .find_all(Locator::Css(css))
        .await
        .map(|v| v.len())
        .unwrap_or(0)
}

/// Polls until `css` matches an element whose text contains `needle`, or panics after `timeout`.
pub async fn wait_text(client: &Client, css: &str, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let found = text(client, css).await;
        if found.contains(needle) {
            return found;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {css:?} to contain {needle:?}; it says {found:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the first element matching `css`.
pub async fn click(client: &Client, css: &str) {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Saves a screenshot of the page as `target/console-screenshots/<name>.png`; returns the path.
pub async fn screenshot(client: &Client, name: &str) -> std::path::PathBuf {
    let png = client.screenshot().await.expect("screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    path
}

/// One HTTP/1.0 exchange (the server closes the connection after the answer, which is not
/// chunked): status and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the console");
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// An open event stream.
pub struct SseStream {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

impl SseStream {
    /// Opens `path` with an optional `Last-Event-ID`.
    pub async fn open(addr: std::net::SocketAddr, path: &str, last_event_id: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to the console");
        let mut request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut lines = BufReader::new(stream).lines();
        // Status line and headers.
        let status = lines.next_line().await.expect("read").expect("status line");
        assert!(status.contains(" 200 "), "event stream refused: {status}");
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.is_empty() {
                break;
            }
        }
        Self { lines }
    }

    /// The next event (comments and keep-alives skipped), or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut event = Sse::default();
        let mut any = false;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .ok()?
                .ok()??;
            if line.is_empty() {
                if any && !event.data.is_empty() {
                    return Some(event);
                }
                event = Sse::default();
                any = false;
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                event.event = v.trim().to_string();
                any = true;
            } else if let Some(v) = line.strip_prefix("id:") {
                event.id = Some(v.trim().to_string());
                any = true;
            } else if let Some(v) = line.strip_prefix("data:") {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                any = true;
            }
            // Anything else: a comment (keep-alive).
        }
    }

    /// The next event named `name` within `timeout` (others skipped).
    pub async fn next_named(&mut self, name: &str, timeout: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            if event.event == name {
                return Some(event);
            }
        }
    }
}
