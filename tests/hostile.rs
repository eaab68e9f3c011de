//! Hostile engines and bad records: each is classified, none slows the others beyond the
//! probe timeout or grows memory.

mod helpers;

use std::time::{Duration, Instant};

use helpers::engines::Behavior;
use helpers::hostile::{HostileEngine, Hostility};
use helpers::scenario::Scenario;
use tokio_util::sync::CancellationToken;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn each_hostile_engine_and_bad_record_is_classified() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let mut engines = Vec::new();
    for hostility in Hostility::ALL {
        engines.push(HostileEngine::start(hostility).await);
    }
    // (game id, endpoint, expected outcome kind, expected last_status)
    let mut cases: Vec<(String, String, &str, i32)> = Vec::new();
    for engine in &engines {
        let (kind, status) = match engine.hostility {
            Hostility::Slowloris => ("timeout", 0),
            Hostility::EndlessHeaders => ("protocol", 0),
            // Status 200 and only 4 KiB read: the rules call this healthy.
            Hostility::EndlessBody => ("ok", 200),
            Hostility::Reset => ("connect", 0),
            Hostility::Http09 => ("protocol", 0),
            Hostility::SpeaksTls => ("protocol", 0),
            Hostility::Garbage => ("tls", 0),
        };
        let id = format!("{:?}", engine.hostility);
        cases.push((id.clone(), engine.endpoint(&id), kind, status));
    }
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], helpers::free_port()));
    cases.push((
        "closed-port".into(),
        format!("http://{closed}"),
        "connect",
        0,
    ));
    // A 64-character label is refused by the local resolver without a DNS query.
    cases.push((
        "unresolvable".into(),
        format!("http://{}.invalid", "x".repeat(64)),
        "connect",
        0,
    ));
    cases.push((
        "huge-endpoint".into(),
        format!("gopher://{}", "e".repeat(10 * 1024)),
        "invalid_endpoint",
        0,
    ));
    cases.push((
        "huge-path".into(),
        format!(
            "{}/{}",
            fleet.set("huge-path", Behavior::Healthy),
            "p".repeat(10 * 1024)
        ),
        "status",
        404,
    ));
    for id in [
        "game-ü-🎮",
        "it's \"quoted\"",
        "'; DROP TABLE health_events; --",
        "a\\b%_*?",
    ] {
        cases.push((
            id.into(),
            fleet.set(&format!("weird{}", id.len()), Behavior::Healthy),
            "ok",
            200,
        ));
    }
    for (id, endpoint, _, _) in &cases {
        env.add_running(id, endpoint, None).await;
    }

    let timeout = Duration::from_millis(500);
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(4)
        .probe_timeout(timeout)
        .build();
    let started = Instant::now();
    let report = worker.tick(&CancellationToken::new()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.probes, cases.len());
    let bound = timeout * (cases.len().div_ceil(4) as u32) + Duration::from_secs(2);
    assert!(elapsed <= bound, "tick took {elapsed:?}, bound {bound:?}");

    for (id, _, kind, status) in &cases {
        let row: (Option<String>, i32, Option<String>) =
            sqlx::query_as("SELECT last_failure_kind, last_status, last_error FROM health_snapshots WHERE game_id = $1")
                .bind(id)
                .fetch_one(env.pool())
                .await
                .unwrap_or_else(|e| panic!("{id}: no snapshot: {e}"));
        let got = row.0.as_deref().unwrap_or("ok");
        assert_eq!((got, row.1), (*kind, *status), "{id}: error {:?}", row.2);
        if let Some(error) = row.2 {
            assert!(
                error.len() < 1024,
                "{id}: last_error is {} bytes",
                error.len()
            );
        }
    }
    // The failures became events that the relay publishes with the odd ids intact.
    env.relay().drain_once().await.unwrap();
    let failing = cases.iter().filter(|c| c.2 != "ok").count();
    let events = env.wait_stream_events(failing).await;
    assert_eq!(events.len(), failing);
    let weird_healthy: Vec<&str> = cases
        .iter()
        .filter(|c| c.2 == "ok")
        .map(|c| c.0.as_str())
        .collect();
    assert!(events.iter().all(|e| !weird_healthy.contains(&e.game_id())));
    let api = helpers::AsyncApi::load();
    for event in &events {
        api.check(event).unwrap();
    }
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM health_events")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(
        tables as usize, failing,
        "the table survived a game id made of SQL"
    );
}

#[tokio::test]
async fn a_thousand_hostile_engines_do_not_stall_the_healthy_ones() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    let mut engines = Vec::new();
    for hostility in Hostility::ALL {
        engines.push(HostileEngine::start(hostility).await);
    }
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], helpers::free_port()));
    let mut rows: Vec<(String, String)> = Vec::new();
    for i in 0..1000 {
        let id = format!("hostile-{i:04}");
        let endpoint = match i % 9 {
            7 => format!("http://{closed}/g/{i}"),
            8 => format!("http://{}", "x".repeat(10 * 1024)),
            k => engines[k].endpoint(&id),
        };
        rows.push((id, endpoint));
    }
    let healthy = 200;
    for i in 0..healthy {
        let id = format!("healthy-{i:03}");
        let endpoint = fleet.set(&id, Behavior::Healthy);
        rows.push((id, endpoint));
    }
    env.store.register_running(&rows).await.unwrap();

    let timeout = Duration::from_millis(500);
    let concurrency = 64;
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 1)
        .concurrency(concurrency)
        .probe_timeout(timeout)
        .build();
    let mut rss_after_first = 0;
    let bound = timeout * (rows.len().div_ceil(concurrency) as u32) + Duration::from_secs(3);
    for tick in 1..=3 {
        let started = Instant::now();
        let report = worker.tick(&CancellationToken::new()).await.unwrap();
        let elapsed = started.elapsed();
        eprintln!(
            "tick {tick}: {} probes, {} healthy, {} failed in {elapsed:?} (bound {bound:?})",
            report.probes, report.healthy, report.failed
        );
        assert_eq!(report.probes, rows.len());
        assert!(
            elapsed <= bound,
            "tick {tick} took {elapsed:?}, bound {bound:?}"
        );
        let fine: i64 = sqlx::query_scalar("SELECT count(*) FROM health_snapshots WHERE game_id LIKE 'healthy-%' AND status = 'healthy'")
            .fetch_one(env.pool())
            .await
            .unwrap();
        assert_eq!(
            fine, healthy as i64,
            "tick {tick}: every healthy engine judged healthy"
        );
        if tick == 1 {
            rss_after_first = rss_bytes();
        }
    }
    // The first tick sizes the allocator's arenas and the connection pool; after it, hostile
    // engines must not make memory grow tick over tick.
    let growth = rss_bytes().saturating_sub(rss_after_first);
    eprintln!(
        "RSS after tick 1: {} MiB; growth over ticks 2-3: {} KiB",
        rss_after_first / (1024 * 1024),
        growth / 1024
    );
    assert!(
        growth < 64 * 1024 * 1024,
        "memory grew by {} MiB",
        growth / (1024 * 1024)
    );
}
