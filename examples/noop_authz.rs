//! The benchmark's baseline: an ext_authz server on the same stack as the
//! sidecar (tokio + tonic + envoy-types, the generated service with its full
//! prost decode) that allows every Check with one fixed header and does
//! nothing else. Not part of the product.
//!
//! `cargo run --release --example noop_authz -- [ADDR] [HEADER_BYTES]`
//!
//! ADDR defaults to 127.0.0.1:9292. The header value is `noop` (4 bytes), or
//! HEADER_BYTES of `n` to answer like a server that returns a token of that
//! size. Stops cleanly on SIGTERM or Ctrl-C, so profilers see a normal exit.

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

struct Noop {
    value: String,
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-service-jwt".into(),
                        value: self.value.clone(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9292".into())
        .parse()?;
    let value = match args.next() {
        Some(len) => "n".repeat(len.parse()?),
        None => "noop".into(),
    };
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Noop { value }))
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
