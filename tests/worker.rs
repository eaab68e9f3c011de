//! The tick end to end, in process: real Postgres, real NATS JetStream, real HTTP engines.

mod helpers;

use std::time::{Duration, Instant};

use healthprobe::envelope::{Details, FailedDetails, RecoveredDetails};
use healthprobe::hysteresis::{GameHealth, Thresholds};
use helpers::AsyncApi;
use helpers::engines::Behavior;
use helpers::scenario::Scenario;
use tokio_util::sync::CancellationToken;

/// The probe timeout of these tests' hand-built probers: the scenario's default.
const TIMEOUT: Duration = Duration::from_secs(2);

fn thresholds(failures: u32, recovery: u32) -> Thresholds {
    Thresholds { failures, recovery }
}

#[tokio::test]
async fn threshold_reached_emits_exactly_one_probe_failed() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let endpoint = fleet.set("sick", Behavior::Status(503));
    env.add_running("game-sick", &endpoint, Some("c-sick"))
        .await;
    scenario.game("game-fine", "fine", Behavior::Healthy).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(4)
        .build();
    let stop = CancellationToken::new();

    for tick in 1..=2 {
        let report = worker.tick(&stop).await.expect("tick");
        assert_eq!(
            (report.records, report.probes, report.failed),
            (2, 2, 1),
            "tick {tick}"
        );
        assert!(
            report.events.is_empty(),
            "no event below the threshold (tick {tick})"
        );
    }
    let (status, failures, last_status, kind, _) =
        env.snapshot("game-sick").await.expect("snapshot");
    assert_eq!(
        (status.as_str(), failures, last_status, kind.as_deref()),
        ("suspect", 2, 503, Some("status"))
    );

    let report = worker.tick(&stop).await.expect("third tick");
    assert_eq!(report.events.len(), 1);
    let event = &report.events[0];
    assert_eq!(event.game_id, "game-sick");
    assert_eq!(event.container_id, "c-sick");
    assert_eq!(
        event.details,
        Details::Failed(FailedDetails {
            consecutive_failures: 3,
            last_status: 503,
            last_error: "unexpected status 503".into()
        })
    );
    for _ in 0..3 {
        assert!(
            worker.tick(&stop).await.expect("tick").events.is_empty(),
            "probe_failed only once"
        );
    }
    assert_eq!(env.snapshot("game-sick").await.unwrap().0, "failing");
    assert_eq!(env.snapshot("game-fine").await.unwrap().0, "healthy");

    // The relay publishes it, once, with the contract's subject, header and body.
    let report = env.relay().drain_once().await.expect("drain");
    assert_eq!(report.published, 1);
    let messages = env.wait_stream_events(1).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.subject,
        format!("{}.probe_failed", env.target.subject_prefix)
    );
    assert_eq!(
        message.msg_id.as_deref(),
        Some(event.event_id.to_string().as_str())
    );
    assert_eq!(message.envelope(), event.envelope());
    AsyncApi::load()
        .check(message)
        .expect("the message matches the AsyncAPI schema");
    assert_eq!(
        env.logged_events().await,
        vec![("probe_failed".into(), "game-sick".into(), true)]
    );
    // Nothing left to publish; a second drain publishes nothing new.
    assert_eq!(env.relay().drain_once().await.unwrap().published, 0);
    assert_eq!(env.stream_events().await.len(), 1);
}

#[tokio::test]
async fn recovery_emits_probe_recovered_with_the_episode_failure_count() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let endpoint = fleet.set("flaky", Behavior::Status(500));
    env.add_running("game-flaky", &endpoint, Some("c1")).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(2, 1)
        .concurrency(4)
        .build();
    let stop = CancellationToken::new();

    let mut events = Vec::new();
    for _ in 0..4 {
        events.extend(worker.tick(&stop).await.unwrap().events);
    }
    fleet.set("flaky", Behavior::Healthy);
    for _ in 0..3 {
        events.extend(worker.tick(&stop).await.unwrap().events);
    }
    let details: Vec<Details> = events.iter().map(|e| e.details.clone()).collect();
    assert_eq!(
        details,
        vec![
            Details::Failed(FailedDetails {
                consecutive_failures: 2,
                last_status: 500,
                last_error: "unexpected status 500".into()
            }),
            Details::Recovered(RecoveredDetails {
                prior_failure_count: 4
            }),
        ]
    );
    assert_eq!(env.snapshot("game-flaky").await.unwrap().0, "healthy");

    env.relay().drain_once().await.unwrap();
    let messages = env.wait_stream_events(2).await;
    let api = AsyncApi::load();
    let types: Vec<&str> = messages.iter().map(|m| m.event_type()).collect();
    assert_eq!(types, ["probe_failed", "probe_recovered"]);
    for message in &messages {
        api.check(message)
            .expect("published messages match the AsyncAPI schemas");
    }
    assert_eq!(
        messages[1].payload["details"],
        serde_json::json!({ "prior_failure_count": 4 })
    );
}

#[tokio::test]
async fn recovery_threshold_above_one_waits_for_consecutive_successes() {
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    scenario.game("g", "g", Behavior::Status(503)).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 2)
        .concurrency(2)
        .build();
    let stop = CancellationToken::new();
    assert_eq!(worker.tick(&stop).await.unwrap().events.len(), 1);
    fleet.set("g", Behavior::Healthy);
    assert!(
        worker.tick(&stop).await.unwrap().events.is_empty(),
        "one success is not enough"
    );
    fleet.set("g", Behavior::Status(503));
    assert!(worker.tick(&stop).await.unwrap().events.is_empty());
    fleet.set("g", Behavior::Healthy);
    assert!(worker.tick(&stop).await.unwrap().events.is_empty());
    let events = worker.tick(&stop).await.unwrap().events;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].details,
        Details::Recovered(RecoveredDetails {
            prior_failure_count: 2
        })
    );
}

#[tokio::test]
async fn a_game_stopped_and_restarted_starts_with_a_clean_counter() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("g", "g", Behavior::Status(503)).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(2)
        .build();
    let stop = CancellationToken::new();
    worker.tick(&stop).await.unwrap();
    worker.tick(&stop).await.unwrap();
    assert_eq!(worker.health_of("g").unwrap().consecutive_failures, 2);

    env.set_status("g", "stopped").await;
    let report = worker.tick(&stop).await.unwrap();
    assert_eq!((report.records, report.pruned), (0, 1));
    assert_eq!(worker.health_of("g"), None, "state forgotten in memory");
    assert_eq!(env.snapshot("g").await, None, "and in health_snapshots");

    env.set_status("g", "running").await;
    let report = worker.tick(&stop).await.unwrap();
    assert!(report.events.is_empty());
    assert_eq!(
        worker.health_of("g").unwrap().consecutive_failures,
        1,
        "counting starts again"
    );
    worker.tick(&stop).await.unwrap();
    assert_eq!(
        worker.tick(&stop).await.unwrap().events.len(),
        1,
        "three fresh failures are needed"
    );
}

#[tokio::test]
async fn probes_in_flight_never_exceed_max_concurrency() {
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    scenario
        .games_named(
            24,
            |i| format!("slow-{i:02}"),
            Behavior::Delay(Duration::from_millis(100)),
        )
        .await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(4)
        .build();
    let report = worker.tick(&CancellationToken::new()).await.unwrap();
    assert_eq!((report.probes, report.healthy), (24, 24));
    let max = fleet.max_in_flight();
    assert!(
        max <= 4,
        "the fleet saw {max} probes in flight, more than max_concurrency 4"
    );
    assert!(max > 1, "probes ran one at a time (max in flight {max})");
}

#[tokio::test]
async fn a_slow_engine_times_out_without_holding_up_the_others() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario
        .game("slow", "slow", Behavior::Delay(Duration::from_secs(30)))
        .await;
    scenario
        .games_named(8, |i| format!("ok-{i}"), Behavior::Healthy)
        .await;
    let timeout = Duration::from_millis(300);
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(2)
        .probe_timeout(timeout)
        .build();
    let started = Instant::now();
    let report = worker.tick(&CancellationToken::new()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.healthy, report.failed), (8, 1));
    assert!(
        elapsed < Duration::from_secs(10),
        "tick took {elapsed:?} despite a 300 ms probe timeout"
    );
    let (status, _, last_status, kind, error) = env.snapshot("slow").await.unwrap();
    assert_eq!(
        (status.as_str(), last_status, kind.as_deref()),
        ("suspect", 0, Some("timeout"))
    );
    assert!(error.is_some_and(|e| !e.is_empty()));
}

#[tokio::test]
async fn failures_are_classified_with_the_right_last_status() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario.game("s503", "s503", Behavior::Status(503)).await;
    scenario.game("s302", "s302", Behavior::Redirect).await;
    scenario.game("s404", "s404", Behavior::Status(404)).await;
    env.add_running("bad-url", "this is not a url", None).await;
    env.add_running("ftp", "ftp://127.0.0.1/engine", None).await;
    // A port nothing listens on: bind, note the port, close.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], helpers::free_port()));
    env.add_running("closed", &format!("http://{closed}"), None)
        .await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(4)
        .build();
    let report = worker.tick(&CancellationToken::new()).await.unwrap();
    assert_eq!((report.failed, report.events.len()), (6, 6));

    let expect = [
        ("s503", 503, "status"),
        ("s302", 302, "status"),
        ("s404", 404, "status"),
        ("bad-url", 0, "invalid_endpoint"),
        ("ftp", 0, "invalid_endpoint"),
        ("closed", 0, "connect"),
    ];
    for (game, status, kind) in expect {
        let snapshot = env.snapshot(game).await.unwrap();
        assert_eq!(
            (snapshot.2, snapshot.3.as_deref()),
            (status, Some(kind)),
            "{game}: {snapshot:?}"
        );
        let event = report.events.iter().find(|e| e.game_id == game).unwrap();
        match &event.details {
            Details::Failed(details) => {
                assert_eq!(details.last_status, status as u16, "{game}");
                assert!(!details.last_error.is_empty(), "{game}");
            }
            other => panic!("{game}: unexpected {other:?}"),
        }
    }
    assert_eq!(fleet.redirect_follows(), 0, "redirects are never followed");
}

/// An 8 MiB body counts as healthy and costs the worker its 4 KiB cap only: the rest is
/// never read, so the connection cannot be reused and each probe opens a new one (reading
/// the body to the end would keep one connection alive for all three).
#[tokio::test]
async fn a_huge_healthy_body_is_healthy_and_read_only_to_the_cap() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .game("big", "big", Behavior::Body(8 * 1024 * 1024))
        .await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(1)
        .build();
    for _ in 0..3 {
        let report = worker.tick(&CancellationToken::new()).await.unwrap();
        assert_eq!((report.healthy, report.failed), (1, 0));
    }
    assert_eq!(env.snapshot("big").await.unwrap().0, "healthy");
    assert_eq!(fleet.requests("big"), 3);
    assert_eq!(
        fleet.connections(),
        3,
        "the body past the cap is abandoned with its connection, never drained"
    );
}

#[tokio::test]
async fn connections_are_reused_and_the_user_agent_is_sent() {
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    scenario
        .games_named(3, |i| format!("e{i}"), Behavior::Healthy)
        .await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(1)
        .build();
    for _ in 0..5 {
        worker.tick(&CancellationToken::new()).await.unwrap();
    }
    assert_eq!(fleet.total_requests(), 15);
    // One probe at a time against one host: one keep-alive connection serves all of them.
    assert_eq!(
        fleet.connections(),
        1,
        "connections are kept alive across ticks"
    );
    let agents = fleet.user_agents();
    assert!(
        agents
            .iter()
            .all(|a| a == &format!("healthprobe/{}", env!("CARGO_PKG_VERSION"))),
        "{agents:?}"
    );
}

/// Games that share one engine address (one engine process or gateway for many games) keep
/// one connection per probe in flight across ticks, not one in all: hyper's pool would
/// otherwise close every connection but one after each probe and reconnect the next tick.
#[tokio::test]
async fn games_sharing_one_address_keep_a_connection_per_probe_in_flight() {
    const GAMES: usize = 48;
    const CONCURRENCY: usize = 8;
    const TICKS: usize = 4;
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    scenario
        .games_named(GAMES, |i| format!("shared-{i:02}"), Behavior::Healthy)
        .await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(CONCURRENCY)
        .build();
    for _ in 0..TICKS {
        let report = worker.tick(&CancellationToken::new()).await.unwrap();
        assert_eq!(report.healthy, GAMES);
    }
    assert_eq!(fleet.total_requests(), GAMES * TICKS);
    // At most CONCURRENCY connections are busy at once; a few more may come from hyper
    // connecting while another connection comes back. Reconnecting per probe would be
    // about GAMES * TICKS.
    let connections = fleet.connections();
    assert!(
        connections <= CONCURRENCY + 4,
        "{connections} connections for {} probes of one address at concurrency {CONCURRENCY}",
        GAMES * TICKS
    );
}

#[tokio::test]
async fn a_restart_resumes_from_snapshots_without_re_emitting() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario.game("down", "down", Behavior::Status(503)).await;
    scenario
        .game("still-down", "still-down", Behavior::Status(503))
        .await;
    let stop = CancellationToken::new();
    {
        let mut worker = scenario
            .tick_by_hand()
            .thresholds(2, 1)
            .concurrency(2)
            .build();
        worker.tick(&stop).await.unwrap();
        assert_eq!(worker.tick(&stop).await.unwrap().events.len(), 2);
    }
    // A new worker, as after a restart.
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(2, 1)
        .concurrency(2)
        .build();
    assert_eq!(worker.restore().await.unwrap(), 2);
    assert_eq!(
        worker.health_of("down"),
        Some(GameHealth {
            consecutive_failures: 2,
            consecutive_successes: 0,
            episode_failures: 2,
            failure_published: true
        })
    );
    fleet.set("down", Behavior::Healthy);
    let report = worker.tick(&stop).await.unwrap();
    assert_eq!(report.events.len(), 1, "{:?}", report.events);
    assert_eq!(report.events[0].game_id, "down");
    assert_eq!(
        report.events[0].details,
        Details::Recovered(RecoveredDetails {
            prior_failure_count: 2
        })
    );
    assert!(worker.tick(&stop).await.unwrap().events.is_empty());
    let logged: Vec<(String, String)> = env
        .logged_events()
        .await
        .into_iter()
        .map(|(t, g, _)| (t, g))
        .collect();
    let failed_for_still_down = logged
        .iter()
        .filter(|(t, g)| t == "probe_failed" && g == "still-down")
        .count();
    assert_eq!(
        failed_for_still_down, 1,
        "no second probe_failed for a game still failing: {logged:?}"
    );
}

#[tokio::test]
async fn a_failed_commit_is_decided_again_on_the_next_tick() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("g", "g", Behavior::Status(503)).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(2, 1)
        .concurrency(2)
        .build();
    let stop = CancellationToken::new();
    worker.tick(&stop).await.unwrap();
    // Make event inserts fail, as a constraint violation or a broken table would.
    sqlx::query("ALTER TABLE health_events ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        .execute(env.pool())
        .await
        .unwrap();
    let report = worker.tick(&stop).await.unwrap();
    assert_eq!((report.events.len(), report.failed_commits), (0, 1));
    assert!(!report.is_clean());
    assert_eq!(
        worker.health_of("g").unwrap().consecutive_failures,
        1,
        "memory did not advance"
    );
    assert_eq!(env.snapshot("g").await.unwrap().0, "suspect");

    sqlx::query("ALTER TABLE health_events DROP CONSTRAINT refuse_all")
        .execute(env.pool())
        .await
        .unwrap();
    let report = worker.tick(&stop).await.unwrap();
    assert_eq!(report.events.len(), 1, "the same decision is taken again");
    assert!(worker.tick(&stop).await.unwrap().events.is_empty());
    assert_eq!(env.logged_events().await.len(), 1);
}

#[tokio::test]
async fn an_extra_details_field_is_rejected_by_the_asyncapi_schema() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("g", "g", Behavior::Status(503)).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(1)
        .build();
    worker.tick(&CancellationToken::new()).await.unwrap();
    env.relay().drain_once().await.unwrap();
    let mut message = env.wait_stream_events(1).await.remove(0);
    let api = AsyncApi::load();
    api.check(&message).expect("the real message is valid");

    message.payload["details"]["kind"] = serde_json::json!("status");
    let error = api
        .check(&message)
        .expect_err("an extra details field must be rejected");
    assert!(error.contains("kind"), "{error}");

    let mut missing_header = env.stream_events().await.remove(0);
    missing_header.msg_id = None;
    assert!(
        api.check(&missing_header).is_err(),
        "Nats-Msg-Id is required"
    );
}

#[tokio::test]
async fn metrics_count_events_by_type_and_probes_by_outcome() {
    let recorded = helpers::metrics::TestMetrics::new();
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario.game("a", "a", Behavior::Status(503)).await;
    scenario.game("b", "b", Behavior::Healthy).await;
    env.add_running("c", "nope://", None).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(2)
        .metrics(recorded.metrics())
        .build();
    let stop = CancellationToken::new();
    worker.tick(&stop).await.unwrap(); // a, c fail → 2 probe_failed
    fleet.set("a", Behavior::Healthy);
    worker.tick(&stop).await.unwrap(); // a recovers → 1 probe_recovered

    let owned = |pairs: &[(&str, u64)]| -> std::collections::BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    assert_eq!(
        recorded.counter("rtmanager.health_events", "event_type"),
        owned(&[("probe_failed", 2), ("probe_recovered", 1)])
    );
    assert_eq!(
        recorded.counter("healthprobe.probes", "outcome"),
        owned(&[("ok", 3), ("status", 1), ("invalid_endpoint", 2)])
    );
    assert_eq!(
        recorded.histogram("healthprobe.tick.duration").map(|h| h.0),
        Some(2)
    );
}

#[tokio::test]
async fn shutdown_mid_tick_lets_probes_in_flight_finish_and_starts_no_more() {
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    scenario
        .games_named(
            10,
            |i| format!("g{i}"),
            Behavior::Delay(Duration::from_millis(300)),
        )
        .await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(2)
        .build();
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let report = worker.tick(&stop).await.unwrap();
    assert!(report.interrupted);
    assert_eq!(
        report.probes, 2,
        "the two probes in flight finished and were recorded"
    );
    assert_eq!(report.pruned, 0, "an interrupted tick prunes nothing");
    assert_eq!(fleet.total_requests(), 2);
}

#[tokio::test]
async fn the_relay_wakes_on_commit_instead_of_waiting_for_its_sweep() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("g", "g", Behavior::Status(503)).await;
    let stop = CancellationToken::new();
    let relay = tokio::spawn(env.relay().run(stop.clone()));
    // Let the relay finish its first (empty) pass and go to sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(1)
        .build();
    let report = worker.tick(&stop).await.unwrap();
    let committed = Instant::now();
    assert_eq!(report.events.len(), 1);
    // The sweep runs every 5 s; arriving well before it proves the wake-up works.
    let events = helpers::wait_for(
        "the event on the stream",
        Duration::from_secs(2),
        || async {
            let events = env.stream_events().await;
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    eprintln!(
        "commit to stream (including 20 ms polling): {:?}",
        committed.elapsed()
    );
    assert_eq!(events[0].envelope(), report.events[0].envelope());
    stop.cancel();
    relay.await.unwrap();
}

#[tokio::test]
async fn a_spread_paces_probe_starts_over_the_window() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .games_named(
            20,
            |i| format!("e{i:02}"),
            Behavior::Delay(Duration::from_millis(20)),
        )
        .await;
    let window = Duration::from_millis(1000);
    let mut worker = healthprobe::worker::Worker::new(
        env.store.clone(),
        healthprobe::probe::Prober::new(TIMEOUT, Duration::from_secs(2)).unwrap(),
        healthprobe::worker::WorkerSettings {
            thresholds: thresholds(3, 1),
            max_concurrency: 20,
            spread_window: window,
        },
        healthprobe::telemetry::Metrics::noop(),
        env.outbox_wake.clone(),
    );
    let stop = CancellationToken::new();
    // The first tick has no fleet size to pace by: one burst.
    worker.tick(&stop).await.unwrap();
    let burst = fleet.max_in_flight();
    fleet.reset_max_in_flight();
    // Now 20 probes of 20 ms, one every 50 ms: never more than one or two at once.
    let started = Instant::now();
    let report = worker.tick(&stop).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.healthy, 20);
    let paced = fleet.max_in_flight();
    assert!(burst > 8, "the unpaced tick should burst (peak {burst})");
    // One probe of 20 ms every 50 ms: one or two at once, a few more on a loaded machine
    // whose probes take longer; a tick that did not pace would reach the burst's peak.
    assert!(
        paced <= 4,
        "peak in flight {paced} with a 1 s spread over 20 probes (burst {burst})"
    );
    assert!(
        elapsed >= window * 19 / 20,
        "the last probe starts at 19/20 of the window, tick took {elapsed:?}"
    );
}

#[tokio::test]
async fn changes_are_written_and_steady_games_get_probe_times_without_a_row_rewrite() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario.game("steady", "steady", Behavior::Healthy).await;
    scenario
        .game("changing", "changing", Behavior::Healthy)
        .await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(2)
        .build();
    let stop = CancellationToken::new();
    let updated_at = |game: &'static str| {
        let pool = env.pool().clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT updated_at FROM health_snapshots WHERE game_id = $1",
            )
            .bind(game)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // What `/games` shows: (last_probe_at, last_success_at, last_latency_ms).
    let shown = |game: &'static str| {
        let store = env.store.clone();
        async move {
            let page = store
                .games_page(&healthprobe::store::GamesQuery {
                    status: None,
                    game_id_glob: Some(game.to_owned()),
                    after: None,
                    limit: 10,
                })
                .await
                .unwrap();
            let view = page.into_iter().next().expect("listed");
            (
                view.last_probe_at.expect("probed"),
                view.last_success_at.expect("succeeded"),
                view.last_latency_ms.expect("timed"),
            )
        }
    };
    worker.tick(&stop).await.unwrap();
    let (steady, changing) = (updated_at("steady").await, updated_at("changing").await);
    let (probed, succeeded, _) = shown("steady").await;
    fleet.set("changing", Behavior::Status(503));
    worker.tick(&stop).await.unwrap();
    worker.tick(&stop).await.unwrap();
    // An unchanged game's row is not rewritten; its probe time is recorded beside it.
    assert_eq!(
        updated_at("steady").await,
        steady,
        "an unchanged healthy game's row is not rewritten"
    );
    let (probed_now, succeeded_now, latency) = shown("steady").await;
    assert!(
        probed_now > probed && succeeded_now > succeeded,
        "/games shows the latest probe: {probed} -> {probed_now}, {succeeded} -> {succeeded_now}"
    );
    assert!(latency >= 0.0);
    assert_eq!(fleet.requests("steady"), 3, "three probes, three times");
    assert!(
        updated_at("changing").await > changing,
        "a change is written at once"
    );
    assert_eq!(env.snapshot("changing").await.unwrap().0, "suspect");
    // What memory holds is still right after a restart from the rows.
    let mut restarted = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(2)
        .build();
    restarted.restore().await.unwrap();
    assert_eq!(
        restarted.health_of("changing"),
        worker.health_of("changing")
    );
    assert_eq!(
        restarted.health_of("steady").map(|h| h.status()),
        worker.health_of("steady").map(|h| h.status())
    );
}

#[tokio::test]
async fn a_fleet_that_grew_tenfold_still_starts_every_probe_within_the_spread_window() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let add = |from: usize, to: usize| {
        let scenario = &scenario;
        async move {
            for i in from..to {
                let id = format!("e{i:03}");
                scenario.game(&id, &id, Behavior::Healthy).await;
            }
        }
    };
    add(0, 10).await;
    let window = Duration::from_millis(1000);
    let mut worker = healthprobe::worker::Worker::new(
        env.store.clone(),
        healthprobe::probe::Prober::new(TIMEOUT, Duration::from_secs(2)).unwrap(),
        healthprobe::worker::WorkerSettings {
            thresholds: thresholds(3, 1),
            max_concurrency: 16,
            spread_window: window,
        },
        healthprobe::telemetry::Metrics::noop(),
        env.outbox_wake.clone(),
    );
    let stop = CancellationToken::new();
    worker.tick(&stop).await.unwrap(); // learns the fleet: 10 games, a slot of 100 ms
    add(10, 100).await; // the fleet grows tenfold before the next tick
    let report = worker.tick(&stop).await.unwrap();
    assert_eq!(report.healthy, 100);
    // Paced by the old size, the last of 100 probes would start after 9.9 s; starts never
    // go past the window, so the tick ends within it plus the probes of the last slot.
    assert!(
        report.duration < window * 2,
        "a tick of 100 probes with a {window:?} spread took {:?}",
        report.duration
    );
}

#[tokio::test]
async fn a_replaced_container_is_a_new_runtime_with_its_own_probe_failed() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let endpoint = fleet.set("g", Behavior::Status(503));
    env.add_running("g", &endpoint, Some("container-1")).await;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(2, 1)
        .concurrency(2)
        .build();
    let stop = CancellationToken::new();
    worker.tick(&stop).await.unwrap();
    let first = worker.tick(&stop).await.unwrap().events;
    assert_eq!(first.len(), 1, "the broken container's probe_failed");
    assert_eq!(first[0].container_id, "container-1");
    // The runtime manager replaces the container; the game stays running, and the
    // replacement is broken too.
    env.add_running("g", &endpoint, Some("container-2")).await;
    let report = worker.tick(&stop).await.unwrap();
    assert!(
        report.events.is_empty(),
        "no event for the container that went away"
    );
    assert_eq!(report.new_containers, 1);
    assert_eq!(
        worker.health_of("g").unwrap().consecutive_failures,
        1,
        "counting starts again"
    );
    let second = worker.tick(&stop).await.unwrap().events;
    assert_eq!(second.len(), 1, "the replacement gets its own probe_failed");
    assert_eq!(second[0].container_id, "container-2");
    // A healthy third container: nothing to recover (its runtime never failed).
    fleet.set("g", Behavior::Healthy);
    env.add_running("g", &endpoint, Some("container-3")).await;
    assert!(worker.tick(&stop).await.unwrap().events.is_empty());
    assert_eq!(env.snapshot("g").await.unwrap().0, "healthy");
    // A restarted worker agrees: the row belongs to container-3.
    let mut restarted = scenario
        .tick_by_hand()
        .thresholds(2, 1)
        .concurrency(2)
        .build();
    restarted.restore().await.unwrap();
    assert!(restarted.tick(&stop).await.unwrap().events.is_empty());
    assert_eq!(
        env.logged_events().await.len(),
        2,
        "one probe_failed per broken container"
    );
}
