//! The status board: the receivers of the `watch` channels on which the run loop, the
//! membership heartbeat, the relay's leadership and the relay's supervisor publish their
//! status (each job its own, [`crate::periodic`]), and the run loop's progress beat.
//! Readers take a [`BoardSnapshot`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::live::LiveFeed;
use crate::store::Member;

/// Liveness allows this many intervals without progress (DESIGN §11): no tick started or
/// ended, no probe recorded, no store call of the tick answered. A tick made long by the
/// fleet (hung engines) makes progress with every probe that completes, so only a stuck
/// loop turns liveness red.
pub(crate) const LIVENESS_INTERVALS: u32 = 3;

/// ... and never less than this. Liveness is the worker's, not its dependencies' (readiness
/// and `/status` report those): a loop waiting on Postgres is turning as long as each wait
/// is bounded. Every store call of a tick counts as progress when it returns, an error
/// included (a restart would not bring Postgres back), and so does a tick that ends in one;
/// the longest wait between two of those is one statement,
/// [`crate::store::LONGEST_STATEMENT_WAIT`] (8 s). With a short interval 3 × interval is
/// less than that (a 500 ms interval turned `/healthz` red during a Postgres restart, the
/// pool waiting 2 s for a connection), so the limit has this floor: the longest statement
/// wait plus 2 s of scheduling slack. A loop that is really stuck (an unbounded wait, a
/// deadlock) beats nothing and still turns red within this floor or 3 × interval.
pub(crate) const LIVENESS_FLOOR: Duration =
    crate::store::LONGEST_STATEMENT_WAIT.saturating_add(Duration::from_secs(2));

/// How long liveness allows without progress at this interval.
pub(crate) fn liveness_limit(interval: Duration) -> Duration {
    (interval * LIVENESS_INTERVALS).max(LIVENESS_FLOOR)
}

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
    /// Probe tasks that panicked: a fault inside the worker, not the engine's.
    pub probe_panics: usize,
    pub events: usize,
    pub pruned: usize,
    /// Writes refused because another writer changed the game first.
    pub conflicts: usize,
    pub duration: Duration,
    /// Why the tick failed or could not record everything; `None` for a clean tick.
    pub error: Option<String>,
    /// The mass-failure hold after the tick (DESIGN §15).
    pub hold: HoldSummary,
    /// Games whose `health_probe_overrides` row is bad (probed with the global settings),
    /// with why: the first few, and how many in all (DESIGN §16).
    pub bad_overrides: Vec<(String, String)>,
    pub bad_override_count: usize,
}

/// The mass-failure hold (DESIGN §15) as the status surface shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HoldSummary {
    #[default]
    Clear,
    /// `probe_failed` held for `for_`; `local_fault`: the checker's own fault showed
    /// meanwhile, so it is not released while that lasts.
    Holding { for_: Duration, local_fault: bool },
    /// The condition lasted the hold: the failures are taken as real and published.
    Released { for_: Duration },
    /// This replica stepped out of the membership: its probes fail where the others' do not.
    Degraded,
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

/// The run loop's progress beat for liveness, touched on every probe and store answer: a
/// heartbeat counter, not a status, so it stays one relaxed atomic store (a `watch` send per
/// probe would take a lock and wake readers thousands of times a second).
#[derive(Debug, Clone)]
pub struct Progress {
    started: Instant,
    /// Milliseconds since `started` of the last beat; 0: none yet.
    last: Arc<AtomicU64>,
}

impl Progress {
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis().max(1) as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn since(&self) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

/// A tick's end as the run loop publishes it on its `watch` ([`crate::worker::run`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TickEnded {
    pub at: Instant,
    pub summary: TickSummary,
}

/// Whether this replica holds the outbox relay, as the relay's leadership publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    StandingBy,
    /// Holding the relay lock on the session with this backend pid, which the membership
    /// heartbeat tells the other replicas.
    Holding {
        backend_pid: i32,
    },
}

impl RelayRole {
    pub(crate) fn backend_pid(self) -> Option<i32> {
        match self {
            Self::StandingBy => None,
            Self::Holding { backend_pid } => Some(backend_pid),
        }
    }
}

/// Abnormal ends of the relay task so far, as the relay's supervisor publishes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayHealth {
    pub restarts: u64,
    /// When the last abnormal end happened, and why.
    pub last_failure: Option<(Instant, String)>,
}

/// What the status surface reads: each job's status `watch`, the progress beat, the fleet
/// page's live stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    interval: Duration,
    started: Instant,
    /// The run loop publishes each tick's end here; the board reads [`Self::ticks`].
    tick_publisher: watch::Sender<Option<TickEnded>>,
    ticks: watch::Receiver<Option<TickEnded>>,
    /// The membership heartbeat's; `None` until a heartbeat succeeds (or without one).
    members: watch::Receiver<Option<MembersView>>,
    /// The relay's leadership; `None` before its first turn (or without one: a single
    /// process, e.g. in tests).
    relay_role: watch::Receiver<Option<RelayRole>>,
    /// The relay's supervisor.
    relay_health: watch::Receiver<RelayHealth>,
    /// The fleet page's live stream, which the run loop tells of each tick's end.
    live: LiveFeed,
    progress: Progress,
}

/// A copy of the board taken at one instant.
#[derive(Debug, Clone)]
pub struct BoardSnapshot {
    pub interval: Duration,
    pub since_start: Duration,
    /// Time since the last tick ended; `None` before the first one.
    pub since_last_tick: Option<Duration>,
    /// Time since the run loop last made progress (a tick started, a probe recorded);
    /// `None` before the first.
    pub since_progress: Option<Duration>,
    pub last_tick: Option<TickSummary>,
    pub members: Option<MembersView>,
    pub relay_held: Option<bool>,
}

impl BoardSnapshot {
    /// Liveness (DESIGN §11): progress within [`Self::liveness_limit`] (3 × interval, at
    /// least 10 s): a tick ended (even a failed one), a tick started, a probe was
    /// recorded or a store call of the tick answered. Before any, the same grace is counted
    /// from start-up, so a worker that just started is live.
    pub fn live(&self) -> bool {
        self.since_alive() <= self.liveness_limit()
    }

    /// How long liveness allows without progress.
    pub(crate) fn liveness_limit(&self) -> Duration {
        liveness_limit(self.interval)
    }

    /// Time since the latest sign of progress (or start-up, before any).
    pub(crate) fn since_alive(&self) -> Duration {
        [self.since_last_tick, self.since_progress]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.since_start)
    }
}

impl StatusBoard {
    pub fn new(interval: Duration) -> Self {
        let started = Instant::now();
        let (tick_publisher, ticks) = watch::channel(None);
        Self {
            interval,
            started,
            tick_publisher,
            ticks,
            // Nothing publishes on these until the jobs are attached ([`Self::with_members`],
            // [`Self::with_relay`]): they keep their first value.
            members: watch::channel(None).1,
            relay_role: watch::channel(None).1,
            relay_health: watch::channel(RelayHealth::default()).1,
            live: LiveFeed::new(interval),
            progress: Progress {
                started,
                last: Arc::new(AtomicU64::new(0)),
            },
        }
    }

    /// The progress beat the run loop touches (liveness).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The live stream of the fleet page, told of each tick's end by the run loop.
    pub(crate) fn live_feed(&self) -> &LiveFeed {
        &self.live
    }

    /// Where the run loop publishes each tick's end.
    pub(crate) fn tick_publisher(&self) -> watch::Sender<Option<TickEnded>> {
        self.tick_publisher.clone()
    }

    /// Reads the members from the membership heartbeat's status.
    pub fn with_members(mut self, members: watch::Receiver<Option<MembersView>>) -> Self {
        self.members = members;
        self
    }

    /// Reads the relay's role from its leadership and its restarts from its supervisor.
    pub fn with_relay(
        mut self,
        role: watch::Receiver<Option<RelayRole>>,
        health: watch::Receiver<RelayHealth>,
    ) -> Self {
        self.relay_role = role;
        self.relay_health = health;
        self
    }

    /// The relay's abnormal ends so far.
    pub(crate) fn relay_health(&self) -> RelayHealth {
        self.relay_health.borrow().clone()
    }

    pub fn snapshot(&self) -> BoardSnapshot {
        let (since_last_tick, last_tick) = match &*self.ticks.borrow() {
            Some(tick) => (Some(tick.at.elapsed()), Some(tick.summary.clone())),
            None => (None, None),
        };
        BoardSnapshot {
            interval: self.interval,
            since_start: self.started.elapsed(),
            since_last_tick,
            since_progress: self.progress.since(),
            last_tick,
            members: self.members.borrow().clone(),
            relay_held: self
                .relay_role
                .borrow()
                .map(|role| matches!(role, RelayRole::Holding { .. })),
        }
    }
}
