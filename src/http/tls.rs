//! TLS on the main listener (rustls), with HTTP/2 offered by ALPN beside HTTP/1.1.
//!
//! The certificate chain and key are PEM files (`server.tls_cert_file`, `server.tls_key_file`).
//! They are read again on SIGHUP and when either file changes (checked every 5 s), so a
//! renewed certificate takes effect without a restart; a file that cannot be read or does not
//! match keeps the certificate in use and says why in the log. Each new connection uses the
//! certificate current at its handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::logfmt::error_chain as chain;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Why the certificate files cannot be used; each names the file (the error underneath is the
/// [`source`](std::error::Error::source)).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert_file {}", path.display())]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("server.tls_cert_file {}: no certificate in it", .0.display())]
    NoCert(PathBuf),
    #[error("server.tls_key_file {}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS")]
    Protocols(#[source] rustls::Error),
    /// The key does not match the certificate, or is of a kind rustls refuses.
    #[error("server.tls_cert_file / tls_key_file")]
    Pair(#[source] rustls::Error),
}

/// How often the certificate files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(5);

pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
    /// Modification times of the files the current config was built from.
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Tls {
    /// Reads the files; errors name the file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Tls>, TlsError> {
        let config = build(cert, key)?;
        Ok(Arc::new(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: RwLock::new(Arc::new(config)),
            stamps: Mutex::new((modified(cert), modified(key))),
        }))
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.config
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Reads the files again; on error keeps the current certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (modified(&self.cert), modified(&self.key));
        let config = build(&self.cert, &self.key)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        Ok(())
    }

    fn changed(&self) -> bool {
        let now = (modified(&self.cert), modified(&self.key));
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Reloads on SIGHUP and when the files change, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).ok();
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => "SIGHUP",
                _ = tokio::time::sleep(WATCH_EVERY) => {
                    if !self.changed() {
                        continue;
                    }
                    "the certificate files changed"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!(reason = why, "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(reason = why, error = %chain(&e), "TLS certificate not reloaded; the previous one stays in use")
                }
            }
        }
    }
}

fn build(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_error = |source| TlsError::Cert {
        path: cert.to_owned(),
        source,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(cert_error)?
        .collect::<Result<_, _>>()
        .map_err(cert_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    // Several crypto providers are linked (dependencies bring their own): choose ours.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Pair)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
