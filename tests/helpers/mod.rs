//! Shared test harness: real Postgres, real NATS with JetStream, real HTTP engines on
//! loopback. Each test gets its own database, stream and subject prefix, so tests run in
//! parallel against one pair of servers.
//!
//! Servers come from `HEALTHPROBE_TEST_DATABASE_URL` / `HEALTHPROBE_TEST_NATS_URL`
//! (`scripts/test.sh` starts local ones); when unset, testcontainers starts them in Docker.
#![allow(dead_code)]

pub mod app;
pub mod browser;
pub mod distinct;
pub mod engines;
pub mod hostile;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod scenario;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use healthprobe::envelope::Envelope;
use healthprobe::events::jetstream::{StreamTarget, ensure_stream};
use healthprobe::events::relay::Relay;
use healthprobe::hysteresis::Thresholds;
use healthprobe::probe::Prober;
use healthprobe::store::Store;
use healthprobe::telemetry::Metrics;
use healthprobe::worker::{Worker, WorkerSettings};
use tokio::sync::Notify;
use uuid::Uuid;

/// Upper bound for any wait on a condition in these tests.
pub const WAIT_LIMIT: Duration = Duration::from_secs(20);

pub struct Services {
    pub admin_database_url: String,
    pub nats_url: String,
}

/// The shared servers, started once per test binary.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        healthprobe::install_crypto_provider();
        match (
            std::env::var("HEALTHPROBE_TEST_DATABASE_URL"),
            std::env::var("HEALTHPROBE_TEST_NATS_URL"),
        ) {
            (Ok(db), Ok(nats)) => Services {
                admin_database_url: db,
                nats_url: nats,
            },
            _ => start_containers(),
        }
    })
}

/// Image tags of the testcontainers servers: the ones `docker-compose.yml` uses, so one
/// pull (or one local stand-in, `scripts/images.sh`) serves both.
const POSTGRES_TAG: &str = "15-bookworm";
const NATS_TAG: &str = "2.10";
/// Label on the containers started here (value: the test binary), so that what is left
/// behind can be found: `docker ps -a --filter label=org.healthprobe.tests`.
const CONTAINER_LABEL: &str = "org.healthprobe.tests";

/// Starts Postgres and NATS (JetStream) with testcontainers on a thread of its own; the
/// containers live as long as the test process and are removed when it ends (see
/// [`remove_at_exit`]).
fn start_containers() -> Services {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime for testcontainers");
        runtime.block_on(async {
            use testcontainers::ImageExt as _;
            use testcontainers::runners::AsyncRunner as _;
            let binary = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.file_name().map(|name| name.to_string_lossy().into_owned()))
                .unwrap_or_default();
            // fsync off as the module sets it; pg_stat_statements for tests/statements.rs.
            let postgres = testcontainers_modules::postgres::Postgres::default()
                .with_cmd([
                    "-c",
                    "fsync=off",
                    "-c",
                    "shared_preload_libraries=pg_stat_statements",
                ])
                .with_tag(POSTGRES_TAG)
                .with_label(CONTAINER_LABEL, binary.as_str())
                .start()
                .await
                .expect("HEALTHPROBE_TEST_DATABASE_URL is unset and testcontainers could not start Postgres (is a Docker engine running? scripts/test.sh starts local servers instead)");
            remove_at_exit(postgres.id());
            let nats_cmd = testcontainers_modules::nats::NatsServerCmd::default().with_jetstream();
            let nats = testcontainers_modules::nats::Nats::default()
                .with_cmd(&nats_cmd)
                .with_tag(NATS_TAG)
                .with_label(CONTAINER_LABEL, binary.as_str())
                .start()
                .await
                .expect("HEALTHPROBE_TEST_NATS_URL is unset and testcontainers could not start NATS");
            remove_at_exit(nats.id());
            let pg_port = postgres.get_host_port_ipv4(5432).await.expect("postgres port");
            let nats_port = nats.get_host_port_ipv4(4222).await.expect("nats port");
            // Kept for the life of the process: statics are never dropped, so removal is
            // left to `remove_at_exit`.
            std::mem::forget(postgres);
            std::mem::forget(nats);
            Services {
                admin_database_url: format!("postgres://postgres:postgres@127.0.0.1:{pg_port}/postgres"),
                nats_url: format!("nats://127.0.0.1:{nats_port}"),
            }
        })
    })
    .join()
    .expect("testcontainers thread")
}

/// Removes the container when this test process ends, however it ends (passed, failed,
/// aborted, killed). Statics are never dropped, so testcontainers' own removal on drop
/// cannot do it: a `docker rm` is started now, in a process group of its own (Ctrl-C in a
/// terminal does not reach it), and blocks reading a pipe that only this process holds open
/// (close-on-exec, so no child inherits it). The kernel closes the pipe when the process
/// ends; the read returns and the container goes, with its anonymous volumes.
fn remove_at_exit(container_id: &str) {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    /// The pipes' write ends, held for the life of the process.
    static HELD: std::sync::Mutex<Vec<std::process::ChildStdin>> =
        std::sync::Mutex::new(Vec::new());
    let spawned = Command::new("sh")
        .args([
            "-c",
            "read -r _ignored; exec docker rm -f -v \"$1\"",
            "remove-at-exit",
            container_id,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(mut child) => {
            if let Some(stdin) = child.stdin.take() {
                HELD.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(stdin);
            }
        }
        Err(error) => eprintln!(
            "testcontainers: cannot arrange removal of container {container_id} at exit ({error}); remove it with `docker rm -f -v {container_id}`"
        ),
    }
}

/// A loopback port that nothing listens on right now (bound, read, released): for a
/// closed port, or a server the test starts later at a known address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates an empty database on the shared server and returns its URL.
pub async fn create_database(name: &str) -> String {
    healthprobe::store::fresh_database(&services().admin_database_url, name)
        .await
        .expect("create the test database")
}

/// Waits until `check` returns `Some`, polling briefly, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message read back from the stream.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub subject: String,
    pub msg_id: Option<String>,
    /// Every header of the message (first value of each), by name.
    pub headers: std::collections::BTreeMap<String, String>,
    pub payload: serde_json::Value,
}

impl StreamEvent {
    pub fn envelope(&self) -> Envelope {
        serde_json::from_value(self.payload.clone()).expect("payload decodes as an envelope")
    }

    pub fn event_type(&self) -> &str {
        self.payload["event_type"].as_str().unwrap_or_default()
    }

    pub fn game_id(&self) -> &str {
        self.payload["game_id"].as_str().unwrap_or_default()
    }
}

/// An isolated database, stream and subject prefix.
pub struct TestEnv {
    pub id: String,
    pub database_url: String,
    pub store: Store,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub target: StreamTarget,
    pub outbox_wake: Arc<Notify>,
}

impl TestEnv {
    pub async fn new() -> Self {
        let id = Uuid::now_v7().simple().to_string();
        let database_url = create_database(&format!("hp_{id}")).await;
        let store = Store::connect(&database_url)
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrations apply");
        // The runtime manager's table: healthprobe's migrations never create it.
        store
            .create_runtime_records()
            .await
            .expect("create runtime_records");
        Self::with_store(id, database_url, store).await
    }

    /// Like [`TestEnv::new`], on a database the test provides (e.g. its own server).
    pub async fn on_database(database_url: &str) -> Self {
        let id = Uuid::now_v7().simple().to_string();
        let store = Store::connect(database_url)
            .await
            .expect("connect to the given database");
        store.migrate().await.expect("migrations apply");
        store
            .create_runtime_records()
            .await
            .expect("create runtime_records");
        Self::with_store(id, database_url.to_owned(), store).await
    }

    async fn with_store(id: String, database_url: String, store: Store) -> Self {
        let services = services();
        let nats = healthprobe::events::jetstream::connect(&services.nats_url, true)
            .await
            .expect("connect to the test NATS");
        let js = healthprobe::events::jetstream::context(nats.clone());
        let target = StreamTarget {
            stream: format!("HP_{id}"),
            subject_prefix: format!("hp.{id}"),
            duplicate_window: healthprobe::events::jetstream::DEFAULT_DEDUP_WINDOW,
            max_age: healthprobe::events::jetstream::DEFAULT_MAX_AGE,
        };
        ensure_stream(&js, &target)
            .await
            .expect("create the test stream");
        Self {
            id,
            database_url,
            store,
            nats,
            js,
            target,
            outbox_wake: Arc::new(Notify::new()),
        }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }

    /// Appends an already-published event `hours_ago` hours back, as the worker would have
    /// written and the relay published it.
    pub async fn log_published_event(
        &self,
        game: &str,
        container: &str,
        event_type: &str,
        hours_ago: f64,
    ) {
        sqlx::query(
            "INSERT INTO health_events (event_id, game_id, container_id, event_type, occurred_at, details, published_at) \
             VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5), '{}', now())",
        )
        .bind(Uuid::now_v7())
        .bind(game)
        .bind(container)
        .bind(event_type)
        .bind(hours_ago * 3600.0)
        .execute(self.pool())
        .await
        .expect("insert event");
    }

    /// Environment for a worker process pointed at this test's database and stream.
    pub fn process_env(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("NATS_URL".into(), services().nats_url.clone()),
            ("HEALTHPROBE_STREAM".into(), self.target.stream.clone()),
            (
                "HEALTHPROBE_SUBJECT_PREFIX".into(),
                self.target.subject_prefix.clone(),
            ),
        ]
    }

    pub async fn add_running(&self, game_id: &str, endpoint: &str, container_id: Option<&str>) {
        sqlx::query(
            "INSERT INTO runtime_records (game_id, status, current_container_id, engine_endpoint, started_at) \
             VALUES ($1, 'running', $2, $3, now()) \
             ON CONFLICT (game_id) DO UPDATE SET status = 'running', current_container_id = $2, \
               engine_endpoint = $3, started_at = now(), last_op_at = now()",
        )
        .bind(game_id)
        .bind(container_id)
        .bind(endpoint)
        .execute(self.pool())
        .await
        .expect("insert runtime record");
    }

    pub async fn set_status(&self, game_id: &str, status: &str) {
        sqlx::query(
            "UPDATE runtime_records SET status = $2, last_op_at = now() WHERE game_id = $1",
        )
        .bind(game_id)
        .bind(status)
        .execute(self.pool())
        .await
        .expect("update runtime record");
    }

    pub fn worker(
        &self,
        thresholds: Thresholds,
        max_concurrency: usize,
        timeout: Duration,
    ) -> Worker {
        self.worker_with_metrics(thresholds, max_concurrency, timeout, Metrics::noop())
    }

    pub fn worker_with_metrics(
        &self,
        thresholds: Thresholds,
        max_concurrency: usize,
        timeout: Duration,
        metrics: Metrics,
    ) -> Worker {
        Worker::new(
            self.store.clone(),
            Prober::new(timeout, Duration::from_secs(1)).expect("prober"),
            WorkerSettings {
                thresholds,
                max_concurrency,
                spread_window: Duration::ZERO,
            },
            metrics,
            self.outbox_wake.clone(),
        )
    }

    pub fn relay(&self) -> Relay {
        self.relay_on(self.nats.clone())
    }

    pub fn relay_on(&self, client: async_nats::Client) -> Relay {
        Relay::new(
            self.store.clone(),
            client,
            self.target.clone(),
            self.outbox_wake.clone(),
            Metrics::noop(),
        )
    }

    /// Every message in this test's stream, in stream order.
    pub async fn stream_events(&self) -> Vec<StreamEvent> {
        self.stream_events_via(&self.js).await
    }

    /// Every message in this test's stream on the server behind `js`. A stream that does
    /// not exist (not created yet, or deleted and not yet recreated by the relay) holds no
    /// events yet; any other error fails the test.
    pub async fn stream_events_via(&self, js: &jetstream::Context) -> Vec<StreamEvent> {
        let mut stream = match js.get_stream(&self.target.stream).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                return Vec::new();
            }
            Err(e) => panic!("get the test stream {}: {e}", self.target.stream),
        };
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut events = Vec::new();
        for sequence in 1..=last {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            events.push(StreamEvent {
                subject: message.subject.to_string(),
                msg_id: message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.to_string()),
                headers: message
                    .headers
                    .iter()
                    .filter_map(|(name, values)| {
                        Some((name.to_string(), values.first()?.as_str().to_owned()))
                    })
                    .collect(),
                payload: serde_json::from_slice(&message.payload).expect("payload is JSON"),
            });
        }
        events
    }

    /// Waits until the stream holds at least `count` messages, then returns them all.
    pub async fn wait_stream_events(&self, count: usize) -> Vec<StreamEvent> {
        wait_for(
            &format!("{count} messages on stream {}", self.target.stream),
            WAIT_LIMIT,
            || async {
                let events = self.stream_events().await;
                (events.len() >= count).then_some(events)
            },
        )
        .await
    }

    /// Rows of `health_events`, in commit order: (event_type, game_id, published).
    pub async fn logged_events(&self) -> Vec<(String, String, bool)> {
        sqlx::query_as(
            "SELECT event_type, game_id, published_at IS NOT NULL FROM health_events ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await
        .expect("read health_events")
    }

    /// Rows of `health_events`, in commit order: (event_id, game_id, event_type, published).
    pub async fn logged_ids(&self) -> Vec<(Uuid, String, String, bool)> {
        sqlx::query_as(
            "SELECT event_id, game_id, event_type, published_at IS NOT NULL FROM health_events ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await
        .expect("read health_events")
    }

    /// Checks that the stream behind `js` and the event log agree: every logged event is on
    /// the stream exactly once, nothing else is, and each game's events are in log order.
    /// Returns the number of events.
    pub async fn assert_log_and_stream_agree(&self, js: &jetstream::Context) -> usize {
        let logged = self.logged_ids().await;
        let unpublished: Vec<_> = logged.iter().filter(|row| !row.3).collect();
        assert!(
            unpublished.is_empty(),
            "events left unpublished: {unpublished:?}"
        );
        let stream = self.stream_events_via(js).await;
        let stream_ids: Vec<Uuid> = stream
            .iter()
            .map(|e| e.payload["event_id"].as_str().unwrap().parse().unwrap())
            .collect();
        let unique: std::collections::HashSet<Uuid> = stream_ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            stream_ids.len(),
            "an event is on the stream twice"
        );
        let logged_set: std::collections::HashSet<Uuid> = logged.iter().map(|row| row.0).collect();
        let lost: Vec<_> = logged_set.difference(&unique).collect();
        let unknown: Vec<_> = unique.difference(&logged_set).collect();
        assert!(lost.is_empty(), "logged but not on the stream: {lost:?}");
        assert!(
            unknown.is_empty(),
            "on the stream but not logged: {unknown:?}"
        );
        let mut games: std::collections::HashMap<&str, (Vec<Uuid>, Vec<Uuid>)> = Default::default();
        for row in &logged {
            games.entry(row.1.as_str()).or_default().0.push(row.0);
        }
        for (event, id) in stream.iter().zip(&stream_ids) {
            let game = logged.iter().find(|row| row.0 == *id).unwrap().1.as_str();
            assert_eq!(event.game_id(), game);
            games.entry(game).or_default().1.push(*id);
        }
        for (game, (log_order, stream_order)) in games {
            assert_eq!(
                log_order, stream_order,
                "game {game}: stream order differs from commit order"
            );
        }
        logged.len()
    }

    /// (status, consecutive_failures, last_status, last_failure_kind, last_error) of a game.
    pub async fn snapshot(
        &self,
        game_id: &str,
    ) -> Option<(String, i32, i32, Option<String>, Option<String>)> {
        sqlx::query_as(
            "SELECT status, consecutive_failures, last_status, last_failure_kind, last_error \
             FROM health_snapshots WHERE game_id = $1",
        )
        .bind(game_id)
        .fetch_optional(self.pool())
        .await
        .expect("read health_snapshots")
    }
}

/// The AsyncAPI document and validators for its message schemas.
pub struct AsyncApi {
    document: serde_json::Value,
}

impl AsyncApi {
    pub fn load() -> Self {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asyncapi/healthprobe.asyncapi.json");
        let text = std::fs::read_to_string(&path).expect("read the AsyncAPI document");
        Self {
            document: serde_json::from_str(&text).expect("the AsyncAPI document is JSON"),
        }
    }

    pub fn document(&self) -> &serde_json::Value {
        &self.document
    }

    /// A validator for `#/components/messages/<message>/<part>` (part: payload or headers),
    /// resolving references inside the document.
    pub fn validator(&self, message: &str, part: &str) -> jsonschema::Validator {
        let reference = self.document["components"]["messages"][message][part]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("message {message} has a {part} reference"))
            .to_owned();
        // The whole document is the root resource, so `#/components/...` resolves.
        let mut schema = self.document.clone();
        schema["$ref"] = serde_json::Value::String(reference);
        jsonschema::draft7::new(&schema).expect("the AsyncAPI schemas compile")
    }

    /// Validates one published message against the schema of its event type.
    pub fn check(&self, event: &StreamEvent) -> Result<(), String> {
        let message = match event.event_type() {
            "probe_failed" => "probeFailed",
            "probe_recovered" => "probeRecovered",
            other => return Err(format!("unknown event_type {other:?}")),
        };
        let payload = self.validator(message, "payload");
        let errors: Vec<String> = payload
            .iter_errors(&event.payload)
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let mut headers = serde_json::to_value(&event.headers).expect("headers as JSON");
        headers["Nats-Msg-Id"] = serde_json::json!(event.msg_id);
        let header_errors: Vec<String> = self
            .validator(message, "headers")
            .iter_errors(&headers)
            .map(|e| e.to_string())
            .collect();
        if !header_errors.is_empty() {
            return Err(header_errors.join("; "));
        }
        // The CloudEvents attributes say what the body says.
        let header = |name: &str| event.headers.get(name).map(String::as_str);
        let same = [
            (
                "ce-id",
                event.payload["event_id"].as_str().map(str::to_owned),
            ),
            ("ce-type", Some(event.subject.clone())),
            (
                "ce-subject",
                Some(healthprobe::events::cloudevents::encode_value(
                    event.game_id(),
                )),
            ),
        ];
        for (name, expected) in same {
            if header(name) != expected.as_deref() {
                return Err(format!(
                    "{name} is {:?}, the body says {expected:?}",
                    header(name)
                ));
            }
        }
        let time_ms = header("ce-time")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        if time_ms != event.payload["occurred_at_ms"].as_i64() {
            return Err(format!(
                "ce-time {:?} is not occurred_at_ms {}",
                header("ce-time"),
                event.payload["occurred_at_ms"]
            ));
        }
        Ok(())
    }
}
