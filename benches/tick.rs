//! The benchmark harness: the worker's tick, for real, against real Postgres and a simulated
//! fleet served by a separate `healthprobe fleet` process, with `wrk` against the same
//! fleet as the machine's ceiling. Run it with `scripts/bench.sh` (which starts the servers
//! and sets the variables below); results are printed as a Markdown table.
//!
//! Each (records, concurrency) point runs in a fresh child process, so its peak RSS and CPU
//! time are the worker's alone.
//!
//! Variables: `HEALTHPROBE_BENCH_DATABASE_URL` (admin URL; one database per record count is
//! created), `HEALTHPROBE_BENCH_NATS_URL`, `HEALTHPROBE_BENCH_RECORDS` (default
//! `1000,10000,100000`), `HEALTHPROBE_BENCH_CONCURRENCY` (default `16,64,256,1024`),
//! `HEALTHPROBE_BENCH_TICKS` (measured ticks per point, default 5),
//! `HEALTHPROBE_BENCH_BIN` (the healthprobe binary, default `target/release/healthprobe`).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use healthprobe::events::jetstream::{self, StreamTarget};
use healthprobe::events::relay::Relay;
use healthprobe::hysteresis::Thresholds;
use healthprobe::probe::Prober;
use healthprobe::status::StatusBoard;
use healthprobe::store::Store;
use healthprobe::telemetry::Metrics;
use healthprobe::worker::{self, Worker, WorkerSettings};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const FLEET_PREFIX: &str = "e";

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
        })
        .collect()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// What one child measured for one (records, concurrency) point.
#[derive(Debug, Serialize, Deserialize)]
struct PointResult {
    records: usize,
    concurrency: usize,
    spread: f64,
    tick_secs: Vec<f64>,
    probes: usize,
    cpu_ns: u64,
    peak_rss_kib: u64,
    statements_per_tick: Vec<i64>,
    fleet_peak_in_flight: Option<u64>,
}

/// CPU time of this process so far: user + system of every thread, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat"))
                && let Some(ns) = text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                total += ns;
            }
        }
    }
    total
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn statements(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let calls: Option<i64> = sqlx::query_scalar(
        "SELECT sum(calls)::bigint FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .context("reading pg_stat_statements (start Postgres with shared_preload_libraries=pg_stat_statements)")?;
    Ok(calls.unwrap_or(0))
}

/// Asks the fleet for its peak number of requests in flight since the last ask.
async fn fleet_peak(fleet: &str) -> Option<u64> {
    let body = reqwest::get(format!("{fleet}/stats?reset=true"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let stats: serde_json::Value = serde_json::from_str(&body).ok()?;
    stats["max_in_flight"].as_u64()
}

/// Child: measure one point.
async fn child() -> anyhow::Result<()> {
    healthprobe::install_crypto_provider();
    // The production subscriber (info level, spans enabled), logging to stderr.
    let _telemetry = healthprobe::telemetry::init()?;
    let url = std::env::var("HP_BENCH_CHILD_DB")?;
    let records: usize = std::env::var("HP_BENCH_CHILD_RECORDS")?.parse()?;
    let concurrency: usize = std::env::var("HP_BENCH_CHILD_CONCURRENCY")?.parse()?;
    let ticks: usize = std::env::var("HP_BENCH_CHILD_TICKS")?.parse()?;
    let spread: f64 = std::env::var("HP_BENCH_CHILD_SPREAD")?.parse()?;
    let interval: Duration = humantime::parse_duration(&std::env::var("HP_BENCH_CHILD_INTERVAL")?)?;
    let fleet = std::env::var("HP_BENCH_CHILD_FLEET")?;
    let store = Store::connect(&url).await?;
    let mut worker = Worker::new(
        store.clone(),
        Prober::new(Duration::from_secs(2), interval)?,
        WorkerSettings {
            thresholds: Thresholds::default(),
            max_concurrency: concurrency,
            spread_window: interval.mul_f64(spread),
        },
        Metrics::noop(),
        Arc::new(Notify::new()),
    );
    worker.restore().await?;
    let stop = CancellationToken::new();
    // Warm-up: connections opened, snapshots written once.
    worker.tick(&stop).await?;
    let idle = {
        let a = statements(store.pool()).await?;
        statements(store.pool()).await? - a
    };
    let mut result = PointResult {
        records,
        concurrency,
        spread,
        tick_secs: Vec::new(),
        probes: 0,
        cpu_ns: 0,
        peak_rss_kib: 0,
        statements_per_tick: Vec::new(),
        fleet_peak_in_flight: None,
    };
    fleet_peak(&fleet).await;
    for _ in 0..ticks {
        let before = statements(store.pool()).await?;
        let cpu = process_cpu_ns();
        let started = Instant::now();
        let report = worker.tick(&stop).await?;
        result.tick_secs.push(started.elapsed().as_secs_f64());
        result.cpu_ns += process_cpu_ns() - cpu;
        result
            .statements_per_tick
            .push(statements(store.pool()).await? - before - idle);
        result.probes += report.probes;
        if report.probes != records || report.healthy != records {
            bail!(
                "tick probed {} of {records}, {} healthy",
                report.probes,
                report.healthy
            );
        }
    }
    result.fleet_peak_in_flight = fleet_peak(&fleet).await;
    result.peak_rss_kib = status_kib("VmHWM:");
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

struct FleetProcess {
    child: Child,
    base: String,
    started: Instant,
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_fleet(bin: &str, args: &[&str]) -> anyhow::Result<FleetProcess> {
    let port = free_port();
    let child = Command::new(bin)
        .arg("fleet")
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin} fleet"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the fleet did not listen on 127.0.0.1:{port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(FleetProcess {
        child,
        base: format!("http://127.0.0.1:{port}"),
        started: Instant::now(),
    })
}

/// `wrk` with `connections` connections for 3 s against one engine; requests per second.
fn wrk(url: &str, connections: usize) -> anyhow::Result<f64> {
    let output = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string(), "-d", "3s", url])
        .output()
        .context("running wrk (install Debian's wrk package; scripts/bench.sh does)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

/// A fresh database with `records` running games pointing at the fleet's first engines
/// (named like the fleet names them: prefix and a number zero-padded to `width`).
async fn prepare_database(
    admin: &str,
    name: &str,
    records: usize,
    fleet: &str,
    width: usize,
) -> anyhow::Result<String> {
    let url = healthprobe::store::fresh_database(admin, name).await?;
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    store.create_runtime_records().await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(store.pool())
        .await?;
    let games: Vec<(String, String)> = (1..=records)
        .map(|i| {
            let id = format!("{FLEET_PREFIX}{i:0width$}");
            let endpoint = format!("{fleet}/e/{id}");
            (id, endpoint)
        })
        .collect();
    store.register_running(&games).await?;
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    store.pool().close().await;
    Ok(url)
}

fn run_child(
    url: &str,
    records: usize,
    concurrency: usize,
    ticks: usize,
    spread: f64,
    interval: &str,
    fleet: &str,
) -> anyhow::Result<PointResult> {
    // HEALTHPROBE_BENCH_PERF=1 records a CPU profile of each child (perf, software clock).
    let mut command = match std::env::var_os("HEALTHPROBE_BENCH_PERF") {
        Some(_) => {
            let mut perf = Command::new("perf");
            perf.args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-o"])
                .arg(format!(
                    "target/bench/perf-{records}-{concurrency}-{spread}.data"
                ))
                .arg("--")
                .arg(std::env::current_exe()?);
            perf
        }
        None => Command::new(std::env::current_exe()?),
    };
    let output = command
        .env("HP_BENCH_CHILD", "1")
        .env("HP_BENCH_CHILD_DB", url)
        .env("HP_BENCH_CHILD_RECORDS", records.to_string())
        .env("HP_BENCH_CHILD_CONCURRENCY", concurrency.to_string())
        .env("HP_BENCH_CHILD_TICKS", ticks.to_string())
        .env("HP_BENCH_CHILD_SPREAD", spread.to_string())
        .env("HP_BENCH_CHILD_INTERVAL", interval)
        .env("HP_BENCH_CHILD_FLEET", fleet)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("benchmark child failed for {records} records at concurrency {concurrency}");
    }
    let line = String::from_utf8_lossy(&output.stdout);
    Ok(serde_json::from_str(line.trim())?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Detection latency: one engine turns failing at a known moment; time until its
/// `probe_failed` is on the stream, with the worker's real loop and relay.
async fn detection_latency(
    bin: &str,
    admin: &str,
    nats_url: &str,
    interval: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let healthy_for = Duration::from_secs(2);
    let mut samples = Vec::new();
    for round in 0..3 {
        let fleet = start_fleet(
            bin,
            &[
                "--engines",
                "1",
                "--mix",
                "scheduled=1",
                "--schedule",
                "healthy:2s,failing:600s",
                "--prefix",
                FLEET_PREFIX,
            ],
        )
        .await?;
        let turned_failing = fleet.started + healthy_for;
        let url = prepare_database(
            admin,
            &format!("hp_bench_latency_{round}"),
            1,
            &fleet.base,
            3,
        )
        .await?;
        let store = Store::connect(&url).await?;
        let client = jetstream::connect(nats_url, true).await?;
        let js = jetstream::context(client.clone());
        let target = StreamTarget {
            stream: format!("HP_BENCH_LATENCY_{round}"),
            subject_prefix: format!("hp.bench.latency.{round}"),
            duplicate_window: healthprobe::events::jetstream::DEFAULT_DEDUP_WINDOW,
            max_age: healthprobe::events::jetstream::DEFAULT_MAX_AGE,
        };
        let _ = js.delete_stream(&target.stream).await;
        let stream = jetstream::ensure_stream(&js, &target).await?;
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let relay = tokio::spawn(
            Relay::new(
                store.clone(),
                client,
                target.clone(),
                wake.clone(),
                Metrics::noop(),
            )
            .run(stop.clone()),
        );
        let worker = Worker::new(
            store.clone(),
            Prober::new(Duration::from_secs(2), interval)?,
            WorkerSettings {
                thresholds: Thresholds::default(),
                max_concurrency: 16,
                spread_window: Duration::ZERO,
            },
            Metrics::noop(),
            wake,
        );
        let run = tokio::spawn(worker::run(
            worker,
            interval,
            stop.clone(),
            StatusBoard::new(interval),
        ));
        let mut stream = stream;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if stream.info().await?.state.messages > 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("no probe_failed within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(Instant::now().saturating_duration_since(turned_failing));
        stop.cancel();
        let _ = run.await;
        let _ = relay.await;
        drop(fleet);
    }
    Ok(samples)
}

async fn orchestrate() -> anyhow::Result<()> {
    healthprobe::install_crypto_provider();
    let admin = std::env::var("HEALTHPROBE_BENCH_DATABASE_URL")
        .context("HEALTHPROBE_BENCH_DATABASE_URL (scripts/bench.sh sets it)")?;
    let nats_url = env_or("HEALTHPROBE_BENCH_NATS_URL", "nats://127.0.0.1:4222");
    let bin = env_or("HEALTHPROBE_BENCH_BIN", "target/release/healthprobe");
    let record_counts = env_list("HEALTHPROBE_BENCH_RECORDS", "1000,10000,100000");
    let concurrencies = env_list("HEALTHPROBE_BENCH_CONCURRENCY", "16,64,256,1024");
    let ticks: usize = env_or("HEALTHPROBE_BENCH_TICKS", "5").parse()?;
    let max_records = *record_counts.iter().max().unwrap();
    let fleet = start_fleet(
        &bin,
        &[
            "--engines",
            &max_records.to_string(),
            "--mix",
            "healthy=1",
            "--prefix",
            FLEET_PREFIX,
        ],
    )
    .await?;
    let width = max_records.to_string().len().max(3);
    let wrk_url = format!("{}/e/{FLEET_PREFIX}{:0width$}/healthz", fleet.base, 1);

    println!(
        "| records | concurrency | tick median | tick p99 | probes/s | wrk req/s | ratio | CPU µs/probe | peak RSS | SQL/tick |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &records in &record_counts {
        // Records point at the first `records` engines of the big fleet (same width).
        let url = prepare_database(
            &admin,
            &format!("hp_bench_{records}"),
            records,
            &fleet.base,
            width,
        )
        .await?;
        for &concurrency in &concurrencies {
            let point = run_child(&url, records, concurrency, ticks, 0.0, "15s", &fleet.base)?;
            let wrk_rps = wrk(&wrk_url, concurrency)?;
            let mut sorted = point.tick_secs.clone();
            sorted.sort_by(f64::total_cmp);
            let median = percentile(&sorted, 0.5);
            let p99 = percentile(&sorted, 0.99);
            let measured: f64 = point.tick_secs.iter().sum();
            let rate = point.probes as f64 / measured;
            let sql: Vec<String> = point
                .statements_per_tick
                .iter()
                .map(i64::to_string)
                .collect();
            println!(
                "| {records} | {concurrency} | {:.3} s | {:.3} s | {:.0} | {:.0} | {:.0} % | {:.1} | {:.1} MiB | {} |",
                median,
                p99,
                rate,
                wrk_rps,
                100.0 * rate / wrk_rps,
                point.cpu_ns as f64 / point.probes as f64 / 1000.0,
                point.peak_rss_kib as f64 / 1024.0,
                sql.join(", ")
            );
        }
    }

    drop(fleet);

    // Load shape: the fleet's peak requests in flight during a tick, with and without
    // spread. Engines answer after 50 ms, so a burst shows as `concurrency` in flight.
    let shape_records = 1_000;
    let slow = start_fleet(
        &bin,
        &[
            "--engines",
            &shape_records.to_string(),
            "--mix",
            "slow=1",
            "--slow-delay",
            "50ms",
            "--prefix",
            FLEET_PREFIX,
        ],
    )
    .await?;
    let url = prepare_database(
        &admin,
        "hp_bench_shape",
        shape_records,
        &slow.base,
        shape_records.to_string().len().max(3),
    )
    .await?;
    println!();
    println!("| records | concurrency | interval | spread | tick median | fleet peak in flight |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for spread in [0.0, 0.5, 0.9] {
        let point = run_child(&url, shape_records, 256, 3, spread, "2s", &slow.base)?;
        let mut sorted = point.tick_secs.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "| {shape_records} | 256 | 2 s | {spread} | {:.3} s | {} |",
            percentile(&sorted, 0.5),
            point
                .fleet_peak_in_flight
                .map_or("n/a".into(), |p| p.to_string())
        );
    }
    drop(slow);

    let interval = Duration::from_secs(1);
    let latencies = detection_latency(&bin, &admin, &nats_url, interval).await?;
    let bound = interval * 3 + Duration::from_secs(2) + Duration::from_millis(100);
    println!();
    println!(
        "detection latency (threshold 3, interval 1 s, timeout 2 s; bound {:?}): {}",
        bound,
        latencies
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: the harness
    // needs its servers and minutes of time, so it only runs when asked for.
    let is_child = std::env::var_os("HP_BENCH_CHILD").is_some();
    if !is_child && !std::env::args().any(|a| a == "--bench") {
        println!("the benchmark harness runs with scripts/bench.sh (cargo bench --bench tick)");
        return Ok(());
    }
    // HEALTHPROBE_BENCH_WORKER_THREADS sizes the measured worker's runtime (default: as in
    // production, one thread per core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if is_child
        && let Some(threads) = std::env::var("HEALTHPROBE_BENCH_WORKER_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
    {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build()?;
    if is_child {
        runtime.block_on(child())
    } else {
        runtime.block_on(orchestrate())
    }
}
