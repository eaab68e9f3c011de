//! `healthprobe tail`: print the health events from the stream as JSON lines.

use anyhow::Context as _;
use healthprobe::config::TailArgs;
use healthprobe::events::jetstream::{self, StreamTarget};

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let stop = crate::app::stop_on_signals()?;
    let client = jetstream::connect_with_wake(&args.nats.nats_url, &args.nats.auth, true, None)
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
