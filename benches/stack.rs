//! The HTTP stack alone: what one `GET /healthz` costs in CPU, in-process, without the
//! worker around it, so the fleet suite's CPU per probe can be split into the prober's share
//! and the worker's. Run by `scripts/bench.sh fleet` against the same nginx (inside its
//! network namespace), after the fleet runs; `HEALTHPROBE_BENCH_STACK=0` leaves it out.
//!
//! Three clients, each driven by `concurrency` lanes (tasks that send one request after
//! another on the same tokio runtime the worker uses: multi-thread, one thread per core),
//! all at one address, connections warm:
//!
//! - `Prober`: healthprobe's own [`healthprobe::probe::Prober::probe`], as the worker calls
//!   it (URL building, its own keep-alive pool, hyper's HTTP/1 connection API under the
//!   probe's one timeout, the body read within its cap, the outcome);
//! - `reqwest`: a bare `reqwest::Client::get(url).send()` and the body, nothing else;
//! - `minimal`: a prototype HTTP/1.1 client written for this measurement: one kept-alive
//!   `TcpStream` per lane, the request bytes written once, the answer parsed with `httparse`
//!   (the parser hyper uses), the body read by `Content-Length`. It does what a probe needs
//!   and nothing a production client must (pooling across tasks, redirects, chunked bodies,
//!   TLS, timeouts), so it is a floor, not a candidate.
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
//! `HEALTHPROBE_BENCH_STACK_IDLE` [4000 idle connections].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Prober,
    Reqwest,
    Minimal,
}

impl Client {
    const ALL: [Client; 3] = [Client::Prober, Client::Reqwest, Client::Minimal];

    fn name(self) -> &'static str {
        match self {
            Client::Prober => "healthprobe's Prober (hyper)",
            Client::Reqwest => "bare reqwest::Client",
            Client::Minimal => "minimal HTTP/1.1 prototype",
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

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
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

async fn run_client(
    client: Client,
    endpoint: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    let url = format!("{endpoint}/healthz");
    let prober = healthprobe::probe::Prober::new(Duration::from_secs(2), Duration::from_secs(1))?;
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
            for (phase, limit) in [(0, warmup), (1, requests)] {
                if phase == 1 {
                    barrier.wait().await;
                }
                while counters[phase].fetch_add(1, Ordering::Relaxed) < limit {
                    let ok = match client {
                        Client::Prober => prober
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results: Vec<(Client, Vec<f64>, Vec<f64>)> =
        Client::ALL.iter().map(|&c| (c, vec![], vec![])).collect();
    for round in 0..rounds {
        let mut order = Client::ALL.to_vec();
        let turn = round % order.len();
        order.rotate_left(turn);
        for client in order {
            let measured = runtime
                .block_on(run_client(client, &endpoint, requests, concurrency))
                .with_context(|| format!("{} against {endpoint}", client.name()))?;
            eprintln!(
                "stack: round {} {}: {:.0} requests/s, {:.1} µs CPU per request",
                round + 1,
                client.name(),
                measured.requests_per_sec,
                measured.cpu_us_per_request
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
        "#### The HTTP stack alone: {requests} requests per client per round, concurrency {concurrency}, one address, connections warm, medians of {rounds} rounds"
    );
    println!();
    // The idle cost per connection, each client in a fresh child process, per round.
    let mut idle: Vec<(Client, Vec<f64>)> =
        vec![(Client::Prober, vec![]), (Client::Minimal, vec![])];
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
    println!(
        "| client | requests/s | CPU µs/request | RSS per idle connection ({idle_connections} engines at distinct addresses) |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (client, rates, cpus) in &mut results {
        let idle_kib = idle
            .iter_mut()
            .find(|(c, _)| c == client)
            .map(|(_, figures)| format!("{:.1} KiB", median(figures)))
            .unwrap_or_else(|| "(as the Prober)".into());
        println!(
            "| {} | {:.0} | {:.1} | {idle_kib} |",
            client.name(),
            median(rates),
            median(cpus)
        );
    }
    println!();
    Ok(())
}
