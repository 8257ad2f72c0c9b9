//! The API over TLS, for clients on the site LAN (issue 15, part 2): a POS app on a tablet, a kiosk screen on
//! another device, an operator's laptop. Every request there needs a client token (`api/clients.rs`: nothing that
//! comes over the LAN is loopback).
//!
//! The certificate is this device's own, made at the first start that asks for TLS (ECDSA P-256, because browsers
//! take no Ed25519 server certificates): `keys/tls.crt` and `keys/tls.key` (0600). Clients pin it by its SHA-256
//! fingerprint, which `popmesh pair` prints in the pairing code with the address and, on the edge box, a token.
//! Browsers need a certificate they trust for service workers: `[api] tls_cert` and `tls_key` name one from a
//! site CA that managed kiosks trust, used instead.
//!
//! Handshakes run on their own tasks with a time limit, so a client that connects and says nothing holds up no one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its handshake.
const HANDSHAKE_MS: u64 = 10_000;
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Why the TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("making this device's TLS certificate: {0}")]
    Generate(String),
    #[error("the TLS certificate and key do not make a server: {0}")]
    Config(String),
    #[error("the TLS listener cannot listen on {addr} ([api] tls_listen): {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// The certificate chain and key the listener serves, and the fingerprint clients pin.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate, lower-case hex.
    pub fingerprint: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a certificate, lower-case hex.
pub fn fingerprint(cert: &[u8]) -> String {
    sha2::Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_pem(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e))?;
    let first = chain
        .first()
        .ok_or_else(|| file_error(cert, "no certificate in the file"))?;
    let fingerprint = fingerprint(first);
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    Ok(TlsIdentity {
        chain,
        key,
        fingerprint,
    })
}

/// The site CA's certificate and key when both are given, else this device's own, made on first use in `keys`.
pub fn identity(
    keys: &Path,
    device_name: &str,
    site_ca: Option<(&Path, &Path)>,
) -> Result<TlsIdentity, TlsError> {
    if let Some((cert, key)) = site_ca {
        return read_pem(cert, key);
    }
    let (cert, key) = (keys.join("tls.crt"), keys.join("tls.key"));
    if !cert.exists() || !key.exists() {
        let pair = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let names = vec!["localhost".to_owned(), device_name.to_owned()];
        let params =
            rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
        let made = params
            .self_signed(&pair)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        write_private(&key, pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert, made.pem()).map_err(|e| file_error(&cert, e))?;
    }
    read_pem(&cert, &key)
}

/// Writes a file only its owner reads (a key), whole or not at all.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| file_error(&tmp, e))?;
    file.write_all(bytes).map_err(|e| file_error(&tmp, e))?;
    file.sync_all().map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// A TCP listener whose connections come out as finished TLS sessions.
#[derive(Debug)]
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub async fn bind(addr: SocketAddr, identity: TlsIdentity) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.map_err(|e| TlsError::Bind {
            addr,
            reason: e.to_string(),
        })?;
        let local = listener.local_addr().map_err(|e| TlsError::Bind {
            addr,
            reason: e.to_string(),
        })?;
        let (tx, accepted) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!("TLS listener: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(Duration::from_millis(HANDSHAKE_MS), handshake).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(next) => next,
            // The acceptor task ended (only when this listener is dropped): wait for ever, as a closed socket does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
