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
//! Handshakes run on their own tasks with a time limit, so a client that connects and says nothing holds up no one;
//! at most `CONNECTIONS_MAX` sessions are open at once (a flood of idle sessions cannot take the node's file
//! descriptors, and the loopback API keeps answering), and a session with no traffic either way for `IDLE_MS` is
//! closed (an event stream's keep-alives count as traffic).

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
/// TLS sessions (and handshakes) open at once; more are closed as they connect.
const CONNECTIONS_MAX: usize = 512;
/// A session with no bytes either way for this long is closed.
const IDLE_MS: u64 = 60_000;

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
        tracing::warn!(
            cert = %cert.display(),
            "made a new TLS certificate for this device: tablets paired before must pair again (popmesh pair)"
        );
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
    accepted: tokio::sync::mpsc::Receiver<(Session, SocketAddr)>,
    local: SocketAddr,
}

/// One TLS session: it holds a place among `CONNECTIONS_MAX` while open, and fails its next read or write once it
/// has been idle for its limit.
#[derive(Debug)]
pub struct Session<S = TlsStream<TcpStream>> {
    inner: S,
    idle: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl<S> Session<S> {
    fn new(inner: S, place: tokio::sync::OwnedSemaphorePermit, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _place: place,
        }
    }
}

/// Traffic moves the idle deadline; an operation still pending when it passes fails (the server closes the
/// session).
fn watch<T>(
    idle: Duration,
    deadline: &mut std::pin::Pin<Box<tokio::time::Sleep>>,
    cx: &mut std::task::Context<'_>,
    polled: std::task::Poll<std::io::Result<T>>,
) -> std::task::Poll<std::io::Result<T>> {
    use std::task::Poll;
    match polled {
        Poll::Ready(r) => {
            deadline.as_mut().reset(tokio::time::Instant::now() + idle);
            Poll::Ready(r)
        }
        Poll::Pending => match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS session idle",
            ))),
            Poll::Pending => Poll::Pending,
        },
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Session<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        watch(this.idle, &mut this.deadline, cx, polled)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Session<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        watch(this.idle, &mut this.deadline, cx, polled)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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
        let places = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
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
                let Ok(place) = places.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "TLS listener full ({CONNECTIONS_MAX} sessions): closed");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(Duration::from_millis(HANDSHAKE_MS), handshake).await
                    {
                        Ok(Ok(tls)) => {
                            let session = Session::new(tls, place, Duration::from_millis(IDLE_MS));
                            let _ = tx.send((session, peer)).await;
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
    type Io = Session;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_silent_session_is_closed_once_idle_and_traffic_keeps_one_open() {
        let places = Arc::new(tokio::sync::Semaphore::new(1));
        let (ours, mut theirs) = tokio::io::duplex(64);
        let place = places.clone().try_acquire_owned().expect("a place");
        let mut session = Session::new(ours, place, Duration::from_millis(200));
        assert!(
            places.clone().try_acquire_owned().is_err(),
            "the one place is taken"
        );
        // Traffic within the limit keeps it open.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            theirs.write_all(b"x").await.expect("written");
            let mut b = [0u8; 1];
            session.read_exact(&mut b).await.expect("read");
        }
        // Silence past the limit fails the read, and closing the session frees its place.
        let mut b = [0u8; 1];
        let silent = session.read(&mut b).await;
        assert_eq!(
            silent.expect_err("idle").kind(),
            std::io::ErrorKind::TimedOut
        );
        drop(session);
        assert!(
            places.try_acquire_owned().is_ok(),
            "the place is free again"
        );
    }
}
