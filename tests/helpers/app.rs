//! The worker's HTTP surface in process: the real router served on a loopback port 0,
//! the real run loop (actor) behind it, pointed at this test's database and stream, or at
//! closed ports to simulate an outage.

use std::time::Duration;

use healthprobe::http::{self, HttpState};
use healthprobe::hysteresis::Thresholds;
use healthprobe::probe::Prober;
use healthprobe::scrape::Scrape;
use healthprobe::status::{MembersView, RelayRole, StatusBoard};
use healthprobe::store::Store;
use healthprobe::telemetry::Metrics;
use healthprobe::worker::on_demand::OnDemand;
use healthprobe::worker::{self, Worker, WorkerSettings};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{TestEnv, WAIT_LIMIT, wait_for};

/// A loopback port nothing listens on (bound, read, released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct AppOptions {
    pub interval: Duration,
    pub thresholds: Thresholds,
    pub probe_timeout: Duration,
    /// Run the worker loop (ticks and commands); off for tests that only read.
    pub start_worker: bool,
    /// Point the worker and the HTTP surface at a Postgres that does not answer.
    pub postgres_down: bool,
    /// Point the HTTP surface at a NATS that does not answer.
    pub nats_down: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            // Long: the first tick runs at once, the next ones only when a test wants them.
            interval: Duration::from_secs(3600),
            thresholds: Thresholds {
                failures: 3,
                recovery: 1,
            },
            probe_timeout: Duration::from_secs(2),
            start_worker: true,
            postgres_down: false,
            nats_down: false,
        }
    }
}

pub struct Response {
    pub code: u16,
    pub content_type: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

pub struct TestApp {
    pub base: String,
    pub board: StatusBoard,
    /// What the board shows as the membership heartbeat's status (no heartbeat runs here):
    /// `None` until a test sends members.
    pub members: tokio::sync::watch::Sender<Option<MembersView>>,
    /// What the board shows as the relay's leadership (none runs here): `None`, not
    /// reported, until a test sends a role.
    pub relay_role: tokio::sync::watch::Sender<Option<RelayRole>>,
    pub worker_stop: CancellationToken,
    http_stop: CancellationToken,
    worker: Option<JoinHandle<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    client: reqwest::Client,
    /// Kept alive: a dropped provider shuts its readers down.
    _meters: SdkMeterProvider,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.worker_stop.cancel();
        self.http_stop.cancel();
    }
}

impl TestApp {
    /// The service on `env` with `options`; tests reach it through
    /// [`Scenario::app`](super::scenario::Scenario::app), which names the options.
    pub async fn start(env: &TestEnv, options: AppOptions) -> Self {
        let store = if options.postgres_down {
            let url = format!("postgres://postgres@127.0.0.1:{}/nothing", closed_port());
            Store::from_pool(
                sqlx::postgres::PgPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(1))
                    .connect_lazy(&url)
                    .expect("lazy pool"),
            )
        } else {
            env.store.clone()
        };
        let nats = if options.nats_down {
            healthprobe::events::jetstream::connect(
                &format!("nats://127.0.0.1:{}", closed_port()),
                false,
            )
            .await
            .expect("a client that retries in the background")
        } else {
            env.nats.clone()
        };
        // The worker's instruments, readable at `GET /metrics` as in the binary.
        let (scrape, reader) = Scrape::new().expect("the Prometheus exporter");
        let meters = SdkMeterProvider::builder().with_reader(reader).build();
        let metrics = Metrics::new(&meters.meter(healthprobe::telemetry::METER_NAME));
        let (members, members_rx) = tokio::sync::watch::channel(None);
        let (relay_role, relay_role_rx) = tokio::sync::watch::channel(None);
        let board = StatusBoard::new(options.interval)
            .with_members(members_rx)
            .with_relay(
                relay_role_rx,
                tokio::sync::watch::channel(Default::default()).1,
            );
        let worker_stop = CancellationToken::new();
        let prober = Prober::new(options.probe_timeout, Duration::from_secs(1)).expect("prober");
        let on_demand = OnDemand::new(
            store.clone(),
            prober.clone(),
            options.thresholds,
            metrics.clone(),
            env.outbox_wake.clone(),
            Default::default(),
        );
        let worker = options.start_worker.then(|| {
            let worker = Worker::new(
                store.clone(),
                prober,
                WorkerSettings {
                    thresholds: options.thresholds,
                    max_concurrency: 8,
                    spread_window: Duration::ZERO,
                },
                metrics.clone(),
                env.outbox_wake.clone(),
            );
            tokio::spawn(worker::run(
                worker,
                options.interval,
                worker_stop.clone(),
                board.clone(),
            ))
        });
        let router = http::router(HttpState {
            store,
            nats,
            board: board.clone(),
            on_demand,
            stream: None,
            metrics: scrape,
        });
        let listener = http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let http_stop = CancellationToken::new();
        let server = tokio::spawn(http::serve(listener, router, http_stop.clone()));
        Self {
            base: format!("http://{addr}"),
            board,
            members,
            relay_role,
            worker_stop,
            http_stop,
            worker,
            server: Some(server),
            client: reqwest::Client::new(),
            _meters: meters,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Response {
        let response = request.send().await.expect("request reaches the server");
        let code = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.text().await.expect("body");
        Response {
            code,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn get_with_accept(&self, path: &str, accept: &str) -> Response {
        self.send(
            self.client
                .get(format!("{}{path}", self.base))
                .header(reqwest::header::ACCEPT, accept),
        )
        .await
    }

    pub async fn post(&self, path: &str) -> Response {
        self.send(self.client.post(format!("{}{path}", self.base)))
            .await
    }

    /// Waits until the first tick (run at start) has ended.
    pub async fn wait_first_tick(&self) {
        wait_for("the first tick to end", WAIT_LIMIT, || async {
            self.board.snapshot().last_tick.map(drop)
        })
        .await;
    }

    /// Stops the worker loop and waits for it to end.
    pub async fn stop_worker(&mut self) {
        self.worker_stop.cancel();
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(WAIT_LIMIT, worker)
                .await
                .expect("the worker stops")
                .expect("the worker task ends cleanly");
        }
    }

    /// Graceful HTTP shutdown: the server task ends.
    pub async fn stop_server(&mut self) {
        self.http_stop.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT_LIMIT, server)
                .await
                .expect("the server stops")
                .expect("the server task ends cleanly")
                .expect("the server ends without error");
        }
    }
}
