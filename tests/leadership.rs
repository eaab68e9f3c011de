//! The relay's leadership in process (DESIGN §12): it takes the relay lock and says so on
//! its role watch, the relay publishes while it holds the lock, a lost session is seen and
//! the lock taken again, and at stop the lock is released.

mod helpers;

use std::time::Duration;

use healthprobe::events::leader::RelayLeadership;
use healthprobe::events::relay::RelayMonitor;
use healthprobe::status::RelayRole;
use healthprobe::telemetry::Metrics;
use helpers::{TestEnv, WAIT_LIMIT, wait_for};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn commit_event(env: &TestEnv, game_id: &str) {
    sqlx::query(
        "INSERT INTO health_events (event_id, game_id, container_id, event_type, occurred_at, details) \
         VALUES ($1, $2, '', 'probe_failed', now(), \
           '{\"consecutive_failures\":3,\"last_status\":503,\"last_error\":\"unexpected status 503\"}'::jsonb)",
    )
    .bind(Uuid::now_v7())
    .bind(game_id)
    .execute(env.pool())
    .await
    .expect("insert an outbox row");
    env.outbox_wake.notify_one();
}

/// Advisory locks granted in this test's database (the relay lock is the only one).
async fn locks_held(env: &TestEnv) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(env.pool())
    .await
    .expect("read pg_locks")
}

/// Waits until the role watch shows `want`, returning it.
async fn role_becomes(
    seen: &mut watch::Receiver<Option<RelayRole>>,
    what: &str,
    want: impl Fn(RelayRole) -> bool,
) -> RelayRole {
    tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            if let Some(role) = *seen.borrow_and_update()
                && want(role)
            {
                return role;
            }
            seen.changed()
                .await
                .expect("the leadership publishes its role");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {WAIT_LIMIT:?}; role {:?}", *seen.borrow()))
}

fn holding(role: RelayRole) -> Option<i32> {
    match role {
        RelayRole::Holding { backend_pid } => Some(backend_pid),
        RelayRole::StandingBy => None,
    }
}

/// Holding: the role carries the lock session's pid and the relay publishes. The session
/// ended from outside (as a replica does to a holder whose lease expired): the leadership
/// stands by, then holds again on a new session, and the relay publishes again. At stop the
/// lock is released and the role is standing by.
#[tokio::test]
async fn leadership_holds_the_lock_takes_it_again_after_a_lost_session_and_releases_it() {
    let env = TestEnv::new().await;
    let (role, mut seen) = watch::channel(None);
    let stop = CancellationToken::new();
    let leadership = RelayLeadership {
        database_url: env.database_url.clone(),
        store: env.store.clone(),
        metrics: Metrics::noop(),
        monitor: RelayMonitor::default(),
        retention: None,
    };
    let make_relay = {
        let (store, nats, target, wake) = (
            env.store.clone(),
            env.nats.clone(),
            env.target.clone(),
            env.outbox_wake.clone(),
        );
        move || {
            healthprobe::events::relay::Relay::new(
                store.clone(),
                nats.clone(),
                target.clone(),
                wake.clone(),
                Metrics::noop(),
            )
        }
    };
    let task = tokio::spawn(leadership.run(make_relay, role, stop.clone()));

    let first = role_becomes(&mut seen, "the lock held", |r| holding(r).is_some()).await;
    let first_pid = holding(first).unwrap();
    commit_event(&env, "g-before").await;
    wait_for("the first event published", WAIT_LIMIT, || async {
        (env.stream_events().await.len() == 1).then_some(())
    })
    .await;

    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first_pid)
        .fetch_one(env.pool())
        .await
        .expect("end the lock's session");
    assert!(ended, "the lock's session {first_pid} was not there to end");
    role_becomes(&mut seen, "standing by after the lost session", |r| {
        r == RelayRole::StandingBy
    })
    .await;
    let again = role_becomes(&mut seen, "the lock held again", |r| {
        holding(r).is_some_and(|pid| pid != first_pid)
    })
    .await;
    commit_event(&env, "g-after").await;
    wait_for("the second event published", WAIT_LIMIT, || async {
        (env.stream_events().await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(locks_held(&env).await, 1, "held as {again:?}");

    stop.cancel();
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("the leadership stops")
        .expect("the leadership task ends cleanly");
    assert_eq!(*seen.borrow(), Some(RelayRole::StandingBy));
    wait_for("the lock released", Duration::from_secs(5), || async {
        (locks_held(&env).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        env.store.count_unpublished().await.unwrap(),
        0,
        "every event published once"
    );
}
