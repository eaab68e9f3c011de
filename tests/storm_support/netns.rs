//! Network namespaces a test creates and always removes: engines at 198.18.0.0/15
//! addresses that exist only inside them, workers in namespaces of their own joined to the
//! engines' by veth pairs, so a test can take one worker's link down.
//!
//! The test process makes sockets inside a namespace from a thread that entered it
//! (`setns`): a socket stays in the namespace it was made in, so the engines' listeners and
//! the forwarders that let a worker reach the shared Postgres and NATS (and the test reach
//! the worker's status port) are served by the test's own runtime.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::mpsc;

/// Why a test that needs namespaces cannot run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some(
            "network namespaces and veth pairs need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); CI runs as root".into(),
        );
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2's `ip` is not installed (scripts/test.sh installs it)".into());
    }
    None
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace, deleted when dropped (its veth ends go with it).
pub struct Netns {
    pub name: String,
    sockets: mpsc::Sender<SocketRequest>,
}

enum SocketRequest {
    Bind(
        SocketAddr,
        mpsc::Sender<std::io::Result<std::net::TcpListener>>,
    ),
    Connect(
        SocketAddr,
        mpsc::Sender<std::io::Result<std::net::TcpStream>>,
    ),
}

impl Netns {
    /// Creates `name` (removing a leftover of the same name first) with its loopback up.
    pub fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        let path = format!("/var/run/netns/{name}");
        let file = std::fs::File::open(&path).expect("open the namespace");
        let (tx, rx) = mpsc::channel::<SocketRequest>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the file descriptor is valid while `file` lives.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            let _ = ready_tx.send(entered == 0);
            if entered != 0 {
                return;
            }
            for request in rx {
                match request {
                    SocketRequest::Bind(addr, reply) => {
                        let _ = reply.send(std::net::TcpListener::bind(addr));
                    }
                    SocketRequest::Connect(addr, reply) => {
                        let _ = reply.send(std::net::TcpStream::connect(addr));
                    }
                }
            }
        });
        assert!(ready_rx.recv().unwrap_or(false), "setns into {name}");
        Self {
            name: name.to_owned(),
            sockets: tx,
        }
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A listener inside the namespace, served by the caller's runtime.
    pub fn bind(&self, addr: SocketAddr) -> tokio::net::TcpListener {
        let (tx, rx) = mpsc::channel();
        self.sockets
            .send(SocketRequest::Bind(addr, tx))
            .expect("namespace thread");
        let listener = rx.recv().expect("namespace thread").unwrap_or_else(|e| {
            panic!("bind {addr} in {}: {e}", self.name);
        });
        listener.set_nonblocking(true).unwrap();
        tokio::net::TcpListener::from_std(listener).unwrap()
    }

    /// A connection made from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let (tx, rx) = mpsc::channel();
        self.sockets
            .send(SocketRequest::Connect(addr, tx))
            .expect("namespace thread");
        let stream = tokio::task::spawn_blocking(move || rx.recv().expect("namespace thread"))
            .await
            .unwrap()?;
        stream.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// Serves `addr` inside the namespace by forwarding each connection to `target` in the
    /// test's own namespace (a worker inside reaches the shared Postgres and NATS so).
    pub fn forward_out(&self, addr: SocketAddr, target: SocketAddr) -> tokio::task::JoinHandle<()> {
        let listener = self.bind(addr);
        tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outside) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    }
                });
            }
        })
    }

    /// A loopback port of the test's namespace forwarded to `target` inside this one (the
    /// test reaches a worker's status port so). Returns the local address.
    pub async fn forward_in(
        self: &std::sync::Arc<Self>,
        target: SocketAddr,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let ns = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut outside, _)) = listener.accept().await {
                let ns = ns.clone();
                tokio::spawn(async move {
                    if let Ok(mut inside) = ns.connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                    }
                });
            }
        });
        (local, task)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Joins `a` and `b` with a veth pair: `a_if` (address `a_addr`, a /30) in `a`, `b_if`
/// (`b_addr`) in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    // Created in `a` directly, so nothing is left in the test's namespace if it stops here.
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// HTTP engines at their own 198.19.x.y addresses inside a namespace: `GET /healthz`
/// answers 200 and each engine remembers when it was probed.
pub struct NsEngines {
    pub endpoints: Vec<String>,
    probes: Vec<std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for NsEngines {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub fn engine_ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8)
}

impl NsEngines {
    pub fn start(ns: &Netns, count: usize) -> Self {
        let script: String = (0..count)
            .map(|i| format!("addr add {}/32 dev lo\n", engine_ip(i)))
            .collect();
        let path = std::env::temp_dir().join(format!("{}-addrs", ns.name));
        std::fs::write(&path, script).unwrap();
        ns.ip(&["-batch", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let mut engines = Self {
            endpoints: Vec::new(),
            probes: Vec::new(),
            tasks: Vec::new(),
        };
        for i in 0..count {
            let addr = SocketAddr::from((engine_ip(i), 80));
            let listener = ns.bind(addr);
            let probes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let app = axum::Router::new().route(
                "/healthz",
                axum::routing::get({
                    let probes = probes.clone();
                    move || {
                        probes.lock().unwrap().push(std::time::Instant::now());
                        async { "ok" }
                    }
                }),
            );
            engines.tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
            engines.endpoints.push(format!("http://{addr}"));
            engines.probes.push(probes);
        }
        engines
    }

    /// When engine `i` was probed, in order.
    pub fn probes(&self, i: usize) -> Vec<std::time::Instant> {
        self.probes[i].lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }
}
