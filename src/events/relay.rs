//! The outbox relay: publishes committed, unpublished events to JetStream in commit order.
//!
//! The event log in Postgres is the source of truth; JetStream is told about each row at
//! least once and drops repeats by `Nats-Msg-Id` (= `event_id`), so a crash between the
//! publish and `published_at` costs nothing. While NATS is away the relay backs off (capped)
//! and the rows wait; the worker never blocks on NATS.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID};
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::envelope::HealthEvent;
use super::jetstream::{JetStreamError, StreamTarget, ensure_stream};
use crate::ErrorChain;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Rows published per round trip to Postgres. Publishes inside a batch are pipelined.
const BATCH: i64 = 256;

/// Backoff while Postgres or NATS fail: starts small so a blip costs little, capped so an
/// outage's end is noticed within a couple of seconds.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Even without a wake-up, look at the outbox this often: covers rows committed by another
/// process (an earlier run, a second replica) and any missed notification.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The NATS client connects in the background; a disconnected client this soon after start
/// is expected, not worth a warning.
const STARTUP_GRACE: Duration = Duration::from_secs(3);

/// At shutdown, keep draining for at most this long.
pub const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum RelayError {
    #[error("reading or updating the outbox")]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
}

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub published: usize,
    pub undecodable: usize,
    /// More rows may be waiting (the batch was full).
    pub more: bool,
}

pub struct Relay {
    store: Store,
    client: async_nats::Client,
    js: jetstream::Context,
    target: StreamTarget,
    wake: Arc<Notify>,
    metrics: Metrics,
    stream_ready: bool,
}

impl Relay {
    pub fn new(
        store: Store,
        client: async_nats::Client,
        target: StreamTarget,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> Self {
        let js = super::jetstream::context(client.clone());
        Self {
            store,
            client,
            js,
            target,
            wake,
            metrics,
            stream_ready: false,
        }
    }

    /// Runs until `stop` fires, then drains what it can within [`SHUTDOWN_DRAIN_LIMIT`].
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        let started = std::time::Instant::now();
        let wake = self.wake.clone();
        loop {
            // Register for a wake-up before looking, so an event committed while we look
            // is not missed.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if stop.is_cancelled() {
                break;
            }
            match self.drain_once().await {
                Ok(report) => {
                    if failing {
                        tracing::info!("outbox relay publishing again");
                        failing = false;
                    }
                    backoff = MIN_BACKOFF;
                    if report.more {
                        continue;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                    }
                }
                Err(RelayError::JetStream(JetStreamError::Disconnected))
                    if !failing && started.elapsed() < STARTUP_GRACE =>
                {
                    tracing::debug!("waiting for the first NATS connection");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(MIN_BACKOFF) => {}
                    }
                }
                Err(e) => {
                    self.metrics.publish_failed();
                    if !failing {
                        tracing::warn!(error = %ErrorChain(&e), "outbox relay cannot publish; retrying with backoff");
                        failing = true;
                    } else {
                        tracing::debug!(error = %ErrorChain(&e), ?backoff, "outbox relay still failing");
                    }
                    // A new event or NATS coming back wakes us early.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.drain_for_shutdown().await;
    }

    async fn drain_for_shutdown(&mut self) {
        let drain = async {
            loop {
                match self.drain_once().await {
                    Ok(report) if report.more => continue,
                    Ok(_) => return "outbox drained",
                    Err(e) => {
                        tracing::warn!(error = %ErrorChain(&e), "outbox not drained at shutdown; events stay in Postgres for the next run");
                        return "outbox left for the next run";
                    }
                }
            }
        };
        match tokio::time::timeout(SHUTDOWN_DRAIN_LIMIT, drain).await {
            Ok(reason) => tracing::info!(reason, "outbox relay stopped"),
            Err(_) => {
                tracing::warn!(limit = ?SHUTDOWN_DRAIN_LIMIT, "outbox relay stopped before the outbox was empty")
            }
        }
    }

    /// Publishes one batch of unpublished events. Public so tests can drive it directly.
    pub async fn drain_once(&mut self) -> Result<DrainReport, RelayError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            // Publishing into a disconnected client only queues copies in its buffer.
            return Err(JetStreamError::Disconnected.into());
        }
        if !self.stream_ready {
            ensure_stream(&self.js, &self.target).await?;
            self.stream_ready = true;
        }
        let rows = self.store.unpublished_events(BATCH).await?;
        let mut report = DrainReport {
            more: rows.len() as i64 == BATCH,
            ..DrainReport::default()
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Ok(event) => events.push(event),
                Err(bad) => {
                    report.undecodable += 1;
                    tracing::error!(event_id = %bad.event_id, reason = %bad.reason, "outbox row cannot be decoded; left unpublished");
                }
            }
        }
        let (acked, failure) = self.publish(&events).await;
        report.published = acked.len();
        self.store.mark_published(&acked).await?;
        if let Some(e) = failure {
            // The stream may have been deleted under us; look again next time.
            self.stream_ready = false;
            return Err(e.into());
        }
        let pending = if report.more {
            self.store.count_unpublished().await?.max(0) as u64
        } else {
            report.undecodable as u64
        };
        self.metrics.outbox_pending(pending);
        for event in &events {
            tracing::debug!(event_id = %event.event_id, game_id = %event.game_id, "event published");
        }
        Ok(report)
    }

    /// Publishes pipelined, then awaits acknowledgements in order. Returns the ids of the
    /// acknowledged prefix and the first error, if any.
    async fn publish(&self, events: &[HealthEvent]) -> (Vec<Uuid>, Option<JetStreamError>) {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, event.event_id.to_string().as_str());
            match self
                .js
                .publish_with_headers(
                    event.subject(&self.target.subject_prefix),
                    headers,
                    event.to_json().into(),
                )
                .await
            {
                Ok(ack) => pending.push((event.event_id, ack)),
                Err(e) => {
                    return (Self::await_acks(pending).await.0, Some(e.into()));
                }
            }
        }
        Self::await_acks(pending).await
    }

    async fn await_acks(
        pending: Vec<(Uuid, async_nats::jetstream::context::PublishAckFuture)>,
    ) -> (Vec<Uuid>, Option<JetStreamError>) {
        let mut acked = Vec::with_capacity(pending.len());
        for (event_id, ack) in pending {
            match ack.await {
                Ok(_) => acked.push(event_id),
                Err(e) => return (acked, Some(e.into())),
            }
        }
        (acked, None)
    }
}
