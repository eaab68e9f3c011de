//! Faults injected for real: NATS and Postgres outages, SIGKILL storms, slow engines. The
//! figures these tests print (`FIGURE ...`) are collected in RELIABILITY.md.
//!
//! Durations scale with `HEALTHPROBE_FAULT_OUTAGE_SECS` (default 30) and
//! `HEALTHPROBE_FAULT_KILLS` (default 20).

mod helpers;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use healthprobe::hysteresis::Thresholds;
use healthprobe::status::StatusBoard;
use healthprobe::worker;
use helpers::engines::{Behavior, expected_events, runs};
use helpers::process::{NatsServer, PgServer, get_json};
use helpers::scenario::Scenario;
use helpers::{TestEnv, wait_for};
use tokio_util::sync::CancellationToken;

fn outage() -> Duration {
    let secs = std::env::var("HEALTHPROBE_FAULT_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

fn kills() -> usize {
    std::env::var("HEALTHPROBE_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// Six games `flap-NN` whose engines flip between healthy and 503 every 1.2 s on their
/// own clock, out of phase; the records name container `container`.
async fn flapping(scenario: &Scenario, container: Option<&str>) {
    let period = Duration::from_millis(1200);
    for i in 0..6 {
        let id = format!("flap-{i:02}");
        let offset = Duration::from_millis(173 * i as u64);
        scenario
            .game_in(&id, &id, container, Behavior::Flap { period, offset })
            .await;
    }
}

async fn js_for(url: &str) -> (async_nats::Client, async_nats::jetstream::Context) {
    let client = healthprobe::events::jetstream::connect(url, false)
        .await
        .unwrap();
    let js = healthprobe::events::jetstream::context(client.clone());
    (client, js)
}

async fn stream_len(env: &TestEnv, js: &async_nats::jetstream::Context) -> usize {
    match js.get_stream(&env.target.stream).await {
        Ok(_) => env.stream_events_via(js).await.len(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn nats_outage_loses_nothing_and_duplicates_nothing() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    flapping(&scenario, Some("c")).await;
    let mut nats = NatsServer::start(&env.id).await;
    let nats_url = nats.url();
    let (_client, js) = js_for(&nats_url).await;
    let mut worker = scenario
        .worker("nats-outage")
        .nats(&nats_url)
        .interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(500))
        .failures(2)
        .spawn();
    wait_for(
        "events flowing before the outage",
        CATCH_UP_LIMIT,
        || async { (stream_len(env, &js).await >= 4).then_some(()) },
    )
    .await;

    nats.crash();
    let logged_at_crash = env.logged_ids().await.len();
    tokio::time::sleep(outage()).await; // the outage itself is the scenario
    let logged_at_return = env.logged_ids().await;
    let pending = logged_at_return.iter().filter(|row| !row.3).count();
    assert!(
        logged_at_return.len() > logged_at_crash,
        "engines kept flapping, events kept being recorded"
    );
    assert!(
        pending > 0,
        "events produced during the outage wait in the outbox"
    );
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker survived the outage"
    );

    nats.resume().await;
    let returned = Instant::now();
    wait_for(
        "the outbox to drain after NATS returned",
        CATCH_UP_LIMIT,
        || async {
            env.logged_ids()
                .await
                .iter()
                .take(logged_at_return.len())
                .all(|row| row.3)
                .then_some(())
        },
    )
    .await;
    let catch_up = returned.elapsed();
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    let total = env.assert_log_and_stream_agree(&js).await;
    eprintln!(
        "FIGURE nats_outage: outage {:?}, {pending} events waited, caught up {catch_up:?} after NATS returned, {total} events in all, 0 lost, 0 duplicated",
        outage()
    );
}

#[tokio::test]
async fn postgres_outage_keeps_the_worker_alive_and_resumes_within_an_interval() {
    let mut postgres = PgServer::start(&format!("outage-{}", uuid::Uuid::now_v7().simple())).await;
    let scenario = Scenario::on_database(&postgres.url()).await;
    let env = &scenario.env;
    flapping(&scenario, None).await;
    let interval = Duration::from_millis(200);
    let mut worker = scenario
        .worker("pg-outage")
        .interval(interval)
        .probe_timeout(Duration::from_millis(500))
        .failures(2)
        .spawn();
    env.wait_stream_events(4).await;

    postgres.crash();
    let stream_at_crash = env.stream_events().await.len();
    tokio::time::sleep(outage()).await; // the outage itself is the scenario
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker survived the outage"
    );
    let log = worker.log_text();
    let failed_ticks = log.matches("tick failed").count();
    assert!(failed_ticks >= 1, "failed ticks are logged:\n{log}");
    let stream_during = env.stream_events().await.len();

    let ticks_done = |log: &str| log.matches("tick done").count();
    let before = ticks_done(&worker.log_text());
    postgres.resume();
    let returned = Instant::now();
    wait_for(
        "a complete tick after Postgres returned",
        CATCH_UP_LIMIT,
        || async { (ticks_done(&worker.log_text()) > before).then_some(()) },
    )
    .await;
    let resumed = returned.elapsed();
    assert!(
        resumed <= interval + Duration::from_secs(2),
        "the first complete tick came {resumed:?} after Postgres returned (interval {interval:?})"
    );
    // Engines keep flapping: new events flow again.
    env.wait_stream_events(stream_during + 2).await;
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    let total = env.assert_log_and_stream_agree(&env.js).await;
    eprintln!(
        "FIGURE postgres_outage: outage {:?}, {failed_ticks} failed ticks logged, {} events published during the outage (all committed before it), first complete tick {resumed:?} after Postgres returned (interval {interval:?}), {total} events in all, 0 lost, 0 duplicated",
        outage(),
        stream_during - stream_at_crash
    );
}

#[tokio::test]
async fn sigkill_storm_loses_no_transition_and_emits_none_twice() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let games = 20;
    let ids = scenario
        .games_each(games, |i| {
            let id = format!("g{i:02}");
            let flap = Behavior::Flap {
                period: Duration::from_millis(1500 + 300 * (i % 5) as u64),
                offset: Duration::from_millis(97 * i as u64),
            };
            (id.clone(), id, flap)
        })
        .await;
    let thresholds = Thresholds {
        failures: 2,
        recovery: 1,
    };
    let worker = |name: &str| {
        scenario
            .worker(name)
            .interval(Duration::from_millis(50))
            .probe_timeout(Duration::from_millis(300))
            .failures(thresholds.failures)
            .concurrency(8)
            .spawn()
    };
    // Deterministic pseudo-random kill delays (printed, so a failure can be replayed).
    let mut seed: u64 = std::env::var("HEALTHPROBE_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("kill seed {seed}");
    // Each round kills the worker right after it logs the marker of one phase, plus a
    // pseudo-random 0-30 ms, cycling through the phases. (marker, phase the kill lands in)
    let phases = [
        ("per-game state restored", "list"),
        ("probe failed", "probe"),
        ("health event recorded", "commit→publish"),
        ("event published", "publish"),
    ];
    let mut kills_by_phase: HashMap<&'static str, usize> = HashMap::new();
    for round in 0..kills() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let jitter = Duration::from_millis((seed >> 33) % 30);
        let (marker, phase) = phases[round % phases.len()];
        let mut worker = worker(&format!("kill-{round:02}"));
        // Let the worker run a while (except for the start-up phase), then wait for the
        // next occurrence of the marker.
        let seen = if round % phases.len() == 0 {
            0
        } else {
            tokio::time::sleep(Duration::from_millis(100 + (seed >> 40) % 400)).await;
            worker.log_text().matches(marker).count()
        };
        wait_for(
            &format!("round {round}: the worker to log {marker:?}"),
            Duration::from_secs(20),
            || async { (worker.log_text().matches(marker).count() > seen).then_some(()) },
        )
        .await;
        tokio::time::sleep(jitter).await; // the kill moment is the scenario
        worker.kill().await;
        *kills_by_phase.entry(phase).or_default() += 1;
    }

    // Freeze every engine in the state it is in, so no run is cut short.
    let finals: Vec<bool> = ids.iter().map(|id| fleet.freeze(id)).collect();
    let mut worker = worker("final");
    wait_for(
        "the final states recorded and published",
        Duration::from_secs(60),
        || async {
            let mut settled = true;
            for (id, &healthy) in ids.iter().zip(&finals) {
                let want = if healthy { "healthy" } else { "failing" };
                let served = fleet.served(id);
                let last_run = runs(&served).last().map_or(0, |r| r.1);
                settled &= last_run >= 2 * thresholds.failures as usize + 3
                    && env.snapshot(id).await.is_some_and(|s| s.0 == want);
            }
            let published = env.logged_ids().await.iter().all(|row| row.3);
            (settled && published).then_some(())
        },
    )
    .await;
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    let total = env.assert_log_and_stream_agree(&env.js).await;

    // The model: per game, the runs of answers the engine served; a failing run long enough
    // to be seen `failures` times publishes probe_failed unless one is published; a healthy
    // run publishes probe_recovered when one is. Runs must be long enough that a kill (which
    // loses at most the tick in flight) cannot hide them.
    let stream = env.stream_events().await;
    for id in &ids {
        let served = fleet.served(id);
        // Every engine starts healthy (offset < period), so only that first healthy run may
        // be short.
        let expected = expected_events(id, &served, thresholds.failures as usize + 3);
        let got: Vec<&str> = stream
            .iter()
            .filter(|e| e.game_id() == id)
            .map(|e| e.event_type())
            .collect();
        assert_eq!(got, expected, "{id}: runs served {:?}", runs(&served));
    }
    eprintln!(
        "FIGURE sigkill_storm: {} kills (by phase: {kills_by_phase:?}), {games} flapping games, {total} events, all equal to the model, 0 lost, 0 duplicated",
        kills()
    );
}

#[tokio::test]
async fn a_tick_longer_than_the_interval_delays_the_next_and_never_overlaps() {
    let recorded = helpers::metrics::TestMetrics::new();
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    for id in ["slow-a", "slow-b"] {
        scenario
            .game(id, id, Behavior::Delay(Duration::from_millis(300)))
            .await;
    }
    let worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(1)
        .probe_timeout(Duration::from_secs(2))
        .metrics(recorded.metrics())
        .build();
    let interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker::run(
        worker,
        interval,
        stop.clone(),
        StatusBoard::new(interval),
    ));
    wait_for("three ticks", Duration::from_secs(20), || async {
        (fleet.total_requests() >= 6).then_some(())
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    assert_eq!(fleet.max_in_flight(), 1, "two ticks overlapped");
    let (count, min, _) = recorded
        .histogram("healthprobe.tick.duration")
        .expect("tick durations recorded");
    assert!(count >= 3, "{count} ticks recorded");
    assert!(
        min >= 0.55,
        "every tick took two 300 ms probes in a row, shortest {min} s"
    );
}

/// An engine slower than the interval (300 ms answers, interval 100 ms): the tick keeps to
/// its budget and carries the probe over instead of waiting, the probe is never started
/// twice for the game while one is in flight, the engine is judged healthy, the budget is
/// logged, and the worker's liveness stays OK.
#[tokio::test]
async fn a_slow_engine_is_carried_over_ticks_and_judged_healthy() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    scenario
        .game("slow", "slow", Behavior::Delay(Duration::from_millis(300)))
        .await;
    let mut worker = scenario
        .worker("slow-tick")
        .interval(Duration::from_millis(100))
        .spawn();
    let addr = worker.status_addr().await;
    wait_for(
        "the slow engine judged healthy after several probes",
        Duration::from_secs(20),
        || async {
            let healthy = env.snapshot("slow").await.is_some_and(|s| s.0 == "healthy");
            (healthy && fleet.requests("slow") >= 4).then_some(())
        },
    )
    .await;
    let status = get_json(&addr, "/status")
        .await
        .expect("/status answers with JSON");
    assert_eq!(
        status["components"]["ticks"]["status"], "OK",
        "a slow engine is not a stalled worker: {status}"
    );
    assert_eq!(status["last_tick"]["error"], serde_json::Value::Null);
    assert_eq!(
        fleet.max_in_flight(),
        1,
        "one probe of the game at a time, even across ticks"
    );
    let log = worker.log_text();
    assert!(
        log.contains("the tick's budget ran out"),
        "the carried probe is logged: {log}"
    );
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
}
