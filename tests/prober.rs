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
