//! Golden tests: the status surface and the operator commands, pinned byte for byte.
//!
//! One scene (a healthy game, a failing one, one with an endpoint that does not parse, a
//! set-aside outbox row, two replicas in the membership table, one of them expired) and
//! every output an operator or a dashboard reads from it: `GET /status` (JSON and text),
//! `/healthz`, `/readyz`, `/games` (and a page of it), `/games/counts`, `/events`, an
//! on-demand probe, every kind of bad request (one JSON 400 shape for all), and the tables
//! and JSON of `healthprobe status`, `status --members` and `outbox list`.
//!
//! Values that change from run to run are replaced before comparing: times (`<time>`),
//! event ids (`<uuid>`), addresses (`<addr>`), durations and ages (`<n>`), the version
//! (`<version>`). The per-game table's columns are padded to their widest cell, and the
//! age and latency cells vary in width, so in that table runs of spaces are compared as
//! two (its alignment is unit-tested with fixed values).
//!
//! The files live in `tests/golden/`. After an intended change of an output, regenerate
//! them with `HEALTHPROBE_GOLDEN_UPDATE=1 cargo test --test golden` and review the diff.

mod helpers;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use healthprobe::status::{MembersView, RelayRole};
use healthprobe::store::Heartbeat;
use helpers::engines::Behavior;
use helpers::process::binary;
use helpers::scenario::Scenario;
use helpers::{TestEnv, WAIT_LIMIT, wait_for};
use regex::Regex;
use serde_json::Value;

const UPDATE_VAR: &str = "HEALTHPROBE_GOLDEN_UPDATE";

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file `name`, or writes it when [`UPDATE_VAR`] is set.
fn check(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os(UPDATE_VAR).is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} unreadable ({e}); create it with {UPDATE_VAR}=1",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "output differs from {} (regenerate with {UPDATE_VAR}=1 if the change is intended)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// Replaces what varies between runs with placeholders.
fn normalise(text: &str) -> String {
    static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        [
            (
                r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
                "<time>",
            ),
            (
                r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "<uuid>",
            ),
            (r"127\.\d+\.\d+\.\d+:\d+", "<addr>"),
            (r"\d+(\.\d+)? ms\b", "<n> ms"),
            (r"\d+(\.\d+)? s ago", "<n> s ago"),
            (r"\d+(\.\d+)?s ago", "<n>s ago"),
            (r"\d+(\.\d+)?ms\b", "<n>ms"),
        ]
        .into_iter()
        .map(|(pattern, with)| (Regex::new(pattern).unwrap(), with))
        .collect()
    });
    let mut out = text.replace(env!("CARGO_PKG_VERSION"), "<version>");
    for (pattern, with) in RULES.iter() {
        out = pattern.replace_all(&out, *with).into_owned();
    }
    out
}

/// Numbers that are durations or ages become `"<n>"`, recursively.
fn normalise_json(value: &mut Value) {
    const VOLATILE: [&str; 5] = [
        "duration_ms",
        "last_latency_ms",
        "latency_ms",
        "last_tick_ended_ms_ago",
        "last_progress_ms_ago",
    ];
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if VOLATILE.contains(&key.as_str()) && field.is_number() {
                    *field = Value::String("<n>".into());
                } else {
                    normalise_json(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

fn pretty_json(body: &str) -> String {
    let mut value: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    normalise_json(&mut value);
    normalise(&format!(
        "{}\n",
        serde_json::to_string_pretty(&value).unwrap()
    ))
}

/// An HTTP answer as a golden file holds it: status line, content type, body.
fn answer(response: &helpers::app::Response) -> String {
    let body = if response.content_type.starts_with("application/json") {
        pretty_json(&response.body)
    } else {
        normalise(&response.body)
    };
    format!("{} {}\n{body}", response.code, response.content_type)
}

/// Runs the binary against this test's database; its stdout, the command having succeeded.
async fn command(env: &TestEnv, args: &[&str]) -> String {
    let output = tokio::process::Command::new(binary())
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", "warn")
        .env("OTEL_SDK_DISABLED", "true")
        .output()
        .await
        .expect("run healthprobe");
    assert!(
        output.status.success(),
        "healthprobe {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A set-aside outbox row: a `probe_failed` whose details the contract forbids.
async fn set_aside_row(env: &TestEnv) {
    let event_id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO health_events (event_id, game_id, container_id, event_type, occurred_at, details) \
         VALUES ($1, 'g-poison', '', 'probe_failed', '2026-01-01T00:00:00Z', '[1,2,3]'::jsonb)",
    )
    .bind(event_id)
    .execute(env.pool())
    .await
    .expect("insert the poison row");
    env.store
        .set_aside(event_id, "details are not an object")
        .await
        .expect("set the row aside");
}

/// Two members: `replica-b`, whose 1 ms lease has expired, and `replica-a`, live.
async fn members(env: &TestEnv) -> Vec<healthprobe::store::Member> {
    let beat = |replica_id, lease_ttl| Heartbeat {
        replica_id,
        status_addr: Some("127.0.0.1:8097"),
        version: env!("CARGO_PKG_VERSION"),
        lease_ttl,
        relay_pid: None,
        forget_after: Duration::from_secs(3600),
        owned_games: None,
        failing_games: None,
        degraded: false,
    };
    env.store
        .heartbeat(&beat("replica-b", Duration::from_millis(1)))
        .await
        .expect("heartbeat of replica-b");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let seen = env
        .store
        .heartbeat(&beat("replica-a", Duration::from_secs(3600)))
        .await
        .expect("heartbeat of replica-a");
    assert!(
        seen.iter().any(|m| m.replica_id == "replica-b" && !m.live),
        "replica-b's lease has expired: {seen:?}"
    );
    seen
}

#[tokio::test]
async fn status_surface_and_operator_commands_match_the_golden_files() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    set_aside_row(env).await;
    scenario
        .game_in("g-healthy", "g-healthy", Some("c-1"), Behavior::Healthy)
        .await;
    scenario
        .game_in("g-sick", "g-sick", Some("c-2"), Behavior::Status(503))
        .await;
    env.add_running("g-unparsable", "not a url", None).await;
    let seen = members(env).await;

    let app = scenario.app().deciding_on_one_probe().await;
    app.wait_first_tick().await;
    app.members.send_replace(Some(MembersView {
        replica_id: "replica-a".into(),
        members: seen.into(),
        last_heartbeat: Some(chrono::Utc::now()),
        lease_ttl: Duration::from_secs(30),
    }));
    app.relay_role
        .send_replace(Some(RelayRole::Holding { backend_pid: 4242 }));
    wait_for(
        "the probe_failed of g-sick in the log",
        WAIT_LIMIT,
        || async {
            let events = env.store.latest_events(10).await.ok()?;
            (events.len() == 3).then_some(())
        },
    )
    .await;

    check("status.json", &answer(&app.get("/status").await));
    check("status.txt", &answer(&app.get("/status?format=text").await));
    check(
        "status_short.txt",
        &format!(
            "{}{}{}",
            answer(&app.get("/status?short=true").await),
            answer(&app.get("/status?format=text&short=1").await),
            answer(&app.get_with_accept("/status", "text/plain").await),
        ),
    );
    check(
        "healthz_readyz.txt",
        &format!(
            "{}{}",
            answer(&app.get("/healthz").await),
            answer(&app.get("/readyz").await)
        ),
    );
    check("games.json", &answer(&app.get("/games").await));
    let first_page = app.get("/games?limit=1&status=failing").await;
    let cursor = first_page.json()["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    check(
        "games_pages.txt",
        &format!(
            "{}{}{}",
            answer(&first_page),
            answer(
                &app.get(&format!("/games?limit=1&status=failing&cursor={cursor}"))
                    .await
            ),
            answer(&app.get("/games?game_id=g-h*").await),
        ),
    );
    check(
        "games_counts.json",
        &answer(&app.get("/games/counts").await),
    );
    check("events.json", &answer(&app.get("/events").await));
    check(
        "probe.txt",
        &format!(
            "{}{}",
            answer(&app.post("/games/g-sick/probe").await),
            answer(&app.post("/games/no-such-game/probe").await),
        ),
    );

    let long_glob = format!("/games?game_id={}", "x".repeat(513));
    let bad = [
        "/games?bogus=1",
        "/games?limit=1&limit=2",
        "/games?limit=0",
        "/games?limit=1001",
        "/games?limit=x",
        "/games?status=sick",
        "/games?cursor=zz",
        "/games?game_id=",
        long_glob.as_str(),
        "/events?limit=0",
        "/events?limit=201",
        "/events?game_id=g",
        "/status?format=xml",
        "/status?short=maybe",
        "/status?verbose=1",
        "/healthz?x=1",
        "/readyz?x=1",
        "/games/counts?x=1",
        "/metrics?x=1",
        "/live?x=1",
        "/?x=1",
        "/no-such-endpoint",
    ];
    let mut errors = String::new();
    for path in bad {
        let shown = if path.len() > 60 {
            "/games?game_id=x…(513)"
        } else {
            path
        };
        errors.push_str(&format!("GET {shown}\n{}", answer(&app.get(path).await)));
    }
    for path in ["/status", "/games/g-sick/probe?x=1"] {
        errors.push_str(&format!("POST {path}\n{}", answer(&app.post(path).await)));
    }
    check("errors.txt", &errors);

    let collapse = Regex::new(" {2,}").unwrap();
    check(
        "cli_status.txt",
        &collapse.replace_all(&normalise(&command(env, &["status"]).await), "  "),
    );
    check(
        "cli_status.json",
        &pretty_json(&command(env, &["status", "--json"]).await),
    );
    check(
        "cli_status_filtered.txt",
        &collapse.replace_all(
            &normalise(
                &command(env, &["status", "--status", "failing", "--game-id", "g-s*"]).await,
            ),
            "  ",
        ),
    );
    check(
        "cli_members.txt",
        &normalise(&command(env, &["status", "--members"]).await),
    );
    check(
        "cli_members.json",
        &pretty_json(&command(env, &["status", "--members", "--json"]).await),
    );
    check(
        "cli_outbox_list.txt",
        &normalise(&command(env, &["outbox", "list"]).await),
    );
    let json_lines: String = command(env, &["outbox", "list", "--json"])
        .await
        .lines()
        .map(pretty_json)
        .collect();
    check("cli_outbox_list.json", &json_lines);
    check(
        "cli_outbox_list_all.txt",
        &normalise(&command(env, &["outbox", "list", "--all"]).await),
    );
}
