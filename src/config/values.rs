//! The value parsers behind every variable and flag: each one names what it refuses, and
//! clap puts the variable's name in front, so a bad value stops start-up naming it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::MAX_CONCURRENCY_LIMIT;
use crate::probe::spec::{ExpectedStatuses, ProbeHeaders, parse_path};

pub(super) fn replica_id(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 200 || raw.chars().any(char::is_control) {
        return Err(format!(
            "HEALTHPROBE_REPLICA_ID must be 1 to 200 printable characters, got {:?}",
            raw.chars().take(50).collect::<String>()
        ));
    }
    Ok(raw.to_owned())
}

pub(super) fn probe_path(raw: &str) -> Result<String, String> {
    parse_path(raw.trim()).map_err(|e| format!("RTMANAGER_PROBE_PATH: {e}"))
}

pub(super) fn probe_expect(raw: &str) -> Result<ExpectedStatuses, String> {
    ExpectedStatuses::parse(raw).map_err(|e| format!("HEALTHPROBE_PROBE_EXPECT: {e}"))
}

pub(super) fn probe_headers(raw: &str) -> Result<ProbeHeaders, String> {
    // The value may hold a secret: the error names the part, never echoes the whole.
    ProbeHeaders::parse(raw).map_err(|e| format!("HEALTHPROBE_PROBE_HEADERS: {e}"))
}

/// A path to a file this process can read now.
pub(crate) fn readable_file(
    variable: &'static str,
) -> impl Fn(&str) -> Result<PathBuf, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        let path = PathBuf::from(raw.trim());
        match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(format!("{variable} must name a file, got {raw:?}")),
            Err(e) => Err(format!("{variable}: cannot read {raw:?}: {e}")),
        }
    }
}

/// A value that is not empty (nor only spaces).
pub(crate) fn non_empty(
    variable: &'static str,
) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        if raw.trim().is_empty() {
            return Err(format!("{variable} must not be empty"));
        }
        Ok(raw.to_owned())
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub(crate) fn boolean(
    variable: &'static str,
) -> impl Fn(&str) -> Result<bool, String> + Clone + Send + Sync + 'static {
    move |raw: &str| match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("{variable} must be true or false, got {raw:?}")),
    }
}

/// A bearer token: visible ASCII without spaces (what an `Authorization` header carries),
/// at most 4 KiB.
pub(super) fn http_token(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 4096 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "HEALTHPROBE_HTTP_TOKEN must be 1 to 4096 visible ASCII characters without spaces (got {} bytes)",
            raw.len()
        ));
    }
    Ok(raw.to_owned())
}

/// A CloudEvents `source`: a URI reference, here any non-empty visible ASCII.
pub(super) fn cloudevents_source(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 1024 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "HEALTHPROBE_CLOUDEVENTS_SOURCE must be a URI reference (visible ASCII, no spaces), got {:?}",
            raw.chars().take(80).collect::<String>()
        ));
    }
    Ok(raw.to_owned())
}

/// A humantime duration, zero allowed (`0` alone too).
pub(crate) fn duration_or_zero(
    variable: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        let raw = raw.trim();
        if raw == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(raw).map_err(|e| {
            format!("{variable} must be a duration such as 0s, 30s or 2m, got {raw:?}: {e}")
        })
    }
}

/// A humantime duration strictly greater than zero.
pub(crate) fn positive_duration(
    variable: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        let raw = raw.trim();
        let parsed = humantime::parse_duration(raw).map_err(|e| {
            format!("{variable} must be a duration such as 500ms, 2s or 1m, got {raw:?}: {e}")
        })?;
        if parsed.is_zero() {
            return Err(format!("{variable} must be greater than zero, got {raw:?}"));
        }
        Ok(parsed)
    }
}

/// An integer of at least 1.
pub(crate) fn positive_u32(
    variable: &'static str,
) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        let raw = raw.trim();
        let value: i64 = raw
            .parse()
            .map_err(|_| format!("{variable} must be a positive integer, got {raw:?}"))?;
        if value < 1 {
            return Err(format!("{variable} must be at least 1, got {value}"));
        }
        u32::try_from(value).map_err(|_| format!("{variable} is too large: {value}"))
    }
}

pub(super) fn concurrency(raw: &str) -> Result<usize, String> {
    let value = positive_u32("RTMANAGER_PROBE_MAX_CONCURRENCY")(raw)? as usize;
    if value > MAX_CONCURRENCY_LIMIT {
        return Err(format!(
            "RTMANAGER_PROBE_MAX_CONCURRENCY must be at most {MAX_CONCURRENCY_LIMIT}, got {value}"
        ));
    }
    Ok(value)
}

pub(super) fn spread(raw: &str) -> Result<f64, String> {
    let value: f64 = raw.trim().parse().map_err(|_| {
        format!("RTMANAGER_PROBE_SPREAD must be a fraction from 0 to 1, got {raw:?}")
    })?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!(
            "RTMANAGER_PROBE_SPREAD must be a fraction from 0 to 1, got {value}"
        ));
    }
    Ok(value)
}

pub(super) fn http_connections(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=65_536).contains(&n) => Ok(n),
        _ => Err(format!(
            "HEALTHPROBE_HTTP_MAX_CONNECTIONS must be an integer from 1 to 65536, got {raw:?}"
        )),
    }
}

pub(super) fn socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.trim().parse().map_err(|e| {
        format!("HEALTHPROBE_HTTP_ADDR must be host:port such as 127.0.0.1:8097, got {raw:?}: {e}")
    })
}

pub(super) fn stream_name(raw: &str) -> Result<String, String> {
    let bad = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if raw.is_empty() || raw.chars().any(bad) {
        return Err(format!(
            "HEALTHPROBE_STREAM must be a JetStream stream name (no spaces, '.', '*', '>', '/'), got {raw:?}"
        ));
    }
    Ok(raw.to_owned())
}

pub(super) fn subject_prefix(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.split('.').all(|token| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        });
    if !valid {
        return Err(format!(
            "HEALTHPROBE_SUBJECT_PREFIX must be dot-separated NATS subject tokens without wildcards, got {raw:?}"
        ));
    }
    Ok(raw.to_owned())
}
