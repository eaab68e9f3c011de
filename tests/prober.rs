//! The prober against real engines, without the worker around it: what a probe spec asks
//! (paths, accepted statuses, headers, its own timeout) and how `https` engines are trusted
//! (a CA bundle the test makes with the openssl command; certificates always verified).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use healthprobe::probe::{
    ExpectedStatuses, FailureKind, ProbeHeaders, ProbeOutcome, ProbeSpec, Prober, ProberError,
    TlsSetupError,
};

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Seen {
    redirect_follows: AtomicUsize,
    last_query: std::sync::Mutex<Option<String>>,
}

/// One engine process serving every case on its own path.
async fn engine() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/ready",
            get(
                |State(seen): State<Arc<Seen>>, RawQuery(query): RawQuery| async move {
                    *seen.last_query.lock().unwrap() = query;
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/moved",
            get(|| async {
                (
                    StatusCode::MOVED_PERMANENTLY,
                    [(header::LOCATION, "/elsewhere")],
                )
            }),
        )
        .route(
            "/elsewhere",
            get(|State(seen): State<Arc<Seen>>| async move {
                seen.redirect_follows.fetch_add(1, Ordering::SeqCst);
                "followed"
            }),
        )
        .route(
            "/guarded",
            get(|headers: HeaderMap| async move {
                let token = headers.get("x-token").and_then(|v| v.to_str().ok());
                let agent = headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok());
                match (token, agent) {
                    (Some("s3cret,="), Some(agent)) if agent.starts_with("healthprobe/") => {
                        StatusCode::OK.into_response()
                    }
                    _ => (StatusCode::UNAUTHORIZED, "token?").into_response(),
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn spec(path: &str, expect: &str, headers: &str) -> ProbeSpec {
    ProbeSpec {
        path: path.to_owned(),
        expect: ExpectedStatuses::parse(expect).unwrap(),
        headers: ProbeHeaders::parse(headers).unwrap(),
        timeout: TIMEOUT,
    }
}

fn assert_failed(outcome: &ProbeOutcome, kind: FailureKind, status: u16) {
    let failure = outcome
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("expected a {kind} failure, got {outcome:?}"));
    assert_eq!(failure.kind, kind, "{outcome:?}");
    assert_eq!(outcome.status, status, "{outcome:?}");
}

#[tokio::test]
async fn the_default_spec_is_the_seed_probe() {
    let (addr, _) = engine().await;
    let prober = Prober::new(TIMEOUT, INTERVAL).unwrap();
    assert_eq!(prober.default_spec().path, "/healthz");
    assert_eq!(prober.default_spec().timeout, TIMEOUT);
    let outcome = prober
        .probe(&format!("http://{addr}/"), prober.default_spec())
        .await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    assert_eq!(outcome.status, 200);
}

#[tokio::test]
async fn paths_and_statuses_follow_the_spec() {
    let (addr, seen) = engine().await;
    let endpoint = format!("http://{addr}");
    let prober = Prober::new(TIMEOUT, INTERVAL).unwrap();

    // 204 is a failure under the default `200`, healthy when 2xx is accepted.
    let outcome = prober.probe(&endpoint, &spec("/ready", "200", "")).await;
    assert_failed(&outcome, FailureKind::Status, 204);
    let outcome = prober
        .probe(&endpoint, &spec("/ready?full=1", "200-299", ""))
        .await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    assert_eq!(outcome.status, 204);
    assert_eq!(seen.last_query.lock().unwrap().as_deref(), Some("full=1"));

    // A redirect is never followed: a failure by default, healthy only when accepted.
    let outcome = prober.probe(&endpoint, &spec("/moved", "200", "")).await;
    assert_failed(&outcome, FailureKind::Status, 301);
    let outcome = prober
        .probe(&endpoint, &spec("/moved", "200,301", ""))
        .await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    assert_eq!(outcome.status, 301);
    assert_eq!(seen.redirect_follows.load(Ordering::SeqCst), 0, "followed");

    // The endpoint's own path is kept, the spec's path appended.
    let outcome = prober
        .probe(&format!("{endpoint}/nested/"), &spec("/healthz", "200", ""))
        .await;
    assert_failed(&outcome, FailureKind::Status, 404);
}

#[tokio::test]
async fn extra_headers_are_sent_beside_the_user_agent() {
    let (addr, _) = engine().await;
    let endpoint = format!("http://{addr}");
    let prober = Prober::new(TIMEOUT, INTERVAL).unwrap();
    let outcome = prober.probe(&endpoint, &spec("/guarded", "200", "")).await;
    assert_failed(&outcome, FailureKind::Status, 401);
    let outcome = prober
        .probe(&endpoint, &spec("/guarded", "200", "X-Token=s3cret%2C%3D"))
        .await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    let json = ProbeHeaders::from_json(&serde_json::json!({"X-Token": "s3cret,="})).unwrap();
    let outcome = prober
        .probe(
            &endpoint,
            &ProbeSpec {
                headers: json,
                ..spec("/guarded", "200", "")
            },
        )
        .await;
    assert!(outcome.is_healthy(), "{outcome:?}");
}

#[tokio::test]
async fn the_spec_timeout_bounds_the_probe() {
    let (addr, _) = engine().await;
    // The prober's own default is long; the spec's short timeout is the one that holds.
    let prober = Prober::new(Duration::from_secs(60), INTERVAL).unwrap();
    let short = ProbeSpec {
        timeout: Duration::from_millis(300),
        ..spec("/slow", "200", "")
    };
    let outcome = prober.probe(&format!("http://{addr}"), &short).await;
    assert_failed(&outcome, FailureKind::Timeout, 0);
    assert!(
        outcome.latency < Duration::from_secs(5),
        "cut at the spec's timeout, not the prober's: {:?}",
        outcome.latency
    );
    assert!(
        outcome.failure.unwrap().message.contains("300ms"),
        "the message names the timeout"
    );
}

/// Certificates made by the openssl command in a directory of the test's own.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (package openssl) makes the test's certificates");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    /// A CA, a server certificate it signs for `localhost` and 127.0.0.1, and a
    /// self-signed server certificate for the same names that no one trusts.
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "healthprobe-pki-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=healthprobe test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&dir, &csr);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        let mut rogue = vec!["req", "-x509"];
        rogue.extend(ec);
        rogue.extend([
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ]);
        openssl(&dir, &rogue);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// An `https` engine answering 200 on every path with the named certificate and key.
async fn https_engine(cert: &Path, key: &Path) -> SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    healthprobe::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_engines_are_verified_against_the_system_roots_and_the_ca_bundle() {
    let pki = Pki::new();
    let signed = https_engine(&pki.path("server.pem"), &pki.path("server.key")).await;
    let rogue = https_engine(&pki.path("rogue.pem"), &pki.path("rogue.key")).await;
    let spec = ProbeSpec::default();

    // Without the bundle, the private CA is not trusted.
    let system_only = Prober::new(TIMEOUT, INTERVAL).unwrap();
    let outcome = system_only.probe(&format!("https://{signed}"), &spec).await;
    assert_failed(&outcome, FailureKind::Tls, 0);

    let trusting = Prober::builder(TIMEOUT, INTERVAL)
        .ca_bundle(Some(pki.path("ca.pem")))
        .build()
        .unwrap();
    for endpoint in [
        format!("https://{signed}"),
        format!("https://localhost:{}/", signed.port()),
    ] {
        let outcome = trusting.probe(&endpoint, &spec).await;
        assert!(outcome.is_healthy(), "{endpoint}: {outcome:?}");
        assert_eq!(outcome.status, 200);
    }
    // The bundle adds trust in its CA only: a self-signed certificate is still refused,
    // and plain http still works beside it.
    let outcome = trusting.probe(&format!("https://{rogue}"), &spec).await;
    assert_failed(&outcome, FailureKind::Tls, 0);
    let (plain, _) = engine().await;
    assert!(
        trusting
            .probe(&format!("http://{plain}"), &spec)
            .await
            .is_healthy()
    );
}

#[tokio::test]
async fn a_bad_ca_bundle_stops_the_build_naming_the_file() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let error = Prober::builder(TIMEOUT, INTERVAL)
        .ca_bundle(Some(missing.clone()))
        .build()
        .err()
        .expect("a missing bundle is refused");
    assert!(
        matches!(error, ProberError::Tls(TlsSetupError::Read { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("missing.pem"), "{error}");

    std::fs::write(pki.path("empty.pem"), "no certificates here\n").unwrap();
    let error = Prober::builder(TIMEOUT, INTERVAL)
        .ca_bundle(Some(pki.path("empty.pem")))
        .build()
        .err()
        .expect("a bundle without certificates is refused");
    assert!(
        matches!(error, ProberError::Tls(TlsSetupError::Empty { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("empty.pem"), "{error}");
}

/// How a scripted engine answers each request on a connection (`index` counts requests on
/// that connection from 0). Test-side HTTP written by hand, to make the cases a real
/// server would not make on demand.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// `Content-Length`, kept alive.
    KeepAlive,
    /// A chunked body in three chunks, kept alive.
    Chunked,
    /// `Connection: close`, then closes.
    Close,
    /// Answers kept alive, then half-closes (FIN) while the prober holds it idle.
    HalfCloseAfterAnswer,
    /// Answers the first request of a connection; on the second, closes without a word
    /// (as an engine whose idle timeout fires just as the request arrives).
    DropSecondRequest,
    /// 200 with a 64 KiB body, kept alive.
    BigBody,
}

struct ScriptedEngine {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    half_closed: Arc<AtomicUsize>,
}

impl ScriptedEngine {
    async fn start(script: Script) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let half_closed = Arc::new(AtomicUsize::new(0));
        let (conns, reqs, halves) = (connections.clone(), requests.clone(), half_closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (reqs, halves) = (reqs.clone(), halves.clone());
                tokio::spawn(tokio::time::timeout(Duration::from_secs(30), async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    for index in 0.. {
                        head.clear();
                        while !head.ends_with(b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                            if head.len() > 64 * 1024 {
                                return;
                            }
                        }
                        if matches!(script, Script::DropSecondRequest) && index == 1 {
                            return; // closes without answering
                        }
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let answer: Vec<u8> = match script {
                            Script::KeepAlive
                            | Script::HalfCloseAfterAnswer
                            | Script::DropSecondRequest => {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
                            }
                            Script::Chunked => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                2\r\nok\r\n1\r\n,\r\n5\r\nfine!\r\n0\r\n\r\n"
                                .to_vec(),
                            Script::Close => {
                                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                                    .to_vec()
                            }
                            Script::BigBody => {
                                let mut answer =
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n".to_vec();
                                answer.resize(answer.len() + 65536, b'x');
                                answer
                            }
                        };
                        if stream.write_all(&answer).await.is_err() {
                            return;
                        }
                        match script {
                            Script::Close => return,
                            Script::HalfCloseAfterAnswer => {
                                let _ = stream.shutdown().await;
                                halves.fetch_add(1, Ordering::SeqCst);
                                // Hold the half-closed socket until the prober closes it.
                                let _ = stream.read(&mut buf).await;
                                return;
                            }
                            _ => {}
                        }
                    }
                }));
            }
        });
        Self {
            addr,
            connections,
            requests,
            half_closed,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Probes `engine` `count` times in a row with one prober; every probe must be healthy.
async fn probe_in_a_row(engine: &ScriptedEngine, count: usize) {
    let prober = Prober::new(TIMEOUT, INTERVAL).unwrap();
    for i in 0..count {
        let outcome = prober
            .probe(&format!("http://{}", engine.addr), prober.default_spec())
            .await;
        assert!(outcome.is_healthy(), "probe {i}: {outcome:?}");
        assert_eq!(outcome.status, 200);
    }
}

#[tokio::test]
async fn kept_alive_answers_reuse_one_connection_chunked_or_not() {
    for script in [Script::KeepAlive, Script::Chunked] {
        let engine = ScriptedEngine::start(script).await;
        probe_in_a_row(&engine, 5).await;
        assert_eq!(
            engine.connections(),
            1,
            "{script:?}: one connection for 5 probes"
        );
        assert_eq!(engine.requests.load(Ordering::SeqCst), 5);
    }
}

#[tokio::test]
async fn connection_close_and_a_body_over_the_cap_are_not_reused() {
    for script in [Script::Close, Script::BigBody] {
        let engine = ScriptedEngine::start(script).await;
        probe_in_a_row(&engine, 3).await;
        assert_eq!(
            engine.connections(),
            3,
            "{script:?}: a fresh connection each time"
        );
    }
}

#[tokio::test]
async fn a_stale_kept_alive_connection_is_replaced_not_counted() {
    // The engine half-closes after each answer: the pool sees it before sending.
    let engine = ScriptedEngine::start(Script::HalfCloseAfterAnswer).await;
    let prober = Prober::new(TIMEOUT, INTERVAL).unwrap();
    for i in 0..3 {
        let outcome = prober
            .probe(&format!("http://{}", engine.addr), prober.default_spec())
            .await;
        assert!(outcome.is_healthy(), "probe {i}: {outcome:?}");
        // The engine has half-closed before the next probe, as it would between two ticks.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while engine.half_closed.load(Ordering::SeqCst) <= i {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the engine did not half-close within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(engine.connections(), 3);

    // The engine closes a reused connection as the request arrives: the request goes
    // again, once, on a fresh connection, and the probe is healthy.
    let engine = ScriptedEngine::start(Script::DropSecondRequest).await;
    probe_in_a_row(&engine, 3).await;
    assert_eq!(
        engine.connections(),
        3,
        "probe 1 opens, probes 2 and 3 find their connection dropped and open a fresh one"
    );
    assert_eq!(engine.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn names_resolve_through_the_system_resolver() {
    let (addr, _) = engine().await;
    let prober = Prober::new(TIMEOUT, INTERVAL).unwrap();
    let outcome = prober
        .probe(
            &format!("http://localhost:{}", addr.port()),
            prober.default_spec(),
        )
        .await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    // A 64-character label is refused by the local resolver without a DNS query.
    let outcome = prober
        .probe(
            &format!("http://{}.invalid", "x".repeat(64)),
            prober.default_spec(),
        )
        .await;
    assert_failed(&outcome, FailureKind::Connect, 0);
    assert!(
        outcome
            .failure
            .unwrap()
            .message
            .contains("could not resolve"),
        "the message says what failed"
    );
}

/// A network namespace of the test's own (`ip netns`), removed when dropped.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new(tag: &str) -> Self {
        let name = format!("hp-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        let namespace = Self { name };
        namespace.ip(&["netns", "add", &namespace.name]);
        namespace
    }

    /// Runs `ip` with `args` (inside the namespace unless they name `netns` themselves).
    fn ip(&self, args: &[&str]) {
        let mut command = std::process::Command::new("ip");
        if args.first() != Some(&"netns") {
            command.args(["netns", "exec", &self.name, "ip"]);
        }
        let output = command
            .args(args)
            .output()
            .expect("the ip command (package iproute2)");
        assert!(
            output.status.success(),
            "ip {args:?} (this test needs root for a network namespace): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Probes each endpoint from inside the namespace (a thread that joined it, with a
    /// runtime of its own, so every socket the prober makes lives there).
    fn probe(&self, endpoints: &[&str], timeout: Duration) -> Vec<ProbeOutcome> {
        let path = format!("/var/run/netns/{}", self.name);
        let endpoints: Vec<String> = endpoints.iter().map(|e| (*e).to_owned()).collect();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd as _;
            let file = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: a valid namespace descriptor; joining affects this thread only.
            let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let prober = Prober::new(timeout, INTERVAL).unwrap();
                let mut outcomes = Vec::new();
                for endpoint in &endpoints {
                    outcomes.push(prober.probe(endpoint, prober.default_spec()).await);
                }
                outcomes
            })
        })
        .join()
        .expect("the probing thread")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn no_route_on_the_worker_side_is_a_local_fault_not_the_engines() {
    let namespace = Namespace::new("route");
    namespace.ip(&["link", "set", "lo", "up"]);
    // An `unreachable` route: the worker's own routing refuses these addresses.
    namespace.ip(&["route", "add", "unreachable", "10.99.0.0/16"]);
    // A link whose far end never answers: the neighbour lookup fails, which is the
    // engine's side (its host is gone), not the worker's.
    namespace.ip(&[
        "link", "add", "hpv0", "type", "veth", "peer", "name", "hpv1",
    ]);
    namespace.ip(&["addr", "add", "10.97.0.1/24", "dev", "hpv0"]);
    namespace.ip(&["link", "set", "hpv0", "up"]);
    let outcomes = namespace.probe(
        &[
            // No route at all (the namespace has no default route): ENETUNREACH.
            "http://10.98.0.1:80",
            "http://10.99.0.1:80",
            "http://10.97.0.2:80",
        ],
        Duration::from_secs(10),
    );
    assert_failed(&outcomes[0], FailureKind::LocalError, 0);
    assert!(outcomes[0].is_local_fault());
    assert_failed(&outcomes[1], FailureKind::LocalError, 0);
    assert!(
        outcomes[1]
            .failure
            .as_ref()
            .unwrap()
            .message
            .contains("no route on the worker's side"),
        "{:?}",
        outcomes[1]
    );
    let failure = outcomes[2].failure.as_ref().expect("nobody answers");
    assert!(
        matches!(failure.kind, FailureKind::Connect | FailureKind::Timeout),
        "a neighbour that does not answer is the engine's failure: {:?}",
        outcomes[2]
    );
}
