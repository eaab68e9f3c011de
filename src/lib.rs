//! healthprobe: the active health worker for game engines.
//!
//! Data flows one way: [`config`] → [`store`] → [`probe`] → [`hysteresis`] → [`worker`] →
//! [`events`] → [`telemetry`]. `main.rs` only wires these together and handles signals.
//! Around them: [`status`] (what the worker tells about itself), [`http`] (the worker's
//! own HTTP surface, with the live fleet page fed by [`live`] and the Prometheus scrape of
//! [`scrape`]) and [`fleet`] (a simulated engine fleet for demos and tests).

pub mod config;
pub mod envelope;
pub mod events;
pub mod fleet;
pub mod http;
pub mod hysteresis;
pub mod limits;
pub mod live;
pub mod probe;
pub mod retry;
pub mod scrape;
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
