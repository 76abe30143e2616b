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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh self-signed certificate and key, as PEM.
    fn pair() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    fn write(dir: &Path, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
        let paths = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&paths.0, cert).unwrap();
        std::fs::write(&paths.1, key).unwrap();
        paths
    }

    #[test]
    fn offers_h2_then_http11() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &pair());
        let tls = Tls::load(cert, key).unwrap();
        assert_eq!(tls.current().alpn_protocols, [&b"h2"[..], b"http/1.1"]);
    }

    #[test]
    fn a_reload_swaps_and_a_failed_one_keeps_what_was_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &pair());
        let tls = Tls::load(&cert, &key).unwrap();
        let first = tls.current();
        write(dir.path(), &pair());
        tls.reload().unwrap();
        let second = tls.current();
        assert!(!Arc::ptr_eq(&first, &second), "swapped");

        std::fs::write(&key, "not a key").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.to_string().contains(key.to_str().unwrap()), "{e}");
        assert!(Arc::ptr_eq(&second, &tls.current()), "kept");

        // A certificate with another certificate's key.
        let other = pair();
        std::fs::write(&key, &other.1).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(matches!(e, TlsError::Config { .. }), "{e}");
        assert!(Arc::ptr_eq(&second, &tls.current()), "kept");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write(dir.path(), &pair());
        let missing = dir.path().join("missing.pem");
        let e = Tls::load(&missing, &key).unwrap_err();
        assert!(matches!(e, TlsError::Cert { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = Tls::load(&cert, &missing).unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        // A key where the certificate should be: no certificate in it.
        let e = Tls::load(&key, &key).unwrap_err();
        assert!(matches!(e, TlsError::Cert { .. }), "{e}");
    }
}
