//! The worker's own HTTP surface (DESIGN §11): liveness, readiness, status, the per-game
//! health view and on-demand probes; for operators, the live fleet page (`GET /`, fed by
//! `GET /live`) and the Prometheus scrape (`GET /metrics`).
//!
//! Handlers read the shared [`StatusBoard`] and Postgres, and talk to the worker only
//! through its command channel: the worker's state has one owner, its run loop. Every
//! answer is JSON (or plain text for `/status` when asked); bad input is a 400 with a JSON
//! error, never a panic. Query strings are parsed here rather than by axum's `Query`
//! extractor so unknown or repeated parameters and bad values all get the same JSON error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::convert::Infallible;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ErrorChain;
use crate::events::envelope::HealthEvent;
use crate::events::relay::RelayMonitor;
use crate::hysteresis::HealthStatus;
use crate::live;
use crate::scrape::{self, Scrape};
use crate::status::{self, Observed, StatusBoard, game_json, rfc3339};
use crate::store::{GamesQuery, LoggedEvent, Store};
use crate::worker::{ProbeOneError, ProbeOneReport, WorkerCommand};

/// Bound on each dependency check of `/readyz` and `/status`: an orchestrator's probe
/// usually times out after a few seconds, and a check that hangs is a failed check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /games` page size: default and maximum (DESIGN §11).
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// Longest accepted `game_id` glob; a longer one is a mistake, not a query.
const MAX_GLOB_LEN: usize = 512;

/// `GET /events` size: default and maximum. The page shows the latest few; the log itself is
/// read with `healthprobe tail` or SQL.
pub const DEFAULT_EVENTS: i64 = 20;
pub const MAX_EVENTS: i64 = 200;

/// The fleet page: one self-contained HTML file (inline CSS and JS, nothing fetched from
/// elsewhere), so it works offline and behind a locked-down network.
const FLEET_PAGE: &str = include_str!("fleet_page.html");

/// What the page may load: only itself and this origin's endpoints. A browser refuses any
/// external font, script or image, so a slip that would need the internet shows at once.
const FLEET_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

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
        .route("/", get(fleet_page))
        .route("/live", get(live_updates))
        .route("/events", get(events))
        .route("/games/counts", get(game_counts))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/games", get(games))
        .route("/games/{game_id}/probe", post(probe))
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

/// Tells streaming responses (`GET /live`) that the server is shutting down: a graceful
/// shutdown waits for every response to end, and a live stream would never end by itself.
#[derive(Clone)]
struct ServerStopping(CancellationToken);

/// How the status port protects the worker from its clients.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once. A new connection beyond it closes the oldest one (after
    /// the request it is serving, if any): a flood of idle connections can neither hold
    /// the worker's descriptors nor lock out a fresh `/healthz`.
    pub max_connections: usize,
    /// A connection that does not send a complete request head within this, whether new or
    /// idle between requests, is closed.
    pub header_read_timeout: Duration,
}

/// Connections of the status port at once, by default: far more than any set of
/// orchestrator probes and dashboards needs, few enough to sit inside the descriptor
/// budget (`limits::DescriptorBudget`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// A request head (a few hundred bytes) takes a healthy client microseconds; 5 s is
/// generous for a slow network and short enough that idle sockets do not pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// After `stop`, requests in flight get this long to finish before their connections are
/// dropped, so a stuck handler cannot hold the exit past the SIGTERM budget.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Accepting fails while the process is out of descriptors (`EMFILE`); wait this long
/// before trying again rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The open connections, oldest first, each with the token that asks it to close.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: std::collections::BTreeMap<u64, CancellationToken>,
}

/// Serves until `stop` with [`ServeLimits::default`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, stop, ServeLimits::default()).await
}

/// Serves HTTP/1 until `stop`, then lets requests in flight finish for at most
/// [`SHUTDOWN_GRACE`]. Each connection is its own task, tracked and closed at shutdown.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use std::sync::{Arc, Mutex};

    // Live streams (`GET /live`) end when the server stops, so the grace below is not
    // spent waiting for a stream that would never end by itself.
    let router = router.layer(Extension(ServerStopping(stop.clone())));
    let max_connections = limits.max_connections.max(1);
    let connections = Arc::new(Mutex::new(Connections::default()));
    let tasks = tokio_util::task::TaskTracker::new();
    let mut evicted: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and the like: the connection waits in the backlog; try again soon.
                tracing::warn!(error = %e, "status port cannot accept a connection; pausing");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let token = CancellationToken::new();
        let id = {
            // A std mutex: a map insert and pop, never held across an await.
            let mut table = connections.lock().expect("connection table lock");
            while table.open.len() >= max_connections {
                let Some((_, oldest)) = table.open.pop_first() else {
                    break;
                };
                oldest.cancel();
                evicted += 1;
            }
            let id = table.next_id;
            table.next_id += 1;
            table.open.insert(id, token.clone());
            id
        };
        if evicted > 0 && evicted.is_power_of_two() {
            tracing::warn!(
                evicted,
                max_connections,
                "status port at its connection cap: closing the oldest connections"
            );
        }
        let service = TowerToHyperService::new(router.clone());
        let connections = connections.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let closing = tokio::select! {
                _ = connection.as_mut() => false,
                _ = token.cancelled() => true,
                _ = stop.cancelled() => true,
            };
            if closing {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await;
            }
            connections
                .lock()
                .expect("connection table lock")
                .open
                .remove(&id);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(500), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("status connections still open at shutdown; dropped");
    }
    Ok(())
}

/// Binds the status address. Done before anything else at start-up so a taken port or a
/// bad address stops the process at once. Port 0 picks a free port; read it back with
/// `local_addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

fn json_response(code: StatusCode, body: Value) -> Response {
    let mut response = (code, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(code: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    json_response(code, json!({ "error": kind, "message": message.into() }))
}

/// A bad query or path: 400 with a JSON error. Small, unlike a `Response`, so helpers can
/// return it cheaply and handlers turn it into the response.
#[derive(Debug)]
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, "bad_request", self.0)
    }
}

fn bad_request(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// Parses a query string, refusing parameters not in `allowed` and repeated ones.
fn params(raw: Option<String>, allowed: &[&str]) -> Result<HashMap<String, String>, BadRequest> {
    let mut out = HashMap::new();
    let Some(raw) = raw else {
        return Ok(out);
    };
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(bad_request(format!(
                "unknown query parameter {key:?}; this endpoint takes {}",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(bad_request(format!(
                "query parameter {key:?} is given twice"
            )));
        }
    }
    Ok(out)
}

fn bool_param(params: &HashMap<String, String>, name: &str) -> Result<bool, BadRequest> {
    match params.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(bad_request(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

async fn healthz(State(state): State<HttpState>, RawQuery(raw): RawQuery) -> Response {
    if let Err(bad) = params(raw, &[]) {
        return bad.into_response();
    }
    let board = state.board.snapshot();
    let live = board.live();
    json_response(
        if live {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if live { "live" } else { "stalled" },
            "last_tick_ended_ms_ago": board.since_last_tick.map(|d| d.as_millis() as u64),
            "limit_ms": (board.interval * status::LIVENESS_INTERVALS).as_millis() as u64,
        }),
    )
}

async fn check_postgres(store: &Store) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(CHECK_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(ErrorChain(&e).to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn check_outbox(store: &Store) -> Result<i64, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, store.count_unpublished()).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(ErrorChain(&e).to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn check_set_aside(store: &Store) -> Result<i64, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, store.count_set_aside()).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(ErrorChain(&e).to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

fn nats_state(client: &async_nats::Client) -> (bool, String) {
    let state = client.connection_state();
    (
        state == async_nats::connection::State::Connected,
        state.to_string(),
    )
}

async fn readyz(State(state): State<HttpState>, RawQuery(raw): RawQuery) -> Response {
    if let Err(bad) = params(raw, &[]) {
        return bad.into_response();
    }
    let mut reasons = Vec::new();
    if let Err(why) = check_postgres(&state.store).await {
        reasons.push(format!("postgres: {why}"));
    }
    let (connected, nats) = nats_state(&state.nats);
    if !connected {
        reasons.push(format!("nats: not connected (connection {nats})"));
    }
    if reasons.is_empty() {
        json_response(StatusCode::OK, json!({ "ready": true }))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reasons": reasons }),
        )
    }
}

/// Plain text when asked with `?format=text`, or when `Accept` names `text/plain` before
/// (or without) `application/json`; JSON otherwise.
fn wants_text(params: &HashMap<String, String>, headers: &HeaderMap) -> Result<bool, BadRequest> {
    match params.get("format").map(String::as_str) {
        Some("text") => return Ok(true),
        Some("json") => return Ok(false),
        Some(other) => {
            return Err(bad_request(format!(
                "format must be json or text, got {other:?}"
            )));
        }
        None => {}
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for media in accept.split(',') {
        let media = media.split(';').next().unwrap_or("").trim();
        match media {
            "text/plain" => return Ok(true),
            "application/json" => return Ok(false),
            _ => {}
        }
    }
    Ok(false)
}

async fn status(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let parsed = params(raw, &["format", "short"]).and_then(|params| {
        Ok((
            wants_text(&params, &headers)?,
            bool_param(&params, "short")?,
        ))
    });
    let (text, short) = match parsed {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    let (postgres, outbox, set_aside) = tokio::join!(
        check_postgres(&state.store),
        check_outbox(&state.store),
        check_set_aside(&state.store)
    );
    let (nats_connected, nats_state) = nats_state(&state.nats);
    let report = status::evaluate(&Observed {
        postgres,
        nats_state,
        nats_connected,
        outbox_pending: outbox,
        outbox_set_aside: set_aside,
        relay: state.relay.snapshot(),
        board: state.board.snapshot(),
    });
    let code = StatusCode::from_u16(report.overall.http_code()).expect("valid status code");
    match (text, short) {
        (false, false) => json_response(code, report.to_json()),
        (false, true) => json_response(code, json!({ "status": report.overall.as_str() })),
        (true, short) => {
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
    }
}

/// The cursor is the last game id of the page, hex-encoded: opaque to clients, safe in a
/// URL whatever the id holds, and a keyset position that does not shift when games come
/// and go between pages.
fn encode_cursor(game_id: &str) -> String {
    game_id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Option<String> {
    if cursor.is_empty() || !cursor.len().is_multiple_of(2) || !cursor.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn games_query(params: &HashMap<String, String>) -> Result<GamesQuery, BadRequest> {
    const STATUSES: [HealthStatus; 4] = [
        HealthStatus::Unknown,
        HealthStatus::Healthy,
        HealthStatus::Suspect,
        HealthStatus::Failing,
    ];
    let status = match params.get("status") {
        None => None,
        Some(s) if STATUSES.iter().any(|k| k.as_str() == s) => Some(s.clone()),
        Some(s) => {
            return Err(bad_request(format!(
                "status must be one of unknown, healthy, suspect, failing, got {s:?}"
            )));
        }
    };
    let game_id_glob = match params.get("game_id") {
        None => None,
        Some(g) if g.is_empty() => return Err(bad_request("game_id must not be empty")),
        Some(g) if g.len() > MAX_GLOB_LEN => {
            return Err(bad_request(format!(
                "game_id must be at most {MAX_GLOB_LEN} bytes"
            )));
        }
        Some(g) => Some(g.clone()),
    };
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad_request(format!(
                    "limit must be an integer from 1 to {MAX_LIMIT}, got {raw:?}"
                )));
            }
        },
    };
    let after = match params.get("cursor") {
        None => None,
        Some(c) => match decode_cursor(c) {
            Some(after) => Some(after),
            None => {
                return Err(bad_request(format!(
                    "cursor {c:?} is not one this endpoint returned"
                )));
            }
        },
    };
    Ok(GamesQuery {
        status,
        game_id_glob,
        after,
        limit,
    })
}

async fn games(State(state): State<HttpState>, RawQuery(raw): RawQuery) -> Response {
    let query = match params(raw, &["status", "game_id", "limit", "cursor"])
        .and_then(|p| games_query(&p))
    {
        Ok(query) => query,
        Err(bad) => return bad.into_response(),
    };
    // One row more than asked says whether there is a next page.
    let page = GamesQuery {
        limit: query.limit + 1,
        ..query.clone()
    };
    match state.store.games_page(&page).await {
        Ok(mut rows) => {
            let more = rows.len() as i64 > query.limit;
            rows.truncate(query.limit as usize);
            let next_cursor = more
                .then(|| rows.last().map(|g| encode_cursor(&g.game_id)))
                .flatten();
            json_response(
                StatusCode::OK,
                json!({
                    "games": rows.iter().map(game_json).collect::<Vec<_>>(),
                    "next_cursor": next_cursor,
                }),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("reading the games from Postgres: {}", ErrorChain(&e)),
        ),
    }
}

fn event_json(event: &HealthEvent) -> Value {
    json!({
        "event_id": event.event_id.to_string(),
        "event_type": event.event_type().as_str(),
        "occurred_at": rfc3339(event.occurred_at),
        "details": serde_json::to_value(&event.details).unwrap_or(Value::Null),
    })
}

fn probe_json(report: &ProbeOneReport) -> Value {
    let outcome = &report.outcome;
    json!({
        "game_id": report.record.game_id,
        "healthy": outcome.is_healthy(),
        "outcome": outcome.outcome_label(),
        "last_status": outcome.status,
        "last_error": outcome.failure.as_ref().map(|f| f.message.clone()),
        "latency_ms": status::round_ms(outcome.latency.as_secs_f64() * 1000.0),
        "completed_at": rfc3339(outcome.completed_at),
        "status": report.health.status().as_str(),
        "consecutive_failures": report.health.consecutive_failures,
        "event": report.event.as_ref().map(event_json),
    })
}

async fn probe(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let game_id = match path {
        Ok(Path(game_id)) => game_id,
        Err(rejection) => return bad_request(rejection.body_text()).into_response(),
    };
    if let Err(bad) = params(raw, &[]) {
        return bad.into_response();
    }
    let (reply, answer) = oneshot::channel();
    let command = WorkerCommand::ProbeOne {
        game_id: game_id.clone(),
        reply,
    };
    if let Err(e) = state.commands.try_send(command) {
        let (kind, message) = match e {
            mpsc::error::TrySendError::Full(_) => {
                ("busy", "the worker has too many probes queued; retry later")
            }
            mpsc::error::TrySendError::Closed(_) => ("unavailable", "the worker is stopping"),
        };
        return error(StatusCode::SERVICE_UNAVAILABLE, kind, message);
    }
    match tokio::time::timeout(state.probe_reply_limit, answer).await {
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the worker did not answer within {:?} (a long tick may be running); the probe was not run",
                state.probe_reply_limit
            ),
        ),
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the worker stopped before probing",
        ),
        Ok(Ok(Ok(report))) => {
            if let Some(event) = &report.event {
                state.board.live_feed().event_recorded(json!({
                    "game_id": report.record.game_id,
                    "event": event_json(event),
                }));
            }
            json_response(StatusCode::OK, probe_json(&report))
        }
        Ok(Ok(Err(e @ ProbeOneError::NotRunning(_)))) => {
            error(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        Ok(Ok(Err(e))) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            ErrorChain(&e).to_string(),
        ),
    }
}

async fn fleet_page(RawQuery(raw): RawQuery) -> Response {
    // The page keeps its filters in the URL fragment, never in the query.
    if let Err(bad) = params(raw, &[]) {
        return bad.into_response();
    }
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
async fn live_updates(
    State(state): State<HttpState>,
    RawQuery(raw): RawQuery,
    stopping: Option<Extension<ServerStopping>>,
) -> Response {
    if let Err(bad) = params(raw, &[]) {
        return bad.into_response();
    }
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

fn logged_event_json(event: &LoggedEvent) -> Value {
    json!({
        "event_id": event.event_id.to_string(),
        "game_id": event.game_id,
        "container_id": event.container_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at.map(rfc3339),
        "details": event.details,
        "published": event.published,
    })
}

/// `GET /events?limit=N`: the latest health events of the log, newest first.
async fn events(State(state): State<HttpState>, RawQuery(raw): RawQuery) -> Response {
    let limit = match params(raw, &["limit"]).and_then(|p| match p.get("limit") {
        None => Ok(DEFAULT_EVENTS),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_EVENTS).contains(&n) => Ok(n),
            _ => Err(bad_request(format!(
                "limit must be an integer from 1 to {MAX_EVENTS}, got {raw:?}"
            ))),
        },
    }) {
        Ok(limit) => limit,
        Err(bad) => return bad.into_response(),
    };
    match state.store.latest_events(limit).await {
        Ok(rows) => json_response(
            StatusCode::OK,
            json!({ "events": rows.iter().map(logged_event_json).collect::<Vec<_>>() }),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("reading the events from Postgres: {}", ErrorChain(&e)),
        ),
    }
}

/// `GET /games/counts`: running games in total and by status (every status present, zero
/// when none).
async fn game_counts(State(state): State<HttpState>, RawQuery(raw): RawQuery) -> Response {
    if let Err(bad) = params(raw, &[]) {
        return bad.into_response();
    }
    match state.store.status_counts().await {
        Ok(rows) => {
            let mut by_status = serde_json::Map::new();
            for status in ["failing", "suspect", "unknown", "healthy"] {
                by_status.insert(status.into(), json!(0));
            }
            let mut total = 0;
            for (status, count) in rows {
                total += count;
                by_status.insert(status, json!(count));
            }
            json_response(
                StatusCode::OK,
                json!({ "total": total, "by_status": by_status }),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("counting the games in Postgres: {}", ErrorChain(&e)),
        ),
    }
}

/// `GET /metrics`: the instruments in the Prometheus text format.
async fn metrics(State(state): State<HttpState>, RawQuery(raw): RawQuery) -> Response {
    if let Err(bad) = params(raw, &[]) {
        return bad.into_response();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        for id in ["game-1", "ü/%?&=", "a"] {
            assert_eq!(decode_cursor(&encode_cursor(id)).as_deref(), Some(id));
        }
        for junk in ["", "abc", "zz", "ff", "é1"] {
            assert_eq!(decode_cursor(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn query_parameters_are_checked() {
        let p = |q: &str| {
            params(
                Some(q.to_owned()),
                &["status", "game_id", "limit", "cursor"],
            )
        };
        assert!(p("status=failing&limit=5").is_ok());
        assert!(p("bogus=1").is_err());
        assert!(p("limit=1&limit=2").is_err());
        let q = |q: &str| games_query(&p(q).unwrap());
        assert_eq!(q("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(q("limit=1000").unwrap().limit, 1000);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "limit=-1",
            "status=sick",
            "cursor=zz",
            "game_id=",
        ] {
            assert!(q(bad).is_err(), "{bad}");
        }
    }
}
