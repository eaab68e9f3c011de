//! The rules that turn observations into OK / WARN / KO, one per component. Pure: what
//! the HTTP handler observed goes in, a typed [`StatusReport`] comes out.

use std::time::Duration;

use super::board::{BoardSnapshot, HoldSummary, MembersView, RelayHealth, TickSummary};

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
    pub(crate) fn http_code(self) -> u16 {
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
    /// Whether the JetStream stream exists: `Ok(None)` not checked (no stream configured),
    /// `Ok(Some(true))` present, `Ok(Some(false))` missing, `Err` when NATS did not say.
    pub stream: Result<Option<bool>, String>,
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

pub(crate) const OVERRIDES_RULE: &str =
    "rows of health_probe_overrides must parse (else WARN): a bad one is ignored for its game";
pub(crate) const POSTGRES_RULE: &str =
    "must be up (else KO): without it nothing is listed or recorded";
pub(crate) const NATS_RULE: &str =
    "should be up (else WARN): while it is away the outbox holds events and nothing is lost";
/// Says "10 s" for [`super::board::LIVENESS_FLOOR`] (a unit test keeps them equal).
pub(crate) const TICKS_RULE: &str = "must make progress (else KO): a tick starts or ends, a probe is recorded or a store call answers, at least every 3 x interval (10 s at the least); a tick made long by the fleet or by Postgres is progress";
pub(crate) const OUTBOX_RULE: &str = "events committed to Postgres and not yet acknowledged by JetStream; WARN while rows are set aside (healthprobe outbox list)";
pub(crate) const RELAY_RULE: &str =
    "should not end (else WARN for 15 min after it was restarted): publishes the outbox";
pub(crate) const MASS_FAILURE_RULE: &str = "WARN while probe_failed is held because most engines failed at once (the checker more likely than the fleet), or while this replica stepped out because its probes fail where the others' do not";
pub(crate) const COMMITS_RULE: &str = "the last tick should record everything (else WARN): decisions not committed are taken again next tick, nothing is lost";
pub(crate) const STREAM_RULE: &str = "the JetStream stream should exist (else WARN): the relay recreates it before its next publish; events wait in the outbox";
pub(crate) const PROBES_RULE: &str = "every probe should be attempted (else WARN; KO when none could be): the worker's own descriptors, ports and buffers";

/// How long after an abnormal end of the relay `/status` keeps it at WARN.
pub(crate) const RESTART_WARN_FOR: Duration = Duration::from_secs(15 * 60);

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
                "last tick ended {:.1} s ago, last progress {:.1} s ago (interval {:?})",
                ago.as_secs_f64(),
                board.since_alive().as_secs_f64(),
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
        Some(t) if t.probe_panics > 0 => Component {
            name: "probes",
            level: Level::Warn,
            rule: PROBES_RULE,
            detail: format!(
                "last tick: {} probes panicked (an internal fault in the worker, not the engines'); {} probes were attempted",
                t.probe_panics, t.probes
            ),
        },
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
    let mass_failure = mass_failure_component(board.last_tick.as_ref().map(|t| t.hold));
    let commits = Component {
        name: "commits",
        level: match board.last_tick.as_ref().and_then(|t| t.error.as_ref()) {
            Some(_) => Level::Warn,
            None => Level::Ok,
        },
        rule: COMMITS_RULE,
        detail: match board.last_tick.as_ref() {
            None => "no tick yet".to_owned(),
            Some(TickSummary { error: None, .. }) => "the last tick recorded everything".to_owned(),
            Some(TickSummary {
                error: Some(why), ..
            }) => format!("the last tick could not record everything: {why}"),
        },
    };
    let stream = Component {
        name: "stream",
        level: match &observed.stream {
            Ok(Some(false)) => Level::Warn,
            _ => Level::Ok,
        },
        rule: STREAM_RULE,
        detail: match &observed.stream {
            Ok(None) => "not checked".to_owned(),
            Ok(Some(true)) => "present".to_owned(),
            Ok(Some(false)) => "missing: recreated before the next publish".to_owned(),
            Err(why) => format!("unknown: {why}"),
        },
    };
    let mut components = vec![
        postgres,
        nats,
        ticks,
        probes,
        mass_failure,
        commits,
        outbox,
        stream,
        relay,
    ];
    // Shown only while a row is bad, so a healthy status reads as before.
    if let Some(t) = &board.last_tick
        && t.bad_override_count > 0
    {
        let named: Vec<String> = t
            .bad_overrides
            .iter()
            .map(|(game, why)| format!("{}: {why}", crate::bounded(game, 100)))
            .collect();
        components.push(Component {
            name: "overrides",
            level: Level::Warn,
            rule: OVERRIDES_RULE,
            detail: format!(
                "{} bad rows in health_probe_overrides (those games are probed with the global settings): {}",
                t.bad_override_count,
                named.join("; ")
            ),
        });
    }
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

fn mass_failure_component(hold: Option<HoldSummary>) -> Component {
    let (level, detail) = match hold.unwrap_or_default() {
        HoldSummary::Clear => (Level::Ok, "no mass failure".to_owned()),
        HoldSummary::Holding {
            for_,
            local_fault: false,
        } => (
            Level::Warn,
            format!(
                "most engines failed at once: probe_failed held for {:.1} s",
                for_.as_secs_f64()
            ),
        ),
        HoldSummary::Holding {
            for_,
            local_fault: true,
        } => (
            Level::Warn,
            format!(
                "most engines failed at once with local faults (the checker's own): probe_failed held for {:.1} s, until they clear",
                for_.as_secs_f64()
            ),
        ),
        HoldSummary::Released { for_ } => (
            Level::Warn,
            format!(
                "most engines have failed for {:.1} s, seen alike by every replica: reported as real",
                for_.as_secs_f64()
            ),
        ),
        HoldSummary::Degraded => (
            Level::Warn,
            "stepped out of the membership: this replica's probes fail where the others' do not; the others probe its games".to_owned(),
        ),
    };
    Component {
        name: "hold",
        level,
        rule: MASS_FAILURE_RULE,
        detail,
    }
}

pub(crate) const REPLICAS_RULE: &str =
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
