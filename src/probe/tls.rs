//! The trust of `https` probes: the system's roots, plus an optional CA bundle for engines
//! behind a private CA (`HEALTHPROBE_PROBE_CA`, DESIGN §16). Certificates are always
//! verified; there is deliberately no way to skip verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Why the prober's TLS trust could not be built. Start-up stops on it, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading the CA bundle {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the CA bundle {path} holds no PEM certificate")]
    Empty { path: PathBuf },
    #[error("the CA bundle {path} holds a certificate that cannot be a trust anchor: {source}")]
    Anchor {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("configuring TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The system roots, read once per process (a few hundred certificates; every prober and
/// test shares them).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in found.errors.iter().take(3) {
            tracing::debug!(error = %error, "a system root certificate could not be read");
        }
        found.certs
    })
}

/// The client configuration of every `https` probe: HTTP/1.1 only (the prober speaks
/// nothing else), the system's roots and `ca_bundle`'s certificates.
pub(crate) fn client_config(
    ca_bundle: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    crate::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    // Unusable system roots are skipped, as every TLS client does.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = ca_bundle {
        let read = |source| TlsSetupError::Read {
            path: path.to_owned(),
            source,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(read)? {
            roots
                .add(cert.map_err(read)?)
                .map_err(|source| TlsSetupError::Anchor {
                    path: path.to_owned(),
                    source,
                })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsSetupError::Empty {
                path: path.to_owned(),
            });
        }
    }
    if roots.is_empty() {
        // A minimal image without a CA store: plain-http engines are probed as usual and
        // every https probe fails as `tls`, which says what is missing.
        tracing::warn!(
            "no trusted root certificates (no system store, no HEALTHPROBE_PROBE_CA): every https probe will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
