//! One test's world, named the way the test reads: an isolated database and stream
//! ([`TestEnv`]), a fleet of engines ([`Fleet`], or engines at distinct loopback addresses,
//! [`Scenario::distinct_games`]) whose games are running records, and a
//! running worker with the knobs the test names: in process ([`Scenario::app`], the real
//! router and run loop) or as the real binary ([`Scenario::worker`]). Every knob has the
//! default the tests share; a test names only what its story is about.
//!
//! ```ignore
//! let scenario = Scenario::new().await;
//! scenario.game("g", "g", Behavior::Status(503)).await;
//! let app = scenario.app().thresholds(1, 1).await;
//! let worker = scenario.worker("storm").interval(Duration::from_secs(1)).spawn();
//! ```

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use healthprobe::hysteresis::Thresholds;
use healthprobe::telemetry::Metrics;
use healthprobe::worker::Worker;

use super::TestEnv;
use super::app::{AppOptions, TestApp};
use super::distinct::DistinctEngines;
use super::engines::{Behavior, Fleet};
use super::process::{WorkerProcess, worker_command};

pub struct Scenario {
    pub env: TestEnv,
    pub fleet: Fleet,
}

impl Scenario {
    /// A database, a stream and an engine fleet of the test's own; no games yet.
    pub async fn new() -> Self {
        Self {
            env: TestEnv::new().await,
            fleet: Fleet::start().await,
        }
    }

    /// Like [`Scenario::new`] on a database of the test's choosing (a server it starts and
    /// stops itself).
    pub async fn on_database(database_url: &str) -> Self {
        Self {
            env: TestEnv::on_database(database_url).await,
            fleet: Fleet::start().await,
        }
    }

    /// One running game `id` whose engine, named `engine` in the fleet, behaves as
    /// `behavior`; returns the engine's endpoint.
    pub async fn game(&self, id: &str, engine: &str, behavior: Behavior) -> String {
        self.game_in(id, engine, None, behavior).await
    }

    /// Like [`Scenario::game`], the record naming its container (`current_container_id`).
    pub async fn game_in(
        &self,
        id: &str,
        engine: &str,
        container: Option<&str>,
        behavior: Behavior,
    ) -> String {
        let endpoint = self.fleet.set(engine, behavior);
        self.env.add_running(id, &endpoint, container).await;
        endpoint
    }

    /// `count` running games, game `i` and its engine named `names(i)` (game id, engine
    /// name), every engine behaving as `behavior`, registered in order; returns the ids.
    pub async fn games(
        &self,
        count: usize,
        names: impl Fn(usize) -> (String, String),
        behavior: Behavior,
    ) -> Vec<String> {
        self.games_each(count, |i| {
            let (id, engine) = names(i);
            (id, engine, behavior.clone())
        })
        .await
    }

    /// `count` running games named `name(i)`, each on an engine of the same name behaving
    /// as `behavior`, registered in order; returns the ids.
    pub async fn games_named(
        &self,
        count: usize,
        name: impl Fn(usize) -> String,
        behavior: Behavior,
    ) -> Vec<String> {
        self.games(
            count,
            |i| {
                let id = name(i);
                (id.clone(), id)
            },
            behavior,
        )
        .await
    }

    /// `count` running games, game `i`, its engine and the engine's behaviour given by
    /// `game(i)`, registered in order; returns the ids.
    pub async fn games_each(
        &self,
        count: usize,
        game: impl Fn(usize) -> (String, String, Behavior),
    ) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let (id, engine, behavior) = game(i);
            self.game(&id, &engine, behavior).await;
            ids.push(id);
        }
        ids
    }

    /// `count` running games `game-NNNNN`, each on a healthy engine at a loopback address
    /// of its own (127.0.X.Y), as a real fleet looks to the worker: no connection can be
    /// shared between two engines. Returns the engines.
    pub async fn distinct_games(&self, count: usize) -> DistinctEngines {
        let engines = DistinctEngines::start(count).await;
        let games: Vec<(String, String)> = engines
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| (format!("game-{i:05}"), endpoint.clone()))
            .collect();
        self.env
            .store
            .register_running(&games)
            .await
            .expect("register the games");
        engines
    }

    /// The service in process on this scenario's database and stream: the real router on
    /// a loopback port and the real run loop behind it. Awaiting the knobs starts it.
    pub fn app(&self) -> AppKnobs<'_> {
        AppKnobs {
            env: &self.env,
            options: AppOptions::default(),
        }
    }

    /// A worker on this scenario's database with no loop around it, for tests of what one
    /// tick does: the test calls `worker.tick(&stop)` itself. [`TickKnobs::build`] makes it.
    pub fn tick_by_hand(&self) -> TickKnobs<'_> {
        TickKnobs {
            env: &self.env,
            thresholds: Thresholds {
                failures: 3,
                recovery: 1,
            },
            concurrency: 8,
            probe_timeout: Duration::from_secs(2),
            metrics: Metrics::noop(),
        }
    }

    /// The real binary, `healthprobe run`, on this scenario's database and stream, its log
    /// named after `name`. [`WorkerKnobs::spawn`] starts it.
    pub fn worker(&self, name: &str) -> WorkerKnobs<'_> {
        WorkerKnobs {
            env: &self.env,
            name: name.to_owned(),
            settings: Vec::new(),
            nofile: None,
        }
    }
}

/// The in-process service's knobs; defaults as [`AppOptions::default`]: an interval of an
/// hour (the first tick runs at once, the next only when a test asks), thresholds 3/1,
/// probe timeout 2 s, the worker loop running, Postgres and NATS reachable.
pub struct AppKnobs<'s> {
    env: &'s TestEnv,
    options: AppOptions,
}

impl AppKnobs<'_> {
    pub fn interval(mut self, interval: Duration) -> Self {
        self.options.interval = interval;
        self
    }

    /// Failures in a row that make a `probe_failed`, successes that make a
    /// `probe_recovered`.
    pub fn thresholds(mut self, failures: u32, recovery: u32) -> Self {
        self.options.thresholds = Thresholds { failures, recovery };
        self
    }

    /// Thresholds 1/1: a game's first failed probe is its `probe_failed`.
    pub fn deciding_on_one_probe(self) -> Self {
        self.thresholds(1, 1)
    }

    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.options.probe_timeout = timeout;
        self
    }

    /// No worker loop: nothing is probed, only what the test writes is there.
    pub fn without_worker(mut self) -> Self {
        self.options.start_worker = false;
        self
    }

    /// The worker and the HTTP surface on a Postgres that does not answer.
    pub fn postgres_down(mut self) -> Self {
        self.options.postgres_down = true;
        self
    }

    /// The HTTP surface on a NATS that does not answer.
    pub fn nats_down(mut self) -> Self {
        self.options.nats_down = true;
        self
    }
}

impl<'s> IntoFuture for AppKnobs<'s> {
    type Output = TestApp;
    type IntoFuture = Pin<Box<dyn Future<Output = TestApp> + 's>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(TestApp::start(self.env, self.options))
    }
}

/// The knobs of a worker ticked by hand; defaults as the in-process service's: thresholds
/// 3/1, probe timeout 2 s, and eight probes in flight at most, no metrics recorded.
pub struct TickKnobs<'s> {
    env: &'s TestEnv,
    thresholds: Thresholds,
    concurrency: usize,
    probe_timeout: Duration,
    metrics: Metrics,
}

impl TickKnobs<'_> {
    /// Failures in a row that make a `probe_failed`, successes that make a
    /// `probe_recovered`.
    pub fn thresholds(mut self, failures: u32, recovery: u32) -> Self {
        self.thresholds = Thresholds { failures, recovery };
        self
    }

    /// Probes in flight at most.
    pub fn concurrency(mut self, probes: usize) -> Self {
        self.concurrency = probes;
        self
    }

    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// Records into `metrics` (e.g. a reader the test inspects).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn build(self) -> Worker {
        self.env.worker_with_metrics(
            self.thresholds,
            self.concurrency,
            self.probe_timeout,
            self.metrics,
        )
    }
}

/// The worker process's knobs, as the variables it reads; unset, the binary's own
/// defaults hold (on top of the test database, stream and a status port of its own).
pub struct WorkerKnobs<'s> {
    env: &'s TestEnv,
    name: String,
    /// In the order named: a later value for the same variable wins.
    settings: Vec<(String, String)>,
    nofile: Option<u64>,
}

fn humantime(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

impl WorkerKnobs<'_> {
    /// Any variable the worker reads, for a knob without a name of its own here.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn interval(self, interval: Duration) -> Self {
        self.setting("RTMANAGER_PROBE_INTERVAL", &humantime(interval))
    }

    pub fn probe_timeout(self, timeout: Duration) -> Self {
        self.setting("RTMANAGER_PROBE_TIMEOUT", &humantime(timeout))
    }

    /// Failures in a row that make a `probe_failed`.
    pub fn failures(self, failures: u32) -> Self {
        self.setting("RTMANAGER_PROBE_FAILURES_THRESHOLD", &failures.to_string())
    }

    /// Probes in flight at most.
    pub fn concurrency(self, probes: usize) -> Self {
        self.setting("RTMANAGER_PROBE_MAX_CONCURRENCY", &probes.to_string())
    }

    /// How long a mass failure is held before it is believed.
    pub fn hold(self, hold: Duration) -> Self {
        self.setting("HEALTHPROBE_MASS_FAILURE_HOLD", &humantime(hold))
    }

    /// The bearer token the status port asks for.
    pub fn token(self, token: &str) -> Self {
        self.setting("HEALTHPROBE_HTTP_TOKEN", token)
    }

    /// This replica's id among several on one database.
    pub fn replica(self, id: &str) -> Self {
        self.setting("HEALTHPROBE_REPLICA_ID", id)
    }

    /// How long a replica's membership lasts without a heartbeat.
    pub fn lease(self, lease: Duration) -> Self {
        self.setting("HEALTHPROBE_LEASE_TTL", &humantime(lease))
    }

    /// NATS at `url` instead of the shared test server (one the test stops and starts).
    pub fn nats(self, url: &str) -> Self {
        self.setting("NATS_URL", url)
    }

    /// Postgres at `url` instead of the test database's own (e.g. through a proxy).
    pub fn database(self, url: &str) -> Self {
        self.setting("DATABASE_URL", url)
    }

    /// The status port's address (default: a free loopback port, logged at start).
    pub fn http_addr(self, addr: &str) -> Self {
        self.setting("HEALTHPROBE_HTTP_ADDR", addr)
    }

    /// Every setting of `settings`, in order.
    pub fn settings(mut self, settings: &[(&str, &str)]) -> Self {
        for (key, value) in settings {
            self = self.setting(key, value);
        }
        self
    }

    /// Under `ulimit -n nofile` (soft and hard), which the worker cannot raise.
    pub fn nofile(mut self, nofile: u64) -> Self {
        self.nofile = Some(nofile);
        self
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.settings
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect()
    }

    /// Starts `healthprobe run` with these knobs; killed when dropped.
    pub fn spawn(self) -> WorkerProcess {
        WorkerProcess::spawn_with_nofile(self.env, &self.name, &self.pairs(), self.nofile)
    }

    /// The `healthprobe run` command of these knobs, not started: run inside `launcher`
    /// (such as `ip netns exec NAME`) with its status port at `http_addr`; and its log.
    /// (`nofile` is not applied: the launcher runs the binary.)
    pub fn command(
        self,
        launcher: &[&str],
        http_addr: &str,
    ) -> (tokio::process::Command, std::path::PathBuf) {
        worker_command(self.env, &self.name, launcher, http_addr, &self.pairs())
    }
}
