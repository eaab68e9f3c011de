//! The relay's supervision: its task restarted with back-off when it ends abnormally, and
//! the restarts told to the status surface on a `watch` ([`RelayMonitor`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::relay::LOG_VALUE_MAX;
use crate::status::RelayHealth;
use crate::telemetry::Metrics;

/// Restarts after an abnormal end of the relay task (a panic, or `run` returning before
/// `stop`) back off from this to [`MAX_RESTART_BACKOFF`] ([`crate::retry`]).
const MIN_RESTART_BACKOFF: Duration = Duration::from_millis(500);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// The relay's supervision as `/status` reads it: a `watch` the supervisor writes and the
/// status surface borrows. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RelayMonitor {
    health: Arc<tokio::sync::watch::Sender<RelayHealth>>,
}

impl RelayMonitor {
    pub fn snapshot(&self) -> RelayHealth {
        self.health.borrow().clone()
    }

    /// The receiver the status surface reads ([`crate::status::StatusBoard::with_relay`]).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<RelayHealth> {
        self.health.subscribe()
    }

    fn failed(&self, why: String) {
        self.health.send_modify(|health| {
            health.restarts += 1;
            health.last_failure = Some((std::time::Instant::now(), why));
        });
    }
}

/// Runs the relay made by `start` until `stop`; when its task ends abnormally (a panic, or
/// an end before `stop`) it is logged, counted on `monitor`, and started again after a
/// capped back-off. Generic over the task so tests can make one fail.
pub async fn supervise<F, Fut>(
    mut start: F,
    stop: CancellationToken,
    monitor: RelayMonitor,
    metrics: Metrics,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = crate::retry::backoff(MIN_RESTART_BACKOFF, MAX_RESTART_BACKOFF);
    loop {
        let ended = tokio::spawn(start()).await;
        let why = match ended {
            Ok(()) if stop.is_cancelled() => break,
            Ok(()) => "the relay stopped without being asked to".to_owned(),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                format!(
                    "the relay panicked: {}",
                    crate::bounded(&text, LOG_VALUE_MAX)
                )
            }
            Err(e) => format!("the relay task was cancelled: {e}"),
        };
        monitor.failed(why.clone());
        metrics.relay_restarted();
        let delay = backoff.next_delay();
        tracing::error!(error = %why, restart_in = ?delay, "outbox relay ended abnormally; restarting it");
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!("outbox relay supervisor stopped: shutdown requested");
}
