//! The tick's schedule (DESIGN §15, nothing holds the schedule hostage): when each probe
//! starts, which games wait for the next tick, and how long the tick waits for probes in
//! flight.
//!
//! [`Worker::tick`] starts games whose last probe succeeded as they are listed and hands
//! the others to [`Worker::start_later`], which starts them in [`Rank`] order, each group
//! longest-waiting first. Both go through [`Worker::start_or_defer`]: a probe starts at its
//! place in the spread once a slot is free, or, once the tick's budget is spent, the game
//! is deferred to the next tick. [`Worker::collect_in_flight`] records probes as they end,
//! up to the budget; the rest finish beside the next tick and are recorded by it.

use std::time::{Duration, Instant};

use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::games::{self, Rank};
use super::lanes::Job;
use super::record::{PendingWrite, SNAPSHOT_BATCH};
use super::report::TickReport;
use crate::store::RuntimeRecord;

/// A game that waits for the games whose last probe succeeded: its rank, the last tick
/// that probed it, its record.
pub(super) type LaterGame = (Rank, u64, RuntimeRecord);

/// One tick's plan for starting probes: the spread's slots, the budget, how many started.
pub(super) struct Schedule {
    tick_start: TokioInstant,
    /// With a spread, the n-th probe starts no earlier than `tick_start + n × slot`, and no
    /// later than `tick_start + window`.
    slot: Duration,
    window: Duration,
    /// The end of the tick's budget (`None`: none, the tick waits for every probe).
    deadline: Option<TokioInstant>,
    generation: u64,
    started: usize,
}

impl Schedule {
    fn next_start(&self) -> TokioInstant {
        self.tick_start + (self.slot * self.started as u32).min(self.window)
    }

    fn budget_spent(&self) -> bool {
        self.deadline.is_some_and(|d| TokioInstant::now() >= d)
    }
}

/// What [`Worker::start_or_defer`] did with a game.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    Started,
    /// The budget was spent first: the game's turn comes early next tick.
    Deferred,
    /// `stop` was asked for: the tick is interrupted.
    Interrupted,
}

impl Worker {
    /// The schedule of a tick that started at `started`. With a spread, the fleet size is
    /// the last tick's until this one has counted it.
    pub(super) fn schedule(&self, started: Instant, generation: u64) -> Schedule {
        let expected = self.fleet_estimate();
        let window = self.settings.spread_window;
        let slot = if window.is_zero() || expected == 0 {
            Duration::ZERO
        } else {
            window / expected as u32
        };
        let tick_start = TokioInstant::from_std(started);
        Schedule {
            tick_start,
            slot,
            window,
            deadline: self.tick_budget.map(|budget| tick_start + budget),
            generation,
            started: 0,
        }
    }

    /// Starts `record`'s probe at its place in the spread once a slot is free (recording
    /// finished probes meanwhile), or defers it when the budget is spent first.
    pub(super) async fn start_or_defer(
        &mut self,
        schedule: &mut Schedule,
        record: RuntimeRecord,
        rank: Rank,
        stop: &CancellationToken,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) -> Start {
        if self.dispatch(schedule, record, stop, report, batch).await {
            schedule.started += 1;
            Start::Started
        } else if report.interrupted {
            Start::Interrupted
        } else {
            self.defer(rank, report);
            Start::Deferred
        }
    }

    /// Counts a game whose probe waits for the next tick. A healthy game left behind means
    /// the tick was overloaded: the next one orders every game by how long it waited, so
    /// none is always last (even healthy games wait once the budget is spent, for slots
    /// held by engines that just hung).
    fn defer(&mut self, rank: Rank, report: &mut TickReport) {
        report.deferred += 1;
        if rank == Rank::Healthy {
            self.backlog = true;
        }
    }

    /// Starts the games that waited for the list's end: by rank, longest-waiting first
    /// within a rank, ties in an order that changes every tick. Those not started before
    /// the budget is spent are deferred; their turn comes first among their group next tick.
    pub(super) async fn start_later(
        &mut self,
        schedule: &mut Schedule,
        mut later: Vec<LaterGame>,
        stop: &CancellationToken,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) {
        let generation = schedule.generation;
        later.sort_by_cached_key(|(rank, waited, record)| {
            (
                *rank,
                *waited,
                games::shuffle_key(&record.game_id, generation),
            )
        });
        let mut later = later.into_iter();
        if !report.interrupted {
            for (rank, _, record) in later.by_ref() {
                let start = self
                    .start_or_defer(schedule, record, rank, stop, report, batch)
                    .await;
                if start != Start::Started {
                    break;
                }
            }
        }
        for (rank, _, _) in later {
            self.defer(rank, report);
        }
    }

    /// Records probes in flight as they end: all of them when the tick is interrupted
    /// (shutdown), otherwise up to the budget; those still running finish beside the next
    /// tick, which records them.
    pub(super) async fn collect_in_flight(
        &mut self,
        schedule: &Schedule,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) {
        while self.in_flight.busy() > 0 {
            if !report.interrupted && schedule.budget_spent() {
                break;
            }
            if let Some(done) = self.in_flight.try_next() {
                self.apply(done, report, batch).await;
                continue;
            }
            let done = match schedule.deadline {
                Some(deadline) if !report.interrupted => tokio::select! {
                    done = self.in_flight.next() => done,
                    _ = tokio::time::sleep_until(deadline) => None,
                },
                _ => self.in_flight.next().await,
            };
            if let Some(done) = done {
                self.apply(done, report, batch).await;
            }
        }
        report.in_flight = self.in_flight.busy();
    }

    /// Starts one probe at the schedule's next start once a slot is free, recording
    /// finished probes meanwhile. Returns false when it did not start it: `stop` (the tick
    /// is interrupted) or the budget ran out first.
    async fn dispatch(
        &mut self,
        schedule: &Schedule,
        record: RuntimeRecord,
        stop: &CancellationToken,
        report: &mut TickReport,
        batch: &mut Vec<PendingWrite>,
    ) -> bool {
        let start_at = schedule.next_start();
        let deadline = schedule.deadline;
        let permit = loop {
            let now = TokioInstant::now();
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            let due = now >= start_at;
            // What the select below would take first, without setting up its waiters (a
            // cancellation waiter, the join set's, a timer and a semaphore queue entry, made
            // and dropped twice per probe otherwise): stop, a probe that already ended, a
            // free slot. In a busy tick one of them is nearly always ready.
            if stop.is_cancelled() {
                report.interrupted = true;
                return false;
            }
            if let Some(done) = self.in_flight.try_next() {
                self.apply(done, report, batch).await;
                continue;
            }
            // A free permit alone is not enough: a lane gives its permit back as its probe
            // ends (so the degraded replica's sample, which shares the semaphore, never
            // waits on a result the tick has not taken yet), and is idle only once the
            // tick took its result.
            let room = self.in_flight.has_room();
            if due
                && room
                && let Ok(permit) = self.slots.clone().try_acquire_owned()
            {
                break permit;
            }
            let far = deadline.unwrap_or(start_at + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    report.interrupted = true;
                    return false;
                }
                Some(done) = self.in_flight.next(), if self.in_flight.busy() > 0 => {
                    self.apply(done, report, batch).await;
                }
                _ = tokio::time::sleep_until(start_at), if !due => {}
                _ = tokio::time::sleep_until(far), if due && deadline.is_some() => {}
                permit = self.slots.clone().acquire_owned(), if due && room => {
                    break permit.expect("the semaphore is never closed");
                }
            }
        };
        let spec = self.spec_of(&record.game_id);
        self.games.dispatched(&record.game_id, schedule.generation);
        self.probing.insert(record.game_id.clone());
        let span = probe_span(&record.game_id);
        self.in_flight.start(Job {
            record,
            spec,
            permit,
            span,
        });
        if batch.len() >= SNAPSHOT_BATCH {
            self.recorder.flush(&mut self.games, batch, report).await;
        }
        true
    }
}

/// The span of one probe, a child of the tick's: made only when spans are exported
/// ([`crate::telemetry::traces_exported`]), since nothing else reads it and it costs about
/// 5 % of the CPU per probe (BENCHMARKS.md).
fn probe_span(game_id: &str) -> Option<tracing::Span> {
    crate::telemetry::traces_exported()
        .then(|| tracing::info_span!("probe", game_id = %crate::bounded(game_id, 200)))
}
