//! What one probe asks of an engine (DESIGN §16): the path, the statuses that mean healthy,
//! extra request headers and the time bound. [`ProbeSpec::default`] is the probe of DESIGN
//! §2: `GET /healthz`, healthy on exactly `200`, no extra headers, 2 s.
//!
//! The parsers here are the single place the text forms are read: the global variables
//! (`RTMANAGER_PROBE_PATH`, `HEALTHPROBE_PROBE_EXPECT`, `HEALTHPROBE_PROBE_HEADERS`) and the
//! per-game `health_probe_overrides` row. Errors are sentences that name the bad part, for
//! the caller to prefix with the variable or the game.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// The probe of one engine.
#[derive(Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Appended to the engine endpoint (trailing `/` trimmed); starts with `/`, may carry a
    /// query string (`/ready?full=1`).
    pub path: String,
    pub expect: ExpectedStatuses,
    pub headers: ProbeHeaders,
    /// Bounds the whole probe: connect, TLS, request, headers and body.
    pub timeout: Duration,
}

/// The probe path when none is configured.
pub(crate) const DEFAULT_PATH: &str = "/healthz";
/// The probe timeout when none is configured (`RTMANAGER_PROBE_TIMEOUT`).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            path: DEFAULT_PATH.to_owned(),
            expect: ExpectedStatuses::default(),
            headers: ProbeHeaders::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeSpec")
            .field("path", &self.path)
            .field("expect", &format_args!("{}", self.expect))
            .field("headers", &self.headers)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Checks a probe path: it must start with `/` and be a valid request target (no spaces,
/// no control characters, no fragment). Returns it unchanged.
pub(crate) fn parse_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("the probe path {text:?} must start with '/'"));
    }
    if text.len() > 2048 {
        return Err(format!(
            "the probe path is {} bytes long, at most 2048",
            text.len()
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '#')
    {
        return Err(format!(
            "the probe path {text:?} contains {bad:?}; percent-encode it"
        ));
    }
    Ok(text.to_owned())
}

/// The HTTP statuses that mean healthy: single codes and inclusive ranges.
#[derive(Clone, PartialEq, Eq)]
pub struct ExpectedStatuses {
    /// Inclusive ranges, as written (a single code is `(code, code)`); never empty.
    ranges: Vec<(u16, u16)>,
}

impl Default for ExpectedStatuses {
    /// Exactly `200` (DESIGN §2).
    fn default() -> Self {
        Self {
            ranges: vec![(200, 200)],
        }
    }
}

impl ExpectedStatuses {
    /// `200`, `200-299,301`, `204, 200`: comma-separated codes and `low-high` ranges, each
    /// code 100–599.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "{text:?} has an empty entry; write codes and ranges like 200-299,301"
                ));
            }
            let (low, high) = match part.split_once('-') {
                Some((low, high)) => (status_code(low.trim())?, status_code(high.trim())?),
                None => {
                    let code = status_code(part)?;
                    (code, code)
                }
            };
            if low > high {
                return Err(format!("the range {part:?} is backwards"));
            }
            ranges.push((low, high));
        }
        Ok(Self { ranges })
    }

    pub fn accepts(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

fn status_code(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!("{text:?} is not an HTTP status code (100-599)")),
    }
}

impl fmt::Display for ExpectedStatuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(low, high)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ExpectedStatuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExpectedStatuses({self})")
    }
}

/// Extra request headers, in the order given (a name may repeat). Values often carry
/// tokens, so `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProbeHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Headers the prober owns: framing and connection management (a wrong `Content-Length`
/// or `Connection` would break the kept-alive connection the next probe reuses) and the
/// `User-Agent` of DESIGN §2.
const RESERVED: [&str; 9] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
];

impl ProbeHeaders {
    /// `Name=value,Name2=value2`, the form of `OTEL_EXPORTER_OTLP_HEADERS`: names and values
    /// trimmed, values percent-decoded (`%2C` for a comma). An empty text is no headers.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut headers = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self { headers });
        }
        for (index, pair) in text.split(',').enumerate() {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(format!(
                    "entry {} has no '=': write Name=value,Name2=value2",
                    index + 1
                ));
            };
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| {
                    format!(
                        "the value of {:?} is not UTF-8 once percent-decoded",
                        name.trim()
                    )
                })?;
            headers.push(header(name.trim(), &value)?);
        }
        Ok(Self { headers })
    }

    /// A JSON object of strings, `{"X-Token": "abc"}`, as the overrides table's `headers`
    /// column holds it. Values are taken as written (no percent-decoding).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(object) = value else {
            return Err(
                "headers must be a JSON object of strings, like {\"X-Token\": \"abc\"}".into(),
            );
        };
        let mut headers = Vec::with_capacity(object.len());
        for (name, value) in object {
            let serde_json::Value::String(value) = value else {
                return Err(format!("the value of header {name:?} is not a string"));
            };
            headers.push(header(name, value)?);
        }
        Ok(Self { headers })
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.headers.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.headers.iter().map(|(name, value)| (name, value))
    }
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let bounded = crate::bounded(name, 100);
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{bounded} is not a valid header name"))?;
    if RESERVED.contains(&parsed.as_str()) {
        return Err(format!(
            "the header {bounded} is set by the prober and cannot be configured"
        ));
    }
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value of header {bounded} has characters a header cannot carry (control characters or line breaks)"))?;
    value.set_sensitive(true);
    Ok((parsed, value))
}

impl fmt::Debug for ProbeHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.headers.iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_seed_probe() {
        let spec = ProbeSpec::default();
        assert_eq!(spec.path, "/healthz");
        assert_eq!(spec.timeout, Duration::from_secs(2));
        assert!(spec.headers.is_empty());
        assert!(spec.expect.accepts(200));
        for other in [100, 199, 201, 204, 301, 302, 404, 503, 599] {
            assert!(!spec.expect.accepts(other), "{other}");
        }
    }

    #[test]
    fn statuses_parse_codes_and_ranges() {
        let expect = ExpectedStatuses::parse("200-299, 301").unwrap();
        for ok in [200, 204, 250, 299, 301] {
            assert!(expect.accepts(ok), "{ok}");
        }
        for bad in [199, 300, 302, 404, 500] {
            assert!(!expect.accepts(bad), "{bad}");
        }
        assert_eq!(expect.to_string(), "200-299,301");
        assert_eq!(ExpectedStatuses::parse("204").unwrap().to_string(), "204");
        assert_eq!(
            ExpectedStatuses::parse(" 200 ").unwrap(),
            ExpectedStatuses::default()
        );
    }

    #[test]
    fn bad_statuses_are_refused_with_the_reason() {
        for (text, needle) in [
            ("", "empty entry"),
            ("200,", "empty entry"),
            ("ok", "not an HTTP status"),
            ("99", "not an HTTP status"),
            ("600", "not an HTTP status"),
            ("-200", "not an HTTP status"),
            ("299-200", "backwards"),
            ("200-", "not an HTTP status"),
            ("2xx", "not an HTTP status"),
            ("70000", "not an HTTP status"),
        ] {
            let error = ExpectedStatuses::parse(text).expect_err(text);
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn headers_parse_the_otlp_form() {
        let headers = ProbeHeaders::parse("X-Token=abc%2C%3Ddef , x-other = two words%21").unwrap();
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("x-token".to_owned(), "abc,=def".to_owned()),
                ("x-other".to_owned(), "two words!".to_owned())
            ]
        );
        assert!(ProbeHeaders::parse("").unwrap().is_empty());
        assert!(ProbeHeaders::parse("  ").unwrap().is_empty());
        // A value may contain '=' (base64 padding).
        let padded = ProbeHeaders::parse("Authorization=Bearer abc==").unwrap();
        assert_eq!(
            padded.iter().next().unwrap().1.to_str().unwrap(),
            "Bearer abc=="
        );
    }

    #[test]
    fn bad_headers_are_refused_with_the_reason() {
        for (text, needle) in [
            ("X-Token", "no '='"),
            ("X-Token=a,,", "no '='"),
            ("=abc", "not a valid header name"),
            ("Bad Name=abc", "not a valid header name"),
            ("X-Token=a%0Db", "cannot carry"),
            ("X-Token=%FF", "not UTF-8"),
            ("Content-Length=5", "set by the prober"),
            ("User-Agent=curl", "set by the prober"),
            ("connection=close", "set by the prober"),
        ] {
            let error = ProbeHeaders::parse(text).expect_err(text);
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn headers_come_from_a_json_object() {
        let headers =
            ProbeHeaders::from_json(&serde_json::json!({"X-Token": "a%2Cb", "Host": "game.local"}))
                .unwrap();
        assert_eq!(headers.len(), 2);
        let token = headers.iter().find(|(n, _)| *n == "x-token").unwrap().1;
        assert_eq!(token.to_str().unwrap(), "a%2Cb", "JSON values are literal");
        for (value, needle) in [
            (serde_json::json!(["X-Token", "a"]), "JSON object"),
            (serde_json::json!({"X-Token": 5}), "not a string"),
            (
                serde_json::json!({"Transfer-Encoding": "chunked"}),
                "set by the prober",
            ),
            (serde_json::json!({"X-Token": "a\nb"}), "cannot carry"),
        ] {
            let error = ProbeHeaders::from_json(&value).expect_err(&value.to_string());
            assert!(error.contains(needle), "{value}: {error}");
        }
    }

    #[test]
    fn header_values_stay_out_of_debug_output() {
        let spec = ProbeSpec {
            headers: ProbeHeaders::parse("X-Token=secret-value").unwrap(),
            ..ProbeSpec::default()
        };
        let shown = format!("{spec:?}");
        assert!(shown.contains("x-token"), "{shown}");
        assert!(!shown.contains("secret-value"), "{shown}");
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(parse_path("/ready?full=1").unwrap(), "/ready?full=1");
        for (text, needle) in [
            ("healthz", "start with '/'"),
            ("/he alth", "percent-encode"),
            ("/a#b", "percent-encode"),
            ("/a\r\nX: y", "percent-encode"),
        ] {
            let error = parse_path(text).expect_err(text);
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
