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

/// What the worker writes to `health_snapshots` for one game after one probe.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub game_id: String,
    pub health: GameHealth,
    pub last_probe_at: DateTime<Utc>,
    /// Set when this probe succeeded; otherwise the stored value is kept.
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_status: u16,
    pub last_error: Option<String>,
    pub last_failure_kind: Option<&'static str>,
    pub last_latency_ms: f64,
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

    /// Streams the running records, one statement, rows arriving as the server sends them,
    /// so a list of 100k games never sits in memory as one result. The single place that
    /// decides which games this worker probes (a future lease filter goes here).
    ///
    /// Each row (the first one included) must arrive within [`CLIENT_STATEMENT_BOUND`]; a
    /// server that stops answering mid-list ends the stream with an error.
    pub fn running_records(&self) -> BoxStream<'_, Result<RuntimeRecord, sqlx::Error>> {
        let rows = sqlx::query(
            "SELECT game_id, current_container_id, engine_endpoint \
             FROM runtime_records WHERE status = 'running' ORDER BY game_id",
        )
        .fetch(&self.pool)
        .map(|row| runtime_record(&row?));
        futures::stream::unfold(Some(rows), move |rows| async move {
            let mut rows = rows?;
            match self.bounded(async { Ok(rows.next().await) }).await {
                Ok(Some(Ok(record))) => Some((Ok(record), Some(rows))),
                Ok(Some(Err(e))) | Err(e) => Some((Err(e), None)),
                Ok(None) => None,
            }
        })
        .boxed()
    }

    /// The per-game counters, to resume after a restart.
    pub async fn load_health(&self) -> Result<Vec<(String, GameHealth)>, sqlx::Error> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT game_id, consecutive_failures, consecutive_successes, episode_failures, \
                 failure_published FROM health_snapshots",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|row| {
                    let count = |i: usize| -> Result<u32, sqlx::Error> {
                        Ok(row.try_get::<i32, _>(i)?.max(0) as u32)
                    };
                    Ok((
                        row.try_get(0)?,
                        GameHealth {
                            consecutive_failures: count(1)?,
                            consecutive_successes: count(2)?,
                            episode_failures: count(3)?,
                            failure_published: row.try_get(4)?,
                        },
                    ))
                })
                .collect()
        })
        .await
    }

    /// Commits one transition: its event row and the game's snapshot, atomically.
    pub async fn record_transition(
        &self,
        event: &HealthEvent,
        snapshot: &SnapshotRow,
    ) -> Result<(), sqlx::Error> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET LOCAL statement_timeout = {}",
                STATEMENT_TIMEOUT.as_millis()
            )))
            .execute(&mut *tx)
            .await?;
            let details = serde_json::to_value(&event.details).expect("details always serialize");
            sqlx::query(
                "INSERT INTO health_events \
                 (event_id, game_id, container_id, event_type, occurred_at, details) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(event.event_id)
            .bind(&event.game_id)
            .bind(&event.container_id)
            .bind(event.event_type().as_str())
            .bind(event.occurred_at)
            .bind(details)
            .execute(&mut *tx)
            .await?;
            upsert_snapshots(&mut *tx, std::slice::from_ref(snapshot)).await?;
            tx.commit().await
        })
        .await
    }

    /// Writes many snapshots in one statement.
    pub async fn upsert_snapshots(&self, rows: &[SnapshotRow]) -> Result<(), sqlx::Error> {
        self.bounded(async {
            if rows.is_empty() {
                return Ok(());
            }
            upsert_snapshots(&self.pool, rows).await
        })
        .await
    }

    /// Forgets games that are no longer running.
    pub async fn delete_snapshots(&self, game_ids: &[String]) -> Result<u64, sqlx::Error> {
        self.bounded(async {
            if game_ids.is_empty() {
                return Ok(0);
            }
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

/// Decodes `SELECT game_id, current_container_id, engine_endpoint` into a record.
fn runtime_record(row: &PgRow) -> Result<RuntimeRecord, sqlx::Error> {
    Ok(RuntimeRecord {
        game_id: row.try_get(0)?,
        container_id: row.try_get(1)?,
        engine_endpoint: row.try_get(2)?,
    })
}

/// One statement for any number of rows (UNNEST of column arrays).
async fn upsert_snapshots<'e, E: PgExecutor<'e>>(
    executor: E,
    rows: &[SnapshotRow],
) -> Result<(), sqlx::Error> {
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
    sqlx::query(
        "INSERT INTO health_snapshots (game_id, status, consecutive_failures, \
           consecutive_successes, episode_failures, failure_published, last_probe_at, \
           last_success_at, last_status, last_error, last_failure_kind, last_latency_ms, updated_at) \
         SELECT g, s, cf, cs, ef, fp, pa, sa, ls, le, lk, ll, now() FROM UNNEST( \
           $1::text[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::bool[], \
           $7::timestamptz[], $8::timestamptz[], $9::int4[], $10::text[], $11::text[], $12::float8[]) \
           AS t(g, s, cf, cs, ef, fp, pa, sa, ls, le, lk, ll) \
         ON CONFLICT (game_id) DO UPDATE SET \
           status = EXCLUDED.status, \
           consecutive_failures = EXCLUDED.consecutive_failures, \
           consecutive_successes = EXCLUDED.consecutive_successes, \
           episode_failures = EXCLUDED.episode_failures, \
           failure_published = EXCLUDED.failure_published, \
           last_probe_at = EXCLUDED.last_probe_at, \
           last_success_at = COALESCE(EXCLUDED.last_success_at, health_snapshots.last_success_at), \
           last_status = EXCLUDED.last_status, \
           last_error = EXCLUDED.last_error, \
           last_failure_kind = EXCLUDED.last_failure_kind, \
           last_latency_ms = EXCLUDED.last_latency_ms, \
           updated_at = now()",
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
    .execute(executor)
    .await
    .map(drop)
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
    /// The running record of one game, `None` when it is unknown or not running.
    pub async fn running_record(
        &self,
        game_id: &str,
    ) -> Result<Option<RuntimeRecord>, sqlx::Error> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT game_id, current_container_id, engine_endpoint \
                 FROM runtime_records WHERE status = 'running' AND game_id = $1",
            )
            .bind(game_id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(runtime_record).transpose()
        })
        .await
    }

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
