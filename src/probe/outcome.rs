//! What a probe yields: [`ProbeOutcome`], its [`FailureKind`]s (a contract: logs, metrics,
//! snapshots, the status API), and the probe URL built from an engine's endpoint.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

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
    /// Every kind that counts against the engine: all but [`Self::LocalError`].
    pub(crate) const ENGINE_FAILURES: [FailureKind; 6] = [
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

    /// The engine failure kinds ([`Self::ENGINE_FAILURES`]) only: `local_error` never
    /// reaches a snapshot.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ENGINE_FAILURES
            .into_iter()
            .find(|kind| kind.as_str() == name)
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
    pub(crate) fn outcome_label(&self) -> &'static str {
        self.failure.as_ref().map_or("ok", |f| f.kind.as_str())
    }
}

/// Builds the probe URL of the default spec: `endpoint` with trailing `/` trimmed, plus
/// `/healthz`. Tests only: the worker builds every URL from its spec ([`probe_url`]).
#[cfg(test)]
pub(crate) fn healthz_url(endpoint: &str) -> Result<Url, ProbeFailure> {
    probe_url(endpoint, super::spec::DEFAULT_PATH)
}

/// Builds the probe URL: `endpoint` with trailing `/` trimmed, plus `path` (which may carry
/// a query string; the endpoint's own query is dropped).
pub(crate) fn probe_url(endpoint: &str, path: &str) -> Result<Url, ProbeFailure> {
    if let Some(url) = plain_probe_url(endpoint, path) {
        return Ok(url);
    }
    general_probe_url(endpoint, path)
}

/// [`probe_url`] for the endpoints nearly every fleet has (`http[s]://host[:port][/path]`
/// in plain ASCII, a plain path): one parse of the joined text instead of a parse and
/// three rewrites, which were 7 % of a probe's CPU at one address (BENCHMARKS.md). `None`
/// for anything else (a query, a fragment, user info, dot segments, escapes, spaces),
/// which [`general_probe_url`] handles; the unit tests hold both to the same answers.
fn plain_probe_url(endpoint: &str, path: &str) -> Option<Url> {
    let plain = |text: &str| {
        text.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%' | b'\\' | b'@'))
            && !text.contains("/.")
    };
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))?;
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    if rest.is_empty()
        || rest.starts_with('/')
        || !plain(endpoint)
        || !plain(path)
        || query.is_some_and(|q| {
            !q.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=&-_.~".contains(&b))
        })
    {
        return None;
    }
    let mut joined = String::with_capacity(endpoint.len() + path.len() + 2);
    joined.push_str(endpoint.trim_end_matches('/'));
    joined.push('/');
    joined.push_str(path.trim_start_matches('/'));
    if let Some(query) = query {
        joined.push('?');
        joined.push_str(query);
    }
    let url = Url::parse(&joined).ok()?;
    url.host_str()
        .is_some_and(|host| !host.is_empty())
        .then_some(url)
}

/// [`probe_url`] for any endpoint: parse it alone, then set the path and query.
fn general_probe_url(endpoint: &str, path: &str) -> Result<Url, ProbeFailure> {
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
pub(super) fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    crate::bounded(text, MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-parse path gives exactly what the general one gives, wherever it answers,
    /// and answers for the endpoints fleets have.
    #[test]
    fn plain_endpoints_are_joined_as_the_general_path_joins_them() {
        let endpoints = [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://h:1/base",
            "http://h:1/base//",
            "https://engine.example",
            "https://engine.example:443/",
            "http://[::1]:8080/base",
            "http://Engine.Example:80/A/b",
            "http://h/a/../b",
            "http://h/a/.",
            "http://h/a b",
            "http://h/%41",
            "http://user@h/",
            "http://h/?old=1",
            "http://h/#frag",
            " http://h/ ",
            "HTTP://h/",
            "http://h:99999",
            "http://",
            "http:///x",
            "http://h/ü",
            "http://h/{x}",
            "http://0x7f.1/",
        ];
        let paths = [
            "/healthz",
            "/",
            "//ready",
            "/ready?full=1",
            "/ready?a=1&b=x-y_z.~",
            "/ready?q=a b",
            "/a/../b",
            "/x y",
            "/{x}",
            "/ready?",
        ];
        let mut plain = 0;
        for endpoint in endpoints {
            for path in paths {
                let general = general_probe_url(endpoint, path);
                if let Some(url) = plain_probe_url(endpoint, path) {
                    plain += 1;
                    assert_eq!(
                        Some(url.as_str()),
                        general.as_ref().ok().map(Url::as_str),
                        "{endpoint:?} + {path:?}"
                    );
                }
            }
        }
        assert!(plain >= 60, "the plain path answered only {plain} times");
        for endpoint in ["http://127.0.0.1:8080", "https://engine.example/base/"] {
            assert!(
                plain_probe_url(endpoint, "/healthz").is_some(),
                "{endpoint}"
            );
        }
    }
}
