//! Retention of the event log (DESIGN §16): published rows older than the retention are
//! deleted in small batches, oldest first. Never a row that is unpublished or set aside, and
//! never the latest episode of a game: a new event's episode number is the game's highest
//! plus one, and a recovery closes the game's highest failure, so those rows must stay for
//! the one-event-per-transition key to keep meaning what it says (DESIGN §12).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{STATEMENT_TIMEOUT, Store};

/// Where a retention pass is in the log: the last row it examined, ordered by
/// `(published_at, seq)`.
pub type RetentionCursor = (DateTime<Utc>, i64);

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionBatch {
    /// Rows deleted.
    pub deleted: u64,
    /// Rows old enough that were looked at (deleted or kept).
    pub examined: u64,
    /// Where the next batch starts; `None` when nothing was examined.
    pub cursor: Option<RetentionCursor>,
}

/// What the batch's statement answers: counts, and the last row it examined.
#[derive(sqlx::FromRow)]
struct BatchRow {
    deleted: i64,
    examined: i64,
    last_published_at: Option<DateTime<Utc>>,
    last_seq: Option<i64>,
}

impl Store {
    /// Deletes up to `limit` published rows older than `retention` that come after `after`,
    /// in one short transaction. Rows are locked one by one as they are deleted; nothing else
    /// ever writes a published row, so no tick or relay waits on this.
    pub(crate) async fn delete_expired_events(
        &self,
        retention: Duration,
        after: Option<RetentionCursor>,
        limit: i64,
    ) -> Result<RetentionBatch, sqlx::Error> {
        self.within_statement_bound(async {
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET LOCAL statement_timeout = {}",
                STATEMENT_TIMEOUT.as_millis()
            )))
            .execute(&mut *tx)
            .await?;
            let row: BatchRow = sqlx::query_as(
                "WITH examined AS ( \
                   SELECT e.event_id, e.game_id, e.episode, e.published_at, e.seq \
                     FROM health_events e \
                    WHERE e.published_at IS NOT NULL \
                      AND e.published_at < now() - make_interval(secs => $1) \
                      AND ($2::timestamptz IS NULL OR (e.published_at, e.seq) > ($2, $3)) \
                    ORDER BY e.published_at, e.seq \
                    LIMIT $4), \
                 doomed AS ( \
                   SELECT x.event_id FROM examined x \
                    WHERE NOT EXISTS (SELECT 1 FROM health_events_set_aside a \
                                       WHERE a.event_id = x.event_id) \
                      AND (x.episode IS NULL OR x.episode < \
                           (SELECT max(m.episode) FROM health_events m WHERE m.game_id = x.game_id))), \
                 deleted AS ( \
                   DELETE FROM health_events d USING doomed WHERE d.event_id = doomed.event_id \
                   RETURNING 1), \
                 last AS ( \
                   SELECT published_at, seq FROM examined ORDER BY published_at DESC, seq DESC LIMIT 1) \
                 SELECT (SELECT count(*) FROM deleted) AS deleted, \
                        (SELECT count(*) FROM examined) AS examined, \
                        (SELECT published_at FROM last) AS last_published_at, \
                        (SELECT seq FROM last) AS last_seq",
            )
            .bind(retention.as_secs_f64())
            .bind(after.map(|(at, _)| at))
            .bind(after.map_or(0, |(_, seq)| seq))
            .bind(limit)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(RetentionBatch {
                deleted: row.deleted.max(0) as u64,
                examined: row.examined.max(0) as u64,
                cursor: row.last_published_at.zip(row.last_seq),
            })
        })
        .await
    }
}
