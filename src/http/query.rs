//! Typed query strings: each endpoint names its parameters in a struct, axum's `Query`
//! deserializes it with serde, and every bad query, whatever is wrong with it, gets the
//! same JSON `400` ([`BadRequest`]) with a sentence saying what.
//!
//! Two checks come before serde, so their messages name the endpoint's parameters: an
//! unknown parameter and a repeated one. Values are checked by their types (a limit in its
//! range, a known status, a cursor this server handed out), each with its own message.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};

use super::{ErrorBody, json_response};
use crate::hysteresis::HealthStatus;

/// A bad query or path: 400 with the JSON error every endpoint uses.
#[derive(Debug)]
pub(crate) struct BadRequest(pub(crate) String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        json_response(
            axum::http::StatusCode::BAD_REQUEST,
            &ErrorBody::new("bad_request", self.0),
        )
    }
}

/// An endpoint's query parameters.
pub(crate) trait QueryParams: DeserializeOwned {
    /// The names it takes; any other is refused.
    const NAMES: &'static [&'static str];
}

/// Extracts `T` from the query string, or answers [`BadRequest`].
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: QueryParams> FromRequestParts<S> for Params<T> {
    type Rejection = BadRequest;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, BadRequest> {
        check_names(parts.uri.query(), T::NAMES)?;
        match Query::<T>::try_from_uri(&parts.uri) {
            Ok(Query(params)) => Ok(Self(params)),
            Err(rejection) => Err(BadRequest(value_error::<T>(&rejection))),
        }
    }
}

/// Refuses parameters not in `allowed` and repeated ones.
fn check_names(raw: Option<&str>, allowed: &[&str]) -> Result<(), BadRequest> {
    let mut seen: Vec<String> = Vec::new();
    for (key, _) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(BadRequest(format!(
                "unknown query parameter {key:?}; this endpoint takes {}",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        if seen.iter().any(|k| *k == key) {
            return Err(BadRequest(format!(
                "query parameter {key:?} is given twice"
            )));
        }
        seen.push(key.into_owned());
    }
    Ok(())
}

/// The sentence of a value's type ([`Limit`], [`StatusFilter`], …), without the
/// `field: ` prefix that serde's path tracking puts before it.
fn value_error<T: QueryParams>(rejection: &dyn std::error::Error) -> String {
    let mut innermost = rejection;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = innermost.to_string();
    match text.split_once(": ") {
        Some((field, message)) if T::NAMES.contains(&field) => message.to_owned(),
        _ => text,
    }
}

/// A value parsed from its query text, or the sentence saying why not.
fn parse_value<'de, D, T>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = String::deserialize(deserializer)?;
    parse(&raw).map_err(de::Error::custom)
}

/// No parameters at all.
#[derive(Debug, Deserialize)]
pub(crate) struct NoParams {}

impl QueryParams for NoParams {
    const NAMES: &'static [&'static str] = &[];
}

/// `limit`: an integer from 1 to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit<const MAX: i64>(pub(crate) i64);

impl<'de, const MAX: i64> Deserialize<'de> for Limit<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_value(deserializer, |raw| match raw.parse::<i64>() {
            Ok(n) if (1..=MAX).contains(&n) => Ok(Self(n)),
            _ => Err(format!(
                "limit must be an integer from 1 to {MAX}, got {raw:?}"
            )),
        })
    }
}

/// `status`: one of the health statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusFilter(pub(crate) String);

impl<'de> Deserialize<'de> for StatusFilter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_value(deserializer, |raw| {
            const STATUSES: [HealthStatus; 4] = [
                HealthStatus::Unknown,
                HealthStatus::Healthy,
                HealthStatus::Suspect,
                HealthStatus::Failing,
            ];
            // `disabled`: games whose override keeps them from being probed (DESIGN §16).
            if STATUSES.iter().any(|s| s.as_str() == raw) || raw == "disabled" {
                Ok(Self(raw.to_owned()))
            } else {
                Err(format!(
                    "status must be one of unknown, healthy, suspect, failing, disabled, got {raw:?}"
                ))
            }
        })
    }
}

/// Longest accepted `game_id` glob; a longer one is a mistake, not a query.
pub(crate) const MAX_GLOB_LEN: usize = 512;

/// `game_id`: a glob (`*`, `?`), not empty, at most [`MAX_GLOB_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GameGlob(pub(crate) String);

impl<'de> Deserialize<'de> for GameGlob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_value(deserializer, |raw| {
            if raw.is_empty() {
                Err("game_id must not be empty".to_owned())
            } else if raw.len() > MAX_GLOB_LEN {
                Err(format!("game_id must be at most {MAX_GLOB_LEN} bytes"))
            } else {
                Ok(Self(raw.to_owned()))
            }
        })
    }
}

/// `cursor`: the last game id of the previous page, hex-encoded: opaque to clients, safe in
/// a URL whatever the id holds, and a keyset position that does not shift when games come
/// and go between pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor(pub(crate) String);

impl Cursor {
    pub(crate) fn encode(game_id: &str) -> String {
        game_id.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(cursor: &str) -> Option<String> {
        if cursor.is_empty() || !cursor.len().is_multiple_of(2) || !cursor.is_ascii() {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..cursor.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16).ok())
            .collect();
        String::from_utf8(bytes?).ok()
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_value(deserializer, |raw| {
            Self::decode(raw)
                .map(Self)
                .ok_or_else(|| format!("cursor {raw:?} is not one this endpoint returned"))
        })
    }
}

/// `format` of `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Text,
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_value(deserializer, |raw| match raw {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("format must be json or text, got {other:?}")),
        })
    }
}

/// A yes/no parameter: `true`, `1` or empty for yes, `false` or `0` for no. `NAME` is only
/// for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flag<N>(pub(crate) bool, PhantomData<N>);

/// The name a [`Flag`] has in its messages.
pub(crate) trait FlagName {
    const NAME: &'static str;
}

impl<'de, N: FlagName> Deserialize<'de> for Flag<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_value(deserializer, |raw| match raw {
            "false" | "0" => Ok(Self(false, PhantomData)),
            "true" | "1" | "" => Ok(Self(true, PhantomData)),
            other => Err(format!("{} must be true or false, got {other:?}", N::NAME)),
        })
    }
}

/// `GET /games` page size: default and maximum (DESIGN §11).
pub(crate) const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// `GET /events` size: default and maximum. The page shows the latest few; the log itself is
/// read with `healthprobe tail` or SQL.
pub(crate) const DEFAULT_EVENTS: i64 = 20;
pub(crate) const MAX_EVENTS: i64 = 200;

/// `GET /games?status=&game_id=&limit=&cursor=`.
#[derive(Debug, Deserialize)]
pub(crate) struct GamesParams {
    pub(crate) status: Option<StatusFilter>,
    pub(crate) game_id: Option<GameGlob>,
    pub(crate) limit: Option<Limit<MAX_LIMIT>>,
    pub(crate) cursor: Option<Cursor>,
}

impl QueryParams for GamesParams {
    const NAMES: &'static [&'static str] = &["status", "game_id", "limit", "cursor"];
}

/// `GET /events?limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsParams {
    pub(crate) limit: Option<Limit<MAX_EVENTS>>,
}

impl QueryParams for EventsParams {
    const NAMES: &'static [&'static str] = &["limit"];
}

/// `short` of `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Short;

impl FlagName for Short {
    const NAME: &'static str = "short";
}

/// `GET /status?format=&short=`.
#[derive(Debug, Deserialize)]
pub(crate) struct StatusParams {
    pub(crate) format: Option<Format>,
    pub(crate) short: Option<Flag<Short>>,
}

impl QueryParams for StatusParams {
    const NAMES: &'static [&'static str] = &["format", "short"];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract<T: QueryParams>(query: &str) -> Result<T, String> {
        let uri: axum::http::Uri = format!("/x?{query}").parse().unwrap();
        check_names(uri.query(), T::NAMES).map_err(|b| b.0)?;
        Query::<T>::try_from_uri(&uri)
            .map(|Query(t)| t)
            .map_err(|r| value_error::<T>(&r))
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        for id in ["game-1", "ü/%?&=", "a"] {
            assert_eq!(Cursor::decode(&Cursor::encode(id)).as_deref(), Some(id));
        }
        for junk in ["", "abc", "zz", "ff", "é1"] {
            assert_eq!(Cursor::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn query_parameters_are_checked() {
        let games = |q: &str| extract::<GamesParams>(q);
        let ok = games("status=failing&limit=5").unwrap();
        assert_eq!(ok.limit, Some(Limit(5)));
        assert_eq!(ok.status, Some(StatusFilter("failing".into())));
        assert_eq!(games("limit=1000").unwrap().limit, Some(Limit(1000)));
        assert!(games("").unwrap().limit.is_none());
        assert_eq!(
            games("bogus=1").unwrap_err(),
            "unknown query parameter \"bogus\"; this endpoint takes status, game_id, limit, cursor"
        );
        assert_eq!(
            games("limit=1&limit=2").unwrap_err(),
            "query parameter \"limit\" is given twice"
        );
        assert_eq!(
            games("limit=x").unwrap_err(),
            "limit must be an integer from 1 to 1000, got \"x\""
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "status=sick",
            "cursor=zz",
            "game_id=",
        ] {
            assert!(games(bad).is_err(), "{bad}");
        }
        assert_eq!(
            extract::<StatusParams>("short=maybe").unwrap_err(),
            "short must be true or false, got \"maybe\""
        );
        assert_eq!(
            extract::<StatusParams>("short=")
                .unwrap()
                .short
                .map(|f| f.0),
            Some(true)
        );
        assert_eq!(
            extract::<NoParams>("x=1").unwrap_err(),
            "unknown query parameter \"x\"; this endpoint takes none"
        );
    }
}
