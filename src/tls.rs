//! TLS for the webhook port: rustls with the ring provider, TLS 1.2 and 1.3 only, ALPN
//! `h2` and `http/1.1`, and the serving certificate behind a resolver so that a new pair
//! can be swapped in for new connections without restarting the server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::telemetry::Chain;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}")]
    Certificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("cannot read private key file {path}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate {cert} and key {key} cannot be used together")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(rustls_pki_types::pem::Error::Io);
    let cert_pem = read(cert).map_err(|source| TlsError::Certificate {
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = read(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    pair_from_pem(cert, &cert_pem, key, &key_pem)
}

/// Parses a PEM pair already read from `cert` and `key` (the paths are for messages).
pub fn pair_from_pem(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// Serves whichever certificate was stored last; every new handshake reads it.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Replaces the pair used by new connections; open connections keep theirs.
    pub fn replace(&self, key: CertifiedKey) {
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(key);
    }

    /// The pair served to new connections.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The expiry of the certificate in use, set by the reloader whenever it swaps the pair.
#[derive(Clone, Debug, Default)]
pub struct CertMetrics {
    expiry: Gauge,
}

impl CertMetrics {
    pub fn register(registry: &mut Registry) -> CertMetrics {
        let metrics = CertMetrics::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            metrics.expiry.clone(),
        );
        metrics
    }

    /// Records the expiry of `key` (0 when it cannot be read).
    pub fn serving(&self, key: &CertifiedKey) {
        self.expiry.set(not_after(key).unwrap_or(0));
    }
}

/// The leaf certificate's `notAfter`, in Unix seconds.
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server configuration: TLS 1.3 and 1.2, ALPN h2 then http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Re-reads the certificate and key files every `interval` and serves a new pair on new
/// connections once both files changed into a valid, matching pair.
///
/// Files are read by path on a timer rather than watched: a Kubernetes Secret volume is
/// updated by swapping a directory symlink, which file notifications stop seeing after
/// the first rotation. A broken or mismatched pair (for example while only one of the two
/// files has been rewritten) is logged once and the current pair kept.
pub async fn reload_on_change(
    store: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    interval: std::time::Duration,
    metrics: CertMetrics,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    metrics.serving(&store.current());
    let read =
        |cert: &Path, key: &Path| Some((std::fs::read(cert).ok()?, std::fs::read(key).ok()?));
    let mut seen = read(&cert, &key);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(current) = read(&cert, &key) else {
            if seen.is_some() {
                tracing::warn!(cert = %cert.display(), key = %key.display(), "cannot read the certificate files; keeping the current certificate");
                seen = None;
            }
            continue;
        };
        if seen.as_ref() == Some(&current) {
            continue;
        }
        match pair_from_pem(&cert, &current.0, &key, &current.1) {
            Ok(pair) => {
                metrics.serving(&pair);
                store.replace(pair);
                tracing::info!(cert = %cert.display(), "serving the new certificate");
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "new certificate files are not usable; keeping the current certificate");
            }
        }
        seen = Some(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_gauge_follows_the_pair_served() {
        let pair = |year| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 1, 2);
            let cert = params.self_signed(&key).unwrap();
            let path = Path::new("test");
            pair_from_pem(
                path,
                cert.pem().as_bytes(),
                path,
                key.serialize_pem().as_bytes(),
            )
            .unwrap()
        };
        let metrics = CertMetrics::default();
        metrics.serving(&pair(2031));
        assert_eq!(metrics.expiry.get(), 1_925_078_400);
        metrics.serving(&pair(2032));
        assert_eq!(metrics.expiry.get(), 1_925_078_400 + 365 * 86_400);
    }
}
