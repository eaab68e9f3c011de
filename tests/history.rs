//! `GET /games/history`, the fleet page's timeline: failure episodes and availability over
//! a window, derived from the event log of a real Postgres (rows written as the worker
//! writes them), for the games asked.

mod helpers;

use helpers::scenario::Scenario;
use serde_json::Value;

fn availability(body: &Value, game: &str) -> f64 {
    body["games"][game]["availability"]
        .as_f64()
        .unwrap_or_else(|| panic!("{game} in {body}"))
}

#[tokio::test]
async fn episodes_and_availability_come_from_the_event_log() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    // Not probed by a worker: only the log and the records matter here.
    let app = scenario.app().without_worker().await;
    for game in [
        "quiet",
        "past",
        "now-failing",
        "old-open",
        "replaced",
        "stopped",
    ] {
        let container = if game == "replaced" { "c-new" } else { "c-1" };
        env.add_running(game, "http://127.0.0.1:9/", Some(container))
            .await;
    }
    // A closed episode inside the window: 12 h to 6 h ago, a quarter of 24 h.
    env.log_published_event("past", "c-1", "probe_failed", 12.0)
        .await;
    env.log_published_event("past", "c-1", "probe_recovered", 6.0)
        .await;
    // An episode before the window, closed before it: not shown.
    env.log_published_event("past", "c-1", "probe_failed", 40.0)
        .await;
    env.log_published_event("past", "c-1", "probe_recovered", 30.0)
        .await;
    // Failing for the last 3 hours, and still failing (the snapshot says so).
    env.log_published_event("now-failing", "c-1", "probe_failed", 3.0)
        .await;
    // Failing since before the window: the whole window is an episode.
    env.log_published_event("old-open", "c-1", "probe_failed", 30.0)
        .await;
    sqlx::query(
        "INSERT INTO health_snapshots (game_id, status, consecutive_failures, consecutive_successes, \
           failure_published, updated_at, container_id) \
         SELECT g, 'failing', 3, 0, true, now(), 'c-1' FROM unnest(ARRAY['now-failing', 'old-open']) g",
    )
    .execute(env.pool())
    .await
    .expect("snapshots");
    // The old container failed 5 h ago, a new one started since and is not failing.
    env.log_published_event("replaced", "c-old", "probe_failed", 5.0)
        .await;
    env.set_status("stopped", "stopped").await;

    // The events were inserted in commit order but not time order for "past": the log is
    // read in commit order, as the worker writes it.
    let response = app
        .get("/games/history?game_id=quiet&game_id=past&game_id=now-failing&game_id=old-open&game_id=replaced&game_id=stopped&game_id=unknown")
        .await;
    assert_eq!(response.code, 200, "{}", response.body);
    let body = response.json();
    let games = body["games"].as_object().unwrap();
    assert_eq!(
        games.keys().map(String::as_str).collect::<Vec<_>>(),
        ["now-failing", "old-open", "past", "quiet", "replaced"],
        "running games only: {body}"
    );
    assert_eq!(availability(&body, "quiet"), 1.0);
    assert_eq!(body["games"]["quiet"]["episodes"], serde_json::json!([]));
    assert!(
        (availability(&body, "now-failing") - 21.0 / 24.0).abs() < 0.001,
        "{body}"
    );
    assert!(body["games"]["now-failing"]["failing_since"].is_string());
    assert_eq!(
        body["games"]["now-failing"]["episodes"][0]["end"],
        Value::Null
    );
    assert!(availability(&body, "old-open") < 0.001, "{body}");
    assert!(body["games"]["old-open"]["failing_since"].is_string());
    // The replaced container's episode ended when the new one started (just now here).
    assert!(
        (availability(&body, "replaced") - 19.0 / 24.0).abs() < 0.01,
        "{body}"
    );
    assert_eq!(body["games"]["replaced"]["failing_since"], Value::Null);
    assert!(body["games"]["replaced"]["episodes"][0]["end"].is_string());
}

#[tokio::test]
async fn a_closed_episode_costs_its_share_of_the_window() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let app = scenario.app().without_worker().await;
    env.add_running("past", "http://127.0.0.1:9/", Some("c-1"))
        .await;
    env.log_published_event("past", "c-1", "probe_failed", 12.0)
        .await;
    env.log_published_event("past", "c-1", "probe_recovered", 6.0)
        .await;
    let body = app.get("/games/history?game_id=past").await.json();
    assert!((availability(&body, "past") - 0.75).abs() < 0.001, "{body}");
    assert_eq!(
        body["games"]["past"]["episodes"].as_array().unwrap().len(),
        1
    );
    assert_eq!(body["games"]["past"]["failing_since"], Value::Null);
    // A 2-hour window misses it entirely.
    let body = app.get("/games/history?game_id=past&hours=2").await.json();
    assert_eq!(availability(&body, "past"), 1.0, "{body}");

    for bad in ["hours=0", "hours=x", "status=failing", "game_id="] {
        let response = app.get(&format!("/games/history?{bad}")).await;
        assert_eq!(response.code, 400, "{bad}: {}", response.body);
        assert_eq!(response.json()["error"], "bad_request");
    }
}
