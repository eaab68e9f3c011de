//! `healthprobe fleet`: a simulated engine fleet for demos and tests, optionally registered
//! as running records.

use anyhow::Context as _;
use healthprobe::ErrorChain;
use healthprobe::sim::{Fleet, FleetArgs, FleetSpec};
use healthprobe::store::Store;

pub async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    let stop = crate::app::stop_on_signals()?;
    let store = match (&args.database_url, args.register) {
        (Some(url), true) => {
            let store = super::connect(url).await?;
            // The fleet plays the runtime manager's part: it creates runtime_records when
            // absent (healthprobe's migrations never do).
            store
                .create_runtime_records()
                .await
                .context("creating runtime_records")?;
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
    let listing: String = fleet
        .engines()
        .iter()
        .map(|e| format!("{} {} {}\n", e.name, e.behavior.as_str(), e.endpoint))
        .collect();
    super::print(&listing);
    if let Some(store) = &store {
        register(store, &fleet).await?;
    }
    fleet.log_phase_changes(stop).await;
    tracing::info!("fleet stopping: shutdown requested");
    if let Some(store) = &store
        && !args.keep_records
    {
        let names: Vec<String> = fleet.engines().iter().map(|e| e.name.clone()).collect();
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

async fn register(store: &Store, fleet: &Fleet) -> anyhow::Result<()> {
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
    Ok(())
}
