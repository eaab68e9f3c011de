//! The JetStream side: connecting, creating the stream, reading it back (`tail`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use thiserror::Error;

/// How long one publish waits for its JetStream acknowledgement. Long enough for a loaded
/// server, short enough that an outage is noticed and backed off from quickly.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the events go: a stream and the subject prefix it captures.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    pub stream: String,
    pub subject_prefix: String,
}

impl StreamTarget {
    pub fn wildcard(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// Stream settings kept plain: nats-server 2.9 rejects options added in 2.10+.
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.wildcard()],
            ..Default::default()
        }
    }
}

#[derive(Debug, Error)]
pub enum JetStreamError {
    #[error("NATS is not connected")]
    Disconnected,
    #[error("creating or looking up stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("publishing to JetStream")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
    #[error("reading the stream")]
    Consume(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reconnection attempts to a lost server back off up to this. Attempts are cheap and a
/// quick return shortens the outbox's catch-up after an outage.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Connects to NATS. With `wait_for_server = false` the client returns at once and keeps
/// trying in the background, so the worker starts (and records events) while NATS is away.
pub async fn connect(
    url: &str,
    wait_for_server: bool,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    connect_with_wake(url, wait_for_server, None).await
}

/// Like [`connect`], and notifies `on_connect` on every (re)connection, so the outbox relay
/// publishes the moment NATS is back instead of at its next backoff step.
pub async fn connect_with_wake(
    url: &str,
    wait_for_server: bool,
    on_connect: Option<Arc<Notify>>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(concat!("healthprobe/", env!("CARGO_PKG_VERSION")))
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            (Duration::from_millis(50) * attempts.min(20) as u32).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |event| {
            let on_connect = on_connect.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        if let Some(wake) = on_connect {
                            wake.notify_one();
                        }
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; events wait in the outbox")
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
    if !wait_for_server {
        options = options.retry_on_initial_connect();
    }
    options.connect(url).await
}

pub fn context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client)
}

/// Creates the stream when it is missing; an existing stream is left as it is.
pub async fn ensure_stream(
    js: &jetstream::Context,
    target: &StreamTarget,
) -> Result<stream::Stream, JetStreamError> {
    js.get_or_create_stream(target.config())
        .await
        .map_err(|source| JetStreamError::Stream {
            stream: target.stream.clone(),
            source,
        })
}

/// Prints every event as one JSON line on stdout until `stop` fires. Returns how many.
pub async fn tail(
    js: &jetstream::Context,
    target: &StreamTarget,
    from_start: bool,
    stop: tokio_util::sync::CancellationToken,
    mut out: impl std::io::Write,
) -> Result<u64, JetStreamError> {
    let stream = ensure_stream(js, target).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: target.wildcard(),
            deliver_policy: if from_start {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .map_err(|e| JetStreamError::Consume(Box::new(e)))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| JetStreamError::Consume(Box::new(e)))?;
    let mut printed = 0;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(printed),
            next = messages.next() => next,
        };
        let Some(message) = message else {
            return Ok(printed);
        };
        let message = message.map_err(|e| JetStreamError::Consume(Box::new(e)))?;
        let line = String::from_utf8_lossy(&message.payload);
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // stdout closed (e.g. piped into `head`): a normal way to stop.
            return Ok(printed);
        }
        printed += 1;
    }
}
