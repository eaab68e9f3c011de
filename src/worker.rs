//! The tick: list running records, probe them with bounded concurrency, apply the
//! hysteresis, record what changed, prune games that are gone (DESIGN §1, §3).
//!
//! [`Worker::tick`] is one pass and returns a [`TickReport`]; [`run`] is the few lines of
//! scheduling around it. Memory follows Postgres: a game's counters advance only once the
//! row that records them (event plus snapshot, or the batched snapshot) is committed, so a
//! failed write makes the next tick take the same decision again, never a different one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::ErrorChain;
use crate::events::envelope::{Details, FailedDetails, HealthEvent, RecoveredDetails};
use crate::hysteresis::{self, GameHealth, Observation, Thresholds, Transition};
use crate::probe::{FailureKind, ProbeOutcome, Prober};
use crate::status::{StatusBoard, TickSummary};
use crate::store::{RuntimeRecord, SnapshotRow, Store};
use crate::telemetry::Metrics;

/// Snapshots are written in batches of at most this many rows: bounded memory (about 3 MB)
/// and statement size. Twice the refresh budget, so one refresh turn (about 10k rows, a
/// hash's share give or take) plus the games that changed fit in one statement.
const SNAPSHOT_BATCH: usize = 2 * SNAPSHOT_REFRESH_BUDGET;

#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    pub thresholds: Thresholds,
    pub max_concurrency: usize,
    /// Probe starts are spread evenly over this much of each tick (`RTMANAGER_PROBE_SPREAD`
    /// × interval) so a large fleet is not hit in one burst. Zero: all start at once, as
    /// fast as `max_concurrency` allows.
    pub spread_window: Duration,
}

/// What one tick did.
#[derive(Debug, Default, Clone)]
pub struct TickReport {
    /// Running records listed.
    pub records: usize,
    pub probes: usize,
    pub healthy: usize,
    pub failed: usize,
    /// Events committed during this tick, in commit order.
    pub events: Vec<HealthEvent>,
    /// Games forgotten because they are no longer running.
    pub pruned: usize,
    /// Transitions whose commit failed; they are decided again next tick.
    pub failed_commits: usize,
    /// Other writes that failed (snapshots, pruning), as readable sentences.
    pub store_errors: Vec<String>,
    /// Stopped early by shutdown: probes in flight finished, no new ones were started.
    pub interrupted: bool,
    pub duration: Duration,
}

impl TickReport {
    /// Everything decided was recorded.
    pub fn is_clean(&self) -> bool {
        self.failed_commits == 0 && self.store_errors.is_empty()
    }
}

#[derive(Debug, Error)]
pub enum TickError {
    #[error("listing running records failed after {listed} records")]
    List {
        listed: usize,
        #[source]
        source: sqlx::Error,
    },
}

/// Why an on-demand probe gave no outcome.
#[derive(Debug, Error)]
pub enum ProbeOneError {
    #[error("game {0:?} is not a running game")]
    NotRunning(String),
    #[error("looking up the game's runtime record")]
    Lookup(#[source] sqlx::Error),
    #[error("the probe ran but could not be recorded: {0}")]
    NotRecorded(String),
}

/// What an on-demand probe found and decided.
#[derive(Debug, Clone)]
pub struct ProbeOneReport {
    pub record: RuntimeRecord,
    pub outcome: ProbeOutcome,
    /// The game's counters after this probe (committed).
    pub health: GameHealth,
    /// The event this probe caused, if any (committed).
    pub event: Option<HealthEvent>,
}

#[derive(Debug, Clone, Copy)]
struct TrackedGame {
    health: GameHealth,
    /// Generation of the last tick that listed this game.
    seen: u64,
    /// What the game's `health_snapshots` row says, to decide whether a probe changes it.
    written: Written,
}

/// The parts of a game's snapshot row that decide whether it must be rewritten.
#[derive(Debug, Clone, Copy)]
struct Written {
    health: GameHealth,
    last_status: u16,
    last_failure_kind: Option<FailureKind>,
}

/// Rows whose meaning did not change that a tick rewrites at most, to refresh their timing
/// fields (`last_probe_at`, `last_success_at`, `last_latency_ms`). Up to this many games
/// every row is fresh every tick; beyond it the games take turns (by a hash of the id), so
/// a steady tick stays at two statements (the list and one upsert) and a fleet of 100k
/// games rewrites 10k rows per tick instead of 100k, each row at most 10 ticks old.
const SNAPSHOT_REFRESH_BUDGET: usize = 10_000;

impl Written {
    fn of(row: &SnapshotRow) -> Self {
        Self {
            health: row.health,
            last_status: row.last_status,
            last_failure_kind: row.last_failure_kind.and_then(FailureKind::parse),
        }
    }

    /// Whether `next` after `outcome` says something the row does not.
    fn must_rewrite(&self, next: &GameHealth, outcome: &ProbeOutcome) -> bool {
        // Consecutive successes only matter while a failure is published (recovery runs).
        let counters = |h: &GameHealth| {
            (
                h.consecutive_failures,
                h.episode_failures,
                h.failure_published,
                if h.failure_published {
                    h.consecutive_successes
                } else {
                    0
                },
            )
        };
        counters(&self.health) != counters(next)
            || self.health.status() != next.status()
            || self.last_status != outcome.status
            || self.last_failure_kind != outcome.failure.as_ref().map(|f| f.kind)
    }
}

pub struct Worker {
    store: Store,
    prober: Prober,
    settings: WorkerSettings,
    metrics: Metrics,
    outbox_wake: Arc<Notify>,
    games: HashMap<String, TrackedGame>,
    generation: u64,
    /// Records listed by the last complete tick: the estimate that sizes the spread slots
    /// and the snapshot refresh turns.
    last_listed: usize,
}

impl Worker {
    pub fn new(
        store: Store,
        prober: Prober,
        settings: WorkerSettings,
        metrics: Metrics,
        outbox_wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            prober,
            settings,
            metrics,
            outbox_wake,
            games: HashMap::new(),
            generation: 0,
            last_listed: 0,
        }
    }

    /// Loads the per-game counters from `health_snapshots`, so a restart resumes where the
    /// last committed state left off. Returns how many games were restored.
    pub async fn restore(&mut self) -> Result<usize, sqlx::Error> {
        let rows = self.store.load_health().await?;
        self.games = rows
            .into_iter()
            .map(|(game_id, health)| {
                // The stored last status is not loaded: the first probe rewrites the row.
                let written = Written {
                    health,
                    last_status: u16::MAX,
                    last_failure_kind: None,
                };
                (
                    game_id,
                    TrackedGame {
                        health,
                        seen: 0,
                        written,
                    },
                )
            })
            .collect();
        Ok(self.games.len())
    }

    /// How many games this tick will likely list: the last complete tick's count, or the
    /// restored state's before the first one.
    fn fleet_estimate(&self) -> usize {
        self.last_listed.max(self.games.len())
    }

    fn refresh_turn(&self, game_id: &str, generation: u64) -> bool {
        refresh_turn(game_id, generation, self.fleet_estimate())
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
        let mut report = TickReport::default();
        let mut snapshots = Vec::new();
        let semaphore = Arc::new(Semaphore::new(self.settings.max_concurrency));
        let mut in_flight: JoinSet<(RuntimeRecord, ProbeOutcome)> = JoinSet::new();
        let store = self.store.clone();
        let mut records = store.running_records();
        let mut list_error = None;
        // With a spread, probe i starts no earlier than `started + i × slot`; the fleet size
        // is the last tick's (or the restored state's) until this tick has counted it.
        let expected = self.fleet_estimate();
        let slot = if self.settings.spread_window.is_zero() || expected == 0 {
            Duration::ZERO
        } else {
            self.settings.spread_window / expected as u32
        };
        let tick_start = tokio::time::Instant::from_std(started);

        loop {
            let start_at = tick_start + slot * report.records as u32;
            // Wait for this probe's start and a free permit, recording finished probes
            // meanwhile.
            let permit = loop {
                let due = tokio::time::Instant::now() >= start_at;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break None,
                    Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                        self.apply(done, generation, &mut report, &mut snapshots).await;
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
            let record = match records.next().await {
                None => break,
                Some(Ok(record)) => record,
                Some(Err(source)) => {
                    list_error = Some(source);
                    break;
                }
            };
            report.records += 1;
            if let Some(game) = self.games.get_mut(&record.game_id) {
                game.seen = generation;
            }
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
            if snapshots.len() >= SNAPSHOT_BATCH {
                self.flush_snapshots(&mut snapshots, generation, &mut report)
                    .await;
            }
        }
        drop(records);
        while let Some(done) = in_flight.join_next().await {
            self.apply(done, generation, &mut report, &mut snapshots)
                .await;
        }
        self.flush_snapshots(&mut snapshots, generation, &mut report)
            .await;

        // Prune only after a complete list: a partial one would forget running games.
        if list_error.is_none() && !report.interrupted {
            self.prune(generation, &mut report).await;
            self.metrics.running_records(report.records);
            self.last_listed = report.records;
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
    /// same hysteresis, the same commit-before-memory rule, the same events and metrics.
    /// Only [`run`] calls it (through [`WorkerCommand::ProbeOne`]), between ticks.
    #[tracing::instrument(name = "probe_one", skip_all, fields(game_id = %game_id))]
    pub async fn probe_one(&mut self, game_id: &str) -> Result<ProbeOneReport, ProbeOneError> {
        let record = self
            .store
            .running_record(game_id)
            .await
            .map_err(ProbeOneError::Lookup)?
            .ok_or_else(|| ProbeOneError::NotRunning(game_id.to_owned()))?;
        let span = probe_span(&record.game_id);
        let outcome = self
            .prober
            .probe(&record.engine_endpoint)
            .instrument(span)
            .await;
        // The game keeps the generation it has, or joins the current one: pruning after
        // the next complete tick still decides whether it is running.
        let generation = self.generation;
        let mut report = TickReport::default();
        let mut snapshots = Vec::new();
        self.apply(
            Ok((record.clone(), outcome.clone())),
            generation,
            &mut report,
            &mut snapshots,
        )
        .await;
        self.flush_snapshots(&mut snapshots, generation, &mut report)
            .await;
        if !report.is_clean() {
            let mut errors = report.store_errors;
            if report.failed_commits > 0 {
                errors.push("the event could not be committed".into());
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

    async fn handle(&mut self, command: WorkerCommand) {
        match command {
            WorkerCommand::ProbeOne { game_id, reply } => {
                // The caller gave up (timeout) while a tick ran: do not probe for nobody.
                if reply.is_closed() {
                    tracing::debug!(%game_id, "on-demand probe dropped: the caller stopped waiting");
                    return;
                }
                let result = self.probe_one(&game_id).await;
                let _ = reply.send(result);
            }
        }
    }

    /// Applies one finished probe: hysteresis, then either commit the transition now or
    /// queue the snapshot for the batch.
    async fn apply(
        &mut self,
        done: Result<(RuntimeRecord, ProbeOutcome), tokio::task::JoinError>,
        generation: u64,
        report: &mut TickReport,
        snapshots: &mut Vec<SnapshotRow>,
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
        report.probes += 1;
        self.metrics
            .probe_completed(outcome.outcome_label(), outcome.latency);
        let observation = if outcome.is_healthy() {
            report.healthy += 1;
            Observation::Success
        } else {
            report.failed += 1;
            Observation::Failure
        };
        if let Some(failure) = &outcome.failure {
            tracing::debug!(game_id = %record.game_id, kind = %failure.kind, status = outcome.status, error = %failure.message, "probe failed");
        }
        let tracked = self.games.get(&record.game_id).copied();
        let current = tracked.map(|g| g.health).unwrap_or_default();
        let (next, transition) =
            hysteresis::observe(current, observation, self.settings.thresholds);
        let Some(transition) = transition else {
            match tracked {
                // Nothing the row says changed: memory moves on, the row stays.
                Some(game)
                    if !game.written.must_rewrite(&next, &outcome)
                        && !self.refresh_turn(&record.game_id, generation) =>
                {
                    self.games.insert(
                        record.game_id,
                        TrackedGame {
                            health: next,
                            seen: generation,
                            written: game.written,
                        },
                    );
                }
                _ => snapshots.push(snapshot_row(&record.game_id, next, &outcome)),
            }
            return;
        };
        let snapshot = snapshot_row(&record.game_id, next, &outcome);
        let event = HealthEvent::new(
            record.game_id.clone(),
            record.container_id.as_deref(),
            outcome.completed_at,
            details(transition, &outcome),
        );
        match self.store.record_transition(&event, &snapshot).await {
            Ok(()) => {
                self.games.insert(
                    record.game_id,
                    TrackedGame {
                        health: next,
                        seen: generation,
                        written: Written::of(&snapshot),
                    },
                );
                self.metrics.event_emitted(event.event_type());
                self.outbox_wake.notify_one();
                tracing::info!(
                    event_type = event.event_type().as_str(),
                    event_id = %event.event_id,
                    game_id = %event.game_id,
                    container_id = %event.container_id,
                    details = %serde_json::to_string(&event.details).unwrap_or_default(),
                    "health event recorded"
                );
                report.events.push(event);
            }
            Err(e) => {
                report.failed_commits += 1;
                tracing::warn!(
                    game_id = %record.game_id,
                    event_type = event.event_type().as_str(),
                    error = %ErrorChain(&e),
                    "could not commit a health event; it will be decided again next tick"
                );
            }
        }
    }

    async fn flush_snapshots(
        &mut self,
        snapshots: &mut Vec<SnapshotRow>,
        generation: u64,
        report: &mut TickReport,
    ) {
        if snapshots.is_empty() {
            return;
        }
        let writing = Instant::now();
        match self.store.upsert_snapshots(snapshots).await {
            Ok(()) => {
                tracing::debug!(rows = snapshots.len(), duration = ?writing.elapsed(), "snapshots written");
                for row in snapshots.drain(..) {
                    let written = Written::of(&row);
                    self.games.insert(
                        row.game_id,
                        TrackedGame {
                            health: row.health,
                            seen: generation,
                            written,
                        },
                    );
                }
            }
            Err(e) => {
                tracing::warn!(rows = snapshots.len(), error = %ErrorChain(&e), "could not write snapshots; counters not advanced");
                report.store_errors.push(format!(
                    "writing {} snapshots: {}",
                    snapshots.len(),
                    ErrorChain(&e)
                ));
                snapshots.clear();
            }
        }
    }

    async fn prune(&mut self, generation: u64, report: &mut TickReport) {
        let gone: Vec<String> = self
            .games
            .iter()
            .filter(|(_, game)| game.seen != generation)
            .map(|(game_id, _)| game_id.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        match self.store.delete_snapshots(&gone).await {
            Ok(_) => {
                for game_id in &gone {
                    self.games.remove(game_id);
                }
                report.pruned = gone.len();
                tracing::debug!(
                    pruned = gone.len(),
                    "forgot games that are no longer running"
                );
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "could not prune snapshots; will retry next tick");
                report.store_errors.push(format!(
                    "pruning {} games: {}",
                    gone.len(),
                    ErrorChain(&e)
                ));
            }
        }
    }
}

/// The span of one probe, a child of the tick's: made only when spans are exported
/// ([`crate::telemetry::traces_exported`]), since nothing else reads it.
fn probe_span(game_id: &str) -> tracing::Span {
    if crate::telemetry::traces_exported() {
        tracing::info_span!("probe", game_id = %game_id)
    } else {
        tracing::Span::none()
    }
}

/// Whether a tick of `generation`, in a fleet of about `fleet` games, refreshes the game's
/// unchanged snapshot row: every tick up to [`SNAPSHOT_REFRESH_BUDGET`] games, in turns
/// beyond it (each game once every `ceil(fleet / budget)` ticks).
fn refresh_turn(game_id: &str, generation: u64, fleet: usize) -> bool {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    let turns = fleet.div_ceil(SNAPSHOT_REFRESH_BUDGET).max(1) as u64;
    // A fixed-key hasher: the same game takes the same turn in every tick.
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(game_id);
    hash % turns == generation % turns
}

fn details(transition: Transition, outcome: &ProbeOutcome) -> Details {
    match transition {
        Transition::Failed {
            consecutive_failures,
        } => Details::Failed(FailedDetails {
            consecutive_failures,
            last_status: outcome.status,
            last_error: outcome
                .failure
                .as_ref()
                .map(|f| f.message.clone())
                .unwrap_or_default(),
        }),
        Transition::Recovered {
            prior_failure_count,
        } => Details::Recovered(RecoveredDetails {
            prior_failure_count,
        }),
    }
}

fn snapshot_row(game_id: &str, health: GameHealth, outcome: &ProbeOutcome) -> SnapshotRow {
    SnapshotRow {
        game_id: game_id.to_owned(),
        health,
        last_probe_at: outcome.completed_at,
        last_success_at: outcome.is_healthy().then_some(outcome.completed_at),
        last_status: outcome.status,
        last_error: outcome.failure.as_ref().map(|f| f.message.clone()),
        last_failure_kind: outcome.failure.as_ref().map(|f| f.kind.as_str()),
        last_latency_ms: outcome.latency.as_secs_f64() * 1000.0,
    }
}

/// A request to the worker's run loop, answered on `reply`.
///
/// The run loop owns the [`Worker`] and is the only place its state changes: ticks and
/// commands take turns in one `select!`, so an on-demand probe can never interleave with a
/// tick's mutation of the same game (no lock, no second copy of the state).
#[derive(Debug)]
pub enum WorkerCommand {
    ProbeOne {
        game_id: String,
        reply: oneshot::Sender<Result<ProbeOneReport, ProbeOneError>>,
    },
}

/// Commands waiting for the run loop at most. Beyond that the sender is told the worker is
/// busy instead of queueing unbounded work behind a long tick.
pub const COMMAND_QUEUE: usize = 64;

/// A channel for [`WorkerCommand`]s: the sender goes to the HTTP surface, the receiver to
/// [`run`].
pub fn command_channel() -> (mpsc::Sender<WorkerCommand>, mpsc::Receiver<WorkerCommand>) {
    mpsc::channel(COMMAND_QUEUE)
}

/// Postgres as the ticks see it, so an outage and its end are one log line each rather than
/// one per tick.
#[derive(Debug, Default)]
struct PostgresWatch {
    down_since: Option<Instant>,
}

impl PostgresWatch {
    fn observe(&mut self, result: &Result<TickReport, TickError>) {
        // A tick reached Postgres when it listed and recorded everything. A failed list or
        // failed writes mean it did not; that is what an operator needs to know first.
        let problem =
            match result {
                Ok(report) if report.failed_commits == 0 && report.store_errors.is_empty() => None,
                Ok(report) => {
                    Some(report.store_errors.first().cloned().unwrap_or_else(|| {
                        format!("{} event commits failed", report.failed_commits)
                    }))
                }
                Err(e) => Some(ErrorChain(e).to_string()),
            };
        match (problem, self.down_since) {
            (Some(problem), None) => {
                tracing::error!(error = %problem, "Postgres unavailable: ticks cannot list or record; decisions wait until it answers");
                self.down_since = Some(Instant::now());
            }
            (None, Some(since)) => {
                tracing::info!(down_for = ?since.elapsed(), "Postgres available again: ticks list and record");
                self.down_since = None;
            }
            _ => {}
        }
    }
}

/// Ticks at once, then every `interval` until `stop`, and serves [`WorkerCommand`]s between
/// ticks. Missed ticks are delayed, never bunched, and ticks never overlap: the next one
/// starts only after this one returns. Each tick's end goes on the status `board`
/// (liveness counts a failed tick as a tick: the loop went round).
pub async fn run(
    mut worker: Worker,
    interval: Duration,
    stop: CancellationToken,
    board: StatusBoard,
    mut commands: mpsc::Receiver<WorkerCommand>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut postgres = PostgresWatch::default();
    let reason = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break "shutdown requested",
            _ = ticker.tick() => {
                let result = worker.tick(&stop).await;
                postgres.observe(&result);
                log_tick(&result, interval);
                let result = result.map_err(|e| ErrorChain(&e).to_string());
                board.tick_ended(TickSummary::from_result(&result, chrono::Utc::now()));
            }
            Some(command) = commands.recv() => worker.handle(command).await,
        }
    };
    tracing::info!(reason, "worker stopped");
}

fn log_tick(result: &Result<TickReport, TickError>, interval: Duration) {
    match result {
        Ok(report) => {
            if report.duration > interval {
                tracing::warn!(duration = ?report.duration, ?interval, records = report.records, "tick took longer than the interval; the next one starts late");
            }
            if !report.is_clean() {
                tracing::warn!(failed_commits = report.failed_commits, errors = ?report.store_errors, "tick could not record everything");
            }
            tracing::debug!(records = report.records, probes = report.probes, failed = report.failed, events = report.events.len(), pruned = report.pruned, duration = ?report.duration, "tick done");
        }
        Err(e) => tracing::error!(error = %ErrorChain(e), "tick failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_fleets_refresh_every_row_every_tick() {
        for generation in 0..5 {
            assert!(refresh_turn("g", generation, 0));
            assert!(refresh_turn("g", generation, SNAPSHOT_REFRESH_BUDGET));
        }
    }

    #[test]
    fn large_fleets_take_turns_within_the_budget() {
        let fleet = SNAPSHOT_REFRESH_BUDGET * 5 / 2; // three turns
        let ids: Vec<String> = (0..fleet).map(|i| format!("game-{i}")).collect();
        let mut per_game = vec![0; fleet];
        for generation in 0..3 {
            let refreshed: Vec<usize> = (0..fleet)
                .filter(|&i| refresh_turn(&ids[i], generation, fleet))
                .collect();
            assert!(
                refreshed.len() <= SNAPSHOT_REFRESH_BUDGET * 11 / 10,
                "tick {generation}: {}",
                refreshed.len()
            );
            for i in refreshed {
                per_game[i] += 1;
            }
        }
        assert!(
            per_game.iter().all(|&n| n == 1),
            "every game exactly once in three ticks"
        );
    }
}
