//! Logs, metrics and traces (DESIGN §8).
//!
//! Metrics go through [`Metrics`], built from any `Meter`, so tests hand it an in-memory
//! reader and production an OTLP one. When no OTLP endpoint is configured, or
//! `OTEL_SDK_DISABLED=true`, no exporter exists at all: nothing is sent and nothing
//! complains. The instruments can always be scraped at `GET /metrics` (Prometheus text,
//! [`crate::scrape`]): its reader is registered either way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::envelope::EventType;
use crate::scrape::Scrape;

/// Instrumentation scope of every instrument.
pub const METER_NAME: &str = "healthprobe";

/// Bound on flushing telemetry at shutdown, so an unreachable collector cannot hold the
/// exit past the SIGTERM budget.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Bucket bounds (seconds) of `healthprobe.probe.duration`. The SDK's default bounds (0, 5,
/// 10, 25 … 10000) are made for milliseconds and would put every probe in the first bucket;
/// these cover a loopback answer (1 ms) to the longest sensible probe timeout (10 s).
const PROBE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds (seconds) of `healthprobe.tick.duration`: a handful of games (10 ms) to a
/// large fleet or a tick held up by an outage (a minute).
const TICK_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Running-game statuses reported by `healthprobe.games` (the `health_snapshots` statuses,
/// `unknown` for games not probed yet, `disabled` for games an override keeps from being
/// probed), so every one appears even at zero and an alert's ratio never divides by a
/// missing series.
pub const GAME_STATUSES: [&str; 5] = ["healthy", "suspect", "failing", "unknown", "disabled"];

/// The service's instruments. Cheap to clone.
///
/// Every name is in the `healthprobe.` namespace (Prometheus: `healthprobe_…`) but one:
/// `rtmanager.health_events`, the seed's counter, kept beside `healthprobe.events` so the
/// dashboards built on it go on working.
#[derive(Clone)]
pub struct Metrics {
    health_events: Counter<u64>,
    events: Counter<u64>,
    build_info: Gauge<u64>,
    games: Gauge<u64>,
    outbox_set_aside_rows: Gauge<u64>,
    mass_failure_holding: Gauge<u64>,
    probes: Counter<u64>,
    probe_duration: Histogram<f64>,
    tick_duration: Histogram<f64>,
    tick_errors: Counter<u64>,
    running_records: Gauge<u64>,
    outbox_pending: Gauge<u64>,
    publish_errors: Counter<u64>,
    owned_games: Gauge<u64>,
    membership_changes: Counter<u64>,
    commit_conflicts: Counter<u64>,
    relay_held: Gauge<u64>,
    outbox_set_aside: Counter<u64>,
    relay_restarts: Counter<u64>,
    mass_failure_held: Counter<u64>,
}

impl Metrics {
    pub fn new(meter: &Meter) -> Self {
        Self {
            health_events: meter
                .u64_counter("rtmanager.health_events")
                .with_description(
                    "Health events emitted (compatibility name of healthprobe.events, kept from 0.1.0)",
                )
                .build(),
            events: meter
                .u64_counter("healthprobe.events")
                .with_description("Health events emitted (committed to the event log)")
                .build(),
            build_info: meter
                .u64_gauge("healthprobe.build_info")
                .with_description("Always 1; the attributes say which healthprobe runs")
                .build(),
            games: meter
                .u64_gauge("healthprobe.games")
                .with_description(
                    "Running games this replica probes, by status (healthy, suspect, failing, unknown); summed over the replicas: the fleet",
                )
                .build(),
            outbox_set_aside_rows: meter
                .u64_gauge("healthprobe.outbox.set_aside_rows")
                .with_description(
                    "Outbox rows set aside and waiting for an operator (retry or discard), as of the last scrape",
                )
                .build(),
            mass_failure_holding: meter
                .u64_gauge("healthprobe.mass_failure.holding")
                .with_description(
                    "1 while this replica holds its transitions because most of its engines fail at once, else 0",
                )
                .build(),
            probes: meter
                .u64_counter("healthprobe.probes")
                .with_description(
                    "Probes completed, by outcome (ok, a failure kind, or local_error)",
                )
                .build(),
            probe_duration: meter
                .f64_histogram("healthprobe.probe.duration")
                .with_unit("s")
                .with_description("Duration of one probe")
                .with_boundaries(PROBE_BUCKETS.to_vec())
                .build(),
            tick_duration: meter
                .f64_histogram("healthprobe.tick.duration")
                .with_unit("s")
                .with_description("Duration of one tick")
                .with_boundaries(TICK_BUCKETS.to_vec())
                .build(),
            tick_errors: meter
                .u64_counter("healthprobe.tick.errors")
                .with_description("Ticks that could not complete or record everything")
                .build(),
            running_records: meter
                .u64_gauge("healthprobe.running_records")
                .with_description("Running records listed by the last complete tick")
                .build(),
            outbox_pending: meter
                .u64_gauge("healthprobe.outbox.pending")
                .with_description("Committed events not yet acknowledged by JetStream")
                .build(),
            publish_errors: meter
                .u64_counter("healthprobe.publish.errors")
                .with_description("Failed attempts to publish the outbox to JetStream")
                .build(),
            owned_games: meter
                .u64_gauge("healthprobe.owned_games")
                .with_description("Running games this replica probes (its share of the fleet)")
                .build(),
            membership_changes: meter
                .u64_counter("healthprobe.membership.changes")
                .with_description("Changes of the set of live replicas seen by this one")
                .build(),
            commit_conflicts: meter
                .u64_counter("healthprobe.commit.conflicts")
                .with_description(
                    "Writes refused because another writer changed the game first (reloaded, decided again)",
                )
                .build(),
            relay_held: meter
                .u64_gauge("healthprobe.relay.held")
                .with_description("1 while this replica holds the outbox relay, else 0")
                .build(),
            outbox_set_aside: meter
                .u64_counter("healthprobe.outbox.set_aside")
                .with_description(
                    "Outbox rows set aside because they cannot be decoded or published",
                )
                .build(),
            relay_restarts: meter
                .u64_counter("healthprobe.relay.restarts")
                .with_description(
                    "Abnormal ends of the outbox relay task, each followed by a restart",
                )
                .build(),
            mass_failure_held: meter
                .u64_counter("healthprobe.mass_failure.held")
                .with_description("probe_failed transitions held by the mass-failure hold")
                .build(),
        }
    }

    /// One `probe_failed` held by the mass-failure hold.
    pub(crate) fn mass_failure_held(&self) {
        self.mass_failure_held.add(1, &[]);
    }

    /// Instruments that record nowhere; for tools and tests that do not look at metrics.
    pub fn noop() -> Self {
        Self::new(&SdkMeterProvider::builder().build().meter(METER_NAME))
    }

    pub(crate) fn event_emitted(&self, event_type: EventType) {
        let attributes = [KeyValue::new("event_type", event_type.as_str())];
        self.health_events.add(1, &attributes);
        self.events.add(1, &attributes);
    }

    /// One probe done: `outcome` is `ok` or the failure kind, `status` the HTTP status
    /// received (0 when none was).
    ///
    /// The duration carries the OpenTelemetry HTTP client attributes that fit a probe:
    /// `http.request.method`, `http.response.status_code` when an answer came, and
    /// `error.type` when the probe failed: the status code for an unexpected status, as the
    /// semantic conventions say, the failure kind (`timeout`, `connect`, `tls`, …)
    /// otherwise. All of low cardinality; the engine's address is deliberately not one.
    pub(crate) fn probe_completed(&self, outcome: &'static str, status: u16, duration: Duration) {
        self.probes.add(1, &[KeyValue::new("outcome", outcome)]);
        let mut attributes = Vec::with_capacity(3);
        attributes.push(KeyValue::new("http.request.method", "GET"));
        if status != 0 {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        match outcome {
            "ok" => {}
            "status" if status != 0 => {
                attributes.push(KeyValue::new("error.type", status.to_string()));
            }
            kind => attributes.push(KeyValue::new("error.type", kind)),
        }
        self.probe_duration
            .record(duration.as_secs_f64(), &attributes);
    }

    /// `healthprobe.build_info` = 1 with the version and what it was built for; recorded
    /// once at start.
    pub fn build_info(&self, version: &'static str, replica_id: &str) {
        self.build_info.record(
            1,
            &[
                KeyValue::new("version", version),
                KeyValue::new("replica_id", replica_id.to_owned()),
                KeyValue::new("target_arch", std::env::consts::ARCH),
                KeyValue::new("target_os", std::env::consts::OS),
            ],
        );
    }

    /// Running games by status; statuses missing from `counts` are recorded as 0.
    pub(crate) fn games_by_status<'a>(&self, counts: impl IntoIterator<Item = (&'a str, u64)>) {
        let counts: Vec<(&str, u64)> = counts.into_iter().collect();
        for status in GAME_STATUSES {
            let count = counts
                .iter()
                .filter(|(s, _)| *s == status)
                .map(|(_, n)| n)
                .sum();
            self.games.record(count, &[KeyValue::new("status", status)]);
        }
    }

    pub(crate) fn outbox_set_aside_rows(&self, count: u64) {
        self.outbox_set_aside_rows.record(count, &[]);
    }

    /// Whether this replica holds transitions because of a mass failure (its own fault more
    /// likely than the fleet's).
    pub fn mass_failure_holding(&self, holding: bool) {
        self.mass_failure_holding.record(u64::from(holding), &[]);
    }

    pub(crate) fn tick_completed(&self, duration: Duration, clean: bool) {
        self.tick_duration.record(duration.as_secs_f64(), &[]);
        if !clean {
            self.tick_errors.add(1, &[]);
        }
    }

    pub fn running_records(&self, count: usize) {
        self.running_records.record(count as u64, &[]);
    }

    pub(crate) fn outbox_pending(&self, count: u64) {
        self.outbox_pending.record(count, &[]);
    }

    pub(crate) fn publish_failed(&self) {
        self.publish_errors.add(1, &[]);
    }

    pub fn owned_games(&self, count: usize) {
        self.owned_games.record(count as u64, &[]);
    }

    pub(crate) fn membership_changed(&self) {
        self.membership_changes.add(1, &[]);
    }

    pub(crate) fn commit_conflicts(&self, count: usize) {
        if count > 0 {
            self.commit_conflicts.add(count as u64, &[]);
        }
    }

    pub fn relay_held(&self, held: bool) {
        self.relay_held.record(u64::from(held), &[]);
    }

    pub(crate) fn outbox_set_aside(&self) {
        self.outbox_set_aside.add(1, &[]);
    }

    pub(crate) fn relay_restarted(&self) {
        self.relay_restarts.add(1, &[]);
    }
}

use opentelemetry::metrics::MeterProvider as _;

/// Owns the providers; flush them with [`Telemetry::shutdown`] before exit.
pub struct Telemetry {
    meter_provider: SdkMeterProvider,
    tracer_provider: Option<SdkTracerProvider>,
    scrape: Scrape,
}

impl Telemetry {
    pub fn meter(&self) -> Meter {
        self.meter_provider.meter(METER_NAME)
    }

    /// What `GET /metrics` renders (Prometheus), fed whether or not OTLP export is on.
    pub fn scrape(&self) -> Scrape {
        self.scrape.clone()
    }

    /// Flushes and stops the exporters, bounded by [`SHUTDOWN_FLUSH_LIMIT`].
    pub async fn shutdown(self) {
        let Self {
            meter_provider,
            tracer_provider,
            scrape: _,
        } = self;
        // The blocking HTTP exporter must not run on a runtime worker thread.
        let flush = tokio::task::spawn_blocking(move || {
            let mut problems = Vec::new();
            if let Some(tracer_provider) = tracer_provider
                && let Err(e) = tracer_provider.shutdown()
            {
                problems.push(format!("traces: {e}"));
            }
            if let Err(e) = meter_provider.shutdown() {
                problems.push(format!("metrics: {e}"));
            }
            problems
        });
        match tokio::time::timeout(SHUTDOWN_FLUSH_LIMIT, flush).await {
            Ok(Ok(problems)) if problems.is_empty() => {}
            Ok(Ok(problems)) => tracing::warn!(?problems, "telemetry flush incomplete"),
            Ok(Err(e)) => tracing::warn!(error = %e, "telemetry flush task failed"),
            Err(_) => tracing::warn!(limit = ?SHUTDOWN_FLUSH_LIMIT, "telemetry flush timed out"),
        }
    }
}

fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Set once by [`init`] when spans go to an OTLP exporter.
static TRACES_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. Per-probe spans are made only then: without an exporter they
/// serve nothing (no log line is written inside a probe at the usual levels) and cost about
/// 5 % of the worker's CPU (a registry slot, the `game_id` formatted, enter and exit on
/// every poll; BENCHMARKS.md).
pub(crate) fn traces_exported() -> bool {
    TRACES_EXPORTED.load(Ordering::Relaxed)
}

/// Whether OTLP export is wanted: an endpoint is configured and the SDK is not disabled.
pub(crate) fn otlp_enabled() -> bool {
    !env_true("OTEL_SDK_DISABLED")
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn resource() -> Resource {
    let builder = Resource::builder();
    if env_set("OTEL_SERVICE_NAME") {
        builder.build()
    } else {
        builder.with_service_name("healthprobe").build()
    }
}

/// Sets up logging (`RUST_LOG`, default `info`; human-readable lines by default, JSON lines
/// with `HEALTHPROBE_LOG_FORMAT=json`) and, when enabled, OTLP metrics and traces.
pub fn init() -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json =
        std::env::var("HEALTHPROBE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours only on a terminal: a log file or a collector gets plain lines.
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .boxed()
    };

    // `GET /metrics` reads the same instruments on demand, with or without OTLP.
    let (scrape, pull) = Scrape::new().context("building the Prometheus exporter")?;
    let meters = SdkMeterProvider::builder()
        .with_resource(resource())
        .with_reader(pull);
    let (meter_provider, tracer_provider) = if otlp_enabled() {
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .context("building the OTLP metric exporter")?;
        let meter_provider = meters
            .with_reader(PeriodicReader::builder(metric_exporter).build())
            .build();
        let span_exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("building the OTLP span exporter")?;
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource())
            .with_batch_exporter(span_exporter)
            .build();
        (meter_provider, Some(tracer_provider))
    } else {
        (meters.build(), None)
    };

    TRACES_EXPORTED.store(tracer_provider.is_some(), Ordering::Relaxed);
    let otel_layer = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(METER_NAME)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry {
        meter_provider,
        tracer_provider,
        scrape,
    })
}
