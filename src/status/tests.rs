//! Unit tests of the rules and renderings with fixed values.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::*;
use crate::store::GameView;

fn board(since_last_tick: Option<u64>, since_start: u64) -> BoardSnapshot {
    BoardSnapshot {
        interval: Duration::from_secs(10),
        since_start: Duration::from_secs(since_start),
        since_last_tick: since_last_tick.map(Duration::from_secs),
        since_progress: None,
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
        stream: Ok(Some(true)),
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
fn liveness_has_a_floor_that_outlasts_one_store_statement() {
    let mut short = board(None, 100);
    short.interval = Duration::from_millis(500);
    assert_eq!(short.liveness_limit(), board::LIVENESS_FLOOR);
    short.since_progress = Some(Duration::from_secs(2));
    assert!(
        short.live(),
        "a tick waiting 2 s on Postgres at a 500 ms interval is not stuck"
    );
    short.since_progress = Some(board::LIVENESS_FLOOR + Duration::from_millis(1));
    assert!(
        !short.live(),
        "nothing moved for longer than the floor: stuck"
    );
    assert!(board::LIVENESS_FLOOR > crate::store::LONGEST_STATEMENT_WAIT);
    assert_eq!(
        board(None, 0).liveness_limit(),
        Duration::from_secs(30),
        "3 x interval above the floor"
    );
    assert_eq!(board::LIVENESS_FLOOR, Duration::from_secs(10));
    assert!(
        rules::TICKS_RULE.contains("(10 s at the least)"),
        "the rule states the floor"
    );
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
        probe_panics: 0,
        events: 0,
        pruned: 0,
        conflicts: 0,
        duration: Duration::ZERO,
        error: None,
        hold: HoldSummary::Clear,
        bad_overrides: Vec::new(),
        bad_override_count: 0,
    };
    seen.board.last_tick = Some(tick(5, 1));
    assert_eq!(evaluate(&seen).overall, Level::Warn);
    seen.board.last_tick = Some(tick(0, 6));
    assert_eq!(evaluate(&seen).overall, Level::Ko, "no probe attempted");
    // A panicked probe is the worker's own fault: the probes component says so, the
    // commits component (the store's) stays OK.
    let mut panicked = tick(5, 0);
    panicked.probe_panics = 1;
    seen.board.last_tick = Some(panicked);
    let report = evaluate(&seen);
    assert_eq!(report.overall, Level::Warn);
    let component = |name: &str| {
        report
            .components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("a {name} component"))
    };
    assert_eq!(component("probes").level, Level::Warn);
    assert!(
        component("probes").detail.contains("1 probes panicked"),
        "{}",
        component("probes").detail
    );
    assert_eq!(component("commits").level, Level::Ok);
    // A bad override row is that game's problem: WARN, naming it.
    let mut bad = tick(5, 0);
    bad.bad_overrides = vec![("game-7".into(), "expect: \"2xx\" is not a status".into())];
    bad.bad_override_count = 1;
    seen.board.last_tick = Some(bad);
    let report = evaluate(&seen);
    assert_eq!(report.overall, Level::Warn);
    let overrides = report
        .components
        .iter()
        .find(|c| c.name == "overrides")
        .expect("an overrides component");
    assert!(overrides.detail.contains("game-7"), "{}", overrides.detail);
    // Its name is the longest: the text keeps a space after every name.
    let text = report.to_text();
    assert!(text.contains("\noverrides WARN  1 bad rows"), "{text}");
    assert!(text.contains("\npostgres  OK"), "{text}");
    seen.board.last_tick = Some(tick(5, 0));
    assert!(
        evaluate(&seen)
            .components
            .iter()
            .all(|c| c.name != "overrides")
    );
    seen.board.last_tick = Some(tick(6, 0));
    assert_eq!(evaluate(&seen).overall, Level::Ok);
}

#[test]
fn liveness_counts_progress_within_a_long_tick() {
    let mut long_tick = board(Some(100), 200);
    assert!(!long_tick.live(), "no tick ended for ten intervals");
    long_tick.since_progress = Some(Duration::from_secs(2));
    assert!(long_tick.live(), "probes complete: the worker is not stuck");
    long_tick.since_progress = Some(Duration::from_secs(31));
    assert!(!long_tick.live(), "neither ticks nor probes: stuck");
}

#[test]
fn storms_show_as_warn_components() {
    let tick = |hold, error: Option<&str>| TickSummary {
        finished_at: Utc::now(),
        records: 20,
        owned: 20,
        probes: 20,
        healthy: 0,
        failures: 20,
        local_errors: 0,
        probe_panics: 0,
        events: 0,
        pruned: 0,
        conflicts: 0,
        duration: Duration::ZERO,
        error: error.map(str::to_owned),
        hold,
        bad_overrides: Vec::new(),
        bad_override_count: 0,
    };
    let level = |seen: &Observed, name: &str| {
        evaluate(seen)
            .components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.level)
            .unwrap()
    };
    let mut seen = observed(true, true, board(Some(1), 100));
    assert_eq!(evaluate(&seen).overall, Level::Ok);
    for hold in [
        HoldSummary::Holding {
            for_: Duration::from_secs(1),
            local_fault: false,
        },
        HoldSummary::Holding {
            for_: Duration::from_secs(1),
            local_fault: true,
        },
        HoldSummary::Released {
            for_: Duration::from_secs(30),
        },
        HoldSummary::Degraded,
    ] {
        seen.board.last_tick = Some(tick(hold, None));
        assert_eq!(level(&seen, "hold"), Level::Warn, "{hold:?}");
    }
    seen.board.last_tick = Some(tick(HoldSummary::Clear, Some("2 event commits failed")));
    assert_eq!(level(&seen, "hold"), Level::Ok);
    assert_eq!(level(&seen, "commits"), Level::Warn);
    seen.board.last_tick = Some(tick(HoldSummary::Clear, None));
    seen.stream = Ok(Some(false));
    assert_eq!(level(&seen, "stream"), Level::Warn);
    assert_eq!(evaluate(&seen).overall, Level::Warn);
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
