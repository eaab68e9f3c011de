//! The fleet harness: `healthprobe run` and the Go worker (`../shared/peer/go`), as users run
//! them, probing nginx, side by side in the same run, with wrk against the same nginx as the
//! machine's ceiling. Run it with `scripts/bench.sh fleet`, which creates a network namespace
//! with nginx on `0.0.0.0`, Postgres and NATS in it, and runs this program inside it.
//!
//! For each mode (`one`: every engine at `127.0.0.1`; `distinct`: every engine at its own
//! `127.x.y.z`) and each fleet size, a database of running records pointing at nginx is
//! made once; then each round starts the workers one after the other (the order alternates
//! between rounds), each a fresh process with a fresh snapshot table, for a number of ticks,
//! and wrk once. A worker process is watched from outside, as an operator would:
//!
//! - a tick is read from the worker's own log line (`tick done` of healthprobe, at debug
//!   level for that one target; `tick records=N duration_ms=X` of the Go worker), with its
//!   duration as the worker measured it;
//! - CPU is the whole process's user + system time (`/proc/PID/stat`, every thread, living or
//!   not) between one tick's line and the next one's: the tick and the idle time after the
//!   previous one. The first tick's CPU counts from the process's start (start-up included);
//! - memory is the process's peak RSS (`VmHWM`) at the end of the run; descriptors are the
//!   entries of `/proc/PID/fd` at each tick's end.
//!
//! *First* is the first tick (no connections yet; healthprobe creates every snapshot row);
//! *steady* is the third tick and later (connections warm), added up over those ticks.
//!
//! Variables (defaults in brackets): `HEALTHPROBE_BENCH_FLEET_MODES` [`one,distinct`],
//! `HEALTHPROBE_BENCH_FLEET_ENGINES` [`1000,10000,100000`], `HEALTHPROBE_BENCH_FLEET_CONCURRENCY`
//! [256], `HEALTHPROBE_BENCH_FLEET_ROUNDS` [3], `HEALTHPROBE_BENCH_FLEET_TICKS` [5: the first,
//! the second, three steady], `HEALTHPROBE_BENCH_FLEET_INTERVAL` [`1s`; longer ticks run back
//! to back], `HEALTHPROBE_BENCH_FLEET_WORKERS` [`healthprobe,go`; with
//! `HEALTHPROBE_BENCH_BIN_B`, `healthprobe,healthprobe-b,go`], `HEALTHPROBE_BENCH_BIN_B`
//! [unset; another healthprobe binary, run as the worker `healthprobe-b` in the same rounds:
//! an A/B of two builds, alternating],
//! `HEALTHPROBE_BENCH_FLEET_NOFILE` [1024: the workers' soft descriptor limit, as a login
//! shell or a systemd service has it], `HEALTHPROBE_BENCH_PERF` [unset; `1` records a perf
//! profile of healthprobe's steady ticks, `target/bench/perf-fleet-*.data`; those runs'
//! figures carry the profiler's cost], `HEALTHPROBE_BENCH_PERF_CALL_GRAPH` [`dwarf,16384`:
//! the release build has no frame pointers]. Set by `scripts/bench.sh`:
//! `HEALTHPROBE_BENCH_DATABASE_URL`, `HEALTHPROBE_BENCH_NATS_URL`, `HEALTHPROBE_BENCH_BIN`,
//! `HEALTHPROBE_BENCH_GOPEER` (empty: no Go column), `HEALTHPROBE_BENCH_NGINX_PORT`,
//! `HEALTHPROBE_BENCH_OUT` (every tick of every run as JSON lines).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use healthprobe::store::Store;
use serde::Serialize;
use sqlx::Connection as _;

const ENGINE_PREFIX: &str = "e";

/// Linux reports `/proc/PID/stat` times in these units (`USER_HZ`, 100 on every platform
/// Linux supports today).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A run that has not logged its ticks within (ticks × (interval + this)) is given up.
const TICK_ALLOWANCE: Duration = Duration::from_secs(120);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    env_or(name, default)
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    One,
    Distinct,
}

impl Mode {
    fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "one" => Ok(Self::One),
            "distinct" => Ok(Self::Distinct),
            other => bail!("HEALTHPROBE_BENCH_FLEET_MODES: unknown mode {other:?} (one, distinct)"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::One => "one address",
            Self::Distinct => "distinct",
        }
    }

    /// The address of engine `index` (from 0): `127.0.0.1`, or its own `127.a.b.c` with
    /// `a` from 1, `c` in 1..=254 (no `.0` or `.255` anywhere a reader might stumble).
    fn address(self, index: usize) -> String {
        match self {
            Self::One => "127.0.0.1".to_owned(),
            Self::Distinct => {
                let host = index % 254 + 1;
                let rest = index / 254;
                format!("127.{}.{}.{host}", 1 + rest / 256, rest % 256)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum WorkerKind {
    Healthprobe,
    /// A second healthprobe binary (`HEALTHPROBE_BENCH_BIN_B`): A/B comparisons.
    #[serde(rename = "healthprobe-b")]
    HealthprobeB,
    Go,
}

impl WorkerKind {
    fn label(self) -> &'static str {
        match self {
            Self::Healthprobe => "healthprobe",
            Self::HealthprobeB => "healthprobe B",
            Self::Go => "Go worker",
        }
    }
}

/// One tick as seen from outside the worker.
#[derive(Debug, Clone, Serialize)]
struct TickSample {
    records: usize,
    probes: usize,
    failed: usize,
    duration_s: f64,
    /// User + system time since the previous tick's line (the first: since start).
    cpu_s: f64,
    rss_kib: u64,
    fds: usize,
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    mode: Mode,
    engines: usize,
    concurrency: usize,
    round: usize,
    worker: WorkerKind,
    ticks: Vec<TickSample>,
    peak_rss_kib: u64,
}

impl RunResult {
    fn first(&self) -> &TickSample {
        &self.ticks[0]
    }

    fn steady(&self) -> &[TickSample] {
        &self.ticks[2.min(self.ticks.len() - 1)..]
    }

    fn steady_rate(&self) -> f64 {
        let probes: usize = self.steady().iter().map(|t| t.probes).sum();
        let secs: f64 = self.steady().iter().map(|t| t.duration_s).sum();
        probes as f64 / secs
    }

    fn steady_cpu_us_per_probe(&self) -> f64 {
        let probes: usize = self.steady().iter().map(|t| t.probes).sum();
        let cpu: f64 = self.steady().iter().map(|t| t.cpu_s).sum();
        cpu * 1e6 / probes as f64
    }

    fn first_rate(&self) -> f64 {
        self.first().probes as f64 / self.first().duration_s
    }

    fn failed(&self) -> usize {
        self.ticks.iter().map(|t| t.failed).sum()
    }

    fn max_fds(&self) -> usize {
        self.ticks.iter().map(|t| t.fds).max().unwrap_or(0)
    }
}

/// `(user + system seconds, VmRSS KiB, open descriptors)` of a process.
fn process_sample(pid: u32) -> (f64, u64, usize) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let cpu = stat
        .rfind(')')
        .map(|end| {
            let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
            // Fields 14 and 15 of stat(5) (utime, stime); field 3 is fields[0] here.
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (ticks(11) + ticks(12)) as f64 / CLOCK_TICKS_PER_SEC
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (cpu, status_kib(pid, "VmRSS:"), fds)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Parses a Rust `Debug` duration as tracing prints it (`238.5ms`, `2.1s`, `950µs`).
fn parse_debug_duration(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(value * scale)
}

/// What a tick line says, before the process is sampled.
struct TickLine {
    records: usize,
    probes: usize,
    failed: Option<usize>,
    duration_s: f64,
}

/// healthprobe (JSON log lines): `{"fields":{"message":"tick done","records":..,...}}`.
fn parse_healthprobe_line(line: &str) -> Option<TickLine> {
    if !line.contains("tick done") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "tick done" {
        return None;
    }
    Some(TickLine {
        records: fields.get("records")?.as_u64()? as usize,
        probes: fields.get("probes")?.as_u64()? as usize,
        failed: Some(fields.get("failed")?.as_u64()? as usize),
        duration_s: parse_debug_duration(fields.get("duration")?.as_str()?)?,
    })
}

/// The Go worker: `tick records=N duration_ms=X` (it probes every record it lists).
fn parse_go_line(line: &str) -> Option<TickLine> {
    let rest = line.strip_prefix("tick records=")?;
    let (records, rest) = rest.split_once(' ')?;
    let records: usize = records.parse().ok()?;
    let duration_ms: f64 = rest.strip_prefix("duration_ms=")?.trim().parse().ok()?;
    Some(TickLine {
        records,
        probes: records,
        failed: None,
        duration_s: duration_ms / 1000.0,
    })
}

/// A Go worker log line for one failed probe (`PROBE_DEBUG=1` logs every one).
fn is_go_failure_line(line: &str) -> bool {
    line.contains("msg=\"probe failure\"") || line.contains("event_type=probe_failed")
}

enum Seen {
    Tick(TickSample),
    /// The log ended (the process exited or closed stderr); the last lines, for the error.
    Ended(Vec<String>),
}

/// Reads the worker's log on a thread, sampling the process the moment a tick line arrives.
fn watch_log(child: &mut Child, kind: WorkerKind) -> mpsc::Receiver<Seen> {
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut last_cpu = 0.0;
        let mut go_failures = 0;
        let mut tail: VecDeque<String> = VecDeque::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let tick = match kind {
                WorkerKind::Healthprobe | WorkerKind::HealthprobeB => parse_healthprobe_line(&line),
                WorkerKind::Go => {
                    if is_go_failure_line(&line) {
                        go_failures += 1;
                    }
                    parse_go_line(&line)
                }
            };
            match tick {
                Some(tick) => {
                    let (cpu, rss_kib, fds) = process_sample(pid);
                    let failed = tick.failed.unwrap_or(go_failures);
                    go_failures = 0;
                    let sample = TickSample {
                        records: tick.records,
                        probes: tick.probes,
                        failed,
                        duration_s: tick.duration_s,
                        cpu_s: cpu - last_cpu,
                        rss_kib,
                        fds,
                    };
                    last_cpu = cpu;
                    if tx.send(Seen::Tick(sample)).is_err() {
                        return;
                    }
                }
                None => {
                    // Bounded: hostile or chatty output cannot grow this.
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(line.chars().take(300).collect());
                }
            }
        }
        let _ = tx.send(Seen::Ended(tail.into()));
    });
    rx
}

struct Settings {
    bin: String,
    bin_b: Option<String>,
    gopeer: Option<String>,
    nats_url: String,
    nginx_port: u16,
    concurrency: usize,
    ticks: usize,
    interval: String,
    interval_dur: Duration,
    nofile: String,
    perf: bool,
}

/// Stops a child with SIGTERM (the workers' clean shutdown), SIGKILL after 10 s.
fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts one worker, waits for its ticks, stops it.
fn run_worker(
    settings: &Settings,
    kind: WorkerKind,
    database_url: &str,
    mode: Mode,
    engines: usize,
    round: usize,
) -> anyhow::Result<RunResult> {
    // The soft descriptor limit a user's shell or service gives a process; each worker may
    // raise it to the hard limit itself (Go does at start).
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -Sn \"$0\" && exec \"$@\"", &settings.nofile]);
    match kind {
        WorkerKind::Healthprobe | WorkerKind::HealthprobeB => {
            let bin = match kind {
                WorkerKind::HealthprobeB => settings.bin_b.as_deref().expect("B binary given"),
                _ => &settings.bin,
            };
            command
                .arg(bin)
                .arg("run")
                .env("DATABASE_URL", database_url)
                .env("NATS_URL", &settings.nats_url)
                .env("HEALTHPROBE_HTTP_ADDR", "127.0.0.1:28097")
                .env("HEALTHPROBE_LOG_FORMAT", "json")
                // Production's info level, plus the worker's one debug line per tick.
                .env("RUST_LOG", "info,healthprobe::worker=debug")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        WorkerKind::Go => {
            command
                .arg(settings.gopeer.as_deref().expect("Go worker built"))
                .env("DATABASE_URL", database_url)
                .env("NATS_URL", &settings.nats_url)
                .env("PROBE_FIRST_TICK_IMMEDIATE", "1")
                .env("PROBE_DEBUG", "1");
        }
    }
    let mut child = command
        .env("RTMANAGER_PROBE_INTERVAL", &settings.interval)
        .env(
            "RTMANAGER_PROBE_MAX_CONCURRENCY",
            settings.concurrency.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", kind.label()))?;
    let seen = watch_log(&mut child, kind);
    let deadline =
        Instant::now() + (settings.interval_dur + TICK_ALLOWANCE) * settings.ticks as u32;
    let mut ticks = Vec::new();
    let mut perf: Option<Child> = None;
    let outcome = loop {
        if ticks.len() == settings.ticks {
            break Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(Seen::Tick(tick)) => {
                ticks.push(tick);
                // Profile the steady ticks only: from the second tick's end to the last's.
                if settings.perf && kind == WorkerKind::Healthprobe && ticks.len() == 2 {
                    perf = Some(start_perf(child.id(), mode, engines, round)?);
                }
            }
            Ok(Seen::Ended(tail)) => {
                break Err(anyhow::anyhow!(
                    "{} ended after {} ticks; its last lines:\n{}",
                    kind.label(),
                    ticks.len(),
                    tail.join("\n")
                ));
            }
            Err(_) => {
                break Err(anyhow::anyhow!(
                    "{} logged {} of {} ticks in time",
                    kind.label(),
                    ticks.len(),
                    settings.ticks
                ));
            }
        }
    };
    if let Some(mut perf) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    let peak_rss_kib = status_kib(child.id(), "VmHWM:");
    stop_child(&mut child);
    outcome?;
    Ok(RunResult {
        mode,
        engines,
        concurrency: settings.concurrency,
        round,
        worker: kind,
        ticks,
        peak_rss_kib,
    })
}

fn start_perf(pid: u32, mode: Mode, engines: usize, round: usize) -> anyhow::Result<Child> {
    let mode = match mode {
        Mode::One => "one",
        Mode::Distinct => "distinct",
    };
    let call_graph = env_or("HEALTHPROBE_BENCH_PERF_CALL_GRAPH", "dwarf,16384");
    Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "--call-graph",
        ])
        .arg(call_graph)
        .arg("-o")
        .arg(format!(
            "target/bench/perf-fleet-{mode}-{engines}-{round}.data"
        ))
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf (Debian's linux-perf)")
}

/// `wrk` with `connections` connections for 3 s against one engine; requests per second.
fn wrk(url: &str, connections: usize) -> anyhow::Result<f64> {
    let output = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string(), "-d", "3s", url])
        .output()
        .context("running wrk (Debian's wrk; scripts/bench.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

/// A fresh database with `engines` running games, engine `i` at `mode.address(i)`.
async fn prepare_database(
    admin: &str,
    name: &str,
    mode: Mode,
    engines: usize,
    port: u16,
) -> anyhow::Result<String> {
    let url = healthprobe::store::fresh_database(admin, name).await?;
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    store.create_runtime_records().await?;
    let width = engines.to_string().len();
    let games: Vec<(String, String)> = (0..engines)
        .map(|i| {
            let id = format!("{ENGINE_PREFIX}{:0width$}", i + 1);
            let endpoint = format!("http://{}:{port}/e/{id}", mode.address(i));
            (id, endpoint)
        })
        .collect();
    for chunk in games.chunks(10_000) {
        store.register_running(chunk).await?;
    }
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    store.pool().close().await;
    Ok(url)
}

/// Each run starts as a first start would: no snapshot rows, no events.
async fn reset_database(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::postgres::PgConnection::connect(url).await?;
    sqlx::raw_sql("TRUNCATE health_snapshots, health_events CASCADE")
        .execute(&mut conn)
        .await
        .context(
            "emptying health_snapshots and health_events (and the set-aside rows naming them)",
        )?;
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: the harness
    // needs its namespace, servers and minutes of time, so it only runs when asked for.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the fleet harness runs with scripts/bench.sh fleet");
        return Ok(());
    }
    healthprobe::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = std::env::var("HEALTHPROBE_BENCH_DATABASE_URL")
        .context("HEALTHPROBE_BENCH_DATABASE_URL (scripts/bench.sh sets it)")?;
    let interval = env_or("HEALTHPROBE_BENCH_FLEET_INTERVAL", "1s");
    let settings = Settings {
        bin: env_or("HEALTHPROBE_BENCH_BIN", "target/release/healthprobe"),
        bin_b: std::env::var("HEALTHPROBE_BENCH_BIN_B")
            .ok()
            .filter(|v| !v.is_empty()),
        gopeer: std::env::var("HEALTHPROBE_BENCH_GOPEER")
            .ok()
            .filter(|v| !v.is_empty()),
        nats_url: env_or("HEALTHPROBE_BENCH_NATS_URL", "nats://127.0.0.1:4222"),
        nginx_port: env_or("HEALTHPROBE_BENCH_NGINX_PORT", "8080").parse()?,
        concurrency: env_or("HEALTHPROBE_BENCH_FLEET_CONCURRENCY", "256").parse()?,
        ticks: env_or("HEALTHPROBE_BENCH_FLEET_TICKS", "5")
            .parse::<usize>()?
            .max(3),
        interval_dur: humantime::parse_duration(&interval)
            .context("HEALTHPROBE_BENCH_FLEET_INTERVAL")?,
        interval,
        nofile: env_or("HEALTHPROBE_BENCH_FLEET_NOFILE", "1024"),
        perf: std::env::var_os("HEALTHPROBE_BENCH_PERF").is_some(),
    };
    let modes = env_list("HEALTHPROBE_BENCH_FLEET_MODES", "one,distinct")
        .iter()
        .map(|m| Mode::parse(m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sizes = env_list("HEALTHPROBE_BENCH_FLEET_ENGINES", "1000,10000,100000")
        .iter()
        .map(|v| {
            v.parse::<usize>()
                .with_context(|| format!("engine count {v:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rounds: usize = env_or("HEALTHPROBE_BENCH_FLEET_ROUNDS", "3").parse()?;
    let mut workers = Vec::new();
    let default_workers = if settings.bin_b.is_some() {
        "healthprobe,healthprobe-b,go"
    } else {
        "healthprobe,go"
    };
    for name in env_list("HEALTHPROBE_BENCH_FLEET_WORKERS", default_workers) {
        match name.as_str() {
            "healthprobe" => workers.push(WorkerKind::Healthprobe),
            "healthprobe-b" if settings.bin_b.is_some() => workers.push(WorkerKind::HealthprobeB),
            "healthprobe-b" => bail!(
                "HEALTHPROBE_BENCH_FLEET_WORKERS: healthprobe-b needs HEALTHPROBE_BENCH_BIN_B"
            ),
            "go" if settings.gopeer.is_some() => workers.push(WorkerKind::Go),
            "go" => eprintln!("fleet: no Go worker built; its runs are left out"),
            other => bail!("HEALTHPROBE_BENCH_FLEET_WORKERS: unknown worker {other:?}"),
        }
    }
    let mut out = match std::env::var("HEALTHPROBE_BENCH_OUT") {
        Ok(path) if !path.is_empty() => {
            Some(std::fs::File::create(&path).with_context(|| format!("creating {path}"))?)
        }
        _ => None,
    };
    let wrk_url = format!(
        "http://127.0.0.1:{}/e/{ENGINE_PREFIX}1/healthz",
        settings.nginx_port
    );

    println!(
        "concurrency {}, interval {}, {} ticks per run (steady: the 3rd on), {} rounds (medians), workers' soft descriptor limit {}",
        settings.concurrency, settings.interval, settings.ticks, rounds, settings.nofile
    );
    println!();
    println!(
        "| mode | engines | worker | first tick | first probes/s | steady tick | steady probes/s | CPU µs/probe (steady) | peak RSS | max fds | failed probes | steady × Go | first × Go | steady × wrk |"
    );
    println!(
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &mode in &modes {
        for &engines in &sizes {
            let name = format!(
                "hp_fleet_{}_{engines}",
                match mode {
                    Mode::One => "one",
                    Mode::Distinct => "distinct",
                }
            );
            let url = runtime.block_on(prepare_database(
                &admin,
                &name,
                mode,
                engines,
                settings.nginx_port,
            ))?;
            let mut results: Vec<RunResult> = Vec::new();
            let mut wrk_rates = Vec::new();
            for round in 1..=rounds {
                let mut order = workers.clone();
                if round % 2 == 0 {
                    order.reverse();
                }
                for &kind in &order {
                    runtime.block_on(reset_database(&url))?;
                    let result = run_worker(&settings, kind, &url, mode, engines, round)?;
                    if let Some(out) = out.as_mut() {
                        writeln!(out, "{}", serde_json::to_string(&result)?)?;
                    }
                    eprintln!(
                        "fleet: {} {engines} round {round} {}: first {:.3} s, steady {:.0} probes/s, {:.1} µs/probe, peak RSS {:.1} MiB, {} failed",
                        mode.label(),
                        kind.label(),
                        result.first().duration_s,
                        result.steady_rate(),
                        result.steady_cpu_us_per_probe(),
                        result.peak_rss_kib as f64 / 1024.0,
                        result.failed()
                    );
                    results.push(result);
                }
                wrk_rates.push(wrk(&wrk_url, settings.concurrency)?);
            }
            let wrk_rate = median(wrk_rates);
            let of = |kind: WorkerKind, f: &dyn Fn(&RunResult) -> f64| {
                median(results.iter().filter(|r| r.worker == kind).map(f).collect())
            };
            let go_steady = of(WorkerKind::Go, &RunResult::steady_rate);
            let go_first = of(WorkerKind::Go, &RunResult::first_rate);
            for &kind in &workers {
                let steady = of(kind, &RunResult::steady_rate);
                let first = of(kind, &RunResult::first_rate);
                let ratio = |a: f64, b: f64| {
                    if b.is_finite() && b > 0.0 && kind != WorkerKind::Go {
                        format!("{:.2}", a / b)
                    } else {
                        "".to_owned()
                    }
                };
                println!(
                    "| {} | {engines} | {} | {:.3} s | {:.0} | {:.3} s | {:.0} | {:.1} | {:.1} MiB | {:.0} | {:.0} | {} | {} | {:.2} |",
                    mode.label(),
                    kind.label(),
                    of(kind, &|r| r.first().duration_s),
                    first,
                    of(kind, &|r| median(
                        r.steady().iter().map(|t| t.duration_s).collect()
                    )),
                    steady,
                    of(kind, &RunResult::steady_cpu_us_per_probe),
                    of(kind, &|r| r.peak_rss_kib as f64) / 1024.0,
                    of(kind, &|r| r.max_fds() as f64),
                    of(kind, &|r| r.failed() as f64),
                    ratio(steady, go_steady),
                    ratio(first, go_first),
                    steady / wrk_rate,
                );
            }
            println!(
                "| {} | {engines} | wrk (one address, {} connections, 3 s) | | | | {:.0} | | | | | | | 1.00 |",
                mode.label(),
                settings.concurrency,
                wrk_rate
            );
        }
    }
    Ok(())
}
