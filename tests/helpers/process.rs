//! Real processes: the healthprobe binary, and a NATS server a test can stop and restart.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{TestEnv, WAIT_LIMIT, wait_for};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_healthprobe")
}

/// Where a test process writes its log, kept for a failed test's post-mortem.
pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir.join(format!("{name}.log"))
}

pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// `GET http://{addr}{path}`: the status code and the body, or `None` while nothing
/// answers there.
pub async fn get_text(addr: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}

/// `GET http://{addr}{path}` as JSON, or `None` while nothing answers there or the body is
/// not JSON.
pub async fn get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    let (_, body) = get_text(addr, path).await?;
    serde_json::from_str(&body).ok()
}

/// A `healthprobe run` process. Killed when dropped.
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

/// `healthprobe run` as the tests start it: on `env`'s database and stream with `settings`
/// on top, the status port at `http_addr`, stderr to a log of its own (its path returned),
/// no exporter, killed on drop. `launcher` runs the binary inside something (such as
/// `ip netns exec NAME`); empty, the binary runs directly.
pub fn worker_command(
    env: &TestEnv,
    name: &str,
    launcher: &[&str],
    http_addr: &str,
    settings: &[(&str, &str)],
) -> (Command, PathBuf) {
    let log = log_path(&format!("{}-{name}", env.id));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open worker log");
    let mut command = match launcher.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary());
            command
        }
        None => Command::new(binary()),
    };
    command
        .arg("run")
        .envs(env.process_env())
        .env("RUST_LOG", "info,healthprobe=debug")
        .env("HEALTHPROBE_HTTP_ADDR", http_addr)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true);
    for (key, value) in settings {
        command.env(key, value);
    }
    (command, log)
}

impl WorkerProcess {
    pub fn spawn(env: &TestEnv, name: &str, settings: &[(&str, &str)]) -> Self {
        Self::spawn_with_nofile(env, name, settings, None)
    }

    /// Like [`WorkerProcess::spawn`], with `RLIMIT_NOFILE` set to `nofile` (soft and hard),
    /// as `ulimit -n` would before the exec: the worker cannot raise it.
    pub fn spawn_with_nofile(
        env: &TestEnv,
        name: &str,
        settings: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Self {
        let (mut command, log) = worker_command(env, name, &[], "127.0.0.1:0", settings);
        if let Some(nofile) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
            unsafe {
                command.pre_exec(move || rlimit::Resource::NOFILE.set(nofile, nofile));
            }
        }
        let child = command.spawn().expect("spawn healthprobe run");
        Self { child, log }
    }

    /// The status address the worker logged once it was listening.
    pub async fn status_addr(&self) -> String {
        wait_for("the status address in the log", WAIT_LIMIT, || async {
            let log = self.log_text();
            let line = log
                .lines()
                .find(|l| l.contains("status endpoints listening"))?;
            Some(
                line.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_owned(),
            )
        })
        .await
    }

    /// Open descriptors and resident memory (KiB) of the process, from /proc.
    pub fn descriptors_and_rss(&self) -> (usize, u64) {
        let pid = self.pid();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0);
        (fds, rss)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL the worker");
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        signal(self.pid(), "TERM");
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker did not exit within {limit:?} of SIGTERM; log: {}",
                    self.log_text()
                )
            })
            .expect("wait for the worker");
        (status, started.elapsed())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A NATS server (JetStream on, data in a directory of its own) on a fixed loopback port,
/// so it can be stopped and started again at the same address.
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl NatsServer {
    fn executable() -> String {
        std::env::var("HEALTHPROBE_NATS_SERVER_BIN")
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| {
                ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
                    .into_iter()
                    .find(|p| std::path::Path::new(p).exists())
                    .map(str::to_owned)
            })
            .expect("this test runs a NATS server of its own: install nats-server (scripts/test.sh does) or set HEALTHPROBE_NATS_SERVER_BIN")
    }

    pub async fn start(name: &str) -> Self {
        let port = super::free_port();
        Self::start_on(name, port).await
    }

    pub async fn start_on(name: &str, port: u16) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("nats-{name}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and data directory.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new(Self::executable())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            "the NATS server to accept connections",
            WAIT_LIMIT,
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await;
    }

    /// Kills the server outright, as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill nats-server");
            child.wait().expect("reap nats-server");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Postgres server (data in a directory of its own, loopback, fixed port) that a
/// test can stop and start again.
pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    fn bindir() -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "this test runs a Postgres of its own: install postgresql (scripts/test.sh does)",
            )
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").exists())
            .collect();
        dirs.sort();
        dirs.pop().expect("a Postgres installation with pg_ctl")
    }

    /// Runs a Postgres tool, as the `postgres` account when we are root (Postgres refuses
    /// to run as root).
    fn tool(&self, name: &str) -> std::process::Command {
        let path = self.bin.join(name);
        if is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            std::process::Command::new(path)
        }
    }

    pub async fn start(name: &str) -> Self {
        let port = super::free_port();
        // Under the system's temporary directory rather than the clone's target/: as root
        // the server runs as `postgres`, which cannot enter a clone in root's home (0700).
        let dir =
            std::env::temp_dir().join(format!("healthprobe-test-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the Postgres data directory");
        }
        let mut server = Self {
            port,
            dir,
            bin: Self::bindir(),
            running: false,
        };
        let output = server
            .tool("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
                "-D",
            ])
            .arg(&server.dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `pg_ctl -D <dir> <args>` and insists that it succeeds.
    fn pg_ctl(&self, args: &[&OsStr]) {
        let output = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn resume(&mut self) {
        // TCP only: no Unix socket directory to quote or to reach.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories= -c fsync=off -c max_connections=50",
            self.port,
        );
        let log = self.dir.join("server.log");
        self.pg_ctl(&[
            OsStr::new("-l"),
            log.as_os_str(),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new("30"),
            OsStr::new("-o"),
            OsStr::new(&options),
            OsStr::new("start"),
        ]);
        self.running = true;
    }

    /// Stops the server at once (`immediate`: no checkpoint, clients cut off), like a crash.
    pub fn crash(&mut self) {
        if !self.running {
            return;
        }
        self.pg_ctl(&["-m", "immediate", "-w", "stop"].map(OsStr::new));
        self.running = false;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .tool("pg_ctl")
                .arg("-D")
                .arg(&self.dir)
                .args(["-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `healthprobe tail --from-start` process reading this test's stream, its stdout as lines.
pub struct TailProcess {
    child: Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl TailProcess {
    pub fn spawn(env: &TestEnv, nats_url: &str) -> Self {
        let mut child = Command::new(binary())
            .args(["tail", "--from-start"])
            .envs(env.process_env())
            .env("NATS_URL", nats_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn healthprobe tail");
        let stdout = child.stdout.take().expect("tail's stdout");
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        Self { child, lines }
    }

    /// The next line, which must be one JSON envelope, within [`WAIT_LIMIT`].
    pub async fn next_envelope(&mut self) -> healthprobe::envelope::Envelope {
        let line = tokio::time::timeout(WAIT_LIMIT, self.lines.next_line())
            .await
            .expect("tail printed the next event in time")
            .expect("read tail's output")
            .expect("tail still running");
        serde_json::from_str(&line).expect("a JSON envelope per line")
    }

    /// Sends SIGINT (Ctrl-C) and waits at most 5 s for the exit.
    pub async fn interrupt(mut self) -> ExitStatus {
        signal(self.child.id().expect("tail still running"), "INT");
        tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .expect("tail exits on Ctrl-C")
            .expect("wait for tail")
    }
}
