//! A client for the sidecar's own `grpc.health.v1.Health` service, behind
//! `service-auth health`.
//!
//! It exists because the runtime image has no shell and no
//! `grpc_health_probe`: the Docker HEALTHCHECK and the Kubernetes exec probes
//! run the sidecar binary itself. Exec probes run inside the container, so
//! they reach a listener bound to loopback or a Unix socket, which is where
//! the sidecar should listen (nothing outside the pod may call `Check`).
//! A `listen.tls` listener wants a client certificate: [`ProbeTls`] gives
//! the probe one.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::ListenAddr;

/// The client side of a `listen.tls` listener: a certificate it accepts,
/// and the CA that signed its server certificate.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The name the server certificate must carry (default: the address's IP).
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {}: {}", .0, Chain(.1))]
    Connect(String, tonic::transport::Error),
    #[error("cannot read {}: {error}", path.display())]
    TlsFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("TLS needs a TCP address, not {0}")]
    TlsOnUnixSocket(String),
    #[error("{0} is a TLS listener (listen.tls): probe it with --tls-cert, --tls-key and --tls-ca")]
    NeedsTls(String),
    #[error("health check on {0} failed: {1}")]
    Rpc(String, tonic::Status),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0} is {1}")]
    NotServing(String, String),
}

/// An error and its causes, each once: tonic's own message is only
/// "transport error", and some causes repeat their source's text.
struct Chain<'e>(&'e (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            cause = e.source();
        }
        Ok(())
    }
}

/// Asks the server at `addr` for its overall health (service `""`), within
/// `timeout` in total. `Ok` only when it answers SERVING.
pub async fn probe(
    addr: &ListenAddr,
    tls: Option<&ProbeTls>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let name = addr.to_string();
    let status = tokio::time::timeout(timeout, check(addr, tls))
        .await
        .map_err(|_| ProbeError::Timeout(name.clone(), timeout))??;
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(ProbeError::NotServing(name, other.as_str_name().to_owned())),
    }
}

async fn check(addr: &ListenAddr, tls: Option<&ProbeTls>) -> Result<ServingStatus, ProbeError> {
    let name = addr.to_string();
    let channel = match tls {
        Some(tls) => connect_tls(addr, tls).await?,
        None => connect(addr)
            .await
            .map_err(|e| ProbeError::Connect(name.clone(), e))?,
    };
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    match response {
        Ok(response) => Ok(
            ServingStatus::try_from(response.get_ref().status).unwrap_or(ServingStatus::Unknown)
        ),
        // A TLS listener answers a plaintext client's HTTP/2 preface with a
        // TLS alert, which the client reads as a bad frame or a reset
        // connection: ask the listener directly whether it speaks TLS.
        Err(e) => match addr {
            ListenAddr::Tcp(socket) if tls.is_none() && speaks_tls(*socket).await => {
                Err(ProbeError::NeedsTls(name))
            }
            _ => Err(ProbeError::Rpc(name, e)),
        },
    }
}

/// How long the TLS sniff waits for an answer: a plaintext listener waits
/// for the rest of its preface and says nothing.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether the listener at `socket` answers with a TLS record. It is sent
/// five bytes that are no TLS record (the start of the HTTP/2 preface); a
/// TLS server reads them whole as a record header and answers with an
/// alert (`0x15`, version `0x03 0x0N`). Sending no more than it reads keeps
/// its close clean, so the alert is not lost to a reset.
async fn speaks_tls(socket: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sniff = async {
        let mut stream = tokio::net::TcpStream::connect(socket).await.ok()?;
        stream.write_all(b"PRI *").await.ok()?;
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.ok()?;
        Some(matches!(header, [0x15 | 0x16, 0x03]))
    };
    matches!(
        tokio::time::timeout(SNIFF_TIMEOUT, sniff).await,
        Ok(Some(true))
    )
}

async fn connect_tls(addr: &ListenAddr, tls: &ProbeTls) -> Result<Channel, ProbeError> {
    let name = addr.to_string();
    let ListenAddr::Tcp(socket) = addr else {
        return Err(ProbeError::TlsOnUnixSocket(name));
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|error| ProbeError::TlsFile {
            path: path.clone(),
            error,
        })
    };
    let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
    let server_name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| socket.ip().to_string());
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(identity)
        .domain_name(server_name);
    let connect_error = |e| ProbeError::Connect(name.clone(), e);
    Endpoint::from_shared(format!("https://{socket}"))
        .map_err(connect_error)?
        .tls_config(config)
        .map_err(connect_error)?
        .connect()
        .await
        .map_err(connect_error)
}

async fn connect(addr: &ListenAddr) -> Result<Channel, tonic::transport::Error> {
    match addr {
        ListenAddr::Tcp(socket) => {
            Endpoint::from_shared(format!("http://{socket}"))?
                .connect()
                .await
        }
        ListenAddr::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector
            // ignores it and dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(hyper_util::rt::TokioIo::new)
                    }
                }))
                .await
        }
    }
}
