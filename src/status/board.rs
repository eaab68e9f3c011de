//! The status board: what the run loop, the membership heartbeat and the relay's
//! leadership tell the status surface, on one `tokio::sync::watch` channel. Writers replace
//! or modify the [`WorkerView`]; readers take a [`BoardSnapshot`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::live::LiveFeed;
use crate::store::Member;

/// Liveness allows this many intervals between two tick ends (DESIGN §11): one slow tick
/// (a full interval of probes timing out) does not make the worker look dead, a stuck loop
/// does within a few intervals.
pub const LIVENESS_INTERVALS: u32 = 3;

/// The last tick, reduced to what an operator reads.
#[derive(Debug, Clone, PartialEq)]
pub struct TickSummary {
    pub finished_at: DateTime<Utc>,
    /// Running records listed (the whole fleet).
    pub records: usize,
    /// Of those, the games this replica owns.
    pub owned: usize,
    pub probes: usize,
    pub healthy: usize,
    pub failures: usize,
    /// Probes the worker's own machine could not attempt (DESIGN §2).
    pub local_errors: usize,
    pub events: usize,
    pub pruned: usize,
    /// Writes refused because another writer changed the game first.
    pub conflicts: usize,
    pub duration: Duration,
    /// Why the tick failed or could not record everything; `None` for a clean tick.
    pub error: Option<String>,
}

/// The replicas as this one saw them at its last heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct MembersView {
    pub replica_id: String,
    /// Every member row, live or recently expired.
    pub members: Arc<[Member]>,
    /// When this replica's last heartbeat succeeded (Postgres' clock).
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub lease_ttl: Duration,
}

impl MembersView {
    pub fn live(&self) -> usize {
        self.members.iter().filter(|m| m.live).count().max(1)
    }
}

/// Everything the worker's parts tell the status surface.
#[derive(Debug, Clone, Default)]
pub struct WorkerView {
    pub last_beat: Option<Instant>,
    pub last_tick: Option<TickSummary>,
    pub members: Option<MembersView>,
    /// Whether this replica holds the outbox relay (`None`: not reported, a single process
    /// without leadership, e.g. in tests).
    pub relay_held: Option<bool>,
}

/// The writer and reader ends of the status channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    interval: Duration,
    started: Instant,
    tx: Arc<watch::Sender<WorkerView>>,
    /// Pushes each tick's end to the fleet page's live stream.
    live: LiveFeed,
}

/// A copy of the board taken at one instant.
#[derive(Debug, Clone)]
pub struct BoardSnapshot {
    pub interval: Duration,
    pub since_start: Duration,
    /// Time since the last tick ended; `None` before the first one.
    pub since_last_tick: Option<Duration>,
    pub last_tick: Option<TickSummary>,
    pub members: Option<MembersView>,
    pub relay_held: Option<bool>,
}

impl BoardSnapshot {
    /// Liveness (DESIGN §11): a tick ended (even a failed one) within
    /// [`LIVENESS_INTERVALS`] × interval. Before the first tick ends, the same grace is
    /// counted from start-up, so a worker that just started is live.
    pub fn live(&self) -> bool {
        let limit = self.interval * LIVENESS_INTERVALS;
        self.since_last_tick.unwrap_or(self.since_start) <= limit
    }
}

impl StatusBoard {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: Instant::now(),
            tx: Arc::new(watch::Sender::new(WorkerView::default())),
            live: LiveFeed::new(interval),
        }
    }

    /// The live stream of the fleet page, fed by [`StatusBoard::tick_ended`].
    pub fn live_feed(&self) -> &LiveFeed {
        &self.live
    }

    /// Records a tick that ended just now.
    pub fn tick_ended(&self, summary: TickSummary) {
        self.live.tick_ended(&summary.to_json());
        self.tx.send_modify(|view| {
            view.last_beat = Some(Instant::now());
            view.last_tick = Some(summary);
        });
    }

    /// Records the membership seen by the latest heartbeat.
    pub fn members_seen(&self, members: MembersView) {
        self.tx.send_if_modified(|view| {
            let changed = view.members.as_ref() != Some(&members);
            view.members = Some(members);
            changed
        });
    }

    /// Records whether this replica holds the outbox relay.
    pub fn relay_held(&self, held: bool) {
        self.tx.send_if_modified(|view| {
            let changed = view.relay_held != Some(held);
            view.relay_held = Some(held);
            changed
        });
    }

    pub fn snapshot(&self) -> BoardSnapshot {
        let view = self.tx.borrow();
        BoardSnapshot {
            interval: self.interval,
            since_start: self.started.elapsed(),
            since_last_tick: view.last_beat.map(|t| t.elapsed()),
            last_tick: view.last_tick.clone(),
            members: view.members.clone(),
            relay_held: view.relay_held,
        }
    }
}
