//! What the replicas ask: the membership table (heartbeats and leases) and the relay
//! lock's holder (DESIGN §12).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Store;

/// A replica as the membership table shows it (a row of [`Store::heartbeat`] and
/// [`Store::members`], columns named as the fields).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Member {
    pub replica_id: String,
    pub status_addr: Option<String>,
    pub version: String,
    pub heartbeat_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    /// The lease has not expired (by Postgres' clock).
    pub live: bool,
    /// The member's last tick: games it owned, and of those, games not seen healthy
    /// (failed or not attempted). `None` from versions before 0.6.0 or before its first tick.
    pub owned_games: Option<i32>,
    pub failing_games: Option<i32>,
    /// Stepped out of the membership: its own probes fail where the others' do not
    /// (DESIGN §15); it owns no game until they succeed again.
    pub degraded: bool,
}

/// This replica's heartbeat: what it tells the others about itself.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub replica_id: &'a str,
    pub status_addr: Option<&'a str>,
    pub version: &'a str,
    pub lease_ttl: Duration,
    /// Backend pid of the connection holding the relay lock, when this replica holds it.
    pub relay_pid: Option<i32>,
    /// Rows of members whose lease expired this long ago are removed.
    pub forget_after: Duration,
    /// This replica's last tick, told to the others (the mass-failure hold compares).
    pub owned_games: Option<i32>,
    pub failing_games: Option<i32>,
    pub degraded: bool,
}

impl Store {
    /// Renews this replica's lease and reads every member, in one statement. Postgres'
    /// clock decides what is live, so replicas' clocks need not agree.
    pub async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<Vec<Member>, sqlx::Error> {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.within_statement_bound(sqlx::query_as(
            "WITH me AS ( \
               INSERT INTO healthprobe_members \
                 (replica_id, status_addr, version, heartbeat_at, lease_expires_at, relay_pid, \
                  owned_games, failing_games, degraded) \
               VALUES ($1, $2, $3, now(), now() + $4 * interval '1 millisecond', $5, $7, $8, $9) \
               ON CONFLICT (replica_id) DO UPDATE SET status_addr = EXCLUDED.status_addr, \
                 version = EXCLUDED.version, heartbeat_at = now(), \
                 lease_expires_at = EXCLUDED.lease_expires_at, relay_pid = EXCLUDED.relay_pid, \
                 owned_games = EXCLUDED.owned_games, failing_games = EXCLUDED.failing_games, \
                 degraded = EXCLUDED.degraded \
               RETURNING replica_id, status_addr, version, heartbeat_at, lease_expires_at, true AS live, \
                 owned_games, failing_games, degraded), \
             forgotten AS ( \
               DELETE FROM healthprobe_members \
               WHERE replica_id <> $1 AND lease_expires_at < now() - $6 * interval '1 millisecond') \
             SELECT replica_id, status_addr, version, heartbeat_at, lease_expires_at, \
                    lease_expires_at > now() AS live, owned_games, failing_games, degraded \
               FROM healthprobe_members WHERE replica_id <> $1 \
             UNION ALL SELECT * FROM me ORDER BY replica_id",
        )
        .bind(beat.replica_id)
        .bind(beat.status_addr)
        .bind(beat.version)
        .bind(millis(beat.lease_ttl))
        .bind(beat.relay_pid)
        .bind(millis(beat.forget_after))
        .bind(beat.owned_games)
        .bind(beat.failing_games)
        .bind(beat.degraded)
        .fetch_all(&self.pool))
        .await
    }

    /// Every member, live or not, for `healthprobe status --members`.
    pub async fn members(&self) -> Result<Vec<Member>, sqlx::Error> {
        self.within_statement_bound(
            sqlx::query_as(
                "SELECT replica_id, status_addr, version, heartbeat_at, lease_expires_at, \
                    lease_expires_at > now() AS live, owned_games, failing_games, degraded \
             FROM healthprobe_members ORDER BY replica_id",
            )
            .fetch_all(&self.pool),
        )
        .await
    }

    /// Leaves the membership (SIGTERM): the others share this replica's games at their next
    /// heartbeat instead of waiting for its lease to expire.
    pub async fn leave(&self, replica_id: &str) -> Result<(), sqlx::Error> {
        self.within_statement_bound(
            sqlx::query("DELETE FROM healthprobe_members WHERE replica_id = $1")
                .bind(replica_id)
                .execute(&self.pool),
        )
        .await
        .map(drop)
    }

    /// Ends the Postgres session of a relay holder whose lease has expired (a frozen or
    /// cut-off process keeps its connection, and with it the advisory lock, open). Only a
    /// backend that really holds the lock `(lock_class, lock_id)` is ended. Returns the
    /// replica whose session was ended.
    pub(crate) async fn end_expired_relay_holder(
        &self,
        lock_class: i32,
        lock_id: i32,
    ) -> Result<Option<String>, sqlx::Error> {
        // The holder is chosen first, in a materialised step: in one WHERE clause Postgres
        // may call pg_terminate_backend before it checks the lease, ending live holders.
        self.within_statement_bound(
            sqlx::query_scalar(
                "WITH expired AS MATERIALIZED ( \
               SELECT m.replica_id, m.relay_pid FROM healthprobe_members m \
               JOIN pg_locks l ON l.pid = m.relay_pid AND l.locktype = 'advisory' AND l.granted \
                 AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 2 \
               WHERE m.lease_expires_at < now()) \
             SELECT replica_id FROM expired WHERE pg_terminate_backend(relay_pid)",
            )
            .bind(i64::from(lock_class as u32))
            .bind(i64::from(lock_id as u32))
            .fetch_optional(&self.pool),
        )
        .await
    }
}
