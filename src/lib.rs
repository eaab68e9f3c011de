//! healthprobe: the active health worker for game engines.
//!
//! The library, bottom up: [`config`] (variables and flags), [`envelope`] (the event as
//! it is stored and published), [`store`] (every SQL statement), [`probe`] (one probe, one
//! outcome), [`hysteresis`] (the pure state machine), [`worker`] (the tick, membership and
//! on-demand probes), [`events`] (the stream, the outbox relay and its leadership),
//! [`telemetry`] and [`scrape`]. Above them the status surface: [`status`] (board, pure
//! rules, renderings), [`live`] (the fleet page's feed) and [`http`] (the accept loop,
//! typed queries, handlers). `periodic` is the one driver every loop runs on (the ticks,
//! the membership heartbeat, the relay, its leadership, retention), publishing each one's
//! status on its own `watch`, which the status board reads; [`retry`] gives every retrying
//! loop its back-off; [`limits`] the descriptor budget. [`sim`] (the `sim` feature) is the
//! simulated engine fleet of the demo and the tests. The binary (`main.rs`) parses the
//! command line and calls `app.rs` (`run`: the wiring and the staged stop) or one of the
//! operator commands in `cli/`.

pub mod config;
pub mod envelope;
pub mod events;
pub mod history;
pub mod http;
pub mod hysteresis;
pub mod limits;
pub mod live;
mod periodic;
pub mod probe;
pub mod retry;
pub mod scrape;
#[cfg(feature = "sim")]
pub mod sim;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;

/// Installs `ring` as the process-wide rustls crypto provider. Idempotent.
///
/// Two backends in one binary make rustls refuse to pick one ("could not determine the
/// process-level CryptoProvider"), so the choice is made once, explicitly, before any TLS
/// client (reqwest, NATS, Postgres) is built.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Formats an error with its whole cause chain: `outer: inner: innermost`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `text` cut to at most `max` bytes (on a character boundary) and quoted, with the full
/// length when cut: values from the database or an engine go into log lines only this way.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return format!("{text:?}");
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}
