//! SQL statements per steady tick, counted by Postgres itself (`pg_stat_statements`): a
//! tick over a healthy fleet whose games did not change lists the fleet and records the
//! probe times, two statements whatever the fleet size, and `/games` still shows each
//! game's probe of that tick.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use healthprobe::store::GamesQuery;
use helpers::engines::Behavior;
use helpers::scenario::Scenario;
use tokio_util::sync::CancellationToken;

/// More games than the probe concurrency, so the tick runs many rounds of probes.
const GAMES: usize = 300;
const CONCURRENCY: usize = 16;
/// What issue 19 allows a steady tick: the listing and the probe marks.
const STEADY_STATEMENTS: i64 = 2;
/// Measured ticks tried before giving up on one that `pg_stat_statements` counted whole:
/// when its table is full (many test databases on one server) it evicts entries, and a
/// tick during which that happened cannot be counted exactly.
const ATTEMPTS: usize = 20;

/// Calls per statement text in this test's database, and how many times the extension has
/// evicted entries so far (server-wide). The reading itself is left out: its text names
/// `pg_stat_statements`.
async fn statement_calls(pool: &sqlx::PgPool) -> (HashMap<String, i64>, i64) {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT query, calls FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query NOT LIKE '%pg_stat_statements%'",
    )
    .fetch_all(pool)
    .await
    .expect("read pg_stat_statements");
    let mut calls = HashMap::new();
    for (query, n) in rows {
        *calls.entry(query).or_insert(0) += n;
    }
    let evictions: i64 = sqlx::query_scalar("SELECT dealloc FROM pg_stat_statements_info")
        .fetch_one(pool)
        .await
        .expect("read pg_stat_statements_info");
    (calls, evictions)
}

#[tokio::test]
async fn a_steady_tick_runs_two_statements() {
    let scenario = Scenario::new().await;
    let (env, fleet) = (&scenario.env, &scenario.fleet);
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(env.pool())
        .await
        .expect("pg_stat_statements: the test Postgres must load it (shared_preload_libraries=pg_stat_statements, as scripts/services.sh starts it)");
    let games: Vec<(String, String)> = (0..GAMES)
        .map(|i| {
            let id = format!("game-{i:04}");
            let endpoint = fleet.set(&id, Behavior::Healthy);
            (id, endpoint)
        })
        .collect();
    env.store
        .register_running(&games)
        .await
        .expect("register the fleet");
    let mut worker = scenario
        .tick_by_hand()
        .thresholds(3, 2)
        .concurrency(CONCURRENCY)
        .probe_timeout(Duration::from_secs(2))
        .build();
    let stop = CancellationToken::new();

    // The first tick writes every game's row; the second finds them as it left them.
    for tick in 1..=2 {
        let report = worker.tick(&stop).await.expect("tick");
        assert_eq!(report.healthy, GAMES, "tick {tick}: {report:?}");
    }

    let mut counted = None;
    for _ in 0..ATTEMPTS {
        let (before, evictions_before) = statement_calls(env.pool()).await;
        let started = chrono::Utc::now();
        let report = worker.tick(&stop).await.expect("steady tick");
        let (after, evictions_after) = statement_calls(env.pool()).await;
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            (report.probes, report.healthy, report.events.len()),
            (GAMES, GAMES, 0),
            "a steady tick over a healthy fleet"
        );
        if evictions_after != evictions_before {
            continue;
        }
        let ran: Vec<(String, i64)> = after
            .into_iter()
            .map(|(query, n)| {
                let earlier = before.get(&query).copied().unwrap_or(0);
                (query, n - earlier)
            })
            .filter(|(_, n)| *n != 0)
            .collect();
        counted = Some((ran, started));
        break;
    }
    let Some((ran, started)) = counted else {
        panic!(
            "pg_stat_statements evicted entries during each of {ATTEMPTS} ticks: its table is too small for this server's databases"
        );
    };
    let total: i64 = ran.iter().map(|(_, n)| n).sum();
    assert!(
        (1..=STEADY_STATEMENTS).contains(&total),
        "a steady tick ran {total} statements (at most {STEADY_STATEMENTS}): {ran:#?}"
    );
    assert!(
        ran.iter()
            .any(|(query, _)| query.contains("health_probe_marks")),
        "the tick recorded its probe times: {ran:#?}"
    );
    assert!(
        !ran.iter()
            .any(|(query, _)| query.contains("UPDATE health_snapshots")),
        "no snapshot row rewritten: {ran:#?}"
    );

    // What a reader of /games sees: every game probed by that tick.
    let page = env
        .store
        .games_page(&GamesQuery {
            limit: GAMES as i64 + 1,
            ..GamesQuery::default()
        })
        .await
        .expect("games page");
    assert_eq!(page.len(), GAMES);
    for game in &page {
        assert_eq!(game.status, "healthy", "{game:?}");
        assert!(
            game.last_probe_at.is_some_and(|at| at >= started),
            "{} shows a probe of the measured tick (from {started}): {game:?}",
            game.game_id
        );
    }
}
