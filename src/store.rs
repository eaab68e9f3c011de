//! Postgres access. Every SQL statement of the service lives here, split by who asks:
//! [`tick`] (the worker's list and writes), [`outbox`] (the relay and `healthprobe
//! outbox`), [`read`] (the status surface's read models), [`members`] (replicas and the
//! relay lock's holder), [`schema`] (migrations and the schema check) and [`fleet`] (the
//! simulated fleet's runtime records and the fresh database tests start from). This file
//! holds the pool and the bound every statement runs under.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};

/// Connections: one streams the running list, the others commit transitions and serve the
/// relay while it runs. More would only queue behind Postgres' own locks.
const POOL_SIZE: u32 = 6;

/// How long a statement waits for a connection before the tick gives up on it. While
/// Postgres is down every tick waits this long, so it is kept short: a healthy server hands
/// out a connection in milliseconds, and a dead one should fail the tick quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(feature = "sim")]
mod fleet;
mod history;
mod leader;
mod listing;
mod members;
mod outbox;
mod read;
mod retention;
mod schema;
mod tick;
#[cfg(feature = "sim")]
pub use fleet::fresh_database;
pub use history::HISTORY_MAX_GAMES;
pub(crate) use leader::{LOCK_CLASS, LOCK_ID};
pub use leader::{LockError, RelayLock};
pub use listing::{ListedGame, ProbeOverride, RuntimeRecord, StoredSnapshot};
pub use members::{Heartbeat, Member};
pub use outbox::{MAX_OUTBOX_ROW_BYTES, SetAsideRow, SetAsideSelection, UndecodableEvent};
pub use read::{GameView, GamesQuery, LoggedEvent};
pub use retention::{RetentionBatch, RetentionCursor};
pub use schema::{EDITED_MIGRATIONS, SchemaCheck, SchemaError};
pub use tick::{ProbeMarks, SnapshotRow, SnapshotWrites, WriteError};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    stall: Arc<Mutex<Stall>>,
}

/// Server-side bound on the statements of a transition's transaction (`SET LOCAL
/// statement_timeout`): a commit stuck on a sick server ends with an error instead of
/// holding a tick. Not set for the whole session: the running list is one statement that
/// streams for as long as the tick spreads its probes.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side bound on waiting for a row lock (`lock_timeout`).
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// Client-side bound on one statement, including the network: the server's own timeout
/// plus slack, so a slow but alive server reports its own error first, and a server that
/// stopped answering at all (a hung host, a proxy that swallows the bytes) is given up on.
/// A tick stuck on Postgres therefore ends with an error at most this long after its last
/// probe, plus [`STALL_PING_TIMEOUT`] for each further statement tried while stalled.
pub(crate) const CLIENT_STATEMENT_BOUND: Duration = Duration::from_secs(7);

/// Once a statement was given up on, later statements fail at once unless Postgres answers
/// a ping this quickly; pings are tried at most every [`STALL_PING_EVERY`].
const STALL_PING_TIMEOUT: Duration = Duration::from_secs(1);
const STALL_PING_EVERY: Duration = Duration::from_secs(1);

/// The longest one statement can keep its caller waiting, whatever Postgres does: a stall
/// ping, then the statement's own bound (the pool's [`ACQUIRE_TIMEOUT`] is inside it).
/// Liveness allows at least this long without progress (`status::LIVENESS_FLOOR`).
pub(crate) const LONGEST_STATEMENT_WAIT: Duration =
    STALL_PING_TIMEOUT.saturating_add(CLIENT_STATEMENT_BOUND);

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
    async fn within_statement_bound<T>(
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

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.within_statement_bound(async {
            sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
        })
        .await
    }
}

/// The pool's connection settings: the URL's, plus server-side lock and idle-transaction
/// timeouts and TCP keepalives (sqlx has no client-side keepalive; the server's own tells it
/// of a vanished worker, and [`CLIENT_STATEMENT_BOUND`] covers a vanished server).
///
/// sqlx's slow-statement warning is moved to debug: the running list is read as a stream
/// for the whole tick, so at 100,000 games (or with a spread) every tick "exceeded the
/// alert threshold" and warned; statements that really hang are reported by
/// [`Store::within_statement_bound`].
fn connect_options(database_url: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
    use sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    let ms = |d: Duration| d.as_millis().to_string();
    Ok(sqlx::postgres::PgConnectOptions::from_str(database_url)?
        .options([
            ("lock_timeout", ms(LOCK_TIMEOUT)),
            (
                "idle_in_transaction_session_timeout",
                ms(STATEMENT_TIMEOUT * 6),
            ),
            ("tcp_keepalives_idle", "30".to_owned()),
            ("tcp_keepalives_interval", "10".to_owned()),
            ("tcp_keepalives_count", "3".to_owned()),
        ])
        .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1)))
}
