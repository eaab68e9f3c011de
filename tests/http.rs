//! The worker's HTTP surface against real Postgres, real NATS and real engines on loopback:
//! every endpoint, its status codes, formats, filters and bad input.

mod helpers;

use std::time::Duration;

use healthprobe::status::VERSION;
use helpers::engines::Behavior;
use helpers::process::get_text;
use helpers::scenario::Scenario;
use helpers::{WAIT_LIMIT, wait_for};
use serde_json::Value;

fn ids(body: &Value) -> Vec<String> {
    body["games"]
        .as_array()
        .expect("games is an array")
        .iter()
        .map(|g| g["game_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn healthz_is_200_while_ticks_complete_and_503_once_they_stop() {
    let scenario = Scenario::new().await;
    let mut app = scenario.app().interval(Duration::from_millis(100)).await;
    app.wait_first_tick().await;
    let live = app.get("/healthz").await;
    assert_eq!(live.code, 200, "{}", live.body);
    assert_eq!(live.content_type, "application/json");
    assert_eq!(live.json()["status"], "live");
    // 3 x interval is 300 ms; liveness' floor (10 s: one Postgres statement's longest wait
    // and slack) is the limit.
    assert_eq!(live.json()["limit_ms"], 10_000);

    app.stop_worker().await;
    let stalled = wait_for("healthz to turn 503", WAIT_LIMIT, || async {
        let r = app.get("/healthz").await;
        (r.code == 503).then_some(r)
    })
    .await;
    assert_eq!(stalled.json()["status"], "stalled");
    // Stalled means more than the limit; whole milliseconds round 10,000.4 ms down.
    assert!(stalled.json()["last_tick_ended_ms_ago"].as_u64().unwrap() >= 10_000);
}

#[tokio::test]
async fn readyz_is_200_when_postgres_and_nats_answer() {
    let scenario = Scenario::new().await;
    let app = scenario.app().await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.code, 200, "{}", ready.body);
    assert_eq!(ready.json(), serde_json::json!({ "ready": true }));
}

#[tokio::test]
async fn readyz_is_503_with_the_reasons_when_postgres_and_nats_are_unreachable() {
    let scenario = Scenario::new().await;
    let app = scenario
        .app()
        .postgres_down()
        .nats_down()
        .without_worker()
        .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.code, 503, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    let reasons: Vec<&str> = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].starts_with("postgres: "), "{reasons:?}");
    assert!(reasons[1].starts_with("nats: not connected"), "{reasons:?}");

    // Only NATS down: still not ready, one reason.
    let app = scenario.app().nats_down().without_worker().await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.code, 503);
    assert_eq!(ready.json()["reasons"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn status_is_200_ok_as_json_text_and_short() {
    let scenario = Scenario::new().await;
    scenario.game("game-ok", "ok", Behavior::Healthy).await;
    scenario
        .game("game-bad", "bad", Behavior::Status(500))
        .await;
    let app = scenario.app().await;
    app.wait_first_tick().await;

    let status = app.get("/status").await;
    assert_eq!(status.code, 200, "{}", status.body);
    assert_eq!(status.content_type, "application/json");
    let body = status.json();
    assert_eq!(body["status"], "OK");
    assert_eq!(body["version"], VERSION);
    for component in ["postgres", "nats", "ticks", "outbox"] {
        assert_eq!(body["components"][component]["status"], "OK", "{body}");
        assert!(body["components"][component]["rule"].is_string());
    }
    assert_eq!(body["outbox"]["pending"], 0);
    let tick = &body["last_tick"];
    assert_eq!(
        (&tick["records"], &tick["probes"], &tick["failures"]),
        (&Value::from(2), &Value::from(2), &Value::from(1)),
        "{tick}"
    );
    assert!(tick["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(tick["error"], Value::Null);

    for text in [
        app.get_with_accept("/status", "text/plain").await,
        app.get("/status?format=text").await,
        app.get_with_accept("/status", "text/html, text/plain;q=0.9")
            .await,
    ] {
        assert_eq!(text.code, 200);
        assert_eq!(text.content_type, "text/plain; charset=utf-8");
        assert!(
            text.body
                .starts_with(&format!("healthprobe {VERSION}: OK\n")),
            "{}",
            text.body
        );
        assert!(text.body.contains("postgres OK"), "{}", text.body);
        assert!(
            text.body
                .contains("last tick: 2 records, 2 probes, 1 failures"),
            "{}",
            text.body
        );
    }
    // format wins over Accept.
    let json = app
        .get_with_accept("/status?format=json", "text/plain")
        .await;
    assert_eq!(json.content_type, "application/json");

    let short = app.get("/status?short=true").await;
    assert_eq!(short.code, 200);
    assert_eq!(short.json(), serde_json::json!({ "status": "OK" }));
    let short_text = app.get("/status?short=true&format=text").await;
    assert_eq!(short_text.body, "OK\n");
}

#[tokio::test]
async fn status_is_207_warn_when_nats_is_unreachable() {
    let scenario = Scenario::new().await;
    let app = scenario.app().nats_down().await;
    app.wait_first_tick().await;
    let status = app.get("/status").await;
    assert_eq!(status.code, 207, "{}", status.body);
    let body = status.json();
    assert_eq!(body["status"], "WARN");
    assert_eq!(body["components"]["nats"]["status"], "WARN");
    assert_eq!(body["components"]["postgres"]["status"], "OK");
    let short = app.get("/status?short=1&format=text").await;
    assert_eq!((short.code, short.body.as_str()), (207, "WARN\n"));
}

#[tokio::test]
async fn status_is_503_ko_when_postgres_is_unreachable_and_ticks_still_go_round() {
    let scenario = Scenario::new().await;
    let app = scenario
        .app()
        .postgres_down()
        // Each failing tick waits for a connection up to a second; a 1 s interval keeps
        // the liveness limit (3 s) well above that.
        .interval(Duration::from_secs(1))
        .await;
    app.wait_first_tick().await;
    let status = app.get("/status").await;
    assert_eq!(status.code, 503, "{}", status.body);
    let body = status.json();
    assert_eq!(body["status"], "KO");
    assert_eq!(body["components"]["postgres"]["status"], "KO");
    assert_eq!(body["components"]["nats"]["status"], "OK");
    // The loop goes round even though every tick fails: live, with the failure reported.
    assert_eq!(body["components"]["ticks"]["status"], "OK");
    assert_eq!(body["outbox"]["pending"], Value::Null);
    assert!(
        body["last_tick"]["error"]
            .as_str()
            .unwrap()
            .contains("listing running records failed"),
        "{body}"
    );
    assert_eq!(app.get("/healthz").await.code, 200);
    let games = app.get("/games").await;
    assert_eq!(games.code, 503);
    assert_eq!(games.json()["error"], "unavailable");
}

#[tokio::test]
async fn games_lists_running_games_with_their_health() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .game_in("game-ok", "ok", Some("c-ok"), Behavior::Healthy)
        .await;
    scenario
        .game("game-bad", "bad", Behavior::Status(503))
        .await;
    scenario.game("game-gone", "gone", Behavior::Healthy).await;
    let app = scenario.app().await;
    app.wait_first_tick().await;
    // After the tick: one game stops, one new game has never been probed.
    env.set_status("game-gone", "stopped").await;
    scenario.game("game-new", "new", Behavior::Healthy).await;

    let response = app.get("/games").await;
    assert_eq!(response.code, 200, "{}", response.body);
    assert_eq!(response.content_type, "application/json");
    let body = response.json();
    assert_eq!(ids(&body), ["game-bad", "game-new", "game-ok"]);
    assert_eq!(body["next_cursor"], Value::Null);
    let games = body["games"].as_array().unwrap();

    let bad = &games[0];
    assert_eq!(bad["status"], "suspect");
    assert_eq!(bad["consecutive_failures"], 1);
    assert_eq!(bad["last_status"], 503);
    assert_eq!(bad["last_error"], "unexpected status 503");
    assert_eq!(bad["last_failure_kind"], "status");
    assert!(bad["last_probe_at"].is_string());
    assert_eq!(bad["last_success_at"], Value::Null);
    assert!(bad["last_latency_ms"].as_f64().unwrap() >= 0.0);

    let new = &games[1];
    assert_eq!(new["status"], "unknown");
    assert_eq!(new["consecutive_failures"], 0);
    for field in [
        "last_probe_at",
        "last_success_at",
        "last_latency_ms",
        "last_status",
        "last_error",
    ] {
        assert_eq!(new[field], Value::Null, "{field}");
    }

    let ok = &games[2];
    assert_eq!(ok["status"], "healthy");
    assert_eq!(ok["last_status"], 200);
    assert_eq!(ok["last_error"], Value::Null);
    assert_eq!(ok["container_id"], "c-ok");
    assert!(ok["last_success_at"].is_string());
    assert_eq!(ok["engine_endpoint"], fleet.endpoint("ok"));
}

#[tokio::test]
async fn games_filter_by_status_and_by_a_glob_on_game_id() {
    let scenario = Scenario::new().await;
    for (id, behavior) in [
        ("eu-1", Behavior::Healthy),
        ("eu-2", Behavior::Status(500)),
        ("us-1", Behavior::Healthy),
        ("us-10", Behavior::Status(500)),
        ("a_b", Behavior::Healthy),
        ("axb", Behavior::Healthy),
    ] {
        scenario.game(id, id, behavior).await;
    }
    let app = scenario.app().await;
    app.wait_first_tick().await;
    scenario.game("eu-3", "eu-3", Behavior::Healthy).await;

    let cases: [(&str, &[&str]); 10] = [
        ("status=suspect", &["eu-2", "us-10"]),
        ("status=healthy", &["a_b", "axb", "eu-1", "us-1"]),
        ("status=unknown", &["eu-3"]),
        ("status=failing", &[]),
        ("game_id=eu-*", &["eu-1", "eu-2", "eu-3"]),
        ("game_id=us-?", &["us-1"]),
        ("game_id=*1*", &["eu-1", "us-1", "us-10"]),
        // `_` is literal, not LIKE's any-character.
        ("game_id=a_b", &["a_b"]),
        ("game_id=a%3Fb", &["a_b", "axb"]),
        ("game_id=us-*&status=suspect", &["us-10"]),
    ];
    for (query, expected) in cases {
        let response = app.get(&format!("/games?{query}")).await;
        assert_eq!(response.code, 200, "{query}: {}", response.body);
        assert_eq!(ids(&response.json()), expected, "{query}");
    }
}

#[tokio::test]
async fn games_paginate_with_a_cursor_and_a_default_limit_of_100() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let games: Vec<(String, String)> = (0..130)
        .map(|i| (format!("g-{i:03}"), "http://127.0.0.1:9/e".to_owned()))
        .collect();
    env.store.register_running(&games).await.unwrap();
    env.set_status("g-005", "stopped").await;
    let app = scenario.app().without_worker().await;

    let first = app.get("/games").await.json();
    assert_eq!(ids(&first).len(), 100);
    assert!(first["next_cursor"].is_string());

    // Walk every page of 40: all 129 running games, in order, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/games?limit=40".to_owned(),
            Some(c) => format!("/games?limit=40&cursor={c}"),
        };
        let page = app.get(&path).await;
        assert_eq!(page.code, 200, "{}", page.body);
        let page = page.json();
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = games
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| id != "g-005")
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 4);

    let all = app.get("/games?limit=1000").await.json();
    assert_eq!(ids(&all).len(), 129);
    assert_eq!(all["next_cursor"], Value::Null);
    // An exact fit has no next page.
    let exact = app.get("/games?limit=129").await.json();
    assert_eq!(exact["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_input_gets_400_with_a_json_error_and_unknown_routes_json_too() {
    let scenario = Scenario::new().await;
    let app = scenario.app().await;
    let bad = [
        "/games?limit=0",
        "/games?limit=1001",
        "/games?limit=ten",
        "/games?limit=-5",
        "/games?status=sick",
        "/games?cursor=zz",
        "/games?cursor=abc",
        "/games?game_id=",
        "/games?colour=red",
        "/games?limit=1&limit=2",
        "/status?format=xml",
        "/status?short=maybe",
        "/status?verbose=1",
        "/healthz?x=1",
        "/readyz?x=1",
    ];
    for path in bad {
        let response = app.get(path).await;
        assert_eq!(response.code, 400, "{path}: {}", response.body);
        assert_eq!(response.content_type, "application/json", "{path}");
        let body = response.json();
        assert_eq!(body["error"], "bad_request", "{path}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{path}");
    }
    let long_glob = format!("/games?game_id={}", "x".repeat(600));
    assert_eq!(app.get(&long_glob).await.code, 400);
    let probe_bad = app.post("/games/game-1/probe?now=1").await;
    assert_eq!(probe_bad.code, 400);

    let missing = app.get("/nothing-here").await;
    assert_eq!(missing.code, 404);
    assert_eq!(missing.json()["error"], "not_found");
    let wrong_method = app.get("/games/game-1/probe").await;
    assert_eq!(wrong_method.code, 405);
    assert_eq!(wrong_method.json()["error"], "method_not_allowed");
    // Nothing above hurt the server.
    assert_eq!(app.get("/readyz").await.code, 200);
}

#[tokio::test]
async fn probe_now_counts_toward_the_hysteresis_exactly_like_a_tick() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .game_in("game-1", "e1", Some("c-1"), Behavior::Status(503))
        .await;
    let app = scenario.app().await;
    app.wait_first_tick().await; // failure 1 of 3, from the tick

    let second = app.post("/games/game-1/probe").await;
    assert_eq!(second.code, 200, "{}", second.body);
    let second = second.json();
    assert_eq!(second["game_id"], "game-1");
    assert_eq!(second["healthy"], false);
    assert_eq!(second["outcome"], "status");
    assert_eq!(second["last_status"], 503);
    assert_eq!(second["status"], "suspect");
    assert_eq!(second["consecutive_failures"], 2);
    assert_eq!(second["event"], Value::Null);

    let third = app.post("/games/game-1/probe").await.json();
    assert_eq!(third["status"], "failing");
    assert_eq!(third["consecutive_failures"], 3);
    assert_eq!(third["event"]["event_type"], "probe_failed");
    assert_eq!(third["event"]["details"]["consecutive_failures"], 3);
    assert_eq!(third["event"]["details"]["last_status"], 503);

    fleet.set("e1", Behavior::Healthy);
    let back = app.post("/games/game-1/probe").await.json();
    assert_eq!(back["healthy"], true);
    assert_eq!(back["status"], "healthy");
    assert_eq!(back["event"]["event_type"], "probe_recovered");
    assert_eq!(back["event"]["details"]["prior_failure_count"], 3);

    // Recorded like any tick's events, snapshot included, and published by the relay.
    assert_eq!(
        env.logged_events().await,
        [
            ("probe_failed".to_owned(), "game-1".to_owned(), false),
            ("probe_recovered".to_owned(), "game-1".to_owned(), false),
        ]
    );
    assert_eq!(env.snapshot("game-1").await.unwrap().0, "healthy");
    env.relay().drain_once().await.expect("drain");
    let published = env.wait_stream_events(2).await;
    assert_eq!(published[0].payload["event_id"], third["event"]["event_id"]);
    assert_eq!(published[0].payload["container_id"], "c-1");
    assert_eq!(fleet.requests("e1"), 4);
}

#[tokio::test]
async fn probe_now_of_an_unknown_or_stopped_game_is_404_json() {
    let scenario = Scenario::new().await;
    scenario.game("game-stopped", "s", Behavior::Healthy).await;
    scenario.env.set_status("game-stopped", "stopped").await;
    let app = scenario.app().await;
    for path in [
        "/games/nope/probe",
        "/games/game-stopped/probe",
        "/games/%E2%9C%93/probe",
    ] {
        let response = app.post(path).await;
        assert_eq!(response.code, 404, "{path}: {}", response.body);
        assert_eq!(response.content_type, "application/json");
        let body = response.json();
        assert_eq!(body["error"], "not_found");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("not a running game")
        );
    }
    assert_eq!(
        scenario.fleet.requests("s"),
        0,
        "a stopped game is not probed"
    );
}

#[tokio::test]
async fn on_demand_probes_beside_ticks_share_one_probe_and_emit_once() {
    // Ticks every 20 ms and 30 concurrent on-demand probes of one failing engine: the
    // requests share the probe in flight (single-flight), each probe goes through the same
    // commit rule as the ticks (a second writer), and the episode has one probe_failed.
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .game("game-1", "e1", Behavior::Delay(Duration::from_millis(300)))
        .await;
    let mut app = scenario
        .app()
        .interval(Duration::from_millis(20))
        .probe_timeout(Duration::from_millis(100))
        .thresholds(3, 1)
        .await;
    app.wait_first_tick().await;
    let before = fleet.requests("e1");
    let posts = (0..30).map(|_| app.post("/games/game-1/probe"));
    let answers = futures::future::join_all(posts).await;
    let during = fleet.requests("e1") - before;
    // The ticks beside the requests carry the episode to its threshold; on a loaded machine
    // that can take longer than the 30 requests did, so wait for it (bounded) rather than
    // stopping the worker at once.
    wait_for("the game to be failing", WAIT_LIMIT, || async {
        (env.snapshot("game-1").await?.0 == "failing").then_some(())
    })
    .await;
    app.stop_worker().await;
    assert!(
        answers.iter().all(|r| r.code == 200),
        "all probes answered: {:?}",
        answers.iter().map(|r| r.code).collect::<Vec<_>>()
    );
    // One probe in flight at a time for the 30 requests; the ticks probe beside them.
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|r| r.json()["completed_at"].to_string())
        .collect();
    assert!(ids.len() <= 3, "30 requests shared {} probes", ids.len());
    assert!(during >= 1, "the engine was probed");
    assert_eq!(
        env.logged_events().await.len(),
        1,
        "exactly one probe_failed"
    );
}

#[tokio::test]
async fn on_demand_probes_do_not_need_the_tick_loop_and_the_server_shuts_down_gracefully() {
    let scenario = Scenario::new().await;
    scenario.game("game-1", "e1", Behavior::Healthy).await;
    let mut app = scenario.app().await;
    app.wait_first_tick().await;
    app.stop_worker().await;
    let response = app.post("/games/game-1/probe").await;
    assert_eq!(response.code, 200, "{}", response.body);
    assert_eq!(response.json()["healthy"], true);
    app.stop_server().await;
}

/// The real binary: binds port 0, logs the address, serves the endpoints, and on SIGTERM
/// shuts the server down gracefully with everything else, exit 0.
#[tokio::test]
async fn the_worker_process_serves_the_endpoints_on_the_logged_address() {
    let scenario = Scenario::new().await;
    scenario.game("game-1", "e1", Behavior::Healthy).await;
    let mut worker = scenario
        .worker("http")
        .interval(Duration::from_millis(200))
        .spawn();
    let addr = worker.status_addr().await;
    let client = reqwest::Client::new();
    // Ready once Postgres answers and the background NATS connection is up.
    let (code, _) = wait_for("readyz 200", WAIT_LIMIT, || async {
        get_text(&addr, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    assert_eq!(code, 200);
    let (code, body) = wait_for("a game probed", WAIT_LIMIT, || async {
        let (code, body) = get_text(&addr, "/games?status=healthy").await?;
        body.contains("game-1").then_some((code, body))
    })
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = get_text(&addr, "/status?short=true").await.unwrap();
    assert_eq!(code, 200);
    let probe = client
        .post(format!("http://{addr}/games/game-1/probe"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status().as_u16(), 200);

    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}: {}", worker.log_text());
    let log = worker.log_text();
    assert!(
        log.contains("status endpoints stopped: shutdown requested"),
        "{log}"
    );
    assert!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "server closed"
    );
}

#[tokio::test]
async fn on_demand_probes_are_served_between_ticks_longer_than_the_interval() {
    // Every tick takes about 400 ms against an interval of 100 ms, so a tick is always
    // overdue when the previous one ends; a request must still be served between them.
    let scenario = Scenario::new().await;
    scenario
        .game("slow", "slow", Behavior::Delay(Duration::from_millis(400)))
        .await;
    scenario.game("game-1", "e1", Behavior::Healthy).await;
    let app = scenario.app().interval(Duration::from_millis(100)).await;
    app.wait_first_tick().await;
    for _ in 0..3 {
        let answer = app.post("/games/game-1/probe").await;
        assert_eq!(answer.code, 200, "{}", answer.body);
        assert_eq!(answer.json()["healthy"], true);
    }
}
