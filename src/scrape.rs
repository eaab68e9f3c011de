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
    use crate::events::envelope::EventType;
    use crate::telemetry::{METER_NAME, Metrics};

    /// The names the README lists, from the service's own instruments: an update of the
    /// exporter that renamed anything fails here.
    #[test]
    fn the_service_instruments_get_the_documented_prometheus_names() {
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
        metrics.probe_completed("ok", std::time::Duration::from_millis(3));
        metrics.probe_completed("ok", std::time::Duration::from_millis(700));
        metrics.probe_completed("timeout", std::time::Duration::from_secs(2));
        metrics.event_emitted(EventType::ProbeFailed);
        metrics.tick_completed(std::time::Duration::from_millis(40), false);
        metrics.running_records(3);
        metrics.outbox_pending(1);
        metrics.publish_failed();
        let text = scrape.render().expect("render");
        let scope = "otel_scope_name=\"healthprobe\"";
        for line in [
            "target_info{service_name=\"healthprobe\"} 1".to_owned(),
            "# TYPE healthprobe_probes_total counter".into(),
            format!("healthprobe_probes_total{{outcome=\"ok\",{scope}}} 2"),
            format!("healthprobe_probes_total{{outcome=\"timeout\",{scope}}} 1"),
            "# TYPE rtmanager_health_events_total counter".into(),
            format!("rtmanager_health_events_total{{event_type=\"probe_failed\",{scope}}} 1"),
            "# TYPE healthprobe_probe_duration_seconds histogram".into(),
            // Seconds buckets: 3 ms falls under 5 ms, 0.7 s under 1 s, 2 s under 2.5 s.
            format!("healthprobe_probe_duration_seconds_bucket{{{scope},le=\"0.005\"}} 1"),
            format!("healthprobe_probe_duration_seconds_bucket{{{scope},le=\"1\"}} 2"),
            format!("healthprobe_probe_duration_seconds_bucket{{{scope},le=\"2.5\"}} 3"),
            format!("healthprobe_probe_duration_seconds_bucket{{{scope},le=\"+Inf\"}} 3"),
            format!("healthprobe_probe_duration_seconds_count{{{scope}}} 3"),
            "# TYPE healthprobe_tick_duration_seconds histogram".into(),
            format!("healthprobe_tick_errors_total{{{scope}}} 1"),
            format!("healthprobe_running_records{{{scope}}} 3"),
            format!("healthprobe_outbox_pending{{{scope}}} 1"),
            format!("healthprobe_publish_errors_total{{{scope}}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
