//! Accepting connections from Envoy.
//!
//! Whoever reaches the listener can ask for tokens, so this module owns the
//! door: binding TCP or a Unix socket, the optional mTLS layer (`tls`), and
//! the limits that keep slow or idle clients from pinning resources.
//!
//! An accepted connection is *pending* until it has finished its handshake
//! (TLS when on, then the client's HTTP/2 preface and first SETTINGS, read
//! here by `preface` because hyper's own handshake has no deadline) and got
//! one of `max_connections` slots. All of that must happen within
//! `handshake_timeout` of the accept, or the connection is closed. At most
//! `max_pending_handshakes` are pending; one more drops the oldest
//! (`pending`), so sockets that never finish cannot lock real clients out.
//!
//! A connection that finished its handshake while every slot is taken
//! waits for one, still pending: a momentary full house (Envoy replacing a
//! connection) then delays a client instead of refusing it, and the wait is
//! bounded in time (the deadline) and in number (the pending cap), so it is
//! no new way to hold file descriptors. The accept loop itself never waits
//! for a slot: the kernel's backlog would otherwise fill with the very
//! clients the pending cap is there to admit.

mod pending;
mod preface;
mod tls;

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{Limits, ListenAddr};
use pending::{Pending, Ticket};
use preface::{PrefaceError, Rewind};

pub use tls::{PemProblem, TlsError, TlsErrors, TlsState, load_tls, watch_tls};

/// Connections that finished their handshake and wait for the gRPC server.
pub type Incoming = ReceiverStream<io::Result<Conn>>;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, io::Error),
    #[error(transparent)]
    Tls(#[from] TlsErrors),
}

/// Why a connection was closed before it was served.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error(transparent)]
    Preface(#[from] PrefaceError),
}

/// What the accept loop and every pending connection share.
struct Admission {
    tls: Option<Arc<TlsState>>,
    slots: Arc<Semaphore>,
    pending: Arc<Pending>,
    deadline: Duration,
    protocol: Protocol,
    tx: mpsc::Sender<io::Result<Conn>>,
}

/// Binds `addr` and returns the stream of ready connections and the address
/// actually bound (port 0 becomes a real port). Accepting and handshakes run
/// on their own tasks, so a slow client delays nobody else. `tls` applies
/// to TCP only (the config refuses it with a Unix socket).
pub fn bind(
    addr: &ListenAddr,
    tls: Option<Arc<TlsState>>,
    limits: &Limits,
) -> Result<(Incoming, ListenAddr), ListenError> {
    bind_for(addr, tls, limits, Protocol::Http2)
}

/// What a connection must send before it is handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The HTTP/2 preface and first SETTINGS, within the deadline (gRPC).
    Http2,
    /// Nothing: an HTTP/1 server reads the request itself and bounds that
    /// with its own header timeout (the admin listener).
    Http1,
}

/// [`bind`] for a listener speaking `protocol`.
pub fn bind_for(
    addr: &ListenAddr,
    tls: Option<Arc<TlsState>>,
    limits: &Limits,
    protocol: Protocol,
) -> Result<(Incoming, ListenAddr), ListenError> {
    let bind_error = |e| ListenError::Bind(addr.to_string(), e);
    let (socket, bound) = match addr {
        ListenAddr::Tcp(socket) => {
            let std_listener = std::net::TcpListener::bind(socket).map_err(bind_error)?;
            std_listener.set_nonblocking(true).map_err(bind_error)?;
            let bound = std_listener.local_addr().map_err(bind_error)?;
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?;
            (Socket::Tcp(listener), ListenAddr::Tcp(bound))
        }
        ListenAddr::Unix(path) => (
            Socket::Unix(bind_unix(path).map_err(bind_error)?),
            addr.clone(),
        ),
    };
    let (tx, rx) = mpsc::channel(64);
    let admission = Arc::new(Admission {
        tls: tls.filter(|_| matches!(socket, Socket::Tcp(_))),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        pending: Pending::new(limits.max_pending_handshakes),
        deadline: limits.handshake_timeout,
        protocol,
        tx,
    });
    tokio::spawn(accept_loop(socket, admission));
    Ok((ReceiverStream::new(rx), bound))
}

enum Socket {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Socket::Tcp(listener) => {
                let (stream, _peer) = listener.accept().await?;
                // serve_with_incoming does not set TCP_NODELAY: without it
                // small responses wait out Nagle's 40 ms.
                let _ = stream.set_nodelay(true);
                Ok(Accepted::Tcp(stream))
            }
            Socket::Unix(listener) => Ok(Accepted::Unix(listener.accept().await?.0)),
        }
    }
}

/// Accepts until the server stops taking connections. Accept errors (such
/// as running out of file descriptors) are retried after a pause instead of
/// spinning.
async fn accept_loop(socket: Socket, admission: Arc<Admission>) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = admission.tx.closed() => return,
        };
        match accepted {
            Ok(stream) => {
                // With nothing to wait for before a slot (plain HTTP/1), the
                // slot is taken here, in accept order, when one is free: the
                // first `max_connections` clients are the ones served, not
                // whichever tasks the runtime happens to poll first.
                let early = (admission.tls.is_none() && admission.protocol == Protocol::Http1)
                    .then(|| admission.slots.clone().try_acquire_owned().ok())
                    .flatten();
                let shared = admission.clone();
                admission
                    .pending
                    .spawn(move |ticket| admit(stream, ticket, early, shared));
            }
            Err(e) => {
                tracing::warn!(event = "accept_failed", error = %e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One pending connection: handshake, then a slot, within the deadline;
/// then it is handed to the gRPC server.
async fn admit(
    stream: Accepted,
    ticket: Ticket,
    early: Option<OwnedSemaphorePermit>,
    admission: Arc<Admission>,
) {
    let deadline = tokio::time::Instant::now() + admission.deadline;
    let handshake = handshake(stream, admission.tls.as_deref(), admission.protocol);
    let (io, replay) = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(done)) => done,
        // The client's doing, and as frequent as a client wants: debug only.
        Ok(Err(e)) => return tracing::debug!(event = "handshake_failed", error = %e),
        Err(_) => return tracing::debug!(event = "handshake_timeout"),
    };
    let slot = async {
        match early {
            Some(slot) => Ok(slot),
            None => admission.slots.clone().acquire_owned().await,
        }
    };
    let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, slot).await else {
        // Running out of slots is the operator's business: warn.
        return tracing::warn!(
            event = "connection_refused",
            reason = "max_connections",
            "every connection slot stayed taken until handshake_timeout"
        );
    };
    drop(ticket);
    let conn = Conn {
        io: Rewind::new(replay, io),
        _slot: slot,
    };
    let _ = admission.tx.send(Ok(conn)).await;
}

/// TLS (when on), then the HTTP/2 preface and first SETTINGS. Returns the
/// connection and the bytes read from it, for hyper to read again.
async fn handshake(
    stream: Accepted,
    tls: Option<&TlsState>,
    protocol: Protocol,
) -> Result<(Io, Vec<u8>), HandshakeError> {
    let mut io = match (stream, tls) {
        (Accepted::Tcp(stream), Some(state)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(state.config.load_full());
            let tls_stream = acceptor.accept(stream).await.map_err(HandshakeError::Tls)?;
            Io::Tls(Box::new(tls_stream))
        }
        (Accepted::Tcp(stream), None) => Io::Tcp(stream),
        (Accepted::Unix(stream), _) => Io::Unix(stream),
    };
    let replay = match protocol {
        Protocol::Http2 => preface::read_preface(&mut io).await?,
        Protocol::Http1 => Vec::new(),
    };
    Ok((io, replay))
}

/// Binds a Unix socket readable and writable by owner and group only. An
/// existing socket file is replaced only when it is stale (nobody accepts
/// on it): a second sidecar must not take over a live one's path, leaving
/// it running and unreachable. Never replaces any other kind of file.
fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match probe_unix(path) {
            Probe::Stale => match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Probe::Live => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a server is already listening on this socket (another service-auth?); stop it or choose another path",
                ));
            }
            Probe::Unknown(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot tell whether a server still listens on this socket: {e}"),
                ));
            }
        },
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

/// What connecting to an existing socket file says about it.
enum Probe {
    /// Refused (or gone): nobody listens; the file is left over.
    Stale,
    /// Accepted, or too busy to accept now: a server is there.
    Live,
    /// Anything else (e.g. no permission to connect).
    Unknown(io::Error),
}

/// Connects to `path` once, without blocking start-up on a server whose
/// backlog is full (a blocking connect would wait for it indefinitely).
fn probe_unix(path: &Path) -> Probe {
    use socket2::{Domain, SockAddr, Socket, Type};
    let connected = SockAddr::unix(path).and_then(|addr| {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.connect_timeout(&addr, Duration::from_secs(1))
    });
    match connected {
        Ok(()) => Probe::Live,
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Probe::Stale,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Probe::Live,
            _ => Probe::Unknown(e),
        },
    }
}

/// One connection ready for gRPC. It holds a connection slot until dropped;
/// reads start with the HTTP/2 preface the listener already read.
pub struct Conn {
    io: Rewind<Io>,
    _slot: OwnedSemaphorePermit,
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
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The transport under a connection.
enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
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
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
