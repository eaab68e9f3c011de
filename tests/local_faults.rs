//! Nothing local stops or fools the worker (issue 10): a fleet larger than the descriptor
//! limit, a flooded status port, a Postgres that stops answering mid-tick. Real processes,
//! real Postgres and NATS, engines at distinct loopback addresses.

mod helpers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use healthprobe::probe::Prober;
use healthprobe::store::Store;
use healthprobe::telemetry::Metrics;
use healthprobe::worker::{Worker, WorkerSettings};
use helpers::engines::Behavior;
use helpers::scenario::Scenario;
use helpers::{TestEnv, WAIT_LIMIT, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The default `ulimit -n` of a fresh machine.
const DEFAULT_NOFILE: u64 = 1024;

async fn count(env: &TestEnv, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(env.pool())
        .await
        .expect("count")
}

/// 1,500 engines, each at its own address, and a worker whose soft and hard descriptor
/// limits are 1,024: the keep-alive pool stays inside the budget, the rest connect and
/// close, and no engine is ever judged failed.
#[tokio::test]
async fn fifteen_hundred_distinct_engines_under_ulimit_1024_never_fail() {
    const ENGINES: usize = 1500;
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let engines = scenario.distinct_games(ENGINES).await;
    let mut worker = scenario
        .worker("fleet-1500")
        .interval(Duration::from_secs(1))
        .probe_timeout(Duration::from_secs(2))
        .failures(1)
        .concurrency(32)
        .nofile(DEFAULT_NOFILE)
        .spawn();
    let started = Instant::now();
    let mut peak = (0, 0);
    // Four full ticks: every engine probed at least four times.
    wait_for("every engine probed four times", WAIT_LIMIT * 6, || {
        let (fds, rss) = worker.descriptors_and_rss();
        peak = (peak.0.max(fds), peak.1.max(rss));
        async { (engines.min_requests() >= 4).then_some(()) }
    })
    .await;
    let (fds, rss) = worker.descriptors_and_rss();
    eprintln!(
        "FIGURE fleet-1500: 4 ticks in {:.1} s; worker at nofile 1024: {fds} descriptors, {rss} KiB RSS now, peak {} descriptors, {} KiB",
        started.elapsed().as_secs_f64(),
        peak.0,
        peak.1
    );
    assert!(peak.0 <= DEFAULT_NOFILE as usize, "{peak:?}");
    let log = worker.log_text();
    assert!(
        log.contains("keepalive_connections="),
        "budget logged: {log}"
    );
    assert!(!log.contains("local_errors="), "no local fault: {log}");
    assert_eq!(
        count(env, "SELECT count(*) FROM health_events").await,
        0,
        "no event for a healthy fleet"
    );
    assert_eq!(
        count(
            env,
            "SELECT count(*) FROM health_snapshots WHERE status <> 'healthy'"
        )
        .await,
        0,
        "every engine healthy"
    );
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
}

/// 2,000 idle connections to the status port of a worker at 1,024 descriptors: a fresh
/// `/healthz` is still answered and the engines stay healthy.
#[tokio::test]
async fn two_thousand_idle_status_connections_starve_nothing() {
    const IDLE: usize = 2000;
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let engines = scenario.distinct_games(50).await;
    let mut worker = scenario
        .worker("status-flood")
        .interval(Duration::from_millis(500))
        .failures(1)
        .nofile(DEFAULT_NOFILE)
        .spawn();
    let addr = worker.status_addr().await;
    wait_for("a first probe of every engine", WAIT_LIMIT, || async {
        (engines.min_requests() >= 1).then_some(())
    })
    .await;

    // Connections that say nothing, as a port scanner or a leaky client leaves them. The
    // cap closes the oldest ones as new ones come; the ones closed are opened again.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        match TcpStream::connect(&addr).await {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("connect to the status port: {e}"),
        }
    }
    let requests_before = engines.min_requests();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let asked = Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            client.get(format!("http://{addr}/healthz")).send(),
        )
        .await
        .expect("/healthz answers while 2,000 connections idle")
        .expect("/healthz reachable");
        worst = worst.max(asked.elapsed());
        assert_eq!(response.status().as_u16(), 200);
    }
    let (fds, rss) = worker.descriptors_and_rss();
    eprintln!(
        "FIGURE status-flood: {IDLE} idle connections opened; fresh /healthz worst of 5 in {:.1} ms; worker {fds} descriptors, {rss} KiB",
        worst.as_secs_f64() * 1000.0
    );
    assert!(fds <= DEFAULT_NOFILE as usize);
    // Two more rounds of probes while the connections are still open.
    wait_for("two more probes of every engine", WAIT_LIMIT, || async {
        (engines.min_requests() >= requests_before + 2).then_some(())
    })
    .await;
    drop(idle);
    assert_eq!(
        count(env, "SELECT count(*) FROM health_events").await,
        0,
        "no engine reported failed"
    );
    assert!(!worker.log_text().contains("local_errors="));
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
}

/// A TCP proxy in front of Postgres that can be told to hang: from then on it keeps every
/// socket open and forwards nothing, in either direction, as a hung host or a black-holed
/// network does.
struct HangingProxy {
    addr: std::net::SocketAddr,
    hang: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl HangingProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hang = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (hang2, stop2) = (hang.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stop2.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let (hang, stop) = (hang2.clone(), stop2.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = pump(cr, sw, hang.clone()) => {}
                        _ = pump(sr, cw, hang) => {}
                    }
                });
            }
        });
        Self { addr, hang, stop }
    }

    fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
    }
}

impl Drop for HangingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies bytes until the connection ends; once `hang` is set, holds what it read and
/// forwards nothing more (the socket stays open until the proxy stops).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hang: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn proxied_url(database_url: &str, proxy: std::net::SocketAddr) -> String {
    let mut url = reqwest::Url::parse(database_url).unwrap();
    url.set_port(Some(proxy.port())).unwrap();
    url.to_string()
}

fn postgres_addr(database_url: &str) -> std::net::SocketAddr {
    let url = reqwest::Url::parse(database_url).unwrap();
    let host = url.host_str().unwrap().to_owned();
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .unwrap()
        .next()
        .unwrap()
}

/// Postgres stops answering in the middle of a tick (the list is streaming, transitions
/// are being committed): the tick ends with an error within the documented bound, and the
/// next tick fails fast instead of waiting again.
#[tokio::test]
async fn a_tick_stuck_on_a_hung_postgres_ends_with_an_error_within_the_bound() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario
        .games(
            40,
            |i| (format!("game-{i:02}"), format!("e{i}")),
            Behavior::Delay(Duration::from_millis(50)),
        )
        .await;
    let proxy = HangingProxy::start(postgres_addr(&env.database_url)).await;
    let store = Store::connect(&proxied_url(&env.database_url, proxy.addr))
        .await
        .expect("connect through the proxy");
    let mut worker = Worker::new(
        store,
        Prober::new(Duration::from_secs(2), Duration::from_secs(1)).unwrap(),
        WorkerSettings {
            thresholds: healthprobe::hysteresis::Thresholds {
                failures: 3,
                recovery: 1,
            },
            max_concurrency: 1,
            spread_window: Duration::ZERO,
        },
        Metrics::noop(),
        env.outbox_wake.clone(),
    );
    let stop = CancellationToken::new();
    let first = worker
        .tick(&stop)
        .await
        .expect("a tick through a live proxy");
    assert_eq!(first.records, 40);

    // Hang once the list of the next tick is streaming (one probe at a time, 50 ms each).
    let hang_after = tokio::spawn({
        let hang = proxy.hang.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            hang.store(true, Ordering::SeqCst);
        }
    });
    let started = Instant::now();
    let stuck = tokio::time::timeout(Duration::from_secs(30), worker.tick(&stop))
        .await
        .expect("the tick ends by itself");
    let elapsed = started.elapsed();
    hang_after.await.unwrap();
    let error = match &stuck {
        Err(e) => healthprobe::ErrorChain(e).to_string(),
        Ok(report) => {
            assert!(!report.is_clean(), "{report:?}");
            report.store_errors.join("; ")
        }
    };
    // Either a statement was given up on ("did not answer") or no pooled connection
    // answered its health check within the pool's acquire timeout.
    assert!(
        error.contains("did not answer") || error.contains("timed out"),
        "{error}"
    );
    eprintln!(
        "FIGURE pg-hang: a tick stuck on Postgres ended with an error after {:.2} s ({error})",
        elapsed.as_secs_f64()
    );
    // While it stays hung, the next tick fails at once rather than waiting the bound again.
    let started = Instant::now();
    let next = worker.tick(&stop).await;
    assert!(next.is_err(), "{next:?}");
    eprintln!(
        "FIGURE pg-hang: the next tick failed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(proxy);
}

/// SIGTERM while Postgres hangs: the process stops cleanly (exit 0) within 10 s.
#[tokio::test]
async fn sigterm_during_a_postgres_hang_exits_within_ten_seconds() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario.game("game-1", "e1", Behavior::Status(503)).await;
    let proxy = HangingProxy::start(postgres_addr(&env.database_url)).await;
    let url = proxied_url(&env.database_url, proxy.addr);
    let mut worker = scenario
        .worker("pg-hang-sigterm")
        .database(&url)
        .interval(Duration::from_millis(300))
        .failures(2)
        .spawn();
    wait_for("a tick recorded through the proxy", WAIT_LIMIT, || async {
        env.snapshot("game-1").await.map(drop)
    })
    .await;
    proxy.hang();
    // Let the worker get stuck: a tick starts and waits on Postgres.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, elapsed) = worker.terminate(Duration::from_secs(10)).await;
    eprintln!(
        "FIGURE pg-hang: SIGTERM during the hang: exit {status:?} after {:.2} s",
        elapsed.as_secs_f64()
    );
    // `terminate` already fails the test past 10 s; what is asserted here is how it ended:
    // a clean stop (exit 0, the staged shutdown's last line), not a crash or a kill.
    assert!(
        status.success(),
        "exit {status:?}; log: {}",
        worker.log_text()
    );
    assert!(
        worker.log_text().contains("healthprobe stopped"),
        "the staged shutdown ran to its end; log: {}",
        worker.log_text()
    );
}
