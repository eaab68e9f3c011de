//! OTLP export from the real binary, to a collector stand-in on loopback.

mod helpers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::post;
use helpers::engines::Behavior;
use helpers::scenario::Scenario;
use helpers::{WAIT_LIMIT, wait_for};

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accepts OTLP/HTTP posts and keeps (path, body).
async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    async fn accept(State(received): State<Received>, uri: Uri, body: Bytes) -> &'static str {
        received
            .lock()
            .unwrap()
            .push((uri.path().to_owned(), body.to_vec()));
        ""
    }
    let app = Router::new()
        .route("/v1/metrics", post(accept))
        .route("/v1/traces", post(accept))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn metrics_and_traces_are_flushed_over_otlp_at_shutdown_when_an_endpoint_is_set() {
    let scenario = Scenario::new().await;
    scenario.game("g", "g", Behavior::Status(503)).await;
    let (endpoint, received) = collector().await;
    let mut worker = scenario
        .worker("otlp")
        .interval(Duration::from_millis(100))
        .failures(1)
        .setting("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        // Far beyond the test's length: only the flush at shutdown can deliver.
        .setting("OTEL_METRIC_EXPORT_INTERVAL", "600000")
        .setting("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .spawn();
    scenario.env.wait_stream_events(1).await;
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing exported before shutdown"
    );
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success());
    let posts = wait_for(
        "metrics and traces at the collector",
        WAIT_LIMIT,
        || async {
            let posts = received.lock().unwrap().clone();
            let metrics = posts
                .iter()
                .any(|(p, b)| p == "/v1/metrics" && contains(b, "rtmanager.health_events"));
            let traces = posts
                .iter()
                .any(|(p, b)| p == "/v1/traces" && contains(b, "tick"));
            (metrics && traces).then_some(posts)
        },
    )
    .await;
    let metrics: Vec<&Vec<u8>> = posts
        .iter()
        .filter(|(p, _)| p == "/v1/metrics")
        .map(|(_, b)| b)
        .collect();
    for name in [
        "healthprobe.probes",
        "healthprobe.probe.duration",
        "healthprobe.tick.duration",
        "healthprobe.running_records",
        "healthprobe.events",
        "healthprobe.games",
        "healthprobe.build_info",
        // OpenTelemetry's HTTP client attributes on the probe duration: the engine answered
        // 503, which is also the error type.
        "http.response.status_code",
        "error.type",
    ] {
        assert!(
            metrics.iter().any(|b| contains(b, name)),
            "{name} was exported"
        );
    }
    assert!(
        posts
            .iter()
            .any(|(p, b)| p == "/v1/traces" && contains(b, "probe")),
        "probe spans exported"
    );
    assert!(
        metrics.iter().any(|b| contains(b, "healthprobe")),
        "service name in the resource"
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_nothing_complains() {
    let scenario = Scenario::new().await;
    let fleet = &scenario.fleet;
    scenario.game("g", "g", Behavior::Status(503)).await;
    for (name, extra) in [("no-endpoint", None), ("disabled", Some("true"))] {
        let (endpoint, received) = collector().await;
        let mut knobs = scenario
            .worker(name)
            .interval(Duration::from_millis(100))
            .failures(1);
        if let Some(value) = extra {
            // Disabled wins even over a configured endpoint.
            knobs = knobs
                .setting("OTEL_SDK_DISABLED", value)
                .setting("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        }
        let mut worker = knobs.spawn();
        let before = fleet.requests("g");
        wait_for("a few ticks", WAIT_LIMIT, || async {
            (fleet.requests("g") >= before + 3).then_some(())
        })
        .await;
        let (status, _) = worker.terminate(Duration::from_secs(10)).await;
        assert!(status.success());
        assert!(
            received.lock().unwrap().is_empty(),
            "{name}: nothing sent to the collector"
        );
        let log = worker.log_text();
        for noise in ["ERROR", "opentelemetry", "OTLP", "otlp"] {
            assert!(
                !log.contains(noise),
                "{name}: log mentions {noise:?}:\n{log}"
            );
        }
    }
}
