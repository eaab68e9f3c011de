//! The operator's endpoints over HTTP, against real Postgres, NATS and engines: the fleet
//! page (`GET /`), its live stream (`GET /live`), the read models it uses (`GET /events`,
//! `GET /games/counts`) and the Prometheus scrape (`GET /metrics`). The page in a real
//! browser is `tests/page.rs`; a real Prometheus server is `tests/prometheus.rs`.

mod helpers;

use std::time::Duration;

use helpers::engines::Behavior;
use helpers::scenario::Scenario;
use helpers::{WAIT_LIMIT, wait_for};

/// Reads Server-Sent Events from an open response until one named `name` arrives; returns
/// its data.
async fn next_event(response: &mut reqwest::Response, buffer: &mut String, name: &str) -> String {
    let found = tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event = if value.trim() == name { name } else { "other" };
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if event == name {
                    return data;
                }
            }
            let chunk = response
                .chunk()
                .await
                .expect("the stream stays readable")
                .unwrap_or_else(|| panic!("the stream ended before a {name:?} event"));
            buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {name:?} event within {WAIT_LIMIT:?}"))
}

#[tokio::test]
async fn the_page_is_one_self_contained_html_file() {
    let scenario = Scenario::new().await;
    let app = scenario.app().await;
    let page = app.get("/").await;
    assert_eq!(page.code, 200);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert!(page.body.starts_with("<!doctype html>"));
    // Nothing loaded from elsewhere: no external script, style, font or image.
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(http",
        "url(//",
        "<link rel=\"stylesheet\"",
    ] {
        assert!(
            !page.body.contains(external),
            "the page references {external}"
        );
    }
    let with_query = app.get("/?x=1").await;
    assert_eq!(with_query.code, 400, "{}", with_query.body);
    let client = reqwest::Client::new();
    let response = client.get(format!("{}/", app.base)).send().await.unwrap();
    let csp = response
        .headers()
        .get("content-security-policy")
        .expect("a Content-Security-Policy")
        .to_str()
        .unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
}

#[tokio::test]
async fn counts_and_events_are_the_read_models_of_the_page() {
    let scenario = Scenario::new().await;
    scenario.game("a", "a", Behavior::Healthy).await;
    scenario
        .game_in("b", "b", Some("c-b"), Behavior::Status(503))
        .await;
    scenario.game("c", "c", Behavior::Status(500)).await;
    let app = scenario.app().deciding_on_one_probe().await;
    app.wait_first_tick().await;
    // One never probed: running, no snapshot yet.
    scenario.game("d", "d", Behavior::Healthy).await;
    let counts = app.get("/games/counts").await;
    assert_eq!(counts.code, 200, "{}", counts.body);
    assert_eq!(
        counts.json(),
        serde_json::json!({
            "total": 4,
            "by_status": { "failing": 2, "suspect": 0, "unknown": 1, "healthy": 1, "disabled": 0 },
        })
    );
    let events = app.get("/events").await;
    assert_eq!(events.code, 200, "{}", events.body);
    let list = events.json()["events"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    let mut games: Vec<&str> = list
        .iter()
        .map(|e| e["game_id"].as_str().unwrap())
        .collect();
    games.sort();
    assert_eq!(games, ["b", "c"]);
    let b = list.iter().find(|e| e["game_id"] == "b").unwrap();
    assert_eq!(b["event_type"], "probe_failed");
    assert_eq!(b["container_id"], "c-b");
    assert_eq!(b["details"]["last_status"], 503);
    assert!(b["occurred_at"].as_str().unwrap().ends_with('Z'));
    assert!(b["published"].is_boolean());
    // Newest first, and the limit holds.
    let one = app.get("/events?limit=1").await.json();
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    assert_eq!(one["events"][0]["event_id"], list[0]["event_id"]);
    for bad in [
        "/events?limit=0",
        "/events?limit=201",
        "/events?x=1",
        "/games/counts?x=1",
    ] {
        let r = app.get(bad).await;
        assert_eq!(r.code, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_request");
    }
}

#[tokio::test]
async fn the_live_stream_says_hello_then_pushes_each_tick_and_ends_with_the_server() {
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    scenario.game("g", "g", Behavior::Healthy).await;
    let mut app = scenario.app().interval(Duration::from_millis(200)).await;
    let mut response = reqwest::get(format!("{}/live", app.base)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buffer = String::new();
    let hello: serde_json::Value =
        serde_json::from_str(&next_event(&mut response, &mut buffer, "hello").await).unwrap();
    assert_eq!(hello["interval_ms"], 200);
    let tick: serde_json::Value =
        serde_json::from_str(&next_event(&mut response, &mut buffer, "tick").await).unwrap();
    assert_eq!(tick["records"], 1, "{tick}");
    assert_eq!(tick["probes"], 1, "{tick}");

    // An on-demand probe that records an event is pushed at once, between ticks.
    fleet.set("g", Behavior::Status(503));
    app.stop_worker().await;
    let mut slow = scenario.app().deciding_on_one_probe().await;
    slow.wait_first_tick().await; // the first tick records probe_failed
    fleet.set("g", Behavior::Healthy);
    let mut stream = reqwest::get(format!("{}/live", slow.base)).await.unwrap();
    let mut buffer2 = String::new();
    next_event(&mut stream, &mut buffer2, "hello").await;
    let probe = slow.post("/games/g/probe").await;
    assert_eq!(probe.code, 200, "{}", probe.body);
    let pushed: serde_json::Value =
        serde_json::from_str(&next_event(&mut stream, &mut buffer2, "health_event").await).unwrap();
    assert_eq!(pushed["game_id"], "g");
    assert_eq!(pushed["event"]["event_type"], "probe_recovered");

    // A graceful shutdown does not wait forever on open streams: they end.
    slow.stop_worker().await;
    slow.stop_server().await;
    let end = tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the live stream ends when the server stops");
    app.stop_server().await;
}

#[tokio::test]
async fn metrics_serve_the_instruments_in_the_prometheus_text_format() {
    let scenario = Scenario::new().await;
    scenario.game("up", "up", Behavior::Healthy).await;
    scenario.game("down", "down", Behavior::Status(503)).await;
    let app = scenario.app().deciding_on_one_probe().await;
    app.wait_first_tick().await;
    let metrics = wait_for(
        "the first tick's probes at /metrics",
        WAIT_LIMIT,
        || async {
            let r = app.get("/metrics").await;
            r.body.contains("outcome=\"status\"").then_some(r)
        },
    )
    .await;
    assert_eq!(metrics.code, 200);
    assert_eq!(
        metrics.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = metrics.body;
    for line in [
        "# TYPE healthprobe_probes_total counter",
        "healthprobe_probes_total{outcome=\"ok\",otel_scope_name=\"healthprobe\"} 1",
        "healthprobe_probes_total{outcome=\"status\",otel_scope_name=\"healthprobe\"} 1",
        "# TYPE rtmanager_health_events_total counter",
        "rtmanager_health_events_total{event_type=\"probe_failed\",otel_scope_name=\"healthprobe\"} 1",
        "# TYPE healthprobe_probe_duration_seconds histogram",
        // One series per answer, with the OpenTelemetry HTTP client attributes: the
        // healthy probe (200) and the failing one (503, its status as the error type).
        "healthprobe_probe_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",otel_scope_name=\"healthprobe\"} 1",
        "healthprobe_probe_duration_seconds_count{error_type=\"503\",http_request_method=\"GET\",http_response_status_code=\"503\",otel_scope_name=\"healthprobe\"} 1",
        "healthprobe_probe_duration_seconds_bucket{http_request_method=\"GET\",http_response_status_code=\"200\",otel_scope_name=\"healthprobe\",le=\"+Inf\"} 1",
        "# TYPE healthprobe_tick_duration_seconds histogram",
        "# TYPE healthprobe_running_records gauge",
        "healthprobe_running_records{otel_scope_name=\"healthprobe\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[tokio::test]
async fn live_streams_are_limited_and_a_closed_one_frees_its_place() {
    let scenario = Scenario::new().await;
    let app = scenario.app().await;
    let limit = healthprobe::live::MAX_SUBSCRIBERS;
    let mut open = Vec::new();
    for _ in 0..limit {
        let mut response = reqwest::get(format!("{}/live", app.base)).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut buffer = String::new();
        next_event(&mut response, &mut buffer, "hello").await;
        open.push(response);
    }
    let refused = app.get("/live").await;
    assert_eq!(refused.code, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "busy");
    // Other endpoints are not affected.
    assert_eq!(app.get("/games/counts").await.code, 200);
    // A browser that leaves frees its place once the server notices (at the latest on the
    // next write; the board's next tick is an hour away here, so wait for the drop).
    drop(open.pop());
    let again = wait_for("a free place after a stream closed", WAIT_LIMIT, || async {
        let response = reqwest::get(format!("{}/live", app.base)).await.ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert_eq!(again.status(), 200);
}
