//! The worker's own HTTP surface (DESIGN §11): liveness, readiness, status, the per-game
//! health view and on-demand probes; for operators, the live fleet page (`GET /`, fed by
//! `GET /live`) and the Prometheus scrape (`GET /metrics`).
//!
//! - [`serve`]: the accept loop (connection cap, header timeout, bounded shutdown);
//! - `query`: typed query strings, one JSON `400` for every bad one;
//! - `health`: `/healthz`, `/readyz`, `/status`;
//! - `games`: `/games`, `/games/counts`, `/events`, `POST /games/{id}/probe`;
//! - `page`: the fleet page, its live stream and `/metrics`;
//! - [`auth`]: `HEALTHPROBE_HTTP_TOKEN` in front of every mutating request.
//!
//! Handlers read the shared [`StatusBoard`] and Postgres; on-demand probes run beside the
//! ticks ([`OnDemand`]), through the same commit rule, never through the run loop. Every
//! answer is a typed JSON body (or plain text for `/status` when asked); bad input is a
//! 400 with a JSON error, never a panic.

pub mod auth;
mod games;
mod health;
mod history;
mod page;
mod query;
pub mod serve;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::scrape::Scrape;
use crate::status::StatusBoard;
use crate::store::Store;
use crate::worker::on_demand::OnDemand;

pub use auth::{AccessToken, guard_mutations};
pub use query::MAX_LIMIT;
pub use serve::{ServeLimits, bind, serve, serve_with_limits};

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub nats: async_nats::Client,
    pub board: StatusBoard,
    /// `POST /games/{id}/probe`: beside the ticks, single-flight per game, bounded.
    pub on_demand: OnDemand,
    /// The JetStream stream the relay publishes to, checked by `/status` (DESIGN §15: a
    /// deleted stream shows).
    pub stream: Option<(async_nats::jetstream::Context, String)>,
    /// The instruments, read on demand for `GET /metrics`.
    pub metrics: Scrape,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(page::fleet_page))
        .route("/live", get(page::live_updates))
        .route("/events", get(games::events))
        .route("/games/counts", get(games::game_counts))
        .route("/games/history", get(history::games_history))
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
