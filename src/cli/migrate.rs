//! `healthprobe migrate`: apply the migrations and exit.

use anyhow::Context as _;
use healthprobe::config::MigrateArgs;

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let store = super::connect(&args.database.database_url).await?;
    store.migrate().await.context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}
