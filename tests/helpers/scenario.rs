//! One test's world, named the way the test reads: an isolated database and stream
//! ([`TestEnv`]), a fleet of engines ([`Fleet`]) whose games are running records, and a
//! worker process with the settings the test names ([`WorkerProcess`]).
//!
//! ```ignore
//! let scenario = Scenario::new().await;
//! scenario.games(24, |i| (format!("a-hung-{i:02}"), format!("hung-{i:02}")), Behavior::Delay(long)).await;
//! let worker = scenario.spawn_worker("storm", &[("RTMANAGER_PROBE_INTERVAL", "1s")]);
//! ```

use super::TestEnv;
use super::engines::{Behavior, Fleet};
use super::process::WorkerProcess;

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
        let endpoint = self.fleet.set(engine, behavior);
        self.env.add_running(id, &endpoint, None).await;
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
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let (id, engine) = names(i);
            self.game(&id, &engine, behavior.clone()).await;
            ids.push(id);
        }
        ids
    }

    /// A worker process on this scenario's database and stream with `settings` on top of
    /// the defaults the tests use.
    pub fn spawn_worker(&self, name: &str, settings: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::spawn(&self.env, name, settings)
    }

    /// Like [`Scenario::spawn_worker`] under `ulimit -n nofile`.
    pub fn spawn_worker_with_nofile(
        &self,
        name: &str,
        settings: &[(&str, &str)],
        nofile: u64,
    ) -> WorkerProcess {
        WorkerProcess::spawn_with_nofile(&self.env, name, settings, Some(nofile))
    }
}
