//! Replicas find each other through Postgres and share the games (DESIGN §12).
//!
//! Each replica heartbeats its row in `healthprobe_members`, renewing a lease of
//! `HEALTHPROBE_LEASE_TTL`; the live members are those whose lease has not expired by
//! Postgres' clock. A game belongs to the live member with the highest rendezvous score
//! for it, a hash of the member's id and the game's id that every replica (and every
//! version of this program) computes the same way. When a member joins or leaves, only the
//! games that move to or from it change owner.
//!
//! The heartbeat runs in a task of its own on the periodic driver ([`crate::periodic`]), so
//! a long tick cannot let the lease lapse; it publishes the membership on a `watch` that
//! each tick reads once at its start, and the members as the status surface shows them on
//! another (its status).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::hold::{MassFailureSettings, Peers};
use crate::ErrorChain;
use crate::periodic::{self, Next, Periodic};
use crate::status::{MembersView, RelayRole};
use crate::store::{Heartbeat, Member, Store};
use crate::telemetry::Metrics;

/// Heartbeats per lease: a replica misses two in a row before the others take its games.
const HEARTBEATS_PER_LEASE: u32 = 3;

/// Rows of members whose lease expired this many lease times ago are removed, so the table
/// (and `/status`) keeps recent departures for a while without growing forever.
const FORGET_AFTER_LEASES: u32 = 20;

/// Stable 64-bit FNV-1a: the same in every replica, version and platform (std's hashers
/// make no such promise).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator byte that UTF-8 never contains, so ("ab","c") != ("a","bc").
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // splitmix64's finaliser spreads FNV's weak low bits over the whole word.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The rendezvous (highest random weight) owner of `game_id` among `members`; ties, which
/// need a 64-bit collision, go to the smaller id. `None` only when there are no members.
pub fn owner<'a>(game_id: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .map(|m| (fnv1a(&[m.as_bytes(), game_id.as_bytes()]), m))
        .max_by(|(a, ma), (b, mb)| a.cmp(b).then_with(|| mb.cmp(ma)))
        .map(|(_, m)| m.as_str())
}

/// The membership as this replica last saw it.
#[derive(Debug, Clone)]
pub struct Membership {
    pub replica_id: String,
    /// Ids of the live members, this one included, sorted.
    pub live: Arc<[String]>,
    /// Every member row read by the last heartbeat, live or not.
    pub members: Arc<[Member]>,
    /// When the last heartbeat succeeded (Postgres' clock); `None` before the first.
    pub last_heartbeat: Option<DateTime<Utc>>,
}

impl Membership {
    /// Before the first heartbeat, and for a replica alone: it owns every game.
    pub fn alone(replica_id: &str) -> Self {
        Self {
            replica_id: replica_id.to_owned(),
            live: Arc::from(vec![replica_id.to_owned()]),
            members: Arc::from(Vec::new()),
            last_heartbeat: None,
        }
    }

    /// Whether this replica owns the game. A degraded replica (DESIGN §15) stepped out:
    /// the others leave it out of their live set, and it computes its share as if it were
    /// in (the games it probes as a sample while out, and takes back when it returns).
    pub fn owns(&self, game_id: &str) -> bool {
        self.live.len() <= 1 || owner(game_id, &self.live) == Some(self.replica_id.as_str())
    }

    /// What the other live replicas published about their own engines, for the hold.
    pub(crate) fn peers(&self, settings: &MassFailureSettings) -> Peers {
        let mut seen = false;
        for m in self.members.iter() {
            if m.replica_id == self.replica_id || !m.live || m.degraded {
                continue;
            }
            let (Some(owned), Some(failing)) = (m.owned_games, m.failing_games) else {
                continue;
            };
            if owned <= 0 {
                continue;
            }
            seen = true;
            if settings.share_is_fine(failing.max(0) as usize, owned as usize) {
                return Peers::SomeFine;
            }
        }
        if seen {
            Peers::AllFailing
        } else {
            Peers::Alone
        }
    }

    fn from_rows(replica_id: &str, rows: Vec<Member>) -> Self {
        // Degraded members stepped out: their games go to the others.
        let mut live: Vec<String> = rows
            .iter()
            .filter(|m| m.live && !m.degraded)
            .map(|m| m.replica_id.clone())
            .collect();
        if !live.iter().any(|id| id == replica_id) {
            live.push(replica_id.to_owned());
        }
        live.sort();
        let last_heartbeat = rows
            .iter()
            .find(|m| m.replica_id == replica_id)
            .map(|m| m.heartbeat_at);
        Self {
            replica_id: replica_id.to_owned(),
            live: Arc::from(live),
            members: Arc::from(rows),
            last_heartbeat,
        }
    }
}

/// This replica's last tick as the others read it in its membership row (DESIGN §15).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaHealth {
    /// Games owned (or sampled, while degraded) by the last tick, and of those, games not
    /// seen healthy; `None` before the first tick.
    pub owned_games: Option<i32>,
    pub failing_games: Option<i32>,
    /// Stepped out: owns no game until its own probes succeed again.
    pub degraded: bool,
}

/// Who this replica is and how long its lease lasts.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    pub replica_id: String,
    /// The status endpoints' address, shown to operators beside the member.
    pub status_addr: Option<String>,
    pub lease_ttl: Duration,
}

impl MembershipSettings {
    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.lease_ttl / HEARTBEATS_PER_LEASE
    }
}

/// The heartbeat task: renews the lease, reads the members, publishes the membership.
pub struct Heartbeats {
    store: Store,
    settings: MembershipSettings,
    metrics: Metrics,
    /// The relay's leadership: while this replica holds the relay lock, the backend pid of
    /// the lock's session, told to the others with each heartbeat.
    relay_role: watch::Receiver<Option<RelayRole>>,
    tx: watch::Sender<Membership>,
    /// The members as the last successful heartbeat saw them, for the status surface.
    seen: Option<MembersView>,
    status: watch::Sender<Option<MembersView>>,
    /// The worker's last tick, published with each heartbeat.
    health: watch::Receiver<ReplicaHealth>,
    /// Whether the worker is gone (its health watch closed); heartbeats go on.
    health_closed: bool,
    /// Stepped out, as last told to the others.
    degraded: bool,
    /// Heartbeats have failed since the last success (logged once per outage).
    failing: bool,
}

impl Heartbeats {
    pub fn new(
        store: Store,
        settings: MembershipSettings,
        metrics: Metrics,
        relay_role: watch::Receiver<Option<RelayRole>>,
    ) -> (Self, watch::Receiver<Membership>) {
        let (tx, rx) = watch::channel(Membership::alone(&settings.replica_id));
        (
            Self {
                store,
                settings,
                metrics,
                relay_role,
                tx,
                seen: None,
                status: watch::Sender::new(None),
                health: watch::channel(ReplicaHealth::default()).1,
                health_closed: false,
                degraded: false,
                failing: false,
            },
            rx,
        )
    }

    /// Publishes the worker's figures (see [`super::Worker::with_replica_health`]) with each
    /// heartbeat, and beats at once when the replica steps out or comes back.
    pub fn with_replica_health(mut self, health: watch::Receiver<ReplicaHealth>) -> Self {
        self.health = health;
        self
    }

    /// The members as the status surface shows them, published after every heartbeat;
    /// `None` before the first that succeeds.
    pub fn watch_status(&self) -> watch::Receiver<Option<MembersView>> {
        self.status.subscribe()
    }

    /// One heartbeat: renew, read, publish. Returns the membership it published.
    pub async fn beat(&mut self) -> Result<Membership, sqlx::Error> {
        let pid = self.relay_role.borrow().and_then(RelayRole::backend_pid);
        let health = *self.health.borrow();
        let rows = self
            .store
            .heartbeat(&Heartbeat {
                replica_id: &self.settings.replica_id,
                status_addr: self.settings.status_addr.as_deref(),
                version: env!("CARGO_PKG_VERSION"),
                lease_ttl: self.settings.lease_ttl,
                relay_pid: pid,
                forget_after: self.settings.lease_ttl * FORGET_AFTER_LEASES,
                owned_games: health.owned_games,
                failing_games: health.failing_games,
                degraded: health.degraded,
            })
            .await?;
        let rows = self.reap_dead_local_members(rows).await?;
        let next = Membership::from_rows(&self.settings.replica_id, rows);
        let changed = self.tx.borrow().live != next.live;
        if changed {
            self.metrics.membership_changed();
            tracing::info!(
                live = ?next.live,
                replica_id = %self.settings.replica_id,
                "membership changed: games are shared among the live replicas"
            );
        }
        self.seen = Some(MembersView {
            replica_id: next.replica_id.clone(),
            members: next.members.clone(),
            last_heartbeat: next.last_heartbeat,
            lease_ttl: self.settings.lease_ttl,
        });
        self.tx.send_replace(next.clone());
        Ok(next)
    }

    /// Removes members that an earlier process on this host left behind when it died
    /// (SIGKILL, a crash): with default ids (`<host>-<pid>`) a member of this host whose
    /// process no longer exists cannot heartbeat again, so its games need not wait for its
    /// lease. A single replica restarted by its supervisor thus owns every game at once.
    /// Anything else (another host, an explicit id, a pid that is alive) waits for the lease.
    async fn reap_dead_local_members(&self, rows: Vec<Member>) -> Result<Vec<Member>, sqlx::Error> {
        let Some(prefix) = self
            .settings
            .replica_id
            .strip_suffix(&format!("-{}", std::process::id()))
        else {
            return Ok(rows); // an explicit id: nothing to infer
        };
        let mut kept = Vec::with_capacity(rows.len());
        for member in rows {
            let dead_here = member.live
                && member.replica_id != self.settings.replica_id
                && member
                    .replica_id
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            if dead_here {
                self.store.leave(&member.replica_id).await?;
                tracing::info!(replica_id = %member.replica_id, "removed the membership of a process of this host that no longer exists");
            } else {
                kept.push(member);
            }
        }
        Ok(kept)
    }

    /// Heartbeats every lease/3 until `stop` (at once when the replica steps out or comes
    /// back), then leaves the membership so the others take this replica's games at their
    /// next heartbeat rather than after the lease.
    pub async fn run(mut self, stop: CancellationToken) {
        self.degraded = self.health.borrow().degraded;
        let status = self.status.clone();
        let heartbeats = periodic::run(self, &stop, &status).await;
        heartbeats.leave().await;
    }

    async fn leave(&self) {
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.store.leave(&self.settings.replica_id),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::info!(replica_id = %self.settings.replica_id, "left the membership: the other replicas take this one's games")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %ErrorChain(&e), "could not leave the membership; the lease expires instead")
            }
            Err(_) => tracing::warn!("leaving the membership timed out; the lease expires instead"),
        }
    }
}

impl Periodic for Heartbeats {
    type Status = Option<MembersView>;

    fn period(&self) -> Duration {
        self.settings.heartbeat_every()
    }

    async fn turn(&mut self, _stop: &CancellationToken) -> Next {
        match self.beat().await {
            Ok(_) if self.failing => {
                tracing::info!("membership heartbeat succeeded again");
                self.failing = false;
            }
            Ok(_) => {}
            Err(e) if !self.failing => {
                tracing::warn!(error = %ErrorChain(&e), "membership heartbeat failed; the lease runs out unless one succeeds");
                self.failing = true;
            }
            Err(e) => {
                tracing::debug!(error = %ErrorChain(&e), "membership heartbeat still failing")
            }
        }
        Next::Period
    }

    /// Stepping out or back in is told at once; the figures wait for the next beat.
    async fn wake(&mut self) {
        loop {
            if self.health_closed {
                return std::future::pending().await;
            }
            if self.health.changed().await.is_err() {
                self.health_closed = true; // the worker is gone; heartbeats go on
                continue;
            }
            let degraded = self.health.borrow_and_update().degraded;
            if degraded != self.degraded {
                self.degraded = degraded;
                return;
            }
        }
    }

    fn status(&self) -> Option<MembersView> {
        self.seen.clone()
    }
}

/// The default replica id: host name and process id, unique among live processes.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Replicas of different versions must agree: these values are a contract.
        assert_eq!(
            fnv1a(&[b"replica-0", b"game-1"]),
            fnv1a(&[b"replica-0", b"game-1"])
        );
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        // Computed independently (a few lines of Python) when this was written.
        assert_eq!(
            fnv1a(&[b"a", b"b"]),
            0x552d_4556_57d9_1379_u64,
            "update only with a version bump: {:#x}",
            fnv1a(&[b"a", b"b"])
        );
    }

    #[test]
    fn one_member_owns_everything() {
        let alone = Membership::alone("me");
        assert!(alone.owns("any"));
        assert_eq!(owner("g", &ids(1)), Some("replica-0"));
        assert_eq!(owner("g", &[]), None);
    }

    #[test]
    fn games_spread_evenly_over_members() {
        let members = ids(3);
        let mut counts = [0usize; 3];
        for g in 0..30_000 {
            let id = format!("game-{g}");
            let o = owner(&id, &members).unwrap();
            counts[members.iter().position(|m| m == o).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..=11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn only_a_leaving_members_games_move() {
        let three = ids(3);
        let two: Vec<String> = three[..2].to_vec();
        let mut moved = 0;
        for g in 0..10_000 {
            let id = format!("game-{g}");
            let before = owner(&id, &three).unwrap();
            let after = owner(&id, &two).unwrap();
            if before != "replica-2" {
                assert_eq!(before, after, "{id} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 2_500, "{moved}");
    }

    #[test]
    fn every_game_has_exactly_one_owner_among_the_views() {
        let members = ids(3);
        for g in 0..1_000 {
            let id = format!("game-{g}");
            let owners = members
                .iter()
                .filter(|me| {
                    Membership {
                        replica_id: (*me).clone(),
                        live: Arc::from(members.clone()),
                        members: Arc::from(Vec::new()),
                        last_heartbeat: None,
                    }
                    .owns(&id)
                })
                .count();
            assert_eq!(owners, 1, "{id}");
        }
    }
}
