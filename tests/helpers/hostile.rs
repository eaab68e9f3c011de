//! Engines that misbehave at the TCP and HTTP level, on 127.0.0.1. One listener per
//! behaviour; every connection handler is bounded in bytes and time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// No hostile connection lives longer than this, whatever the client does.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// No hostile connection writes more than this.
const MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// Sends the status line, then one header byte every 100 ms.
    Slowloris,
    /// Sends header lines as fast as the client takes them.
    EndlessHeaders,
    /// `200 OK` with a chunked body that never ends.
    EndlessBody,
    /// Accepts, then resets the connection (RST).
    Reset,
    /// Answers `OK\n` with no status line, HTTP/0.9 style, and closes.
    Http09,
    /// Answers with a TLS alert record, as a TLS-only engine would to plain HTTP.
    SpeaksTls,
    /// Answers anything with plain-text garbage; used behind an `https://` endpoint.
    Garbage,
}

impl Hostility {
    pub const ALL: [Hostility; 7] = [
        Self::Slowloris,
        Self::EndlessHeaders,
        Self::EndlessBody,
        Self::Reset,
        Self::Http09,
        Self::SpeaksTls,
        Self::Garbage,
    ];
}

pub struct HostileEngine {
    pub addr: SocketAddr,
    pub hostility: Hostility,
    tasks: JoinSet<()>,
}

impl HostileEngine {
    pub async fn start(hostility: Hostility) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hostile engine");
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    let _ =
                        tokio::time::timeout(CONNECTION_LIFETIME, serve(stream, hostility)).await;
                });
                // Reap finished handlers so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            hostility,
            tasks,
        }
    }

    /// The endpoint for game `id` (a path, so many games can share one engine).
    pub fn endpoint(&self, id: &str) -> String {
        let scheme = if self.hostility == Hostility::Garbage {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/g/{id}", self.addr)
    }
}

impl Drop for HostileEngine {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn read_some(stream: &mut TcpStream) {
    let mut buf = [0u8; 2048];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
}

async fn serve(mut stream: TcpStream, hostility: Hostility) {
    match hostility {
        Hostility::Slowloris => {
            read_some(&mut stream).await;
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                .await
                .is_err()
            {
                return;
            }
            for _ in 0..300 {
                if stream.write_all(b"z").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Hostility::EndlessHeaders => {
            read_some(&mut stream).await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
            let mut written = 0;
            while written < MAX_BYTES && stream.write_all(line.as_bytes()).await.is_ok() {
                written += line.len();
            }
        }
        Hostility::EndlessBody => {
            read_some(&mut stream).await;
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "b".repeat(16 * 1024));
            let mut written = 0;
            while written < MAX_BYTES && stream.write_all(chunk.as_bytes()).await.is_ok() {
                written += chunk.len();
            }
        }
        Hostility::Reset => {
            read_some(&mut stream).await;
            // Deprecated because it blocks on drop; with a zero timeout it sends the RST at once.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
        Hostility::Http09 => {
            read_some(&mut stream).await;
            let _ = stream.write_all(b"OK\n").await;
        }
        Hostility::SpeaksTls => {
            read_some(&mut stream).await;
            // A fatal handshake_failure alert record.
            let _ = stream
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
                .await;
        }
        Hostility::Garbage => {
            read_some(&mut stream).await;
            let _ = stream
                .write_all(b"this is not TLS, this is not even HTTP\r\n\r\n")
                .await;
        }
    }
}
