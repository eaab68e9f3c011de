//! The worker's own HTTP surface (DESIGN §11): liveness, readiness, status, the per-game
//! health view and on-demand probes; for operators, the live fleet page (`GET /`, fed by
//! `GET /live`) and the Prometheus scrape (`GET /metrics`).
//!
//! - [`serve`]: the accept loop (connection cap, header timeout, bounded shutdown);
//! - `query`: typed query strings, one JSON `400` for every bad one;
//! - `health`: `/healthz`, `/readyz`, `/status`;
//! - `games`: `/games`, `/games/counts`, `/events`, `POST /games/{id}/probe`;
//! - `page`: the fleet page, its live stream and `/metrics`.
//!
//! Handlers read the shared [`StatusBoard`] and Postgres, and talk to the worker only
//! through its command channel: the worker's state has one owner, its run loop. Every
//! answer is a typed JSON body (or plain text for `/status` when asked); bad input is a
//! 400 with a JSON error, never a panic.

mod games;
mod health;
mod page;
mod query;
pub mod serve;

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::events::relay::RelayMonitor;
use crate::scrape::Scrape;
use crate::status::StatusBoard;
use crate::store::Store;
use crate::worker::WorkerCommand;

pub use query::{DEFAULT_EVENTS, DEFAULT_LIMIT, MAX_EVENTS, MAX_LIMIT};
pub use serve::{
    DEFAULT_MAX_CONNECTIONS, HEADER_READ_TIMEOUT, ServeLimits, bind, serve, serve_with_limits,
};

/// `POST /games/{id}/probe` waits for the worker at most the probe timeout plus this:
/// commands are served between ticks, so a tick in progress comes first. Past it the
/// caller gets 504 and the worker drops the command unrun.
const PROBE_REPLY_SLACK: Duration = Duration::from_secs(10);

/// How long `POST /games/{id}/probe` waits for the worker, for a given probe timeout.
pub fn probe_reply_limit(probe_timeout: Duration) -> Duration {
    probe_timeout + PROBE_REPLY_SLACK
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub nats: async_nats::Client,
    pub board: StatusBoard,
    pub commands: mpsc::Sender<WorkerCommand>,
    /// How long `POST /games/{id}/probe` waits for the worker: the probe itself plus a
    /// tick that may be in progress (commands are served between ticks).
    pub probe_reply_limit: Duration,
    /// The instruments, read on demand for `GET /metrics`.
    pub metrics: Scrape,
    /// The outbox relay's supervision, for `/status`.
    pub relay: RelayMonitor,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(page::fleet_page))
        .route("/live", get(page::live_updates))
        .route("/events", get(games::events))
        .route("/games/counts", get(games::game_counts))
        .route("/metrics", get(page::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/status", get(health::status))
        .route("/games", get(games::games))
        .route("/games/{game_id}/probe", post(games::probe))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .with_state(state)
}

/// Every error answer: `{"error": kind, "message": why}`.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    error: &'static str,
    message: String,
}

impl ErrorBody {
    pub(crate) fn new(error: &'static str, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
        }
    }
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).expect("response bodies serialize");
    let mut response = (code, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(code: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
    json_response(code, &ErrorBody::new(kind, message))
}
