//! The status port's accept loop: one task per connection, a cap on connections (the
//! oldest is closed first), a header-read timeout and a bounded graceful shutdown, which
//! `axum::serve` does not offer.

use std::net::SocketAddr;
use std::time::Duration;

use axum::{Extension, Router};
use tokio_util::sync::CancellationToken;

/// Tells streaming responses (`GET /live`) that the server is shutting down: a graceful
/// shutdown waits for every response to end, and a live stream would never end by itself.
#[derive(Clone)]
pub(super) struct ServerStopping(pub(super) CancellationToken);

/// How the status port protects the worker from its clients.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once. A new connection beyond it closes the oldest one (after
    /// the request it is serving, if any): a flood of idle connections can neither hold
    /// the worker's descriptors nor lock out a fresh `/healthz`.
    pub max_connections: usize,
    /// A connection that does not send a complete request head within this, whether new or
    /// idle between requests, is closed.
    pub header_read_timeout: Duration,
}

/// Connections of the status port at once, by default: far more than any set of
/// orchestrator probes and dashboards needs, few enough to sit inside the descriptor
/// budget (`limits::DescriptorBudget`).
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// A request head (a few hundred bytes) takes a healthy client microseconds; 5 s is
/// generous for a slow network and short enough that idle sockets do not pile up.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// After `stop`, requests in flight get this long to finish before their connections are
/// dropped, so a stuck handler cannot hold the exit past the SIGTERM budget.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Accepting fails while the process is out of descriptors (`EMFILE`); wait this long
/// before trying again rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The open connections, oldest first, each with the token that asks it to close.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: std::collections::BTreeMap<u64, CancellationToken>,
}

/// Serves until `stop` with [`ServeLimits::default`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, stop, ServeLimits::default()).await
}

/// Serves HTTP/1 until `stop`, then lets requests in flight finish for at most
/// [`SHUTDOWN_GRACE`]. Each connection is its own task, tracked and closed at shutdown.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use std::sync::{Arc, Mutex};

    // Live streams (`GET /live`) end when the server stops, so the grace below is not
    // spent waiting for a stream that would never end by itself.
    let router = router.layer(Extension(ServerStopping(stop.clone())));
    let max_connections = limits.max_connections.max(1);
    let connections = Arc::new(Mutex::new(Connections::default()));
    let tasks = tokio_util::task::TaskTracker::new();
    let mut evicted: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and the like: the connection waits in the backlog; try again soon.
                tracing::warn!(error = %e, "status port cannot accept a connection; pausing");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let token = CancellationToken::new();
        let id = {
            // A std mutex: a map insert and pop, never held across an await.
            let mut table = connections.lock().expect("connection table lock");
            while table.open.len() >= max_connections {
                let Some((_, oldest)) = table.open.pop_first() else {
                    break;
                };
                oldest.cancel();
                evicted += 1;
            }
            let id = table.next_id;
            table.next_id += 1;
            table.open.insert(id, token.clone());
            id
        };
        if evicted > 0 && evicted.is_power_of_two() {
            tracing::warn!(
                evicted,
                max_connections,
                "status port at its connection cap: closing the oldest connections"
            );
        }
        let service = TowerToHyperService::new(router.clone());
        let connections = connections.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let closing = tokio::select! {
                _ = connection.as_mut() => false,
                _ = token.cancelled() => true,
                _ = stop.cancelled() => true,
            };
            if closing {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await;
            }
            connections
                .lock()
                .expect("connection table lock")
                .open
                .remove(&id);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(500), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("status connections still open at shutdown; dropped");
    }
    Ok(())
}

/// Binds the status address. Done before anything else at start-up so a taken port or a
/// bad address stops the process at once. Port 0 picks a free port; read it back with
/// `local_addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
