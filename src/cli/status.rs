//! `healthprobe status`: the running games (or, with `--members`, the replicas) as a table
//! or JSON, read from Postgres.

use anyhow::Context as _;
use healthprobe::config::StatusArgs;
use healthprobe::http::MAX_LIMIT;
use healthprobe::status::render;
use healthprobe::store::{GamesQuery, Store};

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let store = super::connect(&args.database.database_url).await?;
    let text = if args.members {
        members(&store, args.json).await?
    } else {
        games(&store, args).await?
    };
    super::print(&text);
    Ok(())
}

/// `status --members`: the membership table.
async fn members(store: &Store, json: bool) -> anyhow::Result<String> {
    let members = store.members().await.context("reading the members")?;
    Ok(if json {
        let list: Vec<_> = members.iter().map(render::member_json).collect();
        format!("{}\n", serde_json::to_string_pretty(&list)?)
    } else {
        render::members_table(&members, None)
    })
}

/// All running games, page by page (the same keyset query as `GET /games`).
async fn games(store: &Store, args: StatusArgs) -> anyhow::Result<String> {
    let mut games = Vec::new();
    let mut query = GamesQuery {
        status: args.status,
        game_id_glob: args.game_id,
        after: None,
        limit: MAX_LIMIT,
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
    Ok(if args.json {
        let list: Vec<_> = games.iter().map(render::GameJson::from).collect();
        format!("{}\n", serde_json::to_string_pretty(&list)?)
    } else {
        render::games_table(&games, chrono::Utc::now())
    })
}
