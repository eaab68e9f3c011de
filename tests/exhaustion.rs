//! Descriptor exhaustion is the worker's fault, not the engines' (DESIGN §2). A test binary
//! of its own: it fills this process's descriptor table, which would disturb other tests.

mod helpers;

use std::time::Duration;

use helpers::engines::Behavior;
use helpers::metrics::TestMetrics;
use helpers::scenario::Scenario;
use tokio_util::sync::CancellationToken;

/// Opens `/dev/null` until the process is out of descriptors (at most `limit` times); the
/// files are closed when the returned vector is dropped.
fn exhaust_descriptors(limit: usize) -> Vec<std::fs::File> {
    let mut held = Vec::new();
    for _ in 0..limit {
        match std::fs::File::open("/dev/null") {
            Ok(file) => held.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return held,
            Err(e) => panic!("unexpected error while filling the descriptor table: {e}"),
        }
    }
    panic!("still not out of descriptors after {limit} files");
}

#[tokio::test]
async fn a_worker_out_of_descriptors_judges_no_engine_and_emits_nothing() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("sick", "sick", Behavior::Status(503)).await;
    scenario.game("fine", "fine", Behavior::Healthy).await;
    let metrics = TestMetrics::new();
    // Threshold 1: any probe counted as a failure would emit at once.
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(4)
        .probe_timeout(Duration::from_secs(2))
        .metrics(metrics.metrics())
        .build();
    let stop = CancellationToken::new();
    // Keep the soft limit small so filling the table is quick; the pool's connection to
    // Postgres is already open and is reused by the tick.
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE
        .set(512.min(soft), hard)
        .expect("lower this process's soft descriptor limit");
    // The tick lists through the pool's open connection; warm it so none is opened under
    // pressure. Should the pool want a new one anyway, the list fails (nothing is judged
    // then either) and the round is tried again.
    let mut starved = None;
    for _ in 0..5 {
        env.store.ping().await.unwrap();
        let held = exhaust_descriptors(100_000);
        let result = worker.tick(&stop).await;
        drop(held);
        match result {
            Ok(report) => {
                starved = Some(report);
                break;
            }
            Err(e) => eprintln!(
                "the list itself could not run out of descriptors ({}); again",
                healthprobe::ErrorChain(&e)
            ),
        }
        assert_eq!(env.logged_events().await, vec![]);
    }
    let starved = starved.expect("a tick listed through the open connection");
    assert_eq!(starved.records, 2);
    assert_eq!(starved.local_errors, 2, "{starved:?}");
    assert_eq!((starved.probes, starved.failed), (0, 0), "{starved:?}");
    assert!(starved.events.is_empty());
    assert_eq!(env.snapshot("sick").await, None, "no snapshot written");
    assert_eq!(env.logged_events().await, vec![]);
    let probes = metrics.counter("healthprobe.probes", "outcome");
    assert_eq!(probes.get("local_error"), Some(&2), "{probes:?}");

    // Descriptors back: the same engines are judged, and the sick one fails at once.
    let report = worker.tick(&stop).await.expect("tick");
    assert_eq!(report.local_errors, 0);
    assert_eq!((report.probes, report.failed), (2, 1));
    assert_eq!(report.events.len(), 1);
    assert_eq!(report.events[0].game_id, "sick");
}
