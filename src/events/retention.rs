//! Deleting published events older than `HEALTHPROBE_EVENT_RETENTION` (DESIGN §16). Run by
//! the replica that holds the relay lock, beside the relay, so one replica does it at a
//! time; small batches with a pause between them, so Postgres serves ticks meanwhile.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ErrorChain;
use crate::periodic::{Next, Periodic};
use crate::store::{RetentionCursor, Store};

/// Rows examined per batch: one short transaction of a few milliseconds.
pub const RETENTION_BATCH: i64 = 500;

/// Pause between two batches of one pass: a backlog of millions of rows (a first pass after
/// an upgrade from a version that never deleted) is worked off without holding Postgres.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// A pass runs when the relay lock is taken, then this often: rows expire by the day, so a
/// pass every few minutes keeps the log within a few minutes of its retention.
pub(crate) const RETENTION_EVERY: Duration = Duration::from_secs(300);

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted: u64,
    pub examined: u64,
    pub batches: u64,
}

#[derive(Clone)]
pub struct Retention {
    store: Store,
    retention: Duration,
}

impl Retention {
    pub fn new(store: Store, retention: Duration) -> Self {
        Self { store, retention }
    }

    /// One pass over the expired rows, batch by batch, until a batch finds fewer than it
    /// asked for or `stop` fires. Public so tests drive it directly.
    pub async fn pass(&self, stop: &CancellationToken) -> Result<RetentionReport, sqlx::Error> {
        let mut report = RetentionReport::default();
        let mut cursor: Option<RetentionCursor> = None;
        while !stop.is_cancelled() {
            let batch = self
                .store
                .delete_expired_events(self.retention, cursor, RETENTION_BATCH)
                .await?;
            report.batches += 1;
            report.deleted += batch.deleted;
            report.examined += batch.examined;
            if (batch.examined as i64) < RETENTION_BATCH {
                break;
            }
            cursor = batch.cursor;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(BATCH_PAUSE) => {}
            }
        }
        Ok(report)
    }

    /// A pass now, then one every [`RETENTION_EVERY`] ([`crate::periodic`]), until `stop`.
    /// A failed pass is logged and tried again at the next turn: nothing depends on it but
    /// disk space.
    pub async fn run(self, stop: CancellationToken) {
        // Nothing on the status surface depends on it: its status is the log.
        crate::periodic::run(self, &stop, &watch::Sender::new(())).await;
        tracing::debug!("retention stopped");
    }
}

impl Periodic for Retention {
    type Status = ();

    fn period(&self) -> Duration {
        RETENTION_EVERY
    }

    async fn turn(&mut self, stop: &CancellationToken) -> Next {
        match self.pass(stop).await {
            Ok(report) if report.deleted > 0 => tracing::info!(
                deleted = report.deleted,
                kept = report.examined - report.deleted,
                retention = %humantime::format_duration(self.retention),
                "published events past their retention deleted"
            ),
            Ok(report) => tracing::debug!(
                examined = report.examined,
                "no published event past its retention"
            ),
            Err(e) => tracing::warn!(
                error = %ErrorChain(&e),
                retry_in = ?RETENTION_EVERY,
                "deleting published events past their retention failed"
            ),
        }
        Next::Period
    }

    fn status(&self) {}
}
