//! The fleet page's per-game history (`GET /games/history`): each game's transitions in a
//! window and what its record and snapshot say now. Reads the event log only; nothing is
//! written for it.

use chrono::{DateTime, Utc};

use super::Store;
use crate::history::{Current, Transition};

/// Most games one request may ask about: a page of the fleet page holds 100.
pub const HISTORY_MAX_GAMES: usize = 200;

/// A running game's record and snapshot, as [`Store::failure_history`] reads them.
#[derive(sqlx::FromRow)]
struct CurrentRow {
    game_id: String,
    container_id: Option<String>,
    started_at: Option<DateTime<Utc>>,
    failing: bool,
}

/// One transition of the log, with the game it belongs to.
#[derive(sqlx::FromRow)]
struct TransitionRow {
    game_id: String,
    failed: bool,
    at: DateTime<Utc>,
    container_id: String,
}

impl Store {
    /// For each of `game_ids` that is running: its `probe_failed` / `probe_recovered` since
    /// `since` plus the last one before (commit order), and its current container and
    /// status. Games not running are left out.
    pub(crate) async fn failure_history(
        &self,
        game_ids: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, Current, Vec<Transition>)>, sqlx::Error> {
        self.within_statement_bound(async {
            let current: Vec<CurrentRow> = sqlx::query_as(
                "SELECT r.game_id, r.current_container_id AS container_id, \
                   CASE WHEN isfinite(r.started_at) THEN r.started_at END AS started_at, \
                   coalesce(s.status = 'failing', false) AS failing \
                 FROM runtime_records r LEFT JOIN health_snapshots s USING (game_id) \
                 WHERE r.game_id = ANY($1) AND r.status = 'running' ORDER BY r.game_id",
            )
            .bind(game_ids)
            .fetch_all(&self.pool)
            .await?;
            // Events of the window, and the last one before it (whether the window opens
            // on an episode). Rows with a timestamp no client can show are skipped.
            let events: Vec<TransitionRow> = sqlx::query_as(
                "SELECT game_id, event_type = 'probe_failed' AS failed, occurred_at AS at, \
                   container_id FROM ( \
                   SELECT game_id, event_type, occurred_at, container_id, seq FROM health_events \
                    WHERE game_id = ANY($1) AND occurred_at >= $2 \
                      AND event_type IN ('probe_failed', 'probe_recovered') \
                   UNION ALL \
                   SELECT * FROM ( \
                     SELECT DISTINCT ON (game_id) game_id, event_type, occurred_at, container_id, seq \
                       FROM health_events \
                      WHERE game_id = ANY($1) AND occurred_at < $2 \
                        AND event_type IN ('probe_failed', 'probe_recovered') \
                      ORDER BY game_id, seq DESC) before \
                 ) e WHERE isfinite(occurred_at) ORDER BY game_id, seq",
            )
            .bind(game_ids)
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
            let mut out: Vec<(String, Current, Vec<Transition>)> = current
                .into_iter()
                .map(|row| {
                    let current = Current {
                        container_id: row.container_id,
                        started_at: row.started_at,
                        failing: row.failing,
                    };
                    (row.game_id, current, Vec::new())
                })
                .collect();
            // Postgres orders by its collation, not by bytes: look games up by id.
            let index: std::collections::HashMap<String, usize> = out
                .iter()
                .enumerate()
                .map(|(i, (id, _, _))| (id.clone(), i))
                .collect();
            for row in events {
                if let Some(&i) = index.get(&row.game_id) {
                    out[i].2.push(Transition {
                        failed: row.failed,
                        at: row.at,
                        container_id: row.container_id,
                    });
                }
            }
            Ok(out)
        })
        .await
    }
}
