//! The checker's own network cut (DESIGN §15), with real processes in network namespaces
//! this test creates and removes: engines at 198.19.x.y addresses (inside 198.18.0.0/15)
//! that exist only in the engines' namespace, each worker in a namespace of its own joined
//! to it by a veth pair, and the worker's end of the pair taken down.
//!
//! Needs root (namespaces, veth pairs); skipped with a message otherwise (CI runs as root).

mod helpers;
#[path = "storm_support/netns.rs"]
mod netns;
#[path = "storm_support/mod.rs"]
mod storm_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use helpers::scenario::{Scenario, WorkerKnobs};
use helpers::{TestEnv, wait_for};
use netns::{Netns, NsEngines, veth};
use storm_support::{LivenessWatch, secs, worst_gap};

const STATUS_PORT: u16 = 8097;

fn skip(test: &str) -> bool {
    match netns::unavailable() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// A unique, short namespace name (interface and namespace names are short).
fn ns_name(role: &str) -> String {
    format!("hp18{role}{}", std::process::id() % 100_000)
}

/// The host:port of a URL like `postgres://user@127.0.0.1:54329/db`.
fn url_addr(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap();
    let host_port = rest.rsplit('@').next().unwrap().split('/').next().unwrap();
    host_port.parse().expect("a numeric host:port")
}

/// The scenario's `healthprobe run` with `knobs` inside `ns`, reaching the shared
/// Postgres and NATS through forwarders on the namespace's loopback (same ports), its
/// status port forwarded to the test.
struct NsWorker {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    status: SocketAddr,
    _forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl NsWorker {
    async fn spawn(scenario: &Scenario, ns: &Arc<Netns>, knobs: WorkerKnobs<'_>) -> Self {
        let mut forwarders = Vec::new();
        for (key, url) in scenario.env.process_env() {
            if key == "DATABASE_URL" || key == "NATS_URL" {
                let addr = url_addr(&url);
                forwarders.push(ns.forward_out(addr, addr));
            }
        }
        let (status, task) = ns
            .forward_in(SocketAddr::from(([127, 0, 0, 1], STATUS_PORT)))
            .await;
        forwarders.push(task);
        let (mut command, log) = knobs.command(
            &["ip", "netns", "exec", &ns.name],
            &format!("127.0.0.1:{STATUS_PORT}"),
        );
        let child = command
            .spawn()
            .expect("spawn healthprobe run in the namespace");
        let worker = Self {
            child,
            log,
            status,
            _forwarders: forwarders,
        };
        wait_for(
            "the worker's status port",
            Duration::from_secs(30),
            || async {
                worker
                    .log_text()
                    .contains("status endpoints listening")
                    .then_some(())
            },
        )
        .await;
        worker
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsWorker {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Joins worker namespace `w` to the engines' `e`: `w`'s end is `w0` at 198.18.0.(4n+1),
/// `e`'s end `e<n>` at 198.18.0.(4n+2), and `w` routes 198.19.0.0/16 through it.
fn link(w: &Netns, e: &Netns, n: u8) {
    let (near, far) = (4 * n + 1, 4 * n + 2);
    veth(
        w,
        "w0",
        &format!("198.18.0.{near}/30"),
        e,
        &format!("e{n}"),
        &format!("198.18.0.{far}/30"),
    );
    route(w, n);
}

fn route(w: &Netns, n: u8) {
    w.ip(&[
        "route",
        "replace",
        "198.19.0.0/16",
        "via",
        &format!("198.18.0.{}", 4 * n + 2),
    ]);
}

fn cut(w: &Netns) {
    w.ip(&["link", "set", "w0", "down"]);
}

fn restore(w: &Netns, n: u8) {
    w.ip(&["link", "set", "w0", "up"]);
    route(w, n);
}

async fn register(env: &TestEnv, engines: &NsEngines) {
    for (i, endpoint) in engines.endpoints.iter().enumerate() {
        env.add_running(&format!("game-{i:03}"), endpoint, None)
            .await;
    }
}

async fn all_probed_since(engines: &NsEngines, since: Instant, limit: Duration) {
    wait_for("a probe of every engine", limit, || async {
        (0..engines.len())
            .all(|i| engines.probes(i).iter().any(|&at| at > since))
            .then_some(())
    })
    .await;
}

/// 200 healthy engines; the worker's link to them goes down for 4 s, then comes back.
/// The runtime manager must see nothing: the failures are the checker's (no route).
#[tokio::test]
async fn the_checkers_network_cut_alone_emits_nothing() {
    if skip("the_checkers_network_cut_alone_emits_nothing") {
        return;
    }
    const ENGINES: usize = 200;
    let interval = Duration::from_secs(1);
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let e = Netns::create(&ns_name("e"));
    let w = Arc::new(Netns::create(&ns_name("w")));
    link(&w, &e, 0);
    let engines = NsEngines::start(&e, ENGINES);
    register(env, &engines).await;
    let worker = NsWorker::spawn(
        &scenario,
        &w,
        scenario
            .worker("storm-cut-alone")
            .interval(interval)
            .probe_timeout(Duration::from_millis(500)),
    )
    .await;
    let liveness = LivenessWatch::start(&worker.status.to_string());
    all_probed_since(&engines, Instant::now(), Duration::from_secs(30)).await;
    all_probed_since(&engines, Instant::now(), Duration::from_secs(30)).await;

    let cut_at = Instant::now();
    cut(&w);
    tokio::time::sleep(Duration::from_secs(4)).await;
    restore(&w, 0);
    let back = Instant::now();
    all_probed_since(&engines, back, Duration::from_secs(30)).await;
    tokio::time::sleep(5 * interval).await;
    let (answers, not_ok) = liveness.finish().await;
    let events = env.logged_events().await;
    let worst = (0..ENGINES)
        .map(|i| worst_gap(&engines.probes(i)))
        .max()
        .unwrap();
    let log = worker.log_text();
    eprintln!(
        "FIGURE storm-cut-alone: events {} emitted / 0 deserved ({ENGINES} engines, link down 4 s); /healthz {not_ok} of {answers} not 200; worst gap between probes of an engine {} (the cut itself {})",
        events.len(),
        secs(worst),
        secs(back.duration_since(cut_at)),
    );
    assert!(events.is_empty(), "{events:?}; log tail: {}", tail(&log));
    assert_eq!(
        not_ok, 0,
        "/healthz answered non-200 {not_ok} times of {answers}"
    );
    assert!(
        worst <= back.duration_since(cut_at) + 3 * interval,
        "probes resumed within a few intervals: {worst:?}"
    );
}

/// Two replicas in namespaces of their own; only one loses its link. It steps out, the
/// other probes its games meanwhile, and nothing is emitted.
#[tokio::test]
async fn a_replica_that_loses_its_network_steps_out_and_the_other_probes_its_games() {
    if skip("a_replica_that_loses_its_network_steps_out_and_the_other_probes_its_games") {
        return;
    }
    const ENGINES: usize = 60;
    let interval = Duration::from_secs(1);
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let e = Netns::create(&ns_name("f"));
    let w1 = Arc::new(Netns::create(&ns_name("a")));
    let w2 = Arc::new(Netns::create(&ns_name("b")));
    link(&w1, &e, 0);
    link(&w2, &e, 1);
    let engines = NsEngines::start(&e, ENGINES);
    register(env, &engines).await;
    let replica = |name: &str, id: &str| {
        scenario
            .worker(name)
            .interval(interval)
            .probe_timeout(Duration::from_millis(500))
            .replica(id)
    };
    let one = NsWorker::spawn(&scenario, &w1, replica("storm-cut-one", "replica-one")).await;
    let two = NsWorker::spawn(&scenario, &w2, replica("storm-cut-two", "replica-two")).await;
    let live_one = LivenessWatch::start(&one.status.to_string());
    let live_two = LivenessWatch::start(&two.status.to_string());
    wait_for(
        "both replicas share the games",
        Duration::from_secs(30),
        || async {
            let log = one.log_text();
            (log.contains("replica-one")
                && log.contains("replica-two")
                && log.contains("membership changed"))
            .then_some(())
        },
    )
    .await;
    all_probed_since(&engines, Instant::now(), Duration::from_secs(30)).await;
    all_probed_since(&engines, Instant::now(), Duration::from_secs(30)).await;

    let cut_at = Instant::now();
    cut(&w1);
    wait_for("replica one steps out", Duration::from_secs(20), || async {
        one.log_text()
            .contains("stepping out of the membership")
            .then_some(())
    })
    .await;
    let stepped_out = cut_at.elapsed();
    // Every engine, replica one's share included, is probed by replica two while one is out.
    let after = Instant::now();
    all_probed_since(&engines, after, Duration::from_secs(20)).await;
    let taken_over = cut_at.elapsed();
    tokio::time::sleep(3 * interval).await;
    restore(&w1, 0);
    let back = Instant::now();
    wait_for("replica one rejoins", Duration::from_secs(20), || async {
        one.log_text()
            .contains("rejoining the membership")
            .then_some(())
    })
    .await;
    let rejoined = back.elapsed();
    all_probed_since(&engines, Instant::now(), Duration::from_secs(20)).await;
    tokio::time::sleep(3 * interval).await;
    let (answers_one, not_ok_one) = live_one.finish().await;
    let (answers_two, not_ok_two) = live_two.finish().await;
    let events = env.logged_events().await;
    let worst = (0..ENGINES)
        .map(|i| worst_gap(&engines.probes(i)))
        .max()
        .unwrap();
    eprintln!(
        "FIGURE storm-cut-replica: events {} emitted / 0 deserved ({ENGINES} engines, 2 replicas, one cut); stepped out {} after the cut, every engine probed again {} after it, rejoined {} after the link came back; /healthz {not_ok_one} of {answers_one} and {not_ok_two} of {answers_two} not 200; worst gap between probes of an engine {}",
        events.len(),
        secs(stepped_out),
        secs(taken_over),
        secs(rejoined),
        secs(worst),
    );
    assert!(
        events.is_empty(),
        "{events:?}; replica one: {}",
        tail(&one.log_text())
    );
    assert_eq!(not_ok_one + not_ok_two, 0, "/healthz answered non-200");
    assert!(
        worst <= Duration::from_secs(8),
        "the other replica took the games over: worst gap {worst:?}"
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
