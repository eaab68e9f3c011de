//! Live updates for the fleet page (`GET /` and its `GET /live` Server-Sent Events).
//!
//! The worker pushes; browsers never poll every game. A [`LiveFeed`] is fed at two places:
//! the run loop at each tick's end ([`crate::worker::run`]), and the on-demand
//! probe handler when a probe outside a tick records an event. Each update is
//! small (the tick's figures, or one event): it tells the page that something changed, and
//! the page then reads the rows it shows from the read-model endpoints (`/games`, `/events`,
//! `/games/counts`), so a fleet of 10,000 games costs each browser one page of rows per tick.
//!
//! A `tokio::sync::broadcast` channel fans the updates out: a slow browser that falls behind
//! loses old updates, not the worker's time, and is told to [`LiveUpdate::resync`].

use std::time::Duration;

use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Updates buffered per subscriber. Each one only says "refresh"; a subscriber that falls
/// further behind than this gets one `resync`, which asks for the same refresh, so a small
/// buffer loses nothing a page needs.
const BUFFER: usize = 16;

/// Browsers connected to `GET /live` at most. Each holds a connection and a receiver; an
/// operator's team needs a handful, and a runaway client must not hold the worker's sockets.
pub const MAX_SUBSCRIBERS: usize = 64;

/// One message on the live stream: a Server-Sent Events `event:` name and its JSON `data:`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveUpdate {
    pub kind: &'static str,
    pub data: String,
}

impl LiveUpdate {
    /// Sent first on every connection: the interval lets the page tell a stalled worker.
    pub fn hello(interval: Duration) -> Self {
        Self {
            kind: "hello",
            data: json!({
                "interval_ms": interval.as_millis() as u64,
                "version": env!("CARGO_PKG_VERSION"),
            })
            .to_string(),
        }
    }

    /// A tick ended: its figures (the JSON `/status` shows under `last_tick`).
    pub fn tick(summary: &Value) -> Self {
        Self {
            kind: "tick",
            data: summary.to_string(),
        }
    }

    /// An event recorded outside a tick (an on-demand probe), as `/events` shows it.
    pub fn health_event(event: Value) -> Self {
        Self {
            kind: "health_event",
            data: event.to_string(),
        }
    }

    /// The subscriber missed `missed` updates: read everything again.
    pub(crate) fn resync(missed: u64) -> Self {
        Self {
            kind: "resync",
            data: json!({ "missed": missed }).to_string(),
        }
    }
}

/// The sending side, cheap to clone; sending never blocks and never fails the caller.
#[derive(Debug, Clone)]
pub(crate) struct LiveFeed {
    sender: broadcast::Sender<LiveUpdate>,
    interval: Duration,
}

impl LiveFeed {
    pub fn new(interval: Duration) -> Self {
        let (sender, _) = broadcast::channel(BUFFER);
        Self { sender, interval }
    }

    /// A tick ended, with its figures as JSON. The single call site is the run loop's turn;
    /// this module imports nothing from it.
    pub(crate) fn tick_ended(&self, summary: &Value) {
        self.send(LiveUpdate::tick(summary));
    }

    /// An event was committed outside a tick.
    pub(crate) fn event_recorded(&self, event: Value) {
        self.send(LiveUpdate::health_event(event));
    }

    fn send(&self, update: LiveUpdate) {
        // No subscriber is the normal case when no page is open.
        let _ = self.sender.send(update);
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// The updates from now on, starting with [`LiveUpdate::hello`], until `stop` (the
    /// server's shutdown: an open stream would otherwise hold a graceful shutdown forever).
    pub(crate) fn subscribe(
        &self,
        stop: CancellationToken,
    ) -> impl Stream<Item = LiveUpdate> + use<> {
        let receiver = self.sender.subscribe();
        let hello = LiveUpdate::hello(self.interval);
        futures::stream::unfold(
            (Some(hello), receiver, stop),
            |(first, mut receiver, stop)| async move {
                if let Some(hello) = first {
                    return Some((hello, (None, receiver, stop)));
                }
                let update = tokio::select! {
                    _ = stop.cancelled() => return None,
                    received = receiver.recv() => match received {
                        Ok(update) => update,
                        Err(broadcast::error::RecvError::Lagged(missed)) => LiveUpdate::resync(missed),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                };
                Some((update, (None, receiver, stop)))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn summary(records: usize) -> Value {
        json!({ "records": records, "probes": records, "healthy": records, "events": 0 })
    }

    #[tokio::test]
    async fn a_subscriber_gets_hello_then_each_update_in_order() {
        let feed = LiveFeed::new(Duration::from_secs(2));
        let stop = CancellationToken::new();
        let mut updates = Box::pin(feed.subscribe(stop.clone()));
        assert_eq!(feed.subscribers(), 1);
        feed.tick_ended(&summary(3));
        feed.event_recorded(json!({ "game_id": "g" }));
        let hello = updates.next().await.unwrap();
        assert_eq!(hello.kind, "hello");
        assert!(
            hello.data.contains("\"interval_ms\":2000"),
            "{}",
            hello.data
        );
        let tick = updates.next().await.unwrap();
        assert_eq!(tick.kind, "tick");
        assert!(tick.data.contains("\"records\":3"), "{}", tick.data);
        let event = updates.next().await.unwrap();
        assert_eq!(event.kind, "health_event");
        stop.cancel();
        assert!(updates.next().await.is_none(), "the stream ends on stop");
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_resync() {
        let feed = LiveFeed::new(Duration::from_secs(1));
        let mut updates = Box::pin(feed.subscribe(CancellationToken::new()));
        for n in 0..BUFFER + 5 {
            feed.tick_ended(&summary(n));
        }
        assert_eq!(updates.next().await.unwrap().kind, "hello");
        let next = updates.next().await.unwrap();
        assert_eq!(next, LiveUpdate::resync(5));
        // Then the newest updates it still holds.
        assert_eq!(updates.next().await.unwrap().kind, "tick");
    }

    #[test]
    fn sending_without_subscribers_is_fine() {
        LiveFeed::new(Duration::from_secs(1)).tick_ended(&summary(1));
    }
}
