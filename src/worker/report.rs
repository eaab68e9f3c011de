//! What a tick and an on-demand probe report, and the typed errors they end with.

use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::envelope::HealthEvent;
use crate::hysteresis::GameHealth;
use crate::probe::ProbeOutcome;
use crate::status::{HoldSummary, TickSummary};
use crate::store::RuntimeRecord;

/// What one tick did.
#[derive(Debug, Default, Clone)]
pub struct TickReport {
    /// Running records listed (the whole fleet, every replica lists it all).
    pub records: usize,
    /// Of those, the games this replica owns and probed.
    pub owned: usize,
    pub probes: usize,
    pub healthy: usize,
    pub failed: usize,
    /// Probes the worker's own machine could not attempt (DESIGN §2): not in `probes`,
    /// `healthy` or `failed`, never counted for the engine, never an event.
    pub local_errors: usize,
    /// Events committed during this tick, in commit order.
    pub events: Vec<HealthEvent>,
    /// Games forgotten because they are no longer running.
    pub pruned: usize,
    /// Games whose memory was reloaded from Postgres because the row had moved on (another
    /// replica wrote it, or a commit reported an error but went through).
    pub reloaded: usize,
    /// Games that started clean because their record names a new container.
    pub new_containers: usize,
    /// Writes refused because another writer changed the game first; nothing was written
    /// and the game is decided again from the row.
    pub conflicts: usize,
    /// Transitions whose commit failed; they are decided again next tick.
    pub failed_commits: usize,
    /// Other writes that failed (snapshots, pruning), as readable sentences.
    pub store_errors: Vec<String>,
    /// Probe tasks that panicked: a fault inside the worker (a bug), never the engine's or
    /// the store's. The outcome is lost, nothing is recorded, and the game is probed again
    /// next tick.
    pub probe_panics: usize,
    /// Games not probed because their override disables them.
    pub disabled: usize,
    /// Games not probed yet: their record started less than the initial delay ago.
    pub in_initial_delay: usize,
    /// Games whose override row is bad (probed with the global settings), with why: at
    /// most [`MAX_REPORTED_OVERRIDES`] of them; `bad_override_count` counts them all.
    pub bad_overrides: Vec<(String, String)>,
    pub bad_override_count: usize,
    /// Stopped early by shutdown: probes in flight finished, no new ones were started.
    pub interrupted: bool,
    /// Games not probed this tick because its budget ran out (games that are not healthy
    /// yield to the healthy ones); they go first among their kind next tick.
    pub deferred: usize,
    /// Games skipped because their probe from an earlier tick is still running.
    pub still_in_flight: usize,
    /// Probes still running when the tick ended: recorded by a later tick.
    pub in_flight: usize,
    /// Outcomes dropped because their game was pruned, handed over or replaced meanwhile.
    pub dropped: usize,
    /// `probe_failed` held by the mass-failure hold this tick (DESIGN §15).
    pub held: usize,
    /// The hold after this tick.
    pub hold: HoldSummary,
    /// While degraded: games probed as a sample (nothing recorded), and of those, failing.
    pub sampled: usize,
    pub sample_failing: usize,
    pub duration: Duration,
}

impl TickReport {
    /// Everything decided was recorded (a conflict is not an error: it is the rule working).
    /// Only the store's side: a probe panic is not a recording failure ([`Self::probe_panics`]).
    pub fn is_clean(&self) -> bool {
        self.failed_commits == 0 && self.store_errors.is_empty()
    }

    /// The tick reduced to what an operator reads on the status surface.
    pub fn summary(&self, finished_at: DateTime<Utc>) -> TickSummary {
        TickSummary {
            finished_at,
            records: self.records,
            owned: self.owned,
            probes: self.probes,
            healthy: self.healthy,
            failures: self.failed,
            local_errors: self.local_errors,
            probe_panics: self.probe_panics,
            events: self.events.len(),
            pruned: self.pruned,
            conflicts: self.conflicts,
            duration: self.duration,
            hold: self.hold,
            error: (!self.is_clean()).then(|| {
                let mut errors = self.store_errors.clone();
                if self.failed_commits > 0 {
                    errors.push(format!("{} event commits failed", self.failed_commits));
                }
                errors.join("; ")
            }),
            bad_overrides: self.bad_overrides.clone(),
            bad_override_count: self.bad_override_count,
        }
    }
}

/// Bad override rows named in one report: enough to find them, bounded whatever the table
/// holds.
pub(crate) const MAX_REPORTED_OVERRIDES: usize = 20;

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
    #[error("game {0:?} is disabled by its row in health_probe_overrides")]
    Disabled(String),
    #[error("game {0:?} started less than its initial delay ago: not probed yet")]
    InitialDelay(String),
    #[error("game {0:?} is not a running game")]
    NotRunning(String),
    #[error("looking up the game's runtime record")]
    Lookup(#[source] sqlx::Error),
    #[error("the probe ran but could not be recorded: {0}")]
    NotRecorded(String),
}

impl ProbeOneError {
    /// Why a game its override keeps from probing was not probed.
    pub fn skipped(game_id: &str, skip: super::overrides::Skip) -> Self {
        match skip {
            super::overrides::Skip::Disabled => Self::Disabled(game_id.to_owned()),
            super::overrides::Skip::InitialDelay => Self::InitialDelay(game_id.to_owned()),
        }
    }
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

/// A failed tick as the status surface shows it.
pub(crate) fn failed_tick_summary(error: &TickError, finished_at: DateTime<Utc>) -> TickSummary {
    TickSummary {
        finished_at,
        records: 0,
        owned: 0,
        probes: 0,
        healthy: 0,
        failures: 0,
        local_errors: 0,
        probe_panics: 0,
        events: 0,
        pruned: 0,
        conflicts: 0,
        duration: Duration::ZERO,
        hold: HoldSummary::default(),
        error: Some(crate::ErrorChain(error).to_string()),
        bad_overrides: Vec::new(),
        bad_override_count: 0,
    }
}
