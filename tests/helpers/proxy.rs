//! A TCP proxy between a worker and Postgres that can cut a connection at the worst moment:
//! right after forwarding a `COMMIT`, once the server has answered it, without passing the
//! answer on. The client cannot tell whether its transaction committed (it did).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

pub struct CommitCutter {
    pub port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CommitCutter {
    /// Listens on a loopback port and forwards every connection to `upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (armed, cuts) = (armed.clone(), cuts.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let (armed, cuts) = (armed.clone(), cuts.clone());
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                            pipe(client, server, armed, cuts).await;
                        }
                    });
                }
            }
        });
        Self {
            port,
            armed,
            cuts,
            task,
        }
    }

    /// The next `COMMIT` any client sends is forwarded, answered by the server, and then
    /// both sides of that connection are dropped.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many connections were cut after a `COMMIT`.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let cut = Arc::new(tokio::sync::Notify::new());
    let upstream = {
        let cut = cut.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let is_commit = chunk.windows(6).any(|w| w == b"COMMIT");
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
                if is_commit && armed.swap(false, Ordering::SeqCst) {
                    cut.notify_one();
                    return;
                }
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                read = server_read.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                () = cut.notified() => {
                    // The COMMIT went upstream: wait for the server's answer (it has
                    // committed), swallow it, and drop both sides.
                    let _ = server_read.read(&mut buf).await;
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    };
    tokio::join!(upstream, downstream);
}
