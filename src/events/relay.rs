//! The outbox relay: publishes committed, unpublished events to JetStream in commit order.
//!
//! The event log in Postgres is the source of truth; JetStream is told about each row at
//! least once and drops repeats by `Nats-Msg-Id` (= `event_id`), so a crash between the
//! publish and `published_at` costs nothing. While NATS is away the relay backs off (capped)
//! and the rows wait; the worker never blocks on NATS.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID};
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::jetstream::{JetStreamError, StreamTarget, ensure_stream_and_window};
pub use super::supervisor::{RelayMonitor, supervise};
use crate::ErrorChain;
use crate::envelope::HealthEvent;
use crate::periodic::{Next, Periodic};
use crate::store::Store;
use crate::telemetry::Metrics;

/// Rows published per round trip to Postgres. Publishes inside a batch are pipelined.
const BATCH: i64 = 256;

/// Back-off while Postgres or NATS fail ([`crate::retry`]): starts small so a blip costs
/// little, capped so an outage's end is noticed within a few seconds.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Even without a wake-up, look at the outbox this often: covers rows committed by another
/// process (an earlier run, a second replica) and any missed notification.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The NATS client connects in the background; a disconnected client this soon after start
/// is expected, not worth a warning.
const STARTUP_GRACE: Duration = Duration::from_secs(3);

/// At shutdown, keep draining for at most this long.
pub(crate) const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum RelayError {
    #[error("reading or updating the outbox")]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    /// The relay lock is lost ([`Relay::fenced_by`]): another replica may publish now.
    #[error("fenced: this replica no longer holds the relay lock")]
    Fenced,
}

/// A row whose publish the server refuses for a reason of its own (not an outage) is
/// tried this many times in a row, then set aside. Outages (timeouts, a lost connection)
/// never count: the row is not at fault.
const MAX_PUBLISH_ATTEMPTS: u32 = 3;

/// Longest value taken from a row (game id, error text) that goes into a log line.
pub(super) const LOG_VALUE_MAX: usize = 200;

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub published: usize,
    /// Rows that cannot be published as they are: they do not decode, or their message is
    /// over the server's `max_payload`. Each one is set aside.
    pub unpublishable: usize,
    /// Rows set aside in this pass (undecodable, too large, or refused by the server).
    pub set_aside: usize,
    /// More rows may be waiting (the batch was full).
    pub more: bool,
}

#[derive(Clone)]
pub struct Relay {
    store: Store,
    client: async_nats::Client,
    js: jetstream::Context,
    target: StreamTarget,
    wake: Arc<Notify>,
    metrics: Metrics,
    stream_ready: bool,
    /// `ce-source` of every message (`HEALTHPROBE_CLOUDEVENTS_SOURCE`).
    cloudevents_source: String,
    /// Row-specific publish refusals seen so far, by event id (cleared when published or
    /// set aside). Bounded by the batch: only rows of the current head are in it.
    refusals: std::collections::HashMap<Uuid, u32>,
    /// Cancelled when this replica loses the relay lock: no row is published after it.
    fence: CancellationToken,
    /// When set-aside rows were last counted for the gauge.
    set_aside_counted: Option<std::time::Instant>,
    /// Publishing has failed since the last success (logged once per outage).
    failing: bool,
    /// When [`Self::run`] started, for [`STARTUP_GRACE`].
    started: std::time::Instant,
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
            cloudevents_source: super::cloudevents::DEFAULT_SOURCE.to_owned(),
            refusals: std::collections::HashMap::new(),
            fence: CancellationToken::new(),
            set_aside_counted: None,
            failing: false,
            started: std::time::Instant::now(),
        }
    }

    /// Fences the relay with `fence`: once it is cancelled, no further row is published
    /// (a batch in flight stops before its next row), `drain_once` answers
    /// [`RelayError::Fenced`] and `run` ends without its shutdown drain.
    pub fn fenced_by(mut self, fence: CancellationToken) -> Self {
        self.fence = fence;
        self
    }

    /// Sets the CloudEvents `source` of the messages (default
    /// [`super::cloudevents::DEFAULT_SOURCE`]).
    pub fn with_cloudevents_source(mut self, source: impl Into<String>) -> Self {
        self.cloudevents_source = source.into();
        self
    }

    /// The message's headers: `Nats-Msg-Id` for JetStream's de-duplication and the
    /// CloudEvents binary-mode attributes.
    fn headers(&self, event: &HealthEvent) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event.event_id.to_string().as_str());
        for (name, value) in super::cloudevents::headers(
            event,
            &self.target.subject_prefix,
            &self.cloudevents_source,
        ) {
            headers.insert(name, value.as_str());
        }
        headers
    }

    /// Runs on the periodic driver ([`crate::periodic`]) until `stop` fires or the relay is
    /// fenced: a turn publishes one batch, the next follows at once while more rows wait,
    /// else after [`SWEEP_INTERVAL`] or as soon as an event is committed or NATS connects
    /// (the wake-up); failures back off. Then, unless fenced, drains what it can within
    /// [`SHUTDOWN_DRAIN_LIMIT`].
    pub async fn run(mut self, stop: CancellationToken) {
        self.started = std::time::Instant::now();
        // The relay's own health is its supervisor's to tell ([`RelayMonitor`]).
        let mut relay = crate::periodic::run(self, &stop, &watch::Sender::new(())).await;
        if relay.fence.is_cancelled() {
            tracing::info!("outbox relay stopped: fenced (the relay lock is lost), no drain");
        } else {
            relay.drain_for_shutdown().await;
        }
    }

    /// Refreshes `healthprobe.outbox.set_aside_rows` (rows waiting for an operator, also
    /// after `healthprobe outbox retry` or `discard` from elsewhere): at once after a row
    /// was set aside, else at most once per sweep. One count of a table that is usually
    /// empty, on the relay holder only.
    async fn count_set_aside_rows(&mut self, now: bool) {
        if !now
            && self
                .set_aside_counted
                .is_some_and(|at| at.elapsed() < SWEEP_INTERVAL)
        {
            return;
        }
        self.set_aside_counted = Some(std::time::Instant::now());
        match self.store.count_set_aside().await {
            Ok(count) => self.metrics.outbox_set_aside_rows(count.max(0) as u64),
            Err(e) => tracing::debug!(error = %ErrorChain(&e), "counting set-aside outbox rows"),
        }
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
        if self.fence.is_cancelled() {
            return Err(RelayError::Fenced);
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            // Publishing into a disconnected client only queues copies in its buffer.
            return Err(JetStreamError::Disconnected.into());
        }
        if !self.stream_ready {
            ensure_stream_and_window(&self.js, &self.target).await?;
            self.stream_ready = true;
        }
        let rows = self.store.unpublished_events(BATCH).await?;
        let mut report = DrainReport {
            more: rows.len() as i64 == BATCH,
            ..DrainReport::default()
        };
        let max_payload = self.client.server_info().max_payload;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Ok(event) => {
                    // Envelope plus the headers; a little slack for the framing.
                    let header_bytes: usize = super::cloudevents::headers(
                        &event,
                        &self.target.subject_prefix,
                        &self.cloudevents_source,
                    )
                    .iter()
                    .map(|(name, value)| name.len() + value.len() + 4)
                    .sum();
                    let size = event.to_json().len() + header_bytes + 64;
                    if max_payload > 0 && size > max_payload {
                        report.unpublishable += 1;
                        let why = format!(
                            "message of {size} bytes is over the server's max_payload ({max_payload} bytes)"
                        );
                        self.set_aside(event.event_id, Some(&event.game_id), &why, &mut report)
                            .await?;
                    } else {
                        events.push(event);
                    }
                }
                Err(bad) => {
                    report.unpublishable += 1;
                    self.set_aside(bad.event_id, None, &bad.reason, &mut report)
                        .await?;
                }
            }
        }
        let (acked, refused, failure) = self.publish(&events).await;
        report.published = acked.len();
        self.store.mark_published(&acked).await?;
        if self.fence.is_cancelled() {
            return Err(RelayError::Fenced);
        }
        for event_id in &acked {
            self.refusals.remove(event_id);
        }
        for (event_id, why) in refused {
            let attempts = self.refusals.entry(event_id).or_default();
            *attempts += 1;
            let game_id = events
                .iter()
                .find(|e| e.event_id == event_id)
                .map(|e| e.game_id.as_str());
            if *attempts >= MAX_PUBLISH_ATTEMPTS {
                let why = format!("refused by JetStream {MAX_PUBLISH_ATTEMPTS} times: {why}");
                self.set_aside(event_id, game_id, &why, &mut report).await?;
            } else {
                tracing::warn!(%event_id, game_id = %crate::bounded(game_id.unwrap_or(""), LOG_VALUE_MAX), error = %crate::bounded(&why, LOG_VALUE_MAX), attempts = *attempts, "JetStream refused an event; trying again");
                report.more = true;
            }
        }
        if let Some(e) = failure {
            // The stream may have been deleted under us; look again next time.
            self.stream_ready = false;
            return Err(e.into());
        }
        let pending = if report.more {
            self.store.count_unpublished().await?.max(0) as u64
        } else {
            0
        };
        self.metrics.outbox_pending(pending);
        for event in &events {
            tracing::debug!(event_id = %event.event_id, game_id = %crate::bounded(&event.game_id, LOG_VALUE_MAX), "event published");
        }
        Ok(report)
    }

    /// Sets one row aside so it blocks nothing, and says so once.
    async fn set_aside(
        &mut self,
        event_id: Uuid,
        game_id: Option<&str>,
        why: &str,
        report: &mut DrainReport,
    ) -> Result<(), RelayError> {
        self.store.set_aside(event_id, why).await?;
        self.refusals.remove(&event_id);
        report.set_aside += 1;
        self.metrics.outbox_set_aside();
        tracing::error!(
            %event_id,
            game_id = %crate::bounded(game_id.unwrap_or(""), LOG_VALUE_MAX),
            error = %crate::bounded(why, LOG_VALUE_MAX),
            "outbox row set aside: it cannot be published; the others go on (see `healthprobe outbox list`)"
        );
        Ok(())
    }

    /// Publishes pipelined, then awaits acknowledgements in order. Returns the acknowledged
    /// ids, the rows the server refused for a reason of their own (with why), and the first
    /// outage-like error, which stops the batch.
    async fn publish(&self, events: &[HealthEvent]) -> PublishResult {
        let mut pending = Vec::with_capacity(events.len());
        let mut refused = Vec::new();
        for event in events {
            if self.fence.is_cancelled() {
                break;
            }
            let headers = self.headers(event);
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
                Err(e) if row_specific(e.kind()) => refused.push((event.event_id, e.to_string())),
                Err(e) => {
                    let (acked, more_refused, failure) = Self::await_acks(pending).await;
                    refused.extend(more_refused);
                    return (acked, refused, failure.or(Some(e.into())));
                }
            }
        }
        let (acked, more_refused, failure) = Self::await_acks(pending).await;
        refused.extend(more_refused);
        (acked, refused, failure)
    }

    async fn await_acks(
        pending: Vec<(Uuid, async_nats::jetstream::context::PublishAckFuture)>,
    ) -> PublishResult {
        let mut acked = Vec::with_capacity(pending.len());
        let mut refused = Vec::new();
        for (event_id, ack) in pending {
            match ack.await {
                Ok(_) => acked.push(event_id),
                Err(e) if row_specific(e.kind()) => refused.push((event_id, e.to_string())),
                Err(e) => return (acked, refused, Some(e.into())),
            }
        }
        (acked, refused, None)
    }
}

impl Periodic for Relay {
    type Status = ();

    /// Even without a wake-up, the outbox is looked at this often.
    fn period(&self) -> Duration {
        SWEEP_INTERVAL
    }

    fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::backoff(MIN_BACKOFF, MAX_BACKOFF)
    }

    async fn turn(&mut self, _stop: &CancellationToken) -> Next {
        if self.fence.is_cancelled() {
            return Next::Stop;
        }
        match self.drain_once().await {
            Ok(report) => {
                if self.failing {
                    tracing::info!("outbox relay publishing again");
                    self.failing = false;
                }
                if report.more {
                    return Next::AtOnce;
                }
                self.count_set_aside_rows(report.set_aside > 0).await;
                Next::Period
            }
            Err(RelayError::JetStream(JetStreamError::Disconnected))
                if !self.failing && self.started.elapsed() < STARTUP_GRACE =>
            {
                tracing::debug!("waiting for the first NATS connection");
                Next::After(MIN_BACKOFF)
            }
            Err(RelayError::Fenced) => Next::Stop,
            Err(e) => {
                self.metrics.publish_failed();
                if !self.failing {
                    tracing::warn!(error = %ErrorChain(&e), "outbox relay cannot publish; retrying with backoff");
                    self.failing = true;
                }
                tracing::debug!(error = %ErrorChain(&e), "outbox relay failing; retrying");
                Next::Retry
            }
        }
    }

    /// A committed event (the worker's notification) or NATS connecting again.
    fn wake(&mut self) -> impl Future<Output = ()> + Send {
        self.wake.notified()
    }

    fn status(&self) {}
}

type PublishResult = (Vec<Uuid>, Vec<(Uuid, String)>, Option<JetStreamError>);

/// Whether a publish error is about the message itself (retrying later will not help)
/// rather than about the connection or the server's availability.
fn row_specific(kind: async_nats::jetstream::context::PublishErrorKind) -> bool {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    matches!(
        kind,
        Kind::MaxPayloadExceeded | Kind::WrongLastMessageId | Kind::WrongLastSequence | Kind::Other
    )
}
