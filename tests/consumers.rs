//! The example consumers of `examples/consumers/` (Python with nats-py, Go with nats.go) run
//! against the real stream: the worker emits a `probe_failed`, each consumer receives it,
//! acts once and acks it; the same event coming again (published again after the duplicate
//! window, or redelivered by JetStream after an ack that never came) is recognised by its
//! `event_id` and acknowledged without acting twice.
//!
//! `scripts/consumers-setup.sh` prepares both (a virtual environment with nats-py; Debian's
//! Go and nats.go, built offline); it installs what is missing when run as root.

mod helpers;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::consumer::{Info, PullConsumer};
use futures::StreamExt as _;
use helpers::engines::Behavior;
use helpers::scenario::Scenario;
use helpers::{StreamEvent, TestEnv};
use serde_json::Value;

/// A consumer connects, creates its durable and handles one message in well under a second;
/// the bound covers a redelivery's ack wait and a loaded machine.
const CONSUMER_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Language {
    Python,
    Go,
}

struct Consumers {
    python: String,
    go: String,
}

fn consumers() -> &'static Consumers {
    static CONSUMERS: OnceLock<Consumers> = OnceLock::new();
    CONSUMERS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let output = std::process::Command::new(root.join("scripts/consumers-setup.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/consumers-setup.sh");
        assert!(
            output.status.success(),
            "scripts/consumers-setup.sh failed (its messages are above)"
        );
        let text = String::from_utf8(output.stdout).expect("setup output is UTF-8");
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("setup printed no {name}: {text}"))
                .to_owned()
        };
        Consumers {
            python: value("HEALTHPROBE_CONSUMER_PYTHON"),
            go: value("HEALTHPROBE_CONSUMER_GO"),
        }
    })
}

/// Runs the consumer until it has handled `--max-events 1`; its report lines.
async fn run_consumer(language: Language, env: &TestEnv, durable: &str, state: &str) -> Vec<Value> {
    let consumers = consumers();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut command = match language {
        Language::Python => {
            let mut c = tokio::process::Command::new(&consumers.python);
            c.arg(root.join("examples/consumers/python/consumer.py"))
                .args(["--ack-wait", "1"]);
            c
        }
        Language::Go => {
            let mut c = tokio::process::Command::new(&consumers.go);
            c.args(["--ack-wait", "1s"]);
            c
        }
    };
    command
        .args(["--durable", durable, "--state", state, "--max-events", "1"])
        .envs(env.process_env())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CONSUMER_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!("the {language:?} consumer handled no message within {CONSUMER_LIMIT:?}")
        })
        .expect("run the consumer");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the {language:?} consumer failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Shown with `--nocapture`: what each run reported and did.
    eprint!("{language:?} consumer, durable {durable}:\n{stdout}{stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("report line {l:?}: {e}")))
        .collect()
}

async fn durable(env: &TestEnv, name: &str) -> PullConsumer {
    env.js
        .get_stream(&env.target.stream)
        .await
        .expect("test stream")
        .get_consumer(name)
        .await
        .expect("the consumer created its durable")
}

async fn info(env: &TestEnv, name: &str) -> Info {
    durable(env, name)
        .await
        .info()
        .await
        .expect("consumer info")
        .clone()
}

/// Publishes `event` again under a new `Nats-Msg-Id`, as the worker would after an outage
/// longer than JetStream's duplicate window.
async fn publish_again(env: &TestEnv, event: &StreamEvent, msg_id: &str) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    env.js
        .publish_with_headers(
            event.subject.clone(),
            headers,
            serde_json::to_vec(&event.payload).expect("payload").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
}

fn single<'a>(reports: &'a [Value], what: &str) -> &'a Value {
    assert_eq!(
        reports.len(),
        1,
        "{what}: one message expected, got {reports:?}"
    );
    &reports[0]
}

async fn consumes_once_and_recognises_duplicates(language: Language) {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    scenario
        .game_in("broken", "broken", Some("c-broken"), Behavior::Status(503))
        .await;
    let mut worker = scenario
        .worker(&format!("consumer-{language:?}"))
        .interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_secs(1))
        .failures(2)
        .spawn();
    let events = env.wait_stream_events(1).await;
    worker.kill().await;
    let failed = &events[0];
    assert_eq!(failed.event_type(), "probe_failed");
    let event_id = failed.payload["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();
    let state = std::env::temp_dir().join(format!("hp-consumer-{}-{language:?}", env.id));
    let state = state.to_str().expect("UTF-8 path");
    let name = "runtime-manager";

    // 1. The worker's probe_failed: handled once, acknowledged.
    let reports = run_consumer(language, env, name, state).await;
    let first = single(&reports, "first run");
    assert_eq!(first["outcome"], "handled", "{first}");
    assert_eq!(first["event_id"], event_id.as_str());
    assert_eq!(first["event_type"], "probe_failed");
    assert_eq!(first["game_id"], "broken");
    assert_eq!(first["container_id"], "c-broken");
    assert_eq!(first["delivered"], 1);
    let after_first = info(env, name).await;
    assert_eq!(
        (
            after_first.num_ack_pending,
            after_first.num_pending,
            after_first.ack_floor.stream_sequence
        ),
        (0, 0, 1),
        "the ack reached the server"
    );

    // 2. The same event published again (after the duplicate window): a duplicate.
    publish_again(env, failed, &format!("{event_id}-again")).await;
    let reports = run_consumer(language, env, name, state).await;
    let again = single(&reports, "the event published again");
    assert_eq!(again["outcome"], "duplicate", "{again}");
    assert_eq!(again["event_id"], event_id.as_str());
    assert_eq!(again["delivered"], 1);

    // 3. A real redelivery: another instance of the consumer fetched the message and died
    //    before acking; JetStream delivers it again after the ack wait.
    publish_again(env, failed, &format!("{event_id}-once-more")).await;
    let mut fetched = durable(env, name)
        .await
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let unacked = fetched
        .next()
        .await
        .expect("a message for the dying instance")
        .expect("message");
    assert_eq!(unacked.info().expect("metadata").delivered, 1);
    drop(fetched);
    drop(unacked);
    let reports = run_consumer(language, env, name, state).await;
    let redelivered = single(&reports, "the redelivery");
    assert_eq!(redelivered["outcome"], "duplicate", "{redelivered}");
    assert_eq!(redelivered["event_id"], event_id.as_str());
    assert_eq!(redelivered["delivered"], 2, "JetStream's second delivery");

    let end = info(env, name).await;
    assert_eq!(
        (end.num_ack_pending, end.num_pending),
        (0, 0),
        "everything acknowledged"
    );
    assert_eq!(end.ack_floor.stream_sequence, 3);
    let _ = std::fs::remove_file(state);
}

#[tokio::test]
async fn the_python_consumer_acts_once_per_event() {
    consumes_once_and_recognises_duplicates(Language::Python).await;
}

#[tokio::test]
async fn the_go_consumer_acts_once_per_event() {
    consumes_once_and_recognises_duplicates(Language::Go).await;
}
