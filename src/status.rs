//! What the worker tells about itself: the status board the run loop, the membership
//! heartbeat and the relay write and the HTTP surface reads, the rules that turn
//! observations into OK / WARN / KO, and the renderings (JSON, plain text, the per-game
//! table) shared by `GET /status`, `GET /games` and `healthprobe status`.
//!
//! The board is a `tokio::sync::watch` channel: writers replace or modify the
//! [`WorkerView`], readers borrow a copy or wait for the next change (a live page can
//! subscribe). Nothing here imports the worker; the worker imports this.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::live::LiveFeed;
use crate::store::{GameView, Member};

/// Liveness allows this many intervals between two tick ends (DESIGN §11): one slow tick
/// (a full interval of probes timing out) does not make the worker look dead, a stuck loop
/// does within a few intervals.
pub const LIVENESS_INTERVALS: u32 = 3;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The last tick, reduced to what an operator reads.
#[derive(Debug, Clone, PartialEq)]
pub struct TickSummary {
    pub finished_at: DateTime<Utc>,
    /// Running records listed (the whole fleet).
    pub records: usize,
    /// Of those, the games this replica owns.
    pub owned: usize,
    pub probes: usize,
    pub healthy: usize,
    pub failures: usize,
    /// Probes the worker's own machine could not attempt (DESIGN §2).
    pub local_errors: usize,
    pub events: usize,
    pub pruned: usize,
    /// Writes refused because another writer changed the game first.
    pub conflicts: usize,
    pub duration: Duration,
    /// Why the tick failed or could not record everything; `None` for a clean tick.
    pub error: Option<String>,
}

impl TickSummary {
    pub fn to_json(&self) -> Value {
        json!({
            "finished_at": rfc3339(self.finished_at),
            "records": self.records,
            "owned": self.owned,
            "probes": self.probes,
            "healthy": self.healthy,
            "failures": self.failures,
            "local_errors": self.local_errors,
            "events": self.events,
            "pruned": self.pruned,
            "conflicts": self.conflicts,
            "duration_ms": millis(self.duration),
            "error": self.error,
        })
    }
}

/// The replicas as this one saw them at its last heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct MembersView {
    pub replica_id: String,
    /// Every member row, live or recently expired.
    pub members: Arc<[Member]>,
    /// When this replica's last heartbeat succeeded (Postgres' clock).
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub lease_ttl: Duration,
}

impl MembersView {
    pub fn live(&self) -> usize {
        self.members.iter().filter(|m| m.live).count().max(1)
    }
}

/// Everything the worker's parts tell the status surface.
#[derive(Debug, Clone, Default)]
pub struct WorkerView {
    pub last_beat: Option<Instant>,
    pub last_tick: Option<TickSummary>,
    pub members: Option<MembersView>,
    /// Whether this replica holds the outbox relay (`None`: not reported, a single process
    /// without leadership, e.g. in tests).
    pub relay_held: Option<bool>,
}

/// The writer and reader ends of the status channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    interval: Duration,
    started: Instant,
    tx: Arc<watch::Sender<WorkerView>>,
    /// Pushes each tick's end to the fleet page's live stream.
    live: LiveFeed,
}

/// A copy of the board taken at one instant.
#[derive(Debug, Clone)]
pub struct BoardSnapshot {
    pub interval: Duration,
    pub since_start: Duration,
    /// Time since the last tick ended; `None` before the first one.
    pub since_last_tick: Option<Duration>,
    pub last_tick: Option<TickSummary>,
    pub members: Option<MembersView>,
    pub relay_held: Option<bool>,
}

impl BoardSnapshot {
    /// Liveness (DESIGN §11): a tick ended (even a failed one) within
    /// [`LIVENESS_INTERVALS`] × interval. Before the first tick ends, the same grace is
    /// counted from start-up, so a worker that just started is live.
    pub fn live(&self) -> bool {
        let limit = self.interval * LIVENESS_INTERVALS;
        self.since_last_tick.unwrap_or(self.since_start) <= limit
    }
}

impl StatusBoard {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: Instant::now(),
            tx: Arc::new(watch::Sender::new(WorkerView::default())),
            live: LiveFeed::new(interval),
        }
    }

    /// The live stream of the fleet page, fed by [`StatusBoard::tick_ended`].
    pub fn live_feed(&self) -> &LiveFeed {
        &self.live
    }

    /// Records a tick that ended just now.
    pub fn tick_ended(&self, summary: TickSummary) {
        self.live.tick_ended(&summary.to_json());
        self.tx.send_modify(|view| {
            view.last_beat = Some(Instant::now());
            view.last_tick = Some(summary);
        });
    }

    /// Records the membership seen by the latest heartbeat.
    pub fn members_seen(&self, members: MembersView) {
        self.tx.send_if_modified(|view| {
            let changed = view.members.as_ref() != Some(&members);
            view.members = Some(members);
            changed
        });
    }

    /// Records whether this replica holds the outbox relay.
    pub fn relay_held(&self, held: bool) {
        self.tx.send_if_modified(|view| {
            let changed = view.relay_held != Some(held);
            view.relay_held = Some(held);
            changed
        });
    }

    /// A receiver that sees every later change (for pages that follow the worker live).
    pub fn subscribe(&self) -> watch::Receiver<WorkerView> {
        self.tx.subscribe()
    }

    pub fn snapshot(&self) -> BoardSnapshot {
        let view = self.tx.borrow();
        BoardSnapshot {
            interval: self.interval,
            since_start: self.started.elapsed(),
            since_last_tick: view.last_beat.map(|t| t.elapsed()),
            last_tick: view.last_tick.clone(),
            members: view.members.clone(),
            relay_held: view.relay_held,
        }
    }
}

/// OK < WARN < KO; the overall status is the worst component's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Ko,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Ko => "KO",
        }
    }

    /// `GET /status`: 200 OK, 207 WARN (Multi-Status: up, with something to look at),
    /// 503 KO, so a plain HTTP check tells the three apart without parsing the body.
    pub fn http_code(self) -> u16 {
        match self {
            Self::Ok => 200,
            Self::Warn => 207,
            Self::Ko => 503,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Component {
    pub name: &'static str,
    pub level: Level,
    /// The rule, as a sentence, so the status explains itself.
    pub rule: &'static str,
    pub detail: String,
}

/// What the HTTP handler observed just now, fed to [`evaluate`].
#[derive(Debug, Clone)]
pub struct Observed {
    /// `Ok(latency)` or why Postgres did not answer.
    pub postgres: Result<Duration, String>,
    /// The NATS client's connection state, e.g. `connected`, `pending`, `disconnected`.
    pub nats_state: String,
    pub nats_connected: bool,
    /// Events committed and not yet acknowledged by JetStream; `Err` when unreadable.
    pub outbox_pending: Result<i64, String>,
    /// Outbox rows set aside (DESIGN §13); `Err` when unreadable.
    pub outbox_set_aside: Result<i64, String>,
    /// The relay task's abnormal ends so far.
    pub relay: RelayHealth,
    pub board: BoardSnapshot,
}

#[derive(Debug, Clone)]
pub struct StatusReport {
    pub overall: Level,
    pub components: Vec<Component>,
    pub outbox_pending: Option<i64>,
    pub outbox_set_aside: Option<i64>,
    pub last_tick: Option<TickSummary>,
    pub members: Option<MembersView>,
    pub relay_held: Option<bool>,
}

pub const POSTGRES_RULE: &str = "must be up (else KO): without it nothing is listed or recorded";
pub const NATS_RULE: &str =
    "should be up (else WARN): while it is away the outbox holds events and nothing is lost";
pub const TICKS_RULE: &str = "must go round (else KO): a tick ends at least every 3 x interval";
pub const OUTBOX_RULE: &str = "events committed to Postgres and not yet acknowledged by JetStream; WARN while rows are set aside (healthprobe outbox list)";
pub const RELAY_RULE: &str =
    "should not end (else WARN for 15 min after it was restarted): publishes the outbox";
pub const PROBES_RULE: &str = "every probe should be attempted (else WARN; KO when none could be): the worker's own descriptors, ports and buffers";

/// How long after an abnormal end of the relay `/status` keeps it at WARN.
pub const RESTART_WARN_FOR: Duration = Duration::from_secs(15 * 60);

/// Abnormal ends of the relay task so far (the relay's supervisor counts them).
#[derive(Debug, Clone, Default)]
pub struct RelayHealth {
    pub restarts: u64,
    /// When the last abnormal end happened, and why.
    pub last_failure: Option<(Instant, String)>,
}

/// The rules, one per component. Pure, so every branch is unit-tested.
pub fn evaluate(observed: &Observed) -> StatusReport {
    let postgres = match &observed.postgres {
        Ok(latency) => Component {
            name: "postgres",
            level: Level::Ok,
            rule: POSTGRES_RULE,
            detail: format!("answered in {:.1} ms", latency.as_secs_f64() * 1000.0),
        },
        Err(why) => Component {
            name: "postgres",
            level: Level::Ko,
            rule: POSTGRES_RULE,
            detail: format!("not answering: {why}"),
        },
    };
    let nats = Component {
        name: "nats",
        level: if observed.nats_connected {
            Level::Ok
        } else {
            Level::Warn
        },
        rule: NATS_RULE,
        detail: format!("connection {}", observed.nats_state),
    };
    let board = &observed.board;
    let ticks = Component {
        name: "ticks",
        level: if board.live() { Level::Ok } else { Level::Ko },
        rule: TICKS_RULE,
        detail: match board.since_last_tick {
            Some(ago) => format!(
                "last tick ended {:.1} s ago (interval {:?})",
                ago.as_secs_f64(),
                board.interval
            ),
            None => format!(
                "no tick ended yet, started {:.1} s ago (interval {:?})",
                board.since_start.as_secs_f64(),
                board.interval
            ),
        },
    };
    let set_aside = observed.outbox_set_aside.as_ref().ok().copied();
    let outbox = Component {
        name: "outbox",
        level: if set_aside.unwrap_or(0) > 0 {
            Level::Warn
        } else {
            Level::Ok
        },
        rule: OUTBOX_RULE,
        detail: match (&observed.outbox_pending, &observed.outbox_set_aside) {
            (Ok(n), Ok(0)) => format!("{n} events pending"),
            (Ok(n), Ok(aside)) => format!("{n} events pending, {aside} set aside"),
            (Ok(n), Err(why)) => format!("{n} events pending, set-aside rows unknown: {why}"),
            (Err(why), _) => format!("backlog unknown: {why}"),
        },
    };
    let relay = match &observed.relay.last_failure {
        None => Component {
            name: "relay",
            level: Level::Ok,
            rule: RELAY_RULE,
            detail: match board.relay_held {
                Some(false) => "held by another replica".to_owned(),
                _ => "running, never restarted".to_owned(),
            },
        },
        Some((at, why)) => Component {
            name: "relay",
            level: if at.elapsed() < RESTART_WARN_FOR {
                Level::Warn
            } else {
                Level::Ok
            },
            rule: RELAY_RULE,
            detail: format!(
                "restarted {} times, last {:.0} s ago: {why}",
                observed.relay.restarts,
                at.elapsed().as_secs_f64()
            ),
        },
    };
    let probes = match &board.last_tick {
        Some(t) if t.local_errors > 0 => Component {
            name: "probes",
            level: if t.probes == 0 {
                Level::Ko
            } else {
                Level::Warn
            },
            rule: PROBES_RULE,
            detail: format!(
                "last tick: {} probes could not be attempted (local faults), {} were",
                t.local_errors, t.probes
            ),
        },
        _ => Component {
            name: "probes",
            level: Level::Ok,
            rule: PROBES_RULE,
            detail: "every probe of the last tick was attempted".to_owned(),
        },
    };
    let mut components = vec![postgres, nats, ticks, probes, outbox, relay];
    if let Some(members) = &board.members {
        components.push(replicas_component(members, board));
    }
    StatusReport {
        overall: components
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok),
        components,
        outbox_pending: observed.outbox_pending.as_ref().ok().copied(),
        outbox_set_aside: set_aside,
        last_tick: board.last_tick.clone(),
        members: board.members.clone(),
        relay_held: board.relay_held,
    }
}

pub const REPLICAS_RULE: &str =
    "informational: the live replicas share the games; each game is probed by one of them";

fn replicas_component(members: &MembersView, board: &BoardSnapshot) -> Component {
    let share = board
        .last_tick
        .as_ref()
        .map(|t| format!("{} of {} games", t.owned, t.records))
        .unwrap_or_else(|| "no tick yet".to_owned());
    let relay = match board.relay_held {
        Some(true) => ", holds the relay",
        Some(false) => ", relay held elsewhere",
        None => "",
    };
    Component {
        name: "replicas",
        level: Level::Ok,
        rule: REPLICAS_RULE,
        detail: format!(
            "{} live, this one {} owns {share}{relay}",
            members.live(),
            members.replica_id
        ),
    }
}

impl StatusReport {
    pub fn to_json(&self) -> Value {
        let components: serde_json::Map<String, Value> = self
            .components
            .iter()
            .map(|c| {
                (
                    c.name.to_owned(),
                    json!({ "status": c.level.as_str(), "rule": c.rule, "detail": c.detail }),
                )
            })
            .collect();
        json!({
            "status": self.overall.as_str(),
            "version": VERSION,
            "components": components,
            "outbox": { "pending": self.outbox_pending, "set_aside": self.outbox_set_aside },
            "last_tick": self.last_tick.as_ref().map(TickSummary::to_json),
            "replica": self.members.as_ref().map(|m| json!({
                "replica_id": m.replica_id,
                "lease_ttl_ms": millis(m.lease_ttl),
                "last_heartbeat": m.last_heartbeat.map(rfc3339),
                "holds_relay": self.relay_held,
                "owned_games": self.last_tick.as_ref().map(|t| t.owned),
                "listed_games": self.last_tick.as_ref().map(|t| t.records),
                "members": m.members.iter().map(member_json).collect::<Vec<_>>(),
            })),
        })
    }

    pub fn to_text(&self) -> String {
        let mut text = format!("healthprobe {VERSION}: {}\n", self.overall.as_str());
        for c in &self.components {
            let _ = writeln!(text, "{:<9}{:<5} {}", c.name, c.level.as_str(), c.detail);
            let _ = writeln!(text, "{:<15}rule: {}", "", c.rule);
        }
        match &self.last_tick {
            Some(t) => {
                let _ = writeln!(
                    text,
                    "last tick: {} records, {} probes, {} failures, {} events, {:.1} ms, ended {}{}",
                    t.records,
                    t.probes,
                    t.failures,
                    t.events,
                    t.duration.as_secs_f64() * 1000.0,
                    rfc3339(t.finished_at),
                    t.error
                        .as_ref()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                );
            }
            None => text.push_str("last tick: none yet\n"),
        }
        if let Some(members) = &self.members {
            text.push_str(&members_table(&members.members, Some(&members.replica_id)));
        }
        text
    }
}

/// One member as `/status` and `healthprobe status --members --json` show it.
pub fn member_json(member: &Member) -> Value {
    json!({
        "replica_id": member.replica_id,
        "status_addr": member.status_addr,
        "version": member.version,
        "last_heartbeat": rfc3339(member.heartbeat_at),
        "lease_expires_at": rfc3339(member.lease_expires_at),
        "live": member.live,
    })
}

/// The members as a table (`healthprobe status --members`, `/status?format=text`).
pub fn members_table(members: &[Member], this: Option<&str>) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "REPLICA".into(),
        "STATE".into(),
        "ADDRESS".into(),
        "LAST HEARTBEAT".into(),
        "VERSION".into(),
    ]];
    for m in members {
        let me = if Some(m.replica_id.as_str()) == this {
            " (this)"
        } else {
            ""
        };
        rows.push([
            format!("{}{me}", m.replica_id),
            if m.live { "live" } else { "expired" }.into(),
            m.status_addr.clone().unwrap_or_else(|| "-".into()),
            rfc3339(m.heartbeat_at),
            m.version.clone(),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis(d: Duration) -> f64 {
    round_ms(d.as_secs_f64() * 1000.0)
}

/// Milliseconds to the microsecond: `0.349`, not `0.34872000000000003`.
pub fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// One game as `GET /games` and `healthprobe status --json` show it.
pub fn game_json(game: &GameView) -> Value {
    json!({
        "game_id": game.game_id,
        "status": game.status,
        "consecutive_failures": game.consecutive_failures,
        "last_probe_at": game.last_probe_at.map(rfc3339),
        "last_success_at": game.last_success_at.map(rfc3339),
        "last_latency_ms": game.last_latency_ms.map(round_ms),
        "last_status": game.last_status,
        "last_error": game.last_error,
        "last_failure_kind": game.last_failure_kind,
        "container_id": game.container_id,
        "engine_endpoint": game.engine_endpoint,
    })
}

/// The per-game table of `healthprobe status`.
pub fn games_table(games: &[GameView], now: DateTime<Utc>) -> String {
    let ago = |at: Option<DateTime<Utc>>| match at {
        None => "-".to_owned(),
        Some(at) => {
            let secs = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
            format!("{secs:.1}s ago")
        }
    };
    let rows: Vec<[String; 7]> = games
        .iter()
        .map(|g| {
            [
                g.game_id.clone(),
                g.status.clone(),
                g.consecutive_failures.to_string(),
                ago(g.last_probe_at),
                g.last_latency_ms
                    .map_or("-".to_owned(), |ms| format!("{ms:.1}ms")),
                g.last_status.map_or("-".to_owned(), |s| s.to_string()),
                g.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "GAME",
        "STATUS",
        "FAILS",
        "LAST PROBE",
        "LATENCY",
        "HTTP",
        "LAST ERROR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: [&str; 7]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(since_last_tick: Option<u64>, since_start: u64) -> BoardSnapshot {
        BoardSnapshot {
            interval: Duration::from_secs(10),
            since_start: Duration::from_secs(since_start),
            since_last_tick: since_last_tick.map(Duration::from_secs),
            last_tick: None,
            members: None,
            relay_held: None,
        }
    }

    fn observed(postgres_up: bool, nats_up: bool, board: BoardSnapshot) -> Observed {
        Observed {
            postgres: if postgres_up {
                Ok(Duration::from_millis(1))
            } else {
                Err("connection refused".into())
            },
            nats_state: if nats_up { "connected" } else { "pending" }.into(),
            nats_connected: nats_up,
            outbox_pending: Ok(3),
            outbox_set_aside: Ok(0),
            relay: RelayHealth::default(),
            board,
        }
    }

    #[test]
    fn liveness_allows_three_intervals_and_a_start_up_grace() {
        assert!(board(Some(29), 100).live());
        assert!(board(Some(30), 100).live());
        assert!(!board(Some(31), 100).live());
        assert!(board(None, 5).live(), "just started");
        assert!(!board(None, 31).live(), "never ticked");
    }

    #[test]
    fn each_rule_sets_its_level_and_the_worst_wins() {
        let cases = [
            (true, true, Some(1), Level::Ok, 200),
            (true, false, Some(1), Level::Warn, 207),
            (false, true, Some(1), Level::Ko, 503),
            (false, false, Some(1), Level::Ko, 503),
            (true, true, Some(31), Level::Ko, 503),
            (true, false, Some(31), Level::Ko, 503),
        ];
        for (pg, nats, last, level, code) in cases {
            let report = evaluate(&observed(pg, nats, board(last, 100)));
            assert_eq!(report.overall, level, "pg={pg} nats={nats} last={last:?}");
            assert_eq!(report.overall.http_code(), code);
        }
    }

    #[test]
    fn set_aside_rows_a_restarted_relay_and_local_faults_warn() {
        let mut seen = observed(true, true, board(Some(1), 100));
        assert_eq!(evaluate(&seen).overall, Level::Ok);
        seen.outbox_set_aside = Ok(2);
        let report = evaluate(&seen);
        assert_eq!(report.overall, Level::Warn);
        assert_eq!(report.to_json()["outbox"]["set_aside"], 2);
        seen.outbox_set_aside = Ok(0);
        seen.relay = RelayHealth {
            restarts: 1,
            last_failure: Some((Instant::now(), "panicked".into())),
        };
        assert_eq!(evaluate(&seen).overall, Level::Warn);
        seen.relay = RelayHealth::default();
        let tick = |probes, local_errors| TickSummary {
            finished_at: Utc::now(),
            records: probes + local_errors,
            owned: probes + local_errors,
            probes,
            healthy: probes,
            failures: 0,
            local_errors,
            events: 0,
            pruned: 0,
            conflicts: 0,
            duration: Duration::ZERO,
            error: None,
        };
        seen.board.last_tick = Some(tick(5, 1));
        assert_eq!(evaluate(&seen).overall, Level::Warn);
        seen.board.last_tick = Some(tick(0, 6));
        assert_eq!(evaluate(&seen).overall, Level::Ko, "no probe attempted");
        seen.board.last_tick = Some(tick(6, 0));
        assert_eq!(evaluate(&seen).overall, Level::Ok);
    }

    #[test]
    fn json_and_text_carry_components_backlog_and_version() {
        let report = evaluate(&observed(true, false, board(Some(1), 5)));
        let value = report.to_json();
        assert_eq!(value["status"], "WARN");
        assert_eq!(value["version"], VERSION);
        assert_eq!(value["components"]["nats"]["status"], "WARN");
        assert_eq!(value["components"]["postgres"]["status"], "OK");
        assert_eq!(value["outbox"]["pending"], 3);
        let text = report.to_text();
        assert!(
            text.starts_with(&format!("healthprobe {VERSION}: WARN\n")),
            "{text}"
        );
        assert!(text.contains("nats     WARN"), "{text}");
        assert!(text.contains("last tick: none yet"), "{text}");
    }

    #[test]
    fn the_table_aligns_columns_and_shows_dashes_for_never_probed_games() {
        let now = Utc::now();
        let games = vec![
            GameView {
                game_id: "game-1".into(),
                container_id: None,
                engine_endpoint: "http://x".into(),
                status: "failing".into(),
                consecutive_failures: 4,
                last_probe_at: Some(now - chrono::Duration::milliseconds(1500)),
                last_success_at: None,
                last_latency_ms: Some(2.25),
                last_status: Some(503),
                last_error: Some("unexpected status 503".into()),
                last_failure_kind: Some("status".into()),
            },
            GameView {
                game_id: "a-much-longer-game-id".into(),
                container_id: None,
                engine_endpoint: "http://y".into(),
                status: "unknown".into(),
                consecutive_failures: 0,
                last_probe_at: None,
                last_success_at: None,
                last_latency_ms: None,
                last_status: None,
                last_error: None,
                last_failure_kind: None,
            },
        ];
        let table = games_table(&games, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("GAME                   STATUS"),
            "{table}"
        );
        assert!(lines[1].contains("failing  4      1.5s ago"), "{table}");
        assert!(lines[1].ends_with("unexpected status 503"), "{table}");
        assert!(lines[2].contains("unknown  0      -"), "{table}");
    }
}
