//! A TCP proxy in front of a test Redis that can hold back (drop) the server's replies and then
//! cut every connection: a reply lost after the command ran, as a flaky network loses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops with the test's runtime.
pub struct Proxy {
    pub port: u16,
    drop_replies: Arc<AtomicBool>,
    drop_requests: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    /// Proxies 127.0.0.1:<free port> to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let drop_replies = Arc::new(AtomicBool::new(false));
        let drop_requests = Arc::new(AtomicBool::new(false));
        let (cut, cut_rx) = watch::channel(0u64);
        let dropping = drop_replies.clone();
        let swallowing = drop_requests.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(pipe(
                    client,
                    server,
                    dropping.clone(),
                    swallowing.clone(),
                    cut_rx.clone(),
                ));
            }
        });
        Self {
            port,
            drop_replies,
            drop_requests,
            cut,
        }
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, the server's replies are read and thrown away.
    pub fn drop_replies(&self) {
        self.drop_replies.store(true, Ordering::SeqCst);
    }

    /// From now on, the clients' commands are read and thrown away (Redis never sees them).
    pub fn drop_requests(&self) {
        self.drop_requests.store(true, Ordering::SeqCst);
    }

    /// Closes every open connection and lets everything through again.
    pub fn cut_and_heal(&self) {
        self.cut.send_modify(|g| *g += 1);
        self.drop_replies.store(false, Ordering::SeqCst);
        self.drop_requests.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    dropping: Arc<AtomicBool>,
    swallowing: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    cut.borrow_and_update();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if swallowing.load(Ordering::SeqCst) {
                continue;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if dropping.load(Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}
