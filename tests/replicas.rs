//! Several replicas against one database (DESIGN §12), as real processes: steady-state
//! sharing, a rolling deploy, a SIGKILLed replica, a SIGKILLed relay holder, and a commit
//! whose outcome the worker cannot know. The figures these tests print (`FIGURE ...`) are
//! collected in RELIABILITY.md.

mod helpers;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use healthprobe::worker::membership::owner;
use helpers::engines::{Behavior, Fleet, expected_events, runs};
use helpers::process::{NatsServer, WorkerProcess};
use helpers::proxy::CommitCutter;
use helpers::scenario::{Scenario, WorkerKnobs};
use helpers::wait_for;

const INTERVAL: Duration = Duration::from_millis(250);
const LEASE: Duration = Duration::from_millis(1500);

/// Replica `id` of the scenario's worker, its log named after `name`: interval
/// [`INTERVAL`], lease [`LEASE`], timeout 500 ms, threshold 2.
fn replica<'s>(scenario: &'s Scenario, name: &str, id: &str) -> WorkerKnobs<'s> {
    scenario
        .worker(name)
        .replica(id)
        .interval(INTERVAL)
        .probe_timeout(Duration::from_millis(500))
        .failures(2)
        .lease(LEASE)
}

/// Waits until every process has logged that the live replicas are exactly `ids`, then
/// until each has finished two more ticks (so no tick planned under the old view remains).
async fn converge(workers: &[&WorkerProcess], ids: &[&str]) {
    let line = format!(
        "live=[{}]",
        ids.iter()
            .map(|id| format!("{id:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut marks = Vec::new();
    for worker in workers {
        let at = wait_for(
            &format!("{} to see {line}", worker.log.display()),
            Duration::from_secs(20),
            || async { worker.log_text().rfind(&line) },
        )
        .await;
        marks.push(at);
    }
    for (worker, at) in workers.iter().zip(marks) {
        wait_for(
            "two ticks under the new membership",
            Duration::from_secs(20),
            || async { (worker.log_text()[at..].matches("tick done").count() >= 2).then_some(()) },
        )
        .await;
    }
}

/// `games` healthy games `gNNN`, each on an engine of the same name; returns the ids.
async fn healthy_fleet(scenario: &Scenario, games: usize) -> Vec<String> {
    scenario
        .games_named(games, |i| format!("g{i:03}"), Behavior::Healthy)
        .await
}

/// Requests per game over a window of `intervals` intervals.
async fn probes_per_game(fleet: &Fleet, ids: &[String], intervals: u32) -> (Vec<usize>, Duration) {
    let before: Vec<usize> = ids.iter().map(|id| fleet.requests(id)).collect();
    let started = Instant::now();
    // The window is the measurement itself, not a wait for a condition.
    tokio::time::sleep(INTERVAL * intervals).await;
    let window = started.elapsed();
    let counts = ids
        .iter()
        .zip(before)
        .map(|(id, b)| fleet.requests(id) - b)
        .collect();
    (counts, window)
}

#[tokio::test]
async fn two_then_three_replicas_probe_each_game_once_per_interval() {
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    let ids = healthy_fleet(&scenario, 60).await;
    let a = replica(&scenario, "steady-a", "a").spawn();
    let b = replica(&scenario, "steady-b", "b").spawn();
    converge(&[&a, &b], &["a", "b"]).await;
    const WINDOW: u32 = 16;
    let (counts, window) = probes_per_game(fleet, &ids, WINDOW).await;
    check_once_per_interval(2, &counts, window, &[&a, &b]);
    let c = replica(&scenario, "steady-c", "c").spawn();
    converge(&[&a, &b, &c], &["a", "b", "c"]).await;
    let (counts, window) = probes_per_game(fleet, &ids, WINDOW).await;
    check_once_per_interval(3, &counts, window, &[&a, &b, &c]);
    // Each replica owns its rendezvous share, and the shares cover the fleet.
    let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let mut shares: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *shares.entry(owner(id, &members).unwrap()).or_default() += 1;
    }
    eprintln!("FIGURE replicas_shares: 60 games over a, b, c: {shares:?}");
}

fn check_once_per_interval(
    replicas: usize,
    counts: &[usize],
    window: Duration,
    workers: &[&WorkerProcess],
) {
    let intervals = window.as_secs_f64() / INTERVAL.as_secs_f64();
    let max = *counts.iter().max().unwrap();
    let min = *counts.iter().min().unwrap();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    eprintln!(
        "FIGURE replicas_steady: {replicas} replicas, {} games, window {window:?} = {intervals:.1} intervals: probes per game min {min}, mean {mean:.1}, max {max} ({:.2} per interval at most)",
        counts.len(),
        max as f64 / intervals
    );
    // One probe per interval, give or take the tick at each end of the window. Two
    // replicas probing a game would double its count.
    let logs = || {
        workers
            .iter()
            .map(|w| w.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert!(
        (max as f64) <= intervals + 2.0,
        "a game was probed {max} times in {intervals:.1} intervals: probed by two replicas?\n{}",
        logs()
    );
    assert!(
        min >= 1,
        "a game was not probed at all in {window:?}: nobody owned it\n{}",
        logs()
    );
    // One relay holder, undisturbed: no replica ends another's live session.
    assert!(
        !logs().contains("relay lock session lost"),
        "the relay lock changed hands between live replicas\n{}",
        logs()
    );
}

#[tokio::test]
async fn a_rolling_deploy_emits_each_episode_once() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let ids = scenario
        .games_each(16, |i| {
            let id = format!("f{i:02}");
            let flap = Behavior::Flap {
                period: Duration::from_millis(2500 + 250 * (i % 4) as u64),
                offset: Duration::from_millis(131 * i as u64),
            };
            (id.clone(), id, flap)
        })
        .await;
    let mut old = replica(&scenario, "deploy-old", "old").spawn();
    wait_for(
        "the old replica's events",
        Duration::from_secs(20),
        || async { (!env.logged_events().await.is_empty()).then_some(()) },
    )
    .await;
    // The new version starts beside the old one; both run for a while.
    let new = replica(&scenario, "deploy-new", "new").spawn();
    converge(&[&old, &new], &["new", "old"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // both share the flapping fleet
    let stopped = Instant::now();
    let (status, _) = old.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", old.log_text());
    wait_for(
        "the new replica to own every game",
        Duration::from_secs(20),
        || async { new.log_text().contains("live=[\"new\"]").then_some(()) },
    )
    .await;
    let takeover = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await; // the new one alone
    // Freeze every engine where it is, so no run is cut short, and let the states settle.
    let finals: Vec<bool> = ids.iter().map(|id| fleet.freeze(id)).collect();
    wait_for(
        "the final states recorded and published",
        Duration::from_secs(30),
        || async {
            let mut settled = true;
            for (id, &healthy) in ids.iter().zip(&finals) {
                let want = if healthy { "healthy" } else { "failing" };
                let last_run = runs(&fleet.served(id)).last().map_or(0, |r| r.1);
                settled &= last_run >= 6 && env.snapshot(id).await.is_some_and(|s| s.0 == want);
            }
            let published = env.logged_ids().await.iter().all(|row| row.3);
            (settled && published).then_some(())
        },
    )
    .await;
    let mut new = new;
    let (status, _) = new.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", new.log_text());
    let total = env.assert_log_and_stream_agree(&env.js).await;

    // The model: per game, each failing run the engines served is one episode, opened by
    // one probe_failed and closed by one probe_recovered when a healthy run follows.
    let stream = env.stream_events().await;
    let mut failed = 0;
    for id in &ids {
        let served = fleet.served(id);
        let expected = expected_events(id, &served, 4);
        let got: Vec<&str> = stream
            .iter()
            .filter(|e| e.game_id() == id)
            .map(|e| e.event_type())
            .collect();
        assert_eq!(got, expected, "{id}: runs served {:?}", runs(&served));
        failed += got.iter().filter(|t| **t == "probe_failed").count();
    }
    eprintln!(
        "FIGURE rolling_deploy: 16 flapping games, old and new side by side then old SIGTERMed: new owned every game {takeover:?} after the SIGTERM; {total} events ({failed} probe_failed, as many as failing runs served), duplicates 0"
    );
}

#[tokio::test]
async fn a_sigkilled_replicas_games_move_within_the_lease() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let games = healthy_fleet(&scenario, 45).await;
    let a = replica(&scenario, "kill-a", "a").spawn();
    let b = replica(&scenario, "kill-b", "b").spawn();
    let mut c = replica(&scenario, "kill-c", "c").spawn();
    converge(&[&a, &b, &c], &["a", "b", "c"]).await;
    let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let of_c: Vec<String> = games
        .into_iter()
        .filter(|id| owner(id, &members) == Some("c"))
        .collect();
    assert!(of_c.len() >= 5, "c owns {} games", of_c.len());
    c.kill().await;
    let killed = Instant::now();
    // A failure that begins in c's share, right after c died.
    let broken = &of_c[0];
    fleet.set(broken, Behavior::Status(503));
    let mut gaps = Vec::new();
    for id in &of_c {
        let gap = wait_for(
            &format!("{id} probed again after c died"),
            Duration::from_secs(20),
            || async {
                fleet
                    .served(id)
                    .iter()
                    .find(|(at, _)| *at > killed)
                    .map(|(at, _)| *at - killed)
            },
        )
        .await;
        gaps.push(gap);
    }
    let worst = *gaps.iter().max().unwrap();
    // A replica that stops heartbeating loses its games within the lease; the others see
    // that at their next heartbeat (a third of the lease) and probe at their next tick.
    let bound = LEASE + LEASE / 3 + INTERVAL + Duration::from_millis(500);
    assert!(
        worst <= bound,
        "c's games waited {worst:?} (bound {bound:?})"
    );
    let events = env.wait_stream_events(1).await;
    // Two more leases: nothing more for the broken game, nothing for the others.
    tokio::time::sleep(LEASE * 2).await;
    let events_after = env.stream_events().await;
    assert_eq!(events.len(), events_after.len(), "{events_after:?}");
    assert_eq!(events_after.len(), 1, "{events_after:?}");
    assert_eq!(events_after[0].game_id(), broken.as_str());
    assert_eq!(events_after[0].event_type(), "probe_failed");
    eprintln!(
        "FIGURE sigkill_replica: c (one of three, {} of 45 games) SIGKILLed: its games probed again after {:?} at worst (lease {LEASE:?}, interval {INTERVAL:?}); the failure that began in its share: 1 probe_failed",
        of_c.len(),
        worst
    );
}

#[tokio::test]
async fn a_sigkilled_relay_holders_pending_events_are_published_once_in_order() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let mut nats = NatsServer::start("relay-kill").await;
    let nats_url = nats.url();
    let games = healthy_fleet(&scenario, 12).await;
    let mut workers = [
        replica(&scenario, "relay-a", "a").nats(&nats_url).spawn(),
        replica(&scenario, "relay-b", "b").nats(&nats_url).spawn(),
    ];
    converge(&[&workers[0], &workers[1]], &["a", "b"]).await;
    let holder: String = wait_for(
        "a relay holder in the membership",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar(
                "SELECT replica_id FROM healthprobe_members WHERE relay_pid IS NOT NULL",
            )
            .fetch_optional(env.pool())
            .await
            .unwrap()
        },
    )
    .await;
    // NATS goes away; every game fails and recovers: events wait in the outbox.
    nats.crash();
    for id in &games {
        fleet.set(id, Behavior::Status(503));
    }
    wait_for(
        "12 probe_failed committed",
        Duration::from_secs(20),
        || async { (env.logged_events().await.len() >= 12).then_some(()) },
    )
    .await;
    for id in &games {
        fleet.set(id, Behavior::Healthy);
    }
    wait_for(
        "12 probe_recovered committed",
        Duration::from_secs(20),
        || async { (env.logged_events().await.len() >= 24).then_some(()) },
    )
    .await;
    let pending = env.logged_ids().await.iter().filter(|r| !r.3).count();
    assert_eq!(pending, 24, "every event waits while NATS is down");
    let index = usize::from(holder == "b");
    workers[index].kill().await;
    let survivor = &workers[1 - index];
    nats.resume().await;
    let back = Instant::now();
    let client = healthprobe::events::jetstream::connect(&nats_url, true)
        .await
        .unwrap();
    let js = healthprobe::events::jetstream::context(client);
    wait_for(
        "every event published by the survivor",
        Duration::from_secs(30),
        || async { env.logged_ids().await.iter().all(|r| r.3).then_some(()) },
    )
    .await;
    let published_after = back.elapsed();
    assert!(
        survivor.log_text().contains("holding the relay lock"),
        "{}",
        survivor.log_text()
    );
    let total = env.assert_log_and_stream_agree(&js).await;
    assert_eq!(total, 24);
    eprintln!(
        "FIGURE sigkill_relay_holder: holder {holder} SIGKILLed with 24 events pending and NATS down; after NATS returned the other replica published all 24 in {published_after:?}, each once, in per-game commit order"
    );
}

#[tokio::test]
async fn a_commit_of_unknown_outcome_is_not_emitted_twice() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("g", "g", Behavior::Status(503)).await;
    let pg_port = reqwest::Url::parse(&env.database_url)
        .unwrap()
        .port()
        .unwrap();
    let proxy = CommitCutter::start(pg_port).await;
    let mut via_proxy = reqwest::Url::parse(&env.database_url).unwrap();
    via_proxy.set_port(Some(proxy.port)).unwrap();
    let url = via_proxy.to_string();
    let mut worker = replica(&scenario, "ambiguous", "solo")
        .database(&url)
        .failures(3)
        // Time enough to arm the proxy between two ticks.
        .interval(Duration::from_secs(1))
        .spawn();
    // At threshold - 1, the next failure's COMMIT is cut after Postgres committed it.
    wait_for("two failures recorded", Duration::from_secs(20), || async {
        env.snapshot("g").await.filter(|s| s.1 == 2).map(drop)
    })
    .await;
    proxy.arm();
    wait_for("the COMMIT cut", Duration::from_secs(20), || async {
        (proxy.cuts() == 1).then_some(())
    })
    .await;
    wait_for(
        "the worker to report the commit as failed",
        Duration::from_secs(20),
        || async {
            worker
                .log_text()
                .contains("could not commit a health event")
                .then_some(())
        },
    )
    .await;
    // Several more failing ticks: the worker must find the episode already published.
    wait_for(
        "more failures recorded after the cut",
        Duration::from_secs(20),
        || async { env.snapshot("g").await.filter(|s| s.1 >= 7).map(drop) },
    )
    .await;
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    let logged = env.logged_events().await;
    let failed = logged.iter().filter(|e| e.0 == "probe_failed").count();
    assert_eq!(
        failed,
        1,
        "one episode, one probe_failed: {logged:?}\n{}",
        worker.log_text()
    );
    let (published, failures): (bool, i32) = sqlx::query_as(
        "SELECT failure_published, consecutive_failures FROM health_snapshots WHERE game_id = 'g'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert!(
        published,
        "the snapshot agrees with the log: the failure is published"
    );
    let total = env.assert_log_and_stream_agree(&env.js).await;
    eprintln!(
        "FIGURE ambiguous_commit: COMMIT of the probe_failed cut after Postgres committed it; the worker reported it failed, reloaded the game, and went on to {failures} failures with {failed} probe_failed ({total} event in all), duplicates 0"
    );
}
