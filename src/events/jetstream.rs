//! The JetStream side: connecting, creating the stream, reading it back (`tail`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use thiserror::Error;

use crate::config::NatsAuthArgs;

/// How long one publish waits for its JetStream acknowledgement. Long enough for a loaded
/// server, short enough that an outage is noticed and backed off from quickly.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// JetStream's duplicate window when `HEALTHPROBE_DEDUP_WINDOW` is not set (DESIGN §13).
/// A publish that Postgres could not mark published (an outage right after the ack) is
/// published again when Postgres is back; inside this window JetStream drops the repeat.
/// So it is the longest Postgres outage after a publish that can never give a duplicate.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(3600);

/// How long the stream keeps a message when `HEALTHPROBE_STREAM_MAX_AGE` is not set
/// (DESIGN §16): a consumer that was away for less than this misses nothing.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where the events go: a stream, the subject prefix it captures, its duplicate window and
/// how long it keeps messages.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    pub stream: String,
    pub subject_prefix: String,
    pub duplicate_window: Duration,
    /// The stream's `max_age`; never shorter than the duplicate window (JetStream refuses
    /// that).
    pub max_age: Duration,
}

impl StreamTarget {
    /// A target with the default duplicate window and retention.
    pub fn new(stream: impl Into<String>, subject_prefix: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            subject_prefix: subject_prefix.into(),
            duplicate_window: DEFAULT_DEDUP_WINDOW,
            max_age: DEFAULT_MAX_AGE,
        }
    }

    pub(crate) fn wildcard(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// Stream settings kept plain: nats-server 2.9 rejects options added in 2.10+
    /// (`max_age` and `duplicate_window` are older than that).
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.wildcard()],
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
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
    #[error("reading or updating the settings of stream {stream}")]
    StreamSettings {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    connect_with_wake(url, &NatsAuthArgs::default(), wait_for_server, None).await
}

/// The client's credentials and TLS settings from the `NATS_*` variables.
fn secure(
    mut options: async_nats::ConnectOptions,
    auth: &NatsAuthArgs,
) -> Result<async_nats::ConnectOptions, async_nats::ConnectError> {
    use async_nats::{ConnectError, ConnectErrorKind};
    let unreadable = |variable: &str, path: &std::path::Path, e: std::io::Error| {
        ConnectError::with_source(
            ConnectErrorKind::Io,
            std::io::Error::new(
                e.kind(),
                format!("{variable}: cannot read {}: {e}", path.display()),
            ),
        )
    };
    if let Some(path) = &auth.nats_creds {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable("NATS_CREDS", path, e))?;
        options = options
            .credentials(&text)
            .map_err(|e| unreadable("NATS_CREDS", path, e))?;
    }
    if let Some(path) = &auth.nats_nkey {
        let seed = std::fs::read_to_string(path).map_err(|e| unreadable("NATS_NKEY", path, e))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let (Some(user), Some(password)) = (&auth.nats_user, &auth.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &auth.nats_token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &auth.nats_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&auth.nats_cert, &auth.nats_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// Like [`connect`], with the credentials and TLS settings of `auth`, and notifies
/// `on_connect` on every (re)connection, so the outbox relay publishes the moment NATS is
/// back instead of at its next backoff step.
pub async fn connect_with_wake(
    url: &str,
    auth: &NatsAuthArgs,
    wait_for_server: bool,
    on_connect: Option<Arc<Notify>>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = async_nats::ConnectOptions::new();
    let mut options = secure(options, auth)?
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

/// Like [`ensure_stream`], and sets an existing stream's duplicate window and `max_age` to
/// the target's: the relay, which publishes, owns those promises
/// (`HEALTHPROBE_DEDUP_WINDOW`, `HEALTHPROBE_STREAM_MAX_AGE`). Other settings an operator
/// gave the stream are kept.
pub async fn ensure_stream_and_window(
    js: &jetstream::Context,
    target: &StreamTarget,
) -> Result<stream::Stream, JetStreamError> {
    let mut stream = ensure_stream(js, target).await?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| JetStreamError::StreamSettings {
            stream: target.stream.clone(),
            source: Box::new(e),
        })?
        .config
        .clone();
    let window_differs = config.duplicate_window != target.duplicate_window;
    let age_differs = config.max_age != target.max_age;
    if window_differs || age_differs {
        tracing::info!(
            stream = %target.stream,
            duplicate_window_from = ?config.duplicate_window,
            duplicate_window = ?target.duplicate_window,
            max_age_from = ?config.max_age,
            max_age = ?target.max_age,
            "setting the stream's duplicate window and max_age"
        );
        config.duplicate_window = target.duplicate_window;
        config.max_age = target.max_age;
        js.update_stream(&config)
            .await
            .map_err(|e| JetStreamError::StreamSettings {
                stream: target.stream.clone(),
                source: Box::new(e),
            })?;
    }
    Ok(stream)
}

/// Bounds on how fast `tail` retries after losing its consumer (a NATS restart drops
/// ephemeral consumers): quick enough to feel live, slow enough not to hammer a dead server.
const TAIL_MIN_BACKOFF: Duration = Duration::from_millis(200);
const TAIL_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why one consumer's run ended.
enum TailEnd {
    /// Stop requested, or the output closed: a normal way to stop.
    Done,
    /// The consumer failed; resume from the next sequence.
    Lost(JetStreamError),
}

/// Prints every event as one JSON line until `stop` fires or the output closes; returns how
/// many. When the consumer is lost (NATS restarted), it is created again from the next
/// stream sequence, so no event is skipped or printed twice.
pub async fn tail(
    js: &jetstream::Context,
    target: &StreamTarget,
    from_start: bool,
    stop: tokio_util::sync::CancellationToken,
    mut out: impl std::io::Write,
) -> Result<u64, JetStreamError> {
    let mut printed = 0;
    // The stream sequence to resume at, once something was printed.
    let mut resume_at: Option<u64> = None;
    let mut backoff = crate::retry::backoff(TAIL_MIN_BACKOFF, TAIL_MAX_BACKOFF);
    let mut first = true;
    loop {
        let deliver_policy = match resume_at {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None if from_start => consumer::DeliverPolicy::All,
            None => consumer::DeliverPolicy::New,
        };
        let end = consume(
            js,
            target,
            deliver_policy,
            &stop,
            &mut out,
            &mut printed,
            &mut resume_at,
        )
        .await;
        match end {
            Ok(TailEnd::Done) => return Ok(printed),
            // A first attempt that fails is a configuration problem: report it.
            Err(e) if first => return Err(e),
            Ok(TailEnd::Lost(e)) | Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %crate::ErrorChain(&e), retry_in = ?delay, "lost the stream; following it again");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(printed),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        first = false;
    }
}

async fn consume(
    js: &jetstream::Context,
    target: &StreamTarget,
    deliver_policy: consumer::DeliverPolicy,
    stop: &tokio_util::sync::CancellationToken,
    out: &mut impl std::io::Write,
    printed: &mut u64,
    resume_at: &mut Option<u64>,
) -> Result<TailEnd, JetStreamError> {
    let stream = ensure_stream(js, target).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: target.wildcard(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| JetStreamError::Consume(Box::new(e)))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| JetStreamError::Consume(Box::new(e)))?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(TailEnd::Done),
            next = messages.next() => next,
        };
        let message = match message {
            None => {
                return Ok(TailEnd::Lost(JetStreamError::Consume(
                    "the consumer ended".into(),
                )));
            }
            Some(Err(e)) => return Ok(TailEnd::Lost(JetStreamError::Consume(Box::new(e)))),
            Some(Ok(message)) => message,
        };
        let line = String::from_utf8_lossy(&message.payload);
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // stdout closed (e.g. piped into `head`): a normal way to stop.
            return Ok(TailEnd::Done);
        }
        *printed += 1;
        if let Ok(info) = message.info() {
            *resume_at = Some(info.stream_sequence + 1);
        }
    }
}
