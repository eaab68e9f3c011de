//! The tick: list the running games with their snapshot rows, probe the ones this replica
//! owns with bounded concurrency, apply the hysteresis, record what changed, prune games
//! that are gone (DESIGN §1, §3, §12).
//!
//! [`Worker::tick`] is one pass and returns a [`TickReport`]; [`driver::run`] is the loop
//! around it. The parts: [`games`] (the per-game table, pure), [`record`] (the commit rule:
//! memory moves only after Postgres committed, conditionally on the version it read),
//! [`membership`] (replicas and who owns which game), [`report`] (what a tick says).

pub mod driver;
pub mod games;
pub mod hold;
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
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use driver::run;
pub use report::{MAX_REPORTED_OVERRIDES, ProbeOneError, ProbeOneReport, TickError, TickReport};

use crate::hysteresis::{GameHealth, Thresholds};
use crate::probe::spec::ProbeSpec;
use crate::probe::{ProbeOutcome, Prober};
use crate::status::{HoldSummary, Progress};
use crate::store::{ListedGame, RuntimeRecord, Store};
use crate::telemetry::Metrics;
use games::{GameTable, Rank, Synced};
use hold::{Action, HoldState, MassFailure, MassFailureSettings, TickShare};
use membership::{Membership, ReplicaHealth};
use on_demand::HoldFlags;
use overrides::{GameSettings, GlobalProbeSettings, Skip};
use record::{PendingWrite, Recorder, SNAPSHOT_BATCH};

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
    /// Probes started and not yet recorded, possibly from earlier ticks.
    in_flight: JoinSet<(RuntimeRecord, ProbeOutcome)>,
    /// The game of each probe in flight, by task, and the games with a probe in flight.
    probing_tasks: HashMap<tokio::task::Id, String>,
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

/// Games a degraded replica probes per tick to learn that its own probes succeed again.
const DEGRADED_SAMPLE: usize = 20;

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
            in_flight: JoinSet::new(),
            probing_tasks: HashMap::new(),
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

    /// The game's settings from its override row over the global ones; a bad row is
    /// logged (once per reason) and counted in `report`.
    fn game_settings(&mut self, game: &ListedGame, report: &mut TickReport) -> GameSettings {
        let settings = GameSettings::resolve(game.overrides.as_ref(), &self.probe_settings);
        let game_id = &game.record.game_id;
        match &settings.problem {
            Some(problem) => {
                report.bad_override_count += 1;
                if report.bad_overrides.len() < MAX_REPORTED_OVERRIDES {
                    report
                        .bad_overrides
                        .push((game_id.clone(), crate::bounded(problem, 200)));
                }
                if self.logged_bad_overrides.get(game_id) != Some(problem) {
                    tracing::warn!(game_id = %crate::bounded(game_id, 200), problem = %crate::bounded(problem, 200), "bad row in health_probe_overrides: the game is probed with the global settings");
                    self.logged_bad_overrides
                        .insert(game_id.clone(), problem.clone());
                }
            }
            None => {
                if self.logged_bad_overrides.remove(game_id).is_some() {
                    tracing::info!(game_id = %crate::bounded(game_id, 200), "row in health_probe_overrides fixed: its settings apply");
                }
            }
        }
        if settings.is_global(&self.probe_settings) {
            self.game_settings.remove(game_id);
        } else {
            self.game_settings.insert(game_id.clone(), settings.clone());
        }
        settings
    }

    /// The thresholds a game is decided with: its override's, or the worker's.
    fn thresholds_of(&self, game_id: &str) -> Thresholds {
        self.game_settings
            .get(game_id)
            .map_or(self.settings.thresholds, |s| s.thresholds)
    }

    /// What a game is probed with: its override's spec, or the global one.
    fn spec_of(&self, game_id: &str) -> Arc<ProbeSpec> {
        self.game_settings
            .get(game_id)
            .map_or_else(|| self.probe_settings.spec.clone(), |s| s.spec.clone())
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

    /// Whether this replica stepped out of the membership (its probes fail, others' don't).
    pub fn is_degraded(&self) -> bool {
        self.degraded
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
        // With a spread, owned game i starts no earlier than `started + i × slot`, and no
        // later than the window's end; the fleet size is the last tick's until this one
        // has counted it.
        let expected = self.fleet_estimate();
        let window = self.settings.spread_window;
        let slot = if window.is_zero() || expected == 0 {
            Duration::ZERO
        } else {
            window / expected as u32
        };
        let tick_start = tokio::time::Instant::from_std(started);
        let deadline = self.tick_budget.map(|budget| tick_start + budget);
        let mut dispatched = 0usize;
        // The last tick left healthy games behind: this one orders every game by how long
        // it waited (memory for the list, only while overloaded).
        let backlog = std::mem::take(&mut self.backlog);
        // Games that wait for the healthy ones: (rank, last tick that probed them, record).
        let mut later: Vec<(Rank, u64, RuntimeRecord)> = Vec::new();
        // Owned games an override disables: `disabled` in the games gauge.
        let mut disabled = HashSet::new();

        // What finished since the last tick, first.
        while let Some(done) = self.in_flight.try_join_next_with_id() {
            let done = self.finished(done);
            self.apply(done, &mut report, &mut batch).await;
        }

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
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                // Even healthy games wait for the next tick once the budget is spent
                // (slots held by engines that just hung); they go first then.
                report.deferred += 1;
                self.backlog = true;
                continue;
            }
            let start_at = tick_start + (slot * dispatched as u32).min(window);
            if !self
                .dispatch(
                    record,
                    start_at,
                    deadline,
                    stop,
                    generation,
                    &mut report,
                    &mut batch,
                )
                .await
            {
                if report.interrupted {
                    break;
                }
                report.deferred += 1;
                self.backlog = true;
                continue;
            }
            dispatched += 1;
        }
        drop(listed);
        // Longest-waiting first within a rank; ties in an order that changes every tick, so
        // no game is always last.
        later.sort_by_cached_key(|(rank, waited, record)| {
            (
                *rank,
                *waited,
                games::shuffle_key(&record.game_id, generation),
            )
        });
        let mut later = later.into_iter();
        if !report.interrupted {
            for (_, _, record) in later.by_ref() {
                let start_at = tick_start + (slot * dispatched as u32).min(window);
                if !self
                    .dispatch(
                        record,
                        start_at,
                        deadline,
                        stop,
                        generation,
                        &mut report,
                        &mut batch,
                    )
                    .await
                {
                    if !report.interrupted {
                        report.deferred += 1;
                    }
                    break;
                }
                dispatched += 1;
            }
        }
        // Not started: their turn comes first among their group next tick.
        let rest: Vec<_> = later.collect();
        report.deferred += rest.len();
        if rest.iter().any(|(rank, _, _)| *rank == Rank::Healthy) {
            self.backlog = true;
        }
        // Probes in flight: all of them on shutdown; up to the budget otherwise.
        loop {
            if self.in_flight.is_empty() {
                break;
            }
            let past_budget =
                !report.interrupted && deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if past_budget {
                break;
            }
            let done = match deadline {
                Some(deadline) if !report.interrupted => tokio::select! {
                    done = self.in_flight.join_next_with_id() => done,
                    _ = tokio::time::sleep_until(deadline) => None,
                },
                _ => self.in_flight.join_next_with_id().await,
            };
            if let Some(done) = done {
                let done = self.finished(done);
                self.apply(done, &mut report, &mut batch).await;
            }
        }
        report.in_flight = self.in_flight.len();
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
            let share = TickShare {
                owned: report.owned,
                failing: self.games.failing_seen_in(generation),
                local_errors: report.local_errors,
            };
            let pending_new = self
                .pending_failed
                .iter()
                .filter(|(record, _, _)| {
                    self.games
                        .get(&record.game_id)
                        .is_some_and(|g| g.health.consecutive_failures == 0)
                })
                .count();
            let share = TickShare {
                failing: share.failing + pending_new,
                ..share
            };
            action = self.judge_mass_failure(share, &membership);
        }
        self.settle_pending_failures(action, &mut report).await;
        report.hold = self.hold_report();
        report.duration = started.elapsed();
        let clean = list_error.is_none() && report.is_clean();
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
    pub async fn finish_in_flight(&mut self) -> TickReport {
        let mut report = TickReport::default();
        let mut batch = Vec::new();
        while let Some(done) = self.in_flight.join_next_with_id().await {
            let done = self.finished(done);
            self.apply(done, &mut report, &mut batch).await;
        }
        self.recorder
            .flush(&mut self.games, &mut batch, &mut report)
            .await;
        self.settle_pending_failures(Action::Nothing, &mut report)
            .await;
        report
    }

    /// Starts one probe at `start_at` once a slot is free, recording finished probes
    /// meanwhile. Returns false when it did not start it: `stop` (the tick is interrupted)
    /// or the `deadline` passed first.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &mut self,
        record: RuntimeRecord,
        start_at: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
        stop: &CancellationToken,
        generation: u64,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) -> bool {
        let permit = loop {
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            let due = now >= start_at;
            let far = deadline.unwrap_or(start_at + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    report.interrupted = true;
                    return false;
                }
                Some(done) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => {
                    let done = self.finished(done);
                    self.apply(done, report, batch).await;
                }
                _ = tokio::time::sleep_until(start_at), if !due => {}
                _ = tokio::time::sleep_until(far), if due && deadline.is_some() => {}
                permit = self.slots.clone().acquire_owned(), if due => {
                    break permit.expect("the semaphore is never closed");
                }
            }
        };
        let prober = self.prober.clone();
        let spec = self.spec_of(&record.game_id);
        let span = probe_span(&record.game_id);
        self.games.dispatched(&record.game_id, generation);
        self.probing.insert(record.game_id.clone());
        let game_id = record.game_id.clone();
        let task = self.in_flight.spawn(
            async move {
                let outcome = prober.probe(&record.engine_endpoint, &spec).await;
                drop(permit);
                (record, outcome)
            }
            .instrument(span),
        );
        self.probing_tasks.insert(task.id(), game_id);
        if batch.len() >= SNAPSHOT_BATCH {
            self.recorder.flush(&mut self.games, batch, report).await;
        }
        true
    }

    /// Clears the bookkeeping of a probe that ended (normally or not).
    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, (RuntimeRecord, ProbeOutcome)), tokio::task::JoinError>,
    ) -> Result<(RuntimeRecord, ProbeOutcome), tokio::task::JoinError> {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if let Some(game_id) = self.probing_tasks.remove(&id) {
            self.probing.remove(&game_id);
        }
        done.map(|(_, done)| done)
    }

    /// Applies one finished probe: hysteresis on the synced state, then the commit rule.
    async fn apply(
        &mut self,
        done: Result<(RuntimeRecord, ProbeOutcome), tokio::task::JoinError>,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) {
        if let Some(progress) = &self.progress {
            progress.beat();
        }
        let (record, outcome) = match done {
            Ok(done) => done,
            Err(e) => {
                // A probe never panics by design; if one does, count it and go on.
                tracing::error!(error = %e, "probe task ended abnormally");
                report
                    .store_errors
                    .push(format!("probe task ended abnormally: {e}"));
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

impl Worker {
    /// Records the `probe_failed` that waited for the tick's end: held if the hold is on
    /// (or the checker's fault just cleared), dropped if this replica steps out, as they
    /// were otherwise. Then forgives what the checker's fault made, if it cleared.
    async fn settle_pending_failures(&mut self, action: Action, report: &mut TickReport) {
        let pending = std::mem::take(&mut self.pending_failed);
        if action == Action::StepOut {
            // Everything goes: the others start from the rows.
            self.games = GameTable::new();
            return;
        }
        let hold = action == Action::Dropped
            || self.mass_failure.as_ref().is_some_and(MassFailure::holding);
        let mut batch = Vec::new();
        for (record, decision, outcome) in pending {
            if !self
                .games
                .expects(&record.game_id, record.container_id.as_deref())
            {
                report.dropped += 1;
                continue;
            }
            let decision = if hold {
                report.held += 1;
                self.metrics.mass_failure_held();
                decision.held()
            } else {
                decision
            };
            self.recorder
                .record(
                    &mut self.games,
                    &record,
                    decision,
                    &outcome,
                    report,
                    &mut batch,
                )
                .await;
        }
        self.recorder
            .flush(&mut self.games, &mut batch, report)
            .await;
        if action == Action::Dropped {
            let forgiven = self.games.forgive_unpublished_failures();
            tracing::warn!(
                forgiven,
                "the checker's own fault cleared: failures seen during the hold are dropped, engines judged afresh"
            );
        }
    }

    /// Folds the tick into the mass-failure hold (DESIGN §15): logs, metric, figures for
    /// the other replicas. The caller acts on the returned action.
    fn judge_mass_failure(&mut self, share: TickShare, membership: &Membership) -> Action {
        let Some(mass) = self.mass_failure.as_mut() else {
            self.publish_health(share.owned, share.not_ok());
            return Action::Nothing;
        };
        let peers = membership.peers(&mass.settings);
        let hold = mass.settings.hold;
        let action = mass.observe(share, peers, Instant::now());
        match action {
            Action::Nothing => {}
            Action::Started => tracing::warn!(
                owned = share.owned,
                failing = share.failing,
                local_errors = share.local_errors,
                ?hold,
                "mass failure: most engines failed at once, more likely the checker than the fleet; probe_failed held"
            ),
            Action::Released => tracing::warn!(
                owned = share.owned,
                failing = share.failing,
                ?hold,
                "mass failure lasted the hold with no local fault and no replica seeing otherwise: the failures are real; probe_failed published again"
            ),
            Action::Dropped => {}
            Action::Cleared => tracing::info!(
                failing = share.failing,
                "mass failure over: probe_failed no longer held"
            ),
            Action::StepOut => {
                tracing::error!(
                    owned = share.owned,
                    failing = share.failing,
                    local_errors = share.local_errors,
                    "this replica's probes fail where the other replicas' do not: stepping out of the membership until they succeed again; its games go to the others, nothing is recorded meanwhile"
                );
                self.degraded = true;
            }
        }
        let holding = self.mass_failure.as_ref().is_some_and(MassFailure::holding);
        self.metrics.mass_failure_holding(holding);
        self.publish_health(share.owned, share.not_ok());
        action
    }

    fn publish_health(&self, owned: usize, failing: usize) {
        let holding = self.mass_failure.as_ref().is_some_and(MassFailure::holding);
        self.hold_flags.set(holding, self.degraded);
        if let Some(health) = &self.replica_health {
            let clamp = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
            health.send_replace(ReplicaHealth {
                owned_games: Some(clamp(owned)),
                failing_games: Some(clamp(failing)),
                degraded: self.degraded,
            });
        }
    }

    /// The hold as the status surface shows it.
    fn hold_report(&self) -> HoldSummary {
        if self.degraded {
            return HoldSummary::Degraded;
        }
        match self.mass_failure.as_ref().map(MassFailure::state) {
            None | Some(HoldState::Clear) => HoldSummary::Clear,
            Some(HoldState::Holding { since, local_fault }) => HoldSummary::Holding {
                for_: since.elapsed(),
                local_fault,
            },
            Some(HoldState::Released { since }) => HoldSummary::Released {
                for_: since.elapsed(),
            },
        }
    }

    /// A degraded replica's tick: probe a sample of the games it would own, record nothing,
    /// and come back when most of the sample succeeds.
    async fn sample_tick(
        &mut self,
        membership: &Membership,
        stop: &CancellationToken,
        started: Instant,
    ) -> Result<TickReport, TickError> {
        let mut report = TickReport::default();
        let mut sample = Vec::new();
        {
            let mut listed = self.store.running_games();
            while let Some(game) = listed.next().await {
                let game = game.map_err(|source| TickError::List {
                    listed: report.records,
                    source,
                })?;
                report.records += 1;
                if sample.len() < DEGRADED_SAMPLE && membership.owns(&game.record.game_id) {
                    // A disabled game or one still starting says nothing about this
                    // replica's own probes.
                    let settings =
                        GameSettings::resolve(game.overrides.as_ref(), &self.probe_settings);
                    if settings.skip(game.since_start).is_none() {
                        sample.push((game.record, settings.spec));
                    }
                }
            }
        }
        let mut probes = JoinSet::new();
        for (record, spec) in sample {
            let prober = self.prober.clone();
            let slots = self.slots.clone();
            probes.spawn(async move {
                let _permit = slots.acquire_owned().await;
                prober.probe(&record.engine_endpoint, &spec).await
            });
        }
        let (mut ok, mut not_ok) = (0usize, 0usize);
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => { report.interrupted = true; break }
                outcome = probes.join_next() => outcome,
            };
            match outcome {
                None => break,
                Some(Ok(outcome)) if outcome.is_healthy() => ok += 1,
                Some(_) => not_ok += 1,
            }
        }
        report.sampled = ok + not_ok;
        report.sample_failing = not_ok;
        let back = self
            .mass_failure
            .as_ref()
            .is_none_or(|m| m.settings.share_is_fine(not_ok, ok + not_ok));
        if back && !report.interrupted {
            tracing::info!(
                sampled = ok + not_ok,
                failing = not_ok,
                "this replica's probes succeed again: rejoining the membership"
            );
            self.degraded = false;
            if let Some(mass) = self.mass_failure.as_mut() {
                mass.reset();
            }
        }
        self.metrics.mass_failure_holding(false);
        self.publish_health(ok + not_ok, not_ok);
        report.hold = self.hold_report();
        report.duration = started.elapsed();
        Ok(report)
    }
}

/// The span of one probe, a child of the tick's: made only when spans are exported
/// ([`crate::telemetry::traces_exported`]), since nothing else reads it and it costs about
/// 5 % of the CPU per probe (BENCHMARKS.md).
fn probe_span(game_id: &str) -> tracing::Span {
    if crate::telemetry::traces_exported() {
        tracing::info_span!("probe", game_id = %crate::bounded(game_id, 200))
    } else {
        tracing::Span::none()
    }
}
