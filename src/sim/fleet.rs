//! A simulated fleet of game engines on one HTTP server: engine `NAME` answers
//! `GET /e/NAME/healthz`. Used by `healthprobe fleet`, the demo, Docker Compose and tests.
//!
//! Each engine has a [`Behavior`] chosen by ratio (a weighted mix, spread evenly across the
//! fleet) and, for `flapping` and `scheduled` engines, a cycle of [`Phase`]s driven by the
//! time since the fleet started. Nothing here is random, so a test knows what each engine
//! answers at any moment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
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

/// What an engine does at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `200 ok`.
    Healthy,
    /// The fleet's failing status (default 503).
    Failing,
    /// `200` after the fleet's slow delay: a timeout when the delay exceeds the probe
    /// timeout.
    Slow,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Slow => "slow",
        }
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "healthy" => Ok(Self::Healthy),
            "failing" => Ok(Self::Failing),
            "slow" => Ok(Self::Slow),
            other => Err(format!(
                "unknown phase {other:?} (healthy, failing or slow)"
            )),
        }
    }
}

/// An engine's character for the life of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behavior {
    Healthy,
    Failing,
    Slow,
    /// Healthy for one flap period, failing for the next, and so on; each engine starts at
    /// its own offset so they do not all flip at once.
    Flapping,
    /// Follows the fleet's schedule (a cycle of phases), all in step.
    Scheduled,
}

impl Behavior {
    pub const ALL: [Behavior; 5] = [
        Self::Healthy,
        Self::Failing,
        Self::Slow,
        Self::Flapping,
        Self::Scheduled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Slow => "slow",
            Self::Flapping => "flapping",
            Self::Scheduled => "scheduled",
        }
    }
}

impl FromStr for Behavior {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s.trim())
            .ok_or_else(|| {
                format!("unknown behavior {s:?} (healthy, failing, slow, flapping, scheduled)")
            })
    }
}

/// Weights per behavior, e.g. `healthy=6,flapping=2,failing=1,slow=1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub Vec<(Behavior, f64)>);

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} must be behavior=weight"))?;
            let behavior: Behavior = name.parse()?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} must be a number, got {weight:?}"))?;
            if !weight.is_finite() || weight < 0.0 {
                return Err(format!("weight of {name} must be zero or more"));
            }
            if weights.iter().any(|(b, _)| *b == behavior) {
                return Err(format!("{name} appears twice in the mix"));
            }
            weights.push((behavior, weight));
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(Self(weights))
    }
}

impl Mix {
    /// Behaviors for `n` engines: counts by largest remainder (so `1:1:1` over 10 gives
    /// 4,3,3, never 3,3,3), spread with smooth weighted round robin so failing engines are
    /// interleaved with healthy ones rather than bunched at the end.
    pub fn assign(&self, n: usize) -> Vec<Behavior> {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        let exact: Vec<f64> = self.0.iter().map(|(_, w)| w / total * n as f64).collect();
        let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut order: Vec<usize> = (0..exact.len()).collect();
        order.sort_by(|&a, &b| {
            (exact[b] - exact[b].floor())
                .total_cmp(&(exact[a] - exact[a].floor()))
                .then(a.cmp(&b))
        });
        let short = n - counts.iter().sum::<usize>();
        for &i in order.iter().take(short) {
            counts[i] += 1;
        }
        let mut current = vec![0i64; counts.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            for (c, &count) in current.iter_mut().zip(&counts) {
                *c += count as i64;
            }
            let pick = (0..counts.len())
                .max_by(|&a, &b| current[a].cmp(&current[b]).then(b.cmp(&a)))
                .expect("a non-empty mix");
            current[pick] -= n as i64;
            out.push(self.0[pick].0);
        }
        out
    }
}

/// A cycle of phases, e.g. `healthy:20s,failing:15s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule(pub Vec<(Phase, Duration)>);

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (phase, duration) = part
                .split_once(':')
                .ok_or_else(|| format!("schedule step {part:?} must be phase:duration"))?;
            let duration = humantime::parse_duration(duration.trim())
                .map_err(|e| format!("schedule step {part:?}: {e}"))?;
            if duration.is_zero() {
                return Err(format!("schedule step {part:?} must last more than zero"));
            }
            steps.push((phase.parse()?, duration));
        }
        if steps.is_empty() {
            return Err("the schedule needs at least one step".into());
        }
        Ok(Self(steps))
    }
}

impl Schedule {
    /// The phase `elapsed` into the (repeating) cycle.
    pub fn phase_at(&self, elapsed: Duration) -> Phase {
        let cycle: Duration = self.0.iter().map(|(_, d)| *d).sum();
        let mut at = Duration::from_nanos((elapsed.as_nanos() % cycle.as_nanos()) as u64);
        for (phase, duration) in &self.0 {
            if at < *duration {
                return *phase;
            }
            at -= *duration;
        }
        self.0.last().expect("non-empty schedule").0
    }
}

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
