//! The fleet page (`GET /`) in headless Chromium, against a running worker and simulated
//! fleets: every game shown, live updates without reload, the filters, paging through
//! 10,000 games, the history, "probe now" with the API token, disabled games, and the
//! screenshot of the demo fleet shown in the README.
//!
//! Needs Debian's `chromium` and `chromium-driver` (see `helpers::browser`).

mod helpers;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use healthprobe::sim::{Fleet as DemoFleet, FleetSpec};
use helpers::browser::{self, Browser};
use helpers::engines::Behavior;
use helpers::process::WorkerProcess;
use helpers::scenario::{Scenario, WorkerKnobs};
use helpers::{WAIT_LIMIT, free_port, wait_for};
use serde_json::{Value, json};

/// A laptop screen and a phone (CSS pixels).
const LAPTOP: (u32, u32) = (1366, 860);
const PHONE: (u32, u32) = (390, 844);

/// Starts `healthprobe run` with `knobs` and its status port on a known free port; returns
/// the page URL once the server answers.
async fn start_worker(knobs: WorkerKnobs<'_>) -> (WorkerProcess, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let worker = knobs.http_addr(&addr).spawn();
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    wait_for("the worker's status port", WAIT_LIMIT, || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(drop)
    })
    .await;
    (worker, format!("{base}/"))
}

fn ids(state: &Value) -> Vec<String> {
    state["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_str().unwrap().to_owned())
        .collect()
}

/// Waits for two more redraws of the page, then checks that the focus is still on the
/// element whose focus key is `key`.
async fn assert_focus_survives_redraws(browser: &Browser, key: &Value, what: &str) {
    let refreshes = browser.page_state().await["refreshes"].as_u64().unwrap();
    browser
        .wait_until(
            "two more redraws",
            WAIT_LIMIT,
            &format!(
                "return Number(document.body.dataset.refreshes) >= {} ? true : null;",
                refreshes + 2
            ),
        )
        .await;
    let focused = browser
        .execute(
            "return document.activeElement && document.activeElement.dataset.focusKey || null;",
            json!([]),
        )
        .await;
    assert_eq!(&focused, key, "focus kept {what} across redraws");
}

/// Waits until `game`'s row says what its last "probe now" gave, starting with `prefix`;
/// returns the whole text.
async fn wait_probed(browser: &Browser, what: &str, game: &str, prefix: &str) -> Value {
    let (probed, _) = browser
        .wait_until(
            what,
            WAIT_LIMIT,
            &format!(
                "const r = (() => {{ {} }})(); return r && r.probed && r.probed.startsWith('{prefix}') ? r.probed : null;",
                row_state(game)
            ),
        )
        .await;
    probed
}

/// The script that waits for `game` to show `status` in the list.
fn shows(game: &str, status: &str) -> String {
    format!(
        "const tr = document.querySelector('#games tbody tr[data-game-id=\"{game}\"]'); \
         return tr && tr.dataset.status === '{status}' ? tr.dataset.status : null;"
    )
}

#[tokio::test]
async fn the_page_shows_every_game_follows_a_failure_and_recovery_live_and_filters() {
    if !browser::available("the fleet page test") {
        return;
    }
    let scenario = Scenario::new().await;
    let engines = &scenario.fleet;
    // 130 games: more than one page (100), so "every game" includes paging.
    let games = scenario
        .games_named(130, |i| format!("game-{i:03}"), Behavior::Healthy)
        .await;
    let interval = Duration::from_secs(2);
    let (mut worker, page) =
        start_worker(scenario.worker("page").interval(interval).failures(1)).await;
    let browser = Browser::start("page", LAPTOP.0, LAPTOP.1).await;
    browser.goto(&page).await;
    browser
        .wait_until(
            "130 healthy games listed and the live stream connected",
            WAIT_LIMIT,
            "return document.getElementById('count-healthy').textContent === '130' \
               && document.getElementById('range').textContent === '1–100 of 130' \
               && document.getElementById('live-state').dataset.state === 'live';",
        )
        .await;

    // Every game: the first page holds 100, the next the other 30.
    let first = browser.page_state().await;
    assert_eq!(first["range"], "1–100 of 130", "{first}");
    let mut seen: BTreeSet<String> = ids(&first).into_iter().collect();
    browser.click("#next").await;
    let (_, _) = browser
        .wait_until(
            "the second page",
            WAIT_LIMIT,
            "return document.getElementById('range').textContent === '101–130 of 130';",
        )
        .await;
    let second = browser.page_state().await;
    assert_eq!(ids(&second).len(), 30, "{second}");
    seen.extend(ids(&second));
    assert_eq!(
        seen,
        games.iter().cloned().collect::<BTreeSet<_>>(),
        "every game is on one of the pages"
    );
    browser.click("#prev").await;
    browser
        .wait_until(
            "the first page again",
            WAIT_LIMIT,
            "return document.getElementById('range').textContent === '1–100 of 130';",
        )
        .await;

    // A reload would lose this marker: the page must update in place.
    browser
        .execute("window.__marker = 'no reload';", json!([]))
        .await;

    // An engine turns failing: shown failing, first in the list, within two intervals.
    let target = "game-077";
    engines.set(target, Behavior::Status(503));
    let (_, failing_after) = browser
        .wait_until(
            &format!("{target} shown failing within two intervals"),
            interval * 2,
            &shows(target, "failing"),
        )
        .await;
    let state = browser.page_state().await;
    assert_eq!(state["marker"], "no reload", "{state}");
    assert_eq!(ids(&state)[0], target, "failing games come first: {state}");
    assert_eq!(state["counts"]["failing"], "1", "{state}");
    browser
        .wait_until(
            "the probe_failed event in the events list",
            interval * 2,
            &format!(
                "return document.querySelector('#events li[data-event-type=\"probe_failed\"][data-game-id=\"{target}\"]');"
            ),
        )
        .await;

    // The filters: by status, then by game id.
    browser.click("[data-filter-status='failing']").await;
    browser
        .wait_until(
            "only failing games listed",
            WAIT_LIMIT,
            "const rows = [...document.querySelectorAll('#games tbody tr')]; \
             return rows.length === 1 && rows[0].dataset.status === 'failing';",
        )
        .await;
    browser.click("[data-filter-status='failing']").await; // again: all statuses
    browser.type_text("#filter-id", "game-05").await;
    let (filtered, _) = browser
        .wait_until(
            "the ten games whose id contains game-05",
            WAIT_LIMIT,
            "const rows = [...document.querySelectorAll('#games tbody tr')].map(tr => tr.dataset.gameId); \
             return rows.length === 10 && rows.every(id => id.startsWith('game-05')) ? rows : null;",
        )
        .await;
    assert_eq!(filtered.as_array().unwrap().len(), 10);
    browser.clear("#filter-id").await;
    browser.type_text("#filter-id", "game-07?").await;
    browser
        .wait_until(
            "a glob matches game-070 to game-079, the failing one first",
            WAIT_LIMIT,
            &format!(
                "const rows = [...document.querySelectorAll('#games tbody tr')].map(tr => tr.dataset.gameId); \
                 return rows.length === 10 && rows[0] === '{target}';"
            ),
        )
        .await;

    // It recovers: shown healthy again, still without a reload.
    engines.set(target, Behavior::Healthy);
    let (_, healthy_after) = browser
        .wait_until(
            &format!("{target} shown healthy again within two intervals"),
            interval * 2,
            &shows(target, "healthy"),
        )
        .await;
    let state = browser.page_state().await;
    assert_eq!(state["marker"], "no reload", "{state}");
    assert_eq!(state["counts"]["failing"], "0", "{state}");
    browser
        .wait_until(
            "the probe_recovered event in the events list",
            WAIT_LIMIT,
            &format!(
                "return document.querySelector('#events li[data-event-type=\"probe_recovered\"][data-game-id=\"{target}\"]');"
            ),
        )
        .await;
    eprintln!(
        "fleet page: failing shown {failing_after:?} after the flip, healthy {healthy_after:?} after recovery (interval {interval:?})"
    );
    // The open live stream does not hold the worker's shutdown, and the page notices.
    let (status, took) = worker.terminate(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "the worker stops cleanly with the page's live stream open: {}",
        worker.log_text()
    );
    browser
        .wait_until(
            "the page to show the lost connection",
            WAIT_LIMIT,
            "return document.getElementById('live-state').dataset.state === 'down';",
        )
        .await;
    eprintln!("worker stopped in {took:?} with the page open");
}

#[tokio::test]
async fn the_page_pages_through_ten_thousand_games_one_page_in_the_document_at_a_time() {
    if !browser::available("the 10,000-game page test") {
        return;
    }
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    // 10,000 running games with snapshots in every status; no worker ticks (nothing to
    // probe): the page reads what Postgres holds.
    sqlx::query(
        "INSERT INTO runtime_records (game_id, status, engine_endpoint, started_at) \
         SELECT format('game-%s', lpad(i::text, 5, '0')), 'running', 'http://127.0.0.1:9/e', now() \
         FROM generate_series(0, 9999) AS i",
    )
    .execute(env.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO health_snapshots (game_id, status, consecutive_failures, consecutive_successes, \
           episode_failures, failure_published, last_probe_at, last_status, last_latency_ms, updated_at) \
         SELECT format('game-%s', lpad(i::text, 5, '0')), \
           CASE WHEN i % 500 = 0 THEN 'failing' WHEN i % 250 = 0 THEN 'suspect' ELSE 'healthy' END, \
           CASE WHEN i % 250 = 0 THEN 3 ELSE 0 END, 0, 0, i % 500 = 0, now(), \
           CASE WHEN i % 250 = 0 THEN 503 ELSE 200 END, 1.5, now() \
         FROM generate_series(0, 9998) AS i",
    )
    .execute(env.pool())
    .await
    .unwrap();
    let app = scenario.app().without_worker().await;
    let browser = Browser::start("page-10k", LAPTOP.0, LAPTOP.1).await;
    let started = Instant::now();
    browser.goto(&format!("{}/", app.base)).await;
    let (_, _) = browser
        .wait_until(
            "the first page of 10,000 games",
            WAIT_LIMIT,
            "return document.getElementById('count-all').textContent === '10,000' \
               && document.querySelectorAll('#games tbody tr').length === 100;",
        )
        .await;
    let first_render = started.elapsed();
    let state = browser.page_state().await;
    // 20 failing (i % 500), 20 suspect (i % 250 but not % 500), 1 never probed.
    assert_eq!(state["counts"]["failing"], "20", "{state}");
    assert_eq!(state["counts"]["suspect"], "20", "{state}");
    assert_eq!(state["counts"]["unknown"], "1", "{state}");
    let statuses: Vec<&str> = state["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_str().unwrap())
        .collect();
    assert!(
        statuses[..20].iter().all(|s| *s == "failing")
            && statuses[20..40].iter().all(|s| *s == "suspect")
            && statuses[40] == "unknown"
            && statuses[41..].iter().all(|s| *s == "healthy"),
        "failing, then suspect, then unknown, then healthy: {statuses:?}"
    );
    // Deep into the healthy games, page by page; the document never holds more than a page.
    let mut page_turns = Vec::new();
    for page in 2..=6 {
        let turn = Instant::now();
        browser.click("#next").await;
        browser
            .wait_until(
                &format!("page {page}"),
                WAIT_LIMIT,
                &format!(
                    "return document.getElementById('range').textContent.startsWith('{}–') \
                       && document.querySelectorAll('#games tbody tr').length === 100;",
                    (page - 1) * 100 + 1
                ),
            )
            .await;
        page_turns.push(turn.elapsed());
    }
    let filter = Instant::now();
    browser.type_text("#filter-id", "game-09999").await;
    browser
        .wait_until(
            "the one game matching game-09999",
            WAIT_LIMIT,
            "const rows = document.querySelectorAll('#games tbody tr'); \
             return rows.length === 1 && rows[0].dataset.gameId === 'game-09999' \
               && rows[0].dataset.status === 'unknown';",
        )
        .await;
    eprintln!(
        "10,000 games: first page rendered {first_render:?} after navigation, page turns {page_turns:?}, \
         id filter {:?} (includes the 200 ms typing pause)",
        filter.elapsed()
    );
}

/// The README's screenshot: the demo fleet of `scripts/run.sh` (12 engines: healthy,
/// flapping, failing, slow) under a worker with the demo's settings, once the page shows a
/// mix. Written to `target/tmp/`; with `HEALTHPROBE_UPDATE_SCREENSHOTS=1`, also to `docs/`.
#[tokio::test]
async fn a_screenshot_of_the_demo_fleet_on_a_laptop_and_a_phone() {
    if !browser::available("the screenshot test") {
        return;
    }
    let scenario = Scenario::new().await;
    let fleet = DemoFleet::start(
        FleetSpec {
            engines: 12,
            mix: "healthy=6,flapping=3,failing=2,slow=1".parse().unwrap(),
            flap_period: Duration::from_secs(8),
            slow_delay: Duration::from_secs(3),
            ..FleetSpec::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        None,
    )
    .await
    .expect("the demo fleet starts");
    let games: Vec<(String, String)> = fleet
        .engines()
        .iter()
        .map(|e| (e.name.clone(), e.endpoint.clone()))
        .collect();
    scenario.env.store.register_running(&games).await.unwrap();
    let (mut worker, page) = start_worker(
        scenario
            .worker("screenshot")
            .interval(Duration::from_secs(2))
            .probe_timeout(Duration::from_secs(1))
            .failures(2),
    )
    .await;
    let browser = Browser::start("screenshot", LAPTOP.0, LAPTOP.1).await;
    browser.goto(&page).await;
    // A mix: failing engines published, healthy ones, and events in the list (the failing
    // and slow engines fail from the start; flapping ones add failures and recoveries).
    browser
        .wait_until(
            "a mixed fleet on the page",
            Duration::from_secs(40),
            "const n = id => Number(document.getElementById(id).textContent); \
             return n('count-all') === 12 && n('count-failing') >= 3 && n('count-healthy') >= 6 \
               && document.querySelectorAll('#events li[data-event-type=\"probe_recovered\"]').length >= 1 \
               && document.querySelectorAll('#events li').length >= 4;",
        )
        .await;
    let state = browser.page_state().await;
    eprintln!("screenshot taken of: {state}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let laptop = browser.screenshot().await;
    assert_screenshot_of_the_viewport(&browser, &laptop).await;
    std::fs::write(out.join("fleet-page.png"), &laptop).unwrap();
    browser.set_window(PHONE.0, PHONE.1).await;
    browser
        .wait_until(
            "the phone layout (one column, no table header)",
            WAIT_LIMIT,
            "return window.innerWidth <= 760 \
               && getComputedStyle(document.querySelector('#games thead')).display === 'none';",
        )
        .await;
    let phone = browser.screenshot().await;
    assert_screenshot_of_the_viewport(&browser, &phone).await;
    std::fs::write(out.join("fleet-page-phone.png"), &phone).unwrap();
    if std::env::var("HEALTHPROBE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("fleet-page.png"), &laptop).unwrap();
        std::fs::write(docs.join("fleet-page-phone.png"), &phone).unwrap();
        eprintln!("screenshots written to {}", docs.display());
    }
    drop(browser);
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    fleet.shutdown().await;
}

/// The screenshot is a PNG of the whole viewport (its header's size is the window's in
/// device pixels) with something drawn on it: a blank or half-rendered page compresses to
/// a few KiB, the demo fleet's page to several times more.
async fn assert_screenshot_of_the_viewport(browser: &Browser, png: &[u8]) {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    const MIN_DRAWN_BYTES: usize = 24 * 1024;
    assert!(png.starts_with(SIGNATURE), "a PNG");
    // The IHDR chunk comes first: length (4), type (4), width (4), height (4), big-endian.
    assert_eq!(
        &png[12..16],
        b"IHDR",
        "the PNG starts with its header chunk"
    );
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    let viewport = browser
        .execute(
            "return [Math.round(window.innerWidth * window.devicePixelRatio), \
                     Math.round(window.innerHeight * window.devicePixelRatio)];",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(
        serde_json::json!([width, height]),
        viewport,
        "the screenshot covers the viewport"
    );
    assert!(
        png.len() >= MIN_DRAWN_BYTES,
        "{} bytes: the page looks blank",
        png.len()
    );
}

/// What one row shows of its history, endpoint and action.
fn row_state(game: &str) -> String {
    format!(
        "const tr = document.querySelector('#games tbody tr[data-game-id=\"{game}\"]'); \
         if (!tr) return null; \
         const text = (css) => {{ const n = tr.querySelector(css); return n ? n.textContent : null; }}; \
         const avail = tr.querySelector('.avail'); \
         return {{ status: tr.dataset.status, since: text('.since'), where: text('.where'), \
                  marks: tr.querySelectorAll('.timeline span').length, \
                  availability: avail ? Number(avail.dataset.availability) : null, \
                  avail: avail ? avail.textContent : null, probed: text('.probed') }};"
    )
}

/// The history of each game (timeline, availability, how long failing), its endpoint and
/// container, "probe now", replicas and set-aside rows in the header; focus survives redraws;
/// a hidden tab fetches nothing and comes back live.
#[tokio::test]
async fn the_page_shows_each_games_history_probes_on_demand_keeps_focus_and_sleeps_while_hidden() {
    if !browser::available("the fleet page history test") {
        return;
    }
    let scenario = Scenario::new().await;
    let (env, engines) = (&scenario.env, &scenario.fleet);
    for (game, behavior) in [
        ("broken", Behavior::Status(503)),
        ("past", Behavior::Healthy),
        ("steady", Behavior::Healthy),
    ] {
        scenario
            .game_in(game, game, Some(&format!("c-{game}")), behavior)
            .await;
    }
    // An episode of "past" from 12 h to 6 h ago: 75 % available over the last 24 h.
    env.log_published_event("past", "c-past", "probe_failed", 12.0)
        .await;
    env.log_published_event("past", "c-past", "probe_recovered", 6.0)
        .await;
    let (mut worker, page) = start_worker(
        scenario
            .worker("page-history")
            .interval(Duration::from_secs(1))
            .failures(1),
    )
    .await;
    let browser = Browser::start("page-history", LAPTOP.0, LAPTOP.1).await;
    browser.goto(&page).await;
    let (broken, _) = browser
        .wait_until(
            "broken shown failing, with how long and its timeline",
            WAIT_LIMIT,
            &format!(
                "const r = (() => {{ {} }})(); return r && r.status === 'failing' && r.since && r.marks > 0 ? r : null;",
                row_state("broken")
            ),
        )
        .await;
    assert!(
        broken["since"]
            .as_str()
            .unwrap()
            .starts_with("failing for "),
        "{broken}"
    );
    let endpoint = engines.endpoint("broken");
    assert!(
        broken["where"]
            .as_str()
            .unwrap()
            .contains(endpoint.trim_end_matches('/'))
            && broken["where"].as_str().unwrap().contains("c-broken"),
        "endpoint and container shown: {broken}"
    );
    assert!(broken["availability"].as_f64().unwrap() < 1.0, "{broken}");
    let past = browser.execute(&row_state("past"), json!([])).await;
    assert_eq!(past["marks"], 1, "{past}");
    assert!(
        (past["availability"].as_f64().unwrap() - 0.75).abs() < 0.01,
        "{past}"
    );
    assert_eq!(past["avail"], "75.00 % available", "{past}");
    assert_eq!(past["since"], Value::Null, "{past}");
    let steady = browser.execute(&row_state("steady"), json!([])).await;
    assert_eq!(
        (steady["marks"].clone(), steady["avail"].clone()),
        (json!(0), json!("100 % available")),
        "{steady}"
    );
    let header = browser
        .execute(
            "return { replicas: document.getElementById('replicas').textContent, \
                      setAsideHidden: getComputedStyle(document.getElementById('set-aside')).display === 'none', \
                      setAside: document.getElementById('set-aside-count').textContent };",
            json!([]),
        )
        .await;
    assert_eq!(
        header,
        json!({ "replicas": "1 replica", "setAsideHidden": true, "setAside": "0" })
    );

    // "Probe now": the answer shows in the row, and the button keeps the focus through the
    // redraws that follow (each tick redraws every row).
    // Clicked from the page itself: the row is redrawn every tick, so a WebDriver element
    // reference can go stale between finding and clicking it.
    browser
        .execute(
            "const b = document.querySelector(\"button[data-focus-key='probe:broken']\"); b.focus(); b.click();",
            json!([]),
        )
        .await;
    wait_probed(
        &browser,
        "the on-demand probe's answer in the row",
        "broken",
        "failed: unexpected status 503",
    )
    .await;
    assert_focus_survives_redraws(&browser, &json!("probe:broken"), "on the probe button").await;
    // The same in the events list.
    let key = browser
        .execute(
            "const b = document.querySelector('#events li button'); b.focus(); return b.dataset.focusKey;",
            json!([]),
        )
        .await;
    assert_focus_survives_redraws(&browser, &key, "in the events list").await;

    // Hidden: the push stream closes and nothing is fetched while ticks go on.
    browser
        .execute(
            "window.__fetches = 0; const f = window.fetch; \
             window.fetch = (...a) => { window.__fetches++; return f(...a); }; \
             Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' }); \
             document.dispatchEvent(new Event('visibilitychange'));",
            json!([]),
        )
        .await;
    let hidden_state = browser.page_state().await;
    assert_eq!(hidden_state["live"], "paused", "{hidden_state}");
    let probes_before = engines.requests("steady");
    wait_for("three more ticks of the worker", WAIT_LIMIT, || async {
        (engines.requests("steady") >= probes_before + 3).then_some(())
    })
    .await;
    let after = browser.execute("return window.__fetches;", json!([])).await;
    assert_eq!(after, 0, "no request while hidden");
    assert_eq!(
        browser.page_state().await["refreshes"],
        hidden_state["refreshes"]
    );
    // Shown again: live at once, and up to date.
    browser
        .execute(
            "Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' }); \
             document.dispatchEvent(new Event('visibilitychange'));",
            json!([]),
        )
        .await;
    browser
        .wait_until(
            "live again and refreshed",
            WAIT_LIMIT,
            &format!(
                "return document.getElementById('live-state').dataset.state === 'live' \
                   && Number(document.body.dataset.refreshes) > {} ? true : null;",
                hidden_state["refreshes"]
            ),
        )
        .await;

    drop(browser);
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
}

/// With `HEALTHPROBE_HTTP_TOKEN` set: "probe now" without the token shows the 401 and asks
/// for it, a wrong token is refused (401 again, and forgotten), the right one runs the probe.
/// A game disabled in `health_probe_overrides` has its own tile and count, is listed as
/// `disabled`, and its "probe now" says why it is not probed (409).
#[tokio::test]
async fn probe_now_asks_for_the_token_and_disabled_games_have_their_tile() {
    if !browser::available("the fleet page token test") {
        return;
    }
    let scenario = Scenario::new().await;
    let (env, engines) = (&scenario.env, &scenario.fleet);
    scenario.game("fine", "fine", Behavior::Healthy).await;
    scenario.game("off", "off", Behavior::Healthy).await;
    sqlx::query("INSERT INTO health_probe_overrides (game_id, disabled) VALUES ('off', true)")
        .execute(env.pool())
        .await
        .unwrap();
    const TOKEN: &str = "page-test-token-7f3a";
    let (mut worker, page) = start_worker(
        scenario
            .worker("page-token")
            .interval(Duration::from_secs(1))
            .token(TOKEN),
    )
    .await;
    let browser = Browser::start("page-token", LAPTOP.0, LAPTOP.1).await;
    browser.goto(&page).await;
    browser
        .wait_until(
            "fine healthy, off disabled, the disabled tile counting it",
            WAIT_LIMIT,
            &format!(
                "const fine = (() => {{ {} }})(); const off = (() => {{ {} }})(); \
                 return fine && off && document.getElementById('count-disabled').textContent === '1' \
                   && document.getElementById('count-all').textContent === '2' ? true : null;",
                shows("fine", "healthy"),
                shows("off", "disabled")
            ),
        )
        .await;
    let off = browser.execute(&row_state("off"), json!([])).await;
    assert_eq!(off["status"], "disabled", "{off}");
    assert_eq!(
        engines.requests("off"),
        0,
        "a disabled game is never probed"
    );

    // No token yet: the server's 401 shows in the row and the page asks for the token.
    let token_form = "const f = document.getElementById('token-form'); \
         return { shown: !f.hidden && getComputedStyle(f).display !== 'none', \
                  why: document.getElementById('token-why').textContent, \
                  stored: sessionStorage.getItem('healthprobe.token') };";
    browser
        .execute(
            "document.querySelector(\"button[data-focus-key='probe:fine']\").click();",
            json!([]),
        )
        .await;
    let probed = wait_probed(
        &browser,
        "the 401 in the row",
        "fine",
        "not probed: HTTP 401",
    )
    .await;
    assert_eq!(probed, "not probed: HTTP 401, the API token is needed");
    let form = browser.execute(token_form, json!([])).await;
    assert_eq!(form["shown"], true, "{form}");
    assert!(form["why"].as_str().unwrap().contains("401"), "{form}");
    let active = browser
        .execute("return document.activeElement.id;", json!([]))
        .await;
    assert_eq!(active, "token", "the token field has the focus");

    // A wrong token: refused, forgotten, asked for again.
    browser.type_text("#token", "not-the-token").await;
    browser.click("#token-form button[type=submit]").await;
    let (refused, _) = browser
        .wait_until(
            "the wrong token refused",
            WAIT_LIMIT,
            &format!(
                "const r = (() => {{ {} }})(); return r && r.probed === 'not probed: HTTP 401, the token was refused' ? r.probed : null;",
                row_state("fine")
            ),
        )
        .await;
    assert_eq!(refused, "not probed: HTTP 401, the token was refused");
    let form = browser.execute(token_form, json!([])).await;
    assert_eq!(form["shown"], true, "{form}");
    assert!(form["why"].as_str().unwrap().contains("refused"), "{form}");
    assert_eq!(form["stored"], Value::Null, "a refused token is forgotten");

    // The right token: the pending probe runs, and the token is kept for the tab.
    browser.type_text("#token", TOKEN).await;
    browser.click("#token-form button[type=submit]").await;
    let ran = wait_probed(&browser, "the probe with the token", "fine", "healthy").await;
    assert!(ran.as_str().unwrap().starts_with("healthy · "), "{ran}");
    let form = browser.execute(token_form, json!([])).await;
    assert_eq!(
        (form["shown"].clone(), form["stored"].clone()),
        (json!(false), json!(TOKEN)),
        "{form}"
    );

    // A disabled game's "probe now": the server's 409 says why.
    browser
        .execute(
            "document.querySelector(\"button[data-focus-key='probe:off']\").click();",
            json!([]),
        )
        .await;
    let why = wait_probed(&browser, "the disabled game's answer", "off", "not probed:").await;
    assert!(why.as_str().unwrap().contains("disabled"), "{why}");
    assert_eq!(engines.requests("off"), 0, "still never probed");

    // The disabled tile filters the list to the disabled games.
    browser.click("button[data-filter-status=disabled]").await;
    browser
        .wait_until(
            "only the disabled game listed",
            WAIT_LIMIT,
            "const rows = [...document.querySelectorAll('#games tbody tr')].map((tr) => tr.dataset.gameId); \
             return rows.length === 1 && rows[0] === 'off' ? rows : null;",
        )
        .await;

    drop(browser);
    let (status, _) = worker.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
}

/// Every URL the page asks for is relative, so a proxy can serve it under a sub-path
/// (`/healthprobe/` → the status port's `/`).
#[test]
fn the_page_asks_for_relative_urls_only() {
    let page = include_str!("../src/fleet_page.html");
    for call in ["fetch(", "getJSON(", "EventSource("] {
        for (at, _) in page.match_indices(call) {
            let argument = page[at + call.len()..].trim_start();
            assert!(
                !argument.starts_with("'/")
                    && !argument.starts_with("\"/")
                    && !argument.starts_with("`/"),
                "absolute URL in {}",
                &page[at..(at + 60).min(page.len())]
            );
        }
    }
    assert!(
        page.contains("getJSON('games?' + params)") && page.contains("new EventSource('live')")
    );
}
