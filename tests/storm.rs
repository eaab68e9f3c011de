//! Storms (DESIGN §15) with real processes: the `healthprobe run` binary, real Postgres,
//! NATS and HTTP engines. Each test asserts what the runtime manager would see (events
//! emitted against events deserved), what an orchestrator would see (`/healthz`), and the
//! worst gap between two probes of a healthy game; each prints its figures (`FIGURE`).

mod helpers;
#[path = "storm_support/mod.rs"]
mod storm_support;

use std::time::{Duration, Instant};

use helpers::engines::{Behavior, Fleet};
use helpers::process::WorkerProcess;
use helpers::{TestEnv, wait_for};
use storm_support::{LivenessWatch, secs, worst_gap};

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);

fn probes_of(fleet: &Fleet, id: &str) -> Vec<Instant> {
    fleet.served(id).into_iter().map(|(at, _)| at).collect()
}

/// 24 engines that hang and 4 healthy ones, interval 1 s, timeout 0.5 s, two probes in
/// flight at most (the set-up; the defaults scaled down): the healthy games are
/// probed at least every 2 × interval + timeout, `/healthz` stays 200, and each hung
/// engine gets exactly one `probe_failed`.
#[tokio::test]
async fn hung_engines_hold_neither_the_schedule_nor_liveness() {
    const HUNG: usize = 24;
    const HEALTHY: usize = 4;
    let env = TestEnv::new().await;
    let fleet = Fleet::start().await;
    // Hung games first in the list, so the old order would probe them first.
    for i in 0..HUNG {
        let endpoint = fleet.set(
            &format!("hung-{i:02}"),
            Behavior::Delay(Duration::from_secs(600)),
        );
        env.add_running(&format!("a-hung-{i:02}"), &endpoint, None)
            .await;
    }
    for i in 0..HEALTHY {
        let endpoint = fleet.set(&format!("fine-{i}"), Behavior::Healthy);
        env.add_running(&format!("z-fine-{i}"), &endpoint, None)
            .await;
    }
    let worker = WorkerProcess::spawn(
        &env,
        "storm-hung",
        &[
            ("RTMANAGER_PROBE_INTERVAL", "1s"),
            ("RTMANAGER_PROBE_TIMEOUT", "500ms"),
            ("RTMANAGER_PROBE_MAX_CONCURRENCY", "2"),
        ],
    );
    let addr = worker.status_addr().await;
    let liveness = LivenessWatch::start(&addr);
    let started = Instant::now();
    wait_for(
        "a probe_failed for every hung engine",
        Duration::from_secs(90),
        || async {
            let events = env.logged_events().await;
            (events.len() >= HUNG).then_some(())
        },
    )
    .await;
    let all_failed = started.elapsed();
    // A few more intervals: nothing else may come.
    tokio::time::sleep(3 * INTERVAL).await;
    let (answers, not_ok) = liveness.finish().await;
    let events = env.logged_events().await;
    let worst = (0..HEALTHY)
        .map(|i| worst_gap(&probes_of(&fleet, &format!("fine-{i}"))))
        .max()
        .unwrap();
    let hung_probes: usize = (0..HUNG)
        .map(|i| fleet.requests(&format!("hung-{i:02}")))
        .sum();
    eprintln!(
        "FIGURE storm-hung: events {} emitted / {HUNG} deserved (all within {}); /healthz {} of {answers} not 200; worst gap between probes of a healthy game {} (bound {}); {hung_probes} probes of hung engines",
        events.len(),
        secs(all_failed),
        not_ok,
        secs(worst),
        secs(2 * INTERVAL + TIMEOUT),
    );
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
        HUNG,
        "one probe_failed per hung engine: {events:?}"
    );
    assert!(
        failed.iter().all(|g| g.starts_with("a-hung-")),
        "{events:?}"
    );
    assert_eq!(
        events.len(),
        HUNG,
        "nothing twice, nothing for a healthy game"
    );
    assert_eq!(
        not_ok, 0,
        "/healthz answered non-200 {not_ok} times of {answers}"
    );
    assert!(
        worst <= 2 * INTERVAL + TIMEOUT,
        "a healthy game waited {} between probes",
        secs(worst)
    );
}
