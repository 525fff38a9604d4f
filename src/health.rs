//! A client for the sidecar's own `grpc.health.v1.Health` service, behind
//! `service-auth health`.
//!
//! It exists because the runtime image has no shell and no
//! `grpc_health_probe`: the Docker HEALTHCHECK and the Kubernetes exec probes
//! run the sidecar binary itself. Exec probes run inside the container, so
//! they reach a listener bound to loopback or a Unix socket, which is where
//! the sidecar should listen (nothing outside the pod may call `Check`).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::ListenAddr;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {0}")]
    Connect(String, #[source] tonic::transport::Error),
    #[error("health check on {0} failed: {1}")]
    Rpc(String, tonic::Status),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0} is {1}")]
    NotServing(String, String),
}

/// Asks the server at `addr` for its overall health (service `""`), within
/// `timeout` in total. `Ok` only when it answers SERVING.
pub async fn probe(addr: &ListenAddr, timeout: Duration) -> Result<(), ProbeError> {
    let name = addr.to_string();
    let status = tokio::time::timeout(timeout, check(addr))
        .await
        .map_err(|_| ProbeError::Timeout(name.clone(), timeout))??;
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(ProbeError::NotServing(name, other.as_str_name().to_owned())),
    }
}

async fn check(addr: &ListenAddr) -> Result<ServingStatus, ProbeError> {
    let name = addr.to_string();
    let channel = connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(name.clone(), e))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| ProbeError::Rpc(name, e))?;
    Ok(ServingStatus::try_from(response.get_ref().status).unwrap_or(ServingStatus::Unknown))
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
