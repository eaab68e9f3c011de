//! `GET /metrics` scraped by a real Prometheus server (Debian's `prometheus`) on loopback,
//! read back through its query API.
//!
//! `scripts/test.sh` installs the package when it is missing and it runs as root. Without
//! it the test fails with what to install, unless `HEALTHPROBE_SKIP_PROMETHEUS=1`.

mod helpers;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use helpers::engines::Behavior;
use helpers::process::log_path;
use helpers::scenario::Scenario;
use helpers::{WAIT_LIMIT, free_port, wait_for};
use serde_json::Value;

/// Prometheus starts in a few seconds here; its first scrape follows one scrape interval.
const PROMETHEUS_LIMIT: Duration = Duration::from_secs(60);

fn prometheus_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HEALTHPROBE_PROMETHEUS_BIN") {
        let path = PathBuf::from(path);
        return path.exists().then_some(path);
    }
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
}

/// The value of each series of an instant query, by the value of `label`.
async fn query(
    client: &reqwest::Client,
    base: &str,
    promql: &str,
    label: &str,
) -> Vec<(String, f64)> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", promql)
        .finish();
    let Ok(response) = client
        .get(format!("{base}/api/v1/query?{query}"))
        .send()
        .await
    else {
        return Vec::new();
    };
    let Some(body) = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Vec::new();
    };
    body["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .map(|s| {
                    (
                        s["metric"][label].as_str().unwrap_or_default().to_owned(),
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_prometheus_server_scrapes_the_probe_counters_from_metrics() {
    let Some(prometheus) = prometheus_binary() else {
        if std::env::var("HEALTHPROBE_SKIP_PROMETHEUS").as_deref() == Ok("1") {
            eprintln!("SKIPPED: prometheus missing and HEALTHPROBE_SKIP_PROMETHEUS=1");
            return;
        }
        panic!(
            "this test needs Debian's prometheus (/usr/bin/prometheus or \
             HEALTHPROBE_PROMETHEUS_BIN): `apt-get install prometheus` (scripts/test.sh does it \
             when run as root), or set HEALTHPROBE_SKIP_PROMETHEUS=1 to skip it"
        );
    };
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    for (game, behavior) in [
        ("ok-1", Behavior::Healthy),
        ("ok-2", Behavior::Healthy),
        ("down", Behavior::Status(503)),
    ] {
        scenario.game(game, game, behavior).await;
    }
    let worker_addr = format!("127.0.0.1:{}", free_port());
    let mut worker = scenario
        .worker("prometheus")
        .http_addr(&worker_addr)
        .interval(Duration::from_millis(200))
        .failures(1)
        .spawn();
    let client = reqwest::Client::new();
    // The worker's own answer first, so a failure below is Prometheus's side.
    let text = wait_for("probe counters at /metrics", WAIT_LIMIT, || async {
        let response = client
            .get(format!("http://{worker_addr}/metrics"))
            .send()
            .await
            .ok()?;
        let text = response.text().await.ok()?;
        (text.contains("outcome=\"ok\"") && text.contains("outcome=\"status\"")).then_some(text)
    })
    .await;
    assert!(
        text.contains("# TYPE healthprobe_probes_total counter"),
        "{text}"
    );

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    // The alert rules the repository ships, evaluated by the real server on the real metrics.
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: healthprobe\n    static_configs:\n      - targets: ['{worker_addr}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let prometheus_addr = format!("127.0.0.1:{}", free_port());
    let log = log_path(&format!("{}-prometheus-server", env.id));
    let mut server = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus_addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let base = format!("http://{prometheus_addr}");

    let up = wait_for(
        "Prometheus to scrape the worker (up == 1)",
        PROMETHEUS_LIMIT,
        || async {
            let up = query(&client, &base, "up{job=\"healthprobe\"}", "instance").await;
            up.into_iter().find(|(_, v)| *v == 1.0)
        },
    )
    .await;
    assert_eq!(up.0, worker_addr);
    let counters = wait_for(
        "healthprobe_probes_total for ok and status in Prometheus",
        PROMETHEUS_LIMIT,
        || async {
            let series = query(&client, &base, "healthprobe_probes_total", "outcome").await;
            let ok = series.iter().find(|(o, _)| o == "ok").map(|s| s.1)?;
            let status = series.iter().find(|(o, _)| o == "status").map(|s| s.1)?;
            (ok > 0.0 && status > 0.0).then_some((ok, status))
        },
    )
    .await;
    // Two healthy engines for one failing one: about twice as many ok probes.
    assert!(
        counters.0 >= counters.1,
        "ok {} status {}",
        counters.0,
        counters.1
    );
    // The histogram and the event counter arrive under their Prometheus names too.
    let probes_seen = query(
        &client,
        &base,
        "healthprobe_probe_duration_seconds_count",
        "job",
    )
    .await;
    assert!(probes_seen.iter().any(|(_, v)| *v > 0.0), "{probes_seen:?}");
    let events = query(
        &client,
        &base,
        "rtmanager_health_events_total",
        "event_type",
    )
    .await;
    assert!(
        events.iter().any(|(t, v)| t == "probe_failed" && *v >= 1.0),
        "{events:?}"
    );
    let events = query(&client, &base, "healthprobe_events_total", "event_type").await;
    assert!(
        events.iter().any(|(t, v)| t == "probe_failed" && *v >= 1.0),
        "the healthprobe_ name beside the compatibility one: {events:?}"
    );
    // Running games by status: two healthy, one failing (threshold 1).
    let games = wait_for(
        "healthprobe_games: 2 healthy, 1 failing",
        PROMETHEUS_LIMIT,
        || async {
            let games = query(&client, &base, "healthprobe_games", "status").await;
            let of = |s: &str| games.iter().find(|(status, _)| status == s).map(|g| g.1);
            (of("healthy") == Some(2.0) && of("failing") == Some(1.0)).then_some(games)
        },
    )
    .await;
    assert_eq!(
        games.len(),
        healthprobe::telemetry::GAME_STATUSES.len(),
        "every status has its series: {games:?}"
    );
    // The probe duration with the OpenTelemetry HTTP client attributes.
    let by_code = query(
        &client,
        &base,
        "sum by (http_response_status_code) (healthprobe_probe_duration_seconds_count)",
        "http_response_status_code",
    )
    .await;
    assert!(
        by_code.iter().any(|(c, v)| c == "200" && *v > 0.0)
            && by_code.iter().any(|(c, v)| c == "503" && *v > 0.0),
        "{by_code:?}"
    );
    let by_error = query(
        &client,
        &base,
        "sum by (error_type) (healthprobe_probe_duration_seconds_count{error_type!=\"\"})",
        "error_type",
    )
    .await;
    assert_eq!(
        by_error.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        ["503"],
        "only the failing engine's probes carry an error type"
    );
    // Which version runs, and the gauges the alerts read, present from the start.
    let build = query(&client, &base, "healthprobe_build_info", "version").await;
    assert_eq!(
        build,
        [(env!("CARGO_PKG_VERSION").to_owned(), 1.0)],
        "healthprobe_build_info{{version}}"
    );
    let holding = query(&client, &base, "healthprobe_mass_failure_holding", "job").await;
    assert_eq!(
        holding,
        [("healthprobe".to_owned(), 0.0)],
        "no mass failure here"
    );
    let set_aside = wait_for(
        "healthprobe_outbox_set_aside_rows",
        PROMETHEUS_LIMIT,
        || async {
            let rows = query(&client, &base, "healthprobe_outbox_set_aside_rows", "job").await;
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await;
    assert_eq!(set_aside, [("healthprobe".to_owned(), 0.0)]);
    // Every shipped alert rule evaluates without error against these metrics.
    let rules = wait_for(
        "Prometheus to evaluate deploy/prometheus/alerts.yml",
        PROMETHEUS_LIMIT,
        || async {
            let response = client
                .get(format!("{base}/api/v1/rules"))
                .send()
                .await
                .ok()?;
            let body: Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
            let rules: Vec<(String, String, String)> = body["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .map(|r| {
                    let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                    (text("name"), text("health"), text("lastError"))
                })
                .collect();
            (!rules.is_empty() && rules.iter().all(|(_, health, _)| health != "unknown"))
                .then_some(rules)
        },
    )
    .await;
    assert!(rules.len() >= 8, "{rules:?}");
    for (name, health, error) in &rules {
        assert_eq!(health, "ok", "rule {name}: {error}");
    }
    eprintln!(
        "prometheus read back healthprobe_probes_total ok={} status={}; {} alert rules evaluated",
        counters.0,
        counters.1,
        rules.len()
    );

    server.kill().await.ok();
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}
