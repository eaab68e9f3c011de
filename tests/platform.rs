//! The platform's rules (DESIGN §16): healthprobe's migrations create only its own tables,
//! a database migrated by 0.5 is upgraded in place, `run --no-migrate` refuses a schema it
//! cannot run on, the worker runs under a role with exactly the documented grants, and
//! published events past their retention are deleted, never the others.

mod helpers;

use std::path::PathBuf;
use std::time::Duration;

use healthprobe::events::retention::{RETENTION_BATCH, Retention};
use healthprobe::store::{EDITED_MIGRATIONS, MIGRATOR, SchemaError, Store};
use helpers::engines::Behavior;
use helpers::process::binary;
use helpers::scenario::Scenario;
use helpers::{TestEnv, WAIT_LIMIT, create_database, services, wait_for};
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrations-0.5.0")
}

async fn fresh_database(prefix: &str) -> String {
    create_database(&format!("{prefix}_{}", Uuid::now_v7().simple())).await
}

async fn tables(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Applies the migrations exactly as 0.5.0 shipped them (its files, its checksums).
async fn migrate_as_0_5(pool: &sqlx::PgPool) {
    sqlx::migrate::Migrator::new(fixtures())
        .await
        .expect("read the 0.5.0 migrations")
        .run(pool)
        .await
        .expect("apply the 0.5.0 migrations");
}

#[tokio::test]
async fn migrations_create_only_healthprobes_own_tables() {
    let url = fresh_database("hp_own").await;
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        tables(store.pool()).await,
        [
            "_sqlx_migrations",
            "health_events",
            "health_events_set_aside",
            "health_probe_marks",
            "health_probe_overrides",
            "health_snapshots",
            "healthprobe_members",
        ],
        "no runtime_records: it is the runtime manager's"
    );
    assert!(store.check_schema().await.unwrap().newer.is_empty());
}

#[tokio::test]
async fn the_recorded_0_5_checksums_are_those_of_the_shipped_files() {
    let old = sqlx::migrate::Migrator::new(fixtures()).await.unwrap();
    for (version, checksum) in EDITED_MIGRATIONS {
        let shipped = old.iter().find(|m| m.version == version).unwrap();
        let hex: String = shipped
            .checksum
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, checksum, "migration {version}");
        let now = MIGRATOR.iter().find(|m| m.version == version).unwrap();
        assert_ne!(now.checksum, shipped.checksum, "{version} was edited");
    }
    // The others are unchanged: their checksums need no help.
    for shipped in old.iter() {
        if EDITED_MIGRATIONS.iter().all(|(v, _)| *v != shipped.version) {
            let now = MIGRATOR
                .iter()
                .find(|m| m.version == shipped.version)
                .unwrap();
            assert_eq!(now.checksum, shipped.checksum, "{}", shipped.version);
        }
    }
}

#[tokio::test]
async fn a_database_migrated_by_0_5_is_upgraded_in_place() {
    let url = fresh_database("hp_up").await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    migrate_as_0_5(&pool).await;
    // 0.5 created runtime_records itself; the runtime manager wrote to it since.
    sqlx::query(
        "INSERT INTO runtime_records (game_id, status, engine_endpoint, current_container_id) \
         VALUES ('g1', 'running', 'http://127.0.0.1:9/', 'c1')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = Store::connect(&url).await.unwrap();
    // Before the upgrade, --no-migrate refuses, naming what is missing.
    match store.check_schema().await {
        Err(SchemaError::Older { missing }) => {
            // Every migration newer than 0.5.0's, this issue's among them.
            assert!(
                missing.iter().any(|(v, _)| *v == 20261206000050),
                "{missing:?}"
            );
            assert!(
                missing.iter().all(|(v, _)| *v > 20261121000003),
                "{missing:?}"
            );
        }
        other => panic!("expected an older schema, got {other:?}"),
    }
    store.migrate().await.expect("0.6 migrates a 0.5 database");
    store.migrate().await.expect("and again: a no-op");
    store.check_schema().await.expect("the schema is current");
    let kept: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT game_id, current_container_id FROM runtime_records")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(kept, [("g1".to_owned(), Some("c1".to_owned()))]);
    // The running list reads it, overrides included.
    use futures::StreamExt as _;
    let listed: Vec<_> = store.running_games().collect().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].as_ref().unwrap().record.game_id, "g1");
}

#[tokio::test]
async fn a_checksum_that_is_neither_old_nor_new_is_refused() {
    let url = fresh_database("hp_mod").await;
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 20261121000003")
        .execute(store.pool())
        .await
        .unwrap();
    let error = store.check_schema().await.unwrap_err();
    assert!(
        matches!(
            error,
            SchemaError::Modified {
                version: 20261121000003
            }
        ),
        "{error:?}"
    );
    assert!(store.migrate().await.is_err(), "sqlx refuses it too");
}

/// `healthprobe run --no-migrate` against `database_url`; returns (success, stderr).
async fn run_no_migrate(database_url: &str) -> (bool, String) {
    let output = tokio::time::timeout(
        WAIT_LIMIT,
        tokio::process::Command::new(binary())
            .args(["run", "--no-migrate"])
            .env("DATABASE_URL", database_url)
            .env("NATS_URL", &services().nats_url)
            .env("HEALTHPROBE_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("run --no-migrate stops at once on a schema it cannot use")
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn run_no_migrate_refuses_a_missing_or_older_schema_and_changes_nothing() {
    let empty = fresh_database("hp_nm0").await;
    let (ok, stderr) = run_no_migrate(&empty).await;
    assert!(!ok);
    assert!(
        stderr.contains("no healthprobe schema") && stderr.contains("healthprobe migrate"),
        "{stderr}"
    );
    let pool = sqlx::PgPool::connect(&empty).await.unwrap();
    assert!(tables(&pool).await.is_empty(), "nothing was created");

    let old = fresh_database("hp_nm5").await;
    let pool = sqlx::PgPool::connect(&old).await.unwrap();
    migrate_as_0_5(&pool).await;
    let (ok, stderr) = run_no_migrate(&old).await;
    assert!(!ok);
    assert!(
        stderr.contains("older than this binary")
            && stderr.contains("20261206000050")
            && stderr.contains("HEALTHPROBE_NO_MIGRATE"),
        "{stderr}"
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 3, "nothing was migrated");

    // The variable works as the flag does.
    let output = tokio::process::Command::new(binary())
        .arg("run")
        .env("DATABASE_URL", &empty)
        .env("NATS_URL", &services().nats_url)
        .env("HEALTHPROBE_HTTP_ADDR", "127.0.0.1:0")
        .env("HEALTHPROBE_NO_MIGRATE", "true")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no healthprobe schema"));
    let output = tokio::process::Command::new(binary())
        .arg("run")
        .env("DATABASE_URL", &empty)
        .env("HEALTHPROBE_NO_MIGRATE", "perhaps")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("HEALTHPROBE_NO_MIGRATE"));
}

/// The grants of docs/deploying.md, for `role`.
fn documented_grants(role: &str) -> String {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/deploying.md"),
    )
    .expect("read docs/deploying.md");
    let block = doc
        .split("<!-- grants:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- grants:end -->").next())
        .expect("the grants block");
    let sql = block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(sql.contains("GRANT"), "{sql}");
    sql.replace("healthprobe_worker", role)
}

/// A login role with the documented grants on the database at `url`; dropped by
/// [`drop_role`].
async fn restricted_role(url: &str) -> (String, String) {
    let role = format!("hp_worker_{}", &Uuid::now_v7().simple().to_string()[20..]);
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'worker-secret'; {}",
        documented_grants(&role)
    )))
    .execute(&mut admin)
    .await
    .expect("the documented grants apply");
    let mut as_role = reqwest::Url::parse(url).unwrap();
    as_role.set_username(&role).unwrap();
    as_role.set_password(Some("worker-secret")).unwrap();
    (role, as_role.to_string())
}

async fn drop_role(url: &str, role: &str) {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY {role}; DROP ROLE {role}"
    )))
    .execute(&mut admin)
    .await
    .ok();
    // Other databases of the server hold nothing of the role.
}

#[tokio::test]
async fn the_worker_runs_under_a_role_with_exactly_the_documented_grants() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let (role, worker_url) = restricted_role(&env.database_url).await;
    // The role really is restricted: it can neither create a table nor write the runtime
    // manager's.
    let mut as_role = sqlx::PgConnection::connect(&worker_url).await.unwrap();
    for statement in [
        "CREATE TABLE intruder (x int)",
        "UPDATE runtime_records SET status = 'stopped'",
        "INSERT INTO health_probe_overrides (game_id) VALUES ('x')",
    ] {
        let refused = sqlx::raw_sql(statement).execute(&mut as_role).await;
        assert!(refused.is_err(), "{statement} was allowed");
    }
    as_role.close().await.ok();

    scenario
        .game_in("sick", "sick", Some("c1"), Behavior::Status(503))
        .await;
    scenario.game("fine", "fine", Behavior::Healthy).await;
    scenario.game("off", "off", Behavior::Status(503)).await;
    sqlx::query("INSERT INTO health_probe_overrides (game_id, disabled) VALUES ('off', true)")
        .execute(env.pool())
        .await
        .unwrap();
    // Two year-old episodes of a game that is gone: the first is past any retention, the
    // second is its latest and stays.
    for (episode, event_type, details) in [
        (
            1,
            "probe_failed",
            r#"{"consecutive_failures": 2, "last_status": 503, "last_error": "old"}"#,
        ),
        (1, "probe_recovered", r#"{"prior_failure_count": 2}"#),
        (
            2,
            "probe_failed",
            r#"{"consecutive_failures": 2, "last_status": 503, "last_error": "old"}"#,
        ),
        (2, "probe_recovered", r#"{"prior_failure_count": 2}"#),
    ] {
        sqlx::query(
            "INSERT INTO health_events (event_id, game_id, container_id, event_type, occurred_at, \
               details, published_at, episode) \
             VALUES ($1, 'gone', 'c0', $2, now() - interval '1 year', $3::jsonb, \
               now() - interval '1 year', $4)",
        )
        .bind(Uuid::now_v7())
        .bind(event_type)
        .bind(details)
        .bind(episode as i64)
        .execute(env.pool())
        .await
        .unwrap();
    }

    let mut worker = scenario
        .worker("restricted")
        .database(&worker_url)
        .setting("HEALTHPROBE_NO_MIGRATE", "true")
        .interval(Duration::from_millis(100))
        .failures(2)
        .setting("HEALTHPROBE_EVENT_RETENTION", "30days")
        .spawn();
    let events = env.wait_stream_events(1).await;
    assert_eq!(events[0].event_type(), "probe_failed");
    assert_eq!(events[0].game_id(), "sick");
    let api = helpers::AsyncApi::load();
    api.check(&events[0])
        .expect("a valid message, CloudEvents headers included");
    // The relay holder deletes the old episode, under the worker's role; the game's latest
    // episode stays.
    wait_for("the year-old episode deleted", WAIT_LIMIT, || async {
        let old: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM health_events WHERE game_id = 'gone' AND episode = 1",
        )
        .fetch_one(env.pool())
        .await
        .unwrap();
        (old == 0).then_some(())
    })
    .await;
    let logged = env.logged_events().await;
    assert_eq!(
        logged,
        [
            ("probe_failed".to_owned(), "gone".to_owned(), true),
            ("probe_recovered".to_owned(), "gone".to_owned(), true),
            ("probe_failed".to_owned(), "sick".to_owned(), true),
        ]
    );
    // The disabled game is never probed, and listed as disabled.
    let addr = worker.status_addr().await;
    let body = reqwest::get(format!("http://{addr}/games"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let games: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let status_of = |id: &str| {
        games["games"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["game_id"] == id)
            .map(|g| g["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status_of("off").as_deref(), Some("disabled"), "{games}");
    assert_eq!(status_of("sick").as_deref(), Some("failing"), "{games}");
    assert_eq!(
        scenario.fleet.requests("off"),
        0,
        "a disabled game is never probed"
    );
    assert!(scenario.fleet.requests("fine") > 0);
    // Steady ticks record the healthy game's probe times in the replica's mark row.
    wait_for(
        "the probe marks written under the role",
        WAIT_LIMIT,
        || async {
            let marked: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM health_probe_marks WHERE 'fine' = ANY(game_ids))",
            )
            .fetch_one(env.pool())
            .await
            .unwrap();
            marked.then_some(())
        },
    )
    .await;
    // An on-demand probe commits through the same grants; the history reads the log.
    let client = reqwest::Client::new();
    let probed = client
        .post(format!("http://{addr}/games/fine/probe"))
        .send()
        .await
        .unwrap();
    assert_eq!(probed.status(), reqwest::StatusCode::OK);
    let history = client
        .get(format!("http://{addr}/games/history?game_id=sick"))
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), reqwest::StatusCode::OK);
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    assert!(
        !worker.log_text().contains("permission denied"),
        "{}",
        worker.log_text()
    );
    drop_role(&env.database_url, &role).await;
}

/// Inserts a published (or not) event `age` old; returns its id.
async fn old_event(
    env: &TestEnv,
    game_id: &str,
    episode: i64,
    event_type: &str,
    age_days: i32,
    published: bool,
) -> Uuid {
    let event_id = Uuid::now_v7();
    let details = if event_type == "probe_failed" {
        r#"{"consecutive_failures": 3, "last_status": 503, "last_error": "e"}"#
    } else {
        r#"{"prior_failure_count": 3}"#
    };
    sqlx::query(
        "INSERT INTO health_events (event_id, game_id, container_id, event_type, occurred_at, \
           details, published_at, episode) \
         VALUES ($1, $2, '', $3, now() - make_interval(days => $4), $5::jsonb, \
           CASE WHEN $6 THEN now() - make_interval(days => $4) END, $7)",
    )
    .bind(event_id)
    .bind(game_id)
    .bind(event_type)
    .bind(age_days)
    .bind(details)
    .bind(published)
    .bind(episode)
    .execute(env.pool())
    .await
    .unwrap();
    event_id
}

#[tokio::test]
async fn retention_deletes_old_published_events_only_in_batches() {
    let env = TestEnv::new().await;
    // `a`: three old episodes; the latest one stays (episode numbering continues from it).
    let mut doomed = Vec::new();
    for episode in 1..=3 {
        let failed = old_event(&env, "a", episode, "probe_failed", 60, true).await;
        let recovered = old_event(&env, "a", episode, "probe_recovered", 60, true).await;
        if episode < 3 {
            doomed.extend([failed, recovered]);
        }
    }
    // `b`: an old episode never published, one set aside, and a recent one.
    let unpublished = old_event(&env, "b", 1, "probe_failed", 90, false).await;
    let set_aside = old_event(&env, "b", 1, "probe_recovered", 90, true).await;
    sqlx::query(
        "INSERT INTO health_events_set_aside (event_id, state, error) VALUES ($1, 'retry', 'x')",
    )
    .bind(set_aside)
    .execute(env.pool())
    .await
    .unwrap();
    let recent = old_event(&env, "b", 2, "probe_failed", 5, true).await;
    // Many old episodes of other games, to take several batches.
    let many = RETENTION_BATCH as usize * 2 + 17;
    sqlx::query(
        "INSERT INTO health_events (event_id, game_id, container_id, event_type, occurred_at, \
           details, published_at, episode) \
         SELECT gen_random_uuid(), 'bulk', '', 'probe_failed', now() - interval '40 days', \
           '{}'::jsonb, now() - interval '40 days', n FROM generate_series(1, $1) n",
    )
    .bind(many as i64)
    .execute(env.pool())
    .await
    .unwrap();

    let retention = Retention::new(env.store.clone(), Duration::from_secs(30 * 24 * 3600));
    let report = retention.pass(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        report.deleted as usize,
        doomed.len() + many - 1,
        "{report:?}"
    );
    assert!(report.batches >= 3, "small batches: {report:?}");
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM health_events")
        .fetch_all(env.pool())
        .await
        .unwrap();
    for id in &doomed {
        assert!(!left.contains(id), "old published event {id} deleted");
    }
    for id in [unpublished, set_aside, recent] {
        assert!(left.contains(&id), "{id} kept");
    }
    assert_eq!(
        left.len(),
        2 + 3 + 1,
        "a's latest episode, b's three, bulk's latest"
    );
    // A second pass finds nothing more to delete.
    let again = retention.pass(&CancellationToken::new()).await.unwrap();
    assert_eq!(again.deleted, 0);
}
