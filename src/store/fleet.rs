//! What the simulated fleet asks: it plays the runtime manager's part in demos and tests,
//! writing `runtime_records`; and the fresh database the tests and benchmarks start from.

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::Store;

/// Creates database `name` on the server `admin_url` points at, empty, dropping one left by
/// an earlier run (a benchmark reuses its name), and returns its URL. For tests and
/// benchmarks, which each want a database of their own on a shared server.
pub async fn fresh_database(admin_url: &str, name: &str) -> Result<String, sqlx::Error> {
    let mut url =
        url::Url::parse(admin_url).map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
    url.set_path(name);
    let quoted = name.replace('"', "\"\"");
    let mut admin = PgConnection::connect(admin_url).await?;
    for statement in [
        format!("DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{quoted}\""),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await.ok();
    Ok(url.to_string())
}

/// The runtime manager's `runtime_records` as healthprobe reads it, for whoever plays the
/// runtime manager's part (the simulated fleet, the demo, tests, benchmarks). Idempotent.
pub(crate) const RUNTIME_RECORDS_SQL: &str = include_str!("runtime_records.sql");

impl Store {
    /// Creates `runtime_records` (and its running index) when absent. Only for a stand-in
    /// runtime manager: healthprobe's own migrations never create it.
    pub async fn create_runtime_records(&self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(RUNTIME_RECORDS_SQL)
            .execute(&self.pool)
            .await
            .map(drop)
    }

    /// Records games as running at the given endpoints (insert or update). Used by the
    /// simulated fleet, which plays the runtime manager's part in demos and tests.
    pub async fn register_running(&self, games: &[(String, String)]) -> Result<(), sqlx::Error> {
        if games.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = games.iter().map(|(id, _)| id.as_str()).collect();
        let endpoints: Vec<&str> = games.iter().map(|(_, e)| e.as_str()).collect();
        sqlx::query(
            "INSERT INTO runtime_records (game_id, status, engine_endpoint, started_at, last_op_at) \
             SELECT g, 'running', e, now(), now() FROM UNNEST($1::text[], $2::text[]) AS t(g, e) \
             ON CONFLICT (game_id) DO UPDATE SET status = 'running', \
               engine_endpoint = EXCLUDED.engine_endpoint, started_at = now(), \
               stopped_at = NULL, last_op_at = now()",
        )
        .bind(ids)
        .bind(endpoints)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Marks games as stopped (the fleet does this when it shuts down).
    pub async fn mark_stopped(&self, game_ids: &[String]) -> Result<u64, sqlx::Error> {
        if game_ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "UPDATE runtime_records SET status = 'stopped', stopped_at = now(), last_op_at = now() \
             WHERE game_id = ANY($1) AND status = 'running'",
        )
        .bind(game_ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
