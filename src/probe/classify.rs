//! Failures → [`FailureKind`] and a readable sentence (DESIGN §2), and the line between the
//! engine's failures and the worker's own faults.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};

use super::{FailureKind, ProbeFailure};

/// `errno` values that say the worker's own machine could not attempt the probe, not that
/// the engine is unreachable: descriptors (per process, system-wide), ephemeral ports or
/// local addresses, kernel buffers or memory, and `ENETUNREACH`: no route to the engine's
/// network in the worker's own routing table (its interface is down, its routes are gone;
/// the kernel answers `connect` with it before anything is sent). A remote router can in
/// principle answer an ICMP "network unreachable" that Linux reports the same way; routers
/// rarely send it, and a network path gone is the checker's side of the storm (DESIGN §15),
/// not the engine's. `EHOSTUNREACH` is local only when the worker's own routing refuses the
/// address ([`route_refuses`]): otherwise it is a neighbour that does not answer, which is
/// the engine's failure.
const LOCAL_ERRNOS: [i32; 6] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::EADDRNOTAVAIL,
    libc::ENOBUFS,
    libc::ENOMEM,
    libc::ENETUNREACH,
];

/// The first `io::Error` in the chain whose OS error is one of [`LOCAL_ERRNOS`].
pub(crate) fn local_errno(error: &(dyn StdError + 'static)) -> Option<i32> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            if let Some(code) = io.raw_os_error().filter(|c| LOCAL_ERRNOS.contains(c)) {
                return Some(code);
            }
            if let Some(inner) = io.get_ref()
                && let Some(code) = local_errno(inner)
            {
                return Some(code);
            }
        }
        source = cause.source();
    }
    None
}

/// Whether the worker's own routing table refuses `ip`: a UDP `connect` does the kernel's
/// route lookup and nothing else (no packet is sent), so it fails exactly when the refusal
/// is ours (no route, an `unreachable` or `prohibit` route) and succeeds when an
/// `EHOSTUNREACH` came from the network (no neighbour answer, an ICMP from a router).
/// Runs only on that rare error.
pub(crate) fn route_refuses(ip: IpAddr, port: u16) -> bool {
    let local: IpAddr = if ip.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let Ok(socket) = std::net::UdpSocket::bind((local, 0)) else {
        return false;
    };
    socket.connect((ip, port)).is_err_and(|e| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL)
        )
    })
}

fn local(errno: i32, what: &str) -> ProbeFailure {
    ProbeFailure {
        kind: FailureKind::LocalError,
        message: format!("the worker could not attempt the probe (errno {errno}): {what}"),
    }
}

/// A failed TCP connect to `address`.
pub(crate) fn connect_error(error: &io::Error, address: SocketAddr) -> ProbeFailure {
    let what = format!("connecting to {address}: {error}");
    if let Some(errno) = local_errno(error) {
        return local(errno, &what);
    }
    if error.raw_os_error() == Some(libc::EHOSTUNREACH)
        && route_refuses(address.ip(), address.port())
    {
        return local(
            libc::EHOSTUNREACH,
            &format!("{what} (no route on the worker's side)"),
        );
    }
    let kind = if error.kind() == io::ErrorKind::TimedOut {
        FailureKind::Timeout
    } else {
        FailureKind::Connect
    };
    ProbeFailure {
        kind,
        message: what,
    }
}

/// A failed TLS handshake: the engine's certificate, or a peer that does not speak TLS.
pub(crate) fn tls_error(error: &io::Error) -> ProbeFailure {
    let what = format!("TLS handshake: {}", chain(error));
    match local_errno(error) {
        Some(errno) => local(errno, &what),
        None => ProbeFailure {
            kind: FailureKind::Tls,
            message: what,
        },
    }
}

/// A failure of the HTTP exchange on an open connection (sending the request, reading the
/// answer's head or body).
pub(crate) fn http_error(error: &hyper::Error) -> ProbeFailure {
    let what = chain(error);
    if let Some(errno) = local_errno(error) {
        return local(errno, &what);
    }
    let kind = if error.is_timeout() || has_io_kind(error, io::ErrorKind::TimedOut) {
        FailureKind::Timeout
    } else if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
        FailureKind::Protocol
    } else if [
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::ConnectionAborted,
        io::ErrorKind::BrokenPipe,
    ]
    .into_iter()
    .any(|io_kind| has_io_kind(error, io_kind))
    {
        // The connection was made, then torn down under us: a transport failure.
        FailureKind::Connect
    } else if has_source::<rustls::Error>(error) {
        FailureKind::Tls
    } else {
        FailureKind::Protocol
    };
    ProbeFailure {
        kind,
        message: what,
    }
}

/// `outer: inner: innermost`, each distinct text once.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
fn has_errno(error: &(dyn StdError + 'static), errno: i32) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(errno) {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && has_errno(inner, errno)
            {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

fn has_source<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<E>() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<E>())
        {
            return true;
        }
        source = cause.source();
    }
    false
}

fn has_io_kind(error: &(dyn StdError + 'static), kind: io::ErrorKind) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errnos_are_found_in_the_chain() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(local_errno(&emfile), Some(libc::EMFILE));
        let wrapped = io::Error::other(io::Error::from_raw_os_error(libc::ENOBUFS));
        assert_eq!(local_errno(&wrapped), Some(libc::ENOBUFS));
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(local_errno(&refused), None);
        let no_route = io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(local_errno(&no_route), Some(libc::ENETUNREACH));
        // EHOSTUNREACH alone says nothing of whose routing refused: it needs the check.
        let unreachable = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(local_errno(&unreachable), None);
        assert!(has_errno(
            &io::Error::other(unreachable),
            libc::EHOSTUNREACH
        ));
        assert!(
            !route_refuses([127, 0, 0, 1].into(), 80),
            "loopback is routed"
        );
        assert_eq!(
            FailureKind::parse("local_error"),
            None,
            "never in a snapshot"
        );
    }

    #[test]
    fn connect_errors_are_classified() {
        let address = SocketAddr::from(([127, 0, 0, 1], 9));
        let refused = connect_error(&io::Error::from_raw_os_error(libc::ECONNREFUSED), address);
        assert_eq!(refused.kind, FailureKind::Connect);
        assert!(
            refused.message.contains("127.0.0.1:9"),
            "{}",
            refused.message
        );
        let emfile = connect_error(&io::Error::from_raw_os_error(libc::EMFILE), address);
        assert_eq!(emfile.kind, FailureKind::LocalError);
        // Loopback is routed here: an EHOSTUNREACH for it came from elsewhere.
        let unreachable = connect_error(&io::Error::from_raw_os_error(libc::EHOSTUNREACH), address);
        assert_eq!(unreachable.kind, FailureKind::Connect);
    }
}
