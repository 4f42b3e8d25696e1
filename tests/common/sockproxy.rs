//! A Unix-socket proxy in front of the Docker engine's socket that a test can cut (every open
//! connection dropped, new ones refused) and restore: the engine lost mid-task, then back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// The proxy; cut on drop.
pub struct SocketProxy {
    path: PathBuf,
    upstream: PathBuf,
    _dir: tempfile::TempDir,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl SocketProxy {
    /// Listens on a fresh socket path, forwarding to `upstream`.
    pub fn start(upstream: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let proxy = Self {
            path: dir.path().join("docker.sock"),
            upstream: upstream.to_path_buf(),
            _dir: dir,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.restore();
        proxy
    }

    /// `unix://<path>`, for DOCKER_HOST.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Drops every connection and stops listening (the socket file goes).
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Listens again.
    pub fn restore(&self) {
        self.cut();
        let listener = UnixListener::bind(&self.path).expect("bind proxy socket");
        let (tasks, upstream) = (self.tasks.clone(), self.upstream.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = UnixStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
