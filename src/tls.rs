//! Optional TLS with rustls (`--tls-cert`, `--tls-key`), for deployments without a
//! terminating load balancer.
//!
//! The crypto provider is *ring*, named explicitly (no process-wide default is installed or
//! assumed). TLS 1.2 and 1.3 with rustls' safe defaults; ALPN offers only `http/1.1`, the
//! protocol WebSocket upgrades need. Certificates are read once at start: to rotate them,
//! restart the server (rolling restarts close sockets with 1001 and clients reconnect).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("reading the certificate chain {path}: {why}")]
    Cert {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The key file could not be read or holds no key.
    #[error("reading the private key {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls server configuration for `config`, or `None` when TLS is off.
pub(crate) fn server_config(config: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = read_chain(cert)?;
    let key = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |why: String| TlsError::Cert {
        path: path.display().to_string(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("no PEM certificate in the file".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}
