//! Engines at distinct loopback addresses (`127.0.X.Y`), one listener each, as a real fleet
//! looks to the worker: every engine is its own host, so no connection can be shared.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::get;
use tokio::task::JoinSet;

pub struct DistinctEngines {
    pub endpoints: Vec<String>,
    requests: Arc<Vec<AtomicU64>>,
    _servers: JoinSet<()>,
}

/// The address of engine `i`: 127.0.1.1, 127.0.1.2, … 127.0.1.250, 127.0.2.1, …
pub fn engine_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (i / 250 + 1) as u8, (i % 250 + 1) as u8)
}

impl DistinctEngines {
    /// `count` healthy engines, each answering `GET /healthz` with 200 on its own address.
    /// The test process needs about two descriptors per engine (listener and connection).
    pub async fn start(count: usize) -> Self {
        assert!(count <= 250 * 255, "at most 63,750 distinct addresses here");
        let limits = healthprobe::limits::raise_nofile_limit().expect("raise the test's limit");
        assert!(
            limits.soft >= (2 * count + 512) as u64,
            "this test needs {} descriptors in the test process; the hard limit is {}",
            2 * count + 512,
            limits.hard
        );
        let requests: Arc<Vec<AtomicU64>> =
            Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let mut servers = JoinSet::new();
        let mut endpoints = Vec::with_capacity(count);
        for i in 0..count {
            let listener = tokio::net::TcpListener::bind(SocketAddr::from((engine_ip(i), 0)))
                .await
                .unwrap_or_else(|e| panic!("bind engine {i} at {}: {e}", engine_ip(i)));
            let addr = listener.local_addr().unwrap();
            endpoints.push(format!("http://{addr}"));
            let counter = requests.clone();
            let router = Router::new().route(
                "/healthz",
                get(move || {
                    counter[i].fetch_add(1, Ordering::Relaxed);
                    async { "ok" }
                }),
            );
            servers.spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
        }
        Self {
            endpoints,
            requests,
            _servers: servers,
        }
    }

    /// Requests engine `i` answered.
    pub fn requests(&self, i: usize) -> u64 {
        self.requests[i].load(Ordering::Relaxed)
    }

    /// The fewest requests any engine answered.
    pub fn min_requests(&self) -> u64 {
        self.requests
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}
