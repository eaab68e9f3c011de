//! Storms (DESIGN §15) with real processes: the `healthprobe run` binary, real Postgres,
//! NATS and HTTP engines. Each test asserts what the runtime manager would see (events
//! emitted against events deserved), what an orchestrator would see (`/healthz`), and the
//! worst gap between two probes of a healthy game; each prints its figures (`FIGURE`).

mod helpers;
#[path = "storm_support/mod.rs"]
mod storm_support;

use std::time::{Duration, Instant};

use helpers::engines::{Behavior, Fleet};
use helpers::process::{WorkerProcess, get_json};
use helpers::scenario::Scenario;
use helpers::{TestEnv, wait_for};
use storm_support::{LivenessWatch, secs, worst_gap};

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);

fn probes_of(fleet: &Fleet, id: &str) -> Vec<Instant> {
    fleet.served(id).into_iter().map(|(at, _)| at).collect()
}

/// The worst gap between two probes of any of `engines`.
fn worst_gap_of<S: AsRef<str>>(fleet: &Fleet, engines: impl IntoIterator<Item = S>) -> Duration {
    engines
        .into_iter()
        .map(|id| worst_gap(&probes_of(fleet, id.as_ref())))
        .max()
        .expect("at least one engine")
}

/// The worker's status address, and a watch on its `/healthz` from now on.
async fn watch_liveness(worker: &WorkerProcess) -> (String, LivenessWatch) {
    let addr = worker.status_addr().await;
    let liveness = LivenessWatch::start(&addr);
    (addr, liveness)
}

/// Waits (at most `limit`) until `count` events are recorded; returns when they were.
async fn wait_logged(env: &TestEnv, what: &str, count: usize, limit: Duration) -> Instant {
    wait_for(what, limit, || async {
        (env.logged_events().await.len() >= count).then(Instant::now)
    })
    .await
}

/// What the runtime manager and an orchestrator saw of a storm of hung engines.
struct HungStormSeen {
    /// From the watch's start until every hung engine had its event.
    all_failed: Duration,
    /// The longest time without progress `/healthz` reported.
    stuck: Duration,
    /// `/healthz` answers, and those that were not 200.
    answers: usize,
    not_ok: usize,
    events: Vec<(String, String, bool)>,
}

/// Watches `/healthz` until `hung` events are recorded (at most `limit`) and `settle`
/// longer, in which nothing else may come.
async fn watch_hung_storm(
    env: &TestEnv,
    worker: &WorkerProcess,
    hung: usize,
    limit: Duration,
    settle: Duration,
) -> HungStormSeen {
    let (_, liveness) = watch_liveness(worker).await;
    let started = Instant::now();
    let all_failed = wait_logged(env, "a probe_failed for every hung engine", hung, limit)
        .await
        .duration_since(started);
    // The time to settle is part of the scenario: nothing else may come in it.
    tokio::time::sleep(settle).await;
    let stuck = liveness.worst_progress_age();
    let (answers, not_ok) = liveness.finish().await;
    HungStormSeen {
        all_failed,
        stuck,
        answers,
        not_ok,
        events: env.logged_events().await,
    }
}

/// The loop kept turning through the storm (at most 3 × interval without progress, below
/// liveness' floor) and the healthy games kept their interval (at most 2 × interval +
/// timeout between two probes of one).
fn assert_kept_schedule(stuck: Duration, worst: Duration, interval: Duration, timeout: Duration) {
    assert!(
        stuck <= 3 * interval,
        "the loop turned within 3 x interval, below liveness' floor: {stuck:?}"
    );
    assert!(
        worst <= 2 * interval + timeout,
        "a healthy game waited {} between probes",
        secs(worst)
    );
}

/// `/healthz` answered 200 every time it was asked.
fn assert_always_live(answers: usize, not_ok: usize) {
    assert_eq!(
        not_ok, 0,
        "/healthz answered non-200 {not_ok} times of {answers}"
    );
}

/// The events are one `probe_failed` for each of the `hung` engines' games (`a-hung-…`),
/// nothing twice, nothing for a healthy game.
fn assert_one_probe_failed_per_hung(events: &[(String, String, bool)], hung: usize) {
    let mut failed: Vec<&str> = events
        .iter()
        .map(|(kind, game, _)| {
            assert_eq!(kind, "probe_failed", "{events:?}");
            game.as_str()
        })
        .collect();
    failed.sort();
    failed.dedup();
    assert_eq!(
        failed.len(),
        hung,
        "one probe_failed per hung engine: {events:?}"
    );
    assert!(
        failed.iter().all(|g| g.starts_with("a-hung-")),
        "{events:?}"
    );
    assert_eq!(
        events.len(),
        hung,
        "nothing twice, nothing for a healthy game"
    );
}

/// Each of `ids` has exactly a `probe_failed` then a `probe_recovered` among `events`.
fn assert_failed_then_recovered(events: &[(String, String, bool)], ids: &[String]) {
    for id in ids {
        let mine: Vec<&str> = events
            .iter()
            .filter(|(_, game, _)| game == id)
            .map(|(kind, _, _)| kind.as_str())
            .collect();
        assert_eq!(
            mine,
            ["probe_failed", "probe_recovered"],
            "{id}: {events:?}"
        );
    }
}

/// 24 engines that hang and 4 healthy ones, interval 1 s, timeout 0.5 s, two probes in
/// flight at most (the set-up; the defaults scaled down): the healthy games are
/// probed at least every 2 × interval + timeout, `/healthz` stays 200, and each hung
/// engine gets exactly one `probe_failed`.
#[tokio::test]
async fn hung_engines_hold_neither_the_schedule_nor_liveness() {
    const HUNG: usize = 24;
    const HEALTHY: usize = 4;
    let (scenario, worker) = hung_beside_healthy("storm-hung", HUNG, HEALTHY).await;
    let Scenario { env, fleet } = &scenario;
    let HungStormSeen {
        all_failed,
        stuck,
        answers,
        not_ok,
        events,
    } = watch_hung_storm(env, &worker, HUNG, Duration::from_secs(90), 3 * INTERVAL).await;
    let worst = worst_gap_of(fleet, (0..HEALTHY).map(|i| format!("fine-{i}")));
    let hung_probes: usize = (0..HUNG)
        .map(|i| fleet.requests(&format!("hung-{i:02}")))
        .sum();
    eprintln!(
        "FIGURE storm-hung: events {} emitted / {HUNG} deserved (all within {}); /healthz {} of {answers} not 200, longest without progress {}; worst gap between probes of a healthy game {} (bound {}); {hung_probes} probes of hung engines",
        events.len(),
        secs(all_failed),
        not_ok,
        secs(stuck),
        secs(worst),
        secs(2 * INTERVAL + TIMEOUT),
    );
    assert_kept_schedule(stuck, worst, INTERVAL, TIMEOUT);
    assert_one_probe_failed_per_hung(&events, HUNG);
    assert_always_live(answers, not_ok);
}

/// `hung` games `a-hung-NN` whose engines `hung-NN` answer after 600 s, listed before
/// `healthy` games `z-fine-N` on engines `fine-N` (so an order that probes in list order
/// probes the hung ones first), and a worker on the settings: interval 1 s,
/// timeout 0.5 s, two probes in flight at most.
async fn hung_beside_healthy(
    name: &str,
    hung: usize,
    healthy: usize,
) -> (Scenario, helpers::process::WorkerProcess) {
    let scenario = Scenario::new().await;
    scenario
        .games(
            hung,
            |i| (format!("a-hung-{i:02}"), format!("hung-{i:02}")),
            Behavior::Delay(Duration::from_secs(600)),
        )
        .await;
    scenario
        .games(
            healthy,
            |i| (format!("z-fine-{i}"), format!("fine-{i}")),
            Behavior::Healthy,
        )
        .await;
    let worker = scenario
        .worker(name)
        .interval(INTERVAL)
        .probe_timeout(TIMEOUT)
        .concurrency(2)
        .spawn();
    (scenario, worker)
}

/// The storm at the defaults (interval 15 s, timeout 2 s, 400 hung engines),
/// scaled down: time tenfold (interval 1.5 s, timeout 200 ms) and the descriptors with it
/// (`ulimit -n 400`, so the default concurrency is the budget's, 19 slots, where 1,024
/// descriptors give 175), nothing else set. 400 engines that answer only after 2 s (ten
/// timeouts; not longer, so the engines' side of the test holds few sockets) and 20
/// healthy ones: about 2.8 times what the slots can probe in an interval, as in the issue.
/// Each hung engine gets exactly one `probe_failed` (after the mass-failure hold: alone,
/// the failure is real), the healthy games keep their interval and `/healthz` stays 200.
#[tokio::test]
async fn the_default_settings_storm_scaled_down_holds_nothing() {
    const HUNG: usize = 400;
    const HEALTHY: usize = 20;
    let interval = Duration::from_millis(1500);
    let timeout = Duration::from_millis(200);
    let scenario = Scenario::new().await;
    scenario
        .games(
            HUNG,
            |i| (format!("a-hung-{i:03}"), format!("hung-{i:03}")),
            Behavior::Delay(Duration::from_secs(2)),
        )
        .await;
    let fine = healthy_fleet(&scenario, "z-fine", HEALTHY).await;
    let worker = scenario
        .worker("storm-defaults")
        .interval(interval)
        .probe_timeout(timeout)
        .nofile(400)
        .spawn();
    let Scenario { env, fleet } = &scenario;
    let HungStormSeen {
        all_failed,
        stuck,
        answers,
        not_ok,
        events,
    } = watch_hung_storm(env, &worker, HUNG, Duration::from_secs(120), 3 * interval).await;
    let worst = worst_gap_of(fleet, &fine);
    let slots = worker
        .log_text()
        .lines()
        .find(|l| l.contains("healthprobe starting"))
        .and_then(|l| {
            l.split("max_concurrency=")
                .nth(1)?
                .split_whitespace()
                .next()
        })
        .unwrap_or("?")
        .to_owned();
    eprintln!(
        "FIGURE storm-defaults: {HUNG} hung and {HEALTHY} healthy engines, interval 1.5 s, timeout 200 ms, ulimit -n 400 (default concurrency {slots}); events {} emitted / {HUNG} deserved (all within {}); /healthz {not_ok} of {answers} not 200, longest without progress {}; worst gap between probes of a healthy game {} (bound {})",
        events.len(),
        secs(all_failed),
        secs(stuck),
        secs(worst),
        secs(2 * interval + timeout),
    );
    assert_one_probe_failed_per_hung(&events, HUNG);
    assert_always_live(answers, not_ok);
    assert_kept_schedule(stuck, worst, interval, timeout);
}

/// `count` healthy games named `{prefix}-NN`, each on an engine of the same name.
async fn healthy_fleet(scenario: &Scenario, prefix: &str, count: usize) -> Vec<String> {
    scenario
        .games_named(count, |i| format!("{prefix}-{i:02}"), Behavior::Healthy)
        .await
}

async fn all_probed(fleet: &Fleet, ids: &[String], times: usize) {
    wait_for("every engine probed", Duration::from_secs(30), || async {
        ids.iter()
            .all(|id| fleet.requests(id) >= times)
            .then_some(())
    })
    .await;
}

/// Every engine fails at once, for real, and the worker is alone: the hold delays the
/// failures by at most the hold, then each game gets its own `probe_failed`, and its
/// `probe_recovered` when it comes back. Nothing twice, `/healthz` 200 throughout.
#[tokio::test]
async fn a_real_fleet_wide_outage_alone_is_reported_after_the_hold() {
    const GAMES: usize = 20;
    const HOLD: Duration = Duration::from_secs(2);
    let interval = Duration::from_millis(500);
    let scenario = Scenario::new().await;
    let ids = healthy_fleet(&scenario, "outage", GAMES).await;
    let worker = scenario
        .worker("storm-outage")
        .interval(interval)
        .probe_timeout(Duration::from_millis(300))
        .failures(2)
        .hold(HOLD)
        .spawn();
    let Scenario { env, fleet } = &scenario;
    let (_, liveness) = watch_liveness(&worker).await;
    all_probed(fleet, &ids, 2).await;
    let outage = Instant::now();
    for id in &ids {
        fleet.set(id, Behavior::Status(503));
    }
    let failed_by = wait_logged(
        env,
        "a probe_failed per game",
        GAMES,
        Duration::from_secs(30),
    )
    .await;
    let first_failed = env.logged_events().await;
    let late = failed_by.duration_since(outage);
    for id in &ids {
        fleet.set(id, Behavior::Healthy);
    }
    wait_logged(
        env,
        "a probe_recovered per game",
        2 * GAMES,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(4 * interval).await;
    let (answers, not_ok) = liveness.finish().await;
    let events = env.logged_events().await;
    let worst = worst_gap_of(fleet, &ids);
    let log = worker.log_text();
    eprintln!(
        "FIGURE storm-outage: events {} emitted / {} deserved; all probe_failed {} after the outage began (threshold 2 x 500 ms, hold {}); /healthz {not_ok} of {answers} not 200; worst gap between probes of a game {}",
        events.len(),
        2 * GAMES,
        secs(late),
        secs(HOLD),
        secs(worst)
    );
    assert!(
        log.contains("mass failure: most engines failed at once"),
        "the hold was logged"
    );
    assert!(
        log.contains("the failures are real"),
        "the release was logged"
    );
    assert!(
        first_failed
            .iter()
            .all(|(kind, _, _)| kind == "probe_failed"),
        "{first_failed:?}"
    );
    assert_failed_then_recovered(&events, &ids);
    assert!(
        late >= HOLD,
        "released after the hold, not before: {late:?}"
    );
    assert!(
        late <= HOLD + 2 * interval + 4 * interval,
        "late by at most the hold (and the ticks that see the failure): {late:?}"
    );
    assert_always_live(answers, not_ok);
    assert!(
        worst <= 2 * interval + Duration::from_millis(300),
        "{worst:?}"
    );
}

/// The checker's view of every engine fails for less than the hold (threshold 1, so without
/// the hold each game would get a `probe_failed` and a `probe_recovered`): no event at all.
#[tokio::test]
async fn a_blip_shorter_than_the_hold_yields_no_event() {
    const GAMES: usize = 20;
    let interval = Duration::from_millis(500);
    let scenario = Scenario::new().await;
    let ids = healthy_fleet(&scenario, "blip", GAMES).await;
    let worker = scenario
        .worker("storm-blip")
        .interval(interval)
        .probe_timeout(Duration::from_millis(300))
        .failures(1)
        .hold(Duration::from_secs(3))
        .spawn();
    let Scenario { env, fleet } = &scenario;
    let (_, liveness) = watch_liveness(&worker).await;
    all_probed(fleet, &ids, 2).await;
    let before: Vec<usize> = ids.iter().map(|id| fleet.requests(id)).collect();
    for id in &ids {
        fleet.set(id, Behavior::Status(503));
    }
    // Every engine answers 503 at least twice (two ticks), then comes back.
    wait_for(
        "two failed probes of every engine",
        Duration::from_secs(10),
        || async {
            ids.iter()
                .zip(&before)
                .all(|(id, &n)| fleet.requests(id) >= n + 2)
                .then_some(())
        },
    )
    .await;
    for id in &ids {
        fleet.set(id, Behavior::Healthy);
    }
    all_probed(fleet, &ids, before.iter().max().unwrap() + 5).await;
    tokio::time::sleep(4 * interval).await;
    let (answers, not_ok) = liveness.finish().await;
    let events = env.logged_events().await;
    let failed_answers: usize = ids
        .iter()
        .map(|id| fleet.served(id).iter().filter(|(_, ok)| !ok).count())
        .sum();
    let log = worker.log_text();
    eprintln!(
        "FIGURE storm-blip: events {} emitted / 0 deserved ({failed_answers} failed answers served during the blip, threshold 1, hold 3 s); /healthz {not_ok} of {answers} not 200",
        events.len()
    );
    assert!(
        failed_answers >= 2 * GAMES,
        "the blip was seen: {failed_answers}"
    );
    assert!(
        log.contains("mass failure: most engines failed at once"),
        "the hold was logged"
    );
    assert!(events.is_empty(), "{events:?}");
    assert_always_live(answers, not_ok);
}

/// 300 concurrent `POST /games/{id}/probe` for 40 engines that hang past the timeout,
/// beside 4 healthy games on the settings: requests for one game share its probe,
/// beyond the bound the answer is 429 with `Retry-After` at once, ticks go on (the healthy
/// games keep their interval) and `/healthz` stays 200.
#[tokio::test]
async fn a_flood_of_on_demand_probes_is_bounded_and_holds_nothing() {
    const HUNG: usize = 40;
    const HEALTHY: usize = 4;
    const REQUESTS: usize = 300;
    let (scenario, worker) = hung_beside_healthy("storm-flood", HUNG, HEALTHY).await;
    let Scenario { env, fleet } = &scenario;
    let (addr, liveness) = watch_liveness(&worker).await;
    wait_for(
        "the healthy games probed",
        Duration::from_secs(30),
        || async {
            (0..HEALTHY)
                .all(|i| fleet.requests(&format!("fine-{i}")) >= 2)
                .then_some(())
        },
    )
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // At most 200 connections at once: the status port closes the oldest beyond its cap
    // (256 by default), a limit of its own tested elsewhere.
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let flood_started = Instant::now();
    let requests = (0..REQUESTS).map(|i| {
        let request = client.post(format!("http://{addr}/games/a-hung-{:02}/probe", i % HUNG));
        let connections = connections.clone();
        async move {
            let _connection = connections.acquire_owned().await.unwrap();
            let asked = Instant::now();
            let response = request.send().await.expect("the status port answers");
            let code = response.status().as_u16();
            let retry_after = response
                .headers()
                .contains_key(reqwest::header::RETRY_AFTER);
            (code, retry_after, asked.elapsed())
        }
    });
    let answers = futures::future::join_all(requests).await;
    let flood = flood_started.elapsed();
    tokio::time::sleep(3 * INTERVAL).await;
    let stuck = liveness.worst_progress_age();
    let (answered, not_ok) = liveness.finish().await;
    let events = env.logged_events().await;
    let worst = worst_gap_of(fleet, (0..HEALTHY).map(|i| format!("fine-{i}")));
    let ok = answers.iter().filter(|(code, ..)| *code == 200).count();
    let busy = answers.iter().filter(|(code, ..)| *code == 429).count();
    let slowest = answers.iter().map(|(.., took)| *took).max().unwrap();
    let mut failed: Vec<&str> = events.iter().map(|(_, game, _)| game.as_str()).collect();
    failed.sort();
    let distinct = {
        let mut d = failed.clone();
        d.dedup();
        d.len()
    };
    // A probe_failed is deserved once a hung engine failed 3 probes (ticks' and on-demand
    // alike; a hung probe reaches the engine before it fails), so no more than this many.
    let deserved_at_most = (0..HUNG)
        .filter(|i| fleet.requests(&format!("hung-{i:02}")) >= 3)
        .count();
    eprintln!(
        "FIGURE storm-flood: {REQUESTS} requests in {}: {ok} answered 200, {busy} 429 with Retry-After, slowest {}; events {} emitted ({distinct} distinct) / at most {deserved_at_most} deserved (hung engines probed 3 times or more); /healthz {not_ok} of {answered} not 200, longest without progress {}; worst gap between probes of a healthy game {} (bound {})",
        secs(flood),
        secs(slowest),
        events.len(),
        secs(stuck),
        secs(worst),
        secs(2 * INTERVAL + TIMEOUT),
    );
    assert_eq!(ok + busy, REQUESTS, "only 200 or 429");
    assert!(busy > 0, "the bound was reached");
    assert!(
        answers
            .iter()
            .all(|(code, retry_after, _)| *code != 429 || *retry_after),
        "every 429 says Retry-After"
    );
    assert!(
        slowest <= TIMEOUT + Duration::from_secs(2),
        "answered at once or after one probe: {slowest:?}"
    );
    assert_eq!(distinct, events.len(), "no game twice: {events:?}");
    assert!(
        events.len() <= deserved_at_most,
        "an event for a game that did not fail 3 probes: {events:?}"
    );
    assert!(
        events
            .iter()
            .all(|(kind, game, _)| kind == "probe_failed" && game.starts_with("a-hung-")),
        "{events:?}"
    );
    assert_always_live(answered, not_ok);
    assert_kept_schedule(stuck, worst, INTERVAL, TIMEOUT);
}

/// Postgres restarted under the worker mid-run (a private server: the shared one is never
/// restarted): `/status` says so while it is away, `/healthz` stays 200, and every event
/// deserved is recorded and published exactly once.
#[tokio::test]
async fn postgres_restarted_mid_tick_loses_and_repeats_nothing() {
    const FINE: usize = 10;
    const SICK: usize = 5;
    let interval = Duration::from_millis(500);
    let mut pg = helpers::process::PgServer::start("storm-pg").await;
    let scenario = Scenario::on_database(&pg.url()).await;
    let fine = healthy_fleet(&scenario, "fine", FINE).await;
    let sick = scenario
        .games_named(SICK, |i| format!("sick-{i}"), Behavior::Status(503))
        .await;
    let worker = scenario
        .worker("storm-pg")
        .interval(interval)
        .probe_timeout(Duration::from_millis(300))
        .failures(2)
        .spawn();
    let Scenario { env, fleet } = &scenario;
    let (addr, liveness) = watch_liveness(&worker).await;
    wait_logged(
        env,
        "a probe_failed per sick game",
        SICK,
        Duration::from_secs(30),
    )
    .await;
    // Restart Postgres, and make the sick games recover meanwhile.
    pg.crash();
    for id in &sick {
        fleet.set(id, Behavior::Healthy);
    }
    let down = Instant::now();
    let mut seen_not_ok = Vec::new();
    while down.elapsed() < Duration::from_secs(2) {
        if let Some(status) = get_json(&addr, "/status").await {
            for name in ["postgres", "commits"] {
                let level = status["components"][name]["status"].as_str().unwrap_or("");
                if level != "OK" {
                    seen_not_ok.push(format!("{name} {level}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg.resume();
    let back = Instant::now();
    wait_logged(
        env,
        "a probe_recovered per sick game",
        2 * SICK,
        Duration::from_secs(30),
    )
    .await;
    env.relay().drain_once().await.ok();
    let published = wait_for(
        "every event on the stream",
        Duration::from_secs(30),
        || async {
            let events = env.stream_events().await;
            (events.len() >= 2 * SICK).then_some(events)
        },
    )
    .await;
    tokio::time::sleep(3 * interval).await;
    let stuck = liveness.worst_progress_age();
    let (answers, not_ok) = liveness.finish().await;
    let events = env.logged_events().await;
    let worst = worst_gap_of(fleet, &fine);
    let mut ids: Vec<String> = published
        .iter()
        .map(|e| e.payload["event_id"].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    seen_not_ok.dedup();
    eprintln!(
        "FIGURE storm-postgres: Postgres down {}; events {} emitted / {} deserved, {} on the stream ({} distinct); /status during the outage: {:?}; /healthz {not_ok} of {answers} not 200, longest without progress {}; worst gap between probes of a healthy game {}",
        secs(back.duration_since(down)),
        events.len(),
        2 * SICK,
        published.len(),
        ids.len(),
        seen_not_ok,
        secs(stuck),
        secs(worst)
    );
    assert_failed_then_recovered(&events, &sick);
    assert_eq!(events.len(), 2 * SICK, "{events:?}");
    assert_eq!(published.len(), 2 * SICK, "each event on the stream once");
    assert_eq!(ids.len(), 2 * SICK);
    assert!(
        !seen_not_ok.is_empty(),
        "/status said so while Postgres was away"
    );
    assert_always_live(answers, not_ok);
    assert!(
        worst <= back.duration_since(down) + 4 * interval,
        "probes resumed: worst gap {worst:?}"
    );
}

/// The stream deleted under the worker: `/status` says so (WARN) for as long as it is
/// missing, the relay recreates it with the next event, that event is on it exactly once,
/// and `/healthz` answers 200 throughout.
#[tokio::test]
async fn a_deleted_stream_shows_on_status_and_is_recreated() {
    let interval = Duration::from_millis(500);
    let scenario = Scenario::new().await;
    let ids = healthy_fleet(&scenario, "s", 4).await;
    let worker = scenario
        .worker("storm-stream")
        .interval(interval)
        .probe_timeout(Duration::from_millis(300))
        .failures(1)
        .spawn();
    let Scenario { env, fleet } = &scenario;
    let (addr, liveness) = watch_liveness(&worker).await;
    all_probed(fleet, &ids, 2).await;
    let stream_level = || async {
        let status = get_json(&addr, "/status").await?;
        status["components"]["stream"]["status"]
            .as_str()
            .map(str::to_owned)
    };
    wait_for("the stream present", Duration::from_secs(30), || async {
        (stream_level().await? == "OK").then_some(())
    })
    .await;
    let stream_exists = || async { env.js.get_stream(&env.target.stream).await.is_ok() };
    env.js
        .delete_stream(&env.target.stream)
        .await
        .expect("delete the stream");
    let deleted = Instant::now();
    let warned = wait_for(
        "/status WARN for the missing stream",
        Duration::from_secs(10),
        || async { (stream_level().await? == "WARN").then(|| deleted.elapsed()) },
    )
    .await;
    // No event yet, so nothing recreates the stream: WARN holds while it is missing.
    let mut levels_while_missing = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(interval / 2).await;
        levels_while_missing.push(stream_level().await.unwrap_or_default());
    }
    assert!(!stream_exists().await, "nothing recreated the stream yet");
    assert!(
        levels_while_missing.iter().all(|level| level == "WARN"),
        "/status while the stream is missing: {levels_while_missing:?}"
    );
    assert!(
        env.stream_events().await.is_empty(),
        "a missing stream holds no events"
    );
    // An event: the relay recreates the stream and publishes it there.
    fleet.set(&ids[0], Behavior::Status(503));
    let published = wait_for(
        "the event on the recreated stream",
        Duration::from_secs(30),
        || async {
            let events = env.stream_events().await;
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    let recreated = deleted.elapsed();
    wait_for("/status OK again", Duration::from_secs(10), || async {
        (stream_level().await? == "OK").then_some(())
    })
    .await;
    // A few more ticks and relay rounds: nothing is published twice.
    tokio::time::sleep(3 * interval).await;
    let (answers, not_ok) = liveness.finish().await;
    let events = env.logged_ids().await;
    let on_stream = env.stream_events().await;
    eprintln!(
        "FIGURE storm-stream: stream deleted; /status WARN within {} and at {} of {} polls while missing, recreated with the next event within {}; events {} emitted / 1 deserved, {} on the stream; /healthz {not_ok} of {answers} not 200",
        secs(warned),
        levels_while_missing.iter().filter(|l| *l == "WARN").count(),
        levels_while_missing.len(),
        secs(recreated),
        events.len(),
        on_stream.len()
    );
    assert_eq!(events.len(), 1, "one probe_failed deserved: {events:?}");
    let (event_id, game_id, event_type, _) = &events[0];
    assert_eq!((game_id, event_type.as_str()), (&ids[0], "probe_failed"));
    assert_eq!(published.len(), 1);
    assert_eq!(on_stream.len(), 1, "on the stream exactly once");
    assert_eq!(
        on_stream[0].payload["event_id"].as_str(),
        Some(event_id.to_string().as_str()),
        "the event recorded after the deletion is the one on the stream"
    );
    assert_always_live(answers, not_ok);
}
