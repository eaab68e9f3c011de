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
