//! The outbox side of the event log (DESIGN §13): reading unpublished rows without ever
//! trusting their content, and the set-aside rows that the relay skips.
//!
//! Rows are decoded defensively: timestamps arrive as epoch milliseconds computed in SQL
//! (`NULL` for `infinity`), the details as text, and fields too large to ever publish are
//! not fetched at all. Nothing a row holds can make the relay panic or allocate without
//! bound.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;
use crate::envelope::{Details, EventType, HealthEvent};

/// A row whose `game_id`, `container_id` and details together exceed this is never fetched:
/// it could not be published on a server with NATS' default `max_payload` (1 MiB) anyway,
/// and a batch of such rows would cost hundreds of megabytes. It is set aside instead.
pub const MAX_OUTBOX_ROW_BYTES: i64 = 1024 * 1024;

/// Longest error text stored with a set-aside row.
const MAX_ERROR_CHARS: i32 = 2000;

/// A set-aside row, as `healthprobe outbox list` shows it ([`Store::list_set_aside`] names
/// its columns as the fields).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SetAsideRow {
    pub event_id: Uuid,
    /// At most 200 characters of it (the row may be set aside because it is huge).
    pub game_id: String,
    pub event_type: String,
    pub state: String,
    pub error: String,
    pub attempts: i32,
    pub set_aside_at: DateTime<Utc>,
}

/// An unpublished row as [`Store::unpublished_events`] fetches it: the timestamp as epoch
/// milliseconds (`NULL` for `infinity`), the details as text, and `game_id`,
/// `container_id` and details `NULL` when together they exceed [`MAX_OUTBOX_ROW_BYTES`].
#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    event_id: Uuid,
    event_type: String,
    occurred_ms: Option<i64>,
    /// Bytes of `game_id`, `container_id` and details together.
    size: i64,
    game_id: Option<String>,
    container_id: Option<String>,
    details: Option<String>,
}

/// Which set-aside rows a command acts on.
#[derive(Debug, Clone)]
pub enum SetAsideSelection {
    All,
    Ids(Vec<Uuid>),
}

impl Store {
    /// The oldest unpublished events that are not set aside, in commit order. A row that
    /// cannot become an event comes back as [`UndecodableEvent`] with the reason.
    pub(crate) async fn unpublished_events(
        &self,
        limit: i64,
    ) -> Result<Vec<Result<HealthEvent, UndecodableEvent>>, sqlx::Error> {
        self.within_statement_bound(async {
            let rows: Vec<OutboxRow> = sqlx::query_as(
                "SELECT e.event_id, e.event_type, \
                   CASE WHEN isfinite(e.occurred_at) \
                     THEN floor(extract(epoch FROM e.occurred_at) * 1000)::int8 END AS occurred_ms, \
                   s.size, \
                   CASE WHEN s.size <= $2 THEN e.game_id END AS game_id, \
                   CASE WHEN s.size <= $2 THEN e.container_id END AS container_id, \
                   CASE WHEN s.size <= $2 THEN e.details::text END AS details \
                 FROM health_events e \
                 CROSS JOIN LATERAL (SELECT octet_length(e.game_id)::int8 \
                   + octet_length(e.container_id) + octet_length(e.details::text) AS size) s \
                 WHERE e.published_at IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM health_events_set_aside a \
                                   WHERE a.event_id = e.event_id AND a.state <> 'retry') \
                 ORDER BY e.seq LIMIT $1",
            )
            .bind(limit)
            .bind(MAX_OUTBOX_ROW_BYTES)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(decode).collect())
        })
        .await
    }

    /// Sets a row aside with why; a row set aside before (and retried) counts one more
    /// attempt.
    pub async fn set_aside(&self, event_id: Uuid, error: &str) -> Result<(), sqlx::Error> {
        self.within_statement_bound(async {
            sqlx::query(
                "INSERT INTO health_events_set_aside (event_id, error) VALUES ($1, left($2, $3)) \
                 ON CONFLICT (event_id) DO UPDATE SET state = 'set_aside', error = EXCLUDED.error, \
                   attempts = health_events_set_aside.attempts + 1, set_aside_at = now(), \
                   changed_at = now()",
            )
            .bind(event_id)
            .bind(error)
            .bind(MAX_ERROR_CHARS)
            .execute(&self.pool)
            .await
            .map(drop)
        })
        .await
    }

    /// Rows set aside and not yet retried or discarded.
    pub async fn count_set_aside(&self) -> Result<i64, sqlx::Error> {
        self.within_statement_bound(async {
            sqlx::query_scalar(
                "SELECT count(*) FROM health_events_set_aside WHERE state = 'set_aside'",
            )
            .fetch_one(&self.pool)
            .await
        })
        .await
    }

    /// Set-aside rows, oldest first; with `every_state` also the retried and discarded ones.
    pub async fn list_set_aside(
        &self,
        every_state: bool,
        limit: i64,
    ) -> Result<Vec<SetAsideRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT a.event_id, left(e.game_id, 200) AS game_id, e.event_type, a.state, a.error, \
               a.attempts, a.set_aside_at \
             FROM health_events_set_aside a JOIN health_events e USING (event_id) \
             WHERE $1 OR a.state = 'set_aside' ORDER BY e.seq LIMIT $2",
        )
        .bind(every_state)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Gives set-aside rows back to the relay. Returns how many.
    pub async fn retry_set_aside(&self, which: &SetAsideSelection) -> Result<u64, sqlx::Error> {
        self.change_set_aside(which, "retry").await
    }

    /// Skips set-aside rows for good (they stay in the event log). Returns how many.
    pub async fn discard_set_aside(&self, which: &SetAsideSelection) -> Result<u64, sqlx::Error> {
        self.change_set_aside(which, "discarded").await
    }

    async fn change_set_aside(
        &self,
        which: &SetAsideSelection,
        state: &str,
    ) -> Result<u64, sqlx::Error> {
        let (all, ids) = match which {
            SetAsideSelection::All => (true, Vec::new()),
            SetAsideSelection::Ids(ids) => (false, ids.clone()),
        };
        let done = sqlx::query(
            "UPDATE health_events_set_aside SET state = $3, changed_at = now() \
             WHERE state = 'set_aside' AND ($1 OR event_id = ANY($2))",
        )
        .bind(all)
        .bind(ids)
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Turns the defensively fetched columns into an event, or says why not.
fn decode(row: OutboxRow) -> Result<HealthEvent, UndecodableEvent> {
    let OutboxRow {
        event_id,
        event_type,
        occurred_ms,
        size,
        game_id,
        container_id,
        details,
    } = row;
    let event_type = event_type.as_str();
    let undecodable = |reason: String| UndecodableEvent { event_id, reason };
    let (Some(game_id), Some(container_id), Some(details)) = (game_id, container_id, details)
    else {
        return Err(undecodable(format!(
            "row too large to publish: {size} bytes of game_id, container_id and details (limit {MAX_OUTBOX_ROW_BYTES})"
        )));
    };
    let occurred_at = occurred_ms
        .ok_or_else(|| "occurred_at is infinite".to_owned())
        .and_then(|ms| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .ok_or_else(|| format!("occurred_at out of range ({ms} ms since the epoch)"))
        })
        .map_err(undecodable)?;
    let event_type = EventType::parse(event_type).ok_or_else(|| {
        undecodable(format!(
            "unknown event_type {}",
            crate::bounded(event_type, 100)
        ))
    })?;
    let details = serde_json::from_str::<Details>(&details)
        .map_err(|e| undecodable(format!("details do not decode: {e}")))?;
    if details.event_type() != event_type {
        return Err(undecodable(format!(
            "details do not match event_type {:?}",
            event_type.as_str()
        )));
    }
    Ok(HealthEvent {
        event_id,
        game_id,
        container_id,
        occurred_at,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_with(
        occurred_ms: Option<i64>,
        event_type: &str,
        details: Option<&str>,
    ) -> Result<HealthEvent, UndecodableEvent> {
        decode(OutboxRow {
            event_id: Uuid::nil(),
            event_type: event_type.to_owned(),
            occurred_ms,
            size: 10,
            game_id: Some("g".into()),
            container_id: Some(String::new()),
            details: details.map(str::to_owned),
        })
    }

    #[test]
    fn good_rows_decode() {
        let event = decode_with(
            Some(5),
            "probe_recovered",
            Some(r#"{"prior_failure_count":2}"#),
        )
        .unwrap();
        assert_eq!(event.occurred_at.timestamp_millis(), 5);
    }

    #[test]
    fn bad_rows_say_why() {
        let recovered = Some(r#"{"prior_failure_count":2}"#);
        let cases = [
            (None, "probe_recovered", recovered, "infinite"),
            (Some(i64::MAX), "probe_recovered", recovered, "out of range"),
            (Some(1), "probe_exploded", recovered, "unknown event_type"),
            (Some(1), "probe_failed", recovered, "do not match"),
            (
                Some(1),
                "probe_recovered",
                Some("{\"x\":1}"),
                "do not decode",
            ),
            (Some(1), "probe_recovered", None, "too large"),
        ];
        for (ms, event_type, details, why) in cases {
            let bad = decode_with(ms, event_type, details).unwrap_err();
            assert!(bad.reason.contains(why), "{why}: {}", bad.reason);
        }
    }
}

/// An outbox row that could not be decoded. It stays unpublished and is reported.
#[derive(Debug, Clone)]
pub struct UndecodableEvent {
    pub event_id: Uuid,
    pub reason: String,
}

impl Store {
    pub(crate) async fn mark_published(&self, event_ids: &[Uuid]) -> Result<(), sqlx::Error> {
        self.within_statement_bound(async {
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
        self.within_statement_bound(async {
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
