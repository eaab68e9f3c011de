//! One relay at a time (DESIGN §12): the outbox relay runs only in the replica that holds a
//! Postgres advisory lock, taken on a connection of its own. The lock lives as long as
//! that session: a holder that exits or is killed releases it at once (the kernel closes
//! its socket), and another replica takes over within [`CANDIDATE_RETRY`]. A holder that
//! is frozen or cut off keeps its session open, so a candidate that finds the lock held by
//! a replica whose lease has expired ends that session (`pg_terminate_backend`).
//!
//! One publisher reading the outbox in `seq` order keeps every game's events in commit
//! order. The holder checks its session before each round; when the session is gone it
//! stops publishing at once (no shutdown drain: another holder may already be at work).

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio_util::sync::CancellationToken;

use super::relay::{Relay, RelayMonitor, supervise};
use crate::ErrorChain;
use crate::status::StatusBoard;
use crate::store::Store;
use crate::telemetry::Metrics;

/// The advisory lock's two keys: "hpro" and "rely" in ASCII, a pair unlikely to be used by
/// anything else sharing the database.
pub const LOCK_CLASS: i32 = 0x6870_726f;
pub const LOCK_ID: i32 = 0x7265_6c79;

/// A replica without the lock tries again this often.
pub const CANDIDATE_RETRY: Duration = Duration::from_secs(1);

/// The holder checks that its session (and so the lock) is alive this often.
const SESSION_CHECK: Duration = Duration::from_secs(1);

/// Bound on one session check or lock attempt: a hung Postgres is a lost session.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the relay whenever this replica holds the relay lock, until `stop`.
pub struct RelayLeadership {
    pub database_url: String,
    pub store: Store,
    pub metrics: Metrics,
    pub board: StatusBoard,
    /// The lock session's backend pid while held, else 0; shown to the other replicas with
    /// the membership heartbeat.
    pub relay_pid: Arc<AtomicI32>,
    /// Counts the relay's abnormal ends (it is restarted with back-off) for `/status`.
    pub monitor: RelayMonitor,
}

impl RelayLeadership {
    pub async fn run(
        self,
        make_relay: impl Fn() -> Relay + Clone + Send + 'static,
        stop: CancellationToken,
    ) {
        self.board.relay_held(false);
        self.metrics.relay_held(false);
        let mut announced_waiting = false;
        while !stop.is_cancelled() {
            match self.try_acquire().await {
                Ok(Some((conn, pid))) => {
                    announced_waiting = false;
                    self.relay_pid.store(pid, Ordering::Relaxed);
                    self.board.relay_held(true);
                    self.metrics.relay_held(true);
                    tracing::info!(
                        backend_pid = pid,
                        "holding the relay lock: this replica publishes the outbox"
                    );
                    let ended = self.hold(conn, make_relay.clone(), &stop).await;
                    self.relay_pid.store(0, Ordering::Relaxed);
                    self.board.relay_held(false);
                    self.metrics.relay_held(false);
                    tracing::info!(reason = ended, "relay lock released");
                }
                Ok(None) => {
                    if !announced_waiting {
                        tracing::info!("another replica holds the relay lock; standing by");
                        announced_waiting = true;
                    }
                    match self
                        .store
                        .end_expired_relay_holder(LOCK_CLASS, LOCK_ID)
                        .await
                    {
                        Ok(Some(replica)) => {
                            tracing::warn!(replica_id = %replica, "ended the relay session of a replica whose lease expired; taking over")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %ErrorChain(&e), "could not look for an expired relay holder")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "cannot try the relay lock; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(CANDIDATE_RETRY) => {}
            }
        }
    }

    async fn try_acquire(&self) -> Result<Option<(PgConnection, i32)>, sqlx::Error> {
        let attempt = async {
            let mut conn = PgConnection::connect(&self.database_url).await?;
            let (held, pid): (bool, i32) =
                sqlx::query_as("SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()")
                    .bind(LOCK_CLASS)
                    .bind(LOCK_ID)
                    .fetch_one(&mut conn)
                    .await?;
            if held {
                Ok(Some((conn, pid)))
            } else {
                let _ = conn.close().await;
                Ok(None)
            }
        };
        tokio::time::timeout(SESSION_TIMEOUT, attempt)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    /// Runs the relay (supervised: restarted with back-off if it ends abnormally) while the
    /// session lives. Returns why it stopped.
    async fn hold(
        &self,
        mut conn: PgConnection,
        make_relay: impl Fn() -> Relay + Send + 'static,
        stop: &CancellationToken,
    ) -> &'static str {
        let relay_stop = CancellationToken::new();
        let start = {
            let relay_stop = relay_stop.clone();
            move || make_relay().run(relay_stop.clone())
        };
        let mut relay_task = std::pin::pin!(supervise(
            start,
            relay_stop.clone(),
            self.monitor.clone(),
            self.metrics.clone()
        ));
        let mut check = tokio::time::interval(SESSION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                () = &mut relay_task => break "the relay stopped",
                _ = stop.cancelled() => {
                    // Shutdown: let the relay drain what it can while the lock is held.
                    relay_stop.cancel();
                    (&mut relay_task).await;
                    break "shutdown requested";
                }
                _ = check.tick() => {
                    let alive = tokio::time::timeout(SESSION_TIMEOUT, sqlx::query("SELECT 1").execute(&mut conn)).await;
                    match alive {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %ErrorChain(&e), "relay lock session lost; publishing stops at once");
                            break "the lock session was lost";
                        }
                        Err(_) => {
                            tracing::warn!(timeout = ?SESSION_TIMEOUT, "relay lock session not answering; publishing stops at once");
                            break "the lock session stopped answering";
                        }
                    }
                }
            }
        };
        // Lock lost: the relay is told to stop. It may finish the batch in hand (at most its
        // shutdown drain) while a new holder starts: both publish in `seq` order, so each
        // game's events stay in commit order, and JetStream drops the repeats by
        // Nats-Msg-Id.
        relay_stop.cancel();
        let _ = tokio::time::timeout(SESSION_TIMEOUT, conn.close()).await;
        reason
    }
}
