//! One relay at a time (DESIGN §12): the outbox relay runs only in the replica that holds a
//! Postgres advisory lock, taken on a connection of its own. The lock lives as long as
//! that session: a holder that exits or is killed releases it at once (the kernel closes
//! its socket), and another replica takes over within [`CANDIDATE_RETRY`]. A holder that
//! is frozen or cut off keeps its session open, so a candidate that finds the lock held by
//! a replica whose lease has expired ends that session (`pg_terminate_backend`).
//!
//! One publisher reading the outbox in `seq` order keeps every game's events in commit
//! order. The holder checks its session every [`SESSION_CHECK`]; when the session is gone
//! it fences the relay (the relay publishes no further row, skips its shutdown drain) and
//! waits for the relay task to end before it stands by: another holder may already be at
//! work. A batch already sent when the loss is seen is only acknowledged; JetStream drops
//! its repeats by `Nats-Msg-Id`. The lock's statements are in `store::RelayLock`.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::relay::{Relay, RelayMonitor, supervise};
use super::retention::Retention;
use crate::ErrorChain;
use crate::status::StatusBoard;
use crate::store::{LOCK_CLASS, LOCK_ID, RelayLock, Store};
use crate::telemetry::Metrics;

/// A replica without the lock tries again this often.
pub(crate) const CANDIDATE_RETRY: Duration = Duration::from_secs(1);

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
    /// The lock session's backend pid while held, else `None`: the membership heartbeat
    /// shows it to the other replicas.
    pub relay_pid: watch::Sender<Option<i32>>,
    /// Counts the relay's abnormal ends (it is restarted with back-off) for `/status`.
    pub monitor: RelayMonitor,
    /// Deletes published events past their retention while the lock is held (one replica
    /// at a time); `None`: never.
    pub retention: Option<Retention>,
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
            match RelayLock::try_acquire(&self.database_url, SESSION_TIMEOUT).await {
                Ok(Some(lock)) => {
                    let pid = lock.backend_pid();
                    announced_waiting = false;
                    self.relay_pid.send_replace(Some(pid));
                    self.board.relay_held(true);
                    self.metrics.relay_held(true);
                    tracing::info!(
                        backend_pid = pid,
                        "holding the relay lock: this replica publishes the outbox"
                    );
                    let ended = self.hold(lock, make_relay.clone(), &stop).await;
                    self.relay_pid.send_replace(None);
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

    /// Runs the relay (supervised: restarted with back-off if it ends abnormally) while the
    /// session lives. Returns why it stopped.
    async fn hold(
        &self,
        mut lock: RelayLock,
        make_relay: impl Fn() -> Relay + Send + 'static,
        stop: &CancellationToken,
    ) -> &'static str {
        let relay_stop = CancellationToken::new();
        // Cancelled the moment the lock is known lost: the relay publishes no further row.
        let fence = CancellationToken::new();
        let start = {
            let (relay_stop, fence) = (relay_stop.clone(), fence.clone());
            move || {
                make_relay()
                    .fenced_by(fence.clone())
                    .run(relay_stop.clone())
            }
        };
        let mut relay_task = std::pin::pin!(supervise(
            start,
            relay_stop.clone(),
            self.monitor.clone(),
            self.metrics.clone()
        ));
        // Retention beside the relay, stopped with it; it never delays a publish.
        let retention = self.retention.clone();
        let retention_stop = relay_stop.clone();
        let mut retention_task = std::pin::pin!(async move {
            if let Some(retention) = retention {
                retention.run(retention_stop).await;
            }
        });
        let mut retention_done = false;
        let mut check = tokio::time::interval(SESSION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut relay_ended = false;
        let reason = loop {
            tokio::select! {
                () = &mut relay_task => {
                    relay_ended = true;
                    break "the relay stopped";
                }
                () = &mut retention_task, if !retention_done => retention_done = true,
                _ = stop.cancelled() => {
                    // Shutdown: let the relay drain what it can while the lock is held.
                    relay_stop.cancel();
                    (&mut relay_task).await;
                    relay_ended = true;
                    break "shutdown requested";
                }
                _ = check.tick() => {
                    if let Err(e) = lock.check(SESSION_TIMEOUT).await {
                        fence.cancel();
                        tracing::warn!(error = %ErrorChain(&e), "relay lock session lost; the relay is fenced: it publishes no further row");
                        break "the lock session was lost";
                    }
                }
            }
        };
        // Lock lost (or the relay stopped): fenced, the relay ends without a drain; wait
        // for it, so nothing of this replica publishes once another may hold the lock.
        relay_stop.cancel();
        if !relay_ended {
            relay_task.await;
        }
        lock.release(SESSION_TIMEOUT).await;
        reason
    }
}
