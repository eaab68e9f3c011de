//! The per-game table: what the worker believes about each game it probes, and the rules
//! that keep that belief equal to Postgres (DESIGN §3, §12). Pure: no I/O, so every rule is
//! unit- and property-tested without a database.
//!
//! The commit rule in three steps, each a method here:
//! 1. [`GameTable::sync`] before every decision, with the row Postgres holds now: a game
//!    whose row moved on (another replica wrote it, or this worker's own commit went
//!    through although it reported an error) is reloaded from it; a new container starts
//!    clean.
//! 2. [`GameTable::decide`] applies the hysteresis to the remembered state and says what
//!    to write, conditional on the version that state was read at.
//! 3. [`GameTable::settle`] moves memory on only when that write committed; after a
//!    conflict or any error memory stays, and the next `sync` reads the truth.

use std::collections::{HashMap, HashSet};

use crate::hysteresis::{self, GameHealth, HealthStatus, Observation, Thresholds, Transition};
use crate::probe::{FailureKind, ProbeOutcome};
use crate::store::StoredSnapshot;

/// The parts of a game's snapshot row that decide whether it must be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub health: GameHealth,
    pub last_status: u16,
    pub last_failure_kind: Option<FailureKind>,
}

impl Written {
    /// A row whose content is unknown: the next probe rewrites it.
    const UNKNOWN: Self = Self {
        health: GameHealth {
            consecutive_failures: 0,
            consecutive_successes: 0,
            episode_failures: 0,
            failure_published: false,
        },
        last_status: u16::MAX,
        last_failure_kind: None,
    };

    fn of(stored: &StoredSnapshot) -> Self {
        Self {
            health: stored.health,
            last_status: stored.last_status,
            last_failure_kind: stored
                .last_failure_kind
                .as_deref()
                .and_then(FailureKind::parse),
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

/// One game as the worker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Game {
    /// The counters, possibly ahead of the row in fields whose change is not worth a write
    /// (a healthy game's run of successes).
    pub health: GameHealth,
    /// The row's version when it was last read or written by this worker; 0: no row.
    pub version: i64,
    /// The container the counters belong to.
    pub container_id: Option<String>,
    /// What the row says.
    written: Written,
    /// Generation of the last tick that listed this game as running and owned here.
    seen: u64,
    /// The last probe that did not rewrite the row (newer than the row's probe time), for
    /// the tick's probe marks; `None` once the row is written or reloaded.
    unwritten_probe: Option<ProbeMark>,
    /// Generation of the last tick that started a probe of this game: among games of one
    /// [`Rank`], the one waiting longest goes first, so a tick cut short by its budget
    /// leaves different games behind each time.
    dispatched: u64,
}

/// The order in which a tick starts its probes (HAProxy's `downinter` idea: known-failing
/// servers yield first). Games whose last probe succeeded keep their interval whatever
/// the others cost; then games never probed; then suspect ones (failing, below the
/// threshold); then games with a published failure, still probed so their recovery is seen,
/// with whatever capacity is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    Healthy,
    Unknown,
    Suspect,
    Failing,
}

/// How [`GameTable::sync`] aligned a game with its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Synced {
    /// Memory and row agree (same version).
    Kept,
    /// Memory was missing or stale and was (re)loaded from the row.
    Loaded,
    /// The record names another container than the counters belong to: a new runtime,
    /// whose state starts clean (no event for the container that went away).
    NewContainer,
}

/// What one probe decided for a game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub next: GameHealth,
    pub transition: Option<Transition>,
    /// The write is conditional on the row still being at this version.
    pub expected_version: i64,
    /// The container the new counters belong to.
    pub container_id: Option<String>,
    /// Whether the row must be written (a transition, a change of meaning, or the game's
    /// refresh turn); when false memory moves on alone.
    pub write: bool,
}

impl Decision {
    /// The decision with its `probe_failed` held back (DESIGN §15, the mass-failure hold):
    /// the failures are counted and written, the failure is not published, so the first
    /// probe after the hold publishes it if the engine still fails, and a blip shorter than
    /// the hold ends silently. Other decisions are unchanged.
    pub fn held(mut self) -> Self {
        if matches!(self.transition, Some(Transition::Failed { .. })) {
            self.transition = None;
            self.next.failure_published = false;
        }
        self
    }

    /// Whether this decision publishes a failure.
    pub(crate) fn publishes_failure(&self) -> bool {
        matches!(self.transition, Some(Transition::Failed { .. }))
    }
}

/// The parts of a probe's outcome that its snapshot row records and that decide whether
/// the next one must be rewritten, and its time ([`ProbeMark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub status: u16,
    pub kind: Option<FailureKind>,
    pub mark: ProbeMark,
}

impl Facts {
    pub fn of(outcome: &ProbeOutcome) -> Self {
        Self {
            status: outcome.status,
            kind: outcome.failure.as_ref().map(|f| f.kind),
            mark: ProbeMark {
                completed_at: outcome.completed_at,
                latency_us: u32::try_from(outcome.latency.as_micros()).unwrap_or(u32::MAX),
                succeeded: outcome.is_healthy(),
            },
        }
    }
}

/// When a game's last probe completed, how long it took and whether it succeeded: what a
/// reader needs of a probe whose outcome did not change the game's row. The row is not
/// rewritten for it; the tick records the marks of all such games in one statement
/// (`Store::write_probe_marks`), and readers take the later of the row's time and the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeMark {
    pub completed_at: chrono::DateTime<chrono::Utc>,
    pub latency_us: u32,
    pub succeeded: bool,
}

/// What became of a decision's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Committed; the row is now at this version.
    Committed { version: i64 },
    /// Nothing to write: memory moves on alone.
    Unwritten,
    /// Another writer got there first: nothing was written.
    Conflict,
    /// An error whose outcome may be either (a dropped connection during `COMMIT`).
    Failed,
}

/// The games this worker probes.
#[derive(Debug, Default)]
pub(crate) struct GameTable {
    games: HashMap<String, Game>,
}

impl GameTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.games.len()
    }

    /// How many games of the table are in each status: the `healthprobe.games` gauge. A
    /// game in `disabled` (its override keeps it from being probed) counts as `disabled`,
    /// whatever its last health: a game switched off while failing is not failing any more
    /// for an alert.
    pub(crate) fn status_counts(&self, disabled: &HashSet<String>) -> [(&'static str, u64); 5] {
        let mut counts = [
            (hysteresis::HealthStatus::Healthy.as_str(), 0),
            (hysteresis::HealthStatus::Suspect.as_str(), 0),
            (hysteresis::HealthStatus::Failing.as_str(), 0),
            (hysteresis::HealthStatus::Unknown.as_str(), 0),
            ("disabled", 0),
        ];
        for (game_id, game) in &self.games {
            let status = if disabled.contains(game_id) {
                "disabled"
            } else {
                game.health.status().as_str()
            };
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                slot.1 += 1;
            }
        }
        counts
    }

    pub fn get(&self, game_id: &str) -> Option<&Game> {
        self.games.get(game_id)
    }

    /// Warms the table from stored rows (start-up); every game is synced again before its
    /// first decision.
    pub(crate) fn preload(&mut self, rows: impl IntoIterator<Item = (String, StoredSnapshot)>) {
        for (game_id, stored) in rows {
            self.games
                .insert(game_id, Game::from_stored(Some(&stored), 0));
        }
    }

    /// Aligns the game with its row (`None`: no row) before it is decided, and marks it
    /// seen in `generation`. `container_id` is the record's.
    pub fn sync(
        &mut self,
        game_id: &str,
        container_id: Option<&str>,
        stored: Option<&StoredSnapshot>,
        generation: u64,
    ) -> Synced {
        let row_version = stored.map_or(0, |s| s.version);
        // Same version: nobody wrote since we did; memory may be ahead in fields not worth
        // a write, so it is kept.
        let current = matches!(self.games.get(game_id), Some(game) if game.version == row_version);
        let mut synced = Synced::Kept;
        if !current {
            synced = Synced::Loaded;
            let mut game = Game::from_stored(stored, generation);
            if stored.is_none() {
                // No row: a game never probed (or pruned); it belongs to this container.
                game.container_id = container_id.map(str::to_owned);
            }
            self.games.insert(game_id.to_owned(), game);
        }
        let game = self
            .games
            .get_mut(game_id)
            .expect("present: kept or just inserted");
        game.seen = generation;
        if game.container_id.as_deref() != container_id {
            // DESIGN §3: a runtime is a game and its container.
            game.health = GameHealth::default();
            game.container_id = container_id.map(str::to_owned);
            game.written = Written::UNKNOWN;
            game.unwritten_probe = None;
            synced = Synced::NewContainer;
        }
        synced
    }

    /// The hysteresis applied to the game's state (after [`Self::sync`]). `refresh` asks
    /// for the row to be rewritten even when nothing it says changed (an on-demand probe,
    /// whose caller reads the row next).
    pub(crate) fn decide(
        &self,
        game_id: &str,
        outcome: &ProbeOutcome,
        thresholds: Thresholds,
        refresh: bool,
    ) -> Decision {
        let game = self.games.get(game_id);
        let current = game.map(|g| g.health).unwrap_or_default();
        let observation = if outcome.is_healthy() {
            Observation::Success
        } else {
            Observation::Failure
        };
        let (next, transition) = hysteresis::observe(current, observation, thresholds);
        let write = match game {
            None => true,
            Some(game) => {
                transition.is_some() || refresh || game.written.must_rewrite(&next, outcome)
            }
        };
        Decision {
            next,
            transition,
            expected_version: game.map_or(0, |g| g.version),
            container_id: game.and_then(|g| g.container_id.clone()),
            write,
        }
    }

    /// Moves memory on as far as the write went: only a committed (or unneeded) write
    /// advances the counters. After a conflict or an error memory stays as it was, and the
    /// next [`Self::sync`] reloads the game from whatever Postgres holds.
    pub fn settle(&mut self, game_id: &str, decision: &Decision, facts: Facts, settled: Settled) {
        let Some(game) = self.games.get_mut(game_id) else {
            return; // pruned meanwhile: nothing to move on
        };
        match settled {
            Settled::Committed { version } => {
                game.health = decision.next;
                game.version = version;
                game.written = Written {
                    health: decision.next,
                    last_status: facts.status,
                    last_failure_kind: facts.kind,
                };
                game.unwritten_probe = None;
            }
            Settled::Unwritten => {
                game.health = decision.next;
                game.unwritten_probe = Some(facts.mark);
            }
            Settled::Conflict | Settled::Failed => {}
        }
    }

    /// The games whose last probe did not rewrite their row, with that probe's mark.
    pub(crate) fn probe_marks(&self) -> impl Iterator<Item = (&str, ProbeMark)> {
        self.games
            .iter()
            .filter_map(|(id, game)| game.unwritten_probe.map(|mark| (id.as_str(), mark)))
    }

    /// Where the game's next probe goes in a tick's order (after [`Self::sync`]).
    pub(crate) fn rank(&self, game_id: &str) -> Rank {
        match self.games.get(game_id).map(|g| g.health.status()) {
            Some(HealthStatus::Healthy) => Rank::Healthy,
            None | Some(HealthStatus::Unknown) => Rank::Unknown,
            Some(HealthStatus::Suspect) => Rank::Suspect,
            Some(HealthStatus::Failing) => Rank::Failing,
        }
    }

    /// The generation of the last tick that started a probe of the game (0: none).
    pub(crate) fn last_dispatched(&self, game_id: &str) -> u64 {
        self.games.get(game_id).map_or(0, |g| g.dispatched)
    }

    /// Notes that a probe of the game started in the tick of `generation`.
    pub(crate) fn dispatched(&mut self, game_id: &str, generation: u64) {
        if let Some(game) = self.games.get_mut(game_id) {
            game.dispatched = generation;
        }
    }

    /// Whether an outcome for `container_id` still belongs to the game as held now: a probe
    /// that finished after its game was pruned, handed to another replica or replaced by a
    /// new container is dropped, never recorded.
    pub(crate) fn expects(&self, game_id: &str, container_id: Option<&str>) -> bool {
        self.games
            .get(game_id)
            .is_some_and(|g| g.container_id.as_deref() == container_id)
    }

    /// Games seen by the tick of `generation` whose last probe failed (suspect, held, or
    /// with a published failure): the numerator of the mass-failure share.
    pub(crate) fn failing_seen_in(&self, generation: u64) -> usize {
        self.games
            .values()
            .filter(|g| g.seen == generation && g.health.consecutive_failures > 0)
            .count()
    }

    /// Forgets the failures counted for games whose failure is not published: the checker's
    /// own fault made them, so they say nothing about the engines (DESIGN §15). Memory only:
    /// each game's next probe rewrites its row, conditionally on the version it holds.
    /// Returns the games forgiven.
    pub(crate) fn forgive_unpublished_failures(&mut self) -> usize {
        let mut forgiven = 0;
        for game in self.games.values_mut() {
            if !game.health.failure_published && game.health.consecutive_failures > 0 {
                game.health = GameHealth::default();
                forgiven += 1;
            }
        }
        forgiven
    }

    /// Forgets a game without touching its row: it is running but another replica owns it
    /// now, and that replica starts from the row.
    pub fn release(&mut self, game_id: &str) -> bool {
        self.games.remove(game_id).is_some()
    }

    /// Games not listed as running by the tick of `generation`: their rows are to be
    /// deleted, then [`Self::forget`] called.
    pub(crate) fn not_seen_since(&self, generation: u64) -> Vec<String> {
        self.games
            .iter()
            .filter(|(_, game)| game.seen != generation)
            .map(|(game_id, _)| game_id.clone())
            .collect()
    }

    pub fn forget(&mut self, game_ids: &[String]) {
        for game_id in game_ids {
            self.games.remove(game_id);
        }
    }
}

impl Game {
    fn from_stored(stored: Option<&StoredSnapshot>, generation: u64) -> Self {
        match stored {
            Some(stored) => Self {
                health: stored.health,
                version: stored.version,
                container_id: stored.container_id.clone(),
                written: Written::of(stored),
                unwritten_probe: None,
                seen: generation,
                dispatched: 0,
            },
            None => Self {
                health: GameHealth::default(),
                version: 0,
                container_id: None,
                written: Written::UNKNOWN,
                unwritten_probe: None,
                seen: generation,
                dispatched: 0,
            },
        }
    }
}

/// A key that orders games differently in every tick (ties among games that waited as
/// long), the same for a game within one tick.
pub(crate) fn shuffle_key(game_id: &str, generation: u64) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one((game_id, generation))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::probe::ProbeFailure;

    fn ok() -> ProbeOutcome {
        ProbeOutcome {
            status: 200,
            failure: None,
            latency: std::time::Duration::from_millis(1),
            completed_at: Utc::now(),
        }
    }

    fn bad() -> ProbeOutcome {
        ProbeOutcome {
            status: 503,
            failure: Some(ProbeFailure {
                kind: FailureKind::Status,
                message: "unexpected status 503".into(),
            }),
            latency: std::time::Duration::from_millis(1),
            completed_at: Utc::now(),
        }
    }

    fn stored(
        version: i64,
        failures: u32,
        published: bool,
        container: Option<&str>,
    ) -> StoredSnapshot {
        StoredSnapshot {
            version,
            health: GameHealth {
                consecutive_failures: failures,
                consecutive_successes: 0,
                episode_failures: failures,
                failure_published: published,
            },
            container_id: container.map(str::to_owned),
            last_status: 503,
            last_failure_kind: Some("status".into()),
        }
    }

    const T: Thresholds = Thresholds {
        failures: 3,
        recovery: 1,
    };

    #[test]
    fn a_new_game_loads_its_row_and_writes_conditionally_on_its_version() {
        let mut table = GameTable::new();
        assert_eq!(
            table.sync("g", None, Some(&stored(7, 2, false, None)), 1),
            Synced::Loaded
        );
        let decision = table.decide("g", &bad(), T, false);
        assert_eq!(decision.expected_version, 7);
        assert!(matches!(
            decision.transition,
            Some(Transition::Failed {
                consecutive_failures: 3
            })
        ));
        assert!(decision.write);
    }

    #[test]
    fn memory_moves_on_only_after_a_commit() {
        let mut table = GameTable::new();
        table.sync("g", None, None, 1);
        for settled in [Settled::Conflict, Settled::Failed] {
            let decision = table.decide("g", &bad(), T, false);
            table.settle("g", &decision, Facts::of(&bad()), settled);
            assert_eq!(
                table.get("g").unwrap().health,
                GameHealth::default(),
                "{settled:?}"
            );
            assert_eq!(table.get("g").unwrap().version, 0);
        }
        let decision = table.decide("g", &bad(), T, false);
        table.settle(
            "g",
            &decision,
            Facts::of(&bad()),
            Settled::Committed { version: 1 },
        );
        assert_eq!(table.get("g").unwrap().health.consecutive_failures, 1);
        assert_eq!(table.get("g").unwrap().version, 1);
    }

    #[test]
    fn a_row_that_moved_on_replaces_memory() {
        let mut table = GameTable::new();
        table.sync("g", None, Some(&stored(3, 2, false, None)), 1);
        // Our commit of the third failure reported an error but went through: the row is
        // at version 4 with the failure published.
        let decision = table.decide("g", &bad(), T, false);
        table.settle("g", &decision, Facts::of(&bad()), Settled::Failed);
        assert_eq!(
            table.sync("g", None, Some(&stored(4, 3, true, None)), 2),
            Synced::Loaded
        );
        let again = table.decide("g", &bad(), T, false);
        assert_eq!(
            again.transition, None,
            "the published failure is not published twice"
        );
        assert_eq!(again.expected_version, 4);
    }

    #[test]
    fn the_same_version_keeps_memory_ahead_of_the_row() {
        let mut table = GameTable::new();
        table.sync("g", None, None, 1);
        let first = table.decide("g", &ok(), T, false);
        table.settle(
            "g",
            &first,
            Facts::of(&ok()),
            Settled::Committed { version: 1 },
        );
        let second = table.decide("g", &ok(), T, false);
        assert!(
            !second.write,
            "a healthy game's unchanged row is not rewritten"
        );
        table.settle("g", &second, Facts::of(&ok()), Settled::Unwritten);
        let row = StoredSnapshot {
            version: 1,
            health: first.next,
            container_id: None,
            last_status: 200,
            last_failure_kind: None,
        };
        assert_eq!(table.sync("g", None, Some(&row), 2), Synced::Kept);
        assert_eq!(table.get("g").unwrap().health.consecutive_successes, 2);
    }

    #[test]
    fn a_deleted_row_makes_the_game_start_clean() {
        let mut table = GameTable::new();
        table.sync("g", None, Some(&stored(5, 2, false, None)), 1);
        assert_eq!(table.sync("g", None, None, 2), Synced::Loaded);
        assert_eq!(table.get("g").unwrap().health, GameHealth::default());
        assert_eq!(table.decide("g", &bad(), T, false).expected_version, 0);
    }

    #[test]
    fn a_new_container_starts_clean_and_fails_on_its_own() {
        let mut table = GameTable::new();
        table.sync("g", Some("old"), Some(&stored(9, 5, true, Some("old"))), 1);
        assert_eq!(
            table.sync("g", Some("new"), Some(&stored(9, 5, true, Some("old"))), 2),
            Synced::NewContainer
        );
        let mut failed = 0;
        for version in 10..13 {
            let decision = table.decide("g", &bad(), T, false);
            assert_eq!(decision.container_id.as_deref(), Some("new"));
            failed += usize::from(decision.transition.is_some());
            table.settle(
                "g",
                &decision,
                Facts::of(&bad()),
                Settled::Committed { version },
            );
        }
        assert_eq!(failed, 1, "the replacement gets its own probe_failed");
        // The same container again is not new.
        let row = StoredSnapshot {
            container_id: Some("new".into()),
            ..stored(12, 3, true, Some("new"))
        };
        assert_eq!(table.sync("g", Some("new"), Some(&row), 3), Synced::Kept);
    }

    #[test]
    fn pruning_forgets_games_not_seen_and_release_keeps_none() {
        let mut table = GameTable::new();
        table.sync("a", None, None, 1);
        table.sync("b", None, None, 1);
        table.sync("a", None, None, 2);
        assert_eq!(table.not_seen_since(2), vec!["b".to_owned()]);
        table.forget(&["b".to_owned()]);
        assert!(table.release("a"));
        assert_eq!(table.len(), 0);
    }
}

/// Property tests of the commit rule as the worker runs it: random probe outcomes, commit
/// failures, commits whose outcome is unknown (written, but reported as failed), restarts,
/// prunes, new containers and a second writer, all through this module's own `sync`,
/// `decide` and `settle`, against a model of Postgres with the same conditional writes and
/// unique episode key as `store` (version check; one event per game, episode and type).
#[cfg(test)]
mod model_tests {
    use std::collections::HashMap;

    use chrono::Utc;
    use proptest::prelude::*;

    use super::*;
    use crate::probe::ProbeFailure;

    const GAMES: usize = 3;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Commit {
        Ok,
        /// Nothing written, an error reported.
        Fails,
        /// Written, but the connection dropped during COMMIT: an error reported.
        Unknown,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Probe {
            writer: usize,
            game: usize,
            healthy: bool,
            commit: Commit,
        },
        /// The runtime stopped (its row pruned) and starts again.
        Prune { game: usize },
        /// The runtime manager replaced the game's container.
        NewContainer { game: usize },
        /// A writer restarted: its memory is gone (warmed from the rows).
        Restart { writer: usize },
    }

    fn op(writers: usize) -> impl Strategy<Value = Op> {
        let commit = prop_oneof![
            8 => Just(Commit::Ok),
            1 => Just(Commit::Fails),
            1 => Just(Commit::Unknown),
        ];
        prop_oneof![
            24 => (0..writers, 0..GAMES, any::<bool>(), commit)
                .prop_map(|(writer, game, healthy, commit)| Op::Probe { writer, game, healthy, commit }),
            1 => (0..GAMES).prop_map(|game| Op::Prune { game }),
            1 => (0..GAMES).prop_map(|game| Op::NewContainer { game }),
            1 => (0..writers).prop_map(|writer| Op::Restart { writer }),
        ]
    }

    /// Postgres as `store` uses it: snapshot rows with versions, and the event log.
    #[derive(Default)]
    struct Db {
        rows: HashMap<usize, StoredSnapshot>,
        /// (game, episode, transition), in commit order; `None` marks a new runtime.
        events: Vec<(usize, Option<(u64, Transition)>)>,
        /// Each game's current container, as its record names it.
        containers: [u32; GAMES],
        /// Versions come from one sequence, so a row deleted and created again never
        /// repeats a version a stale writer may hold.
        last_version: i64,
    }

    impl Db {
        /// `write_snapshots` / `record_transition`: conditional on the version, the event
        /// unique per game, episode and type. Returns the new version, or `None` for a
        /// conflict (nothing written).
        fn write(&mut self, game: usize, decision: &Decision, facts: Facts) -> Option<i64> {
            let current = self.rows.get(&game).map_or(0, |r| r.version);
            if current != decision.expected_version {
                return None;
            }
            if let Some(transition) = decision.transition {
                let failed_max = |only_failed: bool| {
                    self.events
                        .iter()
                        .filter_map(|(g, e)| (*g == game).then_some(*e).flatten())
                        .filter(|(_, t)| !only_failed || matches!(t, Transition::Failed { .. }))
                        .map(|(episode, _)| episode)
                        .max()
                        .unwrap_or(0)
                };
                let episode = match transition {
                    Transition::Failed { .. } => failed_max(false) + 1,
                    Transition::Recovered { .. } => failed_max(true),
                };
                let duplicate = self.events.iter().any(|(g, e)| {
                    *g == game
                        && matches!(e, Some((ep, t)) if *ep == episode
                            && std::mem::discriminant(t) == std::mem::discriminant(&transition))
                });
                if duplicate {
                    return None;
                }
                self.events.push((game, Some((episode, transition))));
            }
            self.last_version += 1;
            let version = self.last_version;
            self.rows.insert(
                game,
                StoredSnapshot {
                    version,
                    health: decision.next,
                    container_id: decision.container_id.clone(),
                    last_status: facts.status,
                    last_failure_kind: facts.kind.map(|k| k.as_str().to_owned()),
                },
            );
            Some(version)
        }
    }

    fn outcome(healthy: bool) -> ProbeOutcome {
        ProbeOutcome {
            status: if healthy { 200 } else { 503 },
            failure: (!healthy).then(|| ProbeFailure {
                kind: FailureKind::Status,
                message: "unexpected status 503".into(),
            }),
            latency: std::time::Duration::from_millis(1),
            completed_at: Utc::now(),
        }
    }

    /// Runs the ops through the worker's own table code. Returns the log, and per game
    /// the observations that were recorded (for the reference).
    fn system(ops: &[Op], writers: usize, thresholds: Thresholds) -> Db {
        let mut db = Db::default();
        let mut tables: Vec<GameTable> = (0..writers).map(|_| GameTable::new()).collect();
        let mut generation = 0;
        for op in ops {
            generation += 1;
            match *op {
                Op::Probe {
                    writer,
                    game,
                    healthy,
                    commit,
                } => {
                    let id = game.to_string();
                    let container = db.containers[game].to_string();
                    let table = &mut tables[writer];
                    table.sync(&id, Some(&container), db.rows.get(&game), generation);
                    let outcome = outcome(healthy);
                    let decision = table.decide(&id, &outcome, thresholds, false);
                    let facts = Facts::of(&outcome);
                    let settled = if !decision.write {
                        Settled::Unwritten
                    } else {
                        match commit {
                            Commit::Fails => Settled::Failed,
                            Commit::Ok => db
                                .write(game, &decision, facts)
                                .map_or(Settled::Conflict, |version| Settled::Committed {
                                    version,
                                }),
                            Commit::Unknown => {
                                db.write(game, &decision, facts);
                                Settled::Failed
                            }
                        }
                    };
                    table.settle(&id, &decision, facts, settled);
                }
                Op::Prune { game } => {
                    db.rows.remove(&game);
                    db.events.push((game, None));
                }
                Op::NewContainer { game } => {
                    db.containers[game] += 1;
                    db.events.push((game, None));
                }
                Op::Restart { writer } => {
                    tables[writer] = GameTable::new();
                    tables[writer].preload(db.rows.iter().map(|(g, r)| (g.to_string(), r.clone())));
                }
            }
        }
        db
    }

    /// The reference for one writer: per game, the outcomes recorded since its runtime
    /// began (a failed commit records nothing; a commit of unknown outcome that went
    /// through records its outcome), and the events found by looking back over them.
    fn reference(ops: &[Op], thresholds: Thresholds) -> Vec<(usize, Transition)> {
        let mut recorded: HashMap<usize, Vec<bool>> = HashMap::new();
        let mut failing: HashMap<usize, Option<usize>> = HashMap::new(); // episode start
        let mut events = Vec::new();
        for op in ops {
            match *op {
                Op::Probe {
                    commit: Commit::Fails,
                    healthy,
                    game,
                    ..
                } => {
                    // A failed commit of a change records nothing. A probe that changes
                    // nothing (another success of a healthy game) is never written, so
                    // the failure cannot touch it: it is recorded in memory either way.
                    let history = recorded.entry(game).or_default();
                    let published = failing.get(&game).copied().flatten().is_some();
                    if healthy && !published && history.last() == Some(&true) {
                        history.push(true);
                    }
                }
                Op::Restart { .. } => {}
                Op::Prune { game } | Op::NewContainer { game } => {
                    recorded.remove(&game);
                    failing.remove(&game);
                }
                Op::Probe { game, healthy, .. } => {
                    let history = recorded.entry(game).or_default();
                    history.push(healthy);
                    let run = history.iter().rev().take_while(|&&h| h == healthy).count();
                    let episode = failing.entry(game).or_default();
                    match (*episode, healthy) {
                        (None, false) if run == thresholds.failures as usize => {
                            *episode = Some(history.len() - run);
                            events.push((
                                game,
                                Transition::Failed {
                                    consecutive_failures: run as u32,
                                },
                            ));
                        }
                        (Some(start), true) if run == thresholds.recovery as usize => {
                            let failures = history[start..].iter().filter(|&&h| !h).count();
                            *episode = None;
                            events.push((
                                game,
                                Transition::Recovered {
                                    prior_failure_count: failures as u32,
                                },
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        events
    }

    fn logged(db: &Db) -> Vec<(usize, Transition)> {
        db.events
            .iter()
            .filter_map(|(g, e)| e.map(|(_, t)| (*g, t)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// One writer: exactly the reference's events, whatever the commits did.
        #[test]
        fn one_writer_emits_exactly_what_the_reference_predicts(
            failures in 1u32..5,
            recovery in 1u32..4,
            ops in prop::collection::vec(op(1), 0..200),
        ) {
            let thresholds = Thresholds { failures, recovery };
            let db = system(&ops, 1, thresholds);
            prop_assert_eq!(logged(&db), reference(&ops, thresholds));
        }

        /// Two writers on the same games: per runtime, failures and recoveries alternate
        /// (one `probe_failed` per episode, one `probe_recovered`), and every row agrees
        /// with the log.
        #[test]
        fn two_writers_never_emit_an_episode_twice(
            failures in 1u32..5,
            recovery in 1u32..4,
            ops in prop::collection::vec(op(2), 0..300),
        ) {
            let thresholds = Thresholds { failures, recovery };
            let db = system(&ops, 2, thresholds);
            for game in 0..GAMES {
                let mut open = false;
                for (_, event) in db.events.iter().filter(|(g, _)| *g == game) {
                    match event {
                        None => open = false,
                        Some((_, Transition::Failed { .. })) => {
                            prop_assert!(!open, "second probe_failed in one episode of game {}: {:?}", game, db.events);
                            open = true;
                        }
                        Some((_, Transition::Recovered { .. })) => {
                            prop_assert!(open, "probe_recovered without probe_failed for game {}: {:?}", game, db.events);
                            open = false;
                        }
                    }
                }
                // A row of a replaced container is rewritten by the new one's first probe.
                let current = db.containers[game].to_string();
                if let Some(row) = db.rows.get(&game).filter(|r| r.container_id.as_deref() == Some(current.as_str())) {
                    prop_assert_eq!(row.health.failure_published, open, "row of game {} disagrees with the log", game);
                }
            }
        }
    }
}
