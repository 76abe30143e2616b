//! TLS on the accept loop: the server's certificate chain and key, read
//! from PEM files at start-up and again on each [`Tls::reload`] (the binary
//! calls it on `SIGHUP`), and the handshake, offering ALPN `h2` and
//! `http/1.1`.
//!
//! A reload swaps the configuration new handshakes start from; a connection
//! keeps the session it was made with, so open streams are untouched.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The ALPN protocols offered, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the certificate or key could not be used. Each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the TLS certificate {path}: {source}")]
    Cert { path: PathBuf, source: pem::Error },
    #[error("reading the TLS key {path}: {source}")]
    Key { path: PathBuf, source: pem::Error },
    #[error("the TLS certificate {cert} with the key {key}: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The server's TLS settings and the files they come from. A cheap handle:
/// clones share the current configuration, so a reload through one is
/// seen by all.
#[derive(Clone, Debug)]
pub struct Tls {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cert: PathBuf,
    key: PathBuf,
    /// What new handshakes start from. A std lock: it is held only to
    /// clone or replace the `Arc`, never across an `.await`.
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the certificate chain (`cert`, PEM, leaf first) and its
    /// private key (`key`, PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Tls, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let config = read(&cert, &key)?;
        Ok(Tls {
            inner: Arc::new(Inner {
                cert,
                key,
                current: RwLock::new(Arc::new(config)),
            }),
        })
    }

    /// Reads both files again; new handshakes use them from now on. On an
    /// error the configuration in use is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = read(&self.inner.cert, &self.inner.key)?;
        // A panic while the lock was held cannot leave an `Arc` half
        // written: the value inside is whole either way.
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.inner.cert, &self.inner.key)
    }

    fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .inner
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Runs the server side of a handshake on `io` with the current
    /// configuration. Not timed: the caller bounds it.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        TlsAcceptor::from(self.current()).accept(io).await
    }
}

/// A server configuration from the two files, with the `ring` provider.
fn read(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_error = |source| TlsError::Cert {
        path: cert.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(cert_error(pem::Error::NoItemsFound));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let config_error = |source| TlsError::Config {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(config_error)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
