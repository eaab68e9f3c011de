//! Renderings of the status surface: `GET /status` as JSON and text, one game as
//! `GET /games` and `healthprobe status --json` show it, and the operator's tables.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::VERSION;
use super::board::TickSummary;
use super::rules::StatusReport;
use crate::store::{GameView, Member, SetAsideRow};

impl TickSummary {
    pub(crate) fn to_json(&self) -> Value {
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

impl StatusReport {
    pub(crate) fn to_json(&self) -> Value {
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

    pub(crate) fn to_text(&self) -> String {
        let mut text = format!("healthprobe {VERSION}: {}\n", self.overall.as_str());
        // Names in a column at least a space wider than the longest (`overrides` is 9).
        let name_width = self
            .components
            .iter()
            .map(|c| c.name.len() + 1)
            .max()
            .unwrap_or(0)
            .max(9);
        for c in &self.components {
            let _ = writeln!(
                text,
                "{:<name_width$}{:<5} {}",
                c.name,
                c.level.as_str(),
                c.detail
            );
            let _ = writeln!(
                text,
                "{:<width$}rule: {}",
                "",
                c.rule,
                width = name_width + 6
            );
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

pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis(d: Duration) -> f64 {
    round_ms(d.as_secs_f64() * 1000.0)
}

/// Milliseconds to the microsecond: `0.349`, not `0.34872000000000003`.
pub(crate) fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// One game as `GET /games` and `healthprobe status --json` show it.
#[derive(Debug, Serialize)]
pub struct GameJson<'a> {
    pub game_id: &'a str,
    pub status: &'a str,
    pub consecutive_failures: i32,
    pub last_probe_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_latency_ms: Option<f64>,
    pub last_status: Option<i32>,
    pub last_error: Option<&'a str>,
    pub last_failure_kind: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub engine_endpoint: &'a str,
}

impl<'a> From<&'a GameView> for GameJson<'a> {
    fn from(game: &'a GameView) -> Self {
        Self {
            game_id: &game.game_id,
            status: &game.status,
            consecutive_failures: game.consecutive_failures,
            last_probe_at: game.last_probe_at.map(rfc3339),
            last_success_at: game.last_success_at.map(rfc3339),
            last_latency_ms: game.last_latency_ms.map(round_ms),
            last_status: game.last_status,
            last_error: game.last_error.as_deref(),
            last_failure_kind: game.last_failure_kind.as_deref(),
            container_id: game.container_id.as_deref(),
            engine_endpoint: &game.engine_endpoint,
        }
    }
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

/// One set-aside outbox row as `healthprobe outbox list --json` prints it (one per line).
pub fn set_aside_json(row: &SetAsideRow) -> Value {
    json!({
        "event_id": row.event_id.to_string(),
        "game_id": row.game_id,
        "event_type": row.event_type,
        "state": row.state,
        "attempts": row.attempts,
        "set_aside_at": rfc3339(row.set_aside_at),
        "error": row.error,
    })
}

/// The set-aside outbox rows as `healthprobe outbox list` prints them.
pub fn set_aside_table(rows: &[SetAsideRow]) -> String {
    if rows.is_empty() {
        return "no outbox rows set aside\n".to_owned();
    }
    let mut text = String::from(
        "EVENT_ID                              STATE      ATTEMPTS  SET ASIDE AT              GAME  TYPE  ERROR\n",
    );
    for row in rows {
        let _ = writeln!(
            text,
            "{}  {:<9}  {:<8}  {}  {}  {}  {}",
            row.event_id,
            row.state,
            row.attempts,
            rfc3339(row.set_aside_at),
            crate::bounded(&row.game_id, 60),
            row.event_type,
            crate::bounded(&row.error, 200),
        );
    }
    text
}
