//! The tick: list the running games with their snapshot rows, probe the ones this replica
//! owns with bounded concurrency, apply the hysteresis, record what changed, prune games
//! that are gone (DESIGN §1, §3, §12).
//!
//! [`Worker::tick`] is one pass and returns a [`TickReport`]; [`driver::run`] is the loop
//! around it, on the periodic driver. The parts: [`games`] (the per-game table, pure), `dispatch` (the tick's
//! schedule: ranked starts, the budget, probes in flight), `lanes` (the tasks that run the
//! probes), [`record`] (the commit rule:
//! memory moves only after Postgres committed, conditionally on the version it read),
//! [`hold`] (the mass-failure rule, pure) and `mass_failure` (the worker's side of it, and
//! the degraded replica's sample tick), [`overrides`] (per-game settings, pure) and
//! `game_settings` (the worker's copy of them), [`membership`] (replicas and who owns which
//! game), [`on_demand`] (probes beside the ticks), [`report`] (what a tick says).

mod dispatch;
pub mod driver;
mod game_settings;
pub mod games;
pub mod hold;
mod lanes;
mod mass_failure;
pub mod membership;
pub mod on_demand;
pub mod overrides;
pub mod record;
pub mod report;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

pub use driver::run;
pub use report::{ProbeOneError, ProbeOneReport, TickError, TickReport};

use crate::hysteresis::{GameHealth, Thresholds};
use crate::probe::spec::ProbeSpec;
use crate::probe::{ProbeOutcome, Prober};
use crate::status::Progress;
use crate::store::{ListedGame, RuntimeRecord, Store};
use crate::telemetry::Metrics;
use dispatch::{LaterGame, Start};
use games::{GameTable, Rank, Synced};
use hold::{Action, MassFailure, MassFailureSettings};
use lanes::{Finished, Lanes};
use membership::{Membership, ReplicaHealth};
use on_demand::HoldFlags;
use overrides::{GameSettings, GlobalProbeSettings, Skip};
use record::{PendingWrite, Recorder};

#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    pub thresholds: Thresholds,
    pub max_concurrency: usize,
    /// Probe starts are spread evenly over this much of each tick (`RTMANAGER_PROBE_SPREAD`
    /// × interval) so a large fleet is not hit in one burst. Zero: all start at once, as
    /// fast as `max_concurrency` allows. Starts never go past the window, however much the
    /// fleet grew since the last tick.
    pub spread_window: Duration,
}

pub struct Worker {
    store: Store,
    prober: Prober,
    settings: WorkerSettings,
    metrics: Metrics,
    recorder: Recorder,
    games: GameTable,
    membership: watch::Receiver<Membership>,
    generation: u64,
    /// Games owned by the last complete tick: the estimate that sizes the spread slots and
    /// the snapshot refresh turns.
    last_owned: usize,
    /// `max_concurrency` probe slots, shared by every tick: a probe still running from an
    /// earlier tick keeps its slot.
    slots: Arc<Semaphore>,
    /// The tasks that run the probes, with the probes started and not yet recorded,
    /// possibly from earlier ticks.
    in_flight: Lanes,
    /// The games with a probe in flight.
    probing: HashSet<String>,
    /// How long a tick may hold the schedule (`None`: until every probe it started ended).
    tick_budget: Option<Duration>,
    /// The last tick's budget ran out before every healthy game was started.
    backlog: bool,
    /// The mass-failure hold (DESIGN §15); `None`: off (tests that drive ticks by hand).
    mass_failure: Option<MassFailure>,
    /// Stepped out of the membership: the others see their engines fine and this replica's
    /// fail. It probes a sample of its share without recording until they succeed again.
    degraded: bool,
    /// This replica's figures for the others (its membership row).
    replica_health: Option<watch::Sender<ReplicaHealth>>,
    /// The hold as on-demand probes read it.
    hold_flags: Arc<HoldFlags>,
    /// The status board's progress beat (liveness), set by the run loop.
    pub(crate) progress: Option<Progress>,
    /// `probe_failed` decided in this tick, waiting for its end to know whether it is a
    /// mass failure (only with the hold on).
    pending_failed: Vec<(RuntimeRecord, games::Decision, ProbeOutcome)>,
    /// The global probe settings that per-game overrides replace (DESIGN §16).
    probe_settings: GlobalProbeSettings,
    /// Settings of the games whose override changes something (kept while they are
    /// tracked, so a probe that ends in a later tick is decided with them).
    game_settings: HashMap<String, GameSettings>,
    /// Bad override rows already logged, with why: each is logged once, again when the
    /// reason changes.
    logged_bad_overrides: HashMap<String, String>,
}

impl Worker {
    /// A worker alone: it owns every game until [`Self::with_membership`] says otherwise.
    pub fn new(
        store: Store,
        prober: Prober,
        settings: WorkerSettings,
        metrics: Metrics,
        outbox_wake: Arc<Notify>,
    ) -> Self {
        let (_, alone) = watch::channel(Membership::alone("local"));
        let prober_spec = prober.default_spec().clone();
        let in_flight = Lanes::new(prober.clone(), settings.max_concurrency);
        Self {
            recorder: Recorder::new(store.clone(), metrics.clone(), outbox_wake),
            store,
            prober,
            settings,
            metrics,
            games: GameTable::new(),
            membership: alone,
            generation: 0,
            last_owned: 0,
            slots: Arc::new(Semaphore::new(settings.max_concurrency)),
            in_flight,
            probing: HashSet::new(),
            tick_budget: None,
            backlog: false,
            mass_failure: None,
            degraded: false,
            replica_health: None,
            hold_flags: Arc::new(HoldFlags::default()),
            pending_failed: Vec::new(),
            progress: None,
            probe_settings: GlobalProbeSettings {
                spec: Arc::new(prober_spec),
                ..GlobalProbeSettings::new(settings.thresholds)
            },
            game_settings: HashMap::new(),
            logged_bad_overrides: HashMap::new(),
        }
    }

    /// The global probe settings that `health_probe_overrides` rows replace per game:
    /// `RTMANAGER_PROBE_INITIAL_DELAY` and the probe spec (path, statuses, headers,
    /// timeout); without this, no delay and the prober's default spec. The thresholds are
    /// the worker's.
    pub fn with_probe_settings(mut self, initial_delay: Duration, spec: ProbeSpec) -> Self {
        self.probe_settings.initial_delay = initial_delay;
        self.probe_settings.spec = Arc::new(spec);
        self
    }

    /// Shares the hold with on-demand probes ([`on_demand::OnDemand`]), which hold
    /// `probe_failed` as the ticks do and are refused while this replica is degraded.
    pub fn with_hold_flags(mut self, flags: Arc<HoldFlags>) -> Self {
        self.hold_flags = flags;
        self
    }

    /// Turns the mass-failure hold on (DESIGN §15; [`hold`]).
    pub fn with_mass_failure_hold(mut self, settings: MassFailureSettings) -> Self {
        self.mass_failure = Some(MassFailure::new(settings));
        self
    }

    /// Publishes each tick's figures for the membership heartbeat to tell the others.
    pub fn with_replica_health(mut self, health: watch::Sender<ReplicaHealth>) -> Self {
        self.replica_health = Some(health);
        self
    }

    /// Bounds how long a tick holds the schedule (the service passes its interval): past
    /// the budget, a tick starts no more probes of games that are not healthy and stops
    /// waiting for probes in flight; those finish beside the next tick, which records them.
    /// Without it (tests that drive ticks by hand) a tick records every probe it started.
    pub fn with_tick_budget(mut self, budget: Duration) -> Self {
        self.tick_budget = Some(budget);
        self
    }

    /// Shares the games with the other live replicas, as the heartbeat task publishes them.
    pub fn with_membership(mut self, membership: watch::Receiver<Membership>) -> Self {
        self.membership = membership;
        self
    }

    /// Warms memory from `health_snapshots` at start-up. Each game is compared with its row
    /// again before every decision, so this only saves work. Returns the rows loaded.
    pub async fn restore(&mut self) -> Result<usize, sqlx::Error> {
        let rows = self.store.load_snapshots().await?;
        let loaded = rows.len();
        self.games.preload(rows);
        Ok(loaded)
    }

    /// How many games this tick will likely own: the last complete tick's count, or the
    /// warmed memory's before the first one.
    fn fleet_estimate(&self) -> usize {
        self.last_owned.max(self.games.len())
    }

    /// The counters the worker holds for a game, if any.
    pub fn health_of(&self, game_id: &str) -> Option<GameHealth> {
        self.games.get(game_id).map(|g| g.health)
    }

    /// One tick. `stop` ends it early: no new probes start, the ones in flight finish (each
    /// bounded by the probe timeout) and are recorded.
    ///
    /// Order (DESIGN §15, nothing holds the schedule hostage): games whose last probe
    /// succeeded start as they are listed; games never probed, suspect ones and then
    /// known-failing ones follow, each group longest-waiting first. With a budget
    /// ([`Self::with_tick_budget`], the interval in the service) the tick starts no probe of
    /// those later groups past its budget and does not wait past it for probes still in
    /// flight: they finish beside the next tick and are recorded by it, and a game whose
    /// probe is in flight is not probed again. So a hung engine costs its timeout and a
    /// slot, and the healthy games' next turn comes at the next interval.
    #[tracing::instrument(name = "tick", skip_all, fields(generation = self.generation + 1))]
    pub async fn tick(&mut self, stop: &CancellationToken) -> Result<TickReport, TickError> {
        let started = Instant::now();
        self.generation += 1;
        let generation = self.generation;
        let membership = self.membership.borrow().clone();
        if let Some(progress) = &self.progress {
            progress.beat();
        }
        if self.degraded {
            return self.sample_tick(&membership, stop, started).await;
        }
        let mut report = TickReport::default();
        let mut batch = Vec::new();
        let store = self.store.clone();
        let mut listed = store.running_games();
        let mut list_error = None;
        let mut schedule = self.schedule(started, generation);
        // The last tick left healthy games behind: this one orders every game by how long
        // it waited (memory for the list, only while overloaded).
        let backlog = std::mem::take(&mut self.backlog);
        let mut later: Vec<LaterGame> = Vec::new();
        // Owned games an override disables: `disabled` in the games gauge.
        let mut disabled = HashSet::new();

        // What finished since the last tick, first; then the lanes this tick will not need.
        while let Some(done) = self.in_flight.try_next() {
            self.apply(done, &mut report, &mut batch).await;
        }
        self.in_flight.retire_idle(generation);

        loop {
            let game = match listed.next().await {
                None => break,
                Some(Ok(game)) => game,
                Some(Err(source)) => {
                    list_error = Some(source);
                    break;
                }
            };
            report.records += 1;
            if !membership.owns(&game.record.game_id) {
                // Another replica probes it and starts from its row.
                self.games.release(&game.record.game_id);
                continue;
            }
            let settings = self.game_settings(&game, &mut report);
            let ListedGame {
                record,
                stored,
                since_start,
                ..
            } = game;
            report.owned += 1;
            match self.games.sync(
                &record.game_id,
                record.container_id.as_deref(),
                stored.as_ref(),
                generation,
            ) {
                Synced::Kept => {}
                Synced::Loaded => report.reloaded += 1,
                Synced::NewContainer => {
                    report.new_containers += 1;
                    tracing::info!(game_id = %crate::bounded(&record.game_id, 200), container_id = %crate::bounded(record.container_id.as_deref().unwrap_or(""), 200), "new container: the game starts clean");
                }
            }
            if self.probing.contains(&record.game_id) {
                // Its probe from an earlier tick is still running (a hung engine).
                report.still_in_flight += 1;
                continue;
            }
            // Kept in memory (and its row) as it is, not probed (DESIGN §16).
            match settings.skip(since_start) {
                Some(Skip::Disabled) => {
                    report.disabled += 1;
                    disabled.insert(record.game_id);
                    continue;
                }
                Some(Skip::InitialDelay) => {
                    report.in_initial_delay += 1;
                    continue;
                }
                None => {}
            }
            let rank = self.games.rank(&record.game_id);
            if rank != Rank::Healthy || backlog {
                let waited = self.games.last_dispatched(&record.game_id);
                later.push((rank, waited, record));
                continue;
            }
            let start = self
                .start_or_defer(&mut schedule, record, rank, stop, &mut report, &mut batch)
                .await;
            if start == Start::Interrupted {
                break;
            }
        }
        drop(listed);
        self.start_later(&mut schedule, later, stop, &mut report, &mut batch)
            .await;
        self.collect_in_flight(&schedule, &mut report, &mut batch)
            .await;
        self.recorder
            .flush(&mut self.games, &mut batch, &mut report)
            .await;

        // Prune only after a complete list: a partial one would forget running games.
        let mut action = Action::Nothing;
        if list_error.is_none() && !report.interrupted {
            self.recorder
                .prune(&mut self.games, generation, &mut report)
                .await;
            self.recorder
                .mark_probes(&self.games, &membership.replica_id, &mut report)
                .await;
            let games = &self.games;
            self.game_settings
                .retain(|game_id, _| games.get(game_id).is_some());
            self.metrics.running_records(report.records);
            self.metrics.owned_games(report.owned);
            self.metrics
                .games_by_status(self.games.status_counts(&disabled));
            self.last_owned = report.owned;
            action = self.judge_mass_failure(&report, generation, &membership);
        }
        self.settle_pending_failures(action, &mut report).await;
        report.hold = self.hold_report();
        report.duration = started.elapsed();
        let clean = list_error.is_none() && report.is_clean() && report.probe_panics == 0;
        self.metrics.tick_completed(report.duration, clean);
        match list_error {
            Some(source) => Err(TickError::List {
                listed: report.records,
                source,
            }),
            None => Ok(report),
        }
    }

    /// Waits for the probes still in flight from earlier ticks (each bounded by the probe
    /// timeout) and records them: the run loop calls it when it stops, so a probe that
    /// outlived its tick is not lost at shutdown.
    pub(crate) async fn finish_in_flight(&mut self) -> TickReport {
        let mut report = TickReport::default();
        let mut batch = Vec::new();
        while let Some(done) = self.in_flight.next().await {
            self.apply(done, &mut report, &mut batch).await;
        }
        self.recorder
            .flush(&mut self.games, &mut batch, &mut report)
            .await;
        self.settle_pending_failures(Action::Nothing, &mut report)
            .await;
        report
    }

    /// Applies one finished probe: hysteresis on the synced state, then the commit rule.
    async fn apply(
        &mut self,
        done: Finished,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) {
        if let Some(progress) = &self.progress {
            progress.beat();
        }
        let Finished {
            record, outcome, ..
        } = done;
        self.probing.remove(&record.game_id);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => {
                // A probe never panics by design; if one does, it is a bug in the worker:
                // count it as what it is (not a store error) and go on.
                tracing::error!(game_id = %crate::bounded(&record.game_id, 200), panic = %panic, "probe panicked: an internal fault in the worker, not the engine's; the game is probed again next tick");
                report.probe_panics += 1;
                return;
            }
        };
        self.metrics
            .probe_completed(outcome.outcome_label(), outcome.status, outcome.latency);
        if !self
            .games
            .expects(&record.game_id, record.container_id.as_deref())
        {
            // Finished after its game was pruned, handed over or given a new container.
            report.dropped += 1;
            return;
        }
        if outcome.is_local_fault() {
            // The worker's problem, not the engine's: no hysteresis, no snapshot, no event;
            // the tick logs the count once.
            report.local_errors += 1;
            if let Some(failure) = &outcome.failure {
                tracing::debug!(game_id = %crate::bounded(&record.game_id, 200), error = %crate::bounded(&failure.message, 200), "probe not attempted: local fault");
            }
            return;
        }
        report.probes += 1;
        if outcome.is_healthy() {
            report.healthy += 1;
        } else {
            report.failed += 1;
        }
        if let Some(failure) = &outcome.failure {
            tracing::debug!(game_id = %crate::bounded(&record.game_id, 200), kind = %failure.kind, status = outcome.status, error = %crate::bounded(&failure.message, 200), "probe failed");
        }
        // An unchanged game's row is not rewritten: its probe time is recorded with the
        // tick's probe marks (`Recorder::mark_probes`).
        let thresholds = self.thresholds_of(&record.game_id);
        let mut decision = self
            .games
            .decide(&record.game_id, &outcome, thresholds, false);
        if decision.publishes_failure() {
            match &self.mass_failure {
                Some(mass) if mass.holding() => {
                    // DESIGN §15: counted and written, not published while the hold lasts.
                    decision = decision.held();
                    report.held += 1;
                    self.metrics.mass_failure_held();
                    tracing::debug!(game_id = %crate::bounded(&record.game_id, 200), "probe_failed held: mass failure");
                }
                Some(_) => {
                    // Whether this tick is a mass failure is known at its end: the failure
                    // waits for it (at most one tick), so the first tick of a storm is held
                    // too, whatever the failures threshold.
                    self.pending_failed.push((record, decision, outcome));
                    return;
                }
                None => {}
            }
        }
        self.recorder
            .record(&mut self.games, &record, decision, &outcome, report, batch)
            .await;
    }
}
