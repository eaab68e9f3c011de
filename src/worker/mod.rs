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
pub mod membership;
pub mod record;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use driver::{COMMAND_QUEUE, WorkerCommand, command_channel, run};
pub use report::{ProbeOneError, ProbeOneReport, TickError, TickReport};

use crate::hysteresis::{GameHealth, Thresholds};
use crate::probe::{ProbeOutcome, Prober};
use crate::store::{ListedGame, RuntimeRecord, Store};
use crate::telemetry::Metrics;
use games::{GameTable, Synced};
use membership::Membership;
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
        }
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

    pub fn tracked_games(&self) -> usize {
        self.games.len()
    }

    /// One tick. `stop` ends it early: no new probes start, the ones in flight finish (each
    /// bounded by the probe timeout) and are recorded.
    #[tracing::instrument(name = "tick", skip_all, fields(generation = self.generation + 1))]
    pub async fn tick(&mut self, stop: &CancellationToken) -> Result<TickReport, TickError> {
        let started = Instant::now();
        self.generation += 1;
        let generation = self.generation;
        let membership = self.membership.borrow().clone();
        let mut report = TickReport::default();
        let mut batch = Vec::new();
        let semaphore = Arc::new(Semaphore::new(self.settings.max_concurrency));
        let mut in_flight: JoinSet<(RuntimeRecord, ProbeOutcome)> = JoinSet::new();
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
        let refresh_fleet = expected;

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
            let ListedGame { record, stored } = game;
            if !membership.owns(&record.game_id) {
                // Another replica probes it and starts from its row.
                self.games.release(&record.game_id);
                continue;
            }
            let start_at = tick_start + (slot * report.owned as u32).min(window);
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
            // Wait for this probe's start and a free permit, recording finished probes
            // meanwhile.
            let permit = loop {
                let due = tokio::time::Instant::now() >= start_at;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break None,
                    Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                        self.apply(done, generation, refresh_fleet, &mut report, &mut batch).await;
                    }
                    _ = tokio::time::sleep_until(start_at), if !due => {}
                    permit = semaphore.clone().acquire_owned(), if due => {
                        break Some(permit.expect("the semaphore is never closed"));
                    }
                }
            };
            let Some(permit) = permit else {
                report.interrupted = true;
                break;
            };
            let prober = self.prober.clone();
            let span = probe_span(&record.game_id);
            in_flight.spawn(
                async move {
                    let outcome = prober.probe(&record.engine_endpoint).await;
                    drop(permit);
                    (record, outcome)
                }
                .instrument(span),
            );
            if batch.len() >= SNAPSHOT_BATCH {
                self.recorder
                    .flush(&mut self.games, &mut batch, &mut report)
                    .await;
            }
        }
        drop(listed);
        while let Some(done) = in_flight.join_next().await {
            self.apply(done, generation, refresh_fleet, &mut report, &mut batch)
                .await;
        }
        self.recorder
            .flush(&mut self.games, &mut batch, &mut report)
            .await;

        // Prune only after a complete list: a partial one would forget running games.
        if list_error.is_none() && !report.interrupted {
            self.recorder
                .prune(&mut self.games, generation, &mut report)
                .await;
            self.metrics.running_records(report.records);
            self.metrics.owned_games(report.owned);
            self.metrics.games_by_status(self.games.status_counts());
            self.last_owned = report.owned;
        }
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

    /// Probes one running game now and records the outcome exactly as a tick would: the
    /// same reload from its row, hysteresis, commit rule, events and metrics. Only the run
    /// loop calls it (through [`WorkerCommand::ProbeOne`]), between ticks.
    #[tracing::instrument(name = "probe_one", skip_all, fields(game_id = %crate::bounded(game_id, 200)))]
    pub async fn probe_one(&mut self, game_id: &str) -> Result<ProbeOneReport, ProbeOneError> {
        let ListedGame { record, stored } = self
            .store
            .running_game(game_id)
            .await
            .map_err(ProbeOneError::Lookup)?
            .ok_or_else(|| ProbeOneError::NotRunning(game_id.to_owned()))?;
        // The game keeps the generation it has, or joins the current one: pruning after
        // the next complete tick still decides whether it is running.
        let generation = self.generation;
        self.games.sync(
            &record.game_id,
            record.container_id.as_deref(),
            stored.as_ref(),
            generation,
        );
        let span = probe_span(&record.game_id);
        let outcome = self
            .prober
            .probe(&record.engine_endpoint)
            .instrument(span)
            .await;
        let mut report = TickReport::default();
        let mut batch = Vec::new();
        let refresh_fleet = self.fleet_estimate();
        self.apply(
            Ok((record.clone(), outcome.clone())),
            generation,
            refresh_fleet,
            &mut report,
            &mut batch,
        )
        .await;
        self.recorder
            .flush(&mut self.games, &mut batch, &mut report)
            .await;
        if !report.is_clean() || report.conflicts > 0 {
            let mut errors = report.store_errors;
            if report.failed_commits > 0 {
                errors.push("the event could not be committed".into());
            }
            if report.conflicts > 0 {
                errors.push("another writer changed the game first; probe again".into());
            }
            return Err(ProbeOneError::NotRecorded(errors.join("; ")));
        }
        Ok(ProbeOneReport {
            health: self.health_of(game_id).unwrap_or_default(),
            record,
            outcome,
            event: report.events.pop(),
        })
    }

    /// Applies one finished probe: hysteresis on the synced state, then the commit rule.
    async fn apply(
        &mut self,
        done: Result<(RuntimeRecord, ProbeOutcome), tokio::task::JoinError>,
        generation: u64,
        refresh_fleet: usize,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) {
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
        let refresh = games::refresh_turn(&record.game_id, generation, refresh_fleet);
        let decision =
            self.games
                .decide(&record.game_id, &outcome, self.settings.thresholds, refresh);
        self.recorder
            .record(&mut self.games, &record, decision, &outcome, report, batch)
            .await;
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
