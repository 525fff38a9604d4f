//! The benchmark's baseline: an ext_authz server on the same stack as the
//! sidecar (tokio + tonic + envoy-types) that allows every Check with one
//! fixed header and does nothing else. Not part of the product.
//!
//! `cargo run --release --example noop_authz -- 127.0.0.1:9292`

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-service-jwt".into(),
                        value: "noop".into(),
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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9292".into())
        .parse()?;
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Noop))
        .serve(addr)
        .await?;
    Ok(())
}
