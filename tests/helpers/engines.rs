//! A fleet of fake game engines: one axum server on 127.0.0.1, one path per engine
//! (`/e/<id>/healthz`), each with a behaviour the test can change while the worker runs.
//! The fleet observes what the worker does: requests, probes in flight, connections,
//! user agents.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use healthprobe::sim::InFlightGauge;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    Healthy,
    Status(u16),
    /// 302 to another path of the fleet, which counts any visit.
    Redirect,
    /// Answers 200 after this long.
    Delay(Duration),
    /// 200 with a body of this many bytes.
    Body(usize),
    /// Alternates between 200 and 503 every `period`, shifted by `offset`, on the fleet's
    /// clock; a time-based schedule keeps runs long whatever the worker's pace.
    Flap {
        period: Duration,
        offset: Duration,
    },
}

struct FleetState {
    started: Instant,
    behaviors: Mutex<HashMap<String, Behavior>>,
    /// Per engine, (when, healthy?) of every answer served.
    served: Mutex<HashMap<String, Vec<(Instant, bool)>>>,
    requests: Mutex<HashMap<String, usize>>,
    user_agents: Mutex<Vec<String>>,
    in_flight: InFlightGauge,
    connections: AtomicUsize,
    redirect_follows: AtomicUsize,
}

impl Default for FleetState {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            behaviors: Mutex::default(),
            served: Mutex::default(),
            requests: Mutex::default(),
            user_agents: Mutex::default(),
            in_flight: InFlightGauge::default(),
            connections: AtomicUsize::default(),
            redirect_follows: AtomicUsize::default(),
        }
    }
}

pub struct Fleet {
    pub addr: SocketAddr,
    state: Arc<FleetState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn healthz(
    State(state): State<Arc<FleetState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let _in_flight = state.in_flight.enter();
    *state
        .requests
        .lock()
        .unwrap()
        .entry(id.clone())
        .or_default() += 1;
    if let Some(agent) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        state.user_agents.lock().unwrap().push(agent.to_owned());
    }
    let behavior = state.behaviors.lock().unwrap().get(&id).cloned();
    let healthy = match &behavior {
        None | Some(Behavior::Status(_)) | Some(Behavior::Redirect) => false,
        Some(Behavior::Flap { period, offset }) => {
            let phase = (state.started.elapsed() + *offset).as_nanos() / period.as_nanos().max(1);
            phase.is_multiple_of(2)
        }
        Some(_) => true,
    };
    state
        .served
        .lock()
        .unwrap()
        .entry(id.clone())
        .or_default()
        .push((Instant::now(), healthy));
    match behavior {
        None => (StatusCode::NOT_FOUND, "no such engine").into_response(),
        Some(Behavior::Healthy) => (StatusCode::OK, "ok").into_response(),
        Some(Behavior::Status(code)) => (
            StatusCode::from_u16(code).expect("valid status"),
            "not healthy",
        )
            .into_response(),
        Some(Behavior::Redirect) => (
            StatusCode::FOUND,
            [(header::LOCATION, "/elsewhere")],
            "moved",
        )
            .into_response(),
        Some(Behavior::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "ok, eventually").into_response()
        }
        Some(Behavior::Body(size)) => (StatusCode::OK, vec![b'x'; size]).into_response(),
        Some(Behavior::Flap { .. }) if healthy => (StatusCode::OK, "ok").into_response(),
        Some(Behavior::Flap { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, "flapping").into_response()
        }
    }
}

async fn elsewhere(State(state): State<Arc<FleetState>>) -> &'static str {
    state.redirect_follows.fetch_add(1, Ordering::SeqCst);
    "you followed a redirect"
}

impl Fleet {
    pub async fn start() -> Self {
        let state = Arc::new(FleetState::default());
        let app = Router::new()
            .route("/e/{id}/healthz", get(healthz))
            .route("/elsewhere", get(elsewhere))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fleet");
        let addr = listener.local_addr().expect("fleet address");
        let counter = state.clone();
        let listener = listener.tap_io(move |_tcp| {
            counter.connections.fetch_add(1, Ordering::SeqCst);
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fleet server");
        });
        Self {
            addr,
            state,
            server,
        }
    }

    /// Adds or changes an engine; returns its endpoint.
    pub fn set(&self, id: &str, behavior: Behavior) -> String {
        self.state
            .behaviors
            .lock()
            .unwrap()
            .insert(id.to_owned(), behavior);
        self.endpoint(id)
    }

    pub fn endpoint(&self, id: &str) -> String {
        format!("http://{}/e/{id}", self.addr)
    }

    pub fn requests(&self, id: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> usize {
        self.state.requests.lock().unwrap().values().sum()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.in_flight.peak() as usize
    }

    /// Starts a new measurement of the peak in flight.
    pub fn reset_max_in_flight(&self) {
        self.state.in_flight.take_peak();
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn redirect_follows(&self) -> usize {
        self.state.redirect_follows.load(Ordering::SeqCst)
    }

    /// Replaces a flapping engine by its current state, fixed from now on, so the run it is
    /// in goes on rather than being cut short. Returns whether it is healthy.
    pub fn freeze(&self, id: &str) -> bool {
        let mut behaviors = self.state.behaviors.lock().unwrap();
        let Some(Behavior::Flap { period, offset }) = behaviors.get(id).cloned() else {
            panic!("{id} is not flapping");
        };
        let phase = (self.state.started.elapsed() + offset).as_nanos() / period.as_nanos().max(1);
        let healthy = phase.is_multiple_of(2);
        behaviors.insert(
            id.to_owned(),
            if healthy {
                Behavior::Healthy
            } else {
                Behavior::Status(503)
            },
        );
        healthy
    }

    /// (when, healthy?) of every answer served to `id`, in order.
    pub fn served(&self, id: &str) -> Vec<(Instant, bool)> {
        self.state
            .served
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn user_agents(&self) -> Vec<String> {
        self.state.user_agents.lock().unwrap().clone()
    }
}

/// Collapses served answers into runs of (healthy?, count).
pub fn runs(served: &[(Instant, bool)]) -> Vec<(bool, usize)> {
    let mut runs: Vec<(bool, usize)> = Vec::new();
    for &(_, healthy) in served {
        match runs.last_mut() {
            Some((h, n)) if *h == healthy => *n += 1,
            _ => runs.push((healthy, 1)),
        }
    }
    runs
}

/// The events a correct worker emits for the answers an engine served: each failing run
/// opens one episode (`probe_failed`), the healthy run after it closes it
/// (`probe_recovered`). Every run but a first healthy one (which publishes nothing either
/// way) must be at least `min_run` answers long, so that a missed tick cannot hide it;
/// a shorter one fails the test as too short for an unambiguous model.
pub fn expected_events(id: &str, served: &[(Instant, bool)], min_run: usize) -> Vec<&'static str> {
    let game_runs = runs(served);
    let mut expected = Vec::new();
    let mut failing = false;
    for (index, &(healthy, count)) in game_runs.iter().enumerate() {
        assert!(
            count >= min_run || (index == 0 && healthy),
            "{id}: a run of {count} answers is too short for an unambiguous model: {game_runs:?}"
        );
        if !healthy && !failing {
            expected.push("probe_failed");
            failing = true;
        } else if healthy && failing {
            expected.push("probe_recovered");
            failing = false;
        }
    }
    expected
}
