//! The simulated fleet (`healthprobe::sim`, `healthprobe fleet`) and `healthprobe status`,
//! against real Postgres and NATS.

mod helpers;

use std::process::Stdio;
use std::time::{Duration, Instant};

use healthprobe::sim::{Behavior, Fleet, FleetSpec};
use helpers::process::{binary, signal};
use helpers::scenario::Scenario;
use helpers::{WAIT_LIMIT, wait_for};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio_util::sync::CancellationToken;

async fn get(url: &str) -> (u16, Duration) {
    // reqwest is built without a default TLS provider; the service installs ring.
    healthprobe::install_crypto_provider();
    let started = Instant::now();
    let response = reqwest::get(url).await.expect("fleet answers");
    let code = response.status().as_u16();
    let _ = response.bytes().await;
    (code, started.elapsed())
}

fn spec(engines: usize, mix: &str) -> FleetSpec {
    FleetSpec {
        engines,
        mix: mix.parse().unwrap(),
        ..FleetSpec::default()
    }
}

#[tokio::test]
async fn each_engine_answers_by_its_behavior() {
    let fleet = Fleet::start(
        FleetSpec {
            slow_delay: Duration::from_millis(400),
            failing_status: 502,
            ..spec(6, "healthy=1,failing=1,slow=1")
        },
        "127.0.0.1:0".parse().unwrap(),
        None,
    )
    .await
    .unwrap();
    let engines = fleet.engines();
    assert_eq!(engines.len(), 6);
    assert_eq!(engines[0].name, "fleet-001");
    assert!(
        engines[0]
            .endpoint
            .starts_with(&format!("http://{}/e/", fleet.addr()))
    );
    for engine in engines {
        let (code, took) = get(&format!("{}/healthz", engine.endpoint)).await;
        match engine.behavior {
            Behavior::Healthy => assert_eq!(code, 200),
            Behavior::Failing => assert_eq!(code, 502),
            Behavior::Slow => {
                assert_eq!(code, 200);
                assert!(took >= Duration::from_millis(400), "{took:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(fleet.requests(&engine.name), 1);
    }
    let (missing, _) = get(&format!("http://{}/e/nobody/healthz", fleet.addr())).await;
    assert_eq!(missing, 404);
    fleet.shutdown().await;
}

#[tokio::test]
async fn flapping_and_scheduled_engines_change_phase_over_time() {
    let fleet = Fleet::start(
        FleetSpec {
            flap_period: Duration::from_millis(150),
            schedule: "failing:200ms,healthy:200ms".parse().unwrap(),
            ..spec(2, "flapping=1,scheduled=1")
        },
        "127.0.0.1:0".parse().unwrap(),
        Some("http://fleet.example:9000/"),
    )
    .await
    .unwrap();
    // The advertised base is used as given (trailing slash trimmed).
    assert!(
        fleet.engines()[0]
            .endpoint
            .starts_with("http://fleet.example:9000/e/fleet-")
    );
    for engine in fleet.engines() {
        let url = format!("http://{}/e/{}/healthz", fleet.addr(), engine.name);
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + WAIT_LIMIT;
        while seen.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "{} answered only {seen:?}",
                engine.name
            );
            seen.insert(get(&url).await.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [200, 503]);
    }
}

#[tokio::test]
async fn the_worker_sees_engines_fail_and_recover_in_a_simulated_fleet() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let fleet = Fleet::start(
        FleetSpec {
            flap_period: Duration::from_millis(300),
            ..spec(4, "healthy=1,failing=1,flapping=2")
        },
        "127.0.0.1:0".parse().unwrap(),
        None,
    )
    .await
    .unwrap();
    let games: Vec<(String, String)> = fleet
        .engines()
        .iter()
        .map(|e| (e.name.clone(), e.endpoint.clone()))
        .collect();
    env.store.register_running(&games).await.unwrap();
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(1, 1)
        .concurrency(4)
        .probe_timeout(Duration::from_secs(1))
        .build();
    let stop = CancellationToken::new();
    let flapping: Vec<&str> = fleet
        .engines()
        .iter()
        .filter(|e| e.behavior == Behavior::Flapping)
        .map(|e| e.name.as_str())
        .collect();
    let failing = fleet
        .engines()
        .iter()
        .find(|e| e.behavior == Behavior::Failing)
        .unwrap()
        .name
        .clone();
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut events = Vec::new();
    loop {
        let report = worker.tick(&stop).await.expect("tick");
        assert_eq!(report.records, 4);
        events.extend(
            report
                .events
                .iter()
                .map(|e| (e.game_id.clone(), e.event_type().as_str())),
        );
        let recovered = |g: &str| events.contains(&(g.to_owned(), "probe_recovered"));
        if flapping.iter().all(|g| recovered(g)) {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery seen: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(events.contains(&(failing.clone(), "probe_failed")));
    assert!(!events.contains(&(failing, "probe_recovered")));
    let healthy = fleet
        .engines()
        .iter()
        .find(|e| e.behavior == Behavior::Healthy)
        .unwrap();
    assert!(!events.iter().any(|(g, _)| *g == healthy.name));
}

/// `healthprobe fleet --register` in a process: prints its engines, registers them, and on
/// SIGTERM marks them stopped and exits 0. `healthprobe status` shows them meanwhile.
#[tokio::test]
async fn the_fleet_command_registers_engines_and_status_prints_them() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let mut fleet = tokio::process::Command::new(binary())
        .args([
            "fleet",
            "--engines",
            "5",
            "--mix",
            "healthy=3,failing=2",
            "--prefix",
            "demo-",
            "--register",
        ])
        .env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn healthprobe fleet");
    let mut lines = BufReader::new(fleet.stdout.take().unwrap()).lines();
    let mut engines = Vec::new();
    while engines.len() < 5 {
        let line = tokio::time::timeout(WAIT_LIMIT, lines.next_line())
            .await
            .expect("the fleet prints its engines")
            .unwrap()
            .expect("a line per engine");
        let parts: Vec<String> = line.split(' ').map(str::to_owned).collect();
        assert_eq!(parts.len(), 3, "{line}");
        engines.push(parts);
    }
    assert_eq!(engines[0][0], "demo-001");
    assert_eq!(engines.iter().filter(|e| e[1] == "failing").count(), 2);
    let failing_endpoint = &engines.iter().find(|e| e[1] == "failing").unwrap()[2];
    assert_eq!(
        reqwest::get(format!("{failing_endpoint}/healthz"))
            .await
            .unwrap()
            .status(),
        503
    );

    // Registered as running (unknown: never probed).
    wait_for("the fleet to register", WAIT_LIMIT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runtime_records WHERE status = 'running' AND game_id LIKE 'demo-%'",
        )
        .fetch_one(env.pool())
        .await
        .unwrap();
        (n == 5).then_some(())
    })
    .await;
    let mut worker = scenario
        .tick_by_hand()
        .concurrency(4)
        .probe_timeout(Duration::from_secs(1))
        .build();
    worker.tick(&CancellationToken::new()).await.unwrap();

    let table = tokio::process::Command::new(binary())
        .arg("status")
        .env("DATABASE_URL", &env.database_url)
        .output()
        .await
        .unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 6, "{table}");
    assert!(rows[0].starts_with("GAME"), "{table}");
    assert_eq!(
        rows.iter().filter(|r| r.contains(" suspect ")).count(),
        2,
        "{table}"
    );
    assert!(table.contains("unexpected status 503"), "{table}");

    let json = tokio::process::Command::new(binary())
        .args([
            "status",
            "--json",
            "--status",
            "healthy",
            "--game-id",
            "demo-*",
        ])
        .env("DATABASE_URL", &env.database_url)
        .output()
        .await
        .unwrap();
    assert!(json.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let healthy = json.as_array().unwrap();
    assert_eq!(healthy.len(), 3);
    assert!(
        healthy
            .iter()
            .all(|g| g["status"] == "healthy" && g["last_status"] == 200)
    );

    let bad = tokio::process::Command::new(binary())
        .args(["status", "--status", "sick"])
        .env("DATABASE_URL", &env.database_url)
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap refuses a bad status");

    signal(fleet.id().unwrap(), "TERM");
    let status = tokio::time::timeout(WAIT_LIMIT, fleet.wait())
        .await
        .expect("the fleet exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runtime_records WHERE status = 'running' AND game_id LIKE 'demo-%'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(running, 0, "the fleet's records are marked stopped on exit");
}

#[tokio::test]
async fn the_fleet_command_refuses_register_without_a_database() {
    let output = tokio::process::Command::new(binary())
        .args(["fleet", "--register"])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--register needs DATABASE_URL"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
