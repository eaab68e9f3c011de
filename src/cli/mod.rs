//! The operator commands, one file each: `migrate`, `status` (games and members), `outbox`,
//! `tail` and, with the `sim` feature, `fleet` (the simulated engine fleet). `run`, the service itself, is
//! [`crate::app`].

#[cfg(feature = "sim")]
pub mod fleet;
pub mod migrate;
pub mod outbox;
pub mod status;
pub mod tail;

use anyhow::Context as _;
use healthprobe::store::Store;

/// Connects to Postgres for a one-shot command.
async fn connect(database_url: &str) -> anyhow::Result<Store> {
    Store::connect(database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")
}

/// Writes a command's output to stdout. A closed stdout (`| head`) is a normal way to stop
/// reading, not an error.
fn print(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
