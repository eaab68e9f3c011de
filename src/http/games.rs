//! The per-game health view: `GET /games` (keyset pages), `GET /games/counts`,
//! `GET /events` (the latest of the log) and `POST /games/{id}/probe` (on demand).

use std::collections::BTreeMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::query::{
    BadRequest, Cursor, DEFAULT_EVENTS, DEFAULT_LIMIT, EventsParams, GamesParams, NoParams, Params,
};
use super::{HttpState, error, json_response};
use crate::ErrorChain;
use crate::envelope::HealthEvent;
use crate::status::render::{GameJson, rfc3339, round_ms};
use crate::store::{GamesQuery, LoggedEvent};
use crate::worker::on_demand::OnDemandError;
use crate::worker::{ProbeOneError, ProbeOneReport};

#[derive(Serialize)]
struct GamesPage<'a> {
    games: Vec<GameJson<'a>>,
    next_cursor: Option<String>,
}

pub(super) async fn games(
    State(state): State<HttpState>,
    Params(params): Params<GamesParams>,
) -> Response {
    let limit = params.limit.map_or(DEFAULT_LIMIT, |l| l.0);
    // One row more than asked says whether there is a next page.
    let page = GamesQuery {
        status: params.status.map(|s| s.0),
        game_id_glob: params.game_id.map(|g| g.0),
        after: params.cursor.map(|c| c.0),
        limit: limit + 1,
    };
    match state.store.games_page(&page).await {
        Ok(mut rows) => {
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let next_cursor = more
                .then(|| rows.last().map(|g| Cursor::encode(&g.game_id)))
                .flatten();
            json_response(
                StatusCode::OK,
                &GamesPage {
                    games: rows.iter().map(GameJson::from).collect(),
                    next_cursor,
                },
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("reading the games from Postgres: {}", ErrorChain(&e)),
        ),
    }
}

/// An event a probe just recorded, as the probe's answer and the live feed show it.
#[derive(Serialize)]
struct EventJson {
    event_id: String,
    event_type: &'static str,
    occurred_at: String,
    details: serde_json::Value,
}

impl From<&HealthEvent> for EventJson {
    fn from(event: &HealthEvent) -> Self {
        Self {
            event_id: event.event_id.to_string(),
            event_type: event.event_type().as_str(),
            occurred_at: rfc3339(event.occurred_at),
            details: serde_json::to_value(&event.details).unwrap_or_default(),
        }
    }
}

/// The answer of `POST /games/{id}/probe`.
#[derive(Serialize)]
struct ProbeAnswer<'a> {
    game_id: &'a str,
    healthy: bool,
    outcome: &'static str,
    last_status: u16,
    last_error: Option<&'a str>,
    latency_ms: f64,
    completed_at: String,
    status: &'static str,
    consecutive_failures: u32,
    event: Option<EventJson>,
}

impl<'a> From<&'a ProbeOneReport> for ProbeAnswer<'a> {
    fn from(report: &'a ProbeOneReport) -> Self {
        let outcome = &report.outcome;
        Self {
            game_id: &report.record.game_id,
            healthy: outcome.is_healthy(),
            outcome: outcome.outcome_label(),
            last_status: outcome.status,
            last_error: outcome.failure.as_ref().map(|f| f.message.as_str()),
            latency_ms: round_ms(outcome.latency.as_secs_f64() * 1000.0),
            completed_at: rfc3339(outcome.completed_at),
            status: report.health.status().as_str(),
            consecutive_failures: report.health.consecutive_failures,
            event: report.event.as_ref().map(EventJson::from),
        }
    }
}

/// What the live feed says when a probe outside a tick records an event.
#[derive(Serialize)]
struct RecordedEvent<'a> {
    game_id: &'a str,
    event: EventJson,
}

pub(super) async fn probe(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    _: Params<NoParams>,
) -> Response {
    let game_id = match path {
        Ok(Path(game_id)) => game_id,
        Err(rejection) => return BadRequest(rejection.body_text()).into_response(),
    };
    let retry_after = state.on_demand.retry_after_secs().to_string();
    let refused = |code: StatusCode, kind: &'static str, message: String| {
        let mut response = error(code, kind, message);
        if let Ok(value) = axum::http::HeaderValue::from_str(&retry_after) {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    };
    match state.on_demand.probe(&game_id).await {
        Ok(report) => {
            if let Some(event) = &report.event {
                let recorded = RecordedEvent {
                    game_id: &report.record.game_id,
                    event: EventJson::from(event),
                };
                state
                    .board
                    .live_feed()
                    .event_recorded(serde_json::to_value(&recorded).unwrap_or_default());
            }
            json_response(StatusCode::OK, &ProbeAnswer::from(report.as_ref()))
        }
        Err(e @ OnDemandError::Busy(_)) => {
            refused(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string())
        }
        Err(e @ OnDemandError::Degraded) => {
            refused(StatusCode::SERVICE_UNAVAILABLE, "degraded", e.to_string())
        }
        Err(OnDemandError::Probe(e)) => match e.as_ref() {
            ProbeOneError::NotRunning(_) => {
                error(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ProbeOneError::Disabled(_) | ProbeOneError::InitialDelay(_) => {
                error(StatusCode::CONFLICT, "not_probed", e.to_string())
            }
            _ => refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                ErrorChain(e.as_ref()).to_string(),
            ),
        },
    }
}

/// One row of the log as `GET /events` shows it.
#[derive(Serialize)]
struct LoggedEventJson<'a> {
    event_id: String,
    game_id: &'a str,
    container_id: &'a str,
    event_type: &'a str,
    occurred_at: Option<String>,
    details: &'a serde_json::Value,
    published: bool,
}

impl<'a> From<&'a LoggedEvent> for LoggedEventJson<'a> {
    fn from(event: &'a LoggedEvent) -> Self {
        Self {
            event_id: event.event_id.to_string(),
            game_id: &event.game_id,
            container_id: &event.container_id,
            event_type: &event.event_type,
            occurred_at: event.occurred_at.map(rfc3339),
            details: &event.details,
            published: event.published,
        }
    }
}

#[derive(Serialize)]
struct EventsPage<'a> {
    events: Vec<LoggedEventJson<'a>>,
}

/// `GET /events?limit=N`: the latest health events of the log, newest first.
pub(super) async fn events(
    State(state): State<HttpState>,
    Params(params): Params<EventsParams>,
) -> Response {
    let limit = params.limit.map_or(DEFAULT_EVENTS, |l| l.0);
    match state.store.latest_events(limit).await {
        Ok(rows) => json_response(
            StatusCode::OK,
            &EventsPage {
                events: rows.iter().map(LoggedEventJson::from).collect(),
            },
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("reading the events from Postgres: {}", ErrorChain(&e)),
        ),
    }
}

#[derive(Serialize)]
struct GameCounts {
    total: i64,
    by_status: BTreeMap<String, i64>,
}

/// `GET /games/counts`: running games in total and by status (every status present, zero
/// when none).
pub(super) async fn game_counts(State(state): State<HttpState>, _: Params<NoParams>) -> Response {
    match state.store.status_counts().await {
        Ok(rows) => {
            let mut by_status: BTreeMap<String, i64> =
                ["failing", "suspect", "unknown", "healthy", "disabled"]
                    .into_iter()
                    .map(|status| (status.to_owned(), 0))
                    .collect();
            let mut total = 0;
            for (status, count) in rows {
                total += count;
                by_status.insert(status, count);
            }
            json_response(StatusCode::OK, &GameCounts { total, by_status })
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("counting the games in Postgres: {}", ErrorChain(&e)),
        ),
    }
}
