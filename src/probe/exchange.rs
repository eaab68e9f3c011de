//! One exchange on one connection: the HTTP/1 state hyper keeps for a connection, the
//! request of a probe, and reading its answer within [`BODY_LIMIT`]; what [`Prober`]
//! does with a connection once it has one.

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::task::Poll;

use bytes::Bytes;
use futures::FutureExt as _;
use http::{HeaderValue, Request, Version, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use url::{Position, Url};

use super::conn::{self, Stream};
use super::outcome::shorten;
use super::{BODY_LIMIT, FailureKind, ProbeFailure, ProbeSpec, Prober, USER_AGENT, classify};

type Http1Connection = http1::Connection<TokioIo<Stream>, Empty<Bytes>>;

/// An idle connection as the pool keeps it between probes.
pub(super) enum Idle {
    /// The socket alone: the next probe makes the HTTP/1 state anew.
    Socket(Stream),
    /// The socket with its HTTP/1 state: the next probe sends at once.
    Http(Box<Http>),
}

impl Idle {
    /// Whether it can carry another request ([`conn::is_quiet`]).
    pub(super) fn is_fit_for_reuse(&self) -> bool {
        match self {
            Self::Socket(stream) => stream.is_fit_for_reuse(),
            Self::Http(http) => !http.sender.is_closed() && conn::is_quiet(http.fd),
        }
    }
}

/// A connection's HTTP/1 state: hyper's request side and the connection that moves its
/// bytes, driven by the probe's own task (no task per connection).
pub(super) struct Http {
    sender: http1::SendRequest<Empty<Bytes>>,
    connection: Http1Connection,
    /// The socket's descriptor, owned by `connection`: the reuse check.
    fd: RawFd,
    /// Held while the state is kept idle (always, once it has been).
    kept: Option<StateTicket>,
}

/// One of the places for an idle connection's HTTP/1 state ([`HTTP_STATES_KEPT`]), given
/// back when the state is dropped.
pub(super) struct StateTicket(Arc<AtomicUsize>);

impl StateTicket {
    pub(super) fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                (kept < max).then_some(kept + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for StateTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one exchange on one connection went.
pub(super) enum Exchange {
    /// The answer's status, and the connection when it can carry another request.
    Answered(u16, Option<Idle>),
    /// A reused connection turned out closed before any answer: not the engine's failure,
    /// the probe goes again on a fresh connection.
    Stale,
    Failed(u16, ProbeFailure),
}

impl Prober {
    /// The HTTP/1 state of a connection made for one probe (kept after it when a
    /// [`StateTicket`] is free).
    pub(super) async fn handshake(&self, stream: Stream) -> Result<Http, ProbeFailure> {
        let fd = stream.raw_fd();
        let (sender, connection) = self
            .inner
            .http1
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|error| classify::http_error(&error))?;
        Ok(Http {
            sender,
            connection,
            fd,
            kept: None,
        })
    }

    /// One request and its answer on `http`: the head, then at most [`BODY_LIMIT`]
    /// bytes of the body. The body is read even on an unexpected status so that a small
    /// answer leaves the connection reusable; it is reusable only when the body ended
    /// within the cap, the engine did not ask to close, and nothing unasked followed.
    /// A reusable connection keeps its HTTP/1 state when it already had it, or when its
    /// address is `shared` and a [`StateTicket`] is free.
    pub(super) async fn exchange(
        &self,
        http: Http,
        request: Request<Empty<Bytes>>,
        reused: bool,
        shared: bool,
        status_seen: &AtomicU16,
    ) -> Exchange {
        let Http {
            mut sender,
            mut connection,
            fd,
            kept,
        } = http;
        let mut closed = false;
        if kept.is_some() {
            // A kept state's sender is ready once its connection has seen the last answer
            // end; a connection closed meanwhile says so here.
            let ready = drive(&mut connection, &mut closed, pin!(sender.ready())).await;
            if ready.is_err() {
                return Exchange::Stale;
            }
        }
        let response = drive(
            &mut connection,
            &mut closed,
            pin!(sender.send_request(request)),
        )
        .await;
        let response = match response {
            Ok(response) => response,
            Err(error) if reused && !is_engine_error(&error) => return Exchange::Stale,
            Err(error) => return Exchange::Failed(0, classify::http_error(&error)),
        };
        let status = response.status().as_u16();
        status_seen.store(status, Ordering::Relaxed);
        let keep_alive = response.version() == Version::HTTP_11
            && !response
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .any(|value| has_token(value, "close"));
        let mut body: Incoming = response.into_body();
        let mut read = 0usize;
        let mut ended = false;
        while read < BODY_LIMIT {
            match drive(&mut connection, &mut closed, body.frame()).await {
                None => {
                    ended = true;
                    break;
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len();
                    }
                }
                Some(Err(error)) => return Exchange::Failed(status, classify::http_error(&error)),
            }
        }
        let ended = ended || hyper::body::Body::is_end_stream(&body);
        drop(body);
        if !(ended && keep_alive) || closed {
            return Exchange::Answered(status, None);
        }
        // Only a shared address's connections are worth their state: they carry several
        // probes per tick. An engine at its own address asks once per interval, and
        // thousands of such states cost memory that kept creeping over a soak
        // (BENCHMARKS.md) for a handshake saved once every few seconds.
        let ticket = || {
            shared
                .then(|| StateTicket::take(&self.inner.states_kept, self.inner.max_states_kept))
                .flatten()
        };
        if let Some(kept) = kept.or_else(ticket) {
            // Keep the state: one more poll of the idle connection reads what is waiting
            // (hyper reads ahead): anything unasked, or the engine's close, finishes it.
            let finished =
                std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).now_or_never();
            if finished.is_some() {
                return Exchange::Answered(status, None);
            }
            let http = Http {
                sender,
                connection,
                fd,
                kept: Some(kept),
            };
            return Exchange::Answered(status, Some(Idle::Http(Box::new(http))));
        }
        // Hand the socket back: with the request side dropped, hyper finishes the
        // connection at once (no shutdown, nothing written) and returns what it holds.
        drop(sender);
        let finished =
            std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).now_or_never();
        if !matches!(finished, Some(Ok(()))) {
            return Exchange::Answered(status, None);
        }
        let parts = connection.into_parts();
        let reusable = parts.read_buf.is_empty();
        Exchange::Answered(
            status,
            reusable.then(|| Idle::Socket(parts.io.into_inner())),
        )
    }
}

/// Polls `future` and, beside it, the connection that moves its bytes (the connection is
/// driven by the probe's own task: no task per connection). `closed` records that the
/// connection has finished (the engine closed it, or it failed): `future` then resolves
/// from what hyper saw.
async fn drive<F: Future + Unpin>(
    connection: &mut Http1Connection,
    closed: &mut bool,
    mut future: F,
) -> F::Output {
    std::future::poll_fn(|cx| {
        if !*closed && connection.poll_without_shutdown(cx).is_ready() {
            *closed = true;
        }
        match std::pin::Pin::new(&mut future).poll(cx) {
            Poll::Ready(output) => Poll::Ready(output),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// An error that the engine's answer caused (bytes that are not HTTP), as opposed to a
/// connection that was closed or reset under the request, which on a reused connection is
/// the pool's staleness, not the engine's failure.
fn is_engine_error(error: &hyper::Error) -> bool {
    error.is_parse() || error.is_parse_status() || error.is_parse_too_large() || error.is_timeout()
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

/// The request of one probe: origin-form target, `Host` (unless the spec sets one),
/// `User-Agent`, the spec's headers, and `Connection: close` when the connection will not
/// be kept (so the engine closes first and holds the TIME_WAIT, not us). Built in place
/// (not through `http::request::Builder`, whose per-header conversions and error plumbing
/// cost a few per cent of a probe), the header map sized once.
pub(super) fn request(
    url: &Url,
    spec: &ProbeSpec,
    keep: bool,
) -> Result<Request<Empty<Bytes>>, ProbeFailure> {
    // The path and query as the URL holds them: a slice, not a copy.
    let target = &url[Position::BeforePath..Position::AfterQuery];
    let uri = http::Uri::try_from(target).map_err(|error| ProbeFailure {
        kind: FailureKind::InvalidEndpoint,
        message: format!(
            "no request can be made for {}: {error}",
            shorten(url.as_str())
        ),
    })?;
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(4 + spec.headers.iter().count());
    headers.append(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    headers.append(header::ACCEPT, HeaderValue::from_static("*/*"));
    if !spec.headers.iter().any(|(name, _)| name == header::HOST) {
        // `host[:port]` as the URL holds it (the port only when not the scheme's default).
        if let Ok(value) = HeaderValue::from_str(&url[Position::BeforeHost..Position::AfterPort]) {
            headers.append(header::HOST, value);
        }
    }
    for (name, value) in spec.headers.iter() {
        headers.append(name, value.clone());
    }
    if !keep {
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(request)
}
