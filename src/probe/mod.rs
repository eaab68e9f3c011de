//! One HTTP probe of one engine: `GET {endpoint}{path}` → [`ProbeOutcome`] (DESIGN §2,
//! §16). What is asked (path, accepted statuses, headers, time bound) is a [`ProbeSpec`];
//! [`ProbeSpec::default`] is the seed's probe of `/healthz`.
//!
//! HTTP/1.1 on hyper's own connection API (`hyper::client::conn::http1`): the prober keeps
//! its own per-address pool of idle connections ([`pool`], bounded by the descriptor
//! budget). Up to [`HTTP_STATES_KEPT`] of them, at addresses shared by several games, keep
//! their HTTP/1 state (hyper's sender, connection and buffers), so their next probe sends
//! at once; the others keep their socket alone and get their HTTP state made per probe, so
//! that an engine at its own address costs its socket and nothing more while idle. `https` goes through `tokio-rustls`
//! ([`tls`]). Here: which connection a probe goes over and what its answer means; the
//! exchange on one connection (the request, the answer within the body cap, whether the
//! connection can be kept) is `exchange`.
//!
//! This module knows HTTP and nothing else. It never fails: every problem, including an
//! endpoint that does not parse, becomes a classified failed outcome.

mod classify;
mod conn;
mod exchange;
mod outcome;
mod pool;
pub mod spec;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use hyper::client::conn::http1;
use url::Url;

#[cfg(test)]
pub(crate) use outcome::healthz_url;
pub(crate) use outcome::probe_url;
pub use outcome::{FailureKind, ProbeFailure, ProbeOutcome};
pub use spec::{ExpectedStatuses, ProbeHeaders, ProbeSpec};
pub use tls::TlsSetupError;

use conn::Target;
use exchange::{Exchange, Idle, request};
use pool::{KeepAlive, SlotHold};

/// At most this much of a response body is read; the rest is discarded with the connection.
/// Enough for any sensible health document, small enough that a hostile engine streaming
/// gigabytes costs us nothing.
pub(crate) const BODY_LIMIT: usize = 4 * 1024;

/// Idle keep-alive connections (those within the budget's slots) are kept at least this
/// long, so a connection opened in one tick is reused in the next one at the default 15 s
/// interval. (An engine that closes idle connections sooner costs a fresh connect: the
/// pool sees the close before it sends anything.)
const MIN_POOL_IDLE: Duration = Duration::from_secs(90);

pub const USER_AGENT: &str = concat!("healthprobe/", env!("CARGO_PKG_VERSION"));

/// By default at most this many idle connections keep their HTTP/1 state (hyper's sender and
/// connection with its read and write buffers, about 17 KiB each: 4.4 MiB in all); the
/// others keep their socket alone. Only connections of a shared address (one engine process
/// or gateway serving many games, [`pool::SlotHold::shared`]) keep it: they carry several
/// probes per tick, and keeping the state saves the handshake and its buffers on each
/// (1.3 µs of the prober's 14.7 at one address, `benches/stack.rs`). 256 is the highest
/// default probe concurrency (`limits.rs`): every probe in flight at one address finds a
/// connection with its state.
pub const HTTP_STATES_KEPT: usize = 256;

/// Probes engines. Cheap to clone: the connection pool is shared.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Inner>,
}

struct Inner {
    /// Idle connections per address, as many as the pool gives the address slots.
    keepalive: KeepAlive<Idle>,
    /// Idle connections that keep their HTTP/1 state now, and at most.
    states_kept: Arc<AtomicUsize>,
    max_states_kept: usize,
    tls: Arc<rustls::ClientConfig>,
    http1: http1::Builder,
    /// The seed's probe with the configured timeout: what [`Prober::default_spec`] lends.
    default_spec: ProbeSpec,
}

/// Why a [`Prober`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Builds a [`Prober`]: [`Prober::builder`].
#[derive(Debug, Clone)]
pub struct ProberBuilder {
    timeout: Duration,
    interval: Duration,
    keepalive_budget: usize,
    http_states_kept: usize,
    ca_bundle: Option<PathBuf>,
}

/// hyper's smallest read buffer limit: it bounds an answer's head (status line and
/// headers) at 8 KiB, far above any health answer's, and is allocated per probe, never
/// kept with an idle connection.
const READ_BUFFER_LIMIT: usize = 8 * 1024;

impl ProberBuilder {
    /// Keep at most `budget` idle connections in all; a probe that gets no slot connects,
    /// asks, and closes. Unbounded unless set (tests, tools).
    pub fn keepalive_budget(mut self, budget: usize) -> Self {
        self.keepalive_budget = budget;
        self
    }

    /// Let at most `count` idle connections keep their HTTP/1 state ([`HTTP_STATES_KEPT`]
    /// unless set; 0: every idle connection keeps its socket alone).
    pub fn http_states_kept(mut self, count: usize) -> Self {
        self.http_states_kept = count;
        self
    }

    /// Trust the certificates of this PEM file for `https` engines, beside the system's
    /// roots (`HEALTHPROBE_PROBE_CA`). Certificates are always verified.
    pub fn ca_bundle(mut self, path: Option<PathBuf>) -> Self {
        self.ca_bundle = path;
        self
    }

    pub fn build(self) -> Result<Prober, ProberError> {
        let tls = tls::client_config(self.ca_bundle.as_deref())?;
        let idle_timeout = MIN_POOL_IDLE.max(self.interval * 2);
        let mut http1 = http1::Builder::new();
        http1
            .max_buf_size(READ_BUFFER_LIMIT)
            // One write per request: the head is all there is.
            .writev(false);
        Ok(Prober {
            inner: Arc::new(Inner {
                keepalive: KeepAlive::new(self.keepalive_budget, idle_timeout),
                states_kept: Arc::new(AtomicUsize::new(0)),
                max_states_kept: self.http_states_kept,
                tls,
                http1,
                default_spec: ProbeSpec {
                    timeout: self.timeout,
                    ..ProbeSpec::default()
                },
            }),
        })
    }
}

impl Prober {
    /// `timeout` bounds the default spec's probe end to end; `interval` sizes the
    /// keep-alive pool's idle timeout.
    pub fn builder(timeout: Duration, interval: Duration) -> ProberBuilder {
        ProberBuilder {
            timeout,
            interval,
            keepalive_budget: usize::MAX,
            http_states_kept: HTTP_STATES_KEPT,
            ca_bundle: None,
        }
    }

    /// A prober with the system's roots and unbounded idle connections (tests, tools).
    pub fn new(timeout: Duration, interval: Duration) -> Result<Self, ProberError> {
        Self::builder(timeout, interval).build()
    }

    /// The seed's probe (`/healthz`, `200`, no headers) with the configured timeout.
    pub fn default_spec(&self) -> &ProbeSpec {
        &self.inner.default_spec
    }

    /// Probes one engine as `spec` says. Never panics, never returns an error: failures
    /// are outcomes.
    pub async fn probe(&self, endpoint: &str, spec: &ProbeSpec) -> ProbeOutcome {
        let started = Instant::now();
        let result = match probe_url(endpoint, &spec.path) {
            Ok(url) => {
                // One timer bounds it all: resolve, connect, TLS, request, head and body,
                // and the one retry of a stale connection. The status seen survives it.
                let status = AtomicU16::new(0);
                match tokio::time::timeout(spec.timeout, self.fetch(&url, spec, &status)).await {
                    Ok(result) => result,
                    Err(_) => Err((
                        status.load(Ordering::Relaxed),
                        ProbeFailure {
                            kind: FailureKind::Timeout,
                            message: format!("no complete answer within {:?}", spec.timeout),
                        },
                    )),
                }
            }
            Err(failure) => Err((0, failure)),
        };
        let latency = started.elapsed();
        let completed_at = Utc::now();
        match result {
            Ok(status) => ProbeOutcome {
                status,
                failure: None,
                latency,
                completed_at,
            },
            Err((status, failure)) => ProbeOutcome {
                status,
                failure: Some(failure),
                latency,
                completed_at,
            },
        }
    }

    /// Asks over an idle connection of the address when there is a fit one, else (or when
    /// it proves stale) over a fresh one.
    async fn fetch(
        &self,
        url: &Url,
        spec: &ProbeSpec,
        status: &AtomicU16,
    ) -> Result<u16, (u16, ProbeFailure)> {
        let host = url.host_str().unwrap_or_default();
        let target = Target {
            https: url.scheme() == "https",
            host: host.trim_start_matches('[').trim_end_matches(']'),
            port: url.port_or_known_default().unwrap_or(80),
        };
        let mut slot = self.inner.keepalive.hold(url);
        let keep = slot.is_some();
        let shared = slot.as_ref().is_some_and(SlotHold::shared);
        let idle = slot
            .as_mut()
            .and_then(SlotHold::take_idle)
            .filter(Idle::is_fit_for_reuse);
        let ask = || request(url, spec, keep).map_err(|failure| (0, failure));
        let mut outcome = Exchange::Stale;
        if let Some(idle) = idle {
            let http = match idle {
                Idle::Http(http) => Ok(*http),
                Idle::Socket(stream) => self.handshake(stream).await,
            };
            outcome = match http {
                Ok(http) => self.exchange(http, ask()?, true, shared, status).await,
                Err(failure) => Exchange::Failed(0, failure),
            };
        }
        if matches!(outcome, Exchange::Stale) {
            let stream = conn::connect(&target, &self.inner.tls)
                .await
                .map_err(|failure| (0, failure))?;
            outcome = match self.handshake(stream).await {
                Ok(http) => self.exchange(http, ask()?, false, shared, status).await,
                Err(failure) => Exchange::Failed(0, failure),
            };
        }
        match outcome {
            Exchange::Answered(status, idle) => {
                if let (Some(slot), Some(idle)) = (slot, idle) {
                    slot.check_in(idle);
                }
                if spec.expect.accepts(status) {
                    Ok(status)
                } else {
                    Err((
                        status,
                        ProbeFailure {
                            kind: FailureKind::Status,
                            message: format!("unexpected status {status}"),
                        },
                    ))
                }
            }
            Exchange::Failed(status, failure) => Err((status, failure)),
            Exchange::Stale => Err((
                0,
                ProbeFailure {
                    kind: FailureKind::Connect,
                    message: "the connection closed before an answer".into(),
                },
            )),
        }
    }
}

/// Reads one request head from `socket`, for the engines tests write: false when the
/// client closed first.
#[cfg(test)]
pub(crate) async fn read_request_head(socket: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Empty;

    use super::*;

    #[test]
    fn spec_paths_are_appended_with_their_query() {
        assert_eq!(
            probe_url("http://h:1/base/?old=1", "/ready?full=1")
                .unwrap()
                .as_str(),
            "http://h:1/base/ready?full=1"
        );
        assert_eq!(
            probe_url("http://h:1", "/").unwrap().as_str(),
            "http://h:1/"
        );
    }

    #[test]
    fn url_trims_trailing_slashes() {
        assert_eq!(
            healthz_url("http://127.0.0.1:8080/").unwrap().as_str(),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            healthz_url("http://h:1/base//").unwrap().as_str(),
            "http://h:1/base/healthz"
        );
        assert_eq!(
            healthz_url("https://engine.example").unwrap().as_str(),
            "https://engine.example/healthz"
        );
    }

    #[test]
    fn bad_endpoints_are_invalid() {
        for endpoint in [
            "",
            "not a url",
            "ftp://h/",
            "file:///etc/passwd",
            "http://",
            "127.0.0.1:80",
        ] {
            let failure = healthz_url(endpoint).expect_err(endpoint);
            assert_eq!(failure.kind, FailureKind::InvalidEndpoint, "{endpoint}");
        }
    }

    #[test]
    fn huge_endpoints_are_shortened_in_messages() {
        let endpoint = format!("gopher://{}", "x".repeat(10 * 1024));
        let failure = healthz_url(&endpoint).unwrap_err();
        assert!(failure.message.len() < 400, "{}", failure.message.len());
        assert!(
            failure.message.contains("10249 bytes"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn kinds_round_trip() {
        for kind in FailureKind::ENGINE_FAILURES {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn requests_carry_host_agent_and_spec_headers() {
        let url = probe_url("http://[::1]:8080/base", "/ready?full=1").unwrap();
        let spec = ProbeSpec {
            headers: ProbeHeaders::parse("X-Token=abc,Host=game.local").unwrap(),
            ..ProbeSpec::default()
        };
        let request = request(&url, &spec, true).unwrap();
        assert_eq!(request.uri(), "/base/ready?full=1");
        assert_eq!(request.headers()[http::header::USER_AGENT], USER_AGENT);
        assert_eq!(request.headers()["x-token"], "abc");
        assert_eq!(
            request.headers()[http::header::HOST],
            "game.local",
            "a configured Host replaces the endpoint's"
        );
        assert!(!request.headers().contains_key(http::header::CONNECTION));
        let closing = request_for("https://engine.example/", &ProbeSpec::default(), false);
        assert_eq!(closing.headers()[http::header::HOST], "engine.example");
        assert_eq!(closing.headers()[http::header::CONNECTION], "close");
        for (endpoint, host) in [
            ("http://[::1]:8080/", "[::1]:8080"),
            ("http://h:80/base", "h"),
            ("http://user@h:81/", "h:81"),
        ] {
            let request = request_for(endpoint, &ProbeSpec::default(), true);
            assert_eq!(request.headers()[http::header::HOST], host, "{endpoint}");
        }
    }

    fn request_for(endpoint: &str, spec: &ProbeSpec, keep: bool) -> Request<Empty<Bytes>> {
        request(&probe_url(endpoint, &spec.path).unwrap(), spec, keep).unwrap()
    }

    /// An engine that answers every request on a connection `200 ok`, kept alive, and
    /// half-closes after `answers_per_connection` answers; returns its address, the
    /// number of connections it accepted and the number it half-closed.
    async fn keep_alive_engine(
        answers_per_connection: usize,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let half_closed = Arc::new(AtomicUsize::new(0));
        let (counter, closes) = (accepted.clone(), half_closed.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let closes = closes.clone();
                tokio::spawn(async move {
                    for _ in 0..answers_per_connection {
                        if !read_request_head(&mut socket).await {
                            return;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.shutdown().await;
                    closes.fetch_add(1, Ordering::SeqCst);
                    // Hold the half-closed socket until the prober closes its side.
                    let _ = socket.read(&mut [0u8; 16]).await;
                });
            }
        });
        (address, accepted, half_closed)
    }

    /// Probes `engine` `count` times in a row, each answer healthy.
    async fn probe_healthy(prober: &Prober, engine: &str, count: usize, what: &str) {
        for i in 0..count {
            let outcome = prober.probe(engine, prober.default_spec()).await;
            assert!(outcome.is_healthy(), "{what}, probe {i}: {outcome:?}");
        }
    }

    /// Both ways of keeping an idle connection (with its HTTP/1 state, and its socket
    /// alone) reuse it, and replace one the engine half-closed without counting it. Only a
    /// shared address (two probes of it at once) keeps the state.
    #[tokio::test]
    async fn idle_connections_are_reused_with_or_without_their_http_state() {
        for states in [HTTP_STATES_KEPT, 0] {
            let prober = Prober::builder(Duration::from_secs(5), Duration::from_secs(1))
                .http_states_kept(states)
                .build()
                .unwrap();
            let kept = || prober.inner.states_kept.load(Ordering::SeqCst);
            let (engine, accepted, _) = keep_alive_engine(usize::MAX).await;
            probe_healthy(&prober, &engine, 5, &format!("{states} states")).await;
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "{states} states kept");
            assert_eq!(
                kept(),
                0,
                "an address probed once at a time keeps its socket alone"
            );

            // Two probes at once: the address holds two slots, and its connections keep
            // their state (the second probe's at once, the first's when next used).
            let (a, b) = tokio::join!(
                prober.probe(&engine, prober.default_spec()),
                prober.probe(&engine, prober.default_spec())
            );
            assert!(a.is_healthy() && b.is_healthy(), "{a:?} {b:?}");
            probe_healthy(&prober, &engine, 5, &format!("{states} states, shared")).await;
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "{states} states kept");
            assert_eq!(
                kept(),
                states.min(1),
                "the kept state's place is held while it is idle"
            );

            // One answer per connection, then a half-close: each probe finds its idle
            // connection closed and asks on a fresh one.
            let (engine, accepted, half_closed) = keep_alive_engine(1).await;
            for i in 0..3 {
                let outcome = prober.probe(&engine, prober.default_spec()).await;
                assert!(
                    outcome.is_healthy(),
                    "{states} states, probe {i}: {outcome:?}"
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                while half_closed.load(Ordering::SeqCst) <= i {
                    assert!(Instant::now() < deadline, "the engine did not half-close");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 3, "{states} states kept");
        }
    }
}
