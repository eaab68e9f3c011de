//! What the tick asks: the running games with their snapshot rows, and the conditional
//! writes of the commit rule (DESIGN §3, §12).

use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use sqlx::PgExecutor;

use super::listing::{
    LISTED_GAMES_SQL, ListedGame, ListedGameRow, SnapshotEntryRow, StoredSnapshot, unexpected_null,
};
use super::{STATEMENT_TIMEOUT, Store};
use crate::envelope::HealthEvent;
use crate::hysteresis::GameHealth;

/// What the worker writes to `health_snapshots` for one game after one probe.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub game_id: String,
    /// The version this write expects the row to have: 0 for "no row yet". The write
    /// happens only if the row is still at this version.
    pub expected_version: i64,
    /// The container the counters belong to.
    pub container_id: Option<String>,
    pub health: GameHealth,
    pub last_probe_at: DateTime<Utc>,
    /// Set when this probe succeeded; otherwise the stored value is kept.
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_status: u16,
    pub last_error: Option<String>,
    pub last_failure_kind: Option<&'static str>,
    pub last_latency_ms: f64,
}

/// The probe marks of one replica, as columns.
#[derive(Debug, Default)]
pub struct ProbeMarks<'a> {
    pub game_ids: Vec<&'a str>,
    pub probed_at: Vec<DateTime<Utc>>,
    pub latency_ms: Vec<f32>,
    pub succeeded: Vec<bool>,
}

impl ProbeMarks<'_> {
    pub fn len(&self) -> usize {
        self.game_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.game_ids.is_empty()
    }
}

/// Why a conditional write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The row is not at the version the writer expected: another writer (a replica, or
    /// this one's own commit whose outcome was unknown) got there first. Nothing was
    /// written; the game must be reloaded before it is decided again.
    #[error("the snapshot changed since it was read (version {expected} expected)")]
    Conflict { expected: i64 },
    /// The same transition of the same episode is already in the log.
    #[error("this episode's {event_type} is already recorded")]
    DuplicateEpisode { event_type: &'static str },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The outcome of a batch of conditional snapshot writes.
#[derive(Debug, Default)]
pub struct SnapshotWrites {
    /// Games written, with the version the row has now.
    pub written: Vec<(String, i64)>,
    /// Games whose row was not at the expected version: nothing written for them.
    pub conflicts: Vec<String>,
}

impl Store {
    /// Streams the running records with their snapshot rows, one statement, rows arriving
    /// as the server sends them, so a list of 100k games never sits in memory as one
    /// result. Every replica lists every running game (the full list is what pruning
    /// needs); which of them it probes is decided by ownership, in the worker.
    pub fn running_games(&self) -> BoxStream<'_, Result<ListedGame, sqlx::Error>> {
        let rows = sqlx::query_as::<_, ListedGameRow>(LISTED_GAMES_SQL)
            .bind(None::<&str>)
            .fetch(&self.pool)
            .map(|row| ListedGame::try_from(row?));
        // Each row (the first one included) must arrive within [`CLIENT_STATEMENT_BOUND`];
        // a server that stops answering mid-list ends the stream with an error.
        futures::stream::unfold(Some(rows), move |rows| async move {
            let mut rows = rows?;
            match self
                .within_statement_bound(async { Ok(rows.next().await) })
                .await
            {
                Ok(Some(Ok(game))) => Some((Ok(game), Some(rows))),
                Ok(Some(Err(e))) | Err(e) => Some((Err(e), None)),
                Ok(None) => None,
            }
        })
        .boxed()
    }

    /// One running game with its snapshot row, `None` when it is unknown or not running.
    pub(crate) async fn running_game(
        &self,
        game_id: &str,
    ) -> Result<Option<ListedGame>, sqlx::Error> {
        self.within_statement_bound(async {
            let row: Option<ListedGameRow> = sqlx::query_as(LISTED_GAMES_SQL)
                .bind(Some(game_id))
                .fetch_optional(&self.pool)
                .await?;
            row.map(ListedGame::try_from).transpose()
        })
        .await
    }

    /// Every snapshot row, to warm the worker's memory at start-up (each game is read
    /// again with the running list before it is decided, so this is only a head start).
    pub(crate) async fn load_snapshots(
        &self,
    ) -> Result<Vec<(String, StoredSnapshot)>, sqlx::Error> {
        self.within_statement_bound(async {
            let rows: Vec<SnapshotEntryRow> = sqlx::query_as(
                "SELECT game_id, version, consecutive_failures, consecutive_successes, \
                 episode_failures, failure_published, last_status, last_failure_kind, \
                 container_id AS snapshot_container_id \
                 FROM health_snapshots",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|row| {
                    let stored = row
                        .snapshot
                        .into_stored()?
                        .ok_or_else(|| unexpected_null("version"))?;
                    Ok((row.game_id, stored))
                })
                .collect()
        })
        .await
    }

    /// Commits one transition: the game's snapshot, conditional on the version the writer
    /// read, and the event, unique per game, episode and type; both or neither.
    ///
    /// Returns the snapshot's new version. [`WriteError::Conflict`] and
    /// [`WriteError::DuplicateEpisode`] mean another writer got there first and nothing was
    /// written. Any other error may or may not have committed (the connection can drop
    /// during `COMMIT`): the caller must reload the game before deciding it again.
    pub(crate) async fn record_transition(
        &self,
        event: &HealthEvent,
        snapshot: &SnapshotRow,
    ) -> Result<i64, WriteError> {
        let outcome = self
            .within_statement_bound(async {
                let mut tx = self.pool.begin().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SET LOCAL statement_timeout = {}",
                    STATEMENT_TIMEOUT.as_millis()
                )))
                .execute(&mut *tx)
                .await?;
                let written = write_snapshots(&mut *tx, std::slice::from_ref(snapshot)).await?;
                let Some((_, version)) = written.into_iter().next() else {
                    tx.rollback().await?;
                    return Ok(Err(WriteError::Conflict {
                        expected: snapshot.expected_version,
                    }));
                };
                let details =
                    serde_json::to_value(&event.details).expect("details always serialize");
                // A failure opens the game's next episode; a recovery closes the latest one.
                let inserted = sqlx::query(
                    "INSERT INTO health_events \
                     (event_id, game_id, container_id, event_type, occurred_at, details, episode) \
                     VALUES ($1, $2, $3, $4, $5, $6, CASE $4 \
                       WHEN 'probe_failed' THEN COALESCE((SELECT max(episode) FROM health_events WHERE game_id = $2), 0) + 1 \
                       ELSE COALESCE((SELECT max(episode) FROM health_events \
                                      WHERE game_id = $2 AND event_type = 'probe_failed'), 0) END) \
                     ON CONFLICT (game_id, episode, event_type) DO NOTHING",
                )
                .bind(event.event_id)
                .bind(&event.game_id)
                .bind(&event.container_id)
                .bind(event.event_type().as_str())
                .bind(event.occurred_at)
                .bind(details)
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(Err(WriteError::DuplicateEpisode {
                        event_type: event.event_type().as_str(),
                    }));
                }
                tx.commit().await?;
                Ok(Ok(version))
            })
            .await;
        outcome.map_err(WriteError::Database)?
    }

    /// Writes many snapshots in one statement, each conditional on its expected version.
    pub(crate) async fn write_snapshots(
        &self,
        rows: &[SnapshotRow],
    ) -> Result<SnapshotWrites, sqlx::Error> {
        if rows.is_empty() {
            return Ok(SnapshotWrites::default());
        }
        let written = self
            .within_statement_bound(write_snapshots(&self.pool, rows))
            .await?;
        let mut done: std::collections::HashSet<&str> =
            std::collections::HashSet::with_capacity(written.len());
        for (game_id, _) in &written {
            done.insert(game_id.as_str());
        }
        let conflicts = rows
            .iter()
            .filter(|r| !done.contains(r.game_id.as_str()))
            .map(|r| r.game_id.clone())
            .collect();
        Ok(SnapshotWrites { written, conflicts })
    }

    /// Replaces this replica's probe marks (one statement): for each game, its last probe
    /// whose outcome did not rewrite the snapshot row (`worker::games::ProbeMark`).
    pub(crate) async fn write_probe_marks(
        &self,
        replica_id: &str,
        marks: &ProbeMarks<'_>,
    ) -> Result<(), sqlx::Error> {
        self.within_statement_bound(async {
            sqlx::query(
                "INSERT INTO health_probe_marks \
                   (replica_id, game_ids, probed_at, latency_ms, succeeded, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) \
                 ON CONFLICT (replica_id) DO UPDATE SET game_ids = EXCLUDED.game_ids, \
                   probed_at = EXCLUDED.probed_at, latency_ms = EXCLUDED.latency_ms, \
                   succeeded = EXCLUDED.succeeded, updated_at = now()",
            )
            .bind(replica_id)
            .bind(&marks.game_ids)
            .bind(&marks.probed_at)
            .bind(&marks.latency_ms)
            .bind(&marks.succeeded)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Forgets games that are no longer running.
    pub(crate) async fn delete_snapshots(&self, game_ids: &[String]) -> Result<u64, sqlx::Error> {
        if game_ids.is_empty() {
            return Ok(0);
        }
        self.within_statement_bound(async {
            let done = sqlx::query("DELETE FROM health_snapshots WHERE game_id = ANY($1)")
                .bind(game_ids)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }
}

/// One statement for any number of rows (UNNEST of column arrays), each row written only
/// if it is at its expected version (0: only if there is no row). Returns the rows
/// written with their new versions.
async fn write_snapshots<'e, E: PgExecutor<'e>>(
    executor: E,
    rows: &[SnapshotRow],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let game_ids: Vec<&str> = rows.iter().map(|r| r.game_id.as_str()).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.health.status().as_str()).collect();
    let failures: Vec<i32> = rows
        .iter()
        .map(|r| clamp(r.health.consecutive_failures))
        .collect();
    let successes: Vec<i32> = rows
        .iter()
        .map(|r| clamp(r.health.consecutive_successes))
        .collect();
    let episode: Vec<i32> = rows
        .iter()
        .map(|r| clamp(r.health.episode_failures))
        .collect();
    let published: Vec<bool> = rows.iter().map(|r| r.health.failure_published).collect();
    let probe_at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.last_probe_at).collect();
    let success_at: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.last_success_at).collect();
    let status: Vec<i32> = rows.iter().map(|r| i32::from(r.last_status)).collect();
    let error: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
    let kind: Vec<Option<&str>> = rows.iter().map(|r| r.last_failure_kind).collect();
    let latency: Vec<f64> = rows.iter().map(|r| r.last_latency_ms).collect();
    let expected: Vec<i64> = rows.iter().map(|r| r.expected_version).collect();
    let containers: Vec<Option<&str>> = rows.iter().map(|r| r.container_id.as_deref()).collect();
    // In READ COMMITTED a concurrent writer's UPDATE waits for the row lock, then sees the
    // new version and skips the row; two INSERTs of a new row: one wins, one does nothing.
    sqlx::query_as::<_, (String, i64)>(
        "WITH input AS (SELECT * FROM UNNEST( \
           $1::text[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::bool[], \
           $7::timestamptz[], $8::timestamptz[], $9::int4[], $10::text[], $11::text[], $12::float8[], \
           $13::int8[], $14::text[]) \
           AS t(g, s, cf, cs, ef, fp, pa, sa, ls, le, lk, ll, v, c)), \
         updated AS (UPDATE health_snapshots h SET \
           status = i.s, consecutive_failures = i.cf, consecutive_successes = i.cs, \
           episode_failures = i.ef, failure_published = i.fp, last_probe_at = i.pa, \
           last_success_at = COALESCE(i.sa, h.last_success_at), last_status = i.ls, \
           last_error = i.le, last_failure_kind = i.lk, last_latency_ms = i.ll, \
           container_id = i.c, version = nextval('health_snapshots_version_seq'), updated_at = now() \
           FROM input i WHERE h.game_id = i.g AND i.v > 0 AND h.version = i.v \
           RETURNING h.game_id, h.version), \
         inserted AS (INSERT INTO health_snapshots (game_id, status, consecutive_failures, \
           consecutive_successes, episode_failures, failure_published, last_probe_at, \
           last_success_at, last_status, last_error, last_failure_kind, last_latency_ms, \
           container_id, version, updated_at) \
           SELECT g, s, cf, cs, ef, fp, pa, sa, ls, le, lk, ll, c, nextval('health_snapshots_version_seq'), now() FROM input WHERE v = 0 \
           ON CONFLICT (game_id) DO NOTHING \
           RETURNING game_id, version) \
         SELECT game_id, version FROM updated UNION ALL SELECT game_id, version FROM inserted",
    )
    .bind(game_ids)
    .bind(statuses)
    .bind(failures)
    .bind(successes)
    .bind(episode)
    .bind(published)
    .bind(probe_at)
    .bind(success_at)
    .bind(status)
    .bind(error)
    .bind(kind)
    .bind(latency)
    .bind(expected)
    .bind(containers)
    .fetch_all(executor)
    .await
}
