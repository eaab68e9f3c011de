//! The HTTP stack alone: what one `GET /healthz` costs in CPU, in-process, without the
//! worker around it, so the fleet suite's CPU per probe can be split into the prober's share
//! and the worker's. Run by `scripts/bench.sh fleet` against the same nginx (inside its
//! network namespace), after the fleet runs; `HEALTHPROBE_BENCH_STACK=0` leaves it out.
//!
//! Six clients, each driven by `concurrency` lanes (tasks that send one request after
//! another on the same tokio runtime the worker uses: multi-thread, one thread per core),
//! all at one address, connections warm, and wrk beside them:
//!
//! - `Prober`: healthprobe's own [`healthprobe::probe::Prober::probe`], as the worker calls
//!   it (URL building, its own keep-alive pool, hyper's HTTP/1 connection API under the
//!   probe's one timeout, the body read within its cap, the outcome);
//! - `prober-sockets`: the same Prober with no idle connection keeping its HTTP/1 state
//!   (`http_states_kept(0)`: the handshake per probe that engines beyond
//!   [`healthprobe::probe::HTTP_STATES_KEPT`] get);
//! - `reqwest`: a bare `reqwest::Client::get(url).send()` and the body, nothing else;
//! - `minimal`: a prototype HTTP/1.1 client written for this measurement: one kept-alive
//!   `TcpStream` per lane, the request bytes written once, the answer parsed with `httparse`
//!   (the parser hyper uses), the body read by `Content-Length`. It does what a probe needs
//!   and nothing a production client must (pooling across tasks, redirects, chunked bodies,
//!   TLS, timeouts), so it is a floor, not a candidate;
//! - `hyper-task`, `hyper-inline`: **hyper's floor**, hyper's own connection API
//!   (`hyper::client::conn::http1`) used as cheaply as it can be: one handshake per lane, its
//!   `SendRequest` reused for every request, the body read to its end; the connection driven
//!   by a task of its own (`hyper-task`, as hyper's documentation does it) or polled by the
//!   lane beside each request (`hyper-inline`, as the Prober does it). Same builder settings
//!   as the Prober (8 KiB read buffer limit, no vectored writes), same request headers;
//! - `hyper-handshake`: as `hyper-inline`, but the HTTP/1 state is made anew for every request
//!   over the lane's kept socket and the socket taken back after it (what the Prober does
//!   per probe so that an idle connection costs only its socket): the handshake's share;
//! - `wrk` (`-t2 -c{concurrency} -d3s`, when installed): requests/s, and its CPU per request
//!   from `getrusage(RUSAGE_CHILDREN)` around it.
//!
//! CPU is the process's user + system time (`getrusage(RUSAGE_SELF)`) over the measured
//! requests; the clients alternate between rounds and the figures are medians. Then the
//! memory of an idle kept-alive connection: a fresh child process asks engines at
//! `HEALTHPROBE_BENCH_STACK_IDLE` distinct `127.1.x.y` addresses once each and leaves the
//! connections idle; its RSS growth per connection is the figure (the Prober, and the
//! prototype's lane: a `TcpStream` and its 1 KiB buffer).
//!
//! Variables: `HEALTHPROBE_BENCH_STACK_URL` [`http://127.0.0.1:8080`: the engine endpoint],
//! `HEALTHPROBE_BENCH_STACK_REQUESTS` [200000 per client per round],
//! `HEALTHPROBE_BENCH_FLEET_CONCURRENCY` [256], `HEALTHPROBE_BENCH_FLEET_ROUNDS` [3],
//! `HEALTHPROBE_BENCH_STACK_IDLE` [4000 idle connections; 0 leaves the idle cost out],
//! `HEALTHPROBE_BENCH_STACK_CLIENTS` [every client: `prober,reqwest,minimal,hyper-task,
//! hyper-inline,hyper-handshake,wrk`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Prober,
    ProberSockets,
    ProberSpawned,
    Reqwest,
    Minimal,
    HyperTask,
    HyperInline,
    HyperHandshake,
    Wrk,
}

impl Client {
    const ALL: [Client; 9] = [
        Client::Prober,
        Client::ProberSockets,
        Client::ProberSpawned,
        Client::Reqwest,
        Client::Minimal,
        Client::HyperTask,
        Client::HyperInline,
        Client::HyperHandshake,
        Client::Wrk,
    ];

    fn key(self) -> &'static str {
        match self {
            Client::Prober => "prober",
            Client::ProberSockets => "prober-sockets",
            Client::ProberSpawned => "prober-spawned",
            Client::Reqwest => "reqwest",
            Client::Minimal => "minimal",
            Client::HyperTask => "hyper-task",
            Client::HyperInline => "hyper-inline",
            Client::HyperHandshake => "hyper-handshake",
            Client::Wrk => "wrk",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Client::Prober => "healthprobe's Prober (hyper)",
            Client::ProberSockets => {
                "healthprobe's Prober, idle connections keep their socket alone"
            }
            Client::ProberSpawned => {
                "healthprobe's Prober, a task per probe spawned by one dispatcher"
            }
            Client::Reqwest => "bare reqwest::Client",
            Client::Minimal => "minimal HTTP/1.1 prototype",
            Client::HyperTask => "hyper's floor: http1, persistent, connection in its own task",
            Client::HyperInline => {
                "hyper's floor: http1, persistent, connection polled by the lane"
            }
            Client::HyperHandshake => "hyper http1, a handshake per request over a kept socket",
            Client::Wrk => "wrk",
        }
    }
}

struct Measured {
    requests_per_sec: f64,
    cpu_us_per_request: f64,
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={text:?} does not parse")),
        Err(_) => Ok(default),
    }
}

fn rusage_cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// This process's user + system time, every thread.
fn cpu_time() -> Duration {
    rusage_cpu_time(libc::RUSAGE_SELF)
}

/// The user + system time of the children waited for (wrk).
fn children_cpu_time() -> Duration {
    rusage_cpu_time(libc::RUSAGE_CHILDREN)
}

/// One lane of the minimal client: a kept-alive connection and a reusable buffer.
struct MinimalLane {
    stream: TcpStream,
    request: Arc<[u8]>,
    buffer: Vec<u8>,
}

impl MinimalLane {
    async fn connect(addr: &str, request: Arc<[u8]>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            request,
            buffer: Vec::with_capacity(1024),
        })
    }

    /// One request; returns the status.
    async fn get(&mut self) -> anyhow::Result<u16> {
        self.stream.write_all(&self.request).await?;
        self.buffer.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let status = response.code.unwrap_or(0);
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .context("no Content-Length")?;
                let total: usize = head + length;
                while self.buffer.len() < total {
                    if self.stream.read_buf(&mut self.buffer).await? == 0 {
                        bail!("connection closed in the body");
                    }
                }
                return Ok(status);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("connection closed in the head");
            }
        }
    }
}

/// The HTTP/1 builder the Prober uses (src/probe/mod.rs): 8 KiB read buffer limit, one write
/// per request.
fn hyper_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.max_buf_size(8 * 1024).writev(false);
    builder
}

type HyperConnection = http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// Polls `future` and, beside it, `connection` (which moves its bytes), as the Prober does.
async fn driven<F: Future + Unpin>(connection: &mut HyperConnection, mut future: F) -> F::Output {
    let mut closed = false;
    std::future::poll_fn(|cx| {
        if !closed && connection.poll_without_shutdown(cx).is_ready() {
            closed = true;
        }
        Pin::new(&mut future).poll(cx)
    })
    .await
}

/// `GET /healthz` with the Prober's headers.
fn healthz_request(host: &HeaderValue) -> Request<Empty<Bytes>> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = Uri::from_static("/healthz");
    let headers = request.headers_mut();
    headers.reserve(2);
    headers.insert(header::HOST, host.clone());
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(healthprobe::probe::USER_AGENT),
    );
    request
}

/// One lane of hyper's connection API: a socket, and (except per-request handshakes) the
/// `SendRequest` of one handshake, reused.
struct HyperLane {
    host: HeaderValue,
    sender: Option<http1::SendRequest<Empty<Bytes>>>,
    /// `hyper-inline`: the connection the lane polls; `hyper-task`: `None` (a task has it).
    connection: Option<HyperConnection>,
    /// `hyper-handshake`: the kept socket between requests.
    socket: Option<TcpStream>,
}

impl HyperLane {
    async fn connect(client: Client, addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let host = HeaderValue::from_str(addr)?;
        if client == Client::HyperHandshake {
            return Ok(Self {
                host,
                sender: None,
                connection: None,
                socket: Some(stream),
            });
        }
        let (sender, connection) = hyper_builder()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await?;
        let connection = match client {
            Client::HyperTask => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                None
            }
            _ => Some(connection),
        };
        Ok(Self {
            host,
            sender: Some(sender),
            connection,
            socket: None,
        })
    }

    /// One request and its whole body; returns the status.
    async fn get(&mut self) -> anyhow::Result<u16> {
        if let Some(socket) = self.socket.take() {
            return self.get_with_handshake(socket).await;
        }
        let sender = self.sender.as_mut().context("no sender")?;
        match self.connection.as_mut() {
            None => {
                sender.ready().await?;
                let response = sender.send_request(healthz_request(&self.host)).await?;
                let status = response.status().as_u16();
                let mut body = response.into_body();
                while let Some(frame) = body.frame().await {
                    frame?;
                }
                Ok(status)
            }
            Some(connection) => {
                driven(connection, std::pin::pin!(sender.ready())).await?;
                let response = driven(
                    connection,
                    std::pin::pin!(sender.send_request(healthz_request(&self.host))),
                )
                .await?;
                let status = response.status().as_u16();
                let mut body = response.into_body();
                while let Some(frame) = driven(connection, body.frame()).await {
                    frame?;
                }
                Ok(status)
            }
        }
    }

    async fn get_with_handshake(&mut self, socket: TcpStream) -> anyhow::Result<u16> {
        let (mut sender, mut connection) = hyper_builder()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(socket))
            .await?;
        let response = driven(
            &mut connection,
            std::pin::pin!(sender.send_request(healthz_request(&self.host))),
        )
        .await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = driven(&mut connection, body.frame()).await {
            frame?;
        }
        drop(body);
        drop(sender);
        std::future::poll_fn(|cx| match connection.poll_without_shutdown(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => Poll::Ready(Ok(())),
        })
        .await?;
        let parts = connection.into_parts();
        anyhow::ensure!(parts.read_buf.is_empty(), "bytes after the answer");
        self.socket = Some(parts.io.into_inner());
        Ok(status)
    }
}

/// wrk for 3 s with `concurrency` connections: requests/s and its CPU per request.
fn run_wrk(url: &str, concurrency: usize) -> anyhow::Result<Measured> {
    let cpu0 = children_cpu_time();
    let output = std::process::Command::new("wrk")
        .args(["-t2", &format!("-c{concurrency}"), "-d3s", url])
        .output()
        .context("running wrk")?;
    let cpu = children_cpu_time() - cpu0;
    let text = String::from_utf8_lossy(&output.stdout);
    let rate: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|rest| rest.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let total: f64 = text
        .lines()
        .find_map(|line| {
            let (count, rest) = line.trim().split_once(' ')?;
            rest.starts_with("requests in")
                .then(|| count.parse().ok())?
        })
        .with_context(|| format!("no request count in wrk's output: {text}"))?;
    Ok(Measured {
        requests_per_sec: rate,
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / total,
    })
}

fn wrk_installed() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

async fn run_client(
    client: Client,
    endpoint: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    let url = format!("{endpoint}/healthz");
    let states_kept = match client {
        Client::ProberSockets => 0,
        _ => healthprobe::probe::HTTP_STATES_KEPT,
    };
    let prober =
        healthprobe::probe::Prober::builder(Duration::from_secs(2), Duration::from_secs(1))
            .http_states_kept(states_kept)
            .build()?;
    let reqwest = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .no_proxy()
        .build()?;
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let request: Arc<[u8]> = format!(
        "GET /healthz HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {}\r\nAccept: */*\r\n\r\n",
        healthprobe::probe::USER_AGENT
    )
    .into_bytes()
    .into();

    if client == Client::ProberSpawned {
        return run_spawned(&prober, endpoint, requests, concurrency).await;
    }
    // Warm-up: every lane's connection made and used once, outside the measurement.
    let warmup = concurrency * 4;
    let counters = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let failures = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let done = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (prober, reqwest, url, endpoint) = (
            prober.clone(),
            reqwest.clone(),
            url.clone(),
            endpoint.to_owned(),
        );
        let (counters, failures, barrier, done) = (
            counters.clone(),
            failures.clone(),
            barrier.clone(),
            done.clone(),
        );
        let request = request.clone();
        let authority = authority.clone();
        lanes.spawn(async move {
            let mut minimal = match client {
                Client::Minimal => Some(MinimalLane::connect(&authority, request).await?),
                _ => None,
            };
            let mut hyper = match client {
                Client::HyperTask | Client::HyperInline | Client::HyperHandshake => {
                    Some(HyperLane::connect(client, &authority).await?)
                }
                _ => None,
            };
            for (phase, limit) in [(0, warmup), (1, requests)] {
                if phase == 1 {
                    barrier.wait().await;
                }
                while counters[phase].fetch_add(1, Ordering::Relaxed) < limit {
                    let ok = match client {
                        Client::Prober | Client::ProberSockets | Client::ProberSpawned => prober
                            .probe(&endpoint, prober.default_spec())
                            .await
                            .is_healthy(),
                        Client::Reqwest => match reqwest.get(&url).send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                response.bytes().await.is_ok() && status == 200
                            }
                            Err(_) => false,
                        },
                        Client::Minimal => {
                            minimal.as_mut().expect("minimal lane").get().await? == 200
                        }
                        Client::HyperTask | Client::HyperInline | Client::HyperHandshake => {
                            hyper.as_mut().expect("hyper lane").get().await? == 200
                        }
                        Client::Wrk => unreachable!("wrk is a process of its own"),
                    };
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if phase == 1 {
                    done.wait().await;
                }
            }
            anyhow::Ok(())
        });
    }
    // All lanes warm: start the clock when every lane is at the barrier.
    barrier.wait().await;
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    done.wait().await;
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    while let Some(lane) = lanes.join_next().await {
        lane.context("lane panicked")??;
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{}: {failed} requests failed", client.name());
    }
    Ok(Measured {
        requests_per_sec: requests as f64 / wall.as_secs_f64(),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests as f64,
    })
}

/// The Prober as the worker's tick drives it: one dispatcher takes a slot of a semaphore,
/// spawns a task per probe into a join set and records each as it ends (the worker's
/// `dispatch` fast path, without Postgres or the per-game table): what a task per probe
/// costs against the lanes of `run_client`.
async fn run_spawned(
    prober: &healthprobe::probe::Prober,
    endpoint: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut in_flight: tokio::task::JoinSet<bool> = tokio::task::JoinSet::new();
    let mut failed = 0usize;
    let mut measure = None;
    for (phase, limit) in [(0, concurrency * 4), (1, requests)] {
        if phase == 1 {
            measure = Some((cpu_time(), Instant::now()));
        }
        let mut started = 0;
        while started < limit || !in_flight.is_empty() {
            if let Some(done) = in_flight.try_join_next() {
                failed += usize::from(!done.context("probe panicked")?);
                continue;
            }
            if started < limit
                && let Ok(permit) = slots.clone().try_acquire_owned()
            {
                let (prober, endpoint) = (prober.clone(), endpoint.to_owned());
                in_flight.spawn(async move {
                    let ok = prober
                        .probe(&endpoint, prober.default_spec())
                        .await
                        .is_healthy();
                    drop(permit);
                    ok
                });
                started += 1;
                continue;
            }
            if let Some(done) = in_flight.join_next().await {
                failed += usize::from(!done.context("probe panicked")?);
            }
        }
    }
    let (cpu0, wall0) = measure.expect("the measured phase ran");
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    if failed > 0 {
        bail!("{}: {failed} requests failed", Client::ProberSpawned.name());
    }
    Ok(Measured {
        requests_per_sec: requests as f64 / wall.as_secs_f64(),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests as f64,
    })
}

/// VmRSS of this process, in KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// The cost of an idle kept-alive connection, in a child process of its own (so no memory
/// freed by an earlier measurement is reused): `connections` engines at distinct
/// `127.1.x.y` addresses are each asked once, with at most `concurrency` at a time, and
/// their connections left idle; the RSS growth divided by the connections is the figure.
async fn idle_cost(
    client: Client,
    port: u16,
    connections: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let addresses: Vec<String> = (0..connections)
        .map(|i| format!("127.1.{}.{}:{port}", i / 250, 1 + i % 250))
        .collect();
    let prober = healthprobe::probe::Prober::new(Duration::from_secs(5), Duration::from_secs(60))?;
    let request: Arc<[u8]> = format!(
        "GET /healthz HTTP/1.1\r\nHost: engine\r\nUser-Agent: {}\r\nAccept: */*\r\n\r\n",
        healthprobe::probe::USER_AGENT
    )
    .into_bytes()
    .into();
    // Warm the runtime, the client and the allocator on one engine first.
    let mut kept: Vec<MinimalLane> = Vec::with_capacity(connections);
    match client {
        Client::Minimal => {
            let mut lane = MinimalLane::connect(&addresses[0], request.clone()).await?;
            lane.get().await?;
            kept.push(lane);
        }
        _ => {
            prober
                .probe(&format!("http://{}", addresses[0]), prober.default_spec())
                .await;
        }
    }
    let before = rss_kib()?;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for address in addresses.into_iter().skip(1) {
        let permit = semaphore.clone().acquire_owned().await?;
        let (prober, request) = (prober.clone(), request.clone());
        tasks.spawn(async move {
            let _permit = permit;
            match client {
                Client::Minimal => {
                    let mut lane = MinimalLane::connect(&address, request).await?;
                    anyhow::ensure!(lane.get().await? == 200, "not 200");
                    Ok(Some(lane))
                }
                _ => {
                    let outcome = prober
                        .probe(&format!("http://{address}"), prober.default_spec())
                        .await;
                    anyhow::ensure!(outcome.is_healthy(), "{:?}", outcome.failure);
                    Ok(None)
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Some(lane) = done.context("probe task panicked")?? {
            kept.push(lane);
        }
    }
    let after = rss_kib()?;
    let open = std::fs::read_dir("/proc/self/fd")?.count();
    anyhow::ensure!(
        open >= connections,
        "only {open} descriptors open for {connections} idle connections"
    );
    Ok((after.saturating_sub(before)) as f64 / (connections - 1) as f64)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs benches without `--bench`: nothing to do.
        return Ok(());
    }
    let endpoint = std::env::var("HEALTHPROBE_BENCH_STACK_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let port: u16 = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .context("HEALTHPROBE_BENCH_STACK_URL has no port")?;
    let idle_connections = env_parse("HEALTHPROBE_BENCH_STACK_IDLE", 4000usize)?;
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--idle-child") {
        // The child: one idle-cost measurement, its figure on stdout.
        let client = match args.get(at + 1).map(String::as_str) {
            Some("minimal") => Client::Minimal,
            _ => Client::Prober,
        };
        // Idle connections beyond 1,024 need the soft descriptor limit raised.
        healthprobe::limits::raise_nofile_limit().context("raising the descriptor limit")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let kib = runtime.block_on(idle_cost(client, port, idle_connections, 256))?;
        println!("{kib:.2}");
        return Ok(());
    }
    let requests = env_parse("HEALTHPROBE_BENCH_STACK_REQUESTS", 200_000usize)?;
    let concurrency = env_parse("HEALTHPROBE_BENCH_FLEET_CONCURRENCY", 256usize)?;
    let rounds = env_parse("HEALTHPROBE_BENCH_FLEET_ROUNDS", 3usize)?.max(1);
    let mut clients = Vec::new();
    for key in std::env::var("HEALTHPROBE_BENCH_STACK_CLIENTS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
    {
        let client = Client::ALL
            .into_iter()
            .find(|c| c.key() == key)
            .with_context(|| format!("HEALTHPROBE_BENCH_STACK_CLIENTS: unknown client {key:?}"))?;
        clients.push(client);
    }
    if clients.is_empty() {
        clients = Client::ALL.to_vec();
    }
    if clients.contains(&Client::Wrk) && !wrk_installed() {
        eprintln!("stack: wrk is not installed: its row is left out");
        clients.retain(|&c| c != Client::Wrk);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results: Vec<(Client, Vec<f64>, Vec<f64>)> =
        clients.iter().map(|&c| (c, vec![], vec![])).collect();
    for round in 0..rounds {
        let mut order = clients.clone();
        let turn = round % order.len();
        order.rotate_left(turn);
        for client in order {
            let measured = if client == Client::Wrk {
                run_wrk(&format!("{endpoint}/healthz"), concurrency)?
            } else {
                runtime
                    .block_on(run_client(client, &endpoint, requests, concurrency))
                    .with_context(|| format!("{} against {endpoint}", client.name()))?
            };
            eprintln!(
                "stack: round {} {}: {:.0} requests/s, {:.1} µs CPU per request (load {})",
                round + 1,
                client.name(),
                measured.requests_per_sec,
                measured.cpu_us_per_request,
                load_average()
            );
            let entry = results
                .iter_mut()
                .find(|(c, _, _)| *c == client)
                .expect("every client has an entry");
            entry.1.push(measured.requests_per_sec);
            entry.2.push(measured.cpu_us_per_request);
        }
    }
    println!(
        "#### The HTTP stack alone: {requests} requests per client per round, concurrency {concurrency}, one address, connections warm, medians of {rounds} rounds (load {} at the end)",
        load_average()
    );
    println!();
    // The idle cost per connection, each client in a fresh child process, per round.
    let mut idle: Vec<(Client, Vec<f64>)> = [Client::Prober, Client::Minimal]
        .into_iter()
        .filter(|c| idle_connections > 0 && clients.contains(c))
        .map(|c| (c, vec![]))
        .collect();
    for _ in 0..rounds {
        for (client, figures) in &mut idle {
            let name = if *client == Client::Minimal {
                "minimal"
            } else {
                "prober"
            };
            let output = std::process::Command::new(std::env::current_exe()?)
                .args(["--bench", "--idle-child", name])
                .stderr(std::process::Stdio::inherit())
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "the idle-cost child for {name} failed"
            );
            let kib: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
            eprintln!(
                "stack: idle cost {}: {kib:.2} KiB per connection",
                client.name()
            );
            figures.push(kib);
        }
    }
    let wrk_rate = results
        .iter()
        .find(|(c, _, _)| *c == Client::Wrk)
        .map(|(_, rates, _)| {
            let mut rates = rates.clone();
            median(&mut rates)
        });
    println!(
        "| client | requests/s | × wrk | CPU µs/request | RSS per idle connection ({idle_connections} engines at distinct addresses) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (client, rates, cpus) in &mut results {
        let idle_kib = idle
            .iter_mut()
            .find(|(c, _)| c == client)
            .map(|(_, figures)| format!("{:.1} KiB", median(figures)))
            .unwrap_or_default();
        let rate = median(rates);
        let of_wrk = wrk_rate.map_or(String::new(), |wrk| format!("{:.2}", rate / wrk));
        println!(
            "| {} | {rate:.0} | {of_wrk} | {:.1} | {idle_kib} |",
            client.name(),
            median(cpus)
        );
    }
    println!();
    Ok(())
}
