//! The `healthprobe` binary: parses the command line, wires the modules, handles signals.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use healthprobe::config::{Cli, Command, MigrateArgs, RunArgs, TailArgs};
use healthprobe::events::jetstream::{self, StreamTarget};
use healthprobe::events::relay::Relay;
use healthprobe::probe::Prober;
use healthprobe::store::Store;
use healthprobe::telemetry::{self, Metrics};
use healthprobe::worker::{self, Heartbeat, Worker, WorkerSettings};
use healthprobe::{ErrorChain, install_crypto_provider};

/// Start-up retries against Postgres back off up to this.
const MAX_STARTUP_BACKOFF: Duration = Duration::from_secs(5);

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

    let Some(store) = connect_store(&args.database.database_url, &stop).await else {
        tracing::info!("stopped before Postgres became available");
        return Ok(());
    };
    let metrics = Metrics::new(&telemetry.meter());
    let prober = Prober::new(args.probe.probe_timeout, args.probe.probe_interval)
        .context("building the HTTP client")?;
    let outbox_wake = Arc::new(Notify::new());
    let nats = jetstream::connect_with_wake(&args.nats.nats_url, false, Some(outbox_wake.clone()))
        .await
        .context("configuring the NATS client (NATS_URL)")?;

    let tasks = TaskTracker::new();
    let relay_stop = CancellationToken::new();
    let relay = Relay::new(
        store.clone(),
        nats.clone(),
        StreamTarget {
            stream: args.nats.stream.clone(),
            subject_prefix: args.nats.subject_prefix.clone(),
        },
        outbox_wake.clone(),
        metrics.clone(),
    );
    let relay_task = tasks.spawn(relay.run(relay_stop.clone()));

    let mut worker = Worker::new(
        store.clone(),
        prober,
        WorkerSettings {
            thresholds: args.probe.thresholds(),
            max_concurrency: args.probe.max_concurrency,
        },
        metrics,
        outbox_wake,
    );
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
        worker::run(
            worker,
            args.probe.probe_interval,
            stop.clone(),
            Heartbeat::default(),
        )
        .await;
    }

    // The worker has stopped: let the relay publish what it can, then stop it.
    relay_stop.cancel();
    tasks.close();
    if let Err(e) = relay_task.await {
        tracing::error!(error = %e, "outbox relay ended abnormally");
    }
    tasks.wait().await;
    if let Err(e) = nats.flush().await {
        tracing::debug!(error = %e, "NATS flush at shutdown");
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
    let target = StreamTarget {
        stream: args.nats.stream,
        subject_prefix: args.nats.subject_prefix,
    };
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
