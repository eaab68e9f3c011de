//! The binary as operators run it: start-up, crashes, restarts, signals, outages, tail.

mod helpers;

use std::collections::HashSet;
use std::time::Duration;

use healthprobe::worker::Worker;
use helpers::engines::Behavior;
use helpers::process::{NatsServer, TailProcess, binary};
use helpers::scenario::{Scenario, WorkerKnobs};
use helpers::{AsyncApi, WAIT_LIMIT, create_database, wait_for};
use tokio_util::sync::CancellationToken;

/// The scenario's worker process on fast settings: interval 100 ms, timeout 1 s,
/// threshold 2, four probes in flight at most.
fn fast<'s>(scenario: &'s Scenario, name: &str) -> WorkerKnobs<'s> {
    scenario
        .worker(name)
        .interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_secs(1))
        .failures(2)
        .concurrency(4)
}

/// The scenario's worker ticked by hand, where one probe decides (thresholds 1/1): two
/// probes in flight, a timeout of 1 s.
fn deciding_ticks(scenario: &Scenario) -> Worker {
    scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(2)
        .probe_timeout(Duration::from_secs(1))
        .build()
}

async fn table_exists(database_url: &str, table: &str) -> bool {
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    exists
}

#[tokio::test]
async fn bad_configuration_stops_start_up_naming_the_variable_before_touching_anything() {
    let database_url = create_database(&format!("hp_cfg_{}", uuid::Uuid::now_v7().simple())).await;
    let cases = [
        ("RTMANAGER_PROBE_INTERVAL", "0s"),
        ("RTMANAGER_PROBE_INTERVAL", "-5s"),
        ("RTMANAGER_PROBE_TIMEOUT", "soon"),
        ("RTMANAGER_PROBE_FAILURES_THRESHOLD", "0"),
        ("RTMANAGER_PROBE_RECOVERY_THRESHOLD", "-1"),
        ("RTMANAGER_PROBE_MAX_CONCURRENCY", "0"),
        ("RTMANAGER_PROBE_MAX_CONCURRENCY", "many"),
        ("HEALTHPROBE_SUBJECT_PREFIX", "runtime.*"),
    ];
    for (variable, value) in cases {
        let output = tokio::process::Command::new(binary())
            .arg("run")
            .env("DATABASE_URL", &database_url)
            .env("NATS_URL", &helpers::services().nats_url)
            .env(variable, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}={value} was accepted");
        assert!(
            stderr.contains(variable),
            "{variable}={value}: stderr does not name it: {stderr}"
        );
    }
    assert!(
        !table_exists(&database_url, "health_events").await,
        "nothing was migrated"
    );
}

#[tokio::test]
async fn migrate_applies_once_and_again_is_a_no_op() {
    let database_url = create_database(&format!("hp_mig_{}", uuid::Uuid::now_v7().simple())).await;
    for round in 1..=2 {
        let output = tokio::process::Command::new(binary())
            .arg("migrate")
            .env("DATABASE_URL", &database_url)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for table in [
        "health_events",
        "health_snapshots",
        "health_probe_overrides",
    ] {
        assert!(table_exists(&database_url, table).await, "{table} exists");
    }
    assert!(
        !table_exists(&database_url, "runtime_records").await,
        "the runtime manager's table is not healthprobe's to create"
    );
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        healthprobe::store::MIGRATOR.iter().count()
    );
}

#[tokio::test]
async fn after_sigkill_and_restart_recovery_is_emitted_and_nothing_is_re_emitted() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .game_in("down", "down", Some("c-down"), Behavior::Status(503))
        .await;
    scenario
        .game("stays-down", "stays-down", Behavior::Status(500))
        .await;
    scenario.game("fine", "fine", Behavior::Healthy).await;

    let mut first = fast(&scenario, "first").spawn();
    let events = env.wait_stream_events(2).await;
    first.kill().await;
    let failed: HashSet<&str> = events
        .iter()
        .filter(|e| e.event_type() == "probe_failed")
        .map(|e| e.game_id())
        .collect();
    assert_eq!(failed, HashSet::from(["down", "stays-down"]));

    fleet.set("down", Behavior::Healthy);
    let requests_before = fleet.requests("stays-down");
    let mut second = fast(&scenario, "second").spawn();
    let events = env.wait_stream_events(3).await;
    // Let the restarted worker tick a few more times over the still-failing game.
    wait_for("more ticks after the restart", WAIT_LIMIT, || async {
        (fleet.requests("stays-down") >= requests_before + 5).then_some(())
    })
    .await;
    let (status, elapsed) = second.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit {status:?} after {elapsed:?}");

    let events = {
        let all = env.stream_events().await;
        assert!(all.len() >= events.len());
        all
    };
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.event_type().to_owned(), e.game_id().to_owned()))
        .collect();
    assert_eq!(
        events.len(),
        3,
        "exactly two failures and one recovery: {summary:?}"
    );
    assert_eq!(
        summary[2],
        ("probe_recovered".into(), "down".into()),
        "{summary:?}"
    );
    let prior = events[2].payload["details"]["prior_failure_count"]
        .as_u64()
        .unwrap();
    assert!(
        prior >= 2,
        "prior_failure_count {prior} covers the whole episode"
    );
    let ids: HashSet<String> = events
        .iter()
        .map(|e| e.payload["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "no event published twice");
    let api = AsyncApi::load();
    for event in &events {
        api.check(event)
            .expect("worker messages match the AsyncAPI schemas");
    }
    let logged = env.logged_events().await;
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(
        logged.iter().all(|(_, _, published)| *published),
        "{logged:?}"
    );
}

#[tokio::test]
async fn sigterm_lets_the_probe_in_flight_finish_and_exits_zero_promptly() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .game("slow", "slow", Behavior::Delay(Duration::from_millis(1500)))
        .await;
    scenario.game("sick", "sick", Behavior::Status(503)).await;
    let timeout = Duration::from_secs(2);
    let mut worker = scenario
        .worker("sigterm")
        .probe_timeout(timeout)
        .interval(Duration::from_secs(1))
        .failures(1)
        .spawn();
    wait_for(
        "the first probe to reach the engine",
        WAIT_LIMIT,
        || async { (fleet.requests("slow") >= 1).then_some(()) },
    )
    .await;
    let (status, elapsed) = worker.terminate(timeout + Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        worker.log_text()
    );
    assert!(
        elapsed <= timeout + Duration::from_secs(5),
        "took {elapsed:?}"
    );
    eprintln!("FIGURE sigterm: exit 0 {elapsed:?} after SIGTERM with a probe in flight");
    let snapshot = env.snapshot("slow").await;
    assert_eq!(
        snapshot.map(|s| s.0).as_deref(),
        Some("healthy"),
        "the probe in flight was finished and recorded"
    );
    assert_eq!(fleet.requests("slow"), 1, "no new probe after SIGTERM");
    // The event of the first tick was published before the worker exited.
    let logged = env.logged_events().await;
    assert_eq!(logged, vec![("probe_failed".into(), "sick".into(), true)]);
    assert_eq!(env.stream_events().await.len(), 1);
    let log = worker.log_text();
    assert!(
        log.contains("outbox drained") || log.contains("outbox relay stopped"),
        "{log}"
    );
}

#[tokio::test]
async fn an_event_produced_while_nats_is_down_arrives_once_after_it_returns() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let mut nats = NatsServer::start(&env.id).await;
    let client = healthprobe::events::jetstream::connect(&nats.url(), false)
        .await
        .unwrap();
    let js = healthprobe::events::jetstream::context(client.clone());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(env.relay_on(client.clone()).run(stop.clone()));

    scenario.game("g", "g", Behavior::Status(503)).await;
    let mut worker = deciding_ticks(&scenario);

    nats.crash();
    wait_for("the client to notice NATS is gone", WAIT_LIMIT, || async {
        (client.connection_state() != async_nats::connection::State::Connected).then_some(())
    })
    .await;
    let report = worker.tick(&CancellationToken::new()).await.unwrap();
    assert_eq!(report.events.len(), 1);
    // While NATS is away the event waits in the outbox.
    tokio::time::sleep(Duration::from_millis(500)).await; // give a wrong relay the chance to misbehave
    assert_eq!(
        env.logged_events().await,
        vec![("probe_failed".into(), "g".into(), false)]
    );

    nats.resume().await;
    wait_for(
        "the outbox to drain after NATS returned",
        WAIT_LIMIT,
        || async {
            env.logged_events()
                .await
                .iter()
                .all(|(_, _, published)| *published)
                .then_some(())
        },
    )
    .await;
    let events = env.stream_events_via(&js).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].envelope(), report.events[0].envelope());
    stop.cancel();
    relay.await.unwrap();
}

#[tokio::test]
async fn tail_prints_the_stream_as_json_lines_and_exits_cleanly_on_ctrl_c() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("a", "a", Behavior::Status(503)).await;
    env.add_running("b", "nope", None).await;
    let mut worker = deciding_ticks(&scenario);
    let report = worker.tick(&CancellationToken::new()).await.unwrap();
    assert_eq!(report.events.len(), 2);
    env.relay().drain_once().await.unwrap();

    let mut tail = TailProcess::spawn(env, &helpers::services().nats_url);
    let mut envelopes = Vec::new();
    while envelopes.len() < 2 {
        envelopes.push(tail.next_envelope().await);
    }
    let expected: Vec<_> = report.events.iter().map(|e| e.envelope()).collect();
    assert_eq!(envelopes, expected);

    let status = tail.interrupt().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_worker_starts_and_records_while_nats_is_down_and_publishes_when_it_comes() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("g", "g", Behavior::Status(503)).await;
    // Reserve a port with nothing behind it yet.
    let port = helpers::free_port();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let mut worker = fast(&scenario, "nats-late").nats(&nats_url).spawn();

    let logged = wait_for(
        "the event to be recorded without NATS",
        WAIT_LIMIT,
        || async {
            let logged = env.logged_events().await;
            (!logged.is_empty()).then_some(logged)
        },
    )
    .await;
    assert_eq!(logged, vec![("probe_failed".into(), "g".into(), false)]);

    let nats = NatsServer::start_on(&env.id, port).await;
    let client = healthprobe::events::jetstream::connect(&nats.url(), true)
        .await
        .unwrap();
    let js = healthprobe::events::jetstream::context(client);
    let events = wait_for(
        "the event on the stream once NATS is up",
        WAIT_LIMIT,
        || async {
            let events = match js.get_stream(&env.target.stream).await {
                Ok(_) => env.stream_events_via(&js).await,
                Err(_) => Vec::new(),
            };
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].game_id(), "g");
    assert_eq!(env.stream_events_via(&js).await.len(), 1, "published once");
    assert!(
        env.logged_events()
            .await
            .iter()
            .all(|(_, _, published)| *published)
    );
}

#[tokio::test]
async fn tail_follows_the_stream_across_a_nats_restart_without_repeats() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let mut nats = NatsServer::start(&format!("tail-{}", env.id)).await;
    let client = healthprobe::events::jetstream::connect(&nats.url(), true)
        .await
        .unwrap();
    let fleet = &scenario.fleet;
    scenario.game("a", "a", Behavior::Status(503)).await;
    let mut worker = deciding_ticks(&scenario);
    worker.tick(&CancellationToken::new()).await.unwrap();
    env.relay_on(client.clone()).drain_once().await.unwrap();

    let mut tail = TailProcess::spawn(env, &nats.url());
    assert_eq!(
        tail.next_envelope().await.event_type.as_str(),
        "probe_failed"
    );

    nats.crash();
    nats.resume().await;
    fleet.set("a", Behavior::Healthy);
    worker.tick(&CancellationToken::new()).await.unwrap();
    wait_for(
        "the recovery published after the restart",
        WAIT_LIMIT,
        || async {
            let report = env.relay_on(client.clone()).drain_once().await.ok()?;
            (report.published == 1).then_some(())
        },
    )
    .await;
    let after = tail.next_envelope().await;
    assert_eq!(
        after.event_type.as_str(),
        "probe_recovered",
        "the next line is the new event, not a repeat"
    );
    let status = tail.interrupt().await;
    assert!(status.success(), "{status:?}");
}
