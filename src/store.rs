//! Postgres access. Every SQL statement of the service lives here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::events::envelope::HealthEvent;
use crate::hysteresis::GameHealth;

/// Connections: one streams the running list, the others commit transitions and serve the
/// relay while it runs. More would only queue behind Postgres' own locks.
const POOL_SIZE: u32 = 6;

/// How long a statement waits for a connection before the tick gives up on it. While
/// Postgres is down every tick waits this long, so it is kept short: a healthy server hands
/// out a connection in milliseconds, and a dead one should fail the tick quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

mod outbox;
pub use outbox::{MAX_OUTBOX_ROW_BYTES, SetAsideRow, SetAsideSelection};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A running game as the runtime manager recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

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

/// An outbox row that could not be decoded. It stays unpublished and is reported.
#[derive(Debug, Clone)]
pub struct UndecodableEvent {
    pub event_id: Uuid,
    pub reason: String,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    stall: Arc<Mutex<Stall>>,
}

/// Server-side bound on the statements of a transition's transaction (`SET LOCAL
/// statement_timeout`): a commit stuck on a sick server ends with an error instead of
/// holding a tick. Not set for the whole session: the running list is one statement that
/// streams for as long as the tick spreads its probes.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side bound on waiting for a row lock (`lock_timeout`).
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// Client-side bound on one statement, including the network: the server's own timeout
/// plus slack, so a slow but alive server reports its own error first, and a server that
/// stopped answering at all (a hung host, a proxy that swallows the bytes) is given up on.
/// A tick stuck on Postgres therefore ends with an error at most this long after its last
/// probe, plus [`STALL_PING_TIMEOUT`] for each further statement tried while stalled.
pub const CLIENT_STATEMENT_BOUND: Duration = Duration::from_secs(7);

/// Once a statement was given up on, later statements fail at once unless Postgres answers
/// a ping this quickly; pings are tried at most every [`STALL_PING_EVERY`].
const STALL_PING_TIMEOUT: Duration = Duration::from_secs(1);
const STALL_PING_EVERY: Duration = Duration::from_secs(1);

/// Whether Postgres stopped answering, as the last bounded statement saw it.
#[derive(Debug, Default)]
struct Stall {
    since: Option<Instant>,
    last_ping: Option<Instant>,
}

fn stalled_error(why: String) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
}

impl Store {
    /// Connects lazily checked: the pool opens its first connection here so a wrong URL or a
    /// dead server is reported at once.
    pub async fn connect(database_url: &str) -> Result<Self, sqlx::Error> {
        let options = connect_options(database_url)?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            stall: Arc::default(),
        }
    }

    /// Runs one statement (or transaction) within [`CLIENT_STATEMENT_BOUND`]. After one was
    /// given up on, the next ones fail at once until Postgres answers a short ping, so a
    /// tick with many writes does not wait the bound once per write.
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let stalled_since = {
            let mut stall = self.stall.lock().expect("stall lock");
            match stall.since {
                None => None,
                Some(since) => {
                    if stall
                        .last_ping
                        .is_some_and(|ping| ping.elapsed() < STALL_PING_EVERY)
                    {
                        return Err(stalled_error(format!(
                            "Postgres stopped answering {:.1} s ago; not trying again yet",
                            since.elapsed().as_secs_f64()
                        )));
                    }
                    stall.last_ping = Some(Instant::now());
                    Some(since)
                }
            }
        };
        if let Some(since) = stalled_since {
            let ping = sqlx::query("SELECT 1").execute(&self.pool);
            match tokio::time::timeout(STALL_PING_TIMEOUT, ping).await {
                Ok(Ok(_)) => *self.stall.lock().expect("stall lock") = Stall::default(),
                _ => {
                    return Err(stalled_error(format!(
                        "Postgres stopped answering {:.1} s ago and still does not answer a ping within {STALL_PING_TIMEOUT:?}",
                        since.elapsed().as_secs_f64()
                    )));
                }
            }
        }
        match tokio::time::timeout(CLIENT_STATEMENT_BOUND, work).await {
            Ok(result) => result,
            Err(_) => {
                let mut stall = self.stall.lock().expect("stall lock");
                stall.since.get_or_insert_with(Instant::now);
                stall.last_ping = Some(Instant::now());
                Err(stalled_error(format!(
                    "Postgres did not answer within {CLIENT_STATEMENT_BOUND:?}"
                )))
            }
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; a no-op when all are applied.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.bounded(async { sqlx::query("SELECT 1").execute(&self.pool).await.map(drop) })
            .await
    }

    /// Streams the running records with their snapshot rows, one statement, rows arriving
    /// as the server sends them, so a list of 100k games never sits in memory as one
    /// result. Every replica lists every running game (the full list is what pruning
    /// needs); which of them it probes is decided by ownership, in the worker.
    pub fn running_games(&self) -> BoxStream<'_, Result<ListedGame, sqlx::Error>> {
        let rows = sqlx::query(LISTED_GAMES_SQL)
            .bind(None::<&str>)
            .fetch(&self.pool)
            .map(|row| listed_game(&row?));
        // Each row (the first one included) must arrive within [`CLIENT_STATEMENT_BOUND`];
        // a server that stops answering mid-list ends the stream with an error.
        futures::stream::unfold(Some(rows), move |rows| async move {
            let mut rows = rows?;
            match self.bounded(async { Ok(rows.next().await) }).await {
                Ok(Some(Ok(game))) => Some((Ok(game), Some(rows))),
                Ok(Some(Err(e))) | Err(e) => Some((Err(e), None)),
                Ok(None) => None,
            }
        })
        .boxed()
    }

    /// One running game with its snapshot row, `None` when it is unknown or not running.
    pub async fn running_game(&self, game_id: &str) -> Result<Option<ListedGame>, sqlx::Error> {
        self.bounded(async {
            let row = sqlx::query(LISTED_GAMES_SQL)
                .bind(Some(game_id))
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(listed_game).transpose()
        })
        .await
    }

    /// Every snapshot row, to warm the worker's memory at start-up (each game is read
    /// again with the running list before it is decided, so this is only a head start).
    pub async fn load_snapshots(&self) -> Result<Vec<(String, StoredSnapshot)>, sqlx::Error> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT game_id, version, consecutive_failures, consecutive_successes, \
                 episode_failures, failure_published, last_status, last_failure_kind, container_id \
                 FROM health_snapshots",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, stored_snapshot(row, 1)?)))
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
    pub async fn record_transition(
        &self,
        event: &HealthEvent,
        snapshot: &SnapshotRow,
    ) -> Result<i64, WriteError> {
        let outcome = self
            .bounded(async {
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
    pub async fn write_snapshots(
        &self,
        rows: &[SnapshotRow],
    ) -> Result<SnapshotWrites, sqlx::Error> {
        if rows.is_empty() {
            return Ok(SnapshotWrites::default());
        }
        let written = self.bounded(write_snapshots(&self.pool, rows)).await?;
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

    /// Forgets games that are no longer running.
    pub async fn delete_snapshots(&self, game_ids: &[String]) -> Result<u64, sqlx::Error> {
        if game_ids.is_empty() {
            return Ok(0);
        }
        self.bounded(async {
            let done = sqlx::query("DELETE FROM health_snapshots WHERE game_id = ANY($1)")
                .bind(game_ids)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    pub async fn mark_published(&self, event_ids: &[Uuid]) -> Result<(), sqlx::Error> {
        self.bounded(async {
            if event_ids.is_empty() {
                return Ok(());
            }
            sqlx::query(
                "UPDATE health_events SET published_at = now() \
                 WHERE event_id = ANY($1) AND published_at IS NULL",
            )
            .bind(event_ids)
            .execute(&self.pool)
            .await
            .map(drop)
        })
        .await
    }

    pub async fn count_unpublished(&self) -> Result<i64, sqlx::Error> {
        self.bounded(async {
            // Set-aside rows are counted apart (`count_set_aside`): they wait for an operator.
            sqlx::query_scalar(
                "SELECT count(*) FROM health_events e WHERE published_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM health_events_set_aside a \
                                 WHERE a.event_id = e.event_id AND a.state <> 'retry')",
            )
            .fetch_one(&self.pool)
            .await
        })
        .await
    }
}

/// The pool's connection settings: the URL's, plus server-side lock and idle-transaction
/// timeouts and TCP keepalives (sqlx has no client-side keepalive; the server's own tells it
/// of a vanished worker, and [`CLIENT_STATEMENT_BOUND`] covers a vanished server).
fn connect_options(database_url: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
    use std::str::FromStr as _;
    let ms = |d: Duration| d.as_millis().to_string();
    Ok(
        sqlx::postgres::PgConnectOptions::from_str(database_url)?.options([
            ("lock_timeout", ms(LOCK_TIMEOUT)),
            (
                "idle_in_transaction_session_timeout",
                ms(STATEMENT_TIMEOUT * 6),
            ),
            ("tcp_keepalives_idle", "30".to_owned()),
            ("tcp_keepalives_interval", "10".to_owned()),
            ("tcp_keepalives_count", "3".to_owned()),
        ]),
    )
}

/// The running games (all, or the one named by `$1`) joined to their snapshot rows.
const LISTED_GAMES_SQL: &str = "SELECT r.game_id, r.current_container_id, r.engine_endpoint, \
       s.version, s.consecutive_failures, s.consecutive_successes, s.episode_failures, \
       s.failure_published, s.last_status, s.last_failure_kind, s.container_id \
     FROM runtime_records r LEFT JOIN health_snapshots s ON s.game_id = r.game_id \
     WHERE r.status = 'running' AND ($1::text IS NULL OR r.game_id = $1) \
     ORDER BY r.game_id";

/// Decodes a row of [`LISTED_GAMES_SQL`].
fn listed_game(row: &PgRow) -> Result<ListedGame, sqlx::Error> {
    let version: Option<i64> = row.try_get(3)?;
    Ok(ListedGame {
        record: RuntimeRecord {
            game_id: row.try_get(0)?,
            container_id: row.try_get(1)?,
            engine_endpoint: row.try_get(2)?,
        },
        stored: version.map(|_| stored_snapshot(row, 3)).transpose()?,
    })
}

/// Decodes `version, consecutive_failures, consecutive_successes, episode_failures,
/// failure_published, last_status, last_failure_kind, container_id` starting at `first`.
fn stored_snapshot(row: &PgRow, first: usize) -> Result<StoredSnapshot, sqlx::Error> {
    let count = |i: usize| -> Result<u32, sqlx::Error> {
        Ok(row.try_get::<i32, _>(first + i)?.max(0) as u32)
    };
    Ok(StoredSnapshot {
        version: row.try_get(first)?,
        health: GameHealth {
            consecutive_failures: count(1)?,
            consecutive_successes: count(2)?,
            episode_failures: count(3)?,
            failure_published: row.try_get(first + 4)?,
        },
        last_status: u16::try_from(row.try_get::<i32, _>(first + 5)?).unwrap_or(0),
        last_failure_kind: row.try_get(first + 6)?,
        container_id: row.try_get(first + 7)?,
    })
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

/// One row of the per-game health view (`GET /games`, `healthprobe status`): a running
/// record joined to its snapshot. A running game never probed yet has no snapshot and shows
/// as `unknown` with empty observation fields.
#[derive(Debug, Clone, PartialEq)]
pub struct GameView {
    pub game_id: String,
    pub container_id: Option<String>,
    pub engine_endpoint: String,
    pub status: String,
    pub consecutive_failures: i32,
    pub last_probe_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_latency_ms: Option<f64>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub last_failure_kind: Option<String>,
}

/// One row of the event log as the status surface shows it (`GET /events`). Read as
/// stored, not decoded into a [`HealthEvent`]: a row the relay set aside still shows.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub event_id: Uuid,
    pub game_id: String,
    pub container_id: String,
    pub event_type: String,
    /// `None` for a timestamp no client can show (`infinity`, beyond chrono's range): such
    /// a row is read, not decoded into a panic.
    pub occurred_at: Option<DateTime<Utc>>,
    pub details: serde_json::Value,
    pub published: bool,
}

/// Which games a page of [`Store::games_page`] holds.
#[derive(Debug, Clone, Default)]
pub struct GamesQuery {
    /// `health_snapshots.status`; `unknown` also matches running games without a snapshot.
    pub status: Option<String>,
    /// A glob on `game_id` (`*` any run, `?` one character), matched in full.
    pub game_id_glob: Option<String>,
    /// Keyset cursor: only games whose id sorts after this one.
    pub after: Option<String>,
    pub limit: i64,
}

/// Turns a glob (`*`, `?`) into a `LIKE` pattern, escaping `LIKE`'s own wildcards and the
/// escape character so a game id containing `%` or `_` matches only itself.
pub fn glob_to_like(glob: &str) -> String {
    let mut like = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            c => like.push(c),
        }
    }
    like
}

impl Store {
    /// One page of running games with their health, ordered by `game_id`. Keyset
    /// pagination (`game_id > after`) rather than OFFSET: each page costs the same however
    /// deep it is, and games added or removed between pages neither repeat nor shift others.
    /// Served by the partial index on running records.
    pub async fn games_page(&self, query: &GamesQuery) -> Result<Vec<GameView>, sqlx::Error> {
        self.bounded(async {
            let like = query.game_id_glob.as_deref().map(glob_to_like);
            let rows = sqlx::query(
                "SELECT r.game_id, r.current_container_id, r.engine_endpoint, \
                   COALESCE(s.status, 'unknown'), COALESCE(s.consecutive_failures, 0), \
                   s.last_probe_at, s.last_success_at, s.last_latency_ms, s.last_status, \
                   s.last_error, s.last_failure_kind \
                 FROM runtime_records r LEFT JOIN health_snapshots s ON s.game_id = r.game_id \
                 WHERE r.status = 'running' \
                   AND ($1::text IS NULL OR r.game_id > $1) \
                   AND ($2::text IS NULL OR r.game_id LIKE $2) \
                   AND ($3::text IS NULL OR COALESCE(s.status, 'unknown') = $3) \
                 ORDER BY r.game_id LIMIT $4",
            )
            .bind(query.after.as_deref())
            .bind(like)
            .bind(query.status.as_deref())
            .bind(query.limit)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|row| {
                    Ok(GameView {
                        game_id: row.try_get(0)?,
                        container_id: row.try_get(1)?,
                        engine_endpoint: row.try_get(2)?,
                        status: row.try_get(3)?,
                        consecutive_failures: row.try_get(4)?,
                        last_probe_at: row.try_get(5)?,
                        last_success_at: row.try_get(6)?,
                        last_latency_ms: row.try_get(7)?,
                        last_status: row.try_get(8)?,
                        last_error: row.try_get(9)?,
                        last_failure_kind: row.try_get(10)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// How many running games are in each health status (`unknown` includes games without
    /// a snapshot yet): the fleet page's totals. One pass over the running records.
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        self.bounded(
            sqlx::query_as(
                "SELECT COALESCE(s.status, 'unknown') AS status, count(*) \
                 FROM runtime_records r LEFT JOIN health_snapshots s ON s.game_id = r.game_id \
                 WHERE r.status = 'running' GROUP BY 1",
            )
            .fetch_all(&self.pool),
        )
        .await
    }

    /// The latest `limit` events of the log, newest first, as they were recorded (details
    /// as stored, whether the relay has published them). Served by the `seq` index.
    pub async fn latest_events(&self, limit: i64) -> Result<Vec<LoggedEvent>, sqlx::Error> {
        let rows = self
            .bounded(
                sqlx::query(
                    "SELECT event_id, game_id, container_id, event_type, \
                       CASE WHEN isfinite(occurred_at) \
                         THEN floor(extract(epoch FROM occurred_at) * 1000)::int8 END, \
                       details, published_at IS NOT NULL \
                     FROM health_events ORDER BY seq DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool),
            )
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(LoggedEvent {
                    event_id: row.try_get(0)?,
                    game_id: row.try_get(1)?,
                    container_id: row.try_get(2)?,
                    event_type: row.try_get(3)?,
                    occurred_at: row
                        .try_get::<Option<i64>, _>(4)?
                        .and_then(DateTime::from_timestamp_millis),
                    details: row.try_get(5)?,
                    published: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// Records games as running at the given endpoints (insert or update). Used by the
    /// simulated fleet, which plays the runtime manager's part in demos and tests.
    pub async fn register_running(&self, games: &[(String, String)]) -> Result<(), sqlx::Error> {
        if games.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = games.iter().map(|(id, _)| id.as_str()).collect();
        let endpoints: Vec<&str> = games.iter().map(|(_, e)| e.as_str()).collect();
        sqlx::query(
            "INSERT INTO runtime_records (game_id, status, engine_endpoint, started_at, last_op_at) \
             SELECT g, 'running', e, now(), now() FROM UNNEST($1::text[], $2::text[]) AS t(g, e) \
             ON CONFLICT (game_id) DO UPDATE SET status = 'running', \
               engine_endpoint = EXCLUDED.engine_endpoint, started_at = now(), \
               stopped_at = NULL, last_op_at = now()",
        )
        .bind(ids)
        .bind(endpoints)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Marks games as stopped (the fleet does this when it shuts down).
    pub async fn mark_stopped(&self, game_ids: &[String]) -> Result<u64, sqlx::Error> {
        if game_ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "UPDATE runtime_records SET status = 'stopped', stopped_at = now(), last_op_at = now() \
             WHERE game_id = ANY($1) AND status = 'running'",
        )
        .bind(game_ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// A replica as the membership table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub replica_id: String,
    pub status_addr: Option<String>,
    pub version: String,
    pub heartbeat_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    /// The lease has not expired (by Postgres' clock).
    pub live: bool,
}

/// This replica's heartbeat: what it tells the others about itself.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub replica_id: &'a str,
    pub status_addr: Option<&'a str>,
    pub version: &'a str,
    pub lease_ttl: Duration,
    /// Backend pid of the connection holding the relay lock, when this replica holds it.
    pub relay_pid: Option<i32>,
    /// Rows of members whose lease expired this long ago are removed.
    pub forget_after: Duration,
}

impl Store {
    /// Renews this replica's lease and reads every member, in one statement. Postgres'
    /// clock decides what is live, so replicas' clocks need not agree.
    pub async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<Vec<Member>, sqlx::Error> {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let rows = self.bounded(sqlx::query(
            "WITH me AS ( \
               INSERT INTO healthprobe_members \
                 (replica_id, status_addr, version, heartbeat_at, lease_expires_at, relay_pid) \
               VALUES ($1, $2, $3, now(), now() + $4 * interval '1 millisecond', $5) \
               ON CONFLICT (replica_id) DO UPDATE SET status_addr = EXCLUDED.status_addr, \
                 version = EXCLUDED.version, heartbeat_at = now(), \
                 lease_expires_at = EXCLUDED.lease_expires_at, relay_pid = EXCLUDED.relay_pid \
               RETURNING replica_id, status_addr, version, heartbeat_at, lease_expires_at, true AS live), \
             forgotten AS ( \
               DELETE FROM healthprobe_members \
               WHERE replica_id <> $1 AND lease_expires_at < now() - $6 * interval '1 millisecond') \
             SELECT replica_id, status_addr, version, heartbeat_at, lease_expires_at, \
                    lease_expires_at > now() AS live \
               FROM healthprobe_members WHERE replica_id <> $1 \
             UNION ALL SELECT * FROM me ORDER BY replica_id",
        )
        .bind(beat.replica_id)
        .bind(beat.status_addr)
        .bind(beat.version)
        .bind(millis(beat.lease_ttl))
        .bind(beat.relay_pid)
        .bind(millis(beat.forget_after))
        .fetch_all(&self.pool))
        .await?;
        rows.iter().map(member).collect()
    }

    /// Every member, live or not, for `healthprobe status --members`.
    pub async fn members(&self) -> Result<Vec<Member>, sqlx::Error> {
        let rows = self
            .bounded(
                sqlx::query(
                    "SELECT replica_id, status_addr, version, heartbeat_at, lease_expires_at, \
                    lease_expires_at > now() AS live \
             FROM healthprobe_members ORDER BY replica_id",
                )
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter().map(member).collect()
    }

    /// Leaves the membership (SIGTERM): the others share this replica's games at their next
    /// heartbeat instead of waiting for its lease to expire.
    pub async fn leave(&self, replica_id: &str) -> Result<(), sqlx::Error> {
        self.bounded(
            sqlx::query("DELETE FROM healthprobe_members WHERE replica_id = $1")
                .bind(replica_id)
                .execute(&self.pool),
        )
        .await
        .map(drop)
    }

    /// Ends the Postgres session of a relay holder whose lease has expired (a frozen or
    /// cut-off process keeps its connection, and with it the advisory lock, open). Only a
    /// backend that really holds the lock `(lock_class, lock_id)` is ended. Returns the
    /// replica whose session was ended.
    pub async fn end_expired_relay_holder(
        &self,
        lock_class: i32,
        lock_id: i32,
    ) -> Result<Option<String>, sqlx::Error> {
        // The holder is chosen first, in a materialised step: in one WHERE clause Postgres
        // may call pg_terminate_backend before it checks the lease, ending live holders.
        self.bounded(
            sqlx::query_scalar(
                "WITH expired AS MATERIALIZED ( \
               SELECT m.replica_id, m.relay_pid FROM healthprobe_members m \
               JOIN pg_locks l ON l.pid = m.relay_pid AND l.locktype = 'advisory' AND l.granted \
                 AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 2 \
               WHERE m.lease_expires_at < now()) \
             SELECT replica_id FROM expired WHERE pg_terminate_backend(relay_pid)",
            )
            .bind(i64::from(lock_class as u32))
            .bind(i64::from(lock_id as u32))
            .fetch_optional(&self.pool),
        )
        .await
    }
}

fn member(row: &PgRow) -> Result<Member, sqlx::Error> {
    Ok(Member {
        replica_id: row.try_get(0)?,
        status_addr: row.try_get(1)?,
        version: row.try_get(2)?,
        heartbeat_at: row.try_get(3)?,
        lease_expires_at: row.try_get(4)?,
        live: row.try_get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::glob_to_like;

    #[test]
    fn globs_become_escaped_like_patterns() {
        assert_eq!(glob_to_like("game-*"), "game-%");
        assert_eq!(glob_to_like("g?me"), "g_me");
        assert_eq!(glob_to_like("100%_done\\"), "100\\%\\_done\\\\");
        assert_eq!(glob_to_like(""), "");
    }
}
