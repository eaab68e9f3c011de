//! Command line and environment (DESIGN §6, §7).
//!
//! Every variable is also a flag. Values are validated while parsing, so a bad value stops
//! start-up with a message naming the variable before anything is touched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
use clap::Parser;
use clap::{Args, Subcommand};

use crate::hysteresis::Thresholds;

mod values;
use crate::probe::spec::{ExpectedStatuses, ProbeHeaders, ProbeSpec};
pub(crate) use values::{
    boolean, duration_or_zero, non_empty, positive_duration, positive_u32, readable_file,
};
use values::{
    cloudevents_source, concurrency, http_connections, http_token, probe_expect, probe_headers,
    probe_path, replica_id, socket_addr, spread, stream_name, subject_prefix,
};

/// Upper bound for `RTMANAGER_PROBE_MAX_CONCURRENCY`: beyond this the worker would run out
/// of file descriptors long before it gained anything.
pub(crate) const MAX_CONCURRENCY_LIMIT: usize = 65_536;

/// The worker's commands on their own, as the tests parse them. The binary's parser
/// (`main.rs`) wraps [`Command`] and adds the simulator's `fleet` with the `sim` feature.
#[cfg(test)]
#[derive(Debug, Parser)]
#[command(name = "healthprobe")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations and exit.
    Migrate(MigrateArgs),
    /// Apply pending migrations, then probe engines until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Print the health events from the stream as JSON lines until Ctrl-C.
    Tail(TailArgs),
    /// Print the per-game health of the running games (a table, or JSON with --json).
    Status(StatusArgs),
    /// Manage outbox rows the relay set aside: list, retry or discard them.
    Outbox(OutboxArgs),
}

#[derive(Debug, Clone, Args)]
pub struct OutboxArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(subcommand)]
    pub action: OutboxAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum OutboxAction {
    /// List the rows set aside (event id, game, type, attempts, when, why).
    List {
        /// Also rows already retried or discarded.
        #[arg(long)]
        all: bool,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// At most this many rows.
        #[arg(long, default_value = "1000", value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        limit: i64,
    },
    /// Give set-aside rows back to the relay (set aside again if they still fail).
    Retry(OutboxSelection),
    /// Never publish these set-aside rows; they stay in the event log.
    Discard(OutboxSelection),
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct OutboxSelection {
    /// Event ids of set-aside rows.
    #[arg(value_name = "EVENT_ID")]
    pub event_ids: Vec<uuid::Uuid>,
    /// Every row currently set aside.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print JSON (the same objects as `GET /games`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only games with this status: unknown, healthy, suspect, failing or disabled.
    #[arg(long, value_parser = ["unknown", "healthy", "suspect", "failing", "disabled"])]
    pub status: Option<String>,
    /// Only games whose id matches this glob (`*` any run, `?` one character).
    #[arg(long)]
    pub game_id: Option<String>,
    /// Print the replicas (membership table) instead of the games.
    #[arg(long, conflicts_with_all = ["status", "game_id"])]
    pub members: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL (JetStream must be enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[command(flatten)]
    pub auth: NatsAuthArgs,
    /// JetStream stream that holds the health events.
    #[arg(long, env = "HEALTHPROBE_STREAM", default_value = "RUNTIME_HEALTH", value_parser = stream_name)]
    pub stream: String,
    /// Subject prefix; events go to `<prefix>.<event_type>`.
    #[arg(long, env = "HEALTHPROBE_SUBJECT_PREFIX", default_value = "runtime.health", value_parser = subject_prefix)]
    pub subject_prefix: String,
}

/// NATS credentials and TLS, named as the NATS clients name them (DESIGN §16). At most one
/// way to authenticate; files are checked to be readable at start-up.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsAuthArgs {
    /// Credentials file (a user JWT and its nkey seed), as `nsc` writes it.
    #[arg(long, env = "NATS_CREDS", value_parser = readable_file("NATS_CREDS"),
          conflicts_with_all = ["nats_nkey", "nats_user", "nats_token"])]
    pub nats_creds: Option<PathBuf>,
    /// File holding a user nkey seed (`SU...`).
    #[arg(long, env = "NATS_NKEY", value_parser = readable_file("NATS_NKEY"),
          conflicts_with_all = ["nats_user", "nats_token"])]
    pub nats_nkey: Option<PathBuf>,
    /// User name; needs NATS_PASSWORD.
    #[arg(long, env = "NATS_USER", requires = "nats_password", conflicts_with = "nats_token",
          value_parser = non_empty("NATS_USER"))]
    pub nats_user: Option<String>,
    /// Password of NATS_USER.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, value_parser = non_empty("NATS_TOKEN"))]
    pub nats_token: Option<String>,
    /// PEM file of the CA(s) that signed the server's certificate; set, TLS is required.
    /// Certificates are always verified.
    #[arg(long, env = "NATS_CA", value_parser = readable_file("NATS_CA"))]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients; needs NATS_KEY.
    #[arg(long, env = "NATS_CERT", value_parser = readable_file("NATS_CERT"), requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,
    /// Private key (PEM) of NATS_CERT.
    #[arg(long, env = "NATS_KEY", value_parser = readable_file("NATS_KEY"), requires = "nats_cert")]
    pub nats_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Time between ticks (humantime: 500ms, 2s, 1m).
    #[arg(long, env = "RTMANAGER_PROBE_INTERVAL", default_value = "15s",
          value_parser = positive_duration("RTMANAGER_PROBE_INTERVAL"))]
    pub probe_interval: Duration,
    /// Bound on one probe, end to end.
    #[arg(long, env = "RTMANAGER_PROBE_TIMEOUT", default_value = "2s",
          value_parser = positive_duration("RTMANAGER_PROBE_TIMEOUT"))]
    pub probe_timeout: Duration,
    /// Consecutive failures before `probe_failed`.
    #[arg(long, env = "RTMANAGER_PROBE_FAILURES_THRESHOLD", default_value = "3",
          value_parser = positive_u32("RTMANAGER_PROBE_FAILURES_THRESHOLD"))]
    pub failures_threshold: u32,
    /// Consecutive successes after a published failure before `probe_recovered`.
    #[arg(long, env = "RTMANAGER_PROBE_RECOVERY_THRESHOLD", default_value = "1",
          value_parser = positive_u32("RTMANAGER_PROBE_RECOVERY_THRESHOLD"))]
    pub recovery_threshold: u32,
    /// Probes in flight at most (default: what the descriptor limit allows, 16 to 256;
    /// see `limits::default_concurrency`).
    #[arg(long, env = "RTMANAGER_PROBE_MAX_CONCURRENCY", value_parser = concurrency)]
    pub max_concurrency: Option<usize>,
    /// The probe's path (and query), appended to the engine endpoint.
    #[arg(long, env = "RTMANAGER_PROBE_PATH", default_value = "/healthz",
          value_parser = probe_path)]
    pub probe_path: String,
    /// Statuses that mean healthy: codes and ranges, e.g. `200-299,301`.
    #[arg(long, env = "HEALTHPROBE_PROBE_EXPECT", default_value = "200",
          value_parser = probe_expect)]
    pub probe_expect: ExpectedStatuses,
    /// Extra request headers, `Name=value,Other=value` (values percent-decoded), e.g. a
    /// token the engines ask for.
    #[arg(long, env = "HEALTHPROBE_PROBE_HEADERS", hide_env_values = true,
          value_parser = probe_headers)]
    pub probe_headers: Option<ProbeHeaders>,
    /// PEM bundle of CAs trusted for `https` engines, beside the system's roots.
    /// Certificates are always verified.
    #[arg(long, env = "HEALTHPROBE_PROBE_CA", value_parser = readable_file("HEALTHPROBE_PROBE_CA"))]
    pub probe_ca: Option<PathBuf>,
    /// No probe until this long after the record's `started_at` (like Kubernetes'
    /// `initialDelaySeconds`); a record without one is probed at once. 0: no grace.
    #[arg(long, env = "RTMANAGER_PROBE_INITIAL_DELAY", default_value = "0s",
          value_parser = duration_or_zero("RTMANAGER_PROBE_INITIAL_DELAY"))]
    pub initial_delay: Duration,
    /// Fraction of the interval over which one tick's probe starts are spread evenly
    /// (0 = all at once).
    #[arg(long, env = "RTMANAGER_PROBE_SPREAD", default_value = "0", value_parser = spread)]
    pub probe_spread: f64,
}

impl ProbeArgs {
    /// The probe every game gets unless its override says otherwise.
    pub fn probe_spec(&self) -> ProbeSpec {
        ProbeSpec {
            path: self.probe_path.clone(),
            expect: self.probe_expect.clone(),
            headers: self.probe_headers.clone().unwrap_or_default(),
            timeout: self.probe_timeout,
        }
    }

    /// `RTMANAGER_PROBE_SPREAD` × interval.
    pub fn spread_window(&self) -> Duration {
        self.probe_interval.mul_f64(self.probe_spread)
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            failures: self.failures_threshold,
            recovery: self.recovery_threshold,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Address of the worker's own status endpoints.
    #[arg(long, env = "HEALTHPROBE_HTTP_ADDR", default_value = "127.0.0.1:8097",
          value_parser = socket_addr)]
    pub http_addr: SocketAddr,
    /// JetStream's duplicate window, set on the stream at start-up: the longest Postgres
    /// outage after a publish that can never produce a duplicate.
    #[arg(long, env = "HEALTHPROBE_DEDUP_WINDOW", default_value = "1h",
          value_parser = positive_duration("HEALTHPROBE_DEDUP_WINDOW"))]
    pub dedup_window: Duration,
    /// Connections the status port serves at once; beyond it the oldest is closed.
    #[arg(long, env = "HEALTHPROBE_HTTP_MAX_CONNECTIONS", default_value = "256",
          value_parser = http_connections)]
    pub http_max_connections: usize,
    /// Do not apply migrations: check that the schema is at this binary's version and stop
    /// if it is not (for platforms that run `healthprobe migrate` as a separate step, with
    /// a role that may create tables).
    #[arg(long, env = "HEALTHPROBE_NO_MIGRATE", value_parser = boolean("HEALTHPROBE_NO_MIGRATE"),
          num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub no_migrate: bool,
    /// How long the stream keeps a message (`max_age`), set when the stream is created or
    /// updated at start-up. At least HEALTHPROBE_DEDUP_WINDOW.
    #[arg(long, env = "HEALTHPROBE_STREAM_MAX_AGE", default_value = "7days",
          value_parser = positive_duration("HEALTHPROBE_STREAM_MAX_AGE"))]
    pub stream_max_age: Duration,
    /// Published events older than this are deleted from `health_events` (in small
    /// batches, by the replica that holds the relay lock); unpublished and set-aside rows
    /// never are.
    #[arg(long, env = "HEALTHPROBE_EVENT_RETENTION", default_value = "30days",
          value_parser = positive_duration("HEALTHPROBE_EVENT_RETENTION"))]
    pub event_retention: Duration,
    /// When set, every mutating request to the status port (`POST /games/{id}/probe`)
    /// needs `Authorization: Bearer <token>`; reads stay open.
    #[arg(long, env = "HEALTHPROBE_HTTP_TOKEN", hide_env_values = true,
          value_parser = http_token)]
    pub http_token: Option<String>,
    /// CloudEvents `source` of every message (`ce-source` header).
    #[arg(long, env = "HEALTHPROBE_CLOUDEVENTS_SOURCE", default_value = "healthprobe",
          value_parser = cloudevents_source)]
    pub cloudevents_source: String,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    #[command(flatten)]
    pub storm: StormArgs,
}

/// The mass-failure hold (DESIGN §15).
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// How long `probe_failed` is held when most of a replica's engines fail at once
    /// (at least half and at least 10) before the failure is taken as real (default:
    /// 2 × RTMANAGER_PROBE_INTERVAL).
    #[arg(long, env = "HEALTHPROBE_MASS_FAILURE_HOLD",
          value_parser = positive_duration("HEALTHPROBE_MASS_FAILURE_HOLD"))]
    pub mass_failure_hold: Option<Duration>,
}

impl RunArgs {
    /// `HEALTHPROBE_MASS_FAILURE_HOLD`, or its default: two intervals.
    pub fn mass_failure_hold(&self) -> Duration {
        self.storm
            .mass_failure_hold
            .unwrap_or(self.probe.probe_interval * 2)
    }
}

/// Several replicas (DESIGN §12). One replica alone needs none of this.
#[derive(Debug, Clone, Args)]
pub struct ReplicaArgs {
    /// This replica's name among the others (default: host name and process id). Must be
    /// unique among the live replicas.
    #[arg(long, env = "HEALTHPROBE_REPLICA_ID", value_parser = replica_id)]
    pub replica_id: Option<String>,
    /// How long a replica that stops heartbeating keeps its games before the others take
    /// them (default: 3 × RTMANAGER_PROBE_INTERVAL, at least 3s).
    #[arg(long, env = "HEALTHPROBE_LEASE_TTL",
          value_parser = positive_duration("HEALTHPROBE_LEASE_TTL"))]
    pub lease_ttl: Option<Duration>,
}

/// The default lease is this many intervals: a replica misses a couple of heartbeats (one
/// every third of the lease) before its games move.
pub(crate) const LEASE_INTERVALS: u32 = 3;

/// The lease is never shorter than this by default: a heartbeat is a Postgres round trip,
/// and a lease shorter than a few of them would flap under load.
pub(crate) const MIN_DEFAULT_LEASE: Duration = Duration::from_secs(3);

impl RunArgs {
    /// Checks between variables that each parse alone; the message names them.
    pub fn validate(&self) -> Result<(), String> {
        if self.dedup_window > self.stream_max_age {
            return Err(format!(
                "HEALTHPROBE_DEDUP_WINDOW ({}) must not be longer than HEALTHPROBE_STREAM_MAX_AGE ({}): JetStream refuses a duplicate window longer than the stream keeps messages",
                humantime::format_duration(self.dedup_window),
                humantime::format_duration(self.stream_max_age)
            ));
        }
        Ok(())
    }

    /// `HEALTHPROBE_LEASE_TTL`, or its default tied to the interval.
    pub fn lease_ttl(&self) -> Duration {
        self.replica
            .lease_ttl
            .unwrap_or_else(|| (self.probe.probe_interval * LEASE_INTERVALS).max(MIN_DEFAULT_LEASE))
    }
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Print every event the stream holds, then follow; default is only new events.
    #[arg(long)]
    pub from_start: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Not as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut full = vec!["healthprobe"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full)
    }

    fn run_args(extra: &[&str]) -> Result<RunArgs, String> {
        let mut args = vec!["run", "--database-url", "postgres://x/y"];
        args.extend_from_slice(extra);
        match parse(&args).map_err(|e| e.to_string())?.command {
            Command::Run(run) => Ok(*run),
            other => panic!("unexpected command {other:?}"),
        }
    }

    /// The defaults as declared on the command line, read from clap's own model of it, so
    /// neither the test process's environment nor explicit flags can hide a wrong one.
    fn declared_default(long: &str) -> String {
        use clap::CommandFactory as _;
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("run subcommand");
        let arg = run
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap_or_else(|| panic!("no --{long} flag"));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        assert_eq!(defaults.len(), 1, "--{long} has one default");
        defaults[0].clone()
    }

    #[test]
    fn defaults_match_the_design() {
        // DESIGN §6, variable by variable: (flag, its variable, the default's value).
        let design = [
            ("nats-url", "NATS_URL", "nats://127.0.0.1:4222"),
            ("probe-interval", "RTMANAGER_PROBE_INTERVAL", "15s"),
            ("probe-timeout", "RTMANAGER_PROBE_TIMEOUT", "2s"),
            (
                "failures-threshold",
                "RTMANAGER_PROBE_FAILURES_THRESHOLD",
                "3",
            ),
            (
                "recovery-threshold",
                "RTMANAGER_PROBE_RECOVERY_THRESHOLD",
                "1",
            ),
            ("http-addr", "HEALTHPROBE_HTTP_ADDR", "127.0.0.1:8097"),
            ("stream", "HEALTHPROBE_STREAM", "RUNTIME_HEALTH"),
            (
                "subject-prefix",
                "HEALTHPROBE_SUBJECT_PREFIX",
                "runtime.health",
            ),
            // DESIGN §16.
            ("initial-delay", "RTMANAGER_PROBE_INITIAL_DELAY", "0s"),
            ("probe-path", "RTMANAGER_PROBE_PATH", "/healthz"),
            ("probe-expect", "HEALTHPROBE_PROBE_EXPECT", "200"),
            ("stream-max-age", "HEALTHPROBE_STREAM_MAX_AGE", "7days"),
            ("event-retention", "HEALTHPROBE_EVENT_RETENTION", "30days"),
            ("no-migrate", "HEALTHPROBE_NO_MIGRATE", "false"),
            (
                "cloudevents-source",
                "HEALTHPROBE_CLOUDEVENTS_SOURCE",
                "healthprobe",
            ),
        ];
        use clap::CommandFactory as _;
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("run subcommand");
        for (long, variable, value) in design {
            assert_eq!(declared_default(long), value, "default of {variable}");
            let arg = run
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap();
            assert_eq!(
                arg.get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .as_deref(),
                Some(variable),
                "--{long} reads {variable}"
            );
        }
        // The declared defaults also parse to what the design means by them.
        assert_eq!(
            positive_duration("X")(&declared_default("probe-interval")).unwrap(),
            Duration::from_secs(15)
        );
        // No fixed default: the descriptor budget decides (DESIGN §15).
        assert_eq!(run_args(&[]).unwrap().probe.max_concurrency, None);
        assert_eq!(
            positive_duration("X")(&declared_default("stream-max-age")).unwrap(),
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(
            positive_duration("X")(&declared_default("event-retention")).unwrap(),
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(
            duration_or_zero("X")(&declared_default("initial-delay")).unwrap(),
            Duration::ZERO
        );
        // The defaults are the seed's probe exactly.
        let defaults = run_args(&[]).unwrap();
        if std::env::vars().all(|(k, _)| {
            !k.starts_with("RTMANAGER_PROBE_") && !k.starts_with("HEALTHPROBE_PROBE_")
        }) {
            assert_eq!(defaults.probe.probe_spec(), ProbeSpec::default());
            assert_eq!(defaults.probe.probe_ca, None);
        }
        // Variables without a default: their flags read the names DESIGN §16 gives.
        for (long, variable) in [
            ("probe-headers", "HEALTHPROBE_PROBE_HEADERS"),
            ("probe-ca", "HEALTHPROBE_PROBE_CA"),
            ("http-token", "HEALTHPROBE_HTTP_TOKEN"),
            ("nats-creds", "NATS_CREDS"),
            ("nats-nkey", "NATS_NKEY"),
            ("nats-user", "NATS_USER"),
            ("nats-password", "NATS_PASSWORD"),
            ("nats-token", "NATS_TOKEN"),
            ("nats-ca", "NATS_CA"),
        ] {
            let arg = run
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("no --{long}"));
            assert_eq!(
                arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                Some(variable.to_owned())
            );
        }
        // Replicas: none configured, lease tied to the interval.
        let run = run_args(&["--probe-interval", "15s"]).unwrap();
        if std::env::var_os("HEALTHPROBE_LEASE_TTL").is_none() {
            assert_eq!(run.lease_ttl(), Duration::from_secs(45));
        }
        let fast = run_args(&["--probe-interval", "200ms"]).unwrap();
        if std::env::var_os("HEALTHPROBE_LEASE_TTL").is_none() {
            assert_eq!(fast.lease_ttl(), MIN_DEFAULT_LEASE, "never below the floor");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            (vec!["--probe-interval", "0s"], "RTMANAGER_PROBE_INTERVAL"),
            (vec!["--probe-interval", "soon"], "RTMANAGER_PROBE_INTERVAL"),
            (vec!["--probe-timeout", "0ms"], "RTMANAGER_PROBE_TIMEOUT"),
            (
                vec!["--failures-threshold", "0"],
                "RTMANAGER_PROBE_FAILURES_THRESHOLD",
            ),
            (
                vec!["--failures-threshold=-2"],
                "RTMANAGER_PROBE_FAILURES_THRESHOLD",
            ),
            (
                vec!["--recovery-threshold", "x"],
                "RTMANAGER_PROBE_RECOVERY_THRESHOLD",
            ),
            (
                vec!["--max-concurrency", "0"],
                "RTMANAGER_PROBE_MAX_CONCURRENCY",
            ),
            (
                vec!["--max-concurrency", "100000000"],
                "RTMANAGER_PROBE_MAX_CONCURRENCY",
            ),
            (vec!["--http-addr", "nowhere"], "HEALTHPROBE_HTTP_ADDR"),
            (vec!["--probe-spread", "1.5"], "RTMANAGER_PROBE_SPREAD"),
            (vec!["--probe-spread=-0.1"], "RTMANAGER_PROBE_SPREAD"),
            (vec!["--probe-spread", "half"], "RTMANAGER_PROBE_SPREAD"),
            (vec!["--stream", "a.b"], "HEALTHPROBE_STREAM"),
            (
                vec!["--subject-prefix", "a.>"],
                "HEALTHPROBE_SUBJECT_PREFIX",
            ),
            (
                vec!["--subject-prefix", "a..b"],
                "HEALTHPROBE_SUBJECT_PREFIX",
            ),
            (vec!["--initial-delay=-5s"], "RTMANAGER_PROBE_INITIAL_DELAY"),
            (
                vec!["--initial-delay", "later"],
                "RTMANAGER_PROBE_INITIAL_DELAY",
            ),
            (vec!["--stream-max-age", "0s"], "HEALTHPROBE_STREAM_MAX_AGE"),
            (
                vec!["--event-retention", "forever"],
                "HEALTHPROBE_EVENT_RETENTION",
            ),
            (vec!["--no-migrate=perhaps"], "HEALTHPROBE_NO_MIGRATE"),
            (vec!["--probe-path", "healthz"], "RTMANAGER_PROBE_PATH"),
            (vec!["--probe-path", "/a b"], "RTMANAGER_PROBE_PATH"),
            (vec!["--probe-expect", "2xx"], "HEALTHPROBE_PROBE_EXPECT"),
            (
                vec!["--probe-expect", "299-200"],
                "HEALTHPROBE_PROBE_EXPECT",
            ),
            (
                vec!["--probe-headers", "NoEquals"],
                "HEALTHPROBE_PROBE_HEADERS",
            ),
            (
                vec!["--probe-ca", "/nonexistent/ca.pem"],
                "HEALTHPROBE_PROBE_CA",
            ),
            (vec!["--http-token", "has space"], "HEALTHPROBE_HTTP_TOKEN"),
            (vec!["--http-token="], "HEALTHPROBE_HTTP_TOKEN"),
            (vec!["--nats-creds", "/nonexistent/x.creds"], "NATS_CREDS"),
            (vec!["--nats-nkey", "/nonexistent/seed"], "NATS_NKEY"),
            (vec!["--nats-ca", "/"], "NATS_CA"),
            (vec!["--nats-token", " "], "NATS_TOKEN"),
            (
                vec!["--cloudevents-source", "a b"],
                "HEALTHPROBE_CLOUDEVENTS_SOURCE",
            ),
        ];
        for (args, variable) in cases {
            let err = run_args(&args).expect_err(&format!("{args:?} must be refused"));
            assert!(
                err.contains(variable),
                "{args:?}: error {err:?} does not name {variable}"
            );
        }
    }

    #[test]
    fn platform_settings_parse_and_check_each_other() {
        let run = run_args(&[
            "--no-migrate",
            "--initial-delay",
            "20s",
            "--http-token",
            "s3cret-token",
        ])
        .unwrap();
        assert!(run.no_migrate);
        assert_eq!(run.probe.initial_delay, Duration::from_secs(20));
        let probe = run_args(&[
            "--probe-path",
            "/ready?full=1",
            "--probe-expect",
            "200-299,301",
            "--probe-headers",
            "X-Token=abc",
            "--probe-timeout",
            "5s",
        ])
        .unwrap()
        .probe
        .probe_spec();
        assert_eq!(probe.path, "/ready?full=1");
        assert!(
            probe.expect.accepts(204) && probe.expect.accepts(301) && !probe.expect.accepts(302)
        );
        assert_eq!(probe.headers.len(), 1);
        assert_eq!(probe.timeout, Duration::from_secs(5));
        assert_eq!(run.http_token.as_deref(), Some("s3cret-token"));
        assert!(run.validate().is_ok());
        assert!(run_args(&["--no-migrate=false"]).unwrap().no_migrate.not());
        // JetStream refuses a duplicate window longer than the stream keeps messages.
        let run = run_args(&["--stream-max-age", "10m", "--dedup-window", "1h"]).unwrap();
        let why = run.validate().unwrap_err();
        assert!(
            why.contains("HEALTHPROBE_DEDUP_WINDOW") && why.contains("HEALTHPROBE_STREAM_MAX_AGE"),
            "{why}"
        );
        // One way to authenticate to NATS; a user needs a password.
        let err = run_args(&[
            "--nats-user",
            "u",
            "--nats-password",
            "p",
            "--nats-token",
            "t",
        ])
        .unwrap_err();
        assert!(
            err.contains("--nats-token") || err.contains("--nats-user"),
            "{err}"
        );
        assert!(run_args(&["--nats-user", "u"]).is_err());
    }

    #[test]
    fn database_url_is_required_for_run_and_migrate() {
        // Read from clap's model, not by parsing: a DATABASE_URL in the test's environment
        // would satisfy the parser and hide a missing requirement.
        use clap::CommandFactory as _;
        let cli = Cli::command();
        for command in ["run", "migrate", "status"] {
            let sub = cli.find_subcommand(command).unwrap();
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some("database-url"))
                .unwrap_or_else(|| panic!("{command} has --database-url"));
            assert!(arg.is_required_set(), "{command} requires DATABASE_URL");
            assert_eq!(arg.get_env().unwrap(), "DATABASE_URL");
        }
        assert!(parse(&["tail"]).is_ok());
    }
}
