//! The run loop: ticks on the interval on the periodic driver ([`crate::periodic`]), keeps
//! the membership heartbeat going beside it, stops on shutdown, and publishes each tick's
//! end on the board's tick `watch`, which the status surface reads. On-demand probes do
//! not go through it: they run beside the ticks ([`super::on_demand`]).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Worker;
use super::membership::Heartbeats;
use super::report::{TickError, TickReport, failed_tick_summary};
use crate::ErrorChain;
use crate::live::LiveFeed;
use crate::periodic::{self, Next, Periodic};
use crate::status::{StatusBoard, TickEnded};

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

/// The tick loop as a [`Periodic`] job: one tick per turn, its end published on the
/// board's tick watch and told to the fleet page's live stream.
struct Ticks {
    worker: Worker,
    interval: Duration,
    postgres: PostgresWatch,
    live: LiveFeed,
    last: Option<TickEnded>,
}

impl Periodic for Ticks {
    type Status = Option<TickEnded>;

    fn period(&self) -> Duration {
        self.interval
    }

    async fn turn(&mut self, stop: &CancellationToken) -> Next {
        let result = self.worker.tick(stop).await;
        self.postgres.observe(&result);
        log_tick(&result, self.interval);
        let now = chrono::Utc::now();
        let summary = match &result {
            Ok(report) => report.summary(now),
            Err(e) => failed_tick_summary(e, now),
        };
        self.live.tick_ended(&summary.to_json());
        self.last = Some(TickEnded {
            at: Instant::now(),
            summary,
        });
        Next::Period
    }

    fn status(&self) -> Option<TickEnded> {
        self.last.clone()
    }
}

/// Ticks at once, then every `interval` until `stop` ([`crate::periodic`]). Missed ticks
/// are delayed, never bunched, and ticks never overlap: the next one starts only after this
/// one returns. Each tick's end goes on the status `board`, and the worker beats the
/// board's progress at each tick's start, each probe it records and each store call that
/// returns (liveness, DESIGN §11: the loop turns or probes complete, however long the fleet
/// makes a tick; a failed tick and a failed write count too: liveness is the worker's, not
/// Postgres'). After `stop`, the probes still in flight finish and are recorded.
pub async fn run(
    mut worker: Worker,
    interval: Duration,
    stop: CancellationToken,
    board: StatusBoard,
) {
    let progress = board.progress();
    worker.recorder.beat_on_store_answers(progress.clone());
    worker.progress = Some(progress);
    let ticks = Ticks {
        worker,
        interval,
        postgres: PostgresWatch::default(),
        live: board.live_feed().clone(),
        last: None,
    };
    let Ticks { mut worker, .. } = periodic::run(ticks, &stop, &board.tick_publisher()).await;
    let last = worker.finish_in_flight().await;
    if last.probes + last.local_errors > 0 {
        tracing::info!(
            probes = last.probes,
            events = last.events.len(),
            "probes still in flight at shutdown finished and were recorded"
        );
    }
    tracing::info!(reason = "shutdown requested", "worker stopped");
}

/// [`run`] as one replica among others: the first heartbeat joins the membership before
/// the first tick (so a replica starting beside others probes only its share from the
/// start), the heartbeat task runs beside the loop, and after the loop ends the replica
/// leaves the membership so the others take its games at once.
pub async fn run_replica(
    worker: Worker,
    mut heartbeats: Heartbeats,
    interval: Duration,
    stop: CancellationToken,
    board: StatusBoard,
) {
    if let Err(e) = heartbeats.beat().await {
        tracing::warn!(error = %ErrorChain(&e), "first membership heartbeat failed; owning every game until one succeeds");
    }
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeats.run(heartbeat_stop.clone()));
    let worker_loop = run(worker, interval, stop.clone(), board);
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

/// Share of the interval a tick may run past it before the overrun is logged: the writes
/// after the budget (one or two statements) take milliseconds on a healthy Postgres.
const TICK_OVERRUN_SLACK: f64 = 0.25;

fn log_tick(result: &Result<TickReport, TickError>, interval: Duration) {
    match result {
        Ok(report) => {
            // A tick with a budget ends at the interval by design and then writes what it
            // collected, so it runs a few ms past the interval whenever a probe outlasts it;
            // only an overrun beyond that slack (a slow Postgres, a huge list) starts the next
            // tick late in a way worth a warning.
            if report.duration > interval + interval.mul_f64(TICK_OVERRUN_SLACK) {
                tracing::warn!(duration = ?report.duration, ?interval, records = report.records, "tick took longer than the interval; the next one starts late");
            }
            if report.deferred > 0 || report.in_flight > 0 {
                tracing::info!(
                    deferred = report.deferred,
                    in_flight = report.in_flight,
                    "the tick's budget ran out: deferred games go first next tick, probes still running are recorded by a later tick"
                );
            }
            if report.local_errors > 0 {
                tracing::error!(
                    local_errors = report.local_errors,
                    probes = report.probes,
                    "probes not attempted: the worker ran out of descriptors, ports or buffers; these engines were not judged this tick"
                );
            }
            if report.probe_panics > 0 {
                tracing::error!(
                    probe_panics = report.probe_panics,
                    probes = report.probes,
                    "probes panicked: an internal fault in the worker (a bug), not the engines' or Postgres'; their games are probed again next tick"
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
