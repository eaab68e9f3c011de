//! Metrics recorded in memory, read back by instrument name.

use std::collections::BTreeMap;

use healthprobe::telemetry::Metrics;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

pub struct TestMetrics {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl TestMetrics {
    pub fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Self { provider, exporter }
    }

    /// The service's instruments, recording here.
    pub fn metrics(&self) -> Metrics {
        Metrics::new(&self.provider.meter(healthprobe::telemetry::METER_NAME))
    }

    fn latest(&self) -> ResourceMetrics {
        self.provider.force_flush().expect("flush metrics");
        self.exporter
            .get_finished_metrics()
            .expect("read exported metrics")
            .pop()
            .expect("metrics were exported")
    }

    /// A u64 counter's value per value of `attribute`.
    pub fn counter(&self, name: &str, attribute: &str) -> BTreeMap<String, u64> {
        let mut values = BTreeMap::new();
        let latest = self.latest();
        for scope in latest.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                    for point in sum.data_points() {
                        let key = point
                            .attributes()
                            .find(|kv| kv.key.as_str() == attribute)
                            .map(|kv| kv.value.to_string())
                            .unwrap_or_default();
                        values.insert(key, point.value());
                    }
                }
            }
        }
        values
    }

    /// (count, min, max) of an f64 histogram without attributes.
    pub fn histogram(&self, name: &str) -> Option<(u64, f64, f64)> {
        let latest = self.latest();
        for scope in latest.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric.data() {
                    let point = histogram.data_points().next()?;
                    return Some((point.count(), point.min()?, point.max()?));
                }
            }
        }
        None
    }
}
