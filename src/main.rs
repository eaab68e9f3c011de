//! The `healthprobe` binary: parses the command line, wires the modules, handles signals.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicI32;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use healthprobe::config::{
    Cli, Command, FleetArgs, MigrateArgs, OutboxAction, OutboxArgs, RunArgs, StatusArgs, TailArgs,
};
use healthprobe::events::jetstream::{self, StreamTarget};
use healthprobe::events::leader::RelayLeadership;
use healthprobe::events::relay::{Relay, RelayMonitor};
use healthprobe::fleet::{Fleet, FleetSpec};
use healthprobe::http::{self, HttpState};
use healthprobe::limits::{self, DescriptorBudget};
use healthprobe::probe::Prober;
use healthprobe::status::StatusBoard;
use healthprobe::store::{GamesQuery, SetAsideSelection, Store};
use healthprobe::telemetry::{self, Metrics};
use healthprobe::worker::hold::MassFailureSettings;
use healthprobe::worker::membership::{self, Heartbeats, MembershipSettings};
use healthprobe::worker::{self, Worker, WorkerSettings};
use healthprobe::{ErrorChain, install_crypto_provider};

/// Start-up retries against Postgres back off up to this.
const MAX_STARTUP_BACKOFF: Duration = Duration::from_secs(5);

/// `POST /games/{id}/probe` waits for the worker at most the probe timeout plus this:
/// commands are served between ticks, so a tick in progress comes first. Past it the
/// caller gets 504 and the worker drops the command unrun.
const PROBE_REPLY_SLACK: Duration = Duration::from_secs(10);

/// After SIGTERM the process exits within 10 s, whatever Postgres, NATS or an engine do.
/// The stages share that: the tick in progress gets [`WORKER_STOP_GRACE`] (probes in
/// flight end, what they decided is recorded; past it the tick is dropped and its
/// uncommitted decisions are taken again by the next run), then the relay
/// [`RELAY_STOP_GRACE`] to publish what the last tick recorded (the status port closes
/// meanwhile), then NATS a flush and telemetry its own 2 s bound.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(3);
const RELAY_STOP_GRACE: Duration = Duration::from_millis(3500);
const NATS_FLUSH_LIMIT: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    install_crypto_provider();
    // Parsing validates every value: a bad one exits here (code 2) naming the variable.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("healthprobe: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = telemetry::init()?;
        let result = match cli.command {
            Command::Migrate(args) => migrate(args).await,
            Command::Run(args) => run(*args, &telemetry).await,
            Command::Tail(args) => tail(args).await,
            Command::Status(args) => status(args).await,
            Command::Fleet(args) => fleet(*args).await,
            Command::Outbox(args) => outbox(args).await,
        };
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: &(dyn std::error::Error + 'static) = e.as_ref();
            tracing::error!(error = %ErrorChain(chain), "healthprobe stopped");
            eprintln!("healthprobe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels the token on the first SIGINT or SIGTERM.
fn stop_on_signals(stop: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = stop.cancelled() => return,
        };
        tracing::info!(signal = name, "shutting down");
        stop.cancel();
    });
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.database.database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    store.migrate().await.context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}

/// Connects and migrates, retrying with capped backoff until Postgres answers or `stop`.
async fn connect_store(url: &str, stop: &CancellationToken) -> Option<Store> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let store = Store::connect(url)
                .await
                .context("connecting to Postgres")?;
            store.migrate().await.context("applying migrations")?;
            anyhow::Ok(store)
        };
        match attempt.await {
            Ok(store) => return Some(store),
            Err(e) => {
                let chain: &(dyn std::error::Error + 'static) = e.as_ref();
                tracing::warn!(error = %ErrorChain(chain), retry_in = ?backoff, "Postgres not ready");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_STARTUP_BACKOFF);
    }
}

async fn run(args: RunArgs, telemetry: &telemetry::Telemetry) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone())?;
    // Descriptors first: everything after this opens sockets.
    let soft_limit = match limits::raise_nofile_limit() {
        Ok(nofile) => {
            tracing::info!(
                soft_before = nofile.soft_before,
                soft = nofile.soft,
                hard = nofile.hard,
                "descriptor limit (RLIMIT_NOFILE) raised to the hard limit"
            );
            nofile.soft
        }
        Err(e) => {
            let soft = limits::soft_nofile_limit().unwrap_or(1024);
            tracing::warn!(error = %e, soft, "cannot raise the descriptor limit; keeping the soft one");
            soft
        }
    };
    let budget = DescriptorBudget::new(
        soft_limit,
        args.probe.max_concurrency,
        args.http_max_connections,
    );
    tracing::info!(
        soft_limit = budget.soft_limit,
        reserved = budget.reserved,
        keepalive_connections = budget.keepalive,
        "descriptor budget: probes beyond the kept-alive connections use a connection closed after use"
    );
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        interval = ?args.probe.probe_interval,
        timeout = ?args.probe.probe_timeout,
        failures_threshold = args.probe.failures_threshold,
        recovery_threshold = args.probe.recovery_threshold,
        max_concurrency = args.probe.max_concurrency,
        stream = %args.nats.stream,
        subject_prefix = %args.nats.subject_prefix,
        "healthprobe starting"
    );

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

    let Some(store) = connect_store(&args.database.database_url, &stop).await else {
        tracing::info!("stopped before Postgres became available");
        return Ok(());
    };
    let metrics = Metrics::new(&telemetry.meter());
    let prober = Prober::with_keepalive_budget(
        args.probe.probe_timeout,
        args.probe.probe_interval,
        budget.keepalive,
    )
    .context("building the HTTP client")?;
    let outbox_wake = Arc::new(Notify::new());
    let nats = jetstream::connect_with_wake(&args.nats.nats_url, false, Some(outbox_wake.clone()))
        .await
        .context("configuring the NATS client (NATS_URL)")?;

    let replica_id = args
        .replica
        .replica_id
        .clone()
        .unwrap_or_else(membership::default_replica_id);
    let lease_ttl = args.lease_ttl();
    tracing::info!(replica_id = %replica_id, lease_ttl = ?lease_ttl, "replica identity");
    let board = StatusBoard::new(args.probe.probe_interval);
    let relay_pid = Arc::new(AtomicI32::new(0));

    // The relay runs only while this replica holds the relay lock (one publisher at a
    // time, DESIGN §12).
    let tasks = TaskTracker::new();
    let relay_stop = CancellationToken::new();
    let target = StreamTarget {
        stream: args.nats.stream.clone(),
        subject_prefix: args.nats.subject_prefix.clone(),
        duplicate_window: args.dedup_window,
    };
    let relay_monitor = RelayMonitor::default();
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
        }
    };
    let leadership = RelayLeadership {
        database_url: args.database.database_url.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        board: board.clone(),
        relay_pid: relay_pid.clone(),
        monitor: relay_monitor.clone(),
    };
    let relay_task = tasks.spawn(leadership.run(make_relay, relay_stop.clone()));

    let (heartbeats, membership_rx) = Heartbeats::new(
        store.clone(),
        MembershipSettings {
            replica_id,
            status_addr: Some(http_addr.to_string()),
            lease_ttl,
        },
        metrics.clone(),
        relay_pid,
    );
    let (replica_health, replica_health_rx) =
        tokio::sync::watch::channel(membership::ReplicaHealth::default());
    let heartbeats = heartbeats
        .with_board(board.clone())
        .with_replica_health(replica_health_rx);
    let mut worker = Worker::new(
        store.clone(),
        prober,
        WorkerSettings {
            thresholds: args.probe.thresholds(),
            max_concurrency: args.probe.max_concurrency,
            spread_window: args.probe.spread_window(),
        },
        metrics,
        outbox_wake,
    )
    .with_membership(membership_rx)
    // DESIGN §15: a tick holds the schedule at most one interval; hung engines yield.
    .with_tick_budget(args.probe.probe_interval)
    .with_mass_failure_hold(MassFailureSettings::new(args.mass_failure_hold()))
    .with_replica_health(replica_health);

    // The HTTP surface reads the board and sends commands; the run loop owns the worker.
    let (commands, command_rx) = worker::command_channel();
    let router = http::router(HttpState {
        store: store.clone(),
        nats: nats.clone(),
        board: board.clone(),
        commands,
        probe_reply_limit: args.probe.probe_timeout + PROBE_REPLY_SLACK,
        metrics: telemetry.scrape(),
        relay: relay_monitor,
    });
    let http_limits = http::ServeLimits {
        max_connections: args.http_max_connections,
        ..http::ServeLimits::default()
    };
    let http_stop = CancellationToken::new();
    let http_task = tasks.spawn({
        let http_stop = http_stop.clone();
        async move {
            tracing::info!(addr = %http_addr, page = %format!("http://{http_addr}/"), "status endpoints listening");
            match http::serve_with_limits(listener, router, http_stop, http_limits).await {
                Ok(()) => tracing::info!("status endpoints stopped: shutdown requested"),
                Err(e) => tracing::error!(error = %e, "status endpoints stopped: server error"),
            }
        }
    });

    let mut backoff = Duration::from_millis(200);
    loop {
        match worker.restore().await {
            Ok(restored) => {
                tracing::info!(restored, "per-game state restored from health_snapshots");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot load health_snapshots; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_STARTUP_BACKOFF);
    }
    if !stop.is_cancelled() {
        let worker_run = worker::driver::run_replica(
            worker,
            heartbeats,
            args.probe.probe_interval,
            stop.clone(),
            board,
            command_rx,
        );
        tokio::pin!(worker_run);
        let stop_grace = async {
            stop.cancelled().await;
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
    http_stop.cancel();
    relay_stop.cancel();
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

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone())?;
    let client = jetstream::connect(&args.nats.nats_url, true)
        .await
        .context("connecting to NATS (NATS_URL)")?;
    let js = jetstream::context(client);
    let target = StreamTarget::new(args.nats.stream, args.nats.subject_prefix);
    let printed = jetstream::tail(
        &js,
        &target,
        args.from_start,
        stop,
        std::io::stdout().lock(),
    )
    .await
    .context("tailing the health stream")?;
    tracing::info!(printed, "tail stopped");
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.database.database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    if args.members {
        let members = store.members().await.context("reading the members")?;
        let text = if args.json {
            let list: Vec<_> = members
                .iter()
                .map(healthprobe::status::member_json)
                .collect();
            format!("{}\n", serde_json::to_string_pretty(&list)?)
        } else {
            healthprobe::status::members_table(&members, None)
        };
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        return Ok(());
    }
    // All running games, page by page (the same keyset query as `GET /games`).
    let mut games = Vec::new();
    let mut query = GamesQuery {
        status: args.status,
        game_id_glob: args.game_id,
        after: None,
        limit: http::MAX_LIMIT,
    };
    loop {
        let page = store
            .games_page(&query)
            .await
            .context("reading the games")?;
        let full = page.len() as i64 == query.limit;
        query.after = page.last().map(|g| g.game_id.clone());
        games.extend(page);
        if !full {
            break;
        }
    }
    let text = if args.json {
        let list: Vec<_> = games.iter().map(healthprobe::status::game_json).collect();
        format!("{}\n", serde_json::to_string_pretty(&list)?)
    } else {
        healthprobe::status::games_table(&games, chrono::Utc::now())
    };
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is a normal way to stop reading.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

async fn outbox(args: OutboxArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.database.database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    use std::io::Write as _;
    let selection = |ids: Vec<uuid::Uuid>, all: bool| {
        if all {
            SetAsideSelection::All
        } else {
            SetAsideSelection::Ids(ids)
        }
    };
    match args.action {
        OutboxAction::List { all, json, limit } => {
            let rows = store
                .list_set_aside(all, limit)
                .await
                .context("reading the set-aside outbox rows")?;
            let mut out = std::io::stdout().lock();
            let mut text = String::new();
            if json {
                for row in &rows {
                    let line = serde_json::json!({
                        "event_id": row.event_id.to_string(),
                        "game_id": row.game_id,
                        "event_type": row.event_type,
                        "state": row.state,
                        "attempts": row.attempts,
                        "set_aside_at": healthprobe::status::rfc3339(row.set_aside_at),
                        "error": row.error,
                    });
                    text.push_str(&format!("{line}\n"));
                }
            } else if rows.is_empty() {
                text.push_str("no outbox rows set aside\n");
            } else {
                text.push_str("EVENT_ID                              STATE      ATTEMPTS  SET ASIDE AT              GAME  TYPE  ERROR\n");
                for row in &rows {
                    text.push_str(&format!(
                        "{}  {:<9}  {:<8}  {}  {}  {}  {}\n",
                        row.event_id,
                        row.state,
                        row.attempts,
                        healthprobe::status::rfc3339(row.set_aside_at),
                        healthprobe::bounded(&row.game_id, 60),
                        row.event_type,
                        healthprobe::bounded(&row.error, 200),
                    ));
                }
            }
            // A closed stdout (`| head`) is a normal way to stop reading.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
        OutboxAction::Retry(which) => {
            let n = store
                .retry_set_aside(&selection(which.event_ids, which.all))
                .await
                .context("giving set-aside rows back to the relay")?;
            println!("{n} rows given back to the relay");
        }
        OutboxAction::Discard(which) => {
            let n = store
                .discard_set_aside(&selection(which.event_ids, which.all))
                .await
                .context("discarding set-aside rows")?;
            println!("{n} rows discarded (they stay in the event log, unpublished)");
        }
    }
    Ok(())
}

async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone())?;
    let store = match (&args.database_url, args.register) {
        (Some(url), true) => {
            let store = Store::connect(url)
                .await
                .context("connecting to Postgres (DATABASE_URL)")?;
            // The runtime_records table may not exist yet when the fleet starts first.
            store.migrate().await.context("applying migrations")?;
            Some(store)
        }
        (None, true) => anyhow::bail!("--register needs DATABASE_URL (or --database-url)"),
        (_, false) => None,
    };
    let spec = FleetSpec {
        engines: args.engines as usize,
        prefix: args.prefix,
        mix: args.mix,
        flap_period: args.flap_period,
        slow_delay: args.slow_delay,
        schedule: args.schedule,
        failing_status: args.failing_status,
    };
    let fleet = Fleet::start(spec, args.listen, args.advertise.as_deref())
        .await
        .with_context(|| format!("starting the fleet on {}", args.listen))?;
    tracing::info!(addr = %fleet.addr(), engines = fleet.engines().len(), "fleet listening");
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for engine in fleet.engines() {
            let _ = writeln!(
                out,
                "{} {} {}",
                engine.name,
                engine.behavior.as_str(),
                engine.endpoint
            );
        }
        let _ = out.flush();
    }
    let names: Vec<String> = fleet.engines().iter().map(|e| e.name.clone()).collect();
    if let Some(store) = &store {
        let games: Vec<(String, String)> = fleet
            .engines()
            .iter()
            .map(|e| (e.name.clone(), e.endpoint.clone()))
            .collect();
        store
            .register_running(&games)
            .await
            .context("registering the engines as running records")?;
        tracing::info!(
            games = games.len(),
            "fleet engines registered as running records"
        );
    }
    fleet.log_phase_changes(stop.clone()).await;
    tracing::info!("fleet stopping: shutdown requested");
    if let Some(store) = &store
        && !args.keep_records
    {
        match store.mark_stopped(&names).await {
            Ok(n) => tracing::info!(games = n, "fleet records marked stopped"),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "could not mark the fleet records stopped")
            }
        }
    }
    fleet.shutdown().await;
    Ok(())
}
