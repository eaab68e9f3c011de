//! A simulated fleet of game engines on one HTTP server: engine `NAME` answers
//! `GET /e/NAME/healthz`. Used by `healthprobe fleet`, the demo, Docker Compose and tests.
//!
//! Each engine has a [`Behavior`] chosen by ratio (a weighted mix, spread evenly across the
//! fleet) and, for `flapping` and `scheduled` engines, a cycle of [`Phase`]s driven by the
//! time since the fleet started. Nothing here is random, so a test knows what each engine
//! answers at any moment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::behavior::{Behavior, Mix, Phase, Schedule};

/// Everything that shapes a fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub engines: usize,
    /// Engine names are `<prefix><number>`, numbers zero-padded to three digits.
    pub prefix: String,
    pub mix: Mix,
    pub flap_period: Duration,
    pub slow_delay: Duration,
    pub schedule: Schedule,
    pub failing_status: u16,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            engines: 10,
            prefix: "fleet-".into(),
            mix: "healthy=7,flapping=2,failing=1".parse().expect("valid mix"),
            flap_period: Duration::from_secs(10),
            slow_delay: Duration::from_secs(3),
            schedule: "healthy:20s,failing:20s".parse().expect("valid schedule"),
            failing_status: 503,
        }
    }
}

/// One simulated engine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub name: String,
    pub behavior: Behavior,
    /// The URL a runtime record points at (`engine_endpoint`).
    pub endpoint: String,
    /// Where a flapping engine starts in its cycle.
    offset: Duration,
}

struct Shared {
    spec: FleetSpec,
    started: Instant,
    engines: Vec<Engine>,
    by_name: HashMap<String, usize>,
    requests: Vec<AtomicU64>,
    /// Health requests in flight: what a load-shaping setting such as
    /// `RTMANAGER_PROBE_SPREAD` changes.
    in_flight: InFlightGauge,
}

/// Requests being answered now, and the most at once since the last reset.
#[derive(Debug, Default)]
pub struct InFlightGauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl InFlightGauge {
    /// Counts one request in flight for as long as the guard lives.
    pub fn enter(&self) -> InFlightGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(self)
    }

    pub fn current(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Returns the peak so far and starts a new measurement from the current level.
    pub fn take_peak(&self) -> u64 {
        self.peak.swap(self.current(), Ordering::SeqCst)
    }
}

pub struct InFlightGuard<'a>(&'a InFlightGauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn phase(&self, index: usize, at: Instant) -> Phase {
        let engine = &self.engines[index];
        let elapsed = at.saturating_duration_since(self.started);
        match engine.behavior {
            Behavior::Healthy => Phase::Healthy,
            Behavior::Failing => Phase::Failing,
            Behavior::Slow => Phase::Slow,
            Behavior::Flapping => Schedule(vec![
                (Phase::Healthy, self.spec.flap_period),
                (Phase::Failing, self.spec.flap_period),
            ])
            .phase_at(elapsed + engine.offset),
            Behavior::Scheduled => self.spec.schedule.phase_at(elapsed),
        }
    }
}

/// A running fleet. Stop it with [`Fleet::shutdown`]; dropping it stops the server too.
pub struct Fleet {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn healthz(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let Some(&index) = shared.by_name.get(&name) else {
        return (StatusCode::NOT_FOUND, "no such engine").into_response();
    };
    shared.requests[index].fetch_add(1, Ordering::Relaxed);
    let _in_flight = shared.in_flight.enter();
    match shared.phase(index, Instant::now()) {
        Phase::Healthy => (StatusCode::OK, "ok").into_response(),
        Phase::Failing => (
            StatusCode::from_u16(shared.spec.failing_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "simulated failure",
        )
            .into_response(),
        Phase::Slow => {
            tokio::time::sleep(shared.spec.slow_delay).await;
            (StatusCode::OK, "ok, slowly").into_response()
        }
    }
}

/// `GET /stats[?reset=true]`: request totals and the peak in flight (reset to the current
/// level when asked, so a caller can measure one interval).
async fn stats(
    State(shared): State<Arc<Shared>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let requests: u64 = shared
        .requests
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .sum();
    let in_flight = shared.in_flight.current();
    let max_in_flight = if query.as_deref() == Some("reset=true") {
        shared.in_flight.take_peak()
    } else {
        shared.in_flight.peak()
    };
    let body = serde_json::json!({
        "requests": requests,
        "in_flight": in_flight,
        "max_in_flight": max_in_flight,
    })
    .to_string();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn index(State(shared): State<Arc<Shared>>) -> String {
    let now = Instant::now();
    let mut text = String::new();
    for (i, engine) in shared.engines.iter().enumerate() {
        text.push_str(&format!(
            "{} {} {} {}\n",
            engine.name,
            engine.behavior.as_str(),
            shared.phase(i, now).as_str(),
            engine.endpoint
        ));
    }
    text
}

impl Fleet {
    /// Starts the fleet on `listen` (port 0 picks one). Endpoints are
    /// `<advertise>/e/<name>`, where `advertise` defaults to `http://<bound address>`;
    /// set it when the worker reaches the fleet under another name (a container's).
    pub async fn start(
        spec: FleetSpec,
        listen: SocketAddr,
        advertise: Option<&str>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let base = advertise
            .map(|a| a.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{addr}"));
        let width = spec.engines.to_string().len().max(3);
        let engines: Vec<Engine> = spec
            .mix
            .assign(spec.engines)
            .into_iter()
            .enumerate()
            .map(|(i, behavior)| {
                let name = format!("{}{:0width$}", spec.prefix, i + 1);
                // Flapping engines start spread over the cycle (golden-ratio steps), so a
                // few flip at a time instead of all together.
                let cycle = spec.flap_period * 2;
                let offset = cycle.mul_f64((i as f64 * 0.618_034).fract());
                Engine {
                    endpoint: format!("{base}/e/{name}"),
                    name,
                    behavior,
                    offset,
                }
            })
            .collect();
        let by_name = engines
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        let requests = engines.iter().map(|_| AtomicU64::new(0)).collect();
        let shared = Arc::new(Shared {
            spec,
            started: Instant::now(),
            engines,
            by_name,
            requests,
            in_flight: InFlightGauge::default(),
        });
        let app = Router::new()
            .route("/", get(index))
            .route("/stats", get(stats))
            .route("/e/{name}/healthz", get(healthz))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        Ok(Self {
            addr,
            shared,
            stop,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn engines(&self) -> &[Engine] {
        &self.shared.engines
    }

    /// Health checks engine `name` has received.
    pub fn requests(&self, name: &str) -> u64 {
        self.shared
            .by_name
            .get(name)
            .map_or(0, |&i| self.shared.requests[i].load(Ordering::Relaxed))
    }

    /// Logs one line each time a flapping or scheduled engine changes phase, until `stop`.
    pub async fn log_phase_changes(&self, stop: CancellationToken) {
        let mut last: Vec<Phase> = (0..self.shared.engines.len())
            .map(|i| self.shared.phase(i, Instant::now()))
            .collect();
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = Instant::now();
            for (i, previous) in last.iter_mut().enumerate() {
                let phase = self.shared.phase(i, now);
                if phase != *previous {
                    let engine = &self.shared.engines[i];
                    tracing::info!(engine = %engine.name, behavior = engine.behavior.as_str(), from = previous.as_str(), to = phase.as_str(), "fleet engine changed phase");
                    *previous = phase;
                }
            }
        }
    }

    /// Stops accepting, lets requests in flight finish (a slow one takes its delay).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "fleet server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "fleet server task ended abnormally"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_assigns_exact_counts_spread_out() {
        let mix: Mix = "healthy=6,failing=2,flapping=2".parse().unwrap();
        let assigned = mix.assign(10);
        let count = |b| assigned.iter().filter(|&&x| x == b).count();
        assert_eq!(
            (
                count(Behavior::Healthy),
                count(Behavior::Failing),
                count(Behavior::Flapping)
            ),
            (6, 2, 2)
        );
        // Spread: the two failing engines are not neighbours.
        let failing: Vec<usize> = (0..10)
            .filter(|&i| assigned[i] == Behavior::Failing)
            .collect();
        assert!(failing[1] - failing[0] > 1, "{assigned:?}");
        let thirds: Mix = "healthy=1,failing=1,slow=1".parse().unwrap();
        let assigned = thirds.assign(10);
        assert_eq!(assigned.len(), 10);
        assert_eq!(
            assigned.iter().filter(|&&x| x == Behavior::Healthy).count(),
            4
        );
        assert_eq!(thirds.assign(0), Vec::<Behavior>::new());
    }

    #[test]
    fn bad_mixes_and_schedules_are_refused() {
        for bad in [
            "",
            "healthy",
            "healthy=x",
            "sick=1",
            "healthy=-1",
            "healthy=0",
            "healthy=1,healthy=2",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?}");
        }
        for bad in ["", "healthy", "healthy:0s", "dead:1s", "healthy:soon"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_schedule_repeats() {
        let s: Schedule = "healthy:2s,failing:1s,slow:1s".parse().unwrap();
        let at = |ms| s.phase_at(Duration::from_millis(ms));
        assert_eq!(at(0), Phase::Healthy);
        assert_eq!(at(1999), Phase::Healthy);
        assert_eq!(at(2000), Phase::Failing);
        assert_eq!(at(3500), Phase::Slow);
        assert_eq!(at(4000), Phase::Healthy);
        assert_eq!(at(6500), Phase::Failing);
    }
}
