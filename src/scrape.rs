//! `GET /metrics`: the service's OpenTelemetry instruments in the Prometheus text format,
//! read on demand.
//!
//! The OpenTelemetry project's own `opentelemetry-prometheus` does the work. It was declared
//! discontinued in 0.29 (2025) and un-deprecated in 0.32 (May 2026); 0.33.1 follows the SDK
//! this service uses, no longer drags in `protobuf`, and applies the OpenTelemetry-to-
//! Prometheus naming rules that an encoder written here would have to copy:
//! - characters outside `[a-zA-Z0-9_:]` become `_` (`healthprobe.probes` →
//!   `healthprobe_probes`);
//! - the unit becomes a suffix (`s` → `_seconds`);
//! - monotonic counters end in `_total`; histograms give `_bucket{le=…}`, `_sum`, `_count`;
//! - attributes become labels, every sample carries `otel_scope_name`, and the resource is
//!   one `target_info` gauge.
//!
//! It fills a `prometheus::Registry` (TiKV's crate, default features off: no protobuf, no
//! process metrics) whose text encoder renders the answer.

use opentelemetry_prometheus::PrometheusExporter;
use opentelemetry_sdk::error::OTelSdkError;
use prometheus::{Encoder as _, TextEncoder};

/// The `Content-Type` of the text exposition format (version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `GET /metrics` renders. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Scrape {
    registry: prometheus::Registry,
}

impl Scrape {
    /// A scrape endpoint and the reader that feeds it: give the reader to the meter
    /// provider (`SdkMeterProviderBuilder::with_reader`), the scrape to the HTTP surface.
    pub fn new() -> Result<(Self, PrometheusExporter), OTelSdkError> {
        let registry = prometheus::Registry::new();
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        Ok((Self { registry }, reader))
    }

    /// Collects every instrument now and renders the text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let families = self.registry.gather();
        let mut text = Vec::new();
        TextEncoder::new().encode(&families, &mut text)?;
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;
    use crate::envelope::EventType;
    use crate::telemetry::{METER_NAME, Metrics};

    /// Every instrument recorded once, rendered.
    fn render_all() -> String {
        let (scrape, reader) = Scrape::new().expect("exporter");
        let provider = SdkMeterProvider::builder()
            .with_resource(
                Resource::builder_empty()
                    .with_service_name("healthprobe")
                    .build(),
            )
            .with_reader(reader)
            .build();
        let metrics = Metrics::new(&provider.meter(METER_NAME));
        metrics.probe_completed("ok", 200, std::time::Duration::from_millis(3));
        metrics.probe_completed("ok", 200, std::time::Duration::from_millis(700));
        metrics.probe_completed("timeout", 0, std::time::Duration::from_secs(2));
        metrics.probe_completed("status", 503, std::time::Duration::from_millis(4));
        metrics.event_emitted(EventType::ProbeFailed);
        metrics.tick_completed(std::time::Duration::from_millis(40), false);
        metrics.running_records(3);
        metrics.outbox_pending(1);
        metrics.publish_failed();
        metrics.owned_games(3);
        metrics.membership_changed();
        metrics.commit_conflicts(1);
        metrics.relay_held(true);
        metrics.outbox_set_aside();
        metrics.relay_restarted();
        metrics.build_info("9.9.9", "replica-a");
        metrics.games_by_status([("healthy", 2), ("failing", 1)]);
        metrics.outbox_set_aside_rows(2);
        metrics.mass_failure_holding(true);
        scrape.render().expect("render")
    }

    /// The names the README lists, from the service's own instruments: an update of the
    /// exporter that renamed anything fails here.
    #[test]
    fn the_service_instruments_get_the_documented_prometheus_names() {
        let text = render_all();
        let scope = "otel_scope_name=\"healthprobe\"";
        for line in [
            "target_info{service_name=\"healthprobe\"} 1".to_owned(),
            "# TYPE healthprobe_probes_total counter".into(),
            format!("healthprobe_probes_total{{outcome=\"ok\",{scope}}} 2"),
            format!("healthprobe_probes_total{{outcome=\"timeout\",{scope}}} 1"),
            "# TYPE rtmanager_health_events_total counter".into(),
            format!("rtmanager_health_events_total{{event_type=\"probe_failed\",{scope}}} 1"),
            "# TYPE healthprobe_events_total counter".into(),
            format!("healthprobe_events_total{{event_type=\"probe_failed\",{scope}}} 1"),
            "# TYPE healthprobe_probe_duration_seconds histogram".into(),
            // Seconds buckets: 3 ms falls under 5 ms, 0.7 s under 1 s, 2 s under 2.5 s;
            // OpenTelemetry's HTTP client attributes split the series.
            format!(
                "healthprobe_probe_duration_seconds_bucket{{http_request_method=\"GET\",http_response_status_code=\"200\",{scope},le=\"0.005\"}} 1"
            ),
            format!(
                "healthprobe_probe_duration_seconds_bucket{{http_request_method=\"GET\",http_response_status_code=\"200\",{scope},le=\"1\"}} 2"
            ),
            format!(
                "healthprobe_probe_duration_seconds_count{{http_request_method=\"GET\",http_response_status_code=\"200\",{scope}}} 2"
            ),
            format!(
                "healthprobe_probe_duration_seconds_bucket{{error_type=\"timeout\",http_request_method=\"GET\",{scope},le=\"2.5\"}} 1"
            ),
            format!(
                "healthprobe_probe_duration_seconds_count{{error_type=\"503\",http_request_method=\"GET\",http_response_status_code=\"503\",{scope}}} 1"
            ),
            "# TYPE healthprobe_tick_duration_seconds histogram".into(),
            format!("healthprobe_tick_errors_total{{{scope}}} 1"),
            format!("healthprobe_running_records{{{scope}}} 3"),
            format!("healthprobe_outbox_pending{{{scope}}} 1"),
            format!("healthprobe_publish_errors_total{{{scope}}} 1"),
            "# TYPE healthprobe_build_info gauge".into(),
            format!(
                "healthprobe_build_info{{replica_id=\"replica-a\",target_arch=\"{}\",target_os=\"{}\",version=\"9.9.9\",{scope}}} 1",
                std::env::consts::ARCH,
                std::env::consts::OS
            ),
            format!("healthprobe_games{{status=\"healthy\",{scope}}} 2"),
            format!("healthprobe_games{{status=\"failing\",{scope}}} 1"),
            format!("healthprobe_games{{status=\"suspect\",{scope}}} 0"),
            format!("healthprobe_games{{status=\"unknown\",{scope}}} 0"),
            format!("healthprobe_outbox_set_aside_rows{{{scope}}} 2"),
            format!("healthprobe_mass_failure_holding{{{scope}}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    /// The metric family names a `/metrics` text declares (its `# TYPE` lines).
    fn families(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect()
    }

    /// One namespace: every family is `healthprobe_…`, but the seed's compatibility name and
    /// the exporter's own `target_info`.
    #[test]
    fn every_metric_is_in_the_healthprobe_namespace() {
        let text = render_all();
        let families = families(&text);
        assert!(families.len() > 15, "{families:?}");
        for family in &families {
            assert!(
                family.starts_with("healthprobe_")
                    || *family == "rtmanager_health_events_total"
                    || *family == "target_info",
                "{family} is outside the healthprobe_ namespace"
            );
        }
    }

    /// Every metric that deploy/prometheus/alerts.yml reads is one the service exports: a
    /// renamed instrument cannot leave an alert that never fires.
    #[test]
    fn the_alert_rules_read_metrics_the_service_exports() {
        let text = render_all();
        let families = families(&text);
        let rules = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"),
        )
        .expect("deploy/prometheus/alerts.yml");
        let mut used: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("healthprobe_"))
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() >= 6, "{used:?}");
        for name in used {
            let exported = families.iter().any(|family| {
                name == *family
                    || ["_count", "_sum", "_bucket"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family))
            });
            assert!(
                exported,
                "alerts.yml reads {name}, which /metrics does not export: {families:?}"
            );
        }
    }
}
