//! `healthprobe outbox list|retry|discard`: the outbox rows set aside (DESIGN §13).

use anyhow::Context as _;
use healthprobe::config::{OutboxAction, OutboxArgs};
use healthprobe::status::render;
use healthprobe::store::SetAsideSelection;

pub async fn outbox(args: OutboxArgs) -> anyhow::Result<()> {
    let store = super::connect(&args.database.database_url).await?;
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
            let text = if json {
                rows.iter()
                    .map(|row| format!("{}\n", render::set_aside_json(row)))
                    .collect()
            } else {
                render::set_aside_table(&rows)
            };
            super::print(&text);
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
