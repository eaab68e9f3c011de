//! The relay lock (DESIGN §12): a Postgres advisory lock taken on a connection of its own,
//! so it lives exactly as long as that session. Every statement of the relay's leadership
//! is here; the rules of holding it are in `events::leader`.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use thiserror::Error;

/// The advisory lock's two keys: "hpro" and "rely" in ASCII, a pair unlikely to be used by
/// anything else sharing the database.
pub(crate) const LOCK_CLASS: i32 = 0x6870_726f;
pub(crate) const LOCK_ID: i32 = 0x7265_6c79;

/// Why the lock could not be tried or its session checked.
#[derive(Debug, Error)]
pub enum LockError {
    /// The lock's own connection (not the pool) did not answer in time: a hung Postgres or
    /// network is a lost session.
    #[error("the relay lock's connection did not answer within {0:?}")]
    Timeout(Duration),
    #[error("on the relay lock's connection")]
    Postgres(#[from] sqlx::Error),
}

/// The relay lock, held. Dropping it closes the session, which releases the lock.
#[derive(Debug)]
pub struct RelayLock {
    conn: PgConnection,
    backend_pid: i32,
}

impl RelayLock {
    /// Opens a connection and tries the lock once: `None` when another session holds it.
    /// Bounded by `limit` as a whole.
    pub(crate) async fn try_acquire(
        database_url: &str,
        limit: Duration,
    ) -> Result<Option<Self>, LockError> {
        let attempt = async {
            let mut conn = PgConnection::connect(database_url).await?;
            let (held, backend_pid): (bool, i32) =
                sqlx::query_as("SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()")
                    .bind(LOCK_CLASS)
                    .bind(LOCK_ID)
                    .fetch_one(&mut conn)
                    .await?;
            if held {
                Ok(Some(Self { conn, backend_pid }))
            } else {
                let _ = conn.close().await;
                Ok(None)
            }
        };
        tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or(Err(LockError::Timeout(limit)))
    }

    /// The backend pid of the lock's session, which the other replicas may end when this
    /// replica's lease has expired (`Store::end_expired_relay_holder`).
    pub(crate) fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the session, and so the lock, is still there. Bounded by `limit`.
    pub async fn check(&mut self, limit: Duration) -> Result<(), LockError> {
        match tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&mut self.conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(LockError::Timeout(limit)),
        }
    }

    /// Closes the session (releasing the lock), waiting at most `limit` for a clean close.
    pub async fn release(self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.conn.close()).await;
    }
}
