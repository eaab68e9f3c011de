//! NATS credentials and TLS (DESIGN §16) against private nats-server processes configured
//! with a user and password, an nkey, a token, and TLS with a CA this test makes.

mod helpers;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use healthprobe::config::NatsAuthArgs;
use healthprobe::events::jetstream::{self, StreamTarget, ensure_stream};
use helpers::engines::Behavior;
use helpers::scenario::Scenario;
use helpers::{TestEnv, WAIT_LIMIT, free_port, wait_for};

/// A nats-server with JetStream and `extra` configuration (authorization, tls), on a
/// loopback port of its own. Killed when dropped.
struct SecuredNats {
    port: u16,
    dir: PathBuf,
    child: std::process::Child,
}

impl SecuredNats {
    async fn start(name: &str, extra: &str) -> Self {
        let port = free_port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "nats-secure-{name}-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("server.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?} }}\n{extra}\n",
                dir.join("js")
            ),
        )
        .unwrap();
        let executable = std::env::var("HEALTHPROBE_NATS_SERVER_BIN")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let child = std::process::Command::new(executable)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .expect("start nats-server (scripts/test.sh installs it)");
        wait_for("the secured NATS server to listen", WAIT_LIMIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        Self { port, dir, child }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects (waiting for the server) and creates a stream: what the relay needs.
async fn usable(url: &str, auth: &NatsAuthArgs) -> Result<(), String> {
    let client = tokio::time::timeout(
        WAIT_LIMIT,
        jetstream::connect_with_wake(url, auth, true, None),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| healthprobe::ErrorChain(&e).to_string())?;
    let js = jetstream::context(client);
    ensure_stream(&js, &StreamTarget::new("SECURED", "secured.test"))
        .await
        .map(drop)
        .map_err(|e| healthprobe::ErrorChain(&e).to_string())
}

fn user(user: &str, password: &str) -> NatsAuthArgs {
    NatsAuthArgs {
        nats_user: Some(user.to_owned()),
        nats_password: Some(password.to_owned()),
        ..NatsAuthArgs::default()
    }
}

#[tokio::test]
async fn user_and_password_and_nkey_are_presented_to_the_server() {
    helpers::services();
    let key = nkeys::KeyPair::new_user();
    let server = SecuredNats::start(
        "users",
        &format!(
            "authorization {{ users = [ {{ user: \"hp\", password: \"s3cret\" }}, {{ nkey: \"{}\" }} ] }}",
            key.public_key()
        ),
    )
    .await;
    usable(&server.url(), &user("hp", "s3cret"))
        .await
        .expect("the right password is accepted");
    let wrong = usable(&server.url(), &user("hp", "wrong")).await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let anonymous = usable(&server.url(), &NatsAuthArgs::default()).await;
    assert!(anonymous.is_err(), "no credentials, no connection");
    let seed = server.file("user.nk", &format!("{}\n", key.seed().unwrap()));
    let nkey = NatsAuthArgs {
        nats_nkey: Some(seed),
        ..NatsAuthArgs::default()
    };
    usable(&server.url(), &nkey)
        .await
        .expect("the nkey seed signs the server's nonce");
    let other = server.file("other.nk", &nkeys::KeyPair::new_user().seed().unwrap());
    let stranger = NatsAuthArgs {
        nats_nkey: Some(other),
        ..NatsAuthArgs::default()
    };
    assert!(usable(&server.url(), &stranger).await.is_err());
}

#[tokio::test]
async fn a_token_is_presented_to_the_server() {
    helpers::services();
    let server = SecuredNats::start("token", "authorization { token: \"t0ken-xyz\" }").await;
    let token = |t: &str| NatsAuthArgs {
        nats_token: Some(t.to_owned()),
        ..NatsAuthArgs::default()
    };
    usable(&server.url(), &token("t0ken-xyz")).await.unwrap();
    assert!(usable(&server.url(), &token("other")).await.is_err());
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files in
/// `dir`: (ca, cert, key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("healthprobe test CA {name}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "nats");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |file: &str, content: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, content).unwrap();
        path
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[tokio::test]
async fn tls_is_verified_against_nats_ca() {
    helpers::services();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("nats-tls-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir, "server");
    let (other_ca, _, _) = certificates(&dir, "other");
    let server = SecuredNats::start(
        "tls",
        &format!(
            "tls {{ cert_file: {cert:?}, key_file: {key:?} }}\nauthorization {{ user: \"hp\", password: \"s3cret\" }}"
        ),
    )
    .await;
    let with_ca = |ca: &Path| NatsAuthArgs {
        nats_ca: Some(ca.to_owned()),
        ..user("hp", "s3cret")
    };
    usable(&server.url(), &with_ca(&ca))
        .await
        .expect("the server's certificate is verified against NATS_CA");
    let unknown = usable(&server.url(), &with_ca(&other_ca)).await;
    assert!(unknown.is_err(), "a certificate from another CA is refused");
    let no_ca = usable(&server.url(), &user("hp", "s3cret")).await;
    assert!(
        no_ca.is_err(),
        "without NATS_CA the private CA is not trusted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_worker_publishes_through_tls_and_a_password() {
    let scenario = Scenario::new().await;
    let env = &scenario.env;
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("nats-tls-worker-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir, "server");
    let server = SecuredNats::start(
        "worker",
        &format!(
            "tls {{ cert_file: {cert:?}, key_file: {key:?} }}\nauthorization {{ user: \"hp\", password: \"s3cret\" }}"
        ),
    )
    .await;
    scenario.game("down", "down", Behavior::Status(503)).await;
    let ca_path = ca.to_string_lossy().into_owned();
    let url = server.url();
    let mut worker = scenario
        .worker("nats-tls")
        .nats(&url)
        .setting("NATS_CA", &ca_path)
        .setting("NATS_USER", "hp")
        .setting("NATS_PASSWORD", "s3cret")
        .interval(std::time::Duration::from_millis(100))
        .failures(1)
        .spawn();
    let client = jetstream::connect_with_wake(
        &url,
        &NatsAuthArgs {
            nats_ca: Some(ca.clone()),
            ..user("hp", "s3cret")
        },
        true,
        None,
    )
    .await
    .expect("the test connects as the worker does");
    let js = jetstream::context(client);
    let events = wait_for("the event on the secured server", WAIT_LIMIT, || async {
        let events = env_stream(env, &js).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events[0].event_type(), "probe_failed");
    helpers::AsyncApi::load().check(&events[0]).unwrap();
    let (status, _) = worker.terminate(std::time::Duration::from_secs(10)).await;
    assert!(status.success(), "{}", worker.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The test's stream on the server behind `js`, empty while the relay has not created it.
async fn env_stream(
    env: &TestEnv,
    js: &async_nats::jetstream::Context,
) -> Vec<helpers::StreamEvent> {
    if js.get_stream(&env.target.stream).await.is_err() {
        return Vec::new();
    }
    env.stream_events_via(js).await
}
