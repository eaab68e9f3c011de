//! The per-game hysteresis state machine (DESIGN §3).
//!
//! Pure logic, no I/O: `observe(state, observation, thresholds) -> (state, transition)`.
//! The worker owns one [`GameHealth`] per game and only stores the returned state once the
//! transition it produced (if any) is committed, so a failed commit simply repeats the same
//! decision on the next tick.

/// Thresholds that turn single probes into decisions. Both are at least 1 (config enforces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that publish `probe_failed`.
    pub failures: u32,
    /// Consecutive successes, after a published failure, that publish `probe_recovered`.
    pub recovery: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            failures: 3,
            recovery: 1,
        }
    }
}

/// What one probe said, reduced to what the state machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observation {
    Success,
    Failure,
}

/// Counters kept per game, in memory and mirrored in `health_snapshots`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GameHealth {
    /// Length of the current run of failed probes.
    pub consecutive_failures: u32,
    /// Length of the current run of successful probes.
    pub consecutive_successes: u32,
    /// Failed probes since the episode's first failure; reported as `prior_failure_count`.
    pub episode_failures: u32,
    /// A `probe_failed` is published for this episode and not yet recovered.
    pub failure_published: bool,
}

/// A decision worth an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Failed { consecutive_failures: u32 },
    Recovered { prior_failure_count: u32 },
}

/// The `health_snapshots.status` projection of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Suspect,
    Failing,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Suspect => "suspect",
            Self::Failing => "failing",
        }
    }
}

impl GameHealth {
    pub fn status(&self) -> HealthStatus {
        if self.failure_published {
            HealthStatus::Failing
        } else if self.consecutive_failures > 0 {
            HealthStatus::Suspect
        } else if self.consecutive_successes > 0 {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unknown
        }
    }
}

/// Applies one observation. Returns the next state and the transition it causes, if any.
pub(crate) fn observe(
    state: GameHealth,
    observation: Observation,
    thresholds: Thresholds,
) -> (GameHealth, Option<Transition>) {
    let mut next = state;
    match observation {
        Observation::Failure => {
            next.consecutive_failures = next.consecutive_failures.saturating_add(1);
            next.consecutive_successes = 0;
            next.episode_failures = next.episode_failures.saturating_add(1);
            if !next.failure_published && next.consecutive_failures >= thresholds.failures {
                next.failure_published = true;
                let transition = Transition::Failed {
                    consecutive_failures: next.consecutive_failures,
                };
                return (next, Some(transition));
            }
            (next, None)
        }
        Observation::Success => {
            next.consecutive_successes = next.consecutive_successes.saturating_add(1);
            next.consecutive_failures = 0;
            if !next.failure_published {
                // An episode that never reached the threshold ends silently.
                next.episode_failures = 0;
                return (next, None);
            }
            if next.consecutive_successes >= thresholds.recovery {
                let transition = Transition::Recovered {
                    prior_failure_count: next.episode_failures,
                };
                next.failure_published = false;
                next.episode_failures = 0;
                return (next, Some(transition));
            }
            (next, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::{Failure as F, Success as S};

    fn run(thresholds: Thresholds, observations: &[Observation]) -> (GameHealth, Vec<Transition>) {
        let mut state = GameHealth::default();
        let mut transitions = Vec::new();
        for &observation in observations {
            let (next, transition) = observe(state, observation, thresholds);
            state = next;
            transitions.extend(transition);
        }
        (state, transitions)
    }

    fn t(failures: u32, recovery: u32) -> Thresholds {
        Thresholds { failures, recovery }
    }

    fn failed(n: u32) -> Transition {
        Transition::Failed {
            consecutive_failures: n,
        }
    }

    fn recovered(n: u32) -> Transition {
        Transition::Recovered {
            prior_failure_count: n,
        }
    }

    /// (name, thresholds, observations, expected transitions, final status)
    type Case<'a> = (
        &'a str,
        Thresholds,
        &'a [Observation],
        &'a [Transition],
        HealthStatus,
    );

    #[test]
    fn table_of_sequences() {
        let cases: &[Case] = &[
            ("never probed", t(3, 1), &[], &[], HealthStatus::Unknown),
            (
                "healthy stays silent",
                t(3, 1),
                &[S, S, S],
                &[],
                HealthStatus::Healthy,
            ),
            (
                "below threshold is suspect",
                t(3, 1),
                &[F, F],
                &[],
                HealthStatus::Suspect,
            ),
            (
                "threshold reached",
                t(3, 1),
                &[F, F, F],
                &[failed(3)],
                HealthStatus::Failing,
            ),
            (
                "failed once only",
                t(3, 1),
                &[F, F, F, F, F],
                &[failed(3)],
                HealthStatus::Failing,
            ),
            (
                "success below threshold resets",
                t(3, 1),
                &[F, F, S, F, F],
                &[],
                HealthStatus::Suspect,
            ),
            (
                "recovery reports the episode",
                t(3, 1),
                &[F, F, F, F, S],
                &[failed(3), recovered(4)],
                HealthStatus::Healthy,
            ),
            (
                "threshold one fails at once",
                t(1, 1),
                &[F],
                &[failed(1)],
                HealthStatus::Failing,
            ),
            (
                "threshold one recovers",
                t(1, 1),
                &[F, S],
                &[failed(1), recovered(1)],
                HealthStatus::Healthy,
            ),
            (
                "threshold one twice",
                t(1, 1),
                &[F, S, F, S],
                &[failed(1), recovered(1), failed(1), recovered(1)],
                HealthStatus::Healthy,
            ),
            (
                "recovery threshold waits",
                t(2, 3),
                &[F, F, S, S],
                &[failed(2)],
                HealthStatus::Failing,
            ),
            (
                "recovery threshold met",
                t(2, 3),
                &[F, F, S, S, S],
                &[failed(2), recovered(2)],
                HealthStatus::Healthy,
            ),
            (
                "failure mid-recovery adds to episode",
                t(2, 2),
                &[F, F, S, F, S, S],
                &[failed(2), recovered(3)],
                HealthStatus::Healthy,
            ),
            (
                "new episode after recovery",
                t(2, 1),
                &[F, F, S, F, F],
                &[failed(2), recovered(2), failed(2)],
                HealthStatus::Failing,
            ),
            (
                "recovered then healthy stays silent",
                t(2, 1),
                &[F, F, S, S, S],
                &[failed(2), recovered(2)],
                HealthStatus::Healthy,
            ),
        ];
        for (name, thresholds, observations, expected, status) in cases {
            let (state, transitions) = run(*thresholds, observations);
            assert_eq!(&transitions, expected, "case {name:?}");
            assert_eq!(state.status(), *status, "case {name:?}");
        }
    }

    #[test]
    fn every_single_step_transition() {
        // Every (state class, observation) pair with thresholds 3/2.
        let th = t(3, 2);
        let fresh = GameHealth::default();
        let suspect = GameHealth {
            consecutive_failures: 2,
            episode_failures: 2,
            ..fresh
        };
        let failing = GameHealth {
            consecutive_failures: 3,
            episode_failures: 3,
            failure_published: true,
            ..fresh
        };
        let recovering = GameHealth {
            consecutive_successes: 1,
            episode_failures: 3,
            failure_published: true,
            ..fresh
        };

        assert_eq!(
            observe(fresh, S, th),
            (
                GameHealth {
                    consecutive_successes: 1,
                    ..fresh
                },
                None
            )
        );
        assert_eq!(
            observe(fresh, F, th),
            (
                GameHealth {
                    consecutive_failures: 1,
                    episode_failures: 1,
                    ..fresh
                },
                None
            )
        );
        assert_eq!(
            observe(suspect, S, th),
            (
                GameHealth {
                    consecutive_successes: 1,
                    ..fresh
                },
                None
            )
        );
        assert_eq!(observe(suspect, F, th), (failing, Some(failed(3))));
        assert_eq!(
            observe(failing, F, th),
            (
                GameHealth {
                    consecutive_failures: 4,
                    episode_failures: 4,
                    ..failing
                },
                None
            )
        );
        assert_eq!(observe(failing, S, th), (recovering, None));
        assert_eq!(
            observe(recovering, F, th),
            (
                GameHealth {
                    consecutive_failures: 1,
                    consecutive_successes: 0,
                    episode_failures: 4,
                    failure_published: true
                },
                None
            )
        );
        assert_eq!(
            observe(recovering, S, th),
            (
                GameHealth {
                    consecutive_successes: 2,
                    ..fresh
                },
                Some(recovered(3))
            )
        );
    }

    #[test]
    fn restored_failing_state_recovers_and_does_not_fail_again() {
        // A state loaded from health_snapshots after a restart.
        let restored = GameHealth {
            consecutive_failures: 7,
            episode_failures: 7,
            failure_published: true,
            consecutive_successes: 0,
        };
        let (state, transition) = observe(restored, F, t(3, 1));
        assert_eq!(transition, None);
        let (_, transition) = observe(state, S, t(3, 1));
        assert_eq!(transition, Some(recovered(8)));
    }

    #[test]
    fn counters_saturate() {
        let state = GameHealth {
            consecutive_failures: u32::MAX,
            episode_failures: u32::MAX,
            failure_published: true,
            consecutive_successes: 0,
        };
        let (next, transition) = observe(state, F, t(3, 1));
        assert_eq!(transition, None);
        assert_eq!(next.consecutive_failures, u32::MAX);
    }
}
