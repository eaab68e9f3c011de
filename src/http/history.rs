//! `GET /games/history`: the fleet page's timeline. For the games asked (the rows a page
//! shows), their failure episodes over the last hours and their availability in that
//! window, derived from the event log ([`crate::history`]); nothing is written per tick.
//!
//! `game_id` may be given several times (up to [`HISTORY_MAX_GAMES`]); `hours` is 1 to
//! 168 (24). Games that are not running are left out of the answer.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::HttpState;
use crate::history::history;
use crate::store::HISTORY_MAX_GAMES;

/// The longest window asked: a week of events for 200 games stays a small read.
const MAX_HOURS: i64 = 168;
const DEFAULT_HOURS: i64 = 24;

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn refuse(status: StatusCode, kind: &str, message: String) -> Response {
    json(status, json!({ "error": kind, "message": message }))
}

/// The game ids and the window's length in hours, or why the query is refused.
fn parse(raw: Option<&str>) -> Result<(Vec<String>, i64), String> {
    let mut game_ids = Vec::new();
    let mut hours = None;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "game_id" if value.is_empty() => return Err("game_id must not be empty".into()),
            "game_id" => game_ids.push(value.into_owned()),
            "hours" if hours.is_some() => {
                return Err("query parameter \"hours\" is given twice".into());
            }
            "hours" => match value.parse::<i64>() {
                Ok(h) if (1..=MAX_HOURS).contains(&h) => hours = Some(h),
                _ => {
                    return Err(format!(
                        "hours must be an integer from 1 to {MAX_HOURS}, got {value:?}"
                    ));
                }
            },
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}; this endpoint takes game_id, hours"
                ));
            }
        }
    }
    if game_ids.len() > HISTORY_MAX_GAMES {
        return Err(format!(
            "at most {HISTORY_MAX_GAMES} game_id parameters, got {}",
            game_ids.len()
        ));
    }
    game_ids.sort_unstable();
    game_ids.dedup();
    Ok((game_ids, hours.unwrap_or(DEFAULT_HOURS)))
}

pub(super) async fn games_history(
    State(state): State<HttpState>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (game_ids, hours) = match parse(raw.as_deref()) {
        Ok(parsed) => parsed,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let now = Utc::now();
    let window_start = now - chrono::Duration::hours(hours);
    let games = if game_ids.is_empty() {
        Vec::new()
    } else {
        match state.store.failure_history(&game_ids, window_start).await {
            Ok(games) => games,
            Err(e) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "reading the event log from Postgres: {}",
                        crate::ErrorChain(&e)
                    ),
                );
            }
        }
    };
    let mut out = serde_json::Map::new();
    for (game_id, current, transitions) in games {
        let h = history(&transitions, &current, window_start, now);
        out.insert(
            game_id,
            json!({
                "availability": h.availability,
                "failing_since": h.failing_since.map(rfc3339),
                "episodes": h.episodes.iter().map(|e| json!({
                    "start": rfc3339(e.start),
                    "end": e.end.map(rfc3339),
                })).collect::<Vec<_>>(),
            }),
        );
    }
    json(
        StatusCode::OK,
        json!({
            "window_start": rfc3339(window_start),
            "now": rfc3339(now),
            "games": out,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn game_ids_repeat_and_hours_are_bounded() {
        assert_eq!(
            parse(Some("game_id=b&game_id=a&game_id=b")),
            Ok((vec!["a".into(), "b".into()], 24))
        );
        assert_eq!(parse(Some("hours=2")), Ok((vec![], 2)));
        assert_eq!(parse(None), Ok((vec![], 24)));
        assert!(parse(Some("hours=0")).is_err());
        assert!(parse(Some("hours=169")).is_err());
        assert!(parse(Some("hours=1&hours=2")).is_err());
        assert!(parse(Some("game_id=")).is_err());
        assert!(
            parse(Some("status=failing"))
                .unwrap_err()
                .contains("unknown query parameter")
        );
        let many = (0..=HISTORY_MAX_GAMES)
            .map(|i| format!("game_id=g{i}"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(parse(Some(&many)).is_err());
    }
}
