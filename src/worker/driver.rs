//! The run loop: ticks on the interval, serves on-demand probes between ticks, keeps the
//! membership heartbeat going, stops on shutdown, and publishes each tick's end on the
//! status board (a `watch` channel the status surface reads).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::membership::Heartbeats;
use super::report::{ProbeOneError, ProbeOneReport, TickError, TickReport, failed_tick_summary};
use crate::ErrorChain;
use crate::status::StatusBoard;

/// A request to the worker's run loop, answered on `reply`.
///
/// The run loop owns the [`Worker`] and is the only place its state changes: ticks and
/// commands take turns, so an on-demand probe can never interleave with a tick's mutation
/// of the same game (no lock, no second copy of the state).
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

impl Worker {
    async fn handle(&mut self, command: WorkerCommand) {
        match command {
            WorkerCommand::ProbeOne { game_id, reply } => {
                // The caller gave up (timeout) while a tick ran: do not probe for nobody.
                if reply.is_closed() {
                    tracing::debug!(game_id = %crate::bounded(&game_id, 200), "on-demand probe dropped: the caller stopped waiting");
                    return;
                }
                let result = self.probe_one(&game_id).await;
                let _ = reply.send(result);
            }
        }
    }
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
                Ok(report) if report.is_clean() => None,
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
/// starts only after this one returns. Commands that queued during a tick are served
/// before the next tick starts, so a tick longer than the interval cannot starve them.
/// Each tick's end goes on the status `board` (liveness counts a failed tick as a tick:
/// the loop went round).
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
                let now = chrono::Utc::now();
                board.tick_ended(match &result {
                    Ok(report) => report.summary(now),
                    Err(e) => failed_tick_summary(e, now),
                });
                // What queued meanwhile, before the next (possibly overdue) tick.
                for _ in 0..COMMAND_QUEUE {
                    if stop.is_cancelled() {
                        break;
                    }
                    match commands.try_recv() {
                        Ok(command) => worker.handle(command).await,
                        Err(_) => break,
                    }
                }
            }
            Some(command) = commands.recv() => worker.handle(command).await,
        }
    };
    let last = worker.finish_in_flight().await;
    if last.probes + last.local_errors > 0 {
        tracing::info!(
            probes = last.probes,
            events = last.events.len(),
            "probes still in flight at shutdown finished and were recorded"
        );
    }
    tracing::info!(reason, "worker stopped");
}

/// [`run`] as one replica among others: the first heartbeat joins the membership before
/// the first tick (so a replica starting beside others probes only its share from the
/// start), the heartbeat task runs beside the loop, and after the loop ends the replica
/// leaves the membership so the others take its games at once.
pub async fn run_replica(
    worker: Worker,
    heartbeats: Heartbeats,
    interval: Duration,
    stop: CancellationToken,
    board: StatusBoard,
    commands: mpsc::Receiver<WorkerCommand>,
) {
    if let Err(e) = heartbeats.beat().await {
        tracing::warn!(error = %ErrorChain(&e), "first membership heartbeat failed; owning every game until one succeeds");
    }
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeats.run(heartbeat_stop.clone()));
    let worker_loop = run(worker, interval, stop.clone(), board, commands);
    tokio::pin!(worker_loop);
    let mut heartbeat = heartbeat;
    let heartbeat_done = tokio::select! {
        () = &mut worker_loop => false,
        ended = &mut heartbeat => {
            // The heartbeat task never ends on its own; if it did, say so loudly and keep
            // probing (the lease runs out and the others take over; nothing is emitted twice).
            match ended {
                Ok(()) => tracing::error!("membership heartbeat task ended unexpectedly; this replica's lease will expire"),
                Err(e) => tracing::error!(error = %e, "membership heartbeat task ended abnormally; this replica's lease will expire"),
            }
            worker_loop.await;
            true
        }
    };
    heartbeat_stop.cancel();
    if !heartbeat_done && let Err(e) = heartbeat.await {
        tracing::error!(error = %e, "membership heartbeat task ended abnormally at shutdown");
    }
}

fn log_tick(result: &Result<TickReport, TickError>, interval: Duration) {
    match result {
        Ok(report) => {
            if report.duration > interval {
                tracing::warn!(duration = ?report.duration, ?interval, records = report.records, "tick took longer than the interval; the next one starts late");
            }
            if report.local_errors > 0 {
                tracing::error!(
                    local_errors = report.local_errors,
                    probes = report.probes,
                    "probes not attempted: the worker ran out of descriptors, ports or buffers; these engines were not judged this tick"
                );
            }
            if !report.is_clean() {
                tracing::warn!(failed_commits = report.failed_commits, errors = ?report.store_errors, "tick could not record everything");
            }
            tracing::debug!(records = report.records, owned = report.owned, probes = report.probes, failed = report.failed, events = report.events.len(), pruned = report.pruned, reloaded = report.reloaded, conflicts = report.conflicts, duration = ?report.duration, "tick done");
        }
        Err(e) => tracing::error!(error = %ErrorChain(e), "tick failed"),
    }
}
