//! The commit-before-memory rule, in one place: a decision is written to Postgres
//! (conditionally on the version it was made from) and only then settled in the
//! [`GameTable`]. Transitions commit one by one with their event; unchanged games are
//! written in batches; games no longer running are pruned.
//!
//! Whatever Postgres answers, memory never runs ahead of it: a conflict (another writer
//! got there first) or any error (including a commit whose outcome is unknown) leaves the
//! game as it was, and the next [`GameTable::sync`] reloads it from the row before it is
//! decided again (DESIGN §3, §12).

use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;
use tokio::sync::Notify;

use super::games::{Decision, Facts, GameTable, Settled};
use super::report::TickReport;
use crate::ErrorChain;
use crate::envelope::{Details, FailedDetails, HealthEvent, RecoveredDetails};
use crate::hysteresis::Transition;
use crate::probe::ProbeOutcome;
use crate::status::Progress;
use crate::store::{RuntimeRecord, SnapshotRow, Store, WriteError};
use crate::telemetry::Metrics;

/// Snapshots are written in batches of at most this many rows: bounded memory (about 3 MB)
/// and statement size. Only games whose row changes are written, so a tick where 20,000
/// games change at once (a mass failure, a fleet starting) still writes in one statement.
pub(crate) const SNAPSHOT_BATCH: usize = 20_000;

/// Why a transition was not recorded.
#[derive(Debug, Error)]
pub(crate) enum RecordError {
    /// Another writer changed the game first; nothing was written.
    #[error("another writer changed the game first")]
    Conflict(#[source] WriteError),
    /// Postgres failed; the commit may or may not have happened.
    #[error("the commit failed or its outcome is unknown")]
    Failed(#[source] WriteError),
}

/// A snapshot write waiting for the next batch, with the decision it settles.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub row: SnapshotRow,
    pub decision: Decision,
    pub facts: Facts,
}

/// Writes decisions and settles them.
pub(crate) struct Recorder {
    store: Store,
    metrics: Metrics,
    outbox_wake: Arc<Notify>,
    /// Liveness' progress beat, touched whenever a store call returns.
    progress: Option<Progress>,
}

impl Recorder {
    pub fn new(store: Store, metrics: Metrics, outbox_wake: Arc<Notify>) -> Self {
        Self {
            store,
            metrics,
            outbox_wake,
            progress: None,
        }
    }

    /// Beats `progress` whenever a store call returns, an error included: each call is
    /// bounded, so a tick writing through a Postgres outage is a loop that turns, and
    /// liveness is the worker's, not Postgres' (`status::LIVENESS_FLOOR`).
    pub(crate) fn beat_on_store_answers(&mut self, progress: Progress) {
        self.progress = Some(progress);
    }

    fn store_answered(&self) {
        if let Some(progress) = &self.progress {
            progress.beat();
        }
    }

    /// Records one probe's decision: a transition commits now with its event; a change
    /// without one joins the batch; an unchanged game moves on in memory only.
    pub async fn record(
        &self,
        games: &mut GameTable,
        record: &RuntimeRecord,
        decision: Decision,
        outcome: &ProbeOutcome,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) {
        let facts = Facts::of(outcome);
        if !decision.write {
            games.settle(&record.game_id, &decision, facts, Settled::Unwritten);
            return;
        }
        let row = snapshot_row(&record.game_id, &decision, outcome);
        let Some(transition) = decision.transition else {
            batch.push(PendingWrite {
                row,
                decision,
                facts,
            });
            return;
        };
        let event = HealthEvent::new(
            record.game_id.clone(),
            record.container_id.as_deref(),
            outcome.completed_at,
            details(transition, outcome),
        );
        match self.transition(&event, &row).await {
            Ok(version) => {
                games.settle(
                    &record.game_id,
                    &decision,
                    facts,
                    Settled::Committed { version },
                );
                self.metrics.event_emitted(event.event_type());
                self.outbox_wake.notify_one();
                tracing::info!(
                    event_type = event.event_type().as_str(),
                    event_id = %event.event_id,
                    game_id = %crate::bounded(&event.game_id, 200),
                    container_id = %crate::bounded(&event.container_id, 200),
                    details = %crate::bounded(&serde_json::to_string(&event.details).unwrap_or_default(), 200),
                    "health event recorded"
                );
                report.events.push(event);
            }
            Err(RecordError::Conflict(why)) => {
                games.settle(&record.game_id, &decision, facts, Settled::Conflict);
                report.conflicts += 1;
                self.metrics.commit_conflicts(1);
                tracing::info!(
                    game_id = %crate::bounded(&record.game_id, 200),
                    event_type = event.event_type().as_str(),
                    reason = %why,
                    "not recorded: another writer changed the game first; it is reloaded and decided again"
                );
            }
            Err(RecordError::Failed(e)) => {
                games.settle(&record.game_id, &decision, facts, Settled::Failed);
                report.failed_commits += 1;
                tracing::warn!(
                    game_id = %crate::bounded(&record.game_id, 200),
                    event_type = event.event_type().as_str(),
                    error = %ErrorChain(&e),
                    "could not commit a health event; the game is reloaded from Postgres and decided again next tick"
                );
            }
        }
    }

    /// Commits a transition's snapshot and its event in one transaction, conditionally on
    /// the version the decision was made from.
    async fn transition(&self, event: &HealthEvent, row: &SnapshotRow) -> Result<i64, RecordError> {
        let result = self.store.record_transition(event, row).await;
        self.store_answered();
        match result {
            Ok(version) => Ok(version),
            Err(e @ (WriteError::Conflict { .. } | WriteError::DuplicateEpisode { .. })) => {
                Err(RecordError::Conflict(e))
            }
            Err(e) => Err(RecordError::Failed(e)),
        }
    }

    /// Records, in one statement, the last probe of every game whose probe did not rewrite
    /// its row (DESIGN §4's `last_probe_at`, `last_success_at` and `last_latency_ms` stay
    /// honest for readers without a row rewrite per probe). A failure is logged and
    /// reported: the rows still hold the last probe that changed something.
    pub(crate) async fn mark_probes(
        &self,
        games: &GameTable,
        replica_id: &str,
        report: &mut TickReport,
    ) {
        let mut marks = crate::store::ProbeMarks::default();
        for (game_id, mark) in games.probe_marks() {
            marks.game_ids.push(game_id);
            marks.probed_at.push(mark.completed_at);
            marks.latency_ms.push(mark.latency_us as f32 / 1000.0);
            marks.succeeded.push(mark.succeeded);
        }
        if marks.is_empty() {
            return;
        }
        let result = self.store.write_probe_marks(replica_id, &marks).await;
        self.store_answered();
        if let Err(e) = result {
            tracing::warn!(games = marks.len(), error = %ErrorChain(&e), "could not record probe times; snapshot rows keep the last probe that changed them");
            report
                .store_errors
                .push(format!("recording probe times: {}", ErrorChain(&e)));
        }
    }

    /// Writes the batch and settles each game as far as its write went.
    pub async fn flush(
        &self,
        games: &mut GameTable,
        batch: &mut Vec<PendingWrite>,
        report: &mut TickReport,
    ) {
        if batch.is_empty() {
            return;
        }
        let writing = Instant::now();
        let rows: Vec<SnapshotRow> = batch.iter().map(|p| p.row.clone()).collect();
        let result = self.store.write_snapshots(&rows).await;
        self.store_answered();
        match result {
            Ok(writes) => {
                tracing::debug!(rows = rows.len(), conflicts = writes.conflicts.len(), duration = ?writing.elapsed(), "snapshots written");
                let versions: std::collections::HashMap<&str, i64> = writes
                    .written
                    .iter()
                    .map(|(g, v)| (g.as_str(), *v))
                    .collect();
                for pending in batch.drain(..) {
                    let settled = match versions.get(pending.row.game_id.as_str()) {
                        Some(&version) => Settled::Committed { version },
                        None => Settled::Conflict,
                    };
                    games.settle(
                        &pending.row.game_id,
                        &pending.decision,
                        pending.facts,
                        settled,
                    );
                }
                if !writes.conflicts.is_empty() {
                    report.conflicts += writes.conflicts.len();
                    self.metrics.commit_conflicts(writes.conflicts.len());
                    tracing::info!(
                        games = writes.conflicts.len(),
                        first = %crate::bounded(&writes.conflicts[0], 200),
                        "snapshots not written: another writer changed these games first; they are reloaded and decided again"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(rows = batch.len(), error = %ErrorChain(&e), "could not write snapshots; counters not advanced, games reloaded next tick");
                report.store_errors.push(format!(
                    "writing {} snapshots: {}",
                    batch.len(),
                    ErrorChain(&e)
                ));
                for pending in batch.drain(..) {
                    games.settle(
                        &pending.row.game_id,
                        &pending.decision,
                        pending.facts,
                        Settled::Failed,
                    );
                }
            }
        }
    }

    /// Forgets games that are no longer running: their rows, then memory.
    pub(crate) async fn prune(
        &self,
        games: &mut GameTable,
        generation: u64,
        report: &mut TickReport,
    ) {
        let gone = games.not_seen_since(generation);
        if gone.is_empty() {
            return;
        }
        let result = self.store.delete_snapshots(&gone).await;
        self.store_answered();
        match result {
            Ok(_) => {
                games.forget(&gone);
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

fn snapshot_row(game_id: &str, decision: &Decision, outcome: &ProbeOutcome) -> SnapshotRow {
    SnapshotRow {
        game_id: game_id.to_owned(),
        expected_version: decision.expected_version,
        container_id: decision.container_id.clone(),
        health: decision.next,
        last_probe_at: outcome.completed_at,
        last_success_at: outcome.is_healthy().then_some(outcome.completed_at),
        last_status: outcome.status,
        last_error: outcome.failure.as_ref().map(|f| f.message.clone()),
        last_failure_kind: outcome.failure.as_ref().map(|f| f.kind.as_str()),
        last_latency_ms: outcome.latency.as_secs_f64() * 1000.0,
    }
}
