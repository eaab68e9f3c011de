//! The outbox never stops (DESIGN §13): rows that cannot be decoded or published are set
//! aside, the rest flow in per-game order, `/status` and the `outbox` command show them.

mod helpers;

use std::time::{Duration, Instant};

use healthprobe::events::relay::{self, RelayMonitor};
use healthprobe::telemetry::Metrics;
use helpers::engines::Behavior;
use helpers::process::{binary, get_json};
use helpers::scenario::Scenario;
use helpers::{TestEnv, WAIT_LIMIT, wait_for};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Inserts an outbox row as it is, bypassing every check of the worker.
async fn insert_raw(
    env: &TestEnv,
    game_id: &str,
    container_id: &str,
    event_type: &str,
    occurred_at: &str,
    details: &str,
) -> Uuid {
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO health_events (event_id, game_id, container_id, event_type, occurred_at, details) \
         VALUES ($1, $2, $3, $4, $5::timestamptz, $6::jsonb)",
    )
    .bind(event_id)
    .bind(game_id)
    .bind(container_id)
    .bind(event_type)
    .bind(occurred_at)
    .bind(details)
    .execute(env.pool())
    .await
    .expect("insert a raw outbox row");
    event_id
}

const FAILED: &str =
    r#"{"consecutive_failures":3,"last_status":503,"last_error":"unexpected status 503"}"#;
const RECOVERED: &str = r#"{"prior_failure_count":3}"#;

/// A 1.1 MB container id, an `infinity` timestamp, a year-294000 timestamp (beyond chrono, within Postgres) and 300 rows
/// with details the contract forbids, all ahead of good rows: the good rows are published
/// in their per-game order, the bad ones set aside with why, nothing panics.
#[tokio::test]
async fn poison_rows_are_set_aside_and_the_rest_flow_in_order() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let huge = "c".repeat(1_100_000);
    let big = insert_raw(env, "poison-big", &huge, "probe_failed", "now", FAILED).await;
    let inf = insert_raw(env, "poison-inf", "", "probe_failed", "infinity", FAILED).await;
    let far = insert_raw(
        env,
        "poison-far",
        "",
        "probe_failed",
        "294000-01-01",
        FAILED,
    )
    .await;
    for i in 0..300 {
        insert_raw(
            env,
            &format!("junk-{i}"),
            "",
            "probe_recovered",
            "now",
            r#"{"prior_failure_count":1,"extra":"closed details forbid this"}"#,
        )
        .await;
    }
    // A game whose first event is poison and whose later events are good.
    insert_raw(env, "good-1", "", "probe_failed", "infinity", FAILED).await;
    let good = [
        insert_raw(env, "good-1", "c1", "probe_recovered", "now", RECOVERED).await,
        insert_raw(env, "good-2", "c2", "probe_failed", "now", FAILED).await,
        insert_raw(env, "good-1", "c1", "probe_failed", "now", FAILED).await,
        insert_raw(env, "good-2", "c2", "probe_recovered", "now", RECOVERED).await,
    ];

    let stop = CancellationToken::new();
    let relay = env.relay();
    let started = Instant::now();
    let task = tokio::spawn(relay::supervise(
        {
            let stop = stop.clone();
            move || relay.clone().run(stop.clone())
        },
        stop.clone(),
        RelayMonitor::default(),
        Metrics::noop(),
    ));
    let events = env.wait_stream_events(good.len()).await;
    let elapsed = started.elapsed();
    let ids: Vec<Uuid> = events
        .iter()
        .map(|e| e.payload["event_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, good, "good rows published, in commit order");
    let set_aside = wait_for("the poison rows set aside", WAIT_LIMIT, || async {
        let n = env.store.count_set_aside().await.ok()?;
        (n == 304).then_some(n)
    })
    .await;
    eprintln!(
        "FIGURE outbox: 304 poison rows ahead of 4 good ones: good rows on the stream {:.0} ms after the relay started",
        elapsed.as_secs_f64() * 1000.0
    );
    assert_eq!(set_aside, 304);
    let listed = env.store.list_set_aside(false, 1000).await.unwrap();
    let why = |id: Uuid| {
        listed
            .iter()
            .find(|r| r.event_id == id)
            .map(|r| r.error.clone())
            .unwrap_or_default()
    };
    assert!(why(big).contains("too large"), "{}", why(big));
    assert!(why(inf).contains("infinite"), "{}", why(inf));
    assert!(why(far).contains("out of range"), "{}", why(far));
    assert!(listed.iter().all(|r| r.attempts == 1));
    assert_eq!(env.store.count_unpublished().await.unwrap(), 0);

    // A new event after all this still flows at once.
    let later = insert_raw(env, "good-3", "", "probe_failed", "now", FAILED).await;
    env.outbox_wake.notify_one();
    let events = env.wait_stream_events(good.len() + 1).await;
    assert_eq!(
        events.last().unwrap().payload["event_id"],
        later.to_string()
    );

    // /status: WARN with the count.
    let app = scenario.app().without_worker().await;
    let status = app.get("/status").await;
    assert_eq!(status.code, 207, "{}", status.body);
    let body = status.json();
    assert_eq!(body["components"]["outbox"]["status"], "WARN");
    assert_eq!(body["outbox"]["set_aside"], 304);

    stop.cancel();
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("the supervisor stops")
        .unwrap();
}

/// A message over the server's `max_payload` that passed the fetch limit is refused by the
/// size check before publishing: set aside, the rest flows.
#[tokio::test]
async fn a_message_over_max_payload_is_set_aside() {
    let env = TestEnv::new().await;
    let max_payload = env.nats.server_info().max_payload;
    assert!(
        max_payload as i64 <= healthprobe::store::MAX_OUTBOX_ROW_BYTES,
        "the test server's max_payload is the default 1 MiB"
    );
    // Fields just under the fetch limit; with the envelope around them, over max_payload.
    let id = "x".repeat(max_payload - 120);
    let bad = insert_raw(&env, "big", &id, "probe_failed", "now", FAILED).await;
    let good = insert_raw(&env, "fine", "", "probe_failed", "now", FAILED).await;
    let report = env.relay().drain_once().await.expect("drain");
    assert_eq!(report.published, 1, "{report:?}");
    assert_eq!(report.set_aside, 1, "{report:?}");
    let listed = env.store.list_set_aside(false, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event_id, bad);
    assert!(
        listed[0].error.contains("max_payload"),
        "{}",
        listed[0].error
    );
    let events = env.stream_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload["event_id"], good.to_string());
}

/// Leadership's fence (DESIGN §12, one publisher at a time): a relay whose fence is
/// cancelled (the relay lock was lost) publishes no further row, even with rows waiting and
/// a wake-up, and `run` ends at once without its shutdown drain; the rows stay for the next
/// holder. The same relay unfenced publishes them.
#[tokio::test]
async fn a_fenced_relay_publishes_nothing_and_ends_without_a_drain() {
    let env = TestEnv::new().await;
    for game in ["g1", "g2", "g3"] {
        insert_raw(&env, game, "", "probe_failed", "now", FAILED).await;
    }
    let fence = CancellationToken::new();
    fence.cancel();
    let mut fenced = env.relay().fenced_by(fence.clone());
    let refused = fenced.drain_once().await;
    assert!(
        matches!(refused, Err(relay::RelayError::Fenced)),
        "{refused:?}"
    );
    // `run` with the fence down and no stop: it must end by itself, having published nothing.
    env.outbox_wake.notify_one();
    tokio::time::timeout(
        WAIT_LIMIT,
        env.relay().fenced_by(fence).run(CancellationToken::new()),
    )
    .await
    .expect("a fenced relay ends without being stopped");
    assert_eq!(env.store.count_unpublished().await.unwrap(), 3);
    assert!(
        env.stream_events().await.is_empty(),
        "nothing was published"
    );
    let report = env.relay().drain_once().await.expect("an unfenced drain");
    assert_eq!(report.published, 3, "{report:?}");
}

/// A relay task that ends abnormally is restarted with back-off, and `/status` says so.
#[tokio::test]
async fn a_relay_that_panics_is_restarted_and_reported() {
    let env = TestEnv::new().await;
    let monitor = RelayMonitor::default();
    let stop = CancellationToken::new();
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let relay = env.relay();
    let task = tokio::spawn(relay::supervise(
        {
            let (stop, runs) = (stop.clone(), runs.clone());
            move || {
                let first = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                let run = relay.clone().run(stop.clone());
                async move {
                    if first {
                        panic!("injected relay failure");
                    }
                    run.await
                }
            }
        },
        stop.clone(),
        monitor.clone(),
        Metrics::noop(),
    ));
    wait_for("the relay restarted", WAIT_LIMIT, || async {
        (runs.load(std::sync::atomic::Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    let health = monitor.snapshot();
    assert_eq!(health.restarts, 1);
    assert!(
        health
            .last_failure
            .as_ref()
            .is_some_and(|(_, why)| why.contains("injected relay failure")),
        "{health:?}"
    );
    // The restarted relay publishes.
    let id = insert_raw(&env, "after-restart", "", "probe_failed", "now", FAILED).await;
    env.outbox_wake.notify_one();
    let events = env.wait_stream_events(1).await;
    assert_eq!(events[0].payload["event_id"], id.to_string());
    stop.cancel();
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .unwrap()
        .unwrap();
}

fn outbox_command(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(binary())
        .arg("outbox")
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run healthprobe outbox");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The worker process with poison rows in its outbox: a failing game's event still arrives
/// within two intervals, `/status` is WARN with the count, and `outbox list|retry|discard`
/// manage the rows.
#[tokio::test]
async fn the_outbox_command_lists_retries_and_discards_set_aside_rows() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let inf = insert_raw(env, "poison-inf", "", "probe_failed", "infinity", FAILED).await;
    let junk = insert_raw(env, "poison-junk", "", "probe_failed", "now", "[1,2,3]").await;
    scenario.game("sick", "sick", Behavior::Status(503)).await;
    let interval = Duration::from_millis(500);
    let mut worker = scenario
        .worker("outbox-cli")
        .interval(interval)
        .failures(1)
        .spawn();
    let started = Instant::now();
    let events = env.wait_stream_events(1).await;
    let elapsed = started.elapsed();
    assert_eq!(events[0].game_id(), "sick");
    eprintln!(
        "FIGURE outbox: worker process with 2 poison rows: the sick game's probe_failed on the stream {:.0} ms after start (interval {interval:?})",
        elapsed.as_secs_f64() * 1000.0
    );
    let addr = worker.status_addr().await;
    let body: serde_json::Value =
        wait_for("/status shows the set-aside rows", WAIT_LIMIT, || async {
            let body = get_json(&addr, "/status").await?;
            (body["outbox"]["set_aside"] == 2).then_some(body)
        })
        .await;
    assert_eq!(body["components"]["outbox"]["status"], "WARN", "{body}");

    let (ok, out) = outbox_command(env, &["list", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains(&inf.to_string()) && out.contains("infinite"),
        "{out}"
    );
    let (ok, out) = outbox_command(env, &["list"]);
    assert!(ok && out.contains("poison-junk"), "{out}");

    // Retry: the relay tries again, fails again, sets it aside with attempts 2.
    let (ok, out) = outbox_command(env, &["retry", &junk.to_string()]);
    assert!(ok && out.starts_with("1 rows"), "{out}");
    wait_for("the retried row set aside again", WAIT_LIMIT, || async {
        let rows = env.store.list_set_aside(false, 10).await.ok()?;
        rows.iter()
            .any(|r| r.event_id == junk && r.attempts == 2)
            .then_some(())
    })
    .await;

    let (ok, out) = outbox_command(env, &["discard", "--all"]);
    assert!(ok && out.starts_with("2 rows"), "{out}");
    assert_eq!(env.store.count_set_aside().await.unwrap(), 0);
    let (ok, out) = outbox_command(env, &["list", "--all", "--json"]);
    assert!(ok && out.matches("discarded").count() == 2, "{out}");
    let (ok, out) = outbox_command(env, &["retry"]);
    assert!(!ok, "an id or --all is required: {out}");

    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    let log = worker.log_text();
    assert!(log.contains("outbox row set aside"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// The stream's duplicate window is the configured one, also on an existing stream.
#[tokio::test]
async fn the_duplicate_window_is_set_from_the_setting() {
    let env = TestEnv::new().await;
    let mut target = env.target.clone();
    target.duplicate_window = Duration::from_secs(600);
    healthprobe::events::jetstream::ensure_stream_and_window(&env.js, &target)
        .await
        .expect("update the stream");
    let mut stream = env.js.get_stream(&target.stream).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600));
}
