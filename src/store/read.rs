//! What the status surface asks (`GET /games`, `/games/counts`, `/events`,
//! `healthprobe status`): read models over the running records, the snapshots and the log.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;

/// One row of the per-game health view (`GET /games`, `healthprobe status`): a running
/// record joined to its snapshot. A running game never probed yet has no snapshot and shows
/// as `unknown` with empty observation fields; a game whose override disables it shows as
/// `disabled` (DESIGN §16), with what its snapshot held before. [`Store::games_page`]
/// names its columns as the fields.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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

/// A row of [`Store::latest_events`]: the timestamp as epoch milliseconds (`NULL` for
/// `infinity`), so a row beyond chrono's range is read, not decoded into an error.
#[derive(sqlx::FromRow)]
struct LoggedEventRow {
    event_id: Uuid,
    game_id: String,
    container_id: String,
    event_type: String,
    occurred_ms: Option<i64>,
    details: serde_json::Value,
    published: bool,
}

impl From<LoggedEventRow> for LoggedEvent {
    fn from(row: LoggedEventRow) -> Self {
        Self {
            event_id: row.event_id,
            game_id: row.game_id,
            container_id: row.container_id,
            event_type: row.event_type,
            occurred_at: row.occurred_ms.and_then(DateTime::from_timestamp_millis),
            details: row.details,
            published: row.published,
        }
    }
}

/// Which games a page of [`Store::games_page`] holds.
#[derive(Debug, Clone, Default)]
pub struct GamesQuery {
    /// `health_snapshots.status`; `unknown` also matches running games without a snapshot,
    /// `disabled` the games an override disables.
    pub status: Option<String>,
    /// A glob on `game_id` (`*` any run, `?` one character), matched in full.
    pub game_id_glob: Option<String>,
    /// Keyset cursor: only games whose id sorts after this one.
    pub after: Option<String>,
    pub limit: i64,
}

/// Turns a glob (`*`, `?`) into a `LIKE` pattern, escaping `LIKE`'s own wildcards and the
/// escape character so a game id containing `%` or `_` matches only itself.
pub(crate) fn glob_to_like(glob: &str) -> String {
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
    /// Served by the partial index on running records. The probe times are the later of the
    /// snapshot row's and the probe marks' (a steady game's row is not rewritten per probe).
    pub async fn games_page(&self, query: &GamesQuery) -> Result<Vec<GameView>, sqlx::Error> {
        self.within_statement_bound(async {
            let like = query.game_id_glob.as_deref().map(glob_to_like);
            sqlx::query_as(
                "WITH page AS (SELECT r.game_id, r.current_container_id, r.engine_endpoint, \
                   CASE WHEN o.disabled THEN 'disabled' ELSE COALESCE(s.status, 'unknown') END AS status, \
                   COALESCE(s.consecutive_failures, 0) AS consecutive_failures, \
                   s.last_probe_at, s.last_success_at, s.last_latency_ms, s.last_status, \
                   s.last_error, s.last_failure_kind \
                 FROM runtime_records r LEFT JOIN health_snapshots s ON s.game_id = r.game_id \
                 LEFT JOIN health_probe_overrides o ON o.game_id = r.game_id \
                 WHERE r.status = 'running' \
                   AND ($1::text IS NULL OR r.game_id > $1) \
                   AND ($2::text IS NULL OR r.game_id LIKE $2) \
                   AND ($3::text IS NULL OR \
                        CASE WHEN o.disabled THEN 'disabled' ELSE COALESCE(s.status, 'unknown') END = $3) \
                 ORDER BY r.game_id LIMIT $4), \
                 marks AS (SELECT DISTINCT ON (u.game_id) u.game_id, u.probed_at, \
                   u.latency_ms, u.succeeded \
                 FROM health_probe_marks m, \
                   unnest(m.game_ids, m.probed_at, m.latency_ms, m.succeeded) \
                     AS u(game_id, probed_at, latency_ms, succeeded) \
                 WHERE u.game_id IN (SELECT game_id FROM page) \
                 ORDER BY u.game_id, u.probed_at DESC) \
                 SELECT p.game_id, p.current_container_id AS container_id, p.engine_endpoint, \
                   p.status, p.consecutive_failures, \
                   GREATEST(p.last_probe_at, k.probed_at) AS last_probe_at, \
                   GREATEST(p.last_success_at, CASE WHEN k.succeeded THEN k.probed_at END) \
                     AS last_success_at, \
                   CASE WHEN k.probed_at > p.last_probe_at THEN k.latency_ms::float8 \
                     ELSE p.last_latency_ms END AS last_latency_ms, \
                   p.last_status, p.last_error, p.last_failure_kind \
                 FROM page p LEFT JOIN marks k ON k.game_id = p.game_id \
                 ORDER BY p.game_id",
            )
            .bind(query.after.as_deref())
            .bind(like)
            .bind(query.status.as_deref())
            .bind(query.limit)
            .fetch_all(&self.pool)
            .await
        })
        .await
    }

    /// How many running games are in each health status (`unknown` includes games without
    /// a snapshot yet): the fleet page's totals. One pass over the running records.
    pub(crate) async fn status_counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        self.within_statement_bound(
            sqlx::query_as(
                "SELECT CASE WHEN o.disabled THEN 'disabled' \
                   ELSE COALESCE(s.status, 'unknown') END AS status, count(*) \
                 FROM runtime_records r LEFT JOIN health_snapshots s ON s.game_id = r.game_id \
                 LEFT JOIN health_probe_overrides o ON o.game_id = r.game_id \
                 WHERE r.status = 'running' GROUP BY 1",
            )
            .fetch_all(&self.pool),
        )
        .await
    }

    /// The latest `limit` events of the log, newest first, as they were recorded (details
    /// as stored, whether the relay has published them). Served by the `seq` index.
    pub async fn latest_events(&self, limit: i64) -> Result<Vec<LoggedEvent>, sqlx::Error> {
        let rows: Vec<LoggedEventRow> = self
            .within_statement_bound(
                sqlx::query_as(
                    "SELECT event_id, game_id, container_id, event_type, \
                       CASE WHEN isfinite(occurred_at) \
                         THEN floor(extract(epoch FROM occurred_at) * 1000)::int8 END AS occurred_ms, \
                       details, published_at IS NOT NULL AS published \
                     FROM health_events ORDER BY seq DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows.into_iter().map(LoggedEvent::from).collect())
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
