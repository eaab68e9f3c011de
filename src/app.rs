//! `healthprobe run`: wires the service and stops it in stages.
//!
//! One root [`CancellationToken`] with a child per stage and one [`TaskTracker`] for the
//! long-lived tasks. SIGINT or SIGTERM cancels the first stage (the worker: its tick in
//! progress ends, bounded); then the status port and the relay (the relay publishes what
//! the last tick recorded, bounded); then NATS gets a flush; the root is cancelled last,
//! so nothing outlives [`run`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use healthprobe::ErrorChain;
use healthprobe::config::RunArgs;
use healthprobe::events::jetstream::{self, StreamTarget};
use healthprobe::events::leader::RelayLeadership;
use healthprobe::events::relay::{Relay, RelayMonitor};
use healthprobe::events::retention::Retention;
use healthprobe::http::{self, HttpState};
use healthprobe::limits::DescriptorBudget;
use healthprobe::probe::Prober;
use healthprobe::retry;
use healthprobe::status::StatusBoard;
use healthprobe::store::{SchemaError, Store};
use healthprobe::telemetry::{Metrics, Telemetry};
use healthprobe::worker::hold::MassFailureSettings;
use healthprobe::worker::membership::{self, Heartbeats, MembershipSettings};
use healthprobe::worker::on_demand::{HoldFlags, OnDemand};
use healthprobe::worker::{self, Worker, WorkerSettings};

/// Start-up retries against Postgres back off up to this (plus jitter).
const MAX_STARTUP_BACKOFF: Duration = Duration::from_secs(5);

/// After SIGTERM the process exits within 10 s, whatever Postgres, NATS or an engine do.
/// The stages share that: the tick in progress gets [`WORKER_STOP_GRACE`] (probes in
/// flight end, what they decided is recorded; past it the tick is dropped and its
/// uncommitted decisions are taken again by the next run), then the relay
/// [`RELAY_STOP_GRACE`] to publish what the last tick recorded (the status port closes
/// meanwhile), then NATS a flush and telemetry its own 2 s bound.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(3);
const RELAY_STOP_GRACE: Duration = Duration::from_millis(3500);
const NATS_FLUSH_LIMIT: Duration = Duration::from_millis(500);

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn stop_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let token = stop.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = token.cancelled() => return,
        };
        tracing::info!(signal = name, "shutting down");
        token.cancel();
    });
    Ok(stop)
}

/// The stages of the stop, children of one root.
struct Stages {
    root: CancellationToken,
    /// Cancelled by a signal: start-up waits and the worker's run loop end.
    worker: CancellationToken,
    /// Cancelled once the worker has stopped.
    http: CancellationToken,
    relay: CancellationToken,
}

impl Stages {
    fn new() -> Self {
        let root = CancellationToken::new();
        Self {
            worker: root.child_token(),
            http: root.child_token(),
            relay: root.child_token(),
            root,
        }
    }
}

/// Start-up retries against Postgres back off from this up to [`MAX_STARTUP_BACKOFF`].
const MIN_STARTUP_BACKOFF: Duration = Duration::from_millis(200);

/// Connects and migrates (or, with `no_migrate`, checks the schema), retrying with back-off
/// until Postgres answers or `stop`. A schema that is missing or older than this binary
/// under `--no-migrate`, or a server that refuses the check, stops start-up.
async fn connect_store(
    url: &str,
    no_migrate: bool,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let mut backoff = retry::backoff(MIN_STARTUP_BACKOFF, MAX_STARTUP_BACKOFF);
    loop {
        let attempt = async {
            let store = Store::connect(url)
                .await
                .context("connecting to Postgres")?;
            if !no_migrate {
                store.migrate().await.context("applying migrations")?;
                return anyhow::Ok(Ok(store));
            }
            match store.check_schema().await {
                Ok(check) => {
                    if !check.newer.is_empty() {
                        tracing::warn!(newer = ?check.newer, "the schema has migrations this binary does not know (a newer version migrated it); running on it");
                    }
                    tracing::info!(
                        "schema checked (--no-migrate): every migration of this version is applied"
                    );
                    Ok(Ok(store))
                }
                // Postgres answered: retrying would get the same answer.
                Err(SchemaError::Database(sqlx::Error::Database(e))) => Ok(Err(anyhow::anyhow!(
                    "checking the schema (HEALTHPROBE_NO_MIGRATE): {e}; the worker's role needs SELECT on _sqlx_migrations"
                ))),
                Err(SchemaError::Database(e)) => Err(e).context("checking the schema"),
                Err(e) => Ok(Err(anyhow::Error::new(e).context(
                    "the schema is not ready for this version (HEALTHPROBE_NO_MIGRATE)",
                ))),
            }
        };
        match attempt.await {
            Ok(Ok(store)) => return Ok(Some(store)),
            Ok(Err(fatal)) => return Err(fatal),
            Err(e) => {
                let chain: &(dyn std::error::Error + 'static) = e.as_ref();
                tracing::warn!(error = %ErrorChain(chain), "Postgres not ready; retrying");
            }
        }
        if !backoff.pause(stop).await {
            return Ok(None);
        }
    }
}

/// Loads the per-game state from `health_snapshots`, retrying until it works or `stop`.
async fn restore(worker: &mut Worker, stop: &CancellationToken) {
    let mut backoff = retry::backoff(MIN_STARTUP_BACKOFF, MAX_STARTUP_BACKOFF);
    loop {
        match worker.restore().await {
            Ok(restored) => {
                tracing::info!(restored, "per-game state restored from health_snapshots");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot load health_snapshots; retrying")
            }
        }
        if !backoff.pause(stop).await {
            return;
        }
    }
}

pub async fn run(args: RunArgs, telemetry: &Telemetry) -> anyhow::Result<()> {
    let stages = Stages::new();
    let signals = stop_on_signals()?;
    tokio::spawn({
        let (signals, worker, root) = (signals, stages.worker.clone(), stages.root.clone());
        async move {
            tokio::select! {
                _ = signals.cancelled() => worker.cancel(),
                _ = root.cancelled() => {}
            }
        }
    });
    let result = serve(args, telemetry, &stages).await;
    stages.root.cancel();
    result
}

async fn serve(args: RunArgs, telemetry: &Telemetry, stages: &Stages) -> anyhow::Result<()> {
    // Descriptors first: everything after this opens sockets.
    let budget = DescriptorBudget::at_start(args.probe.max_concurrency, args.http_max_connections);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        interval = ?args.probe.probe_interval,
        timeout = ?args.probe.probe_timeout,
        failures_threshold = args.probe.failures_threshold,
        recovery_threshold = args.probe.recovery_threshold,
        max_concurrency = budget.max_concurrency,
        stream = %args.nats.stream,
        subject_prefix = %args.nats.subject_prefix,
        "healthprobe starting"
    );

    if !args.http_addr.ip().is_loopback() && args.http_token.is_none() {
        tracing::warn!(
            addr = %args.http_addr,
            "the status port listens beyond loopback and HEALTHPROBE_HTTP_TOKEN is not set: anyone who reaches it can trigger probes (POST /games/{{id}}/probe)"
        );
    }
    // Bound first, so a taken port or a bad address stops start-up before anything else.
    let listener = http::bind(args.http_addr).await.with_context(|| {
        format!(
            "binding the status address {} (HEALTHPROBE_HTTP_ADDR)",
            args.http_addr
        )
    })?;
    let http_addr = listener
        .local_addr()
        .context("reading the bound status address")?;

    let Some(store) =
        connect_store(&args.database.database_url, args.no_migrate, &stages.worker).await?
    else {
        tracing::info!("stopped before Postgres became available");
        return Ok(());
    };
    let metrics = Metrics::new(&telemetry.meter());
    let prober = Prober::builder(args.probe.probe_timeout, args.probe.probe_interval)
        .keepalive_budget(budget.keepalive)
        .ca_bundle(args.probe.probe_ca.clone())
        .build()
        .context("building the HTTP client (HEALTHPROBE_PROBE_CA)")?;
    let outbox_wake = Arc::new(Notify::new());
    let nats = jetstream::connect_with_wake(
        &args.nats.nats_url,
        &args.nats.auth,
        false,
        Some(outbox_wake.clone()),
    )
    .await
    .context("configuring the NATS client (NATS_URL)")?;

    let replica_id = args
        .replica
        .replica_id
        .clone()
        .unwrap_or_else(membership::default_replica_id);
    let lease_ttl = args.lease_ttl();
    tracing::info!(replica_id = %replica_id, lease_ttl = ?lease_ttl, "replica identity");
    metrics.build_info(env!("CARGO_PKG_VERSION"), &replica_id);
    // Present from the start, so an alert on it sees 0 rather than no series.
    metrics.mass_failure_holding(false);
    // The relay's leadership publishes its role here: the status surface shows it, the
    // membership heartbeat tells the others the lock session's backend pid.
    let (relay_role, relay_role_rx) = tokio::sync::watch::channel(None);
    let tasks = TaskTracker::new();

    // The relay runs only while this replica holds the relay lock (one publisher at a
    // time, DESIGN §12).
    let target = StreamTarget {
        stream: args.nats.stream.clone(),
        subject_prefix: args.nats.subject_prefix.clone(),
        duplicate_window: args.dedup_window,
        max_age: args.stream_max_age,
    };
    let relay_monitor = RelayMonitor::default();
    let cloudevents_source = args.cloudevents_source.clone();
    let make_relay = {
        let (store, nats, wake, metrics) = (
            store.clone(),
            nats.clone(),
            outbox_wake.clone(),
            metrics.clone(),
        );
        move || {
            Relay::new(
                store.clone(),
                nats.clone(),
                target.clone(),
                wake.clone(),
                metrics.clone(),
            )
            .with_cloudevents_source(cloudevents_source.clone())
        }
    };
    let leadership = RelayLeadership {
        database_url: args.database.database_url.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        monitor: relay_monitor.clone(),
        retention: Some(Retention::new(store.clone(), args.event_retention)),
    };
    let relay_task = tasks.spawn(leadership.run(make_relay, relay_role, stages.relay.clone()));

    let (heartbeats, membership_rx) = Heartbeats::new(
        store.clone(),
        MembershipSettings {
            replica_id,
            status_addr: Some(http_addr.to_string()),
            lease_ttl,
        },
        metrics.clone(),
        relay_role_rx.clone(),
    );
    let (replica_health, replica_health_rx) =
        tokio::sync::watch::channel(membership::ReplicaHealth::default());
    let heartbeats = heartbeats.with_replica_health(replica_health_rx);
    // The status surface reads each job's status watch.
    let board = StatusBoard::new(args.probe.probe_interval)
        .with_members(heartbeats.watch_status())
        .with_relay(relay_role_rx, relay_monitor.subscribe());
    let hold_flags = Arc::new(HoldFlags::default());
    let on_demand = OnDemand::new(
        store.clone(),
        prober.clone(),
        args.probe.thresholds(),
        metrics.clone(),
        outbox_wake.clone(),
        hold_flags.clone(),
    )
    .with_probe_settings(args.probe.initial_delay, args.probe.probe_spec());
    let mut worker = Worker::new(
        store.clone(),
        prober,
        WorkerSettings {
            thresholds: args.probe.thresholds(),
            max_concurrency: budget.max_concurrency,
            spread_window: args.probe.spread_window(),
        },
        metrics,
        outbox_wake,
    )
    .with_membership(membership_rx)
    // DESIGN §15: a tick holds the schedule at most one interval; hung engines yield.
    .with_tick_budget(args.probe.probe_interval)
    .with_mass_failure_hold(MassFailureSettings::new(args.mass_failure_hold()))
    .with_replica_health(replica_health)
    .with_hold_flags(hold_flags)
    .with_probe_settings(args.probe.initial_delay, args.probe.probe_spec());

    // The HTTP surface reads the board; on-demand probes run beside the ticks.
    let router = http::router(HttpState {
        store: store.clone(),
        nats: nats.clone(),
        board: board.clone(),
        on_demand,
        stream: Some((jetstream::context(nats.clone()), args.nats.stream.clone())),
        metrics: telemetry.scrape(),
    });
    // DESIGN §16: with HEALTHPROBE_HTTP_TOKEN, mutating requests need it; reads stay open.
    let router = http::guard_mutations(
        router,
        args.http_token.as_deref().map(http::AccessToken::new),
    );
    let http_limits = http::ServeLimits {
        max_connections: args.http_max_connections,
        ..http::ServeLimits::default()
    };
    let http_task = tasks.spawn({
        let http_stop = stages.http.clone();
        async move {
            tracing::info!(addr = %http_addr, page = %format!("http://{http_addr}/"), "status endpoints listening");
            match http::serve_with_limits(listener, router, http_stop, http_limits).await {
                Ok(()) => tracing::info!("status endpoints stopped: shutdown requested"),
                Err(e) => tracing::error!(error = %e, "status endpoints stopped: server error"),
            }
        }
    });

    restore(&mut worker, &stages.worker).await;
    if !stages.worker.is_cancelled() {
        let worker_run = worker::driver::run_replica(
            worker,
            heartbeats,
            args.probe.probe_interval,
            stages.worker.clone(),
            board,
        );
        tokio::pin!(worker_run);
        let stop_grace = async {
            stages.worker.cancelled().await;
            tokio::time::sleep(WORKER_STOP_GRACE).await;
        };
        tokio::select! {
            () = &mut worker_run => {}
            () = stop_grace => tracing::warn!(
                grace = ?WORKER_STOP_GRACE,
                "the tick in progress did not end in time (Postgres not answering?); dropped, its uncommitted decisions are taken again by the next run; the lease expires instead of a clean leave"
            ),
        }
    }

    // The worker has stopped: requests waiting on it are answered (the command channel is
    // closed), the server finishes what is in flight (bounded); the relay publishes what
    // it can meanwhile, then stops.
    stages.http.cancel();
    stages.relay.cancel();
    tasks.close();
    let (http_ended, relay_ended) = tokio::join!(
        tokio::time::timeout(RELAY_STOP_GRACE, http_task),
        tokio::time::timeout(RELAY_STOP_GRACE, relay_task)
    );
    match http_ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "status endpoints ended abnormally"),
        Err(_) => tracing::warn!("status endpoints did not stop in time; dropped"),
    }
    match relay_ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "outbox relay supervisor ended abnormally"),
        Err(_) => tracing::warn!(
            "outbox relay did not stop in time; unpublished events stay in Postgres for the next run"
        ),
    }
    match tokio::time::timeout(NATS_FLUSH_LIMIT, nats.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "NATS flush at shutdown"),
        Err(_) => tracing::debug!("NATS flush at shutdown did not finish in time"),
    }
    tracing::info!("healthprobe stopped");
    Ok(())
}
