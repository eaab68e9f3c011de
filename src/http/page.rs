//! For operators: the fleet page (`GET /`), its live stream (`GET /live`) and the
//! Prometheus scrape (`GET /metrics`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;

use super::query::{NoParams, Params};
use super::serve::ServerStopping;
use super::{HttpState, error};
use crate::live;
use crate::scrape;

/// The fleet page: one self-contained HTML file (inline CSS and JS, nothing fetched from
/// elsewhere), so it works offline and behind a locked-down network.
const FLEET_PAGE: &str = include_str!("../fleet_page.html");

/// What the page may load: only itself and this origin's endpoints. A browser refuses any
/// external font, script or image, so a slip that would need the internet shows at once.
const FLEET_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`. The page keeps its filters in the URL fragment, never in the query.
pub(super) async fn fleet_page(_: Params<NoParams>) -> Response {
    let mut response = FLEET_PAGE.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FLEET_PAGE_CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /live`: Server-Sent Events, `hello` first, then `tick` at each tick's end and
/// `health_event` for events outside ticks (see [`crate::live`]). Comments keep idle
/// connections open through proxies.
pub(super) async fn live_updates(
    State(state): State<HttpState>,
    _: Params<NoParams>,
    stopping: Option<Extension<ServerStopping>>,
) -> Response {
    let feed = state.board.live_feed();
    if feed.subscribers() >= live::MAX_SUBSCRIBERS {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{} live streams are open already; close one or retry later",
                live::MAX_SUBSCRIBERS
            ),
        );
    }
    let stop = stopping.map(|Extension(s)| s.0).unwrap_or_default();
    let stream = feed
        .subscribe(stop)
        .map(|update| Ok::<_, Infallible>(Event::default().event(update.kind).data(update.data)));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `GET /metrics`: the instruments in the Prometheus text format.
pub(super) async fn metrics(State(state): State<HttpState>, _: Params<NoParams>) -> Response {
    match state.metrics.render() {
        Ok(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(scrape::CONTENT_TYPE),
            );
            response
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_unavailable",
            format!("collecting the metrics: {e}"),
        ),
    }
}
