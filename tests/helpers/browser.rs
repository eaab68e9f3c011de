//! Headless Chromium driven over WebDriver: Debian's `chromium` and `chromium-driver`,
//! spoken to with reqwest (the W3C WebDriver protocol is plain JSON over HTTP), no browser
//! download and no extra crate.
//!
//! `scripts/test.sh` installs both packages when they are missing and it runs as root. A
//! test that needs them and does not find them fails with what to install, unless
//! `HEALTHPROBE_SKIP_BROWSER=1` says to skip (then it prints why and passes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::process::log_path;
use super::{WAIT_LIMIT, free_port, wait_for};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Flags that work here: no sandbox (root, containers), no GPU, nothing that reaches the
/// internet on its own (QUIC, background networking, component updates, sync).
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

fn find_program(variable: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        return path.exists().then_some(path);
    }
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
}

/// Whether the browser tests can run: both programs found, or a skip was asked for
/// (returns `false` after saying so). Panics with what to install otherwise.
pub fn available(test: &str) -> bool {
    let driver = find_program("HEALTHPROBE_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let chromium = find_program("HEALTHPROBE_CHROMIUM", &["/usr/bin/chromium"]);
    if driver.is_some() && chromium.is_some() {
        return true;
    }
    if std::env::var("HEALTHPROBE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!(
            "SKIPPED {test}: chromium or chromedriver missing and HEALTHPROBE_SKIP_BROWSER=1"
        );
        return false;
    }
    panic!(
        "{test} needs Debian's chromium and chromium-driver (/usr/bin/chromium, \
         /usr/bin/chromedriver; or HEALTHPROBE_CHROMIUM / HEALTHPROBE_CHROMEDRIVER): \
         `apt-get install chromium chromium-driver` (scripts/test.sh does it when run as root), \
         or set HEALTHPROBE_SKIP_BROWSER=1 to skip the browser tests"
    );
}

/// One chromedriver process with one browser session. Both end when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Deleting the session makes chromedriver close the browser; killing the driver
        // alone could leave a headless browser behind. A blocking request on a plain socket:
        // no runtime is needed in `drop`.
        use std::io::{Read as _, Write as _};
        let addr = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                self.session
            );
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
        }
        let _ = self.driver.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless session whose
    /// window is `width` × `height` CSS pixels.
    pub async fn start(name: &str, width: u32, height: u32) -> Self {
        let driver_path = find_program("HEALTHPROBE_CHROMEDRIVER", &["/usr/bin/chromedriver"])
            .expect("chromedriver (check with browser::available first)");
        let chromium = find_program("HEALTHPROBE_CHROMIUM", &["/usr/bin/chromium"])
            .expect("chromium (check with browser::available first)");
        let port = free_port();
        let log = log_path(&format!("chromedriver-{name}"));
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        wait_for("chromedriver to answer", WAIT_LIMIT, || async {
            let status = client.get(format!("{base}/status")).send().await.ok()?;
            let body: Value = serde_json::from_slice(&status.bytes().await.ok()?).ok()?;
            body["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chromium-{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!("--window-size={width},{height}"));
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium, "args": args },
            }}
        });
        let answer = client
            .post(format!("{base}/session"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(capabilities.to_string())
            .send()
            .await
            .expect("create a WebDriver session")
            .bytes()
            .await
            .expect("session answer");
        let response: Value = serde_json::from_slice(&answer).expect("session answer is JSON");
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "chromedriver did not start a session: {response}; log: {}",
                    log.display()
                )
            })
            .to_owned();
        let browser = Self {
            driver,
            base,
            session,
            client,
            profile,
        };
        browser.set_window(width, height).await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method.clone(), &url);
        let body = body.or_else(|| (method == reqwest::Method::POST).then(|| json!({})));
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("chromedriver answers");
        let code = response.status();
        let bytes = response.bytes().await.expect("WebDriver answer");
        let value: Value = serde_json::from_slice(&bytes).expect("WebDriver answers JSON");
        assert!(
            code.is_success(),
            "WebDriver {method} {path}: {code} {value}"
        );
        value["value"].clone()
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css:?}: {found}"))
            .to_owned()
    }

    /// Clicks the element as a person would (WebDriver scrolls it into view).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), None)
            .await;
    }

    /// Types into the element, key by key.
    pub async fn type_text(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn clear(&self, css: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), None)
            .await;
    }

    /// The visible page as PNG bytes.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 text"))
            .expect("screenshot is base64")
    }

    /// Waits until `script` returns something other than `null` or `false`, polling the
    /// page's DOM (the page itself is never reloaded), or panics with `what` after `limit`.
    pub async fn wait_until(&self, what: &str, limit: Duration, script: &str) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let value = self.execute(script, json!([])).await;
            if !(value.is_null() || value == Value::Bool(false)) {
                return (value, started.elapsed());
            }
            if started.elapsed() >= limit {
                let state = self.execute(PAGE_STATE, json!([])).await;
                panic!("timed out after {limit:?} waiting for {what}; the page shows {state}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the fleet page shows now: rows (id, status), counts, range, events, live state.
    pub async fn page_state(&self) -> Value {
        self.execute(PAGE_STATE, json!([])).await
    }
}

/// Reads the fleet page's DOM into JSON.
pub const PAGE_STATE: &str = r#"
const rows = [...document.querySelectorAll('#games tbody tr')].map(tr => [tr.dataset.gameId, tr.dataset.status]);
const count = id => (document.getElementById(id) || {}).textContent;
return {
  rows,
  counts: { all: count('count-all'), failing: count('count-failing'), suspect: count('count-suspect'),
            unknown: count('count-unknown'), healthy: count('count-healthy') },
  range: count('range'),
  live: document.getElementById('live-state').dataset.state,
  refreshes: Number(document.body.dataset.refreshes || 0),
  events: [...document.querySelectorAll('#events li')].map(li => [li.dataset.eventType, li.dataset.gameId]),
  problem: count('problem'),
  marker: window.__marker || null,
};
"#;
