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

use super::jetstream::{JetStreamError, StreamTarget, ensure_stream_and_window};
use crate::ErrorChain;
use crate::envelope::HealthEvent;
use crate::status::RelayHealth;
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
const LOG_VALUE_MAX: usize = 200;

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

    /// Runs until `stop` fires, then drains what it can within [`SHUTDOWN_DRAIN_LIMIT`].
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = crate::retry::backoff(MIN_BACKOFF, MAX_BACKOFF);
        let mut failing = false;
        let started = std::time::Instant::now();
        let wake = self.wake.clone();
        loop {
            // Register for a wake-up before looking, so an event committed while we look
            // is not missed.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if stop.is_cancelled() || self.fence.is_cancelled() {
                break;
            }
            match self.drain_once().await {
                Ok(report) => {
                    if failing {
                        tracing::info!("outbox relay publishing again");
                        failing = false;
                    }
                    backoff.reset();
                    if report.more {
                        continue;
                    }
                    self.count_set_aside_rows(report.set_aside > 0).await;
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
                Err(RelayError::Fenced) => break,
                Err(e) => {
                    self.metrics.publish_failed();
                    if !failing {
                        tracing::warn!(error = %ErrorChain(&e), "outbox relay cannot publish; retrying with backoff");
                        failing = true;
                    }
                    let delay = backoff.next_delay();
                    tracing::debug!(error = %ErrorChain(&e), ?delay, "outbox relay failing; retrying");
                    // A new event or NATS coming back wakes us early.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        if self.fence.is_cancelled() {
            tracing::info!("outbox relay stopped: fenced (the relay lock is lost), no drain");
        } else {
            self.drain_for_shutdown().await;
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
