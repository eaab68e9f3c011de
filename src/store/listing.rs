//! The running list: what it hands the tick (a record, its snapshot row, its overrides),
//! its one statement, and how its rows decode (named columns, `NULL`s of the `LEFT JOIN`s
//! told apart from a broken row).

use std::time::Duration;

use sqlx::error::UnexpectedNullError;

use crate::hysteresis::GameHealth;

/// A running game as the runtime manager recorded it (the running list names its columns
/// as the fields).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RuntimeRecord {
    pub game_id: String,
    pub container_id: Option<String>,
    pub engine_endpoint: String,
}

/// What `health_snapshots` holds for a game, as far as deciding goes: the counters, the
/// version every write checks and increments, and the container they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub version: i64,
    pub health: GameHealth,
    pub container_id: Option<String>,
    pub last_status: u16,
    pub last_failure_kind: Option<String>,
}

/// A running record with the snapshot row Postgres holds for it, read in one statement so
/// every decision starts from what Postgres says now (DESIGN §12: memory follows Postgres).
#[derive(Debug, Clone)]
pub struct ListedGame {
    pub record: RuntimeRecord,
    pub stored: Option<StoredSnapshot>,
    /// How long ago the record's `started_at` was, by Postgres' clock (zero when it is in
    /// the future); `None` when the record has none.
    pub since_start: Option<Duration>,
    /// The game's row of `health_probe_overrides`, if any.
    pub overrides: Option<ProbeOverride>,
}

/// A row of `health_probe_overrides` as stored (DESIGN §16): `None` is "the global
/// value". Not validated here: the worker parses it, and a bad value is that game's
/// problem only. The running list names its columns as the fields.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct ProbeOverride {
    pub path: Option<String>,
    pub expect: Option<String>,
    pub headers: Option<serde_json::Value>,
    /// `timeout` in seconds (may be zero or negative: a bad row).
    pub timeout_secs: Option<f64>,
    pub failures_threshold: Option<i32>,
    /// `initial_delay` in seconds (may be negative: a bad row).
    pub initial_delay_secs: Option<f64>,
    pub disabled: bool,
}

/// The running games (all, or the one named by `$1`) joined to their snapshot rows and
/// their probe overrides: one statement, so a steady tick stays at two (DESIGN §16).
/// Columns are named as the fields of [`ListedGameRow`].
pub(super) const LISTED_GAMES_SQL: &str = "SELECT r.game_id, r.current_container_id AS container_id, \
       r.engine_endpoint, \
       s.version, s.consecutive_failures, s.consecutive_successes, s.episode_failures, \
       s.failure_published, s.last_status, s.last_failure_kind, \
       s.container_id AS snapshot_container_id, \
       CASE WHEN isfinite(r.started_at) \
         THEN extract(epoch FROM greatest(now() - r.started_at, interval '0'))::float8 END \
         AS since_start_secs, \
       o.game_id IS NOT NULL AS has_override, o.path, o.expect, o.headers, \
       extract(epoch FROM o.timeout)::float8 AS timeout_secs, o.failures_threshold, \
       extract(epoch FROM o.initial_delay)::float8 AS initial_delay_secs, \
       coalesce(o.disabled, false) AS disabled \
     FROM runtime_records r LEFT JOIN health_snapshots s ON s.game_id = r.game_id \
     LEFT JOIN health_probe_overrides o ON o.game_id = r.game_id \
     WHERE r.status = 'running' AND ($1::text IS NULL OR r.game_id = $1) \
     ORDER BY r.game_id";

/// A row of [`LISTED_GAMES_SQL`].
#[derive(sqlx::FromRow)]
pub(super) struct ListedGameRow {
    #[sqlx(flatten)]
    record: RuntimeRecord,
    #[sqlx(flatten)]
    snapshot: SnapshotColumns,
    since_start_secs: Option<f64>,
    has_override: bool,
    /// Meaningful only when `has_override`.
    #[sqlx(flatten)]
    overrides: ProbeOverride,
}

impl TryFrom<ListedGameRow> for ListedGame {
    type Error = sqlx::Error;

    fn try_from(row: ListedGameRow) -> Result<Self, sqlx::Error> {
        Ok(ListedGame {
            record: row.record,
            stored: row.snapshot.into_stored()?,
            since_start: row
                .since_start_secs
                .filter(|secs| secs.is_finite())
                .map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)),
            overrides: row.has_override.then_some(row.overrides),
        })
    }
}

/// A row of `load_snapshots`.
#[derive(sqlx::FromRow)]
pub(super) struct SnapshotEntryRow {
    pub(super) game_id: String,
    #[sqlx(flatten)]
    pub(super) snapshot: SnapshotColumns,
}

/// A snapshot row's columns as far as deciding goes. Every one is `NOT NULL` in the table,
/// but the running list reads them through a `LEFT JOIN`: all are `NULL` for a game without
/// a snapshot row, which `version` tells.
#[derive(sqlx::FromRow)]
pub(super) struct SnapshotColumns {
    version: Option<i64>,
    consecutive_failures: Option<i32>,
    consecutive_successes: Option<i32>,
    episode_failures: Option<i32>,
    failure_published: Option<bool>,
    last_status: Option<i32>,
    last_failure_kind: Option<String>,
    snapshot_container_id: Option<String>,
}

impl SnapshotColumns {
    /// `None` when there is no snapshot row (`version` is `NULL`); an error when there is
    /// one and a `NOT NULL` column is `NULL` anyway.
    pub(super) fn into_stored(self) -> Result<Option<StoredSnapshot>, sqlx::Error> {
        let Some(version) = self.version else {
            return Ok(None);
        };
        let count = |value: Option<i32>, column: &str| -> Result<u32, sqlx::Error> {
            Ok(value.ok_or_else(|| unexpected_null(column))?.max(0) as u32)
        };
        Ok(Some(StoredSnapshot {
            version,
            health: GameHealth {
                consecutive_failures: count(self.consecutive_failures, "consecutive_failures")?,
                consecutive_successes: count(self.consecutive_successes, "consecutive_successes")?,
                episode_failures: count(self.episode_failures, "episode_failures")?,
                failure_published: self
                    .failure_published
                    .ok_or_else(|| unexpected_null("failure_published"))?,
            },
            last_status: u16::try_from(
                self.last_status
                    .ok_or_else(|| unexpected_null("last_status"))?,
            )
            .unwrap_or(0),
            last_failure_kind: self.last_failure_kind,
            container_id: self.snapshot_container_id,
        }))
    }
}

/// The error sqlx reports for a `NULL` in a column decoded as not nullable.
pub(super) fn unexpected_null(column: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: format!("{column:?}"),
        source: Box::new(UnexpectedNullError),
    }
}
