//! The mass-failure hold (DESIGN §15): when a large share of a replica's engines fails at
//! once, the checker (its network, its node) is a likelier cause than every engine at once.
//!
//! Pure: [`MassFailure::observe`] takes one tick's figures and what the other replicas
//! published, and says what the worker must do. The worker holds `probe_failed` while
//! [`MassFailure::holding`] (failures are counted and written, not published), so:
//! - a blip shorter than the hold ends with no event at all (the engines' next successes
//!   reset the unpublished counts);
//! - a real fleet-wide failure, seen alone or by every replica, is released once the
//!   condition has lasted the hold: each game's next failed probe publishes its own
//!   `probe_failed`, late by at most the hold and one interval;
//! - while the checker shows its own fault in the same ticks (local errors: no route,
//!   descriptors), the hold is not released; when that fault clears, what was held is
//!   dropped (the unpublished counts are forgiven) and the condition starts over;
//! - when other live replicas see their own engines fine, this replica is the odd one:
//!   it steps out of the membership ([`Action::StepOut`]) until its own probes succeed.

use std::time::{Duration, Instant};

/// Envoy's panic threshold is 50 %; a fleet of a few games failing together is not a
/// storm worth holding for, so at least this many games must fail too.
pub(crate) const DEFAULT_MIN_GAMES: usize = 10;
pub(crate) const DEFAULT_MIN_SHARE: f64 = 0.5;

/// When the hold applies and how long it lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassFailureSettings {
    /// `HEALTHPROBE_MASS_FAILURE_HOLD` (default 2 × interval).
    pub hold: Duration,
    /// At least this many owned games failing...
    pub min_games: usize,
    /// ...and at least this share of them.
    pub min_share: f64,
}

impl MassFailureSettings {
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            min_games: DEFAULT_MIN_GAMES,
            min_share: DEFAULT_MIN_SHARE,
        }
    }

    /// Whether `failing` of `owned` games is a mass failure.
    pub(crate) fn is_mass(&self, failing: usize, owned: usize) -> bool {
        owned > 0
            && failing >= self.min_games
            && failing as f64 >= (owned as f64 * self.min_share).ceil()
    }

    /// Whether a share is below the threshold share (a degraded replica's sample, a peer).
    pub(crate) fn share_is_fine(&self, failing: usize, probed: usize) -> bool {
        probed > 0 && (failing as f64) < probed as f64 * self.min_share
    }
}

/// One tick's figures, as the hold reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TickShare {
    /// Games this replica owned in the tick.
    pub owned: usize,
    /// Of those, games whose last probe failed (suspect, held or failing).
    pub failing: usize,
    /// Probes the checker could not attempt (its own fault).
    pub local_errors: usize,
}

impl TickShare {
    /// Games the checker could not see healthy: failed or not attempted.
    pub fn not_ok(&self) -> usize {
        (self.failing + self.local_errors).min(self.owned)
    }
}

/// What the other live replicas say about their own engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peers {
    /// No other live replica published figures: this one decides alone.
    Alone,
    /// At least one other live replica sees its engines fine.
    SomeFine,
    /// Every other live replica sees the same failure.
    AllFailing,
}

/// The hold's state, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldState {
    Clear,
    /// Transitions are held since `since`; `local_fault` when the checker's own fault
    /// showed meanwhile (then the hold is not released).
    Holding {
        since: Instant,
        local_fault: bool,
    },
    /// The condition lasted the hold without a local fault: failures are real and published.
    Released {
        since: Instant,
    },
}

/// What the worker does after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// The condition began: hold `probe_failed` from now on.
    Started,
    /// The condition lasted the hold: publish again.
    Released,
    /// The checker's own fault cleared: forgive the unpublished failures, start over.
    Dropped,
    /// The condition ended.
    Cleared,
    /// Others see their engines fine: step out of the membership.
    StepOut,
}

#[derive(Debug, Clone)]
pub(crate) struct MassFailure {
    pub settings: MassFailureSettings,
    state: HoldState,
}

impl MassFailure {
    pub fn new(settings: MassFailureSettings) -> Self {
        Self {
            settings,
            state: HoldState::Clear,
        }
    }

    pub fn state(&self) -> HoldState {
        self.state
    }

    /// Whether `probe_failed` is held now.
    pub fn holding(&self) -> bool {
        matches!(self.state, HoldState::Holding { .. })
    }

    /// Back to clear (the replica stepped out and handed its games over).
    pub fn reset(&mut self) {
        self.state = HoldState::Clear;
    }

    /// Folds one tick's figures in.
    pub(crate) fn observe(&mut self, tick: TickShare, peers: Peers, now: Instant) -> Action {
        let mass = self.settings.is_mass(tick.not_ok(), tick.owned);
        let local = tick.local_errors > 0;
        match self.state {
            HoldState::Clear if !mass => Action::Nothing,
            HoldState::Clear | HoldState::Holding { .. } if peers == Peers::SomeFine && mass => {
                self.state = HoldState::Clear;
                Action::StepOut
            }
            HoldState::Clear => {
                self.state = HoldState::Holding {
                    since: now,
                    local_fault: local,
                };
                Action::Started
            }
            HoldState::Holding { local_fault, .. } if !mass => {
                self.state = HoldState::Clear;
                if local_fault {
                    Action::Dropped
                } else {
                    Action::Cleared
                }
            }
            HoldState::Holding { since, .. } if local => {
                self.state = HoldState::Holding {
                    since,
                    local_fault: true,
                };
                Action::Nothing
            }
            HoldState::Holding {
                local_fault: true, ..
            } => {
                // The checker's fault cleared while the engines still look failed: what
                // was seen under the fault says nothing; judge them afresh.
                self.state = HoldState::Holding {
                    since: now,
                    local_fault: false,
                };
                Action::Dropped
            }
            HoldState::Holding { since, .. } if now.duration_since(since) >= self.settings.hold => {
                self.state = HoldState::Released { since };
                Action::Released
            }
            HoldState::Holding { .. } => Action::Nothing,
            HoldState::Released { .. } if !mass => {
                self.state = HoldState::Clear;
                Action::Cleared
            }
            HoldState::Released { .. } => Action::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(2);

    fn share(owned: usize, failing: usize, local_errors: usize) -> TickShare {
        TickShare {
            owned,
            failing,
            local_errors,
        }
    }

    #[test]
    fn the_threshold_is_half_and_at_least_ten() {
        let s = MassFailureSettings::new(HOLD);
        assert!(!s.is_mass(9, 10), "9 of 10");
        assert!(s.is_mass(10, 10));
        assert!(s.is_mass(10, 20));
        assert!(!s.is_mass(10, 21), "10 of 21 is under half");
        assert!(!s.is_mass(5, 5), "fewer than ten");
        assert!(!s.is_mass(0, 0));
    }

    #[test]
    fn a_real_outage_alone_is_released_after_the_hold() {
        let mut m = MassFailure::new(MassFailureSettings::new(HOLD));
        let t0 = Instant::now();
        assert_eq!(
            m.observe(share(20, 20, 0), Peers::Alone, t0),
            Action::Started
        );
        assert!(m.holding());
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            m.observe(share(20, 20, 0), Peers::Alone, t1),
            Action::Nothing
        );
        assert!(m.holding());
        assert_eq!(
            m.observe(share(20, 20, 0), Peers::AllFailing, t0 + HOLD),
            Action::Released
        );
        assert!(!m.holding());
        assert_eq!(
            m.observe(share(20, 20, 0), Peers::Alone, t0 + 2 * HOLD),
            Action::Nothing
        );
        assert_eq!(
            m.observe(share(20, 0, 0), Peers::Alone, t0 + 3 * HOLD),
            Action::Cleared
        );
    }

    #[test]
    fn a_blip_ends_the_hold_without_release() {
        let mut m = MassFailure::new(MassFailureSettings::new(HOLD));
        let t0 = Instant::now();
        m.observe(share(20, 15, 0), Peers::Alone, t0);
        assert_eq!(
            m.observe(share(20, 1, 0), Peers::Alone, t0 + Duration::from_secs(1)),
            Action::Cleared
        );
        assert_eq!(m.state(), HoldState::Clear);
    }

    #[test]
    fn local_faults_keep_the_hold_and_their_end_drops_it() {
        let mut m = MassFailure::new(MassFailureSettings::new(HOLD));
        let t0 = Instant::now();
        assert_eq!(
            m.observe(share(20, 5, 15), Peers::Alone, t0),
            Action::Started
        );
        for s in 1..10 {
            let at = t0 + HOLD * s;
            assert_eq!(
                m.observe(share(20, 8, 12), Peers::Alone, at),
                Action::Nothing
            );
            assert!(m.holding(), "never released while local faults show");
        }
        // The fault cleared, the engines still look failed: dropped, judged afresh.
        let t1 = t0 + HOLD * 20;
        assert_eq!(
            m.observe(share(20, 20, 0), Peers::Alone, t1),
            Action::Dropped
        );
        assert!(m.holding());
        assert_eq!(
            m.observe(share(20, 20, 0), Peers::Alone, t1 + HOLD),
            Action::Released
        );
        // Or the fault cleared and the engines are fine.
        let mut m = MassFailure::new(MassFailureSettings::new(HOLD));
        m.observe(share(20, 0, 20), Peers::Alone, t0);
        assert_eq!(
            m.observe(share(20, 0, 0), Peers::Alone, t1),
            Action::Dropped
        );
        assert_eq!(m.state(), HoldState::Clear);
    }

    #[test]
    fn a_replica_failing_alone_among_fine_peers_steps_out() {
        let mut m = MassFailure::new(MassFailureSettings::new(HOLD));
        let t0 = Instant::now();
        assert_eq!(
            m.observe(share(20, 0, 20), Peers::SomeFine, t0),
            Action::StepOut
        );
        assert!(!m.holding());
        m.observe(share(20, 20, 0), Peers::Alone, t0);
        assert_eq!(
            m.observe(
                share(20, 20, 0),
                Peers::SomeFine,
                t0 + Duration::from_millis(10)
            ),
            Action::StepOut
        );
        // Fine peers are not evidence when this replica is fine.
        assert_eq!(
            m.observe(share(20, 1, 0), Peers::SomeFine, t0),
            Action::Nothing
        );
    }
}
