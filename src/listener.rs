//! Accepting connections from Envoy.
//!
//! Whoever reaches the listener can ask for tokens, so this module owns the
//! door: binding TCP or a Unix socket, the optional mTLS layer (its
//! certificate, key and client CA hot-reloaded without dropping established
//! connections; a broken new set keeps the old one), and the limits that
//! keep slow or idle clients from pinning resources: a connection cap, and
//! a deadline for the TLS handshake (or, on plain TCP, for the first byte).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{Limits, ListenAddr, ListenTls};
use crate::watch::FileWatch;

/// Connections that finished their handshake and wait for the gRPC server.
pub type Incoming = ReceiverStream<io::Result<Conn>>;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, io::Error),
    #[error("listen.tls: {0}")]
    Tls(#[from] TlsError),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client_ca: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The listener's current TLS configuration and the leaf's expiry.
pub struct TlsState {
    pub config: ArcSwap<ServerConfig>,
    /// `notAfter` of the serving certificate, Unix seconds.
    pub not_after: std::sync::atomic::AtomicI64,
}

/// Builds the server TLS configuration from the three files. Client
/// certificates are mandatory and must chain to `client_ca`.
pub fn load_tls(tls: &ListenTls) -> Result<(ServerConfig, i64), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| file_error(&tls.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&tls.cert, e))?;
    let leaf = certs
        .first()
        .ok_or_else(|| file_error(&tls.cert, "no certificate in file"))?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| file_error(&tls.cert, e))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| file_error(&tls.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in
        CertificateDer::pem_file_iter(&tls.client_ca).map_err(|e| file_error(&tls.client_ca, e))?
    {
        let ca = ca.map_err(|e| file_error(&tls.client_ca, e))?;
        roots.add(ca).map_err(|e| file_error(&tls.client_ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(&tls.client_ca, "no CA certificate in file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    // with_single_cert also checks that the key belongs to the certificate.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, not_after))
}

/// Keeps `state` current with the TLS files; a broken set keeps the old one.
pub async fn watch_tls(tls: ListenTls, state: Arc<TlsState>, poll_interval: Duration) {
    let files = vec![tls.cert.clone(), tls.key.clone(), tls.client_ca.clone()];
    let mut watch = FileWatch::new(files.clone(), poll_interval);
    loop {
        let before = watch.changed().await;
        let tls_files = tls.clone();
        let loaded = tokio::task::spawn_blocking(move || load_tls(&tls_files)).await;
        watch.acted(before, files.clone());
        match loaded {
            Ok(Ok((config, not_after))) => {
                state.config.store(Arc::new(config));
                state
                    .not_after
                    .store(not_after, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(event = "listener_tls_reload", result = "success", not_after);
            }
            Ok(Err(e)) => {
                tracing::error!(event = "listener_tls_reload", result = "failure", error = %e, "keeping the previous certificate");
            }
            Err(e) => {
                tracing::error!(event = "listener_tls_reload", result = "failure", error = %e, "keeping the previous certificate");
            }
        }
    }
}

/// Binds `addr` and returns the stream of ready connections and the address
/// actually bound (port 0 becomes a real port). Accepting and handshakes run
/// on their own tasks, so a slow client delays nobody else.
pub fn bind(
    addr: &ListenAddr,
    tls: Option<Arc<TlsState>>,
    limits: &Limits,
) -> Result<(Incoming, ListenAddr), ListenError> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let deadline = limits.handshake_timeout;
    match addr {
        ListenAddr::Tcp(socket) => {
            let std_listener = std::net::TcpListener::bind(socket)
                .map_err(|e| ListenError::Bind(addr.to_string(), e))?;
            std_listener
                .set_nonblocking(true)
                .map_err(|e| ListenError::Bind(addr.to_string(), e))?;
            let bound = std_listener
                .local_addr()
                .map_err(|e| ListenError::Bind(addr.to_string(), e))?;
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| ListenError::Bind(addr.to_string(), e))?;
            tokio::spawn(accept_tcp(listener, tls, slots, deadline, tx));
            Ok((ReceiverStream::new(rx), ListenAddr::Tcp(bound)))
        }
        ListenAddr::Unix(path) => {
            let listener = bind_unix(path).map_err(|e| ListenError::Bind(addr.to_string(), e))?;
            tokio::spawn(accept_unix(listener, slots, tx));
            Ok((ReceiverStream::new(rx), addr.clone()))
        }
    }
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<TlsState>>,
    slots: Arc<Semaphore>,
    deadline: Duration,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    loop {
        let Some((permit, (stream, _peer))) = next(&slots, &tx, || listener.accept()).await else {
            return;
        };
        // serve_with_incoming does not set TCP_NODELAY: without it small
        // responses wait out Nagle's 40 ms.
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let io = match tls {
                Some(state) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(state.config.load_full());
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => Io::Tls(Box::new(tls_stream)),
                        Ok(Err(e)) => {
                            tracing::debug!(event = "tls_handshake_failed", error = %e);
                            return;
                        }
                        Err(_) => return,
                    }
                }
                // `readable()` may wake spuriously; `peek` waits for a byte.
                None => match tokio::time::timeout(deadline, stream.peek(&mut [0u8; 1])).await {
                    Ok(Ok(n)) if n > 0 => Io::Tcp(stream),
                    _ => return,
                },
            };
            let _ = tx.send(Ok(Conn { io, _slot: permit })).await;
        });
    }
}

async fn accept_unix(
    listener: tokio::net::UnixListener,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    loop {
        let Some((permit, (stream, _peer))) = next(&slots, &tx, || listener.accept()).await else {
            return;
        };
        // No first-byte deadline here: only processes allowed by the socket's
        // file permissions can connect, and HTTP/2 keepalive still applies.
        let conn = Conn {
            io: Io::Unix(stream),
            _slot: permit,
        };
        if tx.send(Ok(conn)).await.is_err() {
            return;
        }
    }
}

/// Waits for a free connection slot, then for a connection. `None` once the
/// server has stopped taking connections. Accept errors (such as running out
/// of file descriptors) are retried after a pause instead of spinning.
async fn next<T, F, Fut>(
    slots: &Arc<Semaphore>,
    tx: &mpsc::Sender<io::Result<Conn>>,
    mut accept: F,
) -> Option<(OwnedSemaphorePermit, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    let permit = tokio::select! {
        permit = slots.clone().acquire_owned() => permit.ok()?,
        () = tx.closed() => return None,
    };
    loop {
        tokio::select! {
            accepted = accept() => match accepted {
                Ok(conn) => return Some((permit, conn)),
                Err(e) => {
                    tracing::warn!(event = "accept_failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = tx.closed() => return None,
        }
    }
}

/// Binds a Unix socket readable and writable by owner and group only,
/// replacing a stale socket file but never any other kind of file.
fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            ));
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// One accepted connection. It holds a connection slot until dropped.
pub struct Conn {
    io: Io,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
