//! `GET /healthz` (liveness), `GET /readyz` (readiness) and `GET /status` (every component
//! with its rule, as JSON or text).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::query::{Format, NoParams, Params, StatusParams};
use super::{HttpState, json_response};
use crate::ErrorChain;
use crate::status::{self, Observed};
use crate::store::Store;

/// Bound on each dependency check of `/readyz` and `/status`: an orchestrator's probe
/// usually times out after a few seconds, and a check that hangs is a failed check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Liveness {
    status: &'static str,
    last_tick_ended_ms_ago: Option<u64>,
    /// The latest progress: a tick started or ended, a probe recorded.
    last_progress_ms_ago: u64,
    limit_ms: u64,
}

pub(super) async fn healthz(State(state): State<HttpState>, _: Params<NoParams>) -> Response {
    let board = state.board.snapshot();
    let live = board.live();
    json_response(
        if live {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &Liveness {
            status: if live { "live" } else { "stalled" },
            last_tick_ended_ms_ago: board.since_last_tick.map(|d| d.as_millis() as u64),
            last_progress_ms_ago: board.since_alive().as_millis() as u64,
            limit_ms: board.liveness_limit().as_millis() as u64,
        },
    )
}

/// A check bounded by [`CHECK_TIMEOUT`]: its value, or why there is none.
async fn checked<T>(check: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ErrorChain(&e).to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn check_postgres(store: &Store) -> Result<Duration, String> {
    let started = Instant::now();
    checked(store.ping()).await.map(|()| started.elapsed())
}

fn nats_state(client: &async_nats::Client) -> (bool, String) {
    let state = client.connection_state();
    (
        state == async_nats::connection::State::Connected,
        state.to_string(),
    )
}

/// Whether the relay's stream exists (DESIGN §15: a deleted stream shows on `/status`).
async fn check_stream(state: &HttpState, nats_connected: bool) -> Result<Option<bool>, String> {
    let Some((js, name)) = &state.stream else {
        return Ok(None);
    };
    if !nats_connected {
        return Err("NATS is not connected".to_owned());
    }
    match tokio::time::timeout(CHECK_TIMEOUT, js.get_stream(name)).await {
        Ok(Ok(_)) => Ok(Some(true)),
        Ok(Err(e))
            if matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(Some(false))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
}

pub(super) async fn readyz(State(state): State<HttpState>, _: Params<NoParams>) -> Response {
    let mut reasons = Vec::new();
    if let Err(why) = check_postgres(&state.store).await {
        reasons.push(format!("postgres: {why}"));
    }
    let (connected, nats) = nats_state(&state.nats);
    if !connected {
        reasons.push(format!("nats: not connected (connection {nats})"));
    }
    let ready = reasons.is_empty();
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &Readiness { ready, reasons },
    )
}

/// Plain text when asked with `?format=text`, or when `Accept` names `text/plain` before
/// (or without) `application/json`; JSON otherwise.
fn wants_text(format: Option<Format>, headers: &HeaderMap) -> bool {
    if let Some(format) = format {
        return format == Format::Text;
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for media in accept.split(',') {
        let media = media.split(';').next().unwrap_or("").trim();
        match media {
            "text/plain" => return true,
            "application/json" => return false,
            _ => {}
        }
    }
    false
}

#[derive(Serialize)]
struct ShortStatus {
    status: &'static str,
}

pub(super) async fn status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Params(params): Params<StatusParams>,
) -> Response {
    let text = wants_text(params.format, &headers);
    let short = params.short.is_some_and(|flag| flag.0);
    let (postgres, outbox, set_aside) = tokio::join!(
        check_postgres(&state.store),
        checked(state.store.count_unpublished()),
        checked(state.store.count_set_aside())
    );
    let (nats_connected, nats_state) = nats_state(&state.nats);
    let stream = check_stream(&state, nats_connected).await;
    let report = status::evaluate(&Observed {
        stream,
        postgres,
        nats_state,
        nats_connected,
        outbox_pending: outbox,
        outbox_set_aside: set_aside,
        relay: state.board.relay_health(),
        board: state.board.snapshot(),
    });
    let code = StatusCode::from_u16(report.overall.http_code()).expect("valid status code");
    if !text {
        return if short {
            json_response(
                code,
                &ShortStatus {
                    status: report.overall.as_str(),
                },
            )
        } else {
            json_response(code, &report.to_json())
        };
    }
    let body = if short {
        format!("{}\n", report.overall.as_str())
    } else {
        report.to_text()
    };
    let mut response = (code, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
