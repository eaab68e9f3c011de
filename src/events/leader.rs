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

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::relay::{Relay, RelayMonitor, supervise};
use super::retention::Retention;
use crate::ErrorChain;
use crate::periodic::{self, Next, Periodic};
use crate::status::RelayRole;
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
    /// Counts the relay's abnormal ends (it is restarted with back-off) for `/status`.
    pub monitor: RelayMonitor,
    /// Deletes published events past their retention while the lock is held (one replica
    /// at a time); `None`: never.
    pub retention: Option<Retention>,
}

impl RelayLeadership {
    /// Stands by or holds the lock, on the periodic driver ([`crate::periodic`]): a turn
    /// tries the lock (standing by) or checks the session (holding). The role is published
    /// on `role` after each turn: the status surface shows it, and the membership heartbeat
    /// tells the others the lock session's backend pid. At `stop` the relay drains what it
    /// can while the lock is still held, then the lock is released.
    pub async fn run(
        self,
        make_relay: impl Fn() -> Relay + Send + Sync + 'static,
        role: watch::Sender<Option<RelayRole>>,
        stop: CancellationToken,
    ) {
        self.metrics.relay_held(false);
        let leader = Leader {
            leadership: self,
            make_relay: std::sync::Arc::new(make_relay),
            held: None,
            announced_waiting: false,
        };
        let mut leader = periodic::run(leader, &stop, &role).await;
        if let Some(held) = leader.held.take() {
            // Shutdown: the relay drains what it can while the lock is held.
            leader.release(held, "shutdown requested").await;
        }
        periodic::publish(&role, leader.status());
    }
}

/// The leadership as a [`Periodic`] job: standing by, or holding the lock with the relay
/// and retention running beside.
struct Leader<M> {
    leadership: RelayLeadership,
    make_relay: std::sync::Arc<M>,
    held: Option<Held>,
    announced_waiting: bool,
}

/// The lock, held, and what runs while it is.
struct Held {
    lock: RelayLock,
    /// Stops the relay (with its shutdown drain, unless fenced) and retention.
    relay_stop: CancellationToken,
    /// Cancelled the moment the lock is known lost: the relay publishes no further row.
    fence: CancellationToken,
    /// The relay, supervised (restarted with back-off if it ends abnormally); ended if the
    /// leadership is dropped, as it was when it ran inside the leadership's own future.
    relay: AbortOnDropHandle<()>,
    /// Cancelled when the relay's task ends, whatever ends it (the leadership's wake-up).
    relay_ended: CancellationToken,
    /// Retention beside the relay; it never delays a publish. Dropped (ended) with the lock.
    _retention: Option<AbortOnDropHandle<()>>,
}

impl<M: Fn() -> Relay + Send + Sync + 'static> Leader<M> {
    /// A turn standing by: tries the lock; when another replica holds it, ends that
    /// replica's session if its lease has expired.
    async fn try_lock(&mut self) {
        let lead = &self.leadership;
        match RelayLock::try_acquire(&lead.database_url, SESSION_TIMEOUT).await {
            Ok(Some(lock)) => {
                self.announced_waiting = false;
                lead.metrics.relay_held(true);
                tracing::info!(
                    backend_pid = lock.backend_pid(),
                    "holding the relay lock: this replica publishes the outbox"
                );
                self.held = Some(self.hold(lock));
            }
            Ok(None) => {
                if !self.announced_waiting {
                    tracing::info!("another replica holds the relay lock; standing by");
                    self.announced_waiting = true;
                }
                match lead
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
    }

    /// Starts the supervised relay (fenced by the lock) and retention beside it.
    fn hold(&self, lock: RelayLock) -> Held {
        let relay_stop = CancellationToken::new();
        let fence = CancellationToken::new();
        let start = {
            let (make_relay, relay_stop, fence) =
                (self.make_relay.clone(), relay_stop.clone(), fence.clone());
            move || {
                make_relay()
                    .fenced_by(fence.clone())
                    .run(relay_stop.clone())
            }
        };
        let lead = &self.leadership;
        let relay_ended = CancellationToken::new();
        let supervised = supervise(
            start,
            relay_stop.clone(),
            lead.monitor.clone(),
            lead.metrics.clone(),
        );
        let relay = AbortOnDropHandle::new(tokio::spawn({
            let ended = relay_ended.clone().drop_guard();
            async move {
                let _ended = ended;
                supervised.await;
            }
        }));
        let retention = lead.retention.clone().map(|retention| {
            AbortOnDropHandle::new(tokio::spawn(retention.run(relay_stop.clone())))
        });
        Held {
            lock,
            relay_stop,
            fence,
            relay,
            relay_ended,
            _retention: retention,
        }
    }

    /// Stops the relay and waits for it to end (fenced, it ends without a drain: nothing
    /// of this replica publishes once another may hold the lock), then closes the session.
    async fn release(&mut self, held: Held, reason: &'static str) {
        held.relay_stop.cancel();
        if let Err(e) = held.relay.await {
            tracing::error!(error = %e, "outbox relay supervisor ended abnormally");
        }
        held.lock.release(SESSION_TIMEOUT).await;
        self.leadership.metrics.relay_held(false);
        tracing::info!(reason, "relay lock released");
    }
}

impl<M: Fn() -> Relay + Send + Sync + 'static> Periodic for Leader<M> {
    type Status = Option<RelayRole>;

    fn period(&self) -> Duration {
        if self.held.is_some() {
            SESSION_CHECK
        } else {
            CANDIDATE_RETRY
        }
    }

    async fn turn(&mut self, _stop: &CancellationToken) -> Next {
        let Some(mut held) = self.held.take() else {
            self.try_lock().await;
            return Next::Period;
        };
        if held.relay_ended.is_cancelled() {
            self.release(held, "the relay stopped").await;
        } else if let Err(e) = held.lock.check(SESSION_TIMEOUT).await {
            // Fenced first, then stopped at once: a fenced relay that ended before its
            // supervisor saw the stop would be counted as an abnormal end.
            held.fence.cancel();
            held.relay_stop.cancel();
            tracing::warn!(error = %ErrorChain(&e), "relay lock session lost; the relay is fenced: it publishes no further row");
            self.release(held, "the lock session was lost").await;
        } else {
            self.held = Some(held);
        }
        Next::Period
    }

    /// The relay's task ended (it never does unless stopped): the next turn releases.
    fn wake(&mut self) -> impl Future<Output = ()> + Send {
        let ended = self.held.as_ref().map(|held| held.relay_ended.clone());
        async move {
            match ended {
                Some(ended) => ended.cancelled_owned().await,
                None => std::future::pending().await,
            }
        }
    }

    fn status(&self) -> Option<RelayRole> {
        Some(match &self.held {
            Some(held) => RelayRole::Holding {
                backend_pid: held.lock.backend_pid(),
            },
            None => RelayRole::StandingBy,
        })
    }
}
