//! Probes as real engines need them (DESIGN §16), through the worker: the global settings
//! (`RTMANAGER_PROBE_PATH`, `HEALTHPROBE_PROBE_EXPECT`, `HEALTHPROBE_PROBE_HEADERS`,
//! `RTMANAGER_PROBE_INITIAL_DELAY`), per-game rows of `health_probe_overrides` taking
//! effect at the next tick, a bad row staying that game's problem, and the status port's
//! token.

mod helpers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use helpers::scenario::Scenario;
use helpers::{TestEnv, WAIT_LIMIT, wait_for};
use tokio_util::sync::CancellationToken;

/// Engines as real ones differ: `/e/{id}/{check}` answers by `check`:
/// `healthz` 503 (the default probe fails everywhere), `ready` 204, `moved` 301 (never
/// followed), `token` 200 only with `X-Token: abc` (401 otherwise). Counts requests per
/// engine and path.
#[derive(Clone, Default)]
struct Engines {
    requests: Arc<Mutex<HashMap<(String, String), usize>>>,
}

async fn answer(
    State(engines): State<Engines>,
    Path((id, check)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    *engines
        .requests
        .lock()
        .unwrap()
        .entry((id, check.clone()))
        .or_default() += 1;
    match check.as_str() {
        "ready" => StatusCode::NO_CONTENT.into_response(),
        "moved" => (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, "/elsewhere")],
        )
            .into_response(),
        "token" if headers.get("x-token").is_some_and(|v| v == "abc") => {
            StatusCode::OK.into_response()
        }
        "token" => StatusCode::UNAUTHORIZED.into_response(),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

impl Engines {
    async fn start() -> (Self, SocketAddr) {
        let engines = Self::default();
        let app = Router::new()
            .route("/e/{id}/{check}", get(answer))
            .with_state(engines.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (engines, addr)
    }

    fn requests(&self, id: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|((engine, _), _)| engine == id)
            .map(|(_, n)| n)
            .sum()
    }

    fn requests_to(&self, id: &str, check: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(&(id.to_owned(), check.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

async fn set_override(env: &TestEnv, game_id: &str, columns: &str, values: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO health_probe_overrides (game_id, {columns}) VALUES ('{game_id}', {values}) \
         ON CONFLICT (game_id) DO UPDATE SET ({columns}) = ROW({values})"
    )))
    .execute(env.pool())
    .await
    .unwrap();
}

async fn status_of(env: &TestEnv, game_id: &str) -> Option<String> {
    env.snapshot(game_id).await.map(|s| s.0)
}

#[tokio::test]
async fn overrides_apply_per_game_from_the_next_tick() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let (engines, addr) = Engines::start().await;
    let endpoint = |id: &str| format!("http://{addr}/e/{id}");
    for id in [
        "ready", "moved", "token", "plain", "bad", "off", "young", "patient",
    ] {
        env.add_running(id, &endpoint(id), None).await;
    }
    set_override(env, "ready", "path, expect", "'/ready', '200-299'").await;
    set_override(env, "moved", "path, expect", "'/moved', '301'").await;
    set_override(
        env,
        "token",
        "path, headers",
        "'/token', '{\"X-Token\": \"abc\"}'",
    )
    .await;
    // A status range that does not parse: the global settings, and the game is named.
    set_override(env, "bad", "path, expect", "'/ready', '2xx'").await;
    set_override(env, "off", "disabled", "true").await;
    set_override(env, "young", "initial_delay", "'1 hour'").await;
    set_override(env, "patient", "failures_threshold", "3").await;

    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(8)
        .probe_timeout(Duration::from_secs(2))
        .build();
    let stop = CancellationToken::new();
    let report = worker.tick(&stop).await.unwrap();
    assert_eq!(report.records, 8);
    assert_eq!(report.disabled, 1, "{report:?}");
    assert_eq!(report.in_initial_delay, 1, "{report:?}");
    assert_eq!(report.bad_override_count, 1, "{report:?}");
    assert_eq!(report.bad_overrides[0].0, "bad");
    assert!(report.bad_overrides[0].1.contains("expect"), "{report:?}");
    for healthy in ["ready", "moved", "token"] {
        assert_eq!(
            status_of(env, healthy).await.as_deref(),
            Some("healthy"),
            "{healthy}"
        );
    }
    assert_eq!(engines.requests_to("ready", "ready"), 1);
    assert_eq!(
        engines.requests_to("moved", "moved"),
        1,
        "the redirect is not followed"
    );
    assert_eq!(
        engines.requests_to("bad", "healthz"),
        1,
        "a bad row: the global path"
    );
    assert_eq!(
        engines.requests("off"),
        0,
        "a disabled game is never probed"
    );
    assert_eq!(engines.requests("young"), 0, "not before its initial delay");
    // Threshold 1 for the others, 3 for `patient`.
    let mut failed: Vec<String> = report.events.iter().map(|e| e.game_id.clone()).collect();
    failed.sort();
    assert_eq!(failed, ["bad", "plain"], "{report:?}");
    assert_eq!(status_of(env, "patient").await.as_deref(), Some("suspect"));

    // Rows change: the next tick follows them.
    sqlx::query("DELETE FROM health_probe_overrides WHERE game_id = 'off'")
        .execute(env.pool())
        .await
        .unwrap();
    set_override(env, "bad", "path, expect", "'/ready', '204'").await;
    sqlx::query(
        "UPDATE runtime_records SET started_at = now() - interval '2 hours' WHERE game_id = 'young'",
    )
    .execute(env.pool())
    .await
    .unwrap();
    set_override(env, "token", "headers", "'{\"X-Token\": \"wrong\"}'").await;
    let report = worker.tick(&stop).await.unwrap();
    assert_eq!(report.disabled, 0);
    assert_eq!(report.in_initial_delay, 0);
    assert_eq!(report.bad_override_count, 0, "{report:?}");
    let mut events: Vec<(String, &str)> = report
        .events
        .iter()
        .map(|e| (e.game_id.clone(), e.event_type().as_str()))
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            ("bad".to_owned(), "probe_recovered"),
            ("off".to_owned(), "probe_failed"),
            ("token".to_owned(), "probe_failed"),
            ("young".to_owned(), "probe_failed"),
        ],
        "{report:?}"
    );
    assert_eq!(engines.requests("off"), 1);
    assert_eq!(engines.requests_to("young", "healthz"), 1);
    // `patient` has its threshold at its third failure.
    worker.tick(&stop).await.unwrap();
    assert_eq!(status_of(env, "patient").await.as_deref(), Some("failing"));
}

#[tokio::test]
async fn a_disabled_game_is_listed_as_disabled_and_refuses_probes_on_demand() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let (engines, addr) = Engines::start().await;
    env.add_running("off", &format!("http://{addr}/e/off"), None)
        .await;
    set_override(env, "off", "disabled", "true").await;
    // Disabled while failing: it is no longer a failing game for anyone (an alert counts
    // `healthprobe_games{status="failing"}`).
    sqlx::query(
        "INSERT INTO health_snapshots (game_id, status, consecutive_failures, \
           consecutive_successes, episode_failures, failure_published, last_probe_at, \
           last_status, last_latency_ms, updated_at) \
         VALUES ('off', 'failing', 5, 0, 5, true, now(), 503, 1.0, now())",
    )
    .execute(env.pool())
    .await
    .unwrap();
    env.add_running("odd", &format!("http://{addr}/e/odd"), None)
        .await;
    set_override(env, "odd", "initial_delay", "'-5 seconds'").await;
    let mut worker = scenario
        .worker("disabled")
        .interval(Duration::from_millis(100))
        .spawn();
    let status_addr = worker.status_addr().await;
    let client = reqwest::Client::new();
    let games: serde_json::Value = serde_json::from_slice(
        &client
            .get(format!("http://{status_addr}/games?status=disabled"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(games["games"][0]["game_id"], "off", "{games}");
    assert_eq!(games["games"][0]["status"], "disabled", "{games}");
    let answer = client
        .post(format!("http://{status_addr}/games/off/probe"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);
    // `healthprobe status` says so too.
    let output = tokio::process::Command::new(helpers::process::binary())
        .args(["status", "--status", "disabled"])
        .env("DATABASE_URL", &env.database_url)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("off") && table.contains("disabled"),
        "{table}"
    );
    assert_eq!(engines.requests("off"), 0);
    let gauge = |metrics: &str, status: &str| -> Option<u64> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("healthprobe_games{") && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let metrics = wait_for(
        "the games gauge counting the disabled game",
        WAIT_LIMIT,
        || async {
            let text = client
                .get(format!("http://{status_addr}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (gauge(&text, "disabled") == Some(1)).then_some(text)
        },
    )
    .await;
    assert_eq!(gauge(&metrics, "failing"), Some(0), "{metrics}");
    // The bad row is named on /status and in the log; its game is probed all the same.
    let status = wait_for("the overrides component on /status", WAIT_LIMIT, || async {
        let status: serde_json::Value = serde_json::from_slice(
            &client
                .get(format!("http://{status_addr}/status"))
                .send()
                .await
                .ok()?
                .bytes()
                .await
                .ok()?,
        )
        .ok()?;
        status["components"]
            .get("overrides")
            .is_some()
            .then_some(status)
    })
    .await;
    let overrides = &status["components"]["overrides"];
    assert_eq!(overrides["status"], "WARN", "{status}");
    assert!(
        overrides["detail"].as_str().unwrap().contains("odd")
            && overrides["detail"]
                .as_str()
                .unwrap()
                .contains("initial_delay"),
        "{status}"
    );
    assert!(
        engines.requests("odd") > 0,
        "a bad row's game is still probed"
    );
    worker.terminate(Duration::from_secs(10)).await;
    assert!(
        worker
            .log_text()
            .contains("bad row in health_probe_overrides"),
        "{}",
        worker.log_text()
    );
}

#[tokio::test]
async fn global_probe_settings_come_from_the_environment() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let (engines, addr) = Engines::start().await;
    env.add_running("tokened", &format!("http://{addr}/e/tokened"), None)
        .await;
    // A record that started just now waits for the initial delay; one without
    // `started_at` is probed at once.
    env.add_running("fresh", &format!("http://{addr}/e/fresh"), None)
        .await;
    sqlx::query("UPDATE runtime_records SET started_at = NULL WHERE game_id = 'tokened'")
        .execute(env.pool())
        .await
        .unwrap();
    let mut worker = scenario
        .worker("global-settings")
        .interval(Duration::from_millis(100))
        .failures(1)
        .setting("RTMANAGER_PROBE_PATH", "/token")
        .setting("HEALTHPROBE_PROBE_EXPECT", "200-204")
        .setting("HEALTHPROBE_PROBE_HEADERS", "X-Token=abc")
        .setting("RTMANAGER_PROBE_INITIAL_DELAY", "1h")
        .spawn();
    wait_for("the tokened engine probed healthy", WAIT_LIMIT, || async {
        (status_of(env, "tokened").await.as_deref() == Some("healthy")).then_some(())
    })
    .await;
    // Several ticks later the fresh one is still untouched.
    wait_for("a few more probes", WAIT_LIMIT, || async {
        (engines.requests_to("tokened", "token") >= 5).then_some(())
    })
    .await;
    assert_eq!(engines.requests("fresh"), 0);
    assert_eq!(engines.requests_to("tokened", "healthz"), 0);
    assert!(env.logged_events().await.is_empty(), "nothing failed");
    worker.terminate(Duration::from_secs(10)).await;
    assert!(
        !worker.log_text().contains("X-Token=abc"),
        "the header's value never reaches the log"
    );
}

#[tokio::test]
async fn bad_probe_settings_stop_start_up_naming_the_variable() {
    let env = TestEnv::new().await;
    for (variable, value) in [
        ("RTMANAGER_PROBE_PATH", "healthz"),
        ("HEALTHPROBE_PROBE_EXPECT", "2xx"),
        ("HEALTHPROBE_PROBE_HEADERS", "X-Token"),
        ("HEALTHPROBE_PROBE_CA", "/nonexistent/ca.pem"),
        ("RTMANAGER_PROBE_INITIAL_DELAY", "-1s"),
        ("HEALTHPROBE_STREAM_MAX_AGE", "0s"),
        ("HEALTHPROBE_EVENT_RETENTION", "soon"),
        ("HEALTHPROBE_HTTP_TOKEN", "two words"),
        ("NATS_CA", "/nonexistent/ca.pem"),
        ("NATS_CREDS", "/nonexistent/x.creds"),
    ] {
        let output = tokio::process::Command::new(helpers::process::binary())
            .arg("run")
            .envs(env.process_env())
            .env(variable, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{variable}={value}: {stderr}"
        );
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
    // Two that parse alone but not together.
    let output = tokio::process::Command::new(helpers::process::binary())
        .arg("run")
        .envs(env.process_env())
        .env("HEALTHPROBE_STREAM_MAX_AGE", "10m")
        .env("HEALTHPROBE_DEDUP_WINDOW", "1h")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HEALTHPROBE_STREAM_MAX_AGE"), "{stderr}");
}

#[tokio::test]
async fn the_http_token_guards_probes_and_leaves_reads_open() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let (_engines, addr) = Engines::start().await;
    env.add_running("g", &format!("http://{addr}/e/g"), None)
        .await;
    let token = "s3cret-token-0123456789";
    let mut worker = scenario
        .worker("http-token")
        .token(token)
        .setting("RTMANAGER_PROBE_PATH", "/ready")
        .setting("HEALTHPROBE_PROBE_EXPECT", "204")
        .spawn();
    let status_addr = worker.status_addr().await;
    let client = reqwest::Client::new();
    let probe = format!("http://{status_addr}/games/g/probe");
    for authorization in [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Basic {token}")),
        Some(format!("Bearer {token}x")),
    ] {
        let mut request = client.post(&probe);
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401, "{authorization:?}");
        assert!(answer.headers().contains_key("www-authenticate"));
        let body: serde_json::Value =
            serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"], "unauthorized", "{body}");
    }
    let answer = client
        .post(&probe)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    for read in ["/games", "/status", "/healthz", "/metrics"] {
        let answer = client
            .get(format!("http://{status_addr}{read}"))
            .send()
            .await
            .unwrap();
        assert_ne!(answer.status(), 401, "{read} stays open");
        assert!(answer.status().is_success(), "{read}: {}", answer.status());
    }
    worker.terminate(Duration::from_secs(10)).await;
    assert!(
        !worker.log_text().contains(token),
        "the token never reaches the log"
    );
}
