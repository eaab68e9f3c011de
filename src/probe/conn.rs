//! Opening a connection to an engine: resolve, TCP connect, TLS for `https`, each step's
//! failure classified (DESIGN §2). What comes out is a [`Stream`], which the pool keeps
//! idle between probes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd as _, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::classify;
use super::{FailureKind, ProbeFailure};

/// A connection to an engine, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }

    /// The socket's descriptor (for [`is_quiet`] while hyper holds the stream).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    /// Whether an idle connection can carry another request: [`is_quiet`].
    pub(crate) fn is_fit_for_reuse(&self) -> bool {
        is_quiet(self.raw_fd())
    }
}

/// Whether an idle connection's socket can carry another request: the engine has neither
/// closed it (a half-closed keep-alive connection reads as end of file) nor sent anything
/// unasked. One `recv(MSG_PEEK | MSG_DONTWAIT)`, nothing consumed. For TLS, any byte waiting
/// is a close-notify or garbage: either way not fit. `fd` must be an open socket its caller
/// owns (through the stream or the HTTP/1 connection around it).
pub(crate) fn is_quiet(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a valid descriptor its caller owns and a one-byte buffer that lives for the
    // call.
    let read = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    read < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where one probe goes, read once from its URL.
pub(crate) struct Target<'a> {
    pub https: bool,
    /// Without the brackets of an IPv6 literal.
    pub host: &'a str,
    pub port: u16,
}

/// Resolves `target` (an IP literal as is, a name through the system resolver), connects
/// to its addresses in order until one answers, and does the TLS handshake for `https`.
pub(crate) async fn connect(
    target: &Target<'_>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Stream, ProbeFailure> {
    let addresses: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => match tokio::net::lookup_host((target.host, target.port)).await {
            Ok(found) => found.collect(),
            Err(error) => {
                return Err(ProbeFailure {
                    kind: classify::local_errno(&error)
                        .map_or(FailureKind::Connect, |_| FailureKind::LocalError),
                    message: format!(
                        "could not resolve {}: {error}",
                        crate::bounded(target.host, 200)
                    ),
                });
            }
        },
    };
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => {
                // Requests are one small write each; waiting for more to coalesce only
                // adds latency.
                let _ = tcp.set_nodelay(true);
                if !target.https {
                    return Ok(Stream::Plain(tcp));
                }
                return handshake(target, tcp, tls).await.map(Stream::Tls);
            }
            Err(error) => last = Some(classify::connect_error(&error, address)),
        }
    }
    Err(last.unwrap_or_else(|| ProbeFailure {
        kind: FailureKind::Connect,
        message: format!(
            "{} resolves to no address",
            crate::bounded(target.host, 200)
        ),
    }))
}

async fn handshake(
    target: &Target<'_>,
    tcp: TcpStream,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<TlsStream<TcpStream>>, ProbeFailure> {
    let name = ServerName::try_from(target.host.to_owned()).map_err(|_| ProbeFailure {
        kind: FailureKind::InvalidEndpoint,
        message: format!(
            "{} is not a name a TLS certificate can be checked against",
            crate::bounded(target.host, 200)
        ),
    })?;
    TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map(Box::new)
        .map_err(|error| classify::tls_error(&error))
}
