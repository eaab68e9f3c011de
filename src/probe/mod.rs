//! One HTTP probe of one engine: `GET {endpoint}{path}` → [`ProbeOutcome`] (DESIGN §2,
//! §16). What is asked (path, accepted statuses, headers, time bound) is a [`ProbeSpec`];
//! [`ProbeSpec::default`] is the seed's probe of `/healthz`.
//!
//! This module knows HTTP and nothing else. It never fails: every problem, including an
//! endpoint that does not parse, becomes a classified failed outcome.

pub mod spec;
pub mod tls;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Client, Url, redirect};

pub use spec::{ExpectedStatuses, ProbeHeaders, ProbeSpec};
pub use tls::TlsSetupError;

/// At most this much of a response body is read; the rest is discarded with the connection.
/// Enough for any sensible health document, small enough that a hostile engine streaming
/// gigabytes costs us nothing.
pub const BODY_LIMIT: usize = 4 * 1024;

/// Idle keep-alive connections (those within the budget's slots) are kept at least this
/// long, so a connection opened in one tick is reused in the next one at the default 15 s
/// interval.
const MIN_POOL_IDLE: Duration = Duration::from_secs(90);

pub const USER_AGENT: &str = concat!("healthprobe/", env!("CARGO_PKG_VERSION"));

/// Why a probe failed. The names are a contract: logs, metrics, snapshots, status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Timeout,
    Connect,
    Status,
    InvalidEndpoint,
    Tls,
    Protocol,
    /// Not the engine's failure: the worker's own machine could not attempt the probe (out
    /// of descriptors, ephemeral ports or buffers; DESIGN §2). Never counted for the engine,
    /// never written to a snapshot; only the `healthprobe.probes` outcome `local_error`.
    LocalError,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        Self::Timeout,
        Self::Connect,
        Self::Status,
        Self::InvalidEndpoint,
        Self::Tls,
        Self::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Status => "status",
            Self::InvalidEndpoint => "invalid_endpoint",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
            Self::LocalError => "local_error",
        }
    }

    /// The engine failure kinds (`ALL`) only: `local_error` never reaches a snapshot.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub kind: FailureKind,
    /// A readable sentence; becomes `last_error`.
    pub message: String,
}

/// The result of one probe.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    /// HTTP status received, `0` when none was.
    pub status: u16,
    /// `None` when the engine is healthy (status exactly 200).
    pub failure: Option<ProbeFailure>,
    pub latency: Duration,
    /// When the probe completed; becomes `occurred_at` of an event it causes.
    pub completed_at: DateTime<Utc>,
}

impl ProbeOutcome {
    pub fn is_healthy(&self) -> bool {
        self.failure.is_none()
    }

    /// The probe could not be attempted because of the worker's own machine (DESIGN §2):
    /// neither a success nor a failure of the engine.
    pub fn is_local_fault(&self) -> bool {
        self.failure
            .as_ref()
            .is_some_and(|f| f.kind == FailureKind::LocalError)
    }

    /// `ok` or the failure kind: the `outcome` attribute of `healthprobe.probes`.
    pub fn outcome_label(&self) -> &'static str {
        self.failure.as_ref().map_or("ok", |f| f.kind.as_str())
    }
}

/// Builds the probe URL of the default spec: `endpoint` with trailing `/` trimmed, plus
/// `/healthz`.
pub fn healthz_url(endpoint: &str) -> Result<Url, ProbeFailure> {
    probe_url(endpoint, spec::DEFAULT_PATH)
}

/// Builds the probe URL: `endpoint` with trailing `/` trimmed, plus `path` (which may carry
/// a query string; the endpoint's own query is dropped).
pub fn probe_url(endpoint: &str, path: &str) -> Result<Url, ProbeFailure> {
    let invalid = |why: String| ProbeFailure {
        kind: FailureKind::InvalidEndpoint,
        message: why,
    };
    // Parse the endpoint itself first: gluing "/healthz" onto "http://" would parse as a
    // host called "healthz".
    let mut url = Url::parse(endpoint.trim()).map_err(|e| {
        invalid(format!(
            "invalid engine endpoint {}: {e}",
            shorten(endpoint)
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "invalid engine endpoint {}: scheme {:?} is not http or https",
            shorten(endpoint),
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!(
            "invalid engine endpoint {}: no host",
            shorten(endpoint)
        )));
    }
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let joined = format!(
        "{}/{}",
        url.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url.set_query(query);
    url.set_fragment(None);
    Ok(url)
}

/// Keeps hostile endpoint strings (10 KiB of junk) out of log lines and snapshots.
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return format!("{text:?}");
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

/// Probes engines. Cheap to clone: the connection pools are shared.
#[derive(Clone)]
pub struct Prober {
    /// Keeps idle connections, as many per address as [`KeepAlive`] gives it slots.
    client: Client,
    /// Keeps none: each probe's connection is closed after use (`Connection: close`, so the
    /// engine closes first and holds the TIME_WAIT, not us).
    closing: Client,
    keepalive: Arc<KeepAlive>,
    /// The seed's probe with the configured timeout: what [`Prober::default_spec`] lends.
    default_spec: Arc<ProbeSpec>,
}

/// Why a [`Prober`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Builds a [`Prober`]: [`Prober::builder`].
#[derive(Debug, Clone)]
pub struct ProberBuilder {
    timeout: Duration,
    interval: Duration,
    keepalive_budget: usize,
    ca_bundle: Option<PathBuf>,
}

impl ProberBuilder {
    /// Keep at most `budget` idle connections in all; a probe that gets no slot connects,
    /// asks, and closes. Unbounded unless set (tests, tools).
    pub fn keepalive_budget(mut self, budget: usize) -> Self {
        self.keepalive_budget = budget;
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
        let builder = || {
            Client::builder()
                .user_agent(USER_AGENT)
                .redirect(redirect::Policy::none())
                .tcp_nodelay(true)
                .no_proxy()
                .http1_only()
                .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
        };
        let client = builder()
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(self.keepalive_budget)
            .build()?;
        let closing = builder().pool_max_idle_per_host(0).build()?;
        Ok(Prober {
            client,
            closing,
            keepalive: Arc::new(KeepAlive {
                budget: self.keepalive_budget,
                idle_timeout,
                table: Mutex::new(SlotTable {
                    addresses: HashMap::new(),
                    slots: 0,
                    last_purge: Instant::now(),
                }),
            }),
            default_spec: Arc::new(ProbeSpec {
                timeout: self.timeout,
                ..ProbeSpec::default()
            }),
        })
    }
}

/// How many kept-alive connections each engine address may hold: slots handed out by
/// demand, at most `budget` in all. An address gets one slot per probe of it in flight at
/// once, up to the budget, and keeps its slots while it is probed, so the set is stable
/// from tick to tick: engines at distinct addresses hold one each, games sharing one address
/// (one engine process or gateway for many games) hold as many as are probed at once. An
/// address not probed for the pool's idle timeout has lost its connections anyway and gives
/// its slots up. reqwest and hyper only bound idle connections per host, so this is what
/// bounds them in all: a probe goes over a kept-alive connection only while its address has
/// fewer probes in flight than slots, so each address holds at most its slots (and
/// `budget` per host in the pool guards against hyper's connect races).
struct KeepAlive {
    budget: usize,
    idle_timeout: Duration,
    table: Mutex<SlotTable>,
}

struct SlotTable {
    /// By a hash of scheme, host and port: a collision only makes two addresses share
    /// slots, and a `u64` costs no allocation per probe.
    addresses: HashMap<u64, AddressSlots>,
    /// The sum of every address's `slots`.
    slots: usize,
    last_purge: Instant,
}

struct AddressSlots {
    slots: usize,
    in_flight: usize,
    last_used: Instant,
}

/// A full slot table is swept for addresses gone quiet at most this often, so a fleet
/// beyond the budget costs one sweep per second rather than one per probe.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// A probe's hold on one of its address's slots, given back when the probe ends (or is
/// dropped half-way).
struct SlotHold<'a> {
    keep_alive: &'a KeepAlive,
    key: u64,
}

impl Drop for SlotHold<'_> {
    fn drop(&mut self) {
        let mut table = self.keep_alive.lock();
        if let Some(address) = table.addresses.get_mut(&self.key) {
            address.in_flight = address.in_flight.saturating_sub(1);
        }
    }
}

impl KeepAlive {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        // A std mutex: held for a map lookup, never across an await. A panic while it is
        // held leaves a table that is still consistent enough to use.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(url: &Url) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        url.scheme().hash(&mut hasher);
        url.host_str().hash(&mut hasher);
        url.port_or_known_default().hash(&mut hasher);
        hasher.finish()
    }

    /// A slot for a probe of `url` now, or `None`: that probe connects, asks and closes.
    fn hold(&self, url: &Url) -> Option<SlotHold<'_>> {
        if self.budget == 0 {
            return None;
        }
        let key = Self::key(url);
        let now = Instant::now();
        let mut table = self.lock();
        let table = &mut *table;
        if table.slots >= self.budget && now.duration_since(table.last_purge) >= PURGE_EVERY {
            let idle_timeout = self.idle_timeout;
            let mut freed = 0;
            table.addresses.retain(|_, address| {
                let keep =
                    address.in_flight > 0 || now.duration_since(address.last_used) < idle_timeout;
                if !keep {
                    freed += address.slots;
                }
                keep
            });
            table.slots -= freed;
            table.last_purge = now;
        }
        let has_room = table.slots < self.budget;
        let address = match table.addresses.get_mut(&key) {
            Some(address) => address,
            None if has_room => table.addresses.entry(key).or_insert(AddressSlots {
                slots: 0,
                in_flight: 0,
                last_used: now,
            }),
            None => return None,
        };
        address.last_used = now;
        if address.in_flight >= address.slots {
            if !has_room {
                return None;
            }
            address.slots += 1;
            table.slots += 1;
        }
        address.in_flight += 1;
        Some(SlotHold {
            keep_alive: self,
            key,
        })
    }
}

impl Prober {
    /// `timeout` bounds the default spec's probe end to end; `interval` sizes the
    /// keep-alive pool.
    pub fn builder(timeout: Duration, interval: Duration) -> ProberBuilder {
        ProberBuilder {
            timeout,
            interval,
            keepalive_budget: usize::MAX,
            ca_bundle: None,
        }
    }

    /// A prober with the system's roots and unbounded idle connections (tests, tools).
    pub fn new(timeout: Duration, interval: Duration) -> Result<Self, ProberError> {
        Self::builder(timeout, interval).build()
    }

    /// Like [`Prober::new`], keeping at most `budget` idle connections in all.
    pub fn with_keepalive_budget(
        timeout: Duration,
        interval: Duration,
        budget: usize,
    ) -> Result<Self, ProberError> {
        Self::builder(timeout, interval)
            .keepalive_budget(budget)
            .build()
    }

    /// The timeout of the default spec.
    pub fn timeout(&self) -> Duration {
        self.default_spec.timeout
    }

    /// The seed's probe (`/healthz`, `200`, no headers) with the configured timeout.
    pub fn default_spec(&self) -> &ProbeSpec {
        &self.default_spec
    }

    /// Probes one engine as `spec` says. Never panics, never returns an error: failures
    /// are outcomes.
    pub async fn probe(&self, endpoint: &str, spec: &ProbeSpec) -> ProbeOutcome {
        let started = Instant::now();
        let result = match probe_url(endpoint, &spec.path) {
            Ok(url) => self.fetch(url, spec).await,
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

    /// Sends the request and reads at most [`BODY_LIMIT`] bytes of the body. The body is
    /// read even on an unexpected status so that a small answer leaves the connection
    /// reusable.
    ///
    /// One timer bounds it all: reqwest's per-request timeout runs from the connect to the
    /// body's end, so a trickling engine is cut at `spec.timeout` as well.
    async fn fetch(&self, url: Url, spec: &ProbeSpec) -> Result<u16, (u16, ProbeFailure)> {
        let slot = self.keepalive.hold(&url);
        let mut request = if slot.is_some() {
            self.client.get(url.clone())
        } else {
            self.closing
                .get(url.clone())
                .header(reqwest::header::CONNECTION, "close")
        };
        request = request.timeout(spec.timeout);
        for (name, value) in spec.headers.iter() {
            request = request.header(name, value);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Err((0, classify(&error, &url, spec.timeout).await)),
        };
        let status = response.status().as_u16();
        let mut read = 0usize;
        while read < BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) => break,
                Err(error) => return Err((status, classify(&error, &url, spec.timeout).await)),
            }
        }
        drop(slot);
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
}

/// [`classify_error`], with reqwest's timeout said as what it is and an unreachable host
/// told apart by whose routing refused it.
async fn classify(error: &reqwest::Error, url: &Url, timeout: Duration) -> ProbeFailure {
    let failure = classify_error(error);
    if failure.kind == FailureKind::Timeout && error.is_timeout() {
        return ProbeFailure {
            kind: FailureKind::Timeout,
            message: format!("no complete answer within {timeout:?}"),
        };
    }
    if failure.kind == FailureKind::Connect
        && has_errno(error, libc::EHOSTUNREACH)
        && own_route_refuses(url).await
    {
        return ProbeFailure {
            kind: FailureKind::LocalError,
            message: format!(
                "the worker could not attempt the probe (errno {}, no route on the worker's side): {}",
                libc::EHOSTUNREACH,
                failure.message
            ),
        };
    }
    failure
}

/// Whether the worker's own routing table refuses `url`'s address: a UDP `connect` does
/// the kernel's route lookup and nothing else (no packet is sent), so it fails exactly when
/// the refusal is ours (no route, an `unreachable` route) and succeeds when the
/// `EHOSTUNREACH` came from the network (no neighbour answer, an ICMP from a router),
/// which is the engine's failure. Runs only on that rare error, once per probe.
async fn own_route_refuses(url: &Url) -> bool {
    let port = url.port_or_known_default().unwrap_or(80);
    let Some(host) = url.host_str() else {
        return false;
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let address: Option<IpAddr> = match literal.parse() {
        Ok(ip) => Some(ip),
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut found| found.next())
            .map(|socket| socket.ip()),
    };
    address.is_some_and(|ip| route_refuses(ip, port))
}

/// See [`own_route_refuses`].
pub fn route_refuses(ip: IpAddr, port: u16) -> bool {
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

/// Maps a reqwest error (and its cause chain) to a failure kind and a readable sentence.
fn classify_error(error: &reqwest::Error) -> ProbeFailure {
    let chain = error_chain(error);
    let kind = if let Some(errno) = local_errno(error) {
        return ProbeFailure {
            kind: FailureKind::LocalError,
            message: format!("the worker could not attempt the probe (errno {errno}): {chain}"),
        };
    } else if has_source::<rustls::Error>(error) {
        FailureKind::Tls
    } else if error.is_timeout() || has_io_kind(error, std::io::ErrorKind::TimedOut) {
        FailureKind::Timeout
    } else if error.is_connect() {
        // hyper-util wraps the rustls error in a boxed io::Error whose `source()` skips it,
        // so a handshake failure often shows only as text. These fragments are rustls'
        // own messages for a peer that does not speak TLS or speaks it badly.
        const TLS_MESSAGES: [&str; 7] = [
            "tls",
            "TLS",
            "certificate",
            "corrupt message",
            "received fatal alert",
            "peer is incompatible",
            "peer misbehaved",
        ];
        if TLS_MESSAGES.iter().any(|fragment| chain.contains(fragment)) {
            FailureKind::Tls
        } else {
            FailureKind::Connect
        }
    } else if [
        std::io::ErrorKind::ConnectionReset,
        std::io::ErrorKind::ConnectionAborted,
        std::io::ErrorKind::BrokenPipe,
    ]
    .into_iter()
    .any(|io_kind| has_io_kind(error, io_kind))
    {
        // The connection was made, then torn down under us: a transport failure.
        FailureKind::Connect
    } else {
        FailureKind::Protocol
    };
    ProbeFailure {
        kind,
        message: chain,
    }
}

/// `outer: inner: innermost`, without the URL reqwest puts in its own message (the
/// endpoint is already on every log line, and may be huge).
fn error_chain(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = error.source();
    if source.is_none() {
        parts.push(error.to_string());
    }
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// `errno` values that say the worker's own machine could not attempt the probe, not that
/// the engine is unreachable: descriptors (per process, system-wide), ephemeral ports or
/// local addresses, kernel buffers or memory, and `ENETUNREACH`: no route to the engine's
/// network in the worker's own routing table (its interface is down, its routes are gone;
/// the kernel answers `connect` with it before anything is sent). A remote router can in
/// principle answer an ICMP "network unreachable" that Linux reports the same way; routers
/// rarely send it, and a network path gone is still the checker's side of the storm
/// (DESIGN §15), not the engine's. `EHOSTUNREACH` is local only when the worker's own
/// routing refuses the address ([`route_refuses`]): otherwise it is a neighbour that does
/// not answer, which is the engine's failure.
const LOCAL_ERRNOS: [i32; 6] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::EADDRNOTAVAIL,
    libc::ENOBUFS,
    libc::ENOMEM,
    libc::ENETUNREACH,
];

/// The first `io::Error` in the chain whose OS error is one of [`LOCAL_ERRNOS`].
pub fn local_errno(error: &(dyn StdError + 'static)) -> Option<i32> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
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

fn has_errno(error: &(dyn StdError + 'static), errno: i32) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
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
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<E>())
        {
            return true;
        }
        source = cause.source();
    }
    false
}

fn has_io_kind(error: &(dyn StdError + 'static), kind: std::io::ErrorKind) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
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
    fn local_errnos_are_found_in_the_chain() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(local_errno(&emfile), Some(libc::EMFILE));
        let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        assert_eq!(local_errno(&wrapped), Some(libc::ENOBUFS));
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(local_errno(&refused), None);
        let no_route = std::io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(local_errno(&no_route), Some(libc::ENETUNREACH));
        // EHOSTUNREACH alone says nothing of whose routing refused: it needs the check.
        let unreachable = std::io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(local_errno(&unreachable), None);
        assert!(has_errno(
            &std::io::Error::other(unreachable),
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

    fn slots(budget: usize) -> KeepAlive {
        KeepAlive {
            budget,
            idle_timeout: Duration::from_secs(90),
            table: Mutex::new(SlotTable {
                addresses: HashMap::new(),
                slots: 0,
                last_purge: Instant::now(),
            }),
        }
    }

    #[test]
    fn one_address_gets_a_slot_per_probe_in_flight_and_keeps_them() {
        let keep_alive = slots(100);
        let url = healthz_url("http://127.0.0.1:8080/e/1").unwrap();
        let other_game = healthz_url("http://127.0.0.1:8080/e/2").unwrap();
        let holds: Vec<_> = (0..3)
            .map(|_| keep_alive.hold(&url).expect("room"))
            .collect();
        assert!(keep_alive.hold(&other_game).is_some(), "same address");
        assert_eq!(keep_alive.lock().slots, 4, "one per probe in flight");
        drop(holds);
        // Sequential probes reuse the slots the address already holds.
        for _ in 0..10 {
            assert!(keep_alive.hold(&url).is_some());
        }
        assert_eq!(keep_alive.lock().slots, 4);
        assert_eq!(keep_alive.lock().addresses.len(), 1);
    }

    #[test]
    fn slots_never_exceed_the_budget() {
        let keep_alive = slots(3);
        let urls: Vec<Url> = (0..5)
            .map(|i| healthz_url(&format!("http://127.0.0.{}:80", i + 1)).unwrap())
            .collect();
        let admitted: Vec<bool> = urls.iter().map(|u| keep_alive.hold(u).is_some()).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        // A held address cannot grow past the budget either.
        let first = keep_alive.hold(&urls[0]).expect("its slot is free again");
        assert!(
            keep_alive.hold(&urls[0]).is_none(),
            "no room for a second slot"
        );
        drop(first);
        assert_eq!(keep_alive.lock().slots, 3);
        assert!(slots(0).hold(&urls[0]).is_none(), "budget 0: never");
    }

    #[test]
    fn quiet_addresses_give_their_slots_up() {
        let keep_alive = slots(2);
        let a = healthz_url("http://127.0.0.1:80").unwrap();
        let b = healthz_url("http://127.0.0.2:80").unwrap();
        let c = healthz_url("http://127.0.0.3:80").unwrap();
        let held_b = keep_alive.hold(&b).unwrap();
        drop(keep_alive.hold(&a).unwrap());
        assert!(keep_alive.hold(&c).is_none(), "full");
        {
            let mut table = keep_alive.lock();
            let long_ago = Instant::now() - Duration::from_secs(600);
            table.last_purge = long_ago;
            for address in table.addresses.values_mut() {
                address.last_used = long_ago;
            }
        }
        assert!(keep_alive.hold(&c).is_some(), "a's slot was freed");
        assert!(
            keep_alive
                .lock()
                .addresses
                .contains_key(&KeepAlive::key(&b)),
            "b is in flight: it keeps its slot however long ago it started"
        );
        drop(held_b);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
    }
}
